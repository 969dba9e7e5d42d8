//! `check-config --explain FILE.json`: sample requests with the outcomes the operator expects,
//! decided by the configuration's own rules without a server, Redis or AWS, so rule changes
//! can be tested in CI like code.
//!
//! The file is a JSON array of cases:
//!
//! ```json
//! [{
//!   "name": "production reads wait for security and a lead",
//!   "caller": "vendor-portal",
//!   "at": "2026-11-30T10:00:00Z",
//!   "request": { "target": "prod-logs-read", "actions": ["s3:GetObject"],
//!                "resources": ["arn:aws:s3:::acme-prod-logs/*"], "duration_secs": 3600,
//!                "requester": "alice@example.com", "grantee": "vendor-x", "ticket": "CHG-1" },
//!   "expect": { "outcome": "pending_approval", "approvals_required": "security:1, team-leads:1",
//!               "policy_ids": ["callers-may-request", "production-needs-security-and-a-lead"],
//!               "eligible_approvers": ["sam@example.com", "lee@example.com"] }
//! }]
//! ```
//!
//! `at` (default: now), `policy_ids`, `approvals_required` and `eligible_approvers` are optional;
//! `outcome` is `approve`, `pending_approval`, `deny` or `invalid` (refused before the rules).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    broker::{BrokerError, explain::explain},
    config::{CallerConfig, Config},
    domain::Outcome,
    grpc::{inbound::validate_access_request, proto},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    caller: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    at: Option<OffsetDateTime>,
    request: CaseRequest,
    expect: Expectation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    target: String,
    actions: Vec<String>,
    resources: Vec<String>,
    duration_secs: i64,
    requester: String,
    grantee: String,
    #[serde(default)]
    justification: String,
    #[serde(default)]
    ticket: String,
    /// Whether the request carries an MFA code (a placeholder device and code are used).
    #[serde(default)]
    mfa: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    outcome: String,
    policy_ids: Option<Vec<String>>,
    approvals_required: Option<String>,
    eligible_approvers: Option<BTreeSet<String>>,
}

/// Runs every case; the report has a line per case. `Err` when a case failed or the file is
/// not a list of cases.
pub fn run(config: &Config, text: &str) -> Result<String, String> {
    let cases: Vec<Case> = serde_json::from_str(text).map_err(|error| format!("not a list of cases: {error}"))?;
    let targets: BTreeMap<String, _> = config
        .targets
        .iter()
        .map(|target| (target.id.clone(), target.clone()))
        .collect();
    let mut report = String::new();
    let mut failed = 0;
    for case in &cases {
        match check(config, &targets, case) {
            Ok(()) => report.push_str(&format!("ok    {}\n", case.name)),
            Err(why) => {
                failed += 1;
                report.push_str(&format!("FAIL  {}: {why}\n", case.name));
            }
        }
    }
    report.push_str(&format!("{} case(s), {failed} failed\n", cases.len()));
    if failed == 0 { Ok(report) } else { Err(report) }
}

fn check(config: &Config, targets: &BTreeMap<String, crate::domain::Target>, case: &Case) -> Result<(), String> {
    let caller = config
        .callers
        .iter()
        .find(|caller| caller.id.as_str() == case.caller)
        .map(CallerConfig::caller)
        .ok_or_else(|| format!("no caller `{}` in the configuration", case.caller))?;
    let request = &case.request;
    let validated = validate_access_request(proto::RequestAccessRequest {
        target: request.target.clone(),
        scopes: vec![proto::Scope {
            actions: request.actions.clone(),
            resources: request.resources.clone(),
        }],
        duration: Some(prost_types::Duration {
            seconds: request.duration_secs,
            nanos: 0,
        }),
        justification: request.justification.clone(),
        ticket: request.ticket.clone(),
        requester: request.requester.clone(),
        grantee: request.grantee.clone(),
        mfa_serial: if request.mfa {
            "arn:aws:iam::000000000000:mfa/sample".to_owned()
        } else {
            String::new()
        },
        mfa_code: if request.mfa { "000000" } else { "" }.to_owned(),
        ..proto::RequestAccessRequest::default()
    });
    let at = case.at.unwrap_or_else(OffsetDateTime::now_utc);
    let explained = validated
        .map_err(BrokerError::InvalidRequest)
        .and_then(|request| explain(&config.rules, targets, &config.broker, &caller, &request, at));
    let expect = &case.expect;
    let explanation = match explained {
        Err(_) if expect.outcome == "invalid" => return Ok(()),
        Err(error) => {
            return Err(format!(
                "expected {}, but the request was refused: {error}",
                expect.outcome
            ));
        }
        Ok(explanation) => explanation,
    };
    let decision = &explanation.decision;
    let outcome = match decision.outcome {
        Outcome::Approve => "approve",
        Outcome::RequireApproval => "pending_approval",
        Outcome::Deny => "deny",
    };
    let mut wrong = Vec::new();
    if outcome != expect.outcome {
        wrong.push(format!(
            "outcome {outcome}, expected {} ({})",
            expect.outcome, decision.reason
        ));
    }
    if let Some(ids) = &expect.policy_ids
        && *ids != decision.policy_ids
    {
        wrong.push(format!("policy ids {:?}, expected {ids:?}", decision.policy_ids));
    }
    if let Some(required) = &expect.approvals_required {
        let actual = decision.approvals_required.to_annotation();
        if *required != actual {
            wrong.push(format!("approvals required `{actual}`, expected `{required}`"));
        }
    }
    if let Some(approvers) = &expect.eligible_approvers {
        let actual: BTreeSet<String> = explanation.eligible_approvers.iter().map(ToString::to_string).collect();
        if *approvers != actual {
            wrong.push(format!("eligible approvers {actual:?}, expected {approvers:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} (at {})",
            wrong.join("; "),
            at.format(&Rfc3339).unwrap_or_default()
        ))
    }
}
