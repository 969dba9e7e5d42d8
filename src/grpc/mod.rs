//! The gRPC transport, and the only code that names generated protobuf types: authentication,
//! proto <-> domain conversion (validation happens here, once, on receipt), the one mapping from
//! broker errors to `tonic::Status`, the service itself, and the command-line client.

pub mod auth;
pub mod client;
pub mod convert;
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
                .field("expiration", &self.expiration)
                .field("assumed_role_arn", &self.assumed_role_arn)
                .field("region", &self.region)
                .finish()
        }
    }
}

pub use auth::Authenticator;
pub use service::GrantBrokerService;
