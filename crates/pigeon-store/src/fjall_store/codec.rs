//! Key and value layouts of the fjall backend, and their checked decoding.
//!
//! Every integer is big-endian so keys sort in numeric order. Decoding never panics: a value of
//! the wrong shape is reported as [`StoreError::Backend`] naming what was corrupt (never its bytes).
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `meta` | mailbox (32) | format (1) · recipient key (32) · capability hash (32) · created (8) · high-water seq (8) |
//! | `meta` | [`FORMAT_KEY`] | format (1) |
//! | `msgs` | mailbox (32) · seq (8) | message id (16) · received (8) · ciphertext |
//! | `dedup` | mailbox (32) · message id (16) | seq (8) · received (8) |
//! | `expiry` | received (8) · mailbox (32) · seq (8) | message id (16) |
//! | `slots` | slot (32) · 0 | owner key (32) · next package number (8) |
//! | `slots` | slot (32) · 1 | last-resort package |
//! | `slots` | slot (32) · 2 · package number (8) | one-time package |

use crate::{MailboxId, MailboxRecord, MessageId, StoreError};
use pigeon_wire::{ID_LEN, MESSAGE_ID_LEN};

/// Version of this layout, kept under [`FORMAT_KEY`] and at the front of every meta value.
pub(super) const FORMAT: u8 = 1;
/// Where the layout version lives in `meta`; its length differs from a mailbox id, so no clash.
pub(super) const FORMAT_KEY: &[u8] = b"pigeon-store:format";

pub(super) type MsgKey = [u8; ID_LEN + 8];
pub(super) type DedupKey = [u8; ID_LEN + MESSAGE_ID_LEN];
pub(super) type ExpiryKey = [u8; 8 + ID_LEN + 8];

/// Length of the fixed header in front of a stored ciphertext.
pub(super) const MSG_HEADER: usize = MESSAGE_ID_LEN + 8;
const META_LEN: usize = 1 + 32 + 32 + 8 + 8;
const DEDUP_VALUE_LEN: usize = 16;
const OWNER_LEN: usize = 32 + 8;

pub(super) const SLOT_OWNER: u8 = 0;
pub(super) const SLOT_LAST_RESORT: u8 = 1;
pub(super) const SLOT_ONE_TIME: u8 = 2;

fn corrupt(op: &'static str, what: &str) -> StoreError {
    StoreError::Backend {
        op,
        reason: format!("corrupt {what} in the store"),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at + N)?.try_into().ok()
}

// ---- meta ----

/// A decoded meta value: the record plus the highest sequence number ever handed out by a
/// deletion-time snapshot (see the writer's notes on sequence continuity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) record: MailboxRecord,
    pub(super) high_water: u64,
}

pub(super) fn encode_meta(meta: &Meta) -> [u8; META_LEN] {
    let mut out = [0u8; META_LEN];
    out[0] = FORMAT;
    out[1..33].copy_from_slice(&meta.record.recipient_key);
    out[33..65].copy_from_slice(&meta.record.sender_cap_hash);
    out[65..73].copy_from_slice(&meta.record.created_at.to_be_bytes());
    out[73..81].copy_from_slice(&meta.high_water.to_be_bytes());
    out
}

pub(super) fn decode_meta(op: &'static str, bytes: &[u8]) -> Result<Meta, StoreError> {
    if bytes.len() != META_LEN || bytes[0] != FORMAT {
        return Err(corrupt(op, "mailbox record"));
    }
    let parsed = (|| {
        Some(Meta {
            record: MailboxRecord {
                recipient_key: array_at(bytes, 1)?,
                sender_cap_hash: array_at(bytes, 33)?,
                created_at: u64_at(bytes, 65)?,
            },
            high_water: u64_at(bytes, 73)?,
        })
    })();
    parsed.ok_or_else(|| corrupt(op, "mailbox record"))
}

// ---- messages ----

pub(super) fn msg_key(mailbox: &MailboxId, seq: u64) -> MsgKey {
    let mut out = [0u8; ID_LEN + 8];
    out[..ID_LEN].copy_from_slice(&mailbox.0);
    out[ID_LEN..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// The sequence number in a message key of the expected mailbox.
pub(super) fn msg_key_seq(op: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    if key.len() != ID_LEN + 8 {
        return Err(corrupt(op, "message key"));
    }
    u64_at(key, ID_LEN).ok_or_else(|| corrupt(op, "message key"))
}

pub(super) fn msg_header(message_id: &MessageId, received_at: u64) -> [u8; MSG_HEADER] {
    let mut out = [0u8; MSG_HEADER];
    out[..MESSAGE_ID_LEN].copy_from_slice(&message_id.0);
    out[MESSAGE_ID_LEN..].copy_from_slice(&received_at.to_be_bytes());
    out
}

/// Message id, receive time and ciphertext of a stored message value.
pub(super) fn decode_msg<'v>(
    op: &'static str,
    value: &'v [u8],
) -> Result<(MessageId, u64, &'v [u8]), StoreError> {
    let parsed = (|| {
        let id = MessageId(array_at(value, 0)?);
        let received = u64_at(value, MESSAGE_ID_LEN)?;
        Some((id, received, value.get(MSG_HEADER..)?))
    })();
    parsed.ok_or_else(|| corrupt(op, "message"))
}

// ---- de-duplication ----

pub(super) fn dedup_key(mailbox: &MailboxId, message_id: &MessageId) -> DedupKey {
    let mut out = [0u8; ID_LEN + MESSAGE_ID_LEN];
    out[..ID_LEN].copy_from_slice(&mailbox.0);
    out[ID_LEN..].copy_from_slice(&message_id.0);
    out
}

pub(super) fn encode_dedup(seq: u64, received_at: u64) -> [u8; DEDUP_VALUE_LEN] {
    let mut out = [0u8; DEDUP_VALUE_LEN];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..].copy_from_slice(&received_at.to_be_bytes());
    out
}

/// Sequence number and receive time of a de-duplication record.
pub(super) fn decode_dedup(op: &'static str, value: &[u8]) -> Result<(u64, u64), StoreError> {
    if value.len() != DEDUP_VALUE_LEN {
        return Err(corrupt(op, "de-duplication record"));
    }
    let parsed = (|| Some((u64_at(value, 0)?, u64_at(value, 8)?)))();
    parsed.ok_or_else(|| corrupt(op, "de-duplication record"))
}

// ---- expiry index ----

pub(super) fn expiry_key(received_at: u64, mailbox: &MailboxId, seq: u64) -> ExpiryKey {
    let mut out = [0u8; 8 + ID_LEN + 8];
    out[..8].copy_from_slice(&received_at.to_be_bytes());
    out[8..8 + ID_LEN].copy_from_slice(&mailbox.0);
    out[8 + ID_LEN..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// One entry of the expiry index, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ExpiryEntry {
    pub(super) received_at: u64,
    pub(super) mailbox: MailboxId,
    pub(super) seq: u64,
    pub(super) message_id: MessageId,
}

pub(super) fn decode_expiry(
    op: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<ExpiryEntry, StoreError> {
    if key.len() != 8 + ID_LEN + 8 || value.len() != MESSAGE_ID_LEN {
        return Err(corrupt(op, "expiry index entry"));
    }
    let parsed = (|| {
        Some(ExpiryEntry {
            received_at: u64_at(key, 0)?,
            mailbox: MailboxId(array_at(key, 8)?),
            seq: u64_at(key, 8 + ID_LEN)?,
            message_id: MessageId(array_at(value, 0)?),
        })
    })();
    parsed.ok_or_else(|| corrupt(op, "expiry index entry"))
}

// ---- key-package slots ----

pub(super) fn slot_key(slot: &[u8; 32], kind: u8) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[..32].copy_from_slice(slot);
    out[32] = kind;
    out
}

pub(super) fn one_time_key(slot: &[u8; 32], number: u64) -> [u8; 41] {
    let mut out = [0u8; 41];
    out[..32].copy_from_slice(slot);
    out[32] = SLOT_ONE_TIME;
    out[33..].copy_from_slice(&number.to_be_bytes());
    out
}

pub(super) fn encode_owner(owner: &[u8; 32], next_number: u64) -> [u8; OWNER_LEN] {
    let mut out = [0u8; OWNER_LEN];
    out[..32].copy_from_slice(owner);
    out[32..].copy_from_slice(&next_number.to_be_bytes());
    out
}

/// Owner key and next one-time package number of a slot.
pub(super) fn decode_owner(op: &'static str, value: &[u8]) -> Result<([u8; 32], u64), StoreError> {
    if value.len() != OWNER_LEN {
        return Err(corrupt(op, "key-package slot owner"));
    }
    let parsed = (|| Some((array_at(value, 0)?, u64_at(value, 32)?)))();
    parsed.ok_or_else(|| corrupt(op, "key-package slot owner"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_garbage() {
        let meta = Meta {
            record: MailboxRecord {
                recipient_key: [1; 32],
                sender_cap_hash: [2; 32],
                created_at: 7,
            },
            high_water: 42,
        };
        assert_eq!(decode_meta("t", &encode_meta(&meta)).unwrap(), meta);
        assert!(decode_meta("t", &[]).is_err());
        let mut bad = encode_meta(&meta);
        bad[0] = 99;
        assert!(decode_meta("t", &bad).is_err());
        assert!(decode_meta("t", &encode_meta(&meta)[..80]).is_err());
    }

    #[test]
    fn keys_sort_numerically() {
        let id = MailboxId([9; 32]);
        assert!(msg_key(&id, 255) < msg_key(&id, 256));
        assert!(expiry_key(255, &id, 9) < expiry_key(256, &MailboxId([0; 32]), 0));
        assert!(one_time_key(&[3; 32], 1) < one_time_key(&[3; 32], 2));
        assert_eq!(msg_key_seq("t", &msg_key(&id, 77)).unwrap(), 77);
        assert!(msg_key_seq("t", &[0; 12]).is_err());
    }

    #[test]
    fn values_decode_or_fail_cleanly() {
        let header = msg_header(&MessageId([5; 16]), 99);
        let mut value = header.to_vec();
        value.extend_from_slice(b"ct");
        let (id, at, ct) = decode_msg("t", &value).unwrap();
        assert_eq!((id, at, ct), (MessageId([5; 16]), 99, &b"ct"[..]));
        assert!(decode_msg("t", &value[..10]).is_err());

        assert_eq!(decode_dedup("t", &encode_dedup(3, 4)).unwrap(), (3, 4));
        assert!(decode_dedup("t", &[1, 2]).is_err());

        let id = MailboxId([8; 32]);
        let e = decode_expiry("t", &expiry_key(10, &id, 11), &[6; 16]).unwrap();
        assert_eq!((e.received_at, e.mailbox, e.seq), (10, id, 11));
        assert!(decode_expiry("t", &[0; 3], &[6; 16]).is_err());

        assert_eq!(
            decode_owner("t", &encode_owner(&[1; 32], 5)).unwrap(),
            ([1; 32], 5)
        );
        let err = decode_owner("t", &[0; 7]).unwrap_err();
        assert!(err.to_string().contains("corrupt"));
    }
}
