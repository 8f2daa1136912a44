//! The client: Chrome's TLS and HTTP/2, a tunnel inside a streaming `POST`, and legs that follow
//! one another under a per-connection download cap.
//!
//! [`Dialer::dial`] opens the first leg (TCP, TLS as Chrome, HTTP/2 as Chrome, the request with a
//! fresh token) and, once the server has answered it, hands back a byte stream. A task per
//! session then carries the stream over legs:
//!
//! * **Rotation.** When the route has a download cap (`rotate=16k`, or one learned), each leg
//!   gets a budget below it, drawn with jitter (55–80 % of the cap, less the handshake it already
//!   received), written into its token. Once a leg has received 45 % of its share, the next leg
//!   is opened; when its response arrives, the request body moves there, and the server moves
//!   the response there (it ends the old one). Downstream bytes are delivered leg by leg in order.
//! * **Learning.** With `rotate=auto` and no cap known yet, a leg that goes silent while an
//!   answer is owed (3 s, then a PING, then 3 s more) is taken for frozen: the bytes it received
//!   become the cap for that route, and the session ends (the caller reconnects, and the relay
//!   redelivers what was not acknowledged).
//! * **Shaping.** The first client records of a leg are kept under 411 bytes (the request
//!   headers excepted, as a browser's are), so the TLS-in-TLS heuristic (several large client
//!   records, then a burst from the server) does not see a tunnel's handshake in them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::StreamExt as _;
use pigeon_transport::{Connection, Host, Rotate, Route, TlsParams, Transport};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::chrome::{self, ChromeTls, Target};
use crate::error::TlsError;
use crate::h2::{self, Event, Priority, Role};
use crate::record;
use crate::token::{self, SessionId, TokenKey};

/// Chrome 156 on Linux, as Debian ships it.
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
Chrome/156.0.0.0 Safari/537.36";
const SEC_CH_UA: &str = "\"Not:A-Brand\";v=\"8\", \"Chromium\";v=\"156\"";
/// How long a leg may stay silent while an answer is owed before it is pinged, and again
/// before it is taken for frozen (bytes that stop inside a TLS record are owed too, which is
/// how a freeze shows).
const STALL: Duration = Duration::from_secs(3);
/// A leg idle this long is pinged, so that a freeze that hit it while idle is found.
const KEEPALIVE: Duration = Duration::from_secs(25);
/// How often a leg looks whether TLS is waiting for the rest of a record.
const CHECK: Duration = Duration::from_secs(1);
/// Records kept under the TLS-in-TLS heuristic's size at the start of each leg.
const SHAPED_RECORDS: u32 = 12;
/// Largest record while shaping: below the 411 bytes the heuristic counts.
const SHAPED_RECORD: usize = 380;
/// Largest DATA frame: with its header it fills one 16 KiB record, as Chrome's do.
const DATA_FRAME: usize = 16_375;
/// Fewest bytes a stalled leg must have received for the stall to count as a freeze.
const MIN_LEARNED: u64 = 4096;
/// A stream chunk handed between tasks.
const CHUNK: usize = 64 * 1024;

/// The `tls` transport's dialer: Chrome's TLS and HTTP/2, the tunnel, rotation under learned
/// download caps. Register it with [`pigeon_transport::Transports::with`].
#[derive(Clone, Debug)]
pub struct Dialer {
    tls: ChromeTls,
    /// Download caps learned per route (route text → bytes).
    learned: Arc<Mutex<BTreeMap<String, u32>>>,
    /// The highest leg number a session may use (all of `u16` but in tests).
    last_leg: u16,
    /// Legs whose records moved out of TLS (see [`LegIo`]).
    own_records: Arc<AtomicU64>,
}

impl Dialer {
    /// A dialer with Chrome's TLS settings and nothing learned.
    ///
    /// # Errors
    /// [`TlsError::Setup`] if BoringSSL refuses Chrome's settings.
    pub fn new() -> Result<Self, TlsError> {
        Ok(Self {
            tls: ChromeTls::new()?,
            learned: Arc::default(),
            last_leg: u16::MAX,
            own_records: Arc::default(),
        })
    }

    /// A dialer whose sessions end after leg `last`, to reach that end in a test.
    #[cfg(test)]
    fn with_last_leg(mut self, last: u16) -> Self {
        self.last_leg = last;
        self
    }

    /// How many legs of this dialer's sessions so far moved their records out of TLS once
    /// the server answered (each then holds keys and sequence numbers instead of BoringSSL's
    /// connection state).
    pub fn legs_on_own_records(&self) -> u64 {
        self.own_records.load(Ordering::Relaxed)
    }

    /// The download caps learned so far, by route, to keep across runs.
    pub fn learned(&self) -> BTreeMap<String, u32> {
        self.learned.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Remembers a download cap for `route` (from an earlier run).
    pub fn learn(&self, route: &str, cap: u32) {
        if let Ok(mut learned) = self.learned.lock() {
            learned.insert(route.to_owned(), cap.max(pigeon_transport::MIN_ROTATE));
        }
    }

    /// Opens a tunnel over the `tls` route `route`, giving up after `timeout`.
    ///
    /// # Errors
    /// A [`TlsError`] saying what failed ([`TlsError::Route`] for a route of another
    /// transport); [`TlsError::kind`] sorts it.
    pub async fn dial(
        &self,
        route: &Route,
        timeout: Duration,
    ) -> Result<Box<dyn Connection>, TlsError> {
        if *route.transport() != Transport::Tls {
            return Err(route_error(route, "not a tls route"));
        }
        let params = route
            .tls_params()
            .ok_or_else(|| route_error(route, "not a tls route"))?
            .map_err(|e| route_error(route, &e.to_string()))?;
        let stream = tokio::time::timeout(timeout, self.dial_tls(route, params))
            .await
            .map_err(|_| TlsError::Timeout {
                route: route.redacted(),
                after: timeout,
            })??;
        Ok(Box::new(stream))
    }

    async fn dial_tls(&self, route: &Route, params: TlsParams) -> Result<TunnelStream, TlsError> {
        let name = route.to_string();
        let cap = match params.rotate() {
            Rotate::Off => None,
            Rotate::Cap(cap) => Some(cap),
            Rotate::Auto => self.learned.lock().ok().and_then(|l| l.get(&name).copied()),
        };
        let ctx = Arc::new(SessionCtx {
            tls: self.tls.clone(),
            learned: Arc::clone(&self.learned),
            own_records: Arc::clone(&self.own_records),
            host: route.host().clone(),
            port: route.port(),
            redacted: route.redacted(),
            name,
            target: target(route, &params),
            authority: authority(route, &params),
            key: TokenKey::new(*params.key()),
            path: params.path().to_owned(),
            session: random(),
            cap,
            learn: params.rotate() == Rotate::Auto,
            last_leg: self.last_leg,
        });
        let (events_tx, events) = mpsc::channel(64);
        let first = open_leg(&ctx, 0, events_tx.clone()).await?;
        // The tunnel's first bytes follow the request at once, as a browser's streaming upload
        // does: a reverse proxy may hold the response headers until the response has data,
        // which here comes only after the client's first bytes.
        let (user, ours) = tokio::io::duplex(4 * CHUNK);
        let failure = Arc::new(Mutex::new(None));
        tokio::spawn(run_session(
            ctx,
            first,
            events_tx,
            events,
            ours,
            Arc::clone(&failure),
        ));
        Ok(TunnelStream {
            inner: user,
            failure,
        })
    }
}

impl pigeon_transport::Dial for Dialer {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn dial<'a>(
        &'a self,
        route: &'a Route,
        timeout: Duration,
    ) -> pigeon_transport::BoxFuture<'a, Result<Box<dyn Connection>, pigeon_transport::DialError>>
    {
        Box::pin(async move {
            Dialer::dial(self, route, timeout)
                .await
                .map_err(|e| pigeon_transport::DialError::new(e.kind(), e))
        })
    }

    fn learned(&self) -> BTreeMap<String, u32> {
        Dialer::learned(self)
    }

    fn learn(&self, route: &str, cap: u32) {
        Dialer::learn(self, route, cap);
    }
}

/// The caller's end of a tunnel session. When the session ends because a leg failed, reading
/// reports why (a refused request, a frozen connection) instead of a bare end of stream.
pub(crate) struct TunnelStream {
    inner: tokio::io::DuplexStream,
    failure: Arc<Mutex<Option<String>>>,
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                match this.failure.lock().ok().and_then(|f| f.clone()) {
                    Some(why) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)))
                    }
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn route_error(route: &Route, problem: &str) -> TlsError {
    TlsError::Route {
        route: route.redacted(),
        problem: problem.to_owned(),
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS random source does not fail on the platforms this runs on; if it ever did, an
    // all-zero nonce or session id is still unique enough for one run and reveals nothing.
    let _ = getrandom::fill(&mut out);
    out
}

fn target(route: &Route, params: &TlsParams) -> Target {
    let sni = params.sni().map(|n| n.as_str().to_owned());
    let ech = match (&sni, params.ech()) {
        (Some(name), true) => Some(crate::ech::EchConfig::derive(
            &TokenKey::new(*params.key()),
            name,
        )),
        _ => None,
    };
    Target {
        sni,
        pin: params.pin().copied(),
        cache_key: format!("{}:{}", route.host(), route.port()),
        ech,
    }
}

/// The name `connect` is given: with ECH, a fresh proof for the inner hello; otherwise the
/// SNI, or the host.
fn connect_name(ctx: &SessionCtx) -> String {
    match (&ctx.target.ech, &ctx.target.sni) {
        (Some(_), _) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let pad = random::<{ crate::ech::MAX_PAD }>();
            let pad_len = crate::ech::pad_len(random());
            crate::ech::inner_name(&ctx.key, now, random(), &pad[..pad_len])
        }
        (None, Some(sni)) => sni.clone(),
        (None, None) => ctx.host.to_string(),
    }
}

/// `:authority` as Chrome writes it: the name (or address) and the port unless it is 443.
fn authority(route: &Route, params: &TlsParams) -> String {
    let host = match (params.sni(), route.host()) {
        (Some(sni), _) => sni.as_str().to_owned(),
        (None, Host::Ipv6(ip)) => format!("[{ip}]"),
        (None, host) => host.to_string(),
    };
    if route.port() == 443 {
        host
    } else {
        format!("{host}:{}", route.port())
    }
}

/// What every leg of a session shares.
struct SessionCtx {
    tls: ChromeTls,
    learned: Arc<Mutex<BTreeMap<String, u32>>>,
    own_records: Arc<AtomicU64>,
    /// Where the legs connect: the route's host and port (a session keeps no copy of the
    /// whole route, whose parameters are a map of strings)…
    host: pigeon_transport::Host,
    port: u16,
    /// …and the route as errors name it.
    redacted: String,
    name: String,
    target: Target,
    authority: String,
    key: TokenKey,
    path: String,
    session: SessionId,
    /// The download cap in force for this session, if any.
    cap: Option<u32>,
    /// Whether a stall teaches this route a cap.
    learn: bool,
    /// The highest leg number the session may use.
    last_leg: u16,
}

/// Counts the bytes read from a socket — what a censor counts toward a freeze — and follows
/// the TLS record boundaries in them: a stream that stops in the middle of a record owes more
/// bytes, which is how a freeze shows even when nothing was asked.
///
/// It also reads ahead: BoringSSL asks for a record's 5-byte header and then for its body, two
/// reads per record, and on a busy leg most of those would be a system call each. One read of
/// up to [`READ_AHEAD`] bytes serves several records instead.
struct Counting<S> {
    /// The socket; taken when the leg's records move out of TLS ([`LegIo::go_lean`]).
    inner: Option<S>,
    meter: Meter,
    /// Bytes read from the socket and not yet handed to TLS: `ahead[start..end]`. Allocated
    /// when a read needs it, given back after a small read was all handed on.
    ahead: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Most bytes read from a leg's socket at once.
const READ_AHEAD: usize = 64 * 1024;
/// Room a quiet leg takes for the next decrypted read once its socket has bytes (an idle leg
/// holds none)…
const LEG_ROOM_QUIET: usize = 4 * 1024;
/// …and a busy one.
const LEG_ROOM_BUSY: usize = 32 * 1024;
/// Smallest buffer a session reads its caller's bytes into (it grows to [`CHUNK`] while the
/// caller writes fast, and shrinks back when it does not).
const UP_QUIET: usize = 256;
/// Room a leg on its own records reads into beyond the record under way: a little while
/// quiet…
const LEAN_ROOM_QUIET: usize = 512;
/// …and several records' worth once reads fill it.
const LEAN_ROOM_BUSY: usize = 64 * 1024;
/// How long to wait before trying again to open a leg that could not be opened.
const LEG_RETRY: Duration = Duration::from_millis(100);

/// What [`Counting`] knows of the bytes that came off the socket.
struct Meter {
    received: Arc<AtomicU64>,
    records: RecordTracker,
    mid_record: Arc<std::sync::atomic::AtomicBool>,
}

impl Meter {
    /// Notes bytes that came off the socket.
    fn count(&mut self, got: &[u8]) {
        self.received.fetch_add(got.len() as u64, Ordering::Relaxed);
        self.records.feed(got);
        self.mid_record
            .store(self.records.mid_record(), Ordering::Relaxed);
    }
}

impl<S> Counting<S> {
    fn new(
        inner: S,
        received: Arc<AtomicU64>,
        mid_record: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self {
            inner: Some(inner),
            meter: Meter {
                received,
                records: RecordTracker::default(),
                mid_record,
            },
            ahead: Box::default(),
            start: 0,
            end: 0,
        }
    }

    /// Hands what was read ahead to `buf`; whether there was any.
    fn hand(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.start == self.end {
            return false;
        }
        let n = buf.remaining().min(self.end - self.start);
        buf.put_slice(&self.ahead[self.start..self.start + n]);
        self.start += n;
        true
    }
}

/// Where in the TLS record stream the bytes read so far end.
#[derive(Default)]
struct RecordTracker {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl RecordTracker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
    }

    fn mid_record(&self) -> bool {
        self.body_left > 0 || self.header_len > 0
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.hand(buf) {
            return Poll::Ready(Ok(()));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(socket_taken()));
        };
        if buf.remaining() >= READ_AHEAD {
            // Large enough to read into directly.
            let before = buf.filled().len();
            let poll = Pin::new(inner).poll_read(cx, buf);
            this.meter.count(&buf.filled()[before..]);
            return poll;
        }
        if this.ahead.is_empty() {
            this.ahead = vec![0; READ_AHEAD].into_boxed_slice();
        }
        let mut ahead = ReadBuf::new(&mut this.ahead);
        match Pin::new(inner).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                (this.start, this.end) = (0, n);
                this.meter.count(&this.ahead[..n]);
                // Nothing read is the end of the stream, and hands nothing on.
                this.hand(buf);
                // A quiet leg (a small read, all of it handed on) gives the buffer back: most
                // legs a proxy or an idle client holds are quiet.
                if this.start == this.end && n < READ_AHEAD / 16 {
                    this.ahead = Box::default();
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(socket_taken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(socket_taken())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Err(socket_taken())),
        }
    }
}

fn socket_taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the leg's socket moved on")
}

type Tls = tokio_boring::SslStream<Counting<TcpStream>>;

/// A leg's connection: BoringSSL's until the server has answered the leg's request, then the
/// leg's own record protection ([`crate::record`], with the keys BoringSSL's key log gave),
/// as the front's legs do. BoringSSL's connection state (the session with the server's
/// certificate parsed, the handshake configuration, two AEAD contexts: about 7 KB) is then
/// freed; an idle leg keeps two keys, two IVs and two sequence numbers.
///
/// On the wire nothing changes: one record per write, as BoringSSL writes them, without
/// padding. What the leg's own records do not take after the switch is a post-handshake
/// handshake message (a late session ticket, a KeyUpdate): the leg then fails, and the session
/// goes on over its next leg, or reconnects. Servers send their tickets with the handshake's
/// last flight, before the response the switch waits for; the front sends no KeyUpdate.
#[allow(clippy::large_enum_variant)] // A leg spends its life `Lean`: boxing it would only add an allocation.
enum LegIo {
    Tls(Tls),
    Lean(Lean),
}

impl LegIo {
    /// The socket, to wait on without reading.
    fn socket(&self) -> io::Result<&TcpStream> {
        match self {
            Self::Tls(tls) => tls.get_ref().inner.as_ref().ok_or_else(socket_taken),
            Self::Lean(lean) => Ok(&lean.tcp),
        }
    }

    /// Whether bytes wait to be worked on without the socket (see [`leg_has_pending`]).
    fn has_pending(&self) -> bool {
        match self {
            Self::Tls(tls) => leg_has_pending(tls),
            Self::Lean(lean) => !lean.inbuf.is_empty(),
        }
    }

    /// Moves the leg's records out of BoringSSL, if it is between records with nothing held:
    /// nothing read and not yet handed out, no record half read. Whether it moved now.
    fn go_lean(&mut self, tls: &ChromeTls) -> bool {
        let Self::Tls(stream) = self else {
            return false;
        };
        if leg_has_pending(stream) || stream.get_ref().meter.records.mid_record() {
            return false;
        }
        let Some(records) = tls.take_records(stream.ssl()) else {
            return false;
        };
        let counting = stream.get_mut();
        let Some(tcp) = counting.inner.take() else {
            return false;
        };
        // Nothing was read ahead (checked above): the read-ahead buffer holds no bytes.
        let meter = Meter {
            received: Arc::clone(&counting.meter.received),
            records: std::mem::take(&mut counting.meter.records),
            mid_record: Arc::clone(&counting.meter.mid_record),
        };
        *self = Self::Lean(Lean {
            tcp,
            meter,
            records,
            inbuf: Vec::new(),
            head: 0,
            plain: 0..0,
            opened: 0,
            closed: false,
            busy: false,
            out: Vec::new(),
            out_at: 0,
        });
        true
    }
}

/// A leg's TLS records after the handshake, protected by the leg itself.
struct Lean {
    tcp: TcpStream,
    /// Counts what comes off the socket, and where the records it carries end.
    meter: Meter,
    records: record::Records,
    /// Bytes off the socket (several records, when they came in one read), the next record from
    /// `head` on; empty, with no allocation, once all are handed out. Records are opened where
    /// they lie; the buffer is compacted only before the next socket read.
    inbuf: Vec<u8>,
    head: usize,
    /// Plaintext of the record opened in place at the start of `inbuf`, not yet handed out…
    plain: std::ops::Range<usize>,
    /// …and that record's length in `inbuf`.
    opened: usize,
    /// The server sent close_notify.
    closed: bool,
    /// The last read filled its room: read in larger pieces.
    busy: bool,
    /// A sealed record not yet all written: `out[out_at..]`.
    out: Vec<u8>,
    out_at: usize,
}

impl Lean {
    /// The record at `head` (`used` bytes) is done with.
    fn consume(&mut self, used: usize) {
        self.head += used;
        self.opened = 0;
        if self.head >= self.inbuf.len() {
            self.inbuf = Vec::new();
            self.head = 0;
        }
    }

    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_at..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.out_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Lean {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.inbuf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                if this.plain.is_empty() {
                    this.consume(this.opened);
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            let head = this.head;
            match this.records.open(&mut this.inbuf[head..]) {
                Ok(Some(record::Opened::Data { start, end, used })) => {
                    if start == end {
                        this.consume(used);
                    } else {
                        this.plain = head + start..head + end;
                        this.opened = used;
                    }
                    continue;
                }
                Ok(Some(record::Opened::Closed { .. })) => {
                    this.closed = true;
                    this.inbuf = Vec::new();
                    this.head = 0;
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
            if this.head > 0 {
                this.inbuf.drain(..this.head);
                this.head = 0;
            }
            // Read at least to the end of the record under way, and what else has come (a
            // quiet leg's next record is most often small: a little room first).
            let want = if this.inbuf.len() < record::HEADER_LEN {
                record::HEADER_LEN - this.inbuf.len()
            } else {
                let len = usize::from(u16::from_be_bytes([this.inbuf[3], this.inbuf[4]]));
                (record::HEADER_LEN + len).saturating_sub(this.inbuf.len())
            };
            let room = want.max(if this.busy {
                LEAN_ROOM_BUSY
            } else {
                LEAN_ROOM_QUIET
            });
            let at = this.inbuf.len();
            this.inbuf.resize(at + room, 0);
            let mut space = ReadBuf::new(&mut this.inbuf[at..]);
            let poll = Pin::new(&mut this.tcp).poll_read(cx, &mut space);
            let got = space.filled().len();
            this.meter.count(&this.inbuf[at..at + got]);
            this.busy = got == room;
            this.inbuf.truncate(at + got);
            match poll {
                Poll::Ready(Ok(())) if got == 0 => {
                    if this.inbuf.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.inbuf.is_empty() {
                        this.inbuf = Vec::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for Lean {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_out(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(record::MAX_PLAINTEXT);
        this.records
            .seal(&buf[..n], &mut this.out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Written now if the socket takes it; otherwise by the next write or flush (the leg
        // flushes at the end of every turn).
        if let Poll::Ready(Err(e)) = this.poll_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for LegIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
            Self::Lean(lean) => Pin::new(lean).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LegIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
            Self::Lean(lean) => Pin::new(lean).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls).poll_flush(cx),
            Self::Lean(lean) => Pin::new(lean).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
            Self::Lean(lean) => Pin::new(lean).poll_shutdown(cx),
        }
    }
}

/// What the session tells a leg.
enum LegCmd {
    /// Tunnel bytes to send.
    Write(Bytes),
    /// End the request body: the next leg carries what follows.
    EndUp,
}

/// What a leg tells the session.
enum LegEvent {
    /// The server answered the request: the leg carries the tunnel.
    Ready(u16),
    /// Tunnel bytes from the server.
    Data(u16, Bytes),
    /// The server ended the response on this leg.
    DownEnded(u16),
    /// The leg failed.
    /// (Boxed: the session's channel of events keeps a block of slots the size of the largest
    /// event for as long as it lives.)
    Failed(u16, Box<TlsError>),
}

/// A leg as the session sees it.
struct LegHandle {
    cmd: mpsc::Sender<LegCmd>,
    received: Arc<AtomicU64>,
    /// Its share of the cap, in TCP bytes received (handshake included).
    share: Option<u64>,
    ready: bool,
    /// The leg's task; aborted when the handle is dropped, unless the leg was retired.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LegHandle {
    /// Lets a leg that has done its part finish on its own: it ends its request body (if the
    /// session has not yet) and closes once the server has ended its response.
    fn retire(mut self) {
        self.task = None;
    }
}

impl Drop for LegHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Opens leg `index`: TCP, TLS, the HTTP/2 preface and the request. Its task then reports on
/// `events`.
async fn open_leg(
    ctx: &Arc<SessionCtx>,
    index: u16,
    events: mpsc::Sender<LegEvent>,
) -> Result<LegHandle, TlsError> {
    let tcp = pigeon_transport::tcp::connect(&ctx.host, ctx.port, Duration::from_secs(30)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let mid_record = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counting = Counting::new(tcp, Arc::clone(&received), Arc::clone(&mid_record));
    let config = ctx.tls.configure(&ctx.target)?;
    let domain = connect_name(ctx);
    let mut stream = tokio_boring::connect(config, &domain, counting)
        .await
        .map_err(|e| handshake_error(&ctx.redacted, &e))?;
    if ctx.target.ech.is_none() {
        // (With ECH, a resumed session's ticket would lengthen the inner hello past GREASE's
        // lengths: ECH connections always make a full handshake, as a first visit does.)
        ctx.tls.remember(&ctx.target.cache_key, stream.ssl());
    }
    if stream.ssl().selected_alpn_protocol() != Some(b"h2".as_slice()) {
        return Err(TlsError::NotHttp2 {
            route: ctx.redacted.clone(),
        });
    }
    let handshake = received.load(Ordering::Relaxed);
    let (share, budget) = match ctx.cap {
        Some(cap) => {
            // 55–80 % of the cap for this connection, drawn anew for each.
            let jitter = 55 + u64::from(random::<1>()[0]) * 25 / 255;
            let share = u64::from(cap) * jitter / 100;
            let budget = share.saturating_sub(handshake) * 9 / 10;
            (
                Some(share),
                Some(u32::try_from(budget.max(1024)).unwrap_or(u32::MAX)),
            )
        }
        None => (None, None),
    };
    let leg = token::Leg {
        session: ctx.session,
        index,
        budget,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = token::mint(&ctx.key, &ctx.path, &leg, now, random());
    tracing::debug!(
        index,
        handshake,
        ?budget,
        "tunnel leg: TLS done, request sent"
    );
    // Chrome writes the preface, its SETTINGS and its WINDOW_UPDATE as one record, and the
    // request's HEADERS as the next.
    let mut opening = h2::PREFACE.to_vec();
    h2::write_settings(&mut opening, &chrome::H2_SETTINGS);
    h2::write_window_update(&mut opening, 0, chrome::H2_CONNECTION_WINDOW - 65_535);
    stream.write_all(&opening).await?;
    let path = format!("{}/{token}", ctx.path);
    let origin = format!("https://{}", ctx.authority);
    let referer = format!("https://{}/", ctx.authority);
    let mut encoder = loona_hpack::Encoder::new();
    let block = h2::encode_headers(
        &mut encoder,
        &[
            (":method", "POST"),
            (":authority", &ctx.authority),
            (":scheme", "https"),
            (":path", &path),
            ("sec-ch-ua-platform", "\"Linux\""),
            ("user-agent", USER_AGENT),
            ("sec-ch-ua", SEC_CH_UA),
            ("content-type", "application/octet-stream"),
            ("sec-ch-ua-mobile", "?0"),
            ("accept", "*/*"),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
            ("referer", &referer),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("accept-language", "en-US,en;q=0.9"),
            ("priority", "u=1, i"),
        ],
    );
    let mut headers = Vec::new();
    h2::write_headers(
        &mut headers,
        h2::STREAM,
        &block,
        Some(Priority {
            exclusive: true,
            depends_on: 0,
            weight: 220,
        }),
        false,
    );
    stream.write_all(&headers).await?;
    let (cmd, cmd_rx) = mpsc::channel(64);
    let task = tokio::spawn(run_leg(
        Arc::clone(ctx),
        index,
        stream,
        (Arc::clone(&received), mid_record),
        cmd_rx,
        events,
    ));
    Ok(LegHandle {
        cmd,
        received,
        share,
        ready: false,
        task: Some(task),
    })
}

fn handshake_error(route: &str, e: &tokio_boring::HandshakeError<Counting<TcpStream>>) -> TlsError {
    let verify = e
        .ssl()
        .map(|ssl| ssl.verify_result())
        .filter(Result::is_err);
    if verify.is_some() || e.to_string().contains("CERTIFICATE_VERIFY_FAILED") {
        return TlsError::Certificate {
            route: route.to_owned(),
        };
    }
    TlsError::Handshake {
        route: route.to_owned(),
        detail: e.to_string(),
    }
}

/// One leg's task: reads the server's frames and writes the session's bytes.
async fn run_leg(
    ctx: Arc<SessionCtx>,
    index: u16,
    stream: Tls,
    (received, mid_record): (Arc<AtomicU64>, Arc<std::sync::atomic::AtomicBool>),
    mut cmds: mpsc::Receiver<LegCmd>,
    mut events: mpsc::Sender<LegEvent>,
) {
    let mut leg = LegState {
        h2: h2::Leg::new(
            Role::Client,
            chrome::H2_SETTINGS[2].1,
            chrome::H2_CONNECTION_WINDOW,
        ),
        decoder: h2::decoder(),
        pending: VecDeque::new(),
        pending_len: 0,
        end_up: false,
        records: 0,
        owed_since: None,
        pinged: false,
        last_activity: Instant::now(),
        mid_record,
        answered: false,
    };
    let mut stream = LegIo::Tls(stream);
    let result = leg
        .run(&ctx, index, &mut stream, &mut cmds, &mut events)
        .await;
    if let Err(e) = result {
        let e = match e {
            LegEnd::Stalled => {
                let got = received.load(Ordering::Relaxed);
                if ctx.learn && got >= MIN_LEARNED {
                    let cap = u32::try_from(got).unwrap_or(u32::MAX);
                    if let Ok(mut learned) = ctx.learned.lock() {
                        let entry = learned.entry(ctx.name.clone()).or_insert(cap);
                        *entry = next_cap(*entry, cap, ctx.cap.is_some());
                    }
                    tracing::info!(
                        bytes = got,
                        "a connection froze; keeping later connections under that"
                    );
                }
                TlsError::Stalled {
                    route: ctx.redacted.clone(),
                    received: got,
                }
            }
            LegEnd::Error(e) => e,
        };
        let _ = send(&mut events, LegEvent::Failed(index, Box::new(e))).await;
    }
}

/// The cap to keep for a route after a leg froze having received `got` bytes, from the one
/// kept before (`kept`). A leg that ran without a cap tells the threshold: what it received.
/// A leg already kept under a cap that froze anyway was most often cut by bytes the censor
/// counted twice (TCP retransmissions after loss), which it received only once: lowering the
/// cap to what it received would ratchet it down on every loss, to a handshake every few KB
/// for good. Such a freeze lowers the cap by a tenth at most.
fn next_cap(kept: u32, got: u32, was_capped: bool) -> u32 {
    let next = if was_capped {
        kept.min(got).max(kept - kept / 10)
    } else {
        kept.min(got)
    };
    next.max(pigeon_transport::MIN_ROTATE)
}

enum LegEnd {
    Stalled,
    Error(TlsError),
}

impl From<TlsError> for LegEnd {
    fn from(e: TlsError) -> Self {
        Self::Error(e)
    }
}

impl From<io::Error> for LegEnd {
    fn from(e: io::Error) -> Self {
        Self::Error(TlsError::Io(e))
    }
}

struct LegState {
    h2: h2::Leg,
    decoder: loona_hpack::Decoder<'static>,
    /// Bytes from the session waiting for the window.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    end_up: bool,
    /// Records written since the request headers.
    records: u32,
    /// Since when an answer is owed (we wrote, nothing came back yet).
    owed_since: Option<Instant>,
    pinged: bool,
    last_activity: Instant,
    /// The socket's bytes end inside a TLS record: more are owed.
    mid_record: Arc<std::sync::atomic::AtomicBool>,
    /// The server answered the leg's request (its session tickets, sent with the handshake's
    /// last flight, came before): the leg's records may move out of TLS.
    answered: bool,
}

impl LegState {
    async fn run(
        &mut self,
        ctx: &SessionCtx,
        index: u16,
        stream: &mut LegIo,
        cmds: &mut mpsc::Receiver<LegCmd>,
        events: &mut mpsc::Sender<LegEvent>,
    ) -> Result<(), LegEnd> {
        let mut rbuf = BytesMut::new();
        let mut inbuf: Vec<u8> = Vec::new();
        let mut cmds_open = true;
        // Room for the next read: 4 KiB on a quiet leg, 32 KiB once reads fill that; taken
        // only once there is something to read.
        let mut room = LEG_ROOM_QUIET;
        loop {
            if rbuf.is_empty() {
                // What is left of the last read's allocation would keep all of it alive.
                rbuf = BytesMut::new();
            }
            let deadline = self.deadline();
            let take_cmds = cmds_open && self.pending_len < 4 * CHUNK;
            let read = async {
                if !stream.has_pending() {
                    // Waits until a byte is there (or the end): readiness alone would still
                    // be set after the last read that emptied the socket.
                    stream.socket()?.peek(&mut [0u8; 1]).await?;
                }
                if rbuf.capacity() - rbuf.len() < room {
                    rbuf.reserve(room);
                }
                stream.read_buf(&mut rbuf).await
            };
            tokio::select! {
                read = read => {
                    let n = read?;
                    if n == 0 {
                        if self.h2.remote_ended() && self.h2.local_ended() {
                            return Ok(());
                        }
                        return Err(LegEnd::Error(TlsError::Io(io::ErrorKind::UnexpectedEof.into())));
                    }
                    room = if n >= LEG_ROOM_QUIET { LEG_ROOM_BUSY } else { LEG_ROOM_QUIET };
                    let now = Instant::now();
                    self.pinged = false;
                    self.last_activity = now;
                    // Bytes came; whether more are owed depends on where they stopped.
                    self.owed_since = self.mid_record.load(Ordering::Relaxed).then_some(now);
                    // Frames are parsed straight from what was read, and their payloads handed on
                    // as slices of it; only a frame cut short waits in `inbuf` for the rest.
                    let chunk = rbuf.split().freeze();
                    let from_buf = inbuf.is_empty();
                    if !from_buf {
                        inbuf.extend_from_slice(&chunk);
                    }
                    let src = if from_buf { &chunk[..] } else { &inbuf[..] };
                    let mut control = Vec::new();
                    let mut out_events = Vec::new();
                    let used = self.h2.receive(src, &mut control, &mut |e| match e {
                        Event::Data(d) => out_events.push(Ok(LegEvent::Data(
                            index,
                            if from_buf { share(&chunk, d) } else { Bytes::copy_from_slice(d) },
                        ))),
                        Event::Headers { block, .. } => out_events.push(Err(block)),
                        Event::End => out_events.push(Ok(LegEvent::DownEnded(index))),
                        Event::Reset(_) | Event::GoAway(_) => out_events.push(Ok(LegEvent::Failed(index, Box::new(TlsError::Io(io::ErrorKind::ConnectionReset.into()))))),
                        Event::PingAck(_) => {}
                    }).map_err(TlsError::from)?;
                    if from_buf {
                        inbuf.extend_from_slice(&chunk[used..]);
                    } else {
                        inbuf.drain(..used);
                    }
                    if !inbuf.is_empty() && self.owed_since.is_none() {
                        // A frame cut short: the rest is owed.
                        self.owed_since = Some(now);
                    }
                    if !control.is_empty() {
                        stream.write_all(&control).await?;
                    }
                    for event in out_events {
                        let event = match event {
                            Ok(event) => event,
                            Err(block) => self.response(ctx, index, &block)?,
                        };
                        let failed = matches!(event, LegEvent::Failed(..));
                        if send(events, event).await.is_err() || failed {
                            return Ok(());
                        }
                    }
                }
                cmd = cmds.next(), if take_cmds => match cmd {
                    Some(LegCmd::Write(bytes)) => {
                        self.pending_len += bytes.len();
                        self.pending.push_back(bytes);
                    }
                    Some(LegCmd::EndUp) => self.end_up = true,
                    None => {
                        // Retired, or the session ended: end the request body and close once
                        // the response has ended too.
                        cmds_open = false;
                        self.end_up = true;
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if self.owed_since.is_none() && self.mid_record.load(Ordering::Relaxed) {
                        // TLS has bytes of a record it cannot finish: the rest is owed.
                        self.owed_since = Some(now - CHECK);
                    }
                    if let Some(since) = self.owed_since {
                        if now >= since + 2 * STALL {
                            return Err(LegEnd::Stalled);
                        }
                        if now >= since + STALL && !self.pinged {
                            self.pinged = true;
                            let mut ping = Vec::new();
                            h2::Leg::ping(&mut ping, random());
                            stream.write_all(&ping).await?;
                        }
                    } else if now >= self.last_activity + KEEPALIVE {
                        let mut ping = Vec::new();
                        h2::Leg::ping(&mut ping, random());
                        stream.write_all(&ping).await?;
                        self.owed_since = Some(now);
                        self.pinged = true;
                        self.last_activity = now;
                    }
                }
            }
            self.flush(stream).await?;
            if !cmds_open && self.pending.is_empty() && self.h2.remote_ended() {
                return Ok(());
            }
            if self.answered && stream.go_lean(&ctx.tls) {
                ctx.own_records.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(index, "tunnel leg: records now protected by the leg itself");
            }
        }
    }

    fn deadline(&self) -> Instant {
        match self.owed_since {
            Some(since) if self.pinged => since + 2 * STALL,
            Some(since) => since + STALL,
            // Looked at again within a second: a record TLS is still waiting for counts as
            // owed bytes.
            None => (self.last_activity + KEEPALIVE).min(Instant::now() + CHECK),
        }
    }

    /// The response to the leg's request: 200 opens the tunnel, 1xx is passed over, any other
    /// status is a refusal.
    fn response(&mut self, ctx: &SessionCtx, index: u16, block: &[u8]) -> Result<LegEvent, LegEnd> {
        let headers = h2::decode_headers(&mut self.decoder, block).map_err(TlsError::from)?;
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| v.parse::<u16>().ok());
        match status {
            Some(200) => {
                self.answered = true;
                Ok(LegEvent::Ready(index))
            }
            // Trailers (no status) after the response, and informational answers (a CDN's 103
            // Early Hints) before it: nothing to do.
            None => Ok(LegEvent::Data(index, Bytes::new())),
            Some(100..=199) => Ok(LegEvent::Data(index, Bytes::new())),
            Some(status) => Err(LegEnd::Error(TlsError::Refused {
                route: ctx.redacted.clone(),
                status,
            })),
        }
    }

    /// Sends what the windows allow, one DATA frame per record (small records at first).
    async fn flush(&mut self, stream: &mut LegIo) -> Result<(), LegEnd> {
        while let Some(front) = self.pending.front_mut() {
            let max = if self.records < SHAPED_RECORDS {
                SHAPED_RECORD - h2::FRAME_HEADER_LEN
            } else {
                DATA_FRAME
            };
            let mut frame = Vec::with_capacity(max + h2::FRAME_HEADER_LEN);
            let take = front.len().min(max);
            let sent = self.h2.send_data(&front[..take], max, &mut frame);
            if sent == 0 {
                break;
            }
            stream.write_all(&frame).await?;
            self.records += 1;
            let _ = front.split_to(sent);
            self.pending_len -= sent;
            if front.is_empty() {
                self.pending.pop_front();
            }
            if self.owed_since.is_none() {
                self.owed_since = Some(Instant::now());
            }
            self.last_activity = Instant::now();
        }
        if self.end_up && self.pending.is_empty() && !self.h2.local_ended() {
            let mut end = Vec::new();
            self.h2.end(&mut end);
            stream.write_all(&end).await?;
        }
        // Whatever was written this turn leaves now: a leg on its own records may still hold
        // its last sealed record when the socket was full.
        stream.flush().await?;
        Ok(())
    }
}

/// Whether a leg has bytes to work on without its socket: read ahead and not yet handed to
/// TLS, or held by TLS (decrypted, or of a record not yet opened). Only when it has none does
/// the leg wait for its socket before taking room to read into: an idle leg holds no buffer.
fn leg_has_pending(stream: &Tls) -> bool {
    let counting = stream.get_ref();
    counting.start < counting.end || crate::keylog::ffi::has_pending(stream.ssl())
}

/// `part` as a slice of `whole`, without copying, when it lies inside `whole`; a copy otherwise
/// (`Bytes::slice_ref` would panic there instead).
fn share(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    if start <= whole.len() && part.len() <= whole.len() - start {
        whole.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Moves the request body to leg `index` once it is both here (its opening task handed it
/// over) and ready (its response came); the two happen in either order. The leg the body
/// leaves ends its request, so the server can retire it.
/// A session's open legs by number, in order: most often one, two while a rotation overlaps
/// them. (A sorted `Vec` of one element while idle, where a `BTreeMap` keeps a node of eleven.)
struct Legs(Vec<(u16, LegHandle)>);

impl Legs {
    fn new(index: u16, leg: LegHandle) -> Self {
        Self(vec![(index, leg)])
    }

    fn position(&self, index: u16) -> Result<usize, usize> {
        self.0.binary_search_by_key(&index, |(i, _)| *i)
    }

    fn insert(&mut self, index: u16, leg: LegHandle) {
        match self.position(index) {
            Ok(at) => self.0[at].1 = leg,
            Err(at) => self.0.insert(at, (index, leg)),
        }
    }

    fn get(&self, index: u16) -> Option<&LegHandle> {
        self.position(index).ok().map(|at| &self.0[at].1)
    }

    fn get_mut(&mut self, index: u16) -> Option<&mut LegHandle> {
        self.position(index).ok().map(|at| &mut self.0[at].1)
    }

    fn contains(&self, index: u16) -> bool {
        self.position(index).is_ok()
    }

    fn remove(&mut self, index: u16) -> Option<LegHandle> {
        let at = self.position(index).ok()?;
        let (_, leg) = self.0.remove(at);
        if self.0.len() <= 1 {
            // A rotation is over: back to the room of one leg.
            self.0.shrink_to_fit();
        }
        Some(leg)
    }

    /// The highest leg number open.
    fn newest(&self) -> Option<u16> {
        self.0.last().map(|(i, _)| *i)
    }

    /// The numbers of the legs below `index`.
    fn below(&self, index: u16) -> Vec<u16> {
        self.0
            .iter()
            .map(|(i, _)| *i)
            .take_while(|&i| i < index)
            .collect()
    }
}

async fn promote(legs: &mut Legs, up: &mut u16, up_open: bool, index: u16) {
    if index <= *up || !legs.get(index).is_some_and(|leg| leg.ready) {
        return;
    }
    if let Some(old) = legs.get_mut(*up) {
        let _ = send(&mut old.cmd, LegCmd::EndUp).await;
    }
    *up = index;
    if !up_open && let Some(leg) = legs.get_mut(*up) {
        let _ = send(&mut leg.cmd, LegCmd::EndUp).await;
    }
}

/// Sends on a bounded channel once it has room. The session's channels are `futures`' rather
/// than tokio's: an idle tokio channel keeps a block of 32 slots (1–1.3 KB here) for as long
/// as it lives, a `futures` channel only the messages in flight.
async fn send<T>(tx: &mut mpsc::Sender<T>, item: T) -> Result<(), mpsc::SendError> {
    std::future::poll_fn(|cx| tx.poll_ready(cx)).await?;
    tx.start_send(item)
}

/// Whether the caller's end of the session's stream is gone: a write to it fails once the
/// caller dropped its end, but not when it only shut its writing half.
fn caller_gone(user: &mut tokio::io::DuplexStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(Pin::new(user).poll_write(&mut cx, &[]), Poll::Ready(Err(_)))
}

/// The session's task: the caller's stream on one side, legs on the other.
async fn run_session(
    ctx: Arc<SessionCtx>,
    first: LegHandle,
    events_tx: mpsc::Sender<LegEvent>,
    mut events: mpsc::Receiver<LegEvent>,
    mut user: tokio::io::DuplexStream,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut first = first;
    first.ready = true;
    let mut legs = Legs::new(0, first);
    let mut up: u16 = 0;
    let mut down: u16 = 0;
    let mut queued: HashMap<u16, VecDeque<Bytes>> = HashMap::new();
    // Legs whose response ended before the legs ahead of them.
    let mut ended: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
    // Legs whose response (200) came before their opening task handed them over.
    let mut early: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
    let mut opening: Option<tokio::task::JoinHandle<(u16, Result<LegHandle, TlsError>)>> = None;
    let mut up_open = true;
    let mut buf = vec![0u8; UP_QUIET];
    // When a leg could not be opened: when to try again (no timer runs otherwise, so an idle
    // session costs no wake-ups).
    let mut retry: Option<Instant> = None;
    loop {
        tokio::select! {
            read = user.read(&mut buf), if up_open => match read {
                Ok(0) | Err(_) => {
                    up_open = false;
                    if caller_gone(&mut user) {
                        // The caller dropped the stream altogether (not only its writing
                        // half): nothing will be read any more, so the session ends here. Its
                        // legs close with it, which tells the server the session is over
                        // (an ended request alone only means "the next leg follows").
                        break;
                    }
                    if let Some(leg) = legs.get_mut(up) {
                        let _ = send(&mut leg.cmd, LegCmd::EndUp).await;
                    }
                }
                Ok(n) => {
                    let Some(leg) = legs.get_mut(up) else { break };
                    if send(&mut leg.cmd, LegCmd::Write(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                    // A full read means the caller writes fast: a bigger buffer; a small one
                    // after that gives it back.
                    if n == buf.len() && buf.len() < CHUNK {
                        buf.resize((buf.len() * 4).min(CHUNK), 0);
                    } else if n < UP_QUIET && buf.len() > UP_QUIET {
                        buf = vec![0u8; UP_QUIET];
                    }
                }
            },
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    LegEvent::Ready(index) => {
                        tracing::debug!(index, "tunnel leg: ready");
                        match legs.get_mut(index) {
                            Some(leg) => {
                                leg.ready = true;
                                promote(&mut legs, &mut up, up_open, index).await;
                            }
                            // Its answer came before its opening task handed it over.
                            None => {
                                early.insert(index);
                            }
                        }
                    }
                    LegEvent::Data(index, bytes) => {
                        if bytes.is_empty() {
                            continue;
                        }
                        if index == down {
                            if user.write_all(&bytes).await.is_err() {
                                break;
                            }
                        } else {
                            queued.entry(index).or_default().push_back(bytes);
                        }
                    }
                    LegEvent::DownEnded(index) => {
                        tracing::debug!(index, down, up, "tunnel leg: response ended");
                        // Legs report on their own: a later leg's end may come first.
                        ended.insert(index);
                        let mut failed = false;
                        while ended.remove(&down) {
                            // Downstream moves on to the next leg, with what it already sent.
                            down = down.wrapping_add(1);
                            for bytes in queued.remove(&down).unwrap_or_default() {
                                if user.write_all(&bytes).await.is_err() {
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        if failed {
                            break;
                        }
                    }
                    LegEvent::Failed(index, e) => {
                        if index >= down || index >= up {
                            tracing::debug!(error = %e, "tunnel leg failed; ending the session");
                            if let Ok(mut f) = failure.lock() {
                                *f = Some(e.to_string());
                            }
                            break;
                        }
                        // An old leg's failure after its part was done costs nothing.
                        legs.remove(index);
                    }
                }
            }
            opened = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => {
                opening = None;
                match opened {
                    Ok((index, Ok(mut leg))) => {
                        leg.ready = early.remove(&index);
                        legs.insert(index, leg);
                        promote(&mut legs, &mut up, up_open, index).await;
                    }
                    Ok((_, Err(e))) => {
                        // Tried again shortly while it is still needed.
                        tracing::debug!(error = %e, "could not open the next tunnel leg");
                        retry = Some(Instant::now() + LEG_RETRY);
                    }
                    Err(_) => break,
                }
            }
            () = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {
                retry = None;
            }
        }
        // Open the next leg once the current one has used 45 % of its share (so it is ready
        // before the current one is spent), or at once if the server moved on without one.
        let newest = legs.newest().unwrap_or(0);
        let needed = match legs.get(down) {
            None => true,
            Some(leg) => {
                newest == down
                    && leg.share.is_some_and(|share| {
                        leg.received.load(Ordering::Relaxed) * 100 >= share * 45
                    })
            }
        };
        // Leg numbers are 16 bits in the token, and the server takes leg 0 for a new session:
        // after 65,536 legs (some 600 MB through 16 KiB legs) the session ends once the last
        // leg's response is in, and the caller's reconnection starts a new one (the relay
        // redelivers whatever was not acknowledged).
        let out_of_legs = newest == ctx.last_leg;
        if opening.is_none() && needed && out_of_legs && !legs.contains(down) {
            tracing::info!("the tunnel session used all its legs; ending it for a new one");
            if let Ok(mut f) = failure.lock() {
                *f = Some(format!(
                    "the tunnel session used all {} of its legs",
                    u32::from(ctx.last_leg) + 1
                ));
            }
            break;
        }
        if opening.is_none() && retry.is_none() && needed && !out_of_legs {
            let ctx = Arc::clone(&ctx);
            let events = events_tx.clone();
            let index = newest.wrapping_add(1);
            opening = Some(tokio::spawn(async move {
                (index, open_leg(&ctx, index, events).await)
            }));
        }
        // Legs both directions have left are done.
        for i in legs.below(down.min(up)) {
            if let Some(leg) = legs.remove(i) {
                leg.retire();
            }
        }
    }
    if let Some(task) = opening {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that counts the reads it serves.
    struct Reads<'a> {
        data: &'a [u8],
        calls: usize,
    }

    impl AsyncRead for Reads<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.calls += 1;
            let n = buf.remaining().min(self.data.len());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    /// Records asked for as TLS asks (header, then body) come from one socket read, unchanged,
    /// and are counted as they come off the socket; a stream cut inside a record shows.
    #[tokio::test]
    async fn records_are_read_ahead_and_counted() {
        let mut wire = Vec::new();
        for len in [300u16, 16_401, 20] {
            wire.extend_from_slice(&[23, 3, 3]);
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend((0..len).map(|i| (i % 251) as u8));
        }
        wire.extend_from_slice(&[23, 3, 3, 0]); // cut inside a header
        let received = Arc::new(AtomicU64::new(0));
        let mid = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = Reads {
            data: &wire,
            calls: 0,
        };
        let mut counting = Counting::new(reads, Arc::clone(&received), Arc::clone(&mid));
        let mut got = Vec::new();
        loop {
            let mut header = [0u8; 5];
            let n = counting.read(&mut header).await.expect("header");
            got.extend_from_slice(&header[..n]);
            if n < 5 {
                break;
            }
            let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
            counting.read_exact(&mut body).await.expect("body");
            got.extend_from_slice(&body);
        }
        assert_eq!(got, wire);
        assert_eq!(
            counting.inner.as_ref().map(|r| r.calls),
            Some(1),
            "one socket read for all of it"
        );
        assert_eq!(received.load(Ordering::Relaxed), wire.len() as u64);
        assert!(mid.load(Ordering::Relaxed), "the cut record is owed");
    }

    /// An in-process front on loopback with its own certificate (pinned by the route), and the
    /// `tls` route to it with `rotate`; the directory holds the certificate and the cover.
    async fn test_front(rotate: Rotate) -> (tempfile::TempDir, crate::front::Front, Route) {
        use crate::front::{Front, FrontConfig, server_tls_config};
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = crate::certs::self_signed(&dir.path().join("key.pem"), "relay.test")
            .expect("certificate");
        let key = [9u8; 32];
        let config = FrontConfig {
            tls: server_tls_config(cert.chain, cert.key).expect("rustls"),
            path: "/tunnel".to_owned(),
            key: TokenKey::new(key),
            cover: crate::Cover::Dir(dir.path().to_path_buf()),
            cover_tls: None,
            handshake_timeout: Duration::from_secs(10),
            admission: pigeon_transport::admission::AdmissionLimits::default(),
            ech: None,
        };
        let front = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
            .await
            .expect("front");
        let params = TlsParams::new(None, "/tunnel", key, Some(cert.pin), rotate).expect("params");
        let route = Route::tls("127.0.0.1", front.local_addr().port(), &params).expect("route");
        (dir, front, route)
    }

    /// A session that has used its last leg number ends once that leg's response is in, with
    /// everything before it delivered, and says why (the caller reconnects).
    #[tokio::test]
    async fn a_session_ends_cleanly_after_its_last_leg() {
        use pigeon_transport::ServerStream as _;
        let (_dir, mut front, route) = test_front(Rotate::Cap(16 * 1024)).await;
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let server = tokio::spawn(async move {
            let mut session = front.accept().await.expect("a session");
            // Ends with an error once the client has gone.
            let _ = session.write_all(&sent).await;
        });
        let dialer = Dialer::new().expect("dialer").with_last_leg(4);
        let mut conn = dialer
            .dial(&route, Duration::from_secs(20))
            .await
            .expect("dial");
        conn.write_all(b"hello").await.expect("write");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let end = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => break "end of stream".to_owned(),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e.to_string(),
                }
            }
        })
        .await
        .expect("the session ends");
        assert!(end.contains("used all 5 of its legs"), "ended with: {end}");
        assert!(got.len() > 4 * 4096, "only {} bytes came", got.len());
        assert!(got.len() < data.len(), "more legs than allowed");
        assert_eq!(got, data[..got.len()], "bytes lost or changed");
        server.abort();
    }

    /// Once the server has answered, a leg protects its records itself: bytes go on both ways,
    /// large and small, unchanged, and the session ends cleanly.
    #[tokio::test]
    async fn a_leg_goes_on_with_its_own_records() {
        use pigeon_transport::ServerStream as _;
        let (_dir, mut front, route) = test_front(Rotate::Off).await;
        // More than the sockets hold, so that writes on the leg's own records meet a full
        // socket.
        let up: Vec<u8> = (0..8_000_000u32).map(|i| (i % 241) as u8).collect();
        let down: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (up_len, down_sent) = (up.len(), down.clone());
        // Reads until `n` bytes are in, or the end (then fewer).
        async fn take(session: &mut impl pigeon_transport::ServerStream, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            while got.len() < n {
                if std::future::poll_fn(|cx| session.poll_read_ready(cx))
                    .await
                    .is_err()
                {
                    break;
                }
                match session.try_read_buf(&mut got) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            got
        }
        let server = tokio::spawn(async move {
            let mut session = front.accept().await.expect("a session");
            let got = take(&mut session, up_len).await;
            session.write_all(&down_sent).await.expect("downstream");
            let ping = take(&mut session, 4).await;
            assert_eq!(ping, b"ping");
            session.write_all(b"pong").await.expect("pong");
            let rest = take(&mut session, usize::MAX).await;
            (got, rest.len())
        });
        let dialer = Dialer::new().expect("dialer");
        let mut conn = dialer
            .dial(&route, Duration::from_secs(20))
            .await
            .expect("dial");
        conn.write_all(&up).await.expect("write");
        let mut got = vec![0u8; down.len()];
        tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("downstream");
        assert!(got == down, "downstream bytes changed");
        assert_eq!(dialer.legs_on_own_records(), 1, "the leg kept TLS's state");
        // Quiet, then a small exchange on the leg's own records.
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.write_all(b"ping").await.expect("ping");
        let mut pong = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut pong))
            .await
            .expect("in time")
            .expect("pong");
        assert_eq!(&pong, b"pong");
        conn.shutdown().await.expect("shutdown");
        drop(conn);
        let (upstream, after) = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server's side ends")
            .expect("server task");
        assert!(upstream == up, "upstream bytes changed");
        assert_eq!(after, 0);
    }

    #[test]
    fn a_capped_leg_that_freezes_lowers_the_cap_a_tenth_at_most() {
        // The first freeze, without a cap, tells the threshold.
        assert_eq!(next_cap(20_000, 16_049, false), 16_049);
        // Under the cap, a freeze after little (loss the censor counted twice) costs a tenth.
        assert_eq!(next_cap(16_000, 5_000, true), 14_400);
        assert_eq!(next_cap(16_000, 15_000, true), 15_000);
        // Never below the smallest rotation.
        assert_eq!(next_cap(4_200, 1_000, true), pigeon_transport::MIN_ROTATE);
        assert_eq!(next_cap(9_000, 1_000, false), pigeon_transport::MIN_ROTATE);
    }

    #[test]
    fn share_slices_inside_and_copies_outside() {
        let whole = Bytes::from_static(b"0123456789");
        let inside = share(&whole, &whole[2..5]);
        assert_eq!(&inside[..], b"234");
        assert_eq!(inside.as_ptr(), whole[2..].as_ptr(), "not copied");
        let other = *b"234";
        let outside = share(&whole, &other);
        assert_eq!(&outside[..], b"234");
        assert_ne!(outside.as_ptr(), other.as_ptr());
        assert!(share(&whole, &whole[10..]).is_empty());
    }

    #[test]
    fn authority_is_written_as_chrome_writes_it() {
        let params = TlsParams::new(None, "/p", [1; 32], None, Rotate::Auto).expect("params");
        let r = Route::tls("relay.example.org", 443, &params).expect("route");
        let p = r.tls_params().expect("tls").expect("valid");
        assert_eq!(authority(&r, &p), "relay.example.org");
        let r = Route::tls("203.0.113.10", 8443, &params).expect("route");
        let p = r.tls_params().expect("tls").expect("valid");
        assert_eq!(authority(&r, &p), "203.0.113.10:8443");
        assert_eq!(target(&r, &p).sni, None);
    }
}
