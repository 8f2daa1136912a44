//! `pigeon bench tls`: what the `tls` transport costs next to plain `tcp`, against one real relay
//! process that serves both (issue #5).
//!
//! * **Bulk stream.** A mailbox is filled with `--mib` MiB of 60 KiB messages over `tcp`
//!   (untimed); then a fresh connection over the route under test subscribes and takes the whole
//!   backlog, acknowledging as it goes, and the time from its subscription to the last byte is
//!   measured. Routes alternate run by run (tcp, tls, tls with 16 KiB rotation), and the median
//!   of `--runs` is reported. Both routes carry the same Noise channel; the difference is TLS
//!   and HTTP/2 (and, with rotation, a new TLS connection per 16 KiB).
//! * **Handshake.** Connect (TCP, then TLS and HTTP/2 for `tls`), Noise handshake, one ping:
//!   sequentially, `--handshakes` times per route, each with a fresh dialer (no TLS session to
//!   resume, as after a restart).
//! * **Idle memory.** `--idle-connections` authenticated connections over `tls` (handshake and
//!   one ping each), then idle: the relay's RSS growth per connection.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_transport::{RelayLink, Route, Transport};

use pigeon_wire::msg::{self, request, response};
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench tls`.
#[derive(clap::Args, Debug)]
pub(crate) struct TlsBenchArgs {
    /// MiB in each bulk download (shorter downloads last a fraction of a second, and a shared
    /// machine's noise swamps them).
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Bulk downloads per route (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sequential connections per route for the handshake figure.
    #[arg(long, default_value_t = 100)]
    handshakes: usize,
    /// Idle tls connections for the memory figure.
    #[arg(long, default_value_t = 9_000)]
    idle_connections: usize,
    /// Skip the idle-connection memory phase.
    #[arg(long)]
    skip_idle: bool,
    /// Skip the bulk download through 16 KiB legs (the slowest part, a TLS handshake per leg).
    #[arg(long)]
    skip_rotating: bool,
    /// Have each idle connection subscribe to a mailbox of its own, as a client waiting for
    /// messages does (the mailboxes are created before the measurement starts).
    #[arg(long)]
    idle_subscribed: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Size of each message of the bulk download.
const BULK_MESSAGE: usize = 60 * 1024;
const TIMEOUT: Duration = Duration::from_secs(20);

/// The routes compared: plain tcp, tls as the relay offers it, and tls rotating every 16 KiB.
struct Routes {
    tcp: Route,
    tls: Route,
    tls_rotating: Route,
}

impl Routes {
    fn of(link: &RelayLink) -> anyhow::Result<Self> {
        let find = |t: Transport| {
            link.routes()
                .iter()
                .find(|r| *r.transport() == t)
                .cloned()
                .with_context(|| format!("the relay's link has no {} route", t.name()))
        };
        let tls = find(Transport::Tls)?.with_param("rotate", "off")?;
        Ok(Self {
            tcp: find(Transport::Tcp)?,
            tls_rotating: tls.clone().with_param("rotate", "16k")?,
            tls,
        })
    }

    fn all(&self) -> [(&'static str, &Route); 3] {
        [
            ("tcp", &self.tcp),
            ("tls", &self.tls),
            ("tls, 16 KiB legs", &self.tls_rotating),
        ]
    }
}

/// A link to the relay with one route only, so a connection takes exactly that route.
fn only(link: &RelayLink, route: &Route) -> anyhow::Result<RelayLink> {
    Ok(RelayLink::new(
        *link.relay_key(),
        vec![route.clone()],
        None,
    )?)
}

/// Fills a fresh mailbox with `bytes` of messages over `tcp`, then downloads it over `route`;
/// returns the download's MiB/s.
async fn bulk_once(
    link: &RelayLink,
    tcp: &Route,
    route: &Route,
    dialer: &pigeon_transport::Transports,
    bytes: usize,
) -> anyhow::Result<f64> {
    let owner = OwnedMailbox::generate()?;
    let sender = RelayConnection::connect_with(dialer, &only(link, tcp)?, TIMEOUT).await?;
    sender
        .create_mailbox(&owner.key, &owner.id, owner.cap_hash())
        .await?;
    let count = bytes.div_ceil(BULK_MESSAGE);
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let mut message_id = [0u8; 16];
        message_id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let sent = sender
            .submit(request::Body::Send(msg::Send {
                mailbox_id: owner.id.0.to_vec(),
                sender_cap: owner.sender_cap.to_vec(),
                message_id: message_id.to_vec(),
                ciphertext: vec![0xa5; BULK_MESSAGE],
                first_attempt: false,
            }))
            .await?;
        pending.push(sent);
    }
    for sent in pending {
        match sent.await.context("the relay dropped a send")? {
            response::Result::Sent(_) => {}
            other => anyhow::bail!("a send was refused: {other:?}"),
        }
    }
    drop(sender);

    let mut receiver = RelayConnection::connect_with(dialer, &only(link, route)?, TIMEOUT).await?;
    let start = Instant::now();
    let waiting = receiver.subscribe(&owner.key, &owner.id).await?;
    anyhow::ensure!(
        usize::try_from(waiting)? == count,
        "the mailbox holds {waiting} messages, not {count}"
    );
    let mut got = 0usize;
    let mut received = 0usize;
    while got < count {
        let event = tokio::time::timeout(TIMEOUT, receiver.next_event())
            .await
            .context("the download stalled")?
            .context("the connection ended during the download")?;
        let Event::Push(push) = event else { continue };
        let seqs: Vec<u64> = push.deliveries.iter().map(|d| d.seq).collect();
        got += seqs.len();
        received += push
            .deliveries
            .iter()
            .map(|d| d.ciphertext.len())
            .sum::<usize>();
        // Acknowledged without waiting for the answer, as a client does while reading.
        drop(
            receiver
                .submit(request::Body::Ack(msg::Ack {
                    mailbox_id: push.mailbox_id,
                    seqs,
                }))
                .await?,
        );
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(received as f64 / (1024.0 * 1024.0) / secs)
}

/// Handshake times over `route` in milliseconds, each with a fresh dialer.
async fn handshakes(link: &RelayLink, route: &Route, n: usize) -> anyhow::Result<Histogram<u64>> {
    let link = only(link, route)?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..n {
        let dialer = pigeon_client::transports()?;
        let start = Instant::now();
        let conn = RelayConnection::connect_with(&dialer, &link, TIMEOUT).await?;
        conn.ping().await?;
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.record(us.max(1))?;
    }
    Ok(hist)
}

fn ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) async fn run(args: TlsBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let flags = [
        "--tls",
        "127.0.0.1:0",
        "--public",
        "127.0.0.1",
        "--sends-per-sec",
        "100000000",
        "--max-depth",
        "10000000",
    ];
    let relay = RelayProcess::start_for_load(&tmp.path().join("relay"), &flags)?;
    let routes = Routes::of(&relay.link)?;
    let dialer = pigeon_client::transports()?;
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };

    let all = routes.all();
    let compared = &all[..if args.skip_rotating { 2 } else { 3 }];
    let mut rates: Vec<(&str, Vec<f64>)> = compared.iter().map(|(n, _)| (*n, vec![])).collect();
    for run in 0..args.runs {
        for (i, (name, route)) in compared.iter().enumerate() {
            let rate = bulk_once(&relay.link, &routes.tcp, route, &dialer, args.mib << 20)
                .await
                .with_context(|| format!("bulk download over {name}"))?;
            say(format!("bulk run {}: {name} {rate:.1} MiB/s", run + 1));
            rates[i].1.push(rate);
        }
    }
    let bulk: Vec<(&str, f64)> = rates
        .into_iter()
        .map(|(n, v)| (n, crate::bench::median(v)))
        .collect();

    let mut shakes = Vec::new();
    for (name, route) in &routes.all()[..2] {
        say(format!("{} handshakes over {name} …", args.handshakes));
        shakes.push((
            *name,
            handshakes(&relay.link, route, args.handshakes).await?,
        ));
    }

    let idle = if args.skip_idle {
        None
    } else {
        say(format!(
            "opening {} idle tls connections …",
            args.idle_connections
        ));
        // A relay of its own, so the figure holds nothing of the phases before.
        let relay = RelayProcess::start_for_load(&tmp.path().join("relay-idle"), &flags)?;
        let tls = Routes::of(&relay.link)?.tls;
        Some(
            crate::bench::idle_memory(
                relay.pid(),
                &tls,
                *relay.link.relay_key(),
                args.idle_connections,
                args.idle_subscribed,
            )
            .await?,
        )
    };

    let tcp_rate = bulk[0].1;
    let result = serde_json::json!({
        "machine": crate::bench::machine(),
        "bulk_mib": args.mib,
        "bulk_runs": args.runs,
        "bulk_tcp_mib_s": bulk[0].1,
        "bulk_tls_mib_s": bulk[1].1,
        "bulk_tls_16k_mib_s": bulk.get(2).map(|b| b.1),
        "tls_vs_tcp": bulk[1].1 / tcp_rate,
        "tls_16k_vs_tcp": bulk.get(2).map(|b| b.1 / tcp_rate),
        "handshake_tcp_p50_ms": ms(&shakes[0].1, 0.5),
        "handshake_tcp_p99_ms": ms(&shakes[0].1, 0.99),
        "handshake_tls_p50_ms": ms(&shakes[1].1, 0.5),
        "handshake_tls_p99_ms": ms(&shakes[1].1, 0.99),
        "idle_connections": args.idle_connections,
        "idle_subscribed": args.idle_subscribed,
        "idle_tls_conn_user_bytes": idle.map(|(u, _)| u.round()),
        "idle_tls_conn_total_bytes": idle.map(|(_, t)| t.round()),
    });
    if args.json {
        println!("{result}");
        return Ok(());
    }
    println!("machine: {}", crate::bench::machine());
    if args.runs == 0 {
        println!("bulk download: skipped (--runs 0)");
    } else {
        println!(
            "bulk download of {} MiB through the relay (median of {}):",
            args.mib, args.runs
        );
        for (name, rate) in &bulk {
            println!(
                "  {name:<17} {rate:>8.1} MiB/s  ({:.0} % of tcp)",
                rate / tcp_rate * 100.0
            );
        }
        println!("  (target: tls ≥ 85 % of tcp)");
    }
    println!(
        "connect + handshake + ping, {} each, fresh dialer:",
        args.handshakes
    );
    for (name, hist) in &shakes {
        println!(
            "  {name:<17} p50 {:.2} ms, p99 {:.2} ms",
            ms(hist, 0.5),
            ms(hist, 0.99)
        );
    }
    if let Some((user, total)) = idle {
        println!(
            "memory per idle authenticated{} tls connection at {}: {user:.0} B user space (target ≤ 2048), {total:.0} B including the kernel",
            if args.idle_subscribed {
                ", subscribed"
            } else {
                ""
            },
            args.idle_connections
        );
    }
    Ok(())
}
