//! The server's side of a tunnel session: [`ServerSession`], what the relay reads and writes.
//!
//! A session is a sequence of legs (TLS connections, each carrying one HTTP/2 request and its
//! response), so that no single TCP connection carries more than the client's budget for it
//! (the 16–20 KB freeze). The client opens leg k+1 before leg k is spent; the server attaches it
//! to the session ([`Registry`]), ends leg k's response, and goes on writing on leg k+1, while
//! it reads leg k's request body to its end before reading leg k+1's. Each direction is
//! therefore one ordered byte stream, split at the ends of HTTP/2 streams; nothing is resent,
//! because nothing is lost while a leg stays within its budget. (A leg that dies or freezes
//! anyway ends the session: the client reconnects, and the relay's store redelivers what was
//! not acknowledged.)
//!
//! While idle, a session holds its legs' sockets, keys, window counters and empty buffers;
//! reads allocate only while bytes are being handled, like the relay's own connection code.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::h2::{self, Event};
use crate::record::{self, Opened, Records};
use crate::token::SessionId;

/// Bytes read from a socket per call, at most.
const READ_CHUNK: usize = 64 * 1024;
/// Most sealed control answers (PING and SETTINGS acknowledgements, window updates) a leg keeps
/// for a client that does not read them.
const MAX_OWED_CONTROL: usize = 256 * 1024;
/// Most tunnel bytes a leg holds for the relay before it stops reading its socket.
const MAX_READY: usize = 256 * 1024;
/// Bytes a leg keeps in hand for the END_STREAM frame (and its record) when spending a budget.
const END_RESERVE: u64 = 64;
/// Payload of a DATA frame so that frame and header fill one TLS record exactly, as Chrome's do.
const DATA_PER_RECORD: usize = record::MAX_PLAINTEXT - h2::FRAME_HEADER_LEN;

/// One leg on the server: a connection and its HTTP/2 stream.
pub(crate) struct ServerLeg {
    pub(crate) index: u16,
    tcp: TcpStream,
    /// TLS record protection; `None` for a leg behind a reverse proxy (cleartext HTTP/2).
    records: Option<Records>,
    h2: h2::Leg,
    /// The leg's buffers, allocated only while one of them holds bytes: an idle leg has none.
    bufs: Option<Box<Buffers>>,
    /// Most wire bytes this leg may carry to the client after the handshake (`None`: no cap).
    budget: Option<u32>,
    written: u64,
    /// When tunnel bytes were last written on this leg.
    last_write: std::time::Instant,
    /// The socket reached its end or failed.
    eof: bool,
}

/// What a leg has in hand between socket and relay.
#[derive(Default)]
struct Buffers {
    /// Received wire bytes not yet opened (a partial record).
    raw: Vec<u8>,
    /// Opened bytes not yet parsed (a partial frame).
    plain: Vec<u8>,
    /// Tunnel bytes parsed and not yet handed on.
    ready: Vec<u8>,
    /// Wire bytes owed to the peer (acknowledgements, window updates) not yet written.
    owed: Vec<u8>,
}

impl Buffers {
    /// Gives back the memory of empty buffers; whether all four are empty.
    fn shrink(&mut self) -> bool {
        let mut empty = true;
        for buf in [
            &mut self.raw,
            &mut self.plain,
            &mut self.ready,
            &mut self.owed,
        ] {
            shrink(buf);
            empty &= buf.capacity() == 0;
        }
        empty
    }
}

impl std::fmt::Debug for ServerLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLeg")
            .field("index", &self.index)
            .field("budget", &self.budget)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// What a leg's setup (in `crate::front`) hands over.
pub(crate) struct LegParts {
    pub(crate) index: u16,
    pub(crate) tcp: TcpStream,
    pub(crate) records: Option<Records>,
    pub(crate) h2: h2::Leg,
    pub(crate) raw: Vec<u8>,
    pub(crate) plain: Vec<u8>,
    pub(crate) ready: Vec<u8>,
    pub(crate) budget: Option<u32>,
    /// Wire bytes already written on this connection after the handshake.
    pub(crate) written: u64,
}

impl ServerLeg {
    pub(crate) fn new(parts: LegParts) -> Self {
        let mut leg = Self {
            index: parts.index,
            tcp: parts.tcp,
            records: parts.records,
            h2: parts.h2,
            bufs: Some(Box::new(Buffers {
                raw: parts.raw,
                plain: parts.plain,
                ready: parts.ready,
                owed: Vec::new(),
            })),
            budget: parts.budget,
            written: parts.written,
            last_write: std::time::Instant::now(),
            eof: false,
        };
        leg.settle();
        leg
    }

    /// The leg's buffers, allocated if it had none.
    fn bufs(&mut self) -> &mut Buffers {
        self.bufs.get_or_insert_default()
    }

    /// Frees the buffers that hold nothing, and the box when none holds anything.
    fn settle(&mut self) {
        if self.bufs.as_mut().is_some_and(|b| b.shrink()) {
            self.bufs = None;
        }
    }

    /// Tunnel bytes parsed and not yet handed on.
    fn ready_len(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.ready.len())
    }

    /// Whether wire bytes are owed to the peer.
    fn owes(&self) -> bool {
        self.bufs.as_ref().is_some_and(|b| !b.owed.is_empty())
    }

    /// Whether the client ended its request body on this leg.
    fn up_ended(&self) -> bool {
        self.h2.remote_ended()
    }

    /// Whether this end ended its response body on this leg.
    fn down_ended(&self) -> bool {
        self.h2.local_ended()
    }

    /// Protects `frames` for the wire and appends them to `out`.
    fn seal(&mut self, frames: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match &mut self.records {
            Some(records) => records.seal(frames, out).map_err(io::Error::other),
            None => {
                out.extend_from_slice(frames);
                Ok(())
            }
        }
    }

    /// Reads what the socket has (up to a chunk), opens and parses it; `Err(WouldBlock)` passes
    /// through when the socket had nothing. An idle leg keeps no buffer.
    fn pull(&mut self) -> io::Result<()> {
        if self.eof || self.ready_len() >= MAX_READY {
            return Ok(());
        }
        let raw = &mut self.bufs.get_or_insert_default().raw;
        let mut got = 0;
        loop {
            if raw.capacity() - raw.len() < 4096 {
                raw.reserve(16 * 1024);
            }
            match self.tcp.try_read_buf(raw) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    got += n;
                    if got >= READ_CHUNK {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => break,
                Err(e) => {
                    // Nothing came: the buffer reserved for it is not kept while idle.
                    self.settle();
                    return Err(e);
                }
            }
        }
        let processed = self.process();
        self.settle();
        processed
    }

    /// Opens whole records and parses whole frames from what was read.
    fn process(&mut self) -> io::Result<()> {
        let bufs = self.bufs.get_or_insert_default();
        match &mut self.records {
            Some(records) => {
                let mut at = 0;
                while let Some(opened) = records
                    .open(&mut bufs.raw[at..])
                    .map_err(io::Error::other)?
                {
                    match opened {
                        Opened::Data { start, end, used } => {
                            bufs.plain
                                .extend_from_slice(&bufs.raw[at + start..at + end]);
                            at += used;
                        }
                        Opened::Closed { used } => {
                            at += used;
                            self.eof = true;
                            break;
                        }
                    }
                }
                bufs.raw.drain(..at);
            }
            None => {
                if bufs.plain.is_empty() {
                    std::mem::swap(&mut bufs.plain, &mut bufs.raw);
                } else {
                    bufs.plain.append(&mut bufs.raw);
                }
            }
        }
        let mut control = Vec::new();
        let mut failure = None;
        let ready = &mut bufs.ready;
        let used = self
            .h2
            .receive(&bufs.plain, &mut control, &mut |event| match event {
                Event::Data(d) => ready.extend_from_slice(d),
                Event::Reset(_) | Event::GoAway(_) => {
                    failure = Some("the client reset the tunnel stream");
                }
                // Trailers, ping acks and the end of the body need nothing here: the end shows
                // in `remote_ended`.
                Event::Headers { .. } | Event::End | Event::PingAck(_) => {}
            })
            .map_err(io::Error::other)?;
        bufs.plain.drain(..used);
        if !control.is_empty() {
            let mut wire = std::mem::take(&mut bufs.owed);
            self.seal(&control, &mut wire)?;
            self.bufs().owed = wire;
            self.try_flush()?;
            // Answers the client does not take pile up here: a client that floods PINGs or
            // SETTINGS without reading what they are owed ends its leg.
            if self.bufs().owed.len() > MAX_OWED_CONTROL {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client sends PING or SETTINGS frames faster than it reads the answers",
                ));
            }
        }
        if let Some(why) = failure {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, why));
        }
        Ok(())
    }

    /// Writes owed bytes without waiting.
    fn try_flush(&mut self) -> io::Result<()> {
        let Some(bufs) = self.bufs.as_mut() else {
            return Ok(());
        };
        while !bufs.owed.is_empty() {
            match self.tcp.try_write(&bufs.owed) {
                Ok(n) => {
                    self.written += n as u64;
                    bufs.owed.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.settle();
        Ok(())
    }

    /// Writes `wire` (and anything owed before it), waiting as needed.
    async fn send(&mut self, wire: &[u8]) -> io::Result<()> {
        if self.owes() {
            let owed = std::mem::take(&mut self.bufs().owed);
            self.settle();
            self.tcp.write_all(&owed).await?;
            self.written += owed.len() as u64;
        }
        self.tcp.write_all(wire).await?;
        self.written += wire.len() as u64;
        Ok(())
    }

    /// Ends the response body, if it is not ended yet.
    async fn end_down(&mut self) -> io::Result<()> {
        if self.down_ended() {
            return Ok(());
        }
        let mut frames = Vec::new();
        self.h2.end(&mut frames);
        let mut wire = Vec::new();
        self.seal(&frames, &mut wire)?;
        self.send(&wire).await
    }

    /// Tunnel bytes this leg may still carry to the client under its budget.
    fn room(&self) -> usize {
        let Some(budget) = self.budget else {
            return usize::MAX;
        };
        let left = u64::from(budget).saturating_sub(self.written + END_RESERVE);
        let per_record = (h2::FRAME_HEADER_LEN + record::OVERHEAD) as u64;
        // Whole records of payload, then what is left of a last one.
        let full = left / (DATA_PER_RECORD as u64 + per_record);
        let rest = (left % (DATA_PER_RECORD as u64 + per_record)).saturating_sub(per_record);
        usize::try_from(full * DATA_PER_RECORD as u64 + rest).unwrap_or(usize::MAX)
    }
}

fn shrink(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

/// Where the front hands a session the legs that follow its first.
#[derive(Debug)]
pub(crate) struct Attach {
    id: SessionId,
    /// Legs handed over and not yet taken, in order (a burst can bring the next before the
    /// relay has taken the one before).
    queue: Mutex<VecDeque<Box<ServerLeg>>>,
    /// The index the next leg handed over must have.
    next: AtomicU16,
    waker: AtomicWaker,
}

/// Most legs waiting to be taken.
const ATTACH_QUEUE: usize = 2;

impl Attach {
    /// Whether a leg with `index` would be taken now.
    pub(crate) fn expects(&self, index: u16) -> bool {
        self.next.load(Ordering::Acquire) == index
            && self.queue.lock().is_ok_and(|q| q.len() < ATTACH_QUEUE)
    }

    /// Hands over the next leg; gives it back if it is not the one expected.
    pub(crate) fn offer(&self, leg: Box<ServerLeg>) -> Result<(), Box<ServerLeg>> {
        let Ok(mut queue) = self.queue.lock() else {
            return Err(leg);
        };
        if queue.len() >= ATTACH_QUEUE || self.next.load(Ordering::Acquire) != leg.index {
            return Err(leg);
        }
        self.next
            .store(leg.index.wrapping_add(1), Ordering::Release);
        queue.push_back(leg);
        drop(queue);
        self.waker.wake();
        Ok(())
    }

    fn take(&self) -> Option<Box<ServerLeg>> {
        self.queue.lock().ok()?.pop_front()
    }
}

/// The sessions a server has open, by id, so later legs find their session.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<SessionId, Weak<Attach>>>,
}

impl Registry {
    /// The attach point of session `id`, if it is open.
    pub(crate) fn find(&self, id: &SessionId) -> Option<Arc<Attach>> {
        self.sessions.lock().ok()?.get(id)?.upgrade()
    }

    /// Whether `id` is taken.
    pub(crate) fn contains(&self, id: &SessionId) -> bool {
        self.find(id).is_some()
    }

    /// Opens a session on its first leg.
    pub(crate) fn open(self: &Arc<Self>, first: ServerLeg, id: SessionId) -> ServerSession {
        let attach = Arc::new(Attach {
            id,
            queue: Mutex::new(VecDeque::new()),
            next: AtomicU16::new(first.index.wrapping_add(1)),
            waker: AtomicWaker::new(),
        });
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(id, Arc::downgrade(&attach));
        }
        ServerSession {
            registry: Arc::clone(self),
            attach,
            legs: VecDeque::from([first]),
            carried: Vec::new(),
        }
    }

    fn close(&self, id: &SessionId) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(id);
        }
    }
}

/// Most legs a session holds at once (the current one, the next, and ones finishing).
const MAX_LEGS: usize = 4;
/// A leg that has not been written to for this long gives way to a newer leg at the next write.
const SWITCH_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A tunnel session as the relay sees it: one byte stream each way, whatever legs carry it.
#[derive(Debug)]
pub struct ServerSession {
    registry: Arc<Registry>,
    attach: Arc<Attach>,
    /// Legs in order. The relay reads the first whose request body has not ended and writes
    /// the first whose response has not ended; legs done both ways leave from the front.
    /// (Held inline, not boxed: one allocation for an idle session's one leg.)
    legs: VecDeque<ServerLeg>,
    /// Tunnel bytes of legs that left before the relay read them, read first.
    carried: Vec<u8>,
}

impl Drop for ServerSession {
    fn drop(&mut self) {
        self.registry.close(&self.attach.id);
    }
}

impl ServerSession {
    /// Takes an attached leg, if one arrived. Writing moves to it when the current leg is
    /// spent, or at the first write after the current leg has been quiet for [`SWITCH_IDLE`]:
    /// in a burst the current leg is used to its budget while the new one stands ready.
    fn adopt(&mut self) -> io::Result<()> {
        if self.legs.len() < MAX_LEGS
            && let Some(leg) = self.attach.take()
        {
            tracing::debug!(
                index = leg.index,
                legs = self.legs.len() + 1,
                "tunnel leg attached"
            );
            self.legs.push_back(*leg);
        }
        Ok(())
    }

    /// Drops legs at the front that are done both ways, keeping at least one; what the relay
    /// has not read of them yet is carried over.
    fn retire(&mut self) {
        while self.legs.len() > 1
            && self
                .legs
                .front()
                .is_some_and(|old| old.up_ended() && old.down_ended() && !old.owes())
        {
            if let Some(mut bufs) = self.legs.pop_front().and_then(|old| old.bufs) {
                self.carried.append(&mut bufs.ready);
            }
            if self.legs.len() == 1 {
                // Room for four legs was made when the second came; one is kept while idle.
                self.legs.shrink_to_fit();
            }
        }
    }

    /// Writes what legs owe, without waiting.
    fn flush_owed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        for leg in &mut self.legs {
            if leg.owes() && leg.tcp.poll_write_ready(cx).is_ready() {
                leg.try_flush()?;
            }
        }
        Ok(())
    }

    /// Reads what has arrived on legs whose request body has not ended, without waiting, so
    /// that an ended body is seen (and its leg can go) even while the relay only writes. What
    /// arrives is kept for the relay's next read.
    fn pump(&mut self) -> io::Result<()> {
        for leg in &mut self.legs {
            if leg.up_ended() || leg.eof {
                continue;
            }
            match leg.pull() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        self.retire();
        self.adopt()
    }

    /// The leg whose request body the relay reads now.
    fn up_leg(&mut self) -> Option<&mut ServerLeg> {
        self.legs
            .iter_mut()
            .find(|l| !l.up_ended() || l.ready_len() > 0)
    }

    /// Index of the leg the relay writes to now.
    fn down_leg(&self) -> Option<usize> {
        self.legs.iter().position(|l| !l.down_ended())
    }
}

/// Whether the newest leg's connection has closed (its request had ended): reads what the
/// socket has until it would block, ready once it closes.
fn last_leg_closed(last: &mut ServerLeg, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        if last.eof {
            return Poll::Ready(Ok(()));
        }
        match last.tcp.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => match last.pull() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !last.eof {
                        // Readiness was spurious or used up: wait for the next.
                        continue;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            },
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

impl pigeon_transport::ServerStream for ServerSession {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.attach.waker.register(cx.waker());
        if let Err(e) = self.flush_owed(cx) {
            return Poll::Ready(Err(e));
        }
        // Retired first: a leg that arrived while the session was full is taken now, not
        // left waiting for a wake-up that has already come.
        self.retire();
        if let Err(e) = self.adopt() {
            return Poll::Ready(Err(e));
        }
        if !self.carried.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match self.up_leg() {
            Some(leg) if leg.ready_len() > 0 || leg.eof => Poll::Ready(Ok(())),
            Some(leg) => leg.tcp.poll_read_ready(cx),
            // Every request body so far has ended: the next leg's comes once it is here —
            // unless the newest leg's connection has closed. A client opens its next leg
            // before it leaves the last, so then it is gone and the session is over.
            None => match self.legs.back_mut() {
                Some(last) => last_leg_closed(last, cx),
                None => Poll::Pending,
            },
        }
    }

    fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.retire();
        self.adopt()?;
        if !self.carried.is_empty() {
            let n = self.carried.len();
            buf.append(&mut self.carried);
            shrink(&mut self.carried);
            return Ok(n);
        }
        for _ in 0..MAX_LEGS {
            let Some(leg) = self.up_leg() else {
                if self.legs.back().is_some_and(|last| last.eof) {
                    // The last leg's connection closed after its request ended: the client
                    // is gone (see `poll_read_ready`).
                    return Ok(0);
                }
                return Err(io::ErrorKind::WouldBlock.into());
            };
            // What an earlier pump (during a write) left in `ready` is handed on even when the
            // socket has nothing new.
            match leg.pull() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => other?,
            }
            if leg.ready_len() > 0 {
                return hand(leg, buf);
            }
            if leg.up_ended() {
                // Its request body just ended: go on with the next leg's.
                continue;
            }
            if leg.eof {
                tracing::debug!(
                    index = leg.index,
                    "tunnel leg closed before its request ended"
                );
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let mut data = data;
        // Reused chunk to chunk, and gone when the write is done (an idle session keeps none).
        let mut wire = Vec::new();
        while !data.is_empty() {
            self.adopt()?;
            self.pump()?;
            for leg in &mut self.legs {
                if leg.owes() {
                    leg.send(&[]).await?;
                }
            }
            self.retire();
            let Some(at) = self.down_leg() else {
                // Every leg is spent, and the client has not brought the next one yet.
                std::future::poll_fn(|cx| {
                    self.attach.waker.register(cx.waker());
                    // Wake also when an old leg's request body ends: it can then go, making
                    // room for the next.
                    for leg in &mut self.legs {
                        if !leg.up_ended() && !leg.eof {
                            let _ = leg.tcp.poll_read_ready(cx);
                        }
                    }
                    match self.pump() {
                        Err(e) => Poll::Ready(Err(e)),
                        Ok(()) if self.down_leg().is_some() => Poll::Ready(Ok(())),
                        Ok(()) => Poll::Pending,
                    }
                })
                .await?;
                continue;
            };
            let newer = at + 1 < self.legs.len();
            let leg = &mut self.legs[at];
            if newer && leg.last_write.elapsed() >= SWITCH_IDLE {
                tracing::debug!(index = leg.index, "tunnel leg quiet; moving to the next");
                leg.end_down().await?;
                continue;
            }
            let room = leg.room();
            if room < 512.min(data.len()) {
                tracing::debug!(index = leg.index, written = leg.written, "tunnel leg spent");
                leg.end_down().await?;
                continue;
            }
            if leg.h2.send_window() == 0 {
                // Wait for the client to open its window; what it sends meanwhile is kept.
                leg.tcp.readable().await?;
                match leg.pull() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if leg.eof {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                continue;
            }
            let take = data.len().min(room).min(256 * 1024);
            wire.clear();
            let sent = match &mut leg.records {
                // Each frame goes straight into its record: one copy of the data, not two.
                Some(records) => leg
                    .h2
                    .send_data_with(&data[..take], DATA_PER_RECORD, |head, payload| {
                        records.seal_parts(&[head, payload], &mut wire)
                    })
                    .map_err(io::Error::other)?,
                None => leg.h2.send_data(&data[..take], h2::MAX_FRAME, &mut wire),
            };
            leg.send(&wire).await?;
            leg.last_write = std::time::Instant::now();
            data = &data[sent..];
        }
        Ok(())
    }
}

fn hand(leg: &mut ServerLeg, buf: &mut Vec<u8>) -> io::Result<usize> {
    let Some(bufs) = leg.bufs.as_mut().filter(|b| !b.ready.is_empty()) else {
        if leg.eof {
            return Ok(0);
        }
        return Err(io::ErrorKind::WouldBlock.into());
    };
    let n = bufs.ready.len();
    if buf.is_empty() {
        std::mem::swap(buf, &mut bufs.ready);
    } else {
        buf.append(&mut bufs.ready);
    }
    leg.settle();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_transport::ServerStream as _;

    /// A session over one cleartext leg (as behind a reverse proxy), and the client's socket.
    async fn session() -> (ServerSession, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (over(server), client)
    }

    /// A session over one cleartext leg on `tcp`.
    fn over(tcp: TcpStream) -> ServerSession {
        let leg = ServerLeg::new(LegParts {
            index: 0,
            tcp,
            records: None,
            h2: h2::Leg::new(h2::Role::Server, 65_535, 65_535),
            raw: Vec::new(),
            plain: Vec::new(),
            ready: Vec::new(),
            budget: None,
            written: 0,
        });
        Arc::new(Registry::default()).open(leg, [7; 16])
    }

    /// Bytes a write took off the socket (to see window updates) are read next even though the
    /// socket is empty by then. (They were not: the relay's reads saw "would block" forever
    /// while the client waited for an answer to them, and a download stopped after 6 MiB.)
    #[tokio::test]
    async fn bytes_taken_off_the_socket_during_a_write_are_read_next() {
        let (mut session, mut client) = session().await;
        let mut frame = Vec::new();
        h2::write_frame(&mut frame, h2::kind::DATA, 0, h2::STREAM, b"ack 1");
        tokio::io::AsyncWriteExt::write_all(&mut client, &frame)
            .await
            .expect("client writes");
        // What a write does first: it pumps the legs, which takes the frame off the socket.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while session.legs[0].ready_len() == 0 {
                session.legs[0].tcp.readable().await.expect("readable");
                let _ = session.pump();
            }
        })
        .await
        .expect("the frame arrives");
        std::future::poll_fn(|cx| session.poll_read_ready(cx))
            .await
            .expect("ready");
        let mut got = Vec::new();
        let n = session.try_read_buf(&mut got).expect("the pumped bytes");
        assert_eq!((n, got.as_slice()), (5, &b"ack 1"[..]));
        // Nothing more: now it would block.
        let err = session.try_read_buf(&mut got).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Idle, the leg holds no buffer (they were reserved for the read that found nothing).
        assert!(session.legs[0].bufs.is_none(), "an idle leg holds buffers");
    }

    /// A client that floods PING frames and never reads the acknowledgements ends its leg once
    /// 256 KiB of them wait, instead of growing the relay without bound (issue #13).
    #[tokio::test]
    async fn a_ping_flood_that_reads_nothing_ends_the_leg() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        // The client's socket takes little, so what the relay owes piles up on its side.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("buffer");
        let mut client = socket
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut session = over(server);
        let mut pings = Vec::new();
        for _ in 0..4096 {
            h2::write_frame(&mut pings, h2::kind::PING, 0, 0, &[1; 8]);
        }
        // 64 MiB of pings at most (a bounded loop), written while the relay's side pumps.
        let flood = tokio::spawn(async move {
            for _ in 0..1000 {
                if tokio::io::AsyncWriteExt::write_all(&mut client, &pings)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            client
        });
        let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                session.legs[0].tcp.readable().await.expect("readable");
                if let Err(e) = session.pump() {
                    return e;
                }
            }
        })
        .await
        .expect("the leg ends within 20 s");
        assert_eq!(ended.kind(), io::ErrorKind::ConnectionAborted, "{ended}");
        flood.abort();
    }
}
