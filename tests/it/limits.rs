//! Limits nobody can abuse: request rates per caller and per person, live grants per grantee,
//! pending grants per caller; each RESOURCE_EXHAUSTED with when to retry, and exact across
//! brokers sharing one Redis.

use std::time::Duration;

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;
use tonic_types::StatusExt;

/// `limits` in force, and two brokers on one Redis.
async fn brokers(limits: &str) -> (RedisServer, FakeSts, Server, Server) {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.limits = format!("[limits]\n{limits}");
    let (one, two) = (Server::start(&settings).await, Server::start(&settings).await);
    (redis, sts, one, two)
}

fn refused_by(status: &tonic::Status, reason: &str) -> Duration {
    assert_eq!(
        (status.code(), error_reason(status).as_str()),
        (Code::ResourceExhausted, reason),
        "{status:?}"
    );
    let details = status.get_error_details();
    let retry = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo");
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations.len(), 1);
    assert!(status.message().contains("retry in"), "{}", status.message());
    retry
}

fn request_for(requester: &str, grantee: &str) -> proto::RequestAccessRequest {
    let mut request = read_logs_request("");
    request.requester = requester.to_owned();
    request.grantee = grantee.to_owned();
    request
}

#[tokio::test]
async fn a_callers_request_rate_holds_across_brokers_and_says_when_to_retry() {
    let (_redis, sts, one, two) = brokers("requests_per_minute = 10").await;
    let (mut a, mut b) = (one.client().await, two.client().await);
    // ListTargets says what this caller may take.
    let limits = a
        .list_targets(authed(PORTAL_TOKEN, proto::ListTargetsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(limits.requests_per_minute, 10);

    // 30 requests at once through two brokers: exactly 10 land, each from a different person.
    let calls = (0..30).map(|n| {
        let mut client = if n % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            client
                .request_access(authed(
                    PORTAL_TOKEN,
                    request_for(&format!("p{n}@example.com"), &format!("g{n}")),
                ))
                .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let landed = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(landed, 10, "{results:?}");
    for status in results.iter().filter_map(|result| result.as_ref().err()) {
        let retry = refused_by(status, "CALLER_RATE_LIMITED");
        // One request per 6 s frees up: the wait is at most that.
        assert!(retry.as_secs() <= 6, "{retry:?}");
        assert!(status.message().contains("vendor-portal"), "{}", status.message());
    }
    assert_eq!(sts.calls().len(), 10, "a refused request reaches nothing");
    // Another caller has its own rate: the pipeline still gets through.
    b.request_access(authed(PIPELINE_TOKEN, request_for("job@example.com", "g-job")))
        .await
        .unwrap();
    assert_eq!(sts.calls().len(), 11);
}

#[tokio::test]
async fn a_persons_request_rate_holds_whatever_caller_or_broker_names_them() {
    let (_redis, _sts, one, two) = brokers("requests_per_person_per_minute = 3").await;
    let (mut a, mut b) = (one.client().await, two.client().await);
    // Through both brokers and both callers: three in all.
    for (n, token) in [PORTAL_TOKEN, PIPELINE_TOKEN, PORTAL_TOKEN].into_iter().enumerate() {
        let client = if n == 1 { &mut b } else { &mut a };
        client
            .request_access(authed(token, request_for("alice@example.com", &format!("g{n}"))))
            .await
            .unwrap();
    }
    let status = b
        .request_access(authed(PIPELINE_TOKEN, request_for("alice@example.com", "g4")))
        .await
        .unwrap_err();
    let retry = refused_by(&status, "PERSON_RATE_LIMITED");
    assert!(retry.as_secs() <= 20, "{retry:?}");
    assert!(status.message().contains("alice@example.com"), "{}", status.message());
    // Someone else is not held back.
    b.request_access(authed(PORTAL_TOKEN, request_for("bob@example.com", "g5")))
        .await
        .unwrap();
}

#[tokio::test]
async fn live_grants_per_grantee_and_pending_grants_per_caller_are_capped_until_one_ends() {
    let (_redis, _sts, one, two) = brokers("live_grants_per_grantee = 2\npending_grants = 1").await;
    let (mut a, mut b) = (one.client().await, two.client().await);
    let first = a
        .request_access(authed(PORTAL_TOKEN, request_for("p1@example.com", "vendor-x")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    b.request_access(authed(PORTAL_TOKEN, request_for("p2@example.com", "vendor-x")))
        .await
        .unwrap();
    let status = a
        .request_access(authed(PORTAL_TOKEN, request_for("p3@example.com", "vendor-x")))
        .await
        .unwrap_err();
    let retry = refused_by(&status, "GRANTEE_LIVE_GRANTS_LIMITED");
    // Until the first grant ends by itself (30 minutes), at the latest.
    assert!((1_700..=1_800).contains(&retry.as_secs()), "{retry:?}");
    // Another grantee is not held back; and once a grant is revoked, its place is free.
    a.request_access(authed(PORTAL_TOKEN, request_for("p3@example.com", "vendor-y")))
        .await
        .unwrap();
    b.revoke_grant(authed(
        PORTAL_TOKEN,
        proto::RevokeGrantRequest {
            id: first.id,
            reason: "done".into(),
            revoker: String::new(),
        },
    ))
    .await
    .unwrap();
    a.request_access(authed(PORTAL_TOKEN, request_for("p3@example.com", "vendor-x")))
        .await
        .unwrap();

    // One grant of this caller may wait for approval at a time.
    let mut production = production_request();
    production.grantee = "vendor-z".into();
    let waiting = a
        .request_access(authed(PORTAL_TOKEN, production.clone()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(waiting.state, i32::from(proto::GrantState::PendingApproval));
    let status = b
        .request_access(authed(PORTAL_TOKEN, production.clone()))
        .await
        .unwrap_err();
    refused_by(&status, "PENDING_GRANTS_LIMITED");
    b.cancel_grant(authed(
        PORTAL_TOKEN,
        proto::CancelGrantRequest {
            id: waiting.id,
            reason: String::new(),
        },
    ))
    .await
    .unwrap();
    b.request_access(authed(PORTAL_TOKEN, production)).await.unwrap();
}

/// STS throttling a target opens that target's circuit: the next calls for it are answered at
/// once, UNAVAILABLE with when to retry, without calling STS or spending an attempt; another
/// target is not held back; after the wait one call tries STS again.
#[tokio::test]
async fn sts_throttling_opens_the_targets_circuit_and_spares_the_others() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Fail {
        status: 400,
        code: "Throttling",
        message: "Rate exceeded",
    })
    .await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let throttled = |status: &tonic::Status| {
        assert_eq!(
            (status.code(), error_reason(status).as_str()),
            (Code::Unavailable, "STS_THROTTLED"),
            "{status:?}"
        );
        assert_eq!(error_metadata(status, "target").as_deref(), Some("dev-logs-read"));
        status
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap()
    };
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("first")))
        .await
        .unwrap_err();
    assert_eq!(throttled(&status), Duration::from_secs(1));
    assert_eq!(sts.calls().len(), 2, "the SDK's own retries (max_attempts = 2)");
    let grant = newest_grant(&mut client).await;
    let attempts_before = redis.events(&grant.id).await.len();

    // Held back: nothing reaches STS, and the grant's attempts are not spent.
    for _ in 0..3 {
        let status = client
            .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
            .await
            .unwrap_err();
        assert!(throttled(&status) <= Duration::from_secs(1));
    }
    assert_eq!(sts.calls().len(), 2);
    assert_eq!(
        redis.events(&grant.id).await.len(),
        attempts_before,
        "no attempt recorded"
    );

    // Another target goes to STS.
    let mut other = production_request();
    other.target = "staging-ec2-mfa".into();
    other.scopes = vec![proto::Scope {
        actions: vec!["ec2:DescribeInstances".into()],
        resources: vec!["*".into()],
    }];
    other.mfa_serial = "arn:aws:iam::123456789012:mfa/alice".into();
    other.mfa_code = "123456".into();
    other.ticket = String::new();
    let status = client.request_access(authed(PORTAL_TOKEN, other)).await.unwrap_err();
    assert_eq!(
        error_metadata(&status, "target").as_deref(),
        Some("staging-ec2-mfa"),
        "{status:?}"
    );
    assert_eq!(sts.calls().len(), 4);

    // After the wait, one call tries again; still throttled, the circuit opens for longer.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap_err();
    assert_eq!(throttled(&status), Duration::from_secs(2));
    assert_eq!(sts.calls().len(), 6);
}
