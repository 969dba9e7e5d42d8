//! The audit log: every event of every grant, in the order it was recorded, each with a cursor
//! that resumes a reader exactly after it, and what auditors filter it by.

use time::OffsetDateTime;

use super::{EventKind, GrantEvent, GrantId};

/// The last millisecond of the year 9999: later cursors are refused.
const MAX_CURSOR_MILLIS: u64 = 253_402_300_799_999;

/// Where an event sits in the log: `<unix ms>-<sequence>`, ordered as the log is. A reader that
/// resumes after a cursor gets every later event once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditCursor {
    millis: u64,
    sequence: u64,
}

impl AuditCursor {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("{} is not an audit cursor (such as 1795941600000-0)", super::echo(text));
        let (millis, sequence) = text.split_once('-').ok_or_else(invalid)?;
        let cursor = Self {
            millis: millis.parse().map_err(|_| invalid())?,
            sequence: sequence.parse().map_err(|_| invalid())?,
        };
        // Within what the log can hold, so that "after" and "before" it are always positions
        // the log can be read from (the largest id has nothing after it).
        if cursor.millis > MAX_CURSOR_MILLIS || cursor.sequence == u64::MAX {
            return Err(invalid());
        }
        Ok(cursor)
    }

    /// A cursor from its two numbers (as a store makes them).
    pub fn from_parts(millis: u64, sequence: u64) -> Self {
        Self {
            millis: millis.min(MAX_CURSOR_MILLIS),
            sequence: sequence.min(u64::MAX - 1),
        }
    }

    /// The first cursor at or after `at`.
    pub fn at(at: OffsetDateTime) -> Self {
        Self {
            millis: u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
            sequence: 0,
        }
    }

    /// The cursor just before this one: reading after it includes this one.
    pub fn preceding(&self) -> Self {
        match self.sequence {
            0 => Self {
                millis: self.millis.saturating_sub(1),
                sequence: u64::MAX,
            },
            sequence => Self {
                millis: self.millis,
                sequence: sequence - 1,
            },
        }
    }

    /// When the event was logged.
    pub fn time(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.millis) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl std::fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.millis, self.sequence)
    }
}

/// One event of the log, with what auditors ask about its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub cursor: AuditCursor,
    pub grant_id: GrantId,
    pub target: String,
    pub account_id: String,
    /// The caller that requested the grant (the event's own caller may be another: an approval
    /// portal, the broker itself).
    pub grant_caller: String,
    pub event: GrantEvent,
}

impl GrantEvent {
    /// Who did it: the person an event names (approver, reviewer, revoker), else the caller.
    pub fn actor(&self) -> &str {
        match &self.kind {
            EventKind::ApprovalRecorded { approver, .. } => approver,
            EventKind::Denied { approver, .. } => approver,
            EventKind::ExtensionDenied {
                approver: Some(approver),
                ..
            } => approver,
            EventKind::Reviewed { reviewer, .. } => reviewer,
            EventKind::Revoked {
                revoker: Some(revoker), ..
            } => revoker,
            _ => &self.caller,
        }
    }
}

/// Which events an audit query asks for: all of the conditions set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub from: Option<OffsetDateTime>,
    /// Before this.
    pub to: Option<OffsetDateTime>,
    pub grant: Option<GrantId>,
    /// The person or caller who acted (see [`GrantEvent::actor`]), or the event's caller.
    pub actor: Option<String>,
    /// Event type names (`approved`, `revoked`, ...); empty: any.
    pub types: Vec<String>,
    pub target: Option<String>,
    pub account_id: Option<String>,
}

impl AuditFilter {
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        let event = &entry.event;
        self.grant.is_none_or(|grant| grant == entry.grant_id)
            && self
                .actor
                .as_deref()
                .is_none_or(|actor| event.actor() == actor || event.caller == actor)
            && (self.types.is_empty() || self.types.iter().any(|name| name == event.kind.name()))
            && self.target.as_deref().is_none_or(|target| target == entry.target)
            && self
                .account_id
                .as_deref()
                .is_none_or(|account| account == entry.account_id)
            && self.from.is_none_or(|from| entry.cursor.time() >= from)
            && self.to.is_none_or(|to| entry.cursor.time() < to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_print_and_order_as_the_log() {
        let cursor = AuditCursor::parse("1764405600000-3").unwrap();
        assert_eq!(cursor.to_string(), "1764405600000-3");
        assert!(AuditCursor::parse("1764405600000-10").unwrap() > cursor);
        assert!(AuditCursor::parse("1764405600001-0").unwrap() > cursor);
        for bad in [
            "",
            "1-",
            "-1",
            "x-1",
            "1-2-3",
            "1764405600000",
            "18446744073709551615-18446744073709551615",
            "253402300800000-0",
            "1-18446744073709551615",
        ] {
            assert!(AuditCursor::parse(bad).is_err(), "{bad}");
        }
        let at = time::macros::datetime!(2026-11-29 08:40:00.123 UTC);
        assert_eq!(AuditCursor::at(at).to_string(), "1795941600123-0");
        assert_eq!(AuditCursor::at(at).time(), at);
    }
}
