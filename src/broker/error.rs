//! Everything a use case can fail with. Callers must handle each case, so the enum is not
//! `#[non_exhaustive]`; the transport maps it to status codes in one exhaustive match.

use crate::{
    domain::{FieldViolation, GrantId, GrantState, lifecycle::NotAllowed},
    ports::{EnforceError, IssueError, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The request breaks a rule about its fields; each violation names its field.
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidRequest(Vec<FieldViolation>),

    #[error(
        "target `{target}` does not exist or is not available to caller `{caller}`; ListTargets shows the targets you may request"
    )]
    TargetNotAllowed { caller: String, target: String },

    #[error(
        "request id `{request_id}` was already used for grant {grant_id} with a different request body; use a new request id"
    )]
    RequestIdReused { request_id: String, grant_id: GrantId },

    #[error("grant {0} not found")]
    GrantNotFound(GrantId),

    /// STS throttles the target's AssumeRole: nothing was asked of STS this time (the target's
    /// circuit is open), or STS throttled this call after the SDK's retries.
    #[error("STS is throttling AssumeRole for target `{target}`; retry in {} s", .retry_after.as_secs().max(1))]
    StsThrottled {
        target: String,
        retry_after: std::time::Duration,
    },

    /// A request rate, or a cap on grants held at once, is spent.
    #[error("{}", .0.message())]
    LimitExceeded(crate::domain::quota::Exceeded),

    #[error("no grant of yours issued access key {access_key_id}")]
    AccessKeyNotFound { access_key_id: String },

    #[error("grant {grant_id} is {}: no credentials can be issued for it", .state.as_str())]
    NotIssuable { grant_id: GrantId, state: GrantState },

    #[error("grant {grant_id} is approved; its window starts at {}", crate::domain::policy::rfc3339_utc(*.start))]
    NotStarted {
        grant_id: GrantId,
        start: time::OffsetDateTime,
    },

    #[error("grant {grant_id}: {refused}")]
    TransitionNotAllowed { grant_id: GrantId, refused: NotAllowed },

    /// A name the call could not prove (a field left empty without a token is InvalidRequest).
    #[error("{0}")]
    NotProven(crate::domain::identity::NotProven),

    #[error(
        "`{approver}` must have authenticated with MFA within the last {max_age_minutes} minutes to approve grants on target `{target}`: {reason}"
    )]
    ApproverMfaRequired {
        approver: String,
        target: String,
        max_age_minutes: i64,
        reason: &'static str,
    },

    #[error("caller `{caller}` may not relay approvals (the configuration does not set act_for_approvers for it)")]
    CallerMayNotApprove { caller: String },

    #[error("`{approver}` requested grant {grant_id} and cannot approve it")]
    SelfApproval { grant_id: GrantId, approver: String },

    #[error("`{approver}` may not decide on grant {grant_id}: {reason}")]
    ApproverNotEligible {
        grant_id: GrantId,
        approver: String,
        policy_ids: Vec<String>,
        reason: String,
    },

    #[error("grant {grant_id} was not approved as break-glass: there is nothing to review")]
    NotBreakGlass { grant_id: GrantId },

    #[error("grant {grant_id} has been reviewed already")]
    AlreadyReviewed { grant_id: GrantId },

    #[error("grant {grant_id} has recorded as many approvals as a grant may")]
    TooManyApprovals { grant_id: GrantId },

    #[error(
        "grant {grant_id} has an extension waiting for approval (number {number}); it must be approved or denied before another is asked for"
    )]
    ExtensionWaiting { grant_id: GrantId, number: u32 },

    #[error("grant {grant_id} has asked for {limit} extensions, the most one grant may; request access again")]
    TooManyExtensions { grant_id: GrantId, limit: usize },

    #[error("grant {grant_id} kept changing while this change was decided; retry")]
    Contended { grant_id: GrantId },

    #[error("target `{target}` changed since grant {grant_id} was decided ({what}); request access again")]
    TargetChanged {
        grant_id: GrantId,
        target: String,
        what: String,
    },

    #[error("grant {grant_id} records scopes that are no longer accepted, so it cannot issue credentials: {}; request access again", .problems.join("; "))]
    ScopesNoLongerValid { grant_id: GrantId, problems: Vec<String> },

    #[error("the rules no longer permit grant {grant_id} to issue credentials: {reason}")]
    RulesRefuseIssuance {
        grant_id: GrantId,
        policy_ids: Vec<String>,
        reason: String,
    },

    #[error(
        "grant {grant_id} has made {attempts} credential issuances (STS calls), the most one grant may make; request access again for a new grant"
    )]
    IssuanceLimitReached {
        grant_id: GrantId,
        attempts: u32,
        limit: u32,
    },

    #[error("caller `{caller}` reads only its own grants: the configuration does not make it an auditor caller")]
    NotAuditor { caller: String },

    #[error("audit cursor {cursor} is older than the audit log keeps (its retention period); the oldest kept is {}", .oldest.as_deref().unwrap_or("none"))]
    CursorExpired { cursor: String, oldest: Option<String> },

    #[error("caller `{caller}` may not do this: the configuration does not make it an admin caller")]
    NotAdmin { caller: String },

    /// The caller sees the grant (an auditor or admin caller) but only the caller that
    /// requested it may do this.
    #[error("grant {grant_id} was requested by caller `{owner}`: {rule}")]
    NotGrantOwner {
        grant_id: GrantId,
        owner: String,
        /// Who may, as a sentence: "only the caller that requested it may cancel it".
        rule: &'static str,
    },

    #[error("target `{target}` is record-only: the broker may not modify its role, so its sessions cannot be cut off")]
    RecordOnlyTarget { target: String },

    /// Writing a role's deny policy failed; recorded on the role and its grants, and retried.
    #[error("could not write revocations to role {role_arn}: {}", .error.code)]
    Enforcement { role_arn: String, error: EnforceError },

    #[error(transparent)]
    Store(StoreError),

    /// The stored record of this grant is inconsistent: refused before anything reached STS.
    #[error("grant {grant_id} failed the integrity checks made before issuing: {what}")]
    RecordInconsistent { grant_id: GrantId, what: String },

    #[error("STS did not issue credentials: {0}")]
    Issue(IssueError),

    #[error(
        "credentials for grant {grant_id} were issued but could not be recorded, so they were discarded ({cause}); retry with the same request id"
    )]
    CredentialsNotRecorded { grant_id: GrantId, cause: StoreError },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_messages_are_rfc3339() {
        let start = time::macros::datetime!(2026-12-02 8:16:55.123 UTC);
        let error = BrokerError::NotStarted {
            grant_id: GrantId::from_uuid(uuid::Uuid::nil()),
            start,
        };
        assert!(
            error.to_string().ends_with("its window starts at 2026-12-02T08:16:55Z"),
            "{error}"
        );
        let request = crate::domain::AccessRequest {
            request_id: None,
            target: "t".into(),
            scopes: Vec::new(),
            duration_secs: 900,
            start: Some(start),
            break_glass: false,
            justification: String::new(),
            ticket: String::new(),
            requester: "a".into(),
            grantee: "b".into(),
            mfa: None,
        };
        let violations = request.check_start(start + time::Duration::hours(1));
        assert_eq!(
            violations[0].description,
            "2026-12-02T08:16:55Z is in the past; leave it unset to start as soon as approved"
        );
    }
}
