//! The pure core: grants and their states, scopes and IAM pattern containment, the session-policy
//! builder and every AWS AssumeRole limit the broker enforces itself.
//!
//! INVARIANT: nothing here performs I/O or names tonic, prost, the AWS SDK or Redis. Every
//! function is deterministic given its inputs (time is always passed in), so the rules that keep
//! credentials safe can be tested exhaustively.

pub mod access;
pub mod approval;
pub mod audit;
pub mod extension;
pub mod filter;
pub mod grant;
pub mod iam;
pub mod identity;
pub mod lifecycle;
pub mod limits;
pub mod pattern;
pub mod policy;
pub mod quota;
pub mod request;
pub mod revocation;
#[cfg(test)]
pub(crate) mod samples;
pub mod scope;
pub mod session;
pub mod target;

pub use grant::{
    Decision, EventKind, Grant, GrantEvent, GrantId, GrantState, Issuance, Outcome, RECENT_ISSUANCES, SessionRoles,
};
pub use request::{AccessRequest, Caller, CallerId, CallerIdentity, MfaToken, RequestId};
pub use scope::{ActionPattern, ResourcePattern, Scope};
pub use session::{ApprovedGrant, IssuedCredentials, NotIssuable, Secret, SessionRefused, SessionSpec, SessionTag};
pub use target::{IamAccess, RevocationMode, Target, TargetIdentity};

/// Longest piece of caller input echoed back in an error message.
pub const MAX_ECHO_CHARS: usize = 128;

/// `text` cut to at most `max` characters (plus a marker saying how much was cut), so echoing
/// input back can never make an error message large.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => {
            let rest = text[end..].chars().count();
            format!("{}...(+{rest} chars)", &text[..end])
        }
    }
}

/// An error and what caused it, outermost first, on one line (`a: b: c`): libraries' own
/// messages often say only the outermost ("transport error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Caller input quoted for an error message: in backticks, at most [`MAX_ECHO_CHARS`] of it.
pub fn echo(text: &str) -> String {
    format!("`{}`", clip(text, MAX_ECHO_CHARS))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_names_every_cause_outermost_first() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("invalid peer certificate: UnknownIssuer"));
        assert_eq!(
            error_chain(&error),
            "transport error: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn clip_cuts_long_text_and_says_how_much() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("exactly10!", 10), "exactly10!");
        assert_eq!(clip("abcdefghijkl", 10), "abcdefghij...(+2 chars)");
        assert_eq!(clip("ééééé", 2), "éé...(+3 chars)");
        assert_eq!(echo(&"x".repeat(200_000)).len(), 128 + 2 + "...(+199872 chars)".len());
    }
}
