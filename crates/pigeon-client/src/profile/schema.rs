//! The profile's own tables (openmls keeps its state in tables of its own, migrated by
//! `openmls_sqlite_storage`).

pub(super) const CONTACT_QUERY_ALL: &str = "
    SELECT c.id, c.name, c.suite, c.created_at,
      (SELECT count(*) FROM messages m WHERE m.contact_id = c.id AND m.read = 0),
      (SELECT count(*) FROM outbox o WHERE o.mailbox_id = c.peer_mailbox)
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
