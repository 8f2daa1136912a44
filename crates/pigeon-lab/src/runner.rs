//! The scenario runner: a relay and two clients talk through the censor; did it get through?
//!
//! A scenario starts a lab with a profile, runs an unmodified `pigeon relay` on a foreign-hosting
//! address in the server namespace, and then drives the clients from the client namespace:
//!
//! * **conversation** (`pigeon init/invite/accept/send/read`, two profiles): used when the
//!   `pigeon` binary has the client commands. All of it lives in [`client_conversation`].
//!   (Older binaries without them get the channel check below.)
//! * **channel check**, used until then: the same Noise IK channel the clients use
//!   (`pigeon-proto`), from the client namespace to the relay, pinging until at least 256 KiB
//!   came back server→client. It measures the transport and the censor, not the chat layer, and
//!   results say which of the two ran (`mode`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::net::lab::Lab;
use crate::net::{FOREIGN, FOREIGN_LISTED, HOP, Netns, sys};
use crate::profile::Profile;

/// The transports the runner knows how to start.
pub const TRANSPORTS: &[&str] = &["tcp", "tls"];
/// Server→client bytes a scenario must see: past any freeze threshold many times over.
pub const MIN_DOWNLOAD: u64 = 1 << 20;
/// The relay's port in the lab for `tcp`.
pub const RELAY_PORT: u16 = 4433;
/// The relay's tls front in the lab: HTTPS on port 443 of a foreign-hosting address, under a
/// name whose A record (in the lab's DNS, which the censor checks too) points at it.
pub const TLS_PORT: u16 = 443;
/// The name the tls front is reached by.
pub const TLS_NAME: &str = "relay.example";
/// With `--via proxy`, the relay sits on a blocked address under this name…
pub const LISTED_NAME: &str = "listed.example";
/// …and the volunteer proxy abroad (unblocked foreign hosting) under this one.
pub const PROXY_NAME: &str = "proxy.example";
/// With `--via hop`, the domestic hop's name.
pub const HOP_NAME: &str = "hop.domestic";

/// How the clients reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Straight through the censor to the relay.
    Direct,
    /// Through a volunteer `pigeon proxy` abroad (203.0.113.10, unblocked) to a relay whose
    /// address (203.0.113.66) is on the block list; the proxy's onward leg is uncensored.
    Proxy,
    /// Through a domestic `pigeon proxy` (198.51.100.20, allow-listed) whose onward leg to the
    /// relay crosses a second censor (the profile's `hop_onward`).
    Hop,
    /// Each person has two relays: the first on a blocked address (203.0.113.66), the second
    /// on 203.0.113.10; the conversation is made on the first that answers.
    Relays,
    /// A conversation made before its home relay was blocked: both people set it up abroad
    /// (uncensored), its log's home on 203.0.113.66 and its mirror on 203.0.113.10; then bob
    /// talks from behind the censor, which blocks the home relay, through the mirror, while
    /// alice stays abroad and keeps the mirror.
    Mirror,
}

/// Every way of reaching the relay, for the matrix.
pub const VIAS: &[Via] = &[Via::Direct, Via::Proxy, Via::Hop, Via::Relays, Via::Mirror];

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Self::Direct),
            "proxy" => Ok(Self::Proxy),
            "hop" => Ok(Self::Hop),
            "relays" => Ok(Self::Relays),
            "mirror" => Ok(Self::Mirror),
            other => Err(format!(
                "{other:?} is not a route: direct, proxy, hop, relays or mirror"
            )),
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Proxy => "proxy",
            Self::Hop => "hop",
            Self::Relays => "relays",
            Self::Mirror => "mirror",
        })
    }
}

impl Via {
    /// Whether `transport` can go this way (proxies carry the tls transport only; the lab's
    /// two relays serve it only).
    pub fn carries(self, transport: &str) -> bool {
        self == Self::Direct || transport == "tls"
    }
}

/// Whether `profile` expects `transport` to get through `via`.
pub fn expected(profile: &Profile, transport: &str, via: Via) -> bool {
    let list = match via {
        Via::Direct => &profile.expect_pass,
        Via::Proxy => &profile.expect_pass_via_proxy,
        Via::Hop => &profile.expect_pass_via_hop,
        Via::Relays => &profile.expect_pass_via_relays,
        Via::Mirror => &profile.expect_pass_via_mirror,
    };
    list.iter().any(|t| t == transport)
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Profile name.
    pub profile: String,
    /// Transport name.
    pub transport: String,
    /// How the clients reached the relay: `direct`, `proxy` or `hop`.
    pub via: Via,
    /// With a hop, the profile its onward leg crossed.
    pub onward: Option<String>,
    /// Seed of the censor's randomness.
    pub seed: u64,
    /// `conversation` or `channel` (see the module docs).
    pub mode: String,
    /// Whether it got through for the whole scenario.
    pub got_through: bool,
    /// Milliseconds to the first message (or first pong), if any arrived.
    pub first_message_ms: Option<u64>,
    /// Messages (or pongs) delivered.
    pub delivered: u64,
    /// Messages (or pings) attempted.
    pub attempted: u64,
    /// Message bytes the clients received (conversation: `read` output; channel: records).
    pub bytes: u64,
    /// IP bytes the censor forwarded server→client during the scenario (all flows).
    pub wire_bytes_down: u64,
    /// The route that won, as the client reports it (`pigeon connect`), else as set up.
    pub route: String,
    /// The route `pigeon connect` tried first at the end (the one remembered for the lab's
    /// network), when the client says.
    pub first_tried: Option<String>,
    /// Censor rules that fired, with counts (`"5:freeze": 1`); the onward censor's (with a
    /// hop) are prefixed `onward `.
    pub rules_fired: std::collections::BTreeMap<String, u64>,
    /// Whether the profile expects this transport to get through.
    pub expected_pass: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Censor profile.
    pub profile: Profile,
    /// Transport.
    pub transport: String,
    /// How the clients reach the relay.
    pub via: Via,
    /// With a hop, the profile its onward leg crosses (default: the profile's `hop_onward`).
    pub onward: Option<Profile>,
    /// Seed.
    pub seed: u64,
    /// Time scale for the censor's durations.
    pub time_scale: f64,
    /// The `pigeon` binary.
    pub pigeon: PathBuf,
    /// Give up on one exchange after this long.
    pub step_timeout: Duration,
}

/// Finds the `pigeon` binary: `explicit`, else next to the current executable (or one level
/// up, for test binaries in `target/*/deps`), else on `PATH`.
///
/// # Errors
/// When none is found.
pub fn find_pigeon(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("pigeon"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("pigeon"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("pigeon")));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        anyhow!(
            "no `pigeon` binary next to {} or on PATH; pass --pigeon",
            exe.display()
        )
    })
}

/// Whether `pigeon` has the client commands the conversation needs.
pub async fn has_client_commands(pigeon: &Path) -> bool {
    let Ok(out) = tokio::process::Command::new(pigeon)
        .arg("--help")
        .output()
        .await
    else {
        return false;
    };
    let help = String::from_utf8_lossy(&out.stdout);
    ["init", "invite", "accept", "send", "read"]
        .iter()
        .all(|c| help.lines().any(|l| l.trim_start().starts_with(c)))
}

/// A `pigeon relay` or `pigeon proxy` in a lab namespace, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    _drain: AbortOnDrop,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    link: String,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServerProcess {
    /// The server's `pigeon://relay#…` or `pigeon://proxy#…` link.
    pub fn link(&self) -> &str {
        &self.link
    }
}

/// Starts `pigeon relay` for `transport` in the lab's server namespace and waits for its link:
/// `tcp` on the foreign-hosting address 203.0.113.10:4433; `tls` with its front on
/// 203.0.113.10:443, reached as `relay.example` (its link then has only the tls route).
///
/// # Errors
/// If it does not start or prints no link within 30 s.
pub async fn start_relay(
    lab: &Lab,
    pigeon: &Path,
    transport: &str,
) -> anyhow::Result<ServerProcess> {
    start_relay_at(lab, pigeon, transport, FOREIGN, TLS_NAME).await
}

/// [`start_relay`] on address `ip`, its tls front named `name`.
///
/// # Errors
/// As [`start_relay`].
pub async fn start_relay_at(
    lab: &Lab,
    pigeon: &Path,
    transport: &str,
    ip: std::net::Ipv4Addr,
    name: &str,
) -> anyhow::Result<ServerProcess> {
    // Each relay's plain listener on a loopback port of its own (two relays may share the
    // namespace).
    let plain = format!("127.0.0.1:{}", 7700 + u16::from(ip.octets()[3]));
    let args: Vec<String> = match transport {
        "tls" => vec![
            "--listen".into(),
            plain,
            "--tls".into(),
            format!("{ip}:{TLS_PORT}"),
            "--tls-public".into(),
            format!("{name}:{TLS_PORT}"),
        ],
        _ => {
            let listen = format!("{ip}:{RELAY_PORT}");
            vec!["--listen".into(), listen.clone(), "--public".into(), listen]
        }
    };
    start_server(&lab.topology.server, pigeon, "relay", args).await
}

/// Starts `pigeon proxy` in namespace `ns` with its tls front on `ip`:443, named `name`.
///
/// # Errors
/// If it does not start or prints no link within 30 s.
pub async fn start_proxy(
    ns: &Netns,
    pigeon: &Path,
    ip: std::net::Ipv4Addr,
    name: &str,
) -> anyhow::Result<ServerProcess> {
    let args = vec![
        "--tls".into(),
        format!("{ip}:{TLS_PORT}"),
        "--tls-public".into(),
        format!("{name}:{TLS_PORT}"),
        "--no-qr".into(),
    ];
    start_server(ns, pigeon, "proxy", args).await
}

/// Runs `pigeon COMMAND --data TMP ARGS…` in `ns` and waits for its `pigeon://COMMAND#` link.
async fn start_server(
    ns: &Netns,
    pigeon: &Path,
    command: &str,
    args: Vec<String>,
) -> anyhow::Result<ServerProcess> {
    let dir = tempfile::tempdir().with_context(|| format!("{command} directory"))?;
    // `PIGEON_LAB_SERVER_LOG=FILTER` keeps the server's log in `/tmp/pigeon-lab-{command}.log`,
    // for debugging a scenario.
    let (filter, log) = match std::env::var("PIGEON_LAB_SERVER_LOG") {
        Ok(filter) => {
            let path = std::env::temp_dir().join(format!("pigeon-lab-{command}.log"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            (filter, Stdio::from(file))
        }
        Err(_) => ("warn".to_owned(), Stdio::null()),
    };
    let mut child = ns
        .command(&pigeon.to_string_lossy())
        .arg(command)
        .arg("--data")
        .arg(dir.path())
        .args(&args)
        .env("PIGEON_LOG", filter)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting pigeon {command}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{command} stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("pigeon://{command}#");
    let link = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(at) = line.find(&prefix) {
                return Some(line[at..].trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .with_context(|| format!("pigeon {command} printed no {prefix} link within 30 s"))?;
    // Keep reading its stdout (the QR code, anything later): a closed pipe would kill it.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ServerProcess {
        _drain: AbortOnDrop(drain),
        _child: child,
        _dir: dir,
        link,
    })
}

/// Runs one scenario.
///
/// # Errors
/// When the lab or the relay cannot start; a censored exchange is a result, not an error.
pub async fn run_scenario(s: &Scenario) -> anyhow::Result<ScenarioResult> {
    if !TRANSPORTS.contains(&s.transport.as_str()) {
        bail!(
            "transport {:?} is not built yet; known: {}",
            s.transport,
            TRANSPORTS.join(", ")
        );
    }
    if !s.via.carries(&s.transport) {
        bail!(
            "--via {} carries the tls transport only (a proxy's legs are tls)",
            s.via
        );
    }
    let onward = match (s.via, &s.onward) {
        (Via::Hop, Some(p)) => Some(p.clone()),
        (Via::Hop, None) => Some(s.profile.onward()?),
        _ => None,
    };
    let mut lab = match &onward {
        Some(onward) => {
            Lab::start_with_hop(s.profile.clone(), onward.clone(), s.seed, s.time_scale).await
        }
        None => Lab::start(s.profile.clone(), s.seed, s.time_scale).await,
    }
    .context("starting the lab")?;
    let port = if s.transport == "tls" {
        TLS_PORT
    } else {
        RELAY_PORT
    };
    // Where the relays and the proxy (if any) sit, and how the route is described.
    let mut second = None;
    let (relay, proxy, route) = match s.via {
        Via::Direct => (
            start_relay(&lab, &s.pigeon, &s.transport).await?,
            None,
            format!("{} {FOREIGN}:{port} (foreign hosting)", s.transport),
        ),
        Via::Proxy => {
            let relay =
                start_relay_at(&lab, &s.pigeon, &s.transport, FOREIGN_LISTED, LISTED_NAME).await?;
            let proxy = start_proxy(&lab.topology.server, &s.pigeon, FOREIGN, PROXY_NAME).await?;
            (
                relay,
                Some(proxy),
                format!(
                    "tls {FOREIGN_LISTED}:{port} (blocked) via proxy {FOREIGN}:{TLS_PORT} (foreign hosting)"
                ),
            )
        }
        Via::Hop => {
            let relay = start_relay(&lab, &s.pigeon, &s.transport).await?;
            let hop = lab
                .topology
                .hop
                .as_ref()
                .context("the lab has no hop namespace")?;
            let proxy = start_proxy(&hop.hop, &s.pigeon, HOP, HOP_NAME).await?;
            (
                relay,
                Some(proxy),
                format!("tls {FOREIGN}:{port} via hop {HOP}:{TLS_PORT} (domestic)"),
            )
        }
        Via::Relays | Via::Mirror => {
            let first =
                start_relay_at(&lab, &s.pigeon, &s.transport, FOREIGN_LISTED, LISTED_NAME).await?;
            second = Some(start_relay(&lab, &s.pigeon, &s.transport).await?);
            let route = if s.via == Via::Relays {
                format!(
                    "tls {FOREIGN}:{port}, the second relay (the first, on {FOREIGN_LISTED}, blocked)"
                )
            } else {
                format!(
                    "tls {FOREIGN}:{port}, the log's mirror (its home, on {FOREIGN_LISTED}, blocked)"
                )
            };
            (first, None, route)
        }
    };
    let mut result = ScenarioResult {
        profile: s.profile.name.clone(),
        transport: s.transport.clone(),
        via: s.via,
        onward: onward.as_ref().map(|p| p.name.clone()),
        seed: s.seed,
        mode: String::new(),
        got_through: false,
        first_message_ms: None,
        delivered: 0,
        attempted: 0,
        bytes: 0,
        wire_bytes_down: 0,
        route,
        first_tried: None,
        rules_fired: Default::default(),
        expected_pass: expected(&s.profile, &s.transport, s.via),
        error: None,
    };
    let proxy_link = proxy.as_ref().map(|p| p.link().to_owned());
    let outcome = if has_client_commands(&s.pigeon).await {
        result.mode = "conversation".into();
        client_conversation(
            &lab,
            &s.pigeon,
            &Clients {
                relay: relay.link(),
                second_relay: second.as_ref().map(ServerProcess::link),
                proxy: proxy_link.as_deref(),
                set_up_abroad: s.via == Via::Mirror,
            },
            s.step_timeout,
        )
        .await
    } else if s.via == Via::Direct {
        result.mode = "channel".into();
        channel_check(&lab, relay.link(), s.step_timeout).await
    } else {
        bail!(
            "--via {} needs a pigeon binary with the client commands",
            s.via
        );
    };
    match outcome {
        Ok(o) => o.fill(&mut result),
        Err(Failed(o, e)) => {
            o.fill(&mut result);
            result.error = Some(e);
        }
    }
    result.got_through = result.error.is_none()
        && result.attempted > 0
        && result.delivered == result.attempted
        && result.bytes >= MIN_DOWNLOAD;
    drop(proxy);
    drop(second);
    drop(relay);
    let done = lab.finish();
    result.wire_bytes_down = done.stats.bytes_down;
    result.rules_fired = done
        .stats
        .fired
        .iter()
        .map(|(r, n)| (r.to_string(), *n))
        .collect();
    if let Some(onward) = lab.finish_onward() {
        result.rules_fired.extend(
            onward
                .stats
                .fired
                .iter()
                .map(|(r, n)| (format!("onward {r}"), *n)),
        );
    }
    Ok(result)
}

/// Measurements of an exchange so far.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Milliseconds to the first message or pong.
    pub first_ms: Option<u64>,
    /// Messages or pongs delivered.
    pub delivered: u64,
    /// Messages or pings attempted.
    pub attempted: u64,
    /// Server→client bytes received.
    pub bytes: u64,
    /// The route the client says it used (`pigeon connect --json`), when it says.
    pub route: Option<String>,
    /// The route `pigeon connect --json` tried first.
    pub first_tried: Option<String>,
}

impl Outcome {
    fn fill(&self, r: &mut ScenarioResult) {
        if let Some(route) = &self.route {
            r.route.clone_from(route);
        }
        r.first_tried.clone_from(&self.first_tried);
        r.first_message_ms = self.first_ms;
        r.delivered = self.delivered;
        r.attempted = self.attempted;
        r.bytes = self.bytes;
    }
}

/// An exchange that stopped early: what was measured, and why it stopped.
#[derive(Debug)]
pub struct Failed(pub Outcome, pub String);

/// Runs a blocking closure on a new thread inside namespace `ns` (a fresh thread, never a
/// pooled one, because entering a namespace is permanent for the thread).
async fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lab-client".into())
        .spawn(move || {
            let r = sys::enter_netns(&ns)
                .map(|()| f())
                .map_err(anyhow::Error::from);
            let _ = tx.send(r);
        })
        .context("spawning a client thread")?;
    rx.await.context("client thread ended early")?
}

/// The channel check: Noise IK handshake to the relay as a client does, then pings until
/// [`MIN_DOWNLOAD`] bytes came back.
///
/// # Errors
/// [`Failed`] with what was measured when the exchange stopped early.
pub async fn channel_check(lab: &Lab, link: &str, step: Duration) -> Result<Outcome, Failed> {
    let link = pigeon_transport::RelayLink::parse(link)
        .map_err(|e| Failed(Outcome::default(), format!("relay link: {e}")))?;
    let route = link
        .supported_routes()
        .next()
        .cloned()
        .ok_or_else(|| Failed(Outcome::default(), "relay link has no usable route".into()))?;
    let addr: SocketAddr = format!("{}:{}", FOREIGN, route.port())
        .parse()
        .map_err(|e| Failed(Outcome::default(), format!("{e}")))?;
    let key = *link.relay_key();
    tracing::debug!(%addr, "channel check");
    let joined = in_netns(lab.topology.client.name(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failed(Outcome::default(), format!("runtime: {e}")))?;
        rt.block_on(pings(addr, key, step))
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(Failed(Outcome::default(), format!("{e:#}"))),
    }
}

async fn pings(addr: SocketAddr, key: [u8; 32], step: Duration) -> Result<Outcome, Failed> {
    use pigeon_proto::session::{ClientSession, SessionEvent};
    use pigeon_wire::msg::{Ping, request, response};
    let start = Instant::now();
    let mut o = Outcome::default();
    let fail = |o: &Outcome, e: String| Failed(o.clone(), e);
    let mut sock = tokio::time::timeout(step, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| fail(&o, "connect timed out".into()))?
        .map_err(|e| fail(&o, format!("connect: {e}")))?;
    let entropy =
        pigeon_proto::Entropy::from_os().map_err(|e| fail(&o, format!("handshake: {e}")))?;
    let mut session = ClientSession::connect(&key, entropy, Instant::now(), step)
        .map_err(|e| fail(&o, format!("handshake: {e}")))?;
    let target = MIN_DOWNLOAD + 16 * 1024;
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // The session's protocol is pigeon-proto's; this moves its bytes and counts them. `waiting`
    // is the ping in flight (none until the handshake is answered).
    let mut waiting: Option<u64> = None;
    let mut connected = false;
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Connected { .. } => connected = true,
                SessionEvent::Response {
                    id,
                    result: response::Result::Pong(_),
                } if Some(id) == waiting => {
                    waiting = None;
                    o.delivered += 1;
                    if o.first_ms.is_none() {
                        o.first_ms =
                            Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
                    }
                }
                SessionEvent::Closed(why) => return Err(fail(&o, format!("channel: {why}"))),
                _ => {}
            }
        }
        if connected && waiting.is_none() {
            if o.bytes >= target || o.attempted >= 4096 {
                return Ok(o);
            }
            o.attempted += 1;
            let id = session
                .request(request::Body::Ping(Ping {
                    payload: (o.attempted).to_be_bytes().repeat(8),
                }))
                .map_err(|e| fail(&o, format!("ping: {e}")))?;
            waiting = Some(id);
        }
        wire.clear();
        if session.poll_transmit(&mut wire) {
            sock.write_all(&wire)
                .await
                .map_err(|e| fail(&o, format!("write: {e}")))?;
        }
        let what = match waiting {
            Some(id) => format!("ping {id}: no answer within {step:?}"),
            None => "no handshake answer (timed out)".to_owned(),
        };
        let n = tokio::time::timeout(step, sock.read(&mut buf))
            .await
            .map_err(|_| fail(&o, what))?
            .map_err(|e| fail(&o, format!("read: {e}")))?;
        o.bytes += n as u64;
        if n == 0 {
            session.handle_eof();
        } else {
            session.handle_input(Instant::now(), &buf[..n]);
        }
    }
}

/// Messages alice sends bob in a conversation, and their size: 22 × 48 KB ≥ 1 MiB.
const CONVERSATION_MESSAGES: u64 = 22;
const CONVERSATION_MESSAGE_LEN: usize = 48_000;

/// What the clients of a conversation are given.
#[derive(Clone, Copy, Debug)]
pub struct Clients<'a> {
    /// The relay both `init` on.
    pub relay: &'a str,
    /// A second relay both `relays add`.
    pub second_relay: Option<&'a str>,
    /// A proxy alice `proxies add`s (bob gets it from her invitation).
    pub proxy: Option<&'a str>,
    /// Both set the conversation up abroad (in the server namespace, uncensored), and alice
    /// stays there; only bob talks from behind the censor.
    pub set_up_abroad: bool,
}

/// The conversation with two unmodified `pigeon` clients in the client namespace (profiles in
/// a temporary directory): both `init` on the relay (and `relays add` a second one, if given;
/// alice also `proxies add`s the proxy, which bob gets from her invitation), alice `invite`s,
/// bob `accept`s and sends
/// "hello" (time to first message = until alice's `read` shows it), then alice sends 22
/// messages of 48 KB and bob `read`s them: at least 1 MiB server→client, many times any freeze
/// threshold. Last, bob's `pigeon connect --json` says which route he uses.
///
/// # Errors
/// [`Failed`] with what was measured when a step fails or times out.
pub async fn client_conversation(
    lab: &Lab,
    pigeon: &Path,
    clients: &Clients<'_>,
    step: Duration,
) -> Result<Outcome, Failed> {
    let relay_link = clients.relay;
    let mut o = Outcome::default();
    let dir = tempfile::tempdir().map_err(|e| Failed(o.clone(), format!("tempdir: {e}")))?;
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    let abroad = clients.set_up_abroad;
    let run_in = |ns: &Netns, profile: &Path, args: Vec<String>, limit: Duration| {
        let mut cmd = ns.command(&pigeon.to_string_lossy());
        cmd.args(args);
        cmd.env("PIGEON_PROFILE", profile)
            .env("PIGEON_PASSPHRASE", "lab")
            .env(
                "PIGEON_LOG",
                std::env::var("PIGEON_LAB_CLIENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
            );
        async move {
            let out = tokio::time::timeout(limit, cmd.output())
                .await
                .map_err(|_| format!("timed out after {limit:?}"))?
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        }
    };
    // Where each one runs: behind the censor, except alice (and the set-up) abroad.
    let censored = &lab.topology.client;
    let uncensored = &lab.topology.server;
    let alice_ns = if abroad { uncensored } else { censored };
    let ns_of = |profile: &Path| {
        if profile == alice.as_path() {
            alice_ns
        } else {
            censored
        }
    };
    let run = |profile: &Path, args: Vec<String>| run_in(ns_of(profile), profile, args, step);
    let set_up = |profile: &Path, args: Vec<String>| {
        run_in(
            if abroad { uncensored } else { censored },
            profile,
            args,
            step,
        )
    };
    // The big download may learn a freeze and cross many connections: it gets longer.
    let run_long =
        |profile: &Path, args: Vec<String>| run_in(ns_of(profile), profile, args, step * 4);
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    for (p, name) in [(&alice, "alice"), (&bob, "bob")] {
        set_up(p, s(&["init", "--name", name, "--relay", relay_link]))
            .await
            .map_err(|e| Failed(o.clone(), format!("{name} init: {e}")))?;
        if let Some(second) = clients.second_relay {
            set_up(p, s(&["relays", "add", second]))
                .await
                .map_err(|e| Failed(o.clone(), format!("{name} relays add: {e}")))?;
        }
    }
    if let Some(proxy) = clients.proxy {
        set_up(&alice, s(&["proxies", "add", proxy]))
            .await
            .map_err(|e| Failed(o.clone(), format!("alice proxies add: {e}")))?;
    }
    let invite = set_up(&alice, s(&["invite", "--no-qr"]))
        .await
        .map_err(|e| Failed(o.clone(), format!("invite: {e}")))?;
    let invite = invite
        .lines()
        .find(|l| l.starts_with("pigeon://invite#"))
        .ok_or_else(|| Failed(o.clone(), "invite printed no pigeon://invite# line".into()))?
        .to_owned();
    set_up(&bob, vec!["accept".into(), invite])
        .await
        .map_err(|e| Failed(o.clone(), format!("accept: {e}")))?;
    if abroad {
        // Both read once more abroad: alice learns the log's mirror. Then bob goes home.
        for p in [&alice, &bob] {
            set_up(p, s(&["read", "--wait", "0.3"]))
                .await
                .map_err(|e| Failed(o.clone(), format!("reading abroad: {e}")))?;
        }
    }
    // Through a mirror, bob's hello reaches the home relay by alice's device (which reads it
    // from the mirror and carries it home), and comes back to her from there.
    let (wait, reads) = if abroad { ("0.3", 3) } else { ("0", 1) };
    let start = Instant::now();
    o.attempted += 1;
    run(&bob, s(&["send", "alice", "hello from bob"]))
        .await
        .map_err(|e| Failed(o.clone(), format!("bob send: {e}")))?;
    let mut read = String::new();
    for _ in 0..reads {
        read.push_str(
            &run(&alice, s(&["read", "--wait", wait]))
                .await
                .map_err(|e| Failed(o.clone(), format!("alice read: {e}")))?,
        );
        if read.contains("hello from bob") {
            break;
        }
    }
    if !read.contains("hello from bob") {
        return Err(Failed(o, "alice did not receive bob's hello".into()));
    }
    o.delivered += 1;
    o.bytes += read.len() as u64;
    o.first_ms = Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
    let body = "x".repeat(CONVERSATION_MESSAGE_LEN);
    for i in 0..CONVERSATION_MESSAGES {
        o.attempted += 1;
        run(
            &alice,
            vec!["send".into(), "bob".into(), format!("{i:05} {body}")],
        )
        .await
        .map_err(|e| Failed(o.clone(), format!("alice send {i}: {e}")))?;
    }
    if abroad {
        // alice's device puts her messages on the mirror as it reads them from the home relay.
        run(&alice, s(&["read", "--wait", "0.5"]))
            .await
            .map_err(|e| Failed(o.clone(), format!("alice read: {e}")))?;
    }
    // bob reads until he has them all (a connection that froze costs a reconnection; each
    // `read` is a new process, as a person would run it), at most three times.
    let mut read = String::new();
    for _ in 0..3 {
        read.push_str(
            &run_long(&bob, s(&["read", "alice", "--wait", "2"]))
                .await
                .map_err(|e| Failed(o.clone(), format!("bob read: {e}")))?,
        );
        if (0..CONVERSATION_MESSAGES).all(|i| read.contains(&format!("{i:05} xxxxxxxx"))) {
            break;
        }
    }
    o.bytes += read.len() as u64;
    o.delivered += (0..CONVERSATION_MESSAGES)
        .filter(|i| read.contains(&format!("{i:05} xxxxxxxx")))
        .count() as u64;
    // Which way bob's client goes now (an older binary without `connect` leaves it unsaid).
    // `connect` exits 1 when one of bob's relays is unreachable; its lines still say the rest.
    let mut connect = lab.topology.client.command(&pigeon.to_string_lossy());
    connect
        .args(["connect", "--json"])
        .env("PIGEON_PROFILE", &bob)
        .env("PIGEON_PASSPHRASE", "lab")
        .env("PIGEON_LOG", "warn");
    // Each unreachable relay of bob's takes its whole connect timeout before the next is shown.
    let connected = tokio::time::timeout(step * 3, connect.output()).await;
    if let Ok(Ok(out)) = connected {
        let lines = String::from_utf8_lossy(&out.stdout);
        let events: Vec<serde_json::Value> = lines
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // The first relay the client reached, and what it tried first there.
        let reached = events
            .iter()
            .find(|v| v["event"] == "done" && v["connected"] == true);
        o.route = reached.and_then(|v| v["route"].as_str().map(str::to_owned));
        o.first_tried = reached.and_then(|done| {
            events
                .iter()
                .find(|v| v["event"] == "trying" && v["relay"] == done["relay"])
                .and_then(|v| v["route"].as_str().map(str::to_owned))
        });
    }
    Ok(o)
}

/// Renders results as a Markdown table.
pub fn markdown(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| profile | transport | via | mode | got through | expected | first message (ms) | delivered | bytes received | IP bytes s→c | rules fired | route | seed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let fired = if r.rules_fired.is_empty() {
            "—".to_owned()
        } else {
            r.rules_fired
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let via = match &r.onward {
            Some(onward) => format!("{} (onward {onward})", r.via),
            None => r.via.to_string(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |\n",
            r.profile,
            r.transport,
            via,
            r.mode,
            if r.got_through { "yes" } else { "**no**" },
            if r.expected_pass { "pass" } else { "—" },
            r.first_message_ms.map_or("—".into(), |m| m.to_string()),
            r.delivered,
            r.attempted,
            r.bytes,
            r.wire_bytes_down,
            fired,
            r.route.replace('|', "\\|"),
            r.seed,
        ));
    }
    out
}
