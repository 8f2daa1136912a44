//! Entry points that drive the sans-IO parsers with arbitrary bytes, for the fuzz targets in
//! `fuzz/` (`tls_h2`, `tls_opening`, `tls_record`, `tls_token`) and for the bounded, seeded test
//! at the bottom of this file, which runs the same paths in `cargo test` without libFuzzer.
//!
//! Each function takes any bytes and asserts what must hold whatever they are: no panic, no
//! more consumed than given, the same outcome however the bytes are cut into reads, the right
//! error for what is wrong, and, where this crate writes what it parses (frames, records,
//! tokens, route parameters), that what it writes parses back to what it wrote. An assertion
//! failing is a bug, in the parser or in the property stated beside it.
//!
//! Not an API: compiled only for tests and with the `fuzzing` feature, hidden from the docs.
//! Only fixed keys appear here.

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::ChaCha20Poly1305;
use pigeon_transport::{Host, Route, RouteError, TlsParams};

use crate::h2::{
    self, Event, FRAME_HEADER_LEN, FrameHeader, H2Error, Leg, MAX_FRAME, MAX_HEADER_BLOCK, PREFACE,
    Priority, Role, STREAM, flag, kind, setting,
};
use crate::opening::{self, Opening};
use crate::record::{self, Aead, Direction, Opened, RecordError, Records};
use crate::sniff::{self, MAX_SNIFF, Sniffed};
use crate::token::{self, ReplayFilter, TOKEN_LEN, TOKEN_TEXT_LEN, TokenError, TokenKey};

/// The token key every entry point uses.
const TOKEN_KEY: [u8; 32] = [0x42; 32];
/// The secret path every entry point uses.
const TOKEN_PATH: &str = "/s/k2";
/// The server's clock for token checks (unix seconds, in 2026).
const NOW: u64 = 1_780_000_000;

/// Windows a leg announces: `(stream, connection)`. The first four are what the crate uses or
/// could (the protocol default, the front's, Chrome's, a small one); the last ones are legal
/// extremes.
const WINDOWS: [(u32, u32); 8] = [
    (65_535, 65_535),
    (1 << 20, 16 << 20),
    (6_291_456, 15_728_640),
    (16_384, 65_535),
    (1, 65_535),
    (0, 65_535),
    (65_535, 1),
    (0x7fff_ffff, 0x7fff_ffff),
];

/// A small deterministic generator: chunk sizes here, inputs in the tests.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next_u64() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }

    #[cfg(test)]
    fn byte(&mut self) -> u8 {
        self.next_u64().to_be_bytes()[0]
    }
}

/// `bytes` cut into reads whose sizes `seed` picks: mostly small, sometimes empty, sometimes
/// everything left.
fn cut(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut rng = Rng::new(u64::from(seed));
    let mut chunks = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let size = match rng.below(10) {
            0 => 0,
            1..=6 => 1 + rng.below(12),
            7 | 8 => 1 + rng.below(200),
            _ => rest.len(),
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// `pattern` repeated to `len` bytes (empty if `pattern` is).
fn repeat_to(pattern: &[u8], len: usize) -> Vec<u8> {
    if pattern.is_empty() {
        return Vec::new();
    }
    pattern.iter().copied().cycle().take(len).collect()
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    match bytes.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

// ---------------------------------------------------------------------------------------------
// HTTP/2

/// What a leg reported, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Data(Vec<u8>),
    Headers(Vec<u8>, bool),
    End,
    Reset(u32),
    GoAway(u32),
    PingAck([u8; 8]),
}

impl From<Event<'_>> for Seen {
    fn from(event: Event<'_>) -> Self {
        match event {
            Event::Data(d) => Self::Data(d.to_vec()),
            Event::Headers { block, end_stream } => Self::Headers(block, end_stream),
            Event::End => Self::End,
            Event::Reset(code) => Self::Reset(code),
            Event::GoAway(code) => Self::GoAway(code),
            Event::PingAck(data) => Self::PingAck(data),
        }
    }
}

/// What a leg made of a byte stream.
#[derive(Debug, PartialEq, Eq)]
struct LegOutcome {
    seen: Vec<Seen>,
    /// The control frames it wrote.
    out: Vec<u8>,
    error: Option<H2Error>,
    /// Bytes consumed (0 after an error, where it is not meaningful).
    used: usize,
    /// Bytes left over, not a whole frame.
    left: Vec<u8>,
}

/// Feeds `chunks` to a new leg as reads from a socket: whatever `receive` leaves is kept and
/// the next read appended to it.
fn drive<'a>(
    role: Role,
    (stream_max, conn_max): (u32, u32),
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> LegOutcome {
    let mut leg = Leg::new(role, stream_max, conn_max);
    let mut pending = Vec::new();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut used_total = 0;
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        match leg.receive(&pending, &mut out, &mut |e| seen.push(Seen::from(e))) {
            Ok(used) => {
                assert!(used <= pending.len(), "took {used} of {}", pending.len());
                pending.drain(..used);
                used_total += used;
            }
            Err(error) => {
                return LegOutcome {
                    seen,
                    out,
                    error: Some(error),
                    used: 0,
                    left: Vec::new(),
                };
            }
        }
    }
    // Whatever is left is less than a frame.
    assert_eq!(h2::parse_frame(&pending, MAX_FRAME), Ok(None));
    LegOutcome {
        seen,
        out,
        error: None,
        used: used_total,
        left: pending,
    }
}

/// The stream's events come in an order that makes sense: nothing on the stream after the peer
/// ended or reset it.
fn check_event_order(seen: &[Seen]) {
    let mut closed = false;
    for event in seen {
        match event {
            Seen::Data(_) | Seen::Headers(..) | Seen::End => {
                assert!(!closed, "{event:?} after the stream ended: {seen:?}");
                if *event == Seen::End {
                    closed = true;
                }
            }
            Seen::Reset(_) => closed = true,
            Seen::GoAway(_) | Seen::PingAck(_) => {}
        }
    }
}

/// The control frames a leg wrote are well-formed, and it never took in more data than it
/// announced plus what it credited back.
fn check_control(out: &[u8], (stream_max, conn_max): (u32, u32), seen: &[Seen]) {
    let mut rest = out;
    let mut credit = [0u64; 2];
    while !rest.is_empty() {
        let (h, payload, used) = h2::parse_frame(rest, MAX_FRAME)
            .expect("a written frame is not too long")
            .expect("a written frame is whole");
        rest = &rest[used..];
        match h.kind {
            kind::SETTINGS => {
                assert_eq!((h.flags, h.stream, payload.len()), (flag::ACK, 0, 0));
            }
            kind::PING => assert_eq!((h.flags, h.stream, payload.len()), (flag::ACK, 0, 8)),
            kind::WINDOW_UPDATE => {
                assert_eq!(payload.len(), 4);
                let increment = u32_at(payload, 0);
                assert!(
                    (1..=0x7fff_ffff).contains(&increment),
                    "a WINDOW_UPDATE of {increment} on stream {}",
                    h.stream
                );
                match h.stream {
                    0 => credit[0] += u64::from(increment),
                    STREAM => credit[1] += u64::from(increment),
                    other => panic!("a WINDOW_UPDATE on stream {other}"),
                }
            }
            other => panic!("receive wrote a frame of type {other}"),
        }
    }
    let data: usize = seen
        .iter()
        .map(|e| match e {
            Seen::Data(d) => d.len(),
            _ => 0,
        })
        .sum();
    let data = u64::try_from(data).unwrap_or(u64::MAX);
    assert!(data <= u64::from(conn_max) + credit[0], "connection window");
    assert!(data <= u64::from(stream_max) + credit[1], "stream window");
}

/// HTTP/2 (`Leg::receive`, `h2::parse_frame`, `h2::decode_headers` and the frame writers)
/// on any bytes.
///
/// The first byte picks the role (bit 0), the windows announced (bits 1–3) and options of the
/// round trips; the second seeds how the rest is cut into reads. The rest is what the peer
/// sends (a server leg skips the connection preface if it is there).
///
/// Holds: no panic; the same events, control frames and error whether the bytes come whole or
/// in pieces; nothing on the stream after it ended; well-formed control frames; no data past
/// the windows; written frames, header blocks, data and pings arrive as written.
pub fn h2(data: &[u8]) {
    let [mode, seed, stream @ ..] = data else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let windows = WINDOWS[usize::from(mode >> 1) % WINDOWS.len()];
    let frames = match role {
        Role::Server => stream.strip_prefix(&PREFACE[..]).unwrap_or(stream),
        Role::Client => stream,
    };

    let whole = drive(role, windows, [frames]);
    let pieces = drive(role, windows, cut(frames, *seed));
    assert_eq!(whole, pieces, "reads cut differently, outcomes differ");
    check_event_order(&whole.seen);
    check_control(&whole.out, windows, &whole.seen);
    // Header blocks as the client reads them: one decoder for the connection.
    let mut decoder = h2::decoder();
    for event in &whole.seen {
        if let Seen::Headers(block, _) = event {
            let _ = h2::decode_headers(&mut decoder, block);
        }
    }

    headers(stream, *seed);
    frame_round_trip(stream);
    headers_round_trip(stream, *mode, *seed);
    transfer(stream, *mode, *seed);
}

/// Header blocks: any bytes decode or fail cleanly, alone or as a connection's sequence; any
/// header list encodes and decodes to itself.
fn headers(bytes: &[u8], seed: u8) {
    if let Ok(list) = h2::decode_headers(&mut h2::decoder(), bytes) {
        let size: usize = list.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert!(
            size <= 4 * MAX_HEADER_BLOCK,
            "a list of {size} bytes decoded"
        );
    }
    let mut decoder = h2::decoder();
    for block in cut(bytes, seed) {
        let _ = h2::decode_headers(&mut decoder, block);
    }

    // The bytes as a header list: fields split at NUL, in pairs.
    let fields: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let list: Vec<(&str, &str)> = fields
        .chunks_exact(2)
        .map(|p| (p[0].as_str(), p[1].as_str()))
        .collect();
    let size: usize = list.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    let mut encoder = loona_hpack::Encoder::new();
    let mut decoder = h2::decoder();
    // Twice: the second time through the dynamic table.
    for _ in 0..2 {
        let block = h2::encode_headers(&mut encoder, &list);
        match h2::decode_headers(&mut decoder, &block) {
            Ok(got) => {
                let got: Vec<(&str, &str)> =
                    got.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                assert_eq!(got, list, "a header list changed on its way");
            }
            Err(e) => assert!(size > 4 * MAX_HEADER_BLOCK, "{e}: {size} bytes"),
        }
    }
}

/// A written frame parses back as written, and not before it is whole.
fn frame_round_trip(bytes: &[u8]) {
    let [k, flags, s0, s1, s2, s3, payload @ ..] = bytes else {
        return;
    };
    let stream = u32::from_be_bytes([*s0, *s1, *s2, *s3]);
    let mut wire = Vec::new();
    h2::write_frame(&mut wire, *k, *flags, stream, payload);
    assert_eq!(wire.len(), FRAME_HEADER_LEN + payload.len());
    let header = FrameHeader {
        len: payload.len(),
        kind: *k,
        flags: *flags,
        stream: stream & 0x7fff_ffff,
    };
    if payload.len() > MAX_FRAME {
        assert_eq!(
            h2::parse_frame(&wire, MAX_FRAME),
            Err(H2Error::FrameSize(payload.len()))
        );
        return;
    }
    assert_eq!(
        h2::parse_frame(&wire, MAX_FRAME),
        Ok(Some((header, payload, wire.len())))
    );
    for short in [0, FRAME_HEADER_LEN - 1, wire.len() - 1] {
        if short < wire.len() {
            assert_eq!(h2::parse_frame(&wire[..short], MAX_FRAME), Ok(None));
        }
    }
}

/// A header block written as HEADERS (and CONTINUATION) arrives whole, whatever its size up to
/// the largest accepted, its priority and however it is read.
fn headers_round_trip(bytes: &[u8], mode: u8, seed: u8) {
    // Mostly the bytes as they are; sometimes near the largest block, which takes CONTINUATION.
    let len = if mode & 0x80 != 0 {
        MAX_HEADER_BLOCK - usize::from(seed) * 64
    } else {
        bytes.len()
    };
    let block = repeat_to(bytes, len);
    let priority = (mode & 0x10 != 0).then(|| Priority {
        exclusive: mode & 0x20 != 0,
        depends_on: u32_at(bytes, 0),
        weight: u16::from(seed) + 1,
    });
    let end_stream = mode & 0x40 != 0;
    let mut wire = Vec::new();
    h2::write_headers(&mut wire, STREAM, &block, priority, end_stream);
    let mut want = vec![Seen::Headers(block, end_stream)];
    if end_stream {
        want.push(Seen::End);
    }
    for (role, reads) in [
        (Role::Server, vec![&wire[..]]),
        (Role::Client, cut(&wire, seed)),
    ] {
        let got = drive(role, WINDOWS[0], reads);
        assert_eq!(got.error, None);
        assert_eq!(got.seen, want);
        assert!(got.out.is_empty());
        assert_eq!(got.used, wire.len());
    }
}

/// Data sent through a leg's windows arrives as sent, the receiver's window updates keep it
/// moving to the end, and pings come back.
fn transfer(bytes: &[u8], mode: u8, seed: u8) {
    if bytes.is_empty() {
        return;
    }
    let data = repeat_to(bytes, bytes.len() * (1 + usize::from(seed % 4)));
    let max_payload = [1, 100, 1000, MAX_FRAME, 2 * MAX_FRAME][usize::from(mode >> 4) % 5];
    // Frames of a byte are for short transfers only (each costs a call).
    let max_payload = if data.len() > 1024 {
        max_payload.max(100)
    } else {
        max_payload
    };
    // Only windows a receiver really opens: at least the default connection window, and some
    // stream window.
    let windows = WINDOWS[usize::from(mode >> 1) % 4];
    let (tx_role, rx_role) = if mode & 1 == 0 {
        (Role::Client, Role::Server)
    } else {
        (Role::Server, Role::Client)
    };
    let mut tx = Leg::new(tx_role, 65_535, 65_535);
    let mut rx = Leg::new(rx_role, windows.0, windows.1);
    // The receiver announces its windows, as the front does.
    let mut to_tx = Vec::new();
    h2::write_settings(&mut to_tx, &[(setting::INITIAL_WINDOW_SIZE, windows.0)]);
    if windows.1 > 65_535 {
        h2::write_window_update(&mut to_tx, 0, windows.1 - 65_535);
    }
    let ping = [seed, mode, 1, 2, 3, 4, 5, 6];
    Leg::ping(&mut to_tx, ping);
    let mut to_rx = Vec::new();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut ends = 0;
    let mut pongs = Vec::new();
    loop {
        let used = tx
            .receive(&to_tx, &mut to_rx, &mut |e| match e {
                Event::PingAck(p) => pongs.push(p),
                other => panic!("the sender saw {other:?}"),
            })
            .expect("the receiver's frames are valid");
        assert_eq!(used, to_tx.len());
        to_tx.clear();
        if sent < data.len() {
            sent += tx.send_data(&data[sent..], max_payload, &mut to_rx);
        } else if !tx.local_ended() {
            tx.end(&mut to_rx);
        }
        if to_rx.is_empty() {
            break;
        }
        let used = rx
            .receive(&to_rx, &mut to_tx, &mut |e| match e {
                Event::Data(d) => got.extend_from_slice(d),
                Event::End => ends += 1,
                Event::PingAck(p) => pongs.push(p),
                other => panic!("the receiver saw {other:?}"),
            })
            .expect("the sender's frames are valid");
        assert_eq!(used, to_rx.len());
        to_rx.clear();
    }
    assert_eq!(sent, data.len(), "the transfer stalled at {sent}");
    assert!(got == data, "data changed on its way");
    assert_eq!(ends, 1);
    assert!(rx.remote_ended() && tx.local_ended());
    assert_eq!(pongs, vec![ping]);
}

// ---------------------------------------------------------------------------------------------
// A connection's first bytes

/// The first bytes of a connection: `opening::classify` (the TLS ClientHello),
/// `sniff::sniff` (the first HTTP/2 request) and the cover's answer to plain HTTP.
///
/// Holds: no panic; a decision, once made on some of the bytes, stays the same with more.
pub fn opening(data: &[u8]) {
    classify(data);
    sniff(data);
    plain_http(data);
}

fn classify(data: &[u8]) {
    let full = opening::classify(data);
    // Until the first record is whole each call is cheap, so find where the decision is made.
    let decided = (0..=data.len()).find(|&n| opening::classify(&data[..n]) != Opening::More);
    match decided {
        None => assert_eq!(full, Opening::More),
        Some(at) => {
            for n in [at, (at + data.len()) / 2, data.len()] {
                assert_eq!(
                    opening::classify(&data[..n]),
                    full,
                    "at {n} of {}",
                    data.len()
                );
            }
        }
    }
}

/// Lengths to cut `data` at: the first few, and some picked by its bytes.
fn cuts(data: &[u8]) -> BTreeSet<usize> {
    let mut rng = Rng::new(
        data.iter()
            .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b)),
    );
    let mut cuts: BTreeSet<usize> = (0..=data.len().min(40)).collect();
    for _ in 0..8 {
        cuts.insert(rng.below(data.len() + 1));
    }
    cuts.insert(data.len().saturating_sub(1));
    cuts
}

fn sniff(data: &[u8]) {
    let full = sniff::sniff(data);
    if data.len() >= MAX_SNIFF {
        // Past the limit the caller has stopped reading; the decision is the caller's.
        return;
    }
    for n in cuts(data) {
        let part = sniff::sniff(&data[..n]);
        if part != Sniffed::More {
            assert_eq!(part, full, "at {n} of {}", data.len());
        }
    }
}

fn plain_http(data: &[u8]) {
    // The answer, without its Date header.
    let body = |answer: Vec<u8>| {
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer has a head");
        answer[at..].to_vec()
    };
    let full = crate::cover::plain_http_on_https(data).map(body);
    for n in cuts(data) {
        if let Some(part) = crate::cover::plain_http_on_https(&data[..n]).map(body) {
            assert_eq!(Some(part), full, "at {n} of {}", data.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS records

const AEADS: [Aead; 3] = [Aead::Aes128Gcm, Aead::Aes256Gcm, Aead::ChaCha20Poly1305];
/// The keys of the direction under test, and its first sequence number.
const RX_KEY: [u8; 32] = [2; 32];
const RX_IV: [u8; 12] = [4; 12];
const RX_SEQ: u64 = 5;

/// A sealer and an opener sharing keys, as in the record module's own tests.
fn record_pair(aead: Aead) -> (Records, Records) {
    let (k1, iv1) = ([1u8; 32], [3u8; 12]);
    (
        Records::new(
            Direction::new(aead, k1, iv1, 0),
            Direction::new(aead, RX_KEY, RX_IV, RX_SEQ),
        ),
        Records::new(
            Direction::new(aead, RX_KEY, RX_IV, RX_SEQ),
            Direction::new(aead, k1, iv1, 0),
        ),
    )
}

/// Seals `inner` (content, content type, padding) under `header` as RFC 8446 section 5.2 says,
/// independently of the record module: the direction under test, at its first sequence number.
fn seal_raw(aead: Aead, header: [u8; 5], inner: &[u8]) -> Vec<u8> {
    let mut nonce = RX_IV;
    for (n, s) in nonce[4..].iter_mut().zip(RX_SEQ.to_be_bytes()) {
        *n ^= s;
    }
    let nonce = Nonce::from_slice(&nonce);
    let mut body = inner.to_vec();
    let tag = match aead {
        Aead::Aes128Gcm => Aes128Gcm::new_from_slice(&RX_KEY[..16])
            .expect("a 16-byte key")
            .encrypt_in_place_detached(nonce, &header, &mut body),
        Aead::Aes256Gcm => Aes256Gcm::new_from_slice(&RX_KEY)
            .expect("a 32-byte key")
            .encrypt_in_place_detached(nonce, &header, &mut body),
        Aead::ChaCha20Poly1305 => ChaCha20Poly1305::new_from_slice(&RX_KEY)
            .expect("a 32-byte key")
            .encrypt_in_place_detached(nonce, &header, &mut body),
    }
    .expect("sealing in memory");
    let mut record = header.to_vec();
    record.extend_from_slice(&body);
    record.extend_from_slice(&tag);
    record
}

/// TLS 1.3 record protection (`Records`) with fixed keys, for each AEAD.
///
/// The first six bytes are two mutations (position, 16 bits; XOR mask) applied to records
/// sealed from the rest; the whole input is also opened as records as it is.
///
/// Holds: no panic; an opened record lies within the bytes given; sealed records open to what
/// was sealed, and not before they are whole; a sealed record with any byte changed never
/// opens; an inner plaintext sealed by hand opens to what RFC 8446 says it is.
pub fn record(data: &[u8]) {
    let (ctl, body) = data.split_at(data.len().min(6));
    for aead in AEADS {
        open_garbage(aead, data);
        seal_open(aead, body);
        mutated(aead, ctl, body);
        inner(aead, body);
    }
}

fn open_garbage(aead: Aead, data: &[u8]) {
    let (_, mut rx) = record_pair(aead);
    let mut buf = data.to_vec();
    let mut at = 0;
    loop {
        let left = buf.len() - at;
        match rx.open(&mut buf[at..]) {
            Ok(Some(Opened::Data { start, end, used })) => {
                assert!(start == record::HEADER_LEN && start <= end && end + 17 <= used);
                assert!(used <= left, "a record of {used} in {left} bytes");
                at += used;
            }
            Ok(Some(Opened::Closed { used })) => {
                assert!(used <= left, "a record of {used} in {left} bytes");
                break;
            }
            Ok(None) => {
                let claimed = usize::from(u16_at(&buf, at + 3));
                assert!(left < record::HEADER_LEN || left < record::HEADER_LEN + claimed);
                break;
            }
            Err(_) => break,
        }
    }
}

fn open_all(rx: &mut Records, wire: &mut [u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        match rx.open(&mut wire[at..]) {
            Ok(Some(Opened::Data { start, end, used })) => {
                got.extend_from_slice(&wire[at + start..at + end]);
                at += used;
            }
            other => panic!("a sealed record opened as {other:?}"),
        }
    }
    got
}

fn seal_open(aead: Aead, plaintext: &[u8]) {
    let (mut tx, mut rx) = record_pair(aead);
    let mut wire = Vec::new();
    tx.seal(plaintext, &mut wire).expect("seal");
    let records = plaintext.len().div_ceil(record::MAX_PLAINTEXT);
    assert_eq!(wire.len(), plaintext.len() + records * record::OVERHEAD);
    if !plaintext.is_empty() {
        let first_len = plaintext.len().min(record::MAX_PLAINTEXT) + record::OVERHEAD;
        for short in [
            0,
            1,
            record::HEADER_LEN - 1,
            record::HEADER_LEN,
            first_len - 1,
        ] {
            assert_eq!(
                rx.open(&mut wire.clone()[..short]),
                Ok(None),
                "cut at {short}"
            );
        }
    }
    assert!(
        open_all(&mut rx, &mut wire) == plaintext,
        "a record changed"
    );
}

fn mutated(aead: Aead, ctl: &[u8], plaintext: &[u8]) {
    let (mut tx, mut rx) = record_pair(aead);
    let mut wire = Vec::new();
    tx.seal(plaintext, &mut wire).expect("seal");
    if wire.is_empty() {
        return;
    }
    let original = wire.clone();
    for (pos, mask) in [(u16_at(ctl, 0), ctl.get(2)), (u16_at(ctl, 3), ctl.get(5))] {
        let at = usize::from(pos) % wire.len();
        wire[at] ^= mask.copied().unwrap_or(0);
    }
    let Some(first_changed) = wire.iter().zip(&original).position(|(a, b)| a != b) else {
        return;
    };
    let mut at = 0;
    loop {
        let record_len = record::HEADER_LEN + usize::from(u16_at(&original, at + 3));
        let result = rx.open(&mut wire[at..]);
        if at + record_len <= first_changed {
            // Untouched: opens as sealed.
            assert!(
                matches!(result, Ok(Some(Opened::Data { used, .. })) if used == record_len),
                "{result:?}"
            );
            at += record_len;
        } else {
            assert!(
                matches!(result, Err(_) | Ok(None)),
                "a changed record opened: {result:?}"
            );
            break;
        }
    }
}

fn inner(aead: Aead, inner: &[u8]) {
    let inner = &inner[..inner.len().min(20_000)];
    let len = inner.len() + 16;
    let len16 = u16::try_from(len).expect("at most 20,016");
    let [hi, lo] = len16.to_be_bytes();
    let mut wire = seal_raw(aead, [23, 3, 3, hi, lo], inner);
    let (_, mut rx) = record_pair(aead);
    let got = rx.open(&mut wire);
    // What RFC 8446 section 5.4 says the record is, and what this crate does with it.
    let want = if !(17..=record::MAX_PLAINTEXT + 256).contains(&len) {
        Err(RecordError::BadHeader)
    } else {
        match inner.iter().rposition(|&b| b != 0) {
            None => Err(RecordError::NoContentType),
            Some(type_at) => match (inner[type_at], type_at, inner.get(1)) {
                (23, _, _) => Ok(Some(Opened::Data {
                    start: record::HEADER_LEN,
                    end: record::HEADER_LEN + type_at,
                    used: wire.len(),
                })),
                (21, 2, Some(0)) => Ok(Some(Opened::Closed { used: wire.len() })),
                (21, 2, Some(&description)) => Err(RecordError::Alert(description)),
                (21, len, _) => Err(RecordError::BadAlert(len)),
                (22, _, _) => Err(RecordError::PostHandshake),
                (other, _, _) => Err(RecordError::UnexpectedContent(other)),
            },
        }
    };
    assert_eq!(
        got,
        want,
        "inner plaintext {:?}",
        &inner[..inner.len().min(16)]
    );
    if let Ok(Some(Opened::Data { start, end, .. })) = got {
        assert!(
            wire[start..end] == inner[..end - start],
            "opened differently"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens and route parameters

/// Tokens ([`token::check`], [`ReplayFilter`]) under a fixed key, and the parameters of `tls`
/// routes ([`TlsParams::from_params`], `tls://` [`Route`]s).
///
/// Holds: no panic; anything not minted under the key and path is refused, as malformed only
/// when it is; minted tokens check to what was minted while fresh and are refused as stale
/// after; any changed character is refused; the filter admits each token once and holds at
/// most its capacity; route parameters that parse write out and parse back the same, and
/// those that do not name the parameter at fault.
pub fn token(data: &[u8]) {
    token_text(data);
    token_round_trip(data);
    replay(data);
    tls_params(data);
}

fn token_text(data: &[u8]) {
    let key = TokenKey::new(TOKEN_KEY);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(checked) = token::check(&key, TOKEN_PATH, text, NOW) {
            assert_eq!(text.len(), TOKEN_TEXT_LEN);
            // Whatever checks is fresh and minted under this key, so it says what it was
            // minted with.
            let leg = *checked.leg();
            for now in [NOW - 120, NOW + 120] {
                if let Ok(again) = token::check(&key, TOKEN_PATH, text, now) {
                    assert_eq!(*again.leg(), leg);
                }
            }
            assert!(token::check(&key, "/other", text, NOW).is_err());
        }
        let _ = token::check(&key, text, text, NOW);
    }
    // The bytes as a token: past the format check, caught by the tag.
    if let Some(bytes) = data.get(..TOKEN_LEN) {
        let text = URL_SAFE_NO_PAD.encode(bytes);
        let result = token::check(&key, TOKEN_PATH, &text, NOW).map(|c| *c.leg());
        if bytes[0] != 1 {
            // Version 1 is the only one.
            assert_eq!(result, Err(TokenError::Malformed));
        } else {
            assert_ne!(result, Err(TokenError::Malformed));
        }
    }
}

fn token_round_trip(data: &[u8]) {
    let Some(fields) = data.get(..36) else {
        return;
    };
    let key = TokenKey::new(TOKEN_KEY);
    let path = String::from_utf8_lossy(&data[36..]);
    let leg = token::Leg {
        session: fields[..16].try_into().expect("16 bytes"),
        index: u16_at(fields, 16),
        budget: Some(u32_at(fields, 18)),
    };
    let issued = u32_at(fields, 22);
    let nonce: [u8; 8] = fields[26..34].try_into().expect("8 bytes");
    let skew = i16::from_be_bytes([fields[34], fields[35]]);
    let now = u64::from(issued).saturating_add_signed(i64::from(skew));
    let text = token::mint(&key, &path, &leg, u64::from(issued), nonce);
    assert_eq!(text.len(), TOKEN_TEXT_LEN);
    let result = token::check(&key, &path, &text, now).map(|c| *c.leg());
    let now32 = u32::try_from(now).unwrap_or(u32::MAX);
    if issued.abs_diff(now32) <= token::MAX_SKEW {
        // A budget of 0 is written as "none".
        let budget = leg.budget.filter(|&b| b != 0);
        assert_eq!(result, Ok(token::Leg { budget, ..leg }));
    } else {
        assert_eq!(result, Err(TokenError::Stale));
    }
    // Another key, another path, or any character changed: refused.
    let other_key = TokenKey::new([0x43; 32]);
    assert_eq!(
        token::check(&other_key, &path, &text, u64::from(issued)).map(|_| ()),
        Err(TokenError::BadTag)
    );
    let other_path = format!("{path}/");
    assert_eq!(
        token::check(&key, &other_path, &text, u64::from(issued)).map(|_| ()),
        Err(TokenError::BadTag)
    );
    let at = usize::from(fields[0]) % TOKEN_TEXT_LEN;
    let with = char::from(fields[1]);
    let mut changed: Vec<char> = text.chars().collect();
    if changed[at] != with {
        changed[at] = with;
        let changed: String = changed.into_iter().collect();
        assert!(token::check(&key, &path, &changed, u64::from(issued)).is_err());
    }
}

/// Tokens admitted through a filter at times the bytes pick, with a clock that never goes
/// back (unix time, stepped forward by up to half a minute at a time).
fn replay(data: &[u8]) {
    let Some((&capacity, steps)) = data.split_first() else {
        return;
    };
    let key = TokenKey::new(TOKEN_KEY);
    let leg = token::Leg {
        session: [9; 16],
        index: 0,
        budget: None,
    };
    // Eight tokens, issued a minute apart.
    let tokens: Vec<(u64, String)> = (0..8u8)
        .map(|i| {
            let issued = NOW + 60 * u64::from(i);
            (issued, token::mint(&key, TOKEN_PATH, &leg, issued, [i; 8]))
        })
        .collect();
    let capacity = usize::from(capacity % 6);
    let mut filter = ReplayFilter::new(capacity);
    let mut admitted = BTreeSet::new();
    let mut now = NOW - 100;
    for step in steps.iter().take(64) {
        now += u64::from(step >> 3);
        let which = usize::from(step & 7);
        let (issued, text) = &tokens[which];
        let Ok(checked) = token::check(&key, TOKEN_PATH, text, now) else {
            assert!(issued.abs_diff(now) > u64::from(token::MAX_SKEW));
            continue;
        };
        match filter.admit(checked, now) {
            Ok(got) => {
                assert_eq!(got, leg);
                assert!(admitted.insert(which), "token {which} admitted twice");
            }
            Err(TokenError::Replayed) => assert!(admitted.contains(&which)),
            Err(TokenError::Busy) => assert!(filter.len() >= capacity),
            Err(other) => panic!("the filter said {other:?}"),
        }
        assert!(filter.len() <= capacity);
    }
}

/// The bytes as the query of a `tls` route, and as its parameters directly.
fn tls_params(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for route in [
        format!("tls://{text}"),
        format!("tls://relay.example.org:443?{text}"),
        format!("tls://[2001:db8::1]:8443?{text}"),
    ] {
        let Ok(route) = route.parse::<Route>() else {
            continue;
        };
        let params = match route.tls_params() {
            Some(Ok(params)) => params,
            other => panic!("a parsed tls route has parameters {other:?}"),
        };
        let printed = route.to_string();
        assert_eq!(printed.parse::<Route>().as_ref(), Ok(&route), "{printed}");
        let again = Route::tls(&route.host().to_string(), route.port(), &params)
            .expect("a route from parsed parameters");
        assert_eq!(again.tls_params(), Some(Ok(params)));
    }
    let map: BTreeMap<String, String> = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for host in ["relay.example.org", "203.0.113.10"] {
        let host = Host::parse(host).expect("a valid host");
        match TlsParams::from_params(&host, &map) {
            Ok(params) => {
                let mut written = BTreeMap::new();
                params.write(&mut written);
                assert_eq!(TlsParams::from_params(&host, &written), Ok(params));
            }
            Err(RouteError::ParamValue { key, .. }) => assert!(
                ["path", "key", "pin", "sni", "rotate"].contains(&key.as_str()),
                "an error about {key:?}"
            ),
            Err(other) => panic!("an error naming no parameter: {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// Valid inputs for each target, made here rather than copied from anywhere: `(target, file
/// name, bytes)`. `fuzz/seeds/` holds them (written by the ignored test `write_fuzz_seeds`);
/// the test below mutates them.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // HTTP/2: a server leg reading Chrome's opening, a client leg reading the front's answer.
    // Mode 2: server, the front's windows; mode 5: client, Chrome's windows.
    let mut opening = vec![2, 7];
    opening.extend_from_slice(&chrome_h2_opening());
    seeds.push(("tls_h2", "chrome-opening.bin", opening));
    let mut answer = vec![5, 11];
    answer.extend_from_slice(&front_h2_answer());
    seeds.push(("tls_h2", "front-answer.bin", answer));
    // The first bytes of connections.
    seeds.push((
        "tls_opening",
        "client-hello.bin",
        chrome_like_client_hello(),
    ));
    seeds.push(("tls_opening", "h2-request.bin", chrome_h2_opening()));
    seeds.push((
        "tls_opening",
        "http1-get.txt",
        b"GET / HTTP/1.1\r\nHost: relay.example.org\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
            .to_vec(),
    ));
    // Records: two mutations (none) and then an inner plaintext for each outcome.
    for (name, inner) in [
        ("data.bin", b"tunnel bytes\x17".to_vec()),
        ("data-padded.bin", b"hi\x17\0\0\0\0".to_vec()),
        ("close-notify.bin", vec![1, 0, 21]),
        ("alert.bin", vec![2, 40, 21]),
        ("key-update.bin", vec![24, 0, 0, 1, 0, 22]),
    ] {
        let mut seed = vec![0; 6];
        seed.extend_from_slice(&inner);
        seeds.push(("tls_record", name, seed));
    }
    // And records sealed under the fixed keys, to be opened as they are.
    for (aead, name) in AEADS.into_iter().zip([
        "sealed-aes128.bin",
        "sealed-aes256.bin",
        "sealed-chacha.bin",
    ]) {
        let mut inner = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        inner.push(23);
        let len = u16::try_from(inner.len() + 16).expect("small");
        let [hi, lo] = len.to_be_bytes();
        seeds.push((
            "tls_record",
            name,
            seal_raw(aead, [23, 3, 3, hi, lo], &inner),
        ));
    }
    // Tokens: one fresh under the fixed key, and the query of a tls route.
    let leg = token::Leg {
        session: [7; 16],
        index: 1,
        budget: Some(16_384),
    };
    let minted = token::mint(&TokenKey::new(TOKEN_KEY), TOKEN_PATH, &leg, NOW, [5; 8]);
    seeds.push(("tls_token", "token.txt", minted.into_bytes()));
    seeds.push((
        "tls_token",
        "route-query.txt",
        format!(
            "path=/s/k2&key={}&pin={}&sni=relay.example.org&rotate=16k",
            URL_SAFE_NO_PAD.encode(TOKEN_KEY),
            URL_SAFE_NO_PAD.encode([0x17; 32])
        )
        .into_bytes(),
    ));
    seeds
}

/// What Chrome sends first on an HTTP/2 connection to the tunnel: the preface, its SETTINGS,
/// its connection window, the request (with Chrome's priority) and the first tunnel bytes.
fn chrome_h2_opening() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    h2::write_settings(&mut out, &crate::chrome::H2_SETTINGS);
    h2::write_window_update(&mut out, 0, crate::chrome::H2_CONNECTION_WINDOW - 65_535);
    let token = token::mint(
        &TokenKey::new(TOKEN_KEY),
        TOKEN_PATH,
        &token::Leg {
            session: [7; 16],
            index: 0,
            budget: None,
        },
        NOW,
        [1; 8],
    );
    let path = format!("{TOKEN_PATH}/{token}");
    let block = h2::encode_headers(
        &mut loona_hpack::Encoder::new(),
        &[
            (":method", "POST"),
            (":authority", "relay.example.org"),
            (":scheme", "https"),
            (":path", &path),
            ("content-type", "application/octet-stream"),
            ("sec-ch-ua-platform", "\"Windows\""),
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
            ),
            ("accept", "*/*"),
            ("origin", "https://relay.example.org"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("accept-language", "en-US,en;q=0.9"),
            ("priority", "u=1, i"),
        ],
    );
    let priority = Priority {
        exclusive: true,
        depends_on: 0,
        weight: 220,
    };
    h2::write_headers(&mut out, STREAM, &block, Some(priority), false);
    h2::write_frame(&mut out, kind::DATA, 0, STREAM, b"first tunnel bytes");
    out
}

/// What the front sends a tunnel client: SETTINGS, its connection window, acknowledgements,
/// the response, tunnel bytes, a ping, and the end of the stream.
fn front_h2_answer() -> Vec<u8> {
    let mut out = Vec::new();
    h2::write_settings(
        &mut out,
        &[
            (setting::MAX_CONCURRENT_STREAMS, 100),
            (setting::INITIAL_WINDOW_SIZE, 1 << 20),
        ],
    );
    h2::write_window_update(&mut out, 0, (16 << 20) - 65_535);
    h2::write_frame(&mut out, kind::SETTINGS, flag::ACK, 0, &[]);
    let block = h2::encode_headers(
        &mut loona_hpack::Encoder::new(),
        &[
            (":status", "200"),
            ("server", "nginx"),
            ("content-type", "application/octet-stream"),
        ],
    );
    h2::write_headers(&mut out, STREAM, &block, None, false);
    h2::write_frame(
        &mut out,
        kind::DATA,
        flag::PADDED,
        STREAM,
        b"\x03down\0\0\0",
    );
    h2::write_frame(&mut out, kind::PING, 0, 0, &[1; 8]);
    h2::write_window_update(&mut out, STREAM, 40_000);
    h2::write_frame(&mut out, kind::DATA, flag::END_STREAM, STREAM, b"bye");
    h2::write_goaway(&mut out, 1, 0);
    out
}

/// A ClientHello laid out as Chrome's (GREASE, X25519MLKEM768 and X25519 key shares, ALPS,
/// certificate compression, a GREASE ECH), with fixed random and key bytes.
fn chrome_like_client_hello() -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
        out.extend_from_slice(body);
    }
    fn vec16(items: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(items.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(items);
        v
    }
    let pattern = |len: usize, k: u8| -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i % 251).expect("below 251").wrapping_mul(k))
            .collect()
    };
    let mut body = vec![3, 3];
    body.extend_from_slice(&pattern(32, 7));
    body.push(32);
    body.extend_from_slice(&pattern(32, 13));
    let suites: &[u16] = &[
        0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
        0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
    ];
    let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    body.extend_from_slice(&vec16(&suites));
    body.extend_from_slice(&[1, 0]);

    let mut exts = Vec::new();
    ext(&mut exts, 0x1a1a, &[]);
    let name = b"relay.example.org";
    let mut sni = vec![0];
    sni.extend_from_slice(&vec16(name));
    ext(&mut exts, 0x0000, &vec16(&sni));
    ext(&mut exts, 0x0017, &[]);
    ext(&mut exts, 0xff01, &[0]);
    ext(
        &mut exts,
        0x000a,
        &vec16(&[0x2a, 0x2a, 0x11, 0xec, 0, 0x1d, 0, 0x17, 0, 0x18]),
    );
    ext(&mut exts, 0x000b, &[1, 0]);
    ext(&mut exts, 0x0023, &[]);
    ext(&mut exts, 0x0010, &vec16(b"\x02h2\x08http/1.1"));
    ext(&mut exts, 0x0005, &[1, 0, 0, 0, 0]);
    ext(
        &mut exts,
        0x000d,
        &vec16(&[4, 3, 8, 4, 4, 1, 5, 3, 8, 5, 5, 1, 8, 6, 6, 1]),
    );
    ext(&mut exts, 0x0012, &[]);
    let mut shares = vec![0x2a, 0x2a, 0, 1, 0];
    shares.extend_from_slice(&[0x11, 0xec]);
    shares.extend_from_slice(&vec16(&pattern(1216, 3)));
    shares.extend_from_slice(&[0, 0x1d]);
    shares.extend_from_slice(&vec16(&pattern(32, 5)));
    ext(&mut exts, 0x0033, &vec16(&shares));
    ext(&mut exts, 0x002d, &[1, 1]);
    ext(&mut exts, 0x002b, &[6, 0x3a, 0x3a, 3, 4, 3, 3]);
    ext(&mut exts, 0x001b, &[2, 0, 2]);
    ext(&mut exts, 0x44cd, &vec16(b"\x02h2"));
    let mut ech = vec![0, 0, 1, 0, 1, 0x42];
    ech.extend_from_slice(&vec16(&pattern(32, 9)));
    ech.extend_from_slice(&vec16(&pattern(144, 11)));
    ext(&mut exts, 0xfe0d, &ech);
    ext(&mut exts, 0x4a4a, &[0]);
    body.extend_from_slice(&vec16(&exts));

    let len = u32::try_from(body.len()).expect("small").to_be_bytes();
    let mut handshake = vec![1, len[1], len[2], len[3]];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&vec16(&handshake));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `entry` over the target's seeds, then `random` random inputs and `mutated` mutations
    /// of the seeds, all from a fixed seed.
    fn exercise(target: &str, entry: fn(&[u8]), random: usize, mutated: usize) {
        let seeds: Vec<Vec<u8>> = seeds()
            .into_iter()
            .filter(|(t, _, _)| *t == target)
            .map(|(_, _, bytes)| bytes)
            .collect();
        assert!(!seeds.is_empty());
        for seed in &seeds {
            entry(seed);
        }
        let mut rng = Rng::new(0x7069_6765_6f6e);
        for _ in 0..random {
            let longest = if rng.below(10) == 0 { 1000 } else { 100 };
            let len = rng.below(longest);
            let input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            entry(&input);
        }
        for _ in 0..mutated {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(input.len() + 1);
                match rng.below(5) {
                    0 if at < input.len() => input[at] ^= 1 << rng.below(8),
                    1 if at < input.len() => input[at] = rng.byte(),
                    2 => input.insert(at, rng.byte()),
                    3 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.truncate(at),
                }
            }
            entry(&input);
        }
    }

    #[test]
    fn h2_survives_garbage() {
        exercise("tls_h2", h2, 600, 600);
    }

    #[test]
    fn openings_survive_garbage() {
        exercise("tls_opening", opening, 600, 600);
    }

    #[test]
    fn records_survive_garbage() {
        exercise("tls_record", record, 600, 600);
    }

    #[test]
    fn tokens_and_route_params_survive_garbage() {
        exercise("tls_token", token, 600, 600);
    }

    #[test]
    fn seeds_are_what_they_claim() {
        for (target, name, bytes) in seeds() {
            match (target, name) {
                ("tls_opening", "client-hello.bin") => {
                    assert_eq!(opening::classify(&bytes), Opening::Hello);
                }
                ("tls_opening", "h2-request.bin") => assert!(matches!(
                    sniff::sniff(&bytes),
                    Sniffed::Request { ref method, end_stream: false, .. } if method == "POST"
                )),
                ("tls_token", "token.txt") => {
                    let text = std::str::from_utf8(&bytes).expect("ascii");
                    token::check(&TokenKey::new(TOKEN_KEY), TOKEN_PATH, text, NOW)
                        .expect("a fresh token");
                }
                _ => {}
            }
        }
    }

    /// Writes the seeds into `fuzz/seeds/<target>/`:
    /// `cargo test -p pigeon-transport-tls --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files into fuzz/seeds"]
    fn write_fuzz_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        for (target, name, bytes) in seeds() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("create the seed directory");
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
}
