//! Writes beside a grant's step that failed while the broker lives: kept in memory and retried
//! until Redis takes them, so a grant whose index, access key or audit log write failed is
//! re-indexed (issue 8's repair rule).
//!
//! Each write retried is exactly one that failed, never more: a grant is re-added only to the
//! indexes whose write failed, and a change's audit references are added by one command that
//! takes all of them or none (a script whose keys are checked before it runs), so a retry does not
//! repeat what landed. One case can still repeat: a write that landed but whose reply was lost
//! (a timeout) is retried, and its entries appear twice; readers see the same event of the same
//! grant at two cursors. A broker that dies with repairs pending loses them: see
//! docs/storage.md.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use super::RedisGrantStore;
use crate::{
    domain::{Grant, GrantId},
    ports::{GrantIndex, StoreError},
};

/// Repairs kept at most: past this, the oldest are dropped (and logged).
const MAX_REPAIRS: usize = 10_000;

/// One write to retry.
pub(super) enum Repair {
    /// Add the grant to these indexes.
    Index {
        grant: Box<Grant>,
        indexes: Vec<GrantIndex>,
    },
    /// Add references to events `first..first + count` of the grant to the audit log.
    Log {
        grant: GrantId,
        /// Sealed as they were first sent, so a retry appends the same entries.
        entries: Vec<super::audit::Entry>,
    },
    /// Point an access key id at its grant until `expiry` (unix s).
    AccessKey {
        grant: GrantId,
        access_key_id: String,
        expiry: i64,
    },
}

impl Repair {
    fn grant_id(&self) -> GrantId {
        match self {
            Self::Index { grant, .. } => grant.id,
            Self::Log { grant, .. } | Self::AccessKey { grant, .. } => *grant,
        }
    }
}

#[derive(Default)]
pub(super) struct Repairs(Mutex<VecDeque<Repair>>);

impl Repairs {
    pub(super) fn push(&self, repair: Repair) {
        let Ok(mut queue) = self.0.lock() else { return };
        if queue.len() >= MAX_REPAIRS
            && let Some(dropped) = queue.pop_front()
        {
            tracing::error!(grant_id = %dropped.grant_id(), "too many writes to repair: one is given up");
        }
        queue.push_back(repair);
    }

    /// How many writes wait to be repaired.
    pub(super) fn len(&self) -> usize {
        self.0.lock().map(|queue| queue.len()).unwrap_or(0)
    }

    fn take(&self) -> Vec<Repair> {
        self.0
            .lock()
            .map(|mut queue| queue.drain(..).collect())
            .unwrap_or_default()
    }
}

/// How often the store retries its failed writes and walks the live index on.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(2);

/// Live index entries one walk reads.
const LIVE_WALK_BATCH: usize = 200;

impl RedisGrantStore {
    /// The store's own background work, for as long as the broker runs (the broker never sees
    /// it): retries the writes beside grants' steps that failed, and walks the live index on,
    /// dropping grants that have ended, so live-now searches read live grants, not history.
    pub async fn maintain(&self) {
        loop {
            tokio::time::sleep(MAINTENANCE_INTERVAL).await;
            match self.retry_repairs().await {
                Ok(0) => {}
                Ok(landed) => tracing::info!(landed, "writes beside grants' steps repaired"),
                Err(error) => tracing::debug!(%error, "writes beside grants' steps still failing"),
            }
            if let Err(error) = self.clean_live_index(LIVE_WALK_BATCH).await {
                tracing::debug!(%error, "could not clean the live index");
            }
            match self
                .checkpoint_audit_log(self.checkpoint_interval, time::OffsetDateTime::now_utc())
                .await
            {
                Ok(true) => tracing::debug!("audit log checkpointed"),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "could not checkpoint the audit log; retrying"),
            }
        }
    }

    /// Retries every write kept for repair, in order; what fails again is kept. Returns how many
    /// landed.
    pub async fn retry_repairs(&self) -> Result<usize, StoreError> {
        let mut landed = 0;
        let mut failure = None;
        for repair in self.repairs.take() {
            if failure.is_some() {
                // Redis is refusing: keep the rest, in order, for the next pass.
                self.repairs.push(repair);
                continue;
            }
            let result = match &repair {
                Repair::Index { grant, indexes } => {
                    let failed = self.index_grant(grant, indexes).await;
                    if failed.is_empty() {
                        Ok(())
                    } else {
                        let error = failed[0].1.clone();
                        self.repairs.push(Repair::Index {
                            grant: grant.clone(),
                            indexes: failed.into_iter().map(|(index, _)| index).collect(),
                        });
                        failure = Some(error);
                        continue;
                    }
                }
                Repair::Log { entries, .. } => self.append_log(entries).await,
                Repair::AccessKey {
                    grant,
                    access_key_id,
                    expiry,
                } => self.point_access_key(*grant, access_key_id, *expiry).await,
            };
            match result {
                Ok(()) => {
                    tracing::info!(grant_id = %repair.grant_id(), "a write beside a grant's step was repaired");
                    landed += 1;
                }
                Err(error) => {
                    failure = Some(error.to_string());
                    self.repairs.push(repair);
                }
            }
        }
        match failure {
            Some(error) if landed == 0 => Err(StoreError::Unavailable(error)),
            _ => Ok(landed),
        }
    }

    /// Points an access key id at its grant.
    pub(super) async fn point_access_key(
        &self,
        grant: GrantId,
        access_key_id: &str,
        expiry: i64,
    ) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.access_key_key(access_key_id))
            .arg(&super::id_bytes(grant)[..])
            .arg("EXAT")
            .arg(expiry)
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(super::unavailable)
    }

    /// Keeps a failed write to retry.
    pub(super) fn keep_for_repair(&self, repair: Repair, error: &str) {
        tracing::warn!(grant_id = %repair.grant_id(), %error, "a write beside a grant's step failed: kept to retry");
        self.repairs.push(repair);
    }
}
