//! Taking back a device that fell behind, without taking back a stolen copy of it.
//!
//! A device falls behind for good when commits it never read expire from the group's log (it
//! was offline for weeks) or its state was restored from an old copy. Re-admitting such a
//! device must not undo post-compromise security: a copy of the device's state that an
//! attacker took before the device's last key refresh must stay out, exactly as MLS keeps it
//! out of the group's later epochs.
//!
//! The rule that gives both: **a device is taken back only with the secret behind the ticket
//! in its current leaf.** Every leaf node a Pigeonpost device makes (in a key package, or in
//! the update path of each of its commits) carries a [`TICKET_EXTENSION`] with the SHA-256
//! commitment to a fresh random secret, which only that device keeps. Only the device itself
//! changes its leaf, so the commitment in the group's tree is always the one of the device's
//! last refresh: the device that merely missed commits still holds its secret, and a copy
//! taken before that refresh holds an older one. To come back, the device sends a new key
//! package (same signature key, a new ticket) whose ticket also *reveals* the old secret,
//! sealed under a key derived from the old commitment (which only the group's members know;
//! the relay learns nothing). Any member commits a *rejoin*: the removal of the device's old
//! leaf and the add of the new key package, in one commit. Every member checks the revealed
//! secret against the removed leaf's commitment ([`crate::Group::check_rejoin`]), so a rejoin
//! without it is invalid everywhere, and the roster's rules let any member make a valid one
//! (the device keeps its roster entry: name, person, admin flag).

use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::E2eeError;

/// The private leaf-node extension type that holds a device's rejoin ticket.
pub const TICKET_EXTENSION: u16 = 0xF7A2;

/// What a kind of leaf secret is: the label its commitment is hashed under, and its name in
/// debug output (which never shows the secret).
pub trait SecretKind {
    /// Domain separation for the commitment.
    const LABEL: &'static [u8];
    /// The type's name, for `Debug`.
    const NAME: &'static str;
}

/// A 32-byte secret whose SHA-256 commitment (under its kind's label) goes into a leaf.
pub struct LeafSecret<K: SecretKind>([u8; 32], std::marker::PhantomData<K>);

/// A rejoin ticket's secret. Its commitment goes into the device's leaf; the secret stays on
/// the device until it is revealed to come back.
pub type Ticket = LeafSecret<TicketKind>;

/// A backup's secret for one conversation: what lets a device restored from the backup take
/// the place of the device that made it ([`crate::Group::check_restore`]).
///
/// Unlike a [`Ticket`], its commitment stays in the device's leaf across key refreshes (each
/// new leaf carries it forward), because the device does not keep the secret: only the backup
/// file holds it. So a thief of the device's state cannot use it, and a backup made later
/// replaces it (the older backup's secret no longer opens anything).
pub type RestoreSecret = LeafSecret<RestoreKind>;

/// The kind of [`Ticket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TicketKind;

impl SecretKind for TicketKind {
    const LABEL: &'static [u8] = b"pigeon rejoin ticket v1";
    const NAME: &'static str = "Ticket";
}

/// The kind of [`RestoreSecret`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreKind;

impl SecretKind for RestoreKind {
    const LABEL: &'static [u8] = b"pigeon restore secret v1";
    const NAME: &'static str = "RestoreSecret";
}

impl<K: SecretKind> Clone for LeafSecret<K> {
    fn clone(&self) -> Self {
        Self(self.0, std::marker::PhantomData)
    }
}

impl<K: SecretKind> PartialEq for LeafSecret<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: SecretKind> Eq for LeafSecret<K> {}

impl<K: SecretKind> std::fmt::Debug for LeafSecret<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(K::NAME)
    }
}

impl<K: SecretKind> LeafSecret<K> {
    /// A fresh secret from the provider's randomness.
    ///
    /// # Errors
    /// When there is no randomness.
    pub fn generate<P: OpenMlsProvider>(provider: &P) -> Result<Self, E2eeError> {
        provider
            .rand()
            .random_array::<32>()
            .map(Self::from_secret)
            .map_err(|e| E2eeError::Provider(format!("{e:?}")))
    }

    /// The secret with these bytes (as stored, or read from a backup).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self(secret, std::marker::PhantomData)
    }

    /// The secret, for storage.
    pub fn secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// The commitment that goes into the leaf.
    pub fn commitment(&self) -> [u8; 32] {
        Self::commitment_of(&self.0)
    }

    fn commitment_of(secret: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(K::LABEL);
        h.update(secret);
        h.finalize().into()
    }

    /// True when `reveal` is the secret behind `commitment`.
    pub(crate) fn opens(commitment: &[u8; 32], reveal: &[u8; 32]) -> bool {
        Self::commitment_of(reveal) == *commitment
    }
}

/// What a new leaf carries besides its own fresh ticket.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeafExtras<'a> {
    /// To be taken back after falling behind: the secret of the ticket in the leaf replaced.
    pub reveal: Option<&'a Ticket>,
    /// The commitment of the device's newest backup's secret, carried from leaf to leaf.
    pub restore: Option<[u8; 32]>,
    /// To take the place of a device from its backup: that backup's secret.
    pub restore_reveal: Option<&'a RestoreSecret>,
}

/// What the ticket extension holds.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct TicketExt {
    /// SHA-256 commitment to this leaf's ticket secret.
    #[prost(bytes = "vec", tag = "1")]
    commitment: Vec<u8>,
    /// In a rejoin's key package: the secret of the leaf it replaces.
    #[prost(bytes = "vec", tag = "2")]
    reveal: Vec<u8>,
    /// Commitment to the secret of the device's newest backup (empty: none).
    #[prost(bytes = "vec", tag = "3")]
    restore: Vec<u8>,
    /// In a restored device's key package: the backup's secret.
    #[prost(bytes = "vec", tag = "4")]
    restore_reveal: Vec<u8>,
}

/// A leaf's ticket extension, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeafTicket {
    /// Commitment to the leaf's own ticket.
    pub commitment: [u8; 32],
    /// A rejoin's revealed ticket secret.
    pub reveal: Option<[u8; 32]>,
    /// Commitment to the device's backup secret.
    pub restore: Option<[u8; 32]>,
    /// A restore's revealed backup secret.
    pub restore_reveal: Option<[u8; 32]>,
}

/// The leaf extensions that carry `ticket` and `extras`.
pub(crate) fn ticket_extensions(
    ticket: &Ticket,
    extras: &LeafExtras<'_>,
) -> Result<Extensions<LeafNode>, E2eeError> {
    let ext = TicketExt {
        commitment: ticket.commitment().to_vec(),
        reveal: extras.reveal.map(|t| t.0.to_vec()).unwrap_or_default(),
        restore: extras.restore.map(|c| c.to_vec()).unwrap_or_default(),
        restore_reveal: extras
            .restore_reveal
            .map(|r| r.0.to_vec())
            .unwrap_or_default(),
    };
    Extensions::from_vec(vec![Extension::Unknown(
        TICKET_EXTENSION,
        UnknownExtension(ext.encode_to_vec()),
    )])
    .map_err(crate::mls("building a leaf's ticket"))
}

/// A leaf's ticket extension. `None` for a leaf without a well-formed one (made before
/// tickets existed, or with a field of the wrong length).
pub(crate) fn leaf_ticket(leaf: &LeafNode) -> Option<LeafTicket> {
    fn optional(bytes: &[u8]) -> Option<Option<[u8; 32]>> {
        match bytes.len() {
            0 => Some(None),
            _ => bytes.try_into().ok().map(Some),
        }
    }
    let ext = leaf.extensions().unknown(TICKET_EXTENSION)?;
    let t = TicketExt::decode(ext.0.as_slice()).ok()?;
    Some(LeafTicket {
        commitment: t.commitment.as_slice().try_into().ok()?,
        reveal: optional(&t.reveal)?,
        restore: optional(&t.restore)?,
        restore_reveal: optional(&t.restore_reveal)?,
    })
}

/// True when `reveal` is the ticket secret behind `commitment`.
pub(crate) fn opens(commitment: &[u8; 32], reveal: &[u8; 32]) -> bool {
    Ticket::opens(commitment, reveal)
}

/// True when `reveal` is the backup secret behind the restore `commitment`.
pub(crate) fn restore_opens(commitment: &[u8; 32], reveal: &[u8; 32]) -> bool {
    RestoreSecret::opens(commitment, reveal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_only_its_own_commitment() {
        let provider = crate::MemoryProvider::new().expect("provider");
        let a = Ticket::generate(&provider).expect("a");
        let b = Ticket::generate(&provider).expect("b");
        assert!(opens(&a.commitment(), a.secret()));
        assert!(!opens(&a.commitment(), b.secret()));
        assert_ne!(a.commitment(), b.commitment());
        assert_eq!(format!("{a:?}"), "Ticket", "no secret in debug output");
    }

    #[test]
    fn a_backup_secret_opens_only_its_restore_commitment() {
        let provider = crate::MemoryProvider::new().expect("provider");
        let r = RestoreSecret::generate(&provider).expect("r");
        assert!(restore_opens(&r.commitment(), r.secret()));
        // The two kinds of commitment are apart: a ticket's never opens as a backup's.
        let t = Ticket::from_secret(*r.secret());
        assert!(!restore_opens(&t.commitment(), r.secret()));
        assert!(!opens(&r.commitment(), t.secret()));
        assert_eq!(format!("{r:?}"), "RestoreSecret");
    }
}
