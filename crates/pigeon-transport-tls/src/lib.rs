//! The `tls` transport: to a censor, Chrome visiting a real website.
//!
//! * **Client** ([`Dialer`]): BoringSSL configured as Chrome ([`ChromeTls`]), HTTP/2 written as
//!   Chrome writes it, and the tunnel inside a streaming `POST` to the route's secret path with
//!   a fresh single-use token. Legs (TLS connections) follow one another before any carries
//!   more than the route's download cap, so the 16–20 KB freeze never bites; the cap is
//!   configured per route or learned from a connection that froze.
//! * **Server** ([`Front`]): a real HTTPS site. Anyone without a valid token — browsers,
//!   scanners, probers replaying a recorded request — gets the cover site ([`Cover`]), which
//!   sees the connection from its first byte. Tunnel legs join their session
//!   ([`ServerSession`]), which the relay serves like any connection. [`Backend`] is the same
//!   behind a reverse proxy or CDN that terminates TLS itself.
//!
//! The sans-IO parts — HTTP/2 framing and flow control, TLS 1.3 record protection, tokens,
//! reading a first request — take bytes and return bytes, with no clock and no sockets.

pub mod certs;
mod chrome;
mod client;
mod cover;
mod ech;
mod error;
mod front;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod h2;
pub mod hop;
mod keylog;
mod opening;
mod record;
mod session;
mod sniff;
pub mod token;

pub use chrome::ChromeTls;
pub use client::Dialer;
pub use cover::Cover;
pub use ech::EchConfig;
pub use error::TlsError;
pub use front::{
    Backend, EchSetup, Front, FrontConfig, server_tls_config, server_tls_config_with_resolver,
};
pub use h2::H2Error;
pub use record::RecordError;
pub use session::ServerSession;
pub use token::TokenKey;
