//! Delivery: every replica runs one [`DeliveryWorker`], a consumer in the stream's consumer
//! group, so each notification is handed to one worker at a time.
//!
//! One step of the loop:
//!
//! 1. **promote**: retries whose time has come move from the retry set back into the stream
//!    (one script: exactly one replica moves each);
//! 2. **reclaim** (every half `claim_min_idle`): entries another worker took but never settled
//!    (it crashed or lost Redis) for longer than `claim_min_idle` are taken over (`XAUTOCLAIM`);
//! 3. **read**: otherwise, new entries (`XREADGROUP ... BLOCK`);
//! 4. **attempt** the batch concurrently: a signed POST bounded by the webhook's timeout, then
//!    **settle** each entry in one script: acknowledge it and delete it from the stream, and
//!    count it delivered (2xx), or file it in the retry set due after an exponential backoff
//!    with jitter, or, once it has used its attempts, in the dead list. The script settles
//!    only if its acknowledgement was the one that took the entry out of the pending list, so
//!    an entry reclaimed while a slow worker still held it is filed once.
//!
//! Timing comes from Redis's clock (`TIME` in the scripts), so replicas with skewed clocks agree
//! on when a retry is due.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use redis::{Script, Value};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tracing::Instrument as _;

use super::{DEAD_BOUND, GROUP, Keys, RECORD_VERSION, Record, STREAM_BOUND, Webhook, signing};
use crate::adapters::redis_store::{
    RedisSettings,
    connection::{Endpoint, Timeouts},
    reply,
};

/// How the worker paces itself. The defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How long one read waits for new entries (and so how late a due retry can be promoted).
    pub block: Duration,
    /// Entries read (and attempted concurrently) at once.
    pub batch: usize,
    /// Wait before the second attempt; it doubles for each further one, up to `max_backoff`.
    /// Each wait is drawn between half and all of that (jitter), so receivers recovering from
    /// an outage are not hit by every retry at once.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// An entry a worker took and has not settled for this long is taken over by another (its
    /// worker died). Raised to twice the longest webhook timeout if below it: a live worker's
    /// attempt must not be stolen, which would send it twice.
    pub claim_min_idle: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            block: Duration::from_secs(1),
            batch: 16,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            claim_min_idle: Duration::from_secs(30),
        }
    }
}

/// Pause after Redis failed a step, so a Redis outage is not a busy loop.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// A consumer that has held nothing for this long is removed from the group (each process
/// joins under a fresh name; without this, every restart would leave one behind).
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);

/// Retries promoted per step at most.
const PROMOTE_LIMIT: usize = 100;

/// Longest error text kept with a record.
const MAX_ERROR_CHARS: usize = 300;

/// KEYS: stream, retry, dead, stats. ARGV: group, entry id, outcome (`delivered`, `retry`,
/// `dead`), record, retry delay (ms) or dead-list bound.
/// Settles only when this XACK took the entry out of the pending list; returns 1 then, else 0.
const SETTLE: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[3] == 'retry' then
  local now = redis.call('TIME')
  local due = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[5])
  redis.call('ZADD', KEYS[2], string.format('%d', due), ARGV[4])
  redis.call('HINCRBY', KEYS[4], 'retried', 1)
elseif ARGV[3] == 'dead' then
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
  redis.call('HINCRBY', KEYS[4], 'dead', 1)
else
  redis.call('HINCRBY', KEYS[4], 'delivered', 1)
end
return 1
";

/// KEYS: retry, stream. ARGV: limit, stream bound. Moves due records back into the stream;
/// returns how many.
const PROMOTE: &str = r"
local now = redis.call('TIME')
local ms = string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000))
local due = redis.call('ZRANGE', KEYS[1], '-inf', ms, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
for _, record in ipairs(due) do
  redis.call('ZREM', KEYS[1], record)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'n', record)
end
return #due
";

type Https = HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One stream entry: its id and its record, or why it cannot be read.
struct Entry {
    id: String,
    record: Result<Record, String>,
}

enum Settle {
    Delivered,
    Retry(Duration),
    Dead,
}

impl Settle {
    fn name(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry(_) => "retry",
            Self::Dead => "dead",
        }
    }
}

/// What the concurrent attempts of a batch share.
struct Shared {
    connection: crate::adapters::redis_store::Traced,
    keys: Keys,
    webhooks: HashMap<String, Webhook>,
    http: Https,
    settings: DeliverySettings,
    consumer: String,
    settle: Script,
    promote: Script,
}

/// The delivery loop of one broker process. See the module documentation.
pub struct DeliveryWorker {
    shared: Arc<Shared>,
    group_ready: bool,
    last_claim: Option<Instant>,
}

impl DeliveryWorker {
    /// A worker on its own connection (`client` is the store's, with its TLS settings): its reads
    /// block for [`DeliverySettings::block`] and must not hold up the store's calls, which share
    /// one multiplexed connection. Connects lazily, like the store.
    pub fn new(
        endpoint: &Endpoint,
        redis: &RedisSettings,
        webhooks: Vec<Webhook>,
        mut settings: DeliverySettings,
    ) -> Result<Self, String> {
        let longest = webhooks.iter().map(|webhook| webhook.timeout).max().unwrap_or_default();
        settings.claim_min_idle = settings.claim_min_idle.max(longest * 2);
        settings.batch = settings.batch.max(1);
        let timeouts = Timeouts {
            connect: redis.connect_timeout,
            response: settings.block + redis.response_timeout,
        };
        let connection = crate::adapters::redis_store::Traced(
            endpoint
                .shared(timeouts)
                .map_err(|error| format!("cannot set up the Redis connection: {error}"))?,
        );
        Ok(Self {
            shared: Arc::new(Shared {
                connection,
                keys: Keys::new(&redis.key_prefix),
                webhooks: webhooks
                    .into_iter()
                    .map(|webhook| (webhook.name.clone(), webhook))
                    .collect(),
                http: http_client()?,
                settings,
                consumer: format!("gb-{}", uuid::Uuid::now_v7()),
                settle: crate::adapters::redis_store::traced::script("webhook_settle", SETTLE),
                promote: crate::adapters::redis_store::traced::script("webhook_promote", PROMOTE),
            }),
            group_ready: false,
            last_claim: None,
        })
    }

    /// This process's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// Delivers until the task is aborted (server shutdown). An attempt cut short by the abort is
    /// reclaimed by another worker after `claim_min_idle`, and sent again.
    pub async fn run(mut self) {
        let mut names: Vec<&str> = self.shared.webhooks.keys().map(String::as_str).collect();
        names.sort_unstable();
        tracing::info!(consumer = %self.shared.consumer, webhooks = ?names, "webhook deliveries started");
        loop {
            if let Err(error) = self.step().await {
                tracing::warn!(%error, "webhook deliveries: Redis failed; retrying");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }

    /// One round: promote due retries, reclaim abandoned entries or read new ones, attempt them.
    /// Returns how many entries were attempted.
    pub async fn step(&mut self) -> Result<usize, redis::RedisError> {
        let shared = Arc::clone(&self.shared);
        if !self.group_ready {
            shared.create_group().await?;
            self.group_ready = true;
        }
        shared.promote().await?;
        let mut entries = Vec::new();
        let claim_interval = shared.settings.claim_min_idle / 2;
        if self.last_claim.is_none_or(|at| at.elapsed() >= claim_interval) {
            entries = shared.reclaim().await?;
            // A full batch may mean more are waiting: claim again next round.
            if entries.len() < shared.settings.batch {
                self.last_claim = Some(Instant::now());
                if let Err(error) = shared.forget_idle_consumers().await {
                    tracing::debug!(%error, "could not tidy the consumer group");
                }
            }
        }
        if entries.is_empty() {
            entries = match shared.read().await {
                Ok(entries) => entries,
                // The stream or group was deleted (FLUSHALL, an operator): create it again.
                Err(error) if error.code() == Some("NOGROUP") => {
                    self.group_ready = false;
                    return Ok(0);
                }
                Err(error) => return Err(error),
            };
        }
        let count = entries.len();
        let mut attempts = tokio::task::JoinSet::new();
        for entry in entries {
            let shared = Arc::clone(&shared);
            attempts.spawn(async move { shared.attempt(entry).await });
        }
        while attempts.join_next().await.is_some() {}
        Ok(count)
    }
}

/// Hyper's pooled client over rustls (aws-lc, the provider the rest of the tree uses) trusting
/// the system's CA certificates; plain http is allowed where the configuration allowed it.
fn http_client() -> Result<Https, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(Arc::clone(&provider))
    {
        Ok(builder) => builder,
        Err(error) => {
            // Not fatal: loopback http webhooks still work, https ones fail (and say why).
            tracing::warn!(%error, "no system CA certificates: https webhooks cannot be verified");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("cannot set up TLS: {error}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(HttpClient::builder(TokioExecutor::new()).build(connector))
}

/// The wait before the next attempt, `attempts` having been made: `initial * 2^(attempts-1)`,
/// capped, then drawn between half and all of it with `random`.
pub fn backoff(settings: &DeliverySettings, attempts: u32, random: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    let full = settings
        .initial_backoff
        .saturating_mul(1u32 << doublings)
        .min(settings.max_backoff);
    let full_ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
    let half = full_ms / 2;
    Duration::from_millis(half + random % (full_ms - half + 1))
}

fn random() -> u64 {
    // The low bits of a UUIDv7 are random (74 bits): no other source needed for jitter.
    u64::try_from(uuid::Uuid::now_v7().as_u128() & u128::from(u64::MAX)).unwrap_or(0)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An error and its sources on one line, clipped.
fn describe(error: &dyn std::error::Error) -> String {
    crate::domain::clip(&crate::domain::error_chain(error), MAX_ERROR_CHARS)
}

impl Shared {
    async fn create_group(&self) -> Result<(), redis::RedisError> {
        // From the start of the stream, not `$`: entries queued before any worker ever ran (a
        // fresh deployment) are delivered too. Delivered entries are deleted, so nothing repeats.
        let created: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.connection.clone())
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn promote(&self) -> Result<(), redis::RedisError> {
        let moved: i64 = self
            .promote
            .key(&self.keys.retry)
            .key(&self.keys.stream)
            .arg(PROMOTE_LIMIT)
            .arg(STREAM_BOUND)
            .invoke_async(&mut self.connection.clone())
            .await?;
        if moved > 0 {
            tracing::debug!(moved, "due webhook retries queued again");
        }
        Ok(())
    }

    async fn read(&self) -> Result<Vec<Entry>, redis::RedisError> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.settings.batch)
            .arg("BLOCK")
            .arg(millis(self.settings.block).max(1))
            .arg("STREAMS")
            .arg(&self.keys.stream)
            .arg(">")
            .query_async(&mut self.connection.clone())
            .await?;
        decode_read(reply).map_err(|what| corrupt("XREADGROUP", what))
    }

    async fn reclaim(&self) -> Result<Vec<Entry>, redis::RedisError> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(millis(self.settings.claim_min_idle))
            .arg("0-0")
            .arg("COUNT")
            .arg(self.settings.batch)
            .query_async(&mut self.connection.clone())
            .await?;
        let (entries, gone) = decode_autoclaim(reply).map_err(|what| corrupt("XAUTOCLAIM", what))?;
        if !gone.is_empty() {
            // Trimmed from the stream (past STREAM_BOUND) while a worker held them: lost.
            tracing::warn!(count = gone.len(), ids = ?gone, "webhook notifications trimmed before delivery: lost");
            let _: i64 = redis::cmd("HINCRBY")
                .arg(&self.keys.stats)
                .arg("lost")
                .arg(gone.len())
                .query_async(&mut self.connection.clone())
                .await?;
        }
        for entry in &entries {
            tracing::info!(entry = %entry.id, "webhook notification taken over from a worker that did not finish it");
        }
        Ok(entries)
    }

    /// Removes consumers that hold nothing and have not read for an hour (earlier processes).
    async fn forget_idle_consumers(&self) -> Result<(), redis::RedisError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .query_async(&mut self.connection.clone())
            .await?;
        let consumers = decode_consumers(reply).map_err(|what| corrupt("XINFO CONSUMERS", what))?;
        let limit = millis(FORGET_CONSUMERS_AFTER);
        for (name, pending, idle) in consumers {
            if name != self.consumer && pending == 0 && idle > limit {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.keys.stream)
                    .arg(GROUP)
                    .arg(&name)
                    .query_async(&mut self.connection.clone())
                    .await?;
                tracing::debug!(consumer = %name, "idle webhook consumer removed");
            }
        }
        Ok(())
    }

    /// Attempts one entry and settles it. Never fails: what goes wrong is logged, and an entry
    /// that could not be settled stays pending, to be reclaimed.
    async fn attempt(&self, entry: Entry) {
        let mut record = match entry.record {
            Ok(record) => record,
            Err(why) => {
                let unreadable = Record {
                    v: RECORD_VERSION,
                    delivery_id: String::new(),
                    webhook: String::new(),
                    event: String::new(),
                    attempts: 0,
                    last_error: Some(why.clone()),
                    dead_at: now_text(),
                    body: String::new(),
                };
                tracing::warn!(entry = %entry.id, error = %why, "unreadable webhook notification moved to the dead list");
                self.file(&entry.id, Settle::Dead, &unreadable).await;
                return;
            }
        };
        let Some(webhook) = self.webhooks.get(&record.webhook) else {
            // Replicas should share their webhook configuration; a notification for a webhook
            // this one does not know is kept in the dead list rather than retried forever.
            record.last_error = Some("no webhook of this name is configured".to_owned());
            record.dead_at = now_text();
            tracing::warn!(webhook = %record.webhook, delivery_id = %record.delivery_id, "notification for an unknown webhook moved to the dead list");
            self.file(&entry.id, Settle::Dead, &record).await;
            return;
        };
        let span = tracing::info_span!(
            "webhook",
            otel.name = "webhook deliver",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            grant_broker.webhook = %webhook.name,
            grant_broker.event = %record.event,
            grant_broker.delivery_id = %record.delivery_id,
            grant_broker.attempt = record.attempts.saturating_add(1),
            http.response.status_code = tracing::field::Empty,
            grant_broker.outcome = tracing::field::Empty,
        );
        self.deliver(webhook, record, &entry.id, &span)
            .instrument(span.clone())
            .await;
    }

    /// One attempt at `record` for `webhook`, and its settlement, inside `span`.
    async fn deliver(&self, webhook: &Webhook, mut record: Record, id: &str, span: &tracing::Span) {
        let (answered, result) = self.post(webhook, &record).await;
        record.attempts = record.attempts.saturating_add(1);
        if let Some(status) = answered {
            span.record("http.response.status_code", status);
        }
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        let outcome = match result {
            Ok(status) => {
                tracing::info!(
                    webhook = %webhook.name, event = %record.event, delivery_id = %record.delivery_id,
                    attempt = record.attempts, status, "notification delivered"
                );
                Settle::Delivered
            }
            Err(error) if record.attempts >= webhook.max_attempts => {
                tracing::warn!(
                    webhook = %webhook.name, event = %record.event, delivery_id = %record.delivery_id,
                    attempts = record.attempts, %error, "notification not delivered: attempts used up, moved to the dead list"
                );
                record.last_error = Some(error);
                record.dead_at = now_text();
                Settle::Dead
            }
            Err(error) => {
                let delay = backoff(&self.settings, record.attempts, random());
                tracing::warn!(
                    webhook = %webhook.name, event = %record.event, delivery_id = %record.delivery_id,
                    attempt = record.attempts, retry_in_ms = millis(delay), %error, "notification attempt failed"
                );
                record.last_error = Some(error);
                Settle::Retry(delay)
            }
        };
        span.record("grant_broker.outcome", outcome.name());
        crate::telemetry::metrics::metrics().webhook_attempt(&webhook.name, outcome.name());
        self.file(id, outcome, &record).await;
    }

    /// One signed POST: the HTTP status, when the receiver answered, and Ok with it when it is
    /// 2xx; redirects are not followed (a receiver that moved must be reconfigured, not followed
    /// blindly with a signed body).
    async fn post(&self, webhook: &Webhook, record: &Record) -> (Option<u16>, Result<u16, String>) {
        let sent = self.send(webhook, record).await;
        match sent {
            Ok(status) if (200..300).contains(&status) => (Some(status), Ok(status)),
            Ok(status) => {
                let named =
                    hyper::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |code| code.to_string());
                (Some(status), Err(format!("HTTP {named}")))
            }
            Err(error) => (None, Err(error)),
        }
    }

    /// The POST itself: the status of the answer, whatever it is.
    async fn send(&self, webhook: &Webhook, record: &Record) -> Result<u16, String> {
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = signing::signature(webhook.secret.expose().as_bytes(), timestamp, record.body.as_bytes())
            .map_err(|error| error.to_string())?;
        let request = hyper::Request::post(webhook.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("grant-broker/", env!("CARGO_PKG_VERSION")),
            )
            .header(signing::TIMESTAMP_HEADER, timestamp.to_string())
            .header(signing::SIGNATURE_HEADER, signature)
            .header(signing::DELIVERY_HEADER, record.delivery_id.as_str())
            .header(signing::EVENT_HEADER, record.event.as_str())
            .body(Full::new(Bytes::from(record.body.clone())))
            .map_err(|error| format!("cannot build the request: {error}"))?;
        match tokio::time::timeout(webhook.timeout, self.http.request(request)).await {
            Err(_) => Err(format!("no answer within {} ms", webhook.timeout.as_millis())),
            Ok(Err(error)) => Err(describe(&error)),
            Ok(Ok(response)) => Ok(response.status().as_u16()),
        }
    }

    /// Settles an entry (see [`SETTLE`]); logs what it could not do.
    async fn file(&self, id: &str, outcome: Settle, record: &Record) {
        let encoded = match serde_json::to_string(record) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::warn!(entry = %id, %error, "cannot encode a webhook record; left pending");
                return;
            }
        };
        let last = match &outcome {
            Settle::Retry(delay) => millis(*delay),
            _ => u64::try_from(DEAD_BOUND).unwrap_or(u64::MAX),
        };
        let settled: Result<i64, _> = self
            .settle
            .key(&self.keys.stream)
            .key(&self.keys.retry)
            .key(&self.keys.dead)
            .key(&self.keys.stats)
            .arg(GROUP)
            .arg(id)
            .arg(outcome.name())
            .arg(encoded)
            .arg(last)
            .invoke_async(&mut self.connection.clone())
            .await;
        match settled {
            Ok(1) => {}
            Ok(_) => tracing::info!(
                entry = %id, delivery_id = %record.delivery_id,
                "another worker took this notification over and settled it"
            ),
            Err(error) => tracing::warn!(
                entry = %id, delivery_id = %record.delivery_id, %error,
                "could not settle a webhook notification: it will be reclaimed and sent again"
            ),
        }
    }
}

fn now_text() -> Option<String> {
    OffsetDateTime::now_utc().format(&Rfc3339).ok()
}

fn corrupt(command: &str, what: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        format!("{command}: {what}"),
    ))
}

/// `[id, [field, value, ...]]`; the record is field `n`. Nil fields (an entry deleted while
/// pending) read as an unreadable record.
fn decode_entry(value: Value) -> Result<Entry, String> {
    let [id, fields]: [Value; 2] = reply::array_of(value, 2)?
        .try_into()
        .map_err(|_| "an entry is not [id, fields]".to_owned())?;
    let id = reply::text(id)?;
    let record = match fields {
        Value::Nil => Err("the entry was deleted before it was delivered".to_owned()),
        fields => {
            let fields = reply::texts(fields)?;
            match fields
                .chunks(2)
                .find(|pair| pair.first().is_some_and(|name| name == "n"))
            {
                Some([_, text]) => serde_json::from_str::<Record>(text)
                    .map_err(|error| format!("unreadable record ({error}): {}", crate::domain::clip(text, 200))),
                _ => Err("the entry has no field `n`".to_owned()),
            }
        }
    };
    Ok(Entry { id, record })
}

fn decode_entries(value: Value) -> Result<Vec<Entry>, String> {
    match value {
        Value::Array(entries) => entries.into_iter().map(decode_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err("expected an array of entries".to_owned()),
    }
}

/// XREADGROUP's reply for one stream: nil (nothing within BLOCK), `[[stream, entries]]`, or a
/// map (RESP3).
fn decode_read(value: Value) -> Result<Vec<Entry>, String> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| {
                let [_, entries]: [Value; 2] = reply::array_of(stream, 2)?
                    .try_into()
                    .map_err(|_| "a stream is not [name, entries]".to_owned())?;
                Ok(entries)
            })
            .collect::<Result<Vec<_>, String>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err("expected nil, an array or a map".to_owned()),
    };
    let mut all = Vec::new();
    for entries in streams {
        all.extend(decode_entries(entries)?);
    }
    Ok(all)
}

/// XAUTOCLAIM's reply: `[cursor, entries, deleted ids]` (the last since Redis 7).
fn decode_autoclaim(value: Value) -> Result<(Vec<Entry>, Vec<String>), String> {
    let Value::Array(parts) = value else {
        return Err("expected an array".to_owned());
    };
    let mut parts = parts.into_iter();
    let (Some(_cursor), Some(entries)) = (parts.next(), parts.next()) else {
        return Err("expected [cursor, entries, ...]".to_owned());
    };
    let gone = match parts.next() {
        Some(ids) => reply::texts(ids)?,
        None => Vec::new(),
    };
    Ok((decode_entries(entries)?, gone))
}

/// XINFO CONSUMERS: per consumer `name`, `pending`, `idle` (ms), as flat pairs or a map.
fn decode_consumers(value: Value) -> Result<Vec<(String, u64, u64)>, String> {
    let Value::Array(consumers) = value else {
        return Err("expected an array".to_owned());
    };
    consumers
        .into_iter()
        .map(|consumer| {
            let pairs: Vec<(Value, Value)> = match consumer {
                Value::Map(pairs) => pairs,
                Value::Array(flat) => {
                    let mut flat = flat.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        pairs.push((name, value));
                    }
                    pairs
                }
                _ => return Err("expected a consumer's fields".to_owned()),
            };
            let (mut name, mut pending, mut idle) = (None, None, None);
            for (field, value) in pairs {
                match reply::text(field)?.as_str() {
                    "name" => name = Some(reply::text(value)?),
                    "pending" => pending = Some(reply::count(value)?),
                    "idle" => idle = Some(reply::count(value)?),
                    _ => {}
                }
            }
            match (name, pending, idle) {
                (Some(name), Some(pending), Some(idle)) => Ok((name, pending, idle)),
                _ => Err("a consumer without name, pending or idle".to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Value {
        Value::BulkString(value.as_bytes().to_vec())
    }

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap_with_jitter_in_the_upper_half() {
        let settings = DeliverySettings::default();
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 256), (10, 300), (40, 300)] {
            let full = Duration::from_secs(full);
            let low = backoff(&settings, attempts, 0);
            let high = backoff(&settings, attempts, u64::MAX - 1);
            assert_eq!(low, full / 2, "attempts {attempts}");
            assert!(high <= full && high >= full / 2, "attempts {attempts}: {high:?}");
            for sample in 0..50 {
                let wait = backoff(&settings, attempts, random().wrapping_add(sample));
                assert!(wait >= full / 2 && wait <= full, "attempts {attempts}: {wait:?}");
            }
        }
        // Jitter spreads retries: a hundred draws are not all the same.
        let draws: std::collections::BTreeSet<_> = (0..100).map(|_| backoff(&settings, 5, random())).collect();
        assert!(draws.len() > 50, "{draws:?}");
    }

    fn record_text() -> String {
        serde_json::to_string(&Record {
            v: 1,
            delivery_id: "d".into(),
            webhook: "w".into(),
            event: "approved".into(),
            attempts: 2,
            last_error: Some("HTTP 500".into()),
            dead_at: None,
            body: "{}".into(),
        })
        .unwrap()
    }

    #[test]
    fn read_replies_decode_in_both_protocols_and_bad_records_are_kept_as_errors() {
        let entry = |id: &str, fields: Vec<Value>| Value::Array(vec![text(id), Value::Array(fields)]);
        let entries = Value::Array(vec![
            entry("1-0", vec![text("n"), text(&record_text())]),
            entry("2-0", vec![text("n"), text("not json")]),
            entry("3-0", vec![text("other"), text("x")]),
            Value::Array(vec![text("4-0"), Value::Nil]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![text("gb:{notify}:stream"), entries.clone()])]);
        let resp3 = Value::Map(vec![(text("gb:{notify}:stream"), entries)]);
        for reply in [resp2, resp3] {
            let decoded = decode_read(reply).unwrap();
            let ids: Vec<_> = decoded.iter().map(|entry| entry.id.as_str()).collect();
            assert_eq!(ids, ["1-0", "2-0", "3-0", "4-0"]);
            let record = decoded[0].record.as_ref().unwrap();
            assert_eq!((record.attempts, record.last_error.as_deref()), (2, Some("HTTP 500")));
            assert!(decoded[1].record.as_ref().unwrap_err().contains("not json"));
            assert!(decoded[2].record.as_ref().unwrap_err().contains("no field `n`"));
            assert!(decoded[3].record.as_ref().unwrap_err().contains("deleted"));
        }
        assert!(decode_read(Value::Nil).unwrap().is_empty());
        assert!(decode_read(Value::Int(3)).is_err());
    }

    #[test]
    fn autoclaim_replies_name_the_entries_and_the_ones_gone() {
        let reply = Value::Array(vec![
            text("0-0"),
            Value::Array(vec![Value::Array(vec![
                text("5-0"),
                Value::Array(vec![text("n"), text(&record_text())]),
            ])]),
            Value::Array(vec![text("4-0")]),
        ]);
        let (entries, gone) = decode_autoclaim(reply).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "5-0");
        assert_eq!(gone, ["4-0"]);
    }

    #[test]
    fn consumers_decode_from_flat_pairs() {
        let consumer = Value::Array(vec![
            text("name"),
            text("gb-1"),
            text("pending"),
            Value::Int(0),
            text("idle"),
            Value::Int(7_200_000),
            text("inactive"),
            Value::Int(7_200_000),
        ]);
        assert_eq!(
            decode_consumers(Value::Array(vec![consumer])).unwrap(),
            [("gb-1".to_owned(), 0, 7_200_000)]
        );
    }
}
