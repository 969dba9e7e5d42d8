//! An access request as the broker accepts it: every field validated once, on receipt, into
//! types that later code trusts.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    ActionPattern, FieldViolation, ResourcePattern, Scope, Secret, Target, limits, scope::check_within_ceiling,
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
/// step (today: bearer tokens from the configuration); the broker only ever sees this type, so
/// stronger identities can replace the token check without touching the use cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: CallerId,
    /// Target ids this caller may request.
    pub targets: std::collections::BTreeSet<String>,
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

/// Longest free-text fields, so one grant record stays small.
const MAX_JUSTIFICATION_CHARS: usize = 2_000;
const MAX_TICKET_CHARS: usize = 128;
const MAX_PARTY_CHARS: usize = 256;
/// Enough for any real session; the 2,048-character policy limit bites long before.
const MAX_SCOPES: usize = 50;
const MAX_PATTERNS_PER_SCOPE: usize = 100;

/// The request fields exactly as received, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawAccessRequest {
    pub request_id: String,
    pub target: String,
    /// (actions, resources) of each scope.
    pub scopes: Vec<(Vec<String>, Vec<String>)>,
    /// `None` when the caller sent no duration; otherwise (seconds, nanoseconds).
    pub duration: Option<(i64, i32)>,
    pub justification: String,
    pub ticket: String,
    pub requester: String,
    pub grantee: String,
    pub mfa_serial: String,
    pub mfa_code: String,
}

/// A validated access request. Target-independent checks are done; the ones that need the target
/// (ceiling, its maximum duration, MFA) are in [`AccessRequest::check_against`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub request_id: Option<RequestId>,
    pub target: String,
    pub scopes: Vec<Scope>,
    pub duration_secs: u64,
    pub justification: String,
    pub ticket: String,
    pub requester: String,
    pub grantee: String,
    pub mfa: Option<MfaToken>,
}

fn check_text(field: &str, value: &str, min: usize, max: usize, violations: &mut Vec<FieldViolation>) {
    let len = value.chars().count();
    if len < min || len > max {
        let what = if min > 0 && len == 0 {
            "is required".to_owned()
        } else {
            format!("must be {min}-{max} characters, got {len}")
        };
        violations.push(FieldViolation::new(field, what));
    } else if value.chars().any(char::is_control) {
        violations.push(FieldViolation::new(field, "must not contain control characters"));
    }
}

impl AccessRequest {
    /// Validates every field, reporting all problems at once.
    pub fn validate(raw: RawAccessRequest) -> Result<Self, Vec<FieldViolation>> {
        let RawAccessRequest {
            request_id,
            target,
            scopes,
            duration,
            justification,
            ticket,
            requester,
            grantee,
            mfa_serial,
            mfa_code,
        } = raw;
        let mut violations = Vec::new();

        let request_id = if request_id.is_empty() {
            None
        } else {
            RequestId::parse(&request_id)
                .map_err(|why| violations.push(FieldViolation::new("request_id", why)))
                .ok()
        };
        if target.is_empty() {
            violations.push(FieldViolation::new(
                "target",
                "is required: name one of ListTargets' ids",
            ));
        }

        if scopes.is_empty() {
            violations.push(FieldViolation::new("scopes", "at least one scope is required"));
        } else if scopes.len() > MAX_SCOPES {
            violations.push(FieldViolation::new(
                "scopes",
                format!("at most {MAX_SCOPES} scopes, got {}", scopes.len()),
            ));
        }
        let mut parsed_scopes = Vec::with_capacity(scopes.len());
        for (i, (actions, resources)) in scopes.iter().enumerate().take(MAX_SCOPES) {
            let actions = parse_patterns(
                &format!("scopes[{i}].actions"),
                actions,
                ActionPattern::parse,
                &mut violations,
            );
            let resources = parse_patterns(
                &format!("scopes[{i}].resources"),
                resources,
                ResourcePattern::parse,
                &mut violations,
            );
            parsed_scopes.push(Scope { actions, resources });
        }

        let duration_secs = match duration {
            None => {
                violations.push(FieldViolation::new("duration", "is required"));
                0
            }
            Some((_, nanos)) if nanos != 0 => {
                violations.push(FieldViolation::new("duration", "must be a whole number of seconds"));
                0
            }
            Some((seconds, _)) => match u64::try_from(seconds) {
                Ok(seconds) if (limits::MIN_DURATION_SECS..=limits::MAX_DURATION_SECS).contains(&seconds) => seconds,
                _ => {
                    violations.push(FieldViolation::new(
                        "duration",
                        format!(
                            "must be {}-{} seconds (STS limits), got {seconds}",
                            limits::MIN_DURATION_SECS,
                            limits::MAX_DURATION_SECS
                        ),
                    ));
                    0
                }
            },
        };

        check_text(
            "justification",
            &justification,
            0,
            MAX_JUSTIFICATION_CHARS,
            &mut violations,
        );
        check_text("ticket", &ticket, 0, MAX_TICKET_CHARS, &mut violations);
        check_text("requester", &requester, 1, MAX_PARTY_CHARS, &mut violations);
        if !requester.is_empty() && limits::source_identity_for(&requester).is_none() {
            violations.push(FieldViolation::new(
                "requester",
                "must be at least 2 characters (it becomes the STS SourceIdentity)",
            ));
        }
        check_text("grantee", &grantee, 1, MAX_PARTY_CHARS, &mut violations);

        let mfa = match (mfa_serial.is_empty(), mfa_code.is_empty()) {
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
                let serial_ok = limits::check_mfa_serial(&mfa_serial)
                    .map_err(|why| violations.push(FieldViolation::new("mfa_serial", why)))
                    .is_ok();
                let code_ok = limits::check_mfa_code(&mfa_code)
                    .map_err(|why| violations.push(FieldViolation::new("mfa_code", why)))
                    .is_ok();
                (serial_ok && code_ok).then(|| MfaToken {
                    serial: mfa_serial,
                    code: Secret::new(mfa_code),
                })
            }
        };

        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(Self {
            request_id,
            target,
            scopes: parsed_scopes,
            duration_secs,
            justification,
            ticket,
            requester,
            grantee,
            mfa,
        })
    }

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

    /// A digest of everything that defines the request, so a retry with the same request id can
    /// be told apart from a different request reusing it. The MFA code is left out: a retry
    /// legitimately carries a fresh one.
    pub fn fingerprint(&self) -> String {
        #[derive(Serialize)]
        struct Canonical<'a> {
            target: &'a str,
            scopes: &'a [Scope],
            duration_secs: u64,
            justification: &'a str,
            ticket: &'a str,
            requester: &'a str,
            grantee: &'a str,
            mfa_serial: Option<&'a str>,
        }
        let canonical = Canonical {
            target: &self.target,
            scopes: &self.scopes,
            duration_secs: self.duration_secs,
            justification: &self.justification,
            ticket: &self.ticket,
            requester: &self.requester,
            grantee: &self.grantee,
            mfa_serial: self.mfa.as_ref().map(|mfa| mfa.serial.as_str()),
        };
        // Serialising plain strings and numbers cannot fail; an empty body would still be a
        // stable (if useless) fingerprint, never a panic.
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

fn parse_patterns<T>(
    field: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
    violations: &mut Vec<FieldViolation>,
) -> Vec<T> {
    if values.is_empty() {
        violations.push(FieldViolation::new(field, "at least one entry is required"));
    } else if values.len() > MAX_PATTERNS_PER_SCOPE {
        violations.push(FieldViolation::new(
            field,
            format!("at most {MAX_PATTERNS_PER_SCOPE} entries"),
        ));
        return Vec::new();
    }
    values
        .iter()
        .enumerate()
        .filter_map(|(i, value)| {
            parse(value)
                .map_err(|why| violations.push(FieldViolation::new(format!("{field}[{i}]"), why)))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawAccessRequest {
        RawAccessRequest {
            request_id: "req-1".into(),
            target: "prod-logs-read".into(),
            scopes: vec![(vec!["s3:GetObject".into()], vec!["arn:aws:s3:::acme-logs/*".into()])],
            duration: Some((3600, 0)),
            justification: "debug ingestion".into(),
            ticket: "INC-1".into(),
            requester: "alice@example.com".into(),
            grantee: "vendor-x".into(),
            ..RawAccessRequest::default()
        }
    }

    fn fields(violations: &[FieldViolation]) -> Vec<&str> {
        violations.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn valid_request_passes() {
        let request = AccessRequest::validate(raw()).unwrap();
        assert_eq!(request.duration_secs, 3600);
        assert_eq!(request.request_id.unwrap().as_str(), "req-1");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut bad = raw();
        bad.request_id = "has space".into();
        bad.scopes = vec![(vec!["GetObject".into()], vec![])];
        bad.duration = Some((60, 0));
        bad.requester = "a".into();
        bad.grantee = String::new();
        bad.mfa_serial = "arn:aws:iam::123456789012:mfa/alice".into();
        let violations = AccessRequest::validate(bad).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "request_id",
                "scopes[0].actions[0]",
                "scopes[0].resources",
                "duration",
                "requester",
                "grantee",
                "mfa_code"
            ]
        );
        assert!(violations[3].description.contains("900-43200"));
    }

    #[test]
    fn fingerprint_ignores_the_mfa_code_but_not_the_body() {
        let mut with_code = raw();
        with_code.mfa_serial = "arn:aws:iam::123456789012:mfa/alice".into();
        with_code.mfa_code = "123456".into();
        let mut other_code = with_code.clone();
        other_code.mfa_code = "654321".into();
        let a = AccessRequest::validate(with_code).unwrap();
        let b = AccessRequest::validate(other_code).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut longer = raw();
        longer.duration = Some((3601, 0));
        assert_ne!(
            AccessRequest::validate(raw()).unwrap().fingerprint(),
            AccessRequest::validate(longer).unwrap().fingerprint()
        );
    }
}
