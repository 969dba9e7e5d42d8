//! The grant store on Redis: the system of record for grants and their audit trail.
//!
//! Keys (`gb` is the configurable prefix; `{…}` is a Redis Cluster hash tag, so everything one
//! atomic step touches lives in one slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `gb:grant:{<id>}` | hash | `v` (record version), `state`, `doc` (the rest of the grant), `attempts` (STS calls made) |
//! | `gb:grant:{<id>}:issuances` | list | issuances as JSON, oldest first (never secrets) |
//! | `gb:grant:{<id>}:events` | list | audit events as JSON, oldest first |
//! | `gb:caller:{<caller>}:grants` | sorted set | the caller's grant ids, all score 0: UUIDv7 ids sort by time lexically |
//! | `gb:caller:{<caller>}:request:<request id>` | string | `<grant id> <request fingerprint>` |
//!
//! [`record`] owns the encoding of the grant and issuance entries and reads every version ever
//! written. Replies are decoded explicitly, value by value ([`reply`]): never by letting the client
//! library guess a nested shape, which once made every grant with exactly two issuances unreadable.
//!
//! Every state change and append is one Lua script (one round trip, atomic, compare-and-set on
//! `state`). Retention: grant keys and request ids expire `retention` after the grant ends; the
//! caller index drops ids older than `retention` whenever it grows and expires with its newest
//! entry. No KEYS or SCAN anywhere. Needs Redis 7.0 or later.
//!
//! With `min_replicas`, the conditional appends (`issuing` and the issuance) are pipelined with
//! `WAIT` on a connection of their own, so a failover cannot lose what the credentials depend on.

mod audit;
mod enforcement;
mod record;
pub(crate) mod reply;

use std::time::Duration;

use redis::{
    AsyncCommands, Client, ClientTlsConfig, Script, TlsCertificates, Value, aio::ConnectionManager,
    aio::ConnectionManagerConfig,
};
use time::OffsetDateTime;

use self::record::StoredGrant;
use super::webhooks::Outbox;
use crate::{
    domain::{
        CallerId, Grant, GrantEvent, GrantId, GrantState, Issuance, RECENT_ISSUANCES, RequestId, Secret,
        audit::{AuditCursor, AuditEntry},
        extension::ExtensionState,
    },
    ports::{Appended, Change, ChangeFeed, GrantIndex, GrantStore, Queue, Reservation, StoreError},
};

/// Connection and retention settings. Debug hides the URL's password.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// How long grants, their events and request ids are kept after the grant ends.
    pub retention: Duration,
    /// Replicas that must acknowledge an issuance record before credentials are returned
    /// (Redis `WAIT`); 0 trusts the primary alone.
    pub min_replicas: u32,
    pub replica_timeout: Duration,
    /// For `rediss://` URLs.
    pub tls: Option<RedisTls>,
}

/// How to verify the Redis server, and how to prove the broker to it (mutual TLS).
#[derive(Clone, Debug)]
pub struct RedisTls {
    /// PEM certificates to trust; `None` trusts the system's store.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and private key.
    pub client: Option<(Vec<u8>, Secret)>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retention", &self.retention)
            .field("min_replicas", &self.min_replicas)
            .field("replica_timeout", &self.replica_timeout)
            .field(
                "tls",
                &self
                    .tls
                    .as_ref()
                    .map(|tls| (tls.ca_pem.is_some(), tls.client.is_some())),
            )
            .finish()
    }
}

/// A Redis URL fit for logs: the password of `redis://user:password@host` and any query (where
/// `redis+unix://` URLs carry theirs) replaced.
pub fn redacted_url(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?[redacted]"),
        None => (url, ""),
    };
    let Some((scheme, rest)) = before_query.split_once("://") else {
        return "[redacted]".to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:[redacted]@{host}"),
            None => format!("[redacted]@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}{query}")
}

/// A digest naming free text in a key: 32 hex characters of its SHA-256.
fn digest_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = hex::encode(Sha256::digest(text.as_bytes()));
    digest.truncate(32);
    digest
}

/// Binds a request id (if any) and indexes the candidate grant for its caller. The index lives
/// as long as its newest entry's record (EXPIRETIME needs Redis 7.0).
/// KEYS: index, [request]; ARGV: grant id, fingerprint, record expiry (unix s), index trim bound
/// (exclusive).
const RESERVE: &str = r"
if #KEYS == 2 then
  local existing = redis.call('GET', KEYS[2])
  if existing then return 'existing ' .. existing end
  redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'EXAT', ARGV[3])
end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZREMRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[4])
if redis.call('EXPIRETIME', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return 'new'
";

/// KEYS: grant, events; ARGV: state, doc, expiry (unix s), first event, record version.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'state', ARGV[1], 'doc', ARGV[2], 'attempts', 0)
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return 'created'
";

/// KEYS: grant, issuances, events, approvals.
/// ARGV: expected states (space-separated), expiry (unix s), attempt limit (empty: not an STS
/// attempt), new state (empty: unchanged), approvals expected so far (empty: no approval),
/// approval, window (empty: unchanged), issuance (empty: none), review (empty: none; refused
/// once the grant has one), extensions tag expected (empty: extensions unchanged), extensions,
/// their new tag, revocation (empty: none), enforcement (empty: unchanged), then one or more
/// events.
/// Records of the first release have no `attempts` field: their issuances are the attempts they
/// are known to have made. Expiries only ever move later (an approval moves the window).
const CHANGE_IF_STATE: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
local expected = false
for allowed in string.gmatch(ARGV[1], '%S+') do
  if allowed == state then expected = true end
end
if not expected then return 'state ' .. state end
if ARGV[9] ~= '' and redis.call('HEXISTS', KEYS[1], 'review') == 1 then return 'reviewed' end
if ARGV[10] ~= '' and (redis.call('HGET', KEYS[1], 'ext_tag') or '0') ~= ARGV[10] then return 'extensions' end
if ARGV[5] ~= '' then
  local approvals = redis.call('LLEN', KEYS[4])
  if approvals ~= tonumber(ARGV[5]) then return 'approvals ' .. approvals end
end
if ARGV[3] ~= '' then
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or redis.call('LLEN', KEYS[2]))
  if attempts >= tonumber(ARGV[3]) then return 'limit ' .. attempts end
  redis.call('HSET', KEYS[1], 'attempts', attempts + 1)
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[4]) end
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'window', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'review', ARGV[9]) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'extensions', ARGV[11], 'ext_tag', ARGV[12]) end
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'revocation', ARGV[13]) end
if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'enforcement', ARGV[14]) end
for i = 15, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
redis.call('PUBLISH', KEYS[3], 'changed')
local expiry = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local current = redis.call('EXPIRETIME', key)
  if current == -1 or (current >= 0 and current < expiry) then redis.call('EXPIREAT', key, expiry) end
end
return 'ok'
";

/// KEYS: grant, events; ARGV: expiry (unix s), event. Watchers of the grant subscribe to the
/// events key's name as a channel.
const APPEND_EVENT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIREAT', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[2], 'changed')
return 'ok'
";

pub struct RedisGrantStore {
    connection: ConnectionManager,
    /// For the subscriptions of watchers, one connection each.
    client: Client,
    connect_timeout: Duration,
    /// With `min_replicas`, conditional appends go over their own connection, pipelined with
    /// `WAIT`: WAIT blocks its connection on the server, and must follow the write on the same
    /// connection (a reconnect in between would make it vouch for nothing).
    durable: Option<Durable>,
    prefix: String,
    retention: Duration,
    reserve: Script,
    create: Script,
    change_if_state: Script,
    append_event: Script,
    enforcement_scripts: enforcement::EnforcementScripts,
    /// Queues webhook notifications for recorded changes (`adapters::webhooks`).
    outbox: Outbox,
}

struct Durable {
    connection: ConnectionManager,
    min_replicas: u32,
    timeout_ms: u64,
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|error| StoreError::Corrupt(format!("cannot encode: {error}")))
}

/// Longest a grant may wait for approvals (the configuration's bound): queue entries older than
/// this are trimmed.
const MAX_PENDING_SECS: u64 = 7 * 24 * 3600;

/// Commands per grant in a read pipeline: HMGET, LRANGE and LLEN of the issuances, LRANGE of
/// the approvals.
const READ_COMMANDS: usize = 4;

impl RedisGrantStore {
    /// Connects lazily: the service starts (and reports NOT_SERVING) while Redis is down, and
    /// every command is bounded by the connect and response timeouts.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = match &settings.tls {
            None => Client::open(settings.url.as_str()),
            Some(tls) => Client::build_with_tls(
                settings.url.as_str(),
                TlsCertificates {
                    client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.expose().as_bytes().to_vec(),
                    }),
                    root_cert: tls.ca_pem.clone(),
                },
            ),
        }
        // Not the error's own text: it could quote the URL, password and all.
        .map_err(|error| {
            StoreError::Unavailable(format!(
                "cannot use `{}`: {:?}",
                redacted_url(&settings.url),
                error.kind()
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map_err(unavailable)?;
        let subscriptions = client.clone();
        let durable = if settings.min_replicas == 0 {
            None
        } else {
            Some(Durable {
                connection: ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?,
                min_replicas: settings.min_replicas,
                timeout_ms: u64::try_from(settings.replica_timeout.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            })
        };
        Ok(Self {
            connection,
            client: subscriptions,
            connect_timeout: settings.connect_timeout,
            durable,
            prefix: settings.key_prefix.clone(),
            retention: settings.retention,
            reserve: Script::new(RESERVE),
            create: Script::new(CREATE),
            change_if_state: Script::new(CHANGE_IF_STATE),
            append_event: Script::new(APPEND_EVENT),
            enforcement_scripts: enforcement::EnforcementScripts::default(),
            outbox: Outbox::none(),
        })
    }

    /// Queues webhook notifications for every change this store records from now on.
    pub fn with_outbox(self, outbox: Outbox) -> Self {
        Self { outbox, ..self }
    }

    /// The client this store connects with (URL and TLS settings), for other connections.
    pub fn redis_client(&self) -> Client {
        self.client.clone()
    }

    fn grant_key(&self, id: GrantId) -> String {
        format!("{}:grant:{{{id}}}", self.prefix)
    }

    fn issuances_key(&self, id: GrantId) -> String {
        format!("{}:grant:{{{id}}}:issuances", self.prefix)
    }

    /// The queue of pending grants: a sorted set of ids (all score 0, so lexical order is time
    /// order), in a slot of its own.
    fn pending_key(&self) -> String {
        format!("{}:pending", self.prefix)
    }

    /// Break-glass grants not yet reviewed: a sorted set of ids, all score 0.
    fn break_glass_key(&self) -> String {
        format!("{}:break-glass", self.prefix)
    }

    /// Grants' deadlines: a sorted set of ids scored by the unix time they expire at.
    fn deadlines_key(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }

    fn approvals_key(&self, id: GrantId) -> String {
        format!("{}:grant:{{{id}}}:approvals", self.prefix)
    }

    fn events_key(&self, id: GrantId) -> String {
        format!("{}:grant:{{{id}}}:events", self.prefix)
    }

    fn index_key(&self, caller: &CallerId) -> String {
        format!("{}:caller:{{{caller}}}:grants", self.prefix)
    }

    /// The grant an access key was issued for: a string, kept as long as the grant's record.
    fn access_key_key(&self, access_key_id: &str) -> String {
        format!("{}:key:{{{access_key_id}}}", self.prefix)
    }

    /// A grantee's grants (for revoking everything a vendor holds): a sorted set of ids, all
    /// score 0. Grantees are free text, so the key holds a digest of the name.
    fn grantee_key(&self, grantee: &str) -> String {
        format!("{}:grantee:{{{}}}:grants", self.prefix, digest_of(grantee))
    }

    /// The sorted set of grant ids (all score 0, newest last) an index is kept in. Free-text
    /// values (requester, grantee) are keyed by a digest; target and account ids are configured.
    fn index_of(&self, index: &GrantIndex) -> String {
        match index {
            GrantIndex::Caller(caller) => self.index_key(caller),
            GrantIndex::Grantee(grantee) => self.grantee_key(grantee),
            GrantIndex::Requester(requester) => {
                format!("{}:requester:{{{}}}:grants", self.prefix, digest_of(requester))
            }
            GrantIndex::Target(target) => format!("{}:target:{{{target}}}:grants", self.prefix),
            GrantIndex::Account(account) => format!("{}:account:{{{account}}}:grants", self.prefix),
            GrantIndex::All => format!("{}:grants", self.prefix),
        }
    }

    fn request_key(&self, caller: &CallerId, request_id: &RequestId) -> String {
        format!("{}:caller:{{{caller}}}:request:{}", self.prefix, request_id.as_str())
    }

    fn retention_secs(&self) -> i64 {
        i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX)
    }

    /// Unix time at which a grant ending at `end` may be forgotten.
    fn expiry(&self, end: OffsetDateTime) -> i64 {
        end.unix_timestamp().saturating_add(self.retention_secs())
    }

    /// Queues the reads of one grant: its hash fields, its most recent issuances, their count.
    fn queue_read(&self, pipe: &mut redis::Pipeline, id: GrantId) {
        let recent = isize::try_from(RECENT_ISSUANCES).unwrap_or(isize::MAX);
        pipe.cmd("HMGET")
            .arg(self.grant_key(id))
            .arg("v")
            .arg("state")
            .arg("doc")
            .arg("window")
            .arg("review")
            .arg("extensions")
            .arg("revocation")
            .arg("enforcement");
        pipe.lrange(self.issuances_key(id), -recent, -1);
        pipe.llen(self.issuances_key(id));
        // Bounded: the broker records at most MAX_RECORDED_APPROVALS.
        pipe.lrange(self.approvals_key(id), 0, -1);
    }

    /// Decodes the replies of [`Self::queue_read`]; `None` when the grant does not exist.
    fn decode_read(id: GrantId, replies: [Value; READ_COMMANDS]) -> Result<Option<Grant>, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("grant {id}: {what}"));
        let [fields, issuances, issuance_count, approvals] = replies;
        let [version, state, doc, window, review, extensions, revocation, enforcement]: [Value; 8] =
            reply::array_of(fields, 8)
                .map_err(&corrupt)?
                .try_into()
                .map_err(|_| corrupt("HMGET reply".to_owned()))?;
        let version = reply::optional_text(version).map_err(&corrupt)?;
        let (Some(state), Some(doc)) = (
            reply::optional_text(state).map_err(&corrupt)?,
            reply::optional_text(doc).map_err(&corrupt)?,
        ) else {
            return Ok(None);
        };
        let stored = StoredGrant {
            version,
            state,
            doc,
            window: reply::optional_text(window).map_err(&corrupt)?,
            review: reply::optional_text(review).map_err(&corrupt)?,
            extensions: reply::optional_text(extensions).map_err(&corrupt)?,
            revocation: reply::optional_text(revocation).map_err(&corrupt)?,
            enforcement: reply::optional_text(enforcement).map_err(&corrupt)?,
            approvals: reply::texts(approvals).map_err(&corrupt)?,
            issuances: reply::texts(issuances).map_err(&corrupt)?,
            issuance_count: reply::count(issuance_count).map_err(&corrupt)?,
        };
        record::decode_grant(id, stored).map(Some).map_err(corrupt)
    }

    /// What the change script's reply says.
    fn decode_change_reply(id: GrantId, reply: &str) -> Result<Appended, StoreError> {
        match reply.split_once(' ') {
            None if reply == "ok" => Ok(Appended::Yes),
            None if reply == "missing" => Ok(Appended::Missing),
            Some(("state", state)) => GrantState::parse(state)
                .map(Appended::WrongState)
                .ok_or_else(|| StoreError::Corrupt(format!("grant {id}: unknown state `{state}`"))),
            Some(("limit", attempts)) => attempts
                .parse()
                .map(Appended::LimitReached)
                .map_err(|_| StoreError::Corrupt(format!("grant {id}: attempts `{attempts}`"))),
            None if reply == "reviewed" => Ok(Appended::AlreadyReviewed),
            None if reply == "extensions" => Ok(Appended::ExtensionsChanged),
            Some(("approvals", count)) => count
                .parse()
                .map(Appended::ApprovalsChanged)
                .map_err(|_| StoreError::Corrupt(format!("grant {id}: approvals `{count}`"))),
            _ => Err(StoreError::Corrupt(format!("unexpected append reply `{reply}`"))),
        }
    }

    /// Up to `limit` grants of a lexically ordered index of grant ids (newest first), strictly
    /// older than `before`, and the id to continue before when there are more.
    async fn list_index_key(
        &self,
        key: &str,
        before: Option<GrantId>,
        since: Option<GrantId>,
        limit: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), StoreError> {
        let (ids, next) = self.page_ids(key, before, since, limit).await?;
        Ok((self.get_many(&ids).await?, next))
    }

    /// Up to `limit` ids of a lexically ordered index of grant ids, newest first, strictly older
    /// than `before`, and the id to continue before when there are more.
    async fn page_ids(
        &self,
        key: &str,
        before: Option<GrantId>,
        since: Option<GrantId>,
        limit: usize,
    ) -> Result<(Vec<GrantId>, Option<GrantId>), StoreError> {
        let max = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let min = since.map_or_else(|| "-".to_owned(), |id| format!("[{id}"));
        let ids: Vec<String> = self
            .connection
            .clone()
            .zrevrangebylex_limit(key, max, min, 0, isize::try_from(limit + 1).unwrap_or(isize::MAX))
            .await
            .map_err(unavailable)?;
        let mut ids = ids
            .iter()
            .map(|id| GrantId::parse(id).map_err(StoreError::Corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().copied()
        } else {
            None
        };
        Ok((ids, next))
    }

    /// Reads several grants in one round trip; missing ones are skipped.
    async fn get_many(&self, ids: &[GrantId]) -> Result<Vec<Grant>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for &id in ids {
            self.queue_read(&mut pipe, id);
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Value> = pipe.query_async(&mut connection).await.map_err(unavailable)?;
        if replies.len() != ids.len() * READ_COMMANDS {
            return Err(StoreError::Corrupt(format!(
                "expected {} replies, got {}",
                ids.len() * READ_COMMANDS,
                replies.len()
            )));
        }
        let mut replies = replies.into_iter();
        let mut grants = Vec::with_capacity(ids.len());
        for &id in ids {
            let one = [(); READ_COMMANDS].map(|()| replies.next().unwrap_or(Value::Nil));
            if let Some(grant) = Self::decode_read(id, one)? {
                grants.push(grant);
            }
        }
        Ok(grants)
    }
}

/// A watcher's subscription: its own connection to Redis.
pub struct RedisFeed(redis::aio::PubSub);

impl ChangeFeed for RedisFeed {
    async fn changed(&mut self) -> bool {
        use tokio_stream::StreamExt as _;
        self.0.on_message().next().await.is_some()
    }
}

impl GrantStore for RedisGrantStore {
    type Feed = RedisFeed;

    async fn subscribe(&self, id: GrantId) -> Result<RedisFeed, StoreError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.events_key(id)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(pubsub)) => Ok(RedisFeed(pubsub)),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(StoreError::Unavailable("subscribing took too long".to_owned())),
        }
    }

    async fn events_from(&self, id: GrantId, from: u64) -> Result<Vec<GrantEvent>, StoreError> {
        let mut connection = self.connection.clone();
        let start = isize::try_from(from).unwrap_or(isize::MAX);
        let entries: Value = redis::cmd("LRANGE")
            .arg(self.events_key(id))
            .arg(start)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        reply::texts(entries)
            .map_err(|what| StoreError::Corrupt(format!("grant {id} events: {what}")))?
            .iter()
            .map(|text| {
                serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("grant {id} event: {error}")))
            })
            .collect()
    }

    async fn reserve(
        &self,
        caller: &CallerId,
        request_id: Option<&RequestId>,
        fingerprint: &str,
        candidate: GrantId,
        now: OffsetDateTime,
        grant_end: OffsetDateTime,
    ) -> Result<Reservation, StoreError> {
        let mut invocation = self.reserve.key(self.index_key(caller));
        if let Some(request_id) = request_id {
            invocation.key(self.request_key(caller, request_id));
        }
        // Records live until their grant's end plus retention, and a grant lasts at most
        // MAX_DURATION_SECS: index entries older than both can only point at forgotten records.
        let trim_before = GrantId::lower_bound_at(
            now - self.retention - std::time::Duration::from_secs(crate::domain::limits::MAX_DURATION_SECS),
        );
        invocation
            .arg(candidate.to_string())
            .arg(fingerprint)
            .arg(self.expiry(grant_end))
            .arg(trim_before.to_string());
        let mut connection = self.connection.clone();
        let reply: String = invocation.invoke_async(&mut connection).await.map_err(unavailable)?;
        match reply.split(' ').collect::<Vec<_>>().as_slice() {
            ["new"] => Ok(Reservation::New),
            ["existing", grant_id, fingerprint] => Ok(Reservation::Existing {
                grant_id: GrantId::parse(grant_id).map_err(StoreError::Corrupt)?,
                fingerprint: (*fingerprint).to_owned(),
            }),
            _ => Err(StoreError::Corrupt(format!("unexpected reservation reply `{reply}`"))),
        }
    }

    async fn create(&self, grant: &Grant, events: &[GrantEvent]) -> Result<bool, StoreError> {
        let mut invocation = self.create.key(self.grant_key(grant.id));
        invocation
            .key(self.events_key(grant.id))
            .arg(grant.state.as_str())
            .arg(record::encode_grant(grant).map_err(StoreError::Corrupt)?)
            .arg(self.expiry(grant.last_moment()))
            .arg(record::CURRENT_VERSION);
        for event in events {
            invocation.arg(to_json(event)?);
        }
        // The deadline and the queues live in slots of their own, so they are not written in the
        // grant's atomic step, but beside it: sent at once on the same multiplexed connection,
        // after it, so they cost no extra round trip. A lost queue entry leaves a grant pending
        // (and expiring: its deadline is read too); an entry whose grant is no longer pending is
        // dropped when a reader meets it. A lost deadline leaves a grant that still reads as
        // expired when its time has passed, only without the `expired` event. (An index entry
        // written for a grant that already existed points at that grant: harmless.)
        let mut indexes = redis::pipe();
        // The search indexes (the caller's is written by `reserve`): trimmed of ids whose records
        // must have expired as they grow, and expiring with their newest entry.
        let trim_before = GrantId::lower_bound_at(
            grant.created_at
                - self.retention
                - std::time::Duration::from_secs(crate::domain::limits::MAX_DURATION_SECS),
        );
        let expiry = self.expiry(grant.last_moment());
        for index in [
            GrantIndex::Grantee(grant.grantee.clone()),
            GrantIndex::Requester(grant.requester.clone()),
            GrantIndex::Target(grant.target.clone()),
            GrantIndex::Account(grant.account_id.clone()),
            GrantIndex::All,
        ] {
            let key = self.index_of(&index);
            indexes
                .zadd(&key, grant.id.to_string(), 0)
                .cmd("ZREMRANGEBYLEX")
                .arg(&key)
                .arg("-")
                .arg(format!("({trim_before}"))
                .cmd("EXPIREAT")
                .arg(&key)
                .arg(expiry)
                .arg("GT")
                .cmd("EXPIREAT")
                .arg(&key)
                .arg(expiry)
                .arg("NX");
        }
        if let Some(deadline) = grant.deadline() {
            indexes.zadd(self.deadlines_key(), grant.id.to_string(), deadline.unix_timestamp());
        }
        if grant.decision.break_glass {
            indexes.zadd(self.break_glass_key(), grant.id.to_string(), 0);
        }
        if grant.state == GrantState::PendingApproval {
            let trim_before =
                GrantId::lower_bound_at(grant.created_at - std::time::Duration::from_secs(MAX_PENDING_SECS));
            indexes
                .zadd(self.pending_key(), grant.id.to_string(), 0)
                .cmd("ZREMRANGEBYLEX")
                .arg(self.pending_key())
                .arg("-")
                .arg(format!("({trim_before}"));
        }
        let (mut for_grant, mut for_indexes) = (self.connection.clone(), self.connection.clone());
        let (created, indexed) = tokio::join!(
            invocation.invoke_async::<String>(&mut for_grant),
            indexes.query_async::<()>(&mut for_indexes)
        );
        let created = created.map_err(unavailable)? == "created";
        if let Err(error) = indexed {
            // The grant is recorded; what it lacks is repaired as described above.
            tracing::warn!(grant_id = %grant.id, %error, "grant recorded, but not indexed");
        }
        // After the script, not beside it: a create that lost a race must announce nothing.
        if created {
            tokio::join!(
                self.outbox.enqueue(&self.connection, grant, grant.state, events),
                self.log_events(grant, events)
            );
        }
        Ok(created)
    }

    async fn get(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        Ok(self.get_many(&[id]).await?.pop())
    }

    async fn grant_for_access_key(&self, access_key_id: &str) -> Result<Option<GrantId>, StoreError> {
        let id: Option<String> = self
            .connection
            .clone()
            .get(self.access_key_key(access_key_id))
            .await
            .map_err(unavailable)?;
        id.map(|id| GrantId::parse(&id).map_err(StoreError::Corrupt))
            .transpose()
    }

    async fn issuance_with_key(&self, grant: GrantId, access_key_id: &str) -> Result<Option<Issuance>, StoreError> {
        // Bounded by the grant's issuance cap.
        let entries: Value = redis::cmd("LRANGE")
            .arg(self.issuances_key(grant))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let corrupt = |what: String| StoreError::Corrupt(format!("grant {grant} issuances: {what}"));
        for text in reply::texts(entries).map_err(corrupt)? {
            let issuance = record::decode_issuance(&text).map_err(corrupt)?;
            if issuance.access_key_id == access_key_id {
                return Ok(Some(issuance));
            }
        }
        Ok(None)
    }

    async fn list_index(
        &self,
        index: &GrantIndex,
        before: Option<GrantId>,
        since: Option<GrantId>,
        limit: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), StoreError> {
        self.list_index_key(&self.index_of(index), before, since, limit).await
    }

    async fn due(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<GrantId>, StoreError> {
        let mut connection = self.connection.clone();
        let ids: Value = redis::cmd("ZRANGE")
            .arg(self.deadlines_key())
            .arg("-inf")
            .arg(now.unix_timestamp())
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        reply::texts(ids)
            .map_err(|what| StoreError::Corrupt(format!("deadlines: {what}")))?
            .iter()
            .map(|id| GrantId::parse(id).map_err(StoreError::Corrupt))
            .collect()
    }

    async fn schedule_deadline(&self, id: GrantId, at: OffsetDateTime) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: i64 = connection
            .zadd(self.deadlines_key(), id.to_string(), at.unix_timestamp())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn forget_deadline(&self, id: GrantId) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: i64 = connection
            .zrem(self.deadlines_key(), id.to_string())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list_queue(
        &self,
        queue: Queue,
        before: Option<GrantId>,
        limit: usize,
    ) -> Result<(Vec<Grant>, Option<GrantId>), StoreError> {
        let key = match queue {
            Queue::Pending => self.pending_key(),
            Queue::BreakGlassUnreviewed => self.break_glass_key(),
        };
        let (ids, next) = self.page_ids(&key, before, None, limit).await?;
        let mut connection = self.connection.clone();
        let (queued, done): (Vec<Grant>, Vec<Grant>) = self
            .get_many(&ids)
            .await?
            .into_iter()
            .partition(|grant| queue.holds(grant));
        // Grants decided or cancelled leave the queue as readers meet them; ids whose grant is
        // gone are skipped by get_many, and the trim drops every entry older than any pending
        // grant can be. (Whether a pending grant has timed out is the broker's call, by its clock.)
        if !done.is_empty() {
            let _: i64 = connection
                .zrem(&key, done.iter().map(|grant| grant.id.to_string()).collect::<Vec<_>>())
                .await
                .map_err(unavailable)?;
        }
        Ok((queued, next))
    }

    async fn change_if_state(&self, grant: &Grant, change: Change<'_>) -> Result<Appended, StoreError> {
        let expected: Vec<&str> = change.expected.iter().map(|state| state.as_str()).collect();
        let (approvals_before, approval) = match change.approval {
            Some((before, approval)) => (
                before.to_string(),
                record::encode_approval(approval).map_err(StoreError::Corrupt)?,
            ),
            None => (String::new(), String::new()),
        };
        let (last_moment, window) = match change.window {
            Some((start, end, policy)) => (
                end.max(grant.last_moment()),
                record::encode_window(start, end, policy).map_err(StoreError::Corrupt)?,
            ),
            None => (grant.last_moment(), String::new()),
        };
        let issuance = match change.issuance {
            Some(issuance) => record::encode_issuance(issuance).map_err(StoreError::Corrupt)?,
            None => String::new(),
        };
        let mut invocation = self.change_if_state.key(self.grant_key(grant.id));
        invocation
            .key(self.issuances_key(grant.id))
            .key(self.events_key(grant.id))
            .key(self.approvals_key(grant.id))
            .arg(expected.join(" "))
            .arg(self.expiry(last_moment))
            .arg(change.attempt_limit.map(|limit| limit.to_string()).unwrap_or_default())
            .arg(change.to.map(GrantState::as_str).unwrap_or_default())
            .arg(approvals_before)
            .arg(approval)
            .arg(window)
            .arg(issuance)
            .arg(match change.review {
                Some(review) => record::encode_review(review).map_err(StoreError::Corrupt)?,
                None => String::new(),
            });
        match change.extensions {
            Some(extensions) => invocation
                .arg(record::extensions_tag(extensions.before))
                .arg(record::encode_extensions(extensions.after).map_err(StoreError::Corrupt)?)
                .arg(record::extensions_tag(extensions.after)),
            None => invocation.arg("").arg("").arg(""),
        };
        invocation
            .arg(match change.revocation {
                Some(revocation) => record::encode_revocation(revocation).map_err(StoreError::Corrupt)?,
                None => String::new(),
            })
            .arg(match change.enforcement {
                Some(enforcement) => record::encode_enforcement(enforcement).map_err(StoreError::Corrupt)?,
                None => String::new(),
            });
        for event in change.events {
            invocation.arg(to_json(event)?);
        }
        let reply: String = match &self.durable {
            None => invocation
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?,
            Some(durable) => {
                // One round trip: (re)load the script, run it, wait for the replicas.
                let (_, reply, acknowledged): (String, String, u32) = redis::pipe()
                    .load_script(&self.change_if_state)
                    .invoke_script(&invocation)
                    .cmd("WAIT")
                    .arg(durable.min_replicas)
                    .arg(durable.timeout_ms)
                    .query_async(&mut durable.connection.clone())
                    .await
                    .map_err(unavailable)?;
                if reply == "ok" && acknowledged < durable.min_replicas {
                    return Err(StoreError::Unavailable(format!(
                        "only {acknowledged} of {} required replicas acknowledged the write within {} ms",
                        durable.min_replicas, durable.timeout_ms
                    )));
                }
                reply
            }
        };
        let appended = Self::decode_change_reply(grant.id, &reply)?;
        let extension_waits = change
            .extensions
            .and_then(|extensions| extensions.after.last())
            .is_some_and(|last| last.state == ExtensionState::Pending);
        if appended == Appended::Yes && extension_waits {
            // Beside the grant's step, like the queue entry of a new pending grant (see create):
            // a lost entry leaves the extension waiting, and a ListGrants of the grant shows it.
            let queued: Result<i64, _> = self
                .connection
                .clone()
                .zadd(self.pending_key(), grant.id.to_string(), 0)
                .await;
            if let Err(error) = queued {
                tracing::warn!(grant_id = %grant.id, %error, "extension recorded, but not queued for approvers");
            }
        }
        if appended == Appended::Yes {
            // Beside the grant's step (other slots), at once and together. A lost access key
            // entry leaves the issuance findable in its grant's events and issuances, not by key;
            // notifications: see Outbox::enqueue (never fails the change).
            let index = async {
                if let Some(issuance) = change.issuance {
                    let indexed: Result<(), _> = redis::cmd("SET")
                        .arg(self.access_key_key(&issuance.access_key_id))
                        .arg(grant.id.to_string())
                        .arg("EXAT")
                        .arg(self.expiry(grant.last_moment()))
                        .query_async(&mut self.connection.clone())
                        .await;
                    if let Err(error) = indexed {
                        tracing::warn!(grant_id = %grant.id, %error, "issuance recorded, but not indexed by access key");
                    }
                }
            };
            let state = change.to.unwrap_or(grant.state);
            let notify = self.outbox.enqueue(&self.connection, grant, state, change.events);
            tokio::join!(index, notify, self.log_events(grant, change.events));
        }
        Ok(appended)
    }

    async fn audit_events(
        &self,
        after: Option<&AuditCursor>,
        before: Option<&AuditCursor>,
        newest_first: bool,
        limit: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read_audit(after, before, newest_first, limit, wait).await
    }

    async fn oldest_audit_event(&self) -> Result<Option<AuditCursor>, StoreError> {
        self.oldest_audit().await
    }

    async fn trim_audit_log(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.trim_audit(before).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn append_event(&self, grant: &Grant, event: &GrantEvent) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let reply: String = self
            .append_event
            .key(self.grant_key(grant.id))
            .key(self.events_key(grant.id))
            .arg(self.expiry(grant.end))
            .arg(to_json(event)?)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if reply == "ok" {
            let events = std::slice::from_ref(event);
            tokio::join!(
                self.outbox.enqueue(&self.connection, grant, grant.state, events),
                self.log_events(grant, events)
            );
        }
        Ok(())
    }
}
