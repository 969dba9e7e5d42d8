//! Scopes: IAM action patterns applied to resource ARN patterns. A scope is what a grant allows,
//! and a target's ceiling is a list of scopes that bounds every grant on it.

use serde::{Deserialize, Serialize};

use super::{FieldViolation, pattern};

/// Most characters one action pattern may have (the longest IAM action names are under 100).
const MAX_ACTION_LEN: usize = 128;
/// Most characters one resource pattern may have (IAM's own ARN limit).
const MAX_RESOURCE_LEN: usize = 2048;
/// Most wildcards one pattern may have. Real patterns use a handful; the bound keeps the
/// containment check's work small for any input.
pub const MAX_WILDCARDS: usize = 16;

fn check_wildcards(text: &str) -> Result<(), String> {
    let count = text.chars().filter(|c| matches!(c, '*' | '?')).count();
    if count > MAX_WILDCARDS {
        return Err(format!(
            "`{text}` has {count} wildcards; at most {MAX_WILDCARDS} are allowed"
        ));
    }
    Ok(())
}

/// An IAM action pattern such as `s3:GetObject`, `s3:Get*` or `*`. Matching is case-insensitive,
/// as in IAM; the original spelling is kept for the session policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ActionPattern(String);

impl ActionPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self(text.to_owned()));
        }
        if text.is_empty() || text.len() > MAX_ACTION_LEN {
            return Err(format!(
                "must be `*` or `service:action`, 1-{MAX_ACTION_LEN} characters"
            ));
        }
        let Some((service, action)) = text.split_once(':') else {
            return Err(format!(
                "`{text}` must be `service:action` (for example `s3:GetObject`) or `*`"
            ));
        };
        let service_ok = !service.is_empty()
            && service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*' || c == '?');
        let action_ok = !action.is_empty()
            && action
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?');
        if !service_ok || !action_ok {
            return Err(format!(
                "`{text}` is not an IAM action: expected letters, digits, `-` in the service, and `*` or `?` wildcards"
            ));
        }
        check_wildcards(text)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// Whether every action this pattern matches is also matched by `outer`.
    pub fn is_within(&self, outer: &ActionPattern) -> bool {
        pattern::is_contained(&self.folded(), &outer.folded())
    }

    /// The service prefix in lower case (`s3` for `s3:GetObject`), or `*` when the service part
    /// has a wildcard (`*`, `i*:PutRolePolicy`) and so could be any service.
    pub fn service(&self) -> String {
        match self.0.split_once(':') {
            Some((service, _)) if !service.contains(['*', '?']) => service.to_ascii_lowercase(),
            _ => "*".to_owned(),
        }
    }

    /// Whether every action this pattern can match only reads: its action name starts with a
    /// read-only verb spelled out in full, so `s3:Get*` reads but `s3:G*` (any action starting with
    /// G) and `s3:*` do not.
    pub fn is_read_only(&self) -> bool {
        const READ_VERBS: [&str; 7] = ["get", "list", "describe", "head", "batchget", "view", "lookup"];
        let Some((_, action)) = self.0.split_once(':') else {
            return false;
        };
        let action = action.to_ascii_lowercase();
        READ_VERBS.iter().any(|verb| action.starts_with(verb))
    }
}

impl TryFrom<String> for ActionPattern {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ActionPattern> for String {
    fn from(value: ActionPattern) -> Self {
        value.0
    }
}

/// A resource ARN pattern such as `arn:aws:s3:::acme-logs/*`, or `*`. Case-sensitive, as in IAM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourcePattern(String);

impl ResourcePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self(text.to_owned()));
        }
        if !text.starts_with("arn:") || text.split(':').count() < 6 {
            return Err(format!(
                "`{text}` must be `*` or an ARN `arn:partition:service:region:account:resource`"
            ));
        }
        if text.len() > MAX_RESOURCE_LEN {
            return Err(format!("must be at most {MAX_RESOURCE_LEN} characters"));
        }
        // Printable ASCII only, without the characters JSON would have to escape: the session
        // policy's size limit counts the escaped form, and no ARN needs them.
        if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic() || *c == '"' || *c == '\\') {
            return Err(format!(
                "`{text}` contains {bad:?}: only printable ASCII without quotes or backslashes"
            ));
        }
        check_wildcards(text)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_within(&self, outer: &ResourcePattern) -> bool {
        pattern::is_contained(&self.0, &outer.0)
    }
}

impl TryFrom<String> for ResourcePattern {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ResourcePattern> for String {
    fn from(value: ResourcePattern) -> Self {
        value.0
    }
}

/// Actions allowed on resources: one statement of a session policy or of a ceiling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub actions: Vec<ActionPattern>,
    pub resources: Vec<ResourcePattern>,
}

/// Checks that every requested scope lies inside the ceiling: each (action, resource) pair of a
/// scope must be covered by one ceiling statement, since IAM grants the cross product of a
/// statement's actions and resources. Returns one violation per uncovered pair, naming the fields
/// as the caller sent them (`scopes[i].actions[j]`).
///
/// Each pattern is compared with each ceiling statement once (not once per pair), so the work
/// grows with the number of patterns, which the session-policy size limit bounds.
pub fn check_within_ceiling(scopes: &[Scope], ceiling: &[Scope]) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        // covered_actions[s][j]: statement s allows action j; likewise for resources.
        let covered_actions: Vec<Vec<bool>> = ceiling
            .iter()
            .map(|statement| {
                scope
                    .actions
                    .iter()
                    .map(|a| statement.actions.iter().any(|outer| a.is_within(outer)))
                    .collect()
            })
            .collect();
        let covered_resources: Vec<Vec<bool>> = ceiling
            .iter()
            .map(|statement| {
                scope
                    .resources
                    .iter()
                    .map(|r| statement.resources.iter().any(|outer| r.is_within(outer)))
                    .collect()
            })
            .collect();
        for (j, action) in scope.actions.iter().enumerate() {
            for (k, resource) in scope.resources.iter().enumerate() {
                let covered = (0..ceiling.len()).any(|s| covered_actions[s][j] && covered_resources[s][k]);
                if !covered {
                    violations.push(FieldViolation::new(
                        format!("scopes[{i}].actions[{j}]"),
                        format!(
                            "`{}` on `{}` is outside the target's ceiling",
                            action.as_str(),
                            resource.as_str()
                        ),
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(actions: &[&str], resources: &[&str]) -> Scope {
        Scope {
            actions: actions.iter().map(|a| ActionPattern::parse(a).unwrap()).collect(),
            resources: resources.iter().map(|r| ResourcePattern::parse(r).unwrap()).collect(),
        }
    }

    #[test]
    fn actions_are_case_insensitive_and_wildcard_aware() {
        let ceiling = [scope(
            &["s3:Get*", "s3:ListBucket"],
            &["arn:aws:s3:::acme-logs", "arn:aws:s3:::acme-logs/*"],
        )];
        assert!(
            check_within_ceiling(&[scope(&["S3:GETOBJECT"], &["arn:aws:s3:::acme-logs/x/*"])], &ceiling).is_empty()
        );
        let violations = check_within_ceiling(&[scope(&["s3:*"], &["arn:aws:s3:::acme-logs/x"])], &ceiling);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "scopes[0].actions[0]");
        assert!(violations[0].description.contains("outside the target's ceiling"));
    }

    #[test]
    fn each_action_resource_pair_needs_one_covering_statement() {
        let ceiling = [
            scope(&["s3:GetObject"], &["arn:aws:s3:::a/*"]),
            scope(&["s3:PutObject"], &["arn:aws:s3:::b/*"]),
        ];
        // GetObject on b/* is covered by neither statement although each half appears somewhere.
        let violations = check_within_ceiling(
            &[scope(
                &["s3:GetObject", "s3:PutObject"],
                &["arn:aws:s3:::a/*", "arn:aws:s3:::b/*"],
            )],
            &ceiling,
        );
        let fields: Vec<_> = violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(fields.len(), 2, "{fields:?}");
        assert!(fields[0].1.contains("`s3:GetObject` on `arn:aws:s3:::b/*`"));
        assert!(fields[1].1.contains("`s3:PutObject` on `arn:aws:s3:::a/*`"));
    }

    #[test]
    fn parse_rejects_malformed_patterns() {
        assert!(
            ActionPattern::parse("GetObject")
                .unwrap_err()
                .contains("service:action")
        );
        assert!(
            ActionPattern::parse("s3:Get Object")
                .unwrap_err()
                .contains("not an IAM action")
        );
        assert!(ResourcePattern::parse("acme-logs/*").unwrap_err().contains("ARN"));
        assert!(
            ResourcePattern::parse("arn:aws:s3:::a\"b")
                .unwrap_err()
                .contains("printable ASCII")
        );
        assert!(ResourcePattern::parse("arn:aws:s3:::acme-logs/é").is_err());
        let many = format!("arn:aws:s3:::acme-logs/{}", "?".repeat(17));
        assert!(
            ResourcePattern::parse(&many)
                .unwrap_err()
                .contains("17 wildcards; at most 16")
        );
        assert!(ActionPattern::parse(&format!("s3:{}", "*?".repeat(9))).is_err());
    }

    #[test]
    fn read_only_needs_a_whole_read_verb() {
        assert!(ActionPattern::parse("s3:GetObject").unwrap().is_read_only());
        assert!(ActionPattern::parse("s3:Get*").unwrap().is_read_only());
        assert!(ActionPattern::parse("ec2:Describe*").unwrap().is_read_only());
        assert!(!ActionPattern::parse("s3:G*").unwrap().is_read_only());
        assert!(!ActionPattern::parse("s3:*").unwrap().is_read_only());
        assert!(!ActionPattern::parse("*").unwrap().is_read_only());
        assert!(!ActionPattern::parse("s3:PutObject").unwrap().is_read_only());
    }
}
