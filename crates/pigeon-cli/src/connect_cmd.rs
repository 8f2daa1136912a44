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
    let labels: Vec<String> = relays
        .iter()
        .map(|r| {
            r.routes()
                .first()
                .map_or_else(|| "a relay without routes".to_owned(), |r| r.redacted())
        })
        .collect();
    if !json {
        for (i, label) in labels.iter().enumerate() {
            let whose = if i == 0 {
                "your first relay"
            } else {
                "another of your relays, or a contact's or group's"
            };
            println!("relay {i}: {} ({whose})", safe(label));
        }
    }
    // Every relay is searched at once; each line says which relay it is about.
    let keys: Vec<[u8; 32]> = relays.iter().map(|r| *r.relay_key()).collect();
    // When each relay connected, for its `done` line.
    let times = std::sync::Arc::new(std::sync::Mutex::new(vec![None; relays.len()]));
    let seen = std::sync::Arc::clone(&times);
    client.set_progress(Box::new(move |link, p| {
        let relay = keys
            .iter()
            .position(|k| k == link.relay_key())
            .unwrap_or_default();
        if let RouteProgress::Connected { after, .. } = &p
            && let Ok(mut t) = seen.lock()
            && let Some(slot) = t.get_mut(relay)
        {
            *slot = Some(ms(*after));
        }
        let mut out = std::io::stdout().lock();
        let text = line(json, relay, &p);
        let _ = if json {
            writeln!(out, "{text}")
        } else {
            writeln!(out, "  relay {relay} {}", text.trim_start())
        };
        let _ = out.flush();
    }));
    let results = client.connect_all(&relays).await;
    let times = times.lock().map(|t| t.clone()).unwrap_or_default();
    let mut failed = 0usize;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(route) => {
                let took = times.get(i).copied().flatten().unwrap_or(0);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event": "done", "relay": i, "connected": true,
                            "route": route, "ms": took,
                        })
                    );
                } else {
                    println!("relay {i}: connected via {} in {took} ms.", safe(&route));
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
                    println!("relay {i}: not connected: {}", safe(&e.to_string()));
                }
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
