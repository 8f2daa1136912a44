//! Record framing, record plaintext and the message stream must never panic, and the message
//! stream must cut the same messages however its bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon_wire::stream::MessageReader;
use pigeon_wire::{MAX_MESSAGE, WireError, record};

/// What a reader made of a stream: the messages, whether it failed, whether it ended mid-message.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Vec<u8>>,
    failed: bool,
    mid_message: bool,
}

fn read(limit: usize, chunks: &[&[u8]]) -> Outcome {
    let mut reader = MessageReader::new(limit);
    let mut messages = Vec::new();
    let mut failed = false;
    for chunk in chunks {
        let result = reader.feed::<WireError>(chunk, |m| {
            assert!(m.len() <= limit, "message over the limit");
            // Messages are protobuf requests or server messages; decoding must not panic.
            let _ = pigeon_wire::msg::decode_request(m);
            messages.push(m.to_vec());
            Ok(())
        });
        if result.is_err() {
            failed = true;
            break;
        }
    }
    Outcome {
        messages,
        failed,
        mid_message: !failed && reader.is_mid_message(),
    }
}

fuzz_target!(|data: &[u8]| {
    // Records, one after another, as a reader takes them off a socket buffer.
    let mut buf = data;
    while let Ok(Some((body, used))) = record::parse_record(buf) {
        assert!(
            used > 0 && used <= buf.len(),
            "record took {used} of {}",
            buf.len()
        );
        assert_eq!(used, record::HEADER_LEN + body.len());
        if let Ok(inner) = record::decode_plaintext(body) {
            assert!(inner.len() <= body.len());
        }
        buf = &buf[used..];
    }
    if let Ok(inner) = record::decode_plaintext(data) {
        assert!(inner.len() + record::INNER_HEADER_LEN <= data.len());
    }

    // The message stream: the first byte picks a limit, the second seeds the chunk sizes.
    let [limit_byte, seed, stream @ ..] = data else {
        return;
    };
    let limit = match limit_byte {
        0..=127 => MAX_MESSAGE,
        n => usize::from(n - 128) * 4,
    };
    let whole = read(limit, &[stream]);
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut state = u32::from(*seed) | 1;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = usize::try_from(state >> 16).unwrap_or(1) % 17;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    let chunked = read(limit, &chunks);
    assert_eq!(whole, chunked, "chunking changed what the reader saw");
});
