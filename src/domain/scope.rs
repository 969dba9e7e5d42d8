//! Scopes: IAM action patterns applied to resource ARN patterns. A scope is what a grant allows,
//! and a target's ceiling is a list of scopes that bounds every grant on it. This module owns
//! which patterns are accepted, whether a request lies inside a ceiling, re-checking patterns read
//! back from storage, and warning about ceilings that reach further than they look.

use serde::{Deserialize, Serialize};

use super::{FieldViolation, echo, pattern};

/// Most characters one action pattern may have (the longest IAM action names are under 100).
const MAX_ACTION_LEN: usize = 128;
/// Most characters one resource pattern may have (IAM's own ARN limit).
const MAX_RESOURCE_LEN: usize = 2048;
/// Most wildcards one pattern may have. Real patterns use a handful; the bound keeps the
/// containment check's work small for any input.
pub const MAX_WILDCARDS: usize = 16;

/// The characters of IAM's policy-variable syntax: `${aws:username}`, and the escapes `${*}`,
/// `${?}` and `${$}` that stand for a literal `*`, `?` or `$`.
const POLICY_VARIABLE_CHARS: [char; 3] = ['$', '{', '}'];

fn policy_variable_char(text: &str) -> Option<char> {
    text.chars().find(|c| POLICY_VARIABLE_CHARS.contains(c))
}

/// IAM substitutes policy variables when it evaluates a policy, from values the principal may
/// control (its user name, its tags, the request's tags), so a pattern holding one is not a fixed
/// set of strings and containment cannot reason about it.
fn check_no_policy_variables(text: &str) -> Result<(), String> {
    match policy_variable_char(text) {
        Some(c) => Err(format!(
            "{} contains `{c}`, which is not allowed: IAM substitutes policy variables such as \
             `${{aws:username}}` when it evaluates a policy, so the pattern's reach could not be checked \
             against the ceiling",
            echo(text),
        )),
        None => Ok(()),
    }
}

fn check_wildcards(text: &str) -> Result<(), String> {
    let count = text.chars().filter(|c| matches!(c, '*' | '?')).count();
    if count > MAX_WILDCARDS {
        return Err(format!(
            "{} has {count} wildcards; at most {MAX_WILDCARDS} are allowed",
            echo(text),
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
        check_no_policy_variables(text)?;
        let Some((service, action)) = text.split_once(':') else {
            return Err(format!(
                "{} must be `service:action` (for example `s3:GetObject`) or `*`",
                echo(text),
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
                "{} is not an IAM action: expected letters, digits, `-` in the service, and `*` or `?` wildcards",
                echo(text),
            ));
        }
        check_wildcards(text)?;
        Ok(Self(text.to_owned()))
    }

    /// Wraps an action pattern read back from the grant store, unchecked: records written by an
    /// earlier release may hold text today's `parse` refuses, and must still read back. Never
    /// trust the result for issuance without [`Scope::revalidate`].
    pub fn from_record(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// Whether every action this pattern matches is also matched by `outer`. Never for a pattern
    /// holding a policy variable, which `from_record` lets through unchecked.
    pub fn is_within(&self, outer: &ActionPattern) -> bool {
        policy_variable_char(&self.0).is_none() && pattern::is_contained(&self.folded(), &outer.folded())
    }

    /// The service prefix in lower case (`s3` for `s3:GetObject`), or `*` when the service part
    /// has a wildcard (`*`, `i*:PutRolePolicy`) and so could be any service.
    pub fn service(&self) -> String {
        match self.0.split_once(':') {
            Some((service, _)) if !service.contains(['*', '?']) => service.to_ascii_lowercase(),
            _ => "*".to_owned(),
        }
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
                "{} must be `*` or an ARN `arn:partition:service:region:account:resource`",
                echo(text),
            ));
        }
        if text.len() > MAX_RESOURCE_LEN {
            return Err(format!("must be at most {MAX_RESOURCE_LEN} characters"));
        }
        check_no_policy_variables(text)?;
        // Printable ASCII only, without the characters JSON would have to escape: the session
        // policy's size limit counts the escaped form, and no ARN needs them.
        if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic() || *c == '"' || *c == '\\') {
            return Err(format!(
                "{} contains {bad:?}: only printable ASCII without quotes or backslashes",
                echo(text),
            ));
        }
        check_wildcards(text)?;
        Ok(Self(text.to_owned()))
    }

    /// Wraps a resource pattern read back from the grant store, unchecked: records written by an
    /// earlier release may hold text today's `parse` refuses (such as `${`), and must still read
    /// back. Never trust the result for issuance without [`Scope::revalidate`].
    pub fn from_record(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether every resource this pattern matches is also matched by `outer`. Never for a
    /// pattern holding a policy variable, which `from_record` lets through unchecked.
    pub fn is_within(&self, outer: &ResourcePattern) -> bool {
        policy_variable_char(&self.0).is_none() && pattern::is_contained(&self.0, &outer.0)
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

impl Scope {
    /// Re-checks every pattern with today's `parse` (records come from storage, which is not
    /// trusted); each error names the pattern and why, e.g. "`resources[1]`: `...` ...".
    pub fn revalidate(&self) -> Result<(), Vec<String>> {
        let actions = self.actions.iter().enumerate().filter_map(|(i, action)| {
            ActionPattern::parse(action.as_str())
                .err()
                .map(|why| format!("actions[{i}]: {why}"))
        });
        let resources = self.resources.iter().enumerate().filter_map(|(i, resource)| {
            ResourcePattern::parse(resource.as_str())
                .err()
                .map(|why| format!("resources[{i}]: {why}"))
        });
        let errors: Vec<String> = actions.chain(resources).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
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
                            "{} on {} is outside the target's ceiling",
                            echo(action.as_str()),
                            echo(resource.as_str())
                        ),
                    ));
                }
            }
        }
    }
    violations
}

/// Names of the ARN segments before the resource part, by position.
const ARN_SEGMENTS: [&str; 5] = ["arn", "partition", "service", "region", "account"];
const ACCOUNT_SEGMENT: usize = 4;
/// What examples put where a ceiling has a wildcard: a resource of an account other than the
/// operator's, so the example shows reach they did not mean.
const SAMPLE_SEGMENTS: [&str; 5] = ["arn", "aws", "s3", "us-east-1", "999999999999"];
const SAMPLE_RESOURCE: &str = "other/x";

/// The segment at `index` with its wildcards replaced by plain characters, so the result is
/// matched by it; a segment that is only `*` gets a realistic value instead.
fn fill(segment: &str, index: usize) -> String {
    if segment == "*" {
        return SAMPLE_SEGMENTS.get(index).unwrap_or(&"x").to_string();
    }
    segment.replace(['*', '?'], "x")
}

/// A string `segments` matches only because the `*` ending segment `crossing` runs across `:`:
/// that `*` swallows the rest of another resource's ARN (another account's, in any region) and
/// the pattern resumes after it.
fn crossing_example(segments: &[&str], crossing: usize) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        parts.push(fill(segment, index));
        if index != crossing {
            continue;
        }
        for later in crossing + 1..ARN_SEGMENTS.len() {
            // The pattern's own service and empty segments (S3's region and account) keep the
            // example looking like a real ARN; the account is always someone else's.
            let own = segments.get(later).copied().unwrap_or_default();
            let keep_own = own.is_empty() || (later != ACCOUNT_SEGMENT && !own.contains(['*', '?']));
            parts.push(if keep_own { own.to_owned() } else { fill("*", later) });
        }
        parts.push(SAMPLE_RESOURCE.to_owned());
    }
    parts.join(":")
}

/// `segments` with its account replaced by someone else's.
fn other_account_example(segments: &[&str]) -> String {
    let parts: Vec<String> = segments
        .iter()
        .enumerate()
        .map(|(index, segment)| {
            if index == ACCOUNT_SEGMENT {
                fill("*", index)
            } else {
                fill(segment, index)
            }
        })
        .collect();
    parts.join(":")
}

fn resource_warnings(resource: &str) -> Vec<String> {
    let segments: Vec<&str> = resource.split(':').collect();
    let mut warnings = Vec::new();
    for (index, name) in ARN_SEGMENTS.iter().enumerate().skip(1) {
        let Some(segment) = segments.get(index) else {
            break;
        };
        // Before the resource part every segment is followed by `:` (or ends the pattern), so a
        // `*` that ends one is one IAM lets run across `:`.
        let ends_with_run = segment.ends_with('*');
        if index == ACCOUNT_SEGMENT && segment.contains('*') {
            let across = if ends_with_run {
                ", and as it ends the segment IAM also lets it run across `:`"
            } else {
                ""
            };
            warnings.push(format!(
                "`{resource}` reaches any account: the `*` in its account segment matches account IDs \
                 that are not yours{across} (for example `{}`)",
                other_account_example(&segments)
            ));
        } else if ends_with_run {
            warnings.push(format!(
                "`{resource}` reaches further than it looks: IAM lets the `*` ending its {name} segment \
                 run across `:` into the following segments, so it also covers other resources' ARNs \
                 (for example `{}`)",
                crossing_example(&segments, index)
            ));
        }
    }
    warnings
}

/// Ceilings that reach further than an operator probably means. `field` paths are relative to the
/// ceiling: `ceiling[0].resources[1]`, `ceiling[2].actions[0]`.
///
/// `is_write` says whether an action pattern may change something; resource `*` is only worth a
/// warning next to such actions, since reading everything is often what a ceiling means.
pub fn ceiling_warnings(ceiling: &[Scope], is_write: impl Fn(&ActionPattern) -> bool) -> Vec<FieldViolation> {
    let mut warnings = Vec::new();
    for (s, statement) in ceiling.iter().enumerate() {
        let writes: Vec<&ActionPattern> = statement.actions.iter().filter(|action| is_write(action)).collect();
        for (k, resource) in statement.resources.iter().enumerate() {
            let field = format!("ceiling[{s}].resources[{k}]");
            if resource.as_str() == "*" {
                if let Some(first) = writes.first() {
                    let names: Vec<String> = writes.iter().map(|action| format!("`{}`", action.as_str())).collect();
                    let service = match first.service().as_str() {
                        "*" => "any service's".to_owned(),
                        service => format!("any `{service}`"),
                    };
                    warnings.push(FieldViolation::new(
                        field,
                        format!(
                            "`*` is every resource in every account and region, so the role's own policies are \
                             the only limit on the write actions {} here (for example `{}` on {service} \
                             resource, not only the ones this target is for)",
                            names.join(", "),
                            first.as_str()
                        ),
                    ));
                }
                continue;
            }
            for description in resource_warnings(resource.as_str()) {
                warnings.push(FieldViolation::new(field.clone(), description));
            }
        }
    }
    warnings
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
        assert!(
            ResourcePattern::parse("arn:aws:s3:::acme-logs/é")
                .unwrap_err()
                .contains("contains 'é': only printable ASCII")
        );
        let many = format!("arn:aws:s3:::acme-logs/{}", "?".repeat(17));
        assert!(
            ResourcePattern::parse(&many)
                .unwrap_err()
                .contains("17 wildcards; at most 16")
        );
        assert!(
            ActionPattern::parse(&format!("s3:{}", "*?".repeat(9)))
                .unwrap_err()
                .contains("18 wildcards; at most 16")
        );
    }

    #[test]
    fn parse_refuses_policy_variables_and_says_why() {
        let refusals = [
            (
                ResourcePattern::parse("arn:aws:ec2:${aws:RequestTag/k:123456789012:instance/k}").err(),
                '$',
            ),
            (
                ResourcePattern::parse("arn:aws:s3:::acme-logs/${aws:username}/*").err(),
                '$',
            ),
            (ResourcePattern::parse("arn:aws:s3:::acme-logs/{x}/*").err(), '{'),
            (ResourcePattern::parse("arn:aws:s3:::acme-logs/x}/*").err(), '}'),
            (ActionPattern::parse("s3:${aws:username}").err(), '$'),
            (ActionPattern::parse("s3:Get{x}").err(), '{'),
        ];
        for (error, c) in refusals {
            let why = error.unwrap();
            assert!(why.contains(&format!("contains `{c}`")), "{why}");
            assert!(why.contains("policy variables"), "{why}");
            // The specific reason, not the generic charset complaint.
            assert!(
                !why.contains("printable ASCII") && !why.contains("not an IAM action"),
                "{why}"
            );
        }
    }

    #[test]
    fn records_read_back_unchecked_and_revalidate_names_each_bad_pattern() {
        let stored = Scope {
            actions: vec![
                ActionPattern::from_record("s3:GetObject".to_owned()),
                ActionPattern::from_record("s3:${x}".to_owned()),
            ],
            resources: vec![
                ResourcePattern::from_record("arn:aws:s3:::acme-logs/*".to_owned()),
                ResourcePattern::from_record("arn:aws:s3:::acme-logs/${aws:username}/*".to_owned()),
            ],
        };
        assert_eq!(stored.resources[1].as_str(), "arn:aws:s3:::acme-logs/${aws:username}/*");
        let errors = stored.revalidate().unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("actions[1]: `s3:${x}` contains `$`"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("resources[1]: `arn:aws:s3:::acme-logs/${aws:username}/*` contains `$`"),
            "{errors:?}"
        );
        assert_eq!(scope(&["s3:Get*"], &["arn:aws:s3:::acme-logs/*"]).revalidate(), Ok(()));
    }

    #[test]
    fn a_pattern_with_a_policy_variable_is_never_within_anything() {
        let resource = ResourcePattern::from_record("arn:aws:s3:::acme-logs/${aws:username}".to_owned());
        assert!(!resource.is_within(&ResourcePattern::parse("*").unwrap()));
        assert!(!resource.is_within(&resource));
        let action = ActionPattern::from_record("s3:Get${x}".to_owned());
        assert!(!action.is_within(&ActionPattern::parse("*").unwrap()));
        assert!(!action.is_within(&action));

        let stored = Scope {
            actions: vec![action],
            resources: vec![resource],
        };
        assert_eq!(check_within_ceiling(&[stored], &[scope(&["*"], &["*"])]).len(), 1);
    }

    #[test]
    fn containment_respects_arn_segments() {
        let ceiling = [scope(
            &["logs:GetLogEvents"],
            &["arn:aws:logs:us-east-1:123456789012:log-group:app-*-prod"],
        )];
        let stream = "arn:aws:logs:us-east-1:123456789012:log-group:app-x:log-stream:y-prod";
        assert_eq!(
            check_within_ceiling(&[scope(&["logs:GetLogEvents"], &[stream])], &ceiling).len(),
            1
        );
        let ceiling = [scope(&["ec2:StartInstances"], &["arn:aws:ec2:*:123456789012:*"])];
        let instances = scope(&["ec2:StartInstances"], &["arn:aws:ec2:*:123456789012:instance/*"]);
        assert!(check_within_ceiling(std::slice::from_ref(&instances), &ceiling).is_empty());
        assert!(check_within_ceiling(std::slice::from_ref(&instances), std::slice::from_ref(&instances)).is_empty());
    }

    /// A stand-in for the catalog's access levels (config.rs passes those).
    fn writes(action: &ActionPattern) -> bool {
        let name = action.as_str().to_ascii_lowercase();
        !(name.contains(":get") || name.contains(":describe") || name.contains(":list"))
    }

    /// The example a warning ends with, which must be something the resource really matches.
    fn example(description: &str) -> &str {
        description.rsplit('`').nth(1).unwrap()
    }

    #[test]
    fn segment_final_stars_before_the_resource_part_are_warned_about() {
        let cases = [
            (
                "arn:*:s3:::acme-logs/*",
                "partition",
                "arn:aws:s3:::other/x:s3:::acme-logs/x",
            ),
            (
                "arn:aws:*:us-east-1:123456789012:table/orders",
                "service",
                "arn:aws:s3:us-east-1:999999999999:other/x:us-east-1:123456789012:table/orders",
            ),
            (
                "arn:aws:ec2:*:123456789012:instance/*",
                "region",
                "arn:aws:ec2:us-east-1:999999999999:other/x:123456789012:instance/x",
            ),
            (
                "arn:aws:ec2:us-*:123456789012:instance/*",
                "region",
                "arn:aws:ec2:us-x:999999999999:other/x:123456789012:instance/x",
            ),
        ];
        for (resource, segment, expected) in cases {
            let warnings = ceiling_warnings(&[scope(&["s3:GetObject"], &[resource])], writes);
            assert_eq!(warnings.len(), 1, "{resource}: {warnings:?}");
            assert_eq!(warnings[0].field, "ceiling[0].resources[0]");
            let description = &warnings[0].description;
            assert!(
                description.contains(&format!("ending its {segment} segment")),
                "{description}"
            );
            assert!(description.contains("run across `:`"), "{description}");
            assert_eq!(example(description), expected);
            assert!(pattern::matches(resource, expected), "{resource} must match {expected}");
        }
    }

    #[test]
    fn a_star_in_the_account_is_any_account() {
        let ceiling = [
            scope(&["s3:GetObject"], &["arn:aws:s3:::acme-logs/*"]),
            scope(
                &["dynamodb:GetItem"],
                &[
                    "arn:aws:dynamodb:us-east-1:123456789012:table/a",
                    "arn:aws:dynamodb:us-east-1:*:table/orders",
                ],
            ),
        ];
        let warnings = ceiling_warnings(&ceiling, writes);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, "ceiling[1].resources[1]");
        let description = &warnings[0].description;
        assert!(description.contains("reaches any account"), "{description}");
        assert!(description.contains("run across `:`"), "{description}");
        assert_eq!(
            example(description),
            "arn:aws:dynamodb:us-east-1:999999999999:table/orders"
        );
        assert!(pattern::matches(
            "arn:aws:dynamodb:us-east-1:*:table/orders",
            example(description)
        ));
    }

    #[test]
    fn each_wide_segment_is_its_own_finding() {
        let resource = "arn:*:s3:*:*:acme";
        let warnings = ceiling_warnings(&[scope(&["s3:GetObject"], &[resource])], writes);
        let descriptions: Vec<&str> = warnings.iter().map(|w| w.description.as_str()).collect();
        assert_eq!(descriptions.len(), 3, "{descriptions:?}");
        assert!(descriptions[0].contains("partition"));
        assert!(descriptions[1].contains("region"));
        assert!(descriptions[2].contains("any account"));
        for description in descriptions {
            assert!(pattern::matches(resource, example(description)), "{description}");
        }
    }

    #[test]
    fn resource_star_is_warned_about_only_next_to_write_actions() {
        let ceiling = [
            scope(&["s3:GetObject", "ec2:Describe*"], &["*"]),
            scope(
                &["s3:GetObject", "s3:PutObject", "s3:Delete*"],
                &["arn:aws:s3:::acme-logs/*", "*"],
            ),
        ];
        let warnings = ceiling_warnings(&ceiling, writes);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, "ceiling[1].resources[1]");
        let description = &warnings[0].description;
        assert!(description.contains("`s3:PutObject`, `s3:Delete*`"), "{description}");
        assert!(!description.contains("GetObject"), "{description}");
        assert!(description.contains("any `s3` resource"), "{description}");
    }

    #[test]
    fn a_ceiling_that_says_what_it_means_gets_no_warnings() {
        let ceiling = [
            scope(
                &["s3:GetObject", "s3:PutObject"],
                &["arn:aws:s3:::acme-logs", "arn:aws:s3:::acme-logs/*"],
            ),
            scope(
                &["logs:*"],
                &[
                    "arn:aws:logs:us-east-1:123456789012:log-group:app-*",
                    "arn:aws:logs:us-?ast-1:123456789012:*",
                ],
            ),
            scope(&["ec2:Describe*"], &["*"]),
        ];
        assert_eq!(ceiling_warnings(&ceiling, writes), vec![]);
    }
}
