//! Audit queries: the log of every grant's events, filtered, paged and followed as it grows, for
//! auditor and admin callers.

use super::{Broker, BrokerError, MAX_PAGE_SIZE, permit};
use crate::{
    domain::{
        Caller,
        access::Rpc,
        audit::{AuditCursor, AuditEntry, AuditFilter, ServiceEvent, ServiceEventKind},
    },
    ports::{AuditLog, Clock, Ports},
};

/// Log pages one query reads at most (a page may come back short, with a cursor to go on).
const AUDIT_SCANS: usize = 5;

/// How long one wait for new events lasts before a follower checks on its client.
pub const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl<P: Ports> Broker<P> {
    /// Runs an audit query of an auditor or admin caller (one that reads every grant) together
    /// with the record of it in the audit log (`audit_queried`: who asked, which call, what for):
    /// concurrent, so recording costs no round trip, and a query that cannot be recorded fails
    /// (an unrecorded audit query would be a gap in the ledger). Requester callers reading their
    /// own grants are not auditing, and are not recorded. Callers record the first page of a
    /// query, not its continuations: a query is recorded once, and paging (or following) the log
    /// never feeds on its own records.
    pub(crate) async fn audited<T>(
        &self,
        caller: &Caller,
        query: &str,
        filter: String,
        read: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        if !caller.reads_every_grant() {
            return read.await;
        }
        let event = ServiceEvent {
            at: self.clock.now(),
            caller: caller.id.to_string(),
            person: None,
            kind: ServiceEventKind::AuditQueried {
                query: query.to_owned(),
                filter,
            },
        };
        let (result, recorded) = tokio::join!(read, self.log_service(&event));
        let found = result?;
        recorded?;
        Ok(found)
    }

    /// Records that this replica loaded its rules (at start: every replica says which rules it
    /// runs).
    pub async fn log_rules_loaded(&self) -> Result<(), BrokerError> {
        let event = ServiceEvent {
            at: self.clock.now(),
            caller: super::BROKER_CALLER.to_owned(),
            person: None,
            kind: ServiceEventKind::RulesLoaded {
                digest: self.rules.digest().to_owned(),
                policies: self.rules.policy_count(),
                sources: self.rules.sources().to_vec(),
            },
        };
        Ok(self.log_service(&event).await?)
    }

    /// A cursor a reader may resume from: not from the part of the log retention has dropped
    /// (older than the retention period, and older than the oldest event kept), where events
    /// may have been lost to it.
    async fn check_cursor(&self, cursor: &AuditCursor) -> Result<(), BrokerError> {
        let horizon = self.clock.now() - self.settings.retention;
        if cursor.time() >= horizon {
            return Ok(());
        }
        let oldest = self.store.oldest_audit_event().await?;
        if oldest.as_ref().is_some_and(|oldest| cursor < &oldest.preceding()) {
            return Err(BrokerError::CursorExpired {
                cursor: cursor.to_string(),
                oldest: oldest.map(|c| c.to_string()),
            });
        }
        Ok(())
    }

    /// A page of audit events `filter` matches, oldest first (or newest first), continuing after
    /// (or before) `cursor`, and the cursor to go on from when there may be more.
    pub async fn list_audit_events(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
        cursor: Option<AuditCursor>,
        newest_first: bool,
        page_size: usize,
    ) -> Result<(Vec<AuditEntry>, Option<AuditCursor>), BrokerError> {
        permit(caller, Rpc::ListAuditEvents)?;
        if let Some(cursor) = &cursor {
            self.check_cursor(cursor).await?;
            return self
                .audit_page(filter, Some(cursor.clone()), newest_first, page_size)
                .await;
        }
        let read = self.audit_page(filter, None, newest_first, page_size);
        self.audited(caller, "ListAuditEvents", filter.describe(), read).await
    }

    async fn audit_page(
        &self,
        filter: &AuditFilter,
        cursor: Option<AuditCursor>,
        newest_first: bool,
        page_size: usize,
    ) -> Result<(Vec<AuditEntry>, Option<AuditCursor>), BrokerError> {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        // The time range is a range of cursors.
        let from = filter.from.map(AuditCursor::at);
        let to = filter.to.map(AuditCursor::at);
        let (mut after, mut before) = if newest_first {
            (from.map(|c| c.preceding()), cursor.or(to))
        } else {
            (cursor.or(from.map(|c| c.preceding())), to)
        };
        let mut found = Vec::new();
        for _ in 0..AUDIT_SCANS {
            let read = self
                .store
                .audit_events(after.as_ref(), before.as_ref(), newest_first, page_size, None)
                .await?;
            for entry in read.entries {
                let position = entry.cursor.clone();
                if filter.matches(&entry) {
                    found.push(entry);
                    if found.len() == page_size {
                        return Ok((found, Some(position)));
                    }
                }
            }
            if read.exhausted {
                return Ok((found, None));
            }
            // On from the last entry read (also past entries whose grant is gone).
            if newest_first {
                before = read.last.or(before);
            } else {
                after = read.last.or(after);
            }
        }
        Ok((found, if newest_first { before } else { after }))
    }

    /// Where a follower of the log starts, without waiting for anything: after `after` (which
    /// must not be from the part retention dropped), or from now (after the newest event, or the
    /// log's start when it is empty).
    pub async fn start_following(
        &self,
        caller: &Caller,
        after: Option<AuditCursor>,
    ) -> Result<AuditCursor, BrokerError> {
        permit(caller, Rpc::WatchAuditEvents)?;
        if let Some(cursor) = after {
            // Resuming: the follow this continues was recorded when it started.
            self.check_cursor(&cursor).await?;
            return Ok(cursor);
        }
        let newest = async {
            let newest = self.store.audit_events(None, None, true, 1, None).await?;
            Ok(newest
                .last
                .unwrap_or_else(|| AuditCursor::at(time::OffsetDateTime::UNIX_EPOCH)))
        };
        self.audited(caller, "WatchAuditEvents", "{}".to_owned(), newest).await
    }

    /// The events logged after `after`, oldest first, waiting up to [`FOLLOW_WAIT`] for the
    /// next ones when there are none: what a follower started with [`Self::start_following`]
    /// sends on, then asks again after the cursor returned (the last entry read, which may be
    /// past the last event sent when an entry's grant is gone).
    pub async fn follow_audit_events(
        &self,
        after: &AuditCursor,
    ) -> Result<(Vec<AuditEntry>, AuditCursor), BrokerError> {
        let read = self
            .store
            .audit_events(Some(after), None, false, 100, Some(FOLLOW_WAIT))
            .await?;
        Ok((read.entries, read.last.unwrap_or_else(|| after.clone())))
    }

    /// Drops audit events older than the retention period (any replica, any time: idempotent).
    pub async fn trim_audit_log(&self) -> Result<u64, BrokerError> {
        Ok(self
            .store
            .trim_audit_log(self.clock.now() - self.settings.retention)
            .await?)
    }
}
