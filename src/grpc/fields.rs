//! Field rules the request conversions share: how an invalid request becomes one status with
//! every violation, times, free text, the person a call names, and audit cursors.

use time::OffsetDateTime;
use tonic::Status;

use crate::{
    broker::BrokerError,
    domain::{FieldViolation, GrantId, approval::Person, audit::AuditCursor, request::free_text},
};

pub(super) fn invalid(violations: Vec<FieldViolation>) -> Status {
    BrokerError::InvalidRequest(violations).into()
}

/// An optional time field: absent is `None`; one that is no valid time is a violation.
pub(super) fn optional_time(
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

/// Longest cancellation reason, approval comment or denial reason.
pub(super) const MAX_REASON_CHARS: usize = 1_000;

/// An approver's decision: the grant, the person, and the free text (comment or reason).
pub(super) fn approver_decision(
    id: String,
    (person_field, approver): (&str, String),
    (field, value): (&str, String),
    text_required: bool,
) -> Result<(GrantId, Option<Person>, String), Status> {
    let mut violations = Vec::new();
    let id = GrantId::parse(&id)
        .map_err(|why| violations.push(FieldViolation::new("id", why)))
        .ok();
    // Empty: the verified identity token names the person (the broker refuses neither).
    let approver = if approver.is_empty() {
        Some(None)
    } else {
        Person::parse(person_field, &approver)
            .map(Some)
            .map_err(|violation| violations.push(violation))
            .ok()
    };
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

/// A revocation's reason (required) and the person named (optional).
pub(super) fn reason_and_revoker(
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

pub(super) fn audit_cursor(field: &str, text: &str, violations: &mut Vec<FieldViolation>) -> Option<AuditCursor> {
    if text.is_empty() {
        return None;
    }
    AuditCursor::parse(text)
        .map_err(|why| violations.push(FieldViolation::new(field, why)))
        .ok()
}
