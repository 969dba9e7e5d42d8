//! The grant: one decided access request, its lifecycle state, the credentials minted for it
//! (never their secret parts) and the audit events that explain it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    CallerId, Scope,
    approval::{Approval, ApprovalRequirement, Review},
    extension::Extension,
    identity::{Attribution, Verified},
    revocation::{Cutoff, Enforcement, EnforcementStatus, Revocation},
};

/// A grant's id: a UUIDv7, so ids sort by creation time (the audit indexes rely on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(Uuid);

impl GrantId {
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// Accepts the hyphenated form the broker hands out.
    pub fn parse(text: &str) -> Result<Self, String> {
        Uuid::try_parse(text).map(Self).map_err(|_| {
            format!(
                "{} is not a grant id (a UUID such as 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b)",
                super::echo(text)
            )
        })
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The smallest id a grant created at `at` can have: everything created earlier sorts below.
    pub fn lower_bound_at(at: OffsetDateTime) -> Self {
        let millis = u128::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Self(Uuid::from_u128((millis & 0xFFFF_FFFF_FFFF) << 80))
    }
}

impl std::fmt::Display for GrantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Where a grant is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    PendingApproval,
    Approved,
    Denied,
    /// Never stored: an approved or pending grant reads as expired once its window has ended.
    Expired,
    Cancelled,
    Revoked,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Revoked => "revoked",
        }
    }

    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::PendingApproval,
        Self::Approved,
        Self::Denied,
        Self::Expired,
        Self::Cancelled,
        Self::Revoked,
    ];

    /// Whether no transition leaves it (denied, expired, cancelled, revoked).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::PendingApproval | Self::Approved)
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// What the approval rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approve,
    RequireApproval,
    Deny,
}

impl Outcome {
    /// The state a new grant starts in.
    pub fn initial_state(self) -> GrantState {
        match self {
            Self::Approve => GrantState::Approved,
            Self::RequireApproval => GrantState::PendingApproval,
            Self::Deny => GrantState::Denied,
        }
    }
}

/// The approval rules' decision with the ids of the policies that determined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub policy_ids: Vec<String>,
    pub reason: String,
    pub decided_at: OffsetDateTime,
    /// For a grant that waits for people: how many approvals, from which groups.
    pub approvals_required: ApprovalRequirement,
    /// Approved at once as break-glass: to be reviewed after the fact.
    pub break_glass: bool,
}

/// One set of credentials minted for a grant: what identifies the session in CloudTrail and for
/// revocation. The secret access key and session token are deliberately absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    pub access_key_id: String,
    pub session_name: String,
    pub source_identity: String,
    pub assumed_role_arn: String,
    /// The RoleId (`AROA...`) STS reported for the session (`AssumedRoleUser.AssumedRoleId` is
    /// `<RoleId>:<session name>`): the role incarnation the session belongs to, which a deny must
    /// name. `None` when STS did not say.
    pub role_id: Option<String>,
    pub expiration: OffsetDateTime,
    pub issued_at: OffsetDateTime,
    pub packed_policy_percent: Option<i32>,
}

/// Which incarnations of its role a grant's sessions belong to: what a deny of them must name
/// (`aws:userid` = `<RoleId>:<session name>`; a role deleted and re-created under the same name
/// has a new RoleId, and a deny naming the old one covers nothing of the new).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRoles {
    /// The distinct RoleIds STS reported for the grant's sessions (returned or discarded), sorted.
    pub known: Vec<String>,
    /// An STS call whose answer was never recorded (the broker died during it, the call timed
    /// out, STS did not name the role): a session may exist on the role as it is now.
    pub unreported: bool,
}

impl SessionRoles {
    /// Walks a grant's events, oldest first, with its issuances in the same order (one per
    /// `issued` event).
    pub fn of(events: &[GrantEvent], issuances: &[Issuance]) -> Self {
        let mut roles = Self::default();
        let mut issuances = issuances.iter();
        let mut in_flight = 0_usize;
        for event in events {
            let reported = match &event.kind {
                EventKind::Issuing { .. } => {
                    in_flight += 1;
                    continue;
                }
                EventKind::Issued { .. } => issuances.next().and_then(|issuance| issuance.role_id.clone()),
                EventKind::IssueDiscarded { role_id, .. } => role_id.clone(),
                _ => continue,
            };
            in_flight = in_flight.saturating_sub(1);
            roles.note(reported);
        }
        // A failed call leaves its `issuing` open: a timeout may still have minted a session.
        roles.unreported |= in_flight > 0;
        roles
    }

    /// Adds what STS reported for one more session: its RoleId, or nothing.
    pub fn note(&mut self, reported: Option<String>) {
        match reported {
            Some(role_id) => {
                if let Err(at) = self.known.binary_search(&role_id) {
                    self.known.insert(at, role_id);
                }
            }
            None => self.unreported = true,
        }
    }
}

/// An audit event: what happened to a grant, when, and on whose behalf. Serialised (never read
/// back) as the JSON the audit surfaces show; stored as the record's protobuf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The calling system that caused the event.
    pub caller: String,
    /// The person (or job) the event names as acting (requester, approver, reviewer, revoker)
    /// and how the broker knew them; `None` when it names nobody.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<Attribution>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The request was received and decided; the grant starts in `state`.
    Requested {
        state: GrantState,
        outcome: Outcome,
        policy_ids: Vec<String>,
        reason: String,
    },
    /// The broker is about to call STS: if no `Issued` follows, a session may exist unrecorded
    /// (its name is here, so it can still be found and denied).
    Issuing {
        session_name: String,
        duration_secs: u64,
    },
    Issued {
        session_name: String,
        access_key_id: String,
        #[serde(with = "time::serde::rfc3339")]
        expiration: OffsetDateTime,
    },
    IssueFailed {
        session_name: String,
        error: String,
    },
    /// STS issued credentials but they could not be recorded as issued (store unavailable, or
    /// the grant changed state meanwhile), so they were never returned to the caller.
    IssueDiscarded {
        session_name: String,
        access_key_id: String,
        reason: String,
        /// The RoleId STS reported for the discarded session: its deny must name it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role_id: Option<String>,
    },
    /// The requesting caller withdrew the grant.
    Cancelled {
        reason: String,
    },
    /// The grant was approved at once as break-glass: reviewers read the justification.
    BreakGlassUsed {
        justification: String,
    },
    /// An approver reviewed a break-glass grant after the fact.
    Reviewed {
        reviewer: String,
        comment: String,
    },
    /// Recorded once, by whichever broker replica noticed first: a pending request timed out
    /// (`was` pending_approval) or an approved window ended (`was` approved).
    Expired {
        was: GrantState,
    },
    /// An approval that did not (yet) meet the quorum, or the one that did (then `Approved`, or
    /// `Extended` for an extension, follows in the same step).
    ApprovalRecorded {
        approver: String,
        groups: Vec<String>,
        comment: String,
        /// Set when the approval is of the grant's extension with this number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extension: Option<u32>,
    },
    /// The caller asked for more time; the rules decided as `outcome` (`Extended` or
    /// `ExtensionDenied` follows in the same step unless it waits for approvals).
    ExtensionRequested {
        extension: u32,
        additional_secs: u64,
        justification: String,
        outcome: Outcome,
        policy_ids: Vec<String>,
        reason: String,
    },
    /// An extension was approved: the window now ends at `end`.
    Extended {
        extension: u32,
        #[serde(with = "time::serde::rfc3339")]
        end: OffsetDateTime,
    },
    /// Taken back; `enforcement` says what was still to be done in AWS.
    Revoked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revoker: Option<String>,
        reason: String,
        /// The RevokeGrantee operation this was part of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation: Option<String>,
        enforcement: EnforcementStatus,
    },
    /// Enforcement of the revocation in AWS moved on (written, failed, no longer needed).
    EnforcementChanged {
        status: EnforcementStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Set when a role-wide token-issue-time cutoff denies the grant's sessions.
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        cutoff: Option<OffsetDateTime>,
    },
    /// An extension was refused, by the rules (no approver) or by an approver.
    ExtensionDenied {
        extension: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approver: Option<String>,
        reason: String,
    },
    /// The quorum is met: the window starts now.
    Approved {
        #[serde(with = "time::serde::rfc3339")]
        start: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        end: OffsetDateTime,
    },
    /// An eligible approver refused.
    Denied {
        approver: String,
        reason: String,
    },
    /// The record failed the checks made before every issuance (its stored session policy is
    /// not the one its scopes build, ...): nothing was sent to STS.
    IssueRefused {
        reason: String,
    },
}

/// How many of a grant's most recent issuances reads return; `issuance_count` says how many there
/// are in all. Keeps every read of a grant bounded, whatever the issuance cap is set to.
pub const RECENT_ISSUANCES: usize = 10;

/// A grant as recorded. The store keeps `state` and the issuances beside the rest of the record,
/// so that a state change or a new issuance is one atomic write that never rewrites (and so never
/// races on) the request itself. How it is encoded is the store's business (a versioned record
/// type in the adapter), not this type's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    pub state: GrantState,
    pub request_id: Option<String>,
    pub caller: CallerId,
    pub target: String,
    pub account_id: String,
    pub role_arn: String,
    pub region: String,
    pub requester: String,
    /// What the requester's verified token proved; `None`: the calling system only asserted the
    /// name.
    pub requester_verified: Option<Verified>,
    pub grantee: String,
    pub scopes: Vec<Scope>,
    pub session_policy: String,
    pub justification: String,
    pub ticket: String,
    pub mfa_serial: Option<String>,
    pub created_at: OffsetDateTime,
    /// The window: when access becomes possible (at request for a grant approved at once, at the
    /// approval that meets the quorum for one that waits), and when it ends. `end - start` is
    /// the requested duration plus approved extensions.
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    /// A grant still pending at this time has expired (the request timed out).
    pub pending_until: OffsetDateTime,
    pub decision: Decision,
    /// The approvals recorded so far, oldest first.
    pub approvals: Vec<Approval>,
    /// For a break-glass grant: its review after the fact, once made.
    pub review: Option<Review>,
    /// Every extension asked for, oldest first: at most [`super::extension::MAX_EXTENSIONS`].
    pub extensions: Vec<Extension>,
    /// Who revoked it, when and why (REVOKED grants).
    pub revocation: Option<Revocation>,
    /// How enforcement of the revocation in AWS stands.
    pub enforcement: Option<Enforcement>,
    /// Read from the role, not the grant: a role-wide cutoff in effect. The grant's sessions
    /// issued before it are denied (it may issue fresh ones).
    pub role_cutoff: Option<Cutoff>,
    /// The most recent issuances, oldest first: at most [`RECENT_ISSUANCES`].
    pub issuances: Vec<Issuance>,
    /// How many issuances the grant has had in all.
    pub issuance_count: u64,
    /// The role incarnations its sessions (all of them, not only the recent) belong to.
    pub session_roles: SessionRoles,
}

impl Grant {
    /// When the grant expires unless something happens first: a pending request's timeout, an
    /// approved window's end. `None` for final states.
    pub fn deadline(&self) -> Option<OffsetDateTime> {
        match self.state {
            GrantState::PendingApproval => Some(self.pending_until),
            GrantState::Approved => Some(self.end),
            _ => None,
        }
    }
}

/// Every event type's name, as [`EventKind::name`] gives it.
pub const EVENT_NAMES: &[&str] = &[
    "requested",
    "issuing",
    "issued",
    "issue_failed",
    "issue_discarded",
    "issue_refused",
    "cancelled",
    "expired",
    "break_glass_used",
    "reviewed",
    "approval_recorded",
    "approved",
    "denied",
    "extension_requested",
    "extended",
    "extension_denied",
    "revoked",
    "enforcement_changed",
];

impl EventKind {
    /// The event's type, as the audit trail names it (`issued`, `approval_recorded`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Requested { .. } => "requested",
            Self::Issuing { .. } => "issuing",
            Self::Issued { .. } => "issued",
            Self::IssueFailed { .. } => "issue_failed",
            Self::IssueDiscarded { .. } => "issue_discarded",
            Self::Cancelled { .. } => "cancelled",
            Self::Expired { .. } => "expired",
            Self::BreakGlassUsed { .. } => "break_glass_used",
            Self::Reviewed { .. } => "reviewed",
            Self::ApprovalRecorded { .. } => "approval_recorded",
            Self::Approved { .. } => "approved",
            Self::Denied { .. } => "denied",
            Self::IssueRefused { .. } => "issue_refused",
            Self::ExtensionRequested { .. } => "extension_requested",
            Self::Extended { .. } => "extended",
            Self::ExtensionDenied { .. } => "extension_denied",
            Self::Revoked { .. } => "revoked",
            Self::EnforcementChanged { .. } => "enforcement_changed",
        }
    }
}

impl Grant {
    /// The state as callers see it at `now`: an approved grant whose window has ended, and a
    /// pending one past its deadline, read as expired.
    pub fn state_at(&self, now: OffsetDateTime) -> GrantState {
        match self.state {
            GrantState::Approved if now >= self.end => GrantState::Expired,
            GrantState::PendingApproval if now >= self.pending_until => GrantState::Expired,
            state => state,
        }
    }

    /// The requested length of access, whenever it starts.
    pub fn duration(&self) -> time::Duration {
        self.end - self.start
    }

    /// The last moment the grant can matter: its end, or for a pending grant the latest end
    /// an approval could still give it. Records are kept for the retention period after it.
    pub fn last_moment(&self) -> OffsetDateTime {
        match self.state {
            GrantState::PendingApproval => self.end.max(self.pending_until + self.duration()),
            _ => self.end,
        }
    }

    /// The session name every issuance of this grant uses. Derived from the grant id: unique,
    /// within STS's charset and 64 characters, and the same for every issuance, so one deny on
    /// `aws:userid` covers all of a grant's sessions.
    pub fn session_name(&self) -> String {
        format!("gb-{}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits::check_session_name;
    use time::macros::datetime;

    #[test]
    fn lower_bound_sorts_below_ids_created_at_or_after() {
        let at = datetime!(2026-11-28 10:00 UTC);
        let bound = GrantId::lower_bound_at(at).to_string();
        let later = GrantId::from_uuid(Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.unix_timestamp()).unwrap(),
            0,
        )))
        .to_string();
        let earlier = GrantId::lower_bound_at(at - time::Duration::milliseconds(1)).to_string();
        assert!(earlier < bound && bound <= later, "{earlier} {bound} {later}");
    }

    #[test]
    fn session_name_is_valid_for_sts() {
        let id = GrantId::from_uuid(Uuid::now_v7());
        let name = format!("gb-{id}");
        assert_eq!(name.len(), 39);
        assert!(check_session_name(&name).is_ok());
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in GrantState::ALL {
            assert_eq!(GrantState::parse(state.as_str()), Some(state));
        }
    }

    #[test]
    fn session_roles_name_every_reported_role_and_flag_calls_never_answered() {
        let at = datetime!(2026-11-28 10:00 UTC);
        let event = |kind| GrantEvent {
            at,
            caller: "p".into(),
            kind,
            person: None,
        };
        let issuing = || {
            event(EventKind::Issuing {
                session_name: "gb-x".into(),
                duration_secs: 900,
            })
        };
        let issued = || {
            event(EventKind::Issued {
                session_name: "gb-x".into(),
                access_key_id: "ASIA1".into(),
                expiration: at,
            })
        };
        let issuance = |role_id: Option<&str>| Issuance {
            access_key_id: "ASIA1".into(),
            session_name: "gb-x".into(),
            source_identity: "a".into(),
            assumed_role_arn: String::new(),
            role_id: role_id.map(str::to_owned),
            expiration: at,
            issued_at: at,
            packed_policy_percent: None,
        };
        let discarded = |role_id: Option<&str>| {
            event(EventKind::IssueDiscarded {
                session_name: "gb-x".into(),
                access_key_id: "ASIA2".into(),
                reason: "revoked".into(),
                role_id: role_id.map(str::to_owned),
            })
        };
        let failed = event(EventKind::IssueFailed {
            session_name: "gb-x".into(),
            error: "Timeout".into(),
        });
        assert_eq!(SessionRoles::of(&[], &[]), SessionRoles::default());
        let answered = [
            issuing(),
            issued(),
            issuing(),
            discarded(Some("AROAB")),
            issuing(),
            issued(),
        ];
        let roles = SessionRoles::of(&answered, &[issuance(Some("AROAB")), issuance(Some("AROAA"))]);
        assert_eq!(roles.known, ["AROAA", "AROAB"]);
        assert!(!roles.unreported);
        for (events, issuances) in [
            (vec![issuing()], vec![]),
            (vec![issuing(), failed], vec![]),
            (vec![issuing(), discarded(None)], vec![]),
            (vec![issuing(), issued()], vec![issuance(None)]),
        ] {
            assert!(SessionRoles::of(&events, &issuances).unreported, "{events:?}");
        }
    }
}
