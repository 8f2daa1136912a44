//! Strangers trying to take a relay or its tls front down from one machine (issue #13), each
//! attack against a real relay process while an honest pair keeps talking. The attacker
//! connects from 127.0.0.2 (another source address, as another machine would be), the honest
//! pair from 127.0.0.1. Each test asserts that every honest connection succeeds within 2 s,
//! that every honest message arrives, and that the relay's memory stays bounded.

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_transport::RelayLink;
use pigeon_wire::msg::MailboxId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Honest connections must open within this, whatever the attack (issue #13's target).
const HONEST_CONNECT: Duration = Duration::from_secs(2);
/// The relay's resident memory stays under this during every attack here.
const MAX_RSS_MIB: u64 = 512;

/// A connection from the attacker's address.
async fn from_attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().expect("address"))?;
    socket.connect(to).await
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// One honest round on `link`: bob makes a mailbox, alice posts five messages, bob reads all
/// five. Returns the slowest of the two connects.
async fn honest_round(link: &RelayLink, round: u8) -> Duration {
    let connect = || async {
        let started = Instant::now();
        let conn = RelayConnection::connect(link, Duration::from_secs(10))
            .await
            .expect("an honest client connects");
        (conn, started.elapsed())
    };
    let (mut bob, bob_took) = connect().await;
    let mailbox = OwnedMailbox::generate().expect("mailbox");
    bob.create_mailbox(&mailbox.key, &mailbox.id, mailbox.cap_hash())
        .await
        .expect("create");
    let (alice, alice_took) = connect().await;
    for i in 0..5u8 {
        alice
            .send(
                &mailbox.id,
                &mailbox.sender_cap,
                [round ^ (i << 4); 16],
                vec![i; 500],
            )
            .await
            .expect("the relay takes an honest message");
    }
    bob.subscribe(&mailbox.key, &mailbox.id)
        .await
        .expect("subscribe");
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got < 5 {
        match tokio::time::timeout_at(deadline, bob.next_event()).await {
            Ok(Some(Event::Push(p))) => {
                let seqs: Vec<u64> = p.deliveries.iter().map(|d| d.seq).collect();
                got += seqs.len();
                let _ = bob.ack(&MailboxId(mailbox.id.0), seqs).await;
            }
            other => panic!("round {round}: {got} of 5 honest messages arrived ({other:?})"),
        }
    }
    bob_took.max(alice_took)
}

/// Honest rounds while an attack goes on: every connect within [`HONEST_CONNECT`].
async fn honest_rounds(link: &RelayLink, relay_pid: u32, rounds: u8) {
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        slowest = slowest.max(honest_round(link, round).await);
        let rss = rss_mib(relay_pid);
        assert!(rss < MAX_RSS_MIB, "the relay holds {rss} MiB");
    }
    eprintln!("slowest honest connect: {slowest:?}");
    assert!(
        slowest < HONEST_CONNECT,
        "an honest connect took {slowest:?}"
    );
}

fn tcp_addr(relay: &Relay) -> SocketAddr {
    relay.addr().parse().expect("relay address")
}

#[tokio::test]
async fn stalled_and_silent_connections_do_not_lock_out_a_full_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Few connection slots, so that the attack fills them: strangers in their handshake make
    // room for newcomers.
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--max-connections")
            .arg("300"),
    );
    let addr = tcp_addr(&relay);
    let pid = relay.pid().expect("pid");
    // 1,000 connections: half send a record header and a few bytes of a handshake, half send
    // nothing; all stay open.
    let mut held = Vec::new();
    for i in 0..1000 {
        let Ok(mut s) = from_attacker(addr).await else {
            continue;
        };
        if i % 2 == 0 {
            let _ = s.write_all(&[0x00, 0x60, 1, 2, 3, 4]).await;
        }
        held.push(s);
    }
    honest_rounds(&relay.link, pid, 10).await;
    // The attacker's own oldest handshakes were closed to make room.
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    assert!(
        closed > 500,
        "only {closed} of the attacker's connections were closed"
    );
    relay.assert_no_panic();
}

#[tokio::test]
async fn connections_that_idle_with_a_link_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()).arg("--idle-timeout").arg("2"));
    let addr = tcp_addr(&relay);
    let pid = relay.pid().expect("pid");
    // 200 connections that complete the handshake (anyone with the relay link can), then say
    // nothing and subscribe to nothing.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut s = from_attacker(addr).await.expect("connect");
        let mut session = pigeon_proto::ClientSession::connect(
            relay.link.relay_key(),
            pigeon_proto::Entropy::from_os().expect("entropy"),
            Instant::now(),
            Duration::from_secs(5),
        )
        .expect("session");
        let mut wire = Vec::new();
        session.poll_transmit(&mut wire);
        s.write_all(&wire).await.expect("hello");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("answer");
        session.handle_input(Instant::now(), &buf[..n]);
        assert!(matches!(
            session.poll_event(),
            Some(pigeon_proto::SessionEvent::Connected { .. })
        ));
        idle.push(s);
    }
    honest_rounds(&relay.link, pid, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, s) in idle.iter_mut().enumerate() {
        let mut b = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
        assert!(
            matches!(end, Ok(Ok(0) | Err(_))),
            "idle connection {i} is still open: {end:?}"
        );
    }
    relay.assert_no_panic();
}

/// A TLS client that trusts any certificate (an attacker does not care).
mod insecure {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

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

    pub(crate) fn config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

#[tokio::test]
async fn the_front_outlasts_keep_alive_cover_floods_and_stalled_hellos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>Recipes</h1>\n").expect("index");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--tls")
            .arg("127.0.0.1:0")
            .arg("--sni")
            .arg("cover.test")
            .arg("--cover")
            .arg(site.to_str().expect("utf-8")),
    );
    let pid = relay.pid().expect("pid");
    let front: SocketAddr = format!("127.0.0.1:{}", relay.link.routes()[0].port())
        .parse()
        .expect("front");
    let config = insecure::config();
    // 512 TLS connections that fetch the cover page over HTTP/1.1 and keep the connection
    // alive (which once held every handshake slot), from the attacker's address, one after
    // another as fast as they go.
    let mut kept = Vec::new();
    for _ in 0..512 {
        let tcp = from_attacker(front)
            .await
            .expect("connect")
            .into_std()
            .expect("std socket");
        let config = std::sync::Arc::clone(&config);
        let visit = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            tcp.set_nonblocking(false).ok()?;
            tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let conn = rustls::ClientConnection::new(config, "cover.test".try_into().ok()?).ok()?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(b"GET / HTTP/1.1\r\nHost: cover.test\r\n\r\n")
                .ok()?;
            let mut answer = [0u8; 512];
            (tls.read(&mut answer).ok()? > 0).then_some(tls)
        })
        .await
        .expect("visit");
        kept.extend(visit);
    }
    assert!(
        kept.len() > 400,
        "only {} cover visits were served",
        kept.len()
    );
    // And 1,000 connections that send half a ClientHello and stall.
    let mut hello = Vec::new();
    rustls::ClientConnection::new(insecure::config(), "cover.test".try_into().expect("name"))
        .expect("client")
        .write_tls(&mut hello)
        .expect("hello");
    let mut stalled = Vec::new();
    for _ in 0..1000 {
        if let Ok(mut s) = from_attacker(front).await {
            let _ = s.write_all(&hello[..hello.len() / 2]).await;
            stalled.push(s);
        }
    }
    honest_rounds(&relay.link, pid, 5).await;
    drop((kept, stalled));
    relay.assert_no_panic();
}

#[tokio::test]
async fn pipelined_requests_with_large_answers_do_not_pile_up_in_the_relay() {
    use pigeon_wire::msg::{FetchKeyPackage, request};
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let addr = tcp_addr(&relay);
    let pid = relay.pid().expect("pid");
    // A slot with a 16 KiB last-resort key package, which is never used up.
    let owner = pigeon_proto::auth::generate_signing_key().expect("key");
    let slot = [0x5a; 32];
    let publisher = relay.connect().await;
    publisher
        .publish_key_packages(&owner, &slot, Vec::new(), Some(vec![7; 16 * 1024]))
        .await
        .expect("publish");
    // The attacker pipelines 20,000 fetches of it on one session (a megabyte of requests,
    // 300 MB of answers if each were served) and reads nothing.
    let mut s = from_attacker(addr).await.expect("connect");
    let mut session = pigeon_proto::ClientSession::connect(
        relay.link.relay_key(),
        pigeon_proto::Entropy::from_os().expect("entropy"),
        Instant::now(),
        Duration::from_secs(5),
    )
    .expect("session");
    let mut wire = Vec::new();
    session.poll_transmit(&mut wire);
    s.write_all(&wire).await.expect("hello");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("handshake answer")
        .expect("read");
    session.handle_input(Instant::now(), &buf[..n]);
    for _ in 0..20_000 {
        session
            .request(request::Body::FetchKeyPackage(FetchKeyPackage {
                slot_id: slot.to_vec(),
            }))
            .expect("queued");
    }
    wire.clear();
    session.poll_transmit(&mut wire);
    let writer = tokio::spawn(async move {
        // The relay stops reading while its answers wait for us: the write may block.
        let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&wire)).await;
        s
    });
    honest_rounds(&relay.link, pid, 5).await;
    let mut s = writer.await.expect("writer");
    // Now read everything: two last-resort packages at most, the rest refused as too often.
    let mut got = 0usize;
    let mut packages = 0;
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got < 20_000 {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        session.handle_input(Instant::now(), &buf[..n]);
        while let Some(event) = session.poll_event() {
            if let pigeon_proto::SessionEvent::Response { result, .. } = event {
                got += 1;
                match result {
                    pigeon_wire::msg::response::Result::KeyPackage(_) => packages += 1,
                    pigeon_wire::msg::response::Result::Error(_) => refused += 1,
                    _ => {}
                }
            }
        }
    }
    assert!(
        packages <= 2,
        "{packages} last-resort packages went to one session"
    );
    assert!(
        refused > 1000,
        "only {refused} fetches were refused ({got} answers read)"
    );
    let rss = rss_mib(pid);
    assert!(rss < MAX_RSS_MIB, "the relay holds {rss} MiB");
    relay.assert_no_panic();
}

#[tokio::test]
async fn anonymous_creation_is_bounded_per_session_and_for_the_relay() {
    use pigeon_wire::ErrorCode;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--creations-per-sec")
            .arg("50"),
    );
    let pid = relay.pid().expect("pid");
    // A stranger with the relay link makes mailboxes as fast as it can, session after session.
    let mut made = 0;
    let mut session_quota = 0;
    let mut relay_quota = 0;
    for _ in 0..12 {
        let conn = relay.connect().await;
        for _ in 0..80 {
            let m = OwnedMailbox::generate().expect("mailbox");
            match conn.create_mailbox(&m.key, &m.id, m.cap_hash()).await {
                Ok(()) => made += 1,
                Err(pigeon_client::ClientError::Refused {
                    code: ErrorCode::QuotaExceeded,
                    message,
                    retry_after,
                }) => {
                    if message.contains("this session") {
                        session_quota += 1;
                        break;
                    }
                    assert!(retry_after.is_some(), "{message}");
                    relay_quota += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    eprintln!("made {made}; session quota hit {session_quota}×, the relay's {relay_quota}×");
    assert!(session_quota >= 1, "a session made more than 64 mailboxes");
    assert!(
        relay_quota >= 1,
        "the relay's rate of creations was never reached"
    );
    assert!(made <= 12 * 64, "{made} mailboxes made");
    // The refill lets honest people make theirs a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    honest_rounds(&relay.link, pid, 3).await;
    relay.assert_no_panic();
}
