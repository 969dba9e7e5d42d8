//! grant-broker: a gRPC service that turns scoped access requests into downscoped, short-lived
//! AWS STS credentials, decided by Cedar approval rules and recorded in Redis.
//!
//! Code map (arrows point inward: `grpc -> broker -> domain`, `adapters -> ports <- broker`):
//!
//! - [`domain`]: pure types and rules: grants and states, IAM pattern containment, the session
//!   policy builder and AWS limit checks. No I/O.
//! - [`rules`]: Cedar approval rules: schema, loading and validation, request -> decision.
//! - [`broker`]: the use cases (request, issue, decide, extend, revoke, query, watch, audit,
//!   expiry), generic over [`ports`].
//! - [`ports`]: what the broker needs from outside: the grant store (records, search, queues, the
//!   audit log), revocation work, the credential issuer, the role enforcer, the notifier, a clock.
//! - `testing` (unit tests and the `test-support` feature): those ports in memory.
//! - [`adapters`]: Redis grant store, STS issuer, IAM role enforcer (the broker's inline deny
//!   policy on target roles), webhook notifications (queue, signing, delivery worker); the only
//!   code that knows those SDKs and HTTP clients.
//! - [`grpc`]: transport: authentication, validation on receipt, status mapping, the service; the
//!   only server code that knows protobuf.
//! - [`cli`]: the command: arguments, serving, the client calls, `--json` from the proto, exit
//!   codes.
//! - [`config`]: the validated TOML configuration.
//! - [`server`]: wiring and the server loop (health, reflection, shutdown).

pub mod adapters;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod ports;
pub mod rules;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;
