//! `pigeon connect`: the route search, shown as it happens.
//!
//! Every other command searches the same way, silently (`pigeon_client::Client`): each route
//! to a relay (its transports, and each through every proxy) is tried in parallel with
//! staggered starts, the one that last worked on this network first.

use crate::user_cmd::{ProfileArg, open_client, safe};
use pigeon_client::RouteProgress;
use pigeon_wire::ErrorKind;
use std::io::Write as _;
use std::time::Duration;

/// `pigeon connect`.
#[derive(clap::Args, Debug)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// Print JSON lines (`event`: `trying`, `failed`, `connected`, then `done` per relay).
    #[arg(long)]
    json: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::LocalNetwork => "local_network",
        ErrorKind::Relay => "relay",
        ErrorKind::Peer => "peer",
        ErrorKind::BadInput => "bad_input",
        ErrorKind::Refused => "refused",
        _ => "internal",
    }
}

/// A progress line for people, or a JSON line.
fn line(json: bool, relay: usize, p: &RouteProgress) -> String {
    match (json, p) {
        (false, RouteProgress::Trying { route, after }) => {
            format!("  {:>6} ms  trying     {}", ms(*after), safe(route))
        }
        (
            false,
            RouteProgress::Failed {
                route,
                after,
                error,
                kind,
            },
        ) => {
            let hint = if *kind == ErrorKind::LocalNetwork {
                " (stopped on the way: blocking, or the relay is down)"
            } else {
                ""
            };
            format!(
                "  {:>6} ms  failed     {}: {}{hint}",
                ms(*after),
                safe(route),
                safe(error)
            )
        }
        (false, RouteProgress::Connected { route, after }) => {
            format!("  {:>6} ms  connected  {}", ms(*after), safe(route))
        }
        (true, RouteProgress::Trying { route, after }) => serde_json::json!({
            "event": "trying", "relay": relay, "route": route, "ms": ms(*after),
        })
        .to_string(),
        (
            true,
            RouteProgress::Failed {
                route,
                after,
                error,
                kind,
            },
        ) => serde_json::json!({
            "event": "failed", "relay": relay, "route": route, "ms": ms(*after),
            "error": error, "kind": kind_name(*kind),
            "censorship_likely": *kind == ErrorKind::LocalNetwork,
        })
        .to_string(),
        (true, RouteProgress::Connected { route, after }) => serde_json::json!({
            "event": "connected", "relay": relay, "route": route, "ms": ms(*after),
        })
        .to_string(),
    }
}

pub(crate) async fn run(args: ConnectArgs) -> anyhow::Result<u8> {
    let json = args.json;
    let mut client = open_client(&args.profile)?;
    let relays = client.relays()?;
    let current = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shown = std::sync::Arc::clone(&current);
    client.set_progress(Box::new(move |_, p| {
        let relay = shown.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line(json, relay, &p));
        let _ = out.flush();
    }));
    let mut failed = 0usize;
    for (i, relay) in relays.iter().enumerate() {
        current.store(i, std::sync::atomic::Ordering::Relaxed);
        let label = relay
            .routes()
            .first()
            .map_or_else(|| "a relay without routes".to_owned(), |r| r.redacted());
        let whose = if i == 0 {
            "your relay"
        } else {
            "a contact's or group's relay"
        };
        if !json {
            println!("{} ({whose}):", safe(&label));
        }
        let started = std::time::Instant::now();
        match client.connect(relay).await {
            Ok(route) => {
                let took = ms(started.elapsed());
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event": "done", "relay": i, "connected": true,
                            "route": route, "ms": took,
                        })
                    );
                } else {
                    println!("Connected via {} in {took} ms.", safe(&route));
                }
            }
            Err(e) => {
                failed += 1;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event": "done", "relay": i, "connected": false,
                            "error": e.to_string(),
                        })
                    );
                } else {
                    println!("Not connected: {}", safe(&e.to_string()));
                }
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
