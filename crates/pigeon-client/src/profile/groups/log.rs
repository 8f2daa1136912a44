//! The receive side of groups: a log's entries applied in order (messages, commits — this
//! device's own and others' —, requests to leave, new log keys), requests to join that reach an
//! invitation's mailbox, Welcomes that reach a join request's mailbox, and what that leaves for
//! the network (log keys to set on the relay, spent mailboxes to delete).

use super::*;

impl Profile {
    /// Takes messages from a group's log, in log order, in one transaction.
    ///
    /// # Errors
    /// Only local failures (then nothing was recorded).
    pub fn handle_log_deliveries(
        &self,
        log_id: &[u8; 32],
        deliveries: &[(u64, &[u8], &[u8])],
    ) -> Result<Vec<Handled>, ProfileError> {
        self.tx(|| {
            let Some(id) = self.group_for_log(log_id)? else {
                return Ok(deliveries
                    .iter()
                    .map(|_| Handled::Dropped("a log this profile does not read".to_owned()))
                    .collect());
            };
            let mut out = Vec::new();
            // Whether this device keeps the log's mirror: read again only when an entry may
            // have changed it (a commit, new log keys or a new mirror).
            let mut keeps = self.keeps_mirror(id)?;
            for (i, (seq, message_id, payload)) in deliveries.iter().enumerate() {
                let new = to_i64(*seq) > self.group_row(id)?.cursor;
                let handled = self.log_entry(id, *seq, message_id, payload)?;
                if handled
                    .iter()
                    .any(|h| matches!(h, Handled::LogKeysChanged | Handled::GroupEpoch { .. }))
                {
                    keeps = self.keeps_mirror(id)?;
                }
                out.extend(handled);
                if new && keeps {
                    // After the entry: the one that announces a mirror is the first to go there.
                    self.forward(id, *seq, message_id, payload)?;
                }
                if self.group_row(id)?.cursor < to_i64(*seq) {
                    // This device was taken back and reads again from where that happened:
                    // the rest of this batch comes again, in order, after subscribing anew.
                    out.extend(deliveries[i + 1..].iter().map(|_| Handled::Duplicate));
                    break;
                }
            }
            self.drive_in_tx(id)?;
            Ok(out)
        })
    }

    fn log_entry(
        &self,
        id: GroupId,
        seq: u64,
        message_id: &[u8],
        payload: &[u8],
    ) -> Result<Vec<Handled>, ProfileError> {
        let row = self.group_row(id)?;
        let seq_i = to_i64(seq);
        if seq_i <= row.cursor || row.state == STATE_GONE {
            return Ok(vec![Handled::Duplicate]);
        }
        if row.state == STATE_LOST {
            // Nothing here can be read any more, except the Welcome that takes this device back.
            self.conn
                .execute(
                    "UPDATE groups SET cursor = ?1 WHERE id = ?2",
                    params![seq_i, id],
                )
                .map_err(db("advancing the log cursor"))?;
            return self.lost_entry(&row, payload);
        }
        let mut gap = Vec::new();
        if seq_i > row.cursor + 1 {
            // The relay no longer keeps what came between: it expired before this device read
            // it. Messages in it are lost to this device; a commit in it would leave the device
            // behind for good, which the next commit shows.
            let missed = seq_i - row.cursor - 1;
            let me = self.name()?;
            gap.push(Handled::Group(self.notice(
                id,
                &me,
                false,
                &format!(
                    "{missed} message(s) of this {} expired on the relay before this device read them",
                    if row.direct { "conversation" } else { "group" }
                ),
            )?));
        }
        self.conn
            .execute(
                "UPDATE groups SET cursor = ?1 WHERE id = ?2",
                params![seq_i, id],
            )
            .map_err(db("advancing the log cursor"))?;
        let mut rest = self.log_entry_at(&row, seq, message_id, payload)?;
        gap.append(&mut rest);
        Ok(gap)
    }

    fn log_entry_at(
        &self,
        row: &GroupRow,
        seq: u64,
        message_id: &[u8],
        payload: &[u8],
    ) -> Result<Vec<Handled>, ProfileError> {
        let (id, seq_i) = (row.id, to_i64(seq));
        if row.mirror_relay.is_none()
            && let Ok(Envelope {
                kind: Some(Kind::ForHome(h)),
            }) = Envelope::decode(payload)
            && !matches!(
                Envelope::decode(h.payload.as_slice()).map(|e| e.kind),
                Ok(Some(Kind::ForHome(_)))
            )
        {
            // Left for the home copy on what was its mirror, by a device that had not yet read
            // that the mirror became the home: it counts here, under its own id.
            return self.log_entry_at(row, seq, &h.message_id, &h.payload);
        }
        // This device's own entries: its commit, its messages, its other requests.
        if row.pending_commit.as_deref() == Some(message_id) {
            return self.own_commit_landed(row, seq);
        }
        let unconfirmed: Option<(Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT content, epoch FROM group_unconfirmed WHERE relay_msg_id = ?1 AND group_row = ?2",
                params![message_id, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("placing a sent message"))?;
        if let Some((content, epoch)) = unconfirmed {
            self.conn
                .execute(
                    "DELETE FROM group_unconfirmed WHERE relay_msg_id = ?1",
                    [message_id],
                )
                .map_err(db("placing a sent message"))?;
            // The epoch alone: from the group context, not the whole tree.
            let (current, _) = pigeon_e2ee::stored_state(&self.mls(), &row.group_id)?;
            if to_i64(current) == epoch {
                self.conn
                    .execute(
                        "UPDATE group_messages SET seq = ?1 WHERE group_row = ?2 AND relay_msg_id = ?3",
                        params![seq_i, id, message_id],
                    )
                    .map_err(db("placing a sent message"))?;
            } else {
                // It was sent in an epoch a commit ended before it reached the log, so every
                // member refused it: send it again, in the epoch current now.
                let again: [u8; 16] = random()?;
                self.conn
                    .execute(
                        "INSERT INTO group_drafts (group_row, content, relay_msg_id) VALUES (?1, ?2, ?3)",
                        params![id, content, again.as_slice()],
                    )
                    .map_err(db("sending a message again"))?;
                self.conn
                    .execute(
                        "UPDATE group_messages SET relay_msg_id = ?1 WHERE group_row = ?2 AND relay_msg_id = ?3",
                        params![again.as_slice(), id, message_id],
                    )
                    .map_err(db("sending a message again"))?;
            }
            return Ok(vec![Handled::Duplicate]);
        }
        let seen = self
            .conn
            .query_row(
                "SELECT 1 FROM seen WHERE mailbox_id = ?1 AND message_id = ?2",
                params![row.log_id.as_slice(), message_id],
                |_| Ok(()),
            )
            .optional()
            .map_err(db("checking for duplicates"))?;
        if seen.is_some() {
            return Ok(vec![Handled::Duplicate]);
        }
        match self.savepoint(|| self.open_log_entry(row, seq, payload))? {
            Ok(h) => Ok(h),
            Err(ProfileError::E2ee(E2eeError::WrongEpoch { got, current })) if got > current => {
                // A commit this device never saw moved the group on: it cannot read on.
                self.conn
                    .execute(
                        "UPDATE groups SET state = ?1, pending_commit = NULL, pending_intent = NULL
                         WHERE id = ?2",
                        params![STATE_LOST, id],
                    )
                    .map_err(db("marking a group lost"))?;
                let asked = self.ask_to_be_taken_back(row)?;
                let me = self.name()?;
                let what = if row.direct {
                    "this conversation"
                } else {
                    &row.name
                };
                let again = if row.direct {
                    "invite each other again (`pigeon invite`)"
                } else {
                    "ask an admin to remove this device (`pigeon group remove`) and invite you \
                     again"
                };
                let next = if asked {
                    format!(
                        "It asked to be taken back: the others' devices do so when they next \
                         read, and this device then reads on from there (what came between is \
                         lost to it). If that does not happen within days, {again}"
                    )
                } else {
                    format!(
                        "It cannot ask to be taken back by itself (its leaf has no ticket this \
                         device keeps). To come back, {again}"
                    )
                };
                let m = self.notice(
                    id,
                    &me,
                    false,
                    &format!(
                        "this device fell behind {what}: the group moved on (epoch {got}; this \
                         device is at {current}) through changes the relay no longer keeps. {next}"
                    ),
                )?;
                Ok(vec![Handled::Group(m)])
            }
            Err(e) if e.kind() == pigeon_wire::ErrorKind::Peer => {
                Ok(vec![Handled::Dropped(e.to_string())])
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `f` inside a savepoint: kept when it succeeds, undone when it fails (its error is
    /// the inner result, for the caller to judge; the outer one is the database's).
    fn savepoint<T>(
        &self,
        f: impl FnOnce() -> Result<T, ProfileError>,
    ) -> Result<Result<T, ProfileError>, ProfileError> {
        self.conn
            .execute_batch("SAVEPOINT entry")
            .map_err(db("starting a savepoint"))?;
        let result = f();
        let end = if result.is_ok() {
            "RELEASE entry"
        } else {
            "ROLLBACK TO entry; RELEASE entry"
        };
        self.conn
            .execute_batch(end)
            .map_err(db("ending a savepoint"))?;
        Ok(result)
    }

    fn open_log_entry(
        &self,
        row: &GroupRow,
        seq: u64,
        payload: &[u8],
    ) -> Result<Vec<Handled>, ProfileError> {
        let envelope = Envelope::decode(payload)
            .map_err(|e| peer("envelope", &format!("it does not decode: {e}")))?;
        let ct = match envelope.kind {
            Some(Kind::Mls(ct)) => ct,
            Some(Kind::Part(part)) => {
                // The entry counts here, at its last part, if this completes it.
                return match self.entry_part(row, &part)? {
                    Some(whole) => self.open_log_entry(row, seq, &whole),
                    None => Ok(vec![Handled::Duplicate]),
                };
            }
            Some(Kind::Rejoin(sealed)) => return self.rejoin_request(row, &sealed),
            // In the group of this person's devices: a Welcome for a device of theirs.
            Some(Kind::WelcomePart(part)) if row.devices => {
                return self.sibling_welcome_part(&part);
            }
            // The Welcome that takes back a device that fell behind: for that device only.
            Some(Kind::WelcomePart(_)) => return Ok(vec![Handled::Duplicate]),
            // On a home copy that was a mirror before: a keeper's late forward.
            Some(Kind::Forwarded(_)) => return Ok(vec![Handled::Duplicate]),
            _ => {
                return Err(peer(
                    "envelope",
                    "a group log received something other than an MLS message",
                ));
            }
        };
        let mls = self.mls();
        let mut group = Group::load(&mls, &row.group_id)?;
        let roster_before = group.roster()?;
        let had_pending = group.has_pending_commit();
        let opened = match group.open(&mls, &ct) {
            Err(E2eeError::WrongEpoch { got, current }) if got < current => {
                // A commit that lost the race, or a message older than the keys kept.
                return Ok(vec![Handled::Duplicate]);
            }
            other => other?,
        };
        match opened {
            Opened::Content {
                content, sender, ..
            } => {
                let name = name_of(&roster_before, &sender);
                // Sent by another device of this person (#16): it is this person's message.
                let own_person = roster_before
                    .entry(&row.signature_key)
                    .map(|e| e.person.as_slice());
                let from_me = roster_before
                    .entry(&sender)
                    .is_some_and(|e| Some(e.person.as_slice()) == own_person);
                if from_me && sender != row.signature_key {
                    self.device_seen(&name_of_device(&roster_before, &sender))?;
                }
                let from = super::LineSender {
                    key: &sender,
                    name: &name,
                    own: from_me,
                };
                match content.body {
                    Some(Body::Text(ref t)) => {
                        let line = self.insert_log_line(row, seq, &from, &content, &t.text)?;
                        self.line_arrived(row, line, from_me, &content.id)
                    }
                    Some(Body::Attachment(ref a)) => {
                        let line = self.receive_file(row, seq, &from, &content, a)?;
                        self.line_arrived(row, line, from_me, &content.id)
                    }
                    // Receipts from this person's other devices say nothing about the contact.
                    Some(Body::Receipt(_)) if from_me => Ok(vec![Handled::Duplicate]),
                    Some(Body::Receipt(r)) if row.direct => {
                        Ok(vec![self.conversation_receipt(row, &r)?])
                    }
                    Some(Body::GroupInvite(g)) if row.direct => {
                        Ok(vec![self.conversation_invite(row, g)?])
                    }
                    Some(Body::DeviceKeys(keys)) => self.device_keys(row, &sender, keys),
                    Some(Body::ReadMarks(marks)) => self.read_marks(row, marks),
                    Some(Body::LogMirror(m)) if m.moved => {
                        // A move belongs on the mirror, never on the home copy.
                        Ok(vec![Handled::Duplicate])
                    }
                    Some(Body::LogMirror(m)) => {
                        if !roster_before.is_admin(&sender) {
                            return Err(peer(
                                "log mirror",
                                "a member who is not an admin moved the log's mirror",
                            ));
                        }
                        let mirror = mirror_from_payload(&m.relay)?;
                        if mirror.is_some() && m.key.len() != 32 {
                            return Err(peer("log mirror", "its key is not 32 bytes"));
                        }
                        self.keep_mirror_key(row.id, &m.key)?;
                        // A keeper forwards from this entry on (the one who set the mirror
                        // forwards what came before it).
                        self.conn
                            .execute(
                                "UPDATE groups SET mirror_relay = ?1, mirror_cursor = 0,
                                   mirror_end = 0, forwarded_upto = ?2 WHERE id = ?3",
                                params![mirror, to_i64(seq) - 1, row.id],
                            )
                            .map_err(db("taking the log's mirror"))?;
                        Ok(vec![Handled::LogKeysChanged])
                    }
                    Some(Body::LogKeys(k)) => {
                        // Only an admin moves the log: a member who is not one could otherwise
                        // lock everyone out with keys the relay does not know.
                        if !roster_before.is_admin(&sender) {
                            return Err(peer(
                                "log keys",
                                "a member who is not an admin sent new log keys",
                            ));
                        }
                        let cap = key32(&k.member_cap, "log keys")?;
                        let owner = key32(&k.owner_key, "log keys")?;
                        self.conn
                            .execute(
                                "UPDATE groups SET log_cap = ?1, log_owner = ?2 WHERE id = ?3",
                                params![cap.as_slice(), owner.as_slice(), row.id],
                            )
                            .map_err(db("taking the log's new keys"))?;
                        Ok(vec![Handled::LogKeysChanged])
                    }
                    _ => Ok(vec![Handled::Duplicate]),
                }
            }
            Opened::Commit { epoch, changes } => {
                let mut out = Vec::new();
                if had_pending {
                    // Another member's commit came first: ours is void (openmls dropped it
                    // when merging), and its intent is proposed again by drive_in_tx.
                    if let Some(ticket) = &row.pending_ticket {
                        self.forget_ticket(ticket)?;
                    }
                    self.conn
                        .execute(
                            "UPDATE groups SET pending_commit = NULL, pending_intent = NULL,
                               pending_ticket = NULL WHERE id = ?1",
                            [row.id],
                        )
                        .map_err(db("dropping a lost commit"))?;
                }
                out.extend(self.record_changes(row, &changes, false)?);
                // Someone left by a commit of a member who is not an admin: one admin (the
                // one with the lowest key, so exactly one) moves the log to new keys.
                let committer_admin = changes
                    .committer
                    .as_ref()
                    .is_some_and(|c| roster_before.is_admin(&c.key));
                if !changes.self_removed
                    && !committer_admin
                    && (!changes.removed.is_empty() || !changes.left.is_empty())
                {
                    let roster = group.roster()?;
                    let first_admin = roster
                        .members
                        .iter()
                        .filter(|m| m.admin)
                        .map(|m| m.key.as_slice())
                        .min();
                    if first_admin == Some(row.signature_key.as_slice()) {
                        self.rotate_log_keys(row)?;
                    }
                }
                out.push(self.epoch_moved(row, epoch)?);
                Ok(out)
            }
            Opened::Leaving { key } => {
                let name = name_of(&roster_before, &key);
                let m = self.notice(row.id, &name, false, &format!("{name} asked to leave"))?;
                Ok(vec![Handled::Group(m)])
            }
            _ => Ok(vec![Handled::Duplicate]),
        }
    }

    fn own_commit_landed(&self, row: &GroupRow, seq: u64) -> Result<Vec<Handled>, ProfileError> {
        if let Some(last) = &row.pending_commit {
            // Its earlier parts, if it went in parts, were kept like anyone's.
            self.conn
                .execute(
                    "DELETE FROM entry_parts WHERE log_id = ?1 AND last = ?2",
                    params![row.log_id.as_slice(), last],
                )
                .map_err(db("forgetting a commit's parts"))?;
        }
        let mls = self.mls();
        let mut group = Group::load(&mls, &row.group_id)?;
        if !group.has_pending_commit() {
            self.conn
                .execute(
                    "UPDATE groups SET pending_commit = NULL, pending_intent = NULL WHERE id = ?1",
                    [row.id],
                )
                .map_err(db("clearing a commit"))?;
            return Ok(vec![Handled::Duplicate]);
        }
        let old_ticket = group.own_ticket();
        let changes = group.merge_pending(&mls)?;
        if let Some(old) = old_ticket
            && group.own_ticket() != Some(old)
        {
            // The leaf that carried it is gone: it could never take this device back.
            self.forget_ticket(&old)?;
        }
        let intent = match row.pending_intent {
            Some(intent_id) => {
                let stored: Option<(Vec<u8>, Option<Vec<u8>>)> = self
                    .conn
                    .query_row(
                        "SELECT change, welcome FROM group_intents WHERE id = ?1",
                        [intent_id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db("reading a group change"))?;
                self.drop_intent(intent_id)?;
                stored.and_then(|(c, w)| Intent::decode(c.as_slice()).ok().map(|i| (i, w)))
            }
            None => None,
        };
        self.conn
            .execute(
                "UPDATE groups SET pending_commit = NULL, pending_intent = NULL,
                   pending_ticket = NULL WHERE id = ?1",
                [row.id],
            )
            .map_err(db("recording a commit"))?;
        let mut out = self.record_changes(row, &changes, true)?;
        match intent {
            Some((i, Some(welcome))) if i.kind == ADD => {
                self.send_welcome(row, &i, welcome, seq)?;
            }
            Some((i, Some(welcome))) if i.kind == REJOIN || i.kind == RESTORE => {
                self.send_rejoin_welcome(row, &i, welcome, seq)?;
            }
            Some((i, _)) if i.kind == UPDATE => {
                self.conn
                    .execute(
                        "UPDATE groups SET sent_since_update = 0, updated_at = ?1 WHERE id = ?2",
                        params![now_ms(), row.id],
                    )
                    .map_err(db("recording a key refresh"))?;
            }
            _ => {}
        }
        let admin = group.roster()?.is_admin(&row.signature_key);
        if admin && (!changes.removed.is_empty() || !changes.left.is_empty()) {
            self.rotate_log_keys(row)?;
        }
        out.push(Handled::GroupEpoch {
            group_id: row.id,
            epoch: group.epoch(),
        });
        Ok(out)
    }

    /// After a removal this device committed: new log keys, sent in the new epoch (which the
    /// removed device cannot read), set on the relay once that message is there.
    fn rotate_log_keys(&self, row: &GroupRow) -> Result<(), ProfileError> {
        let cap: [u8; 32] = random()?;
        let owner: [u8; 32] = random()?;
        let content = new_content(Body::LogKeys(LogKeys {
            member_cap: cap.to_vec(),
            owner_key: owner.to_vec(),
        }))?;
        // Sent as a draft, so it goes again if a commit ends this epoch before it lands.
        let mid: [u8; 16] = random()?;
        self.conn
            .execute(
                "INSERT INTO group_drafts (group_row, content, relay_msg_id) VALUES (?1, ?2, ?3)",
                params![row.id, content.encode_to_vec(), mid.as_slice()],
            )
            .map_err(db("announcing the log's new keys"))?;
        self.conn
            .execute(
                "UPDATE groups SET next_cap = ?1, next_owner = ?2 WHERE id = ?3",
                params![cap.as_slice(), owner.as_slice(), row.id],
            )
            .map_err(db("recording the log's new keys"))?;
        Ok(())
    }

    /// Mailboxes of group invitations and join requests that served their purpose: the client
    /// deletes them on their relay (a used link then opens nothing there), then forgets them.
    ///
    /// # Errors
    /// On database failure.
    pub fn spent_mailboxes(&self) -> Result<Vec<crate::profile::Inbox>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT relay, mailbox_id, mailbox_key FROM group_invites WHERE used = 1
                 UNION ALL SELECT relay, mailbox_id, mailbox_key FROM group_joins WHERE used = 1",
            )
            .map_err(db("listing spent mailboxes"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(crate::profile::Inbox {
                    relay: r.get(0)?,
                    mailbox: blob32(r.get(1)?)?,
                    key: SigningKey::from_bytes(&blob32(r.get(2)?)?),
                })
            })
            .map_err(db("listing spent mailboxes"))?;
        let mut out: Vec<crate::profile::Inbox> = rows
            .collect::<Result<_, _>>()
            .map_err(db("listing spent mailboxes"))?;
        out.extend(self.spent_link_mailboxes()?);
        Ok(out)
    }

    /// A request to join went to an invitation mailbox that no longer exists: drops the request
    /// from the outbox, and marks its reply mailbox spent (the client deletes it).
    ///
    /// # Errors
    /// On database failure.
    pub fn cancel_group_join(
        &self,
        reply_mailbox: &[u8; 32],
        invite_mailbox: &[u8; 32],
    ) -> Result<(), ProfileError> {
        self.tx(|| {
            self.conn
                .execute(
                    "DELETE FROM outbox WHERE mailbox_id = ?1",
                    [invite_mailbox.as_slice()],
                )
                .map_err(db("withdrawing a request to join"))?;
            self.conn
                .execute(
                    "UPDATE group_joins SET used = 1 WHERE mailbox_id = ?1",
                    [reply_mailbox.as_slice()],
                )
                .map_err(db("withdrawing a request to join"))?;
            Ok(())
        })
    }

    /// The relay deleted a spent mailbox: forget it.
    ///
    /// # Errors
    /// On database failure.
    pub fn forget_spent(&self, mailbox: &[u8; 32]) -> Result<(), ProfileError> {
        for table in ["group_invites", "group_joins"] {
            self.conn
                .execute(
                    &format!("DELETE FROM {table} WHERE mailbox_id = ?1 AND used = 1"),
                    [mailbox.as_slice()],
                )
                .map_err(db("forgetting a spent mailbox"))?;
        }
        self.forget_spent_link(mailbox)
    }

    /// Log key rotations waiting for the relay (after their announcement was posted).
    ///
    /// # Errors
    /// On database failure.
    pub fn pending_rotations(&self) -> Result<Vec<PendingRotation>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT g.id, g.log_relay, g.log_id, g.log_owner, g.next_owner, g.next_cap FROM groups g
                 WHERE g.next_cap IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.mailbox_id = g.log_id)
                   AND NOT EXISTS (SELECT 1 FROM group_drafts d WHERE d.group_row = g.id)
                   AND NOT EXISTS (SELECT 1 FROM group_unconfirmed u WHERE u.group_row = g.id)",
            )
            .map_err(db("reading log rotations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PendingRotation {
                    group: r.get(0)?,
                    relay: r.get(1)?,
                    log_id: blob32(r.get(2)?)?,
                    owner: SigningKey::from_bytes(&blob32(r.get(3)?)?),
                    next_owner: SigningKey::from_bytes(&blob32(r.get(4)?)?),
                    next_cap: blob32(r.get(5)?)?,
                    mirror: false,
                })
            })
            .map_err(db("reading log rotations"))?;
        let mut out: Vec<PendingRotation> = rows
            .collect::<Result<_, _>>()
            .map_err(db("reading log rotations"))?;
        // The mirrors' moves: at once (what waits for the mirror is posted with the keys of
        // the moment, so it goes once the mirror has them).
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, mirror_relay, log_id, mirror_rotation FROM groups
                 WHERE mirror_rotation IS NOT NULL AND mirror_relay IS NOT NULL",
            )
            .map_err(db("reading log rotations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, GroupId>(0)?,
                    r.get::<_, String>(1)?,
                    blob32(r.get(2)?)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(db("reading log rotations"))?;
        for row in rows {
            let (group, relay, log_id, keys) = row.map_err(db("reading log rotations"))?;
            let part = |i: usize| -> Result<[u8; 32], ProfileError> {
                keys.get(i * 32..(i + 1) * 32)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| ProfileError::Db {
                        doing: "reading log rotations",
                        reason: "a mirror's move is not three keys".to_owned(),
                    })
            };
            out.push(PendingRotation {
                group,
                relay,
                log_id,
                owner: SigningKey::from_bytes(&part(0)?),
                next_owner: SigningKey::from_bytes(&part(1)?),
                next_cap: part(2)?,
                mirror: true,
            });
        }
        Ok(out)
    }

    /// The relay took a rotation: the new keys are the log's keys now.
    ///
    /// # Errors
    /// On database failure.
    pub fn rotated(&self, group: GroupId) -> Result<(), ProfileError> {
        self.tx(|| {
            /// The owner key now, the owner key and capability after, and whether a mirror
            /// moves too.
            type Keys = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, bool);
            let keys: Option<Keys> = self
                .conn
                .query_row(
                    "SELECT log_owner, next_owner, next_cap, mirror_relay IS NOT NULL
                     FROM groups WHERE id = ?1",
                    [group],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(db("recording the log's new keys"))?;
            let Some((owner, Some(next_owner), Some(next_cap), mirrored)) = keys else {
                return Ok(());
            };
            // The mirror moves next, proven with the owner key the home copy had.
            let mirror_move = mirrored.then(|| [owner, next_owner, next_cap].concat());
            self.conn
                .execute(
                    "UPDATE groups SET log_cap = next_cap, log_owner = next_owner, next_cap = NULL,
                       next_owner = NULL, mirror_rotation = ?2 WHERE id = ?1",
                    params![group, mirror_move],
                )
                .map_err(db("recording the log's new keys"))?;
            Ok(())
        })
    }

    /// The relay of a log's mirror took its move to the new keys.
    ///
    /// # Errors
    /// On database failure.
    pub fn mirror_rotated(&self, group: GroupId) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE groups SET mirror_rotation = NULL WHERE id = ?1",
                [group],
            )
            .map_err(db("recording the mirror's new keys"))?;
        Ok(())
    }

    fn record_changes(
        &self,
        row: &GroupRow,
        changes: &Changes,
        own: bool,
    ) -> Result<Vec<Handled>, ProfileError> {
        let by = if own {
            self.name()?
        } else {
            changes
                .committer
                .as_ref()
                .map_or_else(|| "someone".to_owned(), |e| e.name.clone())
        };
        // Whose devices these are: a person adds and removes their own (#16).
        let my_person: Vec<u8> = self
            .conn
            .query_row("SELECT person FROM groups WHERE id = ?1", [row.id], |r| {
                r.get(0)
            })
            .map_err(db("reading a group"))?;
        let by_person = if own {
            Some(my_person.clone())
        } else {
            changes.committer.as_ref().map(|c| c.person.clone())
        };
        let own_device = |e: &RosterEntry| by_person.as_ref() == Some(&e.person);
        let mut lines = Vec::new();
        for a in &changes.added {
            if own_device(a) {
                lines.push(format!(
                    "{by} added a device ({}); compare its safety number with `pigeon verify`",
                    device_label(&a.device)
                ));
                continue;
            }
            lines.push(format!("{by} added {}", a.name));
            if self.verified_under_another_key(row, a)? {
                let verify = match self.contact_of(row.id)? {
                    Some(direct) => format!("pigeon verify {}", direct.name),
                    None => format!("pigeon verify {} {}", row.name, a.name),
                };
                lines.push(format!(
                    "the safety number of {} is not the one you verified: it is a new key. \
                     Compare it again (`{verify}`)",
                    a.name
                ));
            }
        }
        for r in &changes.removed {
            if own_device(r) {
                lines.push(format!(
                    "{by} removed a device ({})",
                    device_label(&r.device)
                ));
            } else {
                lines.push(format!("{by} removed {}", r.name));
            }
        }
        for l in &changes.left {
            lines.push(format!("{} left", l.name));
        }
        if let Some(name) = &changes.renamed {
            lines.push(format!("{by} renamed the group to {name}"));
            self.conn
                .execute(
                    "UPDATE groups SET name = ?1 WHERE id = ?2",
                    params![name, row.id],
                )
                .map_err(db("renaming a group"))?;
        }
        for p in &changes.promoted {
            lines.push(format!("{by} made {} an admin", p.name));
        }
        for r in &changes.rejoined {
            let device = if r.device.is_empty() {
                "device".to_owned()
            } else {
                format!("device ({})", r.device)
            };
            lines.push(format!(
                "{}'s {device} fell behind and {by} took it back (same key, proven by its ticket)",
                r.name
            ));
        }
        for r in &changes.restored {
            if r.person == my_person {
                continue;
            }
            lines.push(format!(
                "{}'s {} was restored from a backup on a new device ({by} let it in): a new \
                 key, so its safety number is new",
                r.name,
                device_label(&r.device)
            ));
        }
        if changes.self_removed {
            if changes.restored.iter().any(|e| e.person == my_person) {
                lines.push(
                    "this device was replaced by one restored from its backup; it reads nothing \
                     new"
                    .to_owned(),
                );
            } else if by_person.as_ref() == Some(&my_person) {
                let from = changes
                    .committer
                    .as_ref()
                    .map_or("another device", |c| device_label(&c.device));
                lines.push(format!(
                    "this device was removed from here by your device {from}; it reads nothing new"
                ));
            } else {
                lines.push(format!(
                    "you are no longer in this group (removed by {by}); it reads nothing new"
                ));
            }
            self.conn
                .execute(
                    "UPDATE groups SET state = ?1, pending_commit = NULL WHERE id = ?2",
                    params![STATE_GONE, row.id],
                )
                .map_err(db("leaving a group"))?;
            self.conn
                .execute("DELETE FROM group_intents WHERE group_row = ?1", [row.id])
                .map_err(db("leaving a group"))?;
        }
        let mut out = Vec::new();
        for line in lines {
            out.push(Handled::Group(self.notice(row.id, &by, own, &line)?));
        }
        Ok(out)
    }

    pub(super) fn send_welcome(
        &self,
        row: &GroupRow,
        intent: &Intent,
        welcome: Vec<u8>,
        seq: u64,
    ) -> Result<(), ProfileError> {
        if intent.welcome_devices {
            return self.send_sibling_welcome(row, intent, welcome, seq);
        }
        let secret = key32(&intent.welcome_secret, "join request")?;
        let mailbox = key32(&intent.welcome_mailbox, "join request")?;
        let cap = key32(&intent.welcome_cap, "join request")?;
        let (body, _) = self.group_welcome(row.id, welcome, seq)?;
        let sealed = seal(&secret, b"welcome", &body.encode_to_vec())?;
        let parts = sealed.chunks(WELCOME_PART).count();
        let parts_u32 = u32::try_from(parts).unwrap_or(u32::MAX);
        for (i, chunk) in sealed.chunks(WELCOME_PART).enumerate() {
            self.queue(
                &intent.welcome_relay,
                &mailbox,
                &cap,
                &Envelope {
                    kind: Some(Kind::WelcomePart(WelcomePart {
                        part: u32::try_from(i).unwrap_or(u32::MAX),
                        parts: parts_u32,
                        bytes: chunk.to_vec(),
                        id: intent.welcome_id.clone(),
                    })),
                },
            )?;
        }
        if !intent.welcome_id.is_empty() {
            self.link_welcome_sent(&intent.welcome_id)?;
        }
        Ok(())
    }

    /// What a device added at log position `seq` needs besides the MLS Welcome: the log's
    /// address and keys as they are now (read afresh: a rotation may have happened in this
    /// same batch), and its mirror. Also returns the group's row as read.
    pub(super) fn group_welcome(
        &self,
        id: GroupId,
        welcome: Vec<u8>,
        seq: u64,
    ) -> Result<(GroupWelcome, GroupRow), ProfileError> {
        let fresh = self.group_row(id)?;
        let relay = crate::profile::parse_stored_relay(&fresh.log_relay)?;
        let body = GroupWelcome {
            welcome,
            log_relay: relay.to_payload().encode_to_vec(),
            log_id: fresh.log_id.to_vec(),
            log_cap: fresh.log_cap.to_vec(),
            log_owner: fresh.log_owner.clone(),
            after_seq: seq,
            mirror_relay: mirror_payload(fresh.mirror_relay.as_deref())?,
            mirror_key: fresh.mirror_key.clone().unwrap_or_default(),
        };
        Ok((body, fresh))
    }

    /// A delivery on one of this profile's group invitation mailboxes: a request to join.
    pub(in crate::profile) fn group_join_request(
        &self,
        mailbox: &[u8; 32],
        envelope: Envelope,
    ) -> Result<Option<Handled>, ProfileError> {
        let invite: Option<(i64, GroupId, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT id, group_row, secret FROM group_invites WHERE mailbox_id = ?1 AND used = 0",
                [mailbox.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db("finding the mailbox"))?;
        let Some((invite_id, group, secret)) = invite else {
            return Ok(None);
        };
        let Some(Kind::JoinRequest(sealed)) = envelope.kind else {
            return Err(peer(
                "join request",
                "a group invitation's mailbox received something other than a request to join",
            ));
        };
        let secret = key32(&secret, "join request")?;
        let plain = open_sealed(&secret, b"join", &sealed)?;
        let req = JoinRequest::decode(plain.as_slice())
            .map_err(|e| peer("join request", &format!("it does not decode: {e}")))?;
        check_name(&req.name).map_err(|r| peer("join request", &r))?;
        RelayLink::from_payload_bytes(&req.reply_relay)
            .map_err(|e| peer("join request", &format!("its reply relay is invalid: {e}")))?;
        key32(&req.reply_mailbox, "join request")?;
        key32(&req.reply_cap, "join request")?;
        if req.person.len() != 16 || req.device.chars().count() > 64 {
            return Err(peer(
                "join request",
                "its person id or device name is malformed",
            ));
        }
        let key =
            pigeon_e2ee::key_package_signature_key(&self.mls(), &req.key_package, Suite::XWing)?;
        let relay = RelayLink::from_payload_bytes(&req.reply_relay)
            .map_err(|e| peer("join request", &e.to_string()))?;
        let intent = Intent {
            kind: ADD,
            key_package: req.key_package,
            entry: Some(RosterEntry {
                key,
                person: req.person,
                name: req.name.clone(),
                device: req.device,
                admin: false,
            }),
            welcome_relay: relay.to_string(),
            welcome_mailbox: req.reply_mailbox,
            welcome_cap: req.reply_cap,
            welcome_secret: secret.to_vec(),
            ..Intent::default()
        };
        // Each invitation works once.
        self.conn
            .execute(
                "UPDATE group_invites SET used = 1 WHERE id = ?1",
                [invite_id],
            )
            .map_err(db("closing the invitation"))?;
        self.add_intent(group, &intent)?;
        self.drive_in_tx(group)?;
        let me = self.name()?;
        let m = self.notice(
            group,
            &me,
            true,
            &format!("{} accepted your invitation; adding them", req.name),
        )?;
        Ok(Some(Handled::Group(m)))
    }

    /// A delivery on one of this profile's join-request reply mailboxes: a part of a Welcome.
    pub(in crate::profile) fn group_welcome_part(
        &self,
        mailbox: &[u8; 32],
        envelope: Envelope,
    ) -> Result<Option<Handled>, ProfileError> {
        let join: Option<(i64, Vec<u8>, Vec<u8>, bool)> = self
            .conn
            .query_row(
                "SELECT id, secret, signature_key, direct FROM group_joins WHERE mailbox_id = ?1 AND used = 0",
                [mailbox.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("finding the mailbox"))?;
        let Some((join_id, secret, signature_key, direct)) = join else {
            return Ok(None);
        };
        let Some(Kind::WelcomePart(part)) = envelope.kind else {
            return Err(peer(
                "welcome",
                "a request to join received something other than a Welcome",
            ));
        };
        let Some(sealed) = self.collect_welcome_part(mailbox, &part)? else {
            return Ok(Some(Handled::Duplicate));
        };
        let secret = key32(&secret, "welcome")?;
        let (id, roster) =
            self.join_from_welcome(&secret, b"welcome", &sealed, &signature_key, |roster| {
                if roster.devices {
                    return Err(
                        "an invitation was answered with someone's group of their own devices",
                    );
                }
                if roster.direct != direct {
                    return Err(if direct {
                        "an invitation to talk was answered with a group"
                    } else {
                        "a request to join a group was answered with a conversation of two"
                    });
                }
                Ok(())
            })?;
        self.conn
            .execute("UPDATE group_joins SET used = 1 WHERE id = ?1", [join_id])
            .map_err(db("closing the request to join"))?;
        if direct {
            return self
                .conversation_joined(id, &roster, &signature_key)
                .map(Some);
        }
        let members: Vec<String> = roster
            .members
            .iter()
            .filter(|m| m.key != signature_key)
            .map(|m| m.name.clone())
            .collect();
        let my_name = self.name()?;
        self.notice(
            id,
            &my_name,
            false,
            &format!("you joined {} with {}", roster.name, members.join(", ")),
        )?;
        Ok(Some(Handled::JoinedGroup(self.group_info(id)?)))
    }

    /// Opens a sealed [`GroupWelcome`] (`label` under `secret`), joins its group as the device
    /// whose signature key is `signature_key`, and writes the group's row (its log read from
    /// the add on). `check` refuses a group of the wrong kind before anything is written; the
    /// caller's transaction undoes the rest on any error.
    pub(super) fn join_from_welcome(
        &self,
        secret: &[u8; 32],
        label: &[u8],
        sealed: &[u8],
        signature_key: &[u8],
        check: impl FnOnce(&Roster) -> Result<(), &'static str>,
    ) -> Result<(GroupId, Roster), ProfileError> {
        let plain = open_sealed(secret, label, sealed)?;
        let gw = GroupWelcome::decode(plain.as_slice())
            .map_err(|e| peer("welcome", &format!("it does not decode: {e}")))?;
        let log_relay = RelayLink::from_payload_bytes(&gw.log_relay)
            .map_err(|e| peer("welcome", &format!("its log relay is invalid: {e}")))?;
        let log_id = key32(&gw.log_id, "welcome")?;
        let log_cap = key32(&gw.log_cap, "welcome")?;
        let log_owner = key32(&gw.log_owner, "welcome")?;
        if self.group_for_log(&log_id)?.is_some() {
            return Err(peer("welcome", "this device is in that group already"));
        }
        let group = Group::join_group(&self.mls(), &gw.welcome)?;
        let roster = group.roster()?;
        check(&roster).map_err(|reason| peer("welcome", reason))?;
        let Some(me) = roster.entry(signature_key) else {
            return Err(peer(
                "welcome",
                "the group's roster does not list this device",
            ));
        };
        let id = self.insert_group(&NewGroup {
            name: &roster.name,
            group_id: group.id(),
            signature_key,
            suite: group.suite().unwrap_or(Suite::XWing),
            person: &me.person,
            log_relay: log_relay.to_string(),
            log_id: &log_id,
            log_cap: &log_cap,
            log_owner: &log_owner,
            cursor: to_i64(gw.after_seq),
            direct: roster.direct,
            mirror_relay: mirror_from_payload(&gw.mirror_relay)?,
        })?;
        self.keep_mirror_key(id, &gw.mirror_key)?;
        let count = self.joined_message_count(roster.members.len());
        if count > 0 {
            self.conn
                .execute(
                    "UPDATE groups SET sent_since_update = ?1 WHERE id = ?2",
                    params![count, id],
                )
                .map_err(db("saving the group"))?;
        }
        if roster.devices {
            self.conn
                .execute("UPDATE groups SET devices = 1 WHERE id = ?1", [id])
                .map_err(db("recording the group of devices"))?;
        }
        Ok((id, roster))
    }

    /// Keeps a part of a sealed Welcome under `key`; returns the whole sealed Welcome once
    /// every part is there (and forgets the parts).
    pub(super) fn collect_welcome_part(
        &self,
        key: &[u8],
        part: &WelcomePart,
    ) -> Result<Option<Vec<u8>>, ProfileError> {
        if part.parts == 0 || part.parts > MAX_WELCOME_PARTS || part.part >= part.parts {
            return Err(peer("welcome", "its part numbers are out of range"));
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO welcome_parts (mailbox_id, part, parts, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![key, part.part, part.parts, part.bytes],
            )
            .map_err(db("keeping a part of a Welcome"))?;
        let have: Vec<(u32, u32, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT part, parts, bytes FROM welcome_parts WHERE mailbox_id = ?1 ORDER BY part")
                .map_err(db("reading a Welcome"))?;
            let rows = stmt
                .query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(db("reading a Welcome"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading a Welcome"))?
        };
        if have.iter().any(|(_, n, _)| *n != part.parts) {
            self.conn
                .execute("DELETE FROM welcome_parts WHERE mailbox_id = ?1", [key])
                .map_err(db("dropping a Welcome"))?;
            return Err(peer("welcome", "its parts disagree on how many there are"));
        }
        if u32::try_from(have.len()).unwrap_or(u32::MAX) < part.parts {
            return Ok(None);
        }
        self.conn
            .execute("DELETE FROM welcome_parts WHERE mailbox_id = ?1", [key])
            .map_err(db("reading a Welcome"))?;
        Ok(Some(have.into_iter().flat_map(|(_, _, b)| b).collect()))
    }

    /// This device fell behind for good: if its leaf's ticket is one it keeps, it asks the
    /// group (in the log) to take it back, with a new key package that reveals the ticket.
    /// Returns whether it asked.
    fn ask_to_be_taken_back(&self, row: &GroupRow) -> Result<bool, ProfileError> {
        let mls = self.mls();
        let group = Group::load(&mls, &row.group_id)?;
        let Some(commitment) = group.own_ticket() else {
            return Ok(false);
        };
        let Some(old) = self.ticket(&commitment)? else {
            return Ok(false);
        };
        let identity = Identity::load(&mls, &row.signature_key)?;
        let suite = group.suite().unwrap_or(Suite::XWing);
        let (key_package, next) = identity.key_package_with_ticket(
            &mls,
            suite,
            &pigeon_e2ee::LeafExtras {
                reveal: Some(&old),
                // The newest backup's commitment stays in this device's leaf.
                restore: group.own_restore(),
                ..pigeon_e2ee::LeafExtras::default()
            },
        )?;
        self.keep_ticket(&next)?;
        let request = RejoinRequest { key_package };
        // Sealed under the commitment, which only those who hold the group's tree know: the
        // relay sees neither the key package nor whose request it is.
        let sealed = seal(&commitment, b"rejoin", &request.encode_to_vec())?;
        self.queue_log(row, Kind::Rejoin(sealed))?;
        self.conn
            .execute(
                "UPDATE groups SET rejoin_secret = ?1, pending_ticket = ?2 WHERE id = ?3",
                params![
                    old.secret().as_slice(),
                    next.commitment().as_slice(),
                    row.id
                ],
            )
            .map_err(db("asking to be taken back"))?;
        Ok(true)
    }

    /// A request in the log from a device that fell behind. Any member may take it back; the
    /// admins' devices do (or every member's, when the device is the group's only admin), and
    /// the log decides which commit counts.
    fn rejoin_request(&self, row: &GroupRow, sealed: &[u8]) -> Result<Vec<Handled>, ProfileError> {
        let mls = self.mls();
        let group = Group::load(&mls, &row.group_id)?;
        let opened = group.tickets().into_iter().find_map(|(key, commitment)| {
            open_sealed(&commitment, b"rejoin", sealed)
                .ok()
                .map(|plain| (key, plain))
        });
        let Some((key, plain)) = opened else {
            // Sealed to no ticket in the tree now: a device restored from a backup, a device
            // that is back already, a request from a copy of an old state, or one that was
            // never for this group.
            return self.restore_request(row, &group, sealed);
        };
        let request = RejoinRequest::decode(plain.as_slice())
            .map_err(|e| peer("request to rejoin", &format!("it does not decode: {e}")))?;
        let rejoin = group.check_rejoin(&mls, &request.key_package)?;
        if rejoin.entry.key != key {
            return Err(peer(
                "request to rejoin",
                "it is sealed for one device and signed by another",
            ));
        }
        let respond = takes_back(&group.roster()?, &row.signature_key, &key);
        let who = &rejoin.entry.name;
        let mut line = format!("{who}'s device fell behind and asked to be taken back");
        if respond {
            line.push_str("; taking it back");
            self.add_intent(
                row.id,
                &Intent {
                    kind: REJOIN,
                    key_package: request.key_package,
                    keys: vec![key],
                    welcome_secret: rejoin.revealed.secret().to_vec(),
                    ..Intent::default()
                },
            )?;
        }
        let m = self.notice(row.id, who, false, &line)?;
        Ok(vec![Handled::Group(m)])
    }

    /// A request in the log from a device restored from a backup: sealed under the restore
    /// commitment in the leaf of the device that made the backup. Answered like a request to
    /// be taken back.
    fn restore_request(
        &self,
        row: &GroupRow,
        group: &Group,
        sealed: &[u8],
    ) -> Result<Vec<Handled>, ProfileError> {
        let opened = group.restores().into_iter().find_map(|(key, commitment)| {
            open_sealed(&commitment, b"restore", sealed)
                .ok()
                .map(|plain| (key, plain))
        });
        let Some((key, plain)) = opened else {
            return Ok(vec![Handled::Duplicate]);
        };
        let request = RejoinRequest::decode(plain.as_slice()).map_err(|e| {
            peer(
                "request to restore a device",
                &format!("it does not decode: {e}"),
            )
        })?;
        let restore = group.check_restore(&self.mls(), &request.key_package)?;
        if restore.entry.key != key {
            return Err(peer(
                "request to restore a device",
                "it is sealed for one device and reveals another's backup",
            ));
        }
        let respond = takes_back(&group.roster()?, &row.signature_key, &key);
        // The transcript tells of it when the commit that lets the device in is applied.
        if respond {
            self.add_intent(
                row.id,
                &Intent {
                    kind: RESTORE,
                    key_package: request.key_package,
                    keys: vec![key],
                    welcome_secret: restore.revealed.secret().to_vec(),
                    ..Intent::default()
                },
            )?;
        }
        Ok(vec![Handled::Duplicate])
    }

    /// The commit that took a device back won: the Welcome goes into the log, sealed under the
    /// ticket secret the device revealed, in parts the device recognises by their id.
    fn send_rejoin_welcome(
        &self,
        row: &GroupRow,
        intent: &Intent,
        welcome: Vec<u8>,
        seq: u64,
    ) -> Result<(), ProfileError> {
        let secret = key32(&intent.welcome_secret, "rejoin")?;
        let (body, fresh) = self.group_welcome(row.id, welcome, seq)?;
        let sealed = seal(&secret, b"rejoin welcome", &body.encode_to_vec())?;
        let id = rejoin_welcome_id(&secret);
        let parts = u32::try_from(sealed.chunks(WELCOME_PART).count()).unwrap_or(u32::MAX);
        for (i, chunk) in sealed.chunks(WELCOME_PART).enumerate() {
            self.queue_log(
                &fresh,
                Kind::WelcomePart(WelcomePart {
                    part: u32::try_from(i).unwrap_or(u32::MAX),
                    parts,
                    bytes: chunk.to_vec(),
                    id: id.to_vec(),
                }),
            )?;
        }
        Ok(())
    }

    /// An entry of the log of a group this device fell behind: only the Welcome that takes it
    /// back counts.
    fn lost_entry(&self, row: &GroupRow, payload: &[u8]) -> Result<Vec<Handled>, ProfileError> {
        let Some(secret) = &row.rejoin_secret else {
            return Ok(vec![Handled::Duplicate]);
        };
        let secret = key32(secret, "rejoin")?;
        let id = rejoin_welcome_id(&secret);
        let Ok(Envelope {
            kind: Some(Kind::WelcomePart(part)),
        }) = Envelope::decode(payload)
        else {
            return Ok(vec![Handled::Duplicate]);
        };
        if part.id != id {
            return Ok(vec![Handled::Duplicate]);
        }
        match self.savepoint(|| self.taken_back(row, &secret, &id, &part))? {
            Ok(h) => Ok(h),
            Err(e) if e.kind() == pigeon_wire::ErrorKind::Peer => {
                Ok(vec![Handled::Dropped(e.to_string())])
            }
            Err(e) => Err(e),
        }
    }

    fn taken_back(
        &self,
        row: &GroupRow,
        secret: &[u8; 32],
        id: &[u8; 32],
        part: &WelcomePart,
    ) -> Result<Vec<Handled>, ProfileError> {
        let Some(sealed) = self.collect_welcome_part(id, part)? else {
            return Ok(vec![Handled::Duplicate]);
        };
        let plain = open_sealed(secret, b"rejoin welcome", &sealed)?;
        let gw = GroupWelcome::decode(plain.as_slice())
            .map_err(|e| peer("welcome", &format!("it does not decode: {e}")))?;
        if gw.log_id.as_slice() != row.log_id.as_slice() {
            return Err(peer("welcome", "it is for another group's log"));
        }
        let log_cap = key32(&gw.log_cap, "welcome")?;
        let log_owner = key32(&gw.log_owner, "welcome")?;
        let mls = self.mls();
        // A device restored from a backup has no old state of the group.
        let old_ticket = match Group::load(&mls, &row.group_id) {
            Ok(old) => {
                let ticket = old.own_ticket();
                old.delete(&mls)?;
                ticket
            }
            Err(E2eeError::UnknownGroup) => None,
            Err(e) => return Err(e.into()),
        };
        let group = Group::join_group(&mls, &gw.welcome)?;
        if group.id() != row.group_id {
            return Err(peer("welcome", "it is for another group"));
        }
        let roster = group.roster()?;
        if roster.entry(&row.signature_key).is_none() {
            return Err(peer(
                "welcome",
                "the group's roster does not list this device",
            ));
        }
        let count = self.joined_message_count(roster.members.len());
        if let Some(t) = old_ticket {
            self.forget_ticket(&t)?;
        }
        self.conn
            .execute(
                "UPDATE groups SET state = ?1, cursor = ?2, log_cap = ?3, log_owner = ?4,
                   pending_commit = NULL, pending_intent = NULL, pending_ticket = NULL,
                   rejoin_secret = NULL, sent_since_update = ?8, updated_at = ?5,
                   mirror_relay = ?6, mirror_cursor = 0, mirror_end = 0, forwarded_upto = 0,
                   mirror_key = NULL WHERE id = ?7",
                params![
                    STATE_ACTIVE,
                    to_i64(gw.after_seq),
                    log_cap.as_slice(),
                    log_owner.as_slice(),
                    now_ms(),
                    mirror_from_payload(&gw.mirror_relay)?,
                    row.id,
                    count
                ],
            )
            .map_err(db("rejoining a group"))?;
        self.keep_mirror_key(row.id, &gw.mirror_key)?;
        let me = self.name()?;
        let m = self.notice(
            row.id,
            &me,
            false,
            &format!(
                "this device is back in {}: it was taken back at epoch {} and reads on from there",
                if row.direct {
                    "this conversation"
                } else {
                    &row.name
                },
                group.epoch()
            ),
        )?;
        // Read the log again from where this device was taken back.
        Ok(vec![Handled::Group(m), Handled::LogKeysChanged])
    }

    /// Takes messages from a copy of a group's log on the relay whose key is `relay`: the
    /// home copy ([`Self::handle_log_deliveries`]) or the mirror, whose entries are the home
    /// copy's, each applied at its home position (so either copy gives the same result, and
    /// whichever brings an entry first wins; the other's is a duplicate).
    ///
    /// # Errors
    /// Only local failures (then nothing was recorded).
    pub fn handle_log_deliveries_on(
        &self,
        relay: &[u8; 32],
        log_id: &[u8; 32],
        deliveries: &[(u64, &[u8], &[u8])],
    ) -> Result<Vec<Handled>, ProfileError> {
        let mirror = match self.group_for_log(log_id)? {
            Some(id) => self
                .group_row(id)?
                .mirror_relay
                .map(|m| crate::profile::parse_stored_relay(&m))
                .transpose()?
                .filter(|m| m.relay_key() == relay)
                .map(|_| id),
            None => None,
        };
        let Some(id) = mirror else {
            return self.handle_log_deliveries(log_id, deliveries);
        };
        self.tx(|| {
            let mut out = Vec::new();
            for (i, (seq, message_id, payload)) in deliveries.iter().enumerate() {
                let row = self.group_row(id)?;
                let seq_i = to_i64(*seq);
                if seq_i <= row.mirror_cursor || row.state == STATE_GONE {
                    out.push(Handled::Duplicate);
                    continue;
                }
                self.conn
                    .execute(
                        "UPDATE groups SET mirror_cursor = ?1 WHERE id = ?2",
                        params![seq_i, id],
                    )
                    .map_err(db("advancing the mirror cursor"))?;
                match Envelope::decode(*payload).map(|e| e.kind) {
                    Ok(Some(Kind::Forwarded(f))) if !forwarded_verifies(&row, &f) => {
                        // Made up or renumbered on the way (the mirror's relay cannot make a
                        // valid one): it counts nowhere.
                        out.push(Handled::Dropped(
                            "a mirror entry that does not verify".to_owned(),
                        ));
                    }
                    Ok(Some(Kind::Forwarded(f))) => {
                        self.conn
                            .execute(
                                "UPDATE groups SET mirror_end = max(mirror_end, ?1) WHERE id = ?2",
                                params![to_i64(f.home_seq), id],
                            )
                            .map_err(db("advancing the mirror cursor"))?;
                        if f.payload.is_empty() {
                            out.push(Handled::Duplicate);
                            continue;
                        }
                        out.extend(self.log_entry(id, f.home_seq, &f.message_id, &f.payload)?);
                        if self.group_row(id)?.cursor < to_i64(f.home_seq) {
                            // Taken back after falling behind: both copies are read again.
                            out.extend(deliveries[i + 1..].iter().map(|_| Handled::Duplicate));
                            break;
                        }
                    }
                    Ok(Some(Kind::ForHome(h))) => {
                        if self.keeps_mirror(id)? {
                            self.carry_home(&row, &h)?;
                        }
                        out.push(Handled::Duplicate);
                    }
                    Ok(Some(Kind::Mls(ct))) => {
                        // Only a move of the log's home to this relay is posted here directly.
                        let moved = self.mirror_native(&row, message_id, &ct)?;
                        if moved {
                            out.extend(self.home_moved(&row, seq_i)?);
                            out.extend(deliveries[i + 1..].iter().map(|_| Handled::Duplicate));
                            break;
                        }
                        out.push(Handled::Duplicate);
                    }
                    _ => out.push(Handled::Duplicate),
                }
            }
            self.drive_in_tx(id)?;
            Ok(out)
        })
    }

    /// True when this device keeps the group log's mirror: every admin's device does (so a
    /// mirror does not depend on one device being online). Each puts the home copy's entries
    /// there in order, with ids every keeper derives alike, so the relay keeps one of each.
    fn keeps_mirror(&self, id: GroupId) -> Result<bool, ProfileError> {
        let row = self.group_row(id)?;
        if row.mirror_relay.is_none() || row.state != STATE_ACTIVE {
            return Ok(false);
        }
        Ok(self.roster_of(&row)?.is_admin(&row.signature_key))
    }

    /// Puts a new home-copy entry on the mirror (this device keeps it), at its home position.
    /// Entry `seq` goes there only once `seq - 1` is there (seen on the mirror, or
    /// forwarded by this device, whose outbox posts in order): so whichever keepers forward
    /// what, the mirror holds the home copy's entries in the home copy's order.
    fn forward(
        &self,
        id: GroupId,
        seq: u64,
        message_id: &[u8],
        payload: &[u8],
    ) -> Result<(), ProfileError> {
        let row = self.group_row(id)?;
        let (Some(mirror), Some(key)) = (&row.mirror_relay, &row.mirror_key) else {
            return Ok(());
        };
        let (end, upto): (i64, i64) = self
            .conn
            .query_row(
                "SELECT mirror_end, forwarded_upto FROM groups WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("reading the mirror's state"))?;
        let seq_i = to_i64(seq);
        if seq_i - 1 > end.max(upto) {
            // What comes before it is not known to be there yet: another keeper puts it there,
            // or this device does once it sees the mirror catch up.
            return Ok(());
        }
        let mut forwarded = Forwarded {
            home_seq: seq,
            message_id: message_id.to_vec(),
            payload: payload.to_vec(),
            mac: Vec::new(),
        };
        let envelope = |f: Forwarded| Envelope {
            kind: Some(Kind::Forwarded(f)),
        };
        if envelope(forwarded.clone()).encoded_len() + 64 > pigeon_wire::MAX_CIPHERTEXT {
            // Too large to carry wrapped: its place is kept, and a device reading only the
            // mirror sees a gap there.
            forwarded.payload.clear();
        }
        forwarded.mac = forwarded_mac(key, &forwarded)?.to_vec();
        // The same id from whichever device forwards it: the relay keeps one.
        let copy_id = derived_id(b"pigeon mirror copy", message_id);
        self.queue_once(
            mirror,
            &row.log_id,
            &row.log_cap,
            &envelope(forwarded),
            copy_id,
            false,
        )?;
        self.conn
            .execute(
                "UPDATE groups SET forwarded_upto = max(forwarded_upto, ?1) WHERE id = ?2",
                params![seq_i, id],
            )
            .map_err(db("forwarding to the mirror"))?;
        Ok(())
    }

    /// A post that a device which cannot reach the home relay left on the mirror: posted to
    /// the home copy with its own message id (the relay keeps one, however often it comes).
    fn carry_home(&self, row: &GroupRow, h: &ForHome) -> Result<(), ProfileError> {
        let Ok(message_id) = <[u8; 16]>::try_from(h.message_id.as_slice()) else {
            return Ok(());
        };
        let Ok(envelope) = Envelope::decode(h.payload.as_slice()) else {
            return Ok(());
        };
        // A keeper cut off from the home relay itself does not pile posts up without end:
        // past this many, the other keepers carry them.
        let waiting: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM outbox WHERE carried = 1 AND mailbox_id = ?1",
                [row.log_id.as_slice()],
                |r| r.get(0),
            )
            .map_err(db("counting carried posts"))?;
        if waiting >= MAX_CARRIED {
            return Ok(());
        }
        self.queue_once(
            &row.log_relay,
            &row.log_id,
            &row.log_cap,
            &envelope,
            message_id,
            true,
        )
    }

    /// Makes `mirror` the group log's mirror (`None`: none), and tells the members in the log.
    /// The caller created the log there already, with the same id and keys.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for a member who is not an admin; database failures.
    pub fn set_log_mirror(
        &self,
        log_id: &[u8; 32],
        mirror: Option<&RelayLink>,
    ) -> Result<(), ProfileError> {
        self.tx(|| {
            let id = self
                .group_for_log(log_id)?
                .ok_or_else(|| ProfileError::NoContact("that log".to_owned()))?;
            let row = self.group_row(id)?;
            if !self.roster_of(&row)?.is_admin(&row.signature_key) {
                return Err(ProfileError::NotNow(
                    "only an admin moves the group's mirror".to_owned(),
                ));
            }
            let relay = mirror.map(|m| m.to_payload().encode_to_vec()).unwrap_or_default();
            let key: Vec<u8> = match mirror {
                Some(_) => random::<32>()?.to_vec(),
                None => Vec::new(),
            };
            let content = new_content(Body::LogMirror(LogMirror {
                relay,
                moved: false,
                key: key.clone(),
            }))?;
            self.keep_mirror_key(id, &key)?;
            let mid: [u8; 16] = random()?;
            self.conn
                .execute(
                    "INSERT INTO group_drafts (group_row, content, relay_msg_id) VALUES (?1, ?2, ?3)",
                    params![id, content.encode_to_vec(), mid.as_slice()],
                )
                .map_err(db("announcing the log's mirror"))?;
            // This device forwards from its position on: the announcement comes after it.
            self.conn
                .execute(
                    "UPDATE groups SET mirror_relay = ?1, mirror_cursor = 0, mirror_end = 0,
                       forwarded_upto = cursor WHERE id = ?2",
                    params![mirror.map(ToString::to_string), id],
                )
                .map_err(db("recording the log's mirror"))?;
            self.drive_in_tx(id)
        })
    }
}

impl Profile {
    /// The relays a group log lives on: its home relay, its mirror if it has one, and whether
    /// this device is the one that keeps the mirror in the home relay's order.
    ///
    /// # Errors
    /// For a log this profile does not read; database failures.
    pub fn log_copies(&self, log_id: &[u8; 32]) -> Result<LogCopies, ProfileError> {
        let id = self
            .group_for_log(log_id)?
            .ok_or_else(|| ProfileError::NoContact("that log".to_owned()))?;
        let row = self.group_row(id)?;
        Ok(LogCopies {
            keeper: self.keeps_mirror(id)?,
            home: row.log_relay,
            mirror: row.mirror_relay,
        })
    }

    /// The same post, for a group log's mirror, when the item is for a log's home relay and
    /// the log has a mirror: the device that keeps the mirror carries it home (a device that
    /// cannot reach the home relay still gets its messages and changes into the log's order).
    ///
    /// # Errors
    /// On database failure.
    pub fn via_mirror(
        &self,
        item: &crate::profile::OutboxItem,
    ) -> Result<Option<crate::profile::OutboxItem>, ProfileError> {
        // A post carried for another device waits for the home relay: back on the mirror it
        // would count as carried (the relay keeps one copy per id) and be lost.
        let mirror: Option<(String, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT g.mirror_relay, g.log_cap FROM groups g, outbox o
                 WHERE o.id = ?3 AND o.carried = 0
                   AND g.log_id = ?1 AND g.log_relay = ?2 AND g.mirror_relay IS NOT NULL",
                params![item.mailbox.as_slice(), item.relay, item.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("finding a log's mirror"))?;
        let Some((relay, cap)) = mirror else {
            return Ok(None);
        };
        let envelope = Envelope {
            kind: Some(Kind::ForHome(ForHome {
                message_id: item.message_id.to_vec(),
                payload: item.payload.clone(),
            })),
        };
        if envelope.encoded_len() > pigeon_wire::MAX_CIPHERTEXT {
            return Ok(None);
        }
        Ok(Some(crate::profile::OutboxItem {
            relay,
            sender_cap: key32(&cap, "log capability")?,
            message_id: derived_id(b"pigeon mirror up", &item.message_id),
            payload: envelope.encode_to_vec(),
            ..item.clone()
        }))
    }
}

/// Where a group log lives ([`Profile::log_copies`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogCopies {
    /// The home relay: the one that orders the log.
    pub home: String,
    /// The mirror relay, if the log has one.
    pub mirror: Option<String>,
    /// This device keeps the mirror (an admin's device).
    pub keeper: bool,
}

/// Most posts one device holds to carry to one log's home relay for others.
const MAX_CARRIED: i64 = 1_000;

/// A relay message id derived from another, the same on every device.
fn derived_id(label: &[u8], message_id: &[u8]) -> [u8; 16] {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(message_id);
    let full: [u8; 32] = h.finalize().into();
    let mut id = [0; 16];
    id.copy_from_slice(&full[..16]);
    id
}

/// A mirror relay as a welcome carries it.
fn mirror_payload(mirror: Option<&str>) -> Result<Vec<u8>, ProfileError> {
    mirror
        .map(|m| crate::profile::parse_stored_relay(m).map(|l| l.to_payload().encode_to_vec()))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A mirror relay from a welcome or a log message, as a group row keeps it.
fn mirror_from_payload(bytes: &[u8]) -> Result<Option<String>, ProfileError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    RelayLink::from_payload_bytes(bytes)
        .map(|l| Some(l.to_string()))
        .map_err(|e| peer("log mirror", &format!("its relay is invalid: {e}")))
}

impl Profile {
    /// What a line that came through the log (a text, or a file with its caption) is for the
    /// front ends: nothing new when `line` is `None` (it was there already); in a conversation
    /// of two, the contact's message (which gets a receipt), unless one of this person's own
    /// devices wrote it.
    fn line_arrived(
        &self,
        row: &GroupRow,
        line: Option<i64>,
        from_me: bool,
        content_id: &[u8],
    ) -> Result<Vec<Handled>, ProfileError> {
        let Some(line) = line else {
            return Ok(vec![Handled::Duplicate]);
        };
        let m = self.group_message(line)?;
        // A message of this person's own is not acknowledged to anyone.
        if row.direct && !from_me {
            return Ok(vec![self.conversation_content(
                row,
                Handled::Group(m),
                content_id,
            )?]);
        }
        Ok(vec![Handled::Group(m)])
    }

    /// Keeps a part of a log entry too large for one relay message; returns the whole entry
    /// (an encoded envelope, never itself in parts) when this part completes it.
    fn entry_part(&self, row: &GroupRow, part: &Part) -> Result<Option<Vec<u8>>, ProfileError> {
        if part.last.len() != 16
            || part.parts < 2
            || part.parts > MAX_ENTRY_PARTS
            || part.part >= part.parts
        {
            return Err(peer("log entry part", "its numbers or id are out of range"));
        }
        let log = row.log_id.as_slice();
        let known: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM entry_parts WHERE log_id = ?1 AND last = ?2",
                params![log, part.last],
                |r| r.get(0),
            )
            .map_err(db("reading parts"))?;
        if !known {
            // A few entries in progress at most: the oldest ones (from a member who never sent
            // the rest) go.
            self.conn
                .execute(
                    "DELETE FROM entry_parts WHERE log_id = ?1 AND last IN (
                       SELECT last FROM entry_parts WHERE log_id = ?1 GROUP BY last
                       ORDER BY min(stored_at) DESC LIMIT -1 OFFSET ?2)",
                    params![log, MAX_ENTRIES_IN_PARTS - 1],
                )
                .map_err(db("dropping old parts"))?;
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO entry_parts (log_id, last, part, parts, bytes, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![log, part.last, part.part, part.parts, part.bytes, now_ms()],
            )
            .map_err(db("keeping a part"))?;
        let have: Vec<(u32, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT parts, bytes FROM entry_parts WHERE log_id = ?1 AND last = ?2
                     ORDER BY part",
                )
                .map_err(db("reading parts"))?;
            let rows = stmt
                .query_map(params![log, part.last], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("reading parts"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("reading parts"))?
        };
        if have.iter().any(|(n, _)| *n != part.parts) {
            self.conn
                .execute(
                    "DELETE FROM entry_parts WHERE log_id = ?1 AND last = ?2",
                    params![log, part.last],
                )
                .map_err(db("dropping parts"))?;
            return Err(peer(
                "log entry part",
                "its parts disagree on how many there are",
            ));
        }
        if u32::try_from(have.len()).unwrap_or(u32::MAX) < part.parts {
            return Ok(None);
        }
        self.conn
            .execute(
                "DELETE FROM entry_parts WHERE log_id = ?1 AND last = ?2",
                params![log, part.last],
            )
            .map_err(db("reading parts"))?;
        let whole: Vec<u8> = have.into_iter().flat_map(|(_, b)| b).collect();
        if matches!(
            Envelope::decode(whole.as_slice()).map(|e| e.kind),
            Ok(Some(Kind::Part(_)))
        ) {
            return Err(peer("log entry part", "an entry in parts holds parts"));
        }
        Ok(Some(whole))
    }

    /// An entry posted on a log's mirror directly: true when it moves the log's home there
    /// (this device's own move, or an admin's). Anything else leaves no trace.
    fn mirror_native(
        &self,
        row: &GroupRow,
        message_id: &[u8],
        ct: &[u8],
    ) -> Result<bool, ProfileError> {
        if row.pending_move.as_deref() == Some(message_id) {
            return Ok(true);
        }
        // Whatever else opening it changed is undone.
        let moved = self.savepoint(|| {
            let mls = self.mls();
            let mut group = Group::load(&mls, &row.group_id)?;
            let roster = group.roster()?;
            let moved = match group.open(&mls, ct)? {
                Opened::Content {
                    content, sender, ..
                } => {
                    matches!(content.body, Some(Body::LogMirror(m)) if m.moved)
                        && roster.is_admin(&sender)
                }
                _ => false,
            };
            if moved {
                Ok(())
            } else {
                Err(ProfileError::NotNow("not a move".to_owned()))
            }
        })?;
        Ok(moved.is_ok())
    }

    /// The log's home moved to its mirror at the mirror's position `at`: the mirror is the
    /// home from there on (read from there), posts waiting for the old home go to the new one.
    fn home_moved(&self, row: &GroupRow, at: i64) -> Result<Vec<Handled>, ProfileError> {
        let Some(new_home) = &row.mirror_relay else {
            return Ok(vec![Handled::Duplicate]);
        };
        self.conn
            .execute(
                "UPDATE outbox SET relay = ?1 WHERE mailbox_id = ?2 AND relay = ?3 AND carried = 0",
                params![new_home, row.log_id.as_slice(), row.log_relay],
            )
            .map_err(db("moving the log's home"))?;
        self.conn
            .execute(
                "DELETE FROM outbox WHERE mailbox_id = ?1 AND carried = 1",
                [row.log_id.as_slice()],
            )
            .map_err(db("moving the log's home"))?;
        self.conn
            .execute(
                "UPDATE groups SET log_relay = ?1, mirror_relay = NULL, cursor = ?2,
                   mirror_cursor = 0, mirror_end = 0, forwarded_upto = 0, pending_move = NULL,
                   mirror_rotation = NULL, mirror_key = NULL WHERE id = ?3",
                params![new_home, at, row.id],
            )
            .map_err(db("moving the log's home"))?;
        let me = self.name()?;
        let host = crate::profile::parse_stored_relay(new_home)
            .map(|l| {
                l.routes()
                    .first()
                    .map_or_else(String::new, |r| r.to_string())
            })
            .unwrap_or_default();
        let m = self.notice(
            row.id,
            &me,
            false,
            &format!(
                "the {}'s home relay is gone: it lives on its mirror from now on ({host}); \
                 add a new mirror with `pigeon group mirror`",
                if row.direct { "conversation" } else { "group" }
            ),
        )?;
        Ok(vec![Handled::Group(m), Handled::LogKeysChanged])
    }

    /// A group log's id, owner key and member capability now, and its home relay: what
    /// making a copy of it on another relay takes.
    ///
    /// # Errors
    /// For an unknown group; database failures.
    pub fn log_keys(
        &self,
        id: GroupId,
    ) -> Result<([u8; 32], SigningKey, [u8; 32], RelayLink), ProfileError> {
        let row = self.group_row(id)?;
        let owner = SigningKey::from_bytes(&key32(&row.log_owner, "log owner")?);
        let home = crate::profile::parse_stored_relay(&row.log_relay)?;
        Ok((row.log_id, owner, row.log_cap, home))
    }

    /// Moves a group log's home to its mirror, for a home relay that is gone for everyone:
    /// posted on the mirror, where every member reads it at the same place. An admin's
    /// decision: a member who can still reach the old home and reads only there is left on it.
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] for a member who is not an admin or a log without a mirror.
    pub fn move_home(&self, id: GroupId) -> Result<(), ProfileError> {
        self.tx(|| {
            let row = self.group_row(id)?;
            let Some(mirror) = &row.mirror_relay else {
                return Err(ProfileError::NotNow(
                    "this group's log has no mirror to move to".to_owned(),
                ));
            };
            if row.state != STATE_ACTIVE {
                return Err(ProfileError::NotNow(
                    "this device is not an active member of the group".to_owned(),
                ));
            }
            let mls = self.mls();
            let identity = Identity::load(&mls, &row.signature_key)?;
            let mut group = Group::load(&mls, &row.group_id)?;
            if !group.roster()?.is_admin(&row.signature_key) {
                return Err(ProfileError::NotNow(
                    "only an admin moves the group's home".to_owned(),
                ));
            }
            let content = new_content(Body::LogMirror(LogMirror {
                relay: Vec::new(),
                moved: true,
                key: Vec::new(),
            }))?;
            let ct = group.seal(&mls, &identity, &content)?;
            let mid = self.queue_with_id(
                mirror,
                &row.log_id,
                &row.log_cap,
                &Envelope {
                    kind: Some(Kind::Mls(ct)),
                },
                random()?,
            )?;
            self.conn
                .execute(
                    "UPDATE groups SET pending_move = ?1 WHERE id = ?2",
                    params![mid.as_slice(), id],
                )
                .map_err(db("moving the log's home"))?;
            Ok(())
        })
    }

    /// Keeps the key a group log's mirror's entries are authenticated with (empty: none).
    fn keep_mirror_key(&self, id: GroupId, key: &[u8]) -> Result<(), ProfileError> {
        let key = match key.len() {
            0 => None,
            32 => Some(key),
            _ => return Err(peer("log mirror", "its key is not 32 bytes")),
        };
        self.conn
            .execute(
                "UPDATE groups SET mirror_key = ?1 WHERE id = ?2",
                params![key, id],
            )
            .map_err(db("keeping the mirror's key"))?;
        Ok(())
    }
}

/// The tag a keeper puts on an entry it forwards: keyed BLAKE2s-256 over its home position,
/// message id and bytes.
fn forwarded_mac(key: &[u8], f: &Forwarded) -> Result<[u8; 32], ProfileError> {
    use blake2::digest::{FixedOutput, Update};
    let mut mac = <blake2::Blake2sMac256 as blake2::digest::KeyInit>::new_from_slice(key)
        .map_err(|_| ProfileError::Invalid("a mirror key is not 32 bytes".to_owned()))?;
    mac.update(b"pigeon mirror entry v1");
    mac.update(&f.home_seq.to_be_bytes());
    mac.update(
        &u32::try_from(f.message_id.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    mac.update(&f.message_id);
    mac.update(&f.payload);
    Ok(mac.finalize_fixed().into())
}

/// True when a forwarded entry carries the tag of the group's mirror key.
fn forwarded_verifies(row: &GroupRow, f: &Forwarded) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(key) = &row.mirror_key else {
        return false;
    };
    match forwarded_mac(key, f) {
        Ok(expected) => f.mac.len() == 32 && bool::from(expected.ct_eq(f.mac.as_slice())),
        Err(_) => false,
    }
}

/// Whether this device (`me`) answers a request to take back or restore the device `key`: an
/// admin's device does, and every member's when that device was the group's only admin (the
/// log decides which commit counts).
fn takes_back(roster: &Roster, me: &[u8], key: &[u8]) -> bool {
    roster.is_admin(me) || !roster.members.iter().any(|m| m.admin && m.key != key)
}
