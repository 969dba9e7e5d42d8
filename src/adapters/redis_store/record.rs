//! How a grant is written to Redis, and read back from any version that was ever written.
//!
//! The grant hash holds `v` (the record version), `state`, `doc` (what the request fixed, as
//! JSON), `attempts` (STS calls made for it) and, once an approval starts the window, `window`
//! (start, end and the session policy they imply). Issuances and approvals are JSON entries of
//! lists of their own. These types, not the domain's, define the stored format, so a domain field
//! can be renamed without making 400 days of records unreadable.
//!
//! Versions:
//! - 1: the format of the first release. Its records carry no `v` field; a missing `v` means 1.
//! - 2: the doc gains `approvals_required` and `pending_until`; the hash may hold `window`; the
//!   grant has an approvals list. A version 1 record reads as needing one approval, pending
//!   until its end. Added later within version 2, without changing what was there: the hash may
//!   hold `extensions` (a JSON array, absent when there are none) and `ext_tag` (see
//!   [`extensions_tag`]), and for a revoked grant `revocation` and `enforcement`; a release that
//!   does not know them reads the grant correctly, its window and state included, only without
//!   its extension history and revocation details.
//!
//! INVARIANT: a record is read back leniently (patterns a later release refuses still read, so
//! old grants stay visible) and is never trusted for issuance as is: the broker re-validates
//! scopes and rebuilds the session policy before calling STS.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{
    ActionPattern, CallerId, Decision, Grant, GrantId, GrantState, Issuance, Outcome, ResourcePattern, Scope,
    approval::{Approval, ApprovalRequirement, Person, Review},
    extension::{Extension, ExtensionState},
    revocation::{Enforcement, EnforcementStatus, Revocation},
};

/// The version this release writes.
pub const CURRENT_VERSION: u32 = 2;

/// The doc of versions 1 and 2 (2 only adds optional fields).
#[derive(Serialize, Deserialize)]
struct GrantDoc {
    id: String,
    request_id: Option<String>,
    fingerprint: String,
    caller: String,
    target: String,
    account_id: String,
    role_arn: String,
    region: String,
    requester: String,
    grantee: String,
    scopes: Vec<ScopeV1>,
    session_policy: String,
    justification: String,
    ticket: String,
    mfa_serial: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    end: OffsetDateTime,
    decision: DecisionV1,
    /// Version 2: the `@approvals` requirement, in annotation form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approvals_required: Option<String>,
    /// Version 2.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pending_until: Option<OffsetDateTime>,
}

/// The `window` field: set when an approval starts the window.
#[derive(Serialize, Deserialize)]
struct WindowV2 {
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    end: OffsetDateTime,
    session_policy: String,
}

#[derive(Serialize, Deserialize)]
struct ReviewV2 {
    reviewer: String,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    comment: String,
    caller: String,
}

#[derive(Serialize, Deserialize)]
struct ApprovalV2 {
    approver: String,
    groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    comment: String,
    caller: String,
}

#[derive(Serialize, Deserialize)]
struct ExtensionV2 {
    number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    additional_secs: u64,
    justification: String,
    #[serde(with = "time::serde::rfc3339")]
    requested_at: OffsetDateTime,
    caller: String,
    decision: DecisionV1,
    approvals_required: String,
    state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    approvals: Vec<ApprovalV2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    denied_by: Option<(String, String)>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    new_end: Option<OffsetDateTime>,
}

#[derive(Serialize, Deserialize)]
struct RevocationV2 {
    caller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoker: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operation: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct EnforcementV2 {
    status: EnforcementStatus,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    cutoff: Option<OffsetDateTime>,
}

#[derive(Serialize, Deserialize)]
struct ScopeV1 {
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct DecisionV1 {
    outcome: OutcomeV1,
    policy_ids: Vec<String>,
    reason: String,
    #[serde(with = "time::serde::rfc3339")]
    decided_at: OffsetDateTime,
    /// Version 2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    break_glass: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeV1 {
    Approve,
    RequireApproval,
    Deny,
}

#[derive(Serialize, Deserialize)]
struct IssuanceV1 {
    access_key_id: String,
    session_name: String,
    source_identity: String,
    assumed_role_arn: String,
    #[serde(with = "time::serde::rfc3339")]
    expiration: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    packed_policy_percent: Option<i32>,
}

fn encode<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|error| format!("cannot encode: {error}"))
}

fn decision_v1(decision: &Decision) -> DecisionV1 {
    DecisionV1 {
        outcome: match decision.outcome {
            Outcome::Approve => OutcomeV1::Approve,
            Outcome::RequireApproval => OutcomeV1::RequireApproval,
            Outcome::Deny => OutcomeV1::Deny,
        },
        policy_ids: decision.policy_ids.clone(),
        reason: decision.reason.clone(),
        decided_at: decision.decided_at,
        break_glass: decision.break_glass,
    }
}

fn decision_from_v1(decision: DecisionV1, approvals_required: ApprovalRequirement) -> Decision {
    Decision {
        outcome: match decision.outcome {
            OutcomeV1::Approve => Outcome::Approve,
            OutcomeV1::RequireApproval => Outcome::RequireApproval,
            OutcomeV1::Deny => Outcome::Deny,
        },
        policy_ids: decision.policy_ids,
        reason: decision.reason,
        decided_at: decision.decided_at,
        approvals_required,
        break_glass: decision.break_glass,
    }
}

/// What the change script compares before replacing a grant's extensions: every extension change
/// alters it (a new extension, the last one's state, or its approvals), so it is a
/// compare-and-set token that needs no counter of its own.
pub fn extensions_tag(extensions: &[Extension]) -> String {
    match extensions.last() {
        None => "0".to_owned(),
        Some(last) => format!("{}/{}/{}", extensions.len(), last.state.as_str(), last.approvals.len()),
    }
}

/// The `extensions` field.
pub fn encode_extensions(extensions: &[Extension]) -> Result<String, String> {
    let stored: Vec<ExtensionV2> = extensions
        .iter()
        .map(|extension| ExtensionV2 {
            number: extension.number,
            request_id: extension.request_id.clone(),
            additional_secs: extension.additional_secs,
            justification: extension.justification.clone(),
            requested_at: extension.requested_at,
            caller: extension.caller.clone(),
            decision: decision_v1(&extension.decision),
            approvals_required: extension.decision.approvals_required.to_annotation(),
            state: extension.state.as_str().to_owned(),
            approvals: extension.approvals.iter().map(approval_v2).collect(),
            denied_by: extension
                .denied_by
                .as_ref()
                .map(|(person, reason)| (person.as_str().to_owned(), reason.clone())),
            new_end: extension.new_end,
        })
        .collect();
    encode(&stored)
}

fn decode_extensions(text: &str) -> Result<Vec<Extension>, String> {
    let stored: Vec<ExtensionV2> = serde_json::from_str(text).map_err(|error| format!("extensions: {error}"))?;
    stored
        .into_iter()
        .map(|extension| {
            let approvals_required = ApprovalRequirement::parse(&extension.approvals_required)
                .map_err(|why| format!("extension {}: approvals_required: {why}", extension.number))?;
            Ok(Extension {
                number: extension.number,
                request_id: extension.request_id,
                additional_secs: extension.additional_secs,
                justification: extension.justification,
                requested_at: extension.requested_at,
                caller: extension.caller,
                decision: decision_from_v1(extension.decision, approvals_required),
                state: ExtensionState::parse(&extension.state)
                    .ok_or_else(|| format!("extension {}: unknown state `{}`", extension.number, extension.state))?,
                approvals: extension.approvals.into_iter().map(approval_from_v2).collect(),
                denied_by: extension
                    .denied_by
                    .map(|(person, reason)| (Person::from_trusted(person), reason)),
                new_end: extension.new_end,
            })
        })
        .collect()
}

/// The `revocation` field.
pub fn encode_revocation(revocation: &Revocation) -> Result<String, String> {
    encode(&RevocationV2 {
        caller: revocation.caller.clone(),
        revoker: revocation.revoker.clone(),
        at: revocation.at,
        reason: revocation.reason.clone(),
        operation: revocation.operation.clone(),
    })
}

/// The `enforcement` field.
pub fn encode_enforcement(enforcement: &Enforcement) -> Result<String, String> {
    encode(&EnforcementV2 {
        status: enforcement.status,
        at: enforcement.at,
        error: enforcement.error.clone(),
        cutoff: enforcement.cutoff,
    })
}

/// The `doc` field of a new record, in the current version.
pub fn encode_grant(grant: &Grant) -> Result<String, String> {
    let decision = &grant.decision;
    encode(&GrantDoc {
        id: grant.id.to_string(),
        request_id: grant.request_id.clone(),
        fingerprint: grant.fingerprint.clone(),
        caller: grant.caller.to_string(),
        target: grant.target.clone(),
        account_id: grant.account_id.clone(),
        role_arn: grant.role_arn.clone(),
        region: grant.region.clone(),
        requester: grant.requester.clone(),
        grantee: grant.grantee.clone(),
        scopes: grant
            .scopes
            .iter()
            .map(|scope| ScopeV1 {
                actions: scope.actions.iter().map(|a| a.as_str().to_owned()).collect(),
                resources: scope.resources.iter().map(|r| r.as_str().to_owned()).collect(),
            })
            .collect(),
        session_policy: grant.session_policy.clone(),
        justification: grant.justification.clone(),
        ticket: grant.ticket.clone(),
        mfa_serial: grant.mfa_serial.clone(),
        created_at: grant.created_at,
        start: grant.start,
        end: grant.end,
        decision: decision_v1(decision),
        approvals_required: Some(decision.approvals_required.to_annotation()),
        pending_until: Some(grant.pending_until),
    })
}

/// The `window` field for a grant whose window an approval has (re)started.
pub fn encode_window(start: OffsetDateTime, end: OffsetDateTime, session_policy: &str) -> Result<String, String> {
    encode(&WindowV2 {
        start,
        end,
        session_policy: session_policy.to_owned(),
    })
}

pub fn encode_review(review: &Review) -> Result<String, String> {
    encode(&ReviewV2 {
        reviewer: review.reviewer.as_str().to_owned(),
        at: review.at,
        comment: review.comment.clone(),
        caller: review.caller.clone(),
    })
}

fn approval_v2(approval: &Approval) -> ApprovalV2 {
    ApprovalV2 {
        approver: approval.approver.as_str().to_owned(),
        groups: approval.groups.iter().cloned().collect(),
        at: approval.at,
        comment: approval.comment.clone(),
        caller: approval.caller.clone(),
    }
}

pub fn encode_approval(approval: &Approval) -> Result<String, String> {
    encode(&approval_v2(approval))
}

pub fn encode_issuance(issuance: &Issuance) -> Result<String, String> {
    encode(&IssuanceV1 {
        access_key_id: issuance.access_key_id.clone(),
        session_name: issuance.session_name.clone(),
        source_identity: issuance.source_identity.clone(),
        assumed_role_arn: issuance.assumed_role_arn.clone(),
        expiration: issuance.expiration,
        issued_at: issuance.issued_at,
        packed_policy_percent: issuance.packed_policy_percent,
    })
}

/// The fields of one grant as read from Redis, before decoding.
pub struct StoredGrant {
    pub version: Option<String>,
    pub state: String,
    pub doc: String,
    pub window: Option<String>,
    pub review: Option<String>,
    pub extensions: Option<String>,
    pub revocation: Option<String>,
    pub enforcement: Option<String>,
    pub approvals: Vec<String>,
    /// The most recent issuances, oldest first.
    pub issuances: Vec<String>,
    pub issuance_count: u64,
}

/// Decodes a record of any version this release knows. Errors say what is wrong, for the log.
pub fn decode_grant(id: GrantId, stored: StoredGrant) -> Result<Grant, String> {
    let version = match stored.version.as_deref() {
        None => 1,
        Some(text) => text
            .parse::<u32>()
            .map_err(|_| format!("record version `{text}` is not a number"))?,
    };
    if !(1..=CURRENT_VERSION).contains(&version) {
        return Err(format!(
            "record version {version} is not one this release reads (it reads 1 to {CURRENT_VERSION})"
        ));
    }
    let state = GrantState::parse(&stored.state).ok_or_else(|| format!("unknown state `{}`", stored.state))?;
    let doc: GrantDoc = serde_json::from_str(&stored.doc).map_err(|error| format!("doc: {error}"))?;
    let approvals_required = match &doc.approvals_required {
        None => ApprovalRequirement::default(),
        Some(text) => ApprovalRequirement::parse(text).map_err(|why| format!("approvals_required: {why}"))?,
    };
    let window = match &stored.window {
        None => None,
        Some(text) => Some(serde_json::from_str::<WindowV2>(text).map_err(|error| format!("window: {error}"))?),
    };
    let approvals = stored
        .approvals
        .iter()
        .map(|text| serde_json::from_str::<ApprovalV2>(text).map(approval_from_v2))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("approval: {error}"))?;
    let pending_until = doc.pending_until.unwrap_or(doc.end);
    let review = match &stored.review {
        None => None,
        Some(text) => {
            let review: ReviewV2 = serde_json::from_str(text).map_err(|error| format!("review: {error}"))?;
            Some(Review {
                reviewer: Person::from_trusted(review.reviewer),
                at: review.at,
                comment: review.comment,
                caller: review.caller,
            })
        }
    };
    let (start, end, session_policy) = match window {
        Some(window) => (window.start, window.end, window.session_policy),
        None => (doc.start, doc.end, doc.session_policy),
    };
    if doc.id != id.to_string() {
        return Err(format!("doc belongs to grant {}", doc.id));
    }
    let caller = CallerId::parse(&doc.caller).map_err(|why| format!("caller: {why}"))?;
    let extensions = match &stored.extensions {
        None => Vec::new(),
        Some(text) => decode_extensions(text)?,
    };
    let revocation = match &stored.revocation {
        None => None,
        Some(text) => {
            let stored: RevocationV2 = serde_json::from_str(text).map_err(|error| format!("revocation: {error}"))?;
            Some(Revocation {
                caller: stored.caller,
                revoker: stored.revoker,
                at: stored.at,
                reason: stored.reason,
                operation: stored.operation,
            })
        }
    };
    let enforcement = match &stored.enforcement {
        None => None,
        Some(text) => {
            let stored: EnforcementV2 = serde_json::from_str(text).map_err(|error| format!("enforcement: {error}"))?;
            Some(Enforcement {
                status: stored.status,
                at: stored.at,
                error: stored.error,
                cutoff: stored.cutoff,
            })
        }
    };
    let issuances = stored
        .issuances
        .iter()
        .map(|text| serde_json::from_str::<IssuanceV1>(text).map(issuance_from_v1))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("issuance: {error}"))?;
    Ok(Grant {
        id,
        state,
        request_id: doc.request_id,
        fingerprint: doc.fingerprint,
        caller,
        target: doc.target,
        account_id: doc.account_id,
        role_arn: doc.role_arn,
        region: doc.region,
        requester: doc.requester,
        grantee: doc.grantee,
        // Lenient on purpose (see the module docs): a pattern a later release refuses still reads.
        scopes: doc
            .scopes
            .into_iter()
            .map(|scope| Scope {
                actions: scope.actions.into_iter().map(ActionPattern::from_record).collect(),
                resources: scope.resources.into_iter().map(ResourcePattern::from_record).collect(),
            })
            .collect(),
        session_policy,
        justification: doc.justification,
        ticket: doc.ticket,
        mfa_serial: doc.mfa_serial,
        created_at: doc.created_at,
        start,
        end,
        pending_until,
        decision: decision_from_v1(doc.decision, approvals_required),
        approvals,
        review,
        extensions,
        revocation,
        enforcement,
        role_cutoff: None,
        issuances,
        issuance_count: stored.issuance_count,
    })
}

fn approval_from_v2(approval: ApprovalV2) -> Approval {
    Approval {
        approver: Person::from_trusted(approval.approver),
        groups: approval.groups.into_iter().collect(),
        at: approval.at,
        comment: approval.comment,
        caller: approval.caller,
    }
}

/// One entry of a grant's issuances list.
pub fn decode_issuance(text: &str) -> Result<Issuance, String> {
    serde_json::from_str::<IssuanceV1>(text)
        .map(issuance_from_v1)
        .map_err(|error| format!("issuance: {error}"))
}

fn issuance_from_v1(issuance: IssuanceV1) -> Issuance {
    Issuance {
        access_key_id: issuance.access_key_id,
        session_name: issuance.session_name,
        source_identity: issuance.source_identity,
        assumed_role_arn: issuance.assumed_role_arn,
        expiration: issuance.expiration,
        issued_at: issuance.issued_at,
        packed_policy_percent: issuance.packed_policy_percent,
    }
}
