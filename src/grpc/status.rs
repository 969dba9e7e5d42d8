//! The one place broker errors become gRPC statuses, with rich details (google.rpc): BadRequest
//! field violations for invalid input, ErrorInfo with a stable reason for every error,
//! PreconditionFailure for wrong-state grants and RetryInfo where retrying later helps.
//!
//! INVARIANT: an error always reaches the caller whole, whatever the input. gRPC carries the
//! message and details in HTTP/2 headers, which clients cap (16 KiB in hyper, 8 KiB in some
//! others); so the message is short, every echoed text is cut ([`clip`]), and field violations are
//! added only while the encoded details stay within [`DETAILS_BUDGET`], the rest counted in a
//! last violation. What must not reach callers (Redis error text, AWS messages that name the
//! broker's own principal) is logged here instead.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::outbound::state_name;
use crate::{
    broker::BrokerError,
    domain::{FieldViolation as DomainViolation, GrantState, clip},
    ports::{IssueError, IssueErrorKind, StoreError},
};

/// ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "grantbroker.v1";

/// How long to suggest waiting before retrying after throttling or an unavailable dependency.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most field violations listed; the rest are counted.
pub const MAX_VIOLATIONS: usize = 20;
/// Encoded size the details may reach (before base64, which adds a third): with the message,
/// the whole error stays under 8 KiB of headers.
pub const DETAILS_BUDGET: usize = 5_000;
/// Longest status message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;
const MAX_FIELD_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 400;

fn info(reason: &str, metadata: &[(&str, String)]) -> ErrorDetails {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), clip(v, MAX_FIELD_CHARS * 2)))
        .collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    details
}

fn with_details(code: Code, message: &str, details: ErrorDetails) -> Status {
    Status::with_error_details(code, clip(message, MAX_MESSAGE_CHARS), details)
}

/// The size of details once encoded, as `grpc-status-details-bin` carries them (before base64).
fn encoded_len(details: &ErrorDetails) -> usize {
    Status::with_error_details(Code::InvalidArgument, "", details.clone())
        .details()
        .len()
}

/// INVALID_ARGUMENT with BadRequest field violations, as many as fit the budget.
fn invalid_argument(violations: &[DomainViolation]) -> Status {
    let mut details = info("INVALID_REQUEST", &[("violations", violations.len().to_string())]);
    let mut listed = 0;
    for violation in violations.iter().take(MAX_VIOLATIONS) {
        let mut candidate = details.clone();
        candidate.add_bad_request_violation(
            clip(&violation.field, MAX_FIELD_CHARS),
            clip(&violation.description, MAX_DESCRIPTION_CHARS),
        );
        if encoded_len(&candidate) > DETAILS_BUDGET {
            break;
        }
        details = candidate;
        listed += 1;
    }
    if listed < violations.len() {
        details.add_bad_request_violation(
            "",
            format!("... and {} more problems not listed", violations.len() - listed),
        );
    }
    let message = match violations {
        [] => "invalid request".to_owned(),
        [only] => format!("invalid request: {}", clip(&only.to_string(), 200)),
        [first, ..] => format!(
            "invalid request: {} problems, the first: {}",
            violations.len(),
            clip(&first.to_string(), 200)
        ),
    };
    with_details(Code::InvalidArgument, &message, details)
}

/// UNAUTHENTICATED, for the authentication step (which runs before any broker call).
pub fn unauthenticated(message: &str) -> Status {
    with_details(Code::Unauthenticated, message, info("UNAUTHENTICATED", &[]))
}

/// UNAUTHENTICATED for an identity token that does not verify (what is wrong with it; the token
/// itself is never echoed).
pub fn identity_token_refused(message: &str) -> Status {
    with_details(Code::Unauthenticated, message, info("IDENTITY_TOKEN_INVALID", &[]))
}

/// UNAVAILABLE when an issuer's keys have never been fetched: the token cannot be checked yet.
pub fn identity_keys_unavailable(message: &str) -> Status {
    retryable(Code::Unavailable, message, info("IDENTITY_KEYS_UNAVAILABLE", &[]))
}

/// UNAVAILABLE from load shedding: the server is at its limit of calls in flight; another
/// replica, or this one shortly, can take the call.
pub fn overloaded(limit: usize) -> Status {
    retryable(
        Code::Unavailable,
        &format!(
            "this grant-broker is at its limit of {limit} calls in flight (server.max_concurrent_calls): retry after the delay given, or on another replica"
        ),
        info("OVERLOADED", &[("max_concurrent_calls", limit.to_string())]),
    )
}

/// INTERNAL: the task a call ran on ended without an answer (it panicked, which nothing in the
/// broker should).
pub fn call_lost() -> Status {
    with_details(
        Code::Internal,
        "the call ended without an answer; the broker's log has the details",
        info("INTERNAL", &[]),
    )
}

/// DEADLINE_EXCEEDED: the call ran out of the time it was given (`why` says whose deadline).
pub fn deadline_exceeded(why: &str) -> Status {
    with_details(Code::DeadlineExceeded, why, info("DEADLINE_EXCEEDED", &[]))
}

fn retryable(code: Code, message: &str, mut details: ErrorDetails) -> Status {
    details.set_retry_info(Some(RETRY_AFTER));
    with_details(code, message, details)
}

/// RESOURCE_EXHAUSTED for a spent limit: which (ErrorInfo), whose (QuotaFailure), and when a
/// retry can succeed (RetryInfo, rounded up to whole milliseconds).
fn limit_exceeded(exceeded: &crate::domain::quota::Exceeded, message: &str) -> Status {
    use crate::domain::quota::Limit;
    let reason = match exceeded.limit {
        Limit::CallerRequests => "CALLER_RATE_LIMITED",
        Limit::PersonRequests => "PERSON_RATE_LIMITED",
        Limit::LiveGrantsPerGrantee => "GRANTEE_LIVE_GRANTS_LIMITED",
        Limit::PendingGrants => "PENDING_GRANTS_LIMITED",
    };
    let retry_after =
        Duration::from_millis(u64::try_from(exceeded.retry_after.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX));
    let mut details = info(
        reason,
        &[
            ("limit", exceeded.limit.name().to_owned()),
            ("allowed", exceeded.allowed.to_string()),
            ("retry_after_ms", retry_after.as_millis().to_string()),
        ],
    );
    details.set_retry_info(Some(retry_after));
    details.add_quota_failure_violation(
        format!("{}:{}", exceeded.limit.name(), clip(&exceeded.subject, MAX_FIELD_CHARS)),
        message,
    );
    with_details(Code::ResourceExhausted, message, details)
}

fn store_status(error: &StoreError) -> Status {
    match error {
        // A write that did not reach enough replicas is, to the caller, a store that is not
        // available yet: retry (and find what landed).
        StoreError::Unavailable(_) | StoreError::Unacknowledged(_) => retryable(
            Code::Unavailable,
            "the grant store is unavailable; retry later",
            info("STORE_UNAVAILABLE", &[]),
        ),
        StoreError::Corrupt(_) => with_details(
            Code::Internal,
            "a stored grant record could not be read; the broker's log has the details",
            info("STORE_CORRUPT", &[]),
        ),
        // What is wrong with the seal is in the log; the caller learns which grant, and that
        // nothing was done with it.
        StoreError::Tampered { grant_id, .. } => with_details(
            Code::DataLoss,
            &format!(
                "grant {grant_id}'s record fails its seal: it was changed outside the broker, so nothing is done with it; the broker's log has the details"
            ),
            info("STORE_TAMPERED", &[("grant_id", grant_id.to_string())]),
        ),
    }
}

/// What STS's refusal means for the caller. The STS error code is shown; AWS's message is not
/// (AccessDenied names the broker's own principal), it is in the log.
fn issue_status(issue: &IssueError) -> Status {
    let code = clip(&issue.code, MAX_FIELD_CHARS);
    let reason_info = |reason: &str| info(reason, &[("sts_error_code", code.clone())]);
    match issue.kind {
        IssueErrorKind::NotTrusted => with_details(
            Code::PermissionDenied,
            &format!(
                "STS refused AssumeRole ({code}): the target role does not trust the broker, or its trust conditions (ExternalId, SourceIdentity, TagSession) are not met; an operator must fix the role's trust policy"
            ),
            reason_info("STS_ACCESS_DENIED"),
        ),
        IssueErrorKind::Rejected => {
            let mut details = reason_info("STS_REJECTED");
            details.add_bad_request_violation(
                "scopes",
                format!("STS refused the session policy or tags ({code}): request fewer or narrower scopes"),
            );
            with_details(
                Code::InvalidArgument,
                &format!("STS refused the session policy or tags ({code})"),
                details,
            )
        }
        IssueErrorKind::MfaRejected => with_details(
            Code::PermissionDenied,
            &format!("STS refused the MFA code ({code}): retry with a fresh code from the device named by mfa_serial"),
            reason_info("MFA_REJECTED"),
        ),
        IssueErrorKind::Misconfigured => with_details(
            Code::FailedPrecondition,
            &format!(
                "STS refused a parameter the operator controls ({code}), such as a target max_duration_secs above the role's MaxSessionDuration, or STS not activated in the region; an operator must fix the target"
            ),
            reason_info("STS_MISCONFIGURED"),
        ),
        IssueErrorKind::Throttled => retryable(
            Code::Unavailable,
            &format!("STS is throttling AssumeRole for this account ({code}); retry later"),
            reason_info("STS_THROTTLED"),
        ),
        IssueErrorKind::Unavailable => retryable(
            Code::Unavailable,
            &format!("STS did not answer in time or could not be reached ({code}); retry later"),
            reason_info("STS_UNAVAILABLE"),
        ),
        IssueErrorKind::Failed => with_details(
            Code::Internal,
            &format!("STS did not issue credentials ({code}); the broker's log has the details"),
            reason_info("STS_FAILED"),
        ),
    }
}

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Self {
        // The variants whose detail callers must not see: logged here, where it is dropped.
        if matches!(
            error,
            BrokerError::Store(_) | BrokerError::Issue(_) | BrokerError::CredentialsNotRecorded { .. }
        ) {
            tracing::warn!(error = %error, "request failed");
        }
        let message = error.to_string();
        match error {
            BrokerError::InvalidRequest(violations) => invalid_argument(&violations),
            BrokerError::LimitExceeded(exceeded) => limit_exceeded(&exceeded, &message),
            BrokerError::StsThrottled { target, retry_after } => {
                let mut details = info("STS_THROTTLED", &[("target", target)]);
                details.set_retry_info(Some(retry_after.max(RETRY_AFTER)));
                with_details(Code::Unavailable, &message, details)
            }
            BrokerError::TargetNotAllowed { target, .. } => with_details(
                Code::PermissionDenied,
                &message,
                info("TARGET_NOT_ALLOWED", &[("target", target)]),
            ),
            BrokerError::RequestIdReused { request_id, grant_id } => with_details(
                Code::AlreadyExists,
                &message,
                info(
                    "REQUEST_ID_REUSED",
                    &[("request_id", request_id), ("grant_id", grant_id.to_string())],
                ),
            ),
            BrokerError::GrantNotFound(id) => with_details(
                Code::NotFound,
                &message,
                info("GRANT_NOT_FOUND", &[("grant_id", id.to_string())]),
            ),
            BrokerError::AccessKeyNotFound { access_key_id } => with_details(
                Code::NotFound,
                &message,
                info("ACCESS_KEY_NOT_FOUND", &[("access_key_id", access_key_id)]),
            ),
            BrokerError::NotIssuable { grant_id, state } => {
                let mut details = info(
                    "GRANT_NOT_ISSUABLE",
                    &[
                        ("grant_id", grant_id.to_string()),
                        ("state", state_name(state).to_owned()),
                    ],
                );
                details.add_precondition_failure_violation(
                    "STATE",
                    format!("grants/{grant_id}"),
                    format!(
                        "grant is {}, not {}",
                        state_name(state),
                        state_name(GrantState::Approved)
                    ),
                );
                with_details(Code::FailedPrecondition, &message, details)
            }
            BrokerError::NotStarted { grant_id, start } => {
                let start = crate::domain::policy::rfc3339_utc(start);
                let mut details = info(
                    "WINDOW_NOT_STARTED",
                    &[("grant_id", grant_id.to_string()), ("start_time", start.clone())],
                );
                details.add_precondition_failure_violation(
                    "WINDOW",
                    format!("grants/{grant_id}"),
                    format!("the window starts at {start}"),
                );
                with_details(Code::FailedPrecondition, &message, details)
            }
            BrokerError::TransitionNotAllowed { grant_id, refused } => {
                let mut details = info(
                    "TRANSITION_NOT_ALLOWED",
                    &[
                        ("grant_id", grant_id.to_string()),
                        ("state", state_name(refused.state).to_owned()),
                    ],
                );
                details.add_precondition_failure_violation(
                    "STATE",
                    format!("grants/{grant_id}"),
                    format!("grant is {}", state_name(refused.state)),
                );
                with_details(Code::FailedPrecondition, &message, details)
            }
            BrokerError::NotProven(not_proven) => {
                use crate::domain::identity::NotProven;
                let reason = match not_proven {
                    NotProven::Missing(violation) => return invalid_argument(&[violation]),
                    NotProven::Mismatch { .. } => "IDENTITY_MISMATCH",
                    NotProven::Unverified { .. } => "IDENTITY_NOT_VERIFIED",
                    NotProven::NotAPerson { .. } => "IDENTITY_NOT_A_PERSON",
                };
                with_details(Code::PermissionDenied, &message, info(reason, &[]))
            }
            BrokerError::ApproverMfaRequired {
                target,
                max_age_minutes,
                ..
            } => with_details(
                Code::PermissionDenied,
                &message,
                info(
                    "APPROVER_MFA_REQUIRED",
                    &[("target", target), ("max_age_minutes", max_age_minutes.to_string())],
                ),
            ),
            BrokerError::CallerMayNotApprove { caller } => with_details(
                Code::PermissionDenied,
                &message,
                info("CALLER_MAY_NOT_APPROVE", &[("caller", caller)]),
            ),
            BrokerError::SelfApproval { grant_id, .. } => with_details(
                Code::PermissionDenied,
                &message,
                info("SELF_APPROVAL", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::ApproverNotEligible {
                grant_id, policy_ids, ..
            } => with_details(
                Code::PermissionDenied,
                &message,
                info(
                    "APPROVER_NOT_ELIGIBLE",
                    &[("grant_id", grant_id.to_string()), ("policy_ids", policy_ids.join(","))],
                ),
            ),
            BrokerError::NotBreakGlass { grant_id } => with_details(
                Code::FailedPrecondition,
                &message,
                info("NOT_BREAK_GLASS", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::AlreadyReviewed { grant_id } => with_details(
                Code::FailedPrecondition,
                &message,
                info("ALREADY_REVIEWED", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::TooManyApprovals { grant_id } => with_details(
                Code::FailedPrecondition,
                &message,
                info("TOO_MANY_APPROVALS", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::ExtensionWaiting { grant_id, number } => {
                let mut details = info(
                    "EXTENSION_WAITING",
                    &[("grant_id", grant_id.to_string()), ("extension", number.to_string())],
                );
                details.add_precondition_failure_violation(
                    "EXTENSION",
                    format!("grants/{grant_id}"),
                    format!("extension {number} waits for approval"),
                );
                with_details(Code::FailedPrecondition, &message, details)
            }
            BrokerError::TooManyExtensions { grant_id, limit } => with_details(
                Code::ResourceExhausted,
                &message,
                info(
                    "EXTENSION_LIMIT_REACHED",
                    &[("grant_id", grant_id.to_string()), ("limit", limit.to_string())],
                ),
            ),
            BrokerError::CursorExpired { cursor, oldest } => with_details(
                Code::OutOfRange,
                &message,
                info(
                    "CURSOR_EXPIRED",
                    &[("cursor", cursor), ("oldest", oldest.unwrap_or_default())],
                ),
            ),
            BrokerError::NotAuditor { caller } => with_details(
                Code::PermissionDenied,
                &message,
                info("NOT_AUDITOR", &[("caller", caller)]),
            ),
            BrokerError::NotAdmin { caller } => with_details(
                Code::PermissionDenied,
                &message,
                info("NOT_ADMIN", &[("caller", caller)]),
            ),
            BrokerError::NotGrantOwner { grant_id, owner, .. } => with_details(
                Code::PermissionDenied,
                &message,
                info(
                    "NOT_GRANT_OWNER",
                    &[("grant_id", grant_id.to_string()), ("owner", owner)],
                ),
            ),
            BrokerError::RecordOnlyTarget { target } => with_details(
                Code::FailedPrecondition,
                &message,
                info("RECORD_ONLY_TARGET", &[("target", target)]),
            ),
            BrokerError::Enforcement { role_arn, error } => retryable(
                Code::Unavailable,
                &message,
                info("ENFORCEMENT_FAILED", &[("role_arn", role_arn), ("code", error.code)]),
            ),
            BrokerError::Contended { grant_id } => retryable(
                Code::Aborted,
                &message,
                info("CONTENDED", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::TargetChanged { grant_id, target, .. } => with_details(
                Code::FailedPrecondition,
                &message,
                info(
                    "TARGET_CHANGED",
                    &[("grant_id", grant_id.to_string()), ("target", target)],
                ),
            ),
            BrokerError::ScopesNoLongerValid { grant_id, problems } => {
                let mut details = info("SCOPES_NO_LONGER_VALID", &[("grant_id", grant_id.to_string())]);
                for problem in problems.iter().take(MAX_VIOLATIONS) {
                    details.add_precondition_failure_violation(
                        "SCOPES",
                        format!("grants/{grant_id}"),
                        clip(problem, MAX_DESCRIPTION_CHARS),
                    );
                }
                with_details(Code::FailedPrecondition, &message, details)
            }
            BrokerError::RulesRefuseIssuance {
                grant_id, policy_ids, ..
            } => with_details(
                Code::PermissionDenied,
                &message,
                info(
                    "RULES_REFUSE_ISSUANCE",
                    &[("grant_id", grant_id.to_string()), ("policy_ids", policy_ids.join(","))],
                ),
            ),
            BrokerError::IssuanceLimitReached {
                grant_id,
                attempts,
                limit,
            } => with_details(
                Code::ResourceExhausted,
                &message,
                info(
                    "ISSUANCE_LIMIT_REACHED",
                    &[
                        ("grant_id", grant_id.to_string()),
                        ("issuances", attempts.to_string()),
                        ("limit", limit.to_string()),
                    ],
                ),
            ),
            BrokerError::Store(store) => store_status(&store),
            BrokerError::RecordInconsistent { grant_id, .. } => with_details(
                Code::Internal,
                &message,
                info("STORE_CORRUPT", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::CredentialsNotRecorded { grant_id, .. } => retryable(
                Code::Unavailable,
                &format!(
                    "credentials for grant {grant_id} were issued but could not be recorded, so they were discarded; retry with the same request id"
                ),
                info("CREDENTIALS_NOT_RECORDED", &[("grant_id", grant_id.to_string())]),
            ),
            BrokerError::Issue(issue) => issue_status(&issue),
        }
    }
}

/// A status code's canonical name, as every gRPC library spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status as `google.rpc.Status` (what `grpc-status-details-bin` carries), details and all, to
/// report an error inside a message.
pub fn rich_status(status: Status) -> tonic_types::Status {
    use prost::Message as _;
    let decoded = tonic_types::Status::decode(status.details()).ok();
    tonic_types::Status {
        code: i32::from(status.code()),
        message: status.message().to_owned(),
        details: decoded.map(|rich| rich.details).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reported_inside_a_message_keeps_its_code_message_and_details() {
        let id = crate::domain::GrantId::parse("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        let status = Status::from(BrokerError::GrantNotFound(id));
        let rich = rich_status(status.clone());
        assert_eq!(rich.code, i32::from(Code::NotFound));
        assert_eq!(code_name(Code::from(rich.code)), "NOT_FOUND");
        assert_eq!(rich.message, status.message());
        let info = rich
            .details
            .iter()
            .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
            .expect("ErrorInfo kept");
        let info = <tonic_types::pb::ErrorInfo as prost::Message>::decode(info.value.as_slice()).unwrap();
        assert_eq!(info.reason, "GRANT_NOT_FOUND");
        assert_eq!(info.metadata["grant_id"], id.to_string());
    }

    #[test]
    fn many_long_violations_stay_within_the_budget_and_are_counted() {
        let violations: Vec<DomainViolation> = (0..400)
            .map(|i| DomainViolation::new(format!("scopes[0].actions[{i}]"), "x".repeat(100_000)))
            .collect();
        let status = invalid_argument(&violations);
        assert!(status.message().chars().count() <= MAX_MESSAGE_CHARS);
        assert!(
            status
                .message()
                .starts_with("invalid request: 400 problems, the first: scopes[0].actions[0]")
        );
        assert!(
            status.details().len() <= DETAILS_BUDGET + 200,
            "{}",
            status.details().len()
        );
        let listed = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .clone();
        let last = listed.last().unwrap();
        assert!(listed.len() <= MAX_VIOLATIONS + 1);
        assert_eq!(
            last.description,
            format!("... and {} more problems not listed", 400 - (listed.len() - 1))
        );
    }

    #[test]
    fn store_and_sts_details_stay_in_the_log() {
        let status: Status = BrokerError::Store(StoreError::Unavailable(
            "Connection refused (os error 111) at redis://:hunter2@10.0.0.7".into(),
        ))
        .into();
        assert!(!status.message().contains("hunter2") && !status.message().contains("10.0.0.7"));
        let status: Status = BrokerError::Issue(IssueError {
            kind: IssueErrorKind::NotTrusted,
            code: "AccessDenied".into(),
            message: "User: arn:aws:sts::111122223333:assumed-role/grant-broker/i-0abc is not authorized".into(),
        })
        .into();
        assert!(status.message().contains("(AccessDenied)"), "{}", status.message());
        assert!(!status.message().contains("111122223333"), "{}", status.message());
        assert!(!format!("{:?}", status.details()).contains("111122223333"));
    }
}
