//! Extending approved grants end to end: the rules decide each extension (action `extend`),
//! approvers approve or deny one that waits, the end and the session policy move only when it is
//! approved and never past the target's maximum, and racing extensions and approvals through two
//! broker processes land exactly once. Real server, real Redis, the fake STS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;

fn extend(id: &str, seconds: i64, request_id: &str) -> proto::ExtendGrantRequest {
    proto::ExtendGrantRequest {
        id: id.to_owned(),
        additional_duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        justification: "the migration overran".into(),
        request_id: request_id.to_owned(),
    }
}

fn extension_state(extension: &proto::Extension) -> proto::ExtensionState {
    proto::ExtensionState::try_from(extension.state).unwrap()
}

fn window_secs(grant: &proto::Grant) -> i64 {
    grant.end_time.unwrap().seconds - grant.start_time.unwrap().seconds
}

/// A production grant, approved by security and a team lead (30 minutes; the target allows 2 h).
async fn approved_production_grant(client: &mut Client) -> proto::Grant {
    let grant = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    for approver in ["bob@example.com", "carol@example.com"] {
        client
            .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, approver)))
            .await
            .unwrap();
    }
    let grant = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grant.state, i32::from(proto::GrantState::Approved));
    grant
}

/// A staging grant approved at once (30 minutes; the target allows 1 h).
async fn approved_staging_grant(client: &mut Client, request_id: &str) -> proto::Grant {
    client
        .request_access(authed(PORTAL_TOKEN, read_logs_request(request_id)))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_extension_waits_for_security_then_moves_the_end_and_the_policy() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = approved_production_grant(&mut client).await;
    let mut stream = client
        .watch_grant(authed(
            PORTAL_TOKEN,
            proto::WatchGrantRequest {
                id: grant.id.clone(),
                after_event: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.message().await.unwrap().unwrap();
    let cursor = snapshot.cursor;

    let waiting = client
        .extend_grant(authed(PORTAL_TOKEN, extend(&grant.id, 3600, "more-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waiting.state, i32::from(proto::GrantState::Approved));
    assert_eq!(waiting.end_time, grant.end_time, "nothing moves before approval");
    let extension = &waiting.extensions[0];
    assert_eq!(
        (extension.number, extension_state(extension)),
        (1, proto::ExtensionState::Pending)
    );
    assert_eq!(extension.approvals_required, "security:1");
    assert_eq!(
        extension.decision.as_ref().unwrap().policy_ids,
        ["extend-production-with-security"]
    );

    // Security sees it in their queue; the requester cannot approve it.
    let queue = client
        .list_grants(authed(
            APPROVALS_TOKEN,
            proto::ListGrantsRequest {
                waiting_for_approver: "bob@example.com".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        queue.grants.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        [grant.id.as_str()]
    );
    let status = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "alice@example.com")))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "SELF_APPROVAL", "cannot approve it");
    // A second extension waits its turn.
    let status = client
        .extend_grant(authed(PORTAL_TOKEN, extend(&grant.id, 600, "more-2")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "EXTENSION_WAITING",
        "extension waiting for approval",
    );

    // A team lead's approval is recorded but does not fill the security slot; security's does.
    let after_lead = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "carol@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        extension_state(&after_lead.extensions[0]),
        proto::ExtensionState::Pending
    );
    assert_eq!(after_lead.end_time, grant.end_time);
    let extended = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "bob@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        extension_state(&extended.extensions[0]),
        proto::ExtensionState::Approved
    );
    assert_eq!(window_secs(&extended), 1800 + 3600);
    assert_eq!(extended.extensions[0].new_end_time, extended.end_time);
    assert_eq!(extended.approvals.len(), 2, "the request's own approvals are untouched");
    let end = extended.end_time.unwrap();
    let end_text = time::OffsetDateTime::from_unix_timestamp(end.seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(
        extended.session_policy.contains(&end_text),
        "the policy's time condition follows the new end {end_text}: {}",
        extended.session_policy
    );

    // The watcher saw every step, in order.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let change = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push((change.event, change.cursor - cursor));
    }
    assert_eq!(
        seen,
        [
            ("extension_requested".to_owned(), 1),
            ("approval_recorded".to_owned(), 2),
            ("approval_recorded".to_owned(), 3),
            ("extended".to_owned(), 4)
        ]
    );

    // Credentials now last past the old end, and the policy STS gets ends at the new one.
    let issued = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(issued.credentials.is_some());
    let call = sts.calls().pop().unwrap();
    let duration: i64 = call["DurationSeconds"].parse().unwrap();
    assert!(duration > 3600 && duration <= 5400, "{duration}");
    assert!(call["Policy"].contains(&end_text), "{}", call["Policy"]);

    // An extension past the target's maximum (2 h in all) is refused, saying what fits.
    let status = client
        .extend_grant(authed(PORTAL_TOKEN, extend(&grant.id, 1801, "")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_REQUEST",
        "at most 1800s can be added",
    );
    assert_eq!(violated_fields(&status), ["additional_duration"]);
}

#[tokio::test]
async fn extensions_refuse_bad_input_and_the_wrong_grants_clearly() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = approved_staging_grant(&mut client, "staging-1").await;

    let status = client
        .extend_grant(authed(
            PORTAL_TOKEN,
            proto::ExtendGrantRequest {
                id: "nope".into(),
                additional_duration: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                justification: " ".into(),
                request_id: "has space".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST", "4 problems");
    assert_eq!(
        violated_fields(&status),
        ["id", "additional_duration", "justification", "request_id"]
    );
    let status = client
        .extend_grant(authed(
            PORTAL_TOKEN,
            proto::ExtendGrantRequest {
                additional_duration: None,
                ..extend(&grant.id, 0, "")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["additional_duration"]);

    // Unknown, and another caller's: not found alike.
    let unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    for (token, id) in [(PORTAL_TOKEN, unknown), (PIPELINE_TOKEN, grant.id.as_str())] {
        let status = client
            .extend_grant(authed(token, extend(id, 600, "")))
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", id);
    }

    // A pending grant has no window to extend yet; a cancelled one never will.
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let status = client
        .extend_grant(authed(PORTAL_TOKEN, extend(&pending.id, 600, "")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "cannot extend a grant that is pending_approval",
    );
    client
        .cancel_grant(authed(
            PORTAL_TOKEN,
            proto::CancelGrantRequest {
                id: grant.id.clone(),
                reason: "done early".into(),
            },
        ))
        .await
        .unwrap();
    let status = client
        .extend_grant(authed(PORTAL_TOKEN, extend(&grant.id, 600, "")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "cannot extend a grant that is cancelled",
    );
    assert!(
        redis
            .events(&grant.id)
            .await
            .iter()
            .all(|event| event["event"] != "extension_requested"),
        "refused extensions record nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_extensions_through_two_brokers_never_pass_the_maximum() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let (first, second) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = first.client().await;
    for round in 0..3 {
        // 30 minutes on a target that allows an hour: room for three 10-minute extensions, which
        // the rules approve at once (read-only, an hour in all).
        let grant = approved_staging_grant(&mut client, &format!("race-{round}")).await;
        let mut tasks = Vec::new();
        for n in 0..8 {
            let mut client = if n % 2 == 0 {
                first.client().await
            } else {
                second.client().await
            };
            let request = extend(&grant.id, 600, &format!("r{round}-{n}"));
            tasks.push(tokio::spawn(async move {
                client
                    .extend_grant(authed(PORTAL_TOKEN, request))
                    .await
                    .map(|response| response.into_inner().extensions.len())
                    .map_err(|status| (status.code(), error_reason(&status)))
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let landed = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(landed, 3, "round {round}: {outcomes:?}");
        for outcome in &outcomes {
            assert!(
                outcome.is_ok()
                    || matches!(outcome, Err((Code::InvalidArgument, reason)) if reason == "INVALID_REQUEST")
                    || matches!(outcome, Err((Code::Aborted, reason)) if reason == "CONTENDED"),
                "round {round}: {outcomes:?}"
            );
        }
        let stored = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(window_secs(&stored), 3600, "round {round}");
        let numbers: Vec<u32> = stored.extensions.iter().map(|e| e.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
        let extended = redis
            .events(&grant.id)
            .await
            .iter()
            .filter(|event| event["event"] == "extended")
            .count();
        assert_eq!(extended, 3, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_decisions_on_a_waiting_extension_land_once() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let (first, second) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = first.client().await;
    for round in 0..4 {
        let grant = approved_production_grant(&mut client).await;
        client
            .extend_grant(authed(PORTAL_TOKEN, extend(&grant.id, 1800, "")))
            .await
            .unwrap();
        // Two security members approve while a third person denies, through both brokers.
        let mut tasks = Vec::new();
        for (n, (approver, deny)) in [
            ("bob@example.com", false),
            ("dave@example.com", false),
            ("carol@example.com", true),
        ]
        .into_iter()
        .enumerate()
        {
            let mut client = if (n + round) % 2 == 0 {
                first.client().await
            } else {
                second.client().await
            };
            let id = grant.id.clone();
            tasks.push(tokio::spawn(async move {
                let result = if deny {
                    client
                        .deny_grant(authed(
                            APPROVALS_TOKEN,
                            proto::DenyGrantRequest {
                                id,
                                approver: approver.into(),
                                reason: "not now".into(),
                            },
                        ))
                        .await
                } else {
                    client
                        .approve_grant(authed(APPROVALS_TOKEN, approve(&id, approver)))
                        .await
                };
                result.map(drop).map_err(|status| error_reason(&status))
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let events = redis.events(&grant.id).await;
        let decided: Vec<&str> = events
            .iter()
            .filter_map(|event| event["event"].as_str())
            .filter(|name| *name == "extended" || *name == "extension_denied")
            .collect();
        assert_eq!(decided.len(), 1, "round {round}: {decided:?} {outcomes:?}");
        let stored = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        let expected_window = if decided[0] == "extended" { 3600 } else { 1800 };
        assert_eq!(window_secs(&stored), expected_window, "round {round}");
        for outcome in &outcomes {
            assert!(
                outcome.is_ok() || *outcome == Err("TRANSITION_NOT_ALLOWED".to_owned()),
                "round {round}: {outcomes:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_extends_and_exits_3_when_the_rules_refuse() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.extra_rules = r#"@id("short-extensions-only") @reason("extensions are at most 15 minutes")
        forbid (principal, action == GrantBroker::Action::"extend", resource)
        when { context.extension_seconds > 900 };"#
        .into();
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let grant = approved_staging_grant(&mut client, "cli-1").await;
    let extend_cli = |by: &str| {
        vec![
            "extend".to_owned(),
            grant.id.clone(),
            "--by".into(),
            by.into(),
            "--justification".into(),
            "overran".into(),
            "--server".into(),
            server.url(),
            "--token".into(),
            PORTAL_TOKEN.into(),
        ]
    };
    let output = run_cli(extend_cli("10m")).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("extension 1 +600s: approved, ends"), "{stdout}");
    let output = run_cli(extend_cli("20m")).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("extension 2 of grant") && stderr.contains("extensions are at most 15 minutes"),
        "{stderr}"
    );
    let mut json_args = extend_cli("5m");
    json_args.push("--json".into());
    let output = run_cli(json_args).await;
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The Grant message by the proto3 JSON mapping: enums by name, the decision as its message.
    assert_eq!(
        printed["extensions"][2]["state"], "EXTENSION_STATE_APPROVED",
        "{printed}"
    );
    assert_eq!(printed["extensions"][1]["state"], "EXTENSION_STATE_DENIED", "{printed}");
    assert_eq!(printed["extensions"][1]["additional_duration"], "1200s", "{printed}");
    assert_eq!(
        printed["extensions"][1]["decision"]["policy_ids"],
        serde_json::json!(["short-extensions-only"])
    );
}
