//! The only code that knows Redis and the AWS SDK: implementations of the ports.

pub mod redis_store;
pub mod sts_issuer;

pub use redis_store::{RedisGrantStore, RedisSettings, RedisTls, redacted_url};
pub use sts_issuer::{StsIssuer, StsSettings};
