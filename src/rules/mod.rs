//! Approval rules: Cedar policies validated against the shipped schema, and the decision they
//! make for one request.
//!
//! Decision procedure (default deny): any applicable `forbid` on `request`, or no `permit` on
//! `request`, denies; otherwise a `permit` (and no `forbid`) on `auto_approve` approves at once;
//! otherwise the grant waits for human approval. Cedar skips a policy that fails to evaluate, which
//! for a `forbid` would let a request through; so any evaluation failure on `request` denies, and
//! on `auto_approve` withholds automatic approval.
//!
//! Human approval: the policy that permitted a pending request may say how many approvals it
//! needs, `@approvals("security:1, team-leads:1")` (default: one); who may give them is the
//! action `approve`, with the approver as principal, a member of their groups
//! (`principal in GrantBroker::Group::"security"`), over the same facts as the request. Default
//! deny again: without a permit on `approve`, nobody may approve.
//!
//! Pure and synchronous: the caller reads the rule files and passes their text in.

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
};

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, Policy, PolicyId,
    PolicySet, Request, Response, RestrictedExpression as Expr, Schema, ValidationMode, Validator,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::domain::{
    Decision, Outcome, Scope, Target,
    approval::{ApprovalRequirement, Person},
    iam::ActionFacts,
    identity::Verified,
};

/// The schema every rule file is validated against.
pub const SCHEMA: &str = include_str!("schema.cedarschema");

/// Everything the rules may look at for one request.
#[derive(Debug, Clone)]
pub struct RuleInput<'a> {
    /// The caller that requested the grant.
    pub caller: &'a str,
    /// The caller making this call: for `approve`, the portal relaying the approver; otherwise
    /// the requesting caller itself.
    pub acting_caller: &'a str,
    pub requester: &'a str,
    /// What the requester's verified token proved (`None`: asserted).
    pub identity: Option<&'a Verified>,
    pub grantee: &'a str,
    pub target: &'a Target,
    pub scopes: &'a [Scope],
    /// What `scopes` can actually match: `Catalog::facts(scopes)`, computed once by the caller,
    /// which also uses it to refuse unknown actions.
    pub facts: &'a ActionFacts<'a>,
    /// The grant's length: requested, or for an extension the total it would have.
    pub duration_secs: u64,
    /// For an extension: what it adds (0 otherwise).
    pub extension_secs: u64,
    /// When the window starts (the request time, a scheduled start, or an approval).
    pub start: OffsetDateTime,
    /// The requester invokes break-glass (an emergency): approved at once if a rule permits it.
    pub break_glass: bool,
    pub justification: &'a str,
    pub ticket: &'a str,
    pub mfa_present: bool,
    pub now: OffsetDateTime,
}

/// A loaded, validated rule set.
#[derive(Debug)]
pub struct RuleEngine {
    policies: PolicySet,
    authorizer: Authorizer,
    actions: Actions,
    /// Policy id -> its `@approvals` annotation.
    approvals: BTreeMap<String, ApprovalRequirement>,
    sources: Vec<String>,
    digest: String,
}

#[derive(Debug)]
struct Actions {
    request: EntityUid,
    auto_approve: EntityUid,
    approve: EntityUid,
    break_glass: EntityUid,
    extend: EntityUid,
}

/// Whether a person may approve (or deny) a grant, and which rules say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligibility {
    Eligible { policy_ids: Vec<String> },
    NotEligible { policy_ids: Vec<String>, reason: String },
}

/// Principal, resource, context and entities of one request, shared by both actions.
struct Prepared {
    principal: EntityUid,
    resource: EntityUid,
    context: Context,
    entities: Entities,
}

fn entity_uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    EntityUid::from_json(json!({ "type": format!("GrantBroker::{kind}"), "id": id })).map_err(|error| error.to_string())
}

/// Rule text from one file: its name (used in policy ids and error messages) and contents.
pub struct RuleSource<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl RuleEngine {
    /// Parses and validates every rule file, returning every problem found. Policy ids are the
    /// policies' `@id("...")` annotations, or `<file>#<n>` for policies without one; ids must be
    /// unique across files, since they are what grants record as the deciding rules.
    pub fn load(sources: &[RuleSource<'_>]) -> Result<Self, Vec<String>> {
        let schema = Schema::from_cedarschema_str(SCHEMA)
            .map(|(schema, _warnings)| schema)
            .map_err(|error| vec![format!("built-in schema: {error}")])?;
        let mut problems = Vec::new();
        let mut policies = PolicySet::new();
        let mut approvals = BTreeMap::new();
        for source in sources {
            let parsed = match PolicySet::from_str(source.text) {
                Ok(parsed) => parsed,
                Err(errors) => {
                    problems.push(format!("{}: {errors}", source.name));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                problems.push(format!("{}: policy templates are not supported", source.name));
            }
            for (index, policy) in parsed.policies().enumerate() {
                let id = policy
                    .annotation("id")
                    .map_or_else(|| format!("{}#{index}", source.name), str::to_owned);
                if let Some(annotation) = policy.annotation("approvals") {
                    match ApprovalRequirement::parse(annotation) {
                        Ok(requirement) => {
                            approvals.insert(id.clone(), requirement);
                        }
                        Err(why) => problems.push(format!("{}: policy `{id}`: @approvals: {why}", source.name)),
                    }
                }
                if let Err(error) = policies.add(policy.new_id(PolicyId::new(&id))) {
                    problems.push(format!("{}: policy `{id}`: {error}", source.name));
                }
            }
        }
        if problems.is_empty() && policies.policies().next().is_none() {
            problems
                .push("no rules: every request would be denied (add at least one `permit` on `request`)".to_owned());
        }
        let validation = Validator::new(schema).validate(&policies, ValidationMode::Strict);
        problems.extend(validation.validation_errors().map(ToString::to_string));
        if !problems.is_empty() {
            return Err(problems);
        }
        let actions = Actions {
            request: entity_uid("Action", "request").map_err(|error| vec![error])?,
            auto_approve: entity_uid("Action", "auto_approve").map_err(|error| vec![error])?,
            approve: entity_uid("Action", "approve").map_err(|error| vec![error])?,
            break_glass: entity_uid("Action", "break_glass").map_err(|error| vec![error])?,
            extend: entity_uid("Action", "extend").map_err(|error| vec![error])?,
        };
        let digest = {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            for source in sources {
                // Length-prefixed, so moving text between files changes the digest.
                for part in [source.name, source.text] {
                    hasher.update(part.len().to_be_bytes());
                    hasher.update(part.as_bytes());
                }
            }
            hex::encode(hasher.finalize())
        };
        Ok(Self {
            approvals,
            policies,
            authorizer: Authorizer::new(),
            actions,
            sources: sources.iter().map(|source| source.name.to_owned()).collect(),
            digest,
        })
    }

    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// The names of the files the rules came from, in order.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// SHA-256 of every file's name and text: replicas with the same digest run the same rules.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The rules' decision for one request, with the ids of the policies that determined it.
    pub fn decide(&self, input: &RuleInput<'_>) -> Decision {
        self.decide_as(&self.actions.request, input)
    }

    /// The rules' decision on extending a grant (`input` describes the grant with the total
    /// duration it would have and `extension_secs` set): the same procedure as a request, with
    /// `extend` in place of `request` and no break-glass. The `@approvals` of the permitting
    /// `extend` rules say what a waiting extension needs.
    pub fn decide_extension(&self, input: &RuleInput<'_>) -> Decision {
        let input = RuleInput {
            break_glass: false,
            ..input.clone()
        };
        self.decide_as(&self.actions.extend, &input)
    }

    fn decide_as(&self, action: &EntityUid, input: &RuleInput<'_>) -> Decision {
        let mut decision = self.decide_outcome(action, input);
        if decision.outcome == Outcome::RequireApproval {
            decision.approvals_required = self.required_approvals(&decision.policy_ids);
            decision.reason = format!("{}; needs {}", decision.reason, decision.approvals_required.describe());
        }
        decision
    }

    /// What the deciding policies' `@approvals` annotations ask for: the largest, when several
    /// do (so adding a stricter rule never weakens a requirement); one approval when none does.
    fn required_approvals(&self, policy_ids: &[String]) -> ApprovalRequirement {
        policy_ids
            .iter()
            .filter_map(|id| self.approvals.get(id))
            .max_by_key(|requirement| requirement.total())
            .cloned()
            .unwrap_or_default()
    }

    /// May `approver`, a member of `groups`, approve or deny the grant these facts describe?
    /// Default deny; a failing policy denies, for the same reason as in [`Self::decide`].
    /// `verified`: what the approver's token proved (the rules see it as `context.identity`).
    pub fn eligible_approver(
        &self,
        input: &RuleInput<'_>,
        approver: &Person,
        groups: &BTreeSet<String>,
        verified: Option<&Verified>,
    ) -> Eligibility {
        let not_eligible = |policy_ids, reason| Eligibility::NotEligible { policy_ids, reason };
        let input = RuleInput {
            identity: verified,
            ..input.clone()
        };
        let input = &input;
        let principal = Principal {
            kind: "Approver",
            id: approver.as_str(),
            groups,
            verified,
        };
        let prepared = match self.prepare(input, None).and_then(|mut prepared| {
            prepared.principal = entity_uid("Approver", approver.as_str())?;
            prepared.entities = self.entities(input.target, &principal, None)?;
            Ok(prepared)
        }) {
            Ok(prepared) => prepared,
            Err(error) => return not_eligible(Vec::new(), format!("the rules could not evaluate: {error}")),
        };
        let response = match self.authorize(&self.actions.approve, &prepared, None) {
            Ok(response) => response,
            Err(error) => return not_eligible(Vec::new(), format!("the rules could not evaluate: {error}")),
        };
        let failed = self.failed_policies(&response);
        if !failed.is_empty() {
            let reason = format!("{} failed to evaluate", self.describe(&failed));
            return not_eligible(failed, reason);
        }
        let ids = self.determining(&response);
        match response.decision() {
            CedarDecision::Allow => Eligibility::Eligible { policy_ids: ids },
            CedarDecision::Deny if ids.is_empty() => not_eligible(
                ids,
                format!(
                    "no rule lets `{approver}` approve grants on target `{}`",
                    input.target.id
                ),
            ),
            CedarDecision::Deny => {
                let reason = format!("forbidden by {}", self.describe(&ids));
                not_eligible(ids, reason)
            }
        }
    }

    /// `action` is `request` or `extend`: what may be asked for at all.
    fn decide_outcome(&self, action: &EntityUid, input: &RuleInput<'_>) -> Decision {
        let asked = if action == &self.actions.extend {
            "extension"
        } else {
            "request"
        };
        let decision = |outcome, policy_ids, reason| Decision {
            outcome,
            policy_ids,
            reason,
            decided_at: input.now,
            approvals_required: ApprovalRequirement::default(),
            break_glass: false,
        };
        let request = match self
            .prepare(input, None)
            .and_then(|prepared| Ok((self.authorize(action, &prepared, None)?, prepared)))
        {
            Ok(evaluated) => evaluated,
            Err(error) => {
                let reason = format!("the rules could not evaluate this {asked}: {error}");
                return decision(Outcome::Deny, Vec::new(), reason);
            }
        };
        let (request, prepared) = request;
        // Cedar skips a policy that fails to evaluate; for a `forbid` that would let the request
        // through. Default deny: any failure on `request` denies.
        let failed = self.failed_policies(&request);
        if !failed.is_empty() {
            let reason = format!("denied because {} failed to evaluate", self.describe(&failed));
            return decision(Outcome::Deny, failed, reason);
        }
        let request_ids = self.determining(&request);
        if request.decision() == CedarDecision::Deny {
            let reason = if request_ids.is_empty() {
                format!("no rule permits this {asked}")
            } else {
                format!("denied by {}", self.describe(&request_ids))
            };
            return decision(Outcome::Deny, request_ids, reason);
        }
        let permitted = format!("permitted by {}", self.describe(&request_ids));
        // Break-glass: approved at once when a rule permits it (and nothing above forbade the
        // request); a failing policy withholds it, like automatic approval.
        let mut glass_refused = String::new();
        if input.break_glass {
            match self.authorize(&self.actions.break_glass, &prepared, None) {
                Ok(response) if self.failed_policies(&response).is_empty() => {
                    let glass_ids = self.determining(&response);
                    if response.decision() == CedarDecision::Allow {
                        let reason = format!("{permitted}; break-glass permitted by {}", self.describe(&glass_ids));
                        let mut approved = decision(Outcome::Approve, union(request_ids, glass_ids), reason);
                        approved.break_glass = true;
                        return approved;
                    }
                    glass_refused = if glass_ids.is_empty() {
                        "; no rule permits break-glass here".to_owned()
                    } else {
                        format!("; break-glass forbidden by {}", self.describe(&glass_ids))
                    };
                }
                Ok(response) => {
                    glass_refused = format!(
                        "; break-glass withheld because {} failed to evaluate",
                        self.describe(&self.failed_policies(&response))
                    );
                }
                Err(error) => glass_refused = format!("; break-glass could not be evaluated: {error}"),
            }
        }
        let permitted = format!("{permitted}{glass_refused}");
        let approve = match self.authorize(&self.actions.auto_approve, &prepared, None) {
            Ok(response) => response,
            Err(error) => {
                let reason = format!("{permitted}; automatic approval could not be evaluated: {error}");
                return decision(Outcome::RequireApproval, request_ids, reason);
            }
        };
        // Likewise a failure on `auto_approve` can only withhold automatic approval.
        let failed = self.failed_policies(&approve);
        if !failed.is_empty() {
            let reason = format!(
                "{permitted}; automatic approval withheld because {} failed to evaluate",
                self.describe(&failed)
            );
            return decision(Outcome::RequireApproval, union(request_ids, failed), reason);
        }
        let approve_ids = self.determining(&approve);
        match approve.decision() {
            CedarDecision::Allow => {
                let reason = format!("approved by {}", self.describe(&approve_ids));
                decision(Outcome::Approve, union(request_ids, approve_ids), reason)
            }
            CedarDecision::Deny if approve_ids.is_empty() => decision(
                Outcome::RequireApproval,
                request_ids,
                format!("{permitted}; no rule approves it automatically"),
            ),
            CedarDecision::Deny => {
                let reason = format!(
                    "{permitted}; automatic approval forbidden by {}",
                    self.describe(&approve_ids)
                );
                decision(Outcome::RequireApproval, union(request_ids, approve_ids), reason)
            }
        }
    }

    /// The Cedar inputs for one request. Built without schema checks: they are typed by
    /// construction here, and `request_inputs_match_the_schema` proves they conform, which saves
    /// most of a decision's cost on the hot path.
    ///
    /// The context is built from Cedar expressions rather than JSON: for `*` it holds every
    /// action in the catalog, and Cedar's JSON parser takes several times longer over that set.
    fn prepare(&self, input: &RuleInput<'_>, schema: Option<(&Schema, &EntityUid)>) -> Result<Prepared, String> {
        let target = input.target;
        let facts = input.facts;
        let folded = |action: &crate::domain::ActionPattern| action.as_str().to_ascii_lowercase();
        let actions: BTreeSet<String> = input
            .scopes
            .iter()
            .flat_map(|scope| &scope.actions)
            .map(folded)
            .collect();
        let unknown_actions: BTreeSet<String> = facts
            .unknown
            .iter()
            .filter_map(|&(i, j)| input.scopes.get(i)?.actions.get(j))
            .map(folded)
            .collect();
        let duration_seconds = i64::try_from(input.duration_secs)
            .map_err(|_| format!("duration {} is out of range", input.duration_secs))?;
        let context = Context::from_pairs(
            [
                ("caller", Expr::new_entity_uid(entity_uid("Caller", input.caller)?)),
                (
                    "acting_caller",
                    Expr::new_entity_uid(entity_uid("Caller", input.acting_caller)?),
                ),
                ("identity", identity_record(input.identity, input.now)?),
                ("grantee", Expr::new_entity_uid(entity_uid("Grantee", input.grantee)?)),
                ("duration_seconds", Expr::new_long(duration_seconds)),
                (
                    "extension_seconds",
                    Expr::new_long(
                        i64::try_from(input.extension_secs)
                            .map_err(|_| format!("extension {} is out of range", input.extension_secs))?,
                    ),
                ),
                ("scheduled", Expr::new_bool(input.start > input.now)),
                ("break_glass", Expr::new_bool(input.break_glass)),
                (
                    "starts_in_seconds",
                    Expr::new_long((input.start - input.now).whole_seconds().max(0)),
                ),
                ("actions", strings(actions.iter().map(String::as_str))),
                ("expanded_actions", strings(facts.expanded_actions.iter().copied())),
                (
                    "access_levels",
                    strings(facts.access_levels.iter().map(|level| level.as_str())),
                ),
                ("services", strings(facts.services.iter().copied())),
                ("write_services", strings(facts.write_services.iter().copied())),
                ("read_only", Expr::new_bool(facts.read_only())),
                ("exposes_credentials", Expr::new_bool(facts.exposes_credentials)),
                ("privilege_escalation", Expr::new_bool(facts.privilege_escalation)),
                ("unknown_actions", strings(unknown_actions.iter().map(String::as_str))),
                ("justification", Expr::new_string(input.justification.to_owned())),
                (
                    "has_justification",
                    Expr::new_bool(!input.justification.trim().is_empty()),
                ),
                ("ticket", Expr::new_string(input.ticket.to_owned())),
                ("has_ticket", Expr::new_bool(!input.ticket.trim().is_empty())),
                ("mfa_present", Expr::new_bool(input.mfa_present)),
                ("hour_utc", Expr::new_long(i64::from(input.now.hour()))),
                ("weekday", Expr::new_string(weekday(input.now).to_owned())),
            ]
            .map(|(name, value)| (name.to_owned(), value)),
        )
        .map_err(|e| e.to_string())?;
        if let Some((schema, action)) = schema {
            context.validate(schema, action).map_err(|e| e.to_string())?;
        }
        let no_groups = BTreeSet::new();
        let requester = Principal {
            kind: "Requester",
            id: input.requester,
            groups: input.identity.map_or(&no_groups, |verified| &verified.groups),
            verified: input.identity,
        };
        let entities = self.entities(target, &requester, schema.map(|(schema, _)| schema))?;
        Ok(Prepared {
            principal: entity_uid("Requester", input.requester)?,
            resource: entity_uid("Target", &target.id)?,
            context,
            entities,
        })
    }

    /// The target, and the principal in its groups with its verified facts as tags.
    fn entities(
        &self,
        target: &Target,
        principal: &Principal<'_>,
        schema: Option<&Schema>,
    ) -> Result<Entities, String> {
        let mut entities = vec![json!({
            "uid": { "type": "GrantBroker::Target", "id": target.id },
            "attrs": {
                "environment": target.environment,
                "account_id": target.account_id,
                "region": target.region,
                "mfa_required": target.mfa_required,
            },
            "parents": [],
        })];
        let tags: serde_json::Map<String, serde_json::Value> = principal
            .verified
            .iter()
            .flat_map(|verified| &verified.facts)
            .map(|(fact, value)| (fact.clone(), serde_json::Value::String(value.clone())))
            .collect();
        entities.push(json!({
            "uid": { "type": format!("GrantBroker::{}", principal.kind), "id": principal.id },
            "attrs": {},
            "parents": principal.groups.iter().map(|group| json!({ "type": "GrantBroker::Group", "id": group })).collect::<Vec<_>>(),
            "tags": tags,
        }));
        for group in principal.groups {
            entities.push(json!({ "uid": { "type": "GrantBroker::Group", "id": group }, "attrs": {}, "parents": [] }));
        }
        Entities::from_json_value(serde_json::Value::Array(entities), schema).map_err(|e| e.to_string())
    }

    fn authorize(&self, action: &EntityUid, prepared: &Prepared, schema: Option<&Schema>) -> Result<Response, String> {
        let request = Request::new(
            prepared.principal.clone(),
            action.clone(),
            prepared.resource.clone(),
            prepared.context.clone(),
            schema,
        )
        .map_err(|e| e.to_string())?;
        Ok(self
            .authorizer
            .is_authorized(&request, &self.policies, &prepared.entities))
    }

    fn determining(&self, response: &Response) -> Vec<String> {
        let mut ids: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        ids.sort();
        ids
    }

    /// Ids of the policies that failed to evaluate, sorted.
    fn failed_policies(&self, response: &Response) -> Vec<String> {
        let mut ids: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|error| match error {
                AuthorizationError::PolicyEvaluationError(failure) => failure.policy_id().to_string(),
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Names policies for a reason string, preferring their `@reason("...")` annotation.
    fn describe(&self, ids: &[String]) -> String {
        ids.iter()
            .map(|id| {
                let reason = self
                    .policies
                    .policy(&PolicyId::new(id))
                    .and_then(|policy: &Policy| policy.annotation("reason"));
                match reason {
                    Some(reason) => format!("`{id}` ({reason})"),
                    None => format!("`{id}`"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A Cedar set of strings.
/// The principal of a decision as the rules see it: `Requester` or `Approver`, its groups, and
/// its verified facts (as tags).
struct Principal<'a> {
    kind: &'static str,
    id: &'a str,
    groups: &'a BTreeSet<String>,
    verified: Option<&'a Verified>,
}

/// `context.identity`: how the principal was known.
fn identity_record(verified: Option<&Verified>, now: OffsetDateTime) -> Result<Expr, String> {
    let mut fields = vec![
        ("verified".to_owned(), Expr::new_bool(verified.is_some())),
        (
            "issuer".to_owned(),
            Expr::new_string(verified.map(|v| v.issuer.clone()).unwrap_or_default()),
        ),
        (
            "kind".to_owned(),
            Expr::new_string(verified.map_or("unknown", |v| v.kind.as_str()).to_owned()),
        ),
        ("mfa".to_owned(), Expr::new_bool(verified.is_some_and(|v| v.mfa))),
    ];
    if let Some(age) = verified.and_then(|v| v.auth_age_secs(now)) {
        fields.push(("auth_age_seconds".to_owned(), Expr::new_long(age)));
    }
    Expr::new_record(fields).map_err(|error| error.to_string())
}

fn strings<'s>(items: impl IntoIterator<Item = &'s str>) -> Expr {
    Expr::new_set(items.into_iter().map(|item| Expr::new_string(item.to_owned())))
}

fn union(mut first: Vec<String>, second: Vec<String>) -> Vec<String> {
    first.extend(second);
    first.sort();
    first.dedup();
    first
}

fn weekday(at: OffsetDateTime) -> &'static str {
    match at.weekday() {
        time::Weekday::Monday => "Mon",
        time::Weekday::Tuesday => "Tue",
        time::Weekday::Wednesday => "Wed",
        time::Weekday::Thursday => "Thu",
        time::Weekday::Friday => "Fri",
        time::Weekday::Saturday => "Sat",
        time::Weekday::Sunday => "Sun",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActionPattern, ResourcePattern, iam::Catalog};
    use time::macros::datetime;

    const EXAMPLE: &str = include_str!("../../deploy/rules/approval.cedar");

    fn target(environment: &str) -> Target {
        Target {
            id: format!("{environment}-logs"),
            description: String::new(),
            environment: environment.into(),
            account_id: "123456789012".into(),
            role_arn: "arn:aws:iam::123456789012:role/logs".into(),
            region: "eu-west-1".into(),
            external_id: None,
            max_duration_secs: 43_200,
            mfa_required: false,
            session_tags: false,
            ceiling: vec![],
            allow_unknown_actions: false,
            revocation: crate::domain::RevocationMode::Enforce,
            iam: crate::domain::IamAccess::default(),
            identity: Default::default(),
        }
    }

    fn scopes(actions: &[&str]) -> Vec<Scope> {
        vec![Scope {
            actions: actions.iter().map(|a| ActionPattern::parse(a).unwrap()).collect(),
            resources: vec![ResourcePattern::parse("*").unwrap()],
        }]
    }

    fn decide(engine: &RuleEngine, target: &Target, actions: &[&str], duration_secs: u64, ticket: &str) -> Decision {
        let scopes = scopes(actions);
        let facts = Catalog::builtin().facts(&scopes);
        engine.decide(&RuleInput {
            caller: "portal",
            requester: "alice",
            grantee: "vendor-x",
            target,
            scopes: &scopes,
            facts: &facts,
            duration_secs,
            extension_secs: 0,
            justification: "why",
            ticket,
            mfa_present: false,
            now: datetime!(2026-11-25 14:00 UTC),
            start: datetime!(2026-11-25 14:00 UTC),
            break_glass: false,
            identity: None,
            acting_caller: "portal",
        })
    }

    fn example() -> RuleEngine {
        RuleEngine::load(&[RuleSource {
            name: "approval.cedar",
            text: EXAMPLE,
        }])
        .unwrap()
    }

    #[test]
    fn example_rules_auto_approve_short_read_only_non_production() {
        let decision = decide(&example(), &target("staging"), &["s3:GetObject", "s3:List*"], 3600, "");
        assert_eq!(decision.outcome, Outcome::Approve, "{decision:?}");
        assert_eq!(
            decision.policy_ids,
            ["auto-approve-nonprod-read-only", "callers-may-request"]
        );
    }

    #[test]
    fn example_rules_send_longer_or_writing_non_production_requests_to_humans() {
        let engine = example();
        assert_eq!(
            decide(&engine, &target("staging"), &["s3:GetObject"], 3601, "").outcome,
            Outcome::RequireApproval
        );
        assert_eq!(
            decide(&engine, &target("staging"), &["s3:PutObject"], 900, "").outcome,
            Outcome::RequireApproval
        );
    }

    #[test]
    fn example_rules_send_production_to_humans_and_require_a_ticket() {
        let engine = example();
        let pending = decide(&engine, &target("production"), &["s3:GetObject"], 900, "CHG-1");
        assert_eq!(pending.outcome, Outcome::RequireApproval);
        assert_eq!(
            pending.policy_ids,
            ["callers-may-request", "production-needs-security-and-a-lead"]
        );
        assert_eq!(pending.approvals_required.to_annotation(), "security:1, team-leads:1");
        assert!(
            pending.reason.ends_with("needs 1 from security and 1 from team-leads"),
            "{}",
            pending.reason
        );
        let denied = decide(&engine, &target("production"), &["s3:GetObject"], 900, "");
        assert_eq!(denied.outcome, Outcome::Deny);
        assert_eq!(denied.policy_ids, ["production-needs-ticket"]);
        assert!(denied.reason.contains("ticket"), "{}", denied.reason);
    }

    #[test]
    fn example_rules_never_grant_iam_writes() {
        let engine = example();
        let decision = decide(&engine, &target("staging"), &["iam:PassRole"], 900, "CHG-1");
        assert_eq!(decision.outcome, Outcome::Deny);
        assert_eq!(decision.policy_ids, ["deny-iam-writes", "deny-privilege-escalation"]);
        // An IAM write that cannot escalate is still refused.
        let decision = decide(&engine, &target("staging"), &["iam:TagRole"], 900, "CHG-1");
        assert_eq!(decision.outcome, Outcome::Deny);
        assert_eq!(decision.policy_ids, ["deny-iam-writes"]);
        // Escalation outside IAM is refused too.
        let decision = decide(
            &engine,
            &target("staging"),
            &["lambda:UpdateFunctionCode"],
            900,
            "CHG-1",
        );
        assert_eq!(decision.outcome, Outcome::Deny);
        assert_eq!(decision.policy_ids, ["deny-privilege-escalation"]);
        assert_eq!(
            decide(&engine, &target("staging"), &["iam:GetRole"], 900, "").outcome,
            Outcome::Approve
        );
        assert_eq!(
            decide(&engine, &target("staging"), &["*"], 900, "CHG-1").outcome,
            Outcome::Deny
        );
        assert_eq!(
            decide(&engine, &target("staging"), &["i*:PutRolePolicy"], 900, "CHG-1").outcome,
            Outcome::Deny
        );
    }

    #[test]
    fn request_inputs_match_the_schema() {
        let engine = example();
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();
        let target = target("production");
        for actions in [
            &["s3:GetObject"][..],
            &["*"],
            &["i*:Put*", "ec2:Describe*"],
            &["iam:PassRol?", "secretsmanager:GetSecretValue"],
            &["s3:GetObjcet", "S3:List*"],
        ] {
            let scopes = scopes(actions);
            let facts = Catalog::builtin().facts(&scopes);
            let input = RuleInput {
                caller: "portal",
                requester: "alice",
                grantee: "vendor-x",
                target: &target,
                scopes: &scopes,
                facts: &facts,
                duration_secs: 900,
                extension_secs: 0,
                justification: "",
                ticket: "",
                mfa_present: true,
                now: datetime!(2026-11-29 23:59 UTC),
                start: datetime!(2026-11-29 23:59 UTC),
                break_glass: false,
                identity: None,
                acting_caller: "portal",
            };
            for action in [&engine.actions.request, &engine.actions.auto_approve] {
                let prepared = engine.prepare(&input, Some((&schema, action))).unwrap();
                engine.authorize(action, &prepared, Some(&schema)).unwrap();
            }
        }
    }

    /// The example rules with one more rule, for checking what the context lets rules see.
    fn example_with(rule: &str) -> RuleEngine {
        engine(&format!("{EXAMPLE}\n{rule}"))
    }

    #[test]
    fn rules_see_every_action_a_pattern_can_match() {
        let engine = engine(
            r#"
            permit (principal, action, resource);
            @id("no-passrole")
            forbid (principal, action, resource) when { context.expanded_actions.contains("iam:passrole") };
            "#,
        );
        for pattern in [
            "iam:PassRole",
            "iam:PassRol?",
            "iam:*",
            "iam:pass*",
            "IAM:PASSROLE",
            "*",
            "i?m:P*",
        ] {
            let decision = decide(&engine, &target("staging"), &["s3:GetObject", pattern], 900, "");
            assert_eq!(decision.outcome, Outcome::Deny, "{pattern}: {decision:?}");
            assert_eq!(decision.policy_ids, ["no-passrole"], "{pattern}");
        }
        for pattern in ["iam:Get*", "iam:PassRoles", "s3:*"] {
            let decision = decide(&engine, &target("staging"), &[pattern], 900, "");
            assert_eq!(decision.outcome, Outcome::Approve, "{pattern}: {decision:?}");
        }
    }

    #[test]
    fn example_rules_send_credential_reads_to_humans() {
        let engine = example();
        for action in [
            "secretsmanager:GetSecretValue",
            "ecr:GetAuthorizationToken",
            "ec2:GetPasswordData",
            "sts:GetFederationToken",
            "ssm:GetParameter*",
            "kms:Decrypt",
            "secretsmanager:*",
        ] {
            let decision = decide(&engine, &target("staging"), &["s3:GetObject", action], 900, "");
            assert_eq!(decision.outcome, Outcome::RequireApproval, "{action}: {decision:?}");
            assert_eq!(decision.policy_ids, ["callers-may-request"], "{action}");
        }
        for actions in [
            &["s3:GetObject"][..],
            &["ec2:Describe*"],
            &["s3:GetObject", "ec2:Describe*"],
        ] {
            let decision = decide(&engine, &target("staging"), actions, 900, "");
            assert_eq!(decision.outcome, Outcome::Approve, "{actions:?}: {decision:?}");
        }
    }

    #[test]
    fn unknown_patterns_reach_the_rules_and_are_never_read_only() {
        let engine = example_with(
            r#"@id("no-typos") forbid (principal, action == GrantBroker::Action::"auto_approve", resource)
            when { context.unknown_actions.contains("s3:getobjcet") };"#,
        );
        let decision = decide(&engine, &target("staging"), &["s3:GetObjcet"], 900, "");
        assert_eq!(decision.outcome, Outcome::RequireApproval, "{decision:?}");
        assert_eq!(decision.policy_ids, ["callers-may-request", "no-typos"]);
        // Without that rule the typo still is not read-only, so it waits for a human.
        let decision = decide(
            &example(),
            &target("staging"),
            &["s3:GetObject", "s3:GetObjcet"],
            900,
            "",
        );
        assert_eq!(decision.outcome, Outcome::RequireApproval, "{decision:?}");
        assert_eq!(decision.policy_ids, ["callers-may-request"]);
    }

    /// Prints the cost of the facts and a decision for a narrow, a service-wide and an
    /// everything request (debug build here; `cargo bench --bench request_access` gives release
    /// figures).
    #[test]
    fn facts_and_decision_costs() {
        let engine = example();
        let target = target("staging");
        let _ = Catalog::builtin();
        for actions in [&["s3:GetObject"][..], &["s3:*"], &["*"]] {
            let scopes = scopes(actions);
            let iterations = 10;
            let (mut facts_time, mut decision_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
            for _ in 0..iterations {
                let started = std::time::Instant::now();
                let facts = Catalog::builtin().facts(&scopes);
                facts_time += started.elapsed();
                let started = std::time::Instant::now();
                let decision = engine.decide(&RuleInput {
                    caller: "portal",
                    requester: "alice",
                    grantee: "vendor-x",
                    target: &target,
                    scopes: &scopes,
                    facts: &facts,
                    duration_secs: 900,
                    extension_secs: 0,
                    justification: "why",
                    ticket: "",
                    mfa_present: false,
                    now: datetime!(2026-11-25 14:00 UTC),
                    start: datetime!(2026-11-25 14:00 UTC),
                    break_glass: false,
                    identity: None,
                    acting_caller: "portal",
                });
                decision_time += started.elapsed();
                // `*` is denied (it can escalate), after one of the two authorizations.
                assert_eq!(decision.outcome == Outcome::Deny, actions == ["*"], "{decision:?}");
            }
            println!(
                "{actions:?}: facts {:?}, decision {:?}",
                facts_time / iterations,
                decision_time / iterations
            );
        }
    }

    #[test]
    fn no_permit_means_deny() {
        let engine = RuleEngine::load(&[RuleSource {
            name: "only.cedar",
            text: r#"permit (principal, action == GrantBroker::Action::"request", resource) when { resource.environment == "dev" };"#,
        }])
        .unwrap();
        let decision = decide(&engine, &target("staging"), &["s3:GetObject"], 900, "");
        assert_eq!(decision.outcome, Outcome::Deny);
        assert!(decision.policy_ids.is_empty());
        assert_eq!(decision.reason, "no rule permits this request");
    }

    fn engine(text: &str) -> RuleEngine {
        RuleEngine::load(&[RuleSource {
            name: "rules.cedar",
            text,
        }])
        .unwrap()
    }

    /// The rules docs/identity.md shows, taken from it (so the page cannot drift from what
    /// validates), with the example rules beside them.
    fn identity_doc_rules() -> RuleEngine {
        let page = include_str!("../../docs/identity.md");
        let start = page.find("```cedar\n").unwrap() + "```cedar\n".len();
        let end = start + page[start..].find("```").unwrap();
        RuleEngine::load(&[
            RuleSource {
                name: "approval.cedar",
                text: EXAMPLE,
            },
            RuleSource {
                name: "identity.cedar",
                text: &page[start..end],
            },
        ])
        .unwrap()
    }

    fn verified(kind: crate::domain::identity::PrincipalKind, facts: &[(&str, &str)]) -> Verified {
        Verified {
            issuer: "github".into(),
            kind,
            mfa: false,
            auth_time: None,
            groups: BTreeSet::new(),
            facts: facts.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn rules_decide_on_verified_claims_as_the_identity_page_says() {
        use crate::domain::identity::PrincipalKind::{Person, Workload};
        let engine = identity_doc_rules();
        let production = target("production");
        let scopes = scopes(&["s3:GetObject"]);
        let facts = Catalog::builtin().facts(&scopes);
        let now = datetime!(2026-11-25 14:00 UTC);
        let input = |identity| RuleInput {
            caller: "deploy-pipeline",
            requester: "repo:acme/app",
            identity,
            grantee: "job",
            target: &production,
            scopes: &scopes,
            facts: &facts,
            duration_secs: 900,
            extension_secs: 0,
            start: now,
            break_glass: false,
            justification: "deploy",
            ticket: "CHG-1",
            mfa_present: false,
            now,
            acting_caller: "portal",
        };
        let main = verified(Workload, &[("repository_id", "123"), ("ref", "refs/heads/main")]);
        assert_eq!(engine.decide(&input(Some(&main))).outcome, Outcome::RequireApproval);
        let branch = verified(Workload, &[("repository_id", "123"), ("ref", "refs/heads/feature")]);
        let denied = engine.decide(&input(Some(&branch)));
        assert_eq!(
            (denied.outcome, denied.policy_ids),
            (Outcome::Deny, vec!["prod-only-from-main".to_owned()])
        );
        // A job without the facts (a token missing the claim) is denied, not waved through.
        let bare = verified(Workload, &[]);
        assert_eq!(engine.decide(&input(Some(&bare))).outcome, Outcome::Deny);

        let security = BTreeSet::from(["security".to_owned()]);
        let approver = crate::domain::approval::Person::parse("approver", "sam@example.com").unwrap();
        let eligible = |verified: Option<&Verified>| {
            matches!(
                engine.eligible_approver(&input(Some(&main)), &approver, &security, verified),
                Eligibility::Eligible { .. }
            )
        };
        let fresh = Verified {
            mfa: true,
            auth_time: Some(now - time::Duration::minutes(5)),
            ..verified(Person, &[])
        };
        assert!(eligible(Some(&fresh)));
        let stale = Verified {
            auth_time: Some(now - time::Duration::minutes(30)),
            ..fresh.clone()
        };
        assert!(!eligible(Some(&stale)));
        let unknown_time = Verified {
            auth_time: None,
            ..fresh.clone()
        };
        assert!(!eligible(Some(&unknown_time)), "no auth_time is not fresh");
        assert!(!eligible(None), "an asserted approver shows no MFA");
    }

    #[test]
    fn approve_rules_see_which_portal_relays() {
        let engine = engine(
            r#"
            permit (principal, action == GrantBroker::Action::"approve", resource)
            when { context.acting_caller == GrantBroker::Caller::"prod-approvals" };
            "#,
        );
        let production = target("production");
        let scopes = scopes(&["s3:GetObject"]);
        let facts = Catalog::builtin().facts(&scopes);
        let now = datetime!(2026-11-25 14:00 UTC);
        let via = |acting_caller| RuleInput {
            caller: "vendor-portal",
            acting_caller,
            requester: "alice",
            identity: None,
            grantee: "vendor-x",
            target: &production,
            scopes: &scopes,
            facts: &facts,
            duration_secs: 900,
            extension_secs: 0,
            start: now,
            break_glass: false,
            justification: "why",
            ticket: "CHG-1",
            mfa_present: false,
            now,
        };
        let approver = crate::domain::approval::Person::parse("approver", "sam").unwrap();
        let eligible = |acting_caller| {
            matches!(
                engine.eligible_approver(&via(acting_caller), &approver, &BTreeSet::new(), None),
                Eligibility::Eligible { .. }
            )
        };
        assert!(eligible("prod-approvals"));
        assert!(!eligible("any-other-portal"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: crate::testing::fuzz_cases(300), ..Default::default() })]

        /// Fuzzing on stable Rust: whatever the names and the verified facts (any Unicode, as a
        /// token's claims may hold), the Cedar inputs are built and the example rules decide:
        /// nothing fails to evaluate, so nothing is denied for its spelling.
        #[test]
        fn fuzz_names_and_facts_are_always_decided_on(
            requester in "\\PC{1,40}",
            grantee in "\\PC{1,40}",
            justification in "\\PC{0,60}",
            groups in proptest::collection::btree_set("\\PC{1,20}", 0..4),
            facts in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{1,20}", 0..4),
        ) {
            static ENGINE: std::sync::OnceLock<RuleEngine> = std::sync::OnceLock::new();
            let engine = ENGINE.get_or_init(example);
            let staging = target("staging");
            let scopes = scopes(&["s3:GetObject"]);
            let facts_of_scopes = Catalog::builtin().facts(&scopes);
            let now = datetime!(2026-11-25 14:00 UTC);
            let verified = Verified {
                issuer: "corp".into(),
                kind: crate::domain::identity::PrincipalKind::Person,
                mfa: true,
                auth_time: Some(now),
                groups,
                facts,
            };
            let input = RuleInput {
                caller: "portal",
                acting_caller: "portal",
                requester: &requester,
                identity: Some(&verified),
                grantee: &grantee,
                target: &staging,
                scopes: &scopes,
                facts: &facts_of_scopes,
                duration_secs: 900,
                extension_secs: 0,
                start: now,
                break_glass: false,
                justification: &justification,
                ticket: "",
                mfa_present: false,
                now,
            };
            let decision = engine.decide(&input);
            proptest::prop_assert_eq!(decision.outcome, Outcome::Approve, "{}", decision.reason);
            let approver = crate::domain::approval::Person::from_trusted(grantee.clone());
            let _ = engine.eligible_approver(&input, &approver, &verified.groups, Some(&verified));
        }
    }

    // Strict validation accepts these multiplications; evaluating them overflows.
    const OVERFLOW: &str = "context.duration_seconds * 9223372036854775807 > 0";

    #[test]
    fn a_failing_permit_does_not_permit() {
        let engine = engine(&format!(
            r#"@id("overflows") permit (principal, action, resource) when {{ {OVERFLOW} }};"#
        ));
        let decision = decide(&engine, &target("staging"), &["s3:GetObject"], 900, "");
        assert_eq!(decision.outcome, Outcome::Deny);
        assert_eq!(decision.policy_ids, ["overflows"]);
        assert_eq!(decision.reason, "denied because `overflows` failed to evaluate");
    }

    #[test]
    fn a_failing_forbid_denies_instead_of_being_skipped() {
        let engine = engine(&format!(
            r#"{EXAMPLE}
            @id("broken-forbid") forbid (principal, action, resource) when {{ {OVERFLOW} }};"#
        ));
        let decision = decide(&engine, &target("staging"), &["s3:GetObject"], 900, "");
        assert_eq!(decision.outcome, Outcome::Deny, "{decision:?}");
        assert_eq!(decision.policy_ids, ["broken-forbid"]);
    }

    #[test]
    fn a_failing_auto_approve_rule_withholds_automatic_approval() {
        let engine = engine(&format!(
            r#"{EXAMPLE}
            @id("broken-approval-forbid")
            forbid (principal, action == GrantBroker::Action::"auto_approve", resource) when {{ {OVERFLOW} }};"#
        ));
        let decision = decide(&engine, &target("staging"), &["s3:GetObject"], 900, "");
        assert_eq!(decision.outcome, Outcome::RequireApproval, "{decision:?}");
        assert_eq!(decision.policy_ids, ["broken-approval-forbid", "callers-may-request"]);
        assert!(
            decision
                .reason
                .contains("withheld because `broken-approval-forbid` failed"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn invalid_rules_are_reported_all_at_once() {
        let problems = RuleEngine::load(&[
            RuleSource { name: "a.cedar", text: "permit (principal, action, resource) when { context.nope };" },
            RuleSource { name: "b.cedar", text: "permit (principal, action" },
            RuleSource { name: "c.cedar", text: r#"@id("x") permit (principal, action, resource); @id("x") forbid (principal, action, resource);"# },
            RuleSource { name: "d.cedar", text: r#"@id("y") @approvals("security") permit (principal, action, resource);"# },
        ])
        .unwrap_err();
        // One parse error, one duplicate id, a bad @approvals, and a schema error for each of
        // the five actions `a.cedar` covers.
        assert_eq!(problems.len(), 8, "{problems:?}");
        assert!(problems[0].starts_with("b.cedar:"), "{problems:?}");
        assert!(problems[1].starts_with("c.cedar: policy `x`"), "{problems:?}");
        assert!(
            problems[2].starts_with("d.cedar: policy `y`: @approvals: `security` is not `group:count`"),
            "{problems:?}"
        );
        assert!(
            problems[3].starts_with("for policy `a.cedar#0`, attribute `nope`"),
            "{problems:?}"
        );
    }
}
