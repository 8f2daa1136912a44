//! The client: Chrome's TLS and HTTP/2, a tunnel inside a streaming `POST`, and legs that follow
//! one another under a per-connection download cap.
//!
//! [`Dialer::dial`] opens the first leg (TCP, TLS as Chrome, HTTP/2 as Chrome, the request with a
//! fresh token) and hands back a byte stream, [`TunnelStream`], which carries itself over legs
//! as its caller reads and writes it (no task of its own; only the opening of a next leg runs
//! in one):
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
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use pigeon_transport::{Connection, Host, Rotate, Route, TlsParams, Transport};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
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
    /// What sessions to each route share, while one is open (route text → context).
    routes: Arc<Mutex<HashMap<String, std::sync::Weak<RouteCtx>>>>,
}

/// Routes whose contexts a dialer remembers before it forgets those no session uses.
const ROUTES_KEPT: usize = 64;

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
            routes: Arc::default(),
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

    /// What sessions to `route` share (`name` is its text): the one kept while a session to
    /// it is open, or a new one. A proxy's sessions mostly go to one relay: each holds its
    /// session id and cap, not its own copy of the route's names, keys and texts.
    fn route_ctx(&self, route: &Route, params: &TlsParams, name: String) -> Arc<RouteCtx> {
        let Ok(mut routes) = self.routes.lock() else {
            return Arc::new(self.new_route_ctx(route, params, name));
        };
        if let Some(ctx) = routes.get(&name).and_then(std::sync::Weak::upgrade) {
            return ctx;
        }
        if routes.len() >= ROUTES_KEPT {
            // Routes no session uses any more go; what is left is bounded by the sessions.
            routes.retain(|_, ctx| ctx.strong_count() > 0);
        }
        let ctx = Arc::new(self.new_route_ctx(route, params, name.clone()));
        routes.insert(name, Arc::downgrade(&ctx));
        ctx
    }

    fn new_route_ctx(&self, route: &Route, params: &TlsParams, name: String) -> RouteCtx {
        RouteCtx {
            tls: self.tls.clone(),
            learned: Arc::clone(&self.learned),
            own_records: Arc::clone(&self.own_records),
            host: route.host().clone(),
            port: route.port(),
            redacted: route.redacted(),
            name,
            target: target(route, params),
            authority: authority(route, params),
            key: TokenKey::new(*params.key()),
            path: params.path().to_owned(),
            learn: params.rotate() == Rotate::Auto,
            last_leg: self.last_leg,
        }
    }

    async fn dial_tls(&self, route: &Route, params: TlsParams) -> Result<TunnelStream, TlsError> {
        let name = route.to_string();
        let cap = match params.rotate() {
            Rotate::Off => None,
            Rotate::Cap(cap) => Some(cap),
            Rotate::Auto => self.learned.lock().ok().and_then(|l| l.get(&name).copied()),
        };
        let ctx = Arc::new(SessionCtx {
            route: self.route_ctx(route, &params, name),
            session: random(),
            cap,
        });
        let first = open_leg(&ctx, 0).await?;
        Ok(TunnelStream::new(ctx, first))
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
    match (&ctx.route.target.ech, &ctx.route.target.sni) {
        (Some(_), _) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let pad = random::<{ crate::ech::MAX_PAD }>();
            let pad_len = crate::ech::pad_len(random());
            crate::ech::inner_name(&ctx.route.key, now, random(), &pad[..pad_len])
        }
        (None, Some(sni)) => sni.clone(),
        (None, None) => ctx.route.host.to_string(),
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

/// What every session to one route shares.
struct RouteCtx {
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
    /// Whether a stall teaches this route a cap.
    learn: bool,
    /// The highest leg number a session may use.
    last_leg: u16,
}

/// What every leg of a session shares.
struct SessionCtx {
    route: Arc<RouteCtx>,
    session: SessionId,
    /// The download cap in force for this session, if any.
    cap: Option<u32>,
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
/// Room a leg on its own records reads into beyond the record under way: a little while
/// quiet…
const LEAN_ROOM_QUIET: usize = 512;
/// …and several records' worth once reads fill it.
const LEAN_ROOM_BUSY: usize = 64 * 1024;
/// How long to wait before trying again to open a leg that could not be opened.
const LEG_RETRY: Duration = Duration::from_millis(100);

/// What [`Counting`] knows of the bytes that came off the socket.
#[derive(Default)]
struct Meter {
    /// TCP bytes received, handshake included (what a censor counts toward a freeze).
    received: u64,
    records: RecordTracker,
}

impl Meter {
    /// Notes bytes that came off the socket.
    fn count(&mut self, got: &[u8]) {
        self.received += got.len() as u64;
        self.records.feed(got);
    }

    /// The socket's bytes end inside a TLS record: more are owed.
    fn mid_record(&self) -> bool {
        self.records.mid_record()
    }
}

impl<S> Counting<S> {
    fn new(inner: S) -> Self {
        Self {
            inner: Some(inner),
            meter: Meter::default(),
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

    /// What came off the socket so far.
    fn meter(&self) -> &Meter {
        match self {
            Self::Tls(tls) => &tls.get_ref().meter,
            Self::Lean(lean) => &lean.meter,
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
        let meter = std::mem::take(&mut counting.meter);
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

/// Opens leg `index`: TCP, TLS, the HTTP/2 preface and the request. The session then drives it.
async fn open_leg(ctx: &Arc<SessionCtx>, index: u16) -> Result<Leg, TlsError> {
    let tcp =
        pigeon_transport::tcp::connect(&ctx.route.host, ctx.route.port, Duration::from_secs(30))
            .await?;
    let counting = Counting::new(tcp);
    let config = ctx.route.tls.configure(&ctx.route.target)?;
    let domain = connect_name(ctx);
    let mut stream = tokio_boring::connect(config, &domain, counting)
        .await
        .map_err(|e| handshake_error(&ctx.route.redacted, &e))?;
    if ctx.route.target.ech.is_none() {
        // (With ECH, a resumed session's ticket would lengthen the inner hello past GREASE's
        // lengths: ECH connections always make a full handshake, as a first visit does.)
        ctx.route
            .tls
            .remember(&ctx.route.target.cache_key, stream.ssl());
    }
    if stream.ssl().selected_alpn_protocol() != Some(b"h2".as_slice()) {
        return Err(TlsError::NotHttp2 {
            route: ctx.route.redacted.clone(),
        });
    }
    let handshake = stream.get_ref().meter.received;
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
    let token = token::mint(&ctx.route.key, &ctx.route.path, &leg, now, random());
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
    let path = format!("{}/{token}", ctx.route.path);
    let origin = format!("https://{}", ctx.route.authority);
    let referer = format!("https://{}/", ctx.route.authority);
    let mut encoder = loona_hpack::Encoder::new();
    let block = h2::encode_headers(
        &mut encoder,
        &[
            (":method", "POST"),
            (":authority", &ctx.route.authority),
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
    Ok(Leg::new(index, stream, share))
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

/// What a leg found for its session.
enum Got {
    /// The server answered the request: the leg may carry the request body.
    Ready,
    /// Tunnel bytes from the server.
    Data(Bytes),
    /// The server ended the response on this leg.
    DownEnded,
    /// The leg failed (after what came before it).
    Failed(LegEnd),
}

/// One leg of a session: its connection, its HTTP/2 stream, and what waits on either side of
/// it. The session drives it without a task of its own: a leg does nothing but when its
/// session is polled.
struct Leg {
    index: u16,
    io: LegIo,
    h2: h2::Leg,
    decoder: loona_hpack::Decoder<'static>,
    /// Bytes from the caller waiting for the window.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// End the request body once `pending` is out: the caller shut its side, or a later leg
    /// carries what follows.
    end_up: bool,
    /// Frames not yet written, each written on its own (one record each, as shaping needs);
    /// at most the control answers of one read and one DATA frame.
    out: VecDeque<Bytes>,
    /// A frame cut short at the end of the last read, waiting for the rest.
    inbuf: Vec<u8>,
    /// Room for the next read: small while quiet, larger once reads fill it.
    room: usize,
    /// Records written since the request headers.
    records: u32,
    /// Since when an answer is owed (we wrote, nothing came back yet).
    owed_since: Option<Instant>,
    pinged: bool,
    last_activity: Instant,
    /// When a leg owed nothing looks next whether TLS waits for the rest of a record, and
    /// whether it has been idle long enough for a PING.
    check_at: Instant,
    /// Its share of the cap, in TCP bytes received (handshake included).
    share: Option<u64>,
    /// The request body may go here: the first leg's at once, a later one's once its
    /// response came.
    ready: bool,
    /// The server answered the leg's request (its session tickets, sent with the handshake's
    /// last flight, came before): the leg's records may move out of TLS.
    answered: bool,
    /// The server ended its response on this leg.
    down_ended: bool,
    /// Tunnel bytes that came while legs before this one had not ended: the caller's after
    /// theirs.
    held: VecDeque<Bytes>,
    held_len: usize,
    /// Both directions moved on: the leg ends its request and goes once the response ended.
    retired: bool,
    /// The connection ended after both sides of the stream had.
    closed: bool,
}

impl Leg {
    fn new(index: u16, stream: Tls, share: Option<u64>) -> Self {
        Self {
            index,
            io: LegIo::Tls(stream),
            h2: h2::Leg::new(
                Role::Client,
                chrome::H2_SETTINGS[2].1,
                chrome::H2_CONNECTION_WINDOW,
            ),
            decoder: h2::decoder(),
            pending: VecDeque::new(),
            pending_len: 0,
            end_up: false,
            out: VecDeque::new(),
            inbuf: Vec::new(),
            room: LEG_ROOM_QUIET,
            records: 0,
            owed_since: None,
            pinged: false,
            last_activity: Instant::now(),
            check_at: Instant::now() + CHECK,
            share,
            ready: false,
            answered: false,
            down_ended: false,
            held: VecDeque::new(),
            held_len: 0,
            retired: false,
            closed: false,
        }
    }

    /// Whether the leg has done all it will: closed, or retired with both sides of its stream
    /// ended and nothing left to write.
    fn finished(&self) -> bool {
        self.closed
            || (self.retired
                && self.out.is_empty()
                && self.pending.is_empty()
                && self.h2.local_ended()
                && self.h2.remote_ended())
    }

    /// Reads what the socket has (one read) and handles its frames, without waiting: `Ok(0)`
    /// when nothing came (the socket is registered for the next bytes), else the bytes read.
    /// What the leg found goes to `got`, in order.
    fn pull(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &SessionCtx,
        got: &mut Vec<Got>,
    ) -> Result<usize, LegEnd> {
        if self.closed {
            return Ok(0);
        }
        if !self.io.has_pending() {
            // Waits until a byte is there (or the end) before taking room to read into:
            // readiness alone would still be set after the last read that emptied the socket,
            // and an idle leg holds no buffer.
            let mut one = [0u8; 1];
            let mut peek = ReadBuf::new(&mut one);
            match self.io.socket()?.poll_peek(cx, &mut peek) {
                Poll::Pending => return Ok(0),
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let mut buf = BytesMut::with_capacity(self.room);
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut buf) {
            Poll::Pending => return Ok(0),
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Ready(Ok(n)) => n,
        };
        if n == 0 {
            if self.h2.remote_ended() && self.h2.local_ended() {
                self.closed = true;
                return Ok(0);
            }
            return Err(LegEnd::Error(TlsError::Io(
                io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        self.room = if n >= LEG_ROOM_QUIET {
            LEG_ROOM_BUSY
        } else {
            LEG_ROOM_QUIET
        };
        let now = Instant::now();
        self.pinged = false;
        self.last_activity = now;
        // Bytes came; whether more are owed depends on where they stopped.
        self.owed_since = self.io.meter().mid_record().then_some(now);
        // Frames are parsed straight from what was read, and their payloads handed on as
        // slices of it; only a frame cut short waits in `inbuf` for the rest.
        let chunk = buf.freeze();
        let from_buf = self.inbuf.is_empty();
        if !from_buf {
            self.inbuf.extend_from_slice(&chunk);
        }
        let src = if from_buf {
            &chunk[..]
        } else {
            &self.inbuf[..]
        };
        let mut control = Vec::new();
        let mut found: Vec<Result<Got, Vec<u8>>> = Vec::new();
        let used = self
            .h2
            .receive(src, &mut control, &mut |e| match e {
                Event::Data(d) => found.push(Ok(Got::Data(if from_buf {
                    share(&chunk, d)
                } else {
                    Bytes::copy_from_slice(d)
                }))),
                Event::Headers { block, .. } => found.push(Err(block)),
                Event::End => found.push(Ok(Got::DownEnded)),
                Event::Reset(_) | Event::GoAway(_) => {
                    found.push(Ok(Got::Failed(LegEnd::Error(TlsError::Io(
                        io::ErrorKind::ConnectionReset.into(),
                    )))));
                }
                Event::PingAck(_) => {}
            })
            .map_err(TlsError::from)?;
        if from_buf {
            self.inbuf.extend_from_slice(&chunk[used..]);
        } else {
            self.inbuf.drain(..used);
            if self.inbuf.is_empty() {
                self.inbuf = Vec::new();
            }
        }
        if !self.inbuf.is_empty() && self.owed_since.is_none() {
            // A frame cut short: the rest is owed.
            self.owed_since = Some(now);
        }
        if !control.is_empty() {
            self.out.push_back(Bytes::from(control));
        }
        for f in found {
            match f {
                Ok(Got::Failed(e)) => {
                    got.push(Got::Failed(e));
                    // Nothing after a reset counts.
                    self.closed = true;
                    break;
                }
                Ok(g) => got.push(g),
                Err(block) => match self.response(ctx, &block) {
                    Ok(Some(g)) => got.push(g),
                    Ok(None) => {}
                    Err(e) => {
                        got.push(Got::Failed(e));
                        self.closed = true;
                        break;
                    }
                },
            }
        }
        Ok(n)
    }

    /// When the leg next looks at its clock.
    fn deadline(&self) -> Instant {
        match self.owed_since {
            Some(since) if self.pinged => since + 2 * STALL,
            Some(since) => since + STALL,
            None => self.check_at.min(self.last_activity + KEEPALIVE),
        }
    }

    /// What the leg's clock asks for at `now`: a PING when an answer is late or the leg has
    /// been idle long, and the end when the answer stays away ([`LegEnd::Stalled`]).
    fn on_clock(&mut self, now: Instant) -> Result<(), LegEnd> {
        if let Some(since) = self.owed_since {
            if now >= since + 2 * STALL {
                return Err(LegEnd::Stalled);
            }
            if now >= since + STALL && !self.pinged {
                self.pinged = true;
                self.ping();
            }
            return Ok(());
        }
        if now < self.deadline() {
            return Ok(());
        }
        self.check_at = now + CHECK;
        if self.io.meter().mid_record() {
            // TLS has bytes of a record it cannot finish: the rest is owed.
            self.owed_since = Some(now - CHECK);
        } else if now >= self.last_activity + KEEPALIVE {
            self.ping();
            self.owed_since = Some(now);
            self.pinged = true;
            self.last_activity = now;
        }
        Ok(())
    }

    fn ping(&mut self) {
        let mut ping = Vec::new();
        h2::Leg::ping(&mut ping, random());
        self.out.push_back(Bytes::from(ping));
    }

    /// The response to the leg's request: 200 opens the tunnel, 1xx and trailers are passed
    /// over, any other status is a refusal.
    fn response(&mut self, ctx: &SessionCtx, block: &[u8]) -> Result<Option<Got>, LegEnd> {
        let headers = h2::decode_headers(&mut self.decoder, block).map_err(TlsError::from)?;
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| v.parse::<u16>().ok());
        match status {
            Some(200) => {
                self.answered = true;
                Ok(Some(Got::Ready))
            }
            // Trailers (no status) after the response, and informational answers (a CDN's 103
            // Early Hints) before it: nothing to do.
            None | Some(100..=199) => Ok(None),
            Some(status) => Err(LegEnd::Error(TlsError::Refused {
                route: ctx.route.redacted.clone(),
                status,
            })),
        }
    }

    /// Writes what the leg has for its socket, without waiting: the frames queued, then DATA
    /// frames as the windows allow (one per record, small records at first), then the end of
    /// the request body once it is due. What the socket does not take waits, and the socket
    /// is registered for room.
    fn push(&mut self, cx: &mut Context<'_>) -> Result<(), LegEnd> {
        loop {
            while let Some(front) = self.out.front_mut() {
                match Pin::new(&mut self.io).poll_write(cx, front) {
                    Poll::Pending => return self.poll_io_flush(cx),
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Ready(Ok(0)) => {
                        return Err(LegEnd::Error(TlsError::Io(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        let _ = front.split_to(n.min(front.len()));
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                    }
                }
            }
            if self.out.capacity() > 0 {
                // An idle leg holds no queue.
                self.out = VecDeque::new();
            }
            if let Some(front) = self.pending.front_mut() {
                let max = if self.records < SHAPED_RECORDS {
                    SHAPED_RECORD - h2::FRAME_HEADER_LEN
                } else {
                    DATA_FRAME
                };
                let mut frame = Vec::with_capacity(max.min(front.len()) + h2::FRAME_HEADER_LEN);
                let take = front.len().min(max);
                let sent = self.h2.send_data(&front[..take], max, &mut frame);
                if sent > 0 {
                    self.out.push_back(Bytes::from(frame));
                    self.records += 1;
                    let _ = front.split_to(sent);
                    self.pending_len -= sent;
                    if front.is_empty() {
                        self.pending.pop_front();
                        if self.pending.is_empty() {
                            self.pending = VecDeque::new();
                        }
                    }
                    let now = Instant::now();
                    if self.owed_since.is_none() {
                        self.owed_since = Some(now);
                    }
                    self.last_activity = now;
                    continue;
                }
            }
            if self.end_up && self.pending.is_empty() && !self.h2.local_ended() {
                let mut end = Vec::new();
                self.h2.end(&mut end);
                self.out.push_back(Bytes::from(end));
                continue;
            }
            return self.poll_io_flush(cx);
        }
    }

    /// Flushes the connection: a leg on its own records may hold its last sealed record when
    /// the socket was full.
    fn poll_io_flush(&mut self, cx: &mut Context<'_>) -> Result<(), LegEnd> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Moves the leg's records out of BoringSSL once the server has answered and nothing is
    /// held; counts it.
    fn maybe_go_lean(&mut self, ctx: &SessionCtx) {
        if self.answered && self.io.go_lean(&ctx.route.tls) {
            ctx.route.own_records.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                index = self.index,
                "tunnel leg: records now protected by the leg itself"
            );
        }
    }

    /// The error a leg's end gives the session; a freeze teaches the route a cap.
    fn end_error(&self, ctx: &SessionCtx, end: LegEnd) -> TlsError {
        match end {
            LegEnd::Stalled => {
                let got = self.io.meter().received;
                if ctx.route.learn && got >= MIN_LEARNED {
                    let cap = u32::try_from(got).unwrap_or(u32::MAX);
                    if let Ok(mut learned) = ctx.route.learned.lock() {
                        let entry = learned.entry(ctx.route.name.clone()).or_insert(cap);
                        *entry = next_cap(*entry, cap, ctx.cap.is_some());
                    }
                    tracing::info!(
                        bytes = got,
                        "a connection froze; keeping later connections under that"
                    );
                }
                TlsError::Stalled {
                    route: ctx.route.redacted.clone(),
                    received: got,
                }
            }
            LegEnd::Error(e) => e,
        }
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

/// Most tunnel bytes a session holds for its caller (read from legs, not yet read by the
/// caller) before it stops reading its legs.
const MAX_UNREAD: usize = 4 * CHUNK;
/// Most bytes from the caller a leg holds for its window before writes wait.
const MAX_PENDING: usize = 4 * CHUNK;

/// Who waits on a session: its reader and its writer (two tasks, when the caller splits the
/// stream). Sockets and timers wake both: whichever is polled next drives the session, so
/// neither waits on a socket the other registered last.
#[derive(Default)]
struct Wakers {
    read: AtomicWaker,
    write: AtomicWaker,
}

impl std::task::Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.read.wake();
        self.write.wake();
    }
}

/// A tunnel session, as its caller holds it: one byte stream each way, whatever legs carry it.
///
/// The session has no task of its own: reading and writing drive it (its legs' sockets, their
/// clocks, the opening of the next leg), as a TLS stream is driven by its caller, and an idle
/// session is this value, its legs and their sockets. The caller must keep reading (a relay
/// session always does: pushes come unasked): a leg's window updates, answers to its pings and
/// the next leg's response are read only while someone polls. Writes alone drive it too, so a
/// caller that writes a lot before it reads is not stuck on a window.
///
/// When the session ends because a leg failed, reading reports why (a refused request, a
/// frozen connection) instead of a bare end of stream.
pub(crate) struct TunnelStream {
    ctx: Arc<SessionCtx>,
    /// Open legs by number, in order: most often one, two while a rotation overlaps them, and
    /// retired ones until their streams end.
    legs: Vec<Leg>,
    /// The leg the request body goes to…
    up: u16,
    /// …and the leg whose response the caller reads now.
    down: u16,
    /// The highest leg number opened so far.
    newest: u16,
    /// The caller has not shut its writing side.
    up_open: bool,
    /// Tunnel bytes for the caller, in order.
    unread: VecDeque<Bytes>,
    unread_len: usize,
    /// The next leg, being opened (TCP, TLS, the request) in a task of its own.
    opening: Option<tokio::task::JoinHandle<(u16, Result<Leg, TlsError>)>>,
    /// When a leg could not be opened: when to try again.
    retry: Option<Instant>,
    /// The session's one timer: the earliest of its legs' clocks and `retry`.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Why the session ended, once it has.
    failure: Option<String>,
    wakers: Arc<Wakers>,
}

impl TunnelStream {
    fn new(ctx: Arc<SessionCtx>, mut first: Leg) -> Self {
        // The tunnel's first bytes follow the request at once, as a browser's streaming upload
        // does: a reverse proxy may hold the response headers until the response has data,
        // which here comes only after the client's first bytes.
        first.ready = true;
        Self {
            ctx,
            legs: vec![first],
            up: 0,
            down: 0,
            newest: 0,
            up_open: true,
            unread: VecDeque::new(),
            unread_len: 0,
            opening: None,
            retry: None,
            timer: None,
            failure: None,
            wakers: Arc::default(),
        }
    }

    fn position(&self, index: u16) -> Option<usize> {
        self.legs.binary_search_by_key(&index, |l| l.index).ok()
    }

    fn leg_mut(&mut self, index: u16) -> Option<&mut Leg> {
        let at = self.position(index)?;
        Some(&mut self.legs[at])
    }

    fn insert(&mut self, leg: Leg) {
        self.newest = self.newest.max(leg.index);
        match self.legs.binary_search_by_key(&leg.index, |l| l.index) {
            Ok(at) => self.legs[at] = leg,
            Err(at) => self.legs.insert(at, leg),
        }
    }

    /// Ends the session: why, for the caller; the legs close with it, which tells the server
    /// the session is over (an ended request alone only means "the next leg follows").
    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
        self.legs = Vec::new();
        if let Some(task) = self.opening.take() {
            task.abort();
        }
        self.timer = None;
    }

    /// Moves the request body to leg `index` once it is ready (its response came). The leg the
    /// body leaves ends its request, so the server can retire it.
    fn promote(&mut self, index: u16) {
        if index <= self.up || !self.leg_mut(index).is_some_and(|l| l.ready) {
            return;
        }
        if let Some(old) = self.leg_mut(self.up) {
            old.end_up = true;
        }
        self.up = index;
        let up_open = self.up_open;
        if let Some(leg) = self.leg_mut(index)
            && !up_open
        {
            leg.end_up = true;
        }
    }

    /// What leg `index` found.
    fn handle(&mut self, index: u16, got: Got) {
        match got {
            Got::Ready => {
                tracing::debug!(index, "tunnel leg: ready");
                if let Some(leg) = self.leg_mut(index) {
                    leg.ready = true;
                }
                self.promote(index);
            }
            Got::Data(bytes) => {
                if bytes.is_empty() {
                    return;
                }
                if index == self.down {
                    self.unread_len += bytes.len();
                    self.unread.push_back(bytes);
                } else if index > self.down
                    && let Some(leg) = self.leg_mut(index)
                {
                    leg.held_len += bytes.len();
                    leg.held.push_back(bytes);
                }
            }
            Got::DownEnded => {
                tracing::debug!(
                    index,
                    down = self.down,
                    up = self.up,
                    "tunnel leg: response ended"
                );
                if let Some(leg) = self.leg_mut(index) {
                    leg.down_ended = true;
                }
                // Legs report on their own: a later leg's end may come first. Downstream moves
                // on to the next leg, with what it already sent.
                while self.leg_mut(self.down).is_some_and(|l| l.down_ended) {
                    self.down = self.down.wrapping_add(1);
                    if let Some(next) = self.leg_mut(self.down) {
                        let held = std::mem::take(&mut next.held);
                        // (`take` leaves an empty queue without room.)
                        let len = std::mem::take(&mut next.held_len);
                        self.unread.extend(held);
                        self.unread_len += len;
                    }
                }
            }
            Got::Failed(end) => {
                let Some(at) = self.position(index) else {
                    return;
                };
                let e = self.legs[at].end_error(&self.ctx, end);
                if index >= self.down || index >= self.up {
                    tracing::debug!(error = %e, "tunnel leg failed; ending the session");
                    self.fail(e.to_string());
                } else {
                    // An old leg's failure after its part was done costs nothing.
                    self.legs.remove(at);
                }
            }
        }
    }

    /// Tunnel bytes held for the caller, from every leg.
    fn buffered(&self) -> usize {
        self.unread_len + self.legs.iter().map(|l| l.held_len).sum::<usize>()
    }

    /// Drives the session as far as it goes without waiting; every socket, timer and task it
    /// waits on is registered to wake its reader and its writer.
    fn drive(&mut self) {
        let waker = std::task::Waker::from(Arc::clone(&self.wakers));
        let mut cx = Context::from_waker(&waker);
        // A few rounds at most: a leg opened, a timer that had passed, or a leg gone can let
        // another step go on at once.
        for _ in 0..4 {
            if self.failure.is_some() || !self.step(&mut cx) {
                return;
            }
        }
        // More to do: come back.
        waker.wake_by_ref();
    }

    /// One round of [`Self::drive`]; whether another is due now.
    fn step(&mut self, cx: &mut Context<'_>) -> bool {
        let mut again = false;
        if let Some(task) = self.opening.as_mut()
            && let Poll::Ready(opened) = Pin::new(task).poll(cx)
        {
            self.opening = None;
            again = true;
            match opened {
                Ok((_, Ok(leg))) => self.insert(leg),
                Ok((_, Err(e))) => {
                    // Tried again shortly while it is still needed.
                    tracing::debug!(error = %e, "could not open the next tunnel leg");
                    self.retry = Some(Instant::now() + LEG_RETRY);
                }
                Err(_) => {
                    self.fail("the tunnel leg's opening task ended".to_owned());
                    return false;
                }
            }
        }
        // Read every leg, while the caller has room for what they bring.
        let mut at = 0;
        while at < self.legs.len() {
            let index = self.legs[at].index;
            let mut got = Vec::new();
            let mut result = Ok(());
            while self.buffered() < MAX_UNREAD && self.legs[at].out.len() < 16 {
                match self.legs[at].pull(cx, &self.ctx, &mut got) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                for g in got.drain(..) {
                    self.handle(index, g);
                }
                if self.failure.is_some() {
                    return false;
                }
                if self.legs.get(at).is_none_or(|l| l.index != index) {
                    break;
                }
            }
            if let Err(e) = result {
                self.handle(index, Got::Failed(e));
            }
            if self.failure.is_some() {
                return false;
            }
            if self.legs.get(at).is_some_and(|l| l.index == index) {
                at += 1;
            }
        }
        again |= self.plan();
        if self.failure.is_some() {
            return false;
        }
        again |= self.clock(cx);
        if self.failure.is_some() {
            return false;
        }
        // Write what every leg has, and move records out of TLS where they may.
        let mut failed = Vec::new();
        for leg in &mut self.legs {
            if let Err(e) = leg.push(cx) {
                failed.push((leg.index, e));
                continue;
            }
            leg.maybe_go_lean(&self.ctx);
        }
        for (index, e) in failed {
            self.handle(index, Got::Failed(e));
            again = true;
        }
        // Legs that are done go, once downstream has moved past them (until then a leg's end
        // and what it brought early still count).
        let before = self.legs.len();
        let down = self.down;
        self.legs.retain(|l| !(l.finished() && l.index < down));
        if self.legs.len() != before {
            if self.legs.len() <= 1 {
                // A rotation is over: back to the room of one leg.
                self.legs.shrink_to_fit();
            }
            again = true;
        }
        again
    }

    /// Opens the next leg when it is needed, ends the session when it has used all its legs,
    /// and retires legs both directions have left. Whether a leg started opening.
    fn plan(&mut self) -> bool {
        // Open the next leg once the current one has used 45 % of its share (so it is ready
        // before the current one is spent), or at once if the server moved on without one.
        let newest = self.newest;
        let needed = match self.position(self.down) {
            None => true,
            Some(at) => {
                let leg = &self.legs[at];
                newest == self.down
                    && leg
                        .share
                        .is_some_and(|share| leg.io.meter().received * 100 >= share * 45)
            }
        };
        // Leg numbers are 16 bits in the token, and the server takes leg 0 for a new session:
        // after 65,536 legs (some 600 MB through 16 KiB legs) the session ends once the last
        // leg's response is in, and the caller's reconnection starts a new one (the relay
        // redelivers whatever was not acknowledged).
        let out_of_legs = newest == self.ctx.route.last_leg;
        if self.opening.is_none() && needed && out_of_legs && self.position(self.down).is_none() {
            tracing::info!("the tunnel session used all its legs; ending it for a new one");
            let why = format!(
                "the tunnel session used all {} of its legs",
                u32::from(self.ctx.route.last_leg) + 1
            );
            self.fail(why);
            return false;
        }
        let mut opened = false;
        if self.opening.is_none() && self.retry.is_none() && needed && !out_of_legs {
            let ctx = Arc::clone(&self.ctx);
            let index = newest.wrapping_add(1);
            self.opening = Some(tokio::spawn(
                async move { (index, open_leg(&ctx, index).await) },
            ));
            opened = true;
        }
        // Legs both directions have left are done: each ends its request and closes once the
        // server has ended its response.
        let below = self.down.min(self.up);
        for leg in &mut self.legs {
            if leg.index < below && !leg.retired {
                leg.retired = true;
                leg.end_up = true;
            }
        }
        opened
    }

    /// Runs the legs' clocks and arms the session's timer for the next; whether it had already
    /// passed.
    fn clock(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        if self.retry.is_some_and(|at| now >= at) {
            self.retry = None;
        }
        let mut failed = Vec::new();
        for leg in &mut self.legs {
            if let Err(e) = leg.on_clock(now) {
                failed.push((leg.index, e));
            }
        }
        let any_failed = !failed.is_empty();
        for (index, e) in failed {
            self.handle(index, Got::Failed(e));
        }
        if self.failure.is_some() {
            return false;
        }
        let next = self.legs.iter().map(Leg::deadline).chain(self.retry).min();
        let Some(next) = next else {
            self.timer = None;
            return any_failed;
        };
        let timer = match self.timer.as_mut() {
            Some(timer) => {
                if timer.deadline() != next {
                    timer.as_mut().reset(next);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(next))),
        };
        any_failed || timer.as_mut().poll(cx).is_ready()
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if let Some(task) = self.opening.take() {
            task.abort();
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.wakers.read.register(cx.waker());
        let waited = !this.writable();
        this.drive();
        if waited && this.writable() {
            this.wakers.write.wake();
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(front) = this.unread.front_mut() {
            let n = buf.remaining().min(front.len());
            buf.put_slice(&front[..n]);
            let _ = front.split_to(n);
            if front.is_empty() {
                this.unread.pop_front();
            }
            this.unread_len -= n;
            if this.unread.is_empty() && this.unread.capacity() > 8 {
                this.unread = VecDeque::new();
            }
            return Poll::Ready(Ok(()));
        }
        match &this.failure {
            Some(why) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                why.clone(),
            ))),
            None => Poll::Pending,
        }
    }
}

impl TunnelStream {
    /// Whether a write would be taken now (or fail at once).
    fn writable(&self) -> bool {
        self.failure.is_some()
            || self
                .position(self.up)
                .is_none_or(|at| self.legs[at].pending_len < MAX_PENDING)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wakers.write.register(cx.waker());
        let had = this.unread_len;
        if !this.writable() {
            this.drive();
        }
        let result = this.write_now(buf);
        if result.is_ready() {
            this.drive();
        }
        if this.unread_len > had || this.failure.is_some() {
            this.wakers.read.wake();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What was written is on its way: the session writes it as the windows allow.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.up_open {
            this.up_open = false;
            let up = this.up;
            if let Some(leg) = this.leg_mut(up) {
                leg.end_up = true;
            }
            this.drive();
            this.wakers.read.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl TunnelStream {
    /// Takes the caller's bytes for the leg that carries the request body, if it has room.
    fn write_now(&mut self, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(why) = &self.failure {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                why.clone(),
            )));
        }
        if !self.up_open {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let up = self.up;
        let Some(leg) = self.leg_mut(up) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        if leg.pending_len >= MAX_PENDING {
            return Poll::Pending;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(CHUNK);
        leg.pending.push_back(Bytes::copy_from_slice(&buf[..n]));
        leg.pending_len += n;
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

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

        let reads = Reads {
            data: &wire,
            calls: 0,
        };
        let mut counting = Counting::new(reads);
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
        assert_eq!(counting.meter.received, wire.len() as u64);
        assert!(counting.meter.mid_record(), "the cut record is owed");
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
