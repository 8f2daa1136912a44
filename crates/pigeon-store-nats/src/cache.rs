//! The mailbox records this node has read, for the relay's hot path (every send looks its
//! mailbox up). Any node's change to a record reaches every node through a watch on the
//! records stream (an ordered push consumer, delivering new entries only) and drops the entry;
//! this node's own changes drop it at once. Until the watch runs, and after it ends, nothing is
//! served from here.
//!
//! A lookup that raced a change is not kept: every drop bumps an epoch, and a record read
//! before a drop is not filled in after it.

use futures_util::StreamExt as _;
use pigeon_store::{MailboxId, MailboxRecord};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Most records kept; past it the cache starts again empty.
const MAX_RECORDS: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct RecordCache {
    map: Mutex<HashMap<MailboxId, MailboxRecord>>,
    epoch: AtomicU64,
    live: AtomicBool,
}

impl RecordCache {
    pub(crate) fn get(&self, id: &MailboxId) -> Option<MailboxRecord> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The epoch to hand back to [`RecordCache::fill`] for a lookup starting now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps a record read when the epoch was `epoch`, unless something changed since.
    pub(crate) fn fill(&self, id: MailboxId, record: MailboxRecord, epoch: u64) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if map.len() >= MAX_RECORDS {
            map.clear();
        }
        map.insert(id, record);
    }

    pub(crate) fn forget(&self, id: &MailboxId) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.remove(id);
    }

    fn stop(&self) {
        self.live.store(false, Ordering::Release);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }
}

/// Watches the records under `filter` (subjects `<prefix>.<id in hex>`) and drops each changed
/// one from `cache`, for as long as the store lives.
pub(crate) async fn watch(
    js: async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Stream,
    prefix: String,
    cache: std::sync::Arc<RecordCache>,
) {
    use async_nats::jetstream::consumer::{DeliverPolicy, push};
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: format!("{prefix}.*"),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await;
    let mut messages = match consumer {
        Ok(c) => match c.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "no watch on mailbox records: lookups go to the cluster");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no watch on mailbox records: lookups go to the cluster");
            return;
        }
    };
    cache.live.store(true, Ordering::Release);
    let key_start = prefix.len() + 1;
    while let Some(m) = messages.next().await {
        match m {
            Ok(m) => {
                let id = m
                    .subject
                    .get(key_start..)
                    .and_then(crate::codec::unhex::<32>);
                match id {
                    Some(id) => cache.forget(&MailboxId(id)),
                    None => cache.stop(),
                }
            }
            Err(e) => {
                // Something may have been missed: start again empty.
                tracing::debug!(error = %e, "the watch on mailbox records stumbled");
                cache.stop();
                cache.live.store(true, Ordering::Release);
            }
        }
    }
    tracing::warn!("the watch on mailbox records ended: lookups go to the cluster");
    cache.stop();
}
