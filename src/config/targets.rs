//! `[[targets]]`: each target's role, caps, ceiling and revocation mode, and the checks across
//! targets (one revocation mode per role, ceilings wider than they look).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) id: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) environment: String,
    pub(super) account_id: String,
    pub(super) role_arn: String,
    pub(super) region: String,
    pub(super) external_id: Option<String>,
    pub(super) max_duration_secs: u64,
    #[serde(default)]
    pub(super) mfa_required: bool,
    #[serde(default)]
    pub(super) session_tags: bool,
    #[serde(default)]
    pub(super) allow_unknown_actions: bool,
    /// `enforce` (the default) or `record-only`.
    pub(super) revocation: Option<String>,
    pub(super) iam_role_arn: Option<String>,
    pub(super) iam_external_id: Option<String>,
    #[serde(default)]
    pub(super) requester_must_be_verified: bool,
    #[serde(default)]
    pub(super) approval_mfa_max_age_minutes: Option<u64>,
    pub(super) ceiling: Vec<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    pub(super) actions: Vec<String>,
    pub(super) resources: Vec<String>,
}

/// Longest an approver's MFA may lie behind an approval (a day).
const MAX_APPROVAL_MFA_AGE_MINUTES: u64 = 1440;

pub(super) fn validate_targets(
    raw: Vec<RawTarget>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Vec<Target> {
    let mut seen = BTreeMap::new();
    let mut targets = Vec::with_capacity(raw.len());
    for (index, target) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("targets[{index}].{field}");
        let id_ok = !target.id.is_empty()
            && target.id.len() <= 64
            && target
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !id_ok {
            problems.push(Problem::new(key("id"), "must be 1-64 characters of a-z, 0-9 and -_."));
        }
        if let Some(first) = seen.insert(target.id.clone(), index) {
            problems.push(Problem::new(
                key("id"),
                format!("`{}` is also the id of targets[{first}]", target.id),
            ));
        }
        if target.environment.is_empty() {
            problems.push(Problem::new(
                key("environment"),
                "is required (the rules match on it, e.g. `production`)",
            ));
        }
        if target.account_id.len() != 12 || !target.account_id.chars().all(|c| c.is_ascii_digit()) {
            problems.push(Problem::new(key("account_id"), "must be 12 digits"));
        }
        let arn_parts: Vec<&str> = target.role_arn.splitn(6, ':').collect();
        let arn_ok = matches!(arn_parts.as_slice(), ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty() && *account == target.account_id && resource.starts_with("role/") && resource.len() > 5);
        if !arn_ok || !(20..=2048).contains(&target.role_arn.len()) {
            problems.push(Problem::new(
                key("role_arn"),
                format!(
                    "must be arn:<partition>:iam::{}:role/<name> (20-2048 characters)",
                    target.account_id
                ),
            ));
        }
        if target.region.is_empty()
            || !target
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            problems.push(Problem::new(key("region"), "must be an AWS region such as eu-west-1"));
        }
        if let Some(external_id) = &target.external_id
            && let Err(why) = limits::check_external_id(external_id)
        {
            problems.push(Problem::new(key("external_id"), why));
        }
        if !(limits::MIN_DURATION_SECS..=limits::MAX_DURATION_SECS).contains(&target.max_duration_secs) {
            problems.push(Problem::new(
                key("max_duration_secs"),
                format!(
                    "must be {}-{} (STS limits)",
                    limits::MIN_DURATION_SECS,
                    limits::MAX_DURATION_SECS
                ),
            ));
        }
        if target.ceiling.is_empty() {
            problems.push(Problem::new(key("ceiling"), "at least one statement is required"));
        }
        let (revocation, iam) = validate_revocation(&target, &key, problems, warnings);
        if let Some(minutes) = target.approval_mfa_max_age_minutes
            && !(1..=MAX_APPROVAL_MFA_AGE_MINUTES).contains(&minutes)
        {
            problems.push(Problem::new(
                key("approval_mfa_max_age_minutes"),
                format!("must be 1-{MAX_APPROVAL_MFA_AGE_MINUTES} (how recently an approver authenticated with MFA)"),
            ));
        }
        let identity = crate::domain::TargetIdentity {
            requester_must_be_verified: target.requester_must_be_verified,
            approval_mfa_max_age: target
                .approval_mfa_max_age_minutes
                .map(|minutes| time::Duration::minutes(i64::try_from(minutes).unwrap_or(i64::MAX))),
        };
        let ceiling = target
            .ceiling
            .into_iter()
            .enumerate()
            .map(|(i, statement)| Scope {
                actions: parse_all(
                    &key(&format!("ceiling[{i}].actions")),
                    &statement.actions,
                    ActionPattern::parse,
                    problems,
                ),
                resources: parse_all(
                    &key(&format!("ceiling[{i}].resources")),
                    &statement.resources,
                    ResourcePattern::parse,
                    problems,
                ),
            })
            .collect();
        targets.push(Target {
            id: target.id,
            description: target.description,
            environment: target.environment,
            account_id: target.account_id,
            role_arn: target.role_arn,
            region: target.region,
            external_id: target.external_id,
            max_duration_secs: target.max_duration_secs,
            mfa_required: target.mfa_required,
            session_tags: target.session_tags,
            ceiling,
            allow_unknown_actions: target.allow_unknown_actions,
            revocation,
            iam,
            identity,
        });
    }
    same_revocation_per_role(&targets, problems);
    targets
}

/// A target's `revocation`, `iam_role_arn` and `iam_external_id`.
pub(super) fn validate_revocation(
    target: &RawTarget,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> (RevocationMode, IamAccess) {
    let revocation = match target.revocation.as_deref() {
        None | Some("enforce") => RevocationMode::Enforce,
        Some("record-only") => RevocationMode::RecordOnly,
        Some(other) => {
            problems.push(Problem::new(
                key("revocation"),
                format!(
                    "`{}` is not a revocation mode: `enforce` (deny revoked sessions on the role) or `record-only` (the role is not the broker's to change)",
                    crate::domain::clip(other, 64)
                ),
            ));
            RevocationMode::Enforce
        }
    };
    if let Some(arn) = &target.iam_role_arn {
        match parse_role_arn(arn) {
            None => problems.push(Problem::new(
                key("iam_role_arn"),
                "must be arn:<partition>:iam::<account>:role/<name> (20-2048 characters): a role the broker assumes to manage the target role's inline policy",
            )),
            Some((partition, account)) => {
                let target_partition = parse_role_arn(&target.role_arn).map(|(partition, _)| partition);
                if target_partition.is_some_and(|target_partition| target_partition != partition) {
                    problems.push(Problem::new(
                        key("iam_role_arn"),
                        format!("is in partition `{partition}`, the target's role is not: IAM is per partition"),
                    ));
                } else if account != target.account_id {
                    warnings.push(Problem::new(
                        key("iam_role_arn"),
                        format!(
                            "is in account {account}, not the target's {}: it can manage the role only through a cross-account grant",
                            target.account_id
                        ),
                    ));
                }
            }
        }
    }
    if let Some(external_id) = &target.iam_external_id {
        if target.iam_role_arn.is_none() {
            problems.push(Problem::new(
                key("iam_external_id"),
                "only for assuming iam_role_arn: set iam_role_arn too",
            ));
        } else if let Err(why) = limits::check_external_id(external_id) {
            problems.push(Problem::new(key("iam_external_id"), why));
        }
    }
    let iam = IamAccess {
        assume_role_arn: target.iam_role_arn.clone(),
        external_id: target.iam_external_id.clone(),
    };
    (revocation, iam)
}

/// The partition and account of a role ARN of the shape `arn:<partition>:iam::<account>:role/<name>`.
pub(super) fn parse_role_arn(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && resource.len() > 5
                && resource.starts_with("role/")
                && !resource.ends_with('/')
                && (20..=2048).contains(&arn.len()) =>
        {
            Some((partition, account))
        }
        _ => None,
    }
}

/// Enforcement is per role: the broker keeps one deny policy on it, whichever target a revoked
/// grant came from. So targets naming the same role (IAM role names are unique per account
/// whatever their path, and case-insensitive) must agree on how it is enforced.
pub(super) fn same_revocation_per_role(targets: &[Target], problems: &mut Vec<Problem>) {
    let mut first_of_role: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for (index, target) in targets.iter().enumerate() {
        let Some((partition, account)) = parse_role_arn(&target.role_arn) else {
            continue;
        };
        let role = (
            partition.to_owned(),
            account.to_owned(),
            target.role_name().to_ascii_lowercase(),
        );
        let first = *first_of_role.entry(role).or_insert(index);
        let Some(other) = targets.get(first).filter(|_| first != index) else {
            continue;
        };
        let field = if other.revocation != target.revocation {
            "revocation"
        } else if other.iam.assume_role_arn != target.iam.assume_role_arn {
            "iam_role_arn"
        } else if other.iam.external_id != target.iam.external_id {
            "iam_external_id"
        } else {
            continue;
        };
        problems.push(Problem::new(
            format!("targets[{index}].{field}"),
            format!(
                "targets[{first}] names the same role ({}) with another {field}: the broker keeps one deny policy per role, so every target of a role must set revocation, iam_role_arn and iam_external_id alike",
                target.role_name()
            ),
        ));
    }
}

/// Ceilings that reach further than they look, or name actions the catalog does not know, each
/// under its target's key.
pub(super) fn ceiling_warnings(targets: &[Target]) -> Vec<Problem> {
    let catalog = Catalog::builtin();
    // An action the catalog does not know might write: only known reads are reads.
    let is_write = |action: &ActionPattern| {
        let mut expanded = catalog.expand(action).peekable();
        expanded.peek().is_none() || expanded.any(|info| !info.access_level().is_read())
    };
    let mut warnings = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let key = |field: &str| format!("targets[{index}].{field}");
        for warning in scope::ceiling_warnings(&target.ceiling, is_write) {
            warnings.push(Problem::new(key(&warning.field), warning.description));
        }
        let facts = catalog.facts(&target.ceiling);
        for (s, a) in facts.unknown {
            let action = &target.ceiling[s].actions[a];
            warnings.push(Problem::new(
                key(&format!("ceiling[{s}].actions[{a}]")),
                format!(
                    "`{}` matches no action the IAM catalog ({}) knows: a typo, or a service newer than the catalog",
                    action.as_str(),
                    catalog.source()
                ),
            ));
        }
    }
    warnings
}
