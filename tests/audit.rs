//! Audit reads: from an access key id in a CloudTrail event back to the grant and the issuance.
//! Real server, real Redis, the fake STS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
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
