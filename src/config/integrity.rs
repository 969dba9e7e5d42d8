//! `[integrity]` and `[[integrity.keys]]`: the keys that seal every grant record and audit log
//! entry (Redis never sees them), and how often the audit log is checkpointed.

use super::*;
use crate::adapters::redis_store::seal::{IntegrityKeys, KeyProblem, MIN_KEY_BYTES};

/// Checkpoints at most this far apart: an hour.
const MAX_CHECKPOINT_INTERVAL_SECS: u64 = 3_600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntegrity {
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    seal_with: Option<u8>,
    #[serde(default = "default_checkpoint_interval_secs")]
    checkpoint_interval_secs: u64,
}

impl Default for RawIntegrity {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            seal_with: None,
            checkpoint_interval_secs: default_checkpoint_interval_secs(),
        }
    }
}

fn default_checkpoint_interval_secs() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: u8,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
}

/// The validated section.
pub(super) struct Integrity {
    pub(super) keys: IntegrityKeys,
    pub(super) checkpoint_interval: Duration,
}

/// Reads each key from its variable or file (relative to the configuration). A key's bytes are
/// never in a problem: only where it was looked for and its length.
pub(super) fn validate_integrity(
    raw: RawIntegrity,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Integrity> {
    if !(1..=MAX_CHECKPOINT_INTERVAL_SECS).contains(&raw.checkpoint_interval_secs) {
        problems.push(Problem::new(
            "integrity.checkpoint_interval_secs",
            format!("must be 1-{MAX_CHECKPOINT_INTERVAL_SECS}"),
        ));
    }
    if raw.keys.is_empty() {
        problems.push(Problem::new(
            "integrity.keys",
            format!(
                "at least one integrity key is required: every grant record and audit log entry is sealed with it (an `id` of 1-255 and an `env` or `file` holding at least {MIN_KEY_BYTES} random bytes)"
            ),
        ));
        return None;
    }
    let before = problems.len();
    let mut keys = Vec::new();
    for (i, key) in raw.keys.into_iter().enumerate() {
        let at = |field: &str| format!("integrity.keys[{i}].{field}");
        let bytes = read_secret(
            &format!("integrity.keys[{i}]"),
            key.env.as_deref(),
            key.file.as_deref(),
            base,
            env,
            problems,
        );
        if let Some((source, bytes)) = bytes {
            if bytes.len() < MIN_KEY_BYTES {
                problems.push(Problem::new(
                    at(if key.env.is_some() { "env" } else { "file" }),
                    format!(
                        "{source} holds {} bytes; an integrity key needs at least {MIN_KEY_BYTES}",
                        bytes.len()
                    ),
                ));
            } else {
                keys.push((key.id, bytes));
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    match IntegrityKeys::new(keys, raw.seal_with) {
        Ok(keys) => Some(Integrity {
            keys,
            checkpoint_interval: Duration::from_secs(raw.checkpoint_interval_secs),
        }),
        Err(problem) => {
            let key = match problem {
                KeyProblem::SealingUnknown(_) => "integrity.seal_with",
                _ => "integrity.keys",
            };
            problems.push(Problem::new(key, problem.to_string()));
            None
        }
    }
}
