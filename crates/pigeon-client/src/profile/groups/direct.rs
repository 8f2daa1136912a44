//! Conversations between two people: a contact is a group of two on a log, like any group
//! (issue #14). The person who accepts an invitation starts it — a group with a roster marked
//! `direct` (no name, never a third person), the inviter added as its second member and
//! admin — and sends the Welcome, sealed under the invitation's secret, to the invitation's
//! mailbox. Both sides then read and post through the log, either may commit (a key refresh,
//! later a device of their own), and the invitation's mailbox is deleted on the relay once
//! the Welcome is in: the link opens nothing any more.
//!
//! Contacts made before schema 4 keep their conversation of the first design (two one-way
//! mailboxes) until they are gone; everything here branches on which kind a contact has.

use super::*;
use crate::profile::{Contact, Message};
use pigeon_e2ee::content::{GroupInvite, Receipt};

/// A conversation's group and the contact it belongs to.
pub(in crate::profile) struct Direct {
    pub(in crate::profile) group: GroupId,
    pub(in crate::profile) contact: ContactId,
    pub(in crate::profile) name: String,
}

impl Profile {
    /// Accepts an invitation by starting the conversation: a group of two on `log` (a log the
    /// caller already created on this profile's relay), with the inviter added from its key
    /// package, and the Welcome queued to the invitation's mailbox. `local_name` names the
    /// contact here instead of the name the invitation carries.
    ///
    /// # Errors
    /// [`ProfileError::E2ee`] when the key package is not the inviter's or is unusable;
    /// [`ProfileError::Invalid`] for a bad local name.
    pub fn start_conversation(
        &self,
        invite: &Invite,
        suite: Suite,
        key_package: &[u8],
        log: &OwnedMailbox,
        log_relay: &RelayLink,
        local_name: Option<&str>,
    ) -> Result<Contact, ProfileError> {
        if let Some(n) = local_name {
            check_name(n).map_err(ProfileError::Invalid)?;
        }
        let relay = log_relay.clone();
        let my_name = self.name()?;
        let (me, them): ([u8; 16], [u8; 16]) = (random()?, random()?);
        self.tx(|| {
            let mls = self.mls();
            let key = pigeon_e2ee::key_package_signature_key(&mls, key_package, suite)?;
            if key != invite.signature_key {
                return Err(peer(
                    "key package",
                    "it is not the inviter's (its signature key is not the one in the link)",
                ));
            }
            let identity = Identity::generate(&mls)?;
            let roster = Roster {
                name: String::new(),
                direct: true,
                devices: false,
                members: vec![RosterEntry {
                    key: identity.public_key().to_vec(),
                    person: me.to_vec(),
                    name: my_name.clone(),
                    device: self.device_name()?,
                    admin: true,
                }],
            };
            let mut group = Group::create(&mls, &identity, suite, &roster)?;
            let committed = group.commit(
                &mls,
                &identity,
                Change::Add {
                    key_package: key_package.to_vec(),
                    entry: RosterEntry {
                        key,
                        person: them.to_vec(),
                        name: invite.name.clone(),
                        device: invite.device.clone(),
                        admin: true,
                    },
                },
            )?;
            // Nobody else is in the group yet: the add needs no place in the log.
            group.merge_pending(&mls)?;
            let welcome = committed.welcome.ok_or_else(|| ProfileError::Db {
                doing: "starting a conversation",
                reason: "adding the inviter made no Welcome".to_owned(),
            })?;
            let group_row = self.insert_group(&NewGroup {
                name: "",
                group_id: group.id(),
                signature_key: identity.public_key(),
                suite,
                person: &me,
                log_relay: relay.to_string(),
                log_id: &log.id.0,
                log_cap: &log.sender_cap,
                log_owner: &log.key.to_bytes(),
                cursor: 0,
                direct: true,
                mirror_relay: None,
            })?;
            let name = self.unique_name(local_name.unwrap_or(&invite.name))?;
            self.conn
                .execute(
                    "INSERT INTO contacts (name, named_by_user, suite, conversation, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        name,
                        local_name.is_some(),
                        suite.code(),
                        group_row,
                        now_ms()
                    ],
                )
                .map_err(db("saving the contact"))?;
            let contact = ContactId(self.conn.last_insert_rowid());
            let to_inviter = Intent {
                welcome_relay: invite.relay.to_string(),
                welcome_mailbox: invite.mailbox_id.to_vec(),
                welcome_cap: invite.sender_cap.to_vec(),
                welcome_secret: invite.secret.to_vec(),
                ..Intent::default()
            };
            let row = self.group_row(group_row)?;
            self.send_welcome(&row, &to_inviter, welcome, 0)?;
            self.contact(contact)
        })
    }

    /// The Welcome of a conversation of two arrived at this profile's invitation: the contact
    /// joins the profile, pointing at the group already joined as `group`.
    pub(super) fn conversation_joined(
        &self,
        group: GroupId,
        roster: &Roster,
        own_key: &[u8],
    ) -> Result<Handled, ProfileError> {
        let Some(other) = other_person(roster, own_key) else {
            return Err(peer("welcome", "the conversation has nobody else in it"));
        };
        let name = self.unique_name(&other.name)?;
        let suite: u16 = self
            .conn
            .query_row("SELECT suite FROM groups WHERE id = ?1", [group], |r| {
                r.get(0)
            })
            .map_err(db("reading the conversation"))?;
        self.conn
            .execute(
                "INSERT INTO contacts (name, named_by_user, suite, conversation, created_at)
                 VALUES (?1, 0, ?2, ?3, ?4)",
                params![name, suite, group, now_ms()],
            )
            .map_err(db("saving the contact"))?;
        let contact = ContactId(self.conn.last_insert_rowid());
        Ok(Handled::NewContact(self.contact(contact)?))
    }

    /// The conversation of two a contact has (`None` for one of the first design).
    pub(in crate::profile) fn conversation(
        &self,
        contact: ContactId,
    ) -> Result<Option<Direct>, ProfileError> {
        let row: (Option<GroupId>, String) = self
            .conn
            .query_row(
                "SELECT conversation, name FROM contacts WHERE id = ?1",
                [contact],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading a contact"))?
            .ok_or_else(|| ProfileError::NoContact(format!("#{contact}")))?;
        Ok(row.0.map(|group| Direct {
            group,
            contact,
            name: row.1,
        }))
    }

    /// The log a group called `name`, or the conversation with the contact called `name`,
    /// lives on (a group's name first).
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] when neither exists, or the contact's conversation is of the
    /// first design (it has no log).
    pub fn conversation_or_group(&self, name: &str) -> Result<GroupId, ProfileError> {
        if let Ok(group) = self.find_group(name) {
            return Ok(group.id);
        }
        let contact = self.find_contact(name)?;
        self.conversation(contact.id)?
            .map(|d| d.group)
            .ok_or_else(|| {
                ProfileError::NotNow(format!(
                    "the conversation with {} is of the first design and has no log",
                    contact.name
                ))
            })
    }

    /// The conversation with the contact called `name`, else the group called `name` (the
    /// order `pigeon send` reads a name in).
    ///
    /// # Errors
    /// As [`Self::conversation_or_group`].
    pub fn conversation_or_group_contact_first(&self, name: &str) -> Result<GroupId, ProfileError> {
        match self.find_contact(name) {
            Ok(contact) => self
                .conversation(contact.id)?
                .map(|d| d.group)
                .ok_or_else(|| {
                    ProfileError::NotNow(format!(
                        "the conversation with {} is of the first design and carries text only",
                        contact.name
                    ))
                }),
            Err(ProfileError::NoContact(_)) => Ok(self.find_group(name)?.id),
            Err(e) => Err(e),
        }
    }

    /// What people call a conversation: the contact's name for a conversation of two, else
    /// the group's name ("" for the group of the person's own devices).
    ///
    /// # Errors
    /// On database failure, or for a group that is not there.
    pub fn conversation_label(&self, id: GroupId) -> Result<String, ProfileError> {
        match self.contact_of(id)? {
            Some(direct) => Ok(direct.name),
            None => Ok(self.group_row(id)?.name),
        }
    }

    /// The contact whose conversation is `group`.
    pub(super) fn contact_of(&self, group: GroupId) -> Result<Option<Direct>, ProfileError> {
        self.conn
            .query_row(
                "SELECT id, name FROM contacts WHERE conversation = ?1",
                [group],
                |r| {
                    Ok(Direct {
                        group,
                        contact: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db("finding a contact"))
    }

    /// A line of a conversation of two, as a contact's message.
    pub(in crate::profile) fn as_message(
        &self,
        direct: &Direct,
        line: &GroupMessage,
    ) -> Result<Message, ProfileError> {
        let (stored_at_ms, delivered): (i64, bool) = self
            .conn
            .query_row(
                "SELECT stored_at, delivered FROM group_messages WHERE id = ?1",
                [line.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("reading a message"))?;
        Ok(Message {
            id: line.id,
            contact_id: direct.contact,
            contact: direct.name.clone(),
            outgoing: line.outgoing,
            text: line.text.clone(),
            sent_at_ms: line.sent_at_ms,
            stored_at_ms,
            delivered,
            notice: line.notice,
            file: line.file.clone(),
            seen: line.seen,
        })
    }

    /// Queues content that is not a line of the transcript (a receipt, a group invitation)
    /// to a conversation's log, in the epoch current when it goes out (sent again if a
    /// commit overtakes it, like every message of this device).
    pub(in crate::profile) fn queue_to_conversation(
        &self,
        group: GroupId,
        body: Body,
    ) -> Result<(), ProfileError> {
        let content = new_content(body)?;
        let relay_msg_id: [u8; 16] = random()?;
        self.conn
            .execute(
                "INSERT INTO group_drafts (group_row, content, relay_msg_id) VALUES (?1, ?2, ?3)",
                params![group, content.encode_to_vec(), relay_msg_id.as_slice()],
            )
            .map_err(db("queueing a message"))?;
        self.drive_with(group, false)
    }

    /// Receipts for contents received in a conversation of two.
    pub(in crate::profile) fn conversation_receipts(
        &self,
        group: GroupId,
        ids: Vec<Vec<u8>>,
    ) -> Result<(), ProfileError> {
        for chunk in ids.chunks(512) {
            self.queue_to_conversation(
                group,
                Body::Receipt(Receipt {
                    ids: chunk.to_vec(),
                    read: false,
                }),
            )?;
        }
        Ok(())
    }

    /// Tells the other person of each conversation of two in `marks` (read up to a log
    /// position) which of their lines this device has now read, unless this profile sends no
    /// read receipts. Each line is told once.
    pub(in crate::profile) fn send_read_receipts(
        &self,
        marks: &std::collections::BTreeMap<GroupId, i64>,
    ) -> Result<(), ProfileError> {
        let on: bool = self
            .conn
            .query_row("SELECT read_receipts FROM profile WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(db("reading the profile"))?;
        for (group, seq) in marks {
            if self.contact_of(*group)?.is_none() {
                continue;
            }
            let ids: Vec<Vec<u8>> = {
                let mut stmt = self
                    .conn
                    .prepare(
                        "SELECT uid FROM group_messages WHERE group_row = ?1 AND outgoing = 0
                           AND notice = 0 AND read = 1 AND seen = 0 AND seq <= ?2",
                    )
                    .map_err(db("reading what was read"))?;
                let rows = stmt
                    .query_map(params![group, seq], |r| r.get(0))
                    .map_err(db("reading what was read"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(db("reading what was read"))?
            };
            self.conn
                .execute(
                    "UPDATE group_messages SET seen = 1 WHERE group_row = ?1 AND outgoing = 0
                       AND read = 1 AND seen = 0 AND seq <= ?2",
                    params![group, seq],
                )
                .map_err(db("recording read receipts"))?;
            if !on {
                continue;
            }
            for chunk in ids.chunks(512) {
                self.queue_to_conversation(
                    *group,
                    Body::Receipt(Receipt {
                        ids: chunk.to_vec(),
                        read: true,
                    }),
                )?;
            }
        }
        Ok(())
    }

    /// Whether this profile tells people what it read (read receipts; on unless turned off).
    ///
    /// # Errors
    /// On database failure.
    pub fn read_receipts(&self) -> Result<bool, ProfileError> {
        self.conn
            .query_row("SELECT read_receipts FROM profile WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(db("reading the profile"))
    }

    /// Turns read receipts on or off for this device: off, nobody learns what it read (they
    /// still learn what it received).
    ///
    /// # Errors
    /// On database failure.
    pub fn set_read_receipts(&self, on: bool) -> Result<(), ProfileError> {
        self.conn
            .execute("UPDATE profile SET read_receipts = ?1 WHERE id = 1", [on])
            .map_err(db("changing read receipts"))?;
        Ok(())
    }

    /// A group invitation link, sent inside a conversation of two.
    pub(in crate::profile) fn conversation_group_invite(
        &self,
        group: GroupId,
        link: &str,
    ) -> Result<(), ProfileError> {
        self.queue_to_conversation(
            group,
            Body::GroupInvite(GroupInvite {
                link: link.to_owned(),
            }),
        )
    }

    /// What the log's content means in a conversation of two, beyond a group's: a text is a
    /// contact's message, a receipt marks messages delivered, a group invitation is passed on.
    pub(super) fn conversation_content(
        &self,
        row: &GroupRow,
        handled: Handled,
        content_id: &[u8],
    ) -> Result<Handled, ProfileError> {
        let Some(direct) = self.contact_of(row.id)? else {
            return Ok(handled);
        };
        Ok(match handled {
            Handled::Group(line) if !line.notice => Handled::Message {
                message: self.as_message(&direct, &line)?,
                content_id: content_id.to_vec(),
            },
            other => other,
        })
    }

    /// Another member's commit moved the group to `epoch`: in a conversation of two, the
    /// other person refreshed the keys.
    pub(super) fn epoch_moved(&self, row: &GroupRow, epoch: u64) -> Result<Handled, ProfileError> {
        Ok(match self.contact_of(row.id)? {
            Some(direct) if row.direct => Handled::Rekeyed {
                contact_id: direct.contact,
                epoch,
            },
            _ => Handled::GroupEpoch {
                group_id: row.id,
                epoch,
            },
        })
    }

    /// A receipt from the other person of a conversation of two.
    pub(super) fn conversation_receipt(
        &self,
        row: &GroupRow,
        receipt: &Receipt,
    ) -> Result<Handled, ProfileError> {
        let Some(direct) = self.contact_of(row.id)? else {
            return Ok(Handled::Duplicate);
        };
        let mut delivered = 0;
        for id in &receipt.ids {
            delivered += self
                .conn
                .execute(
                    "UPDATE group_messages SET delivered = 1
                     WHERE group_row = ?1 AND uid = ?2 AND outgoing = 1 AND delivered = 0",
                    params![row.id, id],
                )
                .map_err(db("recording a receipt"))?;
            if receipt.read {
                self.conn
                    .execute(
                        "UPDATE group_messages SET seen = 1
                         WHERE group_row = ?1 AND uid = ?2 AND outgoing = 1",
                        params![row.id, id],
                    )
                    .map_err(db("recording a read receipt"))?;
            }
        }
        Ok(Handled::Receipt {
            contact_id: direct.contact,
            delivered,
        })
    }

    /// A group invitation from the other person of a conversation of two.
    pub(super) fn conversation_invite(
        &self,
        row: &GroupRow,
        invite: GroupInvite,
    ) -> Result<Handled, ProfileError> {
        Ok(match self.contact_of(row.id)? {
            Some(direct) => Handled::GroupInvite {
                contact_id: direct.contact,
                link: invite.link,
            },
            None => Handled::Dropped("a group invitation arrived in a group".to_owned()),
        })
    }

    /// The safety number with the other person of a conversation of two: this device's key
    /// and theirs (their first device's, when they have several).
    pub(in crate::profile) fn conversation_safety_number(
        &self,
        group: GroupId,
    ) -> Result<(Vec<u8>, String), ProfileError> {
        let row = self.group_row(group)?;
        let roster = self.roster_of(&row)?;
        let theirs = other_person(&roster, &row.signature_key)
            .map(|m| m.key.clone())
            .ok_or_else(|| {
                ProfileError::NotNow("the other person left this conversation".to_owned())
            })?;
        let number = pigeon_e2ee::safety_number(&row.signature_key, &theirs);
        Ok((theirs, number))
    }

    /// Refreshes this device's keys in a conversation of two (a commit through the log).
    pub(in crate::profile) fn conversation_rekey(
        &self,
        group: GroupId,
    ) -> Result<u64, ProfileError> {
        self.group_change(group, GroupChange::Update)?;
        let row = self.group_row(group)?;
        let (epoch, _) = pigeon_e2ee::stored_state(&self.mls(), &row.group_id)?;
        Ok(epoch + 1)
    }

    /// The conversation's epoch authenticator.
    pub(in crate::profile) fn conversation_authenticator(
        &self,
        group: GroupId,
    ) -> Result<(u64, Vec<u8>), ProfileError> {
        let row = self.group_row(group)?;
        let group = Group::load(&self.mls(), &row.group_id)?;
        Ok((group.epoch(), group.epoch_authenticator()))
    }
}
