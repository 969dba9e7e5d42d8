//! The use cases against in-memory ports and a clock the test moves: the decisions the broker
//! makes around issuance, tested in milliseconds and without waiting for time to pass. The
//! integration tests (tests/) run the same use cases against real Redis, STS and gRPC.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
};

use time::{Duration, OffsetDateTime, macros::datetime};

use super::*;
use crate::{
    domain::{
        ActionPattern, CallerId, RECENT_ISSUANCES, RequestId, ResourcePattern, Scope,
        access::{Powers, Relay},
        policy::build_session_policy,
    },
    rules::RuleSource,
    testing::*,
};

const EXAMPLE_RULES: &str = include_str!("../../deploy/rules/approval.cedar");

fn target() -> Target {
    Target {
        id: "dev-logs-read".into(),
        description: String::new(),
        environment: "staging".into(),
        account_id: "123456789012".into(),
        role_arn: "arn:aws:iam::123456789012:role/vendor-logs-read".into(),
        region: "eu-west-1".into(),
        external_id: None,
        max_duration_secs: 3600,
        mfa_required: false,
        session_tags: false,
        ceiling: vec![Scope {
            actions: vec![crate::domain::ActionPattern::parse("s3:Get*").unwrap()],
            resources: vec![crate::domain::ResourcePattern::parse("arn:aws:s3:::acme-logs/*").unwrap()],
        }],
        allow_unknown_actions: false,
        revocation: crate::domain::RevocationMode::Enforce,
        iam: crate::domain::IamAccess::default(),
        identity: Default::default(),
    }
}

struct Setup {
    store: MemoryStore,
    issuer: FakeIssuer,
    iam: FakeIam,
    notices: Notices,
    clock: ManualClock,
}

impl Setup {
    fn new() -> Self {
        Self {
            store: MemoryStore::default(),
            issuer: FakeIssuer::default(),
            iam: FakeIam::default(),
            notices: Notices::default(),
            clock: ManualClock(Arc::new(Mutex::new(datetime!(2026-11-25 14:00 UTC)))),
        }
    }

    /// A broker over this setup's store, issuer and clock, with the example rules plus `extra`.
    fn broker(&self, extra: &str, target: Target, max_issuances_per_grant: u32) -> Broker<Fakes> {
        let settings = BrokerSettings {
            max_issuances_per_grant,
            approver_groups: [(Person::from_trusted("bob".into()), ["security".to_owned()].into())].into(),
            ..BrokerSettings::default()
        };
        self.broker_with(extra, target, settings)
    }

    fn broker_with(&self, extra: &str, target: Target, settings: BrokerSettings) -> Broker<Fakes> {
        let rules = RuleEngine::load(&[
            RuleSource {
                name: "approval.cedar",
                text: EXAMPLE_RULES,
            },
            RuleSource {
                name: "extra.cedar",
                text: extra,
            },
        ])
        .unwrap();
        let adapters = Adapters {
            store: self.store.clone(),
            issuer: self.issuer.clone(),
            enforcer: self.iam.clone(),
            notifier: self.notices.clone(),
            clock: self.clock.clone(),
        };
        Broker::new(adapters, rules, vec![target], settings)
    }
}

fn caller() -> Caller {
    Caller {
        id: CallerId::parse("vendor-portal").unwrap(),
        targets: ["dev-logs-read".to_owned()].into(),
        powers: Default::default(),
        assert_people: true,
        identity: Default::default(),
        limits: Default::default(),
        call_token: None,
    }
}

fn request(request_id: &str) -> AccessRequest {
    AccessRequest {
        request_id: Some(RequestId::parse(request_id).unwrap()),
        target: "dev-logs-read".into(),
        scopes: vec![Scope {
            actions: vec![ActionPattern::parse("s3:GetObject").unwrap()],
            resources: vec![ResourcePattern::parse("arn:aws:s3:::acme-logs/x/*").unwrap()],
        }],
        duration_secs: 1800,
        start: None,
        break_glass: false,
        justification: String::new(),
        ticket: String::new(),
        requester: "alice@example.com".into(),
        grantee: "vendor-x".into(),
        mfa: None,
    }
}

#[tokio::test]
async fn retries_issue_until_the_cap_and_reads_stay_bounded() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 12);
    for n in 1..=12u64 {
        let outcome = broker.request_access(&caller(), request("r")).await.unwrap();
        assert!(outcome.credentials.is_some());
        assert_eq!(outcome.grant.issuance_count, n);
        assert_eq!(
            outcome.grant.issuances.len(),
            usize::try_from(n).unwrap().min(RECENT_ISSUANCES)
        );
    }
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(
        matches!(
            error,
            BrokerError::IssuanceLimitReached {
                attempts: 12,
                limit: 12,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 12);
}

#[tokio::test]
async fn failed_sts_calls_count_against_the_cap_too() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 2);
    // The fake STS throttles: each failure opens the target's circuit, so the next call waits
    // it out (a call the circuit holds back is no attempt).
    setup.issuer.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
        assert!(matches!(error, BrokerError::StsThrottled { .. }), "{error:?}");
        let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
        assert!(
            matches!(error, BrokerError::StsThrottled { .. }),
            "held back: {error:?}"
        );
        setup.clock.advance(Duration::seconds(31));
    }
    setup.issuer.failing.store(false, Ordering::SeqCst);
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(matches!(error, BrokerError::IssuanceLimitReached { .. }), "{error:?}");
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 2, "the cap bounds STS calls");
}

#[tokio::test]
async fn a_retry_after_the_window_ends_issues_nothing() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    broker.request_access(&caller(), request("r")).await.unwrap();
    setup.clock.advance(Duration::minutes(30));
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(
        matches!(
            error,
            BrokerError::NotIssuable {
                state: GrantState::Expired,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sessions_last_only_what_is_left_of_the_window() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let first = broker.request_access(&caller(), request("r")).await.unwrap();
    let first_expiry = first.credentials.unwrap().expiration;
    setup.clock.advance(Duration::minutes(20));
    let second = broker.request_access(&caller(), request("r")).await.unwrap();
    // 10 minutes are left, but STS issues at least 15: the policy's time condition ends it.
    let issued = setup.store.issuing_durations(first.grant.id);
    assert_eq!(issued, [1800, 900]);
    assert!(second.credentials.unwrap().expiration < first_expiry + Duration::minutes(20));
}

#[tokio::test]
async fn a_target_moved_to_another_role_refuses_retries() {
    let setup = Setup::new();
    setup
        .broker("", target(), 10)
        .request_access(&caller(), request("r"))
        .await
        .unwrap();
    let mut moved = target();
    moved.role_arn = "arn:aws:iam::123456789012:role/other".into();
    let error = setup
        .broker("", moved, 10)
        .request_access(&caller(), request("r"))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::TargetChanged { .. }), "{error:?}");
}

#[tokio::test]
async fn an_edited_record_issues_nothing_and_says_so_in_the_audit_trail() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let grant = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    // Widened in one field, kept consistent in another: both refused.
    setup.store.edit(grant.id, |g| {
        g.session_policy = g.session_policy.replace("acme-logs/x/*", "*")
    });
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(matches!(error, BrokerError::RecordInconsistent { .. }), "{error:?}");
    setup.store.edit(grant.id, |g| {
        g.end += Duration::days(3);
        g.session_policy = build_session_policy(&g.scopes, g.end).unwrap();
    });
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(matches!(error, BrokerError::RecordInconsistent { .. }), "{error:?}");
    let refused = setup
        .store
        .events(grant.id)
        .iter()
        .filter(|event| matches!(event.kind, EventKind::IssueRefused { .. }))
        .count();
    assert_eq!(refused, 2);
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_rules_are_asked_again_at_every_issuance() {
    let setup = Setup::new();
    let office_hours = r#"@id("office-hours") @reason("only during office hours")
        forbid (principal, action == GrantBroker::Action::"request", resource)
        when { context.hour_utc < 8 || context.hour_utc >= 18 };"#;
    setup.clock.advance(Duration::minutes(3 * 60 + 50)); // 17:50
    let broker = setup.broker(office_hours, target(), 10);
    broker.request_access(&caller(), request("r")).await.unwrap();

    // 18:05, the grant's window still open: the same rule now says no.
    setup.clock.advance(Duration::minutes(15));
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    match error {
        BrokerError::RulesRefuseIssuance { policy_ids, reason, .. } => {
            assert_eq!(policy_ids, ["office-hours"]);
            assert!(reason.contains("only during office hours"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // A rule that withdraws automatic approval stops an automatically approved grant.
    let manual = setup.broker(
        r#"@id("humans-only") forbid (principal, action == GrantBroker::Action::"auto_approve", resource);"#,
        target(),
        10,
    );
    setup.clock.advance(Duration::minutes(-10)); // 17:55
    let error = manual.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(
        matches!(&error, BrokerError::RulesRefuseIssuance { reason, .. } if reason.contains("no longer approve it automatically")),
        "{error:?}"
    );
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn credentials_whose_issuance_cannot_be_recorded_are_dropped() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    setup.store.0.lock().unwrap().fail_issuance_write = true;
    let error = broker.request_access(&caller(), request("r")).await.unwrap_err();
    assert!(matches!(error, BrokerError::CredentialsNotRecorded { .. }), "{error:?}");
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 1, "STS did mint them");
    let grant = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    assert_eq!(grant.issuance_count, 1, "only the recorded one counts as issued");
    let discarded = setup
        .store
        .events(grant.id)
        .iter()
        .filter(|event| matches!(event.kind, EventKind::IssueDiscarded { .. }))
        .count();
    assert_eq!(discarded, 1);
}

/// Nothing is approved automatically: every request waits for a person.
const HUMANS_ONLY: &str =
    r#"@id("humans-only") forbid (principal, action == GrantBroker::Action::"auto_approve", resource);"#;

fn approval_portal() -> Caller {
    approval_portal_of("vendor-portal")
}

/// Announcing is the broker's own step: each change announces its events once it has landed,
/// with the state it led to; a retry that records nothing and a refused change announce nothing;
/// service events are announced as they are logged.
#[tokio::test]
async fn every_recorded_change_is_announced_once_and_a_refused_one_never() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let id = broker.request_access(&caller(), request("r")).await.unwrap().grant.id;
    broker.request_access(&caller(), request("r")).await.unwrap();
    broker
        .approve_grant(&approval_portal(), id, bob(), String::new())
        .await
        .unwrap();
    broker.issue_credentials(&caller(), id, None).await.unwrap();
    broker.revoke_grant(&caller(), id, None, "done".into()).await.unwrap();
    let refused = broker.cancel_grant(&caller(), id, "late".into()).await.unwrap_err();
    assert!(
        matches!(refused, BrokerError::TransitionNotAllowed { .. }),
        "{refused:?}"
    );
    broker.log_rules_loaded().await.unwrap();
    assert_eq!(
        setup.notices.take(),
        [
            format!("{id}: requested (pending_approval)"),
            format!("{id}: approval_recorded (approved)"),
            format!("{id}: approved (approved)"),
            format!("{id}: issuing (approved)"),
            format!("{id}: issued (approved)"),
            format!("{id}: revoked (revoked)"),
            // The deny written within the revocation, recorded on the grant.
            format!("{id}: enforcement_changed (revoked)"),
            "rules_loaded".to_owned(),
        ]
    );
}

/// A change that landed on the primary but not on enough replicas is in the trail, so it is
/// announced; the caller still hears that the store is not available.
#[tokio::test]
async fn a_change_too_few_replicas_acknowledged_is_still_announced() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let id = broker.request_access(&caller(), request("r")).await.unwrap().grant.id;
    setup.notices.take();
    setup.store.0.lock().unwrap().unacknowledged_next = true;
    let error = broker
        .cancel_grant(&caller(), id, "no longer needed".into())
        .await
        .unwrap_err();
    assert!(
        matches!(error, BrokerError::Store(StoreError::Unacknowledged(_))),
        "{error:?}"
    );
    assert_eq!(setup.notices.take(), [format!("{id}: cancelled (cancelled)")]);
    assert_eq!(setup.store.read(id).unwrap().state, GrantState::Cancelled);
}

#[tokio::test]
async fn a_request_approved_hours_later_gets_its_whole_duration() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let pending = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    assert_eq!(pending.state, GrantState::PendingApproval);
    assert_eq!(pending.pending_until, pending.created_at + Duration::hours(24));

    // Five hours later, long after the requested 30 minutes would have ended.
    setup.clock.advance(Duration::hours(5));
    let approved = broker
        .approve_grant(
            &approval_portal(),
            pending.id,
            Person::from_trusted("bob".into()),
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!(approved.state, GrantState::Approved);
    assert_eq!(approved.start, setup.clock.now());
    assert_eq!(approved.end, setup.clock.now() + Duration::minutes(30));
    let issued = broker.issue_credentials(&caller(), pending.id, None).await.unwrap();
    assert!(issued.credentials.is_some());
    let durations = setup.store.issuing_durations(pending.id);
    assert_eq!(durations, [1800]);

    // And it ends 30 minutes after the approval, not after the request.
    setup.clock.advance(Duration::minutes(31));
    let error = broker.issue_credentials(&caller(), pending.id, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            BrokerError::NotIssuable {
                state: GrantState::Expired,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_request_nobody_approves_in_time_expires() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let pending = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    setup.clock.advance(Duration::hours(23));
    assert_eq!(
        broker.get_grant(&caller(), pending.id).await.unwrap().state,
        GrantState::PendingApproval
    );
    setup.clock.advance(Duration::hours(1));
    assert_eq!(
        broker.get_grant(&caller(), pending.id).await.unwrap().state,
        GrantState::Expired
    );
    let error = broker
        .approve_grant(
            &approval_portal(),
            pending.id,
            Person::from_trusted("bob".into()),
            String::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BrokerError::TransitionNotAllowed { refused, .. } if refused.state == GrantState::Expired),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_watcher_of_a_grant_that_expires_gets_one_message_for_it_and_the_end() {
    let setup = Setup::new();
    let broker = Arc::new(setup.broker(HUMANS_ONLY, target(), 10));
    let pending = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let mut watch = Arc::clone(&broker)
        .watch_grant(&caller(), pending.id, None)
        .await
        .unwrap();
    let first = watch.recv().await.unwrap().unwrap();
    assert_eq!((first.event.is_none(), first.cursor), (true, 1));
    // The watcher waits; the window ends and a sweep records the expiry.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    setup.clock.advance(Duration::hours(25));
    assert_eq!(broker.expire_due().await.unwrap(), 1);
    let expired = tokio::time::timeout(std::time::Duration::from_secs(5), watch.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(expired.event.map(|event| event.kind.name()), Some("expired"));
    assert_eq!((expired.grant.state, expired.cursor), (GrantState::Expired, 2));
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), watch.recv())
        .await
        .unwrap();
    assert!(end.is_none(), "one message per change, then the end: {end:?}");
}

fn scheduled(request_id: &str, start: OffsetDateTime) -> AccessRequest {
    let mut request = request(request_id);
    request.start = Some(start);
    request
}

#[tokio::test]
async fn scheduled_access_opens_at_its_start_with_its_whole_duration() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let start = setup.clock.now() + Duration::hours(2);
    // Approved at once, but nothing is issued before the window opens.
    let outcome = broker.request_access(&caller(), scheduled("s", start)).await.unwrap();
    assert!(outcome.credentials.is_none());
    let grant = outcome.grant;
    let grant_id = grant.id;
    assert_eq!(
        (grant.state, grant.start, grant.end),
        (GrantState::Approved, start, start + Duration::minutes(30))
    );
    let error = broker.issue_credentials(&caller(), grant_id, None).await.unwrap_err();
    assert!(
        matches!(error, BrokerError::NotStarted { start: at, .. } if at == start),
        "{error:?}"
    );
    assert_eq!(setup.issuer.calls.load(Ordering::SeqCst), 0);

    setup.clock.advance(Duration::hours(2));
    let issued = broker.issue_credentials(&caller(), grant_id, None).await.unwrap();
    assert!(issued.credentials.is_some());
    let durations = setup.store.issuing_durations(grant_id);
    assert_eq!(durations, [1800]);
}

#[tokio::test]
async fn a_scheduled_request_waits_no_longer_than_its_window_and_starts_on_time_when_approved_early() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let start = setup.clock.now() + Duration::hours(3);
    let pending = broker
        .request_access(&caller(), scheduled("s", start))
        .await
        .unwrap()
        .grant;
    assert_eq!(
        pending.pending_until,
        start + Duration::minutes(30),
        "not the default 24 hours"
    );
    setup.clock.advance(Duration::hours(1));
    let approved = broker
        .approve_grant(
            &approval_portal(),
            pending.id,
            Person::from_trusted("bob".into()),
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!((approved.start, approved.end), (start, start + Duration::minutes(30)));
}

#[tokio::test]
async fn schedules_in_the_past_or_too_far_ahead_are_refused() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let now = setup.clock.now();
    for start in [now - Duration::minutes(5), now + Duration::days(31)] {
        let error = broker
            .request_access(&caller(), scheduled("s", start))
            .await
            .unwrap_err();
        match error {
            BrokerError::InvalidRequest(violations) => assert_eq!(violations[0].field, "start_time"),
            other => panic!("{other:?}"),
        }
    }
    // Thirty seconds of clock skew are forgiven: the window starts now.
    let outcome = broker
        .request_access(&caller(), scheduled("skew", now - Duration::seconds(30)))
        .await
        .unwrap();
    assert_eq!(outcome.grant.start, now);
}

#[tokio::test]
async fn the_rules_see_a_schedule() {
    let setup = Setup::new();
    let broker = setup.broker(
        r#"@id("no-unattended-schedules") forbid (principal, action == GrantBroker::Action::"auto_approve", resource)
           when { context.scheduled && context.starts_in_seconds > 3600 };"#,
        target(),
        10,
    );
    let soon = broker
        .request_access(&caller(), scheduled("soon", setup.clock.now() + Duration::minutes(30)))
        .await
        .unwrap()
        .grant;
    assert_eq!(soon.state, GrantState::Approved, "approved, not yet open");
    let later = broker
        .request_access(&caller(), scheduled("later", setup.clock.now() + Duration::hours(5)))
        .await
        .unwrap()
        .grant;
    assert_eq!(later.state, GrantState::PendingApproval);
    assert!(
        later
            .decision
            .policy_ids
            .contains(&"no-unattended-schedules".to_owned())
    );
}

#[tokio::test]
async fn expiries_are_recorded_once_whoever_sweeps() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let other_replica = setup.broker("", target(), 10);
    let approved = broker.request_access(&caller(), request("a")).await.unwrap().grant;
    let humans = setup.broker(HUMANS_ONLY, target(), 10);
    let pending = humans.request_access(&caller(), request("p")).await.unwrap().grant;

    assert_eq!(broker.expire_due().await.unwrap(), 0, "nothing is due yet");
    // The approved window (30 minutes) ends; the pending request (24 hours) is not due.
    setup.clock.advance(Duration::minutes(31));
    assert_eq!(broker.expire_due().await.unwrap(), 1);
    assert_eq!(other_replica.expire_due().await.unwrap(), 0, "recorded once");
    let expired: Vec<_> = setup
        .store
        .events(approved.id)
        .into_iter()
        .filter(|event| {
            matches!(
                event.kind,
                EventKind::Expired {
                    was: GrantState::Approved
                }
            )
        })
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        setup.store.0.lock().unwrap().grants[&approved.id].0.state,
        GrantState::Expired
    );

    setup.clock.advance(Duration::hours(24));
    assert_eq!(other_replica.expire_due().await.unwrap(), 1);
    let last = setup.store.events(pending.id).pop().unwrap();
    assert!(
        matches!(
            last.kind,
            EventKind::Expired {
                was: GrantState::PendingApproval
            }
        ),
        "{last:?}"
    );
    assert!(setup.store.0.lock().unwrap().deadlines.is_empty());
}

#[tokio::test]
async fn an_approval_moves_the_deadline_and_a_lost_move_is_repaired() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let pending = broker.request_access(&caller(), request("p")).await.unwrap().grant;
    // Approved ten minutes before the request would have timed out: the window (30 minutes)
    // reaches twenty minutes past the pending deadline.
    setup.clock.advance(Duration::hours(23) + Duration::minutes(50));
    broker
        .approve_grant(
            &approval_portal(),
            pending.id,
            Person::from_trusted("bob".into()),
            String::new(),
        )
        .await
        .unwrap();
    // Past the old (pending) deadline, inside the new window: nothing expires.
    setup.clock.advance(Duration::minutes(15));
    assert_eq!(broker.expire_due().await.unwrap(), 0);
    assert_eq!(
        broker.get_grant(&caller(), pending.id).await.unwrap().state,
        GrantState::Approved
    );

    // Had the deadline not moved, the sweep puts it right instead of expiring the grant.
    setup
        .store
        .0
        .lock()
        .unwrap()
        .deadlines
        .insert(pending.id, setup.clock.now() - Duration::hours(1));
    assert_eq!(broker.expire_due().await.unwrap(), 0);
    setup.clock.advance(Duration::minutes(30));
    assert_eq!(broker.expire_due().await.unwrap(), 1);
}

// Extensions. The example rules permit `extend` up to 8 hours in all, with one approval outside
// production; the read-only auto_approve rule approves one at once while the total stays within
// an hour.

fn long_target() -> Target {
    Target {
        max_duration_secs: 4 * 3600,
        ..target()
    }
}

fn more_time(seconds: u64, request_id: &str) -> crate::domain::extension::ExtensionRequest {
    crate::domain::extension::ExtensionRequest {
        additional_secs: seconds,
        justification: "the migration overran".into(),
        request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
    }
}

fn bob() -> Person {
    Person::from_trusted("bob".into())
}

fn extension_events(store: &MemoryStore, id: GrantId) -> Vec<&'static str> {
    store
        .events(id)
        .iter()
        .map(|event| event.kind.name())
        .filter(|name| name.contains("exten") || *name == "approval_recorded")
        .collect()
}

#[tokio::test]
async fn an_extension_the_rules_approve_moves_the_end_and_the_policy_at_once() {
    use crate::domain::extension::ExtensionState;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    setup.clock.advance(Duration::minutes(20));
    let extended = broker
        .extend_grant(&caller(), granted.id, more_time(1200, ""))
        .await
        .unwrap();
    assert_eq!(extended.state, GrantState::Approved);
    assert_eq!(extended.end, granted.end + Duration::minutes(20));
    assert_eq!(extended.extensions.len(), 1);
    assert_eq!(extended.extensions[0].state, ExtensionState::Approved);
    assert_eq!(extended.extensions[0].new_end, Some(extended.end));
    assert!(
        extended.extensions[0]
            .decision
            .policy_ids
            .contains(&"auto-approve-nonprod-read-only".to_owned()),
        "{:?}",
        extended.extensions[0].decision
    );
    assert_eq!(
        extended.session_policy,
        build_session_policy(&extended.scopes, extended.end).unwrap()
    );
    assert_eq!(
        extension_events(&setup.store, granted.id),
        ["extension_requested", "extended"]
    );

    // Past the old end, inside the new one: issuance works, clipped to the new end, and the
    // rules asked again about the request as decided still approve it automatically.
    setup.clock.advance(Duration::minutes(15));
    let issued = broker.issue_credentials(&caller(), granted.id, None).await.unwrap();
    assert!(issued.credentials.is_some());
    assert_eq!(setup.store.issuing_durations(granted.id), [1800, 900]);
    // The sweep expires it at the new end, not the old one.
    assert_eq!(broker.expire_due().await.unwrap(), 0);
    setup.clock.advance(Duration::minutes(15));
    assert_eq!(broker.expire_due().await.unwrap(), 1);
}

#[tokio::test]
async fn an_extension_never_takes_a_grant_past_its_targets_maximum() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let error = broker
        .extend_grant(&caller(), granted.id, more_time(1801, ""))
        .await
        .unwrap_err();
    let BrokerError::InvalidRequest(violations) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(violations[0].field, "additional_duration");
    assert!(
        violations[0].description.contains("at most 1800s can be added"),
        "{}",
        violations[0].description
    );
    // Exactly up to the maximum is fine; then nothing is left.
    broker
        .extend_grant(&caller(), granted.id, more_time(1800, ""))
        .await
        .unwrap();
    let error = broker
        .extend_grant(&caller(), granted.id, more_time(60, ""))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::InvalidRequest(_)), "{error:?}");
    assert_eq!(
        broker.get_grant(&caller(), granted.id).await.unwrap().duration(),
        Duration::hours(1)
    );
}

#[tokio::test]
async fn an_extension_that_waits_moves_nothing_until_approved_and_is_decided_once() {
    use crate::domain::extension::ExtensionState;
    let setup = Setup::new();
    let broker = setup.broker("", long_target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    // 30 minutes + 1 hour is past what the rules approve automatically.
    let waiting = broker
        .extend_grant(&caller(), granted.id, more_time(3600, "ext-1"))
        .await
        .unwrap();
    assert_eq!(waiting.end, granted.end);
    assert_eq!(waiting.pending_extension().map(|e| e.number), Some(1));

    // Asking again with the same id changes nothing; another request waits its turn.
    let again = broker
        .extend_grant(&caller(), granted.id, more_time(3600, "ext-1"))
        .await
        .unwrap();
    assert_eq!(again.extensions, waiting.extensions);
    let reused = broker
        .extend_grant(&caller(), granted.id, more_time(600, "ext-1"))
        .await
        .unwrap_err();
    assert!(matches!(reused, BrokerError::RequestIdReused { .. }), "{reused:?}");
    let second = broker
        .extend_grant(&caller(), granted.id, more_time(600, "ext-2"))
        .await
        .unwrap_err();
    assert!(
        matches!(second, BrokerError::ExtensionWaiting { number: 1, .. }),
        "{second:?}"
    );

    // The requester cannot approve their own extension.
    let own = broker
        .approve_grant(
            &approval_portal(),
            granted.id,
            Person::from_trusted("alice@example.com".into()),
            String::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(own, BrokerError::SelfApproval { .. }), "{own:?}");

    // The grant keeps working on its old window meanwhile.
    setup.clock.advance(Duration::minutes(10));
    broker.issue_credentials(&caller(), granted.id, None).await.unwrap();

    let approved = broker
        .approve_grant(&approval_portal(), granted.id, bob(), "ok".into())
        .await
        .unwrap();
    assert_eq!(approved.end, granted.end + Duration::hours(1));
    assert_eq!(approved.extensions[0].state, ExtensionState::Approved);
    assert_eq!(approved.extensions[0].approvals.len(), 1);
    assert_eq!(
        extension_events(&setup.store, granted.id),
        ["extension_requested", "approval_recorded", "extended"]
    );
    // Approving again answers with the grant as it is; nothing moves twice.
    let twice = broker
        .approve_grant(&approval_portal(), granted.id, bob(), "ok".into())
        .await
        .unwrap();
    assert_eq!(twice.end, approved.end);
    assert_eq!(twice.extensions, approved.extensions);
    assert_eq!(broker.get_grant(&caller(), granted.id).await.unwrap().end, approved.end);
    assert_eq!(
        extension_events(&setup.store, granted.id),
        ["extension_requested", "approval_recorded", "extended"]
    );

    // An hour past the old end the grant still issues: the rules are asked about the request as
    // decided (30 minutes, approved at once), not about its extended total.
    setup.clock.advance(Duration::minutes(50));
    let issued = broker.issue_credentials(&caller(), granted.id, None).await.unwrap();
    assert!(issued.credentials.is_some());
}

#[tokio::test]
async fn a_denied_extension_leaves_the_grant_as_it_was() {
    use crate::domain::extension::ExtensionState;
    let setup = Setup::new();
    let broker = setup.broker("", long_target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    broker
        .extend_grant(&caller(), granted.id, more_time(3600, ""))
        .await
        .unwrap();
    let denied = broker
        .deny_grant(&approval_portal(), granted.id, bob(), "not today".into())
        .await
        .unwrap();
    assert_eq!(denied.state, GrantState::Approved);
    assert_eq!(denied.end, granted.end);
    assert_eq!(denied.extensions[0].state, ExtensionState::Denied);
    assert_eq!(denied.extensions[0].denied_by, Some((bob(), "not today".to_owned())));
    // Another may be asked for now.
    let next = broker
        .extend_grant(&caller(), granted.id, more_time(3600, ""))
        .await
        .unwrap();
    assert_eq!(next.pending_extension().map(|e| e.number), Some(2));
}

#[tokio::test]
async fn the_rules_can_refuse_an_extension_and_the_grant_says_why() {
    use crate::domain::extension::ExtensionState;
    let setup = Setup::new();
    let broker = setup.broker(
        r#"@id("no-long-extensions") @reason("extensions are at most an hour")
        forbid (principal, action == GrantBroker::Action::"extend", resource)
        when { context.extension_seconds > 3600 };"#,
        long_target(),
        10,
    );
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let refused = broker
        .extend_grant(&caller(), granted.id, more_time(7200, ""))
        .await
        .unwrap();
    assert_eq!(refused.end, granted.end);
    let extension = &refused.extensions[0];
    assert_eq!(extension.state, ExtensionState::Denied);
    assert_eq!(extension.decision.outcome, Outcome::Deny);
    assert_eq!(extension.decision.policy_ids, ["no-long-extensions"]);
    assert_eq!(
        extension_events(&setup.store, granted.id),
        ["extension_requested", "extension_denied"]
    );
}

#[tokio::test]
async fn only_approved_open_grants_can_be_extended_and_only_so_often() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, long_target(), 10);
    let pending = broker.request_access(&caller(), request("p")).await.unwrap().grant;
    let error = broker
        .extend_grant(&caller(), pending.id, more_time(600, ""))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BrokerError::TransitionNotAllowed { refused, .. } if refused.state == GrantState::PendingApproval),
        "{error:?}"
    );

    let setup = Setup::new();
    let broker = setup.broker("", long_target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    // Ten one-minute extensions are approved at once (the total stays under an hour) ...
    for n in 0..crate::domain::extension::MAX_EXTENSIONS {
        broker
            .extend_grant(&caller(), granted.id, more_time(60, &format!("e{n}")))
            .await
            .unwrap();
    }
    // ... and an eleventh is refused.
    let error = broker
        .extend_grant(&caller(), granted.id, more_time(60, "e10"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, BrokerError::TooManyExtensions { limit: 10, .. }),
        "{error:?}"
    );
    // Another caller's grant does not exist for this one; an ended grant cannot be extended.
    let other = Caller {
        id: CallerId::parse("other").unwrap(),
        ..caller()
    };
    let error = broker
        .extend_grant(&other, granted.id, more_time(60, ""))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::GrantNotFound(_)), "{error:?}");
    setup.clock.advance(Duration::minutes(40));
    let error = broker
        .extend_grant(&caller(), granted.id, more_time(60, ""))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BrokerError::TransitionNotAllowed { refused, .. } if refused.state == GrantState::Expired),
        "{error:?}"
    );
}

// Revocation.

const ROLE: &str = "arn:aws:iam::123456789012:role/vendor-logs-read";

fn admin() -> Caller {
    Caller {
        id: CallerId::parse("security-console").unwrap(),
        powers: Powers {
            admin: true,
            ..Powers::default()
        },
        ..caller()
    }
}

fn enforcement_of(grant: &Grant) -> (crate::domain::revocation::EnforcementStatus, Option<String>) {
    let enforcement = grant.enforcement.as_ref().unwrap();
    (enforcement.status, enforcement.error.clone())
}

fn denied_user_ids(iam: &FakeIam) -> Vec<String> {
    iam.document(ROLE)
        .map(|document| {
            document["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|statement| statement["Condition"]["StringEquals"]["aws:userid"].as_array())
                .flatten()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_revoked_grant_issues_nothing_more_and_its_sessions_are_denied_on_the_role() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let revoked = broker
        .revoke_grant(&caller(), granted.id, None, "vendor offboarded".into())
        .await
        .unwrap();
    assert_eq!(revoked.state, GrantState::Revoked);
    assert_eq!(revoked.revocation.as_ref().unwrap().reason, "vendor offboarded");
    assert_eq!(enforcement_of(&revoked).0, EnforcementStatus::Enforced);
    assert_eq!(
        denied_user_ids(&setup.iam),
        [format!("AROAFAKEROLEID000001:gb-{}", granted.id)]
    );
    let names: Vec<&str> = setup.store.events(granted.id).iter().map(|e| e.kind.name()).collect();
    assert_eq!(names[names.len() - 2..], ["revoked", "enforcement_changed"]);

    let error = broker.issue_credentials(&caller(), granted.id, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            BrokerError::NotIssuable {
                state: GrantState::Revoked,
                ..
            }
        ),
        "{error:?}"
    );
    // Twice is refused with the state; nothing more is written to IAM.
    let calls = setup.iam.calls.load(Ordering::SeqCst);
    let again = broker
        .revoke_grant(&caller(), granted.id, None, "again".into())
        .await
        .unwrap_err();
    assert!(
        matches!(&again, BrokerError::TransitionNotAllowed { refused, .. } if refused.state == GrantState::Revoked),
        "{again:?}"
    );
    assert_eq!(broker.enforce_pending().await.unwrap(), 0);
    assert_eq!(setup.iam.calls.load(Ordering::SeqCst), calls);

    // Once its sessions have expired the entry is pruned, and the empty policy deleted.
    setup.clock.advance(Duration::minutes(31));
    assert_eq!(broker.enforce_pending().await.unwrap(), 1);
    assert_eq!(setup.iam.document(ROLE), None);
}

#[tokio::test]
async fn grants_with_nothing_to_deny_say_so_and_touch_no_role() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let pending = broker.request_access(&caller(), request("p")).await.unwrap().grant;
    let revoked = broker
        .revoke_grant(&caller(), pending.id, None, "no".into())
        .await
        .unwrap();
    assert_eq!(enforcement_of(&revoked).0, EnforcementStatus::NotNeeded);

    // Approved but never issued: decided once it is revoked (nothing can be issued after).
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    setup.clock.advance(Duration::hours(1));
    let scheduled = broker
        .request_access(&caller(), scheduled("s", setup.clock.now() + Duration::hours(2)))
        .await
        .unwrap()
        .grant;
    assert_eq!(scheduled.state, GrantState::Approved);
    let revoked = broker
        .revoke_grant(&caller(), scheduled.id, None, "no".into())
        .await
        .unwrap();
    assert_eq!(
        enforcement_of(&revoked),
        (EnforcementStatus::NotNeeded, Some("it never issued credentials".into()))
    );
    assert_eq!(setup.iam.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn failed_enforcement_is_retried_with_backoff_until_written() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    setup.iam.failing.store(true, Ordering::SeqCst);
    let revoked = broker
        .revoke_grant(&caller(), granted.id, None, "incident".into())
        .await
        .unwrap();
    assert_eq!(revoked.state, GrantState::Revoked, "recorded whatever IAM says");
    let (status, error) = enforcement_of(&revoked);
    assert_eq!(status, EnforcementStatus::Failed);
    let error = error.unwrap();
    assert!(error.starts_with("Throttling: "), "{error}");
    assert!(
        !error.contains("arn:aws:iam"),
        "AWS's message stays in the log: {error}"
    );

    // Not retried before its backoff; retried after it, and still failing, nothing is repeated
    // on the grant.
    assert_eq!(broker.enforce_pending().await.unwrap(), 0);
    let events_before = setup.store.events(granted.id).len();
    setup.clock.advance(Duration::seconds(3));
    assert_eq!(broker.enforce_pending().await.unwrap(), 0);
    assert_eq!(setup.store.events(granted.id).len(), events_before);

    setup.iam.failing.store(false, Ordering::SeqCst);
    setup.clock.advance(Duration::seconds(4));
    assert_eq!(broker.enforce_pending().await.unwrap(), 1);
    let grant = broker.get_grant(&caller(), granted.id).await.unwrap();
    assert_eq!(enforcement_of(&grant), (EnforcementStatus::Enforced, None));
    assert_eq!(denied_user_ids(&setup.iam).len(), 1);
}

#[tokio::test]
async fn a_revocation_interrupted_before_its_entry_is_finished_by_the_worker() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    // As if a broker died right after recording REVOKED: the note is there, the entry is not.
    let now = setup.clock.now();
    crate::ports::EnforcementStore::queue_grant(&setup.store, granted.id, now)
        .await
        .unwrap();
    setup.store.edit(granted.id, |grant| {
        grant.state = GrantState::Revoked;
        grant.enforcement = Some(crate::domain::revocation::Enforcement {
            status: EnforcementStatus::Pending,
            at: now,
            error: None,
            cutoff: None,
        });
    });
    assert_eq!(broker.enforce_pending().await.unwrap(), 1);
    assert_eq!(denied_user_ids(&setup.iam).len(), 1);
    let grant = broker.get_grant(&caller(), granted.id).await.unwrap();
    assert_eq!(enforcement_of(&grant).0, EnforcementStatus::Enforced);
    assert!(setup.store.0.lock().unwrap().noted.is_empty());
    // A note for a grant whose revocation never landed goes after a while.
    let other = broker.request_access(&caller(), request("o")).await.unwrap().grant;
    crate::ports::EnforcementStore::queue_grant(&setup.store, other.id, setup.clock.now())
        .await
        .unwrap();
    broker.enforce_pending().await.unwrap();
    assert_eq!(
        setup.store.0.lock().unwrap().noted.len(),
        1,
        "it may still be on its way"
    );
    setup.clock.advance(Duration::minutes(2));
    broker.enforce_pending().await.unwrap();
    assert!(setup.store.0.lock().unwrap().noted.is_empty());
}

#[tokio::test]
async fn a_deny_list_that_would_not_fit_falls_back_to_a_cutoff_and_every_grant_says_so() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let live = broker.request_access(&caller(), request("live")).await.unwrap().grant;
    let doomed = broker.request_access(&caller(), request("doomed")).await.unwrap().grant;
    // The role's other inline policies leave 200 characters: a cutoff fits (194), one entry
    // does not (217).
    setup.iam.other_chars.store(10_040, Ordering::SeqCst);
    setup.clock.advance(Duration::seconds(5));
    let revoked = broker
        .revoke_grant(&caller(), doomed.id, None, "x".into())
        .await
        .unwrap();
    let enforcement = revoked.enforcement.clone().unwrap();
    assert_eq!(enforcement.status, EnforcementStatus::Enforced);
    let cutoff = enforcement.cutoff.expect("denied by the cutoff");
    assert!(cutoff > revoked.revocation.as_ref().unwrap().at);
    let document = setup.iam.document(ROLE).unwrap();
    assert_eq!(
        document["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
        crate::domain::policy::rfc3339_utc(cutoff)
    );
    assert!(denied_user_ids(&setup.iam).is_empty());
    // The live grant's earlier session is cut off too, and it says so; it may issue again.
    broker.enforce_pending().await.unwrap();
    let read = broker.get_grant(&caller(), live.id).await.unwrap();
    assert_eq!(read.role_cutoff.as_ref().map(|c| c.at), Some(cutoff));
    assert_eq!(read.state, GrantState::Approved);
    setup.clock.advance(Duration::seconds(2));
    broker.issue_credentials(&caller(), live.id, None).await.unwrap();
}

#[tokio::test]
async fn record_only_targets_record_and_stop_issuance_without_touching_the_role() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker(
        "",
        Target {
            revocation: crate::domain::RevocationMode::RecordOnly,
            ..target()
        },
        10,
    );
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let revoked = broker
        .revoke_grant(&caller(), granted.id, None, "x".into())
        .await
        .unwrap();
    assert_eq!(enforcement_of(&revoked).0, EnforcementStatus::NotAvailable);
    assert_eq!(setup.iam.calls.load(Ordering::SeqCst), 0);
    let refused = broker.issue_credentials(&caller(), granted.id, None).await.unwrap_err();
    assert!(
        matches!(
            refused,
            BrokerError::NotIssuable {
                state: GrantState::Revoked,
                ..
            }
        ),
        "{refused:?}"
    );
    let error = broker
        .revoke_target_sessions(&admin(), "dev-logs-read", None, "x".into())
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::RecordOnlyTarget { .. }), "{error:?}");
}

#[tokio::test]
async fn who_may_revoke() {
    let setup = Setup::new();
    // The grants wait for people: an approval portal sees (and revokes through a person) only
    // those.
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let other = Caller {
        id: CallerId::parse("other-portal").unwrap(),
        ..caller()
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            broker
                .request_access(&caller(), request(&format!("r{n}")))
                .await
                .unwrap()
                .grant
                .id,
        );
    }
    let error = broker.revoke_grant(&other, ids[0], None, "x".into()).await.unwrap_err();
    assert!(matches!(error, BrokerError::GrantNotFound(_)), "{error:?}");
    // An approver portal, for someone the rules let approve it; not for anyone else.
    let error = broker
        .revoke_grant(
            &approval_portal_of("other-approvals"),
            ids[0],
            Some(Person::from_trusted("mallory".into())),
            "x".into(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::ApproverNotEligible { .. }), "{error:?}");
    let by_approver = broker
        .revoke_grant(&approval_portal_of("other-approvals"), ids[0], Some(bob()), "x".into())
        .await
        .unwrap();
    assert_eq!(by_approver.revocation.unwrap().revoker.as_deref(), Some("bob"));
    // An admin caller, any grant.
    broker.revoke_grant(&admin(), ids[1], None, "x".into()).await.unwrap();
    // Incident operations are for admins only.
    for error in [
        broker
            .revoke_grantee(&caller(), "vendor-x", None, "x".into())
            .await
            .map(drop)
            .unwrap_err(),
        broker
            .revoke_target_sessions(&caller(), "dev-logs-read", None, "x".into())
            .await
            .map(drop)
            .unwrap_err(),
    ] {
        assert!(matches!(error, BrokerError::NotAdmin { .. }), "{error:?}");
    }
}

fn approval_portal_of(id: &str) -> Caller {
    Caller {
        id: CallerId::parse(id).unwrap(),
        powers: Powers {
            relay: Relay::Every,
            ..Powers::default()
        },
        ..caller()
    }
}

#[tokio::test]
async fn a_compromised_vendor_loses_every_live_grant_in_one_operation() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let pending = broker.request_access(&caller(), request("p")).await.unwrap().grant;
    let mut approved = broker.request_access(&caller(), request("a")).await.unwrap().grant;
    approved = broker
        .approve_grant(&approval_portal(), approved.id, bob(), String::new())
        .await
        .unwrap();
    broker.issue_credentials(&caller(), approved.id, None).await.unwrap();
    let mut someone_else = request("e");
    someone_else.grantee = "vendor-y".into();
    let other = broker.request_access(&caller(), someone_else).await.unwrap().grant;
    let mut spelled_otherwise = request("s");
    spelled_otherwise.grantee = " Vendor-X".into();
    let near_miss = broker.request_access(&caller(), spelled_otherwise).await.unwrap().grant;
    broker
        .cancel_grant(&caller(), pending.id, "replaced".into())
        .await
        .unwrap();
    let pending = broker.request_access(&caller(), request("p2")).await.unwrap().grant;

    let operation = broker
        .revoke_grantee(&admin(), "vendor-x", Some(bob()), "vendor-x is compromised".into())
        .await
        .unwrap();
    assert!(!operation.truncated);
    assert_eq!(operation.examined, 3, "the cancelled grant is read, and not revoked");
    assert_eq!(operation.near_misses, [(" Vendor-X".to_owned(), 1)]);
    assert_eq!(
        broker.get_grant(&caller(), near_miss.id).await.unwrap().state,
        GrantState::PendingApproval,
        "a near miss is reported, never revoked"
    );
    let [logged] = setup.store.service_events().try_into().unwrap();
    assert_eq!(logged.caller, "security-console");
    assert_eq!(logged.actor(), "bob");
    assert_eq!(
        logged.kind,
        crate::domain::audit::ServiceEventKind::GranteeRevoked {
            operation: operation.operation.clone(),
            grantee: "vendor-x".into(),
            revoker: Some("bob".into()),
            reason: "vendor-x is compromised".into(),
            examined: 3,
            revoked: 2,
            failed: 0,
            truncated: false,
        }
    );
    let outcomes: BTreeMap<GrantId, EnforcementStatus> = operation
        .outcomes
        .iter()
        .map(|(id, outcome)| (*id, enforcement_of(outcome.as_ref().unwrap()).0))
        .collect();
    assert_eq!(
        outcomes,
        [
            (pending.id, EnforcementStatus::NotNeeded),
            (approved.id, EnforcementStatus::Enforced)
        ]
        .into()
    );
    for (id, _) in &operation.outcomes {
        let grant = broker.get_grant(&caller(), *id).await.unwrap();
        assert_eq!(
            grant.revocation.unwrap().operation.as_deref(),
            Some(operation.operation.as_str())
        );
    }
    assert_eq!(
        broker.get_grant(&caller(), other.id).await.unwrap().state,
        GrantState::PendingApproval,
        "another grantee's grant is untouched"
    );
    assert_eq!(
        denied_user_ids(&setup.iam),
        [format!("AROAFAKEROLEID000001:gb-{}", approved.id)]
    );
}

#[tokio::test]
async fn cutting_off_a_target_denies_earlier_sessions_and_leaves_grants_valid() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let cut = broker
        .revoke_target_sessions(&admin(), "dev-logs-read", None, "keys leaked".into())
        .await
        .unwrap();
    assert_eq!(cut.status, EnforcementStatus::Enforced, "{cut:?}");
    assert_eq!(cut.role_arn, ROLE);
    let [logged] = setup.store.service_events().try_into().unwrap();
    assert_eq!(logged.caller, "security-console");
    assert_eq!(
        logged.kind,
        crate::domain::audit::ServiceEventKind::TargetSessionsRevoked {
            target: "dev-logs-read".into(),
            account_id: target().account_id,
            role_arn: ROLE.into(),
            cutoff: cut.cutoff.at,
            until: cut.cutoff.until,
            revoker: None,
            reason: "keys leaked".into(),
        }
    );
    assert!(cut.cutoff.at > setup.clock.now());
    assert!(cut.cutoff.reason.contains("keys leaked"), "{}", cut.cutoff.reason);
    assert_eq!(
        cut.cutoff.until,
        cut.cutoff.at + Duration::hours(1),
        "the role's longest session"
    );
    let document = setup.iam.document(ROLE).unwrap();
    assert_eq!(
        document["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
        crate::domain::policy::rfc3339_utc(cut.cutoff.at)
    );
    let read = broker.get_grant(&caller(), granted.id).await.unwrap();
    assert_eq!(read.state, GrantState::Approved);
    assert_eq!(read.role_cutoff.map(|c| c.at), Some(cut.cutoff.at));
    // Once every session it can cover has expired, the cutoff and the policy go.
    setup.clock.advance(Duration::hours(2));
    broker.enforce_pending().await.unwrap();
    assert_eq!(setup.iam.document(ROLE), None);
}

#[tokio::test]
async fn a_write_whose_lease_expired_midway_is_written_again() {
    use crate::domain::revocation::EnforcementStatus;
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    // The write stalls past its lease, and another replica takes the role meanwhile.
    let store = setup.store.clone();
    *setup.iam.during_put.lock().unwrap() = Some(Box::new(move || {
        store.0.lock().unwrap().roles.get_mut(ROLE).unwrap().lease = Some("another replica".into());
    }));
    let revoked = broker
        .revoke_grant(&caller(), granted.id, None, "x".into())
        .await
        .unwrap();
    assert_eq!(
        enforcement_of(&revoked).0,
        EnforcementStatus::Pending,
        "not recorded as written"
    );
    // That replica finishes; the role is written again, whatever the stale write left.
    setup.store.0.lock().unwrap().roles.get_mut(ROLE).unwrap().lease = None;
    assert_eq!(broker.enforce_pending().await.unwrap(), 1);
    assert_eq!(setup.iam.puts.load(Ordering::SeqCst), 2, "not skipped as unchanged");
    let grant = broker.get_grant(&caller(), granted.id).await.unwrap();
    assert_eq!(enforcement_of(&grant).0, EnforcementStatus::Enforced);
}

#[tokio::test]
async fn a_deny_removed_or_edited_outside_the_broker_is_found_and_written_again() {
    use crate::domain::{
        audit::ServiceEventKind,
        revocation::{DenyDrift, EnforcementStatus},
    };
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let granted = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    let revoked = broker
        .revoke_grant(&caller(), granted.id, None, "x".into())
        .await
        .unwrap();
    assert_eq!(enforcement_of(&revoked).0, EnforcementStatus::Enforced);
    let written = setup.iam.documents.lock().unwrap().get(ROLE).cloned().unwrap();
    let statuses = || {
        setup
            .store
            .events(granted.id)
            .into_iter()
            .filter_map(|event| match event.kind {
                EventKind::EnforcementChanged { status, error, .. } => Some((status, error)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let drifts = || {
        setup
            .store
            .service_events()
            .into_iter()
            .filter_map(|event| match event.kind {
                ServiceEventKind::RoleDenyDrifted {
                    found,
                    grants,
                    role_arn,
                    ..
                } => Some((found, grants, role_arn)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };

    // Within the interval nothing is read back.
    broker.enforce_pending().await.unwrap();
    assert_eq!(setup.iam.reads.load(Ordering::SeqCst), 0);

    // IAM's own formatting of the same document is no drift.
    let reformatted =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&written).unwrap()).unwrap();
    setup.iam.documents.lock().unwrap().insert(ROLE.into(), reformatted);
    let puts = setup.iam.puts.load(Ordering::SeqCst);
    setup.clock.advance(Duration::seconds(61));
    broker.enforce_pending().await.unwrap();
    assert_eq!(
        setup.iam.reads.load(Ordering::SeqCst),
        1,
        "one read per role per interval"
    );
    assert_eq!(setup.iam.puts.load(Ordering::SeqCst), puts);
    assert!(drifts().is_empty());
    broker.enforce_pending().await.unwrap();
    assert_eq!(
        setup.iam.reads.load(Ordering::SeqCst),
        1,
        "and not again until the next"
    );

    // Deleted, then edited: each is found at the next interval, logged, and written again; the
    // grant says its sessions were not denied until then.
    for (tamper, found, says) in [
        (None, DenyDrift::Missing, "deleted from"),
        (Some(written.replace("Deny", "Allow")), DenyDrift::Changed, "edited on"),
    ] {
        match tamper {
            None => setup.iam.documents.lock().unwrap().remove(ROLE),
            Some(edited) => setup.iam.documents.lock().unwrap().insert(ROLE.into(), edited),
        };
        setup.clock.advance(Duration::seconds(61));
        broker.enforce_pending().await.unwrap();
        assert_eq!(setup.iam.documents.lock().unwrap().get(ROLE), Some(&written));
        assert_eq!(drifts().last(), Some(&(found, 1, ROLE.to_owned())));
        let statuses = statuses();
        let [.., (lapsed, note), (restored, None)] = &statuses[..] else {
            panic!("{statuses:?}")
        };
        assert_eq!(
            (*lapsed, *restored),
            (EnforcementStatus::Pending, EnforcementStatus::Enforced)
        );
        assert!(note.as_deref().unwrap().contains(says), "{note:?}");
        let read = broker.get_grant(&caller(), granted.id).await.unwrap();
        assert_eq!(enforcement_of(&read).0, EnforcementStatus::Enforced);
    }
    assert_eq!(drifts().len(), 2);
}

/// Explain promises RequestAccess's answer: for every way a request can fail against its target
/// (an unknown target, a start in the past, a scope outside the ceiling, an unknown action, a
/// duration over the target's cap), both give the same error, and Explain records nothing.
#[tokio::test]
async fn explain_refuses_exactly_what_request_access_refuses() {
    let setup = Setup::new();
    let broker = setup.broker("", target(), 10);
    let mut cases = Vec::new();
    let mut unknown_target = request("t");
    unknown_target.target = "prod-everything".into();
    cases.push(unknown_target);
    let mut in_the_past = request("p");
    in_the_past.start = Some(setup.clock.now() - Duration::hours(1));
    cases.push(in_the_past);
    let mut outside = request("o");
    outside.scopes[0].resources = vec![crate::domain::ResourcePattern::parse("arn:aws:s3:::other-bucket/*").unwrap()];
    cases.push(outside);
    let mut unknown_action = request("a");
    unknown_action.scopes[0].actions = vec![crate::domain::ActionPattern::parse("s3:GetObjectz").unwrap()];
    cases.push(unknown_action);
    let mut too_long = request("l");
    too_long.duration_secs = 43_200;
    cases.push(too_long);
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let explained = broker.explain(&caller(), &case).map(drop).unwrap_err();
        let requested = broker.request_access(&caller(), case).await.map(drop).unwrap_err();
        assert_eq!(format!("{explained:?}"), format!("{requested:?}"));
        seen.insert(format!("{requested:?}"));
    }
    assert_eq!(seen.len(), 5, "five different refusals: {seen:#?}");
    assert!(setup.store.0.lock().unwrap().grants.is_empty(), "nothing recorded");
}

/// Every read shows a grant as of now, the queues included: a break-glass grant to review whose
/// earlier session a role-wide cutoff denies says so, as GetGrant does.
#[tokio::test]
async fn the_review_queue_shows_grants_as_of_now() {
    let setup = Setup::new();
    let broker = setup.broker(HUMANS_ONLY, target(), 10);
    let mut emergency = request("bg");
    emergency.break_glass = true;
    emergency.ticket = "INC-7".into();
    let outcome = broker.request_access(&caller(), emergency).await.unwrap();
    assert!(
        outcome.grant.decision.break_glass && outcome.credentials.is_some(),
        "{:?}",
        outcome.grant.decision
    );
    setup.clock.advance(Duration::seconds(2));
    let cut = broker
        .revoke_target_sessions(&admin(), "dev-logs-read", None, "leak".into())
        .await
        .unwrap();
    let (queued, _) = broker
        .unreviewed_break_glass(&approval_portal(), None, 10)
        .await
        .unwrap();
    let [queued] = queued.try_into().unwrap();
    assert_eq!(queued.role_cutoff.as_ref().map(|c| c.at), Some(cut.cutoff.at));
    assert_eq!(queued, broker.get_grant(&caller(), outcome.grant.id).await.unwrap());
}

/// A token of `issuer` naming `subject`, with `groups`.
fn token_of(issuer: &str, subject: &str, groups: &[&str]) -> Arc<crate::domain::identity::VerifiedIdentity> {
    use crate::domain::identity::{PrincipalKind, Verified, VerifiedIdentity};
    Arc::new(VerifiedIdentity {
        subject: Person::from_trusted(subject.into()),
        verified: Verified {
            issuer: issuer.into(),
            kind: PrincipalKind::Person,
            mfa: true,
            auth_time: None,
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            facts: BTreeMap::new(),
        },
    })
}

#[tokio::test]
async fn configured_groups_are_a_persons_only_with_the_issuer_the_configuration_names() {
    use crate::domain::identity::Claimed;
    let setup = Setup::new();
    let bob = Person::from_trusted("bob".into());
    let settings = BrokerSettings {
        approver_groups: [(bob.clone(), ["security".to_owned()].into())].into(),
        approver_issuers: [(bob.clone(), "corp".to_owned())].into(),
        ..BrokerSettings::default()
    };
    let broker = setup.broker_with(HUMANS_ONLY, target(), settings);
    let portal = Caller {
        assert_people: false,
        ..approval_portal()
    };
    let pending = broker.request_access(&caller(), request("r")).await.unwrap().grant;
    // Another issuer's token naming bob does not get bob's configured groups.
    let impostor = Claimed {
        named: None,
        token: Some(token_of("partner-idp", "bob", &[])),
    };
    let refused = broker
        .approve_grant(&portal, pending.id, impostor, String::new())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, BrokerError::ApproverNotEligible { .. }),
        "{refused:?}"
    );
    // The named issuer's does.
    let bob_by_corp = Claimed {
        named: None,
        token: Some(token_of("corp", "bob", &[])),
    };
    let approved = broker
        .approve_grant(&portal, pending.id, bob_by_corp, String::new())
        .await
        .unwrap();
    assert_eq!(approved.approvals[0].groups, ["security".to_owned()].into());
    assert_eq!(approved.approvals[0].verified.as_ref().unwrap().issuer, "corp");
}
