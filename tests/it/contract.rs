//! The store contract: what the broker relies on from a grant store, checked against the
//! in-memory store its unit tests run on (`grant_broker::testing`, the `test-support` feature)
//! and against Redis, so that a use case proven on the one holds on the other. Each check runs
//! once per store (`contract::memory::*`, `contract::redis::*`).

use grant_broker::{
    domain::{
        EventKind, GrantEvent, GrantId, GrantState,
        approval::{Approval, Person, Review},
        lifecycle::Transition,
    },
    ports::{Appended, Change, ExtensionsChange, GrantQueues, GrantRecords, Reservation, StoreError},
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::store::{event, sample_extensions, sample_grant};

/// What the checks need of a store.
trait Store: GrantRecords + GrantQueues {}
impl<S: GrantRecords + GrantQueues> Store for S {}

/// A grant (approved unless `state` says otherwise), created in `store`.
async fn created(store: &impl Store, state: GrantState) -> grant_broker::domain::Grant {
    let mut grant = sample_grant(GrantId::from_uuid(Uuid::now_v7()), "contract", 0);
    grant.state = state;
    assert!(store.create(&grant, &[event()]).await.unwrap());
    grant
}

async fn a_created_grant_reads_back_and_a_second_create_changes_nothing(store: &impl Store) {
    let grant = created(store, GrantState::Approved).await;
    let read = store.get(grant.id).await.unwrap().unwrap();
    assert_eq!(read, grant);
    let mut other = grant.clone();
    other.requester = "someone else".into();
    assert!(!store.create(&other, &[event(), event()]).await.unwrap());
    assert_eq!(store.get(grant.id).await.unwrap().unwrap().requester, grant.requester);
    assert_eq!(store.events_from(grant.id, 0).await.unwrap().len(), 1);
    assert_eq!(store.get(GrantId::from_uuid(Uuid::now_v7())).await.unwrap(), None);
}

async fn a_change_lands_only_from_the_states_its_kind_allows(store: &impl Store) {
    let grant = created(store, GrantState::Approved).await;
    let step = event();
    let deny = Change::Transition {
        transition: Transition::Deny,
        event: &step,
    };
    assert_eq!(
        store.change_if_state(&grant, deny).await.unwrap(),
        Appended::WrongState(GrantState::Approved)
    );
    let cancel = Change::Transition {
        transition: Transition::Cancel,
        event: &step,
    };
    assert_eq!(store.change_if_state(&grant, cancel).await.unwrap(), Appended::Yes);
    assert_eq!(
        store.change_if_state(&grant, cancel).await.unwrap(),
        Appended::WrongState(GrantState::Cancelled)
    );
    let issuing = Change::IssueAttempt {
        limit: 10,
        event: &step,
    };
    assert_eq!(
        store.change_if_state(&grant, issuing).await.unwrap(),
        Appended::WrongState(GrantState::Cancelled)
    );
    // A note lands whatever the state.
    assert_eq!(
        store
            .change_if_state(&grant, Change::Note { event: &step })
            .await
            .unwrap(),
        Appended::Yes
    );
    assert_eq!(store.get(grant.id).await.unwrap().unwrap().state, GrantState::Cancelled);
    assert_eq!(store.events_from(grant.id, 0).await.unwrap().len(), 3);
    assert_eq!(
        store.events_from(grant.id, 2).await.unwrap(),
        std::slice::from_ref(&step)
    );

    let mut missing = grant.clone();
    missing.id = GrantId::from_uuid(Uuid::now_v7());
    assert_eq!(
        store.change_if_state(&missing, cancel).await.unwrap(),
        Appended::Missing
    );
}

async fn the_attempt_limit_is_checked_and_counted_in_one_step(store: &impl Store) {
    let grant = created(store, GrantState::Approved).await;
    let step = event();
    let attempt = Change::IssueAttempt { limit: 2, event: &step };
    assert_eq!(store.change_if_state(&grant, attempt).await.unwrap(), Appended::Yes);
    assert_eq!(store.change_if_state(&grant, attempt).await.unwrap(), Appended::Yes);
    assert_eq!(
        store.change_if_state(&grant, attempt).await.unwrap(),
        Appended::LimitReached(2)
    );
    // A refused attempt writes nothing.
    assert_eq!(store.events_from(grant.id, 0).await.unwrap().len(), 3);
}

fn approval(approver: &str) -> Approval {
    Approval {
        approver: Person::from_trusted(approver.to_owned()),
        groups: ["security".to_owned()].into(),
        at: OffsetDateTime::from_unix_timestamp(1_800_000_100).unwrap(),
        comment: String::new(),
        caller: "approval-portal".into(),
        verified: None,
    }
}

async fn an_approval_lands_only_on_the_count_it_was_decided_on(store: &impl Store) {
    let grant = created(store, GrantState::PendingApproval).await;
    let step = [event()];
    let (bob, carol) = (approval("bob"), approval("carol"));
    let record = |approval, approvals_before| Change::Approval {
        transition: Transition::RecordApproval,
        approvals_before,
        approval,
        window: None,
        events: &step,
    };
    assert_eq!(
        store.change_if_state(&grant, record(&bob, 0)).await.unwrap(),
        Appended::Yes
    );
    assert_eq!(
        store.change_if_state(&grant, record(&carol, 0)).await.unwrap(),
        Appended::ApprovalsChanged(1)
    );
    assert_eq!(
        store.change_if_state(&grant, record(&carol, 1)).await.unwrap(),
        Appended::Yes
    );
    let read = store.get(grant.id).await.unwrap().unwrap();
    assert_eq!(read.approvals, [bob, carol]);
    assert_eq!(read.state, GrantState::PendingApproval);
}

async fn a_review_is_written_once(store: &impl Store) {
    let grant = created(store, GrantState::Approved).await;
    let step = event();
    let review = Review {
        reviewer: Person::from_trusted("dave".to_owned()),
        at: OffsetDateTime::from_unix_timestamp(1_800_000_200).unwrap(),
        comment: "justified".into(),
        caller: "approval-portal".into(),
        verified: None,
    };
    let reviewing = Change::Review {
        review: &review,
        event: &step,
    };
    assert_eq!(store.change_if_state(&grant, reviewing).await.unwrap(), Appended::Yes);
    assert_eq!(
        store.change_if_state(&grant, reviewing).await.unwrap(),
        Appended::AlreadyReviewed
    );
    assert_eq!(store.get(grant.id).await.unwrap().unwrap().review, Some(review));
    assert_eq!(store.events_from(grant.id, 0).await.unwrap().len(), 2);
}

async fn extensions_change_only_from_what_was_read(store: &impl Store) {
    let grant = created(store, GrantState::Approved).await;
    let step = [event()];
    let one = sample_extensions("contract", 1);
    let extend = |before| Change::Extension {
        transition: Transition::RequestExtension,
        extensions: ExtensionsChange { before, after: &one },
        window: None,
        events: &step,
    };
    assert_eq!(store.change_if_state(&grant, extend(&[])).await.unwrap(), Appended::Yes);
    assert_eq!(
        store.change_if_state(&grant, extend(&[])).await.unwrap(),
        Appended::ExtensionsChanged
    );
    assert_eq!(store.get(grant.id).await.unwrap().unwrap().extensions, one);
}

async fn an_issuance_is_found_by_its_access_key(store: &impl Store) {
    let grant = created(store, GrantState::Approved).await;
    let issuance = sample_grant(grant.id, "contract", 1).issuances.remove(0);
    // Without the event that announces it, an issuance is refused as a broken write.
    let unannounced = event();
    let change = Change::Issued {
        issuance: &issuance,
        event: &unannounced,
    };
    let refused = store.change_if_state(&grant, change).await.unwrap_err();
    assert!(matches!(refused, StoreError::Corrupt(_)), "{refused:?}");
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
    let change = Change::Issued {
        issuance: &issuance,
        event: &issued,
    };
    assert_eq!(store.change_if_state(&grant, change).await.unwrap(), Appended::Yes);
    let key = issuance.access_key_id.as_str();
    assert_eq!(store.grant_for_access_key(key).await.unwrap(), Some(grant.id));
    assert_eq!(
        store.issuance_with_key(grant.id, key).await.unwrap(),
        Some(issuance.clone())
    );
    assert_eq!(store.grant_for_access_key("ASIANOSUCHKEY0000000").await.unwrap(), None);
    let read = store.get(grant.id).await.unwrap().unwrap();
    assert_eq!((read.issuance_count, read.issuances), (1, vec![issuance]));
}

async fn a_request_id_binds_once_to_its_first_grant(store: &impl Store) {
    let caller = grant_broker::domain::CallerId::parse("vendor-portal").unwrap();
    let request_id = grant_broker::domain::RequestId::parse(&format!("contract-{}", Uuid::now_v7())).unwrap();
    let (first, second) = (GrantId::from_uuid(Uuid::now_v7()), GrantId::from_uuid(Uuid::now_v7()));
    let now = OffsetDateTime::now_utc();
    let end = now + Duration::hours(1);
    let (fp1, fp2, fp3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    assert_eq!(
        store
            .reserve(&caller, Some(&request_id), &fp1, first, now, end)
            .await
            .unwrap(),
        Reservation::New
    );
    assert_eq!(
        store
            .reserve(&caller, Some(&request_id), &fp2, second, now, end)
            .await
            .unwrap(),
        Reservation::Existing {
            grant_id: first,
            fingerprint: fp1.clone()
        }
    );
    // Another caller's request id of the same spelling is its own.
    let other = grant_broker::domain::CallerId::parse("other-portal").unwrap();
    assert_eq!(
        store
            .reserve(&other, Some(&request_id), &fp2, second, now, end)
            .await
            .unwrap(),
        Reservation::New
    );
    assert_eq!(
        store.reserve(&caller, None, &fp3, second, now, end).await.unwrap(),
        Reservation::New
    );
}

async fn deadlines_come_due_earliest_first_and_are_forgotten(store: &impl Store) {
    let base = OffsetDateTime::now_utc() - Duration::hours(1);
    let (early, late, future) = (
        GrantId::from_uuid(Uuid::now_v7()),
        GrantId::from_uuid(Uuid::now_v7()),
        GrantId::from_uuid(Uuid::now_v7()),
    );
    store
        .schedule_deadline(late, base + Duration::minutes(2))
        .await
        .unwrap();
    store
        .schedule_deadline(early, base + Duration::minutes(1))
        .await
        .unwrap();
    store
        .schedule_deadline(future, base + Duration::hours(2))
        .await
        .unwrap();
    let now = base + Duration::minutes(5);
    let due = store.due(now, 100).await.unwrap();
    assert_eq!(due, [early, late]);
    assert_eq!(store.due(now, 1).await.unwrap(), [early]);
    // Moved later, it is no longer due; forgotten, it never is.
    store.schedule_deadline(early, base + Duration::hours(3)).await.unwrap();
    store.forget_deadline(late).await.unwrap();
    assert_eq!(store.due(now, 100).await.unwrap(), Vec::<GrantId>::new());
}

/// Each check, once per store.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(&grant_broker::testing::MemoryStore::default()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $check() {
                    let redis = crate::common::RedisServer::start();
                    super::$check(&redis.store()).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $check() {
                    let cluster = crate::common::RedisCluster::shared().await;
                    let prefix = crate::common::unique_prefix();
                    super::$check(&crate::common::cluster_store(&cluster, &prefix)).await;
                }
            )*
        }
    };
}

contract!(
    a_created_grant_reads_back_and_a_second_create_changes_nothing,
    a_change_lands_only_from_the_states_its_kind_allows,
    the_attempt_limit_is_checked_and_counted_in_one_step,
    an_approval_lands_only_on_the_count_it_was_decided_on,
    a_review_is_written_once,
    extensions_change_only_from_what_was_read,
    an_issuance_is_found_by_its_access_key,
    a_request_id_binds_once_to_its_first_grant,
    deadlines_come_due_earliest_first_and_are_forgotten,
);
