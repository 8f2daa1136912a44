//! Groups in the profile: the conversation model of issue #14, without a network.
//!
//! A group is an MLS group (X-Wing) of any size whose commits and messages travel through
//! one *log* on a relay. Every device reads the log from its own cursor and applies it in
//! log order: for its current epoch, the first commit that is valid (for MLS and for the
//! roster's rules) wins, and every later commit of that epoch is stale. A device's own
//! commit is staged when it is made and merged only when the log shows it came first; if
//! another commit came first, the change it carried (an *intent*) is proposed again in the
//! new epoch. So concurrent commits never fork a group, and no member needs to know any
//! other member is committing.
//!
//! Everything here is one SQLite transaction per operation, as in the rest of the profile:
//! MLS state, log cursor, transcript, outbox and intents change together or not at all.

use super::{Handled, Profile, ProfileError, blob32, db, new_content, now_ms, random, to_i64};
use crate::OwnedMailbox;
use crate::ids::{ContactId, GroupId};
use crate::invite::{Invite, Offer, check_name};
use blake2::{Blake2s256, Digest as _};
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use pigeon_e2ee::content::{
    ForHome, Forwarded, LogKeys, LogMirror, Part, Text, WelcomePart, body::Body, envelope::Kind,
};
use pigeon_e2ee::{
    Change, Changes, Content, E2eeError, Envelope, Group, Identity, Opened, Roster, RosterEntry,
    Suite, Ticket,
};
use pigeon_proto::auth::{self, SigningKey};
use pigeon_transport::RelayLink;
use prost::Message as _;
use rusqlite::{OptionalExtension, params};

mod backup;
mod devices;
mod direct;
mod files;
mod log;

pub use backup::{BackupSummary, RestoreProgress};
pub use devices::{
    DeviceInfo, DeviceLinkProgress, LinkJoinProgress, MAX_LINKED_CONVERSATIONS, PreparedDeviceLink,
    device_label,
};
pub use files::{
    FILES_DIR, FileInfo, FileState, PendingDownload, PendingUpload, is_picture, make_thumbnail,
    sniff_mime,
};
pub use log::LogCopies;

/// A device refreshes its own keys in each group after this many of its messages...
pub const GROUP_REKEY_EVERY: i64 = 50;
/// ...or after this long, whichever comes first.
pub const GROUP_REKEY_AFTER_MS: i64 = 7 * 86_400_000;
/// In a group of at least this many devices, a device that joins refreshes its keys with its
/// first message instead of its [`GROUP_REKEY_EVERY`]th. TreeKEM gives an inner node of the
/// tree a key only when a device below it commits: until then a commit encrypts to every device
/// under it, one by one. In a group built by adds (each joins on an admin's commit) that is
/// nearly every device — about a thousand X-Wing encryptions and a 1.2 MB commit at 1,000
/// devices, where a tree whose members have committed takes about log2 of that. A joiner's
/// refresh fills its own path to the root, so once the people who talk have each sent one
/// message, commits cost what a lived-in tree costs (and the joiner's leaf key, which came from
/// a key package that waited on a relay or in an invitation, is replaced early). Below this size
/// the blank nodes cost a commit under two milliseconds, not worth a commit of its own.
pub const FIRST_MESSAGE_REFRESH_FROM: usize = 32;
/// Largest part of a sealed Welcome in one relay message.
const WELCOME_PART: usize = 48 * 1024;
/// The largest group log entry posted as one relay message: what fits the relay's limit with
/// room for a mirror's wrapping. A larger one (a commit that carries the roster of a group of
/// hundreds) goes in parts of [`WELCOME_PART`].
pub(crate) const MAX_LOG_ENTRY: usize = pigeon_wire::MAX_CIPHERTEXT - 1024;
/// Most parts of one log entry (3 MiB).
const MAX_ENTRY_PARTS: u32 = 64;
/// Most entries in parts one log may have in progress on this device; older ones are dropped.
const MAX_ENTRIES_IN_PARTS: i64 = 8;
/// Most parts a Welcome may come in (a 10,000-device tree with X-Wing keys is ~16 MiB).
const MAX_WELCOME_PARTS: u32 = 400;

const STATE_ACTIVE: i64 = 0;
const STATE_LEAVING: i64 = 1;
const STATE_GONE: i64 = 2;
/// Fell behind through changes the log no longer keeps.
const STATE_LOST: i64 = 3;

/// A group as people see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// Local number.
    pub id: GroupId,
    /// The group's name.
    pub name: String,
    /// Devices in the group.
    pub members: usize,
    /// This device is an admin.
    pub admin: bool,
    /// Unread messages.
    pub unread: i64,
    /// The current epoch.
    pub epoch: u64,
    /// "active", "leaving", "gone" or "lost…" (fell behind for good).
    pub state: &'static str,
}

/// Devices and the safety number with each.
pub type SafetyNumbers = Vec<(MemberInfo, String)>;

/// One member device of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The person's name.
    pub name: String,
    /// The device's name.
    pub device: String,
    /// An admin.
    pub admin: bool,
    /// This device.
    pub you: bool,
    /// Its signature key in the group.
    pub key: Vec<u8>,
    /// Its safety number was compared and marked verified here.
    pub verified: bool,
}

/// A line of a group's transcript: a message or a notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    /// Local number.
    pub id: i64,
    /// The group's local number.
    pub group_id: GroupId,
    /// The group's name.
    pub group: String,
    /// Position in the group's log (the same on every member's device); `None` for an
    /// outgoing message the log has not confirmed yet.
    pub seq: Option<i64>,
    /// Who sent it (for a notice: who caused it).
    pub sender: String,
    /// Sent by this profile.
    pub outgoing: bool,
    /// A notice (joins, leaves, removals, renames), not something a person wrote.
    pub notice: bool,
    /// The text.
    pub text: String,
    /// The sender's clock.
    pub sent_at_ms: i64,
    /// Shown as read here.
    pub read: bool,
    /// For this profile's own line in a conversation of two: the contact's device confirmed
    /// it (a receipt).
    pub delivered: bool,
    /// The photo, voice note or file it carries (its text is then the caption).
    pub file: Option<FileInfo>,
    /// For this profile's own line in a conversation of two: the contact read it (when they
    /// send read receipts).
    pub seen: bool,
}

/// Who wrote a line that came through a group's log.
#[derive(Clone, Copy)]
struct LineSender<'a> {
    /// Their signature key in the group.
    key: &'a [u8],
    /// Their name.
    name: &'a str,
    /// One of this person's own devices.
    own: bool,
}

/// A group log this profile reads.
#[derive(Clone)]
pub struct LogInbox {
    /// Its relay.
    pub relay: String,
    /// The log's id.
    pub log_id: [u8; 32],
    /// The member capability (read and post).
    pub cap: [u8; 32],
    /// The last sequence number applied.
    pub cursor: u64,
}

impl std::fmt::Debug for LogInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogInbox")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// A rotation of a log's keys that the relay has not taken yet.
pub struct PendingRotation {
    /// The group's local number.
    pub group: GroupId,
    /// The log's relay.
    pub relay: String,
    /// The log.
    pub log_id: [u8; 32],
    /// The owner key now.
    pub owner: SigningKey,
    /// The owner key after.
    pub next_owner: SigningKey,
    /// The member capability after.
    pub next_cap: [u8; 32],
    /// This is the move of the log's mirror (on `relay`), after the home copy's.
    pub mirror: bool,
}

impl std::fmt::Debug for PendingRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingRotation")
    }
}

/// A fresh group invitation's parts that go to the relay.
pub struct PreparedGroupInvite {
    /// The invitation.
    pub invite: Invite,
    /// Owns the invitation's mailbox.
    pub mailbox_key: SigningKey,
}

impl std::fmt::Debug for PreparedGroupInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedGroupInvite")
    }
}

/// A change to commit, as kept in `group_intents` until it lands.
#[derive(Clone, PartialEq, prost::Message)]
struct Intent {
    /// 1 add, 2 remove, 3 update, 4 rename, 5 promote, 6 commit leaves.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(bytes = "vec", tag = "2")]
    key_package: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    entry: Option<RosterEntry>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    keys: Vec<Vec<u8>>,
    #[prost(string, tag = "5")]
    name: String,
    /// For an add: where the Welcome goes, and the invitation's secret that seals it.
    #[prost(string, tag = "6")]
    welcome_relay: String,
    #[prost(bytes = "vec", tag = "7")]
    welcome_mailbox: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    welcome_cap: Vec<u8>,
    #[prost(bytes = "vec", tag = "9")]
    welcome_secret: Vec<u8>,
    /// For an add of a new device of this person: the id its Welcome's parts carry (several
    /// Welcomes share the new device's reply mailbox).
    #[prost(bytes = "vec", tag = "10")]
    welcome_id: Vec<u8>,
    /// For an add of another device of this person with a key package it left in the group of
    /// devices: the Welcome goes back through that group's log, sealed under `welcome_secret`.
    #[prost(bool, tag = "11")]
    welcome_devices: bool,
    /// For a backup's key refresh: the restore commitment its new leaf carries.
    #[prost(bytes = "vec", tag = "12")]
    restore_commitment: Vec<u8>,
}

const ADD: u32 = 1;
const REMOVE: u32 = 2;
const UPDATE: u32 = 3;
const RENAME: u32 = 4;
const PROMOTE: u32 = 5;
const COMMIT_LEAVES: u32 = 6;
/// Take back a device that fell behind (`key_package` is its request; `welcome_secret` the
/// ticket secret it revealed, which seals the Welcome back).
const REJOIN: u32 = 7;
/// A key refresh that puts a new backup's restore commitment into this device's leaf.
const BACKUP: u32 = 8;
/// Let a device restored from a backup take the place of the one that made it (`key_package`
/// is its request; `welcome_secret` the backup's secret it revealed).
const RESTORE: u32 = 9;

impl Intent {
    fn change(&self) -> Result<Change, ProfileError> {
        Ok(match self.kind {
            ADD => Change::Add {
                key_package: self.key_package.clone(),
                entry: self
                    .entry
                    .clone()
                    .ok_or_else(|| ProfileError::Invalid("an add without a member".to_owned()))?,
            },
            REMOVE => Change::Remove {
                keys: self.keys.clone(),
            },
            UPDATE => Change::Update,
            RENAME => Change::Rename(self.name.clone()),
            PROMOTE => Change::Promote(self.keys.first().cloned().unwrap_or_default()),
            COMMIT_LEAVES => Change::CommitLeaves,
            REJOIN => Change::Rejoin {
                key_package: self.key_package.clone(),
            },
            BACKUP => Change::Backup {
                commitment: key32(&self.restore_commitment, "backup")?,
            },
            RESTORE => Change::Restore {
                key_package: self.key_package.clone(),
            },
            other => {
                return Err(ProfileError::Invalid(format!(
                    "a stored group change of unknown kind {other}"
                )));
            }
        })
    }
}

/// A join request, sealed under the invitation's secret.
#[derive(Clone, PartialEq, prost::Message)]
struct JoinRequest {
    #[prost(bytes = "vec", tag = "1")]
    key_package: Vec<u8>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(bytes = "vec", tag = "3")]
    person: Vec<u8>,
    #[prost(string, tag = "4")]
    device: String,
    #[prost(bytes = "vec", tag = "5")]
    reply_relay: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    reply_mailbox: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    reply_cap: Vec<u8>,
}

/// A device's request to be taken back, sealed under a key from its leaf's ticket commitment.
#[derive(Clone, PartialEq, prost::Message)]
struct RejoinRequest {
    /// A key package with the device's signature key whose ticket reveals the old secret.
    #[prost(bytes = "vec", tag = "1")]
    key_package: Vec<u8>,
}

/// The id of the Welcome that takes back the device that revealed `secret`: its parts carry
/// it in the log, and the device looks for nothing else.
fn rejoin_welcome_id(secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"pigeon rejoin welcome id");
    h.update(secret);
    h.finalize().into()
}

/// What a new member needs besides the MLS Welcome: where the group's log is.
#[derive(Clone, PartialEq, prost::Message)]
struct GroupWelcome {
    #[prost(bytes = "vec", tag = "1")]
    welcome: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    log_relay: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    log_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    log_cap: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    log_owner: Vec<u8>,
    /// The log position of the commit that added the device: it reads what follows.
    #[prost(uint64, tag = "6")]
    after_seq: u64,
    /// The log's mirror relay (`RelayLinkPayload` bytes), if it has one.
    #[prost(bytes = "vec", tag = "7")]
    mirror_relay: Vec<u8>,
    /// The key the mirror's entries are authenticated with.
    #[prost(bytes = "vec", tag = "8")]
    mirror_key: Vec<u8>,
}

/// A group this device is now in, as its row is first written.
struct NewGroup<'a> {
    name: &'a str,
    group_id: Vec<u8>,
    signature_key: &'a [u8],
    suite: Suite,
    person: &'a [u8],
    log_relay: String,
    log_id: &'a [u8; 32],
    log_cap: &'a [u8; 32],
    log_owner: &'a [u8],
    /// The log position this device reads from.
    cursor: i64,
    direct: bool,
    /// The log's mirror relay, if it has one.
    mirror_relay: Option<String>,
}

struct GroupRow {
    id: GroupId,
    name: String,
    group_id: Vec<u8>,
    signature_key: Vec<u8>,
    log_relay: String,
    log_id: [u8; 32],
    log_cap: [u8; 32],
    log_owner: Vec<u8>,
    cursor: i64,
    pending_commit: Option<Vec<u8>>,
    pending_intent: Option<i64>,
    sent_since_update: i64,
    updated_at: i64,
    state: i64,
    /// A conversation of two: a contact's, not listed among groups.
    direct: bool,
    /// The commitment of the ticket in this device's waiting commit (or rejoin request).
    pending_ticket: Option<Vec<u8>>,
    /// While lost: the ticket secret revealed to ask to be taken back.
    rejoin_secret: Option<Vec<u8>>,
    /// The log's mirror relay, if it has one.
    mirror_relay: Option<String>,
    /// This device's position in the mirror (the mirror's own sequence numbers).
    mirror_cursor: i64,
    /// The relay message id of a move of the log's home to its mirror this device posted.
    pending_move: Option<Vec<u8>>,
    /// The key the mirror's entries are authenticated with.
    mirror_key: Option<Vec<u8>>,
    /// The group of the person's own devices (issue #16).
    devices: bool,
    /// The group's suite code.
    suite: u16,
}

fn seal(secret: &[u8; 32], label: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ProfileError> {
    let cipher = ChaCha20Poly1305::new_from_slice(&sealing_key(secret, label))
        .map_err(|_| ProfileError::Invalid("a sealing key has the wrong length".to_owned()))?;
    let nonce: [u8; 12] = random()?;
    let mut out = nonce.to_vec();
    out.extend(
        cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| ProfileError::Invalid("sealing failed".to_owned()))?,
    );
    Ok(out)
}

fn open_sealed(secret: &[u8; 32], label: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ProfileError> {
    let refuse = || {
        peer(
            "sealed group message",
            "it does not open with the invitation's key",
        )
    };
    if sealed.len() < 12 + 16 {
        return Err(refuse());
    }
    let cipher =
        ChaCha20Poly1305::new_from_slice(&sealing_key(secret, label)).map_err(|_| refuse())?;
    let (nonce, body) = sealed.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), body)
        .map_err(|_| refuse())
}

fn sealing_key(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"pigeonpost group invitation v1\0");
    h.update(label);
    h.update(secret);
    h.finalize().into()
}

fn peer(what: &'static str, reason: &str) -> ProfileError {
    ProfileError::E2ee(E2eeError::BadInput {
        what,
        reason: reason.to_owned(),
    })
}

fn key32(v: &[u8], what: &'static str) -> Result<[u8; 32], ProfileError> {
    v.try_into()
        .map_err(|_| peer(what, "a 32-byte field holds another length"))
}

/// In a conversation of two: a device of the other person (the one with the lowest key when
/// they have several), as seen by the device whose key is `own_key`.
fn other_person<'r>(roster: &'r Roster, own_key: &[u8]) -> Option<&'r RosterEntry> {
    let own_person = roster.entry(own_key).map(|m| m.person.as_slice());
    roster
        .members
        .iter()
        .filter(|m| Some(m.person.as_slice()) != own_person)
        .min_by(|a, b| a.key.cmp(&b.key))
}

fn name_of_device(roster: &Roster, key: &[u8]) -> String {
    roster
        .entry(key)
        .map(|e| e.device.clone())
        .unwrap_or_default()
}

fn name_of(roster: &Roster, key: &[u8]) -> String {
    roster.entry(key).map_or_else(
        || "someone no longer in the group".to_owned(),
        |e| e.name.clone(),
    )
}

impl Profile {
    fn group_row(&self, id: GroupId) -> Result<GroupRow, ProfileError> {
        self.conn
            .query_row(
                "SELECT id, name, group_id, signature_key, log_relay, log_id, log_cap, log_owner,
                        cursor, pending_commit, pending_intent, sent_since_update, updated_at, state,
                        direct, pending_ticket, rejoin_secret, mirror_relay, mirror_cursor,
                        pending_move, mirror_key, devices, suite
                 FROM groups WHERE id = ?1",
                [id],
                |r| {
                    Ok(GroupRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        group_id: r.get(2)?,
                        signature_key: r.get(3)?,
                        log_relay: r.get(4)?,
                        log_id: blob32(r.get(5)?)?,
                        log_cap: blob32(r.get(6)?)?,
                        log_owner: r.get(7)?,
                        cursor: r.get(8)?,
                        pending_commit: r.get(9)?,
                        pending_intent: r.get(10)?,
                        sent_since_update: r.get(11)?,
                        updated_at: r.get(12)?,
                        state: r.get(13)?,
                        direct: r.get(14)?,
                        pending_ticket: r.get(15)?,
                        rejoin_secret: r.get(16)?,
                        mirror_relay: r.get(17)?,
                        mirror_cursor: r.get(18)?,
                        pending_move: r.get(19)?,
                        mirror_key: r.get(20)?,
                        devices: r.get(21)?,
                        suite: r.get(22)?,
                    })
                },
            )
            .optional()
            .map_err(db("reading a group"))?
            .ok_or_else(|| ProfileError::NoContact(format!("group #{id}")))
    }

    /// The group's roster, read without loading its ratchet tree.
    fn roster_of(&self, row: &GroupRow) -> Result<Roster, ProfileError> {
        pigeon_e2ee::stored_state(&self.mls(), &row.group_id)?
            .1
            .ok_or_else(|| ProfileError::Db {
                doing: "reading a group",
                reason: "the group has no roster".to_owned(),
            })
    }

    /// Writes a new group's row.
    fn insert_group(&self, g: &NewGroup<'_>) -> Result<GroupId, ProfileError> {
        let now = now_ms();
        self.conn
            .execute(
                "INSERT INTO groups (name, group_id, signature_key, suite, person, log_relay, log_id,
                   log_cap, log_owner, cursor, updated_at, created_at, direct, mirror_relay)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13)",
                params![
                    g.name,
                    g.group_id,
                    g.signature_key,
                    g.suite.code(),
                    g.person,
                    g.log_relay,
                    g.log_id.as_slice(),
                    g.log_cap.as_slice(),
                    g.log_owner,
                    g.cursor,
                    now,
                    g.direct,
                    g.mirror_relay
                ],
            )
            .map_err(db("saving the group"))?;
        let id = GroupId(self.conn.last_insert_rowid());
        // A new conversation: the person's other devices are brought in at the next drive.
        self.conn
            .execute("UPDATE profile SET bring_devices = 1 WHERE id = 1", [])
            .map_err(db("saving the group"))?;
        Ok(id)
    }

    /// Group rows by number: every one, or only groups (not conversations of two).
    fn group_ids(&self, only_groups: bool) -> Result<Vec<GroupId>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM groups WHERE ?1 = 0 OR (direct = 0 AND devices = 0) ORDER BY id",
            )
            .map_err(db("listing groups"))?;
        let rows = stmt
            .query_map([only_groups], |r| r.get(0))
            .map_err(db("listing groups"))?;
        rows.collect::<Result<_, _>>().map_err(db("listing groups"))
    }

    fn group_for_log(&self, log_id: &[u8; 32]) -> Result<Option<GroupId>, ProfileError> {
        self.conn
            .query_row(
                "SELECT id FROM groups WHERE log_id = ?1",
                [log_id.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("finding a group"))
    }

    /// Creates a group with this device as its only member and admin. `log` is a log the
    /// caller already created on `relay` (its key is the log's owner key).
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for a bad name.
    pub fn create_group(
        &self,
        name: &str,
        relay: &RelayLink,
        log: &OwnedMailbox,
    ) -> Result<GroupInfo, ProfileError> {
        pigeon_e2ee::roster::check_group_name(name).map_err(ProfileError::Invalid)?;
        let my_name = self.name()?;
        let person: [u8; 16] = random()?;
        let id = self.tx(|| {
            let mls = self.mls();
            let identity = Identity::generate(&mls)?;
            let roster = Roster {
                name: name.to_owned(),
                direct: false,
                devices: false,
                members: vec![RosterEntry {
                    key: identity.public_key().to_vec(),
                    person: person.to_vec(),
                    name: my_name.clone(),
                    device: self.device_name()?,
                    admin: true,
                }],
            };
            let group = Group::create(&mls, &identity, Suite::XWing, &roster)?;
            let id = self.insert_group(&NewGroup {
                name,
                group_id: group.id(),
                signature_key: identity.public_key(),
                suite: Suite::XWing,
                person: &person,
                log_relay: relay.to_string(),
                log_id: &log.id.0,
                log_cap: &log.sender_cap,
                log_owner: &log.key.to_bytes(),
                cursor: 0,
                direct: false,
                mirror_relay: None,
            })?;
            self.notice(
                id,
                &my_name,
                true,
                &format!("{my_name} created the group {name}"),
            )?;
            Ok(id)
        })?;
        self.group_info(id)
    }

    /// Every group, by number.
    ///
    /// # Errors
    /// On database failure.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ProfileError> {
        self.group_ids(true)?
            .into_iter()
            .map(|id| self.group_info(id))
            .collect()
    }

    /// One group.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] if there is none.
    pub fn group_info(&self, id: GroupId) -> Result<GroupInfo, ProfileError> {
        let row = self.group_row(id)?;
        let (members, admin, epoch) = match pigeon_e2ee::stored_state(&self.mls(), &row.group_id) {
            Ok((epoch, roster)) => {
                let roster = roster.unwrap_or_default();
                (
                    roster.members.len(),
                    roster.is_admin(&row.signature_key),
                    epoch,
                )
            }
            Err(E2eeError::UnknownGroup) => (0, false, 0),
            Err(e) => return Err(e.into()),
        };
        let unread: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM group_messages WHERE group_row = ?1 AND read = 0",
                [id],
                |r| r.get(0),
            )
            .map_err(db("counting unread messages"))?;
        Ok(GroupInfo {
            id,
            name: row.name,
            members,
            admin,
            unread,
            epoch,
            state: match row.state {
                STATE_ACTIVE => "active",
                STATE_LEAVING => "leaving",
                STATE_LOST if row.rejoin_secret.is_some() => {
                    "lost: asked the group to take this device back"
                }
                STATE_LOST => "lost: ask an admin to add this device again",
                _ => "gone",
            },
        })
    }

    /// The group called `query`: its name (exact, then case-insensitive) or `#N`.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] or [`ProfileError::Ambiguous`].
    pub fn find_group(&self, query: &str) -> Result<GroupInfo, ProfileError> {
        super::find_named(&self.groups()?, query, |g| &g.name, |g| g.id.0)
    }

    /// The group's member devices, as its roster lists them.
    ///
    /// # Errors
    /// On database failure.
    pub fn group_members(&self, id: GroupId) -> Result<Vec<MemberInfo>, ProfileError> {
        let row = self.group_row(id)?;
        let roster = self.roster_of(&row)?;
        let mut out = Vec::new();
        for m in roster.members {
            let verified = self.is_verified(&m.key)?;
            out.push(MemberInfo {
                you: m.key == row.signature_key,
                name: m.name,
                device: m.device,
                admin: m.admin,
                key: m.key,
                verified,
            });
        }
        out.sort_by(|a, b| (!a.you, &a.name).cmp(&(!b.you, &b.name)));
        Ok(out)
    }

    /// The safety number between this device and a member (by name), and whether it was
    /// marked verified.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such member.
    pub fn group_safety_number(
        &self,
        id: GroupId,
        member: &str,
    ) -> Result<(MemberInfo, String), ProfileError> {
        let mut all = self.member_safety_numbers(id, member, None)?;
        if all.len() > 1 {
            return Err(ProfileError::Ambiguous(format!(
                "{member} (several devices: name one)"
            )));
        }
        all.pop()
            .ok_or_else(|| ProfileError::NoContact(member.to_owned()))
    }

    /// Every device of the member called `member` (exact name, else the only case-insensitive
    /// match): one person's, however many devices they have.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such member, [`ProfileError::Ambiguous`] when two
    /// people go by that name.
    fn find_member_devices(
        &self,
        id: GroupId,
        member: &str,
    ) -> Result<Vec<MemberInfo>, ProfileError> {
        let row = self.group_row(id)?;
        let roster = self.roster_of(&row)?;
        let exact: Vec<&RosterEntry> = roster.members.iter().filter(|m| m.name == member).collect();
        let chosen = if exact.is_empty() {
            roster
                .members
                .iter()
                .filter(|m| m.name.to_lowercase() == member.to_lowercase())
                .collect()
        } else {
            exact
        };
        let people: std::collections::BTreeSet<&[u8]> =
            chosen.iter().map(|m| m.person.as_slice()).collect();
        if people.len() > 1 {
            return Err(ProfileError::Ambiguous(member.to_owned()));
        }
        if chosen.is_empty() {
            return Err(ProfileError::NoContact(member.to_owned()));
        }
        let mut out = Vec::new();
        for m in chosen {
            out.push(MemberInfo {
                you: m.key == row.signature_key,
                name: m.name.clone(),
                device: m.device.clone(),
                admin: m.admin,
                key: m.key.clone(),
                verified: self.is_verified(&m.key)?,
            });
        }
        Ok(out)
    }

    /// The safety number between this device and each device of a member (by name; only the
    /// device called `device` when given).
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such member or device.
    pub fn member_safety_numbers(
        &self,
        id: GroupId,
        member: &str,
        device: Option<&str>,
    ) -> Result<SafetyNumbers, ProfileError> {
        let row = self.group_row(id)?;
        let devices: Vec<MemberInfo> = self
            .find_member_devices(id, member)?
            .into_iter()
            .filter(|m| {
                device.is_none_or(|d| crate::profile::device_label(&m.device) == d || m.device == d)
            })
            .collect();
        if devices.is_empty() {
            return Err(ProfileError::NoContact(format!(
                "{member}'s device {}",
                device.unwrap_or_default()
            )));
        }
        Ok(devices
            .into_iter()
            .map(|m| {
                let number = pigeon_e2ee::safety_number(&row.signature_key, &m.key);
                (m, number)
            })
            .collect())
    }

    /// The safety numbers with each device of a contact, in your conversation (one, with the
    /// contact's name and no device name, for a contact of the first design).
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such contact.
    pub fn contact_safety_numbers(
        &self,
        contact_id: ContactId,
        device: Option<&str>,
    ) -> Result<(Option<GroupId>, SafetyNumbers), ProfileError> {
        match self.conversation(contact_id)? {
            Some(direct) => {
                let row = self.group_row(direct.group)?;
                let roster = self.roster_of(&row)?;
                let theirs = other_person(&roster, &row.signature_key)
                    .map(|m| m.name.clone())
                    .ok_or_else(|| {
                        ProfileError::NotNow("the other person left this conversation".to_owned())
                    })?;
                Ok((
                    Some(direct.group),
                    self.member_safety_numbers(direct.group, &theirs, device)?,
                ))
            }
            None => {
                let (key, number, verified) = self.contact_safety_number(contact_id)?;
                let name = self.contact(contact_id)?.name;
                Ok((
                    None,
                    vec![(
                        MemberInfo {
                            name,
                            device: String::new(),
                            admin: false,
                            you: false,
                            key,
                            verified,
                        },
                        number,
                    )],
                ))
            }
        }
    }

    /// The safety number with a contact (1:1 conversation): over both sides' signature keys
    /// in that conversation. Returns the contact's key, the number and whether it was marked
    /// verified.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such contact.
    pub fn contact_safety_number(
        &self,
        contact_id: ContactId,
    ) -> Result<(Vec<u8>, String, bool), ProfileError> {
        if let Some(direct) = self.conversation(contact_id)? {
            let (peer, number) = self.conversation_safety_number(direct.group)?;
            let verified = self.is_verified(&peer)?;
            return Ok((peer, number, verified));
        }
        let (group_id, own): (Vec<u8>, Vec<u8>) = self
            .conn
            .query_row(
                "SELECT group_id, signature_key FROM contacts WHERE id = ?1",
                [contact_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading a contact"))?
            .ok_or_else(|| ProfileError::NoContact(format!("#{contact_id}")))?;
        let group = Group::load(&self.mls(), &group_id)?;
        let peer = group
            .member_keys()
            .into_iter()
            .find(|k| *k != own)
            .ok_or_else(|| {
                ProfileError::NotNow("the conversation has no other member yet".to_owned())
            })?;
        let verified = self.is_verified(&peer)?;
        let number = pigeon_e2ee::safety_number(&own, &peer);
        Ok((peer, number, verified))
    }

    /// Marks a key as verified (its safety number was compared).
    ///
    /// # Errors
    /// On database failure.
    pub fn mark_verified(&self, key: &[u8]) -> Result<(), ProfileError> {
        self.mark_verified_as(key, None, None)
    }

    /// Marks a group member verified: their key, and under which name in which group, so that
    /// a new key under that name there later is pointed out in the transcript.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such member; on database failure.
    pub fn mark_member_verified(
        &self,
        id: GroupId,
        member: &MemberInfo,
    ) -> Result<(), ProfileError> {
        self.mark_verified_as(&member.key, Some(id), Some(&member.name))
    }

    /// Marks a contact verified (the other person's key in your conversation).
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] for no such contact; on database failure.
    pub fn mark_contact_verified(&self, contact_id: ContactId) -> Result<(), ProfileError> {
        let (key, _, _) = self.contact_safety_number(contact_id)?;
        match self.conversation(contact_id)? {
            Some(direct) => {
                let row = self.group_row(direct.group)?;
                let name = self
                    .roster_of(&row)?
                    .entry(&key)
                    .map(|e| e.name.clone())
                    .unwrap_or_default();
                self.mark_verified_as(&key, Some(direct.group), Some(&name))
            }
            None => self.mark_verified(&key),
        }
    }

    fn mark_verified_as(
        &self,
        key: &[u8],
        group: Option<GroupId>,
        name: Option<&str>,
    ) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO verified (key, verified_at, group_row, name)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key, now_ms(), group, name],
            )
            .map_err(db("marking a key verified"))?;
        Ok(())
    }

    /// Whether `entry`, just added to the group, joined under the name (or, as another device,
    /// beside the person) of a member verified here with another key: their safety number is
    /// then not the one that was compared.
    fn verified_under_another_key(
        &self,
        row: &GroupRow,
        entry: &RosterEntry,
    ) -> Result<bool, ProfileError> {
        if self.is_verified(&entry.key)? {
            return Ok(false);
        }
        let by_name = self
            .conn
            .query_row(
                "SELECT 1 FROM verified WHERE group_row = ?1 AND name = ?2 AND key != ?3",
                params![row.id, entry.name, entry.key],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("checking verification"))?
            .is_some();
        if by_name {
            return Ok(true);
        }
        for m in self.roster_of(row)?.members {
            if m.person == entry.person && m.key != entry.key && self.is_verified(&m.key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn is_verified(&self, key: &[u8]) -> Result<bool, ProfileError> {
        self.conn
            .query_row("SELECT 1 FROM verified WHERE key = ?1", [key], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(db("checking verification"))
    }

    /// True while some group has a commit of this device waiting for the log's order.
    ///
    /// # Errors
    /// On database failure.
    pub fn has_pending_commits(&self) -> Result<bool, ProfileError> {
        self.conn
            .query_row(
                "SELECT 1 FROM groups WHERE pending_commit IS NOT NULL
                 OR EXISTS (SELECT 1 FROM group_intents i WHERE i.group_row = groups.id) LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db("reading groups"))
    }

    /// Every group log this profile reads, with its cursor.
    ///
    /// # Errors
    /// On database failure.
    pub fn logs(&self) -> Result<Vec<LogInbox>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT log_relay, log_id, log_cap, cursor FROM groups
                 WHERE state < ?1 OR (state = ?2 AND rejoin_secret IS NOT NULL)
                 UNION ALL
                 SELECT mirror_relay, log_id, log_cap, mirror_cursor FROM groups
                 WHERE mirror_relay IS NOT NULL
                   AND (state < ?1 OR (state = ?2 AND rejoin_secret IS NOT NULL))",
            )
            .map_err(db("listing group logs"))?;
        // A group this device fell behind is read only for the Welcome it asked for. A log
        // with a mirror is read on both relays (from each one's own position).
        let rows = stmt
            .query_map([STATE_GONE, STATE_LOST], |r| {
                Ok(LogInbox {
                    relay: r.get(0)?,
                    log_id: blob32(r.get(1)?)?,
                    cap: blob32(r.get(2)?)?,
                    cursor: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .map_err(db("listing group logs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("listing group logs"))
    }

    /// True when `mailbox` is a group log of this profile.
    ///
    /// # Errors
    /// On database failure.
    pub fn is_log(&self, mailbox: &[u8; 32]) -> Result<bool, ProfileError> {
        Ok(self.group_for_log(mailbox)?.is_some())
    }

    /// Makes a one-time invitation to a group (admins only). The caller creates the
    /// invitation's mailbox on the relay before showing the link.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for a member who is not an admin.
    pub fn prepare_group_invite(
        &self,
        id: GroupId,
        relay: &RelayLink,
    ) -> Result<PreparedGroupInvite, ProfileError> {
        let info = self.group_info(id)?;
        if !info.admin {
            return Err(ProfileError::NotNow(format!(
                "only the admins of {} invite people; ask one of them",
                info.name
            )));
        }
        let relay = relay.clone();
        let name = self.name()?;
        let mailbox_key =
            auth::generate_signing_key().map_err(|e| ProfileError::Random(e.to_string()))?;
        let invite = Invite {
            relay: relay.clone(),
            mailbox_id: random()?,
            sender_cap: random()?,
            // A group invitation carries no key package: the person invited sends theirs.
            signature_key: random()?,
            secret: random()?,
            name,
            offers: vec![Offer {
                suite: Suite::XWing,
                slot_id: random()?,
            }],
            group: Some(info.name.clone()),
            proxies: self
                .proxies()?
                .into_iter()
                .map(|p| p.link)
                .take(crate::invite::MAX_INVITE_PROXIES)
                .collect(),
            device: self.device_name()?,
        };
        let link = invite
            .to_link()
            .map_err(|e| ProfileError::Invalid(e.to_string()))?;
        self.conn
            .execute(
                "INSERT INTO group_invites (group_row, mailbox_id, mailbox_key, relay, secret, link, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    invite.mailbox_id.as_slice(),
                    mailbox_key.to_bytes().as_slice(),
                    relay.to_string(),
                    invite.secret.as_slice(),
                    link,
                    now_ms()
                ],
            )
            .map_err(db("saving the group invitation"))?;
        Ok(PreparedGroupInvite {
            invite,
            mailbox_key,
        })
    }

    /// Withdraws a group invitation that never reached the relay.
    ///
    /// # Errors
    /// On database failure.
    pub fn cancel_group_invite(&self, prepared: &PreparedGroupInvite) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "DELETE FROM group_invites WHERE mailbox_id = ?1",
                [prepared.invite.mailbox_id.as_slice()],
            )
            .map_err(db("withdrawing the invitation"))?;
        Ok(())
    }

    /// Asks to join the group a group invitation is for: a key package and this person's
    /// name, sealed under the invitation's secret, queued to the invitation's mailbox. The
    /// Welcome comes to `reply` (a mailbox the caller created on this profile's relay) once
    /// an admin's device has added this one.
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for an invitation that is not to a group.
    pub fn request_group_join(
        &self,
        invite: &Invite,
        reply: &OwnedMailbox,
        reply_relay: &RelayLink,
    ) -> Result<String, ProfileError> {
        let Some(group_name) = invite.group.clone() else {
            return Err(ProfileError::Invalid(
                "this invitation is to a conversation, not a group".to_owned(),
            ));
        };
        let relay = reply_relay.clone();
        let my_name = self.name()?;
        let person: [u8; 16] = random()?;
        self.tx(|| {
            let mls = self.mls();
            let identity = Identity::generate(&mls)?;
            let (key_package, ticket) =
                identity.key_package_with_ticket(&mls, Suite::XWing, &pigeon_e2ee::LeafExtras::default())?;
            self.keep_ticket(&ticket)?;
            let request = JoinRequest {
                key_package,
                name: my_name.clone(),
                person: person.to_vec(),
                device: self.device_name()?,
                reply_relay: relay.to_payload().encode_to_vec(),
                reply_mailbox: reply.id.0.to_vec(),
                reply_cap: reply.sender_cap.to_vec(),
            };
            let sealed = seal(&invite.secret, b"join", &request.encode_to_vec())?;
            self.conn
                .execute(
                    "INSERT INTO group_joins (mailbox_id, mailbox_key, relay, secret, signature_key, person,
                       group_name, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        reply.id.0.as_slice(),
                        reply.key.to_bytes().as_slice(),
                        relay.to_string(),
                        invite.secret.as_slice(),
                        identity.public_key(),
                        person.as_slice(),
                        group_name,
                        now_ms()
                    ],
                )
                .map_err(db("saving the request to join"))?;
            self.queue(
                &invite.relay.to_string(),
                &invite.mailbox_id,
                &invite.sender_cap,
                &Envelope {
                    kind: Some(Kind::JoinRequest(sealed)),
                },
            )?;
            Ok(group_name.clone())
        })
    }

    /// Queues a change to a group and commits it as soon as no other change of this
    /// device waits for the log.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] when the rules would refuse the change.
    pub fn group_change(&self, id: GroupId, change: GroupChange<'_>) -> Result<(), ProfileError> {
        let row = self.group_row(id)?;
        if row.state != STATE_ACTIVE {
            return Err(ProfileError::NotNow(format!(
                "this device is no longer in {}",
                row.name
            )));
        }
        let admin = self.roster_of(&row)?.is_admin(&row.signature_key);
        let needs_admin = !matches!(change, GroupChange::Update);
        if needs_admin && !admin {
            return Err(ProfileError::NotNow(format!(
                "only the admins of {} add, remove and promote members or rename it",
                row.name
            )));
        }
        // Changes queued before `intent` (the other devices of a person promoted).
        let mut more = Vec::new();
        let intent = match change {
            GroupChange::Remove(member) => {
                // A person goes with every device of theirs.
                let devices = self.find_member_devices(id, member)?;
                if devices.iter().any(|m| m.you) {
                    return Err(ProfileError::Invalid(
                        "to leave a group use `pigeon group leave` (and `pigeon devices remove` \
                         for one of your devices)"
                            .to_owned(),
                    ));
                }
                Intent {
                    kind: REMOVE,
                    keys: devices.into_iter().map(|m| m.key).collect(),
                    ..Intent::default()
                }
            }
            GroupChange::Promote(member) => {
                // A person is an admin on every device of theirs: one change each.
                let mut devices = self.find_member_devices(id, member)?;
                let last = devices
                    .pop()
                    .ok_or_else(|| ProfileError::NoContact(member.to_owned()))?;
                for m in devices {
                    more.push(Intent {
                        kind: PROMOTE,
                        keys: vec![m.key],
                        ..Intent::default()
                    });
                }
                Intent {
                    kind: PROMOTE,
                    keys: vec![last.key],
                    ..Intent::default()
                }
            }
            GroupChange::Rename(name) => {
                pigeon_e2ee::roster::check_group_name(name).map_err(ProfileError::Invalid)?;
                Intent {
                    kind: RENAME,
                    name: name.to_owned(),
                    ..Intent::default()
                }
            }
            GroupChange::Update => Intent {
                kind: UPDATE,
                ..Intent::default()
            },
        };
        self.tx(|| {
            for i in more.iter().chain([&intent]) {
                self.add_intent(id, i)?;
            }
            self.drive_in_tx(id)
        })
    }

    fn add_intent(&self, id: GroupId, intent: &Intent) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "INSERT INTO group_intents (group_row, change, created_at) VALUES (?1, ?2, ?3)",
                params![id, intent.encode_to_vec(), now_ms()],
            )
            .map_err(db("queueing a group change"))?;
        Ok(())
    }

    /// Asks to leave a group: a request every member's device sees; the next commit by any
    /// member removes this device.
    ///
    /// # Errors
    /// On database or MLS failure.
    pub fn leave_group(&self, id: GroupId) -> Result<(), ProfileError> {
        self.tx(|| {
            let row = self.group_row(id)?;
            if row.state != STATE_ACTIVE {
                return Err(ProfileError::NotNow(format!(
                    "this device is already leaving {}",
                    row.name
                )));
            }
            let mls = self.mls();
            let mut group = Group::load(&mls, &row.group_id)?;
            let roster = group.roster()?;
            let admins = roster.members.iter().filter(|m| m.admin).count();
            if roster.is_admin(&row.signature_key) && admins == 1 && roster.members.len() > 1 {
                return Err(ProfileError::NotNow(format!(
                    "you are the only admin of {}: make someone else admin first (`pigeon group admin`)",
                    row.name
                )));
            }
            if roster.members.len() == 1 {
                // Alone: there is nobody to commit the removal; the group just ends here.
                self.conn
                    .execute(
                        "UPDATE groups SET state = ?1 WHERE id = ?2",
                        params![STATE_GONE, id],
                    )
                    .map_err(db("leaving the group"))?;
                return Ok(());
            }
            if group.has_pending_commit() {
                group.discard_pending(&mls)?;
                self.conn
                    .execute(
                        "UPDATE groups SET pending_commit = NULL, pending_intent = NULL WHERE id = ?1",
                        [id],
                    )
                    .map_err(db("leaving the group"))?;
            }
            let identity = Identity::load(&mls, &row.signature_key)?;
            self.propose_leave_in_tx(&row, &mut group, &identity)?;
            self.conn
                .execute(
                    "UPDATE groups SET state = ?1 WHERE id = ?2",
                    params![STATE_LEAVING, id],
                )
                .map_err(db("leaving the group"))?;
            let me = self.name()?;
            self.notice(id, &me, true, "you asked to leave the group")?;
            Ok(())
        })
    }

    fn propose_leave_in_tx(
        &self,
        row: &GroupRow,
        group: &mut Group,
        identity: &Identity,
    ) -> Result<(), ProfileError> {
        let mls = self.mls();
        let proposal = group.propose_leave(&mls, identity)?;
        let mid = self.queue_log(row, Kind::Mls(proposal))?;
        self.mark_seen(&row.log_id, &mid)?;
        self.conn
            .execute(
                "UPDATE groups SET leave_epoch = ?1 WHERE id = ?2",
                params![to_i64(group.epoch()), row.id],
            )
            .map_err(db("asking to leave"))?;
        Ok(())
    }

    /// Encrypts `text` for a group and queues it to the group's log. While a commit of this
    /// device waits for the log's order, the text waits too (it is in the transcript at
    /// once, and sent in whichever epoch comes next).
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for an empty or oversized text.
    pub fn compose_group(&self, id: GroupId, text: &str) -> Result<GroupMessage, ProfileError> {
        if text.trim().is_empty() {
            return Err(ProfileError::Invalid("the message is empty".to_owned()));
        }
        if text.len() > pigeon_e2ee::content::MAX_TEXT {
            return Err(ProfileError::Invalid(format!(
                "the message is {} bytes; at most {} fit in one message",
                text.len(),
                pigeon_e2ee::content::MAX_TEXT
            )));
        }
        self.tx(|| {
            let row = self.group_row(id)?;
            if row.state != STATE_ACTIVE {
                return Err(ProfileError::NotNow(format!(
                    "this device is no longer in {}",
                    row.name
                )));
            }
            let content = new_content(Body::Text(Text {
                text: text.to_owned(),
            }))?;
            let relay_msg_id: [u8; 16] = random()?;
            self.conn
                .execute(
                    "INSERT INTO group_drafts (group_row, content, relay_msg_id) VALUES (?1, ?2, ?3)",
                    params![id, content.encode_to_vec(), relay_msg_id.as_slice()],
                )
                .map_err(db("saving a message"))?;
            let message_id = self.insert_own_line(&row, &relay_msg_id, &content, text)?;
            let due = row.sent_since_update + 1 >= GROUP_REKEY_EVERY
                || now_ms() - row.updated_at >= GROUP_REKEY_AFTER_MS;
            self.conn
                .execute(
                    "UPDATE groups SET sent_since_update = sent_since_update + 1 WHERE id = ?1",
                    [id],
                )
                .map_err(db("counting messages"))?;
            if due && !self.has_update_intent(id)? {
                self.add_intent(
                    id,
                    &Intent {
                        kind: UPDATE,
                        ..Intent::default()
                    },
                )?;
            }
            self.drive_with(id, false)?;
            self.group_message(message_id)
        })
    }

    /// Puts this device's own line (a text, or a file's caption) in the transcript of `row`,
    /// read, not yet placed in the log (it is once the log confirms `relay_msg_id`); its number.
    fn insert_own_line(
        &self,
        row: &GroupRow,
        relay_msg_id: &[u8; 16],
        content: &Content,
        body: &str,
    ) -> Result<i64, ProfileError> {
        let me = self.name()?;
        self.conn
            .execute(
                "INSERT INTO group_messages (group_row, relay_msg_id, sender_key, sender, outgoing,
                   uid, body, sent_at, stored_at, read)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, 1)",
                params![
                    row.id,
                    relay_msg_id.as_slice(),
                    row.signature_key,
                    me,
                    content.id,
                    body,
                    to_i64(content.sent_at_ms),
                    now_ms()
                ],
            )
            .map_err(db("saving a message"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Puts a line that came through the log of `row` at position `seq` in its transcript;
    /// `None` when it is there already (a redelivery).
    fn insert_log_line(
        &self,
        row: &GroupRow,
        seq: u64,
        from: &LineSender<'_>,
        content: &Content,
        body: &str,
    ) -> Result<Option<i64>, ProfileError> {
        let inserted = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO group_messages (group_row, seq, sender_key, sender,
                   outgoing, uid, body, sent_at, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.id,
                    to_i64(seq),
                    from.key,
                    from.name,
                    from.own,
                    content.id,
                    body,
                    to_i64(content.sent_at_ms),
                    now_ms()
                ],
            )
            .map_err(db("saving a message"))?;
        Ok((inserted > 0).then(|| self.conn.last_insert_rowid()))
    }

    fn has_update_intent(&self, id: GroupId) -> Result<bool, ProfileError> {
        let mut stmt = self
            .conn
            .prepare("SELECT change FROM group_intents WHERE group_row = ?1")
            .map_err(db("reading group changes"))?;
        let rows = stmt
            .query_map([id], |r| r.get::<_, Vec<u8>>(0))
            .map_err(db("reading group changes"))?;
        for row in rows {
            let bytes = row.map_err(db("reading group changes"))?;
            if Intent::decode(bytes.as_slice()).is_ok_and(|i| i.kind == UPDATE) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn group_message(&self, id: i64) -> Result<GroupMessage, ProfileError> {
        self.group_messages_where("m.id = ?1", params![id], 1)?
            .pop()
            .ok_or_else(|| ProfileError::NoContact(format!("message #{id}")))
    }

    fn group_messages_where(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
        limit: i64,
    ) -> Result<Vec<GroupMessage>, ProfileError> {
        let sql = format!(
            "SELECT * FROM (
               SELECT m.id, m.group_row, g.name, m.seq, m.sender, m.outgoing, m.notice, m.body, m.sent_at,
                      coalesce(m.seq, 9223372036854775807) AS ord, m.read, m.delivered,
                      (SELECT f.id FROM files f WHERE f.message = m.id) AS file, m.seen
               FROM group_messages m JOIN groups g ON g.id = m.group_row
               WHERE {filter} ORDER BY ord DESC, m.id DESC LIMIT {limit})
             ORDER BY ord, id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(db("reading messages"))?;
        let rows = stmt
            .query_map(args, |r| {
                let line = GroupMessage {
                    id: r.get(0)?,
                    group_id: r.get(1)?,
                    group: r.get(2)?,
                    seq: r.get(3)?,
                    sender: r.get(4)?,
                    outgoing: r.get(5)?,
                    notice: r.get(6)?,
                    text: r.get(7)?,
                    sent_at_ms: r.get(8)?,
                    read: r.get(10)?,
                    delivered: r.get(11)?,
                    file: None,
                    seen: r.get(13)?,
                };
                Ok((line, r.get(12)?))
            })
            .map_err(db("reading messages"))?;
        let lines: Vec<(GroupMessage, Option<i64>)> = rows
            .collect::<Result<_, _>>()
            .map_err(db("reading messages"))?;
        self.with_files(lines, |m: &mut GroupMessage, f| m.file = Some(f))
    }

    /// The latest `limit` lines of a group's transcript, in log order.
    ///
    /// # Errors
    /// On database failure.
    pub fn group_history(
        &self,
        id: GroupId,
        limit: i64,
    ) -> Result<Vec<GroupMessage>, ProfileError> {
        self.group_messages_where("m.group_row = ?1", params![id], limit.max(0))
    }

    /// The latest `limit` lines of a group (or conversation) before the line `before` (all
    /// when `None`), oldest first: a page of its transcript.
    ///
    /// # Errors
    /// On database failure.
    pub fn group_history_before(
        &self,
        id: GroupId,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<GroupMessage>, ProfileError> {
        // Before in the transcript's order (log position, then arrival), which is not the
        // order of line ids: history from a linked device or a backup arrives later than lines
        // it comes before.
        self.group_messages_where(
            "m.group_row = ?1 AND (?2 IS NULL OR (coalesce(m.seq, 9223372036854775807), m.id) <
               (SELECT coalesce(b.seq, 9223372036854775807), b.id FROM group_messages b
                WHERE b.id = ?2 AND b.group_row = ?1))",
            params![id, before],
            limit.max(0),
        )
    }

    /// Unread lines (of one group, or all), in log order; marks them read.
    ///
    /// # Errors
    /// On database failure.
    pub fn take_group_unread(
        &self,
        id: Option<GroupId>,
    ) -> Result<Vec<GroupMessage>, ProfileError> {
        self.tx(|| {
            let lines = self.group_messages_where(
                "(?1 IS NULL AND g.direct = 0 AND g.devices = 0 OR m.group_row = ?1) AND m.read = 0",
                params![id],
                i64::MAX,
            )?;
            let mut marks: std::collections::BTreeMap<GroupId, i64> = Default::default();
            for l in &lines {
                self.conn
                    .execute("UPDATE group_messages SET read = 1 WHERE id = ?1", [l.id])
                    .map_err(db("marking messages read"))?;
                if let Some(seq) = l.seq {
                    let m = marks.entry(l.group_id).or_default();
                    *m = (*m).max(seq);
                }
            }
            self.share_read_marks(&marks)?;
            self.send_read_receipts(&marks)?;
            Ok(lines)
        })
    }

    fn notice(
        &self,
        group: GroupId,
        sender: &str,
        outgoing: bool,
        text: &str,
    ) -> Result<GroupMessage, ProfileError> {
        let uid: [u8; 16] = random()?;
        let now = now_ms();
        let seq: i64 = self
            .conn
            .query_row("SELECT cursor FROM groups WHERE id = ?1", [group], |r| {
                r.get(0)
            })
            .map_err(db("reading a group"))?;
        self.conn
            .execute(
                "INSERT INTO group_messages (group_row, seq, sender, outgoing, notice, uid, body, sent_at, stored_at, read)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?7, 0)",
                params![group, seq, sender, outgoing, uid.as_slice(), text, now],
            )
            .map_err(db("saving a notice"))?;
        self.group_message(self.conn.last_insert_rowid())
    }

    /// Queues an entry to a group's log; returns the relay message id it counts under (an
    /// entry too large for one relay message goes in parts, and counts under its last).
    fn queue_log(&self, row: &GroupRow, kind: Kind) -> Result<[u8; 16], ProfileError> {
        let envelope = Envelope { kind: Some(kind) };
        if envelope.encoded_len() <= self.max_log_entry {
            return self.queue_with_id(
                &row.log_relay,
                &row.log_id,
                &row.log_cap,
                &envelope,
                random()?,
            );
        }
        let bytes = envelope.encode_to_vec();
        let size = WELCOME_PART.min(self.max_log_entry);
        let parts = bytes.chunks(size).count();
        if parts > MAX_ENTRY_PARTS as usize {
            return Err(ProfileError::Invalid(format!(
                "a change of {} bytes is too large for the group's log",
                bytes.len()
            )));
        }
        let ids: Vec<[u8; 16]> = (0..parts).map(|_| random()).collect::<Result<_, _>>()?;
        let last = ids[parts - 1];
        for (i, (chunk, id)) in bytes.chunks(size).zip(&ids).enumerate() {
            self.queue_with_id(
                &row.log_relay,
                &row.log_id,
                &row.log_cap,
                &Envelope {
                    kind: Some(Kind::Part(Part {
                        last: last.to_vec(),
                        part: u32::try_from(i).unwrap_or(u32::MAX),
                        parts: u32::try_from(parts).unwrap_or(u32::MAX),
                        bytes: chunk.to_vec(),
                    })),
                },
                *id,
            )?;
        }
        Ok(last)
    }

    /// Sets the largest log entry posted in one relay message (tests use small ones to see
    /// entries go in parts without building a group of hundreds).
    #[doc(hidden)]
    pub fn set_max_log_entry(&mut self, bytes: usize) {
        self.max_log_entry = bytes.max(256);
    }

    /// Sets the size of group (in devices) from which a device that joins refreshes its keys
    /// with its first message ([`FIRST_MESSAGE_REFRESH_FROM`]; tests use small ones).
    #[doc(hidden)]
    pub fn set_first_message_refresh_from(&mut self, devices: usize) {
        self.first_refresh_from = devices;
    }

    /// The count of messages since its last key refresh that a device starts from when it
    /// joins (or is taken back into) a group of `devices`: one short of a refresh in a group
    /// large enough for its blank tree nodes to cost ([`FIRST_MESSAGE_REFRESH_FROM`]).
    pub(super) fn joined_message_count(&self, devices: usize) -> i64 {
        if devices >= self.first_refresh_from {
            GROUP_REKEY_EVERY - 1
        } else {
            0
        }
    }

    fn mark_seen(&self, log_id: &[u8; 32], message_id: &[u8; 16]) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO seen (mailbox_id, message_id, seen_at) VALUES (?1, ?2, ?3)",
                params![log_id.as_slice(), message_id.as_slice(), now_ms()],
            )
            .map_err(db("recording a message id"))?;
        Ok(())
    }

    /// Sends what waits (drafts) and commits the next change, when no commit of this device
    /// waits for the log. Runs inside the caller's transaction.
    fn drive_in_tx(&self, id: GroupId) -> Result<(), ProfileError> {
        self.drive_with(id, true)
    }

    /// As [`Self::drive_in_tx`]; without `commit`, only drafts go out and changes wait. Writing
    /// a message does not commit the key refresh it may have made due: a commit holds back
    /// this device's later messages until the device reads the commit's place in the log,
    /// so it is made when the device reads (or syncs), never by a device that only sends.
    fn drive_with(&self, id: GroupId, commit: bool) -> Result<(), ProfileError> {
        let row = self.group_row(id)?;
        if row.state >= STATE_GONE || row.pending_commit.is_some() {
            return Ok(());
        }
        let mls = self.mls();
        let identity = Identity::load(&mls, &row.signature_key)?;
        let mut group = Group::load(&mls, &row.group_id)?;
        // Drafts first: they were written in this epoch's membership.
        let drafts: Vec<(i64, Vec<u8>, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, content, relay_msg_id FROM group_drafts WHERE group_row = ?1 ORDER BY id")
                .map_err(db("reading drafts"))?;
            let rows = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(db("reading drafts"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading drafts"))?
        };
        for (draft, content, mid) in drafts {
            let content = Content::decode(content.as_slice()).map_err(|e| ProfileError::Db {
                doing: "reading a draft",
                reason: e.to_string(),
            })?;
            let ct = group.seal(&mls, &identity, &content)?;
            let mid: [u8; 16] = mid.as_slice().try_into().map_err(|_| ProfileError::Db {
                doing: "reading a draft",
                reason: "a message id is not 16 bytes".to_owned(),
            })?;
            self.queue_with_id(
                &row.log_relay,
                &row.log_id,
                &row.log_cap,
                &Envelope {
                    kind: Some(Kind::Mls(ct)),
                },
                mid,
            )?;
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO group_unconfirmed (relay_msg_id, group_row, content, epoch)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![mid.as_slice(), id, content.encode_to_vec(), to_i64(group.epoch())],
                )
                .map_err(db("sending a draft"))?;
            self.conn
                .execute("DELETE FROM group_drafts WHERE id = ?1", [draft])
                .map_err(db("sending a draft"))?;
        }
        if !commit {
            return Ok(());
        }
        if row.state == STATE_LEAVING {
            let leave_epoch: Option<i64> = self
                .conn
                .query_row("SELECT leave_epoch FROM groups WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .map_err(db("reading a group"))?;
            if leave_epoch != Some(to_i64(group.epoch())) {
                // The request to leave was for an epoch a commit ended: ask again.
                self.propose_leave_in_tx(&row, &mut group, &identity)?;
            }
            return Ok(());
        }
        // Requests to leave are committed by whoever sees them first (the rules allow it).
        if !group.leaving().is_empty() && self.first_intent(id)?.is_none() {
            self.add_intent(
                id,
                &Intent {
                    kind: COMMIT_LEAVES,
                    ..Intent::default()
                },
            )?;
        }
        while let Some((intent_id, intent)) = self.first_intent(id)? {
            let change = intent.change()?;
            match group.commit(&mls, &identity, change) {
                Ok(committed) => {
                    let mid = self.queue_log(&row, Kind::Mls(committed.commit))?;
                    self.keep_ticket(&committed.ticket)?;
                    self.conn
                        .execute(
                            "UPDATE groups SET pending_commit = ?1, pending_intent = ?2,
                               pending_ticket = ?3 WHERE id = ?4",
                            params![
                                mid.as_slice(),
                                intent_id,
                                committed.ticket.commitment().as_slice(),
                                id
                            ],
                        )
                        .map_err(db("recording a commit"))?;
                    self.conn
                        .execute(
                            "UPDATE group_intents SET welcome = ?1 WHERE id = ?2",
                            params![committed.welcome, intent_id],
                        )
                        .map_err(db("recording a commit"))?;
                    return Ok(());
                }
                Err(e)
                    if (intent.kind == REJOIN || intent.kind == RESTORE)
                        && (e.is_bad_input() || matches!(e, E2eeError::NotAllowed(_))) =>
                {
                    // The device is back already (another member took it back first), or
                    // left: nothing to do.
                    self.drop_intent(intent_id)?;
                }
                Err(E2eeError::NotAllowed(reason)) => {
                    // The group changed under the intent (the member left, this device lost
                    // its admin role...): it can never land, so it goes.
                    tracing::info!(%reason, "a group change no longer applies");
                    self.drop_intent(intent_id)?;
                    let me = self.name()?;
                    self.notice(
                        id,
                        &me,
                        true,
                        &format!("a change could not be made: {reason}"),
                    )?;
                }
                Err(e) if e.is_bad_input() => {
                    self.drop_intent(intent_id)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn first_intent(&self, id: GroupId) -> Result<Option<(i64, Intent)>, ProfileError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT id, change FROM group_intents WHERE group_row = ?1 ORDER BY id LIMIT 1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading group changes"))?;
        row.map(|(intent_id, bytes)| {
            Intent::decode(bytes.as_slice())
                .map(|i| (intent_id, i))
                .map_err(|e| ProfileError::Db {
                    doing: "reading a group change",
                    reason: e.to_string(),
                })
        })
        .transpose()
    }

    fn drop_intent(&self, intent_id: i64) -> Result<(), ProfileError> {
        self.conn
            .execute("DELETE FROM group_intents WHERE id = ?1", [intent_id])
            .map_err(db("dropping a group change"))?;
        Ok(())
    }

    /// Keeps a rejoin ticket's secret under its commitment (the commitment went into a leaf
    /// this device made).
    pub(super) fn keep_ticket(&self, ticket: &Ticket) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO tickets (commitment, secret, made_at) VALUES (?1, ?2, ?3)",
                params![
                    ticket.commitment().as_slice(),
                    ticket.secret().as_slice(),
                    now_ms()
                ],
            )
            .map_err(db("keeping a rejoin ticket"))?;
        Ok(())
    }

    /// The ticket behind `commitment`, if this device made it.
    fn ticket(&self, commitment: &[u8]) -> Result<Option<Ticket>, ProfileError> {
        let secret: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT secret FROM tickets WHERE commitment = ?1",
                [commitment],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading a rejoin ticket"))?;
        secret
            .map(|s| key32(&s, "rejoin ticket").map(Ticket::from_secret))
            .transpose()
    }

    /// Forgets a ticket no leaf carries any more.
    fn forget_ticket(&self, commitment: &[u8]) -> Result<(), ProfileError> {
        self.conn
            .execute("DELETE FROM tickets WHERE commitment = ?1", [commitment])
            .map_err(db("forgetting a rejoin ticket"))?;
        Ok(())
    }

    /// Sends what waits and commits the next change in every group (after a restart, or
    /// after the log was read).
    ///
    /// # Errors
    /// On database or MLS failure.
    pub fn drive_groups(&self) -> Result<(), ProfileError> {
        for id in self.group_ids(false)? {
            self.tx(|| self.drive_in_tx(id))?;
        }
        self.tx(|| {
            self.stock_device_packages()?;
            self.bring_devices()
        })?;
        Ok(())
    }
}

/// A change a person asks for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum GroupChange<'a> {
    /// Remove the member with this name.
    Remove(&'a str),
    /// Make the member with this name an admin.
    Promote(&'a str),
    /// Rename the group.
    Rename(&'a str),
    /// Refresh this device's keys.
    Update,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_invitation_messages_open_only_with_the_secret() {
        let secret = [7u8; 32];
        let sealed = seal(&secret, b"join", b"hello").expect("seal");
        assert_eq!(
            open_sealed(&secret, b"join", &sealed).expect("open"),
            b"hello"
        );
        assert!(open_sealed(&[8u8; 32], b"join", &sealed).is_err());
        assert!(open_sealed(&secret, b"welcome", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(open_sealed(&secret, b"join", &flipped).is_err());
        assert!(open_sealed(&secret, b"join", &sealed[..10]).is_err());
    }
}
