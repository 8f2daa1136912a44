//! The relay's [`MailboxStore`] on NATS JetStream, for relay nodes that share one cluster
//! (issue #18). The embedded store (`pigeon_store::FjallStore`) stays the default; this one
//! passes the same conformance suite (`pigeon_store::conformance`).
//!
//! Layout (names under a prefix, `PIGEON` by default; subjects under its lower case):
//!
//! * **Mailbox records** in the KV bucket `PIGEON_MBX` (key: the id in hex): kind, keys,
//!   capability hashes, retired capabilities, a random generation per creation, the day of the
//!   last renewal. Changed by compare-and-set on the entry's revision.
//! * **Messages** on `pigeon.m.<shard>.<id>` in the streams `PIGEON_M<shard>` (shard = first id
//!   byte mod the shard count). Every entry carries the mailbox's state after it in headers
//!   (last sequence number, depth, generation), so the newest entry is the mailbox's *head*.
//!   Every write to a mailbox's subject is published with `Nats-Expected-Last-Subject-Sequence`
//!   = the head's stream sequence (and a `Nats-Msg-Id` of the same number, see `publish`):
//!   JetStream serializes the writers of one mailbox, on any node, and a writer with a stale
//!   head reloads it and tries again. A mailbox sequence number is taken only by a successful
//!   publish: dense, rising, never reused. Acks and expiry first publish a small head entry
//!   (the new depth, the same last number, the list of what it takes out) and then delete the
//!   messages, so the counter survives an empty mailbox; the next append removes that head.
//!   Whoever reads a head whose deletes a dead node did not make makes them first.
//!   A log's capability update writes the record and then a *fence* entry on the subject, so
//!   an append that read the old record on another node finds its expectation stale and reads
//!   the record again.
//! * **De-duplication records** on `pigeon.d.<shard>.<id>.<message id>` in the streams
//!   `PIGEON_D<shard>` (the number given and the receive time), looked up before an append,
//!   written as an intent before it and for good after it (`NatsStore::append_to`); deleted
//!   with the mailbox and by [`MailboxStore::expire`].
//! * **Key-package slots** in the KV bucket `PIGEON_SLOTS` (owner, renewal day, last-resort
//!   package); one-time packages as messages on `pigeon.k.<slot>` in `PIGEON_KP`, taken by
//!   reading the first and deleting it by sequence (a delete that loses a race moves on).
//!
//! One relay process also serializes its own writers per mailbox with a local lock, so the
//! expectation above fails only across nodes. What is weaker than the embedded store, and why,
//! is in ARCHITECTURE.md ("Relay nodes on NATS JetStream"): durability is the cluster's
//! (replicas, and the server's sync interval).
//!
//! Time is the caller's (`now`), as for every backend; the store never reads the clock.

mod bucket;
mod cache;
mod codec;
mod get;
pub mod server;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use bucket::Bucket;
use bytes::Bytes;
use codec::{DAY, Entry, Kind, Record, Slot, corrupt, hex, unhex};
use futures_util::StreamExt as _;
use pigeon_store::{
    Appended, CreateOutcome, Expired, Limits, MAX_RETIRED_CAPS, MailboxId, MailboxKind,
    MailboxRecord, MailboxStore, MessageId, NewMessage, News, Renewal, RetiredCap, StoreError,
    StoredMessage, TakenKeyPackage,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

pub use server::NatsServer;

/// How often one operation retries after losing a race to another node before it gives up.
pub(crate) const MAX_RACES: usize = 64;
/// Mailboxes whose local lock is kept at most (idle ones are dropped past it).
const MAX_LOCKS: usize = 65_536;
/// Deletes [`NatsStore::forget_all`] has in flight at most.
const FORGET_AT_ONCE: usize = 256;
/// Messages one scan asks for at a time.
const SCAN_BATCH: usize = 1024;

/// How the store lays itself out on the cluster.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Message streams the mailboxes are spread over (by the first byte of their id), 1–255.
    /// Fixed once the streams exist: every node of one store must use the same.
    pub shards: u8,
    /// Copies of every stream and bucket (1 on one server; 3 in a cluster of three or more).
    pub replicas: usize,
    /// Prefix of stream and bucket names (upper case) and of subjects (lower case), so that
    /// several stores can share one cluster.
    pub prefix: String,
    /// How long to wait for the cluster's answer to one request.
    pub timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            shards: 4,
            replicas: 1,
            prefix: "PIGEON".to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The relay's mailboxes and key packages on NATS JetStream.
pub struct NatsStore {
    js: jetstream::Context,
    mailboxes: Bucket,
    slots: Bucket,
    shards: Vec<stream::Stream>,
    /// The de-duplication records of each shard's mailboxes.
    dedup: Vec<stream::Stream>,
    packages: stream::Stream,
    limits: Limits,
    subjects: String,
    locks: Locks,
    cache: Arc<cache::RecordCache>,
    watch: tokio::task::JoinHandle<()>,
    positions: Positions,
    finished: Finished,
    /// Core NATS subject of the notices "mailbox M has new messages" between nodes.
    notices: String,
    /// What other nodes' notices say, until the relay takes it.
    news: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<News>>>,
    listen: tokio::task::JoinHandle<()>,
}

impl Drop for NatsStore {
    fn drop(&mut self) {
        self.watch.abort();
        self.listen.abort();
    }
}

/// Notices from other nodes queued for the relay at most.
const NEWS_QUEUE: usize = 4096;

/// A notice's first byte: what happened to the mailbox whose id follows.
const NOTICE_MESSAGES: u8 = b'm';
const NOTICE_CHANGED: u8 = b'c';

/// Hands other nodes' notices on to the relay; drops what does not parse. A record change
/// first drops the record from this node's cache, so that the relay's lookup after it sees
/// the change (the watch on the records stream would too, but may come later), and waits for
/// room; new messages are dropped when the queue is full (the next notice wakes the same).
async fn listen(
    mut subscriber: async_nats::Subscriber,
    news: tokio::sync::mpsc::Sender<News>,
    cache: Arc<cache::RecordCache>,
) {
    while let Some(m) = subscriber.next().await {
        let (kind, id) = match m.payload.split_first() {
            Some((&kind, id)) => (kind, <[u8; 32]>::try_from(id)),
            None => {
                tracing::debug!("an empty notice");
                continue;
            }
        };
        let Ok(id) = id.map(MailboxId) else {
            tracing::debug!("a notice without a mailbox id");
            continue;
        };
        match kind {
            NOTICE_MESSAGES => {
                if news.try_send(News::Messages(id)).is_err() && news.is_closed() {
                    return;
                }
            }
            NOTICE_CHANGED => {
                cache.forget(&id);
                if news.send(News::Changed(id)).await.is_err() {
                    return;
                }
            }
            _ => tracing::debug!("a notice of an unknown kind"),
        }
    }
}

pub(crate) fn backend(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        op,
        reason: e.to_string(),
    }
}

/// What one batch of appends to a mailbox knows as it goes.
#[derive(Default)]
struct Batch {
    /// The mailbox's record and head, when known to be current.
    state: Option<(Record, Head)>,
    /// Message ids with what their de-duplication records say, under `generation`.
    known: HashMap<MessageId, Option<codec::Dedup>>,
    generation: Option<u64>,
    /// Intents written (and stored) in this batch: the number each names.
    intents: HashMap<MessageId, u64>,
    /// De-duplication records being written.
    records: Vec<futures_util::future::BoxFuture<'static, Result<(), StoreError>>>,
    /// Head entries an append made stale, deleted once the batch is through.
    stale_heads: Vec<u64>,
}

/// An entry read back by stream sequence.
struct Found {
    sequence: u64,
    headers: async_nats::HeaderMap,
    payload: Bytes,
}

/// The state of a mailbox's subject: its newest entry.
#[derive(Clone, Copy, Debug)]
struct Head {
    /// Stream sequence of the newest entry on the subject (of any generation), 0 for none.
    sseq: u64,
    /// The mailbox's last sequence number.
    seq: u64,
    /// Messages it holds.
    depth: u64,
    /// What the newest entry is, when it is this mailbox's.
    kind: Option<Kind>,
}

impl Head {
    /// An empty mailbox whose subject's newest entry (of an earlier mailbox under the id, or
    /// none: 0) is at `sseq`.
    fn empty(sseq: u64) -> Self {
        Self {
            sseq,
            seq: 0,
            depth: 0,
            kind: None,
        }
    }
}

impl NatsStore {
    /// Connects to the cluster at `urls` (`nats://HOST:PORT`, several separated by commas) and
    /// creates the streams and buckets the store needs, or opens them.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when no server answers or JetStream refuses the layout.
    pub async fn connect(
        urls: &str,
        limits: Limits,
        options: NatsOptions,
    ) -> Result<Self, StoreError> {
        let parts: Vec<&str> = urls.split(',').map(str::trim).collect();
        let mut servers = Vec::with_capacity(parts.len());
        for (i, url) in parts.iter().enumerate() {
            // Not echoed: an address may carry credentials.
            let server = url.parse::<async_nats::ServerAddr>().map_err(|e| {
                backend(
                    "connect",
                    format!(
                        "server address {} of {} is not usable: {e}",
                        i + 1,
                        parts.len()
                    ),
                )
            })?;
            servers.push(server);
        }
        let client = async_nats::ConnectOptions::new()
            // This node's notices of new messages are for the other nodes.
            .no_echo()
            .request_timeout(Some(options.timeout))
            .connection_timeout(options.timeout)
            .connect(servers)
            .await
            .map_err(|e| backend("connect", e))?;
        Self::with_client(client, limits, options).await
    }

    /// As [`NatsStore::connect`], on a client that is connected already.
    ///
    /// # Errors
    /// As [`NatsStore::connect`].
    pub async fn with_client(
        client: async_nats::Client,
        limits: Limits,
        options: NatsOptions,
    ) -> Result<Self, StoreError> {
        let op = "open";
        if options.shards == 0 {
            return Err(backend(op, "a store needs at least one shard"));
        }
        let p = options.prefix.to_uppercase();
        let subjects = options.prefix.to_lowercase();
        let notices = format!("{subjects}.n");
        let subscriber = client
            .subscribe(notices.clone())
            .await
            .map_err(|e| backend(op, e))?;
        let mut js = jetstream::new(client);
        js.set_timeout(options.timeout);
        let config = |name: String, subjects: Vec<String>| stream::Config {
            name,
            subjects,
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            // Used with one replica only: see `get`.
            allow_direct: true,
            ..Default::default()
        };
        let mut shards = Vec::with_capacity(usize::from(options.shards));
        let mut dedup = Vec::with_capacity(usize::from(options.shards));
        for k in 0..options.shards {
            // De-duplication records in streams of their own: each is a subject, and a block
            // that tracks many subjects makes nats-server scan it message by message to find
            // a mailbox's next entry (ARCHITECTURE.md).
            for (list, name, subject) in [
                (
                    &mut shards,
                    format!("{p}_M{k}"),
                    format!("{subjects}.m.{k}.*"),
                ),
                (
                    &mut dedup,
                    format!("{p}_D{k}"),
                    format!("{subjects}.d.{k}.*.*"),
                ),
            ] {
                list.push(
                    js.get_or_create_stream(config(name, vec![subject]))
                        .await
                        .map_err(|e| backend(op, e))?,
                );
            }
        }
        let packages = js
            .get_or_create_stream(config(format!("{p}_KP"), vec![format!("{subjects}.k.*")]))
            .await
            .map_err(|e| backend(op, e))?;
        let records = js
            .get_or_create_stream(stream::Config {
                max_messages_per_subject: 1,
                ..config(
                    format!("{p}_REC"),
                    vec![format!("{subjects}.r.*"), format!("{subjects}.s.*")],
                )
            })
            .await
            .map_err(|e| backend(op, e))?;
        // The tasks start once nothing can fail any more, so that none outlives a failed open.
        let (news_tx, news_rx) = tokio::sync::mpsc::channel(NEWS_QUEUE);
        let cache = Arc::new(cache::RecordCache::default());
        let listen = tokio::spawn(listen(subscriber, news_tx, Arc::clone(&cache)));
        let watch = tokio::spawn(cache::watch(
            js.clone(),
            records.clone(),
            format!("{subjects}.r"),
            Arc::clone(&cache),
        ));
        let mailboxes = Bucket::new(js.clone(), records.clone(), format!("{subjects}.r"));
        let slots = Bucket::new(js.clone(), records, format!("{subjects}.s"));
        Ok(Self {
            js,
            mailboxes,
            slots,
            shards,
            dedup,
            packages,
            limits,
            subjects,
            locks: Locks::default(),
            cache,
            watch,
            positions: Positions::default(),
            finished: Finished::default(),
            notices,
            news: std::sync::Mutex::new(Some(news_rx)),
            listen,
        })
    }

    /// Tells the other nodes what happened to a mailbox (core NATS: at most once, in the order
    /// this node sends them).
    async fn notify(&self, kind: u8, id: &MailboxId) {
        let mut notice = Vec::with_capacity(33);
        notice.push(kind);
        notice.extend_from_slice(&id.0);
        if let Err(e) = self
            .js
            .client()
            .publish(self.notices.clone(), Bytes::from(notice))
            .await
        {
            tracing::debug!(error = %e, "a notice to the other nodes was not sent");
        }
    }

    fn shard(&self, id: &MailboxId) -> usize {
        usize::from(id.0[0]) % self.shards.len()
    }

    fn stream(&self, id: &MailboxId) -> &stream::Stream {
        &self.shards[self.shard(id)]
    }

    fn dstream(&self, id: &MailboxId) -> &stream::Stream {
        &self.dedup[self.shard(id)]
    }

    /// The subject of a mailbox's entries.
    fn msubj(&self, id: &MailboxId) -> String {
        format!("{}.m.{}.{}", self.subjects, self.shard(id), hex(&id.0))
    }

    /// The subject of one de-duplication record.
    fn dsubj(&self, id: &MailboxId, message: &MessageId) -> String {
        format!(
            "{}.d.{}.{}.{}",
            self.subjects,
            self.shard(id),
            hex(&id.0),
            hex(&message.0)
        )
    }

    /// Every de-duplication record of a mailbox.
    fn dfilter(&self, id: &MailboxId) -> String {
        format!("{}.d.{}.{}.*", self.subjects, self.shard(id), hex(&id.0))
    }

    fn ksubj(&self, slot: &[u8; 32]) -> String {
        format!("{}.k.{}", self.subjects, hex(slot))
    }

    /// The mailbox's record and its revision.
    async fn record(
        &self,
        op: &'static str,
        id: &MailboxId,
    ) -> Result<Option<(Record, u64)>, StoreError> {
        match self.mailboxes.entry(op, &hex(&id.0)).await? {
            Some(e) => Ok(Some((Record::decode(op, &e.value)?, e.revision))),
            None => Ok(None),
        }
    }

    async fn slot(
        &self,
        op: &'static str,
        slot: &[u8; 32],
    ) -> Result<Option<(Slot, u64)>, StoreError> {
        match self.slots.entry(op, &hex(slot)).await? {
            Some(e) => Ok(Some((Slot::decode(op, &e.value)?, e.revision))),
            None => Ok(None),
        }
    }

    /// The mailbox's head, read from its newest entry.
    async fn head(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
    ) -> Result<Head, StoreError> {
        match get::last(op, self.stream(id), &self.msubj(id)).await? {
            Some(m) => {
                let e = Entry::parse(op, &m.headers)?;
                if e.kind == Kind::Head && !m.payload.is_empty() {
                    self.finish(op, id, m.sequence, &m.payload).await?;
                }
                Ok(if e.generation == rec.generation {
                    Head {
                        sseq: m.sequence,
                        seq: e.seq,
                        depth: e.depth,
                        kind: Some(e.kind),
                    }
                } else {
                    // An earlier mailbox under this id left an entry: this one starts empty.
                    Head::empty(m.sequence)
                })
            }
            None => Ok(Head::empty(0)),
        }
    }

    /// The first entry on the mailbox's subject at or after stream sequence `from`.
    async fn next_entry(
        &self,
        op: &'static str,
        id: &MailboxId,
        from: u64,
    ) -> Result<Option<Found>, StoreError> {
        Ok(get::next(op, self.stream(id), &self.msubj(id), from)
            .await?
            .map(|m| Found {
                sequence: m.sequence,
                headers: m.headers,
                payload: m.payload,
            }))
    }

    /// The next message of this mailbox (`rec`'s generation) numbered `min` or more, at or
    /// after stream sequence `*pos`, which it moves past what it looked at; heads, fences and
    /// an earlier mailbox's entries are passed over.
    async fn next_message(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        pos: &mut u64,
        min: u64,
    ) -> Result<Option<(Entry, Found)>, StoreError> {
        while let Some(m) = self.next_entry(op, id, *pos).await? {
            *pos = m.sequence.saturating_add(1);
            let e = Entry::parse(op, &m.headers)?;
            if e.kind == Kind::Message && e.generation == rec.generation && e.seq >= min {
                return Ok(Some((e, m)));
            }
        }
        Ok(None)
    }

    /// The smallest stream sequence from which the mailbox's entries have sequence numbers of
    /// at least `first` (entries of an earlier mailbox under the id count as 0): a binary
    /// search with reads by position, as numbers never fall along the subject.
    async fn position(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        head: &Head,
        first: u64,
    ) -> Result<u64, StoreError> {
        if first <= 1 {
            return Ok(1);
        }
        if head.sseq == 0 || head.seq < first {
            return Ok(head.sseq.saturating_add(1));
        }
        let (mut lo, mut hi) = (1u64, head.sseq);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(m) = self.next_entry(op, id, mid).await? else {
                hi = mid;
                continue;
            };
            let e = Entry::parse(op, &m.headers)?;
            let key = if e.generation == rec.generation {
                e.seq
            } else {
                0
            };
            if key >= first {
                hi = mid;
            } else {
                lo = m.sequence.saturating_add(1).max(mid.saturating_add(1));
            }
        }
        Ok(lo)
    }

    async fn publish(
        &self,
        op: &'static str,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        expect: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        publish(&self.js, op, subject, headers, payload, expect).await
    }

    /// Deletes an entry by stream sequence; one that is gone already is no error.
    ///
    /// Without a secure erase (`no_erase`), as the embedded store deletes: the entry is gone for
    /// readers at once and its bytes go when the server compacts the block. (async-nats's
    /// `delete_message` asks for the erase, which rewrites the entry with random bytes first
    /// and made an ack of 16 messages take ~5 ms here.)
    ///
    /// True once the entry is gone: deleted now, or found missing. False when the cluster did
    /// not answer or could not apply the delete (a server down, leaders being elected): the
    /// entry may still be there.
    async fn forget(&self, op: &'static str, stream: &stream::Stream, sseq: u64) -> bool {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::response::Response;
        let subject = format!("STREAM.MSG.DELETE.{}", stream.cached_info().config.name);
        let request = serde_json::json!({ "seq": sseq, "no_erase": true });
        match self
            .js
            .request::<_, _, Response<stream::DeleteStatus>>(subject, &request)
            .await
        {
            Ok(Response::Ok(_)) => true,
            // The server's answers to a delete of what is not there: "sequence not found"
            // from a clustered stream's leader, "delete failed" from the store.
            Ok(Response::Err { error })
                if [
                    ErrorCode::SEQUENCE_NOT_FOUND,
                    ErrorCode::STREAM_MESSAGE_DELETE_FAILED,
                ]
                .contains(&error.error_code()) =>
            {
                true
            }
            Ok(Response::Err { error }) => {
                tracing::debug!(op, error = %error, "an entry could not be deleted");
                false
            }
            Err(e) => {
                tracing::debug!(op, error = %e, "an entry could not be deleted");
                false
            }
        }
    }

    /// Deletes entries by stream sequence, a bounded number of requests in flight at a time;
    /// true once all are gone (see [`NatsStore::forget`]).
    async fn forget_all(&self, op: &'static str, stream: &stream::Stream, sseqs: &[u64]) -> bool {
        let mut all = true;
        for chunk in sseqs.chunks(FORGET_AT_ONCE) {
            let done =
                futures_util::future::join_all(chunk.iter().map(|&s| self.forget(op, stream, s)))
                    .await;
            all &= done.into_iter().all(|d| d);
        }
        all
    }

    /// What the de-duplication record of this message id says, in this mailbox.
    async fn dedup(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        message: &MessageId,
    ) -> Result<Option<codec::Dedup>, StoreError> {
        match get::last(op, self.dstream(id), &self.dsubj(id, message)).await? {
            Some(m) => {
                let d = codec::parse_dedup(op, &m.headers)?;
                Ok((d.generation == rec.generation).then_some(d))
            }
            None => Ok(None),
        }
    }

    /// Sends a de-duplication record (or intent) of `message` in mailbox `id`; the future
    /// answers once JetStream has stored it.
    async fn record_dedup(
        &self,
        id: &MailboxId,
        message: &MessageId,
        d: codec::Dedup,
        at: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<(), StoreError>> {
        send(
            &self.js,
            "append",
            self.dsubj(id, message),
            codec::dedup_headers(d, at),
            Bytes::new(),
        )
        .await
    }

    /// Whether the mailbox holds this message under `seq` (what an intent names).
    async fn holds(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        head: &Head,
        seq: u64,
        message: &MessageId,
    ) -> Result<bool, StoreError> {
        if seq == 0 || head.seq < seq {
            return Ok(false);
        }
        let mut pos = self.position(op, id, rec, head, seq).await?;
        Ok(match self.next_message(op, id, rec, &mut pos, seq).await? {
            Some((e, _)) => e.seq == seq && e.message_id == Some(message.0),
            None => false,
        })
    }

    /// Appends one mailbox's messages in order, under its lock.
    ///
    /// De-duplication survives a node that dies at any point: every message's record is
    /// written twice, as an *intent* naming the number it is about to take (stored before
    /// the message's publish is sent) and, once the message is stored, as the record proper.
    /// A retry that finds an intent looks whether the mailbox holds the message under that
    /// number: if so it is a duplicate; if the number went to another message, or to none
    /// yet, it was never stored. If the number is taken and its message gone (acknowledged
    /// through another node before the retry), the record is read again: an ack makes the
    /// record of each message it takes final before deleting it (`NatsStore::confirm`).
    ///
    /// Round trips per batch: the records are looked up all at once (not those of first
    /// attempts, [`NewMessage::first_attempt`]), the intents written all at once, then one
    /// publish per message, the records written without waiting for each answer (all are
    /// awaited before the batch is answered).
    async fn append_to(
        &self,
        id: MailboxId,
        messages: Vec<(usize, NewMessage)>,
    ) -> Vec<(usize, Result<Appended, StoreError>)> {
        let op = "append";
        let _lock = self.locks.lock(id.0).await;
        let mut batch = Batch::default();
        if let Ok(Some((rec, _))) = self.record(op, &id).await {
            let lookups = futures_util::future::join_all(messages.iter().map(|(_, m)| async {
                if m.first_attempt {
                    // Never sent before: nothing to find. Its intent is written all the same,
                    // for a retry after a failure from here on.
                    Ok(None)
                } else {
                    self.dedup(op, &id, &rec, &m.message_id).await
                }
            }))
            .await;
            for ((_, m), found) in messages.iter().zip(lookups) {
                if let Ok(found) = found {
                    batch.known.insert(m.message_id, found);
                }
            }
            batch.generation = Some(rec.generation);
            if let Ok(head) = self.head(op, &id, &rec).await {
                self.intend(&id, &rec, &head, &messages, &mut batch).await;
                batch.state = Some((rec, head));
            }
        }
        let mut out = Vec::with_capacity(messages.len());
        for (i, m) in messages {
            let r = if m.ciphertext.len() > self.limits.max_ciphertext {
                Err(StoreError::MessageTooLarge {
                    len: m.ciphertext.len(),
                    limit: self.limits.max_ciphertext,
                })
            } else {
                self.append_one(&mut batch, m).await
            };
            if r.is_err() {
                // Read again before the next one: the error may have been a race.
                batch.state = None;
            }
            out.push((i, r));
        }
        if out.iter().any(|(_, r)| matches!(r, Ok(a) if !a.duplicate)) {
            // Other nodes' subscribers of this mailbox read it from the stream.
            self.notify(NOTICE_MESSAGES, &id).await;
        }
        self.forget_all(op, self.stream(&id), &batch.stale_heads)
            .await;
        for written in futures_util::future::join_all(batch.records).await {
            if let Err(e) = written {
                // The messages are durable; only a retry of one would be stored again.
                tracing::warn!(error = %e, "a message was stored without its de-duplication record");
            }
        }
        out
    }

    /// Writes the intents of a batch's new messages at once, numbered as they will be if
    /// no other node writes to the mailbox meanwhile (`append_one` writes again those whose
    /// number turns out otherwise). One that fails is written again by `append_one`.
    async fn intend(
        &self,
        id: &MailboxId,
        rec: &Record,
        head: &Head,
        messages: &[(usize, NewMessage)],
        batch: &mut Batch,
    ) {
        let mut next = head.seq;
        let mut writes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (_, m) in messages {
            let fresh = matches!(batch.known.get(&m.message_id), Some(None));
            if !fresh
                || m.ciphertext.len() > self.limits.max_ciphertext
                || !seen.insert(m.message_id)
            {
                continue;
            }
            next += 1;
            let intent = codec::Dedup {
                seq: next,
                generation: rec.generation,
                intent: true,
            };
            let written = self.record_dedup(id, &m.message_id, intent, m.now).await;
            writes.push((m.message_id, next, written));
        }
        let (ids, futures): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .map(|(message, seq, written)| ((message, seq), written))
            .unzip();
        for ((message, seq), written) in ids
            .into_iter()
            .zip(futures_util::future::join_all(futures).await)
        {
            if written.is_ok() {
                batch.intents.insert(message, seq);
            }
        }
    }

    async fn append_one(&self, batch: &mut Batch, m: NewMessage) -> Result<Appended, StoreError> {
        let op = "append";
        let id = m.mailbox;
        let payload = Bytes::from(m.ciphertext);
        let state = &mut batch.state;
        for _ in 0..MAX_RACES {
            let (rec, head) = match state.take() {
                Some(s) => s,
                None => {
                    let Some((rec, _)) = self.record(op, &id).await? else {
                        return Err(StoreError::NoSuchMailbox);
                    };
                    let head = self.head(op, &id, &rec).await?;
                    (rec, head)
                }
            };
            let log = rec.record.kind == MailboxKind::Log;
            if log
                && let Some(hash) = m.cap_hash
                && hash != rec.record.sender_cap_hash
            {
                let e = match rec.record.retired(&hash) {
                    Some(_) => StoreError::CapabilityRetired,
                    None => StoreError::BadCapability,
                };
                *state = Some((rec, head));
                return Err(e);
            }
            let known = match batch.known.get(&m.message_id) {
                Some(&found) if batch.generation == Some(rec.generation) => found,
                _ => self.dedup(op, &id, &rec, &m.message_id).await?,
            };
            if let Some(mut d) = known {
                let mut stored = !d.intent
                    || self
                        .holds(op, &id, &rec, &head, d.seq, &m.message_id)
                        .await?;
                if !stored && head.seq >= d.seq {
                    // Its number is taken and the message there is gone: an ack takes a
                    // message only after making its record final, so look again.
                    if let Some(now) = self.dedup(op, &id, &rec, &m.message_id).await?
                        && !now.intent
                    {
                        d = now;
                        stored = true;
                    }
                }
                if stored {
                    if d.intent {
                        let confirmed = codec::Dedup { intent: false, ..d };
                        batch.records.push(
                            self.record_dedup(&id, &m.message_id, confirmed, m.now)
                                .await,
                        );
                        batch.known.insert(m.message_id, Some(confirmed));
                    }
                    *state = Some((rec, head));
                    return Ok(Appended {
                        seq: d.seq,
                        duplicate: true,
                    });
                }
            }
            let limit = if log {
                self.limits.max_log_depth
            } else {
                self.limits.max_depth
            };
            if head.depth >= limit {
                *state = Some((rec, head));
                return Err(StoreError::MailboxFull { limit });
            }
            let entry = Entry {
                kind: Kind::Message,
                seq: head.seq + 1,
                depth: head.depth + 1,
                generation: rec.generation,
                message_id: Some(m.message_id.0),
                at: m.now,
            };
            if batch.intents.get(&m.message_id) != Some(&entry.seq) {
                let intent = codec::Dedup {
                    seq: entry.seq,
                    generation: rec.generation,
                    intent: true,
                };
                self.record_dedup(&id, &m.message_id, intent, m.now)
                    .await
                    .await?;
                batch.intents.insert(m.message_id, entry.seq);
            }
            let Some(sseq) = self
                .publish(
                    op,
                    self.msubj(&id),
                    entry.headers(),
                    payload.clone(),
                    Some(head.sseq),
                )
                .await?
            else {
                // Another node wrote to this mailbox: read its record, head and this message's
                // de-duplication record again.
                batch.known.remove(&m.message_id);
                continue;
            };
            if head.kind == Some(Kind::Head) {
                batch.stale_heads.push(head.sseq);
            }
            let record = codec::Dedup {
                seq: entry.seq,
                generation: rec.generation,
                intent: false,
            };
            batch
                .records
                .push(self.record_dedup(&id, &m.message_id, record, m.now).await);
            batch.known.insert(m.message_id, Some(record));
            self.positions.insert(id, entry.seq, sseq);
            *state = Some((
                rec,
                Head {
                    sseq,
                    seq: entry.seq,
                    depth: entry.depth,
                    kind: Some(Kind::Message),
                },
            ));
            return Ok(Appended {
                seq: entry.seq,
                duplicate: false,
            });
        }
        Err(backend(op, "too many writers raced for one mailbox"))
    }

    /// Writes a head marker after `head` (the same last number, `depth`) that lists the
    /// entries it takes out — `gone` and the marker it replaces — and then deletes them.
    /// False when another writer came first.
    ///
    /// The list is what makes the marker safe across a crash: a node that dies after the
    /// marker and before the deletes leaves a mailbox whose depth already counts them gone,
    /// and whoever reads that head next ([`NatsStore::head`]) deletes them before anything
    /// else reads the mailbox.
    async fn behead(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        head: &Head,
        depth: u64,
        gone: &[u64],
    ) -> Result<bool, StoreError> {
        let mut list = gone.to_vec();
        if head.kind == Some(Kind::Head) {
            list.push(head.sseq);
        }
        let marker = Entry {
            kind: Kind::Head,
            seq: head.seq,
            depth,
            generation: rec.generation,
            message_id: None,
            at: 0,
        };
        let Some(sseq) = self
            .publish(
                op,
                self.msubj(id),
                marker.headers(),
                codec::encode_list(&list),
                Some(head.sseq),
            )
            .await?
        else {
            return Ok(false);
        };
        // Not all gone (the cluster did not answer): the next reader of this head finishes it.
        if self.forget_all(op, self.stream(id), &list).await {
            self.finished.insert(*id, sseq);
        }
        Ok(true)
    }

    /// Deletes what the head marker at `sseq` lists, unless this node has done so already.
    async fn finish(
        &self,
        op: &'static str,
        id: &MailboxId,
        sseq: u64,
        list: &[u8],
    ) -> Result<(), StoreError> {
        if self.finished.has(id, sseq) {
            return Ok(());
        }
        let list = codec::decode_list(op, list)?;
        if !self.forget_all(op, self.stream(id), &list).await {
            // Nothing may be read past a head whose entries could still be there.
            return Err(backend(
                op,
                "the entries an earlier ack took out could not be deleted yet",
            ));
        }
        self.finished.insert(*id, sseq);
        Ok(())
    }

    /// Takes the messages at the stream sequences `gone` out of the mailbox (`known`: the head
    /// as read before they were found, if it was): per at most [`codec::MAX_LIST`] of them a
    /// head marker (the depth less those taken), then the deletes. Only the entries still
    /// there count, so that two nodes taking the same messages (a recipient's ack repeated on
    /// another node, or every node's expiry) do not count them twice. Returns how many were
    /// taken.
    async fn take_out(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        gone: &[u64],
        mut known: Option<Head>,
    ) -> Result<u64, StoreError> {
        let mut taken = 0;
        for chunk in gone.chunks(codec::MAX_LIST) {
            let mut done = false;
            for _ in 0..MAX_RACES {
                // The head first (or `known`, read before `gone` was found): reading it
                // finishes another node's marker, whose entries are gone then; and a marker of
                // its own after it fails if anything else was taken since.
                let head = match known.take() {
                    Some(head) => head,
                    None => self.head(op, id, rec).await?,
                };
                let entries = self.live(op, id, rec, chunk).await?;
                if entries.is_empty() {
                    done = true;
                    break;
                }
                self.confirm(op, id, rec, &entries).await?;
                let live: Vec<u64> = entries.iter().map(|&(sseq, _)| sseq).collect();
                let n = live.len() as u64;
                if self
                    .behead(op, id, rec, &head, head.depth.saturating_sub(n), &live)
                    .await?
                {
                    taken += n;
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(backend(op, "too many writers raced for one mailbox"));
            }
        }
        Ok(taken)
    }

    /// Makes the de-duplication record of each of these messages final where it is still the
    /// intent naming it, before they are deleted: once a message is gone, an intent can no
    /// longer be checked against it, and a retry finding one would store the message again.
    /// (The node that stored it writes the same when it lives; this covers one that died
    /// first, and a recipient that took the message through another node meanwhile.)
    async fn confirm(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        entries: &[(u64, Entry)],
    ) -> Result<(), StoreError> {
        for chunk in entries.chunks(FORGET_AT_ONCE) {
            let found = futures_util::future::join_all(chunk.iter().map(|(_, e)| async move {
                let Some(message) = e.message_id.map(MessageId) else {
                    return Ok(None);
                };
                Ok::<_, StoreError>(
                    self.dedup(op, id, rec, &message)
                        .await?
                        .filter(|d| d.intent && d.seq == e.seq)
                        .map(|d| (message, d, e.at)),
                )
            }))
            .await;
            let mut writes = Vec::new();
            for f in found {
                if let Some((message, d, at)) = f? {
                    let fin = codec::Dedup { intent: false, ..d };
                    writes.push(self.record_dedup(id, &message, fin, at).await);
                }
            }
            for written in futures_util::future::join_all(writes).await {
                written?;
            }
        }
        Ok(())
    }

    /// Those of the stream sequences `sseqs` that still hold a message of this mailbox, with
    /// the message.
    async fn live(
        &self,
        op: &'static str,
        id: &MailboxId,
        rec: &Record,
        sseqs: &[u64],
    ) -> Result<Vec<(u64, Entry)>, StoreError> {
        let stream = self.stream(id);
        let subject = self.msubj(id);
        let mut out = Vec::with_capacity(sseqs.len());
        for chunk in sseqs.chunks(FORGET_AT_ONCE) {
            let got =
                futures_util::future::join_all(chunk.iter().map(|&s| get::at(op, stream, s))).await;
            for (&sseq, m) in chunk.iter().zip(got) {
                if let Some(m) = m? {
                    let e = Entry::parse(op, &m.headers)?;
                    if m.subject.as_str() == subject
                        && e.kind == Kind::Message
                        && e.generation == rec.generation
                    {
                        out.push((sseq, e));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes a shard's messages and de-duplication records received at or before `cutoff`;
    /// returns how many messages.
    async fn expire_shard(&self, k: usize, cutoff: u64) -> Result<u64, StoreError> {
        let op = "expire";
        let stream = &self.shards[k];
        // Per mailbox: (stream sequence, generation, sequence number) of what is due.
        let mut due: BTreeMap<[u8; 32], Vec<(u64, u64, u64)>> = BTreeMap::new();
        // Head markers and fences that a later entry replaced, which a node that died before
        // deleting one left behind: per mailbox, the newest entry if it is one, and those
        // replaced.
        let mut replaced: HashMap<[u8; 32], (Option<u64>, Vec<u64>)> = HashMap::new();
        scan(
            op,
            stream,
            format!("{}.m.{k}.*", self.subjects),
            |sseq, subject, h| {
                let e = Entry::parse(op, h)?;
                let id = subject
                    .rsplit('.')
                    .next()
                    .and_then(unhex::<32>)
                    .ok_or_else(|| corrupt(op, "a message subject without a mailbox id"))?;
                if e.kind == Kind::Message && e.at <= cutoff {
                    due.entry(id).or_default().push((sseq, e.generation, e.seq));
                }
                let (newest, old) = replaced.entry(id).or_default();
                let marker = (e.kind != Kind::Message).then_some(sseq);
                if let Some(before) = std::mem::replace(newest, marker) {
                    old.push(before);
                }
                Ok(())
            },
        )
        .await?;
        let mut messages = 0;
        for (raw, entries) in due {
            let id = MailboxId(raw);
            let _lock = self.locks.lock(raw).await;
            let Some((rec, _)) = self.record(op, &id).await? else {
                let strays: Vec<u64> = entries.iter().map(|&(s, _, _)| s).collect();
                self.forget_all(op, stream, &strays).await;
                continue;
            };
            let (mine, strays): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .partition(|&(_, g, _)| g == rec.generation);
            let strays: Vec<u64> = strays.into_iter().map(|(s, _, _)| s).collect();
            self.forget_all(op, stream, &strays).await;
            let gone: Vec<u64> = mine.iter().map(|&(s, _, _)| s).collect();
            // This node's map of where its messages sit must not hand these to an ack.
            let seqs: BTreeSet<u64> = mine.iter().map(|&(_, _, seq)| seq).collect();
            self.positions.remove(&id, &seqs);
            let n = self.take_out(op, &id, &rec, &gone, None).await?;
            messages += n;
        }
        let leftovers: Vec<u64> = replaced.into_values().flat_map(|(_, old)| old).collect();
        self.forget_all(op, stream, &leftovers).await;
        let mut records = Vec::new();
        let dstream = &self.dedup[k];
        scan(
            op,
            dstream,
            format!("{}.d.{k}.*.*", self.subjects),
            |sseq, _, h| {
                if codec::received_at(op, h)? <= cutoff {
                    records.push(sseq);
                }
                Ok(())
            },
        )
        .await?;
        self.forget_all(op, dstream, &records).await;
        Ok(messages)
    }

    /// Deletes a mailbox's record (at this revision) and purges its entries.
    async fn remove(
        &self,
        op: &'static str,
        id: &MailboxId,
        revision: u64,
    ) -> Result<bool, StoreError> {
        if !self.mailboxes.delete(op, &hex(&id.0), revision).await? {
            return Ok(false);
        }
        self.cache.forget(id);
        self.positions.drop_mailbox(id);
        self.notify(NOTICE_CHANGED, id).await;
        for (stream, filter) in [
            (self.stream(id), self.msubj(id)),
            (self.dstream(id), self.dfilter(id)),
        ] {
            stream
                .purge()
                .filter(filter)
                .await
                .map_err(|e| backend(op, e))?;
        }
        Ok(true)
    }

    async fn remove_slot(
        &self,
        op: &'static str,
        slot: &[u8; 32],
        revision: u64,
    ) -> Result<bool, StoreError> {
        if !self.slots.delete(op, &hex(slot), revision).await? {
            return Ok(false);
        }
        self.packages
            .purge()
            .filter(self.ksubj(slot))
            .await
            .map_err(|e| backend(op, e))?;
        Ok(true)
    }

    /// One-time key packages a slot holds.
    async fn held(&self, op: &'static str, slot: &[u8; 32]) -> Result<u64, StoreError> {
        let mut counts = self
            .packages
            .info_with_subjects(self.ksubj(slot))
            .await
            .map_err(|e| backend(op, e))?;
        let mut total = 0u64;
        while let Some(c) = counts.next().await {
            let (_, n) = c.map_err(|e| backend(op, e))?;
            total += n as u64;
        }
        Ok(total)
    }
}

/// Publishes one entry; `expect` is the stream sequence the subject's newest entry must
/// have (0: none). `None` when it had another: a writer elsewhere came first.
///
/// The expectation alone is not a compare-and-set in a cluster of nats-server before 2.9.21:
/// the leader checks it when it proposes the write, not when the write is applied, so two
/// writers expecting the same entry can both pass (nats-server#4320). What is checked when a
/// write is applied, in order on every replica, is the stream's de-duplication by
/// `Nats-Msg-Id`. So a write expecting entry `H` also carries the message id `H`: of two
/// writers racing on `H`, the second is answered "duplicate" and counts as having lost. The
/// id is unique per stream because `H` is one entry on one subject, and is never expected
/// again once something is written after it (the newest entry of a subject is never deleted
/// before another is written after it). Expecting no entry (0) is checked at apply already,
/// and a subject purged and written again must be able to expect 0 twice.
pub(crate) async fn publish(
    js: &jetstream::Context,
    op: &'static str,
    subject: String,
    mut headers: async_nats::HeaderMap,
    payload: Bytes,
    expect: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    if let Some(seq) = expect {
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            seq.to_string().as_str(),
        );
        if seq > 0 {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                seq.to_string().as_str(),
            );
        }
    }
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| backend(op, e))?;
    match ack.await {
        // Another writer expecting the same entry was applied first.
        Ok(a) if a.duplicate => Ok(None),
        Ok(a) => Ok(Some(a.sequence)),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
        Err(e) => Err(backend(op, e)),
    }
}

/// Publishes without an expectation: the publish is sent when this returns, and the future it
/// returns answers once JetStream has stored it, so several can be in flight.
async fn send(
    js: &jetstream::Context,
    op: &'static str,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
) -> futures_util::future::BoxFuture<'static, Result<(), StoreError>> {
    match js.publish_with_headers(subject, headers, payload).await {
        Ok(ack) => Box::pin(async move { ack.await.map(|_| ()).map_err(|e| backend(op, e)) }),
        Err(e) => {
            let e = backend(op, e);
            Box::pin(async move { Err(e) })
        }
    }
}

/// Scans a stream's entries under `filter`, handing each (stream sequence, subject,
/// headers) to `each`.
pub(crate) async fn scan(
    op: &'static str,
    stream: &stream::Stream,
    filter: String,
    mut each: impl FnMut(u64, &str, &async_nats::HeaderMap) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| backend(op, e))?;
    let empty = async_nats::HeaderMap::new();
    let result = async {
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(SCAN_BATCH)
                .messages()
                .await
                .map_err(|e| backend(op, e))?;
            let mut got = 0usize;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| backend(op, e))?;
                let info = m.info().map_err(|e| backend(op, e))?;
                each(
                    info.stream_sequence,
                    m.subject.as_str(),
                    m.headers.as_ref().unwrap_or(&empty),
                )?;
                got += 1;
            }
            if got == 0 {
                return Ok(());
            }
        }
    }
    .await;
    let name = consumer.cached_info().name.clone();
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(op, error = %e, "a scan's consumer stays until it is idle");
    }
    result
}

fn generation() -> Result<u64, StoreError> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| backend("create", e))?;
    Ok(u64::from_le_bytes(raw))
}

impl MailboxStore for NatsStore {
    async fn create_mailbox(
        &self,
        id: MailboxId,
        record: MailboxRecord,
    ) -> Result<CreateOutcome, StoreError> {
        let op = "create";
        let _lock = self.locks.lock(id.0).await;
        let fresh = Record {
            record: MailboxRecord::new(
                record.kind,
                record.recipient_key,
                record.sender_cap_hash,
                record.created_at,
            ),
            generation: generation()?,
            used_day: record.created_at / DAY,
        };
        for _ in 0..MAX_RACES {
            if self
                .mailboxes
                .create(op, &hex(&id.0), fresh.encode())
                .await?
            {
                self.cache.forget(&id);
                return Ok(CreateOutcome::Created);
            }
            if let Some((old, _)) = self.record(op, &id).await? {
                return if old.record.same_creation(&record) {
                    Ok(CreateOutcome::AlreadyExists)
                } else {
                    Err(StoreError::MailboxExists)
                };
            }
        }
        Err(backend(
            op,
            "a mailbox was made and deleted too often at once",
        ))
    }

    async fn mailbox(&self, id: MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        if let Some(record) = self.cache.get(&id) {
            return Ok(Some(record));
        }
        let epoch = self.cache.epoch();
        let record = self.record("lookup", &id).await?.map(|(r, _)| r.record);
        if let Some(r) = &record {
            self.cache.fill(id, r.clone(), epoch);
        }
        Ok(record)
    }

    async fn append(&self, batch: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let n = batch.len();
        let mut groups: Vec<(MailboxId, Vec<(usize, NewMessage)>)> = Vec::new();
        let mut index: HashMap<MailboxId, usize> = HashMap::new();
        for (i, m) in batch.into_iter().enumerate() {
            let g = *index.entry(m.mailbox).or_insert_with(|| {
                groups.push((m.mailbox, Vec::new()));
                groups.len() - 1
            });
            if let Some((_, list)) = groups.get_mut(g) {
                list.push((i, m));
            }
        }
        let done = futures_util::future::join_all(
            groups
                .into_iter()
                .map(|(id, messages)| self.append_to(id, messages)),
        )
        .await;
        let mut results: Vec<Option<Result<Appended, StoreError>>> = (0..n).map(|_| None).collect();
        for (i, r) in done.into_iter().flatten() {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(backend("append", "an answer went missing"))))
            .collect()
    }

    async fn read(
        &self,
        id: MailboxId,
        after_seq: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let op = "read";
        let Some((rec, _)) = self.record(op, &id).await? else {
            return Err(StoreError::NoSuchMailbox);
        };
        let mut out = Vec::new();
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(out);
        };
        if max_messages == 0 {
            return Ok(out);
        }
        // The head first: reading it finishes the deletes of an ack whose node died midway,
        // so that nothing acknowledged is read again.
        let head = self.head(op, &id, &rec).await?;
        if head.seq < first {
            return Ok(out);
        }
        let mut bytes = 0usize;
        let mut full = false;
        let mut take = |out: &mut Vec<StoredMessage>, e: Entry, payload: Bytes| {
            let len = payload.len();
            if !out.is_empty() && bytes.saturating_add(len) > max_bytes {
                return Ok(false);
            }
            bytes = bytes.saturating_add(len);
            let message_id = e
                .message_id
                .ok_or_else(|| corrupt(op, "a message entry without its id"))?;
            out.push(StoredMessage {
                seq: e.seq,
                message_id: MessageId(message_id),
                received_at: e.at,
                ciphertext: payload.to_vec(),
            });
            Ok::<_, StoreError>(out.len() < max_messages)
        };
        // Messages this node appended: fetched by stream sequence, all at once (a subscriber's
        // catch-up on this node is mostly these). The first one not there ends the fast path.
        let mut pos = None;
        let known = self.positions.run(&id, first, max_messages);
        if !known.is_empty() {
            let stream = self.stream(&id);
            let got = futures_util::future::join_all(
                known.iter().map(|&(_, sseq)| get::at(op, stream, sseq)),
            )
            .await;
            for (&(seq, sseq), m) in known.iter().zip(got) {
                let Ok(Some(m)) = m else { break };
                let e = Entry::parse(op, &m.headers)?;
                if e.kind != Kind::Message || e.generation != rec.generation || e.seq != seq {
                    break;
                }
                pos = Some(sseq.saturating_add(1));
                if !take(&mut out, e, m.payload)? {
                    full = true;
                    break;
                }
            }
        }
        if full {
            return Ok(out);
        }
        let next = out.last().map_or(first, |m| m.seq.saturating_add(1));
        // Where the message before `next` sits, if this node knows (it appended or read it),
        // is where the rest starts: a subscriber's next read needs no search.
        let mut pos = match pos.or_else(|| {
            let before = next.checked_sub(1)?;
            Some(self.positions.get(&id, before)?.saturating_add(1))
        }) {
            Some(p) => p,
            None => self.position(op, &id, &rec, &head, next).await?,
        };
        while let Some((e, m)) = self.next_message(op, &id, &rec, &mut pos, next).await? {
            // An ack of it, or the next read, on this node needs no search either.
            self.positions.insert(id, e.seq, m.sequence);
            if !take(&mut out, e, m.payload)? {
                break;
            }
        }
        Ok(out)
    }

    async fn pending(&self, id: MailboxId) -> Result<u64, StoreError> {
        let op = "pending";
        let Some((rec, _)) = self.record(op, &id).await? else {
            return Err(StoreError::NoSuchMailbox);
        };
        Ok(self.head(op, &id, &rec).await?.depth)
    }

    async fn pending_after(
        &self,
        id: MailboxId,
        after_seq: u64,
        through_seq: u64,
    ) -> Result<u64, StoreError> {
        let op = "pending";
        if after_seq == 0 && through_seq == u64::MAX {
            return self.pending(id).await;
        }
        let Some((rec, _)) = self.record(op, &id).await? else {
            return Err(StoreError::NoSuchMailbox);
        };
        let Some(first) = after_seq.checked_add(1).filter(|&f| f <= through_seq) else {
            return Ok(0);
        };
        let head = self.head(op, &id, &rec).await?;
        let mut pos = self.position(op, &id, &rec, &head, first).await?;
        let mut count = 0;
        while let Some((e, _)) = self.next_message(op, &id, &rec, &mut pos, first).await? {
            if e.seq > through_seq {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    async fn update_mailbox(
        &self,
        id: MailboxId,
        new_owner_key: Option<[u8; 32]>,
        new_cap_hash: [u8; 32],
    ) -> Result<u64, StoreError> {
        let op = "update";
        let _lock = self.locks.lock(id.0).await;
        let mut retired_here: Option<[u8; 32]> = None;
        for _ in 0..MAX_RACES {
            let Some((rec, revision)) = self.record(op, &id).await? else {
                return Err(StoreError::NoSuchMailbox);
            };
            if rec.record.kind != MailboxKind::Log {
                return Err(StoreError::NotALog { op: "update" });
            }
            let head = self.head(op, &id, &rec).await?;
            let mut next = rec.clone();
            if let Some(owner) = new_owner_key {
                next.record.recipient_key = owner;
            }
            let current = rec.record.sender_cap_hash == new_cap_hash;
            let read_until = match (current, retired_here) {
                (true, None) => {
                    // A retry: nothing to retire.
                    let answer = rec.record.retired_caps.last().map_or(0, |r| r.read_until);
                    if next == rec {
                        return Ok(answer);
                    }
                    answer
                }
                (true, Some(old)) => {
                    // This call retired `old` and lost the fence to an append: move its
                    // `read_until` up to what is stored now.
                    for r in &mut next.record.retired_caps {
                        if r.cap_hash == old {
                            r.read_until = head.seq;
                        }
                    }
                    head.seq
                }
                (false, _) => {
                    let caps = &mut next.record.retired_caps;
                    caps.retain(|r| r.cap_hash != new_cap_hash);
                    caps.push(RetiredCap {
                        cap_hash: rec.record.sender_cap_hash,
                        read_until: head.seq,
                    });
                    let over = caps.len().saturating_sub(MAX_RETIRED_CAPS);
                    caps.drain(..over);
                    next.record.sender_cap_hash = new_cap_hash;
                    retired_here = Some(rec.record.sender_cap_hash);
                    head.seq
                }
            };
            if next != rec
                && !self
                    .mailboxes
                    .update(op, &hex(&id.0), next.encode(), revision)
                    .await?
            {
                continue;
            }
            self.cache.forget(&id);
            if retired_here.is_some() {
                // Before the fence: a post that follows it is announced after this.
                self.notify(NOTICE_CHANGED, &id).await;
            }
            if retired_here.is_none() {
                return Ok(read_until);
            }
            // The fence: an append that read the old record elsewhere now expects a stale head.
            let fence = Entry {
                kind: Kind::Update,
                seq: head.seq,
                depth: head.depth,
                generation: rec.generation,
                message_id: None,
                at: 0,
            };
            if self
                .publish(
                    op,
                    self.msubj(&id),
                    fence.headers(),
                    Bytes::new(),
                    Some(head.sseq),
                )
                .await?
                .is_some()
            {
                if head.kind == Some(Kind::Head) {
                    self.forget(op, self.stream(&id), head.sseq).await;
                }
                return Ok(read_until);
            }
        }
        Err(backend(op, "too many writers raced for one mailbox"))
    }

    async fn ack(&self, id: MailboxId, seqs: Vec<u64>) -> Result<u64, StoreError> {
        let op = "ack";
        let _lock = self.locks.lock(id.0).await;
        let Some((rec, _)) = self.record(op, &id).await? else {
            return Err(StoreError::NoSuchMailbox);
        };
        if rec.record.kind == MailboxKind::Log {
            return Ok(0);
        }
        let wanted: BTreeSet<u64> = seqs.into_iter().filter(|&s| s > 0).collect();
        let Some(&lo) = wanted.first() else {
            return Ok(0);
        };
        let head = self.head(op, &id, &rec).await?;
        if head.seq < lo {
            return Ok(0);
        }
        // Where this node appended them it knows their places; the rest are looked for.
        let (mut gone, missing) = self.positions.find(&id, &wanted);
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            let mut pos = self.position(op, &id, &rec, &head, lo).await?;
            while let Some((e, m)) = self.next_message(op, &id, &rec, &mut pos, lo).await? {
                if e.seq > hi {
                    break;
                }
                if missing.contains(&e.seq) {
                    gone.push(m.sequence);
                }
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        // The head read above: an ack reads it once.
        let n = self.take_out(op, &id, &rec, &gone, Some(head)).await?;
        self.positions.remove(&id, &wanted);
        Ok(n)
    }

    async fn delete_mailbox(&self, id: MailboxId) -> Result<bool, StoreError> {
        let op = "delete";
        let _lock = self.locks.lock(id.0).await;
        for _ in 0..MAX_RACES {
            let Some((_, revision)) = self.record(op, &id).await? else {
                return Ok(false);
            };
            if self.remove(op, &id, revision).await? {
                return Ok(true);
            }
        }
        Err(backend(op, "too many writers raced for one mailbox"))
    }

    async fn publish_key_packages(
        &self,
        slot: [u8; 32],
        owner_key: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
    ) -> Result<u32, StoreError> {
        let op = "publish";
        let max_len = self.limits.max_key_package_len;
        if let Some(p) = one_time
            .iter()
            .chain(&last_resort)
            .find(|p| p.len() > max_len)
        {
            return Err(StoreError::KeyPackageLimit {
                detail: format!("a key package of {} bytes (limit {max_len})", p.len()),
            });
        }
        let _lock = self.locks.lock(slot).await;
        for _ in 0..MAX_RACES {
            let existing = self.slot(op, &slot).await?;
            if let Some((s, _)) = &existing
                && s.owner != owner_key
            {
                return Err(StoreError::SlotOwnedElsewhere);
            }
            let held = if existing.is_some() {
                self.held(op, &slot).await?
            } else {
                0
            };
            let total = held + one_time.len() as u64;
            let max = self.limits.max_key_packages as u64;
            if total > max {
                return Err(StoreError::KeyPackageLimit {
                    detail: format!(
                        "{held} held and {} more, over the limit of {max}",
                        one_time.len()
                    ),
                });
            }
            let record = Slot {
                owner: owner_key,
                used_day: now / DAY,
                last_resort: last_resort
                    .clone()
                    .or_else(|| existing.as_ref().and_then(|(s, _)| s.last_resort.clone())),
            };
            let written = match &existing {
                None => self.slots.create(op, &hex(&slot), record.encode()).await?,
                Some((_, revision)) => {
                    self.slots
                        .update(op, &hex(&slot), record.encode(), *revision)
                        .await?
                }
            };
            if !written {
                continue;
            }
            for p in &one_time {
                let mut h = async_nats::HeaderMap::new();
                h.insert(codec::H_AT, now.to_string().as_str());
                self.publish(op, self.ksubj(&slot), h, Bytes::from(p.clone()), None)
                    .await?;
            }
            return u32::try_from(total).map_err(|_| backend(op, "too many key packages to count"));
        }
        Err(backend(
            op,
            "too many writers raced for one key-package slot",
        ))
    }

    async fn take_key_package(
        &self,
        slot: [u8; 32],
    ) -> Result<Option<TakenKeyPackage>, StoreError> {
        let op = "take";
        for _ in 0..MAX_RACES {
            match get::next(op, &self.packages, &self.ksubj(&slot), 1).await? {
                Some(m) => match self.packages.delete_message(m.sequence).await {
                    Ok(true) => {
                        return Ok(Some(TakenKeyPackage {
                            data: m.payload.to_vec(),
                            last_resort: false,
                        }));
                    }
                    // Taken by another node a moment ago: the next one.
                    Ok(false) | Err(_) => continue,
                },
                None => break,
            }
        }
        Ok(self.slot(op, &slot).await?.and_then(|(s, _)| {
            s.last_resort.map(|data| TakenKeyPackage {
                data,
                last_resort: true,
            })
        }))
    }

    async fn renew(&self, what: Renewal, now: u64) -> Result<bool, StoreError> {
        let op = "renew";
        let today = now / DAY;
        for _ in 0..MAX_RACES {
            let (key, bucket, value, revision) = match what {
                Renewal::Mailbox(id) => {
                    let Some((mut rec, revision)) = self.record(op, &id).await? else {
                        return Ok(false);
                    };
                    if rec.used_day >= today {
                        return Ok(true);
                    }
                    rec.used_day = today;
                    (hex(&id.0), &self.mailboxes, rec.encode(), revision)
                }
                Renewal::Slot(slot) => {
                    let Some((mut s, revision)) = self.slot(op, &slot).await? else {
                        return Ok(false);
                    };
                    if s.used_day >= today {
                        return Ok(true);
                    }
                    s.used_day = today;
                    (hex(&slot), &self.slots, s.encode(), revision)
                }
            };
            if bucket.update(op, &key, value, revision).await? {
                return Ok(true);
            }
        }
        Err(backend(op, "too many writers raced for one renewal"))
    }

    fn news(&self) -> Option<tokio::sync::mpsc::Receiver<News>> {
        self.news
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    async fn expire(&self, now: u64) -> Result<Expired, StoreError> {
        let op = "expire";
        let mut gone = Expired::default();
        if let Some(cutoff) = now.checked_sub(self.limits.expiry_secs) {
            for k in 0..self.shards.len() {
                gone.messages += self.expire_shard(k, cutoff).await?;
            }
        }
        let Some(before) = now.checked_sub(self.limits.idle_secs).map(|t| t / DAY) else {
            return Ok(gone);
        };
        for key in self.mailboxes.keys(op).await? {
            let Some(raw) = unhex::<32>(&key) else {
                continue;
            };
            let id = MailboxId(raw);
            let _lock = self.locks.lock(raw).await;
            if let Some((rec, revision)) = self.record(op, &id).await?
                && rec.used_day < before
                && self.remove(op, &id, revision).await?
            {
                gone.mailboxes += 1;
            }
        }
        for key in self.slots.keys(op).await? {
            let Some(slot) = unhex::<32>(&key) else {
                continue;
            };
            let _lock = self.locks.lock(slot).await;
            if let Some((s, revision)) = self.slot(op, &slot).await?
                && s.used_day < before
                && self.remove_slot(op, &slot, revision).await?
            {
                gone.slots += 1;
            }
        }
        Ok(gone)
    }
}

/// The head markers whose listed entries this node has deleted: per mailbox, the newest.
/// Bounded: past [`MAX_LOCKS`] mailboxes it starts again empty (a marker forgotten is at
/// worst finished again; deleting what is gone is harmless).
#[derive(Default)]
struct Finished(std::sync::Mutex<HashMap<MailboxId, u64>>);

impl Finished {
    fn has(&self, id: &MailboxId, sseq: u64) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(id).is_some_and(|&done| done >= sseq)
    }

    fn insert(&self, id: MailboxId, sseq: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_LOCKS && !map.contains_key(&id) {
            map.clear();
        }
        let done = map.entry(id).or_default();
        *done = (*done).max(sseq);
    }
}

/// Where the messages this node appended or read sit in their streams (mailbox sequence
/// number → stream sequence), so that reading on from them and acknowledging them need no
/// search. Bounded: past [`MAX_POSITIONS`] it starts again empty. Entries may outlive their
/// message (acknowledged on another node): a position is only ever a place to look, and a
/// lower bound for the next (numbers rise along a subject).
#[derive(Default)]
struct Positions(std::sync::Mutex<(usize, PositionMap)>);

/// Per mailbox: sequence number → stream sequence.
type PositionMap = HashMap<MailboxId, BTreeMap<u64, u64>>;

/// Most positions [`Positions`] keeps.
const MAX_POSITIONS: usize = 1 << 20;

impl Positions {
    fn insert(&self, id: MailboxId, seq: u64, sseq: u64) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, map) = &mut *guard;
        if *count >= MAX_POSITIONS {
            map.clear();
            *count = 0;
        }
        if map.entry(id).or_default().insert(seq, sseq).is_none() {
            *count += 1;
        }
    }

    /// The positions of `first`, `first + 1`, … as far as it knows them without a gap, at
    /// most `max`.
    fn run(&self, id: &MailboxId, first: u64, max: usize) -> Vec<(u64, u64)> {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(known) = guard.1.get(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (&seq, &sseq) in known.range(first..) {
            if out.len() >= max || seq != first + out.len() as u64 {
                break;
            }
            out.push((seq, sseq));
        }
        out
    }

    /// The position of `seq`, if known.
    fn get(&self, id: &MailboxId, seq: u64) -> Option<u64> {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard.1.get(id)?.get(&seq).copied()
    }

    /// The stream sequences of those of `seqs` it knows, and the rest.
    fn find(&self, id: &MailboxId, seqs: &BTreeSet<u64>) -> (Vec<u64>, BTreeSet<u64>) {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let known = guard.1.get(id);
        let mut found = Vec::new();
        let mut missing = BTreeSet::new();
        for &seq in seqs {
            match known.and_then(|k| k.get(&seq)) {
                Some(&sseq) => found.push(sseq),
                None => {
                    missing.insert(seq);
                }
            }
        }
        (found, missing)
    }

    fn remove(&self, id: &MailboxId, seqs: &BTreeSet<u64>) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, map) = &mut *guard;
        if let Some(k) = map.get_mut(id) {
            for seq in seqs {
                if k.remove(seq).is_some() {
                    *count -= 1;
                }
            }
            if k.is_empty() {
                map.remove(id);
            }
        }
    }

    fn drop_mailbox(&self, id: &MailboxId) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, map) = &mut *guard;
        if let Some(k) = map.remove(id) {
            *count -= k.len();
        }
    }
}

/// This process's lock per mailbox (and per key-package slot), so that its own writers to one
/// mailbox take turns and only other nodes can race them. Bounded: past [`MAX_LOCKS`], locks
/// nobody holds or waits for are dropped.
#[derive(Default)]
struct Locks(std::sync::Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    async fn lock(&self, key: [u8; 32]) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= MAX_LOCKS {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            Arc::clone(map.entry(key).or_default())
        };
        lock.lock_owned().await
    }
}
