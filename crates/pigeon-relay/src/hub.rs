//! Wakes subscribed connections when their mailboxes receive messages.
//!
//! The hub carries no messages, only "mailbox M has news" marks: the connection then reads from
//! the store, which stays the one source of truth for order and content. A slow subscriber
//! therefore costs no memory here, and a wake-up that races a subscription is harmless.

use pigeon_store::MailboxId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// A connection's wake-up handle.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    pub(crate) notify: Notify,
    /// Mailboxes with news since the connection last looked.
    pub(crate) dirty: Mutex<Vec<MailboxId>>,
}

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
            let list = map.entry(mailbox).or_default();
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

    pub(crate) fn wake(&self, mailbox: MailboxId) {
        let wakers: Vec<Arc<Waker>> = match self.shard(&mailbox).lock() {
            Ok(map) => map.get(&mailbox).cloned().unwrap_or_default(),
            Err(_) => return,
        };
        for w in wakers {
            w.wake(mailbox);
        }
    }
}
