//! The real grant-broker server on `127.0.0.1:0`, from a configuration the test shapes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use grant_broker::{adapters::webhooks::DeliverySettings, config::Config, grpc::proto, server};
use tokio::sync::oneshot;

use super::*;

/// Knobs a test may turn in the server's configuration.
#[derive(Clone)]
pub struct Settings {
    pub redis_url: String,
    /// A cluster's nodes instead of `redis_url` (`redis.cluster_nodes`), when not empty.
    pub redis_cluster: Vec<String>,
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
    /// The `[integrity]` table: by default [`default_integrity`].
    pub integrity: String,
    /// The `[limits]` table: by default far above what any test does, so that only the tests of
    /// the limits meet them.
    pub limits: String,
    /// `[[webhooks]]` tables appended to the configuration.
    pub webhooks: String,
    /// Any other TOML appended to the configuration (`[server.tls]`, more `[[callers]]`).
    pub extra: String,
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
            redis_cluster: Vec::new(),
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
            extra: String::new(),
            integrity: default_integrity(),
            limits: "[limits]\nrequests_per_minute = 1000000\nrequests_per_person_per_minute = 1000000\nlive_grants_per_grantee = 1000000\npending_grants = 1000000".to_owned(),
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

pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The integrity section every test runs with unless it says otherwise: the tests' key, from a
/// file (so that a broker process started from the configuration file finds it too), and a
/// checkpoint every second.
pub fn default_integrity() -> String {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("gb-test-integrity-{}.key", std::process::id()));
        std::fs::write(&path, crate::common::TEST_INTEGRITY_KEY).unwrap();
        path
    });
    format!(
        "[integrity]\ncheckpoint_interval_secs = 1\n[[integrity.keys]]\nid = 1\nfile = \"{}\"",
        path.display()
    )
}

/// The configuration every integration test runs with, placeholders (`${name}`) and all.
const TEMPLATE: &str = include_str!("../../fixtures/grant-broker.test.toml");

/// [`TEMPLATE`] filled in for `settings`: the shipped example rules and a few targets that
/// exercise them.
pub fn config_text(settings: &Settings) -> String {
    let mut rules = format!("\"{}\"", manifest_dir().join("deploy/rules/approval.cedar").display());
    if !settings.extra_rules.is_empty() {
        rules += &format!(", \"{}\"", rule_file(&settings.extra_rules).display());
    }
    let iam_endpoint = settings
        .iam_endpoint
        .as_ref()
        .map(|url| format!("iam_endpoint = \"{url}\""))
        .unwrap_or_default();
    let values = [
        (
            "redis_where",
            if settings.redis_cluster.is_empty() {
                format!("url = \"{}\"", settings.redis_url)
            } else {
                format!(
                    "cluster_nodes = [{}]",
                    settings
                        .redis_cluster
                        .iter()
                        .map(|node| format!("\"{node}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ),
        ("redis_timeout", settings.redis_timeout_ms.to_string()),
        ("min_replicas", settings.min_replicas.to_string()),
        ("redis_extra", settings.redis_extra.clone()),
        ("integrity", settings.integrity.clone()),
        ("limits", settings.limits.clone()),
        ("sts", settings.sts_endpoint.clone()),
        ("iam_endpoint", iam_endpoint),
        ("max_attempts", settings.max_attempts.to_string()),
        ("attempt_timeout", settings.attempt_timeout_ms.to_string()),
        ("operation_timeout", settings.operation_timeout_ms.to_string()),
        ("rules", rules),
        ("max_issuances", settings.max_issuances_per_grant.to_string()),
        ("portal", sha256_hex(PORTAL_TOKEN)),
        ("pipeline", sha256_hex(PIPELINE_TOKEN)),
        ("approvals", sha256_hex(APPROVALS_TOKEN)),
        ("admin", sha256_hex(ADMIN_TOKEN)),
        ("auditor", sha256_hex(AUDITOR_TOKEN)),
        ("logs_role", settings.logs_role.clone()),
        ("webhooks", settings.webhooks.clone()),
        ("extra", settings.extra.clone()),
    ];
    let mut text = TEMPLATE.to_owned();
    for (name, value) in values {
        text = text.replace(&format!("${{{name}}}"), &value);
    }
    assert!(
        !text.contains("${"),
        "a placeholder left unfilled in the test configuration:\n{text}"
    );
    text
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
        let calls = config.calls.clone();
        let tls = config.tls.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (broker, auth, deliveries) = server::build(config).await.unwrap();
        let deliveries = deliveries.filter(|_| settings.deliver);
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            server::run(
                server::Listeners {
                    api: listener,
                    health: None,
                },
                broker,
                auth,
                deliveries,
                async {
                    let _ = stopped.await;
                },
                server::Serving {
                    drain_timeout,
                    tls: tls.as_ref(),
                    calls,
                    reload: None,
                },
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
