//! An access request as the broker accepts it: every field validated once, on receipt, into
//! types that later code trusts.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    ActionPattern, FieldViolation, ResourcePattern, Scope, Secret, Target, echo,
    iam::{ActionFacts, Catalog},
    limits,
    scope::check_within_ceiling,
};

/// The authenticated calling system (a vendor portal, a pipeline). Grants belong to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerId(String);

impl CallerId {
    /// Caller ids come from the operator's configuration: letters, digits and `-_.`, 1-64 chars.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 64 {
            return Err("must be 1-64 characters".to_owned());
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
        {
            return Err(format!("contains {bad:?}; allowed: letters, digits and -_."));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CallerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated calling system and what it may do. Built by the transport's authentication
/// step (a client certificate, a bearer token, an identity token, from the configuration); the
/// broker only ever sees this type. What it may do is decided in one place,
/// [`super::access`], from its `targets` and `powers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: CallerId,
    /// Target ids this caller may request.
    pub targets: std::collections::BTreeSet<String>,
    /// What else it may do: relay approvers (for which targets), audit, revoke, administer.
    pub powers: super::access::Powers,
    /// The identity tokens it may present for people and for itself.
    pub identity: CallerIdentity,
    /// Whether it may name people without their verified token (recorded as asserted). Off by
    /// default: a caller then names only itself, or a person whose token it forwards.
    pub assert_people: bool,
    /// How much it may take: request rates and caps on grants held at once.
    pub limits: super::quota::Limits,
    /// The identity token this call carried, verified (per call: set by the transport).
    pub call_token: Option<std::sync::Arc<super::identity::VerifiedIdentity>>,
}

/// Which identity tokens a caller may present, and for which audience.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerIdentity {
    /// Configured issuer ids whose tokens it may forward or present.
    pub issuers: std::collections::BTreeSet<String>,
    /// The audience its tokens must carry, instead of the issuer's.
    pub audience: Option<String>,
    /// Every call must carry a verified token (a pipeline proving which job it is).
    pub required: bool,
    /// Claims (a name or a JSON pointer) its tokens must carry with these values: what makes a
    /// platform's token this caller's and not any job's on the platform (`repository_owner_id`).
    pub claims: std::collections::BTreeMap<String, String>,
}

impl Caller {
    /// Whether it may read grants other callers asked for (an auditor or admin caller).
    pub fn reads_every_grant(&self) -> bool {
        self.powers.audit || self.powers.admin
    }
}

impl Caller {
    pub fn may_request(&self, target: &str) -> bool {
        self.targets.contains(target)
    }
}

/// A client-chosen idempotency key: 1-128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 128 {
            return Err(format!("must be 1-128 characters, got {}", text.len()));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
        {
            return Err(format!("contains {bad:?}; allowed: letters, digits and ._:-"));
        }
        Ok(Self(text.to_owned()))
    }

    /// An optional request id as a request carries it: empty is none; anything else must parse,
    /// or is a violation of `request_id`.
    pub fn optional(text: &str, violations: &mut Vec<FieldViolation>) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        Self::parse(text)
            .map_err(|why| violations.push(FieldViolation::new("request_id", why)))
            .ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An MFA device and its current code, passed to STS as SerialNumber and TokenCode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaToken {
    pub serial: String,
    /// One-time, but still never stored or logged.
    pub code: Secret,
}

impl MfaToken {
    /// The MFA fields of a request: both empty is no MFA; one without the other, or either
    /// malformed, is a violation (pushed onto `violations`).
    pub fn parse(serial: String, code: Secret, violations: &mut Vec<FieldViolation>) -> Option<Self> {
        match (serial.is_empty(), code.expose().is_empty()) {
            (true, true) => None,
            (false, true) => {
                violations.push(FieldViolation::new("mfa_code", "is required when mfa_serial is set"));
                None
            }
            (true, false) => {
                violations.push(FieldViolation::new("mfa_serial", "is required when mfa_code is set"));
                None
            }
            (false, false) => {
                let serial_ok = limits::check_mfa_serial(&serial)
                    .map_err(|why| violations.push(FieldViolation::new("mfa_serial", why)))
                    .is_ok();
                let code_ok = limits::check_mfa_code(code.expose())
                    .map_err(|why| violations.push(FieldViolation::new("mfa_code", why)))
                    .is_ok();
                (serial_ok && code_ok).then_some(Self { serial, code })
            }
        }
    }
}

/// A required duration sent as (seconds, nanoseconds): a whole number of seconds within `range`
/// (`why` says where the range comes from, for the message).
pub fn whole_seconds(
    field: &str,
    value: Option<(i64, i32)>,
    range: std::ops::RangeInclusive<u64>,
    why: &str,
) -> Result<u64, FieldViolation> {
    match value {
        None => Err(FieldViolation::new(field, "is required")),
        Some((_, nanos)) if nanos != 0 => Err(FieldViolation::new(field, "must be a whole number of seconds")),
        Some((seconds, _)) => match u64::try_from(seconds) {
            Ok(secs) if range.contains(&secs) => Ok(secs),
            _ => Err(FieldViolation::new(
                field,
                format!("must be {}-{} seconds{why}, got {seconds}", range.start(), range.end()),
            )),
        },
    }
}

/// Free text a caller sends besides a request (a cancellation's reason): at most `max`
/// characters, no control or invisible format characters.
pub fn free_text(field: &str, value: String, max: usize) -> Result<String, FieldViolation> {
    let mut check = BoundsCheck::default();
    check.text(field, &value, false, max);
    let mut violations = check.exceeded;
    check_text(field, &value, &mut violations);
    match violations.pop() {
        Some(violation) => Err(violation),
        None => Ok(value),
    }
}

/// Bounds on every field of a request, checked before anything else is done with it (so no input
/// makes the broker work hard or echo much), and documented in docs/api.md and the proto.
pub mod bounds {
    pub const REQUEST_ID_CHARS: usize = 128;
    pub const TARGET_CHARS: usize = 64;
    pub const REQUESTER_CHARS: usize = 256;
    pub const GRANTEE_CHARS: usize = 256;
    pub const JUSTIFICATION_CHARS: usize = 2_000;
    pub const TICKET_CHARS: usize = 128;
    pub const MFA_SERIAL_CHARS: usize = 256;
    pub const MFA_CODE_CHARS: usize = 6;
    /// A statement costs over 100 characters of the 2,048-character session policy: 16 is more
    /// than can ever fit.
    pub const SCOPES: usize = 16;
    pub const ACTIONS_PER_SCOPE: usize = 100;
    pub const RESOURCES_PER_SCOPE: usize = 100;
    pub const ACTION_CHARS: usize = 128;
    pub const RESOURCE_CHARS: usize = 2_048;
    /// Every pattern appears verbatim in the session policy, which STS caps at 2,048 characters.
    pub const ALL_PATTERN_CHARS: usize = crate::domain::limits::MAX_SESSION_POLICY_CHARS;
}

/// A validated access request. Target-independent checks are done; the ones that need the target
/// (ceiling, its maximum duration, MFA) are in [`AccessRequest::check_against`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub request_id: Option<RequestId>,
    pub target: String,
    pub scopes: Vec<Scope>,
    pub duration_secs: u64,
    /// Scheduled access: the window starts then (or at approval, if later).
    pub start: Option<OffsetDateTime>,
    /// Break-glass: approved at once if a rule permits it, reviewed after the fact.
    pub break_glass: bool,
    pub justification: String,
    pub ticket: String,
    /// Who asks, as sent (empty: the call's identity token says).
    pub requester: String,
    pub grantee: String,
    pub mfa: Option<MfaToken>,
}

/// Furthest ahead access may be scheduled.
pub const MAX_SCHEDULE_AHEAD: time::Duration = time::Duration::days(30);

/// Whether `text` holds an invisible format character (see [`is_invisible_format`]).
pub fn has_invisible_format(text: &str) -> bool {
    text.chars().any(is_invisible_format)
}

/// Unicode format characters (general category Cf): invisible, and the bidirectional ones
/// reorder what a reader sees, so an audit line could be made to read as something else.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}' | '\u{0890}'..='\u{0891}'
        | '\u{08E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// Problems found while checking bounds: a missing value is reported with everything else, a
/// value over its bound stops validation before anything else is done with the request.
#[derive(Default)]
pub struct BoundsCheck {
    /// Required fields left empty: reported with everything else.
    pub missing: Vec<FieldViolation>,
    /// Values over their bound: these alone are reported.
    pub exceeded: Vec<FieldViolation>,
}

impl BoundsCheck {
    pub fn text(&mut self, field: &str, value: &str, required: bool, max: usize) {
        let len = value.chars().count();
        if required && len == 0 {
            self.missing.push(FieldViolation::new(field, "is required"));
        } else if len > max {
            self.exceeded.push(FieldViolation::new(
                field,
                format!("must be at most {max} characters, got {len}"),
            ));
        }
    }
}

/// Free text that ends up in the audit trail: no control or invisible format characters.
pub fn check_text(field: &str, value: &str, violations: &mut Vec<FieldViolation>) {
    if let Some(bad) = value.chars().find(|c| c.is_control() || is_invisible_format(*c)) {
        violations.push(FieldViolation::new(
            field,
            format!(
                "must not contain control or invisible formatting characters (found U+{:04X}): they could make the audit trail read differently from what was sent",
                u32::from(bad)
            ),
        ));
    }
}

/// Counts and lengths of the scopes, each as (actions, resources), before any pattern is parsed.
pub fn check_scope_bounds(scopes: &[(&[String], &[String])], check: &mut BoundsCheck) {
    if scopes.is_empty() {
        check
            .missing
            .push(FieldViolation::new("scopes", "at least one scope is required"));
    } else if scopes.len() > bounds::SCOPES {
        check.exceeded.push(FieldViolation::new(
            "scopes",
            format!("at most {} scopes, got {}", bounds::SCOPES, scopes.len()),
        ));
        return;
    }
    let mut total = 0;
    for (i, &(actions, resources)) in scopes.iter().enumerate() {
        for (list, name, max_entries, max_chars) in [
            (actions, "actions", bounds::ACTIONS_PER_SCOPE, bounds::ACTION_CHARS),
            (
                resources,
                "resources",
                bounds::RESOURCES_PER_SCOPE,
                bounds::RESOURCE_CHARS,
            ),
        ] {
            let field = format!("scopes[{i}].{name}");
            if list.is_empty() {
                check
                    .missing
                    .push(FieldViolation::new(&field, "at least one entry is required"));
            } else if list.len() > max_entries {
                check.exceeded.push(FieldViolation::new(
                    &field,
                    format!("at most {max_entries} entries, got {}", list.len()),
                ));
                continue;
            }
            for (j, value) in list.iter().enumerate() {
                total += value.chars().count();
                check.text(&format!("{field}[{j}]"), value, true, max_chars);
            }
        }
    }
    if total > bounds::ALL_PATTERN_CHARS {
        check.exceeded.push(FieldViolation::new(
            "scopes",
            format!(
                "the actions and resources add up to {total} characters; the session policy that holds them may have at most {}",
                bounds::ALL_PATTERN_CHARS
            ),
        ));
    }
}

impl AccessRequest {
    /// The checks that need the target: duration within its maximum, MFA when it demands it,
    /// every scope inside its ceiling.
    pub fn check_against(&self, target: &Target, max_duration_secs: u64) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        if self.duration_secs > max_duration_secs {
            violations.push(FieldViolation::new(
                "duration",
                format!(
                    "{} seconds exceeds target `{}`'s maximum of {max_duration_secs} seconds",
                    self.duration_secs, target.id
                ),
            ));
        }
        if target.mfa_required && self.mfa.is_none() {
            violations.push(FieldViolation::new(
                "mfa_code",
                format!("target `{}` requires MFA: send mfa_serial and mfa_code", target.id),
            ));
        }
        violations.extend(check_within_ceiling(&self.scopes, &target.ceiling));
        violations
    }

    /// A scheduled start must be ahead (a minute of clock skew is forgiven), and at most
    /// [`MAX_SCHEDULE_AHEAD`] away.
    pub fn check_start(&self, now: OffsetDateTime) -> Vec<FieldViolation> {
        match self.start {
            Some(start) if start < now - time::Duration::minutes(1) => vec![FieldViolation::new(
                "start_time",
                format!(
                    "{} is in the past; leave it unset to start as soon as approved",
                    super::policy::rfc3339_utc(start)
                ),
            )],
            Some(start) if start > now + MAX_SCHEDULE_AHEAD => vec![FieldViolation::new(
                "start_time",
                format!("{} is more than 30 days ahead", super::policy::rfc3339_utc(start)),
            )],
            _ => Vec::new(),
        }
    }

    /// Action patterns that match no action the catalog knows, unless the target allows them:
    /// usually a typo (`s3:GetObjcet`), which would make a grant that allows nothing.
    pub fn check_known_actions(&self, target: &Target, facts: &ActionFacts<'_>) -> Vec<FieldViolation> {
        if target.allow_unknown_actions {
            return Vec::new();
        }
        facts
            .unknown
            .iter()
            .filter_map(|&(i, j)| {
                let action = self.scopes.get(i)?.actions.get(j)?;
                Some(FieldViolation::new(
                    format!("scopes[{i}].actions[{j}]"),
                    format!(
                        "{} matches no IAM action the broker knows ({}): check its spelling; target `{}` does not allow unknown actions",
                        echo(action.as_str()),
                        Catalog::builtin().source(),
                        target.id
                    ),
                ))
            })
            .collect()
    }

    /// A digest of everything that defines the request, so a retry with the same request id can
    /// be told apart from a different request reusing it. The MFA code is left out: a retry
    /// legitimately carries a fresh one.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_body().as_bytes()))
    }

    /// The request body as compact JSON, fields in a fixed order. Written out by hand, so it
    /// cannot fail. Stored fingerprints outlive a release (a retry after an upgrade must match the
    /// request made before it), so these bytes are frozen: a test pins them.
    fn canonical_body(&self) -> String {
        fn string(text: &str) -> String {
            serde_json::Value::from(text).to_string()
        }
        fn strings<'a>(items: impl Iterator<Item = &'a str>) -> String {
            format!("[{}]", items.map(string).collect::<Vec<_>>().join(","))
        }
        let scopes = self
            .scopes
            .iter()
            .map(|scope| {
                format!(
                    r#"{{"actions":{},"resources":{}}}"#,
                    strings(scope.actions.iter().map(ActionPattern::as_str)),
                    strings(scope.resources.iter().map(ResourcePattern::as_str))
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        // A scheduled start is part of the body, added only when set: bodies without one hash as
        // they always have.
        let start = self
            .start
            .map(|start| format!(r#","start":{}"#, start.unix_timestamp_nanos()))
            .unwrap_or_default()
            + if self.break_glass { r#","break_glass":true"# } else { "" };
        format!(
            r#"{{"target":{},"scopes":[{scopes}],"duration_secs":{},"justification":{},"ticket":{},"requester":{},"grantee":{},"mfa_serial":{}{start}}}"#,
            string(&self.target),
            self.duration_secs,
            string(&self.justification),
            string(&self.ticket),
            string(&self.requester),
            string(&self.grantee),
            self.mfa
                .as_ref()
                .map_or_else(|| "null".to_owned(), |mfa| string(&mfa.serial)),
        )
    }
}

/// The scopes' patterns, each as (actions, resources), parsed: what does not parse is a
/// violation named by its index, empty entries are left to the bounds check (which reports them).
pub fn parse_scopes(scopes: &[(&[String], &[String])], violations: &mut Vec<FieldViolation>) -> Vec<Scope> {
    scopes
        .iter()
        .enumerate()
        .map(|(i, &(actions, resources))| Scope {
            actions: parse_patterns(
                &format!("scopes[{i}].actions"),
                actions,
                ActionPattern::parse,
                violations,
            ),
            resources: parse_patterns(
                &format!("scopes[{i}].resources"),
                resources,
                ResourcePattern::parse,
                violations,
            ),
        })
        .collect()
}

fn parse_patterns<T>(
    field: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
    violations: &mut Vec<FieldViolation>,
) -> Vec<T> {
    values
        .iter()
        .enumerate()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(i, value)| {
            parse(value)
                .map_err(|why| violations.push(FieldViolation::new(format!("{field}[{i}]"), why)))
                .ok()
        })
        .collect()
}

/// A scheduled start sent as (unix seconds, nanoseconds), when it is a time at all.
pub fn start_time(seconds: i64, nanos: i32) -> Result<OffsetDateTime, FieldViolation> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| at.replace_nanosecond(u32::try_from(nanos).ok()?).ok())
        .ok_or_else(|| FieldViolation::new("start_time", "is not a valid time"))
}

/// The requester becomes the STS SourceIdentity, which needs at least 2 characters.
pub fn check_requester(requester: &str, violations: &mut Vec<FieldViolation>) {
    if !requester.is_empty() && limits::source_identity_for(requester).is_none() {
        violations.push(FieldViolation::new(
            "requester",
            "must be at least 2 characters (it becomes the STS SourceIdentity)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AccessRequest {
        AccessRequest {
            request_id: Some(RequestId::parse("req-1").unwrap()),
            target: "prod-logs-read".into(),
            scopes: vec![Scope {
                actions: vec![ActionPattern::parse("s3:GetObject").unwrap()],
                resources: vec![ResourcePattern::parse("arn:aws:s3:::acme-logs/*").unwrap()],
            }],
            duration_secs: 3600,
            start: None,
            break_glass: false,
            justification: "debug ingestion".into(),
            ticket: "INC-1".into(),
            requester: "alice@example.com".into(),
            grantee: "vendor-x".into(),
            mfa: None,
        }
    }

    fn mfa(code: &str) -> Option<MfaToken> {
        Some(MfaToken {
            serial: "arn:aws:iam::123456789012:mfa/alice".into(),
            code: Secret::new(code),
        })
    }

    #[test]
    fn debug_never_prints_the_mfa_code() {
        let with_code = AccessRequest {
            mfa: mfa("314159"),
            ..request()
        };
        let printed = format!("{with_code:?}");
        assert!(printed.contains("arn:aws:iam::123456789012:mfa/alice") && !printed.contains("314159"));
    }

    /// Fingerprints are stored with request ids and must match retries made after an upgrade:
    /// the canonical body and its digest are frozen from 0.1.0.
    #[test]
    fn the_canonical_body_and_fingerprint_are_frozen() {
        let tricky = AccessRequest {
            justification: "quotes \" and \\ and é and 😀".into(),
            mfa: mfa("123456"),
            ..request()
        };
        assert_eq!(
            tricky.canonical_body(),
            r#"{"target":"prod-logs-read","scopes":[{"actions":["s3:GetObject"],"resources":["arn:aws:s3:::acme-logs/*"]}],"duration_secs":3600,"justification":"quotes \" and \\ and é and 😀","ticket":"INC-1","requester":"alice@example.com","grantee":"vendor-x","mfa_serial":"arn:aws:iam::123456789012:mfa/alice"}"#
        );
        assert_eq!(
            tricky.fingerprint(),
            "33b57342055b45ae5709bc39e2970accf798c928b7f2e29cdb481a80cf25ebde"
        );
    }

    #[test]
    fn fingerprint_ignores_the_mfa_code_but_not_the_body() {
        let a = AccessRequest {
            mfa: mfa("123456"),
            ..request()
        };
        let b = AccessRequest {
            mfa: mfa("654321"),
            ..request()
        };
        assert_eq!(a.fingerprint(), b.fingerprint());
        let longer = AccessRequest {
            duration_secs: 3601,
            ..request()
        };
        assert_ne!(request().fingerprint(), longer.fingerprint());
    }
}
