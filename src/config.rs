//! Typed, validated configuration: one TOML file naming the listen address, Redis, AWS, the rule
//! files, the targets, the callers and the webhooks. Loading reports every problem at once, each with the key
//! that holds it (`targets[1].role_arn: ...`), so `grant-broker check-config` can list them all.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    adapters::{
        IamSettings, RedisSettings, RedisTls, StsSettings,
        webhooks::{self, DeliverySettings, Webhook},
    },
    broker::BrokerSettings,
    domain::{
        ActionPattern, Caller, CallerId, IamAccess, ResourcePattern, RevocationMode, Scope, Secret, Target,
        approval::Person, iam::Catalog, limits, scope,
    },
    rules::{RuleEngine, RuleSource},
};

/// One thing wrong with the configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A caller as configured: its id, the SHA-256 of its bearer token, the targets it may request.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    pub id: CallerId,
    pub token_sha256: [u8; 32],
    pub targets: BTreeSet<String>,
    /// May relay approvals and denials of the people it names (an approval portal).
    pub act_for_approvers: bool,
    /// May revoke any grant and cut off a target's sessions (an operator's tool).
    pub admin: bool,
    /// May read every grant (an audit tool).
    pub auditor: bool,
}

impl CallerConfig {
    /// The authenticated caller this configuration describes, as the broker sees it.
    pub fn caller(&self) -> Caller {
        Caller {
            id: self.id.clone(),
            targets: self.targets.clone(),
            acts_for_approvers: self.act_for_approvers,
            admin: self.admin,
            auditor: self.auditor,
        }
    }
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The operator accepted serving plaintext gRPC on a non-loopback address (logged at start).
    pub insecure_plaintext: bool,
    /// How long a shutdown waits for in-flight calls before it stops anyway (streams end at once).
    pub drain_timeout: std::time::Duration,
    pub redis: RedisSettings,
    pub sts: StsSettings,
    /// How to reach IAM for revocation (the STS settings, and an IAM endpoint override).
    pub iam: IamSettings,
    pub broker: BrokerSettings,
    pub rules: RuleEngine,
    pub targets: Vec<Target>,
    pub callers: Vec<CallerConfig>,
    /// Where notifications of grant events go; empty: nowhere (and no delivery worker runs).
    pub webhooks: Vec<Webhook>,
    /// How the delivery worker paces itself: not in the file (the defaults suit production);
    /// tests shorten it.
    pub delivery: DeliverySettings,
    /// Valid, but probably not what the operator means (a ceiling reaching further than it
    /// looks, plaintext on the network): `check-config` prints them, `serve` logs them.
    pub warnings: Vec<Problem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    redis: RawRedis,
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    grants: RawGrants,
    rules: RawRules,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    callers: Vec<RawCaller>,
    #[serde(default)]
    approvers: Vec<RawApprover>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    /// The name of the environment variable holding the HMAC secret, never the secret.
    secret_env: String,
    /// `None`: [`webhooks::DEFAULT_EVENTS`].
    events: Option<Vec<String>>,
    #[serde(default = "default_webhook_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_webhook_max_attempts")]
    max_attempts: u32,
    #[serde(default)]
    insecure_http: bool,
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}
/// With the default backoff (1 s doubling), eight attempts span about two minutes.
fn default_webhook_max_attempts() -> u32 {
    8
}
const WEBHOOK_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;
const WEBHOOK_MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    insecure_plaintext: bool,
    drain_timeout_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_owned(),
            insecure_plaintext: false,
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
        }
    }
}

/// Well under Kubernetes' default 30 s termination grace period, so the process exits on its own.
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
const MAX_DRAIN_TIMEOUT_SECS: u64 = 300;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGrants {
    max_issuances_per_grant: u32,
    pending_timeout_hours: u64,
}

impl Default for RawGrants {
    fn default() -> Self {
        Self {
            max_issuances_per_grant: BrokerSettings::default().max_issuances_per_grant,
            pending_timeout_hours: 24,
        }
    }
}

/// Longest a request may wait for approvals (a week).
const MAX_PENDING_TIMEOUT_HOURS: u64 = 168;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    person: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// Most STS calls one grant may be configured to make.
const MAX_ISSUANCES_PER_GRANT: u32 = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_response_timeout_ms")]
    response_timeout_ms: u64,
    #[serde(default = "default_retention_days")]
    retention_days: u64,
    #[serde(default)]
    min_replicas: u32,
    #[serde(default = "default_replica_timeout_ms")]
    replica_timeout_ms: u64,
    tls_ca_file: Option<PathBuf>,
    tls_client_cert_file: Option<PathBuf>,
    tls_client_key_file: Option<PathBuf>,
}

fn default_replica_timeout_ms() -> u64 {
    500
}

fn default_key_prefix() -> String {
    "gb".to_owned()
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_response_timeout_ms() -> u64 {
    1_000
}
/// How often a role's deny policy may be read back from IAM, in seconds.
const DENY_VERIFY_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 5..=3600;

/// Thirteen months: a year of audit history plus a month of slack.
fn default_retention_days() -> u64 {
    400
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAws {
    sts_endpoint: Option<String>,
    iam_endpoint: Option<String>,
    attempt_timeout_ms: u64,
    operation_timeout_ms: u64,
    max_attempts: u32,
    initial_backoff_ms: u64,
    role_chaining: bool,
    emulator_credentials: Option<RawStaticCredentials>,
    deny_verify_interval_secs: u64,
}

impl Default for RawAws {
    fn default() -> Self {
        Self {
            sts_endpoint: None,
            iam_endpoint: None,
            attempt_timeout_ms: 3_000,
            operation_timeout_ms: 10_000,
            max_attempts: 3,
            initial_backoff_ms: 200,
            role_chaining: false,
            emulator_credentials: None,
            deny_verify_interval_secs: 60,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaticCredentials {
    access_key_id: String,
    secret_access_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    files: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    id: String,
    #[serde(default)]
    description: String,
    environment: String,
    account_id: String,
    role_arn: String,
    region: String,
    external_id: Option<String>,
    max_duration_secs: u64,
    #[serde(default)]
    mfa_required: bool,
    #[serde(default)]
    session_tags: bool,
    #[serde(default)]
    allow_unknown_actions: bool,
    /// `enforce` (the default) or `record-only`.
    revocation: Option<String>,
    iam_role_arn: Option<String>,
    iam_external_id: Option<String>,
    ceiling: Vec<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    id: String,
    token_sha256: String,
    targets: Vec<String>,
    #[serde(default)]
    act_for_approvers: bool,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    auditor: bool,
}

impl Config {
    /// Reads and validates the file at `path`, and the rule files it names (relative paths are
    /// relative to the configuration file).
    pub fn load(path: &Path) -> Result<Self, Vec<Problem>> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            vec![Problem::new(
                path.display().to_string(),
                format!("cannot read: {error}"),
            )]
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Validates configuration text; rule files are resolved against `base`, webhook secrets
    /// read from the process environment.
    pub fn parse(text: &str, base: &Path) -> Result<Self, Vec<Problem>> {
        Self::parse_with_env(text, base, &|name| std::env::var(name).ok())
    }

    /// [`Self::parse`] with webhook secrets read through `env` (tests cannot change the
    /// process environment safely).
    pub fn parse_with_env(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Vec<Problem>> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|error| vec![Problem::new("config", error.to_string().trim_end().to_owned())])?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        let listen = validate_listen(&raw.server, &mut problems, &mut warnings);
        let redis = validate_redis(raw.redis, base, &mut problems);
        let deny_verify_interval_secs = raw.aws.deny_verify_interval_secs;
        if !(DENY_VERIFY_INTERVAL_SECS).contains(&deny_verify_interval_secs) {
            problems.push(Problem::new(
                "aws.deny_verify_interval_secs",
                format!(
                    "must be {}-{} (a GetRolePolicy per role with revoked sessions this often)",
                    DENY_VERIFY_INTERVAL_SECS.start(),
                    DENY_VERIFY_INTERVAL_SECS.end()
                ),
            ));
        }
        let (sts, iam, role_chaining) = validate_aws(raw.aws, &mut problems);
        let max_issuances_per_grant = raw.grants.max_issuances_per_grant;
        if !(1..=MAX_ISSUANCES_PER_GRANT).contains(&max_issuances_per_grant) {
            problems.push(Problem::new(
                "grants.max_issuances_per_grant",
                format!("must be 1-{MAX_ISSUANCES_PER_GRANT}"),
            ));
        }
        let drain_timeout_secs = raw.server.drain_timeout_secs;
        if !(1..=MAX_DRAIN_TIMEOUT_SECS).contains(&drain_timeout_secs) {
            problems.push(Problem::new(
                "server.drain_timeout_secs",
                format!("must be 1-{MAX_DRAIN_TIMEOUT_SECS} (keep it under the orchestrator's grace period)"),
            ));
        }
        let pending_timeout_hours = raw.grants.pending_timeout_hours;
        if !(1..=MAX_PENDING_TIMEOUT_HOURS).contains(&pending_timeout_hours) {
            problems.push(Problem::new(
                "grants.pending_timeout_hours",
                format!("must be 1-{MAX_PENDING_TIMEOUT_HOURS}"),
            ));
        }
        let approver_groups = validate_approvers(raw.approvers, &mut problems);
        let targets = validate_targets(raw.targets, &mut problems, &mut warnings);
        warnings.extend(ceiling_warnings(&targets));
        let callers = validate_callers(raw.callers, &targets, &mut problems);
        let rules = load_rules(&raw.rules, base, &mut problems);
        let webhooks = validate_webhooks(raw.webhooks, env, &mut problems, &mut warnings);

        let retention = time::Duration::try_from(redis.retention).unwrap_or(time::Duration::days(400));
        match (listen, rules) {
            (Some(listen), Some(rules)) if problems.is_empty() => Ok(Self {
                listen,
                insecure_plaintext: raw.server.insecure_plaintext,
                drain_timeout: std::time::Duration::from_secs(drain_timeout_secs),
                redis,
                sts,
                iam,
                broker: BrokerSettings {
                    role_chaining,
                    max_issuances_per_grant,
                    pending_timeout: time::Duration::hours(i64::try_from(pending_timeout_hours).unwrap_or(24)),
                    approver_groups,
                    retention,
                    deny_verify_interval: time::Duration::seconds(
                        i64::try_from(deny_verify_interval_secs).unwrap_or(60),
                    ),
                },
                rules,
                targets,
                callers,
                webhooks,
                delivery: DeliverySettings::default(),
                warnings,
            }),
            _ => Err(problems),
        }
    }
}

/// The listen address. gRPC here is plaintext (TLS comes with the identity work), so an address
/// other hosts can reach needs the operator's explicit `insecure_plaintext = true`.
fn validate_listen(raw: &RawServer, problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) -> Option<SocketAddr> {
    let Ok(listen) = raw.listen.parse::<SocketAddr>() else {
        problems.push(Problem::new(
            "server.listen",
            format!("`{}` is not an address:port", raw.listen),
        ));
        return None;
    };
    if !listen.ip().is_loopback() {
        if raw.insecure_plaintext {
            warnings.push(Problem::new(
                "server.insecure_plaintext",
                format!(
                    "serving plaintext gRPC on {listen}: bearer tokens and credentials cross the network unencrypted; terminate TLS in front of the broker"
                ),
            ));
        } else {
            problems.push(Problem::new(
                "server.listen",
                format!(
                    "{listen} is reachable from other hosts, and the broker serves plaintext gRPC (bearer tokens and credentials unencrypted): listen on loopback behind a TLS proxy, or set server.insecure_plaintext = true to accept it"
                ),
            ));
        }
    }
    Some(listen)
}

/// Reads a PEM file named in the configuration (relative to it), as a problem under `key` when
/// it cannot be read or holds no PEM block.
fn read_pem(key: &str, path: &Path, base: &Path, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
    let path = base.join(path);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.windows(11).any(|w| w == b"-----BEGIN ") => Some(bytes),
        Ok(_) => {
            problems.push(Problem::new(key, format!("{} holds no PEM data", path.display())));
            None
        }
        Err(error) => {
            problems.push(Problem::new(key, format!("cannot read {}: {error}", path.display())));
            None
        }
    }
}

fn validate_redis_tls(raw: &RawRedis, base: &Path, problems: &mut Vec<Problem>) -> Option<RedisTls> {
    let tls = raw.url.starts_with("rediss://");
    let files = [
        ("redis.tls_ca_file", &raw.tls_ca_file),
        ("redis.tls_client_cert_file", &raw.tls_client_cert_file),
        ("redis.tls_client_key_file", &raw.tls_client_key_file),
    ];
    if !tls {
        for (key, file) in files {
            if file.is_some() {
                problems.push(Problem::new(key, "only for TLS: redis.url must start with rediss://"));
            }
        }
        return None;
    }
    let ca_pem = raw
        .tls_ca_file
        .as_ref()
        .and_then(|file| read_pem("redis.tls_ca_file", file, base, problems));
    let client = match (&raw.tls_client_cert_file, &raw.tls_client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => read_pem("redis.tls_client_cert_file", cert, base, problems)
            .zip(read_pem("redis.tls_client_key_file", key, base, problems))
            .map(|(cert, key)| (cert, Secret::from_bytes(key))),
        _ => {
            problems.push(Problem::new(
                "redis.tls_client_cert_file",
                "set both redis.tls_client_cert_file and redis.tls_client_key_file, or neither",
            ));
            None
        }
    };
    Some(RedisTls { ca_pem, client })
}

fn validate_redis(raw: RawRedis, base: &Path, problems: &mut Vec<Problem>) -> RedisSettings {
    if !["redis://", "rediss://", "redis+unix://"]
        .iter()
        .any(|scheme| raw.url.starts_with(scheme))
    {
        problems.push(Problem::new(
            "redis.url",
            "must start with redis://, rediss:// (TLS) or redis+unix://",
        ));
    }
    let tls = validate_redis_tls(&raw, base, problems);
    if raw.key_prefix.is_empty() || raw.key_prefix.contains(['{', '}', ' ']) {
        problems.push(Problem::new(
            "redis.key_prefix",
            "must be non-empty, without braces or spaces",
        ));
    }
    for (key, value) in [
        ("redis.connect_timeout_ms", raw.connect_timeout_ms),
        ("redis.response_timeout_ms", raw.response_timeout_ms),
    ] {
        if value == 0 || value > 60_000 {
            problems.push(Problem::new(key, "must be 1-60000 milliseconds"));
        }
    }
    // WAIT holds the reply until the replicas answer, so the client must wait longer than that.
    if raw.min_replicas > 0 && (raw.replica_timeout_ms == 0 || raw.replica_timeout_ms >= raw.response_timeout_ms) {
        problems.push(Problem::new(
            "redis.replica_timeout_ms",
            "must be positive and below redis.response_timeout_ms when redis.min_replicas is set",
        ));
    }
    if raw.retention_days == 0 || raw.retention_days > 3_650 {
        problems.push(Problem::new("redis.retention_days", "must be 1-3650 days"));
    }
    RedisSettings {
        url: raw.url,
        key_prefix: raw.key_prefix,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        response_timeout: Duration::from_millis(raw.response_timeout_ms),
        retention: Duration::from_secs(raw.retention_days.saturating_mul(86_400)),
        min_replicas: raw.min_replicas,
        replica_timeout: Duration::from_millis(raw.replica_timeout_ms),
        tls,
    }
}

fn validate_aws(raw: RawAws, problems: &mut Vec<Problem>) -> (StsSettings, IamSettings, bool) {
    for (key, endpoint) in [
        ("aws.sts_endpoint", &raw.sts_endpoint),
        ("aws.iam_endpoint", &raw.iam_endpoint),
    ] {
        if let Some(endpoint) = endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(Problem::new(key, "must be an http:// or https:// URL"));
        }
    }
    if raw.emulator_credentials.is_some() && raw.sts_endpoint.is_none() {
        problems.push(Problem::new(
            "aws.emulator_credentials",
            "only for an emulator: set aws.sts_endpoint too (real AWS credentials come from the provider chain)",
        ));
    }
    if raw.max_attempts == 0 || raw.max_attempts > 10 {
        problems.push(Problem::new("aws.max_attempts", "must be 1-10"));
    }
    if raw.attempt_timeout_ms == 0 || raw.operation_timeout_ms < raw.attempt_timeout_ms {
        problems.push(Problem::new(
            "aws.operation_timeout_ms",
            "must be at least aws.attempt_timeout_ms, which must be positive",
        ));
    }
    let settings = StsSettings {
        endpoint: raw.sts_endpoint,
        attempt_timeout: Duration::from_millis(raw.attempt_timeout_ms),
        operation_timeout: Duration::from_millis(raw.operation_timeout_ms),
        max_attempts: raw.max_attempts,
        initial_backoff: Duration::from_millis(raw.initial_backoff_ms),
        static_credentials: raw
            .emulator_credentials
            .map(|credentials| (credentials.access_key_id, Secret::new(credentials.secret_access_key))),
    };
    // IAM calls share the STS settings: the same credentials, timeouts and retries, and the STS
    // endpoint for assuming a target's IAM role.
    let iam = IamSettings {
        endpoint: raw.iam_endpoint,
        aws: settings.clone(),
    };
    (settings, iam, raw.role_chaining)
}

fn validate_targets(raw: Vec<RawTarget>, problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) -> Vec<Target> {
    let mut seen = BTreeMap::new();
    let mut targets = Vec::with_capacity(raw.len());
    for (index, target) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("targets[{index}].{field}");
        let id_ok = !target.id.is_empty()
            && target.id.len() <= 64
            && target
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !id_ok {
            problems.push(Problem::new(key("id"), "must be 1-64 characters of a-z, 0-9 and -_."));
        }
        if let Some(first) = seen.insert(target.id.clone(), index) {
            problems.push(Problem::new(
                key("id"),
                format!("`{}` is also the id of targets[{first}]", target.id),
            ));
        }
        if target.environment.is_empty() {
            problems.push(Problem::new(
                key("environment"),
                "is required (the rules match on it, e.g. `production`)",
            ));
        }
        if target.account_id.len() != 12 || !target.account_id.chars().all(|c| c.is_ascii_digit()) {
            problems.push(Problem::new(key("account_id"), "must be 12 digits"));
        }
        let arn_parts: Vec<&str> = target.role_arn.splitn(6, ':').collect();
        let arn_ok = matches!(arn_parts.as_slice(), ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty() && *account == target.account_id && resource.starts_with("role/") && resource.len() > 5);
        if !arn_ok || !(20..=2048).contains(&target.role_arn.len()) {
            problems.push(Problem::new(
                key("role_arn"),
                format!(
                    "must be arn:<partition>:iam::{}:role/<name> (20-2048 characters)",
                    target.account_id
                ),
            ));
        }
        if target.region.is_empty()
            || !target
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            problems.push(Problem::new(key("region"), "must be an AWS region such as eu-west-1"));
        }
        if let Some(external_id) = &target.external_id
            && let Err(why) = limits::check_external_id(external_id)
        {
            problems.push(Problem::new(key("external_id"), why));
        }
        if !(limits::MIN_DURATION_SECS..=limits::MAX_DURATION_SECS).contains(&target.max_duration_secs) {
            problems.push(Problem::new(
                key("max_duration_secs"),
                format!(
                    "must be {}-{} (STS limits)",
                    limits::MIN_DURATION_SECS,
                    limits::MAX_DURATION_SECS
                ),
            ));
        }
        if target.ceiling.is_empty() {
            problems.push(Problem::new(key("ceiling"), "at least one statement is required"));
        }
        let (revocation, iam) = validate_revocation(&target, &key, problems, warnings);
        let ceiling = target
            .ceiling
            .into_iter()
            .enumerate()
            .map(|(i, statement)| Scope {
                actions: parse_all(
                    &key(&format!("ceiling[{i}].actions")),
                    &statement.actions,
                    ActionPattern::parse,
                    problems,
                ),
                resources: parse_all(
                    &key(&format!("ceiling[{i}].resources")),
                    &statement.resources,
                    ResourcePattern::parse,
                    problems,
                ),
            })
            .collect();
        targets.push(Target {
            id: target.id,
            description: target.description,
            environment: target.environment,
            account_id: target.account_id,
            role_arn: target.role_arn,
            region: target.region,
            external_id: target.external_id,
            max_duration_secs: target.max_duration_secs,
            mfa_required: target.mfa_required,
            session_tags: target.session_tags,
            ceiling,
            allow_unknown_actions: target.allow_unknown_actions,
            revocation,
            iam,
        });
    }
    same_revocation_per_role(&targets, problems);
    targets
}

/// A target's `revocation`, `iam_role_arn` and `iam_external_id`.
fn validate_revocation(
    target: &RawTarget,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> (RevocationMode, IamAccess) {
    let revocation = match target.revocation.as_deref() {
        None | Some("enforce") => RevocationMode::Enforce,
        Some("record-only") => RevocationMode::RecordOnly,
        Some(other) => {
            problems.push(Problem::new(
                key("revocation"),
                format!(
                    "`{}` is not a revocation mode: `enforce` (deny revoked sessions on the role) or `record-only` (the role is not the broker's to change)",
                    crate::domain::clip(other, 64)
                ),
            ));
            RevocationMode::Enforce
        }
    };
    if let Some(arn) = &target.iam_role_arn {
        match parse_role_arn(arn) {
            None => problems.push(Problem::new(
                key("iam_role_arn"),
                "must be arn:<partition>:iam::<account>:role/<name> (20-2048 characters): a role the broker assumes to manage the target role's inline policy",
            )),
            Some((partition, account)) => {
                let target_partition = parse_role_arn(&target.role_arn).map(|(partition, _)| partition);
                if target_partition.is_some_and(|target_partition| target_partition != partition) {
                    problems.push(Problem::new(
                        key("iam_role_arn"),
                        format!("is in partition `{partition}`, the target's role is not: IAM is per partition"),
                    ));
                } else if account != target.account_id {
                    warnings.push(Problem::new(
                        key("iam_role_arn"),
                        format!(
                            "is in account {account}, not the target's {}: it can manage the role only through a cross-account grant",
                            target.account_id
                        ),
                    ));
                }
            }
        }
    }
    if let Some(external_id) = &target.iam_external_id {
        if target.iam_role_arn.is_none() {
            problems.push(Problem::new(
                key("iam_external_id"),
                "only for assuming iam_role_arn: set iam_role_arn too",
            ));
        } else if let Err(why) = limits::check_external_id(external_id) {
            problems.push(Problem::new(key("iam_external_id"), why));
        }
    }
    let iam = IamAccess {
        assume_role_arn: target.iam_role_arn.clone(),
        external_id: target.iam_external_id.clone(),
    };
    (revocation, iam)
}

/// The partition and account of a role ARN of the shape `arn:<partition>:iam::<account>:role/<name>`.
fn parse_role_arn(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && resource.len() > 5
                && resource.starts_with("role/")
                && !resource.ends_with('/')
                && (20..=2048).contains(&arn.len()) =>
        {
            Some((partition, account))
        }
        _ => None,
    }
}

/// Enforcement is per role: the broker keeps one deny policy on it, whichever target a revoked
/// grant came from. So targets naming the same role (IAM role names are unique per account
/// whatever their path, and case-insensitive) must agree on how it is enforced.
fn same_revocation_per_role(targets: &[Target], problems: &mut Vec<Problem>) {
    let mut first_of_role: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for (index, target) in targets.iter().enumerate() {
        let Some((partition, account)) = parse_role_arn(&target.role_arn) else {
            continue;
        };
        let role = (
            partition.to_owned(),
            account.to_owned(),
            target.role_name().to_ascii_lowercase(),
        );
        let first = *first_of_role.entry(role).or_insert(index);
        let Some(other) = targets.get(first).filter(|_| first != index) else {
            continue;
        };
        let field = if other.revocation != target.revocation {
            "revocation"
        } else if other.iam.assume_role_arn != target.iam.assume_role_arn {
            "iam_role_arn"
        } else if other.iam.external_id != target.iam.external_id {
            "iam_external_id"
        } else {
            continue;
        };
        problems.push(Problem::new(
            format!("targets[{index}].{field}"),
            format!(
                "targets[{first}] names the same role ({}) with another {field}: the broker keeps one deny policy per role, so every target of a role must set revocation, iam_role_arn and iam_external_id alike",
                target.role_name()
            ),
        ));
    }
}

/// People who approve, and their groups (which rules match with `principal in Group`).
fn validate_approvers(raw: Vec<RawApprover>, problems: &mut Vec<Problem>) -> BTreeMap<Person, BTreeSet<String>> {
    let mut approvers = BTreeMap::new();
    for (index, approver) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("approvers[{index}].{field}");
        let person = match Person::parse(&key("person"), &approver.person) {
            Ok(person) => person,
            Err(violation) => {
                problems.push(Problem::new(violation.field, violation.description));
                continue;
            }
        };
        for (i, group) in approver.groups.iter().enumerate() {
            let ok = !group.is_empty()
                && group.len() <= 64
                && group.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                problems.push(Problem::new(
                    format!("{}[{i}]", key("groups")),
                    "must be 1-64 characters of letters, digits and -_.",
                ));
            }
        }
        if approvers
            .insert(person.clone(), approver.groups.into_iter().collect())
            .is_some()
        {
            problems.push(Problem::new(key("person"), format!("`{person}` is listed twice")));
        }
    }
    approvers
}

/// Ceilings that reach further than they look, or name actions the catalog does not know, each
/// under its target's key.
fn ceiling_warnings(targets: &[Target]) -> Vec<Problem> {
    let catalog = Catalog::builtin();
    // An action the catalog does not know might write: only known reads are reads.
    let is_write = |action: &ActionPattern| {
        let mut expanded = catalog.expand(action).peekable();
        expanded.peek().is_none() || expanded.any(|info| !info.access_level().is_read())
    };
    let mut warnings = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let key = |field: &str| format!("targets[{index}].{field}");
        for warning in scope::ceiling_warnings(&target.ceiling, is_write) {
            warnings.push(Problem::new(key(&warning.field), warning.description));
        }
        let facts = catalog.facts(&target.ceiling);
        for (s, a) in facts.unknown {
            let action = &target.ceiling[s].actions[a];
            warnings.push(Problem::new(
                key(&format!("ceiling[{s}].actions[{a}]")),
                format!(
                    "`{}` matches no action the IAM catalog ({}) knows: a typo, or a service newer than the catalog",
                    action.as_str(),
                    catalog.source()
                ),
            ));
        }
    }
    warnings
}

fn parse_all<T>(
    key: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    if values.is_empty() {
        problems.push(Problem::new(key, "at least one entry is required"));
    }
    values
        .iter()
        .enumerate()
        .filter_map(|(i, value)| {
            parse(value)
                .map_err(|why| problems.push(Problem::new(format!("{key}[{i}]"), why)))
                .ok()
        })
        .collect()
}

fn validate_callers(raw: Vec<RawCaller>, targets: &[Target], problems: &mut Vec<Problem>) -> Vec<CallerConfig> {
    let known: BTreeSet<&str> = targets.iter().map(|target| target.id.as_str()).collect();
    let mut ids = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    let mut callers = Vec::with_capacity(raw.len());
    for (index, caller) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("callers[{index}].{field}");
        let id = CallerId::parse(&caller.id)
            .map_err(|why| problems.push(Problem::new(key("id"), why)))
            .ok();
        if let Some(first) = ids.insert(caller.id.clone(), index) {
            problems.push(Problem::new(
                key("id"),
                format!("`{}` is also the id of callers[{first}]", caller.id),
            ));
        }
        let mut token_sha256 = [0u8; 32];
        if hex::decode_to_slice(caller.token_sha256.to_ascii_lowercase(), &mut token_sha256).is_err() {
            problems.push(Problem::new(
                key("token_sha256"),
                "must be 64 hex digits: the SHA-256 of the caller's token (`printf %s \"$TOKEN\" | sha256sum`)",
            ));
        } else if let Some(first) = hashes.insert(token_sha256, index) {
            problems.push(Problem::new(
                key("token_sha256"),
                format!("same token as callers[{first}]"),
            ));
        }
        for (i, target) in caller.targets.iter().enumerate() {
            if !known.contains(target.as_str()) {
                problems.push(Problem::new(
                    format!("{}[{i}]", key("targets")),
                    format!("no target has id `{target}`"),
                ));
            }
        }
        if let Some(id) = id {
            callers.push(CallerConfig {
                id,
                token_sha256,
                targets: caller.targets.into_iter().collect(),
                act_for_approvers: caller.act_for_approvers,
                admin: caller.admin,
                auditor: caller.auditor,
            });
        }
    }
    callers
}

/// Webhooks: a unique name, an https URL (http only to loopback, or when the operator says so),
/// a secret from the environment long enough for HMAC-SHA256, and known event names.
fn validate_webhooks(
    raw: Vec<RawWebhook>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Vec<Webhook> {
    let mut names = BTreeMap::new();
    let mut valid = Vec::with_capacity(raw.len());
    for (index, webhook) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("webhooks[{index}].{field}");
        let before = problems.len();
        let name_ok = !webhook.name.is_empty()
            && webhook.name.len() <= 64
            && webhook
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !name_ok {
            problems.push(Problem::new(key("name"), "must be 1-64 characters of a-z, 0-9 and -_."));
        }
        if let Some(first) = names.insert(webhook.name.clone(), index) {
            problems.push(Problem::new(
                key("name"),
                format!("`{}` is also the name of webhooks[{first}]", webhook.name),
            ));
        }
        let url = match validate_webhook_url(&webhook.url, webhook.insecure_http) {
            Ok((url, plaintext)) => {
                if plaintext {
                    warnings.push(Problem::new(
                        key("insecure_http"),
                        format!(
                            "notifications to {} cross the network unencrypted (signed, but readable)",
                            webhooks::redacted_url(&url)
                        ),
                    ));
                }
                Some(url)
            }
            Err(why) => {
                problems.push(Problem::new(key("url"), why));
                None
            }
        };
        // The secret's value never appears in a problem: only its variable's name and length.
        let secret = match env(&webhook.secret_env) {
            _ if webhook.secret_env.is_empty() => {
                problems.push(Problem::new(
                    key("secret_env"),
                    "name the environment variable that holds the HMAC secret",
                ));
                None
            }
            None => {
                problems.push(Problem::new(
                    key("secret_env"),
                    format!("the environment variable `{}` is not set", webhook.secret_env),
                ));
                None
            }
            Some(value) if value.len() < webhooks::MIN_SECRET_BYTES => {
                problems.push(Problem::new(
                    key("secret_env"),
                    format!(
                        "`{}` holds {} bytes; an HMAC-SHA256 secret needs at least {}",
                        webhook.secret_env,
                        value.len(),
                        webhooks::MIN_SECRET_BYTES
                    ),
                ));
                None
            }
            Some(value) => Some(Secret::new(value)),
        };
        let events: BTreeSet<String> = match webhook.events {
            None => webhooks::DEFAULT_EVENTS.iter().map(|&name| name.to_owned()).collect(),
            Some(events) => {
                if events.is_empty() {
                    problems.push(Problem::new(
                        key("events"),
                        "name at least one event, or leave it out for the defaults",
                    ));
                }
                for (i, event) in events.iter().enumerate() {
                    if !webhooks::is_known_event(event) {
                        problems.push(Problem::new(
                            format!("{}[{i}]", key("events")),
                            format!(
                                "`{event}` is not an event; known: {}",
                                webhooks::known_events().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
                events.into_iter().collect()
            }
        };
        if !WEBHOOK_TIMEOUT_MS.contains(&webhook.timeout_ms) {
            problems.push(Problem::new(
                key("timeout_ms"),
                format!("must be {}-{}", WEBHOOK_TIMEOUT_MS.start(), WEBHOOK_TIMEOUT_MS.end()),
            ));
        }
        if !WEBHOOK_MAX_ATTEMPTS.contains(&webhook.max_attempts) {
            problems.push(Problem::new(
                key("max_attempts"),
                format!(
                    "must be {}-{}",
                    WEBHOOK_MAX_ATTEMPTS.start(),
                    WEBHOOK_MAX_ATTEMPTS.end()
                ),
            ));
        }
        if let (Some(url), Some(secret), true) = (url, secret, problems.len() == before) {
            valid.push(Webhook {
                name: webhook.name,
                url,
                secret,
                events,
                timeout: Duration::from_millis(webhook.timeout_ms),
                max_attempts: webhook.max_attempts,
            });
        }
    }
    valid
}

/// An absolute http(s) URL without credentials in it; plain http only to a loopback host unless
/// `insecure_http`. Returns the URL and whether it is plaintext beyond loopback (a warning).
fn validate_webhook_url(text: &str, insecure_http: bool) -> Result<(hyper::Uri, bool), String> {
    let url: hyper::Uri = text
        .parse()
        .map_err(|_| format!("`{}` is not a URL", crate::domain::clip(text, 128)))?;
    let Some(authority) = url.authority() else {
        return Err("must be an absolute https:// URL".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("must not hold credentials (user:password@): sign with secret_env instead".to_owned());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme_str() {
        Some("https") => Ok((url, false)),
        Some("http") if loopback => Ok((url, false)),
        Some("http") if insecure_http => Ok((url, true)),
        Some("http") => Err(format!(
            "plain http to {host} would send notifications unencrypted: use https://, or set insecure_http = true to accept it"
        )),
        _ => Err("must start with https:// (or http:// to a loopback host)".to_owned()),
    }
}

fn load_rules(raw: &RawRules, base: &Path, problems: &mut Vec<Problem>) -> Option<RuleEngine> {
    if raw.files.is_empty() {
        problems.push(Problem::new("rules.files", "name at least one Cedar rule file"));
        return None;
    }
    let mut texts = Vec::new();
    for (index, file) in raw.files.iter().enumerate() {
        let path = base.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => texts.push((file.display().to_string(), text)),
            Err(error) => problems.push(Problem::new(
                format!("rules.files[{index}]"),
                format!("cannot read {}: {error}", path.display()),
            )),
        }
    }
    let sources: Vec<RuleSource<'_>> = texts.iter().map(|(name, text)| RuleSource { name, text }).collect();
    match RuleEngine::load(&sources) {
        Ok(engine) => Some(engine),
        Err(errors) => {
            problems.extend(errors.into_iter().map(|error| Problem::new("rules", error)));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"permit (principal, action == GrantBroker::Action::"request", resource);"#;

    fn with_rules(config: &str) -> Result<Config, Vec<Problem>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.cedar"), RULES).unwrap();
        Config::parse(config, dir.path())
    }

    const GOOD: &str = r#"
        [redis]
        url = "redis://127.0.0.1:6379"
        [rules]
        files = ["rules.cedar"]
        [[targets]]
        id = "prod-logs-read"
        environment = "production"
        account_id = "123456789012"
        role_arn = "arn:aws:iam::123456789012:role/vendor-logs-read"
        region = "eu-west-1"
        max_duration_secs = 3600
        [[targets.ceiling]]
        actions = ["s3:GetObject"]
        resources = ["arn:aws:s3:::acme-logs/*"]
        [[callers]]
        id = "vendor-portal"
        token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        targets = ["prod-logs-read"]
    "#;

    #[test]
    fn a_good_config_loads() {
        let config = with_rules(GOOD).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.targets[0].ceiling[0].actions[0].as_str(), "s3:GetObject");
        assert_eq!(config.callers[0].targets.iter().collect::<Vec<_>>(), ["prod-logs-read"]);
        assert_eq!(config.redis.retention, Duration::from_secs(400 * 86_400));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let bad = GOOD
            .replace(
                "arn:aws:iam::123456789012:role/vendor-logs-read",
                "arn:aws:iam::999999999999:role/x",
            )
            .replace("max_duration_secs = 3600", "max_duration_secs = 60")
            .replace(r#"actions = ["s3:GetObject"]"#, r#"actions = ["GetObject"]"#)
            .replace(r#"targets = ["prod-logs-read"]"#, r#"targets = ["nope"]"#);
        let problems = with_rules(&bad).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "targets[0].role_arn",
                "targets[0].max_duration_secs",
                "targets[0].ceiling[0].actions[0]",
                "callers[0].targets[0]"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn ceilings_that_reach_further_than_they_look_are_warned_about_by_key() {
        let wide = GOOD.replace(
            r#"resources = ["arn:aws:s3:::acme-logs/*"]"#,
            r#"resources = ["arn:aws:s3:::acme-logs/*", "arn:aws:ec2:*:*:instance/*"]"#,
        );
        let config = with_rules(&wide).unwrap();
        let keys: Vec<&str> = config.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "targets[0].ceiling[0].resources[1]",
                "targets[0].ceiling[0].resources[1]"
            ]
        );
        assert!(
            config.warnings.iter().any(|w| w.message.contains("any account")),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn plaintext_on_the_network_needs_the_operator_to_say_so() {
        let open = GOOD.replace("[redis]", "[server]\nlisten = \"0.0.0.0:50051\"\n[redis]");
        let problems = with_rules(&open).unwrap_err();
        assert_eq!(problems[0].key, "server.listen", "{problems:?}");
        assert!(problems[0].message.contains("insecure_plaintext"), "{problems:?}");
        let accepted = open.replace("[redis]", "insecure_plaintext = true\n[redis]");
        let config = with_rules(&accepted).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.warnings[0].key, "server.insecure_plaintext");
        assert!(
            with_rules(GOOD).unwrap().warnings.is_empty(),
            "loopback needs no warning"
        );
    }

    #[test]
    fn redis_tls_files_are_checked_where_they_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.cedar"), RULES).unwrap();
        std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let with = |redis: &str| Config::parse(&GOOD.replace("url = \"redis://127.0.0.1:6379\"", redis), dir.path());
        let config = with("url = \"rediss://redis:6380\"\ntls_ca_file = \"ca.pem\"").unwrap();
        assert!(config.redis.tls.unwrap().ca_pem.unwrap().starts_with(b"-----BEGIN"));
        let keys = |problems: Vec<Problem>| problems.into_iter().map(|p| p.key).collect::<Vec<_>>();
        assert_eq!(
            keys(with("url = \"redis://redis:6379\"\ntls_ca_file = \"ca.pem\"").unwrap_err()),
            ["redis.tls_ca_file"]
        );
        assert_eq!(
            keys(
                with("url = \"rediss://redis:6380\"\ntls_ca_file = \"empty.pem\"\ntls_client_cert_file = \"ca.pem\"")
                    .unwrap_err()
            ),
            ["redis.tls_ca_file", "redis.tls_client_cert_file"]
        );
    }

    #[test]
    fn the_issuance_cap_defaults_to_ten_and_is_bounded() {
        assert_eq!(with_rules(GOOD).unwrap().broker.max_issuances_per_grant, 10);
        let problems =
            with_rules(&GOOD.replace("[rules]", "[grants]\nmax_issuances_per_grant = 0\n[rules]")).unwrap_err();
        assert_eq!(problems[0].key, "grants.max_issuances_per_grant");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = with_rules(
            &GOOD
                .replace("redis://127.0.0.1:6379", "redis://grant-broker:hunter2@127.0.0.1:6379/0")
                .replace(
                    "[rules]",
                    "[aws]\nsts_endpoint = \"http://127.0.0.1:1\"\nemulator_credentials = { access_key_id = \"AKIA\", secret_access_key = \"s3cr3t-key\" }\n[rules]",
                ),
        )
        .unwrap();
        let printed = format!("{config:?}");
        assert!(
            printed.contains("redis://grant-broker:[redacted]@127.0.0.1:6379/0"),
            "{printed}"
        );
        for secret in ["hunter2", "s3cr3t-key"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert_eq!(
            crate::adapters::redacted_url("redis+unix:///run/redis.sock?db=0&pass=hunter2"),
            "redis+unix:///run/redis.sock?[redacted]"
        );
        assert_eq!(
            crate::adapters::redacted_url("redis://:hunter2@h:1"),
            "redis://:[redacted]@h:1"
        );
        assert_eq!(
            crate::adapters::redacted_url("redis://hunter2@h:1"),
            "redis://[redacted]@h:1"
        );
    }

    const HOOK_SECRET: &str = "hook-secret-0123456789abcdef-0123456789";

    fn with_webhooks(webhooks: &str) -> Result<Config, Vec<Problem>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.cedar"), RULES).unwrap();
        let env = |name: &str| match name {
            "GB_HOOK_SECRET" => Some(HOOK_SECRET.to_owned()),
            "GB_SHORT_SECRET" => Some("too-short".to_owned()),
            _ => None,
        };
        Config::parse_with_env(&format!("{GOOD}\n{webhooks}"), dir.path(), &env)
    }

    #[test]
    fn a_webhook_gets_the_default_events_timeout_and_attempts() {
        let config = with_webhooks(
            "[[webhooks]]\nname = \"approvals\"\nurl = \"https://hooks.example.com/grant-broker\"\nsecret_env = \"GB_HOOK_SECRET\"",
        )
        .unwrap();
        let [webhook] = config.webhooks.as_slice() else {
            panic!("{:?}", config.webhooks)
        };
        assert_eq!(webhook.name, "approvals");
        assert_eq!(webhook.secret.expose(), HOOK_SECRET);
        assert_eq!(webhook.timeout, Duration::from_secs(5));
        assert_eq!(webhook.max_attempts, 8);
        let events: Vec<&str> = webhook.events.iter().map(String::as_str).collect();
        let mut defaults = webhooks::DEFAULT_EVENTS.to_vec();
        defaults.sort_unstable();
        assert_eq!(events, defaults);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        // Loopback may be plain http (a sidecar); no webhooks at all is fine too.
        let local = with_webhooks(
            "[[webhooks]]\nname = \"local\"\nurl = \"http://127.0.0.1:8080/hook\"\nsecret_env = \"GB_HOOK_SECRET\"\nevents = [\"extended\", \"extension_requested\", \"issued\"]",
        )
        .unwrap();
        assert_eq!(local.webhooks[0].events.len(), 3);
        assert!(with_rules(GOOD).unwrap().webhooks.is_empty());
    }

    #[test]
    fn webhook_problems_are_reported_by_key_and_never_show_the_secret() {
        let problems = with_webhooks(
            r#"
            [[webhooks]]
            name = "approvals"
            url = "http://hooks.example.com/grant-broker"
            secret_env = "GB_MISSING_SECRET"
            events = ["requested", "aproved"]
            [[webhooks]]
            name = "approvals"
            url = "https://user:pw@hooks.example.com/x"
            secret_env = "GB_SHORT_SECRET"
            timeout_ms = 0
            max_attempts = 0
            [[webhooks]]
            name = "Bad Name"
            url = "ftp://hooks.example.com/x"
            secret_env = "GB_HOOK_SECRET"
            events = []
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "webhooks[0].url",
                "webhooks[0].secret_env",
                "webhooks[0].events[1]",
                "webhooks[1].name",
                "webhooks[1].url",
                "webhooks[1].secret_env",
                "webhooks[1].timeout_ms",
                "webhooks[1].max_attempts",
                "webhooks[2].name",
                "webhooks[2].url",
                "webhooks[2].events",
            ],
            "{problems:?}"
        );
        let says = |key: &str, text: &str| {
            assert!(
                problems.iter().any(|p| p.key == key && p.message.contains(text)),
                "{key}: {text} in {problems:?}"
            )
        };
        says("webhooks[0].url", "insecure_http");
        says("webhooks[0].secret_env", "`GB_MISSING_SECRET` is not set");
        says("webhooks[0].events[1]", "`aproved` is not an event");
        says("webhooks[1].name", "also the name of webhooks[0]");
        says("webhooks[1].url", "credentials");
        says("webhooks[1].secret_env", "holds 9 bytes");
        let printed = format!("{problems:?}");
        assert!(
            !printed.contains("too-short") && !printed.contains(HOOK_SECRET),
            "{printed}"
        );
    }

    #[test]
    fn the_example_webhook_is_valid_once_uncommented() {
        let example = include_str!("../deploy/grant-broker.example.toml");
        let start = example.find("# [[webhooks]]").unwrap();
        let block: String = example[start..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.cedar"), RULES).unwrap();
        let env = |name: &str| (name == "GRANT_BROKER_WEBHOOK_SECRET").then(|| HOOK_SECRET.to_owned());
        let config = Config::parse_with_env(&format!("{GOOD}\n{block}"), dir.path(), &env).unwrap();
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.webhooks[0].events.len(), 6);
    }

    #[test]
    fn plain_http_beyond_loopback_is_a_warning_when_the_operator_accepts_it() {
        let config = with_webhooks(
            "[[webhooks]]\nname = \"lan\"\nurl = \"http://10.0.0.7/hook?token=t0k3n\"\nsecret_env = \"GB_HOOK_SECRET\"\ninsecure_http = true",
        )
        .unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert_eq!(config.warnings[0].key, "webhooks[0].insecure_http");
        let printed = format!("{config:?}");
        for hidden in [HOOK_SECRET, "t0k3n"] {
            assert!(!printed.contains(hidden), "{hidden} in {printed}");
        }
    }

    /// GOOD with a second target on `role_arn`, whose lines `second` adds to.
    fn with_second_target(role_arn: &str, second: &str) -> String {
        let target = GOOD
            .split("[[targets]]")
            .nth(1)
            .and_then(|rest| rest.split("[[callers]]").next())
            .unwrap()
            .replace("id = \"prod-logs-read\"", &format!("id = \"second\"\n{second}"))
            .replace("arn:aws:iam::123456789012:role/vendor-logs-read", role_arn);
        GOOD.replace("[[callers]]", &format!("[[targets]]{target}[[callers]]"))
    }

    #[test]
    fn revocation_is_enforced_with_the_brokers_own_credentials_by_default() {
        let config = with_rules(GOOD).unwrap();
        let target = &config.targets[0];
        assert_eq!(target.revocation, RevocationMode::Enforce);
        assert_eq!(target.iam, IamAccess::default());
        assert_eq!(target.role_name(), "vendor-logs-read");
        assert!(!config.callers[0].admin && !config.callers[0].caller().admin);
    }

    #[test]
    fn revocation_keys_admin_callers_and_the_iam_endpoint_are_read() {
        let text = GOOD
            .replace(
                "max_duration_secs = 3600",
                "max_duration_secs = 3600\nrevocation = \"record-only\"\niam_role_arn = \"arn:aws:iam::123456789012:role/admin/grant-broker-iam\"\niam_external_id = \"gb-iam-7f3a\"",
            )
            .replace("targets = [\"prod-logs-read\"]", "targets = [\"prod-logs-read\"]\nadmin = true");
        let config = with_rules(&text).unwrap();
        let target = &config.targets[0];
        assert_eq!(target.revocation, RevocationMode::RecordOnly);
        assert_eq!(
            target.iam,
            IamAccess {
                assume_role_arn: Some("arn:aws:iam::123456789012:role/admin/grant-broker-iam".into()),
                external_id: Some("gb-iam-7f3a".into()),
            }
        );
        assert!(config.callers[0].admin && config.callers[0].caller().admin);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn the_iam_endpoint_is_read_and_checked_and_iam_shares_the_sts_settings() {
        let config = with_rules(GOOD).unwrap();
        assert_eq!(config.iam.endpoint, None);
        assert_eq!(config.iam.aws.max_attempts, config.sts.max_attempts);
        let text = GOOD.replace(
            "[rules]",
            "[aws]\nsts_endpoint = \"http://127.0.0.1:5000\"\niam_endpoint = \"http://127.0.0.1:5001\"\n[rules]",
        );
        let config = with_rules(&text).unwrap();
        assert_eq!(config.iam.endpoint.as_deref(), Some("http://127.0.0.1:5001"));
        assert_eq!(config.iam.aws.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        let problems =
            with_rules(&GOOD.replace("[rules]", "[aws]\niam_endpoint = \"127.0.0.1:5001\"\n[rules]")).unwrap_err();
        assert_eq!(problems[0].key, "aws.iam_endpoint", "{problems:?}");
    }

    #[test]
    fn revocation_problems_are_reported_by_key() {
        let text = GOOD
            .replace(
                "max_duration_secs = 3600",
                "max_duration_secs = 3600\nrevocation = \"off\"\niam_role_arn = \"arn:aws:iam::123456789012:user/admin\"\niam_external_id = \"x\"",
            );
        let problems = with_rules(&text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "targets[0].revocation",
                "targets[0].iam_role_arn",
                "targets[0].iam_external_id"
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("record-only"), "{problems:?}");

        let external_id_alone = GOOD.replace(
            "max_duration_secs = 3600",
            "max_duration_secs = 3600\niam_external_id = \"gb-iam-7f3a\"",
        );
        let problems = with_rules(&external_id_alone).unwrap_err();
        assert_eq!(problems[0].key, "targets[0].iam_external_id");
        assert!(problems[0].message.contains("set iam_role_arn"), "{problems:?}");

        let other_partition = GOOD.replace(
            "max_duration_secs = 3600",
            "max_duration_secs = 3600\niam_role_arn = \"arn:aws-cn:iam::123456789012:role/gb\"",
        );
        let problems = with_rules(&other_partition).unwrap_err();
        assert_eq!(problems[0].key, "targets[0].iam_role_arn");
    }

    #[test]
    fn an_iam_role_in_another_account_is_a_warning() {
        let text = GOOD.replace(
            "max_duration_secs = 3600",
            "max_duration_secs = 3600\niam_role_arn = \"arn:aws:iam::999999999999:role/gb-iam\"",
        );
        let config = with_rules(&text).unwrap();
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert_eq!(config.warnings[0].key, "targets[0].iam_role_arn");
        assert!(config.warnings[0].message.contains("999999999999"));
    }

    #[test]
    fn targets_of_one_role_must_agree_on_its_enforcement() {
        // The same role under another path and case: IAM role names are unique per account
        // whatever the path, and case-insensitive.
        let same_role = "arn:aws:iam::123456789012:role/team/Vendor-Logs-Read";
        let config = with_rules(&with_second_target(same_role, "")).unwrap();
        assert_eq!(config.targets[1].role_name(), "Vendor-Logs-Read");
        let key = |second: &str| {
            with_rules(&with_second_target(same_role, second))
                .unwrap_err()
                .into_iter()
                .map(|p| (p.key, p.message))
                .collect::<Vec<_>>()
        };
        let problems = key("revocation = \"record-only\"");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "targets[1].revocation");
        assert!(problems[0].1.contains("targets[0]"), "{problems:?}");
        assert_eq!(
            key("iam_role_arn = \"arn:aws:iam::123456789012:role/gb-iam\"")[0].0,
            "targets[1].iam_role_arn"
        );
        // Another role of the account is another matter.
        let elsewhere = with_second_target(
            "arn:aws:iam::123456789012:role/vendor-logs-write",
            "revocation = \"record-only\"",
        );
        assert!(with_rules(&elsewhere).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_rules_are_problems() {
        let problems = with_rules(&GOOD.replace("[redis]", "[redis]\nurll = \"x\"")).unwrap_err();
        assert!(problems[0].message.contains("unknown field `urll`"), "{problems:?}");
        let problems = Config::parse(GOOD, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(problems[0].key, "rules.files[0]");
    }
}
