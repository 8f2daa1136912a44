//! TLS 1.3 record protection after the handshake (RFC 8446 section 5), for the server's tunnel
//! legs.
//!
//! rustls does the handshake; for a tunnel leg the server then takes the traffic keys out of it
//! (`dangerous_extract_secrets`, the interface rustls offers for kernel TLS) and protects
//! records itself. An idle leg then holds two keys, two IVs and two sequence numbers — about a
//! hundred bytes — instead of a TLS library's connection state and buffers, which is what lets
//! a relay keep tens of thousands of idle tls connections within its memory budget.
//!
//! Only application data is expected after the handshake: a close_notify alert ends the leg, and
//! any other alert or post-handshake handshake message (KeyUpdate, which Chrome does not send)
//! is refused. The AEAD (ring's, the one rustls uses) is built from the stored key for each
//! record (a few hundred nanoseconds), so nothing larger than the raw key is kept between records.

use ring::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};
use zeroize::Zeroizing;

/// Most plaintext in one record.
pub(crate) const MAX_PLAINTEXT: usize = 16_384;
/// Most ciphertext (with the inner content type, padding and tag) in one record.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Record header length.
pub(crate) const HEADER_LEN: usize = 5;
/// Bytes a record adds to its plaintext: header, inner content type, tag.
pub(crate) const OVERHEAD: usize = HEADER_LEN + 1 + 16;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;

/// The AEAD of a TLS 1.3 cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

/// Why a record could not be opened or sealed. Any of these ends the leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A header that is not a TLS 1.3 application-data record, or a length out of range.
    #[error("a TLS record header that is not TLS 1.3 application data")]
    BadHeader,
    /// Authentication failed: tampered, reordered or replayed.
    #[error("a TLS record failed authentication")]
    BadRecord,
    /// A record with no inner content type (all padding).
    #[error("a TLS record with no content type")]
    NoContentType,
    /// An alert other than close_notify.
    #[error("the peer sent a TLS alert ({0})")]
    Alert(u8),
    /// An alert that is not two bytes (level and description).
    #[error("a TLS alert of {0} bytes, not 2")]
    BadAlert(usize),
    /// An inner content type that has no place after the handshake (change_cipher_spec, or
    /// one that does not exist).
    #[error("a TLS record of content type {0} after the handshake")]
    UnexpectedContent(u8),
    /// A handshake message after the handshake (KeyUpdate and the like are not supported).
    #[error("the peer sent a handshake message after the handshake")]
    PostHandshake,
    /// 2^64 records: never in practice.
    #[error("the TLS sequence number would wrap")]
    SequenceExhausted,
}

/// One direction's keys and sequence number.
pub(crate) struct Direction {
    aead: Aead,
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction")
            .field("aead", &self.aead)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Direction {
    /// Keys from rustls's extracted secrets.
    pub(crate) fn from_rustls(
        seq: u64,
        secrets: &rustls::ConnectionTrafficSecrets,
    ) -> Option<Self> {
        use rustls::ConnectionTrafficSecrets as S;
        let (aead, key, iv) = match secrets {
            S::Aes128Gcm { key, iv } => (Aead::Aes128Gcm, key, iv),
            S::Aes256Gcm { key, iv } => (Aead::Aes256Gcm, key, iv),
            S::Chacha20Poly1305 { key, iv } => (Aead::ChaCha20Poly1305, key, iv),
            _ => return None,
        };
        let mut stored = Zeroizing::new([0u8; 32]);
        let key = key.as_ref();
        let want = if aead == Aead::Aes128Gcm { 16 } else { 32 };
        if key.len() != want {
            return None;
        }
        stored[..key.len()].copy_from_slice(key);
        Some(Self {
            aead,
            key: stored,
            iv: iv.as_ref().try_into().ok()?,
            seq,
        })
    }

    /// Keys given directly: derived from a traffic secret ([`crate::ech`]), or for tests and the
    /// fuzzing entry points.
    pub(crate) fn new(aead: Aead, key: [u8; 32], iv: [u8; 12], seq: u64) -> Self {
        Self {
            aead,
            key: Zeroizing::new(key),
            iv,
            seq,
        }
    }

    /// The stored key and IV, for tests.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> ([u8; 32], [u8; 12]) {
        (*self.key, self.iv)
    }

    fn next_nonce(&mut self) -> Result<[u8; 12], RecordError> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(nonce)
    }

    /// The AEAD key of this direction, built for one record (ring's key schedule is a few
    /// hundred bytes; it is not kept between records).
    fn key(&self) -> Result<LessSafeKey, RecordError> {
        let (algorithm, key) = match self.aead {
            Aead::Aes128Gcm => (&AES_128_GCM, &self.key[..16]),
            Aead::Aes256Gcm => (&AES_256_GCM, &self.key[..]),
            Aead::ChaCha20Poly1305 => (&CHACHA20_POLY1305, &self.key[..]),
        };
        UnboundKey::new(algorithm, key)
            .map(LessSafeKey::new)
            .map_err(|_| RecordError::BadRecord)
    }

    fn seal_in_place(&mut self, aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], RecordError> {
        let key = self.key()?;
        let nonce = Nonce::assume_unique_for_key(self.next_nonce()?);
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
            .map_err(|_| RecordError::BadRecord)?;
        tag.as_ref().try_into().map_err(|_| RecordError::BadRecord)
    }

    fn open_in_place(&mut self, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), RecordError> {
        let key = self.key()?;
        let nonce = Nonce::assume_unique_for_key(self.next_nonce()?);
        let tag = ring::aead::Tag::try_from(tag).map_err(|_| RecordError::BadRecord)?;
        key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, buf, 0..)
            .map(|_| ())
            .map_err(|_| RecordError::BadRecord)
    }
}

/// What one opened record held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Application data: `buf[start..end]` after the call, and the record's length in `buf`.
    Data {
        start: usize,
        end: usize,
        used: usize,
    },
    /// close_notify: the peer will send nothing more.
    Closed { used: usize },
}

/// Both directions of a leg's record protection.
#[derive(Debug)]
pub(crate) struct Records {
    rx: Direction,
    tx: Direction,
}

impl Records {
    pub(crate) fn new(rx: Direction, tx: Direction) -> Self {
        Self { rx, tx }
    }

    /// Seals `plaintext` as application-data records of at most [`MAX_PLAINTEXT`] bytes each,
    /// appended to `out`.
    pub(crate) fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            self.seal_parts(&[chunk], out)?;
        }
        Ok(())
    }

    /// Seals one application-data record whose plaintext is `parts` laid end to end (at most
    /// [`MAX_PLAINTEXT`] bytes in all), appended to `out`: each part is copied once, straight
    /// into the record, and encrypted there.
    pub(crate) fn seal_parts(
        &mut self,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let plain: usize = parts.iter().map(|p| p.len()).sum();
        if plain > MAX_PLAINTEXT {
            return Err(RecordError::BadRecord);
        }
        let len = plain + 1 + 16;
        let header = [
            APPLICATION_DATA,
            3,
            3,
            u8::try_from(len >> 8).unwrap_or(u8::MAX),
            u8::try_from(len & 0xff).unwrap_or(u8::MAX),
        ];
        let mark = out.len();
        out.reserve(HEADER_LEN + len);
        out.extend_from_slice(&header);
        let start = out.len();
        for part in parts {
            out.extend_from_slice(part);
        }
        out.push(APPLICATION_DATA);
        match self.tx.seal_in_place(&header, &mut out[start..]) {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                // Never leave plaintext where sealed records wait to be written.
                zeroize::Zeroize::zeroize(&mut out[mark..]);
                out.truncate(mark);
                Err(e)
            }
        }
    }

    /// Opens the first record in `buf`, decrypting in place. `Ok(None)` when `buf` does not yet
    /// hold a whole record.
    ///
    /// # Errors
    /// A [`RecordError`]; the leg must then end.
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("5 bytes");
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != APPLICATION_DATA
            || header[1] != 3
            || header[2] != 3
            || !(17..=MAX_CIPHERTEXT).contains(&len)
        {
            return Err(RecordError::BadHeader);
        }
        let used = HEADER_LEN + len;
        if buf.len() < used {
            return Ok(None);
        }
        let (body, tag) = buf[HEADER_LEN..used].split_at_mut(len - 16);
        let tag: [u8; 16] = (&*tag).try_into().expect("16 bytes");
        self.rx.open_in_place(&header, body, &tag)?;
        let Some(type_at) = body.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::NoContentType);
        };
        match body[type_at] {
            APPLICATION_DATA => Ok(Some(Opened::Data {
                start: HEADER_LEN,
                end: HEADER_LEN + type_at,
                used,
            })),
            ALERT if type_at == 2 && body[1] == 0 => Ok(Some(Opened::Closed { used })),
            ALERT if type_at == 2 => Err(RecordError::Alert(body[1])),
            ALERT => Err(RecordError::BadAlert(type_at)),
            HANDSHAKE => Err(RecordError::PostHandshake),
            other => Err(RecordError::UnexpectedContent(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(aead: Aead) -> (Records, Records) {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let iv1 = [3u8; 12];
        let iv2 = [4u8; 12];
        (
            Records::new(
                Direction::new(aead, k1, iv1, 0),
                Direction::new(aead, k2, iv2, 5),
            ),
            Records::new(
                Direction::new(aead, k2, iv2, 5),
                Direction::new(aead, k1, iv1, 0),
            ),
        )
    }

    #[test]
    fn seal_open_each_suite_and_split_large_writes() {
        for aead in [Aead::Aes128Gcm, Aead::Aes256Gcm, Aead::ChaCha20Poly1305] {
            let (mut a, mut b) = pair(aead);
            let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            a.seal(&data, &mut wire).expect("seal");
            assert_eq!(wire.len(), data.len() + 3 * OVERHEAD);
            let mut got = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                match b.open(&mut wire[at..]).expect("open") {
                    Some(Opened::Data { start, end, used }) => {
                        got.extend_from_slice(&wire[at + start..at + end]);
                        at += used;
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, data);
        }
    }

    /// A record sealed from parts is the record of the parts laid end to end; more than one
    /// record's worth is refused, not split.
    #[test]
    fn sealing_parts_is_sealing_them_joined() {
        let (mut a, _) = pair(Aead::Aes128Gcm);
        let (mut c, _) = pair(Aead::Aes128Gcm);
        let (head, body) = (b"frame header", vec![7u8; 1000]);
        let mut joined = head.to_vec();
        joined.extend_from_slice(&body);
        let (mut from_parts, mut from_joined) = (Vec::new(), Vec::new());
        a.seal_parts(&[head, &body], &mut from_parts)
            .expect("seal parts");
        c.seal(&joined, &mut from_joined).expect("seal");
        assert_eq!(from_parts, from_joined);
        let big = vec![0u8; MAX_PLAINTEXT];
        assert!(a.seal_parts(&[b"x", &big], &mut from_parts).is_err());
    }

    /// Regression, noticed writing the `tls_record` fuzz harness's model of inner plaintexts
    /// (RFC 8446 section 5.4): a malformed alert or an unknown inner content type was
    /// reported as "a TLS record header that is not TLS 1.3 application data", though the
    /// header was fine.
    #[test]
    fn inner_content_types_are_named() {
        type Outcome = Result<Option<Opened>, RecordError>;
        let cases: [(&[u8], Outcome); 7] = [
            (
                &[b'h', b'i', 23, 0, 0],
                Ok(Some(Opened::Data {
                    start: 5,
                    end: 7,
                    used: 26,
                })),
            ),
            (&[1, 0, 21], Ok(Some(Opened::Closed { used: 24 }))),
            (&[2, 40, 21], Err(RecordError::Alert(40))),
            (&[2, 40, 7, 21, 0], Err(RecordError::BadAlert(3))),
            (&[24, 0, 0, 1, 0, 22], Err(RecordError::PostHandshake)),
            (&[1, 20], Err(RecordError::UnexpectedContent(20))),
            (&[0, 0, 0], Err(RecordError::NoContentType)),
        ];
        for (inner, want) in cases {
            let (mut a, mut b) = pair(Aead::ChaCha20Poly1305);
            let len = u8::try_from(inner.len() + 16).expect("small");
            let header = [APPLICATION_DATA, 3, 3, 0, len];
            let mut record = header.to_vec();
            record.extend_from_slice(inner);
            let tag =
                a.tx.seal_in_place(&header, &mut record[HEADER_LEN..])
                    .expect("seal");
            record.extend_from_slice(&tag);
            assert_eq!(b.open(&mut record), want, "{inner:?}");
        }
    }

    #[test]
    fn partial_tampered_replayed_and_foreign_records_are_refused() {
        let (mut a, mut b) = pair(Aead::Aes128Gcm);
        let mut wire = Vec::new();
        a.seal(b"hello", &mut wire).expect("seal");
        assert_eq!(b.open(&mut wire.clone()[..10]).expect("partial"), None);
        let mut tampered = wire.clone();
        tampered[7] ^= 1;
        assert_eq!(b.open(&mut tampered), Err(RecordError::BadRecord));
        // The failed attempt used up sequence number 0 on b: the genuine record now fails too,
        // as it would after any loss; the leg ends either way.
        let (mut a, mut b) = pair(Aead::Aes128Gcm);
        let mut wire = Vec::new();
        a.seal(b"hello", &mut wire).expect("seal");
        let mut replay = wire.clone();
        assert!(b.open(&mut wire).expect("open").is_some());
        assert_eq!(b.open(&mut replay), Err(RecordError::BadRecord));
        for header in [
            [22u8, 3, 3, 0, 20],
            [23, 3, 1, 0, 20],
            [23, 3, 3, 0, 5],
            [23, 3, 3, 0x42, 0x11],
        ] {
            let mut rec = header.to_vec();
            rec.resize(64, 0);
            assert_eq!(b.open(&mut rec), Err(RecordError::BadHeader), "{header:?}");
        }
    }
}
