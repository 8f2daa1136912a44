//! What the NATS store writes, byte by byte and header by header (no IO).
//!
//! * A mailbox's record is one KV value ([`Record`]); a key-package slot's another ([`Slot`]).
//! * Every entry on a mailbox's subject carries the mailbox's state after it in headers
//!   ([`Entry`]): the last sequence number, the depth and the generation. The newest entry is
//!   therefore the mailbox's head.
//!
//! Everything read back is checked: a value or header that does not parse is refused with a
//! [`StoreError::Backend`] that says what is wrong, never a panic.

use bytes::Bytes;
use pigeon_store::{MAX_RETIRED_CAPS, MailboxKind, MailboxRecord, RetiredCap, StoreError};

/// Seconds in a day: renewals are kept by the day.
pub(crate) const DAY: u64 = 86_400;

const RECORD_VERSION: u8 = 1;
const SLOT_VERSION: u8 = 1;

pub(crate) fn corrupt(op: &'static str, what: impl Into<String>) -> StoreError {
    StoreError::Backend {
        op,
        reason: what.into(),
    }
}

/// A mailbox as the KV bucket keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// What the trait returns.
    pub(crate) record: MailboxRecord,
    /// Random per creation: entries of an earlier mailbox under the same id are not this one's.
    pub(crate) generation: u64,
    /// The day of the last renewal (or of creation).
    pub(crate) used_day: u64,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let r = &self.record;
        let mut out = Vec::with_capacity(1 + 1 + 32 + 32 + 8 * 3 + 1 + r.retired_caps.len() * 40);
        out.push(RECORD_VERSION);
        out.push(match r.kind {
            MailboxKind::Inbox => 0,
            MailboxKind::Log => 1,
        });
        out.extend_from_slice(&r.recipient_key);
        out.extend_from_slice(&r.sender_cap_hash);
        out.extend_from_slice(&r.created_at.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.used_day.to_be_bytes());
        // At most MAX_RETIRED_CAPS (8): fits a byte.
        out.push(u8::try_from(r.retired_caps.len().min(MAX_RETIRED_CAPS)).unwrap_or(0));
        for c in r.retired_caps.iter().take(MAX_RETIRED_CAPS) {
            out.extend_from_slice(&c.cap_hash);
            out.extend_from_slice(&c.read_until.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(op: &'static str, raw: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader {
            op,
            raw,
            what: "a mailbox record",
        };
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(corrupt(
                op,
                format!("a mailbox record of version {version}, not {RECORD_VERSION}"),
            ));
        }
        let kind = match r.u8()? {
            0 => MailboxKind::Inbox,
            1 => MailboxKind::Log,
            k => return Err(corrupt(op, format!("a mailbox record of unknown kind {k}"))),
        };
        let recipient_key = r.array()?;
        let sender_cap_hash = r.array()?;
        let created_at = r.u64()?;
        let generation = r.u64()?;
        let used_day = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > MAX_RETIRED_CAPS {
            return Err(corrupt(
                op,
                format!("a mailbox record with {n} retired capabilities"),
            ));
        }
        let mut retired_caps = Vec::with_capacity(n);
        for _ in 0..n {
            retired_caps.push(RetiredCap {
                cap_hash: r.array()?,
                read_until: r.u64()?,
            });
        }
        r.end()?;
        let mut record = MailboxRecord::new(kind, recipient_key, sender_cap_hash, created_at);
        record.retired_caps = retired_caps;
        Ok(Self {
            record,
            generation,
            used_day,
        })
    }
}

/// A key-package slot as the KV bucket keeps it (its one-time packages are messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) owner: [u8; 32],
    pub(crate) used_day: u64,
    pub(crate) last_resort: Option<Vec<u8>>,
}

impl Slot {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let last = self.last_resort.as_deref();
        let mut out = Vec::with_capacity(1 + 32 + 8 + 1 + last.map_or(0, <[u8]>::len));
        out.push(SLOT_VERSION);
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.used_day.to_be_bytes());
        match last {
            Some(data) => {
                out.push(1);
                out.extend_from_slice(data);
            }
            None => out.push(0),
        }
        out
    }

    pub(crate) fn decode(op: &'static str, raw: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader {
            op,
            raw,
            what: "a key-package slot",
        };
        let version = r.u8()?;
        if version != SLOT_VERSION {
            return Err(corrupt(
                op,
                format!("a key-package slot of version {version}, not {SLOT_VERSION}"),
            ));
        }
        let owner = r.array()?;
        let used_day = r.u64()?;
        let last_resort = match r.u8()? {
            0 => {
                r.end()?;
                None
            }
            1 => Some(r.rest().to_vec()),
            f => return Err(corrupt(op, format!("a key-package slot with flag {f}"))),
        };
        Ok(Self {
            owner,
            used_day,
            last_resort,
        })
    }
}

struct Reader<'a> {
    op: &'static str,
    raw: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.raw.len() < n {
            return Err(corrupt(self.op, format!("{} cut short", self.what)));
        }
        let (head, rest) = self.raw.split_at(n);
        self.raw = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
    fn array(&mut self) -> Result<[u8; 32], StoreError> {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.take(32)?);
        Ok(b)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.raw)
    }
    fn end(&self) -> Result<(), StoreError> {
        if self.raw.is_empty() {
            Ok(())
        } else {
            Err(corrupt(
                self.op,
                format!("{} with {} bytes too many", self.what, self.raw.len()),
            ))
        }
    }
}

/// What an entry on a mailbox's subject is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message.
    Message,
    /// A head left by an ack or an expiry (the mailbox's state after deleting): removed by the
    /// next append.
    Head,
    /// A fence after a log's capability was replaced (the record says which and until when).
    Update,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Message => "m",
            Self::Head => "h",
            Self::Update => "u",
        }
    }
}

/// Header names.
pub(crate) const H_KIND: &str = "P-Kind";
pub(crate) const H_SEQ: &str = "P-Seq";
pub(crate) const H_DEPTH: &str = "P-Depth";
pub(crate) const H_GEN: &str = "P-Gen";
pub(crate) const H_ID: &str = "P-Id";
pub(crate) const H_AT: &str = "P-At";

/// The state an entry carries: the mailbox's after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    /// The mailbox's last sequence number (a message's own).
    pub(crate) seq: u64,
    /// Messages the mailbox holds after this entry.
    pub(crate) depth: u64,
    pub(crate) generation: u64,
    /// A message's client id.
    pub(crate) message_id: Option<[u8; 16]>,
    /// A message's receive time (Unix seconds, the caller's clock).
    pub(crate) at: u64,
}

impl Entry {
    pub(crate) fn headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(H_KIND, self.kind.as_str());
        h.insert(H_SEQ, self.seq.to_string().as_str());
        h.insert(H_DEPTH, self.depth.to_string().as_str());
        h.insert(H_GEN, self.generation.to_string().as_str());
        h.insert(H_AT, self.at.to_string().as_str());
        if let Some(id) = &self.message_id {
            h.insert(H_ID, hex(id).as_str());
        }
        h
    }

    pub(crate) fn parse(op: &'static str, h: &async_nats::HeaderMap) -> Result<Self, StoreError> {
        let kind = match header(op, h, H_KIND)? {
            "m" => Kind::Message,
            "h" => Kind::Head,
            "u" => Kind::Update,
            other => return Err(corrupt(op, format!("an entry of unknown kind {other:?}"))),
        };
        Ok(Self {
            kind,
            seq: number(op, h, H_SEQ)?,
            depth: number(op, h, H_DEPTH)?,
            generation: number(op, h, H_GEN)?,
            at: number(op, h, H_AT)?,
            message_id: optional_hex(op, h, H_ID)?,
        })
    }
}

/// Entries one head marker takes out at most (besides the marker it replaces).
pub(crate) const MAX_LIST: usize = 4096;

/// A head marker's payload: the stream sequences of the entries it takes out, eight bytes
/// each, big-endian.
pub(crate) fn encode_list(sseqs: &[u64]) -> Bytes {
    sseqs.iter().flat_map(|s| s.to_be_bytes()).collect()
}

/// Reads [`encode_list`]'s payload back.
pub(crate) fn decode_list(op: &'static str, raw: &[u8]) -> Result<Vec<u64>, StoreError> {
    if !raw.len().is_multiple_of(8) {
        return Err(corrupt(
            op,
            format!(
                "a head marker's list of {} bytes, not a multiple of 8",
                raw.len()
            ),
        ));
    }
    if raw.len() / 8 > MAX_LIST + 1 {
        return Err(corrupt(
            op,
            format!(
                "a head marker listing {} entries, over {}",
                raw.len() / 8,
                MAX_LIST + 1
            ),
        ));
    }
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect())
}

/// What a de-duplication record says about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dedup {
    /// The sequence number it was given (or, for an intent, is to be given).
    pub(crate) seq: u64,
    /// The mailbox generation.
    pub(crate) generation: u64,
    /// Written before the message's publish, which may not have happened: the message is
    /// stored only if the mailbox holds it under `seq` (see `NatsStore::append_to`).
    pub(crate) intent: bool,
}

/// Header of a de-duplication record written before its message.
const H_INTENT: &str = "P-Intent";

/// A de-duplication record's headers: the sequence number, the receive time, the generation,
/// and whether it is an intent.
pub(crate) fn dedup_headers(d: Dedup, at: u64) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(H_SEQ, d.seq.to_string().as_str());
    h.insert(H_AT, at.to_string().as_str());
    h.insert(H_GEN, d.generation.to_string().as_str());
    if d.intent {
        h.insert(H_INTENT, "1");
    }
    h
}

/// Reads a de-duplication record's headers back.
pub(crate) fn parse_dedup(
    op: &'static str,
    h: &async_nats::HeaderMap,
) -> Result<Dedup, StoreError> {
    let intent = match h.get(H_INTENT).map(async_nats::HeaderValue::as_str) {
        None => false,
        Some("1") => true,
        Some(other) => {
            return Err(corrupt(
                op,
                format!("a de-duplication record whose {H_INTENT} is {other:?}"),
            ));
        }
    };
    Ok(Dedup {
        seq: number(op, h, H_SEQ)?,
        generation: number(op, h, H_GEN)?,
        intent,
    })
}

/// The receive time of any entry or record (every one carries `P-At`).
pub(crate) fn received_at(op: &'static str, h: &async_nats::HeaderMap) -> Result<u64, StoreError> {
    number(op, h, H_AT)
}

fn header<'a>(
    op: &'static str,
    h: &'a async_nats::HeaderMap,
    name: &'static str,
) -> Result<&'a str, StoreError> {
    h.get(name)
        .map(async_nats::HeaderValue::as_str)
        .ok_or_else(|| corrupt(op, format!("an entry without its {name} header")))
}

fn number(
    op: &'static str,
    h: &async_nats::HeaderMap,
    name: &'static str,
) -> Result<u64, StoreError> {
    let text = header(op, h, name)?;
    text.parse()
        .map_err(|_| corrupt(op, format!("an entry whose {name} is not a number")))
}

fn optional_hex<const N: usize>(
    op: &'static str,
    h: &async_nats::HeaderMap,
    name: &'static str,
) -> Result<Option<[u8; N]>, StoreError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => unhex(v.as_str())
            .map(Some)
            .ok_or_else(|| corrupt(op, format!("an entry whose {name} is not {N} bytes of hex"))),
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `N` bytes from exactly `2N` hex digits.
pub(crate) fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let raw = text.as_bytes();
    if raw.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(raw.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;

    #[test]
    fn records_go_round_and_garbage_is_refused_in_words() {
        let mut record = MailboxRecord::new(MailboxKind::Log, [1; 32], [2; 32], 77);
        record.retired_caps = (0..8)
            .map(|i| RetiredCap {
                cap_hash: [i; 32],
                read_until: u64::from(i) * 3,
            })
            .collect();
        let r = Record {
            record,
            generation: 9,
            used_day: 5,
        };
        let raw = r.encode();
        assert_eq!(Record::decode("t", &raw).unwrap(), r);
        for cut in 0..raw.len() {
            let e = Record::decode("t", &raw[..cut]).unwrap_err();
            assert!(e.to_string().contains("mailbox record"), "{e}");
        }
        let mut long = raw.clone();
        long.push(0);
        assert!(
            Record::decode("t", &long)
                .unwrap_err()
                .to_string()
                .contains("too many")
        );
        let mut kind = raw.clone();
        kind[1] = 7;
        assert!(
            Record::decode("t", &kind)
                .unwrap_err()
                .to_string()
                .contains("unknown kind 7")
        );
        let mut many = raw;
        many[1 + 1 + 32 + 32 + 24] = 9;
        assert!(Record::decode("t", &many).is_err());

        for last in [None, Some(vec![]), Some(vec![5; 100])] {
            let s = Slot {
                owner: [3; 32],
                used_day: 4,
                last_resort: last,
            };
            assert_eq!(Slot::decode("t", &s.encode()).unwrap(), s);
        }
        assert!(Slot::decode("t", &[]).is_err());
        assert!(Slot::decode("t", &[1; 10]).is_err());
    }

    #[test]
    fn entries_go_round_through_headers_and_bad_headers_are_refused() {
        let e = Entry {
            kind: Kind::Update,
            seq: 12,
            depth: 3,
            generation: u64::MAX,
            message_id: Some([0xfe; 16]),
            at: 1_700_000_000,
        };
        assert_eq!(Entry::parse("t", &e.headers()).unwrap(), e);
        let plain = Entry {
            kind: Kind::Message,
            message_id: None,
            ..e
        };
        assert_eq!(Entry::parse("t", &plain.headers()).unwrap(), plain);
        let mut bad = e.headers();
        bad.insert(H_SEQ, "twelve");
        assert!(
            Entry::parse("t", &bad)
                .unwrap_err()
                .to_string()
                .contains("P-Seq")
        );
        let mut bad = e.headers();
        bad.insert(H_ID, "abc");
        assert!(
            Entry::parse("t", &bad)
                .unwrap_err()
                .to_string()
                .contains("P-Id")
        );
        let mut bad = e.headers();
        bad.insert(H_KIND, "x");
        assert!(Entry::parse("t", &bad).is_err());
        assert!(Entry::parse("t", &async_nats::HeaderMap::new()).is_err());
        assert_eq!(unhex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(unhex::<2>("0g00"), None);
        assert_eq!(unhex::<2>("é0"), None);
        assert_eq!(hex(&[0, 0x9f]), "009f");
    }
}
