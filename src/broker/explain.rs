//! A dry run of a request: what the rules would decide, which approvals it would need and who
//! could give them, how long its sessions would last and the exact session policy. Creates
//! nothing and calls no AWS API, so operators can try rule changes (`grant-broker explain`,
//! `check-config --explain`), and portals can show a requester what will happen.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::{BrokerError, BrokerSettings, max_duration_secs};
use crate::{
    domain::{
        AccessRequest, Caller, Decision, FieldViolation, Target, approval::Person, iam::Catalog,
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
    let target = targets
        .get(&request.target)
        .filter(|_| caller.may_request(&request.target))
        .ok_or_else(|| BrokerError::TargetNotAllowed {
            caller: caller.id.to_string(),
            target: request.target.clone(),
        })?;
    let max_secs = max_duration_secs(target, settings.role_chaining);
    let violations = request.check_start(at);
    if !violations.is_empty() {
        return Err(BrokerError::InvalidRequest(violations));
    }
    let start = request.start.map_or(at, |start| start.max(at));
    let end = start + Duration::seconds(i64::try_from(request.duration_secs).unwrap_or(i64::MAX));
    let session_policy = build_session_policy(&request.scopes, end)
        .map_err(|why| BrokerError::InvalidRequest(vec![FieldViolation::new("scopes", why)]))?;
    let violations = request.check_against(target, max_secs);
    if !violations.is_empty() {
        return Err(BrokerError::InvalidRequest(violations));
    }
    let facts = Catalog::builtin().facts(&request.scopes);
    let violations = request.check_known_actions(target, &facts);
    if !violations.is_empty() {
        return Err(BrokerError::InvalidRequest(violations));
    }
    let input = RuleInput {
        caller: caller.id.as_str(),
        requester: &request.requester,
        grantee: &request.grantee,
        target,
        scopes: &request.scopes,
        facts: &facts,
        duration_secs: request.duration_secs,
        extension_secs: 0,
        start,
        break_glass: request.break_glass,
        justification: &request.justification,
        ticket: &request.ticket,
        mfa_present: request.mfa.is_some(),
        now: at,
    };
    let decision = rules.decide(&input);
    let eligible_approvers = settings
        .approver_groups
        .iter()
        .filter(|(person, _)| person.as_str() != request.requester)
        .filter(|(person, groups)| {
            matches!(
                rules.eligible_approver(&input, person, groups),
                Eligibility::Eligible { .. }
            )
        })
        .map(|(person, _)| person.clone())
        .collect();
    Ok(Explanation {
        decision,
        eligible_approvers,
        session_duration_secs: request.duration_secs.min(max_secs),
        session_policy,
        at,
    })
}
