//! The hop protocol's wire: how a client names, inside a connection to a proxy, the relay the
//! proxy should carry it to (issue #15). Transport-neutral: it runs over whatever connection
//! the proxy's transport gives.
//!
//! ```text
//! request: "PIGEONHOP1" (10) | length (2, BE) | the relay's route, as text
//! answer:  status (1): 0 connected, 1 refused, 2 unreachable
//!          then, when not 0: length (2, BE) | a sentence (UTF-8)
//! ```
//!
//! After a 0, bytes flow both ways untouched: the client's Noise channel to the relay, which the
//! proxy cannot read. The parsers are sans-IO ([`parse_request`], [`parse_answer`]);
//! [`through`] is the client's side over an open connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::TransportError;
use crate::{Connection, Route};

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
        .map_err(|e: crate::RouteError| HopError::BadRoute(e.to_string()))?;
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

/// Asks the proxy at the other end of `conn` (reached by `proxy`) for the relay at `target`
/// and waits for its answer (within `timeout`). What comes back carries the relay session end
/// to end.
///
/// # Errors
/// [`TransportError::Hop`] when the proxy refuses, cannot reach the relay, or answers
/// garbage; [`TransportError::Timeout`] without an answer in time.
pub async fn through(
    mut conn: Box<dyn Connection>,
    proxy: &Route,
    target: &Route,
    timeout: Duration,
) -> Result<Box<dyn Connection>, TransportError> {
    let hop = |problem: String| TransportError::Hop {
        proxy: proxy.redacted(),
        problem,
    };
    let request = encode_request(target).map_err(|e| hop(e.to_string()))?;
    let answer = tokio::time::timeout(timeout, async {
        conn.write_all(&request)
            .await
            .map_err(|e| hop(format!("the connection to the proxy failed: {e}")))?;
        let mut buf = Vec::new();
        loop {
            if let Some((answer, _)) = parse_answer(&buf).map_err(|e| hop(e.to_string()))? {
                return Ok::<_, TransportError>(answer);
            }
            // Byte by byte: nothing after the answer may be taken from the session.
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte)
                .await
                .map_err(|e| hop(format!("the connection to the proxy failed: {e}")))?;
            buf.push(byte[0]);
        }
    })
    .await
    .map_err(|_| TransportError::Timeout {
        route: proxy.redacted(),
        after: timeout,
    })??;
    match answer {
        Answer::Connected => Ok(conn),
        Answer::Refused(why) | Answer::Unreachable(why) => Err(hop(why)),
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
}
