//! The grant's life after the request: credentials issued again by grant id (also as an AWS
//! credential_process), and cancellation, racing issuance and itself across two broker
//! processes. Real server, real Redis, moto or the fake STS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;
use tonic_types::StatusExt;

fn issue(grant_id: &str) -> proto::IssueCredentialsRequest {
    proto::IssueCredentialsRequest {
        id: grant_id.to_owned(),
        mfa_serial: String::new(),
        mfa_code: String::new(),
    }
}

fn cancel(id: &str, reason: &str) -> proto::CancelGrantRequest {
    proto::CancelGrantRequest {
        id: id.to_owned(),
        reason: reason.to_owned(),
    }
}

async fn approved_grant(client: &mut Client) -> proto::Grant {
    client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}

#[tokio::test]
async fn credentials_are_issued_again_by_grant_id_with_every_check_of_an_issuance() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = approved_grant(&mut client).await;

    let response = client
        .issue_credentials(authed(PORTAL_TOKEN, issue(&grant.id)))
        .await
        .unwrap()
        .into_inner();
    let credentials = response.credentials.unwrap();
    let grant = response.grant.unwrap();
    assert_eq!(grant.issuance_count, 2);
    assert_eq!(grant.issuances[1].access_key_id, credentials.access_key_id);
    assert_eq!(sts.calls().len(), 2);
    let events: Vec<String> = redis
        .events(&grant.id)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["requested", "issuing", "issued", "issuing", "issued"]);

    // Another caller's grant does not exist for it; a pending grant issues nothing.
    let status = client
        .issue_credentials(authed(PIPELINE_TOKEN, issue(&grant.id)))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", &grant.id);
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue(&pending.id)))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "GRANT_NOT_ISSUABLE",
        "is pending_approval",
    );

    // Bad input: named by field.
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue("not-a-grant")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["id"]);
    let mut only_code = issue(&grant.id);
    only_code.mfa_code = "123456".into();
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, only_code))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["mfa_serial"]);
    assert_eq!(sts.calls().len(), 2);
}

#[tokio::test]
async fn a_target_that_requires_mfa_needs_it_at_every_issuance() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let mut request = read_logs_request("");
    request.target = "staging-ec2-mfa".into();
    request.scopes = vec![proto::Scope {
        actions: vec!["ec2:DescribeInstances".into()],
        resources: vec!["*".into()],
    }];
    request.mfa_serial = "arn:aws:iam::123456789012:mfa/alice".into();
    request.mfa_code = "123456".into();
    let grant = client
        .request_access(authed(PORTAL_TOKEN, request))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();

    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue(&grant.id)))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST", "requires MFA");
    let mut with_mfa = issue(&grant.id);
    with_mfa.mfa_serial = "arn:aws:iam::123456789012:mfa/alice".into();
    with_mfa.mfa_code = "654321".into();
    client.issue_credentials(authed(PORTAL_TOKEN, with_mfa)).await.unwrap();
    let calls = sts.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["TokenCode"], "654321", "the fresh code reaches STS");
}

#[tokio::test]
async fn a_cancelled_grant_issues_nothing_and_stays_cancelled() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;

    // Pending: cancelled by its caller, with the reason in the audit trail.
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let status = client
        .cancel_grant(authed(PIPELINE_TOKEN, cancel(&pending.id, "")))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", &pending.id);
    let cancelled = client
        .cancel_grant(authed(PORTAL_TOKEN, cancel(&pending.id, "vendor no longer needs it")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, i32::from(proto::GrantState::Cancelled));
    let last = redis.events(&pending.id).await.pop().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["reason"].as_str()),
        (Some("cancelled"), Some("vendor no longer needs it"))
    );
    assert_eq!(last["caller"], "vendor-portal");

    // Once, twice: the second is refused, naming the state.
    let status = client
        .cancel_grant(authed(PORTAL_TOKEN, cancel(&pending.id, "")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "cannot cancel a grant that is cancelled",
    );
    let failure = status.get_error_details().precondition_failure().unwrap().clone();
    assert_eq!(failure.violations[0].description, "grant is GRANT_STATE_CANCELLED");

    // Approved: after cancellation neither a retry nor IssueCredentials mints anything.
    let approved = approved_grant(&mut client).await;
    client
        .cancel_grant(authed(PORTAL_TOKEN, cancel(&approved.id, "")))
        .await
        .unwrap();
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue(&approved.id)))
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "GRANT_NOT_ISSUABLE", "is cancelled");
    assert_eq!(sts.calls().len(), 1, "only the issuance before the cancellation");

    // Denied grants are final.
    let mut unticketed = production_request();
    unticketed.ticket.clear();
    let denied = client
        .request_access(authed(PORTAL_TOKEN, unticketed))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let status = client
        .cancel_grant(authed(PORTAL_TOKEN, cancel(&denied.id, "")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "that is denied",
    );

    // A reason that would disguise the audit trail is refused.
    let status = client
        .cancel_grant(authed(PORTAL_TOKEN, cancel(&denied.id, "done\u{202E}")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_racing_issuance_and_itself_across_two_brokers_has_one_winner() {
    let redis = RedisServer::start();
    // A slow STS keeps issuances in flight while the cancellations land.
    let sts = FakeSts::start(StsBehaviour::Delay(std::time::Duration::from_millis(150))).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let (first, second) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = first.client().await;
    let grant = approved_grant(&mut client).await;

    let mut tasks = Vec::new();
    for n in 0..6 {
        let mut client = if n % 2 == 0 {
            first.client().await
        } else {
            second.client().await
        };
        let id = grant.id.clone();
        tasks.push(tokio::spawn(async move {
            if n < 4 {
                client
                    .issue_credentials(authed(PORTAL_TOKEN, issue(&id)))
                    .await
                    .map(|response| Some(response.into_inner().credentials.unwrap().access_key_id))
                    .map_err(|status| error_reason(&status))
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                client
                    .cancel_grant(authed(PORTAL_TOKEN, cancel(&id, "race")))
                    .await
                    .map(|_| None)
                    .map_err(|status| error_reason(&status))
            }
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let cancels = &outcomes[4..];
    assert_eq!(
        cancels.iter().filter(|o| o.is_ok()).count(),
        1,
        "exactly one cancellation wins: {cancels:?}"
    );
    assert!(
        cancels.iter().any(|o| *o == Err("TRANSITION_NOT_ALLOWED".to_owned())),
        "{cancels:?}"
    );

    // Every key handed out was recorded before the cancellation; none after it.
    let returned: Vec<String> = outcomes[..4].iter().filter_map(|o| o.clone().ok().flatten()).collect();
    let events = redis.events(&grant.id).await;
    let cancelled_at = events.iter().position(|e| e["event"] == "cancelled").unwrap();
    for key in &returned {
        let issued_at = events
            .iter()
            .position(|e| e["event"] == "issued" && e["access_key_id"] == key.as_str())
            .unwrap();
        assert!(issued_at < cancelled_at, "{key} was recorded after the cancellation");
    }
    assert!(events[cancelled_at..].iter().all(|e| e["event"] != "issued"));
    // Every session STS made is accounted for: handed out, or discarded in the audit trail.
    let discarded = events.iter().filter(|e| e["event"] == "issue_discarded").count();
    assert_eq!(sts.calls().len(), 1 + returned.len() + discarded, "{events:?}");
    assert!(
        discarded > 0,
        "the slow STS kept some issuances in flight past the cancellation"
    );
    for outcome in &outcomes[..4] {
        if let Err(reason) = outcome {
            assert!(
                ["GRANT_NOT_ISSUABLE", "CREDENTIALS_NOT_RECORDED"].contains(&reason.as_str()),
                "{reason}"
            );
        }
    }
}

/// The AWS SDKs' own credential_process, pointing at `grant-broker issue`: boto3 (installed with
/// moto) gets credentials for a grant approved earlier and uses them against moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_sdk_gets_credentials_through_credential_process() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(python.exists(), "scripts/test installs moto (and boto3) into .venv");
    let redis = RedisServer::start();
    let moto = Moto::start();
    let server = Server::start(&Settings::new(redis.url(), moto.url.clone())).await;
    let mut client = server.client().await;
    let grant = approved_grant(&mut client).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile vendor]\nregion = eu-west-1\ncredential_process = {} issue {} --server {} --token {} --credential-process\n",
            env!("CARGO_BIN_EXE_grant-broker"),
            grant.id,
            server.url(),
            PORTAL_TOKEN
        ),
    )
    .unwrap();
    let script = format!(
        "import boto3; print(boto3.Session(profile_name='vendor').client('sts', endpoint_url='{}').get_caller_identity()['Arn'])",
        moto.url
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &script])
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let arn = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        arn.trim(),
        format!(
            "arn:aws:sts::123456789012:assumed-role/vendor-logs-read/gb-{}",
            grant.id
        )
    );
    let stored = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.issuance_count, 2, "the credential_process issuance is recorded");
}
