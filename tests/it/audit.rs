//! Audit reads: from an access key id in a CloudTrail event back to the grant and the issuance.
//! Real server, real Redis, the fake STS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;

fn find(access_key_id: &str) -> proto::FindGrantByAccessKeyRequest {
    proto::FindGrantByAccessKeyRequest {
        access_key_id: access_key_id.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_key_leads_back_to_its_grant_and_issuance_for_those_who_may_see_it() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = Settings::new(redis.url(), sts.url.clone());
    settings.max_issuances_per_grant = 12;
    let server = Server::start(&settings).await;
    let mut client = server.client().await;
    // Twelve issuances: the first falls out of the grant's ten most recent, and is still found.
    let mut keys = Vec::new();
    let mut grant_id = String::new();
    for _ in 0..12 {
        let response = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request("audit-1")))
            .await
            .unwrap()
            .into_inner();
        keys.push(response.credentials.unwrap().access_key_id);
        grant_id = response.grant.unwrap().id;
    }
    for key in [&keys[0], &keys[11]] {
        for token in [PORTAL_TOKEN, AUDITOR_TOKEN, ADMIN_TOKEN] {
            let found = client
                .find_grant_by_access_key(authed(token, find(key)))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(found.grant.unwrap().id, grant_id);
            let issuance = found.issuance.expect("the issuance");
            assert_eq!(&issuance.access_key_id, key);
            assert_eq!(issuance.session_name, format!("gb-{grant_id}"));
        }
    }
    // Another requester caller: as if the key were unknown.
    for key in [keys[0].as_str(), "ASIANOSUCHKEY0000000"] {
        let status = client
            .find_grant_by_access_key(authed(PIPELINE_TOKEN, find(key)))
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, "ACCESS_KEY_NOT_FOUND", key);
    }
    for bad in ["", "ASIA-not-a-key", "short"] {
        let status = client
            .find_grant_by_access_key(authed(AUDITOR_TOKEN, find(bad)))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["access_key_id"], "{bad:?}");
    }
    // The auditor reads the grant itself too; a requester caller does not read another's.
    let read = client
        .get_grant(authed(AUDITOR_TOKEN, proto::GetGrantRequest { id: grant_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.issuance_count, 12);
    let status = client
        .get_grant(authed(PIPELINE_TOKEN, proto::GetGrantRequest { id: grant_id.clone() }))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "GRANT_NOT_FOUND", &grant_id);
    let output = run_cli(vec![
        "find-key".into(),
        keys[3].clone(),
        "--server".into(),
        server.url(),
        "--token".into(),
        AUDITOR_TOKEN.into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with(&format!("{} was issued at ", keys[3])), "{stdout}");
    assert!(stdout.contains(&format!("grant {grant_id}")), "{stdout}");
}

/// One search, as the test's model and the RPC see it.
#[derive(Debug, Clone)]
struct Search {
    requester: Option<&'static str>,
    grantee: Option<&'static str>,
    caller: Option<&'static str>,
    target: Option<&'static str>,
    state: Option<proto::GrantState>,
    live: bool,
    break_glass: Option<bool>,
    /// Created in the first / last part of the run: an index into the grants' creation times.
    since: Option<usize>,
    until: Option<usize>,
    page_size: i32,
}

const REQUESTERS: [&str; 3] = ["alice@example.com", "bob@example.com", "carol@example.com"];
const GRANTEES: [&str; 3] = ["vendor-x", "vendor-y", "job-17"];
const TARGETS: [&str; 3] = ["dev-logs-read", "app-logs", "prod-logs-read"];

fn search_strategy(grants: usize) -> impl proptest::strategy::Strategy<Value = Search> {
    use proptest::prelude::*;
    let pick = |options: &'static [&'static str]| proptest::option::of(proptest::sample::select(options));
    let states = proptest::option::of(proptest::sample::select(vec![
        proto::GrantState::PendingApproval,
        proto::GrantState::Approved,
        proto::GrantState::Cancelled,
        proto::GrantState::Revoked,
        proto::GrantState::Denied,
    ]));
    (
        (
            pick(&REQUESTERS),
            pick(&GRANTEES),
            pick(&["vendor-portal", "ci-pipeline"]),
            pick(&TARGETS),
        ),
        (states, any::<bool>(), proptest::option::of(any::<bool>())),
        (
            proptest::option::of(0..grants),
            proptest::option::of(0..grants),
            1i32..7,
        ),
    )
        .prop_map(
            |((requester, grantee, caller, target), (state, live, break_glass), (since, until, page_size))| Search {
                requester,
                grantee,
                caller,
                target,
                state,
                live,
                break_glass,
                since,
                until,
                page_size,
            },
        )
}

fn timestamp_of(grant: &proto::Grant) -> (i64, i32) {
    let t = grant.create_time.unwrap();
    (t.seconds, t.nanos)
}

/// What the search should return: the model, filtering every grant as read back.
fn expected(all: &[proto::Grant], search: &Search, times: &[prost_types::Timestamp]) -> Vec<String> {
    let now = prost_types::Timestamp::from(std::time::SystemTime::now());
    let mut ids: Vec<&proto::Grant> = all
        .iter()
        .filter(|g| search.requester.is_none_or(|r| g.requester == r))
        .filter(|g| search.grantee.is_none_or(|r| g.grantee == r))
        .filter(|g| search.caller.is_none_or(|r| g.caller == r))
        .filter(|g| search.target.is_none_or(|r| g.target == r))
        .filter(|g| search.state.is_none_or(|s| g.state == i32::from(s)))
        .filter(|g| {
            !search.live
                || (g.state == i32::from(proto::GrantState::Approved) && g.start_time.unwrap().seconds <= now.seconds)
        })
        .filter(|g| search.break_glass.is_none_or(|b| g.break_glass == b))
        .filter(|g| {
            search
                .since
                .is_none_or(|i| timestamp_of(g) >= (times[i].seconds, times[i].nanos))
        })
        .filter(|g| {
            search
                .until
                .is_none_or(|i| timestamp_of(g) < (times[i].seconds, times[i].nanos))
        })
        .collect();
    ids.sort_by(|a, b| b.id.cmp(&a.id));
    ids.iter().map(|g| g.id.clone()).collect()
}

fn request_for(search: &Search, times: &[prost_types::Timestamp], page_token: String) -> proto::ListGrantsRequest {
    proto::ListGrantsRequest {
        page_size: search.page_size,
        page_token,
        requester: search.requester.unwrap_or_default().into(),
        grantee: search.grantee.unwrap_or_default().into(),
        caller: search.caller.unwrap_or_default().into(),
        target: search.target.unwrap_or_default().into(),
        states: search.state.map(i32::from).into_iter().collect(),
        live: search.live,
        break_glass: search.break_glass,
        create_time_from: search.since.map(|i| times[i]),
        create_time_to: search.until.map(|i| times[i]),
        ..Default::default()
    }
}

/// Every page of a search, concatenated.
async fn all_pages(client: &mut Client, token: &str, search: &Search, times: &[prost_types::Timestamp]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    for _ in 0..200 {
        let page = client
            .list_grants(authed(token, request_for(search, times, page_token)))
            .await
            .unwrap()
            .into_inner();
        assert!(page.grants.len() <= usize::try_from(search.page_size).unwrap());
        ids.extend(page.grants.into_iter().map(|g| g.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
    panic!("the search never ended: {search:?}");
}

/// Grants of every kind: three requesters, grantees and targets, two callers, pending, approved,
/// denied, cancelled, revoked and break-glass.
async fn populate(client: &mut Client) -> Vec<proto::Grant> {
    let mut made = Vec::new();
    for n in 0..24usize {
        let target = TARGETS[n % 3];
        let mut request = read_logs_request(&format!("search-{n}"));
        request.requester = REQUESTERS[(n / 3) % 3].into();
        request.grantee = GRANTEES[(n / 2) % 3].into();
        request.target = target.into();
        match target {
            "app-logs" => {
                request.scopes = vec![proto::Scope {
                    actions: vec!["logs:GetLogEvents".into()],
                    resources: vec!["arn:aws:logs:us-west-2:123456789012:log-group:app-web-prod".into()],
                }];
            }
            "prod-logs-read" => {
                request.scopes[0].resources = vec!["arn:aws:s3:::acme-prod-logs/vendor-x/*".into()];
                request.ticket = if n % 4 == 0 { String::new() } else { "CHG-9".into() };
                request.break_glass = n % 5 == 0 && !request.ticket.is_empty();
            }
            _ => {}
        }
        let token = if target == "dev-logs-read" && n % 2 == 1 {
            PIPELINE_TOKEN
        } else {
            PORTAL_TOKEN
        };
        let grant = client
            .request_access(authed(token, request))
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        if n % 7 == 3 {
            client
                .cancel_grant(authed(
                    token,
                    proto::CancelGrantRequest {
                        id: grant.id.clone(),
                        reason: "done".into(),
                    },
                ))
                .await
                .unwrap();
        } else if n % 7 == 5 {
            client
                .revoke_grant(authed(
                    token,
                    proto::RevokeGrantRequest {
                        id: grant.id.clone(),
                        reason: "done".into(),
                        revoker: String::new(),
                    },
                ))
                .await
                .unwrap();
        }
        made.push(grant.id);
    }
    let mut all = Vec::new();
    for id in made {
        all.push(
            client
                .get_grant(authed(AUDITOR_TOKEN, proto::GetGrantRequest { id }))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    all
}

#[test]
fn searches_return_exactly_what_the_model_says_page_after_page() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_redis, _sts, server, all) = runtime.block_on(async {
        let redis = RedisServer::start();
        let sts = FakeSts::start(StsBehaviour::Succeed).await;
        let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
        let mut client = server.client().await;
        let all = populate(&mut client).await;
        (redis, sts, server, all)
    });
    let states: std::collections::BTreeSet<i32> = all.iter().map(|g| g.state).collect();
    assert!(states.len() >= 5, "every kind of grant is there: {states:?}");
    assert!(all.iter().any(|g| g.break_glass));
    let times: Vec<prost_types::Timestamp> = all.iter().map(|g| g.create_time.unwrap()).collect();
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(48));
    runner
        .run(&search_strategy(all.len()), |search| {
            runtime.block_on(async {
                let mut client = server.client().await;
                let found = all_pages(&mut client, AUDITOR_TOKEN, &search, &times).await;
                let want = expected(&all, &search, &times);
                assert_eq!(found, want, "{search:?}");
                // A requester caller searches its own grants only, and cannot name another.
                let own = Search {
                    caller: None,
                    ..search.clone()
                };
                let found = all_pages(&mut client, PORTAL_TOKEN, &own, &times).await;
                let want = expected(
                    &all,
                    &Search {
                        caller: Some("vendor-portal"),
                        ..own
                    },
                    &times,
                );
                assert_eq!(found, want);
            });
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        let search = Search {
            requester: None,
            grantee: None,
            caller: Some("ci-pipeline"),
            target: None,
            state: None,
            live: false,
            break_glass: None,
            since: None,
            until: None,
            page_size: 5,
        };
        let status = client
            .list_grants(authed(PORTAL_TOKEN, request_for(&search, &times, String::new())))
            .await
            .unwrap_err();
        assert_status(&status, Code::PermissionDenied, "NOT_AUDITOR", "auditor");

        // Pages stay correct while grants are added: new grants sort before every token.
        let everything = Search {
            caller: None,
            page_size: 4,
            ..search
        };
        let first = client
            .list_grants(authed(AUDITOR_TOKEN, request_for(&everything, &times, String::new())))
            .await
            .unwrap()
            .into_inner();
        for n in 0..3 {
            client
                .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("late-{n}"))))
                .await
                .unwrap();
        }
        let mut ids: Vec<String> = first.grants.into_iter().map(|g| g.id).collect();
        let mut token = first.next_page_token;
        while !token.is_empty() {
            let page = client
                .list_grants(authed(AUDITOR_TOKEN, request_for(&everything, &times, token)))
                .await
                .unwrap()
                .into_inner();
            ids.extend(page.grants.into_iter().map(|g| g.id));
            token = page.next_page_token;
        }
        assert_eq!(ids, expected(&all, &everything, &times));
    });
}

/// Every page of an audit query: the grants' events (service events, such as the records of
/// these very queries, are checked by their own test).
async fn audit_pages(client: &mut Client, request: proto::ListAuditEventsRequest) -> Vec<proto::AuditEvent> {
    let mut events = Vec::new();
    let mut request = request;
    for _ in 0..500 {
        let page = client
            .list_audit_events(authed(AUDITOR_TOKEN, request.clone()))
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events.into_iter().filter(|event| !event.grant_id.is_empty()));
        if page.next_page_token.is_empty() {
            return events;
        }
        request.page_token = page.next_page_token;
    }
    panic!("the audit query never ended");
}

/// The next event of a grant a follower receives (service events skipped).
async fn next_event(stream: &mut tonic::Streaming<proto::AuditEvent>) -> proto::AuditEvent {
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream is open");
        if !event.grant_id.is_empty() {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_holds_every_event_and_a_follower_resumes_without_gap_or_repeat() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = Settings::new(redis.url(), sts.url.clone());
    let first = Server::start(&settings).await;
    let mut client = first.client().await;

    // A follower from now, before anything happens: the call answers at once, not when the
    // first event arrives.
    let started = std::time::Instant::now();
    let mut follower = first
        .client()
        .await
        .watch_audit_events(authed(AUDITOR_TOKEN, proto::WatchAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the stream started after {:?}",
        started.elapsed()
    );

    let approved = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("log-1")))
        .await
        .unwrap()
        .into_inner();
    let pending = client
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    for approver in ["bob@example.com", "carol@example.com"] {
        client
            .approve_grant(authed(APPROVALS_TOKEN, approve(&pending.id, approver)))
            .await
            .unwrap();
    }
    let approved_id = approved.grant.unwrap().id;

    // The log, oldest first, holds each grant's trail in its order, and nothing else.
    let all = audit_pages(
        &mut client,
        proto::ListAuditEventsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    for id in [&approved_id, &pending.id] {
        let logged: Vec<String> = all
            .iter()
            .filter(|e| &e.grant_id == id)
            .map(|e| e.event.clone())
            .collect();
        let trail: Vec<String> = redis
            .events(id)
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(logged, trail, "grant {id}");
    }
    assert_eq!(
        all.len(),
        redis.events(&approved_id).await.len() + redis.events(&pending.id).await.len()
    );
    // One call gives an auditor a grant's whole trail, the same as the log holds for it, with
    // the grant as GetGrant shows it.
    for id in [&approved_id, &pending.id] {
        let history = client
            .get_grant_history(authed(AUDITOR_TOKEN, proto::GetGrantHistoryRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        let logged: Vec<&proto::AuditEvent> = all.iter().filter(|e| &e.grant_id == id).collect();
        let read: Vec<(u64, &str, &str, &str, &str)> = history
            .events
            .iter()
            .map(|e| {
                (
                    e.cursor,
                    e.event.as_str(),
                    e.actor.as_str(),
                    e.caller.as_str(),
                    e.event_json.as_str(),
                )
            })
            .collect();
        let expected: Vec<(u64, &str, &str, &str, &str)> = (1..)
            .zip(&logged)
            .map(|(n, e)| {
                (
                    n,
                    e.event.as_str(),
                    e.actor.as_str(),
                    e.caller.as_str(),
                    e.event_json.as_str(),
                )
            })
            .collect();
        assert_eq!(read, expected, "grant {id}");
        let times: Vec<_> = history.events.iter().map(|e| e.event_time).collect();
        assert_eq!(times, logged.iter().map(|e| e.event_time).collect::<Vec<_>>());
        let got = client
            .get_grant(authed(AUDITOR_TOKEN, proto::GetGrantRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.grant, Some(got));
    }
    let approvals = client
        .get_grant_history(authed(
            AUDITOR_TOKEN,
            proto::GetGrantHistoryRequest { id: pending.id.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    let actors: Vec<&str> = approvals
        .events
        .iter()
        .filter(|e| e.event == "approval_recorded")
        .map(|e| e.actor.as_str())
        .collect();
    assert_eq!(
        actors,
        ["bob@example.com", "carol@example.com"],
        "the person, not the portal"
    );
    let cursors: Vec<&String> = all.iter().map(|e| &e.cursor).collect();
    let mut sorted = cursors.clone();
    sorted.sort_by_key(|c| {
        let (ms, seq) = c.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(cursors, sorted, "oldest first");
    let credentials = approved.credentials.unwrap();
    for event in &all {
        assert!(!event.event_json.contains(&credentials.secret_access_key));
        assert!(!event.event_json.contains(&credentials.session_token));
    }

    // Filters and order.
    let newest = audit_pages(
        &mut client,
        proto::ListAuditEventsRequest {
            newest_first: true,
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(newest, reversed);
    let by_bob = audit_pages(
        &mut client,
        proto::ListAuditEventsRequest {
            actor: "bob@example.com".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_bob.len(), 1);
    assert_eq!(
        (by_bob[0].event.as_str(), by_bob[0].caller.as_str()),
        ("approval_recorded", "approval-portal")
    );
    let approvals = audit_pages(
        &mut client,
        proto::ListAuditEventsRequest {
            events: vec!["approved".into(), "issued".into()],
            target: "prod-logs-read".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        approvals
            .iter()
            .map(|e| (e.event.as_str(), e.grant_id.as_str()))
            .collect::<Vec<_>>(),
        [("approved", pending.id.as_str())]
    );
    let one_grant = audit_pages(
        &mut client,
        proto::ListAuditEventsRequest {
            grant_id: approved_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(one_grant.iter().all(|e| e.grant_id == approved_id) && !one_grant.is_empty());

    // The follower saw every one of them, in order.
    let mut followed = Vec::new();
    for _ in 0..all.len() {
        followed.push(next_event(&mut follower).await);
    }
    assert_eq!(followed, all);
    drop(follower);

    // The broker goes away; another one records more; a follower resumes after the last cursor
    // it saw, and gets exactly what followed.
    let last = all.last().unwrap().cursor.clone();
    drop(client);
    drop(first);
    let second = Server::start(&settings).await;
    let mut client = second.client().await;
    client
        .cancel_grant(authed(
            PORTAL_TOKEN,
            proto::CancelGrantRequest {
                id: approved_id.clone(),
                reason: "done".into(),
            },
        ))
        .await
        .unwrap();
    let mut resumed = client
        .watch_audit_events(authed(
            AUDITOR_TOKEN,
            proto::WatchAuditEventsRequest { after_cursor: last },
        ))
        .await
        .unwrap()
        .into_inner();
    let next = next_event(&mut resumed).await;
    assert_eq!(
        (next.event.as_str(), next.grant_id.as_str()),
        ("cancelled", approved_id.as_str())
    );
    let nothing_more = tokio::time::timeout(std::time::Duration::from_millis(500), resumed.message()).await;
    assert!(nothing_more.is_err(), "no repeat: {nothing_more:?}");

    // Who may read it, and what cursors are refused.
    let status = client
        .list_audit_events(authed(PORTAL_TOKEN, proto::ListAuditEventsRequest::default()))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_AUDITOR", "auditor");
    let status = client
        .watch_audit_events(authed(PORTAL_TOKEN, proto::WatchAuditEventsRequest::default()))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "NOT_AUDITOR", "auditor");
    let status = client
        .watch_audit_events(authed(
            AUDITOR_TOKEN,
            proto::WatchAuditEventsRequest {
                after_cursor: "1-0".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::OutOfRange, "CURSOR_EXPIRED", "retention");
    let status = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                page_token: "nope".into(),
                events: vec!["approvedd".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["events[0]", "page_token"]);
    // The largest id has nothing after it: refused as a cursor, not sent to Redis.
    for (newest_first, token) in [
        (false, "18446744073709551615-18446744073709551615"),
        (true, "1-18446744073709551615"),
    ] {
        let status = client
            .list_audit_events(authed(
                AUDITOR_TOKEN,
                proto::ListAuditEventsRequest {
                    page_token: token.into(),
                    newest_first,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["page_token"], "{token}");
    }
    let status = client
        .watch_audit_events(authed(
            AUDITOR_TOKEN,
            proto::WatchAuditEventsRequest {
                after_cursor: "18446744073709551615-0".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["after_cursor"]);
    // The smallest: older than the log keeps, for the log; nothing before it, for a search.
    let status = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                page_token: "0-0".into(),
                newest_first: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::OutOfRange, "CURSOR_EXPIRED", "0-0");
    let before_all = client
        .list_grants(authed(
            AUDITOR_TOKEN,
            proto::ListGrantsRequest {
                page_token: "0-0".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((before_all.grants.len(), before_all.next_page_token.as_str()), (0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_resumes_from_its_cursor_file_and_writes_each_event_once() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (output, cursor_file) = (dir.path().join("audit.jsonl"), dir.path().join("audit.cursor"));
    let export = || {
        vec![
            "audit".to_owned(),
            "export".into(),
            "--output".into(),
            output.display().to_string(),
            "--cursor-file".into(),
            cursor_file.display().to_string(),
            "--server".into(),
            server.url(),
            "--token".into(),
            AUDITOR_TOKEN.into(),
        ]
    };
    let all_lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    // The grants' events (the export also holds the records of audit queries, this test's own).
    let lines = || -> Vec<serde_json::Value> {
        all_lines()
            .into_iter()
            .filter(|line| line["grant_id"].as_str().is_some_and(|id| !id.is_empty()))
            .collect()
    };
    let position = |cursor: &str| -> (u64, u64) {
        let (ms, seq) = cursor.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    let mut secrets = Vec::new();
    for n in 0..3 {
        let response = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("export-{n}"))))
            .await
            .unwrap()
            .into_inner();
        secrets.push(response.credentials.unwrap().secret_access_key);
    }
    let first = run_cli(export()).await;
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let exported = lines();
    let log = audit_pages(&mut client, proto::ListAuditEventsRequest::default()).await;
    assert_eq!(
        exported
            .iter()
            .map(|line| line["cursor"].as_str().unwrap())
            .collect::<Vec<_>>(),
        log.iter().map(|event| event.cursor.as_str()).collect::<Vec<_>>()
    );
    let saved = std::fs::read_to_string(&cursor_file).unwrap();
    assert!(position(saved.trim()) >= position(&log.last().unwrap().cursor));
    assert_eq!(saved.trim(), all_lines().last().unwrap()["cursor"].as_str().unwrap());
    // Nothing new: nothing written. Something new: exactly that, appended.
    let again = run_cli(export()).await;
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(lines().len(), log.len());
    client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("export-late")))
        .await
        .unwrap();
    let late = run_cli(export()).await;
    assert!(late.status.success(), "{}", String::from_utf8_lossy(&late.stderr));
    let after = lines();
    let all = audit_pages(&mut client, proto::ListAuditEventsRequest::default()).await;
    assert_eq!(
        after
            .iter()
            .map(|line| line["cursor"].as_str().unwrap())
            .collect::<Vec<_>>(),
        all.iter().map(|event| event.cursor.as_str()).collect::<Vec<_>>()
    );
    assert!(all.len() > log.len());
    let text = std::fs::read_to_string(&output).unwrap();
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret was exported");
    }
    assert!(
        all_lines()
            .iter()
            .all(|line| line["event"].is_string() && line["grant_id"].is_string())
    );
    let cursors: Vec<(u64, u64)> = all_lines()
        .iter()
        .map(|line| position(line["cursor"].as_str().unwrap()))
        .collect();
    assert!(
        cursors.windows(2).all(|pair| pair[0] < pair[1]),
        "each entry once, in order"
    );
}

/// Every query (first page) of an auditor or admin caller is itself in the audit log: who asked,
/// which call, what for. Continuation pages, and requester callers reading their own grants, are
/// not. Each broker records the rules it loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_and_the_rules_loaded_are_in_the_audit_log() {
    let redis = RedisServer::start();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let mut access_keys = Vec::new();
    for n in 0..3 {
        let response = client
            .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("queried-{n}"))))
            .await
            .unwrap()
            .into_inner();
        access_keys.push(response.credentials.unwrap().access_key_id);
    }
    // Not recorded: a requester caller's own grants.
    client
        .list_grants(authed(PORTAL_TOKEN, proto::ListGrantsRequest::default()))
        .await
        .unwrap();
    // Recorded: each first page of an auditor's query; its next page is not.
    let first = client
        .list_grants(authed(
            AUDITOR_TOKEN,
            proto::ListGrantsRequest {
                requester: "alice@example.com".into(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    client
        .list_grants(authed(
            AUDITOR_TOKEN,
            proto::ListGrantsRequest {
                requester: "alice@example.com".into(),
                page_size: 2,
                page_token: first.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    client
        .find_grant_by_access_key(authed(AUDITOR_TOKEN, find(&access_keys[1])))
        .await
        .unwrap();
    client
        .get_grant(authed(
            ADMIN_TOKEN,
            proto::GetGrantRequest {
                id: first.grants[0].id.clone(),
            },
        ))
        .await
        .unwrap();

    let service = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                events: vec!["rules_loaded".into(), "audit_queried".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let described: Vec<(String, String, serde_json::Value)> = service
        .iter()
        .map(|event| {
            assert!(event.grant_id.is_empty() && event.target.is_empty(), "{event:?}");
            let json: serde_json::Value = serde_json::from_str(&event.event_json).unwrap();
            (event.event.clone(), event.caller.clone(), json)
        })
        .collect();
    let rules = &described[0];
    assert_eq!((rules.0.as_str(), rules.1.as_str()), ("rules_loaded", "grant-broker"));
    assert_eq!(rules.2["digest"].as_str().unwrap().len(), 64);
    assert!(rules.2["policies"].as_u64().unwrap() > 0);
    let queries: Vec<(&str, &str, String)> = described[1..]
        .iter()
        .map(|(name, caller, json)| {
            assert_eq!(name, "audit_queried");
            (
                caller.as_str(),
                json["query"].as_str().unwrap(),
                json["filter"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let key_asked = serde_json::json!({ "access_key_id": access_keys[1] }).to_string();
    assert_eq!(
        queries,
        [
            (
                "audit-tool",
                "ListGrants",
                r#"{"requester":"alice@example.com"}"#.to_owned()
            ),
            ("audit-tool", "FindGrantByAccessKey", key_asked),
        ],
        "the continuation page, the requester caller's own list and the read of one grant by id are not recorded"
    );
    // This very query was recorded too (beside its read: in this page or the next).
    let again = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                events: vec!["audit_queried".into()],
                newest_first: true,
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let json: serde_json::Value = serde_json::from_str(&again[0].event_json).unwrap();
    assert_eq!(json["query"], "ListAuditEvents");
    assert_eq!(json["filter"], r#"{"events":["rules_loaded","audit_queried"]}"#);
    // Secrets never appear in a query record: access key ids are not secrets, and nothing else
    // the queries carry is one.
    assert!(service.iter().all(|event| !event.event_json.contains("Secret")));

    // The command line reads them, and searches as `list` does.
    let cli = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.extend(["--server".into(), server.url(), "--token".into(), AUDITOR_TOKEN.into()]);
        run_cli(args)
    };
    let output = cli(&["audit", "events", "--event", "rules_loaded"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        text.contains("rules_loaded")
            && text.contains("approval.cedar")
            && text.contains(rules.2["digest"].as_str().unwrap()),
        "{text}"
    );
    let output = cli(&["audit", "list", "--requester", "alice@example.com", "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["grants"].as_array().unwrap().len(), 3, "{listed}");
}

/// The repair rule for writes beside a grant's step: when Redis refuses the index and audit log
/// writes (here an ACL that denies those keys), the grant is still recorded and its credentials
/// issued, and once Redis takes them again the grant is re-indexed and its events logged, each
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_index_and_log_writes_failed_is_re_indexed() {
    let redis = RedisServer::start();
    let mut admin = redis.connection().await;
    let acl = |rules: &[&str]| {
        let mut command = redis::cmd("ACL");
        command
            .arg("SETUSER")
            .arg("broker")
            .arg("on")
            .arg(">broker-pw")
            .arg("+@all")
            .arg("&*");
        command.arg("resetkeys");
        for rule in rules {
            command.arg(*rule);
        }
        command
    };
    // Everything but the target indexes and the audit log.
    let () = acl(&[
        "~gb:g:*",
        "~gb:grant:*",
        "~gb:caller:*",
        "~gb:requester:*",
        "~gb:grantee:*",
        "~gb:account:*",
        "~gb:grants",
        "~gb:key:*",
        "~gb:deadlines",
        "~gb:pending",
        "~gb:break-glass",
        "~gb:{notify}:*",
        "~gb:role:*",
        "~gb:enforce:*",
        "~gb:rate:*",
    ])
    .query_async(&mut admin)
    .await
    .unwrap();
    let url = redis.url().replacen("redis://", "redis://broker:broker-pw@", 1);
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(url, sts.url.clone())).await;
    let mut client = server.client().await;
    let response = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("repaired")))
        .await
        .unwrap()
        .into_inner();
    assert!(response.credentials.is_some());
    let grant_id = response.grant.unwrap().id;
    let logged: u64 = redis::cmd("XLEN")
        .arg("gb:{audit}:events")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(logged, 0, "the log was refused");
    let indexed: u64 = redis::cmd("XLEN")
        .arg("gb:target:{dev-logs-read}:grants")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(indexed, 0, "the target index was refused");

    let () = acl(&["allkeys"]).query_async(&mut admin).await.unwrap();
    let by_target = proto::ListGrantsRequest {
        target: "dev-logs-read".into(),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found = client
            .list_grants(authed(AUDITOR_TOKEN, by_target.clone()))
            .await
            .unwrap()
            .into_inner()
            .grants;
        if !found.is_empty() {
            assert_eq!(
                found.iter().map(|grant| grant.id.as_str()).collect::<Vec<_>>(),
                [grant_id.as_str()]
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never re-indexed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Each index once; each event once, in the grant's order.
    for request in [
        by_target,
        proto::ListGrantsRequest {
            requester: "alice@example.com".into(),
            ..Default::default()
        },
        proto::ListGrantsRequest::default(),
    ] {
        let found = client
            .list_grants(authed(AUDITOR_TOKEN, request))
            .await
            .unwrap()
            .into_inner()
            .grants;
        assert_eq!(found.len(), 1);
    }
    let mut events = Vec::new();
    for _ in 0..100 {
        events = audit_pages(
            &mut client,
            proto::ListAuditEventsRequest {
                grant_id: grant_id.clone(),
                ..Default::default()
            },
        )
        .await;
        if events.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = events.iter().map(|event| event.event.as_str()).collect();
    assert_eq!(names, ["requested", "issuing", "issued"]);
    // And the rules loaded, refused at start, were recorded once Redis took them.
    let rules = client
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                events: vec!["rules_loaded".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(rules.len(), 1);
}
