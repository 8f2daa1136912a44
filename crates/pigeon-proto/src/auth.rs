//! Proofs of ownership, bound to one channel session.
//!
//! Mailboxes and key-package slots are owned by Ed25519 keys, never by accounts. To create,
//! subscribe to or delete a mailbox, or publish into a slot, the owner signs a fixed-size
//! transcript:
//!
//! ```text
//! "pigeonpost auth v1\0" || op (1 byte) || handshake_hash (32) || object id (32) || bound (32)
//! ```
//!
//! `handshake_hash` is the Noise handshake hash of the current channel, so a signature seen on
//! one connection is worthless on any other. `bound` commits to the request's other contents
//! (the capability hash for creation, [`update_digest`] for updating a log, the packages for
//! publishing; zeros otherwise).
//!
//! Senders hold a *capability*: 32 random bytes from the invitation. The relay stores only
//! [`cap_hash`] of it, so a copy of the relay's store does not let anyone post.

use blake2::{Blake2s256, Digest};
use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

const DOMAIN: &[u8] = b"pigeonpost auth v1\0";
const CAP_DOMAIN: &[u8] = b"pigeonpost sender capability v1\0";
const PACKAGES_DOMAIN: &[u8] = b"pigeonpost key packages v1\0";
const UPDATE_DOMAIN: &[u8] = b"pigeonpost mailbox update v1\0";

/// What a signature authorizes. The byte values are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthOp {
    /// Create a mailbox.
    CreateMailbox = 1,
    /// Subscribe to a mailbox (and so read and ack it on this session).
    Subscribe = 2,
    /// Delete a mailbox.
    DeleteMailbox = 3,
    /// Publish key packages into a slot.
    PublishKeyPackages = 4,
    /// Replace a log's member capability (and owner key).
    UpdateMailbox = 5,
}

/// Why a proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The public key is not a valid Ed25519 point.
    #[error("the public key is not a valid Ed25519 key")]
    BadKey,
    /// The signature has the wrong length.
    #[error("signature must be 64 bytes, got {0}")]
    BadSignatureLength(usize),
    /// The signature does not verify for this key, operation and session.
    #[error("signature does not verify for this key, operation and session")]
    Invalid,
    /// The system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

type Transcript = [u8; 19 + 1 + 32 + 32 + 32];

fn transcript(
    op: AuthOp,
    handshake_hash: &[u8; 32],
    object: &[u8; 32],
    bound: &[u8; 32],
) -> Transcript {
    let mut t = [0u8; 19 + 1 + 32 + 32 + 32];
    t[..19].copy_from_slice(DOMAIN);
    t[19] = op as u8;
    t[20..52].copy_from_slice(handshake_hash);
    t[52..84].copy_from_slice(object);
    t[84..].copy_from_slice(bound);
    t
}

/// Signs an ownership proof.
pub fn sign(
    key: &SigningKey,
    op: AuthOp,
    handshake_hash: &[u8; 32],
    object: &[u8; 32],
    bound: &[u8; 32],
) -> [u8; 64] {
    key.sign(&transcript(op, handshake_hash, object, bound))
        .to_bytes()
}

/// Verifies an ownership proof (strict Ed25519: no malleable or small-order keys).
///
/// # Errors
/// [`AuthError`] saying which part failed.
pub fn verify(
    public: &[u8; 32],
    op: AuthOp,
    handshake_hash: &[u8; 32],
    object: &[u8; 32],
    bound: &[u8; 32],
    signature: &[u8],
) -> Result<(), AuthError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| AuthError::BadKey)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| AuthError::BadSignatureLength(signature.len()))?;
    key.verify_strict(
        &transcript(op, handshake_hash, object, bound),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| AuthError::Invalid)
}

/// The hash under which the relay keeps a sender capability.
pub fn cap_hash(cap: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(CAP_DOMAIN);
    h.update(cap);
    h.finalize().into()
}

/// Commits to a publish request's key packages, for [`AuthOp::PublishKeyPackages`].
pub fn packages_digest(one_time: &[Vec<u8>], last_resort: Option<&[u8]>) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(PACKAGES_DOMAIN);
    for p in one_time {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    match last_resort {
        Some(p) => {
            h.update([1]);
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// Commits to an update request's new owner key (`None`: kept) and new capability hash, for
/// [`AuthOp::UpdateMailbox`]:
/// `BLAKE2s("pigeonpost mailbox update v1\0" || 0 || new_cap_hash)` without a new owner key,
/// `BLAKE2s("pigeonpost mailbox update v1\0" || 1 || new_owner_key || new_cap_hash)` with one.
pub fn update_digest(new_owner_key: Option<&[u8; 32]>, new_cap_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(UPDATE_DOMAIN);
    match new_owner_key {
        Some(key) => {
            h.update([1]);
            h.update(key);
        }
        None => h.update([0]),
    }
    h.update(new_cap_hash);
    h.finalize().into()
}

/// `N` bytes from the system's random source.
///
/// # Errors
/// [`AuthError::Random`] if the source fails.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh Ed25519 signing key.
///
/// # Errors
/// [`AuthError::Random`] if the random source fails.
pub fn generate_signing_key() -> Result<SigningKey, AuthError> {
    Ok(SigningKey::from_bytes(&random_bytes::<32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_op_session_object_and_bound() {
        let key = generate_signing_key().expect("random");
        let public = key.verifying_key().to_bytes();
        let (hh, obj, bound) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let sig = sign(&key, AuthOp::Subscribe, &hh, &obj, &bound);
        assert_eq!(
            verify(&public, AuthOp::Subscribe, &hh, &obj, &bound, &sig),
            Ok(())
        );
        let bad = |r| assert_eq!(r, Err(AuthError::Invalid));
        bad(verify(
            &public,
            AuthOp::DeleteMailbox,
            &hh,
            &obj,
            &bound,
            &sig,
        ));
        bad(verify(
            &public,
            AuthOp::Subscribe,
            &[9; 32],
            &obj,
            &bound,
            &sig,
        ));
        bad(verify(
            &public,
            AuthOp::Subscribe,
            &hh,
            &[9; 32],
            &bound,
            &sig,
        ));
        bad(verify(
            &public,
            AuthOp::Subscribe,
            &hh,
            &obj,
            &[9; 32],
            &sig,
        ));
        assert_eq!(
            verify(&public, AuthOp::Subscribe, &hh, &obj, &bound, &sig[..10]),
            Err(AuthError::BadSignatureLength(10))
        );
    }

    #[test]
    fn capability_hash_is_domain_separated() {
        let cap = [7u8; 32];
        assert_ne!(cap_hash(&cap), <[u8; 32]>::from(Blake2s256::digest(cap)));
        assert_ne!(
            packages_digest(&[vec![1]], None),
            packages_digest(&[], Some(&[1]))
        );
    }

    #[test]
    fn update_digest_binds_owner_key_and_capability() {
        let (key, cap) = ([1u8; 32], [2u8; 32]);
        let keep = update_digest(None, &cap);
        assert_ne!(keep, update_digest(Some(&key), &cap));
        assert_ne!(keep, update_digest(None, &[3; 32]));
        assert_ne!(
            update_digest(Some(&key), &cap),
            update_digest(Some(&[9; 32]), &cap)
        );
        // The same bytes read as "no key" never collide with a key: the tag byte differs.
        assert_ne!(keep, update_digest(Some(&cap), &cap));
    }
}
