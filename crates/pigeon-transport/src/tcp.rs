//! Plain TCP: dialing with a little happy eyeballs, and listening.
//!
//! Plain TCP looks like what it is and defeats no censor; it is for tests and local use, and the
//! base that disguised transports build on ([`connect`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::error::{ConnectFailure, TransportError};
use crate::route::{Host, Route, Transport};

/// How long one connection attempt runs alone before the next address is tried beside it
/// (RFC 8305 recommends 250 ms).
pub const CONNECT_STAGGER: Duration = Duration::from_millis(250);

/// Opens a plain TCP connection for a `tcp` route, giving up after `timeout`.
///
/// # Errors
/// [`TransportError::WrongTransport`] if the route is not a `tcp` route, and otherwise as
/// [`connect`].
pub async fn dial(route: &Route, timeout: Duration) -> Result<TcpStream, TransportError> {
    if route.transport() != &Transport::Tcp {
        return Err(TransportError::WrongTransport {
            route: route.redacted(),
            expected: "tcp",
        });
    }
    connect(route.host(), route.port(), timeout)
        .await
        .map_err(|e| with_route(e, route))
}

/// Opens a TCP connection to `host` and `port`, with `TCP_NODELAY` set, giving up after
/// `timeout`. For disguised transports, which run their own bytes over it.
///
/// A host name is resolved, and its addresses are tried in the resolver's order with address
/// families alternating; each attempt runs alone for [`CONNECT_STAGGER`] (or until it fails)
/// before the next starts beside it, and the first to connect wins.
///
/// # Errors
/// [`TransportError::Resolve`], [`TransportError::NoAddresses`], [`TransportError::Connect`]
/// or [`TransportError::Timeout`], all of kind
/// [`LocalNetwork`](pigeon_wire::ErrorKind::LocalNetwork).
pub async fn connect(
    host: &Host,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let target = match host {
        Host::Ipv6(ip) => format!("[{ip}]:{port}"),
        host => format!("{host}:{port}"),
    };
    match tokio::time::timeout(timeout, resolve_and_connect(host, port, &target)).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout {
            route: target,
            after: timeout,
        }),
    }
}

/// Opens a listening socket on `addr`.
///
/// # Errors
/// [`TransportError::Bind`] if the address is in use or not available here.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Bind { addr, source })
}

/// Accepts one connection, with `TCP_NODELAY` set.
///
/// # Errors
/// [`TransportError::Accept`]; a listener keeps working after most of these, so a server logs
/// them and accepts again (after a short pause when out of file descriptors).
pub async fn accept(listener: &TcpListener) -> Result<(TcpStream, SocketAddr), TransportError> {
    let (stream, peer) = listener
        .accept()
        .await
        .map_err(|source| TransportError::Accept { source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| TransportError::Accept { source })?;
    Ok((stream, peer))
}

/// The `tcp` transport's dialer, for [`crate::Transports`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpDial;

impl crate::Dial for TcpDial {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn dial<'a>(
        &'a self,
        route: &'a Route,
        timeout: Duration,
    ) -> crate::BoxFuture<'a, Result<Box<dyn crate::Connection>, crate::DialError>> {
        Box::pin(async move {
            let stream = dial(route, timeout).await?;
            Ok(Box::new(stream) as Box<dyn crate::Connection>)
        })
    }
}

/// The `tcp` transport's listener, for a server's [`crate::Accept`]: `TCP_NODELAY`, kernel
/// keepalive (so peers that vanished do not hold connections forever), and passing failures
/// (out of file descriptors, a connection reset before it was accepted) waited out.
#[derive(Debug)]
pub struct TcpAccept(pub TcpListener);

impl crate::Accept for TcpAccept {
    type Stream = TcpStream;

    async fn accept(&mut self) -> Option<Result<crate::Accepted<TcpStream>, TransportError>> {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    set_keepalive(&stream);
                    return Some(Ok(crate::Accepted {
                        stream,
                        source: crate::Source::Address(peer.ip()),
                    }));
                }
                Err(e) if is_transient_accept_error(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(source) => return Some(Err(TransportError::Accept { source })),
            }
        }
    }
}

/// Lets the kernel find peers that vanished (power loss, a dropped mobile link); costs nothing
/// in user space.
fn set_keepalive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(120))
        .with_interval(Duration::from_secs(30))
        .with_retries(4);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Accept failures that pass: the listener works again after a pause.
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // EMFILE/ENFILE (out of file descriptors) surface as `Other`/uncategorized: pause and retry
    // rather than stop serving everyone else.
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut | Other
    ) || e.raw_os_error().is_some()
}

/// Names the route, not just the endpoint, in errors from [`dial`].
fn with_route(error: TransportError, route: &Route) -> TransportError {
    match error {
        TransportError::Connect { failures, .. } => TransportError::Connect {
            route: route.redacted(),
            failures,
        },
        TransportError::Timeout { after, .. } => TransportError::Timeout {
            route: route.redacted(),
            after,
        },
        other => other,
    }
}

async fn resolve_and_connect(
    host: &Host,
    port: u16,
    target: &str,
) -> Result<TcpStream, TransportError> {
    let addrs = match host {
        Host::Ipv4(ip) => vec![SocketAddr::from((*ip, port))],
        Host::Ipv6(ip) => vec![SocketAddr::from((*ip, port))],
        Host::Name(name) => {
            let resolved = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|source| TransportError::Resolve {
                    host: name.as_str().to_owned(),
                    source,
                })?;
            interleave_families(resolved.collect())
        }
    };
    if addrs.is_empty() {
        return Err(TransportError::NoAddresses {
            host: host.to_string(),
        });
    }
    connect_first(&addrs)
        .await
        .map_err(|failures| TransportError::Connect {
            route: target.to_owned(),
            failures,
        })
}

/// The addresses without repeats, alternating between families, starting with the family of
/// the first (RFC 8305 section 4, with a first-address-family count of one).
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !unique.contains(&addr) {
            unique.push(addr);
        }
    }
    let Some(first) = unique.first() else {
        return unique;
    };
    let first_is_v6 = first.is_ipv6();
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        unique.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(same.len() + other.len());
    loop {
        match (same.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Tries `addrs` with staggered starts; the first connection wins and the others are dropped.
async fn connect_first(addrs: &[SocketAddr]) -> Result<TcpStream, Vec<ConnectFailure>> {
    let mut attempts = JoinSet::new();
    let mut next = addrs.iter().copied();
    let mut failures = Vec::new();
    loop {
        if attempts.is_empty() {
            match next.next() {
                Some(addr) => {
                    attempts.spawn(attempt(addr));
                }
                None => return Err(failures),
            }
        }
        tokio::select! {
            Some(joined) = attempts.join_next() => match joined {
                Ok((_, Ok(stream))) => return Ok(stream),
                Ok((addr, Err(error))) => failures.push(ConnectFailure { addr, error }),
                // An attempt only panics or is cancelled through a bug; count it as failed.
                Err(join_error) => failures.push(ConnectFailure {
                    addr: addrs[0],
                    error: std::io::Error::other(join_error.to_string()),
                }),
            },
            () = tokio::time::sleep(CONNECT_STAGGER) => {
                if let Some(addr) = next.next() {
                    attempts.spawn(attempt(addr));
                }
            }
        }
    }
}

async fn attempt(addr: SocketAddr) -> (SocketAddr, std::io::Result<TcpStream>) {
    let result = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
    .await;
    (addr, result)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use pigeon_wire::ErrorKind;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let got = interleave_families(vec![
            addr("[::1]:1"),
            addr("[::2]:1"),
            addr("[::3]:1"),
            addr("127.0.0.1:1"),
            addr("[::1]:1"),
            addr("127.0.0.2:1"),
        ]);
        let want = [
            "[::1]:1",
            "127.0.0.1:1",
            "[::2]:1",
            "127.0.0.2:1",
            "[::3]:1",
        ];
        assert_eq!(got, want.map(addr));
        assert!(interleave_families(vec![]).is_empty());
    }

    #[tokio::test]
    async fn dials_a_loopback_listener() {
        let listener = bind(addr("127.0.0.1:0")).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = accept(&listener).await.expect("accept");
            assert!(stream.nodelay().expect("nodelay"));
            let mut buf = [0; 5];
            stream.read_exact(&mut buf).await.expect("read");
            stream.write_all(&buf).await.expect("write");
        });
        let route = Route::tcp("127.0.0.1", port).expect("valid");
        let mut stream = dial(&route, Duration::from_secs(5)).await.expect("dial");
        assert!(stream.nodelay().expect("nodelay"));
        stream.write_all(b"hello").await.expect("write");
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn dials_localhost_by_name() {
        // `localhost` may resolve to ::1 first, where nothing listens: the dialer moves on.
        let listener = bind(addr("127.0.0.1:0")).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let route = Route::tcp("localhost", port).expect("valid");
        let (dialed, accepted) =
            tokio::join!(dial(&route, Duration::from_secs(5)), accept(&listener));
        dialed.expect("dial");
        accepted.expect("accept");
    }

    #[tokio::test]
    async fn closed_port_fails_fast_as_local_network() {
        let listener = bind(addr("127.0.0.1:0")).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let route = Route::tcp("127.0.0.1", port).expect("valid");
        let started = Instant::now();
        let err = dial(&route, Duration::from_secs(5))
            .await
            .expect_err("closed");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), ErrorKind::LocalNetwork);
        let TransportError::Connect { failures, .. } = &err else {
            panic!("not a connect error: {err}");
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(
            failures[0].error.kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "could not connect to tcp://127.0.0.1:{port} (127.0.0.1:{port}: "
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn timeout_is_local_network() {
        // A listener that never accepts, with the smallest backlog: once its queue is full the
        // kernel drops further SYNs, so a connection attempt hangs, all on loopback.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(addr("127.0.0.1:0")).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let target = listener.local_addr().expect("addr");
        let mut queued = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(target)).await
            {
                Ok(stream) => queued.push(stream.expect("queued")),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "the backlog never filled");
        let route = Route::tcp("127.0.0.1", target.port()).expect("valid");
        let started = Instant::now();
        let err = dial(&route, Duration::from_millis(300))
            .await
            .expect_err("hangs");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::LocalNetwork);
        assert_eq!(
            err.to_string(),
            format!(
                "could not connect to tcp://127.0.0.1:{} within 300 ms",
                target.port()
            )
        );
    }

    #[tokio::test]
    async fn other_transports_and_busy_addresses_are_refused() {
        let route: Route = "quic://127.0.0.1:9".parse().expect("valid");
        let err = dial(&route, Duration::from_secs(1))
            .await
            .expect_err("not tcp");
        assert_eq!(err.kind(), ErrorKind::BadInput);
        assert_eq!(
            err.to_string(),
            "route quic://127.0.0.1:9 is not a tcp route"
        );

        let listener = bind(addr("127.0.0.1:0")).await.expect("bind");
        let busy = listener.local_addr().expect("addr");
        let err = bind(busy).await.expect_err("in use");
        assert_eq!(err.kind(), ErrorKind::BadInput);
        assert_eq!(err.to_string(), format!("could not listen on {busy}"));
    }
}
