//! The load tool: the real `grant-broker serve` binary (release build) as its own process, a real
//! `redis-server`, an STS stand-in that answers at once (or after `--sts-latency-ms`), and a
//! tonic load generator in this process. One run prints, for each call, its rate, its latency
//! percentiles and its ratio to `grpc.health.v1.Health/Check` (the floor of what the server can
//! answer), then, per approved grant: Redis commands (INFO commandstats), Redis CPU, the broker's
//! CPU, and the broker's RSS.
//!
//! ```sh
//! cargo bench --bench load                      # 5 s per call, 64 in flight over 4 connections
//! cargo bench --bench load -- --seconds 10 --concurrency 256 --connections 8 --sts-latency-ms 100
//! ```
//!
//! `GB_LOAD_BROKER=path/to/grant-broker` runs another build's binary (another commit's, to compare
//! the two in alternating runs). Every phase is bounded in time and in count (`--max-calls`), and
//! all traffic is on loopback.
//! The broker logs at info to `target/load-broker.log`, as a deployment would (`GB_LOAD_LOG`
//! sets its `RUST_LOG` instead, to see what logging costs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use grant_broker::grpc::proto;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Options {
    seconds: u64,
    concurrency: usize,
    connections: usize,
    sts_latency_ms: u64,
    max_calls: usize,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            seconds: 5,
            concurrency: 64,
            connections: 4,
            sts_latency_ms: 0,
            max_calls: 200_000,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().and_then(|value| value.parse::<u64>().ok());
            match arg.as_str() {
                "--seconds" => options.seconds = value().unwrap_or(options.seconds).clamp(1, 600),
                "--concurrency" => {
                    options.concurrency = value().map_or(options.concurrency, |v| v as usize).clamp(1, 5_000)
                }
                "--connections" => {
                    options.connections = value().map_or(options.connections, |v| v as usize).clamp(1, 256)
                }
                "--sts-latency-ms" => options.sts_latency_ms = value().unwrap_or(0).min(10_000),
                "--max-calls" => {
                    options.max_calls = value().map_or(options.max_calls, |v| v as usize).clamp(1, 10_000_000)
                }
                // `cargo bench` passes --bench; a name filter is ignored.
                _ => {}
            }
        }
        options.connections = options.connections.min(options.concurrency);
        options
    }
}

/// What one phase measured.
struct Measured {
    calls: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `call` from `concurrency` tasks over `channels` for at most `seconds` and `max_calls`.
async fn phase<F, Fut>(channels: &[Channel], options: &Options, call: F) -> Measured
where
    F: Fn(Channel, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let until = started + Duration::from_secs(options.seconds);
    let per_task = options.max_calls / options.concurrency;
    let phase_id = uuid::Uuid::now_v7().simple().to_string();
    let mut tasks = Vec::new();
    for task in 0..options.concurrency {
        let channel = channels[task % channels.len()].clone();
        let call = Arc::clone(&call);
        let phase_id = phase_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_task.min(100_000));
            let mut errors = 0;
            for i in 0..per_task {
                if Instant::now() >= until {
                    break;
                }
                let sent = Instant::now();
                let ok = call(channel.clone(), format!("load-{phase_id}-{task}-{i}")).await;
                samples.push(sent.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mine, failed) = task.await.unwrap();
        samples.extend(mine);
        errors += failed;
    }
    let elapsed = started.elapsed();
    samples.sort();
    Measured {
        calls: samples.len(),
        errors,
        elapsed,
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
    }
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    authed(PORTAL_TOKEN, message)
}

fn pending_request(request_id: String) -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        request_id,
        ..production_request()
    }
}

/// Redis's command counts (INFO commandstats) and CPU seconds (INFO cpu).
async fn redis_stats(redis: &RedisServer) -> (BTreeMap<String, u64>, f64) {
    let mut connection = redis.connection().await;
    let commands: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap();
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for line in commands.lines() {
        // cmdstat_get:calls=3,usec=...
        if let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|line| line.split_once(':')) {
            let calls = rest
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|calls| calls.parse().ok())
                .unwrap_or(0);
            counts.insert(name.to_owned(), calls);
        }
    }
    let seconds = |key: &str| -> f64 {
        cpu.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (counts, seconds("used_cpu_user:") + seconds("used_cpu_sys:"))
}

/// A process's CPU seconds (user + system) and resident memory (KiB), from /proc.
fn process_stats(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name; 100 ticks a second.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker binary: this build's, or `GB_LOAD_BROKER` (another commit's, to compare in one run).
fn start_broker(settings: &Settings, concurrency: usize, env: &[(&str, &str)]) -> Broker {
    let port = free_port();
    let config = std::env::temp_dir().join(format!("gb-load-{}.toml", std::process::id()));
    // Above the default bound on calls in flight only when the load needs it (older builds do
    // not know the key).
    let limit = if concurrency > 1_000 {
        format!("max_concurrent_calls = {}\n", concurrency * 2)
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{limit}{}",
            config_text(settings)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(manifest_dir().join("target/load-broker.log")).unwrap();
    let binary = std::env::var_os("GB_LOAD_BROKER").unwrap_or_else(|| env!("CARGO_BIN_EXE_grant-broker").into());
    let mut child = Command::new(binary)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("GB_LOAD_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(port, "grant-broker", &mut child);
    Broker { child, port }
}

/// Redis round trips per approved grant, as the broker itself counts them (each Redis step it takes
/// is one `db.client.operation.duration` measurement, a pipeline or transaction once): a second
/// broker exporting its metrics to a collector in this process, 300 grants one at a time. The
/// background work of those seconds (health pings, sweeps) is in the count, a few steps in all.
async fn round_trips(settings: &Settings) -> String {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    const GRANTS: usize = 300;
    let (collector, endpoint) = Collector::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
    ];
    let mut broker = start_broker(settings, 1, &env);
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", broker.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = proto::grant_broker_client::GrantBrokerClient::new(channel);
    for n in 0..GRANTS {
        let granted = client
            .request_access(with_token(read_logs_request(&format!("load-trips-{n}"))))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.credentials.is_some());
    }
    // SIGTERM: the broker exports its metrics as it exits.
    let _ = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status();
    let _ = broker.child.wait();
    let mut by_operation: BTreeMap<String, u64> = BTreeMap::new();
    for metric in collector
        .metrics()
        .iter()
        .filter(|metric| metric.name == "db.client.operation.duration")
    {
        let Some(Data::Histogram(histogram)) = &metric.data else {
            continue;
        };
        for point in &histogram.data_points {
            let operation = point
                .attributes
                .iter()
                .find(|kv| kv.key == "db.operation.name")
                .map(|kv| value_text(kv.value.as_ref()))
                .unwrap_or_default();
            // Cumulative: the last export holds the totals.
            by_operation.insert(operation, point.count);
        }
    }
    let total: u64 = by_operation.values().sum();
    let mut top: Vec<(String, u64)> = by_operation.into_iter().collect();
    top.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    format!(
        "Redis round trips per approved grant: {:.1} ({})",
        total as f64 / GRANTS as f64,
        top.iter()
            .map(|(operation, count)| format!("{operation} {:.1}", *count as f64 / GRANTS as f64))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    let redis = RedisServer::start();
    let behaviour = if options.sts_latency_ms == 0 {
        StsBehaviour::Succeed
    } else {
        StsBehaviour::Delay(Duration::from_millis(options.sts_latency_ms))
    };
    let sts = FakeSts::start(behaviour).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.redis_timeout_ms = 5_000;
    settings.attempt_timeout_ms = 10_000;
    settings.operation_timeout_ms = 20_000;
    let broker = start_broker(&settings, options.concurrency, &[]);
    let url = format!("http://127.0.0.1:{}", broker.port);
    let mut channels = Vec::new();
    for _ in 0..options.connections {
        channels.push(Channel::from_shared(url.clone()).unwrap().connect().await.unwrap());
    }
    println!(
        "load: {} in flight over {} connections, {} s per call (at most {} calls), STS latency {} ms",
        options.concurrency, options.connections, options.seconds, options.max_calls, options.sts_latency_ms
    );
    // A grant to read back.
    let grant = proto::grant_broker_client::GrantBrokerClient::new(channels[0].clone())
        .request_access(with_token(read_logs_request("load-read-back")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;

    let mut rows: Vec<(&str, Measured)> = Vec::new();
    rows.push((
        "grpc.health.v1.Health/Check",
        phase(&channels, &options, |channel, _| async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        })
        .await,
    ));
    rows.push((
        "ListTargets",
        phase(&channels, &options, |channel, _| async move {
            proto::grant_broker_client::GrantBrokerClient::new(channel)
                .list_targets(with_token(proto::ListTargetsRequest {}))
                .await
                .is_ok()
        })
        .await,
    ));
    let id = grant.clone();
    rows.push((
        "GetGrant",
        phase(&channels, &options, move |channel, _| {
            let id = id.clone();
            async move {
                proto::grant_broker_client::GrantBrokerClient::new(channel)
                    .get_grant(with_token(proto::GetGrantRequest { id }))
                    .await
                    .is_ok()
            }
        })
        .await,
    ));
    rows.push((
        "RequestAccess, pending (rules, Redis, no STS)",
        phase(&channels, &options, |channel, request_id| async move {
            proto::grant_broker_client::GrantBrokerClient::new(channel)
                .request_access(with_token(pending_request(request_id)))
                .await
                .is_ok_and(|answer| answer.into_inner().credentials.is_none())
        })
        .await,
    ));
    let (redis_before, redis_cpu_before) = redis_stats(&redis).await;
    let (broker_cpu_before, _) = process_stats(broker.child.id());
    let approved = phase(&channels, &options, |channel, request_id| async move {
        proto::grant_broker_client::GrantBrokerClient::new(channel)
            .request_access(with_token(read_logs_request(&request_id)))
            .await
            .is_ok_and(|answer| answer.into_inner().credentials.is_some())
    })
    .await;
    let (redis_after, redis_cpu_after) = redis_stats(&redis).await;
    let (broker_cpu_after, rss) = process_stats(broker.child.id());
    let grants = approved.calls.saturating_sub(approved.errors).max(1) as f64;
    rows.push(("RequestAccess, approved and issued", approved));

    let floor = rows[0].1.rate();
    println!("\n| call | per second | ratio to health Check | p50 | p99 | errors |\n|---|---|---|---|---|---|");
    for (name, measured) in &rows {
        println!(
            "| {name} | {:.0} | {:.3} | {:.2?} | {:.2?} | {} |",
            measured.rate(),
            measured.rate() / floor,
            measured.p50,
            measured.p99,
            measured.errors
        );
    }
    let mut per_grant: Vec<(String, f64)> = redis_after
        .iter()
        .map(|(name, after)| {
            let before = redis_before.get(name).copied().unwrap_or(0);
            (name.clone(), after.saturating_sub(before) as f64 / grants)
        })
        .filter(|(_, per)| *per >= 0.05)
        .collect();
    per_grant.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = per_grant.iter().map(|(_, per)| per).sum();
    drop(broker);
    let trips = round_trips(&settings).await;
    println!(
        "\nper approved grant ({grants:.0} grants): {total:.1} Redis commands ({}), Redis CPU {:.0} µs, broker CPU {:.0} µs; broker RSS {} MiB\n{trips}",
        per_grant
            .iter()
            .map(|(name, per)| format!("{name} {per:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        (redis_cpu_after - redis_cpu_before) / grants * 1e6,
        (broker_cpu_after - broker_cpu_before) / grants * 1e6,
        rss / 1024,
    );
}
