//! In-memory stand-ins for every port, with the Redis adapter's promises (compare-and-set on
//! state, the attempt count checked and taken in the same step, the most recent issuances on
//! read), a clock the test moves, and failures on demand. The broker's unit tests run the use
//! cases on them; the integration tests (with the `test-support` feature) run the store contract
//! against them and Redis alike. Their fields are open: tests set them up and look inside.
//! Never part of a deployment.
// Test code: a poisoned lock or a bad fixture is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use time::{Duration, OffsetDateTime};

use crate::{
    domain::{
        audit::ServiceEvent,
        revocation::{Cutoff, RevokedEntry},
        *,
    },
    ports::*,
};

/// A grant store in memory with the adapter's promises: compare-and-set on state, the attempt
/// count checked and taken in the same step, the most recent issuances on read.
#[derive(Default, Clone)]
pub struct MemoryStore(pub Arc<Mutex<MemoryState>>);

#[derive(Default)]
pub struct MemoryState {
    pub grants: BTreeMap<GrantId, (Grant, Vec<Issuance>, u32)>,
    pub events: HashMap<GrantId, Vec<GrantEvent>>,
    pub requests: HashMap<(CallerId, String), (GrantId, String)>,
    pub deadlines: HashMap<GrantId, OffsetDateTime>,
    /// Makes the next conditional append that carries an issuance fail, as a dead Redis would.
    pub fail_issuance_write: bool,
    /// Makes the next change land but report that too few replicas acknowledged it.
    pub unacknowledged_next: bool,
    /// Revocation work: noted grants, and per role what the Redis adapter keeps.
    pub noted: BTreeMap<GrantId, OffsetDateTime>,
    pub roles: HashMap<String, MemoryRole>,
    pub changes: Arc<tokio::sync::Notify>,
    pub service_events: Vec<crate::domain::audit::ServiceEvent>,
    /// Each rate's next arrival time, and each cap's places (grant, until).
    pub rates: HashMap<String, i64>,
    pub caps: HashMap<String, BTreeMap<GrantId, OffsetDateTime>>,
}

#[derive(Default, Clone)]
pub struct MemoryRole {
    pub summary: crate::ports::RoleSummary,
    pub entries: BTreeMap<GrantId, RevokedEntry>,
    pub unmarked: std::collections::BTreeSet<GrantId>,
    pub facts: Option<crate::ports::RoleFacts>,
    pub digest: Option<String>,
    pub failures: u32,
    pub lease: Option<String>,
}

impl MemoryStore {
    /// A grant as the Redis store reads it back: its recent issuances, their count and RoleIds.
    pub fn read(&self, id: GrantId) -> Option<Grant> {
        let state = self.0.lock().unwrap();
        state.grants.get(&id).map(|(grant, issuances, _)| {
            let mut grant = grant.clone();
            let events = state.events.get(&id).map_or(&[][..], Vec::as_slice);
            grant.session_roles = crate::domain::SessionRoles::of(events, issuances);
            grant.issuances = issuances[issuances.len().saturating_sub(RECENT_ISSUANCES)..].to_vec();
            grant.issuance_count = u64::try_from(issuances.len()).unwrap();
            grant
        })
    }

    /// The service events logged so far, oldest first.
    pub fn service_events(&self) -> Vec<crate::domain::audit::ServiceEvent> {
        self.0.lock().unwrap().service_events.clone()
    }

    pub fn events(&self, id: GrantId) -> Vec<GrantEvent> {
        self.0.lock().unwrap().events.get(&id).cloned().unwrap_or_default()
    }

    /// The session durations the grant's `issuing` events announced, in order.
    pub fn issuing_durations(&self, id: GrantId) -> Vec<u64> {
        self.events(id)
            .into_iter()
            .filter_map(|event| match event.kind {
                EventKind::Issuing { duration_secs, .. } => Some(duration_secs),
                _ => None,
            })
            .collect()
    }

    pub fn edit(&self, id: GrantId, change: impl FnOnce(&mut Grant)) {
        change(&mut self.0.lock().unwrap().grants.get_mut(&id).unwrap().0);
    }
}

/// Announces every change to any grant to every watcher waiting at that moment (a watcher
/// reads the grant again on each notice, so one meant for another grant costs only a read).
pub struct MemoryFeed(pub Arc<tokio::sync::Notify>);

impl crate::ports::ChangeFeed for MemoryFeed {
    async fn changed(&mut self) -> bool {
        self.0.notified().await;
        true
    }
}

impl GrantRecords for MemoryStore {
    type Feed = MemoryFeed;

    async fn subscribe(&self, _id: GrantId) -> Result<MemoryFeed, StoreError> {
        Ok(MemoryFeed(Arc::clone(&self.0.lock().unwrap().changes)))
    }

    async fn events_from(&self, id: GrantId, from: u64) -> Result<Vec<GrantEvent>, StoreError> {
        Ok(self
            .events(id)
            .into_iter()
            .skip(usize::try_from(from).unwrap())
            .collect())
    }

    async fn reserve(
        &self,
        caller: &CallerId,
        request_id: Option<&RequestId>,
        fingerprint: &str,
        candidate: GrantId,
        _now: OffsetDateTime,
        _grant_end: OffsetDateTime,
    ) -> Result<Reservation, StoreError> {
        // As the Redis store: a fingerprint is a SHA-256 in hex, nothing else.
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Corrupt(format!("{fingerprint:?} is not a SHA-256 in hex")));
        }
        let Some(request_id) = request_id else {
            return Ok(Reservation::New);
        };
        let mut state = self.0.lock().unwrap();
        let key = (caller.clone(), request_id.as_str().to_owned());
        if let Some((grant_id, fingerprint)) = state.requests.get(&key) {
            return Ok(Reservation::Existing {
                grant_id: *grant_id,
                fingerprint: fingerprint.clone(),
            });
        }
        state.requests.insert(key, (candidate, fingerprint.to_owned()));
        Ok(Reservation::New)
    }

    async fn create(&self, grant: &Grant, events: &[GrantEvent]) -> Result<bool, StoreError> {
        let mut state = self.0.lock().unwrap();
        if state.grants.contains_key(&grant.id) {
            return Ok(false);
        }
        state.grants.insert(grant.id, (grant.clone(), Vec::new(), 0));
        if let Some(deadline) = grant.deadline() {
            state.deadlines.insert(grant.id, deadline);
        }
        state.events.entry(grant.id).or_default().extend(events.iter().cloned());
        Ok(true)
    }

    async fn get(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        Ok(self.read(id))
    }

    async fn grant_for_access_key(&self, access_key_id: &str) -> Result<Option<GrantId>, StoreError> {
        let state = self.0.lock().unwrap();
        Ok(state
            .grants
            .iter()
            .find(|(_, (_, issuances, _))| issuances.iter().any(|i| i.access_key_id == access_key_id))
            .map(|(id, _)| *id))
    }

    async fn issuance_with_key(&self, grant: GrantId, access_key_id: &str) -> Result<Option<Issuance>, StoreError> {
        let state = self.0.lock().unwrap();
        Ok(state
            .grants
            .get(&grant)
            .and_then(|(_, issuances, _)| issuances.iter().find(|i| i.access_key_id == access_key_id).cloned()))
    }

    async fn change_if_state(&self, grant: &Grant, change: Change<'_>) -> Result<Appended, StoreError> {
        let mut state = self.0.lock().unwrap();
        if change.issuance().is_some() && std::mem::take(&mut state.fail_issuance_write) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        // As the Redis store: an issuance is recorded with the event that announces it.
        let announced = change
            .events()
            .iter()
            .any(|event| matches!(event.kind, EventKind::Issued { .. }));
        if change.issuance().is_some() && !announced {
            return Err(StoreError::Corrupt(format!(
                "grant {}: an issuance must be recorded with its `issued` event",
                grant.id
            )));
        }
        let Some((stored, issuances, attempts)) = state.grants.get_mut(&grant.id) else {
            return Ok(Appended::Missing);
        };
        if !change.expected().contains(&stored.state) {
            return Ok(Appended::WrongState(stored.state));
        }
        if let Some(limit) = change.attempt_limit() {
            if *attempts >= limit {
                return Ok(Appended::LimitReached(*attempts));
            }
            *attempts += 1;
        }
        if let Some((before, approval)) = change.approval() {
            if stored.approvals.len() != before {
                return Ok(Appended::ApprovalsChanged(stored.approvals.len()));
            }
            stored.approvals.push(approval.clone());
        }
        if let Some(review) = change.review() {
            if stored.review.is_some() {
                return Ok(Appended::AlreadyReviewed);
            }
            stored.review = Some(review.clone());
        }
        if let Some(extensions) = change.extensions() {
            if stored.extensions != extensions.before {
                return Ok(Appended::ExtensionsChanged);
            }
            stored.extensions = extensions.after.to_vec();
        }
        if let Some(revocation) = change.revocation() {
            stored.revocation = Some(revocation.clone());
        }
        if let Some(enforcement) = change.enforcement() {
            stored.enforcement = Some(enforcement.clone());
        }
        if let Some(window) = change.window() {
            (stored.start, stored.end, stored.session_policy) =
                (window.start, window.end, window.session_policy.to_owned());
        }
        if let Some(to) = change.to() {
            stored.state = to;
        }
        if let Some(issuance) = change.issuance() {
            issuances.push(issuance.clone());
        }
        state
            .events
            .entry(grant.id)
            .or_default()
            .extend(change.events().iter().cloned());
        state.changes.notify_waiters();
        if std::mem::take(&mut state.unacknowledged_next) {
            return Err(StoreError::Unacknowledged(
                "only 0 of 1 required replicas acknowledged".into(),
            ));
        }
        Ok(Appended::Yes)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl GrantSearch for MemoryStore {
    async fn list_index(
        &self,
        index: &crate::ports::GrantIndex,
        before: Option<&crate::ports::IndexPosition>,
        since: Option<OffsetDateTime>,
        limit: usize,
    ) -> Result<crate::ports::IndexPage, StoreError> {
        use crate::ports::{GrantIndex, IndexPosition};
        // Positions as the real store makes them: the creation millisecond, then a tie-breaker.
        let position = |grant: &Grant| {
            let millis = u64::try_from(grant.created_at.unix_timestamp_nanos() / 1_000_000).unwrap();
            IndexPosition::from_parts(millis, u64::try_from(grant.id.as_uuid().as_u128() >> 65).unwrap())
        };
        let mut entries: Vec<(IndexPosition, GrantId)> = {
            let state = self.0.lock().unwrap();
            state
                .grants
                .values()
                .map(|(grant, _, _)| grant)
                .filter(|grant| match index {
                    GrantIndex::Caller(caller) => &grant.caller == caller,
                    GrantIndex::Requester(requester) => &grant.requester == requester,
                    GrantIndex::Grantee(grantee) => &grant.grantee == grantee,
                    GrantIndex::Target(target) => &grant.target == target,
                    GrantIndex::Account(account) => &grant.account_id == account,
                    GrantIndex::Live => matches!(grant.state, GrantState::PendingApproval | GrantState::Approved),
                    GrantIndex::All => true,
                })
                .filter(|grant| before.is_none_or(|before| position(grant) < *before))
                .filter(|grant| since.is_none_or(|since| grant.created_at >= since))
                .map(|grant| (position(grant), grant.id))
                .collect()
        };
        entries.sort_by(|a, b| b.0.cmp(&a.0));
        let mut grants = Vec::new();
        for (position, id) in entries.iter().take(limit) {
            grants.extend(self.get(*id).await?.map(|grant| (position.clone(), grant)));
        }
        let next = (entries.len() > limit).then(|| entries[limit - 1].0.clone());
        Ok(crate::ports::IndexPage { grants, next })
    }
}

impl GrantQueues for MemoryStore {
    async fn due(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<GrantId>, StoreError> {
        let state = self.0.lock().unwrap();
        let mut due: Vec<(OffsetDateTime, GrantId)> = state
            .deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, at)| (*at, *id))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn schedule_deadline(&self, id: GrantId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.0.lock().unwrap().deadlines.insert(id, at);
        Ok(())
    }

    async fn forget_deadline(&self, id: GrantId) -> Result<(), StoreError> {
        self.0.lock().unwrap().deadlines.remove(&id);
        Ok(())
    }

    async fn list_queue(
        &self,
        queue: crate::ports::Queue,
        before: Option<GrantId>,
        limit: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), StoreError> {
        // Newest first: ids are UUIDv7, ordered as created.
        let ids: Vec<GrantId> = self.0.lock().unwrap().grants.keys().rev().copied().collect();
        let mut queued: Vec<Grant> = ids
            .into_iter()
            .filter(|id| before.is_none_or(|before| *id < before))
            .filter_map(|id| self.read(id))
            .filter(|grant| queue.holds(grant))
            .collect();
        let more = queued.len() > limit;
        queued.truncate(limit);
        let next = more.then(|| queued.last().map(|grant| grant.id)).flatten();
        Ok((queued, next))
    }
}

fn rate_key(rate: &crate::domain::quota::Rate) -> String {
    format!("{rate:?}")
}

fn cap_key(cap: &crate::domain::quota::Cap) -> String {
    format!("{cap:?}")
}

impl crate::ports::Quotas for MemoryStore {
    async fn count_request(
        &self,
        rates: &[(crate::domain::quota::Rate, u32)],
        now: OffsetDateTime,
    ) -> Result<Option<crate::domain::quota::Exceeded>, StoreError> {
        let mut state = self.0.lock().unwrap();
        let now = i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap();
        for (rate, per_minute) in rates {
            let key = rate_key(rate);
            match crate::domain::quota::next_arrival(state.rates.get(&key).copied(), now, *per_minute) {
                Ok(next) => {
                    state.rates.insert(key, next);
                }
                Err(retry_after) => return Ok(Some(rate.exceeded(*per_minute, retry_after))),
            }
        }
        Ok(None)
    }

    async fn hold_places(
        &self,
        grant: GrantId,
        caps: &[(crate::domain::quota::Cap, u32)],
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<crate::domain::quota::Exceeded>, StoreError> {
        let mut state = self.0.lock().unwrap();
        for (cap, most) in caps {
            let places = state.caps.entry(cap_key(cap)).or_default();
            places.retain(|_, until| *until > now);
            if !places.contains_key(&grant) && places.len() >= usize::try_from(*most).unwrap() {
                let first = places.values().min().copied().unwrap_or(now);
                return Ok(Some(cap.exceeded(*most, (first - now).try_into().unwrap_or_default())));
            }
        }
        for (cap, _) in caps {
            state.caps.entry(cap_key(cap)).or_default().insert(grant, until);
        }
        Ok(None)
    }

    async fn release_places(&self, grant: GrantId, caps: &[crate::domain::quota::Cap]) -> Result<(), StoreError> {
        let mut state = self.0.lock().unwrap();
        for cap in caps {
            if let Some(places) = state.caps.get_mut(&cap_key(cap)) {
                places.remove(&grant);
            }
        }
        Ok(())
    }
}

impl AuditLog for MemoryStore {
    async fn log_service_event(&self, event: &crate::domain::audit::ServiceEvent) -> Result<(), StoreError> {
        self.0.lock().unwrap().service_events.push(event.clone());
        Ok(())
    }

    async fn audit_events(
        &self,
        _after: Option<&crate::domain::audit::AuditCursor>,
        _before: Option<&crate::domain::audit::AuditCursor>,
        _newest_first: bool,
        _limit: usize,
        _wait: Option<std::time::Duration>,
    ) -> Result<crate::ports::AuditRead, StoreError> {
        unimplemented!("the audit log runs against the real store in tests/it/audit.rs")
    }

    async fn oldest_audit_event(&self) -> Result<Option<crate::domain::audit::AuditCursor>, StoreError> {
        Ok(None)
    }

    async fn trim_audit_log(&self, _before: OffsetDateTime) -> Result<u64, StoreError> {
        Ok(0)
    }
}

impl crate::ports::EnforcementStore for MemoryStore {
    async fn queue_grant(&self, id: GrantId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.0.lock().unwrap().noted.insert(id, at);
        Ok(())
    }

    async fn queued_grants(&self, limit: usize) -> Result<Vec<(GrantId, OffsetDateTime)>, StoreError> {
        let state = self.0.lock().unwrap();
        let mut noted: Vec<(GrantId, OffsetDateTime)> = state.noted.iter().map(|(id, at)| (*id, *at)).collect();
        noted.sort_by_key(|(_, at)| *at);
        noted.truncate(limit);
        Ok(noted)
    }

    async fn unqueue_grant(&self, id: GrantId) -> Result<(), StoreError> {
        self.0.lock().unwrap().noted.remove(&id);
        Ok(())
    }

    async fn add_entry(&self, role_arn: &str, entry: &RevokedEntry) -> Result<(), StoreError> {
        let mut state = self.0.lock().unwrap();
        let role = state.roles.entry(role_arn.to_owned()).or_default();
        let changed = role.entries.get(&entry.grant).is_none_or(|old| old.until < entry.until);
        if changed {
            role.entries.insert(entry.grant, entry.clone());
            role.summary.desired += 1;
        }
        role.unmarked.insert(entry.grant);
        Ok(())
    }

    async fn set_cutoff(&self, role_arn: &str, cutoff: &Cutoff) -> Result<(), StoreError> {
        let mut state = self.0.lock().unwrap();
        let role = state.roles.entry(role_arn.to_owned()).or_default();
        if role
            .summary
            .cutoff
            .as_ref()
            .is_some_and(|current| current.at >= cutoff.at)
        {
            return Ok(());
        }
        role.summary.cutoff = Some(cutoff.clone());
        role.summary.desired += 1;
        let covered: Vec<GrantId> = role
            .entries
            .values()
            .filter(|e| cutoff.covers(e))
            .map(|e| e.grant)
            .collect();
        role.unmarked.extend(covered);
        Ok(())
    }

    async fn role_summaries(&self, roles: &[String]) -> Result<Vec<crate::ports::RoleSummary>, StoreError> {
        let state = self.0.lock().unwrap();
        Ok(roles
            .iter()
            .map(|role| state.roles.get(role).map(|r| r.summary.clone()).unwrap_or_default())
            .collect())
    }

    async fn lease(
        &self,
        role_arn: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<crate::ports::Lease>, StoreError> {
        let mut state = self.0.lock().unwrap();
        let role = state.roles.entry(role_arn.to_owned()).or_default();
        if role.lease.is_some() {
            return Ok(None);
        }
        let token = uuid::Uuid::now_v7().to_string();
        role.lease = Some(token.clone());
        Ok(Some(crate::ports::Lease {
            role_arn: role_arn.to_owned(),
            token,
        }))
    }

    async fn release(&self, lease: &crate::ports::Lease) -> Result<(), StoreError> {
        let mut state = self.0.lock().unwrap();
        if let Some(role) = state.roles.get_mut(&lease.role_arn)
            && role.lease.as_deref() == Some(lease.token.as_str())
        {
            role.lease = None;
        }
        Ok(())
    }

    async fn role(&self, role_arn: &str) -> Result<crate::ports::RoleRevocations, StoreError> {
        let state = self.0.lock().unwrap();
        let role = state.roles.get(role_arn).cloned().unwrap_or_default();
        Ok(crate::ports::RoleRevocations {
            summary: role.summary,
            entries: role.entries.values().cloned().collect(),
            facts: role.facts,
            digest: role.digest,
            unmarked: role.unmarked.into_iter().collect(),
            failures: role.failures,
        })
    }

    async fn record_written(
        &self,
        lease: &crate::ports::Lease,
        version: u64,
        digest: &str,
        facts: &crate::ports::RoleFacts,
        now: OffsetDateTime,
        verify_by: Option<OffsetDateTime>,
    ) -> Result<crate::ports::Leased, StoreError> {
        let mut state = self.0.lock().unwrap();
        let role = state.roles.entry(lease.role_arn.clone()).or_default();
        if role.lease.as_deref() != Some(lease.token.as_str()) {
            role.summary.desired += 1;
            role.digest = None;
            return Ok(crate::ports::Leased::Lost);
        }
        role.summary.written = role.summary.written.max(version);
        role.digest = Some(digest.to_owned());
        role.facts = Some(facts.clone());
        role.failures = 0;
        role.summary.retry_at = None;
        role.summary.last_error = None;
        role.entries.retain(|_, entry| entry.until > now);
        if role.summary.cutoff.as_ref().is_some_and(|cutoff| cutoff.until <= now) {
            role.summary.cutoff = None;
        }
        role.summary.next_check = role
            .entries
            .values()
            .map(|entry| entry.until)
            .chain(role.summary.cutoff.as_ref().map(|cutoff| cutoff.until))
            .min()
            .map(|next| verify_by.map_or(next, |verify_by| verify_by.min(next)));
        Ok(crate::ports::Leased::Recorded)
    }

    async fn record_failure(
        &self,
        lease: &crate::ports::Lease,
        error: &str,
        retry_at: OffsetDateTime,
    ) -> Result<crate::ports::Leased, StoreError> {
        let mut state = self.0.lock().unwrap();
        let role = state.roles.entry(lease.role_arn.clone()).or_default();
        if role.lease.as_deref() != Some(lease.token.as_str()) {
            return Ok(crate::ports::Leased::Lost);
        }
        role.failures += 1;
        role.summary.last_error = Some(error.to_owned());
        role.summary.retry_at = Some(retry_at);
        Ok(crate::ports::Leased::Recorded)
    }

    async fn marked(&self, role_arn: &str, grants: &[GrantId]) -> Result<(), StoreError> {
        let mut state = self.0.lock().unwrap();
        if let Some(role) = state.roles.get_mut(role_arn) {
            for id in grants {
                role.unmarked.remove(id);
            }
        }
        Ok(())
    }
}

/// IAM in memory: the broker's policy per role, the size of the role's other inline policies,
/// and failures on demand.
#[derive(Default, Clone)]
pub struct FakeIam {
    pub documents: Arc<Mutex<HashMap<String, String>>>,
    pub other_chars: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
    pub puts: Arc<AtomicUsize>,
    /// GetRolePolicy calls for the broker's own policy.
    pub reads: Arc<AtomicUsize>,
    /// Runs inside the next PutRolePolicy (a slow write, overtaken by another replica).
    pub during_put: Arc<Mutex<Option<DuringPut>>>,
}

pub type DuringPut = Box<dyn FnOnce() + Send>;

impl FakeIam {
    pub fn document(&self, role_arn: &str) -> Option<serde_json::Value> {
        self.documents
            .lock()
            .unwrap()
            .get(role_arn)
            .map(|text| serde_json::from_str(text).unwrap())
    }

    pub fn check(&self) -> Result<(), crate::ports::EnforceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(crate::ports::EnforceError {
                kind: crate::ports::EnforceErrorKind::Throttled,
                code: "Throttling".into(),
                message: "Rate exceeded for arn:aws:iam::123456789012:user/broker".into(),
            });
        }
        Ok(())
    }
}

impl crate::ports::RoleEnforcer for FakeIam {
    async fn role_facts(&self, _target: &Target) -> Result<crate::ports::RoleFacts, crate::ports::EnforceError> {
        self.check()?;
        Ok(crate::ports::RoleFacts {
            role_id: "AROAFAKEROLEID000001".into(),
            max_session_secs: 3600,
        })
    }

    async fn other_inline_policy_chars(&self, _target: &Target) -> Result<usize, crate::ports::EnforceError> {
        self.check()?;
        Ok(self.other_chars.load(Ordering::SeqCst))
    }

    async fn deny_policy(&self, target: &Target) -> Result<Option<String>, crate::ports::EnforceError> {
        self.check()?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.documents.lock().unwrap().get(&target.role_arn).cloned())
    }

    async fn put_deny_policy(&self, target: &Target, document: &str) -> Result<(), crate::ports::EnforceError> {
        self.check()?;
        self.puts.fetch_add(1, Ordering::SeqCst);
        let during = self.during_put.lock().unwrap().take();
        if let Some(during) = during {
            during();
        }
        self.documents
            .lock()
            .unwrap()
            .insert(target.role_arn.clone(), document.to_owned());
        Ok(())
    }

    async fn delete_deny_policy(&self, target: &Target) -> Result<(), crate::ports::EnforceError> {
        self.check()?;
        self.documents.lock().unwrap().remove(&target.role_arn);
        Ok(())
    }
}

/// STS that answers at once with numbered credentials, or fails while `failing` is set.
#[derive(Default, Clone)]
pub struct FakeIssuer {
    pub calls: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
}

impl CredentialIssuer for FakeIssuer {
    async fn assume_role(&self, spec: &SessionSpec) -> Result<IssuedCredentials, IssueError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(IssueError {
                kind: IssueErrorKind::Throttled,
                code: "Throttling".into(),
                message: "Rate exceeded".into(),
            });
        }
        Ok(IssuedCredentials {
            access_key_id: format!("ASIATEST{n:08}"),
            secret_access_key: Secret::new("secret"),
            session_token: Secret::new("token"),
            expiration: OffsetDateTime::now_utc() + Duration::seconds(i64::try_from(spec.duration_secs()).unwrap()),
            assumed_role_arn: format!("{}/{}", spec.role_arn(), spec.session_name()),
            role_id: Some("AROAFAKEROLEID000001".into()),
            packed_policy_percent: Some(5),
        })
    }
}

/// The broker's ports in these tests: everything in memory, and a clock the test moves.
pub struct Fakes;

impl crate::ports::Ports for Fakes {
    type Store = MemoryStore;
    type Issuer = FakeIssuer;
    type Clock = ManualClock;
    type Enforcer = FakeIam;
    type Notifier = Notices;
}

/// What the broker announced, in order: `grant id: event (state after)` for grants' events, the
/// event's name for service events.
#[derive(Clone, Default)]
pub struct Notices(pub Arc<Mutex<Vec<String>>>);

impl Notices {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl crate::ports::Notifier for Notices {
    async fn grant_changed(&self, grant: &Grant, state: GrantState, events: &[GrantEvent]) {
        let mut notices = self.0.lock().unwrap();
        for event in events {
            notices.push(format!("{}: {} ({})", grant.id, event.kind.name(), state.as_str()));
        }
    }

    async fn service_event(&self, event: &ServiceEvent) {
        self.0.lock().unwrap().push(event.kind.name().to_owned());
    }
}

/// A clock the test moves.
#[derive(Clone)]
pub struct ManualClock(pub Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

/// The integrity key the tests seal records with (never one for production: it is public).
pub const TEST_INTEGRITY_KEY: &str = "grant-broker-tests-integrity-key-not-secret-0123456789";

/// [`TEST_INTEGRITY_KEY`] as key 1, the sealing key.
pub fn integrity_keys() -> crate::adapters::redis_store::seal::IntegrityKeys {
    crate::adapters::redis_store::seal::IntegrityKeys::new(vec![(1, TEST_INTEGRITY_KEY.as_bytes().to_vec())], None)
        .unwrap_or_else(|problem| unreachable!("the test key is valid: {problem}"))
}

/// How many cases each fuzz harness (the property tests that feed a parser arbitrary input) runs:
/// `default`, bounded for `scripts/test`, or `GB_FUZZ_CASES` for a longer run
/// (`GB_FUZZ_CASES=200000 cargo test --lib fuzz`).
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("GB_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}
