//! The audit ledger at scale (issue 8, "Performance"): what a month of grants costs in Redis, and
//! how fast an auditor can search it.
//!
//! `cargo bench --bench audit_ledger` loads `GB_BENCH_GRANTS` grants (default 1,000,000) into a
//! real redis-server through the store's own operations, as the broker records them: `reserve`
//! and `create` with the `requested` event (approved at once), the `issuing` and `issued` appends
//! of one issuance, and for a grant whose window has ended the `expired` transition the expiry
//! sweep records. The grants are spread over the last 30 days (ids are UUIDv7 of their creation
//! time) across 2,000 requesters, 500 grantees, 50 targets in 20 accounts and 5 callers, and are
//! created one after the other in creation order, as the broker would have; their issuances and
//! expiries follow with 64 grants in flight. It then prints Redis memory per grant and, through
//! the real gRPC server (the auditor caller), the latency of ListGrants pages (by requester,
//! target, account, creation day, unfiltered), of ListAuditEvents pages and of
//! FindGrantByAccessKey. Every loop is bounded in count and time; all traffic stays on loopback.
//!
//! `GB_BENCH_GRANTS=20000 cargo bench --bench audit_ledger` is a quick run.
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
    adapters::redis_store::{RedisGrantStore, RedisSettings},
    config::Config,
    domain::{
        ActionPattern, CallerId, Decision, EventKind, Grant, GrantEvent, GrantId, GrantState, Issuance, Outcome,
        RequestId, ResourcePattern, Scope, lifecycle::Transition, limits, policy::build_session_policy,
    },
    grpc::proto,
    ports::{Appended, Change, GrantQueues, GrantRecords, Reservation},
};
use report::report;
use time::OffsetDateTime;
use tokio::task::JoinSet;

const DEFAULT_GRANTS: u64 = 1_000_000;
/// Grants being loaded at once.
const IN_FLIGHT: usize = 64;
/// Loading stops here, whatever is left.
const LOAD_LIMIT: Duration = Duration::from_secs(20 * 60);
const PROGRESS_EVERY: u64 = 100_000;
/// Each measurement stops here, whatever is left.
const MEASURE_LIMIT: Duration = Duration::from_secs(60);
const PAGE_SIZE: i32 = 100;
const GRANT_PAGES: usize = 20;
const AUDIT_PAGES: usize = 50;
const ACCESS_KEY_LOOKUPS: usize = 1_000;
/// Walks per ListGrants filter kind, each with another value of the filter (more samples).
const WALKS: u64 = 10;

const HISTORY_DAYS: i64 = 30;
const REQUESTERS: u64 = 2_000;
/// Service accounts among the requesters: few, and a fifth of all grants.
const BUSY_REQUESTERS: u64 = 20;
const GRANTEES: u64 = 500;
const TARGETS: u64 = 50;
/// Targets 0..10 draw half of all grants.
const POPULAR_TARGETS: u64 = 10;
const ACCOUNTS: u64 = 20;
/// The calling systems, how often each calls (out of 100), and whether it sends request ids.
const CALLERS: [(&str, u64, bool); 5] = [
    ("vendor-portal", 40, true),
    ("ci-pipeline", 25, true),
    ("ops-console", 15, true),
    ("chat-bot", 15, false),
    ("terraform-runner", 5, true),
];
/// Requested durations (seconds) and their weights (out of 100).
const DURATIONS: [(i64, u64); 7] = [
    (900, 15),
    (1_800, 15),
    (3_600, 30),
    (7_200, 15),
    (14_400, 12),
    (28_800, 8),
    (43_200, 5),
];
/// The expiry sweep's interval: an ended grant is recorded expired within it.
const SWEEP_SECS: u64 = 5;
const SEED: u64 = 0x6772_616e_7462_726b;

/// SplitMix64: small, fast, deterministic; every grant draws from its own stream.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index into `weights`, drawn by weight.
    fn weighted(&mut self, weights: impl Iterator<Item = u64> + Clone) -> usize {
        let total: u64 = weights.clone().sum();
        let mut pick = self.below(total);
        for (index, weight) in weights.enumerate() {
            if pick < weight {
                return index;
            }
            pick -= weight;
        }
        0
    }
}

/// SplitMix64's finalizer: a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Grant `n`'s access key id: `ASIA` and 16 uppercase letters and digits, unique (the low 64
/// bits are a bijection of `n`).
fn access_key_id(n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut value = (u128::from(mix(n ^ 0xA5A5) & 0xFFFF) << 64) | u128::from(mix(n.wrapping_add(SEED)));
    let mut digits = [b'0'; 16];
    for digit in digits.iter_mut().rev() {
        *digit = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    format!("ASIA{}", String::from_utf8_lossy(&digits))
}

fn requester(n: u64) -> String {
    if n < BUSY_REQUESTERS {
        format!("svc-deploy-{n:02}@example.com")
    } else {
        format!("user{n:04}@example.com")
    }
}

fn grantee(n: u64) -> String {
    format!("vendor-{n:03}")
}

/// A configured-looking target: id, account, role, region, longest session, scopes.
struct TargetShape {
    id: String,
    account_id: String,
    role_arn: String,
    region: &'static str,
    max_duration_secs: i64,
    kind: u64,
    environment: &'static str,
}

fn account_id(n: u64) -> String {
    format!("{:012}", 210_000_000_000 + n * 7_919_113)
}

fn target(n: u64) -> TargetShape {
    let environment = ["prod", "staging", "dev"][(n % 3) as usize];
    let kinds = ["logs-read", "orders-db-read", "ec2-ops", "app-logs"];
    let kind = n % 4;
    let account = account_id(n % ACCOUNTS);
    TargetShape {
        id: format!("{environment}-{}-{n:02}", kinds[kind as usize]),
        role_arn: format!("arn:aws:iam::{account}:role/broker-{}-{n:02}", kinds[kind as usize]),
        account_id: account,
        region: ["eu-west-1", "us-east-1", "us-west-2"][(n % 3) as usize],
        max_duration_secs: [3_600, 14_400, 43_200, 43_200, 28_800][(n % 5) as usize],
        kind,
        environment,
    }
}

fn scopes_for(target: &TargetShape, n: u64, grantee: &str) -> Vec<Scope> {
    let scope = |actions: &[&str], resources: &[String]| Scope {
        actions: actions.iter().map(|a| ActionPattern::parse(a).unwrap()).collect(),
        resources: resources.iter().map(|r| ResourcePattern::parse(r).unwrap()).collect(),
    };
    let (region, account, env) = (target.region, &target.account_id, target.environment);
    match target.kind {
        0 => vec![scope(
            &["s3:GetObject", "s3:ListBucket"],
            &[
                format!("arn:aws:s3:::acme-{env}-logs-{n:02}"),
                format!("arn:aws:s3:::acme-{env}-logs-{n:02}/{grantee}/*"),
            ],
        )],
        1 => vec![scope(
            &["dynamodb:GetItem", "dynamodb:Query"],
            &[format!("arn:aws:dynamodb:{region}:{account}:table/orders-{n:02}")],
        )],
        2 => vec![
            scope(&["ec2:Describe*"], &["*".to_owned()]),
            scope(
                &["ec2:RebootInstances"],
                &[format!("arn:aws:ec2:{region}:{account}:instance/*")],
            ),
        ],
        _ => vec![scope(
            &["logs:GetLogEvents", "logs:FilterLogEvents"],
            &[format!("arn:aws:logs:{region}:{account}:log-group:/app/{env}-{n:02}/*")],
        )],
    }
}

/// Everything about grant `n` and what the broker recorded for it, derived from `n` alone (so
/// the lookups can find it again without keeping it).
struct Planned {
    grant: Grant,
    request_id: Option<RequestId>,
    fingerprint: String,
    requested: GrantEvent,
    issuing: GrantEvent,
    issuance: Issuance,
    issued: GrantEvent,
    /// The sweep's record, for a grant whose window ended.
    expired: Option<GrantEvent>,
}

fn at_ms(at: OffsetDateTime, ms: u64) -> OffsetDateTime {
    at + time::Duration::milliseconds(i64::try_from(ms).unwrap())
}

/// When grant `n` of `count` was created: in the order of `n` (the order the broker records
/// grants in, which the indexes rely on), spread over the last [`HISTORY_DAYS`] with a daily
/// rhythm (about three times as many at 13:00 UTC as at 01:00).
fn created_at(n: u64, count: u64, now: OffsetDateTime, rng: &mut Rng) -> OffsetDateTime {
    const DAY: f64 = 86_400_000.0;
    const SWING: f64 = 0.5;
    let span = HISTORY_DAYS as f64 * DAY;
    let history_start = now - time::Duration::days(HISTORY_DAYS);
    let start_ms_of_day =
        (history_start - history_start.replace_time(time::Time::MIDNIGHT)).whole_milliseconds() as f64;
    let peak = 13.0 * 3_600_000.0 - start_ms_of_day;
    // x(f) = span f - c sin(...) is increasing (SWING < 1), its density highest where the cosine
    // is 1: at the peak hour.
    let f = (n as f64 + rng.unit()) / count as f64;
    let angle = std::f64::consts::TAU * (span * f - peak) / DAY;
    let x = span * f - SWING * DAY / std::f64::consts::TAU * angle.sin();
    history_start + time::Duration::milliseconds(x.clamp(0.0, span - 1.0) as i64)
}

fn plan(n: u64, count: u64, now: OffsetDateTime, pending_timeout: time::Duration) -> Planned {
    let mut rng = Rng::new(mix(n ^ SEED));
    let created_at = created_at(n, count, now, &mut rng);
    let (caller, _, sends_request_id) = CALLERS[rng.weighted(CALLERS.iter().map(|c| c.1))];
    let requester_n = if rng.below(5) == 0 {
        rng.below(BUSY_REQUESTERS)
    } else {
        BUSY_REQUESTERS + rng.below(REQUESTERS - BUSY_REQUESTERS)
    };
    // Most people work with the same vendor.
    let grantee_n = if rng.below(10) < 7 {
        requester_n * 7 % GRANTEES
    } else {
        rng.below(GRANTEES)
    };
    let target_n = if rng.below(2) == 0 {
        rng.below(POPULAR_TARGETS)
    } else {
        rng.below(TARGETS)
    };
    let target = target(target_n);
    let (requester, grantee) = (requester(requester_n), grantee(grantee_n));
    let duration_secs = DURATIONS[rng.weighted(DURATIONS.iter().map(|d| d.1))]
        .0
        .min(target.max_duration_secs);
    let (start, end) = (created_at, created_at + time::Duration::seconds(duration_secs));
    let scopes = scopes_for(&target, target_n, &grantee);
    let mut id_random = [0u8; 10];
    id_random[..8].copy_from_slice(&rng.next().to_le_bytes());
    id_random[8..].copy_from_slice(&rng.next().to_le_bytes()[..2]);
    let millis = u64::try_from(created_at.unix_timestamp_nanos() / 1_000_000).unwrap();
    let id = GrantId::from_uuid(uuid::Builder::from_unix_timestamp_millis(millis, &id_random).into_uuid());
    let ticket_n = rng.below(90_000) + 10_000;
    let ticket = if rng.below(3) == 0 {
        format!("CHG-{ticket_n}")
    } else {
        format!("INC-{ticket_n}")
    };
    let policy_ids = vec![format!("auto_approve_{}_{}", target.environment, target.kind)];
    let reason = format!(
        "auto-approved: {} access to {} within its ceiling",
        target.environment, target.id
    );
    // The request body's SHA-256, as `AccessRequest::fingerprint` gives it.
    let fingerprint = format!(
        "{:016x}{:016x}{:016x}{:016x}",
        rng.next(),
        rng.next(),
        rng.next(),
        rng.next()
    );
    let grant = Grant {
        id,
        state: GrantState::Approved,
        request_id: None,
        caller: CallerId::parse(caller).unwrap(),
        target: target.id.clone(),
        account_id: target.account_id.clone(),
        role_arn: target.role_arn.clone(),
        region: target.region.to_owned(),
        session_policy: build_session_policy(&scopes, end).unwrap(),
        scopes,
        justification: format!(
            "{ticket}: {grantee} investigates {} for {requester}",
            [
                "ingestion lag",
                "failed deploy",
                "billing discrepancy",
                "customer report"
            ][rng.below(4) as usize]
        ),
        ticket,
        mfa_serial: None,
        created_at,
        start,
        end,
        pending_until: created_at + pending_timeout,
        decision: Decision {
            outcome: Outcome::Approve,
            policy_ids: policy_ids.clone(),
            reason: reason.clone(),
            decided_at: created_at,
            approvals_required: Default::default(),
            break_glass: false,
        },
        approvals: Vec::new(),
        review: None,
        extensions: Vec::new(),
        revocation: None,
        enforcement: None,
        role_cutoff: None,
        issuances: Vec::new(),
        issuance_count: 0,
        session_roles: Default::default(),
        requester,
        grantee,
        requester_verified: None,
    };
    let request_id = sends_request_id.then(|| RequestId::parse(&format!("{caller}-{:016x}", rng.next())).unwrap());
    let grant = Grant {
        request_id: request_id.as_ref().map(|id| id.as_str().to_owned()),
        ..grant
    };
    let event = |at, kind| GrantEvent {
        at,
        caller: caller.to_owned(),
        kind,
        person: None,
    };
    let requested = event(
        created_at,
        EventKind::Requested {
            state: GrantState::Approved,
            outcome: Outcome::Approve,
            policy_ids,
            reason,
        },
    );
    // What `ApprovedGrant::session_spec` asks STS for: the time left, rounded up, clipped.
    let issuing_at = at_ms(created_at, 15 + rng.below(45));
    let left_ms = u64::try_from((end - issuing_at).whole_milliseconds()).unwrap_or(0);
    let session_secs = left_ms.div_ceil(1000).clamp(
        limits::MIN_DURATION_SECS,
        u64::try_from(target.max_duration_secs)
            .unwrap()
            .min(limits::MAX_DURATION_SECS),
    );
    let session_name = grant.session_name();
    let issuing = event(
        issuing_at,
        EventKind::Issuing {
            session_name: session_name.clone(),
            duration_secs: session_secs,
        },
    );
    let issued_at = at_ms(issuing_at, 120 + rng.below(480));
    let issuance = Issuance {
        access_key_id: access_key_id(n),
        assumed_role_arn: format!(
            "arn:aws:sts::{}:assumed-role/{}/{session_name}",
            grant.account_id,
            grant.role_arn.rsplit('/').next().unwrap()
        ),
        role_id: Some("AROABENCHROLE0000001".to_owned()),
        session_name: session_name.clone(),
        source_identity: limits::source_identity_for(&grant.requester).unwrap_or_else(|| "grant-broker".to_owned()),
        expiration: issued_at + time::Duration::seconds(i64::try_from(session_secs).unwrap()),
        issued_at,
        packed_policy_percent: Some(i32::try_from(3 + rng.below(20)).unwrap()),
    };
    let issued = event(
        issued_at,
        EventKind::Issued {
            session_name,
            access_key_id: issuance.access_key_id.clone(),
            expiration: issuance.expiration,
        },
    );
    let expired_at = at_ms(end, rng.below(SWEEP_SECS * 1000));
    let expired = (expired_at <= now).then(|| GrantEvent {
        at: expired_at,
        caller: "grant-broker".to_owned(),
        kind: EventKind::Expired {
            was: GrantState::Approved,
        },
        person: None,
    });
    Planned {
        grant,
        request_id,
        fingerprint,
        requested,
        issuing,
        issuance,
        issued,
        expired,
    }
}

fn failure(grant: &Grant, what: &str, error: &dyn std::fmt::Debug) -> String {
    format!("grant {}: {what}: {error:?}", grant.id)
}

/// Records a planned grant's request as the broker does: its caller's reservation, then the
/// grant with its `requested` event (and its index entries).
async fn create_one(store: &RedisGrantStore, planned: &Planned) -> Result<(), String> {
    let grant = &planned.grant;
    let reserved = store
        .reserve(
            &grant.caller,
            planned.request_id.as_ref(),
            &planned.fingerprint,
            grant.id,
            grant.created_at,
            grant.end.max(grant.pending_until + grant.duration()),
        )
        .await
        .map_err(|e| failure(grant, "reserve", &e))?;
    if reserved != Reservation::New {
        return Err(failure(grant, "reserve", &reserved));
    }
    match store.create(grant, std::slice::from_ref(&planned.requested)).await {
        Ok(true) => Ok(()),
        other => Err(failure(grant, "create", &other)),
    }
}

/// Records the rest of a created grant's life as the broker does: the `issuing` and `issued`
/// appends of one issuance, then, once its window has ended, the sweep's expiry.
async fn issue_one(store: &RedisGrantStore, planned: Planned, max_issuances: u32) -> Result<(), String> {
    let grant = &planned.grant;
    let issuing = Change::IssueAttempt {
        limit: max_issuances,
        event: &planned.issuing,
    };
    let issued = Change::Issued {
        issuance: &planned.issuance,
        event: &planned.issued,
    };
    for (what, change) in [("issuing", issuing), ("issued", issued)] {
        match store.change_if_state(grant, change).await {
            Ok(Appended::Yes) => {}
            other => return Err(failure(grant, what, &other)),
        }
    }
    if let Some(expired) = &planned.expired {
        let change = Change::Transition {
            transition: Transition::Expire,
            event: expired,
        };
        match store.change_if_state(grant, change).await {
            Ok(Appended::Yes) => {}
            other => return Err(failure(grant, "expire", &other)),
        }
        store
            .forget_deadline(grant.id)
            .await
            .map_err(|e| failure(grant, "forget_deadline", &e))?;
    }
    Ok(())
}

/// How the load stands.
struct Progress {
    started: Instant,
    deadline: Instant,
    count: u64,
    done: u64,
}

impl Progress {
    fn finished(&mut self, result: Result<Result<(), String>, tokio::task::JoinError>) {
        if let Err(error) = result.expect("a loading task panicked") {
            panic!("loading failed: {error}");
        }
        self.done += 1;
        if self.done.is_multiple_of(PROGRESS_EVERY) {
            let elapsed = self.started.elapsed();
            println!(
                "loaded {:>9} of {} grants in {elapsed:>8.1?} ({:.0} grants/s)",
                self.done,
                self.count,
                self.done as f64 / elapsed.as_secs_f64()
            );
        }
    }

    /// Waits for one task to finish, until the deadline; `false` when time ran out (or there was
    /// nothing to wait for).
    async fn join_one(&mut self, tasks: &mut JoinSet<Result<(), String>>) -> bool {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, tasks.join_next()).await {
            Ok(Some(result)) => {
                self.finished(result);
                true
            }
            Ok(None) | Err(_) => false,
        }
    }
}

/// Loads grants `0..count`; how many were loaded whole (fewer when the load ran out of time).
/// Grants are created one after the other, in creation order, as the broker records them (an
/// index entry older than the newest one of its index would take the time it is written); the
/// issuances and expiries, which touch no index, follow with [`IN_FLIGHT`] grants at once.
async fn load(
    store: &Arc<RedisGrantStore>,
    count: u64,
    now: OffsetDateTime,
    pending_timeout: time::Duration,
    max_issuances: u32,
) -> u64 {
    let started = Instant::now();
    let mut progress = Progress {
        started,
        deadline: started + LOAD_LIMIT,
        count,
        done: 0,
    };
    let mut tasks = JoinSet::new();
    let mut out_of_time = false;
    for n in 0..count {
        if Instant::now() >= progress.deadline {
            out_of_time = true;
            break;
        }
        let planned = plan(n, count, now, pending_timeout);
        if let Err(error) = create_one(store, &planned).await {
            panic!("loading failed: {error}");
        }
        while tasks.len() >= IN_FLIGHT {
            if !progress.join_one(&mut tasks).await {
                out_of_time = true;
                break;
            }
        }
        if out_of_time {
            break;
        }
        let store = Arc::clone(store);
        tasks.spawn(async move { issue_one(&store, planned, max_issuances).await });
    }
    // At most IN_FLIGHT turns: each finishes a task or stops.
    while !tasks.is_empty() && !out_of_time {
        out_of_time = !progress.join_one(&mut tasks).await;
    }
    if out_of_time {
        tasks.shutdown().await;
        println!(
            "loading aborted after {LOAD_LIMIT:?}: {} of {count} grants loaded whole; measuring with those",
            progress.done
        );
    }
    let elapsed = started.elapsed();
    println!(
        "{:<44} {} grants in {elapsed:.1?}: {:.0} grants/s (creation in order, then {IN_FLIGHT} in flight)",
        "load (reserve, create, issuing, issued, expire)",
        progress.done,
        progress.done as f64 / elapsed.as_secs_f64()
    );
    progress.done
}

async fn used_memory(redis: &RedisServer) -> u64 {
    let mut connection = redis.connection().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .map(|value| value.trim().parse().unwrap())
        .unwrap()
}

/// ListGrants pages of `filters` (one walk each, up to [`GRANT_PAGES`] pages), each page timed.
async fn list_grants_latency(client: &mut Client, name: &str, filters: Vec<proto::ListGrantsRequest>) {
    let started = Instant::now();
    let (mut samples, mut grants) = (Vec::new(), 0usize);
    'walks: for filter in filters {
        let mut page_token = String::new();
        let mut newest = (i64::MAX, i32::MAX);
        for _ in 0..GRANT_PAGES {
            if started.elapsed() > MEASURE_LIMIT {
                break 'walks;
            }
            let request = proto::ListGrantsRequest {
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
                ..filter.clone()
            };
            let sent = Instant::now();
            let page = client
                .list_grants(authed(AUDITOR_TOKEN, request))
                .await
                .unwrap()
                .into_inner();
            samples.push(sent.elapsed());
            grants += page.grants.len();
            // Newest first, across pages: the loaded history is ordered as the broker's would be.
            for grant in &page.grants {
                let created = grant.create_time.as_ref().map(|t| (t.seconds, t.nanos)).unwrap();
                assert!(created <= newest, "{name}: grant {} out of creation order", grant.id);
                newest = created;
            }
            page_token = page.next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
    }
    report(&format!("{name} ({grants} grants)"), samples, started.elapsed());
}

/// ListAuditEvents pages of one query, oldest first, up to [`AUDIT_PAGES`] pages.
async fn list_audit_latency(client: &mut Client, name: &str, query: proto::ListAuditEventsRequest) {
    let started = Instant::now();
    let (mut samples, mut events) = (Vec::new(), 0usize);
    let mut page_token = String::new();
    for _ in 0..AUDIT_PAGES {
        if started.elapsed() > MEASURE_LIMIT {
            break;
        }
        let request = proto::ListAuditEventsRequest {
            page_size: PAGE_SIZE,
            newest_first: false,
            page_token: page_token.clone(),
            ..query.clone()
        };
        let sent = Instant::now();
        let page = client
            .list_audit_events(authed(AUDITOR_TOKEN, request))
            .await
            .unwrap()
            .into_inner();
        samples.push(sent.elapsed());
        events += page.events.len();
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    report(&format!("{name} ({events} events)"), samples, started.elapsed());
}

/// FindGrantByAccessKey for random loaded keys, each answer checked against the plan.
async fn find_by_access_key_latency(
    client: &mut Client,
    (count, loaded): (u64, u64),
    now: OffsetDateTime,
    pending_timeout: time::Duration,
) {
    let started = Instant::now();
    let mut rng = Rng::new(SEED ^ 0xF1AD);
    let mut samples = Vec::with_capacity(ACCESS_KEY_LOOKUPS);
    // After an aborted load, the grants before the last IN_FLIGHT created are the ones surely
    // whole.
    let whole = if loaded == count {
        count
    } else {
        loaded.saturating_sub(IN_FLIGHT as u64).max(1)
    };
    for _ in 0..ACCESS_KEY_LOOKUPS {
        if started.elapsed() > MEASURE_LIMIT {
            break;
        }
        let n = rng.below(whole);
        let expected = plan(n, count, now, pending_timeout).grant.id.to_string();
        let request = proto::FindGrantByAccessKeyRequest {
            access_key_id: access_key_id(n),
        };
        let sent = Instant::now();
        let found = client
            .find_grant_by_access_key(authed(AUDITOR_TOKEN, request))
            .await
            .unwrap()
            .into_inner();
        samples.push(sent.elapsed());
        assert_eq!(found.grant.map(|grant| grant.id), Some(expected));
        assert_eq!(found.issuance.map(|i| i.access_key_id), Some(access_key_id(n)));
    }
    report("FindGrantByAccessKey, random loaded keys", samples, started.elapsed());
}

fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: 0,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; anything else (e.g. a name filter) is ignored.
    let count: u64 = std::env::var("GB_BENCH_GRANTS")
        .ok()
        .map(|text| text.trim().parse().expect("GB_BENCH_GRANTS must be a number of grants"))
        .unwrap_or(DEFAULT_GRANTS)
        .max(1);
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.redis_timeout_ms = 10_000;
    // The store the server will use (key prefix, retention), from the same configuration.
    let config = Config::parse_with_env(
        &config_text(&settings),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &|name| settings.env.get(name).cloned(),
    )
    .unwrap_or_else(|problems| panic!("bench config invalid: {problems:?}"));
    let redis_settings: RedisSettings = config.redis.clone();
    let (pending_timeout, max_issuances) = (config.broker.pending_timeout, config.broker.max_issuances_per_grant);
    let store = Arc::new(RedisGrantStore::new(&redis_settings).unwrap());
    store.ping().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = used_memory(&redis).await;

    let now = OffsetDateTime::now_utc();
    println!(
        "loading {count} grants over the last {HISTORY_DAYS} days: {REQUESTERS} requesters, {GRANTEES} grantees, \
         {TARGETS} targets in {ACCOUNTS} accounts, {} callers",
        CALLERS.len()
    );
    let load_started = OffsetDateTime::now_utc();
    let loaded = load(&store, count, now, pending_timeout, max_issuances).await;
    let load_finished = OffsetDateTime::now_utc();
    assert!(loaded > 0, "no grant was loaded");
    let after = used_memory(&redis).await;
    println!(
        "Redis memory per grant (1 issuance, 3-4 events and their audit log entries, 7 index entries, access key, request id): {} bytes \
         ({loaded} grants, {:.1} MiB in all)",
        after.saturating_sub(before) / loaded,
        after.saturating_sub(before) as f64 / 1_048_576.0
    );
    // A running broker's cleaning walk drops ended grants from the live index as they end; the
    // load ended most of a month at once. Walk it through once, as the walk would have.
    let cleaning = Instant::now();
    let mut dropped = 0;
    for _ in 0..=loaded / 1_000 + 1 {
        dropped += store.clean_live_index(1_000).await.unwrap();
        if cleaning.elapsed() > LOAD_LIMIT {
            break;
        }
    }
    println!(
        "{:<44} {dropped} ended grants dropped in {:.1?}",
        "live index walked through once",
        cleaning.elapsed()
    );
    drop(store);

    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    // One call first: the connection and the server's first Redis use are not what is measured.
    client
        .list_grants(authed(
            AUDITOR_TOKEN,
            proto::ListGrantsRequest {
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let mut rng = Rng::new(SEED ^ 0x5EA7C4);
    let filters = |make: &dyn Fn(u64) -> proto::ListGrantsRequest, values: Vec<u64>| {
        values.into_iter().map(make).collect::<Vec<_>>()
    };
    let busy: Vec<u64> = (0..WALKS).map(|walk| walk % BUSY_REQUESTERS).collect();
    let people: Vec<u64> = (0..WALKS)
        .map(|_| BUSY_REQUESTERS + rng.below(REQUESTERS - BUSY_REQUESTERS))
        .collect();
    // Two popular targets and eight others; every other account.
    let targets: Vec<u64> = (0..WALKS).map(|walk| walk * (TARGETS / WALKS)).collect();
    let accounts: Vec<u64> = (0..WALKS).map(|walk| walk * (ACCOUNTS / WALKS)).collect();
    let by_requester = |n: u64| proto::ListGrantsRequest {
        requester: requester(n),
        ..Default::default()
    };
    list_grants_latency(
        &mut client,
        "ListGrants, one requester (service account)",
        filters(&by_requester, busy),
    )
    .await;
    list_grants_latency(
        &mut client,
        "ListGrants, one requester (person)",
        filters(&by_requester, people),
    )
    .await;
    list_grants_latency(
        &mut client,
        "ListGrants, one target",
        filters(
            &|n: u64| proto::ListGrantsRequest {
                target: target(n).id,
                ..Default::default()
            },
            targets,
        ),
    )
    .await;
    list_grants_latency(
        &mut client,
        "ListGrants, one account",
        filters(
            &|n: u64| proto::ListGrantsRequest {
                account_id: account_id(n),
                ..Default::default()
            },
            accounts,
        ),
    )
    .await;
    let day = (now - time::Duration::days(10)).replace_time(time::Time::MIDNIGHT);
    list_grants_latency(
        &mut client,
        "ListGrants, created on one day, 10-19 days ago",
        filters(
            &|n: u64| proto::ListGrantsRequest {
                create_time_from: Some(timestamp(day - time::Duration::days(i64::try_from(n).unwrap()))),
                create_time_to: Some(timestamp(day - time::Duration::days(i64::try_from(n).unwrap() - 1))),
                ..Default::default()
            },
            (0..WALKS).collect(),
        ),
    )
    .await;
    list_grants_latency(
        &mut client,
        "ListGrants, live now",
        filters(
            &|_| proto::ListGrantsRequest {
                live: true,
                ..Default::default()
            },
            (0..WALKS).collect(),
        ),
    )
    .await;
    list_grants_latency(
        &mut client,
        "ListGrants, unfiltered",
        filters(&|_| proto::ListGrantsRequest::default(), (0..WALKS).collect()),
    )
    .await;

    // The log's time range is a range of cursors, which are when events were logged: a grant
    // loaded now logs its events now, whatever their own times say, so the log cannot hold a day
    // from the past. The load's window stands in for "a day": at this volume a day holds about
    // 130,000 events, read in the same pages of 100 this walk reads.
    let load_window = (
        Some(timestamp(load_started)),
        Some(timestamp(load_finished + time::Duration::seconds(1))),
    );
    list_audit_latency(
        &mut client,
        "ListAuditEvents, the load's window",
        proto::ListAuditEventsRequest {
            from_time: load_window.0,
            to_time: load_window.1,
            ..Default::default()
        },
    )
    .await;
    list_audit_latency(
        &mut client,
        "ListAuditEvents, the load's window, one target",
        proto::ListAuditEventsRequest {
            from_time: load_window.0,
            to_time: load_window.1,
            target: target(rng.below(TARGETS)).id,
            ..Default::default()
        },
    )
    .await;

    find_by_access_key_latency(&mut client, (count, loaded), now, pending_timeout).await;
    drop(server);
}
