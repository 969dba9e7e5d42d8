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
