//! Errors of the wire layer, and the stable error codes the relay sends to clients.

/// Who is at fault for a failure, and so what a person or program should do about it.
///
/// This is the shared taxonomy of STYLE.md: user interfaces show the kind in plain words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The local network failed or refused us; this is what censorship looks like.
    LocalNetwork,
    /// The relay failed or refused the request for its own reasons (overload, shutdown, store).
    Relay,
    /// The peer (the other person's client) sent something wrong.
    Peer,
    /// Bytes or input that do not parse: a bad link, file or frame.
    BadInput,
    /// The request was refused by policy: a bad capability or signature, a quota.
    Refused,
    /// A bug in Pigeonpost itself.
    Internal,
}

/// Stable numeric error codes carried in `msg::Error`. Numbers never change meaning; new codes
/// are added at the end. Unknown codes from a newer relay decode as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A code this build does not know.
    Unknown = 0,
    /// The request did not parse or misses a required field.
    BadRequest = 1,
    /// No protocol version in common.
    UnsupportedVersion = 2,
    /// The mailbox does not exist (never did, was deleted, or expired).
    NoSuchMailbox = 3,
    /// A mailbox with that id exists already under another key.
    MailboxExists = 4,
    /// The sender capability does not open this mailbox.
    BadCapability = 5,
    /// The recipient signature does not verify.
    BadSignature = 6,
    /// The ciphertext is larger than the relay accepts.
    MessageTooLarge = 7,
    /// The mailbox holds as many messages as it may; the recipient must read first.
    MailboxFull = 8,
    /// Too many requests for this capability or connection; retry later.
    RateLimited = 9,
    /// Ack or unsubscribe for a mailbox this session has not subscribed to.
    NotSubscribed = 10,
    /// The key-package slot is empty or does not exist.
    NoKeyPackage = 11,
    /// The key-package slot belongs to another key.
    SlotOwnedElsewhere = 12,
    /// The relay's store failed; nothing was changed, retry later.
    StoreUnavailable = 13,
    /// The relay is shutting down; reconnect (possibly to another relay).
    ShuttingDown = 14,
    /// Too many key packages for one slot.
    TooManyKeyPackages = 15,
    /// The log's member capability was replaced; the new one is in the log.
    CapabilityRetired = 16,
    /// This session, or the relay as a whole right now, creates no more mailboxes, logs or
    /// key-package slots; retry later (on a new connection for a session's quota).
    QuotaExceeded = 17,
}

impl ErrorCode {
    /// Every known code, in numeric order.
    pub const ALL: &'static [ErrorCode] = &[
        Self::Unknown,
        Self::BadRequest,
        Self::UnsupportedVersion,
        Self::NoSuchMailbox,
        Self::MailboxExists,
        Self::BadCapability,
        Self::BadSignature,
        Self::MessageTooLarge,
        Self::MailboxFull,
        Self::RateLimited,
        Self::NotSubscribed,
        Self::NoKeyPackage,
        Self::SlotOwnedElsewhere,
        Self::StoreUnavailable,
        Self::ShuttingDown,
        Self::TooManyKeyPackages,
        Self::CapabilityRetired,
        Self::QuotaExceeded,
    ];

    /// The code as sent on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a number from the wire; unknown numbers become [`ErrorCode::Unknown`].
    pub fn from_u32(n: u32) -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_u32() == n)
            .unwrap_or(Self::Unknown)
    }

    /// A sentence for people, without any data from the request.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "the relay reported an error this version does not know",
            Self::BadRequest => "the request was malformed",
            Self::UnsupportedVersion => "the relay speaks no protocol version this client knows",
            Self::NoSuchMailbox => "the mailbox does not exist on this relay",
            Self::MailboxExists => "a mailbox with this id already exists",
            Self::BadCapability => "the sender capability does not open this mailbox",
            Self::BadSignature => "the recipient signature is not valid",
            Self::MessageTooLarge => "the message is larger than the relay accepts",
            Self::MailboxFull => "the mailbox is full until its owner reads it",
            Self::RateLimited => "too many requests; slow down and retry",
            Self::NotSubscribed => "this connection has not subscribed to that mailbox",
            Self::NoKeyPackage => "no key package is available in that slot",
            Self::SlotOwnedElsewhere => "the key-package slot belongs to another key",
            Self::StoreUnavailable => "the relay could not reach its storage; retry later",
            Self::ShuttingDown => "the relay is shutting down; reconnect",
            Self::TooManyKeyPackages => "too many key packages for one slot",
            Self::CapabilityRetired => {
                "this capability was replaced: read the group's log for the new one"
            }
            Self::QuotaExceeded => {
                "no more mailboxes or key-package slots can be created now; retry later"
            }
        }
    }

    /// Who is at fault.
    pub fn kind(self) -> ErrorKind {
        match self {
            Self::BadRequest => ErrorKind::Internal,
            Self::Unknown
            | Self::UnsupportedVersion
            | Self::StoreUnavailable
            | Self::ShuttingDown => ErrorKind::Relay,
            Self::NoSuchMailbox | Self::MailboxExists | Self::NoKeyPackage => ErrorKind::Peer,
            Self::BadCapability
            | Self::BadSignature
            | Self::MessageTooLarge
            | Self::MailboxFull
            | Self::RateLimited
            | Self::NotSubscribed
            | Self::SlotOwnedElsewhere
            | Self::TooManyKeyPackages
            | Self::CapabilityRetired
            | Self::QuotaExceeded => ErrorKind::Refused,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::StoreUnavailable
                | Self::ShuttingDown
                | Self::MailboxFull
                | Self::QuotaExceeded
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.describe(), self.as_u32())
    }
}

/// A failure to parse or build wire bytes. Each variant says what was wrong with the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A record's length field is outside what the format allows.
    #[error("record length {len} is outside the allowed range {min}..={max}")]
    RecordLength {
        /// Length announced by the record header.
        len: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A decrypted record's inner length does not fit in the record.
    #[error("record claims {claimed} bytes of data but carries only {available}")]
    RecordData {
        /// Data length claimed by the inner header.
        claimed: usize,
        /// Bytes actually present after the header.
        available: usize,
    },
    /// A message length prefix announces more than the limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A message length prefix is not a valid varint.
    #[error("message length prefix is not a valid varint")]
    BadLength,
    /// The stream ended inside a record or message.
    #[error("stream ended {missing_hint} inside a {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Rough description of how much was missing.
        missing_hint: &'static str,
    },
    /// Protobuf decoding failed.
    #[error("malformed {what}: {reason}")]
    Protobuf {
        /// Which message type was being decoded.
        what: &'static str,
        /// prost's description of the problem.
        reason: String,
    },
    /// A field has the wrong length or is missing.
    #[error("field `{field}` of {what}: {problem}")]
    Field {
        /// Which message type.
        what: &'static str,
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}
