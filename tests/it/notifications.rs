//! Webhook notifications end to end: real server, real Redis, the fake STS, and a real local HTTP
//! receiver that verifies every signature the way docs/notifications.md tells receivers to (its own HMAC,
//! not the broker's helper). Covers signed bodies without secrets, retries until a receiver
//! recovers, the dead list, two brokers delivering each notification once, and notifications
//! that survive a restart or a worker that died holding them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::*;
use bytes::Bytes;
use grant_broker::{
    adapters::webhooks::{DeliverySettings, Keys, known_events},
    grpc::proto,
};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

const SECRET_ENV: &str = "GB_TEST_HOOK_SECRET";
const SECRET: &str = "test-hook-secret-0123456789abcdef-xyz";
const AUDIT_SECRET_ENV: &str = "GB_TEST_AUDIT_SECRET";
const AUDIT_SECRET: &str = "audit-hook-secret-0123456789abcdef-xyz";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    delivery_id: String,
    event: String,
    timestamp: i64,
    body: String,
    verified: bool,
    /// What the receiver answered.
    status: u16,
    at: Instant,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// The documented check, written from docs/notifications.md: HMAC-SHA256 keyed with the secret over
/// `<timestamp>.<body>`, lowercase hex after `v1=`, and a timestamp within 300 s of now.
fn verify(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let Ok(sent) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - sent).abs() > 300 {
        return false;
    }
    signature.split(',').any(|value| {
        let Some(digest) = value.trim().strip_prefix("v1=").and_then(|hex| hex::decode(hex).ok()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&digest).is_ok()
    })
}

/// A webhook receiver on 127.0.0.1: verifies, records, and answers 500 to the first
/// `fail_first` attempts of every delivery id (`usize::MAX`: always), 401 to a bad signature,
/// 200 otherwise.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(secret: &'static str, fail_first: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/grant-broker", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|value| value.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let (timestamp, signature) =
                                (header("x-grantbroker-timestamp"), header("x-grantbroker-signature"));
                            let (delivery_id, event) =
                                (header("x-grantbroker-delivery"), header("x-grantbroker-event"));
                            assert_eq!(header("content-type"), "application/json");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let verified = verify(secret, &timestamp, &signature, &body);
                            let mut record = record.lock().unwrap();
                            let earlier = record.iter().filter(|r| r.delivery_id == delivery_id).count();
                            let status = if !verified {
                                401
                            } else if earlier < fail_first {
                                500
                            } else {
                                200
                            };
                            record.push(Received {
                                delivery_id,
                                event,
                                timestamp: timestamp.parse().unwrap_or_default(),
                                body: String::from_utf8(body.to_vec()).unwrap(),
                                verified,
                                status,
                                at: Instant::now(),
                            });
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, received }
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests answered 200.
    fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.status == 200).collect()
    }

    /// Waits (at most `within`) until `count` requests were accepted; then returns them.
    async fn wait_accepted(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= count {
                return accepted;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} notifications accepted within {within:?}; received: {:#?}",
                accepted.len(),
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `[[webhooks]]` table.
fn webhook(name: &str, url: &str, secret_env: &str, extra: &str) -> String {
    format!(
        "[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_env = \"{secret_env}\"\ntimeout_ms = 500\n{extra}\n"
    )
}

/// Fast pacing: retries after 100-200 ms, reads that wait 100 ms.
fn fast() -> DeliverySettings {
    DeliverySettings {
        block: Duration::from_millis(100),
        batch: 16,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        claim_min_idle: Duration::from_secs(1),
    }
}

fn settings(redis: &RedisServer, sts: &FakeSts, webhooks: String) -> Settings {
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.webhooks = webhooks;
    settings.env = HashMap::from([
        (SECRET_ENV.to_owned(), SECRET.to_owned()),
        (AUDIT_SECRET_ENV.to_owned(), AUDIT_SECRET.to_owned()),
    ]);
    settings.delivery = fast();
    settings
}

async fn request_pending(client: &mut Client) -> proto::Grant {
    let grant = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(grant.state, i32::from(proto::GrantState::PendingApproval));
    grant
}

async fn approve(client: &mut Client, id: &str, approver: &str) -> proto::Grant {
    client
        .approve_grant(authed(
            APPROVALS_TOKEN,
            proto::ApproveGrantRequest {
                id: id.to_owned(),
                approver: approver.to_owned(),
                comment: "fine".to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The counters in `gb:{notify}:stats`.
async fn stats(redis: &RedisServer) -> BTreeMap<String, i64> {
    redis::cmd("HGETALL")
        .arg(Keys::new("gb").stats)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap()
}

/// Waits until the stats counter `name` reaches `value`.
async fn wait_stat(redis: &RedisServer, name: &str, value: i64) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = stats(redis).await;
        if stats.get(name).copied().unwrap_or(0) >= value {
            return stats;
        }
        assert!(Instant::now() < deadline, "{name} never reached {value}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue_lengths(redis: &RedisServer) -> (i64, i64) {
    let keys = Keys::new("gb");
    let mut connection = redis.connection().await;
    let stream: i64 = redis::cmd("XLEN")
        .arg(&keys.stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    let retry: i64 = redis::cmd("ZCARD")
        .arg(&keys.retry)
        .query_async(&mut connection)
        .await
        .unwrap();
    (stream, retry)
}

fn by_delivery(received: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut map: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for one in received {
        map.entry(one.delivery_id.clone()).or_default().push(one.clone());
    }
    map
}

#[tokio::test]
async fn a_pending_request_and_its_approval_reach_the_webhook_signed_and_without_secrets() {
    let logs = capture_logs();
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let approvals = Receiver::start(SECRET, 0).await;
    let audit = Receiver::start(AUDIT_SECRET, 0).await;
    let every_event = format!(
        "events = [{}]",
        known_events()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hooks = webhook("approvals", &approvals.url, SECRET_ENV, "")
        + &webhook("audit", &audit.url, AUDIT_SECRET_ENV, &every_event);
    let server = Server::start(&settings(&redis, &sts, hooks)).await;
    let mut client = server.client().await;

    let grant = request_pending(&mut client).await;
    let [requested] = approvals
        .wait_accepted(1, Duration::from_secs(10))
        .await
        .try_into()
        .unwrap();
    assert!(requested.verified);
    assert_eq!(requested.event, "requested");
    let body = requested.json();
    assert_eq!(body["delivery_id"], requested.delivery_id.as_str());
    assert_eq!(body["event"], "requested");
    assert_eq!(body["grant_id"], grant.id.as_str());
    assert_eq!(body["state"], "pending_approval");
    assert_eq!(body["caller"], "vendor-portal");
    assert_eq!(body["target"], "prod-logs-read");
    assert_eq!(body["account_id"], "210987654321");
    assert_eq!(body["requester"], "alice@example.com");
    assert_eq!(body["grantee"], "vendor-x");
    assert_eq!(body["break_glass"], false);
    assert_eq!(body["ticket"], "CHG-7");
    assert_eq!(body["details"]["outcome"], "require_approval");
    assert_eq!(
        body["scopes"][0]["resources"][0],
        "arn:aws:s3:::acme-prod-logs/vendor-x/*"
    );
    let at = time::OffsetDateTime::parse(
        body["at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((at.unix_timestamp() - requested.timestamp).abs() < 60);
    // Compact JSON, signed as sent.
    assert!(!requested.body.contains('\n'));

    // The first approval meets only part of the quorum: nothing for approvers (the default
    // events); the second approves, and that is delivered.
    approve(&mut client, &grant.id, "bob@example.com").await;
    let approved_grant = approve(&mut client, &grant.id, "carol@example.com").await;
    assert_eq!(approved_grant.state, i32::from(proto::GrantState::Approved));
    let accepted = approvals.wait_accepted(2, Duration::from_secs(10)).await;
    let approved = accepted.iter().find(|r| r.event == "approved").unwrap();
    assert!(approved.verified);
    let body = approved.json();
    assert_eq!(body["state"], "approved");
    assert_eq!(body["caller"], "approval-portal");
    assert_eq!(body["grant_caller"], "vendor-portal");
    assert!(body["details"]["start"].is_string() && body["details"]["end"].is_string());
    assert_ne!(approved.delivery_id, requested.delivery_id);

    // Credentials issued: the audit webhook, subscribed to everything, hears of the issuance,
    // never of its secret.
    let issued = client
        .issue_credentials(authed(
            PORTAL_TOKEN,
            proto::IssueCredentialsRequest {
                id: grant.id.clone(),
                mfa_serial: String::new(),
                mfa_code: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .credentials
        .unwrap();
    let everything = audit.wait_accepted(7, Duration::from_secs(10)).await;
    let mut events: Vec<&str> = everything.iter().map(|r| r.event.as_str()).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        [
            "approval_recorded",
            "approval_recorded",
            "approved",
            "issued",
            "issuing",
            "requested",
            "rules_loaded"
        ]
    );
    assert!(
        everything.iter().all(|r| r.verified),
        "audit bodies verify with their own secret"
    );
    let issued_body = everything.iter().find(|r| r.event == "issued").unwrap().json();
    assert_eq!(issued_body["details"]["access_key_id"], issued.access_key_id.as_str());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(approvals.all().len(), 2, "approvers get requested and approved only");
    let secrets = [
        issued.secret_access_key.as_str(),
        issued.session_token.as_str(),
        "FakeSecretAccessKey",
        "FakeSessionToken",
        SECRET,
        AUDIT_SECRET,
    ];
    for received in approvals.all().iter().chain(&audit.all()) {
        for secret in secrets {
            assert!(!received.body.contains(secret), "{secret} in {}", received.body);
        }
    }
    // Nor in Redis (the queue included), nor in the log.
    let stored = redis.dump().await;
    assert!(stored.iter().any(|(key, _)| key == "gb:{notify}:stats"), "{stored:?}");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("notification delivered"), "deliveries are logged");
    for secret in secrets {
        assert!(
            !stored
                .iter()
                .any(|(key, value)| key.contains(secret) || value.contains(secret)),
            "{secret} stored"
        );
        assert!(!logged.contains(secret), "{secret} logged");
    }
    let stats = wait_stat(&redis, "delivered", 9).await;
    assert_eq!(stats.get("enqueued"), Some(&9), "{stats:?}");
    assert_eq!(stats.get("retried"), None, "{stats:?}");

    // An extension that waits for security: approvers hear that it was asked for, and that it
    // was approved.
    client
        .extend_grant(authed(
            PORTAL_TOKEN,
            proto::ExtendGrantRequest {
                id: grant.id.clone(),
                additional_duration: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                justification: "the migration overran".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    approve(&mut client, &grant.id, "bob@example.com").await;
    let accepted = approvals.wait_accepted(4, Duration::from_secs(10)).await;
    let asked = accepted.iter().find(|r| r.event == "extension_requested").unwrap();
    assert!(asked.verified);
    assert_eq!(asked.json()["details"]["additional_secs"], 3600);
    assert_eq!(asked.json()["details"]["outcome"], "require_approval");
    let extended = accepted.iter().find(|r| r.event == "extended").unwrap();
    assert!(extended.verified);
    assert_eq!(extended.json()["details"]["extension"], 1);
    assert_eq!(extended.json()["state"], "approved");
}

#[tokio::test]
async fn incident_actions_reach_the_webhooks_that_default_to_them() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let security = Receiver::start(SECRET, 0).await;
    let server = Server::start(&settings(
        &redis,
        &sts,
        webhook("security", &security.url, SECRET_ENV, ""),
    ))
    .await;
    let mut client = server.client().await;
    let cut = client
        .revoke_target_sessions(authed(
            ADMIN_TOKEN,
            proto::RevokeTargetSessionsRequest {
                target: "dev-logs-read".into(),
                reason: "keys leaked".into(),
                revoker: "oncall@example.com".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .revoke_grantee(authed(
            ADMIN_TOKEN,
            proto::RevokeGranteeRequest {
                grantee: "vendor-x".into(),
                reason: "vendor-x is compromised".into(),
                revoker: "oncall@example.com".into(),
            },
        ))
        .await
        .unwrap();
    let accepted = security.wait_accepted(2, Duration::from_secs(10)).await;
    assert!(accepted.iter().all(|r| r.verified));
    let cutoff = accepted
        .iter()
        .find(|r| r.event == "target_sessions_revoked")
        .unwrap()
        .json();
    assert_eq!(cutoff["caller"], "security-console");
    assert_eq!(cutoff["actor"], "oncall@example.com");
    assert_eq!(cutoff["target"], "dev-logs-read");
    assert!(cutoff.get("grant_id").is_none(), "{cutoff}");
    assert_eq!(cutoff["details"]["role_arn"], cut.role_arn.as_str());
    assert_eq!(cutoff["details"]["reason"], "keys leaked");
    let at = cut.cutoff_time.unwrap();
    let printed = time::OffsetDateTime::from_unix_timestamp(at.seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(cutoff["details"]["cutoff"], printed.as_str());
    let operation = accepted.iter().find(|r| r.event == "grantee_revoked").unwrap().json();
    assert_eq!(operation["details"]["grantee"], "vendor-x");
    assert_eq!(operation["details"]["examined"], 0);
}

#[tokio::test]
async fn a_receiver_that_fails_first_gets_the_notification_once_it_recovers() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let receiver = Receiver::start(SECRET, 3).await;
    let hooks = webhook("approvals", &receiver.url, SECRET_ENV, "max_attempts = 8");
    let server = Server::start(&settings(&redis, &sts, hooks)).await;
    let mut client = server.client().await;

    let grant = request_pending(&mut client).await;
    receiver.wait_accepted(1, Duration::from_secs(15)).await;
    let stats = wait_stat(&redis, "delivered", 1).await;
    assert_eq!(stats.get("retried"), Some(&3), "{stats:?}");
    assert_eq!(stats.get("dead"), None, "{stats:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = receiver.all();
    let statuses: Vec<u16> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [500, 500, 500, 200],
        "exactly one success, after three failures"
    );
    assert!(attempts.iter().all(|r| r.verified), "every retry is signed anew");
    let ids = by_delivery(&attempts);
    assert_eq!(ids.len(), 1, "one delivery id across retries: {ids:?}");
    assert!(
        attempts.iter().all(|r| r.body == attempts[0].body),
        "the same body each time"
    );
    assert_eq!(attempts[0].json()["grant_id"], grant.id.as_str());
    // Backed off: at least half the initial 100 ms before the first retry, more later.
    for pair in attempts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(50), "{gap:?}");
    }
    assert_eq!(queue_lengths(&redis).await, (0, 0), "nothing left queued");
}

#[tokio::test]
async fn a_receiver_that_never_recovers_ends_in_the_dead_list_and_grants_go_on() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let failing = Receiver::start(SECRET, usize::MAX).await;
    // Nothing listens there: every attempt is refused at once.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let hooks = webhook("approvals", &failing.url, SECRET_ENV, "max_attempts = 3")
        + &webhook("gone", &closed, SECRET_ENV, "max_attempts = 2");
    let server = Server::start(&settings(&redis, &sts, hooks)).await;
    let mut client = server.client().await;

    // Every grant operation succeeds while every notification fails.
    let started = Instant::now();
    let grant = request_pending(&mut client).await;
    approve(&mut client, &grant.id, "bob@example.com").await;
    let approved = approve(&mut client, &grant.id, "carol@example.com").await;
    assert_eq!(approved.state, i32::from(proto::GrantState::Approved));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no RPC waited for a webhook"
    );

    // requested + approved, to each of the two webhooks.
    let stats = wait_stat(&redis, "dead", 4).await;
    assert_eq!(stats.get("retried"), Some(&(2 * 2 + 2)), "{stats:?}");
    assert_eq!(stats.get("delivered"), None, "{stats:?}");
    let dead: Vec<String> = redis::cmd("LRANGE")
        .arg(Keys::new("gb").dead)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(dead.len(), 4);
    let dead: Vec<serde_json::Value> = dead.iter().map(|text| serde_json::from_str(text).unwrap()).collect();
    for record in &dead {
        let body: serde_json::Value = serde_json::from_str(record["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["grant_id"], grant.id.as_str());
        assert_eq!(body["delivery_id"], record["delivery_id"]);
        assert!(record["dead_at"].is_string(), "{record}");
        let error = record["last_error"].as_str().unwrap();
        match record["webhook"].as_str().unwrap() {
            "approvals" => {
                assert_eq!(record["attempts"], 3);
                assert_eq!(error, "HTTP 500 Internal Server Error");
            }
            "gone" => {
                assert_eq!(record["attempts"], 2);
                assert!(error.to_lowercase().contains("connect"), "{error}");
            }
            other => panic!("{other}"),
        }
    }
    let attempts = by_delivery(&failing.all());
    assert_eq!(attempts.len(), 2);
    for (id, tries) in attempts {
        assert_eq!(tries.len(), 3, "{id}: exactly max_attempts tries");
    }
    assert_eq!(queue_lengths(&redis).await, (0, 0));
    // The grant is exactly as the RPCs left it.
    let read = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.state, i32::from(proto::GrantState::Approved));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_deliver_each_notification_exactly_once() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    // Every delivery fails once, so its retry is promoted by whichever worker gets there first.
    let receiver = Receiver::start(SECRET, 1).await;
    let hooks = webhook("approvals", &receiver.url, SECRET_ENV, "");
    let settings = settings(&redis, &sts, hooks);
    let one = Server::start(&settings).await;
    let two = Server::start(&settings).await;
    let mut clients = [one.client().await, two.client().await];

    let mut grants = Vec::new();
    for i in 0..8 {
        grants.push(request_pending(&mut clients[i % 2]).await.id);
    }
    receiver.wait_accepted(8, Duration::from_secs(20)).await;
    wait_stat(&redis, "delivered", 8).await;
    // Time for any duplicate to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let attempts = by_delivery(&receiver.all());
    assert_eq!(attempts.len(), 8, "{attempts:#?}");
    for (id, tries) in &attempts {
        let statuses: Vec<u16> = tries.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [500, 200], "{id}: one failure, one success, nothing twice");
    }
    let mut notified: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|r| r.json()["grant_id"].as_str().unwrap().to_owned())
        .collect();
    notified.sort();
    grants.sort();
    assert_eq!(notified, grants, "each grant notified once");
    let stats = stats(&redis).await;
    assert_eq!(
        (stats.get("delivered"), stats.get("retried")),
        (Some(&8), Some(&8)),
        "{stats:?}"
    );
    // Both brokers joined the group as consumers of their own.
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(Keys::new("gb").stream)
        .arg("webhooks")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(consumers.len(), 2);
}

#[tokio::test]
async fn notifications_outlive_a_broker_with_no_worker_and_a_worker_that_died_holding_them() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let receiver = Receiver::start(SECRET, 0).await;
    let hooks = webhook("approvals", &receiver.url, SECRET_ENV, "");
    let mut queue_only = settings(&redis, &sts, hooks);
    queue_only.deliver = false;
    let keys = Keys::new("gb");

    // A broker that only queues (its worker never started: think of one killed at once).
    let first = Server::start(&queue_only).await;
    let mut client = first.client().await;
    let held = request_pending(&mut client).await;
    let free = request_pending(&mut client).await;
    drop(client);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.all().is_empty(), "no worker, no delivery");
    assert_eq!(queue_lengths(&redis).await, (2, 0), "both queued durably");

    // A worker that took the first notification and died before settling it.
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg("webhooks")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut connection)
        .await
        .unwrap();
    let taken: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("webhooks")
        .arg("crashed-worker")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&keys.stream)
        .arg(">")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        format!("{taken:?}").contains(&held.id),
        "the crashed worker holds the first"
    );

    // A broker with a worker: the free notification goes at once, the held one once it has been
    // idle for claim_min_idle (1 s).
    let started = Instant::now();
    let _second = Server::start(&{
        let mut delivering = queue_only.clone();
        delivering.deliver = true;
        delivering
    })
    .await;
    let accepted = receiver.wait_accepted(2, Duration::from_secs(10)).await;
    let grant_of = |r: &Received| r.json()["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(grant_of(&accepted[0]), free.id, "the free one first");
    assert_eq!(grant_of(&accepted[1]), held.id, "then the reclaimed one");
    assert!(
        accepted[1].at - started >= Duration::from_millis(500),
        "reclaimed only after it sat idle"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.all().len(), 2, "each delivered once");
    let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg("webhooks")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "nothing left pending");
    assert_eq!(queue_lengths(&redis).await, (0, 0));
    assert_eq!(stats(&redis).await.get("delivered"), Some(&2));
}
