//! The cluster layout (`redis.cluster_nodes`): the core paths of a grant's life through the real
//! server on a real Redis Cluster of 3 primaries and 3 replicas, two brokers sharing it; `WAIT`
//! on the node that took the write; a primary's death under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::HashSet, time::Duration};

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;

fn on_cluster(cluster: &RedisCluster, prefix: &str, sts: &FakeSts) -> Settings {
    let mut settings = Settings::new(String::new(), sts.url.clone());
    settings.redis_cluster = cluster.seeds();
    settings.redis_extra = format!("key_prefix = \"{prefix}\"");
    settings
}

async fn next(stream: &mut tonic::Streaming<proto::GrantChange>) -> proto::GrantChange {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a change within 10 s")
        .unwrap()
        .expect("the stream is open")
}

fn state(grant: &proto::Grant) -> proto::GrantState {
    proto::GrantState::try_from(grant.state).unwrap()
}

async fn list(client: &mut Client, filter: proto::ListGrantsRequest) -> Vec<String> {
    client
        .list_grants(authed(AUDITOR_TOKEN, filter))
        .await
        .unwrap()
        .into_inner()
        .grants
        .into_iter()
        .map(|grant| grant.id)
        .collect()
}

/// Every key under `prefix` on every primary, with its value where it is a string (records
/// are binary: their text parts read as they are).
async fn keys_and_strings(cluster: &RedisCluster, prefix: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for port in cluster.primaries().await {
        let mut connection = RedisCluster::node_connection(port).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut connection).await.unwrap();
            let value = if kind == "string" {
                let bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                String::new()
            };
            found.push((key, value));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grants_whole_life_runs_on_a_cluster_through_two_brokers() {
    let cluster = RedisCluster::shared().await;
    let prefix = unique_prefix();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let settings = on_cluster(&cluster, &prefix, &sts);
    let (one, two) = (Server::start(&settings).await, Server::start(&settings).await);
    let (mut a, mut b) = (one.client().await, two.client().await);

    // A follower of the audit log on one broker (its blocking reads on a connection of their
    // own), while everything below goes through the other.
    let mut follower = a
        .watch_audit_events(authed(AUDITOR_TOKEN, proto::WatchAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    // Approved at once; the same request id through the other broker is the same grant, with
    // fresh credentials (the first answer may have been lost), recorded beside the first.
    let request_id = format!("req-{prefix}");
    let first = a
        .request_access(authed(PORTAL_TOKEN, read_logs_request(&request_id)))
        .await
        .unwrap()
        .into_inner();
    let issued = first.grant.unwrap();
    let credentials = first.credentials.expect("approved at once");
    assert_eq!(state(&issued), proto::GrantState::Approved);
    let again = b
        .request_access(authed(PORTAL_TOKEN, read_logs_request(&request_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.grant.unwrap().id, issued.id);
    let fresh = again.credentials.expect("fresh credentials for the retry");
    assert_ne!(fresh.access_key_id, credentials.access_key_id);
    assert_eq!(sts.calls().len(), 2);
    let changed = proto::RequestAccessRequest {
        justification: "something else".to_owned(),
        ..read_logs_request(&request_id)
    };
    let status = b.request_access(authed(PORTAL_TOKEN, changed)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Read back through the other broker: by id, by access key, and through every index.
    let read = b
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: issued.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = read
        .issuances
        .iter()
        .map(|issuance| issuance.access_key_id.as_str())
        .collect();
    assert_eq!(keys, [credentials.access_key_id.as_str(), fresh.access_key_id.as_str()]);
    let found = b
        .find_grant_by_access_key(authed(
            AUDITOR_TOKEN,
            proto::FindGrantByAccessKeyRequest {
                access_key_id: credentials.access_key_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.grant.unwrap().id, issued.id);
    let filters = [
        proto::ListGrantsRequest::default(),
        proto::ListGrantsRequest {
            requester: "alice@example.com".to_owned(),
            ..Default::default()
        },
        proto::ListGrantsRequest {
            grantee: "vendor-x".to_owned(),
            ..Default::default()
        },
        proto::ListGrantsRequest {
            caller: "vendor-portal".to_owned(),
            ..Default::default()
        },
        proto::ListGrantsRequest {
            target: "dev-logs-read".to_owned(),
            ..Default::default()
        },
        proto::ListGrantsRequest {
            account_id: read.account_id.clone(),
            ..Default::default()
        },
        proto::ListGrantsRequest {
            live: true,
            ..Default::default()
        },
    ];
    for filter in filters {
        assert_eq!(list(&mut a, filter.clone()).await, [issued.id.as_str()], "{filter:?}");
    }

    // A grant that waits for people: watched on one broker, approved through both.
    let pending = a
        .request_access(authed(PORTAL_TOKEN, production_request()))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(state(&pending), proto::GrantState::PendingApproval);
    let waiting = a
        .list_grants(authed(
            APPROVALS_TOKEN,
            proto::ListGrantsRequest {
                waiting_for_approver: "bob@example.com".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(
        waiting.iter().map(|grant| grant.id.as_str()).collect::<Vec<_>>(),
        [pending.id.as_str()]
    );
    let mut watch = a
        .watch_grant(authed(
            PORTAL_TOKEN,
            proto::WatchGrantRequest {
                id: pending.id.clone(),
                after_event: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await.cursor, 1);
    a.approve_grant(authed(APPROVALS_TOKEN, approve(&pending.id, "bob@example.com")))
        .await
        .unwrap();
    let approved = b
        .approve_grant(authed(APPROVALS_TOKEN, approve(&pending.id, "carol@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&approved), proto::GrantState::Approved);
    let seen: Vec<String> = [next(&mut watch).await, next(&mut watch).await, next(&mut watch).await]
        .into_iter()
        .map(|change| change.event)
        .collect();
    assert_eq!(seen, ["approval_recorded", "approval_recorded", "approved"]);
    let issued_later = b
        .issue_credentials(authed(PORTAL_TOKEN, issue_for(&pending.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(issued_later.credentials.is_some());

    // Revoked through one broker, read as revoked through the other.
    let revoked = a
        .revoke_grant(authed(
            PORTAL_TOKEN,
            proto::RevokeGrantRequest {
                id: issued.id.clone(),
                reason: "vendor offboarded".to_owned(),
                revoker: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&revoked), proto::GrantState::Revoked);
    let read = b
        .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: issued.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&read), proto::GrantState::Revoked);

    // The audit log holds every event, in one slot, and the follower saw them as they came.
    let logged_types: Vec<String> = a
        .list_audit_events(authed(
            AUDITOR_TOKEN,
            proto::ListAuditEventsRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|entry| entry.event)
        .collect();
    for expected in ["requested", "issued", "approval_recorded", "approved", "revoked"] {
        assert!(
            logged_types.iter().any(|event| event == expected),
            "{expected} in {logged_types:?}"
        );
    }
    let mut followed = HashSet::new();
    while !followed.contains("revoked") {
        let entry = tokio::time::timeout(Duration::from_secs(10), follower.message())
            .await
            .expect("the follower keeps up")
            .unwrap()
            .unwrap();
        followed.insert(entry.event);
    }

    // Spread over the cluster's slots, every key under the prefix, and no secret in any of them.
    let stored = keys_and_strings(&cluster, &prefix).await;
    let primaries_used: HashSet<u16> = {
        let mut used = HashSet::new();
        for (key, _) in &stored {
            used.insert(cluster.primary_of(key).await);
        }
        used
    };
    assert!(primaries_used.len() >= 2, "keys on {primaries_used:?}");
    for (key, value) in &stored {
        assert!(key.starts_with(&format!("{prefix}:")), "{key}");
        for minted in [&credentials, &fresh] {
            assert!(!value.contains(&minted.secret_access_key), "{key} holds a secret key");
            assert!(!value.contains(&minted.session_token), "{key} holds a session token");
        }
    }
}

/// `WAIT` goes to the primary that took the write: with one primary's replica down, only the
/// grants whose record lives on that primary fail for want of an acknowledgement, and the rest
/// are issued. (Sent to every primary, as redis-rs would route a `WAIT` of its own, every
/// grant would fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_awaited_on_the_node_that_took_the_write() {
    let cluster = RedisCluster::start(3, 1).await;
    let prefix = unique_prefix();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = on_cluster(&cluster, &prefix, &sts);
    settings.min_replicas = 1;
    settings.redis_timeout_ms = 1_000;
    let server = Server::start(&settings).await;
    let mut client = server.client().await;

    let warm = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("")))
        .await
        .unwrap()
        .into_inner();
    assert!(warm.credentials.is_some(), "every replica up: issued");

    // One replica down: its primary cannot get an acknowledgement.
    let replica = cluster.replicas().await[0];
    let mut info = RedisCluster::node_connection(replica).await;
    let replication: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut info)
        .await
        .unwrap();
    let orphaned: u16 = replication
        .lines()
        .find_map(|line| line.strip_prefix("master_port:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    cluster.kill(replica);

    let (mut issued, mut refused) = (0, 0);
    for _ in 0..24 {
        match client.request_access(authed(PORTAL_TOKEN, read_logs_request(""))).await {
            Ok(response) => {
                let grant = response.into_inner().grant.unwrap();
                let home = cluster.primary_of(&format!("{prefix}:g:{{{}}}", grant.id)).await;
                assert_ne!(
                    home, orphaned,
                    "a grant on the primary without a replica cannot be issued"
                );
                issued += 1;
            }
            Err(status) => {
                // Refused before STS was called: the `issuing` record was not acknowledged.
                assert_eq!(
                    (status.code(), error_reason(&status).as_str()),
                    (Code::Unavailable, "STORE_UNAVAILABLE"),
                    "{status:?}"
                );
                refused += 1;
            }
        }
    }
    // 24 random grant ids over 3 primaries: both kinds all but surely.
    assert!(issued > 0 && refused > 0, "issued {issued}, refused {refused}");
}

/// What one call of the failover load got.
enum Outcome {
    Issued {
        grant: String,
        access_key_id: String,
    },
    Failed {
        code: Code,
        retry_info: bool,
        message: String,
    },
}

/// A primary killed while grants are issued: afterwards every grant a client was answered with
/// is in Redis with the credentials it got, every failure was UNAVAILABLE with RetryInfo, and
/// the service recovered by itself once a replica took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_dying_under_load_loses_nothing_acknowledged_and_service_recovers_by_itself() {
    use tonic_types::StatusExt as _;
    let cluster = RedisCluster::start(3, 1).await;
    let prefix = unique_prefix();
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let mut settings = on_cluster(&cluster, &prefix, &sts);
    // What the credentials depend on survives a failover only once a replica holds it.
    settings.min_replicas = 1;
    settings.redis_timeout_ms = 1_000;
    let server = Server::start(&settings).await;

    let started = std::time::Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut client = server.client().await;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && outcomes.len() < 20_000 {
                let at = started.elapsed();
                let outcome = match client.request_access(authed(PORTAL_TOKEN, read_logs_request(""))).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        Outcome::Issued {
                            grant: response.grant.unwrap().id,
                            access_key_id: response.credentials.expect("approved at once").access_key_id,
                        }
                    }
                    Err(status) => Outcome::Failed {
                        code: status.code(),
                        retry_info: status.get_error_details().retry_info().is_some(),
                        message: status.message().to_owned(),
                    },
                };
                outcomes.push((at, outcome));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = cluster.primaries().await[0];
    let killed_at = started.elapsed();
    cluster.kill(victim);
    // A replica takes over after the node timeout (1.5 s) and an election.
    cluster.wait_for_failover(victim, 3).await;
    let failed_over_at = started.elapsed();
    // The new primary has no replica until the old one is back: writes it takes cannot be
    // acknowledged (`min_replicas`) until then.
    cluster.restart(victim);
    cluster.wait_for_replicas(1).await;
    let recovered_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }

    let issued: Vec<(&String, &String)> = outcomes
        .iter()
        .filter_map(|(_, outcome)| match outcome {
            Outcome::Issued { grant, access_key_id } => Some((grant, access_key_id)),
            Outcome::Failed { .. } => None,
        })
        .collect();
    let failures: Vec<(Duration, &Code, bool, &String)> = outcomes
        .iter()
        .filter_map(|(at, outcome)| match outcome {
            Outcome::Failed {
                code,
                retry_info,
                message,
            } => Some((*at, code, *retry_info, message)),
            Outcome::Issued { .. } => None,
        })
        .collect();
    for (at, code, retry_info, message) in &failures {
        assert!(
            **code == Code::Unavailable && *retry_info,
            "at {at:?}: {code:?} `{message}` (retry info: {retry_info})"
        );
        assert!(
            ["the grant store is unavailable", "could not be recorded"]
                .iter()
                .any(|says| message.contains(says)),
            "at {at:?}: `{message}`"
        );
    }
    let window = failures
        .first()
        .zip(failures.last())
        .map(|(first, last)| (first.0, last.0));
    println!(
        "failover under load: {} issued, {} failed; primary killed at {killed_at:?}, a replica took \
         over at {failed_over_at:?}, the old primary back as its replica at {recovered_at:?}; errors \
         from {:?} to {:?}",
        issued.len(),
        failures.len(),
        window.map(|(first, _)| first),
        window.map(|(_, last)| last),
    );
    // Recovered by itself: the last second of load ran without an error.
    let end = outcomes.iter().map(|(at, _)| *at).max().unwrap();
    assert!(
        failures.iter().all(|(at, ..)| *at + Duration::from_secs(1) < end),
        "errors in the last second of load"
    );
    assert!(issued.len() > 100, "{} issued", issued.len());

    // Every grant a client got credentials for is recorded with them.
    let mut client = server.client().await;
    for (grant, access_key_id) in issued {
        let read = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: grant.clone() }))
            .await
            .unwrap_or_else(|status| panic!("grant {grant} acknowledged, then lost: {status:?}"))
            .into_inner();
        assert!(
            read.issuances
                .iter()
                .any(|issuance| &issuance.access_key_id == access_key_id),
            "grant {grant}: the credentials returned are not recorded"
        );
    }
}

/// A node that lost its scripts (a restart, a failover) runs again only the steps that met it:
/// a request's rates on other nodes are counted once.
#[tokio::test]
async fn a_node_without_the_scripts_never_makes_a_rate_count_twice() {
    use grant_broker::domain::{CallerId, quota::Rate};
    use grant_broker::ports::Quotas as _;
    let cluster = RedisCluster::shared().await;
    let prefix = unique_prefix();
    let store = cluster_store(&cluster, &prefix);
    let caller = CallerId::parse("vendor-portal").unwrap();
    // The person's rate on another node than the caller's.
    let caller_node = cluster
        .primary_of(&format!("{prefix}:rate:{{caller:vendor-portal}}"))
        .await;
    let mut person = None;
    for n in 0..64 {
        let name = format!("p{n}@example.com");
        let digest = grant_broker_digest(&name);
        if cluster.primary_of(&format!("{prefix}:rate:{{person:{digest}}}")).await != caller_node {
            person = Some((name, digest));
            break;
        }
    }
    let (person, digest) = person.expect("a person whose rate is on another node");
    let rates = [(Rate::Caller(caller), 3), (Rate::Person(person), 1_000)];
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(store.count_request(&rates, now).await.unwrap(), None);
    let person_node = cluster.primary_of(&format!("{prefix}:rate:{{person:{digest}}}")).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut RedisCluster::node_connection(person_node).await)
        .await
        .unwrap();
    assert_eq!(store.count_request(&rates, now).await.unwrap(), None);
    // The third of three a minute: counted twice above, this would be refused.
    assert_eq!(store.count_request(&rates, now).await.unwrap(), None);
    assert!(
        store.count_request(&rates, now).await.unwrap().is_some(),
        "the fourth is refused"
    );
}

/// How the store names a person in keys: 32 hex characters of the SHA-256.
fn grant_broker_digest(text: &str) -> String {
    sha256_hex(text)[..32].to_owned()
}
