//! `[redis]`: the URL, TLS files, key prefix, timeouts, replicas and retention.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    /// One server.
    pub(super) url: Option<String>,
    /// Or a cluster: some of its nodes, from which the rest are discovered.
    #[serde(default)]
    pub(super) cluster_nodes: Vec<String>,
    #[serde(default = "default_key_prefix")]
    pub(super) key_prefix: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_response_timeout_ms")]
    pub(super) response_timeout_ms: u64,
    #[serde(default = "default_retention_days")]
    pub(super) retention_days: u64,
    #[serde(default)]
    pub(super) min_replicas: u32,
    #[serde(default = "default_replica_timeout_ms")]
    pub(super) replica_timeout_ms: u64,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) tls_client_cert_file: Option<PathBuf>,
    pub(super) tls_client_key_file: Option<PathBuf>,
    /// The ACL user the broker authenticates as (else the URL's, else `default`).
    pub(super) username: Option<String>,
    /// Where the password is: `{ env = "NAME" }` or `{ file = "path" }` (kept out of the URL and
    /// so out of the configuration file, which is often a ConfigMap).
    pub(super) password: Option<RawSecretRef>,
}

/// Where a secret is: an environment variable or a file, exactly one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretRef {
    env: Option<String>,
    file: Option<PathBuf>,
}

pub(super) fn default_replica_timeout_ms() -> u64 {
    500
}

pub(super) fn default_key_prefix() -> String {
    "gb".to_owned()
}

pub(super) fn default_connect_timeout_ms() -> u64 {
    1_000
}

pub(super) fn default_response_timeout_ms() -> u64 {
    1_000
}

/// Thirteen months: a year of audit history plus a month of slack.
pub(super) fn default_retention_days() -> u64 {
    400
}

/// Reads a PEM file named in the configuration (relative to it), as a problem under `key` when
/// it cannot be read or holds no PEM block.
pub(super) fn read_pem(key: &str, path: &Path, base: &Path, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
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

pub(super) fn validate_redis_tls(
    raw: &RawRedis,
    topology: &Topology,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<RedisTls> {
    let tls = topology.tls();
    let files = [
        ("redis.tls_ca_file", &raw.tls_ca_file),
        ("redis.tls_client_cert_file", &raw.tls_client_cert_file),
        ("redis.tls_client_key_file", &raw.tls_client_key_file),
    ];
    if !tls {
        for (key, file) in files {
            if file.is_some() {
                problems.push(Problem::new(
                    key,
                    "only for TLS: redis.url (or redis.cluster_nodes) must start with rediss://",
                ));
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

/// Where Redis is: `redis.url` (one server) or `redis.cluster_nodes`, exactly one.
fn validate_topology(raw: &RawRedis, problems: &mut Vec<Problem>) -> Topology {
    match (&raw.url, raw.cluster_nodes.as_slice()) {
        (Some(url), []) => {
            if !["redis://", "rediss://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                problems.push(Problem::new(
                    "redis.url",
                    "must start with redis://, rediss:// (TLS) or redis+unix://",
                ));
            }
            Topology::Server(url.clone())
        }
        (None, []) => {
            problems.push(Problem::new(
                "redis.url",
                "required: the Redis server's URL (or redis.cluster_nodes, for a Redis Cluster)",
            ));
            Topology::Server(String::new())
        }
        (Some(_), [_, ..]) => {
            problems.push(Problem::new(
                "redis.cluster_nodes",
                "set redis.url (one server) or redis.cluster_nodes (a cluster), not both",
            ));
            Topology::Cluster(raw.cluster_nodes.clone())
        }
        (None, nodes) => {
            for (at, node) in nodes.iter().enumerate() {
                if !["redis://", "rediss://"].iter().any(|scheme| node.starts_with(scheme)) {
                    problems.push(Problem::new(
                        format!("redis.cluster_nodes[{at}]"),
                        "must start with redis:// or rediss:// (TLS): cluster nodes are reached over TCP",
                    ));
                }
            }
            let tls = nodes.iter().filter(|node| node.starts_with("rediss://")).count();
            if tls != 0 && tls != nodes.len() {
                problems.push(Problem::new(
                    "redis.cluster_nodes",
                    "every node must use the same scheme: all rediss:// (TLS) or all redis://",
                ));
            }
            Topology::Cluster(nodes.to_vec())
        }
    }
}

/// Whether a `redis://user:password@host` URL carries a password.
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.rsplit_once('@').is_some_and(|(credentials, _)| {
        credentials
            .split_once(':')
            .is_some_and(|(_, password)| !password.is_empty())
    })
}

/// The `[redis]` settings, with the integrity keys that seal what Redis holds (`None`, and so no
/// settings, when `[integrity]` has problems of its own).
pub(super) fn validate_redis(
    raw: RawRedis,
    base: &Path,
    integrity: Option<Integrity>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<RedisSettings> {
    let topology = validate_topology(&raw, problems);
    let tls = validate_redis_tls(&raw, &topology, base, problems);
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
    let password = raw.password.as_ref().and_then(|secret| {
        let (source, bytes) = read_secret(
            "redis.password",
            secret.env.as_deref(),
            secret.file.as_deref(),
            base,
            env,
            problems,
        )?;
        match String::from_utf8(bytes) {
            Ok(password) if !password.is_empty() => Some(Secret::new(&password)),
            _ => {
                problems.push(Problem::new(
                    "redis.password",
                    format!("{source} must hold the password as non-empty UTF-8 text"),
                ));
                None
            }
        }
    });
    if raw.password.is_some()
        && raw
            .url
            .iter()
            .chain(&raw.cluster_nodes)
            .any(|url| url_has_password(url))
    {
        problems.push(Problem::new(
            "redis.password",
            "the URL carries a password too: keep it in one place (here, not in redis.url)",
        ));
    }
    if raw
        .username
        .as_deref()
        .is_some_and(|name| name.is_empty() || name.contains([' ', ':', '@']))
    {
        problems.push(Problem::new(
            "redis.username",
            "must be an ACL user name, without spaces, `:` or `@`",
        ));
    }
    let integrity = integrity?;
    Some(RedisSettings {
        username: raw.username,
        password,
        topology,
        key_prefix: raw.key_prefix,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        response_timeout: Duration::from_millis(raw.response_timeout_ms),
        retention: Duration::from_secs(raw.retention_days.saturating_mul(86_400)),
        min_replicas: raw.min_replicas,
        replica_timeout: Duration::from_millis(raw.replica_timeout_ms),
        tls,
        integrity: integrity.keys,
        checkpoint_interval: integrity.checkpoint_interval,
    })
}
