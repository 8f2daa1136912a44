//! Errors of dialing and listening.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use pigeon_wire::ErrorKind;

/// A failure to open or accept a connection.
///
/// [`TransportError::kind`] says who is at fault: refused, reset, unreachable, unresolvable and
/// timed-out connections are [`ErrorKind::LocalNetwork`], which is what censorship looks like.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The route names a transport this build cannot dial.
    #[error("transport `{transport}` is not supported by this build")]
    Unsupported {
        /// The transport's name.
        transport: String,
    },
    /// A dialer was handed a route of another transport.
    #[error("route {route} is not a {expected} route")]
    WrongTransport {
        /// The route, in its text form.
        route: String,
        /// The transport the dialer speaks.
        expected: &'static str,
    },
    /// The host name could not be resolved.
    #[error("could not look up the addresses of `{host}`")]
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// The host name resolved to no address.
    #[error("`{host}` has no addresses")]
    NoAddresses {
        /// The host name.
        host: String,
    },
    /// Every address of the route refused or failed.
    #[error("could not connect to {route} ({})", FailureList(failures))]
    Connect {
        /// The route, in its text form.
        route: String,
        /// What happened at each address tried, in the order they were tried.
        failures: Vec<ConnectFailure>,
    },
    /// No connection was made in time.
    #[error("could not connect to {route} within {} ms", after.as_millis())]
    Timeout {
        /// The route, in its text form.
        route: String,
        /// How long was allowed.
        after: Duration,
    },
    /// A listening socket could not be opened.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A proxy refused to carry the session, could not reach the relay, or answered garbage.
    #[error("the proxy {proxy} did not carry the session: {problem}")]
    Hop {
        /// The proxy's route, redacted.
        proxy: String,
        /// What went wrong.
        problem: String,
    },
    /// A connection could not be accepted.
    #[error("could not accept a connection")]
    Accept {
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// What happened when connecting to one address of a route.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The address tried.
    pub addr: SocketAddr,
    /// What the system said.
    pub error: io::Error,
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.addr, self.error)
    }
}

struct FailureList<'a>(&'a [ConnectFailure]);

impl fmt::Display for FailureList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no address was tried");
        }
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            failure.fmt(f)?;
        }
        Ok(())
    }
}

impl TransportError {
    /// Who is at fault, for people and for retry policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The route cannot be used by this build, or the address given cannot be used here.
            Self::Unsupported { .. } | Self::WrongTransport { .. } | Self::Bind { .. } => {
                ErrorKind::BadInput
            }
            Self::Hop { .. } => ErrorKind::Relay,
            Self::Resolve { .. }
            | Self::NoAddresses { .. }
            | Self::Connect { .. }
            | Self::Timeout { .. } => ErrorKind::LocalNetwork,
            Self::Accept { source } => match source.kind() {
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
                    ErrorKind::LocalNetwork
                }
                // Out of file descriptors or memory: this process, not the network.
                _ => ErrorKind::Internal,
            },
        }
    }
}
