//! Several devices of one person (issue #16): linking a new device, listing and removing them.
//!
//! A person's devices are leaves of every conversation under the same roster person id and
//! name (the roster lets any member add and remove its own devices). Linking, between the
//! existing device E and the new device N, through E's relay and sealed under the device
//! link's secret (the relay sees ciphertext on two mailboxes, nothing else):
//!
//! 1. N posts a `Hello` to E's link mailbox: its device name and a reply mailbox of its own.
//! 2. E answers with an `Offer` (in chunks): the person's name, relays and proxies, and every
//!    active conversation (its name here, whether it is a conversation of two, its suite).
//! 3. N makes a fresh signature key and key package for each conversation (nothing secret of
//!    E's is copied, so forward secrecy holds per device) and posts them, in chunks.
//! 4. E commits an add of each into its conversation under its own roster entry, and sends
//!    each Welcome to N's reply mailbox in parts, under an id for that conversation.
//! 5. N joins each conversation from its Welcome and reads its log from the add on.
//!
//! Every step is recorded in E's and N's profiles as it happens, so either may stop (even
//! `kill -9`) and continue where it was.

use super::{
    ADD, GroupRow, Intent, NewGroup, REMOVE, STATE_ACTIVE, STATE_GONE, key32, open_sealed, peer,
    seal,
};
use crate::OwnedMailbox;
use crate::device_link::{DEVICE_LINK_TTL_MS, DeviceLink, check_device_name};
use crate::ids::GroupId;
use crate::invite::check_name;
use crate::profile::{Handled, Profile, ProfileError, blob32, db, now_ms, random, to_i64};
use blake2::{Blake2s256, Digest as _};
use pigeon_e2ee::content::{
    DeviceKeys, DevicePackage, ReadMark, ReadMarks, WelcomePart, body::Body, envelope::Kind,
};
use pigeon_e2ee::{Envelope, Group, Identity, Roster, RosterEntry, Suite};
use pigeon_proto::auth::{self, SigningKey};
use pigeon_transport::RelayLink;
use prost::Message as _;
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;

/// Key packages each device keeps waiting, in the group of devices, for each other device.
const DEVICE_STOCK: usize = 3;
/// Most unused key packages kept from one other device.
const MAX_DEVICE_PACKAGES: i64 = 16;

/// Most read marks in one message.
const MAX_READ_MARKS: usize = 1024;

/// Most conversations one link offers a new device.
pub const MAX_LINKED_CONVERSATIONS: usize = 4096;
/// Conversations per `Offer` message.
const OFFER_CHUNK: usize = 100;
/// Key packages per message (X-Wing ones are ~1.6 KB).
const KEY_PACKAGE_CHUNK: usize = 16;

const LINK_WAITING: i64 = 0;
const LINK_OFFERED: i64 = 1;
const LINK_ADDING: i64 = 2;
const LINK_DONE: i64 = 3;
const LINK_OVER: i64 = 4;

const JOIN_HELLO_SENT: i64 = 0;
const JOIN_ASKED: i64 = 1;
const JOIN_DONE: i64 = 2;
const JOIN_OVER: i64 = 3;

/// What two devices say to each other while one links the other.
#[derive(Clone, PartialEq, prost::Message)]
struct LinkMessage {
    #[prost(oneof = "link_message::Kind", tags = "1, 2, 3, 4")]
    kind: Option<link_message::Kind>,
}

mod link_message {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Offer(super::Offer),
        #[prost(message, tag = "3")]
        KeyPackages(super::KeyPackages),
        #[prost(message, tag = "4")]
        History(super::History),
    }
}

/// New device → existing device: who it is and where to answer.
#[derive(Clone, PartialEq, prost::Message)]
struct Hello {
    #[prost(string, tag = "1")]
    device: String,
    #[prost(bytes = "vec", tag = "2")]
    reply_relay: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    reply_mailbox: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    reply_cap: Vec<u8>,
}

/// Existing device → new device: the profile and (a chunk of) its conversations.
#[derive(Clone, PartialEq, prost::Message)]
struct Offer {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "2")]
    relays: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    proxies: Vec<String>,
    /// Conversations offered in all chunks together.
    #[prost(uint32, tag = "4")]
    total: u32,
    #[prost(message, repeated, tag = "5")]
    conversations: Vec<OfferedConversation>,
    /// The name the new device goes by (the existing device may have changed the one asked
    /// for, to keep names apart).
    #[prost(string, tag = "6")]
    device: String,
    /// History follows each conversation's Welcome (ending with a chunk marked `last`).
    #[prost(bool, tag = "7")]
    history: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OfferedConversation {
    #[prost(uint32, tag = "1")]
    index: u32,
    #[prost(bool, tag = "2")]
    direct: bool,
    /// The group's name, or the contact's name here.
    #[prost(string, tag = "3")]
    name: String,
    #[prost(uint32, tag = "4")]
    suite: u32,
    /// The group of the person's own devices (no name).
    #[prost(bool, tag = "5")]
    devices: bool,
}

/// New device → existing device: (a chunk of) one key package per conversation.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyPackages {
    #[prost(message, repeated, tag = "1")]
    items: Vec<IndexedKeyPackage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IndexedKeyPackage {
    #[prost(uint32, tag = "1")]
    index: u32,
    #[prost(bytes = "vec", tag = "2")]
    key_package: Vec<u8>,
}

/// Existing device → new device, after a conversation's Welcome: (a chunk of) its recent
/// messages, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
struct History {
    #[prost(uint32, tag = "1")]
    index: u32,
    #[prost(message, repeated, tag = "2")]
    lines: Vec<HistoryLine>,
    /// The conversation's last chunk.
    #[prost(bool, tag = "3")]
    last: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HistoryLine {
    /// Its position in the conversation's log (0: none).
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(string, tag = "2")]
    sender: String,
    /// Written by this person (on any of their devices).
    #[prost(bool, tag = "3")]
    outgoing: bool,
    #[prost(string, tag = "4")]
    text: String,
    #[prost(uint64, tag = "5")]
    sent_at_ms: u64,
    /// The content id (16 bytes): the same line is never kept twice.
    #[prost(bytes = "vec", tag = "6")]
    uid: Vec<u8>,
}

/// Most history lines one link hands over per conversation.
const MAX_HISTORY_LINES: i64 = 100_000;
/// Bytes of history lines per message (well under a relay message).
const HISTORY_CHUNK_BYTES: usize = 32 * 1024;
/// Longest line of history accepted, in bytes.
const MAX_HISTORY_TEXT: usize = 64 * 1024;

/// The id the parts of a Welcome made with a key package whose secret is `secret` carry in the
/// group of devices.
fn sibling_welcome_id(secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"pigeon sibling welcome id");
    h.update(secret);
    h.finalize().into()
}

/// The id the parts of conversation `index`'s Welcome carry.
fn link_welcome_id(secret: &[u8; 32], index: u32) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"pigeon device link welcome id");
    h.update(secret);
    h.update(index.to_le_bytes());
    h.finalize().into()
}

/// A device link made here, ready for its mailbox to be created on the relay.
#[derive(Debug)]
pub struct PreparedDeviceLink {
    /// The link to show the new device.
    pub link: DeviceLink,
    /// The link mailbox's owner key.
    pub mailbox_key: SigningKey,
}

/// Where a link this device made stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLinkProgress {
    /// The new device's name, once it answered.
    pub device: String,
    /// The new device answered.
    pub answered: bool,
    /// Conversations offered.
    pub offered: usize,
    /// Conversations whose Welcome went to the new device.
    pub welcomed: usize,
    /// Every conversation was handed over (its Welcome is on the relay).
    pub done: bool,
    /// Nobody answered in time.
    pub expired: bool,
}

/// Where following a device link stands, on the new device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkJoinProgress {
    /// The other device's offer came (all of it).
    pub offered: bool,
    /// Conversations offered.
    pub total: usize,
    /// Conversations joined.
    pub joined: usize,
    /// Every conversation is joined.
    pub done: bool,
}

/// One of the person's devices, as this device knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its name ("" for a first device that never got one).
    pub name: String,
    /// This device.
    pub this: bool,
    /// Conversations it is in (of those this device is in).
    pub conversations: usize,
    /// When this device linked it (ms since the epoch), if it did.
    pub linked_at: Option<i64>,
    /// When this device last read something it wrote (ms since the epoch).
    pub last_seen: Option<i64>,
}

struct LinkRow {
    id: i64,
    secret: [u8; 32],
    device: String,
    reply: Option<(String, [u8; 32], [u8; 32])>,
    state: i64,
    created_at: i64,
}

/// A conversation offered to this (new) device, not joined yet.
struct OfferedItem {
    index: u32,
    direct: bool,
    name: String,
    signature_key: Option<Vec<u8>>,
}

struct JoinRow {
    id: i64,
    secret: [u8; 32],
    link_relay: String,
    link_mailbox: [u8; 32],
    link_cap: [u8; 32],
    state: i64,
}

/// A device's name as people read it.
pub fn device_label(name: &str) -> &str {
    if name.is_empty() {
        "first device"
    } else {
        name
    }
}

impl Profile {
    /// This device's name ("" for a first device that was never given one).
    ///
    /// # Errors
    /// On database failure.
    pub fn device_name(&self) -> Result<String, ProfileError> {
        self.conn
            .query_row("SELECT device FROM profile WHERE id = 1", [], |r| r.get(0))
            .map_err(db("reading the profile"))
    }

    /// Another device of this person, called `device`, wrote something this device read.
    pub(super) fn device_seen(&self, device: &str) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "INSERT INTO device_seen (device, seen_at) VALUES (?1, ?2)
                 ON CONFLICT (device) DO UPDATE SET seen_at = excluded.seen_at",
                params![device, now_ms()],
            )
            .map_err(db("recording a device"))?;
        Ok(())
    }

    /// Names this device (before it joins anything: the name goes into its roster entries).
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for a bad name.
    pub fn set_device_name(&self, name: &str) -> Result<(), ProfileError> {
        check_device_name(name).map_err(ProfileError::Invalid)?;
        self.conn
            .execute("UPDATE profile SET device = ?1 WHERE id = 1", [name])
            .map_err(db("naming the device"))?;
        Ok(())
    }

    /// The person's devices, from the rosters of the conversations this device is in.
    ///
    /// # Errors
    /// On database or MLS failure.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, ProfileError> {
        let me = self.device_name()?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (row, roster) in self.active_rosters()? {
            let Some(person) = roster.entry(&row.signature_key).map(|e| e.person.clone()) else {
                continue;
            };
            if row.devices {
                // Names every device of the person; not a conversation.
                for m in &roster.members {
                    seen.entry(m.device.clone()).or_default();
                }
                continue;
            }
            for m in roster.members.iter().filter(|m| m.person == person) {
                // This device's own entry counts under its name, whatever another device
                // wrote in it (an inviter's device name travels only in newer links).
                let name = if m.key == row.signature_key {
                    me.clone()
                } else {
                    m.device.clone()
                };
                *seen.entry(name).or_default() += 1;
            }
        }
        seen.entry(me.clone()).or_default();
        let mut out = Vec::new();
        for (name, conversations) in seen {
            let linked_at = self
                .conn
                .query_row(
                    "SELECT max(done_at) FROM device_links WHERE device = ?1 AND done_at IS NOT NULL",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(db("reading device links"))?;
            let last_seen = self
                .conn
                .query_row(
                    "SELECT seen_at FROM device_seen WHERE device = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("reading device links"))?;
            out.push(DeviceInfo {
                this: name == me,
                name,
                conversations,
                linked_at,
                last_seen,
            });
        }
        Ok(out)
    }

    fn active_rosters(&self) -> Result<Vec<(GroupRow, pigeon_e2ee::Roster)>, ProfileError> {
        let mut out = Vec::new();
        for id in self.group_ids(false)? {
            let row = self.group_row(id)?;
            if row.state != STATE_ACTIVE {
                continue;
            }
            let (_, roster) = pigeon_e2ee::stored_state(&self.mls(), &row.group_id)?;
            if let Some(roster) = roster {
                out.push((row, roster));
            }
        }
        Ok(out)
    }

    /// Removes the person's device called `name` from every conversation this device is in:
    /// one commit per conversation, which also moves every key the device could read on.
    /// Returns how many conversations it was in.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for this device itself or a name no conversation lists.
    pub fn remove_device(&self, name: &str) -> Result<usize, ProfileError> {
        if name == self.device_name()? {
            return Err(ProfileError::NotNow(
                "that is this device: remove it from another of your devices".to_owned(),
            ));
        }
        self.tx(|| {
            let mut count = 0;
            for (row, roster) in self.active_rosters()? {
                let Some(person) = roster.entry(&row.signature_key).map(|e| e.person.clone())
                else {
                    continue;
                };
                let keys: Vec<Vec<u8>> = roster
                    .members
                    .iter()
                    .filter(|m| m.person == person && m.device == name)
                    .filter(|m| m.key != row.signature_key)
                    .map(|m| m.key.clone())
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                count += 1;
                self.add_intent(
                    row.id,
                    &Intent {
                        kind: REMOVE,
                        keys,
                        ..Intent::default()
                    },
                )?;
                self.drive_in_tx(row.id)?;
            }
            if count == 0 {
                return Err(ProfileError::NotNow(format!(
                    "no conversation lists a device of yours called {name:?} (see `pigeon devices`)"
                )));
            }
            Ok(count)
        })
    }

    /// Makes a one-time link for a new device of this person, which hands over the last
    /// `history_days` days of each conversation's messages (0: none). The caller creates the
    /// link's mailbox on `relay` before showing it.
    ///
    /// # Errors
    /// On database failure.
    pub fn prepare_device_link(
        &self,
        relay: &RelayLink,
        history_days: u32,
    ) -> Result<PreparedDeviceLink, ProfileError> {
        let mailbox_key =
            auth::generate_signing_key().map_err(|e| ProfileError::Random(e.to_string()))?;
        let taken = self.devices()?.len();
        let link = DeviceLink {
            relay: relay.clone(),
            mailbox_id: random()?,
            sender_cap: random()?,
            secret: random()?,
            name: self.name()?,
            device: format!("device {}", taken + 1),
        };
        self.conn
            .execute(
                "INSERT INTO device_links (mailbox_id, mailbox_key, relay, secret, device, created_at,
                   history_days) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    link.mailbox_id.as_slice(),
                    mailbox_key.to_bytes().as_slice(),
                    relay.to_string(),
                    link.secret.as_slice(),
                    link.device,
                    now_ms(),
                    history_days.min(36_500)
                ],
            )
            .map_err(db("saving the device link"))?;
        Ok(PreparedDeviceLink { link, mailbox_key })
    }

    /// Withdraws a device link whose mailbox never reached the relay.
    ///
    /// # Errors
    /// On database failure.
    pub fn cancel_device_link(&self, prepared: &PreparedDeviceLink) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "DELETE FROM device_links WHERE mailbox_id = ?1",
                [prepared.link.mailbox_id.as_slice()],
            )
            .map_err(db("withdrawing the device link"))?;
        Ok(())
    }

    /// Where the link with mailbox `mailbox` stands.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for a link this profile did not make.
    pub fn device_link_progress(
        &self,
        mailbox: &[u8; 32],
    ) -> Result<DeviceLinkProgress, ProfileError> {
        let (id, device, state, created_at, answered, unsent): (i64, String, i64, i64, bool, i64) =
            self.conn
                .query_row(
                    "SELECT id, device, state, created_at, reply_mailbox IS NOT NULL,
                   (SELECT count(*) FROM outbox o WHERE o.mailbox_id = l.reply_mailbox)
                 FROM device_links l WHERE mailbox_id = ?1",
                    [mailbox.as_slice()],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(db("reading a device link"))?
                .ok_or_else(|| ProfileError::NotNow("this profile made no such link".to_owned()))?;
        let count = |min_state: i64| -> Result<usize, ProfileError> {
            let n: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM device_link_items WHERE link = ?1 AND state >= ?2",
                    params![id, min_state],
                    |r| r.get(0),
                )
                .map_err(db("reading a device link"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok(DeviceLinkProgress {
            device,
            answered,
            offered: count(0)?,
            welcomed: count(2)?,
            // Handed over once the last Welcome has left this device, not just been queued.
            done: (state == LINK_DONE || (state == LINK_OVER && answered)) && unsent == 0,
            expired: !answered && now_ms() - created_at > DEVICE_LINK_TTL_MS,
        })
    }

    /// On a new device: follows `link`. `reply` is a mailbox the caller created on `reply_relay`
    /// for the other device's answers; the hello waits in the outbox.
    ///
    /// # Errors
    /// On database failure, or when this profile already follows a link.
    pub fn follow_device_link(
        &self,
        link: &DeviceLink,
        reply: &OwnedMailbox,
        reply_relay: &RelayLink,
    ) -> Result<(), ProfileError> {
        self.tx(|| {
            let busy: i64 = self
                .conn
                .query_row("SELECT count(*) FROM device_link_joins", [], |r| r.get(0))
                .map_err(db("reading device links"))?;
            if busy > 0 {
                return Err(ProfileError::NotNow(
                    "this device was linked already; a device is linked once, when it is set up"
                        .to_owned(),
                ));
            }
            self.conn
                .execute(
                    "INSERT INTO device_link_joins (mailbox_id, mailbox_key, relay, secret, link_relay,
                       link_mailbox, link_cap, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        reply.id.0.as_slice(),
                        reply.key.to_bytes().as_slice(),
                        reply_relay.to_string(),
                        link.secret.as_slice(),
                        link.relay.to_string(),
                        link.mailbox_id.as_slice(),
                        link.sender_cap.as_slice(),
                        now_ms()
                    ],
                )
                .map_err(db("saving the device link"))?;
            let hello = Hello {
                device: self.device_name()?,
                reply_relay: reply_relay.to_payload().encode_to_vec(),
                reply_mailbox: reply.id.0.to_vec(),
                reply_cap: reply.sender_cap.to_vec(),
            };
            self.queue_link_message(
                &link.relay.to_string(),
                &link.mailbox_id,
                &link.sender_cap,
                &link.secret,
                link_message::Kind::Hello(hello),
            )
        })
    }

    /// On a new device: where following the link stands (`None`: it follows none).
    ///
    /// # Errors
    /// On database failure.
    pub fn link_join_progress(&self) -> Result<Option<LinkJoinProgress>, ProfileError> {
        let row: Option<(i64, Option<i64>, i64)> = self
            .conn
            .query_row(
                "SELECT id, total, state FROM device_link_joins ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db("reading the device link"))?;
        let Some((id, total, state)) = row else {
            return Ok(None);
        };
        let joined: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM device_link_join_items WHERE join_id = ?1 AND group_row IS NOT NULL",
                [id],
                |r| r.get(0),
            )
            .map_err(db("reading the device link"))?;
        Ok(Some(LinkJoinProgress {
            offered: state >= JOIN_ASKED,
            total: usize::try_from(total.unwrap_or(0)).unwrap_or(0),
            joined: usize::try_from(joined).unwrap_or(0),
            done: state >= JOIN_DONE,
        }))
    }

    fn queue_link_message(
        &self,
        relay: &str,
        mailbox: &[u8; 32],
        cap: &[u8; 32],
        secret: &[u8; 32],
        kind: link_message::Kind,
    ) -> Result<(), ProfileError> {
        let plain = LinkMessage { kind: Some(kind) }.encode_to_vec();
        let sealed = seal(secret, b"device link", &plain)?;
        self.queue(
            relay,
            mailbox,
            cap,
            &Envelope {
                kind: Some(Kind::Link(sealed)),
            },
        )
    }

    fn link_row(&self, mailbox: &[u8; 32]) -> Result<Option<LinkRow>, ProfileError> {
        self.conn
            .query_row(
                "SELECT id, secret, device, reply_relay, reply_mailbox, reply_cap, state, created_at
                 FROM device_links WHERE mailbox_id = ?1",
                [mailbox.as_slice()],
                |r| {
                    let reply = match (
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                        r.get::<_, Option<Vec<u8>>>(5)?,
                    ) {
                        (Some(relay), Some(m), Some(c)) => Some((relay, blob32(m)?, blob32(c)?)),
                        _ => None,
                    };
                    Ok(LinkRow {
                        id: r.get(0)?,
                        secret: blob32(r.get(1)?)?,
                        device: r.get(2)?,
                        reply,
                        state: r.get(6)?,
                        created_at: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(db("finding the mailbox"))
    }

    fn join_row(&self, mailbox: &[u8; 32]) -> Result<Option<JoinRow>, ProfileError> {
        self.conn
            .query_row(
                "SELECT id, secret, link_relay, link_mailbox, link_cap, state
                 FROM device_link_joins WHERE mailbox_id = ?1",
                [mailbox.as_slice()],
                |r| {
                    Ok(JoinRow {
                        id: r.get(0)?,
                        secret: blob32(r.get(1)?)?,
                        link_relay: r.get(2)?,
                        link_mailbox: blob32(r.get(3)?)?,
                        link_cap: blob32(r.get(4)?)?,
                        state: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(db("finding the mailbox"))
    }

    /// A delivery on a device link's mailbox (this device made the link) or reply mailbox
    /// (this device follows one). `None`: the mailbox is neither.
    pub(in crate::profile) fn device_link_delivery(
        &self,
        mailbox: &[u8; 32],
        envelope: &Envelope,
    ) -> Result<Option<Handled>, ProfileError> {
        if let Some(link) = self.link_row(mailbox)? {
            let Some(Kind::Link(sealed)) = &envelope.kind else {
                return Err(peer("device link", "its mailbox received something else"));
            };
            let message = open_link_message(&link.secret, sealed)?;
            return match message {
                link_message::Kind::Hello(h) => self.link_hello(&link, h).map(Some),
                link_message::Kind::KeyPackages(k) => self.link_key_packages(&link, k).map(Some),
                link_message::Kind::Offer(_) | link_message::Kind::History(_) => Err(peer(
                    "device link",
                    "the device that made the link received what only it sends",
                )),
            };
        }
        let Some(join) = self.join_row(mailbox)? else {
            return Ok(None);
        };
        match &envelope.kind {
            Some(Kind::Link(sealed)) => match open_link_message(&join.secret, sealed)? {
                link_message::Kind::Offer(o) => self.link_offer(&join, o).map(Some),
                link_message::Kind::History(h) => self.link_history(&join, h).map(Some),
                _ => Err(peer(
                    "device link",
                    "the new device received something only it sends",
                )),
            },
            Some(Kind::WelcomePart(part)) => self.linked_welcome_part(&join, part).map(Some),
            _ => Err(peer(
                "device link",
                "its reply mailbox received something else",
            )),
        }
    }

    /// Existing device: the new device answered the link.
    fn link_hello(&self, link: &LinkRow, hello: Hello) -> Result<Handled, ProfileError> {
        if link.state != LINK_WAITING {
            return Err(peer(
                "device link",
                "this link was used already; it works once",
            ));
        }
        if now_ms() - link.created_at > DEVICE_LINK_TTL_MS {
            return Err(peer(
                "device link",
                "this link expired; make a new one with `pigeon devices link`",
            ));
        }
        check_device_name(&hello.device).map_err(|r| peer("device link", &r))?;
        let reply_relay = RelayLink::from_payload_bytes(&hello.reply_relay)
            .map_err(|e| peer("device link", &format!("its reply relay is invalid: {e}")))?;
        let reply_mailbox = key32(&hello.reply_mailbox, "device link")?;
        let reply_cap = key32(&hello.reply_cap, "device link")?;
        // The new device's name, kept apart from the person's other devices.
        let wanted = if hello.device.trim().is_empty() {
            link.device.clone()
        } else {
            hello.device.clone()
        };
        let taken: Vec<String> = self.devices()?.into_iter().map(|d| d.name).collect();
        let mut device = wanted.clone();
        let mut n = 2;
        while taken.contains(&device) {
            device = format!("{wanted} ({n})");
            n += 1;
        }
        let mut conversations = Vec::new();
        for (row, _) in self.active_rosters()? {
            if conversations.len() == MAX_LINKED_CONVERSATIONS {
                break;
            }
            let name = if row.direct {
                match self.contact_of(row.id)? {
                    Some(c) => c.name,
                    None => continue,
                }
            } else {
                row.name.clone()
            };
            let suite = row.suite;
            let index = u32::try_from(conversations.len()).unwrap_or(u32::MAX);
            self.conn
                .execute(
                    "INSERT INTO device_link_items (link, idx, group_row, welcome_id) VALUES (?1, ?2, ?3, ?4)",
                    params![link.id, index, row.id, link_welcome_id(&link.secret, index).as_slice()],
                )
                .map_err(db("offering a conversation"))?;
            conversations.push(OfferedConversation {
                index,
                direct: row.direct,
                name,
                suite: u32::from(suite),
                devices: row.devices,
            });
        }
        let relay_text = reply_relay.to_string();
        self.conn
            .execute(
                "UPDATE device_links SET reply_relay = ?1, reply_mailbox = ?2, reply_cap = ?3,
                   device = ?4, state = ?5 WHERE id = ?6",
                params![
                    relay_text,
                    reply_mailbox.as_slice(),
                    reply_cap.as_slice(),
                    device,
                    LINK_OFFERED,
                    link.id
                ],
            )
            .map_err(db("recording the new device"))?;
        let total = u32::try_from(conversations.len()).unwrap_or(u32::MAX);
        let history_days: i64 = self
            .conn
            .query_row(
                "SELECT history_days FROM device_links WHERE id = ?1",
                [link.id],
                |r| r.get(0),
            )
            .map_err(db("reading the device link"))?;
        let relays: Vec<String> = self.relays()?.iter().map(ToString::to_string).collect();
        let proxies: Vec<String> = self.proxies()?.iter().map(|p| p.link.to_string()).collect();
        let mut chunks: Vec<Vec<OfferedConversation>> = conversations
            .chunks(OFFER_CHUNK)
            .map(<[_]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for chunk in chunks {
            self.queue_link_message(
                &relay_text,
                &reply_mailbox,
                &reply_cap,
                &link.secret,
                link_message::Kind::Offer(Offer {
                    name: self.name()?,
                    relays: relays.clone(),
                    proxies: proxies.clone(),
                    total,
                    conversations: chunk,
                    device: device.clone(),
                    history: history_days > 0,
                }),
            )?;
        }
        if total == 0 {
            self.link_finished(link.id)?;
        }
        Ok(Handled::Notice(format!(
            "a new device called {device} answered your link; handing it {total} conversations"
        )))
    }

    /// Existing device: key packages from the new device; each is added to its conversation.
    fn link_key_packages(&self, link: &LinkRow, kps: KeyPackages) -> Result<Handled, ProfileError> {
        if link.state != LINK_OFFERED {
            return Err(peer(
                "device link",
                "key packages came before the offer or after the adds",
            ));
        }
        let Some((reply_relay, reply_mailbox, reply_cap)) = &link.reply else {
            return Err(peer(
                "device link",
                "key packages came before the new device's hello",
            ));
        };
        if kps.items.len() > KEY_PACKAGE_CHUNK * 4 {
            return Err(peer("device link", "too many key packages in one message"));
        }
        for item in kps.items {
            let row: Option<(GroupId, i64, Vec<u8>)> = self
                .conn
                .query_row(
                    "SELECT group_row, state, welcome_id FROM device_link_items WHERE link = ?1 AND idx = ?2",
                    params![link.id, item.index],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db("reading a device link"))?;
            let Some((group, state, welcome_id)) = row else {
                return Err(peer(
                    "device link",
                    "a key package is for a conversation never offered",
                ));
            };
            if state != 0 {
                continue;
            }
            let grow = self.group_row(group)?;
            self.conn
                .execute(
                    "UPDATE device_link_items SET state = 1 WHERE link = ?1 AND idx = ?2",
                    params![link.id, item.index],
                )
                .map_err(db("recording a key package"))?;
            if grow.state != STATE_ACTIVE {
                continue;
            }
            let mls = self.mls();
            let (_, roster) = pigeon_e2ee::stored_state(&mls, &grow.group_id)?;
            let Some(me) = roster
                .as_ref()
                .and_then(|r| r.entry(&grow.signature_key))
                .cloned()
            else {
                continue;
            };
            let suite = Suite::from_code(grow.suite).unwrap_or(Suite::XWing);
            let key = pigeon_e2ee::key_package_signature_key(&mls, &item.key_package, suite)?;
            self.add_intent(
                group,
                &Intent {
                    kind: ADD,
                    key_package: item.key_package,
                    entry: Some(RosterEntry {
                        key,
                        person: me.person,
                        name: me.name,
                        device: link.device.clone(),
                        admin: me.admin,
                    }),
                    welcome_relay: reply_relay.clone(),
                    welcome_mailbox: reply_mailbox.to_vec(),
                    welcome_cap: reply_cap.to_vec(),
                    welcome_secret: link.secret.to_vec(),
                    welcome_id,
                    ..Intent::default()
                },
            )?;
            self.drive_in_tx(group)?;
        }
        let waiting: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM device_link_items WHERE link = ?1 AND state = 0",
                [link.id],
                |r| r.get(0),
            )
            .map_err(db("reading a device link"))?;
        if waiting == 0 {
            self.conn
                .execute(
                    "UPDATE device_links SET state = ?1 WHERE id = ?2",
                    params![LINK_ADDING, link.id],
                )
                .map_err(db("recording a device link"))?;
            self.link_maybe_finished(link.id)?;
        }
        Ok(Handled::Duplicate)
    }

    /// Existing device: the Welcome with `welcome_id` went out (or its conversation ended).
    pub(super) fn link_welcome_sent(&self, welcome_id: &[u8]) -> Result<(), ProfileError> {
        let link: Option<i64> = self
            .conn
            .query_row(
                "SELECT link FROM device_link_items WHERE welcome_id = ?1",
                [welcome_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading a device link"))?;
        let Some(link) = link else {
            return Ok(());
        };
        self.conn
            .execute(
                "UPDATE device_link_items SET state = 2 WHERE welcome_id = ?1",
                [welcome_id],
            )
            .map_err(db("recording a Welcome"))?;
        self.send_link_history(link, welcome_id)?;
        self.link_maybe_finished(link)
    }

    /// Existing device: right after a conversation's Welcome, its messages of the link's last
    /// `history_days` days go to the new device (after the Welcome, in the same mailbox, so
    /// they arrive once it is in).
    fn send_link_history(&self, link: i64, welcome_id: &[u8]) -> Result<(), ProfileError> {
        let (days, relay, mailbox, cap, secret): (i64, String, Vec<u8>, Vec<u8>, Vec<u8>) = self
            .conn
            .query_row(
                "SELECT history_days, reply_relay, reply_mailbox, reply_cap, secret FROM device_links
                 WHERE id = ?1 AND reply_mailbox IS NOT NULL",
                [link],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .map_err(db("reading a device link"))?;
        if days <= 0 {
            return Ok(());
        }
        let (index, group): (u32, GroupId) = self
            .conn
            .query_row(
                "SELECT idx, group_row FROM device_link_items WHERE welcome_id = ?1",
                [welcome_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("reading a device link"))?;
        let (mailbox, cap, secret) = (
            key32(&mailbox, "device link")?,
            key32(&cap, "device link")?,
            key32(&secret, "device link")?,
        );
        let since = now_ms() - days * 86_400_000;
        let lines: Vec<HistoryLine> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT coalesce(seq, 0), sender, outgoing, body, sent_at, uid FROM group_messages
                     WHERE group_row = ?1 AND notice = 0 AND sent_at >= ?2
                     ORDER BY coalesce(seq, 9223372036854775807), id LIMIT ?3",
                )
                .map_err(db("reading history"))?;
            let rows = stmt
                .query_map(params![group, since, MAX_HISTORY_LINES], |r| {
                    Ok(HistoryLine {
                        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        sender: r.get(1)?,
                        outgoing: r.get(2)?,
                        text: r.get(3)?,
                        sent_at_ms: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                        uid: r.get(5)?,
                    })
                })
                .map_err(db("reading history"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading history"))?
        };
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for line in lines {
            bytes += line.encoded_len();
            chunk.push(line);
            if bytes >= HISTORY_CHUNK_BYTES {
                self.queue_link_message(
                    &relay,
                    &mailbox,
                    &cap,
                    &secret,
                    link_message::Kind::History(History {
                        index,
                        lines: std::mem::take(&mut chunk),
                        last: false,
                    }),
                )?;
                bytes = 0;
            }
        }
        // The last chunk goes even when empty: the new device waits for it.
        self.queue_link_message(
            &relay,
            &mailbox,
            &cap,
            &secret,
            link_message::Kind::History(History {
                index,
                lines: chunk,
                last: true,
            }),
        )
    }

    /// New device: (a chunk of) a conversation's history from the other device, kept as read.
    fn link_history(&self, join: &JoinRow, history: History) -> Result<Handled, ProfileError> {
        let group: Option<Option<GroupId>> = self
            .conn
            .query_row(
                "SELECT group_row FROM device_link_join_items WHERE join_id = ?1 AND idx = ?2",
                params![join.id, history.index],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading the device link"))?;
        let Some(Some(group)) = group else {
            return Err(peer(
                "history",
                "it is for a conversation this device is not in",
            ));
        };
        let have: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM group_messages WHERE group_row = ?1",
                [group],
                |r| r.get(0),
            )
            .map_err(db("reading history"))?;
        if history.last {
            self.conn
                .execute(
                    "UPDATE device_link_join_items SET history_done = 1 WHERE join_id = ?1 AND idx = ?2",
                    params![join.id, history.index],
                )
                .map_err(db("keeping history"))?;
        }
        let room = usize::try_from(MAX_HISTORY_LINES.saturating_sub(have)).unwrap_or(0);
        for line in history.lines.into_iter().take(room) {
            if line.uid.len() != 16
                || line.text.len() > MAX_HISTORY_TEXT
                || line.sender.chars().count() > 64
            {
                return Err(peer("history", "a line is malformed or too long"));
            }
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO group_messages (group_row, seq, sender, outgoing, uid, body,
                       sent_at, stored_at, read) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1)",
                    params![
                        group,
                        (line.seq > 0).then(|| to_i64(line.seq)),
                        line.sender,
                        line.outgoing,
                        line.uid,
                        line.text,
                        to_i64(line.sent_at_ms),
                        now_ms()
                    ],
                )
                .map_err(db("keeping history"))?;
        }
        self.join_maybe_done(join.id)?;
        Ok(Handled::Duplicate)
    }

    /// New device: the link is done once every conversation is joined and, when history
    /// comes, every conversation's history is in (the reply mailbox is deleted then).
    fn join_maybe_done(&self, join: i64) -> Result<(), ProfileError> {
        let open: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM device_link_join_items i JOIN device_link_joins j ON j.id = i.join_id
                 WHERE i.join_id = ?1 AND (i.group_row IS NULL OR (j.history = 1 AND i.history_done = 0))",
                [join],
                |r| r.get(0),
            )
            .map_err(db("reading the device link"))?;
        if open == 0 {
            self.conn
                .execute(
                    "UPDATE device_link_joins SET state = ?1 WHERE id = ?2 AND state = ?3",
                    params![JOIN_DONE, join, JOIN_ASKED],
                )
                .map_err(db("finishing the device link"))?;
        }
        Ok(())
    }

    fn link_maybe_finished(&self, link: i64) -> Result<(), ProfileError> {
        let (state, open): (i64, i64) = self
            .conn
            .query_row(
                "SELECT state, (SELECT count(*) FROM device_link_items i JOIN groups g ON g.id = i.group_row
                   WHERE i.link = ?1 AND i.state < 2 AND g.state < ?2) FROM device_links WHERE id = ?1",
                params![link, STATE_GONE],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("reading a device link"))?;
        if state == LINK_ADDING && open == 0 {
            self.link_finished(link)?;
        }
        Ok(())
    }

    fn link_finished(&self, link: i64) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE device_links SET state = ?1, done_at = ?2 WHERE id = ?3",
                params![LINK_DONE, now_ms(), link],
            )
            .map_err(db("finishing a device link"))?;
        Ok(())
    }

    /// New device: (a chunk of) the other device's offer.
    fn link_offer(&self, join: &JoinRow, offer: Offer) -> Result<Handled, ProfileError> {
        if join.state != JOIN_HELLO_SENT {
            return Ok(Handled::Duplicate);
        }
        check_name(&offer.name).map_err(|r| peer("device link", &r))?;
        check_device_name(&offer.device).map_err(|r| peer("device link", &r))?;
        let total = usize::try_from(offer.total).unwrap_or(usize::MAX);
        if total > MAX_LINKED_CONVERSATIONS || offer.conversations.len() > OFFER_CHUNK {
            return Err(peer("device link", "it offers too many conversations"));
        }
        for c in &offer.conversations {
            if usize::try_from(c.index).unwrap_or(usize::MAX) >= total {
                return Err(peer(
                    "device link",
                    "a conversation's number is out of range",
                ));
            }
            if c.devices != c.name.is_empty() {
                return Err(peer("device link", "a conversation has no name"));
            }
            if !c.devices {
                check_name(&c.name)
                    .or_else(|_| pigeon_e2ee::roster::check_group_name(&c.name))
                    .map_err(|r| peer("device link", &r))?;
            }
            if u16::try_from(c.suite)
                .ok()
                .and_then(Suite::from_code)
                .is_none()
            {
                return Err(peer("device link", "a conversation's suite is unknown"));
            }
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO device_link_join_items (join_id, idx, direct, name, suite, welcome_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        join.id,
                        c.index,
                        c.direct,
                        c.name,
                        c.suite,
                        link_welcome_id(&join.secret, c.index).as_slice()
                    ],
                )
                .map_err(db("keeping an offered conversation"))?;
        }
        // The person's name, device name, relays and proxies come with every chunk.
        self.conn
            .execute(
                "UPDATE profile SET name = ?1, device = ?2 WHERE id = 1",
                params![offer.name, offer.device],
            )
            .map_err(db("taking the profile"))?;
        let have: Vec<[u8; 32]> = self.relays()?.iter().map(|r| *r.relay_key()).collect();
        for text in offer.relays.iter().take(16) {
            if let Ok(relay) = RelayLink::parse(text)
                && !have.contains(relay.relay_key())
            {
                self.add_relay(&relay)?;
            }
        }
        for text in offer.proxies.iter().take(16) {
            if let Ok(proxy) = pigeon_transport::ProxyLink::parse(text) {
                self.add_proxy_if_new(&proxy)?;
            }
        }
        self.conn
            .execute(
                "UPDATE device_link_joins SET total = ?1, history = ?2 WHERE id = ?3",
                params![to_i64(u64::from(offer.total)), offer.history, join.id],
            )
            .map_err(db("keeping the offer"))?;
        let have: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM device_link_join_items WHERE join_id = ?1",
                [join.id],
                |r| r.get(0),
            )
            .map_err(db("keeping the offer"))?;
        if usize::try_from(have).unwrap_or(0) < total {
            return Ok(Handled::Duplicate);
        }
        // The whole offer is here: one fresh signature key and key package per conversation.
        let items: Vec<(u32, u16)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT idx, suite FROM device_link_join_items WHERE join_id = ?1 ORDER BY idx",
                )
                .map_err(db("reading the offer"))?;
            let rows = stmt
                .query_map([join.id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("reading the offer"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading the offer"))?
        };
        let mls = self.mls();
        let mut packages = Vec::new();
        for (index, suite) in items {
            let suite = Suite::from_code(suite).unwrap_or(Suite::XWing);
            let identity = Identity::generate(&mls)?;
            let (key_package, ticket) = identity.key_package_with_ticket(
                &mls,
                suite,
                &pigeon_e2ee::LeafExtras::default(),
            )?;
            self.keep_ticket(&ticket)?;
            self.conn
                .execute(
                    "UPDATE device_link_join_items SET signature_key = ?1 WHERE join_id = ?2 AND idx = ?3",
                    params![identity.public_key(), join.id, index],
                )
                .map_err(db("keeping a key"))?;
            packages.push(IndexedKeyPackage { index, key_package });
        }
        for chunk in packages.chunks(KEY_PACKAGE_CHUNK) {
            self.queue_link_message(
                &join.link_relay,
                &join.link_mailbox,
                &join.link_cap,
                &join.secret,
                link_message::Kind::KeyPackages(KeyPackages {
                    items: chunk.to_vec(),
                }),
            )?;
        }
        let state = if total == 0 { JOIN_DONE } else { JOIN_ASKED };
        self.conn
            .execute(
                "UPDATE device_link_joins SET state = ?1 WHERE id = ?2",
                params![state, join.id],
            )
            .map_err(db("keeping the offer"))?;
        Ok(Handled::Notice(format!(
            "your other device offered {total} conversations; asked to be added to each"
        )))
    }

    /// New device: a part of one conversation's Welcome.
    fn linked_welcome_part(
        &self,
        join: &JoinRow,
        part: &WelcomePart,
    ) -> Result<Handled, ProfileError> {
        let item = self
            .conn
            .query_row(
                "SELECT idx, direct, name, signature_key FROM device_link_join_items
                 WHERE join_id = ?1 AND welcome_id = ?2 AND group_row IS NULL",
                params![join.id, part.id],
                |r| {
                    Ok(OfferedItem {
                        index: r.get(0)?,
                        direct: r.get(1)?,
                        name: r.get(2)?,
                        signature_key: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(db("finding a Welcome"))?;
        let Some(OfferedItem {
            index,
            direct,
            name,
            signature_key: Some(signature_key),
        }) = item
        else {
            return Ok(Handled::Duplicate);
        };
        let Some(sealed) = self.collect_welcome_part(&part.id, part)? else {
            return Ok(Handled::Duplicate);
        };
        let (id, roster) = self.join_from_welcome(
            &join.secret,
            b"welcome",
            &sealed,
            &signature_key,
            |roster| {
                if roster.direct == direct {
                    Ok(())
                } else {
                    Err("it is not the kind of conversation offered")
                }
            },
        )?;
        self.conn
            .execute(
                "UPDATE device_link_join_items SET group_row = ?1 WHERE join_id = ?2 AND idx = ?3",
                params![id, join.id, index],
            )
            .map_err(db("recording a joined conversation"))?;
        if direct {
            let local = self.unique_name(&name)?;
            self.conn
                .execute(
                    "INSERT INTO contacts (name, named_by_user, suite, conversation, created_at)
                     SELECT ?1, 0, suite, id, ?2 FROM groups WHERE id = ?3",
                    params![local, now_ms(), id],
                )
                .map_err(db("saving the contact"))?;
        }
        self.join_maybe_done(join.id)?;
        let what = if direct {
            format!("the conversation with {name}")
        } else if roster.devices {
            "the group of your devices".to_owned()
        } else {
            roster.name.clone()
        };
        Ok(Handled::Linked(format!("this device is now in {what}")))
    }

    /// Link and reply mailboxes that served their purpose (or expired), for deletion.
    pub(in crate::profile) fn spent_link_mailboxes(
        &self,
    ) -> Result<Vec<crate::profile::Inbox>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT relay, mailbox_id, mailbox_key FROM device_links
                   WHERE state = ?1 OR (state = ?2 AND created_at < ?3)
                 UNION ALL SELECT relay, mailbox_id, mailbox_key FROM device_link_joins WHERE state = ?4",
            )
            .map_err(db("listing spent mailboxes"))?;
        let rows = stmt
            .query_map(
                params![
                    LINK_DONE,
                    LINK_WAITING,
                    now_ms() - DEVICE_LINK_TTL_MS,
                    JOIN_DONE
                ],
                |r| {
                    Ok(crate::profile::Inbox {
                        relay: r.get(0)?,
                        mailbox: blob32(r.get(1)?)?,
                        key: SigningKey::from_bytes(&blob32(r.get(2)?)?),
                    })
                },
            )
            .map_err(db("listing spent mailboxes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("listing spent mailboxes"))
    }

    /// A spent link or reply mailbox was deleted on its relay.
    pub(in crate::profile) fn forget_spent_link(
        &self,
        mailbox: &[u8; 32],
    ) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE device_links SET state = ?1 WHERE mailbox_id = ?2 AND state IN (?3, ?4)",
                params![LINK_OVER, mailbox.as_slice(), LINK_DONE, LINK_WAITING],
            )
            .map_err(db("forgetting a spent mailbox"))?;
        self.conn
            .execute(
                "UPDATE device_link_joins SET state = ?1 WHERE mailbox_id = ?2 AND state = ?3",
                params![JOIN_OVER, mailbox.as_slice(), JOIN_DONE],
            )
            .map_err(db("forgetting a spent mailbox"))?;
        Ok(())
    }
}

impl Profile {
    /// The group of this person's devices, if this device is in one.
    fn devices_group(&self) -> Result<Option<GroupRow>, ProfileError> {
        let id: Option<GroupId> = self
            .conn
            .query_row(
                "SELECT id FROM groups WHERE devices = 1 AND state = ?1 ORDER BY id LIMIT 1",
                [STATE_ACTIVE],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("finding the group of devices"))?;
        id.map(|id| self.group_row(id)).transpose()
    }

    /// This device is in a group of the person's devices.
    ///
    /// # Errors
    /// On database failure.
    pub fn has_devices_group(&self) -> Result<bool, ProfileError> {
        Ok(self.devices_group()?.is_some())
    }

    /// Starts the group of this person's devices, with this device alone in it, on `log` (a
    /// log the caller created on `relay`). A device link hands it to the new device like any
    /// conversation.
    ///
    /// # Errors
    /// On database or MLS failure.
    pub fn create_devices_group(
        &self,
        relay: &RelayLink,
        log: &OwnedMailbox,
    ) -> Result<(), ProfileError> {
        let person: [u8; 16] = random()?;
        self.tx(|| {
            let mls = self.mls();
            let identity = Identity::generate(&mls)?;
            let roster = Roster {
                name: String::new(),
                direct: false,
                devices: true,
                members: vec![RosterEntry {
                    key: identity.public_key().to_vec(),
                    person: person.to_vec(),
                    name: self.name()?,
                    device: self.device_name()?,
                    admin: true,
                }],
            };
            let group = Group::create(&mls, &identity, Suite::XWing, &roster)?;
            let id = self.insert_group(&NewGroup {
                name: "",
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
            self.conn
                .execute("UPDATE groups SET devices = 1 WHERE id = ?1", [id])
                .map_err(db("recording the group of devices"))?;
            Ok(())
        })
    }

    /// Keeps [`DEVICE_STOCK`] key packages of this device's waiting in the group of devices
    /// for each other device there (and forgets those made for devices that left).
    pub(super) fn stock_device_packages(&self) -> Result<(), ProfileError> {
        let Some(row) = self.devices_group()? else {
            return Ok(());
        };
        let roster = self.roster_of(&row)?;
        let others: Vec<Vec<u8>> = roster
            .members
            .iter()
            .filter(|m| m.key != row.signature_key)
            .map(|m| m.key.clone())
            .collect();
        let made: Vec<(Vec<u8>, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT secret, for_key FROM own_packages")
                .map_err(db("reading key packages"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("reading key packages"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading key packages"))?
        };
        for (secret, for_key) in &made {
            if !others.contains(for_key) {
                self.conn
                    .execute("DELETE FROM own_packages WHERE secret = ?1", [secret])
                    .map_err(db("forgetting a key package"))?;
            }
        }
        let owners: Vec<Vec<u8>> = {
            let mut stmt = self
                .conn
                .prepare("SELECT DISTINCT owner_key FROM sibling_packages WHERE used = 0")
                .map_err(db("reading key packages"))?;
            let rows = stmt
                .query_map([], |r| r.get(0))
                .map_err(db("reading key packages"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading key packages"))?
        };
        for owner in owners.iter().filter(|o| !others.contains(o)) {
            self.conn
                .execute(
                    "DELETE FROM sibling_packages WHERE used = 0 AND owner_key = ?1",
                    [owner],
                )
                .map_err(db("forgetting key packages"))?;
        }
        let mls = self.mls();
        for key in others {
            let have = made.iter().filter(|(_, k)| *k == key).count();
            if have >= DEVICE_STOCK {
                continue;
            }
            let mut packages = Vec::new();
            for _ in have..DEVICE_STOCK {
                let identity = Identity::generate(&mls)?;
                let (key_package, ticket) = identity.key_package_with_ticket(
                    &mls,
                    Suite::XWing,
                    &pigeon_e2ee::LeafExtras::default(),
                )?;
                self.keep_ticket(&ticket)?;
                let secret: [u8; 32] = random()?;
                self.conn
                    .execute(
                        "INSERT INTO own_packages (secret, welcome_id, for_key, signature_key, made_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            secret.as_slice(),
                            sibling_welcome_id(&secret).as_slice(),
                            key,
                            identity.public_key(),
                            now_ms()
                        ],
                    )
                    .map_err(db("keeping a key package"))?;
                packages.push(DevicePackage {
                    key_package,
                    secret: secret.to_vec(),
                });
            }
            self.queue_to_conversation(
                row.id,
                Body::DeviceKeys(DeviceKeys {
                    for_key: key,
                    packages,
                }),
            )?;
        }
        Ok(())
    }

    /// Key packages from another device of this person, in the group of devices.
    pub(super) fn device_keys(
        &self,
        row: &GroupRow,
        sender: &[u8],
        keys: DeviceKeys,
    ) -> Result<Vec<Handled>, ProfileError> {
        if !row.devices {
            return Err(peer(
                "key packages",
                "key packages for a device came outside the group of devices",
            ));
        }
        if keys.for_key != row.signature_key {
            // For another device of the person.
            return Ok(vec![Handled::Duplicate]);
        }
        for p in keys.packages {
            let unused: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM sibling_packages WHERE owner_key = ?1 AND used = 0",
                    [sender],
                    |r| r.get(0),
                )
                .map_err(db("keeping key packages"))?;
            if unused >= MAX_DEVICE_PACKAGES {
                break;
            }
            key32(&p.secret, "key packages")?;
            self.conn
                .execute(
                    "INSERT INTO sibling_packages (owner_key, key_package, secret, received_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![sender, p.key_package, p.secret, now_ms()],
                )
                .map_err(db("keeping key packages"))?;
        }
        self.conn
            .execute("UPDATE profile SET bring_devices = 1 WHERE id = 1", [])
            .map_err(db("keeping key packages"))?;
        Ok(vec![Handled::Duplicate])
    }

    /// Adds the person's other devices to each conversation they are not in yet (after this
    /// device started or joined one, or got key packages). In each conversation one device
    /// of the person does it: the one with the lowest key there.
    pub(super) fn bring_devices(&self) -> Result<(), ProfileError> {
        let wanted: bool = self
            .conn
            .query_row("SELECT bring_devices FROM profile WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(db("reading the profile"))?;
        if !wanted {
            return Ok(());
        }
        self.conn
            .execute("UPDATE profile SET bring_devices = 0 WHERE id = 1", [])
            .map_err(db("reading the profile"))?;
        let Some(devices) = self.devices_group()? else {
            return Ok(());
        };
        let droster = self.roster_of(&devices)?;
        let others: Vec<RosterEntry> = droster
            .members
            .into_iter()
            .filter(|m| m.key != devices.signature_key)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut short = false;
        for (row, roster) in self.active_rosters()? {
            if row.devices || row.suite != Suite::XWing.code() {
                continue;
            }
            let Some(me) = roster.entry(&row.signature_key).cloned() else {
                continue;
            };
            let mine: Vec<&RosterEntry> = roster
                .members
                .iter()
                .filter(|m| m.person == me.person)
                .collect();
            if mine.iter().map(|m| &m.key).min() != Some(&row.signature_key) {
                continue;
            }
            for other in &others {
                if mine.iter().any(|m| m.device == other.device) {
                    continue;
                }
                let queued: bool = self
                    .conn
                    .query_row(
                        "SELECT count(*) > 0 FROM sibling_packages WHERE owner_key = ?1 AND used_for = ?2",
                        params![other.key, row.id],
                        |r| r.get(0),
                    )
                    .map_err(db("reading key packages"))?;
                if queued {
                    continue;
                }
                let package: Option<(i64, Vec<u8>, Vec<u8>)> = self
                    .conn
                    .query_row(
                        "SELECT id, key_package, secret FROM sibling_packages
                         WHERE owner_key = ?1 AND used = 0 ORDER BY id LIMIT 1",
                        [&other.key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(db("reading key packages"))?;
                let Some((package_id, key_package, secret)) = package else {
                    short = true;
                    continue;
                };
                self.conn
                    .execute(
                        "UPDATE sibling_packages SET used = 1, used_for = ?1 WHERE id = ?2",
                        params![row.id, package_id],
                    )
                    .map_err(db("using a key package"))?;
                let secret = key32(&secret, "key packages")?;
                let Ok(key) =
                    pigeon_e2ee::key_package_signature_key(&self.mls(), &key_package, Suite::XWing)
                else {
                    continue;
                };
                self.add_intent(
                    row.id,
                    &Intent {
                        kind: ADD,
                        key_package,
                        entry: Some(RosterEntry {
                            key,
                            person: me.person.clone(),
                            name: me.name.clone(),
                            device: other.device.clone(),
                            admin: me.admin,
                        }),
                        welcome_secret: secret.to_vec(),
                        welcome_id: sibling_welcome_id(&secret).to_vec(),
                        welcome_devices: true,
                        ..Intent::default()
                    },
                )?;
                self.drive_in_tx(row.id)?;
            }
        }
        if short {
            // Tried again when the missing key packages come.
            self.conn
                .execute("UPDATE profile SET bring_devices = 1 WHERE id = 1", [])
                .map_err(db("reading the profile"))?;
        }
        Ok(())
    }

    /// Tells the person's other devices how far this one has read (`marks`: conversation and
    /// the log position read up to), through the group of devices.
    pub(in crate::profile) fn share_read_marks(
        &self,
        marks: &BTreeMap<GroupId, i64>,
    ) -> Result<(), ProfileError> {
        if marks.is_empty() {
            return Ok(());
        }
        let Some(devices) = self.devices_group()? else {
            return Ok(());
        };
        if self.roster_of(&devices)?.members.len() < 2 {
            return Ok(());
        }
        let mut out = Vec::new();
        for (group, seq) in marks {
            let group_id: Vec<u8> = self
                .conn
                .query_row("SELECT group_id FROM groups WHERE id = ?1", [group], |r| {
                    r.get(0)
                })
                .map_err(db("reading a group"))?;
            out.push(ReadMark {
                group_id,
                seq: u64::try_from(*seq).unwrap_or(0),
            });
        }
        for chunk in out.chunks(MAX_READ_MARKS) {
            self.queue_to_conversation(
                devices.id,
                Body::ReadMarks(ReadMarks {
                    marks: chunk.to_vec(),
                }),
            )?;
        }
        Ok(())
    }

    /// Another device of this person read up to these positions: the same is read here.
    pub(super) fn read_marks(
        &self,
        row: &GroupRow,
        marks: ReadMarks,
    ) -> Result<Vec<Handled>, ProfileError> {
        if !row.devices {
            return Err(peer("read marks", "they came outside the group of devices"));
        }
        for m in marks.marks.iter().take(MAX_READ_MARKS) {
            self.conn
                .execute(
                    "UPDATE group_messages SET read = 1 WHERE read = 0 AND seq <= ?1
                       AND group_row = (SELECT id FROM groups WHERE group_id = ?2)",
                    params![to_i64(m.seq), m.group_id],
                )
                .map_err(db("marking messages read"))?;
        }
        Ok(vec![Handled::Duplicate])
    }

    /// The add of another device of this person won at `seq`: its Welcome goes through the
    /// group of devices, sealed under the secret that came with its key package.
    pub(super) fn send_sibling_welcome(
        &self,
        row: &GroupRow,
        intent: &Intent,
        welcome: Vec<u8>,
        seq: u64,
    ) -> Result<(), ProfileError> {
        let Some(devices) = self.devices_group()? else {
            return Ok(());
        };
        let secret = key32(&intent.welcome_secret, "key packages")?;
        let (body, _) = self.group_welcome(row.id, welcome, seq)?;
        let sealed = seal(&secret, b"sibling welcome", &body.encode_to_vec())?;
        let parts = u32::try_from(sealed.chunks(super::WELCOME_PART).count()).unwrap_or(u32::MAX);
        for (i, chunk) in sealed.chunks(super::WELCOME_PART).enumerate() {
            self.queue_log(
                &devices,
                Kind::WelcomePart(WelcomePart {
                    part: u32::try_from(i).unwrap_or(u32::MAX),
                    parts,
                    bytes: chunk.to_vec(),
                    id: intent.welcome_id.clone(),
                }),
            )?;
        }
        Ok(())
    }

    /// In the group of devices: a part of a Welcome, for this device if it made the key
    /// package behind it.
    pub(super) fn sibling_welcome_part(
        &self,
        part: &WelcomePart,
    ) -> Result<Vec<Handled>, ProfileError> {
        let own: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT secret, signature_key FROM own_packages WHERE welcome_id = ?1",
                [&part.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("finding a Welcome"))?;
        let Some((secret, signature_key)) = own else {
            return Ok(vec![Handled::Duplicate]);
        };
        let Some(sealed) = self.collect_welcome_part(&part.id, part)? else {
            return Ok(vec![Handled::Duplicate]);
        };
        self.conn
            .execute("DELETE FROM own_packages WHERE secret = ?1", [&secret])
            .map_err(db("using a key package"))?;
        let secret = key32(&secret, "welcome")?;
        let (id, roster) = self.join_from_welcome(
            &secret,
            b"sibling welcome",
            &sealed,
            &signature_key,
            |roster| {
                if roster.devices {
                    Err("it is for a second group of devices")
                } else {
                    Ok(())
                }
            },
        )?;
        let what = if roster.direct {
            match self.conversation_joined(id, &roster, &signature_key)? {
                Handled::NewContact(c) => format!("the conversation with {}", c.name),
                _ => "a conversation".to_owned(),
            }
        } else {
            roster.name.clone()
        };
        Ok(vec![Handled::Linked(format!(
            "your other device brought this device into {what}"
        ))])
    }
}

fn open_link_message(secret: &[u8; 32], sealed: &[u8]) -> Result<link_message::Kind, ProfileError> {
    let plain = open_sealed(secret, b"device link", sealed)?;
    LinkMessage::decode(plain.as_slice())
        .map_err(|e| peer("device link", &format!("it does not decode: {e}")))?
        .kind
        .ok_or_else(|| peer("device link", "it is empty"))
}
