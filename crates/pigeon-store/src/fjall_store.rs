//! The embedded backend: [`FjallStore`], on the fjall LSM-tree engine.
//!
//! # Where work happens
//! * **Writes** (create, append, ack, update, delete, key packages, expiry) go to one dedicated
//!   writer
//!   thread over a bounded channel. It drains everything queued (up to
//!   [`FjallOptions::max_batch_ops`] operations or [`FjallOptions::max_batch_bytes`] bytes),
//!   applies it as one fjall write batch and commits it; a second thread fsyncs the journal
//!   (`fdatasync`, through a descriptor of its own so that it never waits for fjall's journal
//!   lock: `journal.rs`) once for every round that is waiting, and only then publishes the new state
//!   to readers and answers every caller: group commit. Being the only writer, the writer thread
//!   alone assigns sequence numbers, so per-mailbox order is the durable order. See `writer.rs`.
//! * **Callers** do what needs no ordering before they queue: size checks, building the stored
//!   value, and looking the message id up for de-duplication (`recent.rs`), so the writer thread,
//!   the bottleneck, only writes.
//! * **Reads** (`mailbox`, `read`, `pending`, `pending_after`) run inline on the calling task: mailbox records
//!   and counts come from an in-memory cache that is updated after each durable round; message
//!   reads are fjall range scans, usually served from memory. A read that misses the block cache
//!   does blocking disk IO on the caller's thread. A read may see a message a few milliseconds
//!   before its append is acknowledged (committed, fsync still under way).
//!
//! # Layout
//! Seven keyspaces (`meta`, `msgs`, `dedup`, `expiry`, `slots`, and `used` and `idle` for the
//! expiry of idle mailboxes and slots); the byte layout is in
//! `codec.rs`. Message and de-duplication keys use a short store-local mailbox number instead of
//! the 32-byte id, which keeps them inline in fjall's memtable. An append writes two keys
//! (message, de-duplication record) and never the mailbox's meta record.
//!
//! Expiry uses a time-ordered index, but not one key per message: each group-commit round
//! writes one `expiry` entry per distinct receive time (usually one), keyed by that time and
//! listing the round's messages. [`MailboxStore::expire`] then reads only what is due, instead
//! of scanning every de-duplication record, and appends pay a few bytes instead of a third key.
//! An entry outlives the acks of its messages, because their de-duplication records must stay
//! until expiry too.
//!
//! # Failure
//! A failed commit or fsync stops all writes for the life of the handle (fjall poisons itself
//! the same way): every later write returns [`StoreError::Backend`]; reopen to recover from the
//! journal. Bytes on disk that do not decode are reported as [`StoreError::Backend`] naming the
//! kind of record, never panicked on, and never quoted.

mod cache;
mod codec;
mod journal;
mod recent;
mod writer;

/// The record codec on arbitrary bytes, for the fuzz target (see [`crate::fuzzing`]).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_codec(data: &[u8]) {
    if let Ok(meta) = codec::decode_meta("fuzz", data) {
        let again = codec::encode_meta(&meta.record, meta.high_water, meta.number);
        assert_eq!(
            again, data,
            "a mailbox record decodes and encodes back to itself"
        );
    }
    if let Ok((seq, received)) = codec::decode_dedup("fuzz", data) {
        assert_eq!(codec::encode_dedup(seq, received).as_slice(), data);
    }
    if let Ok((owner, next)) = codec::decode_owner("fuzz", data) {
        assert_eq!(codec::encode_owner(&owner, next).as_slice(), data);
    }
    if let Ok((day, kind, id)) = codec::decode_idle_key("fuzz", data) {
        assert_eq!(codec::idle_key(day, kind, &id).as_slice(), data);
    }
    if let Ok(day) = codec::decode_used("fuzz", data) {
        assert_eq!(day.to_be_bytes().as_slice(), data);
    }
    if let Ok((id, received, body)) = codec::decode_msg("fuzz", data) {
        let mut again = codec::msg_header(&id, received).to_vec();
        again.extend_from_slice(body);
        assert_eq!(again, data);
    }
    let _ = codec::decode_counter("fuzz", data);
    let _ = codec::msg_key_seq("fuzz", data);
    let (key, value) = data.split_at(data.len().min(16));
    let _ = codec::decode_expiry("fuzz", key, value).map(|(_, items)| items.count());
}

use crate::{
    Appended, CreateOutcome, Expired, Limits, MailboxId, MailboxKind, MailboxRecord, MailboxStore,
    NewMessage, Renewal, StoreError, StoredMessage, TakenKeyPackage,
};
use cache::{Cache, Entry};
use codec::{
    FORMAT, FORMAT_KEY, Key, decode_dedup, decode_meta, decode_msg, dedup_key, msg_key, msg_key_seq,
};
use fjall::config::CompressionPolicy;
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use journal::JournalSync;
use recent::Precheck;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};
use writer::{Prepared, Request, Tuning, Writer};

/// Tuning of a [`FjallStore`]; the defaults suit a relay on a small machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FjallOptions {
    /// Most operations (messages, acknowledged sequence numbers, ...) in one group commit.
    pub max_batch_ops: usize,
    /// Most payload bytes in one group commit (one request may overshoot it).
    pub max_batch_bytes: usize,
    /// Requests that may wait for the writer before callers are held back.
    pub queue_depth: usize,
    /// Mailboxes whose state is kept in memory (by the writer, and again for readers).
    pub cached_mailboxes: usize,
    /// Size of fjall's block cache.
    pub block_cache_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            max_batch_ops: 4096,
            max_batch_bytes: 8 * 1024 * 1024,
            queue_depth: 8192,
            cached_mailboxes: 1_000_000,
            block_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// State shared by the handle (readers) and the writer thread.
struct Shared {
    db: Database,
    meta: Keyspace,
    msgs: Keyspace,
    dedup: Keyspace,
    expiry: Keyspace,
    slots: Keyspace,
    used: Keyspace,
    idle: Keyspace,
    cache: Cache,
    limits: Limits,
    /// Commits the writer has made visible (see `recent.rs`).
    commits: AtomicU64,
    /// The newest view of the database that is durable: taken by the writer after a round's
    /// commit and published by the sync thread once that round is fsync'd. Message reads go
    /// through it, so nothing is pushed to a recipient before it would survive a crash.
    /// `None` until the first round after opening (everything on disk then is durable).
    durable: std::sync::RwLock<Option<Arc<fjall::Snapshot>>>,
}

impl Shared {
    /// Looks a message id up for the writer (see `recent.rs`); any trouble leaves it to the
    /// writer.
    fn precheck(&self, message: &NewMessage) -> Precheck {
        let Ok(Some(entry)) = self.entry("append", message.mailbox, false) else {
            return Precheck::None;
        };
        let number = entry.number;
        if message.first_attempt {
            return Precheck::FirstAttempt { number };
        }
        let as_of = self.commits.load(Ordering::Acquire);
        match self.dedup.get(dedup_key(number, &message.message_id)) {
            Ok(None) => Precheck::Absent { number, as_of },
            Ok(Some(raw)) => match decode_dedup("append", &raw) {
                Ok((seq, _)) => Precheck::Known { number, seq, as_of },
                Err(_) => Precheck::None,
            },
            Err(_) => Precheck::None,
        }
    }

    /// How many messages the mailbox with this number holds.
    fn count_messages(&self, op: &'static str, number: u64) -> Result<u64, StoreError> {
        let mut count = 0;
        for guard in self.msgs.prefix(Key::prefix(number)) {
            guard.key().map_err(|e| backend(op, &e))?;
            count += 1;
        }
        Ok(count)
    }

    /// The cached entry, loading the record (and the count if `with_count`) on a miss.
    fn entry(
        &self,
        op: &'static str,
        id: MailboxId,
        with_count: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let (hit, ticket) = self.cache.get(&id);
        if let Some(entry) = hit
            && (entry.count.is_some() || !with_count)
        {
            return Ok(Some(entry));
        }
        let Some(raw) = self.meta.get(id.0).map_err(|e| backend(op, &e))? else {
            return Ok(None);
        };
        let meta = decode_meta(op, &raw)?;
        let count = if with_count {
            Some(self.count_messages(op, meta.number)?)
        } else {
            None
        };
        let entry = Entry {
            record: meta.record,
            number: meta.number,
            count,
        };
        self.cache.fill(id, entry.clone(), ticket);
        Ok(Some(entry))
    }

    /// Visits the messages of the mailbox with this number from sequence number `first` to
    /// `last` (inclusive) in order, as of the newest durable view, while `visit` says go on.
    fn scan_durable(
        &self,
        number: u64,
        first: u64,
        last: u64,
        mut visit: impl FnMut(fjall::Guard) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let (from, to) = (msg_key(number, first), msg_key(number, last));
        let durable = self
            .durable
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let range: Box<dyn Iterator<Item = fjall::Guard>> = match &durable {
            Some(view) => Box::new(fjall::Readable::range(&**view, &self.msgs, from..=to)),
            None => Box::new(self.msgs.range(from..=to)),
        };
        for guard in range {
            if !visit(guard)? {
                break;
            }
        }
        Ok(())
    }
}

fn backend(op: &'static str, e: &fjall::Error) -> StoreError {
    StoreError::Backend {
        op,
        reason: e.to_string(),
    }
}

fn writer_gone(op: &'static str) -> StoreError {
    StoreError::Backend {
        op,
        reason: "the store's writer thread has stopped".to_owned(),
    }
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// Closes the queue and waits for the writer to finish what was queued.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

/// The embedded [`MailboxStore`]: fjall on local disk, group-committed by one writer thread.
///
/// Cheap to clone (all clones share one store). Dropping the last clone lets the writer finish
/// its queue and waits for it, which closes the database.
#[derive(Clone)]
pub struct FjallStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("limits", &self.inner.shared.limits)
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (or creates) the store in `dir` with default [`FjallOptions`].
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the database cannot be opened (IO, another process holds it,
    /// a layout this version does not know) or the writer thread cannot be started.
    pub fn open(dir: &Path, limits: Limits) -> Result<Self, StoreError> {
        Self::open_with(dir, limits, FjallOptions::default())
    }

    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// As [`FjallStore::open`].
    pub fn open_with(
        dir: &Path,
        limits: Limits,
        options: FjallOptions,
    ) -> Result<Self, StoreError> {
        let op = "open";
        let db = Database::builder(dir)
            // Durability is ours: one fsync per group commit.
            .manual_journal_persist(true)
            // Ciphertext does not compress.
            .journal_compression(CompressionType::None)
            .cache_size(options.block_cache_bytes)
            .open()
            .map_err(|e| backend(op, &e))?;
        let plain = || KeyspaceCreateOptions::default().manual_journal_persist(true);
        let keyspace = |name: &str, opts: fn() -> KeyspaceCreateOptions| {
            db.keyspace(name, opts).map_err(|e| backend(op, &e))
        };
        let meta = keyspace("meta", plain)?;
        let msgs = keyspace("msgs", || {
            KeyspaceCreateOptions::default()
                .manual_journal_persist(true)
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::None))
        })?;
        let dedup = keyspace("dedup", plain)?;
        let expiry = keyspace("expiry", plain)?;
        let slots = keyspace("slots", plain)?;
        let used = keyspace("used", plain)?;
        let idle = keyspace("idle", plain)?;

        match meta.get(FORMAT_KEY).map_err(|e| backend(op, &e))? {
            Some(v) if v.as_ref() == [FORMAT] => {}
            Some(_) => {
                return Err(StoreError::Backend {
                    op,
                    reason: "the store has a layout this version does not know".to_owned(),
                });
            }
            None => {
                meta.insert(FORMAT_KEY, [FORMAT])
                    .map_err(|e| backend(op, &e))?;
                db.persist(PersistMode::SyncAll)
                    .map_err(|e| backend(op, &e))?;
            }
        }

        let shared = Arc::new(Shared {
            db,
            meta,
            msgs,
            dedup,
            expiry,
            slots,
            used,
            idle,
            cache: Cache::new(options.cached_mailboxes),
            limits,
            commits: AtomicU64::new(0),
            durable: std::sync::RwLock::new(None),
        });
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let tuning = Tuning {
            max_batch_ops: options.max_batch_ops.max(1),
            max_batch_bytes: options.max_batch_bytes.max(1),
            cached_mailboxes: options.cached_mailboxes,
        };
        let journal = JournalSync::open(dir).map_err(|e| StoreError::Backend {
            op,
            reason: e.to_string(),
        })?;
        let writer = Writer::new(Arc::clone(&shared), rx, tuning, journal)?;
        let handle = std::thread::Builder::new()
            .name("pigeon-store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Backend {
                op,
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        tracing::debug!("mailbox store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(handle),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Sends a request to the writer and waits for its (durable) answer.
    async fn call<T>(
        &self,
        op: &'static str,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, StoreError> {
        let tx = self.inner.tx.as_ref().ok_or_else(|| writer_gone(op))?;
        let (reply, answer) = oneshot::channel();
        tx.send(make(reply)).await.map_err(|_| writer_gone(op))?;
        answer.await.map_err(|_| writer_gone(op))
    }
}

impl MailboxStore for FjallStore {
    async fn create_mailbox(
        &self,
        id: MailboxId,
        record: MailboxRecord,
    ) -> Result<CreateOutcome, StoreError> {
        self.call("create_mailbox", |reply| Request::Create {
            id,
            record,
            reply,
        })
        .await?
    }

    async fn mailbox(&self, id: MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        Ok(self
            .shared()
            .entry("mailbox", id, false)?
            .map(|entry| entry.record))
    }

    async fn append(&self, batch: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let n = batch.len();
        if n == 0 {
            return Vec::new();
        }
        let shared = self.shared();
        let limit = shared.limits.max_ciphertext;
        let batch = batch
            .iter()
            .map(|m| {
                let check = if m.ciphertext.len() <= limit {
                    shared.precheck(m)
                } else {
                    Precheck::None
                };
                Prepared::new(m, limit, check)
            })
            .collect();
        match self
            .call("append", |reply| Request::Append { batch, reply })
            .await
        {
            Ok(results) => results,
            Err(e) => {
                let reason = e.to_string();
                (0..n)
                    .map(|_| {
                        Err(StoreError::Backend {
                            op: "append",
                            reason: reason.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    async fn read(
        &self,
        id: MailboxId,
        after_seq: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let op = "read";
        let shared = self.shared();
        let Some(entry) = shared.entry(op, id, false)? else {
            return Err(StoreError::NoSuchMailbox);
        };
        let mut out = Vec::new();
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(out);
        };
        if max_messages == 0 {
            return Ok(out);
        }
        let mut bytes = 0usize;
        shared.scan_durable(entry.number, first, u64::MAX, |guard| {
            let (key, value) = guard.into_inner().map_err(|e| backend(op, &e))?;
            let seq = msg_key_seq(op, &key)?;
            let (message_id, received_at, ciphertext) = decode_msg(op, &value)?;
            if !out.is_empty() && bytes.saturating_add(ciphertext.len()) > max_bytes {
                return Ok(false);
            }
            bytes = bytes.saturating_add(ciphertext.len());
            out.push(StoredMessage {
                seq,
                message_id,
                received_at,
                ciphertext: ciphertext.to_vec(),
            });
            Ok(out.len() < max_messages)
        })?;
        Ok(out)
    }

    async fn pending(&self, id: MailboxId) -> Result<u64, StoreError> {
        match self.shared().entry("pending", id, true)? {
            Some(Entry {
                count: Some(count), ..
            }) => Ok(count),
            Some(_) => Err(StoreError::Backend {
                op: "pending",
                reason: "message count unavailable".to_owned(),
            }),
            None => Err(StoreError::NoSuchMailbox),
        }
    }

    async fn pending_after(
        &self,
        id: MailboxId,
        after_seq: u64,
        through_seq: u64,
    ) -> Result<u64, StoreError> {
        let op = "pending";
        if after_seq == 0 && through_seq == u64::MAX {
            // Everything: the cached count, as `pending` keeps it.
            return self.pending(id).await;
        }
        let shared = self.shared();
        let Some(entry) = shared.entry(op, id, false)? else {
            return Err(StoreError::NoSuchMailbox);
        };
        let Some(first) = after_seq.checked_add(1).filter(|&f| f <= through_seq) else {
            return Ok(0);
        };
        let mut count = 0u64;
        shared.scan_durable(entry.number, first, through_seq, |guard| {
            guard.key().map_err(|e| backend(op, &e))?;
            count += 1;
            Ok(true)
        })?;
        Ok(count)
    }

    async fn update_mailbox(
        &self,
        id: MailboxId,
        new_owner_key: Option<[u8; 32]>,
        new_cap_hash: [u8; 32],
    ) -> Result<u64, StoreError> {
        self.call("update_mailbox", |reply| Request::Update {
            id,
            new_owner: new_owner_key,
            new_cap_hash,
            reply,
        })
        .await?
    }

    async fn ack(&self, id: MailboxId, seqs: Vec<u64>) -> Result<u64, StoreError> {
        // Tell a missing mailbox apart, and spare the writer what would delete nothing: an
        // empty ack, or any ack of a log (a mailbox's kind never changes while it exists).
        let entry = self.shared().entry("ack", id, false)?;
        match entry {
            None => return Err(StoreError::NoSuchMailbox),
            Some(e) if seqs.is_empty() || e.record.kind == MailboxKind::Log => return Ok(0),
            Some(_) => {}
        }
        self.call("ack", |reply| Request::Ack { id, seqs, reply })
            .await?
    }

    async fn delete_mailbox(&self, id: MailboxId) -> Result<bool, StoreError> {
        self.call("delete_mailbox", |reply| Request::Delete { id, reply })
            .await?
    }

    async fn publish_key_packages(
        &self,
        slot: [u8; 32],
        owner_key: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
    ) -> Result<u32, StoreError> {
        self.call("publish_key_packages", |reply| Request::Publish {
            slot,
            owner: owner_key,
            one_time,
            last_resort,
            now,
            reply,
        })
        .await?
    }

    async fn renew(&self, what: Renewal, now: u64) -> Result<bool, StoreError> {
        // Renewed today already (what a relay sees on every subscribe after the first of the
        // day): a read here, instead of a trip through the writer and its round's fsync.
        let key = match what {
            Renewal::Mailbox(id) => codec::used_key(codec::USED_MAILBOX, &id.0),
            Renewal::Slot(slot) => codec::used_key(codec::USED_SLOT, &slot),
        };
        if let Some(raw) = self
            .shared()
            .used
            .get(key)
            .map_err(|e| backend("renew", &e))?
            && codec::decode_used("renew", &raw)? >= now / codec::DAY
        {
            return Ok(true);
        }
        self.call("renew", |reply| Request::Renew { what, now, reply })
            .await?
    }

    async fn take_key_package(
        &self,
        slot: [u8; 32],
    ) -> Result<Option<TakenKeyPackage>, StoreError> {
        self.call("take_key_package", |reply| Request::Take { slot, reply })
            .await?
    }

    async fn expire(&self, now: u64) -> Result<Expired, StoreError> {
        self.call("expire", |reply| Request::Expire { now, reply })
            .await?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;
    use crate::conformance::{
        IDLE, append_one, cap, limits, log, mbx, msg, posted_with, record, seqs,
    };

    /// A fresh store in a temporary directory, for the conformance suite.
    async fn open(limits: Limits) -> (tempfile::TempDir, FjallStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), limits).unwrap();
        (dir, store)
    }

    crate::mailbox_store_conformance!(open);

    #[tokio::test]
    async fn duplicates_are_caught_in_batch_after_ack_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            store.create_mailbox(mbx(1), record(1)).await.unwrap();
            let results = store
                .append(vec![
                    msg(mbx(1), 1, 10),
                    msg(mbx(1), 2, 10),
                    msg(mbx(1), 1, 10),
                ])
                .await;
            let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
            assert_eq!(
                results,
                [
                    Appended {
                        seq: 1,
                        duplicate: false
                    },
                    Appended {
                        seq: 2,
                        duplicate: false
                    },
                    Appended {
                        seq: 1,
                        duplicate: true
                    },
                ]
            );
            // Same id in another mailbox is another message.
            store.create_mailbox(mbx(2), record(2)).await.unwrap();
            let other = append_one(&store, msg(mbx(2), 1, 10)).await.unwrap();
            assert!(!other.duplicate);

            let retry = append_one(&store, msg(mbx(1), 2, 12)).await.unwrap();
            assert_eq!(
                retry,
                Appended {
                    seq: 2,
                    duplicate: true
                }
            );
            assert_eq!(store.ack(mbx(1), vec![1, 2]).await.unwrap(), 2);
            let after_ack = append_one(&store, msg(mbx(1), 1, 13)).await.unwrap();
            assert_eq!(
                after_ack,
                Appended {
                    seq: 1,
                    duplicate: true
                }
            );
            assert_eq!(store.pending(mbx(1)).await.unwrap(), 0);
        }
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        let after_reopen = append_one(&store, msg(mbx(1), 2, 14)).await.unwrap();
        assert_eq!(
            after_reopen,
            Appended {
                seq: 2,
                duplicate: true
            }
        );
        let fresh = append_one(&store, msg(mbx(1), 3, 14)).await.unwrap();
        assert_eq!(
            fresh,
            Appended {
                seq: 3,
                duplicate: false
            }
        );
        assert_eq!(seqs(&store, mbx(1)).await, [3]);
    }

    /// Key packages and the slot's owner survive a reopen (the rest of their behaviour is in
    /// the conformance suite).
    #[tokio::test]
    async fn key_packages_and_their_owner_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (slot, owner) = ([5u8; 32], [6u8; 32]);
        {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            let three = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
            store
                .publish_key_packages(slot, owner, three, Some(b"last".to_vec()), 1_000)
                .await
                .unwrap();
            assert_eq!(
                store.take_key_package(slot).await.unwrap().unwrap().data,
                b"a"
            );
        }
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        let mut taken = Vec::new();
        for _ in 0..3 {
            let t = store.take_key_package(slot).await.unwrap().unwrap();
            taken.push((t.data, t.last_resort));
        }
        assert_eq!(
            taken,
            [
                (b"b".to_vec(), false),
                (b"c".to_vec(), false),
                (b"last".to_vec(), true),
            ]
        );
        assert!(matches!(
            store
                .publish_key_packages(slot, [7; 32], vec![], None, 1_000)
                .await,
            Err(StoreError::SlotOwnedElsewhere)
        ));
    }

    #[tokio::test]
    async fn expiry_index_keys_stay_unique_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            store.create_mailbox(mbx(1), record(1)).await.unwrap();
            append_one(&store, msg(mbx(1), 1, 10)).await.unwrap();
        }
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        append_one(&store, msg(mbx(1), 2, 10)).await.unwrap();
        drop(store);
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        assert_eq!(store.expire(110).await.unwrap().messages, 2);
        assert!(
            !append_one(&store, msg(mbx(1), 1, 111))
                .await
                .unwrap()
                .duplicate
        );
    }

    #[tokio::test]
    async fn idle_mailboxes_and_slots_expire_unless_renewed() {
        const DAY: u64 = 86_400;
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        let created = 3 * DAY;
        let kept = MailboxRecord::new(MailboxKind::Inbox, [1; 32], [2; 32], created);
        let idle = MailboxRecord::new(MailboxKind::Log, [3; 32], [4; 32], created);
        store.create_mailbox(mbx(1), kept).await.unwrap();
        store.create_mailbox(mbx(2), idle.clone()).await.unwrap();
        append_one(&store, msg(mbx(2), 1, created)).await.unwrap();
        let (used, unused) = ([7u8; 32], [8u8; 32]);
        store
            .publish_key_packages(
                used,
                [9; 32],
                vec![b"a".to_vec()],
                Some(b"z".to_vec()),
                created,
            )
            .await
            .unwrap();
        store
            .publish_key_packages(unused, [9; 32], vec![b"b".to_vec()], None, created)
            .await
            .unwrap();

        // Renewed on later days: those stay; renewing what does not exist says so.
        let later = created + 6 * DAY;
        assert!(store.renew(Renewal::Mailbox(mbx(1)), later).await.unwrap());
        assert!(
            store
                .renew(Renewal::Mailbox(mbx(1)), later + 60)
                .await
                .unwrap()
        );
        assert!(store.renew(Renewal::Slot(used), later).await.unwrap());
        assert!(!store.renew(Renewal::Mailbox(mbx(5)), later).await.unwrap());
        assert!(!store.renew(Renewal::Slot([6; 32]), later).await.unwrap());

        // Not yet idle for ten days: nothing goes.
        let gone = store.expire(created + IDLE - DAY).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (0, 0));
        // Idle for ten days: the unrenewed log (with its message) and slot go.
        let gone = store.expire(created + IDLE + DAY).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (1, 1));
        assert!(store.mailbox(mbx(2)).await.unwrap().is_none());
        assert!(store.mailbox(mbx(1)).await.unwrap().is_some());
        assert!(store.take_key_package(unused).await.unwrap().is_none());
        assert_eq!(
            store.take_key_package(used).await.unwrap().map(|k| k.data),
            Some(b"a".to_vec())
        );
        // The same id can be made again, and starts a new life from its making.
        let remade = MailboxRecord::new(MailboxKind::Log, [3; 32], [4; 32], created + IDLE + DAY);
        store.create_mailbox(mbx(2), remade).await.unwrap();
        drop(store);

        // After a restart, the renewals hold; once they too are old, everything goes.
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        let gone = store.expire(later + IDLE - DAY).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (0, 0));
        let gone = store.expire(later + IDLE + DAY).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (1, 1));
        assert!(store.mailbox(mbx(1)).await.unwrap().is_none());
        assert!(store.mailbox(mbx(2)).await.unwrap().is_some());
        assert!(store.take_key_package(used).await.unwrap().is_none());
        let gone = store.expire(u64::MAX).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (1, 0));
        assert_eq!(store.expire(u64::MAX).await.unwrap(), Expired::default());
    }

    #[tokio::test]
    async fn a_store_made_before_renewals_lists_everything_at_its_first_sweep() {
        const DAY: u64 = 86_400;
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            store.create_mailbox(mbx(1), record(1)).await.unwrap();
            store
                .publish_key_packages([7; 32], [9; 32], vec![b"a".to_vec()], None, 1_000)
                .await
                .unwrap();
        }
        // Take the renewals away, as a store of the release before them has none.
        {
            let db = fjall::Database::builder(dir.path()).open().unwrap();
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
            let used = db.keyspace("used", KeyspaceCreateOptions::default).unwrap();
            let idle = db.keyspace("idle", KeyspaceCreateOptions::default).unwrap();
            meta.remove(codec::IDLE_INDEX_KEY).unwrap();
            for ks in [&used, &idle] {
                let keys: Vec<_> = ks.iter().map(|g| g.key().unwrap()).collect();
                for key in keys {
                    ks.remove(key).unwrap();
                }
            }
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        // The first sweep lists them as renewed on its day, so they live a full idle time more.
        let first = 100 * DAY;
        let gone = store.expire(first).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (0, 0));
        assert!(store.mailbox(mbx(1)).await.unwrap().is_some());
        let gone = store.expire(first + IDLE - DAY).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (0, 0));
        let gone = store.expire(first + IDLE + DAY).await.unwrap();
        assert_eq!((gone.mailboxes, gone.slots), (1, 1));
    }

    #[tokio::test]
    async fn expiry_runs_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let lim = Limits {
            max_depth: 10_000,
            ..limits()
        };
        let store = FjallStore::open(dir.path(), lim).unwrap();
        let total = writer::EXPIRE_CHUNK as u64 * 2 + 17;
        for k in 0..3u8 {
            store.create_mailbox(mbx(k), record(k)).await.unwrap();
        }
        let batch: Vec<_> = (0..total)
            .map(|n| msg(mbx(u8::try_from(n % 3).unwrap()), n, n % 7))
            .collect();
        assert!(store.append(batch).await.iter().all(Result::is_ok));
        store.ack(mbx(0), (1..=100).collect()).await.unwrap();
        let (expired, appended) = tokio::join!(
            store.expire(1_000),
            append_one(&store, msg(mbx(1), total + 1, 1_000))
        );
        assert_eq!(expired.unwrap().messages, total - 100);
        assert!(appended.unwrap().seq > 0);
        for k in 0..3u8 {
            let left = store.pending(mbx(k)).await.unwrap();
            assert_eq!(left, u64::from(k == 1));
        }
    }

    #[tokio::test]
    async fn everything_survives_reopen_and_seqs_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            for k in 1..=3u8 {
                store.create_mailbox(mbx(k), record(k)).await.unwrap();
                store
                    .append((1..=5).map(|n| msg(mbx(k), n, 10)).collect())
                    .await;
            }
            // Mailbox 2 loses its highest message, mailbox 3 everything.
            store.ack(mbx(2), vec![5]).await.unwrap();
            store.ack(mbx(3), (1..=5).collect()).await.unwrap();
            store
                .publish_key_packages([1; 32], [2; 32], vec![b"kp".to_vec()], None, 1_000)
                .await
                .unwrap();
        }
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        for k in 1..=3u8 {
            assert_eq!(store.mailbox(mbx(k)).await.unwrap(), Some(record(k)));
        }
        assert_eq!(seqs(&store, mbx(1)).await, [1, 2, 3, 4, 5]);
        assert_eq!(seqs(&store, mbx(2)).await, [1, 2, 3, 4]);
        assert!(seqs(&store, mbx(3)).await.is_empty());
        assert_eq!(store.pending(mbx(1)).await.unwrap(), 5);
        assert_eq!(store.pending(mbx(2)).await.unwrap(), 4);
        assert_eq!(store.pending(mbx(3)).await.unwrap(), 0);
        let m1 = store.read(mbx(1), 2, 1, 100).await.unwrap();
        assert_eq!(m1[0].ciphertext, b"ciphertext 3");
        for k in 1..=3u8 {
            let a = append_one(&store, msg(mbx(k), 100, 20)).await.unwrap();
            assert_eq!(
                a,
                Appended {
                    seq: 6,
                    duplicate: false
                },
                "mailbox {k}"
            );
        }
        let kp = store.take_key_package([1; 32]).await.unwrap().unwrap();
        assert_eq!(kp.data, b"kp");
        drop(store);
        // And once more, with the writer's state rebuilt from disk again.
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        assert_eq!(
            append_one(&store, msg(mbx(3), 101, 20)).await.unwrap().seq,
            7
        );
        assert_eq!(store.take_key_package([1; 32]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_bytes_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            store.create_mailbox(mbx(1), record(1)).await.unwrap();
            store.create_mailbox(mbx(2), record(2)).await.unwrap();
            store.append(vec![msg(mbx(2), 1, 10)]).await;
        }
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
            let msgs = db.keyspace("msgs", KeyspaceCreateOptions::default).unwrap();
            meta.insert(mbx(1).0, b"garbage").unwrap();
            // Mailbox 2 was the second created: its number is 1.
            msgs.insert(msg_key(1, 1).as_ref(), b"short").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        let err = store.mailbox(mbx(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend { .. }));
        assert!(err.to_string().contains("corrupt mailbox record"), "{err}");
        assert!(matches!(
            append_one(&store, msg(mbx(1), 1, 10)).await,
            Err(StoreError::Backend { .. })
        ));
        let err = store.read(mbx(2), 0, 10, 100).await.unwrap_err();
        assert!(err.to_string().contains("corrupt message"), "{err}");
        // The corrupt message is still past its expiry entry's time: it goes.
        assert_eq!(store.expire(10 + 100).await.unwrap().messages, 1);
        assert!(store.read(mbx(2), 0, 10, 100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn answered_writes_are_in_the_journal_without_a_clean_shutdown() {
        // Copying the files of a store that is still open is what a crash leaves behind
        // (short of losing the page cache, which only the fsync covers).
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        store.create_mailbox(mbx(1), record(1)).await.unwrap();
        store
            .append((1..=3).map(|n| msg(mbx(1), n, 10)).collect())
            .await;
        store.ack(mbx(1), vec![2]).await.unwrap();
        copy_dir(dir.path(), copy.path());
        let recovered = FjallStore::open(copy.path(), limits()).unwrap();
        assert_eq!(seqs(&recovered, mbx(1)).await, [1, 3]);
        drop(store);
    }

    fn copy_dir(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn clones_share_one_store_and_drop_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        let clone = store.clone();
        clone.create_mailbox(mbx(1), record(1)).await.unwrap();
        assert_eq!(store.mailbox(mbx(1)).await.unwrap(), Some(record(1)));
        assert!(
            FjallStore::open(dir.path(), limits()).is_err(),
            "locked while open"
        );
        drop(store);
        drop(clone);
        let reopened = FjallStore::open(dir.path(), limits()).unwrap();
        assert_eq!(reopened.mailbox(mbx(1)).await.unwrap(), Some(record(1)));
    }

    #[tokio::test]
    async fn logs_survive_reopen_and_a_crash_with_their_updates() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let want = {
            let store = FjallStore::open(dir.path(), limits()).unwrap();
            store.create_mailbox(mbx(1), log(1)).await.unwrap();
            store
                .append(
                    (1..=3)
                        .map(|n| posted_with(msg(mbx(1), n, 10), cap(1)))
                        .collect(),
                )
                .await;
            store.ack(mbx(1), vec![1, 2, 3]).await.unwrap();
            store
                .update_mailbox(mbx(1), Some([42; 32]), cap(2))
                .await
                .unwrap();
            // What a crash right now leaves behind.
            copy_dir(dir.path(), copy.path());
            store.mailbox(mbx(1)).await.unwrap().unwrap()
        };
        for path in [dir.path(), copy.path()] {
            let store = FjallStore::open(path, limits()).unwrap();
            assert_eq!(store.mailbox(mbx(1)).await.unwrap().as_ref(), Some(&want));
            assert_eq!(want.kind, MailboxKind::Log);
            assert_eq!(seqs(&store, mbx(1)).await, [1, 2, 3]);
            assert_eq!(store.pending_after(mbx(1), 1, u64::MAX).await.unwrap(), 2);
            assert!(matches!(
                append_one(&store, posted_with(msg(mbx(1), 4, 10), cap(1))).await,
                Err(StoreError::CapabilityRetired)
            ));
            let next = append_one(&store, posted_with(msg(mbx(1), 5, 10), cap(2))).await;
            assert_eq!(next.unwrap().seq, 4);
            assert!(
                append_one(&store, posted_with(msg(mbx(1), 2, 11), cap(2)))
                    .await
                    .unwrap()
                    .duplicate
            );
            assert_eq!(store.ack(mbx(1), vec![4]).await.unwrap(), 0);
        }
        // And once more after the writes of the last open.
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        assert_eq!(seqs(&store, mbx(1)).await, [1, 2, 3, 4]);
    }

    #[test]
    fn store_is_send_sync_and_futures_are_send() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), limits()).unwrap();
        assert_send_sync(&store);
        fn assert_send<F: Send>(_: F) {}
        assert_send(store.append(Vec::new()));
        assert_send(store.read(mbx(1), 0, 1, 1));
    }
}
