//! The audit log in Redis: one stream, `gb:{audit}:events`, of references to every recorded event
//! of every grant: `g` (the grant id, 16 bytes) and `n` (the event's position in its grant's
//! record), sealed ([`ledger`]: `w` the writer, `q` its sequence number, `k` the key id, `m` the
//! MAC over the event's JSON). The event itself is stored once, in its grant's record, where it
//! was written in the same atomic step as the change it records; readers resolve references
//! with one pipelined read of the grants a page names, and check each entry's MAC against the
//! event it names. Service events (`s`) are stored in the log itself, sealed the same way, and
//! checkpoints (`c`) are appended beside the traffic ([`ledger`]). `gb:{audit}:head` (same slot)
//! counts the entries appended, the last one's id and the last checkpoint. Stream ids are the
//! cursors (`<ms>-<seq>`, ordered as written), so a reader resumes after the last id it saw with
//! no gap and no repeat, across broker restarts.
//!
//! References are added after the grant's own step succeeded, in the same round trip as the
//! other writes beside it (another slot than the grant's). A broker that dies in between leaves
//! the event in the grant's own trail but not in the log (documented in docs/storage.md). A
//! reference whose grant has gone (retention) is skipped; one whose grant's record or own MAC
//! fails reads as a `tampered` entry.

use std::collections::HashMap;

use redis::Value;
use time::OffsetDateTime;

use super::{
    RedisGrantStore, id_bytes, id_from_bytes,
    ledger::{self, Checkpoint, EntrySeal, Referenced, Writer},
    reply, unavailable,
};
use crate::{
    domain::{
        Grant, GrantEvent, GrantId,
        audit::{AuditCursor, AuditEntry, Logged, ServiceEvent},
    },
    ports::{AuditRead, StoreError},
};

/// Idle connections kept for followers' blocking reads.
const KEPT_BLOCKING_CONNECTIONS: usize = 16;

/// The most entries one batched log write carries ([`RedisGrantStore::append_log`]).
pub(super) const BATCH_ENTRIES: usize = 256;

/// Log appends waiting for the next batched write: each a change's entries, answered with why
/// its batch failed, if it did.
pub(super) type LogQueue = super::group_commit::GroupCommit<Vec<Entry>, Result<(), String>>;

/// Appends sealed entries and counts them in the head. KEYS: the log, the head. ARGV: how many
/// entries, then for each its number of fields and its field names and values.
pub(super) const LOG: &str = r"
local last
local i = 2
for e = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[i]) * 2
  last = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
redis.call('HINCRBY', KEYS[2], 'count', tonumber(ARGV[1]))
redis.call('HSET', KEYS[2], 'last', last)
return last
";

/// Appends a checkpoint unless another replica appended one since the head was read. KEYS: the
/// log, the head. ARGV: the last checkpoint as read (`<number> <mac hex> <cursor>`, empty: none),
/// the checkpoint's body, key id and MAC, its number and MAC (the script adds its cursor), the
/// time (unix s).
pub(super) const CHECKPOINT: &str = r"
if (redis.call('HGET', KEYS[2], 'checkpoint') or '') ~= ARGV[1] then return 0 end
local id = redis.call('XADD', KEYS[1], '*', 'c', ARGV[2], 'k', ARGV[3], 'm', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('HSET', KEYS[2], 'last', id, 'checkpoint', ARGV[5] .. ' ' .. id, 'checkpoint_at', ARGV[6])
return 1
";

/// An entry ready to append: its fields, sealed. Kept whole for a retry, so a retried write
/// appends the same entry (same writer and sequence number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry(Vec<(&'static str, Vec<u8>)>);

/// One entry as the log holds it.
pub(super) enum Raw {
    Reference {
        cursor: AuditCursor,
        grant: GrantId,
        event: usize,
        seal: Option<EntrySeal>,
    },
    Service {
        cursor: AuditCursor,
        event: Box<ServiceEvent>,
        seal: Option<EntrySeal>,
    },
    Checkpoint {
        cursor: AuditCursor,
        checkpoint: Checkpoint,
    },
    /// Not an entry any broker writes.
    Malformed { cursor: AuditCursor, why: String },
}

impl Raw {
    /// The grants the references among `entries` name, each once.
    pub(super) fn grants_named(entries: &[Self]) -> Vec<GrantId> {
        let mut ids: Vec<GrantId> = entries
            .iter()
            .filter_map(|entry| match entry {
                Self::Reference { grant, .. } => Some(*grant),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub(super) fn cursor(&self) -> &AuditCursor {
        match self {
            Self::Reference { cursor, .. }
            | Self::Service { cursor, .. }
            | Self::Checkpoint { cursor, .. }
            | Self::Malformed { cursor, .. } => cursor,
        }
    }
}

/// The head beside the log: entries appended, the last one, the last checkpoint.
#[derive(Debug, Default)]
pub(super) struct Head {
    pub count: u64,
    pub last: Option<AuditCursor>,
    /// `<number> <mac hex> <cursor>`, as the checkpoint script compares it.
    pub checkpoint: Option<String>,
    pub checkpoint_at: Option<i64>,
}

impl RedisGrantStore {
    pub(super) fn audit_key(&self) -> String {
        format!("{}:{{audit}}:events", self.prefix)
    }

    fn audit_head_key(&self) -> String {
        format!("{}:{{audit}}:head", self.prefix)
    }

    /// The next `count` sequence numbers of this writer.
    fn sequences(&self, count: usize) -> u64 {
        self.sequence
            .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed)
    }

    fn sealed(
        &self,
        mut fields: Vec<(&'static str, Vec<u8>)>,
        sequence: u64,
        mac: [u8; super::seal::TAG_LEN],
    ) -> Entry {
        fields.extend([
            ("w", self.writer.0.to_vec()),
            ("q", sequence.to_string().into_bytes()),
            ("k", self.keys.sealing_id().to_string().into_bytes()),
            ("m", mac.to_vec()),
        ]);
        Entry(fields)
    }

    /// The log entries for events `first..` of a grant, sealed.
    pub(super) fn reference_entries(
        &self,
        grant: &Grant,
        first: u64,
        events: &[GrantEvent],
    ) -> Result<Vec<Entry>, StoreError> {
        let start = self.sequences(events.len());
        events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let (position, sequence) = (first + i as u64, start + i as u64);
                let json = serde_json::to_string(event).map_err(|error| StoreError::Corrupt(error.to_string()))?;
                let referenced = Referenced::of(grant, position, &json);
                let mac = ledger::reference_mac(&self.keys, self.keys.sealing_id(), self.writer, sequence, &referenced)
                    .map_err(StoreError::Corrupt)?;
                Ok(self.sealed(
                    vec![
                        ("g", id_bytes(grant.id).to_vec()),
                        ("n", position.to_string().into_bytes()),
                    ],
                    sequence,
                    mac,
                ))
            })
            .collect()
    }

    /// Whether `seal` is the seal of the reference to `event`, at `position` of `grant`'s record.
    pub(super) fn vouches_for(&self, seal: &EntrySeal, grant: &Grant, position: u64, event: &GrantEvent) -> bool {
        let json = serde_json::to_string(event).unwrap_or_default();
        ledger::reference_verifies(&self.keys, seal, &Referenced::of(grant, position, &json))
    }

    /// Appends entries in one command, which adds all of them or none: by group commit
    /// ([`super::group_commit`]), beside other changes' entries queued meanwhile.
    pub(super) async fn append_log(&self, entries: &[Entry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.log_queue
            .submit(
                entries.to_vec(),
                Vec::len,
                |batch: Vec<Vec<Entry>>| async move {
                    let written = self.write_log(batch.iter().flatten()).await;
                    batch.iter().map(|_| written.clone()).collect()
                },
                Err,
            )
            .await
            .map_err(StoreError::Unavailable)
    }

    /// Writes entries in one script.
    async fn write_log(&self, entries: impl Iterator<Item = &Entry> + Clone) -> Result<(), String> {
        let mut invocation = self.log.key(self.audit_key());
        invocation.key(self.audit_head_key()).arg(entries.clone().count());
        for Entry(fields) in entries {
            invocation.arg(fields.len());
            for (name, value) in fields {
                invocation.arg(*name).arg(value.as_slice());
            }
        }
        invocation
            .invoke_async::<String>(&mut self.connection.clone())
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// A connection for a blocking read of up to `wait`: an idle one kept from an earlier wait
    /// (made for at least as long a wait), or a new one.
    async fn blocking_connection(
        &self,
        wait: std::time::Duration,
    ) -> Result<(std::time::Duration, super::connection::Connection), StoreError> {
        let kept = self.blocking.lock().ok().and_then(|mut idle| {
            let at = idle.iter().position(|(made_for, _)| *made_for >= wait)?;
            Some(idle.swap_remove(at))
        });
        if let Some(connection) = kept {
            return Ok(connection);
        }
        let timeouts = super::connection::Timeouts {
            connect: self.connect_timeout,
            response: wait + self.connect_timeout,
        };
        let connection = self.endpoint.dedicated(timeouts).await.map_err(unavailable)?;
        Ok((wait, connection))
    }

    /// Keeps a connection whose blocking read answered, for the next one (at most
    /// [`KEPT_BLOCKING_CONNECTIONS`]; one that failed is dropped instead).
    fn return_blocking_connection(&self, connection: (std::time::Duration, super::connection::Connection)) {
        if let Ok(mut idle) = self.blocking.lock()
            && idle.len() < KEPT_BLOCKING_CONNECTIONS
        {
            idle.push(connection);
        }
    }

    /// Logs an event of the service itself (the broker announces it once it is logged).
    pub(super) async fn log_service(&self, event: &ServiceEvent) -> Result<(), StoreError> {
        let sequence = self.sequences(1);
        let json = serde_json::to_string(event).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let mac = ledger::service_mac(&self.keys, self.keys.sealing_id(), self.writer, sequence, &json)
            .map_err(StoreError::Corrupt)?;
        let entry = self.sealed(vec![("s", super::service_event::encode(event))], sequence, mac);
        let appended = self.append_log(&[entry]).await;
        if let Err(error) = &appended {
            // The caller learns it failed (and does not act on it); the place stays unused, and
            // `audit verify` names it among the writer's missing entries: this line says why.
            tracing::warn!(
                writer = %hex::encode(self.writer.0), sequence, %error,
                "a service event could not be logged; its place in this writer's sequence stays empty"
            );
        }
        appended
    }

    /// Appends a checkpoint when the last one is older than `interval` (any replica may: the
    /// script appends one only if no other did since the head was read). Whether it did.
    pub async fn checkpoint_audit_log(
        &self,
        interval: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let head = self.audit_head().await?;
        let interval_secs = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
        // A time in the future no replica wrote: due, or checkpoints would stop.
        let due = head.checkpoint_at.is_none_or(|at| {
            now.unix_timestamp().saturating_sub(at) >= interval_secs
                || at > now.unix_timestamp().saturating_add(interval_secs)
        });
        let Some(last) = head.last.clone().filter(|_| due) else {
            return Ok(false);
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("audit head: checkpoint {what}"));
        let (number, previous) = match head.checkpoint.as_deref() {
            Some(text) => {
                let mut parts = text.split(' ');
                let (Some(number), Some(mac), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(corrupt("shape"));
                };
                let (number, mac, at) = (
                    number.parse::<u64>().map_err(|_| corrupt("number"))?,
                    hex::decode(mac).map_err(|_| corrupt("MAC"))?,
                    AuditCursor::parse(at).map_err(|_| corrupt("cursor"))?,
                );
                // Chain only onto a checkpoint the log holds and that verifies: a head pointing
                // elsewhere would re-root the chain past deleted checkpoints.
                self.checkpoint_at(&at, number, &mac).await?;
                (number.checked_add(1).ok_or_else(|| corrupt("number"))?, Some((mac, at)))
            }
            None => (1, None),
        };
        let checkpoint =
            Checkpoint::seal(&self.keys, number, head.count, last, previous).map_err(StoreError::Corrupt)?;
        let body = Checkpoint::body(
            checkpoint.number,
            checkpoint.count,
            &checkpoint.last,
            checkpoint.previous.as_ref(),
        );
        let appended: i64 = self
            .checkpoint
            .key(self.audit_key())
            .key(self.audit_head_key())
            .arg(head.checkpoint.clone().unwrap_or_default())
            .arg(body)
            .arg(checkpoint.key)
            .arg(&checkpoint.mac)
            .arg(format!("{} {}", checkpoint.number, hex::encode(&checkpoint.mac)))
            .arg(now.unix_timestamp())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(appended == 1)
    }

    /// Checks that the log holds, at `at`, checkpoint `number` with `mac`, and that it verifies.
    async fn checkpoint_at(&self, at: &AuditCursor, number: u64, mac: &[u8]) -> Result<(), StoreError> {
        let entry: Value = redis::cmd("XRANGE")
            .arg(self.audit_key())
            .arg(at.to_string())
            .arg(at.to_string())
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let holds = matches!(
            Self::references(entry)?.first(),
            Some(Raw::Checkpoint { checkpoint, .. })
                if checkpoint.number == number && checkpoint.mac == mac && checkpoint.verifies(&self.keys)
        );
        if holds {
            return Ok(());
        }
        tracing::error!(
            checkpoint = number, at = %at,
            "the audit log's head names a checkpoint the log does not hold or that does not verify: not checkpointing on it (grant-broker audit verify shows what happened)"
        );
        Err(StoreError::Corrupt(format!(
            "audit head: checkpoint {number} at {at} is not in the log"
        )))
    }

    pub(super) async fn audit_head(&self) -> Result<Head, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("audit head: {what}"));
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.audit_head_key())
            .arg("count")
            .arg("last")
            .arg("checkpoint")
            .arg("checkpoint_at")
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let [count, last, checkpoint, checkpoint_at]: [Option<String>; 4] =
            fields.try_into().map_err(|_| corrupt("reply shape"))?;
        Ok(Head {
            count: count
                .map(|count| count.parse())
                .transpose()
                .map_err(|_| corrupt("count"))?
                .unwrap_or(0),
            last: last
                .map(|last| AuditCursor::parse(&last))
                .transpose()
                .map_err(|_| corrupt("last"))?,
            checkpoint,
            checkpoint_at: checkpoint_at.and_then(|at| at.parse().ok()),
        })
    }

    /// Decodes an XRANGE / XREAD list of `[id, [name, value, ...]]`.
    pub(super) fn references(entries: Value) -> Result<Vec<Raw>, StoreError> {
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
                let Value::Array(fields) = fields else {
                    return Err(corrupt(format!("entry {cursor} fields")));
                };
                // An entry no broker wrote is shown for what it is, and the rest still read.
                let mut named: HashMap<String, Vec<u8>> = HashMap::new();
                let mut fields = fields.into_iter();
                let parsed = (|| {
                    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                        let name = reply::text(name)?;
                        let value = reply::optional_bytes(value)?
                            .ok_or_else(|| format!("entry {cursor}: field {name} without a value"))?;
                        named.insert(name, value);
                    }
                    Self::raw(cursor.clone(), named)
                })();
                Ok(parsed.unwrap_or_else(|why| Raw::Malformed { cursor, why }))
            })
            .collect()
    }

    fn raw(cursor: AuditCursor, mut fields: HashMap<String, Vec<u8>>) -> Result<Raw, String> {
        let text = |bytes: Vec<u8>, what: &str| {
            String::from_utf8(bytes).map_err(|_| format!("entry {cursor}: {what} is not text"))
        };
        let key = fields
            .remove("k")
            .map(|key| {
                text(key, "the key id")?
                    .parse::<u8>()
                    .map_err(|_| format!("entry {cursor}: key id"))
            })
            .transpose()?;
        let mac = fields.remove("m");
        if let Some(body) = fields.remove("c") {
            let (Some(key), Some(mac)) = (key, mac) else {
                return Err(format!("entry {cursor}: a checkpoint without its MAC"));
            };
            let checkpoint = Checkpoint::parse(&text(body, "the checkpoint")?, key, mac)?;
            return Ok(Raw::Checkpoint { cursor, checkpoint });
        }
        let seal = match (fields.remove("w"), fields.remove("q"), key, mac) {
            (Some(writer), Some(sequence), Some(key), Some(mac)) => Some(EntrySeal {
                writer: Writer(
                    writer
                        .try_into()
                        .map_err(|_| format!("entry {cursor}: a writer of another length"))?,
                ),
                sequence: text(sequence, "the sequence")?
                    .parse()
                    .map_err(|_| format!("entry {cursor}: sequence"))?,
                key,
                mac,
            }),
            _ => None,
        };
        if let Some(event) = fields.remove("s") {
            let event = super::service_event::decode(&event).map_err(|error| format!("entry {cursor}: {error}"))?;
            return Ok(Raw::Service {
                cursor,
                event: Box::new(event),
                seal,
            });
        }
        let (Some(grant), Some(event)) = (fields.remove("g"), fields.remove("n")) else {
            return Err(format!(
                "entry {cursor}: neither a grant's event, a service event nor a checkpoint"
            ));
        };
        Ok(Raw::Reference {
            cursor: cursor.clone(),
            grant: id_from_bytes(&grant).map_err(|error| error.to_string())?,
            event: text(event, "the event position")?
                .parse()
                .map_err(|_| format!("entry {cursor}: event position"))?,
            seal,
        })
    }

    /// Resolves references to the events they name, reading each grant once, and checks each
    /// entry's seal. A reference whose grant is gone is skipped; one that cannot be vouched for
    /// reads as a `tampered` entry.
    async fn resolve(&self, entries: Vec<Raw>) -> Result<Vec<AuditEntry>, StoreError> {
        let ids = Raw::grants_named(&entries);
        let mut records = HashMap::new();
        for (id, record) in ids
            .iter()
            .copied()
            .zip(self.read_each(&ids, super::record::Policy::Skip).await?)
        {
            match record {
                None => {}
                Some(Ok(record)) => {
                    records.insert(id, Ok(record));
                }
                Some(Err(StoreError::Tampered { what, .. })) => {
                    records.insert(id, Err(format!("the grant's record fails its seal: {what}")));
                }
                Some(Err(error)) => return Err(error),
            }
        }
        let kept_since = OffsetDateTime::now_utc() - self.retention + time::Duration::days(1);
        let tampered = |cursor: AuditCursor, grant_id: Option<GrantId>, reason: String| AuditEntry {
            cursor,
            logged: Logged::Tampered { grant_id, reason },
            seal: None,
        };
        Ok(entries
            .into_iter()
            .filter_map(|entry| match entry {
                Raw::Service { cursor, event, seal } => {
                    let json = serde_json::to_string(&*event).unwrap_or_default();
                    Some(match &seal {
                        Some(seal) if ledger::service_verifies(&self.keys, seal, &json) => AuditEntry {
                            seal: Some(ledger::exported::entry(seal, None)),
                            cursor,
                            logged: Logged::Service(*event),
                        },
                        _ => tampered(cursor, None, "a service event whose MAC does not match it".to_owned()),
                    })
                }
                Raw::Malformed { cursor, why } => Some(tampered(cursor, None, format!("not an entry any broker writes: {why}"))),
                Raw::Checkpoint { cursor, checkpoint } => Some(if checkpoint.verifies(&self.keys) {
                    AuditEntry {
                        seal: Some(ledger::exported::checkpoint(&checkpoint)),
                        cursor,
                        logged: Logged::Checkpoint {
                            number: checkpoint.number,
                            count: checkpoint.count,
                            last: checkpoint.last,
                        },
                    }
                } else {
                    tampered(cursor, None, format!("checkpoint {} whose MAC does not match it", checkpoint.number))
                }),
                Raw::Reference {
                    cursor,
                    grant,
                    event,
                    seal,
                } => {
                    let record = match records.get(&grant) {
                        Some(Ok(record)) => record,
                        Some(Err(reason)) => return Some(tampered(cursor, Some(grant), reason.clone())),
                        // Records outlive the entries that name them by their retention: one
                        // gone earlier was deleted. (A day's slack for the hourly trim and the
                        // seconds expiries are rounded to.)
                        None if cursor.time() > kept_since => {
                            return Some(tampered(
                                cursor,
                                Some(grant),
                                "the grant's record is missing, though retention keeps it: deleted".to_owned(),
                            ));
                        }
                        None => return None,
                    };
                    let Some(found) = record.events.get(event) else {
                        return Some(tampered(
                            cursor,
                            Some(grant),
                            format!("event {event} is not in the grant's record: the record was rolled back, or the entry forged"),
                        ));
                    };
                    let position = event as u64;
                    let seal = match &seal {
                        Some(seal) if self.vouches_for(seal, &record.grant, position, found) => {
                            ledger::exported::entry(seal, Some(position))
                        }
                        _ => {
                            return Some(tampered(
                                cursor,
                                Some(grant),
                                format!("the entry's MAC does not match event {event} of the grant's record"),
                            ));
                        }
                    };
                    let grant = &record.grant;
                    Some(AuditEntry {
                        cursor,
                        logged: Logged::Grant {
                            grant_id: grant.id,
                            target: grant.target.clone(),
                            account_id: grant.account_id.clone(),
                            grant_caller: grant.caller.to_string(),
                            event: found.clone(),
                        },
                        seal: Some(seal),
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
