//! Wakes subscribed connections when their mailboxes receive messages.
//!
//! A commit hands each new message to the subscribed connections ("live" delivery), so a
//! subscriber that is caught up pushes it without reading the store. The live queue is bounded:
//! past it, or whenever a connection sees a gap in sequence numbers, it falls back to a "mailbox
//! M has news" mark and reads from the store, which stays the one source of truth for order and
//! content. A slow subscriber therefore costs bounded memory here, and a wake-up that races a
//! subscription is harmless.
//!
//! A group's log may have a subscriber per member device (a thousand and more): a commit hands
//! each mailbox's new messages over in one go, so the subscriber list is copied once per
//! mailbox and batch rather than once per message, and each connection is woken once.

use pigeon_store::{MailboxId, StoredMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// A new durable message of a mailbox, on its way to a subscriber.
pub(crate) type Live = (MailboxId, Arc<StoredMessage>);

/// A connection's wake-up handle.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    pub(crate) notify: Notify,
    /// Mailboxes with news since the connection last looked.
    pub(crate) dirty: Mutex<Vec<MailboxId>>,
    /// New durable messages, in commit order, for mailboxes this connection is subscribed to,
    /// and their ciphertext bytes.
    live: Mutex<(Vec<Live>, usize)>,
    /// Changes (by any session) to mailboxes this connection serves, in order.
    revoked: Mutex<Vec<(MailboxId, Change)>>,
}

/// A change to a mailbox that its subscriptions must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// It was deleted: stop serving it.
    Deleted,
    /// Its member capability was retired, reading up to this sequence number: subscriptions
    /// made before with the capability current then (every one not limited yet) stop there.
    Retired(u64),
    /// Another relay node changed its record (retired a capability, deleted it): look it up
    /// and follow what it says now.
    Recheck,
}

/// Most live messages, and bytes of them, queued for one connection before it must read from
/// the store instead: a busy or slow connection costs bounded memory here.
const LIVE_CAP: usize = 4096;
const LIVE_CAP_BYTES: usize = 4 << 20;

impl Waker {
    /// Marks `mailbox` as having news and wakes the connection.
    pub(crate) fn wake(&self, mailbox: MailboxId) {
        if let Ok(mut dirty) = self.dirty.lock()
            && !dirty.contains(&mailbox)
        {
            dirty.push(mailbox);
        }
        self.notify.notify_one();
    }

    /// Offers new durable messages of one mailbox, in order; marks the mailbox instead once
    /// the queue is full (the rest is read from the store).
    pub(crate) fn offer(&self, mailbox: MailboxId, messages: &[Arc<StoredMessage>]) {
        let queued = self.live.lock().map_or(0, |mut live| {
            let (queue, bytes) = &mut *live;
            let mut queued = 0;
            for message in messages {
                if queue.len() >= LIVE_CAP || *bytes + message.ciphertext.len() > LIVE_CAP_BYTES {
                    break;
                }
                queue.push((mailbox, Arc::clone(message)));
                *bytes += message.ciphertext.len();
                queued += 1;
            }
            queued
        });
        if queued == messages.len() {
            self.notify.notify_one();
        } else {
            self.wake(mailbox);
        }
    }

    /// Takes the queued live messages.
    pub(crate) fn take_live(&self) -> Vec<Live> {
        self.live
            .lock()
            .map(|mut l| std::mem::take(&mut *l).0)
            .unwrap_or_default()
    }

    /// Takes the changes to mailboxes since the last look, in order.
    pub(crate) fn take_revoked(&self) -> Vec<(MailboxId, Change)> {
        self.revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Asks the connection to look `mailbox`'s record up again (see [`Change::Recheck`]).
    pub(crate) fn recheck(&self, mailbox: MailboxId) {
        self.change(mailbox, Change::Recheck);
    }

    /// Records a change to `mailbox` and wakes the connection to follow it.
    fn change(&self, mailbox: MailboxId, change: Change) {
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.push((mailbox, change));
        }
        self.notify.notify_one();
    }

    /// Takes the marks.
    pub(crate) fn take_dirty(&self) -> Vec<MailboxId> {
        self.dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }
}

type Shard = Mutex<HashMap<MailboxId, Vec<Arc<Waker>>>>;

/// Mailbox → subscribed connections.
pub(crate) struct Hub {
    shards: Vec<Shard>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Hub {
    fn shard(&self, mailbox: &MailboxId) -> &Shard {
        &self.shards[usize::from(mailbox.0[0]) % SHARDS]
    }

    pub(crate) fn subscribe(&self, mailbox: MailboxId, waker: &Arc<Waker>) {
        if let Ok(mut map) = self.shard(&mailbox).lock() {
            // Most mailboxes have one subscriber: room for one, not the four of a first push.
            let list = map.entry(mailbox).or_insert_with(|| Vec::with_capacity(1));
            if !list.iter().any(|w| Arc::ptr_eq(w, waker)) {
                list.push(Arc::clone(waker));
            }
        }
    }

    pub(crate) fn unsubscribe(&self, mailbox: MailboxId, waker: &Arc<Waker>) {
        if let Ok(mut map) = self.shard(&mailbox).lock()
            && let Some(list) = map.get_mut(&mailbox)
        {
            list.retain(|w| !Arc::ptr_eq(w, waker));
            if list.is_empty() {
                map.remove(&mailbox);
            }
        }
    }

    /// Whether any connection is subscribed to `mailbox`.
    pub(crate) fn is_watched(&self, mailbox: &MailboxId) -> bool {
        self.shard(mailbox)
            .lock()
            .is_ok_and(|map| map.contains_key(mailbox))
    }

    /// Ends every subscription to a deleted mailbox, on every connection.
    pub(crate) fn revoke(&self, mailbox: MailboxId) {
        let wakers = match self.shard(&mailbox).lock() {
            Ok(mut map) => map.remove(&mailbox).unwrap_or_default(),
            Err(_) => return,
        };
        for w in wakers {
            w.change(mailbox, Change::Deleted);
        }
    }

    /// Tells every connection subscribed to a log that its capability was retired at
    /// `read_until` (see [`Change::Retired`]). A connection that subscribes after this call
    /// checks the log's record itself.
    pub(crate) fn retire(&self, mailbox: MailboxId, read_until: u64) {
        for w in self.subscribers(&mailbox) {
            w.change(mailbox, Change::Retired(read_until));
        }
    }

    /// Tells every connection subscribed to `mailbox` that another relay node changed its
    /// record (see [`Change::Recheck`]).
    pub(crate) fn recheck(&self, mailbox: MailboxId) {
        for w in self.subscribers(&mailbox) {
            w.change(mailbox, Change::Recheck);
        }
    }

    /// Hands new durable messages of one mailbox, in order, to every subscribed connection.
    pub(crate) fn deliver(&self, mailbox: MailboxId, messages: &[Arc<StoredMessage>]) {
        if messages.is_empty() {
            return;
        }
        for w in self.subscribers(&mailbox) {
            w.offer(mailbox, messages);
        }
    }

    /// The connections subscribed to `mailbox`, copied out so that no lock is held while they
    /// are woken.
    fn subscribers(&self, mailbox: &MailboxId) -> Vec<Arc<Waker>> {
        match self.shard(mailbox).lock() {
            Ok(map) => map.get(mailbox).cloned().unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Every mailbox some connection is subscribed to.
    pub(crate) fn watched(&self) -> Vec<MailboxId> {
        let mut out = Vec::new();
        for shard in &self.shards {
            if let Ok(map) = shard.lock() {
                out.extend(map.keys().copied());
            }
        }
        out
    }

    /// Wakes every subscribed connection (for the relay's shutdown).
    pub(crate) fn wake_all(&self) {
        for shard in &self.shards {
            if let Ok(map) = shard.lock() {
                for waker in map.values().flatten() {
                    waker.notify.notify_one();
                }
            }
        }
    }

    pub(crate) fn wake(&self, mailbox: MailboxId) {
        for w in self.subscribers(&mailbox) {
            w.wake(mailbox);
        }
    }
}
