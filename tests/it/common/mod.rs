//! Test harness: a real `redis-server` per test on its own loopback port, the moto server as
//! AWS (shared when `GB_TEST_MOTO_URL` is set, otherwise started here), a small fake STS for
//! the error paths moto cannot produce, and the real grant-broker server on `127.0.0.1:0`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake_iam;

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use grant_broker::{adapters::webhooks::DeliverySettings, config::Config, grpc::proto, server};
use http_body_util::{BodyExt, Full};
use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tonic::{Request, transport::Channel};

pub type Client = proto::grant_broker_client::GrantBrokerClient<Channel>;

pub const PORTAL_TOKEN: &str = "portal-token-0123456789";
pub const PIPELINE_TOKEN: &str = "pipeline-token-0123456789";
/// An approval portal: relays approvals for the people it names.
pub const APPROVALS_TOKEN: &str = "approvals-token-0123456789";
/// An admin caller (`security-console`): revokes any grant, cuts off a target's sessions.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// An auditor caller (`audit-tool`): reads every grant.
pub const AUDITOR_TOKEN: &str = "auditor-token-0123456789";

fn manifest_dir() -> PathBuf {
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
            let mut child = Command::new("redis-server")
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
                .expect("redis-server must be installed (scripts/test installs it)");
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

    /// [`Self::dump`] without the audit log when it holds only service events (the rules each
    /// broker loaded, audit queries): what requests and grants left behind.
    pub async fn recorded(&self) -> Vec<(String, String)> {
        let mut connection = self.connection().await;
        let references: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg("gb:{audit}:events")
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        let service_only = references.iter().all(|(_, fields)| fields[0] == b"s");
        self.dump()
            .await
            .into_iter()
            .filter(|(key, _)| !(service_only && key == "gb:{audit}:events"))
            .collect()
    }

    /// A store on this server, as the broker configures it (prefix `gb`), for reading records
    /// back through the adapter rather than by key layout.
    pub fn store(&self) -> grant_broker::adapters::redis_store::RedisGrantStore {
        grant_broker::adapters::redis_store::RedisGrantStore::new(&grant_broker::adapters::redis_store::RedisSettings {
            url: self.url(),
            key_prefix: "gb".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            retention: Duration::from_secs(400 * 86_400),
            min_replicas: 0,
            replica_timeout: Duration::from_millis(100),
            tls: None,
        })
        .unwrap()
    }

    /// The grant as recorded (`None` when there is no record).
    pub async fn grant(&self, grant_id: &str) -> Option<grant_broker::domain::Grant> {
        use grant_broker::ports::GrantStore as _;
        let id = grant_broker::domain::GrantId::parse(grant_id).unwrap();
        self.store().get(id).await.unwrap()
    }

    /// The grant's recorded events, as JSON (`event` names the type).
    pub async fn events(&self, grant_id: &str) -> Vec<serde_json::Value> {
        use grant_broker::ports::GrantStore as _;
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

/// The moto server: shared from `GB_TEST_MOTO_URL`, or one started for this test.
pub struct Moto {
    pub url: String,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("GB_TEST_MOTO_URL") {
            return Self { url, child: None };
        }
        let venv = manifest_dir().join(".venv/bin/moto_server");
        let program = if venv.exists() {
            venv
        } else {
            PathBuf::from("moto_server")
        };
        let port = free_port();
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {}: {error} (run scripts/test, which installs moto)",
                    program.display()
                )
            });
        wait_for_port(port, "moto_server", &mut child);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the fake STS endpoint does with an AssumeRole call.
#[derive(Clone)]
pub enum StsBehaviour {
    Succeed,
    /// Answers with STS's XML error document.
    Fail {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
    /// Succeeds after a delay.
    Delay(Duration),
}

/// A fake STS endpoint on loopback that records every call's form parameters.
pub struct FakeSts {
    pub url: String,
    calls: Arc<Mutex<Vec<HashMap<String, String>>>>,
    role_ids: RoleIds,
}

/// The RoleId the fake reports for each role name (`AROAFAKE` for any other).
type RoleIds = Arc<Mutex<HashMap<String, String>>>;

/// Called with each AssumeRole call's parameters before the answer is sent.
pub type Hook = Arc<dyn Fn(&HashMap<String, String>) + Send + Sync>;

impl FakeSts {
    pub async fn start(behaviour: StsBehaviour) -> Self {
        Self::start_with_hook(behaviour, Arc::new(|_| {})).await
    }

    /// `hook` runs on every call, before the answer is sent.
    pub async fn start_with_hook(behaviour: StsBehaviour, hook: Hook) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicUsize::new(0));
        let role_ids = RoleIds::default();
        let state = (Arc::clone(&calls), behaviour, hook, counter, Arc::clone(&role_ids));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let (calls, behaviour, hook, counter, role_ids) = state.clone();
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let params: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
                            calls.lock().unwrap().push(params.clone());
                            hook(&params);
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let role = params.get("RoleArn").and_then(|arn| arn.rsplit('/').next());
                            let role_id = role
                                .and_then(|role| role_ids.lock().unwrap().get(role).cloned())
                                .unwrap_or_else(|| "AROAFAKE".to_owned());
                            Ok::<_, hyper::Error>(answer(&behaviour, &params, n, &role_id).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, calls, role_ids }
    }

    /// Sessions of role `role_name` are reported under `role_id` from now on, as STS reports
    /// the RoleId of the role's current incarnation.
    pub fn set_role_id(&self, role_name: &str, role_id: &str) {
        self.role_ids
            .lock()
            .unwrap()
            .insert(role_name.to_owned(), role_id.to_owned());
    }

    pub fn calls(&self) -> Vec<HashMap<String, String>> {
        self.calls.lock().unwrap().clone()
    }
}

pub fn fake_secret(n: usize) -> String {
    format!("FakeSecretAccessKey{n:04}wJalrXUtnFEMIK7MDENGbPxRfiCY")
}

pub fn fake_token(n: usize) -> String {
    format!("FakeSessionToken{n:04}IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ")
}

async fn answer(
    behaviour: &StsBehaviour,
    params: &HashMap<String, String>,
    n: usize,
    role_id: &str,
) -> Response<Full<Bytes>> {
    let xml = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match behaviour {
        StsBehaviour::Fail { status, code, message } => xml(
            *status,
            format!(
                r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fake-{n}</RequestId></ErrorResponse>"#
            ),
        ),
        StsBehaviour::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            xml(200, success(params, n, role_id))
        }
        StsBehaviour::Succeed => xml(200, success(params, n, role_id)),
    }
}

fn success(params: &HashMap<String, String>, n: usize, role_id: &str) -> String {
    let role_arn = &params["RoleArn"];
    let session = &params["RoleSessionName"];
    let account = role_arn.split(':').nth(4).unwrap();
    let role = role_arn.rsplit('/').next().unwrap();
    let duration: i64 = params["DurationSeconds"].parse().unwrap();
    let expiration = (OffsetDateTime::now_utc() + time::Duration::seconds(duration))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><SourceIdentity>{source}</SourceIdentity><AssumedRoleUser><AssumedRoleId>{role_id}:{session}</AssumedRoleId><Arn>arn:aws:sts::{account}:assumed-role/{role}/{session}</Arn></AssumedRoleUser><Credentials><AccessKeyId>ASIAFAKE{n:012}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials><PackedPolicySize>7</PackedPolicySize></AssumeRoleResult><ResponseMetadata><RequestId>fake-{n}</RequestId></ResponseMetadata></AssumeRoleResponse>"#,
        source = params.get("SourceIdentity").cloned().unwrap_or_default(),
        secret = fake_secret(n),
        token = fake_token(n),
    )
}

/// Knobs a test may turn in the server's configuration.
#[derive(Clone)]
pub struct Settings {
    pub redis_url: String,
    pub sts_endpoint: String,
    pub max_attempts: u32,
    pub attempt_timeout_ms: u64,
    pub operation_timeout_ms: u64,
    pub redis_timeout_ms: u64,
    pub min_replicas: u32,
    pub max_issuances_per_grant: u32,
    /// Cedar rules added to the shipped example rules.
    pub extra_rules: String,
    /// Extra lines for the `[redis]` table (TLS files).
    pub redis_extra: String,
    /// `[[webhooks]]` tables appended to the configuration.
    pub webhooks: String,
    /// The environment the configuration's `secret_env` names are read from.
    pub env: HashMap<String, String>,
    /// The webhook delivery worker's pacing.
    pub delivery: DeliverySettings,
    /// Run the delivery worker (when webhooks are configured); `false`: only queue.
    pub deliver: bool,
    /// Where the broker reaches IAM (moto, or the fake in front of it); none: no enforcement
    /// can succeed.
    pub iam_endpoint: Option<String>,
    /// The role name of the `dev-logs-read` target (tests sharing one moto use their own).
    pub logs_role: String,
}

impl Settings {
    pub fn new(redis_url: String, sts_endpoint: String) -> Self {
        Self {
            redis_url,
            sts_endpoint,
            max_attempts: 2,
            attempt_timeout_ms: 2_000,
            operation_timeout_ms: 5_000,
            redis_timeout_ms: 500,
            min_replicas: 0,
            max_issuances_per_grant: 10,
            extra_rules: String::new(),
            redis_extra: String::new(),
            webhooks: String::new(),
            env: HashMap::new(),
            delivery: DeliverySettings::default(),
            deliver: true,
            iam_endpoint: None,
            logs_role: "vendor-logs-read".to_owned(),
        }
    }
}

/// A rule file holding `text`, kept for the rest of the test process.
fn rule_file(text: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "gb-test-rules-{}-{}.cedar",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The configuration every integration test runs with: the shipped example rules and a few
/// targets that exercise them.
pub fn config_text(settings: &Settings) -> String {
    let mut rules = format!("\"{}\"", manifest_dir().join("deploy/rules/approval.cedar").display());
    if !settings.extra_rules.is_empty() {
        rules += &format!(", \"{}\"", rule_file(&settings.extra_rules).display());
    }
    format!(
        r#"
[redis]
url = "{redis_url}"
connect_timeout_ms = {redis_timeout}
response_timeout_ms = {redis_timeout}
min_replicas = {min_replicas}
replica_timeout_ms = 300
{redis_extra}

[aws]
sts_endpoint = "{sts}"
{iam_endpoint}
max_attempts = {max_attempts}
attempt_timeout_ms = {attempt_timeout}
operation_timeout_ms = {operation_timeout}
initial_backoff_ms = 10
deny_verify_interval_secs = 5
emulator_credentials = {{ access_key_id = "testing", secret_access_key = "testing" }}

[grants]
max_issuances_per_grant = {max_issuances}

[rules]
files = [{rules}]

[[targets]]
id = "dev-logs-read"
description = "Vendor X reads staging logs"
environment = "staging"
account_id = "123456789012"
role_arn = "arn:aws:iam::123456789012:role/{logs_role}"
region = "eu-west-1"
external_id = "acme-vendor-x"
max_duration_secs = 3600
session_tags = true
[[targets.ceiling]]
actions = ["s3:Get*", "s3:ListBucket"]
resources = ["arn:aws:s3:::acme-logs", "arn:aws:s3:::acme-logs/*"]

[[targets]]
id = "prod-logs-read"
environment = "production"
account_id = "210987654321"
role_arn = "arn:aws:iam::210987654321:role/vendor-logs-read"
region = "us-east-1"
max_duration_secs = 7200
[[targets.ceiling]]
actions = ["s3:GetObject", "s3:ListBucket"]
resources = ["arn:aws:s3:::acme-prod-logs", "arn:aws:s3:::acme-prod-logs/*"]

[[targets]]
id = "staging-ec2-mfa"
environment = "staging"
account_id = "123456789012"
role_arn = "arn:aws:iam::123456789012:role/ec2-reader"
region = "eu-west-1"
max_duration_secs = 3600
mfa_required = true
[[targets.ceiling]]
actions = ["ec2:Describe*"]
resources = ["*"]

[[targets]]
id = "staging-iam"
environment = "staging"
account_id = "123456789012"
role_arn = "arn:aws:iam::123456789012:role/iam-operator"
region = "eu-west-1"
max_duration_secs = 3600
[[targets.ceiling]]
actions = ["iam:*"]
resources = ["*"]

[[targets]]
id = "app-logs"
environment = "staging"
account_id = "123456789012"
role_arn = "arn:aws:iam::123456789012:role/app-logs-reader"
region = "us-west-2"
max_duration_secs = 3600
[[targets.ceiling]]
actions = ["logs:Get*"]
resources = ["arn:aws:logs:us-west-2:123456789012:log-group:app-*-prod"]

[[callers]]
id = "vendor-portal"
token_sha256 = "{portal}"
targets = ["dev-logs-read", "prod-logs-read", "staging-ec2-mfa", "staging-iam", "app-logs", "legacy-logs"]

[[callers]]
id = "ci-pipeline"
token_sha256 = "{pipeline}"
targets = ["dev-logs-read"]

[[callers]]
id = "audit-tool"
token_sha256 = "{auditor}"
targets = []
auditor = true

[[callers]]
id = "security-console"
token_sha256 = "{admin}"
targets = []
admin = true

[[targets]]
id = "legacy-logs"
environment = "staging"
account_id = "123456789012"
role_arn = "arn:aws:iam::123456789012:role/legacy-logs-reader"
region = "eu-west-1"
max_duration_secs = 3600
revocation = "record-only"
[[targets.ceiling]]
actions = ["s3:GetObject"]
resources = ["arn:aws:s3:::legacy-logs/*"]

[[callers]]
id = "approval-portal"
token_sha256 = "{approvals}"
targets = []
act_for_approvers = true

[[approvers]]
person = "bob@example.com"
groups = ["security"]

[[approvers]]
person = "carol@example.com"
groups = ["team-leads"]

[[approvers]]
person = "dave@example.com"
groups = ["security", "team-leads"]

[[approvers]]
person = "alice@example.com"
groups = ["security", "team-leads"]

{webhooks}
"#,
        redis_url = settings.redis_url,
        redis_timeout = settings.redis_timeout_ms,
        min_replicas = settings.min_replicas,
        redis_extra = settings.redis_extra,
        sts = settings.sts_endpoint,
        max_attempts = settings.max_attempts,
        attempt_timeout = settings.attempt_timeout_ms,
        operation_timeout = settings.operation_timeout_ms,
        rules = rules,
        max_issuances = settings.max_issuances_per_grant,
        portal = sha256_hex(PORTAL_TOKEN),
        pipeline = sha256_hex(PIPELINE_TOKEN),
        approvals = sha256_hex(APPROVALS_TOKEN),
        admin = sha256_hex(ADMIN_TOKEN),
        auditor = sha256_hex(AUDITOR_TOKEN),
        iam_endpoint = settings
            .iam_endpoint
            .as_ref()
            .map(|url| format!("iam_endpoint = \"{url}\""))
            .unwrap_or_default(),
        logs_role = settings.logs_role,
        webhooks = settings.webhooks,
    )
}

/// The real server on `127.0.0.1:0`, shut down on drop.
pub struct Server {
    pub address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Server {
    pub async fn start(settings: &Settings) -> Self {
        let env = |name: &str| settings.env.get(name).cloned();
        let mut config =
            Config::parse_with_env(&config_text(settings), &manifest_dir(), &env).unwrap_or_else(|problems| {
                panic!("test config invalid: {problems:?}");
            });
        config.delivery = settings.delivery.clone();
        let drain_timeout = config.drain_timeout;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (broker, auth, deliveries) = server::build(config).await.unwrap();
        let deliveries = deliveries.filter(|_| settings.deliver);
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            server::run(
                listener,
                broker,
                auth,
                deliveries,
                async {
                    let _ = stopped.await;
                },
                drain_timeout,
            )
            .await
            .unwrap();
        });
        Self {
            address,
            shutdown: Some(shutdown),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn client(&self) -> Client {
        proto::grant_broker_client::GrantBrokerClient::connect(self.url())
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Wraps a message with the caller's bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A request that the example rules auto-approve on `dev-logs-read`.
pub fn read_logs_request(request_id: &str) -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        request_id: request_id.to_owned(),
        target: "dev-logs-read".to_owned(),
        scopes: vec![proto::Scope {
            actions: vec!["s3:GetObject".to_owned()],
            resources: vec!["arn:aws:s3:::acme-logs/vendor-x/*".to_owned()],
        }],
        duration: Some(prost_types::Duration {
            seconds: 1800,
            nanos: 0,
        }),
        justification: "investigate ingestion lag".to_owned(),
        ticket: "INC-4711".to_owned(),
        requester: "alice@example.com".to_owned(),
        grantee: "vendor-x".to_owned(),
        mfa_serial: String::new(),
        mfa_code: String::new(),
        start_time: None,
        break_glass: false,
    }
}

/// A request the example rules send to people: production, with a ticket (one approval from
/// security and one from a team lead).
pub fn production_request() -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        target: "prod-logs-read".to_owned(),
        scopes: vec![proto::Scope {
            actions: vec!["s3:GetObject".to_owned()],
            resources: vec!["arn:aws:s3:::acme-prod-logs/vendor-x/*".to_owned()],
        }],
        ticket: "CHG-7".to_owned(),
        ..read_logs_request("")
    }
}

/// The field paths of a status's BadRequest violations.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status.
pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// A value of a status's ErrorInfo metadata.
pub fn error_metadata(status: &tonic::Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// The descriptions of a status's PreconditionFailure violations.
pub fn precondition_descriptions(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .precondition_failure()
        .map(|failure| failure.violations.iter().map(|v| v.description.clone()).collect())
        .unwrap_or_default()
}

/// Asserts a status's code, its ErrorInfo reason, and that its message says `says`.
#[track_caller]
pub fn assert_status(status: &tonic::Status, code: tonic::Code, reason: &str, says: &str) {
    assert_eq!(
        (status.code(), error_reason(status).as_str()),
        (code, reason),
        "{status:?}"
    );
    assert!(
        status.message().contains(says),
        "`{}` does not say `{says}`",
        status.message()
    );
}

/// The portal caller's most recent grant.
pub async fn newest_grant(client: &mut Client) -> proto::Grant {
    let page = proto::ListGrantsRequest {
        page_size: 1,
        ..Default::default()
    };
    let mut grants = client
        .list_grants(authed(PORTAL_TOKEN, page))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1, "the caller has a grant");
    grants.remove(0)
}

/// An approver's approval, with a comment naming them.
pub fn approve(id: &str, approver: &str) -> proto::ApproveGrantRequest {
    proto::ApproveGrantRequest {
        id: id.to_owned(),
        approver: approver.to_owned(),
        comment: format!("ok from {approver}"),
    }
}

/// Runs the grant-broker command with `args`, off the async runtime's threads.
pub async fn run_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_grant-broker"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// IssueCredentials for a grant, without MFA.
pub fn issue_for(grant_id: &str) -> proto::IssueCredentialsRequest {
    proto::IssueCredentialsRequest {
        id: grant_id.to_owned(),
        ..Default::default()
    }
}

/// Every audit-log event of type `event`, oldest first, as an auditor reads them, each with its
/// `event_json` parsed.
pub async fn logged(client: &mut Client, event: &str) -> Vec<(proto::AuditEvent, serde_json::Value)> {
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(authed(
                AUDITOR_TOKEN,
                proto::ListAuditEventsRequest {
                    events: vec![event.to_owned()],
                    page_size: 500,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for entry in page.events {
            let json = serde_json::from_str(&entry.event_json).unwrap();
            found.push((entry, json));
        }
        if page.next_page_token.is_empty() {
            return found;
        }
        page_token = page.next_page_token;
    }
}
