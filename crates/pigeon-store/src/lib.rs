//! Relay storage: anonymous mailboxes and key-package slots.
//!
//! [`MailboxStore`] is the seam between the relay and whatever keeps its data durable. The
//! embedded backend ([`FjallStore`]) keeps everything on one machine; a NATS JetStream backend
//! for scale-out implements the same trait and must pass the same tests: the conformance suite
//! in `pigeon_store::conformance` (feature `conformance`), which the embedded backend's tests
//! instantiate with `mailbox_store_conformance!`.
//!
//! A mailbox is one of two kinds ([`MailboxKind`]):
//! * an **inbox**, a one-way queue: its owner reads it, and what it acknowledges is deleted;
//! * a **log**, a group's shared history: everyone holding the member capability posts to it
//!   and reads it from a position of their own; acknowledgements delete nothing, and messages
//!   stay until they expire. Its owner may replace the member capability
//!   ([`MailboxStore::update_mailbox`]); the replaced one is *retired*: it still reads the log
//!   up to the last message before the replacement and posts nothing more.
//!
//! Promises every backend keeps:
//! * [`MailboxStore::append`] returns only once the messages are durable (fsync'd, with group
//!   commit across concurrent callers). What it acknowledged survives `kill -9`; so does every
//!   other change it answered (creation, update, ack, deletion).
//! * Retries are de-duplicated by (mailbox, client message id) for as long as the message could
//!   still be stored (the expiry window), even after it was acknowledged and deleted.
//! * Per-mailbox order: sequence numbers rise strictly in the order appends were made durable,
//!   and are never reused.
//! * Logs keep every message until it expires, whoever acknowledged it. A log's capability
//!   check is made in that same durable order: nothing posted with a capability is stored after
//!   the update that retired it, so a retired capability's `read_until` covers everything it
//!   posted.
//! * Limits (message size, mailbox and log depth, key packages per slot) are refused with a
//!   [`StoreError`] that maps to a stable wire error code.
//! * Idle mailboxes and key-package slots go: one that nobody renewed
//!   ([`MailboxStore::renew`]; creating a mailbox and publishing to a slot count too) for
//!   [`Limits::idle_secs`] is deleted by [`MailboxStore::expire`] with everything it holds.
//!   Renewal is kept by the day, so a renewal costs a write at most once a day per mailbox.
//! * The store sees only ciphertext, random ids, public keys and capability hashes. It never
//!   logs payloads or ids.
//!
//! Time is passed in explicitly as Unix seconds (`now`); no backend reads the clock.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod fjall_store;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use fjall_store::{FjallOptions, FjallStore};

use pigeon_wire::ErrorCode;
pub use pigeon_wire::msg::{MailboxId, MailboxKind, MessageId};
use std::future::Future;

/// Most retired capabilities a log remembers; an update past it forgets the oldest.
pub const MAX_RETIRED_CAPS: usize = 8;

/// What the store keeps about a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxRecord {
    /// Inbox or log.
    pub kind: MailboxKind,
    /// Ed25519 public key that may subscribe, ack and delete (an inbox), or update and delete
    /// (a log: its owner key).
    pub recipient_key: [u8; 32],
    /// BLAKE2s-256 of the sender capability (a log: of its current member capability).
    pub sender_cap_hash: [u8; 32],
    /// Unix seconds of creation.
    pub created_at: u64,
    /// A log's retired member capabilities, oldest first, at most [`MAX_RETIRED_CAPS`].
    /// Always empty for an inbox, and ignored when creating a mailbox.
    pub retired_caps: Vec<RetiredCap>,
}

impl MailboxRecord {
    /// A new mailbox's record.
    pub fn new(
        kind: MailboxKind,
        recipient_key: [u8; 32],
        sender_cap_hash: [u8; 32],
        created_at: u64,
    ) -> Self {
        Self {
            kind,
            recipient_key,
            sender_cap_hash,
            created_at,
            retired_caps: Vec::new(),
        }
    }

    /// Whether `other` describes the same mailbox as far as its creator chose it (kind, key,
    /// capability): a create request that matches is a retry.
    pub fn same_creation(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.recipient_key == other.recipient_key
            && self.sender_cap_hash == other.sender_cap_hash
    }

    /// The retired capability with this hash, if the log has one.
    pub fn retired(&self, cap_hash: &[u8; 32]) -> Option<&RetiredCap> {
        self.retired_caps.iter().find(|r| &r.cap_hash == cap_hash)
    }
}

/// What [`MailboxStore::renew`] keeps alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Renewal {
    /// A mailbox (inbox or log).
    Mailbox(MailboxId),
    /// A key-package slot.
    Slot([u8; 32]),
}

/// What one [`MailboxStore::expire`] sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Messages past the expiry (of mailboxes that stay).
    pub messages: u64,
    /// Mailboxes idle past [`Limits::idle_secs`], deleted with their messages.
    pub mailboxes: u64,
    /// Key-package slots idle past [`Limits::idle_secs`], deleted with their packages.
    pub slots: u64,
}

/// A log's member capability that an update replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetiredCap {
    /// BLAKE2s-256 of the capability.
    pub cap_hash: [u8; 32],
    /// The last sequence number assigned before it was replaced: it reads up to here.
    pub read_until: u64,
}

/// One message to append.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Target mailbox (must exist).
    pub mailbox: MailboxId,
    /// Client-chosen id for de-duplication.
    pub message_id: MessageId,
    /// Opaque ciphertext.
    pub ciphertext: Vec<u8>,
    /// Unix seconds now; stored as the receive time and starts the expiry clock.
    pub now: u64,
    /// Hash of the capability it was posted with, when the caller checked one. A log takes it
    /// only if it is the log's current capability *when the message is stored*, so that an
    /// update racing the post cannot let a retired capability post past its `read_until`.
    /// Inboxes ignore it.
    pub cap_hash: Option<[u8; 32]>,
    /// The sender says no earlier copy of this message id can exist (it never sent it before).
    /// A store may then skip looking for one, but still records the id, so that a later retry
    /// is caught. A wrong claim may store the message twice, under two sequence numbers.
    pub first_attempt: bool,
}

/// The outcome of appending one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number in the mailbox.
    pub seq: u64,
    /// True when the message id was already stored; nothing new was written.
    pub duplicate: bool,
}

/// A message read back from a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sequence number in the mailbox.
    pub seq: u64,
    /// Client-chosen id.
    pub message_id: MessageId,
    /// Unix seconds when stored.
    pub received_at: u64,
    /// Opaque ciphertext.
    pub ciphertext: Vec<u8>,
}

/// A key package taken from a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenKeyPackage {
    /// The serialized key package.
    pub data: Vec<u8>,
    /// True for the slot's last-resort package, which stays in the slot.
    pub last_resort: bool,
}

/// How the store outcome of creating a mailbox went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new mailbox.
    Created,
    /// It existed already with the same recipient key and capability hash (a retry).
    AlreadyExists,
}

/// Limits a store enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest ciphertext accepted.
    pub max_ciphertext: usize,
    /// Most messages one inbox may hold.
    pub max_depth: u64,
    /// Most messages one log may hold (logs keep messages until they expire).
    pub max_log_depth: u64,
    /// Seconds after which an unacknowledged message (and its de-duplication record) expires.
    pub expiry_secs: u64,
    /// Seconds after which a mailbox or key-package slot that nobody renewed is deleted
    /// (counted in whole days: renewals are kept by the day).
    pub idle_secs: u64,
    /// Most one-time key packages one slot may hold.
    pub max_key_packages: usize,
    /// Largest key package accepted.
    pub max_key_package_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ciphertext: pigeon_wire::MAX_CIPHERTEXT,
            max_depth: 10_000,
            max_log_depth: 100_000,
            expiry_secs: 21 * 24 * 3600,
            idle_secs: 60 * 24 * 3600,
            max_key_packages: 200,
            max_key_package_len: 16 * 1024,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The mailbox does not exist.
    #[error("no such mailbox")]
    NoSuchMailbox,
    /// Another mailbox with that id exists.
    #[error("a mailbox with that id exists under another key")]
    MailboxExists,
    /// Ciphertext over the limit.
    #[error("message of {len} bytes is over the limit of {limit}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Mailbox at its depth limit.
    #[error("mailbox holds its limit of {limit} messages")]
    MailboxFull {
        /// The limit.
        limit: u64,
    },
    /// Slot owned by another key.
    #[error("key-package slot belongs to another key")]
    SlotOwnedElsewhere,
    /// The capability does not open this log (it is neither current nor retired).
    #[error("the capability does not open this log")]
    BadCapability,
    /// The capability was the log's, and an update replaced it.
    #[error("the capability was replaced by an update of the log")]
    CapabilityRetired,
    /// The operation applies to logs only, and the mailbox is an inbox.
    #[error("the mailbox is an inbox; {op} applies to logs only")]
    NotALog {
        /// Which operation.
        op: &'static str,
    },
    /// Too many key packages, or one too large.
    #[error("key packages over the limit: {detail}")]
    KeyPackageLimit {
        /// Which limit.
        detail: String,
    },
    /// The backend failed (IO, corruption, shut down). Nothing acknowledged was lost.
    #[error("storage backend failed during {op}: {reason}")]
    Backend {
        /// Which operation.
        op: &'static str,
        /// The backend's description (never contains payloads).
        reason: String,
    },
}

impl StoreError {
    /// The wire error code to send to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoSuchMailbox => ErrorCode::NoSuchMailbox,
            Self::MailboxExists => ErrorCode::MailboxExists,
            Self::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            Self::MailboxFull { .. } => ErrorCode::MailboxFull,
            Self::SlotOwnedElsewhere => ErrorCode::SlotOwnedElsewhere,
            Self::BadCapability => ErrorCode::BadCapability,
            Self::CapabilityRetired => ErrorCode::CapabilityRetired,
            Self::NotALog { .. } => ErrorCode::BadRequest,
            Self::KeyPackageLimit { .. } => ErrorCode::TooManyKeyPackages,
            Self::Backend { .. } => ErrorCode::StoreUnavailable,
        }
    }
}

/// Durable storage for relay mailboxes and key-package slots.
///
/// All methods may be called concurrently from many tasks. Futures are `Send`.
pub trait MailboxStore: Send + Sync + 'static {
    /// Creates a mailbox; idempotent for the same kind, key and capability hash
    /// ([`MailboxRecord::same_creation`]). A new mailbox starts without retired capabilities.
    fn create_mailbox(
        &self,
        id: MailboxId,
        record: MailboxRecord,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send;

    /// The mailbox's record, if it exists. Hot path: backends cache it.
    fn mailbox(
        &self,
        id: MailboxId,
    ) -> impl Future<Output = Result<Option<MailboxRecord>, StoreError>> + Send;

    /// Appends messages, each to its own mailbox, and returns once all are durable. One result
    /// per input, in input order; a failure of one does not fail the others.
    ///
    /// A message to a log whose [`NewMessage::cap_hash`] is not the log's current capability
    /// is refused ([`StoreError::CapabilityRetired`] for a retired one, else
    /// [`StoreError::BadCapability`]); a log holds at most [`Limits::max_log_depth`] messages.
    fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> impl Future<Output = Vec<Result<Appended, StoreError>>> + Send;

    /// Up to `max_messages` messages (and at most about `max_bytes` of ciphertext, but always at
    /// least one if any is pending) with sequence numbers greater than `after_seq`, in order.
    fn read(
        &self,
        id: MailboxId,
        after_seq: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;

    /// How many messages the mailbox holds.
    fn pending(&self, id: MailboxId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// How many messages the mailbox holds with `after_seq < seq <= through_seq`, as
    /// [`MailboxStore::read`] would return them: what a log subscriber starting after
    /// `after_seq` (with a retired capability: reading through its `read_until`) has waiting.
    fn pending_after(
        &self,
        id: MailboxId,
        after_seq: u64,
        through_seq: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Replaces a log's member capability hash with `new_cap_hash`, and its owner key with
    /// `new_owner_key` if given, durably. The capability replaced becomes retired with
    /// `read_until` = the last sequence number assigned so far, which is returned; a log keeps
    /// the newest [`MAX_RETIRED_CAPS`] retired capabilities. A capability made current again
    /// is no longer retired.
    ///
    /// Idempotent: when `new_cap_hash` is current already, nothing is retired (the owner key
    /// is still set if given) and the answer is the `read_until` of the newest retired
    /// capability, or 0 if there is none.
    ///
    /// # Errors
    /// [`StoreError::NotALog`] for an inbox, [`StoreError::NoSuchMailbox`], or the backend's.
    fn update_mailbox(
        &self,
        id: MailboxId,
        new_owner_key: Option<[u8; 32]>,
        new_cap_hash: [u8; 32],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes the given messages durably; returns how many were still stored. On a log it
    /// deletes nothing and returns 0 (logs keep messages until they expire).
    fn ack(
        &self,
        id: MailboxId,
        seqs: Vec<u64>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes a mailbox and its messages durably; false if it did not exist.
    fn delete_mailbox(
        &self,
        id: MailboxId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds one-time key packages (and replaces the last-resort one when given) in a slot, which
    /// the first call binds to `owner_key`, and renews the slot as of `now`. Returns the
    /// one-time packages now held.
    fn publish_key_packages(
        &self,
        slot: [u8; 32],
        owner_key: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Takes one one-time key package (removing it durably), or else returns the last-resort one.
    fn take_key_package(
        &self,
        slot: [u8; 32],
    ) -> impl Future<Output = Result<Option<TakenKeyPackage>, StoreError>> + Send;

    /// Keeps a mailbox or slot from expiring for [`Limits::idle_secs`] after `now` (by the
    /// day: a second renewal on the same day writes nothing). False if it does not exist.
    fn renew(
        &self,
        what: Renewal,
        now: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes messages (and de-duplication records) older than the expiry, of inboxes and logs
    /// alike, and mailboxes and slots last renewed (or created) more than
    /// [`Limits::idle_secs`] before `now`, with all they hold.
    fn expire(&self, now: u64) -> impl Future<Output = Result<Expired, StoreError>> + Send;

    /// For a store that several relay nodes share: what *other* nodes do to mailboxes, as
    /// they do it (repeats possible, bounded: a wake-up lost to a full queue is taken up by
    /// the next one). The relay wakes its subscribers of a mailbox with new messages, which
    /// read from the store, and has them look again at one whose record changed. `None` (the
    /// default) for a store one node has to itself; it may be taken once.
    fn news(&self) -> Option<tokio::sync::mpsc::Receiver<News>> {
        None
    }
}

/// What another relay node did to a mailbox (see [`MailboxStore::news`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum News {
    /// It stored new messages in it.
    Messages(MailboxId),
    /// It replaced the mailbox's capability (a log's member capability retired) or deleted
    /// the mailbox: subscriptions to it must look at its record again. A lookup after this
    /// arrives sees the change.
    Changed(MailboxId),
}
