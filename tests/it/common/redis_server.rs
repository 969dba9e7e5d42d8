//! A real `redis-server` per test (and replicas of it, and TLS with a test PKI).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::*;

fn spawn(port: u16, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // Replicas write the primary's snapshot to disk: keep it out of the work tree.
            "--dir",
            &std::env::temp_dir().display().to_string(),
            "--dbfilename",
            &format!("gb-test-{port}.rdb"),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test installs it)")
}

/// A real redis-server on a free loopback port, stopped on drop.
pub struct RedisServer {
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A replica of `primary`, once its replication link is up.
    pub async fn start_replica_of(primary: &RedisServer) -> Self {
        let replica = Self::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut connection = replica.connection().await;
        while Instant::now() < deadline {
            // A replica answers LOADING while it takes in the primary's first snapshot.
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica never linked to its primary");
    }

    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port, extra);
            std::thread::sleep(Duration::from_millis(30));
            if let Ok(Some(_)) = child.try_wait() {
                continue; // lost the port to someone else: try another
            }
            wait_for_port(port, "redis-server", &mut child);
            return Self {
                port,
                child: Mutex::new(Some(child)),
            };
        }
        panic!("could not start redis-server on a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A redis-server that speaks TLS on `tls_port` (certificates from `pki`), and plaintext on
    /// `port` for the test's own inspection. With `clients_need_certificates`, mutual TLS.
    pub fn start_tls(pki: &TestPki, clients_need_certificates: bool) -> (Self, u16) {
        let tls_port = free_port();
        let server = Self::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &pki.server_cert.display().to_string(),
            "--tls-key-file",
            &pki.server_key.display().to_string(),
            "--tls-ca-cert-file",
            &pki.ca_cert.display().to_string(),
            "--tls-auth-clients",
            if clients_need_certificates { "yes" } else { "no" },
        ]);
        let mut child = server.child.lock().unwrap().take().unwrap();
        wait_for_port(tls_port, "redis-server (TLS)", &mut child);
        *server.child.lock().unwrap() = Some(child);
        (server, tls_port)
    }

    /// Starts a server again on this one's port, empty, once [`Self::stop`] stopped it (Redis
    /// coming back after an outage).
    pub fn restart(&self) {
        let mut child = spawn(self.port, &[]);
        wait_for_port(self.port, "redis-server (restarted)", &mut child);
        *self.child.lock().unwrap() = Some(child);
    }

    /// Kills the server (for failure tests). Safe to call more than once.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every key with every value in it, as text, for assertions over the whole store.
    pub async fn dump(&self) -> Vec<(String, String)> {
        let mut connection = self.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
        let mut entries = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut connection).await.unwrap();
            let value: Vec<String> = match kind.as_str() {
                // Records are binary (protobuf): their text parts read as they are.
                "string" => {
                    let bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
                    vec![String::from_utf8_lossy(&bytes).into_owned()]
                }
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .unwrap(),
                "set" => redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .unwrap(),
                "list" => redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await
                    .unwrap(),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await
                    .unwrap(),
                // Webhook notifications: every entry's fields.
                "stream" => {
                    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    entries
                        .into_iter()
                        .flat_map(|(_, fields)| fields)
                        .map(|field| String::from_utf8_lossy(&field).into_owned())
                        .collect()
                }
                other => panic!("unexpected key type {other} for {key}"),
            };
            entries.push((key, value.join("\n")));
        }
        entries.sort();
        entries
    }

    /// [`Self::dump`] without the audit log (and its head) when it holds only service events (the
    /// rules each broker loaded, audit queries) and checkpoints: what requests and grants left
    /// behind.
    pub async fn recorded(&self) -> Vec<(String, String)> {
        let mut connection = self.connection().await;
        let references: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg("gb:{audit}:events")
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        let service_only = references
            .iter()
            .all(|(_, fields)| fields[0] == b"s" || fields[0] == b"c");
        self.dump()
            .await
            .into_iter()
            .filter(|(key, _)| !(service_only && key.starts_with("gb:{audit}:")))
            .collect()
    }

    /// A store on this server, as the broker configures it (prefix `gb`), for reading records
    /// back through the adapter rather than by key layout.
    pub fn store(&self) -> grant_broker::adapters::redis_store::RedisGrantStore {
        grant_broker::adapters::redis_store::RedisGrantStore::new(&store_settings(
            grant_broker::adapters::Topology::Server(self.url()),
            "gb",
        ))
        .unwrap()
    }

    /// The grant as recorded (`None` when there is no record).
    pub async fn grant(&self, grant_id: &str) -> Option<grant_broker::domain::Grant> {
        use grant_broker::ports::GrantRecords as _;
        let id = grant_broker::domain::GrantId::parse(grant_id).unwrap();
        self.store().get(id).await.unwrap()
    }

    /// The grant's recorded events, as JSON (`event` names the type).
    pub async fn events(&self, grant_id: &str) -> Vec<serde_json::Value> {
        use grant_broker::ports::GrantRecords as _;
        let id = grant_broker::domain::GrantId::parse(grant_id).unwrap();
        self.store()
            .events_from(id, 0)
            .await
            .unwrap()
            .iter()
            .map(|event| serde_json::to_value(event).unwrap())
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throw-away certificate authority with a server certificate for 127.0.0.1 and a client
/// certificate, as PEM files in a temporary directory.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "grant-broker test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["grant-broker".into()]);
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca_cert: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            dir,
        }
    }
}

/// The store settings tests use on `topology` under `prefix`: as the broker configures them,
/// with the tests' integrity key.
pub fn store_settings(
    topology: grant_broker::adapters::Topology,
    prefix: &str,
) -> grant_broker::adapters::redis_store::RedisSettings {
    grant_broker::adapters::redis_store::RedisSettings {
        topology,
        username: None,
        password: None,
        key_prefix: prefix.to_owned(),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
        retention: Duration::from_secs(400 * 86_400),
        min_replicas: 0,
        replica_timeout: Duration::from_millis(100),
        tls: None,
        integrity: crate::common::integrity_keys(),
        checkpoint_interval: Duration::from_secs(1),
    }
}
