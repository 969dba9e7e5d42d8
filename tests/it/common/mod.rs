//! Test harness, by component: a real `redis-server` per test on its own loopback port
//! ([`redis_server`]), the moto server as AWS ([`moto`]), a small fake STS ([`sts`]) and a fake
//! IAM in front of moto ([`fake_iam`]) for the error paths moto cannot produce, the real
//! grant-broker server on `127.0.0.1:0` ([`broker`]), the calls tests make ([`calls`]), a test CA
//! ([`pki`]), an OIDC issuer serving discovery and keys over HTTPS ([`identity_issuer`]), the
//! `grant-broker serve` binary as an operator runs it ([`process`]) and an OTLP collector
//! ([`otlp`]).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod broker;
pub mod calls;
pub mod fake_iam;
pub mod identity_issuer;
pub mod moto;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
pub mod sts;

pub use broker::*;
pub use calls::*;
// Only the integration tests use these (the benchmarks share this harness).
#[allow(unused_imports)]
pub use identity_issuer::*;
// The benchmarks share this harness and run no moto.
#[allow(unused_imports)]
pub use moto::*;
// Only the integration tests run the binary or collect telemetry.
#[allow(unused_imports)]
pub use otlp::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use redis_cluster::*;
pub use redis_server::*;
pub use sts::*;

use std::{
    net::TcpListener as StdListener,
    path::PathBuf,
    process::Child,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use grant_broker::grpc::proto;
use tonic::transport::Channel;

pub type Client = proto::grant_broker_client::GrantBrokerClient<Channel>;

pub const PORTAL_TOKEN: &str = "portal-token-0123456789";
pub const PIPELINE_TOKEN: &str = "pipeline-token-0123456789";
/// An approval portal: relays approvals for the people it names.
pub const APPROVALS_TOKEN: &str = "approvals-token-0123456789";
/// An admin caller (`security-console`): revokes any grant, cuts off a target's sessions.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// An auditor caller (`audit-tool`): reads every grant.
pub const AUDITOR_TOKEN: &str = "auditor-token-0123456789";

/// The integrity key test brokers seal records with (public, so never one for production): the
/// same as the unit tests' (`grant_broker::testing`), which read the golden records too.
pub const TEST_INTEGRITY_KEY: &str = "grant-broker-tests-integrity-key-not-secret-0123456789";

/// [`TEST_INTEGRITY_KEY`] as key 1, the sealing key: what every test broker and store holds.
pub fn integrity_keys() -> grant_broker::adapters::redis_store::seal::IntegrityKeys {
    grant_broker::adapters::redis_store::seal::IntegrityKeys::new(
        vec![(1, TEST_INTEGRITY_KEY.as_bytes().to_vec())],
        None,
    )
    .unwrap()
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// Sends every log line of this test process to a buffer the test can search.
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("trace")
            .with_writer(move || LogWriter(Arc::clone(&writer)))
            .try_init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
