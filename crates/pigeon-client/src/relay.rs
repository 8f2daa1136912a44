//! A connection to one relay: handshake, pipelined requests, pushed messages.
//!
//! The session itself — handshake, request ids, records, answers, pushes, why it ended — is
//! [`ClientSession`], a state machine without I/O in `pigeon-proto`. Two tasks move its bytes:
//! the writer takes queued requests, hands them to the session in batches and writes what the
//! session sealed (it alone seals, so records go out in order), remembering whom to answer; the
//! reader feeds what arrives to the session, routes each answer to its caller and hands pushes
//! to [`RelayConnection::next_event`]. Callers may issue requests from many tasks at once: they
//! share one session and one socket.

use pigeon_proto::auth::{self, AuthOp, SigningKey};
use pigeon_proto::channel::{ChannelError, Entropy};
use pigeon_proto::session::{ClientSession, Closed, SessionEvent};
use pigeon_transport::{Connection, RelayLink, Route};
use pigeon_transport::{DialError, Transports};
use pigeon_transport_tls::TlsError;
use pigeon_wire::msg::{self, MailboxId, MailboxKind, request, response};
use pigeon_wire::{ErrorCode, ErrorKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

/// Why a relay operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No route to the relay worked.
    #[error("could not reach the relay through any route (tried {tried}): {last}")]
    Unreachable {
        /// The routes tried, in text form.
        tried: String,
        /// The last failure.
        last: String,
        /// Who is at fault for the last failure.
        kind: ErrorKind,
    },
    /// The handshake failed: not this relay, or the connection was tampered with.
    #[error("the relay's handshake failed: {0}")]
    Handshake(#[source] ChannelError),
    /// The relay refused the request.
    #[error("the relay refused: {message} (code {})", code.as_u32())]
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// The relay's sentence.
        message: String,
        /// When the relay asked us to wait before retrying.
        retry_after: Option<Duration>,
    },
    /// The connection ended before the answer came.
    #[error("the connection to the relay was lost: {0}")]
    Lost(String),
    /// The relay answered with something that does not fit the request.
    #[error("the relay sent an unexpected answer to a {0} request")]
    Unexpected(&'static str),
    /// Local randomness failed.
    #[error("random source failed: {0}")]
    Random(String),
}

impl ClientError {
    /// Who is at fault.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unreachable { kind, .. } => *kind,
            Self::Handshake(_) | Self::Lost(_) => ErrorKind::LocalNetwork,
            Self::Refused { code, .. } => code.kind(),
            Self::Unexpected(_) => ErrorKind::Relay,
            Self::Random(_) => ErrorKind::Internal,
        }
    }
}

/// Something the relay sent without being asked.
#[derive(Debug)]
pub enum Event {
    /// Messages from a subscribed mailbox.
    Push(msg::Push),
    /// The session is over.
    Closed(CloseReason),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The relay said why (for example, it is shutting down).
    Relay(msg::Error),
    /// The connection ended without a word.
    Eof,
    /// Reading failed.
    Io(String),
    /// The relay sent bytes that break the protocol (or the path altered them).
    Protocol(String),
}

struct Outgoing {
    body: request::Body,
    reply: oneshot::Sender<response::Result>,
}

/// A live session with a relay.
pub struct RelayConnection {
    requests: mpsc::Sender<Outgoing>,
    events: mpsc::UnboundedReceiver<Event>,
    handshake_hash: [u8; 32],
    version: u32,
}

impl std::fmt::Debug for RelayConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConnection")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The handshake's own deadline (callers bound connecting more tightly still).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(60);

/// Requests queued per connection before callers wait.
const QUEUE: usize = 4096;

/// How long one route is tried alone before the next starts beside it.
pub const ROUTE_STAGGER: Duration = Duration::from_millis(250);

/// What connecting to relays shares: the registered transports (their TLS session caches and
/// the download caps learned per route) and the proxies. Which route worked is remembered by
/// the caller (the profile keeps it per network). A [`crate::Client`] owns one, so two profiles
/// (or two devices) in one process share nothing.
pub struct Connector {
    transports: Transports,
    /// Proxies relays may be reached through (after the direct routes, or instead of them).
    proxies: Proxies,
}

/// The proxies a connector may go through.
#[derive(Clone, Debug, Default)]
pub struct Proxies {
    /// Their tls routes, in order of preference.
    pub routes: Vec<Route>,
    /// Never try a relay directly: only through these proxies.
    pub only: bool,
}

/// What happens while routes to a relay are searched, as it happens (for `pigeon connect` and
/// interfaces). Route texts are redacted (no secret path, no key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteProgress {
    /// An attempt started, `after` the search began.
    Trying {
        /// The route.
        route: String,
        /// Since the search began.
        after: Duration,
    },
    /// An attempt failed.
    Failed {
        /// The route.
        route: String,
        /// Since the search began.
        after: Duration,
        /// Why, in words.
        error: String,
        /// Who is at fault; [`ErrorKind::LocalNetwork`] is what censorship looks like.
        kind: ErrorKind,
    },
    /// An attempt completed the relay's handshake; the search is over.
    Connected {
        /// The route.
        route: String,
        /// Since the search began.
        after: Duration,
    },
}

/// The attempt that reached a relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Won {
    /// The attempt as it is remembered (for [`crate::Profile::save_route_worked`]).
    pub key: String,
    /// The route, redacted, for people.
    pub route: String,
    /// How long the search took.
    pub after: Duration,
}

/// Runs `attempt` on each of `items` in order, each starting `stagger` after the one before
/// (at once when every one started so far has failed); the first success wins and the attempts
/// still running are dropped. `failed` hears of each failure as it happens. `None` when all
/// failed (or there was nothing to try).
pub(crate) async fn first_success<T, R, E, Fut>(
    items: impl IntoIterator<Item = T>,
    stagger: Duration,
    mut attempt: impl FnMut(T) -> Fut,
    mut failed: impl FnMut(E),
) -> Option<R>
where
    Fut: std::future::Future<Output = Result<R, E>>,
{
    use futures_util::StreamExt as _;
    let mut attempts = futures_util::stream::FuturesUnordered::new();
    let mut next = items.into_iter();
    if let Some(item) = next.next() {
        attempts.push(attempt(item));
    }
    while !attempts.is_empty() {
        tokio::select! {
            Some(result) = attempts.next() => match result {
                Ok(won) => return Some(won),
                Err(e) => {
                    failed(e);
                    if attempts.is_empty()
                        && let Some(item) = next.next()
                    {
                        attempts.push(attempt(item));
                    }
                }
            },
            () = tokio::time::sleep(stagger) => {
                if let Some(item) = next.next() {
                    attempts.push(attempt(item));
                }
            }
        }
    }
    None
}

/// A progress sink that ignores everything.
pub fn no_progress(_: RouteProgress) {}

/// Every transport this build dials, registered in one place: a new transport is its crate and
/// one line here.
///
/// # Errors
/// [`TlsError::Setup`] if BoringSSL refuses Chrome's settings (a broken build).
pub fn transports() -> Result<Transports, TlsError> {
    Ok(Transports::new()
        .with(pigeon_transport::tcp::TcpDial)
        .with(pigeon_transport_tls::Dialer::new()?))
}

fn dial_failed(tried: String, e: &DialError) -> ClientError {
    ClientError::Unreachable {
        tried,
        kind: e.kind(),
        last: e.to_string(),
    }
}

/// One way to try a relay.
#[derive(Clone)]
enum Attempt {
    /// Straight to one of its routes.
    Direct(Route),
    /// Through a proxy to one of its tls routes.
    Via { proxy: Route, target: Route },
}

impl Attempt {
    /// How it is remembered (the winning attempt goes first next time) and reported.
    fn key(&self) -> String {
        match self {
            Self::Direct(route) => route.to_string(),
            Self::Via { proxy, target } => format!("{target} via {proxy}"),
        }
    }

    fn redacted(&self) -> String {
        match self {
            Self::Direct(route) => route.redacted(),
            Self::Via { proxy, target } => {
                format!("{} via proxy {}", target.redacted(), proxy.redacted())
            }
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// Why no route worked, route by route, and what that points at: when every route failed
/// inside the network (no answer, reset, cut off), that is what blocking looks like.
fn unreachable_summary(failures: &[(String, String, ErrorKind)]) -> (String, ErrorKind) {
    let Some(last) = failures.last() else {
        return (
            "the link has no route this build supports".to_owned(),
            ErrorKind::BadInput,
        );
    };
    let each = if let [(_, error, _)] = failures {
        error.clone()
    } else {
        failures
            .iter()
            .map(|(route, error, _)| format!("{route}: {error}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if failures
        .iter()
        .all(|(_, _, kind)| *kind == ErrorKind::LocalNetwork)
    {
        (
            format!(
                "{each} — every route failed on the way (no answer, reset or refused): the \
                 network may be blocking the relay, or it is down; a proxy (`pigeon proxies add \
                 LINK`) or a domestic hop may get through"
            ),
            ErrorKind::LocalNetwork,
        )
    } else {
        (each, last.2)
    }
}

fn setup_failed(e: &TlsError) -> ClientError {
    ClientError::Unreachable {
        tried: "none".into(),
        last: format!("the tls transport could not start: {e}"),
        kind: ErrorKind::Internal,
    }
}

impl Connector {
    /// A connector with Chrome's TLS settings and nothing learned.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] of kind `Internal` if BoringSSL refuses Chrome's settings
    /// (a broken build).
    pub fn new() -> Result<Self, ClientError> {
        Ok(Self {
            transports: transports().map_err(|e| setup_failed(&e))?,
            proxies: Proxies::default(),
        })
    }

    /// The transports it dials (learned download caps live in their dialers).
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// Goes through `proxies` from now on.
    pub fn set_proxies(&mut self, proxies: Proxies) {
        self.proxies = proxies;
    }

    /// Connects through the link's routes (see [`RelayConnection::connect_with`]), trying the
    /// attempt `best` first (a route remembered for this network, see [`crate::network`]) and
    /// telling `progress` about every attempt; returns the attempt that won.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] listing every route tried and why each failed, when none
    /// worked.
    pub async fn connect_reporting(
        &self,
        link: &RelayLink,
        timeout: Duration,
        best: Option<&str>,
        progress: &(dyn Fn(RouteProgress) + Send + Sync),
    ) -> Result<(RelayConnection, Won), ClientError> {
        RelayConnection::connect_routes(
            &self.transports,
            link,
            &self.proxies,
            best,
            timeout,
            progress,
        )
        .await
    }
}

impl RelayConnection {
    /// Connects through the link's routes with a dialer of its own (nothing shared with other
    /// connections): for tools and tests. A client uses its [`Connector`].
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] listing every route tried, when none worked.
    pub async fn connect(link: &RelayLink, timeout: Duration) -> Result<Self, ClientError> {
        let transports = transports().map_err(|e| setup_failed(&e))?;
        Self::connect_with(&transports, link, timeout).await
    }

    /// Connects through the link's routes, returning the first that completes a handshake.
    ///
    /// Routes are tried in parallel with staggered starts ([`ROUTE_STAGGER`] apart, or at once
    /// when the one before has failed): a blocked route costs a quarter of a second, not its
    /// whole timeout.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] listing every route tried, when none worked.
    pub async fn connect_with(
        transports: &Transports,
        link: &RelayLink,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::connect_routes(
            transports,
            link,
            &Proxies::default(),
            None,
            timeout,
            &no_progress,
        )
        .await?
        .0)
    }

    /// As [`Self::connect_with`], also through `proxies` (after the direct routes, or only
    /// through them), trying the attempt `best` first and telling `progress` about each
    /// attempt; returns the attempt that won.
    async fn connect_routes(
        transports: &Transports,
        link: &RelayLink,
        proxies: &Proxies,
        best: Option<&str>,
        timeout: Duration,
        progress: &(dyn Fn(RouteProgress) + Send + Sync),
    ) -> Result<(Self, Won), ClientError> {
        let mut routes: Vec<Attempt> = Vec::new();
        if !proxies.only {
            routes.extend(
                link.routes()
                    .iter()
                    .filter(|r| transports.supports(r.transport()))
                    .cloned()
                    .map(Attempt::Direct),
            );
        }
        for proxy in &proxies.routes {
            for target in link.routes() {
                if *target.transport() == pigeon_transport::Transport::Tls {
                    routes.push(Attempt::Via {
                        proxy: proxy.clone(),
                        target: target.clone(),
                    });
                }
            }
        }
        if let Some(best) = best
            && let Some(at) = routes.iter().position(|r| r.key() == best)
        {
            let route = routes.remove(at);
            routes.insert(0, route);
        }
        let tried = if routes.is_empty() {
            "none".to_owned()
        } else {
            routes
                .iter()
                .map(Attempt::redacted)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let started = Instant::now();
        let mut failures: Vec<(String, String, ErrorKind)> = Vec::new();
        let attempt = |route: Attempt| {
            let key = *link.relay_key();
            progress(RouteProgress::Trying {
                route: route.redacted(),
                after: started.elapsed(),
            });
            async move {
                let result = match &route {
                    Attempt::Direct(direct) => {
                        Self::connect_route_with(transports, direct, &key, timeout).await
                    }
                    Attempt::Via { proxy, target } => {
                        Self::connect_via(transports, proxy, target, &key, timeout).await
                    }
                };
                match result {
                    Ok(conn) => Ok((route, conn)),
                    Err(e) => Err((route, e)),
                }
            }
        };
        let failed = |(route, e): (Attempt, ClientError)| {
            let error = match &e {
                ClientError::Unreachable { last, .. } => last.clone(),
                other => other.to_string(),
            };
            progress(RouteProgress::Failed {
                route: route.redacted(),
                after: started.elapsed(),
                error: error.clone(),
                kind: e.kind(),
            });
            failures.push((route.redacted(), error, e.kind()));
        };
        if let Some((route, conn)) = first_success(routes, ROUTE_STAGGER, attempt, failed).await {
            let won = Won {
                key: route.key(),
                route: route.redacted(),
                after: started.elapsed(),
            };
            progress(RouteProgress::Connected {
                route: won.route.clone(),
                after: won.after,
            });
            return Ok((conn, won));
        }
        let (last, kind) = unreachable_summary(&failures);
        Err(ClientError::Unreachable { tried, last, kind })
    }

    /// Connects to the relay at `target` (a tls route) through the proxy at `proxy`.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] naming both when the proxy or the relay behind it fails;
    /// [`ClientError::Handshake`] if the relay is not the one the key names.
    pub async fn connect_via(
        transports: &Transports,
        proxy: &Route,
        target: &Route,
        relay_key: &[u8; 32],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tried = format!("{} via proxy {}", target.redacted(), proxy.redacted());
        let stream = transports
            .dial_via(proxy, target, timeout)
            .await
            .map_err(|e| dial_failed(tried.clone(), &e))?;
        match tokio::time::timeout(timeout, Self::over(stream, relay_key)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Unreachable {
                tried,
                last: format!("no handshake answer within {timeout:?}"),
                kind: ErrorKind::LocalNetwork,
            }),
        }
    }

    /// Connects through one route to the relay with static key `relay_key`.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] if the route fails, [`ClientError::Handshake`] if the
    /// relay is not the one the key names.
    pub async fn connect_route(
        route: &Route,
        relay_key: &[u8; 32],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let transports = transports().map_err(|e| setup_failed(&e))?;
        Self::connect_route_with(&transports, route, relay_key, timeout).await
    }

    /// [`Self::connect_route`] with a given dialer.
    ///
    /// # Errors
    /// As [`Self::connect_route`].
    pub async fn connect_route_with(
        transports: &Transports,
        route: &Route,
        relay_key: &[u8; 32],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = transports
            .dial(route, timeout)
            .await
            .map_err(|e| dial_failed(route.redacted(), &e))?;
        match tokio::time::timeout(timeout, Self::over(stream, relay_key)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Unreachable {
                tried: route.redacted(),
                last: format!("no handshake answer within {timeout:?}"),
                kind: ErrorKind::LocalNetwork,
            }),
        }
    }

    /// Runs the handshake over an open stream and starts the session's tasks. The protocol is
    /// [`ClientSession`]'s (sans-IO, in `pigeon-proto`); this moves its bytes.
    ///
    /// # Errors
    /// [`ClientError::Handshake`], [`ClientError::Refused`] or [`ClientError::Lost`].
    pub async fn over(
        mut stream: Box<dyn Connection>,
        relay_key: &[u8; 32],
    ) -> Result<Self, ClientError> {
        let entropy = Entropy::from_os().map_err(ClientError::Handshake)?;
        let mut session =
            ClientSession::connect(relay_key, entropy, Instant::now(), HANDSHAKE_LIMIT)
                .map_err(ClientError::Handshake)?;
        let mut wire = Vec::new();
        let mut buf = vec![0u8; 4096];
        let version = loop {
            if let Some(event) = session.poll_event() {
                match event {
                    SessionEvent::Connected { version } => break version,
                    SessionEvent::Closed(closed) => return Err(handshake_failed(closed)),
                    _ => continue,
                }
            }
            wire.clear();
            if session.poll_transmit(&mut wire) {
                stream
                    .write_all(&wire)
                    .await
                    .map_err(|e| ClientError::Lost(e.to_string()))?;
            }
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + HANDSHAKE_LIMIT);
            match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
                Err(_) => session.handle_timeout(Instant::now()),
                Ok(Ok(0)) => session.handle_eof(),
                Ok(Ok(n)) => session.handle_input(Instant::now(), &buf[..n]),
                Ok(Err(e)) => return Err(ClientError::Lost(e.to_string())),
            }
        };
        let handshake_hash = *session.handshake_hash().ok_or_else(|| {
            ClientError::Lost("the session opened without a handshake hash".to_owned())
        })?;
        let shared = Arc::new(Mutex::new(Driven {
            session,
            pending: HashMap::new(),
        }));
        let (req_tx, req_rx) = mpsc::channel(QUEUE);
        // Unbounded on purpose: the reader must never wait for the application, or a response
        // the application is waiting for could sit behind a push nobody takes. What can queue
        // is bounded by the relay's per-subscription window of unacknowledged messages.
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (read_half, write_half) = tokio::io::split(stream);
        tokio::spawn(writer(write_half, Arc::clone(&shared), req_rx));
        tokio::spawn(reader(read_half, shared, ev_tx));
        Ok(Self {
            requests: req_tx,
            events: ev_rx,
            handshake_hash,
            version,
        })
    }

    /// The channel's handshake hash, which ownership proofs sign.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// The protocol version agreed with the relay.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Sends one request and waits for its answer; an error answer becomes
    /// [`ClientError::Refused`].
    ///
    /// # Errors
    /// [`ClientError::Refused`] or [`ClientError::Lost`].
    pub async fn request(&self, body: request::Body) -> Result<response::Result, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Outgoing { body, reply: tx })
            .await
            .map_err(|_| ClientError::Lost("the session has ended".to_owned()))?;
        match rx.await {
            Ok(response::Result::Error(e)) => Err(ClientError::Refused {
                code: e.error_code(),
                retry_after: e
                    .retry_after_ms
                    .map(|ms| Duration::from_millis(u64::from(ms))),
                message: e.message,
            }),
            Ok(r) => Ok(r),
            Err(_) => Err(ClientError::Lost(
                "the connection closed before the relay answered".to_owned(),
            )),
        }
    }

    /// Queues a request without waiting for its answer (for pipelining): the returned receiver
    /// yields the raw result, or an error once the session is lost.
    ///
    /// # Errors
    /// [`ClientError::Lost`] if the session has ended.
    pub async fn submit(
        &self,
        body: request::Body,
    ) -> Result<oneshot::Receiver<response::Result>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Outgoing { body, reply: tx })
            .await
            .map_err(|_| ClientError::Lost("the session has ended".to_owned()))?;
        Ok(rx)
    }

    /// The next push or close notice; `None` once the session is over and all were taken
    /// (or [`Self::take_events`] took the stream).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Takes the stream of pushes and close notices, to be read elsewhere (for example merged
    /// with other relays' streams); requests keep working through `self`.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (_closed, empty) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, empty)
    }

    /// Creates `mailbox` on the relay (idempotent).
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn create_mailbox(
        &self,
        key: &SigningKey,
        mailbox: &MailboxId,
        cap_hash: [u8; 32],
    ) -> Result<(), ClientError> {
        let signature = auth::sign(
            key,
            AuthOp::CreateMailbox,
            &self.handshake_hash,
            &mailbox.0,
            &cap_hash,
        );
        match self
            .request(request::Body::CreateMailbox(msg::CreateMailbox {
                mailbox_id: mailbox.0.to_vec(),
                recipient_key: key.verifying_key().to_bytes().to_vec(),
                sender_cap_hash: cap_hash.to_vec(),
                signature: signature.to_vec(),
                kind: MailboxKind::Inbox.as_u32(),
            }))
            .await?
        {
            response::Result::Created(_) => Ok(()),
            _ => Err(ClientError::Unexpected("create mailbox")),
        }
    }

    /// Creates a group's log on the relay, owned by `owner` (which may update and delete it)
    /// and opened by the member capability whose hash is `cap_hash` (which posts and reads).
    /// Idempotent: a retry with the same owner and hash succeeds.
    ///
    /// # Errors
    /// As [`Self::request`]; [`ErrorCode::MailboxExists`] if the id is taken otherwise.
    pub async fn create_log(
        &self,
        owner: &SigningKey,
        id: &MailboxId,
        cap_hash: [u8; 32],
    ) -> Result<(), ClientError> {
        let signature = auth::sign(
            owner,
            AuthOp::CreateMailbox,
            &self.handshake_hash,
            &id.0,
            &cap_hash,
        );
        match self
            .request(request::Body::CreateMailbox(msg::CreateMailbox {
                mailbox_id: id.0.to_vec(),
                recipient_key: owner.verifying_key().to_bytes().to_vec(),
                sender_cap_hash: cap_hash.to_vec(),
                signature: signature.to_vec(),
                kind: MailboxKind::Log.as_u32(),
            }))
            .await?
        {
            response::Result::Created(_) => Ok(()),
            _ => Err(ClientError::Unexpected("create log")),
        }
    }

    /// Subscribes to a log with a member capability: pushes of the messages with sequence
    /// numbers above `after_seq` follow as [`Event::Push`], the kept ones first, then new
    /// ones. Returns how many were waiting (exactly as many pushes of kept messages follow,
    /// unless some expire meanwhile). Acks free the push window and delete nothing.
    ///
    /// With a retired capability the pushes stop at the last message before it was replaced;
    /// a subscription made with the current one stops there too once an update replaces it.
    /// Either way the log holds the new capability for those still in the group: subscribe
    /// again with it, after the last sequence number seen.
    ///
    /// # Errors
    /// As [`Self::request`]; [`ErrorCode::BadCapability`] if the capability never opened it.
    pub async fn subscribe_log(
        &self,
        id: &MailboxId,
        member_cap: &[u8; 32],
        after_seq: u64,
    ) -> Result<u64, ClientError> {
        match self
            .request(request::Body::Subscribe(msg::Subscribe {
                mailbox_id: id.0.to_vec(),
                signature: Vec::new(),
                after_seq: Some(after_seq),
                member_cap: member_cap.to_vec(),
            }))
            .await?
        {
            response::Result::Subscribed(s) => Ok(s.pending),
            _ => Err(ClientError::Unexpected("subscribe log")),
        }
    }

    /// Replaces a log's member capability by the one whose hash is `new_cap_hash`, and its
    /// owner by `new_owner` if given; `owner` is the current owner. Returns once the change is
    /// durable. The capability replaced is retired: it reads the log up to the last message
    /// before this update and posts nothing more ([`ErrorCode::CapabilityRetired`]). Post the
    /// new capability into the log (with the old one) *before* updating, so that every member
    /// still reading with the old one finds it.
    ///
    /// Idempotent: a retry after a lost answer succeeds, even when it changed the owner (the
    /// retry is then proven with `new_owner`).
    ///
    /// # Errors
    /// As [`Self::request`]; [`ErrorCode::BadSignature`] if `owner` does not own the log,
    /// [`ErrorCode::BadRequest`] for an inbox.
    pub async fn update_log(
        &self,
        owner: &SigningKey,
        id: &MailboxId,
        new_owner: Option<&SigningKey>,
        new_cap_hash: [u8; 32],
    ) -> Result<(), ClientError> {
        let new_key = new_owner.map(|k| k.verifying_key().to_bytes());
        let attempt = |signer: &SigningKey| {
            let digest = auth::update_digest(new_key.as_ref(), &new_cap_hash);
            let signature = auth::sign(
                signer,
                AuthOp::UpdateMailbox,
                &self.handshake_hash,
                &id.0,
                &digest,
            );
            self.request(request::Body::UpdateMailbox(msg::UpdateMailbox {
                mailbox_id: id.0.to_vec(),
                new_owner_key: new_key.map(|k| k.to_vec()).unwrap_or_default(),
                new_cap_hash: new_cap_hash.to_vec(),
                signature: signature.to_vec(),
            }))
        };
        let answer = match (attempt(owner).await, new_owner) {
            // The owner changed already: this is a retry of an update that was made.
            (
                Err(ClientError::Refused {
                    code: ErrorCode::BadSignature,
                    ..
                }),
                Some(new_owner),
            ) => attempt(new_owner).await?,
            (other, _) => other?,
        };
        match answer {
            response::Result::Done(_) => Ok(()),
            _ => Err(ClientError::Unexpected("update log")),
        }
    }

    /// Posts a message; returns once the relay holds it durably. A retry with the same
    /// `message_id` is answered with the stored message's sequence number and stores nothing.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn send(
        &self,
        mailbox: &MailboxId,
        sender_cap: &[u8; 32],
        message_id: [u8; 16],
        ciphertext: Vec<u8>,
    ) -> Result<msg::Sent, ClientError> {
        self.post(mailbox, sender_cap, message_id, ciphertext, false)
            .await
    }

    /// As [`Self::send`], for a `message_id` never handed to any connection before: the relay
    /// skips looking for an earlier copy. Only for a surely first attempt (wrongly used, the
    /// relay may store the message twice).
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn send_first_attempt(
        &self,
        mailbox: &MailboxId,
        sender_cap: &[u8; 32],
        message_id: [u8; 16],
        ciphertext: Vec<u8>,
    ) -> Result<msg::Sent, ClientError> {
        self.post(mailbox, sender_cap, message_id, ciphertext, true)
            .await
    }

    async fn post(
        &self,
        mailbox: &MailboxId,
        sender_cap: &[u8; 32],
        message_id: [u8; 16],
        ciphertext: Vec<u8>,
        first_attempt: bool,
    ) -> Result<msg::Sent, ClientError> {
        match self
            .request(request::Body::Send(msg::Send {
                mailbox_id: mailbox.0.to_vec(),
                sender_cap: sender_cap.to_vec(),
                message_id: message_id.to_vec(),
                ciphertext,
                first_attempt,
            }))
            .await?
        {
            response::Result::Sent(s) => Ok(s),
            _ => Err(ClientError::Unexpected("send")),
        }
    }

    /// Subscribes to a mailbox this key owns; pushes follow as [`Event::Push`]. Returns how
    /// many messages were waiting.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn subscribe(
        &self,
        key: &SigningKey,
        mailbox: &MailboxId,
    ) -> Result<u64, ClientError> {
        let signature = auth::sign(
            key,
            AuthOp::Subscribe,
            &self.handshake_hash,
            &mailbox.0,
            &[0; 32],
        );
        match self
            .request(request::Body::Subscribe(msg::Subscribe {
                mailbox_id: mailbox.0.to_vec(),
                signature: signature.to_vec(),
                after_seq: None,
                member_cap: Vec::new(),
            }))
            .await?
        {
            response::Result::Subscribed(s) => Ok(s.pending),
            _ => Err(ClientError::Unexpected("subscribe")),
        }
    }

    /// Acknowledges delivered messages, deleting them durably. Returns how many were deleted.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn ack(&self, mailbox: &MailboxId, seqs: Vec<u64>) -> Result<u64, ClientError> {
        match self
            .request(request::Body::Ack(msg::Ack {
                mailbox_id: mailbox.0.to_vec(),
                seqs,
            }))
            .await?
        {
            response::Result::Acked(a) => Ok(a.deleted),
            _ => Err(ClientError::Unexpected("ack")),
        }
    }

    /// Deletes a mailbox this key owns.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn delete_mailbox(
        &self,
        key: &SigningKey,
        mailbox: &MailboxId,
    ) -> Result<(), ClientError> {
        let signature = auth::sign(
            key,
            AuthOp::DeleteMailbox,
            &self.handshake_hash,
            &mailbox.0,
            &[0; 32],
        );
        match self
            .request(request::Body::DeleteMailbox(msg::DeleteMailbox {
                mailbox_id: mailbox.0.to_vec(),
                signature: signature.to_vec(),
            }))
            .await?
        {
            response::Result::Done(_) => Ok(()),
            _ => Err(ClientError::Unexpected("delete mailbox")),
        }
    }

    /// Publishes key packages into `slot`, owned by `key`. Returns the one-time packages held.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn publish_key_packages(
        &self,
        key: &SigningKey,
        slot: &[u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u32, ClientError> {
        let digest = auth::packages_digest(&one_time, last_resort.as_deref());
        let signature = auth::sign(
            key,
            AuthOp::PublishKeyPackages,
            &self.handshake_hash,
            slot,
            &digest,
        );
        match self
            .request(request::Body::PublishKeyPackages(msg::PublishKeyPackages {
                slot_id: slot.to_vec(),
                owner_key: key.verifying_key().to_bytes().to_vec(),
                signature: signature.to_vec(),
                one_time,
                last_resort,
            }))
            .await?
        {
            response::Result::Published(p) => Ok(p.one_time_available),
            _ => Err(ClientError::Unexpected("publish key packages")),
        }
    }

    /// Takes one key package from `slot`.
    ///
    /// # Errors
    /// As [`Self::request`]; [`ErrorCode::NoKeyPackage`] when the slot is empty.
    pub async fn fetch_key_package(&self, slot: &[u8; 32]) -> Result<msg::KeyPackage, ClientError> {
        match self
            .request(request::Body::FetchKeyPackage(msg::FetchKeyPackage {
                slot_id: slot.to_vec(),
            }))
            .await?
        {
            response::Result::KeyPackage(k) => Ok(k),
            _ => Err(ClientError::Unexpected("fetch key package")),
        }
    }

    /// Round trip to the relay.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self
            .request(request::Body::Ping(msg::Ping {
                payload: Vec::new(),
            }))
            .await?
        {
            response::Result::Pong(_) => Ok(()),
            _ => Err(ClientError::Unexpected("ping")),
        }
    }
}

/// What a handshake that ended without opening the channel means for the caller.
fn handshake_failed(closed: Closed) -> ClientError {
    match closed {
        Closed::Refused { code, message } => ClientError::Refused {
            code,
            message,
            retry_after: None,
        },
        Closed::Eof => {
            ClientError::Lost("the relay closed the connection during the handshake".to_owned())
        }
        other => ClientError::Lost(other.to_string()),
    }
}

/// The session and the callers waiting for answers, shared by the two tasks that move bytes:
/// the writer (which alone seals, so records go out in order) and the reader.
struct Driven {
    session: ClientSession,
    pending: HashMap<u64, oneshot::Sender<response::Result>>,
}

type Shared = Arc<Mutex<Driven>>;

async fn writer(
    mut stream: WriteHalf<Box<dyn Connection>>,
    shared: Shared,
    mut requests: mpsc::Receiver<Outgoing>,
) {
    let mut wire = Vec::new();
    while let Some(first) = requests.recv().await {
        wire.clear();
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match requests.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        {
            let Ok(mut driven) = shared.lock() else {
                return;
            };
            for out in batch {
                match driven.session.request(out.body) {
                    Ok(id) => {
                        driven.pending.insert(id, out.reply);
                    }
                    // The session is over: dropping the reply tells the caller.
                    Err(_) => return,
                }
            }
            driven.session.poll_transmit(&mut wire);
        }
        if !wire.is_empty() && stream.write_all(&wire).await.is_err() {
            if let Ok(mut driven) = shared.lock() {
                // Dropping the pending replies tells every waiting caller the session is lost.
                driven.session.close_locally();
                driven.pending.clear();
            }
            return;
        }
        if wire.capacity() > 1 << 20 {
            wire = Vec::new();
        }
    }
    let _ = stream.shutdown().await;
}

async fn reader(
    mut stream: ReadHalf<Box<dyn Connection>>,
    shared: Shared,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let close_reason = 'read: loop {
        let read = stream.read(&mut buf).await;
        let Ok(mut driven) = shared.lock() else {
            break CloseReason::Io("the session's state is poisoned".to_owned());
        };
        match read {
            Ok(0) => driven.session.handle_eof(),
            Ok(n) => driven.session.handle_input(Instant::now(), &buf[..n]),
            Err(e) => {
                driven.session.close_locally();
                driven.pending.clear();
                break CloseReason::Io(e.to_string());
            }
        }
        while let Some(event) = driven.session.poll_event() {
            match event {
                SessionEvent::Response { id, result } => {
                    if let Some(waiter) = driven.pending.remove(&id) {
                        let _ = waiter.send(result);
                    }
                }
                SessionEvent::Push(p) => {
                    // An error means nobody listens for pushes; keep serving responses.
                    let _ = events.send(Event::Push(p));
                }
                SessionEvent::Closed(closed) => {
                    driven.pending.clear();
                    break 'read match closed {
                        Closed::Relay(e) => CloseReason::Relay(e),
                        Closed::Eof | Closed::Local => CloseReason::Eof,
                        other => CloseReason::Protocol(other.to_string()),
                    };
                }
                _ => {}
            }
        }
    };
    let _ = events.send(Event::Closed(close_reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first success wins; a failure starts the next at once; an attempt that hangs costs
    /// only the stagger.
    #[tokio::test]
    async fn the_first_success_wins_and_a_hanging_attempt_costs_only_the_stagger() {
        let mut failed = Vec::new();
        let won = first_success(
            [0u8, 1, 2],
            Duration::from_secs(30),
            |i| async move {
                match i {
                    0 => Err(i),
                    _ => Ok(i),
                }
            },
            |e| failed.push(e),
        )
        .await;
        assert_eq!((won, failed.as_slice()), (Some(1), [0u8].as_slice()));

        let started = Instant::now();
        let won = first_success(
            [0u8, 1],
            Duration::from_millis(50),
            |i| async move {
                if i == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, ()>(i)
            },
            |()| {},
        )
        .await;
        assert_eq!(won, Some(1));
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut failed = Vec::new();
        let none: Option<u8> = first_success(
            [1u8, 2],
            Duration::from_millis(1),
            |i| async move { Err(i) },
            |e| {
                failed.push(e);
            },
        )
        .await;
        assert_eq!((none, failed.len()), (None, 2));
    }
}
