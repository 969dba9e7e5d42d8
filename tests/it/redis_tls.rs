//! TLS to Redis (`rediss://`): the broker verifies the server against the configured CA, and
//! proves itself with a client certificate where Redis demands one. Real redis-server with TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use tonic::Code;

fn tls_settings(tls_port: u16, sts: &FakeSts, redis_extra: String) -> Settings {
    let mut settings = Settings::new(format!("rediss://127.0.0.1:{tls_port}"), sts.url.clone());
    settings.redis_extra = redis_extra;
    settings
}

#[tokio::test]
async fn grants_are_recorded_over_tls_and_an_unverified_server_is_refused() {
    let pki = TestPki::new();
    let (redis, tls_port) = RedisServer::start_tls(&pki, false);
    let sts = FakeSts::start(StsBehaviour::Succeed).await;

    let trusted = format!("tls_ca_file = \"{}\"", pki.ca_cert.display());
    let server = Server::start(&tls_settings(tls_port, &sts, trusted)).await;
    let mut client = server.client().await;
    let response = client
        .request_access(authed(PORTAL_TOKEN, read_logs_request("over-tls")))
        .await
        .unwrap()
        .into_inner();
    assert!(response.credentials.is_some());
    let grant_id = response.grant.unwrap().id;
    assert_eq!(
        redis.grant(&grant_id).await.unwrap().issuances.len(),
        1,
        "recorded in that Redis"
    );
    drop(server);

    // A CA that did not sign the server's certificate: nothing is recorded, nothing issued.
    let other = TestPki::new();
    let untrusted = format!("tls_ca_file = \"{}\"", other.ca_cert.display());
    let server = Server::start(&tls_settings(tls_port, &sts, untrusted)).await;
    let status = server
        .client()
        .await
        .request_access(authed(PORTAL_TOKEN, read_logs_request("spoofed")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::Unavailable,
        "STORE_UNAVAILABLE",
        "grant store is unavailable",
    );
    assert_eq!(sts.calls().len(), 1);
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = TestPki::new();
    let (_redis, tls_port) = RedisServer::start_tls(&pki, true);
    let sts = FakeSts::start(StsBehaviour::Succeed).await;
    let ca = format!("tls_ca_file = \"{}\"", pki.ca_cert.display());

    let without = Server::start(&tls_settings(tls_port, &sts, ca.clone())).await;
    let status = without
        .client()
        .await
        .request_access(authed(PORTAL_TOKEN, read_logs_request("no-cert")))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&status), "STORE_UNAVAILABLE", "{status:?}");

    let with = format!(
        "{ca}\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let server = Server::start(&tls_settings(tls_port, &sts, with)).await;
    let response = server
        .client()
        .await
        .request_access(authed(PORTAL_TOKEN, read_logs_request("with-cert")))
        .await
        .unwrap()
        .into_inner();
    assert!(response.credentials.is_some());
}
