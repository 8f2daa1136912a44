//! The writer thread, the only place that changes the store, and its sync thread.
//!
//! Callers send a [`Request`] over a bounded channel (which pushes back on them when the writer
//! falls behind) and await a oneshot answer. The writer takes the first request, drains
//! whatever else is queued up to a bound, applies everything to one fjall write batch and
//! commits it (journal write and memtable, no fsync). It hands the round to the [`Syncer`],
//! which fsyncs the journal once for all rounds waiting, publishes the new mailbox state to the
//! readers' cache and only then answers the round's callers. Concurrent callers thus share one
//! fsync (group commit), and the next round is prepared while the last one is synced.
//!
//! Being the only writer, the thread owns the authoritative per-mailbox state (record, number,
//! next sequence number, which sequence numbers are held) in a map loaded lazily from disk, so
//! sequence numbers rise strictly in durable order, limits are checked without a
//! read-modify-write race, and an ack needs no read.
//!
//! Reads do not see the open batch, so the writer remembers the message ids it wrote lately
//! (`recent.rs`). Operations that need to scan what the batch holds (deleting a mailbox, key
//! packages, expiry, acknowledging a message appended in the same batch) first commit the open
//! batch, which makes it visible to reads; the round's fsync still covers everything. A key is
//! therefore never written twice in one batch.
//!
//! Sequence numbers continue across restarts without reuse: on load, the next number is one past
//! the larger of the highest stored message and the mailbox's high-water mark. Appends never
//! write the meta record; a batch that deletes messages of a mailbox (ack, expiry) or updates
//! it rewrites it once with the high-water mark, so a deleted highest message is still
//! remembered.
//!
//! A log's capability check on append is made here too, against the record as of that append:
//! an update retires a capability between two appends, never during one, so `read_until` (the
//! last number assigned before the update) covers everything the retired capability posted.

use super::Shared;
use super::cache::Entry;
use super::codec::{
    DAY, EXPIRY_ITEM, ExpiryItem, IDLE_INDEX_KEY, Key, NUMBER_KEY, ROUND_KEY, SLOT_LAST_RESORT,
    SLOT_ONE_TIME, SLOT_OWNER, USED_MAILBOX, USED_SLOT, decode_counter, decode_dedup,
    decode_expiry, decode_idle_key, decode_meta, decode_owner, decode_used, dedup_key,
    encode_dedup, encode_meta, encode_owner, expiry_key, idle_key, msg_header, msg_key,
    msg_key_seq, one_time_key, push_expiry_item, slot_key, used_key,
};
use super::journal::JournalSync;
use super::recent::{Precheck, Recent};
use crate::{
    Appended, CreateOutcome, Expired, MAX_RETIRED_CAPS, MailboxId, MailboxKind, MailboxRecord,
    MessageId, NewMessage, Renewal, RetiredCap, StoreError, TakenKeyPackage,
};
use byteview::ByteView;
use fjall::{OwnedWriteBatch, PersistMode, Slice};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Commits whose new de-duplication records the writer remembers (see `recent.rs`).
const RECENT_COMMITS: usize = 16;

/// Messages handled per expiry round (at least one index entry), so a large expiry never
/// stalls appends for long.
pub(super) const EXPIRE_CHUNK: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A message ready for the writer: its stored value is built on the caller's thread.
pub(super) struct Prepared {
    mailbox: MailboxId,
    message_id: MessageId,
    now: u64,
    /// Ciphertext length.
    len: usize,
    /// The capability hash it was posted with, for a log's check.
    cap_hash: Option<[u8; 32]>,
    /// Header and ciphertext; `None` when the ciphertext is over the limit.
    value: Option<Slice>,
    /// The caller's de-duplication lookup.
    precheck: Precheck,
}

impl Prepared {
    pub(super) fn new(message: &NewMessage, max_ciphertext: usize, precheck: Precheck) -> Self {
        let len = message.ciphertext.len();
        let value = (len <= max_ciphertext).then(|| {
            let header = msg_header(&message.message_id, message.now);
            Slice::from(ByteView::fused(&header, &message.ciphertext))
        });
        Self {
            mailbox: message.mailbox,
            message_id: message.message_id,
            now: message.now,
            len,
            cap_hash: message.cap_hash,
            value,
            precheck,
        }
    }
}

/// One write operation for the writer thread.
pub(super) enum Request {
    Create {
        id: MailboxId,
        record: MailboxRecord,
        reply: Reply<CreateOutcome>,
    },
    Append {
        batch: Vec<Prepared>,
        reply: oneshot::Sender<Vec<Result<Appended, StoreError>>>,
    },
    Ack {
        id: MailboxId,
        seqs: Vec<u64>,
        reply: Reply<u64>,
    },
    Delete {
        id: MailboxId,
        reply: Reply<bool>,
    },
    Update {
        id: MailboxId,
        new_owner: Option<[u8; 32]>,
        new_cap_hash: [u8; 32],
        reply: Reply<u64>,
    },
    Publish {
        slot: [u8; 32],
        owner: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
        reply: Reply<u32>,
    },
    Renew {
        what: Renewal,
        now: u64,
        reply: Reply<bool>,
    },
    Take {
        slot: [u8; 32],
        reply: Reply<Option<TakenKeyPackage>>,
    },
    Expire {
        now: u64,
        reply: Reply<Expired>,
    },
}

impl Request {
    /// (operations, bytes) this request adds to a round, for the batch bounds.
    fn weight(&self) -> (usize, usize) {
        match self {
            Self::Append { batch, .. } => (batch.len(), batch.iter().map(|m| m.len + 128).sum()),
            Self::Ack { seqs, .. } => (seqs.len().max(1), seqs.len() * 48),
            Self::Publish {
                one_time,
                last_resort,
                ..
            } => (
                one_time.len() + 1,
                one_time.iter().chain(last_resort).map(Vec::len).sum(),
            ),
            _ => (1, 64),
        }
    }

    /// Answers without doing anything: the writer cannot write any more.
    fn refuse(self, reason: &str) {
        let err = |op| StoreError::Backend {
            op,
            reason: reason.to_owned(),
        };
        // A caller that went away no longer needs its answer.
        match self {
            Self::Create { reply, .. } => drop(reply.send(Err(err("create_mailbox")))),
            Self::Append { batch, reply } => {
                drop(reply.send(batch.iter().map(|_| Err(err("append"))).collect()))
            }
            Self::Ack { reply, .. } => drop(reply.send(Err(err("ack")))),
            Self::Delete { reply, .. } => drop(reply.send(Err(err("delete_mailbox")))),
            Self::Update { reply, .. } => drop(reply.send(Err(err("update_mailbox")))),
            Self::Publish { reply, .. } => drop(reply.send(Err(err("publish_key_packages")))),
            Self::Renew { reply, .. } => drop(reply.send(Err(err("renew")))),
            Self::Take { reply, .. } => drop(reply.send(Err(err("take_key_package")))),
            Self::Expire { reply, .. } => drop(reply.send(Err(err("expire")))),
        }
    }
}

/// An answer held back until the round is durable.
enum Done {
    Create(Reply<CreateOutcome>, Result<CreateOutcome, StoreError>),
    Append(
        oneshot::Sender<Vec<Result<Appended, StoreError>>>,
        Vec<Result<Appended, StoreError>>,
    ),
    Ack(Reply<u64>, Result<u64, StoreError>),
    Delete(Reply<bool>, Result<bool, StoreError>),
    Update(Reply<u64>, Result<u64, StoreError>),
    Publish(Reply<u32>, Result<u32, StoreError>),
    Renew(Reply<bool>, Result<bool, StoreError>),
    Take(
        Reply<Option<TakenKeyPackage>>,
        Result<Option<TakenKeyPackage>, StoreError>,
    ),
    Expire(Reply<Expired>, Result<Expired, StoreError>),
}

/// Turns a success into a failure when the round could not be made durable.
fn unless_failed<T>(
    result: Result<T, StoreError>,
    op: &'static str,
    failure: Option<&str>,
) -> Result<T, StoreError> {
    match (result, failure) {
        (Ok(_), Some(reason)) => Err(StoreError::Backend {
            op,
            reason: reason.to_owned(),
        }),
        (result, _) => result,
    }
}

impl Done {
    fn send(self, failure: Option<&str>) {
        // A caller that went away no longer needs its answer.
        match self {
            Self::Create(tx, r) => drop(tx.send(unless_failed(r, "create_mailbox", failure))),
            Self::Append(tx, mut rs) => {
                if failure.is_some() {
                    for r in &mut rs {
                        let taken = std::mem::replace(
                            r,
                            Ok(Appended {
                                seq: 0,
                                duplicate: false,
                            }),
                        );
                        *r = unless_failed(taken, "append", failure);
                    }
                }
                drop(tx.send(rs));
            }
            Self::Ack(tx, r) => drop(tx.send(unless_failed(r, "ack", failure))),
            Self::Delete(tx, r) => drop(tx.send(unless_failed(r, "delete_mailbox", failure))),
            Self::Update(tx, r) => drop(tx.send(unless_failed(r, "update_mailbox", failure))),
            Self::Publish(tx, r) => {
                drop(tx.send(unless_failed(r, "publish_key_packages", failure)))
            }
            Self::Take(tx, r) => drop(tx.send(unless_failed(r, "take_key_package", failure))),
            Self::Renew(tx, r) => drop(tx.send(unless_failed(r, "renew", failure))),
            Self::Expire(tx, r) => drop(tx.send(unless_failed(r, "expire", failure))),
        }
    }
}

/// The sequence numbers a mailbox holds, as sorted, disjoint, half-open runs.
///
/// Appends extend the last run and acks usually take from the front, so there is typically one
/// run; there are never more runs than messages (at most the depth limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Runs {
    runs: Vec<(u64, u64)>,
    count: u64,
}

impl Runs {
    /// Adds `seq`, which must be above every held number.
    fn push(&mut self, seq: u64) {
        match self.runs.last_mut() {
            Some((_, end)) if *end == seq => *end += 1,
            _ => self.runs.push((seq, seq + 1)),
        }
        self.count += 1;
    }

    /// Removes `seq`; false if it was not held.
    fn remove(&mut self, seq: u64) -> bool {
        let after = self.runs.partition_point(|&(start, _)| start <= seq);
        let Some(i) = after.checked_sub(1) else {
            return false;
        };
        let (start, end) = self.runs[i];
        if seq >= end {
            return false;
        }
        match (seq == start, seq + 1 == end) {
            (true, true) => {
                self.runs.remove(i);
            }
            (true, false) => self.runs[i].0 += 1,
            (false, true) => self.runs[i].1 -= 1,
            (false, false) => {
                self.runs[i].1 = seq;
                self.runs.insert(i + 1, (seq + 1, end));
            }
        }
        self.count -= 1;
        true
    }
}

/// The writer's state of one mailbox.
struct Mailbox {
    record: MailboxRecord,
    /// Store-local number, the prefix of its keys.
    number: u64,
    next_seq: u64,
    stored: Runs,
    /// First sequence number appended in the open batch, valid when `uncommitted_epoch` is it.
    uncommitted_from: u64,
    uncommitted_epoch: u64,
    /// Open batch in which the meta record is due to be (re)written.
    meta_epoch: u64,
    /// Round in which the mailbox was last touched (to publish it once).
    touched_round: u64,
}

struct ExpireJob {
    cutoff: u64,
    /// Mailboxes and slots last renewed before this day are due (`None`: none can be yet).
    idle_before: Option<u64>,
    /// The day of the sweep (what a store made before renewals lists everything as).
    today: u64,
    /// Messages are done; idle mailboxes and slots are next.
    messages_done: bool,
    total: Expired,
    reply: Reply<Expired>,
}

/// A committed round on its way to durability.
struct Settled {
    done: Vec<Done>,
    /// Mailbox state to show readers once durable.
    publish: Vec<(MailboxId, Option<Entry>)>,
    /// Whether the round committed anything.
    wrote: bool,
    /// The database as of this round's commit, to show readers once it is durable.
    view: Option<fjall::Snapshot>,
    /// Why the writer failed, if it has.
    failure: Option<String>,
}

/// Makes committed rounds durable, in order, then shows them to readers and answers callers.
///
/// Running beside the writer lets one round's fsync overlap the next round's work (commit
/// included: the fsync takes no lock of fjall's, see `journal.rs`), and rounds that queue up
/// behind an fsync share the next one. A failed fsync is final: this thread fails every later
/// round and tells the writer to refuse further requests.
struct Syncer {
    shared: Arc<Shared>,
    journal: JournalSync,
    rx: Receiver<Settled>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Syncer {
    fn run(mut self) {
        let mut failed: Option<String> = None;
        let mut rounds = Vec::new();
        while let Ok(first) = self.rx.recv() {
            rounds.push(first);
            while let Ok(more) = self.rx.try_recv() {
                rounds.push(more);
            }
            if failed.is_none() && rounds.iter().any(|r| r.wrote) {
                // fdatasync suffices: fjall pre-allocates each journal file and fsyncs it (and
                // its directory) when it is created or rotated.
                if let Err(e) = self.journal.sync() {
                    let reason = e.to_string();
                    tracing::error!(reason = %reason, "store fsync failed; refusing writes until restarted");
                    *self.failure.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(reason.clone());
                    self.shared.cache.clear();
                    failed = Some(reason);
                }
            }
            for round in rounds.drain(..) {
                if failed.is_none() && round.failure.is_some() {
                    self.shared.cache.clear();
                    failed = round.failure;
                }
                if failed.is_none() {
                    if let Some(view) = round.view {
                        *self
                            .shared
                            .durable
                            .write()
                            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(view));
                    }
                    for (id, entry) in round.publish {
                        self.shared.cache.publish(id, entry);
                    }
                }
                for done in round.done {
                    done.send(failed.as_deref());
                }
            }
        }
    }
}

/// Bounds of one round.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    pub(super) max_batch_ops: usize,
    pub(super) max_batch_bytes: usize,
    pub(super) cached_mailboxes: usize,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    tuning: Tuning,
    /// Committed rounds, on their way to the syncer thread.
    settle: Option<SyncSender<Settled>>,
    syncer: Option<JoinHandle<()>>,
    /// Set by the syncer when an fsync failed.
    sync_failure: Arc<Mutex<Option<String>>>,
    batch: OwnedWriteBatch,
    /// Number of the open batch; bumped at each commit.
    epoch: u64,
    round: u64,
    boxes: HashMap<MailboxId, Mailbox>,
    /// Message ids written in the open batch and the last few commits.
    recent: Recent,
    /// Non-empty commits made, mirrored in `Shared::commits`.
    commits: u64,
    /// Expiry index of the open batch: (receive time, listed messages).
    index: Vec<(u64, Vec<u8>)>,
    /// Number of the next expiry index round, kept in `meta` with the entries.
    next_round: u64,
    /// Number for the next new mailbox, kept in `meta` with the mailbox.
    next_number: u64,
    /// Whether the open batch must store `next_number`.
    number_dirty: bool,
    meta_dirty: Vec<MailboxId>,
    touched: Vec<MailboxId>,
    done: Vec<Done>,
    expire_jobs: VecDeque<ExpireJob>,
    /// Renewal days this writer wrote or read (`None`: none, or deleted), and the batch it
    /// last wrote them in (0: only read).
    used: HashMap<(u8, [u8; 32]), (Option<u64>, u64)>,
    /// Whether every mailbox and slot is listed in the idle index ([`IDLE_INDEX_KEY`]).
    idle_indexed: bool,
    /// Whether this round committed anything (and so needs an fsync).
    wrote: bool,
    /// Set for good after a failed commit or fsync: fjall refuses writes from then on too.
    failed: Option<String>,
}

fn backend(op: &'static str) -> impl Fn(fjall::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        reason: e.to_string(),
    }
}

impl Writer {
    /// A writer for `shared`, reading the round counter from disk.
    pub(super) fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Request>,
        tuning: Tuning,
        journal: JournalSync,
    ) -> Result<Self, StoreError> {
        let op = "open";
        let counter = |key: &[u8]| match shared.meta.get(key).map_err(backend(op))? {
            Some(raw) => decode_counter(op, &raw),
            None => Ok(0),
        };
        let next_round = counter(ROUND_KEY)?;
        let next_number = counter(NUMBER_KEY)?;
        let idle_indexed = shared
            .meta
            .get(IDLE_INDEX_KEY)
            .map_err(backend(op))?
            .is_some();
        let batch = shared.db.batch();
        // Two rounds may wait for their fsync while a third is being built.
        let (settle, settled) = sync_channel(2);
        let sync_failure = Arc::new(Mutex::new(None));
        let syncer = Syncer {
            shared: Arc::clone(&shared),
            journal,
            rx: settled,
            failure: Arc::clone(&sync_failure),
        };
        let syncer = std::thread::Builder::new()
            .name("pigeon-store-sync".to_owned())
            .spawn(move || syncer.run())
            .map_err(|e| StoreError::Backend {
                op,
                reason: format!("cannot start the sync thread: {e}"),
            })?;
        Ok(Self {
            shared,
            rx,
            tuning,
            settle: Some(settle),
            syncer: Some(syncer),
            sync_failure,
            batch,
            epoch: 1,
            round: 0,
            boxes: HashMap::new(),
            recent: Recent::new(RECENT_COMMITS, 0),
            commits: 0,
            index: Vec::new(),
            next_round,
            next_number,
            number_dirty: false,
            meta_dirty: Vec::new(),
            touched: Vec::new(),
            done: Vec::new(),
            expire_jobs: VecDeque::new(),
            used: HashMap::new(),
            idle_indexed,
            wrote: false,
            failed: None,
        })
    }

    /// Runs rounds until every sender is gone and the queue is empty.
    pub(super) fn run(mut self) {
        let mut inbox = Vec::new();
        loop {
            if self.expire_jobs.is_empty() {
                match self.rx.blocking_recv() {
                    Some(request) => inbox.push(request),
                    None => break,
                }
            }
            let (mut ops, mut bytes) = inbox.first().map_or((0, 0), Request::weight);
            while ops < self.tuning.max_batch_ops && bytes < self.tuning.max_batch_bytes {
                match self.rx.try_recv() {
                    Ok(request) => {
                        let (o, b) = request.weight();
                        ops += o;
                        bytes += b;
                        inbox.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.round(&mut inbox);
        }
        // Let the syncer make the last rounds durable and answer them, then stop it.
        self.settle = None;
        if let Some(handle) = self.syncer.take()
            && handle.join().is_err()
        {
            tracing::error!("store sync thread panicked");
        }
        tracing::debug!("store writer finished its queue and stops");
    }

    fn round(&mut self, inbox: &mut Vec<Request>) {
        self.round += 1;
        self.wrote = false;
        if self.failed.is_none() {
            let synced = self
                .sync_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(reason) = synced {
                self.fail(reason);
            }
        }
        for request in inbox.drain(..) {
            match &self.failed {
                Some(reason) => request.refuse(reason),
                None => self.handle(request),
            }
        }
        if self.failed.is_none() && !self.expire_jobs.is_empty() {
            self.expire_step();
        }
        if self.failed.is_none()
            && let Err(reason) = self.flush_batch()
        {
            self.fail(reason);
        }
        // The round's journal bytes go to the kernel here, under fjall's lock; the syncer's
        // fdatasync then needs none.
        if self.failed.is_none()
            && self.wrote
            && let Err(e) = self.shared.db.persist(PersistMode::Buffer)
        {
            self.fail(e.to_string());
        }
        let mut publish = Vec::with_capacity(self.touched.len());
        for id in self.touched.drain(..) {
            let entry = self.boxes.get(&id).map(|b| Entry {
                record: b.record.clone(),
                number: b.number,
                count: Some(b.stored.count),
            });
            publish.push((id, entry));
        }
        let capacity = self.done.len();
        let settled = Settled {
            done: std::mem::replace(&mut self.done, Vec::with_capacity(capacity)),
            publish,
            wrote: self.wrote,
            view: self.wrote.then(|| self.shared.db.snapshot()),
            failure: self.failed.clone(),
        };
        let sent = match &self.settle {
            Some(settle) => settle.send(settled).map_err(|e| e.0),
            None => Err(settled),
        };
        if let Err(settled) = sent {
            // Without the syncer nothing can be made durable.
            let reason = "the store's sync thread has stopped".to_owned();
            for done in settled.done {
                done.send(Some(&reason));
            }
            if self.failed.is_none() {
                self.fail(reason);
            }
        }
        if self.boxes.len() > self.tuning.cached_mailboxes {
            // Everything is committed; a cleared map reloads lazily.
            self.boxes.clear();
        }
        if self.used.len() > self.tuning.cached_mailboxes {
            self.used.clear();
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(reason = %reason, "store write failed; refusing writes until restarted");
        self.failed = Some(reason);
        self.batch = self.shared.db.batch();
        self.boxes.clear();
        self.used.clear();
        self.recent.reset(self.commits);
        self.index.clear();
        self.number_dirty = false;
        self.meta_dirty.clear();
        self.touched.clear();
        self.shared.cache.clear();
        for job in self.expire_jobs.drain(..) {
            self.done.push(Done::Expire(job.reply, Ok(job.total)));
        }
    }

    /// Commits the open batch (no fsync) so that reads see it, and opens a new one.
    fn flush_batch(&mut self) -> Result<(), String> {
        for id in self.meta_dirty.drain(..) {
            if let Some(b) = self.boxes.get(&id) {
                let value = encode_meta(&b.record, b.next_seq - 1, b.number);
                self.batch.insert(&self.shared.meta, id.0, value);
            }
        }
        if !self.index.is_empty() {
            let round = self.next_round;
            for (received_at, items) in self.index.drain(..) {
                self.batch.insert(
                    &self.shared.expiry,
                    expiry_key(received_at, round),
                    Slice::from(items),
                );
            }
            self.next_round += 1;
            self.batch
                .insert(&self.shared.meta, ROUND_KEY, self.next_round.to_be_bytes());
        }
        if std::mem::take(&mut self.number_dirty) {
            self.batch.insert(
                &self.shared.meta,
                NUMBER_KEY,
                self.next_number.to_be_bytes(),
            );
        }
        let batch = std::mem::replace(&mut self.batch, self.shared.db.batch());
        self.epoch += 1;
        if batch.is_empty() {
            return Ok(());
        }
        batch.commit().map_err(|e| e.to_string())?;
        self.commits += 1;
        self.shared.commits.store(self.commits, Ordering::Release);
        self.recent.committed(self.commits);
        self.wrote = true;
        Ok(())
    }

    /// A barrier inside a round: commits the open batch, or fails the writer.
    fn barrier(&mut self, op: &'static str) -> Result<(), StoreError> {
        self.flush_batch().map_err(|reason| {
            self.fail(reason.clone());
            StoreError::Backend { op, reason }
        })
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Create { id, record, reply } => {
                let r = self.create(id, record);
                self.done.push(Done::Create(reply, r));
            }
            Request::Append { batch, reply } => {
                let mut results = Vec::with_capacity(batch.len());
                for message in batch {
                    results.push(self.append(message));
                }
                self.done.push(Done::Append(reply, results));
            }
            Request::Ack { id, seqs, reply } => {
                let r = self.ack(id, seqs);
                self.done.push(Done::Ack(reply, r));
            }
            Request::Delete { id, reply } => {
                let r = self.delete(id);
                self.done.push(Done::Delete(reply, r));
            }
            Request::Update {
                id,
                new_owner,
                new_cap_hash,
                reply,
            } => {
                let r = self.update(id, new_owner, new_cap_hash);
                self.done.push(Done::Update(reply, r));
            }
            Request::Publish {
                slot,
                owner,
                one_time,
                last_resort,
                now,
                reply,
            } => {
                let r = self.publish(slot, owner, one_time, last_resort, now);
                self.done.push(Done::Publish(reply, r));
            }
            Request::Renew { what, now, reply } => {
                let r = self.renew(what, now);
                self.done.push(Done::Renew(reply, r));
            }
            Request::Take { slot, reply } => {
                let r = self.take(slot);
                self.done.push(Done::Take(reply, r));
            }
            Request::Expire { now, reply } => {
                let limits = self.shared.limits;
                self.expire_jobs.push_back(ExpireJob {
                    // Nothing received at or before 0 exists: an early `now` expires nothing.
                    cutoff: now.saturating_sub(limits.expiry_secs),
                    idle_before: now.checked_sub(limits.idle_secs).map(|t| t / DAY),
                    today: now / DAY,
                    messages_done: now < limits.expiry_secs,
                    total: Expired::default(),
                    reply,
                });
            }
        }
    }

    /// Makes sure the mailbox's state is in the map; false if the mailbox does not exist.
    fn load(&mut self, op: &'static str, id: MailboxId) -> Result<bool, StoreError> {
        if self.boxes.contains_key(&id) {
            return Ok(true);
        }
        let Some(raw) = self.shared.meta.get(id.0).map_err(backend(op))? else {
            return Ok(false);
        };
        let meta = decode_meta(op, &raw)?;
        let mut stored = Runs::default();
        for guard in self.shared.msgs.prefix(Key::prefix(meta.number)) {
            let key = guard.key().map_err(backend(op))?;
            stored.push(msg_key_seq(op, &key)?);
        }
        let last = stored.runs.last().map_or(0, |&(_, end)| end - 1);
        self.boxes.insert(
            id,
            Mailbox {
                record: meta.record,
                number: meta.number,
                next_seq: meta.high_water.max(last) + 1,
                stored,
                uncommitted_from: 0,
                uncommitted_epoch: 0,
                meta_epoch: 0,
                touched_round: 0,
            },
        );
        Ok(true)
    }

    /// Notes that the mailbox changed: its meta is rewritten at commit and it is published.
    fn mark(&mut self, id: MailboxId, meta: bool) {
        if let Some(b) = self.boxes.get_mut(&id) {
            if meta && b.meta_epoch != self.epoch {
                b.meta_epoch = self.epoch;
                self.meta_dirty.push(id);
            }
            if b.touched_round != self.round {
                b.touched_round = self.round;
                self.touched.push(id);
            }
        }
    }

    fn create(
        &mut self,
        id: MailboxId,
        mut record: MailboxRecord,
    ) -> Result<CreateOutcome, StoreError> {
        let op = "create_mailbox";
        if self.load(op, id)? {
            return match self.boxes.get(&id) {
                Some(b) if b.record.same_creation(&record) => Ok(CreateOutcome::AlreadyExists),
                _ => Err(StoreError::MailboxExists),
            };
        }
        record.retired_caps = Vec::new();
        let number = self.next_number;
        self.next_number += 1;
        self.number_dirty = true;
        self.boxes.insert(
            id,
            Mailbox {
                record,
                number,
                next_seq: 1,
                stored: Runs::default(),
                uncommitted_from: 0,
                uncommitted_epoch: 0,
                meta_epoch: 0,
                touched_round: 0,
            },
        );
        self.mark(id, true);
        let created = self.boxes.get(&id).map_or(0, |b| b.record.created_at / DAY);
        self.set_used(op, USED_MAILBOX, &id.0, created)?;
        Ok(CreateOutcome::Created)
    }

    fn append(&mut self, message: Prepared) -> Result<Appended, StoreError> {
        let op = "append";
        let limits = self.shared.limits;
        let Some(value) = message.value else {
            return Err(StoreError::MessageTooLarge {
                len: message.len,
                limit: limits.max_ciphertext,
            });
        };
        let id = message.mailbox;
        if !self.load(op, id)? {
            return Err(StoreError::NoSuchMailbox);
        }
        let Some(b) = self.boxes.get(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        let (number, kind) = (b.number, b.record.kind);
        if kind == MailboxKind::Log
            && let Some(hash) = message.cap_hash
            && hash != b.record.sender_cap_hash
        {
            return Err(match b.record.retired(&hash) {
                Some(_) => StoreError::CapabilityRetired,
                None => StoreError::BadCapability,
            });
        }
        let dkey = dedup_key(number, &message.message_id);
        let stored = match self.recent.resolve(message.precheck, number, &dkey) {
            Some(known) => known,
            None => match self.recent.get(&dkey) {
                Some(seq) => Some(seq),
                None => match self.shared.dedup.get(dkey).map_err(backend(op))? {
                    Some(raw) => Some(decode_dedup(op, &raw)?.0),
                    None => None,
                },
            },
        };
        if let Some(seq) = stored {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        let epoch = self.epoch;
        let Some(b) = self.boxes.get_mut(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        let limit = match kind {
            MailboxKind::Inbox => limits.max_depth,
            MailboxKind::Log => limits.max_log_depth,
        };
        if b.stored.count >= limit {
            return Err(StoreError::MailboxFull { limit });
        }
        let seq = b.next_seq;
        b.next_seq += 1;
        b.stored.push(seq);
        if b.uncommitted_epoch != epoch {
            b.uncommitted_epoch = epoch;
            b.uncommitted_from = seq;
        }
        let shared = &self.shared;
        self.batch
            .insert(&shared.msgs, msg_key(number, seq).as_ref(), value);
        self.batch
            .insert(&shared.dedup, dkey.as_ref(), encode_dedup(seq, message.now));
        let items = match self.index.iter().rposition(|(at, _)| *at == message.now) {
            Some(i) => &mut self.index[i].1,
            None => {
                self.index
                    .push((message.now, Vec::with_capacity(EXPIRY_ITEM * 64)));
                let last = self.index.len() - 1;
                &mut self.index[last].1
            }
        };
        push_expiry_item(
            items,
            &ExpiryItem {
                number,
                mailbox: id,
                seq,
                message_id: message.message_id,
            },
        );
        self.recent.insert(dkey, seq);
        self.mark(id, false);
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    fn ack(&mut self, id: MailboxId, mut seqs: Vec<u64>) -> Result<u64, StoreError> {
        let op = "ack";
        if !self.load(op, id)? {
            return Err(StoreError::NoSuchMailbox);
        }
        let Some(b) = self.boxes.get(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        if b.record.kind == MailboxKind::Log {
            // A log keeps its messages until they expire; an ack only frees the push window.
            return Ok(0);
        }
        seqs.sort_unstable();
        seqs.dedup();
        let in_open_batch = b.uncommitted_epoch == self.epoch
            && seqs
                .iter()
                .any(|&s| s >= b.uncommitted_from && s < b.next_seq);
        if in_open_batch {
            // Never insert and delete one key in one batch: commit the append first.
            self.barrier(op)?;
        }
        let Some(b) = self.boxes.get_mut(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        let mut deleted = 0u64;
        for &seq in &seqs {
            if b.stored.remove(seq) {
                // A single delete (fjall's weak tombstone): a message key is written once, as
                // sequence numbers are never reused, and deleted at most once, as `stored` says
                // whether it is still held. Such a tombstone vanishes with its value when the two
                // meet, so a message acknowledged before its memtable is flushed never reaches a
                // table.
                self.batch
                    .remove_weak(&self.shared.msgs, msg_key(b.number, seq).as_ref());
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.mark(id, true);
        }
        Ok(deleted)
    }

    fn delete(&mut self, id: MailboxId) -> Result<bool, StoreError> {
        let op = "delete_mailbox";
        self.barrier(op)?;
        if !self.load(op, id)? {
            return Ok(false);
        }
        let Some(number) = self.boxes.get(&id).map(|b| b.number) else {
            return Ok(false);
        };
        self.recent.deleting(self.commits + 1);
        let prefix = Key::prefix(number);
        let mut keys: Vec<Slice> = Vec::new();
        for guard in self.shared.msgs.prefix(prefix) {
            keys.push(guard.key().map_err(backend(op))?);
        }
        let messages = keys.len();
        for guard in self.shared.dedup.prefix(prefix) {
            keys.push(guard.key().map_err(backend(op))?);
        }
        let (msgs, dedup) = (&self.shared.msgs, &self.shared.dedup);
        for (i, key) in keys.into_iter().enumerate() {
            self.batch
                .remove(if i < messages { msgs } else { dedup }, key);
        }
        // Expiry index entries stay: they name this mailbox's number, which is never reused,
        // so expiry only deletes keys that are gone already.
        self.batch.remove(&self.shared.meta, id.0);
        self.boxes.remove(&id);
        self.touched.push(id);
        self.clear_used(op, USED_MAILBOX, &id.0)?;
        self.barrier(op)?;
        Ok(true)
    }

    fn update(
        &mut self,
        id: MailboxId,
        new_owner: Option<[u8; 32]>,
        new_cap_hash: [u8; 32],
    ) -> Result<u64, StoreError> {
        let op = "update_mailbox";
        if !self.load(op, id)? {
            return Err(StoreError::NoSuchMailbox);
        }
        let Some(b) = self.boxes.get_mut(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        if b.record.kind != MailboxKind::Log {
            return Err(StoreError::NotALog { op });
        }
        let mut changed = false;
        if let Some(key) = new_owner
            && key != b.record.recipient_key
        {
            b.record.recipient_key = key;
            changed = true;
        }
        let read_until = if b.record.sender_cap_hash == new_cap_hash {
            // A retry of an update that was made: nothing more to retire.
            b.record.retired_caps.last().map_or(0, |r| r.read_until)
        } else {
            let read_until = b.next_seq - 1;
            let old = std::mem::replace(&mut b.record.sender_cap_hash, new_cap_hash);
            let retired = &mut b.record.retired_caps;
            retired.retain(|r| r.cap_hash != new_cap_hash);
            retired.push(RetiredCap {
                cap_hash: old,
                read_until,
            });
            if retired.len() > MAX_RETIRED_CAPS {
                let excess = retired.len() - MAX_RETIRED_CAPS;
                retired.drain(..excess);
            }
            changed = true;
            read_until
        };
        if changed {
            self.mark(id, true);
        }
        Ok(read_until)
    }

    fn publish(
        &mut self,
        slot: [u8; 32],
        owner: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
    ) -> Result<u32, StoreError> {
        let op = "publish_key_packages";
        let limits = self.shared.limits;
        if let Some(p) = one_time
            .iter()
            .chain(&last_resort)
            .find(|p| p.len() > limits.max_key_package_len)
        {
            return Err(StoreError::KeyPackageLimit {
                detail: format!(
                    "a key package of {} bytes is over the limit of {}",
                    p.len(),
                    limits.max_key_package_len
                ),
            });
        }
        self.barrier(op)?;
        let slots = &self.shared.slots;
        let owner_key = slot_key(&slot, SLOT_OWNER);
        let mut next = match slots.get(owner_key).map_err(backend(op))? {
            Some(raw) => {
                let (bound, next) = decode_owner(op, &raw)?;
                if bound != owner {
                    return Err(StoreError::SlotOwnedElsewhere);
                }
                next
            }
            None => 0,
        };
        let mut held = 0usize;
        for guard in slots.prefix(slot_key(&slot, SLOT_ONE_TIME)) {
            guard.key().map_err(backend(op))?;
            held += 1;
        }
        let total = held + one_time.len();
        if total > limits.max_key_packages {
            return Err(StoreError::KeyPackageLimit {
                detail: format!(
                    "the slot would hold {total} one-time key packages, over the limit of {}",
                    limits.max_key_packages
                ),
            });
        }
        for package in one_time {
            self.batch
                .insert(slots, one_time_key(&slot, next), Slice::from(package));
            next += 1;
        }
        if let Some(package) = last_resort {
            self.batch.insert(
                slots,
                slot_key(&slot, SLOT_LAST_RESORT),
                Slice::from(package),
            );
        }
        self.batch
            .insert(slots, owner_key, encode_owner(&owner, next));
        self.set_used(op, USED_SLOT, &slot, now / DAY)?;
        self.barrier(op)?;
        Ok(u32::try_from(total).unwrap_or(u32::MAX))
    }

    /// Renews a mailbox or slot as of `now`; false if it does not exist.
    fn renew(&mut self, what: Renewal, now: u64) -> Result<bool, StoreError> {
        let op = "renew";
        let (kind, id) = match what {
            Renewal::Mailbox(id) => {
                if !self.load(op, id)? {
                    return Ok(false);
                }
                (USED_MAILBOX, id.0)
            }
            Renewal::Slot(slot) => {
                if self.used_day(op, USED_SLOT, &slot)?.is_none()
                    && self
                        .shared
                        .slots
                        .get(slot_key(&slot, SLOT_OWNER))
                        .map_err(backend(op))?
                        .is_none()
                {
                    return Ok(false);
                }
                (USED_SLOT, slot)
            }
        };
        self.set_used(op, kind, &id, now / DAY)?;
        Ok(true)
    }

    /// The day a mailbox or slot was last renewed, as stored (or written by this writer).
    fn used_day(
        &mut self,
        op: &'static str,
        kind: u8,
        id: &[u8; 32],
    ) -> Result<Option<u64>, StoreError> {
        if let Some(&(day, _)) = self.used.get(&(kind, *id)) {
            return Ok(day);
        }
        let day = match self
            .shared
            .used
            .get(used_key(kind, id))
            .map_err(backend(op))?
        {
            Some(raw) => Some(decode_used(op, &raw)?),
            None => None,
        };
        self.used.insert((kind, *id), (day, 0));
        Ok(day)
    }

    /// Commits the open batch first if it wrote this renewal already: a key is never written
    /// twice in one batch.
    fn used_barrier(
        &mut self,
        op: &'static str,
        kind: u8,
        id: &[u8; 32],
    ) -> Result<(), StoreError> {
        if self
            .used
            .get(&(kind, *id))
            .is_some_and(|&(_, epoch)| epoch == self.epoch)
        {
            self.barrier(op)?;
        }
        Ok(())
    }

    /// Records a renewal on `day` (never moving one back): the `used` value and its `idle`
    /// key, replacing the old one.
    fn set_used(
        &mut self,
        op: &'static str,
        kind: u8,
        id: &[u8; 32],
        day: u64,
    ) -> Result<(), StoreError> {
        self.used_barrier(op, kind, id)?;
        let old = self.used_day(op, kind, id)?;
        if old.is_some_and(|old| old >= day) {
            return Ok(());
        }
        if let Some(old) = old {
            self.batch
                .remove(&self.shared.idle, idle_key(old, kind, id));
        }
        self.batch
            .insert(&self.shared.idle, idle_key(day, kind, id), []);
        self.batch
            .insert(&self.shared.used, used_key(kind, id), day.to_be_bytes());
        self.used.insert((kind, *id), (Some(day), self.epoch));
        Ok(())
    }

    /// Forgets a deleted mailbox's or slot's renewal.
    fn clear_used(&mut self, op: &'static str, kind: u8, id: &[u8; 32]) -> Result<(), StoreError> {
        self.used_barrier(op, kind, id)?;
        if let Some(day) = self.used_day(op, kind, id)? {
            self.batch
                .remove(&self.shared.idle, idle_key(day, kind, id));
            self.batch.remove(&self.shared.used, used_key(kind, id));
        }
        self.used.insert((kind, *id), (None, self.epoch));
        Ok(())
    }

    fn take(&mut self, slot: [u8; 32]) -> Result<Option<TakenKeyPackage>, StoreError> {
        let op = "take_key_package";
        self.barrier(op)?;
        let slots = &self.shared.slots;
        if let Some(guard) = slots.prefix(slot_key(&slot, SLOT_ONE_TIME)).next() {
            let (key, value) = guard.into_inner().map_err(backend(op))?;
            self.batch.remove(slots, key);
            self.barrier(op)?;
            return Ok(Some(TakenKeyPackage {
                data: value.to_vec(),
                last_resort: false,
            }));
        }
        let last = slots
            .get(slot_key(&slot, SLOT_LAST_RESORT))
            .map_err(backend(op))?;
        Ok(last.map(|value| TakenKeyPackage {
            data: value.to_vec(),
            last_resort: true,
        }))
    }

    /// Handles one chunk of the oldest expiry job: its messages first, then idle mailboxes and
    /// slots.
    fn expire_step(&mut self) {
        let op = "expire";
        let Some((cutoff, messages_done, idle_before, today)) = self
            .expire_jobs
            .front()
            .map(|j| (j.cutoff, j.messages_done, j.idle_before, j.today))
        else {
            return;
        };
        let outcome = self.barrier(op).and_then(|()| {
            let step = if messages_done {
                self.expire_idle_chunk(idle_before, today)
                    .map(|(gone, finished)| (gone, finished, true))
            } else {
                self.expire_chunk(cutoff).map(|(removed, finished)| {
                    (
                        Expired {
                            messages: removed,
                            ..Expired::default()
                        },
                        finished,
                        false,
                    )
                })
            };
            let step = step?;
            self.barrier(op)?;
            Ok(step)
        });
        let Some(job) = self.expire_jobs.front_mut() else {
            return;
        };
        match outcome {
            Ok((gone, finished, idle_phase)) => {
                job.total.messages += gone.messages;
                job.total.mailboxes += gone.mailboxes;
                job.total.slots += gone.slots;
                if finished && !idle_phase {
                    job.messages_done = true;
                } else if finished && let Some(job) = self.expire_jobs.pop_front() {
                    if job.total.mailboxes + job.total.slots > 0 {
                        tracing::info!(
                            mailboxes = job.total.mailboxes,
                            slots = job.total.slots,
                            "expired idle mailboxes and key-package slots"
                        );
                    }
                    self.done.push(Done::Expire(job.reply, Ok(job.total)));
                }
            }
            Err(e) => {
                if let Some(job) = self.expire_jobs.pop_front() {
                    self.done.push(Done::Expire(job.reply, Err(e)));
                }
            }
        }
    }

    /// Lists every mailbox and slot that has no renewal yet (a store made before renewals) as
    /// renewed `today`, then marks the store as listed (committing every [`EXPIRE_CHUNK`]).
    fn index_idle(&mut self, today: u64) -> Result<(), StoreError> {
        let op = "expire";
        let shared = Arc::clone(&self.shared);
        let mut listed = 0usize;
        let mut missing: Vec<(u8, [u8; 32])> = Vec::new();
        for guard in shared.meta.iter() {
            let key = guard.key().map_err(backend(op))?;
            if let Ok(id) = <[u8; 32]>::try_from(key.as_ref()) {
                missing.push((USED_MAILBOX, id));
            }
        }
        for guard in shared.slots.iter() {
            let key = guard.key().map_err(backend(op))?;
            if key.len() == 33
                && key[32] == SLOT_OWNER
                && let Ok(slot) = <[u8; 32]>::try_from(&key[..32])
            {
                missing.push((USED_SLOT, slot));
            }
        }
        for (kind, id) in missing {
            if self.used_day(op, kind, &id)?.is_none() {
                self.set_used(op, kind, &id, today)?;
                listed += 1;
                if listed.is_multiple_of(EXPIRE_CHUNK) {
                    self.barrier(op)?;
                }
            }
        }
        self.batch.insert(&shared.meta, IDLE_INDEX_KEY, [1]);
        self.idle_indexed = true;
        if listed > 0 {
            tracing::info!(listed, "listed mailboxes and slots for idle expiry");
        }
        Ok(())
    }

    /// Deletes up to [`EXPIRE_CHUNK`] mailboxes and slots last renewed before `idle_before`
    /// (a day). Returns what went, and whether nothing due is left.
    fn expire_idle_chunk(
        &mut self,
        idle_before: Option<u64>,
        today: u64,
    ) -> Result<(Expired, bool), StoreError> {
        let op = "expire";
        if !self.idle_indexed {
            self.index_idle(today)?;
            self.barrier(op)?;
        }
        let mut gone = Expired::default();
        let Some(before) = idle_before else {
            return Ok((gone, true));
        };
        let shared = Arc::clone(&self.shared);
        let mut due = Vec::new();
        let mut finished = true;
        for guard in shared.idle.range(..before.to_be_bytes()) {
            if due.len() >= EXPIRE_CHUNK {
                finished = false;
                break;
            }
            due.push(guard.key().map_err(backend(op))?);
        }
        for key in due {
            let Ok((day, kind, id)) = decode_idle_key(op, &key) else {
                // An unreadable entry would block idle expiry for good: drop it, and say so.
                tracing::warn!("idle expiry dropped an unreadable index entry");
                self.batch.remove(&shared.idle, key);
                continue;
            };
            if self.used_day(op, kind, &id)? != Some(day) {
                // Renewed (or deleted) since: this entry is stale.
                self.used_barrier(op, kind, &id)?;
                self.batch.remove(&shared.idle, key);
                continue;
            }
            if kind == USED_MAILBOX {
                if self.delete(MailboxId(id))? {
                    gone.mailboxes += 1;
                } else {
                    self.clear_used(op, kind, &id)?;
                }
            } else {
                self.delete_slot(&id)?;
                gone.slots += 1;
            }
        }
        Ok((gone, finished))
    }

    /// Deletes a key-package slot: its owner, its packages and its renewal.
    fn delete_slot(&mut self, slot: &[u8; 32]) -> Result<(), StoreError> {
        let op = "expire";
        self.barrier(op)?;
        let shared = Arc::clone(&self.shared);
        let mut keys = Vec::new();
        for guard in shared.slots.prefix(slot) {
            keys.push(guard.key().map_err(backend(op))?);
        }
        for key in keys {
            self.batch.remove(&shared.slots, key);
        }
        self.clear_used(op, USED_SLOT, slot)
    }

    /// Works through expiry index entries at or before `cutoff` (about [`EXPIRE_CHUNK`]
    /// messages): deletes each listed message still held and each listed de-duplication
    /// record, then the entry. Returns (messages deleted, whether no due entry is left).
    fn expire_chunk(&mut self, cutoff: u64) -> Result<(u64, bool), StoreError> {
        let op = "expire";
        let shared = Arc::clone(&self.shared);
        let iter = match cutoff.checked_add(1) {
            Some(end) => shared.expiry.range(..end.to_be_bytes()),
            None => shared.expiry.iter(),
        };
        let mut handled = 0usize;
        let mut removed = 0u64;
        let mut corrupt = 0usize;
        let mut finished = true;
        for guard in iter {
            if handled >= EXPIRE_CHUNK {
                finished = false;
                break;
            }
            let (key, value) = guard.into_inner().map_err(backend(op))?;
            if handled == 0 {
                self.recent.deleting(self.commits + 1);
            }
            match decode_expiry(op, &key, &value) {
                Ok((_, items)) => {
                    for item in items {
                        handled += 1;
                        removed += self.expire_item(&item)?;
                    }
                }
                // An unreadable entry would block expiry for good: drop it, and say so.
                Err(_) => corrupt += 1,
            }
            self.batch.remove(&shared.expiry, key);
            handled += 1;
        }
        if corrupt > 0 {
            tracing::warn!(entries = corrupt, "expiry dropped unreadable index entries");
        }
        Ok((removed, finished))
    }

    /// Expires one listed message; returns 1 if the message was still held.
    ///
    /// The mailbox number in the item is never reused, so the keys it names are this message's
    /// or gone: no need to read them first.
    fn expire_item(&mut self, item: &ExpiryItem) -> Result<u64, StoreError> {
        let op = "expire";
        let mut removed = 0;
        if self.load(op, item.mailbox)?
            && let Some(b) = self.boxes.get_mut(&item.mailbox)
            && b.number == item.number
            && b.stored.remove(item.seq)
        {
            // A single delete, as in `ack`.
            self.batch
                .remove_weak(&self.shared.msgs, msg_key(item.number, item.seq).as_ref());
            self.mark(item.mailbox, true);
            removed = 1;
        }
        self.batch.remove(
            &self.shared.dedup,
            dedup_key(item.number, &item.message_id).as_ref(),
        );
        Ok(removed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;

    #[test]
    fn runs_track_held_sequence_numbers() {
        let mut runs = Runs::default();
        for seq in 1..=6 {
            runs.push(seq);
        }
        assert_eq!(runs.runs, [(1, 7)]);
        assert!(runs.remove(3));
        assert!(!runs.remove(3));
        assert!(runs.remove(1));
        assert!(runs.remove(6));
        assert!(!runs.remove(0));
        assert!(!runs.remove(99));
        assert_eq!(runs.runs, [(2, 3), (4, 6)]);
        assert_eq!(runs.count, 3);
        runs.push(9);
        runs.push(10);
        assert_eq!(runs.runs, [(2, 3), (4, 6), (9, 11)]);
        for seq in [2, 4, 5, 9, 10] {
            assert!(runs.remove(seq));
        }
        assert!(runs.runs.is_empty());
        assert_eq!(runs.count, 0);
    }
}
