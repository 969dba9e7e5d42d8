//! A target: one AWS role the broker may hand out sessions for, and the most it may grant.

use super::Scope;

/// A role the broker can assume, as configured by the operator. Validated when the configuration
/// is loaded: the ARN, account, external id and ceiling patterns are all well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Identifier used in requests, for example `prod-logs-read`.
    pub id: String,
    pub description: String,
    /// Free-form label the approval rules match on, for example `production`.
    pub environment: String,
    pub account_id: String,
    pub role_arn: String,
    pub region: String,
    /// Passed to STS as ExternalId when the role's trust policy demands one.
    pub external_id: Option<String>,
    /// Longest grant on this target, in seconds (900-43200).
    pub max_duration_secs: u64,
    pub mfa_required: bool,
    /// Whether the role's trust policy allows `sts:TagSession`; session tags are sent only then.
    pub session_tags: bool,
    /// Every grant's scopes must lie inside these statements.
    pub ceiling: Vec<Scope>,
    /// Whether requests may name actions the IAM catalog does not know (services newer than
    /// the catalog). Otherwise such a pattern, usually a typo, is refused.
    pub allow_unknown_actions: bool,
    /// Whether revoking a grant writes a deny on the role, or only records it.
    pub revocation: RevocationMode,
}

/// What revoking a grant on a target does in AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationMode {
    /// Denies the grant's live sessions with the broker's inline policy on the role.
    #[default]
    Enforce,
    /// Records the revocation and stops issuance; the role (which the broker may not modify)
    /// is left alone, and live sessions run until they expire.
    RecordOnly,
}
