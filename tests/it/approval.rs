//! Human approval end to end: quorum across groups, eligibility by the rules, no self-approval,
//! denial, the window starting at the approval, and racing approvals from two broker processes
//! meeting a quorum exactly once. Real server, real Redis, the fake STS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;

/// A production request, which the example rules send to security and a team lead.
async fn pending(client: &mut Client) -> proto::Grant {
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

fn state(grant: &proto::Grant) -> proto::GrantState {
    proto::GrantState::try_from(grant.state).unwrap()
}

#[tokio::test]
async fn a_quorum_of_security_and_a_team_lead_approves_and_starts_the_window() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = pending(&mut client).await;
    assert_eq!(grant.approvals_required, "security:1, team-leads:1");
    let deadline = grant.pending_expire_time.unwrap().seconds - grant.create_time.unwrap().seconds;
    assert_eq!(deadline, 24 * 3600, "pending requests expire after a day");

    // Only a caller configured to relay approvals may.
    let status = client
        .approve_grant(authed(PORTAL_TOKEN, approve(&grant.id, "bob@example.com")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::PermissionDenied,
        "CALLER_MAY_NOT_APPROVE",
        "act_for_approvers",
    );
    // The requester never approves their own request, whatever their groups.
    let status = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "alice@example.com")))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "SELF_APPROVAL", "cannot approve it");
    // Someone the rules do not let approve.
    let status = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "mallory@example.com")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::PermissionDenied,
        "APPROVER_NOT_ELIGIBLE",
        "no rule lets `mallory@example.com` approve",
    );

    // Security first: recorded, still pending; the same approval again changes nothing.
    for _ in 0..2 {
        let after_bob = client
            .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "bob@example.com")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&after_bob), proto::GrantState::PendingApproval);
        assert_eq!(after_bob.approvals.len(), 1);
        assert_eq!(after_bob.approvals[0].groups, ["security"]);
        assert_eq!(after_bob.approvals[0].caller, "approval-portal");
    }
    let status = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "GRANT_NOT_ISSUABLE",
        "pending_approval",
    );
    // Machine-readable details name states as the API's enum does; prose says them plainly.
    assert_eq!(
        error_metadata(&status, "state").as_deref(),
        Some("GRANT_STATE_PENDING_APPROVAL")
    );
    assert_eq!(
        precondition_descriptions(&status),
        ["grant is GRANT_STATE_PENDING_APPROVAL, not GRANT_STATE_APPROVED"]
    );

    // A team lead meets the quorum: approved, and the window starts now with the full duration.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let approved = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "carol@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&approved), proto::GrantState::Approved);
    let (start, end) = (approved.start_time.unwrap().seconds, approved.end_time.unwrap().seconds);
    assert!(
        start > grant.start_time.unwrap().seconds,
        "the window starts at the approval"
    );
    assert_eq!(end - start, 1800, "with the whole requested duration");
    assert!(
        approved.session_policy.contains(&time_text(end)),
        "{}",
        approved.session_policy
    );

    // The caller that asked can now get credentials; STS sees the moved window.
    let issued = client
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&grant.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(issued.credentials.is_some());
    let call = sts.calls().pop().unwrap();
    assert!(call["Policy"].contains(&time_text(end)), "{}", call["Policy"]);

    let events: Vec<String> = redis
        .events(&grant.id)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events,
        [
            "requested",
            "approval_recorded",
            "approval_recorded",
            "approved",
            "issuing",
            "issued"
        ]
    );
    // The approval that met the quorum, retried (a portal whose answer was lost), and an
    // earlier one: the grant as it is now, nothing recorded twice.
    for approver in ["carol@example.com", "bob@example.com", "carol@example.com"] {
        let again = client
            .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, approver)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&again), proto::GrantState::Approved);
        assert_eq!(again.approvals.len(), 2);
        assert_eq!(again.issuance_count, 1);
    }
    assert_eq!(redis.events(&grant.id).await.len(), events.len());
    // Approving what is approved is refused, naming the state.
    let status = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "dave@example.com")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "that is approved",
    );
}

fn time_text(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn one_denial_by_an_eligible_approver_denies() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let grant = pending(&mut client).await;
    let deny = |approver: &str, reason: &str| proto::DenyGrantRequest {
        id: grant.id.clone(),
        approver: approver.to_owned(),
        reason: reason.to_owned(),
    };
    let status = client
        .deny_grant(authed(APPROVALS_TOKEN, deny("bob@example.com", " ")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["reason"]);
    let status = client
        .deny_grant(authed(APPROVALS_TOKEN, deny("mallory@example.com", "no")))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status), "APPROVER_NOT_ELIGIBLE");
    let denied = client
        .deny_grant(authed(
            APPROVALS_TOKEN,
            deny("bob@example.com", "not during the freeze"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&denied), proto::GrantState::Denied);
    let last = redis.events(&grant.id).await.pop().unwrap();
    assert_eq!(last["event"], "denied");
    assert_eq!(last["approver"], "bob@example.com");
    assert_eq!(last["reason"], "not during the freeze");
    // Final: neither approved nor denied again.
    let status = client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "carol@example.com")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TRANSITION_NOT_ALLOWED",
        "that is denied",
    );
    assert!(sts.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_approvals_from_two_brokers_meet_the_quorum_exactly_once() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let (first, second) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = first.client().await;
    for round in 0..5 {
        let grant = pending(&mut client).await;
        let mut tasks = Vec::new();
        for (n, approver) in ["bob@example.com", "carol@example.com", "dave@example.com"]
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
                client
                    .approve_grant(authed(APPROVALS_TOKEN, approve(&id, approver)))
                    .await
                    .map(|response| state(&response.into_inner()))
                    .map_err(|status| error_reason(&status))
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let events = redis.events(&grant.id).await;
        let approved_events = events.iter().filter(|e| e["event"] == "approved").count();
        assert_eq!(approved_events, 1, "round {round}: {outcomes:?}");
        // Whoever came after the quorum was met was told so; nobody's approval was lost silently.
        for outcome in &outcomes {
            assert!(
                matches!(
                    outcome,
                    Ok(proto::GrantState::PendingApproval | proto::GrantState::Approved)
                ) || *outcome == Err("TRANSITION_NOT_ALLOWED".to_owned()),
                "round {round}: {outcomes:?}"
            );
        }
        // The `approved` event follows the approval that met the quorum, in the same step.
        let at = events.iter().position(|e| e["event"] == "approved").unwrap();
        assert_eq!(events[at - 1]["event"], "approval_recorded");
        let recorded_before: Vec<&str> = events[..at]
            .iter()
            .filter(|e| e["event"] == "approval_recorded")
            .map(|e| e["approver"].as_str().unwrap())
            .collect();
        assert!(
            recorded_before.len() == 2,
            "round {round}: two people meet security:1 + team-leads:1 here: {recorded_before:?}"
        );
        let stored = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&stored), proto::GrantState::Approved);
    }
}

#[tokio::test]
async fn explain_tells_what_a_request_would_get_and_changes_nothing() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let production = proto::RequestAccessRequest {
        request_id: "ignored".into(),
        ..production_request()
    };
    let explained = client
        .explain_request(authed(PORTAL_TOKEN, production.clone()))
        .await
        .unwrap()
        .into_inner();
    let decision = explained.decision.unwrap();
    assert_eq!(decision.outcome, i32::from(proto::DecisionOutcome::RequireApproval));
    assert_eq!(
        decision.policy_ids,
        ["callers-may-request", "production-needs-security-and-a-lead"]
    );
    assert_eq!(explained.approvals_required, "security:1, team-leads:1");
    // alice is in both groups, but she is the requester.
    assert_eq!(
        explained.eligible_approvers,
        ["bob@example.com", "carol@example.com", "dave@example.com"]
    );
    assert_eq!(explained.session_duration.unwrap().seconds, 1800);
    assert!(
        explained
            .session_policy
            .contains("arn:aws:s3:::acme-prod-logs/vendor-x/*")
    );
    assert!(redis.recorded().await.is_empty(), "nothing recorded");
    assert!(sts.calls().is_empty(), "no AWS call");

    // What RequestAccess then does agrees.
    let made = client
        .request_access(authed(PORTAL_TOKEN, production))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(made.decision.unwrap().policy_ids, decision.policy_ids);
    assert_eq!(made.approvals_required, explained.approvals_required);

    // Invalid requests get the errors RequestAccess gives.
    let mut typo = read_logs_request("");
    typo.scopes[0].actions = vec!["s3:GetObjcet".into()];
    let status = client.explain_request(authed(PORTAL_TOKEN, typo)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["scopes[0].actions[0]"]);
    let mut production_for_pipeline = read_logs_request("");
    production_for_pipeline.target = "prod-logs-read".into();
    let status = client
        .explain_request(authed(PIPELINE_TOKEN, production_for_pipeline))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "TARGET_NOT_ALLOWED", "prod-logs-read");
}

async fn queue(
    client: &mut Client,
    approver: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<String>, String), tonic::Status> {
    client
        .list_grants(authed(
            APPROVALS_TOKEN,
            proto::ListGrantsRequest {
                page_size,
                page_token: page_token.to_owned(),
                waiting_for_approver: approver.to_owned(),
                ..Default::default()
            },
        ))
        .await
        .map(|response| {
            let response = response.into_inner();
            (
                response.grants.into_iter().map(|grant| grant.id).collect(),
                response.next_page_token,
            )
        })
}

#[tokio::test]
async fn approvers_see_the_grants_waiting_for_them() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let first = pending(&mut client).await;
    let second = pending(&mut client).await;
    let withdrawn = pending(&mut client).await;
    let third = pending(&mut client).await;
    client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("")))
        .await
        .unwrap();
    client
        .cancel_grant(authed(
            PORTAL_TOKEN,
            proto::CancelGrantRequest {
                id: withdrawn.id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap();

    let (ids, next) = queue(&mut client, "bob@example.com", 0, "").await.unwrap();
    assert_eq!(
        ids,
        [third.id.clone(), second.id.clone(), first.id.clone()],
        "newest first"
    );
    assert!(next.is_empty());

    // Page by page, the same grants.
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let (ids, next) = queue(&mut client, "bob@example.com", 1, &token).await.unwrap();
        paged.extend(ids);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(paged, [third.id.clone(), second.id.clone(), first.id.clone()]);

    // Once bob has approved one, it leaves his queue, not carol's.
    client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&second.id, "bob@example.com")))
        .await
        .unwrap();
    assert_eq!(
        queue(&mut client, "bob@example.com", 0, "").await.unwrap().0,
        [third.id.clone(), first.id.clone()]
    );
    assert_eq!(
        queue(&mut client, "carol@example.com", 0, "").await.unwrap().0,
        [third.id.clone(), second.id.clone(), first.id.clone()]
    );
    // The requester, and someone the rules do not let approve, have nothing waiting.
    assert!(
        queue(&mut client, "alice@example.com", 0, "")
            .await
            .unwrap()
            .0
            .is_empty()
    );
    assert!(
        queue(&mut client, "mallory@example.com", 0, "")
            .await
            .unwrap()
            .0
            .is_empty()
    );
    // Only a caller that relays approvals may look.
    let status = client
        .list_grants(authed(
            PORTAL_TOKEN,
            proto::ListGrantsRequest {
                waiting_for_approver: "bob@example.com".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status), "CALLER_MAY_NOT_APPROVE");
    // Decided grants leave the queue for good.
    client
        .approve_grant(authed(APPROVALS_TOKEN, approve(&second.id, "carol@example.com")))
        .await
        .unwrap();
    assert_eq!(
        queue(&mut client, "carol@example.com", 0, "").await.unwrap().0,
        [third.id.clone(), first.id.clone()]
    );
    let mut connection = redis.connection().await;
    let queued: Vec<String> = redis::cmd("ZRANGE")
        .arg("gb:pending")
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        queued.len(),
        2,
        "cancelled and approved grants were dropped: {queued:?}"
    );
}

async fn next_change(stream: &mut tonic::Streaming<proto::GrantChange>) -> proto::GrantChange {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("a change within 10 s")
        .unwrap()
        .expect("the stream is still open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_broker_sees_every_change_made_through_another() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let (watched, changed) = (Server::start(&settings).await, Server::start(&settings).await);
    let mut client = watched.client().await;
    let mut other = changed.client().await;
    let grant = pending(&mut client).await;

    let watch = |after_event| proto::WatchGrantRequest {
        id: grant.id.clone(),
        after_event,
    };
    let mut stream = client
        .watch_grant(authed(PORTAL_TOKEN, watch(None)))
        .await
        .unwrap()
        .into_inner();
    let first = next_change(&mut stream).await;
    assert_eq!(
        (first.event.as_str(), first.cursor),
        ("", 1),
        "the grant as it is, one event so far"
    );
    assert_eq!(state(first.grant.as_ref().unwrap()), proto::GrantState::PendingApproval);

    other
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "bob@example.com")))
        .await
        .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!((change.event.as_str(), change.cursor), ("approval_recorded", 2));
    assert!(change.event_json.contains("bob@example.com"), "{}", change.event_json);
    other
        .approve_grant(authed(APPROVALS_TOKEN, approve(&grant.id, "carol@example.com")))
        .await
        .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!((change.event.as_str(), change.cursor), ("approval_recorded", 3));
    let change = next_change(&mut stream).await;
    assert_eq!((change.event.as_str(), change.cursor), ("approved", 4));
    assert_eq!(state(change.grant.as_ref().unwrap()), proto::GrantState::Approved);

    // A watcher that left after cursor 2 resumes without a gap or a repeat.
    let mut resumed = client
        .watch_grant(authed(PORTAL_TOKEN, watch(Some(2))))
        .await
        .unwrap()
        .into_inner();
    // It opens at the cursor it resumed from (the grant as it is now), so a watcher that stores
    // the last cursor it saw and leaves again after this message still gets 3 and 4.
    let snapshot = next_change(&mut resumed).await;
    assert_eq!((snapshot.event.as_str(), snapshot.cursor), ("", 2));
    assert_eq!(state(snapshot.grant.as_ref().unwrap()), proto::GrantState::Approved);
    drop(resumed);
    let mut resumed = client
        .watch_grant(authed(PORTAL_TOKEN, watch(Some(snapshot.cursor))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_change(&mut resumed).await.cursor, 2);
    let missed: Vec<(String, u64)> = [next_change(&mut resumed).await, next_change(&mut resumed).await]
        .into_iter()
        .map(|change| (change.event, change.cursor))
        .collect();
    assert_eq!(
        missed,
        [("approval_recorded".to_owned(), 3), ("approved".to_owned(), 4)]
    );

    // A final state ends both streams.
    other
        .cancel_grant(authed(
            PORTAL_TOKEN,
            proto::CancelGrantRequest {
                id: grant.id.clone(),
                reason: "done".into(),
            },
        ))
        .await
        .unwrap();
    for stream in [&mut stream, &mut resumed] {
        let change = next_change(stream).await;
        assert_eq!((change.event.as_str(), change.cursor), ("cancelled", 5));
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap();
        assert!(end.is_none(), "the stream ends after a final state");
    }

    // Another caller's grant cannot be watched.
    let status = client
        .watch_grant(authed(PIPELINE_TOKEN, watch(None)))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", &grant.id);
    // Resuming past the end opens at the end: nothing is invented.
    let mut ended = client
        .watch_grant(authed(PORTAL_TOKEN, watch(Some(99))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_change(&mut ended).await.cursor, 5);
}

#[tokio::test]
async fn break_glass_skips_the_wait_and_is_reviewed_after_the_fact() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let emergency = |ticket: &str, justification: &str| proto::RequestAccessRequest {
        ticket: ticket.into(),
        justification: justification.into(),
        break_glass: true,
        ..production_request()
    };
    let status = client
        .request_access(authed(PORTAL_TOKEN, emergency("INC-1", "")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["justification"]);

    let response = client
        .request_access(authed(PORTAL_TOKEN, emergency("INC-1", "outage: checkout down")))
        .await
        .unwrap()
        .into_inner();
    assert!(response.credentials.is_some(), "approved at once, no human in the loop");
    let grant = response.grant.unwrap();
    assert!(grant.break_glass);
    assert_eq!(state(&grant), proto::GrantState::Approved);
    assert!(
        grant
            .decision
            .as_ref()
            .unwrap()
            .policy_ids
            .contains(&"break-glass-with-a-ticket".to_owned())
    );
    let events: Vec<String> = redis
        .events(&grant.id)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["requested", "break_glass_used", "issuing", "issued"]);

    // Where the rules do not permit it (two hours), the request waits like any other, saying why.
    let mut long = emergency("INC-1", "outage");
    long.duration = Some(prost_types::Duration {
        seconds: 7200,
        nanos: 0,
    });
    let waiting = client
        .request_access(authed(PORTAL_TOKEN, long))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(state(&waiting), proto::GrantState::PendingApproval);
    assert!(!waiting.break_glass);
    assert!(
        waiting
            .decision
            .unwrap()
            .reason
            .contains("no rule permits break-glass here"),
        "the reason says why"
    );

    // Reviewers see what is left to review; the requester may not review their own.
    let to_review = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            client
                .list_grants(authed(
                    APPROVALS_TOKEN,
                    proto::ListGrantsRequest {
                        break_glass_unreviewed: true,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .grants
                .into_iter()
                .map(|grant| grant.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(to_review(&mut client).await, std::slice::from_ref(&grant.id));
    let review = |reviewer: &str, comment: &str| proto::ReviewGrantRequest {
        id: grant.id.clone(),
        reviewer: reviewer.into(),
        comment: comment.into(),
    };
    let status = client
        .review_grant(authed(APPROVALS_TOKEN, review("alice@example.com", "fine")))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status), "SELF_APPROVAL");
    let status = client
        .review_grant(authed(APPROVALS_TOKEN, review("bob@example.com", "")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["comment"]);
    let reviewed = client
        .review_grant(authed(
            APPROVALS_TOKEN,
            review("bob@example.com", "justified: INC-1 postmortem"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reviewed.review.unwrap().reviewer, "bob@example.com");
    assert!(to_review(&mut client).await.is_empty());
    let status = client
        .review_grant(authed(APPROVALS_TOKEN, review("carol@example.com", "again")))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status), "ALREADY_REVIEWED");
    let status = client
        .review_grant(authed(
            APPROVALS_TOKEN,
            proto::ReviewGrantRequest {
                id: waiting.id.clone(),
                reviewer: "bob@example.com".into(),
                comment: "?".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status), "NOT_BREAK_GLASS");
    assert_eq!(redis.events(&grant.id).await.last().unwrap()["event"], "reviewed");
}
