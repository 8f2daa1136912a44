//! The receive path: relay deliveries, each batch one transaction, each delivery a savepoint.

use super::{Handled, Profile, ProfileError, blob32, db, new_content, now_ms, to_i64};
use crate::ids::ContactId;
use crate::invite::{ReplyToPayload, check_name};
use pigeon_e2ee::content::{Intro, Join, body::Body, envelope::Kind};
use pigeon_e2ee::{E2eeError, Envelope, Group, Identity, Opened};
use pigeon_transport::RelayLink;
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
        let invite = self
            .conn
            .query_row(
                "SELECT id, signature_key, secret FROM invites WHERE mailbox_id = ?1",
                [mailbox.as_slice()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        blob32(r.get(2)?)?,
                    ))
                },
            )
            .optional()
            .map_err(db("finding the mailbox"))?;
        if let Some((invite_id, signature_key, secret)) = invite {
            let Some(Kind::Join(join)) = envelope.kind else {
                return Err(refuse(
                    "an invitation's mailbox received something other than a join",
                ));
            };
            return self.join(mailbox, invite_id, &signature_key, &secret, &join);
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

    fn join(
        &self,
        mailbox: &[u8; 32],
        invite_id: i64,
        signature_key: &[u8],
        secret: &[u8; 32],
        join: &Join,
    ) -> Result<Handled, ProfileError> {
        let refuse = |reason: String| {
            ProfileError::E2ee(E2eeError::BadInput {
                what: "join",
                reason,
            })
        };
        let mls = self.mls();
        let mut group = Group::join(&mls, &join.welcome)?;
        let suite = group
            .suite()
            .ok_or_else(|| refuse("unknown suite".to_owned()))?;
        let Opened::Content { content, epoch, .. } = group.open(&mls, &join.first)? else {
            return Err(refuse(
                "the first message is not an introduction".to_owned(),
            ));
        };
        let Some(Body::Intro(intro)) = content.body else {
            return Err(refuse(
                "the first message is not an introduction".to_owned(),
            ));
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            intro.invite_secret.as_slice(),
            secret.as_slice(),
        )) {
            return Err(refuse(
                "the sender does not hold the invitation (its secret does not match)".to_owned(),
            ));
        }
        check_name(&intro.name).map_err(refuse)?;
        let reply = ReplyToPayload::decode(intro.reply_to.as_slice())
            .map_err(|e| refuse(format!("the reply address does not decode: {e}")))?;
        let peer_relay = RelayLink::from_payload_bytes(&reply.relay)
            .map_err(|e| refuse(format!("the reply relay is invalid: {e}")))?;
        let peer_mailbox: [u8; 32] = reply
            .mailbox_id
            .as_slice()
            .try_into()
            .map_err(|_| refuse("the reply mailbox is not 32 bytes".to_owned()))?;
        let peer_cap: [u8; 32] = reply
            .sender_cap
            .as_slice()
            .try_into()
            .map_err(|_| refuse("the reply capability is not 32 bytes".to_owned()))?;
        let (inbox_key, inbox_relay): (Vec<u8>, String) = self
            .conn
            .query_row(
                "SELECT mailbox_key, relay FROM invites WHERE id = ?1",
                [invite_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("reading the invitation"))?;
        let name = self.unique_name(&intro.name)?;
        self.conn
            .execute(
                "INSERT INTO contacts (name, named_by_user, group_id, signature_key, suite, committer,
                   inbox_id, inbox_key, inbox_relay, peer_relay, peer_mailbox, peer_cap, peer_epoch, created_at)
                 VALUES (?1, 0, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    name,
                    group.id(),
                    signature_key,
                    suite.code(),
                    mailbox.as_slice(),
                    inbox_key,
                    inbox_relay,
                    peer_relay.to_string(),
                    peer_mailbox.as_slice(),
                    peer_cap.as_slice(),
                    to_i64(epoch),
                    now_ms()
                ],
            )
            .map_err(db("saving the contact"))?;
        let contact_id = ContactId(self.conn.last_insert_rowid());
        self.conn
            .execute("DELETE FROM invites WHERE id = ?1", [invite_id])
            .map_err(db("closing the invitation"))?;
        // Introduce ourselves back (this also tells the peer we are in the group).
        let identity = Identity::load(&mls, signature_key)?;
        let intro = new_content(Body::Intro(Intro {
            name: self.name()?,
            invite_secret: Vec::new(),
            reply_to: Vec::new(),
        }))?;
        let ct = group.seal(&mls, &identity, &intro)?;
        self.queue(
            &peer_relay.to_string(),
            &peer_mailbox,
            &peer_cap,
            &Envelope {
                kind: Some(Kind::Mls(ct)),
            },
        )?;
        Ok(Handled::NewContact(self.contact(contact_id)?))
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
            Some(Body::LogKeys(_)) => Ok(Handled::Dropped(
                "group log keys arrived in a 1:1 conversation".to_owned(),
            )),
            None => Ok(Handled::Dropped("empty content".to_owned())),
        }
    }
}
