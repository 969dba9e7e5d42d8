//! The search indexes: one Redis stream per requester, grantee, caller, target and account, one
//! of every grant, and one of the grants created pending or approved (the live index), each
//! entry holding a grant id (16 bytes) under the id `<creation ms>-<n>`.
//!
//! Streams rather than sorted sets: an entry costs about 20-30 bytes packed in the stream's
//! listpack nodes, against about 110 for a large sorted set's skiplist node, dictionary entry and
//! member. Entries are appended in the order grants are recorded. An entry's id takes its grant's
//! creation millisecond when that keeps the stream ordered (it does unless another replica
//! recorded a newer grant first), and the stream's next id otherwise, so an entry's id is never
//! earlier than its grant's creation and is later only by the moment recording took
//! ([`crate::ports::INDEX_SKEW`] bounds what searches allow for). Stream ids are the page
//! positions: new grants land after every position already handed out, so positions stay correct
//! while grants are added.
//!
//! Written beside the grant's own step (other slots), once it is recorded. Repair: an entry whose
//! grant is missing (it expired, or its creation failed after the caller's entry was written) is
//! skipped by readers and deleted, and so is a live entry whose grant has ended; a cleaning walk
//! ([`RedisGrantStore::clean_live_index`]) goes through the live index too. Retention: each append trims
//! entries older than any record can still be, or for the live index older than any grant can
//! stay pending or approved (`MINID`), and a stream expires with its newest entry.

use redis::{ScriptInvocation, Value};
use time::OffsetDateTime;

use super::{RedisGrantStore, digest_of, id_bytes, id_from_bytes, reply, unavailable};
use crate::{
    domain::{Grant, GrantId, audit::AuditCursor},
    ports::{GrantIndex, IndexPage, StoreError},
};

/// Appends grants to indexes, all in one slot. KEYS: the indexes; ARGV: how many entries, then
/// for each the position of its index in KEYS, the grant id (bytes), its creation ms, its
/// expiry (unix s) and the trim threshold (ms) ([`RedisGrantStore::index_values`]).
/// [`super::RESERVE`] repeats the append for the caller's index. An index's expiry only moves
/// later, checked once per index per call; it is rounded up to the hour
/// ([`RedisGrantStore::index_values`]), so it moves once an hour and a check is one
/// `EXPIRETIME`. Entries whose creation is not after the last one this call wrote to the same
/// index go straight to the stream's next id (a refused `XADD` counts as a command too).
pub(super) const INDEX: &str = r"
local expiry = {}
local newest = {}
local i = 2
for e = 1, tonumber(ARGV[1]) do
  local k = tonumber(ARGV[i])
  local created = tonumber(ARGV[i + 2])
  local added
  if not newest[k] or created > newest[k] then
    added = redis.pcall('XADD', KEYS[k], 'MINID', ARGV[i + 4], ARGV[i + 2] .. '-*', 'g', ARGV[i + 1])
  end
  if not added or (type(added) == 'table' and added.err) then
    added = redis.call('XADD', KEYS[k], 'MINID', ARGV[i + 4], '*', 'g', ARGV[i + 1])
  end
  newest[k] = tonumber(string.match(added, '^(%d+)'))
  local at = tonumber(ARGV[i + 3])
  if not expiry[k] or expiry[k] < at then expiry[k] = at end
  i = i + 5
end
for k, at in pairs(expiry) do
  if redis.call('EXPIRETIME', KEYS[k]) < at then redis.call('EXPIREAT', KEYS[k], at) end
end
return 1
";

/// The most entries one batched index write carries.
pub(super) const BATCH_ENTRIES: usize = 512;

/// Where a batch's appends stand: (the grant's place in the batch, the append's among its own).
type Members = Vec<(usize, usize)>;

/// One index entry to append.
pub(super) struct Append {
    key: String,
    grant: [u8; 16],
    created_ms: i64,
    expiry: i64,
    horizon_ms: i64,
}

/// A grant's index appends waiting for the next batched write ([`super::group_commit`]), each
/// answered with why its write failed, if it did (per index), or why its batch did.
pub(super) type IndexQueue = super::group_commit::GroupCommit<Vec<Append>, Result<Vec<Option<String>>, String>>;

fn millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl RedisGrantStore {
    /// The stream an index is kept in. Free-text values (requester, grantee) are keyed by a
    /// digest; caller, target and account ids are configured.
    pub(super) fn index_of(&self, index: &GrantIndex) -> String {
        match index {
            GrantIndex::Caller(caller) => format!("{}:caller:{{{caller}}}:grants", self.prefix),
            GrantIndex::Grantee(grantee) => format!("{}:grantee:{{{}}}:grants", self.prefix, digest_of(grantee)),
            GrantIndex::Requester(requester) => {
                format!("{}:requester:{{{}}}:grants", self.prefix, digest_of(requester))
            }
            GrantIndex::Target(target) => format!("{}:target:{{{target}}}:grants", self.prefix),
            GrantIndex::Account(account) => format!("{}:account:{{{account}}}:grants", self.prefix),
            GrantIndex::Live => format!("{}:live", self.prefix),
            GrantIndex::All => format!("{}:grants", self.prefix),
        }
    }

    /// The creation ms, expiry and trim threshold of a grant's index entries: entries older than
    /// any record can still be are trimmed (records live until their grant's end plus retention,
    /// and a grant lasts at most MAX_DURATION_SECS).
    pub(super) fn index_args(
        &self,
        invocation: &mut ScriptInvocation<'_>,
        index: &GrantIndex,
        created: OffsetDateTime,
        last_moment: OffsetDateTime,
    ) {
        let (created_ms, expiry, horizon_ms) = self.index_values(index, created, last_moment);
        invocation.arg(created_ms).arg(expiry).arg(horizon_ms);
    }

    /// [`Self::index_args`] as values: creation ms, expiry (unix s), trim threshold (ms).
    pub(super) fn index_values(
        &self,
        index: &GrantIndex,
        created: OffsetDateTime,
        last_moment: OffsetDateTime,
    ) -> (i64, i64, i64) {
        // Nothing created earlier can still be pending or approved (scheduled at most 30 days
        // ahead, pending at most a week, lasting at most 12 hours), and no record of it can be
        // kept beyond that plus the retention.
        let longest_life = crate::domain::request::MAX_SCHEDULE_AHEAD
            + time::Duration::seconds(i64::try_from(super::MAX_PENDING_SECS).unwrap_or(i64::MAX))
            + time::Duration::seconds(i64::try_from(crate::domain::limits::MAX_DURATION_SECS).unwrap_or(i64::MAX));
        let horizon = match index {
            GrantIndex::Live => created - longest_life,
            _ => created - self.retention - longest_life,
        };
        // Rounded up to the hour: a stream lives on with its newest entry, at most an hour longer
        // than that needs, and its expiry moves once an hour rather than with every grant.
        let expiry = self.expiry(last_moment);
        let hour = 3_600;
        (
            millis(created),
            expiry.saturating_add(hour - 1) / hour * hour,
            millis(horizon),
        )
    }

    /// The indexes a grant is appended to beside its creation (the caller's is written when its
    /// request is reserved).
    pub(super) fn indexes_of(grant: &Grant) -> Vec<GrantIndex> {
        let mut indexes = vec![
            GrantIndex::Grantee(grant.grantee.clone()),
            GrantIndex::Requester(grant.requester.clone()),
            GrantIndex::Target(grant.target.clone()),
            GrantIndex::Account(grant.account_id.clone()),
            GrantIndex::All,
        ];
        if grant.deadline().is_some() {
            indexes.push(GrantIndex::Live);
        }
        indexes
    }

    /// Appends `grant` to `indexes` by group commit (with other grants' appends queued
    /// meanwhile, one script per slot, the slots at once), and returns those whose write
    /// failed, with the error.
    pub(super) async fn index_grant(&self, grant: &Grant, indexes: &[GrantIndex]) -> Vec<(GrantIndex, String)> {
        let appends: Vec<Append> = indexes
            .iter()
            .map(|index| {
                let (created_ms, expiry, horizon_ms) = self.index_values(index, grant.created_at, grant.last_moment());
                Append {
                    key: self.index_of(index),
                    grant: id_bytes(grant.id),
                    created_ms,
                    expiry,
                    horizon_ms,
                }
            })
            .collect();
        let outcome = self
            .index_queue
            .submit(appends, Vec::len, |batch| self.write_indexes(batch), Err)
            .await;
        match outcome {
            Ok(failures) => failures
                .into_iter()
                .zip(indexes)
                .filter_map(|(failure, index)| failure.map(|why| (index.clone(), why)))
                .collect(),
            Err(why) => indexes.iter().map(|index| (index.clone(), why.clone())).collect(),
        }
    }

    /// Writes a batch of grants' appends: one script per slot (on one server, one in all), the
    /// slots at once. Answers each grant with each of its appends' failure, if any.
    async fn write_indexes(&self, batch: Vec<Vec<Append>>) -> Vec<Result<Vec<Option<String>>, String>> {
        // (item, append) positions by group, groups in the order their slot first appears, each
        // in creation order, so that entries land at their grants' creation ms.
        let mut groups: Vec<(Option<redis::cluster_routing::Slot>, Members)> = Vec::new();
        for (item, appends) in batch.iter().enumerate() {
            for (at, append) in appends.iter().enumerate() {
                let slot = self
                    .endpoint
                    .is_cluster()
                    .then(|| redis::cluster_routing::Slot::for_key(&append.key));
                match groups.iter_mut().find(|(known, _)| *known == slot) {
                    Some((_, members)) => members.push((item, at)),
                    None => groups.push((slot, vec![(item, at)])),
                }
            }
        }
        for (_, members) in &mut groups {
            members.sort_by_key(|&(item, at)| batch[item][at].created_ms);
        }
        let sent = groups.iter().map(|(_, members)| {
            let mut keys: Vec<&str> = Vec::new();
            let mut invocation = self.index.prepare_invoke();
            invocation.arg(members.len());
            for &(item, at) in members {
                let append = &batch[item][at];
                let position = match keys.iter().position(|key| *key == append.key) {
                    Some(position) => position,
                    None => {
                        keys.push(&append.key);
                        keys.len() - 1
                    }
                };
                invocation
                    .arg(position + 1)
                    .arg(&append.grant[..])
                    .arg(append.created_ms)
                    .arg(append.expiry)
                    .arg(append.horizon_ms);
            }
            for key in keys {
                invocation.key(key);
            }
            let mut connection = self.connection.clone();
            async move { invocation.invoke_async::<i64>(&mut connection).await }
        });
        let results = futures_util::future::join_all(sent).await;
        let mut outcomes: Vec<Vec<Option<String>>> = batch.iter().map(|appends| vec![None; appends.len()]).collect();
        for ((_, members), result) in groups.iter().zip(results) {
            if let Err(error) = result {
                let why = error.to_string();
                for &(item, at) in members {
                    if let Some(failure) = outcomes.get_mut(item).and_then(|item| item.get_mut(at)) {
                        *failure = Some(why.clone());
                    }
                }
            }
        }
        outcomes.into_iter().map(Ok).collect()
    }

    /// A page of an index, newest first: entries before `before`, from `since` on.
    pub(super) async fn index_page(
        &self,
        index: &GrantIndex,
        before: Option<&AuditCursor>,
        since: Option<OffsetDateTime>,
        limit: usize,
    ) -> Result<IndexPage, StoreError> {
        let key = self.index_of(index);
        let Some(end) = super::stream_end_before(before) else {
            return Ok(IndexPage::default());
        };
        let start = since.map_or_else(|| "-".to_owned(), |since| millis(since).max(0).to_string());
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg(end)
            .arg(start)
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let mut entries = Self::index_entries(reply)?;
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|(position, _)| position.clone())
        } else {
            None
        };
        let ids: Vec<GrantId> = entries.iter().map(|(_, id)| *id).collect();
        let records = self.read_records(&ids, super::record::Policy::Rebuild).await?;
        let mut found = Vec::with_capacity(entries.len());
        let mut gone = Vec::new();
        for ((position, _), record) in entries.into_iter().zip(records) {
            match record {
                Some(decoded) if *index == GrantIndex::Live && !Self::may_be_live(&decoded.grant) => {
                    gone.push(position);
                }
                Some(decoded) => found.push((position, decoded.grant)),
                // A recent caller entry may be of a grant still being created (the caller's
                // entry is written with the request id, before the rules decide): skipped only.
                None if Self::may_be_in_creation(&position) => {}
                None => gone.push(position),
            }
        }
        // The repair rule: an entry whose grant is missing is skipped, and removed (and so is a
        // live entry whose grant no longer is).
        self.remove_entries(&key, &gone).await;
        Ok(IndexPage { grants: found, next })
    }

    /// Whether a grant may still be pending or approved: it is by its record, and its window (or
    /// wait) did not end more than a minute ago by this replica's clock.
    fn may_be_live(grant: &Grant) -> bool {
        let ended = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        grant.deadline().is_some_and(|deadline| deadline >= ended)
    }

    /// Whether an entry is recent enough that its grant may not be recorded yet.
    fn may_be_in_creation(position: &AuditCursor) -> bool {
        position.time() > time::OffsetDateTime::now_utc() - crate::ports::INDEX_SKEW
    }

    /// Removes index entries (logged, never failing the read that found them).
    async fn remove_entries(&self, key: &str, positions: &[AuditCursor]) {
        if positions.is_empty() {
            return;
        }
        let removed: Result<i64, _> = redis::cmd("XDEL")
            .arg(key)
            .arg(positions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .query_async(&mut self.connection.clone())
            .await;
        if let Err(error) = removed {
            tracing::warn!(index = %key, %error, "could not remove index entries whose grant is gone");
        }
    }

    /// Walks on through the live index from where the last walk stopped (any replica's), up to
    /// `limit` entries, removing those whose grant is no longer pending or approved; returns how
    /// many it removed. The walk's position is kept in `gb:live:walked`; replicas walking at once
    /// repeat each other's work, harmlessly.
    pub async fn clean_live_index(&self, limit: usize) -> Result<usize, StoreError> {
        let key = self.index_of(&GrantIndex::Live);
        let walked = format!("{key}:walked");
        let after: Option<String> = redis::cmd("GET")
            .arg(&walked)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let start = after.map_or_else(|| "-".to_owned(), |position| format!("({position}"));
        let reply: Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let entries = Self::index_entries(reply)?;
        let ids: Vec<GrantId> = entries.iter().map(|(_, id)| *id).collect();
        let records = self.read_records(&ids, super::record::Policy::Skip).await?;
        let dead: Vec<AuditCursor> = entries
            .iter()
            .zip(&records)
            .filter(|((position, _), record)| match record {
                Some(decoded) => !Self::may_be_live(&decoded.grant),
                None => !Self::may_be_in_creation(position),
            })
            .map(|((position, _), _)| position.clone())
            .collect();
        self.remove_entries(&key, &dead).await;
        // At the newest entry: start again from the oldest next time.
        let next = match entries.last() {
            Some((position, _)) if entries.len() == limit => {
                let mut set = redis::cmd("SET");
                set.arg(&walked).arg(position.to_string());
                set
            }
            _ => {
                let mut delete = redis::cmd("DEL");
                delete.arg(&walked);
                delete
            }
        };
        next.query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(dead.len())
    }

    /// Decodes XRANGE's `[[id, ["g", <grant id>]], ...]`.
    fn index_entries(reply: Value) -> Result<Vec<(AuditCursor, GrantId)>, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("grant index: {what}"));
        let Value::Array(entries) = reply else {
            return Err(corrupt("not an array".to_owned()));
        };
        entries
            .into_iter()
            .map(|entry| {
                let [id, fields]: [Value; 2] = reply::array_of(entry, 2)
                    .map_err(&corrupt)?
                    .try_into()
                    .map_err(|_| corrupt("entry shape".to_owned()))?;
                let position = AuditCursor::parse(&reply::text(id).map_err(&corrupt)?).map_err(&corrupt)?;
                let [_, grant]: [Value; 2] = reply::array_of(fields, 2)
                    .map_err(&corrupt)?
                    .try_into()
                    .map_err(|_| corrupt("entry fields".to_owned()))?;
                let grant = reply::optional_bytes(grant)
                    .map_err(&corrupt)?
                    .ok_or_else(|| corrupt("entry without a grant".to_owned()))?;
                Ok((position, id_from_bytes(&grant)?))
            })
            .collect()
    }
}
