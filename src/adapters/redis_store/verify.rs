//! `grant-broker audit verify`: the whole audit log walked, every entry's seal checked against the
//! event it names, the checkpoints' counts and chain, each writer's sequence, and every grant
//! record the log refers to (its seal, and that each of its events is logged). Reads only.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use super::{
    RedisGrantStore,
    audit::Raw,
    ledger::{self, Verification, Walk},
    record::Policy,
};
use crate::{
    domain::{GrantId, audit::AuditCursor},
    ports::StoreError,
};

/// Entries read per page.
const PAGE: usize = 500;

/// What the walk knows of a grant the log refers to.
#[derive(Default)]
struct Referred {
    /// Events its record holds; `None`: no record, or not readable.
    events: Option<usize>,
    /// Positions the log refers to.
    positions: BTreeSet<u64>,
    /// When the log first refers to it.
    first_seen: Option<AuditCursor>,
    /// When the grant was created, by its record.
    created: Option<OffsetDateTime>,
}

impl RedisGrantStore {
    /// Walks the audit log from `since` (or its oldest entry) to its end.
    pub async fn verify_audit_log(
        &self,
        since: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Verification, StoreError> {
        // A whole log counts from its first entry, except what the hourly trim may have taken.
        let mut walk = Walk::default();
        walk.from_the_start = since
            .is_none()
            .then(|| AuditCursor::at(now - self.retention + std::time::Duration::from_secs(3_600)));
        let mut grants: BTreeMap<GrantId, Referred> = BTreeMap::new();
        let mut after = since.map(|since| AuditCursor::at(since).preceding());
        let horizon = now - self.retention;
        // Read first: entries appended while the walk runs are after its `last`.
        let head = self.audit_head().await?;
        loop {
            let start = after
                .as_ref()
                .map_or_else(|| "-".to_owned(), |cursor| format!("({cursor}"));
            let page: redis::Value = redis::cmd("XRANGE")
                .arg(self.audit_key())
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut self.connection.clone())
                .await
                .map_err(super::unavailable)?;
            let entries = Self::references(page)?;
            let Some(last) = entries.last().map(|entry| entry.cursor().clone()) else {
                break;
            };
            self.verify_page(&mut walk, &mut grants, entries, horizon).await?;
            after = Some(last);
        }
        // A log that did not grow while it was walked: every entry after the last checkpoint is
        // one the head counted, or one no broker appended.
        let quiet = self.audit_head().await?.last == head.last;
        let since = since.map(AuditCursor::at);
        Self::verify_head(&mut walk, &head, quiet, since.as_ref());
        // Every event of a grant created after the walk's first entry must be in the log (a
        // minute's slack for the broker's clock against Redis's).
        let walk_start = walk.verification.first.as_ref().map(AuditCursor::time);
        for (id, referred) in &grants {
            let (Some(events), Some(first_seen)) = (referred.events, &referred.first_seen) else {
                continue;
            };
            let whole = referred.positions.contains(&0)
                || referred
                    .created
                    .zip(walk_start)
                    .is_some_and(|(created, start)| created > start + time::Duration::minutes(1));
            if !whole {
                continue;
            }
            let missing: Vec<String> = (0..events as u64)
                .filter(|position| !referred.positions.contains(position))
                .map(|position| position.to_string())
                .collect();
            if !missing.is_empty() {
                walk.problem(
                    format!("grant {id}"),
                    format!(
                        "events {} of its record are not in the log (first logged at {first_seen}): deleted, or a broker stopped between the grant's step and its log write",
                        missing.join(", ")
                    ),
                );
            }
        }
        let mut verification = walk.finish();
        verification.records = grants.values().filter(|referred| referred.events.is_some()).count() as u64;
        Ok(verification)
    }

    async fn verify_page(
        &self,
        walk: &mut Walk,
        grants: &mut BTreeMap<GrantId, Referred>,
        entries: Vec<Raw>,
        horizon: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let ids = Raw::grants_named(&entries);
        let records: BTreeMap<GrantId, _> = ids
            .iter()
            .copied()
            .zip(self.read_each(&ids, Policy::Skip).await?)
            .collect();
        for entry in entries {
            match entry {
                Raw::Checkpoint { cursor, checkpoint } => {
                    let verified = checkpoint.verifies(&self.keys);
                    walk.checkpoint(&cursor, &checkpoint, verified);
                }
                Raw::Malformed { cursor, why } => {
                    walk.entry(&cursor, None);
                    walk.problem(&cursor, format!("not an entry any broker writes: {why}"));
                }
                Raw::Service { cursor, event, seal } => {
                    walk.entry(&cursor, None);
                    let json = serde_json::to_string(&*event).unwrap_or_default();
                    match &seal {
                        Some(seal) if ledger::service_verifies(&self.keys, seal, &json) => {
                            walk.sealed_by(&cursor, seal)
                        }
                        None => walk.problem(&cursor, "a service event without a MAC"),
                        Some(_) => walk.problem(&cursor, "a service event whose MAC does not match it: edited"),
                    }
                }
                Raw::Reference {
                    cursor,
                    grant,
                    event,
                    seal,
                } => {
                    walk.entry(&cursor, None);
                    let referred = grants.entry(grant).or_default();
                    referred.positions.insert(event as u64);
                    referred.first_seen.get_or_insert_with(|| cursor.clone());
                    match records.get(&grant) {
                        // An entry whose record cannot be read is reported with the record; its
                        // place in its writer's sequence is taken (it is there, not deleted).
                        None | Some(None) => {
                            if let Some(seal) = &seal {
                                walk.sealed_by(&cursor, seal);
                            }
                            if cursor.time() > horizon + time::Duration::days(1) {
                                walk.problem(
                                    &cursor,
                                    format!("grant {grant}'s record is missing, though retention keeps it: deleted"),
                                );
                            }
                        }
                        Some(Some(Err(StoreError::Tampered { what, .. }))) => {
                            if let Some(seal) = &seal {
                                walk.sealed_by(&cursor, seal);
                            }
                            if referred.events.is_none() && referred.positions.len() == 1 {
                                walk.problem(format!("grant {grant}"), format!("its record fails its seal: {what}"));
                            }
                        }
                        Some(Some(Err(error))) => walk.problem(format!("grant {grant}"), error.to_string()),
                        Some(Some(Ok(record))) => {
                            referred.events = Some(record.events.len());
                            referred.created = Some(record.grant.created_at);
                            let Some(found) = record.events.get(event) else {
                                walk.problem(
                                    &cursor,
                                    format!(
                                        "refers to event {event} of grant {grant}, whose record holds {}: the record was rolled back, or the entry forged",
                                        record.events.len()
                                    ),
                                );
                                continue;
                            };
                            match &seal {
                                Some(seal) if self.vouches_for(seal, &record.grant, event as u64, found) => {
                                    walk.sealed_by(&cursor, seal);
                                }
                                None => walk.problem(&cursor, format!("a reference to grant {grant} without a MAC")),
                                Some(_) => walk.problem(
                                    &cursor,
                                    format!("its MAC does not match event {event} of grant {grant}: the entry or the event was edited"),
                                ),
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The head counts every entry appended: entries after the last checkpoint must match it.
    fn verify_head(walk: &mut Walk, head: &super::audit::Head, quiet: bool, since: Option<&AuditCursor>) {
        // A whole log without a checkpoint (new, or its checkpoints deleted) must hold what the
        // head counted, unless retention may have trimmed it.
        if quiet
            && walk.last_checkpoint().is_none()
            && let Some(horizon) = walk.from_the_start.clone()
            && walk.verification.first.as_ref().is_none_or(|first| *first >= horizon)
            && head.count != walk.verification.entries
        {
            walk.problem(
                "the log's head",
                format!(
                    "counts {} entries appended, the log holds {} and no checkpoint: {}",
                    head.count,
                    walk.verification.entries,
                    if walk.verification.entries < head.count {
                        "entries were deleted"
                    } else {
                        "entries were added"
                    }
                ),
            );
        }
        // The head names the last checkpoint appended: a walk of a log that did not grow
        // meanwhile must have met it, as its last.
        // (Only where the walk covers it: a checkpoint from before `--since` is not walked.)
        let walked_over = |named: &&str| {
            let at = named.rsplit(' ').next().and_then(|at| AuditCursor::parse(at).ok());
            since.is_none_or(|since| at.is_none_or(|at| at >= *since))
        };
        if let Some(named) = head.checkpoint.as_deref().filter(|_| quiet).filter(walked_over) {
            let walked = walk
                .last_checkpoint()
                .map(|met| format!("{} {} {}", met.number, hex::encode(&met.mac), met.at));
            if walked.as_deref() != Some(named) {
                walk.problem(
                    "the log's head",
                    format!(
                        "names checkpoint `{named}` as the last one appended; the log's last is {}: checkpoints were deleted or the head was changed",
                        walked.unwrap_or_else(|| "none".to_owned())
                    ),
                );
            }
        }
        if let Some(last) = &head.last
            && let Some((counted, walked)) = walk.since_last_checkpoint(head.count, (!quiet).then_some(last))
            && counted != walked
        {
            walk.problem(
                "the log's head",
                format!(
                    "counts {counted} entries since the last checkpoint, the log holds {walked}: {}",
                    if walked < counted {
                        "entries were deleted"
                    } else {
                        "entries were added"
                    }
                ),
            );
        }
    }
}
