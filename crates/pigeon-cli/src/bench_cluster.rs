//! `pigeon bench cluster`: relay nodes sharing a NATS JetStream cluster, under load and under
//! `kill -9`, beside one embedded relay node and beside JetStream publishing alone (issue #18).
//!
//! Everything runs on this machine: `--nodes` Debian `nats-server` processes in one JetStream
//! cluster (streams with three replicas, or as many as there are servers) and as many `pigeon
//! relay` processes with one key, each given every server's address. The load generator in this
//! process acts as the clients a messenger has:
//!
//! * **Senders**, `--senders` per relay node, each sending 1 KiB messages round-robin to every
//!   mailbox with `--window` sends in flight, so writers on different nodes race for the same
//!   mailboxes all the time. A send the relay did not answer (its node died, the store timed
//!   out) is sent again with the same message id — through another node if its own is gone —
//!   until it is answered, as a client's outbox does.
//! * **Receivers**, one per relay node, subscribed to the mailboxes of the *next* node's
//!   creation, so pushes cross nodes. They acknowledge what arrives; one that loses its node
//!   subscribes again through another.
//!
//! A ledger of every message checks the store's promises from outside:
//!
//! * `lost`: messages a relay acknowledged to their sender that never arrived;
//! * `duplicates`: messages stored twice (seen under two sequence numbers), or delivered again
//!   after the relay confirmed their acknowledgement. A message pushed again whose ack was not
//!   yet confirmed (the receiver's connection died first) is what at-least-once delivery means
//!   and is counted apart as `redelivered`; a client drops it by its id.
//!
//! With `--kill`, one nats-server and one relay node, chosen by the seed, are killed with
//! SIGKILL at seeded moments of the load and started again two seconds later.
//!
//! `msgs_per_s` counts first deliveries after a two-second warm-up until the load stops;
//! `p99_ms` is from a message's first send to its first delivery (at saturation: the senders
//! keep their windows full, so it includes queueing).

use crate::bench::machine;
use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_store_nats::NatsServer;
use pigeon_transport::RelayLink;
use pigeon_wire::msg::{self, request, response};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench cluster`.
#[derive(clap::Args, Debug)]
pub(crate) struct ClusterBenchArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// nats-server processes in the JetStream cluster, and relay nodes on it.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Mailboxes the load is spread over.
    #[arg(long, default_value_t = 48)]
    mailboxes: usize,
    /// Sender connections per relay node.
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// `kill -9` one nats-server and one relay node at seeded moments, and restart them.
    #[arg(long)]
    kill: bool,
    /// Seed of the kill plan (random when not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Only the cluster: leave out one embedded node and JetStream publishing alone.
    #[arg(long)]
    skip_compare: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const MSG_SIZE: usize = 1024;
/// Warm-up before first deliveries count.
const WARMUP: Duration = Duration::from_secs(2);
/// How long a killed process stays down.
const DOWN: Duration = Duration::from_secs(2);
/// After the load stops: how long senders may take to get every send answered, and receivers
/// to get every acknowledged message.
const DRAIN: Duration = Duration::from_secs(90);
/// Bound on one connection attempt.
const CONNECT: Duration = Duration::from_secs(3);

/// SplitMix64: the kill plan's randomness, repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` (`lo` when empty).
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % hi.saturating_sub(lo).max(1)
    }
}

/// One relay node: its process (none while it is down), its data and arguments.
struct Node {
    data: PathBuf,
    args: Vec<String>,
    process: Option<RelayProcess>,
}

impl Node {
    fn start(data: PathBuf, args: Vec<String>) -> anyhow::Result<Self> {
        let process = Some(Self::spawn(&data, &args)?);
        Ok(Self {
            data,
            args,
            process,
        })
    }

    fn spawn(data: &Path, args: &[String]) -> anyhow::Result<RelayProcess> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RelayProcess::start_for_load(data, &args)
    }

    /// Starts the node's process again, as systemd's `Restart=on-failure` would: a relay
    /// whose store does not answer yet (the cluster still electing leaders after a server
    /// died) exits, and is started again a second later, for up to a minute.
    async fn restart(&self) -> anyhow::Result<RelayProcess> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Self::spawn(&self.data, &self.args) {
                Ok(p) => return Ok(p),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context("the killed relay node did not come back in 60 s"));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    fn link(&self) -> Option<RelayLink> {
        self.process.as_ref().map(|p| p.link.clone())
    }
}

/// What the ledger knows of one message.
#[derive(Default)]
struct Entry {
    mailbox: usize,
    /// Microseconds since the run's start of its first send.
    first_sent: u64,
    /// The number a relay acknowledged it under.
    acked: Option<u64>,
    /// The number it was first delivered under.
    delivered: Option<u64>,
    /// A relay confirmed the receiver's acknowledgement.
    confirmed: bool,
    /// Counted in `stored_twice` or `after_ack` already.
    doubled: bool,
}

#[derive(Default)]
struct Counters {
    counted: AtomicU64,
    /// Messages seen under two sequence numbers.
    stored_twice: AtomicU64,
    /// Messages delivered again after the relay confirmed their acknowledgement.
    after_ack: AtomicU64,
    redelivered: AtomicU64,
    foreign: AtomicU64,
    error_answers: AtomicU64,
    resent: AtomicU64,
    reconnects: AtomicU64,
}

/// Every message sent, and what became of it.
struct Ledger {
    epoch: Instant,
    entries: Mutex<HashMap<[u8; 16], Entry>>,
    counters: Counters,
    latency: Mutex<Histogram<u64>>,
    /// First deliveries count toward the rate and latency while this is set.
    measuring: AtomicBool,
}

impl Ledger {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            epoch: Instant::now(),
            entries: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            measuring: AtomicBool::new(false),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sent(&self, id: [u8; 16], mailbox: usize) {
        let first_sent = self.now_us();
        self.entries().insert(
            id,
            Entry {
                mailbox,
                first_sent,
                ..Entry::default()
            },
        );
    }

    fn double(&self, e: &mut Entry, counter: &AtomicU64) {
        if !e.doubled {
            e.doubled = true;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn acked(&self, id: &[u8; 16], seq: u64) {
        let mut entries = self.entries();
        let Some(e) = entries.get_mut(id) else {
            return;
        };
        let stored_twice =
            e.acked.is_some_and(|s| s != seq) || e.delivered.is_some_and(|s| s != seq);
        e.acked.get_or_insert(seq);
        if stored_twice {
            self.double(e, &self.counters.stored_twice);
        }
    }

    fn delivered(&self, mailbox: usize, id: &[u8], seq: u64) {
        let now = self.now_us();
        let mut entries = self.entries();
        let Some(e) = <[u8; 16]>::try_from(id)
            .ok()
            .and_then(|id| entries.get_mut(&id))
            .filter(|e| e.mailbox == mailbox)
        else {
            self.counters.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if e.acked.is_some_and(|s| s != seq) {
            self.double(e, &self.counters.stored_twice);
        }
        match e.delivered {
            None => {
                e.delivered = Some(seq);
                if self.measuring.load(Ordering::Relaxed) {
                    self.counters.counted.fetch_add(1, Ordering::Relaxed);
                    let _ = self
                        .latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(now.saturating_sub(e.first_sent).max(1));
                }
            }
            Some(first) if first != seq => self.double(e, &self.counters.stored_twice),
            Some(_) if e.confirmed => self.double(e, &self.counters.after_ack),
            Some(_) => {
                self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn confirmed(&self, ids: &[[u8; 16]]) {
        let mut entries = self.entries();
        for id in ids {
            if let Some(e) = entries.get_mut(id) {
                e.confirmed = true;
            }
        }
    }

    /// (acknowledged to the sender, of those never delivered, never answered at all).
    fn tally(&self) -> (u64, u64, u64) {
        let entries = self.entries();
        let mut acked = 0;
        let mut lost = 0;
        let mut unanswered = 0;
        for e in entries.values() {
            match (e.acked, e.delivered) {
                (Some(_), None) => {
                    acked += 1;
                    lost += 1;
                }
                (Some(_), Some(_)) => acked += 1,
                (None, _) => unanswered += 1,
            }
        }
        (acked, lost, unanswered)
    }

    /// Every message acknowledged to its sender has arrived.
    fn all_arrived(&self) -> bool {
        self.entries()
            .values()
            .all(|e| e.acked.is_none() || e.delivered.is_some())
    }
}

/// The relay nodes' current links (a restarted node listens on a new port).
type Links = Arc<RwLock<Vec<Option<RelayLink>>>>;

/// Connects to node `preferred`, or else to the next one that answers.
async fn connect_any(links: &Links, preferred: usize) -> Option<RelayConnection> {
    let current: Vec<Option<RelayLink>> =
        links.read().unwrap_or_else(PoisonError::into_inner).clone();
    let n = current.len();
    for k in 0..n {
        if let Some(link) = &current[(preferred + k) % n]
            && let Ok(conn) = RelayConnection::connect(link, CONNECT).await
        {
            return Some(conn);
        }
    }
    None
}

struct Shared {
    ledger: Ledger,
    links: Links,
    boxes: Vec<OwnedMailbox>,
    /// No new messages once set.
    stop_new: AtomicBool,
    /// Senders are through (every send answered, or the drain timed out).
    senders_done: AtomicBool,
    /// Receivers stop once set.
    stop: AtomicBool,
    /// A permit per (re)subscribed receiver: the load starts once every receiver is.
    subscribed: tokio::sync::Semaphore,
}

fn message_id(sender: usize, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(sender as u64).to_be_bytes());
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// One sender: sends round-robin to every mailbox through node `node`, resending what was not
/// answered, until the load stops and everything is answered (or the drain times out).
async fn sender(shared: Arc<Shared>, index: usize, node: usize, window: usize, deadline: Instant) {
    let boxes = shared.boxes.len();
    let mut payload = vec![0x5a_u8; MSG_SIZE];
    // Sends to make again, oldest first: (id, mailbox).
    let mut again: VecDeque<([u8; 16], usize)> = VecDeque::new();
    let mut n: u64 = 0;
    let mut conn: Option<RelayConnection> = None;
    let mut inflight: VecDeque<(
        [u8; 16],
        usize,
        tokio::sync::oneshot::Receiver<response::Result>,
    )> = VecDeque::new();
    loop {
        let stopping = shared.stop_new.load(Ordering::Relaxed);
        if (stopping && again.is_empty() && inflight.is_empty()) || Instant::now() >= deadline {
            return;
        }
        let Some(c) = &conn else {
            conn = connect_any(&shared.links, node).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                shared
                    .ledger
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        let mut broken = false;
        while inflight.len() < window {
            let (id, mailbox) = if let Some(next) = again.pop_front() {
                shared
                    .ledger
                    .counters
                    .resent
                    .fetch_add(1, Ordering::Relaxed);
                next
            } else if !stopping {
                let id = message_id(index, n);
                let mailbox = (index + usize::try_from(n).unwrap_or(0)) % boxes;
                n += 1;
                shared.ledger.sent(id, mailbox);
                (id, mailbox)
            } else {
                break;
            };
            let b = &shared.boxes[mailbox];
            payload[..16].copy_from_slice(&id);
            match c
                .submit(request::Body::Send(msg::Send {
                    mailbox_id: b.id.0.to_vec(),
                    sender_cap: b.sender_cap.to_vec(),
                    message_id: id.to_vec(),
                    ciphertext: payload.clone(),
                    first_attempt: false,
                }))
                .await
            {
                Ok(rx) => inflight.push_back((id, mailbox, rx)),
                Err(_) => {
                    again.push_front((id, mailbox));
                    broken = true;
                    break;
                }
            }
        }
        if !broken && let Some((id, mailbox, rx)) = inflight.pop_front() {
            match rx.await {
                Ok(response::Result::Sent(s)) => shared.ledger.acked(&id, s.seq),
                Ok(_) => {
                    // The relay could not store it now (its store timed out, say): again.
                    shared
                        .ledger
                        .counters
                        .error_answers
                        .fetch_add(1, Ordering::Relaxed);
                    again.push_back((id, mailbox));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    again.push_back((id, mailbox));
                    broken = true;
                }
            }
        }
        if broken {
            // The connection is gone: everything still in flight is sent again elsewhere.
            for (id, mailbox, _) in inflight.drain(..) {
                again.push_back((id, mailbox));
            }
            conn = None;
        }
    }
}

/// One receiver: takes and acknowledges the pushes of `mine`, preferring node `node`.
async fn receiver(shared: Arc<Shared>, node: usize, mine: Vec<usize>) {
    let mut conn: Option<RelayConnection> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            let Some(c) = connect_any(&shared.links, node).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            // All at once: one by one, a receiver coming back under load would take seconds.
            let subscribed = futures_util::future::join_all(mine.iter().map(|&m| {
                let b = &shared.boxes[m];
                c.subscribe(&b.key, &b.id)
            }))
            .await;
            if subscribed.iter().all(Result::is_ok) {
                shared
                    .ledger
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
                shared.subscribed.add_permits(1);
                conn = Some(c);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let push = match tokio::time::timeout(Duration::from_millis(200), c.next_event()).await {
            Err(_) => continue,
            Ok(Some(Event::Push(p))) => p,
            Ok(Some(_)) => continue,
            Ok(None) => {
                conn = None;
                continue;
            }
        };
        let Some(mailbox) = mine
            .iter()
            .copied()
            .find(|&m| shared.boxes[m].id.0.as_slice() == push.mailbox_id.as_slice())
        else {
            shared
                .ledger
                .counters
                .foreign
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut seqs = Vec::with_capacity(push.deliveries.len());
        let mut ids = Vec::with_capacity(push.deliveries.len());
        for d in &push.deliveries {
            shared.ledger.delivered(mailbox, &d.message_id, d.seq);
            seqs.push(d.seq);
            if let Ok(id) = <[u8; 16]>::try_from(d.message_id.as_slice()) {
                ids.push(id);
            }
        }
        match c
            .submit(request::Body::Ack(msg::Ack {
                mailbox_id: push.mailbox_id,
                seqs,
            }))
            .await
        {
            Ok(rx) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Ok(response::Result::Acked(_)) = rx.await {
                        shared.ledger.confirmed(&ids);
                    }
                });
            }
            Err(_) => conn = None,
        }
    }
}

/// What one run of the load gave.
struct Outcome {
    nodes: usize,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    sent: u64,
    acked: u64,
    lost: u64,
    unanswered: u64,
    stored_twice: u64,
    after_ack: u64,
    redelivered: u64,
    foreign: u64,
    resent: u64,
    error_answers: u64,
    reconnects: u64,
    kills: Vec<serde_json::Value>,
}

/// A kill plan: which nats-server and relay node go down when (seconds into the load).
struct KillPlan {
    nats: usize,
    nats_at: Duration,
    relay: usize,
    relay_at: Duration,
}

impl KillPlan {
    fn new(rng: &mut Rng, nodes: usize, seconds: u64) -> Self {
        let ms = seconds * 1000;
        let n = nodes as u64;
        Self {
            nats: usize::try_from(rng.next() % n).unwrap_or(0),
            nats_at: Duration::from_millis(rng.between(ms / 5, ms / 2)),
            relay: usize::try_from(rng.next() % n).unwrap_or(0),
            relay_at: Duration::from_millis(rng.between(ms * 3 / 10, ms * 7 / 10)),
        }
    }
}

/// Runs the load against `nodes` (whose processes it may kill and restart per `plan`).
async fn run_load(
    args: &ClusterBenchArgs,
    mut nodes: Vec<Node>,
    mut nats: Vec<NatsServer>,
    plan: Option<KillPlan>,
) -> anyhow::Result<(Outcome, Vec<NatsServer>)> {
    let links: Links = Arc::new(RwLock::new(nodes.iter().map(Node::link).collect()));
    let n = nodes.len();
    // Mailboxes made through every node in turn.
    let mut boxes = Vec::with_capacity(args.mailboxes);
    let mut makers = Vec::new();
    for k in 0..n {
        makers.push(
            connect_any(&links, k)
                .await
                .context("no relay node answers")?,
        );
    }
    for i in 0..args.mailboxes {
        let b = OwnedMailbox::generate()?;
        makers[i % n]
            .create_mailbox(&b.key, &b.id, b.cap_hash())
            .await
            .context("creating a mailbox")?;
        boxes.push(b);
    }
    drop(makers);
    let shared = Arc::new(Shared {
        ledger: Ledger::new()?,
        links: Arc::clone(&links),
        boxes,
        stop_new: AtomicBool::new(false),
        senders_done: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        subscribed: tokio::sync::Semaphore::new(0),
    });
    let mut receivers = Vec::new();
    for k in 0..n {
        // Mailboxes made through node k + 1 are received through node k.
        let mine: Vec<usize> = (0..args.mailboxes)
            .filter(|i| i % n == (k + 1) % n)
            .collect();
        receivers.push(tokio::spawn(receiver(Arc::clone(&shared), k, mine)));
    }
    let all = u32::try_from(n).context("too many nodes")?;
    tokio::time::timeout(Duration::from_secs(60), shared.subscribed.acquire_many(all))
        .await
        .context("receivers did not subscribe within 60 s")??
        .forget();
    let load = Duration::from_secs(args.seconds);
    let deadline = Instant::now() + load + DRAIN;
    let mut senders = Vec::new();
    for k in 0..n {
        for s in 0..args.senders {
            senders.push(tokio::spawn(sender(
                Arc::clone(&shared),
                k * args.senders + s,
                k,
                args.window,
                deadline,
            )));
        }
    }
    let start = Instant::now();
    tokio::time::sleep(WARMUP).await;
    shared.ledger.measuring.store(true, Ordering::Relaxed);
    // The kills, in time order, each followed by its restart.
    let mut kills = Vec::new();
    if let Some(plan) = &plan {
        let mut events = [(plan.nats_at, true), (plan.relay_at, false)];
        events.sort();
        for (at, is_nats) in events {
            tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
            let when = start.elapsed();
            if is_nats {
                nats[plan.nats].kill();
            } else {
                nodes[plan.relay].process.take();
                links.write().unwrap_or_else(PoisonError::into_inner)[plan.relay] = None;
            }
            tokio::time::sleep(DOWN).await;
            if is_nats {
                nats[plan.nats]
                    .restart()
                    .await
                    .context("restarting the killed nats-server")?;
            } else {
                let node = &mut nodes[plan.relay];
                let process = node.restart().await?;
                links.write().unwrap_or_else(PoisonError::into_inner)[plan.relay] =
                    Some(process.link.clone());
                node.process = Some(process);
            }
            kills.push(serde_json::json!({
                "what": if is_nats { "nats-server" } else { "relay" },
                "node": if is_nats { plan.nats } else { plan.relay },
                "at_s": when.as_secs_f64(),
                "down_s": DOWN.as_secs_f64(),
            }));
        }
    }
    tokio::time::sleep(load.saturating_sub(start.elapsed())).await;
    shared.ledger.measuring.store(false, Ordering::Relaxed);
    let measured = start.elapsed().saturating_sub(WARMUP);
    let counted = shared.ledger.counters.counted.load(Ordering::Relaxed);
    shared.stop_new.store(true, Ordering::Relaxed);
    for s in senders {
        s.await?;
    }
    shared.senders_done.store(true, Ordering::Relaxed);
    while !shared.ledger.all_arrived() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Acks in flight get their answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.await?;
    }
    let (acked, lost, unanswered) = shared.ledger.tally();
    let c = &shared.ledger.counters;
    let latency = shared
        .ledger
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let sent = shared.ledger.entries().len() as u64;
    let outcome = Outcome {
        nodes: n,
        msgs_per_s: counted as f64 / measured.as_secs_f64(),
        p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        sent,
        acked,
        lost,
        unanswered,
        stored_twice: c.stored_twice.load(Ordering::Relaxed),
        after_ack: c.after_ack.load(Ordering::Relaxed),
        redelivered: c.redelivered.load(Ordering::Relaxed),
        foreign: c.foreign.load(Ordering::Relaxed),
        resent: c.resent.load(Ordering::Relaxed),
        error_answers: c.error_answers.load(Ordering::Relaxed),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        kills,
    };
    drop(nodes);
    Ok((outcome, nats))
}

impl Outcome {
    fn duplicates(&self) -> u64 {
        self.stored_twice + self.after_ack
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.nodes,
            "msgs_per_s": self.msgs_per_s.round(),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "sent": self.sent,
            "acked": self.acked,
            "lost": self.lost,
            "unanswered": self.unanswered,
            "duplicates": self.duplicates(),
            "stored_twice": self.stored_twice,
            "delivered_after_ack": self.after_ack,
            "redelivered": self.redelivered,
            "foreign": self.foreign,
            "resent": self.resent,
            "error_answers": self.error_answers,
            "reconnects": self.reconnects,
            "kills": self.kills.len(),
            "kill_log": self.kills,
        })
    }
}

/// JetStream alone on the same cluster: `publishers` connections publishing 1 KiB messages to
/// a stream with the relay's replicas, `window` in flight each, for `seconds`.
async fn nats_alone(
    servers: &[NatsServer],
    replicas: usize,
    publishers: usize,
    window: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    use async_nats::jetstream::{self, stream};
    let first = servers.first().context("no nats-server")?;
    let client = async_nats::connect(first.url.as_str()).await?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: "BENCH_ALONE".into(),
        subjects: vec!["bench.alone.*".into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .context("creating the stream for JetStream alone")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let url = servers[p % servers.len()].url.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let js = jetstream::new(async_nats::connect(url.as_str()).await?);
            let payload = bytes::Bytes::from(vec![0x5a_u8; MSG_SIZE]);
            let mut inflight = VecDeque::with_capacity(window);
            let mut done: u64 = 0;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if inflight.len() >= window {
                    let ack: async_nats::jetstream::context::PublishAckFuture =
                        inflight.pop_front().context("window")?;
                    ack.await.context("JetStream publish ack")?;
                    done += 1;
                }
                let subject = format!("bench.alone.{}", done % 64);
                inflight.push_back(js.publish(subject, payload.clone()).await?);
            }
            let elapsed = start.elapsed();
            anyhow::Ok((done, elapsed))
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut rate = 0.0;
    for t in tasks {
        let (done, elapsed) = t.await??;
        rate += done as f64 / elapsed.as_secs_f64();
    }
    js.delete_stream("BENCH_ALONE").await.ok();
    Ok(rate)
}

/// Relay nodes with one key in `dir`, each on every server of `nats` (or on the embedded
/// store, with `nats` empty).
fn relay_nodes(
    dir: &Path,
    count: usize,
    nats: &[NatsServer],
    replicas: usize,
) -> anyhow::Result<Vec<Node>> {
    let mut args: Vec<String> = ["--sends-per-sec", "100000000", "--max-depth", "10000000"]
        .map(String::from)
        .to_vec();
    if !nats.is_empty() {
        let urls: Vec<&str> = nats.iter().map(|s| s.url.as_str()).collect();
        args.extend([
            "--store".to_owned(),
            urls.join(","),
            "--store-replicas".to_owned(),
            replicas.to_string(),
        ]);
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    for k in 0..count {
        let data = dir.join(format!("relay{k}"));
        if let Some(first) = nodes.first() {
            // The same relay on every node: one key.
            std::fs::create_dir_all(&data)?;
            std::fs::copy(first.data.join("relay.key"), data.join("relay.key"))
                .context("copying the relay key to another node")?;
        }
        nodes.push(Node::start(data, args.clone())?);
    }
    Ok(nodes)
}

pub(crate) async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(args.mailboxes >= 1, "--mailboxes must be at least 1");
    anyhow::ensure!(
        args.seconds >= 4,
        "--seconds must be at least 4 (two of them are warm-up)"
    );
    let seed = match args.seed {
        Some(s) => s,
        None => {
            let mut raw = [0u8; 8];
            getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            u64::from_le_bytes(raw)
        }
    };
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir()?;
    let replicas = args.nodes.min(3);
    if !args.json {
        eprintln!(
            "starting {} nats-server nodes and {} relay nodes (seed {seed}) …",
            args.nodes, args.nodes
        );
    }
    let nats = if args.nodes == 1 {
        vec![NatsServer::start().await?]
    } else {
        NatsServer::cluster(args.nodes).await?
    };
    let version = nats.first().map(|s| s.version.clone()).unwrap_or_default();
    let nodes = relay_nodes(&tmp.path().join("cluster"), args.nodes, &nats, replicas)?;
    let plan = args
        .kill
        .then(|| KillPlan::new(&mut rng, args.nodes, args.seconds));
    if !args.json {
        eprintln!(
            "load for {} s{} …",
            args.seconds,
            if plan.is_some() {
                ", killing one nats-server and one relay node"
            } else {
                ""
            }
        );
    }
    let (cluster, nats) = run_load(&args, nodes, nats, plan).await?;

    let mut alone = None;
    let mut embedded = None;
    if !args.skip_compare {
        if !args.json {
            eprintln!("JetStream publishing alone on the same cluster …");
        }
        alone = Some(
            nats_alone(
                &nats,
                replicas,
                args.nodes * args.senders,
                args.window,
                args.seconds,
            )
            .await?,
        );
        drop(nats);
        if !args.json {
            eprintln!("one embedded relay node under the same load …");
        }
        let one = relay_nodes(&tmp.path().join("embedded"), 1, &[], 1)?;
        let (e, _) = run_load(&args, one, Vec::new(), None).await?;
        embedded = Some(e);
    }

    let result = serde_json::json!({
        "machine": machine(),
        "nats_server": version,
        "seed": seed,
        "seconds": args.seconds,
        "message_bytes": MSG_SIZE,
        "mailboxes": args.mailboxes,
        "replicas": replicas,
        "nodes": cluster.nodes,
        "msgs_per_s": cluster.msgs_per_s.round(),
        "p99_ms": cluster.p99_ms,
        "lost": cluster.lost,
        "duplicates": cluster.duplicates(),
        "kills": cluster.kills.len(),
        "cluster": cluster.json(),
        "embedded": embedded.as_ref().map(Outcome::json),
        "nats_alone_msgs_per_s": alone.map(f64::round),
    });
    if args.json {
        println!("{result}");
        return Ok(());
    }
    println!("machine: {} (every process shares it)", machine());
    println!("nats-server {version}, {replicas} replicas, seed {seed}");
    let line = |name: &str, o: &Outcome| {
        println!(
            "{name}: {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms; {} sent, {} acknowledged, {} lost, \
             {} duplicates, {} redelivered unconfirmed, {} sends made again, {} kills",
            o.msgs_per_s,
            o.p50_ms,
            o.p99_ms,
            o.sent,
            o.acked,
            o.lost,
            o.duplicates(),
            o.redelivered,
            o.resent,
            o.kills.len()
        );
    };
    line(
        &format!("{} relay nodes on NATS JetStream", cluster.nodes),
        &cluster,
    );
    if let Some(e) = &embedded {
        line("one relay node, embedded store", e);
    }
    if let Some(a) = alone {
        println!("JetStream publishing alone, same cluster: {a:.0} msg/s");
    }
    Ok(())
}
