//! Requests in: each message validated, at the boundary and once, into what the broker takes.
//! Every field that is wrong is named (`BadRequest`), never only the first.

use tonic::Status;

use super::proto;
use crate::{
    broker::DEFAULT_PAGE_SIZE,
    domain::{
        AccessRequest, CallerId, FieldViolation, GrantId, GrantState, MfaToken, RequestId, Secret,
        approval::Person,
        audit::{AuditCursor, AuditFilter},
        extension::ExtensionRequest,
        filter::{GrantFilter, IndexPosition},
        limits,
        request::{
            self, BoundsCheck, bounds, check_requester, check_scope_bounds, check_text, free_text, parse_scopes,
            whole_seconds,
        },
    },
};

use super::fields::*;

impl TryFrom<proto::RequestAccessRequest> for AccessRequest {
    type Error = Status;
    fn try_from(message: proto::RequestAccessRequest) -> Result<Self, Status> {
        validate_access_request(message).map_err(invalid)
    }
}

/// Every field of a request for access checked, every problem reported at once; the checks that
/// need the target are the broker's ([`AccessRequest::check_against`]).
pub fn validate_access_request(message: proto::RequestAccessRequest) -> Result<AccessRequest, Vec<FieldViolation>> {
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
    let mfa_code = Secret::new(mfa_code);
    let scopes: Vec<(&[String], &[String])> = scopes
        .iter()
        .map(|proto::Scope { actions, resources }| (&actions[..], &resources[..]))
        .collect();

    // Bounds first: nothing else is looked at in a request that breaks one.
    let mut check = BoundsCheck::default();
    check.text("request_id", &request_id, false, bounds::REQUEST_ID_CHARS);
    check.text("target", &target, true, bounds::TARGET_CHARS);
    check_scope_bounds(&scopes, &mut check);
    check.text("justification", &justification, false, bounds::JUSTIFICATION_CHARS);
    check.text("ticket", &ticket, false, bounds::TICKET_CHARS);
    // Empty: the identity token names the requester (the broker refuses neither).
    check.text("requester", &requester, false, bounds::REQUESTER_CHARS);
    check.text("grantee", &grantee, true, bounds::GRANTEE_CHARS);
    check.text("mfa_serial", &mfa_serial, false, bounds::MFA_SERIAL_CHARS);
    check.text("mfa_code", mfa_code.expose(), false, bounds::MFA_CODE_CHARS);
    if !check.exceeded.is_empty() {
        return Err(check.exceeded);
    }
    let mut violations = check.missing;

    let request_id = RequestId::optional(&request_id, &mut violations);
    check_text("target", &target, &mut violations);
    // Missing entries were reported above; what is there is parsed.
    let parsed_scopes = parse_scopes(&scopes, &mut violations);
    let duration_secs = whole_seconds(
        "duration",
        duration.map(|prost_types::Duration { seconds, nanos }| (seconds, nanos)),
        limits::MIN_DURATION_SECS..=limits::MAX_DURATION_SECS,
        " (STS limits)",
    )
    .map_err(|violation| violations.push(violation))
    .unwrap_or(0);
    check_text("justification", &justification, &mut violations);
    check_text("ticket", &ticket, &mut violations);
    check_text("requester", &requester, &mut violations);
    check_requester(&requester, &mut violations);
    check_text("grantee", &grantee, &mut violations);
    let mfa = MfaToken::parse(mfa_serial, mfa_code, &mut violations);
    if break_glass && justification.trim().is_empty() {
        violations.push(FieldViolation::new(
            "justification",
            "is required for break-glass: the reviewers read it",
        ));
    }
    let start = start_time.and_then(|prost_types::Timestamp { seconds, nanos }| {
        request::start_time(seconds, nanos)
            .map_err(|violation| violations.push(violation))
            .ok()
    });

    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(AccessRequest {
        request_id,
        target,
        scopes: parsed_scopes,
        duration_secs,
        start,
        break_glass,
        justification,
        ticket,
        requester,
        grantee,
        mfa,
    })
}

/// One grant named by id: GetGrant, GetGrantHistory.
pub struct GrantRef {
    pub id: GrantId,
}

impl TryFrom<proto::GetGrantRequest> for GrantRef {
    type Error = Status;
    fn try_from(message: proto::GetGrantRequest) -> Result<Self, Status> {
        let proto::GetGrantRequest { id } = message;
        Ok(Self { id: grant_id(&id)? })
    }
}

impl TryFrom<proto::GetGrantHistoryRequest> for GrantRef {
    type Error = Status;
    fn try_from(message: proto::GetGrantHistoryRequest) -> Result<Self, Status> {
        let proto::GetGrantHistoryRequest { id } = message;
        Ok(Self { id: grant_id(&id)? })
    }
}

/// A request's `id` field, the only field a request has wrong.
fn grant_id(id: &str) -> Result<GrantId, Status> {
    GrantId::parse(id).map_err(|why| invalid(vec![FieldViolation::new("id", why)]))
}

/// The requesting caller withdraws its grant.
pub struct CancelCommand {
    pub id: GrantId,
    pub reason: String,
}

impl TryFrom<proto::CancelGrantRequest> for CancelCommand {
    type Error = Status;
    fn try_from(message: proto::CancelGrantRequest) -> Result<Self, Status> {
        let proto::CancelGrantRequest { id, reason } = message;
        let mut violations = Vec::new();
        let id = GrantId::parse(&id)
            .map_err(|why| violations.push(FieldViolation::new("id", why)))
            .ok();
        let reason = free_text("reason", reason, MAX_REASON_CHARS)
            .map_err(|violation| violations.push(violation))
            .ok();
        match (id, reason) {
            (Some(id), Some(reason)) if violations.is_empty() => Ok(Self { id, reason }),
            _ => Err(invalid(violations)),
        }
    }
}

/// A person, relayed by the caller, approves a grant or its waiting extension.
pub struct ApproveCommand {
    pub id: GrantId,
    /// Empty: the identity token names them.
    pub approver: Option<Person>,
    pub comment: String,
}

impl TryFrom<proto::ApproveGrantRequest> for ApproveCommand {
    type Error = Status;
    fn try_from(message: proto::ApproveGrantRequest) -> Result<Self, Status> {
        let proto::ApproveGrantRequest { id, approver, comment } = message;
        let (id, approver, comment) = approver_decision(id, ("approver", approver), ("comment", comment), false)?;
        Ok(Self { id, approver, comment })
    }
}

/// A person reviews a break-glass grant after the fact (the comment is required).
pub struct ReviewCommand {
    pub id: GrantId,
    /// Empty: the identity token names them.
    pub reviewer: Option<Person>,
    pub comment: String,
}

impl TryFrom<proto::ReviewGrantRequest> for ReviewCommand {
    type Error = Status;
    fn try_from(message: proto::ReviewGrantRequest) -> Result<Self, Status> {
        let proto::ReviewGrantRequest { id, reviewer, comment } = message;
        let (id, reviewer, comment) = approver_decision(id, ("reviewer", reviewer), ("comment", comment), true)?;
        Ok(Self { id, reviewer, comment })
    }
}

/// A person denies a pending grant or its waiting extension (the reason is required).
pub struct DenyCommand {
    pub id: GrantId,
    /// Empty: the identity token names them.
    pub approver: Option<Person>,
    pub reason: String,
}

impl TryFrom<proto::DenyGrantRequest> for DenyCommand {
    type Error = Status;
    fn try_from(message: proto::DenyGrantRequest) -> Result<Self, Status> {
        let proto::DenyGrantRequest { id, approver, reason } = message;
        let (id, approver, reason) = approver_decision(id, ("approver", approver), ("reason", reason), true)?;
        Ok(Self { id, approver, reason })
    }
}

/// The requesting caller asks for more time on its grant.
pub struct ExtendCommand {
    pub id: GrantId,
    pub extension: ExtensionRequest,
}

impl TryFrom<proto::ExtendGrantRequest> for ExtendCommand {
    type Error = Status;
    fn try_from(message: proto::ExtendGrantRequest) -> Result<Self, Status> {
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
            (Ok(id), Ok(extension)) => Ok(Self { id, extension }),
            (id, request) => {
                let mut violations: Vec<FieldViolation> = id.err().into_iter().collect();
                violations.extend(request.err().unwrap_or_default());
                Err(invalid(violations))
            }
        }
    }
}

/// Take a grant back: the reason is required, the person optional.
pub struct RevokeCommand {
    pub id: GrantId,
    pub reason: String,
    pub revoker: Option<Person>,
}

impl TryFrom<proto::RevokeGrantRequest> for RevokeCommand {
    type Error = Status;
    fn try_from(message: proto::RevokeGrantRequest) -> Result<Self, Status> {
        let proto::RevokeGrantRequest { id, reason, revoker } = message;
        let mut violations = Vec::new();
        let id = GrantId::parse(&id)
            .map_err(|why| violations.push(FieldViolation::new("id", why)))
            .ok();
        let (reason, revoker) = reason_and_revoker(reason, revoker, &mut violations);
        match id {
            Some(id) if violations.is_empty() => Ok(Self { id, reason, revoker }),
            _ => Err(invalid(violations)),
        }
    }
}

/// Incident response: every live grant of a grantee.
pub struct RevokeGranteeCommand {
    pub grantee: String,
    pub reason: String,
    pub revoker: Option<Person>,
}

impl TryFrom<proto::RevokeGranteeRequest> for RevokeGranteeCommand {
    type Error = Status;
    fn try_from(message: proto::RevokeGranteeRequest) -> Result<Self, Status> {
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
            Ok(Self {
                grantee,
                reason,
                revoker,
            })
        } else {
            Err(invalid(violations))
        }
    }
}

/// Emergency: every session of a target's role issued before now.
pub struct RevokeTargetSessionsCommand {
    pub target: String,
    pub reason: String,
    pub revoker: Option<Person>,
}

impl TryFrom<proto::RevokeTargetSessionsRequest> for RevokeTargetSessionsCommand {
    type Error = Status;
    fn try_from(message: proto::RevokeTargetSessionsRequest) -> Result<Self, Status> {
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
            Ok(Self {
                target,
                reason,
                revoker,
            })
        } else {
            Err(invalid(violations))
        }
    }
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

/// Fresh credentials for an approved grant, with the MFA code its target may need.
pub struct IssueCommand {
    pub id: GrantId,
    pub mfa: Option<MfaToken>,
}

impl TryFrom<proto::IssueCredentialsRequest> for IssueCommand {
    type Error = Status;
    fn try_from(message: proto::IssueCredentialsRequest) -> Result<Self, Status> {
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
            Some(id) if violations.is_empty() => Ok(Self { id, mfa }),
            _ => Err(invalid(violations)),
        }
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

/// Follow one grant, from the start or after a cursor the client was given.
pub struct WatchCommand {
    pub id: GrantId,
    pub after: Option<u64>,
}

impl TryFrom<proto::WatchGrantRequest> for WatchCommand {
    type Error = Status;
    fn try_from(message: proto::WatchGrantRequest) -> Result<Self, Status> {
        let proto::WatchGrantRequest { id, after_event } = message;
        Ok(Self {
            id: grant_id(&id)?,
            after: after_event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> proto::RequestAccessRequest {
        proto::RequestAccessRequest {
            request_id: "req-1".into(),
            target: "prod-logs-read".into(),
            scopes: vec![proto::Scope {
                actions: vec!["s3:GetObject".into()],
                resources: vec!["arn:aws:s3:::acme-logs/*".into()],
            }],
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            justification: "debug ingestion".into(),
            ticket: "INC-1".into(),
            requester: "alice@example.com".into(),
            grantee: "vendor-x".into(),
            ..proto::RequestAccessRequest::default()
        }
    }

    fn fields(violations: &[FieldViolation]) -> Vec<&str> {
        violations.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn a_valid_request_converts_field_by_field() {
        let start = prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 5,
        };
        let request = validate_access_request(proto::RequestAccessRequest {
            start_time: Some(start),
            mfa_serial: "arn:aws:iam::123456789012:mfa/alice".into(),
            mfa_code: "314159".into(),
            ..message()
        })
        .unwrap();
        assert_eq!(request.request_id.unwrap().as_str(), "req-1");
        assert_eq!(request.target, "prod-logs-read");
        assert_eq!(request.scopes.len(), 1);
        assert_eq!(request.scopes[0].actions[0].as_str(), "s3:GetObject");
        assert_eq!(request.scopes[0].resources[0].as_str(), "arn:aws:s3:::acme-logs/*");
        assert_eq!(request.duration_secs, 3600);
        assert_eq!(
            request.start.map(time::OffsetDateTime::unix_timestamp_nanos),
            Some(1_900_000_000_000_000_005)
        );
        assert_eq!(
            (request.justification.as_str(), request.ticket.as_str()),
            ("debug ingestion", "INC-1")
        );
        assert_eq!(
            (request.requester.as_str(), request.grantee.as_str()),
            ("alice@example.com", "vendor-x")
        );
        let mfa = request.mfa.unwrap();
        assert_eq!(
            (mfa.serial.as_str(), mfa.code.expose()),
            ("arn:aws:iam::123456789012:mfa/alice", "314159")
        );
        assert!(!request.break_glass);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let violations = validate_access_request(proto::RequestAccessRequest {
            request_id: "has space".into(),
            scopes: vec![proto::Scope {
                actions: vec!["GetObject".into()],
                resources: vec![],
            }],
            duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            requester: "a".into(),
            grantee: String::new(),
            mfa_serial: "arn:aws:iam::123456789012:mfa/alice".into(),
            break_glass: true,
            justification: " ".into(),
            start_time: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..message()
        })
        .unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "scopes[0].resources",
                "grantee",
                "request_id",
                "scopes[0].actions[0]",
                "duration",
                "requester",
                "mfa_code",
                "justification",
                "start_time"
            ]
        );
        assert!(violations[4].description.contains("900-43200"));
    }

    #[test]
    fn a_value_over_its_bound_is_reported_alone() {
        let violations = validate_access_request(proto::RequestAccessRequest {
            request_id: "has space".into(),
            ticket: "T".repeat(bounds::TICKET_CHARS + 1),
            ..message()
        })
        .unwrap_err();
        assert_eq!(fields(&violations), ["ticket"]);
        assert_eq!(
            violations[0].description,
            format!(
                "must be at most {} characters, got {}",
                bounds::TICKET_CHARS,
                bounds::TICKET_CHARS + 1
            )
        );
    }

    #[test]
    fn debug_of_the_message_and_of_what_it_becomes_never_prints_the_mfa_code() {
        let with_code = proto::RequestAccessRequest {
            mfa_serial: "arn:aws:iam::123456789012:mfa/alice".into(),
            mfa_code: "314159".into(),
            ..message()
        };
        assert!(!format!("{with_code:?}").contains("314159"));
        let validated = validate_access_request(with_code).unwrap();
        assert!(!format!("{validated:?}").contains("314159"));
    }
}

/// Fuzzing on stable Rust: requests of arbitrary text (any Unicode, control and format
/// characters, lengths around every bound), arbitrary scopes, durations and times are validated:
/// refused with field violations or converted, never a panic; what converts holds nothing the
/// bounds forbid.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "[a-z0-9:*?/._-]{0,40}",
            ".{0,8}",
            Just("\u{202e}evil".to_owned()),
            Just("a".repeat(2_100)),
            Just("arn:aws:s3:::acme-logs/*".to_owned()),
            Just("s3:GetObject".to_owned()),
            Just("${aws:username}".to_owned()),
        ]
    }

    fn scope() -> impl Strategy<Value = proto::Scope> {
        (
            proptest::collection::vec(text(), 0..4),
            proptest::collection::vec(text(), 0..4),
        )
            .prop_map(|(actions, resources)| proto::Scope { actions, resources })
    }

    fn request() -> impl Strategy<Value = proto::RequestAccessRequest> {
        (
            (text(), text(), proptest::collection::vec(scope(), 0..4), text()),
            (text(), text(), text(), text(), text()),
            (
                proptest::option::of((any::<i64>(), any::<i32>())),
                proptest::option::of((any::<i64>(), any::<i32>())),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (request_id, target, scopes, justification),
                    (ticket, requester, grantee, mfa_serial, mfa_code),
                    (duration, start, break_glass),
                )| proto::RequestAccessRequest {
                    request_id,
                    target,
                    scopes,
                    duration: duration.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
                    justification,
                    ticket,
                    requester,
                    grantee,
                    mfa_serial,
                    mfa_code,
                    start_time: start.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    break_glass,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(2_000), ..ProptestConfig::default() })]

        #[test]
        fn any_request_is_validated(message in request()) {
            match validate_access_request(message) {
                Ok(request) => {
                    prop_assert!(!request.scopes.is_empty());
                    prop_assert!((limits::MIN_DURATION_SECS..=limits::MAX_DURATION_SECS).contains(&request.duration_secs));
                    for text in [&request.justification, &request.ticket, &request.requester, &request.grantee] {
                        prop_assert!(!text.chars().any(char::is_control), "{text:?}");
                        prop_assert!(!crate::domain::request::has_invisible_format(text), "{text:?}");
                    }
                }
                Err(violations) => prop_assert!(!violations.is_empty()),
            }
        }
    }
}
