//! End-to-end encryption for Pigeonpost: every conversation is an MLS group (RFC 9420).
//!
//! * The default ciphersuite is the X-Wing post-quantum hybrid
//!   (`MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519`, provisional code point 0x004D) through
//!   `openmls` with the libcrux provider. The classic suite 0x0003 is used only when a peer
//!   offers nothing better ([`Suite`]).
//! * A 1:1 conversation is a two-member group ([`Group`]). Each conversation has its own
//!   signature key ([`Identity`]), so key packages and credentials seen by relays cannot link
//!   one person's conversations. Credentials carry no name; names travel inside the group.
//! * What people send is a protobuf [`Content`] padded to a size bucket before encryption.
//! * The crate does no IO. State lives in whatever openmls `StorageProvider` the caller
//!   supplies through [`Provider`]: the client gives it its encrypted SQLite profile and wraps
//!   each operation in a transaction, so a failed or interrupted operation changes nothing.

pub mod content;
mod crypto;
mod group;
mod members;
pub mod rejoin;
pub mod roster;
mod verify;

pub use content::{Content, ContentError, Envelope};
pub use crypto::{CryptoProvider, MemoryProvider};
pub use group::{Group, Identity, Opened, forget_key_package};
pub use members::{
    Change, Changes, Committed, GROUP_PAST_EPOCHS, Rejoin, Restore, key_package_signature_key,
    stored_state,
};
pub use rejoin::{
    LeafExtras, LeafSecret, RestoreKind, RestoreSecret, SecretKind, Ticket, TicketKind,
};
pub use roster::{Roster, RosterEntry};
pub use verify::safety_number;

use openmls::prelude::Ciphersuite;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// A ciphersuite Pigeonpost speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Suite {
    /// X-Wing (X25519 + ML-KEM-768) hybrid KEM, ChaCha20-Poly1305, SHA-256, Ed25519. Default.
    XWing,
    /// X25519, ChaCha20-Poly1305, SHA-256, Ed25519 (0x0003): only for peers without X-Wing.
    Classic,
}

impl Suite {
    /// Every suite, most preferred first.
    pub const PREFERENCE: [Suite; 2] = [Suite::XWing, Suite::Classic];

    /// The MLS ciphersuite.
    pub fn mls(self) -> Ciphersuite {
        match self {
            Self::XWing => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Self::Classic => Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        }
    }

    /// The IANA code point.
    pub fn code(self) -> u16 {
        u16::from(self.mls())
    }

    /// The suite with this code point, if Pigeonpost speaks it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::PREFERENCE.into_iter().find(|s| s.code() == code)
    }

    /// A short name for people.
    pub fn name(self) -> &'static str {
        match self {
            Self::XWing => "X-Wing post-quantum hybrid",
            Self::Classic => "classic X25519",
        }
    }
}

/// Why an end-to-end operation failed. Messages carry no key material or content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eeError {
    /// The crypto provider could not start (no usable randomness).
    #[error("the crypto provider could not start: {0}")]
    Provider(String),
    /// A local MLS operation failed (storage, or a bug).
    #[error("{op} failed: {reason}")]
    Mls {
        /// Which operation.
        op: &'static str,
        /// openmls's description.
        reason: String,
    },
    /// Bytes from a peer did not parse, verify or decrypt.
    #[error("a peer sent an unusable {what}: {reason}")]
    BadInput {
        /// What was expected.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A message that was already decrypted once (its key is gone).
    #[error("a message arrived a second time (replayed); its key was already used and deleted")]
    Replayed,
    /// A message from an epoch whose keys this device no longer holds, or does not hold yet.
    #[error("a message is from epoch {got} but this conversation is at epoch {current}")]
    WrongEpoch {
        /// The message's epoch.
        got: u64,
        /// The conversation's epoch.
        current: u64,
    },
    /// The key package was not signed by the key the invitation named.
    #[error(
        "the key package the relay handed out is not the inviter's (the relay or the link was tampered with)"
    )]
    NotTheInviter,
    /// The padded content inside a decrypted message was malformed.
    #[error("a decrypted message is malformed: {0}")]
    Content(#[from] ContentError),
    /// No such conversation in storage.
    #[error("no conversation state for this contact in the profile")]
    UnknownGroup,
    /// This device may not make that change (every member would refuse the commit).
    #[error("{0}")]
    NotAllowed(String),
    /// A commit from another member breaks the group's rules or does not verify: it is not
    /// applied, by this member or any other.
    #[error("a commit was refused: {0}")]
    InvalidCommit(String),
}

impl E2eeError {
    /// True when the fault lies with bytes that came from outside (a peer, the relay, the path),
    /// not with this device: the message should be dropped and the state is unchanged.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::BadInput { .. }
                | Self::Replayed
                | Self::WrongEpoch { .. }
                | Self::NotTheInviter
                | Self::Content(_)
                | Self::InvalidCommit(_)
        )
    }
}

pub(crate) fn mls<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> E2eeError {
    move |e| E2eeError::Mls {
        op,
        reason: e.to_string(),
    }
}

/// A fresh crypto provider (its randomness the operating system's).
///
/// # Errors
/// [`E2eeError::Provider`] when the system gives no randomness.
pub fn crypto() -> Result<CryptoProvider, E2eeError> {
    CryptoProvider::new().map_err(|e| E2eeError::Provider(format!("{e:?}")))
}

/// The openmls provider: libcrux crypto and the caller's storage.
pub struct Provider<'a, S> {
    crypto: &'a CryptoProvider,
    storage: S,
}

impl<'a, S> Provider<'a, S> {
    /// Pairs a crypto provider with a storage provider.
    pub fn new(crypto: &'a CryptoProvider, storage: S) -> Self {
        Self { crypto, storage }
    }
}

impl<S> std::fmt::Debug for Provider<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Provider")
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for Provider<'_, S> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = S;

    fn storage(&self) -> &S {
        &self.storage
    }

    fn crypto(&self) -> &CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &CryptoProvider {
        self.crypto
    }
}
