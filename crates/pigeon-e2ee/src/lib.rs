//! End-to-end encryption for Pigeonpost: every conversation is an MLS group (RFC 9420).
//!
//! This first piece pins down the cryptographic core the client will build on: the default
//! ciphersuite is the X-Wing post-quantum hybrid
//! (`MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519`, provisional code point 0x004D, through
//! `openmls` with the libcrux provider), and a 1:1 conversation is a two-member group. Profiles,
//! persistence (SQLCipher), content encoding and padding come with issue #3.

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_libcrux_crypto::Provider;
use tls_codec::{Deserialize as _, Serialize as _};

/// The default ciphersuite: X-Wing (X25519 + ML-KEM-768) hybrid KEM, ChaCha20-Poly1305,
/// SHA-256, Ed25519.
pub const DEFAULT_SUITE: Ciphersuite = Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;

/// Why an MLS operation failed. Messages carry no key material or content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eeError {
    /// The crypto provider could not start (no usable randomness).
    #[error("the crypto provider could not start: {0}")]
    Provider(String),
    /// An MLS operation failed.
    #[error("{op} failed: {reason}")]
    Mls {
        /// Which operation.
        op: &'static str,
        /// openmls's description.
        reason: String,
    },
    /// Bytes from a peer did not parse or were of the wrong kind.
    #[error("peer sent an unusable {what}: {reason}")]
    BadInput {
        /// What was expected.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

fn mls<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> E2eeError {
    move |e| E2eeError::Mls {
        op,
        reason: e.to_string(),
    }
}

/// One device's MLS identity: its crypto provider (with in-memory storage for now), signature
/// key and credential.
pub struct Device {
    provider: Provider,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Device")
    }
}

impl Device {
    /// A new device whose credential carries `handle` (an opaque, per-conversation name; never
    /// a phone number or account id).
    ///
    /// # Errors
    /// If the provider or key generation fails.
    pub fn new(handle: &[u8]) -> Result<Self, E2eeError> {
        let provider = Provider::new().map_err(|e| E2eeError::Provider(format!("{e:?}")))?;
        let signer = SignatureKeyPair::new(DEFAULT_SUITE.signature_algorithm())
            .map_err(mls("signature key generation"))?;
        signer
            .store(provider.storage())
            .map_err(mls("storing the signature key"))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(handle.to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok(Self {
            provider,
            signer,
            credential,
        })
    }

    /// A fresh key package (serialized) that lets someone start a conversation with this device.
    ///
    /// # Errors
    /// If building or serializing fails.
    pub fn key_package(&self) -> Result<Vec<u8>, E2eeError> {
        let bundle = KeyPackage::builder()
            .build(
                DEFAULT_SUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(mls("building a key package"))?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(mls("serializing a key package"))
    }

    /// Starts a 1:1 conversation with the owner of `key_package`. Returns the conversation and
    /// the Welcome (serialized) to send them.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] for a key package that does not parse or validate.
    pub fn start(&self, key_package: &[u8]) -> Result<(Conversation, Vec<u8>), E2eeError> {
        let bad = |reason: String| E2eeError::BadInput {
            what: "key package",
            reason,
        };
        let message =
            MlsMessageIn::tls_deserialize_exact(key_package).map_err(|e| bad(e.to_string()))?;
        let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
            return Err(bad("not a key package".to_owned()));
        };
        let kp = kp
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| bad(e.to_string()))?;
        if kp.ciphersuite() != DEFAULT_SUITE {
            return Err(bad("not an X-Wing key package".to_owned()));
        }
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(DEFAULT_SUITE)
            .use_ratchet_tree_extension(true)
            .build();
        let mut group = MlsGroup::new(
            &self.provider,
            &self.signer,
            &config,
            self.credential.clone(),
        )
        .map_err(mls("creating a group"))?;
        let (_commit, welcome, _info) = group
            .add_members(&self.provider, &self.signer, &[kp])
            .map_err(mls("adding the peer"))?;
        group
            .merge_pending_commit(&self.provider)
            .map_err(mls("merging the add commit"))?;
        let welcome = welcome
            .tls_serialize_detached()
            .map_err(mls("serializing the welcome"))?;
        Ok((Conversation { group }, welcome))
    }

    /// Joins the conversation a Welcome invites this device to.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] for a Welcome that does not parse or is not for this device.
    pub fn join(&self, welcome: &[u8]) -> Result<Conversation, E2eeError> {
        let bad = |reason: String| E2eeError::BadInput {
            what: "welcome",
            reason,
        };
        let message =
            MlsMessageIn::tls_deserialize_exact(welcome).map_err(|e| bad(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(bad("not a welcome".to_owned()));
        };
        let group = StagedWelcome::new_from_welcome(
            &self.provider,
            &MlsGroupJoinConfig::default(),
            welcome,
            None,
        )
        .map_err(|e| bad(e.to_string()))?
        .into_group(&self.provider)
        .map_err(|e| bad(e.to_string()))?;
        Ok(Conversation { group })
    }

    /// Encrypts `plaintext` for the conversation.
    ///
    /// # Errors
    /// If MLS refuses (for example, a pending commit).
    pub fn seal(&self, conv: &mut Conversation, plaintext: &[u8]) -> Result<Vec<u8>, E2eeError> {
        conv.group
            .create_message(&self.provider, &self.signer, plaintext)
            .map_err(mls("encrypting"))?
            .tls_serialize_detached()
            .map_err(mls("serializing"))
    }

    /// Decrypts an application message of the conversation.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] for anything tampered, replayed, from another epoch or group, or
    /// not an application message; the conversation state is left as it was.
    pub fn open(&self, conv: &mut Conversation, ciphertext: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let bad = |reason: String| E2eeError::BadInput {
            what: "message",
            reason,
        };
        let message =
            MlsMessageIn::tls_deserialize_exact(ciphertext).map_err(|e| bad(e.to_string()))?;
        let protocol = message
            .try_into_protocol_message()
            .map_err(|e| bad(e.to_string()))?;
        let processed = conv
            .group
            .process_message(&self.provider, protocol)
            .map_err(|e| bad(e.to_string()))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(app.into_bytes()),
            _ => Err(bad("not an application message".to_owned())),
        }
    }
}

/// A conversation: an MLS group this device is a member of.
pub struct Conversation {
    group: MlsGroup,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("epoch", &self.group.epoch().as_u64())
            .finish_non_exhaustive()
    }
}

impl Conversation {
    /// The ciphersuite in use.
    pub fn ciphersuite(&self) -> Ciphersuite {
        self.group.ciphersuite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xwing_one_to_one_round_trip_rejects_tampering_and_replay() {
        let alice = Device::new(b"alice").expect("device");
        let bob = Device::new(b"bob").expect("device");
        let kp = bob.key_package().expect("key package");
        let (mut a, welcome) = alice.start(&kp).expect("start");
        let mut b = bob.join(&welcome).expect("join");
        assert_eq!(a.ciphersuite(), DEFAULT_SUITE);
        assert_eq!(b.ciphersuite(), DEFAULT_SUITE);

        let ct = alice
            .seal(&mut a, b"hello from a post-quantum world")
            .expect("seal");
        assert!(
            !ct.windows(5).any(|w| w == b"hello"),
            "ciphertext carries plaintext"
        );
        assert_eq!(
            bob.open(&mut b, &ct).expect("open"),
            b"hello from a post-quantum world"
        );
        // Replayed: the generation's key is gone.
        assert!(bob.open(&mut b, &ct).is_err());
        // Tampered, and state intact afterwards.
        let mut bad = alice.seal(&mut a, b"second").expect("seal");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(bob.open(&mut b, &bad).is_err());
        let ct = alice.seal(&mut a, b"third").expect("seal");
        assert_eq!(bob.open(&mut b, &ct).expect("open"), b"third");
        // And back.
        let ct = bob.seal(&mut b, b"reply").expect("seal");
        assert_eq!(alice.open(&mut a, &ct).expect("open"), b"reply");
        // Garbage is an error, not a panic.
        assert!(bob.open(&mut b, &[0xff; 40]).is_err());
        assert!(alice.start(&[1, 2, 3]).is_err());
        assert!(bob.join(&kp).is_err());
    }
}
