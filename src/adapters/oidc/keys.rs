//! An issuer's signing keys (its JWKS): fetched over HTTPS (from the discovery document's
//! `jwks_uri`, or a configured URL) or read from a file; cached by `kid` for as long as the
//! response's `Cache-Control: max-age` says (clamped); fetched again for an unknown `kid` at most
//! once per `refetch_interval`; and when a fetch fails the last good set stays in use. Only
//! asymmetric signing keys are kept: a symmetric (`oct`) key in a JWKS would let anyone who reads
//! the set sign tokens.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use serde::Deserialize;

type Https = HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Largest discovery document or key set read.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Most keys kept from one set.
const MAX_KEYS: usize = 100;
/// How long a set is used without `Cache-Control` saying otherwise, and the longest it is used
/// whatever it says.
const DEFAULT_FRESH: Duration = Duration::from_secs(3600);
const MAX_FRESH: Duration = Duration::from_secs(24 * 3600);
/// How long past its freshness a set is still used while fetches fail: an issuer that cannot be
/// reached for a day no longer vouches for anyone (a key it rotated out must not live on).
const MAX_STALE: Duration = Duration::from_secs(24 * 3600);

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    /// A JWKS URL (https).
    Url(String),
    /// A JWKS document on disk (re-read when a `kid` is unknown, at most once per interval).
    File(PathBuf),
}

/// One usable key.
#[derive(Clone)]
pub struct Key {
    pub decoding: DecodingKey,
    /// The algorithm the set pins the key to, when it says.
    pub algorithm: Option<Algorithm>,
    pub family: AlgorithmFamily,
    pub curve: Option<EllipticCurve>,
}

impl Key {
    /// Whether this key may verify a signature made with `algorithm`: the family must match (an
    /// RSA key never verifies an EC or HMAC signature), the curve must be the algorithm's, and a
    /// key pinned to an algorithm verifies only that one.
    pub fn fits(&self, algorithm: Algorithm) -> bool {
        let family = algorithm.family();
        if family == AlgorithmFamily::Hmac {
            return false;
        }
        let curve_fits = match (algorithm, &self.curve) {
            (Algorithm::ES256, Some(curve)) => *curve == EllipticCurve::P256,
            (Algorithm::ES384, Some(curve)) => *curve == EllipticCurve::P384,
            (Algorithm::EdDSA, Some(curve)) => *curve == EllipticCurve::Ed25519,
            _ => true,
        };
        self.family == family && curve_fits && self.algorithm.is_none_or(|pinned| pinned == algorithm)
    }
}

/// A fetched set.
struct KeySet {
    keys: HashMap<String, Key>,
    /// Keys without a `kid` (usable only when the set has exactly one key).
    unnamed: Vec<Key>,
    fresh_until: Instant,
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The set (as fetched) has no such key: the token is refused.
    Unknown(String),
    /// No set has ever been fetched: nothing can be verified (UNAVAILABLE, never a pass).
    Unavailable(String),
}

/// One issuer's keys.
pub struct KeyCache {
    issuer: String,
    source: KeySource,
    http: Option<Https>,
    fetch_timeout: Duration,
    refetch_interval: Duration,
    set: RwLock<Option<Arc<KeySet>>>,
    /// Serialises fetches (one at a time per issuer) and remembers the last attempt, which
    /// bounds how often an unknown `kid` can make the broker fetch.
    fetching: tokio::sync::Mutex<Fetching>,
}

#[derive(Default)]
struct Fetching {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// From the discovery document, once read.
    jwks_uri: Option<String>,
}

impl KeyCache {
    /// `ca_file`: trust only these CA certificates for the fetch (else the system's).
    pub fn new(
        issuer: &str,
        source: KeySource,
        ca_file: Option<&std::path::Path>,
        fetch_timeout: Duration,
        refetch_interval: Duration,
    ) -> Result<Self, String> {
        let http = match &source {
            KeySource::File(_) => None,
            KeySource::Discovery | KeySource::Url(_) => Some(https_client(ca_file)?),
        };
        Ok(Self {
            issuer: issuer.to_owned(),
            source,
            http,
            fetch_timeout,
            refetch_interval,
            set: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(Fetching::default()),
        })
    }

    /// The set in use, unless it is more than [`MAX_STALE`] past its freshness.
    fn current(&self) -> Option<Arc<KeySet>> {
        let set = self
            .set
            .read()
            .map(|set| set.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        set.filter(|set| set.fresh_until + MAX_STALE > Instant::now())
    }

    /// The key `kid` names (or the set's only key, when the token names none), fetching the set
    /// when it is missing, stale or lacks the key, within the refetch bound.
    pub async fn key(&self, kid: Option<&str>) -> Result<Key, KeyError> {
        if let Some(set) = self.current()
            && find(&set, kid).is_some()
        {
            if set.fresh_until > Instant::now() {
                return find(&set, kid).ok_or_else(|| self.unknown(kid));
            }
            // Stale: refresh, unless a fetch is running already (then the stale set serves
            // meanwhile rather than every call waiting on the network).
            if let Ok(fetching) = self.fetching.try_lock() {
                self.refresh(fetching).await;
            }
        } else {
            let fetching = self.fetching.lock().await;
            if !self.refresh(fetching).await
                && let Some(set) = self.current()
                && find(&set, kid).is_none()
            {
                // Not in the set, and too soon to fetch it again: a key the issuer may have
                // just added. Try again later, rather than be told the token is bad.
                return Err(KeyError::Unavailable(format!(
                    "{}; the set was fetched less than {} s ago: try again then",
                    self.unknown_text(kid),
                    self.refetch_interval.as_secs()
                )));
            }
        }
        match self.current() {
            Some(set) => find(&set, kid).ok_or_else(|| self.unknown(kid)),
            None => Err(KeyError::Unavailable(format!(
                "issuer `{}`'s signing keys could not be fetched{}",
                self.issuer,
                self.last_error_suffix().await
            ))),
        }
    }

    fn unknown(&self, kid: Option<&str>) -> KeyError {
        KeyError::Unknown(self.unknown_text(kid))
    }

    fn unknown_text(&self, kid: Option<&str>) -> String {
        match kid {
            Some(kid) => format!(
                "no key `{}` in issuer `{}`'s key set",
                crate::domain::clip(kid, 64),
                self.issuer
            ),
            None => format!(
                "the token names no key (`kid`) and issuer `{}`'s set holds more than one",
                self.issuer
            ),
        }
    }

    async fn last_error_suffix(&self) -> String {
        self.fetching
            .lock()
            .await
            .last_error
            .as_ref()
            .map(|error| format!(": {error}"))
            .unwrap_or_default()
    }

    /// Fetches the set unless another fetch ran within the refetch interval (then `false`); a
    /// failure keeps the set there is (and is logged).
    async fn refresh(&self, mut fetching: tokio::sync::MutexGuard<'_, Fetching>) -> bool {
        if let Some(last) = fetching.last_attempt
            && last.elapsed() < self.refetch_interval
        {
            return false;
        }
        fetching.last_attempt = Some(Instant::now());
        match self.fetch(&mut fetching).await {
            Ok(set) => {
                tracing::info!(issuer = %self.issuer, keys = set.keys.len() + set.unnamed.len(), "identity issuer keys loaded");
                fetching.last_error = None;
                let mut current = self.set.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                *current = Some(Arc::new(set));
            }
            Err(error) => {
                // Discover again next time: the issuer may have moved its keys.
                fetching.jwks_uri = None;
                let kept = self.current().is_some();
                tracing::error!(issuer = %self.issuer, %error, kept_last_good_set = kept, "cannot fetch identity issuer keys");
                fetching.last_error = Some(error);
            }
        }
        true
    }

    async fn fetch(&self, fetching: &mut Fetching) -> Result<KeySet, String> {
        let (body, max_age) = match (&self.source, &self.http) {
            (KeySource::File(path), _) => {
                let body = tokio::fs::read(path)
                    .await
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                (Bytes::from(body), None)
            }
            (KeySource::Url(url), Some(http)) => self.get(http, url).await?,
            (KeySource::Discovery, Some(http)) => {
                let jwks_uri = match &fetching.jwks_uri {
                    Some(uri) => uri.clone(),
                    None => {
                        let uri = self.discover(http).await?;
                        fetching.jwks_uri = Some(uri.clone());
                        uri
                    }
                };
                self.get(http, &jwks_uri).await?
            }
            (_, None) => return Err("no HTTP client".to_owned()),
        };
        let fresh = max_age.unwrap_or(DEFAULT_FRESH).min(MAX_FRESH);
        parse_key_set(&body, Instant::now() + fresh)
    }

    /// The discovery document's `jwks_uri`, after checking it names this issuer.
    async fn discover(&self, http: &Https) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let (body, _) = self.get(http, &url).await?;
        let discovery: Discovery =
            serde_json::from_slice(&body).map_err(|error| format!("{url}: not a discovery document: {error}"))?;
        if discovery.issuer != self.issuer {
            return Err(format!(
                "{url} names issuer `{}`, not `{}`",
                crate::domain::clip(&discovery.issuer, 256),
                self.issuer
            ));
        }
        if !discovery.jwks_uri.starts_with("https://") {
            return Err(format!("{url}: jwks_uri must be https"));
        }
        Ok(discovery.jwks_uri)
    }

    /// One GET: the body, and `Cache-Control: max-age` when the response gives one.
    async fn get(&self, http: &Https, url: &str) -> Result<(Bytes, Option<Duration>), String> {
        let uri: hyper::Uri = url.parse().map_err(|error| format!("{url}: {error}"))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("grant-broker/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|error| format!("{url}: {error}"))?;
        let exchange = async {
            let response = http
                .request(request)
                .await
                .map_err(|error| format!("{url}: {}", crate::domain::error_chain(&error)))?;
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            let max_age = response
                .headers()
                .get_all(hyper::header::CACHE_CONTROL)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .find_map(max_age);
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|error| format!("{url}: {error}"))?
                .to_bytes();
            Ok((body, max_age))
        };
        tokio::time::timeout(self.fetch_timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {} ms", self.fetch_timeout.as_millis()))?
    }
}

fn find(set: &KeySet, kid: Option<&str>) -> Option<Key> {
    match kid {
        Some(kid) => set.keys.get(kid).cloned(),
        None if set.keys.len() + set.unnamed.len() == 1 => set.keys.values().chain(&set.unnamed).next().cloned(),
        None => None,
    }
}

/// `max-age` of one `Cache-Control` value; `no-store` and `no-cache` mean zero (fetch again on
/// the next unknown or stale use, within the refetch bound).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        lower
            .strip_prefix("max-age=")
            .and_then(|secs| secs.trim_matches('"').parse().ok())
            .map(Duration::from_secs)
    })
}

/// The usable keys of a JWKS document: asymmetric signature keys; others (encryption keys,
/// symmetric keys, kinds this build does not know) are skipped, not fatal.
fn parse_key_set(body: &[u8], fresh_until: Instant) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body).map_err(|error| format!("not a JWKS document: {error}"))?;
    let mut keys = HashMap::new();
    let mut unnamed = Vec::new();
    for value in document.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref usage) if *usage != PublicKeyUse::Signature) {
            continue;
        }
        let (family, curve) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
            AlgorithmParameters::EllipticCurve(params) => (AlgorithmFamily::Ec, Some(params.curve.clone())),
            AlgorithmParameters::OctetKeyPair(params) => (AlgorithmFamily::Ed, Some(params.curve.clone())),
            // Symmetric keys (`oct`) and kinds this build does not know.
            _ => continue,
        };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let algorithm = match jwk.common.key_algorithm {
            None => None,
            Some(pinned) => match Algorithm::try_from(pinned) {
                Ok(algorithm) => Some(algorithm),
                // Pinned to something that is not a signature algorithm this build verifies.
                Err(_) => continue,
            },
        };
        let key = Key {
            decoding,
            algorithm,
            family,
            curve,
        };
        match jwk.common.key_id {
            Some(kid) => {
                keys.insert(kid, key);
            }
            None => unnamed.push(key),
        }
    }
    if keys.is_empty() && unnamed.is_empty() {
        return Err("the key set holds no usable signing key".to_owned());
    }
    Ok(KeySet {
        keys,
        unnamed,
        fresh_until,
    })
}

/// Hyper's client over rustls (aws-lc), trusting `ca_file` alone when given, else the system's
/// CA certificates. https only: keys fetched in the clear could be anyone's.
fn https_client(ca_file: Option<&std::path::Path>) -> Result<Https, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in crate::tls::certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("cannot set up TLS: {error}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|error| format!("no system CA certificates to verify identity issuers with: {error}"))?,
    };
    let connector = builder.https_only().enable_http1().build();
    Ok(HttpClient::builder(TokioExecutor::new()).build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_sets_how_long_a_set_is_used() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(
            max_age("Max-Age=\"30\", must-revalidate"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_never_kept() {
        let set = br#"{"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "sig", "crv": "P-256", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "future", "kid": "unknown"}
        ]}"#;
        let set = parse_key_set(set, Instant::now()).unwrap();
        assert_eq!(set.keys.keys().collect::<Vec<_>>(), vec!["sig"]);
        let key = &set.keys["sig"];
        assert!(key.fits(Algorithm::ES256));
        assert!(!key.fits(Algorithm::ES384), "the curve is P-256");
        assert!(!key.fits(Algorithm::RS256), "an EC key never verifies RSA");
        assert!(!key.fits(Algorithm::HS256), "nothing verifies HMAC");
        assert!(parse_key_set(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#, Instant::now()).is_err());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[tokio::test]
    async fn a_key_set_file_is_read_and_read_again_for_an_unknown_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let key = |kid: &str| {
            format!(
                r#"{{"kty": "EC", "kid": "{kid}", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}"#
            )
        };
        std::fs::write(&path, format!(r#"{{"keys": [{}]}}"#, key("one"))).unwrap();
        let cache = KeyCache::new(
            "https://issuer.test",
            KeySource::File(path.clone()),
            None,
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .unwrap();
        assert!(cache.key(Some("one")).await.is_ok());
        assert!(matches!(cache.key(Some("two")).await, Err(KeyError::Unknown(_))));
        std::fs::write(&path, format!(r#"{{"keys": [{}, {}]}}"#, key("one"), key("two"))).unwrap();
        assert!(
            cache.key(Some("two")).await.is_ok(),
            "an unknown kid reads the file again"
        );
        // A file that turns bad keeps the last good set.
        std::fs::write(&path, "not json").unwrap();
        assert!(cache.key(Some("one")).await.is_ok());
        assert!(matches!(cache.key(Some("three")).await, Err(KeyError::Unknown(_))));
    }
}
