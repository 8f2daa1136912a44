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
