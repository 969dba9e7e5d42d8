//! The use cases: request access, issue credentials, read grants. Generic over the ports, so the
//! same code runs against Redis and STS in production and in the integration tests.
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
mod error;
pub mod explain;
mod extension;
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
        approval::{Approval, Person, Review},
        filter::GrantFilter,
        iam::Catalog,
        lifecycle::{NotAllowed, Transition},
        limits::{MAX_DURATION_SECS, ROLE_CHAINING_MAX_DURATION_SECS},
        policy::build_session_policy,
    },
    ports::{
        Appended, Change, Clock, CredentialIssuer, EnforcementStore, GrantIndex, GrantStore, INDEX_SKEW, IndexPosition,
        IssueError, IssueErrorKind, Ports, Queue, Reservation, StoreError,
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
    caller: &str,
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
        caller,
        requester: &grant.requester,
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

pub struct Broker<P: Ports> {
    store: P::Store,
    issuer: P::Issuer,
    /// Writes revocations into target roles.
    enforcer: P::Enforcer,
    clock: P::Clock,
    rules: RuleEngine,
    targets: BTreeMap<String, Target>,
    settings: BrokerSettings,
    /// The role-wide cutoffs in effect, as the enforcement worker last read them (every replica
    /// refreshes its copy each tick): reads say which sessions they deny.
    role_cutoffs: std::sync::Mutex<BTreeMap<String, crate::domain::revocation::Cutoff>>,
}

impl<P: Ports> Broker<P> {
    pub fn new(
        store: P::Store,
        issuer: P::Issuer,
        enforcer: P::Enforcer,
        clock: P::Clock,
        rules: RuleEngine,
        targets: Vec<Target>,
        settings: BrokerSettings,
    ) -> Self {
        let targets = targets.into_iter().map(|target| (target.id.clone(), target)).collect();
        Self {
            store,
            issuer,
            enforcer,
            clock,
            rules,
            targets,
            settings,
            role_cutoffs: std::sync::Mutex::default(),
        }
    }

    /// The targets `caller` may request, in id order.
    pub fn list_targets(&self, caller: &Caller) -> Vec<&Target> {
        self.targets
            .values()
            .filter(|target| caller.may_request(&target.id))
            .collect()
    }

    /// The longest session STS will issue on `target` for this broker.
    pub fn max_duration_secs(&self, target: &Target) -> u64 {
        max_duration_secs(target, self.settings.role_chaining)
    }

    /// What the request would get now, without any of the effects of making it.
    pub fn explain(&self, caller: &Caller, request: &AccessRequest) -> Result<Explanation, BrokerError> {
        explain::explain(
            &self.rules,
            &self.targets,
            &self.settings,
            caller,
            request,
            self.clock.now(),
        )
    }

    /// Unknown targets and targets the caller may not use get the same answer, so a caller
    /// cannot probe for targets it was not given.
    fn target_for(&self, caller: &Caller, id: &str) -> Result<&Target, BrokerError> {
        self.targets
            .get(id)
            .filter(|_| caller.may_request(id))
            .ok_or_else(|| BrokerError::TargetNotAllowed {
                caller: caller.id.to_string(),
                target: id.to_owned(),
            })
    }

    /// Decides, records and (when approved) issues. A repeated request id with the same body
    /// returns the recorded grant and, if it is approved, fresh credentials.
    pub async fn request_access(&self, caller: &Caller, request: AccessRequest) -> Result<AccessOutcome, BrokerError> {
        let target = self.target_for(caller, &request.target)?;
        let max_duration_secs = self.max_duration_secs(target);
        let now = self.clock.now();
        let violations = request.check_start(now);
        if !violations.is_empty() {
            return Err(BrokerError::InvalidRequest(violations));
        }
        let duration = Duration::seconds(i64::try_from(request.duration_secs).unwrap_or(i64::MAX));
        let start = request.start.map_or(now, |start| start.max(now));
        let end = start + duration;
        // A scheduled request never waits past the end of the window it asked for.
        let pending_until = match request.start {
            Some(_) => (now + self.settings.pending_timeout).min(end),
            None => now + self.settings.pending_timeout,
        };

        // The size check comes first: it bounds the work the containment check can be made to do.
        let session_policy = build_session_policy(&request.scopes, end)
            .map_err(|why| BrokerError::InvalidRequest(vec![FieldViolation::new("scopes", why)]))?;
        let violations = request.check_against(target, max_duration_secs);
        if !violations.is_empty() {
            return Err(BrokerError::InvalidRequest(violations));
        }
        // Expanded only once the scopes are known to lie inside the ceiling: a pattern with a
        // wildcard service scans the whole catalog, and only a ceiling that has one lets it in.
        let facts = Catalog::builtin().facts(&request.scopes);
        let violations = request.check_known_actions(target, &facts);
        if !violations.is_empty() {
            return Err(BrokerError::InvalidRequest(violations));
        }

        let fingerprint = request.fingerprint();
        let candidate = GrantId::from_uuid(Uuid::now_v7());
        let grant_id = match self
            .store
            .reserve(
                &caller.id,
                request.request_id.as_ref(),
                &fingerprint,
                candidate,
                now,
                // The latest end the grant can get: approved just before its request times out.
                end.max(pending_until + duration),
            )
            .await?
        {
            Reservation::New => candidate,
            Reservation::Existing {
                grant_id,
                fingerprint: recorded,
            } => {
                if recorded != fingerprint {
                    return Err(BrokerError::RequestIdReused {
                        request_id: request.request_id.map(|id| id.as_str().to_owned()).unwrap_or_default(),
                        grant_id,
                    });
                }
                match self.store.get(grant_id).await? {
                    Some(grant) => return self.replay(caller, grant, request.mfa.as_ref()).await,
                    // Reserved by an attempt that stopped before creating the grant: finish it.
                    None => grant_id,
                }
            }
        };

        let decision = self.rules.decide(&RuleInput {
            caller: caller.id.as_str(),
            requester: &request.requester,
            grantee: &request.grantee,
            target,
            scopes: &request.scopes,
            facts: &facts,
            duration_secs: request.duration_secs,
            extension_secs: 0,
            start,
            break_glass: request.break_glass,
            justification: &request.justification,
            ticket: &request.ticket,
            mfa_present: request.mfa.is_some(),
            now,
        });
        let state = decision.outcome.initial_state();
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            kind: EventKind::Requested {
                state,
                outcome: decision.outcome,
                policy_ids: decision.policy_ids.clone(),
                reason: decision.reason.clone(),
            },
        };
        let grant = Grant {
            id: grant_id,
            state,
            request_id: request.request_id.map(|id| id.as_str().to_owned()),
            caller: caller.id.clone(),
            target: target.id.clone(),
            account_id: target.account_id.clone(),
            role_arn: target.role_arn.clone(),
            region: target.region.clone(),
            requester: request.requester,
            grantee: request.grantee,
            scopes: request.scopes,
            session_policy,
            justification: request.justification,
            ticket: request.ticket,
            mfa_serial: request.mfa.as_ref().map(|mfa| mfa.serial.clone()),
            created_at: now,
            start,
            end,
            pending_until,
            decision,
            approvals: Vec::new(),
            review: None,
            extensions: Vec::new(),
            revocation: None,
            enforcement: None,
            role_cutoff: None,
            issuances: Vec::new(),
            issuance_count: 0,
            session_roles: Default::default(),
        };
        tracing::info!(
            grant_id = %grant.id, caller = %caller.id, target = %grant.target, state = state.as_str(),
            policy_ids = ?grant.decision.policy_ids, "access requested"
        );
        let mut events = vec![event];
        if grant.decision.break_glass {
            events.push(GrantEvent {
                at: now,
                caller: caller.id.to_string(),
                kind: EventKind::BreakGlassUsed {
                    justification: grant.justification.clone(),
                },
            });
            tracing::warn!(grant_id = %grant.id, caller = %caller.id, requester = %grant.requester, "break-glass used");
        }
        if !self.store.create(&grant, &events).await? {
            // A concurrent retry with the same request id created it first.
            let existing = self
                .store
                .get(grant_id)
                .await?
                .ok_or(BrokerError::GrantNotFound(grant_id))?;
            return self.replay(caller, existing, request.mfa.as_ref()).await;
        }
        self.finish(caller, grant, request.mfa.as_ref(), Decided::JustNow).await
    }

    /// A retried request: the recorded grant, with fresh credentials when it is approved.
    async fn replay(
        &self,
        caller: &Caller,
        grant: Grant,
        mfa: Option<&MfaToken>,
    ) -> Result<AccessOutcome, BrokerError> {
        tracing::info!(grant_id = %grant.id, caller = %caller.id, "request retried with the same request id");
        self.finish(caller, grant, mfa, Decided::Earlier).await
    }

    async fn finish(
        &self,
        caller: &Caller,
        mut grant: Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<AccessOutcome, BrokerError> {
        let now = self.clock.now();
        // Pending, denied, ...; or approved for a scheduled window that has not opened yet:
        // the grant, and credentials later (IssueCredentials, or a retry).
        if grant.state != GrantState::Approved || now < grant.start {
            grant.state = grant.state_at(now);
            return Ok(AccessOutcome {
                grant,
                credentials: None,
            });
        }
        self.issue_into(caller, grant, mfa, decided).await
    }

    /// Issues for `grant` and returns it with the new issuance among its recent ones.
    async fn issue_into(
        &self,
        caller: &Caller,
        grant: Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<AccessOutcome, BrokerError> {
        let (issuance, credentials) = self.issue(caller, &grant, mfa, decided).await?;
        let mut grant = self.as_of_now(grant);
        grant.session_roles.note(issuance.role_id.clone());
        grant.issuances.push(issuance);
        grant.issuance_count += 1;
        if grant.issuances.len() > crate::domain::RECENT_ISSUANCES {
            grant.issuances.remove(0);
        }
        Ok(AccessOutcome {
            grant,
            credentials: Some(credentials),
        })
    }

    /// Fresh credentials for one of the caller's approved grants whose window is open: exactly
    /// the checks and records of every issuance (the rules are asked again, the cap holds).
    pub async fn issue_credentials(
        &self,
        caller: &Caller,
        id: GrantId,
        mfa: Option<MfaToken>,
    ) -> Result<AccessOutcome, BrokerError> {
        let grant = self
            .own_grant(
                caller,
                id,
                "only the caller that requested it may get credentials for it",
            )
            .await?;
        tracing::info!(grant_id = %grant.id, caller = %caller.id, "credentials asked for by grant id");
        self.issue_into(caller, grant, mfa.as_ref(), Decided::Earlier).await
    }

    /// Withdraws one of the caller's grants: PENDING_APPROVAL or APPROVED becomes CANCELLED, with
    /// a `cancelled` event, in one compare-and-set (an issuance racing it either lands first or
    /// is refused).
    pub async fn cancel_grant(&self, caller: &Caller, id: GrantId, reason: String) -> Result<Grant, BrokerError> {
        let mut grant = self
            .own_grant(caller, id, "only the caller that requested it may cancel it")
            .await?;
        let now = self.clock.now();
        let transition = Transition::Cancel;
        let not_allowed = |state| BrokerError::TransitionNotAllowed {
            grant_id: id,
            refused: NotAllowed { transition, state },
        };
        let to = transition
            .from(grant.state_at(now))
            .map_err(|refused| not_allowed(refused.state))?;
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            kind: EventKind::Cancelled { reason },
        };
        let changed = self
            .store
            .change_if_state(
                &grant,
                Change {
                    to,
                    ..Change::transition(transition, std::slice::from_ref(&event))
                },
            )
            .await?;
        match changed {
            Appended::Yes => {}
            Appended::WrongState(state) => return Err(not_allowed(state)),
            Appended::Missing => return Err(BrokerError::GrantNotFound(id)),
            other => return Err(unasked_refusal("cancellation", other)),
        }
        tracing::info!(grant_id = %id, caller = %caller.id, "grant cancelled");
        grant.state = GrantState::Cancelled;
        Ok(grant)
    }

    /// Mints credentials for an approved grant: checks everything again, records the attempt,
    /// calls STS, records the issuance; returns the credentials only once that record is written,
    /// and never credentials a role-wide cutoff already denies (a session STS issued before a
    /// cutoff the broker has set, or is setting, on the role is dead on arrival: it is recorded,
    /// and the grant issues again once the cutoff has passed).
    async fn issue(
        &self,
        caller: &Caller,
        grant: &Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<(Issuance, IssuedCredentials), BrokerError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (issuance, credentials, cutoff) = self.issue_once(caller, grant, mfa, decided).await?;
            let Some(cutoff) = cutoff else {
                return Ok((issuance, credentials));
            };
            tracing::warn!(
                grant_id = %grant.id, access_key_id = %issuance.access_key_id, cutoff = %cutoff,
                "credentials issued before the role's cutoff are denied already: issuing again after it"
            );
            if attempts >= MAX_CUTOFF_REISSUES {
                return Err(BrokerError::Issue(IssueError {
                    kind: IssueErrorKind::Unavailable,
                    code: "RoleCutoff".to_owned(),
                    message: format!(
                        "the role's sessions keep being cut off (latest cutoff {})",
                        crate::domain::policy::rfc3339_utc(cutoff)
                    ),
                }));
            }
            let wait = cutoff + CUTOFF_MARGIN - self.clock.now();
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
    }

    /// One STS call for `grant`, recorded; with the role's cutoff when that covers the session.
    async fn issue_once(
        &self,
        caller: &Caller,
        grant: &Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<(Issuance, IssuedCredentials, Option<time::OffsetDateTime>), BrokerError> {
        let spec = self.checked_session(caller, grant, mfa, decided).await?;
        let session_name = spec.session_name().to_owned();
        let event = |kind| GrantEvent {
            at: self.clock.now(),
            caller: caller.id.to_string(),
            kind,
        };

        let issuing = event(EventKind::Issuing {
            session_name: session_name.clone(),
            duration_secs: spec.duration_secs(),
        });
        let recorded = self
            .store
            .change_if_state(
                grant,
                Change {
                    issuance: None,
                    attempt_limit: Some(self.settings.max_issuances_per_grant),
                    ..Change::append(&[GrantState::Approved], std::slice::from_ref(&issuing))
                },
            )
            .await?;
        self.expect_appended(grant, recorded)?;

        let sent_at = self.clock.now();
        let credentials = match self.issuer.assume_role(&spec).await {
            Ok(credentials) => credentials,
            Err(error) => {
                tracing::warn!(
                    grant_id = %grant.id, kind = ?error.kind, code = %error.code, error = %error.message,
                    "STS did not issue credentials"
                );
                let failed = event(EventKind::IssueFailed {
                    session_name,
                    error: format!("{}: {}", error.code, error.message),
                });
                if let Err(store_error) = self.store.append_event(grant, &failed).await {
                    tracing::warn!(grant_id = %grant.id, error = %store_error, "could not record the failed issuance");
                }
                return Err(BrokerError::Issue(error));
            }
        };

        let issuance = Issuance {
            access_key_id: credentials.access_key_id.clone(),
            session_name: session_name.clone(),
            source_identity: spec.source_identity().to_owned(),
            assumed_role_arn: credentials.assumed_role_arn.clone(),
            role_id: credentials.role_id.clone(),
            expiration: credentials.expiration,
            issued_at: self.clock.now(),
            packed_policy_percent: credentials.packed_policy_percent,
        };
        let issued = event(EventKind::Issued {
            session_name,
            access_key_id: issuance.access_key_id.clone(),
            expiration: issuance.expiration,
        });
        // INVARIANT: credentials are returned only once this write has succeeded.
        let record = self.store.change_if_state(
            grant,
            Change {
                issuance: Some(&issuance),
                attempt_limit: None,
                ..Change::append(&[GrantState::Approved], std::slice::from_ref(&issued))
            },
        );
        // Read beside the record, so it costs no round trip: a cutoff any replica has set.
        let (recorded, cutoff) = tokio::join!(record, self.cutoff_covering(&grant.role_arn, sent_at));
        match recorded {
            Ok(Appended::Yes) => {}
            Ok(other) => {
                tracing::warn!(
                    grant_id = %grant.id, access_key_id = %issuance.access_key_id, outcome = ?other,
                    "credentials issued but the grant changed meanwhile: discarded"
                );
                self.record_discarded(caller, grant, &issuance, format!("grant changed meanwhile: {other:?}"))
                    .await;
                self.expect_appended(grant, other)?;
            }
            Err(error) => {
                tracing::error!(
                    grant_id = %grant.id, access_key_id = %issuance.access_key_id, error = %error,
                    "credentials issued but not recorded: discarded"
                );
                self.record_discarded(caller, grant, &issuance, error.to_string()).await;
                return Err(BrokerError::CredentialsNotRecorded {
                    grant_id: grant.id,
                    cause: error,
                });
            }
        }
        let cutoff = match cutoff {
            Ok(cutoff) => cutoff,
            // Not knowing is not a reason to withhold credentials already recorded: the cutoff
            // read fails only with the store, and then the grant says which sessions it denies.
            Err(error) => {
                tracing::warn!(grant_id = %grant.id, %error, "could not read the role's cutoff");
                None
            }
        };
        if cutoff.is_none() {
            tracing::info!(
                grant_id = %grant.id, access_key_id = %issuance.access_key_id, expiration = %issuance.expiration,
                "credentials issued"
            );
        }
        Ok((issuance, credentials, cutoff))
    }

    /// The role's cutoff when it denies a session whose AssumeRole call was sent at `sent_at`
    /// (STS stamps the session somewhere between sending and answering; IAM's clock may differ
    /// from ours by a little: [`CUTOFF_MARGIN`]).
    async fn cutoff_covering(
        &self,
        role_arn: &str,
        sent_at: time::OffsetDateTime,
    ) -> Result<Option<time::OffsetDateTime>, BrokerError> {
        if self.enforcing_target(role_arn).is_none() {
            return Ok(None);
        }
        let summary = self
            .store
            .role_summaries(&[role_arn.to_owned()])
            .await?
            .pop()
            .unwrap_or_default();
        let now = self.clock.now();
        Ok(summary
            .cutoff
            .filter(|cutoff| cutoff.until > now && cutoff.at + CUTOFF_MARGIN > sent_at)
            .map(|cutoff| cutoff.at))
    }

    /// The checks made before every STS call: the grant is approved and open, its target still
    /// is what it was decided for, its record is consistent (the session comes from the rebuilt
    /// policy), and the rules still permit it (unless they decided it in this very call).
    async fn checked_session(
        &self,
        caller: &Caller,
        grant: &Grant,
        mfa: Option<&MfaToken>,
        decided: Decided,
    ) -> Result<SessionSpec, BrokerError> {
        let now = self.clock.now();
        let approved = ApprovedGrant::check(grant, now).map_err(|not| match not.starts_at {
            Some(start) => BrokerError::NotStarted {
                grant_id: grant.id,
                start,
            },
            None => BrokerError::NotIssuable {
                grant_id: grant.id,
                state: not.state,
            },
        })?;
        let target = self.target_for(caller, &grant.target)?;
        if target.mfa_required && mfa.is_none() {
            return Err(BrokerError::InvalidRequest(vec![FieldViolation::new(
                "mfa_code",
                format!("target `{}` requires MFA: send mfa_serial and mfa_code", target.id),
            )]));
        }
        let spec = match approved.session_spec(target, mfa, self.max_duration_secs(target)) {
            Ok(spec) => spec,
            Err(SessionRefused::TargetChanged { target, what }) => {
                return Err(BrokerError::TargetChanged {
                    grant_id: grant.id,
                    target,
                    what,
                });
            }
            Err(SessionRefused::ScopesInvalid(problems)) => {
                return Err(BrokerError::ScopesNoLongerValid {
                    grant_id: grant.id,
                    problems,
                });
            }
            Err(SessionRefused::RecordInconsistent(what)) => {
                tracing::error!(grant_id = %grant.id, %what, "grant record failed its integrity checks: nothing issued");
                let refused = GrantEvent {
                    at: now,
                    caller: caller.id.to_string(),
                    kind: EventKind::IssueRefused { reason: what.clone() },
                };
                if let Err(error) = self.store.append_event(grant, &refused).await {
                    tracing::warn!(grant_id = %grant.id, %error, "could not record the refused issuance");
                }
                return Err(BrokerError::RecordInconsistent {
                    grant_id: grant.id,
                    what,
                });
            }
        };
        if decided == Decided::Earlier {
            self.rules_still_permit(caller, grant, target, mfa.is_some(), now)?;
        }
        Ok(spec)
    }

    /// Asks the rules again, as of now: `request` must still be permitted, and a grant that was
    /// approved automatically must still be approvable automatically (a `forbid` added after
    /// approval stops re-issue at once, not when the grant ends).
    fn rules_still_permit(
        &self,
        caller: &Caller,
        grant: &Grant,
        target: &Target,
        mfa_present: bool,
        now: time::OffsetDateTime,
    ) -> Result<(), BrokerError> {
        // The request as it was decided: an approved extension was decided on its own terms, and
        // a longer total must not turn a grant approved at once into one that needed people.
        let decision: Decision = with_rule_input(
            caller.id.as_str(),
            grant,
            target,
            mfa_present,
            now,
            Asking::Request,
            |input| self.rules.decide(input),
        );
        let refused = match (grant.decision.outcome, decision.outcome) {
            (_, Outcome::Deny) => Some(decision.reason),
            (Outcome::Approve, Outcome::RequireApproval) => Some(format!(
                "it was approved automatically, and the rules no longer approve it automatically: {}",
                decision.reason
            )),
            _ => None,
        };
        match refused {
            None => Ok(()),
            Some(reason) => {
                tracing::warn!(grant_id = %grant.id, %reason, policy_ids = ?decision.policy_ids, "rules refuse issuance");
                Err(BrokerError::RulesRefuseIssuance {
                    grant_id: grant.id,
                    policy_ids: decision.policy_ids,
                    reason,
                })
            }
        }
    }

    /// The caller relays approvals for people only when the configuration says it may.
    fn may_act_for_approvers(caller: &Caller) -> Result<(), BrokerError> {
        if caller.acts_for_approvers {
            Ok(())
        } else {
            Err(BrokerError::CallerMayNotApprove {
                caller: caller.id.to_string(),
            })
        }
    }

    /// A person's approver groups, from the configuration (none when not listed).
    fn groups_of(&self, person: &Person) -> BTreeSet<String> {
        self.settings.approver_groups.get(person).cloned().unwrap_or_default()
    }

    /// The target of a grant `person` is about to decide on, refusing when they requested it.
    fn target_for_decider(&self, grant: &Grant, person: &Person) -> Result<&Target, BrokerError> {
        if person.as_str() == grant.requester {
            return Err(BrokerError::SelfApproval {
                grant_id: grant.id,
                approver: person.to_string(),
            });
        }
        self.targets
            .get(&grant.target)
            .ok_or_else(|| BrokerError::TargetNotAllowed {
                caller: grant.caller.to_string(),
                target: grant.target.clone(),
            })
    }

    /// Whether the rules let `approver` decide on this grant (its request, or its extension).
    fn check_eligible(
        &self,
        grant: &Grant,
        target: &Target,
        approver: &Person,
        groups: &BTreeSet<String>,
        now: time::OffsetDateTime,
        asking: Asking,
    ) -> Result<(), BrokerError> {
        let eligibility = with_rule_input(
            grant.caller.as_str(),
            grant,
            target,
            grant.mfa_serial.is_some(),
            now,
            asking,
            |input| self.rules.eligible_approver(input, approver, groups),
        );
        match eligibility {
            Eligibility::Eligible { .. } => Ok(()),
            Eligibility::NotEligible { policy_ids, reason } => Err(BrokerError::ApproverNotEligible {
                grant_id: grant.id,
                approver: approver.to_string(),
                policy_ids,
                reason,
            }),
        }
    }

    /// A pending grant and its target, for a decision by `approver` (never on their own request).
    fn pending_for(
        &self,
        grant: Grant,
        approver: &Person,
        transition: Transition,
    ) -> Result<(Grant, &Target), BrokerError> {
        let id = grant.id;
        transition
            .from(grant.state_at(self.clock.now()))
            .map_err(|refused| BrokerError::TransitionNotAllowed { grant_id: id, refused })?;
        let target = match transition {
            // A requester may refuse their own request (as they may cancel it), never approve it.
            Transition::Deny => self
                .targets
                .get(&grant.target)
                .ok_or_else(|| BrokerError::TargetNotAllowed {
                    caller: grant.caller.to_string(),
                    target: grant.target.clone(),
                })?,
            _ => self.target_for_decider(&grant, approver)?,
        };
        Ok((grant, target))
    }

    /// Records `approver`'s approval of a pending grant, or of an approved grant's waiting
    /// extension; the approval that meets the requirement approves it: a grant's window starts
    /// now, an extension moves its end. Of racing approvals each is decided on the approvals
    /// actually recorded (a compare-and-set on their count), so a quorum is met exactly once.
    /// Approving twice is answered with the grant as it is.
    pub async fn approve_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        approver: Person,
        comment: String,
    ) -> Result<Grant, BrokerError> {
        Self::may_act_for_approvers(caller)?;
        for _ in 0..APPROVAL_ATTEMPTS {
            let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
            if self.extension_waits(&grant) {
                match self.approve_extension(caller, grant, &approver, &comment).await? {
                    Some(grant) => return Ok(grant),
                    // Another change to its extensions landed first: decide again.
                    None => continue,
                }
            }
            // A retry (a portal whose answer was lost) gets the grant as its approval left it,
            // whatever state that led to: approved, issued, even expired or revoked since.
            let approved_already =
                |approvals: &[Approval]| approvals.iter().any(|approval| approval.approver == approver);
            if approved_already(&grant.approvals)
                || grant
                    .extensions
                    .last()
                    .is_some_and(|extension| approved_already(&extension.approvals))
            {
                return Ok(self.as_of_now(grant));
            }
            let (mut grant, target) = self.pending_for(grant, &approver, Transition::RecordApproval)?;
            let now = self.clock.now();
            if grant.approvals.len() >= MAX_RECORDED_APPROVALS {
                return Err(BrokerError::TooManyApprovals { grant_id: id });
            }
            let groups = self.groups_of(&approver);
            self.check_eligible(&grant, target, &approver, &groups, now, Asking::Request)?;
            let approval = Approval {
                approver: approver.clone(),
                groups,
                at: now,
                comment: comment.clone(),
                caller: caller.id.to_string(),
            };
            let before = grant.approvals.len();
            grant.approvals.push(approval.clone());
            let met = grant.decision.approvals_required.is_met(&grant.approvals);
            let mut events = vec![GrantEvent {
                at: now,
                caller: caller.id.to_string(),
                kind: EventKind::ApprovalRecorded {
                    approver: approver.to_string(),
                    groups: approval.groups.iter().cloned().collect(),
                    comment: comment.clone(),
                    extension: None,
                },
            }];
            // The window starts at the approval that meets the quorum (or the scheduled start, if
            // later), with the full duration.
            let start = now.max(grant.start);
            let end = start + grant.duration();
            let policy = policy_until(&grant, end)?;
            if met {
                events.push(GrantEvent {
                    at: now,
                    caller: caller.id.to_string(),
                    kind: EventKind::Approved { start, end },
                });
            }
            let transition = if met {
                Transition::Approve
            } else {
                Transition::RecordApproval
            };
            let changed = self
                .store
                .change_if_state(
                    &grant,
                    Change {
                        approval: Some((before, &approval)),
                        window: met.then_some((start, end, policy.as_str())),
                        ..Change::transition(transition, &events)
                    },
                )
                .await?;
            match changed {
                Appended::Yes => {
                    tracing::info!(grant_id = %id, %approver, approved = met, "approval recorded");
                    if met {
                        grant.state = GrantState::Approved;
                        (grant.start, grant.end, grant.session_policy) = (start, end, policy);
                        // Best effort: a grant whose deadline was not moved is met by the sweep
                        // at its old deadline, found not yet due, and rescheduled then.
                        if let Err(error) = self.store.schedule_deadline(id, end).await {
                            tracing::warn!(grant_id = %id, %error, "could not move the grant's deadline");
                        }
                    }
                    return Ok(grant);
                }
                // Another approval landed first: decide again on what is recorded now.
                Appended::ApprovalsChanged(_) => continue,
                Appended::WrongState(state) => {
                    return Err(BrokerError::TransitionNotAllowed {
                        grant_id: id,
                        refused: NotAllowed { transition, state },
                    });
                }
                Appended::Missing => return Err(BrokerError::GrantNotFound(id)),
                other => return Err(unasked_refusal("approval", other)),
            }
        }
        Err(BrokerError::Contended { grant_id: id })
    }

    /// An eligible approver refuses a pending grant: DENIED, with their reason. On an approved
    /// grant whose extension waits, refuses the extension; the grant stays approved.
    pub async fn deny_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        approver: Person,
        reason: String,
    ) -> Result<Grant, BrokerError> {
        Self::may_act_for_approvers(caller)?;
        let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        if self.extension_waits(&grant) {
            return self.deny_extension(caller, grant, approver, reason).await;
        }
        let (mut grant, target) = self.pending_for(grant, &approver, Transition::Deny)?;
        let now = self.clock.now();
        let groups = self.groups_of(&approver);
        self.check_eligible(&grant, target, &approver, &groups, now, Asking::Request)?;
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            kind: EventKind::Denied {
                approver: approver.to_string(),
                reason,
            },
        };
        let transition = Transition::Deny;
        let changed = self
            .store
            .change_if_state(&grant, Change::transition(transition, std::slice::from_ref(&event)))
            .await?;
        match changed {
            Appended::Yes => {
                tracing::info!(grant_id = %id, %approver, "grant denied");
                grant.state = GrantState::Denied;
                Ok(grant)
            }
            Appended::WrongState(state) => Err(BrokerError::TransitionNotAllowed {
                grant_id: id,
                refused: NotAllowed { transition, state },
            }),
            Appended::Missing => Err(BrokerError::GrantNotFound(id)),
            other => Err(unasked_refusal("denial", other)),
        }
    }

    /// Best effort: the audit trail says which session STS created but nobody received. If the
    /// store is down this fails too, and the `issuing` event plus the error log still name it.
    async fn record_discarded(&self, caller: &Caller, grant: &Grant, issuance: &Issuance, reason: String) {
        let event = GrantEvent {
            at: self.clock.now(),
            caller: caller.id.to_string(),
            kind: EventKind::IssueDiscarded {
                session_name: issuance.session_name.clone(),
                access_key_id: issuance.access_key_id.clone(),
                reason,
                role_id: issuance.role_id.clone(),
            },
        };
        if let Err(error) = self.store.append_event(grant, &event).await {
            tracing::warn!(grant_id = %grant.id, error = %error, "could not record the discarded issuance");
        }
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

    /// A grant as stored, if `caller` may see it: its own, or any for an auditor or admin caller.
    /// One it may not see is not found, exactly as an id that does not exist, so ids cannot be
    /// probed. (Callers that relay approvers see a grant only through the person they name: see
    /// the decision calls.)
    async fn visible_grant(&self, caller: &Caller, id: GrantId) -> Result<Grant, BrokerError> {
        self.store
            .get(id)
            .await?
            .filter(|grant| grant.caller == caller.id || caller.reads_every_grant())
            .ok_or(BrokerError::GrantNotFound(id))
    }

    /// One of the caller's own grants, for what only the caller that requested it may do (`rule`
    /// says what): a grant it sees but does not own is PERMISSION_DENIED, one it does not see
    /// NOT_FOUND.
    async fn own_grant(&self, caller: &Caller, id: GrantId, rule: &'static str) -> Result<Grant, BrokerError> {
        let grant = self.visible_grant(caller, id).await?;
        if grant.caller != caller.id {
            return Err(BrokerError::NotGrantOwner {
                grant_id: id,
                owner: grant.caller.to_string(),
                rule,
            });
        }
        Ok(grant)
    }

    /// The grant as a caller sees it now: its state as of now (an ended window reads EXPIRED
    /// before the sweep records it) and the role-wide cutoff that denies its earlier sessions.
    fn as_of_now(&self, mut grant: Grant) -> Grant {
        grant.state = grant.state_at(self.clock.now());
        self.with_role_cutoff(&mut grant);
        grant
    }

    /// One of the caller's grants (any grant, for an admin caller), with its state as of now.
    pub async fn get_grant(&self, caller: &Caller, id: GrantId) -> Result<Grant, BrokerError> {
        // A read of one grant by id is not recorded as an audit query: its id came from a search
        // or the log, which are (and `revoke --wait` polls it).
        let grant = self.visible_grant(caller, id).await?;
        Ok(self.as_of_now(grant))
    }

    /// A grant as of now and its whole trail, oldest first, from its own record: the caller's
    /// own, or any for an auditor or admin caller. Not recorded as an audit query, as GetGrant.
    pub async fn grant_history(&self, caller: &Caller, id: GrantId) -> Result<(Grant, Vec<GrantEvent>), BrokerError> {
        let grant = self.visible_grant(caller, id).await?;
        let events = self.store.events_from(id, 0).await?;
        Ok((self.as_of_now(grant), events))
    }

    /// From a CloudTrail event back to the grant and the issuance an access key id belongs to:
    /// any grant for an auditor or admin caller, otherwise only the caller's own (another's is
    /// not found, as if it did not exist).
    pub async fn find_grant_by_access_key(
        &self,
        caller: &Caller,
        access_key_id: &str,
    ) -> Result<(Grant, Option<Issuance>), BrokerError> {
        let not_found = || BrokerError::AccessKeyNotFound {
            access_key_id: access_key_id.to_owned(),
        };
        let asked = serde_json::json!({ "access_key_id": access_key_id }).to_string();
        let lookup = async { Ok(self.store.grant_for_access_key(access_key_id).await?) };
        let id = self
            .audited(caller, "FindGrantByAccessKey", asked, lookup)
            .await?
            .ok_or_else(not_found)?;
        let mut grant = self
            .store
            .get(id)
            .await?
            .filter(|grant| caller.reads_every_grant() || grant.caller == caller.id)
            .ok_or_else(not_found)?;
        let issuance = match grant
            .issuances
            .iter()
            .find(|issuance| issuance.access_key_id == access_key_id)
        {
            Some(recent) => Some(recent.clone()),
            None => self.store.issuance_with_key(id, access_key_id).await?,
        };
        grant.state = grant.state_at(self.clock.now());
        self.with_role_cutoff(&mut grant);
        Ok((grant, issuance))
    }

    /// A page of the grants `filter` matches, newest first, and the index position to continue
    /// before: the caller's own, or any caller's for an auditor or admin caller. Walks the most
    /// selective index the filter names and checks the rest on each grant, reading a bounded
    /// number of index pages per call, so a page may hold fewer than `page_size` and still have a
    /// next token. Tokens stay correct while grants are added (new grants land after every token).
    pub async fn search_grants(
        &self,
        caller: &Caller,
        mut filter: GrantFilter,
        before: Option<IndexPosition>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<IndexPosition>), BrokerError> {
        if !caller.reads_every_grant() {
            match &filter.caller {
                Some(other) if other != &caller.id => {
                    return Err(BrokerError::NotAuditor {
                        caller: caller.id.to_string(),
                    });
                }
                _ => filter.caller = Some(caller.id.clone()),
            }
        }
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let index = if let Some(requester) = &filter.requester {
            GrantIndex::Requester(requester.clone())
        } else if let Some(grantee) = &filter.grantee {
            GrantIndex::Grantee(grantee.clone())
        } else if let Some(caller) = &filter.caller {
            GrantIndex::Caller(caller.clone())
        } else if filter.live_only() {
            // Far fewer than any target's or account's history.
            GrantIndex::Live
        } else if let Some(target) = &filter.target {
            GrantIndex::Target(target.clone())
        } else if let Some(account) = &filter.account_id {
            GrantIndex::Account(account.clone())
        } else {
            GrantIndex::All
        };
        // Index positions follow creation times, never earlier and at most INDEX_SKEW later: the
        // search starts that much after the range's end, and `matches` decides on the creation
        // time itself.
        let until = filter
            .created_to
            .map(|to| IndexPosition::at(to + INDEX_SKEW + time::Duration::seconds(1)));
        let cursor = match (&before, until) {
            (Some(before), Some(until)) => Some(before.clone().min(until)),
            (before, until) => before.clone().or(until),
        };
        if before.is_none() {
            // The first page records the query; continuations page it.
            let asked = filter.describe();
            let search = self.search_from(&filter, index, cursor, page_size);
            return self.audited(caller, "ListGrants", asked, search).await;
        }
        self.search_from(&filter, index, cursor, page_size).await
    }

    /// Walks `index` from `cursor` for up to a page of grants `filter` matches.
    async fn search_from(
        &self,
        filter: &GrantFilter,
        index: GrantIndex,
        mut cursor: Option<IndexPosition>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<IndexPosition>), BrokerError> {
        let now = self.clock.now();
        let mut found = Vec::new();
        for _ in 0..SEARCH_SCANS {
            let page = self
                .store
                .list_index(&index, cursor.as_ref(), filter.created_from, page_size)
                .await?;
            for (position, mut grant) in page.grants {
                cursor = Some(position);
                if filter.matches(&grant, now) {
                    grant.state = grant.state_at(now);
                    self.with_role_cutoff(&mut grant);
                    found.push(grant);
                    if found.len() == page_size {
                        return Ok((found, cursor));
                    }
                }
            }
            match page.next {
                None => return Ok((found, None)),
                Some(next) => cursor = Some(next),
            }
        }
        Ok((found, cursor))
    }

    /// A page of the grants waiting for `approver`: pending (any caller's), not requested by
    /// them, not yet approved by them, and which the rules let them decide on; newest first,
    /// with the id to continue before. Scans a bounded number of queued grants per call, so a
    /// page may hold fewer than `page_size` and still have a next token.
    pub async fn approval_queue(
        &self,
        caller: &Caller,
        approver: &Person,
        before: Option<GrantId>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), BrokerError> {
        Self::may_act_for_approvers(caller)?;
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let groups = self.groups_of(approver);
        let now = self.clock.now();
        let decidable = |grant: &Grant| {
            // What waits: the request, or an approved grant's extension.
            let (approvals, asking) = match (grant.state_at(now), grant.pending_extension()) {
                (GrantState::PendingApproval, _) => (&grant.approvals, Asking::Request),
                (GrantState::Approved, Some(extension)) => {
                    (&extension.approvals, Asking::Extension(extension.additional_secs))
                }
                _ => return false,
            };
            grant.requester != approver.as_str()
                && !approvals.iter().any(|approval| &approval.approver == approver)
                && self.targets.get(&grant.target).is_some_and(|target| {
                    self.check_eligible(grant, target, approver, &groups, now, asking)
                        .is_ok()
                })
        };
        let mut waiting = Vec::new();
        // Where the scan is: the next call continues strictly before it.
        let mut cursor = before;
        for _ in 0..QUEUE_SCANS {
            let (grants, more) = self.store.list_queue(Queue::Pending, cursor, page_size).await?;
            for grant in grants {
                cursor = Some(grant.id);
                if decidable(&grant) {
                    waiting.push(grant);
                    if waiting.len() == page_size {
                        return Ok((waiting, cursor));
                    }
                }
            }
            match more {
                None => return Ok((waiting, None)),
                Some(next) => cursor = Some(next),
            }
        }
        Ok((waiting, cursor))
    }

    /// Break-glass grants of every caller not yet reviewed, newest first (for callers that relay
    /// approvers).
    pub async fn unreviewed_break_glass(
        &self,
        caller: &Caller,
        before: Option<GrantId>,
        page_size: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), BrokerError> {
        Self::may_act_for_approvers(caller)?;
        let (mut grants, next) = self
            .store
            .list_queue(Queue::BreakGlassUnreviewed, before, page_size.clamp(1, MAX_PAGE_SIZE))
            .await?;
        let now = self.clock.now();
        for grant in &mut grants {
            grant.state = grant.state_at(now);
        }
        Ok((grants, next))
    }

    /// An eligible approver (never the requester) reviews a break-glass grant after the fact:
    /// once, whatever its state now, with a `reviewed` event.
    pub async fn review_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        reviewer: Person,
        comment: String,
    ) -> Result<Grant, BrokerError> {
        Self::may_act_for_approvers(caller)?;
        let mut grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        if !grant.decision.break_glass {
            return Err(BrokerError::NotBreakGlass { grant_id: id });
        }
        let target = self.target_for_decider(&grant, &reviewer)?;
        let now = self.clock.now();
        let groups = self.groups_of(&reviewer);
        self.check_eligible(&grant, target, &reviewer, &groups, now, Asking::Request)?;
        let review = Review {
            reviewer: reviewer.clone(),
            at: now,
            comment: comment.clone(),
            caller: caller.id.to_string(),
        };
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            kind: EventKind::Reviewed {
                reviewer: reviewer.to_string(),
                comment,
            },
        };
        let changed = self
            .store
            .change_if_state(
                &grant,
                Change {
                    review: Some(&review),
                    ..Change::append(&GrantState::ALL, std::slice::from_ref(&event))
                },
            )
            .await?;
        match changed {
            Appended::Yes => {
                tracing::info!(grant_id = %id, %reviewer, "break-glass grant reviewed");
                grant.review = Some(review);
                grant.state = grant.state_at(now);
                Ok(grant)
            }
            Appended::AlreadyReviewed => Err(BrokerError::AlreadyReviewed { grant_id: id }),
            Appended::Missing => Err(BrokerError::GrantNotFound(id)),
            other => Err(unasked_refusal("review", other)),
        }
    }

    /// Records the expiry of grants whose deadline has passed: a pending request that timed out,
    /// an approved window that ended. Any replica may run it at any time: each expiry is one
    /// compare-and-set with its `expired` event, so it is recorded exactly once. Returns how many
    /// this call recorded.
    pub async fn expire_due(&self) -> Result<usize, BrokerError> {
        let now = self.clock.now();
        let mut recorded = 0;
        for id in self.store.due(now, EXPIRY_BATCH).await? {
            let Some(grant) = self.store.get(id).await? else {
                self.store.forget_deadline(id).await?;
                continue;
            };
            match grant.deadline() {
                // Final already (denied, cancelled, ...): nothing left to expire.
                None => {}
                // Moved later (an approval whose reschedule was lost): put it where it belongs.
                Some(deadline) if deadline > now => {
                    self.store.schedule_deadline(id, deadline).await?;
                    continue;
                }
                Some(_) => {
                    let transition = Transition::Expire;
                    let event = GrantEvent {
                        at: now,
                        caller: BROKER_CALLER.to_owned(),
                        kind: EventKind::Expired { was: grant.state },
                    };
                    let changed = self
                        .store
                        .change_if_state(&grant, Change::transition(transition, std::slice::from_ref(&event)))
                        .await?;
                    if changed == Appended::Yes {
                        tracing::info!(grant_id = %id, was = grant.state.as_str(), "grant expired");
                        recorded += 1;
                    }
                }
            }
            self.store.forget_deadline(id).await?;
        }
        Ok(recorded)
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
