//! What makes the audit log verifiable: the seal of each entry, the checkpoints, and the
//! checks `grant-broker audit verify` runs over the log in Redis or over an export.
//!
//! Every entry the broker appends carries its writer (a random id per broker process), its
//! sequence number within that writer, the key id and a MAC:
//!
//! ```text
//! reference: MAC(0x04 || writer || sequence || grant id || event position || SHA-256(event JSON))
//! service:   MAC(0x05 || writer || sequence || SHA-256(event JSON))
//! ```
//!
//! over the event's JSON exactly as the audit surfaces and exports show it, so an exported line
//! is checked without Redis. An edited or forged entry fails its MAC; a deleted one leaves a gap
//! in its writer's sequence. Every `checkpoint_interval` one replica appends a checkpoint: the
//! number of entries the log has had and the id of the last (kept together beside the log by the
//! append script, `gb:{audit}:head`), chained to the previous checkpoint by its MAC. Between two
//! checkpoints the log must hold exactly the difference of their counts: a deletion, insertion
//! or copy is found even where it leaves no gap. Appends never wait for one another: the head is
//! updated in the same script as the entry, and checkpoints are written beside the traffic.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::seal::{Domain, IntegrityKeys, TAG_LEN};
use crate::domain::{GrantId, audit::AuditCursor};

/// Who wrote an entry, and where in that writer's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Writer(pub [u8; 16]);

/// How an entry is sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntrySeal {
    pub writer: Writer,
    pub sequence: u64,
    pub key: u8,
    pub mac: Vec<u8>,
}

/// A checkpoint: the log had `count` entries, the last of them `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub number: u64,
    pub count: u64,
    pub last: AuditCursor,
    /// The previous checkpoint's MAC and the cursor of its entry; `None` for the first.
    pub previous: Option<(Vec<u8>, AuditCursor)>,
    pub key: u8,
    pub mac: Vec<u8>,
}

impl Checkpoint {
    /// The text the MAC is over, and the entry's `c` field:
    /// `number,count,last,previous MAC (hex),previous cursor` (`-` for none).
    pub(crate) fn body(
        number: u64,
        count: u64,
        last: &AuditCursor,
        previous: Option<&(Vec<u8>, AuditCursor)>,
    ) -> String {
        let previous = previous.map_or_else(|| "-,-".to_owned(), |(mac, at)| format!("{},{at}", hex::encode(mac)));
        format!("{number},{count},{last},{previous}")
    }

    pub(crate) fn parse(body: &str, key: u8, mac: Vec<u8>) -> Result<Self, String> {
        let invalid = || {
            format!(
                "checkpoint {} is not `number,count,last,previous MAC,previous cursor`",
                crate::domain::echo(body)
            )
        };
        let mut parts = body.split(',');
        let (Some(number), Some(count), Some(last), Some(previous), Some(previous_at), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        Ok(Self {
            number: number.parse().map_err(|_| invalid())?,
            count: count.parse().map_err(|_| invalid())?,
            last: AuditCursor::parse(last).map_err(|_| invalid())?,
            previous: match (previous, previous_at) {
                ("-", "-") => None,
                (mac, at) => Some((
                    hex::decode(mac).map_err(|_| invalid())?,
                    AuditCursor::parse(at).map_err(|_| invalid())?,
                )),
            },
            key,
            mac,
        })
    }

    fn text(&self) -> String {
        Self::body(self.number, self.count, &self.last, self.previous.as_ref())
    }

    pub(crate) fn verifies(&self, keys: &IntegrityKeys) -> bool {
        keys.verify(self.key, Domain::Checkpoint, &[self.text().as_bytes()], &self.mac)
            .unwrap_or(false)
    }

    /// A new checkpoint, sealed with the sealing key.
    pub(crate) fn seal(
        keys: &IntegrityKeys,
        number: u64,
        count: u64,
        last: AuditCursor,
        previous: Option<(Vec<u8>, AuditCursor)>,
    ) -> Result<Self, String> {
        let key = keys.sealing_id();
        let body = Self::body(number, count, &last, previous.as_ref());
        let mac = keys
            .tag(key, Domain::Checkpoint, &[body.as_bytes()])
            .map_err(|error| error.to_string())?
            .to_vec();
        Ok(Self {
            number,
            count,
            last,
            previous,
            key,
            mac,
        })
    }
}

fn digest(json: &str) -> [u8; 32] {
    Sha256::digest(json.as_bytes()).into()
}

/// The version of what an entry's MAC is over: the JSON rendering of events is part of it, so a
/// release that renders them differently seals with a new version and keeps this one's reader.
const ENTRY_FORMAT: u8 = 1;

/// What a reference's MAC binds: the event (its position in its grant's record and its JSON, as
/// the audit surfaces show it) and what the log shows beside it of the grant.
pub(crate) struct Referenced<'a> {
    pub grant: GrantId,
    pub position: u64,
    pub event_json: &'a str,
    pub target: &'a str,
    pub account_id: &'a str,
    pub grant_caller: &'a str,
}

impl<'a> Referenced<'a> {
    /// Event `position` of `grant`, whose JSON is `event_json`.
    pub(crate) fn of(grant: &'a crate::domain::Grant, position: u64, event_json: &'a str) -> Self {
        Self {
            grant: grant.id,
            position,
            event_json,
            target: &grant.target,
            account_id: &grant.account_id,
            grant_caller: grant.caller.as_str(),
        }
    }
}

/// The MAC of a reference.
pub(crate) fn reference_mac(
    keys: &IntegrityKeys,
    key: u8,
    writer: Writer,
    sequence: u64,
    referenced: &Referenced<'_>,
) -> Result<[u8; TAG_LEN], String> {
    // Ids, account numbers and caller ids never hold a NUL: the join is unambiguous.
    let grant_fields = [referenced.target, referenced.account_id, referenced.grant_caller].join("\0");
    keys.tag(
        key,
        Domain::Reference,
        &[
            &[ENTRY_FORMAT],
            &writer.0,
            &sequence.to_be_bytes(),
            referenced.grant.as_uuid().as_bytes(),
            &referenced.position.to_be_bytes(),
            &digest(referenced.event_json),
            &digest(&grant_fields),
        ],
    )
    .map_err(|error| error.to_string())
}

/// The MAC of a service event whose JSON is `event_json`.
pub(crate) fn service_mac(
    keys: &IntegrityKeys,
    key: u8,
    writer: Writer,
    sequence: u64,
    event_json: &str,
) -> Result<[u8; TAG_LEN], String> {
    keys.tag(
        key,
        Domain::Service,
        &[&[ENTRY_FORMAT], &writer.0, &sequence.to_be_bytes(), &digest(event_json)],
    )
    .map_err(|error| error.to_string())
}

/// Whether `seal` is the seal of a reference.
pub(crate) fn reference_verifies(keys: &IntegrityKeys, seal: &EntrySeal, referenced: &Referenced<'_>) -> bool {
    reference_mac(keys, seal.key, seal.writer, seal.sequence, referenced)
        .is_ok_and(|mac| constant_time_eq(&mac, &seal.mac))
}

/// Whether `seal` is the seal of a service event whose JSON is `event_json`.
pub(crate) fn service_verifies(keys: &IntegrityKeys, seal: &EntrySeal, event_json: &str) -> bool {
    service_mac(keys, seal.key, seal.writer, seal.sequence, event_json)
        .is_ok_and(|mac| constant_time_eq(&mac, &seal.mac))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An entry's seal as an export line carries it (`integrity`), and back: `v1 w=<hex> q=<n>
/// k=<id> m=<hex>`, with `n=<position>` for a reference; a checkpoint: `v1 c=<body> k=<id>
/// m=<hex>`.
pub(crate) mod exported {
    use super::*;

    pub(crate) fn entry(seal: &EntrySeal, position: Option<u64>) -> String {
        let position = position.map(|n| format!(" n={n}")).unwrap_or_default();
        format!(
            "v1 w={} q={}{position} k={} m={}",
            hex::encode(seal.writer.0),
            seal.sequence,
            seal.key,
            hex::encode(&seal.mac)
        )
    }

    pub(crate) fn checkpoint(checkpoint: &Checkpoint) -> String {
        format!(
            "v1 c={} k={} m={}",
            checkpoint.text(),
            checkpoint.key,
            hex::encode(&checkpoint.mac)
        )
    }

    /// What an export line's `integrity` says.
    pub(crate) enum Parsed {
        Entry { seal: EntrySeal, position: Option<u64> },
        Checkpoint(Checkpoint),
    }

    pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
        let invalid = |why: &str| format!("integrity {}: {why}", crate::domain::echo(text));
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        let mut words = text.split(' ');
        if words.next() != Some("v1") {
            return Err(invalid("not a v1 seal"));
        }
        for word in words {
            let (name, value) = word.split_once('=').ok_or_else(|| invalid("a field without `=`"))?;
            if fields.insert(name, value).is_some() {
                return Err(invalid("a field given twice"));
            }
        }
        let key: u8 = fields
            .get("k")
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| invalid("no key id"))?;
        let mac = fields
            .get("m")
            .and_then(|m| hex::decode(m).ok())
            .ok_or_else(|| invalid("no MAC"))?;
        if let Some(body) = fields.get("c") {
            return Checkpoint::parse(body, key, mac).map(Parsed::Checkpoint);
        }
        let writer = fields
            .get("w")
            .and_then(|w| hex::decode(w).ok())
            .and_then(|w| <[u8; 16]>::try_from(w).ok())
            .ok_or_else(|| invalid("no writer"))?;
        let sequence = fields
            .get("q")
            .and_then(|q| q.parse().ok())
            .ok_or_else(|| invalid("no sequence number"))?;
        let position = fields
            .get("n")
            .map(|n| n.parse().map_err(|_| invalid("a position that is not a number")))
            .transpose()?;
        Ok(Parsed::Entry {
            seal: EntrySeal {
                writer: Writer(writer),
                sequence,
                key,
                mac,
            },
            position,
        })
    }
}

/// One thing `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where: an entry's cursor, a grant, a writer.
    pub at: String,
    pub what: String,
}

/// What a verification walk found: how much it checked, and every problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub entries: u64,
    pub checkpoints: u64,
    pub records: u64,
    /// The first and last cursor walked.
    pub first: Option<AuditCursor>,
    pub last: Option<AuditCursor>,
    /// Entries before the first checkpoint walked: covered by their MACs and their writers'
    /// sequences, not by a count.
    pub before_first_checkpoint: u64,
    pub problems: Vec<Finding>,
    /// Worth knowing, not tampering: entries logged twice by a retried write.
    pub notes: Vec<Finding>,
}

/// The walk over a log (or an export), entry by entry, in order: the checkpoints' counts and
/// chain, and each writer's sequence. What each entry's MAC covers is checked by the caller,
/// which knows the event; this keeps what needs order.
#[derive(Default)]
pub(crate) struct Walk {
    pub verification: Verification,
    /// Whether the walk starts at the log's first entry (a whole log, not `--since` or an
    /// archive), and so must count the entries before the first checkpoint too, except where
    /// retention may have trimmed them (entries before this horizon).
    pub from_the_start: Option<AuditCursor>,
    /// The last checkpoint walked that verified.
    checkpoint: Option<Met>,
    /// Entries walked after the last checkpoint's `last` cursor.
    since_checkpoint: Vec<AuditCursor>,
    /// Each writer's sequence numbers seen.
    writers: BTreeMap<Writer, BTreeSet<u64>>,
}

/// A checkpoint a walk met, and where.
pub(crate) struct Met {
    pub number: u64,
    pub count: u64,
    pub mac: Vec<u8>,
    /// Its own entry's cursor.
    pub at: AuditCursor,
}

impl Walk {
    pub(crate) fn problem(&mut self, at: impl ToString, what: impl Into<String>) {
        self.verification.problems.push(Finding {
            at: at.to_string(),
            what: what.into(),
        });
    }

    /// An entry (not a checkpoint) at `cursor`, sealed by `seal` (`None`: without a seal, which
    /// the caller reports).
    pub(crate) fn entry(&mut self, cursor: &AuditCursor, seal: Option<&EntrySeal>) {
        self.count(cursor);
        if let Some(seal) = seal {
            self.sealed_by(cursor, seal);
        }
    }

    /// The entry at `cursor`, already counted, was sealed by `seal`, which verified: its place
    /// in its writer's sequence. Twice the same place is a copy (or, rarely, a write retried
    /// after its reply was lost): the auditor must look.
    pub(crate) fn sealed_by(&mut self, cursor: &AuditCursor, seal: &EntrySeal) {
        if !self.writers.entry(seal.writer).or_default().insert(seal.sequence) {
            self.problem(
                cursor,
                format!(
                    "entry {} of writer {} is logged more than once: a copy, or a write retried after its reply was lost",
                    seal.sequence,
                    hex::encode(seal.writer.0)
                ),
            );
        }
    }

    fn count(&mut self, cursor: &AuditCursor) {
        let verification = &mut self.verification;
        verification.entries += 1;
        verification.first.get_or_insert_with(|| cursor.clone());
        verification.last = Some(cursor.clone());
        if self.checkpoint.is_none() {
            verification.before_first_checkpoint += 1;
        }
        self.since_checkpoint.push(cursor.clone());
    }

    /// A checkpoint entry at `cursor` whose MAC verified (`verified`).
    pub(crate) fn checkpoint(&mut self, cursor: &AuditCursor, checkpoint: &Checkpoint, verified: bool) {
        if !verified {
            self.count(cursor);
            self.problem(
                cursor,
                format!("checkpoint {}: its MAC does not match", checkpoint.number),
            );
            return;
        }
        self.verification.checkpoints += 1;
        match self.checkpoint.take() {
            None => {
                // The first checkpoint walked. Where the walk holds entries from before its
                // predecessor, or a whole log's retention still keeps it, the predecessor must
                // be there too (only a prefix is ever trimmed, and only past retention).
                if let Some((_, previous_at)) = &checkpoint.previous
                    && (self
                        .verification
                        .first
                        .as_ref()
                        .is_some_and(|first| first < previous_at)
                        || self
                            .from_the_start
                            .as_ref()
                            .is_some_and(|horizon| previous_at >= horizon))
                {
                    self.problem(
                        cursor,
                        format!(
                            "checkpoint {} follows checkpoint {} at {previous_at}, which is missing though entries before it are not: deleted",
                            checkpoint.number,
                            checkpoint.number.saturating_sub(1)
                        ),
                    );
                }
                let (within, after): (Vec<_>, Vec<_>) = self
                    .since_checkpoint
                    .drain(..)
                    .partition(|entry| *entry <= checkpoint.last);
                // The log's first checkpoint counts from its first entry.
                if checkpoint.previous.is_none() {
                    let found = within.len() as u64;
                    let trimmed = self
                        .from_the_start
                        .as_ref()
                        .is_none_or(|horizon| within.first().is_none_or(|first| first < horizon));
                    if found > checkpoint.count || (found < checkpoint.count && !trimmed) {
                        self.problem(
                            cursor,
                            format!(
                                "checkpoint 1 counts {} entries from the log's start, the log holds {found}: {}",
                                checkpoint.count,
                                if found < checkpoint.count {
                                    "entries were deleted"
                                } else {
                                    "entries were added"
                                }
                            ),
                        );
                    } else if found < checkpoint.count {
                        self.verification.notes.push(Finding {
                            at: cursor.to_string(),
                            what: format!(
                                "checkpoint 1 counts {} entries from the log's start; {found} are here (the walk starts later, or retention trimmed the rest)",
                                checkpoint.count
                            ),
                        });
                    }
                }
                self.since_checkpoint = after;
            }
            Some(Met {
                count,
                mac: previous_mac,
                number,
                ..
            }) => {
                if checkpoint.number != number + 1 {
                    self.problem(
                        cursor,
                        format!(
                            "checkpoint {} follows checkpoint {number}: checkpoints {} to {} are missing",
                            checkpoint.number,
                            number + 1,
                            checkpoint.number.saturating_sub(1)
                        ),
                    );
                }
                if checkpoint.previous.as_ref().map(|(mac, _)| mac) != Some(&previous_mac) {
                    self.problem(
                        cursor,
                        format!(
                            "checkpoint {} does not continue the chain of the one before it",
                            checkpoint.number
                        ),
                    );
                }
                let (within, after): (Vec<_>, Vec<_>) = self
                    .since_checkpoint
                    .drain(..)
                    .partition(|entry| *entry <= checkpoint.last);
                let expected = checkpoint.count.saturating_sub(count);
                let found = within.len() as u64;
                if found != expected {
                    self.problem(
                        cursor,
                        format!(
                            "checkpoint {} counts {expected} entries since checkpoint {number}, the log holds {found}: {}",
                            checkpoint.number,
                            if found < expected { "entries were deleted" } else { "entries were added" }
                        ),
                    );
                }
                self.since_checkpoint = after;
            }
        }
        self.checkpoint = Some(Met {
            number: checkpoint.number,
            count: checkpoint.count,
            mac: checkpoint.mac.clone(),
            at: cursor.clone(),
        });
        // The checkpoint entry itself is counted by the next checkpoint.
        self.verification.entries += 1;
        self.verification.last = Some(cursor.clone());
        self.since_checkpoint.push(cursor.clone());
    }

    /// The last checkpoint walked that verified.
    pub(crate) fn last_checkpoint(&self) -> Option<&Met> {
        self.checkpoint.as_ref()
    }

    /// After the last checkpoint walked: how many entries a head that counted `total` up to
    /// `last` says were appended since it, and how many of those the walk met
    /// (`None`: every entry walked, for a log that did not grow while it was walked).
    pub(crate) fn since_last_checkpoint(&self, total: u64, last: Option<&AuditCursor>) -> Option<(u64, u64)> {
        let count = self.checkpoint.as_ref()?.count;
        let walked = self
            .since_checkpoint
            .iter()
            .filter(|entry| last.is_none_or(|last| *entry <= last))
            .count();
        Some((total.saturating_sub(count), walked as u64))
    }

    /// The walk is over: each writer's sequence must have no gap.
    pub(crate) fn finish(mut self) -> Verification {
        let writers = std::mem::take(&mut self.writers);
        for (writer, sequences) in writers {
            let (Some(&low), Some(&high)) = (sequences.first(), sequences.last()) else {
                continue;
            };
            let missing = high
                .saturating_sub(low)
                .saturating_add(1)
                .saturating_sub(sequences.len() as u64);
            // A writer that started after the walk's first entry logged all of it here: from 0.
            let started = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(
                    uuid::Uuid::from_bytes(writer.0)
                        .get_timestamp()
                        .map_or(0, |at| at.to_unix().0),
                ) * 1_000_000_000,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let walk_start = self.verification.first.as_ref().map(AuditCursor::time);
            if low > 0 && walk_start.is_some_and(|start| started > start + time::Duration::minutes(1)) {
                self.problem(
                    format!("writer {}", hex::encode(writer.0)),
                    format!(
                        "started after the first entry walked, but its entries 0 to {} are missing: deleted",
                        low - 1
                    ),
                );
            }
            if missing > 0 {
                let gaps: Vec<String> = sequences
                    .iter()
                    .zip(sequences.iter().skip(1))
                    .filter(|(a, b)| **b > **a + 1)
                    .take(5)
                    .map(|(a, b)| {
                        if *b == a + 2 {
                            format!("{}", a + 1)
                        } else {
                            format!("{}-{}", a + 1, b - 1)
                        }
                    })
                    .collect();
                self.problem(
                    format!("writer {}", hex::encode(writer.0)),
                    format!(
                        "{missing} of its entries between {low} and {high} are missing ({}): deleted, or a broker stopped before it could log them",
                        gaps.join(", ")
                    ),
                );
            }
        }
        self.verification
    }
}

/// Checks an export of the audit log (`grant-broker audit export`: one `AuditEvent` per line,
/// as JSON) without Redis: each line's seal against its `grant_id` and `event_json`, the
/// checkpoints' counts and chain, each writer's sequence. Lines before `since` are skipped.
/// What it cannot see: a line cut off the end after the last checkpoint (compare with the log).
pub fn verify_export(
    keys: &IntegrityKeys,
    lines: impl std::io::BufRead,
    since: Option<time::OffsetDateTime>,
) -> Result<Verification, String> {
    let mut walk = Walk::default();
    let mut previous: Option<AuditCursor> = None;
    for (number, line) in lines.lines().enumerate() {
        let line = line.map_err(|error| format!("line {}: {error}", number + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: &str| format!("line {}: {what}", number + 1);
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|error| at(&error.to_string()))?;
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).unwrap_or_default();
        let cursor = AuditCursor::parse(field("cursor")).map_err(|error| at(&error))?;
        if since.is_some_and(|since| cursor.time() < since) {
            continue;
        }
        if previous.as_ref().is_some_and(|previous| cursor <= *previous) {
            walk.problem(
                &cursor,
                format!(
                    "{}: out of order (after {})",
                    at("cursor"),
                    previous.as_ref().map(ToString::to_string).unwrap_or_default()
                ),
            );
        }
        previous = Some(cursor.clone());
        let (event, integrity, event_json) = (field("event"), field("integrity"), field("event_json"));
        if event == crate::domain::audit::TAMPERED {
            walk.entry(&cursor, None);
            walk.problem(
                &cursor,
                format!("the broker marked this entry tampered when it was exported: {event_json}"),
            );
            continue;
        }
        if integrity.is_empty() {
            walk.entry(&cursor, None);
            walk.problem(&cursor, at("a line without its seal"));
            continue;
        }
        match exported::parse(integrity) {
            Err(why) => {
                walk.entry(&cursor, None);
                walk.problem(&cursor, at(&why));
            }
            Ok(exported::Parsed::Checkpoint(checkpoint)) => {
                let verified = checkpoint.verifies(keys);
                walk.checkpoint(&cursor, &checkpoint, verified);
            }
            Ok(exported::Parsed::Entry { seal, position }) => {
                let verified = match position {
                    Some(position) => GrantId::parse(field("grant_id")).is_ok_and(|grant| {
                        reference_verifies(
                            keys,
                            &seal,
                            &Referenced {
                                grant,
                                position,
                                event_json,
                                target: field("target"),
                                account_id: field("account_id"),
                                grant_caller: field("grant_caller"),
                            },
                        )
                    }),
                    None => service_verifies(keys, &seal, event_json) && field("grant_id").is_empty(),
                };
                // What the line says beside the event must be what the event says.
                let said: serde_json::Value = serde_json::from_str(event_json).unwrap_or_default();
                let agrees = said.get("event").and_then(serde_json::Value::as_str) == Some(event)
                    && said.get("caller").and_then(serde_json::Value::as_str) == Some(field("caller"));
                // Only a seal that verified vouches for its writer and sequence.
                walk.entry(&cursor, verified.then_some(&seal));
                if !verified {
                    walk.problem(
                        &cursor,
                        at("its seal does not match its grant_id, target, account_id, grant_caller and event_json: edited"),
                    );
                } else if !agrees {
                    walk.problem(
                        &cursor,
                        at("its event or caller is not what its event_json says: edited"),
                    );
                }
            }
        }
    }
    Ok(walk.finish())
}
