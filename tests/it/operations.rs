//! Operating the broker as an SRE would: telemetry at a real OTLP receiver, the request id, load
//! shedding, deadlines, reloading the configuration, and shutting down with calls in flight.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// A W3C trace context as a portal would send it: the trace and the portal's own span.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn traced<T>(token: &str, message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = authed(token, message);
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01").parse().unwrap(),
    );
    metadata.insert("x-request-id", request_id.parse().unwrap());
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The broker exports to a collector: the server span continues the portal's trace, the
/// rules, Redis and STS are its children, the metrics arrive with their names and attributes,
/// and nothing the collector received holds a secret. The exporters' schedules are far longer
/// than the test: what arrives was flushed at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_receives_the_callers_trace_the_metrics_and_no_secret() {
    let (collector, endpoint) = Collector::start().await;
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let mut broker = BrokerProcess::start(
        &settings,
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "grant-broker-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    );
    let mut client = broker.client().await;
    let response = client
        .request_access(traced(PORTAL_TOKEN, read_logs_request("otel-1"), "portal-req-17"))
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "portal-req-17");
    let issued = response.into_inner();
    let credentials = issued.credentials.clone().unwrap();
    let refused = client
        .get_grant(traced(
            PORTAL_TOKEN,
            proto::GetGrantRequest {
                id: "not-a-grant-id".into(),
            },
            "portal-req-18",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let line = broker
        .wait_for_log(&["call finished", "portal-req-17"], Duration::from_secs(5))
        .await;
    broker.signal("TERM");
    assert!(broker.wait_exit(Duration::from_secs(20)).success());

    // The call's log line names the method, the caller, the status, and joins the trace.
    let logged: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(logged["level"], "INFO", "{line}");
    assert_eq!(
        logged["fields"]["method"], "grantbroker.v1.GrantBroker/RequestAccess",
        "{line}"
    );
    assert_eq!(logged["fields"]["caller"], "vendor-portal", "{line}");
    assert_eq!(logged["fields"]["status"], "OK", "{line}");
    let rpc = &logged["spans"][0];
    assert_eq!(rpc["request_id"], "portal-req-17", "{line}");
    assert_eq!(rpc["trace_id"], TRACE_ID, "{line}");
    let logged_span = rpc["span_id"].as_str().unwrap().to_owned();

    let spans = collector.spans();
    let server = spans
        .iter()
        .map(|(service, span)| (service, span))
        .find(|(_, span)| {
            span.name == "grantbroker.v1.GrantBroker/RequestAccess"
                && attribute(span, "request_id").as_deref() == Some("portal-req-17")
        })
        .unwrap_or_else(|| panic!("no server span for the call: {spans:#?}"));
    assert_eq!(server.0, "grant-broker-under-test");
    let server = server.1;
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), PARENT_SPAN_ID);
    // The log line names the very span exported.
    assert_eq!(hex(&server.span_id), logged_span);
    // SPAN_KIND_SERVER
    assert_eq!(server.kind, 2);
    assert_eq!(attribute(server, "rpc.system.name").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(server, "rpc.method").as_deref(),
        Some("grantbroker.v1.GrantBroker/RequestAccess")
    );
    assert_eq!(attribute(server, "rpc.response.status_code").as_deref(), Some("OK"));
    assert_eq!(attribute(server, "caller").as_deref(), Some("vendor-portal"));
    // The call's descendants: every span of its trace below its server span.
    let mut below: std::collections::HashSet<Vec<u8>> = [server.span_id.clone()].into();
    loop {
        let grown: std::collections::HashSet<Vec<u8>> = spans
            .iter()
            .map(|(_, span)| span)
            .filter(|span| span.trace_id == server.trace_id && below.contains(&span.parent_span_id))
            .map(|span| span.span_id.clone())
            .chain(below.iter().cloned())
            .collect();
        if grown.len() == below.len() {
            break;
        }
        below = grown;
    }
    let in_call: Vec<_> = spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.span_id != server.span_id && below.contains(&span.span_id))
        .collect();
    let named = |name: &str| in_call.iter().filter(|span| span.name == name).count();
    // Once: an issuance right after its decision is not decided again.
    assert_eq!(named("rules decide"), 1, "{in_call:#?}");
    assert!(named("reserve") >= 1 && named("change") >= 1, "{in_call:#?}");
    let assume = in_call
        .iter()
        .find(|span| span.name == "STS/AssumeRole")
        .unwrap_or_else(|| panic!("no STS span: {in_call:#?}"));
    // SPAN_KIND_CLIENT
    assert_eq!(assume.kind, 3);
    assert_eq!(attribute(assume, "rpc.system.name").as_deref(), Some("aws-api"));
    assert_eq!(attribute(assume, "rpc.service").as_deref(), Some("STS"));
    assert_eq!(attribute(assume, "cloud.region").as_deref(), Some("eu-west-1"));
    assert!(
        attribute(assume, "aws.request_id").is_some_and(|id| id.starts_with("fake-")),
        "{assume:?}"
    );
    // The refused call: its own span, its status, and the same trace (the same portal span).
    let invalid = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| attribute(span, "request_id").as_deref() == Some("portal-req-18"))
        .unwrap();
    assert_eq!(
        attribute(invalid, "rpc.response.status_code").as_deref(),
        Some("INVALID_ARGUMENT")
    );
    assert_eq!(hex(&invalid.trace_id), TRACE_ID);

    // The metrics, by name, with their attributes.
    let metrics = collector.metrics();
    let points = |name: &str| -> Vec<Vec<(String, String)>> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        metrics
            .iter()
            .filter(|metric| metric.name == name)
            .flat_map(|metric| match &metric.data {
                Some(Data::Histogram(histogram)) => {
                    histogram.data_points.iter().map(|p| p.attributes.clone()).collect()
                }
                Some(Data::Sum(sum)) => sum.data_points.iter().map(|p| p.attributes.clone()).collect(),
                Some(Data::Gauge(gauge)) => gauge.data_points.iter().map(|p| p.attributes.clone()).collect(),
                _ => Vec::new(),
            })
            .map(|attributes| {
                let mut pairs: Vec<(String, String)> = attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
                    .collect();
                pairs.sort();
                pairs
            })
            .collect()
    };
    let pair = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    let calls = points("rpc.server.call.duration");
    for (method, code) in [("RequestAccess", "OK"), ("GetGrant", "INVALID_ARGUMENT")] {
        let wanted = vec![
            pair("rpc.method", &format!("grantbroker.v1.GrantBroker/{method}")),
            pair("rpc.response.status_code", code),
            pair("rpc.system.name", "grpc"),
        ];
        assert!(calls.contains(&wanted), "{wanted:?} not in {calls:?}");
    }
    assert!(
        points("grant_broker.grants").contains(&vec![
            pair("grant_broker.event", "issued"),
            pair("grant_broker.target", "dev-logs-read")
        ]),
        "{:?}",
        points("grant_broker.grants")
    );
    assert!(
        points("grant_broker.decisions")
            .iter()
            .any(|point| point.contains(&pair("grant_broker.decision", "approve"))
                && point.contains(&pair("grant_broker.question", "request"))),
        "{:?}",
        points("grant_broker.decisions")
    );
    assert!(
        points("rpc.client.call.duration").contains(&vec![
            pair("rpc.method", "STS/AssumeRole"),
            pair("rpc.system.name", "aws-api")
        ]),
        "{:?}",
        points("rpc.client.call.duration")
    );
    assert!(
        points("db.client.operation.duration")
            .iter()
            .any(|point| point.contains(&pair("db.operation.name", "change"))),
        "{:?}",
        points("db.client.operation.duration")
    );

    // Nothing secret went to the collector, or to the log.
    let wire = collector.wire_bytes();
    let logs = broker.logs();
    for secret in [
        credentials.secret_access_key.as_str(),
        credentials.session_token.as_str(),
        PORTAL_TOKEN,
        TEST_INTEGRITY_KEY,
    ] {
        assert!(!secret.is_empty());
        assert!(
            !wire.windows(secret.len()).any(|window| window == secret.as_bytes()),
            "a secret reached the collector"
        );
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    // The access key id names the session (not a secret): the log may say it; the spans do not
    // need to, and what they carry is bounded.
    assert!(!credentials.access_key_id.is_empty());
}

/// A protocol this build cannot export is refused at start, by name, rather than silently not
/// exported (that nothing is exported without an endpoint is `telemetry`'s unit test).
#[tokio::test]
async fn an_otlp_protocol_this_build_cannot_export_is_refused_at_start() {
    let redis = RedisServer::start();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        config_text(&Settings::new(redis.url(), "http://127.0.0.1:9".into())),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_grant-broker"))
        .args(["serve", "--config"])
        .arg(config.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: this build exports OTLP over gRPC only"),
        "{said}"
    );
}

/// Every answer carries the call's request id: the caller's when it is a plain token, else one
/// the broker made (a UUIDv7), errors too.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let redis = RedisServer::start();
    let server = Server::start(&Settings::new(redis.url(), "http://127.0.0.1:9".into())).await;
    let mut client = server.client().await;
    let mut offered = authed(PORTAL_TOKEN, proto::ListTargetsRequest {});
    offered
        .metadata_mut()
        .insert("x-request-id", "portal:7f3a-1".parse().unwrap());
    let answer = client.list_targets(offered).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "portal:7f3a-1");
    let answer = client
        .list_targets(authed(PORTAL_TOKEN, proto::ListTargetsRequest {}))
        .await
        .unwrap();
    let made = answer
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&made).unwrap().get_version_num(), 7);
    let mut unfit = authed("not-a-token", proto::ListTargetsRequest {});
    unfit
        .metadata_mut()
        .insert("x-request-id", "has spaces in it".parse().unwrap());
    let refused = client.list_targets(unfit).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let made = refused.metadata().get("x-request-id").unwrap().to_str().unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
}

/// Past `max_concurrent_calls` a call is answered UNAVAILABLE at once, with RetryInfo, while the
/// calls admitted before it finish; health is never shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limit_the_broker_sheds_calls_and_finishes_the_admitted_ones() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_millis(1_500))).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.extra = "[server]\nmax_concurrent_calls = 2\n".into();
    let server = Server::start(&settings).await;
    let client = server.client().await;
    let admitted: Vec<_> = (0..2)
        .map(|n| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("shed-{n}"))))
                    .await
            })
        })
        .collect();
    // Both are in STS by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let shed = client
        .clone()
        .list_targets(authed(PORTAL_TOKEN, proto::ListTargetsRequest {}))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not queued"
    );
    assert_status(
        &shed,
        Code::Unavailable,
        "OVERLOADED",
        "at its limit of 2 calls in flight",
    );
    assert_eq!(
        tonic_types::StatusExt::get_details_retry_info(&shed).and_then(|info| info.retry_delay),
        Some(Duration::from_secs(1))
    );
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    for call in admitted {
        let granted = call.await.unwrap().unwrap().into_inner();
        assert!(granted.credentials.is_some());
    }
    // Once they are done, the limit admits again.
    let mut client = client;
    client
        .list_targets(authed(PORTAL_TOKEN, proto::ListTargetsRequest {}))
        .await
        .unwrap();
}

/// A call whose deadline passes is DEADLINE_EXCEEDED (not tonic's CANCELLED), whether the caller
/// set it or the method's cap is shorter; the call itself is not cut, and records what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_is_deadline_exceeded() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_secs(3))).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.attempt_timeout_ms = 10_000;
    settings.operation_timeout_ms = 20_000;
    settings.extra = "[server]\ncall_timeouts = { IssueCredentials = 300 }\n".into();
    let server = Server::start(&settings).await;
    let mut client = server.client().await;

    let mut request = authed(PORTAL_TOKEN, read_logs_request("deadline-1"));
    request.set_timeout(Duration::from_millis(400));
    let started = Instant::now();
    let expired = client.request_access(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_status(
        &expired,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        "deadline (grpc-timeout) passed",
    );

    // The call was not cut: it goes on to its end, and records the issuance its caller no
    // longer waited for, index entry and all (credentials minted are recorded, never returned).
    let grants = client
        .list_grants(authed(PORTAL_TOKEN, proto::ListGrantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .grants;
    let grant = grants.iter().find(|grant| grant.request_id == "deadline-1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let issued = loop {
        let now = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        if let Some(issuance) = now.issuances.first() {
            break issuance.access_key_id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the cut-short call never recorded its issuance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let found = client
        .find_grant_by_access_key(authed(
            PORTAL_TOKEN,
            proto::FindGrantByAccessKeyRequest {
                access_key_id: issued.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.grant.unwrap().id, grant.id);
    // Issuing it again meets the method's cap.
    let capped = client
        .issue_credentials(authed(
            PORTAL_TOKEN,
            proto::IssueCredentialsRequest {
                id: grant.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_status(
        &capped,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        "IssueCredentials may take at most 300 ms here",
    );
}

/// Editing the rules reloads them (on the file's change, or SIGHUP): new calls decide by the new
/// set and the audit log records it; a set that does not validate, or a change only a restart
/// can apply, is refused and the set in use kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_valid_rule_set_and_keeps_the_old_one_otherwise() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    // A rule file of the test's own, to edit: at first it adds nothing.
    settings.extra_rules = "// no rules of the test's yet\n".into();
    let broker = BrokerProcess::start(&settings, "reload_check_secs = 1", &[]);
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(broker.config.path()).unwrap()).unwrap();
    let rule_file = config["rules"]["files"][1].as_str().unwrap().to_owned();
    let mut client = broker.client().await;
    let outcome = |grant: &proto::RequestAccessResponse| grant.grant.as_ref().unwrap().state;
    let first = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("reload-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&first), proto::GrantState::Approved as i32);

    // A rule that forbids the target: new calls are denied by it.
    std::fs::write(
        &rule_file,
        "@id(\"reload-forbids-logs\")\nforbid (principal, action == GrantBroker::Action::\"request\", resource == GrantBroker::Target::\"dev-logs-read\");\n",
    )
    .unwrap();
    broker.signal("HUP");
    broker
        .wait_for_log(&["configuration reloaded"], Duration::from_secs(10))
        .await;
    let denied = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("reload-2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&denied), proto::GrantState::Denied as i32);
    assert!(
        denied
            .grant
            .as_ref()
            .unwrap()
            .decision
            .as_ref()
            .unwrap()
            .policy_ids
            .contains(&"reload-forbids-logs".to_owned()),
        "{denied:?}"
    );

    // A rule file that does not parse, noticed by its change alone: refused, the last set kept.
    std::fs::write(&rule_file, "forbid(principal, action, resource) when {").unwrap();
    broker
        .wait_for_log(
            &["configuration not reloaded", "a file changed"],
            Duration::from_secs(10),
        )
        .await;
    let still = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("reload-3")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&still), proto::GrantState::Denied as i32);

    // A change only a restart applies (and a valid rule set beside it, written after it, so that
    // no look at the files between the two sees the rules alone): refused whole.
    let text = std::fs::read_to_string(broker.config.path()).unwrap();
    let moved = text.replacen(
        &format!("listen = \"127.0.0.1:{}\"", broker.port),
        "listen = \"127.0.0.1:1\"",
        1,
    );
    assert_ne!(text, moved);
    std::fs::write(broker.config.path(), moved).unwrap();
    std::fs::write(&rule_file, "// forbids nothing\n").unwrap();
    broker.signal("HUP");
    let refused = broker
        .wait_for_log(
            &["configuration not reloaded", "server.listen changed"],
            Duration::from_secs(10),
        )
        .await;
    assert!(refused.contains("only when the broker restarts"), "{refused}");
    let still = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("reload-4")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&still), proto::GrantState::Denied as i32);

    // Put back, the valid set applies; the audit log holds each set that took effect.
    std::fs::write(broker.config.path(), text).unwrap();
    broker.signal("HUP");
    let mut applied = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied < 2 {
        applied = broker.logs().matches("configuration reloaded").count();
        assert!(Instant::now() < deadline, "{}", broker.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let approved = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("reload-5")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&approved), proto::GrantState::Approved as i32);
    let digests = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = client
            .list_audit_events(authed(
                AUDITOR_TOKEN,
                proto::ListAuditEventsRequest {
                    events: vec!["rules_loaded".into()],
                    page_size: 50,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        let found: Vec<String> = events
            .iter()
            .map(|event| {
                let json: serde_json::Value = serde_json::from_str(&event.event_json).unwrap();
                json["digest"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        *digests.lock().unwrap() = found.clone();
        // At start, the forbidding set, and the set put back.
        if found.len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let digests = digests.lock().unwrap().clone();
    assert_ne!(digests[0], digests[1], "{digests:?}");
    assert_ne!(digests[1], digests[2], "{digests:?}");
}

/// SIGTERM: readiness turns NOT_SERVING at once (the health port still answers), a unary call in
/// flight completes, and the process exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_not_ready_first_and_lets_unary_calls_finish() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_millis(1_500))).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let mut broker = BrokerProcess::start(&settings, "drain_timeout_secs = 10", &[]);
    let mut health = broker.health().await;
    let status = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while health.check(status("readiness")).await.unwrap().into_inner().status() != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = broker.client().await;
    let api = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", broker.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(api)
        .watch(status(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let in_flight = tokio::spawn(async move {
        client
            .request_access(authed(PORTAL_TOKEN, read_logs_request("draining-1")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    broker.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let readiness = health.check(status("readiness")).await.unwrap().into_inner().status();
        if readiness == ServingStatus::NotServing {
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        health.check(status("liveness")).await.unwrap().into_inner().status(),
        ServingStatus::Serving
    );
    let finished = in_flight.await.unwrap().unwrap().into_inner();
    assert!(finished.credentials.is_some(), "the call in flight completed");
    // A health Watch on the API port (a gRPC client's health checking) ended too: it would
    // otherwise hold the shutdown for the whole drain timeout.
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch ended within 5 s");
    // NOT_SERVING (as often as it is sent before the end), then the end.
    let mut next = ended;
    let status = loop {
        match next {
            Ok(Some(update)) => assert_eq!(update.status(), ServingStatus::NotServing),
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
        next = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the watch ended within 5 s");
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let exited = broker.wait_exit(Duration::from_secs(10));
    assert!(exited.success(), "{exited:?}");
    // Well within the drain timeout (10 s): nothing held the shutdown once the call was done.
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "{:?}",
        signalled.elapsed()
    );
}

/// The Redis password is read from the environment (a Secret), never written in the
/// configuration: the broker authenticates as its ACL user and works; a wrong one is refused
/// with UNAVAILABLE, saying the store is unavailable, and never quoted.
#[tokio::test]
async fn the_redis_password_comes_from_the_environment() {
    const PASSWORD: &str = "acl-password-from-a-secret-0123456789";
    let logs = capture_logs();
    let redis = RedisServer::start_with(&["--user", "broker", "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"]);
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.redis_extra = "username = \"broker\"\npassword = { env = \"GB_TEST_REDIS_PASSWORD\" }".into();
    settings.env.insert("GB_TEST_REDIS_PASSWORD".into(), PASSWORD.into());
    let server = Server::start(&settings).await;
    let granted = server
        .client()
        .await
        .request_access(authed(PORTAL_TOKEN, read_logs_request("acl-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(granted.credentials.is_some());

    settings
        .env
        .insert("GB_TEST_REDIS_PASSWORD".into(), "not-the-password".into());
    let server = Server::start(&settings).await;
    let refused = server
        .client()
        .await
        .request_access(authed(PORTAL_TOKEN, read_logs_request("acl-2")))
        .await
        .unwrap_err();
    assert_status(&refused, Code::Unavailable, "STORE_UNAVAILABLE", "");
    assert!(!refused.message().contains("not-the-password") && !refused.message().contains(PASSWORD));
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logged.is_empty(), "the test's log capture caught nothing");
    assert!(!logged.contains(PASSWORD) && !logged.contains("not-the-password"));
}

/// An AWS call the SDK retried says so on its span: how many attempts, and the error code, which
/// the duration metric carries too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_aws_call_says_how_many_attempts_and_why_it_failed() {
    let (collector, endpoint) = Collector::start().await;
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Fail {
        status: 400,
        code: "Throttling",
        message: "Rate exceeded",
    })
    .await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.max_attempts = 2;
    let mut broker = BrokerProcess::start(
        &settings,
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    );
    let throttled = broker
        .client()
        .await
        .request_access(authed(PORTAL_TOKEN, read_logs_request("throttled-1")))
        .await
        .unwrap_err();
    assert_status(&throttled, Code::Unavailable, "STS_THROTTLED", "");
    assert_eq!(sts.calls().len(), 2);
    broker.signal("TERM");
    assert!(broker.wait_exit(Duration::from_secs(20)).success());
    let spans = collector.spans();
    let assume = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| span.name == "STS/AssumeRole")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(attribute(assume, "aws.attempts").as_deref(), Some("2"), "{assume:?}");
    assert_eq!(
        attribute(assume, "error.type").as_deref(),
        Some("Throttling"),
        "{assume:?}"
    );
    // STATUS_CODE_ERROR
    assert_eq!(assume.status.as_ref().map(|status| status.code), Some(2), "{assume:?}");
    let measured = collector.metrics().into_iter().any(|metric| {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        metric.name == "rpc.client.call.duration"
            && matches!(&metric.data, Some(Data::Histogram(histogram)) if histogram.data_points.iter().any(|point| {
                point.attributes.iter().any(|kv| kv.key == "error.type" && value_text(kv.value.as_ref()) == "Throttling")
            }))
    });
    assert!(measured, "{:?}", collector.metrics());
}

/// A caller that goes away before the answer leaves a line and a measurement (CANCELLED), and the
/// call it started is not cut: it goes on and records its issuance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_is_logged_cancelled_and_its_call_still_completes() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Delay(Duration::from_millis(1_500))).await;
    let broker = BrokerProcess::start(&Settings::new(redis.url(), sts.url.clone()), "", &[]);
    let mut client = broker.client().await;
    let mut request = authed(PORTAL_TOKEN, read_logs_request("gone-1"));
    request
        .metadata_mut()
        .insert("x-request-id", "gone-away-1".parse().unwrap());
    let call = tokio::spawn(async move { client.request_access(request).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    call.abort();
    let line = broker
        .wait_for_log(&["call finished", "gone-away-1", "CANCELLED"], Duration::from_secs(5))
        .await;
    assert!(line.contains("grantbroker.v1.GrantBroker/RequestAccess"), "{line}");
    let mut reader = broker.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let grants = reader
            .list_grants(authed(PORTAL_TOKEN, proto::ListGrantsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .grants;
        if grants
            .iter()
            .any(|grant| grant.request_id == "gone-1" && !grant.issuances.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the call its caller left never finished: {grants:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reload may not add a target the AWS clients made at start cannot reach: refused, naming it,
/// and the set in use kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_a_target_in_a_region_without_a_client_is_refused() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let broker = BrokerProcess::start(
        &Settings::new(redis.url(), sts.url.clone()),
        "reload_check_secs = 1",
        &[],
    );
    let text = std::fs::read_to_string(broker.config.path()).unwrap();
    let added = format!(
        "{text}\n[[targets]]\nid = \"mumbai-logs\"\nenvironment = \"staging\"\naccount_id = \"123456789012\"\nrole_arn = \"arn:aws:iam::123456789012:role/mumbai-logs\"\nregion = \"ap-south-1\"\nmax_duration_secs = 3600\n[[targets.ceiling]]\nactions = [\"s3:GetObject\"]\nresources = [\"arn:aws:s3:::mumbai-logs/*\"]\n"
    );
    std::fs::write(broker.config.path(), added).unwrap();
    broker.signal("HUP");
    let refused = broker
        .wait_for_log(&["configuration not reloaded", "mumbai-logs"], Duration::from_secs(10))
        .await;
    assert!(
        refused.contains("region ap-south-1") && refused.contains("restart"),
        "{refused}"
    );
    let targets = broker
        .client()
        .await
        .list_targets(authed(ADMIN_TOKEN, proto::ListTargetsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .targets;
    assert!(targets.iter().all(|target| target.id != "mumbai-logs"), "{targets:?}");
}

/// A collector that is not there slows and fails nothing: calls answer as fast as without one, and
/// the exit's last export gives up within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_slows_and_fails_nothing() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let mut broker = BrokerProcess::start(
        &Settings::new(redis.url(), sts.url.clone()),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nobody.as_str()),
            // Export often, so that the calls meet the failing exports.
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    );
    let mut client = broker.client().await;
    let started = Instant::now();
    for n in 0..50 {
        let granted = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("no-collector-{n}"))))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.credentials.is_some());
    }
    // 50 approved grants take well under a second here; a call that waited on an export would
    // take its timeout (1 s) at least.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    broker.signal("TERM");
    let stopped = Instant::now();
    assert!(broker.wait_exit(Duration::from_secs(25)).success());
    assert!(stopped.elapsed() < Duration::from_secs(15), "{:?}", stopped.elapsed());
}
