//! A proxy carries a client's session to a relay over the tls transport, and carries it only
//! to relays: a route of another transport is refused, an unreachable one reported.

use std::time::Duration;

use pigeon_transport::admission::AdmissionLimits;
use pigeon_transport::{DialError, Rotate, Route, TlsParams, TransportError, Transports};
use pigeon_transport_tls::hop::{self, HopPolicy};
use pigeon_transport_tls::{Cover, Dialer, Front, FrontConfig, TokenKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A tls front on loopback with its own secret; returns it and the route to it.
async fn front(dir: &std::path::Path, key: [u8; 32]) -> (Front, Route) {
    let cert = pigeon_transport_tls::certs::self_signed(
        &dir.join(format!("{}.pem", key[0])),
        "cover.test",
    )
    .expect("certificate");
    let config = FrontConfig {
        tls: pigeon_transport_tls::server_tls_config(cert.chain, cert.key).expect("rustls"),
        path: "/t".to_owned(),
        key: TokenKey::new(key),
        cover: Cover::Dir(dir.to_path_buf()),
        cover_tls: None,
        handshake_timeout: Duration::from_secs(10),
        admission: AdmissionLimits::default(),
        ech: None,
    };
    let front = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("front");
    let params = TlsParams::new(None, "/t", key, Some(cert.pin), Rotate::Off).expect("params");
    let route = Route::tls("127.0.0.1", front.local_addr().port(), &params).expect("route");
    (front, route)
}

/// The hop problem a proxy answered with, if that is what `e` is.
fn hop_problem(e: &DialError) -> Option<&str> {
    match e.inner().downcast_ref::<TransportError>() {
        Some(TransportError::Hop { problem, .. }) => Some(problem),
        _ => None,
    }
}

fn transports() -> Transports {
    Transports::new()
        .with(pigeon_transport::tcp::TcpDial)
        .with(Dialer::new().expect("dialer"))
}

#[tokio::test]
async fn a_proxy_carries_sessions_to_relays_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The "relay": echoes what each session sends.
    let (mut relay, relay_route) = front(dir.path(), [1; 32]).await;
    tokio::spawn(async move {
        while let Some(mut session) = relay.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if std::future::poll_fn(|cx| {
                        pigeon_transport::ServerStream::poll_read_ready(&mut session, cx)
                    })
                    .await
                    .is_err()
                    {
                        return;
                    }
                    buf.clear();
                    match pigeon_transport::ServerStream::try_read_buf(&mut session, &mut buf) {
                        Ok(0) => return,
                        Ok(_) => {
                            if pigeon_transport::ServerStream::write_all(&mut session, &buf)
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    // The proxy.
    let (mut proxy, proxy_route) = front(dir.path(), [2; 32]).await;
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let onward = std::sync::Arc::new(transports());
        while let Some(session) = proxy.accept().await {
            let onward = std::sync::Arc::clone(&onward);
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let _ = hop::serve(
                    session,
                    &onward,
                    &HopPolicy::default(),
                    Duration::from_secs(10),
                    &(),
                )
                .await;
                let _ = ended_tx.send(());
            });
        }
    });

    let dialer = transports();
    let mut conn = dialer
        .dial_via(&proxy_route, &relay_route, Duration::from_secs(10))
        .await
        .expect("through the proxy");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    conn.write_all(&payload).await.expect("write");
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(back, payload, "bytes carried both ways untouched");
    // When the client goes, the proxy lets the session go too.
    drop(conn);
    tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the proxy ended the carried session")
        .expect("a session ended");

    // Not a relay route: refused, with the proxy's sentence.
    let ssh: Route = "tcp://127.0.0.1:22".parse().expect("route");
    match dialer
        .dial_via(&proxy_route, &ssh, Duration::from_secs(10))
        .await
    {
        Err(e) => {
            let problem = hop_problem(&e).unwrap_or_else(|| panic!("refused differently: {e}"));
            assert!(problem.contains("tls"), "{problem}");
        }
        Ok(_) => panic!("the proxy carried a session to a tcp route"),
    }
    // A relay that does not answer: reported as such.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let params = relay_route.tls_params().expect("tls").expect("valid");
    let gone = Route::tls("127.0.0.1", closed, &params).expect("route");
    match dialer
        .dial_via(&proxy_route, &gone, Duration::from_secs(10))
        .await
    {
        Err(e) => {
            let problem = hop_problem(&e).unwrap_or_else(|| panic!("failed differently: {e}"));
            assert!(problem.contains("did not answer"), "{problem}");
        }
        Ok(_) => panic!("connected to nothing"),
    }
}
