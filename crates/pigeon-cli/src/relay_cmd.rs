//! `pigeon relay`: serve mailboxes until SIGINT or SIGTERM.

use anyhow::Context as _;
use pigeon_proto::StaticKeypair;
use pigeon_relay::{Metrics, RelayConfig};
use pigeon_store::{FjallStore, Limits};
use pigeon_transport::{RelayLink, Route};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `pigeon relay`.
#[derive(clap::Args, Debug)]
pub(crate) struct RelayArgs {
    /// Directory for the relay's key and store (created if missing).
    #[arg(long, env = "PIGEON_RELAY_DATA")]
    data: PathBuf,
    /// Address to listen on for the plain `tcp` transport (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Host (and port) to put in the relay link, when clients reach this relay by another
    /// name or address than `--listen` (behind NAT, a DNS name). Defaults to the listen address.
    #[arg(long)]
    public: Option<String>,
    /// Address for the Prometheus metrics endpoint (`GET /metrics`); off when absent.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Most messages one mailbox may hold.
    #[arg(long, default_value_t = Limits::default().max_depth)]
    max_depth: u64,
    /// Days after which undelivered messages expire.
    #[arg(long, default_value_t = 21)]
    expiry_days: u64,
    /// Sends per second allowed per sender capability (sustained).
    #[arg(long, default_value_t = RelayConfig::default().sends_per_sec)]
    sends_per_sec: f32,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = RelayConfig::default().max_connections)]
    max_connections: usize,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
}

const KEY_FILE: &str = "relay.key";

fn load_or_create_key(dir: &Path) -> anyhow::Result<StaticKeypair> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => StaticKeypair::from_private(&bytes)
            .with_context(|| format!("the relay key file {} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = StaticKeypair::generate().context("could not generate the relay key")?;
            let tmp = dir.join(format!("{KEY_FILE}.tmp"));
            {
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let _ = std::fs::remove_file(&tmp);
                let mut f = opts
                    .open(&tmp)
                    .with_context(|| format!("could not create {}", tmp.display()))?;
                f.write_all(keys.private())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            tracing::info!("created a new relay key");
            Ok(keys)
        }
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

fn link_route(args: &RelayArgs, bound: SocketAddr) -> anyhow::Result<Route> {
    if let Some(public) = &args.public {
        let text = format!("tcp://{public}");
        let with_port = if public
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !public.ends_with(']')
        {
            text
        } else {
            format!("tcp://{public}:{}", bound.port())
        };
        return with_port
            .parse()
            .with_context(|| format!("--public {public:?} is not a usable host"));
    }
    let ip = if bound.ip().is_unspecified() {
        tracing::warn!("listening on all addresses: the link names loopback; pass --public");
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bound.ip()
    };
    Ok(Route::tcp(&ip.to_string(), bound.port())?)
}

/// Installs the SIGTERM and SIGINT handlers now (before the link is printed, so a supervisor
/// that stops the relay right after start gets a graceful drain) and returns the future that
/// resolves on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("could not handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("could not handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

pub(crate) async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("could not create {}", args.data.display()))?;
    let keys = load_or_create_key(&args.data)?;
    let limits = Limits {
        max_depth: args.max_depth,
        expiry_secs: args.expiry_days.saturating_mul(86_400),
        ..Limits::default()
    };
    let store = FjallStore::open(&args.data.join("store"), limits)
        .context("could not open the relay's store")?;
    let listener = pigeon_transport::tcp::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let link = RelayLink::new(*keys.public(), vec![link_route(&args, bound)?], None)?;
    let link_text = link.to_string();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{link_text}")?;
        if !args.no_qr {
            writeln!(out, "{}", crate::qr::render(&link_text)?)?;
        }
        out.flush()?;
    }
    let metrics = Arc::new(Metrics::default());
    let metrics_task = match args.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen for metrics on {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "metrics endpoint up");
            Some(tokio::spawn(pigeon_relay::metrics::serve(
                l,
                Arc::clone(&metrics),
            )))
        }
        None => None,
    };
    let config = RelayConfig {
        sends_per_sec: args.sends_per_sec,
        send_burst: (args.sends_per_sec * 4.0).max(RelayConfig::default().send_burst),
        max_connections: args.max_connections,
        ..RelayConfig::default()
    };
    tracing::info!(listen = %bound, "relay serving");
    pigeon_relay::run(listener, store, keys, config, metrics, shutdown).await?;
    if let Some(t) = metrics_task {
        t.abort();
    }
    tracing::info!("relay stopped");
    Ok(())
}
