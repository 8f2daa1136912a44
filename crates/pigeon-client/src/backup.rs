//! The backup file's sealed container (issue #16, groundwork for `pigeon backup`/`restore`).
//!
//! A passphrase becomes a key through Argon2id (memory-hard; its parameters are in the
//! header), and the contents are sealed in chunks with ChaCha20-Poly1305 in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
//! Nonce-Reuse Misuse-Resistance", 2015): each chunk's nonce is its number and a flag for the
//! last chunk, and every chunk authenticates the whole header. So a file that is cut short, has
//! chunks swapped, dropped or repeated, or has one bit changed anywhere is refused, before
//! anything is restored from it.
//!
//! ```text
//! "PIGEONBK" | version 1 | m_cost KiB (u32 LE) | t_cost (u32 LE) | lanes (u8) | salt (16)
//!            | chunk size (u32 LE) | passphrase check (16)
//! then chunks: ciphertext of min(chunk size, rest) bytes + 16-byte tag, the last flagged
//! ```
//!
//! The passphrase check (BLAKE2s of the derived key under its own label) tells a wrong
//! passphrase from a damaged file; it gives an attacker nothing the first chunk does not.
//! No clock, no randomness of its own: the caller passes the salt.

use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2s256, Digest as _};
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

const MAGIC: &[u8; 8] = b"PIGEONBK";
/// The container format this build reads and writes.
pub const BACKUP_VERSION: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 4 + 4 + 1 + 16 + 4 + 16;
const TAG_LEN: usize = 16;
/// Bytes of contents per chunk this build writes.
const CHUNK: u32 = 64 * 1024;
/// Largest chunk a file may declare.
const MAX_CHUNK: u32 = 1 << 20;
/// Most memory a file may ask Argon2id for (KiB): 1 GiB.
const MAX_M_COST_KIB: u32 = 1 << 20;
/// Most passes a file may ask for.
const MAX_T_COST: u32 = 16;
/// Most lanes a file may ask for.
const MAX_LANES: u8 = 8;

/// Argon2id's cost, written into the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory, in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub lanes: u8,
}

impl KdfCost {
    /// What backups are written with: 256 MiB, 3 passes, 1 lane (about a second here).
    pub const DEFAULT: Self = Self {
        m_cost_kib: 256 * 1024,
        t_cost: 3,
        lanes: 1,
    };
}

/// Why a backup cannot be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupError {
    /// Not a Pigeonpost backup at all.
    #[error("this is not a Pigeonpost backup (it does not start as one)")]
    NotABackup,
    /// Made by a newer version.
    #[error(
        "this backup is format version {0}; this version of pigeon reads version {BACKUP_VERSION}: update pigeon"
    )]
    Version(u8),
    /// The header asks for something out of range.
    #[error("this backup's header is damaged: {0}")]
    Header(&'static str),
    /// The passphrase does not open it.
    #[error("the passphrase does not open this backup (or its header was changed)")]
    WrongPassphrase,
    /// Cut short, reordered, or changed.
    #[error("this backup is damaged ({0}); nothing was restored from it")]
    Damaged(&'static str),
    /// The key could not be derived (parameters the KDF refuses).
    #[error("the backup's key could not be derived: {0}")]
    Kdf(String),
}

struct Header {
    cost: KdfCost,
    salt: [u8; 16],
    chunk: u32,
    check: [u8; 16],
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(MAGIC);
        out.push(BACKUP_VERSION);
        out.extend_from_slice(&self.cost.m_cost_kib.to_le_bytes());
        out.extend_from_slice(&self.cost.t_cost.to_le_bytes());
        out.push(self.cost.lanes);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&self.check);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, BackupError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if bytes.len() < HEADER_LEN {
            return Err(BackupError::Damaged("it ends inside its header"));
        }
        if bytes[8] != BACKUP_VERSION {
            return Err(BackupError::Version(bytes[8]));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let cost = KdfCost {
            m_cost_kib: u32_at(9),
            t_cost: u32_at(13),
            lanes: bytes[17],
        };
        if cost.m_cost_kib > MAX_M_COST_KIB || cost.t_cost == 0 || cost.t_cost > MAX_T_COST {
            return Err(BackupError::Header(
                "its key derivation cost is out of range",
            ));
        }
        if cost.lanes == 0 || cost.lanes > MAX_LANES {
            return Err(BackupError::Header(
                "its key derivation lanes are out of range",
            ));
        }
        let mut salt = [0; 16];
        salt.copy_from_slice(&bytes[18..34]);
        let chunk = u32_at(34);
        if chunk == 0 || chunk > MAX_CHUNK {
            return Err(BackupError::Header("its chunk size is out of range"));
        }
        let mut check = [0; 16];
        check.copy_from_slice(&bytes[38..54]);
        Ok(Self {
            cost,
            salt,
            chunk,
            check,
        })
    }
}

fn derive(passphrase: &str, salt: &[u8; 16], cost: KdfCost) -> Result<[u8; 32], BackupError> {
    let params = Params::new(
        cost.m_cost_kib,
        cost.t_cost,
        u32::from(cost.lanes),
        Some(32),
    )
    .map_err(|e| BackupError::Kdf(e.to_string()))?;
    let mut key = [0; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    Ok(key)
}

fn check_value(key: &[u8; 32]) -> [u8; 16] {
    let mut h = Blake2s256::new();
    h.update(b"pigeon backup passphrase check v1");
    h.update(key);
    let full: [u8; 32] = h.finalize().into();
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0; 12];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[8] = u8::from(last);
    n
}

/// Seals `contents` under `passphrase` with Argon2id at `cost` and `salt` (16 random bytes
/// from the caller).
///
/// # Errors
/// [`BackupError::Kdf`] for a cost the KDF refuses.
pub fn seal(
    contents: &[u8],
    passphrase: &str,
    cost: KdfCost,
    salt: [u8; 16],
) -> Result<Vec<u8>, BackupError> {
    let key = derive(passphrase, &salt, cost)?;
    let header = Header {
        cost,
        salt,
        chunk: CHUNK,
        check: check_value(&key),
    }
    .encode();
    let cipher = ChaCha20Poly1305::new_from_slice(&key)
        .map_err(|_| BackupError::Kdf("the key has the wrong length".to_owned()))?;
    let mut out = header.clone();
    let chunks: Vec<&[u8]> = if contents.is_empty() {
        vec![&[]]
    } else {
        contents.chunks(CHUNK as usize).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce(i as u64, last)),
                Payload {
                    msg: chunk,
                    aad: &header,
                },
            )
            .map_err(|_| BackupError::Kdf("sealing failed".to_owned()))?;
        out.extend_from_slice(&sealed);
    }
    Ok(out)
}

/// Opens a sealed backup: all of it, or nothing.
///
/// # Errors
/// A [`BackupError`] saying what is wrong: not a backup, a newer version, a damaged header, a
/// wrong passphrase, or a body cut short, reordered or changed.
pub fn open(bytes: &[u8], passphrase: &str) -> Result<Vec<u8>, BackupError> {
    let header = Header::decode(bytes)?;
    let key = derive(passphrase, &header.salt, header.cost)?;
    if check_value(&key) != header.check {
        return Err(BackupError::WrongPassphrase);
    }
    let cipher = ChaCha20Poly1305::new_from_slice(&key)
        .map_err(|_| BackupError::Kdf("the key has the wrong length".to_owned()))?;
    let aad = &bytes[..HEADER_LEN];
    let body = &bytes[HEADER_LEN..];
    let sealed_chunk = header.chunk as usize + TAG_LEN;
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    let mut counter = 0u64;
    loop {
        if rest.len() < TAG_LEN {
            return Err(BackupError::Damaged("it is cut short"));
        }
        let last = rest.len() <= sealed_chunk;
        let (this, next) = rest.split_at(rest.len().min(sealed_chunk));
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce(counter, last)),
                Payload { msg: this, aad },
            )
            .map_err(|_| {
                BackupError::Damaged(if last {
                    "it is cut short, or its end was changed"
                } else {
                    "a part of it was changed or moved"
                })
            })?;
        out.extend_from_slice(&plain);
        if last {
            return Ok(out);
        }
        rest = next;
        counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap enough for tests; real backups use [`KdfCost::DEFAULT`].
    const TEST_COST: KdfCost = KdfCost {
        m_cost_kib: 64,
        t_cost: 1,
        lanes: 1,
    };

    fn contents() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect()
    }

    #[test]
    fn a_backup_opens_with_its_passphrase_whole_and_only_whole() {
        let sealed = seal(&contents(), "correct horse", TEST_COST, [7; 16]).expect("seals");
        assert_eq!(open(&sealed, "correct horse").expect("opens"), contents());
        assert_eq!(
            open(&sealed, "wrong horse"),
            Err(BackupError::WrongPassphrase)
        );
        // Cut short anywhere: at a chunk boundary, inside a chunk, inside the header.
        let boundary = HEADER_LEN + CHUNK as usize + TAG_LEN;
        for cut in [boundary, boundary + 100, sealed.len() - 1, HEADER_LEN, 20] {
            assert!(
                matches!(
                    open(&sealed[..cut], "correct horse"),
                    Err(BackupError::Damaged(_))
                ),
                "cut at {cut}"
            );
        }
        // One bit flipped anywhere, header included.
        for at in [9, 20, 40, HEADER_LEN + 3, boundary + 5, sealed.len() - 2] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 0x10;
            assert!(
                open(&flipped, "correct horse").is_err(),
                "bit flipped at {at}"
            );
        }
        // Two chunks swapped.
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        let c = CHUNK as usize + TAG_LEN;
        swapped.extend_from_slice(&sealed[HEADER_LEN + c..HEADER_LEN + 2 * c]);
        swapped.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + c]);
        swapped.extend_from_slice(&sealed[HEADER_LEN + 2 * c..]);
        assert!(matches!(
            open(&swapped, "correct horse"),
            Err(BackupError::Damaged(_))
        ));
    }

    #[test]
    fn garbage_and_strange_headers_are_refused_with_a_reason() {
        assert_eq!(open(b"hello", "x"), Err(BackupError::NotABackup));
        let sealed = seal(b"", "p", TEST_COST, [1; 16]).expect("seals");
        assert_eq!(open(&sealed, "p").expect("empty opens"), Vec::<u8>::new());
        let mut newer = sealed.clone();
        newer[8] = 9;
        assert_eq!(open(&newer, "p"), Err(BackupError::Version(9)));
        // A header asking for 4 TiB of memory is refused before any is spent.
        let mut greedy = sealed.clone();
        greedy[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open(&greedy, "p"), Err(BackupError::Header(_))));
        let mut no_chunks = sealed;
        no_chunks[34..38].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(open(&no_chunks, "p"), Err(BackupError::Header(_))));
    }
}
