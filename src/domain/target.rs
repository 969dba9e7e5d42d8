//! A target: one AWS role the broker may hand out sessions for, the most it may grant, and how
//! revocation reaches the role.

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
    /// Whether revoking a grant on this target also cuts off its live sessions in AWS.
    pub revocation: RevocationMode,
    /// How the broker reaches IAM to manage its inline deny policy on the role.
    pub iam: IamAccess,
    /// What must be proven about the people acting on its grants.
    pub identity: TargetIdentity,
}

/// What a target demands of the people who ask for and decide its grants, beyond the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetIdentity {
    /// The requester must be proven by a verified identity token (a person's or a job's), even
    /// for callers that may assert people.
    pub requester_must_be_verified: bool,
    /// Approvals (and approvals of extensions) need a verified person who authenticated with
    /// MFA at most this long ago.
    pub approval_mfa_max_age: Option<time::Duration>,
}

impl Target {
    /// The role's name: the last segment of the ARN's resource after `role/` (a role with a path,
    /// `role/team/x`, is named `x`). IAM's inline-policy calls take the name, not the ARN.
    pub fn role_name(&self) -> &str {
        let resource = self.role_arn.splitn(6, ':').nth(5).unwrap_or_default();
        let path = resource.strip_prefix("role/").unwrap_or(resource);
        path.rsplit('/').next().unwrap_or(path)
    }
}

/// Whether the broker may change a target's role to cut off the sessions of revoked grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationMode {
    /// Revocation lists the grant's sessions in the broker's one inline Deny policy on the role,
    /// so they stop working within minutes.
    #[default]
    Enforce,
    /// The role is not the broker's to modify (someone else's account, a policy managed by
    /// another tool): revocations are recorded, and sessions already out run until they expire.
    RecordOnly,
}

impl RevocationMode {
    /// The configuration's spelling (`enforce`, `record-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::RecordOnly => "record-only",
        }
    }
}

/// How the broker reaches IAM for a target's role: with its own credentials, or by assuming an
/// administrative role in the target's account. Targets that share both values share one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IamAccess {
    /// A role in the target's account that may manage the target role's inline policies;
    /// `None`: the broker's own credentials.
    pub assume_role_arn: Option<String>,
    /// The ExternalId that role's trust policy demands, if any.
    pub external_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(role_arn: &str) -> Target {
        Target {
            id: "t".into(),
            description: String::new(),
            environment: "staging".into(),
            account_id: "123456789012".into(),
            role_arn: role_arn.into(),
            region: "eu-west-1".into(),
            external_id: None,
            max_duration_secs: 3600,
            mfa_required: false,
            session_tags: false,
            ceiling: Vec::new(),
            allow_unknown_actions: false,
            revocation: RevocationMode::Enforce,
            iam: IamAccess::default(),
            identity: Default::default(),
        }
    }

    #[test]
    fn the_role_name_is_the_last_segment_of_its_path() {
        assert_eq!(named("arn:aws:iam::123456789012:role/x").role_name(), "x");
        assert_eq!(named("arn:aws:iam::123456789012:role/team/x").role_name(), "x");
        assert_eq!(named("arn:aws:iam::123456789012:role/a/b/c.d@e").role_name(), "c.d@e");
    }
}
