//! `[server]`: the listen address, TLS (`[server.tls]`) or plaintext, bearer tokens, and the
//! shutdown drain.

use super::*;
use crate::{
    grpc::layers::{CallSettings, Methods},
    tls::{IdentityKind, TlsSettings},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) insecure_plaintext: bool,
    pub(super) drain_timeout_secs: u64,
    /// Callers may authenticate with bearer tokens; `false` leaves only client certificates.
    pub(super) bearer_tokens: bool,
    pub(super) tls: Option<RawTls>,
    /// A plaintext port serving only grpc.health.v1.Health, for probes that cannot present a
    /// client certificate.
    pub(super) health_listen: Option<String>,
    /// Calls in flight at once, past which calls are answered UNAVAILABLE (load shedding).
    pub(super) max_concurrent_calls: usize,
    /// The longest a unary call may take, whatever deadline its caller sets.
    pub(super) call_timeout_ms: u64,
    /// Per method (`RequestAccess = 60000`): its own cap instead of `call_timeout_ms`.
    pub(super) call_timeouts: BTreeMap<String, u64>,
    /// How often the configuration file and the rule files are looked at for changes (a
    /// change, or SIGHUP, reloads them).
    pub(super) reload_check_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_owned(),
            insecure_plaintext: false,
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
            bearer_tokens: true,
            tls: None,
            health_listen: None,
            max_concurrent_calls: CallSettings::default().max_concurrent_calls,
            call_timeout_ms: u64::try_from(CallSettings::default().call_timeout.as_millis()).unwrap_or(30_000),
            call_timeouts: BTreeMap::new(),
            reload_check_secs: default_reload_check_secs(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default = "default_client_identity")]
    client_identity: String,
    #[serde(default = "default_handshake_timeout_ms")]
    handshake_timeout_ms: u64,
    #[serde(default = "default_reload_check_secs")]
    reload_check_secs: u64,
    #[serde(default = "default_max_connection_age_secs")]
    max_connection_age_secs: u64,
}

/// A connection's client certificate is read once, at its handshake: connections are closed
/// (gracefully) after this long, so an expired or replaced certificate stops naming its caller.
fn default_max_connection_age_secs() -> u64 {
    3_600
}

const MAX_CONNECTION_AGE_SECS: std::ops::RangeInclusive<u64> = 60..=86_400;

fn default_reload_check_secs() -> u64 {
    10
}

const RELOAD_CHECK_SECS: std::ops::RangeInclusive<u64> = 1..=3_600;

fn default_client_identity() -> String {
    "spiffe".to_owned()
}

fn default_handshake_timeout_ms() -> u64 {
    5_000
}

const HANDSHAKE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// `[server.tls]`: the files read and checked now (paths relative to the configuration file).
pub(super) fn validate_tls(
    server: &RawServer,
    base: &Path,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<TlsSettings> {
    let bearer_tokens = server.bearer_tokens;
    let raw = server.tls.as_ref()?;
    if server.insecure_plaintext {
        warnings.push(Problem::new(
            "server.insecure_plaintext",
            "has no effect: [server.tls] is set, so the broker serves TLS",
        ));
    }
    if !bearer_tokens && raw.client_ca_file.is_none() {
        problems.push(Problem::new(
            "server.bearer_tokens",
            "false leaves callers no way to authenticate without server.tls.client_ca_file (mTLS)",
        ));
    }
    let client_identity = IdentityKind::parse(&raw.client_identity).or_else(|| {
        problems.push(Problem::new(
            "server.tls.client_identity",
            format!(
                "`{}` is not one of spiffe (the spiffe:// URI SAN), dns (the first DNS SAN), cn (the subject's common name)",
                raw.client_identity
            ),
        ));
        None
    })?;
    if !HANDSHAKE_TIMEOUT_MS.contains(&raw.handshake_timeout_ms) {
        problems.push(Problem::new(
            "server.tls.handshake_timeout_ms",
            format!(
                "must be {}-{}",
                HANDSHAKE_TIMEOUT_MS.start(),
                HANDSHAKE_TIMEOUT_MS.end()
            ),
        ));
        return None;
    }
    if !RELOAD_CHECK_SECS.contains(&raw.reload_check_secs) {
        problems.push(Problem::new(
            "server.tls.reload_check_secs",
            format!("must be {}-{}", RELOAD_CHECK_SECS.start(), RELOAD_CHECK_SECS.end()),
        ));
        return None;
    }
    if !MAX_CONNECTION_AGE_SECS.contains(&raw.max_connection_age_secs) {
        problems.push(Problem::new(
            "server.tls.max_connection_age_secs",
            format!(
                "must be {}-{}",
                MAX_CONNECTION_AGE_SECS.start(),
                MAX_CONNECTION_AGE_SECS.end()
            ),
        ));
        return None;
    }
    let settings = TlsSettings {
        cert_file: base.join(&raw.cert_file),
        key_file: base.join(&raw.key_file),
        client_ca_file: raw.client_ca_file.as_ref().map(|path| base.join(path)),
        client_identity,
        require_client_certificate: !bearer_tokens,
        handshake_timeout: std::time::Duration::from_millis(raw.handshake_timeout_ms),
        reload_check: std::time::Duration::from_secs(raw.reload_check_secs),
        max_connection_age: std::time::Duration::from_secs(raw.max_connection_age_secs),
    };
    match crate::tls::server_config(&settings) {
        Ok(_) => Some(settings),
        Err(why) => {
            problems.push(Problem::new("server.tls", why));
            None
        }
    }
}

/// Well under Kubernetes' default 30 s termination grace period, so the process exits on its own.
pub(super) const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;

pub(super) const MAX_DRAIN_TIMEOUT_SECS: u64 = 300;

/// The health port's address, when there is one: not the API's.
pub(super) fn validate_health_listen(
    raw: &RawServer,
    listen: Option<SocketAddr>,
    problems: &mut Vec<Problem>,
) -> Option<SocketAddr> {
    let text = raw.health_listen.as_ref()?;
    match text.parse::<SocketAddr>() {
        Ok(address) if Some(address) == listen => {
            problems.push(Problem::new(
                "server.health_listen",
                "must differ from server.listen: the health port serves only health, in plaintext",
            ));
            None
        }
        Ok(address) => Some(address),
        Err(_) => {
            problems.push(Problem::new(
                "server.health_listen",
                format!("`{text}` is not an address:port"),
            ));
            None
        }
    }
}

/// The listen address. Without `[server.tls]` gRPC is plaintext, so an address other hosts can
/// reach needs the operator's explicit `insecure_plaintext = true`.
pub(super) fn validate_listen(
    raw: &RawServer,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<SocketAddr> {
    let Ok(listen) = raw.listen.parse::<SocketAddr>() else {
        problems.push(Problem::new(
            "server.listen",
            format!("`{}` is not an address:port", raw.listen),
        ));
        return None;
    };
    if !listen.ip().is_loopback() && raw.tls.is_none() {
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

const MAX_CONCURRENT_CALLS: std::ops::RangeInclusive<usize> = 1..=100_000;
const CALL_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

/// How often the configuration's files are looked at for changes.
pub(super) fn validate_reload_check(raw: &RawServer, problems: &mut Vec<Problem>) -> std::time::Duration {
    if !RELOAD_CHECK_SECS.contains(&raw.reload_check_secs) {
        problems.push(Problem::new(
            "server.reload_check_secs",
            format!("must be {}-{}", RELOAD_CHECK_SECS.start(), RELOAD_CHECK_SECS.end()),
        ));
    }
    std::time::Duration::from_secs(raw.reload_check_secs)
}

/// The middleware's bounds: calls in flight, and how long a unary call may take (a cap per
/// method must name a unary method the API serves).
pub(super) fn validate_calls(raw: &RawServer, problems: &mut Vec<Problem>) -> CallSettings {
    let mut settings = CallSettings::default();
    if MAX_CONCURRENT_CALLS.contains(&raw.max_concurrent_calls) {
        settings.max_concurrent_calls = raw.max_concurrent_calls;
    } else {
        problems.push(Problem::new(
            "server.max_concurrent_calls",
            format!(
                "must be {}-{}",
                MAX_CONCURRENT_CALLS.start(),
                MAX_CONCURRENT_CALLS.end()
            ),
        ));
    }
    let timeout = |key: String, millis: u64, problems: &mut Vec<Problem>| {
        if CALL_TIMEOUT_MS.contains(&millis) {
            Some(std::time::Duration::from_millis(millis))
        } else {
            problems.push(Problem::new(
                key,
                format!(
                    "must be {}-{} (milliseconds)",
                    CALL_TIMEOUT_MS.start(),
                    CALL_TIMEOUT_MS.end()
                ),
            ));
            None
        }
    };
    if let Some(cap) = timeout("server.call_timeout_ms".to_owned(), raw.call_timeout_ms, problems) {
        settings.call_timeout = cap;
    }
    let methods = Methods::served();
    let unary: BTreeSet<&str> = methods.short_names_of_unary().collect();
    for (method, millis) in &raw.call_timeouts {
        let key = format!("server.call_timeouts.{method}");
        if !unary.contains(method.as_str()) {
            let names: Vec<&str> = unary.iter().copied().collect();
            problems.push(Problem::new(
                key,
                format!(
                    "names no unary method the API serves (streams are bounded by their callers' deadlines): one of {}",
                    names.join(", ")
                ),
            ));
            continue;
        }
        if let Some(cap) = timeout(key, *millis, problems) {
            settings.call_timeouts.insert(method.clone(), cap);
        }
    }
    settings
}
