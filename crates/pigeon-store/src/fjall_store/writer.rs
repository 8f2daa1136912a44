//! The writer thread: the only place that changes the store.
//!
//! Callers send a [`Request`] over a bounded channel (which pushes back on them when the writer
//! falls behind) and await a oneshot answer. The thread takes the first request, drains whatever
//! else is queued up to a bound, applies everything to one fjall write batch, commits it, fsyncs
//! the journal once, publishes the new mailbox state to the readers' cache and only then answers
//! every caller. Concurrent callers thus share one fsync (group commit).
//!
//! Being the only writer, the thread owns the authoritative per-mailbox state (record, next
//! sequence number, message count) in a map loaded lazily from disk, so sequence numbers rise
//! strictly in durable order and limits are checked without a read-modify-write race.
//!
//! Reads inside one uncommitted batch do not see the batch, so the thread keeps small overlays
//! (message ids and acknowledged keys of the open batch). Operations that need to scan what
//! the batch holds (deleting a mailbox, key packages, expiry, acknowledging a message appended
//! in the same batch) first commit the open batch without fsync, which makes it visible to reads;
//! the single fsync at the end of the round still covers everything. A key is therefore never
//! written twice in one batch.
//!
//! Sequence numbers continue across restarts without reuse: on load, the next number is one past
//! the larger of the highest stored message and the mailbox's high-water mark. Appends never
//! write the meta record; a batch that deletes messages of a mailbox (ack, expiry) rewrites it
//! once with the high-water mark, so a deleted highest message is still remembered.

use super::Shared;
use super::cache::Entry;
use super::codec::{
    DedupKey, MSG_HEADER, Meta, MsgKey, SLOT_LAST_RESORT, SLOT_ONE_TIME, SLOT_OWNER, decode_dedup,
    decode_expiry, decode_meta, decode_msg, decode_owner, dedup_key, encode_dedup, encode_meta,
    encode_owner, expiry_key, msg_header, msg_key, one_time_key, slot_key,
};
use crate::{
    Appended, CreateOutcome, MailboxId, MailboxRecord, NewMessage, StoreError, TakenKeyPackage,
};
use byteview::ByteView;
use fjall::{OwnedWriteBatch, PersistMode, Slice};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Index entries handled per expiry round, so a large expiry never stalls appends for long.
pub(super) const EXPIRE_CHUNK: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write operation for the writer thread.
pub(super) enum Request {
    Create {
        id: MailboxId,
        record: MailboxRecord,
        reply: Reply<CreateOutcome>,
    },
    Append {
        batch: Vec<NewMessage>,
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
    Publish {
        slot: [u8; 32],
        owner: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        reply: Reply<u32>,
    },
    Take {
        slot: [u8; 32],
        reply: Reply<Option<TakenKeyPackage>>,
    },
    Expire {
        now: u64,
        reply: Reply<u64>,
    },
}

impl Request {
    /// (operations, bytes) this request adds to a round, for the batch bounds.
    fn weight(&self) -> (usize, usize) {
        match self {
            Self::Append { batch, .. } => (
                batch.len(),
                batch.iter().map(|m| m.ciphertext.len() + 128).sum(),
            ),
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
            Self::Publish { reply, .. } => drop(reply.send(Err(err("publish_key_packages")))),
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
    Publish(Reply<u32>, Result<u32, StoreError>),
    Take(
        Reply<Option<TakenKeyPackage>>,
        Result<Option<TakenKeyPackage>, StoreError>,
    ),
    Expire(Reply<u64>, Result<u64, StoreError>),
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
            Self::Publish(tx, r) => {
                drop(tx.send(unless_failed(r, "publish_key_packages", failure)))
            }
            Self::Take(tx, r) => drop(tx.send(unless_failed(r, "take_key_package", failure))),
            Self::Expire(tx, r) => drop(tx.send(unless_failed(r, "expire", failure))),
        }
    }
}

/// The writer's state of one mailbox.
struct Mailbox {
    record: MailboxRecord,
    next_seq: u64,
    count: u64,
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
    total: u64,
    reply: Reply<u64>,
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
    batch: OwnedWriteBatch,
    /// Number of the open batch; bumped at each commit.
    epoch: u64,
    round: u64,
    boxes: HashMap<MailboxId, Mailbox>,
    /// Message ids appended in the open batch.
    dedup_overlay: HashMap<DedupKey, u64>,
    /// Messages deleted in the open batch.
    acked_overlay: HashSet<MsgKey>,
    meta_dirty: Vec<MailboxId>,
    touched: Vec<MailboxId>,
    done: Vec<Done>,
    expire_jobs: VecDeque<ExpireJob>,
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
    pub(super) fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Request>, tuning: Tuning) -> Self {
        let batch = shared.db.batch();
        Self {
            shared,
            rx,
            tuning,
            batch,
            epoch: 1,
            round: 0,
            boxes: HashMap::new(),
            dedup_overlay: HashMap::new(),
            acked_overlay: HashSet::new(),
            meta_dirty: Vec::new(),
            touched: Vec::new(),
            done: Vec::new(),
            expire_jobs: VecDeque::new(),
            wrote: false,
            failed: None,
        }
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
        tracing::debug!("store writer finished its queue and stops");
    }

    fn round(&mut self, inbox: &mut Vec<Request>) {
        self.round += 1;
        self.wrote = false;
        let t0 = std::time::Instant::now();
        let n_in = inbox.len();
        for request in inbox.drain(..) {
            match &self.failed {
                Some(reason) => request.refuse(reason),
                None => self.handle(request),
            }
        }
        if self.failed.is_none() && !self.expire_jobs.is_empty() {
            self.expire_step();
        }
        let t1 = std::time::Instant::now();
        if self.failed.is_none() {
            let durable = self.flush_batch().and_then(|()| {
                if self.wrote {
                    // fdatasync suffices: fjall pre-allocates each journal file and fsyncs it
                    // (and its directory) when it is created or rotated.
                    self.shared
                        .db
                        .persist(PersistMode::SyncData)
                        .map_err(|e| e.to_string())
                } else {
                    Ok(())
                }
            });
            if let Err(reason) = durable {
                self.fail(reason);
            }
        }
        let t2 = std::time::Instant::now();
        STATS.with(|s| { let mut s = s.borrow_mut(); s.0 += 1; s.1 += n_in; s.2 += (t1-t0).as_micros(); s.3 += (t2-t1).as_micros();
            if s.0 % 200 == 0 { eprintln!("rounds {} avg reqs {} proc {}us persist {}us", s.0, s.1/200, s.2/200, s.3/200); s.1=0; s.2=0; s.3=0; } });
        if self.failed.is_none() {
            for id in self.touched.drain(..) {
                let entry = self.boxes.get(&id).map(|b| Entry {
                    record: b.record,
                    count: Some(b.count),
                });
                self.shared.cache.publish(id, entry);
            }
        }
        let failure = self.failed.as_deref();
        for done in self.done.drain(..) {
            done.send(failure);
        }
        if self.boxes.len() > self.tuning.cached_mailboxes {
            // Everything is committed; a cleared map reloads lazily.
            self.boxes.clear();
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(reason = %reason, "store write failed; refusing writes until restarted");
        self.failed = Some(reason);
        self.batch = self.shared.db.batch();
        self.boxes.clear();
        self.dedup_overlay.clear();
        self.acked_overlay.clear();
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
                let meta = Meta {
                    record: b.record,
                    high_water: b.next_seq - 1,
                };
                self.batch
                    .insert(&self.shared.meta, id.0, encode_meta(&meta));
            }
        }
        let batch = std::mem::replace(&mut self.batch, self.shared.db.batch());
        self.epoch += 1;
        self.dedup_overlay.clear();
        self.acked_overlay.clear();
        if batch.is_empty() {
            return Ok(());
        }
        batch.commit().map_err(|e| e.to_string())?;
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
            Request::Publish {
                slot,
                owner,
                one_time,
                last_resort,
                reply,
            } => {
                let r = self.publish(slot, owner, one_time, last_resort);
                self.done.push(Done::Publish(reply, r));
            }
            Request::Take { slot, reply } => {
                let r = self.take(slot);
                self.done.push(Done::Take(reply, r));
            }
            Request::Expire { now, reply } => match now.checked_sub(self.shared.limits.expiry_secs)
            {
                Some(cutoff) => self.expire_jobs.push_back(ExpireJob {
                    cutoff,
                    total: 0,
                    reply,
                }),
                None => self.done.push(Done::Expire(reply, Ok(0))),
            },
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
        let (count, last) = self.shared.scan_mailbox(op, &id)?;
        self.boxes.insert(
            id,
            Mailbox {
                record: meta.record,
                next_seq: meta.high_water.max(last) + 1,
                count,
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
        record: MailboxRecord,
    ) -> Result<CreateOutcome, StoreError> {
        let op = "create_mailbox";
        if self.load(op, id)? {
            return match self.boxes.get(&id) {
                Some(b) if b.record == record => Ok(CreateOutcome::AlreadyExists),
                _ => Err(StoreError::MailboxExists),
            };
        }
        self.boxes.insert(
            id,
            Mailbox {
                record,
                next_seq: 1,
                count: 0,
                uncommitted_from: 0,
                uncommitted_epoch: 0,
                meta_epoch: 0,
                touched_round: 0,
            },
        );
        self.mark(id, true);
        Ok(CreateOutcome::Created)
    }

    fn append(&mut self, message: NewMessage) -> Result<Appended, StoreError> {
        let op = "append";
        let limits = self.shared.limits;
        if message.ciphertext.len() > limits.max_ciphertext {
            return Err(StoreError::MessageTooLarge {
                len: message.ciphertext.len(),
                limit: limits.max_ciphertext,
            });
        }
        let id = message.mailbox;
        if !self.load(op, id)? {
            return Err(StoreError::NoSuchMailbox);
        }
        let dkey = dedup_key(&id, &message.message_id);
        if let Some(&seq) = self.dedup_overlay.get(&dkey) {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        if let Some(raw) = self.shared.dedup.get(dkey).map_err(backend(op))? {
            let (seq, _) = decode_dedup(op, &raw)?;
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        let epoch = self.epoch;
        let Some(b) = self.boxes.get_mut(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        if b.count >= limits.max_depth {
            return Err(StoreError::MailboxFull {
                limit: limits.max_depth,
            });
        }
        let seq = b.next_seq;
        b.next_seq += 1;
        b.count += 1;
        if b.uncommitted_epoch != epoch {
            b.uncommitted_epoch = epoch;
            b.uncommitted_from = seq;
        }
        let header = msg_header(&message.message_id, message.now);
        debug_assert_eq!(header.len(), MSG_HEADER);
        let value = ByteView::fused(&header, &message.ciphertext);
        let shared = &self.shared;
        self.batch
            .insert(&shared.msgs, msg_key(&id, seq), Slice::from(value));
        self.batch
            .insert(&shared.dedup, dkey, encode_dedup(seq, message.now));
        self.batch.insert(
            &shared.expiry,
            expiry_key(message.now, &id, seq),
            message.message_id.0,
        );
        self.dedup_overlay.insert(dkey, seq);
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
        seqs.sort_unstable();
        seqs.dedup();
        let Some(b) = self.boxes.get(&id) else {
            return Err(StoreError::NoSuchMailbox);
        };
        let next_seq = b.next_seq;
        let in_open_batch = b.uncommitted_epoch == self.epoch
            && seqs.last().is_some_and(|&s| s >= b.uncommitted_from);
        if in_open_batch {
            // Acknowledging a message of the open batch: commit it first, so the message is
            // visible to the existence check and never inserted and deleted in one batch.
            self.barrier(op)?;
        }
        let mut deleted = 0u64;
        let mut outcome = Ok(());
        for &seq in seqs.iter().filter(|&&s| s != 0 && s < next_seq) {
            let key = msg_key(&id, seq);
            if self.acked_overlay.contains(&key) {
                continue;
            }
            match self.shared.msgs.contains_key(key) {
                Ok(true) => {
                    self.batch.remove(&self.shared.msgs, key);
                    self.acked_overlay.insert(key);
                    deleted += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    outcome = Err(backend(op)(e));
                    break;
                }
            }
        }
        if deleted > 0 {
            if let Some(b) = self.boxes.get_mut(&id) {
                b.count = b.count.saturating_sub(deleted);
            }
            self.mark(id, true);
        }
        outcome.map(|()| deleted)
    }

    fn delete(&mut self, id: MailboxId) -> Result<bool, StoreError> {
        let op = "delete_mailbox";
        self.barrier(op)?;
        if !self.load(op, id)? {
            return Ok(false);
        }
        let mut keys: Vec<Slice> = Vec::new();
        for guard in self.shared.msgs.prefix(id.0) {
            keys.push(guard.key().map_err(backend(op))?);
        }
        let messages = keys.len();
        for guard in self.shared.dedup.prefix(id.0) {
            keys.push(guard.key().map_err(backend(op))?);
        }
        let (msgs, dedup) = (&self.shared.msgs, &self.shared.dedup);
        for (i, key) in keys.into_iter().enumerate() {
            self.batch
                .remove(if i < messages { msgs } else { dedup }, key);
        }
        // Expiry index entries stay; expiry finds their message and record gone (or, for a
        // re-created mailbox, with another receive time) and only drops the entry.
        self.batch.remove(&self.shared.meta, id.0);
        self.boxes.remove(&id);
        self.touched.push(id);
        self.barrier(op)?;
        Ok(true)
    }

    fn publish(
        &mut self,
        slot: [u8; 32],
        owner: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
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
        self.barrier(op)?;
        Ok(u32::try_from(total).unwrap_or(u32::MAX))
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

    /// Handles one chunk of the oldest expiry job.
    fn expire_step(&mut self) {
        let op = "expire";
        let Some(cutoff) = self.expire_jobs.front().map(|j| j.cutoff) else {
            return;
        };
        let outcome = self
            .barrier(op)
            .and_then(|()| self.expire_chunk(cutoff))
            .and_then(|(removed, finished)| {
                self.barrier(op)?;
                Ok((removed, finished))
            });
        let Some(job) = self.expire_jobs.front_mut() else {
            return;
        };
        match outcome {
            Ok((removed, finished)) => {
                job.total += removed;
                if finished && let Some(job) = self.expire_jobs.pop_front() {
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

    /// Deletes up to [`EXPIRE_CHUNK`] index entries at or before `cutoff`, with their message
    /// and de-duplication record when those are the ones the entry was written for.
    /// Returns (messages deleted, whether no such entry is left).
    fn expire_chunk(&mut self, cutoff: u64) -> Result<(u64, bool), StoreError> {
        let op = "expire";
        let shared = Arc::clone(&self.shared);
        let iter = match cutoff.checked_add(1) {
            Some(end) => shared.expiry.range(..end.to_be_bytes()),
            None => shared.expiry.iter(),
        };
        let mut seen = 0usize;
        let mut removed = 0u64;
        let mut corrupt = 0usize;
        for guard in iter.take(EXPIRE_CHUNK) {
            seen += 1;
            let (key, value) = guard.into_inner().map_err(backend(op))?;
            let Ok(entry) = decode_expiry(op, &key, &value) else {
                // Unreadable entries would block expiry for good: drop them, and say so.
                corrupt += 1;
                self.batch.remove(&shared.expiry, key);
                continue;
            };
            let mkey = msg_key(&entry.mailbox, entry.seq);
            if let Some(raw) = shared.msgs.get(mkey).map_err(backend(op))? {
                // A corrupt message has no receive time to trust; it is past its entry's.
                let matches =
                    decode_msg(op, &raw).map_or(true, |(_, at, _)| at == entry.received_at);
                if matches {
                    if self.load(op, entry.mailbox)? {
                        if let Some(b) = self.boxes.get_mut(&entry.mailbox) {
                            b.count = b.count.saturating_sub(1);
                        }
                        self.mark(entry.mailbox, true);
                    }
                    self.batch.remove(&shared.msgs, mkey);
                    removed += 1;
                }
            }
            let dkey = dedup_key(&entry.mailbox, &entry.message_id);
            if let Some(raw) = shared.dedup.get(dkey).map_err(backend(op))? {
                let matches = decode_dedup(op, &raw).map_or(true, |(seq, at)| {
                    seq == entry.seq && at == entry.received_at
                });
                if matches {
                    self.batch.remove(&shared.dedup, dkey);
                }
            }
            self.batch.remove(&shared.expiry, key);
        }
        if corrupt > 0 {
            tracing::warn!(entries = corrupt, "expiry dropped unreadable index entries");
        }
        Ok((removed, seen < EXPIRE_CHUNK))
    }
}

thread_local! { static STATS: std::cell::RefCell<(u64, usize, u128, u128)> = const { std::cell::RefCell::new((0,0,0,0)) }; }
