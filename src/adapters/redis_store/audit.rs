//! The audit log in Redis: one stream, `gb:{audit}:events`, of references to every recorded event
//! of every grant: `g` (the grant id, 16 bytes) and `n` (the event's position in its grant's
//! record). The event itself is stored once, in its grant's record, where it was written in the
//! same atomic step as the change it records; readers resolve references with one pipelined read
//! of the grants a page names. Stream ids are the cursors (`<ms>-<seq>`, ordered as written), so a
//! reader resumes after the last id it saw with no gap and no repeat, across broker restarts.
//!
//! References are added after the grant's own step succeeded, in the same round trip as the
//! other writes beside it (another slot than the grant's). A broker that dies in between leaves
//! the event in the grant's own trail but not in the log (documented in docs/storage.md). A reference
//! whose grant has gone (retention) is skipped.

use std::collections::HashMap;

use redis::Value;
use time::OffsetDateTime;

use super::{RedisGrantStore, id_bytes, id_from_bytes, reply, unavailable};
use crate::{
    domain::{
        GrantId,
        audit::{AuditCursor, AuditEntry, Logged, ServiceEvent},
    },
    ports::{AuditRead, StoreError},
};

/// Idle connections kept for followers' blocking reads.
const KEPT_BLOCKING_CONNECTIONS: usize = 16;

/// Adds references to a grant's events. KEYS: the log; ARGV: grant id (bytes), first event,
/// count.
pub(super) const LOG: &str = r"
for n = tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1 do
  redis.call('XADD', KEYS[1], '*', 'g', ARGV[1], 'n', n)
end
return tonumber(ARGV[3])
";

/// One entry as the log holds it: a reference to a grant's event, or a service event itself
/// (field `s`, protobuf: rare, and not tied to any grant's record).
enum Raw {
    Reference {
        cursor: AuditCursor,
        grant: GrantId,
        event: usize,
    },
    Service {
        cursor: AuditCursor,
        event: Box<ServiceEvent>,
    },
}

impl Raw {
    fn cursor(&self) -> &AuditCursor {
        match self {
            Self::Reference { cursor, .. } | Self::Service { cursor, .. } => cursor,
        }
    }
}

impl RedisGrantStore {
    pub(super) fn audit_key(&self) -> String {
        format!("{}:{{audit}}:events", self.prefix)
    }

    /// Adds references to events `first..first + count` of a grant to the log: one command,
    /// which adds all of them or none.
    pub(super) async fn log_references(&self, grant: GrantId, first: u64, count: usize) -> Result<(), StoreError> {
        if count == 0 {
            return Ok(());
        }
        self.log
            .key(self.audit_key())
            .arg(&id_bytes(grant)[..])
            .arg(first)
            .arg(count)
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// A connection for a blocking read of up to `wait`: an idle one kept from an earlier wait
    /// (made for at least as long a wait), or a new one.
    async fn blocking_connection(
        &self,
        wait: std::time::Duration,
    ) -> Result<(std::time::Duration, redis::aio::MultiplexedConnection), StoreError> {
        let kept = self.blocking.lock().ok().and_then(|mut idle| {
            let at = idle.iter().position(|(made_for, _)| *made_for >= wait)?;
            Some(idle.swap_remove(at))
        });
        if let Some(connection) = kept {
            return Ok(connection);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(wait + self.connect_timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        Ok((wait, connection))
    }

    /// Keeps a connection whose blocking read answered, for the next one (at most
    /// [`KEPT_BLOCKING_CONNECTIONS`]; one that failed is dropped instead).
    fn return_blocking_connection(&self, connection: (std::time::Duration, redis::aio::MultiplexedConnection)) {
        if let Ok(mut idle) = self.blocking.lock()
            && idle.len() < KEPT_BLOCKING_CONNECTIONS
        {
            idle.push(connection);
        }
    }

    /// Logs an event of the service itself (the broker announces it once it is logged).
    pub(super) async fn log_service(&self, event: &ServiceEvent) -> Result<(), StoreError> {
        redis::cmd("XADD")
            .arg(self.audit_key())
            .arg("*")
            .arg("s")
            .arg(super::service_event::encode(event))
            .query_async::<String>(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Decodes an XRANGE / XREAD list of `[id, ["g", <grant>, "n", <event>]]` and
    /// `[id, ["s", <service event>]]`.
    fn references(entries: Value) -> Result<Vec<Raw>, StoreError> {
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
                let cursor = AuditCursor::parse(&reply::text(id).map_err(&corrupt)?).map_err(&corrupt)?;
                let fields = match fields {
                    Value::Array(fields) => fields,
                    _ => return Err(corrupt(format!("entry {cursor} fields"))),
                };
                match <[Value; 2]>::try_from(fields) {
                    Ok([_, event]) => {
                        let bytes = reply::optional_bytes(event)
                            .map_err(&corrupt)?
                            .ok_or_else(|| corrupt(format!("entry {cursor} without its event")))?;
                        let event = super::service_event::decode(&bytes)
                            .map_err(|error| corrupt(format!("entry {cursor}: {error}")))?;
                        Ok(Raw::Service {
                            cursor,
                            event: Box::new(event),
                        })
                    }
                    Err(fields) => {
                        let [_, grant, _, event]: [Value; 4] = fields
                            .try_into()
                            .map_err(|_| corrupt(format!("entry {cursor} fields")))?;
                        let grant = reply::optional_bytes(grant)
                            .map_err(&corrupt)?
                            .ok_or_else(|| corrupt(format!("entry {cursor} without a grant")))?;
                        let event = reply::text(event)
                            .map_err(&corrupt)?
                            .parse()
                            .map_err(|_| corrupt(format!("entry {cursor}: event position")))?;
                        Ok(Raw::Reference {
                            cursor,
                            grant: id_from_bytes(&grant)?,
                            event,
                        })
                    }
                }
            })
            .collect()
    }

    /// Resolves references to the events they name, reading each grant once. A reference whose
    /// grant is gone is skipped.
    async fn resolve(&self, entries: Vec<Raw>) -> Result<Vec<AuditEntry>, StoreError> {
        let mut ids: Vec<GrantId> = entries
            .iter()
            .filter_map(|entry| match entry {
                Raw::Reference { grant, .. } => Some(*grant),
                Raw::Service { .. } => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let records: HashMap<GrantId, _> = ids
            .iter()
            .copied()
            .zip(self.read_records(&ids, super::record::Policy::Skip).await?)
            .filter_map(|(id, record)| record.map(|record| (id, record)))
            .collect();
        Ok(entries
            .into_iter()
            .filter_map(|entry| match entry {
                Raw::Service { cursor, event } => Some(AuditEntry {
                    cursor,
                    logged: Logged::Service(*event),
                }),
                Raw::Reference { cursor, grant, event } => {
                    let record = records.get(&grant)?;
                    let event = record.events.get(event)?;
                    let grant = &record.grant;
                    Some(AuditEntry {
                        cursor,
                        logged: Logged::Grant {
                            grant_id: grant.id,
                            target: grant.target.clone(),
                            account_id: grant.account_id.clone(),
                            grant_caller: grant.caller.to_string(),
                            event: event.clone(),
                        },
                    })
                }
            })
            .collect())
    }

    pub(super) async fn read_audit(
        &self,
        after: Option<&AuditCursor>,
        before: Option<&AuditCursor>,
        newest_first: bool,
        limit: usize,
        wait: Option<std::time::Duration>,
    ) -> Result<AuditRead, StoreError> {
        let key = self.audit_key();
        let start = after.map_or_else(|| "-".to_owned(), |cursor| format!("({cursor}"));
        let Some(end) = super::stream_end_before(before) else {
            return Ok(AuditRead {
                exhausted: true,
                ..AuditRead::default()
            });
        };
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
                    // Blocks its connection on the server: one of its own, not the shared one,
                    // kept for the next wait once it answered.
                    let mut connection = self.blocking_connection(wait).await?;
                    let last = after.map_or_else(|| "$".to_owned(), ToString::to_string);
                    let read: Value = redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(limit)
                        .arg("BLOCK")
                        .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(last)
                        .query_async(&mut connection.1)
                        .await
                        .map_err(unavailable)?;
                    self.return_blocking_connection(connection);
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
        let references = Self::references(reply)?;
        let last = references.last().map(|entry| entry.cursor().clone());
        let exhausted = references.len() < limit;
        Ok(AuditRead {
            entries: self.resolve(references).await?,
            last,
            exhausted,
        })
    }

    pub(super) async fn oldest_audit(&self) -> Result<Option<AuditCursor>, StoreError> {
        let first: Value = redis::cmd("XRANGE")
            .arg(self.audit_key())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(Self::references(first)?.first().map(|entry| entry.cursor().clone()))
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
