//! The Pigeonpost relay: anonymous mailboxes on a durable store, behind a Noise channel: one-way
//! inboxes, and logs that a group's members post to and each read from their own position.
//!
//! [`run`] serves a listener until `shutdown` resolves, then drains: it stops accepting, lets
//! every connection finish the requests it has read (each answered only once durable), and
//! returns. Everything it needs is injected, so tests run it in-process and the `pigeon relay`
//! command runs it on real sockets.
//!
//! The relay learns no identity. A connection proves nothing about who it is; it proves
//! ownership of a mailbox with a signature bound to the channel (see `pigeon_proto::auth`) and
//! posts with a capability whose hash the mailbox holds (a log's readers show its member
//! capability too). Logs carry connection numbers, error
//! kinds and counts, never ids, keys or payloads.

mod conn;
mod hub;
pub mod metrics;

pub use metrics::Metrics;

use pigeon_proto::StaticKeypair;
use pigeon_store::{Expired, MailboxStore, Renewal};
use pigeon_transport::admission::{Admission, AdmissionLimits, Ticket};
use pigeon_transport::tcp::TcpAccept;
use pigeon_transport::{Accept, Accepted, Source, TransportError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Key-package fetches per second allowed per slot (sustained)...
const FETCHES_PER_SEC: f32 = 2.0;
/// ...and in a burst.
const FETCH_BURST: f32 = 20.0;

/// Tunables of a relay. The defaults suit a public relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Most simultaneous connections; further ones are closed at once.
    pub max_connections: usize,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// Most pushed-but-unacknowledged messages per subscription.
    pub push_window: usize,
    /// Most bytes of ciphertext in one push read.
    pub push_bytes: usize,
    /// Sends per second allowed per sender capability (sustained).
    pub sends_per_sec: f32,
    /// Burst of sends allowed per sender capability.
    pub send_burst: f32,
    /// How often expired messages are swept.
    pub expiry_interval: Duration,
    /// How long a graceful drain may take before connections are cut.
    pub drain_timeout: Duration,
    /// The pool of connections still in their handshake and the per-source caps of the plain
    /// `tcp` listener (the tls front has its own, in its configuration).
    pub admission: AdmissionLimits,
    /// A connection with no subscription that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Mailboxes, logs and key-package publications the relay makes per second, from
    /// everyone (sustained; ten times this in a burst).
    pub creations_per_sec: f32,
    /// The same from one source address on the plain `tcp` listener (sustained; ten times
    /// this in a burst).
    pub source_creations_per_sec: f32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_connections: 19_000,
            handshake_timeout: Duration::from_secs(15),
            push_window: 512,
            push_bytes: 1 << 20,
            sends_per_sec: 500.0,
            send_burst: 2000.0,
            expiry_interval: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(10),
            admission: AdmissionLimits::default(),
            idle_timeout: Duration::from_secs(120),
            creations_per_sec: 200.0,
            source_creations_per_sec: 10.0,
        }
    }
}

impl<S> Shared<S> {
    /// Takes one creation from the relay's rate; `Err(wait)` when it is spent.
    pub(crate) fn take_creation(&self, now: std::time::Instant) -> Result<(), Duration> {
        match self.creations.lock() {
            Ok(mut bucket) => bucket.take(1.0, now),
            Err(_) => Ok(()),
        }
    }
}

/// Everything connections share.
pub(crate) struct Shared<S> {
    pub(crate) store: S,
    pub(crate) keys: StaticKeypair,
    pub(crate) config: RelayConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hub: hub::Hub,
    pub(crate) limiter: conn::Limiter,
    /// Per-slot key-package fetch limits.
    pub(crate) fetch_limiter: conn::Limiter,
    /// Per-source creation limits (plain `tcp`).
    pub(crate) source_creations: conn::Limiter,
    /// The relay's rate of creations.
    creations: std::sync::Mutex<pigeon_proto::rate::TokenBucket>,
    /// Strangers' handshakes and per-source counts of the plain `tcp` listener.
    pool: Arc<Admission>,
    active: AtomicUsize,
    idle: Notify,
    /// Set, and `stop` notified, when the relay starts draining.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) stop: Notify,
}

impl<S> Shared<S> {
    /// The state every connection of a relay shares, with nothing running yet.
    pub(crate) fn new(
        store: S,
        keys: StaticKeypair,
        config: RelayConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            keys,
            limiter: conn::Limiter::new(config.sends_per_sec, config.send_burst),
            fetch_limiter: conn::Limiter::new(FETCHES_PER_SEC, FETCH_BURST),
            source_creations: conn::Limiter::new(
                config.source_creations_per_sec.max(0.1),
                config.source_creations_per_sec.max(0.1) * 10.0,
            ),
            creations: std::sync::Mutex::new(pigeon_proto::rate::TokenBucket::new(
                config.creations_per_sec.max(1.0),
                config.creations_per_sec.max(1.0) * 10.0,
                std::time::Instant::now(),
            )),
            pool: Admission::new(config.admission),
            config,
            metrics,
            hub: hub::Hub::default(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop: Notify::new(),
        }
    }
}

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Accepting connections failed in a way that will not pass.
    #[error("accepting connections failed: {0}")]
    Accept(#[source] TransportError),
}

/// Where a relay's connections come from: each transport's [`Accept`]or, added with one line
/// (`listeners.add(TcpAccept(listener))`). Each acceptor's connections are admitted and run in
/// tasks of that acceptor's own stream type, so no connection pays for a boxed stream.
pub struct Listeners<S: MailboxStore> {
    #[expect(
        clippy::type_complexity,
        reason = "a list of start functions, one per acceptor type"
    )]
    starts: Vec<Box<dyn FnOnce(Arc<Shared<S>>, AcceptFailed) -> JoinHandle<()> + Send>>,
}

/// Where an acceptor reports that it failed for good.
type AcceptFailed = tokio::sync::mpsc::Sender<TransportError>;

impl<S: MailboxStore> Default for Listeners<S> {
    fn default() -> Self {
        Self { starts: Vec::new() }
    }
}

impl<S: MailboxStore> std::fmt::Debug for Listeners<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("acceptors", &self.starts.len())
            .finish()
    }
}

impl<S: MailboxStore> Listeners<S> {
    /// No listeners yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves the connections `acceptor` yields.
    pub fn add<A: Accept>(&mut self, acceptor: A) -> &mut Self {
        self.starts.push(Box::new(move |shared, failed| {
            tokio::spawn(accept_loop(acceptor, shared, failed))
        }));
        self
    }
}

/// Serves the plain `tcp` `listener` with `store` and the relay's static `keys` until
/// `shutdown` resolves, then drains gracefully.
///
/// # Errors
/// [`RelayError::Accept`] if the listener fails permanently.
pub async fn run<S: MailboxStore>(
    listener: TcpListener,
    store: S,
    keys: StaticKeypair,
    config: RelayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let mut listeners = Listeners::new();
    listeners.add(TcpAccept(listener));
    serve(listeners, store, keys, config, metrics, shutdown).await
}

/// One connection's task: serves it to its end, then counts it gone.
///
/// A plain `fn` returning an `async` block, not an `async fn`: an `async fn` keeps its arguments
/// in the task twice (as passed, and as the body's own bindings), which for a tunnel session is
/// 80 bytes more in every idle connection. The same holds for the functions it awaits, which
/// therefore borrow the stream and the shared state instead of taking them.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice in every connection's task"
)]
fn connection<S: MailboxStore, T: pigeon_transport::ServerStream>(
    mut stream: T,
    shared: Arc<Shared<S>>,
    mut ticket: Option<Ticket>,
    source: Option<u128>,
) -> impl Future<Output = ()> {
    async move {
        conn::serve(&mut stream, &shared, &mut ticket, source).await;
        drop(ticket);
        shared.metrics.connections_open.dec();
        if shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.idle.notify_waiters();
        }
    }
}

/// Serves every acceptor in `listeners` with `store` and the relay's static `keys` until
/// `shutdown` resolves, then drains gracefully: it stops accepting, lets every connection finish
/// the requests it has read (each answered only once durable), and returns.
///
/// # Errors
/// [`RelayError::Accept`] if an acceptor fails for good.
pub async fn serve<S: MailboxStore>(
    listeners: Listeners<S>,
    store: S,
    keys: StaticKeypair,
    config: RelayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let news = store.news();
    let shared = Arc::new(Shared::new(store, keys, config, metrics));
    let expiry = tokio::spawn(expiry_loop(Arc::clone(&shared)));
    // Messages other relay nodes stored: their subscribers here read them from the store.
    let news = news.map(|mut news| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(news) = news.recv().await {
                match news {
                    pigeon_store::News::Messages(mailbox) => shared.hub.wake(mailbox),
                    pigeon_store::News::Changed(mailbox) => shared.hub.recheck(mailbox),
                }
            }
        })
    });
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<TransportError>(4);
    let acceptors: Vec<_> = listeners
        .starts
        .into_iter()
        .map(|start| start(Arc::clone(&shared), failed_tx.clone()))
        .collect();
    drop(failed_tx);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(e) = failed.recv() => Err(RelayError::Accept(e)),
    };
    for acceptor in acceptors {
        acceptor.abort();
    }
    tracing::info!(
        connections = shared.active.load(Ordering::Relaxed),
        "draining"
    );
    // A sweep cut short here loses nothing: the store finishes what it was handed.
    expiry.abort();
    if let Some(news) = news {
        news.abort();
    }
    shared.stopping.store(true, Ordering::Release);
    shared.stop.notify_waiters();
    // Connections with subscriptions wait on their own wake-up, not on `stop`.
    shared.hub.wake_all();
    let drained = async {
        loop {
            let idle = shared.idle.notified();
            if shared.active.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    };
    if tokio::time::timeout(shared.config.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    result
}

/// Accepts from one acceptor until it stops, fails for good (reported on `failed`) or the relay
/// stops (the task is aborted), admitting and serving each connection.
async fn accept_loop<S: MailboxStore, A: Accept>(
    mut acceptor: A,
    shared: Arc<Shared<S>>,
    failed: AcceptFailed,
) {
    while let Some(next) = acceptor.accept().await {
        match next {
            Ok(accepted) => admit(&shared, accepted),
            Err(e) => {
                let _ = failed.send(e).await;
                return;
            }
        }
    }
}

/// Admits one connection (its source's caps, room on the relay) and starts serving it.
fn admit<S: MailboxStore, T: pigeon_transport::ServerStream>(
    shared: &Arc<Shared<S>>,
    accepted: Accepted<T>,
) {
    // The peer address is counted against its source's caps in memory, and otherwise not kept
    // or logged.
    let (ticket, source) = match accepted.source {
        Source::Address(peer) => match shared.pool.admit(peer) {
            Some(ticket) => {
                let source = ticket.source_key();
                (Some(ticket), Some(source))
            }
            None => {
                shared.metrics.refused_connections.inc();
                return;
            }
        },
        Source::Admitted(source) => (None, source),
    };
    // When full, strangers still in their handshake make room first.
    if shared.active.load(Ordering::Relaxed) >= shared.config.max_connections
        && !shared.pool.evict_oldest()
    {
        shared.metrics.refused_connections.inc();
        return;
    }
    shared.active.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections_open.inc();
    shared.metrics.connections_total.inc();
    tokio::spawn(connection(
        accepted.stream,
        Arc::clone(shared),
        ticket,
        source,
    ));
}

async fn expiry_loop<S: MailboxStore>(shared: Arc<Shared<S>>) {
    let mut renewed_day = None;
    loop {
        tokio::time::sleep(shared.config.expiry_interval).await;
        let now = unix_now();
        // A mailbox someone is subscribed to is in use, however long the subscription has
        // lasted: renewed once a day (subscribing renews it too).
        let day = now / 86_400;
        if renewed_day != Some(day) {
            renewed_day = Some(day);
            for id in shared.hub.watched() {
                if let Err(e) = shared.store.renew(Renewal::Mailbox(id), now).await {
                    tracing::warn!(error = %e, "renewing subscribed mailboxes failed");
                    break;
                }
            }
        }
        match shared.store.expire(now).await {
            Ok(Expired {
                messages,
                mailboxes,
                slots,
            }) => {
                if messages > 0 {
                    tracing::info!(expired = messages, "expired old messages");
                }
                if mailboxes + slots > 0 {
                    tracing::info!(mailboxes, slots, "expired idle mailboxes and slots");
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}

/// Unix seconds now. The only clock read in the relay besides tokio's timers.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
