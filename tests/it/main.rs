//! The integration tests, one binary (each test module would otherwise link tonic and the AWS
//! SDK again): the real server over a real socket, real `redis-server`s, moto as AWS, and fakes
//! only for what those cannot do (`common`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod approval;
mod audit;
mod authorization;
mod cluster;
#[cfg(feature = "test-support")]
mod contract;
mod extension;
mod faults;
mod iam_enforcer;
mod identity;
mod integrity;
mod issuance;
mod lifecycle;
mod limits;
mod notifications;
mod operations;
mod processes;
mod promises;
mod redis_tls;
mod requests;
mod revocation;
mod store;
mod surface;
mod tls;
