//! The profile's own tables (openmls keeps its state in tables of its own, migrated by
//! `openmls_sqlite_storage`).

pub(super) const CONTACT_QUERY_ALL: &str = "
    SELECT c.id, c.name, c.suite, c.created_at,
      (SELECT count(*) FROM messages m WHERE m.contact_id = c.id AND m.read = 0)
        + (SELECT count(*) FROM group_messages gm
           WHERE gm.group_row = c.conversation AND gm.read = 0 AND gm.notice = 0),
      (SELECT count(*) FROM outbox o WHERE o.mailbox_id = c.peer_mailbox)
        + (SELECT count(*) FROM outbox o JOIN groups g ON g.log_id = o.mailbox_id
           WHERE g.id = c.conversation)
    FROM contacts c ORDER BY c.id";

pub(super) const SCHEMA: &str = "
BEGIN;
CREATE TABLE profile (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  name TEXT NOT NULL,
  relay TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
-- Invitations not yet accepted. The mailbox becomes the contact's inbox.
CREATE TABLE invites (
  id INTEGER PRIMARY KEY,
  mailbox_id BLOB NOT NULL UNIQUE,
  mailbox_key BLOB NOT NULL,
  relay TEXT NOT NULL,
  signature_key BLOB NOT NULL,
  secret BLOB NOT NULL,
  link TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE contacts (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  named_by_user INTEGER NOT NULL DEFAULT 0,
  group_id BLOB NOT NULL UNIQUE,
  signature_key BLOB NOT NULL,
  suite INTEGER NOT NULL,
  committer INTEGER NOT NULL,
  inbox_id BLOB NOT NULL UNIQUE,
  inbox_key BLOB NOT NULL,
  inbox_relay TEXT NOT NULL,
  peer_relay TEXT NOT NULL,
  peer_mailbox BLOB NOT NULL,
  peer_cap BLOB NOT NULL,
  sent_since_update INTEGER NOT NULL DEFAULT 0,
  peer_epoch INTEGER NOT NULL DEFAULT -1,
  created_at INTEGER NOT NULL
);
CREATE TABLE messages (
  id INTEGER PRIMARY KEY,
  contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
  outgoing INTEGER NOT NULL,
  uid BLOB NOT NULL,
  body TEXT NOT NULL,
  sent_at INTEGER NOT NULL,
  stored_at INTEGER NOT NULL,
  read INTEGER NOT NULL DEFAULT 0,
  delivered INTEGER NOT NULL DEFAULT 0,
  UNIQUE (contact_id, outgoing, uid)
);
CREATE INDEX messages_unread ON messages (read, contact_id);
-- Ciphertext waiting for a relay, with the id the relay de-duplicates retries by.
CREATE TABLE outbox (
  id INTEGER PRIMARY KEY,
  relay TEXT NOT NULL,
  mailbox_id BLOB NOT NULL,
  sender_cap BLOB NOT NULL,
  message_id BLOB NOT NULL UNIQUE,
  payload BLOB NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
-- Relay deliveries already taken (redeliveries after a lost acknowledgement are skipped).
CREATE TABLE seen (
  mailbox_id BLOB NOT NULL,
  message_id BLOB NOT NULL,
  seen_at INTEGER NOT NULL,
  PRIMARY KEY (mailbox_id, message_id)
) WITHOUT ROWID;
PRAGMA user_version = 1;
COMMIT;
";

/// Version 2: download caps learned per route (the `tls` transport's freeze avoidance), so that
/// every run of the client keeps under a cap learned once.
pub(super) const MIGRATE_2: &str = "
BEGIN;
CREATE TABLE route_caps (
  route TEXT PRIMARY KEY,
  cap INTEGER NOT NULL,
  learned_at INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 2;
COMMIT;
";

/// Version 3: groups (issue #14). A group is an MLS group of any size whose commits and
/// messages travel through one log on a relay; each device reads the log from its cursor.
pub(super) const MIGRATE_3: &str = "
BEGIN;
CREATE TABLE groups (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  group_id BLOB NOT NULL UNIQUE,
  signature_key BLOB NOT NULL,
  suite INTEGER NOT NULL,
  person BLOB NOT NULL,
  log_relay TEXT NOT NULL,
  log_id BLOB NOT NULL UNIQUE,
  log_cap BLOB NOT NULL,
  log_owner BLOB NOT NULL,
  -- keys a removal rotated to, waiting to be set on the relay
  next_cap BLOB,
  next_owner BLOB,
  cursor INTEGER NOT NULL DEFAULT 0,
  -- the relay message id of this device's staged commit, and the intent it carries
  pending_commit BLOB,
  pending_intent INTEGER,
  sent_since_update INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL,
  -- 0 active, 1 asked to leave, 2 left or removed
  state INTEGER NOT NULL DEFAULT 0,
  -- the epoch of this device's last request to leave (made again in each new epoch)
  leave_epoch INTEGER,
  created_at INTEGER NOT NULL
);
-- Changes this device wants to commit, in order; each is proposed again until it lands.
CREATE TABLE group_intents (
  id INTEGER PRIMARY KEY,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  change BLOB NOT NULL,
  welcome BLOB,
  created_at INTEGER NOT NULL
);
-- Invitations to a group, not yet used.
CREATE TABLE group_invites (
  id INTEGER PRIMARY KEY,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  mailbox_id BLOB NOT NULL UNIQUE,
  mailbox_key BLOB NOT NULL,
  relay TEXT NOT NULL,
  secret BLOB NOT NULL,
  link TEXT NOT NULL,
  -- 1 once a request to join came: the mailbox is deleted on the relay, then the row
  used INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL
);
-- This device's requests to join a group, waiting for the Welcome.
CREATE TABLE group_joins (
  id INTEGER PRIMARY KEY,
  mailbox_id BLOB NOT NULL UNIQUE,
  mailbox_key BLOB NOT NULL,
  relay TEXT NOT NULL,
  secret BLOB NOT NULL,
  signature_key BLOB NOT NULL,
  person BLOB NOT NULL,
  group_name TEXT NOT NULL,
  -- 1 once the Welcome came: the reply mailbox is deleted on the relay, then the row
  used INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL
);
CREATE TABLE welcome_parts (
  mailbox_id BLOB NOT NULL,
  part INTEGER NOT NULL,
  parts INTEGER NOT NULL,
  bytes BLOB NOT NULL,
  PRIMARY KEY (mailbox_id, part)
) WITHOUT ROWID;
-- The transcript, in log order (seq); notices say who joined, left, was removed, renamed.
CREATE TABLE group_messages (
  id INTEGER PRIMARY KEY,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  seq INTEGER,
  relay_msg_id BLOB,
  sender_key BLOB,
  sender TEXT NOT NULL,
  outgoing INTEGER NOT NULL,
  notice INTEGER NOT NULL DEFAULT 0,
  uid BLOB NOT NULL,
  body TEXT NOT NULL,
  sent_at INTEGER NOT NULL,
  stored_at INTEGER NOT NULL,
  read INTEGER NOT NULL DEFAULT 0,
  UNIQUE (group_row, uid)
);
CREATE INDEX group_messages_order ON group_messages (group_row, seq);
CREATE INDEX group_messages_relay_id ON group_messages (relay_msg_id);
-- Texts written while a commit of this device waited for the log's order.
CREATE TABLE group_drafts (
  id INTEGER PRIMARY KEY,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  content BLOB NOT NULL,
  relay_msg_id BLOB NOT NULL
);
-- This device's messages on their way through the log: a message counts only in the epoch
-- current at its place in the log, so one that lost the race to a commit is sent again.
CREATE TABLE group_unconfirmed (
  relay_msg_id BLOB PRIMARY KEY,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  content BLOB NOT NULL,
  epoch INTEGER NOT NULL
) WITHOUT ROWID;
-- Keys a person checked by comparing safety numbers.
CREATE TABLE verified (
  key BLOB PRIMARY KEY,
  verified_at INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 3;
COMMIT;
";

/// Version 4: a conversation between two people is a group of two on a log (issue #14), like
/// any group. A contact now points at its conversation (`conversation`, a `groups` row with
/// `direct = 1`); the columns of the first design (two one-way mailboxes) stay for contacts
/// made before, whose conversations continue as they were. Invitations not yet accepted
/// become requests to join a conversation of two: the person accepting starts it.
///
/// Runs with foreign keys off (`contacts` is rebuilt; `messages` refers to it).
pub(super) const MIGRATE_4: &str = "
BEGIN;
CREATE TABLE contacts_v4 (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  named_by_user INTEGER NOT NULL DEFAULT 0,
  suite INTEGER NOT NULL,
  -- the conversation: a group of two
  conversation INTEGER UNIQUE REFERENCES groups(id) ON DELETE SET NULL,
  -- a conversation of the first design (before schema 4)
  group_id BLOB UNIQUE,
  signature_key BLOB,
  committer INTEGER NOT NULL DEFAULT 0,
  inbox_id BLOB UNIQUE,
  inbox_key BLOB,
  inbox_relay TEXT,
  peer_relay TEXT,
  peer_mailbox BLOB,
  peer_cap BLOB,
  sent_since_update INTEGER NOT NULL DEFAULT 0,
  peer_epoch INTEGER NOT NULL DEFAULT -1,
  created_at INTEGER NOT NULL,
  CHECK (conversation IS NOT NULL OR (group_id IS NOT NULL AND inbox_id IS NOT NULL
    AND peer_mailbox IS NOT NULL))
);
INSERT INTO contacts_v4 (id, name, named_by_user, suite, group_id, signature_key, committer,
    inbox_id, inbox_key, inbox_relay, peer_relay, peer_mailbox, peer_cap, sent_since_update,
    peer_epoch, created_at)
  SELECT id, name, named_by_user, suite, group_id, signature_key, committer, inbox_id,
    inbox_key, inbox_relay, peer_relay, peer_mailbox, peer_cap, sent_since_update, peer_epoch,
    created_at FROM contacts;
DROP TABLE contacts;
ALTER TABLE contacts_v4 RENAME TO contacts;
ALTER TABLE groups ADD COLUMN direct INTEGER NOT NULL DEFAULT 0;
ALTER TABLE group_messages ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE group_joins ADD COLUMN direct INTEGER NOT NULL DEFAULT 0;
INSERT INTO group_joins (mailbox_id, mailbox_key, relay, secret, signature_key, person,
    group_name, created_at, direct)
  SELECT mailbox_id, mailbox_key, relay, secret, signature_key, randomblob(16), '',
    created_at, 1 FROM invites;
DROP TABLE invites;
-- where a verified key was verified, and under which name: a new key under that name there is
-- pointed out in the transcript
ALTER TABLE verified ADD COLUMN group_row INTEGER REFERENCES groups(id) ON DELETE CASCADE;
ALTER TABLE verified ADD COLUMN name TEXT;
PRAGMA user_version = 4;
COMMIT;
";

/// Schema 5: the proxies this profile reaches its relays through (issue #15).
pub(super) const MIGRATE_5: &str = "
BEGIN;
-- a proxy link (pigeon://proxy#…); `always`: relays are reached only through proxies
CREATE TABLE proxies (
  id INTEGER PRIMARY KEY,
  link TEXT NOT NULL UNIQUE,
  always INTEGER NOT NULL DEFAULT 0,
  added_at INTEGER NOT NULL
);
PRAGMA user_version = 5;
COMMIT;
";

/// Version 6: the route that last worked per network and relay (see `crate::network`).
pub(super) const MIGRATE_6: &str = "
BEGIN;
CREATE TABLE routes_worked (
  network BLOB NOT NULL,
  relay BLOB NOT NULL,
  attempt TEXT NOT NULL,
  worked_at INTEGER NOT NULL,
  PRIMARY KEY (network, relay)
) WITHOUT ROWID;
PRAGMA user_version = 6;
COMMIT;
";

/// Version 7: the relays this profile makes things on besides its first (`profile.relay`), in
/// order of preference (issue #15).
pub(super) const MIGRATE_7: &str = "
BEGIN;
CREATE TABLE relays (
  id INTEGER PRIMARY KEY,
  link TEXT NOT NULL UNIQUE,
  added_at INTEGER NOT NULL
);
PRAGMA user_version = 7;
COMMIT;
";

/// Version 8: rejoin tickets (`pigeon_e2ee::rejoin`). `tickets` keeps the secret behind each
/// ticket commitment this device put into a leaf (key packages and commits); a group keeps the
/// commitment of its waiting commit's ticket, and, while it asks to be taken back, the secret
/// it revealed (which seals the Welcome back).
pub(super) const MIGRATE_8: &str = "
BEGIN;
CREATE TABLE tickets (
  commitment BLOB PRIMARY KEY,
  secret BLOB NOT NULL,
  made_at INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE groups ADD COLUMN pending_ticket BLOB;
ALTER TABLE groups ADD COLUMN rejoin_secret BLOB;
PRAGMA user_version = 8;
COMMIT;
";

/// Version 9: a group log's mirror (issue #15): a second copy of the log on another relay,
/// kept in the home copy's order by the group's admins. Per group: this device's position in
/// the mirror (the mirror's numbering), the last home position seen there, and the last home
/// position this device forwarded.
pub(super) const MIGRATE_9: &str = "
BEGIN;
ALTER TABLE groups ADD COLUMN mirror_relay TEXT;
ALTER TABLE groups ADD COLUMN mirror_cursor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE groups ADD COLUMN mirror_end INTEGER NOT NULL DEFAULT 0;
ALTER TABLE groups ADD COLUMN forwarded_upto INTEGER NOT NULL DEFAULT 0;
-- After this device moved the home copy to new keys: the mirror's move (old owner key, new
-- owner key, new member capability), until the mirror's relay has taken it.
ALTER TABLE groups ADD COLUMN mirror_rotation BLOB;
-- A post this device carries from a log's mirror to its home relay for another device: it
-- waits for the home relay, and never goes back to the mirror.
ALTER TABLE outbox ADD COLUMN carried INTEGER NOT NULL DEFAULT 0;
PRAGMA user_version = 9;
COMMIT;
";

/// Version 10: parts of group log entries too large for one relay message, until the last
/// part comes (a log may hold a few such entries in progress; older ones are dropped).
pub(super) const MIGRATE_10: &str = "
BEGIN;
CREATE TABLE entry_parts (
  log_id BLOB NOT NULL,
  last BLOB NOT NULL,
  part INTEGER NOT NULL,
  parts INTEGER NOT NULL,
  bytes BLOB NOT NULL,
  stored_at INTEGER NOT NULL,
  PRIMARY KEY (log_id, last, part)
) WITHOUT ROWID;
PRAGMA user_version = 10;
COMMIT;
";

/// Version 11: a move of a group log's home to its mirror that this device posted, by the
/// move's relay message id, until it shows on the mirror.
pub(super) const MIGRATE_11: &str = "
BEGIN;
ALTER TABLE groups ADD COLUMN pending_move BLOB;
PRAGMA user_version = 11;
COMMIT;
";

/// Version 12: the key a group log's mirror's entries are authenticated with.
pub(super) const MIGRATE_12: &str = "
BEGIN;
ALTER TABLE groups ADD COLUMN mirror_key BLOB;
PRAGMA user_version = 12;
COMMIT;
";

/// Version 13: several devices of one person (issue #16). This device's name, the device links
/// it made (and what each new device was offered), and the link it followed if it was linked.
pub(super) const MIGRATE_13: &str = "
BEGIN;
-- this device's name as the person's other devices and contacts see it ('' for the first)
ALTER TABLE profile ADD COLUMN device TEXT NOT NULL DEFAULT '';
-- links this device made for new devices; state 0 waiting, 1 offered, 2 adding, 3 done,
-- 4 over (done or expired, mailbox deleted)
CREATE TABLE device_links (
  id INTEGER PRIMARY KEY,
  mailbox_id BLOB NOT NULL UNIQUE,
  mailbox_key BLOB NOT NULL,
  relay TEXT NOT NULL,
  secret BLOB NOT NULL,
  device TEXT NOT NULL,
  reply_relay TEXT,
  reply_mailbox BLOB,
  reply_cap BLOB,
  state INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  done_at INTEGER
);
-- the conversations offered to a new device; state 0 offered, 1 adding, 2 Welcome sent
CREATE TABLE device_link_items (
  link INTEGER NOT NULL REFERENCES device_links(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  welcome_id BLOB NOT NULL UNIQUE,
  state INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (link, idx)
);
-- on a new device: the link it followed; state 0 hello sent, 1 key packages sent, 2 done,
-- 3 over (reply mailbox deleted)
CREATE TABLE device_link_joins (
  id INTEGER PRIMARY KEY,
  mailbox_id BLOB NOT NULL UNIQUE,
  mailbox_key BLOB NOT NULL,
  relay TEXT NOT NULL,
  secret BLOB NOT NULL,
  link_relay TEXT NOT NULL,
  link_mailbox BLOB NOT NULL,
  link_cap BLOB NOT NULL,
  total INTEGER,
  state INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL
);
-- the conversations a new device was offered, and the group each became
CREATE TABLE device_link_join_items (
  join_id INTEGER NOT NULL REFERENCES device_link_joins(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  direct INTEGER NOT NULL,
  name TEXT NOT NULL,
  suite INTEGER NOT NULL,
  welcome_id BLOB NOT NULL UNIQUE,
  signature_key BLOB,
  group_row INTEGER REFERENCES groups(id) ON DELETE SET NULL,
  PRIMARY KEY (join_id, idx)
);
PRAGMA user_version = 13;
COMMIT;
";

/// Version 14: the group of the person's own devices (issue #16), in which each device hands
/// the others key packages so that any of them adds the others to a conversation it starts or
/// joins.
pub(super) const MIGRATE_14: &str = "
BEGIN;
ALTER TABLE groups ADD COLUMN devices INTEGER NOT NULL DEFAULT 0;
-- how many days of history a device link hands over with each conversation (0: none)
ALTER TABLE device_links ADD COLUMN history_days INTEGER NOT NULL DEFAULT 30;
-- on a new device: history is coming with each conversation, and which have all of theirs
ALTER TABLE device_link_joins ADD COLUMN history INTEGER NOT NULL DEFAULT 0;
ALTER TABLE device_link_join_items ADD COLUMN history_done INTEGER NOT NULL DEFAULT 0;
-- when this device last read something another device of the person wrote, by device name
CREATE TABLE device_seen (
  device TEXT PRIMARY KEY,
  seen_at INTEGER NOT NULL
) WITHOUT ROWID;
-- a conversation started or joined since the person's other devices were last brought in
ALTER TABLE profile ADD COLUMN bring_devices INTEGER NOT NULL DEFAULT 0;
-- key packages this device made for another of the person's devices to add it with; the
-- Welcome comes through the group of devices, sealed under `secret`, in parts with `welcome_id`
CREATE TABLE own_packages (
  secret BLOB PRIMARY KEY,
  welcome_id BLOB NOT NULL UNIQUE,
  for_key BLOB NOT NULL,
  signature_key BLOB NOT NULL,
  made_at INTEGER NOT NULL
) WITHOUT ROWID;
-- key packages the person's other devices made for this one; `used_for`: the conversation an
-- add with it was queued in
CREATE TABLE sibling_packages (
  id INTEGER PRIMARY KEY,
  owner_key BLOB NOT NULL,
  key_package BLOB NOT NULL,
  secret BLOB NOT NULL,
  used_for INTEGER REFERENCES groups(id) ON DELETE SET NULL,
  used INTEGER NOT NULL DEFAULT 0,
  received_at INTEGER NOT NULL
);
PRAGMA user_version = 14;
COMMIT;
";

/// Version 15: backups (issue #16). `backup_secrets` keeps each conversation's restore secret
/// from `pigeon backup`'s start until the file is written (then only the file has it);
/// `groups.restoring` marks a conversation a restore is bringing this device back into.
pub(super) const MIGRATE_15: &str = "
BEGIN;
CREATE TABLE backup_secrets (
  group_row INTEGER PRIMARY KEY REFERENCES groups(id) ON DELETE CASCADE,
  secret BLOB NOT NULL,
  commitment BLOB NOT NULL,
  made_at INTEGER NOT NULL
);
ALTER TABLE groups ADD COLUMN restoring INTEGER NOT NULL DEFAULT 0;
PRAGMA user_version = 15;
COMMIT;
";

/// Version 16: photos, voice notes and files (issue #17). `description` is the attachment
/// as sent (an `Attachment` protobuf); `done` counts an upload's chunks on the relay in order
/// from the first, or is a download's log position; `received` is a download's bitmap of
/// chunks here; `seed` makes every secret of an upload until it is sent.
pub(super) const MIGRATE_16: &str = "
BEGIN;
CREATE TABLE files (
  id INTEGER PRIMARY KEY,
  message INTEGER NOT NULL UNIQUE REFERENCES group_messages(id) ON DELETE CASCADE,
  group_row INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
  outgoing INTEGER NOT NULL,
  description BLOB NOT NULL,
  state INTEGER NOT NULL,
  done INTEGER NOT NULL DEFAULT 0,
  received BLOB,
  seed BLOB,
  error TEXT,
  saved_to TEXT,
  updated_at INTEGER NOT NULL
);
CREATE INDEX files_state ON files (state);
CREATE INDEX files_group ON files (group_row);
PRAGMA user_version = 16;
COMMIT;
";

/// Version 17: read receipts in conversations of two (issue #17). `group_messages.seen`: of
/// this profile's line, the other person read it; of theirs, this device told them it was read
/// (lines read before this version count as told). `profile.read_receipts`: whether this device
/// tells people what it read.
pub(super) const MIGRATE_17: &str = "
BEGIN;
ALTER TABLE group_messages ADD COLUMN seen INTEGER NOT NULL DEFAULT 0;
UPDATE group_messages SET seen = 1 WHERE outgoing = 0 AND read = 1;
ALTER TABLE profile ADD COLUMN read_receipts INTEGER NOT NULL DEFAULT 1;
PRAGMA user_version = 17;
COMMIT;
";

/// Version 18: openmls's large values (a group's tree, its message secrets at many devices) are
/// stored as MessagePack (`codec.rs`). No table changes; the version tells a release from before
/// that it cannot read this profile (`TooNew`) instead of letting it fail inside a group's state.
pub(super) const MIGRATE_18: &str = "
BEGIN;
PRAGMA user_version = 18;
COMMIT;
";
