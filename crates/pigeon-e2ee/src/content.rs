//! What travels inside MLS: the `Content` a person sends, padded to a size bucket, and the
//! `Envelope` that carries MLS messages through a relay mailbox.
//!
//! Padding happens before encryption, so the ciphertext a relay stores reveals only which
//! bucket a message fell into, not its length. The padded form is
//! `u32 length (big endian) ‖ Content protobuf ‖ zero bytes`; parsing insists the padding is
//! all zeros and the total is exactly a bucket, so a sender cannot smuggle bytes past it.

use prost::Message as _;

/// Plaintext sizes after padding. The last bucket leaves room for MLS framing, the AEAD tag
/// and the envelope inside the relay's 64 KiB ciphertext limit.
pub const BUCKETS: [usize; 5] = [256, 1024, 4096, 16 * 1024, 60 * 1024];

/// Longest text one message may carry, in bytes of UTF-8.
pub const MAX_TEXT: usize = 48 * 1024;

/// Length of the sender-chosen id of a [`Content`].
pub const CONTENT_ID_LEN: usize = 16;

/// Largest file one [`Attachment`] may describe (100 MiB).
pub const MAX_ATTACHMENT: u64 = 100 * 1024 * 1024;

/// Largest thumbnail an [`Attachment`] may carry inside the message.
pub const MAX_THUMBNAIL: usize = 24 * 1024;

/// Longest file name an [`Attachment`] may carry, in bytes of UTF-8.
pub const MAX_FILE_NAME: usize = 255;

const LEN_PREFIX: usize = 4;

/// One unit of conversation, chosen by the sender and seen only by the group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Content {
    /// Random id the sender chose; receivers de-duplicate and acknowledge with it.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// The sender's clock when it was written, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub sent_at_ms: u64,
    /// What it says.
    #[prost(oneof = "body::Body", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub body: Option<body::Body>,
}

/// The kinds of [`Content`].
pub mod body {
    /// What a [`super::Content`] says.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// A text message.
        #[prost(message, tag = "3")]
        Text(super::Text),
        /// Who the sender is and where to answer them.
        #[prost(message, tag = "4")]
        Intro(super::Intro),
        /// The sender received these contents.
        #[prost(message, tag = "5")]
        Receipt(super::Receipt),
        /// A group's log moved to new keys (sent after a removal, in the new epoch).
        #[prost(message, tag = "6")]
        LogKeys(super::LogKeys),
        /// An invitation to a group, sent to a contact inside a 1:1 conversation.
        #[prost(message, tag = "7")]
        GroupInvite(super::GroupInvite),
        /// A group's log has (or no longer has) a mirror on another relay (from an admin).
        #[prost(message, tag = "8")]
        LogMirror(super::LogMirror),
        /// In the group of one person's devices: key packages one device made for another,
        /// to be added with to conversations that device starts or joins (issue #16).
        #[prost(message, tag = "9")]
        DeviceKeys(super::DeviceKeys),
        /// In the group of one person's devices: how far one device has read, so the others
        /// show the same as read (issue #16).
        #[prost(message, tag = "10")]
        ReadMarks(super::ReadMarks),
        /// A photo, voice note or file (issue #17): its ciphertext waits on a relay, and this
        /// says where and holds the key.
        #[prost(message, boxed, tag = "11")]
        Attachment(Box<super::Attachment>),
    }
}

/// What an [`Attachment`] is, for showing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum AttachmentKind {
    /// Any file.
    File = 0,
    /// A picture (shown with its thumbnail).
    Image = 1,
    /// A recorded voice note.
    Voice = 2,
}

/// A file sent in a conversation. The file was encrypted on the sender's device under `key`
/// (fresh for this file) and posted in chunks to a log of its own on `relay`, which then
/// stopped taking posts; `read_cap` reads it. Only this message, inside MLS, links the chunks
/// to the conversation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attachment {
    /// The file's name, as the sender had it (a receiver sanitises it before saving).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its media type, as the sender's device judged it (a receiver checks before showing).
    #[prost(string, tag = "2")]
    pub mime: String,
    /// Its length in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// The 32-byte key its chunks are sealed under.
    #[prost(bytes = "vec", tag = "4")]
    pub key: Vec<u8>,
    /// SHA-256 of the whole file.
    #[prost(bytes = "vec", tag = "5")]
    pub sha256: Vec<u8>,
    /// The 32-byte id of the log holding its chunks.
    #[prost(bytes = "vec", tag = "6")]
    pub blob_id: Vec<u8>,
    /// The 32-byte capability that reads that log (retired: it posts nothing).
    #[prost(bytes = "vec", tag = "7")]
    pub read_cap: Vec<u8>,
    /// The relay holding the log (`RelayLinkPayload` bytes).
    #[prost(bytes = "vec", tag = "8")]
    pub relay: Vec<u8>,
    /// A small JPEG of a picture, shown before the file arrives (empty otherwise).
    #[prost(bytes = "vec", tag = "9")]
    pub thumbnail: Vec<u8>,
    /// Text sent with it.
    #[prost(string, tag = "10")]
    pub caption: String,
    /// Bytes of the file per chunk (the last one may be shorter).
    #[prost(uint32, tag = "11")]
    pub chunk_size: u32,
    /// An [`AttachmentKind`].
    #[prost(enumeration = "AttachmentKind", tag = "12")]
    pub kind: i32,
}

/// How far a device has read, per conversation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadMarks {
    /// One per conversation.
    #[prost(message, repeated, tag = "1")]
    pub marks: Vec<ReadMark>,
}

/// Everything up to a position of one conversation's log is read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadMark {
    /// The conversation's MLS group id (the same on every device in it).
    #[prost(bytes = "vec", tag = "1")]
    pub group_id: Vec<u8>,
    /// The log position read up to (inclusive).
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

/// Key packages for one of the person's other devices.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceKeys {
    /// The signature key, in the group of devices, of the device they are for.
    #[prost(bytes = "vec", tag = "1")]
    pub for_key: Vec<u8>,
    /// The packages.
    #[prost(message, repeated, tag = "2")]
    pub packages: Vec<DevicePackage>,
}

/// A key package and the secret that seals the Welcome made with it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DevicePackage {
    /// The serialized key package (X-Wing).
    #[prost(bytes = "vec", tag = "1")]
    pub key_package: Vec<u8>,
    /// 32 random bytes: the Welcome travels in the group of devices sealed under it, in parts
    /// whose id is derived from it.
    #[prost(bytes = "vec", tag = "2")]
    pub secret: Vec<u8>,
}

/// A text message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Text {
    /// UTF-8 text.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// Sent once each way when a conversation starts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Intro {
    /// The name the sender goes by.
    #[prost(string, tag = "1")]
    pub name: String,
    /// From the accepting side: the invitation's secret, proving it holds the link (the relay
    /// that served the key package does not).
    #[prost(bytes = "vec", tag = "2")]
    pub invite_secret: Vec<u8>,
    /// From the accepting side: where to send replies (opaque to this crate; the client
    /// encodes a relay link, mailbox id and sender capability).
    #[prost(bytes = "vec", tag = "3")]
    pub reply_to: Vec<u8>,
}

/// The keys of a group's log on its relay, after a removal rotated them: the removed
/// device cannot read this (it is sent in the epoch after the removal).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogKeys {
    /// The new member capability (post and read).
    #[prost(bytes = "vec", tag = "1")]
    pub member_cap: Vec<u8>,
    /// The new owner key (Ed25519 secret key: rotate and delete).
    #[prost(bytes = "vec", tag = "2")]
    pub owner_key: Vec<u8>,
}

/// An invitation to a group (a `pigeon://invite#…` link with the group's name in it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupInvite {
    /// The link.
    #[prost(string, tag = "1")]
    pub link: String,
}

/// Where a group log's mirror is: a second copy of the log, under the same id and keys, on
/// another relay (its link, as `RelayLinkPayload` bytes; empty: no mirror any more).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogMirror {
    /// The mirror's relay.
    #[prost(bytes = "vec", tag = "1")]
    pub relay: Vec<u8>,
    /// Posted on the mirror itself, not the home relay: the log's home moves to the relay this
    /// entry is on (its home is gone), and `relay` becomes its mirror (empty: none).
    #[prost(bool, tag = "2")]
    pub moved: bool,
    /// The key (32 random bytes) keepers authenticate the mirror's entries with, so its relay
    /// cannot make entries up.
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
}

/// Delivery receipt.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Receipt {
    /// Ids of the contents received.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub ids: Vec<Vec<u8>>,
    /// The person has also read them (sent only by those who send read receipts).
    #[prost(bool, tag = "2")]
    pub read: bool,
}

/// What one relay message carries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Its kind.
    #[prost(oneof = "envelope::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<envelope::Kind>,
}

/// The kinds of [`Envelope`].
pub mod envelope {
    /// What an [`super::Envelope`] holds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Starts a conversation: the Welcome and the first application message.
        #[prost(message, tag = "1")]
        Join(super::Join),
        /// One MLS message (application message or commit).
        #[prost(bytes = "vec", tag = "2")]
        Mls(Vec<u8>),
        /// A request to join a group, sealed under a key from the group invitation's secret.
        #[prost(bytes = "vec", tag = "3")]
        JoinRequest(Vec<u8>),
        /// A part of a group Welcome, sealed under a key from the invitation's secret (or, in
        /// a group's log, from the ticket a device that fell behind revealed).
        #[prost(message, tag = "4")]
        WelcomePart(super::WelcomePart),
        /// In a group's log: a device that fell behind asks to be taken back (a key package
        /// revealing its ticket, sealed under a key from its leaf's ticket commitment;
        /// see `pigeon_e2ee::rejoin`).
        #[prost(bytes = "vec", tag = "5")]
        Rejoin(Vec<u8>),
        /// On a log's mirror: an entry of the home copy, at its place there.
        #[prost(message, tag = "6")]
        Forwarded(super::Forwarded),
        /// On a log's mirror: an entry for the home copy from a device that cannot reach it.
        #[prost(message, tag = "7")]
        ForHome(super::ForHome),
        /// In a group's log: one part of an entry too large for one relay message (a commit
        /// that carries a large group's roster).
        #[prost(message, tag = "8")]
        Part(super::Part),
        /// Between two devices of one person while one links the other (issue #16): a
        /// message sealed under the device link's secret.
        #[prost(bytes = "vec", tag = "9")]
        Link(Vec<u8>),
    }
}

/// The first relay message of a conversation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Join {
    /// The MLS Welcome (serialized `MlsMessageOut`).
    #[prost(bytes = "vec", tag = "1")]
    pub welcome: Vec<u8>,
    /// The first application message, in the epoch the Welcome starts (carries an [`Intro`]).
    #[prost(bytes = "vec", tag = "2")]
    pub first: Vec<u8>,
}

/// One part of a sealed group Welcome (a Welcome to a large group carries the group's tree and
/// does not fit in one relay message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WelcomePart {
    /// Which part, from 0.
    #[prost(uint32, tag = "1")]
    pub part: u32,
    /// How many parts there are.
    #[prost(uint32, tag = "2")]
    pub parts: u32,
    /// The bytes of this part.
    #[prost(bytes = "vec", tag = "3")]
    pub bytes: Vec<u8>,
    /// Which Welcome the part belongs to, for one posted into a group's log (where parts of
    /// several may interleave); empty in a join request's own mailbox.
    #[prost(bytes = "vec", tag = "4")]
    pub id: Vec<u8>,
}

/// An entry of a group log's home copy, as its mirror carries it: the mirror is the home
/// copy's entries in the home copy's order, so a device reading it applies them exactly as
/// it would there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Forwarded {
    /// Its position in the home copy.
    #[prost(uint64, tag = "1")]
    pub home_seq: u64,
    /// Its relay message id in the home copy.
    #[prost(bytes = "vec", tag = "2")]
    pub message_id: Vec<u8>,
    /// The entry (an [`Envelope`]), or empty when it was too large to carry wrapped.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// Keyed BLAKE2s-256 under the mirror's key over the fields above: the mirror's relay
    /// cannot make up or renumber an entry.
    #[prost(bytes = "vec", tag = "4")]
    pub mac: Vec<u8>,
}

/// A post for a group log's home copy, left on its mirror by a device that cannot reach the
/// home relay; the device that keeps the mirror posts it there with its message id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForHome {
    /// The relay message id to post it with.
    #[prost(bytes = "vec", tag = "1")]
    pub message_id: Vec<u8>,
    /// The entry (an [`Envelope`]).
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// One part of a group log entry (an encoded [`Envelope`]) too large for one relay message.
/// The entry counts at the place of its last part in the log, and is known by that part's
/// relay message id, so every member applies it at the same place.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Part {
    /// The relay message id of the entry's last part.
    #[prost(bytes = "vec", tag = "1")]
    pub last: Vec<u8>,
    /// Which part, from 0.
    #[prost(uint32, tag = "2")]
    pub part: u32,
    /// How many parts there are.
    #[prost(uint32, tag = "3")]
    pub parts: u32,
    /// The bytes of this part.
    #[prost(bytes = "vec", tag = "4")]
    pub bytes: Vec<u8>,
}

/// Why padded content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Bigger than the largest bucket.
    #[error("the message is {0} bytes; at most {max} fit in one message", max = BUCKETS[BUCKETS.len() - 1] - LEN_PREFIX)]
    TooLarge(usize),
    /// The padded form is not a bucket size.
    #[error("padded content of {0} bytes is not one of the padding sizes")]
    NotABucket(usize),
    /// The length prefix points past the end.
    #[error("padded content claims {claimed} bytes but holds {held}")]
    BadLength {
        /// What the prefix said.
        claimed: usize,
        /// What was there.
        held: usize,
    },
    /// Non-zero bytes in the padding.
    #[error("the padding holds non-zero bytes")]
    DirtyPadding,
    /// The protobuf did not decode.
    #[error("the content does not decode: {0}")]
    Decode(String),
    /// Decoded, but breaks a rule.
    #[error("the content is invalid: {0}")]
    Invalid(&'static str),
}

/// The smallest bucket that holds `len` bytes, if any.
pub fn bucket_for(len: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|b| *b >= len)
}

impl Content {
    /// Encodes and pads to the smallest bucket that fits.
    ///
    /// # Errors
    /// [`ContentError::TooLarge`] when no bucket fits.
    pub fn pad(&self) -> Result<Vec<u8>, ContentError> {
        let body = self.encode_to_vec();
        let total =
            bucket_for(body.len() + LEN_PREFIX).ok_or(ContentError::TooLarge(body.len()))?;
        let len = u32::try_from(body.len()).map_err(|_| ContentError::TooLarge(body.len()))?;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        out.resize(total, 0);
        Ok(out)
    }

    /// Parses padded content and checks it.
    ///
    /// # Errors
    /// [`ContentError`] saying what is wrong.
    pub fn unpad(padded: &[u8]) -> Result<Self, ContentError> {
        if !BUCKETS.contains(&padded.len()) {
            return Err(ContentError::NotABucket(padded.len()));
        }
        let (prefix, rest) = padded.split_at(LEN_PREFIX);
        let mut len = [0u8; LEN_PREFIX];
        len.copy_from_slice(prefix);
        let claimed = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if claimed > rest.len() {
            return Err(ContentError::BadLength {
                claimed,
                held: rest.len(),
            });
        }
        let (body, padding) = rest.split_at(claimed);
        if padding.iter().any(|b| *b != 0) {
            return Err(ContentError::DirtyPadding);
        }
        let content = Self::decode(body).map_err(|e| ContentError::Decode(e.to_string()))?;
        content.check()?;
        Ok(content)
    }

    fn check(&self) -> Result<(), ContentError> {
        if self.id.len() != CONTENT_ID_LEN {
            return Err(ContentError::Invalid("the content id is not 16 bytes"));
        }
        match &self.body {
            None => Err(ContentError::Invalid("the content has no body")),
            Some(body::Body::Text(t)) if t.text.len() > MAX_TEXT => {
                Err(ContentError::Invalid("the text is too long"))
            }
            Some(body::Body::Intro(i)) if i.name.chars().count() > 64 => Err(
                ContentError::Invalid("the name is longer than 64 characters"),
            ),
            Some(body::Body::GroupInvite(g)) if g.link.len() > 4096 => {
                Err(ContentError::Invalid("the group invitation is too long"))
            }
            Some(body::Body::LogKeys(k)) if k.member_cap.len() != 32 || k.owner_key.len() != 32 => {
                Err(ContentError::Invalid("the log keys are malformed"))
            }
            Some(body::Body::Receipt(r))
                if r.ids.len() > 1024 || r.ids.iter().any(|id| id.len() != CONTENT_ID_LEN) =>
            {
                Err(ContentError::Invalid("the receipt's ids are malformed"))
            }
            Some(body::Body::Attachment(a)) => a.check(),
            Some(_) => Ok(()),
        }
    }
}

/// Fewest bytes of a file per chunk an [`Attachment`] may name.
pub const MIN_CHUNK: u32 = 4096;

/// Most bytes of a file per chunk: a sealed chunk (index, file bytes, tag) fits the relay's
/// 64 KiB message.
pub const MAX_CHUNK: u32 = 65_280;

impl Attachment {
    fn check(&self) -> Result<(), ContentError> {
        let fixed = [&self.key, &self.sha256, &self.blob_id, &self.read_cap];
        if fixed.iter().any(|f| f.len() != 32) {
            return Err(ContentError::Invalid(
                "an attachment's key, hash, id or capability is not 32 bytes",
            ));
        }
        if self.size == 0 || self.size > MAX_ATTACHMENT {
            return Err(ContentError::Invalid(
                "an attachment is empty or larger than 100 MiB",
            ));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(ContentError::Invalid(
                "an attachment's chunk size is out of range",
            ));
        }
        if self.name.is_empty() || self.name.len() > MAX_FILE_NAME || self.mime.len() > 127 {
            return Err(ContentError::Invalid(
                "an attachment's name or media type is empty or too long",
            ));
        }
        if self.thumbnail.len() > MAX_THUMBNAIL || self.caption.len() > 4096 {
            return Err(ContentError::Invalid(
                "an attachment's thumbnail or caption is too long",
            ));
        }
        if self.relay.is_empty() || self.relay.len() > 2048 {
            return Err(ContentError::Invalid(
                "an attachment's relay is missing or too long",
            ));
        }
        if AttachmentKind::try_from(self.kind).is_err() {
            return Err(ContentError::Invalid("an attachment's kind is unknown"));
        }
        Ok(())
    }

    /// How many chunks the file is in.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Content {
        Content {
            id: vec![7; 16],
            sent_at_ms: 1,
            body: Some(body::Body::Text(Text { text: s.to_owned() })),
        }
    }

    #[test]
    fn pads_to_buckets_and_round_trips() {
        for (len, bucket) in [
            (0, 256),
            (200, 256),
            (300, 1024),
            (5000, 16384),
            (40000, 61440),
        ] {
            let c = text(&"x".repeat(len));
            let padded = c.pad().expect("pad");
            assert_eq!(padded.len(), bucket, "text of {len}");
            assert_eq!(Content::unpad(&padded).expect("unpad"), c);
        }
        assert!(matches!(
            text(&"x".repeat(70_000)).pad(),
            Err(ContentError::TooLarge(_))
        ));
    }

    #[test]
    fn refuses_malformed_padding() {
        let padded = text("hi").pad().expect("pad");
        assert_eq!(
            Content::unpad(&padded[..255]),
            Err(ContentError::NotABucket(255))
        );
        let mut dirty = padded.clone();
        dirty[200] = 1;
        assert_eq!(Content::unpad(&dirty), Err(ContentError::DirtyPadding));
        let mut long = padded.clone();
        long[..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            Content::unpad(&long),
            Err(ContentError::BadLength { .. })
        ));
        let mut garbage = vec![0u8; 256];
        garbage[3] = 5;
        garbage[4..9].copy_from_slice(&[0xff; 5]);
        assert!(matches!(
            Content::unpad(&garbage),
            Err(ContentError::Decode(_))
        ));
        let mut bad_file = text("");
        bad_file.body = Some(body::Body::Attachment(Box::new(Attachment {
            name: "cat.jpg".into(),
            size: 10,
            key: vec![1; 32],
            sha256: vec![2; 32],
            blob_id: vec![3; 32],
            read_cap: vec![4; 31],
            relay: vec![5; 40],
            chunk_size: MAX_CHUNK,
            ..Attachment::default()
        })));
        assert!(matches!(
            Content::unpad(&bad_file.pad().expect("pad")),
            Err(ContentError::Invalid(_))
        ));
        if let Some(body::Body::Attachment(a)) = &mut bad_file.body {
            a.read_cap.push(4);
        }
        assert!(Content::unpad(&bad_file.pad().expect("pad")).is_ok());
        let mut no_id = text("hi");
        no_id.id.clear();
        assert!(matches!(
            Content::unpad(&no_id.pad().expect("pad")),
            Err(ContentError::Invalid(_))
        ));
    }
}
