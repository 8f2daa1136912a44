//! `pigeon bench proxy`: what going through a proxy costs (issue #15).
//!
//! A relay child process with a tls front, and a `pigeon proxy` child process in front of it,
//! both on loopback. Rounds alternate direct and through the proxy (A B A B …), so the noise of
//! this shared machine falls on both alike:
//! * **latency**: a session's round trip (a ping answered by the relay), p50 and p99;
//! * **connect**: opening a session (tls legs, the hop, the Noise handshake), p50 and p99;
//! * **bulk**: 48 KiB messages posted and acknowledged as durable, in MB/s, and the proxy's
//!   share of direct.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use pigeon_client::{OwnedMailbox, RelayConnection};
use pigeon_transport::{ProxyLink, Route};

use crate::relay_proc::RelayProcess;

/// Arguments of `pigeon bench proxy`.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxyBenchArgs {
    /// Rounds (each: one direct and one proxied session).
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Pings per session.
    #[arg(long, default_value_t = 50)]
    pings: u32,
    /// 48 KiB messages per session for the bulk figure.
    #[arg(long, default_value_t = 100)]
    messages: u32,
    /// Idle sessions held open through the proxy for the memory figure (0: skip it).
    #[arg(long, default_value_t = 1000)]
    idle: u32,
    /// Seconds the idle sessions are held before each must answer a ping (past 25 s, the
    /// legs' keep-alive pings run too).
    #[arg(long, default_value_t = 1)]
    idle_hold: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A `pigeon proxy` child process.
struct ProxyProcess {
    child: Child,
    link: ProxyLink,
}

impl ProxyProcess {
    /// Starts one, with room for `sessions` client sessions from this one address (the
    /// defaults hold 2,048 per address and 4,096 in all).
    fn start(data: &std::path::Path, sessions: u32) -> anyhow::Result<Self> {
        let room = sessions.max(4096).saturating_add(64).to_string();
        let exe = std::env::current_exe().context("cannot find the pigeon binary")?;
        let mut child = Command::new(exe)
            .args([
                "proxy",
                "--no-qr",
                "--tls",
                "127.0.0.1:0",
                "--sni",
                "proxy.test",
            ])
            .arg("--data")
            .arg(data)
            .args(["--max-sessions", &room, "--max-per-source", &room])
            .env("PIGEON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start the proxy process")?;
        let stdout = child.stdout.take().context("proxy has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("could not read the proxy's link")?;
        let link = ProxyLink::parse(line.trim())
            .with_context(|| format!("the proxy printed no link (got {line:?})"))?;
        Ok(Self { child, link })
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Side {
    connect: Histogram<u64>,
    rtt: Histogram<u64>,
    bytes: u64,
    busy: Duration,
}

impl Side {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            connect: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            rtt: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            bytes: 0,
            busy: Duration::ZERO,
        })
    }

    fn record(h: &mut Histogram<u64>, d: Duration) {
        let _ = h.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    fn ms(h: &Histogram<u64>, q: f64) -> f64 {
        h.value_at_quantile(q) as f64 / 1000.0
    }

    fn mbps(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.bytes as f64 / secs / 1e6
        }
    }
}

/// One session's measurements: connect, pings, bulk.
async fn session(
    dialer: &pigeon_transport::Transports,
    link: &pigeon_transport::RelayLink,
    via: Option<&Route>,
    args: &ProxyBenchArgs,
    side: &mut Side,
) -> anyhow::Result<()> {
    let target = link
        .routes()
        .first()
        .context("the relay's link has no route")?;
    let timeout = Duration::from_secs(20);
    let started = Instant::now();
    let conn = match via {
        None => {
            RelayConnection::connect_route_with(dialer, target, link.relay_key(), timeout).await?
        }
        Some(proxy) => {
            RelayConnection::connect_via(dialer, proxy, target, link.relay_key(), timeout).await?
        }
    };
    Side::record(&mut side.connect, started.elapsed());
    for _ in 0..args.pings {
        let t = Instant::now();
        conn.ping().await?;
        Side::record(&mut side.rtt, t.elapsed());
    }
    let mailbox = OwnedMailbox::generate()?;
    conn.create_mailbox(&mailbox.key, &mailbox.id, mailbox.cap_hash())
        .await?;
    let body = vec![0x5a; 48 * 1024];
    let t = Instant::now();
    let mut sends = Vec::new();
    for i in 0..args.messages {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        sends.push(conn.send(&mailbox.id, &mailbox.sender_cap, id, body.clone()));
    }
    for result in futures_util::future::join_all(sends).await {
        result?;
    }
    side.busy += t.elapsed();
    side.bytes += u64::from(args.messages) * body.len() as u64;
    Ok(())
}

/// Runs the benchmark.
pub(crate) async fn run(args: ProxyBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = RelayProcess::start_for_load(
        &dir.path().join("relay"),
        &["--tls", "127.0.0.1:0", "--sni", "cover.test"],
    )?;
    let proxy = ProxyProcess::start(&dir.path().join("proxy"), 0)?;
    let dialer = pigeon_client::transports()?;
    let (mut direct, mut proxied) = (Side::new()?, Side::new()?);
    for _ in 0..args.rounds {
        session(&dialer, &relay.link, None, &args, &mut direct).await?;
        session(
            &dialer,
            &relay.link,
            Some(proxy.link.route()),
            &args,
            &mut proxied,
        )
        .await?;
    }
    drop(proxy);
    let idle_kib = idle_memory(
        &dialer,
        &relay.link,
        &dir.path().join("idle-proxy"),
        args.idle,
        Duration::from_secs(args.idle_hold),
    )
    .await?;
    relay.stop()?;
    let share = if direct.mbps() > 0.0 {
        proxied.mbps() / direct.mbps() * 100.0
    } else {
        0.0
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "machine": crate::bench::machine(),
                "rounds": args.rounds,
                "direct_rtt_p50_ms": Side::ms(&direct.rtt, 0.5),
                "direct_rtt_p99_ms": Side::ms(&direct.rtt, 0.99),
                "proxy_rtt_p50_ms": Side::ms(&proxied.rtt, 0.5),
                "proxy_rtt_p99_ms": Side::ms(&proxied.rtt, 0.99),
                "direct_connect_p50_ms": Side::ms(&direct.connect, 0.5),
                "direct_connect_p99_ms": Side::ms(&direct.connect, 0.99),
                "proxy_connect_p50_ms": Side::ms(&proxied.connect, 0.5),
                "proxy_connect_p99_ms": Side::ms(&proxied.connect, 0.99),
                "direct_bulk_mb_s": direct.mbps(),
                "proxy_bulk_mb_s": proxied.mbps(),
                "proxy_bulk_share_pct": share,
                "idle_sessions": args.idle,
                "proxy_kib_per_idle_session": idle_kib,
            })
        );
    } else {
        println!("machine: {}", crate::bench::machine());
        println!(
            "round trip      direct p50 {:>7.2} ms p99 {:>7.2} ms | via proxy p50 {:>7.2} ms p99 {:>7.2} ms",
            Side::ms(&direct.rtt, 0.5),
            Side::ms(&direct.rtt, 0.99),
            Side::ms(&proxied.rtt, 0.5),
            Side::ms(&proxied.rtt, 0.99)
        );
        println!(
            "connect         direct p50 {:>7.2} ms p99 {:>7.2} ms | via proxy p50 {:>7.2} ms p99 {:>7.2} ms",
            Side::ms(&direct.connect, 0.5),
            Side::ms(&direct.connect, 0.99),
            Side::ms(&proxied.connect, 0.5),
            Side::ms(&proxied.connect, 0.99)
        );
        println!(
            "bulk (48 KiB durable posts) direct {:.1} MB/s | via proxy {:.1} MB/s ({share:.0} % of direct)",
            direct.mbps(),
            proxied.mbps()
        );
        if let Some(kib) = idle_kib {
            println!(
                "memory          {kib:.1} KiB of the proxy's resident memory per idle session ({} sessions)",
                args.idle
            );
        }
    }
    Ok(())
}

/// The resident memory per idle session of a proxy that carries nothing else: a proxy
/// process of its own (so that memory the bulk rounds freed cannot be counted as reused), one
/// session through it and closed first (what any first session sets up once), then `n`
/// sessions opened and held for `hold`; its RSS before and after them. Each held session must
/// then still answer a ping.
async fn idle_memory(
    dialer: &pigeon_transport::Transports,
    link: &pigeon_transport::RelayLink,
    data: &std::path::Path,
    n: u32,
    hold: Duration,
) -> anyhow::Result<Option<f64>> {
    if n == 0 {
        return Ok(None);
    }
    let proxy = ProxyProcess::start(data, n)?;
    let pid = proxy.child.id();
    let target = link
        .routes()
        .first()
        .context("the relay's link has no route")?;
    let first = RelayConnection::connect_via(
        dialer,
        proxy.link.route(),
        target,
        link.relay_key(),
        Duration::from_secs(20),
    )
    .await?;
    first.ping().await?;
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = crate::bench::rss_kib(pid).context("the proxy's memory")?;
    let mut held = Vec::with_capacity(n as usize);
    for _ in 0..n {
        held.push(
            RelayConnection::connect_via(
                dialer,
                proxy.link.route(),
                target,
                link.relay_key(),
                Duration::from_secs(20),
            )
            .await?,
        );
    }
    tokio::time::sleep(hold).await;
    let after = crate::bench::rss_kib(pid).context("the proxy's memory")?;
    // Held, not merely counted: every session still answers.
    for (i, conn) in held.iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(10), conn.ping())
            .await
            .with_context(|| format!("idle session {i} did not answer after {hold:?}"))?
            .with_context(|| format!("idle session {i} failed after {hold:?}"))?;
    }
    drop(held);
    Ok(Some(after.saturating_sub(before) as f64 / f64::from(n)))
}
