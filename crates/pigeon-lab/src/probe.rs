//! The active prober (rule 7 and `pigeon lab probe`).
//!
//! Probes, after Alice et al. (IMC 2020), Frolov et al. (NDSS 2020) and Wu et al. (2023):
//! replays of a recorded first flight — R1 identical, R2 byte 0 changed, R3 bytes 0–7 and 62–63
//! changed, R4 byte 16 changed, R5 bytes 6 and 16 changed (R3/R4 only if R1 or R2 got an
//! answer) — random probes NR1 of 7–9, 11–13, 15–17, 21–23, 32–34, 40–42, 48–50 bytes and NR2
//! of 221 bytes, and what any scanner sends: HTTPS GET with and without SNI, an HTTP/2 request
//! over TLS and an HTTP/1.1 request in the clear, each to a random path; and the ten
//! JARM-style hellos of [`crate::jarm`], whose ServerHellos fingerprint the TLS stack.
//!
//! Each probe is one TCP connection; its [`Reaction`] records the bytes sent and received and
//! how the connection ended (FIN, RST, timeout). Whether a server *read* all the probe before
//! closing shows in FIN vs RST: Linux answers a close with unread data with RST.
//! [`compare`] sets a target's reactions beside a reference's (a real website); [`judge`] is the
//! censor's own verdict when it has no reference.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::censor::ProbeJob;

/// How a probe connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Close {
    /// The server closed with FIN.
    Fin,
    /// The server reset the connection.
    Rst,
    /// Nothing happened until the timeout.
    Timeout,
    /// The TCP connection could not be made.
    Refused,
}

/// What one probe sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Raw bytes.
    Raw(Vec<u8>),
    /// A TLS handshake, then an HTTP/1.1 GET (`sni` or none).
    Https {
        /// Server name to send.
        sni: Option<String>,
        /// Request path.
        path: String,
    },
    /// A TLS handshake with ALPN h2, then an HTTP/2 GET.
    Http2 {
        /// Server name to send.
        sni: Option<String>,
        /// Request path.
        path: String,
    },
}

/// A named probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Name: `R1`…`R5`, `NR1-8`, `NR2`, `https-sni`, `https-nosni`, `h2`, `http1`.
    pub name: String,
    /// What it sends.
    pub payload: Payload,
}

/// How a server reacted to one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaction {
    /// Probe name.
    pub probe: String,
    /// Bytes the probe sent (for TLS probes: the request, after the handshake).
    pub sent: usize,
    /// Bytes the server sent back.
    pub received: usize,
    /// First bytes received, hex (up to 8).
    pub head: String,
    /// How it ended.
    pub close: Close,
    /// Milliseconds until it ended.
    pub millis: u64,
    /// A TLS probe's handshake completed.
    pub handshake: Option<bool>,
    /// For the JARM-style probes: what the server chose ([`crate::jarm::server_choice`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_choice: Option<String>,
}

/// The replay probes for `first` (R1, R2, R5 always; R3, R4 to be run if R1/R2 are answered).
pub fn replay_probes(first: &[u8], rng: &mut ChaCha8Rng) -> (Vec<Probe>, Vec<Probe>) {
    let change = |data: &mut Vec<u8>, idx: &[usize], rng: &mut ChaCha8Rng| {
        for &i in idx {
            if let Some(b) = data.get_mut(i) {
                *b ^= rng.random_range(1..=255u8);
            }
        }
    };
    let mk = |name: &str, idx: &[usize], rng: &mut ChaCha8Rng| {
        let mut d = first.to_vec();
        change(&mut d, idx, rng);
        Probe {
            name: name.into(),
            payload: Payload::Raw(d),
        }
    };
    let r3: Vec<usize> = (0..8).chain(62..64).collect();
    let always = vec![
        mk("R1", &[], rng),
        mk("R2", &[0], rng),
        mk("R5", &[6, 16], rng),
    ];
    let conditional = vec![mk("R3", &r3, rng), mk("R4", &[16], rng)];
    (always, conditional)
}

/// The random probes: one NR1 per length band and one NR2.
pub fn random_probes(rng: &mut ChaCha8Rng) -> Vec<Probe> {
    let bands: [(usize, usize); 7] = [
        (7, 9),
        (11, 13),
        (15, 17),
        (21, 23),
        (32, 34),
        (40, 42),
        (48, 50),
    ];
    let mut out = Vec::new();
    for (lo, hi) in bands {
        let len = rng.random_range(lo..=hi);
        let mut d = vec![0u8; len];
        rng.fill(&mut d[..]);
        out.push(Probe {
            name: format!("NR1-{len}"),
            payload: Payload::Raw(d),
        });
    }
    let mut d = vec![0u8; 221];
    rng.fill(&mut d[..]);
    out.push(Probe {
        name: "NR2".into(),
        payload: Payload::Raw(d),
    });
    out
}

fn random_path(rng: &mut ChaCha8Rng) -> String {
    let n: u64 = rng.random();
    format!("/{n:016x}")
}

/// The probes any scanner sends.
pub fn scanner_probes(sni: Option<&str>, rng: &mut ChaCha8Rng) -> Vec<Probe> {
    let mut out = vec![Probe {
        name: "https-nosni".into(),
        payload: Payload::Https {
            sni: None,
            path: random_path(rng),
        },
    }];
    if let Some(s) = sni {
        out.push(Probe {
            name: "https-sni".into(),
            payload: Payload::Https {
                sni: Some(s.to_owned()),
                path: random_path(rng),
            },
        });
    }
    out.push(Probe {
        name: "h2".into(),
        payload: Payload::Http2 {
            sni: sni.map(str::to_owned),
            path: random_path(rng),
        },
    });
    let path = random_path(rng);
    out.push(Probe {
        name: "http1".into(),
        payload: Payload::Raw(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n",
                sni.unwrap_or("localhost")
            )
            .into_bytes(),
        ),
    });
    out
}

fn head_hex(data: &[u8]) -> String {
    hex::encode(&data[..data.len().min(8)])
}

/// Reads until the peer closes, resets, or `deadline`; returns (bytes, close).
fn drain<R: Read>(r: &mut R, deadline: Instant, keep: &mut Vec<u8>) -> Close {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Close::Fin,
            Ok(n) => {
                if keep.len() < 65_536 {
                    keep.extend_from_slice(&buf[..n]);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                return Close::Rst;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= deadline {
                    return Close::Timeout;
                }
            }
            Err(_) => return Close::Rst,
        }
        if Instant::now() >= deadline {
            return Close::Timeout;
        }
    }
}

/// Sends one probe to `addr` and records the reaction, waiting at most `timeout`.
pub fn run_probe(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Reaction {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut reaction = Reaction {
        probe: probe.name.clone(),
        sent: 0,
        received: 0,
        head: String::new(),
        close: Close::Refused,
        millis: 0,
        handshake: None,
        server_choice: None,
    };
    let Ok(mut sock) = TcpStream::connect_timeout(&addr, timeout) else {
        reaction.millis = elapsed_ms(start);
        return reaction;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = sock.set_write_timeout(Some(timeout));
    let mut got = Vec::new();
    match &probe.payload {
        Payload::Raw(bytes) => {
            if sock.write_all(bytes).is_ok() {
                reaction.sent = bytes.len();
            }
            reaction.close = drain(&mut sock, deadline, &mut got);
        }
        Payload::Https { sni, path } | Payload::Http2 { sni, path } => {
            let h2 = matches!(probe.payload, Payload::Http2 { .. });
            match tls_client(sni.as_deref(), addr, h2) {
                Some(conn) => {
                    let mut tls = rustls::StreamOwned::new(conn, sock);
                    let host = sni.clone().unwrap_or_else(|| addr.ip().to_string());
                    let request = if h2 {
                        h2_request(&host, path)
                    } else {
                        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nConnection: close\r\n\r\n").into_bytes()
                    };
                    let ok = tls.write_all(&request).and_then(|()| tls.flush()).is_ok();
                    reaction.handshake = Some(ok && !tls.conn.is_handshaking());
                    if ok {
                        reaction.sent = request.len();
                    }
                    reaction.close = drain(&mut tls, deadline, &mut got);
                    reaction.handshake = Some(!tls.conn.is_handshaking());
                }
                None => reaction.close = Close::Refused,
            }
        }
    }
    reaction.received = got.len();
    reaction.head = head_hex(&got);
    if probe.name.starts_with("jarm-") {
        reaction.server_choice = Some(crate::jarm::server_choice(&got));
    }
    reaction.millis = elapsed_ms(start);
    reaction
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An HTTP/2 connection preface, an empty SETTINGS frame and a HEADERS frame for GET `path`.
fn h2_request(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    for (idx, value) in [(0x04u8, path), (0x01u8, authority)] {
        // Literal without indexing, indexed name; lengths here are < 127.
        block.push(idx);
        block.push(u8::try_from(value.len().min(126)).unwrap_or(126));
        block.extend_from_slice(&value.as_bytes()[..value.len().min(126)]);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = u32::try_from(block.len()).unwrap_or(0).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], 0x01, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // A prober wants the server's reaction, not its identity.
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client(sni: Option<&str>, addr: SocketAddr, h2: bool) -> Option<rustls::ClientConnection> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let name = match sni {
        Some(s) => rustls::pki_types::ServerName::try_from(s.to_owned()).ok()?,
        // An IP address as server name: rustls sends no SNI.
        None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    rustls::ClientConnection::new(Arc::new(config), name).ok()
}

/// Runs `probes` against `addr` in parallel (one thread each, at most 16), in order of names.
pub fn run_all(addr: SocketAddr, probes: &[Probe], timeout: Duration) -> Vec<Reaction> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .take(16)
            .map(|p| s.spawn(move || run_probe(addr, p, timeout)))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

/// The full probe suite: replays of `first_flight` (if any), random probes, scanner probes.
pub fn suite(
    addr: SocketAddr,
    first_flight: Option<&[u8]>,
    sni: Option<&str>,
    seed: u64,
    timeout: Duration,
) -> Vec<Reaction> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    if let Some(first) = first_flight {
        let (always, conditional) = replay_probes(first, &mut rng);
        let first_round = run_all(addr, &always, timeout);
        let answered = first_round
            .iter()
            .any(|r| (r.probe == "R1" || r.probe == "R2") && r.received > 0);
        out.extend(first_round);
        if answered {
            out.extend(run_all(addr, &conditional, timeout));
        }
    }
    out.extend(run_all(addr, &random_probes(&mut rng), timeout));
    out.extend(run_all(addr, &scanner_probes(sni, &mut rng), timeout));
    out.extend(run_all(addr, &crate::jarm::probes(sni, seed), timeout));
    out
}

/// Whether received bytes look like what a web server says to garbage: a TLS record (alert or
/// handshake) or an HTTP response.
pub fn looks_like_web(head_hex: &str) -> bool {
    let Ok(head) = hex::decode(head_hex) else {
        return false;
    };
    head.is_empty()
        || head.starts_with(b"HTTP/")
        || (head.len() >= 2 && matches!(head[0], 0x15 | 0x16) && head[1] == 0x03)
}

/// The censor's verdict on a server from its reactions alone: flagged if a replay or random
/// probe got bytes back that no web server would send (an echo, a replayed protocol answer), if
/// the random probes' endings depend on their length (a server that reads a fixed number of
/// bytes before it reacts), or if it stays silent to every random, HTTP and TLS probe alike.
pub fn judge(reactions: &[Reaction]) -> (bool, String) {
    let raw = |r: &&Reaction| r.probe.starts_with('R') || r.probe.starts_with("NR");
    if let Some(r) = reactions
        .iter()
        .filter(raw)
        .find(|r| r.received > 0 && !looks_like_web(&r.head))
    {
        return (
            true,
            format!("{} got {} non-web bytes back", r.probe, r.received),
        );
    }
    let nr1: Vec<&Reaction> = reactions
        .iter()
        .filter(|r| r.probe.starts_with("NR1"))
        .collect();
    let timeouts = nr1.iter().filter(|r| r.close == Close::Timeout).count();
    if timeouts > 0 && timeouts < nr1.len() {
        let edge: Vec<String> = nr1
            .iter()
            .map(|r| format!("{}:{:?}", r.probe, r.close))
            .collect();
        return (
            true,
            format!("reaction depends on probe length ({})", edge.join(" ")),
        );
    }
    let web = |r: &&Reaction| matches!(r.probe.as_str(), "https-nosni" | "https-sni" | "http1");
    let web_probes: Vec<&Reaction> = reactions.iter().filter(web).collect();
    let silent = |r: &&Reaction| r.close == Close::Timeout && r.received == 0;
    if !nr1.is_empty()
        && !web_probes.is_empty()
        && nr1.iter().all(silent)
        && web_probes.iter().all(silent)
    {
        return (
            true,
            "silent to every probe, HTTP and TLS included: no web server behaves so".into(),
        );
    }
    (false, "reacts like a web server".into())
}

/// One probe's target and reference reactions side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Probe name.
    pub probe: String,
    /// The target's reaction.
    pub target: Option<Reaction>,
    /// The reference's reaction.
    pub reference: Option<Reaction>,
    /// Whether they differ in a way a censor can see.
    pub differs: bool,
    /// How.
    pub why: String,
}

/// Compares target and reference reactions probe by probe: the ending (FIN/RST/timeout),
/// whether any data came back, what kind of data, and whether a TLS handshake completed.
pub fn compare(target: &[Reaction], reference: &[Reaction]) -> Vec<Comparison> {
    let mut names: Vec<&str> = target
        .iter()
        .chain(reference)
        .map(|r| r.probe.as_str())
        .collect();
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(*n));
    // NR1 lengths are drawn per run; compare them by band, in order.
    names
        .into_iter()
        .map(|name| {
            let t = target.iter().find(|r| r.probe == name).cloned();
            let r = reference.iter().find(|r| r.probe == name).cloned();
            let (differs, why) = match (&t, &r) {
                (Some(t), Some(r)) => {
                    let mut why = Vec::new();
                    if t.close != r.close {
                        why.push(format!("ends {:?} vs {:?}", t.close, r.close));
                    }
                    if (t.received > 0) != (r.received > 0) {
                        why.push(format!("{} vs {} bytes back", t.received, r.received));
                    } else if looks_like_web(&t.head) != looks_like_web(&r.head) {
                        why.push("different kind of answer".into());
                    }
                    if t.handshake != r.handshake {
                        why.push(format!("handshake {:?} vs {:?}", t.handshake, r.handshake));
                    }
                    if t.server_choice != r.server_choice {
                        why.push(format!(
                            "ServerHello {} vs {}",
                            t.server_choice.as_deref().unwrap_or("-"),
                            r.server_choice.as_deref().unwrap_or("-")
                        ));
                    }
                    (!why.is_empty(), why.join("; "))
                }
                _ => (true, "run on one side only".into()),
            };
            Comparison {
                probe: name.to_owned(),
                target: t,
                reference: r,
                differs,
                why,
            }
        })
        .collect()
}

/// The censor's probe of a suspicious server (rule 7): the suite with the recorded first
/// packet, judged by [`judge`].
pub fn censor_probe(job: &ProbeJob) -> (bool, String) {
    let reactions = suite(
        SocketAddr::V4(job.server),
        Some(&job.first_packet),
        None,
        job.id,
        Duration::from_millis(1500),
    );
    judge(&reactions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn reaction(probe: &str, received: usize, head: &str, close: Close) -> Reaction {
        Reaction {
            probe: probe.into(),
            sent: 10,
            received,
            head: head.into(),
            close,
            millis: 1,
            handshake: None,
            server_choice: None,
        }
    }

    #[test]
    fn replay_mutations() {
        let first: Vec<u8> = (0..200u8).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, c) = replay_probes(&first, &mut rng);
        let get = |ps: &[Probe], n: &str| match &ps
            .iter()
            .find(|p| p.name == n)
            .expect("probe")
            .payload
        {
            Payload::Raw(d) => d.clone(),
            other => panic!("{other:?}"),
        };
        let diff = |d: &[u8]| (0..200).filter(|i| d[*i] != first[*i]).collect::<Vec<_>>();
        assert_eq!(diff(&get(&a, "R1")), Vec::<usize>::new());
        assert_eq!(diff(&get(&a, "R2")), vec![0]);
        assert_eq!(diff(&get(&a, "R5")), vec![6, 16]);
        assert_eq!(diff(&get(&c, "R3")), vec![0, 1, 2, 3, 4, 5, 6, 7, 62, 63]);
        assert_eq!(diff(&get(&c, "R4")), vec![16]);
        let nr = random_probes(&mut rng);
        let lens: Vec<usize> = nr
            .iter()
            .map(|p| match &p.payload {
                Payload::Raw(d) => d.len(),
                _ => 0,
            })
            .collect();
        for (len, (lo, hi)) in lens.iter().zip([
            (7, 9),
            (11, 13),
            (15, 17),
            (21, 23),
            (32, 34),
            (40, 42),
            (48, 50),
            (221, 221),
        ]) {
            assert!((lo..=hi).contains(len));
        }
    }

    #[test]
    fn judge_flags_echo_and_length_thresholds_not_web_servers() {
        let echo = vec![
            reaction("R1", 300, "0ff00ff0", Close::Timeout),
            reaction("NR2", 221, "aabbccdd", Close::Timeout),
        ];
        assert!(judge(&echo).0);
        let web = vec![
            reaction("R1", 7, "15030300", Close::Fin),
            reaction("NR1-8", 7, "15030300", Close::Fin),
            reaction("NR1-50", 7, "15030300", Close::Fin),
            reaction("NR2", 0, "", Close::Fin),
        ];
        assert!(!judge(&web).0);
        let threshold = vec![
            reaction("NR1-8", 0, "", Close::Timeout),
            reaction("NR1-50", 0, "", Close::Rst),
        ];
        assert!(judge(&threshold).0);
        let silent = vec![
            reaction("NR1-8", 0, "", Close::Timeout),
            reaction("https-nosni", 0, "", Close::Timeout),
            reaction("http1", 0, "", Close::Timeout),
        ];
        assert!(judge(&silent).0);
        let cmp = compare(&echo, &web);
        assert!(
            cmp.iter()
                .find(|c| c.probe == "R1")
                .is_some_and(|c| c.differs)
        );
    }

    /// A naive echo "proxy" on loopback is flagged by the real probe suite.
    #[test]
    fn echo_server_is_flagged_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 || s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let first = [0x0f, 0xf0].repeat(150);
        let reactions = suite(addr, Some(&first), None, 9, Duration::from_millis(400));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = server.join();
        let (flagged, why) = judge(&reactions);
        assert!(flagged, "{why}: {reactions:?}");
        assert!(
            reactions.iter().any(|r| r.probe == "R3"),
            "R3 follows an answered R1"
        );
    }
}
