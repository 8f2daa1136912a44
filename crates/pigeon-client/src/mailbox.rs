//! The secrets that make a mailbox: its id, the recipient key and the sender capability.

use pigeon_proto::auth::{self, AuthError, SigningKey};
use pigeon_wire::msg::MailboxId;

/// A mailbox this client created: it can read it and give out the capability to post into it.
pub struct OwnedMailbox {
    /// Random id.
    pub id: MailboxId,
    /// Proves ownership to the relay.
    pub key: SigningKey,
    /// What senders present to post; handed out in invitations.
    pub sender_cap: [u8; 32],
}

impl std::fmt::Debug for OwnedMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedMailbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl OwnedMailbox {
    /// A fresh mailbox with random id, key and capability.
    ///
    /// # Errors
    /// If the system's random source fails.
    pub fn generate() -> Result<Self, AuthError> {
        Ok(Self {
            id: MailboxId(auth::random_bytes()?),
            key: auth::generate_signing_key()?,
            sender_cap: auth::random_bytes()?,
        })
    }

    /// What the relay keeps instead of the capability.
    pub fn cap_hash(&self) -> [u8; 32] {
        auth::cap_hash(&self.sender_cap)
    }
}
