//! The grant record, version 4: one Redis string per grant, `gb:g:{<id>}`, holding a fixed
//! header, the tag that seals it, and the frames of its protobuf body, one per change. This
//! module owns the encoding; [`super::seal`] computes the MACs. Version 4 is the format the
//! first release (0.1.0) ships; a record of another version is refused as corrupt.
//!
//! Layout: `header ++ tag ++ frames`. The header is [`HEADER_LEN`] bytes ([`at`] defines the
//! offsets) the broker compares before a change:
//!
//! | offset | bytes | holds |
//! |---|---|---|
//! | 0 | 1 | record version, 4 |
//! | 1 | 1 | state ([`state_code`]) |
//! | 2 | 2 | STS attempts made, big-endian |
//! | 4 | 1 | approvals recorded |
//! | 5 | 3 | the extensions' compare-and-set tag ([`extensions_tag`]) |
//! | 8 | 2 | events recorded, big-endian |
//! | 10 | 1 | flags: bit 0 set once the grant is reviewed |
//! | 11 | 16 | the tag: the MAC over the frames' chain and the header ([`super::seal`]) |
//!
//! Each frame is `key id (1 byte) ++ length (varint) ++ segment`: the segment is the encoding of
//! a [`Body`] (the whole request for the first frame, a change's events, approval, window, ...
//! for each later one), and the key id names the integrity key that sealed it. Protobuf decodes
//! concatenated messages as their merge, so repeated fields accumulate in order and no change
//! ever rewrites the request. Fields that a later change replaces are repeated and read last-wins
//! (`windows`, `enforcement`) or by key (`extensions`, by number), never merged field by field.
//!
//! Compact by construction: times are nanoseconds relative to the grant's creation (zigzag
//! varints), states and outcomes are small integers, and nothing is stored twice: an event's
//! caller is omitted when it is the grant's, `requested` refers to the decision, an `issued`
//! event carries its issuance (there is no separate list), session names, source identities and
//! assumed-role ARNs are stored only when they differ from what the grant derives, and the
//! session policy is stored as a digest: it is rebuilt from the scopes and the window on read, and
//! a record whose rebuilt policy does not match its digest reads with an empty policy, which the
//! checks before every issuance refuse (STORE_CORRUPT).

use prost::Message;
use sha2::{Digest, Sha256};

use time::{Duration, OffsetDateTime};

use super::seal::{CHAIN_LEN, Domain, IntegrityKeys, TAG_LEN};
use crate::domain::{
    ActionPattern, CallerId, Decision, EventKind, Grant, GrantEvent, GrantId, GrantState, Issuance, Outcome,
    RECENT_ISSUANCES, ResourcePattern, Scope, SessionRoles,
    approval::{Approval, ApprovalRequirement, Person, Review},
    extension::{Extension, ExtensionState},
    identity::{Attribution, PrincipalKind, Verified},
    limits,
    policy::build_session_policy,
    revocation::{Enforcement, EnforcementStatus, Revocation},
};
use crate::ports::{Appended, Change};

pub(super) const VERSION: u8 = 4;

/// The header's fields, by offset (0-based). The one definition of the layout: [`Header`]
/// parses and encodes by it.
pub(super) mod at {
    /// The record version, [`super::VERSION`].
    pub(crate) const VERSION: usize = 0;
    /// The grant's state ([`super::state_code`]).
    pub(crate) const STATE: usize = 1;
    /// STS attempts made, 2 bytes big-endian.
    pub(crate) const ATTEMPTS: usize = 2;
    /// Approvals recorded.
    pub(crate) const APPROVALS: usize = 4;
    /// The extensions' compare-and-set tag, 3 bytes ([`super::extensions_tag`]).
    pub(crate) const EXTENSIONS_TAG: usize = 5;
    /// Events recorded, 2 bytes big-endian.
    pub(crate) const EVENTS: usize = 8;
    /// Flags: [`super::REVIEWED`].
    pub(crate) const FLAGS: usize = 10;
}

/// The header's length: the tag starts here.
pub(super) const HEADER_LEN: usize = 11;

/// Where the frames start, after the header and the tag.
pub(super) const FRAMES_AT: usize = HEADER_LEN + TAG_LEN;

/// The flag set once the grant is reviewed.
pub(super) const REVIEWED: u8 = 1;

/// A grant state as the header stores it.
pub(super) fn state_code(state: GrantState) -> u8 {
    match state {
        GrantState::PendingApproval => 1,
        GrantState::Approved => 2,
        GrantState::Denied => 3,
        GrantState::Expired => 4,
        GrantState::Cancelled => 5,
        GrantState::Revoked => 6,
    }
}

pub(super) fn state_of(code: u8) -> Option<GrantState> {
    GrantState::ALL.into_iter().find(|state| state_code(*state) == code)
}

/// What the change script compares before replacing a grant's extensions: every extension change
/// alters it (a new extension, the last one's state, or its approvals), so it is a
/// compare-and-set token that needs no counter of its own.
pub(super) fn extensions_tag(extensions: &[Extension]) -> [u8; 3] {
    let small = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
    match extensions.last() {
        None => [0; 3],
        Some(last) => [
            small(extensions.len()),
            extension_state_code(last.state),
            small(last.approvals.len()),
        ],
    }
}

fn extension_state_code(state: ExtensionState) -> u8 {
    match state {
        ExtensionState::Pending => 1,
        ExtensionState::Approved => 2,
        ExtensionState::Denied => 3,
    }
}

fn policy_digest(policy: &str) -> Vec<u8> {
    Sha256::digest(policy.as_bytes())[..16].to_vec()
}

// ---- The stored messages: generated from proto/grantbroker/storage/v1/record.proto, which is
// the format (checked with `buf breaking` against main). The aliases keep this module's names.

pub(super) use super::stored::Attribution as AttributionV3;
pub(super) use super::stored::Body;
use super::stored::{
    Approval as ApprovalV3, ApprovalRecorded as ApprovalRecordedV3, Decided as DecidedV3, Decision as DecisionV3,
    Discarded as DiscardedV3, Enforcement as EnforcementV3, Event as EventV3, Extended as ExtendedV3,
    Extension as ExtensionV3, ExtensionDenied as ExtensionDeniedV3, ExtensionRequested as ExtensionRequestedV3,
    Issued as IssuedV3, Issuing as IssuingV3, OptionalText as OptionalTextV3, OwnDecision as OwnDecisionV3,
    PersonText as PersonTextV3, Request as RequestV3, Review as ReviewV3, Revocation as RevocationV3,
    Revoked as RevokedV3, Scope as ScopeV3, SessionText as SessionTextV3, State as StateV3, Text as TextV3,
    Verified as VerifiedV3, Window as WindowV3, event::Kind as KindV3,
};

// ---- Small conversions ----

/// Times relative to the grant's creation.
#[derive(Clone, Copy)]
struct Clock(OffsetDateTime);

impl Clock {
    fn to(self, at: OffsetDateTime) -> i64 {
        i64::try_from((at - self.0).whole_nanoseconds()).unwrap_or(i64::MAX)
    }

    fn at(self, nanos: i64) -> OffsetDateTime {
        self.0.saturating_add(Duration::nanoseconds(nanos))
    }
}

fn outcome_code(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Approve => 0,
        Outcome::RequireApproval => 1,
        Outcome::Deny => 2,
    }
}

fn outcome_of(code: i32) -> Result<Outcome, String> {
    match code {
        0 => Ok(Outcome::Approve),
        1 => Ok(Outcome::RequireApproval),
        2 => Ok(Outcome::Deny),
        other => Err(format!("unknown outcome {other}")),
    }
}

fn enforcement_code(status: EnforcementStatus) -> u32 {
    match status {
        EnforcementStatus::Pending => 0,
        EnforcementStatus::Enforced => 1,
        EnforcementStatus::NotNeeded => 2,
        EnforcementStatus::Failed => 3,
        EnforcementStatus::NotAvailable => 4,
    }
}

fn enforcement_of(code: u32) -> Result<EnforcementStatus, String> {
    [
        EnforcementStatus::Pending,
        EnforcementStatus::Enforced,
        EnforcementStatus::NotNeeded,
        EnforcementStatus::Failed,
        EnforcementStatus::NotAvailable,
    ]
    .into_iter()
    .find(|status| enforcement_code(*status) == code)
    .ok_or_else(|| format!("unknown enforcement status {code}"))
}

fn state_from(code: u32) -> Result<GrantState, String> {
    u8::try_from(code)
        .ok()
        .and_then(state_of)
        .ok_or_else(|| format!("unknown state {code}"))
}

/// What the grant derives for its sessions, so that issuances store only what differs.
struct Derived {
    session_name: String,
    source_identity: String,
    /// `arn:<partition>:sts::<account>:assumed-role/<role name>/`, the session name follows.
    assumed_role_prefix: Option<String>,
}

impl Derived {
    fn of(id: GrantId, requester: &str, role_arn: &str) -> Self {
        let assumed_role_prefix = role_arn.strip_prefix("arn:").and_then(|rest| {
            let mut parts = rest.splitn(5, ':');
            let (partition, _service, _region, account, resource) = (
                parts.next()?,
                parts.next()?,
                parts.next()?,
                parts.next()?,
                parts.next()?,
            );
            let name = resource.strip_prefix("role/")?.rsplit('/').next()?;
            Some(format!("arn:{partition}:sts::{account}:assumed-role/{name}/"))
        });
        Self {
            session_name: format!("gb-{id}"),
            source_identity: limits::source_identity_for(requester).unwrap_or_else(|| "grant-broker".to_owned()),
            assumed_role_prefix,
        }
    }

    fn unless_session(&self, name: &str) -> Option<String> {
        (name != self.session_name).then(|| name.to_owned())
    }

    fn session(&self, stored: Option<String>) -> String {
        stored.unwrap_or_else(|| self.session_name.clone())
    }

    fn assumed_role_arn(&self, session_name: &str) -> Option<String> {
        self.assumed_role_prefix
            .as_ref()
            .map(|prefix| format!("{prefix}{session_name}"))
    }
}

/// The context an encoder or decoder needs from the grant's request.
struct Context<'a> {
    clock: Clock,
    caller: &'a str,
    derived: Derived,
    decision: &'a Decision,
    justification: &'a str,
    /// The requester as the request records them (a `requested` event's person, unless it
    /// says otherwise).
    requester: Attribution,
}

impl<'a> Context<'a> {
    fn of(grant: &'a Grant) -> Self {
        Self {
            clock: Clock(grant.created_at),
            caller: grant.caller.as_str(),
            derived: Derived::of(grant.id, &grant.requester, &grant.role_arn),
            decision: &grant.decision,
            justification: &grant.justification,
            requester: Attribution {
                name: grant.requester.clone(),
                verified: grant.requester_verified.clone(),
            },
        }
    }
}

fn kind_code(kind: PrincipalKind) -> u32 {
    match kind {
        PrincipalKind::Person => 1,
        PrincipalKind::Workload => 2,
    }
}

pub(super) fn verified_v3(verified: &Verified) -> VerifiedV3 {
    VerifiedV3 {
        issuer: verified.issuer.clone(),
        kind: kind_code(verified.kind),
        mfa: verified.mfa,
        auth_time: verified.auth_time.map(OffsetDateTime::unix_timestamp),
        groups: verified.groups.iter().cloned().collect(),
        facts: verified.facts.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub(super) fn verified_from(verified: VerifiedV3) -> Result<Verified, String> {
    Ok(Verified {
        issuer: verified.issuer,
        kind: match verified.kind {
            1 => PrincipalKind::Person,
            2 => PrincipalKind::Workload,
            other => return Err(format!("unknown identity kind {other}")),
        },
        mfa: verified.mfa,
        auth_time: verified
            .auth_time
            .map(|secs| OffsetDateTime::from_unix_timestamp(secs).map_err(|_| "auth_time out of range".to_owned()))
            .transpose()?,
        groups: verified.groups.into_iter().collect(),
        facts: verified.facts.into_iter().collect(),
    })
}

pub(super) fn attribution_v3(attribution: &Attribution) -> AttributionV3 {
    AttributionV3 {
        name: attribution.name.clone(),
        verified: attribution.verified.as_ref().map(verified_v3),
    }
}

pub(super) fn attribution_from(attribution: AttributionV3) -> Result<Attribution, String> {
    Ok(Attribution {
        name: attribution.name,
        verified: attribution.verified.map(verified_from).transpose()?,
    })
}

fn decision_v3(clock: Clock, decision: &Decision) -> DecisionV3 {
    DecisionV3 {
        outcome: outcome_code(decision.outcome),
        policy_ids: decision.policy_ids.clone(),
        reason: decision.reason.clone(),
        decided_at: clock.to(decision.decided_at),
        approvals_required: decision.approvals_required.to_annotation(),
        break_glass: decision.break_glass,
    }
}

fn decision_from(clock: Clock, decision: DecisionV3) -> Result<Decision, String> {
    Ok(Decision {
        outcome: outcome_of(decision.outcome)?,
        policy_ids: decision.policy_ids,
        reason: decision.reason,
        decided_at: clock.at(decision.decided_at),
        approvals_required: ApprovalRequirement::parse(&decision.approvals_required)
            .map_err(|why| format!("approvals_required: {why}"))?,
        break_glass: decision.break_glass,
    })
}

fn approval_v3(clock: Clock, approval: &Approval) -> ApprovalV3 {
    ApprovalV3 {
        approver: approval.approver.as_str().to_owned(),
        groups: approval.groups.iter().cloned().collect(),
        at: clock.to(approval.at),
        comment: approval.comment.clone(),
        caller: approval.caller.clone(),
        verified: approval.verified.as_ref().map(verified_v3),
    }
}

fn approval_from(clock: Clock, approval: ApprovalV3) -> Result<Approval, String> {
    Ok(Approval {
        approver: Person::from_trusted(approval.approver),
        groups: approval.groups.into_iter().collect(),
        at: clock.at(approval.at),
        comment: approval.comment,
        caller: approval.caller,
        verified: approval.verified.map(verified_from).transpose()?,
    })
}

fn extension_v3(clock: Clock, extension: &Extension) -> ExtensionV3 {
    ExtensionV3 {
        number: extension.number,
        request_id: extension.request_id.clone(),
        additional_secs: extension.additional_secs,
        justification: extension.justification.clone(),
        requested_at: clock.to(extension.requested_at),
        caller: extension.caller.clone(),
        decision: Some(decision_v3(clock, &extension.decision)),
        state: u32::from(extension_state_code(extension.state)),
        approvals: extension
            .approvals
            .iter()
            .map(|approval| approval_v3(clock, approval))
            .collect(),
        denied_by: extension
            .denied_by
            .as_ref()
            .map(|(person, _)| person.as_str().to_owned()),
        denied_reason: extension.denied_by.as_ref().map(|(_, reason)| reason.clone()),
        new_end: extension.new_end.map(|end| clock.to(end)),
    }
}

fn extension_from(clock: Clock, extension: ExtensionV3) -> Result<Extension, String> {
    let number = extension.number;
    let state = [
        ExtensionState::Pending,
        ExtensionState::Approved,
        ExtensionState::Denied,
    ]
    .into_iter()
    .find(|state| u32::from(extension_state_code(*state)) == extension.state)
    .ok_or_else(|| format!("extension {number}: unknown state {}", extension.state))?;
    Ok(Extension {
        number,
        request_id: extension.request_id,
        additional_secs: extension.additional_secs,
        justification: extension.justification,
        requested_at: clock.at(extension.requested_at),
        caller: extension.caller,
        decision: decision_from(clock, extension.decision.unwrap_or_default())
            .map_err(|why| format!("extension {number}: {why}"))?,
        state,
        approvals: extension
            .approvals
            .into_iter()
            .map(|approval| approval_from(clock, approval))
            .collect::<Result<_, _>>()?,
        denied_by: extension.denied_by.map(|person| {
            (
                Person::from_trusted(person),
                extension.denied_reason.unwrap_or_default(),
            )
        }),
        new_end: extension.new_end.map(|end| clock.at(end)),
    })
}

fn enforcement_v3(clock: Clock, enforcement: &Enforcement) -> EnforcementV3 {
    EnforcementV3 {
        status: enforcement_code(enforcement.status),
        at: clock.to(enforcement.at),
        error: enforcement.error.clone(),
        cutoff: enforcement.cutoff.map(|cutoff| clock.to(cutoff)),
    }
}

fn enforcement_from(clock: Clock, enforcement: EnforcementV3) -> Result<Enforcement, String> {
    Ok(Enforcement {
        status: enforcement_of(enforcement.status)?,
        at: clock.at(enforcement.at),
        error: enforcement.error,
        cutoff: enforcement.cutoff.map(|cutoff| clock.at(cutoff)),
    })
}

fn window_v3(clock: Clock, start: OffsetDateTime, end: OffsetDateTime, policy: &str) -> WindowV3 {
    WindowV3 {
        start: clock.to(start),
        end: clock.to(end),
        policy_digest: policy_digest(policy),
    }
}

// ---- Events ----

/// Encodes an event; `issuance` is the one recorded in the same step, which an `issued` event
/// must describe.
fn event_v3(context: &Context<'_>, event: &GrantEvent, issuance: Option<&Issuance>) -> Result<EventV3, String> {
    let Context {
        clock,
        derived,
        decision,
        ..
    } = context;
    let kind = match &event.kind {
        EventKind::Requested {
            state,
            outcome,
            policy_ids,
            reason,
        } => KindV3::Requested(DecidedV3 {
            own: (*state != decision.outcome.initial_state()
                || *outcome != decision.outcome
                || *policy_ids != decision.policy_ids
                || *reason != decision.reason)
                .then(|| OwnDecisionV3 {
                    state: u32::from(state_code(*state)),
                    outcome: outcome_code(*outcome),
                    policy_ids: policy_ids.clone(),
                    reason: reason.clone(),
                }),
        }),
        EventKind::Issuing {
            session_name,
            duration_secs,
        } => KindV3::Issuing(IssuingV3 {
            session_name: derived.unless_session(session_name),
            duration_secs: *duration_secs,
        }),
        EventKind::Issued {
            session_name,
            access_key_id,
            expiration,
        } => {
            let issuance = issuance
                .filter(|issuance| {
                    issuance.session_name == *session_name
                        && issuance.access_key_id == *access_key_id
                        && issuance.expiration == *expiration
                })
                .ok_or("an `issued` event must be recorded with the issuance it describes")?;
            KindV3::Issued(IssuedV3 {
                access_key_id: access_key_id.clone(),
                session_name: derived.unless_session(session_name),
                expiration: clock.to(*expiration),
                source_identity: (issuance.source_identity != derived.source_identity)
                    .then(|| issuance.source_identity.clone()),
                assumed_role_arn: (Some(&issuance.assumed_role_arn) != derived.assumed_role_arn(session_name).as_ref())
                    .then(|| issuance.assumed_role_arn.clone()),
                issued_at: (issuance.issued_at != event.at).then(|| clock.to(issuance.issued_at)),
                packed_policy_percent: issuance.packed_policy_percent,
                role_id: issuance.role_id.clone(),
            })
        }
        EventKind::IssueFailed { session_name, error } => KindV3::IssueFailed(SessionTextV3 {
            session_name: derived.unless_session(session_name),
            text: error.clone(),
        }),
        EventKind::IssueDiscarded {
            session_name,
            access_key_id,
            reason,
            role_id,
        } => KindV3::IssueDiscarded(DiscardedV3 {
            session_name: derived.unless_session(session_name),
            access_key_id: access_key_id.clone(),
            reason: reason.clone(),
            role_id: role_id.clone(),
        }),
        EventKind::Cancelled { reason } => KindV3::Cancelled(TextV3 { text: reason.clone() }),
        EventKind::BreakGlassUsed { justification } => KindV3::BreakGlassUsed(OptionalTextV3 {
            text: (justification != context.justification).then(|| justification.clone()),
        }),
        EventKind::Reviewed { reviewer, comment } => KindV3::Reviewed(PersonTextV3 {
            person: reviewer.clone(),
            text: comment.clone(),
        }),
        EventKind::Expired { was } => KindV3::Expired(StateV3 {
            state: u32::from(state_code(*was)),
        }),
        EventKind::ApprovalRecorded {
            approver,
            groups,
            comment,
            extension,
        } => KindV3::ApprovalRecorded(ApprovalRecordedV3 {
            approver: approver.clone(),
            groups: groups.clone(),
            comment: comment.clone(),
            extension: *extension,
        }),
        EventKind::ExtensionRequested {
            extension,
            additional_secs,
            justification,
            outcome,
            policy_ids,
            reason,
        } => KindV3::ExtensionRequested(ExtensionRequestedV3 {
            extension: *extension,
            additional_secs: *additional_secs,
            justification: justification.clone(),
            outcome: outcome_code(*outcome),
            policy_ids: policy_ids.clone(),
            reason: reason.clone(),
        }),
        EventKind::Extended { extension, end } => KindV3::Extended(ExtendedV3 {
            extension: *extension,
            end: clock.to(*end),
        }),
        EventKind::Revoked {
            revoker,
            reason,
            operation,
            enforcement,
        } => KindV3::Revoked(RevokedV3 {
            revoker: revoker.clone(),
            reason: reason.clone(),
            operation: operation.clone(),
            enforcement: enforcement_code(*enforcement),
        }),
        EventKind::EnforcementChanged { status, error, cutoff } => KindV3::EnforcementChanged(EnforcementV3 {
            status: enforcement_code(*status),
            at: 0,
            error: error.clone(),
            cutoff: cutoff.map(|cutoff| clock.to(cutoff)),
        }),
        EventKind::ExtensionDenied {
            extension,
            approver,
            reason,
        } => KindV3::ExtensionDenied(ExtensionDeniedV3 {
            extension: *extension,
            approver: approver.clone(),
            reason: reason.clone(),
        }),
        EventKind::Approved { start, end } => KindV3::Approved(WindowV3 {
            start: clock.to(*start),
            end: clock.to(*end),
            policy_digest: Vec::new(),
        }),
        EventKind::Denied { approver, reason } => KindV3::Denied(PersonTextV3 {
            person: approver.clone(),
            text: reason.clone(),
        }),
        EventKind::IssueRefused { reason } => KindV3::IssueRefused(TextV3 { text: reason.clone() }),
    };
    // A `requested` event names the request's requester: stored once, in the request.
    let person = match (&event.kind, &event.person) {
        (EventKind::Requested { .. }, Some(person)) if *person == context.requester => None,
        (_, person) => person.as_ref().map(attribution_v3),
    };
    Ok(EventV3 {
        at: clock.to(event.at),
        caller: (event.caller != context.caller).then(|| event.caller.clone()),
        person,
        kind: Some(kind),
    })
}

/// Decodes an event; an `issued` event also yields its issuance.
fn event_from(context: &Context<'_>, event: EventV3) -> Result<(GrantEvent, Option<Issuance>), String> {
    let Context {
        clock,
        derived,
        decision,
        ..
    } = context;
    let at = clock.at(event.at);
    let mut issuance = None;
    let kind = match event.kind.ok_or("an event without a type")? {
        KindV3::Requested(DecidedV3 { own: None }) => EventKind::Requested {
            state: decision.outcome.initial_state(),
            outcome: decision.outcome,
            policy_ids: decision.policy_ids.clone(),
            reason: decision.reason.clone(),
        },
        KindV3::Requested(DecidedV3 { own: Some(own) }) => EventKind::Requested {
            state: state_from(own.state)?,
            outcome: outcome_of(own.outcome)?,
            policy_ids: own.policy_ids,
            reason: own.reason,
        },
        KindV3::Issuing(issuing) => EventKind::Issuing {
            session_name: derived.session(issuing.session_name),
            duration_secs: issuing.duration_secs,
        },
        KindV3::Issued(issued) => {
            let session_name = derived.session(issued.session_name);
            let expiration = clock.at(issued.expiration);
            issuance = Some(Issuance {
                access_key_id: issued.access_key_id.clone(),
                assumed_role_arn: match issued.assumed_role_arn {
                    Some(arn) => arn,
                    None => derived.assumed_role_arn(&session_name).unwrap_or_default(),
                },
                session_name: session_name.clone(),
                source_identity: issued
                    .source_identity
                    .unwrap_or_else(|| derived.source_identity.clone()),
                expiration,
                issued_at: issued.issued_at.map_or(at, |issued_at| clock.at(issued_at)),
                packed_policy_percent: issued.packed_policy_percent,
                role_id: issued.role_id,
            });
            EventKind::Issued {
                session_name,
                access_key_id: issued.access_key_id,
                expiration,
            }
        }
        KindV3::IssueFailed(failed) => EventKind::IssueFailed {
            session_name: derived.session(failed.session_name),
            error: failed.text,
        },
        KindV3::IssueDiscarded(discarded) => EventKind::IssueDiscarded {
            session_name: derived.session(discarded.session_name),
            access_key_id: discarded.access_key_id,
            reason: discarded.reason,
            role_id: discarded.role_id,
        },
        KindV3::Cancelled(text) => EventKind::Cancelled { reason: text.text },
        KindV3::BreakGlassUsed(text) => EventKind::BreakGlassUsed {
            justification: text.text.unwrap_or_else(|| context.justification.to_owned()),
        },
        KindV3::Reviewed(reviewed) => EventKind::Reviewed {
            reviewer: reviewed.person,
            comment: reviewed.text,
        },
        KindV3::Expired(expired) => EventKind::Expired {
            was: state_from(expired.state)?,
        },
        KindV3::ApprovalRecorded(approval) => EventKind::ApprovalRecorded {
            approver: approval.approver,
            groups: approval.groups,
            comment: approval.comment,
            extension: approval.extension,
        },
        KindV3::ExtensionRequested(requested) => EventKind::ExtensionRequested {
            extension: requested.extension,
            additional_secs: requested.additional_secs,
            justification: requested.justification,
            outcome: outcome_of(requested.outcome)?,
            policy_ids: requested.policy_ids,
            reason: requested.reason,
        },
        KindV3::Extended(extended) => EventKind::Extended {
            extension: extended.extension,
            end: clock.at(extended.end),
        },
        KindV3::Revoked(revoked) => EventKind::Revoked {
            revoker: revoked.revoker,
            reason: revoked.reason,
            operation: revoked.operation,
            enforcement: enforcement_of(revoked.enforcement)?,
        },
        KindV3::EnforcementChanged(changed) => EventKind::EnforcementChanged {
            status: enforcement_of(changed.status)?,
            error: changed.error,
            cutoff: changed.cutoff.map(|cutoff| clock.at(cutoff)),
        },
        KindV3::ExtensionDenied(denied) => EventKind::ExtensionDenied {
            extension: denied.extension,
            approver: denied.approver,
            reason: denied.reason,
        },
        KindV3::Approved(window) => EventKind::Approved {
            start: clock.at(window.start),
            end: clock.at(window.end),
        },
        KindV3::Denied(denied) => EventKind::Denied {
            approver: denied.person,
            reason: denied.text,
        },
        KindV3::IssueRefused(text) => EventKind::IssueRefused { reason: text.text },
    };
    let person = match (&kind, event.person) {
        (_, Some(person)) => Some(attribution_from(person)?),
        (EventKind::Requested { .. }, None) => Some(context.requester.clone()),
        (_, None) => None,
    };
    Ok((
        GrantEvent {
            at,
            caller: event.caller.unwrap_or_else(|| context.caller.to_owned()),
            person,
            kind,
        },
        issuance,
    ))
}

// ---- Records ----

/// The header's fields: what a change is compared against before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub version: u8,
    pub state: GrantState,
    pub attempts: u16,
    pub approvals: u8,
    pub extensions_tag: [u8; 3],
    pub events: u16,
    pub reviewed: bool,
}

impl Header {
    /// A new grant's header.
    fn of(grant: &Grant, attempts: u16, events: usize) -> Result<Self, String> {
        Ok(Self {
            version: VERSION,
            state: grant.state,
            attempts,
            approvals: u8::try_from(grant.approvals.len())
                .map_err(|_| format!("too many approvals: {}", grant.approvals.len()))?,
            extensions_tag: extensions_tag(&grant.extensions),
            events: u16::try_from(events).map_err(|_| format!("too many events: {events}"))?,
            reviewed: grant.review.is_some(),
        })
    }

    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let bytes: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|header| header.try_into().ok())
            .ok_or("record shorter than its header")?;
        let pair = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        Ok(Self {
            version: bytes[at::VERSION],
            state: state_of(bytes[at::STATE]).ok_or_else(|| format!("unknown state {}", bytes[at::STATE]))?,
            attempts: pair(at::ATTEMPTS),
            approvals: bytes[at::APPROVALS],
            extensions_tag: [
                bytes[at::EXTENSIONS_TAG],
                bytes[at::EXTENSIONS_TAG + 1],
                bytes[at::EXTENSIONS_TAG + 2],
            ],
            events: pair(at::EVENTS),
            reviewed: bytes[at::FLAGS] & REVIEWED != 0,
        })
    }

    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut header = [0; HEADER_LEN];
        header[at::VERSION] = self.version;
        header[at::STATE] = state_code(self.state);
        header[at::ATTEMPTS..at::ATTEMPTS + 2].copy_from_slice(&self.attempts.to_be_bytes());
        header[at::APPROVALS] = self.approvals;
        header[at::EXTENSIONS_TAG..at::EXTENSIONS_TAG + 3].copy_from_slice(&self.extensions_tag);
        header[at::EVENTS..at::EVENTS + 2].copy_from_slice(&self.events.to_be_bytes());
        header[at::FLAGS] = if self.reviewed { REVIEWED } else { 0 };
        header
    }

    /// The header once `change` is made on a record with this one, or what refuses it. Checked
    /// in this order: the state, the review, the extensions, the approvals, the attempts.
    pub(super) fn after(&self, change: &Change<'_>) -> Result<Result<Self, Appended>, String> {
        let mut next = *self;
        if !change.expected().contains(&self.state) {
            return Ok(Err(Appended::WrongState(self.state)));
        }
        if change.review().is_some() && self.reviewed {
            return Ok(Err(Appended::AlreadyReviewed));
        }
        if let Some(extensions) = change.extensions() {
            if extensions_tag(extensions.before) != self.extensions_tag {
                return Ok(Err(Appended::ExtensionsChanged));
            }
            next.extensions_tag = extensions_tag(extensions.after);
        }
        if let Some((before, _)) = change.approval() {
            if usize::from(self.approvals) != before {
                return Ok(Err(Appended::ApprovalsChanged(usize::from(self.approvals))));
            }
            next.approvals = self.approvals.checked_add(1).ok_or("no room for more approvals")?;
        }
        if let Some(limit) = change.attempt_limit() {
            if u32::from(self.attempts) >= limit {
                return Ok(Err(Appended::LimitReached(u32::from(self.attempts))));
            }
            next.attempts = self.attempts.checked_add(1).ok_or("no room for more attempts")?;
        }
        next.events = u16::try_from(change.events().len())
            .ok()
            .and_then(|added| self.events.checked_add(added))
            .ok_or("no room for more events")?;
        if let Some(state) = change.to() {
            next.state = state;
        }
        next.reviewed |= change.review().is_some();
        Ok(Ok(next))
    }
}

/// A sealed record as this broker last verified or wrote it: what a change is compared
/// against, and what it continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Revision {
    pub header: Header,
    /// The chain over the frames so far ([`super::seal`]).
    pub chain: [u8; CHAIN_LEN],
    /// The tag the record holds.
    pub tag: [u8; TAG_LEN],
    /// The record's length in bytes.
    pub len: usize,
}

impl Revision {
    /// What the change script compares before it writes: the record's header and tag (the
    /// first [`FRAMES_AT`] bytes). With its length, any edit of the header and any frame added
    /// or cut out make the script answer with the record instead, which then fails its seal.
    pub(super) fn prefix(&self) -> Vec<u8> {
        let mut prefix = self.header.encode().to_vec();
        prefix.extend_from_slice(&self.tag);
        prefix
    }
}

/// A frame: the sealing key's id, the segment's length, the segment.
fn frame(key: u8, segment: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(segment.len() + 4);
    frame.push(key);
    prost::encoding::encode_varint(segment.len() as u64, &mut frame);
    frame.extend_from_slice(segment);
    frame
}

/// Seals a segment onto `before` (`None`: a new record's first): the frame to append, and the
/// record's revision with it.
fn seal(
    keys: &IntegrityKeys,
    id: GrantId,
    before: Option<&[u8; CHAIN_LEN]>,
    header: Header,
    segment: &[u8],
) -> Result<(Vec<u8>, Revision), String> {
    let key = keys.sealing_id();
    let unknown = |error: super::seal::UnknownKey| error.to_string();
    let chain = keys
        .chain(key, id.as_uuid().as_bytes(), before, segment)
        .map_err(unknown)?;
    let tag = keys
        .tag(key, Domain::RecordTag, &[&chain, &header.encode()])
        .map_err(unknown)?;
    let frame = frame(key, segment);
    let len = FRAMES_AT + frame.len();
    Ok((
        frame,
        Revision {
            header,
            chain,
            tag,
            len,
        },
    ))
}

/// What a change writes: the header and tag that replace the record's first [`FRAMES_AT`]
/// bytes, the frame appended, and the revision the record then is.
pub(super) struct Sealed {
    pub prefix: Vec<u8>,
    pub frame: Vec<u8>,
    pub revision: Revision,
}

/// Seals `segment`, a change's body, onto the record at `revision`, whose header becomes
/// `header`.
pub(super) fn seal_change(
    keys: &IntegrityKeys,
    id: GrantId,
    revision: &Revision,
    header: Header,
    segment: &[u8],
) -> Result<Sealed, String> {
    let (frame, mut sealed) = seal(keys, id, Some(&revision.chain), header, segment)?;
    sealed.len = revision.len + frame.len();
    Ok(Sealed {
        prefix: sealed.prefix(),
        frame,
        revision: sealed,
    })
}

/// A new grant's whole record, with its first events (`attempts` and `issuances` for a record
/// built with history, as the tests' golden records are).
pub(super) fn encode_record(
    keys: &IntegrityKeys,
    grant: &Grant,
    attempts: u16,
    events: &[GrantEvent],
    issuances: &[Issuance],
) -> Result<(Vec<u8>, Revision), String> {
    let context = Context::of(grant);
    let clock = context.clock;
    let mut issuances = issuances.iter();
    let mut body = Body {
        request: Some(RequestV3 {
            request_id: grant.request_id.clone(),
            caller: grant.caller.to_string(),
            target: grant.target.clone(),
            account_id: grant.account_id.clone(),
            role_arn: grant.role_arn.clone(),
            region: grant.region.clone(),
            requester: grant.requester.clone(),
            requester_verified: grant.requester_verified.as_ref().map(verified_v3),
            grantee: grant.grantee.clone(),
            scopes: grant
                .scopes
                .iter()
                .map(|scope| ScopeV3 {
                    actions: scope.actions.iter().map(|a| a.as_str().to_owned()).collect(),
                    resources: scope.resources.iter().map(|r| r.as_str().to_owned()).collect(),
                })
                .collect(),
            policy_digest: policy_digest(&grant.session_policy),
            justification: grant.justification.clone(),
            ticket: grant.ticket.clone(),
            mfa_serial: grant.mfa_serial.clone(),
            created: i64::try_from(grant.created_at.unix_timestamp_nanos())
                .map_err(|_| "creation time out of range".to_owned())?,
            start: clock.to(grant.start),
            end: clock.to(grant.end),
            pending_until: clock.to(grant.pending_until),
        }),
        decision: Some(decision_v3(clock, &grant.decision)),
        events: Vec::with_capacity(events.len()),
        approvals: grant
            .approvals
            .iter()
            .map(|approval| approval_v3(clock, approval))
            .collect(),
        windows: Vec::new(),
        review: grant.review.as_ref().map(|review| review_v3(clock, review)),
        extensions: grant
            .extensions
            .iter()
            .map(|extension| extension_v3(clock, extension))
            .collect(),
        revocation: grant
            .revocation
            .as_ref()
            .map(|revocation| revocation_v3(clock, revocation)),
        enforcement: grant
            .enforcement
            .iter()
            .map(|enforcement| enforcement_v3(clock, enforcement))
            .collect(),
    };
    for event in events {
        let issuance = match event.kind {
            EventKind::Issued { .. } => issuances.next(),
            _ => None,
        };
        body.events.push(event_v3(&context, event, issuance)?);
    }
    if issuances.next().is_some() {
        return Err("more issuances than `issued` events".to_owned());
    }
    let header = Header::of(grant, attempts, events.len())?;
    let (frame, revision) = seal(keys, grant.id, None, header, &body.encode_to_vec())?;
    let mut record = header.encode().to_vec();
    record.extend_from_slice(&revision.tag);
    record.extend_from_slice(&frame);
    Ok((record, revision))
}

fn review_v3(clock: Clock, review: &Review) -> ReviewV3 {
    ReviewV3 {
        reviewer: review.reviewer.as_str().to_owned(),
        at: clock.to(review.at),
        comment: review.comment.clone(),
        caller: review.caller.clone(),
        verified: review.verified.as_ref().map(verified_v3),
    }
}

fn revocation_v3(clock: Clock, revocation: &Revocation) -> RevocationV3 {
    RevocationV3 {
        caller: revocation.caller.clone(),
        revoker: revocation.revoker.clone(),
        at: clock.to(revocation.at),
        reason: revocation.reason.clone(),
        operation: revocation.operation.clone(),
        revoker_verified: revocation.revoker_verified.as_ref().map(verified_v3),
    }
}

/// What one change appends to a grant's body.
pub(super) struct Delta<'a> {
    pub events: &'a [GrantEvent],
    pub issuance: Option<&'a Issuance>,
    pub approval: Option<&'a Approval>,
    pub window: Option<(OffsetDateTime, OffsetDateTime, &'a str)>,
    pub review: Option<&'a Review>,
    /// The extensions as read, and as they are to be.
    pub extensions: Option<(&'a [Extension], &'a [Extension])>,
    pub revocation: Option<&'a Revocation>,
    pub enforcement: Option<&'a Enforcement>,
}

/// The bytes a change appends to `grant`'s record.
pub(super) fn encode_delta(grant: &Grant, delta: &Delta<'_>) -> Result<Vec<u8>, String> {
    let context = Context::of(grant);
    let clock = context.clock;
    let mut issued = false;
    let mut body = Body::default();
    for event in delta.events {
        let issuance = match event.kind {
            EventKind::Issued { .. } if !issued => {
                issued = true;
                delta.issuance
            }
            _ => None,
        };
        body.events.push(event_v3(&context, event, issuance)?);
    }
    if delta.issuance.is_some() && !issued {
        return Err("an issuance must be recorded with its `issued` event".to_owned());
    }
    body.approvals = delta
        .approval
        .map(|approval| approval_v3(clock, approval))
        .into_iter()
        .collect();
    body.windows = delta
        .window
        .map(|(start, end, policy)| window_v3(clock, start, end, policy))
        .into_iter()
        .collect();
    body.review = delta.review.map(|review| review_v3(clock, review));
    // Only the extensions that changed: the last one, or a new one (and the one before it,
    // should both have changed in one step).
    if let Some((before, after)) = delta.extensions {
        body.extensions = after
            .iter()
            .enumerate()
            .filter(|(index, extension)| before.get(*index) != Some(*extension))
            .map(|(_, extension)| extension_v3(clock, extension))
            .collect();
    }
    body.revocation = delta.revocation.map(|revocation| revocation_v3(clock, revocation));
    body.enforcement = delta
        .enforcement
        .map(|enforcement| enforcement_v3(clock, enforcement))
        .into_iter()
        .collect();
    Ok(body.encode_to_vec())
}

/// A record read back: the grant, its every event and every issuance, oldest first.
pub(super) struct Decoded {
    pub grant: Grant,
    pub events: Vec<GrantEvent>,
    pub issuances: Vec<Issuance>,
}

/// Whether a read needs the grant's session policy, which is rebuilt (and checked against its
/// digest) on read: the grant's callers do, the audit log's readers (events, and what the grant
/// is of) do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Policy {
    Rebuild,
    /// The grant reads with an empty policy.
    Skip,
}

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unreadable {
    /// Its seal does not verify: someone other than a broker wrote it. What is wrong, for the log.
    Tampered(String),
    /// Sealed, but not a record this release can decode (or of an unknown version).
    Corrupt(String),
}

/// A record whose seal verified: its header, its body's segments, and its revision.
pub(super) struct Opened<'a> {
    pub header: Header,
    pub segments: Vec<&'a [u8]>,
    pub revision: Revision,
}

/// Checks a record's seal (before anything in it is believed) and splits it into its header
/// and its body's segments.
pub(super) fn open_record<'a>(id: GrantId, bytes: &'a [u8], keys: &IntegrityKeys) -> Result<Opened<'a>, Unreadable> {
    let tampered = |what: String| Unreadable::Tampered(what);
    let version = *bytes
        .first()
        .ok_or_else(|| Unreadable::Corrupt("an empty record".to_owned()))?;
    // Only brokers write records, and they write this version: any other was written by
    // someone else (checked before the seal, which another version would not have).
    if version != VERSION {
        return Err(Unreadable::Tampered(format!(
            "record version {version}: no release writes it"
        )));
    }
    let (raw_header, rest) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or_else(|| tampered("a sealed record shorter than its header".to_owned()))?;
    let (tag, mut frames) = rest
        .split_at_checked(TAG_LEN)
        .ok_or_else(|| tampered("a sealed record without its tag".to_owned()))?;
    let mut chain: Option<[u8; CHAIN_LEN]> = None;
    let mut last_key = None;
    let mut segments = Vec::new();
    while let Some((&key, mut rest)) = frames.split_first() {
        let frame_number = segments.len();
        let len = prost::encoding::decode_varint(&mut rest)
            .ok()
            .and_then(|len| usize::try_from(len).ok())
            .ok_or_else(|| tampered(format!("frame {frame_number}: its length is not readable")))?;
        let (segment, next) = rest
            .split_at_checked(len)
            .ok_or_else(|| tampered(format!("frame {frame_number}: shorter than its length")))?;
        chain = Some(
            keys.chain(key, id.as_uuid().as_bytes(), chain.as_ref(), segment)
                .map_err(|error| tampered(format!("frame {frame_number}: {error}")))?,
        );
        last_key = Some(key);
        segments.push(segment);
        frames = next;
    }
    let (Some(chain), Some(key)) = (chain, last_key) else {
        return Err(tampered("a sealed record without frames".to_owned()));
    };
    let verified = keys
        .verify(key, Domain::RecordTag, &[&chain, raw_header], tag)
        .map_err(|error| tampered(error.to_string()))?;
    if !verified {
        return Err(tampered(
            "its tag does not match its header and frames: changed outside the broker".to_owned(),
        ));
    }
    let header = Header::parse(raw_header).map_err(Unreadable::Corrupt)?;
    let mut sealed_tag = [0; TAG_LEN];
    sealed_tag.copy_from_slice(tag);
    Ok(Opened {
        header,
        segments,
        revision: Revision {
            header,
            chain,
            tag: sealed_tag,
            len: bytes.len(),
        },
    })
}

/// Decodes a record (its seal checked first): the grant, and the revision it is. Errors say
/// what is wrong, for the log.
pub(super) fn decode_record(
    id: GrantId,
    bytes: &[u8],
    policy: Policy,
    keys: &IntegrityKeys,
) -> Result<(Decoded, Revision), Unreadable> {
    let opened = open_record(id, bytes, keys)?;
    let decoded = decode_body(id, opened.header, &opened.segments, policy).map_err(Unreadable::Corrupt)?;
    Ok((decoded, opened.revision))
}

/// Decodes a record's body from its segments.
fn decode_body(id: GrantId, header: Header, segments: &[&[u8]], policy: Policy) -> Result<Decoded, String> {
    let state = header.state;
    let event_count = usize::from(header.events);
    let mut body = Body::default();
    for segment in segments {
        body.merge(*segment).map_err(|error| format!("body: {error}"))?;
    }
    let request = body.request.ok_or("record without its request")?;
    let created = OffsetDateTime::from_unix_timestamp_nanos(i128::from(request.created))
        .map_err(|_| "creation time out of range".to_owned())?;
    let clock = Clock(created);
    let caller = CallerId::parse(&request.caller).map_err(|why| format!("caller: {why}"))?;
    let decision = decision_from(clock, body.decision.ok_or("record without its decision")?)?;
    let scopes: Vec<Scope> = request
        .scopes
        .into_iter()
        .map(|scope| Scope {
            // Lenient on purpose: a pattern a later release refuses still reads (and is refused
            // before any issuance).
            actions: scope.actions.into_iter().map(ActionPattern::from_record).collect(),
            resources: scope.resources.into_iter().map(ResourcePattern::from_record).collect(),
        })
        .collect();
    let (start, end, digest) = match body.windows.into_iter().last() {
        Some(window) => (clock.at(window.start), clock.at(window.end), window.policy_digest),
        None => (clock.at(request.start), clock.at(request.end), request.policy_digest),
    };
    let session_policy = match policy {
        Policy::Rebuild => build_session_policy(&scopes, end)
            .ok()
            .filter(|policy| policy_digest(policy) == digest)
            .unwrap_or_default(),
        Policy::Skip => String::new(),
    };
    let mut extensions: Vec<Extension> = Vec::new();
    for stored in body.extensions {
        let extension = extension_from(clock, stored)?;
        match extensions.iter_mut().find(|known| known.number == extension.number) {
            Some(known) => *known = extension,
            None => extensions.push(extension),
        }
    }
    let mut grant = Grant {
        id,
        state,
        request_id: request.request_id,
        caller,
        target: request.target,
        account_id: request.account_id,
        role_arn: request.role_arn,
        region: request.region,
        requester: request.requester,
        requester_verified: request.requester_verified.map(verified_from).transpose()?,
        grantee: request.grantee,
        scopes,
        session_policy,
        justification: request.justification,
        ticket: request.ticket,
        mfa_serial: request.mfa_serial,
        created_at: created,
        start,
        end,
        pending_until: clock.at(request.pending_until),
        decision,
        approvals: body
            .approvals
            .into_iter()
            .map(|approval| approval_from(clock, approval))
            .collect::<Result<_, _>>()?,
        review: body
            .review
            .map(|review| {
                Ok::<_, String>(Review {
                    reviewer: Person::from_trusted(review.reviewer),
                    at: clock.at(review.at),
                    comment: review.comment,
                    caller: review.caller,
                    verified: review.verified.map(verified_from).transpose()?,
                })
            })
            .transpose()?,
        extensions,
        revocation: body
            .revocation
            .map(|revocation| {
                Ok::<_, String>(Revocation {
                    caller: revocation.caller,
                    revoker: revocation.revoker,
                    revoker_verified: revocation.revoker_verified.map(verified_from).transpose()?,
                    at: clock.at(revocation.at),
                    reason: revocation.reason,
                    operation: revocation.operation,
                })
            })
            .transpose()?,
        enforcement: body
            .enforcement
            .into_iter()
            .last()
            .map(|enforcement| enforcement_from(clock, enforcement))
            .transpose()?,
        role_cutoff: None,
        issuances: Vec::new(),
        issuance_count: 0,
        session_roles: SessionRoles::default(),
    };
    let context = Context::of(&grant);
    let mut events = Vec::with_capacity(body.events.len());
    let mut issuances = Vec::new();
    for event in body.events {
        let (event, issuance) = event_from(&context, event)?;
        events.push(event);
        issuances.extend(issuance);
    }
    if events.len() != event_count {
        return Err(format!(
            "header counts {event_count} events, the body holds {}",
            events.len()
        ));
    }
    grant.session_roles = SessionRoles::of(&events, &issuances);
    grant.issuance_count = u64::try_from(issuances.len()).unwrap_or(u64::MAX);
    grant.issuances = issuances[issuances.len().saturating_sub(RECENT_ISSUANCES)..].to_vec();
    Ok(Decoded {
        grant,
        events,
        issuances,
    })
}

/// Fuzzing on stable Rust: the decoder is fed arbitrary bytes, and every committed golden record
/// (`tests/fixtures/records`, the corpus) mutated at random. It must answer, never panic; the corpus itself must decode; and a sealed record
/// changed in any way must be refused.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    macro_rules! corpus {
        ($dir:literal: $($name:literal),*) => {
            &[$(($name, include_bytes!(concat!("../../../tests/fixtures/records/", $dir, $name, ".bin")))),*]
        };
    }

    const SEALED: &[(&str, &[u8])] = corpus!("": "pending", "approved-0", "approved-1", "approved-12", "extended", "revoked", "break-glass-reviewed");

    fn id(name: &str) -> GrantId {
        // The golden records' ids, in the order the golden test writes them.
        let n = [
            "pending",
            "approved-0",
            "approved-1",
            "approved-2",
            "approved-3",
            "approved-12",
            "extended",
            "revoked",
            "break-glass-reviewed",
        ]
        .iter()
        .position(|known| *known == name)
        .unwrap_or_default();
        GrantId::from_uuid(uuid::Uuid::from_u128(
            0x0190_a1b2_c3d4_7e5f_8a9b_0000_0000_0000 + n as u128,
        ))
    }

    fn keys() -> IntegrityKeys {
        crate::testing::integrity_keys()
    }

    #[test]
    fn the_corpus_decodes() {
        for (name, bytes) in SEALED {
            let decoded = decode_record(id(name), bytes, Policy::Rebuild, &keys());
            assert!(decoded.is_ok(), "{name}: {:?}", decoded.err());
        }
        // Sealed records belong to their grant: another id refuses them.
        let other = GrantId::from_uuid(uuid::Uuid::from_u128(1));
        assert!(matches!(
            decode_record(other, SEALED[0].1, Policy::Rebuild, &keys()),
            Err(Unreadable::Tampered(_))
        ));
    }

    /// One change to a record: a byte replaced, a run cut out, bytes inserted, or the end cut.
    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(usize, u8),
        Remove(usize, usize),
        Insert(usize, Vec<u8>),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
            (any::<usize>(), 1..16usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
            (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
        let len = bytes.len().max(1);
        match mutation {
            Mutation::Replace(at, byte) => {
                if let Some(slot) = bytes.get_mut(at % len) {
                    *slot = *byte;
                }
            }
            Mutation::Remove(at, n) => {
                let start = at % len;
                let end = (start + n).min(bytes.len());
                if start < end {
                    bytes.drain(start..end);
                }
            }
            Mutation::Insert(at, inserted) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(2_000), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_record(id("pending"), &bytes, Policy::Rebuild, &keys());
            let _ = decode_record(id("pending"), &bytes, Policy::Skip, &keys());
        }

        /// Any change to a sealed record, however small, is refused.
        #[test]
        fn a_sealed_record_changed_in_any_way_is_refused(
            which in 0..SEALED.len(),
            mutations in proptest::collection::vec(mutation(), 1..6),
        ) {
            let (name, original) = SEALED[which];
            let mut bytes = original.to_vec();
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            let decoded = decode_record(id(name), &bytes, Policy::Rebuild, &keys());
            if bytes == original {
                prop_assert!(decoded.is_ok());
            } else {
                prop_assert!(decoded.is_err(), "{} changed by {:?} still reads", name, mutations);
            }
        }
    }
}
