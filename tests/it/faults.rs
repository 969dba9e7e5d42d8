//! Redis out of memory (`maxmemory` with `noeviction`): calls answer UNAVAILABLE with RetryInfo,
//! nothing already acknowledged is lost, no credentials go out without their record, and the
//! broker works again once Redis has room. (A primary's death is in `cluster.rs`, STS throttling
//! in `limits.rs`, an IAM outage in `revocation.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use grant_broker::grpc::proto;
use tonic::Code;
use tonic_types::StatusExt as _;

async fn used_memory(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(connection).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_answers_unavailable_and_loses_nothing_acknowledged() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let server = Server::start(&Settings::new(redis.url(), sts.url.clone())).await;
    let mut client = server.client().await;
    let mut admin = redis.connection().await;
    client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("")))
        .await
        .unwrap();
    // Room for a few dozen more grants (about 1.8 KB each), then none.
    let limit = used_memory(&mut admin).await + 64 * 1024;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query_async(&mut admin)
        .await
        .unwrap();

    let mut issued = Vec::new();
    let mut refused = 0;
    for n in 0..400 {
        match client
            .request_access(authed(PORTAL_TOKEN, read_logs_request(&format!("oom-{n}"))))
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                let credentials = response.credentials.expect("approved at once");
                issued.push((response.grant.unwrap().id, credentials.access_key_id));
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    ["STORE_UNAVAILABLE", "CREDENTIALS_NOT_RECORDED"].contains(&error_reason(&status).as_str()),
                    "{status:?}"
                );
                assert!(status.get_error_details().retry_info().is_some(), "{status:?}");
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
        }
    }
    assert!(
        !issued.is_empty() && refused == 20,
        "issued {}, refused {refused}",
        issued.len()
    );

    // Reads still work while Redis is full: every grant acknowledged, with the credentials
    // returned for it.
    for (id, access_key_id) in &issued {
        let grant = client
            .get_grant(authed(PORTAL_TOKEN, proto::GetGrantRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert!(
            grant
                .issuances
                .iter()
                .any(|issuance| &issuance.access_key_id == access_key_id),
            "grant {id}: returned credentials not recorded"
        );
    }
    // Every credential STS minted was either returned and recorded, or discarded unreturned.
    let returned: std::collections::HashSet<&String> = issued.iter().map(|(_, key)| key).collect();
    assert!(sts.calls().len() >= returned.len());

    // Room again: the broker works, and a retried request id finds what it left.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut admin)
        .await
        .unwrap();
    let after = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("after-oom")))
        .await
        .unwrap()
        .into_inner();
    assert!(after.credentials.is_some());
}
