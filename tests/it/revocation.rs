//! Revocation end to end: the real server, real Redis, moto's IAM (roles and inline policies; it
//! stores policies but does not evaluate them, so these tests read the documents back), the fake
//! IAM endpoint in front of moto for failures, and the fake STS for issuance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use crate::common::{
    fake_iam::{FakeIam, Fault},
    *,
};
use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use grant_broker::{domain::revocation::DENY_POLICY_NAME, grpc::proto};
use tonic::Code;

/// The test's own IAM client on moto.
fn iam_client(moto: &Moto) -> aws_sdk_iam::Client {
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(&moto.url)
        .build();
    aws_sdk_iam::Client::from_conf(config)
}

/// A role of this test's own on moto (tests may share one), with another team's inline policy
/// of `other_policy_chars` characters beside the broker's; returns its name and RoleId.
async fn role(iam: &aws_sdk_iam::Client, other_policy_chars: usize) -> (String, String) {
    let name = format!("vendor-logs-{}", uuid::Uuid::now_v7().simple());
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;
    let role = iam
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    // A policy of exactly `other_policy_chars` characters: its resource pads it.
    let skeleton = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::"}]}"#;
    let padding = "x".repeat(other_policy_chars.saturating_sub(skeleton.len()).max(1));
    let other = skeleton.replace("arn:aws:s3:::", &format!("arn:aws:s3:::{padding}"));
    iam.put_role_policy()
        .role_name(&name)
        .policy_name("team-reads-logs")
        .policy_document(&other)
        .send()
        .await
        .unwrap();
    (name, role.role_id)
}

/// The role's inline policy `name` as JSON, or None.
async fn policy(iam: &aws_sdk_iam::Client, role: &str, name: &str) -> Option<serde_json::Value> {
    match iam.get_role_policy().role_name(role).policy_name(name).send().await {
        Ok(output) => {
            let text = output.policy_document();
            let decoded = if text.starts_with('{') {
                text.to_owned()
            } else {
                form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
                    .next()
                    .unwrap()
                    .1
                    .into_owned()
            };
            Some(serde_json::from_str(&decoded).unwrap())
        }
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_no_such_entity_exception()) =>
        {
            None
        }
        Err(error) => panic!("GetRolePolicy: {error:?}"),
    }
}

fn denied_user_ids(document: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = document["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|statement| statement["Condition"]["StringEquals"]["aws:userid"].as_array())
        .flatten()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn cutoff_of(document: &serde_json::Value) -> Option<String> {
    document["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|statement| statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"].as_str())
        .map(str::to_owned)
}

fn revoke(id: &str, reason: &str) -> proto::RevokeGrantRequest {
    proto::RevokeGrantRequest {
        id: id.to_owned(),
        reason: reason.to_owned(),
        revoker: String::new(),
    }
}

fn enforcement(grant: &proto::Grant) -> proto::EnforcementStatus {
    proto::EnforcementStatus::try_from(grant.revocation.as_ref().unwrap().enforcement).unwrap()
}

async fn issued_grant(client: &mut Client, request_id: &str) -> proto::Grant {
    let response = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request(request_id)))
        .await
        .unwrap()
        .into_inner();
    assert!(response.credentials.is_some());
    response.grant.unwrap()
}

async fn get(client: &mut Client, id: &str) -> proto::Grant {
    client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: id.to_owned() }))
        .await
        .unwrap()
        .into_inner()
}

/// Polls the grant until its enforcement is `wanted`, for at most `within`.
async fn wait_for(client: &mut Client, id: &str, wanted: proto::EnforcementStatus, within: Duration) -> proto::Grant {
    let deadline = Instant::now() + within;
    loop {
        let grant = get(client, id).await;
        if enforcement(&grant) == wanted {
            return grant;
        }
        assert!(Instant::now() < deadline, "still {:?}: {grant:?}", enforcement(&grant));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct World {
    redis: RedisServer,
    moto: Moto,
    sts: FakeSts,
    iam: aws_sdk_iam::Client,
    role: String,
    role_id: String,
}

impl World {
    async fn new(other_policy_chars: usize) -> Self {
        let redis = RedisServer::start();
        let moto = Moto::start();
        let sts = FakeSts::start(StsBehaviour::Succeed).await;
        let iam = iam_client(&moto);
        let (role, role_id) = self::role(&iam, other_policy_chars).await;
        sts.set_role_id(&role, &role_id);
        Self {
            redis,
            moto,
            sts,
            iam,
            role,
            role_id,
        }
    }

    fn settings(&self, iam_endpoint: &str) -> Settings {
        let mut settings = Settings::new(self.redis.url(), self.sts.url.clone());
        settings.iam_endpoint = Some(iam_endpoint.to_owned());
        settings.logs_role = self.role.clone();
        settings
    }

    async fn deny_policy(&self) -> Option<serde_json::Value> {
        policy(&self.iam, &self.role, DENY_POLICY_NAME).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_is_denied_by_user_id_on_its_role_and_issues_nothing_more() {
    let world = World::new(200).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let grant = issued_grant(&mut client, "r-1").await;
    let keep = issued_grant(&mut client, "r-2").await;
    let other_before = policy(&world.iam, &world.role, "team-reads-logs").await.unwrap();

    let revoked = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant.id, "vendor offboarded")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, i32::from(proto::GrantState::Revoked));
    let revocation = revoked.revocation.as_ref().unwrap();
    assert_eq!(revocation.caller, "vendor-portal");
    assert_eq!(revocation.reason, "vendor offboarded");
    assert_eq!(enforcement(&revoked), proto::EnforcementStatus::Enforced);
    assert_eq!(revocation.sessions.len(), 1);
    assert_eq!(revocation.sessions[0].session_name, format!("gb-{}", grant.id));
    assert_eq!(
        proto::EnforcementStatus::try_from(revocation.sessions[0].enforcement).unwrap(),
        proto::EnforcementStatus::Enforced
    );

    // Exactly that session, by `<RoleId>:<session name>`; the other team's policy untouched.
    let document = world.deny_policy().await.expect("the broker's policy");
    assert_eq!(
        denied_user_ids(&document),
        [format!("{}:gb-{}", world.role_id, grant.id)]
    );
    assert_eq!(document["Statement"][0]["Effect"], "Deny");
    assert_eq!(document["Statement"][0]["Action"], "*");
    assert_eq!(
        policy(&world.iam, &world.role, "team-reads-logs").await.unwrap(),
        other_before
    );
    let names = world
        .iam
        .list_role_policies()
        .role_name(&world.role)
        .send()
        .await
        .unwrap()
        .policy_names;
    assert_eq!(names.len(), 2, "{names:?}");

    // Nothing is issued for it any more; the other grant still works.
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "GRANT_NOT_ISSUABLE", "revoked");
    client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&keep.id)))
        .await
        .unwrap();
    let events: Vec<String> = world
        .redis
        .events(&grant.id)
        .await
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events[events.len() - 2..], ["revoked", "enforcement_changed"]);

    // Revoking it again, or an unknown grant, or someone else's, is a clear refusal.
    let status = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant.id, "again")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "cannot revoke a grant that is revoked",
    );
    let status = client
        .revoke_grant(authed(PIPELINE_TOKEN, revoke(&keep.id, "not mine")))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", &keep.id);
    let status = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke("nope", " ")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["id", "reason"]);
}

/// Deletes the role and creates it again under the same name, as a Terraform replace does:
/// returns the new incarnation's RoleId.
async fn recreate_role(world: &World) -> String {
    for name in [DENY_POLICY_NAME, "team-reads-logs"] {
        let _ = world
            .iam
            .delete_role_policy()
            .role_name(&world.role)
            .policy_name(name)
            .send()
            .await;
    }
    world.iam.delete_role().role_name(&world.role).send().await.unwrap();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;
    let role = world
        .iam
        .create_role()
        .role_name(&world.role)
        .assume_role_policy_document(trust)
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    assert_ne!(role.role_id, world.role_id, "a new incarnation has a new RoleId");
    world.sts.set_role_id(&world.role, &role.role_id);
    role.role_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_a_re_created_role_is_denied_under_its_own_role_id() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let first = issued_grant(&mut client, "before-1").await;
    let straddling = issued_grant(&mut client, "before-2").await;
    // The broker learns (and caches) the first incarnation's RoleId with a revocation.
    let revoked = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&first.id, "offboarded")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enforcement(&revoked), proto::EnforcementStatus::Enforced);

    let new_role_id = recreate_role(&world).await;
    // One grant issued again on the new role (it has sessions of both), one only on it.
    client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&straddling.id)))
        .await
        .unwrap();
    let after = issued_grant(&mut client, "after-1").await;
    for grant in [&straddling, &after] {
        let revoked = client
            .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant.id, "offboarded")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            enforcement(&revoked),
            proto::EnforcementStatus::Enforced,
            "{}",
            grant.id
        );
    }
    // Each session under the RoleId STS reported for it, nothing under a RoleId it never had.
    let mut expected = vec![
        format!("{}:gb-{}", world.role_id, first.id),
        format!("{}:gb-{}", world.role_id, straddling.id),
        format!("{new_role_id}:gb-{}", straddling.id),
        format!("{new_role_id}:gb-{}", after.id),
    ];
    expected.sort();
    assert_eq!(denied_user_ids(&world.deny_policy().await.unwrap()), expected);
    // The cached RoleId was refreshed from IAM once a session reported another.
    let cached: String = redis::cmd("HGET")
        .arg(format!("gb:role:{{arn:aws:iam::123456789012:role/{}}}", world.role))
        .arg("role_id")
        .query_async(&mut world.redis.connection().await)
        .await
        .unwrap();
    assert_eq!(cached, new_role_id);
    // The issuance records the RoleId it was issued under.
    let issuances = world.redis.grant(&straddling.id).await.unwrap().issuances;
    let role_ids: Vec<_> = issuances
        .iter()
        .map(|issuance| issuance.role_id.clone().unwrap())
        .collect();
    assert_eq!(role_ids, [world.role_id.clone(), new_role_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_racing_through_two_brokers_all_land_in_the_role_policy() {
    let world = World::new(100).await;
    let settings = world.settings(&world.moto.url);
    let (first, second) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = first.client().await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(issued_grant(&mut client, &format!("race-{n}")).await.id);
    }
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let mut client = if n % 2 == 0 {
            first.client().await
        } else {
            second.client().await
        };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            client
                .revoke_grant(authed(PORTAL_TOKEN, revoke(&id, "incident")))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().state, i32::from(proto::GrantState::Revoked));
    }
    // Some were written by the call, the rest by whichever replica held the role then.
    for id in &ids {
        wait_for(
            &mut client,
            id,
            proto::EnforcementStatus::Enforced,
            Duration::from_secs(20),
        )
        .await;
    }
    let mut expected: Vec<String> = ids.iter().map(|id| format!("{}:gb-{id}", world.role_id)).collect();
    expected.sort();
    assert_eq!(denied_user_ids(&world.deny_policy().await.unwrap()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iam_outage_leaves_enforcement_failed_then_a_restarted_broker_writes_it() {
    let world = World::new(100).await;
    let fake = FakeIam::start(&world.moto.url).await;
    fake.fail_all(Fault::throttling());
    let settings = world.settings(&fake.url);
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let grant = issued_grant(&mut client, "outage").await;
    let revoked = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant.id, "incident")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked.state,
        i32::from(proto::GrantState::Revoked),
        "recorded whatever IAM says"
    );
    assert_eq!(enforcement(&revoked), proto::EnforcementStatus::Failed);
    let error = &revoked.revocation.as_ref().unwrap().enforcement_error;
    assert!(error.starts_with("Throttling: "), "{error}");
    assert!(world.deny_policy().await.is_none());

    // The broker goes away with the work undone; IAM recovers; another broker finishes it.
    drop(server);
    fake.recover();
    let restarted = Server::start(&settings).await;
    let mut client = restarted.client().await;
    let enforced = wait_for(
        &mut client,
        &grant.id,
        proto::EnforcementStatus::Enforced,
        Duration::from_secs(20),
    )
    .await;
    assert!(enforced.revocation.unwrap().enforcement_error.is_empty());
    assert_eq!(
        denied_user_ids(&world.deny_policy().await.unwrap()),
        [format!("{}:gb-{}", world.role_id, grant.id)]
    );
    let events: Vec<String> = world
        .redis
        .events(&grant.id)
        .await
        .iter()
        .filter(|event| event["event"] == "enforcement_changed")
        .map(|event| event["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("failed"));
    assert_eq!(events.last().map(String::as_str), Some("enforced"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_list_that_would_not_fit_becomes_a_cutoff_that_other_grants_see() {
    // The other inline policy leaves 300 characters: a cutoff (194) or two sessions' entries
    // (about 217 + 64) fit, three (about 345) do not.
    let world = World::new(10_240 - 300).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let bystander = issued_grant(&mut client, "bystander").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(issued_grant(&mut client, &format!("doomed-{n}")).await.id);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for id in &ids {
        let revoked = client
            .revoke_grant(authed(PORTAL_TOKEN, revoke(id, "incident")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(enforcement(&revoked), proto::EnforcementStatus::Enforced);
    }
    let document = world.deny_policy().await.unwrap();
    let cutoff = cutoff_of(&document).expect("a token-issue-time cutoff");
    assert!(denied_user_ids(&document).is_empty(), "the cutoff covers them all");
    let last = get(&mut client, &ids[2]).await;
    let revocation = last.revocation.unwrap();
    let at = revocation.cutoff_time.unwrap();
    assert_eq!(
        time::OffsetDateTime::from_unix_timestamp(at.seconds)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        cutoff
    );
    assert!(
        revocation.enforcement_error.contains("cutoff"),
        "{}",
        revocation.enforcement_error
    );
    // The role-wide cutoff is in the ledger once, as the broker's own action.
    let [(entry, details)] = logged(&mut client, "role_cutoff_set").await.try_into().unwrap();
    assert_eq!(
        (entry.caller.as_str(), entry.target.as_str()),
        ("grant-broker", "dev-logs-read")
    );
    assert_eq!(details["cutoff"], cutoff);
    assert_eq!(details["grants"], 3, "the three entries it replaced");
    assert!(details["needed"].as_u64().unwrap() > details["available"].as_u64().unwrap());
    // The bystander's session was issued before the cutoff: its grant says so, stays approved,
    // and issues fresh credentials.
    let seen = get(&mut client, &bystander.id).await;
    assert_eq!(seen.state, i32::from(proto::GrantState::Approved));
    assert_eq!(seen.sessions_denied_before_time.map(|t| t.seconds), Some(at.seconds));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&bystander.id)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_issued_in_the_second_of_a_cutoff_are_issued_again_after_it() {
    // When each AssumeRole call reached STS, in call order (the fake's access keys count calls).
    let arrivals: Arc<std::sync::Mutex<Vec<time::OffsetDateTime>>> = Arc::default();
    let seen = Arc::clone(&arrivals);
    let hook = Arc::new(move |_: &std::collections::HashMap<String, String>| {
        seen.lock().unwrap().push(time::OffsetDateTime::now_utc());
    });
    let world = World::new(10_240 - 300).await;
    let sts = FakeSts::start_with_hook(StsBehaviour::Succeed, hook).await;
    sts.set_role_id(&world.role, &world.role_id);
    let mut settings = world.settings(&world.moto.url);
    settings.sts_endpoint = sts.url.clone();
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    let bystander = issued_grant(&mut client, "bystander").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(issued_grant(&mut client, &format!("doomed-{n}")).await.id);
    }
    for id in &ids[..2] {
        client
            .revoke_grant(authed(PORTAL_TOKEN, revoke(id, "incident")))
            .await
            .unwrap();
    }
    // The third revocation overflows the list into a cutoff at the next whole second; it starts
    // early in a second, so the issuance right after it falls in the cutoff's second.
    let now = time::OffsetDateTime::now_utc();
    let into_next_second = 1_000_000_000 - i64::from(now.nanosecond()) + 20_000_000;
    tokio::time::sleep(Duration::from_nanos(u64::try_from(into_next_second).unwrap())).await;
    client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&ids[2], "incident")))
        .await
        .unwrap();
    let cutoff = get(&mut client, &ids[2]).await.revocation.unwrap().cutoff_time.unwrap();
    let cutoff = time::OffsetDateTime::from_unix_timestamp(cutoff.seconds).unwrap();
    let response = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&bystander.id)))
        .await
        .unwrap()
        .into_inner();
    // The grant IssueCredentials returns is the one GetGrant shows: it says its first session
    // is denied by the cutoff.
    assert_eq!(
        response
            .grant
            .as_ref()
            .unwrap()
            .sessions_denied_before_time
            .as_ref()
            .map(|t| t.seconds),
        Some(cutoff.unix_timestamp())
    );
    let credentials = response.credentials.unwrap();
    let call: usize = credentials
        .access_key_id
        .trim_start_matches("ASIAFAKE")
        .parse()
        .unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(
        arrivals[call] >= cutoff,
        "the credentials returned were issued at {} and the role denies every session issued before {cutoff}",
        arrivals[call]
    );
    // The session the cutoff denied was issued (and is recorded), then one after it.
    assert_eq!(arrivals.len(), 6, "{arrivals:?}");
    assert!(arrivals[4] < cutoff, "{arrivals:?}");
    let grant = get(&mut client, &bystander.id).await;
    assert_eq!(grant.issuance_count, 3);
    assert_eq!(grant.issuances.last().unwrap().access_key_id, credentials.access_key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_vendor_loses_every_live_grant_across_targets_in_one_call() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let enforced = issued_grant(&mut client, "vx-1").await;
    let mut legacy = read_logs_request("vx-2");
    legacy.target = "legacy-logs".into();
    legacy.scopes[0].resources = vec!["arn:aws:s3:::legacy-logs/*".into()];
    let record_only = client
        .request_access(authed(PORTAL_TOKEN, legacy))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let mut other = read_logs_request("vy-1");
    other.grantee = "vendor-y".into();
    let bystander = client
        .request_access(authed(PORTAL_TOKEN, other))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let mut spelled_otherwise = read_logs_request("vx-3");
    spelled_otherwise.grantee = "Vendor-X ".into();
    let near_miss = client
        .request_access(authed(PORTAL_TOKEN, spelled_otherwise))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();

    let request = || proto::RevokeGranteeRequest {
        grantee: "vendor-x".into(),
        reason: "vendor-x is compromised".into(),
        revoker: "incident-commander@example.com".into(),
    };
    let status = client
        .revoke_grantee(authed(PORTAL_TOKEN, request()))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_ADMIN", "admin caller");
    let response = client
        .revoke_grantee(authed(ADMIN_TOKEN, request()))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.truncated);
    assert_eq!(response.examined, 3);
    assert_eq!(
        response.near_misses,
        [proto::GranteeNearMiss {
            grantee: "Vendor-X ".into(),
            live_grants: 1
        }]
    );
    let mut outcomes: Vec<(String, proto::EnforcementStatus)> = response
        .outcomes
        .iter()
        .map(|outcome| {
            let grant = outcome.grant.as_ref().unwrap();
            assert_eq!(grant.revocation.as_ref().unwrap().operation_id, response.operation_id);
            (outcome.grant_id.clone(), enforcement(grant))
        })
        .collect();
    outcomes.sort();
    let mut expected = vec![
        (enforced.id.clone(), proto::EnforcementStatus::Enforced),
        (record_only.id.clone(), proto::EnforcementStatus::NotAvailable),
        (pending.id.clone(), proto::EnforcementStatus::NotNeeded),
    ];
    expected.sort();
    assert_eq!(outcomes, expected);
    for untouched in [&bystander.id, &near_miss.id] {
        assert_eq!(
            get(&mut client, untouched).await.state,
            i32::from(proto::GrantState::Approved)
        );
    }
    assert_eq!(
        denied_user_ids(&world.deny_policy().await.unwrap()),
        [format!("{}:gb-{}", world.role_id, enforced.id)]
    );
    // Again: nothing live is left, and every grant read says so.
    let again = client
        .revoke_grantee(authed(ADMIN_TOKEN, request()))
        .await
        .unwrap()
        .into_inner();
    assert!(again.outcomes.is_empty());
    assert_eq!(again.examined, 3);
    // A grantee nothing ever named: nothing examined, and the near miss still reported.
    let unknown = client
        .revoke_grantee(authed(
            ADMIN_TOKEN,
            proto::RevokeGranteeRequest {
                grantee: "VENDOR-X".into(),
                ..request()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unknown.outcomes.len(), unknown.examined), (0, 0));
    assert_eq!(unknown.near_misses.len(), 1);
    // Each operation is in the ledger, with what it examined and did.
    let operations: Vec<serde_json::Value> = logged(&mut client, "grantee_revoked")
        .await
        .into_iter()
        .map(|(entry, details)| {
            assert_eq!(entry.caller, "security-console");
            assert_eq!(entry.actor, "incident-commander@example.com");
            details
        })
        .collect();
    let summary: Vec<_> = operations
        .iter()
        .map(|d| {
            (
                d["grantee"].as_str().unwrap(),
                d["examined"].as_u64().unwrap(),
                d["revoked"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [("vendor-x", 3, 3), ("vendor-x", 3, 0), ("VENDOR-X", 0, 0)]);
    assert_eq!(operations[0]["operation"], response.operation_id.as_str());
    assert_eq!(operations[0]["reason"], "vendor-x is compromised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_off_a_target_denies_earlier_sessions_and_later_ones_work() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let grant = issued_grant(&mut client, "cut").await;
    let request = |target: &str| proto::RevokeTargetSessionsRequest {
        target: target.into(),
        reason: "keys leaked".into(),
        revoker: String::new(),
    };
    let status = client
        .revoke_target_sessions(authed(PORTAL_TOKEN, request("dev-logs-read")))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_ADMIN", "admin");
    let status = client
        .revoke_target_sessions(authed(ADMIN_TOKEN, request("legacy-logs")))
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "RECORD_ONLY_TARGET", "record-only");

    let cut = client
        .revoke_target_sessions(authed(ADMIN_TOKEN, request("dev-logs-read")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        proto::EnforcementStatus::try_from(cut.enforcement).unwrap(),
        proto::EnforcementStatus::Enforced
    );
    assert_eq!(cut.role_arn, format!("arn:aws:iam::123456789012:role/{}", world.role));
    let document = world.deny_policy().await.unwrap();
    let cutoff = cutoff_of(&document).unwrap();
    let at = cut.cutoff_time.unwrap();
    assert_eq!(
        time::OffsetDateTime::from_unix_timestamp(at.seconds)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        cutoff
    );
    assert!(
        at.seconds > grant.issuances[0].issue_time.unwrap().seconds,
        "the session issued before is covered"
    );
    // The incident action is in the ledger: who, which target and role, the cutoff, why.
    let [(entry, details)] = logged(&mut client, "target_sessions_revoked").await.try_into().unwrap();
    assert_eq!(entry.caller, "security-console");
    assert_eq!(entry.actor, "security-console");
    assert_eq!(entry.target, "dev-logs-read");
    assert_eq!(entry.account_id, "123456789012");
    assert!(entry.grant_id.is_empty());
    assert_eq!(details["role_arn"], cut.role_arn);
    assert_eq!(details["cutoff"], cutoff);
    assert_eq!(details["reason"], "keys leaked");
    let filtered = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                target: "dev-logs-read".into(),
                events: vec!["target_sessions_revoked".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.events.len(), 1, "found by its target");
    // The grant stays valid, says its earlier sessions are cut off, and issues fresh ones that
    // the cutoff does not cover (the call returned once the cutoff second had passed).
    let seen = get(&mut client, &grant.id).await;
    assert_eq!(seen.state, i32::from(proto::GrantState::Approved));
    assert_eq!(seen.sessions_denied_before_time.map(|t| t.seconds), Some(at.seconds));
    let fresh = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap()
        .into_inner();
    let issued_at = fresh.grant.unwrap().issuances.last().unwrap().issue_time.unwrap();
    assert!(
        (issued_at.seconds, issued_at.nanos) >= (at.seconds, 0),
        "a fresh session is issued at or after the cutoff"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_an_issuance_leaves_no_credentials_after_it() {
    let world = World::new(100).await;
    let address: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let target = Arc::clone(&address);
    // While STS mints the second issuance, the grant is revoked through the API.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = Arc::new(move |params: &std::collections::HashMap<String, String>| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) != 1 {
            return;
        }
        let grant_id = params["RoleSessionName"].trim_start_matches("gb-").to_owned();
        let url = target.get().unwrap().clone();
        // Blocks this handler (so STS answers only after the revocation) without holding up the
        // runtime's other tasks: block_in_place hands them to another thread.
        let revoking = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let channel = tonic::transport::Channel::from_shared(url)
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                    let mut client = proto::grant_broker_client::GrantBrokerClient::new(channel);
                    client
                        .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant_id, "raced")))
                        .await
                        .unwrap();
                });
        });
        tokio::task::block_in_place(|| revoking.join().unwrap());
    });
    let sts = FakeSts::start_with_hook(StsBehaviour::Succeed, hook).await;
    sts.set_role_id(&world.role, &world.role_id);
    let mut settings = world.settings(&world.moto.url);
    settings.sts_endpoint = sts.url.clone();
    let server = Server::start(&settings).await;
    address.set(server.url()).unwrap();
    let mut client = server.client().await;
    let grant = issued_grant(&mut client, "raced").await;
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "GRANT_NOT_ISSUABLE", "revoked");
    let revoked = get(&mut client, &grant.id).await;
    assert_eq!(
        revoked.issuance_count, 1,
        "the raced issuance was discarded, not recorded"
    );
    assert_eq!(enforcement(&revoked), proto::EnforcementStatus::Enforced);
    // The session STS minted anyway has the grant's session name: the deny covers it too.
    assert_eq!(
        denied_user_ids(&world.deny_policy().await.unwrap()),
        [format!("{}:gb-{}", world.role_id, grant.id)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_revokes_waits_for_the_deny_and_reports_each_session() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let grant = issued_grant(&mut client, "cli").await;
    let output = run_cli(vec![
        "revoke".into(),
        grant.id.clone(),
        "--reason".into(),
        "offboarded".into(),
        "--wait".into(),
        "--server".into(),
        server.url(),
        "--token".into(),
        PORTAL_TOKEN.into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("revoked   by vendor-portal at "), "{stdout}");
    assert!(stdout.contains("enforcement enforced"), "{stdout}");
    assert!(stdout.contains(&format!("session   gb-{}", grant.id)), "{stdout}");

    let other = issued_grant(&mut client, "cli-2").await;
    let output = run_cli(vec![
        "revoke-target-sessions".into(),
        "dev-logs-read".into(),
        "--reason".into(),
        "keys leaked".into(),
        "--json".into(),
        "--server".into(),
        server.url(),
        "--token".into(),
        ADMIN_TOKEN.into(),
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["enforcement"], "ENFORCEMENT_STATUS_ENFORCED", "{printed}");
    assert_eq!(printed["target"], "dev-logs-read");
    let seen = get(&mut client, &other.id).await.sessions_denied_before_time.unwrap();
    let printed_cutoff = time::OffsetDateTime::parse(
        printed["cutoff_time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        printed_cutoff.unix_timestamp_nanos(),
        i128::from(seen.seconds) * 1_000_000_000 + i128::from(seen.nanos),
        "{printed}"
    );

    // A record-only target: no deny can cover its sessions, so waiting says so at once (exit 5).
    let mut request = read_logs_request("cli-record-only");
    request.target = "legacy-logs".into();
    request.scopes[0].resources = vec!["arn:aws:s3:::legacy-logs/*".into()];
    let record_only = client
        .request_access(authed(PORTAL_TOKEN, request))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    let started = std::time::Instant::now();
    let output = run_cli(vec![
        "revoke".into(),
        record_only.id.clone(),
        "--reason".into(),
        "offboarded".into(),
        "--wait".into(),
        "--server".into(),
        server.url(),
        "--token".into(),
        PORTAL_TOKEN.into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("record-only") && stderr.contains(&record_only.id),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "it did not wait out the 30 s"
    );
    assert_eq!(
        get(&mut client, &record_only.id).await.state,
        i32::from(proto::GrantState::Revoked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_pruned_when_their_sessions_expire_and_the_empty_policy_is_deleted() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let first = issued_grant(&mut client, "prune-1").await;
    let second = issued_grant(&mut client, "prune-2").await;
    for grant in [&first, &second] {
        client
            .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant.id, "done")))
            .await
            .unwrap();
    }
    assert_eq!(denied_user_ids(&world.deny_policy().await.unwrap()).len(), 2);

    // Grants last at least 15 minutes: make the first one's sessions expire in two seconds, as
    // its window's end would (the entry's score is when its sessions expire).
    let mut redis = world.redis.connection().await;
    let role_arn = format!("arn:aws:iam::123456789012:role/{}", world.role);
    let entries = format!("gb:role:{{{role_arn}}}:entries");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&entries)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 2;
    for member in &members {
        let expiry = if member.starts_with(&first.id) { soon } else { soon + 2 };
        let () = redis::cmd("ZADD")
            .arg(&entries)
            .arg(expiry)
            .arg(member)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let () = redis::cmd("HSET")
        .arg(format!("gb:role:{{{role_arn}}}"))
        .arg("next_check")
        .arg(soon)
        .query_async(&mut redis)
        .await
        .unwrap();

    // The enforcement pass rewrites the role without the first, then deletes the policy.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen_one = false;
    loop {
        match world.deny_policy().await {
            Some(document) => {
                let ids = denied_user_ids(&document);
                if ids == [format!("{}:gb-{}", world.role_id, second.id)] {
                    seen_one = true;
                }
            }
            None => break,
        }
        assert!(Instant::now() < deadline, "the policy was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_one, "the first entry went before the second");
    assert!(
        policy(&world.iam, &world.role, "team-reads-logs").await.is_some(),
        "the other policy stays"
    );
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(&entries)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn revoking_what_cannot_be_revoked_says_why() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let status = client
        .revoke_grant(authed(
            PORTAL_TOKEN,
            revoke("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "x"),
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", "0190a1b2");
    // The rules deny IAM writes: the grant is DENIED, and nothing is left to revoke.
    let mut iam_write = read_logs_request("denied");
    iam_write.target = "staging-iam".into();
    iam_write.scopes = vec![proto::Scope {
        actions: vec!["iam:PutRolePolicy".into()],
        resources: vec!["*".into()],
    }];
    let denied = client
        .request_access(authed(PORTAL_TOKEN, iam_write))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(denied.state, i32::from(proto::GrantState::Denied));
    let status = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&denied.id, "x")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "cannot revoke a grant that is denied",
    );
    let status = client
        .revoke_grantee(authed(
            ADMIN_TOKEN,
            proto::RevokeGranteeRequest {
                grantee: String::new(),
                reason: String::new(),
                revoker: "x\u{202E}".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["grantee", "reason", "revoker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_approvals_always_ends_revoked_with_nothing_issued() {
    let world = World::new(100).await;
    let settings = world.settings(&world.moto.url);
    let (first, second) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = first.client().await;
    for round in 0..5 {
        let grant = client
            .request_access(authed(PORTAL_TOKEN, production_request()))
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        client
            .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "bob@example.com")))
            .await
            .unwrap();
        // The approval that meets the quorum, and a revocation, through different brokers.
        let mut approver = if round % 2 == 0 {
            first.client().await
        } else {
            second.client().await
        };
        let mut revoker = if round % 2 == 0 {
            second.client().await
        } else {
            first.client().await
        };
        let (id_a, id_r) = (grant.id.clone(), grant.id.clone());
        let approving = tokio::spawn(async move {
            approver
                .approve_grant(authed(APPROVALS_TOKEN, approve(&id_a, "carol@example.com")))
                .await
                .map(drop)
                .map_err(|status| error_reason(&status))
        });
        let revoking = tokio::spawn(async move {
            revoker
                .revoke_grant(authed(PORTAL_TOKEN, revoke(&id_r, "withdrawn")))
                .await
                .map(|response| response.into_inner())
        });
        let approved = approving.await.unwrap();
        let revoked = revoking.await.unwrap().unwrap();
        assert_eq!(revoked.state, i32::from(proto::GrantState::Revoked), "round {round}");
        assert!(
            approved.is_ok() || approved == Err("TRANSITION_NOT_ALLOWED".to_owned()),
            "round {round}: {approved:?}"
        );
        let status = client
            .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
            .await
            .unwrap_err();
        assert_status(&status, Code::FailedPrecondition, "GRANT_NOT_ISSUABLE", "revoked");
        // Nothing was ever issued: nothing to deny, whichever landed first.
        let settled = wait_for(
            &mut client,
            &grant.id,
            proto::EnforcementStatus::NotNeeded,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(settled.issuance_count, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_deleted_from_the_role_is_found_written_again_and_the_lapse_recorded() {
    let world = World::new(100).await;
    let server = Server::start(&world.settings(&world.moto.url)).await;
    let mut client = server.client().await;
    let grant = issued_grant(&mut client, "drift").await;
    let revoked = client
        .revoke_grant(authed(PORTAL_TOKEN, revoke(&grant.id, "offboarded")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enforcement(&revoked), proto::EnforcementStatus::Enforced);
    let written = world.deny_policy().await.unwrap();

    // An operator (or an attacker) deletes the broker's deny: within the verify interval (5 s
    // in tests) the broker finds it gone and puts it back.
    world
        .iam
        .delete_role_policy()
        .role_name(&world.role)
        .policy_name(DENY_POLICY_NAME)
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let restored = loop {
        if let Some(document) = world.deny_policy().await {
            break document;
        }
        assert!(std::time::Instant::now() < deadline, "the deny never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(restored, written);
    let read = wait_for(
        &mut client,
        &grant.id,
        proto::EnforcementStatus::Enforced,
        Duration::from_secs(10),
    )
    .await;
    assert!(read.revocation.unwrap().enforcement_error.is_empty());
    // The grant's trail shows the lapse; the ledger shows the drift.
    let statuses: Vec<(String, String)> = world
        .redis
        .events(&grant.id)
        .await
        .iter()
        .filter(|event| event["event"] == "enforcement_changed")
        .map(|event| {
            (
                event["status"].as_str().unwrap().to_owned(),
                event["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let [.., (lapsed, why), (back, _)] = &statuses[..] else {
        panic!("{statuses:?}")
    };
    assert_eq!(
        (lapsed.as_str(), back.as_str()),
        ("pending", "enforced"),
        "{statuses:?}"
    );
    assert!(why.contains("deleted from the role"), "{why}");
    let [(entry, details)] = logged(&mut client, "role_deny_drifted").await.try_into().unwrap();
    assert_eq!(
        (entry.caller.as_str(), entry.target.as_str()),
        ("grant-broker", "dev-logs-read")
    );
    assert_eq!(details["found"], "missing");
    assert_eq!(details["grants"], 1);
}
