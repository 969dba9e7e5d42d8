//! Extensions: asking for more time on an approved grant. The rules decide each one (action
//! `extend`, over the grant's facts with the total duration it would have): approved at once,
//! waiting for its own approvals, or denied. The grant's end moves only when an extension is
//! approved, and never past the target's maximum measured from the window's start.
//!
//! One extension waits at a time; a grant asks for at most [`MAX_EXTENSIONS`].

use time::{Duration, OffsetDateTime};

use super::{
    Decision, FieldViolation, Grant, RequestId,
    approval::{Approval, Person},
    request::{bounds, free_text, whole_seconds},
};

/// Most extensions one grant may ask for (a bound on its record; the target's maximum bounds
/// what they can add).
pub const MAX_EXTENSIONS: usize = 10;

/// Shortest and longest time one extension may add.
pub const MIN_EXTENSION_SECS: u64 = 60;
pub const MAX_EXTENSION_SECS: u64 = super::limits::MAX_DURATION_SECS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionState {
    /// Waiting for approvals.
    Pending,
    /// The grant's end moved.
    Approved,
    /// Refused by the rules or by an approver.
    Denied,
}

impl ExtensionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// One request for more time, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// 1 for a grant's first extension, and so on.
    pub number: u32,
    /// The caller's idempotency key: the same key again returns the grant as it is.
    pub request_id: Option<String>,
    pub additional_secs: u64,
    pub justification: String,
    pub requested_at: OffsetDateTime,
    /// The calling system that asked.
    pub caller: String,
    /// What the rules said (for a pending extension: how many approvals it needs).
    pub decision: Decision,
    pub state: ExtensionState,
    /// The approvals recorded for this extension, oldest first.
    pub approvals: Vec<Approval>,
    /// An approver's refusal and its reason (a refusal by the rules is in `decision`).
    pub denied_by: Option<(Person, String)>,
    /// For an approved extension: the end it gave the grant.
    pub new_end: Option<OffsetDateTime>,
}

impl Extension {
    pub fn additional(&self) -> Duration {
        Duration::seconds(i64::try_from(self.additional_secs).unwrap_or(i64::MAX))
    }
}

/// What a caller asks for when extending a grant, checked at the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionRequest {
    pub additional_secs: u64,
    pub justification: String,
    pub request_id: Option<String>,
}

impl ExtensionRequest {
    /// Checks each field: `additional` as (seconds, nanoseconds) when sent, a required
    /// justification, an optional request id.
    pub fn validate(
        additional: Option<(i64, i32)>,
        justification: String,
        request_id: String,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let additional_secs = whole_seconds(
            "additional_duration",
            additional,
            MIN_EXTENSION_SECS..=MAX_EXTENSION_SECS,
            "",
        )
        .map_err(|violation| violations.push(violation))
        .unwrap_or(0);
        if justification.trim().is_empty() {
            violations.push(FieldViolation::new(
                "justification",
                "is required: approvers and auditors read why more time was needed",
            ));
        }
        let justification = free_text("justification", justification, bounds::JUSTIFICATION_CHARS)
            .map_err(|violation| violations.push(violation))
            .unwrap_or_default();
        let request_id = RequestId::optional(&request_id, &mut violations).map(|id| id.as_str().to_owned());
        if violations.is_empty() {
            Ok(Self {
                additional_secs,
                justification,
                request_id,
            })
        } else {
            Err(violations)
        }
    }
}

/// Why a grant cannot take an extension of this length.
pub fn check_total(grant: &Grant, additional_secs: u64, max_duration_secs: u64) -> Result<(), FieldViolation> {
    let current = u64::try_from(grant.duration().whole_seconds()).unwrap_or(0);
    let room = max_duration_secs.saturating_sub(current);
    if additional_secs > room {
        return Err(FieldViolation::new(
            "additional_duration",
            format!(
                "the grant lasts {current}s and its target allows at most {max_duration_secs}s in all: at most {room}s can be added, not {additional_secs}s"
            ),
        ));
    }
    Ok(())
}

impl Grant {
    /// The extension waiting for approvals, if one is.
    pub fn pending_extension(&self) -> Option<&Extension> {
        self.extensions
            .last()
            .filter(|extension| extension.state == ExtensionState::Pending)
    }

    /// How long the grant was decided for, before any extension moved its end (what the
    /// rules are asked about again at every issuance).
    pub fn requested_duration(&self) -> Duration {
        let extended: Duration = self
            .extensions
            .iter()
            .filter(|extension| extension.state == ExtensionState::Approved)
            .map(Extension::additional)
            .sum();
        self.duration() - extended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(result: Result<ExtensionRequest, Vec<FieldViolation>>) -> Vec<String> {
        result
            .unwrap_err()
            .into_iter()
            .map(|violation| violation.field)
            .collect()
    }

    #[test]
    fn extension_requests_are_checked_field_by_field() {
        let ok = ExtensionRequest::validate(Some((1800, 0)), "the migration overran".into(), "ext-1".into()).unwrap();
        assert_eq!(
            ok,
            ExtensionRequest {
                additional_secs: 1800,
                justification: "the migration overran".into(),
                request_id: Some("ext-1".into()),
            }
        );
        assert_eq!(
            ExtensionRequest::validate(Some((60, 0)), "x".into(), String::new()).map(|r| r.request_id),
            Ok(None)
        );
        assert_eq!(
            fields(ExtensionRequest::validate(None, " ".into(), "bad id".into())),
            ["additional_duration", "justification", "request_id"]
        );
        for (seconds, nanos) in [(59, 0), (0, 0), (-60, 0), (43_201, 0), (600, 5), (i64::MAX, 0)] {
            assert_eq!(
                fields(ExtensionRequest::validate(
                    Some((seconds, nanos)),
                    "why".into(),
                    String::new()
                )),
                ["additional_duration"],
                "{seconds}s {nanos}ns"
            );
        }
        assert_eq!(
            fields(ExtensionRequest::validate(
                Some((600, 0)),
                "why\u{202E}".into(),
                String::new()
            )),
            ["justification"]
        );
        assert_eq!(
            fields(ExtensionRequest::validate(
                Some((600, 0)),
                "x".repeat(2_001),
                String::new()
            )),
            ["justification"]
        );
    }
}
