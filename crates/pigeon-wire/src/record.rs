//! Records: how the encrypted channel cuts its byte stream, and how each record is padded.
//!
//! On the wire every record is `len: u16 big-endian || body[len]`, where the body is one Noise
//! message (a handshake message or a transport message). A transport record decrypts to
//!
//! ```text
//! data_len: u16 big-endian || data[data_len] || zero padding
//! ```
//!
//! and the sender pads so that the ciphertext length is one of [`BUCKETS`]. An observer of the
//! channel therefore learns only a bucket per record, not message sizes. Bytes after `data` are
//! ignored by the receiver (they are authenticated by the AEAD like everything else).

use crate::WireError;

/// Bytes of the clear length prefix before every record.
pub const HEADER_LEN: usize = 2;
/// Bytes of the AEAD tag inside every transport record.
pub const TAG_LEN: usize = 16;
/// Bytes of the inner data-length header inside a decrypted transport record.
pub const INNER_HEADER_LEN: usize = 2;
/// Largest record body (a Noise message can be at most 65,535 bytes).
pub const MAX_RECORD: usize = 65_535;
/// Smallest valid record body: an empty payload's AEAD tag.
pub const MIN_RECORD: usize = TAG_LEN;
/// Most data one transport record can carry.
pub const MAX_RECORD_DATA: usize = MAX_RECORD - TAG_LEN - INNER_HEADER_LEN;

/// Ciphertext sizes records are padded to. Chosen as powers of two from 256 bytes, so a short
/// chat message, a receipt and a ping all look the same, and the largest bucket is a full record.
pub const BUCKETS: &[usize] = &[256, 512, 1024, 2048, 4096, 8192, 16_384, 32_768, MAX_RECORD];

/// The padded plaintext length for `data_len` bytes of data, or `None` if it does not fit in
/// one record.
pub fn padded_plaintext_len(data_len: usize) -> Option<usize> {
    let needed = data_len.checked_add(INNER_HEADER_LEN + TAG_LEN)?;
    BUCKETS
        .iter()
        .find(|&&bucket| bucket >= needed)
        .map(|bucket| bucket - TAG_LEN)
}

/// Appends the padded plaintext of a transport record carrying `data` to `out`.
///
/// # Errors
/// [`WireError::RecordLength`] if `data` is longer than [`MAX_RECORD_DATA`].
pub fn encode_plaintext(data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    let padded = padded_plaintext_len(data.len()).ok_or(WireError::RecordLength {
        len: data.len(),
        min: 0,
        max: MAX_RECORD_DATA,
    })?;
    let data_len = u16::try_from(data.len()).map_err(|_| WireError::RecordLength {
        len: data.len(),
        min: 0,
        max: MAX_RECORD_DATA,
    })?;
    let start = out.len();
    out.extend_from_slice(&data_len.to_be_bytes());
    out.extend_from_slice(data);
    out.resize(start + padded, 0);
    Ok(())
}

/// The data inside a decrypted transport record.
///
/// # Errors
/// [`WireError::RecordData`] if the inner length does not fit in the plaintext.
pub fn decode_plaintext(plaintext: &[u8]) -> Result<&[u8], WireError> {
    let Some((header, rest)) = plaintext.split_first_chunk::<INNER_HEADER_LEN>() else {
        return Err(WireError::RecordData {
            claimed: INNER_HEADER_LEN,
            available: plaintext.len(),
        });
    };
    let claimed = usize::from(u16::from_be_bytes(*header));
    rest.get(..claimed).ok_or(WireError::RecordData {
        claimed,
        available: rest.len(),
    })
}

/// Writes the clear length prefix for a record body of `len` bytes.
///
/// # Errors
/// [`WireError::RecordLength`] if `len` is not a valid record length.
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], WireError> {
    if !(MIN_RECORD..=MAX_RECORD).contains(&len) {
        return Err(WireError::RecordLength {
            len,
            min: MIN_RECORD,
            max: MAX_RECORD,
        });
    }
    let len = u16::try_from(len).map_err(|_| WireError::RecordLength {
        len,
        min: MIN_RECORD,
        max: MAX_RECORD,
    })?;
    Ok(len.to_be_bytes())
}

/// Parses one record from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a record (read more), and otherwise the
/// record body and the number of bytes it took from `buf`.
///
/// # Errors
/// [`WireError::RecordLength`] if the header announces a body shorter than an AEAD tag.
pub fn parse_record(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(*header));
    if len < MIN_RECORD {
        return Err(WireError::RecordLength {
            len,
            min: MIN_RECORD,
            max: MAX_RECORD,
        });
    }
    Ok(rest.get(..len).map(|body| (body, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_pads_into_a_bucket() {
        for len in [
            0,
            1,
            200,
            237,
            238,
            239,
            1000,
            4000,
            60_000,
            MAX_RECORD_DATA,
        ] {
            let mut out = Vec::new();
            encode_plaintext(&vec![7; len], &mut out).expect("fits");
            assert!(BUCKETS.contains(&(out.len() + TAG_LEN)), "len {len}");
            assert_eq!(decode_plaintext(&out).expect("decodes"), &vec![7; len][..]);
        }
        assert!(encode_plaintext(&vec![0; MAX_RECORD_DATA + 1], &mut Vec::new()).is_err());
    }

    #[test]
    fn inner_length_past_end_is_rejected() {
        assert!(matches!(
            decode_plaintext(&[0xff, 0xff, 1, 2]),
            Err(WireError::RecordData {
                claimed: 65535,
                available: 2
            })
        ));
        assert!(decode_plaintext(&[1]).is_err());
    }

    #[test]
    fn records_split_and_wait_for_more() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&header(20).expect("valid"));
        wire.extend_from_slice(&[9; 20]);
        assert_eq!(parse_record(&wire[..10]).expect("ok"), None);
        let (body, used) = parse_record(&wire).expect("ok").expect("whole");
        assert_eq!((body.len(), used), (20, 22));
        assert!(parse_record(&[0, 3, 1, 2, 3]).is_err());
        assert!(header(MAX_RECORD + 1).is_err());
    }
}
