//! The readers' view of mailbox state: record and message count, served without touching disk.
//!
//! Only the writer thread changes mailbox state, and it publishes each mailbox it touched here
//! after the change is durable. Readers fill misses from the database; a per-shard generation
//! number makes sure such a fill never overwrites (or resurrects) something the writer published
//! while the reader was loading: the fill is kept only if no publish happened in between.
//! Each shard is bounded: when it would grow past its share of the capacity it is emptied, which
//! is always safe because a miss is simply read again from the database.

use crate::{MailboxId, MailboxRecord};
use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const SHARDS: usize = 64;

/// What a reader may know about a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) record: MailboxRecord,
    /// Store-local number, the prefix of its keys.
    pub(super) number: u64,
    /// Messages held; `None` until someone needed it (counting means a scan).
    pub(super) count: Option<u64>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<MailboxId, Entry>,
    generation: u64,
}

pub(super) struct Cache {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

/// What a later [`Cache::fill`] needs to stay consistent: the shard's generation at lookup.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    generation: u64,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, id: &MailboxId) -> &RwLock<Shard> {
        // Ids are random, so one byte spreads them; a chosen id only costs lock contention.
        &self.shards[usize::from(id.0[0]) % SHARDS]
    }

    fn read(&self, id: &MailboxId) -> RwLockReadGuard<'_, Shard> {
        // A poisoned shard holds plain data that no panic can leave half-written.
        self.shard(id).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, id: &MailboxId) -> RwLockWriteGuard<'_, Shard> {
        self.shard(id).write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached entry (if any), and a ticket to fill it in later.
    pub(super) fn get(&self, id: &MailboxId) -> (Option<Entry>, Ticket) {
        let shard = self.read(id);
        let ticket = Ticket {
            generation: shard.generation,
        };
        (shard.map.get(id).cloned(), ticket)
    }

    /// Stores what a reader loaded, unless the writer published to the shard since the ticket.
    pub(super) fn fill(&self, id: MailboxId, entry: Entry, ticket: Ticket) {
        let mut shard = self.write(&id);
        if shard.generation != ticket.generation {
            return;
        }
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&id) {
            shard.map.clear();
        }
        let count = entry.count;
        let slot = shard.map.entry(id).or_insert(entry);
        if slot.count.is_none() {
            slot.count = count;
        }
    }

    /// The writer's durable view of a mailbox (`None`: it does not exist, or is not tracked).
    pub(super) fn publish(&self, id: MailboxId, entry: Option<Entry>) {
        let mut shard = self.write(&id);
        shard.generation = shard.generation.wrapping_add(1);
        match entry {
            Some(entry) => {
                if shard.map.len() >= self.per_shard && !shard.map.contains_key(&id) {
                    shard.map.clear();
                }
                shard.map.insert(id, entry);
            }
            None => {
                shard.map.remove(&id);
            }
        }
    }

    /// Forgets everything (after a failure, when the writer's view can no longer be trusted).
    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            shard.generation = shard.generation.wrapping_add(1);
            shard.map.clear();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;
    use crate::MailboxKind;

    fn entry(count: Option<u64>) -> Entry {
        Entry {
            record: MailboxRecord::new(MailboxKind::Inbox, [1; 32], [2; 32], 3),
            number: 1,
            count,
        }
    }

    #[test]
    fn fill_after_publish_is_dropped() {
        let cache = Cache::new(1024);
        let id = MailboxId([7; 32]);
        let (hit, ticket) = cache.get(&id);
        assert!(hit.is_none());
        cache.publish(id, None);
        cache.fill(id, entry(Some(1)), ticket);
        assert!(cache.get(&id).0.is_none(), "stale fill must not resurrect");

        let ticket = cache.get(&id).1;
        cache.fill(id, entry(None), ticket);
        assert_eq!(cache.get(&id).0, Some(entry(None)));
        let ticket = cache.get(&id).1;
        cache.fill(id, entry(Some(4)), ticket);
        assert_eq!(
            cache.get(&id).0.unwrap().count,
            Some(4),
            "fill adds a missing count"
        );
        cache.publish(id, Some(entry(Some(5))));
        assert_eq!(cache.get(&id).0.unwrap().count, Some(5));
    }

    #[test]
    fn shards_stay_bounded() {
        let cache = Cache::new(SHARDS * 2);
        for i in 0..10u8 {
            let mut raw = [0u8; 32];
            raw[1] = i;
            cache.publish(MailboxId(raw), Some(entry(None)));
        }
        let held = cache.shards[0].read().unwrap().map.len();
        assert!(held <= 2, "held {held}");
    }
}
