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
//! cargo bench --bench load -- --cluster         # the same on a Redis Cluster (3 primaries, 3 replicas)
//! cargo bench --bench load -- --soak --minutes 10 --rate 200   # the soak (scripts/soak): see `soak`
//! ```
//!
//! `--cluster` runs the broker on [`RedisCluster`] (`redis.cluster_nodes`) instead of one
//! `redis-server`; Redis commands and Redis CPU per grant are then summed over the primaries.
//! `--min-replicas N` sets `redis.min_replicas` (0 by default here).
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
    /// The broker on a Redis Cluster of 3 primaries and 3 replicas instead of one redis-server
    /// (the soak's default; `--single` there).
    cluster: bool,
    /// `redis.min_replicas`; none: 0, or 1 in the soak on a cluster.
    min_replicas: Option<u32>,
    /// The soak instead of the load phases (see [`soak`]).
    soak: bool,
    minutes: u64,
    /// The soak's requests per second, all kinds together.
    rate: u64,
    sample_seconds: u64,
    /// The soak without its failover in the middle.
    no_failover: bool,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            seconds: 5,
            concurrency: 64,
            connections: 4,
            sts_latency_ms: 0,
            max_calls: 200_000,
            cluster: false,
            min_replicas: None,
            soak: false,
            minutes: 10,
            rate: 200,
            sample_seconds: 10,
            no_failover: false,
        };
        let mut single = false;
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
                "--cluster" => options.cluster = true,
                "--single" => single = true,
                "--min-replicas" => options.min_replicas = value().map(|v| v.min(2) as u32),
                "--soak" => options.soak = true,
                "--minutes" => options.minutes = value().unwrap_or(options.minutes).clamp(1, 240),
                "--rate" => options.rate = value().unwrap_or(options.rate).clamp(1, 5_000),
                "--sample-seconds" => options.sample_seconds = value().unwrap_or(options.sample_seconds).clamp(1, 600),
                "--no-failover" => options.no_failover = true,
                // `cargo bench` passes --bench; a name filter is ignored.
                _ => {}
            }
        }
        if options.soak {
            options.cluster = !single;
        }
        options.connections = options.connections.min(options.concurrency);
        options
    }
}

/// Where the broker keeps its data: one redis-server, or a Redis Cluster.
enum Layout {
    Single(RedisServer),
    Cluster(Arc<RedisCluster>),
}

impl Layout {
    async fn start(cluster: bool) -> Self {
        if cluster {
            Self::Cluster(Arc::new(RedisCluster::start(3, 1).await))
        } else {
            Self::Single(RedisServer::start())
        }
    }

    /// The test settings for a broker on this layout.
    fn settings(&self, sts_url: String) -> Settings {
        match self {
            Self::Single(redis) => Settings::new(redis.url(), sts_url),
            Self::Cluster(cluster) => {
                let mut settings = Settings::new(String::new(), sts_url);
                settings.redis_cluster = cluster.seeds();
                settings
            }
        }
    }

    /// The ports of the nodes that take writes now: the one server, or the cluster's primaries.
    async fn primaries(&self) -> Vec<u16> {
        match self {
            Self::Single(redis) => vec![redis.port],
            Self::Cluster(cluster) => cluster.primaries().await,
        }
    }
}

/// `INFO <section>` of the node at `port`, within a second or two (a dead node: an error).
async fn node_info(port: u16, section: &str) -> Result<String, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    let mut connection = tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection())
        .await
        .map_err(|_| format!("{port}: no connection within 1 s"))?
        .map_err(|e| format!("{port}: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("INFO").arg(section).query_async::<String>(&mut connection),
    )
    .await
    .map_err(|_| format!("{port}: no answer within 2 s"))?
    .map_err(|e| format!("{port}: {e}"))
}

/// A numeric field of an INFO text (`used_memory:1234`).
fn info_field(info: &str, field: &str) -> Option<f64> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
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

/// Redis's command counts (INFO commandstats) and CPU seconds (INFO cpu), summed over the nodes
/// that take writes (the primaries, on a cluster).
async fn redis_stats(layout: &Layout) -> (BTreeMap<String, u64>, f64) {
    let mut counts = BTreeMap::new();
    let mut cpu_seconds = 0.0;
    for port in layout.primaries().await {
        let commands = node_info(port, "commandstats").await.unwrap();
        let cpu = node_info(port, "cpu").await.unwrap();
        for line in commands.lines() {
            // cmdstat_get:calls=3,usec=...
            if let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|line| line.split_once(':')) {
                let calls: u64 = rest
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))
                    .and_then(|calls| calls.parse().ok())
                    .unwrap_or(0);
                *counts.entry(name.to_owned()).or_insert(0) += calls;
            }
        }
        cpu_seconds +=
            info_field(&cpu, "used_cpu_user").unwrap_or(0.0) + info_field(&cpu, "used_cpu_sys").unwrap_or(0.0);
    }
    (counts, cpu_seconds)
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
fn broker_binary() -> std::ffi::OsString {
    std::env::var_os("GB_LOAD_BROKER").unwrap_or_else(|| env!("CARGO_BIN_EXE_grant-broker").into())
}

/// Where [`start_broker`] writes the broker's configuration.
fn config_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gb-load-{}.toml", std::process::id()))
}

fn start_broker(settings: &Settings, concurrency: usize, env: &[(&str, &str)]) -> Broker {
    let port = free_port();
    let config = config_path();
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
    let mut child = Command::new(broker_binary())
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
    if options.soak {
        let passed = soak::run(&options).await;
        if !passed {
            std::process::exit(1);
        }
        return;
    }
    load(&options).await;
}

/// The load phases: each call at `--concurrency` for `--seconds`, then the per-grant figures.
async fn load(options: &Options) {
    let layout = Layout::start(options.cluster).await;
    let behaviour = if options.sts_latency_ms == 0 {
        StsBehaviour::Succeed
    } else {
        StsBehaviour::Delay(Duration::from_millis(options.sts_latency_ms))
    };
    let sts = FakeSts::start(behaviour).await;
    let mut settings = layout.settings(sts.url.clone());
    settings.min_replicas = options.min_replicas.unwrap_or(0);
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
    if options.cluster {
        println!(
            "layout: Redis Cluster, 3 primaries and 3 replicas, min_replicas {}; Redis commands and CPU summed over the primaries",
            settings.min_replicas
        );
    }
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
        phase(&channels, options, |channel, _| async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        })
        .await,
    ));
    rows.push((
        "ListTargets",
        phase(&channels, options, |channel, _| async move {
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
        phase(&channels, options, move |channel, _| {
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
        phase(&channels, options, |channel, request_id| async move {
            proto::grant_broker_client::GrantBrokerClient::new(channel)
                .request_access(with_token(pending_request(request_id)))
                .await
                .is_ok_and(|answer| answer.into_inner().credentials.is_none())
        })
        .await,
    ));
    let (redis_before, redis_cpu_before) = redis_stats(&layout).await;
    let (broker_cpu_before, _) = process_stats(broker.child.id());
    let approved = phase(&channels, options, |channel, request_id| async move {
        proto::grant_broker_client::GrantBrokerClient::new(channel)
            .request_access(with_token(read_logs_request(&request_id)))
            .await
            .is_ok_and(|answer| answer.into_inner().credentials.is_some())
    })
    .await;
    let (redis_after, redis_cpu_after) = redis_stats(&layout).await;
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

/// The soak (`scripts/soak`): mixed traffic at a fixed rate for `--minutes`, on a Redis Cluster
/// with `min_replicas = 1` (`--single`: one redis-server, no replica, no failover), a primary
/// killed at half time and started again once a replica has taken over. Every
/// `--sample-seconds` it samples the broker's RSS, Redis `used_memory` (summed over the
/// primaries), the grants recorded and live, and each call kind's errors (by gRPC code) and
/// latency in that interval; at the end it prints the samples, a summary and PASS/FAIL checks.
///
/// The traffic, a cycle of 20 calls: 10 RequestAccess approved and issued (`dev-logs-read`); one
/// production RequestAccess that waits for people, then ApproveGrant by bob@example.com
/// (security), ApproveGrant by carol@example.com (team lead) and IssueCredentials of it; one
/// RequestAccess approved and issued on `legacy-logs` (revocation `record-only`: the soak has no
/// IAM), then RevokeGrant of it; 2 GetGrant of recent grants; ListGrants (a page of 100, as
/// the auditor) and ListAuditEvents (a page of 100, newest first, as the auditor). A step whose
/// grant is not there yet (the one before it has not answered) is an approved RequestAccess
/// instead. Calls are sent on schedule whatever the answers (open loop), each with a 10 s
/// deadline, at most 1,000 in flight (a call past that is counted as not sent).
mod soak {
    use std::{
        collections::{BTreeMap, VecDeque},
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::{Duration, Instant},
    };

    use grant_broker::grpc::proto;
    use tonic::transport::Channel;

    use super::{Layout, Options, percentile, process_stats, start_broker};
    use crate::common::*;

    /// The client's deadline on every call.
    const CALL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Calls in flight at once, past which a scheduled call is counted as not sent.
    const MAX_IN_FLIGHT: usize = 1_000;
    /// After the killed node is back as a replica, how long errors still count as the failover's.
    const GRACE: Duration = Duration::from_secs(5);
    /// Most grants kept waiting for each next step, and grants kept to read back.
    const QUEUE_BOUND: usize = 10_000;
    const READABLE: usize = 1_000;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Kind {
        Approved,
        Pending,
        ApproveSecurity,
        ApproveLead,
        IssueApproved,
        ToRevoke,
        Revoke,
        Get,
        List,
        Audit,
    }

    const KINDS: [Kind; 10] = [
        Kind::Approved,
        Kind::Pending,
        Kind::ApproveSecurity,
        Kind::ApproveLead,
        Kind::IssueApproved,
        Kind::ToRevoke,
        Kind::Revoke,
        Kind::Get,
        Kind::List,
        Kind::Audit,
    ];

    /// One cycle of the traffic: half approved requests, one of each other step, two reads.
    const CYCLE: [Kind; 20] = [
        Kind::Approved,
        Kind::Get,
        Kind::Approved,
        Kind::Pending,
        Kind::Approved,
        Kind::ApproveSecurity,
        Kind::Approved,
        Kind::ToRevoke,
        Kind::Approved,
        Kind::List,
        Kind::Approved,
        Kind::ApproveLead,
        Kind::Approved,
        Kind::Get,
        Kind::Approved,
        Kind::IssueApproved,
        Kind::Approved,
        Kind::Revoke,
        Kind::Approved,
        Kind::Audit,
    ];

    impl Kind {
        fn name(self) -> &'static str {
            match self {
                Self::Approved => "RequestAccess approved+issued",
                Self::Pending => "RequestAccess pending",
                Self::ApproveSecurity => "ApproveGrant (security)",
                Self::ApproveLead => "ApproveGrant (lead, quorum)",
                Self::IssueApproved => "IssueCredentials",
                Self::ToRevoke => "RequestAccess approved (record-only)",
                Self::Revoke => "RevokeGrant",
                Self::Get => "GetGrant",
                Self::List => "ListGrants (auditor, 100)",
                Self::Audit => "ListAuditEvents (auditor, 100)",
            }
        }

        fn short(self) -> &'static str {
            match self {
                Self::Approved => "RA ok",
                Self::Pending => "RA pend",
                Self::ApproveSecurity => "appr sec",
                Self::ApproveLead => "appr lead",
                Self::IssueApproved => "issue",
                Self::ToRevoke => "RA rec-only",
                Self::Revoke => "revoke",
                Self::Get => "get",
                Self::List => "list",
                Self::Audit => "audit",
            }
        }
    }

    /// Grants waiting for their next step.
    #[derive(Default)]
    struct Flow {
        awaiting_security: VecDeque<String>,
        awaiting_lead: VecDeque<String>,
        awaiting_issue: VecDeque<String>,
        revocable: VecDeque<String>,
        readable: VecDeque<String>,
    }

    fn push_bounded(queue: &mut VecDeque<String>, id: String, bound: usize) {
        if queue.len() >= bound {
            queue.pop_front();
        }
        queue.push_back(id);
    }

    impl Flow {
        /// The call the schedule asks for, with the grant it acts on; an approved request when no
        /// grant waits for that step.
        fn take(&mut self, kind: Kind, n: u64) -> (Kind, Option<String>) {
            let queue = match kind {
                Kind::ApproveSecurity => &mut self.awaiting_security,
                Kind::ApproveLead => &mut self.awaiting_lead,
                Kind::IssueApproved => &mut self.awaiting_issue,
                Kind::Revoke => &mut self.revocable,
                Kind::Get => {
                    if self.readable.is_empty() {
                        return (Kind::Approved, None);
                    }
                    let index = (n as usize) % self.readable.len();
                    return (kind, Some(self.readable[index].clone()));
                }
                _ => return (kind, None),
            };
            match queue.pop_front() {
                Some(id) => (kind, Some(id)),
                None => (Kind::Approved, None),
            }
        }
    }

    /// A call that did not do what it should: its gRPC code (or what was wrong with the
    /// answer) and the details.
    struct Failure {
        code: String,
        detail: String,
    }

    impl From<tonic::Status> for Failure {
        fn from(status: tonic::Status) -> Self {
            Self {
                code: format!("{:?}", status.code()),
                detail: format!("{} {}", error_reason(&status), status.message()),
            }
        }
    }

    fn wrong(what: &str) -> Failure {
        Failure {
            code: "WRONG_ANSWER".to_owned(),
            detail: what.to_owned(),
        }
    }

    struct Outcome {
        kind: Kind,
        /// When the answer came, since the start.
        done: Duration,
        latency: Duration,
        failure: Option<Failure>,
    }

    struct Shared {
        started: Instant,
        run: String,
        flow: Mutex<Flow>,
        outcomes: Mutex<Vec<Outcome>>,
        in_flight: AtomicUsize,
    }

    fn timed<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut request = authed(token, message);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    /// Requesters and grantees vary (50 people, 10 vendors), as a portal's would.
    fn people(request: proto::RequestAccessRequest, n: u64) -> proto::RequestAccessRequest {
        proto::RequestAccessRequest {
            requester: format!("person{}@example.com", n % 50),
            grantee: format!("vendor-{}", n % 10),
            ..request
        }
    }

    fn state_is(grant: &proto::Grant, state: proto::GrantState) -> bool {
        grant.state == i32::from(state)
    }

    async fn call(shared: &Shared, channel: Channel, kind: Kind, grant: Option<String>, n: u64) -> Result<(), Failure> {
        let mut client = proto::grant_broker_client::GrantBrokerClient::new(channel);
        let request_id = format!("soak-{}-{n}", shared.run);
        let id = grant.unwrap_or_default();
        match kind {
            Kind::Approved | Kind::ToRevoke => {
                let mut request = people(read_logs_request(&request_id), n);
                if kind == Kind::ToRevoke {
                    request.target = "legacy-logs".to_owned();
                    request.scopes = vec![proto::Scope {
                        actions: vec!["s3:GetObject".to_owned()],
                        resources: vec!["arn:aws:s3:::legacy-logs/vendor-x/*".to_owned()],
                    }];
                }
                let answer = client.request_access(timed(PORTAL_TOKEN, request)).await?.into_inner();
                let grant = answer.grant.ok_or_else(|| wrong("no grant"))?;
                if answer.credentials.is_none() {
                    return Err(wrong("approved at once, but no credentials"));
                }
                let mut flow = shared.flow.lock().unwrap();
                if kind == Kind::ToRevoke {
                    push_bounded(&mut flow.revocable, grant.id.clone(), QUEUE_BOUND);
                }
                push_bounded(&mut flow.readable, grant.id, READABLE);
            }
            Kind::Pending => {
                let request = proto::RequestAccessRequest {
                    request_id,
                    ..people(production_request(), n)
                };
                let answer = client.request_access(timed(PORTAL_TOKEN, request)).await?.into_inner();
                let grant = answer.grant.ok_or_else(|| wrong("no grant"))?;
                if !state_is(&grant, proto::GrantState::PendingApproval) || answer.credentials.is_some() {
                    return Err(wrong("a production request not pending"));
                }
                push_bounded(
                    &mut shared.flow.lock().unwrap().awaiting_security,
                    grant.id,
                    QUEUE_BOUND,
                );
            }
            Kind::ApproveSecurity | Kind::ApproveLead => {
                let (approver, then) = if kind == Kind::ApproveSecurity {
                    ("bob@example.com", proto::GrantState::PendingApproval)
                } else {
                    ("carol@example.com", proto::GrantState::Approved)
                };
                let grant = client
                    .approve_grant(timed(APPROVALS_TOKEN, approve(&id, approver)))
                    .await?
                    .into_inner();
                if !state_is(&grant, then) {
                    return Err(wrong(&format!("after {approver}'s approval: state {}", grant.state)));
                }
                let mut flow = shared.flow.lock().unwrap();
                if kind == Kind::ApproveSecurity {
                    push_bounded(&mut flow.awaiting_lead, grant.id, QUEUE_BOUND);
                } else {
                    push_bounded(&mut flow.awaiting_issue, grant.id, QUEUE_BOUND);
                }
            }
            Kind::IssueApproved => {
                let answer = client
                    .issue_credentials(timed(PORTAL_TOKEN, issue_for(&id)))
                    .await?
                    .into_inner();
                if answer.credentials.is_none() {
                    return Err(wrong("IssueCredentials without credentials"));
                }
                push_bounded(&mut shared.flow.lock().unwrap().readable, id, READABLE);
            }
            Kind::Revoke => {
                let request = proto::RevokeGrantRequest {
                    id,
                    reason: "soak: taken back".to_owned(),
                    revoker: String::new(),
                };
                let grant = client.revoke_grant(timed(PORTAL_TOKEN, request)).await?.into_inner();
                if !state_is(&grant, proto::GrantState::Revoked) {
                    return Err(wrong(&format!("revoked, then state {}", grant.state)));
                }
            }
            Kind::Get => {
                let grant = client
                    .get_grant(timed(PORTAL_TOKEN, proto::GetGrantRequest { id: id.clone() }))
                    .await?
                    .into_inner();
                if grant.id != id {
                    return Err(wrong("GetGrant answered another grant"));
                }
            }
            Kind::List => {
                let request = proto::ListGrantsRequest {
                    page_size: 100,
                    ..Default::default()
                };
                client.list_grants(timed(AUDITOR_TOKEN, request)).await?;
            }
            Kind::Audit => {
                let request = proto::ListAuditEventsRequest {
                    newest_first: true,
                    page_size: 100,
                    ..Default::default()
                };
                client.list_audit_events(timed(AUDITOR_TOKEN, request)).await?;
            }
        }
        Ok(())
    }

    /// Sends the schedule: call `n` at `n / rate` seconds, until `length`. Returns the calls
    /// sent and those not sent (too many in flight); waits at most 15 s for the last answers.
    async fn generate(shared: Arc<Shared>, channels: Vec<Channel>, rate: u64, length: Duration) -> (u64, u64) {
        let total = rate * length.as_secs();
        let mut tasks = tokio::task::JoinSet::new();
        let (mut sent, mut not_sent) = (0, 0);
        for n in 0..total {
            let at = shared.started + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(at.into()).await;
            while tasks.try_join_next().is_some() {}
            if shared.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                not_sent += 1;
                continue;
            }
            let (kind, grant) = shared.flow.lock().unwrap().take(CYCLE[(n % 20) as usize], n);
            let channel = channels[(n as usize) % channels.len()].clone();
            let shared = Arc::clone(&shared);
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            sent += 1;
            tasks.spawn(async move {
                let sent_at = Instant::now();
                let failure = call(&shared, channel, kind, grant, n).await.err();
                let outcome = Outcome {
                    kind,
                    done: shared.started.elapsed(),
                    latency: sent_at.elapsed(),
                    failure,
                };
                shared.outcomes.lock().unwrap().push(outcome);
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            println!(
                "soak: {} calls still unanswered 15 s after the end, dropped",
                tasks.len()
            );
            tasks.abort_all();
        }
        (sent, not_sent)
    }

    /// What one sample saw.
    struct Sample {
        at: Duration,
        rss_kib: u64,
        /// Summed over the primaries that answered; `partial` when one did not.
        used_memory: u64,
        partial: bool,
        grants: Option<u64>,
        live: Option<u64>,
        calls: usize,
        errors: BTreeMap<String, usize>,
        latencies: BTreeMap<Kind, (Duration, Duration)>,
    }

    /// `XLEN key` on whichever node holds it (the others answer MOVED).
    async fn stream_length(ports: &[u16], key: &str) -> Option<u64> {
        for &port in ports {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(Ok(mut connection)) =
                tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
            else {
                continue;
            };
            if let Ok(Ok(length)) = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("XLEN").arg(key).query_async::<u64>(&mut connection),
            )
            .await
            {
                return Some(length);
            }
        }
        None
    }

    async fn sample(layout: &Layout, broker_pid: u32, shared: &Shared, consumed: &mut usize) -> Sample {
        let at = shared.started.elapsed();
        let (_, rss_kib) = process_stats(broker_pid);
        // The harness's `CLUSTER NODES` read has no deadline of its own.
        let ports = tokio::time::timeout(Duration::from_secs(5), layout.primaries())
            .await
            .unwrap_or_default();
        let (mut used_memory, mut partial) = (0, ports.is_empty());
        for &port in &ports {
            match super::node_info(port, "memory").await {
                Ok(info) => used_memory += super::info_field(&info, "used_memory").unwrap_or(0.0) as u64,
                Err(_) => partial = true,
            }
        }
        let grants = stream_length(&ports, "gb:grants").await;
        let live = stream_length(&ports, "gb:live").await;
        let outcomes = shared.outcomes.lock().unwrap();
        let fresh = &outcomes[*consumed..];
        *consumed = outcomes.len();
        let mut errors = BTreeMap::new();
        let mut by_kind: BTreeMap<Kind, Vec<Duration>> = BTreeMap::new();
        for outcome in fresh {
            by_kind.entry(outcome.kind).or_default().push(outcome.latency);
            if let Some(failure) = &outcome.failure {
                *errors.entry(failure.code.clone()).or_insert(0) += 1;
            }
        }
        let latencies = by_kind
            .into_iter()
            .map(|(kind, mut samples)| {
                samples.sort();
                (kind, (percentile(&samples, 0.50), percentile(&samples, 0.99)))
            })
            .collect();
        Sample {
            at,
            rss_kib,
            used_memory,
            partial,
            grants,
            live,
            calls: fresh.len(),
            errors,
            latencies,
        }
    }

    /// When the failover's steps happened, since the start.
    struct Failover {
        victim: u16,
        killed: Duration,
        took_over: Duration,
        /// The killed node listening again, started empty from its cluster configuration.
        restarted: Duration,
        /// How long after that it still said `role:master`, and the most keys it held then
        /// (none, unless it took writes: they go when it syncs as a replica).
        stale_primary: Duration,
        stale_keys: u64,
        rejoined: Duration,
    }

    /// Kills the primary holding the audit log (the slot every change writes to), waits for its
    /// replica to take over, starts it again and waits until it is that one's replica.
    async fn fail_over(cluster: Arc<RedisCluster>, started: Instant) -> Failover {
        let victim = cluster.primary_of("gb:{audit}:events").await;
        let killed = started.elapsed();
        tokio::task::block_in_place(|| cluster.kill(victim));
        cluster.wait_for_failover(victim, 3).await;
        let took_over = started.elapsed();
        tokio::task::block_in_place(|| cluster.restart(victim));
        let restarted = started.elapsed();
        let (stale_primary, stale_keys) = stale_primary(victim).await;
        cluster.wait_for_replicas(1).await;
        let rejoined = started.elapsed();
        Failover {
            victim,
            killed,
            took_over,
            restarted,
            stale_primary,
            stale_keys,
            rejoined,
        }
    }

    /// Polls the restarted node (every 20 ms, at most 30 s) until it says it is a replica: how
    /// long it said `role:master` first, and the most keys (DBSIZE) it held meanwhile.
    async fn stale_primary(port: u16) -> (Duration, u64) {
        let since = Instant::now();
        let mut keys = 0;
        while since.elapsed() < Duration::from_secs(30) {
            let Ok(info) = super::node_info(port, "replication").await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if !info.contains("role:master") {
                return (since.elapsed(), keys);
            }
            if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                && let Ok(Ok(mut connection)) =
                    tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
                && let Ok(Ok(size)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    redis::cmd("DBSIZE").query_async::<u64>(&mut connection),
                )
                .await
            {
                keys = keys.max(size);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (since.elapsed(), keys)
    }

    fn mib(bytes: u64) -> f64 {
        bytes as f64 / (1024.0 * 1024.0)
    }

    fn seconds(duration: Duration) -> f64 {
        duration.as_secs_f64()
    }

    fn codes(errors: &BTreeMap<String, usize>) -> String {
        if errors.is_empty() {
            return "0".to_owned();
        }
        errors
            .iter()
            .map(|(code, count)| format!("{code} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The broker's log lines by level, and its most frequent warnings and errors.
    fn broker_log_summary() -> String {
        let text = std::fs::read_to_string(manifest_dir().join("target/load-broker.log")).unwrap_or_default();
        let mut levels: BTreeMap<String, usize> = BTreeMap::new();
        let mut messages: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                *levels.entry("(not JSON)".to_owned()).or_insert(0) += 1;
                continue;
            };
            let level = entry["level"].as_str().unwrap_or("?").to_owned();
            if level == "WARN" || level == "ERROR" {
                let message = entry["fields"]["message"].as_str().unwrap_or("?");
                let error = entry["fields"]["error"].as_str().unwrap_or("");
                let text = format!("{level} {message} {error}");
                *messages.entry(text.chars().take(200).collect()).or_insert(0) += 1;
            }
            *levels.entry(level).or_insert(0) += 1;
        }
        let mut top: Vec<(String, usize)> = messages.into_iter().collect();
        top.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let mut out = format!(
            "broker log (target/load-broker.log): {}",
            levels
                .iter()
                .map(|(level, count)| format!("{level} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (message, count) in top.iter().take(8) {
            out += &format!("\n  {count:>6} x {message}");
        }
        out
    }

    /// The soak; true when every check passed.
    pub(super) async fn run(options: &Options) -> bool {
        let length = Duration::from_secs(options.minutes * 60);
        let layout = Layout::start(options.cluster).await;
        let sts = FakeSts::start(StsBehaviour::Succeed).await;
        let mut settings = layout.settings(sts.url.clone());
        // No replica behind one redis-server: nothing could acknowledge.
        settings.min_replicas = if options.cluster {
            options.min_replicas.unwrap_or(1)
        } else {
            0
        };
        // The broker's own defaults: Redis down means UNAVAILABLE within a second.
        settings.redis_timeout_ms = 1_000;
        let broker = start_broker(&settings, 1, &[]);
        let url = format!("http://127.0.0.1:{}", broker.port);
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(Channel::from_shared(url.clone()).unwrap().connect().await.unwrap());
        }
        let failover_planned = options.cluster && !options.no_failover;
        println!(
            "soak: {} min at {} calls/s over 4 connections, {}, min_replicas {}, {}; a sample every {} s",
            options.minutes,
            options.rate,
            if options.cluster {
                "Redis Cluster of 3 primaries and 3 replicas"
            } else {
                "one redis-server"
            },
            settings.min_replicas,
            if failover_planned {
                "the audit log's primary killed at half time"
            } else {
                "no failover"
            },
            options.sample_seconds
        );

        let shared = Arc::new(Shared {
            started: Instant::now(),
            run: uuid::Uuid::now_v7().simple().to_string(),
            flow: Mutex::new(Flow::default()),
            outcomes: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let mut consumed = 0;
        let mut samples = vec![sample(&layout, broker.child.id(), &shared, &mut consumed).await];
        let generator = tokio::spawn(generate(Arc::clone(&shared), channels, options.rate, length));
        let failover = match &layout {
            Layout::Cluster(cluster) if failover_planned => {
                let cluster = Arc::clone(cluster);
                let started = shared.started;
                Some(tokio::spawn(async move {
                    tokio::time::sleep_until((started + length / 2).into()).await;
                    fail_over(cluster, started).await
                }))
            }
            _ => None,
        };
        let interval = Duration::from_secs(options.sample_seconds);
        let most = length.as_secs() / options.sample_seconds + 1;
        for i in 1..=most {
            let at = shared.started + interval * i as u32;
            if at > shared.started + length {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let taken = sample(&layout, broker.child.id(), &shared, &mut consumed).await;
            println!(
                "  t={:>5.0} s  RSS {:>6.1} MiB  Redis {:>7.1} MiB{}  grants {:>7}  calls {:>5}  errors {}",
                seconds(taken.at),
                taken.rss_kib as f64 / 1024.0,
                mib(taken.used_memory),
                if taken.partial { "*" } else { " " },
                taken.grants.map_or("?".to_owned(), |n| n.to_string()),
                taken.calls,
                codes(&taken.errors)
            );
            samples.push(taken);
        }
        let (sent, not_sent) = generator.await.unwrap();
        let failover = match failover {
            Some(task) => match task.await {
                Ok(failover) => Some(failover),
                Err(error) => {
                    println!("soak: the failover did not complete: {error}");
                    None
                }
            },
            None => None,
        };
        // What answered after the last sample.
        let last = sample(&layout, broker.child.id(), &shared, &mut consumed).await;
        samples.push(last);
        let outcomes = std::mem::take(&mut *shared.outcomes.lock().unwrap());
        stop(broker).await;
        let verified = audit_verify().await;
        let passed = report(
            options,
            &samples,
            &outcomes,
            failover.as_ref(),
            failover_planned,
            (sent, not_sent),
            &verified,
        );
        println!("\n{}", broker_log_summary());
        drop(layout);
        passed
    }

    /// SIGTERM, as a deployment stops it (it drains and finishes what it holds); killed after 30 s.
    async fn stop(mut broker: super::Broker) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &broker.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = broker.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("soak: the broker did not exit within 30 s of SIGTERM; killed");
    }

    /// `grant-broker audit verify` with the soak broker's configuration, after it stopped: the
    /// ledger complete and unaltered after the failover. At most 5 minutes. Whether it passed,
    /// and what it said (its summary, its first problems; all of it in
    /// `target/load-audit-verify.txt`).
    async fn audit_verify() -> (bool, String) {
        let out = manifest_dir().join("target/load-audit-verify.txt");
        let file = std::fs::File::create(&out).unwrap();
        let mut child = std::process::Command::new(super::broker_binary())
            .args(["audit", "verify", "--config"])
            .arg(super::config_path())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut status = None;
        for _ in 0..3_000 {
            if let Ok(Some(exited)) = child.try_wait() {
                status = Some(exited);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let problems: Vec<&str> = text.lines().filter(|line| line.starts_with("problem:")).collect();
        let notes: Vec<&str> = text.lines().filter(|line| line.starts_with("note:")).collect();
        let summary = text
            .lines()
            .filter(|line| !line.starts_with("problem:") && !line.starts_with("note:"))
            .collect::<Vec<_>>()
            .join("\n    ");
        // A writer's missing places that are service events the broker said it could not log
        // are what `audit verify` documents as no tampering; anything else is not explained.
        let unlogged = unlogged_service_events();
        let (mut explained, mut others) = (0, Vec::new());
        for line in &problems {
            match writer_gap(line) {
                Some((writer, missing, listed))
                    if unlogged.get(&writer).is_some_and(|places| {
                        places.len() as u64 >= missing && listed.iter().all(|place| places.contains(place))
                    }) =>
                {
                    explained += missing;
                }
                _ => others.push(*line),
            }
        }
        let mut said = format!(
            "{}, {} problem(s), {} note(s)\n    {summary}\n    explained: {explained} missing place(s) of writers' sequences, all service events the broker logged (warn) it could not write; {} other problem(s)",
            status.map_or("none (killed after 5 min)".to_owned(), |s| s.to_string()),
            problems.len(),
            notes.len(),
            others.len()
        );
        for line in others.iter().take(8).chain(notes.iter().take(3)) {
            said += &format!("\n    {}", line.chars().take(240).collect::<String>());
        }
        let clean =
            status.is_some_and(|s| s.success()) || (status.and_then(|s| s.code()) == Some(6) && others.is_empty());
        (clean, said)
    }

    /// The places of writers' sequences the broker logged it left empty (a service event whose
    /// write failed), by writer.
    fn unlogged_service_events() -> BTreeMap<String, std::collections::BTreeSet<u64>> {
        let text = std::fs::read_to_string(manifest_dir().join("target/load-broker.log")).unwrap_or_default();
        let mut places: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|line| line.contains("a service event could not be logged"))
        {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &entry["fields"];
            if let (Some(writer), Some(sequence)) = (fields["writer"].as_str(), fields["sequence"].as_u64()) {
                places.entry(writer.to_owned()).or_default().insert(sequence);
            }
        }
        places
    }

    /// `problem: writer W: N of its entries between L and H are missing (a-b, c, ...): ...`: the
    /// writer, N and the places listed (the first gaps only).
    fn writer_gap(line: &str) -> Option<(String, u64, Vec<u64>)> {
        let rest = line.strip_prefix("problem: writer ")?;
        let (writer, rest) = rest.split_once(": ")?;
        let (missing, rest) = rest.split_once(" of its entries between ")?;
        let listed = rest.split_once("are missing (")?.1.split_once(')')?.0;
        let mut places = Vec::new();
        for gap in listed.split(", ") {
            match gap.split_once('-') {
                Some((low, high)) => places.extend(low.parse::<u64>().ok()?..=high.parse::<u64>().ok()?),
                None => places.push(gap.parse().ok()?),
            }
        }
        Some((writer.to_owned(), missing.parse().ok()?, places))
    }

    fn report(
        options: &Options,
        samples: &[Sample],
        outcomes: &[Outcome],
        failover: Option<&Failover>,
        failover_planned: bool,
        (sent, not_sent): (u64, u64),
        verified: &(bool, String),
    ) -> bool {
        let length = options.minutes * 60;
        println!(
            "\n| t (s) | broker RSS (MiB) | Redis used_memory (MiB) | grants recorded | live | calls answered | errors |\n|---|---|---|---|---|---|---|"
        );
        for (i, sample) in samples.iter().enumerate() {
            let at = if i + 1 == samples.len() {
                format!("{:.0} (end)", seconds(sample.at))
            } else {
                format!("{:.0}", seconds(sample.at))
            };
            println!(
                "| {at} | {:.1} | {:.1}{} | {} | {} | {} | {} |",
                sample.rss_kib as f64 / 1024.0,
                mib(sample.used_memory),
                if sample.partial { " (a primary down)" } else { "" },
                sample.grants.map_or("?".to_owned(), |n| n.to_string()),
                sample.live.map_or("?".to_owned(), |n| n.to_string()),
                sample.calls,
                codes(&sample.errors)
            );
        }
        println!(
            "\np50/p99 (ms) of each call kind in each interval\n\n| t (s) | {} |\n|---|{}",
            KINDS.map(Kind::short).join(" | "),
            "---|".repeat(KINDS.len())
        );
        for sample in samples.iter().skip(1).filter(|sample| sample.calls > 0) {
            let cells: Vec<String> = KINDS
                .iter()
                .map(|kind| match sample.latencies.get(kind) {
                    Some((p50, p99)) => format!("{:.1}/{:.1}", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3),
                    None => "-".to_owned(),
                })
                .collect();
            println!("| {:.0} | {} |", seconds(sample.at), cells.join(" | "));
        }

        // The failover window: from the kill until GRACE after the killed node is a replica again.
        let window = failover.map(|f| (f.killed, f.rejoined + GRACE));
        let inside = |at: Duration| window.is_some_and(|(from, to)| at >= from && at <= to);
        let mut by_kind: BTreeMap<Kind, (Vec<Duration>, usize, usize)> = BTreeMap::new();
        let (mut calls_in, mut errors_in, mut calls_out, mut errors_out) = (0, 0, 0, 0);
        let mut codes_in: BTreeMap<String, usize> = BTreeMap::new();
        let mut outside_failures: Vec<(&Outcome, &Failure)> = Vec::new();
        let mut inside_details: BTreeMap<(String, String), usize> = BTreeMap::new();
        for outcome in outcomes {
            let entry = by_kind.entry(outcome.kind).or_default();
            let is_inside = inside(outcome.done);
            entry.2 += 1;
            if !is_inside {
                entry.0.push(outcome.latency);
            }
            if is_inside {
                calls_in += 1;
            } else {
                calls_out += 1;
            }
            if let Some(failure) = &outcome.failure {
                entry.1 += 1;
                if is_inside {
                    errors_in += 1;
                    *codes_in.entry(failure.code.clone()).or_insert(0) += 1;
                    *inside_details
                        .entry((failure.code.clone(), failure.detail.chars().take(120).collect()))
                        .or_insert(0) += 1;
                } else {
                    errors_out += 1;
                    outside_failures.push((outcome, failure));
                }
            }
        }
        println!(
            "\n| call (whole run; latency outside the failover window) | answered | errors | p50 | p99 |\n|---|---|---|---|---|"
        );
        for kind in KINDS {
            let Some((latencies, errors, answered)) = by_kind.get_mut(&kind) else {
                continue;
            };
            latencies.sort();
            println!(
                "| {} | {answered} | {errors} | {:.2?} | {:.2?} |",
                kind.name(),
                percentile(latencies, 0.50),
                percentile(latencies, 0.99)
            );
        }

        println!("\nsummary");
        println!(
            "  calls: {sent} sent of {} scheduled ({not_sent} not sent: {MAX_IN_FLIGHT} in flight), {} answered",
            options.rate * length,
            outcomes.len()
        );
        let warm_up = Duration::from_secs((length / 4).min(60));
        let baseline = samples
            .iter()
            .find(|sample| sample.at >= warm_up)
            .unwrap_or(&samples[0]);
        let final_sample = &samples[samples.len() - 1];
        let growth = (final_sample.rss_kib as f64 - baseline.rss_kib as f64) / baseline.rss_kib.max(1) as f64;
        println!(
            "  broker RSS: {:.1} MiB before the load, {:.1} MiB at {:.0} s (after warm-up), {:.1} MiB at the end ({:+.1} %)",
            samples[0].rss_kib as f64 / 1024.0,
            baseline.rss_kib as f64 / 1024.0,
            seconds(baseline.at),
            final_sample.rss_kib as f64 / 1024.0,
            growth * 100.0
        );
        let first = &samples[0];
        let created = final_sample
            .grants
            .zip(first.grants)
            .map(|(last, first)| last.saturating_sub(first));
        match created {
            Some(created) if created > 0 && !final_sample.partial && !first.partial => println!(
                "  Redis memory per grant: {:.0} bytes ({:.1} MiB over {created} grants recorded, used_memory summed over the primaries)",
                (final_sample.used_memory as f64 - first.used_memory as f64) / created as f64,
                mib(final_sample.used_memory.saturating_sub(first.used_memory))
            ),
            _ => println!("  Redis memory per grant: not measured (a sample missed a node)"),
        }
        let rate = |errors: usize, calls: usize| {
            if calls == 0 {
                0.0
            } else {
                errors as f64 / calls as f64 * 100.0
            }
        };
        println!(
            "  errors outside the failover window: {errors_out} of {calls_out} calls ({:.3} %)",
            rate(errors_out, calls_out)
        );
        for (outcome, failure) in outside_failures.iter().take(10) {
            println!(
                "    at {:.1} s, {}: {} {}",
                seconds(outcome.done),
                outcome.kind.name(),
                failure.code,
                failure.detail
            );
        }
        if let Some(failover) = failover {
            let (from, to) = window.unwrap_or_default();
            println!(
                "  failover: primary {} killed at {:.1} s, a replica took over at {:.1} s, the old primary a replica again at {:.1} s; window {:.1}-{:.1} s",
                failover.victim,
                seconds(failover.killed),
                seconds(failover.took_over),
                seconds(failover.rejoined),
                seconds(from),
                seconds(to)
            );
            println!(
                "  the killed node, started again (empty) at {:.1} s, said role:master for {:.2} s more, holding up to {} key(s) meanwhile",
                seconds(failover.restarted),
                seconds(failover.stale_primary),
                failover.stale_keys
            );
            println!(
                "  errors inside the failover window: {errors_in} of {calls_in} calls ({:.1} %): {}",
                rate(errors_in, calls_in),
                codes(&codes_in)
            );
            let mut details: Vec<_> = inside_details.iter().collect();
            details.sort_by_key(|(_, count)| std::cmp::Reverse(**count));
            for ((code, detail), count) in details.iter().take(6) {
                println!("    {count:>5} x {code} {detail}");
            }
            let around: Vec<Duration> = outcomes
                .iter()
                .filter(|outcome| outcome.failure.is_some() && outcome.done >= failover.killed)
                .map(|outcome| outcome.done)
                .collect();
            match (around.iter().min(), around.iter().max()) {
                (Some(first), Some(last)) => println!(
                    "  error window: first error {:.2} s after the kill, last {:.2} s after it ({:.2} s; the replica took over {:.2} s after the kill)",
                    seconds(first.saturating_sub(failover.killed)),
                    seconds(last.saturating_sub(failover.killed)),
                    seconds(last.saturating_sub(*first)),
                    seconds(failover.took_over - failover.killed)
                ),
                _ => println!("  error window: no error after the kill"),
            }
        }

        let mut checks: Vec<(bool, String)> = vec![
            (
                growth < 0.20,
                format!(
                    "broker RSS grew {:+.1} % from {:.0} s to the end (under 20 %)",
                    growth * 100.0,
                    seconds(baseline.at)
                ),
            ),
            (
                errors_out == 0,
                format!("no error outside the failover window ({errors_out})"),
            ),
            (
                not_sent == 0,
                format!("every scheduled call was sent ({not_sent} not sent)"),
            ),
        ];
        println!(
            "  audit verify (after the broker stopped; all it said: target/load-audit-verify.txt): {}",
            verified.1
        );
        checks.push((
            verified.0,
            "`grant-broker audit verify`: nothing missing or altered but service events the broker said it could not log"
                .to_owned(),
        ));
        if failover_planned {
            checks.push((failover.is_some(), "the failover completed".to_owned()));
            let others: usize = codes_in
                .iter()
                .filter(|(code, _)| code.as_str() != "Unavailable")
                .map(|(_, count)| count)
                .sum();
            checks.push((
                others == 0,
                format!("every error in the failover window is UNAVAILABLE ({others} other)"),
            ));
        }
        println!();
        let mut passed = true;
        for (ok, what) in &checks {
            passed &= ok;
            println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
        }
        passed
    }
}
