//! Protobuf <-> domain. Incoming messages are destructured field by field (a new proto field fails
//! to compile here until someone decides what it means) and validated once, into domain types.

use time::OffsetDateTime;
use tonic::Status;

use super::proto;
use crate::{
    broker::{
        BrokerError, DEFAULT_PAGE_SIZE, Explanation,
        revocation::{GranteeRevocation, TargetCutoff},
        watch::GrantChange,
    },
    domain::{
        AccessRequest, CallerId, Decision, FieldViolation, Grant, GrantEvent, GrantId, GrantState, Issuance,
        IssuedCredentials, MfaToken, Outcome, RawAccessRequest, Scope, Secret, Target,
        approval::{Approval, Person},
        audit::{AuditCursor, AuditEntry, AuditFilter},
        extension::{Extension, ExtensionRequest, ExtensionState},
        filter::{GrantFilter, IndexPosition},
        request::{bounds, free_text},
        revocation::EnforcementStatus,
    },
};

fn invalid(violations: Vec<FieldViolation>) -> Status {
    BrokerError::InvalidRequest(violations).into()
}

pub fn access_request(message: proto::RequestAccessRequest) -> Result<AccessRequest, Status> {
    let proto::RequestAccessRequest {
        request_id,
        target,
        scopes,
        duration,
        justification,
        ticket,
        requester,
        grantee,
        mfa_serial,
        mfa_code,
        start_time,
        break_glass,
    } = message;
    let raw = RawAccessRequest {
        break_glass,
        start: start_time.map(|prost_types::Timestamp { seconds, nanos }| (seconds, nanos)),
        request_id,
        target,
        scopes: scopes
            .into_iter()
            .map(|proto::Scope { actions, resources }| (actions, resources))
            .collect(),
        duration: duration.map(|prost_types::Duration { seconds, nanos }| (seconds, nanos)),
        justification,
        ticket,
        requester,
        grantee,
        mfa_serial,
        mfa_code: Secret::new(mfa_code),
    };
    AccessRequest::validate(raw).map_err(invalid)
}

/// An optional time field: absent is `None`; one that is no valid time is a violation.
fn optional_time(
    field: &str,
    value: Option<prost_types::Timestamp>,
    violations: &mut Vec<FieldViolation>,
) -> Option<OffsetDateTime> {
    let t = value?;
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .filter(|_| (0..1_000_000_000).contains(&t.nanos))
        .or_else(|| {
            violations.push(FieldViolation::new(field, "is not a valid time"));
            None
        })
}

pub fn grant_id(message: proto::GetGrantRequest) -> Result<GrantId, Status> {
    let proto::GetGrantRequest { id } = message;
    GrantId::parse(&id).map_err(|why| invalid(vec![FieldViolation::new("id", why)]))
}

/// Longest cancellation reason, approval comment or denial reason.
const MAX_REASON_CHARS: usize = 1_000;

pub fn cancel_grant(message: proto::CancelGrantRequest) -> Result<(GrantId, String), Status> {
    let proto::CancelGrantRequest { id, reason } = message;
    let mut violations = Vec::new();
    let id = GrantId::parse(&id)
        .map_err(|why| violations.push(FieldViolation::new("id", why)))
        .ok();
    let reason = free_text("reason", reason, MAX_REASON_CHARS)
        .map_err(|violation| violations.push(violation))
        .ok();
    match (id, reason) {
        (Some(id), Some(reason)) if violations.is_empty() => Ok((id, reason)),
        _ => Err(invalid(violations)),
    }
}

/// An approver's decision: the grant, the person, and the free text (comment or reason).
fn approver_decision(
    id: String,
    approver: String,
    (field, value): (&str, String),
    text_required: bool,
) -> Result<(GrantId, Person, String), Status> {
    let mut violations = Vec::new();
    let id = GrantId::parse(&id)
        .map_err(|why| violations.push(FieldViolation::new("id", why)))
        .ok();
    let approver = Person::parse("approver", &approver)
        .map_err(|violation| violations.push(violation))
        .ok();
    if text_required && value.trim().is_empty() {
        violations.push(FieldViolation::new(field, "is required"));
    }
    let value = free_text(field, value, MAX_REASON_CHARS)
        .map_err(|violation| violations.push(violation))
        .ok();
    match (id, approver, value) {
        (Some(id), Some(approver), Some(value)) if violations.is_empty() => Ok((id, approver, value)),
        _ => Err(invalid(violations)),
    }
}

pub fn approve_grant(message: proto::ApproveGrantRequest) -> Result<(GrantId, Person, String), Status> {
    let proto::ApproveGrantRequest { id, approver, comment } = message;
    approver_decision(id, approver, ("comment", comment), false)
}

pub fn review_grant(message: proto::ReviewGrantRequest) -> Result<(GrantId, Person, String), Status> {
    let proto::ReviewGrantRequest { id, reviewer, comment } = message;
    approver_decision(id, reviewer, ("comment", comment), true)
}

pub fn deny_grant(message: proto::DenyGrantRequest) -> Result<(GrantId, Person, String), Status> {
    let proto::DenyGrantRequest { id, approver, reason } = message;
    approver_decision(id, approver, ("reason", reason), true)
}

pub fn extend_grant(message: proto::ExtendGrantRequest) -> Result<(GrantId, ExtensionRequest), Status> {
    let proto::ExtendGrantRequest {
        id,
        additional_duration,
        justification,
        request_id,
    } = message;
    let id = GrantId::parse(&id).map_err(|why| FieldViolation::new("id", why));
    let request = ExtensionRequest::validate(
        additional_duration.map(|prost_types::Duration { seconds, nanos }| (seconds, nanos)),
        justification,
        request_id,
    );
    match (id, request) {
        (Ok(id), Ok(request)) => Ok((id, request)),
        (id, request) => {
            let mut violations: Vec<FieldViolation> = id.err().into_iter().collect();
            violations.extend(request.err().unwrap_or_default());
            Err(invalid(violations))
        }
    }
}

/// A revocation's reason (required) and the person named (optional).
fn reason_and_revoker(
    reason: String,
    revoker: String,
    violations: &mut Vec<FieldViolation>,
) -> (String, Option<Person>) {
    if reason.trim().is_empty() {
        violations.push(FieldViolation::new("reason", "is required"));
    }
    let reason = free_text("reason", reason, MAX_REASON_CHARS)
        .map_err(|violation| violations.push(violation))
        .unwrap_or_default();
    let revoker = if revoker.is_empty() {
        None
    } else {
        Person::parse("revoker", &revoker)
            .map_err(|violation| violations.push(violation))
            .ok()
    };
    (reason, revoker)
}

pub fn revoke_grant(message: proto::RevokeGrantRequest) -> Result<(GrantId, String, Option<Person>), Status> {
    let proto::RevokeGrantRequest { id, reason, revoker } = message;
    let mut violations = Vec::new();
    let id = GrantId::parse(&id)
        .map_err(|why| violations.push(FieldViolation::new("id", why)))
        .ok();
    let (reason, revoker) = reason_and_revoker(reason, revoker, &mut violations);
    match id {
        Some(id) if violations.is_empty() => Ok((id, reason, revoker)),
        _ => Err(invalid(violations)),
    }
}

pub fn revoke_grantee(message: proto::RevokeGranteeRequest) -> Result<(String, String, Option<Person>), Status> {
    let proto::RevokeGranteeRequest {
        grantee,
        reason,
        revoker,
    } = message;
    let mut violations = Vec::new();
    let length = grantee.chars().count();
    if length == 0 || length > bounds::GRANTEE_CHARS {
        violations.push(FieldViolation::new(
            "grantee",
            format!("must be 1-{} characters, got {length}", bounds::GRANTEE_CHARS),
        ));
    }
    let (reason, revoker) = reason_and_revoker(reason, revoker, &mut violations);
    if violations.is_empty() {
        Ok((grantee, reason, revoker))
    } else {
        Err(invalid(violations))
    }
}

pub fn revoke_target_sessions(
    message: proto::RevokeTargetSessionsRequest,
) -> Result<(String, String, Option<Person>), Status> {
    let proto::RevokeTargetSessionsRequest {
        target,
        reason,
        revoker,
    } = message;
    let mut violations = Vec::new();
    let length = target.chars().count();
    if length == 0 || length > bounds::TARGET_CHARS {
        violations.push(FieldViolation::new(
            "target",
            format!("must be 1-{} characters, got {length}", bounds::TARGET_CHARS),
        ));
    }
    let (reason, revoker) = reason_and_revoker(reason, revoker, &mut violations);
    if violations.is_empty() {
        Ok((target, reason, revoker))
    } else {
        Err(invalid(violations))
    }
}

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
                    grant: Some(grant(&revoked)),
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

fn revocation(grant: &Grant) -> Option<proto::Revocation> {
    let revocation = grant.revocation.as_ref()?;
    let enforcement = grant.enforcement.as_ref();
    let status = enforcement.map_or(EnforcementStatus::Pending, |e| e.status);
    Some(proto::Revocation {
        caller: revocation.caller.clone(),
        revoker: revocation.revoker.clone().unwrap_or_default(),
        revoke_time: Some(timestamp(revocation.at)),
        reason: revocation.reason.clone(),
        operation_id: revocation.operation.clone().unwrap_or_default(),
        enforcement: enforcement_status(status).into(),
        enforcement_error: enforcement.and_then(|e| e.error.clone()).unwrap_or_default(),
        enforcement_time: enforcement.map(|e| timestamp(e.at)),
        cutoff_time: enforcement.and_then(|e| e.cutoff).map(timestamp),
        sessions: grant
            .issuances
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

/// Longest access key id (IAM's own bound; STS's are 20 characters).
const MAX_ACCESS_KEY_ID_CHARS: usize = 128;

pub fn access_key_id(message: proto::FindGrantByAccessKeyRequest) -> Result<String, Status> {
    let proto::FindGrantByAccessKeyRequest { access_key_id } = message;
    let length = access_key_id.chars().count();
    let well_formed =
        (16..=MAX_ACCESS_KEY_ID_CHARS).contains(&length) && access_key_id.chars().all(|c| c.is_ascii_alphanumeric());
    if well_formed {
        Ok(access_key_id)
    } else {
        Err(invalid(vec![FieldViolation::new(
            "access_key_id",
            format!(
                "{} is not an access key id (16-{MAX_ACCESS_KEY_ID_CHARS} letters and digits, such as ASIAIOSFODNN7EXAMPLE)",
                crate::domain::echo(&access_key_id)
            ),
        )]))
    }
}

pub fn found_by_access_key(grant: &Grant, found: Option<&Issuance>) -> proto::FindGrantByAccessKeyResponse {
    proto::FindGrantByAccessKeyResponse {
        grant: Some(self::grant(grant)),
        issuance: found.map(issuance),
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
    }
}

fn audit_cursor(field: &str, text: &str, violations: &mut Vec<FieldViolation>) -> Option<AuditCursor> {
    if text.is_empty() {
        return None;
    }
    AuditCursor::parse(text)
        .map_err(|why| violations.push(FieldViolation::new(field, why)))
        .ok()
}

pub fn watch_audit(message: proto::WatchAuditEventsRequest) -> Result<Option<AuditCursor>, Status> {
    let proto::WatchAuditEventsRequest { after_cursor } = message;
    let mut violations = Vec::new();
    let cursor = audit_cursor("after_cursor", &after_cursor, &mut violations);
    if violations.is_empty() {
        Ok(cursor)
    } else {
        Err(invalid(violations))
    }
}

/// An audit query: the filter, where to continue, the order and the page size.
pub struct AuditListing {
    pub filter: AuditFilter,
    pub cursor: Option<AuditCursor>,
    pub newest_first: bool,
    pub page_size: usize,
}

pub fn list_audit(message: proto::ListAuditEventsRequest) -> Result<AuditListing, Status> {
    let proto::ListAuditEventsRequest {
        from_time,
        to_time,
        grant_id,
        actor,
        events,
        target,
        account_id,
        newest_first,
        page_size,
        page_token,
    } = message;
    let mut violations = Vec::new();
    let from = optional_time("from_time", from_time, &mut violations);
    let to = optional_time("to_time", to_time, &mut violations);
    let grant = if grant_id.is_empty() {
        None
    } else {
        GrantId::parse(&grant_id)
            .map_err(|why| violations.push(FieldViolation::new("grant_id", why)))
            .ok()
    };
    for (n, name) in events.iter().enumerate() {
        if !crate::domain::grant::EVENT_NAMES.contains(&name.as_str())
            && !crate::domain::audit::SERVICE_EVENT_NAMES.contains(&name.as_str())
        {
            violations.push(FieldViolation::new(
                format!("events[{n}]"),
                format!("{} is not an event type", crate::domain::echo(name)),
            ));
        }
    }
    let bounded = |field: &str, value: String, max: usize, violations: &mut Vec<FieldViolation>| {
        if value.chars().count() > max {
            violations.push(FieldViolation::new(field, format!("must be at most {max} characters")));
            None
        } else {
            Some(value).filter(|value| !value.is_empty())
        }
    };
    let actor = bounded("actor", actor, bounds::REQUESTER_CHARS, &mut violations);
    let target = bounded("target", target, bounds::TARGET_CHARS, &mut violations);
    let account_id = bounded("account_id", account_id, 12, &mut violations);
    let cursor = audit_cursor("page_token", &page_token, &mut violations);
    let page_size = match usize::try_from(page_size) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(size) => size,
        Err(_) => {
            violations.push(FieldViolation::new("page_size", "must not be negative"));
            0
        }
    };
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    Ok(AuditListing {
        filter: AuditFilter {
            from,
            to,
            grant,
            actor,
            types: events,
            target,
            account_id,
        },
        cursor,
        newest_first,
        page_size,
    })
}

pub fn issue_credentials(message: proto::IssueCredentialsRequest) -> Result<(GrantId, Option<MfaToken>), Status> {
    let proto::IssueCredentialsRequest {
        id,
        mfa_serial,
        mfa_code,
    } = message;
    let mut violations = Vec::new();
    let id = GrantId::parse(&id)
        .map_err(|why| violations.push(FieldViolation::new("id", why)))
        .ok();
    if mfa_serial.chars().count() > bounds::MFA_SERIAL_CHARS || mfa_code.chars().count() > bounds::MFA_CODE_CHARS {
        violations.push(FieldViolation::new(
            "mfa_serial",
            format!(
                "mfa_serial and mfa_code are at most {} and {} characters",
                bounds::MFA_SERIAL_CHARS,
                bounds::MFA_CODE_CHARS
            ),
        ));
        return Err(invalid(violations));
    }
    let mfa = MfaToken::parse(mfa_serial, Secret::new(mfa_code), &mut violations);
    match id {
        Some(id) if violations.is_empty() => Ok((id, mfa)),
        _ => Err(invalid(violations)),
    }
}

/// Which grants a ListGrants call asks for.
pub struct GrantListing {
    pub page_size: usize,
    /// A queue continues strictly before this grant ...
    pub before: Option<GrantId>,
    /// ... a search before this index position.
    pub search_before: Option<IndexPosition>,
    /// Which grants (for a search, not the two lists below).
    pub filter: GrantFilter,
    /// An approver's queue instead of the caller's own grants.
    pub waiting_for: Option<Person>,
    /// Break-glass grants to review instead of the caller's own grants.
    pub break_glass_unreviewed: bool,
}

pub fn list_grants(message: proto::ListGrantsRequest) -> Result<GrantListing, Status> {
    let proto::ListGrantsRequest {
        page_size,
        page_token,
        waiting_for_approver,
        break_glass_unreviewed,
        requester,
        grantee,
        caller,
        target,
        account_id,
        states,
        live,
        break_glass,
        create_time_from,
        create_time_to,
    } = message;
    let mut violations = Vec::new();
    let mut text = |field: &str, value: String, max: usize| {
        if value.is_empty() {
            return None;
        }
        let length = value.chars().count();
        if length > max {
            violations.push(FieldViolation::new(
                field,
                format!("must be at most {max} characters, got {length}"),
            ));
            return None;
        }
        Some(value)
    };
    let requester = text("requester", requester, bounds::REQUESTER_CHARS);
    let grantee = text("grantee", grantee, bounds::GRANTEE_CHARS);
    let target = text("target", target, bounds::TARGET_CHARS);
    let account_id = text("account_id", account_id, 12);
    let caller = text("caller", caller, 64).and_then(|caller| {
        CallerId::parse(&caller)
            .map_err(|why| violations.push(FieldViolation::new("caller", why)))
            .ok()
    });
    let mut wanted_states = std::collections::BTreeSet::new();
    for (n, state) in states.into_iter().enumerate() {
        match proto::GrantState::try_from(state).ok().and_then(domain_state) {
            Some(state) => {
                wanted_states.insert(state);
            }
            None => violations.push(FieldViolation::new(
                format!("states[{n}]"),
                format!("{state} is not a grant state"),
            )),
        }
    }
    let created_from = optional_time("create_time_from", create_time_from, &mut violations);
    let created_to = optional_time("create_time_to", create_time_to, &mut violations);
    let filter = GrantFilter {
        caller,
        requester,
        grantee,
        target,
        account_id,
        states: wanted_states,
        live,
        break_glass,
        created_from,
        created_to,
    };
    let page_size = match usize::try_from(page_size) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(size) => size,
        Err(_) => {
            violations.push(FieldViolation::new("page_size", "must not be negative"));
            0
        }
    };
    let waiting_for = if waiting_for_approver.is_empty() {
        None
    } else {
        Person::parse("waiting_for_approver", &waiting_for_approver)
            .map_err(|violation| violations.push(violation))
            .ok()
    };
    if waiting_for.is_some() && break_glass_unreviewed {
        violations.push(FieldViolation::new(
            "break_glass_unreviewed",
            "ask for one list at a time: an approver's queue, or the break-glass grants to review",
        ));
    }
    // Queues page by grant id, searches by index position: each refuses the other's tokens.
    let is_queue = waiting_for.is_some() || break_glass_unreviewed;
    let (mut before, mut search_before) = (None, None);
    if !page_token.is_empty() {
        let parsed = if is_queue {
            GrantId::parse(&page_token).map(|id| before = Some(id))
        } else {
            IndexPosition::parse(&page_token).map(|position| search_before = Some(position))
        };
        if parsed.is_err() {
            violations.push(FieldViolation::new(
                "page_token",
                "is not a token this service returned for this list",
            ));
        }
    }
    if is_queue && filter != GrantFilter::default() {
        violations.push(FieldViolation::new(
            "waiting_for_approver",
            "filters apply to a search, not to an approver's queue or the break-glass review list",
        ));
    }
    if violations.is_empty() {
        Ok(GrantListing {
            page_size,
            before,
            search_before,
            filter,
            waiting_for,
            break_glass_unreviewed,
        })
    } else {
        Err(invalid(violations))
    }
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

fn domain_state(state: proto::GrantState) -> Option<GrantState> {
    match state {
        proto::GrantState::Unspecified => None,
        proto::GrantState::PendingApproval => Some(GrantState::PendingApproval),
        proto::GrantState::Approved => Some(GrantState::Approved),
        proto::GrantState::Denied => Some(GrantState::Denied),
        proto::GrantState::Expired => Some(GrantState::Expired),
        proto::GrantState::Cancelled => Some(GrantState::Cancelled),
        proto::GrantState::Revoked => Some(GrantState::Revoked),
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

pub fn watch_grant(message: proto::WatchGrantRequest) -> Result<(GrantId, Option<u64>), Status> {
    let proto::WatchGrantRequest { id, after_event } = message;
    GrantId::parse(&id)
        .map(|id| (id, after_event))
        .map_err(|why| invalid(vec![FieldViolation::new("id", why)]))
}

pub fn grant_history(message: proto::GetGrantHistoryRequest) -> Result<GrantId, Status> {
    let proto::GetGrantHistoryRequest { id } = message;
    GrantId::parse(&id).map_err(|why| invalid(vec![FieldViolation::new("id", why)]))
}

pub fn history(found: &Grant, events: &[GrantEvent]) -> proto::GetGrantHistoryResponse {
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
            })
            .collect(),
    }
}

/// An event as the audit trail holds it (serialising these types cannot fail).
fn event_json(event: &GrantEvent) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

pub fn grant_change(change: &GrantChange) -> proto::GrantChange {
    let (event, event_json, event_time) = match &change.event {
        None => (String::new(), String::new(), None),
        Some(event) => (
            event.kind.name().to_owned(),
            event_json(event),
            Some(timestamp(event.at)),
        ),
    };
    proto::GrantChange {
        grant: Some(grant(&change.grant)),
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

pub fn grant(grant: &Grant) -> proto::Grant {
    proto::Grant {
        id: grant.id.to_string(),
        state: state(grant.state).into(),
        request_id: grant.request_id.clone().unwrap_or_default(),
        target: grant.target.clone(),
        account_id: grant.account_id.clone(),
        role_arn: grant.role_arn.clone(),
        region: grant.region.clone(),
        requester: grant.requester.clone(),
        grantee: grant.grantee.clone(),
        caller: grant.caller.to_string(),
        scopes: grant.scopes.iter().map(scope).collect(),
        session_policy: grant.session_policy.clone(),
        justification: grant.justification.clone(),
        ticket: grant.ticket.clone(),
        create_time: Some(timestamp(grant.created_at)),
        start_time: Some(timestamp(grant.start)),
        end_time: Some(timestamp(grant.end)),
        decision: Some(decision(&grant.decision)),
        issuances: grant.issuances.iter().map(issuance).collect(),
        issuance_count: u32::try_from(grant.issuance_count).unwrap_or(u32::MAX),
        approvals: grant.approvals.iter().map(approval).collect(),
        extensions: grant.extensions.iter().map(extension).collect(),
        revocation: revocation(grant),
        sessions_denied_before_time: grant.role_cutoff.as_ref().map(|cutoff| timestamp(cutoff.at)),
        approvals_required: grant.decision.approvals_required.to_annotation(),
        pending_expire_time: Some(timestamp(grant.pending_until)),
        break_glass: grant.decision.break_glass,
        review: grant.review.as_ref().map(|review| proto::Review {
            reviewer: review.reviewer.to_string(),
            review_time: Some(timestamp(review.at)),
            comment: review.comment.clone(),
            caller: review.caller.clone(),
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
