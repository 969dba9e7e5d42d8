//! The grant store on Redis: the system of record for grants and their audit trail.
//!
//! Keys (`gb` is the configurable prefix; `{…}` is a Redis Cluster hash tag, so everything one
//! atomic step touches lives in one slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `gb:g:{<id>}` | string | the grant: a header and a protobuf body with its events and issuances ([`record`]) |
//! | `gb:caller:{<caller>}:request:<request id>` | string | the grant id (16 bytes), then the request fingerprint (32 bytes, a SHA-256) |
//! | `gb:caller:{<caller>}:grants`, `gb:requester:{<digest>}:grants`, `gb:grantee:{<digest>}:grants`, `gb:target:{<id>}:grants`, `gb:account:{<id>}:grants`, `gb:grants` | stream | search indexes ([`index`]) |
//! | `gb:live` | stream | grants created pending or approved, dropped once they end ([`index`]) |
//! | `gb:key:{<access key id>}` | string | the grant an access key was issued for (16 bytes) |
//! | `gb:{audit}:events` | stream | the audit log: references to grants' events ([`audit`]) |
//! | `gb:deadlines`, `gb:pending`, `gb:break-glass` | sorted set | what the background sweeps and the queues walk |
//!
//! Replies are decoded explicitly, value by value ([`reply`]): never by letting the client
//! library guess a nested shape, which once made every grant with exactly two issuances unreadable.
//!
//! Every state change and append is one Lua script on the grant's key (one round trip, atomic,
//! compare-and-set on the header). Retention: grant keys and request ids expire `retention` after
//! the grant ends; indexes and the audit log are trimmed to the same horizon as they grow, and
//! expire with their newest entry. No KEYS or SCAN anywhere. Needs Redis 7.0 or later.
//!
//! With `min_replicas`, the conditional appends (`issuing` and the issuance) are pipelined with
//! `WAIT` on a connection of their own, so a failover cannot lose what the credentials depend on.

mod audit;
mod enforcement;
mod index;
mod record;
mod repair;
pub(crate) mod reply;

use std::time::Duration;

use redis::{
    AsyncCommands, Client, ClientTlsConfig, Script, TlsCertificates, Value, aio::ConnectionManager,
    aio::ConnectionManagerConfig,
};
use time::OffsetDateTime;

use super::webhooks::Outbox;
use crate::{
    domain::{
        CallerId, Grant, GrantEvent, GrantId, GrantState, Issuance, RequestId, Secret,
        audit::{AuditCursor, ServiceEvent},
        extension::ExtensionState,
    },
    ports::{
        Appended, AuditRead, Change, ChangeFeed, GrantIndex, GrantStore, IndexPage, Queue, Reservation, StoreError,
    },
};

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

/// Binds a request id (if any) to the candidate grant (16 bytes of id, then the request's
/// fingerprint: [`fingerprint_bytes`]) and indexes the candidate for its caller, in the caller's slot.
/// KEYS: caller index, and the request id's key when there is one; ARGV: grant id (bytes),
/// fingerprint (bytes), record expiry (unix s), then the index arguments
/// ([`RedisGrantStore::index_args`]).
const RESERVE: &str = r"
if #KEYS == 2 then
  local existing = redis.call('GET', KEYS[2])
  if existing then return existing end
  redis.call('SET', KEYS[2], ARGV[1] .. ARGV[2], 'EXAT', ARGV[3])
end
local added = redis.pcall('XADD', KEYS[1], 'MINID', ARGV[6], ARGV[4] .. '-*', 'g', ARGV[1])
if type(added) == 'table' and added.err then
  redis.call('XADD', KEYS[1], 'MINID', ARGV[6], '*', 'g', ARGV[1])
end
if redis.call('EXPIRETIME', KEYS[1]) < tonumber(ARGV[5]) then redis.call('EXPIREAT', KEYS[1], ARGV[5]) end
return ''
";

/// The change script: compares a record's header, rewrites it in place (`SETRANGE`) and appends
/// the change's body (`APPEND`): a change never reads or rewrites the body, so its cost does not
/// grow with the grant's history. Written from the header's one definition ([`record::at`]).
/// KEYS: record.
/// ARGV: expected state codes (one byte each), expiry (unix s), attempt limit (empty: not an
/// STS attempt), new state code (empty: unchanged), approvals expected so far (empty: no
/// approval), extensions tag expected (empty: unchanged), the new tag, review ('1': the change
/// records one, refused once the grant has one), events appended, the body to append.
/// Replies `ok <events before>` so the caller knows the new events' positions.
/// Expiries only ever move later (an approval moves the window).
fn change_script() -> String {
    use record::at;
    // Lua's positions count from 1.
    let (state, attempts, approvals, tag, events, flags) = (
        at::STATE + 1,
        at::ATTEMPTS + 1,
        at::APPROVALS + 1,
        at::EXTENSIONS_TAG + 1,
        at::EVENTS + 1,
        at::FLAGS + 1,
    );
    let (tag_end, last) = (tag + 2, record::HEADER_LEN - 1);
    let reviewed = record::REVIEWED;
    format!(
        r"
local header = redis.call('GETRANGE', KEYS[1], 0, {last})
if header == '' then return 'missing' end
local state = string.sub(header, {state}, {state})
if not string.find(ARGV[1], state, 1, true) then return 'state ' .. string.byte(state) end
local flags = string.byte(header, {flags})
if ARGV[8] ~= '' and math.floor(flags / {reviewed}) % 2 == 1 then return 'reviewed' end
local tag = string.sub(header, {tag}, {tag_end})
if ARGV[6] ~= '' and tag ~= ARGV[6] then return 'extensions' end
local approvals = string.byte(header, {approvals})
if ARGV[5] ~= '' then
  if approvals ~= tonumber(ARGV[5]) then return 'approvals ' .. approvals end
  approvals = approvals + 1
end
local attempts = string.byte(header, {attempts}) * 256 + string.byte(header, {attempts} + 1)
if ARGV[3] ~= '' then
  if attempts >= tonumber(ARGV[3]) then return 'limit ' .. attempts end
  attempts = attempts + 1
end
local events = string.byte(header, {events}) * 256 + string.byte(header, {events} + 1)
local total = events + tonumber(ARGV[9])
if total > 65535 then return 'full' end
if ARGV[4] ~= '' then state = ARGV[4] end
if ARGV[6] ~= '' then tag = ARGV[7] end
if ARGV[8] ~= '' then flags = flags + {reviewed} end
local bytes = {{string.byte(header, 1, -1)}}
bytes[{state}] = string.byte(state)
bytes[{attempts}], bytes[{attempts} + 1] = math.floor(attempts / 256), attempts % 256
bytes[{approvals}] = approvals
bytes[{tag}], bytes[{tag} + 1], bytes[{tag} + 2] = string.byte(tag, 1, 3)
bytes[{events}], bytes[{events} + 1] = math.floor(total / 256), total % 256
bytes[{flags}] = flags
redis.call('SETRANGE', KEYS[1], 0, string.char(unpack(bytes)))
redis.call('APPEND', KEYS[1], ARGV[10])
local expiry = tonumber(ARGV[2])
if redis.call('EXPIRETIME', KEYS[1]) < expiry then redis.call('EXPIREAT', KEYS[1], expiry) end
redis.call('PUBLISH', KEYS[1], 'changed')
return 'ok ' .. events
"
    )
}

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
    change: Script,
    index: Script,
    log: Script,
    /// Writes beside a grant's step that failed, to retry ([`repair`]).
    repairs: repair::Repairs,
    /// Idle connections for followers' blocking reads of the audit log, each with the longest
    /// wait it was made for ([`audit`]).
    blocking: std::sync::Mutex<Vec<(Duration, redis::aio::MultiplexedConnection)>>,
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

/// Longest a grant may wait for approvals (the configuration's bound): queue entries older than
/// this are trimmed.
const MAX_PENDING_SECS: u64 = 7 * 24 * 3600;

/// The end of a stream range read before `cursor` (exclusive; `+` without one), or `None` when
/// nothing can come before it: Redis refuses `(0-0` as an end.
fn stream_end_before(cursor: Option<&AuditCursor>) -> Option<String> {
    match cursor {
        None => Some("+".to_owned()),
        Some(cursor) if *cursor == AuditCursor::from_parts(0, 0) => None,
        Some(cursor) => Some(format!("({cursor}")),
    }
}

/// A grant id as index entries, access key entries and audit references hold it.
fn id_bytes(id: GrantId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// Reads an id as [`id_bytes`] wrote it.
fn id_from_bytes(bytes: &[u8]) -> Result<GrantId, StoreError> {
    uuid::Uuid::from_slice(bytes)
        .map(GrantId::from_uuid)
        .map_err(|_| StoreError::Corrupt(format!("a grant id of {} bytes, not 16", bytes.len())))
}

/// The length of a request fingerprint: a SHA-256.
const FINGERPRINT_BYTES: usize = 32;

/// A request fingerprint (a SHA-256 in lowercase hex, as the broker makes it) as the request id
/// entry holds it: its 32 bytes.
fn fingerprint_bytes(fingerprint: &str) -> Result<Vec<u8>, StoreError> {
    hex::decode(fingerprint)
        .ok()
        .filter(|bytes| bytes.len() == FINGERPRINT_BYTES)
        .ok_or_else(|| StoreError::Corrupt(format!("{fingerprint:?} is not a SHA-256 in hex")))
}

fn fingerprint_text(bytes: &[u8]) -> Result<String, StoreError> {
    if bytes.len() == FINGERPRINT_BYTES {
        Ok(hex::encode(bytes))
    } else {
        Err(StoreError::Corrupt(format!(
            "request fingerprint of {} bytes, not {FINGERPRINT_BYTES}",
            bytes.len()
        )))
    }
}

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
            change: Script::new(&change_script()),
            index: Script::new(index::INDEX),
            log: Script::new(audit::LOG),
            repairs: repair::Repairs::default(),
            blocking: std::sync::Mutex::new(Vec::new()),
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

    /// The grant's record; also the channel its changes are announced on.
    fn record_key(&self, id: GrantId) -> String {
        format!("{}:g:{{{id}}}", self.prefix)
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

    /// The grant an access key was issued for, kept as long as the grant's record.
    fn access_key_key(&self, access_key_id: &str) -> String {
        format!("{}:key:{{{access_key_id}}}", self.prefix)
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

    /// The records of `ids`, in order (`None` where a grant does not exist): one round trip, and
    /// one more only for ids without a version 3 record (grants recorded before it, or gone).
    async fn read_records(
        &self,
        ids: &[GrantId],
        policy: record::Policy,
    ) -> Result<Vec<Option<record::Decoded>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for &id in ids {
            pipe.cmd("GET").arg(self.record_key(id));
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        if replies.len() != ids.len() {
            return Err(StoreError::Corrupt(format!(
                "expected {} replies, got {}",
                ids.len(),
                replies.len()
            )));
        }
        ids.iter()
            .zip(replies)
            .map(|(&id, reply)| {
                let corrupt = |what: String| StoreError::Corrupt(format!("grant {id}: {what}"));
                reply::optional_bytes(reply)
                    .map_err(corrupt)?
                    .map(|bytes| record::decode_record(id, &bytes, policy).map_err(corrupt))
                    .transpose()
            })
            .collect()
    }

    /// Reads several grants in one round trip; missing ones are skipped.
    async fn get_many(&self, ids: &[GrantId]) -> Result<Vec<Grant>, StoreError> {
        Ok(self
            .read_records(ids, record::Policy::Rebuild)
            .await?
            .into_iter()
            .flatten()
            .map(|decoded| decoded.grant)
            .collect())
    }

    /// What the change script's reply says, and for a change made, how many events the grant
    /// had before it.
    fn decode_change_reply(id: GrantId, reply: &str) -> Result<(Appended, u64), StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("grant {id}: {what} in `{reply}`"));
        let not_changed = |appended| Ok((appended, 0));
        match reply.split_once(' ') {
            Some(("ok", before)) => Ok((Appended::Yes, before.parse().map_err(|_| corrupt("event count"))?)),
            None if reply == "missing" => not_changed(Appended::Missing),
            Some(("state", code)) => code.parse::<u8>().ok().and_then(record::state_of).map_or_else(
                || Err(corrupt("unknown state")),
                |state| not_changed(Appended::WrongState(state)),
            ),
            Some(("limit", attempts)) => not_changed(Appended::LimitReached(
                attempts.parse().map_err(|_| corrupt("attempts"))?,
            )),
            None if reply == "reviewed" => not_changed(Appended::AlreadyReviewed),
            None if reply == "extensions" => not_changed(Appended::ExtensionsChanged),
            Some(("approvals", count)) => not_changed(Appended::ApprovalsChanged(
                count.parse().map_err(|_| corrupt("approvals"))?,
            )),
            None if reply == "full" => Err(corrupt("no room for more events")),
            _ => Err(corrupt("unexpected reply")),
        }
    }

    /// Runs the change script, with `WAIT` when replicas must acknowledge it.
    /// The reply, and when too few replicas acknowledged a change made on the primary, that
    /// shortfall (the change stands: what goes beside it must still be written).
    async fn run_change(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<(String, Option<StoreError>), StoreError> {
        match &self.durable {
            None => invocation
                .invoke_async(&mut self.connection.clone())
                .await
                .map(|reply| (reply, None))
                .map_err(unavailable),
            Some(durable) => {
                // One round trip: (re)load the script, run it, wait for the replicas.
                let (_, reply, acknowledged): (String, String, u32) = redis::pipe()
                    .load_script(&self.change)
                    .invoke_script(invocation)
                    .cmd("WAIT")
                    .arg(durable.min_replicas)
                    .arg(durable.timeout_ms)
                    .query_async(&mut durable.connection.clone())
                    .await
                    .map_err(unavailable)?;
                let shortfall = (reply.starts_with("ok ") && acknowledged < durable.min_replicas).then(|| {
                    StoreError::Unavailable(format!(
                        "only {acknowledged} of {} required replicas acknowledged the write within {} ms",
                        durable.min_replicas, durable.timeout_ms
                    ))
                });
                Ok((reply, shortfall))
            }
        }
    }
}

/// A change as the store recorded it.
struct Recorded {
    appended: Appended,
    /// How many events the grant had before it.
    first_event: u64,
    /// Made on the primary, but too few replicas acknowledged it.
    unacknowledged: Option<StoreError>,
}

impl RedisGrantStore {
    /// Runs a change's script on the grant's record.
    async fn try_change(&self, grant: &Grant, change: &Change<'_>, body: &[u8]) -> Result<Recorded, StoreError> {
        let expected: Vec<u8> = change.expected.iter().map(|state| record::state_code(*state)).collect();
        let last_moment = match change.window {
            Some((_, end, _)) => end.max(grant.last_moment()),
            None => grant.last_moment(),
        };
        let mut invocation = self.change.key(self.record_key(grant.id));
        invocation
            .arg(expected)
            .arg(self.expiry(last_moment))
            .arg(change.attempt_limit.map(|limit| limit.to_string()).unwrap_or_default())
            .arg(
                change
                    .to
                    .map(|state| vec![record::state_code(state)])
                    .unwrap_or_default(),
            )
            .arg(
                change
                    .approval
                    .map(|(before, _)| before.to_string())
                    .unwrap_or_default(),
            );
        match change.extensions {
            Some(extensions) => invocation
                .arg(record::extensions_tag(extensions.before).to_vec())
                .arg(record::extensions_tag(extensions.after).to_vec()),
            None => invocation.arg("").arg(""),
        };
        invocation
            .arg(if change.review.is_some() { "1" } else { "" })
            .arg(change.events.len())
            .arg(body);
        let (reply, unacknowledged) = self.run_change(&invocation).await?;
        let (appended, first_event) = Self::decode_change_reply(grant.id, &reply)?;
        Ok(Recorded {
            appended,
            first_event,
            unacknowledged,
        })
    }

    /// Records `change`, and returns what happened and how many events the grant had before it.
    async fn record_change(&self, grant: &Grant, change: &Change<'_>) -> Result<Recorded, StoreError> {
        let body = record::encode_delta(
            grant,
            &record::Delta {
                events: change.events,
                issuance: change.issuance,
                approval: change.approval.map(|(_, approval)| approval),
                window: change.window,
                review: change.review,
                extensions: change
                    .extensions
                    .map(|extensions| (extensions.before, extensions.after)),
                revocation: change.revocation,
                enforcement: change.enforcement,
            },
        )
        .map_err(|what| StoreError::Corrupt(format!("grant {}: {what}", grant.id)))?;
        self.try_change(grant, change, &body).await
    }

    /// Writes what sits beside a recorded change, in other slots, at once and together: the
    /// access key entries, the webhook notification and the audit log references. Never fails
    /// the change: a failed write is kept and retried ([`repair`]).
    async fn beside_change(&self, grant: &Grant, state: GrantState, events: &[GrantEvent], first_event: u64) {
        let expiry = self.expiry(grant.last_moment());
        let access_keys = futures_util::future::join_all(events.iter().filter_map(|event| match &event.kind {
            crate::domain::EventKind::Issued { access_key_id, .. } => Some(async move {
                if let Err(error) = self.point_access_key(grant.id, access_key_id, expiry).await {
                    let repair = repair::Repair::AccessKey {
                        grant: grant.id,
                        access_key_id: access_key_id.clone(),
                        expiry,
                    };
                    self.keep_for_repair(repair, &error.to_string());
                }
            }),
            _ => None,
        }));
        let notify = self.outbox.enqueue(&self.connection, grant, state, events);
        tokio::join!(
            access_keys,
            notify,
            self.log_or_repair(grant.id, first_event, events.len())
        );
    }

    /// Logs a change's events, keeping the write to retry when it fails.
    async fn log_or_repair(&self, grant: GrantId, first: u64, count: usize) {
        if let Err(error) = self.log_references(grant, first, count).await {
            let repair = repair::Repair::Log { grant, first, count };
            self.keep_for_repair(repair, &error.to_string());
        }
    }

    /// Indexes a new grant, keeping the indexes whose write failed to retry.
    async fn index_or_repair(&self, grant: &Grant) {
        let failed = self.index_grant(grant, &Self::indexes_of(grant)).await;
        if let Some((_, error)) = failed.first() {
            let error = error.clone();
            let repair = repair::Repair::Index {
                grant: Box::new(grant.clone()),
                indexes: failed.into_iter().map(|(index, _)| index).collect(),
            };
            self.keep_for_repair(repair, &error);
        }
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
            pubsub.subscribe(self.record_key(id)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(pubsub)) => Ok(RedisFeed(pubsub)),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(StoreError::Unavailable("subscribing took too long".to_owned())),
        }
    }

    async fn events_from(&self, id: GrantId, from: u64) -> Result<Vec<GrantEvent>, StoreError> {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(
            match self.read_records(&[id], record::Policy::Skip).await?.pop().flatten() {
                Some(decoded) => decoded.events.into_iter().skip(from).collect(),
                None => Vec::new(),
            },
        )
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
        let index = self.index_of(&GrantIndex::Caller(caller.clone()));
        let mut invocation = self.reserve.key(&index);
        if let Some(request_id) = request_id {
            invocation.key(self.request_key(caller, request_id));
        }
        invocation
            .arg(&id_bytes(candidate)[..])
            .arg(fingerprint_bytes(fingerprint)?)
            .arg(self.expiry(grant_end));
        self.index_args(&mut invocation, &GrantIndex::Caller(caller.clone()), now, grant_end);
        let reply: Vec<u8> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        if reply.is_empty() {
            return Ok(Reservation::New);
        }
        let (grant_id, fingerprint) = reply
            .split_at_checked(16)
            .ok_or_else(|| StoreError::Corrupt("request id entry too short".to_owned()))?;
        Ok(Reservation::Existing {
            grant_id: id_from_bytes(grant_id)?,
            fingerprint: fingerprint_text(fingerprint)?,
        })
    }

    async fn create(&self, grant: &Grant, events: &[GrantEvent]) -> Result<bool, StoreError> {
        let record = record::encode_record(grant, 0, events, &[])
            .map_err(|what| StoreError::Corrupt(format!("grant {}: {what}", grant.id)))?;
        let create = async {
            redis::cmd("SET")
                .arg(self.record_key(grant.id))
                .arg(record)
                .arg("NX")
                .arg("EXAT")
                .arg(self.expiry(grant.last_moment()))
                .query_async::<Option<String>>(&mut self.connection.clone())
                .await
        };
        // The indexes, the deadline and the queues live in slots of their own, so they are not
        // written in the grant's atomic step, but beside it: sent at once on the same multiplexed
        // connection, so they cost no extra round trip. Repair: an index entry whose grant is
        // missing is skipped by readers and removed; a lost queue entry leaves a grant pending
        // (and expiring: its deadline is read too); an entry whose grant is no longer pending is
        // dropped when a reader meets it. A lost deadline leaves a grant that still reads as
        // expired when its time has passed, only without the `expired` event. (An index entry
        // written for a grant that already existed points at that grant: harmless.)
        let mut queues = redis::pipe();
        if let Some(deadline) = grant.deadline() {
            queues.zadd(self.deadlines_key(), grant.id.to_string(), deadline.unix_timestamp());
        }
        if grant.decision.break_glass {
            queues.zadd(self.break_glass_key(), grant.id.to_string(), 0);
        }
        if grant.state == GrantState::PendingApproval {
            let trim_before =
                GrantId::lower_bound_at(grant.created_at - std::time::Duration::from_secs(MAX_PENDING_SECS));
            queues
                .zadd(self.pending_key(), grant.id.to_string(), 0)
                .cmd("ZREMRANGEBYLEX")
                .arg(self.pending_key())
                .arg("-")
                .arg(format!("({trim_before}"));
        }
        let queued = async {
            if queues.cmd_iter().next().is_none() {
                return Ok(());
            }
            queues.query_async::<()>(&mut self.connection.clone()).await
        };
        let (created, queued) = tokio::join!(create, queued);
        let created = created.map_err(unavailable)?.is_some();
        if let Err(error) = queued {
            // The grant is recorded; what it lacks is repaired as described above.
            tracing::warn!(grant_id = %grant.id, %error, "grant recorded, but not queued or given its deadline");
        }
        // After the record, not beside it: a create that lost a race must index and announce
        // nothing (a race only a retried request id can run).
        if created {
            tokio::join!(
                self.index_or_repair(grant),
                self.outbox.enqueue(&self.connection, grant, grant.state, events),
                self.log_or_repair(grant.id, 0, events.len())
            );
        }
        Ok(created)
    }

    async fn get(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        Ok(self.get_many(&[id]).await?.pop())
    }

    async fn grant_for_access_key(&self, access_key_id: &str) -> Result<Option<GrantId>, StoreError> {
        let id: Option<Vec<u8>> = self
            .connection
            .clone()
            .get(self.access_key_key(access_key_id))
            .await
            .map_err(unavailable)?;
        id.map(|id| id_from_bytes(&id)).transpose()
    }

    async fn issuance_with_key(&self, grant: GrantId, access_key_id: &str) -> Result<Option<Issuance>, StoreError> {
        Ok(self
            .read_records(&[grant], record::Policy::Skip)
            .await?
            .pop()
            .flatten()
            .and_then(|decoded| {
                decoded
                    .issuances
                    .into_iter()
                    .find(|issuance| issuance.access_key_id == access_key_id)
            }))
    }

    async fn list_index(
        &self,
        index: &GrantIndex,
        before: Option<&AuditCursor>,
        since: Option<OffsetDateTime>,
        limit: usize,
    ) -> Result<IndexPage, StoreError> {
        self.index_page(index, before, since, limit).await
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
        let max = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let ids: Vec<String> = self
            .connection
            .clone()
            .zrevrangebylex_limit(&key, max, "-", 0, isize::try_from(limit + 1).unwrap_or(isize::MAX))
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
        let (queued, done): (Vec<Grant>, Vec<Grant>) = self
            .get_many(&ids)
            .await?
            .into_iter()
            .partition(|grant| queue.holds(grant));
        // Grants decided or cancelled leave the queue as readers meet them; ids whose grant is
        // gone are skipped by get_many, and the trim drops every entry older than any pending
        // grant can be. (Whether a pending grant has timed out is the broker's call, by its clock.)
        if !done.is_empty() {
            let _: i64 = self
                .connection
                .clone()
                .zrem(&key, done.iter().map(|grant| grant.id.to_string()).collect::<Vec<_>>())
                .await
                .map_err(unavailable)?;
        }
        Ok((queued, next))
    }

    async fn change_if_state(&self, grant: &Grant, change: Change<'_>) -> Result<Appended, StoreError> {
        let Recorded {
            appended,
            first_event,
            unacknowledged,
        } = self.record_change(grant, &change).await?;
        if appended != Appended::Yes {
            return Ok(appended);
        }
        let extension_waits = change
            .extensions
            .and_then(|extensions| extensions.after.last())
            .is_some_and(|last| last.state == ExtensionState::Pending);
        if extension_waits {
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
        self.beside_change(grant, change.to.unwrap_or(grant.state), change.events, first_event)
            .await;
        // The change stands on the primary (and is logged); the caller learns it may not survive
        // a failover.
        unacknowledged.map_or(Ok(appended), Err)
    }

    async fn audit_events(
        &self,
        after: Option<&AuditCursor>,
        before: Option<&AuditCursor>,
        newest_first: bool,
        limit: usize,
        wait: Option<Duration>,
    ) -> Result<AuditRead, StoreError> {
        self.read_audit(after, before, newest_first, limit, wait).await
    }

    async fn log_service_event(&self, event: &ServiceEvent) -> Result<(), StoreError> {
        self.log_service(event).await
    }

    async fn clean_live_index(&self, limit: usize) -> Result<usize, StoreError> {
        self.clean_live(limit).await
    }

    async fn repair(&self) -> Result<usize, StoreError> {
        self.retry_repairs().await
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
        let events = std::slice::from_ref(event);
        let change = Change {
            attempt_limit: None,
            ..Change::append(&GrantState::ALL, events)
        };
        let recorded = self.record_change(grant, &change).await?;
        if recorded.appended == Appended::Yes {
            self.beside_change(grant, grant.state, events, recorded.first_event)
                .await;
        }
        recorded.unacknowledged.map_or(Ok(()), Err)
    }
}
