//! The audit log: every event of every grant, in the order it was recorded, each with a cursor
//! that resumes a reader exactly after it, and what auditors filter it by.

use serde::Serialize;
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

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub cursor: AuditCursor,
    pub logged: Logged,
    /// How the entry is sealed in the log, as an export carries it for `audit verify`
    /// (`v1 w=... q=... k=... m=...`); `None`: not sealed (0.1.0's entries, tampered ones).
    pub seal: Option<String>,
}

/// What an entry of the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    /// An event of a grant, with what auditors ask about the grant.
    Grant {
        grant_id: GrantId,
        target: String,
        account_id: String,
        /// The caller that requested the grant (the event's own caller may be another: an
        /// approval portal, the broker itself).
        grant_caller: String,
        event: GrantEvent,
    },
    /// An event of the service itself.
    Service(ServiceEvent),
    /// An entry that cannot be vouched for: its own MAC fails, or the grant record it refers to
    /// fails its seal. What an auditor sees in place of the event (every filter but the grant
    /// and the time lets it through: no filter hides tampering).
    Tampered {
        grant_id: Option<GrantId>,
        /// What failed, for the auditor.
        reason: String,
    },
    /// A checkpoint of the log: it had held `count` entries when the one at `last` was
    /// appended. What `audit verify` counts the entries between two checkpoints against.
    Checkpoint { number: u64, count: u64, last: AuditCursor },
}

/// The name of a [`Logged::Checkpoint`] entry.
pub const CHECKPOINT: &str = "audit_checkpoint";

/// The name of a [`Logged::Tampered`] entry.
pub const TAMPERED: &str = "tampered";

/// Who a [`Logged::Tampered`] entry names as its caller and actor: the broker, which found it.
const FOUND_BY: &str = "grant-broker";

/// An event not tied to a grant: what the service did, or what was asked of it. Serialised (never
/// read back) as the JSON the audit surfaces show; stored as protobuf by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The calling system (the broker itself for `rules_loaded`).
    pub caller: String,
    /// The person the event names as acting (a revoker) and how the broker knew them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<super::identity::Attribution>,
    #[serde(flatten)]
    pub kind: ServiceEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServiceEventKind {
    /// A broker replica loaded its approval rules: which files, how many policies, and a
    /// digest of their text (replicas running different rules show different digests).
    RulesLoaded {
        digest: String,
        policies: usize,
        sources: Vec<String>,
    },
    /// An audit query: who asked (`caller`), which call, and what for.
    AuditQueried { query: String, filter: String },
    /// An admin cut off every session of a target's role issued before `cutoff`
    /// (RevokeTargetSessions). Grants stay valid; sessions issued after it are not affected.
    TargetSessionsRevoked {
        target: String,
        account_id: String,
        role_arn: String,
        #[serde(with = "time::serde::rfc3339")]
        cutoff: OffsetDateTime,
        /// When the cutoff is dropped: the longest session it can cover has expired.
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
        /// The person the admin caller named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revoker: Option<String>,
        reason: String,
    },
    /// An admin revoked every live grant of a grantee as one operation (RevokeGrantee); each
    /// grant's own `revoked` event carries the same `operation`.
    GranteeRevoked {
        operation: String,
        grantee: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revoker: Option<String>,
        reason: String,
        /// The grantee's grants read (live or not).
        examined: usize,
        /// Live grants now revoked.
        revoked: usize,
        /// Live grants whose revocation failed (each reported to the caller).
        failed: usize,
        /// More live grants than one call revokes: the caller must call again.
        truncated: bool,
    },
    /// A role's deny list no longer fit beside its other inline policies, so the broker denied
    /// every session of the role issued before `cutoff` instead: sessions of grants never
    /// revoked lose access too.
    RoleCutoffSet {
        target: String,
        account_id: String,
        role_arn: String,
        #[serde(with = "time::serde::rfc3339")]
        cutoff: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
        /// Revoked grants whose entries the cutoff replaces.
        grants: usize,
        /// Characters the deny list needed, and what the role's other policies left.
        needed: usize,
        available: usize,
    },
    /// The broker's deny policy on a role was not what it wrote (deleted, or edited outside the
    /// broker): it was written again.
    RoleDenyDrifted {
        target: String,
        account_id: String,
        role_arn: String,
        found: super::revocation::DenyDrift,
        /// Revoked grants the role's deny covers.
        grants: usize,
    },
}

/// The names of [`ServiceEventKind`]s, as the log gives them.
pub const SERVICE_EVENT_NAMES: &[&str] = &[
    "rules_loaded",
    "audit_queried",
    "target_sessions_revoked",
    "grantee_revoked",
    "role_cutoff_set",
    "role_deny_drifted",
];

impl ServiceEventKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::RulesLoaded { .. } => "rules_loaded",
            Self::AuditQueried { .. } => "audit_queried",
            Self::TargetSessionsRevoked { .. } => "target_sessions_revoked",
            Self::GranteeRevoked { .. } => "grantee_revoked",
            Self::RoleCutoffSet { .. } => "role_cutoff_set",
            Self::RoleDenyDrifted { .. } => "role_deny_drifted",
        }
    }

    /// The target and account the event concerns (empty for service-wide events).
    pub fn target_context(&self) -> (&str, &str) {
        match self {
            Self::TargetSessionsRevoked { target, account_id, .. }
            | Self::RoleCutoffSet { target, account_id, .. }
            | Self::RoleDenyDrifted { target, account_id, .. } => (target, account_id),
            Self::RulesLoaded { .. } | Self::AuditQueried { .. } | Self::GranteeRevoked { .. } => ("", ""),
        }
    }
}

impl ServiceEvent {
    /// Who did it: the person an incident action names, else the caller.
    pub fn actor(&self) -> &str {
        match &self.kind {
            ServiceEventKind::TargetSessionsRevoked {
                revoker: Some(revoker), ..
            }
            | ServiceEventKind::GranteeRevoked {
                revoker: Some(revoker), ..
            } => revoker,
            _ => &self.caller,
        }
    }
}

impl AuditEntry {
    /// The event's type (`issued`, `rules_loaded`, ...).
    pub fn name(&self) -> &'static str {
        match &self.logged {
            Logged::Grant { event, .. } => event.kind.name(),
            Logged::Service(event) => event.kind.name(),
            Logged::Tampered { .. } => TAMPERED,
            Logged::Checkpoint { .. } => CHECKPOINT,
        }
    }

    pub fn at(&self) -> OffsetDateTime {
        match &self.logged {
            Logged::Grant { event, .. } => event.at,
            Logged::Service(event) => event.at,
            Logged::Tampered { .. } | Logged::Checkpoint { .. } => self.cursor.time(),
        }
    }

    /// The calling system that caused the event.
    pub fn caller(&self) -> &str {
        match &self.logged {
            Logged::Grant { event, .. } => &event.caller,
            Logged::Service(event) => &event.caller,
            Logged::Tampered { .. } | Logged::Checkpoint { .. } => FOUND_BY,
        }
    }

    /// Who did it: the person a grant's event names, else the caller.
    pub fn actor(&self) -> &str {
        match &self.logged {
            Logged::Grant { event, .. } => event.actor(),
            Logged::Service(event) => event.actor(),
            Logged::Tampered { .. } | Logged::Checkpoint { .. } => FOUND_BY,
        }
    }

    /// The person the event names as acting, and how the broker knew them.
    pub fn person(&self) -> Option<&super::identity::Attribution> {
        match &self.logged {
            Logged::Grant { event, .. } => event.person.as_ref(),
            Logged::Service(event) => event.person.as_ref(),
            Logged::Tampered { .. } | Logged::Checkpoint { .. } => None,
        }
    }

    pub fn grant_id(&self) -> Option<GrantId> {
        match &self.logged {
            Logged::Grant { grant_id, .. } => Some(*grant_id),
            Logged::Service(_) | Logged::Checkpoint { .. } => None,
            Logged::Tampered { grant_id, .. } => *grant_id,
        }
    }

    /// The grant's target, account and requesting caller; for a service event, the target and
    /// account it concerns, if any, and no caller.
    pub fn grant_context(&self) -> (&str, &str, &str) {
        match &self.logged {
            Logged::Grant {
                target,
                account_id,
                grant_caller,
                ..
            } => (target, account_id, grant_caller),
            Logged::Service(event) => {
                let (target, account_id) = event.kind.target_context();
                (target, account_id, "")
            }
            Logged::Tampered { .. } | Logged::Checkpoint { .. } => ("", "", ""),
        }
    }

    /// The event as JSON, as the grant's trail or the log holds it.
    pub fn event_json(&self) -> String {
        // Serialising these types cannot fail.
        match &self.logged {
            Logged::Grant { event, .. } => serde_json::to_string(event),
            Logged::Service(event) => serde_json::to_string(event),
            Logged::Tampered { grant_id, reason } => serde_json::to_string(&serde_json::json!({
                "event": TAMPERED,
                "grant_id": grant_id.map(|id| id.to_string()),
                "reason": reason,
            })),
            Logged::Checkpoint { number, count, last } => serde_json::to_string(&serde_json::json!({
                "event": CHECKPOINT,
                "number": number,
                "count": count,
                "last": last.to_string(),
            })),
        }
        .unwrap_or_default()
    }
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
    /// The conditions set, as a JSON object (what an audit query record says was asked).
    pub fn describe(&self) -> String {
        let mut set = serde_json::Map::new();
        for (name, at) in [("from", self.from), ("to", self.to)] {
            if let Some(at) = at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()) {
                set.insert(name.to_owned(), at.into());
            }
        }
        if let Some(grant) = self.grant {
            set.insert("grant_id".to_owned(), grant.to_string().into());
        }
        for (name, value) in [
            ("actor", &self.actor),
            ("target", &self.target),
            ("account_id", &self.account_id),
        ] {
            if let Some(value) = value {
                set.insert(name.to_owned(), value.clone().into());
            }
        }
        if !self.types.is_empty() {
            set.insert("events".to_owned(), self.types.clone().into());
        }
        serde_json::Value::Object(set).to_string()
    }

    pub fn matches(&self, entry: &AuditEntry) -> bool {
        let (target, account_id, _) = entry.grant_context();
        let in_range = self.from.is_none_or(|from| entry.cursor.time() >= from)
            && self.to.is_none_or(|to| entry.cursor.time() < to);
        if let Logged::Tampered { grant_id, .. } = &entry.logged {
            // Nothing in it can be believed but where it is: no filter on what it claims hides it.
            return in_range && self.grant.is_none_or(|grant| grant_id.is_none_or(|id| id == grant));
        }
        self.grant.is_none_or(|grant| Some(grant) == entry.grant_id())
            && self
                .actor
                .as_deref()
                .is_none_or(|actor| entry.actor() == actor || entry.caller() == actor)
            && (self.types.is_empty() || self.types.iter().any(|name| name == entry.name()))
            && self.target.as_deref().is_none_or(|wanted| wanted == target)
            && self.account_id.as_deref().is_none_or(|wanted| wanted == account_id)
            && in_range
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
