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
