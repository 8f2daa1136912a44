//! `pigeon relay`: serve mailboxes until SIGINT or SIGTERM.

use anyhow::Context as _;
use pigeon_proto::StaticKeypair;
use pigeon_relay::{Metrics, RelayConfig};
use pigeon_store::{FjallStore, Limits, MailboxStore};
use pigeon_store_nats::{NatsOptions, NatsStore};
use pigeon_transport::admission::AdmissionLimits;
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
    /// Where the mailboxes are kept: the embedded store under `--data` (the default), or a NATS
    /// JetStream cluster, `nats://HOST:PORT[,HOST:PORT…]` (the relay's key stays under `--data`
    /// either way). See the README's "A relay on NATS JetStream".
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// With `--store nats://…`: copies of each stream in the cluster (3 in a cluster of three or
    /// more nodes). Fixed when the streams are first made.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    store_replicas: u8,
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
    /// Most messages one group log may hold (a log keeps messages until they expire).
    #[arg(long, default_value_t = Limits::default().max_log_depth)]
    max_log_depth: u64,
    /// Days after which undelivered messages expire.
    #[arg(long, default_value_t = 21)]
    expiry_days: u64,
    /// Seconds after which undelivered messages expire, instead of `--expiry-days` (for tests
    /// of what expiry does to devices that were away).
    #[arg(long, hide = true)]
    expiry_secs: Option<u64>,
    /// Seconds between expiry sweeps.
    #[arg(long, hide = true, default_value_t = RelayConfig::default().expiry_interval.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    sweep_secs: u64,
    /// Days after which a mailbox or key-package slot that nobody used is deleted with what it
    /// holds. A client renews what it uses: subscribing to a mailbox (or staying subscribed)
    /// and publishing to a slot count. An invitation not accepted within this time stops
    /// working.
    #[arg(long, default_value_t = Limits::default().idle_secs / 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    idle_days: u64,
    /// Sends per second allowed per sender capability (sustained).
    #[arg(long, default_value_t = RelayConfig::default().sends_per_sec)]
    sends_per_sec: f32,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = RelayConfig::default().max_connections)]
    max_connections: usize,
    /// Most connections in their handshake (TCP or TLS) at once; when full, the oldest
    /// handshake is closed to make room.
    #[arg(long, default_value_t = AdmissionLimits::default().max_handshakes)]
    max_handshakes: usize,
    /// Most connections in their handshake at once from one source address (an IPv6 /64);
    /// its oldest is closed to make room.
    #[arg(long, default_value_t = AdmissionLimits::default().per_source_handshakes)]
    max_handshakes_per_source: usize,
    /// Most connections at once from one source address (an IPv6 /64), tunnel legs with a
    /// valid token aside. Counted in memory only, never logged. Many people can share one
    /// address behind a carrier's NAT: keep it generous.
    #[arg(long, default_value_t = AdmissionLimits::default().per_source)]
    max_per_source: usize,
    /// Seconds after which a connection that subscribes to nothing and sends nothing is
    /// closed.
    #[arg(long, default_value_t = RelayConfig::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Mailboxes, logs and key-package publications the relay makes per second, from everyone
    /// (ten times this in a burst); one session makes at most 64.
    #[arg(long, default_value_t = RelayConfig::default().creations_per_sec)]
    creations_per_sec: f32,
    /// The same from one source address on the plain `tcp` listener (ten times this in a
    /// burst).
    #[arg(long, default_value_t = RelayConfig::default().source_creations_per_sec)]
    creations_per_source: f32,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The `tls` transport's settings of `pigeon relay`.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "The tls transport (a real HTTPS site in front of the relay)")]
pub(crate) struct TlsArgs {
    /// Address for the tls front: HTTPS with the tunnel behind a secret path (e.g. 0.0.0.0:443).
    #[arg(long, value_name = "HOST:PORT")]
    tls: Option<SocketAddr>,
    /// Certificate chain (PEM) for the tls front; without it (and without --acme) the relay
    /// makes its own and pins it in the link (its key is kept in the data directory:
    /// tls-key.pem).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Pin the certificate's key in the link even though it comes from --cert or --acme (for a
    /// certificate no browser would accept).
    #[arg(long)]
    pin: bool,
    /// Get the front's certificate for this DNS name from an ACME CA (Let's Encrypt unless
    /// --acme-directory says otherwise), and renew it while the relay runs; using it agrees to
    /// the CA's terms. The name's DNS must point at this server, and its port 80 at
    /// --acme-http. Also the default --sni and --tls-public host. See docs/ACME.md.
    #[arg(long, value_name = "DOMAIN", requires = "tls", conflicts_with_all = ["cert", "key"])]
    acme: Option<String>,
    /// Contact address for the ACME account (the CA writes about expiring certificates).
    #[arg(long, value_name = "ADDR", requires = "acme")]
    acme_email: Option<String>,
    /// The ACME CA's directory URL.
    #[arg(long, value_name = "URL", default_value = crate::acme::LETS_ENCRYPT)]
    acme_directory: String,
    /// Address for the ACME HTTP-01 challenge listener, which redirects every other request to
    /// https://DOMAIN/ (what a real site does on port 80). Port 80 of DOMAIN must reach it.
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:80")]
    acme_http: SocketAddr,
    /// Trust only this root certificate (PEM) for the ACME directory's HTTPS, instead of the
    /// system's (for a test CA such as pebble).
    #[arg(long, value_name = "FILE", requires = "acme")]
    acme_ca: Option<PathBuf>,
    /// What everyone without the secret sees: a directory of static files, or another web server
    /// (`http://HOST:PORT`) that connections are passed to as they came.
    #[arg(long, value_name = "DIR|URL")]
    cover: Option<String>,
    /// The other web server's cleartext HTTP/2 (h2c) port, for HTTP/2 connections
    /// (`http://HOST:PORT`); without it they are translated to HTTP/1.1.
    #[arg(long, value_name = "URL", requires = "cover")]
    cover_h2c: Option<String>,
    /// The other web server's own HTTPS port (`HOST:PORT`). With a DNS name for the outer
    /// hello (--sni, or a named --tls-public), clients prove themselves inside their
    /// ClientHello (a real Encrypted Client Hello where Chrome sends a GREASE one; the link gets
    /// `ech=1`), and every other connection — browsers, scanners, JARM-style probes, replays —
    /// is passed to this port with every byte it sent, untouched: the site's own TLS and HTTP
    /// answer it. Without a name, only connections that do not open with a well-formed
    /// ClientHello are passed; well-formed ones meet the front's own TLS (rustls), which a TLS
    /// fingerprinting scan (JARM) tells from the site's. Without --cover-tls at all, a prober
    /// can tell the front from the site by those answers too.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "acme")]
    cover_tls: Option<SocketAddr>,
    /// Address for cleartext HTTP/2 from a reverse proxy or CDN that terminates TLS and forwards
    /// the secret path here (nginx: `grpc_pass grpc://HOST:PORT`). Keep it on loopback or a
    /// private network.
    #[arg(long, value_name = "HOST:PORT")]
    tls_backend: Option<SocketAddr>,
    /// Host (and port) clients dial for tls, when not the --tls address (a DNS name, or the
    /// proxy's address when --tls-backend is used).
    #[arg(long, value_name = "HOST[:PORT]")]
    tls_public: Option<String>,
    /// Name to send in the TLS ClientHello (SNI); defaults to the public host when it is a name.
    /// Use a name whose DNS points at this server.
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// The secret path prefix (default: made once at random and kept in the data directory).
    #[arg(long, value_name = "PATH")]
    tls_path: Option<String>,
    /// Per-connection download cap clients keep under: `auto` (learn it), `off`, or bytes
    /// (`16k`). Sets the link's `rotate` parameter.
    #[arg(long, value_name = "auto|off|BYTES", default_value = "auto")]
    rotate: String,
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

/// The `tls` transport's listeners and the route for the link.
pub(crate) struct TlsSetup {
    /// The front, with `--tls`.
    pub(crate) front: Option<pigeon_transport_tls::Front>,
    /// The reverse proxy's backend, with `--tls-backend`.
    pub(crate) backend: Option<pigeon_transport_tls::Backend>,
    pub(crate) route: Route,
    /// The ACME client, with --acme: kept for as long as the relay serves.
    pub(crate) acme: Option<crate::acme::Acme>,
}

/// The tls front (and the reverse-proxy backend) from `args`, with the route clients reach it
/// by; `None` when neither `--tls` nor `--tls-backend` is given. (Also the proxy's front.)
pub(crate) async fn setup_tls(
    dir: &Path,
    args: &TlsArgs,
    admission: AdmissionLimits,
) -> anyhow::Result<Option<TlsSetup>> {
    if args.tls.is_none() && args.tls_backend.is_none() {
        return Ok(None);
    }
    let state = crate::tls_setup::TlsState::load_or_create(dir, args.tls_path.as_deref())?;
    // The front is bound first, so that a port of 0 becomes the real one in the link.
    let front_listener = match args.tls {
        Some(addr) => Some(
            pigeon_transport::tcp::bind(addr)
                .await
                .with_context(|| format!("could not listen on {addr} for tls"))?,
        ),
        None => None,
    };
    let bound = front_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;
    let public_host = match (&args.tls_public, &args.acme, bound) {
        (Some(public), _, _) => public.clone(),
        // The certified name, on the front's port (unless that is given with --tls-public).
        (None, Some(domain), _) => domain.clone(),
        (None, None, Some(addr)) if !addr.ip().is_unspecified() => addr.to_string(),
        (None, _, _) => anyhow::bail!(
            "pass --tls-public with the name or address clients reach the tls front by"
        ),
    };
    let (host, port) = crate::tls_setup::split_host_port(&public_host, bound.map(|a| a.port()))?;
    let sni = match (&args.sni, &args.acme) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(domain)) => Some(domain.clone()),
        (None, None) => match pigeon_transport::Host::parse(&host) {
            Ok(pigeon_transport::Host::Name(name)) => Some(name.as_str().to_owned()),
            _ => None,
        },
    };
    let (cert, pin) = match &args.acme {
        Some(domain) => {
            let redirect = if port == 443 {
                format!("https://{domain}")
            } else {
                format!("https://{domain}:{port}")
            };
            let acme = crate::acme::Acme::start(
                dir,
                crate::acme::AcmeConfig {
                    domain: domain.clone(),
                    email: args.acme_email.clone(),
                    directory: args.acme_directory.clone(),
                    http: args.acme_http,
                    ca: args.acme_ca.clone(),
                    redirect,
                },
            )
            .await?;
            // A CA's certificate is checked by clients as browsers check it: no pin unless asked.
            let pin = args.pin.then_some(acme.pin());
            (FrontCert::Acme(acme), pin)
        }
        None => {
            let cert = crate::tls_setup::load_or_make_cert(
                dir,
                args.cert.as_deref(),
                args.key.as_deref(),
                sni.as_deref().unwrap_or(&host),
            )?;
            let pin = (cert.made_here || args.pin).then_some(cert.pin);
            (FrontCert::Fixed(cert), pin)
        }
    };
    let rotate = crate::tls_setup::parse_rotate(&args.rotate)?;
    let sni_name = sni
        .as_deref()
        .map(|n| match pigeon_transport::Host::parse(n) {
            Ok(pigeon_transport::Host::Name(name)) => Ok(name),
            _ => Err(anyhow::anyhow!("--sni {n:?} is not a DNS name")),
        })
        .transpose()?;
    // Clients recognised by ECH when strangers have a real site to go to and the outer hello
    // has a name.
    let ech = match (&cert, args.cover_tls, &sni_name) {
        (FrontCert::Fixed(cert), Some(_), Some(name)) => Some(pigeon_transport_tls::EchSetup {
            public_name: name.as_str().to_owned(),
            chain: cert.chain.iter().map(|c| c.to_vec()).collect(),
            key: zeroize::Zeroizing::new(cert.key.secret_der().to_vec()),
        }),
        (_, Some(_), None) => {
            tracing::warn!(
                "--cover-tls without a name for the outer hello (--sni): well-formed \
                 ClientHellos meet the front's own TLS, which a JARM scan tells from the site's"
            );
            None
        }
        _ => None,
    };
    let params =
        pigeon_transport::TlsParams::new(sni_name, &state.path, *state.key.as_bytes(), pin, rotate)
            .and_then(|p| p.with_ech(ech.is_some()))
            .context("the tls settings")?;
    let route = Route::tls(&host, port, &params).context("the tls route")?;
    let mut front = None;
    if let Some(listener) = front_listener {
        let cover =
            crate::tls_setup::parse_cover(args.cover.as_deref(), args.cover_h2c.as_deref(), dir)?;
        let tls = match &cert {
            FrontCert::Fixed(cert) => {
                pigeon_transport_tls::server_tls_config(cert.chain.clone(), cert.key.clone_key())?
            }
            FrontCert::Acme(acme) => {
                pigeon_transport_tls::server_tls_config_with_resolver(acme.resolver())?
            }
        };
        let config = pigeon_transport_tls::FrontConfig {
            tls,
            path: state.path.clone(),
            key: state.key.clone(),
            cover,
            cover_tls: args.cover_tls,
            handshake_timeout: std::time::Duration::from_secs(30),
            admission,
            ech,
        };
        let serving = pigeon_transport_tls::Front::from_listener(listener, config)?;
        tracing::info!(listen = %serving.local_addr(), "tls front serving");
        front = Some(serving);
    }
    let mut backend = None;
    if let Some(addr) = args.tls_backend {
        let serving = pigeon_transport_tls::Backend::bind(
            addr,
            state.path.clone(),
            state.key.clone(),
            std::time::Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("could not listen on {addr} for the reverse proxy"))?;
        tracing::info!(listen = %serving.local_addr(), "tls backend (h2c) serving");
        backend = Some(serving);
    }
    let acme = match cert {
        FrontCert::Acme(acme) => Some(acme),
        FrontCert::Fixed(_) => None,
    };
    Ok(Some(TlsSetup {
        front,
        backend,
        route,
        acme,
    }))
}

/// Where the front's certificate comes from.
enum FrontCert {
    /// From --cert/--key, or made here.
    Fixed(crate::tls_setup::Cert),
    /// From an ACME CA, swapped in as it is renewed.
    Acme(crate::acme::Acme),
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

/// Creates a data directory that holds keys and secrets: private to its user (0700).
pub(crate) fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(path)
        .with_context(|| format!("could not create {}", path.display()))
}

/// Prints a link on its own line, then its QR code unless `no_qr`.
pub(crate) fn print_link(text: &str, no_qr: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    if !no_qr {
        writeln!(out, "{}", crate::qr::render(text)?)?;
    }
    out.flush()?;
    Ok(())
}

/// Serves `GET /metrics` at `addr` (if given) with the text `render` makes.
pub(crate) async fn metrics_endpoint(
    addr: Option<SocketAddr>,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen for metrics on {addr}"))?;
    tracing::info!(addr = %l.local_addr()?, "metrics endpoint up");
    Ok(Some(tokio::spawn(pigeon_relay::metrics::serve_text(
        l, render,
    ))))
}

/// Installs the SIGTERM and SIGINT handlers now (before the link is printed, so a supervisor
/// that stops the relay right after start gets a graceful drain) and returns the future that
/// resolves on the first of them.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
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
    create_private_dir(&args.data)?;
    let keys = load_or_create_key(&args.data)?;
    let limits = Limits {
        max_depth: args.max_depth,
        max_log_depth: args.max_log_depth,
        expiry_secs: args
            .expiry_secs
            .unwrap_or_else(|| args.expiry_days.saturating_mul(86_400)),
        idle_secs: args.idle_days.saturating_mul(86_400),
        ..Limits::default()
    };
    match args.store.clone() {
        None => {
            let store = FjallStore::open(&args.data.join("store"), limits)
                .context("could not open the relay's store")?;
            serve_on(args, keys, store, shutdown).await
        }
        Some(urls) => {
            if let Some(bad) = urls.split(',').find(|u| !u.trim().starts_with("nats://")) {
                anyhow::bail!(
                    "--store takes nats://HOST:PORT[,HOST:PORT…]; {bad:?} is not a nats:// address"
                );
            }
            let options = NatsOptions {
                replicas: usize::from(args.store_replicas),
                ..NatsOptions::default()
            };
            // The address is not logged: it may carry credentials.
            let store = open_nats(&urls, limits, options).await?;
            tracing::info!("mailboxes on NATS JetStream");
            serve_on(args, keys, store, shutdown).await
        }
    }
}

/// Opens the store on NATS JetStream. No server answering is an error at once; servers that
/// answer while JetStream is not ready (a cluster electing leaders after a server died) are
/// waited for, up to a minute, as a relay restarted in that moment would otherwise exit.
async fn open_nats(urls: &str, limits: Limits, options: NatsOptions) -> anyhow::Result<NatsStore> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match NatsStore::connect(urls, limits, options.clone()).await {
            Ok(store) => return Ok(store),
            Err(pigeon_store::StoreError::Backend { op: "open", reason })
                if std::time::Instant::now() < deadline =>
            {
                tracing::warn!(%reason, "JetStream is not ready yet; trying again in 2 s");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("could not open the relay's store on NATS JetStream"));
            }
        }
    }
}

/// Serves on `store` until `shutdown`.
async fn serve_on<S: MailboxStore>(
    args: RelayArgs,
    keys: StaticKeypair,
    store: S,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = pigeon_transport::tcp::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let mut tls = setup_tls(&args.data, &args.tls, args.admission_limits()).await?;
    // The ACME client runs (answers challenges, renews) for as long as the relay serves.
    let _acme = tls.as_mut().and_then(|t| t.acme.take());
    let mut routes = Vec::new();
    // Every transport's acceptor, one line each.
    let mut listeners = pigeon_relay::Listeners::new();
    listeners.add(pigeon_transport::tcp::TcpAccept(listener));
    if let Some(tls) = tls {
        routes.push(tls.route);
        if let Some(front) = tls.front {
            listeners.add(front);
        }
        if let Some(backend) = tls.backend {
            listeners.add(backend);
        }
        // With a disguised transport, the plain one goes into the link only when asked for.
        if args.public.is_some() {
            routes.push(link_route(&args, bound)?);
        }
    } else {
        routes.push(link_route(&args, bound)?);
    }
    let link = RelayLink::new(*keys.public(), routes, None)?;
    print_link(&link.to_string(), args.no_qr)?;
    let metrics = Arc::new(Metrics::default());
    let m = Arc::clone(&metrics);
    let metrics_task = metrics_endpoint(args.metrics, Arc::new(move || m.render())).await?;
    let config = RelayConfig {
        sends_per_sec: args.sends_per_sec,
        send_burst: (args.sends_per_sec * 4.0).max(RelayConfig::default().send_burst),
        max_connections: args.max_connections,
        admission: args.admission_limits(),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout.max(1)),
        creations_per_sec: args.creations_per_sec,
        source_creations_per_sec: args.creations_per_source,
        expiry_interval: std::time::Duration::from_secs(args.sweep_secs),
        ..RelayConfig::default()
    };
    tracing::info!(listen = %bound, "relay serving");
    pigeon_relay::serve(listeners, store, keys, config, metrics, shutdown).await?;
    if let Some(t) = metrics_task {
        t.abort();
    }
    tracing::info!("relay stopped");
    Ok(())
}

impl RelayArgs {
    /// The admission pool and per-source caps the flags ask for.
    fn admission_limits(&self) -> AdmissionLimits {
        AdmissionLimits {
            max_handshakes: self.max_handshakes,
            per_source_handshakes: self.max_handshakes_per_source,
            per_source: self.max_per_source,
        }
    }
}
