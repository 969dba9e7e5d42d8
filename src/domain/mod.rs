//! The pure core: grants and their states, scopes and IAM pattern containment, the session-policy
//! builder and every AWS AssumeRole limit the broker enforces itself.
//!
//! INVARIANT: nothing here performs I/O or names tonic, prost, the AWS SDK or Redis. Every
//! function is deterministic given its inputs (time is always passed in), so the rules that keep
//! credentials safe can be tested exhaustively.

pub mod grant;
pub mod iam;
pub mod limits;
pub mod pattern;
pub mod policy;
pub mod request;
pub mod scope;
pub mod session;
pub mod target;

pub use grant::{Decision, EventKind, Grant, GrantEvent, GrantId, GrantState, Issuance, Outcome};
pub use request::{AccessRequest, Caller, CallerId, MfaToken, RawAccessRequest, RequestId};
pub use scope::{ActionPattern, ResourcePattern, Scope};
pub use session::{ApprovedGrant, IssuedCredentials, NotIssuable, Secret, SessionSpec, SessionTag, TargetChanged};
pub use target::Target;

/// One invalid input field: the path of the field as the caller sent it (for example
/// `scopes[0].actions[1]`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}
