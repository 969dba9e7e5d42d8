//! The inline session policy: exactly the requested scopes, each statement limited to the grant
//! window, minified, within STS's size and character limits.

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Scope, limits};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyDocument<'a> {
    version: &'static str,
    statement: Vec<Statement<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Statement<'a> {
    effect: &'static str,
    action: Vec<&'a str>,
    resource: Vec<&'a str>,
    condition: Condition<'a>,
}

#[derive(Serialize)]
struct Condition<'a> {
    #[serde(rename = "DateLessThan")]
    date_less_than: CurrentTime<'a>,
}

#[derive(Serialize)]
struct CurrentTime<'a> {
    #[serde(rename = "aws:CurrentTime")]
    current_time: &'a str,
}

/// Formats a time as IAM and the grant record expect: RFC 3339, UTC, whole seconds.
pub fn rfc3339_utc(at: OffsetDateTime) -> String {
    let whole = at.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(at);
    whole
        .format(&Rfc3339)
        .unwrap_or_else(|_| whole.unix_timestamp().to_string())
}

/// Builds the minified session policy for `scopes`, every statement conditioned on
/// `aws:CurrentTime < grant_end`, so the credentials stop working when the grant ends even though
/// STS never issues sessions shorter than 15 minutes.
///
/// Errors name the size or character limit the result would break.
pub fn build_session_policy(scopes: &[Scope], grant_end: OffsetDateTime) -> Result<String, String> {
    let end = rfc3339_utc(grant_end);
    let document = PolicyDocument {
        version: "2012-10-17",
        statement: scopes
            .iter()
            .map(|scope| Statement {
                effect: "Allow",
                action: scope.actions.iter().map(|a| a.as_str()).collect(),
                resource: scope.resources.iter().map(|r| r.as_str()).collect(),
                condition: Condition {
                    date_less_than: CurrentTime { current_time: &end },
                },
            })
            .collect(),
    };
    let policy =
        serde_json::to_string(&document).map_err(|error| format!("cannot encode the session policy: {error}"))?;
    limits::check_session_policy(&policy)?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActionPattern, ResourcePattern};
    use time::macros::datetime;

    #[test]
    fn policy_is_exactly_the_scopes_with_the_time_condition() {
        let scopes = [Scope {
            actions: vec![ActionPattern::parse("s3:GetObject").unwrap()],
            resources: vec![ResourcePattern::parse("arn:aws:s3:::acme-logs/vendor-x/*").unwrap()],
        }];
        let policy = build_session_policy(&scopes, datetime!(2026-11-28 10:00:00.75 UTC)).unwrap();
        assert_eq!(
            policy,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::acme-logs/vendor-x/*"],"Condition":{"DateLessThan":{"aws:CurrentTime":"2026-11-28T10:00:00Z"}}}]}"#
        );
    }

    #[test]
    fn oversized_policy_is_refused_with_its_size() {
        let resources = (0..40)
            .map(|i| {
                ResourcePattern::parse(&format!("arn:aws:s3:::bucket-with-a-long-name-{i:03}/some/prefix/*")).unwrap()
            })
            .collect();
        let scopes = [Scope {
            actions: vec![ActionPattern::parse("s3:GetObject").unwrap()],
            resources,
        }];
        let error = build_session_policy(&scopes, datetime!(2026-11-28 10:00 UTC)).unwrap_err();
        assert!(error.contains("STS allows at most 2048"), "{error}");
    }
}

/// Fuzzing on stable Rust: the scope parsers (actions, resource ARNs), the ceiling check and the
/// session policy built from what they accept, fed arbitrary text and text near the shapes they
/// accept. They must answer, never panic; what parses survives a round trip through the policy
/// JSON exactly; a scope is always within itself, and never within a ceiling it was refused by.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{ActionPattern, ResourcePattern, Scope, scope::check_within_ceiling};

    /// Text near what the parsers accept: ARN-like pieces and IAM wildcards among arbitrary
    /// characters.
    fn near_pattern() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("arn:aws:s3:::".to_owned()),
            Just("arn:aws:iam::123456789012:role/".to_owned()),
            Just("arn:aws-cn:ec2:eu-west-1:123456789012:instance/".to_owned()),
            Just("s3:".to_owned()),
            Just("ec2:Describe".to_owned()),
            Just("*".to_owned()),
            Just("?".to_owned()),
            Just("/".to_owned()),
            Just(":".to_owned()),
            Just("${aws:username}".to_owned()),
            "[a-zA-Z0-9._-]{0,8}",
            any::<String>().prop_map(|text| text.chars().take(4).collect()),
        ];
        proptest::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(1_000), ..ProptestConfig::default() })]

        #[test]
        fn scope_text_is_answered_and_what_parses_builds_a_policy_that_says_it(
            actions in proptest::collection::vec(prop_oneof![near_pattern(), any::<String>()], 1..4),
            resources in proptest::collection::vec(prop_oneof![near_pattern(), any::<String>()], 1..4),
            ceiling_actions in proptest::collection::vec(near_pattern(), 1..3),
            ceiling_resources in proptest::collection::vec(near_pattern(), 1..3),
        ) {
            // Every text is answered; one known-good pattern each keeps the scope non-empty.
            let actions: Vec<ActionPattern> = std::iter::once("s3:GetObject")
                .chain(actions.iter().map(String::as_str))
                .filter_map(|a| ActionPattern::parse(a).ok())
                .collect();
            let resources: Vec<ResourcePattern> = std::iter::once("arn:aws:s3:::bucket/*")
                .chain(resources.iter().map(String::as_str))
                .filter_map(|r| ResourcePattern::parse(r).ok())
                .collect();
            let scope = Scope { actions, resources };
            let end = time::macros::datetime!(2026-12-07 12:00 UTC);
            let policy = build_session_policy(std::slice::from_ref(&scope), end).unwrap();
            let document: serde_json::Value = serde_json::from_str(&policy).unwrap();
            let statement = &document["Statement"][0];
            for (i, action) in scope.actions.iter().enumerate() {
                prop_assert_eq!(statement["Action"][i].as_str(), Some(action.as_str()));
            }
            for (i, resource) in scope.resources.iter().enumerate() {
                prop_assert_eq!(statement["Resource"][i].as_str(), Some(resource.as_str()));
            }
            prop_assert_eq!(statement["Condition"]["DateLessThan"]["aws:CurrentTime"].as_str(), Some("2026-12-07T12:00:00Z"));
            // A scope is within itself; against an arbitrary ceiling the check answers, and
            // each refusal names a field of the scope.
            prop_assert!(check_within_ceiling(std::slice::from_ref(&scope), std::slice::from_ref(&scope)).is_empty());
            let ceiling = Scope {
                actions: ceiling_actions.iter().filter_map(|a| ActionPattern::parse(a).ok()).collect(),
                resources: ceiling_resources.iter().filter_map(|r| ResourcePattern::parse(r).ok()).collect(),
            };
            for violation in check_within_ceiling(std::slice::from_ref(&scope), std::slice::from_ref(&ceiling)) {
                prop_assert!(violation.field.starts_with("scopes[0]"), "{}", violation.field);
            }
        }
    }
}
