//! De-duplication checks done by the callers, so the writer thread does not have to read.
//!
//! Looking a message id up in fjall costs the writer about as much as writing the message, and
//! the writer is the bottleneck. So each caller looks its ids up itself, on its own thread, and
//! notes how many commits the store had made when it looked ([`Precheck`]). The writer then only
//! needs what the caller could not have seen: records of later commits. It keeps the ids it
//! wrote in its last few commits and in the open batch ([`Recent`]); a check older than that
//! window, or older than a deletion of de-duplication records, falls back to reading the store.

use super::codec::Key;
use std::collections::{HashMap, VecDeque};

/// What a caller found when it looked a message id up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Precheck {
    /// Not looked up.
    None,
    /// No record, with everything up to commit `as_of` visible.
    Absent {
        /// The mailbox number the key was built with.
        number: u64,
        as_of: u64,
    },
    /// A record for `seq`, read with everything up to commit `as_of` visible.
    Known { number: u64, seq: u64, as_of: u64 },
    /// Not looked up: the sender says it never sent this id before
    /// ([`NewMessage::first_attempt`](crate::NewMessage::first_attempt)). Only the writer's
    /// memory is asked, which catches the same id twice in a burst for free.
    FirstAttempt { number: u64 },
}

/// The writer's memory of the ids it wrote lately.
pub(super) struct Recent {
    /// Key → seq, for the commits in `log` and the open batch.
    keys: HashMap<Key, u64>,
    /// Keys written per commit, oldest first.
    log: VecDeque<(u64, Vec<Key>)>,
    /// Keys written in the open batch.
    open: Vec<Key>,
    /// First commit whose keys are all in `keys`.
    low: u64,
    /// Commit that held the latest deletion of de-duplication records.
    deleted_in: u64,
    /// Commits remembered.
    window: usize,
}

impl Recent {
    pub(super) fn new(window: usize, commits: u64) -> Self {
        Self {
            keys: HashMap::new(),
            log: VecDeque::new(),
            open: Vec::new(),
            low: commits + 1,
            deleted_in: 0,
            window: window.max(1),
        }
    }

    /// The seq of a record written in the open batch or a remembered commit.
    pub(super) fn get(&self, key: &Key) -> Option<u64> {
        self.keys.get(key).copied()
    }

    /// A record written in the open batch.
    pub(super) fn insert(&mut self, key: Key, seq: u64) {
        self.keys.insert(key, seq);
        self.open.push(key);
    }

    /// The open batch became commit number `commit`.
    pub(super) fn committed(&mut self, commit: u64) {
        if self.open.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.open);
        self.log.push_back((commit, keys));
        while self.log.len() > self.window {
            if let Some((old, keys)) = self.log.pop_front() {
                for key in &keys {
                    self.keys.remove(key);
                }
                self.low = old + 1;
            }
        }
    }

    /// De-duplication records are deleted in the open batch, which will be commit `next`.
    /// The open batch must hold no new records (callers commit it first).
    pub(super) fn deleting(&mut self, next: u64) {
        debug_assert!(self.open.is_empty(), "deletions follow a barrier");
        self.keys.clear();
        self.log.clear();
        self.open.clear();
        self.low = next;
        self.deleted_in = next;
    }

    /// Forgets everything (the writer failed), as if `commits` had just been opened.
    pub(super) fn reset(&mut self, commits: u64) {
        *self = Self::new(self.window, commits);
    }

    /// What a caller's check says about `key` in the mailbox numbered `number`, when it can be
    /// trusted: `Some(Some(seq))` a duplicate, `Some(None)` new. `None`: read the store.
    pub(super) fn resolve(&self, check: Precheck, number: u64, key: &Key) -> Option<Option<u64>> {
        match check {
            Precheck::Absent { number: n, as_of } if n == number && as_of + 1 >= self.low => {
                Some(self.get(key))
            }
            Precheck::Known {
                number: n,
                seq,
                as_of,
            } if n == number && as_of >= self.deleted_in => Some(Some(seq)),
            Precheck::FirstAttempt { number: n } if n == number => Some(self.get(key)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageId;
    use crate::fjall_store::codec::dedup_key;

    fn key(n: u8) -> Key {
        dedup_key(1, &MessageId([n; 16]))
    }

    #[test]
    fn absent_checks_are_completed_from_memory_within_the_window() {
        let mut recent = Recent::new(2, 0);
        let fresh = Precheck::Absent {
            number: 1,
            as_of: 0,
        };
        assert_eq!(recent.resolve(fresh, 1, &key(1)), Some(None));
        recent.insert(key(1), 5);
        assert_eq!(
            recent.resolve(fresh, 1, &key(1)),
            Some(Some(5)),
            "open batch"
        );
        recent.committed(1);
        recent.insert(key(2), 6);
        recent.committed(2);
        assert_eq!(recent.resolve(fresh, 1, &key(1)), Some(Some(5)));
        recent.committed(3); // nothing new: no log entry
        recent.insert(key(3), 7);
        recent.committed(4);
        // Commit 1 left the window: a check as of 0 can no longer be completed.
        assert_eq!(recent.resolve(fresh, 1, &key(9)), None);
        let later = Precheck::Absent {
            number: 1,
            as_of: 1,
        };
        assert_eq!(recent.resolve(later, 1, &key(2)), Some(Some(6)));
        assert_eq!(
            recent.resolve(later, 2, &key(2)),
            None,
            "other mailbox number"
        );
    }

    #[test]
    fn first_attempts_are_answered_from_memory_alone() {
        let mut recent = Recent::new(1, 0);
        let first = Precheck::FirstAttempt { number: 1 };
        assert_eq!(recent.resolve(first, 1, &key(1)), Some(None));
        recent.insert(key(1), 5);
        assert_eq!(recent.resolve(first, 1, &key(1)), Some(Some(5)));
        for commit in 1..=3u8 {
            recent.insert(key(1 + commit), u64::from(5 + commit));
            recent.committed(u64::from(commit));
        }
        assert_eq!(
            recent.resolve(first, 1, &key(1)),
            Some(None),
            "out of the window, and still not looked up"
        );
        assert_eq!(
            recent.resolve(first, 2, &key(1)),
            None,
            "other mailbox number"
        );
    }

    #[test]
    fn deletions_invalidate_older_checks() {
        let mut recent = Recent::new(8, 0);
        recent.insert(key(1), 5);
        recent.committed(1);
        let known = Precheck::Known {
            number: 1,
            seq: 5,
            as_of: 1,
        };
        assert_eq!(recent.resolve(known, 1, &key(1)), Some(Some(5)));
        recent.deleting(2);
        assert_eq!(recent.resolve(known, 1, &key(1)), None);
        assert_eq!(recent.get(&key(1)), None);
        let absent = Precheck::Absent {
            number: 1,
            as_of: 1,
        };
        assert_eq!(recent.resolve(absent, 1, &key(1)), Some(None));
        let before = Precheck::Absent {
            number: 1,
            as_of: 0,
        };
        assert_eq!(recent.resolve(before, 1, &key(1)), None);
        let after = Precheck::Known {
            number: 1,
            seq: 9,
            as_of: 2,
        };
        assert_eq!(recent.resolve(after, 1, &key(1)), Some(Some(9)));
    }
}
