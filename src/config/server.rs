//! `[server]`: the listen address, plaintext, and the shutdown drain.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) insecure_plaintext: bool,
    pub(super) drain_timeout_secs: u64,
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
pub(super) const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;

pub(super) const MAX_DRAIN_TIMEOUT_SECS: u64 = 300;

/// The listen address. gRPC here is plaintext (TLS comes with the identity work), so an address
/// other hosts can reach needs the operator's explicit `insecure_plaintext = true`.
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
