//! How much the broker itself costs per request, and how much Redis one grant takes.
//!
//! `cargo bench --bench request_access` runs the real server over gRPC against a real
//! redis-server and a fake STS that answers at once, so the latency measured is the broker's
//! own overhead (authentication, validation, Cedar, three Redis scripts, the SDK call path).
//! Every loop is bounded in count and time, and all traffic stays on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/common/mod.rs"]
mod common;
#[path = "support/report.rs"]
mod report;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use grant_broker::{
    domain::{ActionPattern, ResourcePattern, Scope, Target, iam::Catalog, pattern},
    rules::{RuleEngine, RuleInput, RuleSource},
};
use report::report;

const MAX_REQUESTS: usize = 2_000;
const MAX_TIME: Duration = Duration::from_secs(30);

async fn request_access_latency(server: &Server, concurrency: usize) {
    let started = Instant::now();
    let per_task = MAX_REQUESTS / concurrency;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_task);
            for i in 0..per_task {
                if started.elapsed() > MAX_TIME {
                    break;
                }
                let request = read_logs_request(&format!("bench-{concurrency}-{task}-{i}"));
                let sent = Instant::now();
                let response = client
                    .request_access(authed(PORTAL_TOKEN, request))
                    .await
                    .unwrap()
                    .into_inner();
                samples.push(sent.elapsed());
                assert!(response.credentials.is_some());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    report(
        &format!("RequestAccess, approved + issued, {concurrency} in flight"),
        samples,
        started.elapsed(),
    );
}

/// Reading the grants just made back: pages of 100 (an auditor's search, every caller's) and
/// single grants. Each loop bounded in count and time.
async fn read_latency(server: &Server) {
    let mut client = server.client().await;
    let started = Instant::now();
    let mut pages = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let mut token = String::new();
        for _ in 0..40 {
            let sent = Instant::now();
            let page = client
                .list_grants(authed(
                    AUDITOR_TOKEN,
                    grant_broker::grpc::proto::ListGrantsRequest {
                        page_size: 100,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            pages.push(sent.elapsed());
            ids.extend(page.grants.into_iter().map(|grant| grant.id));
            token = page.next_page_token;
            if token.is_empty() || started.elapsed() > MAX_TIME {
                break;
            }
        }
    }
    report("ListGrants, pages of 100 (auditor)", pages, started.elapsed());
    let started = Instant::now();
    let mut gets = Vec::new();
    for id in ids.iter().take(MAX_REQUESTS) {
        let sent = Instant::now();
        client
            .get_grant(authed(
                PORTAL_TOKEN,
                grant_broker::grpc::proto::GetGrantRequest { id: id.clone() },
            ))
            .await
            .unwrap();
        gets.push(sent.elapsed());
        if started.elapsed() > MAX_TIME {
            break;
        }
    }
    report("GetGrant (its caller)", gets, started.elapsed());
}

async fn redis_bytes_per_grant(redis: &RedisServer) {
    let mut connection = redis.connection().await;
    let used = |info: String| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .map(|value| value.trim().parse().unwrap())
            .unwrap()
    };
    let grants: u64 = redis::cmd("XLEN")
        .arg("gb:grants")
        .query_async(&mut connection)
        .await
        .unwrap();
    // Where one grant's bytes go (MEMORY USAGE counts a key's own allocations; index and log
    // entries share their streams, so they are in the total below, not here).
    let newest: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
        .arg("gb:grants")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut connection)
        .await
        .unwrap();
    let id = uuid::Uuid::from_slice(&newest[0].1[1]).unwrap();
    let record: Vec<u8> = redis::cmd("GET")
        .arg(format!("gb:g:{{{id}}}"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut breakdown = vec![format!("record value {} bytes", record.len())];
    for key in [
        format!("gb:g:{{{id}}}"),
        "gb:caller:{vendor-portal}:request:bench-8-7-249".to_owned(),
    ] {
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        breakdown.push(format!("{key}: {usage:?}"));
    }
    println!("One grant: {}", breakdown.join(", "));
    let memory: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut connection).await.unwrap();
    let empty: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .unwrap();
    let per_grant = (used(memory) - used(empty)) / grants;
    println!(
        "Redis memory per approved grant (1 issuance, 3 events, request id, 7 index entries (caller, requester, grantee, target, account, all, live), access key, deadline, 3 audit log entries): {per_grant} bytes ({grants} grants)"
    );
}

fn pure_costs() {
    // First use parses the embedded catalog; nothing before this touches it.
    let started = Instant::now();
    let catalog = Catalog::builtin();
    println!("{:<44} {:?}", "IAM catalog parse (first use)", started.elapsed());
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules/approval.cedar")).unwrap();
    let engine = RuleEngine::load(&[RuleSource {
        name: "approval.cedar",
        text: &rules,
    }])
    .unwrap();
    let scopes = vec![Scope {
        actions: vec![
            ActionPattern::parse("s3:GetObject").unwrap(),
            ActionPattern::parse("s3:List*").unwrap(),
        ],
        resources: vec![ResourcePattern::parse("arn:aws:s3:::acme-logs/vendor-x/*").unwrap()],
    }];
    let target = Target {
        id: "dev-logs-read".into(),
        description: String::new(),
        environment: "staging".into(),
        account_id: "123456789012".into(),
        role_arn: "arn:aws:iam::123456789012:role/vendor-logs-read".into(),
        region: "eu-west-1".into(),
        external_id: None,
        max_duration_secs: 3600,
        mfa_required: false,
        session_tags: true,
        ceiling: scopes.clone(),
        allow_unknown_actions: false,
        revocation: grant_broker::domain::RevocationMode::Enforce,
        iam: grant_broker::domain::IamAccess::default(),
        identity: Default::default(),
    };
    let facts = catalog.facts(&scopes);
    let input = RuleInput {
        caller: "vendor-portal",
        requester: "alice@example.com",
        grantee: "vendor-x",
        target: &target,
        scopes: &scopes,
        facts: &facts,
        duration_secs: 1800,
        extension_secs: 0,
        justification: "bench",
        ticket: "INC-1",
        mfa_present: false,
        now: time::OffsetDateTime::now_utc(),
        start: time::OffsetDateTime::now_utc(),
        break_glass: false,
        identity: None,
        acting_caller: "vendor-portal",
    };
    // A narrow, a service-wide, an everything and a hostile request, to show what expansion
    // costs (the last makes pattern::matches run once per catalog action).
    let single_action_scopes: Vec<(&str, Vec<Scope>)> = ["s3:GetObject", "s3:*", "*", "*:*?*?*?*?*?*?e*"]
        .into_iter()
        .map(|action| {
            let actions = vec![ActionPattern::parse(action).unwrap()];
            (
                action,
                vec![Scope {
                    actions,
                    ..scopes[0].clone()
                }],
            )
        })
        .collect();
    let measure = |name: &str, iterations: u32, mut work: Box<dyn FnMut()>| {
        let started = Instant::now();
        for _ in 0..iterations {
            work();
        }
        println!("{name:<44} mean={:?}", started.elapsed() / iterations);
    };
    measure(
        "Cedar decision (request + auto_approve)",
        2_000,
        Box::new(|| drop(std::hint::black_box(engine.decide(&input)))),
    );
    for (action, scopes) in &single_action_scopes {
        measure(
            &format!("catalog facts + Cedar decision, {action}"),
            if action.starts_with('*') { 20 } else { 2_000 },
            Box::new(|| {
                let facts = catalog.facts(scopes);
                drop(std::hint::black_box(engine.decide(&RuleInput {
                    scopes,
                    facts: &facts,
                    ..input.clone()
                })));
            }),
        );
    }
    measure(
        "pattern containment, typical ARN",
        20_000,
        Box::new(|| {
            std::hint::black_box(pattern::is_contained(
                "arn:aws:s3:::acme-logs/vendor-x/*",
                "arn:aws:s3:::acme-logs/*",
            ));
        }),
    );
    let hostile = format!("arn:aws:s3:::acme-logs/*a{}", "?".repeat(15));
    measure(
        "pattern containment, hostile (*a + 15 ?)",
        200,
        Box::new(move || {
            std::hint::black_box(pattern::is_contained(&hostile, "arn:aws:s3:::acme-logs/*"));
        }),
    );
    measure(
        "pattern containment, many stars",
        200,
        Box::new(|| {
            std::hint::black_box(pattern::is_contained("*a*b*c*d*e*f*g*h*", "*a?b?c?d?e*"));
        }),
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; anything else (e.g. a name filter) is ignored.
    // GB_BENCH_TELEMETRY=1: as a deployment with telemetry on runs: logs at info (to stderr:
    // send it to /dev/null), and traces and metrics exported to a collector in this process.
    let _telemetry = if std::env::var_os("GB_BENCH_TELEMETRY").is_some() {
        let (collector, endpoint) = Collector::start().await;
        let telemetry = grant_broker::telemetry::init_with(grant_broker::telemetry::LogFormat::Json, &|name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone())
        })
        .unwrap();
        println!("telemetry on: logs at info, traces and metrics exported over OTLP");
        Some((collector, telemetry))
    } else {
        None
    };
    let redis = Arc::new(RedisServer::start());
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.redis_timeout_ms = 2_000;
    // First, before the server (which loads the catalog at start) parses it.
    pure_costs();
    let server = Server::start(&settings).await;

    request_access_latency(&server, 1).await;
    request_access_latency(&server, 8).await;
    read_latency(&server).await;
    redis_bytes_per_grant(&redis).await;
}
