//! How Pigeonpost bytes cross the network: routes, links, and plain TCP.
//!
//! * [`Route`]: plain data saying how to reach a relay (transport, host, port, parameters).
//! * [`RelayLink`]: a relay's static Noise key and its routes, shared as
//!   `pigeon://relay#<base64url>`. The envelope ([`encode_link`], [`decode_link`]) is shared by
//!   every kind of link ([`LinkKind`]); the payloads are versioned protobuf ([`proto`]).
//! * [`Transports`]: the registry of [`Dial`]ers a program was built with, which opens a
//!   [`Connection`] over whichever transport a route names (and through a proxy, [`hop`]);
//!   servers take connections from any [`Accept`]. [`tcp`] holds the plain TCP dialer and
//!   listener; disguised transports live in crates of their own (`pigeon-transport-<name>`)
//!   and implement the same traits.
//!
//! Parsing never panics and every refusal says what was wrong. Errors sort themselves into the
//! shared [`pigeon_wire::ErrorKind`]: a refused, reset or timed-out connection is
//! [`LocalNetwork`](pigeon_wire::ErrorKind::LocalNetwork), which is what censorship looks like.

pub mod admission;
mod error;
pub mod hop;
mod link;
pub mod proto;
mod proxy_link;
mod relay_link;
mod route;
mod server_stream;
pub mod tcp;
mod tls_params;
mod transports;

use tokio::io::{AsyncRead, AsyncWrite};

pub use error::{ConnectFailure, TransportError};
pub use link::{
    LinkError, LinkKind, MAX_LINK_LEN, SCHEME, decode_any_link, decode_link, encode_link,
    encoded_link_len,
};
pub use proxy_link::{PROXY_LINK_VERSION, ProxyLink};
pub use relay_link::{MAX_LABEL_CHARS, MAX_ROUTES, RELAY_KEY_LEN, RELAY_LINK_VERSION, RelayLink};
pub use route::{
    DnsName, Host, MAX_HOST_LEN, MAX_PARAM_KEY, MAX_PARAM_VALUE, MAX_PARAMS, MAX_TRANSPORT_NAME,
    Route, RouteError, Transport, UnknownTransport,
};
pub use server_stream::ServerStream;
pub use tls_params::{MAX_TLS_PATH, MIN_ROTATE, Rotate, TlsParams};
pub use transports::{Accept, Accepted, BoxFuture, Dial, DialError, Source, Transports};

/// A byte stream to a relay or proxy, over any transport.
///
/// Whatever a transport does to disguise the bytes, what it hands back is this: an ordered,
/// reliable byte stream that the Noise channel runs on.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_registry_picks_the_dialer_by_the_routes_transport() {
        let transports = Transports::new().with(tcp::TcpDial);
        assert_eq!(transports.names(), ["tcp"]);
        let route: Route = "obfs9://127.0.0.1:9".parse().expect("valid");
        assert!(!transports.supports(route.transport()));
        let Err(err) = transports.dial(&route, Duration::from_secs(1)).await else {
            panic!("obfs9 dialed");
        };
        assert_eq!(
            err.to_string(),
            "transport `obfs9` is not supported by this build"
        );
        assert_eq!(err.kind(), pigeon_wire::ErrorKind::BadInput);

        let listener = tcp::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let route = Route::tcp("127.0.0.1", port).expect("valid");
        let mut conn = transports
            .dial(&route, Duration::from_secs(5))
            .await
            .expect("dial");
        conn.write_all(b"x").await.expect("write");
        // A route of a transport not registered is refused, even one this crate knows.
        let tls: Route =
            "tls://127.0.0.1:9?key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8&path=%2Fx"
                .parse()
                .expect("valid");
        let Err(err) = Transports::new().dial(&tls, Duration::from_secs(1)).await else {
            panic!("an empty registry dialed");
        };
        assert_eq!(err.kind(), pigeon_wire::ErrorKind::BadInput);
    }
}
