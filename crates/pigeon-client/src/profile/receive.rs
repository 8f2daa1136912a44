//! The receive path: relay deliveries, each batch one transaction, each delivery a savepoint.

use super::{Handled, Profile, ProfileError, db, now_ms, to_i64};
use crate::ids::ContactId;
use crate::invite::check_name;
use pigeon_e2ee::content::{body::Body, envelope::Kind};
use pigeon_e2ee::{E2eeError, Envelope, Group, Opened};
use prost::Message as _;
use rusqlite::{OptionalExtension, params};

impl Profile {
    /// Takes one message from a relay: de-duplicates, decrypts, records, all in one
    /// transaction. Returns what it was; acknowledge it to the relay only after this returns
    /// `Ok` (a crash before the acknowledgement means a redelivery, which is recognised).
    ///
    /// Refused input (tampered, replayed, not decodable) is recorded as seen and dropped with
    /// the group state untouched.
    ///
    /// # Errors
    /// Only local failures (database, randomness); then nothing was recorded and the message
    /// must not be acknowledged.
    pub fn handle_delivery(
        &self,
        mailbox: &[u8; 32],
        message_id: &[u8],
        payload: &[u8],
    ) -> Result<Handled, ProfileError> {
        self.tx(|| self.handle_one(mailbox, message_id, payload))
    }

    /// As [`Self::handle_delivery`] for a batch from one mailbox, in one transaction (one
    /// fsync for the batch): all are recorded, or, on a local failure, none.
    ///
    /// # Errors
    /// As [`Self::handle_delivery`].
    pub fn handle_deliveries(
        &self,
        mailbox: &[u8; 32],
        deliveries: &[(&[u8], &[u8])],
    ) -> Result<Vec<Handled>, ProfileError> {
        self.tx(|| {
            deliveries
                .iter()
                .map(|(id, payload)| self.handle_one(mailbox, id, payload))
                .collect()
        })
    }

    fn handle_one(
        &self,
        mailbox: &[u8; 32],
        message_id: &[u8],
        payload: &[u8],
    ) -> Result<Handled, ProfileError> {
        let seen = self
            .conn
            .query_row(
                "SELECT 1 FROM seen WHERE mailbox_id = ?1 AND message_id = ?2",
                params![mailbox.as_slice(), message_id],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("checking for duplicates"))?;
        if seen.is_some() {
            return Ok(Handled::Duplicate);
        }
        self.conn
            .execute_batch("SAVEPOINT delivery")
            .map_err(db("starting a savepoint"))?;
        let handled = match self.route(mailbox, payload) {
            Ok(h) => {
                self.conn
                    .execute_batch("RELEASE delivery")
                    .map_err(db("releasing a savepoint"))?;
                h
            }
            Err(e) if e.kind() == pigeon_wire::ErrorKind::Peer => {
                self.conn
                    .execute_batch("ROLLBACK TO delivery; RELEASE delivery")
                    .map_err(db("rolling back"))?;
                Handled::Dropped(e.to_string())
            }
            Err(e) => return Err(e),
        };
        self.conn
            .execute(
                "INSERT INTO seen (mailbox_id, message_id, seen_at) VALUES (?1, ?2, ?3)",
                params![mailbox.as_slice(), message_id, now_ms()],
            )
            .map_err(db("recording a delivery"))?;
        Ok(handled)
    }

    fn route(&self, mailbox: &[u8; 32], payload: &[u8]) -> Result<Handled, ProfileError> {
        let refuse = |reason: &str| {
            ProfileError::E2ee(E2eeError::BadInput {
                what: "envelope",
                reason: reason.to_owned(),
            })
        };
        let envelope = Envelope::decode(payload).map_err(|e| refuse(&e.to_string()))?;
        if let Some(h) = self.device_link_delivery(mailbox, &envelope)? {
            return Ok(h);
        }
        if matches!(envelope.kind, Some(Kind::JoinRequest(_)))
            && let Some(h) = self.group_join_request(mailbox, envelope.clone())?
        {
            return Ok(h);
        }
        if matches!(envelope.kind, Some(Kind::WelcomePart(_)))
            && let Some(h) = self.group_welcome_part(mailbox, envelope.clone())?
        {
            return Ok(h);
        }
        if matches!(envelope.kind, Some(Kind::Join(_))) {
            // The first design's answer to an invitation: only a version of pigeon from before
            // conversations became groups of two sends it.
            return Err(refuse(
                "someone accepted your invitation with an older version of pigeon: ask them to \
                 update pigeon and accept a new invitation",
            ));
        }
        let contact_id = self
            .conn
            .query_row(
                "SELECT id FROM contacts WHERE inbox_id = ?1",
                [mailbox.as_slice()],
                |r| r.get::<_, ContactId>(0),
            )
            .optional()
            .map_err(db("finding the mailbox"))?;
        let Some(contact_id) = contact_id else {
            return Err(refuse("it is for a mailbox this profile no longer has"));
        };
        let Some(Kind::Mls(ct)) = envelope.kind else {
            return Err(refuse(
                "a conversation's mailbox received something other than an MLS message",
            ));
        };
        self.open_message(contact_id, &ct)
    }

    fn open_message(
        &self,
        contact_id: ContactId,
        ciphertext: &[u8],
    ) -> Result<Handled, ProfileError> {
        let row = self.contact_row(contact_id)?;
        let mls = self.mls();
        let mut group = Group::load(&mls, &row.group_id)?;
        let opened = group.open(&mls, ciphertext)?;
        let Opened::Content { content, epoch, .. } = opened else {
            let epoch = group.epoch();
            return Ok(Handled::Rekeyed { contact_id, epoch });
        };
        let epoch_i = to_i64(epoch);
        if epoch_i > row.peer_epoch && epoch == group.epoch() {
            // The peer has moved to the current epoch: nothing older can still arrive.
            group.forget_past_epochs(&mls)?;
            self.conn
                .execute(
                    "UPDATE contacts SET peer_epoch = ?1 WHERE id = ?2",
                    params![epoch_i, contact_id],
                )
                .map_err(db("recording the epoch"))?;
        }
        match content.body {
            Some(Body::Text(t)) => Ok(
                match self.insert_message(
                    &row,
                    false,
                    &content.id,
                    &t.text,
                    to_i64(content.sent_at_ms),
                )? {
                    Some(message) => Handled::Message {
                        message,
                        content_id: content.id,
                    },
                    None => Handled::Duplicate,
                },
            ),
            Some(Body::Intro(intro)) => {
                check_name(&intro.name).map_err(|reason| {
                    ProfileError::E2ee(E2eeError::BadInput {
                        what: "introduction",
                        reason,
                    })
                })?;
                let named_by_user: bool = self
                    .conn
                    .query_row(
                        "SELECT named_by_user FROM contacts WHERE id = ?1",
                        [contact_id],
                        |r| r.get(0),
                    )
                    .map_err(db("reading a contact"))?;
                if !named_by_user && intro.name != row.name {
                    let name = self.unique_name(&intro.name)?;
                    self.conn
                        .execute(
                            "UPDATE contacts SET name = ?1 WHERE id = ?2",
                            params![name, contact_id],
                        )
                        .map_err(db("renaming a contact"))?;
                }
                Ok(Handled::Intro { contact_id })
            }
            Some(Body::Receipt(r)) => {
                let mut delivered = 0;
                for id in &r.ids {
                    delivered += self
                        .conn
                        .execute(
                            "UPDATE messages SET delivered = 1
                             WHERE contact_id = ?1 AND uid = ?2 AND outgoing = 1 AND delivered = 0",
                            params![contact_id, id],
                        )
                        .map_err(db("recording a receipt"))?;
                }
                Ok(Handled::Receipt {
                    contact_id,
                    delivered,
                })
            }
            Some(Body::GroupInvite(g)) => Ok(Handled::GroupInvite {
                contact_id,
                link: g.link,
            }),
            Some(
                Body::LogKeys(_) | Body::LogMirror(_) | Body::DeviceKeys(_) | Body::ReadMarks(_),
            ) => Ok(Handled::Dropped(
                "group log keys arrived in a 1:1 conversation".to_owned(),
            )),
            Some(Body::Attachment(_)) => Ok(Handled::Dropped(
                "a file arrived in a conversation of the first design, which carries text only"
                    .to_owned(),
            )),
            None => Ok(Handled::Dropped("empty content".to_owned())),
        }
    }
}
