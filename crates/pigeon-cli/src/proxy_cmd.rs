//! `pigeon proxy`: a volunteer proxy or domestic hop in one command (issue #15).
//!
//! It serves the `tls` transport exactly as a relay's front does (its own cover site,
//! certificate from files, made here, or from ACME; admission limits per source) and carries
//! each client's session onward to the relay the client names, over the `tls` transport again
//! ([`pigeon_transport_tls::hop`]): the relay session stays encrypted end to end, and the proxy
//! sees no content and no mailbox ids. It prints a `pigeon://proxy#…` link and its QR code. It
//! keeps no addresses in its logs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pigeon_relay::metrics::{Counter, Gauge};
use pigeon_transport::admission::AdmissionLimits;
use pigeon_transport::{Accept, ProxyLink, RelayLink, ServerStream, Transport, Transports};
use pigeon_transport_tls::hop::{self, HopPolicy, Outcome, Setup};
use tokio::sync::Semaphore;

/// Time a client has to name its relay, and the proxy to reach it.
const HOP_TIMEOUT: Duration = Duration::from_secs(20);

/// `pigeon proxy`.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxyArgs {
    /// Directory for the proxy's secrets (its tls path and key, its own certificate).
    #[arg(long, value_name = "DIR", default_value = "pigeon-proxy-data")]
    data: PathBuf,
    /// Carry sessions only to this relay (its link); repeat for more. Without it, to the tls
    /// route of any relay a client names (never to anything but a relay's tls front).
    #[arg(long = "only", value_name = "RELAYLINK")]
    only: Vec<String>,
    /// Most client sessions carried at once.
    #[arg(long, default_value_t = 4096)]
    max_sessions: usize,
    /// Most connections in their handshake at once (the oldest is closed to make room).
    #[arg(long, default_value_t = AdmissionLimits::default().max_handshakes)]
    max_handshakes: usize,
    /// Most connections from one source address (an IPv6 /64 counts as one), counted in memory
    /// only and never logged.
    #[arg(long, default_value_t = AdmissionLimits::default().per_source)]
    max_per_source: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (counts only: no addresses, no
    /// relays).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
    #[command(flatten)]
    tls: crate::relay_cmd::TlsArgs,
}

/// What the proxy counts. Nothing is labelled by client, relay or address.
#[derive(Debug, Default)]
struct ProxyMetrics {
    sessions: Counter,
    active: Gauge,
    refused: Counter,
    unreachable: Counter,
    failed: Counter,
    full: Counter,
    bytes_up: Counter,
    bytes_down: Counter,
}

impl hop::Meter for ProxyMetrics {
    fn connected(&self) {
        self.sessions.inc();
    }

    fn up(&self, n: u64) {
        self.bytes_up.add(n);
    }

    fn down(&self, n: u64) {
        self.bytes_down.add(n);
    }
}

impl ProxyMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        line(
            "pigeon_proxy_sessions_total",
            "counter",
            "Client sessions connected to a relay.",
            self.sessions.get().to_string(),
        );
        line(
            "pigeon_proxy_sessions_active",
            "gauge",
            "Client sessions being carried now.",
            self.active.get().to_string(),
        );
        line(
            "pigeon_proxy_refused_total",
            "counter",
            "Sessions that named a route this proxy does not serve.",
            self.refused.get().to_string(),
        );
        line(
            "pigeon_proxy_unreachable_total",
            "counter",
            "Sessions whose relay did not answer the proxy.",
            self.unreachable.get().to_string(),
        );
        line(
            "pigeon_proxy_failed_total",
            "counter",
            "Sessions that broke off (a malformed request, a side failing mid-way).",
            self.failed.get().to_string(),
        );
        line(
            "pigeon_proxy_full_total",
            "counter",
            "Sessions closed because every slot was in use (--max-sessions).",
            self.full.get().to_string(),
        );
        line(
            "pigeon_proxy_bytes_up_total",
            "counter",
            "Bytes carried from clients to relays.",
            self.bytes_up.get().to_string(),
        );
        line(
            "pigeon_proxy_bytes_down_total",
            "counter",
            "Bytes carried from relays to clients.",
            self.bytes_down.get().to_string(),
        );
        out
    }
}

/// Runs the proxy until SIGTERM or SIGINT.
pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let shutdown = crate::relay_cmd::shutdown_signal()?;
    crate::relay_cmd::create_private_dir(&args.data)?;
    let policy = policy(&args.only)?;
    let admission = AdmissionLimits {
        max_handshakes: args.max_handshakes,
        per_source: args.max_per_source,
        ..AdmissionLimits::default()
    };
    let setup = crate::relay_cmd::setup_tls(&args.data, &args.tls, admission)
        .await?
        .ok_or_else(|| anyhow::anyhow!("pass --tls HOST:PORT (or --tls-backend) to serve"))?;
    let _acme = setup.acme;
    let link = ProxyLink::new(setup.route).context("the proxy's link")?;
    crate::relay_cmd::print_link(&link.to_string(), args.no_qr)?;
    let metrics = Arc::new(ProxyMetrics::default());
    let m = Arc::clone(&metrics);
    let metrics_task =
        crate::relay_cmd::metrics_endpoint(args.metrics, Arc::new(move || m.render())).await?;
    // Onward, the proxy dials what the policy allows through the registered transports.
    let transports = Arc::new(pigeon_client::transports().context("the onward tls client")?);
    let ctx = Arc::new(Carry {
        transports,
        policy: Arc::new(policy),
        slots: Arc::new(Semaphore::new(args.max_sessions.max(1))),
        metrics: Arc::clone(&metrics),
    });
    let mut tasks = Vec::new();
    if let Some(front) = setup.front {
        tracing::info!(listen = %front.local_addr(), "proxy serving");
        tasks.push(tokio::spawn(accept_loop(front, Arc::clone(&ctx))));
    }
    if let Some(backend) = setup.backend {
        tracing::info!(listen = %backend.local_addr(), "proxy backend (h2c) serving");
        tasks.push(tokio::spawn(accept_loop(backend, Arc::clone(&ctx))));
    }
    shutdown.await;
    for task in tasks.into_iter().chain(metrics_task) {
        task.abort();
    }
    Ok(())
}

/// Carries the sessions one acceptor yields (any transport's; the acceptor admitted them)
/// until it stops or fails.
async fn accept_loop<A: Accept>(mut acceptor: A, ctx: Arc<Carry>) {
    while let Some(next) = acceptor.accept().await {
        match next {
            Ok(accepted) => ctx.carry(accepted.stream),
            Err(e) => {
                tracing::error!(error = %e, "the proxy stopped accepting");
                return;
            }
        }
    }
}

/// What every carried session shares.
struct Carry {
    transports: Arc<Transports>,
    policy: Arc<HopPolicy>,
    slots: Arc<Semaphore>,
    metrics: Arc<ProxyMetrics>,
}

impl Carry {
    /// Carries one client session in its own task, if a slot is free (else it is closed).
    fn carry<T: ServerStream>(&self, session: T) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.metrics.full.inc();
            tracing::debug!("all session slots in use; a session was closed");
            return;
        };
        let (transports, policy, metrics) = (
            Arc::clone(&self.transports),
            Arc::clone(&self.policy),
            Arc::clone(&self.metrics),
        );
        tokio::spawn(async move {
            metrics.active.inc();
            // The setup in this task; the carrying in one of its own, which holds only what
            // carrying needs (most sessions a proxy holds are carried and idle).
            match hop::setup(session, &transports, &policy, HOP_TIMEOUT, &*metrics).await {
                Ok(Setup::Carry(carried)) => {
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Err(e) = carried.carry(&*metrics).await {
                            metrics.failed.inc();
                            tracing::debug!(error = %e, "session ended");
                        }
                        metrics.active.dec();
                    });
                }
                Ok(Setup::Done(outcome)) => {
                    match outcome {
                        Outcome::Refused => metrics.refused.inc(),
                        Outcome::Unreachable => metrics.unreachable.inc(),
                        Outcome::Carried(_) => {}
                    }
                    metrics.active.dec();
                    drop(permit);
                }
                Err(e) => {
                    metrics.failed.inc();
                    tracing::debug!(error = %e, "session ended");
                    metrics.active.dec();
                    drop(permit);
                }
            }
        });
    }
}

/// The relays `--only` names: the host and port of each of their tls routes.
fn policy(only: &[String]) -> anyhow::Result<HopPolicy> {
    if only.is_empty() {
        return Ok(HopPolicy::default());
    }
    let mut allowed = Vec::new();
    for text in only {
        let link: RelayLink = text
            .parse()
            .with_context(|| format!("--only {text:?} is not a relay link"))?;
        for route in link.routes() {
            if *route.transport() == Transport::Tls {
                allowed.push((route.host().clone(), route.port()));
            }
        }
    }
    anyhow::ensure!(
        !allowed.is_empty(),
        "the --only links have no tls route: the proxy reaches relays over tls only"
    );
    Ok(HopPolicy {
        only: Some(allowed),
    })
}

/// `pigeon proxies`: the proxies this profile reaches its relays through.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum ProxiesCommand {
    /// Add a proxy (a `pigeon://proxy#…` link). Relays are then tried directly first and
    /// through the proxy a moment later; with --always, only through proxies.
    Add(ProxiesAddArgs),
    /// List the proxies.
    List(ProxiesListArgs),
    /// Remove a proxy.
    Remove(ProxiesRemoveArgs),
}

/// `pigeon proxies add`.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxiesAddArgs {
    #[command(flatten)]
    profile: crate::user_cmd::ProfileArg,
    /// The proxy's link.
    link: String,
    /// Reach relays only through proxies, never directly (a direct attempt to a blocked relay
    /// shows the network whom you talk to).
    #[arg(long)]
    always: bool,
}

/// `pigeon proxies list`.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxiesListArgs {
    #[command(flatten)]
    profile: crate::user_cmd::ProfileArg,
}

/// `pigeon proxies remove`.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxiesRemoveArgs {
    #[command(flatten)]
    profile: crate::user_cmd::ProfileArg,
    /// The proxy's link.
    link: String,
}

/// Runs a `pigeon proxies` command.
pub(crate) fn proxies(cmd: ProxiesCommand) -> anyhow::Result<()> {
    match cmd {
        ProxiesCommand::Add(args) => {
            let link = ProxyLink::parse(args.link.trim()).context("not a proxy link")?;
            let profile = crate::user_cmd::open_profile(&args.profile)?;
            let new = profile.add_proxy(&link, args.always)?;
            let how = if args.always {
                "relays are now reached only through proxies"
            } else {
                "relays are tried directly first, then through it"
            };
            let what = if new { "Added" } else { "Updated" };
            println!("{what} the proxy at {}: {how}.", link.route().redacted());
        }
        ProxiesCommand::List(args) => {
            let profile = crate::user_cmd::open_profile(&args.profile)?;
            let saved = profile.proxies()?;
            if saved.is_empty() {
                println!("No proxies: relays are reached directly.");
            }
            for p in saved {
                let always = if p.always { " (always)" } else { "" };
                println!("{}{always}\n  {}", p.link.route().redacted(), p.link);
            }
        }
        ProxiesCommand::Remove(args) => {
            let link = ProxyLink::parse(args.link.trim()).context("not a proxy link")?;
            let profile = crate::user_cmd::open_profile(&args.profile)?;
            anyhow::ensure!(
                profile.remove_proxy(&link)?,
                "that proxy is not in this profile (`pigeon proxies list` shows them)"
            );
            println!("Removed the proxy at {}.", link.route().redacted());
        }
    }
    Ok(())
}
