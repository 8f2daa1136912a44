//! The server: a real HTTPS site with a tunnel behind one secret path.
//!
//! Every connection gets a TLS handshake (rustls) and then, before the server says a word of
//! HTTP, its first request is read ([`crate::sniff`]). A `POST` to `<path>/<token>` with a fresh
//! token (see [`crate::token`]) becomes a tunnel leg: rustls hands over its traffic keys, the
//! server answers the request with a streaming response, and the leg joins its session
//! ([`crate::session`]). Anything else — a browser, a scanner, a prober replaying a recorded
//! token, TLS 1.2, HTTP/1.1 — gets the cover site ([`crate::cover`]), which sees the connection
//! from its first byte, so it answers exactly as it would without the tunnel.
//!
//! [`Backend`] is the same behind a reverse proxy or CDN that terminates TLS itself: it speaks
//! cleartext HTTP/2 (h2c) on a local port, and answers anything that is not a tunnel leg with a
//! plain 404 (which the proxy can replace with its own page).

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pigeon_transport::admission::{Admission as Pool, AdmissionLimits, Ticket};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::cover::Cover;
use crate::ech::{EchConfig, EchServer, Recognised};
use crate::error::TlsError;
use crate::h2::{self, Event, Role};
use crate::opening::{self, Opening};
use crate::record::{Direction, Records};
use crate::session::{LegParts, Registry, ServerLeg, ServerSession};
use crate::sniff::{self, Sniffed};
use crate::token::{self, ReplayFilter, TokenKey};

/// The stream window a server leg opens for the client's request body.
const SERVER_STREAM_WINDOW: u32 = 1 << 20;
/// The connection window a server leg opens.
const SERVER_CONNECTION_WINDOW: u32 = 16 << 20;
/// Tokens remembered against replay: many more than legs opened in four minutes.
const REPLAY_CAPACITY: usize = 1 << 20;
/// Largest TLS record rustls is handed during the handshake (a header says more: refused).
const MAX_HANDSHAKE_RECORD: usize = 16_384 + 2048;

/// Settings of a tls front.
#[derive(Clone)]
pub struct FrontConfig {
    /// rustls's server settings: the certificate and key (see [`server_tls_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// The secret path prefix.
    pub path: String,
    /// The token secret.
    pub key: TokenKey,
    /// What everyone without a token sees.
    pub cover: Cover,
    /// The cover's own TLS port, if it has one: connections that do not open with a
    /// well-formed ClientHello (garbage, plain HTTP, broken hellos from probers) are passed
    /// there as they came, so the cover's own TLS stack reacts to them.
    pub cover_tls: Option<SocketAddr>,
    /// Time a connection has for its TLS handshake and first request, counted from accept.
    pub handshake_timeout: Duration,
    /// The pool of connections still in their handshake, and per-source caps (see
    /// [`pigeon_transport::admission`]): when the pool is full the oldest handshake is closed.
    pub admission: AdmissionLimits,
    /// Recognise clients by Encrypted Client Hello (`ech=1` routes): a hello whose ECH opens
    /// under the key derived from `key` and carries a fresh proof is answered by the front;
    /// every other connection goes to `cover_tls` untouched (or, without it, to the front's
    /// own cover as before).
    pub ech: Option<EchSetup>,
}

/// What the front needs to answer ECH clients itself.
#[derive(Clone)]
pub struct EchSetup {
    /// The name in the outer hello: the covered site's (the route's `sni`).
    pub public_name: String,
    /// The certificate chain ECH clients are shown, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Its private key (PKCS#8, or PKCS#1/SEC1 DER).
    pub key: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for EchSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchSetup")
            .field("public_name", &self.public_name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FrontConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontConfig")
            .field("cover", &self.cover)
            .finish_non_exhaustive()
    }
}

/// rustls server settings for a front: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, two session
/// tickets after a TLS 1.3 handshake (as OpenSSL and so most web servers send), and traffic keys
/// that can be taken out for tunnel legs.
///
/// # Errors
/// [`TlsError::Config`] if the certificate and key do not go together.
pub fn server_tls_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("the certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 2;
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| TlsError::Config(format!("session tickets: {e}")))?;
    Ok(Arc::new(config))
}

/// The same settings as [`server_tls_config`], with the certificate chosen by `resolver` at
/// each handshake: a certificate that is renewed while the front runs (ACME) is swapped in the
/// resolver, and the front never restarts.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the settings.
pub fn server_tls_config_with_resolver(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 2;
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| TlsError::Config(format!("session tickets: {e}")))?;
    Ok(Arc::new(config))
}

/// What fronts and backends share: the token checks and the open sessions.
#[derive(Debug)]
struct Gate {
    path: String,
    key: TokenKey,
    filter: Arc<Mutex<ReplayFilter>>,
    registry: Arc<Registry>,
}

/// What the gate decided about a request.
enum Admission {
    /// The first leg of a new session.
    New(token::Leg),
    /// A later leg of an open session.
    Next(token::Leg, Arc<crate::session::Attach>),
}

impl Gate {
    fn new(path: String, key: TokenKey) -> Self {
        Self {
            path,
            key,
            filter: Arc::new(Mutex::new(ReplayFilter::new(REPLAY_CAPACITY))),
            registry: Arc::default(),
        }
    }

    /// Whether a connection's first request opens a tunnel leg.
    fn admit_sniffed(&self, sniffed: &Sniffed) -> Option<Admission> {
        match sniffed {
            Sniffed::Request {
                method,
                path,
                end_stream,
            } => self.admit(method, path, *end_stream),
            _ => None,
        }
    }

    /// Whether this request opens a tunnel leg. Anything else is for the cover.
    fn admit(&self, method: &str, path: &str, end_stream: bool) -> Option<Admission> {
        if method != "POST" || end_stream {
            return None;
        }
        let token_text = path.strip_prefix(self.path.as_str())?.strip_prefix('/')?;
        let now = unix_now();
        let checked = token::check(&self.key, &self.path, token_text, now).ok()?;
        // Decide on the session before spending the token, so a leg that cannot join leaves
        // nothing behind.
        let leg_index = checked.leg().index;
        let session = checked.leg().session;
        let attach = if leg_index == 0 {
            if self.registry.contains(&session) {
                return None;
            }
            None
        } else {
            let attach = self.registry.find(&session)?;
            if !attach.expects(leg_index) {
                return None;
            }
            Some(attach)
        };
        let leg = self.filter.lock().ok()?.admit(checked, now).ok()?;
        Some(match attach {
            None => Admission::New(leg),
            Some(attach) => Admission::Next(leg, attach),
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A listening tls front. Dropping it stops accepting.
#[derive(Debug)]
pub struct Front {
    local: SocketAddr,
    sessions: mpsc::Receiver<(ServerSession, Option<u128>)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Front {
    /// Listens on `addr`.
    ///
    /// # Errors
    /// [`TlsError::Connect`] if the address cannot be listened on.
    pub async fn bind(addr: SocketAddr, config: FrontConfig) -> Result<Self, TlsError> {
        let listener = pigeon_transport::tcp::bind(addr).await?;
        Self::from_listener(listener, config)
    }

    /// Serves an already bound listener.
    ///
    /// # Errors
    /// [`TlsError::Io`] if the listener has no local address.
    pub fn from_listener(listener: TcpListener, config: FrontConfig) -> Result<Self, TlsError> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let gate = Gate::new(config.path.clone(), config.key.clone());
        let ech = config
            .ech
            .as_ref()
            .map(|setup| {
                EchServer::new(
                    &EchConfig::derive(&config.key, &setup.public_name),
                    config.key.clone(),
                    &setup.chain,
                    &setup.key,
                    Arc::clone(&gate.filter),
                )
            })
            .transpose()?;
        let shared = Arc::new(Shared {
            gate,
            pool: Pool::new(config.admission),
            ech,
            config,
            sessions: tx,
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared));
        Ok(Self {
            local,
            sessions: rx,
            accept_task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next new tunnel session. `None` once the front has stopped.
    pub async fn accept(&mut self) -> Option<ServerSession> {
        self.accept_from().await.map(|(session, _)| session)
    }

    /// The next new tunnel session and the key its source is counted under for per-source
    /// limits (the admission ticket's key of its first leg's address,
    /// [`pigeon_transport::admission::Ticket::source_key`]; never the address itself).
    pub async fn accept_from(&mut self) -> Option<(ServerSession, Option<u128>)> {
        self.sessions.recv().await
    }
}

/// The front as a relay's or proxy's listener: each session comes admitted (the front counts
/// sources before their handshake), with its source's key.
impl pigeon_transport::Accept for Front {
    type Stream = ServerSession;

    async fn accept(
        &mut self,
    ) -> Option<Result<pigeon_transport::Accepted<ServerSession>, pigeon_transport::TransportError>>
    {
        let (stream, source) = self.accept_from().await?;
        Some(Ok(pigeon_transport::Accepted {
            stream,
            source: pigeon_transport::Source::Admitted(source),
        }))
    }
}

struct Shared {
    config: FrontConfig,
    gate: Gate,
    ech: Option<EchServer>,
    pool: Arc<Pool>,
    sessions: mpsc::Sender<(ServerSession, Option<u128>)>,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // The peer's address is counted against its source's caps, in memory only; it
                // is never kept past the connection or logged.
                let Some(ticket) = shared.pool.admit(peer.ip()) else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let shared = Arc::clone(&shared);
                tokio::spawn(serve_connection(tcp, shared, ticket));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; pausing briefly");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection after its TLS handshake: the socket, rustls, and received bytes not yet handed
/// to rustls (whole records only are, so the keys can be taken out at a record boundary).
struct Handshaken {
    tcp: TcpStream,
    conn: rustls::ServerConnection,
    raw: Vec<u8>,
}

/// What the first moments of a connection decided.
enum Decided {
    /// Nothing more to do (closed, as a web server would).
    Closed,
    /// Not a well-formed ClientHello.
    Stranger {
        tcp: TcpStream,
        raw: Vec<u8>,
        opening: Opening,
    },
    /// A TLS connection for the cover site (`plain`: its first bytes, already read).
    Cover {
        hs: Box<Handshaken>,
        plain: Vec<u8>,
        h2: bool,
    },
    /// A tunnel leg with a valid token.
    Leg {
        hs: Box<Handshaken>,
        plain: Vec<u8>,
        admission: Admission,
    },
    /// A tunnel leg of a client that proved itself by ECH, with a valid token.
    EchLeg {
        tcp: TcpStream,
        records: Records,
        raw: Vec<u8>,
        plain: Vec<u8>,
        admission: Admission,
    },
}

/// Serves one accepted connection. Its handshake and first request happen in the admission
/// pool, within the deadline counted from accept, and end early if the pool evicts it; what
/// comes after (the cover site, a tunnel leg) holds no place in the pool.
async fn serve_connection(tcp: TcpStream, shared: Arc<Shared>, mut ticket: Ticket) {
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    let decided = tokio::select! {
        decided = decide(tcp, &shared, deadline) => decided,
        () = ticket.evicted() => return,
    };
    ticket.authenticated();
    let result = match decided {
        Ok(Decided::Closed) => Ok(()),
        Ok(Decided::Stranger { tcp, raw, opening }) => {
            stranger(tcp, raw, &opening, shared.config.cover_tls, deadline).await;
            Ok(())
        }
        Ok(Decided::Cover { hs, plain, h2 }) => {
            shared
                .config
                .cover
                .serve(RustlsStream::new(*hs), plain, h2)
                .await;
            Ok(())
        }
        Ok(Decided::Leg {
            hs,
            plain,
            admission,
        }) => {
            // A tunnel leg proved itself with a token: it no longer counts against its source
            // here (the relay keeps the source's key for its own per-source limits).
            let source = ticket.source_key();
            drop(ticket);
            leg(*hs, plain, admission, &shared, source).await
        }
        Ok(Decided::EchLeg {
            tcp,
            records,
            raw,
            plain,
            admission,
        }) => {
            let source = ticket.source_key();
            drop(ticket);
            match open_leg(tcp, Some(records), raw, plain, &admission).await {
                Ok(leg) => {
                    deliver(leg, admission, &shared.gate, &shared.sessions, Some(source)).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "tls connection ended");
    }
}

/// The opening, the TLS handshake and the first request, within `deadline`.
async fn decide(
    tcp: TcpStream,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Result<Decided, TlsError> {
    let mut tcp = tcp;
    let mut raw = Vec::new();
    let opening = tokio::time::timeout_at(deadline, async {
        loop {
            match opening::classify(&raw) {
                Opening::More => read_more(&mut tcp, &mut raw).await?,
                decided => return Ok::<_, TlsError>(decided),
            }
        }
    })
    .await;
    match opening {
        Ok(Ok(Opening::Hello)) => {}
        Ok(Ok(opening)) => return Ok(Decided::Stranger { tcp, raw, opening }),
        Ok(Err(e)) => return Err(e),
        // Too few bytes to tell, for the whole handshake time: close, as a server would.
        Err(_) => return Ok(Decided::Closed),
    }
    if let Some(ech) = &shared.ech {
        match tokio::time::timeout_at(deadline, ech.accept(tcp, raw)).await {
            Err(_) => return Ok(Decided::Closed),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Recognised::Client { tcp, records, raw })) => {
                return ech_first_request(tcp, records, raw, shared, deadline).await;
            }
            Ok(Ok(Recognised::Stranger {
                tcp: back,
                raw: seen,
            })) => {
                if shared.config.cover_tls.is_some() {
                    return Ok(Decided::Stranger {
                        tcp: back,
                        raw: seen,
                        opening: Opening::Hello,
                    });
                }
                tcp = back;
                raw = seen;
            }
        }
    }
    let conn = rustls::ServerConnection::new(Arc::clone(&shared.config.tls))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut hs = Handshaken { tcp, conn, raw };
    match tokio::time::timeout_at(deadline, handshake(&mut hs)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        // A slow or silent peer: close as a web server would after its handshake timeout.
        Err(_) => return Ok(Decided::Closed),
    }
    let tls13 = hs.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let h2 = hs.conn.alpn_protocol() == Some(b"h2".as_slice());
    if !(tls13 && h2) {
        return Ok(Decided::Cover {
            hs: Box::new(hs),
            plain: Vec::new(),
            h2,
        });
    }
    let mut plain = Vec::new();
    let sniffed = tokio::time::timeout_at(deadline, read_first_request(&mut hs, &mut plain))
        .await
        .unwrap_or(Ok(Sniffed::Other))?;
    let admission = shared.gate.admit_sniffed(&sniffed);
    Ok(match admission {
        Some(admission) => Decided::Leg {
            hs: Box::new(hs),
            plain,
            admission,
        },
        None => Decided::Cover {
            hs: Box::new(hs),
            plain,
            h2: true,
        },
    })
}

/// Reads an ECH client's first request (opening its records) and checks its token. A proven
/// client without a valid request is closed: it has heard from the front already.
async fn ech_first_request(
    mut tcp: TcpStream,
    mut records: Records,
    mut raw: Vec<u8>,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Result<Decided, TlsError> {
    let mut plain = Vec::new();
    let sniffed = tokio::time::timeout_at(deadline, async {
        loop {
            let mut at = 0;
            while let Some(opened) = records.open(&mut raw[at..])? {
                match opened {
                    crate::record::Opened::Data { start, end, used } => {
                        plain.extend_from_slice(&raw[at + start..at + end]);
                        at += used;
                    }
                    crate::record::Opened::Closed { .. } => return Ok(Sniffed::Other),
                }
            }
            raw.drain(..at);
            match sniff::sniff(&plain) {
                Sniffed::More if plain.len() < sniff::MAX_SNIFF => {}
                Sniffed::More => return Ok(Sniffed::Other),
                decided => return Ok::<_, TlsError>(decided),
            }
            read_more(&mut tcp, &mut raw).await?;
        }
    })
    .await
    .unwrap_or(Ok(Sniffed::Other))?;
    let admission = shared.gate.admit_sniffed(&sniffed);
    Ok(match admission {
        Some(admission) => Decided::EchLeg {
            tcp,
            records,
            raw,
            plain,
            admission,
        },
        None => Decided::Closed,
    })
}

/// Takes the TLS keys out of rustls and opens the admitted leg.
async fn leg(
    hs: Handshaken,
    plain: Vec<u8>,
    admission: Admission,
    shared: &Shared,
    source: u128,
) -> Result<(), TlsError> {
    let Handshaken { tcp, conn, raw } = hs;
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| TlsError::Config(format!("taking the TLS keys: {e}")))?;
    let rx = Direction::from_rustls(secrets.rx.0, &secrets.rx.1);
    let tx = Direction::from_rustls(secrets.tx.0, &secrets.tx.1);
    let (Some(rx), Some(tx)) = (rx, tx) else {
        return Err(TlsError::Config("an unsupported TLS cipher suite".into()));
    };
    let records = Records::new(rx, tx);
    let leg = open_leg(tcp, Some(records), raw, plain, &admission).await?;
    deliver(leg, admission, &shared.gate, &shared.sessions, Some(source)).await;
    Ok(())
}

/// A connection that did not open with a well-formed ClientHello: to the cover's own TLS port
/// as it came, or answered as nginx answers it on its HTTPS port.
async fn stranger(
    mut tcp: TcpStream,
    raw: Vec<u8>,
    opening: &Opening,
    cover_tls: Option<SocketAddr>,
    deadline: tokio::time::Instant,
) {
    if let Some(addr) = cover_tls {
        crate::cover::pass_through(tcp, raw, addr).await;
        return;
    }
    // A broken TLS record or hello: OpenSSL gives up without a word. Plain HTTP: a 400 page.
    if *opening == Opening::NotTls {
        let mut head = raw;
        let answer = loop {
            if let Some(answer) = crate::cover::plain_http_on_https(&head) {
                break Some(answer);
            }
            if head.len() > 8192
                || tokio::time::timeout_at(deadline, read_more(&mut tcp, &mut head))
                    .await
                    .map_or(true, |r| r.is_err())
            {
                break None;
            }
        };
        if let Some(answer) = answer {
            let _ = tcp.write_all(&answer).await;
        }
    }
    // Take what is waiting, so the close is a FIN and not a reset.
    let mut sink = Vec::new();
    while matches!(tcp.try_read_buf(&mut sink), Ok(n) if n > 0) {
        sink.clear();
    }
    let _ = tcp.shutdown().await;
}

/// Drives the TLS handshake, handing rustls one whole record at a time.
async fn handshake(hs: &mut Handshaken) -> Result<(), TlsError> {
    while hs.conn.is_handshaking() {
        if !feed_one_record(hs)? {
            read_more(&mut hs.tcp, &mut hs.raw).await?;
        }
        flush_tls(hs).await?;
    }
    // The session tickets rustls queued at the end of the handshake.
    flush_tls(hs).await
}

/// Feeds the first whole record in `raw` to rustls. `Ok(false)` if there is none yet.
fn feed_one_record(hs: &mut Handshaken) -> Result<bool, TlsError> {
    let Some(header) = hs.raw.get(..5) else {
        return Ok(false);
    };
    let len = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    // An oversized record is handed over as it stands: rustls refuses it.
    let take = len.min(MAX_HANDSHAKE_RECORD).min(hs.raw.len());
    if take < len && len <= MAX_HANDSHAKE_RECORD {
        return Ok(false);
    }
    let mut record = &hs.raw[..take];
    let fed = hs.conn.read_tls(&mut record)?;
    hs.raw.drain(..fed);
    if let Err(e) = hs.conn.process_new_packets() {
        // rustls has an alert queued for most errors; it goes out before the close.
        let mut out = Vec::new();
        while hs.conn.wants_write() {
            if hs.conn.write_tls(&mut out).unwrap_or(0) == 0 {
                break;
            }
        }
        let _ = hs.tcp.try_write(&out);
        return Err(TlsError::Handshake {
            route: "(incoming)".into(),
            detail: e.to_string(),
        });
    }
    Ok(true)
}

async fn read_more(tcp: &mut TcpStream, raw: &mut Vec<u8>) -> Result<(), TlsError> {
    tcp.readable().await?;
    raw.reserve(8192);
    match tcp.try_read_buf(raw) {
        Ok(0) => Err(TlsError::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn flush_tls(hs: &mut Handshaken) -> Result<(), TlsError> {
    let mut out = Vec::new();
    while hs.conn.wants_write() {
        hs.conn.write_tls(&mut out)?;
    }
    if !out.is_empty() {
        hs.tcp.write_all(&out).await?;
    }
    Ok(())
}

/// Reads decrypted bytes until the first request is known (or cannot be a tunnel leg).
async fn read_first_request(hs: &mut Handshaken, plain: &mut Vec<u8>) -> Result<Sniffed, TlsError> {
    loop {
        let mut chunk = [0u8; 4096];
        loop {
            match hs.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(Sniffed::Other),
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Ok(Sniffed::Other),
            }
        }
        match sniff::sniff(plain) {
            Sniffed::More if plain.len() < sniff::MAX_SNIFF => {}
            Sniffed::More => return Ok(Sniffed::Other),
            decided => return Ok(decided),
        }
        if !feed_one_record(hs)? {
            read_more(&mut hs.tcp, &mut hs.raw).await?;
        }
        flush_tls(hs).await?;
    }
}

/// Answers an admitted request and makes its leg: the server's SETTINGS and connection window,
/// acknowledgements of the client's, and the response headers; what the client sent after its
/// request (the first tunnel bytes) is kept for the relay.
async fn open_leg(
    mut tcp: TcpStream,
    mut records: Option<Records>,
    raw: Vec<u8>,
    plain: Vec<u8>,
    admission: &Admission,
) -> Result<ServerLeg, TlsError> {
    let leg_info = match admission {
        Admission::New(leg) | Admission::Next(leg, _) => *leg,
    };
    let mut frames = Vec::new();
    h2::write_settings(
        &mut frames,
        &[
            (h2::setting::MAX_CONCURRENT_STREAMS, 128),
            (h2::setting::INITIAL_WINDOW_SIZE, SERVER_STREAM_WINDOW),
        ],
    );
    h2::write_window_update(&mut frames, 0, SERVER_CONNECTION_WINDOW - 65_535);
    let mut leg = h2::Leg::new(Role::Server, SERVER_STREAM_WINDOW, SERVER_CONNECTION_WINDOW);
    let mut ready = Vec::new();
    let mut failed = false;
    let after_preface = plain.get(h2::PREFACE.len()..).unwrap_or_default();
    let used = leg.receive(after_preface, &mut frames, &mut |event| match event {
        Event::Data(d) => ready.extend_from_slice(d),
        Event::Reset(_) | Event::GoAway(_) => failed = true,
        Event::Headers { .. } | Event::End | Event::PingAck(_) => {}
    })?;
    if failed {
        return Err(TlsError::Io(io::ErrorKind::ConnectionReset.into()));
    }
    let rest = after_preface[used..].to_vec();
    let mut encoder = loona_hpack::Encoder::new();
    let block = h2::encode_headers(
        &mut encoder,
        &[
            (":status", "200"),
            ("content-type", "application/octet-stream"),
            ("cache-control", "no-store"),
        ],
    );
    h2::write_headers(&mut frames, h2::STREAM, &block, None, false);
    let mut wire = Vec::with_capacity(frames.len() + 64);
    match &mut records {
        Some(r) => r.seal(&frames, &mut wire)?,
        None => wire.extend_from_slice(&frames),
    }
    tcp.write_all(&wire).await?;
    Ok(ServerLeg::new(LegParts {
        index: leg_info.index,
        tcp,
        records,
        h2: leg,
        raw,
        plain: rest,
        ready,
        budget: leg_info.budget,
        written: wire.len() as u64,
    }))
}

/// Hands a new leg to its session, or opens a session with it.
async fn deliver(
    leg: ServerLeg,
    admission: Admission,
    gate: &Gate,
    sessions: &mpsc::Sender<(ServerSession, Option<u128>)>,
    source: Option<u128>,
) {
    match admission {
        Admission::New(info) => {
            let session = gate.registry.open(leg, info.session);
            let _ = sessions.send((session, source)).await;
        }
        Admission::Next(_, attach) => {
            // The session may have ended meanwhile: then the leg is simply closed.
            let _ = attach.offer(Box::new(leg));
        }
    }
}

/// rustls over a socket, as a byte stream, for the cover site.
pub(crate) struct RustlsStream {
    tcp: TcpStream,
    conn: rustls::ServerConnection,
    raw: Vec<u8>,
    /// Encrypted bytes rustls produced that the socket has not taken yet.
    out: Vec<u8>,
}

impl RustlsStream {
    fn new(hs: Handshaken) -> Self {
        Self {
            tcp: hs.tcp,
            conn: hs.conn,
            raw: hs.raw,
            out: Vec::new(),
        }
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.conn.wants_write() {
                self.conn.write_tls(&mut self.out)?;
            }
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if !this.raw.is_empty() {
                let mut slice = this.raw.as_slice();
                let fed = this.conn.read_tls(&mut slice)?;
                this.raw.drain(..fed);
                this.conn.process_new_packets().map_err(io::Error::other)?;
                ready!(this.poll_write_out(cx))?;
                if fed > 0 {
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The peer closed without close_notify: end of stream all the same.
                return Poll::Ready(Ok(()));
            }
            this.raw.extend_from_slice(read.filled());
        }
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        let n = this.conn.writer().write(buf)?;
        // Best effort now; the rest goes with the next write or flush.
        let _ = this.poll_write_out(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// The tunnel behind a reverse proxy or CDN that terminates TLS and forwards the secret path as
/// cleartext HTTP/2 (h2c) — for example nginx with `grpc_pass`.
#[derive(Debug)]
pub struct Backend {
    local: SocketAddr,
    sessions: mpsc::Receiver<(ServerSession, Option<u128>)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Backend {
    /// Listens on `addr` (a loopback or private address: what arrives here is cleartext).
    ///
    /// # Errors
    /// [`TlsError::Connect`] if the address cannot be listened on.
    pub async fn bind(
        addr: SocketAddr,
        path: String,
        key: TokenKey,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let listener = pigeon_transport::tcp::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let gate = Arc::new(Gate::new(path, key));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let gate = Arc::clone(&gate);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let serve = backend_connection(tcp, &gate, &tx);
                    if let Ok(Err(e)) = tokio::time::timeout(handshake_timeout, serve).await {
                        tracing::debug!(error = %e, "h2c connection ended");
                    }
                });
            }
        });
        Ok(Self {
            local,
            sessions: rx,
            accept_task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next new tunnel session. `None` once it has stopped.
    pub async fn accept(&mut self) -> Option<ServerSession> {
        self.sessions.recv().await.map(|(session, _)| session)
    }
}

/// The backend as a relay's listener: sessions come from the reverse proxy in front, which
/// did the admission.
impl pigeon_transport::Accept for Backend {
    type Stream = ServerSession;

    async fn accept(
        &mut self,
    ) -> Option<Result<pigeon_transport::Accepted<ServerSession>, pigeon_transport::TransportError>>
    {
        let (stream, _) = self.sessions.recv().await?;
        Some(Ok(pigeon_transport::Accepted {
            stream,
            source: pigeon_transport::Source::Admitted(None),
        }))
    }
}

async fn backend_connection(
    mut tcp: TcpStream,
    gate: &Gate,
    sessions: &mpsc::Sender<(ServerSession, Option<u128>)>,
) -> Result<(), TlsError> {
    let mut plain = Vec::new();
    let sniffed = loop {
        match sniff::sniff(&plain) {
            Sniffed::More if plain.len() < sniff::MAX_SNIFF => {}
            Sniffed::More => break Sniffed::Other,
            decided => break decided,
        }
        read_more(&mut tcp, &mut plain).await?;
    };
    let Some(admission) = gate.admit_sniffed(&sniffed) else {
        if matches!(sniffed, Sniffed::Request { .. }) {
            // A plain 404 for the proxy to show (or replace with its own page).
            let mut frames = Vec::new();
            h2::write_settings(&mut frames, &[(h2::setting::MAX_CONCURRENT_STREAMS, 128)]);
            let mut encoder = loona_hpack::Encoder::new();
            let block = h2::encode_headers(&mut encoder, &[(":status", "404")]);
            h2::write_headers(&mut frames, h2::STREAM, &block, None, true);
            h2::write_goaway(&mut frames, h2::STREAM, h2::code::NO_ERROR);
            tcp.write_all(&frames).await?;
        }
        return Ok(());
    };
    let leg = open_leg(tcp, None, Vec::new(), plain, &admission).await?;
    // Behind a proxy the peer is the proxy: no source to count.
    deliver(leg, admission, gate, sessions, None).await;
    Ok(())
}
