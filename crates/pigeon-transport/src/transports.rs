//! Pluggable transports: what a transport crate implements ([`Dial`] for clients, [`Accept`]
//! for servers), and the registry a program dials through ([`Transports`]).
//!
//! A transport is one crate (`tcp` lives here; `tls` in `pigeon-transport-tls`). A program
//! registers the transports it was built with, one line each:
//!
//! ```no_run
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let transports = pigeon_transport::Transports::new().with(pigeon_transport::tcp::TcpDial);
//! # Ok(()) }
//! ```
//!
//! and everything that dials — the client's route search, a proxy's onward leg — picks the
//! dialer by the route's transport name. A relay serves any [`Accept`]; each acceptor's
//! connections run in tasks of their own stream type, so no connection pays for boxing.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pigeon_wire::ErrorKind;

use crate::error::TransportError;
use crate::{Connection, Route, ServerStream, Transport};

/// A boxed future, for object-safe dialing.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a dial failed: the transport's own error, with who is at fault.
pub struct DialError {
    kind: ErrorKind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl DialError {
    /// Wraps a transport's error.
    pub fn new(kind: ErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            kind,
            source: Box::new(source),
        }
    }

    /// Who is at fault ([`ErrorKind::LocalNetwork`] is what censorship looks like).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The transport's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl From<TransportError> for DialError {
    fn from(e: TransportError) -> Self {
        Self::new(e.kind(), e)
    }
}

// Transparent: it reads as the transport's error, whose own causes follow it.
impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::fmt::Debug for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

/// A transport's client side.
pub trait Dial: Send + Sync {
    /// The transport's name in routes (`tcp`, `tls`).
    fn name(&self) -> &'static str;

    /// Opens a connection over `route` (a route of this transport), within `timeout`.
    fn dial<'a>(
        &'a self,
        route: &'a Route,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Box<dyn Connection>, DialError>>;

    /// Per-route download caps this dialer learned, to keep across runs (route text → bytes).
    fn learned(&self) -> BTreeMap<String, u32> {
        BTreeMap::new()
    }

    /// Takes a download cap learned in an earlier run for `route` (its text).
    fn learn(&self, route: &str, cap: u32) {
        let _ = (route, cap);
    }
}

/// The transports a program dials, by name. Cheap to clone (the dialers are shared).
#[derive(Clone, Default)]
pub struct Transports {
    dialers: Vec<Arc<dyn Dial>>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.dialers.iter().map(|d| d.name()))
            .finish()
    }
}

impl Transports {
    /// No transports.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dialer` (replacing one registered before under its name).
    #[must_use]
    pub fn with(mut self, dialer: impl Dial + 'static) -> Self {
        self.dialers.retain(|d| d.name() != dialer.name());
        self.dialers.push(Arc::new(dialer));
        self
    }

    /// The dialer of `transport`, if registered.
    pub fn get(&self, transport: &Transport) -> Option<&dyn Dial> {
        self.dialers
            .iter()
            .find(|d| d.name() == transport.name())
            .map(|d| &**d)
    }

    /// Whether `transport` can be dialed.
    pub fn supports(&self, transport: &Transport) -> bool {
        self.get(transport).is_some()
    }

    /// The registered transports' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.dialers.iter().map(|d| d.name()).collect()
    }

    /// Opens a connection over `route`, within `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Unsupported`] (kind `BadInput`) for a transport not registered, and
    /// otherwise what its dialer reports.
    pub async fn dial(
        &self,
        route: &Route,
        timeout: Duration,
    ) -> Result<Box<dyn Connection>, DialError> {
        let dialer = self.get(route.transport()).ok_or_else(|| {
            DialError::from(TransportError::Unsupported {
                transport: route.transport().name().to_owned(),
            })
        })?;
        dialer.dial(route, timeout).await
    }

    /// Opens a connection to the relay at `target` through the proxy at `proxy` (a route of
    /// any registered transport): the connection to the proxy, then the hop request and its
    /// answer ([`crate::hop`]).
    ///
    /// # Errors
    /// What dialing the proxy reports, or [`TransportError::Hop`] when the proxy refuses or
    /// cannot reach the relay.
    pub async fn dial_via(
        &self,
        proxy: &Route,
        target: &Route,
        timeout: Duration,
    ) -> Result<Box<dyn Connection>, DialError> {
        let conn = self.dial(proxy, timeout).await?;
        Ok(crate::hop::through(conn, proxy, target, timeout).await?)
    }

    /// Download caps every dialer learned (route text → bytes).
    pub fn learned(&self) -> BTreeMap<String, u32> {
        self.dialers.iter().flat_map(|d| d.learned()).collect()
    }

    /// Hands a cap learned in an earlier run to the dialer of `route`'s transport (`route`
    /// is the route's text, which starts with its transport's name).
    pub fn learn(&self, route: &str, cap: u32) {
        let name = route.split("://").next().unwrap_or_default();
        if let Some(d) = self.dialers.iter().find(|d| d.name() == name) {
            d.learn(route, cap);
        }
    }
}

/// Where an accepted connection came from, for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A network address the server still has to admit (counted per source, never logged).
    Address(IpAddr),
    /// The transport admitted it itself (a tls front counts per source before its
    /// handshake); the key its per-source counts use, if any.
    Admitted(Option<u128>),
}

/// One accepted connection.
#[derive(Debug)]
pub struct Accepted<T> {
    /// The byte stream.
    pub stream: T,
    /// Where it came from.
    pub source: Source,
}

/// A transport's server side: a source of connections.
pub trait Accept: Send + 'static {
    /// The streams it yields.
    type Stream: ServerStream;

    /// The next connection; `None` once it will accept no more; an error when it failed for
    /// good (passing failures, like running out of file descriptors, it waits out itself).
    fn accept(
        &mut self,
    ) -> impl Future<Output = Option<Result<Accepted<Self::Stream>, TransportError>>> + Send;
}
