//! Reloading the configuration while serving: on SIGHUP, and when the configuration file or a
//! rule file changes (looked at every `server.reload_check_secs`). The new file is validated
//! whole, as `check-config` would; only then are the rules, targets, grant settings, limits,
//! callers and approvers swapped in, at once, callers and broker together ([`Served`]). Calls already running finish on the
//! set they started with. A file that does not validate, or that changes what only a restart can
//! (the sections in [`RESTART_ONLY`]: listen addresses, TLS settings, Redis, AWS, integrity keys,
//! identity issuers, webhooks), is refused: the set in use stays, the problem is logged and
//! counted (`grant_broker.config.reloads`, outcome `refused`). Each set that takes effect is
//! recorded in the audit log (`rules_loaded`, with its digest). TLS certificate files reload on
//! their own ([`crate::tls`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    config::Config,
    domain::{RevocationMode, Target},
    grpc::{Current, Served},
    ports::Ports,
    telemetry::metrics::metrics,
};

/// Top-level sections whose change needs a restart: they name sockets, connections and keys
/// made once at start.
pub const RESTART_ONLY: &[&str] = &["server", "redis", "aws", "integrity", "identity", "webhooks"];

/// Where the configuration was read from, and the text that is in use.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    /// The rule files the configuration in use names.
    pub rule_files: Vec<PathBuf>,
    pub check_every: Duration,
    /// The files as they looked when they were read ([`Source::looked_at`]): a change made
    /// between then and the reloader's start is a change, not the baseline.
    pub seen: Vec<Seen>,
}

impl Source {
    /// How `path` (the configuration) looks now, to be taken just before it is read; the rule
    /// files' looks are added with [`Source::and_rule_files`].
    pub fn looked_at(path: &Path) -> Vec<Seen> {
        vec![look(path)]
    }

    /// The looks of the rule files (just after they were read: a write in between is missed
    /// until the next change, or SIGHUP).
    pub fn and_rule_files(mut seen: Vec<Seen>, rule_files: &[PathBuf]) -> Vec<Seen> {
        seen.extend(rule_files.iter().map(|path| look(path)));
        seen
    }
}

/// What one look at the files led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// Nothing that matters changed.
    Unchanged,
    Applied {
        rules_digest: String,
    },
    /// The set in use stays: why.
    Refused(Vec<String>),
}

/// The keys (dotted) whose values differ between two configurations, within `sections`.
pub fn changed_keys(old: &toml::Table, new: &toml::Table, sections: &[&str]) -> Vec<String> {
    fn walk(prefix: &str, old: Option<&toml::Value>, new: Option<&toml::Value>, out: &mut Vec<String>) {
        match (old, new) {
            (Some(toml::Value::Table(old)), Some(toml::Value::Table(new))) => {
                let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    walk(&format!("{prefix}.{key}"), old.get(key), new.get(key), out);
                }
            }
            (old, new) if old != new => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for section in sections {
        walk(section, old.get(*section), new.get(*section), &mut out);
    }
    out
}

/// The roles some target enforced revocations on before, and none does in `new`.
fn unenforced_roles<'a>(old: impl Iterator<Item = &'a Target>, new: &[Target]) -> Vec<String> {
    let enforced = |target: &&Target| target.revocation == RevocationMode::Enforce;
    let still: std::collections::BTreeSet<&str> = new.iter().filter(enforced).map(|t| t.role_arn.as_str()).collect();
    let before: std::collections::BTreeSet<&str> = old.filter(enforced).map(|t| t.role_arn.as_str()).collect();
    before.difference(&still).map(|role| (*role).to_owned()).collect()
}

/// What a file looked like: its modification time and length (a change to either is a change).
pub type Seen = Option<(SystemTime, u64)>;

fn look(path: &Path) -> Seen {
    std::fs::metadata(path)
        .ok()
        .and_then(|meta| meta.modified().ok().map(|modified| (modified, meta.len())))
}

/// The configuration as it is running, and what reloading it swaps.
pub struct Reloader<P: Ports> {
    source: Source,
    running: toml::Table,
    current: Arc<Current<P>>,
}

impl<P: Ports> Reloader<P> {
    pub fn new(source: Source, current: Arc<Current<P>>) -> Self {
        let running = toml::from_str(&source.text).unwrap_or_default();
        Self {
            source,
            running,
            current,
        }
    }

    /// Reads the file again and swaps in what it holds, if it validates and changes only what can
    /// change while serving.
    pub fn reload(&mut self) -> Reloaded {
        let (text, config) = match Config::read(&self.source.path) {
            Ok(read) => read,
            Err(problems) => return Reloaded::Refused(problems.iter().map(ToString::to_string).collect()),
        };
        let table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(error) => return Reloaded::Refused(vec![error.to_string()]),
        };
        let restart = changed_keys(&self.running, &table, RESTART_ONLY);
        if !restart.is_empty() {
            return Reloaded::Refused(vec![format!(
                "{} changed: these take effect only when the broker restarts (nothing was reloaded; restart it, or put them back)",
                restart.join(", ")
            )]);
        }
        let served = self.current.load_full();
        if table == self.running && served.broker.rules().digest() == config.rules.digest() {
            return Reloaded::Unchanged;
        }
        let Config {
            rules,
            rule_files,
            targets,
            broker: settings,
            callers,
            ..
        } = config;
        let rules_digest = rules.digest().to_owned();
        let unenforced = unenforced_roles(served.broker.targets(), &targets);
        let broker = match served.broker.reconfigured(rules, targets, settings) {
            Ok(broker) => broker,
            Err(unserved) => return Reloaded::Refused(unserved),
        };
        for role in &unenforced {
            tracing::warn!(
                role_arn = %role,
                "no target enforces revocations on this role any more: its deny policy stays as written, and is no longer verified or updated"
            );
        }
        // Callers and broker together, in one swap: a call is authenticated against the callers
        // of the configuration whose rules, targets and limits decide it.
        self.current.store(Arc::new(Served {
            auth: served.auth.for_callers(&callers),
            broker: Arc::new(broker),
        }));
        self.running = table;
        self.source.text = text;
        self.source.rule_files = rule_files;
        Reloaded::Applied { rules_digest }
    }

    fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.source.path.clone())
            .chain(self.source.rule_files.iter().cloned())
            .collect()
    }

    /// Reloads on SIGHUP and when a file changes, for as long as the server runs; records each
    /// set that takes effect in the audit log.
    pub async fn run(mut self) {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(
                |error| tracing::warn!(%error, "cannot listen for SIGHUP: the configuration reloads on change only"),
            )
            .ok();
        let mut seen: Vec<Seen> = std::mem::take(&mut self.source.seen);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let why = tokio::select! {
                () = hangup => "SIGHUP",
                () = tokio::time::sleep(self.source.check_every) => {
                    let now: Vec<Seen> = self.files().iter().map(|path| look(path)).collect();
                    if now == seen {
                        continue;
                    }
                    "a file changed"
                }
            };
            // Looked at before reading: a write that lands while the file is read is seen as a
            // change at the next look, never lost.
            let before = self.files().iter().map(|path| look(path)).collect();
            let outcome = self.reload();
            seen = before;
            match outcome {
                Reloaded::Unchanged => {
                    tracing::info!(why, "configuration read again: nothing to reload");
                    metrics().reloaded("unchanged");
                }
                Reloaded::Applied { rules_digest } => {
                    tracing::info!(why, rules_digest, "configuration reloaded: new calls use it");
                    metrics().reloaded("applied");
                    tokio::spawn(super::log_rules_loaded(super::in_use(&self.current)));
                }
                Reloaded::Refused(problems) => {
                    for problem in &problems {
                        tracing::error!(why, %problem, "configuration not reloaded: the one in use is kept");
                    }
                    metrics().reloaded("refused");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn changed_keys_name_each_difference_within_the_sections_asked() {
        let old = table(
            "[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\ncert_file = \"a\"\n[redis]\nurl = \"redis://a\"\n[[targets]]\nid = \"x\"\n",
        );
        let new = table(
            "[server]\nlisten = \"127.0.0.1:2\"\nhealth_listen = \"127.0.0.1:3\"\n[server.tls]\ncert_file = \"a\"\n[redis]\nurl = \"redis://a\"\n[[targets]]\nid = \"y\"\n",
        );
        assert_eq!(
            changed_keys(&old, &new, RESTART_ONLY),
            ["server.health_listen", "server.listen"]
        );
        assert_eq!(changed_keys(&old, &new, &["targets"]), ["targets"]);
        assert_eq!(changed_keys(&old, &old, RESTART_ONLY), Vec::<String>::new());
        // A section added or removed whole is named whole.
        let without = table("[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\ncert_file = \"a\"\n");
        assert_eq!(changed_keys(&old, &without, RESTART_ONLY), ["redis"]);
    }
}
