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
//! The parsers are sans-IO ([`parse_request`], [`parse_answer`]); [`serve`] and
//! [`crate::Dialer::dial_via`] move the bytes.

use std::io;
use std::time::Duration;

use pigeon_transport::{Connection, Route, ServerStream, Transport};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::Dialer;
use crate::error::TlsError;

/// First bytes of a hop request.
pub const MAGIC: &[u8; 10] = b"PIGEONHOP1";
/// Longest route text a request may carry.
pub const MAX_ROUTE: usize = 2048;
/// Longest sentence in an answer.
const MAX_SENTENCE: usize = 512;

/// Why a hop request or answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HopError {
    /// The first bytes are not a hop request.
    #[error("not a hop request (the first bytes are not PIGEONHOP1)")]
    NotARequest,
    /// The route is longer than [`MAX_ROUTE`].
    #[error("the route is {0} bytes, more than {MAX_ROUTE}")]
    TooLong(usize),
    /// The route text does not parse.
    #[error("the route is not usable: {0}")]
    BadRoute(String),
    /// The answer's status byte is unknown.
    #[error("the proxy answered with status {0}, which this version does not know")]
    BadStatus(u8),
    /// The answer's sentence is not UTF-8 or too long.
    #[error("the proxy's answer is malformed")]
    BadAnswer,
}

/// The proxy's answer to a hop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Connected to the relay: the session's bytes follow.
    Connected,
    /// Not a relay route this proxy serves.
    Refused(String),
    /// The relay could not be reached from the proxy.
    Unreachable(String),
}

/// The request naming `target`.
///
/// # Errors
/// [`HopError::TooLong`] for a route longer than [`MAX_ROUTE`].
pub fn encode_request(target: &Route) -> Result<Vec<u8>, HopError> {
    let text = target.to_string();
    let len = u16::try_from(text.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_ROUTE)
        .ok_or(HopError::TooLong(text.len()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + text.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// Reads a request from the start of `buf`: `Ok(None)` until it is whole, then the route and
/// the bytes it took.
///
/// # Errors
/// A [`HopError`] saying what is wrong.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Route, usize)>, HopError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(HopError::NotARequest);
    }
    let Some(len) = buf.get(MAGIC.len()..MAGIC.len() + 2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > MAX_ROUTE {
        return Err(HopError::TooLong(len));
    }
    let start = MAGIC.len() + 2;
    let Some(text) = buf.get(start..start + len) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(text).map_err(|_| HopError::BadRoute("not UTF-8".into()))?;
    let route: Route = text
        .parse()
        .map_err(|e: pigeon_transport::RouteError| HopError::BadRoute(e.to_string()))?;
    Ok(Some((route, start + len)))
}

/// The bytes of `answer`.
pub fn encode_answer(answer: &Answer) -> Vec<u8> {
    let (status, sentence) = match answer {
        Answer::Connected => return vec![0],
        Answer::Refused(s) => (1, s),
        Answer::Unreachable(s) => (2, s),
    };
    let mut end = sentence.len().min(MAX_SENTENCE);
    while !sentence.is_char_boundary(end) {
        end -= 1;
    }
    let sentence = &sentence.as_bytes()[..end];
    let mut out = vec![status];
    out.extend_from_slice(&u16::try_from(sentence.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(sentence);
    out
}

/// Reads an answer from the start of `buf`: `Ok(None)` until it is whole.
///
/// # Errors
/// A [`HopError`] for an unknown status or a malformed sentence.
pub fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, HopError> {
    let Some(&status) = buf.first() else {
        return Ok(None);
    };
    if status == 0 {
        return Ok(Some((Answer::Connected, 1)));
    }
    if status > 2 {
        return Err(HopError::BadStatus(status));
    }
    let Some(len) = buf.get(1..3) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > MAX_SENTENCE {
        return Err(HopError::BadAnswer);
    }
    let Some(text) = buf.get(3..3 + len) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(text)
        .map_err(|_| HopError::BadAnswer)?
        .to_owned();
    let answer = if status == 1 {
        Answer::Refused(text)
    } else {
        Answer::Unreachable(text)
    };
    Ok(Some((answer, 3 + len)))
}

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
/// `timeout`), dials the relay through `dialer` if `policy` allows it, answers, and carries
/// bytes both ways until either side ends.
///
/// # Errors
/// A [`TlsError`] when the client's request is broken or a side fails mid-way (a refusal or an
/// unreachable relay is answered to the client and is `Ok`).
pub async fn serve<S: ServerStream>(
    mut session: S,
    dialer: &Dialer,
    policy: &HopPolicy,
    timeout: Duration,
    meter: &dyn Meter,
) -> Result<Outcome, TlsError> {
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
    if let Err(why) = policy.check(&target) {
        session
            .write_all(&encode_answer(&Answer::Refused(why)))
            .await?;
        return Ok(Outcome::Refused);
    }
    let relay = match dialer.dial(&target, timeout).await {
        Ok(relay) => relay,
        Err(e) => {
            let why = format!("the relay did not answer the proxy: {e}");
            session
                .write_all(&encode_answer(&Answer::Unreachable(why)))
                .await?;
            return Ok(Outcome::Unreachable);
        }
    };
    session
        .write_all(&encode_answer(&Answer::Connected))
        .await?;
    meter.connected();
    carry(session, relay, early, meter)
        .await
        .map(Outcome::Carried)
}

/// Carries bytes between the client's session and the relay until either ends.
async fn carry<S: ServerStream>(
    mut session: S,
    relay: Box<dyn Connection>,
    early: Vec<u8>,
    meter: &dyn Meter,
) -> Result<Carried, TlsError> {
    let (mut from_relay, mut to_relay) = tokio::io::split(relay);
    let mut carried = Carried::default();
    if !early.is_empty() {
        to_relay.write_all(&early).await?;
        carried.up += early.len() as u64;
        meter.up(early.len() as u64);
    }
    let mut up = Vec::with_capacity(16 * 1024);
    let mut down = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            ready = std::future::poll_fn(|cx| session.poll_read_ready(cx)) => {
                ready?;
                up.clear();
                match session.try_read_buf(&mut up) {
                    Ok(0) => break,
                    Ok(n) => {
                        to_relay.write_all(&up).await?;
                        carried.up += n as u64;
                        meter.up(n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            n = from_relay.read(&mut down) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                session.write_all(&down[..n]).await?;
                carried.down += n as u64;
                meter.down(n as u64);
            }
        }
    }
    let _ = to_relay.shutdown().await;
    Ok(carried)
}

fn hop_error(e: HopError) -> TlsError {
    TlsError::Hop {
        proxy: "(incoming)".into(),
        problem: e.to_string(),
    }
}

impl Dialer {
    /// Opens a connection to the relay at `target` through the proxy at `proxy` (both `tls`
    /// routes): the tunnel to the proxy, the hop request, the proxy's answer. What comes back
    /// carries the relay session end to end.
    ///
    /// # Errors
    /// [`TlsError::Hop`] when the proxy refuses or cannot reach the relay; what
    /// [`Dialer::dial`] returns for the proxy itself.
    pub async fn dial_via(
        &self,
        proxy: &Route,
        target: &Route,
        timeout: Duration,
    ) -> Result<Box<dyn Connection>, TlsError> {
        let request = encode_request(target).map_err(|e| TlsError::Hop {
            proxy: proxy.redacted(),
            problem: e.to_string(),
        })?;
        let mut conn = self.dial(proxy, timeout).await?;
        conn.write_all(&request).await?;
        let mut buf = Vec::new();
        let answer = tokio::time::timeout(timeout, async {
            loop {
                if let Some((answer, _)) = parse_answer(&buf).map_err(|e| TlsError::Hop {
                    proxy: proxy.redacted(),
                    problem: e.to_string(),
                })? {
                    return Ok::<_, TlsError>(answer);
                }
                // Byte by byte: nothing after the answer may be taken from the session.
                let mut byte = [0u8; 1];
                conn.read_exact(&mut byte).await?;
                buf.push(byte[0]);
            }
        })
        .await
        .map_err(|_| TlsError::Timeout {
            route: proxy.redacted(),
            after: timeout,
        })??;
        match answer {
            Answer::Connected => Ok(conn),
            Answer::Refused(why) | Answer::Unreachable(why) => Err(TlsError::Hop {
                proxy: proxy.redacted(),
                problem: why,
            }),
        }
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
    fn requests_round_trip_and_garbage_is_refused() {
        let target = route(TLS);
        let bytes = encode_request(&target).expect("encode");
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"noise handshake");
        assert_eq!(parse_request(&more), Ok(Some((target, bytes.len()))));
        assert_eq!(parse_request(b"GET / HTTP/1.1"), Err(HopError::NotARequest));
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&5000u16.to_be_bytes());
        assert_eq!(parse_request(&long), Err(HopError::TooLong(5000)));
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&3u16.to_be_bytes());
        bad.extend_from_slice(b"abc");
        assert!(matches!(parse_request(&bad), Err(HopError::BadRoute(_))));
    }

    #[test]
    fn answers_round_trip() {
        for answer in [
            Answer::Connected,
            Answer::Refused("not a relay".into()),
            Answer::Unreachable("é".repeat(400)),
        ] {
            let bytes = encode_answer(&answer);
            for cut in 0..bytes.len() {
                assert_eq!(parse_answer(&bytes[..cut]), Ok(None));
            }
            let (got, used) = parse_answer(&bytes).expect("parse").expect("whole");
            assert_eq!(used, bytes.len());
            match (&answer, &got) {
                (Answer::Unreachable(a), Answer::Unreachable(b)) => {
                    assert!(a.starts_with(b.as_str()) && b.len() <= MAX_SENTENCE);
                }
                _ => assert_eq!(answer, got),
            }
        }
        assert_eq!(parse_answer(&[9]), Err(HopError::BadStatus(9)));
        assert_eq!(
            parse_answer(&[1, 0, 2, 0xff, 0xfe]),
            Err(HopError::BadAnswer)
        );
    }

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
