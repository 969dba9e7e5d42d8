//! The Redis grant store on its own, against a real redis-server: what the gRPC tests cannot
//! reach without waiting for days to pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::RedisServer;
use grant_broker::{
    adapters::{RedisGrantStore, RedisSettings},
    domain::{
        ActionPattern, CallerId, Decision, EventKind, Grant, GrantEvent, GrantId, GrantState, Issuance, Outcome,
        RECENT_ISSUANCES, RequestId, ResourcePattern, Scope,
        approval::{Approval, ApprovalRequirement, Person},
        extension::{Extension, ExtensionState},
        lifecycle::Transition,
        policy::build_session_policy,
    },
    ports::{
        Appended, AuditLog, Change, ExtensionsChange, GrantIndex, GrantQueues, GrantRecords, GrantSearch, Reservation,
        StoreError,
    },
};
use proptest::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

/// A request fingerprint as the broker makes them: a SHA-256 in hex.
const FP: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn id_at(at: OffsetDateTime) -> GrantId {
    let secs = u64::try_from(at.unix_timestamp()).unwrap();
    GrantId::from_uuid(Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, 0)))
}

#[tokio::test]
async fn the_caller_index_forgets_grants_older_than_the_retention() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let caller = CallerId::parse("vendor-portal").unwrap();
    let day_one = OffsetDateTime::now_utc();
    let old = id_at(day_one);
    let recent = id_at(day_one + time::Duration::hours(20));
    let newest = id_at(day_one + time::Duration::days(40));
    for (id, now) in [(old, day_one), (recent, day_one + time::Duration::hours(20))] {
        let reservation = store
            .reserve(&caller, None, FP, id, now, now + time::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(reservation, Reservation::New);
    }
    // 40 days later, with one day of retention: both earlier entries are past it (a grant can
    // stay pending or approved for 38 days at most, and its record is kept a day longer).
    let later = day_one + time::Duration::days(40);
    let request_id = RequestId::parse("r-1").unwrap();
    store
        .reserve(
            &caller,
            Some(&request_id),
            FP,
            newest,
            later,
            later + time::Duration::hours(1),
        )
        .await
        .unwrap();
    let mut connection = redis.connection().await;
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("gb:caller:{vendor-portal}:grants")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let ids: Vec<GrantId> = entries
        .iter()
        .map(|(_, fields)| GrantId::from_uuid(Uuid::from_slice(&fields[1]).unwrap()))
        .collect();
    assert_eq!(ids, [newest]);

    // The request id is bound to the first grant that claimed it, with its fingerprint.
    let again = store
        .reserve(&caller, Some(&request_id), &"0".repeat(64), old, later, later)
        .await
        .unwrap();
    assert_eq!(
        again,
        Reservation::Existing {
            grant_id: newest,
            fingerprint: FP.into()
        }
    );

    // The broker's fingerprints (SHA-256, hex) are kept as their 32 bytes and read back as hex.
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let hashed = RequestId::parse("r-2").unwrap();
    for expected in [
        Reservation::New,
        Reservation::Existing {
            grant_id: old,
            fingerprint: digest.into(),
        },
    ] {
        let reservation = store
            .reserve(&caller, Some(&hashed), digest, old, later, later)
            .await
            .unwrap();
        assert_eq!(reservation, expected);
    }
    // Stored as exactly `<grant id, 16 bytes><SHA-256, 32 bytes>`; anything but a SHA-256 in
    // hex is refused before it is written.
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("gb:caller:{vendor-portal}:request:r-2")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        stored,
        [&old.as_uuid().as_bytes()[..], &hex::decode(digest).unwrap()].concat()
    );
    let refused = store
        .reserve(
            &caller,
            Some(&RequestId::parse("r-3").unwrap()),
            "fp",
            old,
            later,
            later,
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not a SHA-256"), "{refused}");
}

fn settings(redis: &RedisServer) -> RedisSettings {
    RedisSettings {
        topology: grant_broker::adapters::Topology::Server(redis.url()),
        username: None,
        password: None,
        key_prefix: "gb".into(),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        retention: Duration::from_secs(86_400),
        min_replicas: 0,
        replica_timeout: Duration::from_millis(100),
        tls: None,
        integrity: crate::common::integrity_keys(),
        checkpoint_interval: Duration::from_secs(1),
    }
}

/// A grant record exactly as the first release wrote it (no `v`, no `attempts`), holding a
/// policy variable that today's validation refuses: it must still read back.
pub(crate) fn sample_grant(id: GrantId, text: &str, issuances: usize) -> Grant {
    let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + time::Duration::nanoseconds(123_456_789);
    let end = start + time::Duration::hours(1);
    let scopes = vec![Scope {
        actions: vec![ActionPattern::parse("s3:GetObject").unwrap()],
        resources: vec![ResourcePattern::parse("arn:aws:s3:::acme-logs/*").unwrap()],
    }];
    Grant {
        id,
        state: GrantState::Approved,
        request_id: Some("r-1".into()),
        caller: CallerId::parse("vendor-portal").unwrap(),
        target: "dev-logs-read".into(),
        account_id: "123456789012".into(),
        role_arn: "arn:aws:iam::123456789012:role/r".into(),
        region: "eu-west-1".into(),
        requester: text.to_owned(),
        grantee: format!("{text}-grantee"),
        session_policy: build_session_policy(&scopes, end).unwrap(),
        scopes,
        justification: text.repeat(3),
        ticket: String::new(),
        mfa_serial: None,
        created_at: start,
        start,
        end,
        pending_until: end,
        decision: Decision {
            outcome: Outcome::Approve,
            policy_ids: vec!["a".into(), text.to_owned()],
            reason: text.to_owned(),
            decided_at: start,
            approvals_required: Default::default(),
            break_glass: false,
        },
        approvals: Vec::new(),
        review: None,
        issuances: (0..issuances)
            .map(|n| Issuance {
                access_key_id: format!("ASIA{n:016}"),
                session_name: format!("gb-{id}"),
                source_identity: "alice".into(),
                assumed_role_arn: format!("arn:aws:sts::123456789012:assumed-role/r/gb-{id}"),
                role_id: (n % 3 != 0).then(|| format!("AROAINCARNATION{}", n % 2)),
                expiration: end,
                issued_at: start + time::Duration::seconds(i64::try_from(n).unwrap()),
                packed_policy_percent: (n % 2 == 0).then_some(i32::try_from(n).unwrap()),
            })
            .collect(),
        issuance_count: 0,
        session_roles: Default::default(),
        extensions: vec![],
        revocation: None,
        enforcement: None,
        role_cutoff: None,
        requester_verified: None,
    }
}

/// `count` extensions: the last one waiting, the others approved or denied in turn.
pub(crate) fn sample_extensions(text: &str, count: usize) -> Vec<Extension> {
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_600).unwrap() + time::Duration::nanoseconds(987_654_321);
    (0..count)
        .map(|n| {
            let state = match (n + 1 == count, n % 2) {
                (true, _) => ExtensionState::Pending,
                (false, 0) => ExtensionState::Approved,
                (false, _) => ExtensionState::Denied,
            };
            Extension {
                number: u32::try_from(n + 1).unwrap(),
                request_id: (n % 2 == 0).then(|| format!("ext-{n}")),
                additional_secs: 600 * (u64::try_from(n).unwrap() + 1),
                justification: text.repeat(2),
                requested_at: at,
                caller: "vendor-portal".into(),
                decision: Decision {
                    outcome: Outcome::RequireApproval,
                    policy_ids: vec![text.to_owned()],
                    reason: format!("needs {text}"),
                    decided_at: at,
                    approvals_required: ApprovalRequirement::parse("security:1, team-leads:1").unwrap(),
                    break_glass: false,
                },
                state,
                approvals: (0..n)
                    .map(|k| Approval {
                        approver: Person::from_trusted(format!("{text}-{k}")),
                        groups: ["security".to_owned()].into(),
                        at,
                        comment: text.to_owned(),
                        caller: "approval-portal".into(),
                        verified: None,
                    })
                    .collect(),
                denied_by: (state == ExtensionState::Denied)
                    .then(|| (Person::from_trusted(text.to_owned()), text.to_owned())),
                new_end: (state == ExtensionState::Approved).then_some(at + time::Duration::hours(2)),
            }
        })
        .collect()
}

pub(crate) fn event() -> GrantEvent {
    GrantEvent {
        at: OffsetDateTime::now_utc(),
        caller: "vendor-portal".into(),
        kind: EventKind::IssueRefused { reason: "test".into() },
        person: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever a grant holds, and however many issuances it has (0, 1, 2 — the count that was
    /// once unreadable —, 3, ... past the number shown), it reads back as written: the most
    /// recent issuances and their total count.
    #[test]
    fn grants_round_trip_with_any_number_of_issuances(
        issuances in 0usize..=14,
        extensions in 0usize..=3,
        text in "\\PC{1,40}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // One server per case: a shared static one would outlive the test process.
            let redis = RedisServer::start();
            let store = RedisGrantStore::new(&settings(&redis)).unwrap();
            let id = GrantId::from_uuid(Uuid::now_v7());
            let mut written = sample_grant(id, &text, issuances);
            written.extensions = sample_extensions(&text, extensions);
            let mut creation = written.clone();
            creation.extensions.clear();
            creation.issuances.clear();
            assert!(store.create(&creation, &[event()]).await.unwrap());
            for issuance in &written.issuances {
                // An issuance is recorded with the event that announces it.
                let issued = GrantEvent {
                    at: issuance.issued_at,
                    caller: "vendor-portal".into(),
                    kind: EventKind::Issued {
                        session_name: issuance.session_name.clone(),
                        access_key_id: issuance.access_key_id.clone(),
                        expiration: issuance.expiration,
                    },
                    person: None,
                };
                let appended = store
                    .change_if_state(&written, Change::Issued { issuance, event: &issued })
                    .await
                    .unwrap();
                assert_eq!(appended, Appended::Yes);
            }
            if extensions > 0 {
                let events = [event()];
                let change = |before| Change::Extension {
                    transition: Transition::RequestExtension,
                    extensions: ExtensionsChange { before, after: &written.extensions },
                    window: None,
                    events: &events,
                };
                prop_assert_eq!(store.change_if_state(&written, change(&[])).await.unwrap(), Appended::Yes);
                // Written once: the same change again finds the extensions changed.
                prop_assert_eq!(
                    store.change_if_state(&written, change(&[])).await.unwrap(),
                    Appended::ExtensionsChanged
                );
            }
            let read = store.get(id).await.unwrap().unwrap();
            let mut expected = written.clone();
            expected.issuances = written.issuances[issuances.saturating_sub(RECENT_ISSUANCES)..].to_vec();
            expected.issuance_count = u64::try_from(issuances).unwrap();
            // Every issuance's RoleId, once; one STS did not name makes the role's current one count.
            let mut known: Vec<String> = written.issuances.iter().filter_map(|i| i.role_id.clone()).collect();
            known.sort();
            known.dedup();
            expected.session_roles = grant_broker::domain::SessionRoles {
                known,
                unreported: written.issuances.iter().any(|i| i.role_id.is_none()),
            };
            prop_assert_eq!(read, expected);
            Ok(())
        })?;
    }
}

/// Deadlines are written with the grant, read in time order, moved and forgotten.
#[tokio::test]
async fn deadlines_are_kept_beside_the_grants() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let early = sample_grant(GrantId::from_uuid(Uuid::now_v7()), "early", 0);
    let mut late = sample_grant(GrantId::from_uuid(Uuid::now_v7()), "late", 0);
    late.end += time::Duration::hours(1);
    late.session_policy = build_session_policy(&late.scopes, late.end).unwrap();
    for grant in [&late, &early] {
        assert!(store.create(grant, &[event()]).await.unwrap());
    }
    let before_both = early.end - time::Duration::seconds(1);
    assert!(store.due(before_both, 10).await.unwrap().is_empty());
    assert_eq!(
        store.due(late.end, 10).await.unwrap(),
        [early.id, late.id],
        "earliest first"
    );
    assert_eq!(store.due(late.end, 1).await.unwrap(), [early.id], "bounded");
    store
        .schedule_deadline(early.id, late.end + time::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(store.due(late.end, 10).await.unwrap(), [late.id], "moved later");
    store.forget_deadline(late.id).await.unwrap();
    assert!(store.due(late.end, 10).await.unwrap().is_empty());
}

/// Retention drops exactly the audit events logged before the horizon, and the oldest kept is
/// what a reader can resume from.
#[tokio::test]
async fn the_audit_log_is_trimmed_to_exactly_what_is_newer_than_the_horizon() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let mut connection = redis.connection().await;
    // Entries at chosen times, each naming the one event of a real grant.
    let id = GrantId::from_uuid(Uuid::now_v7());
    assert!(store.create(&sample_grant(id, "x", 0), &[event()]).await.unwrap());
    let _: i64 = redis::cmd("DEL")
        .arg("gb:{audit}:events")
        .query_async(&mut connection)
        .await
        .unwrap();
    for entry in ["1000-0", "1999-0", "1999-1", "2000-0", "2000-1", "3000-0"] {
        let _: String = redis::cmd("XADD")
            .arg("gb:{audit}:events")
            .arg(entry)
            .arg("g")
            .arg(id.as_uuid().as_bytes())
            .arg("n")
            .arg(0)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    let horizon = OffsetDateTime::from_unix_timestamp_nanos(2_000_000_000).unwrap();
    assert_eq!(store.trim_audit_log(horizon).await.unwrap(), 3);
    assert_eq!(store.oldest_audit_event().await.unwrap().unwrap().to_string(), "2000-0");
    let kept: Vec<String> = store
        .audit_events(None, None, false, 10, None)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|entry| entry.cursor.to_string())
        .collect();
    assert_eq!(kept, ["2000-0", "2000-1", "3000-0"]);
    assert_eq!(store.trim_audit_log(horizon).await.unwrap(), 0, "idempotent");
}

/// The live index holds grants created pending or approved; the cleaning walk drops those that
/// no longer are (here one cancelled, one whose window ended), a bounded stretch at a time and
/// from where the last walk stopped, and keeps the live one.
#[tokio::test]
async fn the_live_index_drops_grants_that_ended_as_it_is_walked() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut grants = Vec::new();
    for (n, ends_in) in [
        (0, time::Duration::hours(1)),
        (1, time::Duration::hours(1)),
        (2, -time::Duration::hours(1)),
    ] {
        let created = now - time::Duration::hours(2) + time::Duration::minutes(n);
        let mut grant = sample_grant(id_at(created), "x", 0);
        grant.created_at = created;
        grant.start = created;
        grant.end = now + ends_in;
        grant.pending_until = grant.end;
        assert!(store.create(&grant, &[event()]).await.unwrap());
        grants.push(grant);
    }
    let cancelled = [GrantEvent {
        at: now,
        caller: "vendor-portal".into(),
        kind: EventKind::Cancelled { reason: "done".into() },
        person: None,
    }];
    let change = Change::Transition {
        transition: Transition::Cancel,
        event: &cancelled[0],
    };
    assert_eq!(store.change_if_state(&grants[1], change).await.unwrap(), Appended::Yes);
    let mut connection = redis.connection().await;
    let live = || async {
        let len: u64 = redis::cmd("XLEN")
            .arg("gb:live")
            .query_async(&mut redis.connection().await)
            .await
            .unwrap();
        len
    };
    assert_eq!(live().await, 3);
    // Two entries a walk: the first pass sees the live grant and the cancelled one.
    assert_eq!(store.clean_live_index(2).await.unwrap(), 1);
    let walked: String = redis::cmd("GET")
        .arg("gb:live:walked")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!walked.is_empty());
    // The next goes on from there: the ended one, then the walk starts over.
    assert_eq!(store.clean_live_index(2).await.unwrap(), 1);
    let walked: Option<String> = redis::cmd("GET")
        .arg("gb:live:walked")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(walked, None);
    assert_eq!(live().await, 1);
    let page = store.list_index(&GrantIndex::Live, None, None, 10).await.unwrap();
    assert_eq!(
        page.grants.iter().map(|(_, grant)| grant.id).collect::<Vec<_>>(),
        [grants[0].id]
    );
    assert_eq!(store.clean_live_index(2).await.unwrap(), 0);
}

/// A follower's blocking reads of an idle log reuse one connection instead of opening one per
/// wait.
#[tokio::test]
async fn waits_on_an_idle_audit_log_reuse_their_connection() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let mut observer = redis.connection().await;
    let clients = |info: String| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .map(|value| value.trim().parse().unwrap())
            .unwrap()
    };
    let wait = Some(Duration::from_millis(50));
    let after = grant_broker::domain::audit::AuditCursor::parse("1-0").unwrap();
    store.audit_events(Some(&after), None, false, 10, wait).await.unwrap();
    let opened: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut observer)
        .await
        .unwrap();
    for _ in 0..3 {
        let read = store.audit_events(Some(&after), None, false, 10, wait).await.unwrap();
        assert!(read.entries.is_empty());
    }
    let later: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut observer)
        .await
        .unwrap();
    assert_eq!(clients(later), clients(opened), "no new connection per wait");
}

/// A caller's index entry is written with the request, before its grant is recorded: a reader
/// meeting it then skips it but keeps it; an entry whose grant never came is removed once it is
/// older than any creation can take.
#[tokio::test]
async fn an_index_entry_of_a_grant_being_created_is_kept_and_one_never_created_removed() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let caller = CallerId::parse("vendor-portal").unwrap();
    let now = OffsetDateTime::now_utc();
    let stale_at = now - time::Duration::minutes(5);
    let (stale, fresh) = (id_at(stale_at), id_at(now));
    for (id, at) in [(stale, stale_at), (fresh, now)] {
        store
            .reserve(&caller, None, FP, id, at, at + time::Duration::hours(1))
            .await
            .unwrap();
    }
    let mut connection = redis.connection().await;
    let entries = || async {
        let found: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg("gb:caller:{vendor-portal}:grants")
            .arg("-")
            .arg("+")
            .query_async(&mut redis.connection().await)
            .await
            .unwrap();
        found
            .iter()
            .map(|(_, fields)| GrantId::from_uuid(Uuid::from_slice(&fields[1]).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(entries().await, [stale, fresh]);
    let page = store
        .list_index(&GrantIndex::Caller(caller.clone()), None, None, 10)
        .await
        .unwrap();
    assert!(page.grants.is_empty());
    assert_eq!(entries().await, [fresh], "the stale entry removed, the fresh one kept");
    // Once recorded, the fresh one reads.
    let mut grant = sample_grant(fresh, "x", 0);
    grant.created_at = now;
    assert!(store.create(&grant, &[event()]).await.unwrap());
    let page = store
        .list_index(&GrantIndex::Caller(caller), None, None, 10)
        .await
        .unwrap();
    assert_eq!(
        page.grants.iter().map(|(_, grant)| grant.id).collect::<Vec<_>>(),
        [fresh]
    );
    let _: () = redis::cmd("PING").query_async(&mut connection).await.unwrap();
}

/// Where the golden records are: the exact bytes Redis holds for a grant of each shape.
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/records");

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap() + time::Duration::nanoseconds(5_000)
}

fn happened(seconds: i64, caller: &str, kind: EventKind) -> GrantEvent {
    GrantEvent {
        at: at(seconds),
        caller: caller.into(),
        kind,
        person: None,
    }
}

/// The record of every shape a grant can take, built through the store as the broker builds
/// them (creation, then one change script per step), compared byte for byte with the committed
/// golden record and read back field by field. A renumbered tag, a changed type or a header byte
/// moved fails here, whatever the code that encodes and decodes them agrees on.
/// `GB_WRITE_GOLDEN=1` writes the files instead (only for a deliberate, documented format change).
#[tokio::test]
async fn golden_records_of_every_shape_read_back_exactly() {
    use grant_broker::domain::{
        approval::Review,
        revocation::{Enforcement, EnforcementStatus, Revocation},
    };
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let write = std::env::var_os("GB_WRITE_GOLDEN").is_some();
    // A `requested` event names the requester as the request records them (stored once).
    let requested = |state| GrantEvent {
        person: Some(grant_broker::domain::identity::Attribution::asserted("golden")),
        ..happened(
            0,
            "vendor-portal",
            EventKind::Requested {
                state,
                outcome: Outcome::Approve,
                policy_ids: vec!["a".into()],
                reason: "fine".into(),
            },
        )
    };
    let approval = Approval {
        approver: Person::from_trusted("bob@example.com".to_owned()),
        groups: ["security".to_owned()].into(),
        at: at(60),
        comment: "ok".into(),
        caller: "approval-portal".into(),
        verified: None,
    };
    let revocation = Revocation {
        caller: "vendor-portal".into(),
        revoker: Some("carol@example.com".into()),
        at: at(120),
        reason: "offboarded".into(),
        operation: Some("op-1".into()),
        revoker_verified: None,
    };
    let enforced = Enforcement {
        status: EnforcementStatus::Enforced,
        at: at(121),
        error: None,
        cutoff: Some(at(119)),
    };
    let review = Review {
        reviewer: Person::from_trusted("dave@example.com".to_owned()),
        at: at(300),
        comment: "justified".into(),
        caller: "approval-portal".into(),
        verified: None,
    };
    for (n, name) in [
        "pending",
        "approved-0",
        "approved-1",
        "approved-2",
        "approved-3",
        "approved-12",
        "extended",
        "revoked",
        "break-glass-reviewed",
    ]
    .into_iter()
    .enumerate()
    {
        let id = GrantId::from_uuid(Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0000_0000_0000 + n as u128));
        let issued = match name.strip_prefix("approved-") {
            Some(count) => count.parse().unwrap(),
            None if name == "revoked" => 1,
            None => 0,
        };
        let mut grant = sample_grant(id, "golden", issued);
        let mut creation = grant.clone();
        creation.issuances.clear();
        let mut steps: Vec<(Vec<GrantEvent>, Grant)> = Vec::new();
        let mut events = vec![requested(grant.state)];
        match name {
            "pending" => {
                creation.state = GrantState::PendingApproval;
                creation.decision.outcome = Outcome::RequireApproval;
                creation.decision.approvals_required = ApprovalRequirement::parse("security:1, team-leads:1").unwrap();
                events = vec![requested(GrantState::PendingApproval)];
                grant = creation.clone();
                grant.approvals = vec![approval.clone()];
                let recorded = happened(
                    60,
                    "approval-portal",
                    EventKind::ApprovalRecorded {
                        approver: "bob@example.com".into(),
                        groups: vec!["security".into()],
                        comment: "ok".into(),
                        extension: None,
                    },
                );
                steps.push((vec![recorded], grant.clone()));
            }
            "break-glass-reviewed" => {
                creation.decision.break_glass = true;
                grant = creation.clone();
                grant.review = Some(review.clone());
                let reviewed = happened(
                    300,
                    "approval-portal",
                    EventKind::Reviewed {
                        reviewer: "dave@example.com".into(),
                        comment: "justified".into(),
                    },
                );
                steps.push((vec![reviewed], grant.clone()));
            }
            _ => {}
        }
        assert!(store.create(&creation, &events).await.unwrap(), "{name}");
        for (step_events, _) in &steps {
            let change = if name == "pending" {
                Change::Approval {
                    transition: Transition::RecordApproval,
                    approvals_before: 0,
                    approval: &approval,
                    window: None,
                    events: step_events,
                }
            } else {
                Change::Review {
                    review: &review,
                    event: &step_events[0],
                }
            };
            assert_eq!(
                store.change_if_state(&grant, change).await.unwrap(),
                Appended::Yes,
                "{name}"
            );
            events.extend(step_events.iter().cloned());
        }
        for issuance in &grant.issuances {
            // As the broker issues: the STS call announced (one attempt), then its credentials.
            let issuing = GrantEvent {
                at: issuance.issued_at,
                caller: "vendor-portal".into(),
                kind: EventKind::Issuing {
                    session_name: issuance.session_name.clone(),
                    duration_secs: 3600,
                },
                person: None,
            };
            let issued = GrantEvent {
                at: issuance.issued_at,
                caller: "vendor-portal".into(),
                kind: EventKind::Issued {
                    session_name: issuance.session_name.clone(),
                    access_key_id: issuance.access_key_id.clone(),
                    expiration: issuance.expiration,
                },
                person: None,
            };
            for change in [
                Change::IssueAttempt {
                    limit: 100,
                    event: &issuing,
                },
                Change::Issued {
                    issuance,
                    event: &issued,
                },
            ] {
                assert_eq!(
                    store.change_if_state(&grant, change).await.unwrap(),
                    Appended::Yes,
                    "{name}"
                );
            }
            events.extend([issuing, issued]);
        }
        if name == "extended" {
            grant.extensions = sample_extensions("golden", 2);
            let asked = [happened(
                200,
                "vendor-portal",
                EventKind::ExtensionRequested {
                    extension: 2,
                    additional_secs: 1200,
                    justification: "more".into(),
                    outcome: Outcome::RequireApproval,
                    policy_ids: vec!["ext".into()],
                    reason: "needs people".into(),
                },
            )];
            let change = Change::Extension {
                transition: Transition::RequestExtension,
                extensions: ExtensionsChange {
                    before: &[],
                    after: &grant.extensions,
                },
                window: None,
                events: &asked,
            };
            assert_eq!(store.change_if_state(&grant, change).await.unwrap(), Appended::Yes);
            events.extend(asked);
        }
        if name == "revoked" {
            let revoked = [happened(
                120,
                "vendor-portal",
                EventKind::Revoked {
                    revoker: Some("carol@example.com".into()),
                    reason: "offboarded".into(),
                    operation: Some("op-1".into()),
                    enforcement: EnforcementStatus::Pending,
                },
            )];
            let pending = Enforcement {
                status: EnforcementStatus::Pending,
                at: at(120),
                error: None,
                cutoff: None,
            };
            let change = Change::Revoke {
                revocation: &revocation,
                enforcement: &pending,
                event: &revoked[0],
            };
            assert_eq!(store.change_if_state(&grant, change).await.unwrap(), Appended::Yes);
            events.extend(revoked);
            let changed = [happened(
                121,
                "grant-broker",
                EventKind::EnforcementChanged {
                    status: EnforcementStatus::Enforced,
                    error: None,
                    cutoff: Some(at(119)),
                },
            )];
            let change = Change::Enforcement {
                enforcement: &enforced,
                event: &changed[0],
            };
            assert_eq!(store.change_if_state(&grant, change).await.unwrap(), Appended::Yes);
            events.extend(changed);
            grant.state = GrantState::Revoked;
            grant.revocation = Some(revocation.clone());
            grant.enforcement = Some(enforced.clone());
        }

        let stored: Vec<u8> = redis::cmd("GET")
            .arg(format!("gb:g:{{{id}}}"))
            .query_async(&mut redis.connection().await)
            .await
            .unwrap();
        let path = format!("{GOLDEN}/{name}.bin");
        if write {
            std::fs::create_dir_all(GOLDEN).unwrap();
            std::fs::write(&path, &stored).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        assert!(
            stored == golden,
            "{name}: the record's bytes changed (a storage format change): \n got {}\nwant {}",
            hex::encode(&stored),
            hex::encode(&golden)
        );

        // The committed bytes, written back as they are, read as the grant they record.
        let _: () = redis::cmd("SET")
            .arg(format!("gb:g:{{{id}}}"))
            .arg(&golden)
            .query_async(&mut redis.connection().await)
            .await
            .unwrap();
        let read = store.get(id).await.unwrap().unwrap();
        let mut expected = grant.clone();
        expected.issuances = grant.issuances[grant.issuances.len().saturating_sub(RECENT_ISSUANCES)..].to_vec();
        expected.issuance_count = u64::try_from(grant.issuances.len()).unwrap();
        let mut known: Vec<String> = grant.issuances.iter().filter_map(|i| i.role_id.clone()).collect();
        known.sort();
        known.dedup();
        expected.session_roles = grant_broker::domain::SessionRoles {
            known,
            unreported: grant.issuances.iter().any(|i| i.role_id.is_none()),
        };
        assert_eq!(read, expected, "{name}");
        assert_eq!(store.events_from(id, 0).await.unwrap(), events, "{name}");
    }
}

/// Someone who can write to Redis changes a record by hand, each way docs/storage.md lists: the
/// state byte, the attempts, the approvals, the extensions tag, the event count, the reviewed
/// flag, the scopes together with their policy digest, the end, the caller, a frame cut out or
/// the last one cut off, or another grant's record copied over it. Every read refuses it as
/// tampered (counted), and no change is written on it by a broker that reads it. A broker that
/// verified the record before and writes a change from that revision is refused whenever the
/// header or the length changed; an edit inside a frame that keeps its length is written on
/// (decided on the revision that verified, so nothing is decided on the edit) and the record
/// still reads as tampered. The bytes the broker wrote read again once restored.
#[tokio::test]
async fn a_record_changed_outside_the_broker_is_refused_and_nothing_is_written_on_it() {
    let redis = RedisServer::start();
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    let id = GrantId::from_uuid(Uuid::now_v7());
    let grant = sample_grant(id, "tamper", 0);
    let key = format!("gb:g:{{{id}}}");
    assert!(store.create(&grant, &[event()]).await.unwrap());
    let appended = event();
    let attempt = Change::IssueAttempt {
        limit: 100,
        event: &appended,
    };
    assert_eq!(store.change_if_state(&grant, attempt).await.unwrap(), Appended::Yes);
    let other_id = GrantId::from_uuid(Uuid::now_v7());
    assert!(
        store
            .create(&sample_grant(other_id, "tamper", 0), &[event()])
            .await
            .unwrap()
    );
    let mut connection = redis.connection().await;
    let read = |key: String| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Vec<u8>>(&mut connection)
                .await
                .unwrap()
        }
    };
    let original = read(key.clone()).await;
    let other = read(format!("gb:g:{{{other_id}}}")).await;
    // Header at 0-10 (docs/storage.md), tag at 11-26, then frames: key id, length, segment.
    assert_eq!(original[..11], [4, 2, 0, 1, 0, 0, 0, 0, 0, 2, 0]);
    let (mut first_frame_len, mut at) = (0usize, 28);
    loop {
        first_frame_len |= usize::from(original[at] & 0x7f) << (7 * (at - 28));
        at += 1;
        if original[at - 1] < 0x80 {
            break;
        }
    }
    let second_frame = at + first_frame_len;
    assert!(second_frame < original.len(), "two frames");
    let find = |needle: &[u8]| {
        original
            .windows(needle.len())
            .position(|window| window == needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the record"))
    };
    let scope_at = find(b"acme-logs");
    let caller_at = find(b"vendor-portal");

    type Tamper = Box<dyn Fn(&mut Vec<u8>)>;
    // Edits inside a frame that keep the record's length.
    let within_a_frame = [
        "a scope widened, its policy digest with it",
        "the caller",
        "a frame's key id",
        "another grant's record copied over it",
    ];
    let set = |offset: usize, bytes: &'static [u8]| -> Tamper {
        Box::new(move |record: &mut Vec<u8>| record[offset..offset + bytes.len()].copy_from_slice(bytes))
    };
    let tamperings: Vec<(&str, Tamper)> = vec![
        ("the state byte (approved to pending)", set(1, &[1])),
        ("the attempts reset", set(2, &[0, 0])),
        ("an approval added", set(4, &[1])),
        ("the extensions tag", set(5, &[1, 1, 0])),
        ("the event count", set(8, &[0, 1])),
        ("the reviewed flag", set(10, &[1])),
        (
            "a scope widened, its policy digest with it",
            Box::new(move |record: &mut Vec<u8>| record[scope_at..scope_at + 9].copy_from_slice(b"acme-prod")),
        ),
        (
            "the caller",
            Box::new(move |record: &mut Vec<u8>| record[caller_at..caller_at + 6].copy_from_slice(b"rogue-")),
        ),
        (
            "the last frame cut off, header restored to before it",
            Box::new(move |record: &mut Vec<u8>| {
                record.truncate(second_frame);
                record[2..4].copy_from_slice(&[0, 0]);
                record[8..10].copy_from_slice(&[0, 1]);
            }),
        ),
        (
            "the first frame cut out",
            Box::new(move |record: &mut Vec<u8>| drop(record.drain(27..second_frame))),
        ),
        ("a frame's key id", Box::new(move |record: &mut Vec<u8>| record[27] = 2)),
        (
            "another grant's record copied over it",
            Box::new(move |record: &mut Vec<u8>| *record = other.clone()),
        ),
    ];
    let write = |bytes: Vec<u8>| {
        let mut connection = connection.clone();
        let key = key.clone();
        async move {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(bytes)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    };
    for (what, tamper) in &tamperings {
        // A broker that verified the record (its revision is the original).
        let store = RedisGrantStore::new(&settings(&redis)).unwrap();
        assert_eq!(store.get(id).await.unwrap().unwrap().state, GrantState::Approved);
        let mut bytes = original.clone();
        tamper(&mut bytes);
        assert_ne!(bytes, original, "{what}");
        write(bytes.clone()).await;
        // The change script sees the record is not that revision and answers with it, which
        // fails its seal.
        let refused = store.change_if_state(&grant, attempt).await;
        let mut seen = 1;
        if within_a_frame.contains(what) && matches!(refused, Ok(Appended::Yes)) {
            bytes = read(key.clone()).await;
            seen = 0;
        } else {
            assert!(
                matches!(&refused, Err(StoreError::Tampered { grant_id, .. }) if *grant_id == id),
                "{what}: {refused:?}"
            );
            assert_eq!(read(key.clone()).await, bytes, "{what}: nothing written on it");
        }
        // A read refuses it, and so does a change by a broker that never saw the record.
        assert!(
            matches!(store.get(id).await, Err(StoreError::Tampered { grant_id, .. }) if grant_id == id),
            "{what}"
        );
        let fresh = RedisGrantStore::new(&settings(&redis)).unwrap();
        assert!(
            matches!(
                fresh.change_if_state(&grant, attempt).await,
                Err(StoreError::Tampered { .. })
            ),
            "{what}"
        );
        assert_eq!(read(key.clone()).await, bytes, "{what}: nothing written on it");
        assert_eq!(store.tampered_records_seen(), seen + 1, "{what}: counted");
        assert_eq!(fresh.tampered_records_seen(), 1, "{what}: counted");
        // Restored, the broker's bytes read again (for a broker that did not see a longer
        // version: to one that did, the original is a rollback).
        write(original.clone()).await;
        let after = RedisGrantStore::new(&settings(&redis)).unwrap();
        assert_eq!(
            after.get(id).await.unwrap().unwrap().state,
            GrantState::Approved,
            "{what}"
        );
        if seen == 0 {
            let rolled_back = store.get(id).await;
            assert!(
                matches!(&rolled_back, Err(StoreError::Tampered { what, .. }) if what.contains("rolled back")),
                "{rolled_back:?}"
            );
        }
    }
    // Restored, the record takes changes again.
    let store = RedisGrantStore::new(&settings(&redis)).unwrap();
    assert_eq!(store.change_if_state(&grant, attempt).await.unwrap(), Appended::Yes);
    let _: () = redis::cmd("PING").query_async(&mut connection).await.unwrap();
}

/// Two changes sealed onto the same revision by two brokers: the second finds the record moved
/// on, verifies it as it is, decides again on it and lands after the first (or is refused by
/// what the first changed), so the chain stays whole.
#[tokio::test]
async fn brokers_changing_one_grant_at_once_keep_its_seal_whole() {
    let redis = RedisServer::start();
    let stores: Vec<RedisGrantStore> = (0..3)
        .map(|_| RedisGrantStore::new(&settings(&redis)).unwrap())
        .collect();
    let id = GrantId::from_uuid(Uuid::now_v7());
    let grant = sample_grant(id, "race", 0);
    assert!(stores[0].create(&grant, &[event()]).await.unwrap());
    for store in &stores {
        store.get(id).await.unwrap().unwrap();
    }
    let appended = event();
    let attempt = Change::IssueAttempt {
        limit: 20,
        event: &appended,
    };
    // 3 brokers x 10 attempts against a limit of 20: exactly 20 land.
    let grant = &grant;
    let results = futures_util::future::join_all(
        stores
            .iter()
            .flat_map(|store| (0..10).map(move |_| store.change_if_state(grant, attempt))),
    )
    .await;
    let landed = results
        .iter()
        .filter(|result| matches!(result, Ok(Appended::Yes)))
        .count();
    let refused = results
        .iter()
        .filter(|result| matches!(result, Ok(Appended::LimitReached(20))))
        .count();
    assert_eq!((landed, refused), (20, 10), "{results:?}");
    let events = RedisGrantStore::new(&settings(&redis))
        .unwrap()
        .events_from(id, 0)
        .await
        .unwrap();
    assert_eq!(events.len(), 21);
}

/// Keys rotate: a broker with a new sealing key reads what the old one sealed and continues it
/// under the new key; once the old key is dropped, what it sealed reads as tampered (so it must
/// stay listed for the retention).
#[tokio::test]
async fn integrity_keys_rotate_without_losing_what_the_old_key_sealed() {
    use grant_broker::adapters::redis_store::seal::IntegrityKeys;
    let redis = RedisServer::start();
    let (old, new) = (vec![1; 32], vec![2; 32]);
    let with = |keys: Vec<(u8, Vec<u8>)>, sealing: u8| {
        RedisGrantStore::new(&RedisSettings {
            integrity: IntegrityKeys::new(keys, Some(sealing)).unwrap(),
            ..settings(&redis)
        })
        .unwrap()
    };
    let before = with(vec![(1, old.clone())], 1);
    let id = GrantId::from_uuid(Uuid::now_v7());
    let grant = sample_grant(id, "rotate", 0);
    assert!(before.create(&grant, &[event()]).await.unwrap());
    let appended = event();
    let attempt = Change::IssueAttempt {
        limit: 10,
        event: &appended,
    };
    assert_eq!(before.change_if_state(&grant, attempt).await.unwrap(), Appended::Yes);

    // Both keys, sealing with the new one: the old record reads, and a change is sealed with key 2.
    let rotated = with(vec![(1, old.clone()), (2, new.clone())], 2);
    assert_eq!(rotated.events_from(id, 0).await.unwrap().len(), 2);
    assert_eq!(rotated.change_if_state(&grant, attempt).await.unwrap(), Appended::Yes);
    let record: Vec<u8> = redis::cmd("GET")
        .arg(format!("gb:g:{{{id}}}"))
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(record[27], 1, "the first frame stays sealed with key 1");
    assert_eq!(
        record[record.len() - appended_frame_len(&record)],
        2,
        "the new frame with key 2"
    );
    // The broker that holds only key 1 cannot vouch for the frame key 2 sealed.
    let refused = before.get(id).await.map(|_| ()).unwrap_err().to_string();
    assert!(refused.contains("sealed with key 2"), "{refused}");
    // A new grant is sealed with key 2 alone, so a broker with only key 2 reads it...
    let fresh = GrantId::from_uuid(Uuid::now_v7());
    assert!(
        rotated
            .create(&sample_grant(fresh, "rotate", 0), &[event()])
            .await
            .unwrap()
    );
    let only_new = with(vec![(2, new)], 2);
    assert!(only_new.get(fresh).await.unwrap().is_some());
    // ...but not one whose frames key 1 sealed.
    let refused = only_new.get(id).await;
    assert!(
        matches!(&refused, Err(StoreError::Tampered { what, .. }) if what.contains("sealed with key 1, which is not among the configured integrity keys")),
        "{refused:?}"
    );
}

/// The length of a record's last frame: walks the frames (key id, varint length, segment).
fn appended_frame_len(record: &[u8]) -> usize {
    let mut at = 27;
    let mut last = 0;
    while at < record.len() {
        let start = at;
        at += 1;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = record[at];
            at += 1;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                break;
            }
        }
        at += len;
        last = at - start;
    }
    last
}

/// Brokers come and go mid-chain: each writes under its own writer id, checkpoints continue
/// from whatever the last broker left in Redis, and the log verifies whole.
#[tokio::test]
async fn the_audit_log_verifies_across_broker_restarts() {
    let redis = RedisServer::start();
    let now = OffsetDateTime::now_utc;
    for round in 0..3 {
        let store = RedisGrantStore::new(&settings(&redis)).unwrap();
        for _ in 0..3 {
            let id = GrantId::from_uuid(Uuid::now_v7());
            let grant = sample_grant(id, "restart", 0);
            assert!(store.create(&grant, &[event()]).await.unwrap());
            let appended = event();
            let note = Change::Note { event: &appended };
            assert_eq!(store.change_if_state(&grant, note).await.unwrap(), Appended::Yes);
        }
        assert!(
            store.checkpoint_audit_log(Duration::ZERO, now()).await.unwrap(),
            "round {round}"
        );
        // One broker stops here; the next starts with a new writer id.
    }
    let verification = RedisGrantStore::new(&settings(&redis))
        .unwrap()
        .verify_audit_log(None, now())
        .await
        .unwrap();
    assert_eq!(verification.problems, [], "{verification:?}");
    assert_eq!(verification.checkpoints, 3);
    assert_eq!(verification.entries, 3 * 6 + 3);
    assert_eq!(verification.records, 9);
    assert_eq!(verification.before_first_checkpoint, 6);
}
