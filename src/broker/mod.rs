//! The use cases, one module each: asking for access ([`request`]), issuing credentials
//! ([`issue`]), people deciding ([`decide`]), extensions ([`extension`]), reading grants
//! ([`query`]), watching one ([`watch`]), revocation and its enforcement ([`revocation`]), the
//! audit log ([`audit`]) and the expiry sweep ([`expiry`]). This module holds the broker itself
//! and what they share. Generic over the ports ([`Ports`]), so the same code runs against Redis,
//! STS and IAM in production and in-memory fakes in the unit tests.
//!
//! INVARIANT (no credentials without a record): [`Broker::issue`] writes an `issuing` event before
//! calling STS and the issuance after; if that last write fails, the credentials are dropped and
//! the caller gets an error instead.
//!
//! INVARIANT (every issuance is decided again): before each STS call the record is re-validated
//! and its session policy rebuilt ([`ApprovedGrant::session_spec`]), the rules are asked again,
//! and the grant's STS attempts are counted against `max_issuances_per_grant` atomically with the
//! `issuing` event.

pub mod audit;
mod circuit;
mod decide;
mod error;
mod expiry;
pub mod explain;
mod extension;
mod issue;
mod query;
mod request;
pub mod revocation;
#[cfg(test)]
mod tests;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};

use time::Duration;
use uuid::Uuid;

pub use error::BrokerError;
pub use explain::Explanation;

use crate::{
    domain::{
        AccessRequest, ApprovedGrant, Caller, Decision, EventKind, FieldViolation, Grant, GrantEvent, GrantId,
        GrantState, Issuance, IssuedCredentials, MfaToken, Outcome, SessionRefused, SessionSpec, Target,
        access::{self, GrantAct, Refusal, Rpc},
        approval::{Approval, Person, Review},
        audit::ServiceEvent,
        filter::GrantFilter,
        iam::Catalog,
        identity::{AssertionPolicy, Attribution, Claimed, NotProven},
        lifecycle::{NotAllowed, Transition},
        limits::{MAX_DURATION_SECS, ROLE_CHAINING_MAX_DURATION_SECS},
        policy::build_session_policy,
        quota::{Cap, Limits, Rate},
    },
    ports::{
        Appended, AuditLog, Change, Clock, CredentialIssuer, EnforcementStore, GrantIndex, GrantQueues, GrantRecords,
        GrantSearch, INDEX_SKEW, IndexPosition, IssueError, IssueErrorKind, Notifier, Ports, Queue, Quotas,
        Reservation, RoleEnforcer, StoreError, Window,
    },
    rules::{Eligibility, RuleEngine, RuleInput},
};

/// Default and largest page of ListGrants.
/// The caller of the events the broker records on its own (expiry, enforcement, rules loaded).
pub const BROKER_CALLER: &str = "grant-broker";

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// Whether the rules decided a grant in this very call (so asking them again before its first
/// issuance would repeat the same question), or earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    JustNow,
    Earlier,
}

/// What RequestAccess returns: the grant as recorded, and credentials when it was approved.
#[derive(Debug)]
pub struct AccessOutcome {
    pub grant: Grant,
    pub credentials: Option<IssuedCredentials>,
}

/// How the broker behaves, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// When the broker's own credentials are a role session, STS caps sessions at one hour.
    pub role_chaining: bool,
    /// STS calls one grant may cause in all (each retry of an approved request is one).
    pub max_issuances_per_grant: u32,
    /// How long a request may wait for approvals before it expires.
    pub pending_timeout: Duration,
    /// Each approver's groups (people not listed have none).
    pub approver_groups: BTreeMap<Person, BTreeSet<String>>,
    /// The identity issuer whose tokens prove an approver, where the configuration names one:
    /// a verified person gets the configured groups only with that issuer's token.
    pub approver_issuers: BTreeMap<Person, String>,
    /// How long grants and the audit log are kept.
    pub retention: Duration,
    /// How often the deny policy on each role with revoked sessions is read back from IAM and
    /// written again if it was removed or edited.
    pub deny_verify_interval: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            role_chaining: false,
            max_issuances_per_grant: 10,
            pending_timeout: Duration::hours(24),
            approver_groups: BTreeMap::new(),
            approver_issuers: BTreeMap::new(),
            retention: Duration::days(400),
            deny_verify_interval: Duration::seconds(60),
        }
    }
}

/// How far IAM's clock may be from ours, for sessions issued around a role's cutoff: a session
/// is taken as denied by a cutoff up to this long after it, and issued again only this long after.
pub const CUTOFF_MARGIN: Duration = Duration::milliseconds(250);

/// STS calls one issuance makes at most while the role's cutoffs keep covering its sessions.
const MAX_CUTOFF_REISSUES: u32 = 3;

/// Most approvals one grant records (a bound on its record; quorums need at most 10).
pub const MAX_RECORDED_APPROVALS: usize = 32;

/// The longest session STS issues on `target`: its maximum, STS's, and one hour when the broker's
/// own credentials are a role session.
fn max_duration_secs(target: &Target, role_chaining: bool) -> u64 {
    let cap = if role_chaining {
        ROLE_CHAINING_MAX_DURATION_SECS
    } else {
        MAX_DURATION_SECS
    };
    target.max_duration_secs.min(cap)
}

/// How a life-cycle change went, when the store did not refuse it outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Landed,
    /// Another change of the same kind landed first; nothing was written.
    LostRace,
}

/// A store that refused a change for a check the change did not ask for (an attempt limit on a
/// cancellation, say) is not behaving as its contract says: internal, never the caller's fault.
fn unasked_refusal(change: &str, outcome: Appended) -> BrokerError {
    BrokerError::Store(StoreError::Corrupt(format!(
        "the store refused a {change} for a check it did not ask for: {outcome:?}"
    )))
}

/// The session policy of `grant`'s scopes for a window ending at `end` (a window that moves
/// moves the policy's time condition with it).
fn policy_until(grant: &Grant, end: time::OffsetDateTime) -> Result<String, BrokerError> {
    build_session_policy(&grant.scopes, end).map_err(|what| BrokerError::RecordInconsistent {
        grant_id: grant.id,
        what: format!("its scopes build no session policy: {what}"),
    })
}

/// Deadlines one expiry sweep handles at most (the next sweep takes the rest).
const EXPIRY_BATCH: usize = 100;

/// Store pages one approval-queue call reads at most.
const QUEUE_SCANS: usize = 5;

/// Index pages one search reads at most.
const SEARCH_SCANS: usize = 5;

/// How often an approval is decided again when others keep landing first.
const APPROVAL_ATTEMPTS: usize = 8;

/// What the rules are asked about a recorded grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asking {
    /// The grant as it was requested: its requested duration, before any extension.
    Request,
    /// Adding this many seconds to the grant as it is now.
    Extension(u64),
}

/// The rules' view of a recorded grant, as of `now`, for `f`.
fn with_rule_input<R>(
    acting_caller: &str,
    grant: &Grant,
    target: &Target,
    mfa_present: bool,
    now: time::OffsetDateTime,
    asking: Asking,
    f: impl FnOnce(&RuleInput<'_>) -> R,
) -> R {
    let facts = Catalog::builtin().facts(&grant.scopes);
    let seconds = |duration: Duration| u64::try_from(duration.whole_seconds()).unwrap_or(0);
    let (duration_secs, extension_secs) = match asking {
        Asking::Request => (seconds(grant.requested_duration()), 0),
        Asking::Extension(additional) => (seconds(grant.duration()).saturating_add(additional), additional),
    };
    f(&RuleInput {
        caller: grant.caller.as_str(),
        acting_caller,
        requester: &grant.requester,
        identity: grant.requester_verified.as_ref(),
        grantee: &grant.grantee,
        target,
        scopes: &grant.scopes,
        facts: &facts,
        duration_secs,
        extension_secs,
        start: grant.start,
        break_glass: grant.decision.break_glass,
        justification: &grant.justification,
        ticket: &grant.ticket,
        mfa_present,
        now,
    })
}

/// What the rules were asked, for the span and the decision metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Question {
    /// A new request.
    Request,
    /// A grant's issuance, decided again.
    Issuance,
    Extension,
}

impl Question {
    fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Issuance => "issuance",
            Self::Extension => "extension",
        }
    }
}

/// Asks the rules inside a span of their own, and counts the decision by outcome and deciding
/// rule.
fn ask_rules(question: Question, decide: impl FnOnce() -> Decision) -> Decision {
    let span = tracing::info_span!(
        "rules",
        otel.name = "rules decide",
        grant_broker.question = question.name(),
        grant_broker.decision = tracing::field::Empty,
        grant_broker.rules = tracing::field::Empty,
    );
    let decision = span.in_scope(decide);
    let outcome = match decision.outcome {
        Outcome::Approve => "approve",
        Outcome::RequireApproval => "pending",
        Outcome::Deny => "deny",
    };
    let rule = decision.policy_ids.first().map_or("default", String::as_str);
    span.record("grant_broker.decision", outcome);
    span.record("grant_broker.rules", decision.policy_ids.join(",").as_str());
    crate::telemetry::metrics::metrics().decided(question.name(), outcome, rule);
    decision
}

/// Counts what `events` of `grant` (just recorded) mean for `grant_broker.grants`: issued,
/// denied (by the rules or by people), revoked, expired.
fn count_events(grant: &Grant, events: &[GrantEvent]) {
    use crate::telemetry::metrics::{GrantEvent as Counted, metrics};
    for event in events {
        let counted = match &event.kind {
            EventKind::Issued { .. } => Counted::Issued,
            EventKind::Requested {
                state: GrantState::Denied,
                ..
            }
            | EventKind::Denied { .. } => Counted::Denied,
            EventKind::Revoked { .. } => Counted::Revoked,
            EventKind::Expired { .. } => Counted::Expired,
            _ => continue,
        };
        metrics().grant(counted, &grant.target);
    }
}

/// The authorization table's refusal, as the broker reports it.
fn refusal(caller: &Caller, refusal: Refusal, grant: Option<&Grant>) -> BrokerError {
    match (refusal, grant) {
        (Refusal::NotFound, Some(grant)) => BrokerError::GrantNotFound(grant.id),
        (Refusal::NotOwner { rule }, Some(grant)) => BrokerError::NotGrantOwner {
            grant_id: grant.id,
            owner: grant.caller.to_string(),
            rule,
        },
        (Refusal::MayNotRelay, _) => BrokerError::CallerMayNotApprove {
            caller: caller.id.to_string(),
        },
        (Refusal::NotAdmin, _) => BrokerError::NotAdmin {
            caller: caller.id.to_string(),
        },
        // The table refuses NotFound and NotOwner only with a grant in hand.
        (Refusal::NotAuditor | Refusal::NotFound | Refusal::NotOwner { .. }, _) => BrokerError::NotAuditor {
            caller: caller.id.to_string(),
        },
    }
}

/// May `caller` make `rpc` at all? Every use case asks first ([`access::check_call`]).
fn permit(caller: &Caller, rpc: Rpc) -> Result<(), BrokerError> {
    access::check_call(caller, rpc).map_err(|refused| refusal(caller, refused, None))
}

/// May `caller` do `act` to `grant`? ([`access::check_grant`]).
fn permit_on(caller: &Caller, act: GrantAct, grant: &Grant) -> Result<(), BrokerError> {
    access::check_grant(caller, act, grant).map_err(|refused| refusal(caller, refused, Some(grant)))
}

/// How `claimed` is recorded for `caller` under `policy`, or why it cannot be: a verified
/// token's subject (the message may only agree with it), else a name the caller may assert.
fn attribute(
    caller: &Caller,
    claimed: &Claimed,
    field: &str,
    policy: AssertionPolicy,
) -> Result<Attribution, BrokerError> {
    claimed
        .attribute(field, caller.id.as_str(), policy)
        .map_err(|not_proven| match not_proven {
            NotProven::Missing(violation) => BrokerError::InvalidRequest(vec![violation]),
            other => BrokerError::NotProven(other),
        })
}

/// One of each adapter a broker runs on.
pub struct Adapters<P: Ports> {
    pub store: P::Store,
    pub issuer: P::Issuer,
    pub enforcer: P::Enforcer,
    pub notifier: P::Notifier,
    pub clock: P::Clock,
}

/// What every use case runs on: the adapters and the state the broker keeps beside them. Shared
/// by every [`Broker`] a reload makes, so a new rule set keeps the connections, the circuits and
/// the cutoffs it found.
pub struct Core<P: Ports> {
    store: P::Store,
    issuer: P::Issuer,
    /// Writes revocations into target roles.
    enforcer: P::Enforcer,
    /// Announces what was recorded.
    notifier: P::Notifier,
    clock: P::Clock,
    /// The role-wide cutoffs in effect, as the enforcement worker last read them (every replica
    /// refreshes its copy each tick): reads say which sessions they deny.
    role_cutoffs: std::sync::Mutex<BTreeMap<String, crate::domain::revocation::Cutoff>>,
    /// STS throttling, per target ([`circuit`]).
    circuits: circuit::Circuits,
}

/// The broker: the shared [`Core`] (reached through `Deref`), and the rules, targets and
/// settings of one configuration. A reload makes a new broker ([`Broker::reconfigured`]); a call
/// runs start to end on the one it began with (`grpc::Served`).
pub struct Broker<P: Ports> {
    core: std::sync::Arc<Core<P>>,
    rules: RuleEngine,
    targets: BTreeMap<String, Target>,
    settings: BrokerSettings,
}

impl<P: Ports> std::ops::Deref for Broker<P> {
    type Target = Core<P>;

    fn deref(&self) -> &Core<P> {
        &self.core
    }
}

fn by_id(targets: Vec<Target>) -> BTreeMap<String, Target> {
    targets.into_iter().map(|target| (target.id.clone(), target)).collect()
}

impl<P: Ports> Broker<P> {
    pub fn new(adapters: Adapters<P>, rules: RuleEngine, targets: Vec<Target>, settings: BrokerSettings) -> Self {
        let Adapters {
            store,
            issuer,
            enforcer,
            notifier,
            clock,
        } = adapters;
        Self {
            core: std::sync::Arc::new(Core {
                store,
                issuer,
                enforcer,
                notifier,
                clock,
                role_cutoffs: std::sync::Mutex::default(),
                circuits: circuit::Circuits::default(),
            }),
            rules,
            targets: by_id(targets),
            settings,
        }
    }

    /// The same adapters and state under another configuration's rules, targets and settings;
    /// or, for each target the adapters made at start cannot serve (a region without an STS
    /// client, a way into IAM without a client), why not.
    pub fn reconfigured(
        &self,
        rules: RuleEngine,
        targets: Vec<Target>,
        settings: BrokerSettings,
    ) -> Result<Self, Vec<String>> {
        let unserved: Vec<String> = targets
            .iter()
            .flat_map(|target| [self.issuer.serves(target), self.enforcer.serves(target)])
            .filter_map(Result::err)
            .collect();
        if !unserved.is_empty() {
            return Err(unserved);
        }
        Ok(Self {
            core: std::sync::Arc::clone(&self.core),
            rules,
            targets: by_id(targets),
            settings,
        })
    }

    /// The rules this broker decides with.
    pub fn rules(&self) -> &RuleEngine {
        &self.rules
    }

    /// Every configured target.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    fn expect_appended(&self, grant: &Grant, appended: Appended) -> Result<(), BrokerError> {
        match appended {
            Appended::Yes => Ok(()),
            Appended::WrongState(state) => Err(BrokerError::NotIssuable {
                grant_id: grant.id,
                state,
            }),
            Appended::Missing => Err(BrokerError::GrantNotFound(grant.id)),
            Appended::LimitReached(attempts) => Err(BrokerError::IssuanceLimitReached {
                grant_id: grant.id,
                attempts,
                limit: self.settings.max_issuances_per_grant,
            }),
            other => Err(unasked_refusal("issuance", other)),
        }
    }

    /// Writes a change of `grant`'s record and, once it landed, announces its events: the one way
    /// the use cases write a grant.
    async fn record(&self, grant: &Grant, change: Change<'_>) -> Result<Appended, StoreError> {
        let recorded = self.store.change_if_state(grant, change).await;
        // Landed, even when too few replicas acknowledged it: it is in the trail, so it is
        // announced (the caller still learns it may not survive a failover).
        if matches!(recorded, Ok(Appended::Yes) | Err(StoreError::Unacknowledged(_))) {
            let state = change.to().unwrap_or(grant.state);
            count_events(grant, change.events());
            // Beside each other: neither waits on the other, and neither fails the change.
            tokio::join!(
                self.release_places(grant, change.to()),
                self.notifier.grant_changed(grant, state, change.events())
            );
        }
        recorded
    }

    /// Gives back the places a grant held under the caps once it stops counting: every place
    /// when it ends, the pending one when it is approved. A release that fails is logged: the
    /// place frees itself at the grant's end.
    async fn release_places(&self, grant: &Grant, to: Option<GrantState>) {
        let caps = match to {
            Some(GrantState::Approved) => vec![Cap::PendingForCaller(grant.caller.clone())],
            Some(state) if state.is_final() => vec![
                Cap::LiveForGrantee(grant.grantee.clone()),
                Cap::PendingForCaller(grant.caller.clone()),
            ],
            _ => return,
        };
        if let Err(error) = self.store.release_places(grant.id, &caps).await {
            tracing::warn!(grant_id = %grant.id, %error, "places under the limits not given back; they free themselves at the grant's end");
        }
    }

    /// Appends an event to `grant` whatever its state (a failure worth auditing), and announces it
    /// once it landed.
    async fn record_event(&self, grant: &Grant, event: &GrantEvent) -> Result<(), StoreError> {
        self.record(grant, Change::Note { event }).await.map(drop)
    }

    /// Logs a service event and announces it.
    async fn log_service(&self, event: &ServiceEvent) -> Result<(), StoreError> {
        self.store.log_service_event(event).await?;
        self.notifier.service_event(event).await;
        Ok(())
    }

    /// Writes a life-cycle change of `grant`'s record in one atomic step, the one way every use
    /// case moves a grant. What the store refuses becomes the same error for every transition: a
    /// grant no longer in a state the transition allows is `TransitionNotAllowed` with the state
    /// it is in, a grant gone is `GrantNotFound`. A change that lost a race its kind checks for
    /// (another approval landed, the extensions changed) is `LostRace`: decide again on what is
    /// recorded now.
    async fn apply(&self, grant: &Grant, change: Change<'_>) -> Result<Applied, BrokerError> {
        let appended = self.record(grant, change).await?;
        match (appended, change.transition()) {
            (Appended::Yes, _) => Ok(Applied::Landed),
            (Appended::ApprovalsChanged(_) | Appended::ExtensionsChanged, _) => Ok(Applied::LostRace),
            (Appended::WrongState(state), Some(transition)) => Err(BrokerError::TransitionNotAllowed {
                grant_id: grant.id,
                refused: NotAllowed { transition, state },
            }),
            (Appended::Missing, _) => Err(BrokerError::GrantNotFound(grant.id)),
            (other, _) => Err(unasked_refusal("life-cycle change", other)),
        }
    }

    /// The store the broker writes to, for the adapter's own background work beside the use cases
    /// (the server runs it); nothing may change a grant through it.
    pub(crate) fn store(&self) -> &P::Store {
        &self.store
    }

    /// Whether the grant store answers; the health check reports it.
    pub async fn store_reachable(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}

impl From<StoreError> for BrokerError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}
