//! A real OIDC issuer for the tests: HTTPS on `127.0.0.1:0` (a certificate from its own test CA)
//! serving the discovery document and its key set, keys generated here (RSA and P-256), and
//! tokens it signs. A test publishes which keys the set holds, takes the endpoint down, and counts
//! how often the broker fetched the keys.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::pki::{Pki, loopback_names};

/// A signing key and its public half as the key set publishes it.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
    /// The public key's PEM text (an RSA key's, for the HS256 confusion attack).
    pub public_pem: Vec<u8>,
}

impl SigningKey {
    /// An RSA-2048 key for RS256.
    pub fn rsa(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let key = EncodingKey::from_rsa_der(&pkcs1_of(&pair.serialize_der()));
        Self::new(kid, Algorithm::RS256, key, pair.public_key_pem().into_bytes())
    }

    /// A P-256 key for ES256.
    pub fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        Self::new(kid, Algorithm::ES256, key, pair.public_key_pem().into_bytes())
    }

    fn new(kid: &str, algorithm: Algorithm, key: EncodingKey, public_pem: Vec<u8>) -> Self {
        let mut jwk = Jwk::from_encoding_key(&key, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            key,
            jwk,
            public_pem,
        }
    }

    /// `claims` signed with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    fn published(&self) -> Value {
        serde_json::to_value(&self.jwk).unwrap()
    }
}

/// The RSAPrivateKey (PKCS #1) inside a PKCS #8 PrivateKeyInfo: the OCTET STRING after the
/// version and the algorithm identifier.
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    // Reads one DER element at `at`: (tag, content start, content end).
    fn element(der: &[u8], at: usize) -> (u8, usize, usize) {
        let tag = der[at];
        let first = der[at + 1];
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
            (len, 2 + n)
        };
        (tag, at + header, at + header + len)
    }
    let (_, body, _) = element(pkcs8, 0);
    let (_, _, after_version) = element(pkcs8, body);
    let (_, _, after_algorithm) = element(pkcs8, after_version);
    let (tag, start, end) = element(pkcs8, after_algorithm);
    assert_eq!(tag, 0x04, "PKCS #8 holds the key in an OCTET STRING");
    pkcs8[start..end].to_vec()
}

/// `base` with `extra`'s claims over it.
pub fn merged(base: Value, extra: Value) -> Value {
    let (Value::Object(mut base), Value::Object(extra)) = (base, extra) else {
        panic!("claims are objects");
    };
    base.extend(extra);
    Value::Object(base)
}

/// The unsigned token `alg: none` makes: header and claims, no signature.
pub fn unsigned_token(kid: &str, claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({ "alg": "none", "typ": "JWT", "kid": kid });
    format!("{}.{}.", b64.encode(header.to_string()), b64.encode(claims.to_string()))
}

/// `claims` signed with HS256 under `secret`, naming `kid`: the algorithm-confusion attack, with an
/// RSA public key as the HMAC secret.
pub fn hmac_token(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

#[derive(Default)]
struct State {
    keys: Vec<Value>,
    down: bool,
    jwks_fetches: usize,
    max_age_secs: u64,
}

/// The issuer: `url` is its `iss` (and where discovery is).
pub struct TestIssuer {
    pub url: String,
    /// The CA its HTTPS certificate chains to: the broker's `ca_file` for it.
    pub ca: PathBuf,
    state: Arc<Mutex<State>>,
    _pki: Pki,
}

impl TestIssuer {
    pub async fn start(name: &str) -> Self {
        let pki = Pki::new(&format!("{name}-issuer-ca"));
        let (cert, key) = pki.leaf(&format!("{name}-issuer"), loopback_names(), false);
        let certificates = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let private_key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certificates, private_key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State {
            max_age_secs: 300,
            ..State::default()
        }));
        let (shared, issuer) = (Arc::clone(&state), url.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state, issuer) = (acceptor.clone(), Arc::clone(&shared), issuer.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let response = answer(&state, &issuer, request.uri().path());
                        async move { Ok::<_, hyper::Error>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            ca: pki.ca.clone(),
            state,
            _pki: pki,
        }
    }

    /// The key set now holds exactly these keys.
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.state.lock().unwrap().keys = keys.iter().map(|key| key.published()).collect();
    }

    /// Every request fails (503) while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// The key set's `Cache-Control: max-age`.
    pub fn set_max_age(&self, secs: u64) {
        self.state.lock().unwrap().max_age_secs = secs;
    }

    /// How often the key set was fetched (successfully or not).
    pub fn jwks_fetches(&self) -> usize {
        self.state.lock().unwrap().jwks_fetches
    }

    /// A token from this issuer: `claims` over the defaults (`iss`, `aud`, `sub`, `iat`, `exp` an
    /// hour ahead), signed with `key`.
    pub fn token(&self, key: &SigningKey, audience: &str, subject: &str, claims: Value) -> String {
        key.sign(&self.claims(audience, subject, claims))
    }

    /// The defaults under `claims` (which win).
    pub fn claims(&self, audience: &str, subject: &str, claims: Value) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let defaults = json!({
            "iss": self.url,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "exp": now + 3600,
        });
        merged(defaults, claims)
    }
}

fn answer(state: &Mutex<State>, issuer: &str, path: &str) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    if path == "/jwks" {
        state.jwks_fetches += 1;
    }
    if state.down {
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"down")))
            .unwrap();
    }
    let (body, cache) = match path {
        "/.well-known/openid-configuration" => (
            json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") }),
            "no-store".to_owned(),
        ),
        "/jwks" => (
            json!({ "keys": state.keys }),
            format!("public, max-age={}", state.max_age_secs),
        ),
        _ => {
            return Response::builder().status(404).body(Full::new(Bytes::new())).unwrap();
        }
    };
    Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", cache)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
