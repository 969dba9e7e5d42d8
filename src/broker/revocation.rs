//! Revocation: taking a grant back (REVOKED, no issuance after it, whatever races it), and
//! enforcing that in AWS for the sessions already out, per grant, per grantee and per target.
//!
//! Enforcement is shared, durable work (see `ports::EnforcementStore`):
//! 1. before the REVOKED compare-and-set, the grant is noted in a queue; after it, the grant's
//!    entry (its session name, until its sessions expire) joins its role's deny list. A crash in
//!    between leaves the note, and any replica's worker adds the entry later;
//! 2. a role whose list changed (or whose entries or cutoff expire) is written by one replica at a
//!    time, under a lease: the document is rebuilt from Redis, never read from AWS, so racing
//!    revocations lose nothing; the same document is not written twice;
//! 3. the grants on it then record ENFORCED (or FAILED with the error, retried with backoff).
//!
//! When the list would not fit beside the role's other inline policies, a token-issue-time cutoff
//! replaces it (sessions of other grants issued before it lose access too, and their grants say
//! so); a revocation is never dropped.

use std::{collections::BTreeSet, time::Duration as StdDuration};

use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tracing::Instrument as _;

use super::{Broker, BrokerError, decide::Decider, permit, permit_on, unasked_refusal};
use crate::{
    domain::{
        Caller, EventKind, Grant, GrantEvent, GrantId, GrantState, RevocationMode, Target,
        access::{GrantAct, Revoke, Rpc},
        audit::{ServiceEvent, ServiceEventKind},
        identity::Claimed,
        lifecycle::{NotAllowed, Transition},
        revocation::{
            Cutoff, DenyDrift, Enforcement, EnforcementStatus, Revocation, RevokedEntry, RolePolicy, fold_grantee,
            role_policy, same_policy,
        },
    },
    ports::{
        Appended, Change, Clock, EnforceError, EnforceErrorKind, EnforcementStore, GrantIndex, GrantRecords,
        GrantSearch, Lease, Leased, Ports, RoleEnforcer, RoleFacts,
    },
};

/// How long one replica holds a role while it writes the role's policy: well beyond what the IAM
/// calls of one write take, each bounded by the SDK's timeouts.
const LEASE_TTL: StdDuration = StdDuration::from_secs(60);

/// Noted grants handled per worker tick.
const NOTES_PER_TICK: usize = 100;

/// A note for a grant whose revocation never landed (it lost a race) is dropped after this.
const NOTE_GRACE: Duration = Duration::seconds(60);

/// Most grants one RevokeGrantee call revokes.
pub const MAX_GRANTEE_GRANTS: usize = 1_000;

/// Most of a grantee's grants (live or not, newest first) one RevokeGrantee call reads.
const MAX_GRANTEE_SCAN: usize = 20_000;

/// Longest wait between retries of a role whose writes fail.
const MAX_RETRY_SECS: i64 = 300;

/// The digest recorded for a role whose policy is deleted.
const ABSENT: &str = "absent";

/// Wait before retry number `failures` (1, 2, 4, ... seconds, at most five minutes).
fn retry_after(failures: u32) -> Duration {
    Duration::seconds(
        1_i64
            .checked_shl(failures.min(20))
            .unwrap_or(MAX_RETRY_SECS)
            .min(MAX_RETRY_SECS),
    )
}

/// What a failure means, for the grants it leaves FAILED (the log has AWS's message).
fn what_failed(kind: EnforceErrorKind) -> &'static str {
    match kind {
        EnforceErrorKind::RoleNotFound => "the target's role does not exist; an operator must fix the target",
        EnforceErrorKind::AccessDenied => {
            "the broker may not read or change the role's inline policies; an operator must grant it"
        }
        EnforceErrorKind::Rejected => "IAM refused the deny policy",
        EnforceErrorKind::Throttled => "IAM is throttling the broker",
        EnforceErrorKind::Unavailable => "IAM did not answer in time",
        EnforceErrorKind::Failed => "IAM did not write the deny policy",
    }
}

fn digest(document: &str) -> String {
    hex::encode(Sha256::digest(document.as_bytes()))
}

/// What RevokeGrantee did to each of the grantee's live grants.
#[derive(Debug)]
pub struct GranteeRevocation {
    /// Carried by every `revoked` event of the operation.
    pub operation: String,
    pub outcomes: Vec<(GrantId, Result<Grant, BrokerError>)>,
    /// More grants than one call revokes: call again.
    pub truncated: bool,
    /// The grantee's grants read (live or not).
    pub examined: usize,
    /// Grantees of live grants spelled like this one but for case or whitespace, with how many
    /// live grants each has: not revoked.
    pub near_misses: Vec<(String, usize)>,
}

/// What RevokeTargetSessions did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCutoff {
    pub target: String,
    pub role_arn: String,
    pub cutoff: Cutoff,
    pub status: EnforcementStatus,
    pub error: Option<String>,
}

/// How one attempt at a role's policy ended.
enum RoleWrite {
    Written,
    /// Another replica holds the role.
    Busy,
    Failed(EnforceError),
}

impl<P: Ports> Broker<P> {
    /// Takes back a grant: the requesting caller's own, any grant for an admin caller, or for a
    /// caller that relays approvers, a grant `revoker` may approve. PENDING_APPROVAL or APPROVED
    /// becomes REVOKED with a `revoked` event in one compare-and-set; then its live sessions are
    /// denied in AWS (attempted before this returns; retried in the background until written).
    pub async fn revoke_grant(
        &self,
        caller: &Caller,
        id: GrantId,
        revoker: impl Into<Claimed>,
        reason: String,
    ) -> Result<Grant, BrokerError> {
        let claimed = revoker.into();
        let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        // The table first: who may revoke this grant at all; then who the named person is.
        permit_on(
            caller,
            GrantAct::Revoke {
                naming_a_person: claimed.names_a_person(),
            },
            &grant,
        )?;
        let revoker = self.revoker(caller, &claimed)?;
        self.may_revoke(caller, &grant, revoker.as_ref())?;
        let revoked = self.revoke(caller, grant, revoker.as_ref(), reason, None).await?;
        self.enforce_now(&revoked).await;
        self.read_back(id).await
    }

    /// The person a revocation is made in the name of, if the call names one (or carries their
    /// token): a verified person, unless the caller may assert people.
    fn revoker(&self, caller: &Caller, claimed: &Claimed) -> Result<Option<Decider>, BrokerError> {
        if !claimed.names_a_person() {
            return Ok(None);
        }
        self.decider(caller, claimed, "revoker").map(Some)
    }

    /// Past the table ([`permit_on`]), a caller revoking through an approver it relays (not by
    /// its own right) needs that person to be one the rules let decide on the grant.
    fn may_revoke(&self, caller: &Caller, grant: &Grant, revoker: Option<&Decider>) -> Result<(), BrokerError> {
        let any_grant = caller.powers.admin || caller.powers.revoke == Revoke::Any;
        match revoker {
            Some(decider) if !any_grant && grant.caller != caller.id => {
                let target = self.target_for_decider(grant, &decider.person)?;
                self.check_eligible(grant, target, decider, self.clock.now(), super::Asking::Request)
            }
            // Its own grant, by its own right: as the person or job that requested it, as for
            // cancelling (one job does not take back another's).
            _ if !any_grant => Self::same_requester(caller, grant),
            _ => Ok(()),
        }
    }

    /// The compare-and-set to REVOKED, with the note that makes enforcement survive a crash.
    async fn revoke(
        &self,
        caller: &Caller,
        grant: Grant,
        revoker: Option<&Decider>,
        reason: String,
        operation: Option<String>,
    ) -> Result<Grant, BrokerError> {
        let id = grant.id;
        let now = self.clock.now();
        let transition = Transition::Revoke;
        let not_allowed = |state| BrokerError::TransitionNotAllowed {
            grant_id: id,
            refused: NotAllowed { transition, state },
        };
        transition
            .from(grant.state_at(now))
            .map_err(|refused| not_allowed(refused.state))?;
        let record_only = self
            .targets
            .get(&grant.target)
            .is_none_or(|target| target.revocation == RevocationMode::RecordOnly);
        let status = match grant.state {
            _ if record_only => EnforcementStatus::NotAvailable,
            // Only an approved grant can have sessions; whether it has is settled once it is
            // revoked (no issuance after that), by the worker's first look.
            GrantState::Approved => EnforcementStatus::Pending,
            _ => EnforcementStatus::NotNeeded,
        };
        if status == EnforcementStatus::Pending {
            self.store.queue_grant(id, now).await?;
        }
        let revocation = Revocation {
            caller: caller.id.to_string(),
            revoker: revoker.map(|decider| decider.person.to_string()),
            revoker_verified: revoker.and_then(|decider| decider.attribution.verified.clone()),
            at: now,
            reason: reason.clone(),
            operation: operation.clone(),
        };
        let enforcement = Enforcement {
            status,
            at: now,
            error: None,
            cutoff: None,
        };
        let event = GrantEvent {
            at: now,
            caller: caller.id.to_string(),
            person: revoker.map(|decider| decider.attribution.clone()),
            kind: EventKind::Revoked {
                revoker: revocation.revoker.clone(),
                reason,
                operation,
                enforcement: status,
            },
        };
        let change = Change::Revoke {
            revocation: &revocation,
            enforcement: &enforcement,
            event: &event,
        };
        self.apply(&grant, change).await?;
        tracing::warn!(
            grant_id = %id, caller = %caller.id, revoker = ?revocation.revoker, enforcement = status.as_str(),
            "grant revoked"
        );
        let mut grant = grant;
        grant.state = GrantState::Revoked;
        grant.revocation = Some(revocation);
        grant.enforcement = Some(enforcement);
        Ok(grant)
    }

    /// Adds a just-revoked grant's entry and writes its role, within this call; whatever fails is
    /// left to the background worker (the note and the entry are in Redis).
    async fn enforce_now(&self, grant: &Grant) {
        if grant.enforcement.as_ref().map(|e| e.status) != Some(EnforcementStatus::Pending) {
            return;
        }
        match self.ensure_entry(grant.id, self.clock.now()).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(grant_id = %grant.id, %error, "revocation recorded; its enforcement is left to the worker");
                return;
            }
        }
        if let Err(error) = self.enforce_role(&grant.role_arn).await {
            tracing::warn!(grant_id = %grant.id, %error, "revocation recorded; its enforcement is left to the worker");
        }
    }

    /// A grant as stored, with what its role's cutoff means for it.
    async fn read_back(&self, id: GrantId) -> Result<Grant, BrokerError> {
        let grant = self.store.get(id).await?.ok_or(BrokerError::GrantNotFound(id))?;
        Ok(self.as_of_now(grant))
    }

    /// Notes on `grant` the role-wide cutoff in effect on its role, when some of its recent
    /// sessions were issued before it (those are denied; fresh ones are not).
    pub(super) fn with_role_cutoff(&self, grant: &mut Grant) {
        let now = self.clock.now();
        let cutoffs = self
            .role_cutoffs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        grant.role_cutoff = cutoffs
            .get(&grant.role_arn)
            .filter(|cutoff| cutoff.until > now)
            .filter(|cutoff| grant.issuances.iter().any(|issuance| issuance.issued_at < cutoff.at))
            .cloned();
    }

    /// Incident response ("vendor X is compromised"): revokes every live grant (pending or
    /// approved, window open) of `grantee`, across targets and callers, as one operation whose id
    /// every `revoked` event carries; admin callers only. Each grant's outcome is reported.
    pub async fn revoke_grantee(
        &self,
        caller: &Caller,
        grantee: &str,
        revoker: impl Into<Claimed>,
        reason: String,
    ) -> Result<GranteeRevocation, BrokerError> {
        permit(caller, Rpc::RevokeGrantee)?;
        let revoker = self.revoker(caller, &revoker.into())?;
        let operation = uuid::Uuid::now_v7().to_string();
        let now = self.clock.now();
        // A grant can start at most 30 days after it was requested and last 12 hours: the index
        // is read no further back (positions are never earlier than creation).
        let live_horizon = now
            - crate::domain::request::MAX_SCHEDULE_AHEAD
            - Duration::seconds(i64::try_from(crate::domain::limits::MAX_DURATION_SECS).unwrap_or(i64::MAX));
        let is_live = |grant: &Grant| matches!(grant.state_at(now), GrantState::PendingApproval | GrantState::Approved);
        let (mut live, examined, mut truncated) = self
            .scan_index(
                &GrantIndex::Grantee(grantee.to_owned()),
                live_horizon,
                MAX_GRANTEE_GRANTS + 1,
                |grant| is_live(grant),
            )
            .await?;
        if live.len() > MAX_GRANTEE_GRANTS {
            truncated = true;
            live.truncate(MAX_GRANTEE_GRANTS);
        }
        // In an incident a grantee spelled differently from how grants name it revokes nothing:
        // live grants whose grantee differs only in case or whitespace are reported.
        let folded = fold_grantee(grantee);
        let (near, _, _) = self
            .scan_index(&GrantIndex::Live, live_horizon, MAX_GRANTEE_SCAN, |grant| {
                grant.grantee != grantee && fold_grantee(&grant.grantee) == folded && is_live(grant)
            })
            .await?;
        let mut near_misses = std::collections::BTreeMap::<String, usize>::new();
        for grant in near {
            *near_misses.entry(grant.grantee).or_default() += 1;
        }
        if !near_misses.is_empty() {
            tracing::warn!(%grantee, near_misses = ?near_misses.keys().collect::<Vec<_>>(), "live grants name a grantee spelled almost like this one");
        }
        tracing::warn!(%grantee, caller = %caller.id, grants = live.len(), %operation, "revoking every live grant of a grantee");
        let mut outcomes = Vec::with_capacity(live.len());
        let mut roles = BTreeSet::new();
        for grant in live {
            let id = grant.id;
            let outcome = self
                .revoke(caller, grant, revoker.as_ref(), reason.clone(), Some(operation.clone()))
                .await;
            if let Ok(revoked) = &outcome
                && revoked.enforcement.as_ref().map(|e| e.status) == Some(EnforcementStatus::Pending)
            {
                match self.ensure_entry(id, now).await {
                    Ok(true) => {
                        roles.insert(revoked.role_arn.clone());
                    }
                    Ok(false) => {}
                    Err(error) => tracing::warn!(grant_id = %id, %error, "entry left to the worker"),
                }
            }
            outcomes.push((id, outcome));
        }
        // Each role written once, with every entry of the operation.
        for role in &roles {
            if let Err(error) = self.enforce_role(role).await {
                tracing::warn!(role_arn = %role, %error, "enforcement left to the worker");
            }
        }
        for (id, outcome) in &mut outcomes {
            if outcome.is_ok() {
                *outcome = self.read_back(*id).await;
            }
        }
        let failed = outcomes.iter().filter(|(_, outcome)| outcome.is_err()).count();
        let event = ServiceEvent {
            at: now,
            caller: caller.id.to_string(),
            person: revoker.as_ref().map(|decider| decider.attribution.clone()),
            kind: ServiceEventKind::GranteeRevoked {
                operation: operation.clone(),
                grantee: grantee.to_owned(),
                revoker: revoker.map(|decider| decider.person.to_string()),
                reason,
                examined,
                revoked: outcomes.len() - failed,
                failed,
                truncated,
            },
        };
        // Each revocation is in the ledger already, with the operation's id: an operation whose
        // summary cannot be logged still answers (the caller needs the outcomes), loudly.
        if let Err(error) = self.log_service(&event).await {
            tracing::error!(%operation, %error, "grantee revoked, but the operation could not be logged");
        }
        Ok(GranteeRevocation {
            operation,
            outcomes,
            truncated,
            examined,
            near_misses: near_misses.into_iter().collect(),
        })
    }

    /// Reads an index newest first from now back to `since`, keeping the grants `keep` accepts,
    /// until `wanted` are kept or [`MAX_GRANTEE_SCAN`] grants are read. Returns the kept grants,
    /// how many were read, and whether the scan stopped before the index's end.
    async fn scan_index(
        &self,
        index: &GrantIndex,
        since: OffsetDateTime,
        wanted: usize,
        mut keep: impl FnMut(&Grant) -> bool,
    ) -> Result<(Vec<Grant>, usize, bool), BrokerError> {
        let mut kept = Vec::new();
        let mut before = None;
        let mut examined = 0;
        loop {
            let page = self.store.list_index(index, before.as_ref(), Some(since), 200).await?;
            examined += page.grants.len();
            kept.extend(
                page.grants
                    .into_iter()
                    .map(|(_, grant)| grant)
                    .filter(|grant| keep(grant)),
            );
            match page.next {
                None => return Ok((kept, examined, false)),
                Some(_) if kept.len() >= wanted || examined >= MAX_GRANTEE_SCAN => return Ok((kept, examined, true)),
                Some(next) => before = Some(next),
            }
        }
    }

    /// Emergency: denies every session of the target's role issued before now (a token-issue-time
    /// cutoff, kept until the longest session it can cover has expired); admin callers only.
    /// Grants stay valid: credentials issued after this call returns are not affected (it
    /// returns once the cutoff second has passed).
    pub async fn revoke_target_sessions(
        &self,
        caller: &Caller,
        target_id: &str,
        revoker: impl Into<Claimed>,
        reason: String,
    ) -> Result<TargetCutoff, BrokerError> {
        permit(caller, Rpc::RevokeTargetSessions)?;
        let revoker = self.revoker(caller, &revoker.into())?;
        let target = self
            .targets
            .get(target_id)
            .ok_or_else(|| BrokerError::TargetNotAllowed {
                caller: caller.id.to_string(),
                target: target_id.to_owned(),
            })?;
        if target.revocation == RevocationMode::RecordOnly {
            return Err(BrokerError::RecordOnlyTarget {
                target: target.id.clone(),
            });
        }
        let role = target.role_arn.clone();
        let known = self.store.role(&role).await?.facts;
        let max_session_secs = match known {
            Some(facts) => facts.max_session_secs,
            // Unknown (IAM unreachable now): assume the longest any session can last.
            None => match self.enforcer.role_facts(target).await {
                Ok(facts) => facts.max_session_secs,
                Err(_) => crate::domain::limits::MAX_DURATION_SECS,
            },
        };
        let who = revoker.as_ref().map_or_else(
            || caller.id.to_string(),
            |decider| format!("{} via {}", decider.person, caller.id),
        );
        let now = self.clock.now();
        let cutoff = Cutoff::after(
            now,
            max_session_secs,
            format!("every session cut off by {who}: {reason}"),
        );
        let event = ServiceEvent {
            at: now,
            caller: caller.id.to_string(),
            person: revoker.as_ref().map(|decider| decider.attribution.clone()),
            kind: ServiceEventKind::TargetSessionsRevoked {
                target: target.id.clone(),
                account_id: target.account_id.clone(),
                role_arn: role.clone(),
                cutoff: cutoff.at,
                until: cutoff.until,
                revoker: revoker.map(|decider| decider.person.to_string()),
                reason,
            },
        };
        // Together, in one round trip: an incident action the ledger does not hold fails (the
        // cutoff still holds; a retry sets a later one and records it).
        let (set, logged) = tokio::join!(self.store.set_cutoff(&role, &cutoff), self.log_service(&event));
        set?;
        self.remember_cutoff(&role, &cutoff);
        logged?;
        tracing::warn!(target = %target.id, role_arn = %role, cutoff = %cutoff.at, caller = %caller.id, "every session of a target cut off");
        let written = self.enforce_role(&role).await;
        // Credentials minted after this returns must not fall under the cutoff.
        let wait = cutoff.at + super::CUTOFF_MARGIN - self.clock.now();
        if wait.is_positive() {
            tokio::time::sleep(wait.unsigned_abs()).await;
        }
        let summary = self
            .store
            .role_summaries(std::slice::from_ref(&role))
            .await?
            .pop()
            .unwrap_or_default();
        let (status, error) = match written {
            Ok(_) if summary.written >= summary.desired => (EnforcementStatus::Enforced, None),
            // Another replica is writing it, or an earlier failure waits out its backoff.
            Ok(_) => (EnforcementStatus::Pending, summary.last_error),
            Err(error) => (EnforcementStatus::Failed, Some(error.to_string())),
        };
        Ok(TargetCutoff {
            target: target.id.clone(),
            role_arn: role,
            cutoff,
            status,
            error,
        })
    }

    /// This replica's copy of a role's cutoff, ahead of the next tick's refresh.
    fn remember_cutoff(&self, role_arn: &str, cutoff: &Cutoff) {
        let mut cutoffs = self
            .role_cutoffs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let later = cutoffs.get(role_arn).is_none_or(|current| current.at < cutoff.at);
        if later {
            cutoffs.insert(role_arn.to_owned(), cutoff.clone());
        }
    }

    /// One pass of the background enforcement every replica runs: entries for noted grants,
    /// then every role whose policy must be (re)written. Returns how many roles it wrote.
    pub async fn enforce_pending(&self) -> Result<usize, BrokerError> {
        let now = self.clock.now();
        for (id, noted_at) in self.store.queued_grants(NOTES_PER_TICK).await? {
            self.ensure_entry(id, noted_at).await?;
        }
        let roles: Vec<String> = self
            .targets
            .values()
            .filter(|target| target.revocation == RevocationMode::Enforce)
            .map(|target| target.role_arn.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let summaries = self.store.role_summaries(&roles).await?;
        let behind = summaries
            .iter()
            .filter(|summary| summary.desired > summary.written)
            .count();
        crate::telemetry::metrics::metrics().revocation_backlog(u64::try_from(behind).unwrap_or(u64::MAX));
        {
            let mut cutoffs = self
                .role_cutoffs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cutoffs.clear();
            for (role, summary) in roles.iter().zip(&summaries) {
                if let Some(cutoff) = summary.cutoff.as_ref().filter(|cutoff| cutoff.until > now) {
                    cutoffs.insert(role.clone(), cutoff.clone());
                }
            }
        }
        let mut written = 0;
        for (role, summary) in roles.iter().zip(&summaries) {
            if !summary.needs_work(now) {
                continue;
            }
            // A trace of its own (the pass itself is not one): the IAM calls of one role's write.
            let span = tracing::info_span!("revocation enforce", otel.name = "revocation enforce", role_arn = %role);
            match self.enforce_role(role).instrument(span).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                // Recorded on the role and its grants, and retried after its backoff.
                Err(BrokerError::Enforcement { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(written)
    }

    /// For a noted grant: once it is revoked, its entry on its role (or NOT_NEEDED when it never
    /// issued credentials or they have all expired); the note goes once that is recorded.
    /// `true` when its role has an entry to write.
    async fn ensure_entry(&self, id: GrantId, noted_at: OffsetDateTime) -> Result<bool, BrokerError> {
        let now = self.clock.now();
        let Some(grant) = self.store.get(id).await? else {
            self.store.unqueue_grant(id).await?;
            return Ok(false);
        };
        if grant.state != GrantState::Revoked {
            // The revocation may still be on its way; a note older than that is for one that lost.
            if now - noted_at > NOTE_GRACE {
                self.store.unqueue_grant(id).await?;
            }
            return Ok(false);
        }
        let mut entry_added = false;
        let status = grant.enforcement.as_ref().map(|e| e.status);
        if matches!(status, Some(EnforcementStatus::Pending | EnforcementStatus::Failed)) {
            let revoked_at = grant.revocation.as_ref().map_or(noted_at, |revocation| revocation.at);
            if grant.issuance_count == 0 {
                self.set_enforcement(
                    &grant,
                    EnforcementStatus::NotNeeded,
                    Some("it never issued credentials".into()),
                    None,
                )
                .await?;
            } else if grant.end <= now {
                self.set_enforcement(
                    &grant,
                    EnforcementStatus::NotNeeded,
                    Some("its sessions have expired".into()),
                    None,
                )
                .await?;
            } else {
                let entry = RevokedEntry {
                    grant: id,
                    revoked_at,
                    until: grant.end,
                    roles: grant.session_roles.clone(),
                };
                self.store.add_entry(&grant.role_arn, &entry).await?;
                entry_added = true;
            }
        }
        self.store.unqueue_grant(id).await?;
        Ok(entry_added)
    }

    /// Records where the grant's enforcement stands, with an `enforcement_changed` event.
    async fn set_enforcement(
        &self,
        grant: &Grant,
        status: EnforcementStatus,
        note: Option<String>,
        cutoff: Option<OffsetDateTime>,
    ) -> Result<(), BrokerError> {
        let now = self.clock.now();
        let enforcement = Enforcement {
            status,
            at: now,
            error: note.clone(),
            cutoff,
        };
        let event = GrantEvent {
            at: now,
            caller: super::BROKER_CALLER.to_owned(),
            person: None,
            kind: EventKind::EnforcementChanged {
                status,
                error: note,
                cutoff,
            },
        };
        let changed = self
            .record(
                grant,
                Change::Enforcement {
                    enforcement: &enforcement,
                    event: &event,
                },
            )
            .await?;
        match changed {
            Appended::Yes => {
                tracing::info!(grant_id = %grant.id, status = status.as_str(), "revocation enforcement changed");
                Ok(())
            }
            // Gone, or not revoked: nothing to record on it.
            Appended::Missing | Appended::WrongState(_) => Ok(()),
            other => Err(unasked_refusal("enforcement record", other)),
        }
    }

    /// The target through which the broker reaches a role's IAM.
    pub(super) fn enforcing_target(&self, role_arn: &str) -> Option<&Target> {
        self.targets
            .values()
            .find(|target| target.role_arn == role_arn && target.revocation == RevocationMode::Enforce)
    }

    /// Writes the role's policy as Redis says it must be, under the role's lease; `false` when
    /// another replica holds the lease (it writes the same state, or newer).
    async fn enforce_role(&self, role_arn: &str) -> Result<bool, BrokerError> {
        let Some(lease) = self.store.lease(role_arn, LEASE_TTL).await? else {
            return Ok(false);
        };
        let outcome = self.write_role(&lease).await;
        if let Err(error) = self.store.release(&lease).await {
            tracing::warn!(role_arn, %error, "could not release the role's lease; it expires by itself");
        }
        match outcome? {
            RoleWrite::Written => Ok(true),
            RoleWrite::Busy => Ok(false),
            RoleWrite::Failed(error) => Err(BrokerError::Enforcement {
                role_arn: role_arn.to_owned(),
                error,
            }),
        }
    }

    async fn write_role(&self, lease: &Lease) -> Result<RoleWrite, BrokerError> {
        let role_arn = lease.role_arn.as_str();
        let Some(target) = self.enforcing_target(role_arn) else {
            // No target enforces on this role any more: its deny stays as last written.
            return Ok(RoleWrite::Busy);
        };
        let mut state = self.store.role(role_arn).await?;
        // A session STS reported under another RoleId than the one cached means the role was
        // deleted and re-created since: the current RoleId (for sessions STS never reported) is
        // asked of IAM again. Sessions it did report are denied under their own RoleId anyway.
        let reported_elsewhere = |facts: &RoleFacts| {
            state
                .entries
                .iter()
                .any(|entry| entry.roles.known.iter().any(|role_id| *role_id != facts.role_id))
        };
        let facts = match &state.facts {
            Some(facts) if !reported_elsewhere(facts) => facts.clone(),
            cached => match (self.enforcer.role_facts(target).await, cached) {
                (Ok(facts), cached) => {
                    if let Some(cached) = cached.as_ref().filter(|cached| cached.role_id != facts.role_id) {
                        tracing::warn!(
                            role_arn, was = %cached.role_id, now = %facts.role_id,
                            "the role's RoleId changed: it was deleted and re-created"
                        );
                    }
                    facts
                }
                // Only sessions STS never reported depend on it: the cached one will do for now.
                (Err(error), Some(cached)) => {
                    tracing::warn!(role_arn, code = %error.code, "could not read the role's RoleId again; using the cached one");
                    cached.clone()
                }
                (Err(error), None) => return self.failed(lease, &state.unmarked, state.failures, error).await,
            },
        };
        let now = self.clock.now();
        let mut other_chars = None;
        // A cutoff covers every entry revoked so far, so after one the list is empty; if even
        // that does not fit, retrying cannot help until an operator makes room.
        let mut fell_back = false;
        // Grants whose deny was found missing from the role: marked again once it is back.
        let mut lapsed = Vec::new();
        loop {
            let version = state.summary.desired;
            let policy = role_policy(
                &facts.role_id,
                &state.entries,
                state.summary.cutoff.as_ref(),
                other_chars.unwrap_or(0),
                now,
            );
            let result = match &policy {
                RolePolicy::Absent if state.digest.as_deref() == Some(ABSENT) => Ok(ABSENT.to_owned()),
                RolePolicy::Absent => self
                    .enforcer
                    .delete_deny_policy(target)
                    .await
                    .map(|()| ABSENT.to_owned()),
                // Written already: verified on the role instead (a deny deleted or edited outside
                // the broker leaves revoked sessions working while their grants say ENFORCED).
                RolePolicy::Deny { document, .. } if state.digest.as_deref() == Some(digest(document).as_str()) => {
                    match self.enforcer.deny_policy(target).await {
                        Ok(Some(found)) if same_policy(&found, document) => Ok(digest(document)),
                        Ok(found) => {
                            let drift = if found.is_some() {
                                DenyDrift::Changed
                            } else {
                                DenyDrift::Missing
                            };
                            lapsed = self.lapse(target, &state.entries, drift, now).await?;
                            state.digest = None;
                            continue;
                        }
                        Err(error) => Err(error),
                    }
                }
                RolePolicy::Deny { .. } | RolePolicy::Overflow { .. } if other_chars.is_none() => {
                    // Measured only when something is to be written.
                    match self.enforcer.other_inline_policy_chars(target).await {
                        Ok(chars) => {
                            other_chars = Some(chars);
                            continue;
                        }
                        Err(error) => Err(error),
                    }
                }
                RolePolicy::Deny { document, .. } => self
                    .enforcer
                    .put_deny_policy(target, document)
                    .await
                    .map(|()| digest(document)),
                RolePolicy::Overflow { needed, available } if fell_back => Err(EnforceError {
                    kind: EnforceErrorKind::Rejected,
                    code: "NoRoomForCutoff".to_owned(),
                    message: format!(
                        "even a token-issue-time cutoff ({needed} characters) does not fit in the {available} the role's other inline policies leave"
                    ),
                }),
                RolePolicy::Overflow { needed, available } => {
                    fell_back = true;
                    let cutoff = Cutoff::after(
                        now,
                        facts.max_session_secs,
                        format!(
                            "the deny list needs {needed} characters and the role's other inline policies leave {available}: every session issued before the cutoff is denied"
                        ),
                    );
                    tracing::warn!(role_arn, needed, available, cutoff = %cutoff.at, "deny list full: falling back to a token-issue-time cutoff");
                    let event = ServiceEvent {
                        at: now,
                        caller: super::BROKER_CALLER.to_owned(),
                        person: None,
                        kind: ServiceEventKind::RoleCutoffSet {
                            target: target.id.clone(),
                            account_id: target.account_id.clone(),
                            role_arn: role_arn.to_owned(),
                            cutoff: cutoff.at,
                            until: cutoff.until,
                            grants: state.entries.len(),
                            needed: *needed,
                            available: *available,
                        },
                    };
                    let (set, logged) =
                        tokio::join!(self.store.set_cutoff(role_arn, &cutoff), self.log_service(&event));
                    set?;
                    self.remember_cutoff(role_arn, &cutoff);
                    logged?;
                    state = self.store.role(role_arn).await?;
                    continue;
                }
            };
            let mut to_mark = state.unmarked.clone();
            to_mark.extend(lapsed.iter().filter(|id| !state.unmarked.contains(id)));
            let digest = match result {
                Ok(digest) => digest,
                Err(error) => return self.failed(lease, &to_mark, state.failures, error).await,
            };
            let verify_by = matches!(policy, RolePolicy::Deny { .. }).then(|| now + self.settings.deny_verify_interval);
            if self
                .store
                .record_written(lease, version, &digest, &facts, now, verify_by)
                .await?
                == Leased::Lost
            {
                return Ok(RoleWrite::Busy);
            }
            tracing::info!(role_arn, version, "revocations written to the role");
            let cutoff = state.summary.cutoff.as_ref().filter(|cutoff| cutoff.until > now);
            self.mark(role_arn, &to_mark, &state.entries, cutoff).await?;
            return Ok(RoleWrite::Written);
        }
    }

    /// The broker's deny was found missing from the role (or edited): logs the drift and records
    /// on each grant it covered that its sessions are no longer denied (PENDING, until the deny
    /// is written again). Returns those grants.
    async fn lapse(
        &self,
        target: &Target,
        entries: &[RevokedEntry],
        drift: DenyDrift,
        now: OffsetDateTime,
    ) -> Result<Vec<GrantId>, BrokerError> {
        let covered: Vec<GrantId> = entries
            .iter()
            .filter(|entry| entry.until > now)
            .map(|entry| entry.grant)
            .collect();
        tracing::warn!(
            role_arn = %target.role_arn, drift = drift.as_str(), grants = covered.len(),
            "the broker's deny policy was removed from the role or edited outside the broker: writing it again"
        );
        let event = ServiceEvent {
            at: now,
            caller: super::BROKER_CALLER.to_owned(),
            person: None,
            kind: ServiceEventKind::RoleDenyDrifted {
                target: target.id.clone(),
                account_id: target.account_id.clone(),
                role_arn: target.role_arn.clone(),
                found: drift,
                grants: covered.len(),
            },
        };
        self.log_service(&event).await?;
        let note = match drift {
            DenyDrift::Missing => "the deny policy was deleted from the role outside the broker; writing it again",
            DenyDrift::Changed => "the deny policy was edited on the role outside the broker; writing it again",
        };
        for &id in &covered {
            if let Some(grant) = self.store.get(id).await?
                && grant.state == GrantState::Revoked
                && grant.enforcement.as_ref().map(|e| e.status) == Some(EnforcementStatus::Enforced)
            {
                self.set_enforcement(&grant, EnforcementStatus::Pending, Some(note.to_owned()), None)
                    .await?;
            }
        }
        Ok(covered)
    }

    /// Records on each grant that its sessions are denied now (by its entry, or by the cutoff).
    async fn mark(
        &self,
        role_arn: &str,
        grants: &[GrantId],
        entries: &[RevokedEntry],
        cutoff: Option<&Cutoff>,
    ) -> Result<(), BrokerError> {
        let mut done = Vec::new();
        for &id in grants {
            if let Some(grant) = self.store.get(id).await? {
                let covered = entries
                    .iter()
                    .find(|entry| entry.grant == id)
                    .and_then(|entry| cutoff.filter(|cutoff| cutoff.covers(entry)))
                    .map(|cutoff| cutoff.at);
                let current = grant.enforcement.as_ref();
                let already = current.is_some_and(|e| e.status == EnforcementStatus::Enforced && e.cutoff == covered);
                if grant.state == GrantState::Revoked && !already {
                    let note = covered.map(|_| "denied by a token-issue-time cutoff on the role".to_owned());
                    self.set_enforcement(&grant, EnforcementStatus::Enforced, note, covered)
                        .await?;
                }
            }
            done.push(id);
        }
        self.store.marked(role_arn, &done).await?;
        Ok(())
    }

    /// Records a failed write: the role retries with backoff, and its grants say FAILED with the
    /// error (an event when that changes).
    async fn failed(
        &self,
        lease: &Lease,
        grants: &[GrantId],
        failures: u32,
        error: EnforceError,
    ) -> Result<RoleWrite, BrokerError> {
        let now = self.clock.now();
        // AWS's own message can name the broker's principal: it goes to the log, not the grant.
        let text = format!("{}: {}", error.code, what_failed(error.kind));
        tracing::warn!(
            role_arn = %lease.role_arn, kind = ?error.kind, code = %error.code, message = %error.message,
            "could not write revocations to the role; retrying"
        );
        crate::telemetry::metrics::metrics().enforcement_failed(&error.code);
        let retry_at = now + retry_after(failures + 1);
        if self.store.record_failure(lease, &text, retry_at).await? == Leased::Lost {
            return Ok(RoleWrite::Busy);
        }
        for &id in grants {
            if let Some(grant) = self.store.get(id).await? {
                let current = grant.enforcement.as_ref();
                let unchanged =
                    current.is_some_and(|e| e.status == EnforcementStatus::Failed && e.error.as_deref() == Some(&text));
                let settled = current.is_some_and(|e| {
                    matches!(
                        e.status,
                        EnforcementStatus::Enforced | EnforcementStatus::NotNeeded | EnforcementStatus::NotAvailable
                    )
                });
                if grant.state == GrantState::Revoked && !unchanged && !settled {
                    self.set_enforcement(&grant, EnforcementStatus::Failed, Some(text.clone()), None)
                        .await?;
                }
            }
        }
        Ok(RoleWrite::Failed(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_role_waits_out_its_backoff_whatever_made_it_due() {
        use crate::ports::RoleSummary;
        let now = time::macros::datetime!(2026-11-29 10:00 UTC);
        let later = now + Duration::seconds(30);
        let changed = RoleSummary {
            desired: 2,
            written: 1,
            ..RoleSummary::default()
        };
        let expiring = RoleSummary {
            desired: 1,
            written: 1,
            next_check: Some(now - Duration::seconds(1)),
            ..RoleSummary::default()
        };
        for summary in [changed, expiring] {
            assert!(summary.needs_work(now), "{summary:?}");
            let failing = RoleSummary {
                retry_at: Some(later),
                ..summary.clone()
            };
            assert!(!failing.needs_work(now), "{failing:?}");
            assert!(failing.needs_work(later), "{failing:?}");
        }
        let settled = RoleSummary {
            desired: 1,
            written: 1,
            next_check: Some(later),
            ..RoleSummary::default()
        };
        assert!(!settled.needs_work(now));
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        let waits: Vec<i64> = (1..=12).map(|n| retry_after(n).whole_seconds()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
        assert_eq!(retry_after(u32::MAX).whole_seconds(), 300);
    }
}
