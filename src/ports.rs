//! The narrow interfaces the broker's use cases need from the outside world. Adapters implement
//! them (Redis, STS); tests may too. Each method is one logical operation with its atomicity
//! spelled out, because the invariants depend on it.

use std::future::Future;

use time::OffsetDateTime;

use crate::domain::{
    CallerId, Grant, GrantEvent, GrantId, GrantState, Issuance, IssuedCredentials, RequestId, SessionSpec, Target,
    approval::{Approval, Review},
    audit::{AuditCursor, AuditEntry, ServiceEvent},
    extension::Extension,
    lifecycle::Transition,
    quota::{Cap, Exceeded, Rate},
    revocation::{Cutoff, Enforcement, Revocation, RevokedEntry},
};

/// The adapters the broker runs on, named once: a deployment's (Redis, STS, IAM, webhooks, the
/// system clock: `server::Deployed`) or a test's (`testing::Fakes`). `Broker<P>` and what runs
/// it take this one parameter instead of repeating a bound per adapter.
pub trait Ports: Send + Sync + 'static {
    type Store: GrantRecords + GrantSearch + GrantQueues + AuditLog + EnforcementStore + Quotas;
    type Issuer: CredentialIssuer;
    type Clock: Clock;
    type Enforcer: RoleEnforcer;
    type Notifier: Notifier;
}

/// The time. A port so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// What a request id was found bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The candidate id is now this request's grant id.
    New,
    /// The request id was used before, for this grant and request body fingerprint.
    Existing { grant_id: GrantId, fingerprint: String },
}

/// A conditional change of a grant's record, one kind per thing the broker does to a grant.
/// Each is written only while the grant's stored state is one its kind allows
/// ([`Change::expected`]), with its events, in one atomic step; what else a kind checks (an
/// approval count, the extensions, an earlier review, the attempt limit) is checked in the
/// same step.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A life-cycle transition that writes its event and nothing else: a cancellation, a
    /// denial, an expiry.
    Transition {
        transition: Transition,
        event: &'a GrantEvent,
    },
    /// An approval (`Transition::RecordApproval`), or the one that meets the quorum
    /// (`Transition::Approve`, which opens the window), written only while the grant has exactly
    /// `approvals_before` approvals: the approval that meets a quorum is decided on what is
    /// recorded, whatever races it.
    Approval {
        transition: Transition,
        approvals_before: usize,
        approval: &'a Approval,
        window: Option<Window<'a>>,
        events: &'a [GrantEvent],
    },
    /// An extension requested, approved, denied or applied (which moves the window's end),
    /// written only while the stored extensions are still the ones it was decided on: of two
    /// racing extension changes exactly one lands.
    Extension {
        transition: Transition,
        extensions: ExtensionsChange<'a>,
        window: Option<Window<'a>>,
        events: &'a [GrantEvent],
    },
    /// The grant revoked: who, when and why, and where enforcement stands.
    Revoke {
        revocation: &'a Revocation,
        enforcement: &'a Enforcement,
        event: &'a GrantEvent,
    },
    /// A break-glass review, whatever the state, written only if the grant has none yet.
    Review { review: &'a Review, event: &'a GrantEvent },
    /// An STS call announced on an approved grant: counts one attempt, refused once the grant
    /// has made `limit`.
    IssueAttempt { limit: u32, event: &'a GrantEvent },
    /// Credentials issued to an approved grant, recorded with their event.
    Issued {
        issuance: &'a Issuance,
        event: &'a GrantEvent,
    },
    /// Where a revoked grant's enforcement stands now.
    Enforcement {
        enforcement: &'a Enforcement,
        event: &'a GrantEvent,
    },
    /// An event whatever the state (a failure worth auditing).
    Note { event: &'a GrantEvent },
}

/// A grant's window as a change sets it: start, end, and the session policy for that end.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub session_policy: &'a str,
}

/// The grant's extensions as read, and as they are to be.
#[derive(Debug, Clone, Copy)]
pub struct ExtensionsChange<'a> {
    pub before: &'a [Extension],
    pub after: &'a [Extension],
}

impl<'a> Change<'a> {
    /// The life-cycle transition this change makes, if it makes one.
    pub fn transition(&self) -> Option<Transition> {
        match *self {
            Self::Transition { transition, .. }
            | Self::Approval { transition, .. }
            | Self::Extension { transition, .. } => Some(transition),
            Self::Revoke { .. } => Some(Transition::Revoke),
            Self::Review { .. }
            | Self::IssueAttempt { .. }
            | Self::Issued { .. }
            | Self::Enforcement { .. }
            | Self::Note { .. } => None,
        }
    }

    /// The states the grant must be in, as stored, for the change to be written.
    pub fn expected(&self) -> &'static [GrantState] {
        match self {
            Self::Review { .. } | Self::Note { .. } => &GrantState::ALL,
            Self::IssueAttempt { .. } | Self::Issued { .. } => &[GrantState::Approved],
            Self::Enforcement { .. } => &[GrantState::Revoked],
            Self::Transition { .. } | Self::Approval { .. } | Self::Extension { .. } | Self::Revoke { .. } => {
                self.transition().map_or(&GrantState::ALL, Transition::allowed_from)
            }
        }
    }

    /// The state the grant moves to; `None` keeps it.
    pub fn to(&self) -> Option<GrantState> {
        self.transition().and_then(Transition::to)
    }

    /// The audit events, in order; at least one.
    pub fn events(&self) -> &'a [GrantEvent] {
        match *self {
            Self::Approval { events, .. } | Self::Extension { events, .. } => events,
            Self::Transition { event, .. }
            | Self::Revoke { event, .. }
            | Self::Review { event, .. }
            | Self::IssueAttempt { event, .. }
            | Self::Issued { event, .. }
            | Self::Enforcement { event, .. }
            | Self::Note { event } => std::slice::from_ref(event),
        }
    }

    /// The approval, and how many the grant must have for it to be written.
    pub fn approval(&self) -> Option<(usize, &'a Approval)> {
        match *self {
            Self::Approval {
                approvals_before,
                approval,
                ..
            } => Some((approvals_before, approval)),
            _ => None,
        }
    }

    /// A new window, when the change opens or moves one.
    pub fn window(&self) -> Option<Window<'a>> {
        match *self {
            Self::Approval { window, .. } | Self::Extension { window, .. } => window,
            _ => None,
        }
    }

    pub fn extensions(&self) -> Option<ExtensionsChange<'a>> {
        match *self {
            Self::Extension { extensions, .. } => Some(extensions),
            _ => None,
        }
    }

    pub fn review(&self) -> Option<&'a Review> {
        match *self {
            Self::Review { review, .. } => Some(review),
            _ => None,
        }
    }

    /// The attempt limit an announced STS call counts against.
    pub fn attempt_limit(&self) -> Option<u32> {
        match *self {
            Self::IssueAttempt { limit, .. } => Some(limit),
            _ => None,
        }
    }

    pub fn issuance(&self) -> Option<&'a Issuance> {
        match *self {
            Self::Issued { issuance, .. } => Some(issuance),
            _ => None,
        }
    }

    pub fn revocation(&self) -> Option<&'a Revocation> {
        match *self {
            Self::Revoke { revocation, .. } => Some(revocation),
            _ => None,
        }
    }

    pub fn enforcement(&self) -> Option<&'a Enforcement> {
        match *self {
            Self::Revoke { enforcement, .. } | Self::Enforcement { enforcement, .. } => Some(enforcement),
            _ => None,
        }
    }
}

/// Result of a conditional change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Yes,
    /// The grant is no longer in the expected state; nothing was written.
    WrongState(GrantState),
    /// No such grant; nothing was written.
    Missing,
    /// The grant has made this many STS attempts, its limit; nothing was written.
    LimitReached(u32),
    /// The grant has this many approvals now, not the number expected; nothing was written.
    ApprovalsChanged(usize),
    /// The grant has been reviewed already; nothing was written.
    AlreadyReviewed,
    /// The grant's extensions are no longer the ones the change was decided on; nothing was
    /// written.
    ExtensionsChanged,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("grant store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back: a bug or tampering, never the caller's fault.
    #[error("grant record unreadable: {0}")]
    Corrupt(String),
    /// A grant record whose seal (its MAC, keyed with an integrity key Redis never sees) does
    /// not verify: it was written or changed outside the broker. Nothing is issued, approved or
    /// extended from it.
    #[error("grant {grant_id}: record tampered with: {what}")]
    Tampered { grant_id: GrantId, what: String },
    /// The write landed on the primary, but fewer replicas acknowledged it than configured
    /// (`redis.min_replicas`): it stands, and is in the trail, but may not survive a failover.
    #[error("grant store write not acknowledged by enough replicas: {0}")]
    Unacknowledged(String),
}

/// The indexes of grants a search can walk, each newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantIndex {
    Caller(CallerId),
    Requester(String),
    Grantee(String),
    Target(String),
    Account(String),
    /// Grants pending or approved when recorded: what can be live now. Entries of grants no
    /// longer so are dropped as readers meet them.
    Live,
    /// Every grant.
    All,
}

pub use crate::domain::filter::{INDEX_SKEW, IndexPosition};

/// A page of an index, newest first.
#[derive(Debug, Default)]
pub struct IndexPage {
    /// Each grant with its position.
    pub grants: Vec<(IndexPosition, Grant)>,
    /// Where to continue (before), when there may be more.
    pub next: Option<IndexPosition>,
}

/// A stretch of the audit log as read.
#[derive(Debug, Default)]
pub struct AuditRead {
    pub entries: Vec<AuditEntry>,
    /// The cursor of the last entry read, also when its event was not found (its grant is gone):
    /// where to go on from.
    pub last: Option<AuditCursor>,
    /// Fewer entries than asked for were there: the end of the log (or of the range).
    pub exhausted: bool,
}

/// The queues of grants people work through, across callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Grants waiting for approvals: pending requests, and approved grants whose extension waits.
    Pending,
    /// Break-glass grants not yet reviewed.
    BreakGlassUnreviewed,
}

impl Queue {
    /// Whether a grant (as stored) still belongs in the queue.
    pub fn holds(self, grant: &Grant) -> bool {
        match self {
            Self::Pending => grant.state == GrantState::PendingApproval || grant.pending_extension().is_some(),
            Self::BreakGlassUnreviewed => grant.decision.break_glass && grant.review.is_none(),
        }
    }
}

/// Notices that a grant may have changed, from whichever broker replica changed it.
pub trait ChangeFeed: Send + 'static {
    /// Waits for the next notice; `false` when the feed has ended (its connection was lost), after
    /// which the watcher must read the record again and subscribe anew.
    fn changed(&mut self) -> impl Future<Output = bool> + Send;
}

/// The grant records: each grant with its events and issuances, written only by the change kinds
/// in [`Change`], one atomic step each; the request-id bindings; the notices of changes.
pub trait GrantRecords: Send + Sync + 'static {
    type Feed: ChangeFeed;

    /// Subscribes to notices of changes to grant `id` (every appended event sends one).
    /// Subscribe before reading, so nothing that happens between the two is missed.
    fn subscribe(&self, id: GrantId) -> impl Future<Output = Result<Self::Feed, StoreError>> + Send;

    /// The grant's audit events from the `from`-th (0 is the first), in order.
    fn events_from(&self, id: GrantId, from: u64) -> impl Future<Output = Result<Vec<GrantEvent>, StoreError>> + Send;

    /// Binds `request_id` (when given) to `candidate` and adds `candidate` to the caller's
    /// index, atomically; if the request id is already bound, changes nothing and says to what.
    /// The binding is kept as long as the grant's record (`grant_end` plus retention).
    fn reserve(
        &self,
        caller: &CallerId,
        request_id: Option<&RequestId>,
        fingerprint: &str,
        candidate: GrantId,
        now: OffsetDateTime,
        grant_end: OffsetDateTime,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;

    /// Creates the grant with its first event in one atomic step, queues it for approvers when
    /// it is pending, and schedules its deadline (when it expires unless something happens). `false` when a grant with this id already exists (nothing written).
    fn create(&self, grant: &Grant, events: &[GrantEvent]) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The grant with its [`crate::domain::RECENT_ISSUANCES`] most recent issuances and their
    /// total count.
    fn get(&self, id: GrantId) -> impl Future<Output = Result<Option<Grant>, StoreError>> + Send;

    /// The grant an access key id was issued for (indexed when its issuance was recorded).
    fn grant_for_access_key(
        &self,
        access_key_id: &str,
    ) -> impl Future<Output = Result<Option<GrantId>, StoreError>> + Send;

    /// The issuance of `grant` with this access key id, among all of its issuances (not only
    /// the most recent).
    fn issuance_with_key(
        &self,
        grant: GrantId,
        access_key_id: &str,
    ) -> impl Future<Output = Result<Option<Issuance>, StoreError>> + Send;

    /// Applies the change (new state, event, issuance, attempt) only if the grant is still in
    /// one of the expected states and within its attempt limit, in one atomic step: of two racing
    /// changes exactly one wins (a cancellation racing an issuance either lands first, and the
    /// issuance is refused, or after, and sees the issuance).
    fn change_if_state(
        &self,
        grant: &Grant,
        change: Change<'_>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Whether the store answers now (for health checks).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Finding grants: the indexes a search walks, newest first.
pub trait GrantSearch: Send + Sync + 'static {
    /// Up to `limit` grants of an index, newest first: positioned before `before`, and not
    /// created before `since` (an index may also hold grants created up to
    /// [`INDEX_SKEW`] before their position: callers decide on the creation time itself).
    fn list_index(
        &self,
        index: &GrantIndex,
        before: Option<&IndexPosition>,
        since: Option<OffsetDateTime>,
        limit: usize,
    ) -> impl Future<Output = Result<IndexPage, StoreError>> + Send;
}

/// What waits: grants' deadlines for the expiry sweep, and the queues people work through.
pub trait GrantQueues: Send + Sync + 'static {
    /// Up to `limit` ids of grants whose deadline (a pending grant's timeout, an approved
    /// grant's end) is at or before `now`, earliest first.
    fn due(&self, now: OffsetDateTime, limit: usize) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send;

    /// Sets (or moves) a grant's deadline.
    fn schedule_deadline(&self, id: GrantId, at: OffsetDateTime)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets a grant's deadline (it has been recorded as expired, or ended otherwise).
    fn forget_deadline(&self, id: GrantId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` grants of a queue (every caller's), newest first, strictly older than
    /// `before` when given, and the id to continue before. Grants met there that no longer
    /// belong in it are dropped from it and not returned.
    fn list_queue(
        &self,
        queue: Queue,
        before: Option<GrantId>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<Grant>, Option<GrantId>), StoreError>> + Send;
}

/// The audit log: every grant's events and the service's own, in one ordered, resumable log.
pub trait AuditLog: Send + Sync + 'static {
    /// Adds an event of the service itself (not of a grant) to the audit log.
    fn log_service_event(&self, event: &ServiceEvent) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads up to `limit` entries of the audit log after `after` (exclusive; `None`: from the
    /// oldest kept), oldest first, or before `before` (exclusive; `None`: from the newest),
    /// newest first, when `newest_first`. Waits up to `wait` for one when there is none yet
    /// (only oldest first).
    fn audit_events(
        &self,
        after: Option<&AuditCursor>,
        before: Option<&AuditCursor>,
        newest_first: bool,
        limit: usize,
        wait: Option<std::time::Duration>,
    ) -> impl Future<Output = Result<AuditRead, StoreError>> + Send;

    /// The oldest event the log still holds.
    fn oldest_audit_event(&self) -> impl Future<Output = Result<Option<AuditCursor>, StoreError>> + Send;

    /// Drops the audit log's events logged before `before`; how many.
    fn trim_audit_log(&self, before: OffsetDateTime) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The counts behind the limits ([`crate::domain::quota`]), kept where every replica sees them.
pub trait Quotas: Send + Sync + 'static {
    /// Counts one request against each rate, `(rate, per minute)`. The first rate already spent
    /// refuses it (the rates before it have counted it). `now` is the caller's clock; a store
    /// shared by several brokers counts on a clock of its own (Redis's), one per key, so that
    /// brokers' clocks never order one burst differently.
    fn count_request(
        &self,
        rates: &[(Rate, u32)],
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Exceeded>, StoreError>> + Send;

    /// Holds a place for `grant` under each cap, `(cap, at most)`, until `until` at the latest
    /// (when the grant ends by itself). A full cap refuses it and takes no place under any.
    /// Holding again a place already held is a no-op (a retried request).
    fn hold_places(
        &self,
        grant: GrantId,
        caps: &[(Cap, u32)],
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Exceeded>, StoreError>> + Send;

    /// Gives `grant`'s places under `caps` back: it ended, or no longer waits for approval.
    fn release_places(&self, grant: GrantId, caps: &[Cap]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Tells those who follow grants what happened (webhooks), once it is recorded: the broker calls
/// it after each change of a grant lands and after each service event is logged, never before
/// (a change that loses its compare-and-set announces nothing). Never fails a grant operation:
/// what cannot be queued is the adapter's to log and count.
pub trait Notifier: Send + Sync + 'static {
    /// `events` of `grant` were just recorded; the grant is now in `state`.
    fn grant_changed(&self, grant: &Grant, state: GrantState, events: &[GrantEvent])
    -> impl Future<Output = ()> + Send;

    /// A service event was just logged.
    fn service_event(&self, event: &ServiceEvent) -> impl Future<Output = ()> + Send;
}

/// Why STS did not issue credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueErrorKind {
    /// The role does not trust the broker (AccessDenied): an operator must fix the trust policy.
    NotTrusted,
    /// STS refused what the caller asked for (malformed or too large policy and tags): the
    /// caller must change the request.
    Rejected,
    /// STS refused the MFA code.
    MfaRejected,
    /// STS refused a parameter the operator controls (e.g. a duration above the role's
    /// MaxSessionDuration): the target's configuration must change.
    Misconfigured,
    /// STS rate limits still hit after the SDK's retries.
    Throttled,
    /// STS unreachable, too slow, or the region disabled.
    Unavailable,
    /// Anything else STS or the SDK reported.
    Failed,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IssueError {
    pub kind: IssueErrorKind,
    /// AWS's error code (`AccessDenied`, `Throttling`), or the broker's own name for a failure
    /// that never got an answer from STS (`Timeout`, `Unreachable`). Safe to show callers.
    pub code: String,
    /// What AWS or the SDK said. Never contains credentials, but may name the broker's own
    /// principal (AccessDenied does), so it goes to the log and the audit trail, never to callers.
    pub message: String,
}

/// Mints temporary credentials. Takes only a [`SessionSpec`], which only an approved grant can
/// produce.
pub trait CredentialIssuer: Send + Sync + 'static {
    fn assume_role(&self, spec: &SessionSpec) -> impl Future<Output = Result<IssuedCredentials, IssueError>> + Send;

    /// Whether this issuer can reach `target`'s role (a client for its region was made at
    /// start), or why not: a reload may not add a target the running issuer cannot serve.
    fn serves(&self, target: &Target) -> Result<(), String> {
        let _ = target;
        Ok(())
    }
}

/// What a target's role looks like to IAM, as far as revocation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFacts {
    /// The role's unique id (`AROA...`): sessions are `aws:userid` = `<RoleId>:<session name>`.
    pub role_id: String,
    /// The role's MaxSessionDuration: no session of it outlives a token-issue-time cutoff by more.
    pub max_session_secs: u64,
}

/// Why IAM did not do what enforcement asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforceErrorKind {
    /// The role does not exist (NoSuchEntity): an operator must fix the target.
    RoleNotFound,
    /// The broker may not read or change the role's inline policies (AccessDenied), may not
    /// assume the admin role configured for the target's account, or was asked to change the
    /// role of a `record-only` target (code `RecordOnlyTarget`; nothing reaches IAM).
    AccessDenied,
    /// IAM refused the document (LimitExceeded, MalformedPolicyDocument).
    Rejected,
    /// IAM rate limits still hit after the SDK's retries.
    Throttled,
    /// IAM unreachable or too slow.
    Unavailable,
    /// Anything else IAM or the SDK reported.
    Failed,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EnforceError {
    pub kind: EnforceErrorKind,
    /// AWS's error code (`AccessDenied`, `Throttling`, `NoSuchEntity`), or the broker's own name
    /// for a failure that never got an answer (`Timeout`, `Unreachable`). Safe to show callers.
    pub code: String,
    /// What AWS or the SDK said: for the log and the grant's enforcement record (never a secret).
    pub message: String,
}

/// Reaches IAM in a target's account to manage the one inline policy the broker owns on the
/// target's role ([`crate::domain::revocation::DENY_POLICY_NAME`]). It never touches other inline
/// or attached policies. Every call is idempotent.
pub trait RoleEnforcer: Send + Sync + 'static {
    /// The role's id and maximum session duration (GetRole). Callers cache it.
    fn role_facts(&self, target: &Target) -> impl Future<Output = Result<RoleFacts, EnforceError>> + Send;

    /// The size, whitespace not counted, of every inline policy on the role other than the
    /// broker's own (ListRolePolicies, GetRolePolicy): IAM caps the role's total at 10,240.
    fn other_inline_policy_chars(&self, target: &Target) -> impl Future<Output = Result<usize, EnforceError>> + Send;

    /// The broker's inline policy on the role as IAM holds it (GetRolePolicy, decoded), or
    /// `None` when it is not there: to verify that nobody removed or edited it.
    fn deny_policy(&self, target: &Target) -> impl Future<Output = Result<Option<String>, EnforceError>> + Send;

    /// Creates or replaces the broker's inline policy on the role (PutRolePolicy).
    fn put_deny_policy(&self, target: &Target, document: &str)
    -> impl Future<Output = Result<(), EnforceError>> + Send;

    /// Deletes the broker's inline policy from the role (DeleteRolePolicy); done when absent.
    fn delete_deny_policy(&self, target: &Target) -> impl Future<Output = Result<(), EnforceError>> + Send;

    /// Whether this enforcer can reach `target`'s role in IAM (a client for its partition and
    /// its way in, `iam_role_arn`, was made at start), or why not: a reload may not add a target
    /// whose revocations could then never be written.
    fn serves(&self, target: &Target) -> Result<(), String> {
        let _ = target;
        Ok(())
    }
}

/// A lease on one role's enforcement: while it holds, no other replica writes the role's
/// policy. `token` fences the records made under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub role_arn: String,
    pub token: String,
}

/// What the worker needs to know, each tick, about a role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleSummary {
    /// Bumped by every change to what the role must deny.
    pub desired: u64,
    /// The `desired` the last successful write was computed from.
    pub written: u64,
    /// When something expires (an entry, a cutoff) and the document must be rewritten.
    pub next_check: Option<OffsetDateTime>,
    /// After a failure: not before then.
    pub retry_at: Option<OffsetDateTime>,
    pub cutoff: Option<Cutoff>,
    /// The last failure, while it is not yet written.
    pub last_error: Option<String>,
}

impl RoleSummary {
    /// Whether the role's policy must be written now.
    pub fn needs_work(&self, now: OffsetDateTime) -> bool {
        let changed = self.desired > self.written;
        let expiring = self.next_check.is_some_and(|at| at <= now);
        // A failing role waits out its backoff, whatever brought it due.
        (changed || expiring) && self.retry_at.is_none_or(|at| at <= now)
    }
}

/// A role's revocations as Redis holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleRevocations {
    pub summary: RoleSummary,
    pub entries: Vec<RevokedEntry>,
    /// The role's id and maximum session, cached from IAM.
    pub facts: Option<RoleFacts>,
    /// Digest of the document last written: the same document is not written again.
    pub digest: Option<String>,
    /// Grants whose enforcement is still to be recorded on them.
    pub unmarked: Vec<GrantId>,
    /// Failed attempts since the last successful write.
    pub failures: u32,
}

/// The outcome of a record made under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leased {
    Recorded,
    /// The lease expired and another replica took the role: nothing was recorded.
    Lost,
}

/// Shared, durable revocation work: which grants' revocations still need entries, each role's
/// deny list and cutoff, and a lease per role so that one replica at a time writes its policy.
/// Every method is idempotent.
pub trait EnforcementStore: Send + Sync + 'static {
    /// Notes a grant whose revocation may need enforcing, before the revocation is recorded
    /// (a note for a grant that was not revoked is dropped later).
    fn queue_grant(&self, id: GrantId, at: OffsetDateTime) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` noted grants, oldest first, with when they were noted.
    fn queued_grants(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(GrantId, OffsetDateTime)>, StoreError>> + Send;

    fn unqueue_grant(&self, id: GrantId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds a revoked grant to its role's deny list and to the grants to mark, bumping the
    /// role's `desired` version when that changes anything.
    fn add_entry(&self, role_arn: &str, entry: &RevokedEntry) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets a cutoff on the role unless one at least as late is in effect, bumping `desired`;
    /// grants listed on the role whose entries it covers are to be marked again.
    fn set_cutoff(&self, role_arn: &str, cutoff: &Cutoff) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// These roles' summaries, in order, in one round trip.
    fn role_summaries(&self, roles: &[String]) -> impl Future<Output = Result<Vec<RoleSummary>, StoreError>> + Send;

    /// The role's lease for `ttl`, if no other replica holds it.
    fn lease(
        &self,
        role_arn: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Gives the lease back (if it is still this one).
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Everything about the role's revocations.
    fn role(&self, role_arn: &str) -> impl Future<Output = Result<RoleRevocations, StoreError>> + Send;

    /// Under the lease: the policy for `version` is written (or deleted); records it with the
    /// document's digest and the role's facts, drops entries and a cutoff that have expired by
    /// `now`, clears failures, and sets when to look again: when an entry or the cutoff expires,
    /// or at `verify_by` (to check the policy is still on the role), whichever comes first. When the lease was lost meanwhile,
    /// the write may have replaced a newer document: the role is marked to be written again.
    fn record_written(
        &self,
        lease: &Lease,
        version: u64,
        digest: &str,
        facts: &RoleFacts,
        now: OffsetDateTime,
        verify_by: Option<OffsetDateTime>,
    ) -> impl Future<Output = Result<Leased, StoreError>> + Send;

    /// Under the lease: an attempt failed; retry not before `retry_at`.
    fn record_failure(
        &self,
        lease: &Lease,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> impl Future<Output = Result<Leased, StoreError>> + Send;

    /// These grants' enforcement is recorded on them: no longer to mark.
    fn marked(&self, role_arn: &str, grants: &[GrantId]) -> impl Future<Output = Result<(), StoreError>> + Send;
}
