//! Files sent in conversations (issue #17), the part without I/O: how a file is sealed in
//! chunks, what the relay gets, and how a download knows what it has.
//!
//! A file is encrypted on the sending device under a key made for it alone, in chunks of
//! [`CHUNK`] bytes (ChaCha20-Poly1305 in the STREAM construction: the nonce is the chunk's
//! index and a flag for the last one, and every chunk authenticates the file's length and
//! chunk size), and posted to a *log of its own* on a relay, one chunk per relay message. Once
//! every chunk is durable the sender replaces the log's capability, so the one it posted with
//! is retired: it reads everything there and posts nothing more. That capability, the key,
//! the log's id and relay and the file's SHA-256 travel to the conversation inside MLS
//! ([`pigeon_e2ee::content::Attachment`]). The relay sees a random log id, a count of 64 KiB
//! messages and who connected; never a name, a type, a key, or which conversation it is for.
//!
//! What is kept on the device is the sealed chunks (the same bytes as on the relay, without
//! the index), in a file beside the profile: a file sent or received is encrypted at rest
//! under the key the encrypted profile keeps.
//!
//! Every secret of an outgoing file derives from one random seed the profile keeps until the
//! file is sent, so an upload cut by a lost connection or a `kill -9` goes on with the same
//! log, keys and relay message ids, and the relay stores a re-posted chunk once.

use blake2::digest::{KeyInit as _, Mac as _};
use blake2::{Blake2sMac256, Digest as _};
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use pigeon_e2ee::content::{Attachment, MAX_CHUNK};
use pigeon_proto::auth::SigningKey;
use pigeon_wire::msg::MailboxId;
use zeroize::Zeroizing;

/// Bytes of a file per chunk (the largest an [`Attachment`] may name).
pub const CHUNK: u32 = MAX_CHUNK;

/// The AEAD tag each sealed chunk carries.
pub const TAG_LEN: usize = 16;

/// The chunk index in front of each relay message.
const INDEX_LEN: usize = 4;

/// Why a chunk or file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A relay message that is not a chunk of this file.
    #[error("a chunk is malformed: {0}")]
    BadChunk(&'static str),
    /// The chunk did not open under the file's key.
    #[error("chunk {0} does not open under the file's key (damaged, or not from the sender)")]
    Forged(u64),
    /// All chunks opened, and the whole is not what the sender described.
    #[error("the file's SHA-256 does not match what the sender sent")]
    WrongHash,
    /// The description itself is unusable.
    #[error("the file's description is invalid: {0}")]
    Description(&'static str),
}

/// The secrets of one outgoing file, all from one seed.
pub struct FileSecrets {
    seed: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for FileSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileSecrets(..)")
    }
}

impl FileSecrets {
    /// The secrets made from `seed` (32 random bytes the caller keeps until the file is sent).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            seed: Zeroizing::new(seed),
        }
    }

    fn derive(&self, label: &[u8], index: u64) -> [u8; 32] {
        // Keyed BLAKE2s: a PRF under the seed, one label per use.
        let mut mac = <Blake2sMac256 as blake2::digest::KeyInit>::new_from_slice(&self.seed[..])
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid BLAKE2s key"));
        mac.update(b"pigeon file v1\0");
        mac.update(label);
        mac.update(&index.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The key the chunks are sealed under.
    pub fn key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.derive(b"key", 0))
    }

    /// The id of the log the chunks go to.
    pub fn blob_id(&self) -> MailboxId {
        MailboxId(self.derive(b"log id", 0))
    }

    /// The capability the chunks are posted with, and that readers get once it is retired.
    pub fn read_cap(&self) -> [u8; 32] {
        self.derive(b"post", 0)
    }

    /// The capability that replaces it once every chunk is there; nobody ever holds it
    /// (made here only so a repeated seal asks for the same change).
    pub fn sealed_cap(&self) -> [u8; 32] {
        self.derive(b"sealed", 0)
    }

    /// The key that owns the log (creates it and retires the capability).
    pub fn owner(&self) -> SigningKey {
        SigningKey::from_bytes(&self.derive(b"owner", 0))
    }

    /// The relay message id of chunk `index`: a re-post after a lost answer is the same
    /// message, stored once.
    pub fn chunk_message_id(&self, index: u64) -> [u8; 16] {
        let full = self.derive(b"chunk", index);
        let mut id = [0; 16];
        id.copy_from_slice(&full[..16]);
        id
    }
}

/// How a file of `size` bytes is cut into chunks of `chunk_size`: a chunk's range and
/// whether it is the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The file's length.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_size: u32,
}

impl Layout {
    /// The layout an attachment describes.
    ///
    /// # Errors
    /// [`FileError::Description`] for a size or chunk size out of range.
    pub fn of(a: &Attachment) -> Result<Self, FileError> {
        if a.size == 0 || a.size > pigeon_e2ee::content::MAX_ATTACHMENT {
            return Err(FileError::Description("its size is out of range"));
        }
        if !(pigeon_e2ee::content::MIN_CHUNK..=MAX_CHUNK).contains(&a.chunk_size) {
            return Err(FileError::Description("its chunk size is out of range"));
        }
        Ok(Self {
            size: a.size,
            chunk_size: a.chunk_size,
        })
    }

    /// How many chunks.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// The file bytes of chunk `index`.
    pub fn plain_len(&self, index: u64) -> usize {
        let start = index * u64::from(self.chunk_size);
        let len = self
            .size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size));
        usize::try_from(len).unwrap_or(0)
    }

    /// Where chunk `index` starts in the file.
    pub fn plain_offset(&self, index: u64) -> u64 {
        index * u64::from(self.chunk_size)
    }

    /// Where sealed chunk `index` starts in the file kept on the device.
    pub fn sealed_offset(&self, index: u64) -> u64 {
        index * (u64::from(self.chunk_size) + TAG_LEN as u64)
    }

    /// The length of the file of sealed chunks kept on the device.
    pub fn sealed_size(&self) -> u64 {
        self.size + self.chunks() * TAG_LEN as u64
    }

    fn nonce(&self, index: u64) -> [u8; 12] {
        let mut n = [0; 12];
        n[..8].copy_from_slice(&index.to_be_bytes());
        n[8] = u8::from(index + 1 == self.chunks());
        n
    }

    fn aad(&self) -> [u8; 20] {
        let mut aad = [0; 20];
        aad[..8].copy_from_slice(b"pgnfile1");
        aad[8..16].copy_from_slice(&self.size.to_be_bytes());
        aad[16..].copy_from_slice(&self.chunk_size.to_be_bytes());
        aad
    }

    /// Seals chunk `index` (its file bytes `plain`) under `key`: the bytes kept on the device.
    ///
    /// # Errors
    /// [`FileError::BadChunk`] for an index past the end or a length that does not fit it.
    pub fn seal(&self, key: &[u8; 32], index: u64, plain: &[u8]) -> Result<Vec<u8>, FileError> {
        if index >= self.chunks() || plain.len() != self.plain_len(index) {
            return Err(FileError::BadChunk(
                "its index or length does not fit the file",
            ));
        }
        let cipher = ChaCha20Poly1305::new(key.into());
        cipher
            .encrypt(
                Nonce::from_slice(&self.nonce(index)),
                Payload {
                    msg: plain,
                    aad: &self.aad(),
                },
            )
            .map_err(|_| FileError::BadChunk("sealing failed"))
    }

    /// Opens sealed chunk `index`.
    ///
    /// # Errors
    /// [`FileError::Forged`] when it does not open.
    pub fn open(&self, key: &[u8; 32], index: u64, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
        if index >= self.chunks() || sealed.len() != self.plain_len(index) + TAG_LEN {
            return Err(FileError::BadChunk(
                "its index or length does not fit the file",
            ));
        }
        let cipher = ChaCha20Poly1305::new(key.into());
        cipher
            .decrypt(
                Nonce::from_slice(&self.nonce(index)),
                Payload {
                    msg: sealed,
                    aad: &self.aad(),
                },
            )
            .map_err(|_| FileError::Forged(index))
    }

    /// The relay message for sealed chunk `index`: its index, then the sealed bytes.
    pub fn to_relay(index: u64, sealed: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_LEN + sealed.len());
        out.extend_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(sealed);
        out
    }

    /// A relay message split into its chunk index and sealed bytes, checked against the
    /// layout and opened under `key` (so nothing unauthenticated is ever written).
    ///
    /// # Errors
    /// [`FileError::BadChunk`] or [`FileError::Forged`].
    pub fn from_relay<'a>(
        &self,
        key: &[u8; 32],
        message: &'a [u8],
    ) -> Result<(u64, &'a [u8]), FileError> {
        if message.len() < INDEX_LEN + TAG_LEN {
            return Err(FileError::BadChunk("it is shorter than an index and a tag"));
        }
        let (index, sealed) = message.split_at(INDEX_LEN);
        let mut raw = [0; INDEX_LEN];
        raw.copy_from_slice(index);
        let index = u64::from(u32::from_be_bytes(raw));
        self.open(key, index, sealed)?;
        Ok((index, sealed))
    }
}

/// Which chunks of a download are on the device: a bitmap the profile keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    bits: Vec<u8>,
    chunks: u64,
}

impl Received {
    /// None of `chunks` yet.
    pub fn new(chunks: u64) -> Self {
        Self {
            bits: vec![0; usize::try_from(chunks.div_ceil(8)).unwrap_or(0)],
            chunks,
        }
    }

    /// The bitmap as kept; one of the wrong length starts over.
    pub fn from_bytes(chunks: u64, bytes: &[u8]) -> Self {
        let mut r = Self::new(chunks);
        if bytes.len() == r.bits.len() {
            r.bits.copy_from_slice(bytes);
        }
        r
    }

    /// The bitmap to keep.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Marks `index` received; false when it was already.
    pub fn mark(&mut self, index: u64) -> bool {
        let (byte, bit) = (usize::try_from(index / 8).unwrap_or(usize::MAX), index % 8);
        match self.bits.get_mut(byte) {
            Some(b) if index < self.chunks && *b & (1 << bit) == 0 => {
                *b |= 1 << bit;
                true
            }
            _ => false,
        }
    }

    /// How many chunks are here.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Whether every chunk is here.
    pub fn complete(&self) -> bool {
        self.count() == self.chunks
    }
}

/// A running SHA-256 of a file, for [`Attachment::sha256`].
#[derive(Default)]
pub struct FileHash(sha2::Sha256);

impl FileHash {
    /// Adds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl std::fmt::Debug for FileHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileHash(..)")
    }
}

/// A file name a peer sent, made safe to save under and to show: no directories, no control
/// characters, no leading dot, at most 120 characters; `file` when nothing is left.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .map(|c| {
            if matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let short: String = trimmed.chars().take(120).collect();
    if short.is_empty() {
        "file".to_owned()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: u64) -> Layout {
        Layout {
            size,
            chunk_size: 4096,
        }
    }

    #[test]
    fn chunks_open_only_at_their_place_under_their_key() {
        let l = layout(10_000);
        assert_eq!(l.chunks(), 3);
        assert_eq!(l.plain_len(2), 10_000 - 8192);
        let key = [7; 32];
        let plain = vec![1u8; 4096];
        let sealed = l.seal(&key, 1, &plain).expect("seal");
        assert_eq!(l.open(&key, 1, &sealed).expect("open"), plain);
        // Moved to another place, under another key, or changed: refused.
        assert_eq!(l.open(&key, 0, &sealed), Err(FileError::Forged(0)));
        assert_eq!(l.open(&[8; 32], 1, &sealed), Err(FileError::Forged(1)));
        let mut changed = sealed.clone();
        changed[5] ^= 1;
        assert_eq!(l.open(&key, 1, &changed), Err(FileError::Forged(1)));
        // The same chunk in a file of another length (a cut file) does not open either.
        assert!(layout(8192).open(&key, 1, &sealed).is_err());
        let message = Layout::to_relay(1, &sealed);
        assert_eq!(
            l.from_relay(&key, &message).expect("parse"),
            (1, &sealed[..])
        );
        assert!(matches!(
            l.from_relay(&key, &message[..10]),
            Err(FileError::BadChunk(_))
        ));
        let mut past = message.clone();
        past[..4].copy_from_slice(&9u32.to_be_bytes());
        assert!(matches!(
            l.from_relay(&key, &past),
            Err(FileError::BadChunk(_))
        ));
    }

    #[test]
    fn the_last_chunk_is_marked_so_a_file_cannot_be_cut_short() {
        let key = [1; 32];
        let l = layout(8192);
        let first = l.seal(&key, 0, &[0; 4096]).expect("seal");
        // A file one chunk long, whose only chunk would be the last, refuses a chunk sealed as
        // the first of two.
        let short = Layout {
            size: 4096,
            chunk_size: 4096,
        };
        assert!(short.open(&key, 0, &first).is_err());
    }

    #[test]
    fn secrets_come_from_the_seed_and_differ_by_use() {
        let a = FileSecrets::from_seed([3; 32]);
        let b = FileSecrets::from_seed([3; 32]);
        assert_eq!(a.blob_id(), b.blob_id());
        assert_eq!(a.chunk_message_id(5), b.chunk_message_id(5));
        assert_ne!(a.chunk_message_id(5), a.chunk_message_id(6));
        assert_ne!(a.read_cap(), a.sealed_cap());
        assert_ne!(&a.blob_id().0, &*a.key());
        let c = FileSecrets::from_seed([4; 32]);
        assert_ne!(a.blob_id(), c.blob_id());
    }

    #[test]
    fn the_received_bitmap_counts_each_chunk_once() {
        let mut r = Received::new(10);
        assert!(r.mark(9));
        assert!(!r.mark(9));
        assert!(!r.mark(10));
        assert_eq!(r.count(), 1);
        for i in 0..10 {
            r.mark(i);
        }
        assert!(r.complete());
        let kept = Received::from_bytes(10, r.as_bytes());
        assert!(kept.complete());
        assert_eq!(Received::from_bytes(10, &[0xff]).count(), 0);
    }

    #[test]
    fn peer_file_names_are_made_safe() {
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("C:\\x\\evil.exe"), "evil.exe");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(
            safe_file_name("a\u{1b}[31mb\u{202e}gpj.exe"),
            "a[31mbgpj.exe"
        );
        assert_eq!(safe_file_name("..."), "file");
        assert_eq!(safe_file_name("photo: 1.jpg"), "photo_ 1.jpg");
        assert_eq!(safe_file_name(&"x".repeat(300)).len(), 120);
    }
}
