//! Errors of the `tls` transport, sorted by who is at fault.

use std::time::Duration;

use pigeon_wire::ErrorKind;

use crate::h2::H2Error;
use crate::record::RecordError;

/// A failure of the `tls` transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The route is not a usable `tls` route.
    #[error("route {route} is not a usable tls route: {problem}")]
    Route {
        /// The route, in its text form.
        route: String,
        /// What is wrong.
        problem: String,
    },
    /// The TCP connection could not be made.
    #[error(transparent)]
    Connect(#[from] pigeon_transport::TransportError),
    /// BoringSSL or rustls refused a setting: a bug or a broken build.
    #[error("could not set up TLS ({what}): {detail}")]
    Setup {
        /// Which setting.
        what: &'static str,
        /// What the library said.
        detail: String,
    },
    /// The TLS handshake failed: cut off, reset, or refused.
    #[error("the TLS handshake with {route} failed: {detail}")]
    Handshake {
        /// The route, in its text form.
        route: String,
        /// What happened.
        detail: String,
    },
    /// The server's certificate is not the pinned one, or does not verify: someone may be
    /// intercepting the connection.
    #[error("the certificate of {route} is not the one expected (someone may be intercepting)")]
    Certificate {
        /// The route, in its text form.
        route: String,
    },
    /// The server did not open the tunnel: wrong path or key, or not a Pigeonpost relay.
    #[error(
        "{route} did not open the tunnel (it answered HTTP {status}); the link may be outdated"
    )]
    Refused {
        /// The route, in its text form.
        route: String,
        /// The HTTP status it answered.
        status: u16,
    },
    /// The server did not negotiate HTTP/2.
    #[error("{route} did not speak HTTP/2")]
    NotHttp2 {
        /// The route, in its text form.
        route: String,
    },
    /// Nothing came back in time: possibly the 16–20 KB freeze, or a censor dropping packets.
    #[error("{route} stopped answering after {received} bytes (the network may be cutting it off)")]
    Stalled {
        /// The route, in its text form.
        route: String,
        /// Bytes received on the connection before it stalled.
        received: u64,
    },
    /// No answer within the time allowed.
    #[error("{route} did not answer within {} ms", after.as_millis())]
    Timeout {
        /// The route, in its text form.
        route: String,
        /// How long was allowed.
        after: Duration,
    },
    /// HTTP/2 broken by the peer.
    #[error(transparent)]
    H2(#[from] H2Error),
    /// TLS records broken by the peer.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Reading or writing failed.
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    /// A server setting is unusable (certificate or key file, cover site).
    #[error("{0}")]
    Config(String),
    /// A proxy refused to carry the session on, or could not reach the relay.
    #[error("the proxy {proxy} did not carry the session on: {problem}")]
    Hop {
        /// The proxy's route, in its text form (without secrets).
        proxy: String,
        /// What it said.
        problem: String,
    },
}

impl TlsError {
    /// Who is at fault, for people and for retry policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Route { .. } | Self::Config(_) => ErrorKind::BadInput,
            Self::Connect(e) => e.kind(),
            Self::Setup { .. } => ErrorKind::Internal,
            // What censorship looks like: cut, reset, stalled, intercepted connections.
            Self::Handshake { .. }
            | Self::Certificate { .. }
            | Self::Stalled { .. }
            | Self::Timeout { .. }
            | Self::Io(_) => ErrorKind::LocalNetwork,
            Self::Refused { .. }
            | Self::NotHttp2 { .. }
            | Self::H2(_)
            | Self::Record(_)
            | Self::Hop { .. } => ErrorKind::Relay,
        }
    }
}
