//! How a webhook receiver knows a notification came from this broker, unaltered and recently.
//!
//! Every POST carries
//!
//! - `X-GrantBroker-Timestamp: <unix seconds>`: when this attempt was sent (each retry is signed
//!   anew, so an old timestamp always means a replay);
//! - `X-GrantBroker-Signature: v1=<hex>`: the lowercase hex HMAC-SHA256, keyed with the
//!   webhook's secret, of the timestamp, a `.`, and the body exactly as received
//!   (`"<timestamp>.<body>"`). More than one `v1=` value, comma-separated, may appear (while a
//!   secret is rotated): one that matches is enough;
//! - `X-GrantBroker-Delivery: <delivery id>`: the same on every attempt of one notification
//!   (deliveries are at least once: receivers deduplicate on it);
//! - `X-GrantBroker-Event: <event name>`.
//!
//! A receiver recomputes the HMAC over the raw body (before any JSON parsing), compares in
//! constant time, and rejects timestamps more than a few minutes from its own clock
//! ([`verify`], [`DEFAULT_TOLERANCE_SECS`]).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-grantbroker-timestamp";
pub const SIGNATURE_HEADER: &str = "x-grantbroker-signature";
pub const DELIVERY_HEADER: &str = "x-grantbroker-delivery";
pub const EVENT_HEADER: &str = "x-grantbroker-event";

/// The scheme name in front of the hex digest: a later scheme gets another name, and receivers
/// that know only `v1` ignore it.
pub const SCHEME: &str = "v1";

/// How far a timestamp may be from the receiver's clock, either way: long enough for a slow
/// network and some clock skew, short enough that a captured request cannot be replayed later.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Result<HmacSha256, Rejected> {
    // HMAC takes keys of any length; the error exists only for MACs with fixed key sizes.
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| Rejected::Key)?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// The `X-GrantBroker-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> Result<String, Rejected> {
    let digest = mac(secret, &timestamp.to_string(), body)?.finalize().into_bytes();
    Ok(format!("{SCHEME}={}", hex::encode(digest)))
}

/// Why a notification failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the timestamp header is not a unix time in seconds")]
    MalformedTimestamp,
    #[error("the timestamp is {0} s away from now, outside the tolerance")]
    Stale(u64),
    #[error("the signature header holds no `v1=<64 hex digits>` value")]
    MalformedSignature,
    #[error("no signature matches the body and timestamp")]
    Mismatch,
    #[error("the secret cannot key an HMAC")]
    Key,
}

/// Verifies a received notification: `timestamp` and `signature` are the header values, `body`
/// the raw body, `now` the receiver's unix time. The timestamp is checked first (cheap, and
/// a replay fails there whatever its signature); digests are compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), Rejected> {
    let sent: i64 = timestamp.trim().parse().map_err(|_| Rejected::MalformedTimestamp)?;
    let age = now.abs_diff(sent);
    if age > tolerance_secs {
        return Err(Rejected::Stale(age));
    }
    let mut candidates = signature
        .split(',')
        .filter_map(|value| value.trim().strip_prefix(SCHEME)?.strip_prefix('='))
        .filter_map(|digits| {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(digits, &mut digest).ok().map(|()| digest)
        })
        .peekable();
    if candidates.peek().is_none() {
        return Err(Rejected::MalformedSignature);
    }
    let mut matched = false;
    for candidate in candidates {
        // verify_slice compares in constant time; every candidate is checked, match or not.
        matched |= mac(secret, timestamp.trim(), body)?.verify_slice(&candidate).is_ok();
    }
    if matched { Ok(()) } else { Err(Rejected::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const BODY: &[u8] = br#"{"event":"requested","grant_id":"x"}"#;
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signature_is_the_hmac_of_timestamp_dot_body() {
        // The documented construction, computed in one piece.
        let signed = signature(SECRET, NOW, BODY).unwrap();
        let mut message = NOW.to_string().into_bytes();
        message.push(b'.');
        message.extend_from_slice(BODY);
        let mut expected = HmacSha256::new_from_slice(SECRET).unwrap();
        expected.update(&message);
        assert_eq!(signed, format!("v1={}", hex::encode(expected.finalize().into_bytes())));
        assert_eq!(signed.len(), 3 + 64);
        assert!(
            signed[3..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn hmac_sha256_is_the_standard_one() {
        // RFC 4231, test case 2.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn an_untouched_notification_verifies() {
        let signed = signature(SECRET, NOW, BODY).unwrap();
        assert_eq!(verify(SECRET, &NOW.to_string(), &signed, BODY, NOW, 300), Ok(()));
        // A little skew either way is fine.
        assert_eq!(verify(SECRET, &NOW.to_string(), &signed, BODY, NOW + 299, 300), Ok(()));
        assert_eq!(verify(SECRET, &NOW.to_string(), &signed, BODY, NOW - 300, 300), Ok(()));
        // Rotation: one matching value among several is enough.
        let two = format!("v1={},{signed}", "0".repeat(64));
        assert_eq!(verify(SECRET, &NOW.to_string(), &two, BODY, NOW, 300), Ok(()));
    }

    #[test]
    fn a_tampered_body_fails() {
        let signed = signature(SECRET, NOW, BODY).unwrap();
        let tampered = br#"{"event":"approved","grant_id":"x"}"#;
        assert_eq!(
            verify(SECRET, &NOW.to_string(), &signed, tampered, NOW, 300),
            Err(Rejected::Mismatch)
        );
        // Re-serialized JSON (a space added) is another body: verify the raw bytes.
        let respaced = br#"{"event": "requested","grant_id":"x"}"#;
        assert_eq!(
            verify(SECRET, &NOW.to_string(), &signed, respaced, NOW, 300),
            Err(Rejected::Mismatch)
        );
    }

    #[test]
    fn another_secret_fails() {
        let signed = signature(b"another secret that is 32 bytes!", NOW, BODY).unwrap();
        assert_eq!(
            verify(SECRET, &NOW.to_string(), &signed, BODY, NOW, 300),
            Err(Rejected::Mismatch)
        );
    }

    #[test]
    fn an_old_or_future_timestamp_fails_even_with_a_valid_signature() {
        let old = NOW - 301;
        let signed = signature(SECRET, old, BODY).unwrap();
        assert_eq!(
            verify(SECRET, &old.to_string(), &signed, BODY, NOW, 300),
            Err(Rejected::Stale(301))
        );
        let future = NOW + 3600;
        let signed = signature(SECRET, future, BODY).unwrap();
        assert_eq!(
            verify(SECRET, &future.to_string(), &signed, BODY, NOW, 300),
            Err(Rejected::Stale(3600))
        );
    }

    #[test]
    fn a_replayed_body_under_a_new_timestamp_fails() {
        // An attacker who saw one request cannot refresh its timestamp: it is signed.
        let signed = signature(SECRET, NOW - 1000, BODY).unwrap();
        assert_eq!(
            verify(SECRET, &NOW.to_string(), &signed, BODY, NOW, 300),
            Err(Rejected::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_fail() {
        let signed = signature(SECRET, NOW, BODY).unwrap();
        assert_eq!(
            verify(SECRET, "yesterday", &signed, BODY, NOW, 300),
            Err(Rejected::MalformedTimestamp)
        );
        for bad in [
            "",
            "v1=",
            "v1=xyz",
            "v2=abc",
            &signed[3..],
            &format!("v1={}", &signed[3..40]),
        ] {
            assert_eq!(
                verify(SECRET, &NOW.to_string(), bad, BODY, NOW, 300),
                Err(Rejected::MalformedSignature),
                "{bad}"
            );
        }
        // Upper-case hex is the same digest.
        let upper = format!("v1={}", signed[3..].to_ascii_uppercase());
        assert_eq!(verify(SECRET, &NOW.to_string(), &upper, BODY, NOW, 300), Ok(()));
    }
}
