//! Verifying OIDC tokens: a person's ID or access token forwarded by a portal, or a pipeline's
//! workload token (GitHub Actions, GitLab CI, Kubernetes service accounts). One verifier serves
//! them all; each issuer is an issuer URL, an audience, pinned algorithms, where its keys are,
//! and which claims say who the subject is and what facts the rules see.
//!
//! A token is accepted only when: its issuer is configured and the caller may present its tokens;
//! its header's algorithm is one the issuer is pinned to (asymmetric only: `none` and HMAC never
//! verify) and fits the key (family, curve, the key's own `alg`); the signature verifies against
//! the issuer's key set ([`keys`]); `iss` is exact; `aud` holds the expected audience; `exp` is
//! present and not past, `nbf` and `iat` not in the future (each within the configured skew); and
//! the subject claim is a usable name. Tokens are never stored or logged; error messages never
//! echo one.

pub mod keys;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::Duration,
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use time::OffsetDateTime;

pub use keys::KeySource;
use keys::{KeyCache, KeyError};

use crate::domain::{
    approval::Person,
    identity::{PrincipalKind, Verified, VerifiedIdentity},
};

/// Longest token accepted (real ones are 1-2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most groups taken from a token, and most facts an issuer may map.
pub const MAX_GROUPS: usize = 256;
pub const MAX_FACTS: usize = 32;
/// Longest group name or fact value taken from a token.
pub const MAX_CLAIM_CHARS: usize = 256;

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// Its name in the configuration and the ledger.
    pub id: String,
    /// `iss`, exactly (also where discovery looks).
    pub issuer: String,
    /// The audience a token must carry, unless the presenting caller names its own.
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    /// Trust only these CA certificates when fetching its keys.
    pub ca_file: Option<PathBuf>,
    pub kind: PrincipalKind,
    /// The claim naming the subject (`sub`, `email`, `preferred_username`, ...).
    pub subject_claim: String,
    /// The claim holding the subject's groups, if any.
    pub groups_claim: Option<String>,
    /// `amr` values that mean a second factor was used.
    pub mfa_methods: Vec<String>,
    /// Fact name -> claim: a top-level claim name, or a JSON pointer (`/kubernetes.io/namespace`).
    pub facts: BTreeMap<String, String>,
    /// Prepended to every group of its tokens (`partner:`), so that one issuer cannot mint a
    /// group another's people are trusted by; at most one issuer with groups has none.
    pub groups_prefix: String,
}

/// Every issuer and the verifier's clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierSettings {
    pub issuers: Vec<IssuerSettings>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Least time between two fetches of one issuer's keys (an unknown `kid` fetches at most
    /// this often).
    pub refetch_interval: Duration,
    pub fetch_timeout: Duration,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            leeway: Duration::from_secs(60),
            refetch_interval: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not acceptable (UNAUTHENTICATED): what is wrong with it.
    Invalid(String),
    /// Its issuer's keys have never been fetched (UNAVAILABLE): it could not be checked.
    KeysUnavailable(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(reason) | Self::KeysUnavailable(reason) => f.write_str(reason),
        }
    }
}

struct Issuer {
    settings: IssuerSettings,
    keys: KeyCache,
}

/// Verifies tokens of the configured issuers.
pub struct Verifier {
    /// By `iss`.
    issuers: HashMap<String, Issuer>,
    leeway: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self.issuers.values().map(|i| &i.settings.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn invalid(reason: impl Into<String>) -> TokenError {
    TokenError::Invalid(reason.into())
}

impl Verifier {
    pub fn new(settings: &VerifierSettings) -> Result<Self, String> {
        let mut issuers = HashMap::new();
        for issuer in &settings.issuers {
            let keys = KeyCache::new(
                &issuer.issuer,
                issuer.keys.clone(),
                issuer.ca_file.as_deref(),
                settings.fetch_timeout,
                settings.refetch_interval,
            )
            .map_err(|error| format!("identity issuer `{}`: {error}", issuer.id))?;
            issuers.insert(
                issuer.issuer.clone(),
                Issuer {
                    settings: issuer.clone(),
                    keys,
                },
            );
        }
        Ok(Self {
            issuers,
            leeway: i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// A token read (not yet verified) once: its issuer, found by its `iss`, and its claims, so
    /// that the caller it names and the caller's right to present it can be checked before any
    /// key is fetched, and the verification after reads nothing again.
    pub fn inspect<'v, 't>(&'v self, token: &'t str) -> Result<Inspected<'v, 't>, TokenError> {
        let claims = unverified_claims(token)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the identity token has no `iss` claim"))?;
        let issuer = self.issuers.get(iss).ok_or_else(|| {
            invalid(format!(
                "the identity token's issuer {} is not configured",
                crate::domain::echo(iss)
            ))
        })?;
        Ok(Inspected {
            verifier: self,
            issuer,
            token,
            claims,
        })
    }

    /// The audience an issuer's tokens carry unless a caller names its own.
    pub fn audience_of(&self, issuer_id: &str) -> Option<String> {
        self.issuers
            .values()
            .find(|issuer| issuer.settings.id == issuer_id)
            .map(|issuer| issuer.settings.audience.clone())
    }
}

/// A token [`Verifier::inspect`] read: nothing in it is trusted until [`Inspected::verify`].
pub struct Inspected<'v, 't> {
    verifier: &'v Verifier,
    issuer: &'v Issuer,
    token: &'t str,
    claims: serde_json::Map<String, Value>,
}

impl Inspected<'_, '_> {
    /// The configured id of the issuer its `iss` names.
    pub fn issuer_id(&self) -> &str {
        &self.issuer.settings.id
    }

    /// The audiences its `aud` claims.
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// Verifies the token for `audience` (else the issuer's own), at `now`; its claims must hold
    /// `required` (claim or JSON pointer -> value: what a caller its token alone identifies
    /// demands, such as its repository owner's id).
    pub async fn verify(
        self,
        audience: Option<&str>,
        required: &BTreeMap<String, String>,
        now: OffsetDateTime,
    ) -> Result<VerifiedIdentity, TokenError> {
        let Self {
            verifier,
            issuer,
            token,
            claims,
        } = self;
        let settings = &issuer.settings;
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            invalid(format!(
                "the identity token's header is not acceptable ({error}): only {} are allowed for issuer `{}`",
                algorithm_names(&settings.algorithms),
                settings.id
            ))
        })?;
        if !settings.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "the identity token is signed with {:?}; issuer `{}` allows only {}",
                header.alg,
                settings.id,
                algorithm_names(&settings.algorithms)
            )));
        }
        let key = issuer
            .keys
            .key(header.kid.as_deref())
            .await
            .map_err(|error| match error {
                KeyError::Unknown(reason) => TokenError::Invalid(reason),
                KeyError::Unavailable(reason) => TokenError::KeysUnavailable(reason),
            })?;
        if !key.fits(header.alg) {
            return Err(invalid(format!(
                "the identity token's algorithm {:?} does not fit the key it names",
                header.alg
            )));
        }
        // Signature and algorithm only: the claims are checked below, against the broker's clock,
        // with messages that say which check failed.
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(|error| {
            invalid(format!(
                "the identity token's signature does not verify with issuer `{}`'s key: {error}",
                settings.id
            ))
        })?;
        Self::check_claims(verifier.leeway, &claims, audience.unwrap_or(&settings.audience), now)?;
        for (claim, value) in required {
            if claim_at(&claims, claim).and_then(scalar).as_deref() != Some(value.as_str()) {
                return Err(invalid(format!(
                    "the identity token's `{}` is not what this caller requires",
                    crate::domain::clip(claim, 64)
                )));
            }
        }
        identity(settings, &claims)
    }

    fn check_claims(
        leeway: i64,
        claims: &serde_json::Map<String, Value>,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<(), TokenError> {
        let now = now.unix_timestamp();
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&audience) {
            return Err(invalid(format!(
                "the identity token is not for this audience: it must carry `aud` {}",
                crate::domain::echo(audience)
            )));
        }
        let time = |name: &str| -> Result<Option<i64>, TokenError> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_i64()
                    .or_else(|| value.as_f64().map(|secs| secs as i64))
                    .map(Some)
                    .ok_or_else(|| invalid(format!("the identity token's `{name}` is not a number"))),
            }
        };
        let exp = time("exp")?.ok_or_else(|| invalid("the identity token has no `exp` claim"))?;
        if now > exp.saturating_add(leeway) {
            return Err(invalid(format!(
                "the identity token expired {} seconds ago",
                now.saturating_sub(exp)
            )));
        }
        if let Some(nbf) = time("nbf")?
            && now < nbf.saturating_sub(leeway)
        {
            return Err(invalid(format!(
                "the identity token is not valid for another {} seconds (`nbf`)",
                nbf.saturating_sub(now)
            )));
        }
        if let Some(iat) = time("iat")?
            && now < iat.saturating_sub(leeway)
        {
            return Err(invalid("the identity token was issued in the future (`iat`)"));
        }
        // A sign-in in the future would read as the freshest MFA there is.
        if let Some(auth_time) = time("auth_time")?
            && now < auth_time.saturating_sub(leeway)
        {
            return Err(invalid(
                "the identity token says its subject signed in in the future (`auth_time`)",
            ));
        }
        Ok(())
    }
}

fn algorithm_names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|algorithm| format!("{algorithm:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The token's claims, not yet verified: only to pick the issuer; nothing is trusted from them
/// until the signature has been checked.
fn unverified_claims(token: &str) -> Result<serde_json::Map<String, Value>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid(format!(
            "the identity token is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("the identity token is not a JWT (three dot-separated parts)"));
    };
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| invalid("the identity token's payload is not base64url"))?;
    serde_json::from_slice(&payload).map_err(|_| invalid("the identity token's payload is not a JSON object"))
}

/// Who the verified claims name, and what they say about them.
fn identity(
    settings: &IssuerSettings,
    claims: &serde_json::Map<String, Value>,
) -> Result<VerifiedIdentity, TokenError> {
    let subject = claims.get(&settings.subject_claim).and_then(scalar).ok_or_else(|| {
        invalid(format!(
            "the identity token has no `{}` claim (issuer `{}`'s subject claim)",
            settings.subject_claim, settings.id
        ))
    })?;
    let subject = Person::parse(&settings.subject_claim, &subject)
        .map_err(|violation| invalid(format!("the identity token's subject: {}", violation.description)))?;
    // An address the issuer says it has not verified names nobody.
    if settings.subject_claim == "email" && claims.get("email_verified") == Some(&Value::Bool(false)) {
        return Err(invalid(
            "the identity token's email is not verified (`email_verified` is false)",
        ));
    }
    let groups = match settings.groups_claim.as_ref().and_then(|claim| claims.get(claim)) {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(Value::String(one)) => BTreeSet::from([one.clone()]),
        Some(Value::Array(many)) if many.len() <= MAX_GROUPS => {
            many.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(Value::Array(_)) => {
            return Err(invalid(format!(
                "the identity token lists more than {MAX_GROUPS} groups"
            )));
        }
        Some(_) => return Err(invalid("the identity token's groups claim is not a list of strings")),
    };
    if let Some(group) = groups.iter().find(|group| !usable(group)) {
        return Err(invalid(format!(
            "the identity token's group {} is not usable (1-{MAX_CLAIM_CHARS} printable characters)",
            crate::domain::echo(group)
        )));
    }
    let groups = if settings.groups_prefix.is_empty() {
        groups
    } else {
        groups
            .into_iter()
            .map(|group| format!("{}{group}", settings.groups_prefix))
            .collect()
    };
    let mfa = match claims.get("amr") {
        Some(Value::Array(methods)) => methods
            .iter()
            .filter_map(Value::as_str)
            .any(|method| settings.mfa_methods.iter().any(|mfa| mfa == method)),
        _ => false,
    };
    let auth_time = claims
        .get("auth_time")
        .and_then(Value::as_i64)
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok());
    let mut facts = BTreeMap::new();
    for (fact, claim) in &settings.facts {
        if let Some(value) = claim_at(claims, claim).and_then(scalar) {
            if !usable(&value) {
                return Err(invalid(format!(
                    "the identity token's `{claim}` is not usable (1-{MAX_CLAIM_CHARS} printable characters)"
                )));
            }
            facts.insert(fact.clone(), value);
        }
    }
    Ok(VerifiedIdentity {
        subject,
        verified: Verified {
            issuer: settings.id.clone(),
            kind: settings.kind,
            mfa,
            auth_time,
            groups,
            facts,
        },
    })
}

/// The claim `path` names: a top-level claim, or a JSON pointer into nested ones
/// (`/kubernetes.io/serviceaccount/name`).
fn claim_at<'c>(claims: &'c serde_json::Map<String, Value>, path: &str) -> Option<&'c Value> {
    let Some(pointer) = path.strip_prefix('/') else {
        return claims.get(path);
    };
    let (first, rest) = match pointer.find('/') {
        Some(slash) => (&pointer[..slash], &pointer[slash..]),
        None => (pointer, ""),
    };
    let unescape = |token: &str| token.replace("~1", "/").replace("~0", "~");
    let value = claims.get(&unescape(first))?;
    if rest.is_empty() {
        Some(value)
    } else {
        value.pointer(rest)
    }
}

/// A claim as text: strings as they are, numbers and booleans as JSON writes them.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn usable(text: &str) -> bool {
    let chars = text.chars().count();
    (1..=MAX_CLAIM_CHARS).contains(&chars) && !text.chars().any(char::is_control)
}

/// Fuzzing on stable Rust: arbitrary text, and tokens built from arbitrary headers and claims,
/// through the whole verifier (keys from a file). Every one is answered, none verifies, none
/// panics.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const ISSUER: &str = "https://issuer.test";

    fn verifier(dir: &std::path::Path) -> Verifier {
        let jwks = dir.join("jwks.json");
        std::fs::write(
            &jwks,
            r#"{"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256", "alg": "ES256",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
        )
        .unwrap();
        let settings = VerifierSettings {
            issuers: vec![IssuerSettings {
                id: "test".into(),
                issuer: ISSUER.into(),
                audience: "grant-broker".into(),
                algorithms: vec![Algorithm::ES256, Algorithm::RS256],
                keys: KeySource::File(jwks),
                ca_file: None,
                kind: PrincipalKind::Person,
                subject_claim: "sub".into(),
                groups_claim: Some("groups".into()),
                mfa_methods: vec!["mfa".into()],
                facts: [("namespace".to_owned(), "/kubernetes.io/namespace".to_owned())].into(),
                groups_prefix: String::new(),
            }],
            refetch_interval: Duration::ZERO,
            ..VerifierSettings::default()
        };
        Verifier::new(&settings).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// JSON values of every shape, a few levels deep.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,40}".prop_map(Value::String),
            Just(Value::String(ISSUER.into())),
            Just(Value::String("k1".into())),
            Just(Value::String("ES256".into())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("iss".to_owned()),
                        Just("aud".to_owned()),
                        Just("sub".to_owned()),
                        Just("exp".to_owned()),
                        Just("nbf".to_owned()),
                        Just("iat".to_owned()),
                        Just("auth_time".to_owned()),
                        Just("groups".to_owned()),
                        Just("amr".to_owned()),
                        Just("alg".to_owned()),
                        Just("kid".to_owned()),
                        Just("kubernetes.io".to_owned()),
                        "\\PC{0,12}",
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(1_000), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_tokens_never_verify(
            text in "\\PC{0,300}",
            header in json(),
            claims in json(),
            signature in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let verifier = verifier(dir.path());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
            let built = format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(&signature));
            for token in [text.as_str(), built.as_str()] {
                if let Ok(inspected) = verifier.inspect(token) {
                    let _ = (inspected.issuer_id(), inspected.audiences());
                    let verified = runtime.block_on(inspected.verify(None, &BTreeMap::new(), now));
                    prop_assert!(verified.is_err(), "a token nobody signed verified: {token}");
                }
            }
        }
    }
}
