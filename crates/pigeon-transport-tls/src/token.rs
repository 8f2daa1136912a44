//! The tunnel token: what a client puts in its request path to be let into the tunnel.
//!
//! A request to `<path>/<token>` with a valid, fresh, never-seen token becomes a tunnel leg;
//! anything else is served the cover site. The token is minted per leg (one TLS connection) and
//! says which session the leg belongs to, its place in the session, and how many bytes the
//! server may send on it before moving to the next leg (the 16–20 KB freeze, see
//! `crate::client`):
//!
//! ```text
//! version 1 (1) | session (16) | leg (2, BE) | budget (4, BE, 0 = none) | issued (4, BE, unix s)
//!   | nonce (8) | tag (16)
//! ```
//!
//! written in unpadded base64url (68 characters). The tag is keyed BLAKE2s-128 under the route's
//! secret, over a label, the route's path and everything before the tag. A server accepts a
//! token only within [`MAX_SKEW`] of the time it was issued, and only once: the [`ReplayFilter`]
//! remembers every tag it accepted until it could no longer be fresh. A replayed or stale token
//! is not an error anyone sees: its request simply gets the cover site.
//!
//! Sans-IO: time comes in as an argument, randomness from the caller.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use blake2::digest::{FixedOutput, KeyInit, Update};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Version byte of the token format.
const VERSION: u8 = 1;
/// Bytes before the tag.
const BODY_LEN: usize = 1 + 16 + 2 + 4 + 4 + 8;
/// Length of the tag.
const TAG_LEN: usize = 16;
/// Length of a token, in bytes.
pub const TOKEN_LEN: usize = BODY_LEN + TAG_LEN;
/// Length of a token as written in a path.
pub const TOKEN_TEXT_LEN: usize = (TOKEN_LEN * 4).div_ceil(3);
/// How far a token's issue time may be from the server's clock, either way, in seconds.
pub const MAX_SKEW: u32 = 120;
/// Length of the route secret.
pub const SECRET_LEN: usize = 32;
const LABEL: &[u8] = b"pigeonpost tls tunnel token v1";

/// A session identifier: chosen at random by the client, it ties the legs of one session.
pub type SessionId = [u8; 16];

/// The route's secret, shared through the relay link. Never printed.
#[derive(Clone)]
pub struct TokenKey(Zeroizing<[u8; SECRET_LEN]>);

impl TokenKey {
    /// The key from its bytes.
    pub fn new(bytes: [u8; SECRET_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key's bytes, for writing it into a link or a file.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// A key for another purpose, derived from this one under `label` (keyed BLAKE2s-256).
    pub(crate) fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = <blake2::Blake2sMac256 as KeyInit>::new_from_slice(self.0.as_slice())
            .expect("BLAKE2s takes 32-byte keys");
        mac.update(label);
        Zeroizing::new(mac.finalize_fixed().into())
    }

    fn tag(&self, path: &str, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = <blake2::Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(
            self.0.as_slice(),
        )
        .expect("BLAKE2s takes 32-byte keys");
        mac.update(LABEL);
        mac.update(&u32::try_from(path.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(path.as_bytes());
        mac.update(body);
        mac.finalize_fixed().into()
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

/// What a token says about its leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    /// The session this leg belongs to.
    pub session: SessionId,
    /// Its place in the session, from 0.
    pub index: u16,
    /// Most bytes the server may write on this leg (`None`: no limit).
    pub budget: Option<u32>,
}

/// Why a token was refused. Never shown to the peer (it gets the cover site); logged as a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not base64url of the right length, or an unknown version.
    #[error("not a token")]
    Malformed,
    /// The tag does not match: another key or path, or altered.
    #[error("the token's tag does not match")]
    BadTag,
    /// Issued too long ago or too far in the future.
    #[error("the token is not fresh")]
    Stale,
    /// Seen before.
    #[error("the token was used before")]
    Replayed,
    /// The replay filter is full; refusing is safer than forgetting.
    #[error("too many tokens in flight")]
    Busy,
}

/// Mints the token for `leg` at unix time `now`, with 8 random bytes `nonce`.
pub fn mint(key: &TokenKey, path: &str, leg: &Leg, now: u64, nonce: [u8; 8]) -> String {
    let mut body = [0u8; BODY_LEN];
    body[0] = VERSION;
    body[1..17].copy_from_slice(&leg.session);
    body[17..19].copy_from_slice(&leg.index.to_be_bytes());
    body[19..23].copy_from_slice(&leg.budget.unwrap_or(0).to_be_bytes());
    // Unix seconds fit 32 bits until 2106.
    body[23..27].copy_from_slice(&u32::try_from(now).unwrap_or(u32::MAX).to_be_bytes());
    body[27..35].copy_from_slice(&nonce);
    let tag = key.tag(path, &body);
    let mut token = [0u8; TOKEN_LEN];
    token[..BODY_LEN].copy_from_slice(&body);
    token[BODY_LEN..].copy_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(token)
}

/// A checked token, not yet checked against replays.
#[derive(Debug)]
pub struct Checked {
    leg: Leg,
    issued: u32,
    tag: [u8; TAG_LEN],
}

impl Checked {
    /// What the token says.
    pub fn leg(&self) -> &Leg {
        &self.leg
    }
}

/// Checks `text` (the path's last segment) under `key` and `path` at unix time `now`: format,
/// tag and freshness. Pass the result to [`ReplayFilter::admit`].
///
/// # Errors
/// [`TokenError::Malformed`], [`TokenError::BadTag`] or [`TokenError::Stale`].
pub fn check(key: &TokenKey, path: &str, text: &str, now: u64) -> Result<Checked, TokenError> {
    if text.len() != TOKEN_TEXT_LEN {
        return Err(TokenError::Malformed);
    }
    let mut token = [0u8; TOKEN_LEN];
    match URL_SAFE_NO_PAD.decode_slice(text, &mut token) {
        Ok(TOKEN_LEN) => {}
        _ => return Err(TokenError::Malformed),
    }
    let body: [u8; BODY_LEN] = token[..BODY_LEN].try_into().expect("fixed split");
    let tag: [u8; TAG_LEN] = token[BODY_LEN..].try_into().expect("fixed split");
    if body[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    if !bool::from(key.tag(path, &body).ct_eq(&tag)) {
        return Err(TokenError::BadTag);
    }
    let field = |r: std::ops::Range<usize>| &body[r];
    let issued = u32::from_be_bytes(field(23..27).try_into().expect("4 bytes"));
    let now32 = u32::try_from(now).unwrap_or(u32::MAX);
    if issued.abs_diff(now32) > MAX_SKEW {
        return Err(TokenError::Stale);
    }
    let budget = u32::from_be_bytes(field(19..23).try_into().expect("4 bytes"));
    Ok(Checked {
        leg: Leg {
            session: field(1..17).try_into().expect("16 bytes"),
            index: u16::from_be_bytes(field(17..19).try_into().expect("2 bytes")),
            budget: (budget != 0).then_some(budget),
        },
        issued,
        tag,
    })
}

/// Bytes of a proof before its tag: issued (4, BE, unix s) and nonce (8).
const PROOF_BODY_LEN: usize = 4 + 8;
/// Length of a proof as written: unpadded base64url of body and tag (38 characters).
pub(crate) const PROOF_TEXT_LEN: usize = ((PROOF_BODY_LEN + TAG_LEN) * 4).div_ceil(3);

/// Mints a compact single-use proof under `key` for `label` at unix time `now`: a token with no
/// leg, for where space is short (the inner ClientHello's server name, [`crate::ech`]).
pub(crate) fn mint_proof(key: &TokenKey, label: &str, now: u64, nonce: [u8; 8]) -> String {
    let mut proof = [0u8; PROOF_BODY_LEN + TAG_LEN];
    proof[..4].copy_from_slice(&u32::try_from(now).unwrap_or(u32::MAX).to_be_bytes());
    proof[4..PROOF_BODY_LEN].copy_from_slice(&nonce);
    let tag = key.tag(label, &proof[..PROOF_BODY_LEN]);
    proof[PROOF_BODY_LEN..].copy_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(proof)
}

/// Checks a proof made by [`mint_proof`]: format, tag and freshness. Pass the result to
/// [`ReplayFilter::admit`] (which spends it like a token; proofs and tokens never share tags,
/// as `label` is never a tunnel path).
pub(crate) fn check_proof(
    key: &TokenKey,
    label: &str,
    text: &str,
    now: u64,
) -> Result<Checked, TokenError> {
    if text.len() != PROOF_TEXT_LEN {
        return Err(TokenError::Malformed);
    }
    let mut proof = [0u8; PROOF_BODY_LEN + TAG_LEN];
    match URL_SAFE_NO_PAD.decode_slice(text, &mut proof) {
        Ok(n) if n == proof.len() => {}
        _ => return Err(TokenError::Malformed),
    }
    let tag: [u8; TAG_LEN] = proof[PROOF_BODY_LEN..].try_into().expect("fixed split");
    if !bool::from(key.tag(label, &proof[..PROOF_BODY_LEN]).ct_eq(&tag)) {
        return Err(TokenError::BadTag);
    }
    let issued = u32::from_be_bytes(proof[..4].try_into().expect("4 bytes"));
    let now32 = u32::try_from(now).unwrap_or(u32::MAX);
    if issued.abs_diff(now32) > MAX_SKEW {
        return Err(TokenError::Stale);
    }
    Ok(Checked {
        leg: Leg {
            session: [0; 16],
            index: 0,
            budget: None,
        },
        issued,
        tag,
    })
}

/// Remembers the tags of accepted tokens until they are too old to be fresh, so each token is
/// accepted once. Bounded: when full it refuses new tokens rather than forget old ones.
#[derive(Debug)]
pub struct ReplayFilter {
    seen: HashSet<[u8; TAG_LEN]>,
    by_time: BTreeMap<u32, Vec<[u8; TAG_LEN]>>,
    capacity: usize,
}

impl ReplayFilter {
    /// A filter remembering at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            by_time: BTreeMap::new(),
            capacity,
        }
    }

    /// Admits `checked` at unix time `now` if its tag was never admitted.
    ///
    /// # Errors
    /// [`TokenError::Replayed`] or [`TokenError::Busy`].
    pub fn admit(&mut self, checked: Checked, now: u64) -> Result<Leg, TokenError> {
        let now32 = u32::try_from(now).unwrap_or(u32::MAX);
        // Anything issued before now − 2·skew can no longer pass `check`, at any clock reading
        // this filter sees (a token is checked against the same clock right before).
        let horizon = now32.saturating_sub(2 * MAX_SKEW);
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            for tag in entry.remove() {
                self.seen.remove(&tag);
            }
        }
        if self.seen.contains(&checked.tag) {
            return Err(TokenError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(TokenError::Busy);
        }
        self.seen.insert(checked.tag);
        self.by_time
            .entry(checked.issued)
            .or_default()
            .push(checked.tag);
        Ok(checked.leg)
    }

    /// Tokens remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000;

    fn key(b: u8) -> TokenKey {
        TokenKey::new([b; SECRET_LEN])
    }

    fn leg() -> Leg {
        Leg {
            session: [7; 16],
            index: 3,
            budget: Some(12_000),
        }
    }

    #[test]
    fn round_trip_and_single_use() {
        let text = mint(&key(1), "/p", &leg(), NOW, [9; 8]);
        assert_eq!(text.len(), TOKEN_TEXT_LEN);
        let mut filter = ReplayFilter::new(10);
        let checked = check(&key(1), "/p", &text, NOW + 5).expect("valid");
        assert_eq!(filter.admit(checked, NOW + 5), Ok(leg()));
        let again = check(&key(1), "/p", &text, NOW + 6).expect("still valid");
        assert_eq!(filter.admit(again, NOW + 6), Err(TokenError::Replayed));
        let unlimited = Leg {
            budget: None,
            ..leg()
        };
        let text = mint(&key(1), "/p", &unlimited, NOW, [1; 8]);
        let checked = check(&key(1), "/p", &text, NOW).expect("valid");
        assert_eq!(filter.admit(checked, NOW), Ok(unlimited));
    }

    #[test]
    fn wrong_key_path_time_or_bytes_are_refused() {
        let text = mint(&key(1), "/p", &leg(), NOW, [9; 8]);
        assert_eq!(
            check(&key(2), "/p", &text, NOW).map(|_| ()),
            Err(TokenError::BadTag)
        );
        assert_eq!(
            check(&key(1), "/q", &text, NOW).map(|_| ()),
            Err(TokenError::BadTag)
        );
        assert_eq!(
            check(&key(1), "/p", &text, NOW + u64::from(MAX_SKEW) + 1).map(|_| ()),
            Err(TokenError::Stale)
        );
        assert_eq!(
            check(&key(1), "/p", &text, NOW - u64::from(MAX_SKEW) - 1).map(|_| ()),
            Err(TokenError::Stale)
        );
        for bad in ["", "x", &text[1..], &format!("{text}A"), &"A".repeat(68)] {
            assert_eq!(
                check(&key(1), "/p", bad, NOW).map(|_| ()),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        // Every single-character change is caught.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(b).expect("ascii");
            assert!(check(&key(1), "/p", &changed, NOW).is_err(), "position {i}");
        }
    }

    #[test]
    fn filter_forgets_only_what_cannot_be_fresh_and_refuses_when_full() {
        let mut filter = ReplayFilter::new(2);
        let t1 = mint(&key(1), "/p", &leg(), NOW, [1; 8]);
        let t2 = mint(&key(1), "/p", &leg(), NOW, [2; 8]);
        let t3 = mint(&key(1), "/p", &leg(), NOW, [3; 8]);
        for t in [&t1, &t2] {
            filter
                .admit(check(&key(1), "/p", t, NOW).expect("valid"), NOW)
                .expect("admitted");
        }
        assert_eq!(
            filter.admit(check(&key(1), "/p", &t3, NOW).expect("valid"), NOW),
            Err(TokenError::Busy)
        );
        // Once those are too old to pass `check`, they are forgotten and room is made.
        let later = NOW + 2 * u64::from(MAX_SKEW) + 1;
        let t4 = mint(&key(1), "/p", &leg(), later, [4; 8]);
        filter
            .admit(check(&key(1), "/p", &t4, later).expect("valid"), later)
            .expect("admitted");
        assert_eq!(filter.len(), 1);
    }
}
