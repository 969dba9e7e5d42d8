//! Answers out: the broker's results as protobuf messages. Never a secret, except the
//! credentials IssueCredentials and RequestAccess return.

use time::OffsetDateTime;
use tonic::Status;

use super::proto;
use crate::{
    broker::{
        Explanation,
        revocation::{GranteeRevocation, TargetCutoff},
        watch::GrantChange,
    },
    domain::{
        Decision, Grant, GrantEvent, GrantState, Issuance, IssuedCredentials, Outcome, Scope, Target,
        approval::Approval,
        audit::AuditEntry,
        extension::{Extension, ExtensionState},
        identity::{Attribution, Verified},
        revocation::{Enforcement, EnforcementStatus, Revocation},
    },
};

fn enforcement_status(status: EnforcementStatus) -> proto::EnforcementStatus {
    match status {
        EnforcementStatus::Pending => proto::EnforcementStatus::Pending,
        EnforcementStatus::Enforced => proto::EnforcementStatus::Enforced,
        EnforcementStatus::NotNeeded => proto::EnforcementStatus::NotNeeded,
        EnforcementStatus::Failed => proto::EnforcementStatus::Failed,
        EnforcementStatus::NotAvailable => proto::EnforcementStatus::NotAvailable,
    }
}

pub fn grantee_revocation(outcome: GranteeRevocation) -> proto::RevokeGranteeResponse {
    proto::RevokeGranteeResponse {
        operation_id: outcome.operation,
        outcomes: outcome
            .outcomes
            .into_iter()
            .map(|(id, result)| match result {
                Ok(revoked) => proto::GranteeRevocationOutcome {
                    grant_id: id.to_string(),
                    grant: Some(grant(revoked)),
                    error: None,
                },
                Err(error) => proto::GranteeRevocationOutcome {
                    grant_id: id.to_string(),
                    grant: None,
                    error: Some(super::status::rich_status(Status::from(error))),
                },
            })
            .collect(),
        truncated: outcome.truncated,
        examined: count(outcome.examined),
        near_misses: outcome
            .near_misses
            .into_iter()
            .map(|(grantee, live_grants)| proto::GranteeNearMiss {
                grantee,
                live_grants: count(live_grants),
            })
            .collect(),
    }
}

/// A count for an `int32` field (counts here are bounded far below its range).
fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub fn target_cutoff(cut: &TargetCutoff) -> proto::RevokeTargetSessionsResponse {
    proto::RevokeTargetSessionsResponse {
        target: cut.target.clone(),
        role_arn: cut.role_arn.clone(),
        cutoff_time: Some(timestamp(cut.cutoff.at)),
        cutoff_expire_time: Some(timestamp(cut.cutoff.until)),
        enforcement: enforcement_status(cut.status).into(),
        enforcement_error: cut.error.clone().unwrap_or_default(),
    }
}

/// A revoked grant's revocation as callers see it, with where each session's deny stands.
fn revocation(
    revocation: Option<&Revocation>,
    enforcement: Option<&Enforcement>,
    issuances: &[Issuance],
) -> Option<proto::Revocation> {
    let revocation = revocation?;
    let status = enforcement.map_or(EnforcementStatus::Pending, |e| e.status);
    Some(proto::Revocation {
        caller: revocation.caller.clone(),
        revoker_identity: revocation
            .revoker
            .as_ref()
            .map(|name| identity(name, revocation.revoker_verified.as_ref())),
        revoker: revocation.revoker.clone().unwrap_or_default(),
        revoke_time: Some(timestamp(revocation.at)),
        reason: revocation.reason.clone(),
        operation_id: revocation.operation.clone().unwrap_or_default(),
        enforcement: enforcement_status(status).into(),
        enforcement_error: enforcement.and_then(|e| e.error.clone()).unwrap_or_default(),
        enforcement_time: enforcement.map(|e| timestamp(e.at)),
        cutoff_time: enforcement.and_then(|e| e.cutoff).map(timestamp),
        sessions: issuances
            .iter()
            .map(|issuance| proto::SessionEnforcement {
                session_name: issuance.session_name.clone(),
                access_key_id: issuance.access_key_id.clone(),
                expire_time: Some(timestamp(issuance.expiration)),
                // A session already expired when the grant was revoked needed nothing.
                enforcement: enforcement_status(if issuance.expiration <= revocation.at {
                    EnforcementStatus::NotNeeded
                } else {
                    status
                })
                .into(),
            })
            .collect(),
    })
}

pub fn found_by_access_key(grant: Grant, found: Option<Issuance>) -> proto::FindGrantByAccessKeyResponse {
    proto::FindGrantByAccessKeyResponse {
        grant: Some(self::grant(grant)),
        issuance: found.as_ref().map(issuance),
    }
}

pub fn audit_event(entry: &AuditEntry) -> proto::AuditEvent {
    let (target, account_id, grant_caller) = entry.grant_context();
    proto::AuditEvent {
        cursor: entry.cursor.to_string(),
        event_time: Some(timestamp(entry.at())),
        event: entry.name().to_owned(),
        grant_id: entry.grant_id().map(|id| id.to_string()).unwrap_or_default(),
        actor: entry.actor().to_owned(),
        caller: entry.caller().to_owned(),
        target: target.to_owned(),
        account_id: account_id.to_owned(),
        grant_caller: grant_caller.to_owned(),
        event_json: entry.event_json(),
        person: entry.person().map(attribution),
        integrity: entry.seal.clone().unwrap_or_default(),
    }
}

/// How the broker knew `name`: by `verified`, or only the caller's word.
fn identity(name: &str, verified: Option<&Verified>) -> proto::Identity {
    let Some(verified) = verified else {
        return proto::Identity {
            name: name.to_owned(),
            proof: proto::IdentityProof::Asserted.into(),
            ..proto::Identity::default()
        };
    };
    proto::Identity {
        name: name.to_owned(),
        proof: proto::IdentityProof::Verified.into(),
        issuer: verified.issuer.clone(),
        kind: verified.kind.as_str().to_owned(),
        mfa: verified.mfa,
        auth_time: verified.auth_time.map(timestamp),
        groups: verified.groups.iter().cloned().collect(),
        facts: verified.facts.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn attribution(attribution: &Attribution) -> proto::Identity {
    identity(&attribution.name, attribution.verified.as_ref())
}

pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

fn scope(scope: &Scope) -> proto::Scope {
    proto::Scope {
        actions: scope.actions.iter().map(|a| a.as_str().to_owned()).collect(),
        resources: scope.resources.iter().map(|r| r.as_str().to_owned()).collect(),
    }
}

pub fn target(target: &Target, max_duration_secs: u64) -> proto::Target {
    proto::Target {
        id: target.id.clone(),
        description: target.description.clone(),
        environment: target.environment.clone(),
        account_id: target.account_id.clone(),
        role_arn: target.role_arn.clone(),
        region: target.region.clone(),
        ceiling: target.ceiling.iter().map(scope).collect(),
        max_duration: Some(prost_types::Duration {
            seconds: i64::try_from(max_duration_secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        mfa_required: target.mfa_required,
    }
}

/// A state as the API's enum names it (`GRANT_STATE_PENDING_APPROVAL`): how every
/// machine-readable part of the gRPC surface spells it, error details included.
pub fn state_name(grant_state: GrantState) -> &'static str {
    state(grant_state).as_str_name()
}

fn state(state: GrantState) -> proto::GrantState {
    match state {
        GrantState::PendingApproval => proto::GrantState::PendingApproval,
        GrantState::Approved => proto::GrantState::Approved,
        GrantState::Denied => proto::GrantState::Denied,
        GrantState::Expired => proto::GrantState::Expired,
        GrantState::Cancelled => proto::GrantState::Cancelled,
        GrantState::Revoked => proto::GrantState::Revoked,
    }
}

pub fn history(found: Grant, events: &[GrantEvent]) -> proto::GetGrantHistoryResponse {
    proto::GetGrantHistoryResponse {
        grant: Some(grant(found)),
        events: (1..)
            .zip(events)
            .map(|(cursor, event)| proto::GrantEvent {
                cursor,
                event_time: Some(timestamp(event.at)),
                event: event.kind.name().to_owned(),
                actor: event.actor().to_owned(),
                caller: event.caller.clone(),
                event_json: event_json(event),
                person: event.person.as_ref().map(attribution),
            })
            .collect(),
    }
}

/// An event as the audit trail holds it (serialising these types cannot fail).
fn event_json(event: &GrantEvent) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

pub fn grant_change(change: GrantChange) -> proto::GrantChange {
    let (event, event_json, event_time) = match &change.event {
        None => (String::new(), String::new(), None),
        Some(event) => (
            event.kind.name().to_owned(),
            event_json(event),
            Some(timestamp(event.at)),
        ),
    };
    proto::GrantChange {
        grant: Some(grant(change.grant)),
        event,
        event_json,
        event_time,
        cursor: change.cursor,
    }
}

pub fn explanation(explanation: &Explanation) -> proto::ExplainResponse {
    proto::ExplainResponse {
        decision: Some(decision(&explanation.decision)),
        approvals_required: explanation.decision.approvals_required.to_annotation(),
        eligible_approvers: explanation.eligible_approvers.iter().map(ToString::to_string).collect(),
        session_duration: Some(prost_types::Duration {
            seconds: i64::try_from(explanation.session_duration_secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        session_policy: explanation.session_policy.clone(),
        evaluate_time: Some(timestamp(explanation.at)),
    }
}

fn decision(decision: &Decision) -> proto::Decision {
    let outcome = match decision.outcome {
        Outcome::Approve => proto::DecisionOutcome::Approve,
        Outcome::RequireApproval => proto::DecisionOutcome::RequireApproval,
        Outcome::Deny => proto::DecisionOutcome::Deny,
    };
    proto::Decision {
        outcome: outcome.into(),
        policy_ids: decision.policy_ids.clone(),
        reason: decision.reason.clone(),
        decide_time: Some(timestamp(decision.decided_at)),
    }
}

fn issuance(issuance: &Issuance) -> proto::Issuance {
    proto::Issuance {
        access_key_id: issuance.access_key_id.clone(),
        session_name: issuance.session_name.clone(),
        source_identity: issuance.source_identity.clone(),
        assumed_role_arn: issuance.assumed_role_arn.clone(),
        expire_time: Some(timestamp(issuance.expiration)),
        issue_time: Some(timestamp(issuance.issued_at)),
        packed_policy_percent: issuance.packed_policy_percent.unwrap_or(0),
    }
}

fn approval(approval: &Approval) -> proto::Approval {
    proto::Approval {
        approver: approval.approver.to_string(),
        groups: approval.groups.iter().cloned().collect(),
        approve_time: Some(timestamp(approval.at)),
        comment: approval.comment.clone(),
        caller: approval.caller.clone(),
        approver_identity: Some(identity(approval.approver.as_str(), approval.verified.as_ref())),
    }
}

fn extension(extension: &Extension) -> proto::Extension {
    let state = match extension.state {
        ExtensionState::Pending => proto::ExtensionState::Pending,
        ExtensionState::Approved => proto::ExtensionState::Approved,
        ExtensionState::Denied => proto::ExtensionState::Denied,
    };
    let (denied_by, deny_reason) = extension
        .denied_by
        .as_ref()
        .map(|(person, reason)| (person.to_string(), reason.clone()))
        .unwrap_or_default();
    proto::Extension {
        number: extension.number,
        state: state.into(),
        additional_duration: Some(prost_types::Duration {
            seconds: i64::try_from(extension.additional_secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        justification: extension.justification.clone(),
        request_time: Some(timestamp(extension.requested_at)),
        caller: extension.caller.clone(),
        request_id: extension.request_id.clone().unwrap_or_default(),
        decision: Some(decision(&extension.decision)),
        approvals_required: extension.decision.approvals_required.to_annotation(),
        approvals: extension.approvals.iter().map(approval).collect(),
        denied_by,
        deny_reason,
        new_end_time: extension.new_end.map(timestamp),
    }
}

/// A grant as callers see it. Every field is destructured: a new one does not compile here until
/// someone decides whether callers see it.
pub fn grant(grant: Grant) -> proto::Grant {
    let Grant {
        id,
        state: grant_state,
        request_id,
        caller,
        target,
        account_id,
        role_arn,
        region,
        requester,
        requester_verified,
        grantee,
        scopes,
        session_policy,
        justification,
        ticket,
        // Sent to STS at issue time; callers know which device they use.
        mfa_serial: _,
        created_at,
        start,
        end,
        pending_until,
        decision: grant_decision,
        approvals,
        review,
        issuances,
        issuance_count,
        // Internal: which role incarnations the sessions were issued under, for enforcement.
        session_roles: _,
        extensions,
        revocation: grant_revocation,
        enforcement,
        role_cutoff,
    } = grant;
    proto::Grant {
        id: id.to_string(),
        state: state(grant_state).into(),
        request_id: request_id.unwrap_or_default(),
        target,
        account_id,
        role_arn,
        region,
        requester_identity: Some(identity(&requester, requester_verified.as_ref())),
        requester,
        grantee,
        caller: caller.to_string(),
        scopes: scopes.iter().map(scope).collect(),
        session_policy,
        justification,
        ticket,
        create_time: Some(timestamp(created_at)),
        start_time: Some(timestamp(start)),
        end_time: Some(timestamp(end)),
        revocation: revocation(grant_revocation.as_ref(), enforcement.as_ref(), &issuances),
        issuances: issuances.iter().map(issuance).collect(),
        issuance_count: u32::try_from(issuance_count).unwrap_or(u32::MAX),
        approvals: approvals.iter().map(approval).collect(),
        extensions: extensions.iter().map(extension).collect(),
        sessions_denied_before_time: role_cutoff.as_ref().map(|cutoff| timestamp(cutoff.at)),
        approvals_required: grant_decision.approvals_required.to_annotation(),
        pending_expire_time: Some(timestamp(pending_until)),
        break_glass: grant_decision.break_glass,
        decision: Some(decision(&grant_decision)),
        review: review.map(|review| proto::Review {
            reviewer: review.reviewer.to_string(),
            review_time: Some(timestamp(review.at)),
            reviewer_identity: Some(identity(review.reviewer.as_str(), review.verified.as_ref())),
            comment: review.comment,
            caller: review.caller,
        }),
    }
}

/// The one place secrets are copied out of [`crate::domain::Secret`]: into the response.
pub fn credentials(credentials: IssuedCredentials, region: &str) -> proto::Credentials {
    proto::Credentials {
        access_key_id: credentials.access_key_id,
        secret_access_key: credentials.secret_access_key.expose().to_owned(),
        session_token: credentials.session_token.expose().to_owned(),
        expire_time: Some(timestamp(credentials.expiration)),
        assumed_role_arn: credentials.assumed_role_arn,
        region: region.to_owned(),
    }
}
