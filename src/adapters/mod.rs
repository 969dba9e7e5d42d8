//! The only code that knows Redis, the AWS SDK and HTTP clients: implementations of the ports
//! (the grant store, the STS issuer, the IAM role enforcer), OIDC token verification (issuers'
//! keys fetched over HTTPS), and webhook notifications (queued
//! beside the store's changes, delivered by a worker).

mod aws_call;
pub mod iam_enforcer;
pub mod oidc;
pub mod redis_store;
pub mod sts_issuer;
pub mod webhooks;

pub use iam_enforcer::{IamEnforcer, IamSettings};
pub use redis_store::{RedisGrantStore, RedisSettings, RedisTls, Topology, redacted_url};
pub use sts_issuer::{StsIssuer, StsSettings};
