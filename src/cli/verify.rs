//! `grant-broker audit verify`: the audit log in Redis, or an exported archive, checked with the
//! broker's integrity keys, and what was found printed, problems first.

use std::{path::Path, process::ExitCode};

use super::{Exit, exit};
use crate::{
    adapters::redis_store::{
        RedisGrantStore,
        ledger::{self, Verification},
    },
    config::Config,
};

pub(crate) async fn run(config: &Path, since: Option<prost_types::Timestamp>, from_export: Option<&Path>) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!("{}: {} problem(s)", config.display(), problems.len());
            return exit(Exit::Usage);
        }
    };
    let since = match since.map(|since| {
        time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(since.seconds) * 1_000_000_000 + i128::from(since.nanos),
        )
    }) {
        Some(Err(_)) => {
            eprintln!("--since is out of range");
            return exit(Exit::Usage);
        }
        Some(Ok(since)) => Some(since),
        None => None,
    };
    let verified = match from_export {
        Some(path) => match std::fs::File::open(path) {
            Ok(file) => ledger::verify_export(&config.redis.integrity, std::io::BufReader::new(file), since)
                .map_err(|why| (Exit::Usage, format!("{}: {why}", path.display()))),
            Err(error) => Err((Exit::Usage, format!("cannot read {}: {error}", path.display()))),
        },
        None => match RedisGrantStore::new(&config.redis) {
            Ok(store) => store
                .verify_audit_log(since, time::OffsetDateTime::now_utc())
                .await
                .map_err(|error| (Exit::Refused, error.to_string())),
            Err(error) => Err((Exit::Refused, error.to_string())),
        },
    };
    match verified {
        Ok(verification) => {
            print!("{}", report(&verification));
            if verification.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                exit(Exit::Tampered)
            }
        }
        Err((code, message)) => {
            eprintln!("{message}");
            exit(code)
        }
    }
}

/// What was found, one line each (`problem: <where>: <what>`, then `note: ...`), and a summary.
pub(crate) fn report(verification: &Verification) -> String {
    let mut out = String::new();
    for finding in &verification.problems {
        out += &format!("problem: {}: {}\n", finding.at, finding.what);
    }
    for finding in &verification.notes {
        out += &format!("note: {}: {}\n", finding.at, finding.what);
    }
    let range = match (&verification.first, &verification.last) {
        (Some(first), Some(last)) => format!(" from {first} to {last}"),
        _ => String::new(),
    };
    out += &format!(
        "{}: {} entries{range}, {} checkpoints, {} grant records; {} before the first checkpoint (checked by their seals and sequences only); {} problem(s)\n",
        if verification.problems.is_empty() {
            "ok"
        } else {
            "TAMPERED"
        },
        verification.entries,
        verification.checkpoints,
        verification.records,
        verification.before_first_checkpoint,
        verification.problems.len()
    );
    out
}
