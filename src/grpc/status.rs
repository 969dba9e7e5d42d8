//! The one place broker errors become gRPC statuses, with rich details (google.rpc): BadRequest
//! field violations for invalid input, ErrorInfo with a stable reason for every error,
//! PreconditionFailure for wrong-state grants and RetryInfo where retrying later helps.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::{
    broker::BrokerError,
    domain::FieldViolation as DomainViolation,
    ports::{IssueErrorKind, StoreError},
};

/// ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "grantbroker.v1";

/// How long to suggest waiting before retrying after throttling or an unavailable dependency.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn info(reason: &str, metadata: &[(&str, String)]) -> ErrorDetails {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    details
}

/// INVALID_ARGUMENT with one BadRequest violation per field.
fn invalid_argument(message: String, violations: &[DomainViolation]) -> Status {
    let mut details = info("INVALID_REQUEST", &[]);
    details.set_bad_request(
        violations
            .iter()
            .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// UNAUTHENTICATED, for the authentication step (which runs before any broker call).
pub fn unauthenticated(message: &str) -> Status {
    Status::with_error_details(Code::Unauthenticated, message, info("UNAUTHENTICATED", &[]))
}

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Self {
        let message = error.to_string();
        match error {
            BrokerError::InvalidRequest(violations) => invalid_argument(message, &violations),
            BrokerError::TargetNotAllowed { target, .. } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                info("TARGET_NOT_ALLOWED", &[("target", target)]),
            ),
            BrokerError::RequestIdReused { request_id, grant_id } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                info(
                    "REQUEST_ID_REUSED",
                    &[("request_id", request_id), ("grant_id", grant_id.to_string())],
                ),
            ),
            BrokerError::GrantNotFound(id) => Status::with_error_details(
                Code::NotFound,
                message,
                info("GRANT_NOT_FOUND", &[("grant_id", id.to_string())]),
            ),
            BrokerError::NotIssuable { grant_id, state } => {
                let mut details = info(
                    "GRANT_NOT_ISSUABLE",
                    &[("grant_id", grant_id.to_string()), ("state", state.as_str().to_owned())],
                );
                details.add_precondition_failure_violation(
                    "STATE",
                    format!("grants/{grant_id}"),
                    format!("grant is {}, not approved", state.as_str()),
                );
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            BrokerError::TargetChanged { grant_id, target, .. } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                info(
                    "TARGET_CHANGED",
                    &[("grant_id", grant_id.to_string()), ("target", target)],
                ),
            ),
            BrokerError::Store(StoreError::Unavailable(_)) => {
                let mut details = info("STORE_UNAVAILABLE", &[]);
                details.set_retry_info(Some(RETRY_AFTER));
                Status::with_error_details(Code::Unavailable, message, details)
            }
            BrokerError::Store(StoreError::Corrupt(_)) => {
                Status::with_error_details(Code::Internal, message, info("STORE_CORRUPT", &[]))
            }
            BrokerError::CredentialsNotRecorded { grant_id, .. } => {
                let mut details = info("CREDENTIALS_NOT_RECORDED", &[("grant_id", grant_id.to_string())]);
                details.set_retry_info(Some(RETRY_AFTER));
                Status::with_error_details(Code::Unavailable, message, details)
            }
            BrokerError::Issue(issue) => match issue.kind {
                IssueErrorKind::NotTrusted => {
                    Status::with_error_details(Code::PermissionDenied, message, info("STS_ACCESS_DENIED", &[]))
                }
                IssueErrorKind::Rejected => {
                    let mut details = info("STS_REJECTED", &[]);
                    details.add_bad_request_violation(
                        "scopes",
                        format!("STS refused the session policy or tags: {}", issue.message),
                    );
                    Status::with_error_details(Code::InvalidArgument, message, details)
                }
                IssueErrorKind::MfaRejected => {
                    Status::with_error_details(Code::PermissionDenied, message, info("MFA_REJECTED", &[]))
                }
                IssueErrorKind::Misconfigured => {
                    Status::with_error_details(Code::FailedPrecondition, message, info("STS_MISCONFIGURED", &[]))
                }
                IssueErrorKind::Throttled => {
                    let mut details = info("STS_THROTTLED", &[]);
                    details.set_retry_info(Some(RETRY_AFTER));
                    Status::with_error_details(Code::Unavailable, message, details)
                }
                IssueErrorKind::Unavailable => {
                    let mut details = info("STS_UNAVAILABLE", &[]);
                    details.set_retry_info(Some(RETRY_AFTER));
                    Status::with_error_details(Code::Unavailable, message, details)
                }
                IssueErrorKind::Failed => Status::with_error_details(Code::Internal, message, info("STS_FAILED", &[])),
            },
        }
    }
}
