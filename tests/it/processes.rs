//! Several broker processes (the `grant-broker serve` binary, three of them) sharing one Redis,
//! and sharing one Redis Cluster: what must have one winner has one, and what is counted is
//! counted exactly, under concurrent calls spread over all of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;

/// Where the processes keep their state: held (never read) so it lives as long as the test.
#[allow(dead_code)]
enum Layout {
    OneRedis(RedisServer),
    Cluster(RedisCluster),
}

/// Three broker processes on `layout` (a fresh key prefix on a shared cluster), with `limits`.
async fn three_processes(cluster: bool, limits: &str) -> (Layout, FakeSts, Vec<BrokerProcess>, Vec<Client>) {
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(String::new(), sts.url.clone());
    let layout = if cluster {
        let cluster = RedisCluster::shared().await;
        settings.redis_cluster = cluster.seeds();
        settings.redis_extra = format!("key_prefix = \"{}\"", unique_prefix());
        Layout::Cluster(cluster)
    } else {
        let redis = RedisServer::start();
        settings.redis_url = redis.url();
        Layout::OneRedis(redis)
    };
    settings.max_issuances_per_grant = 100;
    if !limits.is_empty() {
        settings.limits = format!("[limits]\n{limits}");
    }
    let processes: Vec<BrokerProcess> = (0..3).map(|_| BrokerProcess::start(&settings, "", &[])).collect();
    let mut clients = Vec::new();
    for process in &processes {
        clients.push(process.client().await);
    }
    (layout, sts, processes, clients)
}

fn request_for(requester: &str, grantee: &str) -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        requester: requester.to_owned(),
        grantee: grantee.to_owned(),
        ..read_logs_request("")
    }
}

/// The same request id, 30 times at once through three processes: one grant. Each answer is
/// that grant, with credentials of its own, and every credential returned is recorded.
async fn one_request_id_is_one_grant(cluster: bool) {
    let (_layout, sts, _processes, clients) = three_processes(cluster, "").await;
    let calls = (0..30).map(|n| {
        let mut client = clients[n % 3].clone();
        async move {
            client
                .request_access(authed(PORTAL_TOKEN, read_logs_request("the-same-request")))
                .await
        }
    });
    let answers: Vec<proto::RequestAccessResponse> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|answer| answer.unwrap().into_inner())
        .collect();
    let id = answers[0].grant.as_ref().unwrap().id.clone();
    assert!(answers.iter().all(|answer| answer.grant.as_ref().unwrap().id == id));
    let mut returned: Vec<String> = answers
        .iter()
        .map(|answer| answer.credentials.as_ref().expect("credentials").access_key_id.clone())
        .collect();
    returned.sort();
    let mut client = clients[0].clone();
    let grant = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    // The grant lists its latest issuances and counts them all.
    assert_eq!(grant.issuance_count, 30);
    for issuance in &grant.issuances {
        assert!(
            returned.contains(&issuance.access_key_id),
            "{} was never returned",
            issuance.access_key_id
        );
    }
    for access_key_id in &returned {
        let found = client
            .find_grant_by_access_key(authed(
                AUDITOR_TOKEN,
                proto::FindGrantByAccessKeyRequest {
                    access_key_id: access_key_id.clone(),
                },
            ))
            .await
            .unwrap_or_else(|status| panic!("{access_key_id} returned but not recorded: {status:?}"))
            .into_inner();
        assert_eq!(found.grant.unwrap().id, id);
        assert_eq!(&found.issuance.unwrap().access_key_id, access_key_id);
    }
    assert_eq!(sts.calls().len(), 30);
    let mine = client
        .list_grants(authed(PORTAL_TOKEN, proto::ListGrantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(mine.len(), 1, "one grant for the caller");
}

/// Both approvers, six times each, at once through three processes: two approvals, one
/// `approved`; the approvals that come after it are refused.
async fn racing_approvals_meet_the_quorum_once(cluster: bool) {
    let (_layout, _sts, _processes, clients) = three_processes(cluster, "").await;
    let mut client = clients[0].clone();
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let calls = (0..12).map(|n| {
        let mut client = clients[n % 3].clone();
        let approver = if n % 2 == 0 {
            "bob@example.com"
        } else {
            "carol@example.com"
        };
        let id = pending.id.clone();
        async move {
            client
                .approve_grant(authed(APPROVALS_TOKEN, approve(&id, approver)))
                .await
        }
    });
    // An approval that arrives once the quorum is met is refused, and changes nothing.
    for answer in futures_util::future::join_all(calls).await {
        if let Err(status) = answer {
            assert_status(
                &status,
                Code::FailedPrecondition,
                "TRANSITION_NOT_ALLOWED",
                "a grant that is approved: only one that is pending_approval",
            );
        }
    }
    let history = client
        .get_grant_history(authed(
            PORTAL_TOKEN,
            proto::GetGrantHistoryRequest { id: pending.id.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    let events: Vec<&str> = history.events.iter().map(|event| event.event.as_str()).collect();
    assert_eq!(
        events,
        ["requested", "approval_recorded", "approval_recorded", "approved"]
    );
    assert_eq!(history.grant.unwrap().approvals.len(), 2);
}

/// A caller's rate of 12 a minute, 36 requests at once through three processes: exactly 12.
async fn a_callers_rate_is_exact(cluster: bool) {
    let (_layout, sts, _processes, clients) = three_processes(cluster, "requests_per_minute = 12").await;
    let calls = (0..36).map(|n| {
        let mut client = clients[n % 3].clone();
        async move {
            client
                .request_access(authed(
                    PORTAL_TOKEN,
                    request_for(&format!("p{n}@example.com"), &format!("g{n}")),
                ))
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let landed = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(
        landed,
        12,
        "{:?}",
        answers.iter().filter_map(|answer| answer.as_ref().err()).next()
    );
    for status in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(
            (status.code(), error_reason(status).as_str()),
            (Code::ResourceExhausted, "CALLER_RATE_LIMITED")
        );
    }
    assert_eq!(sts.calls().len(), 12);
}

/// Five live grants per grantee, 20 requests for one grantee at once through three processes:
/// exactly five.
async fn a_grantees_live_cap_is_exact(cluster: bool) {
    let (_layout, sts, _processes, clients) = three_processes(cluster, "live_grants_per_grantee = 5").await;
    let calls = (0..20).map(|n| {
        let mut client = clients[n % 3].clone();
        async move {
            client
                .request_access(authed(
                    PORTAL_TOKEN,
                    request_for(&format!("p{n}@example.com"), "vendor-y"),
                ))
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let landed = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(
        landed,
        5,
        "{:?}",
        answers.iter().filter_map(|answer| answer.as_ref().err()).next()
    );
    for status in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(
            (status.code(), error_reason(status).as_str()),
            (Code::ResourceExhausted, "GRANTEE_LIVE_GRANTS_LIMITED")
        );
    }
    assert_eq!(sts.calls().len(), 5);
}

/// Each check on one Redis and on the cluster.
macro_rules! on_both_layouts {
    ($($check:ident),* $(,)?) => {
        mod one_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(false).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(true).await;
                }
            )*
        }
    };
}

on_both_layouts!(
    one_request_id_is_one_grant,
    racing_approvals_meet_the_quorum_once,
    a_callers_rate_is_exact,
    a_grantees_live_cap_is_exact,
);
