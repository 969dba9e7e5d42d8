//! The audit log in Redis: one stream, `gb:{audit}:events`, of every recorded event of every
//! grant. Stream ids are the cursors (`<ms>-<seq>`, ordered as written), so a reader resumes
//! after the last id it saw with no gap and no repeat, across broker restarts.
//!
//! Entries are added after the grant's own step succeeded, in the same round trip as the other
//! writes beside it (another slot than the grant's). A broker that dies in between leaves the
//! event in the grant's own trail but not in the log: the documented gap of this first version.

use redis::Value;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{RedisGrantStore, reply, unavailable};
use crate::{
    domain::{
        Grant, GrantEvent, GrantId,
        audit::{AuditCursor, AuditEntry},
    },
    ports::StoreError,
};

/// One log entry's `e` field.
#[derive(Serialize, Deserialize)]
struct LoggedV1 {
    grant: String,
    target: String,
    account: String,
    grant_caller: String,
    #[serde(flatten)]
    event: GrantEvent,
}

impl RedisGrantStore {
    pub(super) fn audit_key(&self) -> String {
        format!("{}:{{audit}}:events", self.prefix)
    }

    /// Appends `events` of `grant` to the log. Never fails the change it follows: errors are
    /// logged.
    pub(super) async fn log_events(&self, grant: &Grant, events: &[GrantEvent]) {
        if events.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for event in events {
            let logged = LoggedV1 {
                grant: grant.id.to_string(),
                target: grant.target.clone(),
                account: grant.account_id.clone(),
                grant_caller: grant.caller.to_string(),
                event: event.clone(),
            };
            match serde_json::to_string(&logged) {
                Ok(text) => {
                    pipe.cmd("XADD")
                        .arg(self.audit_key())
                        .arg("*")
                        .arg("e")
                        .arg(text)
                        .ignore();
                }
                Err(error) => tracing::error!(grant_id = %grant.id, %error, "cannot encode an audit entry"),
            }
        }
        if let Err(error) = pipe.query_async::<()>(&mut self.connection.clone()).await {
            tracing::warn!(grant_id = %grant.id, %error, "grant change recorded, but not in the audit log");
        }
    }

    /// Decodes an XRANGE / XREAD list of `[id, [field, value, ...]]`.
    fn audit_entries(entries: Value) -> Result<Vec<AuditEntry>, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("audit log: {what}"));
        let Value::Array(entries) = entries else {
            return match entries {
                Value::Nil => Ok(Vec::new()),
                other => Err(corrupt(format!("unexpected reply {other:?}"))),
            };
        };
        entries
            .into_iter()
            .map(|entry| {
                let [id, fields]: [Value; 2] = reply::array_of(entry, 2)
                    .map_err(&corrupt)?
                    .try_into()
                    .map_err(|_| corrupt("entry shape".to_owned()))?;
                let id = reply::optional_text(id)
                    .map_err(&corrupt)?
                    .ok_or_else(|| corrupt("entry without id".to_owned()))?;
                let fields = reply::texts(fields).map_err(&corrupt)?;
                let text = fields
                    .chunks(2)
                    .find(|pair| pair.first().is_some_and(|name| name == "e"))
                    .and_then(|pair| pair.get(1))
                    .ok_or_else(|| corrupt(format!("entry {id} without an event")))?;
                let logged: LoggedV1 =
                    serde_json::from_str(text).map_err(|error| corrupt(format!("entry {id}: {error}")))?;
                Ok(AuditEntry {
                    cursor: AuditCursor::parse(&id).map_err(&corrupt)?,
                    grant_id: GrantId::parse(&logged.grant).map_err(&corrupt)?,
                    target: logged.target,
                    account_id: logged.account,
                    grant_caller: logged.grant_caller,
                    event: logged.event,
                })
            })
            .collect()
    }

    pub(super) async fn read_audit(
        &self,
        after: Option<&AuditCursor>,
        before: Option<&AuditCursor>,
        newest_first: bool,
        limit: usize,
        wait: Option<std::time::Duration>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let key = self.audit_key();
        let start = after.map_or_else(|| "-".to_owned(), |cursor| format!("({cursor}"));
        let end = before.map_or_else(|| "+".to_owned(), |cursor| format!("({cursor}"));
        let reply: Value = if newest_first {
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg(&start)
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?
        } else {
            let page: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg(&end)
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?;
            match (wait, &page) {
                (Some(wait), Value::Array(found)) if found.is_empty() && before.is_none() => {
                    // Blocks its connection on the server: one of its own, not the shared one.
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(wait + self.connect_timeout));
                    let mut connection = self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(unavailable)?;
                    let last = after.map_or_else(|| "$".to_owned(), ToString::to_string);
                    let read: Value = redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(limit)
                        .arg("BLOCK")
                        .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(last)
                        .query_async(&mut connection)
                        .await
                        .map_err(unavailable)?;
                    // [[key, entries]] or nil.
                    match read {
                        Value::Array(streams) => match streams.into_iter().next() {
                            Some(stream) => {
                                let [_, entries]: [Value; 2] = reply::array_of(stream, 2)
                                    .map_err(|what| StoreError::Corrupt(format!("audit log: {what}")))?
                                    .try_into()
                                    .map_err(|_| StoreError::Corrupt("audit log: XREAD reply".to_owned()))?;
                                entries
                            }
                            None => Value::Nil,
                        },
                        other => other,
                    }
                }
                _ => page,
            }
        };
        Self::audit_entries(reply)
    }

    pub(super) async fn oldest_audit(&self) -> Result<Option<AuditCursor>, StoreError> {
        let first = self.read_audit(None, None, false, 1, None).await?;
        Ok(first.into_iter().next().map(|entry| entry.cursor))
    }

    pub(super) async fn trim_audit(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(self.audit_key())
            .arg("MINID")
            .arg(AuditCursor::at(before).to_string())
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(trimmed)
    }
}
