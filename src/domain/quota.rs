//! How much one caller, person or grantee may take at once: request rates, and caps on the
//! grants held at the same time. What the limits are and what running into one means; the store
//! keeps the counts, so they hold across replicas.

use std::time::Duration;

/// The limits in force for a caller: the configuration's, with the caller's own where it sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RequestAccess calls per minute by this caller.
    pub requests_per_minute: u32,
    /// RequestAccess calls per minute naming one requester (verified or asserted), through any
    /// caller.
    pub requests_per_person_per_minute: u32,
    /// Grants pending or approved, not yet ended, for one grantee at once (through any caller).
    pub live_grants_per_grantee: u32,
    /// This caller's grants waiting for approval at once.
    pub pending_grants: u32,
}

impl Default for Limits {
    /// Generous enough for a busy portal or a fleet of pipelines behind one caller; tight enough
    /// that one runaway loop cannot take the account's AssumeRole rate or flood approvers.
    fn default() -> Self {
        Self {
            requests_per_minute: 3_000,
            requests_per_person_per_minute: 120,
            live_grants_per_grantee: 50,
            pending_grants: 1_000,
        }
    }
}

/// The most any limit may be set to.
pub const MAX_LIMIT: u32 = 1_000_000;

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    CallerRequests,
    PersonRequests,
    LiveGrantsPerGrantee,
    PendingGrants,
}

impl Limit {
    /// Its name in errors and in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::CallerRequests => "requests_per_minute",
            Self::PersonRequests => "requests_per_person_per_minute",
            Self::LiveGrantsPerGrantee => "live_grants_per_grantee",
            Self::PendingGrants => "pending_grants",
        }
    }

    /// The limit's value in `limits`.
    pub fn of(self, limits: &Limits) -> u32 {
        match self {
            Self::CallerRequests => limits.requests_per_minute,
            Self::PersonRequests => limits.requests_per_person_per_minute,
            Self::LiveGrantsPerGrantee => limits.live_grants_per_grantee,
            Self::PendingGrants => limits.pending_grants,
        }
    }
}

/// A rate counted per minute, by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rate {
    Caller(super::CallerId),
    Person(String),
}

/// Grants held at once, by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cap {
    LiveForGrantee(String),
    PendingForCaller(super::CallerId),
}

impl Rate {
    pub fn limit(&self) -> Limit {
        match self {
            Self::Caller(_) => Limit::CallerRequests,
            Self::Person(_) => Limit::PersonRequests,
        }
    }

    /// Whom it counts, as errors name them.
    pub fn subject(&self) -> String {
        match self {
            Self::Caller(caller) => caller.to_string(),
            Self::Person(person) => person.clone(),
        }
    }

    /// This rate, spent at `allowed` per minute, lets a request through after `retry_after`.
    pub fn exceeded(&self, allowed: u32, retry_after: Duration) -> Exceeded {
        Exceeded {
            limit: self.limit(),
            subject: self.subject(),
            allowed,
            retry_after,
        }
    }
}

impl Cap {
    pub fn limit(&self) -> Limit {
        match self {
            Self::LiveForGrantee(_) => Limit::LiveGrantsPerGrantee,
            Self::PendingForCaller(_) => Limit::PendingGrants,
        }
    }

    /// Whom it counts, as errors name them.
    pub fn subject(&self) -> String {
        match self {
            Self::LiveForGrantee(grantee) => grantee.clone(),
            Self::PendingForCaller(caller) => caller.to_string(),
        }
    }

    /// This cap, full at `allowed`, has a place again after `retry_after`.
    pub fn exceeded(&self, allowed: u32, retry_after: Duration) -> Exceeded {
        Exceeded {
            limit: self.limit(),
            subject: self.subject(),
            allowed,
            retry_after,
        }
    }
}

/// A limit a request ran into: which, whose, how much it allows, and when a retry can succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: Limit,
    /// Whom it counts (a caller id, a person, a grantee).
    pub subject: String,
    pub allowed: u32,
    pub retry_after: Duration,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let what = match self.limit {
            Limit::CallerRequests => format!(
                "caller {} made {} requests in the last minute",
                self.subject, self.allowed
            ),
            Limit::PersonRequests => format!("{} requests named {} in the last minute", self.allowed, self.subject),
            Limit::LiveGrantsPerGrantee => format!("grantee {} holds {} live grants", self.subject, self.allowed),
            Limit::PendingGrants => format!(
                "caller {} has {} grants waiting for approval",
                self.subject, self.allowed
            ),
        };
        format!(
            "{what}, the most {} allows; retry in {} s",
            self.limit.name(),
            self.retry_after.as_secs().max(1)
        )
    }
}

/// A rate's window: requests per minute.
pub const WINDOW_MICROS: i64 = 60_000_000;

/// The rate limiter's arithmetic (a generic cell rate algorithm, the one the store's script
/// runs): each request moves the rate's "theoretical arrival time" `tat` (unix microseconds) one
/// interval (a minute over the limit) on; a request is let through while that stays within a
/// minute of now, so up to `per_minute` at once, then one per interval. The new `tat`, or how
/// long until a request would be let through. A `tat` more than two windows ahead, which no count
/// makes even with replicas' clocks apart by seconds, is a clock that went back: it starts afresh.
pub fn next_arrival(tat: Option<i64>, now_micros: i64, per_minute: u32) -> Result<i64, Duration> {
    let interval = WINDOW_MICROS / i64::from(per_minute.max(1));
    let tat = tat
        .filter(|tat| *tat <= now_micros + 2 * WINDOW_MICROS)
        .unwrap_or(now_micros);
    let next = tat.max(now_micros) + interval;
    let ahead = next - now_micros - WINDOW_MICROS;
    if ahead > 0 {
        return Err(Duration::from_micros(u64::try_from(ahead).unwrap_or(u64::MAX)));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exceeded_limit_says_what_and_when() {
        let exceeded = Exceeded {
            limit: Limit::PendingGrants,
            subject: "vendor-portal".into(),
            allowed: 3,
            retry_after: Duration::from_millis(1_500),
        };
        assert_eq!(
            exceeded.message(),
            "caller vendor-portal has 3 grants waiting for approval, the most pending_grants allows; retry in 1 s"
        );
        assert_eq!(Limit::PersonRequests.of(&Limits::default()), 120);
    }

    #[test]
    fn a_rate_lets_its_limit_through_at_once_then_one_per_interval() {
        let now = 1_800_000_000_000_000;
        let mut tat = None;
        for _ in 0..6 {
            tat = Some(next_arrival(tat, now, 6).unwrap());
        }
        // The seventh within the minute waits one interval (10 s).
        assert_eq!(next_arrival(tat, now, 6), Err(Duration::from_secs(10)));
        assert_eq!(next_arrival(tat, now + 9_999_999, 6), Err(Duration::from_micros(1)));
        assert!(next_arrival(tat, now + 10_000_000, 6).is_ok());
        // An idle rate starts afresh, and so does one whose clock went back.
        assert!(next_arrival(tat, now + 120_000_000, 6).is_ok());
        assert!(next_arrival(Some(now + 121_000_000), now, 6).is_ok());
        // A replica whose clock is a little behind still counts.
        assert!(next_arrival(tat, now - 1_000, 6).is_err());
    }
}
