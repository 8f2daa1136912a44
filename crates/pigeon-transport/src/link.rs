//! The text envelope shared by every Pigeonpost link: `pigeon://<kind>#<base64url>`.
//!
//! A link is one line of ASCII a person can paste, scan from a QR code or send through any
//! messenger. The data sits in the URI fragment (after `#`), which browsers and web servers never
//! send or log. The envelope knows nothing about what the data means: [`crate::RelayLink`] puts
//! a protobuf in it, and invitations and proxy links do the same with their own payloads.
//!
//! Parsing is strict, and every refusal says what is wrong in words a person can act on: a link
//! that was cut off, wrapped over two lines, or pasted where another kind was expected. Only ASCII
//! whitespace around the link is forgiven.
//!
//! The data ends with a 4-byte check (the first bytes of BLAKE2s over the kind and payload),
//! so a mistyped or altered link is refused as such instead of decoding to other valid values:
//! one changed character in an invitation could otherwise name another mailbox and burn the
//! invitation's one-time key package.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::route::RouteError;

/// The scheme every link starts with.
pub const SCHEME: &str = "pigeon://";

/// Longest link accepted or produced, in bytes (after trimming surrounding whitespace).
///
/// Large enough for a relay with many routes or an invitation with a key package reference,
/// small enough to fit one QR code (version 40 holds 2,953 bytes in binary mode at level L; the
/// links we make are far smaller) and to stop anyone feeding a parser megabytes.
pub const MAX_LINK_LEN: usize = 4096;

/// What a link is for. The kind is the host part of the URI: `pigeon://relay#…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkKind {
    /// How to reach a relay: [`crate::RelayLink`].
    Relay,
    /// An invitation to talk: a mailbox, a sender capability and the relay to reach it.
    Invite,
    /// How to reach a volunteer proxy.
    Proxy,
    /// A one-time link that makes a new device another device of the same person.
    Device,
}

impl LinkKind {
    /// Every kind, in a fixed order.
    pub const ALL: [LinkKind; 4] = [
        LinkKind::Relay,
        LinkKind::Invite,
        LinkKind::Proxy,
        LinkKind::Device,
    ];

    /// The kind as written in a link.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Invite => "invite",
            Self::Proxy => "proxy",
            Self::Device => "device",
        }
    }

    /// The kind written `name` in a link (ASCII case is ignored, as for URI hosts).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(name))
    }

    /// A noun for people, with its article: "a relay link".
    fn noun(self) -> &'static str {
        match self {
            Self::Relay => "a relay link",
            Self::Invite => "an invitation link",
            Self::Proxy => "a proxy link",
            Self::Device => "a device link",
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a link was refused. Each message says what is wrong in plain words.
///
/// Messages may quote a few characters of the link's *prefix* or a single offending character,
/// never the data itself (an invitation's data is a capability).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing but whitespace was given.
    #[error("the link is empty")]
    Empty,
    /// The link is longer than [`MAX_LINK_LEN`].
    #[error("the link is {len} bytes long; links are at most {max} bytes, so this is not one")]
    TooLong {
        /// Length after trimming whitespace.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text does not start with `pigeon://`.
    #[error(
        "this is not a Pigeonpost link: it must start with `pigeon://`, but starts with `{found}`"
    )]
    WrongScheme {
        /// The first few characters, escaped.
        found: String,
    },
    /// The part after `pigeon://` is not a kind this version knows.
    #[error(
        "`pigeon://{found}` is not a kind of link this version knows (expected relay, invite or proxy)"
    )]
    UnknownKind {
        /// The kind as written, escaped and shortened.
        found: String,
    },
    /// A link of another kind was given.
    #[error("this is {} (pigeon://{found}#…), but {} (pigeon://{expected}#…) is needed here", found.noun(), expected.noun())]
    WrongKind {
        /// The kind that was needed.
        expected: LinkKind,
        /// The kind that was given.
        found: LinkKind,
    },
    /// There is no `#` after the kind.
    #[error("the link has no `#` after `pigeon://{kind}`; it may have been cut off")]
    MissingData {
        /// The kind of link.
        kind: LinkKind,
    },
    /// Something stands between the kind and the `#`.
    #[error("unexpected `{found}` after `pigeon://{kind}`; the data must follow `#` directly")]
    JunkAfterKind {
        /// The kind of link.
        kind: LinkKind,
        /// What stands there, escaped and shortened.
        found: String,
    },
    /// Nothing follows the `#`.
    #[error("the link has no data after `#`; it may have been cut off")]
    EmptyData,
    /// A character outside base64url was found in the data.
    #[error(
        "{what} at character {position} of the link; link data uses only A-Z, a-z, 0-9, `-` and `_`{hint}"
    )]
    BadCharacter {
        /// A description of the character, e.g. "a space" or "`+`".
        what: String,
        /// 1-based position of the character in the (trimmed) link, counted in characters.
        position: usize,
        /// Extra advice for common mistakes, starting with "; ".
        hint: &'static str,
    },
    /// The data has a length no base64url encoding can have.
    #[error("the link data has an impossible length; the link was probably cut off or altered")]
    BadLength,
    /// The last data character carries bits that a correct encoder never sets.
    #[error("the last character of the link is wrong; the link was probably cut off or altered")]
    BadLastCharacter,
    /// The check at the end of the data does not match: a typo, or the link was altered.
    #[error("the link was mistyped or altered (its check does not match); copy it again")]
    Checksum,
    /// The decoded data is not a valid payload.
    #[error("the {kind} link's data is damaged: {reason}")]
    BadPayload {
        /// The kind of link.
        kind: LinkKind,
        /// What did not decode.
        reason: String,
    },
    /// The payload carries no version number.
    #[error("the {kind} link's data has no version number; it is damaged or not a Pigeonpost link")]
    MissingVersion {
        /// The kind of link.
        kind: LinkKind,
    },
    /// The payload's major version is newer (or older) than this build reads.
    #[error(
        "this {kind} link uses format version {found}, but this version of Pigeonpost reads only version {supported}; update Pigeonpost"
    )]
    UnsupportedVersion {
        /// The kind of link.
        kind: LinkKind,
        /// Version in the link.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The relay's public key has the wrong length.
    #[error("the relay key must be {expected} bytes, but the link has {found}")]
    KeyLength {
        /// Length found.
        found: usize,
        /// Length needed.
        expected: usize,
    },
    /// The relay's public key is all zeros, which no real key is.
    #[error("the relay key is all zeros, which is not a valid key")]
    ZeroKey,
    /// No route to the relay.
    #[error("the link lists no way to reach the relay (it has no routes)")]
    NoRoutes,
    /// More routes than any real relay needs.
    #[error("the link lists {found} routes; at most {max} are allowed")]
    TooManyRoutes {
        /// Routes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// One route is malformed.
    #[error("route {number} of the link: {problem}")]
    Route {
        /// 1-based number of the route in the link.
        number: usize,
        /// What is wrong with it.
        problem: RouteError,
    },
    /// The label is unusable.
    #[error("the link's label {problem}")]
    Label {
        /// What is wrong with it, as a phrase after "the label".
        problem: String,
    },
}

impl LinkError {
    /// Who is at fault: always [`pigeon_wire::ErrorKind::BadInput`], since a link is input.
    pub fn kind(&self) -> pigeon_wire::ErrorKind {
        pigeon_wire::ErrorKind::BadInput
    }
}

/// Encodes `payload` as a link of `kind`.
///
/// # Errors
/// [`LinkError::TooLong`] if the link would be longer than [`MAX_LINK_LEN`].
pub fn encode_link(kind: LinkKind, payload: &[u8]) -> Result<String, LinkError> {
    let len = encoded_link_len(kind, payload.len());
    if len > MAX_LINK_LEN {
        return Err(LinkError::TooLong {
            len,
            max: MAX_LINK_LEN,
        });
    }
    Ok(encode_link_unchecked(kind, payload))
}

/// Length in bytes of the link [`encode_link`] makes for a payload of `payload_len` bytes.
pub fn encoded_link_len(kind: LinkKind, payload_len: usize) -> usize {
    // Unpadded base64 of payload and check: 4 characters per 3 bytes, rounded up.
    let bytes = payload_len + CHECK_LEN;
    let data = bytes / 3 * 4 + [0, 2, 3][bytes % 3];
    SCHEME.len() + kind.as_str().len() + 1 + data
}

/// Encodes without the length check, for callers that checked already.
pub(crate) fn encode_link_unchecked(kind: LinkKind, payload: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_link_len(kind, payload.len()));
    out.push_str(SCHEME);
    out.push_str(kind.as_str());
    out.push('#');
    let mut data = Vec::with_capacity(payload.len() + CHECK_LEN);
    data.extend_from_slice(payload);
    data.extend_from_slice(&check(kind, payload));
    URL_SAFE_NO_PAD.encode_string(&data, &mut out);
    out
}

/// Bytes of check at the end of a link's data.
const CHECK_LEN: usize = 4;

fn check(kind: LinkKind, payload: &[u8]) -> [u8; CHECK_LEN] {
    use blake2::Digest as _;
    let mut h = blake2::Blake2s256::new();
    h.update(b"pigeon link check v1\0");
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(payload);
    let digest = h.finalize();
    let mut out = [0; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

/// Decodes a link that must be of kind `expected`, returning its payload bytes.
///
/// Surrounding ASCII whitespace is trimmed; nothing else is forgiven.
///
/// # Errors
/// A [`LinkError`] saying what is wrong, including [`LinkError::WrongKind`] when a link of
/// another kind was given.
pub fn decode_link(expected: LinkKind, text: &str) -> Result<Vec<u8>, LinkError> {
    let (found, payload) = decode_any_link(text)?;
    if found != expected {
        return Err(LinkError::WrongKind { expected, found });
    }
    Ok(payload)
}

/// Decodes a link of any kind, returning the kind and its payload bytes.
///
/// # Errors
/// A [`LinkError`] saying what is wrong.
pub fn decode_any_link(text: &str) -> Result<(LinkKind, Vec<u8>), LinkError> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(LinkError::Empty);
    }
    if text.len() > MAX_LINK_LEN {
        return Err(LinkError::TooLong {
            len: text.len(),
            max: MAX_LINK_LEN,
        });
    }
    let rest = match text.get(..SCHEME.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(SCHEME) => &text[SCHEME.len()..],
        _ => {
            return Err(LinkError::WrongScheme {
                found: quote(text, SCHEME.len()),
            });
        }
    };
    let (kind, after_hash) = split_kind(rest)?;
    if after_hash.is_empty() {
        return Err(LinkError::EmptyData);
    }
    // Check the alphabet ourselves, so the error can name the character and where it is.
    let data_start = text.len() - after_hash.len();
    let chars_before = text[..data_start].chars().count();
    for (i, c) in after_hash.chars().enumerate() {
        if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad_character(c, chars_before + i + 1));
        }
    }
    let payload = URL_SAFE_NO_PAD.decode(after_hash).map_err(|e| match e {
        base64::DecodeError::InvalidLastSymbol(..) => LinkError::BadLastCharacter,
        // The alphabet was checked above, and there is no padding; what remains is length.
        base64::DecodeError::InvalidByte(..)
        | base64::DecodeError::InvalidLength(_)
        | base64::DecodeError::InvalidPadding => LinkError::BadLength,
    })?;
    let Some(split) = payload.len().checked_sub(CHECK_LEN) else {
        return Err(LinkError::BadLength);
    };
    let (body, sum) = payload.split_at(split);
    if sum != check(kind, body) {
        return Err(LinkError::Checksum);
    }
    Ok((kind, body.to_vec()))
}

/// Splits `kind#data` (the link after the scheme) into the kind and the data.
fn split_kind(rest: &str) -> Result<(LinkKind, &str), LinkError> {
    // The kind a text starts with, if any: the known name followed by a non-alphanumeric.
    let leading_kind = |text: &str| {
        LinkKind::ALL.into_iter().find(|kind| {
            let name = kind.as_str();
            text.get(..name.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(name))
                && !text[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        })
    };
    let Some((before, data)) = rest.split_once('#') else {
        // No `#`: quote nothing after a known kind, as what follows may be data.
        return Err(
            match LinkKind::ALL.into_iter().find(|kind| {
                rest.get(..kind.as_str().len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(kind.as_str()))
            }) {
                Some(kind) => LinkError::MissingData { kind },
                None => LinkError::UnknownKind {
                    found: quote(rest, 16),
                },
            },
        );
    };
    match (LinkKind::from_name(before), leading_kind(before)) {
        (Some(kind), _) => Ok((kind, data)),
        (None, Some(kind)) => Err(LinkError::JunkAfterKind {
            kind,
            found: quote(&before[kind.as_str().len()..], 12),
        }),
        (None, None) => Err(LinkError::UnknownKind {
            found: quote(before, 24),
        }),
    }
}

/// The error for character `c` at 1-based `position` of the link data.
fn bad_character(c: char, position: usize) -> LinkError {
    let (what, hint) = match c {
        ' ' => ("a space".to_owned(), "; a link is one unbroken line"),
        '\n' | '\r' => (
            "a line break".to_owned(),
            "; the link was probably wrapped over two lines: join them",
        ),
        '\t' => ("a tab".to_owned(), "; a link is one unbroken line"),
        '=' => ("`=`".to_owned(), "; Pigeonpost links carry no `=` padding"),
        '+' | '/' => (
            format!("`{c}`"),
            "; this looks like standard base64, not base64url",
        ),
        '#' => ("a second `#`".to_owned(), ""),
        '%' => (
            "`%`".to_owned(),
            "; the link was probably escaped by a web page or app: undo that",
        ),
        c if c.is_ascii_graphic() => (format!("`{c}`"), ""),
        c if c.is_control() => (format!("the control character U+{:04X}", u32::from(c)), ""),
        c if c.is_whitespace() => (
            format!("the whitespace character U+{:04X}", u32::from(c)),
            "; a link is one unbroken line",
        ),
        c => (format!("the character `{c}` (U+{:04X})", u32::from(c)), ""),
    };
    LinkError::BadCharacter {
        what,
        position,
        hint,
    }
}

/// At most `max` characters of `s`, escaped so they print safely, with "…" if cut.
pub(crate) fn quote(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data generation truncates on purpose"
)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_every_kind_and_length() {
        for kind in LinkKind::ALL {
            for len in 0..40 {
                let payload: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
                let link = encode_link(kind, &payload).expect("short");
                assert_eq!(link.len(), encoded_link_len(kind, len));
                assert!(link.starts_with(&format!("pigeon://{kind}#")));
                assert_eq!(decode_link(kind, &link).expect("decodes"), payload);
                assert_eq!(decode_any_link(&link).expect("decodes"), (kind, payload));
            }
        }
    }

    #[test]
    fn surrounding_ascii_whitespace_is_trimmed_and_case_of_prefix_ignored() {
        let link = encode_link(LinkKind::Proxy, b"hello").expect("short");
        let padded = format!(" \t\r\n{link}\n ");
        assert_eq!(decode_link(LinkKind::Proxy, &padded).expect("ok"), b"hello");
        let upper = link.replacen("pigeon://proxy", "PIGEON://Proxy", 1);
        assert_eq!(decode_link(LinkKind::Proxy, &upper).expect("ok"), b"hello");
        // Non-ASCII whitespace is not trimmed: it is a bad character.
        let nbsp = format!("{link}\u{a0}");
        let position = link.chars().count() + 1;
        assert!(matches!(
            decode_link(LinkKind::Proxy, &nbsp),
            Err(LinkError::BadCharacter { position: p, .. }) if p == position
        ));
    }

    #[test]
    fn wrong_kind_says_which_kinds() {
        let link = encode_link(LinkKind::Invite, b"x").expect("short");
        let err = decode_link(LinkKind::Relay, &link).expect_err("wrong kind");
        assert_eq!(
            err,
            LinkError::WrongKind {
                expected: LinkKind::Relay,
                found: LinkKind::Invite
            }
        );
        assert_eq!(
            err.to_string(),
            "this is an invitation link (pigeon://invite#…), but a relay link (pigeon://relay#…) \
             is needed here"
        );
        assert_eq!(err.kind(), pigeon_wire::ErrorKind::BadInput);
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let link = encode_link(LinkKind::Invite, &[7; 90]).expect("short");
        let start = "pigeon://invite#".len();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in start..link.len() {
            for c in alphabet.chars().step_by(7) {
                if link[i..].starts_with(c) {
                    continue;
                }
                let changed = format!("{}{c}{}", &link[..i], &link[i + 1..]);
                assert!(
                    decode_link(LinkKind::Invite, &changed).is_err(),
                    "{changed}"
                );
            }
        }
    }

    #[test]
    fn encode_refuses_overlong_links() {
        let max_payload = (MAX_LINK_LEN - "pigeon://relay#".len()) / 4 * 3 - CHECK_LEN;
        assert!(encode_link(LinkKind::Relay, &vec![1; max_payload]).is_ok());
        assert!(matches!(
            encode_link(LinkKind::Relay, &vec![1; max_payload + 3]),
            Err(LinkError::TooLong { .. })
        ));
    }

    #[test]
    fn quote_escapes_and_shortens() {
        assert_eq!(quote("ab\ncd", 10), "ab\\ncd");
        assert_eq!(quote("abcdef", 3), "abc…");
        assert_eq!(quote("\u{202e}x", 3), "\\u{202e}x");
    }
}
