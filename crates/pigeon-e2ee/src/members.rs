//! Groups of any size: creating, joining, and changing who is in them.
//!
//! Any member device may commit. The relay's group log gives every commit one place in one
//! order; every member applies, for its current epoch, the first commit that is valid —
//! valid for MLS and for the roster's rules ([`crate::roster::check_commit`]) — and drops
//! the rest as stale ([`crate::E2eeError::WrongEpoch`]) or invalid
//! ([`crate::E2eeError::InvalidCommit`]). A device's own commit is staged here and merged
//! only when the log shows it won ([`Group::merge_pending`]); when another commit won, the
//! caller discards it ([`Group::discard_pending`]) and proposes its change again.

use crate::group::{Group, Identity, ratchet};
use crate::rejoin::{
    LeafExtras, RestoreSecret, TICKET_EXTENSION, Ticket, leaf_ticket, opens, restore_opens,
    ticket_extensions,
};
use crate::roster::{CommitShape, ROSTER_EXTENSION, Roster, RosterEntry, check_commit};
use crate::{E2eeError, Opened, Suite, mls};
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use prost::Message as _;
use std::collections::BTreeSet;
use tls_codec::{Deserialize as _, Serialize as _};

/// Past epochs whose keys a group member keeps: none. A group message counts only in the epoch
/// that is current at its place in the log; one sent in an epoch a commit ended before it
/// reached the log is refused by every member alike ([`crate::E2eeError::WrongEpoch`]), and
/// its sender, who sees the same, sends it again in the new epoch. So no old epoch's keys are
/// ever needed, and a message costs the same in a group of 1,000 as of 2 (openmls stores
/// each past epoch's member list beside its keys, and writes all of it on every message).
pub const GROUP_PAST_EPOCHS: usize = 0;

/// What a merged commit changed, for the transcript.
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct Changes {
    /// The committing device.
    pub committer: Option<RosterEntry>,
    /// Devices added.
    pub added: Vec<RosterEntry>,
    /// Devices removed by someone else.
    pub removed: Vec<RosterEntry>,
    /// Devices that left.
    pub left: Vec<RosterEntry>,
    /// The group's new name, when it changed.
    pub renamed: Option<String>,
    /// Devices made admin.
    pub promoted: Vec<RosterEntry>,
    /// Devices that fell behind and were taken back (a new leaf for the same device).
    pub rejoined: Vec<RosterEntry>,
    /// Devices restored from a backup, under their new keys: each took the place of the device
    /// that made the backup (same person, name, device name and admin flag).
    pub restored: Vec<RosterEntry>,
    /// This device was removed: the group is over for it.
    pub self_removed: bool,
}

/// A change a member proposes to make in one commit (pending leave requests ride along).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Change {
    /// Add the device whose key package this is, under this roster entry.
    Add {
        /// The serialized key package.
        key_package: Vec<u8>,
        /// Who it is (its `key` must be the key package's signature key).
        entry: RosterEntry,
    },
    /// Add several devices in one commit (key package, roster entry).
    AddMany(Vec<(Vec<u8>, RosterEntry)>),
    /// Remove these devices (by signature key).
    Remove {
        /// Their keys.
        keys: Vec<Vec<u8>>,
    },
    /// Refresh this device's own keys (post-compromise security).
    Update,
    /// Rename the group.
    Rename(String),
    /// Make a device admin.
    Promote(Vec<u8>),
    /// Commit the pending requests to leave and nothing else.
    CommitLeaves,
    /// Take back a device that fell behind: replace its leaf by the one in this key package,
    /// whose ticket reveals the secret of the leaf it replaces ([`Group::check_rejoin`]).
    Rejoin {
        /// The serialized key package the device sent.
        key_package: Vec<u8>,
    },
    /// Let a device restored from a backup take the place of the device that made it: remove
    /// that device's leaf and add this key package (a new signature key) under its roster
    /// entry ([`Group::check_restore`]).
    Restore {
        /// The serialized key package the restored device sent.
        key_package: Vec<u8>,
    },
    /// Refresh this device's own keys, with a new backup's restore commitment in its leaf
    /// (which then stays there across later refreshes).
    Backup {
        /// [`RestoreSecret::commitment`] of the new backup's secret for this group.
        commitment: [u8; 32],
    },
}

/// A device's request to be taken back, checked against the group's tree.
#[derive(Debug)]
pub struct Rejoin {
    /// The device's roster entry (unchanged by the rejoin).
    pub entry: RosterEntry,
    /// The secret of the ticket its current leaf commits to, revealed in the request: only the
    /// device and the group's members see it, so it can seal what goes back to the device.
    pub revealed: Ticket,
}

/// A restored device's request to take the place of the device that made the backup, checked
/// against the group's tree.
#[derive(Debug)]
pub struct Restore {
    /// The roster entry of the device whose place it takes.
    pub entry: RosterEntry,
    /// The restored device's signature key.
    pub key: Vec<u8>,
    /// The backup's secret, revealed in the request: it seals what goes back to the device.
    pub revealed: RestoreSecret,
}

/// A staged commit, not yet merged.
#[derive(Debug)]
pub struct Committed {
    /// The commit, for the group's log.
    pub commit: Vec<u8>,
    /// The Welcome for added devices, if any.
    pub welcome: Option<Vec<u8>>,
    /// The epoch the commit is for (it wins only as the first valid commit of this epoch).
    pub epoch: u64,
    /// The rejoin ticket in this device's new leaf: keep its secret once the commit wins.
    pub ticket: Ticket,
}

/// The leaf capabilities every Pigeonpost device announces: the roster extension.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::Unknown(ROSTER_EXTENSION),
            ExtensionType::Unknown(TICKET_EXTENSION),
        ])
        .build()
}

fn context_extensions(roster: &Roster) -> Result<Extensions<GroupContext>, E2eeError> {
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(ROSTER_EXTENSION)],
            &[],
            &[],
        )),
        Extension::Unknown(ROSTER_EXTENSION, UnknownExtension(roster.encode_to_vec())),
    ])
    .map_err(mls("building the group's extensions"))
}

fn roster_of(extensions: &Extensions<GroupContext>) -> Option<Result<Roster, String>> {
    extensions
        .unknown(ROSTER_EXTENSION)
        .map(|ext| Roster::decode_checked(&ext.0))
}

fn invalid(reason: impl Into<String>) -> E2eeError {
    E2eeError::InvalidCommit(reason.into())
}

impl Group {
    /// Creates a group whose only member is this device, described by `roster` (which must
    /// list exactly `identity`, as an admin).
    ///
    /// # Errors
    /// [`E2eeError::NotAllowed`] for a roster that breaks the rules; MLS failures.
    pub fn create<P: OpenMlsProvider>(
        provider: &P,
        identity: &Identity,
        suite: Suite,
        roster: &Roster,
    ) -> Result<Self, E2eeError> {
        roster.check().map_err(E2eeError::NotAllowed)?;
        if roster.members.len() != 1
            || roster.members[0].key != identity.public_key()
            || !roster.members[0].admin
        {
            return Err(E2eeError::NotAllowed(
                "a new group's roster lists its creator alone, as admin".to_owned(),
            ));
        }
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite.mls())
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(GROUP_PAST_EPOCHS)
            .number_of_resumption_psks(0)
            .sender_ratchet_configuration(ratchet())
            .capabilities(capabilities())
            .with_group_context_extensions(context_extensions(roster)?)
            .build();
        let group = MlsGroup::new(
            provider,
            &identity.signer,
            &config,
            identity.credential.clone(),
        )
        .map_err(mls("creating a group"))?;
        Ok(Self {
            group: crate::group::without_resumption_psks(provider, &group)?,
        })
    }

    /// Joins a group from a Welcome (this device's key package keys must be in storage).
    /// The group must carry a roster that lists exactly its devices.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] for a Welcome that does not parse, is not for this device, or
    /// whose roster does not match the group.
    pub fn join_group<P: OpenMlsProvider>(provider: &P, welcome: &[u8]) -> Result<Self, E2eeError> {
        let bad = crate::group::bad("welcome");
        let staged = crate::group::stage_welcome(provider, welcome, GROUP_PAST_EPOCHS)?;
        let roster = roster_of(staged.group_context().extensions())
            .ok_or_else(|| bad("the group has no roster".to_owned()))?
            .map_err(bad)?;
        let keys: BTreeSet<Vec<u8>> = staged.members().map(|m| m.signature_key.clone()).collect();
        let listed: BTreeSet<Vec<u8>> = roster.members.iter().map(|m| m.key.clone()).collect();
        if keys != listed {
            return Err(bad(
                "the group's roster does not list exactly its devices".to_owned()
            ));
        }
        let group = staged
            .into_group(provider)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { group })
    }

    /// True for a group with a roster (any size), false for a 1:1 conversation of the
    /// first design.
    pub fn is_group(&self) -> bool {
        self.group.extensions().unknown(ROSTER_EXTENSION).is_some()
    }

    /// The group's roster in the current epoch.
    ///
    /// # Errors
    /// [`E2eeError::UnknownGroup`] for a conversation without one.
    pub fn roster(&self) -> Result<Roster, E2eeError> {
        roster_of(self.group.extensions())
            .ok_or(E2eeError::UnknownGroup)?
            .map_err(|reason| E2eeError::Mls {
                op: "reading the roster",
                reason,
            })
    }

    /// The signature keys of the group's devices.
    pub fn member_keys(&self) -> BTreeSet<Vec<u8>> {
        self.group.members().map(|m| m.signature_key).collect()
    }

    /// This device's signature key in the group.
    pub fn own_key(&self) -> Vec<u8> {
        self.group
            .own_leaf_node()
            .map(|l| l.signature_key().as_slice().to_vec())
            .unwrap_or_default()
    }

    /// The commitment of this device's rejoin ticket in the current tree (`None` while its
    /// leaf has none: it gets one with its next commit).
    pub fn own_ticket(&self) -> Option<[u8; 32]> {
        self.group
            .own_leaf_node()
            .and_then(leaf_ticket)
            .map(|t| t.commitment)
    }

    /// The commitment of this device's newest backup's secret in its leaf (`None`: no backup
    /// of this device can restore it in this group).
    pub fn own_restore(&self) -> Option<[u8; 32]> {
        self.group
            .own_leaf_node()
            .and_then(leaf_ticket)
            .and_then(|t| t.restore)
    }

    /// The other devices' signature keys and restore commitments (those with a backup): what
    /// opens a restored device's request.
    pub fn restores(&self) -> Vec<(Vec<u8>, [u8; 32])> {
        let own = self.group.own_leaf_index();
        self.group
            .members()
            .filter(|m| m.index != own)
            .filter_map(|m| {
                let leaf = self.group.public_group().leaf(m.index)?;
                leaf_ticket(leaf)
                    .and_then(|t| t.restore)
                    .map(|c| (m.signature_key, c))
            })
            .collect()
    }

    /// The other devices' signature keys and ticket commitments (those whose leaf has one):
    /// what opens a request to rejoin.
    pub fn tickets(&self) -> Vec<(Vec<u8>, [u8; 32])> {
        let own = self.group.own_leaf_index();
        self.group
            .members()
            .filter(|m| m.index != own)
            .filter_map(|m| {
                let leaf = self.group.public_group().leaf(m.index)?;
                leaf_ticket(leaf).map(|t| (m.signature_key, t.commitment))
            })
            .collect()
    }

    /// Checks a device's request to be taken back: a key package of the group's suite, signed
    /// by a device in the group (not this one), whose ticket reveals the secret behind the
    /// ticket in that device's current leaf.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] saying which check failed; a request from a copy of an old
    /// state of the device (taken before its last key refresh) fails here, as does one from a
    /// device that is back already.
    pub fn check_rejoin<P: OpenMlsProvider>(
        &self,
        provider: &P,
        key_package: &[u8],
    ) -> Result<Rejoin, E2eeError> {
        let bad = crate::group::bad("request to rejoin");
        let kp = validate_key_package(provider, key_package, self.group.ciphersuite())?;
        let key = kp.leaf_node().signature_key().as_slice().to_vec();
        let member = self
            .group
            .members()
            .find(|m| m.signature_key == key)
            .ok_or_else(|| bad("its device is not in the group".to_owned()))?;
        if member.index == self.group.own_leaf_index() {
            return Err(bad("it is for this device itself".to_owned()));
        }
        let commitment = self
            .group
            .public_group()
            .leaf(member.index)
            .and_then(leaf_ticket)
            .map(|t| t.commitment)
            .ok_or_else(|| bad("the device's leaf has no ticket".to_owned()))?;
        let revealed = leaf_ticket(kp.leaf_node())
            .and_then(|t| t.reveal)
            .ok_or_else(|| bad("it reveals no ticket".to_owned()))?;
        if !opens(&commitment, &revealed) {
            return Err(bad(
                "its ticket is not the one in the device's leaf (a copy of an older state, or \
                 the device is back already)"
                    .to_owned(),
            ));
        }
        let entry = self
            .roster()?
            .entry(&key)
            .cloned()
            .ok_or_else(|| bad("the roster does not list its device".to_owned()))?;
        Ok(Rejoin {
            entry,
            revealed: Ticket::from_secret(revealed),
        })
    }

    /// Checks a restored device's request: a key package of the group's suite under a key not
    /// in the group, revealing the backup secret whose commitment is in another device's
    /// current leaf. That device's place is the restored one's.
    ///
    /// # Errors
    /// [`E2eeError::BadInput`] saying which check failed: a request from an older backup (a
    /// newer one replaced its secret), or for a device restored already, fails here.
    pub fn check_restore<P: OpenMlsProvider>(
        &self,
        provider: &P,
        key_package: &[u8],
    ) -> Result<Restore, E2eeError> {
        let bad = crate::group::bad("request to restore a device");
        let kp = validate_key_package(provider, key_package, self.group.ciphersuite())?;
        let key = kp.leaf_node().signature_key().as_slice().to_vec();
        if self.group.members().any(|m| m.signature_key == key) {
            return Err(bad("its key is in the group already".to_owned()));
        }
        let revealed = leaf_ticket(kp.leaf_node())
            .and_then(|t| t.restore_reveal)
            .ok_or_else(|| bad("it reveals no backup's secret".to_owned()))?;
        let own = self.group.own_leaf_index();
        let member = self
            .group
            .members()
            .find(|m| {
                self.group
                    .public_group()
                    .leaf(m.index)
                    .and_then(leaf_ticket)
                    .and_then(|t| t.restore)
                    .is_some_and(|c| restore_opens(&c, &revealed))
            })
            .ok_or_else(|| {
                bad(
                    "its backup's secret is in no device's leaf (an older backup, or the \
                     device was restored already)"
                        .to_owned(),
                )
            })?;
        if member.index == own {
            return Err(bad("it is for this device itself".to_owned()));
        }
        let entry = self
            .roster()?
            .entry(&member.signature_key)
            .cloned()
            .ok_or_else(|| bad("the roster does not list the device".to_owned()))?;
        Ok(Restore {
            entry,
            key,
            revealed: RestoreSecret::from_secret(revealed),
        })
    }

    /// True while a commit of this device's waits for the log's verdict.
    pub fn has_pending_commit(&self) -> bool {
        self.group.pending_commit().is_some()
    }

    /// Devices that asked to leave and are not removed yet.
    pub fn leaving(&self) -> BTreeSet<Vec<u8>> {
        self.group
            .pending_proposals()
            .filter_map(|p| match (p.proposal(), p.sender()) {
                (Proposal::Remove(r), Sender::Member(by)) if r.removed() == *by => {
                    self.group.member_at(r.removed()).map(|m| m.signature_key)
                }
                _ => None,
            })
            .collect()
    }

    /// Stages a commit that makes `change` (and removes every device that asked to leave).
    /// Nothing is merged: publish the commit to the log, then [`Self::merge_pending`] if it
    /// wins or [`Self::discard_pending`] if another commit does.
    ///
    /// # Errors
    /// [`E2eeError::NotAllowed`] when this device may not make the change (the rules every
    /// member applies would refuse it), [`E2eeError::BadInput`] for an unusable key package.
    pub fn commit<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
        change: Change,
    ) -> Result<Committed, E2eeError> {
        if self.has_pending_commit() {
            return Err(E2eeError::NotAllowed(
                "a change to this group is still waiting for the relay's order".to_owned(),
            ));
        }
        let old = self.roster()?;
        let members = self.member_keys();
        let leaving = self.leaving();
        let restore = match &change {
            Change::Backup { commitment } => Some(*commitment),
            _ => self.own_restore(),
        };
        let mut roster = old.without(&leaving);
        let mut shape = CommitShape {
            committer: identity.public_key().to_vec(),
            removed: leaving.clone(),
            left: leaving,
            ..CommitShape::default()
        };
        let mut adds = Vec::new();
        let mut removals = Vec::new();
        match change {
            Change::Add { key_package, entry } => {
                adds.push(self.add_one(provider, &mut shape, &mut roster, &key_package, entry)?);
            }
            Change::AddMany(list) => {
                for (key_package, entry) in list {
                    adds.push(self.add_one(
                        provider,
                        &mut shape,
                        &mut roster,
                        &key_package,
                        entry,
                    )?);
                }
            }
            Change::Remove { keys } => {
                for key in keys {
                    let leaf = self.leaf_of(&key)?;
                    if !shape.removed.contains(&key) {
                        removals.push(leaf);
                    }
                    shape.removed.insert(key.clone());
                    roster.members.retain(|m| m.key != key);
                }
            }
            Change::Update | Change::CommitLeaves | Change::Backup { .. } => {}
            Change::Restore { key_package } => {
                let restore = self.check_restore(provider, &key_package)?;
                let old_key = restore.entry.key;
                removals.push(self.replaced_leaf(&shape, &old_key)?);
                shape.removed.insert(old_key.clone());
                shape.added.insert(restore.key.clone());
                for m in &mut roster.members {
                    if m.key == old_key {
                        m.key.clone_from(&restore.key);
                    }
                }
                shape.restored.insert(old_key, restore.key);
                adds.push(validate_key_package(
                    provider,
                    &key_package,
                    self.group.ciphersuite(),
                )?);
            }
            Change::Rejoin { key_package } => {
                let rejoin = self.check_rejoin(provider, &key_package)?;
                let key = rejoin.entry.key;
                removals.push(self.replaced_leaf(&shape, &key)?);
                shape.removed.insert(key.clone());
                shape.added.insert(key.clone());
                shape.rejoined.insert(key);
                adds.push(validate_key_package(
                    provider,
                    &key_package,
                    self.group.ciphersuite(),
                )?);
            }
            Change::Rename(name) => roster.name = name,
            Change::Promote(key) => {
                let entry = roster
                    .members
                    .iter_mut()
                    .find(|m| m.key == key)
                    .ok_or_else(|| {
                        E2eeError::NotAllowed("that device is not in the group".to_owned())
                    })?;
                entry.admin = true;
            }
        }
        if roster != old {
            shape.new_roster = Some(roster.clone());
        }
        check_commit(&old, &members, &shape).map_err(E2eeError::NotAllowed)?;
        let ticket = Ticket::generate(provider)?;
        let leaf = LeafNodeParameters::builder()
            .with_capabilities(capabilities())
            .with_extensions(ticket_extensions(
                &ticket,
                &LeafExtras {
                    restore,
                    ..LeafExtras::default()
                },
            )?)
            .build();
        let mut builder = self
            .group
            .commit_builder()
            .consume_proposal_store(true)
            .force_self_update(true)
            .leaf_node_parameters(leaf)
            .propose_adds(adds)
            .propose_removals(removals);
        if roster != old {
            builder = builder
                .propose_group_context_extensions(context_extensions(&roster)?)
                .map_err(mls("proposing the new roster"))?;
        }
        let bundle = builder
            .load_psks(provider.storage())
            .map_err(mls("building a commit"))?
            // The group's configuration puts the ratchet tree into GroupInfos so that Welcomes
            // carry it; without this, openmls would also export and sign a GroupInfo with the
            // whole tree for every commit (megabytes at 1,000 devices), which nothing reads.
            .create_group_info(false)
            .build(provider.rand(), provider.crypto(), &identity.signer, |_| {
                true
            })
            .map_err(mls("building a commit"))?
            .stage_commit(provider)
            .map_err(mls("staging a commit"))?;
        let commit = bundle
            .commit()
            .tls_serialize_detached()
            .map_err(mls("serializing a commit"))?;
        let welcome = bundle
            .to_welcome_msg()
            .map(|w| w.tls_serialize_detached())
            .transpose()
            .map_err(mls("serializing a welcome"))?;
        Ok(Committed {
            commit,
            welcome,
            epoch: self.epoch(),
            ticket,
        })
    }

    /// The leaf of the device with this signature key.
    fn leaf_of(&self, key: &[u8]) -> Result<LeafNodeIndex, E2eeError> {
        self.group
            .members()
            .find(|m| m.signature_key == key)
            .map(|m| m.index)
            .ok_or_else(|| E2eeError::NotAllowed("that device is not in the group".to_owned()))
    }

    /// The leaf a rejoin or a restore replaces: the device's, unless it asked to leave (then
    /// it goes, and is not taken back).
    fn replaced_leaf(&self, shape: &CommitShape, key: &[u8]) -> Result<LeafNodeIndex, E2eeError> {
        if shape.removed.contains(key) {
            return Err(E2eeError::NotAllowed(
                "that device asked to leave; it is not taken back".to_owned(),
            ));
        }
        self.leaf_of(key)
    }

    fn add_one<P: OpenMlsProvider>(
        &self,
        provider: &P,
        shape: &mut CommitShape,
        roster: &mut Roster,
        key_package: &[u8],
        entry: RosterEntry,
    ) -> Result<KeyPackage, E2eeError> {
        let kp = validate_key_package(provider, key_package, self.group.ciphersuite())?;
        if kp.leaf_node().signature_key().as_slice() != entry.key.as_slice() {
            return Err(E2eeError::NotAllowed(
                "the roster entry is not for this key package".to_owned(),
            ));
        }
        if !shape.added.insert(entry.key.clone()) {
            return Err(E2eeError::NotAllowed("a device is added twice".to_owned()));
        }
        roster.members.push(entry);
        Ok(kp)
    }

    /// This device's staged commit won: merges it. Returns what it changed.
    ///
    /// # Errors
    /// If there is none, or storage fails.
    pub fn merge_pending<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
    ) -> Result<Changes, E2eeError> {
        let staged = self
            .group
            .pending_commit()
            .ok_or_else(|| E2eeError::NotAllowed("no change is waiting".to_owned()))?;
        let own = Sender::Member(self.group.own_leaf_index());
        let changes = self.describe(&own, staged)?;
        self.group
            .merge_pending_commit(provider)
            .map_err(mls("merging this device's commit"))?;
        Ok(changes)
    }

    /// This device's staged commit lost (another commit of its epoch came first in the log):
    /// forgets it.
    ///
    /// # Errors
    /// If storage fails.
    pub fn discard_pending<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), E2eeError> {
        self.group
            .clear_pending_commit(provider.storage())
            .map_err(mls("dropping a lost commit"))
    }

    /// A proposal that this device leave the group, for the log. Another member commits it.
    ///
    /// # Errors
    /// If MLS refuses.
    pub fn propose_leave<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
    ) -> Result<Vec<u8>, E2eeError> {
        self.group
            .leave_group(provider, &identity.signer)
            .map_err(mls("asking to leave"))?
            .tls_serialize_detached()
            .map_err(mls("serializing a request to leave"))
    }

    pub(crate) fn take_proposal<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        sender: &Sender,
        proposal: QueuedProposal,
    ) -> Result<Opened, E2eeError> {
        let self_remove = match (proposal.proposal(), sender) {
            (Proposal::Remove(r), Sender::Member(by)) if r.removed() == *by => {
                self.group.member_at(r.removed()).map(|m| m.signature_key)
            }
            _ => None,
        };
        let Some(key) = self_remove else {
            return Err(E2eeError::BadInput {
                what: "proposal",
                reason: "only a member's request to leave may come as a proposal".to_owned(),
            });
        };
        self.group
            .store_pending_proposal(provider.storage(), proposal)
            .map_err(mls("keeping a request to leave"))?;
        Ok(Opened::Leaving { key })
    }

    /// Applies the roster's rules to a commit from another member; what it changes if valid.
    pub(crate) fn check_staged(
        &self,
        sender: &Sender,
        staged: &StagedCommit,
    ) -> Result<Changes, E2eeError> {
        self.describe(sender, staged)
    }

    fn describe(&self, sender: &Sender, staged: &StagedCommit) -> Result<Changes, E2eeError> {
        let Sender::Member(committer_leaf) = sender else {
            return Err(invalid("a commit from outside the group"));
        };
        let committer = self
            .group
            .member_at(*committer_leaf)
            .ok_or_else(|| invalid("a commit from an unknown leaf"))?
            .signature_key;
        for p in staged.queued_proposals() {
            match p.proposal() {
                Proposal::Add(_) | Proposal::Remove(_) | Proposal::GroupContextExtensions(_) => {}
                _ => {
                    return Err(invalid(
                        "a commit carries a kind of proposal groups do not use",
                    ));
                }
            }
        }
        if let Some(leaf) = staged.update_path_leaf_node()
            && leaf.signature_key().as_slice() != committer.as_slice()
        {
            return Err(invalid("a commit changes its committer's signature key"));
        }
        let old = self.roster()?;
        let mut shape = CommitShape {
            committer: committer.clone(),
            ..CommitShape::default()
        };
        let mut removed_at = std::collections::BTreeMap::new();
        for remove in staged.remove_proposals() {
            let leaf = remove.remove_proposal().removed();
            let key = self
                .group
                .member_at(leaf)
                .ok_or_else(|| invalid("a commit removes an empty leaf"))?
                .signature_key;
            if matches!(remove.sender(), Sender::Member(by) if *by == leaf) {
                shape.left.insert(key.clone());
            }
            shape.removed.insert(key.clone());
            removed_at.insert(key, leaf);
        }
        for add in staged.add_proposals() {
            let leaf_node = add.add_proposal().key_package().leaf_node();
            let key = leaf_node.signature_key().as_slice().to_vec();
            if let Some(old_leaf) = removed_at.get(&key) {
                // The same device, removed and added: a rejoin, valid only with the secret of
                // the ticket in the leaf it replaces.
                let commitment = self
                    .group
                    .public_group()
                    .leaf(*old_leaf)
                    .and_then(leaf_ticket)
                    .map(|t| t.commitment)
                    .ok_or_else(|| {
                        invalid("a commit takes back a device whose leaf has no ticket")
                    })?;
                let revealed = leaf_ticket(leaf_node)
                    .and_then(|t| t.reveal)
                    .ok_or_else(|| invalid("a commit takes back a device without its ticket"))?;
                if !opens(&commitment, &revealed) {
                    return Err(invalid(
                        "a commit takes back a device with a ticket that is not its leaf's",
                    ));
                }
                shape.rejoined.insert(key.clone());
            } else if let Some(revealed) = leaf_ticket(leaf_node).and_then(|t| t.restore_reveal) {
                // A device restored from a backup: valid only in the place of the removed
                // device whose leaf commits to that backup's secret.
                let old_key = removed_at
                    .iter()
                    .find(|(_, leaf)| {
                        self.group
                            .public_group()
                            .leaf(**leaf)
                            .and_then(leaf_ticket)
                            .and_then(|t| t.restore)
                            .is_some_and(|c| restore_opens(&c, &revealed))
                    })
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| {
                        invalid("a commit restores a device without removing the one it replaces")
                    })?;
                if shape.restored.insert(old_key, key.clone()).is_some() {
                    return Err(invalid("a commit restores one device twice"));
                }
            }
            shape.added.insert(key);
        }
        let new = roster_of(staged.group_context().extensions())
            .ok_or_else(|| invalid("a commit drops the roster"))?
            .map_err(invalid)?;
        if new != old {
            shape.new_roster = Some(new.clone());
        }
        let new = check_commit(&old, &self.member_keys(), &shape).map_err(invalid)?;
        let entry = |key: &Vec<u8>| old.entry(key).cloned();
        Ok(Changes {
            committer: entry(&committer),
            added: new
                .members
                .iter()
                .filter(|m| shape.added.contains(&m.key) && !shape.rejoined.contains(&m.key))
                .filter(|m| !shape.restored.values().any(|k| *k == m.key))
                .cloned()
                .collect(),
            removed: shape
                .removed
                .difference(&shape.left)
                .filter(|k| !shape.rejoined.contains(*k) && !shape.restored.contains_key(*k))
                .filter_map(entry)
                .collect(),
            restored: new
                .members
                .iter()
                .filter(|m| shape.restored.values().any(|k| *k == m.key))
                .cloned()
                .collect(),
            rejoined: shape.rejoined.iter().filter_map(entry).collect(),
            left: shape.left.iter().filter_map(entry).collect(),
            renamed: (new.name != old.name).then(|| new.name.clone()),
            promoted: new
                .members
                .iter()
                .filter(|m| m.admin && old.entry(&m.key).is_some_and(|o| !o.admin))
                .cloned()
                .collect(),
            self_removed: staged.self_removed(),
        })
    }
}

/// A group's epoch and roster as stored, read from its group context alone: without loading
/// the ratchet tree, which for a group of 1,000 X-Wing devices is megabytes.
///
/// # Errors
/// [`E2eeError::UnknownGroup`] when storage does not hold the group.
pub fn stored_state<P: OpenMlsProvider>(
    provider: &P,
    group_id: &[u8],
) -> Result<(u64, Option<Roster>), E2eeError> {
    use openmls_traits::storage::StorageProvider as _;
    let context: GroupContext = provider
        .storage()
        .group_context(&GroupId::from_slice(group_id))
        .map_err(mls("reading a group"))?
        .ok_or(E2eeError::UnknownGroup)?;
    let roster = roster_of(context.extensions())
        .transpose()
        .map_err(|reason| E2eeError::Mls {
            op: "reading the roster",
            reason,
        })?;
    Ok((context.epoch().as_u64(), roster))
}

/// The signature key a key package of `suite` carries, after validating it.
///
/// # Errors
/// [`E2eeError::BadInput`] for one that does not parse or validate, or is of another suite.
pub fn key_package_signature_key<P: OpenMlsProvider>(
    provider: &P,
    bytes: &[u8],
    suite: Suite,
) -> Result<Vec<u8>, E2eeError> {
    let kp = validate_key_package(provider, bytes, suite.mls())?;
    Ok(kp.leaf_node().signature_key().as_slice().to_vec())
}

fn validate_key_package<P: OpenMlsProvider>(
    provider: &P,
    bytes: &[u8],
    suite: Ciphersuite,
) -> Result<KeyPackage, E2eeError> {
    let bad = crate::group::bad("key package");
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| bad(e.to_string()))?;
    let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
        return Err(bad("not a key package".to_owned()));
    };
    let kp = kp
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| bad(e.to_string()))?;
    if kp.ciphersuite() != suite {
        return Err(bad(
            "it is for another ciphersuite than the group's".to_owned()
        ));
    }
    key_package_keys(&kp).map_err(|e| bad(e.to_owned()))?;
    Ok(kp)
}

/// A key package's two public keys (its init key and its leaf's encryption key) are keys
/// others can encrypt to ([`crate::crypto::hpke_key_problem`]).
fn key_package_keys(kp: &KeyPackage) -> Result<(), &'static str> {
    let kem = kp.ciphersuite().hpke_kem_algorithm();
    if let Some(problem) = crate::crypto::hpke_key_problem(kem, kp.hpke_init_key().as_slice()) {
        return Err(problem);
    }
    leaf_key(kem, kp.leaf_node())
}

/// A leaf's encryption key is one others can encrypt to.
fn leaf_key(kem: HpkeKemType, leaf: &LeafNode) -> Result<(), &'static str> {
    // openmls keeps the key's bytes to itself; its wire form is the bytes behind a length.
    let key = leaf
        .encryption_key()
        .tls_serialize_detached()
        .ok()
        .and_then(|wire| tls_codec::VLBytes::tls_deserialize_exact(wire).ok())
        .ok_or("a leaf whose encryption key cannot be read")?;
    match crate::crypto::hpke_key_problem(kem, key.as_slice()) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Refuses a commit that brings a public key nobody can encrypt to — in its committer's new
/// leaf or in a key package it adds: every later commit whose path reaches that leaf would
/// fail for whoever makes it, so one member could stop everyone else's changes (their key
/// refreshes included) until an admin removed it. The check reads only the commit's bytes, so
/// every device refuses the same commits.
///
/// # Errors
/// [`E2eeError::InvalidCommit`] saying which key is at fault.
pub(crate) fn check_keys(staged: &StagedCommit) -> Result<(), E2eeError> {
    let kem = staged.group_context().ciphersuite().hpke_kem_algorithm();
    if let Some(leaf) = staged.update_path_leaf_node() {
        leaf_key(kem, leaf).map_err(|p| invalid(format!("the committer's new leaf has {p}")))?;
    }
    for add in staged.add_proposals() {
        key_package_keys(add.add_proposal().key_package())
            .map_err(|p| invalid(format!("a device added has {p}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Text, body::Body};
    use openmls_libcrux_crypto::Provider as MemoryProvider;

    struct Device {
        provider: MemoryProvider,
        identity: Identity,
        group: Option<Group>,
    }

    impl Device {
        fn new() -> Self {
            let provider = MemoryProvider::new().expect("provider");
            let identity = Identity::generate(&provider).expect("identity");
            Self {
                provider,
                identity,
                group: None,
            }
        }

        fn entry(&self, name: &str, admin: bool) -> RosterEntry {
            RosterEntry {
                key: self.identity.public_key().to_vec(),
                person: self.identity.public_key()[..16].to_vec(),
                name: name.to_owned(),
                device: "phone".to_owned(),
                admin,
            }
        }

        fn group(&mut self) -> &mut Group {
            self.group.as_mut().expect("in the group")
        }

        fn check_rejoin(&self, key_package: &[u8]) -> Result<Rejoin, E2eeError> {
            let g = self.group.as_ref().expect("in the group");
            g.check_rejoin(&self.provider, key_package)
        }

        fn check_restore(&self, key_package: &[u8]) -> Result<Restore, E2eeError> {
            let g = self.group.as_ref().expect("in the group");
            g.check_restore(&self.provider, key_package)
        }

        fn commit(&mut self, change: Change) -> Result<Committed, E2eeError> {
            let g = self.group.as_mut().expect("in the group");
            g.commit(&self.provider, &self.identity, change)
        }

        fn say(&mut self, text: &str) -> Vec<u8> {
            let content = Content {
                id: vec![9; 16],
                sent_at_ms: 0,
                body: Some(Body::Text(Text {
                    text: text.to_owned(),
                })),
            };
            let g = self.group.as_mut().expect("in the group");
            g.seal(&self.provider, &self.identity, &content)
                .expect("seal")
        }

        fn open(&mut self, ct: &[u8]) -> Result<Opened, E2eeError> {
            let g = self.group.as_mut().expect("in the group");
            g.open(&self.provider, ct)
        }
    }

    use crate::Content;

    /// The log: every device applies every entry in order; a device's own commit is merged
    /// when it comes first for its epoch and discarded otherwise.
    fn apply_log(devices: &mut [Device], log: &[(usize, Vec<u8>)]) {
        for (i, d) in devices.iter_mut().enumerate() {
            if d.group.is_none() {
                continue;
            }
            for (from, ct) in log {
                if *from == i {
                    let g = d.group.as_mut().expect("group");
                    if g.has_pending_commit() {
                        // Own entry: a commit wins if nothing moved the epoch before it.
                        g.merge_pending(&d.provider).expect("merge own");
                    }
                    continue;
                }
                let g = d.group.as_mut().expect("group");
                match g.open(&d.provider, ct) {
                    Ok(_) | Err(E2eeError::WrongEpoch { .. }) => {}
                    Err(e) => panic!("device {i}: {e}"),
                }
                if g.has_pending_commit() {
                    // Another commit merged first: ours lost.
                }
            }
        }
    }

    /// A Welcome to a group whose id is longer than a device accepts (300 bytes; Pigeonpost's
    /// are 16) is refused, saying why: the id is a key of the stored state.
    #[test]
    fn a_welcome_with_an_overlong_group_id_is_refused() {
        let (creator, joiner) = (Device::new(), Device::new());
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(Suite::XWing.mls())
            .use_ratchet_tree_extension(true)
            .build();
        let mut group = MlsGroup::new_with_group_id(
            &creator.provider,
            &creator.identity.signer,
            &config,
            GroupId::from_slice(&[7; 300]),
            creator.identity.credential.clone(),
        )
        .expect("group");
        let kp = joiner
            .identity
            .key_package(&joiner.provider, Suite::XWing)
            .expect("key package");
        let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize_exact(&kp)
            .expect("parses")
            .extract()
        else {
            panic!("not a key package");
        };
        let kp = kp
            .validate(creator.provider.crypto(), ProtocolVersion::Mls10)
            .expect("valid");
        let (_, welcome, _) = group
            .add_members(&creator.provider, &creator.identity.signer, &[kp])
            .expect("add");
        let welcome = welcome.tls_serialize_detached().expect("welcome");
        match Group::join_group(&joiner.provider, &welcome) {
            Err(e) => assert!(
                e.to_string()
                    .contains("its group id is 300 bytes long; at most 256 are accepted"),
                "{e}"
            ),
            Ok(_) => panic!("joined a group with a 300-byte id"),
        }
    }

    /// Issue #14: a 200-device group built in one process; five members commit at the same
    /// moment; applying the log in order, every device ends in the same epoch with the same
    /// secrets, and the four that lost commit again, one after the other.
    #[test]
    fn two_hundred_devices_five_concurrent_commits_no_fork() {
        let mut devices: Vec<Device> = (0..200).map(|_| Device::new()).collect();
        let roster = Roster {
            name: "school".to_owned(),
            members: vec![devices[0].entry("head", true)],
            direct: false,
            devices: false,
        };
        let g = Group::create(
            &devices[0].provider,
            &devices[0].identity,
            Suite::XWing,
            &roster,
        )
        .expect("create");
        devices[0].group = Some(g);
        let adds: Vec<_> = devices[1..]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    d.identity
                        .key_package(&d.provider, Suite::XWing)
                        .expect("kp"),
                    d.entry(&format!("pupil {i}"), false),
                )
            })
            .collect();
        let committed = devices[0].commit(Change::AddMany(adds)).expect("add all");
        {
            let head = &mut devices[0];
            let g = head.group.as_mut().expect("group");
            g.merge_pending(&head.provider).expect("merge");
        }
        let welcome = committed.welcome.expect("welcome");
        for d in &mut devices[1..] {
            d.group = Some(Group::join_group(&d.provider, &welcome).expect("join"));
        }
        let racers = [3usize, 50, 99, 150, 199];
        let mut pending: Vec<usize> = racers.to_vec();
        while !pending.is_empty() {
            // Everyone still waiting commits in the same epoch; the log takes them in this order.
            let log: Vec<(usize, Vec<u8>)> = pending
                .iter()
                .map(|&i| (i, devices[i].commit(Change::Update).expect("update").commit))
                .collect();
            let winner = log[0].0;
            for (i, d) in devices.iter_mut().enumerate() {
                let g = d.group.as_mut().expect("group");
                for (from, ct) in &log {
                    if *from == i {
                        if g.has_pending_commit() {
                            assert_eq!(i, winner, "only the first commit is merged");
                            g.merge_pending(&d.provider).expect("merge own");
                        }
                        continue;
                    }
                    match g.open(&d.provider, ct) {
                        Ok(Opened::Commit { .. }) => assert_eq!(*from, winner),
                        Err(E2eeError::WrongEpoch { .. }) => assert_ne!(*from, winner),
                        other => panic!("device {i}: {other:?}"),
                    }
                }
                assert!(!g.has_pending_commit());
            }
            pending.retain(|&i| i != winner);
        }
        let auth = devices[0].group().epoch_authenticator();
        let epoch = devices[0].group().epoch();
        for d in &mut devices {
            assert_eq!(d.group().epoch(), epoch);
            assert_eq!(d.group().epoch_authenticator(), auth);
        }
        assert_eq!(epoch, 1 + racers.len() as u64);
        let ct = devices[120].say("to all two hundred");
        for (i, d) in devices.iter_mut().enumerate() {
            if i != 120 {
                assert!(
                    matches!(d.open(&ct), Ok(Opened::Content { .. })),
                    "device {i}"
                );
            }
        }
    }

    /// A device that missed commits for good is taken back by a member who is not an admin,
    /// with the secret of the ticket in its leaf; a request with the ticket of an older state
    /// (what a copy taken before the device's last refresh holds) is refused.
    /// A group "class" of three devices: ann (admin) made it and added m1 and m2, one commit
    /// each, in the log. Returns the devices and the rejoin tickets of m1 and m2's first leaves.
    fn class_of_three() -> (Vec<Device>, Vec<Ticket>) {
        let mut devices: Vec<Device> = (0..3).map(|_| Device::new()).collect();
        let roster = Roster {
            name: "class".to_owned(),
            members: vec![devices[0].entry("ann", true)],
            direct: false,
            devices: false,
        };
        let g = Group::create(
            &devices[0].provider,
            &devices[0].identity,
            Suite::XWing,
            &roster,
        )
        .expect("create");
        devices[0].group = Some(g);
        let mut tickets = Vec::new();
        for i in 1..3 {
            let (kp, ticket) = devices[i]
                .identity
                .key_package_with_ticket(&devices[i].provider, Suite::XWing, &LeafExtras::default())
                .expect("kp");
            tickets.push(ticket);
            let entry = devices[i].entry(&format!("m{i}"), false);
            let committed = devices[0]
                .commit(Change::Add {
                    key_package: kp,
                    entry,
                })
                .expect("add");
            apply_log(&mut devices, &[(0, committed.commit)]);
            devices[i].group = Some(
                Group::join_group(&devices[i].provider, &committed.welcome.expect("welcome"))
                    .expect("join"),
            );
        }
        (devices, tickets)
    }

    /// QUIC-style variable-length integer at `at` (RFC 9000 §16, as MLS uses for lengths):
    /// its value and its own length.
    fn varint(bytes: &[u8], at: usize) -> (usize, usize) {
        let first = bytes[at];
        let len = 1usize << (first >> 6);
        let mut value = usize::from(first & 0x3f);
        for b in &bytes[at + 1..at + len] {
            value = (value << 8) | usize::from(*b);
        }
        (value, len)
    }

    /// `at` past one opaque<V> field.
    fn skip_vec(bytes: &[u8], at: usize) -> usize {
        let (n, len) = varint(bytes, at);
        at + len + n
    }

    /// SignWithLabel (RFC 9420 §5.1.2) by `identity` over `content`.
    fn sign_with_label(identity: &Identity, label: &str, content: &[u8]) -> Vec<u8> {
        use openmls_traits::signatures::Signer as _;
        let label = format!("MLS 1.0 {label}");
        let mut tbs = Vec::new();
        tls_codec::VLBytes::new(label.into_bytes())
            .tls_serialize(&mut tbs)
            .expect("label");
        tls_codec::VLBytes::new(content.to_vec())
            .tls_serialize(&mut tbs)
            .expect("content");
        identity.signer.sign(&tbs).expect("signature")
    }

    /// A key package of `identity`, correctly signed, whose leaf's encryption key has an X25519
    /// half of small order (zero): openmls accepts it; nobody could ever encrypt to the leaf.
    fn key_package_with_a_dead_leaf_key(d: &Device) -> Vec<u8> {
        let mut msg = d
            .identity
            .key_package(&d.provider, Suite::XWing)
            .expect("kp");
        // MlsMessage: version, wire format; KeyPackage: version, suite, init key, leaf node.
        let kp = 4;
        let leaf = skip_vec(&msg, kp + 4);
        let (key_len, key_len_len) = varint(&msg, leaf);
        assert_eq!(key_len, 1216, "an X-Wing leaf key");
        let x_half = leaf + key_len_len + 1184;
        msg[x_half..x_half + 32].fill(0);
        // LeafNode: encryption key, signature key, credential (type, identity), capabilities
        // (five vectors), source (key_package: lifetime, two u64), extensions, signature.
        let mut at = skip_vec(&msg, leaf);
        at = skip_vec(&msg, at);
        at = skip_vec(&msg, at + 2);
        for _ in 0..5 {
            at = skip_vec(&msg, at);
        }
        assert_eq!(msg[at], 1, "a key package's leaf");
        at = skip_vec(&msg, at + 1 + 16);
        let leaf_signature = at;
        let signature = sign_with_label(&d.identity, "LeafNodeTBS", &msg[leaf..leaf_signature]);
        let (old_len, len_len) = varint(&msg, leaf_signature);
        assert_eq!(old_len, signature.len());
        msg[leaf_signature + len_len..leaf_signature + len_len + old_len]
            .copy_from_slice(&signature);
        let kp_signature = skip_vec(&msg, skip_vec(&msg, leaf_signature));
        let signature = sign_with_label(&d.identity, "KeyPackageTBS", &msg[kp..kp_signature]);
        let (old_len, len_len) = varint(&msg, kp_signature);
        assert_eq!(
            kp_signature + len_len + old_len,
            msg.len(),
            "the key package's end"
        );
        msg[kp_signature + len_len..].copy_from_slice(&signature);
        msg
    }

    /// A key package whose leaf key nobody can encrypt to (signed correctly, so openmls takes
    /// it) is refused by the admin, and a commit that adds it anyway — made with openmls
    /// directly — is refused by the member who reads it, before merging: merged, it would
    /// make every later commit whose path reaches that leaf fail.
    #[test]
    fn a_key_nobody_can_encrypt_to_is_refused_by_adder_and_reader() {
        let (mut devices, _) = class_of_three();
        let newcomer = Device::new();
        let dead = key_package_with_a_dead_leaf_key(&newcomer);
        let kp = MlsMessageIn::tls_deserialize_exact(dead.as_slice()).expect("message");
        let MlsMessageBodyIn::KeyPackage(kp) = kp.extract() else {
            panic!("a key package");
        };
        let kp = kp
            .validate(devices[0].provider.crypto(), ProtocolVersion::Mls10)
            .expect("openmls takes its signatures");
        let refused = devices[0]
            .commit(Change::Add {
                key_package: dead.clone(),
                entry: newcomer.entry("dan", false),
            })
            .expect_err("refused by the adder");
        assert!(refused.to_string().contains("small order"), "{refused}");
        // Within the roster's rules (the newcomer joins the roster too), so that only the key
        // check stands in its way.
        let ann = &mut devices[0];
        let mut roster = ann.group().roster().expect("roster");
        roster.members.push(newcomer.entry("dan", false));
        let bundle = ann
            .group
            .as_mut()
            .expect("group")
            .group
            .commit_builder()
            .propose_adds([kp])
            .propose_group_context_extensions(context_extensions(&roster).expect("roster"))
            .expect("extensions")
            .load_psks(ann.provider.storage())
            .expect("psks")
            .build(
                ann.provider.rand(),
                ann.provider.crypto(),
                &ann.identity.signer,
                |_| true,
            )
            .expect("openmls builds it")
            .stage_commit(&ann.provider)
            .expect("staged");
        let commit = bundle.commit().tls_serialize_detached().expect("bytes");
        let epoch = devices[1].group().epoch();
        let ben = &mut devices[1];
        let refused = ben
            .group
            .as_mut()
            .expect("group")
            .open(&ben.provider, &commit)
            .expect_err("refused by the reader");
        assert!(
            matches!(&refused, E2eeError::InvalidCommit(why) if why.contains("small order")),
            "{refused}"
        );
        assert_eq!(devices[1].group().epoch(), epoch, "nothing merged");
    }

    #[test]
    fn a_device_that_fell_behind_is_taken_back_and_a_stale_copy_is_not() {
        let (mut devices, mut joined_tickets) = class_of_three();
        let cat_first = joined_tickets.pop().expect("cat's first ticket");
        assert_eq!(
            devices[2].group().own_ticket(),
            Some(cat_first.commitment())
        );
        // cat refreshes: its leaf now commits to a new ticket.
        let refresh = devices[2].commit(Change::Update).expect("refresh");
        let cat_ticket = refresh.ticket.clone();
        apply_log(&mut devices, &[(2, refresh.commit)]);
        assert_eq!(
            devices[2].group().own_ticket(),
            Some(cat_ticket.commitment())
        );
        assert!(devices[0].group().tickets().contains(&(
            devices[2].identity.public_key().to_vec(),
            cat_ticket.commitment()
        )));
        // ann commits twice; cat never reads either commit (they expired on the relay).
        for _ in 0..2 {
            let c = devices[0].commit(Change::Update).expect("update");
            apply_log(&mut devices[..2], &[(0, c.commit)]);
        }
        let behind = devices[2].say("from the past");
        assert!(matches!(
            devices[1].open(&behind),
            Err(E2eeError::WrongEpoch { .. })
        ));
        // A copy of cat from before its refresh asks with the older ticket: refused.
        let (stale, _) = devices[2]
            .identity
            .key_package_with_ticket(
                &devices[2].provider,
                Suite::XWing,
                &LeafExtras {
                    reveal: Some(&cat_first),
                    ..LeafExtras::default()
                },
            )
            .expect("stale kp");
        assert!(matches!(
            devices[1].check_rejoin(&stale),
            Err(E2eeError::BadInput { .. })
        ));
        assert!(matches!(
            devices[1].commit(Change::Rejoin { key_package: stale }),
            Err(E2eeError::BadInput { .. })
        ));
        // cat asks with the secret behind its leaf's ticket; ben (not an admin) takes it back.
        let (request, next) = devices[2]
            .identity
            .key_package_with_ticket(
                &devices[2].provider,
                Suite::XWing,
                &LeafExtras {
                    reveal: Some(&cat_ticket),
                    ..LeafExtras::default()
                },
            )
            .expect("request");
        let checked = devices[1].check_rejoin(&request).expect("a valid request");
        assert_eq!(checked.entry.name, "m2");
        assert_eq!(checked.revealed, cat_ticket);
        let rejoin = devices[1]
            .commit(Change::Rejoin {
                key_package: request,
            })
            .expect("rejoin");
        match devices[0].open(&rejoin.commit) {
            Ok(Opened::Commit { changes, .. }) => {
                assert_eq!(changes.rejoined.len(), 1);
                assert!(changes.added.is_empty() && changes.removed.is_empty());
            }
            other => panic!("ann refused the rejoin: {other:?}"),
        }
        let ben = &mut devices[1];
        ben.group
            .as_mut()
            .expect("group")
            .merge_pending(&ben.provider)
            .expect("merge");
        let old = devices[2].group.take().expect("cat's old state");
        old.delete(&devices[2].provider)
            .expect("forget the old state");
        let back = Group::join_group(&devices[2].provider, &rejoin.welcome.expect("welcome"))
            .expect("cat joins again");
        devices[2].group = Some(back);
        assert_eq!(devices[2].group().own_ticket(), Some(next.commitment()));
        let auth = devices[0].group().epoch_authenticator();
        for d in &mut devices {
            assert_eq!(d.group().epoch_authenticator(), auth);
            assert_eq!(d.group().roster().expect("roster").members.len(), 3);
        }
        let hello = devices[2].say("back again");
        assert!(matches!(
            devices[0].open(&hello),
            Ok(Opened::Content { .. })
        ));
        let reply = devices[0].say("welcome back");
        assert!(matches!(
            devices[2].open(&reply),
            Ok(Opened::Content { .. })
        ));
        // The request cannot be used a second time: the leaf it replaced is gone.
        let (again, _) = devices[2]
            .identity
            .key_package_with_ticket(
                &devices[2].provider,
                Suite::XWing,
                &LeafExtras {
                    reveal: Some(&cat_ticket),
                    ..LeafExtras::default()
                },
            )
            .expect("again");
        assert!(devices[0].check_rejoin(&again).is_err());
    }

    /// Issue #16: a device restored from a backup (a new signature key, nothing of the old
    /// device's state) takes the old device's place, committed by a member who is not an
    /// admin; an older backup of the same device, and the same request a second time, do not.
    #[test]
    fn a_device_restored_from_its_newest_backup_takes_its_place() {
        let (mut devices, _) = class_of_three();
        assert_eq!(devices[2].group().own_restore(), None);
        // cat makes a backup: its leaf commits to the backup's secret.
        let first = RestoreSecret::generate(&devices[2].provider).expect("secret");
        let c = devices[2]
            .commit(Change::Backup {
                commitment: first.commitment(),
            })
            .expect("backup");
        apply_log(&mut devices, &[(2, c.commit)]);
        assert_eq!(devices[2].group().own_restore(), Some(first.commitment()));
        // A refresh carries the commitment forward; a later backup replaces it.
        let c = devices[2].commit(Change::Update).expect("refresh");
        apply_log(&mut devices, &[(2, c.commit)]);
        assert_eq!(devices[2].group().own_restore(), Some(first.commitment()));
        let newest = RestoreSecret::generate(&devices[2].provider).expect("secret");
        let c = devices[2]
            .commit(Change::Backup {
                commitment: newest.commitment(),
            })
            .expect("backup");
        apply_log(&mut devices, &[(2, c.commit)]);
        assert!(devices[0].group().restores().contains(&(
            devices[2].identity.public_key().to_vec(),
            newest.commitment()
        )));
        // cat's phone is lost; a new device restores the older backup: refused.
        let restored = Device::new();
        let request = |secret: &RestoreSecret| {
            restored
                .identity
                .key_package_with_ticket(
                    &restored.provider,
                    Suite::XWing,
                    &LeafExtras {
                        restore_reveal: Some(secret),
                        ..LeafExtras::default()
                    },
                )
                .expect("request")
                .0
        };
        let old_request = request(&first);
        assert!(matches!(
            devices[1].check_restore(&old_request),
            Err(E2eeError::BadInput { .. })
        ));
        assert!(
            devices[1]
                .commit(Change::Restore {
                    key_package: old_request
                })
                .is_err()
        );
        // With the newest backup, ben (not an admin) lets it take cat's place.
        let new_request = request(&newest);
        let checked = devices[1]
            .check_restore(&new_request)
            .expect("a valid request");
        assert_eq!(checked.entry.name, "m2");
        assert_eq!(checked.key, restored.identity.public_key());
        assert!(
            devices[2].check_restore(&new_request).is_err(),
            "the old device does not commit its own replacement"
        );
        let swap = devices[1]
            .commit(Change::Restore {
                key_package: new_request.clone(),
            })
            .expect("restore");
        match devices[0].open(&swap.commit) {
            Ok(Opened::Commit { changes, .. }) => {
                assert_eq!(changes.restored.len(), 1);
                assert_eq!(changes.restored[0].key, restored.identity.public_key());
                assert_eq!(changes.restored[0].name, "m2");
                assert!(changes.added.is_empty() && changes.removed.is_empty());
            }
            other => panic!("ann refused the restore: {other:?}"),
        }
        match devices[2].open(&swap.commit) {
            Ok(Opened::Commit { changes, .. }) => assert!(changes.self_removed),
            other => panic!("the old device did not see its removal: {other:?}"),
        }
        let ben = &mut devices[1];
        ben.group
            .as_mut()
            .expect("group")
            .merge_pending(&ben.provider)
            .expect("merge");
        let mut restored = restored;
        restored.group = Some(
            Group::join_group(&restored.provider, &swap.welcome.expect("welcome"))
                .expect("the restored device joins"),
        );
        let roster = restored.group().roster().expect("roster");
        assert_eq!(roster.members.len(), 3);
        let entry = roster
            .entry(restored.identity.public_key())
            .expect("listed under its new key");
        assert_eq!((entry.name.as_str(), entry.admin), ("m2", false));
        assert!(roster.entry(devices[2].identity.public_key()).is_none());
        assert_eq!(
            restored.group().own_restore(),
            None,
            "a new backup is needed"
        );
        let auth = devices[0].group().epoch_authenticator();
        assert_eq!(restored.group().epoch_authenticator(), auth);
        let hello = restored.say("restored");
        assert!(matches!(
            devices[0].open(&hello),
            Ok(Opened::Content { .. })
        ));
        // The same request a second time finds no leaf to replace.
        assert!(devices[0].check_restore(&new_request).is_err());
    }

    #[test]
    fn five_members_any_may_commit_and_the_first_commit_per_epoch_wins() {
        let mut devices: Vec<Device> = (0..5).map(|_| Device::new()).collect();
        let roster = Roster {
            name: "family".to_owned(),
            members: vec![devices[0].entry("ann", true)],
            direct: false,
            devices: false,
        };
        let g = Group::create(
            &devices[0].provider,
            &devices[0].identity,
            Suite::XWing,
            &roster,
        )
        .expect("create");
        devices[0].group = Some(g);
        for i in 1..5 {
            let kp = devices[i]
                .identity
                .key_package(&devices[i].provider, Suite::XWing)
                .expect("kp");
            let entry = devices[i].entry(&format!("m{i}"), false);
            let committed = devices[0]
                .commit(Change::Add {
                    key_package: kp,
                    entry,
                })
                .expect("add");
            apply_log(&mut devices, &[(0, committed.commit)]);
            let joined =
                Group::join_group(&devices[i].provider, &committed.welcome.expect("welcome"))
                    .expect("join");
            devices[i].group = Some(joined);
        }
        let auth = devices[0].group().epoch_authenticator();
        for d in &mut devices {
            assert_eq!(d.group().epoch_authenticator(), auth);
            assert_eq!(d.group().roster().expect("roster").members.len(), 5);
        }
        // A non-admin may not add.
        let outsider = Device::new();
        let kp = outsider
            .identity
            .key_package(&outsider.provider, Suite::XWing)
            .expect("kp");
        let err = devices[2]
            .commit(Change::Add {
                key_package: kp,
                entry: outsider.entry("eve", false),
            })
            .expect_err("not admin");
        assert!(matches!(err, E2eeError::NotAllowed(_)), "{err}");
        // Two members refresh at once: the first in the log wins, the second is stale
        // everywhere; the loser merges the winner and proposes again.
        let c1 = devices[1].commit(Change::Update).expect("update 1");
        let c2 = devices[2].commit(Change::Update).expect("update 2");
        let before = devices[0].group().epoch();
        for (i, d) in devices.iter_mut().enumerate() {
            let g = d.group.as_mut().expect("group");
            if i == 1 {
                g.merge_pending(&d.provider).expect("winner merges");
            } else {
                assert!(matches!(
                    g.open(&d.provider, &c1.commit),
                    Ok(Opened::Commit { .. })
                ));
            }
            if i != 2 {
                assert!(matches!(
                    g.open(&d.provider, &c2.commit),
                    Err(E2eeError::WrongEpoch { .. })
                ));
            }
            assert!(!g.has_pending_commit(), "device {i} still pending");
        }
        assert_eq!(devices[3].group().epoch(), before + 1);
        let again = devices[2].commit(Change::Update).expect("again");
        apply_log(&mut devices, &[(2, again.commit)]);
        let auth = devices[0].group().epoch_authenticator();
        for d in &mut devices {
            assert_eq!(d.group().epoch_authenticator(), auth);
        }
        // A member leaves by proposal; another member commits it; the leaver reads nothing
        // new.
        let bye = {
            let d = &mut devices[4];
            let g = d.group.as_mut().expect("group");
            g.propose_leave(&d.provider, &d.identity).expect("leave")
        };
        for d in devices.iter_mut().take(4) {
            assert!(matches!(d.open(&bye), Ok(Opened::Leaving { .. })));
        }
        let leaves = devices[3]
            .commit(Change::CommitLeaves)
            .expect("commit leave");
        apply_log(&mut devices[..4], &[(3, leaves.commit.clone())]);
        match devices[4].open(&leaves.commit) {
            Ok(Opened::Commit { changes, .. }) => assert!(changes.self_removed),
            other => panic!("the leaver did not see its removal: {other:?}"),
        }
        let secret = devices[0].say("after the leave");
        assert!(devices[4].open(&secret).is_err());
        assert!(matches!(
            devices[1].open(&secret),
            Ok(Opened::Content { .. })
        ));
        assert_eq!(
            devices[1].group().roster().expect("roster").members.len(),
            4
        );
        // An admin removes a member; a forged commit by a non-admin is refused everywhere.
        let removed_key = devices[3].identity.public_key().to_vec();
        let removal = devices[0]
            .commit(Change::Remove {
                keys: vec![removed_key],
            })
            .expect("remove");
        apply_log(&mut devices[..4], &[(0, removal.commit)]);
        let secret = devices[1].say("without m3");
        assert!(devices[3].open(&secret).is_err());
        assert!(matches!(
            devices[2].open(&secret),
            Ok(Opened::Content { .. })
        ));
    }
}
