//! TLS on the gRPC port: the server's certificate chain and key, the client CA bundle that makes
//! it mutual, the acceptor (each handshake on its own task and within a timeout, so a client that
//! connects and says nothing never holds up the next one), reloading the files when they change
//! or on SIGHUP (new connections get the new set, open ones keep theirs, a set that does not load
//! is refused and the old one kept), and the identity a client certificate proves: its SPIFFE
//! URI, DNS name or common name, as the configuration says.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use x509_parser::extensions::GeneralName;

/// Which name in a client certificate says who the caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// The `spiffe://` URI SAN (SPIFFE, the service-mesh convention).
    Spiffe,
    /// The first DNS SAN.
    Dns,
    /// The subject's common name (legacy PKIs).
    CommonName,
}

impl IdentityKind {
    /// As the configuration spells it: `spiffe`, `dns` or `cn`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "spiffe" => Some(Self::Spiffe),
            "dns" => Some(Self::Dns),
            "cn" => Some(Self::CommonName),
            _ => None,
        }
    }
}

/// `[server.tls]`, validated (paths resolved against the configuration's directory).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificates are verified against these CAs (mTLS); without it, none are asked for.
    pub client_ca_file: Option<PathBuf>,
    pub client_identity: IdentityKind,
    /// No bearer tokens (`server.bearer_tokens = false`): a client without a certificate is
    /// refused at the handshake, not per call.
    pub require_client_certificate: bool,
    pub handshake_timeout: Duration,
    /// How often the files are looked at for a change.
    pub reload_check: Duration,
    /// Connections are closed (GOAWAY, streams given a grace period) after this long: the
    /// identity a certificate proved at the handshake is not trusted forever.
    pub max_connection_age: Duration,
}

impl TlsSettings {
    /// Whether clients may prove who they are with a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca_file.is_some()
    }
}

pub(crate) fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

/// The rustls configuration `settings` describe, every file read and checked now (so
/// `check-config` and a reload report a bad file instead of serving it).
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates(&settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|error| format!("{}: {error}", settings.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            // A caller that cannot do mTLS still connects, and authenticates with its token (a
            // certificate it does present must verify), unless tokens are off.
            let verifier = if settings.require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|error| format!("{}: {error}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        format!(
            "{} and {}: {error}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration new connections get, swapped whole on a reload (connections already
/// open keep the one they were made with).
#[derive(Clone)]
pub struct CurrentConfig(Arc<std::sync::RwLock<Arc<ServerConfig>>>);

impl CurrentConfig {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(config)))
    }

    fn get(&self) -> Arc<ServerConfig> {
        // A writer that panicked left a whole Arc behind: still the last good one.
        match self.0.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set(&self, config: Arc<ServerConfig>) {
        match self.0.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// What the files look like now (modification time and length of each), to notice a change.
fn stamp(settings: &TlsSettings) -> Vec<Option<(std::time::SystemTime, u64)>> {
    [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
    })
    .collect()
}

/// Loads the files and, from then on, reloads them into the returned configuration when one of
/// them changes (looked at every `settings.reload_check`) and on SIGHUP, on a task that runs
/// until aborted. A set that does not load (a key that does not match its certificate, a file
/// half written) is refused, logged with why, and the set in use kept; it is tried again at the
/// next change or signal.
pub fn load_and_watch(settings: &TlsSettings) -> Result<(CurrentConfig, JoinHandle<()>), String> {
    // Looked at before reading, so a change made while the files are read is seen.
    let seen = stamp(settings);
    let current = CurrentConfig::new(server_config(settings)?);
    let task = tokio::spawn(reload(settings.clone(), current.clone(), seen));
    Ok((current, task))
}

async fn reload(settings: TlsSettings, current: CurrentConfig, mut seen: Vec<Option<(std::time::SystemTime, u64)>>) {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP: TLS files reload on change only"))
        .ok();
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(signals) => signals.recv().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            _ = hangup => "SIGHUP",
            () = tokio::time::sleep(settings.reload_check) => {
                let now = stamp(&settings);
                if now == seen {
                    continue;
                }
                seen = now;
                "a file changed"
            }
        };
        match server_config(&settings) {
            Ok(config) => {
                current.set(config);
                tracing::info!(why, "TLS certificates reloaded: new connections use them");
            }
            Err(error) => tracing::error!(why, %error, "TLS certificates not reloaded: the ones in use are kept"),
        }
    }
}

/// Connections a handshake is under way on, at most: past this, new ones are closed at once.
const HANDSHAKES_IN_FLIGHT: usize = 256;

/// What a connection's client certificate proves, read once, when its handshake completes
/// (the handshake verified it), and handed to every request on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertificate {
    /// None presented (a caller that authenticates with its token).
    Absent,
    /// One that carries no identity of the configured kind.
    Unnamed,
    Identity(String),
}

/// A connection whose TLS handshake is done, with what its client certificate proves.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    certificate: ClientCertificate,
}

impl TlsConnection {
    fn new(stream: TlsStream<TcpStream>, kind: IdentityKind) -> Self {
        let certificate = match stream.get_ref().1.peer_certificates().and_then(<[_]>::first) {
            None => ClientCertificate::Absent,
            Some(leaf) => {
                certificate_identity(leaf, kind).map_or(ClientCertificate::Unnamed, ClientCertificate::Identity)
            }
        };
        Self { stream, certificate }
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ClientCertificate;

    fn connect_info(&self) -> ClientCertificate {
        self.certificate.clone()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` and completes each TLS handshake on its own task,
/// within `timeout`, with the configuration `current` holds then; yields the connections whose
/// handshake succeeded, with the identity their client certificate proves under `kind`. The task
/// accepts until it is aborted.
pub fn incoming(
    listener: TcpListener,
    current: CurrentConfig,
    timeout: Duration,
    kind: IdentityKind,
) -> (impl Stream<Item = io::Result<TlsConnection>>, JoinHandle<()>) {
    let (sender, receiver) = tokio::sync::mpsc::channel(HANDSHAKES_IN_FLIGHT);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Accepting never pauses: past the limit a new connection is closed at once, so a
            // flood of silent clients costs each of them a slot until its timeout, never the
            // listener.
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::warn!(%peer, limit = HANDSHAKES_IN_FLIGHT, "too many TLS handshakes under way: connection closed");
                drop(tcp);
                continue;
            };
            // Without TCP_NODELAY, small responses wait out delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender) = (TlsAcceptor::from(current.get()), sender.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(TlsConnection::new(stream, kind))).await;
                    }
                    Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, timeout_ms = timeout.as_millis(), "TLS handshake timed out"),
                }
            });
        }
    });
    (ReceiverStream::new(receiver), task)
}

/// The identity the certificate (DER) proves, by `kind`; `None` when it names none of that kind.
pub fn certificate_identity(der: &[u8], kind: IdentityKind) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    if kind == IdentityKind::CommonName {
        return certificate
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()
            .map(str::to_owned);
    }
    let names = certificate.subject_alternative_name().ok()??;
    let names = &names.value.general_names;
    match kind {
        // An SVID carries exactly one URI SAN (the SPIFFE X.509-SVID standard): a certificate
        // with more is not one, whatever its first says.
        IdentityKind::Spiffe => match names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect::<Vec<_>>()
            .as_slice()
        {
            [uri] if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        },
        // DNS names compare without case.
        IdentityKind::Dns => names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        }),
        IdentityKind::CommonName => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: Vec<rcgen::SanType>, common_name: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = names;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn each_kind_of_identity_is_read_from_its_own_name() {
        let der = certificate(
            vec![
                rcgen::SanType::DnsName("portal.acme.internal".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://acme.example/ns/portals/sa/vendor".try_into().unwrap()),
            ],
            "vendor-portal",
        );
        assert_eq!(
            certificate_identity(&der, IdentityKind::Spiffe).as_deref(),
            Some("spiffe://acme.example/ns/portals/sa/vendor")
        );
        assert_eq!(
            certificate_identity(&der, IdentityKind::Dns).as_deref(),
            Some("portal.acme.internal")
        );
        assert_eq!(
            certificate_identity(&der, IdentityKind::CommonName).as_deref(),
            Some("vendor-portal")
        );
        // Two URI SANs: not an SVID, whatever the first says. DNS names are read lower-cased.
        let two = certificate(
            vec![
                rcgen::SanType::URI("spiffe://acme.example/one".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://acme.example/two".try_into().unwrap()),
                rcgen::SanType::DnsName("Portal.ACME.internal".try_into().unwrap()),
            ],
            "x",
        );
        assert_eq!(certificate_identity(&two, IdentityKind::Spiffe), None);
        assert_eq!(
            certificate_identity(&two, IdentityKind::Dns).as_deref(),
            Some("portal.acme.internal")
        );
        let plain = certificate(Vec::new(), "only-a-name");
        assert_eq!(certificate_identity(&plain, IdentityKind::Spiffe), None);
        assert_eq!(certificate_identity(&plain, IdentityKind::Dns), None);
        assert_eq!(
            certificate_identity(b"not a certificate", IdentityKind::CommonName),
            None
        );
    }

    /// With bearer tokens off, a client without a certificate is refused by the handshake itself;
    /// with them on, it completes the handshake (and authenticates with its token).
    #[tokio::test]
    async fn without_tokens_a_client_must_present_a_certificate_at_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let (cert_file, key_file, ca_file) = (
            dir.path().join("server.pem"),
            dir.path().join("server-key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert_file, server.pem()).unwrap();
        std::fs::write(&key_file, server_key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        for required in [false, true] {
            let settings = TlsSettings {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: Some(ca_file.clone()),
                client_identity: IdentityKind::Spiffe,
                require_client_certificate: required,
                handshake_timeout: Duration::from_secs(5),
                reload_check: Duration::from_secs(10),
                max_connection_age: Duration::from_secs(3600),
            };
            let acceptor = TlsAcceptor::from(server_config(&settings).unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let served = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                acceptor.accept(tcp).await.map(drop).map_err(|error| error.to_string())
            });
            let mut roots = RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let client =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let tcp = TcpStream::connect(address).await.unwrap();
            let connected = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect("localhost".try_into().unwrap(), tcp)
                .await;
            // TLS 1.3: the client is done before the server has checked; the server says.
            let served = served.await.unwrap();
            if required {
                let error = served.unwrap_err();
                assert!(error.contains("no certificates"), "{error}");
            } else {
                assert_eq!(served, Ok(()));
                assert!(connected.is_ok(), "{:?}", connected.err());
            }
        }
    }

    #[test]
    fn identity_kinds_are_spelled_as_the_configuration_spells_them() {
        assert_eq!(IdentityKind::parse("spiffe"), Some(IdentityKind::Spiffe));
        assert_eq!(IdentityKind::parse("dns"), Some(IdentityKind::Dns));
        assert_eq!(IdentityKind::parse("cn"), Some(IdentityKind::CommonName));
        assert_eq!(IdentityKind::parse("SPIFFE"), None);
    }
}
