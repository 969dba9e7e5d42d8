//! The core's promises, tried the way an attacker or a careless client would: a grant issued any
//! number of times stays readable, each issuance is bounded and decided again, a record edited in
//! Redis issues nothing, and every error reaches the caller whole, whatever the input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

async fn setup(settings: impl FnOnce(&mut Settings)) -> (RedisServer, FakeSts, Server, Client) {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut config = Settings::new(redis.url(), sts.url.clone());
    settings(&mut config);
    let server = Server::start(&config).await;
    let client = server.client().await;
    (redis, sts, server, client)
}

async fn get(client: &mut Client, id: &str) -> proto::Grant {
    client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: id.to_owned() }))
        .await
        .unwrap()
        .into_inner()
}

/// Size of an error as it crosses the wire: `grpc-message` (percent-encoded, at most 3 bytes a
/// byte) and `grpc-status-details-bin` (base64).
fn wire_size(status: &tonic::Status) -> usize {
    status.message().len() * 3 + status.details().len().div_ceil(3) * 4
}

#[tokio::test]
async fn a_grant_retried_any_number_of_times_stays_readable_until_its_issuance_cap() {
    let (_redis, sts, _server, mut client) = setup(|s| s.max_issuances_per_grant = 12).await;
    let mut keys = Vec::new();
    for attempt in 1..=12u32 {
        let response = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request("loop")))
            .await
            .unwrap_or_else(|status| panic!("attempt {attempt}: {status:?}"))
            .into_inner();
        keys.push(response.credentials.unwrap().access_key_id);
        // Read back after every issuance: 1, 2 (once unreadable), 3, ... N.
        let grant = get(&mut client, &response.grant.unwrap().id).await;
        assert_eq!(grant.issuance_count, attempt);
        let shown: Vec<_> = grant.issuances.iter().map(|i| i.access_key_id.clone()).collect();
        let recent = keys.len().saturating_sub(10);
        assert_eq!(shown, keys[recent..], "the last ten, oldest first");
        let listed = newest_grant(&mut client).await;
        assert_eq!((listed.issuance_count, listed.issuances.len()), (attempt, shown.len()));
    }

    // The 13th retry would be the 13th STS call for one grant: refused, STS not called.
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("loop")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        "ISSUANCE_LIMIT_REACHED",
        "made 12 credential issuances",
    );
    let info = status.get_error_details().error_info().unwrap().clone();
    assert_eq!(
        (info.metadata["issuances"].as_str(), info.metadata["limit"].as_str()),
        ("12", "12")
    );
    assert_eq!(sts.calls().len(), 12);
    // And the grant still reads.
    assert_eq!(newest_grant(&mut client).await.issuance_count, 12);
}

#[tokio::test]
async fn concurrent_retries_never_exceed_the_issuance_cap() {
    let (_redis, sts, server, mut client) = setup(|s| s.max_issuances_per_grant = 3).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .request_access(authed(PORTAL_TOKEN, read_logs_request("race")))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let issued = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(issued, 3, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| *o == Ok(()) || *o == Err(Code::ResourceExhausted)),
        "{outcomes:?}"
    );
    assert_eq!(
        sts.calls().len(),
        3,
        "no STS call past the cap, however the retries race"
    );
    assert_eq!(newest_grant(&mut client).await.issuance_count, 3);
}

#[tokio::test]
async fn every_issuance_asks_the_rules_again() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let first = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("job-9")))
        .await
        .unwrap()
        .into_inner();
    assert!(first.credentials.is_some());
    drop(server);

    // The operator adds a rule after the grant was approved: the next retry issues nothing.
    let mut stricter = settings.clone();
    stricter.extra_rules = r#"
        @id("vendor-x-suspended")
        @reason("vendor-x is suspended pending review")
        forbid (principal, action, resource) when { context.grantee == GrantBroker::Grantee::"vendor-x" };
    "#
    .to_owned();
    let server = Server::start(&stricter).await;
    let mut client = server.client().await;
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("job-9")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::PermissionDenied,
        "RULES_REFUSE_ISSUANCE",
        "vendor-x is suspended",
    );
    let info = status.get_error_details().error_info().unwrap().clone();
    assert_eq!(info.metadata["policy_ids"], "vendor-x-suspended");
    assert_eq!(sts.calls().len(), 1, "no STS call for the refused issuance");
    drop(server);

    // A rule that withdraws automatic approval stops an automatically approved grant too.
    let mut manual = settings.clone();
    manual.extra_rules = r#"
        @id("no-more-auto-approval")
        forbid (principal, action == GrantBroker::Action::"auto_approve", resource);
    "#
    .to_owned();
    let server = Server::start(&manual).await;
    let mut client = server.client().await;
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("job-9")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::PermissionDenied,
        "RULES_REFUSE_ISSUANCE",
        "no longer approve it automatically",
    );
    assert_eq!(sts.calls().len(), 1);
}

/// Someone with write access to Redis widens the stored scope of an approved grant: the record
/// fails its seal, so nothing is issued from it (STORE_TAMPERED, nothing reaches STS, nothing is
/// written on it), the broker logs and counts it, and an auditor reading the log sees each of
/// the grant's entries as `tampered`.
#[tokio::test]
async fn a_scope_edited_in_redis_issues_nothing_and_the_audit_log_shows_it() {
    let logs = capture_logs();
    let (redis, sts, _server, mut client) = setup(|_| {}).await;
    let grant = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("tamper")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();

    // Same length, so the record still decodes; the policy digest is edited too (it is in the
    // record), which no longer matters: the seal covers both.
    let mut connection = redis.connection().await;
    let key = format!("gb:g:{{{}}}", grant.id);
    let record: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
    let (from, to) = (&b"acme-logs/vendor-x/*"[..], &b"acme-logs/**********"[..]);
    let at = record.windows(from.len()).position(|window| window == from).unwrap();
    let mut widened = record.clone();
    widened[at..at + from.len()].copy_from_slice(to);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&widened)
        .arg("KEEPTTL")
        .query_async(&mut connection)
        .await
        .unwrap();

    for attempt in 0..3 {
        let status = client
            .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
            .await
            .unwrap_err();
        assert_status(&status, Code::DataLoss, "STORE_TAMPERED", "fails its seal");
        assert!(status.message().contains(&grant.id), "{attempt}: {status:?}");
    }
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("tamper")))
        .await
        .unwrap_err();
    assert_status(&status, Code::DataLoss, "STORE_TAMPERED", "fails its seal");
    let status = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
        .await
        .unwrap_err();
    assert_status(&status, Code::DataLoss, "STORE_TAMPERED", "fails its seal");
    assert_eq!(sts.calls().len(), 1, "the edited scope never reached STS");
    let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
    assert_eq!(stored, widened, "nothing written on a tampered record");

    let events = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                grant_id: grant.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!events.is_empty());
    for event in &events {
        assert_eq!(event.event, "tampered", "{event:?}");
        assert_eq!(event.grant_id, grant.id);
        assert!(event.event_json.contains("fails its seal"), "{}", event.event_json);
        assert!(event.integrity.is_empty());
    }
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("a grant record fails its seal") && logs.contains(&grant.id),
        "logged"
    );
}

/// 20 actions × 20 resources, each outside the ceiling: 400 violations, each echoing two values.
fn far_outside_the_ceiling(resource_len: usize) -> proto::RequestAccessRequest {
    let mut request = read_logs_request("");
    request.scopes = vec![proto::Scope {
        actions: (0..20).map(|i| format!("s3:PutObject{i:02}")).collect(),
        resources: (0..20)
            .map(|i| format!("arn:aws:s3:::other-{i:02}/{}", "x".repeat(resource_len)))
            .collect(),
    }];
    request
}

#[tokio::test]
async fn errors_stay_small_and_readable_whatever_the_input() {
    let (_redis, sts, server, mut client) = setup(|_| {}).await;

    // Within the bounds but wrong everywhere: a readable error under 8 KiB, the rest counted.
    let request = far_outside_the_ceiling(20);
    let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_REQUEST",
        "400 problems, the first: scopes[0].actions[0]",
    );
    assert!(wire_size(&status) < 8 * 1024, "{} bytes", wire_size(&status));
    let violations = status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .clone();
    assert!(violations.len() <= 21, "{}", violations.len());
    assert!(
        violations
            .last()
            .unwrap()
            .description
            .ends_with("more problems not listed"),
        "{:?}",
        violations.last()
    );
    assert!(violations[0].description.contains("outside the target's ceiling"));

    // One resource of 200,000 characters: larger than any valid request, so never decoded.
    let mut request = read_logs_request("");
    request.scopes[0].resources = vec![format!("arn:aws:s3:::acme-logs/{}", "y".repeat(200_000))];
    let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );
    assert!(wire_size(&status) < 1024, "{} bytes", wire_size(&status));

    // 3,000 characters decode, and break the resource bound: named, not echoed.
    let mut request = read_logs_request("");
    request.scopes[0].resources = vec![format!("arn:aws:s3:::acme-logs/{}", "y".repeat(3_000))];
    let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_REQUEST",
        "scopes[0].resources[0]: must be at most 2048 characters",
    );
    assert!(wire_size(&status) < 1024, "{} bytes", wire_size(&status));

    // 2,000 characters that are no ARN: the value is echoed, cut to 128 characters.
    let mut request = read_logs_request("");
    request.scopes[0].resources = vec!["z".repeat(2_000)];
    let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST", "...(+1872 chars)");
    assert!(wire_size(&status) < 2048, "{} bytes", wire_size(&status));

    // The largest message the server decodes, every field at its bound and wrong.
    let mut request = read_logs_request(&"r".repeat(128));
    request.justification = "\u{1F600}".repeat(2_000);
    request.requester = "\u{202E}".repeat(256);
    request.grantee = "\u{200B}".repeat(256);
    request.ticket = "t".repeat(128);
    request.scopes = (0..16)
        .map(|_| proto::Scope {
            actions: vec!["s3:Nope".to_owned(); 6],
            resources: vec!["arn:aws:s3:::z".to_owned(); 6],
        })
        .collect();
    let size = request.encoded_len();
    let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        wire_size(&status) < 8 * 1024,
        "{} bytes for a {size}-byte request",
        wire_size(&status)
    );
    assert_eq!(sts.calls().len(), 0);

    // Past the decoding limit: refused before the broker sees it.
    let mut huge = read_logs_request("");
    huge.justification = "j".repeat(grant_broker::grpc::MAX_REQUEST_BYTES);
    let status = client
        .request_access(authed(PORTAL_TOKEN, huge.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Unauthenticated, the same body is not even decoded: the answer is about the token.
    let status = client.request_access(tonic::Request::new(huge)).await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", "authorization");
    drop(server);
}

#[tokio::test]
async fn invisible_formatting_cannot_disguise_who_asked_or_for_whom() {
    let (_redis, sts, _server, mut client) = setup(|_| {}).await;
    for (field, value) in [
        ("requester", "alice\u{202E}moc.elpmaxe@"),
        ("grantee", "vendor\u{200B}-x"),
        ("grantee", "vendor-\u{2066}x\u{2069}"),
        ("justification", "fix\u{FEFF}"),
    ] {
        let mut request = read_logs_request("");
        match field {
            "requester" => request.requester = value.to_owned(),
            "grantee" => request.grantee = value.to_owned(),
            _ => request.justification = value.to_owned(),
        }
        let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_REQUEST",
            "invisible formatting",
        );
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    assert_eq!(sts.calls().len(), 0);
}
