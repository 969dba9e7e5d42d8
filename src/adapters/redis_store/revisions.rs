//! The revisions of grant records this broker last verified or wrote, so that a change can be
//! sealed onto a record without reading it again: the grant a use case changes was read (and
//! verified) moments before, or written by this broker's previous step. A revision that is no
//! longer the record's costs one more round trip (the change script answers with the record as
//! it is); a missing one costs a read. Never a question of correctness: the change script
//! compares the tag, and a record is only ever continued from a revision whose seal verified.
//!
//! Bounded: two generations of at most [`GENERATION`] grants each; when the newer fills, the
//! older is dropped, so the grants in use stay and the rest age out without a clock.

use std::{collections::HashMap, sync::Mutex};

use super::record::Revision;
use crate::domain::GrantId;

/// Grants per generation: about 80 bytes each, so two generations stay under 2 MB.
const GENERATION: usize = 10_000;

/// A revision, and when (in [`Revisions::epoch`] order) this broker learned it.
type Known = (Revision, u64);

#[derive(Default)]
pub(super) struct Revisions {
    generations: Mutex<(HashMap<GrantId, Known>, HashMap<GrantId, Known>)>,
    /// Counts what was learned: a read that started at epoch `e` must see every revision
    /// learned at or before `e`.
    epoch: std::sync::atomic::AtomicU64,
}

impl Revisions {
    pub(super) fn get(&self, id: GrantId) -> Option<Revision> {
        let generations = self.generations.lock().ok()?;
        generations
            .0
            .get(&id)
            .or_else(|| generations.1.get(&id))
            .map(|(revision, _)| revision.clone())
    }

    /// Now, for a read about to start.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keeps `revision` as the grant's latest, read by a read that started at `read_at`
    /// ([`Self::epoch`]; `None`: written by this broker). A shorter revision than one known is
    /// kept out; it is refused (the revision known, returned) when the longer one was known
    /// before the read started: records only grow, so the record was rolled back. (A read that
    /// raced one of this broker's own writes may see the record from just before it.)
    pub(super) fn put(&self, id: GrantId, revision: Revision, read_at: Option<u64>) -> Result<(), Revision> {
        if let Ok(mut generations) = self.generations.lock() {
            let (newer, older) = &mut *generations;
            if let Some((known, learned)) = newer.get(&id).or_else(|| older.get(&id))
                && known.len > revision.len
            {
                return match read_at {
                    Some(read_at) if *learned <= read_at => Err(known.clone()),
                    _ => Ok(()),
                };
            }
            if newer.len() >= GENERATION && !newer.contains_key(&id) {
                *older = std::mem::take(newer);
            }
            older.remove(&id);
            let learned = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            newer.insert(id, (revision, learned));
        }
        Ok(())
    }

    pub(super) fn forget(&self, id: GrantId) {
        if let Ok(mut generations) = self.generations.lock() {
            generations.0.remove(&id);
            generations.1.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::redis_store::record::Header;
    use crate::domain::GrantState;

    fn revision(n: u8) -> Revision {
        Revision {
            header: Header {
                version: 4,
                state: GrantState::Approved,
                attempts: 0,
                approvals: 0,
                extensions_tag: [0; 3],
                events: u16::from(n),
                reviewed: false,
            },
            chain: [n; 32],
            tag: [n; 16],
            len: 100,
        }
    }

    fn id(n: usize) -> GrantId {
        GrantId::from_uuid(uuid::Uuid::from_u128(n as u128))
    }

    #[test]
    fn the_latest_revision_is_kept_and_old_grants_age_out() {
        let revisions = Revisions::default();
        revisions.put(id(0), revision(1), None).unwrap();
        revisions.put(id(0), revision(2), None).unwrap();
        assert_eq!(revisions.get(id(0)), Some(revision(2)));
        // Filling a generation keeps the previous one readable...
        for n in 1..=GENERATION {
            revisions.put(id(n), revision(3), None).unwrap();
        }
        assert_eq!(revisions.get(id(0)), Some(revision(2)));
        // ...and a grant used again moves to the newer one, so it stays when the older goes.
        let before_4 = revisions.epoch();
        revisions.put(id(0), revision(4), None).unwrap();
        for n in GENERATION + 1..=2 * GENERATION {
            revisions.put(id(n), revision(3), None).unwrap();
        }
        assert_eq!(revisions.get(id(0)), Some(revision(4)));
        assert_eq!(revisions.get(id(1)), None, "aged out");
        // A shorter revision than one known before the read started is a rollback; one read
        // by a read that raced the write is only older.
        let mut shorter = revision(5);
        shorter.len = 99;
        assert_eq!(revisions.put(id(0), shorter.clone(), Some(before_4)), Ok(()));
        assert_eq!(revisions.get(id(0)), Some(revision(4)), "the longer one kept");
        assert_eq!(revisions.put(id(0), shorter, Some(revisions.epoch())), Err(revision(4)));
        revisions.forget(id(0));
        assert_eq!(revisions.get(id(0)), None);
    }
}
