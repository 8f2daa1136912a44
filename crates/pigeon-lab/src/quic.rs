//! QUIC v1 Initial packets: remove header protection, decrypt (RFC 9001 §5), collect CRYPTO
//! frames and reassemble the ClientHello, as Russia's TSPU (since 2024) and the GFW do to read
//! the SNI of QUIC connections.
//!
//! Everything here is public knowledge: Initial keys derive from the connection's Destination
//! Connection ID and a salt fixed by RFC 9001, so any on-path observer can decrypt Initials.
//! [`protect_initial`] is the inverse, used by tests and by the lab's traffic generators.

use std::collections::BTreeMap;

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{Aead, Payload};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::LabError;

/// QUIC version 1.
pub const VERSION_1: u32 = 1;
/// RFC 9001 §5.2 initial salt for version 1.
pub const INITIAL_SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// Most CRYPTO bytes the reassembler keeps (a censor's budget per flow).
pub const MAX_CRYPTO: u64 = 64 * 1024;

/// Client Initial packet protection keys.
#[derive(Clone, PartialEq, Eq)]
pub struct InitialKeys {
    /// AEAD key.
    pub key: [u8; 16],
    /// AEAD IV.
    pub iv: [u8; 12],
    /// Header protection key.
    pub hp: [u8; 16],
}

impl std::fmt::Debug for InitialKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitialKeys(..)")
    }
}

fn expand_label(prk: &[u8], label: &str, out: &mut [u8]) -> Result<(), LabError> {
    let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| LabError::Crypto("bad HKDF PRK"))?;
    let full = format!("tls13 {label}");
    let len = u16::try_from(out.len()).map_err(|_| LabError::Crypto("HKDF output too long"))?;
    let label_len = u8::try_from(full.len()).map_err(|_| LabError::Crypto("label too long"))?;
    let mut info = Vec::with_capacity(4 + full.len());
    info.extend_from_slice(&len.to_be_bytes());
    info.push(label_len);
    info.extend_from_slice(full.as_bytes());
    info.push(0);
    hk.expand(&info, out)
        .map_err(|_| LabError::Crypto("HKDF expand failed"))
}

/// Derives the client's Initial keys from the Destination Connection ID.
///
/// # Errors
/// [`LabError::Crypto`] only if HKDF rejects its inputs (it does not for these sizes).
pub fn client_initial_keys(dcid: &[u8]) -> Result<InitialKeys, LabError> {
    let (initial_secret, _) = Hkdf::<Sha256>::extract(Some(&INITIAL_SALT_V1), dcid);
    let mut client = [0u8; 32];
    expand_label(&initial_secret, "client in", &mut client)?;
    let mut keys = InitialKeys {
        key: [0; 16],
        iv: [0; 12],
        hp: [0; 16],
    };
    expand_label(&client, "quic key", &mut keys.key)?;
    expand_label(&client, "quic iv", &mut keys.iv)?;
    expand_label(&client, "quic hp", &mut keys.hp)?;
    Ok(keys)
}

fn hp_mask(hp: &[u8; 16], sample: &[u8]) -> [u8; 16] {
    let cipher = Aes128::new(GenericArray::from_slice(hp));
    let mut block = GenericArray::clone_from_slice(sample);
    cipher.encrypt_block(&mut block);
    block.into()
}

fn nonce(iv: &[u8; 12], pn: u64) -> [u8; 12] {
    let mut n = *iv;
    for (i, b) in pn.to_be_bytes().iter().enumerate() {
        n[4 + i] ^= b;
    }
    n
}

/// Reads a QUIC variable-length integer.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(*pos..pos.checked_add(len)?)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    *pos += len;
    Some(v)
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 64 {
        out.push(v.to_be_bytes()[7]);
    } else if v < 16_384 {
        let b = v.to_be_bytes();
        out.extend_from_slice(&[0x40 | b[6], b[7]]);
    } else {
        let b = v.to_be_bytes();
        out.extend_from_slice(&[0x80 | b[4], b[5], b[6], b[7]]);
    }
}

/// Whether a UDP payload starts with a QUIC v1 long-header Initial packet.
pub fn is_v1_initial(datagram: &[u8]) -> bool {
    datagram.len() >= 7
        && datagram[0] & 0xc0 == 0xc0
        && (datagram[0] >> 4) & 0x03 == 0
        && datagram[1..5] == VERSION_1.to_be_bytes()
}

/// A decrypted client Initial packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initial {
    /// Destination Connection ID (keys the flow).
    pub dcid: Vec<u8>,
    /// Packet number.
    pub packet_number: u64,
    /// CRYPTO frames as (offset, data).
    pub crypto: Vec<(u64, Vec<u8>)>,
}

fn bad(detail: &str) -> LabError {
    LabError::malformed("QUIC Initial", detail)
}

/// Removes header protection from and decrypts the first (client) Initial packet in `datagram`.
///
/// # Errors
/// [`LabError::Malformed`] for anything but a well-formed v1 Initial, [`LabError::Crypto`] when
/// it does not authenticate under the Initial keys.
pub fn decrypt_initial(datagram: &[u8]) -> Result<Initial, LabError> {
    if !is_v1_initial(datagram) {
        return Err(bad("not a v1 Initial"));
    }
    let mut pos = 5;
    let dcid_len = usize::from(*datagram.get(pos).ok_or_else(|| bad("short"))?);
    if dcid_len > 20 {
        return Err(bad("DCID longer than 20"));
    }
    let dcid = datagram
        .get(pos + 1..pos + 1 + dcid_len)
        .ok_or_else(|| bad("short DCID"))?
        .to_vec();
    pos += 1 + dcid_len;
    let scid_len = usize::from(*datagram.get(pos).ok_or_else(|| bad("short"))?);
    pos += 1 + scid_len;
    let token_len = read_varint(datagram, &mut pos).ok_or_else(|| bad("token length"))?;
    pos = pos
        .checked_add(usize::try_from(token_len).map_err(|_| bad("token length"))?)
        .ok_or_else(|| bad("token length"))?;
    let length = read_varint(datagram, &mut pos).ok_or_else(|| bad("length"))?;
    let length = usize::try_from(length).map_err(|_| bad("length"))?;
    let pn_offset = pos;
    let end = pn_offset
        .checked_add(length)
        .filter(|e| *e <= datagram.len())
        .ok_or_else(|| bad("length past datagram"))?;
    let sample = datagram
        .get(pn_offset + 4..pn_offset + 20)
        .ok_or_else(|| bad("too short to sample"))?;
    let keys = client_initial_keys(&dcid)?;
    let mask = hp_mask(&keys.hp, sample);
    let mut header = datagram[..pn_offset].to_vec();
    header[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(header[0] & 0x03) + 1;
    if pn_offset + pn_len > end {
        return Err(bad("packet number past end"));
    }
    let mut pn = 0u64;
    for i in 0..pn_len {
        let b = datagram[pn_offset + i] ^ mask[1 + i];
        header.push(b);
        pn = (pn << 8) | u64::from(b);
    }
    let cipher =
        Aes128Gcm::new_from_slice(&keys.key).map_err(|_| LabError::Crypto("bad AEAD key"))?;
    let plain = cipher
        .decrypt(
            GenericArray::from_slice(&nonce(&keys.iv, pn)),
            Payload {
                msg: &datagram[pn_offset + pn_len..end],
                aad: &header,
            },
        )
        .map_err(|_| LabError::Crypto("Initial did not authenticate"))?;
    Ok(Initial {
        dcid,
        packet_number: pn,
        crypto: crypto_frames(&plain)?,
    })
}

fn crypto_frames(plain: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, LabError> {
    let mut out = Vec::new();
    let mut pos = 0;
    let v = |pos: &mut usize| read_varint(plain, pos).ok_or_else(|| bad("truncated frame"));
    while pos < plain.len() {
        let ty = v(&mut pos)?;
        match ty {
            0x00 | 0x01 => {}
            0x02 | 0x03 => {
                v(&mut pos)?;
                v(&mut pos)?;
                let ranges = v(&mut pos)?;
                v(&mut pos)?;
                for _ in 0..ranges.min(1024) {
                    v(&mut pos)?;
                    v(&mut pos)?;
                }
                if ty == 0x03 {
                    for _ in 0..3 {
                        v(&mut pos)?;
                    }
                }
            }
            0x06 => {
                let offset = v(&mut pos)?;
                let len = usize::try_from(v(&mut pos)?).map_err(|_| bad("CRYPTO length"))?;
                let data = plain
                    .get(pos..pos.checked_add(len).ok_or_else(|| bad("CRYPTO length"))?)
                    .ok_or_else(|| bad("CRYPTO past end"))?;
                out.push((offset, data.to_vec()));
                pos += len;
            }
            0x1c | 0x1d => break,
            _ => return Err(bad("unexpected frame in Initial")),
        }
    }
    Ok(out)
}

/// Joins CRYPTO frames (in any order, possibly from several Initials) into the contiguous
/// handshake stream from offset 0.
#[derive(Debug, Clone, Default)]
pub struct CryptoAssembler {
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl CryptoAssembler {
    /// Adds a frame; frames past [`MAX_CRYPTO`] are ignored.
    pub fn add(&mut self, offset: u64, data: Vec<u8>) {
        if offset < MAX_CRYPTO {
            self.chunks.insert(offset, data);
        }
    }

    /// The contiguous bytes from offset 0.
    pub fn contiguous(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (offset, data) in &self.chunks {
            let have = out.len() as u64;
            if *offset > have {
                break;
            }
            let skip = usize::try_from(have - offset).unwrap_or(usize::MAX);
            if let Some(rest) = data.get(skip..) {
                out.extend_from_slice(rest);
            }
        }
        out
    }
}

/// Builds a protected client Initial carrying `crypto` frames (offset, data), padded to 1,200
/// bytes: the inverse of [`decrypt_initial`].
///
/// # Errors
/// [`LabError::Crypto`] if key derivation or sealing fails.
pub fn protect_initial(
    dcid: &[u8],
    scid: &[u8],
    packet_number: u32,
    crypto: &[(u64, &[u8])],
) -> Result<Vec<u8>, LabError> {
    let mut frames = Vec::new();
    for (offset, data) in crypto {
        frames.push(0x06);
        put_varint(&mut frames, *offset);
        put_varint(&mut frames, data.len() as u64);
        frames.extend_from_slice(data);
    }
    let pn_len = 4;
    let mut header = vec![0xc0 | (pn_len - 1)];
    header.extend_from_slice(&VERSION_1.to_be_bytes());
    for cid in [dcid, scid] {
        header.push(u8::try_from(cid.len()).map_err(|_| LabError::Crypto("CID too long"))?);
        header.extend_from_slice(cid);
    }
    header.push(0); // token length
    let overhead = header.len() + 2 + usize::from(pn_len) + 16;
    if overhead + frames.len() < 1200 {
        frames.resize(1200 - overhead, 0);
    }
    let length = frames.len() + usize::from(pn_len) + 16;
    let length = u16::try_from(length).map_err(|_| LabError::Crypto("Initial too long"))?;
    header.extend_from_slice(&(0x4000 | length).to_be_bytes());
    let pn_offset = header.len();
    header.extend_from_slice(&packet_number.to_be_bytes());
    let keys = client_initial_keys(dcid)?;
    let cipher =
        Aes128Gcm::new_from_slice(&keys.key).map_err(|_| LabError::Crypto("bad AEAD key"))?;
    let sealed = cipher
        .encrypt(
            GenericArray::from_slice(&nonce(&keys.iv, u64::from(packet_number))),
            Payload {
                msg: &frames,
                aad: &header,
            },
        )
        .map_err(|_| LabError::Crypto("seal failed"))?;
    let mut packet = header;
    packet.extend_from_slice(&sealed);
    let mask = hp_mask(&keys.hp, &packet[pn_offset + 4..pn_offset + 20]);
    packet[0] ^= mask[0] & 0x0f;
    for i in 0..usize::from(pn_len) {
        packet[pn_offset + i] ^= mask[1 + i];
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{HelloSpec, Parsed, parse_handshake};

    #[test]
    fn rfc9001_appendix_a_keys() {
        let dcid = hex::decode("8394c8f03e515708").expect("hex");
        let keys = client_initial_keys(&dcid).expect("derives");
        assert_eq!(hex::encode(keys.key), "1f369613dd76d5467730efcbe3b1a22d");
        assert_eq!(hex::encode(keys.iv), "fa044b2f42a3fd3b46fb255c");
        assert_eq!(hex::encode(keys.hp), "9f50449e04a0e810283a1e9933adedd2");
    }

    #[test]
    fn split_hello_reassembles_from_shuffled_frames() {
        let hello = HelloSpec::typical(Some("quic.example"))
            .handshake()
            .expect("builds");
        let (a, b) = hello.split_at(100);
        let dcid = [7u8; 8];
        // Second half first, in its own packet, as Chrome does.
        let p1 = protect_initial(&dcid, &[1; 4], 0, &[(100, b)]).expect("seals");
        let p2 = protect_initial(&dcid, &[1; 4], 1, &[(0, a)]).expect("seals");
        assert!(is_v1_initial(&p1) && p1.len() >= 1200);
        let mut asm = CryptoAssembler::default();
        for p in [&p1, &p2] {
            let init = decrypt_initial(p).expect("decrypts");
            assert_eq!(init.dcid, dcid);
            for (off, data) in init.crypto {
                asm.add(off, data);
            }
        }
        match parse_handshake(&asm.contiguous()) {
            Parsed::Complete(ch) => assert_eq!(ch.sni.as_deref(), Some("quic.example")),
            other => panic!("no hello: {other:?}"),
        }
        // A flipped ciphertext byte fails authentication; truncation fails cleanly.
        let mut bad = p1.clone();
        bad[60] ^= 1;
        assert!(decrypt_initial(&bad).is_err());
        for cut in [0, 6, 20, 40, 600] {
            assert!(decrypt_initial(&p1[..cut]).is_err());
        }
    }
}
