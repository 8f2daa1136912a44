//! A front that recognises its clients by Encrypted Client Hello: clients get the tunnel, and
//! everyone else — a browser-like hello with GREASE ECH, a replay of a client's own recorded
//! hello — is passed to the cover's TLS port with every byte it sent, untouched.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pigeon_transport::admission::AdmissionLimits;
use pigeon_transport::{Rotate, Route, TlsParams};
use pigeon_transport_tls::{Cover, Dialer, EchSetup, Front, FrontConfig, TokenKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "cover.test";

/// A stand-in for the cover's HTTPS port: keeps the first bytes of each connection and
/// answers `cover`.
async fn cover_port() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                // What arrives within a moment is what the front passed on.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                record.lock().expect("lock").push(got);
                let _ = tcp.write_all(b"cover").await;
            });
        }
    });
    (addr, seen)
}

/// Forwards one connection to `to`, keeping what the client sent first.
async fn recording_forwarder(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let first = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&first);
    tokio::spawn(async move {
        let mut recorded = false;
        while let Ok((mut client, _)) = listener.accept().await {
            let mut server = TcpStream::connect(to).await.expect("front");
            if !recorded {
                recorded = true;
                let mut buf = vec![0u8; 64 * 1024];
                let n = client.read(&mut buf).await.expect("hello");
                record.lock().expect("lock").extend_from_slice(&buf[..n]);
                server.write_all(&buf[..n]).await.expect("forward");
            }
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, first)
}

/// The first TLS record of `bytes` (the ClientHello).
fn first_record(bytes: &[u8]) -> &[u8] {
    let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    &bytes[..5 + len]
}

#[tokio::test]
async fn ech_clients_get_the_tunnel_and_everyone_else_the_cover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = pigeon_transport_tls::certs::self_signed(&dir.path().join("key.pem"), NAME)
        .expect("certificate");
    let key = [5u8; 32];
    let (cover_addr, cover_seen) = cover_port().await;
    let config = FrontConfig {
        tls: pigeon_transport_tls::server_tls_config(cert.chain.clone(), cert.key.clone_key())
            .expect("rustls"),
        path: "/t".to_owned(),
        key: TokenKey::new(key),
        cover: Cover::Dir(dir.path().to_path_buf()),
        cover_tls: Some(cover_addr),
        handshake_timeout: Duration::from_secs(10),
        admission: AdmissionLimits::default(),
        ech: Some(EchSetup {
            public_name: NAME.to_owned(),
            chain: cert.chain.iter().map(|c| c.to_vec()).collect(),
            key: zeroize::Zeroizing::new(cert.key.secret_der().to_vec()),
        }),
    };
    let mut front = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("front");
    let front_addr = front.local_addr();
    let (forward_addr, recorded) = recording_forwarder(front_addr).await;
    let sni = pigeon_transport::Host::parse(NAME).expect("name");
    let pigeon_transport::Host::Name(sni) = sni else {
        panic!("a name");
    };
    let params = TlsParams::new(Some(sni), "/t", key, Some(cert.pin), Rotate::Off)
        .expect("params")
        .with_ech(true)
        .expect("ech");
    let route = Route::tls("127.0.0.1", forward_addr.port(), &params).expect("route");
    let dialer = Dialer::new().expect("dialer");

    // A client: through the recording forwarder, the tunnel works both ways.
    let server = tokio::spawn(async move {
        let mut session = front.accept().await.expect("a session");
        let mut got = Vec::new();
        while got.len() < 4 {
            std::future::poll_fn(|cx| {
                pigeon_transport::ServerStream::poll_read_ready(&mut session, cx)
            })
            .await
            .expect("readable");
            let _ = pigeon_transport::ServerStream::try_read_buf(&mut session, &mut got);
        }
        pigeon_transport::ServerStream::write_all(&mut session, b"pong")
            .await
            .expect("answer");
        (got, front)
    });
    let mut conn = dialer
        .dial(&route, Duration::from_secs(10))
        .await
        .expect("an ECH client is let in");
    conn.write_all(b"ping").await.expect("write");
    let mut answer = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut answer))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&answer, b"pong");
    let (got, _front) = server.await.expect("server");
    assert_eq!(got, b"ping");
    assert!(
        cover_seen.lock().expect("lock").is_empty(),
        "nothing went to the cover yet"
    );

    // The same client's recorded hello, replayed: the cover gets exactly those bytes.
    let hello = first_record(&recorded.lock().expect("lock")).to_vec();
    let mut replay = TcpStream::connect(front_addr).await.expect("connect");
    replay.write_all(&hello).await.expect("replay");
    let mut from_cover = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), replay.read_to_end(&mut from_cover))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(from_cover, b"cover", "the replay was answered by the cover");
    assert_eq!(cover_seen.lock().expect("lock").last(), Some(&hello));

    // A hello with GREASE ECH (a client of the same route without `ech`), as a browser's.
    let plain = TlsParams::new(
        params.sni().cloned(),
        "/t",
        key,
        Some(cert.pin),
        Rotate::Off,
    )
    .expect("params");
    let plain_route = Route::tls("127.0.0.1", front_addr.port(), &plain).expect("route");
    assert!(
        dialer
            .dial(&plain_route, Duration::from_secs(5))
            .await
            .is_err(),
        "a hello without the proof meets the cover, which speaks no TLS here"
    );
    let seen = cover_seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].first(), Some(&0x16), "a ClientHello, as it came");
}

/// The first ClientHello a dialer sends for `params` (caught by a listener that answers
/// nothing).
async fn caught_hello(params: &TlsParams) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let route = Route::tls("127.0.0.1", port, params).expect("route");
    let dial = tokio::spawn(async move {
        let dialer = Dialer::new().expect("dialer");
        let _ = dialer.dial(&route, Duration::from_secs(2)).await;
    });
    let (mut tcp, _) = listener.accept().await.expect("the client connects");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while got.len() < 5 || got.len() < 5 + usize::from(u16::from_be_bytes([got[3], got[4]])) {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "the hello was cut");
        got.extend_from_slice(&buf[..n]);
    }
    drop(tcp);
    dial.abort();
    first_record(&got).to_vec()
}

/// The `encrypted_client_hello` extension of a ClientHello record: (kdf, aead, enc length,
/// payload length).
fn ech_shape(record: &[u8]) -> (u16, u16, usize, usize) {
    let u16_at = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let body = &record[9..];
    let mut at = 2 + 32;
    at += 1 + usize::from(body[at]);
    at += 2 + usize::from(u16_at(body, at));
    at += 1 + usize::from(body[at]);
    let end = at + 2 + usize::from(u16_at(body, at));
    at += 2;
    while at < end {
        let ty = u16_at(body, at);
        let len = usize::from(u16_at(body, at + 2));
        let data = &body[at + 4..at + 4 + len];
        if ty == 0xfe0d {
            assert_eq!(data[0], 0, "an outer ECH extension");
            let enc = usize::from(u16_at(data, 6));
            let payload = usize::from(u16_at(data, 8 + enc));
            return (u16_at(data, 1), u16_at(data, 3), enc, payload);
        }
        at += 4 + len;
    }
    panic!("no ECH extension");
}

/// A real ECH extension takes the shape of the GREASE one Chrome sends: the same KDF and AEAD,
/// a 32-byte X25519 key, and a payload of one of GREASE's lengths (32·k + 16 for k = 4…7),
/// spread over them.
#[tokio::test]
async fn real_ech_is_shaped_as_grease() {
    let sni = match pigeon_transport::Host::parse(NAME).expect("name") {
        pigeon_transport::Host::Name(sni) => sni,
        _ => panic!("a name"),
    };
    let plain = TlsParams::new(Some(sni), "/t", [5; 32], None, Rotate::Off).expect("params");
    let ech = plain.clone().with_ech(true).expect("ech");
    let grease_lengths = [144, 176, 208, 240];
    let mut grease = std::collections::BTreeMap::new();
    let mut real = std::collections::BTreeMap::new();
    for _ in 0..24 {
        let (kdf, aead, enc, len) = ech_shape(&caught_hello(&plain).await);
        assert_eq!((kdf, enc), (1, 32));
        assert!(grease_lengths.contains(&len), "GREASE payload {len}");
        *grease.entry(len).or_insert(0) += 1;
        let (real_kdf, real_aead, real_enc, real_len) = ech_shape(&caught_hello(&ech).await);
        assert_eq!((real_kdf, real_aead, real_enc), (kdf, aead, enc));
        assert!(
            grease_lengths.contains(&real_len),
            "real payload {real_len}"
        );
        *real.entry(real_len).or_insert(0) += 1;
    }
    println!("payload lengths: GREASE {grease:?}, real {real:?}");
    assert!(
        real.len() >= 3,
        "real payload lengths vary as GREASE's do: {real:?}"
    );
}
