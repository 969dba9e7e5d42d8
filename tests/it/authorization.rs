//! The authorization matrix, enumerated: every RPC called by every kind of caller against the
//! real server, each outcome asserted exactly (the call passes, or the exact refusal). The table
//! here is the README's "Who may do what"; `domain::access` is the one place that decides it.
//!
//! A call that passes the table may still be refused by the use case on its own terms (an
//! ineligible approver, a grant that is not break-glass, a record-only target): such outcomes
//! are listed as what they are, and prove the table let the call through.

use tonic::Code;

use crate::common::*;
use grant_broker::grpc::proto;

const SCOPED_RELAY_TOKEN: &str = "scoped-relay-token-0123456789";
const INCIDENT_TOKEN: &str = "incident-token-0123456789";
/// A ticket the test's rule sends to people on a target that is otherwise approved at once.
const NEEDS_PEOPLE: &str = "NEEDS-PEOPLE";

/// The roles, in the table's column order.
const ROLES: [(&str, &str); 7] = [
    ("owner", PORTAL_TOKEN),
    ("other requester", PIPELINE_TOKEN),
    ("auditor", AUDITOR_TOKEN),
    ("admin", ADMIN_TOKEN),
    ("relay", APPROVALS_TOKEN),
    ("scoped relay", SCOPED_RELAY_TOKEN),
    ("revoke any", INCIDENT_TOKEN),
];

/// An expected outcome: OK, or a code and ErrorInfo reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome(Code, &'static str);

const OK: Outcome = Outcome(Code::Ok, "");
const NOT_FOUND: Outcome = Outcome(Code::NotFound, "GRANT_NOT_FOUND");
const KEY_NOT_FOUND: Outcome = Outcome(Code::NotFound, "ACCESS_KEY_NOT_FOUND");
const NOT_OWNER: Outcome = Outcome(Code::PermissionDenied, "NOT_GRANT_OWNER");
const NO_RELAY: Outcome = Outcome(Code::PermissionDenied, "CALLER_MAY_NOT_APPROVE");
const NOT_AUDITOR: Outcome = Outcome(Code::PermissionDenied, "NOT_AUDITOR");
const NOT_ADMIN: Outcome = Outcome(Code::PermissionDenied, "NOT_ADMIN");
const NO_TARGET: Outcome = Outcome(Code::PermissionDenied, "TARGET_NOT_ALLOWED");
const INELIGIBLE: Outcome = Outcome(Code::PermissionDenied, "APPROVER_NOT_ELIGIBLE");
const NOT_BREAK_GLASS: Outcome = Outcome(Code::FailedPrecondition, "NOT_BREAK_GLASS");
const RECORD_ONLY: Outcome = Outcome(Code::FailedPrecondition, "RECORD_ONLY_TARGET");

fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), error_reason(&status)),
    }
}

type CallFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (Code, String)> + Send>>;
type Call = fn(Client, &'static str, Grants) -> CallFuture;

/// Fresh grants of the owner for one call, so calls that change a grant never see another's.
struct Grants {
    /// PENDING_APPROVAL on prod-logs-read: for people to decide.
    waiting: String,
    /// PENDING_APPROVAL on dev-logs-read, the scoped relay's one target.
    waiting_scoped: String,
    /// APPROVED at once on dev-logs-read (not for people), with an issuance.
    approved: String,
    access_key: String,
}

async fn fresh_grants(client: &mut Client) -> Grants {
    let approved = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("")))
        .await
        .unwrap()
        .into_inner();
    let waiting = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner();
    let for_people = proto::RequestAccessRequest {
        ticket: NEEDS_PEOPLE.into(),
        ..read_logs_request("")
    };
    let waiting_scoped = client
        .request_access(authed(PORTAL_TOKEN, for_people))
        .await
        .unwrap()
        .into_inner();
    let state = |grant: &Option<proto::Grant>| grant.as_ref().unwrap().state();
    assert_eq!(state(&approved.grant), proto::GrantState::Approved);
    assert_eq!(state(&waiting.grant), proto::GrantState::PendingApproval);
    assert_eq!(state(&waiting_scoped.grant), proto::GrantState::PendingApproval);
    Grants {
        waiting: waiting.grant.unwrap().id,
        waiting_scoped: waiting_scoped.grant.unwrap().id,
        approved: approved.grant.unwrap().id,
        access_key: approved.credentials.unwrap().access_key_id,
    }
}

#[tokio::test]
async fn every_rpc_called_by_every_role() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.extra_rules = format!(
        r#"
@id("matrix-needs-people")
forbid (principal, action == GrantBroker::Action::"auto_approve", resource)
when {{ context.ticket == "{NEEDS_PEOPLE}" }};
"#
    );
    settings.extra = format!(
        r#"
[[callers]]
id = "scoped-relay"
token_sha256 = "{scoped}"
targets = []
act_for_approvers = ["dev-logs-read"]
assert_people = true

[[callers]]
id = "incident-bot"
token_sha256 = "{incident}"
targets = []
revoke = "any"
assert_people = true
"#,
        scoped = sha256_hex(SCOPED_RELAY_TOKEN),
        incident = sha256_hex(INCIDENT_TOKEN),
    );
    let server = Server::start(&settings).await;
    let mut client = server.client().await;

    // Each row: the call, and the outcome for each role in ROLES' order.
    macro_rules! call {
        (|$client:ident, $token:ident, $grants:ident| $body:expr) => {{
            fn call(mut $client: Client, $token: &'static str, $grants: Grants) -> CallFuture {
                Box::pin(async move {
                    let _ = (&mut $client, &$grants);
                    $body
                })
            }
            call as Call
        }};
    }
    let rows: Vec<(&str, Call, [Outcome; 7])> = vec![
        (
            "ListTargets",
            call!(|c, t, g| outcome(c.list_targets(authed(t, proto::ListTargetsRequest {})).await)),
            [OK, OK, OK, OK, OK, OK, OK],
        ),
        (
            "RequestAccess",
            call!(|c, t, g| outcome(c.request_access(authed(t, read_logs_request(""))).await)),
            [OK, OK, NO_TARGET, NO_TARGET, NO_TARGET, NO_TARGET, NO_TARGET],
        ),
        (
            "ExplainRequest",
            call!(|c, t, g| outcome(c.explain_request(authed(t, read_logs_request(""))).await)),
            [OK, OK, NO_TARGET, NO_TARGET, NO_TARGET, NO_TARGET, NO_TARGET],
        ),
        (
            "GetGrant (waiting for people)",
            call!(|c, t, g| outcome(
                c.get_grant(authed(t, proto::GetGrantRequest { id: g.waiting.clone() }))
                    .await
            )),
            [OK, NOT_FOUND, OK, OK, OK, NOT_FOUND, NOT_FOUND],
        ),
        (
            "GetGrant (waiting, on the scoped relay's target)",
            call!(|c, t, g| outcome(
                c.get_grant(authed(
                    t,
                    proto::GetGrantRequest {
                        id: g.waiting_scoped.clone()
                    }
                ))
                .await
            )),
            [OK, NOT_FOUND, OK, OK, OK, OK, NOT_FOUND],
        ),
        (
            "GetGrant (approved at once)",
            call!(|c, t, g| outcome(
                c.get_grant(authed(t, proto::GetGrantRequest { id: g.approved.clone() }))
                    .await
            )),
            [OK, NOT_FOUND, OK, OK, NOT_FOUND, NOT_FOUND, NOT_FOUND],
        ),
        (
            "GetGrantHistory (waiting for people)",
            call!(|c, t, g| outcome(
                c.get_grant_history(authed(t, proto::GetGrantHistoryRequest { id: g.waiting.clone() }))
                    .await
            )),
            [OK, NOT_FOUND, OK, OK, OK, NOT_FOUND, NOT_FOUND],
        ),
        (
            "WatchGrant (waiting for people)",
            call!(|c, t, g| outcome(
                c.watch_grant(authed(
                    t,
                    proto::WatchGrantRequest {
                        id: g.waiting.clone(),
                        after_event: None
                    }
                ))
                .await
            )),
            [OK, NOT_FOUND, OK, OK, OK, NOT_FOUND, NOT_FOUND],
        ),
        (
            "FindGrantByAccessKey (approved at once)",
            call!(|c, t, g| outcome(
                c.find_grant_by_access_key(authed(
                    t,
                    proto::FindGrantByAccessKeyRequest {
                        access_key_id: g.access_key.clone()
                    }
                ))
                .await
            )),
            [OK, KEY_NOT_FOUND, OK, OK, KEY_NOT_FOUND, KEY_NOT_FOUND, KEY_NOT_FOUND],
        ),
        (
            "ListGrants (its own)",
            call!(|c, t, g| outcome(c.list_grants(authed(t, proto::ListGrantsRequest::default())).await)),
            [OK, OK, OK, OK, OK, OK, OK],
        ),
        (
            "ListGrants (another caller's)",
            call!(|c, t, g| outcome(
                c.list_grants(authed(
                    t,
                    proto::ListGrantsRequest {
                        caller: "vendor-portal".into(),
                        ..Default::default()
                    }
                ))
                .await
            )),
            [OK, NOT_AUDITOR, OK, OK, NOT_AUDITOR, NOT_AUDITOR, NOT_AUDITOR],
        ),
        (
            "ListGrants (an approver's queue)",
            call!(|c, t, g| outcome(
                c.list_grants(authed(
                    t,
                    proto::ListGrantsRequest {
                        waiting_for_approver: "bob@example.com".into(),
                        ..Default::default()
                    }
                ))
                .await
            )),
            [NO_RELAY, NO_RELAY, NO_RELAY, NO_RELAY, OK, OK, NO_RELAY],
        ),
        (
            "ListGrants (break-glass to review)",
            call!(|c, t, g| outcome(
                c.list_grants(authed(
                    t,
                    proto::ListGrantsRequest {
                        break_glass_unreviewed: true,
                        ..Default::default()
                    }
                ))
                .await
            )),
            [NO_RELAY, NO_RELAY, NO_RELAY, NO_RELAY, OK, OK, NO_RELAY],
        ),
        (
            "IssueCredentials (approved at once)",
            call!(|c, t, g| outcome(c.issue_credentials(authed(t, issue_for(&g.approved))).await)),
            [OK, NOT_FOUND, NOT_OWNER, NOT_OWNER, NOT_FOUND, NOT_FOUND, NOT_FOUND],
        ),
        (
            "ExtendGrant (approved at once)",
            call!(|c, t, g| outcome(
                c.extend_grant(authed(
                    t,
                    proto::ExtendGrantRequest {
                        id: g.approved.clone(),
                        additional_duration: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                        justification: "more".into(),
                        request_id: String::new(),
                    }
                ))
                .await
            )),
            [OK, NOT_FOUND, NOT_OWNER, NOT_OWNER, NOT_FOUND, NOT_FOUND, NOT_FOUND],
        ),
        (
            "CancelGrant (waiting for people)",
            call!(|c, t, g| outcome(
                c.cancel_grant(authed(
                    t,
                    proto::CancelGrantRequest {
                        id: g.waiting.clone(),
                        reason: "matrix".into()
                    }
                ))
                .await
            )),
            [OK, NOT_FOUND, NOT_OWNER, NOT_OWNER, NOT_OWNER, NOT_FOUND, NOT_FOUND],
        ),
        (
            "ApproveGrant (waiting, an ineligible approver)",
            call!(|c, t, g| outcome(
                c.approve_grant(authed(t, approve(&g.waiting, "mallory@example.com")))
                    .await
            )),
            [NO_RELAY, NO_RELAY, NO_RELAY, NO_RELAY, INELIGIBLE, NOT_FOUND, NO_RELAY],
        ),
        (
            "ApproveGrant (waiting on the scoped relay's target, an ineligible approver)",
            call!(|c, t, g| outcome(
                c.approve_grant(authed(t, approve(&g.waiting_scoped, "mallory@example.com")))
                    .await
            )),
            [NO_RELAY, NO_RELAY, NO_RELAY, NO_RELAY, INELIGIBLE, INELIGIBLE, NO_RELAY],
        ),
        (
            "DenyGrant (waiting, an ineligible approver)",
            call!(|c, t, g| outcome(
                c.deny_grant(authed(
                    t,
                    proto::DenyGrantRequest {
                        id: g.waiting.clone(),
                        approver: "mallory@example.com".into(),
                        reason: "no".into()
                    }
                ))
                .await
            )),
            [NO_RELAY, NO_RELAY, NO_RELAY, NO_RELAY, INELIGIBLE, NOT_FOUND, NO_RELAY],
        ),
        (
            "ReviewGrant (waiting, not break-glass)",
            call!(|c, t, g| outcome(
                c.review_grant(authed(
                    t,
                    proto::ReviewGrantRequest {
                        id: g.waiting.clone(),
                        reviewer: "bob@example.com".into(),
                        comment: "fine".into()
                    }
                ))
                .await
            )),
            [
                NO_RELAY,
                NO_RELAY,
                NO_RELAY,
                NO_RELAY,
                NOT_BREAK_GLASS,
                NOT_FOUND,
                NO_RELAY,
            ],
        ),
        (
            "RevokeGrant (waiting, naming nobody)",
            call!(|c, t, g| outcome(
                c.revoke_grant(authed(
                    t,
                    proto::RevokeGrantRequest {
                        id: g.waiting.clone(),
                        reason: "matrix".into(),
                        revoker: String::new()
                    }
                ))
                .await
            )),
            [OK, NOT_FOUND, NOT_OWNER, OK, NOT_OWNER, NOT_FOUND, OK],
        ),
        (
            "RevokeGrant (waiting, naming an ineligible approver)",
            call!(|c, t, g| outcome(
                c.revoke_grant(authed(
                    t,
                    proto::RevokeGrantRequest {
                        id: g.waiting.clone(),
                        reason: "matrix".into(),
                        revoker: "mallory@example.com".into()
                    }
                ))
                .await
            )),
            [OK, NOT_FOUND, NOT_OWNER, OK, INELIGIBLE, NOT_FOUND, OK],
        ),
        (
            "RevokeGrantee",
            call!(|c, t, g| outcome(
                c.revoke_grantee(authed(
                    t,
                    proto::RevokeGranteeRequest {
                        grantee: "nobody-at-all".into(),
                        reason: "matrix".into(),
                        revoker: String::new()
                    }
                ))
                .await
            )),
            [NOT_ADMIN, NOT_ADMIN, NOT_ADMIN, OK, NOT_ADMIN, NOT_ADMIN, NOT_ADMIN],
        ),
        (
            "RevokeTargetSessions (a record-only target)",
            call!(|c, t, g| outcome(
                c.revoke_target_sessions(authed(
                    t,
                    proto::RevokeTargetSessionsRequest {
                        target: "legacy-logs".into(),
                        reason: "matrix".into(),
                        revoker: String::new()
                    }
                ))
                .await
            )),
            [
                NOT_ADMIN,
                NOT_ADMIN,
                NOT_ADMIN,
                RECORD_ONLY,
                NOT_ADMIN,
                NOT_ADMIN,
                NOT_ADMIN,
            ],
        ),
        (
            "ListAuditEvents",
            call!(|c, t, g| outcome(
                c.list_audit_events(authed(t, proto::ListAuditEventsRequest::default()))
                    .await
            )),
            [NOT_AUDITOR, NOT_AUDITOR, OK, OK, NOT_AUDITOR, NOT_AUDITOR, NOT_AUDITOR],
        ),
        (
            "WatchAuditEvents",
            call!(|c, t, g| outcome(
                c.watch_audit_events(authed(t, proto::WatchAuditEventsRequest::default()))
                    .await
            )),
            [NOT_AUDITOR, NOT_AUDITOR, OK, OK, NOT_AUDITOR, NOT_AUDITOR, NOT_AUDITOR],
        ),
    ];

    // Every RPC of the service has a row.
    let rpcs: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|(name, _, _)| name.split(' ').next().unwrap())
        .collect();
    let service = proto::FILE_DESCRIPTOR_SET;
    let descriptors = prost_reflect::DescriptorPool::decode(service).unwrap();
    let declared: std::collections::BTreeSet<String> = descriptors
        .get_service_by_name("grantbroker.v1.GrantBroker")
        .unwrap()
        .methods()
        .map(|method| method.name().to_owned())
        .collect();
    assert_eq!(
        rpcs.iter()
            .map(|name| (*name).to_owned())
            .collect::<std::collections::BTreeSet<_>>(),
        declared,
        "every RPC, and only those, is in the matrix"
    );

    let mut mismatches = Vec::new();
    for (name, call, expected) in rows {
        for ((role, token), expected) in ROLES.iter().zip(expected) {
            let grants = fresh_grants(&mut client).await;
            let got = call(client.clone(), token, grants).await;
            if got != (expected.0, expected.1.to_owned()) {
                mismatches.push(format!("{name} by {role}: expected {expected:?}, got {got:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
