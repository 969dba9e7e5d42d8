//! Typed, validated configuration: one TOML file naming the listen address, Redis, AWS, the rule
//! files, the targets, the callers and the webhooks. Loading reports every problem at once, each with the key
//! that holds it (`targets[1].role_arn: ...`), so `grant-broker check-config` can list them all.
//!
//! One module per section: [`server`], [`redis`], [`aws`], [`targets`], [`people`] (grants,
//! callers, approvers), [`identity`] (OIDC issuers) and [`webhook`]; this module reads the file and puts them together.

mod aws;
mod identity;
mod integrity;
mod people;
mod redis;
mod server;
mod targets;
#[cfg(test)]
mod tests;
mod webhook;

use aws::*;
use identity::*;
use integrity::*;
pub use people::CallerConfig;
use people::*;
use redis::*;
use server::*;
use targets::*;
use webhook::*;

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
        IamSettings, RedisSettings, RedisTls, StsSettings, Topology,
        webhooks::{self, DeliverySettings, Webhook},
    },
    broker::BrokerSettings,
    domain::{
        ActionPattern, Caller, CallerId, CallerIdentity, IamAccess, ResourcePattern, RevocationMode, Scope, Secret,
        Target,
        access::{Powers, Relay, Revoke},
        approval::Person,
        iam::Catalog,
        limits, scope,
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
/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// A plaintext port serving only grpc.health.v1.Health (Kubernetes probes cannot do mTLS).
    pub health_listen: Option<SocketAddr>,
    /// The operator accepted serving plaintext gRPC on a non-loopback address (logged at start).
    pub insecure_plaintext: bool,
    /// How long a shutdown waits for in-flight calls before it stops anyway (streams end at once).
    pub drain_timeout: std::time::Duration,
    /// The middleware's bounds: calls in flight, call timeouts.
    pub calls: crate::grpc::layers::CallSettings,
    /// How often the configuration file and rule files are looked at for changes.
    pub reload_check: std::time::Duration,
    /// TLS on the gRPC port, mutual when it names a client CA; `None`: plaintext.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Whether callers may authenticate with bearer tokens (else only with client certificates).
    pub bearer_tokens: bool,
    pub redis: RedisSettings,
    pub sts: StsSettings,
    /// How to reach IAM for revocation (the STS settings, and an IAM endpoint override).
    pub iam: IamSettings,
    pub broker: BrokerSettings,
    pub rules: RuleEngine,
    /// The rule files, as read (a reload looks for changes to them).
    pub rule_files: Vec<PathBuf>,
    pub targets: Vec<Target>,
    pub callers: Vec<CallerConfig>,
    /// The OIDC issuers whose tokens prove people and pipelines, and the verifier's clocks.
    pub identity: crate::adapters::oidc::VerifierSettings,
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
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    integrity: RawIntegrity,
    #[serde(default)]
    limits: RawLimits,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    files: Vec<PathBuf>,
}
impl Config {
    /// Reads and validates the file at `path`, and the rule files it names (relative paths are
    /// relative to the configuration file).
    pub fn load(path: &Path) -> Result<Self, Vec<Problem>> {
        Self::read(path).map(|(_, config)| config)
    }

    /// [`Self::load`], with the text it was read from (what a reload compares the next text
    /// with).
    pub fn read(path: &Path) -> Result<(String, Self), Vec<Problem>> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            vec![Problem::new(
                path.display().to_string(),
                format!("cannot read: {error}"),
            )]
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Self::parse(&text, base)?;
        Ok((text, config))
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
        let tls = validate_tls(&raw.server, base, &mut problems, &mut warnings);
        let health_listen = validate_health_listen(&raw.server, listen, &mut problems);
        let calls = validate_calls(&raw.server, &mut problems);
        let reload_check = validate_reload_check(&raw.server, &mut problems);
        let integrity = validate_integrity(raw.integrity, base, env, &mut problems);
        let redis = validate_redis(raw.redis, base, integrity, env, &mut problems);
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
        let identity = validate_identity(raw.identity, base, &mut problems);
        let (approver_groups, approver_issuers) = validate_approvers(raw.approvers, &identity, &mut problems);
        let targets = validate_targets(raw.targets, &mut problems, &mut warnings);
        warnings.extend(ceiling_warnings(&targets));
        let limits = validate_limits(raw.limits, &mut problems);
        let callers = validate_callers(
            raw.callers,
            limits,
            &targets,
            &raw.server,
            tls.as_ref(),
            &identity,
            &mut problems,
        );
        let rules = load_rules(&raw.rules, base, &mut problems);
        let webhooks = validate_webhooks(raw.webhooks, env, &mut problems, &mut warnings);

        match (listen, rules, redis) {
            (Some(listen), Some(rules), Some(redis)) if problems.is_empty() => {
                let retention = time::Duration::try_from(redis.retention).unwrap_or(time::Duration::days(400));
                Ok(Self {
                    listen,
                    health_listen,
                    insecure_plaintext: raw.server.insecure_plaintext,
                    drain_timeout: std::time::Duration::from_secs(drain_timeout_secs),
                    calls,
                    reload_check,
                    tls,
                    bearer_tokens: raw.server.bearer_tokens,
                    redis,
                    sts,
                    iam,
                    broker: BrokerSettings {
                        role_chaining,
                        max_issuances_per_grant,
                        pending_timeout: time::Duration::hours(i64::try_from(pending_timeout_hours).unwrap_or(24)),
                        approver_groups,
                        approver_issuers,
                        retention,
                        deny_verify_interval: time::Duration::seconds(
                            i64::try_from(deny_verify_interval_secs).unwrap_or(60),
                        ),
                    },
                    rules,
                    rule_files: raw.rules.files.iter().map(|file| base.join(file)).collect(),
                    targets,
                    callers,
                    identity,
                    webhooks,
                    delivery: DeliverySettings::default(),
                    warnings,
                })
            }
            _ => Err(problems),
        }
    }
}
/// A secret named by exactly one of an environment variable (`<key>.env`) and a file
/// (`<key>.file`, relative to the configuration; a trailing newline is the editor's, not the
/// secret's): its bytes and where they came from (for messages, which never quote the secret).
fn read_secret(
    key: &str,
    env_name: Option<&str>,
    file: Option<&Path>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<(String, Vec<u8>)> {
    match (env_name, file) {
        (Some(name), None) => match env(name) {
            Some(value) => Some((format!("`{name}`"), value.into_bytes())),
            None => {
                problems.push(Problem::new(
                    format!("{key}.env"),
                    format!("the environment variable `{name}` is not set"),
                ));
                None
            }
        },
        (None, Some(file)) => {
            let path = base.join(file);
            match std::fs::read(&path) {
                Ok(mut bytes) => {
                    while bytes.last().is_some_and(|byte| matches!(byte, b'\n' | b'\r')) {
                        bytes.pop();
                    }
                    Some((path.display().to_string(), bytes))
                }
                Err(error) => {
                    problems.push(Problem::new(
                        format!("{key}.file"),
                        format!("cannot read {}: {error}", path.display()),
                    ));
                    None
                }
            }
        }
        _ => {
            problems.push(Problem::new(key, "name exactly one of `env` and `file`"));
            None
        }
    }
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
