//! The counts behind the limits, in Redis so that they hold across replicas: one key per rate or
//! cap, each in a slot of its own (cluster-ready), each changed by one script.
//!
//! | key | holds |
//! |---|---|
//! | `gb:rate:{caller:<id>}`, `gb:rate:{person:<sha256, 32 hex>}` | a rate's next arrival time (unix µs, [`crate::domain::quota::next_arrival`]), expiring once idle |
//! | `gb:grantee:{<sha256, 32 hex>}:places`, `gb:caller:{<id>}:pending-places` | sorted set: the grants holding a place under the cap, scored by when the place frees itself (unix ms) |
//!
//! The rates of one request are counted in one round trip (pipelined, one script per key); so
//! are a new grant's places. A place frees itself when its grant ends at the latest, so a lost
//! release costs a place for a while, never forever.

use time::OffsetDateTime;

use super::{RedisGrantStore, digest_of, unavailable};
use crate::{
    domain::{
        GrantId,
        quota::{Cap, Exceeded, Rate, WINDOW_MICROS},
    },
    ports::{Quotas, StoreError},
};

/// Counts one request against a rate. KEYS: the rate. ARGV: the interval and the window (µs).
/// Replies 0, or how long until a request would be let through (µs). The arithmetic of
/// `domain::quota::next_arrival`, on the clock of the Redis node that holds the key: with each
/// broker's own clock, requests through several brokers arrive out of their clocks' order, and
/// one stamped a few microseconds before the first of a burst finds the burst spent a request
/// early (3 of 12 refused too soon, through three processes).
pub(super) const RATE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now or tat > now + 2 * tonumber(ARGV[2]) then tat = now end
local next = tat + tonumber(ARGV[1])
local ahead = next - now - tonumber(ARGV[2])
if ahead > 0 then return ahead end
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000))
return 0
";

/// Holds a place for a grant under a cap. KEYS: the cap. ARGV: grant id, the cap, until and now
/// (unix ms). Replies 0 (held, or already held), or how long until the first place frees itself
/// (ms, at least 1). Places whose time has passed are dropped only when the cap looks full, and
/// the key's expiry is moved only when this place outlasts it: four commands for a place taken
/// below the cap, instead of six.
pub(super) const HOLD: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local most = tonumber(ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= most then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
  if redis.call('ZCARD', KEYS[1]) >= most then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(first[2]) - tonumber(ARGV[4]))
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
return 0
";

fn millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl RedisGrantStore {
    fn rate_key(&self, rate: &Rate) -> String {
        match rate {
            Rate::Caller(caller) => format!("{}:rate:{{caller:{caller}}}", self.prefix),
            Rate::Person(person) => format!("{}:rate:{{person:{}}}", self.prefix, digest_of(person)),
        }
    }

    fn cap_key(&self, cap: &Cap) -> String {
        match cap {
            Cap::LiveForGrantee(grantee) => format!("{}:grantee:{{{}}}:places", self.prefix, digest_of(grantee)),
            Cap::PendingForCaller(caller) => format!("{}:caller:{{{caller}}}:pending-places", self.prefix),
        }
    }
}

impl RedisGrantStore {
    /// One round trip of `count` invocations of `script` (`invoke` adds the i-th); only those
    /// that met a node without the script (a restart, a failover; on a cluster, one node of
    /// several) run again, after it is loaded. Never the others: each counts a request or holds
    /// a place, and running it twice would count twice (3 of 12 requests refused too soon,
    /// through three new brokers on a cluster whose nodes had the script or not).
    async fn run_scripts(
        &self,
        script: &redis::Script,
        count: usize,
        invoke: impl Fn(usize, &mut redis::Pipeline),
    ) -> Result<Vec<i64>, StoreError> {
        let no_script = |reply: &redis::RedisResult<i64>| matches!(reply, Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript));
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for at in 0..count {
            invoke(at, &mut pipe);
        }
        let mut replies: Vec<redis::RedisResult<i64>> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let again: Vec<usize> = (0..replies.len()).filter(|&at| no_script(&replies[at])).collect();
        if !again.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors().load_script(script).ignore();
            for &at in &again {
                invoke(at, &mut pipe);
            }
            let retried: Vec<redis::RedisResult<i64>> = pipe
                .query_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?;
            for (at, reply) in again.into_iter().zip(retried) {
                if let Some(slot) = replies.get_mut(at) {
                    *slot = reply;
                }
            }
        }
        replies.into_iter().map(|reply| reply.map_err(unavailable)).collect()
    }
}

impl Quotas for RedisGrantStore {
    async fn count_request(&self, rates: &[(Rate, u32)], _now: OffsetDateTime) -> Result<Option<Exceeded>, StoreError> {
        if rates.is_empty() {
            return Ok(None);
        }
        let replies: Vec<i64> = self
            .run_scripts(&self.rate, rates.len(), |at, pipe| {
                let (rate, per_minute) = &rates[at];
                pipe.invoke_script(
                    self.rate
                        .key(self.rate_key(rate))
                        .arg(WINDOW_MICROS / i64::from((*per_minute).max(1)))
                        .arg(WINDOW_MICROS),
                );
            })
            .await?;
        Ok(rates
            .iter()
            .zip(replies)
            .find(|(_, ahead)| *ahead > 0)
            .map(|((rate, per_minute), ahead)| {
                rate.exceeded(
                    *per_minute,
                    std::time::Duration::from_micros(u64::try_from(ahead).unwrap_or(u64::MAX)),
                )
            }))
    }

    async fn hold_places(
        &self,
        grant: GrantId,
        caps: &[(Cap, u32)],
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<Exceeded>, StoreError> {
        if caps.is_empty() {
            return Ok(None);
        }
        let replies: Vec<i64> = self
            .run_scripts(&self.hold, caps.len(), |at, pipe| {
                let (cap, most) = &caps[at];
                pipe.invoke_script(
                    self.hold
                        .key(self.cap_key(cap))
                        .arg(grant.to_string())
                        .arg(*most)
                        .arg(millis(until))
                        .arg(millis(now)),
                );
            })
            .await?;
        let Some(((cap, most), wait)) = caps.iter().zip(&replies).find(|(_, wait)| **wait > 0) else {
            return Ok(None);
        };
        // Full: give back what the other caps gave (a place an earlier attempt held too: this
        // grant is not recorded, so it holds nothing).
        let taken: Vec<Cap> = caps
            .iter()
            .zip(&replies)
            .filter(|(_, wait)| **wait == 0)
            .map(|((cap, _), _)| cap.clone())
            .collect();
        self.release_places(grant, &taken).await?;
        Ok(Some(cap.exceeded(
            *most,
            std::time::Duration::from_millis(u64::try_from(*wait).unwrap_or(u64::MAX)),
        )))
    }

    async fn release_places(&self, grant: GrantId, caps: &[Cap]) -> Result<(), StoreError> {
        if caps.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for cap in caps {
            pipe.cmd("ZREM").arg(self.cap_key(cap)).arg(grant.to_string()).ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(unavailable)
    }
}
