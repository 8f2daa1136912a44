//! Hops: a volunteer proxy or a domestic hop carries a client's relay session onward, still
//! encrypted end to end (issue #15).
//!
//! The client opens a `tls` tunnel to the proxy exactly as it would to a relay (Chrome's hello,
//! the proxy's own cover site and secret path), and its first bytes in the tunnel name the
//! relay to reach:
//!
//! ```text
//! "PIGEONHOP1" (10) | length (2, BE) | the relay's route, as text (a tls:// route)
//! ```
//!
//! The proxy answers one status byte — 0 connected, 1 refused (not a relay route this proxy
//! serves), 2 unreachable — followed, when not 0, by a length (2, BE) and a sentence, and then
//! closes. After a 0, bytes flow both ways untouched: the client's Noise channel to the relay,
//! which the proxy cannot read. The proxy reaches the relay over the `tls` transport itself
//! (Chrome's hello, legs under the freeze), so a hop inside a country crosses the border the
//! way a client would. It only ever dials `tls` routes: it speaks the tunnel protocol onward,
//! never raw TCP, so it is no open proxy; `--only` narrows it to given relays.
//!
//! The wire (request, answer, their sans-IO parsers, and the client's side) is
//! transport-neutral and lives in [`pigeon_transport::hop`]; this module is the proxy's side,
//! [`serve`], which dials onward through the registered transports.

use std::io;
use std::time::Duration;

pub use pigeon_transport::hop::{
    Answer, HopError, MAGIC, MAX_ROUTE, encode_answer, encode_request, parse_answer, parse_request,
};
use pigeon_transport::{Connection, Route, ServerStream, Transport, Transports};
use std::future::Future as _;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::TlsError;

/// Which relays a proxy carries clients to.
#[derive(Clone, Debug, Default)]
pub struct HopPolicy {
    /// When set, only these relays' routes (host and port): `--only`.
    pub only: Option<Vec<(pigeon_transport::Host, u16)>>,
}

impl HopPolicy {
    /// Whether `target` may be dialed; the sentence says why not.
    ///
    /// # Errors
    /// The refusal's sentence.
    pub fn check(&self, target: &Route) -> Result<(), String> {
        if *target.transport() != Transport::Tls {
            return Err(format!(
                "this proxy carries sessions to relays over tls only, not {}",
                target.transport()
            ));
        }
        match target.tls_params() {
            Some(Ok(_)) => {}
            _ => return Err("the route is not a usable tls route".into()),
        }
        if let Some(only) = &self.only
            && !only
                .iter()
                .any(|(host, port)| host == target.host() && *port == target.port())
        {
            return Err("this proxy serves only the relays it was given".into());
        }
        Ok(())
    }
}

/// Counts bytes as a proxy carries them (for its metrics), as they go.
pub trait Meter: Send + Sync {
    /// A session was connected to its relay.
    fn connected(&self);
    /// `n` bytes went from a client to its relay.
    fn up(&self, n: u64);
    /// `n` bytes went from a relay to its client.
    fn down(&self, n: u64);
}

/// Counts nothing.
impl Meter for () {
    fn connected(&self) {}
    fn up(&self, _: u64) {}
    fn down(&self, _: u64) {}
}

/// How a client session at a proxy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Carried to the relay and back until one side ended.
    Carried(Carried),
    /// The route was not one this proxy serves.
    Refused,
    /// The relay did not answer the proxy.
    Unreachable,
}

/// How much one carried session moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Bytes from the client to the relay.
    pub up: u64,
    /// Bytes from the relay to the client.
    pub down: u64,
}

/// Serves one client session that arrived at a proxy's front: reads its request (within
/// `timeout`), dials the relay through `transports` if `policy` allows it, answers, and
/// carries bytes both ways until either side ends.
///
/// # Errors
/// A [`TlsError`] when the client's request is broken or a side fails mid-way (a refusal or an
/// unreachable relay is answered to the client and is `Ok`).
pub async fn serve<S: ServerStream>(
    session: S,
    transports: &Transports,
    policy: &HopPolicy,
    timeout: Duration,
    meter: &dyn Meter,
) -> Result<Outcome, TlsError> {
    match setup(session, transports, policy, timeout, meter).await? {
        Setup::Carry(carried) => carried.carry(meter).await.map(Outcome::Carried),
        Setup::Done(outcome) => Ok(outcome),
    }
}

/// How a session's setup ended: to be carried, or answered and done.
pub enum Setup<S> {
    /// Connected to its relay: carry it ([`ToCarry::carry`]).
    Carry(ToCarry<S>),
    /// Answered (refused, or the relay was unreachable) and done.
    Done(Outcome),
}

/// A session connected to its relay, ready to be carried. A proxy carries it in a task of
/// its own once the setup's task is done: what it holds while idle is then only the carrying's
/// state, not room for the setup's (the request's buffer and timer, the dial).
pub struct ToCarry<S> {
    session: S,
    relay: Box<dyn Connection>,
    /// Bytes that came after the request, for the relay.
    early: Vec<u8>,
}

impl<S: ServerStream> ToCarry<S> {
    /// Carries bytes between the client's session and the relay until either ends.
    ///
    /// # Errors
    /// A [`TlsError`] when a side fails mid-way.
    pub async fn carry(self, meter: &dyn Meter) -> Result<Carried, TlsError> {
        carry(self.session, self.relay, self.early, meter).await
    }
}

/// The first part of [`serve`]: reads a session's request (within `timeout`), dials the relay
/// through `transports` if `policy` allows it, and answers.
///
/// # Errors
/// A [`TlsError`] when the client's request is broken or the session fails (a refusal or an
/// unreachable relay is answered to the client and is `Ok`).
pub async fn setup<S: ServerStream>(
    mut session: S,
    transports: &Transports,
    policy: &HopPolicy,
    timeout: Duration,
    meter: &dyn Meter,
) -> Result<Setup<S>, TlsError> {
    let mut buf = Vec::with_capacity(512);
    let read_request = async {
        loop {
            if let Some(parsed) = parse_request(&buf).map_err(hop_error)? {
                return Ok::<_, TlsError>(parsed);
            }
            std::future::poll_fn(|cx| session.poll_read_ready(cx)).await?;
            match session.try_read_buf(&mut buf) {
                Ok(0) => return Err(TlsError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    };
    let (target, used) = tokio::time::timeout(timeout, read_request)
        .await
        .map_err(|_| TlsError::Io(io::ErrorKind::TimedOut.into()))??;
    let early = buf.split_off(used);
    // What is carried for a long time holds nothing it no longer needs.
    drop(buf);
    if let Err(why) = policy.check(&target) {
        session
            .write_all(&encode_answer(&Answer::Refused(why)))
            .await?;
        return Ok(Setup::Done(Outcome::Refused));
    }
    let relay = match transports.dial(&target, timeout).await {
        Ok(relay) => relay,
        Err(e) => {
            let why = format!("the relay did not answer the proxy: {e}");
            session
                .write_all(&encode_answer(&Answer::Unreachable(why)))
                .await?;
            return Ok(Setup::Done(Outcome::Unreachable));
        }
    };
    drop(target);
    session
        .write_all(&encode_answer(&Answer::Connected))
        .await?;
    meter.connected();
    Ok(Setup::Carry(ToCarry {
        session,
        relay,
        early,
    }))
}

/// A carried session's buffers while it idles (most sessions a proxy holds do)…
const IDLE_BUFFER: usize = 1024;
/// …except the one the relay's bytes are read into, which is there all the time (the
/// connection to the relay gives no sign of readiness): small, as the answers to an idle
/// session are (pings, a push), and grown on the first read that fills it…
const DOWN_IDLE_BUFFER: usize = 256;
/// …and while data flows.
const BUSY_BUFFER: usize = 16 * 1024;
/// A session quiet this long gives its large buffers back.
const SHRINK_AFTER: Duration = Duration::from_secs(5);

/// Carries bytes between the client's session and the relay until either ends. Its two
/// buffers start small, grow when a read fills one, and shrink again after a quiet spell; the
/// client's side is read only once it is ready, into a buffer given back while not busy, so an
/// idle session holds 256 bytes of them instead of 32 KiB.
async fn carry<S: ServerStream>(
    mut session: S,
    mut relay: Box<dyn Connection>,
    early: Vec<u8>,
    meter: &dyn Meter,
) -> Result<Carried, TlsError> {
    let mut carried = Carried::default();
    if !early.is_empty() {
        relay.write_all(&early).await?;
        carried.up += early.len() as u64;
        meter.up(early.len() as u64);
    }
    drop(early);
    let mut last = tokio::time::Instant::now();
    let mut up: Vec<u8> = Vec::new();
    let mut down = vec![0u8; DOWN_IDLE_BUFFER];
    // Set while data flows: when the large buffers go back (no timer runs while idle).
    let mut shrink: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let want = if shrink.is_some() {
            BUSY_BUFFER
        } else {
            IDLE_BUFFER
        };
        tokio::select! {
            ready = std::future::poll_fn(|cx| session.poll_read_ready(cx)) => {
                ready?;
                up.clear();
                up.reserve(want);
                match session.try_read_buf(&mut up) {
                    Ok(0) => break,
                    Ok(n) => {
                        relay.write_all(&up).await?;
                        carried.up += n as u64;
                        meter.up(n as u64);
                        if n >= IDLE_BUFFER && shrink.is_none() {
                            shrink = Some(Box::pin(tokio::time::sleep(SHRINK_AFTER)));
                        }
                        if shrink.is_none() {
                            up = Vec::new();
                        }
                        last = tokio::time::Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            n = relay.read(&mut down) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                // Boxed: the session's write is a large future, and the carrying future
                // would otherwise keep room for it while idle.
                Box::pin(session.write_all(&down[..n])).await?;
                carried.down += n as u64;
                meter.down(n as u64);
                if n == down.len() && down.len() < BUSY_BUFFER {
                    down.resize(BUSY_BUFFER, 0);
                    if shrink.is_none() {
                        shrink = Some(Box::pin(tokio::time::sleep(SHRINK_AFTER)));
                    }
                }
                last = tokio::time::Instant::now();
            }
            () = std::future::poll_fn(|cx| match shrink.as_mut() {
                Some(timer) => timer.as_mut().poll(cx),
                None => Poll::Pending,
            }) => {
                let quiet_until = last + SHRINK_AFTER;
                if tokio::time::Instant::now() < quiet_until {
                    if let Some(timer) = shrink.as_mut() {
                        timer.as_mut().reset(quiet_until);
                    }
                } else {
                    shrink = None;
                    up = Vec::new();
                    down = vec![0u8; DOWN_IDLE_BUFFER];
                }
            }
        }
    }
    let _ = relay.shutdown().await;
    Ok(carried)
}

fn hop_error(e: HopError) -> TlsError {
    TlsError::Hop {
        proxy: "(incoming)".into(),
        problem: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        text.parse().expect("route")
    }

    const TLS: &str =
        "tls://relay.example.org:443?key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8&path=%2Fx";

    #[test]
    fn only_tls_relays_and_only_the_listed_ones() {
        let open = HopPolicy::default();
        assert!(open.check(&route(TLS)).is_ok());
        assert!(open.check(&route("tcp://127.0.0.1:22")).is_err());
        let host = pigeon_transport::Host::parse("relay.example.org").expect("host");
        let only = HopPolicy {
            only: Some(vec![(host, 443)]),
        };
        assert!(only.check(&route(TLS)).is_ok());
        let other = TLS.replace("relay.example.org", "other.example.org");
        assert!(only.check(&route(&other)).is_err());
    }
}
