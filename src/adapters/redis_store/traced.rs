//! Every Redis step the broker takes, observed: a client span (`db.system.name` redis, the
//! command, or the script by name) and `db.client.operation.duration` by operation and error.
//! [`Traced`] wraps the connection every store call goes through; scripts are made with
//! [`script`], which records their names so an `EVALSHA` is named by what it does.
//!
//! INVARIANT (secrets are never at rest): spans and metrics name the command or script only,
//! never a key or an argument (records, MACs).

use std::{
    collections::HashMap,
    sync::{OnceLock, RwLock},
    time::Instant,
};

use redis::{Cmd, Pipeline, RedisFuture, Script, Value, aio::ConnectionLike};
use tracing::Instrument as _;

use crate::telemetry::metrics::metrics;

fn names() -> &'static RwLock<HashMap<String, &'static str>> {
    static NAMES: OnceLock<RwLock<HashMap<String, &'static str>>> = OnceLock::new();
    NAMES.get_or_init(RwLock::default)
}

/// A script, named `name` in spans and metrics.
pub(crate) fn script(name: &'static str, source: &str) -> Script {
    let script = Script::new(source);
    if let Ok(mut names) = names().write() {
        names.insert(script.get_hash().to_owned(), name);
    }
    script
}

/// The commands the store sends, by name; anything else is `other` (a bounded set of names).
const COMMANDS: &[&str] = &[
    "GET",
    "SET",
    "DEL",
    "EXISTS",
    "PING",
    "XADD",
    "XRANGE",
    "XREVRANGE",
    "XREAD",
    "XREADGROUP",
    "XACK",
    "XAUTOCLAIM",
    "XGROUP",
    "XINFO",
    "XLEN",
    "XTRIM",
    "XDEL",
    "ZADD",
    "ZREM",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZCARD",
    "ZCOUNT",
    "HGET",
    "HSET",
    "HGETALL",
    "HINCRBY",
    "HDEL",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "PUBLISH",
    "WAIT",
    "MULTI",
    "EXEC",
    "SCRIPT",
    "EVALSHA",
    "EVAL",
    "INFO",
    "MGET",
    "INCR",
    "PEXPIRE",
    "PEXPIREAT",
    "HMGET",
    "ZSCORE",
    "ZREMRANGEBYSCORE",
    "ZREMRANGEBYLEX",
    "ZREVRANGE",
    "LPUSH",
    "LTRIM",
    "LLEN",
    "LRANGE",
    "TIME",
    "CLIENT",
];

/// What a command is named: its script's name for EVALSHA, else the command.
fn operation(cmd: &Cmd) -> &'static str {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let Some(command) = args.next() else {
        return "other";
    };
    if command.eq_ignore_ascii_case(b"EVALSHA") {
        let name = args
            .next()
            .and_then(|sha| std::str::from_utf8(sha).ok())
            .and_then(|sha| names().read().ok().and_then(|names| names.get(sha).copied()));
        return name.unwrap_or("EVALSHA");
    }
    COMMANDS
        .iter()
        .find(|known| command.eq_ignore_ascii_case(known.as_bytes()))
        .copied()
        .unwrap_or("other")
}

/// A pipeline is named by its first command that is not MULTI (a transaction of one script is
/// that script).
fn pipeline_operation(pipeline: &Pipeline) -> &'static str {
    pipeline
        .cmd_iter()
        .map(operation)
        .find(|name| *name != "MULTI")
        .unwrap_or("other")
}

/// The kind of a Redis error, for `error.type` (never its text, which can quote arguments).
fn error_type(error: &redis::RedisError) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        "io"
    } else {
        match error.code() {
            Some("NOSCRIPT") => "NOSCRIPT",
            Some("OOM") => "OOM",
            Some("READONLY") => "READONLY",
            Some("NOREPLICAS") => "NOREPLICAS",
            Some("BUSY") => "BUSY",
            Some(_) => "server",
            None => "client",
        }
    }
}

/// Measures a step, and traces it when it is part of something traced (a call, a delivery):
/// the background loops' own steps (health pings, sweeps, blocking reads) would otherwise each
/// start a trace of one span, every few seconds, on every replica.
async fn observed<T>(operation: &'static str, commands: usize, step: RedisFuture<'_, T>) -> redis::RedisResult<T> {
    if tracing::Span::current().is_none() {
        let started = Instant::now();
        let result = step.await;
        metrics().redis_step(operation, result.as_ref().err().map(error_type), started.elapsed());
        return result;
    }
    let span = tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = operation,
        db.operation.batch.size = commands,
        error.r#type = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = step.instrument(span.clone()).await;
    let error = result.as_ref().err().map(error_type);
    if let Some(error) = error {
        span.record("error.type", error);
    }
    metrics().redis_step(operation, error, started.elapsed());
    result
}

/// The store's connection, observed.
#[derive(Clone)]
pub struct Traced(pub(crate) super::connection::Connection);

impl ConnectionLike for Traced {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let name = operation(cmd);
        Box::pin(observed(name, 1, self.0.req_packed_command(cmd)))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let name = pipeline_operation(pipeline);
        let commands = pipeline.cmd_iter().count();
        Box::pin(observed(
            name,
            commands,
            self.0.req_packed_commands(pipeline, offset, count),
        ))
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_named_by_command_or_by_script_and_nothing_else() {
        let change = script("test_change", "return 1");
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(change.get_hash()).arg(1).arg("gb:{grant}:secret-key-name");
        assert_eq!(operation(&evalsha), "test_change");
        let mut unknown = redis::cmd("EVALSHA");
        unknown.arg("0123456789abcdef").arg(0);
        assert_eq!(operation(&unknown), "EVALSHA");
        assert_eq!(operation(redis::cmd("get").arg("gb:key")), "GET");
        assert_eq!(operation(&redis::cmd("FLUSHALL")), "other");
        let mut transaction = redis::pipe();
        transaction.atomic().cmd("XADD").arg("s").arg("*").arg("f").arg("v");
        assert_eq!(pipeline_operation(&transaction), "XADD");
    }
}
