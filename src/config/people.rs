//! `[grants]`, `[[callers]]` and `[[approvers]]`: the calling systems and their powers, the
//! people who approve and their groups, and the limits on a grant's life.

use super::*;

/// A caller as configured: its id, the SHA-256 of its bearer token, the targets it may request.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    pub id: CallerId,
    /// The SHA-256 of its bearer token, when it has one.
    pub token_sha256: Option<[u8; 32]>,
    /// The identity its client certificate proves (`server.tls.client_identity`), when it has one.
    pub certificate_identity: Option<String>,
    pub targets: BTreeSet<String>,
    /// What else it may do: relay approvers, audit, revoke any grant, administer.
    pub powers: Powers,
    /// Whose identity tokens it may present, for which audience, and whether every call must
    /// carry one.
    pub identity: CallerIdentity,
    /// May name people it has not proven (recorded as asserted).
    pub assert_people: bool,
    /// `[limits]`, with this caller's own request rate and pending cap where it sets them.
    pub limits: crate::domain::quota::Limits,
}

impl CallerConfig {
    /// Whether a verified identity token alone identifies this caller (a pipeline with no
    /// certificate and no bearer token).
    pub fn authenticated_by_identity(&self, bearer_tokens: bool) -> bool {
        self.identity.required && self.certificate_identity.is_none() && !(bearer_tokens && self.token_sha256.is_some())
    }

    /// The authenticated caller this configuration describes, as the broker sees it.
    pub fn caller(&self) -> Caller {
        Caller {
            id: self.id.clone(),
            targets: self.targets.clone(),
            powers: self.powers.clone(),
            identity: self.identity.clone(),
            assert_people: self.assert_people,
            limits: self.limits,
            call_token: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGrants {
    pub(super) max_issuances_per_grant: u32,
    pub(super) pending_timeout_hours: u64,
}

impl Default for RawGrants {
    fn default() -> Self {
        Self {
            max_issuances_per_grant: BrokerSettings::default().max_issuances_per_grant,
            pending_timeout_hours: 24,
        }
    }
}

/// Longest a request may wait for approvals (a week).
pub(super) const MAX_PENDING_TIMEOUT_HOURS: u64 = 168;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprover {
    pub(super) person: String,
    #[serde(default)]
    pub(super) groups: Vec<String>,
    /// The identity issuer whose tokens prove this person (their configured groups apply only
    /// to those).
    #[serde(default)]
    pub(super) issuer: Option<String>,
}

/// Most STS calls one grant may be configured to make.
pub(super) const MAX_ISSUANCES_PER_GRANT: u32 = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    pub(super) id: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    certificate_identity: Option<String>,
    pub(super) targets: Vec<String>,
    #[serde(default)]
    act_for_approvers: RawRelay,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    auditor: bool,
    #[serde(default)]
    revoke: Option<String>,
    #[serde(default)]
    identity_issuers: Vec<String>,
    #[serde(default)]
    identity_audience: Option<String>,
    #[serde(default)]
    identity_required: bool,
    #[serde(default)]
    identity_claims: BTreeMap<String, String>,
    #[serde(default)]
    assert_people: bool,
    #[serde(default)]
    limits: RawCallerLimits,
}

/// A caller's own limits: what counts only its requests.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallerLimits {
    requests_per_minute: Option<u32>,
    pending_grants: Option<u32>,
}

/// `[limits]`: what every caller, person and grantee may take (docs/configuration.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    requests_per_minute: u32,
    requests_per_person_per_minute: u32,
    live_grants_per_grantee: u32,
    pending_grants: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        let limits = crate::domain::quota::Limits::default();
        Self {
            requests_per_minute: limits.requests_per_minute,
            requests_per_person_per_minute: limits.requests_per_person_per_minute,
            live_grants_per_grantee: limits.live_grants_per_grantee,
            pending_grants: limits.pending_grants,
        }
    }
}

fn limit_in_range(key: String, value: u32, problems: &mut Vec<Problem>) -> u32 {
    use crate::domain::quota::MAX_LIMIT;
    if !(1..=MAX_LIMIT).contains(&value) {
        problems.push(Problem::new(key, format!("must be 1-{MAX_LIMIT}")));
    }
    value
}

pub(super) fn validate_limits(raw: RawLimits, problems: &mut Vec<Problem>) -> crate::domain::quota::Limits {
    let mut check = |name: &str, value| limit_in_range(format!("limits.{name}"), value, problems);
    crate::domain::quota::Limits {
        requests_per_minute: check("requests_per_minute", raw.requests_per_minute),
        requests_per_person_per_minute: check("requests_per_person_per_minute", raw.requests_per_person_per_minute),
        live_grants_per_grantee: check("live_grants_per_grantee", raw.live_grants_per_grantee),
        pending_grants: check("pending_grants", raw.pending_grants),
    }
}

/// People who approve, their groups (which rules match with `principal in Group`), and the
/// issuer whose tokens prove each, where one is named.
pub(super) fn validate_approvers(
    raw: Vec<RawApprover>,
    identity: &crate::adapters::oidc::VerifierSettings,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<Person, BTreeSet<String>>, BTreeMap<Person, String>) {
    use crate::domain::identity::PrincipalKind;
    let person_issuers: Vec<&str> = identity
        .issuers
        .iter()
        .filter(|issuer| issuer.kind == PrincipalKind::Person)
        .map(|issuer| issuer.id.as_str())
        .collect();
    let mut approvers = BTreeMap::new();
    let mut issuers = BTreeMap::new();
    for (index, approver) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("approvers[{index}].{field}");
        let person = match Person::parse(&key("person"), &approver.person) {
            Ok(person) => person,
            Err(violation) => {
                problems.push(Problem::new(violation.field, violation.description));
                continue;
            }
        };
        for (i, group) in approver.groups.iter().enumerate() {
            let ok = !group.is_empty()
                && group.len() <= 64
                && group.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                problems.push(Problem::new(
                    format!("{}[{i}]", key("groups")),
                    "must be 1-64 characters of letters, digits and -_.",
                ));
            }
        }
        match &approver.issuer {
            Some(issuer) if !person_issuers.contains(&issuer.as_str()) => problems.push(Problem::new(
                key("issuer"),
                format!("no identity issuer of kind person has id `{issuer}`"),
            )),
            Some(issuer) => {
                issuers.insert(person.clone(), issuer.clone());
            }
            // With several people's issuers, another issuer's token could name this person and
            // claim their groups.
            None if person_issuers.len() > 1 => problems.push(Problem::new(
                key("issuer"),
                format!(
                    "several identity issuers vouch for people ({}): name the one whose tokens prove this person",
                    person_issuers.join(", ")
                ),
            )),
            None => {}
        }
        if approvers
            .insert(person.clone(), approver.groups.into_iter().collect())
            .is_some()
        {
            problems.push(Problem::new(key("person"), format!("`{person}` is listed twice")));
        }
    }
    (approvers, issuers)
}

/// Why `identity` could never be what a certificate proves under `kind`, if it could not.
fn identity_mismatch(identity: &str, kind: crate::tls::IdentityKind) -> Option<&'static str> {
    use crate::tls::IdentityKind;
    match kind {
        IdentityKind::Spiffe if !identity.starts_with("spiffe://") => {
            Some("must be a spiffe:// URI: server.tls.client_identity is spiffe")
        }
        IdentityKind::Dns if identity.chars().any(|c| c.is_ascii_uppercase()) => {
            Some("must be lower case: DNS names compare without case, and certificates' are read lower-cased")
        }
        _ => None,
    }
}

/// `act_for_approvers`: `true` (every target), `false`, or the target ids it relays for.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRelay {
    All(bool),
    Targets(Vec<String>),
}

impl Default for RawRelay {
    fn default() -> Self {
        Self::All(false)
    }
}

pub(super) fn validate_callers(
    raw: Vec<RawCaller>,
    limits: crate::domain::quota::Limits,
    targets: &[Target],
    server: &RawServer,
    tls: Option<&crate::tls::TlsSettings>,
    identity: &crate::adapters::oidc::VerifierSettings,
    problems: &mut Vec<Problem>,
) -> Vec<CallerConfig> {
    let mut token_only = BTreeMap::new();
    // Every caller's (issuer, audience) for the tokens it presents.
    let mut presented = Vec::new();
    let mutual = tls.is_some_and(crate::tls::TlsSettings::mutual);
    let mut identities = BTreeMap::new();
    let known: BTreeSet<&str> = targets.iter().map(|target| target.id.as_str()).collect();
    let mut ids = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    let mut callers = Vec::with_capacity(raw.len());
    for (index, caller) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("callers[{index}].{field}");
        let id = CallerId::parse(&caller.id)
            .map_err(|why| problems.push(Problem::new(key("id"), why)))
            .ok();
        if let Some(first) = ids.insert(caller.id.clone(), index) {
            problems.push(Problem::new(
                key("id"),
                format!("`{}` is also the id of callers[{first}]", caller.id),
            ));
        }
        let token_sha256 = caller.token_sha256.as_ref().and_then(|hex_digest| {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(hex_digest.to_ascii_lowercase(), &mut digest).is_err() {
                problems.push(Problem::new(
                    key("token_sha256"),
                    "must be 64 hex digits: the SHA-256 of the caller's token (`printf %s \"$TOKEN\" | sha256sum`)",
                ));
                return None;
            }
            if let Some(first) = hashes.insert(digest, index) {
                problems.push(Problem::new(
                    key("token_sha256"),
                    format!("same token as callers[{first}]"),
                ));
            }
            Some(digest)
        });
        if let Some(identity) = &caller.certificate_identity {
            if !mutual {
                problems.push(Problem::new(
                    key("certificate_identity"),
                    "needs mTLS: set server.tls with a client_ca_file",
                ));
            } else if identity.is_empty() || identity.len() > 1024 || identity.chars().any(char::is_control) {
                problems.push(Problem::new(
                    key("certificate_identity"),
                    "must be 1-1024 characters without control characters",
                ));
            } else if let Some(why) = tls.and_then(|tls| identity_mismatch(identity, tls.client_identity)) {
                problems.push(Problem::new(key("certificate_identity"), why));
            } else if let Some(first) = identities.insert(identity.clone(), index) {
                problems.push(Problem::new(
                    key("certificate_identity"),
                    format!("same identity as callers[{first}]"),
                ));
            }
        }
        for (i, issuer) in caller.identity_issuers.iter().enumerate() {
            if !identity.issuers.iter().any(|configured| &configured.id == issuer) {
                problems.push(Problem::new(
                    format!("{}[{i}]", key("identity_issuers")),
                    format!("no identity.issuers entry has id `{issuer}`"),
                ));
            }
        }
        if let Some(audience) = &caller.identity_audience
            && (audience.is_empty() || audience.len() > 256)
        {
            problems.push(Problem::new(key("identity_audience"), "must be 1-256 characters"));
        }
        if caller.identity_required && caller.identity_issuers.is_empty() {
            problems.push(Problem::new(
                key("identity_required"),
                "needs identity_issuers: the issuers whose tokens it presents",
            ));
        }
        let usable_token = token_sha256.is_some() && server.bearer_tokens;
        for issuer in &caller.identity_issuers {
            let audience = caller.identity_audience.clone().or_else(|| {
                identity
                    .issuers
                    .iter()
                    .find(|configured| &configured.id == issuer)
                    .map(|configured| configured.audience.clone())
            });
            presented.push(((Some(issuer.clone()), audience), index));
        }
        let by_identity = caller.identity_required && !usable_token && caller.certificate_identity.is_none();
        if by_identity {
            // The token alone says which caller this is: by its issuer and audience, which must
            // then name exactly one caller.
            // (None at all is reported above.)
            if caller.identity_issuers.len() > 1 {
                problems.push(Problem::new(
                    key("identity_issuers"),
                    "a caller that authenticates by its identity token alone names exactly one issuer",
                ));
            }
            let audience = caller.identity_audience.clone().or_else(|| {
                caller
                    .identity_issuers
                    .first()
                    .and_then(|id| identity.issuers.iter().find(|issuer| &issuer.id == id))
                    .map(|issuer| issuer.audience.clone())
            });
            if caller.identity_claims.is_empty() {
                problems.push(Problem::new(
                    key("identity_claims"),
                    "a caller its token alone identifies must say which tokens are its own (e.g. { repository_owner_id = \"42\" }): any job on the platform can get a token for any audience",
                ));
            }
            let binding = (caller.identity_issuers.first().cloned(), audience);
            if let Some(first) = token_only.insert(binding, index) {
                problems.push(Problem::new(
                    key("identity_audience"),
                    format!(
                        "callers[{first}] authenticates by the same issuer and audience: give each its own identity_audience"
                    ),
                ));
            }
        }
        if !usable_token && caller.certificate_identity.is_none() && !by_identity {
            problems.push(Problem::new(
                key("token_sha256"),
                if caller.token_sha256.is_some() {
                    "server.bearer_tokens is false: this caller needs a certificate_identity (or identity_required) to authenticate"
                } else {
                    "the caller needs a token_sha256, a certificate_identity or identity_required to authenticate"
                },
            ));
        }
        for (i, target) in caller.targets.iter().enumerate() {
            if !known.contains(target.as_str()) {
                problems.push(Problem::new(
                    format!("{}[{i}]", key("targets")),
                    format!("no target has id `{target}`"),
                ));
            }
        }
        let relay = match caller.act_for_approvers {
            RawRelay::All(false) => Relay::Never,
            RawRelay::All(true) => Relay::Every,
            RawRelay::Targets(relayed) => {
                if relayed.is_empty() {
                    problems.push(Problem::new(
                        key("act_for_approvers"),
                        "true, false, or the target ids it relays approvers for (at least one)",
                    ));
                }
                for (i, target) in relayed.iter().enumerate() {
                    if !known.contains(target.as_str()) {
                        problems.push(Problem::new(
                            format!("{}[{i}]", key("act_for_approvers")),
                            format!("no target has id `{target}`"),
                        ));
                    }
                }
                Relay::Targets(relayed.into_iter().collect())
            }
        };
        let revoke = match caller.revoke.as_deref() {
            None | Some("own") => Revoke::Own,
            Some("any") => Revoke::Any,
            Some(_) => {
                problems.push(Problem::new(
                    key("revoke"),
                    "`own` (the grants it requested; the default) or `any` (every caller's)",
                ));
                Revoke::Own
            }
        };
        if let Some(id) = id {
            callers.push(CallerConfig {
                id,
                token_sha256,
                certificate_identity: caller.certificate_identity,
                targets: caller.targets.into_iter().collect(),
                powers: Powers {
                    relay,
                    audit: caller.auditor,
                    revoke,
                    admin: caller.admin,
                },
                identity: CallerIdentity {
                    issuers: caller.identity_issuers.into_iter().collect(),
                    audience: caller.identity_audience,
                    required: caller.identity_required,
                    claims: caller.identity_claims,
                },
                assert_people: caller.assert_people,
                limits: crate::domain::quota::Limits {
                    requests_per_minute: caller
                        .limits
                        .requests_per_minute
                        .map_or(limits.requests_per_minute, |value| {
                            limit_in_range(key("limits.requests_per_minute"), value, problems)
                        }),
                    pending_grants: caller.limits.pending_grants.map_or(limits.pending_grants, |value| {
                        limit_in_range(key("limits.pending_grants"), value, problems)
                    }),
                    ..limits
                },
            });
        }
    }
    // A token that one caller may present must not alone identify another: a person's token
    // forwarded to a portal could otherwise be sent on its own, as the other caller.
    for (binding, index) in presented {
        if let Some(&bound) = token_only.get(&binding)
            && bound != index
        {
            problems.push(Problem::new(
                format!("callers[{index}].identity_audience"),
                format!(
                    "callers[{bound}] is identified by this issuer and audience alone: a token sent here could be sent as that caller; give one of them its own identity_audience"
                ),
            ));
        }
    }
    callers
}
