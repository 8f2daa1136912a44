//! Backups (issue #16): what `pigeon backup` puts in the sealed file
//! ([`crate::backup`]) and how `pigeon restore` brings a profile back from it.
//!
//! A backup holds no key of the device that made it: no MLS state, no signature key, no
//! ticket. It holds the profile's name and settings, each conversation's place (its log's
//! relay, id and capability, this device's person id) and transcript, and, per conversation,
//! a fresh **restore secret** ([`pigeon_e2ee::RestoreSecret`]). Before the file is written the
//! device refreshes its leaf in each conversation with the secret's commitment in it, and it
//! forgets the secret once the file is on disk: only the file can use it.
//!
//! A restore makes a new profile with new keys everywhere. For each conversation it posts to
//! the log a key package under a new signature key that reveals the restore secret, sealed
//! under the commitment (which only the group's members know). Any member checks it against
//! the tree and commits the swap: the old device's leaf out, the new one in under the old
//! roster entry ([`pigeon_e2ee::Change::Restore`]). The Welcome comes back through the log the
//! way a device that fell behind is taken back. So nobody's old key is reused, a thief of the
//! device's state cannot restore it, and a newer backup retires the older one (its secret no
//! longer opens anything).

use super::{
    BACKUP, GroupRow, Intent, NewGroup, RejoinRequest, STATE_ACTIVE, STATE_GONE, STATE_LEAVING,
    STATE_LOST, key32, seal,
};
use crate::ids::GroupId;
use crate::invite::check_name;
use crate::profile::{Passphrase, Profile, ProfileError, db, now_ms};
use pigeon_e2ee::content::envelope::Kind;
use pigeon_e2ee::{Group, Identity, LeafExtras, RestoreSecret, Suite};
use pigeon_transport::{ProxyLink, RelayLink};
use prost::Message as _;
use rusqlite::{OptionalExtension, params};
use std::path::Path;

/// The version of the contents inside the sealed container.
const CONTENTS_FORMAT: u32 = 1;
/// `groups.restoring`: a conversation a restore asked to be let into…
const RESTORING: i64 = 1;
/// …or one it brought back as history only.
const RESTORED_AS_HISTORY: i64 = 2;
/// Longest message text a backup may hold (a bound on a crafted file, far above any message).
const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Clone, PartialEq, prost::Message)]
struct Contents {
    #[prost(uint32, tag = "1")]
    format: u32,
    #[prost(int64, tag = "2")]
    made_at: i64,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    device: String,
    /// The relay this profile makes new things on, then the others in order.
    #[prost(string, repeated, tag = "5")]
    relays: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    proxies: Vec<SavedProxy>,
    #[prost(message, repeated, tag = "7")]
    conversations: Vec<Conversation>,
    #[prost(message, repeated, tag = "8")]
    verified: Vec<VerifiedKey>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SavedProxy {
    #[prost(string, tag = "1")]
    link: String,
    #[prost(bool, tag = "2")]
    always: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VerifiedKey {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    verified_at: i64,
    /// The conversation (index in `conversations`) it was verified in, and under which name.
    #[prost(uint32, optional, tag = "3")]
    conversation: Option<u32>,
    #[prost(string, optional, tag = "4")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Conversation {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    group_id: Vec<u8>,
    #[prost(uint32, tag = "3")]
    suite: u32,
    #[prost(bytes = "vec", tag = "4")]
    person: Vec<u8>,
    #[prost(string, tag = "5")]
    log_relay: String,
    #[prost(bytes = "vec", tag = "6")]
    log_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    log_cap: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    log_owner: Vec<u8>,
    #[prost(int64, tag = "9")]
    cursor: i64,
    #[prost(bool, tag = "10")]
    direct: bool,
    #[prost(bool, tag = "11")]
    devices: bool,
    #[prost(string, optional, tag = "12")]
    mirror_relay: Option<String>,
    #[prost(int64, tag = "13")]
    mirror_cursor: i64,
    #[prost(bytes = "vec", optional, tag = "14")]
    mirror_key: Option<Vec<u8>>,
    /// Empty: this conversation comes back as history only.
    #[prost(bytes = "vec", tag = "15")]
    restore_secret: Vec<u8>,
    /// The contact's local name (a conversation of two).
    #[prost(string, optional, tag = "16")]
    contact: Option<String>,
    #[prost(bool, tag = "17")]
    named_by_user: bool,
    #[prost(int64, tag = "18")]
    created_at: i64,
    #[prost(message, repeated, tag = "19")]
    messages: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(int64, optional, tag = "1")]
    seq: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "2")]
    sender_key: Option<Vec<u8>>,
    #[prost(string, tag = "3")]
    sender: String,
    #[prost(bool, tag = "4")]
    outgoing: bool,
    #[prost(bool, tag = "5")]
    notice: bool,
    #[prost(bytes = "vec", tag = "6")]
    uid: Vec<u8>,
    #[prost(string, tag = "7")]
    body: String,
    #[prost(int64, tag = "8")]
    sent_at: i64,
    #[prost(int64, tag = "9")]
    stored_at: i64,
    #[prost(bool, tag = "10")]
    read: bool,
    #[prost(bool, tag = "11")]
    delivered: bool,
}

/// What went into a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupSummary {
    /// Conversations in the file.
    pub conversations: usize,
    /// Of those, the ones a restore rejoins (the others come back as history only).
    pub restorable: usize,
    /// Active conversations that are in the file as history only: the key refresh that
    /// makes them restorable has not reached their log yet (by name).
    pub not_restorable: Vec<String>,
    /// Transcript lines.
    pub messages: usize,
    /// Conversations of the first design (before groups) left out.
    pub left_out: usize,
}

/// Where a restored profile stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreProgress {
    /// Conversations asking to let this device in.
    pub waiting: Vec<String>,
    /// Conversations this device is back in.
    pub back: usize,
    /// Conversations restored as history only.
    pub history_only: usize,
}

impl Profile {
    /// Starts a backup: a fresh restore secret per active conversation, kept until the file
    /// is written, and a key refresh that puts its commitment into this device's leaf (sent
    /// at the next sync). Returns the number of conversations.
    ///
    /// # Errors
    /// On database failure.
    pub fn prepare_backup(&self) -> Result<usize, ProfileError> {
        self.tx(|| {
            let rows = self.backup_rows(true)?;
            let mls = self.mls();
            for row in &rows {
                let secret = RestoreSecret::generate(&mls)?;
                let commitment = secret.commitment();
                self.conn
                    .execute(
                        "INSERT OR REPLACE INTO backup_secrets (group_row, secret, commitment, made_at)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![row.id, secret.secret().as_slice(), commitment.as_slice(), now_ms()],
                    )
                    .map_err(db("keeping a backup's secret"))?;
                // An older backup's refresh still waiting is replaced by this one.
                self.drop_intents_of_kind(row.id, BACKUP)?;
                self.add_intent(
                    row.id,
                    &Intent {
                        kind: BACKUP,
                        restore_commitment: commitment.to_vec(),
                        ..Intent::default()
                    },
                )?;
            }
            Ok(rows.len())
        })
    }

    /// Conversations whose leaf does not yet carry the commitment of the backup under way.
    ///
    /// # Errors
    /// On database failure.
    pub fn backup_waiting(&self) -> Result<Vec<String>, ProfileError> {
        let mut out = Vec::new();
        for row in self.backup_rows(true)? {
            if self.backup_secret(&row)?.is_none() {
                out.push(self.conversation_name(&row)?);
            }
        }
        Ok(out)
    }

    /// The backup's contents (for [`crate::backup::seal`]): every conversation with its
    /// transcript, with the restore secret of each whose leaf carries its commitment.
    ///
    /// # Errors
    /// On database failure.
    pub fn export_backup(&self) -> Result<(Vec<u8>, BackupSummary), ProfileError> {
        let (name, device) = (self.name()?, self.device_name()?);
        // The first is the one new things are made on, as `relays` lists them.
        let relays = self.relays()?.iter().map(ToString::to_string).collect();
        let proxies = self
            .proxies()?
            .into_iter()
            .map(|p| SavedProxy {
                link: p.link.to_string(),
                always: p.always,
            })
            .collect();
        let mut summary = BackupSummary::default();
        let mut conversations = Vec::new();
        let mut rows_by_id = Vec::new();
        for row in self.backup_rows(false)? {
            let secret = if row.state == STATE_ACTIVE {
                self.backup_secret(&row)?
            } else {
                None
            };
            if row.state == STATE_ACTIVE && secret.is_none() {
                summary.not_restorable.push(self.conversation_name(&row)?);
            }
            let c = self.export_conversation(&row, secret)?;
            summary.restorable += usize::from(!c.restore_secret.is_empty());
            summary.messages += c.messages.len();
            rows_by_id.push(row.id);
            conversations.push(c);
        }
        summary.conversations = conversations.len();
        summary.left_out = usize::try_from(
            self.conn
                .query_row(
                    "SELECT count(*) FROM contacts WHERE conversation IS NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db("counting contacts"))?,
        )
        .unwrap_or(0);
        let verified = {
            let mut stmt = self
                .conn
                .prepare("SELECT key, verified_at, group_row, name FROM verified")
                .map_err(db("reading verified keys"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<GroupId>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .map_err(db("reading verified keys"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(db("reading verified keys"))?
                .into_iter()
                .map(|(key, verified_at, group, name)| VerifiedKey {
                    key,
                    verified_at,
                    conversation: group
                        .and_then(|g| rows_by_id.iter().position(|id| *id == g))
                        .and_then(|i| u32::try_from(i).ok()),
                    name,
                })
                .collect()
        };
        let contents = Contents {
            format: CONTENTS_FORMAT,
            made_at: now_ms(),
            name,
            device,
            relays,
            proxies,
            conversations,
            verified,
        };
        Ok((contents.encode_to_vec(), summary))
    }

    /// The backup file is written: this device forgets the restore secrets (only the file can
    /// use them now).
    ///
    /// # Errors
    /// On database failure.
    pub fn backup_written(&self) -> Result<(), ProfileError> {
        self.conn
            .execute("DELETE FROM backup_secrets", [])
            .map_err(db("forgetting a backup's secrets"))?;
        Ok(())
    }

    /// Makes a profile in `dir` from a backup's contents (as [`crate::backup::open`] gave
    /// them): new keys throughout, each conversation asking its log to let this device take
    /// the place of the one that made the backup. All of it, or nothing: a failure leaves no
    /// profile behind.
    ///
    /// # Errors
    /// [`ProfileError::Exists`] if `dir` holds a profile; [`ProfileError::Invalid`] with what
    /// is wrong for contents that do not decode or hold an impossible value.
    pub fn restore_backup(
        dir: &Path,
        passphrase: &Passphrase,
        contents: &[u8],
    ) -> Result<(Self, RestoreProgress), ProfileError> {
        let contents = Contents::decode(contents)
            .map_err(|e| bad(format!("its contents do not decode ({e})")))?;
        if contents.format != CONTENTS_FORMAT {
            return Err(bad(format!(
                "its contents are of format {}; this build reads {CONTENTS_FORMAT}",
                contents.format
            )));
        }
        check_name(&contents.name).map_err(|e| bad(format!("its name: {e}")))?;
        let relays = contents
            .relays
            .iter()
            .map(|r| RelayLink::parse(r).map_err(|e| bad(format!("a relay link in it: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = relays.first() else {
            return Err(bad("it names no relay".to_owned()));
        };
        if dir.join(crate::profile::DB_FILE).exists() {
            return Err(ProfileError::Exists(dir.to_owned()));
        }
        // Made beside `dir` and moved into it whole: a restore cut short (a crash, kill -9)
        // leaves no half-made profile where the next attempt, or `pigeon`, would find it.
        let staging = staging_dir(dir)?;
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io("clearing an earlier restore"))?;
        }
        let made = Self::create(&staging, passphrase, &contents.name, first).and_then(|p| {
            let progress = p.import(&contents, &relays)?;
            Ok((p, progress))
        });
        let progress = match made {
            Ok((profile, progress)) => {
                drop(profile);
                progress
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        crate::profile::create_private_dir(dir)?;
        let db_file = crate::profile::DB_FILE;
        std::fs::rename(staging.join(db_file), dir.join(db_file))
            .map_err(io("moving the restored profile into place"))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("moving the restored profile into place"))?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok((Self::open(dir, passphrase)?, progress))
    }

    fn import(
        &self,
        contents: &Contents,
        relays: &[RelayLink],
    ) -> Result<RestoreProgress, ProfileError> {
        self.tx(|| {
            crate::device_link::check_device_name(&contents.device)
                .map_err(|e| bad(format!("its device name: {e}")))?;
            self.conn
                .execute(
                    "UPDATE profile SET device = ?1 WHERE id = 1",
                    [&contents.device],
                )
                .map_err(db("restoring the profile"))?;
            for r in relays.iter().skip(1) {
                self.conn
                    .execute(
                        "INSERT OR IGNORE INTO relays (link, added_at) VALUES (?1, ?2)",
                        params![r.to_string(), now_ms()],
                    )
                    .map_err(db("restoring relays"))?;
            }
            for p in &contents.proxies {
                let link = ProxyLink::parse(&p.link)
                    .map_err(|e| bad(format!("a proxy link in it: {e}")))?;
                self.conn
                    .execute(
                        "INSERT OR IGNORE INTO proxies (link, always, added_at) VALUES (?1, ?2, ?3)",
                        params![link.to_string(), p.always, now_ms()],
                    )
                    .map_err(db("restoring proxies"))?;
            }
            let mut ids = Vec::new();
            let mut progress = RestoreProgress::default();
            for c in &contents.conversations {
                let (id, restoring) = self.import_conversation(c)?;
                if restoring {
                    progress.waiting.push(c.contact.clone().unwrap_or(c.name.clone()));
                } else {
                    progress.history_only += 1;
                }
                ids.push(id);
            }
            for v in &contents.verified {
                let group = v
                    .conversation
                    .and_then(|i| ids.get(usize::try_from(i).ok()?).copied());
                self.conn
                    .execute(
                        "INSERT OR REPLACE INTO verified (key, verified_at, group_row, name)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![v.key, v.verified_at, group, v.name],
                    )
                    .map_err(db("restoring verified keys"))?;
            }
            // The person's other devices are in these conversations already, or are not
            // brought in by a restore.
            self.conn
                .execute("UPDATE profile SET bring_devices = 0 WHERE id = 1", [])
                .map_err(db("restoring the profile"))?;
            Ok(progress)
        })
    }

    fn import_conversation(&self, c: &Conversation) -> Result<(GroupId, bool), ProfileError> {
        let what = |field: &str| bad(format!("a conversation's {field} is malformed"));
        let suite = u16::try_from(c.suite)
            .ok()
            .and_then(Suite::from_code)
            .ok_or_else(|| what("suite"))?;
        let log_relay = RelayLink::parse(&c.log_relay).map_err(|_| what("log relay"))?;
        let log_id = key32(&c.log_id, "backup").map_err(|_| what("log id"))?;
        let log_cap = key32(&c.log_cap, "backup").map_err(|_| what("log capability"))?;
        let mirror_relay = c
            .mirror_relay
            .as_deref()
            .map(|m| RelayLink::parse(m).map(|r| r.to_string()))
            .transpose()
            .map_err(|_| what("mirror relay"))?;
        if c.group_id.is_empty() || c.group_id.len() > 256 || c.person.len() > 64 {
            return Err(what("group id"));
        }
        if c.name.chars().count() > pigeon_e2ee::roster::MAX_GROUP_NAME_CHARS
            || c.name.chars().any(char::is_control)
        {
            return Err(what("name"));
        }
        if self.group_for_log(&log_id)?.is_some() {
            return Err(bad("it lists one conversation twice".to_owned()));
        }
        let secret = match c.restore_secret.len() {
            0 => None,
            _ => Some(RestoreSecret::from_secret(
                key32(&c.restore_secret, "backup").map_err(|_| what("restore secret"))?,
            )),
        };
        let mls = self.mls();
        let identity = Identity::generate(&mls)?;
        let id = self.insert_group(&NewGroup {
            name: &c.name,
            group_id: c.group_id.clone(),
            signature_key: identity.public_key(),
            suite,
            person: &c.person,
            log_relay: log_relay.to_string(),
            log_id: &log_id,
            log_cap: &log_cap,
            log_owner: &c.log_owner,
            cursor: c.cursor.max(0),
            direct: c.direct,
            mirror_relay,
        })?;
        self.conn
            .execute(
                "UPDATE groups SET devices = ?1, mirror_cursor = ?2, mirror_key = ?3,
                   created_at = ?4, state = ?5 WHERE id = ?6",
                params![
                    c.devices,
                    c.mirror_cursor.max(0),
                    c.mirror_key,
                    c.created_at,
                    if secret.is_some() {
                        STATE_LOST
                    } else {
                        STATE_GONE
                    },
                    id
                ],
            )
            .map_err(db("restoring a conversation"))?;
        if let Some(contact) = &c.contact {
            check_name(contact).map_err(|e| bad(format!("a contact's name: {e}")))?;
            let local = self.unique_name(contact)?;
            self.conn
                .execute(
                    "INSERT INTO contacts (name, named_by_user, suite, conversation, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![local, c.named_by_user, suite.code(), id, c.created_at],
                )
                .map_err(db("restoring a contact"))?;
        }
        for line in &c.messages {
            if line.body.len() > MAX_BODY_BYTES || line.uid.len() > 64 {
                return Err(what("message"));
            }
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO group_messages (group_row, seq, sender_key, sender,
                       outgoing, notice, uid, body, sent_at, stored_at, read, delivered)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        id,
                        line.seq,
                        line.sender_key,
                        line.sender,
                        line.outgoing,
                        line.notice,
                        line.uid,
                        line.body,
                        line.sent_at,
                        line.stored_at,
                        line.read,
                        line.delivered
                    ],
                )
                .map_err(db("restoring a message"))?;
        }
        let me = self.name()?;
        let Some(secret) = secret else {
            self.conn
                .execute(
                    "UPDATE groups SET restoring = ?1 WHERE id = ?2",
                    params![RESTORED_AS_HISTORY, id],
                )
                .map_err(db("restoring a conversation"))?;
            self.notice(
                id,
                &me,
                false,
                "restored from a backup as history only: the backup could not bring this device \
                 back into it (ask for a new invitation)",
            )?;
            return Ok((id, false));
        };
        // The request: a key package under the new key, revealing the backup's secret, sealed
        // under its commitment (which only the group's members know).
        let (key_package, ticket) = identity.key_package_with_ticket(
            &mls,
            suite,
            &LeafExtras {
                restore_reveal: Some(&secret),
                ..LeafExtras::default()
            },
        )?;
        self.keep_ticket(&ticket)?;
        let commitment = secret.commitment();
        let sealed = seal(
            &commitment,
            b"restore",
            &RejoinRequest { key_package }.encode_to_vec(),
        )?;
        self.conn
            .execute(
                "UPDATE groups SET rejoin_secret = ?1, pending_ticket = ?2, restoring = ?3
                 WHERE id = ?4",
                params![
                    secret.secret().as_slice(),
                    ticket.commitment().as_slice(),
                    RESTORING,
                    id
                ],
            )
            .map_err(db("restoring a conversation"))?;
        let row = self.group_row(id)?;
        self.queue_log(&row, Kind::Rejoin(sealed))?;
        self.notice(
            id,
            &me,
            false,
            "restored from a backup: asked the others to let this device take the place of the \
             one that made the backup (any of their devices does, when it next reads)",
        )?;
        Ok((id, true))
    }

    /// Where a restore stands: conversations still waiting to let this device in.
    ///
    /// # Errors
    /// On database failure.
    pub fn restore_progress(&self) -> Result<RestoreProgress, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, state, rejoin_secret IS NOT NULL, restoring FROM groups
                 WHERE restoring > 0",
            )
            .map_err(db("reading a restore"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, GroupId>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db("reading a restore"))?
            .collect::<Result<Vec<(GroupId, i64, bool, i64)>, _>>()
            .map_err(db("reading a restore"))?;
        let mut out = RestoreProgress::default();
        for (id, state, asking, restoring) in rows {
            match (restoring, state) {
                (RESTORED_AS_HISTORY, _) => out.history_only += 1,
                (_, STATE_LOST) if asking => {
                    out.waiting
                        .push(self.conversation_name(&self.group_row(id)?)?);
                }
                (_, STATE_ACTIVE | STATE_LEAVING) => out.back += 1,
                // Let in, then left or removed since.
                _ => {}
            }
        }
        Ok(out)
    }

    /// Stores `per_conversation` lines of read history in every active conversation,
    /// alternating between this person and the others, the way received and sent lines are
    /// stored: for benchmarks of what grows with history (`pigeon bench backup`), where
    /// sending 100,000 real messages first would measure the sending.
    ///
    /// # Errors
    /// On database failure.
    #[doc(hidden)]
    pub fn seed_history(&self, per_conversation: usize) -> Result<usize, ProfileError> {
        let me = self.name()?;
        self.tx(|| {
            let rows = self.backup_rows(true)?;
            let mut stmt = self
                .conn
                .prepare(
                    "INSERT INTO group_messages (group_row, seq, sender, outgoing, notice, uid,
                       body, sent_at, stored_at, read, delivered)
                     VALUES (?1, NULL, ?2, ?3, 0, ?4, ?5, ?6, ?6, 1, ?3)",
                )
                .map_err(db("seeding history"))?;
            let now = now_ms();
            for row in &rows {
                for i in 0..per_conversation {
                    let outgoing = i % 2 == 0;
                    let uid: [u8; 16] = crate::profile::random()?;
                    let sender = if outgoing { me.as_str() } else { "them" };
                    let at = now - i64::try_from(per_conversation - i).unwrap_or(0) * 1000;
                    stmt.execute(params![
                        row.id,
                        sender,
                        outgoing,
                        uid.as_slice(),
                        format!("line {i} of {}, about as long as a chat message", row.id.0),
                        at
                    ])
                    .map_err(db("seeding history"))?;
                }
            }
            Ok(rows.len() * per_conversation)
        })
    }

    /// Conversations a backup covers: with `active_only`, those a restore can rejoin; else
    /// every one with a log (history of the others included).
    fn backup_rows(&self, active_only: bool) -> Result<Vec<GroupRow>, ProfileError> {
        let ids: Vec<GroupId> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM groups WHERE ?1 = 0 OR state = ?2 ORDER BY id")
                .map_err(db("listing conversations"))?;
            stmt.query_map(params![active_only, STATE_ACTIVE], |r| r.get(0))
                .map_err(db("listing conversations"))?
                .collect::<Result<_, _>>()
                .map_err(db("listing conversations"))?
        };
        ids.into_iter().map(|id| self.group_row(id)).collect()
    }

    /// The restore secret of the backup under way, if this device's leaf carries it.
    fn backup_secret(&self, row: &GroupRow) -> Result<Option<RestoreSecret>, ProfileError> {
        let kept: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT secret, commitment FROM backup_secrets WHERE group_row = ?1",
                [row.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading a backup's secret"))?;
        let Some((secret, commitment)) = kept else {
            return Ok(None);
        };
        let group = match Group::load(&self.mls(), &row.group_id) {
            Ok(g) => g,
            Err(pigeon_e2ee::E2eeError::UnknownGroup) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if group.own_restore().map(|c| c.to_vec()) != Some(commitment) {
            return Ok(None);
        }
        Ok(Some(RestoreSecret::from_secret(key32(&secret, "backup")?)))
    }

    fn export_conversation(
        &self,
        row: &GroupRow,
        secret: Option<RestoreSecret>,
    ) -> Result<Conversation, ProfileError> {
        let (person, created_at, mirror_key): (Vec<u8>, i64, Option<Vec<u8>>) = self
            .conn
            .query_row(
                "SELECT person, created_at, mirror_key FROM groups WHERE id = ?1",
                [row.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(db("reading a conversation"))?;
        let contact: Option<(String, bool)> = self
            .conn
            .query_row(
                "SELECT name, named_by_user FROM contacts WHERE conversation = ?1",
                [row.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("reading a contact"))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, sender_key, sender, outgoing, notice, uid, body, sent_at, stored_at,
                        read, delivered
                 FROM group_messages WHERE group_row = ?1 ORDER BY id",
            )
            .map_err(db("reading messages"))?;
        let messages = stmt
            .query_map([row.id], |r| {
                Ok(Line {
                    seq: r.get(0)?,
                    sender_key: r.get(1)?,
                    sender: r.get(2)?,
                    outgoing: r.get(3)?,
                    notice: r.get(4)?,
                    uid: r.get(5)?,
                    body: r.get(6)?,
                    sent_at: r.get(7)?,
                    stored_at: r.get(8)?,
                    read: r.get(9)?,
                    delivered: r.get(10)?,
                })
            })
            .map_err(db("reading messages"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("reading messages"))?;
        Ok(Conversation {
            name: row.name.clone(),
            group_id: row.group_id.clone(),
            suite: u32::from(row.suite),
            person,
            log_relay: row.log_relay.clone(),
            log_id: row.log_id.to_vec(),
            log_cap: row.log_cap.to_vec(),
            log_owner: row.log_owner.clone(),
            cursor: row.cursor,
            direct: row.direct,
            devices: row.devices,
            mirror_relay: row.mirror_relay.clone(),
            mirror_cursor: row.mirror_cursor,
            mirror_key,
            restore_secret: secret.map(|s| s.secret().to_vec()).unwrap_or_default(),
            named_by_user: contact.as_ref().is_some_and(|c| c.1),
            contact: contact.map(|c| c.0),
            created_at,
            messages,
        })
    }

    /// A conversation as people call it: the contact's name, the group's, or "your devices".
    fn conversation_name(&self, row: &GroupRow) -> Result<String, ProfileError> {
        if row.devices {
            return Ok("the group of your devices".to_owned());
        }
        self.conversation_label(row.id)
    }

    fn drop_intents_of_kind(&self, id: GroupId, kind: u32) -> Result<(), ProfileError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, change FROM group_intents WHERE group_row = ?1")
            .map_err(db("reading group changes"))?;
        let intents = stmt
            .query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(db("reading group changes"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("reading group changes"))?;
        let pending: Option<i64> = self
            .conn
            .query_row(
                "SELECT pending_intent FROM groups WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(db("reading a group"))?;
        for (intent_id, bytes) in intents {
            let same = Intent::decode(bytes.as_slice()).is_ok_and(|i| i.kind == kind);
            // One already committed and waiting for the log's verdict stays: it is in flight.
            if same && Some(intent_id) != pending {
                self.drop_intent(intent_id)?;
            }
        }
        Ok(())
    }
}

fn bad(reason: String) -> ProfileError {
    ProfileError::Invalid(format!("the backup cannot be restored: {reason}"))
}

fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> ProfileError {
    move |e| ProfileError::Db {
        doing,
        reason: e.to_string(),
    }
}

/// Where a restore into `dir` is made before it is moved there: `.NAME.restoring` beside it.
fn staging_dir(dir: &Path) -> Result<std::path::PathBuf, ProfileError> {
    let name = dir.file_name().ok_or_else(|| {
        ProfileError::Invalid(format!(
            "{} is not a directory to restore into",
            dir.display()
        ))
    })?;
    Ok(dir.with_file_name(format!(".{}.restoring", name.to_string_lossy())))
}
