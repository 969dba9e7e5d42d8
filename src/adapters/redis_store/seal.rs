//! What makes the store's contents evidence: MACs, keyed with integrity keys Redis never sees,
//! over every grant record and every audit log entry, and the signed checkpoints of the log.
//! This module owns the keys and every MAC computation; [`super::record`] and [`super::audit`]
//! lay out where the MACs are stored.
//!
//! HMAC-SHA256 throughout, each input opened by a domain byte ([`Domain`]) so that no MAC of one
//! kind can stand for another. A record is a chain over its frames (one per change, each naming
//! the key that sealed it), closed by a tag over the chain and the header:
//!
//! ```text
//! chain_0 = HMAC(key_0, 0x01 || grant id (16 bytes) || segment_0)
//! chain_i = HMAC(key_i, 0x02 || chain_{i-1} || segment_i)
//! tag     = HMAC(key_last, 0x03 || chain_last || header)[..16]
//! ```
//!
//! A writer that knows a record's chain value (it read and verified the record, or wrote it)
//! appends a frame and a new tag without reading the frames again; the change script compares
//! the tag it replaces, so a change is never written on top of a record the writer did not see.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest integrity key accepted: 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// A record's tag and an audit entry's MAC are HMAC-SHA256 truncated to 128 bits.
pub const TAG_LEN: usize = 16;

/// The chain value carried from one frame to the next: the full HMAC output.
pub const CHAIN_LEN: usize = 32;

/// What a MAC is over: the first byte of every input.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(super) enum Domain {
    /// A record's first frame (its creation), bound to the grant id.
    FirstFrame = 1,
    /// Every later frame, bound to the chain so far.
    NextFrame = 2,
    /// A record's tag: its chain and its header.
    RecordTag = 3,
    /// An audit log entry referring to a grant's event.
    Reference = 4,
    /// An audit log entry holding a service event.
    Service = 5,
    /// A checkpoint of the audit log.
    Checkpoint = 6,
}

/// The integrity keys: the one new writes are sealed with, and every key a read accepts.
/// Debug shows the ids only.
#[derive(Clone)]
pub struct IntegrityKeys {
    sealing: u8,
    keys: BTreeMap<u8, HmacSha256>,
}

impl std::fmt::Debug for IntegrityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrityKeys")
            .field("sealing", &self.sealing)
            .field("accepted", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why keys cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("key {0} holds {1} bytes; an integrity key needs at least {MIN_KEY_BYTES}")]
    TooShort(u8, usize),
    #[error("key id {0} is given twice")]
    Duplicate(u8),
    #[error("key id 0 is reserved: use 1-255")]
    ZeroId,
    #[error("the sealing key {0} is not among the keys")]
    SealingUnknown(u8),
    #[error("no key given")]
    None,
}

impl IntegrityKeys {
    /// Keys by id; `sealing` seals new writes (`None`: the highest id).
    pub fn new(keys: Vec<(u8, Vec<u8>)>, sealing: Option<u8>) -> Result<Self, KeyProblem> {
        let mut map = BTreeMap::new();
        for (id, bytes) in keys {
            if id == 0 {
                return Err(KeyProblem::ZeroId);
            }
            if bytes.len() < MIN_KEY_BYTES {
                return Err(KeyProblem::TooShort(id, bytes.len()));
            }
            // HMAC takes keys of any length; the error exists only for fixed-size MACs.
            let mac = HmacSha256::new_from_slice(&bytes).map_err(|_| KeyProblem::TooShort(id, bytes.len()))?;
            if map.insert(id, mac).is_some() {
                return Err(KeyProblem::Duplicate(id));
            }
        }
        let highest = *map.keys().next_back().ok_or(KeyProblem::None)?;
        let sealing = sealing.unwrap_or(highest);
        if !map.contains_key(&sealing) {
            return Err(KeyProblem::SealingUnknown(sealing));
        }
        Ok(Self { sealing, keys: map })
    }

    /// The id of the key new writes are sealed with.
    pub fn sealing_id(&self) -> u8 {
        self.sealing
    }

    /// Every accepted key id, lowest first.
    pub fn ids(&self) -> impl Iterator<Item = u8> + '_ {
        self.keys.keys().copied()
    }

    fn keyed(&self, id: u8, domain: Domain) -> Result<HmacSha256, UnknownKey> {
        let mut mac = self.keys.get(&id).cloned().ok_or(UnknownKey(id))?;
        mac.update(&[domain as u8]);
        Ok(mac)
    }

    /// The full MAC of `parts` under key `id`.
    pub(super) fn mac(&self, id: u8, domain: Domain, parts: &[&[u8]]) -> Result<[u8; CHAIN_LEN], UnknownKey> {
        let mut mac = self.keyed(id, domain)?;
        for part in parts {
            mac.update(part);
        }
        Ok(mac.finalize().into_bytes().into())
    }

    /// The truncated MAC of `parts` under key `id`.
    pub(super) fn tag(&self, id: u8, domain: Domain, parts: &[&[u8]]) -> Result<[u8; TAG_LEN], UnknownKey> {
        let full = self.mac(id, domain, parts)?;
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Ok(tag)
    }

    /// Whether `tag` is the truncated MAC of `parts` under key `id`, compared in constant time.
    pub(super) fn verify(&self, id: u8, domain: Domain, parts: &[&[u8]], tag: &[u8]) -> Result<bool, UnknownKey> {
        let mut mac = self.keyed(id, domain)?;
        for part in parts {
            mac.update(part);
        }
        Ok(mac.verify_truncated_left(tag).is_ok() && tag.len() == TAG_LEN)
    }

    /// The chain value after a frame: the first frame's binds the grant id.
    pub(super) fn chain(
        &self,
        id: u8,
        grant: &[u8; 16],
        before: Option<&[u8; CHAIN_LEN]>,
        segment: &[u8],
    ) -> Result<[u8; CHAIN_LEN], UnknownKey> {
        match before {
            None => self.mac(id, Domain::FirstFrame, &[grant, segment]),
            Some(chain) => self.mac(id, Domain::NextFrame, &[chain, segment]),
        }
    }
}

/// A MAC names a key this configuration does not hold (retired too early, or forged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed with key {0}, which is not among the configured integrity keys")]
pub struct UnknownKey(pub u8);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Keys 1 and 2 of 32 bytes, sealing with `sealing`.
    pub(crate) fn keys(sealing: u8) -> IntegrityKeys {
        IntegrityKeys::new(vec![(1, vec![1; 32]), (2, vec![2; 32])], Some(sealing)).unwrap()
    }

    #[test]
    fn keys_are_checked_and_the_highest_seals_by_default() {
        let key = |id, len| (id, vec![7; len]);
        assert_eq!(
            IntegrityKeys::new(vec![key(1, 32), key(3, 40)], None)
                .unwrap()
                .sealing_id(),
            3
        );
        assert_eq!(
            IntegrityKeys::new(vec![key(1, 32), key(3, 40)], Some(1))
                .unwrap()
                .sealing_id(),
            1
        );
        assert_eq!(
            IntegrityKeys::new(vec![key(1, 31)], None).unwrap_err(),
            KeyProblem::TooShort(1, 31)
        );
        assert_eq!(
            IntegrityKeys::new(vec![key(0, 32)], None).unwrap_err(),
            KeyProblem::ZeroId
        );
        assert_eq!(
            IntegrityKeys::new(vec![key(1, 32), key(1, 32)], None).unwrap_err(),
            KeyProblem::Duplicate(1)
        );
        assert_eq!(
            IntegrityKeys::new(vec![key(1, 32)], Some(2)).unwrap_err(),
            KeyProblem::SealingUnknown(2)
        );
        assert_eq!(IntegrityKeys::new(Vec::new(), None).unwrap_err(), KeyProblem::None);
        let debug = format!("{:?}", keys(2));
        assert_eq!(debug, "IntegrityKeys { sealing: 2, accepted: [1, 2] }");
    }

    #[test]
    fn a_mac_is_hmac_sha256_of_the_domain_byte_and_the_parts() {
        let keys = keys(1);
        let mut expected = HmacSha256::new_from_slice(&[1; 32]).unwrap();
        expected.update(&[Domain::Reference as u8]);
        expected.update(b"ab");
        expected.update(b"c");
        let expected: [u8; 32] = expected.finalize().into_bytes().into();
        assert_eq!(keys.mac(1, Domain::Reference, &[b"ab", b"c"]).unwrap(), expected);
        assert_eq!(keys.tag(1, Domain::Reference, &[b"abc"]).unwrap()[..], expected[..16]);
        assert!(keys.verify(1, Domain::Reference, &[b"abc"], &expected[..16]).unwrap());
        // Another domain, key, input or a shortened tag does not verify.
        assert!(!keys.verify(1, Domain::Service, &[b"abc"], &expected[..16]).unwrap());
        assert!(!keys.verify(2, Domain::Reference, &[b"abc"], &expected[..16]).unwrap());
        assert!(!keys.verify(1, Domain::Reference, &[b"abd"], &expected[..16]).unwrap());
        assert!(!keys.verify(1, Domain::Reference, &[b"abc"], &expected[..8]).unwrap());
        assert_eq!(keys.mac(9, Domain::Reference, &[]).unwrap_err(), UnknownKey(9));
    }
}
