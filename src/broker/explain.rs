//! A dry run of a request: what the rules would decide, which approvals it would need and who
//! could give them, how long its sessions would last and the exact session policy. Creates
//! nothing and calls no AWS API, so operators can try rule changes (`grant-broker explain`,
//! `check-config --explain`), and portals can show a requester what will happen.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::{BrokerError, BrokerSettings, attribute, max_duration_secs};
use crate::{
    domain::{
        AccessRequest, Caller, Decision, FieldViolation, Target,
        approval::Person,
        iam::{ActionFacts, Catalog},
        identity::{AssertionPolicy, Attribution, Claimed},
        policy::build_session_policy,
    },
    rules::{Eligibility, RuleEngine, RuleInput},
};

/// What a request would get, were it made at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// The configured approvers the rules would let decide on it (never the requester).
    pub eligible_approvers: Vec<Person>,
    /// How long its first session would last: the requested duration within every cap.
    pub session_duration_secs: u64,
    /// The exact session policy STS would receive, for a window starting at `at` (or at the
    /// requested start).
    pub session_policy: String,
    pub at: OffsetDateTime,
}

/// A request checked against its target, as RequestAccess and Explain both check it (so Explain
/// answers with exactly RequestAccess's errors): the target the caller may use, the start, the
/// session policy's size, the ceiling and the target's caps, then the actions the catalog knows.
#[derive(Debug)]
pub struct Vetted<'a> {
    pub target: &'a Target,
    /// The longest session STS issues on it for this broker.
    pub max_duration_secs: u64,
    /// The window it would get now: from now (or the requested start) for the duration.
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub session_policy: String,
    /// What its action patterns match (computed once, for the checks and the rules).
    pub facts: ActionFacts<'static>,
    /// Who asks, and how the broker knows.
    pub requester: Attribution,
}

/// The target `id` as `caller` may use it. Unknown targets and targets the caller may not use get
/// the same answer, so a caller cannot probe for targets it was not given.
pub fn target_for<'a>(
    targets: &'a BTreeMap<String, Target>,
    caller: &Caller,
    id: &str,
) -> Result<&'a Target, BrokerError> {
    targets
        .get(id)
        .filter(|_| caller.may_request(id))
        .ok_or_else(|| BrokerError::TargetNotAllowed {
            caller: caller.id.to_string(),
            target: id.to_owned(),
        })
}

/// Checks `request` of `caller` at `now`, in the order that bounds the work each check can be
/// made to do.
pub fn vet<'a>(
    targets: &'a BTreeMap<String, Target>,
    settings: &BrokerSettings,
    caller: &Caller,
    request: &AccessRequest,
    now: OffsetDateTime,
) -> Result<Vetted<'a>, BrokerError> {
    let target = target_for(targets, caller, &request.target)?;
    let requester = requester(caller, target, request)?;
    let max_duration_secs = max_duration_secs(target, settings.role_chaining);
    let violations = request.check_start(now);
    if !violations.is_empty() {
        return Err(BrokerError::InvalidRequest(violations));
    }
    let start = request.start.map_or(now, |start| start.max(now));
    let end = start + Duration::seconds(i64::try_from(request.duration_secs).unwrap_or(i64::MAX));
    // The size check comes first: it bounds the work the containment check can be made to do.
    let session_policy = build_session_policy(&request.scopes, end)
        .map_err(|why| BrokerError::InvalidRequest(vec![FieldViolation::new("scopes", why)]))?;
    let violations = request.check_against(target, max_duration_secs);
    if !violations.is_empty() {
        return Err(BrokerError::InvalidRequest(violations));
    }
    // Expanded only once the scopes are known to lie inside the ceiling: a pattern with a
    // wildcard service scans the whole catalog, and only a ceiling that has one lets it in.
    let facts = Catalog::builtin().facts(&request.scopes);
    let violations = request.check_known_actions(target, &facts);
    if !violations.is_empty() {
        return Err(BrokerError::InvalidRequest(violations));
    }
    Ok(Vetted {
        target,
        max_duration_secs,
        start,
        end,
        session_policy,
        facts,
        requester,
    })
}

/// Who a request says asks: the subject of the identity token the call carries (the message may only
/// agree), else the name it sends, which a caller may assert only for itself unless it may
/// assert people; never unverified where the target demands a verified requester.
fn requester(caller: &Caller, target: &Target, request: &AccessRequest) -> Result<Attribution, BrokerError> {
    let named = match request.requester.as_str() {
        "" => None,
        name => {
            Some(Person::parse("requester", name).map_err(|violation| BrokerError::InvalidRequest(vec![violation]))?)
        }
    };
    let claimed = Claimed {
        named,
        token: caller.call_token.clone(),
    };
    let policy = AssertionPolicy {
        may_assert_people: caller.assert_people,
        must_be_verified: target.identity.requester_must_be_verified,
        person_only: false,
    };
    attribute(caller, &claimed, "requester", policy)
}

impl Vetted<'_> {
    /// What the rules decide the request on.
    pub fn rule_input<'b>(
        &'b self,
        caller: &'b Caller,
        request: &'b AccessRequest,
        now: OffsetDateTime,
    ) -> RuleInput<'b> {
        RuleInput {
            caller: caller.id.as_str(),
            acting_caller: caller.id.as_str(),
            requester: &self.requester.name,
            identity: self.requester.verified.as_ref(),
            grantee: &request.grantee,
            target: self.target,
            scopes: &request.scopes,
            facts: &self.facts,
            duration_secs: request.duration_secs,
            extension_secs: 0,
            start: self.start,
            break_glass: request.break_glass,
            justification: &request.justification,
            ticket: &request.ticket,
            mfa_present: request.mfa.is_some(),
            now,
        }
    }
}

/// The request checked and decided as [`super::Broker::request_access`] would, without any of
/// its effects.
pub fn explain(
    rules: &RuleEngine,
    targets: &BTreeMap<String, Target>,
    settings: &BrokerSettings,
    caller: &Caller,
    request: &AccessRequest,
    at: OffsetDateTime,
) -> Result<Explanation, BrokerError> {
    let vetted = vet(targets, settings, caller, request, at)?;
    let input = vetted.rule_input(caller, request, at);
    let decision = rules.decide(&input);
    let eligible_approvers = settings
        .approver_groups
        .iter()
        .filter(|(person, _)| person.as_str() != vetted.requester.name)
        .filter(|(person, groups)| {
            matches!(
                rules.eligible_approver(&input, person, groups, None),
                Eligibility::Eligible { .. }
            )
        })
        .map(|(person, _)| person.clone())
        .collect();
    Ok(Explanation {
        decision,
        eligible_approvers,
        session_duration_secs: request.duration_secs.min(vetted.max_duration_secs),
        session_policy: vetted.session_policy,
        at,
    })
}
