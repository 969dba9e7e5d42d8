//! `[identity]` and `[[identity.issuers]]`: the OIDC issuers whose tokens prove who a person or a
//! pipeline is, and the verifier's clocks.

use super::*;
use crate::{
    adapters::oidc::{IssuerSettings, KeySource, MAX_FACTS, VerifierSettings},
    domain::identity::PrincipalKind,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIdentity {
    leeway_secs: u64,
    refetch_interval_secs: u64,
    fetch_timeout_ms: u64,
    issuers: Vec<RawIssuer>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        let defaults = VerifierSettings::default();
        Self {
            leeway_secs: defaults.leeway.as_secs(),
            refetch_interval_secs: defaults.refetch_interval.as_secs(),
            fetch_timeout_ms: u64::try_from(defaults.fetch_timeout.as_millis()).unwrap_or(5_000),
            issuers: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    id: String,
    issuer: String,
    audience: String,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default = "default_subject_claim")]
    subject_claim: String,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default = "default_mfa_methods")]
    mfa_methods: Vec<String>,
    #[serde(default)]
    facts: BTreeMap<String, String>,
    #[serde(default)]
    groups_prefix: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}

fn default_kind() -> String {
    "person".to_owned()
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}

fn default_mfa_methods() -> Vec<String> {
    vec!["mfa".to_owned()]
}

/// Most skew allowed on token times, and the bounds of the refetch interval and fetch timeout.
const MAX_LEEWAY_SECS: u64 = 300;
const REFETCH_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 1..=3600;
const FETCH_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// Signature algorithms an issuer may be pinned to: asymmetric only (an HMAC secret shared with
/// the broker could sign tokens for anyone, and `none` signs nothing).
fn algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    match name {
        "RS256" => Ok(RS256),
        "RS384" => Ok(RS384),
        "RS512" => Ok(RS512),
        "PS256" => Ok(PS256),
        "PS384" => Ok(PS384),
        "PS512" => Ok(PS512),
        "ES256" => Ok(ES256),
        "ES384" => Ok(ES384),
        "EdDSA" => Ok(EdDSA),
        other => Err(format!(
            "`{other}` is not allowed: one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (never none or HMAC)"
        )),
    }
}

fn is_fact_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn validate_identity(raw: RawIdentity, base: &Path, problems: &mut Vec<Problem>) -> VerifierSettings {
    if raw.leeway_secs > MAX_LEEWAY_SECS {
        problems.push(Problem::new(
            "identity.leeway_secs",
            format!("must be 0-{MAX_LEEWAY_SECS}: the clock skew allowed on token times"),
        ));
    }
    if !REFETCH_INTERVAL_SECS.contains(&raw.refetch_interval_secs) {
        problems.push(Problem::new(
            "identity.refetch_interval_secs",
            format!(
                "must be {}-{}",
                REFETCH_INTERVAL_SECS.start(),
                REFETCH_INTERVAL_SECS.end()
            ),
        ));
    }
    if !FETCH_TIMEOUT_MS.contains(&raw.fetch_timeout_ms) {
        problems.push(Problem::new(
            "identity.fetch_timeout_ms",
            format!("must be {}-{}", FETCH_TIMEOUT_MS.start(), FETCH_TIMEOUT_MS.end()),
        ));
    }
    let mut ids = BTreeMap::new();
    let mut by_iss = BTreeMap::new();
    let mut issuers = Vec::with_capacity(raw.issuers.len());
    for (index, issuer) in raw.issuers.into_iter().enumerate() {
        let key = |field: &str| format!("identity.issuers[{index}].{field}");
        if CallerId::parse(&issuer.id).is_err() {
            problems.push(Problem::new(
                key("id"),
                "must be 1-64 characters of letters, digits and -_.",
            ));
        }
        if let Some(first) = ids.insert(issuer.id.clone(), index) {
            problems.push(Problem::new(
                key("id"),
                format!("also the id of identity.issuers[{first}]"),
            ));
        }
        if !issuer.issuer.starts_with("https://") {
            problems.push(Problem::new(
                key("issuer"),
                "must be an https:// URL, exactly as tokens' `iss` spells it",
            ));
        }
        if let Some(first) = by_iss.insert(issuer.issuer.clone(), index) {
            problems.push(Problem::new(
                key("issuer"),
                format!("also the issuer of identity.issuers[{first}]"),
            ));
        }
        if issuer.audience.is_empty() || issuer.audience.len() > 256 {
            problems.push(Problem::new(key("audience"), "must be 1-256 characters"));
        }
        if issuer.algorithms.is_empty() {
            problems.push(Problem::new(key("algorithms"), "at least one algorithm is required"));
        }
        let algorithms: Vec<_> = issuer
            .algorithms
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                algorithm(name)
                    .map_err(|why| problems.push(Problem::new(format!("{}[{i}]", key("algorithms")), why)))
                    .ok()
            })
            .collect();
        let keys = match (issuer.jwks_uri, issuer.jwks_file) {
            (Some(_), Some(_)) => {
                problems.push(Problem::new(key("jwks_file"), "give jwks_uri or jwks_file, not both"));
                KeySource::Discovery
            }
            (Some(uri), None) => {
                if !uri.starts_with("https://") || uri.parse::<hyper::Uri>().is_err() {
                    problems.push(Problem::new(key("jwks_uri"), "must be an https:// URL"));
                }
                KeySource::Url(uri)
            }
            (None, Some(file)) => KeySource::File(base.join(file)),
            (None, None) => KeySource::Discovery,
        };
        let ca_file = issuer.ca_file.map(|file| base.join(file));
        if let Some(file) = &ca_file
            && let Err(why) = crate::tls::certificates(file)
        {
            problems.push(Problem::new(key("ca_file"), why));
        }
        let kind = match issuer.kind.as_str() {
            "person" => PrincipalKind::Person,
            "workload" => PrincipalKind::Workload,
            _ => {
                problems.push(Problem::new(key("kind"), "must be `person` or `workload`"));
                PrincipalKind::Person
            }
        };
        if issuer.subject_claim.is_empty() {
            problems.push(Problem::new(key("subject_claim"), "must name a claim"));
        }
        if issuer.facts.len() > MAX_FACTS {
            problems.push(Problem::new(key("facts"), format!("at most {MAX_FACTS} facts")));
        }
        for (fact, claim) in &issuer.facts {
            if !is_fact_name(fact) {
                problems.push(Problem::new(
                    format!("{}.{fact}", key("facts")),
                    "fact names are 1-64 letters, digits and _ (the rules read them as tags)",
                ));
            }
            if claim.is_empty() || claim.len() > 256 {
                problems.push(Problem::new(
                    format!("{}.{fact}", key("facts")),
                    "must name a claim, or a JSON pointer (`/kubernetes.io/namespace`)",
                ));
            }
        }
        issuers.push(IssuerSettings {
            id: issuer.id,
            issuer: issuer.issuer,
            audience: issuer.audience,
            algorithms,
            keys,
            ca_file,
            kind,
            subject_claim: issuer.subject_claim,
            groups_claim: issuer.groups_claim,
            mfa_methods: issuer.mfa_methods,
            facts: issuer.facts,
            groups_prefix: issuer.groups_prefix,
        });
    }
    // Groups are one namespace in the rules: at most one issuer may mint them unprefixed, and
    // prefixes must tell issuers apart.
    let mut prefixes = BTreeMap::new();
    for (index, issuer) in issuers
        .iter()
        .enumerate()
        .filter(|(_, issuer)| issuer.groups_claim.is_some())
    {
        if let Some(first) = prefixes.insert(issuer.groups_prefix.clone(), index) {
            problems.push(Problem::new(
                format!("identity.issuers[{index}].groups_prefix"),
                format!(
                    "identity.issuers[{first}] has the same groups_prefix (`{}`): give each issuer with a groups_claim its own, so one cannot mint groups another's people are trusted by",
                    issuer.groups_prefix
                ),
            ));
        }
    }
    VerifierSettings {
        issuers,
        leeway: Duration::from_secs(raw.leeway_secs),
        refetch_interval: Duration::from_secs(raw.refetch_interval_secs),
        fetch_timeout: Duration::from_millis(raw.fetch_timeout_ms),
    }
}
