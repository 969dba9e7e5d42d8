//! Issuing credentials end to end: the real server, a real Redis, moto as AWS, and a fake STS
//! for what moto does not check or cannot fail at.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use crate::common::*;
use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
use grant_broker::grpc::proto;
use tonic::Code;

async fn sts_client(endpoint: &str, credentials: Credentials) -> aws_sdk_sts::Client {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

#[tokio::test]
async fn auto_approved_request_returns_working_credentials_and_a_durable_record() {
    let redis = RedisServer::start();
    let moto = Moto::start();
    let server = Server::start(&Settings::new(redis.url(), moto.url.clone())).await;
    let mut client = server.client().await;

    let response = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("")))
        .await
        .unwrap()
        .into_inner();
    let grant = response.grant.unwrap();
    let credentials = response
        .credentials
        .expect("approved at once, so credentials come back");
    assert_eq!(grant.state, i32::from(proto::GrantState::Approved));
    let decision = grant.decision.as_ref().unwrap();
    assert_eq!(decision.outcome, i32::from(proto::DecisionOutcome::Approve));
    assert_eq!(
        decision.policy_ids,
        ["auto-approve-nonprod-read-only", "callers-may-request"]
    );
    let session_name = format!("gb-{}", grant.id);
    assert_eq!(grant.issuances.len(), 1);
    assert_eq!(grant.issuances[0].session_name, session_name);
    assert_eq!(grant.issuances[0].access_key_id, credentials.access_key_id);
    assert_eq!(grant.issuances[0].source_identity, "alice@example.com");
    assert_eq!(credentials.region, "eu-west-1");

    // The credentials work: STS knows them as the role session named after the grant.
    let as_grantee = sts_client(
        &moto.url,
        Credentials::new(
            &credentials.access_key_id,
            &credentials.secret_access_key,
            Some(credentials.session_token.clone()),
            None,
            "test",
        ),
    )
    .await;
    let identity = as_grantee.get_caller_identity().send().await.unwrap();
    let expected_arn = format!("arn:aws:sts::123456789012:assumed-role/vendor-logs-read/{session_name}");
    assert_eq!(identity.arn(), Some(expected_arn.as_str()));
    assert_eq!(credentials.assumed_role_arn, expected_arn);

    // The grant is durable: a fresh read returns the same record with the issuance.
    let stored = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
        .await
        .unwrap();
    assert_eq!(stored.into_inner(), grant);
    let events: Vec<String> = redis
        .events(&grant.id)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["requested", "issuing", "issued"]);
}

#[tokio::test]
async fn sts_receives_exactly_the_scopes_the_time_limit_and_the_attribution() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;

    let mut request = read_logs_request("pipeline-run-42");
    request.scopes.push(proto::Scope {
        actions: vec!["s3:ListBucket".into()],
        resources: vec!["arn:aws:s3:::acme-logs".into()],
    });
    request.requester = "Alice Smith <alice@example.com>".into();
    let grant = client
        .request_access(authed(PORTAL_TOKEN, request))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();

    let calls = sts.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    let end = time::OffsetDateTime::from_unix_timestamp(grant.end_time.unwrap().seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let expected_policy = format!(
        concat!(
            r#"{{"Version":"2012-10-17","Statement":["#,
            r#"{{"Effect":"Allow","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::acme-logs/vendor-x/*"],"Condition":{{"DateLessThan":{{"aws:CurrentTime":"{end}"}}}}}},"#,
            r#"{{"Effect":"Allow","Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::acme-logs"],"Condition":{{"DateLessThan":{{"aws:CurrentTime":"{end}"}}}}}}]}}"#
        ),
        end = end
    );
    assert_eq!(call["Policy"], expected_policy);
    assert_eq!(
        grant.session_policy, expected_policy,
        "the grant records the policy it sent"
    );
    assert_eq!(call["Action"], "AssumeRole");
    assert_eq!(call["RoleArn"], "arn:aws:iam::123456789012:role/vendor-logs-read");
    assert_eq!(call["RoleSessionName"], format!("gb-{}", grant.id));
    assert_eq!(call["DurationSeconds"], "1800");
    assert_eq!(call["SourceIdentity"], "Alice_Smith__alice@example.com_");
    assert_eq!(call["ExternalId"], "acme-vendor-x");
    let tags: Vec<(&str, &str)> = (1..=5)
        .map(|i| {
            (
                call[&format!("Tags.member.{i}.Key")].as_str(),
                call[&format!("Tags.member.{i}.Value")].as_str(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("grant-id", grant.id.as_str()),
            ("requester", "Alice Smith _alice@example.com_"),
            ("grantee", "vendor-x"),
            ("ticket", "INC-4711"),
            ("requester-identity", "asserted"),
        ]
    );
    assert!(!call.contains_key("Tags.member.6.Key"));
    assert!(!call.contains_key("SerialNumber"));
}

#[tokio::test]
async fn mfa_targets_need_a_code_and_pass_it_to_sts() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let request = |serial: &str, code: &str| proto::RequestAccessRequest {
        target: "staging-ec2-mfa".into(),
        scopes: vec![proto::Scope {
            actions: vec!["ec2:DescribeInstances".into()],
            resources: vec!["*".into()],
        }],
        mfa_serial: serial.into(),
        mfa_code: code.into(),
        ..read_logs_request("")
    };

    let status = client
        .request_access(authed(PORTAL_TOKEN, request("", "")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["mfa_code"]);
    assert!(status.message().contains("requires MFA"), "{}", status.message());
    assert!(sts.calls().is_empty());

    let status = client
        .request_access(authed(
            PORTAL_TOKEN,
            request("arn:aws:iam::123456789012:mfa/alice", "12345"),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["mfa_code"]);

    let response = client
        .request_access(authed(
            PORTAL_TOKEN,
            request("arn:aws:iam::123456789012:mfa/alice", "123456"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(response.credentials.is_some());
    let call = &sts.calls()[0];
    assert_eq!(call["SerialNumber"], "arn:aws:iam::123456789012:mfa/alice");
    assert_eq!(call["TokenCode"], "123456");
    assert!(
        !call.contains_key("Tags.member.1.Key"),
        "this target does not enable session tags"
    );
}

#[tokio::test]
async fn retries_with_the_same_request_id_return_the_same_grant_with_fresh_credentials() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;

    let first = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("job-7")))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("job-7")))
        .await
        .unwrap()
        .into_inner();
    let (first_grant, second_grant) = (first.grant.unwrap(), second.grant.unwrap());
    assert_eq!(first_grant.id, second_grant.id);
    assert_eq!(first_grant.request_id, "job-7");
    let (first_key, second_key) = (
        first.credentials.unwrap().access_key_id,
        second.credentials.unwrap().access_key_id,
    );
    assert_ne!(first_key, second_key, "each retry mints (and records) new credentials");
    assert_eq!(
        second_grant
            .issuances
            .iter()
            .map(|i| i.access_key_id.clone())
            .collect::<Vec<_>>(),
        [first_key, second_key]
    );
    assert_eq!(sts.calls().len(), 2);

    // The same request id from another caller is another request.
    let other = client
        .request_access(authed(PIPELINE_TOKEN, read_logs_request("job-7")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.grant.unwrap().id, first_grant.id);

    // Same id, different body: refused, naming the grant the id belongs to, and nothing minted.
    let mut changed = read_logs_request("job-7");
    changed.duration = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    let status = client.request_access(authed(PORTAL_TOKEN, changed)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_reason(&status), "REQUEST_ID_REUSED");
    assert!(status.message().contains(&first_grant.id), "{}", status.message());
    assert_eq!(sts.calls().len(), 3);
}

#[tokio::test]
async fn secrets_are_never_stored_or_logged() {
    let logs = capture_logs();
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;

    let mut request = read_logs_request("secret-check");
    request.target = "staging-ec2-mfa".into();
    request.scopes = vec![proto::Scope {
        actions: vec!["ec2:DescribeInstances".into()],
        resources: vec!["*".into()],
    }];
    request.mfa_serial = "arn:aws:iam::123456789012:mfa/alice".into();
    request.mfa_code = "987654".into();
    let response = client
        .request_access(authed(PORTAL_TOKEN, request))
        .await
        .unwrap()
        .into_inner();
    let credentials = response.credentials.unwrap();
    assert_eq!(credentials.secret_access_key, fake_secret(0));
    assert_eq!(credentials.session_token, fake_token(0));
    assert!(
        !format!("{credentials:?}").contains(&credentials.secret_access_key),
        "Debug must redact"
    );

    let dump = redis.dump().await;
    assert!(
        dump.iter().any(|(_, value)| value.contains(&credentials.access_key_id)),
        "the issuance is recorded"
    );
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains(&credentials.access_key_id), "the issuance is logged");
    for secret in [
        &credentials.secret_access_key,
        &credentials.session_token,
        &"987654".to_owned(),
        &PORTAL_TOKEN.to_owned(),
        // The key that seals records and audit entries: Redis never sees it.
        &crate::common::TEST_INTEGRITY_KEY.to_owned(),
    ] {
        for (key, value) in &dump {
            assert!(
                !key.contains(secret.as_str()) && !value.contains(secret.as_str()),
                "{key} holds a secret"
            );
        }
        assert!(!logs.contains(secret.as_str()), "a log line holds a secret");
    }
}

#[tokio::test]
async fn credentials_are_dropped_when_the_issuance_cannot_be_recorded() {
    let logs = capture_logs();
    let redis = Arc::new(RedisServer::start());
    let killer = Arc::clone(&redis);
    // Redis dies while STS is minting: the record of the issuance cannot be written.
    let sts = FakeSts::start_with_hook(StsBehaviour::Succeed, Arc::new(move |_| killer.stop())).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;

    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("r")))
        .await
        .unwrap_err();
    assert_eq!(sts.calls().len(), 1, "STS did mint credentials");
    assert_status(&status, Code::Unavailable, "CREDENTIALS_NOT_RECORDED", "discarded");
    assert!(!status.message().contains(&fake_secret(0)) && !status.message().contains(&fake_token(0)));
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("credentials issued but not recorded: discarded"),
        "the drop is logged"
    );
    assert!(
        logs.contains("ASIAFAKE000000000000"),
        "with the access key id, so the session can be found"
    );
    assert!(
        !logs.contains(&fake_secret(0)) && !logs.contains(&fake_token(0)),
        "but never the secrets"
    );
}

#[tokio::test]
async fn sts_errors_become_clear_statuses_and_are_recorded() {
    struct Case {
        behaviour: StsBehaviour,
        code: Code,
        reason: &'static str,
        calls: usize,
    }
    let cases = [
        Case {
            behaviour: StsBehaviour::Fail {
                status: 403,
                code: "AccessDenied",
                message: "User is not authorized to perform: sts:AssumeRole",
            },
            code: Code::PermissionDenied,
            reason: "STS_ACCESS_DENIED",
            calls: 1,
        },
        Case {
            behaviour: StsBehaviour::Fail {
                status: 400,
                code: "MalformedPolicyDocument",
                message: "Syntax errors in policy",
            },
            code: Code::InvalidArgument,
            reason: "STS_REJECTED",
            calls: 1,
        },
        Case {
            behaviour: StsBehaviour::Fail {
                status: 400,
                code: "PackedPolicyTooLarge",
                message: "Packed policy consumes 112% of allotted space",
            },
            code: Code::InvalidArgument,
            reason: "STS_REJECTED",
            calls: 1,
        },
        Case {
            behaviour: StsBehaviour::Fail {
                status: 403,
                code: "AccessDenied",
                message: "MultiFactorAuthentication failed with invalid MFA one time pass code.",
            },
            code: Code::PermissionDenied,
            reason: "MFA_REJECTED",
            calls: 1,
        },
        Case {
            behaviour: StsBehaviour::Fail {
                status: 400,
                code: "ValidationError",
                message: "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            },
            code: Code::FailedPrecondition,
            reason: "STS_MISCONFIGURED",
            calls: 1,
        },
        // Throttling is retried by the SDK (max_attempts = 2 here) before it becomes UNAVAILABLE.
        Case {
            behaviour: StsBehaviour::Fail {
                status: 400,
                code: "Throttling",
                message: "Rate exceeded",
            },
            code: Code::Unavailable,
            reason: "STS_THROTTLED",
            calls: 2,
        },
    ];
    for case in cases {
        let redis = RedisServer::start();
        let sts = FakeSts::start(case.behaviour).await;
        let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
        let mut client = server.client().await;
        let status = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request("x")))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), error_reason(&status).as_str()),
            (case.code, case.reason),
            "{status:?}"
        );
        assert_eq!(sts.calls().len(), case.calls, "{}", case.reason);
        if case.reason == "STS_THROTTLED" {
            use tonic_types::StatusExt;
            assert!(
                status.get_error_details().retry_info().is_some(),
                "throttling says when to retry"
            );
        }
        // The grant stays approved, with the failure in its audit trail; nothing was issued.
        let grant = newest_grant(&mut client).await;
        assert!(grant.issuances.is_empty());
        let events = redis.events(&grant.id).await;
        assert_eq!(events.last().unwrap()["event"], "issue_failed");
    }
}

#[tokio::test]
async fn a_slow_sts_is_unavailable_not_a_hang() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_secs(5))).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.max_attempts = 1;
    settings.attempt_timeout_ms = 300;
    settings.operation_timeout_ms = 300;
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("slow")))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "STS_UNAVAILABLE", "did not answer in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_converge_on_one_grant() {
    let redis = RedisServer::start();
    // A slow STS makes the six requests overlap between their reservation and their issuance.
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_millis(300))).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .request_access(authed(PORTAL_TOKEN, read_logs_request("burst")))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for task in tasks {
        let response = task.await.unwrap();
        ids.push(response.grant.unwrap().id);
        keys.push(response.credentials.unwrap().access_key_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one request id, one grant");
    let mut client = server.client().await;
    let grant = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: ids[0].clone() }))
        .await
        .unwrap();
    let mut recorded: Vec<String> = grant
        .into_inner()
        .issuances
        .into_iter()
        .map(|i| i.access_key_id)
        .collect();
    recorded.sort();
    keys.sort();
    assert_eq!(recorded, keys, "every credential handed out is recorded");
    assert_eq!(sts.calls().len(), 6);
    let listed = client
        .list_grants(authed(PORTAL_TOKEN, proto::ListGrantsRequest::default()))
        .await
        .unwrap();
    assert_eq!(listed.into_inner().grants.len(), 1, "and listed once");
}

#[tokio::test]
async fn records_expire_after_the_retention_period() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("ttl")))
        .await
        .unwrap();
    let grant = grant.into_inner().grant.unwrap();
    let end = grant.end_time.unwrap().seconds;
    let mut connection = redis.connection().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The test config keeps the default retention of 400 days after the grant ends.
    let expected = end + 400 * 86_400 - now;
    // The request id and the index are written before the rules decide, so they last as long
    // as the grant could: approved just before its request would have timed out (24 hours).
    let until_latest_end = expected + 86_400;
    // An index lives on with its newest entry, its expiry rounded up to the hour.
    for (key, expected, later) in [
        (format!("gb:g:{{{}}}", grant.id), expected, 0),
        ("gb:caller:{vendor-portal}:request:ttl".to_owned(), until_latest_end, 0),
        ("gb:caller:{vendor-portal}:grants".to_owned(), until_latest_end, 3_600),
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut connection).await.unwrap();
        assert!(
            (expected - 5..=expected + later).contains(&ttl),
            "{key}: ttl {ttl}, expected about {expected}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_sts_is_unavailable() {
    let redis = RedisServer::start();
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = Settings::new(redis.url(), format!("http://127.0.0.1:{port}"));
    settings.max_attempts = 1;
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("refused")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::Unavailable,
        "STS_UNAVAILABLE",
        "could not be reached (Unreachable)",
    );
}

#[tokio::test]
async fn with_min_replicas_credentials_wait_for_a_replica_to_hold_the_record() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let primary = RedisServer::start();
    let replica = Arc::new(RedisServer::start_replica_of(&primary).await);
    // Once armed, the replica dies while STS is minting.
    let armed = Arc::new(AtomicBool::new(false));
    let (victim, trigger) = (Arc::clone(&replica), Arc::clone(&armed));
    let hook = Arc::new(move |_: &std::collections::HashMap<String, String>| {
        if trigger.load(Ordering::SeqCst) {
            victim.stop();
        }
    });
    let sts = FakeSts::start_with_hook(StsBehaviour::Succeed, hook).await;
    let mut settings = Settings::new(primary.url(), sts.url.clone());
    settings.min_replicas = 1;
    let server = Server::start(&settings).await;
    let mut client = server.client().await;

    let response = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("replicated")))
        .await
        .unwrap();
    let response = response.into_inner();
    let grant_id = response.grant.unwrap().id;
    let access_key_id = response.credentials.unwrap().access_key_id;
    // WAIT returned, so the replica already holds the issuance record.
    let issuances = replica.grant(&grant_id).await.unwrap().issuances;
    assert_eq!(issuances.len(), 1);
    assert_eq!(issuances[0].access_key_id, access_key_id);

    // The replica dies after the `issuing` record was replicated but before the issuance was:
    // the credentials STS minted are dropped, and the audit trail says so.
    armed.store(true, Ordering::SeqCst);
    let logs = capture_logs();
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("half")))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "CREDENTIALS_NOT_RECORDED", "discarded");
    // Why is the operator's business: the log has it, the caller does not.
    assert!(!status.message().contains("replicas"), "{}", status.message());
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("only 0 of 1 required replicas"), "the log says why");
    assert_eq!(sts.calls().len(), 2);
    let half = newest_grant(&mut client).await;
    let events = primary.events(&half.id).await;
    let last = events.last().unwrap();
    assert_eq!(last["event"], "issue_discarded");
    assert_eq!(last["access_key_id"], "ASIAFAKE000000000001");
    // Changes the replica did not acknowledge stand on the primary, and are in the audit log
    // like the rest of the trail.
    let trail: Vec<String> = events.iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect();
    assert!(trail.contains(&"issued".to_owned()), "{trail:?}");
    let logged: Vec<String> = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                grant_id: half.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|event| event.event)
        .collect();
    assert_eq!(logged, trail);

    // With the replica gone, not even the `issuing` record is durable: STS is not called.
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("down")))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_str()),
        (Code::Unavailable, "STORE_UNAVAILABLE")
    );
    assert_eq!(sts.calls().len(), 2, "no session is minted that could not be traced");
}

// Several threads: the STS stand-in's hook waits on the server it calls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_changes_state_during_the_sts_call_gets_no_credentials() {
    let logs = capture_logs();
    let redis = RedisServer::start();
    // While STS mints, an admin revokes the grant (through the API, as another replica would
    // take it: the record moves on under the issuance).
    let address: Arc<std::sync::OnceLock<String>> = Arc::default();
    let revoker = Arc::clone(&address);
    let revoke = Arc::new(move |params: &std::collections::HashMap<String, String>| {
        let grant_id = params["RoleSessionName"].trim_start_matches("gb-").to_owned();
        let url = revoker.get().unwrap().clone();
        // The hook blocks the STS stand-in's handler until the revocation has landed; the
        // runtime must move this worker's other tasks elsewhere meanwhile (a task waiting in a
        // blocked worker's LIFO slot is not stolen: without this the server can stall).
        tokio::task::block_in_place(|| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let mut client = proto::grant_broker_client::GrantBrokerClient::connect(url)
                        .await
                        .unwrap();
                    client
                        .revoke_grant(authed(
                            ADMIN_TOKEN,
                            proto::RevokeGrantRequest {
                                id: grant_id,
                                reason: "revoked while STS minted".into(),
                                revoker: String::new(),
                            },
                        ))
                        .await
                        .unwrap();
                });
            })
            .join()
            .unwrap()
        });
    });
    let sts = FakeSts::start_with_hook(StsBehaviour::Succeed, revoke).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    address.set(server.url()).unwrap();
    let mut client = server.client().await;

    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("raced")))
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "GRANT_NOT_ISSUABLE", "is revoked");
    let grant = newest_grant(&mut client).await;
    assert_eq!(grant.state, i32::from(proto::GrantState::Revoked));
    assert!(
        grant.issuances.is_empty(),
        "the issuance lost the race and was not recorded"
    );
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("credentials issued but the grant changed meanwhile: discarded"));
    let events = redis.events(&grant.id).await;
    let last = events.last().unwrap();
    assert_eq!(
        last["event"], "issue_discarded",
        "the audit trail names the session nobody received"
    );
    assert_eq!(last["access_key_id"], "ASIAFAKE000000000000");
    assert!(!logs.contains(&fake_secret(0)) && !logs.contains(&fake_token(0)));
}
