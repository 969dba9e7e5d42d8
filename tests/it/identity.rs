//! Verified identity: people's OIDC tokens forwarded by portals and pipelines' workload tokens,
//! checked against real issuers (HTTPS discovery and key sets, keys generated here) by the real
//! server. Every way a token can be wrong is refused for its reason; names without a token are
//! refused where they must be proven; what was verified is recorded, shown, and reaches the rules.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::{Code, Request};

use crate::common::*;
use grant_broker::grpc::proto;

const SSO_PORTAL_TOKEN: &str = "sso-portal-token-0123456789";
const SSO_APPROVALS_TOKEN: &str = "sso-approvals-token-0123456789";
const OTHER_AUDIENCE_TOKEN: &str = "other-audience-token-0123456789";
const AUDIENCE: &str = "grant-broker";
const DEPLOY_AUDIENCE: &str = "grant-broker-deploy";
/// The github issuer's own audience (what callers other than the pipeline present its tokens for).
const GITHUB_AUDIENCE: &str = "https://github.com/acme";

/// The issuers and the server that trusts them.
struct World {
    corp: TestIssuer,
    github: TestIssuer,
    k8s: TestIssuer,
    rsa: SigningKey,
    ec: SigningKey,
    github_key: SigningKey,
    k8s_key: SigningKey,
    server: Server,
    _redis: RedisServer,
}

/// Rules that only the main branch of repository 123 deploys, and only the `payments`
/// namespace's service account reads payments logs.
const WORKLOAD_RULES: &str = r#"
@id("deploy-only-from-main-of-repo-123")
@reason("only the main branch of repository 123 deploys")
forbid (principal, action == GrantBroker::Action::"request", resource == GrantBroker::Target::"dev-logs-read")
when { context.caller == GrantBroker::Caller::"deploy-pipeline" }
unless {
  context.identity.verified && context.identity.issuer == "github" &&
  principal.hasTag("repository_id") && principal.getTag("repository_id") == "123" &&
  principal.hasTag("ref") && principal.getTag("ref") == "refs/heads/main"
};

@id("tickets-marked-for-people-wait")
forbid (principal, action == GrantBroker::Action::"auto_approve", resource)
when { context.ticket == "NEEDS-PEOPLE" };

@id("payments-namespace-only")
@reason("only the payments namespace reads these logs")
forbid (principal, action == GrantBroker::Action::"request", resource == GrantBroker::Target::"app-logs")
when { context.caller == GrantBroker::Caller::"k8s-job" }
unless { principal.hasTag("namespace") && principal.getTag("namespace") == "payments" };
"#;

impl World {
    async fn start() -> Self {
        let (corp, github, k8s) = (
            TestIssuer::start("corp").await,
            TestIssuer::start("github").await,
            TestIssuer::start("k8s").await,
        );
        let (rsa, ec) = (SigningKey::rsa("corp-rsa-1"), SigningKey::ec("corp-ec-1"));
        corp.publish(&[&rsa, &ec]);
        let github_key = SigningKey::rsa("github-1");
        github.publish(&[&github_key]);
        let k8s_key = SigningKey::rsa("k8s-1");
        k8s.publish(&[&k8s_key]);
        let redis = RedisServer::start();
        let mut settings = Settings::new(redis.url(), "http://127.0.0.1:9".into());
        settings.extra_rules = WORKLOAD_RULES.to_owned();
        settings.extra = format!(
            r#"
[identity]
leeway_secs = 5
refetch_interval_secs = 1

[[identity.issuers]]
id = "corp"
issuer = "{corp}"
audience = "{AUDIENCE}"
algorithms = ["RS256", "ES256"]
ca_file = "{corp_ca}"
groups_claim = "groups"
mfa_methods = ["mfa", "hwk"]

[[identity.issuers]]
id = "github"
issuer = "{github}"
audience = "{GITHUB_AUDIENCE}"
kind = "workload"
ca_file = "{github_ca}"
facts = {{ repository_id = "repository_id", repository_owner_id = "repository_owner_id", ref = "ref", job_workflow_ref = "job_workflow_ref", environment = "environment", runner_environment = "runner_environment" }}

[[identity.issuers]]
id = "k8s"
issuer = "{k8s}"
jwks_uri = "{k8s}/jwks"
audience = "grant-broker-k8s"
kind = "workload"
ca_file = "{k8s_ca}"
facts = {{ namespace = "/kubernetes.io/namespace", service_account = "/kubernetes.io/serviceaccount/name", pod = "/kubernetes.io/pod/name" }}

[[callers]]
id = "sso-portal"
token_sha256 = "{sso_portal}"
targets = ["dev-logs-read", "prod-logs-read", "prod-verified"]
identity_issuers = ["corp"]

[[callers]]
id = "sso-approvals"
token_sha256 = "{sso_approvals}"
targets = []
act_for_approvers = true
identity_issuers = ["corp", "github"]

[[callers]]
id = "other-audience-portal"
token_sha256 = "{other_audience}"
targets = ["dev-logs-read"]
identity_issuers = ["corp"]
identity_audience = "grant-broker-other"

[[callers]]
id = "deploy-pipeline"
targets = ["dev-logs-read"]
identity_issuers = ["github"]
identity_required = true
identity_audience = "{DEPLOY_AUDIENCE}"
# Any job on GitHub can get a token for this audience: only acme's (owner id 42) are its own.
identity_claims = {{ repository_owner_id = "42" }}

[[callers]]
id = "k8s-job"
targets = ["app-logs"]
identity_issuers = ["k8s"]
identity_required = true
identity_claims = {{ "/kubernetes.io/serviceaccount/name" = "reader" }}

[[targets]]
id = "prod-verified"
environment = "production"
account_id = "210987654321"
role_arn = "arn:aws:iam::210987654321:role/verified"
region = "us-east-1"
max_duration_secs = 3600
requester_must_be_verified = true
approval_mfa_max_age_minutes = 10
[[targets.ceiling]]
actions = ["s3:GetObject"]
resources = ["arn:aws:s3:::acme-prod-logs/*"]
"#,
            corp = corp.url,
            corp_ca = corp.ca.display(),
            github = github.url,
            github_ca = github.ca.display(),
            k8s = k8s.url,
            k8s_ca = k8s.ca.display(),
            sso_portal = sha256_hex(SSO_PORTAL_TOKEN),
            sso_approvals = sha256_hex(SSO_APPROVALS_TOKEN),
            other_audience = sha256_hex(OTHER_AUDIENCE_TOKEN),
        );
        let server = Server::start(&settings).await;
        Self {
            corp,
            github,
            k8s,
            rsa,
            ec,
            github_key,
            k8s_key,
            server,
            _redis: redis,
        }
    }

    /// A person's token from the corp issuer, signed with its RSA key.
    fn person(&self, subject: &str, claims: Value) -> String {
        self.corp.token(&self.rsa, AUDIENCE, subject, claims)
    }
}

/// `message` as `caller_token`'s caller sends it, with `identity` in `x-identity-token`.
fn with_identity<T>(caller_token: Option<&str>, identity: &str, message: T) -> Request<T> {
    let mut request = match caller_token {
        Some(token) => authed(token, message),
        None => Request::new(message),
    };
    request
        .metadata_mut()
        .insert("x-identity-token", identity.parse().unwrap());
    request
}

fn production_request_by(requester: &str) -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        requester: requester.to_owned(),
        ..production_request()
    }
}

/// What a pipeline asks for: its own token names the requester.
fn pipeline_request(target: &str) -> proto::RequestAccessRequest {
    proto::RequestAccessRequest {
        target: target.to_owned(),
        requester: String::new(),
        ..read_logs_request("")
    }
}

fn verified_identity(identity: Option<&proto::Identity>) -> &proto::Identity {
    let identity = identity.expect("an identity is shown");
    assert_eq!(identity.proof(), proto::IdentityProof::Verified, "{identity:?}");
    identity
}

#[tokio::test]
async fn a_verified_person_is_the_requester_and_the_ledger_says_so() {
    let world = World::start().await;
    let mut client = world.server.client().await;
    let token = world.person(
        "alice@example.com",
        json!({ "groups": ["engineers"], "amr": ["pwd", "mfa"], "auth_time": time::OffsetDateTime::now_utc().unix_timestamp() }),
    );

    // The token names the requester: the message may leave it empty ...
    let granted = client
        .request_access(with_identity(Some(SSO_PORTAL_TOKEN), &token, production_request_by("")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(granted.requester, "alice@example.com");
    let identity = verified_identity(granted.requester_identity.as_ref());
    assert_eq!(
        (identity.issuer.as_str(), identity.kind.as_str(), identity.mfa),
        ("corp", "person", true)
    );
    assert_eq!(identity.groups, ["engineers"]);

    // ... or agree with it; naming someone else is refused.
    let same = production_request_by("alice@example.com");
    client
        .request_access(with_identity(Some(SSO_PORTAL_TOKEN), &token, same))
        .await
        .unwrap();
    let other = client
        .request_access(with_identity(
            Some(SSO_PORTAL_TOKEN),
            &token,
            production_request_by("mallory@example.com"),
        ))
        .await
        .unwrap_err();
    assert_status(&other, Code::PermissionDenied, "IDENTITY_MISMATCH", "alice@example.com");

    // Without a token this caller names only itself.
    let asserted = client
        .request_access(authed(SSO_PORTAL_TOKEN, production_request_by("alice@example.com")))
        .await
        .unwrap_err();
    assert_status(
        &asserted,
        Code::PermissionDenied,
        "IDENTITY_NOT_VERIFIED",
        "may name only itself",
    );
    let itself = client
        .request_access(authed(SSO_PORTAL_TOKEN, production_request_by("sso-portal")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(
        itself.requester_identity.unwrap().proof(),
        proto::IdentityProof::Asserted
    );
    let nobody = client
        .request_access(authed(SSO_PORTAL_TOKEN, production_request_by("")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&nobody), ["requester"]);

    // The audit log records the verification with the event, and how it was only asserted.
    let mut auditor = world.server.client().await;
    let requested = logged(&mut auditor, "requested").await;
    let proofs: Vec<(String, String, Option<String>)> = requested
        .iter()
        .map(|(entry, json)| {
            let person = entry.person.as_ref().unwrap();
            assert_eq!(json["person"]["name"], person.name.as_str());
            (
                person.name.clone(),
                json["person"]["proof"].as_str().unwrap().to_owned(),
                json["person"]["issuer"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        proofs,
        [
            ("alice@example.com".into(), "verified".into(), Some("corp".into())),
            ("alice@example.com".into(), "verified".into(), Some("corp".into())),
            ("sso-portal".into(), "asserted".into(), None),
        ]
    );
}

/// Every way a token can be wrong, and what the caller is told.
#[tokio::test]
async fn tokens_that_do_not_verify_are_refused_for_their_reason() {
    let world = World::start().await;
    let mut client = world.server.client().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let stranger = SigningKey::rsa("corp-rsa-1");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong audience",
            world.corp.token(&world.rsa, "someone-else", "alice", json!({})),
            "not for this audience",
        ),
        (
            "another caller's audience",
            world.corp.token(&world.rsa, DEPLOY_AUDIENCE, "alice", json!({})),
            "not for this audience",
        ),
        (
            "an issuer nobody configured",
            world
                .rsa
                .sign(&json!({ "iss": "https://evil.example", "aud": AUDIENCE, "sub": "alice", "exp": now + 600 })),
            "is not configured",
        ),
        (
            "an issuer this caller may not present",
            world
                .github
                .token(&world.github_key, DEPLOY_AUDIENCE, "repo:acme/app", json!({})),
            "may not present identity tokens of issuer `github`",
        ),
        ("expired", world.person("alice", json!({ "exp": now - 600 })), "expired"),
        (
            "not yet valid",
            world.person("alice", json!({ "nbf": now + 600 })),
            "not valid for another",
        ),
        (
            "issued in the future",
            world.person("alice", json!({ "iat": now + 600 })),
            "issued in the future",
        ),
        (
            "no expiry",
            world.person("alice", json!({ "exp": null })),
            "not a number",
        ),
        (
            "a key the set does not hold",
            world
                .corp
                .token(&SigningKey::rsa("corp-rsa-2"), AUDIENCE, "alice", json!({})),
            "no key `corp-rsa-2`",
        ),
        (
            "the right kid, another key",
            world.corp.token(&stranger, AUDIENCE, "alice", json!({})),
            "signature does not verify",
        ),
        (
            "alg none",
            unsigned_token("corp-rsa-1", &world.corp.claims(AUDIENCE, "alice", json!({}))),
            "header is not acceptable",
        ),
        (
            "HS256 keyed with the RSA public key",
            hmac_token(
                "corp-rsa-1",
                &world.rsa.public_pem,
                &world.corp.claims(AUDIENCE, "alice", json!({})),
            ),
            "signed with HS256",
        ),
        (
            "an RSA kid with an EC signature",
            {
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some("corp-rsa-1".into());
                let claims = world.corp.claims(AUDIENCE, "alice", json!({}));
                let signed = world.ec.sign(&claims);
                // The EC key's signature under a header naming the RSA key.
                let header = base64_json(&serde_json::to_value(&header).unwrap());
                let mut parts = signed.splitn(2, '.');
                parts.next();
                format!("{header}.{}", parts.next().unwrap())
            },
            "does not fit the key",
        ),
        ("not a JWT", "definitely-not-a-jwt".into(), "not a JWT"),
    ];
    for (case, token, says) in cases {
        let caller = if case == "another caller's audience" {
            OTHER_AUDIENCE_TOKEN
        } else {
            SSO_PORTAL_TOKEN
        };
        let refused = client
            .list_targets(with_identity(Some(caller), &token, proto::ListTargetsRequest {}))
            .await
            .unwrap_err();
        assert!(!refused.message().contains(&token), "{case}: the token is echoed");
        if case == "a key the set does not hold" {
            assert!(unknown_key(&refused, "corp-rsa-2"), "{refused:?}");
            continue;
        }
        assert_eq!(refused.code(), Code::Unauthenticated, "{case}: {refused:?}");
        assert_eq!(error_reason(&refused), "IDENTITY_TOKEN_INVALID", "{case}");
        assert!(refused.message().contains(says), "{case}: `{}`", refused.message());
        assert!(!refused.message().contains(&token), "{case}: the token is echoed");
    }
    // The ES256 key of the same set verifies.
    let ec = world.corp.token(&world.ec, AUDIENCE, "alice", json!({}));
    client
        .list_targets(with_identity(Some(SSO_PORTAL_TOKEN), &ec, proto::ListTargetsRequest {}))
        .await
        .unwrap();
}

/// A token whose `kid` the set lacks: refused (UNAUTHENTICATED) when the set was just fetched,
/// or UNAVAILABLE (try again) while the refetch interval is closed; either way saying which key.
fn unknown_key(refused: &tonic::Status, kid: &str) -> bool {
    let said = refused.message().contains(&format!("no key `{kid}`"));
    match refused.code() {
        Code::Unauthenticated => said && error_reason(refused) == "IDENTITY_TOKEN_INVALID",
        Code::Unavailable => said && error_reason(refused) == "IDENTITY_KEYS_UNAVAILABLE",
        _ => false,
    }
}

fn base64_json(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn unknown_keys_are_fetched_at_most_once_per_interval_and_rotation_retires_the_old_key() {
    let world = World::start().await;
    let client = world.server.client().await;
    world.corp.set_max_age(1);
    let call = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .list_targets(with_identity(
                    Some(SSO_PORTAL_TOKEN),
                    &token,
                    proto::ListTargetsRequest {},
                ))
                .await
        }
    };
    call(world.person("alice", json!({}))).await.unwrap();
    let fetched = world.corp.jwks_fetches();
    assert_eq!(fetched, 1, "one fetch serves every token until the set goes stale");

    // A key the set does not hold yet: refused; a burst of them fetches at most once, and
    // within the interval the answer is to try again (the issuer may just have added it).
    let next = SigningKey::rsa("corp-rsa-2");
    for _ in 0..5 {
        let refused = call(world.corp.token(&next, AUDIENCE, "alice", json!({})))
            .await
            .unwrap_err();
        assert!(unknown_key(&refused, "corp-rsa-2"), "{refused:?}");
    }
    assert!(
        world.corp.jwks_fetches() <= fetched + 1,
        "an unknown kid fetches at most once per interval: {} fetches",
        world.corp.jwks_fetches()
    );

    // Rotation: both keys during the overlap, then only the new one.
    world.corp.publish(&[&world.rsa, &next]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    call(world.corp.token(&next, AUDIENCE, "alice", json!({})))
        .await
        .unwrap();
    call(world.person("alice", json!({}))).await.unwrap();
    world.corp.publish(&[&next]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let retired = call(world.person("alice", json!({}))).await.unwrap_err();
    assert_status(
        &retired,
        Code::Unauthenticated,
        "IDENTITY_TOKEN_INVALID",
        "no key `corp-rsa-1`",
    );
    call(world.corp.token(&next, AUDIENCE, "alice", json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_endpoint_that_is_down_keeps_the_last_good_set_and_never_passes_without_one() {
    let world = World::start().await;
    let client = world.server.client().await;
    let call = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .list_targets(with_identity(
                    Some(SSO_PORTAL_TOKEN),
                    &token,
                    proto::ListTargetsRequest {},
                ))
                .await
        }
    };
    world.corp.set_max_age(1);
    call(world.person("alice", json!({}))).await.unwrap();
    world.corp.set_down(true);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Stale, and the refresh fails: the last good set still verifies.
    call(world.person("alice", json!({}))).await.unwrap();
    assert!(world.corp.jwks_fetches() >= 2, "the stale set was fetched again");

    // An issuer whose keys were never fetched: UNAVAILABLE, never a pass.
    world.k8s.set_down(true);
    let job = world.k8s.token(
        &world.k8s_key,
        "grant-broker-k8s",
        "system:serviceaccount:payments:reader",
        json!({}),
    );
    let mut client = world.server.client().await;
    let unavailable = client
        .list_targets(with_identity(None, &job, proto::ListTargetsRequest {}))
        .await
        .unwrap_err();
    assert_status(
        &unavailable,
        Code::Unavailable,
        "IDENTITY_KEYS_UNAVAILABLE",
        "could not be fetched",
    );
}

#[tokio::test]
async fn decisions_in_a_persons_name_need_that_person_verified_and_recently_with_mfa() {
    let world = World::start().await;
    let mut client = world.server.client().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let requester = world.person("alice@example.com", json!({}));
    let grant = client
        .request_access(with_identity(
            Some(SSO_PORTAL_TOKEN),
            &requester,
            proto::RequestAccessRequest {
                target: "prod-verified".into(),
                scopes: vec![proto::Scope {
                    actions: vec!["s3:GetObject".into()],
                    resources: vec!["arn:aws:s3:::acme-prod-logs/x/*".into()],
                }],
                ..production_request_by("")
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(grant.state(), proto::GrantState::PendingApproval);
    // The target demands a verified requester: a caller may not even name itself there.
    let itself = client
        .request_access(authed(
            SSO_PORTAL_TOKEN,
            proto::RequestAccessRequest {
                target: "prod-verified".into(),
                scopes: vec![proto::Scope {
                    actions: vec!["s3:GetObject".into()],
                    resources: vec!["arn:aws:s3:::acme-prod-logs/x/*".into()],
                }],
                ..production_request_by("sso-portal")
            },
        ))
        .await
        .unwrap_err();
    assert_status(
        &itself,
        Code::PermissionDenied,
        "IDENTITY_NOT_VERIFIED",
        "this target requires a verified identity token",
    );

    // Approving without a token, as a portal that may not assert people: refused.
    let unverified = client
        .approve_grant(authed(SSO_APPROVALS_TOKEN, approve(&grant.id, "erin@example.com")))
        .await
        .unwrap_err();
    assert_status(
        &unverified,
        Code::PermissionDenied,
        "IDENTITY_NOT_VERIFIED",
        "requires their verified identity token",
    );
    // A job's token never approves.
    let job = world.github.token(
        &world.github_key,
        GITHUB_AUDIENCE,
        "repo:acme/app:ref:refs/heads/main",
        json!({}),
    );
    let by_job = client
        .approve_grant(with_identity(Some(SSO_APPROVALS_TOKEN), &job, approve(&grant.id, "")))
        .await
        .unwrap_err();
    assert_status(&by_job, Code::PermissionDenied, "IDENTITY_NOT_A_PERSON", "workload");

    // Verified, in the security group by the token, but without MFA: the target refuses.
    let erin = |claims: Value| world.person("erin@example.com", merged(json!({ "groups": ["security"] }), claims));
    let no_mfa = client
        .approve_grant(with_identity(
            Some(SSO_APPROVALS_TOKEN),
            &erin(json!({ "amr": ["pwd"], "auth_time": now })),
            approve(&grant.id, ""),
        ))
        .await
        .unwrap_err();
    assert_status(
        &no_mfa,
        Code::PermissionDenied,
        "APPROVER_MFA_REQUIRED",
        "does not show MFA",
    );
    let stale = client
        .approve_grant(with_identity(
            Some(SSO_APPROVALS_TOKEN),
            &erin(json!({ "amr": ["hwk"], "auth_time": now - 1_200 })),
            approve(&grant.id, ""),
        ))
        .await
        .unwrap_err();
    assert_status(&stale, Code::PermissionDenied, "APPROVER_MFA_REQUIRED", "too long ago");
    let approved = client
        .approve_grant(with_identity(
            Some(SSO_APPROVALS_TOKEN),
            &erin(json!({ "amr": ["hwk"], "auth_time": now - 60 })),
            approve(&grant.id, ""),
        ))
        .await
        .unwrap()
        .into_inner();
    let approval = &approved.approvals[0];
    assert_eq!(approval.approver, "erin@example.com");
    assert_eq!(
        approval.groups,
        ["security"],
        "the token's groups count toward the quorum"
    );
    let identity = verified_identity(approval.approver_identity.as_ref());
    assert!(identity.mfa && identity.auth_time.is_some(), "{identity:?}");

    // The same person revoking in their name is recorded as verified too.
    let revoked = client
        .revoke_grant(with_identity(
            Some(SSO_APPROVALS_TOKEN),
            &erin(json!({ "amr": ["hwk"], "auth_time": now })),
            proto::RevokeGrantRequest {
                id: grant.id.clone(),
                reason: "not needed after all".into(),
                revoker: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let revocation = revoked.revocation.unwrap();
    assert_eq!(revocation.revoker, "erin@example.com");
    verified_identity(revocation.revoker_identity.as_ref());
}

#[tokio::test]
async fn a_pipelines_token_alone_identifies_it_and_its_claims_drive_the_rules() {
    let world = World::start().await;
    let mut client = world.server.client().await;
    let job = |claims: Value| {
        world.github.token(
            &world.github_key,
            DEPLOY_AUDIENCE,
            "repo:acme/app:environment:production",
            merged(
                json!({
                    "repository": "acme/app",
                    "repository_id": "123",
                    "repository_owner_id": "42",
                    "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
                    "environment": "production",
                    "runner_environment": "github-hosted",
                }),
                claims,
            ),
        )
    };
    let explain = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .explain_request(with_identity(None, &token, pipeline_request("dev-logs-read")))
                .await
                .map(|response| response.into_inner().decision.unwrap())
        }
    };
    let main = explain(job(json!({ "ref": "refs/heads/main" }))).await.unwrap();
    assert_ne!(main.outcome(), proto::DecisionOutcome::Deny, "{main:?}");
    let branch = explain(job(json!({ "ref": "refs/heads/feature" }))).await.unwrap();
    assert_eq!(branch.outcome(), proto::DecisionOutcome::Deny);
    assert_eq!(branch.policy_ids, ["deploy-only-from-main-of-repo-123"]);
    let fork = explain(job(json!({ "ref": "refs/heads/main", "repository_id": "999" })))
        .await
        .unwrap();
    assert_eq!(fork.outcome(), proto::DecisionOutcome::Deny);

    // Without its token the pipeline is nobody.
    let anonymous = client
        .list_targets(Request::new(proto::ListTargetsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // A Kubernetes service account's projected token, claims nested under `kubernetes.io`.
    let pod = |namespace: &str| {
        world.k8s.token(
            &world.k8s_key,
            "grant-broker-k8s",
            &format!("system:serviceaccount:{namespace}:reader"),
            json!({ "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": "reader", "uid": "8f1c" },
                "pod": { "name": "reader-7d9f", "uid": "1a2b" },
            }}),
        )
    };
    let app_logs = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .explain_request(with_identity(
                    None,
                    &token,
                    proto::RequestAccessRequest {
                        scopes: vec![proto::Scope {
                            actions: vec!["logs:GetLogEvents".into()],
                            resources: vec!["arn:aws:logs:us-west-2:123456789012:log-group:app-payments-prod".into()],
                        }],
                        ..pipeline_request("app-logs")
                    },
                ))
                .await
        }
    };
    let payments = app_logs(pod("payments")).await.unwrap().into_inner().decision.unwrap();
    assert_ne!(payments.outcome(), proto::DecisionOutcome::Deny, "{payments:?}");
    let other = app_logs(pod("marketing")).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(other.policy_ids, ["payments-namespace-only"]);
}

#[tokio::test]
async fn identity_tokens_are_never_stored_logged_or_echoed() {
    let logs = capture_logs();
    let world = World::start().await;
    let mut client = world.server.client().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let alice = world.person("alice@example.com", json!({ "groups": ["engineers"] }));
    let erin = world.person(
        "erin@example.com",
        json!({ "groups": ["security"], "amr": ["mfa"], "auth_time": now }),
    );
    let expired = world.person("alice@example.com", json!({ "exp": now - 600 }));
    let job = world.github.token(
        &world.github_key,
        DEPLOY_AUDIENCE,
        "repo:acme/app:ref:refs/heads/main",
        json!({ "repository_id": "123", "repository_owner_id": "42", "ref": "refs/heads/main" }),
    );

    let grant = client
        .request_access(with_identity(Some(SSO_PORTAL_TOKEN), &alice, production_request_by("")))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    client
        .approve_grant(with_identity(Some(SSO_APPROVALS_TOKEN), &erin, approve(&grant.id, "")))
        .await
        .unwrap();
    let refused = client
        .request_access(with_identity(
            Some(SSO_PORTAL_TOKEN),
            &expired,
            production_request_by(""),
        ))
        .await
        .unwrap_err();
    client
        .explain_request(with_identity(None, &job, pipeline_request("dev-logs-read")))
        .await
        .unwrap();
    let mut auditor = world.server.client().await;
    let audit: Vec<String> = logged(&mut auditor, "approval_recorded")
        .await
        .into_iter()
        .chain(logged(&mut auditor, "requested").await)
        .map(|(_, json)| json.to_string())
        .collect();
    assert!(
        audit.iter().any(|json| json.contains("erin@example.com")),
        "the approval is logged"
    );

    let dump = world._redis.dump().await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains(&grant.id), "the grant is logged");
    for token in [&alice, &erin, &expired, &job] {
        // The signature is what makes a token usable: no part of it may be anywhere.
        let signature = token.rsplit('.').next().unwrap();
        assert!(signature.len() > 40);
        for (key, value) in &dump {
            assert!(
                !value.contains(signature) && !key.contains(signature),
                "{key} holds a token"
            );
        }
        assert!(!logs.contains(signature), "a log line holds a token");
        assert!(
            !audit.iter().any(|json| json.contains(signature)),
            "an audit event holds a token"
        );
        assert!(!refused.message().contains(signature));
    }
    for caller_token in [SSO_PORTAL_TOKEN, SSO_APPROVALS_TOKEN] {
        assert!(!logs.contains(caller_token) && !dump.iter().any(|(_, value)| value.contains(caller_token)));
    }
}

#[tokio::test]
async fn the_cli_presents_a_pipelines_token_from_a_file() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let job = |git_ref: &str| {
        world.github.token(
            &world.github_key,
            DEPLOY_AUDIENCE,
            "repo:acme/app:ref:refs/heads/main",
            json!({ "repository_id": "123", "repository_owner_id": "42", "ref": git_ref }),
        )
    };
    let explain = |token: String| {
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let args: Vec<String> = [
            "explain",
            "--server",
            &world.server.url(),
            "--identity-token-file",
            token_file.to_str().unwrap(),
            "--target",
            "dev-logs-read",
            "--action",
            "s3:GetObject",
            "--resource",
            "arn:aws:s3:::acme-logs/vendor-x/*",
            "--duration",
            "30m",
            "--grantee",
            "job-42",
            "--json",
        ]
        .map(String::from)
        .into();
        run_cli(args)
    };
    let main = explain(job("refs/heads/main")).await;
    assert!(main.status.success(), "{}", String::from_utf8_lossy(&main.stderr));
    let decided: Value = serde_json::from_slice(&main.stdout).unwrap();
    assert_eq!(decided["decision"]["outcome"], "DECISION_OUTCOME_APPROVE", "{decided}");
    let branch = explain(job("refs/heads/feature")).await;
    let decided: Value = serde_json::from_slice(&branch.stdout).unwrap();
    assert_eq!(decided["decision"]["outcome"], "DECISION_OUTCOME_DENY", "{decided}");
    assert_eq!(
        decided["decision"]["policy_ids"][0],
        "deploy-only-from-main-of-repo-123"
    );
}

#[tokio::test]
async fn a_pipeline_acts_only_as_its_own_jobs() {
    let world = World::start().await;
    let mut client = world.server.client().await;
    let job = |subject: &str, owner: &str| {
        world.github.token(
            &world.github_key,
            DEPLOY_AUDIENCE,
            subject,
            json!({ "repository_id": "123", "repository_owner_id": owner, "ref": "refs/heads/main" }),
        )
    };
    // Any GitHub job can get a token for this audience; only acme's name the caller.
    let stranger = client
        .list_targets(with_identity(
            None,
            &job("repo:evil/app:ref:refs/heads/main", "999"),
            proto::ListTargetsRequest {},
        ))
        .await
        .unwrap_err();
    assert_status(
        &stranger,
        Code::Unauthenticated,
        "IDENTITY_TOKEN_INVALID",
        "`repository_owner_id` is not what this caller requires",
    );

    // Without credentials, a token that names no caller gets one answer, whatever it names:
    // nothing is learnt of which issuers and audiences are configured.
    let anonymous = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .list_targets(with_identity(None, &token, proto::ListTargetsRequest {}))
                .await
                .unwrap_err()
                .message()
                .to_owned()
        }
    };
    let unbound = world
        .github
        .token(&world.github_key, "some-audience", "repo:acme/app", json!({}));
    let unconfigured = world
        .rsa
        .sign(&json!({ "iss": "https://nobody.example", "aud": DEPLOY_AUDIENCE, "exp": 0 }));
    assert_eq!(anonymous(unbound).await, anonymous(unconfigured).await);
    assert_eq!(
        anonymous("junk".into()).await,
        anonymous(world.person("alice", json!({}))).await
    );

    let deploy = job("repo:acme/app:ref:refs/heads/main", "42");
    let waiting = proto::RequestAccessRequest {
        ticket: "NEEDS-PEOPLE".into(),
        ..pipeline_request("dev-logs-read")
    };
    let grant = client
        .request_access(with_identity(None, &deploy, waiting))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(grant.state(), proto::GrantState::PendingApproval);
    assert_eq!(grant.requester, "repo:acme/app:ref:refs/heads/main");
    assert_eq!(grant.requester_identity.as_ref().unwrap().kind, "workload");

    // Another job of the same caller does not act on it.
    let other_job = job("repo:acme/other:ref:refs/heads/main", "42");
    let cancel = |token: String| {
        let mut client = client.clone();
        let id = grant.id.clone();
        async move {
            client
                .cancel_grant(with_identity(
                    None,
                    &token,
                    proto::CancelGrantRequest {
                        id,
                        reason: "not mine".into(),
                    },
                ))
                .await
        }
    };
    let refused = cancel(other_job.clone()).await.unwrap_err();
    assert_status(&refused, Code::PermissionDenied, "IDENTITY_MISMATCH", "repo:acme/other");
    let revoke = |token: String| {
        let mut client = client.clone();
        let id = grant.id.clone();
        async move {
            client
                .revoke_grant(with_identity(
                    None,
                    &token,
                    proto::RevokeGrantRequest {
                        id,
                        reason: "deploy aborted".into(),
                        revoker: String::new(),
                    },
                ))
                .await
        }
    };
    let refused = revoke(other_job).await.unwrap_err();
    assert_status(&refused, Code::PermissionDenied, "IDENTITY_MISMATCH", "repo:acme/other");

    // Its own job takes it back, with no person named: a job's token names nobody.
    let revoked = revoke(deploy).await.unwrap().into_inner();
    assert_eq!(revoked.state(), proto::GrantState::Revoked);
    assert_eq!(revoked.revocation.unwrap().revoker, "");
}
