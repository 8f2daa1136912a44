//! Protocol messages inside the decrypted byte stream.
//!
//! Decrypted record data forms one byte stream per direction. Messages are laid into it as
//! protobuf, each preceded by its length as a varint (prost's length-delimited form). A message
//! may span records and a record may hold many messages, so the sender batches freely and the
//! receiver reassembles with [`MessageReader`], which refuses any length over its limit before
//! buffering a byte of it.

use crate::WireError;

/// Appends `msg` in length-delimited form to `out`.
pub fn encode_message<M: prost::Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(len + prost::length_delimiter_len(len));
    // Encoding into a Vec cannot run out of room.
    let _ = msg.encode_length_delimited(out);
}

/// Reassembles length-delimited messages from a byte stream.
///
/// Holds no allocation while no message is partly received, so an idle connection costs
/// nothing here.
#[derive(Debug)]
pub struct MessageReader {
    partial: Vec<u8>,
    limit: usize,
}

/// The outcome of reading one length prefix.
enum Prefix {
    /// `(message length, prefix length)`.
    Complete(usize, usize),
    Incomplete,
}

fn read_prefix(buf: &[u8], limit: usize) -> Result<Prefix, WireError> {
    let mut len: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > limit {
                return Err(WireError::MessageTooLarge { len, limit });
            }
            return Ok(Prefix::Complete(len, i + 1));
        }
        // Reject early rather than after ten bytes: a prefix this long is already over any limit.
        if i >= 4 {
            return Err(WireError::BadLength);
        }
    }
    Ok(Prefix::Incomplete)
}

impl MessageReader {
    /// A reader that refuses messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            partial: Vec::new(),
            limit,
        }
    }

    /// Whether part of a message is buffered (the stream must not end here).
    pub fn is_mid_message(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Feeds stream bytes, calling `on_message` with each complete message body in order.
    ///
    /// # Errors
    /// A [`WireError`] for a bad or oversized length prefix, or the first error `on_message`
    /// returns; the reader must not be used after an error.
    pub fn feed<E: From<WireError>>(
        &mut self,
        mut data: &[u8],
        mut on_message: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.partial.is_empty() {
            // Finish the buffered message first, taking only the bytes it still needs.
            loop {
                match read_prefix(&self.partial, self.limit)? {
                    Prefix::Complete(len, plen) => {
                        let need = plen + len - self.partial.len();
                        let take = need.min(data.len());
                        self.partial.extend_from_slice(&data[..take]);
                        data = &data[take..];
                        if take < need {
                            return Ok(());
                        }
                        let whole = std::mem::take(&mut self.partial);
                        on_message(&whole[plen..])?;
                        break;
                    }
                    Prefix::Incomplete => {
                        let Some((&byte, rest)) = data.split_first() else {
                            return Ok(());
                        };
                        self.partial.push(byte);
                        data = rest;
                    }
                }
            }
        }
        while !data.is_empty() {
            match read_prefix(data, self.limit)? {
                Prefix::Complete(len, plen) if data.len() >= plen + len => {
                    on_message(&data[plen..plen + len])?;
                    data = &data[plen + len..];
                }
                Prefix::Complete(len, plen) => {
                    self.partial.reserve_exact(plen + len);
                    self.partial.extend_from_slice(data);
                    return Ok(());
                }
                Prefix::Incomplete => {
                    self.partial.extend_from_slice(data);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Ping, Request, request};

    fn ping(id: u64, n: usize) -> Request {
        Request {
            id,
            body: Some(request::Body::Ping(Ping {
                payload: vec![1; n],
            })),
        }
    }

    #[test]
    fn messages_survive_any_split() {
        let mut stream = Vec::new();
        for i in 0..20 {
            encode_message(
                &ping(i, usize::try_from(i * 37).expect("small")),
                &mut stream,
            );
        }
        for chunk in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut reader = MessageReader::new(10_000);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                reader
                    .feed::<WireError>(piece, |m| {
                        got.push(crate::msg::decode_request(m)?.id);
                        Ok(())
                    })
                    .expect("valid stream");
            }
            assert!(!reader.is_mid_message());
            assert_eq!(got, (0..20).collect::<Vec<_>>(), "chunk {chunk}");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut stream = Vec::new();
        encode_message(&ping(1, 5000), &mut stream);
        let mut reader = MessageReader::new(100);
        let err = reader
            .feed::<WireError>(&stream[..3], |_| Ok(()))
            .expect_err("too large");
        assert!(matches!(err, WireError::MessageTooLarge { limit: 100, .. }));
        let mut reader = MessageReader::new(100);
        let err = reader
            .feed::<WireError>(&[0xff; 12], |_| Ok(()))
            .expect_err("bad varint");
        assert_eq!(err, WireError::BadLength);
    }

    #[test]
    fn idle_reader_holds_no_buffer() {
        let mut stream = Vec::new();
        encode_message(&ping(1, 300), &mut stream);
        let mut reader = MessageReader::new(1000);
        reader
            .feed::<WireError>(&stream[..100], |_| Ok(()))
            .expect("ok");
        reader
            .feed::<WireError>(&stream[100..], |_| Ok(()))
            .expect("ok");
        assert_eq!(reader.partial.capacity(), 0);
    }
}
