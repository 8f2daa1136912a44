//! Reading the first request of an HTTP/2 connection without answering it.
//!
//! The server must decide whether a connection is a tunnel leg before it says anything, because
//! if it is not, the cover site answers, and the cover must see the connection from its first
//! byte. So the server only reads: the connection preface, the client's SETTINGS and
//! WINDOW_UPDATE, and the first request's header block, which it decodes (HPACK) to learn the
//! method and path. Everything read is kept, to be replayed to the cover or to the leg.

use crate::h2::{self, flag, kind};

/// Most bytes read before deciding: a browser's first request fits in a few hundred.
pub(crate) const MAX_SNIFF: usize = 32 * 1024;

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// Not enough yet.
    More,
    /// Not a request that could be a tunnel leg (not HTTP/2, malformed, too long, or the first
    /// request is not on stream 1).
    Other,
    /// The first request on stream 1.
    Request {
        /// `:method`.
        method: String,
        /// `:path`.
        path: String,
        /// Whether the request ended with its headers (no body follows).
        end_stream: bool,
    },
}

/// Looks at the plaintext of a connection so far.
pub(crate) fn sniff(plain: &[u8]) -> Sniffed {
    let Some(after) = plain.get(h2::PREFACE.len()..) else {
        return if h2::PREFACE.starts_with(plain) {
            Sniffed::More
        } else {
            Sniffed::Other
        };
    };
    if !plain.starts_with(h2::PREFACE) {
        return Sniffed::Other;
    }
    let mut rest = after;
    let mut block: Option<(Vec<u8>, bool)> = None;
    loop {
        let (header, payload, used) = match h2::parse_frame(rest, h2::MAX_FRAME) {
            Ok(Some(frame)) => frame,
            Ok(None) if plain.len() < MAX_SNIFF => return Sniffed::More,
            Ok(None) | Err(_) => return Sniffed::Other,
        };
        rest = &rest[used..];
        match (header.kind, &mut block) {
            (kind::HEADERS, None) => {
                if header.stream != h2::STREAM {
                    return Sniffed::Other;
                }
                let Some(fragment) = headers_fragment(header.flags, payload) else {
                    return Sniffed::Other;
                };
                let end_stream = header.flags & flag::END_STREAM != 0;
                if header.flags & flag::END_HEADERS != 0 {
                    return decode(fragment, end_stream);
                }
                block = Some((fragment.to_vec(), end_stream));
            }
            (kind::CONTINUATION, Some((bytes, end_stream))) => {
                if header.stream != h2::STREAM || bytes.len() + payload.len() > h2::MAX_HEADER_BLOCK
                {
                    return Sniffed::Other;
                }
                bytes.extend_from_slice(payload);
                if header.flags & flag::END_HEADERS != 0 {
                    return decode(bytes, *end_stream);
                }
            }
            (_, Some(_)) => return Sniffed::Other,
            (kind::SETTINGS | kind::WINDOW_UPDATE | kind::PRIORITY | kind::PING, None) => {}
            // Anything else before the first request: not what a browser or our client sends.
            (kind::DATA | kind::RST_STREAM | kind::PUSH_PROMISE | kind::GOAWAY, None) => {
                return Sniffed::Other;
            }
            (kind::CONTINUATION, None) => return Sniffed::Other,
            // Extension frames (PRIORITY_UPDATE and others) are allowed and skipped.
            _ => {}
        }
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & flag::PADDED != 0 {
        let (&p, tail) = rest.split_first()?;
        pad = usize::from(p);
        rest = tail;
    }
    if flags & flag::PRIORITY != 0 {
        rest = rest.get(5..)?;
    }
    rest.get(..rest.len().checked_sub(pad)?)
}

fn decode(block: &[u8], end_stream: bool) -> Sniffed {
    let mut decoder = h2::decoder();
    let Ok(headers) = h2::decode_headers(&mut decoder, block) else {
        return Sniffed::Other;
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    match (find(":method"), find(":path")) {
        (Some(method), Some(path)) => Sniffed::Request {
            method,
            path,
            end_stream,
        },
        _ => Sniffed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::{Priority, write_frame, write_headers, write_settings, write_window_update};

    fn request(path: &str, end_stream: bool, split: bool) -> Vec<u8> {
        let block = |ua_len: usize| {
            h2::encode_headers(
                &mut loona_hpack::Encoder::new(),
                &[
                    (":method", "POST"),
                    (":authority", "cover.test"),
                    (":scheme", "https"),
                    (":path", path),
                    ("user-agent", &"x".repeat(ua_len)),
                ],
            )
        };
        // Split: a block of exactly the largest size accepted, which needs a CONTINUATION.
        let block = if split {
            (16_000..)
                .map(block)
                .find(|b| b.len() == h2::MAX_HEADER_BLOCK)
                .expect("some length fits")
        } else {
            block(10)
        };
        let mut out = h2::PREFACE.to_vec();
        write_settings(&mut out, &[(1, 65_536), (2, 0)]);
        write_window_update(&mut out, 0, 15_663_105);
        write_frame(&mut out, 0x10, 0, 0, b"extension frame");
        write_headers(
            &mut out,
            1,
            &block,
            Some(Priority {
                exclusive: true,
                depends_on: 0,
                weight: 220,
            }),
            end_stream,
        );
        out
    }

    #[test]
    fn finds_the_first_request_whole_or_split() {
        let bytes = request("/secret/tok", false, false);
        assert_eq!(
            sniff(&bytes),
            Sniffed::Request {
                method: "POST".into(),
                path: "/secret/tok".into(),
                end_stream: false,
            }
        );
        for cut in [0, 5, 24, 30, bytes.len() - 1] {
            assert_eq!(sniff(&bytes[..cut]), Sniffed::More, "cut at {cut}");
        }
        let split = request("/p", true, true);
        assert!(matches!(
            sniff(&split),
            Sniffed::Request {
                end_stream: true,
                ..
            }
        ));
    }

    #[test]
    fn other_protocols_and_odd_openings_are_other() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Other);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Sniffed::Other);
        let mut data_first = h2::PREFACE.to_vec();
        write_frame(&mut data_first, kind::DATA, 0, 1, b"x");
        assert_eq!(sniff(&data_first), Sniffed::Other);
        let mut garbage = h2::PREFACE.to_vec();
        garbage.extend_from_slice(&[0u8; 9]);
        garbage[24 + 3] = kind::HEADERS;
        garbage[24 + 4] = flag::END_HEADERS;
        garbage[24 + 8] = 1;
        assert_eq!(sniff(&garbage), Sniffed::Other);
        let mut stream3 = h2::PREFACE.to_vec();
        write_headers(&mut stream3, 3, &[0x82], None, true);
        assert_eq!(sniff(&stream3), Sniffed::Other);
        // Endless SETTINGS: gives up at the limit.
        let mut endless = h2::PREFACE.to_vec();
        while endless.len() < MAX_SNIFF + 100 {
            write_settings(&mut endless, &[(1, 1)]);
        }
        endless.extend_from_slice(&[0, 0]);
        assert_eq!(sniff(&endless), Sniffed::Other);
    }
}
