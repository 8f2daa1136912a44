//! `pigeon bench attack`: what an honest client gets while a stranger attacks the relay from
//! the same machine (issue #13). For each attack a fresh relay child process (plain `tcp`, or
//! with the tls front and a static cover site) is attacked from 127.0.0.2 at the attacker's full
//! speed for `--seconds`, while an honest client on 127.0.0.1 connects again and again, each
//! time making a mailbox, posting to it and reading the message back. Reported per attack: the
//! honest connect time p50/p99, whether every honest message arrived, and the relay's largest
//! resident memory. Everything stays on loopback and is bounded in connections and time.

use crate::relay_proc::RelayProcess;
use hdrhistogram::Histogram;
use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_lab::attack::{self, Attack, Target};
use pigeon_transport::RelayLink;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench attack`.
#[derive(clap::Args, Debug)]
pub(crate) struct AttackBenchArgs {
    /// Seconds each attack runs (and the honest client is measured).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most connections one attack opens.
    #[arg(long, default_value_t = 5000)]
    max_connections: usize,
    /// Only these attacks (all by default).
    #[arg(long, value_enum)]
    attack: Vec<Attack>,
    /// Print one JSON object per attack instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the honest client saw during one attack.
struct Honest {
    connects: Histogram<u64>,
    rounds: u64,
    failed: u64,
    rss_mib: u64,
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// One honest round on a conversation's mailbox: connect (timed), post, read it back, ack.
async fn honest_round(
    link: &RelayLink,
    mailbox: &OwnedMailbox,
    n: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = RelayConnection::connect(link, Duration::from_secs(10)).await?;
    let took = started.elapsed();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    conn.send(&mailbox.id, &mailbox.sender_cap, id, vec![1; 1024])
        .await?;
    conn.subscribe(&mailbox.key, &mailbox.id).await?;
    match tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await {
        Ok(Some(Event::Push(p))) if p.deliveries.iter().any(|d| d.message_id == id) => {
            let seqs = p.deliveries.iter().map(|d| d.seq).collect();
            conn.ack(&mailbox.id, seqs).await?;
            Ok(took)
        }
        other => anyhow::bail!("the honest message did not come back: {other:?}"),
    }
}

async fn measure(
    link: &RelayLink,
    mailbox: &OwnedMailbox,
    pid: u32,
    until: tokio::time::Instant,
) -> anyhow::Result<Honest> {
    let mut honest = Honest {
        connects: Histogram::new(3)?,
        rounds: 0,
        failed: 0,
        rss_mib: rss_mib(pid),
    };
    while tokio::time::Instant::now() < until {
        honest.rounds += 1;
        match honest_round(link, mailbox, honest.rounds).await {
            Ok(took) => honest
                .connects
                .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?,
            Err(e) => {
                tracing::warn!(error = %e, "an honest round failed");
                honest.failed += 1;
            }
        }
        honest.rss_mib = honest.rss_mib.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(honest)
}

/// A relay for `attack`: plain, or with the tls front over a static cover site.
fn start_relay(dir: &std::path::Path, attack: Attack) -> anyhow::Result<RelayProcess> {
    let data = dir.join(attack.name());
    if Attack::ON_TLS.contains(&attack) {
        let site = dir.join("site");
        std::fs::create_dir_all(&site)?;
        std::fs::write(site.join("index.html"), "<h1>Recipes</h1>\n")?;
        let site = site.to_string_lossy().into_owned();
        RelayProcess::start(
            &data,
            &[
                "--tls",
                "127.0.0.1:0",
                "--sni",
                "cover.test",
                "--cover",
                &site,
            ],
        )
    } else {
        RelayProcess::start(&data, &[])
    }
}

pub(crate) async fn run(args: AttackBenchArgs) -> anyhow::Result<()> {
    let attacks: Vec<Attack> = if args.attack.is_empty() {
        Attack::ON_TCP
            .iter()
            .chain(&Attack::ON_TLS)
            .copied()
            .collect()
    } else {
        args.attack.clone()
    };
    let dir = tempfile::tempdir()?;
    let from: IpAddr = "127.0.0.2".parse()?;
    if !args.json {
        println!("machine: {}", crate::bench::machine());
    }
    for attack in attacks {
        let relay = start_relay(dir.path(), attack)?;
        let route = relay
            .link
            .routes()
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the relay's link has no route"))?;
        let addr: SocketAddr = format!("127.0.0.1:{}", route.port()).parse()?;
        let target = Target {
            addr,
            relay_key: *relay.link.relay_key(),
            tunnel: attack::Tunnel::of(&relay.link),
        };
        if attack == Attack::AnswerAmplification {
            // The slot the attacker fetches from: a 16 KiB last-resort key package.
            let owner = pigeon_proto::auth::generate_signing_key()?;
            let conn = RelayConnection::connect(&relay.link, Duration::from_secs(10)).await?;
            conn.publish_key_packages(&owner, &[0x5a; 32], Vec::new(), Some(vec![7; 16 * 1024]))
                .await?;
        }
        // The honest conversation's mailbox exists before the attack: what is measured is
        // talking, and connecting to talk.
        let mailbox = OwnedMailbox::generate()?;
        RelayConnection::connect(&relay.link, Duration::from_secs(10))
            .await?
            .create_mailbox(&mailbox.key, &mailbox.id, mailbox.cap_hash())
            .await?;
        let until = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
        let attacker = tokio::spawn(attack::run(
            attack,
            target,
            from,
            until,
            args.max_connections,
        ));
        let honest = measure(&relay.link, &mailbox, relay.pid(), until).await?;
        let report = attacker.await?;
        let rss = honest.rss_mib.max(rss_mib(relay.pid()));
        relay.stop()?;
        let ms = |q: f64| honest.connects.value_at_quantile(q) as f64 / 1000.0;
        let ok = honest.failed == 0 && honest.rounds > 0;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "attack": attack.name(),
                    "seconds": args.seconds,
                    "honest_connect_p50_ms": ms(0.5),
                    "honest_connect_p99_ms": ms(0.99),
                    "honest_rounds": honest.rounds,
                    "honest_failed": honest.failed,
                    "honest_ok": ok,
                    "relay_rss_mib": rss,
                    "attacker": {
                        "connections": report.opened,
                        "held_at_end": report.held,
                        "closed_by_relay": report.closed,
                        "requests": report.requests,
                        "refused": report.refused,
                        "served": report.served,
                    },
                })
            );
        } else {
            println!(
                "{:<22} honest connect p50 {:>7.1} ms, p99 {:>7.1} ms; {} of {} rounds ok; relay RSS {} MiB; attacker opened {}, held {} ({} closed by the relay), {} requests ({} refused)",
                attack.name(),
                ms(0.5),
                ms(0.99),
                honest.rounds - honest.failed,
                honest.rounds,
                rss,
                report.opened,
                report.held,
                report.closed,
                report.requests,
                report.refused,
            );
        }
    }
    Ok(())
}
