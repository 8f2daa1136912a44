//! Relay storage: anonymous one-way mailboxes and key-package slots.
//!
//! [`MailboxStore`] is the seam between the relay and whatever keeps its data durable. The
//! embedded backend ([`FjallStore`]) keeps everything on one machine; a NATS JetStream backend
//! for scale-out implements the same trait and must pass the same tests.
//!
//! Promises every backend keeps:
//! * [`MailboxStore::append`] returns only once the messages are durable (fsync'd, with group
//!   commit across concurrent callers). What it acknowledged survives `kill -9`.
//! * Retries are de-duplicated by (mailbox, client message id) for as long as the message could
//!   still be stored (the expiry window), even after it was acknowledged and deleted.
//! * Per-mailbox order: sequence numbers rise strictly in the order appends were made durable.
//! * Limits (message size, mailbox depth, key packages per slot) are refused with a
//!   [`StoreError`] that maps to a stable wire error code.
//! * The store sees only ciphertext, random ids and public keys. It never logs payloads or ids.
//!
//! Time is passed in explicitly as Unix seconds (`now`); no backend reads the clock.

mod fjall_store;

pub use fjall_store::{FjallOptions, FjallStore};

use pigeon_wire::ErrorCode;
pub use pigeon_wire::msg::{MailboxId, MessageId};
use std::future::Future;

/// What the store keeps about a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxRecord {
    /// Ed25519 public key that may subscribe, ack and delete.
    pub recipient_key: [u8; 32],
    /// BLAKE2s-256 of the sender capability.
    pub sender_cap_hash: [u8; 32],
    /// Unix seconds of creation.
    pub created_at: u64,
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
    /// Most messages one mailbox may hold.
    pub max_depth: u64,
    /// Seconds after which an unacknowledged message (and its de-duplication record) expires.
    pub expiry_secs: u64,
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
            expiry_secs: 21 * 24 * 3600,
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
            Self::KeyPackageLimit { .. } => ErrorCode::TooManyKeyPackages,
            Self::Backend { .. } => ErrorCode::StoreUnavailable,
        }
    }
}

/// Durable storage for relay mailboxes and key-package slots.
///
/// All methods may be called concurrently from many tasks. Futures are `Send`.
pub trait MailboxStore: Send + Sync + 'static {
    /// Creates a mailbox; idempotent for the same recipient key and capability hash (whatever
    /// the creation time).
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

    /// Deletes the given messages durably; returns how many were still stored.
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
    /// the first call binds to `owner_key`. Returns the one-time packages now held.
    fn publish_key_packages(
        &self,
        slot: [u8; 32],
        owner_key: [u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Takes one one-time key package (removing it durably), or else returns the last-resort one.
    fn take_key_package(
        &self,
        slot: [u8; 32],
    ) -> impl Future<Output = Result<Option<TakenKeyPackage>, StoreError>> + Send;

    /// Deletes messages (and de-duplication records) older than the expiry; returns how many
    /// messages went.
    fn expire(&self, now: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
