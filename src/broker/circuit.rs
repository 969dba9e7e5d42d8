//! A circuit per target for STS throttling: once STS throttles a target's AssumeRole (after the
//! SDK's own retries with backoff), the broker stops calling STS for that target for a while and
//! answers at once UNAVAILABLE with when to retry, so one caller's burst does not keep the
//! account's AssumeRole rate spent for everyone else; then one call tries again (half-open):
//! an answer from STS closes the circuit, throttling opens it for twice as long, up to
//! [`MAX_OPEN`]. In-process, per replica: each replica backs off on what it sees.

use std::{collections::HashMap, sync::Mutex};

use time::{Duration, OffsetDateTime};

/// How long a circuit first stays open.
pub(super) const FIRST_OPEN: Duration = Duration::seconds(1);

/// The longest a circuit stays open.
pub(super) const MAX_OPEN: Duration = Duration::seconds(30);

#[derive(Debug, Clone, Copy)]
struct Circuit {
    /// Closed before this; open (refusing) until it, then half-open.
    open_until: OffsetDateTime,
    /// How long it opens the next time STS throttles.
    next_open: Duration,
    /// Half-open, with its one trial call under way.
    trial: bool,
}

#[derive(Default)]
pub(super) struct Circuits(Mutex<HashMap<String, Circuit>>);

impl Circuits {
    /// Whether a call for `target` may go to STS now; if not, how long until one may.
    pub(super) fn admit(&self, target: &str, now: OffsetDateTime) -> Result<(), std::time::Duration> {
        let Ok(mut circuits) = self.0.lock() else {
            return Ok(());
        };
        let Some(circuit) = circuits.get_mut(target) else {
            return Ok(());
        };
        if now < circuit.open_until {
            return Err((circuit.open_until - now).unsigned_abs());
        }
        if circuit.trial {
            // Someone is finding out; the others wait as long as the circuit last stayed open.
            return Err(FIRST_OPEN.unsigned_abs());
        }
        circuit.trial = true;
        Ok(())
    }

    /// STS throttled a call for `target`: the circuit opens. How long it stays open.
    pub(super) fn throttled(&self, target: &str, now: OffsetDateTime) -> std::time::Duration {
        let Ok(mut circuits) = self.0.lock() else {
            return FIRST_OPEN.unsigned_abs();
        };
        let circuit = circuits.entry(target.to_owned()).or_insert(Circuit {
            open_until: now,
            next_open: FIRST_OPEN,
            trial: false,
        });
        let open = circuit.next_open;
        circuit.open_until = now + open;
        circuit.next_open = (open * 2_i32).min(MAX_OPEN);
        circuit.trial = false;
        open.unsigned_abs()
    }

    /// STS answered a call for `target` (credentials, or a refusal that is not throttling).
    pub(super) fn answered(&self, target: &str) {
        if let Ok(mut circuits) = self.0.lock() {
            circuits.remove(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_target_waits_then_tries_once_and_backs_off_further() {
        let circuits = Circuits::default();
        let now = time::macros::datetime!(2026-12-07 12:00 UTC);
        assert_eq!(circuits.admit("prod", now), Ok(()));
        assert_eq!(circuits.throttled("prod", now), std::time::Duration::from_secs(1));
        assert!(circuits.admit("prod", now).is_err());
        assert_eq!(circuits.admit("dev", now), Ok(()), "another target is not held back");
        // Half-open: one call goes, the others wait.
        let later = now + Duration::seconds(1);
        assert_eq!(circuits.admit("prod", later), Ok(()));
        assert!(circuits.admit("prod", later).is_err());
        // Throttled again: twice as long; then 4, 8, 16, and never more than 30 s.
        assert_eq!(circuits.throttled("prod", later), std::time::Duration::from_secs(2));
        for expected in [4, 8, 16, 30, 30] {
            assert_eq!(
                circuits.throttled("prod", later),
                std::time::Duration::from_secs(expected)
            );
        }
        // An answer closes it.
        circuits.answered("prod");
        assert_eq!(circuits.admit("prod", later), Ok(()));
        assert_eq!(circuits.throttled("prod", later), std::time::Duration::from_secs(1));
    }
}
