//! The first parser a stranger reaches: the relay's side of the Noise handshake
//! (`channel::accept` on a record body, and `ServerHandshake` on a byte stream cut in two),
//! and a client's session fed arbitrary bytes as the relay's answer. Nothing may panic; a
//! refusal is an error, never a half-open channel.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon_proto::session::{Accepted, ClientSession, ServerHandshake, choose_version};
use pigeon_proto::{Entropy, StaticKeypair, channel};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = StaticKeypair::from_private(&[7; 32]) else {
        return;
    };
    let mut answer = Vec::new();
    if channel::accept(&keys, data, choose_version, &mut answer).is_err() {
        assert!(answer.is_empty(), "a refused handshake is not answered");
    }
    let now = Instant::now();
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut hs = ServerHandshake::new(now, Duration::from_secs(5));
    if let Ok(Accepted::NeedMore) = hs.handle_input(now, &keys, &data[..split]) {
        let _ = hs.handle_input(now, &keys, &data[split..]);
    }
    let Ok(mut session) = ClientSession::connect(
        keys.public(),
        Entropy::from_bytes([1; 64]),
        now,
        Duration::from_secs(5),
    ) else {
        return;
    };
    session.handle_input(now, data);
    while session.poll_event().is_some() {}
    let mut out = Vec::new();
    let _ = session.poll_transmit(&mut out);
});
