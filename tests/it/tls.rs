//! TLS and mTLS on the gRPC port: a client certificate from the configured CA names its caller
//! by its SPIFFE URI; callers without one still authenticate with their token over TLS; and
//! every certificate the server cannot trust fails the handshake for the reason it should, in
//! the log. Real server, real handshakes (rustls on both sides), certificates made by rcgen.

use std::{path::PathBuf, time::Duration};

use rcgen::SanType;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::common::*;
use grant_broker::grpc::proto;

const MESH_PORTAL: &str = "spiffe://acme.test/ns/portals/sa/mesh-portal";

/// A server with mTLS: its certificate from `pki`, client certificates from `pki` too, and a
/// `mesh-portal` caller known only by its certificate's SPIFFE URI.
async fn mtls_server(pki: &Pki, extra: &str) -> (Server, RedisServer) {
    let (cert, key) = pki.leaf(
        "server",
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        ],
        false,
    );
    let redis = RedisServer::start();
    let mut settings = Settings::new(redis.url(), "http://127.0.0.1:9".into());
    settings.extra = format!(
        r#"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
handshake_timeout_ms = 300
reload_check_secs = 1
{extra}

[[callers]]
id = "mesh-portal"
certificate_identity = "{MESH_PORTAL}"
targets = ["dev-logs-read"]
"#,
        cert = cert.display(),
        key = key.display(),
        ca = pki.ca.display(),
    );
    (Server::start(&settings).await, redis)
}

/// A TLS channel to `server` that trusts `ca`, presenting `identity` (certificate, key) if given.
async fn channel(server: &Server, ca: &PathBuf, identity: Option<&(PathBuf, PathBuf)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{}", server.address))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

/// The targets the caller sees: who the server took it for.
async fn targets_seen(channel: Channel, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    let mut client = proto::grant_broker_client::GrantBrokerClient::new(channel);
    let request = match token {
        Some(token) => authed(token, proto::ListTargetsRequest {}),
        None => tonic::Request::new(proto::ListTargetsRequest {}),
    };
    let targets = client.list_targets(request).await?.into_inner().targets;
    Ok(targets.into_iter().map(|target| target.id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_caller_and_tokens_still_work_without_one() {
    let pki = Pki::new("clients-ca");
    let (server, _redis) = mtls_server(&pki, "").await;
    let mesh = pki.spiffe("mesh", MESH_PORTAL);

    // The certificate alone authenticates: the mesh portal sees its one target.
    let seen = targets_seen(channel(&server, &pki.ca, Some(&mesh)).await.unwrap(), None)
        .await
        .unwrap();
    assert_eq!(seen, ["dev-logs-read"]);

    // No certificate: the token says who calls, over TLS.
    let seen = targets_seen(channel(&server, &pki.ca, None).await.unwrap(), Some(PORTAL_TOKEN))
        .await
        .unwrap();
    assert_eq!(seen.len(), 6, "{seen:?}");
    let nothing = targets_seen(channel(&server, &pki.ca, None).await.unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::Unauthenticated);
    assert!(nothing.message().contains("missing `authorization"), "{nothing:?}");

    // A certificate from the right CA whose identity is no caller's.
    let stranger = pki.spiffe("stranger", "spiffe://acme.test/ns/other/sa/stranger");
    let refused = targets_seen(channel(&server, &pki.ca, Some(&stranger)).await.unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("not a configured caller"), "{refused:?}");
    // One with no SPIFFE URI at all.
    let unnamed = pki.leaf("unnamed", vec![SanType::DnsName("a.test".try_into().unwrap())], false);
    let refused = targets_seen(channel(&server, &pki.ca, Some(&unnamed)).await.unwrap(), None)
        .await
        .unwrap_err();
    assert!(refused.message().contains("carries no identity"), "{refused:?}");

    // A token beside the certificate must name the same caller.
    let mixed = targets_seen(
        channel(&server, &pki.ca, Some(&mesh)).await.unwrap(),
        Some(PORTAL_TOKEN),
    )
    .await
    .unwrap_err();
    assert_eq!(mixed.code(), Code::Unauthenticated);
    assert!(mixed.message().contains("name different callers"), "{mixed:?}");

    // The command line speaks mTLS too, and says what is missing when it cannot.
    let cli = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "targets".into(),
            "--server".into(),
            format!("https://{}", server.address),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        run_cli(args)
    };
    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        mesh.0.display().to_string(),
        mesh.1.display().to_string(),
    );
    let output = cli(&["--ca", &ca, "--cert", &cert, "--key", &key]).await;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        printed.starts_with("dev-logs-read ") && printed.lines().count() == 3 && printed.contains("\nlimits: "),
        "{printed}"
    );
    let output = cli(&["--cert", &cert, "--key", &key]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs --ca"));
    let output = cli(&["--ca", &ca, "--token", PORTAL_TOKEN]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.starts_with(' ') && !line.starts_with("limits: "))
            .count(),
        6,
        "the portal's six targets"
    );

    // Plaintext to the TLS port gets nowhere.
    let plaintext = Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(targets_seen(channel, Some(PORTAL_TOKEN)).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_the_server_cannot_trust_fail_the_handshake_for_their_reason() {
    let logs = capture_logs();
    let pki = Pki::new("clients-ca");
    let (server, _redis) = mtls_server(&pki, "").await;
    let other = Pki::new("another-ca");
    let foreign = other.spiffe("foreign", MESH_PORTAL);
    let expired = pki.leaf("expired", vec![SanType::URI(MESH_PORTAL.try_into().unwrap())], true);
    for (name, identity, reason) in [
        ("foreign", &foreign, "UnknownIssuer"),
        ("expired", &expired, "certificate expired"),
    ] {
        // TLS 1.3: the client learns of the refusal on its first call.
        let outcome = match channel(&server, &pki.ca, Some(identity)).await {
            Ok(channel) => targets_seen(channel, None).await.map_err(|status| status.to_string()),
            Err(error) => Err(error),
        };
        assert!(outcome.is_err(), "{name}: {outcome:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            if logged
                .lines()
                .any(|line| line.contains("TLS handshake refused") && line.contains(reason))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no refusal for {reason} logged: {}",
                logged
                    .lines()
                    .filter(|line| line.contains("handshake"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // And the server still serves the certificates it trusts.
    let mesh = pki.spiffe("mesh", MESH_PORTAL);
    let seen = targets_seen(channel(&server, &pki.ca, Some(&mesh)).await.unwrap(), None)
        .await
        .unwrap();
    assert_eq!(seen, ["dev-logs-read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_holds_up_nobody() {
    use tokio::io::AsyncReadExt as _;
    let pki = Pki::new("clients-ca");
    let (server, _redis) = mtls_server(&pki, "").await;
    // Connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(server.address).await.unwrap();
    // Others are served meanwhile.
    let mesh = pki.spiffe("mesh", MESH_PORTAL);
    let seen = targets_seen(channel(&server, &pki.ca, Some(&mesh)).await.unwrap(), None)
        .await
        .unwrap();
    assert_eq!(seen, ["dev-logs-read"]);
    // And the silent one is dropped at the handshake timeout (300 ms here).
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer))
        .await
        .expect("closed by the server within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bearer_tokens_off_only_a_certificate_authenticates() {
    let pki = Pki::new("clients-ca");
    // Every caller of the test configuration has a token only: with tokens off, check-config
    // would refuse them, so this server keeps tokens on and a second configuration is checked.
    let text = config_text(&{
        let mut settings = Settings::new("redis://127.0.0.1:1".into(), "http://127.0.0.1:9".into());
        let (cert, key) = pki.leaf("server", vec![SanType::DnsName("localhost".try_into().unwrap())], false);
        settings.extra = format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            cert.display(),
            key.display(),
            pki.ca.display()
        );
        settings
    });
    let off = text.replacen("[redis]", "[server]\nbearer_tokens = false\n\n[redis]", 1);
    let problems = grant_broker::config::Config::parse(&off, &manifest_dir()).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|problem| problem.key.as_str()).collect();
    assert!(keys.contains(&"callers[0].token_sha256"), "{problems:?}");
    assert!(
        problems.iter().any(|problem| problem.key == "callers[0].token_sha256"
            && problem
                .message
                .contains("server.bearer_tokens is false: this caller needs a certificate_identity")),
        "{problems:?}"
    );
}

/// Waits (up to 10 s) until `check` passes, looking every 100 ms.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_once_written_and_a_broken_set_keeps_the_last_good_one() {
    let logs = capture_logs();
    let pki = Pki::new("clients-ca");
    let (server, _redis) = mtls_server(&pki, "").await;
    let mesh = pki.spiffe("mesh", MESH_PORTAL);
    let open = channel(&server, &pki.ca, Some(&mesh)).await.unwrap();
    assert_eq!(targets_seen(open.clone(), None).await.unwrap(), ["dev-logs-read"]);

    // The server's certificate is replaced by one from another CA (a rotation to a new issuer).
    let rotated = Pki::new("new-server-ca");
    let (cert, key) = rotated.leaf("server", vec![SanType::DnsName("localhost".try_into().unwrap())], false);
    let served = (pki.dir.path().join("server.pem"), pki.dir.path().join("server-key.pem"));
    std::fs::copy(&key, &served.1).unwrap();
    std::fs::copy(&cert, &served.0).unwrap();
    eventually("a client trusting only the new CA is served", || async {
        match channel(&server, &rotated.ca, Some(&mesh)).await {
            Ok(channel) => targets_seen(channel, None).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    // The connection made before the rotation goes on as it was.
    assert_eq!(targets_seen(open.clone(), None).await.unwrap(), ["dev-logs-read"]);
    // A client trusting only the old issuer no longer is (tonic connects lazily: then the
    // first call fails).
    let refused = match channel(&server, &pki.ca, Some(&mesh)).await {
        Ok(stale) => targets_seen(stale, None).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "the old issuer's certificate is no longer served");

    // A key that is not a key: refused, logged, and the set in use kept.
    std::fs::write(
        &served.1,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    eventually("the broken set is refused in the log", || async {
        String::from_utf8_lossy(&logs.lock().unwrap()).contains("TLS certificates not reloaded")
    })
    .await;
    let still = channel(&server, &rotated.ca, Some(&mesh)).await.unwrap();
    assert_eq!(targets_seen(still, None).await.unwrap(), ["dev-logs-read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_and_health_has_a_plaintext_port() {
    let pki = Pki::new("clients-ca");
    let redis = RedisServer::start();
    let (cert, key) = pki.leaf("server", vec![SanType::DnsName("localhost".try_into().unwrap())], false);
    let port = free_port();
    let mut settings = Settings::new(redis.url(), "http://127.0.0.1:9".into());
    // Files are looked at only hourly: what reloads them here is the signal.
    settings.extra = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nreload_check_secs = 3600\n\n[[callers]]\nid = \"mesh-portal\"\ncertificate_identity = \"{MESH_PORTAL}\"\ntargets = [\"dev-logs-read\"]\n",
        cert.display(),
        key.display(),
        pki.ca.display()
    );
    let config = tempfile::NamedTempFile::new().unwrap();
    let health_port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhealth_listen = \"127.0.0.1:{health_port}\"\n{}",
        config_text(&settings)
    );
    std::fs::write(config.path(), text).unwrap();
    let mut broker = std::process::Command::new(env!("CARGO_BIN_EXE_grant-broker"))
        .args(["serve", "--config"])
        .arg(config.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "grant-broker", &mut broker);
    let mesh = pki.spiffe("mesh", MESH_PORTAL);
    let served = |ca: PathBuf| {
        let mesh = mesh.clone();
        async move {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
                .identity(Identity::from_pem(
                    std::fs::read(&mesh.0).unwrap(),
                    std::fs::read(&mesh.1).unwrap(),
                ))
                .domain_name("localhost");
            let Ok(channel) = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
            else {
                return false;
            };
            targets_seen(channel, None).await.is_ok()
        }
    };
    assert!(served(pki.ca.clone()).await);
    // Probes that cannot present a certificate ask the plaintext health port; the API port
    // answers plaintext with nothing.
    eventually("the health port says SERVING", || async {
        let Ok(channel) = Endpoint::from_shared(format!("http://127.0.0.1:{health_port}"))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .is_ok_and(|answer| {
                answer.into_inner().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
            })
    })
    .await;
    let plaintext_api = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext_api {
        let answer = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await;
        assert!(answer.is_err(), "{answer:?}");
    }

    let rotated = Pki::new("new-server-ca");
    let (new_cert, new_key) = rotated.leaf("server", vec![SanType::DnsName("localhost".try_into().unwrap())], false);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &broker.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("the new certificate is served after SIGHUP", || {
        served(rotated.ca.clone())
    })
    .await;
    assert!(broker.try_wait().unwrap().is_none(), "SIGHUP does not stop the broker");
    broker.kill().unwrap();
    let _ = broker.wait();
}

/// No private key (the client's, the server's) reaches a log line or Redis, whatever is logged
/// at trace, even when a client with a certificate makes calls that succeed and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_are_never_logged_or_stored() {
    let logs = capture_logs();
    let pki = Pki::new("clients-ca");
    let (server, redis) = mtls_server(&pki, "").await;
    let mesh = pki.spiffe("mesh", MESH_PORTAL);
    let channel = channel(&server, &pki.ca, Some(&mesh)).await.unwrap();
    let mut client = proto::grant_broker_client::GrantBrokerClient::new(channel);
    client
        .list_targets(tonic::Request::new(proto::ListTargetsRequest {}))
        .await
        .unwrap();
    let refused = client
        .request_access(tonic::Request::new(production_request()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let key_lines = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with("-----") && line.len() > 40)
            .map(str::to_owned)
            .collect()
    };
    let mut secrets = key_lines(&mesh.1);
    secrets.extend(key_lines(&pki.dir.path().join("server-key.pem")));
    assert!(secrets.len() > 2, "the keys were read");
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    // The handshakes on both sides were traced: key material rustls logged would be here.
    assert!(
        logs.contains("\"target\":\"rustls::server::hs") && logs.contains("\"target\":\"rustls::client::hs"),
        "the handshakes were traced"
    );
    let dump = redis.dump().await;
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a log line holds key material");
        assert!(
            !dump.iter().any(|(_, value)| value.contains(secret.as_str())),
            "Redis holds key material"
        );
    }
}
