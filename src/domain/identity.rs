//! Who the people and jobs named in a grant are, and how the broker knows: a token it verified
//! (an OIDC ID or access token of a person, a pipeline's workload token), or only the word of
//! the calling system. Every name a grant records (requester, approver, reviewer, revoker) carries
//! one of the two, so the ledger says what was proven and what was asserted.
//!
//! Verifying a token is the transport's job (signatures, keys, clocks); this module holds what a
//! verified token established and the rule for combining it with the name a request sends.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde::Serialize;
use time::OffsetDateTime;

use super::{FieldViolation, approval::Person, echo};

/// What a token's issuer vouches for: a person signing in, or a job on a platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Person,
    Workload,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Workload => "workload",
        }
    }
}

/// What a verified token proved about its subject, kept with the name it verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The configured issuer (its id in `[[identity.issuers]]`) whose key signed the token.
    pub issuer: String,
    pub kind: PrincipalKind,
    /// Whether the person authenticated with a second factor (`amr` held a configured method).
    pub mfa: bool,
    /// When the person last authenticated (`auth_time`), when the token says.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<OffsetDateTime>,
    /// Groups from the issuer's configured groups claim.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub groups: BTreeSet<String>,
    /// Facts from the issuer's configured claim mapping (`repository_id` -> `123`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

impl Verified {
    /// How long ago the person authenticated, in whole seconds, when the token says.
    pub fn auth_age_secs(&self, now: OffsetDateTime) -> Option<i64> {
        self.auth_time.map(|at| (now - at).whole_seconds().max(0))
    }
}

/// A token the transport verified for this call: whom it names and what it proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The subject, from the issuer's configured subject claim: a person id or a job's id.
    pub subject: Person,
    pub verified: Verified,
}

/// A name a grant records and how it was established (`verified` absent: only asserted by the
/// calling system). Serialised as `{"name": .., "proof": "verified", "issuer": .., ..}` or
/// `{"name": .., "proof": "asserted"}`, so a reader of the audit log never has to infer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub name: String,
    pub verified: Option<Verified>,
}

impl Serialize for Attribution {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            name: &'a str,
            proof: &'static str,
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            verified: Option<&'a Verified>,
        }
        Shown {
            name: &self.name,
            proof: if self.verified.is_some() {
                "verified"
            } else {
                "asserted"
            },
            verified: self.verified.as_ref(),
        }
        .serialize(serializer)
    }
}

impl Attribution {
    /// A name only the calling system vouches for.
    pub fn asserted(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verified: None,
        }
    }

    pub fn is_verified(&self) -> bool {
        self.verified.is_some()
    }
}

/// The person (or job) a call names, as sent, and the verified token it carried, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// The name the message sends (`requester`, `approver`, ...); may be left empty when a
    /// verified token says who it is.
    pub named: Option<Person>,
    pub token: Option<Arc<VerifiedIdentity>>,
}

impl From<Person> for Claimed {
    fn from(person: Person) -> Self {
        Self {
            named: Some(person),
            token: None,
        }
    }
}

impl From<Option<Person>> for Claimed {
    fn from(named: Option<Person>) -> Self {
        Self { named, token: None }
    }
}

/// Why a claimed name cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotProven {
    /// No name sent and no token to take one from.
    Missing(FieldViolation),
    /// The message names someone other than the token's subject.
    Mismatch { named: String, subject: String },
    /// The call names a person without a verified token, and the caller may not assert people.
    Unverified { named: String, reason: &'static str },
    /// A job's token where a person must act.
    NotAPerson { subject: String },
}

impl std::fmt::Display for NotProven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(violation) => write!(f, "{}: {}", violation.field, violation.description),
            Self::Mismatch { named, subject } => write!(
                f,
                "the request names {} but the verified identity token is {}'s",
                echo(named),
                echo(subject)
            ),
            Self::Unverified { named, reason } => write!(f, "{} is not verified: {reason}", echo(named)),
            Self::NotAPerson { subject } => write!(
                f,
                "{} is a workload's identity; only a verified person may do this",
                echo(subject)
            ),
        }
    }
}

/// What a caller may say about people without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssertionPolicy {
    /// The caller may name people it has not proven (recorded as asserted).
    pub may_assert_people: bool,
    /// This use requires a verified token whatever the caller may assert (a target's
    /// `requester_must_be_verified`).
    pub must_be_verified: bool,
    /// Only a person may act (approvals, denials, reviews, revocations in someone's name).
    pub person_only: bool,
}

impl Claimed {
    /// Whether the call names a person acting: a name sent, or a person's token (a job's token
    /// alone names nobody: the job acts as its caller).
    pub fn names_a_person(&self) -> bool {
        self.named.is_some()
            || self
                .token
                .as_ref()
                .is_some_and(|token| token.verified.kind == PrincipalKind::Person)
    }

    /// The person this claim is about: the token's subject, else the name sent.
    pub fn person(&self) -> Option<&Person> {
        self.token.as_ref().map(|token| &token.subject).or(self.named.as_ref())
    }

    /// The attribution a grant records for this claim, under `policy`, naming `field` in errors;
    /// `caller_id` may always name itself (a pipeline acting for itself) unless `policy` demands
    /// a verified token or a person.
    pub fn attribute(&self, field: &str, caller_id: &str, policy: AssertionPolicy) -> Result<Attribution, NotProven> {
        match (&self.named, &self.token) {
            (named, Some(token)) => {
                if let Some(named) = named
                    && named != &token.subject
                {
                    return Err(NotProven::Mismatch {
                        named: named.to_string(),
                        subject: token.subject.to_string(),
                    });
                }
                if policy.person_only && token.verified.kind != PrincipalKind::Person {
                    return Err(NotProven::NotAPerson {
                        subject: token.subject.to_string(),
                    });
                }
                Ok(Attribution {
                    name: token.subject.to_string(),
                    verified: Some(token.verified.clone()),
                })
            }
            (None, None) => Err(NotProven::Missing(FieldViolation::new(
                field,
                "required: name the person, or send their verified identity token",
            ))),
            (Some(named), None) => {
                let unverified = |reason| NotProven::Unverified {
                    named: named.to_string(),
                    reason,
                };
                if policy.must_be_verified {
                    return Err(unverified("this target requires a verified identity token"));
                }
                if policy.may_assert_people {
                    return Ok(Attribution::asserted(named.as_str()));
                }
                if policy.person_only {
                    return Err(unverified(
                        "acting in a person's name requires their verified identity token",
                    ));
                }
                if named.as_str() == caller_id {
                    return Ok(Attribution::asserted(named.as_str()));
                }
                Err(unverified(
                    "without a verified identity token a caller may name only itself",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> Person {
        Person::parse("p", name).unwrap()
    }

    fn token(subject: &str, kind: PrincipalKind) -> Arc<VerifiedIdentity> {
        Arc::new(VerifiedIdentity {
            subject: person(subject),
            verified: Verified {
                issuer: "corp".into(),
                kind,
                mfa: true,
                auth_time: None,
                groups: BTreeSet::new(),
                facts: BTreeMap::new(),
            },
        })
    }

    const STRICT: AssertionPolicy = AssertionPolicy {
        may_assert_people: false,
        must_be_verified: false,
        person_only: false,
    };

    #[test]
    fn a_token_names_the_person_and_the_message_may_only_agree() {
        let claim = Claimed {
            named: None,
            token: Some(token("alice", PrincipalKind::Person)),
        };
        let attribution = claim.attribute("requester", "portal", STRICT).unwrap();
        assert_eq!(attribution.name, "alice");
        assert_eq!(attribution.verified.unwrap().issuer, "corp");
        let mismatch = Claimed {
            named: Some(person("mallory")),
            token: Some(token("alice", PrincipalKind::Person)),
        };
        assert_eq!(
            mismatch.attribute("requester", "portal", STRICT),
            Err(NotProven::Mismatch {
                named: "mallory".into(),
                subject: "alice".into()
            })
        );
    }

    #[test]
    fn without_a_token_a_caller_names_only_itself_unless_it_may_assert() {
        let itself = Claimed::from(person("pipeline"));
        assert_eq!(
            itself.attribute("requester", "pipeline", STRICT),
            Ok(Attribution::asserted("pipeline"))
        );
        let other = Claimed::from(person("alice"));
        assert!(matches!(
            other.attribute("requester", "pipeline", STRICT),
            Err(NotProven::Unverified { .. })
        ));
        let lenient = AssertionPolicy {
            may_assert_people: true,
            ..STRICT
        };
        assert_eq!(
            other.attribute("requester", "pipeline", lenient),
            Ok(Attribution::asserted("alice"))
        );
        let target_demands = AssertionPolicy {
            must_be_verified: true,
            ..lenient
        };
        assert!(matches!(
            itself.attribute("requester", "pipeline", target_demands),
            Err(NotProven::Unverified { .. })
        ));
    }

    #[test]
    fn only_a_verified_person_decides() {
        let decide = AssertionPolicy {
            person_only: true,
            ..STRICT
        };
        let job = Claimed {
            named: None,
            token: Some(token("repo:acme/app", PrincipalKind::Workload)),
        };
        assert!(matches!(
            job.attribute("approver", "portal", decide),
            Err(NotProven::NotAPerson { .. })
        ));
        // Not even the caller's own name, without a token.
        assert!(matches!(
            Claimed::from(person("portal")).attribute("approver", "portal", decide),
            Err(NotProven::Unverified { .. })
        ));
        assert!(matches!(
            Claimed::default().attribute("approver", "portal", decide),
            Err(NotProven::Missing(_))
        ));
    }
}
