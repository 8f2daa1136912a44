//! Key and value layouts of the fjall backend, and their checked decoding.
//!
//! Each mailbox gets a store-local number when it is created (never reused, also not after the
//! mailbox is deleted and created again). Message and de-duplication keys start with that number
//! in LEB128 instead of the 32-byte id: the keys stay at most 20 bytes for the first 2^28
//! mailboxes, which fjall keeps inline instead of behind a pointer, and that makes its in-memory
//! table markedly cheaper to search (measured: about a third less CPU per message). LEB128 is
//! prefix-free, so a prefix scan over one number never reaches another mailbox.
//!
//! Fixed-width integers are big-endian so keys sort in numeric order. Decoding never panics: a
//! value of the wrong shape is [`StoreError::Backend`] naming what was corrupt (never its bytes).
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `meta` | mailbox id (32) | an inbox: [`META_INBOX`] (1) · recipient key (32) · capability hash (32) · created (8) · high-water seq (8) · number (8) |
//! | `meta` | mailbox id (32) | a log: [`META_LOG`] (1) · owner key (32) · capability hash (32) · created (8) · high-water seq (8) · number (8) · n (1) · n × (retired capability hash (32) · read until (8)) |
//! | `meta` | [`FORMAT_KEY`] | format (1) |
//! | `meta` | [`ROUND_KEY`] | next round number (8) |
//! | `meta` | [`NUMBER_KEY`] | next mailbox number (8) |
//! | `msgs` | number (LEB128) · seq (8) | message id (16) · received (8) · ciphertext |
//! | `dedup` | number (LEB128) · message id (16) | seq (8) · received (8) |
//! | `expiry` | received (8) · round (8) | n × (number (8) · mailbox id (32) · seq (8) · message id (16)) |
//! | `slots` | slot (32) · 0 | owner key (32) · next package number (8) |
//! | `slots` | slot (32) · 1 | last-resort package |
//! | `slots` | slot (32) · 2 · package number (8) | one-time package |
//! | `used` | [`USED_MAILBOX`] or [`USED_SLOT`] (1) · mailbox id or slot (32) | day last renewed (8) |
//! | `idle` | day last renewed (8) · kind (1) · mailbox id or slot (32) | (empty) |
//! | `meta` | [`IDLE_INDEX_KEY`] | 1: every mailbox and slot is in `used` and `idle` |
//!
//! `used` and `idle` are kept together: `idle` orders by the day of the last renewal, so expiry
//! reads only what is due; `used` finds a renewal's old `idle` key. Stores made before them are
//! listed (as renewed on the day of the first sweep) by that sweep, which then sets
//! [`IDLE_INDEX_KEY`].

use crate::{
    MAX_RETIRED_CAPS, MailboxId, MailboxKind, MailboxRecord, MessageId, RetiredCap, StoreError,
};
use pigeon_wire::{ID_LEN, MESSAGE_ID_LEN};

/// Version of this layout, kept under [`FORMAT_KEY`].
/// (1 was the first layout, with 32-byte mailbox ids in every key and no mailbox numbers.)
pub(super) const FORMAT: u8 = 2;
/// First byte of an inbox's meta value. It is [`FORMAT`], as in every meta value written
/// before logs existed: those read as inboxes, unchanged.
pub(super) const META_INBOX: u8 = FORMAT;
/// First byte of a log's meta value (a release without logs refuses it as corrupt rather than
/// read a log as an inbox).
pub(super) const META_LOG: u8 = 3;
/// Where the layout version lives in `meta`; its length differs from a mailbox id, so no clash.
pub(super) const FORMAT_KEY: &[u8] = b"pigeon-store:format";
/// Where the next expiry index round number lives in `meta` (it keeps index keys unique).
pub(super) const ROUND_KEY: &[u8] = b"pigeon-store:round";
/// Where the next mailbox number lives in `meta`.
pub(super) const NUMBER_KEY: &[u8] = b"pigeon-store:mailbox-number";

/// Set in `meta` once every mailbox and slot is listed in `used` and `idle`.
pub(super) const IDLE_INDEX_KEY: &[u8] = b"pigeon-store:idle-index";
/// Kind byte of a mailbox in `used` and `idle` keys.
pub(super) const USED_MAILBOX: u8 = 0;
/// Kind byte of a key-package slot in `used` and `idle` keys.
pub(super) const USED_SLOT: u8 = 1;
/// Seconds in the unit renewals are kept in.
pub(super) const DAY: u64 = 24 * 3600;

/// A `used` key.
pub(super) fn used_key(kind: u8, id: &[u8; 32]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = kind;
    out[1..].copy_from_slice(id);
    out
}

/// An `idle` key.
pub(super) fn idle_key(day: u64, kind: u8, id: &[u8; 32]) -> [u8; 41] {
    let mut out = [0u8; 41];
    out[..8].copy_from_slice(&day.to_be_bytes());
    out[8] = kind;
    out[9..].copy_from_slice(id);
    out
}

/// The day, kind and id of an `idle` key.
pub(super) fn decode_idle_key(
    op: &'static str,
    key: &[u8],
) -> Result<(u64, u8, [u8; 32]), StoreError> {
    let parsed = (|| {
        if key.len() != 41 || !matches!(key[8], USED_MAILBOX | USED_SLOT) {
            return None;
        }
        Some((u64_at(key, 0)?, key[8], array_at(key, 9)?))
    })();
    parsed.ok_or_else(|| corrupt(op, "idle index entry"))
}

/// A `used` value: the day.
pub(super) fn decode_used(op: &'static str, value: &[u8]) -> Result<u64, StoreError> {
    match value.try_into() {
        Ok(bytes) => Ok(u64::from_be_bytes(bytes)),
        Err(_) => Err(corrupt(op, "renewal day")),
    }
}

/// Length of the fixed header in front of a stored ciphertext.
pub(super) const MSG_HEADER: usize = MESSAGE_ID_LEN + 8;
/// One message in an expiry index entry: number, mailbox id, seq, message id.
pub(super) const EXPIRY_ITEM: usize = 8 + ID_LEN + 8 + MESSAGE_ID_LEN;
/// An inbox's meta value; a log's starts the same.
const META_LEN: usize = 1 + 32 + 32 + 8 + 8 + 8;
/// One retired capability in a log's meta value.
const RETIRED_LEN: usize = 32 + 8;
const DEDUP_VALUE_LEN: usize = 16;
const OWNER_LEN: usize = 32 + 8;
/// Longest LEB128 encoding of a u64.
const LEB_MAX: usize = 10;

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

/// A short key built on the stack: a mailbox number and a fixed-width tail.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    buf: [u8; LEB_MAX + MESSAGE_ID_LEN],
    len: u8,
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl Key {
    fn new(number: u64, tail: &[u8]) -> Self {
        let mut buf = [0u8; LEB_MAX + MESSAGE_ID_LEN];
        let mut len = 0;
        let mut rest = number;
        loop {
            // Seven bits per byte; the mask makes the conversion exact.
            let low = u8::try_from(rest & 0x7f).unwrap_or(0);
            rest >>= 7;
            if rest == 0 {
                buf[len] = low;
                len += 1;
                break;
            }
            buf[len] = low | 0x80;
            len += 1;
        }
        let end = len + tail.len();
        buf[len..end].copy_from_slice(tail);
        Self {
            buf,
            // At most LEB_MAX + 16 = 26.
            len: u8::try_from(end).unwrap_or(u8::MAX),
        }
    }

    /// The prefix of every message or de-duplication key of a mailbox.
    pub(super) fn prefix(number: u64) -> Self {
        Self::new(number, &[])
    }
}

// ---- meta ----

/// A decoded meta value: the record, the mailbox's number, and the highest sequence number
/// handed out as of the last deletion (see the writer's notes on sequence continuity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) record: MailboxRecord,
    pub(super) high_water: u64,
    pub(super) number: u64,
}

/// The meta value of a mailbox. An inbox's retired capabilities (it has none) are not
/// written; a log's beyond [`MAX_RETIRED_CAPS`] neither (the writer keeps no more).
pub(super) fn encode_meta(record: &MailboxRecord, high_water: u64, number: u64) -> Vec<u8> {
    let retired = match record.kind {
        MailboxKind::Inbox => &[][..],
        MailboxKind::Log => {
            let skip = record.retired_caps.len().saturating_sub(MAX_RETIRED_CAPS);
            &record.retired_caps[skip..]
        }
    };
    let mut out = Vec::with_capacity(META_LEN + 1 + retired.len() * RETIRED_LEN);
    out.push(match record.kind {
        MailboxKind::Inbox => META_INBOX,
        MailboxKind::Log => META_LOG,
    });
    out.extend_from_slice(&record.recipient_key);
    out.extend_from_slice(&record.sender_cap_hash);
    out.extend_from_slice(&record.created_at.to_be_bytes());
    out.extend_from_slice(&high_water.to_be_bytes());
    out.extend_from_slice(&number.to_be_bytes());
    if record.kind == MailboxKind::Log {
        // At most MAX_RETIRED_CAPS (8).
        out.push(u8::try_from(retired.len()).unwrap_or(u8::MAX));
        for r in retired {
            out.extend_from_slice(&r.cap_hash);
            out.extend_from_slice(&r.read_until.to_be_bytes());
        }
    }
    out
}

pub(super) fn decode_meta(op: &'static str, bytes: &[u8]) -> Result<Meta, StoreError> {
    let parsed = (|| {
        let kind = match *bytes.first()? {
            META_INBOX if bytes.len() == META_LEN => MailboxKind::Inbox,
            META_LOG => MailboxKind::Log,
            _ => return None,
        };
        let mut retired_caps = Vec::new();
        if kind == MailboxKind::Log {
            let n = usize::from(*bytes.get(META_LEN)?);
            if n > MAX_RETIRED_CAPS || bytes.len() != META_LEN + 1 + n * RETIRED_LEN {
                return None;
            }
            retired_caps.reserve_exact(n);
            for i in 0..n {
                let at = META_LEN + 1 + i * RETIRED_LEN;
                retired_caps.push(RetiredCap {
                    cap_hash: array_at(bytes, at)?,
                    read_until: u64_at(bytes, at + 32)?,
                });
            }
        }
        Some(Meta {
            record: MailboxRecord {
                kind,
                recipient_key: array_at(bytes, 1)?,
                sender_cap_hash: array_at(bytes, 33)?,
                created_at: u64_at(bytes, 65)?,
                retired_caps,
            },
            high_water: u64_at(bytes, 73)?,
            number: u64_at(bytes, 81)?,
        })
    })();
    parsed.ok_or_else(|| corrupt(op, "mailbox record"))
}

/// A counter kept in `meta` ([`ROUND_KEY`], [`NUMBER_KEY`]).
pub(super) fn decode_counter(op: &'static str, value: &[u8]) -> Result<u64, StoreError> {
    match value.len() {
        8 => u64_at(value, 0).ok_or_else(|| corrupt(op, "counter")),
        _ => Err(corrupt(op, "counter")),
    }
}

// ---- messages ----

pub(super) fn msg_key(number: u64, seq: u64) -> Key {
    Key::new(number, &seq.to_be_bytes())
}

/// The sequence number at the end of a message key.
pub(super) fn msg_key_seq(op: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .filter(|&at| at > 0)
        .and_then(|at| u64_at(key, at))
        .ok_or_else(|| corrupt(op, "message key"))
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

pub(super) fn dedup_key(number: u64, message_id: &MessageId) -> Key {
    Key::new(number, &message_id.0)
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

pub(super) fn expiry_key(received_at: u64, round: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&received_at.to_be_bytes());
    out[8..].copy_from_slice(&round.to_be_bytes());
    out
}

/// One message listed in an expiry index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ExpiryItem {
    pub(super) number: u64,
    pub(super) mailbox: MailboxId,
    pub(super) seq: u64,
    pub(super) message_id: MessageId,
}

pub(super) fn push_expiry_item(value: &mut Vec<u8>, item: &ExpiryItem) {
    value.extend_from_slice(&item.number.to_be_bytes());
    value.extend_from_slice(&item.mailbox.0);
    value.extend_from_slice(&item.seq.to_be_bytes());
    value.extend_from_slice(&item.message_id.0);
}

/// The receive time of an expiry index entry and the messages it lists.
pub(super) fn decode_expiry<'v>(
    op: &'static str,
    key: &[u8],
    value: &'v [u8],
) -> Result<(u64, impl Iterator<Item = ExpiryItem> + 'v), StoreError> {
    let received_at = match key.len() {
        16 => u64_at(key, 0),
        _ => None,
    };
    let Some(received_at) = received_at.filter(|_| value.len().is_multiple_of(EXPIRY_ITEM)) else {
        return Err(corrupt(op, "expiry index entry"));
    };
    let items = value.chunks_exact(EXPIRY_ITEM).filter_map(|raw| {
        Some(ExpiryItem {
            number: u64_at(raw, 0)?,
            mailbox: MailboxId(array_at(raw, 8)?),
            seq: u64_at(raw, 8 + ID_LEN)?,
            message_id: MessageId(array_at(raw, 16 + ID_LEN)?),
        })
    });
    Ok((received_at, items))
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

    fn inbox() -> MailboxRecord {
        MailboxRecord::new(MailboxKind::Inbox, [1; 32], [2; 32], 7)
    }

    fn log(retired: u8) -> MailboxRecord {
        let mut record = MailboxRecord::new(MailboxKind::Log, [3; 32], [4; 32], 8);
        record.retired_caps = (0..retired)
            .map(|i| RetiredCap {
                cap_hash: [10 + i; 32],
                read_until: u64::from(i) * 100,
            })
            .collect();
        record
    }

    #[test]
    fn meta_round_trips_and_rejects_garbage() {
        for record in [inbox(), log(0), log(1), log(8)] {
            let meta = Meta {
                record,
                high_water: 42,
                number: 9,
            };
            let bytes = encode_meta(&meta.record, 42, 9);
            assert_eq!(decode_meta("t", &bytes).unwrap(), meta);
            for cut in [0, 1, 80, bytes.len() - 1] {
                assert!(decode_meta("t", &bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_meta("t", &longer).is_err());
            let mut bad = bytes;
            bad[0] = 99;
            assert!(decode_meta("t", &bad).is_err());
        }
        assert_eq!(encode_meta(&inbox(), 1, 1).len(), META_LEN);
        // A log that claims more retired capabilities than a log keeps is corrupt.
        let mut nine = encode_meta(&log(8), 1, 1);
        nine[META_LEN] = 9;
        nine.extend_from_slice(&[0; RETIRED_LEN]);
        assert!(decode_meta("t", &nine).is_err());
        // More than a log keeps is never written.
        let mut many = log(8);
        many.retired_caps.insert(0, many.retired_caps[0]);
        assert_eq!(
            decode_meta("t", &encode_meta(&many, 1, 1)).unwrap().record,
            log(8)
        );
        // An inbox's retired capabilities (it should have none) are not written.
        let mut odd = inbox();
        odd.retired_caps = log(2).retired_caps;
        assert_eq!(
            decode_meta("t", &encode_meta(&odd, 1, 1)).unwrap().record,
            inbox()
        );
        assert_eq!(decode_counter("t", &7u64.to_be_bytes()).unwrap(), 7);
        assert!(decode_counter("t", &[1]).is_err());
    }

    /// A relay upgraded from the release before logs keeps its mailboxes: their meta values,
    /// written then (built here byte by byte, as that release's encoder did), read as inboxes.
    #[test]
    fn meta_written_before_logs_reads_as_an_inbox() {
        let mut old = vec![2u8];
        old.extend_from_slice(&[0xaa; 32]);
        old.extend_from_slice(&[0xbb; 32]);
        old.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        old.extend_from_slice(&77u64.to_be_bytes());
        old.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(old.len(), 89);
        let meta = decode_meta("t", &old).unwrap();
        assert_eq!(
            meta,
            Meta {
                record: MailboxRecord::new(
                    MailboxKind::Inbox,
                    [0xaa; 32],
                    [0xbb; 32],
                    1_700_000_000
                ),
                high_water: 77,
                number: 5,
            }
        );
        // And an inbox is still written exactly that way.
        assert_eq!(encode_meta(&meta.record, 77, 5), old);
    }

    #[test]
    fn keys_are_short_prefix_free_and_sort_by_seq() {
        assert_eq!(msg_key(5, 1).as_ref(), [5, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(Key::prefix(300).as_ref(), [0xac, 0x02]);
        assert_eq!(Key::prefix(u64::MAX).as_ref().len(), LEB_MAX);
        assert_eq!(
            dedup_key((1 << 28) - 1, &MessageId([0; 16])).as_ref().len(),
            20
        );
        assert!(msg_key(7, 255).as_ref() < msg_key(7, 256).as_ref());
        // No number's prefix is the start of another number's key.
        for (a, b) in [(1u64, 128u64), (0, 1 << 7), (127, 1 << 14), (1, 1 << 35)] {
            assert!(!msg_key(b, 1).as_ref().starts_with(Key::prefix(a).as_ref()));
            assert!(!msg_key(a, 1).as_ref().starts_with(Key::prefix(b).as_ref()));
        }
        assert_eq!(msg_key_seq("t", msg_key(300, 77).as_ref()).unwrap(), 77);
        assert!(msg_key_seq("t", &[0; 8]).is_err());
        assert!(expiry_key(255, 9) < expiry_key(256, 0));
        assert!(one_time_key(&[3; 32], 1) < one_time_key(&[3; 32], 2));
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

        let items = [
            ExpiryItem {
                number: 1,
                mailbox: MailboxId([8; 32]),
                seq: 11,
                message_id: MessageId([6; 16]),
            },
            ExpiryItem {
                number: 2,
                mailbox: MailboxId([9; 32]),
                seq: 12,
                message_id: MessageId([7; 16]),
            },
        ];
        let mut value = Vec::new();
        for item in &items {
            push_expiry_item(&mut value, item);
        }
        let (at, decoded) = decode_expiry("t", &expiry_key(10, 1), &value).unwrap();
        assert_eq!(at, 10);
        assert_eq!(decoded.collect::<Vec<_>>(), items);
        assert!(decode_expiry("t", &[0; 3], &value).is_err());
        assert!(decode_expiry("t", &expiry_key(1, 1), &value[..50]).is_err());

        assert_eq!(
            decode_owner("t", &encode_owner(&[1; 32], 5)).unwrap(),
            ([1; 32], 5)
        );
        let err = decode_owner("t", &[0; 7]).unwrap_err();
        assert!(err.to_string().contains("corrupt"));
    }
}
