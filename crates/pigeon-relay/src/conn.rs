//! One client connection: handshake, then requests in, responses and pushes out.
//!
//! The connection task holds, while idle, only its socket, the channel's keys and its
//! subscriptions: input and output buffers exist only while bytes are being handled. Requests
//! read together are handled together, and consecutive sends become one store batch, so a
//! client that pipelines pays one durable commit per batch, not per message.

use crate::Shared;
use crate::hub::{Change, Waker};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use pigeon_proto::auth::{self, AuthOp};
use pigeon_proto::channel::{Channel, ChannelError};
use pigeon_proto::rate::TokenBucket;
use pigeon_proto::session::{Accepted, ServerHandshake};
use pigeon_store::{Appended, MailboxKind, MailboxRecord, StoredMessage};
use pigeon_store::{MailboxId, MailboxStore, MessageId, NewMessage, Renewal, StoreError};
use pigeon_transport::ServerStream;
use pigeon_transport::admission::Ticket;
use pigeon_wire::msg::{
    self, Error as WireErrorMsg, Request, ServerMessage, request, response, server_message,
};
use pigeon_wire::record;
use pigeon_wire::stream::encode_message;
use pigeon_wire::{ErrorCode, WireError};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::futures::Notified;

/// Connection numbers for log correlation: a counter, not an identity.
static CONN_NO: AtomicU64 = AtomicU64::new(0);

/// Reads stop to handle what arrived once this much is buffered.
const READ_CHUNK: usize = 64 * 1024;
const MAX_BUFFERED: usize = 512 * 1024;
/// Answers a connection may have waiting before they are written out (and its reading waits
/// for the peer to take them): a client cannot make the relay hold more for it than this by
/// pipelining requests with large answers and reading slowly.
const MAX_UNSENT: usize = 1 << 20;
/// Most answer bytes sealed at once before they are written (see `Conn::send`).
const SEAL_SLICE: usize = 128 * 1024;
/// Mailboxes, logs and key-package publications one session may make: a person's client makes
/// a handful per invitation or group; more is someone filling the store.
const MAX_CREATIONS_PER_SESSION: u16 = 64;
/// Last-resort key packages one session is handed (it is never used up, so without a limit a
/// stranger could fetch it in a loop).
const MAX_LAST_RESORT_PER_SESSION: u8 = 2;
/// Most sequence numbers in one ack.
const MAX_ACK_SEQS: usize = 4096;
/// Most bytes echoed by a ping.
const MAX_PING: usize = 64;
/// Most subscriptions per connection: one person's conversations on this relay (each a log)
/// plus their mailboxes. At 72 bytes each (and the hub's entry), a full connection holds
/// under 150 KB; a subscription needs a mailbox the subscriber owns or a log's capability.
/// (It was 64: a profile with more conversations could not read them all, issue #16.)
const MAX_SUBSCRIPTIONS: usize = 1024;
/// Most store operations (send batches, ack groups) one connection may have in flight.
const MAX_INFLIGHT: usize = 32;
/// A client that does not take our bytes within this time is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-capability send rate limits, keyed by capability hash.
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<[u8; 32], TokenBucket>>,
    rate: f32,
    burst: f32,
}

impl Limiter {
    pub(crate) fn new(rate: f32, burst: f32) -> Self {
        Self {
            buckets: Mutex::default(),
            rate,
            burst,
        }
    }

    pub(crate) fn check(&self, cap_hash: &[u8; 32], now: Instant) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > 100_000 {
            // Forget buckets that have refilled: they hold no information.
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(*cap_hash)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(1.0, now)
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// The peer closed cleanly.
    Eof,
    /// IO failed.
    Io(std::io::Error),
    /// The peer broke the protocol; we answered if we could.
    Protocol(ChannelError),
    /// Silent for the idle timeout with no subscription.
    Idle,
}

impl From<ChannelError> for Close {
    fn from(e: ChannelError) -> Self {
        Self::Protocol(e)
    }
}

impl From<WireError> for Close {
    fn from(e: WireError) -> Self {
        Self::Protocol(ChannelError::Wire(e))
    }
}

/// A store operation under way for this connection, and what to answer when it is done.
type Op<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// Store operations in flight; allocated only while there are some.
type Inflight<'a> = Option<FuturesUnordered<Op<'a>>>;

/// A finished store operation.
enum Done {
    /// A batch of sends is durable (or failed).
    Sent {
        ids: Vec<u64>,
        results: Vec<Result<Appended, StoreError>>,
        started: Instant,
    },
    /// A group of acks is durable (or failed).
    Acked {
        ids: Vec<(u64, MailboxId)>,
        results: Vec<Result<u64, StoreError>>,
        started: Instant,
    },
}

/// What ended an idle wait.
enum Event {
    Stop,
    Done(Option<Done>),
    Readable(std::io::Result<()>),
    Woken,
}

struct Subscription {
    mailbox: MailboxId,
    /// Highest sequence number pushed on this connection (of a log: at first, where the
    /// subscriber asked to start).
    last_pushed: u64,
    /// Highest sequence number this subscription may push: a retired capability's
    /// `read_until` on a log, `u64::MAX` otherwise.
    read_until: u64,
    /// Of a log: the first eight bytes of the hash of the member capability it was made with,
    /// to look its reach up again when another relay node changes the log's record (0 for an
    /// inbox; eight bytes, not 32, as every idle subscription keeps it).
    cap_tag: u64,
    /// Pushed and not yet acknowledged, ascending.
    in_flight: Vec<u64>,
}

/// How far a capability with hash `cap_hash` reads a log: to the end when it is the current
/// capability (`u64::MAX`), to its `read_until` when it is a retired one. Compared in constant
/// time.
fn log_reach(record: &MailboxRecord, cap_hash: &[u8; 32]) -> Option<u64> {
    if bool::from(cap_hash.ct_eq(&record.sender_cap_hash)) {
        return Some(u64::MAX);
    }
    record
        .retired_caps
        .iter()
        .find(|r| bool::from(cap_hash.ct_eq(&r.cap_hash)))
        .map(|r| r.read_until)
}

/// The first eight bytes of a capability hash (see [`Subscription::cap_tag`]).
fn cap_tag(cap_hash: &[u8; 32]) -> u64 {
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&cap_hash[..8]);
    u64::from_le_bytes(tag)
}

/// [`log_reach`] for the capability whose hash starts with `tag`.
fn log_reach_by_tag(record: &MailboxRecord, tag: u64) -> Option<u64> {
    if cap_tag(&record.sender_cap_hash) == tag {
        return Some(u64::MAX);
    }
    record
        .retired_caps
        .iter()
        .find(|r| cap_tag(&r.cap_hash) == tag)
        .map(|r| r.read_until)
}

struct Conn {
    no: u64,
    channel: Channel,
    subs: Vec<Subscription>,
    waker: Option<Arc<Waker>>,
    inbuf: Vec<u8>,
    /// Last-resort key packages handed to this session so far.
    last_resorts: u8,
    /// Mailboxes, logs and key-package publications this session made so far.
    creations: u16,
    /// The source's key for per-source limits (from the admission ticket on `tcp`, from the
    /// front for a tunnel; none behind a proxy, where the peer is the proxy).
    source: Option<u128>,
}

/// Serves one accepted connection to its end.
///
/// The stream and the shared state are borrowed, not moved in: the caller's task owns them, so
/// that they are not stored twice in the task (an `async fn` keeps its arguments besides what
/// its body moves them into).
pub(crate) async fn serve<S: MailboxStore, T: ServerStream>(
    stream: &mut T,
    shared: &Shared<S>,
    ticket: &mut Option<Ticket>,
    source: Option<u128>,
) {
    let no = CONN_NO.fetch_add(1, Ordering::Relaxed);
    // Boxed, so that what only the handshake needs is not kept in every idle connection's task.
    let Some(mut conn) = Box::pin(open(stream, shared, no, ticket.as_ref(), source)).await else {
        return;
    };
    // A stranger no more: out of the handshake pool.
    if let Some(ticket) = ticket {
        ticket.authenticated();
    }
    let end = conn.run(stream, shared).await;
    if let Some(waker) = &conn.waker {
        for sub in &conn.subs {
            shared.hub.unsubscribe(sub.mailbox, waker);
        }
    }
    match end {
        Close::Eof => tracing::debug!(conn = conn.no, "closed by peer"),
        Close::Idle => tracing::debug!(conn = conn.no, "closed after its idle timeout"),
        Close::Io(e) => tracing::debug!(conn = conn.no, error = %e, "connection failed"),
        Close::Protocol(e) => {
            shared.metrics.protocol_errors.inc();
            tracing::debug!(conn = conn.no, error = %e, "closing after protocol violation");
        }
    }
}

/// Runs the handshake within its time limit and makes the connection's state; `None` when the
/// peer left, failed or was too slow (counted and logged here).
async fn open<S: MailboxStore, T: ServerStream>(
    stream: &mut T,
    shared: &Shared<S>,
    no: u64,
    ticket: Option<&Ticket>,
    source: Option<u128>,
) -> Option<Conn> {
    let evicted = async {
        match ticket {
            Some(ticket) => ticket.evicted().await,
            None => std::future::pending().await,
        }
    };
    let handshake = tokio::select! {
        done = tokio::time::timeout(shared.config.handshake_timeout, handshake(stream, shared)) => done,
        () = evicted => {
            shared.metrics.handshake_failures.inc();
            tracing::debug!(conn = no, "handshake evicted to make room");
            return None;
        }
    };
    let (channel, inbuf) = match handshake {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => return None,
        Ok(Err(reason)) => {
            shared.metrics.handshake_failures.inc();
            tracing::debug!(conn = no, %reason, "handshake failed");
            return None;
        }
        Err(_) => {
            shared.metrics.handshake_failures.inc();
            tracing::debug!(conn = no, "handshake timed out");
            return None;
        }
    };
    Some(Conn {
        no,
        channel,
        subs: Vec::new(),
        waker: None,
        inbuf,
        last_resorts: 0,
        creations: 0,
        source,
    })
}

/// Reads the client's first record and answers it (the protocol is
/// [`pigeon_proto::ServerHandshake`]'s; this only moves bytes). `Ok(None)` when the peer left
/// quietly.
async fn handshake<S: MailboxStore, T: ServerStream>(
    stream: &mut T,
    shared: &Shared<S>,
) -> Result<Option<(Channel, Vec<u8>)>, String> {
    let mut hs = ServerHandshake::new(Instant::now(), shared.config.handshake_timeout);
    let mut buf = Vec::with_capacity(1024);
    loop {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx))
            .await
            .map_err(|e| e.to_string())?;
        buf.clear();
        match stream.try_read_buf(&mut buf) {
            Ok(0) if hs.buffered() == 0 => return Ok(None),
            Ok(0) => return Err("stream ended inside the first record".to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
        match hs
            .handle_input(Instant::now(), &shared.keys, &buf)
            .map_err(|e| e.to_string())?
        {
            Accepted::Open {
                channel,
                answer,
                rest,
            } => {
                write(stream, &answer).await.map_err(|e| e.to_string())?;
                return Ok(Some((*channel, rest)));
            }
            Accepted::Refused { answer } => {
                write(stream, &answer).await.map_err(|e| e.to_string())?;
                return Err("no protocol version in common".to_owned());
            }
            _ => {}
        }
    }
}

/// Writes `bytes`, giving up only if the peer takes nothing for [`WRITE_TIMEOUT`]: a slow link
/// that keeps reading is never cut off, a peer that stopped reading is.
async fn write<T: ServerStream>(stream: &mut T, bytes: &[u8]) -> std::io::Result<()> {
    for chunk in bytes.chunks(64 * 1024) {
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(chunk)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer did not read",
                ));
            }
        }
    }
    Ok(())
}

fn respond(id: u64, result: response::Result, out: &mut Vec<u8>) {
    encode_message(
        &ServerMessage {
            body: Some(server_message::Body::Response(msg::Response {
                id,
                result: Some(result),
            })),
        },
        out,
    );
}

/// A refusal with its own sentence, and when to retry if waiting helps.
fn refused(
    code: ErrorCode,
    message: impl Into<String>,
    wait: Option<Duration>,
) -> response::Result {
    let mut err = WireErrorMsg::from_code(code);
    err.message = message.into();
    err.retry_after_ms = wait.map(|w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX));
    response::Result::Error(err)
}

fn error_result(code: ErrorCode) -> response::Result {
    response::Result::Error(WireErrorMsg::from_code(code))
}

fn field_error(e: &WireError) -> response::Result {
    response::Result::Error(WireErrorMsg {
        code: ErrorCode::BadRequest.as_u32(),
        message: e.to_string(),
        retry_after_ms: None,
    })
}

fn store_error(e: &StoreError) -> response::Result {
    let mut err = WireErrorMsg::from_code(e.code());
    if !matches!(e, StoreError::Backend { .. }) {
        err.message = e.to_string();
    }
    response::Result::Error(err)
}

/// One poll of an idle connection's wait: the stop signal, then the wake-up, then the store
/// operations, then the socket (`None` while too many operations are in flight to read more).
///
/// The wake-up comes before anything that could end the wait: a `Notified` that takes the
/// permit a `notify_one` left (as its first poll does) and is then dropped unread loses that
/// wake-up for good, and a connection that missed one stops pushing to its subscriber until
/// the next message comes (a bulk download through a busy tunnel stalled on exactly that).
fn poll_idle<T: ServerStream>(
    cx: &mut Context<'_>,
    stopping: &AtomicBool,
    notified: Pin<&mut Notified<'_>>,
    inflight: &mut Inflight<'_>,
    stream: Option<&mut T>,
) -> Poll<Event> {
    if stopping.load(Ordering::Acquire) {
        return Poll::Ready(Event::Stop);
    }
    if notified.poll(cx).is_ready() {
        // The stop signal sets `stopping` before it notifies.
        if stopping.load(Ordering::Acquire) {
            return Poll::Ready(Event::Stop);
        }
        return Poll::Ready(Event::Woken);
    }
    if let Some(ops) = inflight.as_mut()
        && let Poll::Ready(done) = ops.poll_next_unpin(cx)
    {
        return Poll::Ready(Event::Done(done));
    }
    if let Some(stream) = stream
        && let Poll::Ready(ready) = stream.poll_read_ready(cx)
    {
        return Poll::Ready(Event::Readable(ready));
    }
    Poll::Pending
}

impl Conn {
    /// Serves the session. Sends and acks are handed to the store and answered when durable,
    /// without stopping the connection: while one batch is being made durable the next is
    /// read, and pushes keep flowing. Any other request waits until those are answered, so
    /// requests that depend on each other keep their order.
    async fn run<'a, S: MailboxStore, T: ServerStream>(
        &mut self,
        stream: &mut T,
        shared: &'a Shared<S>,
    ) -> Close {
        let mut inflight: Inflight<'a> = None;
        if !self.inbuf.is_empty()
            && let Err(close) = Box::pin(self.handle_input(stream, shared, &mut inflight)).await
        {
            return close;
        }
        loop {
            // A connection that subscribes to nothing and has nothing in flight is closed
            // once it has been silent for the idle timeout.
            let event = if self.subs.is_empty() && inflight.is_none() {
                match tokio::time::timeout(
                    shared.config.idle_timeout,
                    self.wait(stream, shared, &mut inflight),
                )
                .await
                {
                    Ok(event) => event,
                    Err(_) => return Close::Idle,
                }
            } else {
                self.wait(stream, shared, &mut inflight).await
            };
            // Boxed: what handling needs is not kept in the task while the connection idles.
            if let Some(close) = Box::pin(self.handle(event, stream, shared, &mut inflight)).await {
                return close;
            }
        }
    }

    /// The idle wait: polls the socket, the store operations and one wake-up by hand rather
    /// than through `select!`, so that an idle connection holds one small `Notified` future and
    /// nothing else, which keeps it within its memory budget. The wake-up is the connection's
    /// own while it has subscriptions (the relay's shutdown wakes those through the hub), and
    /// the relay's stop signal otherwise.
    async fn wait<'a, S: MailboxStore, T: ServerStream>(
        &self,
        stream: &mut T,
        shared: &'a Shared<S>,
        inflight: &mut Inflight<'a>,
    ) -> Event {
        let notified = match &self.waker {
            Some(waker) if !self.subs.is_empty() => waker.notify.notified(),
            _ => shared.stop.notified(),
        };
        let mut notified = std::pin::pin!(notified);
        let busy = inflight.as_ref().map_or(0, FuturesUnordered::len);
        std::future::poll_fn(|cx| {
            poll_idle(
                cx,
                &shared.stopping,
                notified.as_mut(),
                inflight,
                (busy < MAX_INFLIGHT).then_some(&mut *stream),
            )
        })
        .await
    }

    /// Handles what ended an idle wait; `Some` when the connection is to end.
    async fn handle<'a, S: MailboxStore, T: ServerStream>(
        &mut self,
        event: Event,
        stream: &mut T,
        shared: &'a Shared<S>,
        inflight: &mut Inflight<'a>,
    ) -> Option<Close> {
        let mut out = Vec::new();
        match event {
            Event::Stop => {
                self.drain(inflight, shared, &mut out).await;
                respond(0, error_result(ErrorCode::ShuttingDown), &mut out);
                let _ = self.send(stream, &out).await;
                return Some(Close::Eof);
            }
            Event::Done(done) => {
                if let Some(done) = done {
                    self.finish(done, shared, &mut out);
                }
                if inflight.as_ref().is_some_and(FuturesUnordered::is_empty) {
                    *inflight = None;
                }
            }
            Event::Readable(ready) => {
                if let Err(e) = ready {
                    return Some(Close::Io(e));
                }
                let open = match self.read(stream).await {
                    Ok(open) => open,
                    Err(close) => return Some(close),
                };
                if let Err(close) = Box::pin(self.handle_input(stream, shared, inflight)).await {
                    return Some(close);
                }
                if !open {
                    // Answer what the peer sent before closing (it may still read), then
                    // end; a record or message cut off by the close is a violation.
                    self.drain(inflight, shared, &mut out).await;
                    let _ = self.send(stream, &out).await;
                    if !self.inbuf.is_empty() || self.channel.is_mid_message() {
                        return Some(Close::Protocol(ChannelError::Wire(WireError::Truncated {
                            what: "record or message",
                            missing_hint: "early",
                        })));
                    }
                    return Some(Close::Eof);
                }
            }
            Event::Woken => {
                if let Err(close) = Box::pin(self.push(shared, &mut out)).await {
                    return Some(close);
                }
            }
        }
        self.send(stream, &out).await.err()
    }

    /// Waits for every store operation in flight and answers it.
    async fn drain<S: MailboxStore>(
        &mut self,
        inflight: &mut Inflight<'_>,
        shared: &Shared<S>,
        out: &mut Vec<u8>,
    ) {
        if let Some(mut ops) = inflight.take() {
            while let Some(done) = ops.next().await {
                self.finish(done, shared, out);
            }
        }
    }

    /// Answers a finished store operation.
    fn finish<S: MailboxStore>(&mut self, done: Done, shared: &Shared<S>, out: &mut Vec<u8>) {
        match done {
            Done::Sent {
                ids,
                results,
                started,
            } => {
                shared
                    .metrics
                    .store_append_latency
                    .observe(started.elapsed());
                for (id, result) in ids.into_iter().zip(results) {
                    let result = match result {
                        Ok(appended) => {
                            if appended.duplicate {
                                shared.metrics.messages_duplicate.inc();
                            } else {
                                shared.metrics.messages_in.inc();
                            }
                            response::Result::Sent(msg::Sent {
                                seq: appended.seq,
                                duplicate: appended.duplicate,
                            })
                        }
                        Err(e) => {
                            shared.metrics.request_errors.inc();
                            store_error(&e)
                        }
                    };
                    respond(id, result, out);
                }
            }
            Done::Acked {
                ids,
                results,
                started,
            } => {
                shared.metrics.store_ack_latency.observe(started.elapsed());
                for ((id, mailbox), result) in ids.into_iter().zip(results) {
                    let result = match result {
                        Ok(deleted) => {
                            shared.metrics.messages_acked.add(deleted);
                            if let Some(w) = &self.waker {
                                w.wake(mailbox);
                            }
                            response::Result::Acked(msg::Acked { deleted })
                        }
                        Err(e) => {
                            shared.metrics.request_errors.inc();
                            // The window slots were freed when the ack was read: refill them.
                            if let Some(w) = &self.waker {
                                w.wake(mailbox);
                            }
                            store_error(&e)
                        }
                    };
                    respond(id, result, out);
                }
            }
        }
    }

    /// Reads what the socket has. `Ok(false)` once the peer has closed its side (what it sent
    /// before closing is still in the buffer, to be handled).
    async fn read<T: ServerStream>(&mut self, stream: &mut T) -> Result<bool, Close> {
        loop {
            if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 4 {
                self.inbuf.reserve(READ_CHUNK);
            }
            match stream.try_read_buf(&mut self.inbuf) {
                Ok(0) => return Ok(false),
                Ok(_) if self.inbuf.len() >= MAX_BUFFERED => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(Close::Io(e)),
            }
        }
    }

    /// Seals `data` and writes it, a slice at a time: the sealed copy never holds more than
    /// [`SEAL_SLICE`] of it, however much is waiting.
    async fn send<T: ServerStream>(&mut self, stream: &mut T, data: &[u8]) -> Result<(), Close> {
        if data.is_empty() {
            return Ok(());
        }
        let slice = data.len().min(SEAL_SLICE);
        let mut wire = Vec::with_capacity(slice + slice / 8 + 300);
        for part in data.chunks(SEAL_SLICE) {
            wire.clear();
            self.channel.seal(part, &mut wire)?;
            write(stream, &wire).await.map_err(Close::Io)?;
        }
        Ok(())
    }

    /// Decrypts and handles every whole record buffered, then answers.
    async fn handle_input<'a, S: MailboxStore, T: ServerStream>(
        &mut self,
        stream: &mut T,
        shared: &'a Shared<S>,
        inflight: &mut Inflight<'a>,
    ) -> Result<(), Close> {
        let mut requests = Vec::new();
        let mut consumed = 0;
        let mut scratch = Vec::new();
        let mut malformed = None;
        while let Some((body, used)) = record::parse_record(&self.inbuf[consumed..])? {
            self.channel.open::<ChannelError>(body, &mut scratch, |m| {
                match msg::decode_request(m) {
                    Ok(r) if malformed.is_none() => requests.push(r),
                    Ok(_) => {}
                    Err(e) => malformed = Some(e),
                }
                Ok(())
            })?;
            consumed += used;
        }
        self.inbuf.drain(..consumed);
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
        let mut out = Vec::new();
        self.handle_requests(requests, stream, shared, &mut out, inflight)
            .await?;
        if let Some(e) = malformed {
            self.drain(inflight, shared, &mut out).await;
            respond(0, field_error(&e), &mut out);
            let _ = self.send(stream, &out).await;
            return Err(Close::Protocol(ChannelError::Wire(e)));
        }
        self.send(stream, &out).await
    }

    async fn handle_requests<'a, S: MailboxStore, T: ServerStream>(
        &mut self,
        requests: Vec<Request>,
        stream: &mut T,
        shared: &'a Shared<S>,
        out: &mut Vec<u8>,
        inflight: &mut Inflight<'a>,
    ) -> Result<(), Close> {
        // Consecutive sends become one store batch and consecutive acks one concurrent group,
        // so a pipelining client pays one durable commit per read, not one per request.
        let mut sends = Vec::new();
        let mut acks = Vec::new();
        for req in requests {
            match req.body {
                Some(request::Body::Send(send)) => {
                    if !acks.is_empty() {
                        self.start_acks(std::mem::take(&mut acks), shared, out, inflight);
                    }
                    sends.push((req.id, send));
                }
                Some(request::Body::Ack(ack)) => {
                    if !sends.is_empty() {
                        self.start_sends(std::mem::take(&mut sends), shared, out, inflight)
                            .await;
                    }
                    acks.push((req.id, ack));
                }
                body => {
                    if !sends.is_empty() {
                        self.start_sends(std::mem::take(&mut sends), shared, out, inflight)
                            .await;
                    }
                    if !acks.is_empty() {
                        self.start_acks(std::mem::take(&mut acks), shared, out, inflight);
                    }
                    // Everything else sees the effects of what came before it.
                    self.drain(inflight, shared, out).await;
                    let result = match body {
                        Some(body) => self.handle_one(body, shared).await,
                        None => field_error(&WireError::Field {
                            what: "request",
                            field: "body",
                            problem: "missing or of a kind this relay does not know".to_owned(),
                        }),
                    };
                    if matches!(result, response::Result::Error(_)) {
                        shared.metrics.request_errors.inc();
                    }
                    respond(req.id, result, out);
                    if out.len() >= MAX_UNSENT {
                        // Written out before reading on: what waits for the peer stays small
                        // however many requests it pipelined.
                        self.send(stream, out).await?;
                        out.clear();
                    }
                }
            }
        }
        if !sends.is_empty() {
            self.start_sends(sends, shared, out, inflight).await;
        }
        if !acks.is_empty() {
            self.start_acks(acks, shared, out, inflight);
        }
        Ok(())
    }

    /// Validates acks and hands them to the store as one concurrent group.
    fn start_acks<'a, S: MailboxStore>(
        &mut self,
        acks: Vec<(u64, msg::Ack)>,
        shared: &'a Shared<S>,
        out: &mut Vec<u8>,
        inflight: &mut Inflight<'a>,
    ) {
        let mut ids = Vec::with_capacity(acks.len());
        let mut work = Vec::with_capacity(acks.len());
        for (id, ack) in acks {
            match self.check_ack(ack) {
                Ok((mailbox, seqs)) => {
                    ids.push((id, mailbox));
                    work.push((mailbox, seqs));
                }
                Err(result) => {
                    shared.metrics.request_errors.inc();
                    respond(id, result, out);
                }
            }
        }
        if work.is_empty() {
            return;
        }
        let op: Op<'a> = Box::pin(async move {
            let started = Instant::now();
            let results = futures_util::future::join_all(
                work.into_iter()
                    .map(|(mailbox, seqs)| shared.store.ack(mailbox, seqs)),
            )
            .await;
            Done::Acked {
                ids,
                results,
                started,
            }
        });
        inflight.get_or_insert_with(FuturesUnordered::new).push(op);
    }

    /// Validates sends and hands them to the store as one batch.
    async fn start_sends<'a, S: MailboxStore>(
        &mut self,
        sends: Vec<(u64, msg::Send)>,
        shared: &'a Shared<S>,
        out: &mut Vec<u8>,
        inflight: &mut Inflight<'a>,
    ) {
        let now = Instant::now();
        let unix = crate::unix_now();
        let mut batch = Vec::with_capacity(sends.len());
        let mut ids = Vec::with_capacity(sends.len());
        let mut mailboxes = Vec::with_capacity(sends.len());
        let mut live = Vec::with_capacity(sends.len());
        for (id, send) in sends {
            match self.check_send(send, shared, now, unix).await {
                Ok(m) => {
                    ids.push(id);
                    mailboxes.push(m.mailbox);
                    live.push(
                        shared
                            .hub
                            .is_watched(&m.mailbox)
                            .then(|| (m.message_id, m.ciphertext.clone(), m.now)),
                    );
                    batch.push(m);
                }
                Err(result) => {
                    shared.metrics.request_errors.inc();
                    respond(id, result, out);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let op: Op<'a> = Box::pin(async move {
            let started = Instant::now();
            let results = shared.store.append(batch).await;
            // Subscribers hear of new messages here, as soon as they are durable, even if this
            // connection is gone by the time its answers would be written. Each mailbox's
            // messages go to its subscribers together, in order (a log may have many).
            let mut woken: Vec<MailboxId> = Vec::new();
            let mut delivered: Vec<(MailboxId, Vec<Arc<StoredMessage>>)> = Vec::new();
            for ((mailbox, live), result) in mailboxes.into_iter().zip(live).zip(&results) {
                let Ok(appended) = result else { continue };
                if appended.duplicate {
                    continue;
                }
                match live {
                    Some((message_id, ciphertext, received_at)) => {
                        let message = Arc::new(StoredMessage {
                            seq: appended.seq,
                            message_id,
                            received_at,
                            ciphertext,
                        });
                        match delivered.iter_mut().find(|(id, _)| *id == mailbox) {
                            Some((_, list)) => list.push(message),
                            None => delivered.push((mailbox, vec![message])),
                        }
                    }
                    None if !woken.contains(&mailbox) => woken.push(mailbox),
                    None => {}
                }
            }
            for (mailbox, messages) in delivered {
                shared.hub.deliver(mailbox, &messages);
            }
            for mailbox in woken {
                shared.hub.wake(mailbox);
            }
            Done::Sent {
                ids,
                results,
                started,
            }
        });
        inflight.get_or_insert_with(FuturesUnordered::new).push(op);
    }

    /// Drops subscriptions to mailboxes that were deleted, and limits those made with a log
    /// capability that was retired since, by this or any other session. Returns the mailboxes
    /// another relay node changed, whose records must be looked up ([`Conn::recheck`]).
    #[must_use]
    fn apply_revocations(&mut self) -> Vec<MailboxId> {
        let mut rechecks = Vec::new();
        if let Some(w) = &self.waker {
            for (mailbox, change) in w.take_revoked() {
                match change {
                    Change::Recheck => {
                        if !rechecks.contains(&mailbox) {
                            rechecks.push(mailbox);
                        }
                    }
                    Change::Deleted => self.subs.retain(|s| s.mailbox != mailbox),
                    Change::Retired(read_until) => {
                        for sub in &mut self.subs {
                            // Not limited yet: made with the capability current until now.
                            if sub.mailbox == mailbox && sub.read_until == u64::MAX {
                                sub.read_until = read_until;
                            }
                        }
                    }
                }
            }
        }
        rechecks
    }

    /// Hands rechecks taken outside a push round back to the waker, for the next one.
    fn requeue(&self, rechecks: &[MailboxId]) {
        if let Some(w) = &self.waker {
            for &mailbox in rechecks {
                w.recheck(mailbox);
            }
        }
    }

    /// Follows a record another relay node changed: the subscriptions to a mailbox that is gone
    /// end, and a log's are limited to what their capability reaches now.
    async fn recheck<S: MailboxStore>(&mut self, shared: &Shared<S>, mailbox: MailboxId) {
        if !self.subs.iter().any(|s| s.mailbox == mailbox) {
            return;
        }
        match shared.store.mailbox(mailbox).await {
            Ok(None) => {
                self.subs.retain(|s| s.mailbox != mailbox);
                if let Some(w) = &self.waker {
                    shared.hub.unsubscribe(mailbox, w);
                }
            }
            Ok(Some(record)) if record.kind == MailboxKind::Log => {
                for sub in self.subs.iter_mut().filter(|s| s.mailbox == mailbox) {
                    // A capability gone from the record altogether reads nothing more.
                    let reach = log_reach_by_tag(&record, sub.cap_tag).unwrap_or(0);
                    sub.read_until = sub.read_until.min(reach);
                }
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(conn = self.no, error = %e, "looking up a changed mailbox failed; retrying shortly");
                if let Some(w) = &self.waker {
                    let w = Arc::clone(w);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        w.recheck(mailbox);
                    });
                }
            }
        }
    }

    fn check_ack(&mut self, a: msg::Ack) -> Result<(MailboxId, Vec<u64>), response::Result> {
        let later = self.apply_revocations();
        self.requeue(&later);
        let id = MailboxId::parse("ack", &a.mailbox_id).map_err(|e| field_error(&e))?;
        if a.seqs.len() > MAX_ACK_SEQS {
            return Err(field_error(&WireError::Field {
                what: "ack",
                field: "seqs",
                problem: format!("at most {MAX_ACK_SEQS} per ack"),
            }));
        }
        let Some(sub) = self.subs.iter_mut().find(|s| s.mailbox == id) else {
            return Err(error_result(ErrorCode::NotSubscribed));
        };
        let mut acked = a.seqs.clone();
        acked.sort_unstable();
        sub.in_flight
            .retain(|seq| acked.binary_search(seq).is_err());
        Ok((id, a.seqs))
    }

    async fn check_send<S: MailboxStore>(
        &self,
        send: msg::Send,
        shared: &Shared<S>,
        now: Instant,
        unix: u64,
    ) -> Result<NewMessage, response::Result> {
        let mailbox = MailboxId::parse("send", &send.mailbox_id).map_err(|e| field_error(&e))?;
        let cap: [u8; 32] =
            msg::fixed("send", "sender_cap", &send.sender_cap).map_err(|e| field_error(&e))?;
        let message_id = MessageId::parse(&send.message_id).map_err(|e| field_error(&e))?;
        if send.ciphertext.len() > pigeon_wire::MAX_CIPHERTEXT {
            return Err(error_result(ErrorCode::MessageTooLarge));
        }
        let record = match shared.store.mailbox(mailbox).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(error_result(ErrorCode::NoSuchMailbox)),
            Err(e) => return Err(store_error(&e)),
        };
        let hash = auth::cap_hash(&cap);
        if !bool::from(hash.ct_eq(&record.sender_cap_hash)) {
            // Only a log's current capability posts; a retired one is told so, to look for
            // the new one in the log.
            let retired = record.kind == MailboxKind::Log && log_reach(&record, &hash).is_some();
            return Err(error_result(if retired {
                ErrorCode::CapabilityRetired
            } else {
                ErrorCode::BadCapability
            }));
        }
        if let Err(wait) = shared.limiter.check(&hash, now) {
            shared.metrics.rate_limited.inc();
            let code = ErrorCode::RateLimited;
            return Err(refused(code, code.describe(), Some(wait)));
        }
        Ok(NewMessage {
            mailbox,
            message_id,
            ciphertext: send.ciphertext,
            now: unix,
            // A log checks it again as the message is stored, in order with its updates.
            cap_hash: Some(hash),
            first_attempt: send.first_attempt,
        })
    }

    fn verify(
        &self,
        key: &[u8; 32],
        op: AuthOp,
        object: &[u8; 32],
        bound: &[u8; 32],
        signature: &[u8],
    ) -> Result<(), response::Result> {
        auth::verify(
            key,
            op,
            self.channel.handshake_hash(),
            object,
            bound,
            signature,
        )
        .map_err(|e| {
            let mut err = WireErrorMsg::from_code(ErrorCode::BadSignature);
            err.message = e.to_string();
            response::Result::Error(err)
        })
    }

    /// Counts a creation (a mailbox, a log, a key-package publication) against this session's
    /// quota and the relay's rate of creations; refuses with [`ErrorCode::QuotaExceeded`] and a
    /// sentence when either is spent.
    fn may_create<S: MailboxStore>(&mut self, shared: &Shared<S>) -> Result<(), response::Result> {
        if self.creations >= MAX_CREATIONS_PER_SESSION {
            return Err(refused(
                ErrorCode::QuotaExceeded,
                format!(
                    "this session has made its {MAX_CREATIONS_PER_SESSION} mailboxes and \
                     key-package publications; connect again to make more"
                ),
                None,
            ));
        }
        let now = Instant::now();
        if let Some(source) = self.source {
            let mut key = [0u8; 32];
            key[..16].copy_from_slice(&source.to_be_bytes());
            if let Err(wait) = shared.source_creations.check(&key, now) {
                return Err(refused(
                    ErrorCode::QuotaExceeded,
                    "too many mailboxes are made from your address; retry shortly",
                    Some(wait),
                ));
            }
        }
        if let Err(wait) = shared.take_creation(now) {
            return Err(refused(
                ErrorCode::QuotaExceeded,
                "the relay is making too many mailboxes right now; retry shortly",
                Some(wait),
            ));
        }
        self.creations += 1;
        Ok(())
    }

    async fn handle_one<S: MailboxStore>(
        &mut self,
        body: request::Body,
        shared: &Shared<S>,
    ) -> response::Result {
        match self.dispatch(body, shared).await {
            Ok(r) | Err(r) => r,
        }
    }

    async fn dispatch<S: MailboxStore>(
        &mut self,
        body: request::Body,
        shared: &Shared<S>,
    ) -> Result<response::Result, response::Result> {
        let bad = |e: WireError| field_error(&e);
        match body {
            request::Body::Send(_) => Err(error_result(ErrorCode::BadRequest)),
            request::Body::CreateMailbox(c) => {
                let id = MailboxId::parse("create_mailbox", &c.mailbox_id).map_err(bad)?;
                let key: [u8; 32] =
                    msg::fixed("create_mailbox", "recipient_key", &c.recipient_key).map_err(bad)?;
                let cap_hash: [u8; 32] =
                    msg::fixed("create_mailbox", "sender_cap_hash", &c.sender_cap_hash)
                        .map_err(bad)?;
                let kind = MailboxKind::parse("create_mailbox", c.kind).map_err(bad)?;
                self.verify(&key, AuthOp::CreateMailbox, &id.0, &cap_hash, &c.signature)?;
                self.may_create(shared)?;
                let record = MailboxRecord::new(kind, key, cap_hash, crate::unix_now());
                shared
                    .store
                    .create_mailbox(id, record)
                    .await
                    .map_err(|e| store_error(&e))?;
                Ok(response::Result::Created(msg::Created {}))
            }
            request::Body::Subscribe(s) => {
                let id = MailboxId::parse("subscribe", &s.mailbox_id).map_err(bad)?;
                let record = self.owned(shared, id).await?;
                // An inbox proves ownership; a log is opened by its member capability (current,
                // or retired: then it reads up to its `read_until`), from a position of the
                // subscriber's choosing.
                let (after_seq, log_cap) = match record.kind {
                    MailboxKind::Inbox => {
                        self.verify(
                            &record.recipient_key,
                            AuthOp::Subscribe,
                            &id.0,
                            &[0; 32],
                            &s.signature,
                        )?;
                        (0, None)
                    }
                    MailboxKind::Log => {
                        let cap: [u8; 32] =
                            msg::fixed("subscribe", "member_cap", &s.member_cap).map_err(bad)?;
                        (s.after_seq.unwrap_or(0), Some(auth::cap_hash(&cap)))
                    }
                };
                let read_until = match &log_cap {
                    Some(hash) => log_reach(&record, hash)
                        .ok_or_else(|| error_result(ErrorCode::BadCapability))?,
                    None => u64::MAX,
                };
                if self.subs.len() >= MAX_SUBSCRIPTIONS
                    && !self.subs.iter().any(|s| s.mailbox == id)
                {
                    return Err(error_result(ErrorCode::RateLimited));
                }
                let pending = match record.kind {
                    MailboxKind::Inbox => shared.store.pending(id).await,
                    MailboxKind::Log => shared.store.pending_after(id, after_seq, read_until).await,
                }
                .map_err(|e| store_error(&e))?;
                // (Re)subscribing starts delivery over from the oldest unacknowledged message
                // (of a log: after `after_seq`). Revocations and retirements that came before
                // this subscription must not end or limit it later.
                let later = self.apply_revocations();
                self.requeue(&later);
                self.subs.retain(|s| s.mailbox != id);
                // Most connections hold one subscription for hours, and a `Vec`'s first growth
                // would make room for four (256 bytes); later ones grow as usual.
                if self.subs.capacity() == 0 {
                    self.subs.reserve_exact(1);
                }
                self.subs.push(Subscription {
                    mailbox: id,
                    last_pushed: after_seq,
                    read_until,
                    cap_tag: log_cap.map_or(0, |h| cap_tag(&h)),
                    in_flight: Vec::new(),
                });
                let waker = self.waker.get_or_insert_with(Arc::default);
                shared.hub.subscribe(id, waker);
                waker.wake(id);
                // Subscribing is using: the mailbox does not expire as idle (a failure here
                // only shortens its life; the subscription stands).
                if let Err(e) = shared
                    .store
                    .renew(Renewal::Mailbox(id), crate::unix_now())
                    .await
                {
                    tracing::debug!(error = %e, "renewing a mailbox failed");
                }
                if let Some(hash) = log_cap
                    && read_until == u64::MAX
                {
                    // An update that retired the capability after the check above but before
                    // the hub knew of this subscription would not have reached it: look again.
                    // (An update after this look reaches it through the hub.)
                    // A capability gone from the record altogether reads nothing more; a
                    // deletion meanwhile reaches the subscription through the hub.
                    if let Ok(Some(now)) = shared.store.mailbox(id).await {
                        let reach = log_reach(&now, &hash).unwrap_or(0);
                        if reach != u64::MAX
                            && let Some(sub) = self.subs.iter_mut().find(|s| s.mailbox == id)
                        {
                            sub.read_until = reach;
                        }
                    }
                }
                Ok(response::Result::Subscribed(msg::Subscribed { pending }))
            }
            request::Body::Unsubscribe(u) => {
                let id = MailboxId::parse("unsubscribe", &u.mailbox_id).map_err(bad)?;
                let before = self.subs.len();
                self.subs.retain(|s| s.mailbox != id);
                if before == self.subs.len() {
                    return Err(error_result(ErrorCode::NotSubscribed));
                }
                if let Some(w) = &self.waker {
                    shared.hub.unsubscribe(id, w);
                }
                Ok(response::Result::Done(msg::Done {}))
            }
            request::Body::Ack(_) => Err(error_result(ErrorCode::BadRequest)),
            request::Body::DeleteMailbox(d) => {
                let id = MailboxId::parse("delete_mailbox", &d.mailbox_id).map_err(bad)?;
                let record = self.owned(shared, id).await?;
                self.verify(
                    &record.recipient_key,
                    AuthOp::DeleteMailbox,
                    &id.0,
                    &[0; 32],
                    &d.signature,
                )?;
                shared
                    .store
                    .delete_mailbox(id)
                    .await
                    .map_err(|e| store_error(&e))?;
                // Every session subscribed to it (other devices too) stops serving it.
                self.subs.retain(|s| s.mailbox != id);
                shared.hub.revoke(id);
                Ok(response::Result::Done(msg::Done {}))
            }
            request::Body::UpdateMailbox(u) => {
                let what = "update_mailbox";
                let id = MailboxId::parse(what, &u.mailbox_id).map_err(bad)?;
                let new_owner: Option<[u8; 32]> = match u.new_owner_key.as_slice() {
                    [] => None,
                    key => Some(msg::fixed(what, "new_owner_key", key).map_err(bad)?),
                };
                if let Some(key) = &new_owner
                    && auth::VerifyingKey::from_bytes(key).is_err()
                {
                    return Err(bad(WireError::Field {
                        what,
                        field: "new_owner_key",
                        problem: "is not an Ed25519 public key".to_owned(),
                    }));
                }
                let new_cap_hash: [u8; 32] =
                    msg::fixed(what, "new_cap_hash", &u.new_cap_hash).map_err(bad)?;
                let record = self.owned(shared, id).await?;
                let digest = auth::update_digest(new_owner.as_ref(), &new_cap_hash);
                self.verify(
                    &record.recipient_key,
                    AuthOp::UpdateMailbox,
                    &id.0,
                    &digest,
                    &u.signature,
                )?;
                // Checked after the signature, so that only the owner learns the kind.
                if record.kind != MailboxKind::Log {
                    return Err(bad(WireError::Field {
                        what,
                        field: "mailbox_id",
                        problem: "names an inbox; only a log can be updated".to_owned(),
                    }));
                }
                let read_until = shared
                    .store
                    .update_mailbox(id, new_owner, new_cap_hash)
                    .await
                    .map_err(|e| store_error(&e))?;
                shared.metrics.log_updates.inc();
                if record.sender_cap_hash != new_cap_hash {
                    // Subscriptions made with the capability just retired (on any session)
                    // stop at its `read_until`. (A retry retires nothing.)
                    shared.hub.retire(id, read_until);
                }
                Ok(response::Result::Done(msg::Done {}))
            }
            request::Body::PublishKeyPackages(p) => {
                let slot: [u8; 32] =
                    msg::fixed("publish_key_packages", "slot_id", &p.slot_id).map_err(bad)?;
                let owner: [u8; 32] =
                    msg::fixed("publish_key_packages", "owner_key", &p.owner_key).map_err(bad)?;
                let digest = auth::packages_digest(&p.one_time, p.last_resort.as_deref());
                self.verify(
                    &owner,
                    AuthOp::PublishKeyPackages,
                    &slot,
                    &digest,
                    &p.signature,
                )?;
                self.may_create(shared)?;
                let available = shared
                    .store
                    .publish_key_packages(slot, owner, p.one_time, p.last_resort, crate::unix_now())
                    .await
                    .map_err(|e| store_error(&e))?;
                Ok(response::Result::Published(msg::Published {
                    one_time_available: available,
                }))
            }
            request::Body::FetchKeyPackage(f) => {
                let slot: [u8; 32] =
                    msg::fixed("fetch_key_package", "slot_id", &f.slot_id).map_err(bad)?;
                // Each slot answers a few fetches a second: an invitation is fetched once or
                // twice, never in a loop.
                if let Err(wait) = shared.fetch_limiter.check(&slot, Instant::now()) {
                    return Err(refused(
                        ErrorCode::RateLimited,
                        "this key-package slot is fetched too often; wait",
                        Some(wait),
                    ));
                }
                match shared
                    .store
                    .take_key_package(slot)
                    .await
                    .map_err(|e| store_error(&e))?
                {
                    Some(kp)
                        if kp.last_resort && self.last_resorts >= MAX_LAST_RESORT_PER_SESSION =>
                    {
                        Err(refused(
                            ErrorCode::RateLimited,
                            format!(
                                "a session is handed a last-resort key package at most \
                                 {MAX_LAST_RESORT_PER_SESSION} times"
                            ),
                            None,
                        ))
                    }
                    Some(kp) => {
                        if kp.last_resort {
                            self.last_resorts += 1;
                        }
                        Ok(response::Result::KeyPackage(msg::KeyPackage {
                            data: kp.data,
                            last_resort: kp.last_resort,
                        }))
                    }
                    None => Err(error_result(ErrorCode::NoKeyPackage)),
                }
            }
            request::Body::Ping(p) => {
                if p.payload.len() > MAX_PING {
                    return Err(bad(WireError::Field {
                        what: "ping",
                        field: "payload",
                        problem: format!("at most {MAX_PING} bytes"),
                    }));
                }
                Ok(response::Result::Pong(p))
            }
        }
    }

    async fn owned<S: MailboxStore>(
        &self,
        shared: &Shared<S>,
        id: MailboxId,
    ) -> Result<MailboxRecord, response::Result> {
        match shared.store.mailbox(id).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(error_result(ErrorCode::NoSuchMailbox)),
            Err(e) => Err(store_error(&e)),
        }
    }

    /// Pushes what the store holds past each woken subscription's position, within its window.
    async fn push<S: MailboxStore>(
        &mut self,
        shared: &Shared<S>,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        let Some(waker) = &self.waker else {
            return Ok(());
        };
        let waker = Arc::clone(waker);
        for mailbox in self.apply_revocations() {
            self.recheck(shared, mailbox).await;
        }
        let mut dirty = waker.take_dirty();
        // One push round writes at most about `push_bytes`; the rest waits for the next round,
        // so no single write grows without bound on a slow link.
        let mut budget = shared.config.push_bytes;
        // Live messages first: a caught-up subscription takes the next sequence number straight
        // from the commit; a gap or a full window sends it to the store instead.
        let mut batches: Vec<(MailboxId, Vec<StoredMessage>)> = Vec::new();
        for (mailbox, m) in waker.take_live() {
            let Some(sub) = self.subs.iter_mut().find(|s| s.mailbox == mailbox) else {
                continue;
            };
            if dirty.contains(&mailbox) || m.seq <= sub.last_pushed || m.seq > sub.read_until {
                continue;
            }
            if m.seq != sub.last_pushed + 1
                || sub.in_flight.len() >= shared.config.push_window
                || budget < m.ciphertext.len()
            {
                dirty.push(mailbox);
                continue;
            }
            budget -= m.ciphertext.len();
            sub.last_pushed = m.seq;
            sub.in_flight.push(m.seq);
            let message = Arc::unwrap_or_clone(m);
            match batches.iter_mut().find(|(id, _)| *id == mailbox) {
                Some((_, list)) => list.push(message),
                None => batches.push((mailbox, vec![message])),
            }
        }
        for (mailbox, messages) in batches {
            encode_pushes(mailbox, messages, shared, out);
        }
        for mailbox in dirty {
            let Some(sub) = self.subs.iter_mut().find(|s| s.mailbox == mailbox) else {
                continue;
            };
            if budget == 0 {
                // Out of budget this round: come back for it.
                waker.wake(mailbox);
                continue;
            }
            let window = shared
                .config
                .push_window
                .saturating_sub(sub.in_flight.len());
            // Sequence numbers are never reused, so at most this many are left to read.
            let left = sub.read_until.saturating_sub(sub.last_pushed);
            let room = window.min(usize::try_from(left).unwrap_or(usize::MAX));
            if room == 0 {
                continue;
            }
            let mut messages = match shared
                .store
                .read(mailbox, sub.last_pushed, room, budget)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(conn = self.no, error = %e, "store read failed; retrying shortly");
                    let waker = Arc::clone(&waker);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        waker.wake(mailbox);
                    });
                    continue;
                }
            };
            messages.retain(|m| m.seq <= sub.read_until);
            if messages.is_empty() {
                continue;
            }
            let bytes: usize = messages.iter().map(|m| m.ciphertext.len()).sum();
            let limit = budget;
            budget = budget.saturating_sub(bytes);
            for m in &messages {
                sub.last_pushed = sub.last_pushed.max(m.seq);
                sub.in_flight.push(m.seq);
            }
            let count = messages.len();
            encode_pushes(mailbox, messages, shared, out);
            if count < room
                && sub.last_pushed < sub.read_until
                && bytes + pigeon_wire::MAX_CIPHERTEXT > limit
            {
                // The read may have stopped at its byte limit: look again.
                waker.wake(mailbox);
            }
        }
        Ok(())
    }
}

/// Encodes `messages` of one mailbox as push messages, split to stay under the peer's message
/// limit.
fn encode_pushes<S: MailboxStore>(
    mailbox: MailboxId,
    messages: Vec<StoredMessage>,
    shared: &Shared<S>,
    out: &mut Vec<u8>,
) {
    let limit = pigeon_wire::MAX_MESSAGE - 1024;
    let mut push = msg::Push {
        mailbox_id: mailbox.0.to_vec(),
        deliveries: Vec::new(),
    };
    let mut size = 0;
    for m in messages {
        let d = msg::Delivery {
            seq: m.seq,
            message_id: m.message_id.0.to_vec(),
            received_at: m.received_at / 60 * 60,
            ciphertext: m.ciphertext,
        };
        let d_size = prost::Message::encoded_len(&d) + 8;
        if size + d_size > limit && !push.deliveries.is_empty() {
            emit_push(&mut push, shared, out);
            size = 0;
        }
        size += d_size;
        push.deliveries.push(d);
    }
    emit_push(&mut push, shared, out);
}

/// Appends `push` (if it carries anything) to `out` and empties it.
fn emit_push<S: MailboxStore>(push: &mut msg::Push, shared: &Shared<S>, out: &mut Vec<u8>) {
    if push.deliveries.is_empty() {
        return;
    }
    shared
        .metrics
        .messages_out
        .add(push.deliveries.len() as u64);
    let body = msg::Push {
        mailbox_id: push.mailbox_id.clone(),
        deliveries: std::mem::take(&mut push.deliveries),
    };
    encode_message(
        &ServerMessage {
            body: Some(server_message::Body::Push(body)),
        },
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_proto::StaticKeypair;
    use pigeon_proto::channel::ClientHandshake;
    use pigeon_store::{FjallStore, Limits};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    /// A relay's shared state over a fresh store, with no listener and no task.
    fn relay(dir: &std::path::Path) -> Shared<FjallStore> {
        Shared::new(
            FjallStore::open(dir, Limits::default()).expect("store"),
            StaticKeypair::generate().expect("keys"),
            crate::RelayConfig::default(),
            Arc::default(),
        )
    }

    /// A session whose Noise handshake ran in memory: requests go straight to its handler.
    fn session(shared: &Shared<FjallStore>) -> Conn {
        let hello = msg::ClientHello {
            versions: pigeon_wire::PROTOCOL_VERSIONS.to_vec(),
            padding: Vec::new(),
        };
        let mut first = Vec::new();
        ClientHandshake::start(shared.keys.public(), &hello, &mut first).expect("hello");
        let (body, _) = record::parse_record(&first)
            .expect("a record")
            .expect("whole");
        let mut answer = Vec::new();
        let (channel, _) = pigeon_proto::channel::accept(
            &shared.keys,
            body,
            pigeon_proto::session::choose_version,
            &mut answer,
        )
        .expect("accept");
        Conn {
            no: 0,
            channel,
            subs: Vec::new(),
            waker: None,
            inbuf: Vec::new(),
            last_resorts: 0,
            creations: 0,
            source: None,
        }
    }

    fn create(conn: &Conn, key: &auth::SigningKey, id: [u8; 32]) -> request::Body {
        let hash = *conn.channel.handshake_hash();
        let signature = auth::sign(key, AuthOp::CreateMailbox, &hash, &id, &[7; 32]);
        request::Body::CreateMailbox(msg::CreateMailbox {
            mailbox_id: id.to_vec(),
            recipient_key: key.verifying_key().to_bytes().to_vec(),
            sender_cap_hash: vec![7; 32],
            signature: signature.to_vec(),
            kind: 0,
        })
    }

    fn code(result: &response::Result) -> Option<ErrorCode> {
        match result {
            response::Result::Error(e) => Some(e.error_code()),
            _ => None,
        }
    }

    /// Request handling, tested without a socket: creations are bound to the session's
    /// handshake, checked field by field, and limited per session with a sentence.
    #[tokio::test]
    async fn creations_are_checked_and_limited_per_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = relay(dir.path());
        let mut conn = session(&shared);
        let key = auth::generate_signing_key().expect("key");
        let made = conn.handle_one(create(&conn, &key, [1; 32]), &shared).await;
        assert!(matches!(made, response::Result::Created(_)), "{made:?}");
        // A signature made for another session's handshake is refused.
        let other = session(&shared);
        let replayed = conn
            .handle_one(create(&other, &key, [2; 32]), &shared)
            .await;
        assert_eq!(
            code(&replayed),
            Some(ErrorCode::BadSignature),
            "{replayed:?}"
        );
        // A short id is refused with a sentence naming the field.
        let mut short = create(&conn, &key, [3; 32]);
        if let request::Body::CreateMailbox(c) = &mut short {
            c.mailbox_id.truncate(5);
        }
        match conn.handle_one(short, &shared).await {
            response::Result::Error(e) => {
                assert_eq!(e.error_code(), ErrorCode::BadRequest);
                assert!(e.message.contains("mailbox_id"), "{}", e.message);
            }
            other => panic!("a short id was taken: {other:?}"),
        }
        // The session's quota: 64 creations in all, then a refusal that says what to do.
        for i in 1..MAX_CREATIONS_PER_SESSION {
            let id = [u8::try_from(i % 200).unwrap_or(0) + 10; 32];
            let made = conn.handle_one(create(&conn, &key, id), &shared).await;
            assert!(
                matches!(made, response::Result::Created(_)),
                "{i}: {made:?}"
            );
        }
        match conn
            .handle_one(create(&conn, &key, [250; 32]), &shared)
            .await
        {
            response::Result::Error(e) => {
                assert_eq!(e.error_code(), ErrorCode::QuotaExceeded);
                assert!(e.message.contains("connect again"), "{}", e.message);
            }
            other => panic!("the quota let one more through: {other:?}"),
        }
        // A new session may make more.
        let mut next = session(&shared);
        let made = next
            .handle_one(create(&next, &key, [251; 32]), &shared)
            .await;
        assert!(matches!(made, response::Result::Created(_)), "{made:?}");
    }

    /// A last-resort key package (never used up) goes to one session at most twice.
    #[tokio::test]
    async fn a_last_resort_package_is_handed_to_a_session_twice_at_most() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = relay(dir.path());
        shared
            .store
            .publish_key_packages([5; 32], [6; 32], Vec::new(), Some(vec![9; 100]), 1_000)
            .await
            .expect("publish");
        let mut conn = session(&shared);
        let fetch = || {
            request::Body::FetchKeyPackage(msg::FetchKeyPackage {
                slot_id: vec![5; 32],
            })
        };
        for _ in 0..2 {
            let got = conn.handle_one(fetch(), &shared).await;
            assert!(
                matches!(&got, response::Result::KeyPackage(k) if k.last_resort),
                "{got:?}"
            );
        }
        let third = conn.handle_one(fetch(), &shared).await;
        assert_eq!(code(&third), Some(ErrorCode::RateLimited), "{third:?}");
        let empty = conn
            .handle_one(
                request::Body::FetchKeyPackage(msg::FetchKeyPackage {
                    slot_id: vec![8; 32],
                }),
                &shared,
            )
            .await;
        assert_eq!(code(&empty), Some(ErrorCode::NoKeyPackage), "{empty:?}");
    }

    /// Every subscribed connection keeps its subscriptions while idle (ARCHITECTURE.md, "Memory
    /// per idle connection"): a log's reading limit costs one word, the tag of its capability
    /// (to follow changes made on another relay node) one more, and nothing else may grow it
    /// unnoticed.
    #[test]
    fn a_subscription_stays_small() {
        assert_eq!(std::mem::size_of::<Subscription>(), 80);
    }

    /// A wake-up left for a connection while its socket is readable is seen by one of its next
    /// waits. (It was not: the wait took the wake-up, returned for the socket, and dropped it,
    /// so a subscriber reading acknowledgements steadily stopped getting pushes.)
    #[tokio::test]
    async fn a_wake_up_is_not_lost_while_the_socket_is_readable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        AsyncWriteExt::write_all(&mut client, b"ack")
            .await
            .expect("write");
        server.readable().await.expect("readable");

        let stopping = AtomicBool::new(false);
        let notify = Notify::new();
        notify.notify_one();
        let mut inflight: Inflight<'_> = None;
        let mut woken = false;
        // Each wait is a fresh one, as in `Conn::wait`; the socket stays readable throughout.
        for _ in 0..3 {
            let notified = notify.notified();
            let mut notified = std::pin::pin!(notified);
            let event = std::future::poll_fn(|cx| {
                poll_idle(
                    cx,
                    &stopping,
                    notified.as_mut(),
                    &mut inflight,
                    Some(&mut server),
                )
            })
            .await;
            if matches!(event, Event::Woken) {
                woken = true;
                break;
            }
            assert!(matches!(event, Event::Readable(Ok(()))), "unexpected event");
        }
        assert!(woken, "the wake-up was lost");
    }
}
