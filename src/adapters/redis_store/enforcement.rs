//! Revocation work in Redis, shared by every broker replica (see `ports::EnforcementStore`).
//!
//! Keys (`gb` is the configured prefix; every key of one role shares the hash tag `{<role arn>}`,
//! so each step below is one atomic script in one Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `gb:role:{<arn>}` | hash | `desired` (bumped by every change of what to deny), `written` (the `desired` last written), `digest` (of the document last written), `role_id`, `max_session`, `cutoff`/`cutoff_until`/`cutoff_reason` (a token-issue-time cutoff, unix s), `next_check` (unix s: an entry or the cutoff expires, or the policy is to be verified), `retry_at` (unix s), `failures`, `error` |
//! | `gb:role:{<arn>}:entries` | sorted set | revoked grants, member `<grant id>@<revoked at, unix s>@<RoleIds of its sessions, comma-separated; `*` for a session STS never reported>`, scored by when their sessions expire |
//! | `gb:role:{<arn>}:unmarked` | set | grant ids whose enforcement is still to be recorded on the grant |
//! | `gb:role:{<arn>}:lease` | string | the lease token of the replica writing the role's policy (expires) |
//! | `gb:enforce:grants` | sorted set | grants whose revocation may still need an entry, scored by when they were noted (ms) |

use std::time::Duration;

use redis::{AsyncCommands, Script, Value};
use time::OffsetDateTime;

use super::{RedisGrantStore, reply, unavailable};
use crate::{
    domain::{
        GrantId, SessionRoles,
        revocation::{Cutoff, RevokedEntry},
    },
    ports::{EnforcementStore, Lease, Leased, RoleFacts, RoleRevocations, RoleSummary, StoreError},
};

/// KEYS: role, entries, unmarked. ARGV: member, until (unix s), grant id.
const ADD_ENTRY: &str = r"
local changed = redis.call('ZADD', KEYS[2], 'GT', 'CH', ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
if changed > 0 then redis.call('HINCRBY', KEYS[1], 'desired', 1) end
return changed
";

/// KEYS: role, entries, unmarked. ARGV: cutoff (unix s), until (unix s), reason, now (unix s).
/// Entries revoked before the cutoff are covered by it: their grants are marked again.
const SET_CUTOFF: &str = r"
local at, untl, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local current = tonumber(redis.call('HGET', KEYS[1], 'cutoff') or '0')
local current_until = tonumber(redis.call('HGET', KEYS[1], 'cutoff_until') or '0')
if current_until > now and current >= at then return 0 end
if current_until > untl then untl = current_until end
redis.call('HSET', KEYS[1], 'cutoff', at, 'cutoff_until', untl, 'cutoff_reason', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'desired', 1)
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local id, revoked = string.match(member, '^([^@]+)@(%d+)@')
  if id and tonumber(revoked) < at then redis.call('SADD', KEYS[3], id) end
end
return 1
";

/// KEYS: role, entries, lease. ARGV: token, version, digest, role id, max session, now, verify by
/// (unix s; 0: nothing to verify).
/// A writer whose lease expired may have overwritten a newer document with its own: the role is
/// then marked for another write (and the digest forgotten, so it is not skipped as unchanged).
const RECORD_WRITTEN: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'desired', 1)
  redis.call('HDEL', KEYS[1], 'digest')
  return 'lost'
end
local now = tonumber(ARGV[6])
local written = tonumber(redis.call('HGET', KEYS[1], 'written') or '0')
if tonumber(ARGV[2]) > written then redis.call('HSET', KEYS[1], 'written', ARGV[2]) end
redis.call('HSET', KEYS[1], 'digest', ARGV[3], 'role_id', ARGV[4], 'max_session', ARGV[5], 'failures', 0)
redis.call('HDEL', KEYS[1], 'retry_at', 'error')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local next_check = nil
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then next_check = tonumber(first[2]) end
local cutoff_until = tonumber(redis.call('HGET', KEYS[1], 'cutoff_until') or '0')
if cutoff_until > 0 and cutoff_until <= now then
  redis.call('HDEL', KEYS[1], 'cutoff', 'cutoff_until', 'cutoff_reason')
elseif cutoff_until > 0 and (next_check == nil or cutoff_until < next_check) then
  next_check = cutoff_until
end
local verify_by = tonumber(ARGV[7])
if next_check and verify_by > 0 and verify_by < next_check then next_check = verify_by end
if next_check then redis.call('HSET', KEYS[1], 'next_check', next_check) else redis.call('HDEL', KEYS[1], 'next_check') end
return 'ok'
";

/// KEYS: role, lease. ARGV: token, error, retry at (unix s).
const RECORD_FAILURE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'lost' end
redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'error', ARGV[2], 'retry_at', ARGV[3])
return 'ok'
";

/// KEYS: lease. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The role hash's fields, its entries with their scores, and the grants to mark.
type RoleReply = (Vec<Option<String>>, Vec<(String, f64)>, Vec<String>);

/// Fields of the role hash a summary reads, in order.
const SUMMARY_FIELDS: [&str; 8] = [
    "desired",
    "written",
    "next_check",
    "retry_at",
    "cutoff",
    "cutoff_until",
    "cutoff_reason",
    "error",
];

fn corrupt(role: &str) -> impl Fn(String) -> StoreError + '_ {
    move |what| StoreError::Corrupt(format!("role {role}: {what}"))
}

fn unix(seconds: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|error| format!("time {seconds}: {error}"))
}

/// The role ids of an entry's sessions, as its member spells them: `*` stands for a session STS
/// never reported (denied under the role's RoleId as IAM has it when the policy is written).
const UNREPORTED: &str = "*";

/// An entry's sorted-set member: `<grant id>@<revoked at, unix s>@<role id>,<role id>[,*]`.
fn entry_member(entry: &RevokedEntry) -> String {
    let mut roles: Vec<&str> = entry.roles.known.iter().map(String::as_str).collect();
    if entry.roles.unreported {
        roles.push(UNREPORTED);
    }
    format!(
        "{}@{}@{}",
        entry.grant,
        entry.revoked_at.unix_timestamp(),
        roles.join(",")
    )
}

fn entry_from(member: &str, until: f64) -> Result<RevokedEntry, String> {
    let mut parts = member.splitn(3, '@');
    let (Some(id), Some(revoked), Some(roles)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("entry `{member}`"));
    };
    let revoked: i64 = revoked.parse().map_err(|_| format!("entry `{member}`"))?;
    let mut session_roles = SessionRoles::default();
    for role in roles.split(',').filter(|role| !role.is_empty()) {
        if role == UNREPORTED {
            session_roles.unreported = true;
        } else {
            session_roles.known.push(role.to_owned());
        }
    }
    Ok(RevokedEntry {
        grant: GrantId::parse(id)?,
        revoked_at: unix(revoked)?,
        until: unix(until as i64)?,
        roles: session_roles,
    })
}

/// The scripts of this module, loaded once per store.
pub(super) struct EnforcementScripts {
    add_entry: Script,
    set_cutoff: Script,
    record_written: Script,
    record_failure: Script,
    release: Script,
}

impl Default for EnforcementScripts {
    fn default() -> Self {
        Self {
            add_entry: super::traced::script("add_entry", ADD_ENTRY),
            set_cutoff: super::traced::script("set_cutoff", SET_CUTOFF),
            record_written: super::traced::script("record_written", RECORD_WRITTEN),
            record_failure: super::traced::script("record_failure", RECORD_FAILURE),
            release: super::traced::script("release", RELEASE),
        }
    }
}

impl RedisGrantStore {
    fn role_key(&self, role_arn: &str) -> String {
        format!("{}:role:{{{role_arn}}}", self.prefix)
    }

    fn role_part(&self, role_arn: &str, part: &str) -> String {
        format!("{}:role:{{{role_arn}}}:{part}", self.prefix)
    }

    fn enforce_queue_key(&self) -> String {
        format!("{}:enforce:grants", self.prefix)
    }

    /// Parses a summary from the values of [`SUMMARY_FIELDS`].
    fn summary(role: &str, values: Vec<Option<String>>) -> Result<RoleSummary, StoreError> {
        let corrupt = corrupt(role);
        let number = |index: usize| -> Result<Option<i64>, StoreError> {
            values
                .get(index)
                .and_then(Option::as_deref)
                .map(|text| {
                    text.parse::<i64>()
                        .map_err(|_| corrupt(format!("`{}` is `{text}`", SUMMARY_FIELDS[index])))
                })
                .transpose()
        };
        let time = |index: usize| -> Result<Option<OffsetDateTime>, StoreError> {
            number(index)?.map(unix).transpose().map_err(&corrupt)
        };
        let cutoff = match (time(4)?, time(5)?) {
            (Some(at), Some(until)) => Some(Cutoff {
                at,
                until,
                reason: values.get(6).cloned().flatten().unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(RoleSummary {
            desired: u64::try_from(number(0)?.unwrap_or(0)).unwrap_or(0),
            written: u64::try_from(number(1)?.unwrap_or(0)).unwrap_or(0),
            next_check: time(2)?,
            retry_at: time(3)?,
            cutoff,
            last_error: values.get(7).cloned().flatten(),
        })
    }
}

impl EnforcementStore for RedisGrantStore {
    async fn queue_grant(&self, id: GrantId, at: OffsetDateTime) -> Result<(), StoreError> {
        let millis = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let _: i64 = self
            .connection
            .clone()
            .zadd(self.enforce_queue_key(), id.to_string(), millis)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn queued_grants(&self, limit: usize) -> Result<Vec<(GrantId, OffsetDateTime)>, StoreError> {
        let entries: Value = redis::cmd("ZRANGE")
            .arg(self.enforce_queue_key())
            .arg(0)
            .arg(isize::try_from(limit).unwrap_or(isize::MAX) - 1)
            .arg("WITHSCORES")
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let texts = reply::texts(entries).map_err(|what| StoreError::Corrupt(format!("enforcement queue: {what}")))?;
        texts
            .chunks(2)
            .map(|pair| match pair {
                [id, score] => {
                    let id = GrantId::parse(id).map_err(StoreError::Corrupt)?;
                    let millis: f64 = score
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("enforcement queue score `{score}`")))?;
                    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis as i64) * 1_000_000)
                        .map_err(|error| StoreError::Corrupt(format!("enforcement queue score: {error}")))?;
                    Ok((id, at))
                }
                _ => Err(StoreError::Corrupt("enforcement queue: odd reply".to_owned())),
            })
            .collect()
    }

    async fn unqueue_grant(&self, id: GrantId) -> Result<(), StoreError> {
        let _: i64 = self
            .connection
            .clone()
            .zrem(self.enforce_queue_key(), id.to_string())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn add_entry(&self, role_arn: &str, entry: &RevokedEntry) -> Result<(), StoreError> {
        let _: i64 = self
            .enforcement_scripts
            .add_entry
            .key(self.role_key(role_arn))
            .key(self.role_part(role_arn, "entries"))
            .key(self.role_part(role_arn, "unmarked"))
            .arg(entry_member(entry))
            .arg(entry.until.unix_timestamp())
            .arg(entry.grant.to_string())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn set_cutoff(&self, role_arn: &str, cutoff: &Cutoff) -> Result<(), StoreError> {
        let _: i64 = self
            .enforcement_scripts
            .set_cutoff
            .key(self.role_key(role_arn))
            .key(self.role_part(role_arn, "entries"))
            .key(self.role_part(role_arn, "unmarked"))
            .arg(cutoff.at.unix_timestamp())
            .arg(cutoff.until.unix_timestamp())
            .arg(&cutoff.reason)
            .arg(OffsetDateTime::now_utc().unix_timestamp())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn role_summaries(&self, roles: &[String]) -> Result<Vec<RoleSummary>, StoreError> {
        if roles.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for role in roles {
            pipe.cmd("HMGET").arg(self.role_key(role)).arg(&SUMMARY_FIELDS[..]);
        }
        let replies: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        roles
            .iter()
            .zip(replies)
            .map(|(role, values)| Self::summary(role, values))
            .collect()
    }

    async fn lease(&self, role_arn: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let token = uuid::Uuid::now_v7().to_string();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.role_part(role_arn, "lease"))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(taken.map(|_| Lease {
            role_arn: role_arn.to_owned(),
            token,
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let _: i64 = self
            .enforcement_scripts
            .release
            .key(self.role_part(&lease.role_arn, "lease"))
            .arg(&lease.token)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn role(&self, role_arn: &str) -> Result<RoleRevocations, StoreError> {
        let (fields, entries, unmarked): RoleReply = redis::pipe()
            .cmd("HMGET")
            .arg(self.role_key(role_arn))
            .arg(&SUMMARY_FIELDS[..])
            .arg("role_id")
            .arg("max_session")
            .arg("digest")
            .arg("failures")
            .cmd("ZRANGE")
            .arg(self.role_part(role_arn, "entries"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("SMEMBERS")
            .arg(self.role_part(role_arn, "unmarked"))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let corrupt = corrupt(role_arn);
        let extra = |index: usize| fields.get(SUMMARY_FIELDS.len() + index).cloned().flatten();
        let summary = Self::summary(role_arn, fields.iter().take(SUMMARY_FIELDS.len()).cloned().collect())?;
        let facts = match (extra(0), extra(1)) {
            (Some(role_id), Some(max_session)) => Some(RoleFacts {
                role_id,
                max_session_secs: max_session
                    .parse()
                    .map_err(|_| corrupt(format!("max_session `{max_session}`")))?,
            }),
            _ => None,
        };
        let entries = entries
            .into_iter()
            .map(|(member, until)| entry_from(&member, until).map_err(&corrupt))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let unmarked = unmarked
            .iter()
            .map(|id| GrantId::parse(id).map_err(&corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RoleRevocations {
            summary,
            entries,
            facts,
            digest: extra(2),
            unmarked,
            failures: extra(3).and_then(|text| text.parse().ok()).unwrap_or(0),
        })
    }

    async fn record_written(
        &self,
        lease: &Lease,
        version: u64,
        digest: &str,
        facts: &RoleFacts,
        now: OffsetDateTime,
        verify_by: Option<OffsetDateTime>,
    ) -> Result<Leased, StoreError> {
        let reply: String = self
            .enforcement_scripts
            .record_written
            .key(self.role_key(&lease.role_arn))
            .key(self.role_part(&lease.role_arn, "entries"))
            .key(self.role_part(&lease.role_arn, "lease"))
            .arg(&lease.token)
            .arg(version)
            .arg(digest)
            .arg(&facts.role_id)
            .arg(facts.max_session_secs)
            .arg(now.unix_timestamp())
            .arg(verify_by.map_or(0, OffsetDateTime::unix_timestamp))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(if reply == "ok" { Leased::Recorded } else { Leased::Lost })
    }

    async fn record_failure(&self, lease: &Lease, error: &str, retry_at: OffsetDateTime) -> Result<Leased, StoreError> {
        let reply: String = self
            .enforcement_scripts
            .record_failure
            .key(self.role_key(&lease.role_arn))
            .key(self.role_part(&lease.role_arn, "lease"))
            .arg(&lease.token)
            .arg(error)
            .arg(retry_at.unix_timestamp())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(if reply == "ok" { Leased::Recorded } else { Leased::Lost })
    }

    async fn marked(&self, role_arn: &str, grants: &[GrantId]) -> Result<(), StoreError> {
        if grants.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .connection
            .clone()
            .srem(
                self.role_part(role_arn, "unmarked"),
                grants.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
