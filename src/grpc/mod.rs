//! The server's gRPC transport, and the only server code that names generated protobuf types:
//! authentication, proto <-> domain conversion (validation happens here, once, on receipt), the
//! one mapping from broker errors to `tonic::Status`, and the service itself. (The command-line
//! client, `cli/`, is a client of the same API.)

pub mod auth;
mod fields;
pub mod inbound;
pub mod layers;
pub mod outbound;
pub mod service;
pub mod status;

/// Generated from `proto/grantbroker/v1/grant_broker.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("grantbroker.v1");

    /// The encoded descriptor set the reflection service serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/grantbroker_descriptor.bin"));

    /// Never prints the secret access key or session token, so a logged response leaks nothing.
    impl std::fmt::Debug for Credentials {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Credentials")
                .field("access_key_id", &self.access_key_id)
                .field("secret_access_key", &"[redacted]")
                .field("session_token", &"[redacted]")
                .field("expire_time", &self.expire_time)
                .field("assumed_role_arn", &self.assumed_role_arn)
                .field("region", &self.region)
                .finish()
        }
    }

    /// Never prints the MFA code.
    impl std::fmt::Debug for IssueCredentialsRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("IssueCredentialsRequest")
                .field("id", &self.id)
                .field("mfa_serial", &self.mfa_serial)
                .field("mfa_code", &"[redacted]")
                .finish()
        }
    }

    /// Never prints the MFA code.
    impl std::fmt::Debug for RequestAccessRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RequestAccessRequest")
                .field("request_id", &self.request_id)
                .field("target", &self.target)
                .field("scopes", &self.scopes)
                .field("duration", &self.duration)
                .field("justification", &self.justification)
                .field("ticket", &self.ticket)
                .field("requester", &self.requester)
                .field("grantee", &self.grantee)
                .field("mfa_serial", &self.mfa_serial)
                .field("mfa_code", &"[redacted]")
                .field("start_time", &self.start_time)
                .finish()
        }
    }
}

pub use auth::{Authenticator, RequireAuthentication};

/// One configuration as the server runs it: its callers and its broker, replaced together by a
/// reload. A call takes it once, when it is authenticated, and runs to its end on it: the callers
/// it was authenticated against and the rules, targets and limits it is decided by are of one
/// configuration, whatever reloads meanwhile.
pub struct Served<P: crate::ports::Ports> {
    pub auth: Authenticator,
    pub broker: std::sync::Arc<crate::broker::Broker<P>>,
}

/// The configuration in use.
pub type Current<P> = arc_swap::ArcSwap<Served<P>>;

use crate::domain::request::bounds;

/// Largest request message the field bounds allow, which is the server's decoding limit (far
/// below tonic's 4 MiB default): every text at its longest in UTF-8 (4 bytes a character) with
/// its tag and length, and every pattern list entry's framing. `bounds` are checked after
/// decoding; this only stops a message too large to be valid from being decoded at all.
pub const MAX_REQUEST_BYTES: usize = {
    const FRAMING: usize = 4;
    let texts = bounds::REQUEST_ID_CHARS
        + bounds::TARGET_CHARS
        + bounds::JUSTIFICATION_CHARS
        + bounds::TICKET_CHARS
        + bounds::REQUESTER_CHARS
        + bounds::GRANTEE_CHARS
        + bounds::MFA_SERIAL_CHARS
        + bounds::MFA_CODE_CHARS;
    let entries = bounds::SCOPES * (bounds::ACTIONS_PER_SCOPE + bounds::RESOURCES_PER_SCOPE);
    let duration = 32;
    4 * (texts + bounds::ALL_PATTERN_CHARS) + FRAMING * (8 + entries + bounds::SCOPES) + duration
};
pub use service::GrantBrokerService;

#[cfg(test)]
mod tests {
    use super::proto;

    #[test]
    fn debug_of_generated_messages_never_prints_secrets() {
        let request = proto::RequestAccessRequest {
            mfa_serial: "arn:aws:iam::123456789012:mfa/alice".into(),
            mfa_code: "271828".into(),
            ..proto::RequestAccessRequest::default()
        };
        let printed = format!("{request:?}");
        assert!(
            printed.contains("mfa/alice") && !printed.contains("271828"),
            "{printed}"
        );
        let credentials = proto::Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: "IQoJb3JpZ2lu".into(),
            ..proto::Credentials::default()
        };
        let printed = format!("{credentials:?}");
        assert!(printed.contains("ASIAEXAMPLE"), "{printed}");
        assert!(
            !printed.contains("wJalrXUtnFEMI") && !printed.contains("IQoJb3JpZ2lu"),
            "{printed}"
        );
    }
}
