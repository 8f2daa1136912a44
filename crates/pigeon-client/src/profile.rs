//! The profile: one person's encrypted database and everything that happens to it without a
//! network.
//!
//! The database is SQLCipher (AES-256, key from the passphrase through SQLCipher's PBKDF2),
//! holding our tables and openmls's state side by side on one connection, so every operation
//! — decrypt a message and record it, encrypt one and queue it — is a single transaction:
//! either all of it happens or none of it does, whenever the process dies. Deleted rows are
//! overwritten (`secure_delete`), so keys an epoch change retires are gone from the file, not
//! just unlinked.
//!
//! The network side ([`crate::Client`]) moves bytes between this and relays: it queues through
//! [`Profile::compose`], sends what [`Profile::outbox`] holds, and hands each delivery to
//! [`Profile::handle_delivery`] before acknowledging it.

use crate::ids::ContactId;
use crate::invite::{Invite, Offer, check_name};
use pigeon_e2ee::content::{Receipt, Text, body::Body, envelope::Kind};
use pigeon_e2ee::{Content, CryptoProvider, E2eeError, Envelope, Group, Identity, Suite};
use pigeon_proto::auth::{self, SigningKey};
use pigeon_transport::RelayLink;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

mod groups;
mod receive;
mod schema;

pub use groups::{
    BackupSummary, DeviceInfo, DeviceLinkProgress, FILES_DIR, FIRST_MESSAGE_REFRESH_FROM, FileInfo,
    FileState, GROUP_REKEY_AFTER_MS, GROUP_REKEY_EVERY, GroupChange, GroupInfo, GroupMessage,
    LinkJoinProgress, LogCopies, LogInbox, MAX_LINKED_CONVERSATIONS, MemberInfo, PendingDownload,
    PendingRotation, PendingUpload, PreparedDeviceLink, PreparedGroupInvite, RestoreProgress,
    SafetyNumbers, device_label, is_picture, make_thumbnail, sniff_mime,
};

use schema::{CONTACT_QUERY_ALL, SCHEMA};

/// How a post goes into the outbox.
#[derive(Clone, Copy)]
enum Queued {
    /// A new post of this device's (its message id is new).
    New,
    /// A post several devices or copies may ask for: a message id already queued stays.
    Once,
    /// As `Once`, another device's post carried from a log's mirror to its home relay.
    Carried,
}

/// The database file inside a profile directory.
pub const DB_FILE: &str = "profile.db";
/// The committing side refreshes the group's keys after this many of its own messages.
pub const REKEY_EVERY: i64 = 50;
/// Delivered message ids are remembered this long (longer than a relay keeps a message).
const SEEN_DAYS: i64 = 60;
const SCHEMA_VERSION: i64 = 18;
/// Most (network, relay) pairs whose working route is remembered.
pub const ROUTE_MEMORY: i64 = 256;

/// A passphrase, wiped from memory when dropped and never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(…)")
    }
}

/// Why a profile operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// No profile in the directory.
    #[error("there is no profile in {0}: create one with `pigeon init`")]
    NotFound(PathBuf),
    /// A profile already exists.
    #[error("a profile already exists in {0}")]
    Exists(PathBuf),
    /// The passphrase does not open the database (or the file is not a profile).
    #[error(
        "the passphrase does not open the profile in {0} (or the file is not a Pigeonpost profile)"
    )]
    WrongPassphrase(PathBuf),
    /// The profile is from a newer version.
    #[error("the profile was written by a newer version of pigeon (schema {0}): update pigeon")]
    TooNew(i64),
    /// A file-system or database failure.
    #[error("the profile database failed while {doing}: {reason}")]
    Db {
        /// What was being done.
        doing: &'static str,
        /// SQLite's description.
        reason: String,
    },
    /// No contact by that name or number.
    #[error("no contact called {0:?}: `pigeon contacts` lists them")]
    NoContact(String),
    /// More than one contact matches.
    #[error("{0:?} matches more than one contact; use its number from `pigeon contacts`")]
    Ambiguous(String),
    /// Bad user input (a name, a text).
    #[error("{0}")]
    Invalid(String),
    /// Only one side of a conversation may refresh its keys, and only at the right moment.
    #[error("{0}")]
    NotNow(String),
    /// End-to-end encryption failed.
    #[error(transparent)]
    E2ee(#[from] E2eeError),
    /// Randomness failed.
    #[error("the random source failed: {0}")]
    Random(String),
    /// Reading or writing a file failed.
    #[error("{doing} {}: {source}", path.display())]
    File {
        /// What was being done.
        doing: &'static str,
        /// To which file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

impl ProfileError {
    /// Who is at fault.
    pub fn kind(&self) -> pigeon_wire::ErrorKind {
        use pigeon_wire::ErrorKind;
        match self {
            Self::E2ee(e) if e.is_bad_input() => ErrorKind::Peer,
            Self::NotFound(_)
            | Self::Exists(_)
            | Self::WrongPassphrase(_)
            | Self::NoContact(_)
            | Self::Ambiguous(_)
            | Self::Invalid(_)
            | Self::NotNow(_) => ErrorKind::BadInput,
            Self::File { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                ErrorKind::BadInput
            }
            _ => ErrorKind::Internal,
        }
    }
}

fn db(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> ProfileError {
    move |e| ProfileError::Db {
        doing,
        reason: e.to_string(),
    }
}

fn random<const N: usize>() -> Result<[u8; N], ProfileError> {
    auth::random_bytes().map_err(|e| ProfileError::Random(e.to_string()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

type Mls<'a> = pigeon_e2ee::Provider<'a, crate::StateStorage<'a>>;

/// A contact as people see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Local number (stable; `#3` in the CLI).
    pub id: ContactId,
    /// Display name (unique in this profile).
    pub name: String,
    /// The conversation's ciphersuite.
    pub suite: Suite,
    /// Messages not yet read.
    pub unread: i64,
    /// Outgoing messages not yet taken by the relay.
    pub queued: i64,
    /// When the contact was added.
    pub created_at_ms: i64,
}

/// A text message in a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Local number.
    pub id: i64,
    /// The contact's number.
    pub contact_id: ContactId,
    /// The contact's name.
    pub contact: String,
    /// True when this profile sent it.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// The sender's clock.
    pub sent_at_ms: i64,
    /// When it was stored here.
    pub stored_at_ms: i64,
    /// For outgoing messages: the peer confirmed receipt.
    pub delivered: bool,
    /// For outgoing messages: the peer read it (when they send read receipts).
    pub seen: bool,
    /// A notice about the conversation (it fell behind, messages expired, the other person
    /// left), not something a person wrote.
    pub notice: bool,
    /// The photo, voice note or file it carries (its text is then the caption).
    pub file: Option<FileInfo>,
}

/// A message waiting to be posted to a relay.
#[derive(Clone, Debug)]
pub struct OutboxItem {
    /// Row number (delete it with [`Profile::sent`] once the relay acknowledges).
    pub id: i64,
    /// The destination relay.
    pub relay: String,
    /// The destination mailbox.
    pub mailbox: [u8; 32],
    /// The capability to post there.
    pub sender_cap: [u8; 32],
    /// The relay-level message id (the same on every retry, so the relay de-duplicates).
    pub message_id: [u8; 16],
    /// The encoded envelope.
    pub payload: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Not before this time (milliseconds since the Unix epoch).
    pub next_attempt_at_ms: i64,
    /// Another device's post, carried from a log's mirror to its home relay: housekeeping
    /// that waits for the home relay without counting as this person's unsent messages.
    pub carried: bool,
}

/// A mailbox this profile reads.
#[derive(Clone)]
pub struct Inbox {
    /// Its relay.
    pub relay: String,
    /// Its id.
    pub mailbox: [u8; 32],
    /// The key that proves ownership.
    pub key: SigningKey,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox")
    }
}

/// A fresh invitation's parts that go to the relay.
pub struct PreparedInvite {
    /// The invitation.
    pub invite: Invite,
    /// Owns the mailbox.
    pub mailbox_key: SigningKey,
    /// Owns the key-package slots.
    pub slot_key: SigningKey,
    /// One key package per offer, in the same order.
    pub key_packages: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PreparedInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedInvite")
    }
}

/// What a delivery turned out to be.
#[derive(Debug)]
#[non_exhaustive]
pub enum Handled {
    /// A text message.
    Message {
        /// The message.
        message: Message,
        /// The sender's content id (what a receipt names).
        content_id: Vec<u8>,
    },
    /// Someone accepted an invitation: a new contact.
    NewContact(Contact),
    /// The peer introduced itself (its name may have changed).
    Intro {
        /// The contact.
        contact_id: ContactId,
    },
    /// Receipts for our messages.
    Receipt {
        /// The contact.
        contact_id: ContactId,
        /// Messages newly marked delivered.
        delivered: usize,
    },
    /// The peer refreshed the conversation's keys.
    Rekeyed {
        /// The contact.
        contact_id: ContactId,
        /// The new epoch.
        epoch: u64,
    },
    /// A line in a group's transcript: a message or a notice.
    Group(GroupMessage),
    /// A group moved to a new epoch.
    GroupEpoch {
        /// The group.
        group_id: crate::ids::GroupId,
        /// The new epoch.
        epoch: u64,
    },
    /// This device joined a group.
    JoinedGroup(GroupInfo),
    /// A contact invited this profile to a group.
    GroupInvite {
        /// The contact.
        contact_id: ContactId,
        /// The group invitation link.
        link: String,
    },
    /// A group's log moved to new keys (subscribe again with them).
    LogKeysChanged,
    /// Seen before (redelivered after a lost acknowledgement): nothing to do.
    Duplicate,
    /// Refused (tampered, replayed, not for us...): dropped, state unchanged.
    Dropped(String),
    /// Something to tell the person that is not a line of a transcript.
    Notice(String),
    /// This device joined a conversation its other device handed it (issue #16).
    Linked(String),
}

/// A proxy kept in a profile.
#[derive(Clone, Debug)]
pub struct SavedProxy {
    /// Its link.
    pub link: pigeon_transport::ProxyLink,
    /// Relays are reached only through proxies (never directly).
    pub always: bool,
}

/// What [`Profile::add_relay`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayAdded {
    /// A relay new to the profile, now last in its list.
    Added,
    /// A new link of a relay the profile had: this many stored links were replaced.
    Updated(usize),
    /// The profile had this very link.
    AlreadyThere,
}

/// One person's profile.
pub struct Profile {
    conn: Connection,
    crypto: CryptoProvider,
    dir: PathBuf,
    /// The largest log entry posted in one relay message; larger ones go in parts.
    max_log_entry: usize,
    /// Groups of this many devices or more have a device that joins refresh its keys with its
    /// first message ([`groups::FIRST_MESSAGE_REFRESH_FROM`]).
    first_refresh_from: usize,
    /// Message ids of posts queued by this process and not yet handed to a connection
    /// ([`Self::take_first_attempt`]); lost with the process, as it should be: after a restart
    /// any queued post may have reached a relay before.
    first_attempts: Mutex<HashSet<[u8; 16]>>,
}

/// Most posts remembered as first attempts; past it new posts are sent as possible retries.
const MAX_FIRST_ATTEMPTS: usize = 16_384;

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct ContactRow {
    id: ContactId,
    name: String,
    group_id: Vec<u8>,
    signature_key: Vec<u8>,
    committer: bool,
    peer_relay: String,
    peer_mailbox: [u8; 32],
    peer_cap: [u8; 32],
    sent_since_update: i64,
    peer_epoch: i64,
}

fn blob32(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    v.as_slice().try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "a 32-byte column holds another length".into(),
        )
    })
}

fn signing_key(bytes: Vec<u8>) -> rusqlite::Result<SigningKey> {
    Ok(SigningKey::from_bytes(&blob32(bytes)?))
}

impl Profile {
    /// Creates a profile in `dir` (created with mode 0700 if missing).
    ///
    /// # Errors
    /// [`ProfileError::Exists`] if there is one; [`ProfileError::Invalid`] for a bad name.
    pub fn create(
        dir: &Path,
        passphrase: &Passphrase,
        name: &str,
        relay: &RelayLink,
    ) -> Result<Self, ProfileError> {
        check_name(name).map_err(ProfileError::Invalid)?;
        if passphrase.0.is_empty() {
            return Err(ProfileError::Invalid("the passphrase is empty".to_owned()));
        }
        let path = dir.join(DB_FILE);
        if path.exists() {
            return Err(ProfileError::Exists(dir.to_owned()));
        }
        create_private_dir(dir)?;
        let profile = Self::open_path(dir, passphrase)?;
        profile
            .conn
            .execute(
                "INSERT INTO profile (id, name, relay, created_at) VALUES (1, ?1, ?2, ?3)",
                params![name, relay.to_string(), now_ms()],
            )
            .map_err(db("saving the profile"))?;
        restrict(&path)?;
        Ok(profile)
    }

    /// Opens the profile in `dir`.
    ///
    /// # Errors
    /// [`ProfileError::NotFound`], [`ProfileError::WrongPassphrase`], or a database failure.
    pub fn open(dir: &Path, passphrase: &Passphrase) -> Result<Self, ProfileError> {
        if !dir.join(DB_FILE).exists() {
            return Err(ProfileError::NotFound(dir.to_owned()));
        }
        let profile = Self::open_path(dir, passphrase)?;
        profile.name()?;
        Ok(profile)
    }

    fn open_path(dir: &Path, passphrase: &Passphrase) -> Result<Self, ProfileError> {
        let path = dir.join(DB_FILE);
        pigeon_sqlcipher::install();
        let mut conn = Connection::open(&path).map_err(db("opening the database"))?;
        // A wrong passphrase is reported below, in words; SQLCipher need not print its own
        // diagnostics to stderr.
        conn.pragma_update(None, "cipher_log_level", "NONE")
            .map_err(db("configuring the database"))?;
        conn.pragma_update(None, "key", passphrase.0.as_str())
            .map_err(db("setting the key"))?;
        if conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .is_err()
        {
            return Err(ProfileError::WrongPassphrase(dir.to_owned()));
        }
        conn.busy_timeout(std::time::Duration::from_secs(15))
            .map_err(db("setting the busy timeout"))?;
        for (pragma, value) in [
            ("secure_delete", "ON"),
            ("journal_mode", "DELETE"),
            ("synchronous", "FULL"),
            ("foreign_keys", "ON"),
        ] {
            conn.pragma_update_and_check(None, pragma, value, |_| Ok(()))
                .or_else(|_| conn.pragma_update(None, pragma, value))
                .map_err(db("configuring the database"))?;
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db("reading the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(ProfileError::TooNew(version));
        }
        crate::codec::state_tables(&mut conn)?;
        if version < 1 {
            conn.execute_batch(SCHEMA).map_err(db("creating tables"))?;
        }
        if version < 2 {
            conn.execute_batch(schema::MIGRATE_2)
                .map_err(db("adding the route caps table"))?;
        }
        if version < 3 {
            conn.execute_batch(schema::MIGRATE_3)
                .map_err(db("adding the group tables"))?;
        }
        if version < 4 {
            // `contacts` is rebuilt: with foreign keys on, dropping the old table would delete
            // every message (ON DELETE CASCADE). The pragma has no effect inside a transaction,
            // so it is switched around the migration's own.
            conn.pragma_update(None, "foreign_keys", "OFF")
                .map_err(db("preparing to move conversations to groups"))?;
            let migrated = conn
                .execute_batch(schema::MIGRATE_4)
                .map_err(db("moving conversations to groups"));
            if migrated.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(db("configuring the database"))?;
            migrated?;
            let broken: Option<String> = conn
                .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
                .optional()
                .map_err(db("checking the moved conversations"))?;
            if let Some(table) = broken {
                return Err(ProfileError::Db {
                    doing: "checking the moved conversations",
                    reason: format!("table {table} refers to a row that is gone"),
                });
            }
        }
        // The later versions each add tables or columns, in order.
        let later: [(i64, &str, &'static str); 14] = [
            (5, schema::MIGRATE_5, "adding the proxies table"),
            (6, schema::MIGRATE_6, "adding the route memory table"),
            (7, schema::MIGRATE_7, "adding the relays table"),
            (8, schema::MIGRATE_8, "adding the rejoin tickets"),
            (9, schema::MIGRATE_9, "adding log mirrors"),
            (10, schema::MIGRATE_10, "adding log entry parts"),
            (11, schema::MIGRATE_11, "adding log moves"),
            (12, schema::MIGRATE_12, "adding mirror keys"),
            (13, schema::MIGRATE_13, "adding device links"),
            (14, schema::MIGRATE_14, "adding the group of devices"),
            (15, schema::MIGRATE_15, "adding backups"),
            (16, schema::MIGRATE_16, "adding files"),
            (17, schema::MIGRATE_17, "adding read receipts"),
            (
                18,
                schema::MIGRATE_18,
                "marking MLS state stored as MessagePack",
            ),
        ];
        for (to, sql, doing) in later {
            if version < to {
                conn.execute_batch(sql).map_err(db(doing))?;
            }
        }
        let crypto = pigeon_e2ee::crypto()?;
        Ok(Self {
            conn,
            crypto,
            dir: dir.to_owned(),
            max_log_entry: groups::MAX_LOG_ENTRY,
            first_refresh_from: groups::FIRST_MESSAGE_REFRESH_FROM,
            first_attempts: Mutex::new(HashSet::new()),
        })
    }

    /// The proxies this profile reaches relays through, in the order added.
    ///
    /// # Errors
    /// A database failure.
    pub fn proxies(&self) -> Result<Vec<SavedProxy>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare("SELECT link, always FROM proxies ORDER BY id")
            .map_err(db("reading proxies"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))
            .map_err(db("reading proxies"))?;
        let mut out = Vec::new();
        for row in rows {
            let (text, always) = row.map_err(db("reading proxies"))?;
            // A link that no longer parses (a newer format) is skipped, not fatal.
            if let Ok(link) = pigeon_transport::ProxyLink::parse(&text) {
                out.push(SavedProxy { link, always });
            }
        }
        Ok(out)
    }

    /// Adds a proxy (or changes whether it is the only way out); true if it was new.
    ///
    /// # Errors
    /// A database failure.
    pub fn add_proxy(
        &self,
        link: &pigeon_transport::ProxyLink,
        always: bool,
    ) -> Result<bool, ProfileError> {
        let text = link.to_string();
        let existed: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM proxies WHERE link = ?1",
                rusqlite::params![text],
                |r| r.get(0),
            )
            .map_err(db("adding a proxy"))?;
        self.conn
            .execute(
                "INSERT INTO proxies (link, always, added_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (link) DO UPDATE SET always = excluded.always",
                rusqlite::params![text, always, now_ms()],
            )
            .map_err(db("adding a proxy"))?;
        Ok(existed == 0)
    }

    /// Adds a proxy that came with an invitation, unless it is kept already (its `always`
    /// stays as it is).
    ///
    /// # Errors
    /// A database failure.
    pub fn add_proxy_if_new(&self, link: &pigeon_transport::ProxyLink) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "INSERT INTO proxies (link, always, added_at) VALUES (?1, 0, ?2)
                 ON CONFLICT (link) DO NOTHING",
                rusqlite::params![link.to_string(), now_ms()],
            )
            .map_err(db("adding a proxy"))?;
        Ok(())
    }

    /// Removes a proxy; false if it was not there.
    ///
    /// # Errors
    /// A database failure.
    pub fn remove_proxy(&self, link: &pigeon_transport::ProxyLink) -> Result<bool, ProfileError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM proxies WHERE link = ?1",
                rusqlite::params![link.to_string()],
            )
            .map_err(db("removing a proxy"))?;
        Ok(n > 0)
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The route (an attempt's text, see `relay::Connector`) that last reached `relay` on
    /// `network`.
    ///
    /// # Errors
    /// A database failure.
    pub fn route_worked(
        &self,
        network: &crate::network::NetworkId,
        relay: &[u8; 32],
    ) -> Result<Option<String>, ProfileError> {
        self.conn
            .query_row(
                "SELECT attempt FROM routes_worked WHERE network = ?1 AND relay = ?2",
                rusqlite::params![&network.0[..], &relay[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading route memory"))
    }

    /// Remembers that `attempt` reached `relay` on `network`. The memory keeps the
    /// [`ROUTE_MEMORY`] most recent entries.
    ///
    /// # Errors
    /// A database failure.
    pub fn save_route_worked(
        &self,
        network: &crate::network::NetworkId,
        relay: &[u8; 32],
        attempt: &str,
    ) -> Result<(), ProfileError> {
        self.tx(|| {
            self.conn
                .execute(
                    "INSERT INTO routes_worked (network, relay, attempt, worked_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (network, relay) DO UPDATE
                       SET attempt = excluded.attempt, worked_at = excluded.worked_at",
                    rusqlite::params![&network.0[..], &relay[..], attempt, now_ms()],
                )
                .map_err(db("saving route memory"))?;
            self.conn
                .execute(
                    "DELETE FROM routes_worked WHERE (network, relay) NOT IN
                       (SELECT network, relay FROM routes_worked
                        ORDER BY worked_at DESC LIMIT ?1)",
                    rusqlite::params![ROUTE_MEMORY],
                )
                .map_err(db("trimming route memory"))?;
            Ok(())
        })
    }

    /// Download caps learned per route (route text → bytes): see `pigeon_transport::Rotate`.
    ///
    /// # Errors
    /// A database failure.
    pub fn route_caps(&self) -> Result<BTreeMap<String, u32>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare("SELECT route, cap FROM route_caps")
            .map_err(db("reading route caps"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db("reading route caps"))?;
        let mut caps = BTreeMap::new();
        for row in rows {
            let (route, cap) = row.map_err(db("reading route caps"))?;
            if let Ok(cap) = u32::try_from(cap) {
                caps.insert(route, cap);
            }
        }
        Ok(caps)
    }

    /// Remembers learned download caps, keeping the smaller where one is known.
    ///
    /// # Errors
    /// A database failure.
    pub fn save_route_caps(&self, caps: &BTreeMap<String, u32>) -> Result<(), ProfileError> {
        self.tx(|| {
            for (route, cap) in caps {
                self.conn
                    .execute(
                        "INSERT INTO route_caps (route, cap, learned_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (route) DO UPDATE SET cap = min(cap, excluded.cap),
                           learned_at = excluded.learned_at
                         WHERE excluded.cap < cap",
                        rusqlite::params![route, i64::from(*cap), now_ms()],
                    )
                    .map_err(db("saving route caps"))?;
            }
            Ok(())
        })
    }

    fn mls(&self) -> Mls<'_> {
        pigeon_e2ee::Provider::new(&self.crypto, crate::StateStorage::new(&self.conn))
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed on `Ok`, rolled back on `Err`.
    fn tx<T>(&self, f: impl FnOnce() -> Result<T, ProfileError>) -> Result<T, ProfileError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db("starting a transaction"))?;
        match f() {
            Ok(v) => {
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(db("committing")(e));
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The display name.
    ///
    /// # Errors
    /// On database failure.
    pub fn name(&self) -> Result<String, ProfileError> {
        self.conn
            .query_row("SELECT name FROM profile WHERE id = 1", [], |r| r.get(0))
            .map_err(db("reading the profile"))
    }

    /// Every relay this profile makes invitations, conversations and groups on, in order of
    /// preference: the first (`init`'s, or whichever was promoted), then those added with
    /// [`Profile::add_relay`]. A client uses the first that answers.
    ///
    /// # Errors
    /// On database failure or a damaged stored link.
    pub fn relays(&self) -> Result<Vec<RelayLink>, ProfileError> {
        let mut out = vec![self.relay()?];
        let mut stmt = self
            .conn
            .prepare("SELECT link FROM relays ORDER BY id")
            .map_err(db("reading relays"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db("reading relays"))?;
        for row in rows {
            // A link that no longer parses (a newer format) is skipped, not fatal.
            if let Ok(link) = RelayLink::parse(&row.map_err(db("reading relays"))?) {
                out.push(link);
            }
        }
        Ok(out)
    }

    /// Adds a relay after the others. A link of a relay the profile has already (the same
    /// key: say, after its operator rotated a leaked tls secret) replaces the old link
    /// everywhere the profile keeps it — its relay list, conversations, invitations and
    /// outbox — so what lives there goes on through the new one.
    ///
    /// # Errors
    /// On database failure.
    pub fn add_relay(&self, link: &RelayLink) -> Result<RelayAdded, ProfileError> {
        if self
            .relays()?
            .iter()
            .any(|r| r.relay_key() == link.relay_key())
        {
            let changed = self.update_relay_link(link)?;
            return Ok(if changed == 0 {
                RelayAdded::AlreadyThere
            } else {
                RelayAdded::Updated(changed)
            });
        }
        self.conn
            .execute(
                "INSERT INTO relays (link, added_at) VALUES (?1, ?2)",
                params![link.to_string(), now_ms()],
            )
            .map_err(db("adding a relay"))?;
        Ok(RelayAdded::Added)
    }

    /// Writes `link` wherever a link of the same relay (same key) but other text is kept;
    /// returns how many rows changed.
    fn update_relay_link(&self, link: &RelayLink) -> Result<usize, ProfileError> {
        // Every column that keeps a relay link (the names are this code's own).
        const COLUMNS: [(&str, &str); 8] = [
            ("profile", "relay"),
            ("relays", "link"),
            ("groups", "log_relay"),
            ("group_invites", "relay"),
            ("group_joins", "relay"),
            ("outbox", "relay"),
            ("contacts", "inbox_relay"),
            ("contacts", "peer_relay"),
        ];
        let new = link.to_string();
        self.tx(|| {
            let mut changed = 0;
            for (table, column) in COLUMNS {
                let mut stmt = self
                    .conn
                    .prepare(&format!(
                        "SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL"
                    ))
                    .map_err(db("reading stored relay links"))?;
                let texts: Vec<String> = stmt
                    .query_map([], |r| r.get(0))
                    .map_err(db("reading stored relay links"))?
                    .collect::<Result<_, _>>()
                    .map_err(db("reading stored relay links"))?;
                for old in texts {
                    let same_relay = RelayLink::parse(&old)
                        .is_ok_and(|stored| stored.relay_key() == link.relay_key());
                    if same_relay && old != new {
                        changed += self
                            .conn
                            .execute(
                                &format!("UPDATE {table} SET {column} = ?1 WHERE {column} = ?2"),
                                params![new, old],
                            )
                            .map_err(db("updating a relay link"))?;
                    }
                }
            }
            Ok(changed)
        })
    }

    /// Removes a relay (the one with `link`'s key) from the list new things are made on;
    /// false if it was not there. Removing the first makes the next one first. What already
    /// lives on it (conversations, invitations) stays there.
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for the only relay; on database failure.
    pub fn remove_relay(&self, link: &RelayLink) -> Result<bool, ProfileError> {
        let relays = self.relays()?;
        let Some(at) = relays
            .iter()
            .position(|r| r.relay_key() == link.relay_key())
        else {
            return Ok(false);
        };
        if relays.len() == 1 {
            return Err(ProfileError::Invalid(
                "this is the profile's only relay: add another (`pigeon relays add LINK`) first"
                    .to_owned(),
            ));
        }
        self.tx(|| {
            if at == 0 {
                let next = relays[1].to_string();
                self.conn
                    .execute("UPDATE profile SET relay = ?1 WHERE id = 1", [&next])
                    .map_err(db("changing the first relay"))?;
                self.conn
                    .execute("DELETE FROM relays WHERE link = ?1", [&next])
                    .map_err(db("changing the first relay"))?;
            } else {
                self.conn
                    .execute(
                        "DELETE FROM relays WHERE link = ?1",
                        [relays[at].to_string()],
                    )
                    .map_err(db("removing a relay"))?;
            }
            Ok(true)
        })
    }

    /// The relay this profile receives on.
    ///
    /// # Errors
    /// On database failure or a damaged stored link.
    pub fn relay(&self) -> Result<RelayLink, ProfileError> {
        let text: String = self
            .conn
            .query_row("SELECT relay FROM profile WHERE id = 1", [], |r| r.get(0))
            .map_err(db("reading the profile"))?;
        parse_stored_relay(&text)
    }

    /// Makes an invitation on `relay` (one of [`Profile::relays`]): a mailbox, key packages and
    /// secrets, saved as pending. The caller creates the mailbox and publishes the key packages
    /// on the relay before showing the link.
    ///
    /// # Errors
    /// On database or key-generation failure.
    pub fn prepare_invite(&self, relay: &RelayLink) -> Result<PreparedInvite, ProfileError> {
        let relay = relay.clone();
        let name = self.name()?;
        let mailbox_key =
            auth::generate_signing_key().map_err(|e| ProfileError::Random(e.to_string()))?;
        let slot_key =
            auth::generate_signing_key().map_err(|e| ProfileError::Random(e.to_string()))?;
        let (mailbox_id, sender_cap, secret) = (random()?, random()?, random()?);
        self.tx(|| {
            let mls = self.mls();
            let identity = Identity::generate(&mls)?;
            let mut offers = Vec::new();
            let mut key_packages = Vec::new();
            for suite in Suite::PREFERENCE {
                offers.push(Offer {
                    suite,
                    slot_id: random()?,
                });
                let (key_package, ticket) = identity.key_package_with_ticket(
                    &mls,
                    suite,
                    &pigeon_e2ee::LeafExtras::default(),
                )?;
                self.keep_ticket(&ticket)?;
                key_packages.push(key_package);
            }
            let signature_key: [u8; 32] = identity.public_key().try_into().map_err(|_| {
                ProfileError::Invalid("the signature key is not 32 bytes".to_owned())
            })?;
            let invite = Invite {
                relay: relay.clone(),
                mailbox_id,
                sender_cap,
                signature_key,
                secret,
                name,
                offers,
                group: None,
                proxies: self
                    .proxies()?
                    .into_iter()
                    .map(|p| p.link)
                    .take(crate::invite::MAX_INVITE_PROXIES)
                    .collect(),
                device: self.device_name()?,
            };
            // The person accepting starts the conversation and sends its Welcome here: the
            // invitation waits like a request to join a group of two.
            let person: [u8; 16] = random()?;
            self.conn
                .execute(
                    "INSERT INTO group_joins (mailbox_id, mailbox_key, relay, secret, signature_key,
                       person, group_name, created_at, direct)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, 1)",
                    params![
                        mailbox_id.as_slice(),
                        mailbox_key.to_bytes().as_slice(),
                        relay.to_string(),
                        secret.as_slice(),
                        signature_key.as_slice(),
                        person.as_slice(),
                        now_ms()
                    ],
                )
                .map_err(db("saving the invitation"))?;
            Ok(PreparedInvite {
                invite,
                mailbox_key,
                slot_key,
                key_packages,
            })
        })
    }

    /// Withdraws an invitation that never reached the relay: forgets its mailbox, key
    /// packages and signature key.
    ///
    /// # Errors
    /// On database failure.
    pub fn cancel_invite(&self, prepared: &PreparedInvite) -> Result<(), ProfileError> {
        self.tx(|| {
            self.conn
                .execute(
                    "DELETE FROM group_joins WHERE mailbox_id = ?1",
                    [prepared.invite.mailbox_id.as_slice()],
                )
                .map_err(db("withdrawing the invitation"))?;
            let mls = self.mls();
            for kp in &prepared.key_packages {
                pigeon_e2ee::forget_key_package(&mls, kp)?;
            }
            Identity::load(&mls, &prepared.invite.signature_key)?.forget(&mls)?;
            Ok(())
        })
    }

    pub(in crate::profile) fn unique_name(&self, wanted: &str) -> Result<String, ProfileError> {
        let taken = |n: &str| -> Result<bool, ProfileError> {
            self.conn
                .query_row("SELECT 1 FROM contacts WHERE name = ?1", [n], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .map_err(db("checking names"))
        };
        if !taken(wanted)? {
            return Ok(wanted.to_owned());
        }
        for i in 2..10_000 {
            let candidate = format!("{wanted} ({i})");
            if !taken(&candidate)? {
                return Ok(candidate);
            }
        }
        Err(ProfileError::Invalid(format!(
            "too many contacts are called {wanted:?}"
        )))
    }

    fn queue(
        &self,
        relay: &str,
        mailbox: &[u8; 32],
        cap: &[u8; 32],
        envelope: &Envelope,
    ) -> Result<(), ProfileError> {
        self.queue_with_id(relay, mailbox, cap, envelope, random()?)
            .map(|_| ())
    }

    fn queue_with_id(
        &self,
        relay: &str,
        mailbox: &[u8; 32],
        cap: &[u8; 32],
        envelope: &Envelope,
        message_id: [u8; 16],
    ) -> Result<[u8; 16], ProfileError> {
        self.insert_outbox(relay, mailbox, cap, envelope, message_id, Queued::New)?;
        Ok(message_id)
    }

    /// As [`Self::queue_with_id`], but a message id already queued is left as it is (a post
    /// that several devices, or several copies, may ask for).
    /// `carried`: the post is another device's, carried from a log's mirror to its home relay.
    fn queue_once(
        &self,
        relay: &str,
        mailbox: &[u8; 32],
        cap: &[u8; 32],
        envelope: &Envelope,
        message_id: [u8; 16],
        carried: bool,
    ) -> Result<(), ProfileError> {
        let how = if carried {
            Queued::Carried
        } else {
            Queued::Once
        };
        self.insert_outbox(relay, mailbox, cap, envelope, message_id, how)
    }

    /// Writes one outbox row.
    fn insert_outbox(
        &self,
        relay: &str,
        mailbox: &[u8; 32],
        cap: &[u8; 32],
        envelope: &Envelope,
        message_id: [u8; 16],
        how: Queued,
    ) -> Result<(), ProfileError> {
        let verb = match how {
            Queued::New => "INSERT",
            Queued::Once | Queued::Carried => "INSERT OR IGNORE",
        };
        let inserted = self
            .conn
            .execute(
                &format!(
                    "{verb} INTO outbox (relay, mailbox_id, sender_cap, message_id, payload,
                       created_at, next_attempt_at, carried)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)"
                ),
                params![
                    relay,
                    mailbox.as_slice(),
                    cap.as_slice(),
                    message_id.as_slice(),
                    envelope.encode_to_vec(),
                    now_ms(),
                    matches!(how, Queued::Carried)
                ],
            )
            .map_err(db("queueing a message"))?;
        // Only a new post of this device's, with a fresh random id, is surely unsent; one that
        // several devices or copies may queue may have been sent by another.
        if matches!(how, Queued::New) && inserted == 1 {
            let mut first = self
                .first_attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if first.len() < MAX_FIRST_ATTEMPTS {
                first.insert(message_id);
            }
        }
        Ok(())
    }

    /// Whether the post with this message id goes to a relay for the first time: true once
    /// for a post this process queued ([`Queued::New`]) and has not handed to a connection
    /// before; every later call says false. The caller hands it over right after.
    pub fn take_first_attempt(&self, message_id: &[u8; 16]) -> bool {
        self.first_attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(message_id)
    }

    /// Queues one MLS message to the contact's mailbox.
    fn queue_mls(&self, row: &ContactRow, mls: Vec<u8>) -> Result<(), ProfileError> {
        self.queue(
            &row.peer_relay,
            &row.peer_mailbox,
            &row.peer_cap,
            &Envelope {
                kind: Some(Kind::Mls(mls)),
            },
        )
    }

    /// Every contact, by number.
    ///
    /// # Errors
    /// On database failure.
    pub fn contacts(&self) -> Result<Vec<Contact>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(CONTACT_QUERY_ALL)
            .map_err(db("listing contacts"))?;
        let rows = stmt
            .query_map([], contact_from_row)
            .map_err(db("listing contacts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("listing contacts"))
    }

    /// One contact by number.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] if there is none.
    pub fn contact(&self, id: ContactId) -> Result<Contact, ProfileError> {
        self.contacts()?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ProfileError::NoContact(format!("#{id}")))
    }

    /// The contact called `query`: an exact name, a case-insensitive name, or `#N` / `N`.
    ///
    /// # Errors
    /// [`ProfileError::NoContact`] or [`ProfileError::Ambiguous`].
    pub fn find_contact(&self, query: &str) -> Result<Contact, ProfileError> {
        find_named(&self.contacts()?, query, |c| &c.name, |c| c.id.0)
    }

    /// The name of the contact whose mailbox is `peer_mailbox`.
    ///
    /// # Errors
    /// On database failure.
    pub fn contact_by_peer_mailbox(
        &self,
        peer_mailbox: &[u8; 32],
    ) -> Result<Option<String>, ProfileError> {
        self.conn
            .query_row(
                "SELECT name FROM contacts WHERE peer_mailbox = ?1
                   OR conversation = (SELECT id FROM groups WHERE log_id = ?1)",
                [peer_mailbox.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("finding a contact"))
    }

    fn contact_row(&self, id: ContactId) -> Result<ContactRow, ProfileError> {
        self.conn
            .query_row(
                "SELECT id, name, group_id, signature_key, committer, peer_relay, peer_mailbox, peer_cap,
                        sent_since_update, peer_epoch FROM contacts WHERE id = ?1",
                [id],
                |r| {
                    Ok(ContactRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        group_id: r.get(2)?,
                        signature_key: r.get(3)?,
                        committer: r.get(4)?,
                        peer_relay: r.get(5)?,
                        peer_mailbox: blob32(r.get(6)?)?,
                        peer_cap: blob32(r.get(7)?)?,
                        sent_since_update: r.get(8)?,
                        peer_epoch: r.get(9)?,
                    })
                },
            )
            .optional()
            .map_err(db("reading a contact"))?
            .ok_or_else(|| ProfileError::NoContact(format!("#{id}")))
    }

    /// Encrypts `text` for a contact and queues it (one transaction: the group's new state,
    /// the message and the queued ciphertext are saved together). The committing side also
    /// refreshes the group's keys every [`REKEY_EVERY`] messages, when it safely can.
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] for an empty or oversized text.
    pub fn compose(&self, contact_id: ContactId, text: &str) -> Result<Message, ProfileError> {
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
        if let Some(direct) = self.conversation(contact_id)? {
            let line = self.compose_group(direct.group, text)?;
            return self.as_message(&direct, &line);
        }
        self.tx(|| {
            let row = self.contact_row(contact_id)?;
            let mls = self.mls();
            let identity = Identity::load(&mls, &row.signature_key)?;
            let mut group = Group::load(&mls, &row.group_id)?;
            if row.committer
                && row.sent_since_update >= REKEY_EVERY
                && to_i64(group.epoch()) == row.peer_epoch
            {
                self.rekey_in_tx(&row, &mls, &identity, &mut group)?;
            }
            let content = new_content(Body::Text(Text {
                text: text.to_owned(),
            }))?;
            let ct = group.seal(&mls, &identity, &content)?;
            self.queue_mls(&row, ct)?;
            self.conn
                .execute(
                    "UPDATE contacts SET sent_since_update = sent_since_update + 1 WHERE id = ?1",
                    [row.id],
                )
                .map_err(db("counting messages"))?;
            self.insert_message(&row, true, &content.id, text, to_i64(content.sent_at_ms))?
                .ok_or_else(|| ProfileError::Invalid("a message id repeated".to_owned()))
        })
    }

    /// Sends a group invitation link to a contact inside your 1:1 conversation.
    ///
    /// # Errors
    /// On database or encryption failure.
    pub fn compose_group_invite(
        &self,
        contact_id: ContactId,
        link: &str,
    ) -> Result<(), ProfileError> {
        self.tx(|| {
            if let Some(direct) = self.conversation(contact_id)? {
                return self.conversation_group_invite(direct.group, link);
            }
            let row = self.contact_row(contact_id)?;
            let mls = self.mls();
            let identity = Identity::load(&mls, &row.signature_key)?;
            let mut group = Group::load(&mls, &row.group_id)?;
            let content = new_content(Body::GroupInvite(pigeon_e2ee::content::GroupInvite {
                link: link.to_owned(),
            }))?;
            let ct = group.seal(&mls, &identity, &content)?;
            self.queue_mls(&row, ct)
        })
    }

    /// Queues a receipt for contents received from a contact.
    ///
    /// # Errors
    /// On database or encryption failure.
    pub fn compose_receipt(
        &self,
        contact_id: ContactId,
        ids: Vec<Vec<u8>>,
    ) -> Result<(), ProfileError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.tx(|| {
            if let Some(direct) = self.conversation(contact_id)? {
                return self.conversation_receipts(direct.group, ids);
            }
            let row = self.contact_row(contact_id)?;
            let mls = self.mls();
            let identity = Identity::load(&mls, &row.signature_key)?;
            let mut group = Group::load(&mls, &row.group_id)?;
            for chunk in ids.chunks(512) {
                let content = new_content(Body::Receipt(Receipt {
                    ids: chunk.to_vec(),
                    read: false,
                }))?;
                let ct = group.seal(&mls, &identity, &content)?;
                self.queue_mls(&row, ct)?;
            }
            Ok(())
        })
    }

    /// Refreshes a conversation's keys now (a self-update commit, queued to the peer).
    ///
    /// # Errors
    /// [`ProfileError::NotNow`] unless this side commits for the conversation and the peer has
    /// spoken since the last refresh.
    pub fn rekey(&self, contact_id: ContactId) -> Result<u64, ProfileError> {
        if let Some(direct) = self.conversation(contact_id)? {
            return self.conversation_rekey(direct.group);
        }
        self.tx(|| {
            let row = self.contact_row(contact_id)?;
            if !row.committer {
                return Err(ProfileError::NotNow(format!(
                    "{} refreshes the keys of this conversation; this side cannot",
                    row.name
                )));
            }
            let mls = self.mls();
            let identity = Identity::load(&mls, &row.signature_key)?;
            let mut group = Group::load(&mls, &row.group_id)?;
            if to_i64(group.epoch()) != row.peer_epoch {
                return Err(ProfileError::NotNow(format!(
                    "the keys were just refreshed; wait until {} has sent something",
                    row.name
                )));
            }
            self.rekey_in_tx(&row, &mls, &identity, &mut group)?;
            Ok(group.epoch())
        })
    }

    fn rekey_in_tx(
        &self,
        row: &ContactRow,
        mls: &Mls<'_>,
        identity: &Identity,
        group: &mut Group,
    ) -> Result<(), ProfileError> {
        let commit = group.update(mls, identity)?;
        self.queue_mls(row, commit)?;
        self.conn
            .execute(
                "UPDATE contacts SET sent_since_update = 0 WHERE id = ?1",
                [row.id],
            )
            .map_err(db("recording a key refresh"))?;
        Ok(())
    }

    /// The conversation's current epoch authenticator (both sides see the same value).
    ///
    /// # Errors
    /// On database failure.
    pub fn epoch_authenticator(
        &self,
        contact_id: ContactId,
    ) -> Result<(u64, Vec<u8>), ProfileError> {
        if let Some(direct) = self.conversation(contact_id)? {
            return self.conversation_authenticator(direct.group);
        }
        let row = self.contact_row(contact_id)?;
        let group = Group::load(&self.mls(), &row.group_id)?;
        Ok((group.epoch(), group.epoch_authenticator()))
    }

    fn insert_message(
        &self,
        row: &ContactRow,
        outgoing: bool,
        uid: &[u8],
        text: &str,
        sent_at_ms: i64,
    ) -> Result<Option<Message>, ProfileError> {
        let now = now_ms();
        let inserted = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO messages (contact_id, outgoing, uid, body, sent_at, stored_at, read)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?2)",
                params![row.id, outgoing, uid, text, sent_at_ms, now],
            )
            .map_err(db("saving a message"))?;
        if inserted == 0 {
            return Ok(None);
        }
        Ok(Some(Message {
            id: self.conn.last_insert_rowid(),
            contact_id: row.id,
            contact: row.name.clone(),
            outgoing,
            text: text.to_owned(),
            sent_at_ms,
            stored_at_ms: now,
            delivered: false,
            notice: false,
            file: None,
            seen: false,
        }))
    }

    /// Messages waiting for a relay, oldest first.
    ///
    /// # Errors
    /// On database failure.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT o.id, o.relay, o.mailbox_id,
                   coalesce((SELECT g.log_cap FROM groups g WHERE g.log_id = o.mailbox_id), o.sender_cap),
                   o.message_id, o.payload, o.attempts, o.next_attempt_at, o.carried
                 FROM outbox o ORDER BY o.id",
            )
            .map_err(db("reading the outbox"))?;
        let rows = stmt
            .query_map([], |r| {
                let mid: Vec<u8> = r.get(4)?;
                Ok(OutboxItem {
                    id: r.get(0)?,
                    relay: r.get(1)?,
                    mailbox: blob32(r.get(2)?)?,
                    sender_cap: blob32(r.get(3)?)?,
                    message_id: mid.as_slice().try_into().map_err(|_| {
                        rusqlite::Error::FromSqlConversionFailure(
                            4,
                            rusqlite::types::Type::Blob,
                            "a message id is not 16 bytes".into(),
                        )
                    })?,
                    payload: r.get(5)?,
                    attempts: r.get(6)?,
                    next_attempt_at_ms: r.get(7)?,
                    carried: r.get(8)?,
                })
            })
            .map_err(db("reading the outbox"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("reading the outbox"))
    }

    /// The relay holds `item` durably: drop it from the outbox.
    ///
    /// # Errors
    /// On database failure.
    pub fn sent(&self, item_id: i64) -> Result<(), ProfileError> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [item_id])
            .map_err(db("updating the outbox"))?;
        Ok(())
    }

    /// Sending `item` failed: count the attempt and hold it back for `retry_after_ms`.
    ///
    /// # Errors
    /// On database failure.
    pub fn failed(&self, item_id: i64, retry_after_ms: i64) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2 WHERE id = ?1",
                params![item_id, now_ms().saturating_add(retry_after_ms)],
            )
            .map_err(db("updating the outbox"))?;
        Ok(())
    }

    /// Every mailbox this profile reads: pending invitations and contacts.
    ///
    /// # Errors
    /// On database failure.
    pub fn inboxes(&self) -> Result<Vec<Inbox>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT inbox_relay, inbox_id, inbox_key FROM contacts WHERE inbox_id IS NOT NULL
                 UNION ALL SELECT relay, mailbox_id, mailbox_key FROM group_invites WHERE used = 0
                 UNION ALL SELECT relay, mailbox_id, mailbox_key FROM group_joins WHERE used = 0
                 UNION ALL SELECT relay, mailbox_id, mailbox_key FROM device_links WHERE state < 3
                 UNION ALL SELECT relay, mailbox_id, mailbox_key FROM device_link_joins WHERE state < 2",
            )
            .map_err(db("listing mailboxes"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Inbox {
                    relay: r.get(0)?,
                    mailbox: blob32(r.get(1)?)?,
                    key: signing_key(r.get(2)?)?,
                })
            })
            .map_err(db("listing mailboxes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("listing mailboxes"))
    }

    /// Unread incoming messages (of one contact, or all), oldest first; marks them read.
    ///
    /// # Errors
    /// On database failure.
    pub fn take_unread(&self, contact_id: Option<ContactId>) -> Result<Vec<Message>, ProfileError> {
        self.tx(|| {
            // Everything unread is taken, in this one transaction: mark all of it read.
            let messages = self.messages(contact_id, true, i64::MAX)?;
            self.conn
                .execute(
                    "UPDATE messages SET read = 1 WHERE read = 0 AND (?1 IS NULL OR contact_id = ?1)",
                    [contact_id],
                )
                .map_err(db("marking messages read"))?;
            // How far each conversation is read, for the person's other devices.
            let marks: BTreeMap<crate::ids::GroupId, i64> = {
                let mut stmt = self
                    .conn
                    .prepare(
                        "SELECT group_row, max(seq) FROM group_messages WHERE read = 0
                           AND seq IS NOT NULL AND group_row IN
                           (SELECT conversation FROM contacts WHERE ?1 IS NULL OR id = ?1)
                         GROUP BY group_row",
                    )
                    .map_err(db("marking messages read"))?;
                let rows = stmt
                    .query_map([contact_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db("marking messages read"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(db("marking messages read"))?
            };
            self.conn
                .execute(
                    "UPDATE group_messages SET read = 1 WHERE read = 0 AND group_row IN
                       (SELECT conversation FROM contacts WHERE ?1 IS NULL OR id = ?1)",
                    [contact_id],
                )
                .map_err(db("marking messages read"))?;
            self.share_read_marks(&marks)?;
            self.send_read_receipts(&marks)?;
            Ok(messages)
        })
    }

    /// The latest `limit` messages (of one contact, or all), oldest first.
    ///
    /// # Errors
    /// On database failure.
    pub fn history(
        &self,
        contact_id: Option<ContactId>,
        limit: i64,
    ) -> Result<Vec<Message>, ProfileError> {
        self.messages(contact_id, false, limit)
    }

    fn messages(
        &self,
        contact_id: Option<ContactId>,
        unread_only: bool,
        limit: i64,
    ) -> Result<Vec<Message>, ProfileError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, contact_id, name, outgoing, body, sent_at, stored_at, delivered, notice,
                        file, seen FROM (
                   SELECT * FROM (
                     SELECT 0 AS design, m.id, m.contact_id, c.name, m.outgoing, m.body, m.sent_at,
                            m.stored_at, m.delivered, m.read, 0 AS notice, NULL AS file, 0 AS seen
                     FROM messages m JOIN contacts c ON c.id = m.contact_id
                     UNION ALL
                     SELECT 1, gm.id, c.id, c.name, gm.outgoing, gm.body, gm.sent_at, gm.stored_at,
                            gm.delivered, gm.read, gm.notice,
                            (SELECT f.id FROM files f WHERE f.message = gm.id), gm.seen
                     FROM group_messages gm JOIN contacts c ON c.conversation = gm.group_row)
                   WHERE (?1 IS NULL OR contact_id = ?1) AND (?2 = 0 OR read = 0)
                   ORDER BY stored_at DESC, design DESC, id DESC LIMIT ?3)
                 ORDER BY stored_at, design, id",
            )
            .map_err(db("reading messages"))?;
        let rows = stmt
            .query_map(params![contact_id, unread_only, limit], |r| {
                let line = Message {
                    id: r.get(0)?,
                    contact_id: r.get(1)?,
                    contact: r.get(2)?,
                    outgoing: r.get(3)?,
                    text: r.get(4)?,
                    sent_at_ms: r.get(5)?,
                    stored_at_ms: r.get(6)?,
                    delivered: r.get(7)?,
                    notice: r.get(8)?,
                    file: None,
                    seen: r.get(10)?,
                };
                Ok((line, r.get(9)?))
            })
            .map_err(db("reading messages"))?;
        let lines: Vec<(Message, Option<i64>)> = rows
            .collect::<Result<_, _>>()
            .map_err(db("reading messages"))?;
        self.with_files(lines, |m: &mut Message, f| m.file = Some(f))
    }

    /// Forgets delivery ids older than any relay keeps a message.
    ///
    /// # Errors
    /// On database failure.
    pub fn prune(&self) -> Result<(), ProfileError> {
        self.conn
            .execute(
                "DELETE FROM seen WHERE seen_at < ?1",
                [now_ms() - SEEN_DAYS * 86_400_000],
            )
            .map_err(db("pruning"))?;
        Ok(())
    }
}

/// The one of `items` called `query`: the exact name, else the only case-insensitive match,
/// else the number (`#N` or `N`).
fn find_named<T: Clone>(
    items: &[T],
    query: &str,
    name: impl Fn(&T) -> &str,
    number: impl Fn(&T) -> i64,
) -> Result<T, ProfileError> {
    if let Some(item) = items.iter().find(|i| name(i) == query) {
        return Ok(item.clone());
    }
    let folded: Vec<_> = items
        .iter()
        .filter(|i| name(i).to_lowercase() == query.to_lowercase())
        .collect();
    match folded.as_slice() {
        [one] => return Ok((*one).clone()),
        [_, _, ..] => return Err(ProfileError::Ambiguous(query.to_owned())),
        [] => {}
    }
    if let Ok(n) = query.trim_start_matches('#').parse::<i64>()
        && let Some(item) = items.iter().find(|i| number(i) == n)
    {
        return Ok(item.clone());
    }
    Err(ProfileError::NoContact(query.to_owned()))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn new_content(body: Body) -> Result<Content, ProfileError> {
    Ok(Content {
        id: random::<16>()?.to_vec(),
        sent_at_ms: u64::try_from(now_ms()).unwrap_or(0),
        body: Some(body),
    })
}

/// A relay link read back from the profile.
///
/// # Errors
/// If the stored text is damaged.
pub fn parse_stored_relay(text: &str) -> Result<RelayLink, ProfileError> {
    RelayLink::parse(text).map_err(|e| ProfileError::Db {
        doing: "reading a stored relay link",
        reason: e.to_string(),
    })
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), ProfileError> {
    let io = |e: std::io::Error| ProfileError::Db {
        doing: "creating the profile directory",
        reason: e.to_string(),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(io)
    }
}

fn restrict(path: &Path) -> Result<(), ProfileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            ProfileError::Db {
                doing: "restricting the profile's permissions",
                reason: e.to_string(),
            }
        })?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn contact_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Contact> {
    let code: u16 = r.get(2)?;
    Ok(Contact {
        id: r.get(0)?,
        name: r.get(1)?,
        suite: Suite::from_code(code).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Integer,
                "unknown ciphersuite".into(),
            )
        })?,
        created_at_ms: r.get(3)?,
        unread: r.get(4)?,
        queued: r.get(5)?,
    })
}
