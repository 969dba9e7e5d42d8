//! What operators and tools see besides the API: health, reflection, the command-line client and
//! `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

async fn health(channel: Channel, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = HealthClient::new(channel).check(request).await.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_for_health(channel: &Channel, service: &str, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if health(channel.clone(), service).await == Some(wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} never became {wanted:?}");
}

#[tokio::test]
async fn readiness_follows_redis_through_an_outage_and_liveness_stays() {
    let redis = RedisServer::start();
    let server = Server::start(&Settings::new(redis.url(), "http://127.0.0.1:9".into())).await;
    let channel = Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    wait_for_health(&channel, "grantbroker.v1.GrantBroker", ServingStatus::Serving).await;
    wait_for_health(&channel, "", ServingStatus::Serving).await;
    wait_for_health(&channel, "readiness", ServingStatus::Serving).await;
    wait_for_health(&channel, "liveness", ServingStatus::Serving).await;
    redis.stop();
    for readiness in ["grantbroker.v1.GrantBroker", "", "readiness"] {
        wait_for_health(&channel, readiness, ServingStatus::NotServing).await;
    }
    // Not ready is not dead: a restart would not bring Redis back.
    assert_eq!(health(channel.clone(), "liveness").await, Some(ServingStatus::Serving));
    // Redis returns: ready again, by itself.
    redis.restart();
    for readiness in ["grantbroker.v1.GrantBroker", "", "readiness"] {
        wait_for_health(&channel, readiness, ServingStatus::Serving).await;
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_advertise_only_the_public_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let redis = RedisServer::start();
    let server = Server::start(&Settings::new(redis.url(), "http://127.0.0.1:9".into())).await;
    let channel = Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let expected = ["grantbroker.v1.GrantBroker", "grpc.health.v1.Health"];

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, expected);

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "grantbroker.v1.GrantBroker".into(),
            ),
        ),
    };
    let mut responses = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a file descriptor response");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_requests_lists_and_prints_credentials_for_aws_tools() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let base = |command: &str| -> Vec<String> {
        vec![
            command.into(),
            "--server".into(),
            server.url(),
            "--token".into(),
            PORTAL_TOKEN.into(),
        ]
    };
    let request = |format: &str| -> Vec<String> {
        let mut args = base("request");
        args.extend(
            [
                "--target",
                "dev-logs-read",
                "--action",
                "s3:GetObject",
                "--resource",
                "arn:aws:s3:::acme-logs/vendor-x/*",
                "--duration",
                "30m",
                "--requester",
                "alice",
                "--grantee",
                "vendor-x",
                format,
            ]
            .map(String::from),
        );
        args
    };

    let output = run_cli(request("--credential-process")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["Version"], 1);
    assert_eq!(document["SecretAccessKey"], fake_secret(0));
    assert_eq!(document["SessionToken"], fake_token(0));
    assert!(document["AccessKeyId"].as_str().unwrap().starts_with("ASIAFAKE"));
    assert!(document["Expiration"].as_str().unwrap().ends_with('Z'));

    let output = run_cli(request("--export")).await;
    let exports = text(&output.stdout);
    assert!(
        exports.contains(&format!("export AWS_SECRET_ACCESS_KEY={}\n", fake_secret(1))),
        "{exports}"
    );
    assert!(exports.contains("export AWS_REGION=eu-west-1\n"), "{exports}");

    let mut listing = base("list");
    listing.push("--json".into());
    let output = run_cli(listing).await;
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let grants = listed["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0]["state"], "GRANT_STATE_APPROVED");
    assert!(
        !text(&output.stdout).contains(&fake_secret(0)),
        "listings carry no secrets"
    );

    let mut get = base("get");
    get.push(grants[1]["id"].as_str().unwrap().to_owned());
    let output = run_cli(get).await;
    assert!(
        text(&output.stdout).contains("approved by `auto-approve-nonprod-read-only`"),
        "{}",
        text(&output.stdout)
    );

    // The whole trail, one line per event; with --json the GetGrantHistory response.
    let mut history = base("history");
    history.push(grants[1]["id"].as_str().unwrap().to_owned());
    let output = run_cli(history.clone()).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    let events: Vec<&str> = printed
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2).filter(|_| line.starts_with("   ")))
        .collect();
    assert_eq!(events, ["requested", "issuing", "issued"], "{printed}");
    history.push("--json".into());
    let output = run_cli(history).await;
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["grant"]["id"], grants[1]["id"]);
    assert_eq!(printed["events"][0]["cursor"], 1, "{printed}");
    assert_eq!(printed["events"][0]["event"], "requested");
    let issued: serde_json::Value = serde_json::from_str(printed["events"][2]["event_json"].as_str().unwrap()).unwrap();
    assert_eq!(issued["access_key_id"], document["AccessKeyId"]);
    assert!(!text(&output.stdout).contains(&fake_secret(0)), "no secrets");

    // A bad request prints the code and each field violation, and exits non-zero.
    let mut bad = request("--export");
    let at = bad.iter().position(|a| a == "30m").unwrap();
    bad[at] = "5m".into();
    let output = run_cli(bad).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("InvalidArgument"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("\n  duration: must be 900-43200 seconds"),
        "{}",
        text(&output.stderr)
    );
}

/// 20 actions × 20 resources outside the ceiling: 400 problems. The CLI (a hyper client with its
/// default header limits) still gets the whole error, and prints what fits with a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_an_error_about_hundreds_of_problems() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut args: Vec<String> = [
        "request",
        "--server",
        &server.url(),
        "--token",
        PORTAL_TOKEN,
        "--target",
        "dev-logs-read",
        "--requester",
        "alice",
        "--grantee",
        "vendor-x",
    ]
    .map(String::from)
    .to_vec();
    for i in 0..20 {
        args.extend(["--action".to_owned(), format!("s3:PutObject{i:02}")]);
        args.extend([
            "--resource".to_owned(),
            format!("arn:aws:s3:::other-{i:02}/{}", "x".repeat(20)),
        ]);
    }
    let output = run_cli(args).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("InvalidArgument: invalid request: 400 problems, the first: scopes[0].actions[0]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n  scopes[0].actions[0]: `s3:PutObject00` on `arn:aws:s3:::other-00/"),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("more problems not listed"), "{stderr}");
    assert!(stderr.len() < 8 * 1024, "{} bytes", stderr.len());
    assert!(sts.calls().is_empty());
}

/// A pipeline waits for a human with `grant-broker watch --until-approved`: it prints each
/// change as it comes and exits 0 once the grant is approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_waits_for_approval_with_the_cli() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let waiting = run_cli(vec![
        "watch".into(),
        grant.id.clone(),
        "--until-approved".into(),
        "--server".into(),
        server.url(),
        "--token".into(),
        PORTAL_TOKEN.into(),
    ]);
    let waiting = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "it waits while the grant is pending");
    for approver in ["bob@example.com", "carol@example.com"] {
        client
            .approve_grant(authed(
                APPROVALS_TOKEN,
                proto::ApproveGrantRequest {
                    id: grant.id.clone(),
                    approver: approver.into(),
                    comment: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    let output = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<String> = text(&output.stdout).lines().map(str::to_owned).collect();
    // Each event with the grant as it is when the watcher reads it: the second approval's line
    // may already show it approved, and the watch stops there.
    assert!((2..=4).contains(&lines.len()), "{lines:?}");
    assert!(
        lines[0].contains("(now)") && lines[0].contains("pending_approval"),
        "{lines:?}"
    );
    assert!(lines[1].contains("approval_recorded"), "{lines:?}");
    assert!(lines.last().unwrap().contains(" approved"), "{lines:?}");
}

/// Rules tested like code: the shipped sample requests pass against the shipped rules, and a
/// sample whose expectation the rules do not meet fails the check, saying how.
#[tokio::test]
async fn check_config_explains_sample_requests_and_fails_on_a_surprise() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("deploy/dev/grant-broker.toml").display().to_string();
    let samples = root.join("deploy/rules/approval.examples.json");
    let output = run_cli(vec![
        "check-config".into(),
        config.clone(),
        "--explain".into(),
        samples.display().to_string(),
    ])
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("5 case(s), 0 failed"),
        "{}",
        text(&output.stdout)
    );

    let surprised =
        std::fs::read_to_string(&samples)
            .unwrap()
            .replacen(r#""outcome": "deny""#, r#""outcome": "approve""#, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, surprised).unwrap();
    let output = run_cli(vec![
        "check-config".into(),
        config,
        "--explain".into(),
        path.display().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("FAIL  production without a ticket is denied: outcome deny, expected approve"),
        "{stderr}"
    );
    assert!(stderr.contains("5 case(s), 1 failed"), "{stderr}");
}

#[tokio::test]
async fn check_config_accepts_the_shipped_configs_and_lists_every_problem() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for config in ["deploy/dev/grant-broker.toml", "deploy/grant-broker.example.toml"] {
        let output = run_cli(vec!["check-config".into(), root.join(config).display().to_string()]).await;
        assert!(output.status.success(), "{config}: {}", text(&output.stderr));
        assert!(text(&output.stdout).contains(": ok ("), "{}", text(&output.stdout));
    }

    // Valid, with a ceiling wider than it looks: `iam:*` on every resource. A warning by key,
    // and still exit 0.
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.toml");
    std::fs::write(
        &wide,
        config_text(&Settings::new(
            "redis://127.0.0.1:1".into(),
            "http://127.0.0.1:9".into(),
        )),
    )
    .unwrap();
    let output = run_cli(vec!["check-config".into(), wide.display().to_string()]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("warning: targets[3].ceiling[0].resources[0]: "),
        "{stderr}"
    );
    assert!(
        text(&output.stdout).contains("1 warning(s))"),
        "{}",
        text(&output.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = config_text(&Settings::new(
        "redis://127.0.0.1:1".into(),
        "http://127.0.0.1:9".into(),
    ))
    .replace(
        "max_duration_secs = 3600\nsession_tags = true",
        "max_duration_secs = 99999\nsession_tags = true",
    )
    .replace("region = \"us-east-1\"", "region = \"US East\"");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let output = run_cli(vec!["check-config".into(), path.display().to_string()]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("targets[0].max_duration_secs: must be 900-43200"),
        "{stderr}"
    );
    assert!(stderr.contains("targets[1].region: must be an AWS region"), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

/// The code and ErrorInfo reason of a call's outcome: `OK` when it succeeded.
fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), error_reason(&status)),
    }
}

/// One rule for every call that names a grant: a grant a caller may not see is NOT_FOUND (as an
/// id that does not exist), one it sees but may not act on is PERMISSION_DENIED with the reason.
/// A grant is seen by the caller that requested it, by auditor and admin callers, and by callers
/// that relay the approvers of its target when it is for people to decide (the pending grant
/// here, not the one approved at once). `authorization.rs` enumerates every call for every role.
#[tokio::test]
async fn who_may_see_and_act_on_a_grant_is_one_rule_for_every_call() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let issued = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("matrix")))
        .await
        .unwrap()
        .into_inner();
    let grant = issued.grant.unwrap().id;
    let key = issued.credentials.unwrap().access_key_id;
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    let unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned();
    let ok = || (Code::Ok, String::new());
    let not_found = || (Code::NotFound, "GRANT_NOT_FOUND".to_owned());
    let denied = |reason: &str| (Code::PermissionDenied, reason.to_owned());
    let callers = [PIPELINE_TOKEN, AUDITOR_TOKEN, ADMIN_TOKEN, APPROVALS_TOKEN];

    // Reading: the owner, auditors and admins; nobody else learns the grant exists.
    for (token, expected) in callers.iter().zip([not_found(), ok(), ok(), not_found()]) {
        for id in [&grant, &unknown] {
            let expected = if id == &unknown { not_found() } else { expected.clone() };
            let get = client
                .get_grant(authed(token, proto::GetGrantRequest { id: id.clone() }))
                .await;
            assert_eq!(outcome(get), expected, "GetGrant {id} by {token}");
            let watch = client
                .watch_grant(authed(
                    token,
                    proto::WatchGrantRequest {
                        id: id.clone(),
                        after_event: None,
                    },
                ))
                .await;
            assert_eq!(outcome(watch), expected, "WatchGrant {id} by {token}");
            let history = client
                .get_grant_history(authed(token, proto::GetGrantHistoryRequest { id: id.clone() }))
                .await;
            assert_eq!(outcome(history), expected, "GetGrantHistory {id} by {token}");
        }
        let find = client
            .find_grant_by_access_key(authed(
                token,
                proto::FindGrantByAccessKeyRequest {
                    access_key_id: key.clone(),
                },
            ))
            .await;
        let expected = if expected == not_found() {
            (Code::NotFound, "ACCESS_KEY_NOT_FOUND".to_owned())
        } else {
            expected
        };
        assert_eq!(outcome(find), expected, "FindGrantByAccessKey by {token}");
    }

    // Acting as the owner: those who see it are refused, the others do not see it.
    for (token, expected) in callers.iter().zip([
        not_found(),
        denied("NOT_GRANT_OWNER"),
        denied("NOT_GRANT_OWNER"),
        not_found(),
    ]) {
        let issue = client.issue_credentials(authed(token, issue_for(&grant))).await;
        assert_eq!(outcome(issue), expected, "IssueCredentials by {token}");
        let extend = client
            .extend_grant(authed(
                token,
                proto::ExtendGrantRequest {
                    id: grant.clone(),
                    additional_duration: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                    justification: "more".into(),
                    request_id: String::new(),
                },
            ))
            .await;
        assert_eq!(outcome(extend), expected, "ExtendGrant by {token}");
        let cancel = client
            .cancel_grant(authed(
                token,
                proto::CancelGrantRequest {
                    id: grant.clone(),
                    reason: "mine now".into(),
                },
            ))
            .await;
        assert_eq!(outcome(cancel), expected, "CancelGrant by {token}");
        let cancel = client
            .cancel_grant(authed(
                token,
                proto::CancelGrantRequest {
                    id: unknown.clone(),
                    reason: "x".into(),
                },
            ))
            .await;
        assert_eq!(
            outcome(cancel),
            not_found(),
            "CancelGrant of an unknown grant by {token}"
        );
    }

    // Revoking: the owner and admins; an approval portal through a person who may approve it.
    let revoke = |id: &str, revoker: &str| proto::RevokeGrantRequest {
        id: id.to_owned(),
        reason: "matrix".into(),
        revoker: revoker.to_owned(),
    };
    for (token, revoker, expected) in [
        (PIPELINE_TOKEN, "", not_found()),
        (PIPELINE_TOKEN, "bob@example.com", not_found()),
        (AUDITOR_TOKEN, "", denied("NOT_GRANT_OWNER")),
        // It sees the pending grant (its approvers decide it), and may revoke only through one.
        (APPROVALS_TOKEN, "", denied("NOT_GRANT_OWNER")),
        (APPROVALS_TOKEN, "mallory@example.com", denied("APPROVER_NOT_ELIGIBLE")),
    ] {
        let result = client.revoke_grant(authed(token, revoke(&pending, revoker))).await;
        assert_eq!(outcome(result), expected, "RevokeGrant by {token} naming {revoker:?}");
        let result = client.revoke_grant(authed(token, revoke(&unknown, revoker))).await;
        assert_eq!(
            outcome(result),
            not_found(),
            "RevokeGrant of an unknown grant by {token}"
        );
    }

    // Deciding: only callers that relay approvers, for a person the rules let decide.
    for (token, approver, expected) in [
        (PIPELINE_TOKEN, "bob@example.com", denied("CALLER_MAY_NOT_APPROVE")),
        (AUDITOR_TOKEN, "bob@example.com", denied("CALLER_MAY_NOT_APPROVE")),
        (ADMIN_TOKEN, "bob@example.com", denied("CALLER_MAY_NOT_APPROVE")),
        (APPROVALS_TOKEN, "mallory@example.com", denied("APPROVER_NOT_ELIGIBLE")),
        (APPROVALS_TOKEN, "alice@example.com", denied("SELF_APPROVAL")),
    ] {
        let result = client.approve_grant(authed(token, approve(&pending, approver))).await;
        assert_eq!(outcome(result), expected, "ApproveGrant by {token} for {approver}");
        let result = client
            .deny_grant(authed(
                token,
                proto::DenyGrantRequest {
                    id: pending.clone(),
                    approver: approver.to_owned(),
                    reason: "no".into(),
                },
            ))
            .await;
        let expected = if approver == "alice@example.com" {
            ok()
        } else {
            expected
        };
        assert_eq!(outcome(result), expected, "DenyGrant by {token} for {approver}");
    }
    let result = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&unknown, "bob@example.com")))
        .await;
    assert_eq!(outcome(result), not_found());

    // The owner and an admin do what they may.
    let result = client.issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant))).await;
    assert_eq!(outcome(result), ok());
    let result = client.revoke_grant(authed(ADMIN_TOKEN, revoke(&grant, ""))).await;
    assert_eq!(outcome(result), ok());
}

/// SIGTERM (Kubernetes stopping a pod): every stream ends at once with UNAVAILABLE telling the
/// client to reconnect, calls still in flight get at most `drain_timeout_secs`, and the process
/// exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_and_the_process_within_its_drain_timeout() {
    let redis = RedisServer::start();
    // Every STS call hangs far longer than the drain allows.
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_secs(60))).await;
    let port = free_port();
    let config = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 2\n{}",
        config_text(&Settings::new(redis.url(), sts.url.clone()))
    );
    std::fs::write(config.path(), text).unwrap();
    let mut broker = std::process::Command::new(env!("CARGO_BIN_EXE_grant-broker"))
        .args(["serve", "--config"])
        .arg(config.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "grant-broker", &mut broker);
    let mut client = proto::grant_broker_client::GrantBrokerClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let mut grant_stream = client
        .watch_grant(authed(
            PORTAL_TOKEN,
            proto::WatchGrantRequest {
                id: pending.id.clone(),
                after_event: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(grant_stream.message().await.unwrap().is_some(), "the grant as it is");
    let mut audit_stream = client
        .watch_audit_events(authed(
            AUDITOR_TOKEN,
            proto::WatchAuditEventsRequest {
                after_cursor: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // A call stuck in STS when the signal comes.
    let mut stuck = client.clone();
    let in_flight = tokio::spawn(async move {
        stuck
            .request_access(authed(PORTAL_TOKEN, read_logs_request("stuck")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &broker.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Whatever was recorded before the signal still arrives; then the end.
    async fn end_of<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .unwrap()
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => return status,
            }
        }
    }
    for status in [end_of(&mut grant_stream).await, end_of(&mut audit_stream).await] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("reconnect"), "{status:?}");
        assert!(status.message().contains("last cursor"), "{status:?}");
    }
    // The process exits by itself, once the drain timeout has passed for the stuck call.
    let exited = loop {
        if let Some(status) = broker.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    // No answer came from the broker: the client sees its connection end (tonic: UNKNOWN,
    // "transport error"), never credentials.
    let status = outcome.expect_err("the stuck call cannot have succeeded");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("transport error"), "{status:?}");
}
