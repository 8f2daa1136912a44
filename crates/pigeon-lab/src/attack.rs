//! Attacks on a relay and its tls front from one machine (issue #13), for `pigeon bench attack`
//! and the attack tests: each runs at the attacker's full speed, from a source address of its
//! own (another loopback address stands for another machine), bounded in connections and
//! time, and holds what it opened until its deadline so that the relay carries the load while
//! honest clients are measured.
//!
//! Only loopback or a lab namespace is ever a target: the caller passes the addresses.

use pigeon_proto::session::{ClientSession, SessionEvent};
use pigeon_proto::{Entropy, auth};
use pigeon_wire::msg::{FetchKeyPackage, request, response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// One attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum Attack {
    /// TCP connections to the relay that send part of a Noise handshake record and stall.
    StalledHandshakes,
    /// TCP connections to the relay that send nothing.
    SilentConnections,
    /// Connections that complete the Noise handshake (anyone with the link can) and idle.
    IdleSessions,
    /// Many sessions making mailboxes as fast as they are allowed.
    CreationFlood,
    /// One session pipelining thousands of key-package fetches (large answers) and not reading.
    AnswerAmplification,
    /// TLS visits to the front's cover site over HTTP/1.1, each kept alive.
    CoverKeepAlive,
    /// TCP connections to the front that send half a TLS ClientHello and stall.
    StalledTlsHellos,
    /// Tunnel legs (opened with a token made from the link's secret, as anyone holding the
    /// link can) that flood HTTP/2 PING frames and never read the answers.
    PingFlood,
}

impl Attack {
    /// Every attack on the relay's plain `tcp` listener.
    pub const ON_TCP: [Self; 5] = [
        Self::StalledHandshakes,
        Self::SilentConnections,
        Self::IdleSessions,
        Self::CreationFlood,
        Self::AnswerAmplification,
    ];
    /// Every attack on the tls front ([`Attack::PingFlood`] needs [`Target::tunnel`]).
    pub const ON_TLS: [Self; 3] = [
        Self::CoverKeepAlive,
        Self::StalledTlsHellos,
        Self::PingFlood,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::StalledHandshakes => "stalled-handshakes",
            Self::SilentConnections => "silent-connections",
            Self::IdleSessions => "idle-sessions",
            Self::CreationFlood => "creation-flood",
            Self::AnswerAmplification => "answer-amplification",
            Self::CoverKeepAlive => "cover-keep-alive",
            Self::StalledTlsHellos => "stalled-tls-hellos",
            Self::PingFlood => "ping-flood",
        }
    }
}

/// Where an attack goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The address: the relay's `tcp` listener, or the tls front.
    pub addr: SocketAddr,
    /// The relay's static key (from its link).
    pub relay_key: [u8; 32],
    /// The tls route's secret path and token key (from its link), for attacks that open
    /// tunnel legs.
    pub tunnel: Option<Tunnel>,
}

/// What a link holder knows of a tls route.
#[derive(Clone, Debug)]
pub struct Tunnel {
    /// The secret path prefix.
    pub path: String,
    /// The token key.
    pub key: [u8; 32],
}

impl Tunnel {
    /// The first tls route's secrets in `link`, if it has one.
    pub fn of(link: &pigeon_transport::RelayLink) -> Option<Self> {
        link.routes().iter().find_map(|route| {
            let params = route.tls_params()?.ok()?;
            Some(Self {
                path: params.path().to_owned(),
                key: *params.key(),
            })
        })
    }
}

/// What an attack did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Connections it opened.
    pub opened: u64,
    /// Connections it still held (open on its side) at the deadline.
    pub held: u64,
    /// Of those, ones the relay (or front) had closed by the deadline.
    pub closed: u64,
    /// Requests it sent (creations, fetches, visits).
    pub requests: u64,
    /// Requests the relay refused (quota, rate).
    pub refused: u64,
    /// Requests it answered in full.
    pub served: u64,
}

/// Runs `attack` on `target` from `from` until `until`, opening at most `max_connections`.
pub async fn run(
    attack: Attack,
    target: Target,
    from: IpAddr,
    until: Instant,
    max_connections: usize,
) -> Report {
    let mut report = Report::default();
    let mut held: Vec<TcpStream> = Vec::new();
    let mut tls_held = Vec::new();
    match attack {
        Attack::StalledHandshakes | Attack::SilentConnections | Attack::StalledTlsHellos => {
            let first = match attack {
                Attack::StalledHandshakes => vec![0x00, 0x60, 1, 2, 3, 4],
                Attack::StalledTlsHellos => half_client_hello(),
                _ => Vec::new(),
            };
            while Instant::now() < until && held.len() < max_connections {
                let Ok(mut s) = connect(from, target.addr).await else {
                    break;
                };
                report.opened += 1;
                if !first.is_empty() {
                    let _ = s.write_all(&first).await;
                }
                held.push(s);
            }
        }
        Attack::IdleSessions => {
            while Instant::now() < until && held.len() < max_connections {
                let Ok(mut s) = connect(from, target.addr).await else {
                    break;
                };
                report.opened += 1;
                if open_session(&mut s, &target.relay_key).await.is_some() {
                    held.push(s);
                }
            }
        }
        Attack::CreationFlood => {
            while Instant::now() < until && report.opened < max_connections as u64 {
                let Ok(mut s) = connect(from, target.addr).await else {
                    break;
                };
                report.opened += 1;
                let Some(mut session) = open_session(&mut s, &target.relay_key).await else {
                    continue;
                };
                for _ in 0..100 {
                    let Ok(key) = auth::generate_signing_key() else {
                        break;
                    };
                    let Ok(id) = auth::random_bytes::<32>() else {
                        break;
                    };
                    let hash = session.handshake_hash().copied().unwrap_or_default();
                    let signature =
                        auth::sign(&key, auth::AuthOp::CreateMailbox, &hash, &id, &[0; 32]);
                    let body = request::Body::CreateMailbox(pigeon_wire::msg::CreateMailbox {
                        mailbox_id: id.to_vec(),
                        recipient_key: key.verifying_key().to_bytes().to_vec(),
                        sender_cap_hash: vec![0; 32],
                        signature: signature.to_vec(),
                        kind: 0,
                    });
                    report.requests += 1;
                    match roundtrip(&mut s, &mut session, body).await {
                        Some(response::Result::Created(_)) => report.served += 1,
                        Some(response::Result::Error(_)) => {
                            report.refused += 1;
                            break;
                        }
                        _ => break,
                    }
                }
            }
        }
        Attack::AnswerAmplification => {
            if let Ok(mut s) = connect(from, target.addr).await {
                report.opened += 1;
                if let Some(mut session) = open_session(&mut s, &target.relay_key).await {
                    for _ in 0..20_000 {
                        report.requests += 1;
                        let _ = session.request(request::Body::FetchKeyPackage(FetchKeyPackage {
                            slot_id: vec![0x5a; 32],
                        }));
                    }
                    let mut wire = Vec::new();
                    session.poll_transmit(&mut wire);
                    // The relay stops reading while its answers wait: this write may block
                    // until the deadline, which is the point.
                    let _ = tokio::time::timeout_at(until, s.write_all(&wire)).await;
                    tokio::time::sleep_until(until).await;
                    // Then everything is read: what did the relay hand out?
                    let (served, refused) = read_answers(&mut s, &mut session).await;
                    report.served = served;
                    report.refused = refused;
                    held.push(s);
                }
            }
        }
        Attack::CoverKeepAlive => {
            let Some(config) = insecure_tls(b"http/1.1") else {
                return report;
            };
            while Instant::now() < until && tls_held.len() < max_connections {
                let Ok(s) = connect(from, target.addr).await else {
                    break;
                };
                report.opened += 1;
                report.requests += 1;
                let Ok(tcp) = s.into_std() else {
                    continue;
                };
                let config = Arc::clone(&config);
                let visit = tokio::task::spawn_blocking(move || cover_visit(tcp, config)).await;
                if let Ok(Some(tls)) = visit {
                    report.served += 1;
                    tls_held.push(tls);
                }
            }
        }
        Attack::PingFlood => {
            let (Some(config), Some(tunnel)) = (insecure_tls(b"h2"), target.tunnel.clone()) else {
                return report;
            };
            // A few legs, each flooding at full speed from its own thread.
            let mut floods = Vec::new();
            while Instant::now() < until && floods.len() < max_connections.min(8) {
                let Ok(s) = connect(from, target.addr).await else {
                    break;
                };
                report.opened += 1;
                let Ok(tcp) = s.into_std() else {
                    continue;
                };
                let (config, tunnel) = (Arc::clone(&config), tunnel.clone());
                let deadline = std::time::Instant::now() + until.duration_since(Instant::now());
                floods.push(tokio::task::spawn_blocking(move || {
                    ping_flood(tcp, &config, &tunnel, deadline)
                }));
            }
            for flood in floods {
                if let Ok(outcome) = flood.await {
                    report.requests += outcome.pings;
                    report.served += u64::from(outcome.admitted);
                    report.held += 1;
                    report.closed += u64::from(outcome.ended);
                }
            }
            return report;
        }
    }
    tokio::time::sleep_until(until).await;
    report.held = u64::try_from(held.len() + tls_held.len()).unwrap_or(u64::MAX);
    for s in &mut held {
        let mut b = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_millis(2), s.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => {
                    report.closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    report
}

async fn connect(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Completes the Noise handshake on `s`.
async fn open_session(s: &mut TcpStream, relay_key: &[u8; 32]) -> Option<ClientSession> {
    let mut session = ClientSession::connect(
        relay_key,
        Entropy::from_os().ok()?,
        std::time::Instant::now(),
        Duration::from_secs(5),
    )
    .ok()?;
    let mut wire = Vec::new();
    session.poll_transmit(&mut wire);
    s.write_all(&wire).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        session.handle_input(std::time::Instant::now(), &buf[..n]);
        match session.poll_event() {
            Some(SessionEvent::Connected { .. }) => return Some(session),
            Some(_) => return None,
            None => {}
        }
    }
}

/// One request and its answer.
async fn roundtrip(
    s: &mut TcpStream,
    session: &mut ClientSession,
    body: request::Body,
) -> Option<response::Result> {
    let id = session.request(body).ok()?;
    let mut wire = Vec::new();
    session.poll_transmit(&mut wire);
    s.write_all(&wire).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Response { id: got, result } if got == id => return Some(result),
                SessionEvent::Closed(_) => return None,
                _ => {}
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            session.handle_eof();
        } else {
            session.handle_input(std::time::Instant::now(), &buf[..n]);
        }
    }
}

/// Reads answers until none comes for a while: (key packages, refusals).
async fn read_answers(s: &mut TcpStream, session: &mut ClientSession) -> (u64, u64) {
    let (mut served, mut refused) = (0, 0);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Response {
                    result: response::Result::KeyPackage(_),
                    ..
                } => served += 1,
                SessionEvent::Response {
                    result: response::Result::Error(_),
                    ..
                } => refused += 1,
                SessionEvent::Closed(_) => return (served, refused),
                _ => {}
            }
        }
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => session.handle_input(std::time::Instant::now(), &buf[..n]),
            _ => return (served, refused),
        }
    }
}

/// The first half of a real TLS ClientHello.
fn half_client_hello() -> Vec<u8> {
    let mut hello = Vec::new();
    if let Ok(name) = "cover.test".try_into()
        && let Some(config) = insecure_tls(b"http/1.1")
        && let Ok(mut conn) = rustls::ClientConnection::new(config, name)
    {
        let _ = conn.write_tls(&mut hello);
    }
    hello.truncate(hello.len() / 2);
    hello
}

/// A visit to the cover site over HTTP/1.1 that stays open (blocking; run off the runtime).
fn cover_visit(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use std::io::{Read as _, Write as _};
    tcp.set_nonblocking(false).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let conn = rustls::ClientConnection::new(config, "cover.test".try_into().ok()?).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: cover.test\r\n\r\n")
        .ok()?;
    let mut answer = [0u8; 512];
    (tls.read(&mut answer).ok()? > 0).then_some(tls)
}

/// How one PING-flooded leg went.
struct Flood {
    /// The front answered the request as a tunnel leg.
    admitted: bool,
    /// PING frames written.
    pings: u64,
    /// The front ended the leg before the deadline.
    ended: bool,
}

/// Opens a tunnel leg with a fresh token and writes PING frames without reading until the
/// front ends the leg or `deadline` (blocking; run off the runtime).
fn ping_flood(
    tcp: std::net::TcpStream,
    config: &Arc<rustls::ClientConfig>,
    tunnel: &Tunnel,
    deadline: std::time::Instant,
) -> Flood {
    use std::io::{Read as _, Write as _};
    let mut flood = Flood {
        admitted: false,
        pings: 0,
        ended: false,
    };
    let opened = (|| {
        tcp.set_nonblocking(false).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        tcp.set_write_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let conn = rustls::ClientConnection::new(Arc::clone(config), "cover.test".try_into().ok()?)
            .ok()?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let leg = pigeon_transport_tls::token::Leg {
            session: auth::random_bytes::<16>().ok()?,
            index: 0,
            budget: None,
        };
        let key = pigeon_transport_tls::TokenKey::new(tunnel.key);
        let token = pigeon_transport_tls::token::mint(
            &key,
            &tunnel.path,
            &leg,
            now,
            auth::random_bytes::<8>().ok()?,
        );
        let path = format!("{}/{token}", tunnel.path);
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // :method POST, :scheme https, :path (literal, indexed name), :authority.
        let mut block = vec![0x83, 0x87, 0x04, u8::try_from(path.len()).ok()?];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 10]);
        block.extend_from_slice(b"cover.test");
        let len = u32::try_from(block.len()).ok()?.to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], 1, 0x04, 0, 0, 0, 1]);
        out.extend_from_slice(&block);
        tls.write_all(&out).ok()?;
        tls.flush().ok()?;
        // The leg's answer: SETTINGS, a window update and the 200 headers.
        let mut answer = [0u8; 256];
        (tls.read(&mut answer).ok()? > 0).then_some(tls)
    })();
    let Some(mut tls) = opened else {
        return flood;
    };
    flood.admitted = true;
    let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    while std::time::Instant::now() < deadline {
        match tls.write_all(&burst).and_then(|()| tls.flush()) {
            Ok(()) => flood.pings += 512,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // The front stopped reading: is the leg still there?
                if tls.sock.peek(&mut [0u8; 1]).is_ok_and(|n| n == 0) {
                    flood.ended = true;
                    break;
                }
            }
            Err(_) => {
                flood.ended = true;
                break;
            }
        }
    }
    flood
}

/// TLS settings of an attacker, who trusts any certificate, offering `alpn`.
fn insecure_tls(alpn: &[u8]) -> Option<Arc<rustls::ClientConfig>> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Some(Arc::new(config))
}
