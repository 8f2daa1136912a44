//! `pigeon bench relay`: durable end-to-end throughput, latency at 70 % load, and memory per
//! idle connection, against a real relay process over the real channel.
//!
//! The relay runs as a child process (`pigeon relay`, embedded store, fsync per group commit);
//! senders and receivers run in this process and talk to it over loopback TCP. A message counts
//! when a receiver got it pushed, which happens only after the relay made it durable.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_proto::session::{ClientSession, SessionEvent};
use pigeon_transport::{Connection, RelayLink, Route};
use pigeon_wire::msg::{self, request};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Relay throughput, latency and idle-connection memory.
    Relay(RelayBenchArgs),
    /// Relay nodes sharing a NATS JetStream cluster, under load and `kill -9`, beside one
    /// embedded node and JetStream publishing alone.
    Cluster(crate::bench_cluster::ClusterBenchArgs),
    /// End-to-end encryption and profile costs, and invitation-to-first-message latency.
    Client(crate::bench_client::ClientBenchArgs),
    /// The tls transport next to tcp: bulk download, handshake time, idle-connection memory.
    Tls(crate::bench_tls::TlsBenchArgs),
    /// Groups: commit costs at N members (X-Wing) and fan-out through a real relay.
    Group(crate::bench_group::GroupBenchArgs),
    /// Attacks from this machine on a relay child process, and what an honest client gets.
    Attack(crate::bench_attack::AttackBenchArgs),
    /// What going through a proxy costs: round trip, connect, bulk, next to direct.
    Proxy(crate::bench_proxy::ProxyBenchArgs),
    /// Linking a new device to a profile with many conversations: time and bytes.
    Link(crate::bench_link::LinkBenchArgs),
    /// A backup of a profile with 100,000 messages and its restore: time and size.
    Backup(crate::bench_backup::BackupBenchArgs),
    /// A file of up to 100 MiB from one person to another: over tls on loopback, or through
    /// the censorship lab, beside the link's capacity.
    File(crate::bench_file::FileBenchArgs),
    /// `pigeon app` from its start to an interactive page.
    App(crate::bench_app::AppBenchArgs),
}

/// Arguments of `pigeon bench relay`.
#[derive(clap::Args, Debug)]
pub(crate) struct RelayBenchArgs {
    /// Seconds of measurement for each load phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also run NATS JetStream (Debian's nats-server, file storage, one replica) under the same
    /// load and report the ratio.
    #[arg(long)]
    vs_nats: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Idle connections for the memory measurement.
    #[arg(long, default_value_t = 18_000)]
    idle_connections: usize,
    /// Mailboxes the load is spread over.
    #[arg(long, default_value_t = 256)]
    mailboxes: usize,
    /// Sender connections (and as many receiver connections).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Sends in flight per sender connection.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Run the latency phase at this many messages per second instead of 70 % of the maximum.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Skip the idle-connection memory phase.
    #[arg(long)]
    skip_idle: bool,
    /// Run the relay with its mailboxes on NATS JetStream (a Debian `nats-server` started here,
    /// one server, one replica) instead of its embedded store.
    #[arg(long)]
    store_nats: bool,
}

const MSG_SIZE: usize = 1024;

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Relay(args) => relay(args).await,
        BenchCommand::Cluster(args) => crate::bench_cluster::run(args).await,
        BenchCommand::Client(args) => crate::bench_client::run(args).await,
        BenchCommand::Tls(args) => crate::bench_tls::run(args).await,
        BenchCommand::Group(args) => crate::bench_group::run(args).await,
        BenchCommand::Attack(args) => crate::bench_attack::run(args).await,
        BenchCommand::Proxy(args) => crate::bench_proxy::run(args).await,
        BenchCommand::Link(args) => crate::bench_link::run(args).await,
        BenchCommand::Backup(args) => crate::bench_backup::run(args).await,
        BenchCommand::File(args) => crate::bench_file::run(args).await,
        BenchCommand::App(args) => crate::bench_app::run(args).await,
    }
}

/// The middle value (the upper one of an even count; NaN for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = meminfo("MemTotal").unwrap_or(0);
    format!(
        "{cpus} cpus, {:.1} GiB, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// The number after `key:` in a `/proc` file of `key: value kB` lines.
fn proc_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        })?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn meminfo(key: &str) -> Option<u64> {
    proc_field("/proc/meminfo", key)
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    proc_field(&format!("/proc/{pid}/status"), "VmRSS")
}

fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Figures of one load phase.
struct LoadResult {
    delivered: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

struct Setup {
    senders: Vec<Arc<RelayConnection>>,
    receivers: Vec<RelayConnection>,
    boxes: Vec<Arc<OwnedMailbox>>,
}

async fn setup(link: &RelayLink, args: &RelayBenchArgs) -> anyhow::Result<Setup> {
    let timeout = Duration::from_secs(10);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..args.connections {
        senders.push(Arc::new(RelayConnection::connect(link, timeout).await?));
        receivers.push(RelayConnection::connect(link, timeout).await?);
    }
    let mut boxes = Vec::new();
    for i in 0..args.mailboxes {
        let b = OwnedMailbox::generate()?;
        let r = &receivers[i % receivers.len()];
        r.create_mailbox(&b.key, &b.id, b.cap_hash()).await?;
        r.subscribe(&b.key, &b.id).await?;
        boxes.push(Arc::new(b));
    }
    Ok(Setup {
        senders,
        receivers,
        boxes,
    })
}

/// Runs senders and receivers for `measure` after `warmup`. With `rate` set, senders pace
/// themselves to that many messages per second in total (open loop); otherwise they keep
/// `window` sends in flight each (closed loop, saturating).
async fn load(
    setup: Setup,
    args: &RelayBenchArgs,
    rate: Option<f64>,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<(LoadResult, Setup)> {
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let n_senders = setup.senders.len();
    let mut send_tasks = Vec::new();
    for (i, conn) in setup.senders.iter().enumerate() {
        let conn = Arc::clone(conn);
        let boxes: Vec<_> = setup
            .boxes
            .iter()
            .enumerate()
            .filter(|(j, _)| j % n_senders == i)
            .map(|(_, b)| (b.id, b.sender_cap))
            .collect();
        let stop = Arc::clone(&stop);
        let window = args.window;
        let per_sender = rate.map(|r| r / n_senders as f64);
        send_tasks.push(tokio::spawn(async move {
            let mut inflight = VecDeque::with_capacity(window);
            let mut n: u64 = 0;
            let start = Instant::now();
            let mut payload = vec![0x5a; MSG_SIZE];
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = per_sender {
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "a message count well within u64, never negative"
                    )]
                    let due = (start.elapsed().as_secs_f64() * r) as u64;
                    if n >= due {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                        continue;
                    }
                }
                if inflight.len() >= window {
                    let rx: tokio::sync::oneshot::Receiver<_> =
                        inflight.pop_front().context("window")?;
                    let _ = rx.await;
                }
                let (id, cap) = boxes[usize::try_from(n).unwrap_or(0) % boxes.len()];
                let t = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
                payload[..8].copy_from_slice(&t.to_le_bytes());
                let mut message_id = [0u8; 16];
                message_id[..8].copy_from_slice(&n.to_le_bytes());
                message_id[8] = u8::try_from(i).unwrap_or(0);
                let rx = conn
                    .submit(request::Body::Send(msg::Send {
                        mailbox_id: id.0.to_vec(),
                        sender_cap: cap.to_vec(),
                        message_id: message_id.to_vec(),
                        ciphertext: payload.clone(),
                        // Every message is sent once, as a client's new posts are.
                        first_attempt: true,
                    }))
                    .await?;
                inflight.push_back(rx);
                n += 1;
            }
            for rx in inflight {
                let _ = rx.await;
            }
            anyhow::Ok(n)
        }));
    }
    let mut recv_tasks = Vec::new();
    for mut conn in setup.receivers {
        let stop = Arc::clone(&stop);
        let measuring = Arc::clone(&measuring);
        let delivered = Arc::clone(&delivered);
        recv_tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while !stop.load(Ordering::Relaxed) {
                let ev = tokio::time::timeout(Duration::from_millis(200), conn.next_event()).await;
                let Ok(Some(Event::Push(push))) = ev else {
                    continue;
                };
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
                let mut seqs = Vec::with_capacity(push.deliveries.len());
                let counting = measuring.load(Ordering::Relaxed);
                for d in &push.deliveries {
                    seqs.push(d.seq);
                    if counting {
                        let sent = d
                            .ciphertext
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map_or(now, u64::from_le_bytes);
                        let _ = hist.record(now.saturating_sub(sent).max(1));
                    }
                }
                if counting {
                    delivered.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                }
                // The ack's answer is not awaited: dropping its receiver discards it.
                drop(
                    conn.submit(request::Body::Ack(msg::Ack {
                        mailbox_id: push.mailbox_id,
                        seqs,
                    }))
                    .await?,
                );
            }
            anyhow::Ok((conn, hist))
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let count = delivered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in send_tasks {
        t.await??;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut receivers = Vec::new();
    for t in recv_tasks {
        let (conn, hist) = t.await??;
        latency.add(&hist)?;
        receivers.push(conn);
    }
    Ok((
        LoadResult {
            delivered: count,
            elapsed,
            latency,
        },
        Setup {
            senders: setup.senders,
            receivers,
            boxes: setup.boxes,
        },
    ))
}

/// Opens `n` connections over `route` that complete the handshake and one ping each, then stay
/// idle.
async fn idle_connections(
    dialer: &Arc<pigeon_transport::Transports>,
    route: &Route,
    key: [u8; 32],
    n: usize,
) -> anyhow::Result<Vec<Box<dyn Connection>>> {
    bounded(0..n, 64, |_| {
        let route = route.clone();
        let dialer = Arc::clone(dialer);
        async move {
            let mut s = dialer.dial(&route, Duration::from_secs(20)).await?;
            // The session's protocol is pigeon-proto's; this moves its bytes until the
            // handshake and one ping are answered.
            let mut session = ClientSession::connect(
                &key,
                pigeon_proto::Entropy::from_os()?,
                std::time::Instant::now(),
                Duration::from_secs(20),
            )?;
            session
                .request(request::Body::Ping(msg::Ping { payload: vec![] }))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut wire = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                match session.poll_event() {
                    Some(SessionEvent::Response { .. }) => break,
                    Some(SessionEvent::Closed(why)) => anyhow::bail!("{why}"),
                    Some(_) => continue,
                    None => {}
                }
                wire.clear();
                if session.poll_transmit(&mut wire) {
                    s.write_all(&wire).await?;
                }
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    session.handle_eof();
                } else {
                    session.handle_input(std::time::Instant::now(), &buf[..n]);
                }
            }
            anyhow::Ok(s)
        }
    })
    .await
}

/// Runs `task` on each of `items`, at most `limit` at once, and returns the results in order.
async fn bounded<I, T, F>(
    items: I,
    limit: usize,
    task: impl Fn(I::Item) -> F,
) -> anyhow::Result<Vec<T>>
where
    I: IntoIterator,
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = Vec::new();
    for item in items {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let work = task(item);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            work.await
        }));
    }
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        done.push(t.await??);
    }
    Ok(done)
}

/// Creates `n` mailboxes over a few connections (before the measurement, so that what the store
/// keeps for them is not counted as the connections' memory).
async fn create_mailboxes(
    route: &Route,
    key: [u8; 32],
    n: usize,
) -> anyhow::Result<Vec<OwnedMailbox>> {
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(Arc::new(
            RelayConnection::connect_route(route, &key, Duration::from_secs(20)).await?,
        ));
    }
    bounded(0..n, 256, |i| {
        let conn = Arc::clone(&conns[i % conns.len()]);
        async move {
            let mailbox = OwnedMailbox::generate()?;
            conn.create_mailbox(&mailbox.key, &mailbox.id, mailbox.cap_hash())
                .await?;
            anyhow::Ok(mailbox)
        }
    })
    .await
}

/// Opens a connection per mailbox over `route` that subscribes to it, then stays idle (as a
/// client waiting for messages does).
async fn subscribed_connections(
    dialer: &Arc<pigeon_transport::Transports>,
    route: &Route,
    key: [u8; 32],
    mailboxes: Vec<OwnedMailbox>,
) -> anyhow::Result<Vec<RelayConnection>> {
    bounded(mailboxes, 64, |mailbox| {
        let route = route.clone();
        let dialer = Arc::clone(dialer);
        async move {
            let conn =
                RelayConnection::connect_route_with(&dialer, &route, &key, Duration::from_secs(20))
                    .await?;
            conn.subscribe(&mailbox.key, &mailbox.id).await?;
            anyhow::Ok(conn)
        }
    })
    .await
}

/// Memory per idle authenticated connection over `route` to the relay process `pid`: its RSS
/// growth per connection (user space), and that plus the growth of kernel slab and TCP buffers
/// (both ends of each loopback connection, counted whole). With `subscribed`, each connection
/// also subscribes to a mailbox of its own (created before the measurement starts).
pub(crate) async fn idle_memory(
    pid: u32,
    route: &Route,
    key: [u8; 32],
    n: usize,
    subscribed: bool,
) -> anyhow::Result<(f64, f64)> {
    let mailboxes = if subscribed {
        create_mailboxes(route, key, n).await?
    } else {
        Vec::new()
    };
    // One dialer for every connection, alive as long as they are.
    let dialer = Arc::new(pigeon_client::transports()?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(pid).context("relay RSS")?;
    let slab0 = meminfo("Slab").unwrap_or(0);
    let tcp0 = tcp_mem_pages().unwrap_or(0);
    let (raw, clients) = if subscribed {
        (
            Vec::new(),
            subscribed_connections(&dialer, route, key, mailboxes).await?,
        )
    } else {
        (idle_connections(&dialer, route, key, n).await?, Vec::new())
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(pid).context("relay RSS")?;
    let slab1 = meminfo("Slab").unwrap_or(0);
    let tcp1 = tcp_mem_pages().unwrap_or(0);
    let n = (raw.len() + clients.len()) as f64;
    let user = (rss1.saturating_sub(rss0) * 1024) as f64 / n;
    let kernel =
        ((slab1.saturating_sub(slab0) * 1024) + tcp1.saturating_sub(tcp0) * 4096) as f64 / n;
    drop((raw, clients));
    Ok((user, user + kernel))
}

async fn relay(args: RelayBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let measure = Duration::from_secs(args.seconds);
    let nats = if args.store_nats {
        Some(
            pigeon_store_nats::NatsServer::start()
                .await
                .context("could not start nats-server (apt-get install nats-server)")?,
        )
    } else {
        None
    };
    let mut relay_flags = vec!["--sends-per-sec", "100000000", "--max-depth", "10000000"];
    if let Some(n) = &nats {
        relay_flags.extend(["--store", n.url.as_str()]);
    }
    let relay = RelayProcess::start_for_load(&tmp.path().join("relay"), &relay_flags)?;
    let setup = setup(&relay.link, &args).await?;
    if !args.json {
        eprintln!("saturating for {} s …", args.seconds);
    }
    let (max, setup) = load(setup, &args, None, Duration::from_secs(2), measure).await?;
    let target = args.latency_rate.unwrap_or(max.rate() * 0.7);
    if !args.json {
        eprintln!(
            "max {:.0} msg/s; latency at 70 % ({target:.0} msg/s) for {} s …",
            max.rate(),
            args.seconds
        );
    }
    drop(setup);
    // A fresh set of connections and mailboxes, so nothing left in flight by the saturating
    // phase holds back this one.
    let fresh = self::setup(&relay.link, &args).await?;
    let (at70, _) = load(fresh, &args, Some(target), Duration::from_secs(2), measure).await?;
    drop(relay);

    let mut idle_user = None;
    let mut idle_total = None;
    if !args.skip_idle {
        let relay = RelayProcess::start_for_load(&tmp.path().join("relay-idle"), &[])?;
        let route = relay
            .link
            .supported_routes()
            .next()
            .context("no usable route")?
            .clone();
        if !args.json {
            eprintln!("opening {} idle connections …", args.idle_connections);
        }
        let (user, total) = idle_memory(
            relay.pid(),
            &route,
            *relay.link.relay_key(),
            args.idle_connections,
            false,
        )
        .await?;
        idle_user = Some(user);
        idle_total = Some(total);
    }

    let nats = if args.vs_nats {
        Some(crate::bench_nats::run(measure, args.mailboxes, args.connections, args.window).await?)
    } else {
        None
    };

    let result = serde_json::json!({
        "machine": machine(),
        "message_bytes": MSG_SIZE,
        "store": if args.store_nats { "nats" } else { "embedded" },
        "seconds": args.seconds,
        "msgs_per_s": max.rate().round(),
        "p50_ms": at70.quantile_ms(0.5),
        "p99_ms": at70.quantile_ms(0.99),
        "p999_ms": at70.quantile_ms(0.999),
        "load_msgs_per_s": at70.rate().round(),
        "max_load_p99_ms": max.quantile_ms(0.99),
        "idle_connections": args.idle_connections,
        "idle_conn_user_bytes": idle_user.map(f64::round),
        "idle_conn_total_bytes": idle_total.map(f64::round),
        "nats_msgs_per_s": nats.map(f64::round),
        "ratio_vs_nats": nats.map(|n| max.rate() / n),
    });
    if args.json {
        println!("{result}");
    } else {
        println!("machine: {}", machine());
        println!(
            "durable end-to-end throughput, 1 KiB messages: {:.0} msg/s (target ≥ 150,000)",
            max.rate()
        );
        println!(
            "latency at {} ({:.0} msg/s): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms (target p99 ≤ 3 ms)",
            if args.latency_rate.is_some() {
                "the requested rate"
            } else {
                "70 % load"
            },
            at70.rate(),
            at70.quantile_ms(0.5),
            at70.quantile_ms(0.99),
            at70.quantile_ms(0.999)
        );
        if let (Some(u), Some(t)) = (idle_user, idle_total) {
            println!(
                "memory per idle authenticated connection at {}: {u:.0} B user space (target ≤ 2048), {t:.0} B including the kernel",
                args.idle_connections
            );
        }
        if let Some(n) = nats {
            println!(
                "NATS JetStream under the same load: {n:.0} msg/s; pigeon/nats = {:.2}",
                max.rate() / n
            );
        }
    }
    Ok(())
}
