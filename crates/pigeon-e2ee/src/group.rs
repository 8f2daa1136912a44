//! Identities and conversations: MLS groups of two.
//!
//! Commits in a 1:1 group come from one side only (the member who created the group), and
//! only after the peer has spoken in the current epoch. Two relays' mailboxes give no common
//! order for commits, so two members committing at once would fork the group; with one
//! committer that cannot happen, and since the peer can only have messages in flight from
//! the current epoch, keeping one past epoch's keys (and deleting them as soon as the peer is
//! heard from in the new epoch) is enough for every in-flight message to decrypt.

use crate::content::Content;
use crate::members::capabilities;
use crate::{E2eeError, Suite, mls};
use openmls::group::PastEpochDeletion;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider as _};
use tls_codec::{Deserialize as _, Serialize as _};

/// Past epochs whose message keys are kept after a commit, for messages the peer sent before
/// it saw the commit.
const PAST_EPOCHS: usize = 1;
/// Messages of one sender and epoch that may arrive out of order.
const OUT_OF_ORDER: u32 = 64;
/// How far ahead of the last message one may be (bounds the work a forged generation causes).
const MAX_FORWARD: u32 = 5000;

/// A resumption-PSK store with room for none, in openmls's stored shape.
///
/// Pigeonpost does not use resumption PSKs, and keeping them (openmls keeps the last 32
/// epochs' by default) would leave a secret of every old epoch in the profile. The joining
/// side gets this through `number_of_resumption_psks(0)`; openmls 0.9.2 ignores that setting
/// when it creates a group, so [`Group::start`] writes this empty store over the creator's.
#[derive(serde::Serialize, serde::Deserialize)]
struct NoResumptionPsks {
    max_number_of_secrets: usize,
    resumption_psk: Vec<()>,
    cursor: usize,
}

impl openmls_traits::storage::Entity<CURRENT_VERSION> for NoResumptionPsks {}
impl openmls_traits::storage::traits::ResumptionPskStore<CURRENT_VERSION> for NoResumptionPsks {}

/// A signature key for one conversation (or one pending invitation), with its credential.
///
/// The credential holds only the public key: no name, no account. A fresh identity per
/// conversation means nothing a relay sees links a person's conversations.
pub struct Identity {
    pub(crate) signer: SignatureKeyPair,
    pub(crate) credential: CredentialWithKey,
}

/// Both suites sign with Ed25519.
const SIGNATURE: SignatureScheme = SignatureScheme::ED25519;

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity")
    }
}

impl Identity {
    /// A new identity; its private key goes into the provider's storage.
    ///
    /// # Errors
    /// If key generation or storage fails.
    pub fn generate<P: OpenMlsProvider>(provider: &P) -> Result<Self, E2eeError> {
        let signer = SignatureKeyPair::new(SIGNATURE).map_err(mls("generating a signature key"))?;
        signer
            .store(provider.storage())
            .map_err(mls("storing the signature key"))?;
        Ok(Self::from_signer(signer))
    }

    /// The identity whose public key is `public_key`, from storage.
    ///
    /// # Errors
    /// [`E2eeError::UnknownGroup`] when storage does not hold it.
    pub fn load<P: OpenMlsProvider>(provider: &P, public_key: &[u8]) -> Result<Self, E2eeError> {
        let signer = SignatureKeyPair::read(provider.storage(), public_key, SIGNATURE)
            .ok_or(E2eeError::UnknownGroup)?;
        Ok(Self::from_signer(signer))
    }

    fn from_signer(signer: SignatureKeyPair) -> Self {
        let credential = CredentialWithKey {
            credential: BasicCredential::new(signer.public().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self { signer, credential }
    }

    /// The public signature key (what an invitation names so the key package can be checked).
    pub fn public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// A fresh one-time key package in `suite` (serialized); its private keys go into storage.
    ///
    /// # Errors
    /// If building or serializing fails.
    pub fn key_package<P: OpenMlsProvider>(
        &self,
        provider: &P,
        suite: Suite,
    ) -> Result<Vec<u8>, E2eeError> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(suite.mls(), provider, &self.signer, self.credential.clone())
            .map_err(mls("building a key package"))?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(mls("serializing a key package"))
    }

    /// A fresh one-time key package in `suite` for a group, whose leaf carries a new rejoin
    /// ticket ([`crate::rejoin`]) and `extras`: to be taken back into a group, the ticket of
    /// the leaf it replaces; to take a device's place from its backup, the backup's secret.
    /// Returns the key package and the new ticket (keep its secret).
    ///
    /// # Errors
    /// If building or serializing fails.
    pub fn key_package_with_ticket<P: OpenMlsProvider>(
        &self,
        provider: &P,
        suite: Suite,
        extras: &crate::LeafExtras<'_>,
    ) -> Result<(Vec<u8>, crate::Ticket), E2eeError> {
        let ticket = crate::Ticket::generate(provider)?;
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .leaf_node_extensions(crate::rejoin::ticket_extensions(&ticket, extras)?)
            .build(suite.mls(), provider, &self.signer, self.credential.clone())
            .map_err(mls("building a key package"))?;
        let bytes = MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(mls("serializing a key package"))?;
        Ok((bytes, ticket))
    }

    /// Deletes the private signature key from storage.
    ///
    /// # Errors
    /// If storage fails.
    pub fn forget<P: OpenMlsProvider>(self, provider: &P) -> Result<(), E2eeError> {
        SignatureKeyPair::delete(provider.storage(), self.signer.public(), SIGNATURE)
            .map_err(mls("deleting the signature key"))
    }
}

/// Deletes the private keys of a key package this device made (serialized as
/// [`Identity::key_package`] returns it), for an invitation withdrawn before use.
///
/// # Errors
/// If the bytes are not a key package, or storage fails.
pub fn forget_key_package<P: OpenMlsProvider>(
    provider: &P,
    key_package: &[u8],
) -> Result<(), E2eeError> {
    let message =
        MlsMessageIn::tls_deserialize_exact(key_package).map_err(mls("reading a key package"))?;
    let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
        return Err(E2eeError::Mls {
            op: "reading a key package",
            reason: "not a key package".to_owned(),
        });
    };
    let kp = kp
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(mls("reading a key package"))?;
    let hash = kp
        .hash_ref(provider.crypto())
        .map_err(mls("hashing a key package"))?;
    provider
        .storage()
        .delete_key_package(&hash)
        .map_err(mls("deleting a key package"))
}

/// What decrypting a message yielded.
#[derive(Debug)]
#[non_exhaustive]
pub enum Opened {
    /// Something the peer said.
    Content {
        /// What it says.
        content: Content,
        /// The epoch it was sent in.
        epoch: u64,
        /// The sending device's signature key.
        sender: Vec<u8>,
    },
    /// The peer moved the conversation to a new epoch (fresh keys). In a group, the commit
    /// was checked against the roster's rules and merged.
    Commit {
        /// The new epoch.
        epoch: u64,
        /// What changed in a group (empty for a 1:1 conversation).
        changes: Box<crate::members::Changes>,
    },
    /// A member asked to leave (a self-remove proposal, kept until someone commits it).
    Leaving {
        /// The leaving device's signature key.
        key: Vec<u8>,
    },
}

/// A conversation: an MLS group of two.
pub struct Group {
    pub(crate) group: MlsGroup,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

pub(crate) fn bad(what: &'static str) -> impl Fn(String) -> E2eeError + Copy {
    move |reason| E2eeError::BadInput { what, reason }
}

pub(crate) fn ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER, MAX_FORWARD)
}

impl Group {
    /// Starts a conversation in `suite` with the owner of `key_package`, which must be signed
    /// by `expected_signature_key` (from the invitation). Returns the group and the Welcome
    /// (serialized) for the peer.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] for a key package that does not parse or validate;
    /// [`E2eeError::NotTheInviter`] when it is signed by another key.
    pub fn start<P: OpenMlsProvider>(
        provider: &P,
        identity: &Identity,
        suite: Suite,
        key_package: &[u8],
        expected_signature_key: &[u8],
    ) -> Result<(Self, Vec<u8>), E2eeError> {
        let bad = bad("key package");
        let message =
            MlsMessageIn::tls_deserialize_exact(key_package).map_err(|e| bad(e.to_string()))?;
        let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
            return Err(bad("not a key package".to_owned()));
        };
        let kp = kp
            .validate(provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| bad(e.to_string()))?;
        if kp.ciphersuite() != suite.mls() {
            return Err(bad(format!(
                "it is for suite {:?}, not {}",
                kp.ciphersuite(),
                suite.name()
            )));
        }
        if kp.leaf_node().signature_key().as_slice() != expected_signature_key {
            return Err(E2eeError::NotTheInviter);
        }
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite.mls())
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(PAST_EPOCHS)
            .number_of_resumption_psks(0)
            .sender_ratchet_configuration(ratchet())
            .build();
        let mut group = MlsGroup::new(
            provider,
            &identity.signer,
            &config,
            identity.credential.clone(),
        )
        .map_err(mls("creating a group"))?;
        let (_commit, welcome, _info) = group
            .add_members(provider, &identity.signer, &[kp])
            .map_err(mls("adding the peer"))?;
        group
            .merge_pending_commit(provider)
            .map_err(mls("merging the add commit"))?;
        let group = without_resumption_psks(provider, &group)?;
        let welcome = welcome
            .tls_serialize_detached()
            .map_err(mls("serializing the welcome"))?;
        Ok((Self { group }, welcome))
    }

    /// Joins the conversation a Welcome invites this device to (its key package's private
    /// keys must be in storage).
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] for a Welcome that does not parse, is not for this device, or
    /// is not a two-member group in a suite Pigeonpost speaks.
    pub fn join<P: OpenMlsProvider>(provider: &P, welcome: &[u8]) -> Result<Self, E2eeError> {
        let bad = bad("welcome");
        let staged = stage_welcome(provider, welcome, PAST_EPOCHS)?;
        if staged.members().count() != 2 {
            return Err(bad(
                "the conversation does not have exactly two members".to_owned()
            ));
        }
        let group = staged
            .into_group(provider)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { group })
    }

    /// The conversation with id `group_id`, from storage.
    ///
    /// # Errors
    /// [`E2eeError::UnknownGroup`] when storage does not hold it.
    pub fn load<P: OpenMlsProvider>(provider: &P, group_id: &[u8]) -> Result<Self, E2eeError> {
        MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(mls("loading a conversation"))?
            .map(|group| Self { group })
            .ok_or(E2eeError::UnknownGroup)
    }

    /// The group id (random, chosen by the creator).
    pub fn id(&self) -> Vec<u8> {
        self.group.group_id().as_slice().to_vec()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// The suite in use.
    pub fn suite(&self) -> Option<Suite> {
        Suite::from_code(u16::from(self.group.ciphersuite()))
    }

    /// A value both members share in this epoch and no one else can compute (for comparing
    /// out of band, and for tests that check old epochs' secrets are gone).
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.group.epoch_authenticator().as_slice().to_vec()
    }

    /// Encrypts `content` (padded first) for the peer.
    ///
    /// # Errors
    /// If the content is too large or MLS refuses.
    pub fn seal<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
        content: &Content,
    ) -> Result<Vec<u8>, E2eeError> {
        let padded = content.pad()?;
        self.group
            .create_message(provider, &identity.signer, &padded)
            .map_err(mls("encrypting"))?
            .tls_serialize_detached()
            .map_err(mls("serializing"))
    }

    /// Decrypts a message from the peer: content, or a commit that is merged at once.
    ///
    /// # Errors
    /// [`E2eeError::is_bad_input`] errors for anything tampered, replayed, from a wrong epoch
    /// or another group, or malformed. Storage is not written before a message verifies; the
    /// caller's transaction undoes anything else.
    pub fn open<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        ciphertext: &[u8],
    ) -> Result<Opened, E2eeError> {
        let bad = |reason: String| E2eeError::BadInput {
            what: "message",
            reason,
        };
        let message =
            MlsMessageIn::tls_deserialize_exact(ciphertext).map_err(|e| bad(e.to_string()))?;
        let protocol = message
            .try_into_protocol_message()
            .map_err(|e| bad(e.to_string()))?;
        if protocol.group_id() != self.group.group_id() {
            return Err(bad("it belongs to another conversation".to_owned()));
        }
        let epoch = protocol.epoch().as_u64();
        let current = self.epoch();
        let kept = if self.is_group() {
            crate::members::GROUP_PAST_EPOCHS
        } else {
            PAST_EPOCHS
        };
        if epoch > current || epoch.saturating_add(kept as u64) < current {
            return Err(E2eeError::WrongEpoch {
                got: epoch,
                current,
            });
        }
        let is_handshake = matches!(
            protocol.content_type(),
            ContentType::Commit | ContentType::Proposal
        );
        if is_handshake && epoch != current {
            // A commit or proposal for an epoch that is over lost the race to another one.
            return Err(E2eeError::WrongEpoch {
                got: epoch,
                current,
            });
        }
        let processed = self
            .group
            .process_message(provider, protocol)
            .map_err(|e| classify(&e).unwrap_or_else(|| bad(e.to_string())))?;
        let sender = processed.sender().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(Opened::Content {
                content: Content::unpad(&app.into_bytes())?,
                epoch,
                sender: match &sender {
                    Sender::Member(leaf) => self
                        .group
                        .member_at(*leaf)
                        .map(|m| m.signature_key)
                        .unwrap_or_default(),
                    _ => Vec::new(),
                },
            }),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                crate::members::check_keys(&staged)?;
                let changes = if self.is_group() {
                    self.check_staged(&sender, &staged)?
                } else {
                    crate::members::Changes::default()
                };
                self.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(mls("merging the peer's commit"))?;
                Ok(Opened::Commit {
                    epoch: self.epoch(),
                    changes: Box::new(changes),
                })
            }
            ProcessedMessageContent::OwnPendingCommit
            | ProcessedMessageContent::OwnPrivateMessage => {
                Err(bad("it is this device's own message, sent back".to_owned()))
            }
            ProcessedMessageContent::ProposalMessage(proposal) if self.is_group() => {
                self.take_proposal(provider, &sender, *proposal)
            }
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                self.group
                    .clear_pending_proposals(provider.storage())
                    .map_err(mls("dropping a proposal"))?;
                Err(bad("proposals are not used in 1:1 conversations".to_owned()))
            }
        }
    }

    /// Moves the conversation to a new epoch with fresh keys for this member (a self-update
    /// commit, merged at once). Returns the commit (serialized) for the peer.
    ///
    /// # Errors
    /// If MLS refuses.
    pub fn update<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
    ) -> Result<Vec<u8>, E2eeError> {
        let bundle = self
            .group
            .self_update(provider, &identity.signer, LeafNodeParameters::default())
            .map_err(mls("updating keys"))?;
        self.group
            .merge_pending_commit(provider)
            .map_err(mls("merging the update"))?;
        bundle
            .into_commit()
            .tls_serialize_detached()
            .map_err(mls("serializing the update"))
    }

    /// Deletes the keys of every past epoch (call once the peer is heard from in the current
    /// epoch: nothing older can still be in flight).
    ///
    /// # Errors
    /// If storage fails.
    pub fn forget_past_epochs<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
    ) -> Result<(), E2eeError> {
        self.group
            .delete_past_epoch_secrets(provider, PastEpochDeletion::delete_all())
            .map_err(mls("deleting past epoch keys"))
    }

    /// Deletes the conversation's state from storage.
    ///
    /// # Errors
    /// If storage fails.
    pub fn delete<P: OpenMlsProvider>(mut self, provider: &P) -> Result<(), E2eeError> {
        self.group
            .delete(provider.storage())
            .map_err(mls("deleting a conversation"))
    }
}

/// Overwrites the resumption-PSK store openmls 0.9.2 fills when it creates a group (it ignores
/// `number_of_resumption_psks` there) with an empty one, and reloads the group.
pub(crate) fn without_resumption_psks<P: OpenMlsProvider>(
    provider: &P,
    group: &MlsGroup,
) -> Result<MlsGroup, E2eeError> {
    provider
        .storage()
        .write_resumption_psk_store(
            group.group_id(),
            &NoResumptionPsks {
                max_number_of_secrets: 0,
                resumption_psk: Vec::new(),
                cursor: 0,
            },
        )
        .map_err(mls("dropping resumption secrets"))?;
    MlsGroup::load(provider.storage(), group.group_id())
        .map_err(mls("reloading the group"))?
        .ok_or(E2eeError::UnknownGroup)
}

/// The longest group id a device joins with. Pigeonpost's groups have openmls's 16 random
/// bytes; the id is a key of the stored state (and kept in the client's tables), so one chosen
/// by whoever sent a Welcome has a bound.
const MAX_GROUP_ID: usize = 256;

/// Parses a Welcome for this device and stages it, keeping `past_epochs` epochs' keys once
/// joined; refuses a suite Pigeonpost does not speak and a group id over [`MAX_GROUP_ID`].
pub(crate) fn stage_welcome<P: OpenMlsProvider>(
    provider: &P,
    welcome: &[u8],
    past_epochs: usize,
) -> Result<StagedWelcome, E2eeError> {
    let bad = bad("welcome");
    let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|e| bad(e.to_string()))?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err(bad("not a welcome".to_owned()));
    };
    let config = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(past_epochs)
        .number_of_resumption_psks(0)
        .sender_ratchet_configuration(ratchet())
        .build();
    let staged = StagedWelcome::new_from_welcome(provider, &config, welcome, None)
        .map_err(|e| bad(e.to_string()))?;
    if Suite::from_code(u16::from(staged.group_context().ciphersuite())).is_none() {
        return Err(bad(
            "it uses a ciphersuite Pigeonpost does not speak".to_owned()
        ));
    }
    let id = staged.group_context().group_id().as_slice().len();
    if id > MAX_GROUP_ID {
        return Err(bad(format!(
            "its group id is {id} bytes long; at most {MAX_GROUP_ID} are accepted"
        )));
    }
    Ok(staged)
}

/// Recognises replays in openmls's error (its variants sit several enums deep).
fn classify<E: std::fmt::Debug>(error: &E) -> Option<E2eeError> {
    let debug = format!("{error:?}");
    if debug.contains("SecretReuseError") {
        Some(E2eeError::Replayed)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Text, body::Body};
    use openmls_libcrux_crypto::Provider as MemoryProvider;

    fn text(s: &str) -> Content {
        Content {
            id: vec![1; 16],
            sent_at_ms: 0,
            body: Some(Body::Text(Text { text: s.to_owned() })),
        }
    }

    fn said(opened: Opened) -> String {
        match opened {
            Opened::Content {
                content:
                    Content {
                        body: Some(Body::Text(t)),
                        ..
                    },
                ..
            } => t.text,
            other => panic!("not text: {other:?}"),
        }
    }

    struct Side {
        provider: MemoryProvider,
        identity: Identity,
        group: Group,
    }

    fn pair(suite: Suite) -> (Side, Side) {
        let ap = MemoryProvider::new().expect("provider");
        let bp = MemoryProvider::new().expect("provider");
        let a_id = Identity::generate(&ap).expect("identity");
        let b_id = Identity::generate(&bp).expect("identity");
        let kp = b_id.key_package(&bp, suite).expect("key package");
        // The key package must be the one the invitation names.
        assert!(matches!(
            Group::start(&ap, &a_id, suite, &kp, a_id.public_key()),
            Err(E2eeError::NotTheInviter)
        ));
        let (a, welcome) = Group::start(&ap, &a_id, suite, &kp, b_id.public_key()).expect("start");
        let b = Group::join(&bp, &welcome).expect("join");
        assert_eq!(a.epoch_authenticator(), b.epoch_authenticator());
        (
            Side {
                provider: ap,
                identity: a_id,
                group: a,
            },
            Side {
                provider: bp,
                identity: b_id,
                group: b,
            },
        )
    }

    fn send(from: &mut Side, to: &mut Side, s: &str) -> Result<Opened, E2eeError> {
        let ct = from
            .group
            .seal(&from.provider, &from.identity, &text(s))
            .expect("seal");
        to.group.open(&to.provider, &ct)
    }

    #[test]
    fn xwing_round_trip_rejects_tampering_replay_and_wrong_epoch() {
        let (mut a, mut b) = pair(Suite::XWing);
        assert_eq!(a.group.suite(), Some(Suite::XWing));
        let ct = a
            .group
            .seal(
                &a.provider,
                &a.identity,
                &text("hello from a post-quantum world"),
            )
            .expect("seal");
        assert!(!ct.windows(5).any(|w| w == b"hello"));
        assert!(ct.len() > 256, "padded to a bucket");
        assert_eq!(
            said(b.group.open(&b.provider, &ct).expect("open")),
            "hello from a post-quantum world"
        );
        assert!(matches!(
            b.group.open(&b.provider, &ct),
            Err(E2eeError::Replayed)
        ));
        let mut tampered = a
            .group
            .seal(&a.provider, &a.identity, &text("second"))
            .expect("seal");
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = b.group.open(&b.provider, &tampered).expect_err("tampered");
        assert!(err.is_bad_input(), "{err}");
        assert_eq!(said(send(&mut a, &mut b, "third").expect("open")), "third");
        assert_eq!(said(send(&mut b, &mut a, "reply").expect("open")), "reply");

        // An update moves both to a new epoch; a message from the old epoch still opens
        // (it may have been in flight), one from two epochs back does not.
        let old = b
            .group
            .seal(&b.provider, &b.identity, &text("sent before the update"))
            .expect("seal");
        let e0 = a.group.epoch();
        let commit = a.group.update(&a.provider, &a.identity).expect("update");
        assert!(matches!(
            b.group.open(&b.provider, &commit).expect("commit"),
            Opened::Commit { epoch, .. } if epoch == e0 + 1
        ));
        assert_eq!(a.group.epoch_authenticator(), b.group.epoch_authenticator());
        assert_eq!(
            said(a.group.open(&a.provider, &old).expect("in-flight")),
            "sent before the update"
        );
        let older = b
            .group
            .seal(&b.provider, &b.identity, &text("x"))
            .expect("seal");
        let commit = a.group.update(&a.provider, &a.identity).expect("update");
        b.group.open(&b.provider, &commit).expect("commit");
        let commit = a.group.update(&a.provider, &a.identity).expect("update");
        b.group.open(&b.provider, &commit).expect("commit");
        assert!(matches!(
            a.group.open(&a.provider, &older),
            Err(E2eeError::WrongEpoch { .. })
        ));
        // Garbage of every kind is an error, never a panic, and state survives it.
        for garbage in [&[][..], &[0xff; 40][..], &commit[..10], &commit[..]] {
            assert!(a.group.open(&a.provider, garbage).is_err());
        }
        assert!(Group::join(&a.provider, &[1, 2, 3]).is_err());
        assert!(Group::start(&a.provider, &a.identity, Suite::XWing, &commit, &[0; 32]).is_err());
        assert_eq!(
            said(send(&mut b, &mut a, "still here").expect("open")),
            "still here"
        );
        assert_eq!(
            said(send(&mut a, &mut b, "me too").expect("open")),
            "me too"
        );
    }

    #[test]
    fn classic_suite_works_as_fallback() {
        let (mut a, mut b) = pair(Suite::Classic);
        assert_eq!(a.group.suite(), Some(Suite::Classic));
        assert_eq!(said(send(&mut a, &mut b, "hi").expect("open")), "hi");
        assert_eq!(said(send(&mut b, &mut a, "hey").expect("open")), "hey");
    }

    #[test]
    fn a_message_for_another_conversation_is_refused() {
        let (mut a, mut b) = pair(Suite::XWing);
        let (mut c, _d) = pair(Suite::XWing);
        let ct = c
            .group
            .seal(&c.provider, &c.identity, &text("elsewhere"))
            .expect("seal");
        let err = a.group.open(&a.provider, &ct).expect_err("other group");
        assert!(err.is_bad_input(), "{err}");
        assert_eq!(said(send(&mut b, &mut a, "ours").expect("open")), "ours");
    }
}
