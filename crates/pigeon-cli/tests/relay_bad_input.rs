//! 100 concurrent hostile connections against a real relay process while an honest pair keeps
//! talking through it.
//!
//! Each bad connection gets, within a timeout, either a silent close (nothing decodable was
//! said, so the relay says nothing: it must not answer probes), a close after an error, or an
//! error code with the connection kept open, as each case demands. Meanwhile the honest sender
//! keeps posting and the honest receiver keeps receiving; afterwards the relay is still up,
//! never panicked, and still delivers every message stored before the attack.

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_proto::auth::{self, AuthOp};
use pigeon_proto::channel::{Channel, ClientHandshake};
use pigeon_wire::msg::{self, MailboxId, Request, ServerMessage, request, response};
use pigeon_wire::record::{self, HEADER_LEN};
use pigeon_wire::stream::encode_message;
use pigeon_wire::{ErrorCode, MAX_MESSAGE, PROTOCOL_VERSIONS};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{Relay, RelayOpts, Rng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bad connections, all at once.
const ATTACKERS: usize = 100;
/// Messages stored before the attack and read after it.
const STORED: usize = 300;
/// Bound on each bad connection's outcome.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds of bad connection, taken in turn.
#[derive(Clone, Copy, Debug)]
enum Attack {
    RandomBytes,
    TruncatedHandshake,
    HugeRecordHeader,
    HandshakeThenRandom,
    TamperedRecord,
    ReplayedRecord,
    OversizedMessagePrefix,
    GarbageProtobuf,
    WrongLengthFields,
    WrongSignatureAndCapability,
}

const ATTACKS: [Attack; 10] = [
    Attack::RandomBytes,
    Attack::TruncatedHandshake,
    Attack::HugeRecordHeader,
    Attack::HandshakeThenRandom,
    Attack::TamperedRecord,
    Attack::ReplayedRecord,
    Attack::OversizedMessagePrefix,
    Attack::GarbageProtobuf,
    Attack::WrongLengthFields,
    Attack::WrongSignatureAndCapability,
];

/// Someone else's mailbox, known to the attacker by id (and, for the signature-replay case,
/// a key that signs for another session).
#[derive(Clone)]
struct Victim {
    id: MailboxId,
    key: auth::SigningKey,
}

fn hello_record(relay_key: &[u8; 32]) -> (ClientHandshake, Vec<u8>) {
    let hello = msg::ClientHello {
        versions: PROTOCOL_VERSIONS.to_vec(),
        padding: Vec::new(),
    };
    let mut first = Vec::new();
    let hs = ClientHandshake::start(relay_key, &hello, &mut first).expect("handshake start");
    (hs, first)
}

/// Writes, treating a refused write as the relay having closed already.
async fn write_or_closed(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
}

/// Reads until the relay closes; returns how many bytes it sent. Panics after the timeout.
async fn bytes_until_close(stream: &mut TcpStream, what: &str) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    };
    tokio::time::timeout(CASE_TIMEOUT, read_all)
        .await
        .unwrap_or_else(|_| panic!("{what}: the relay neither answered nor closed"))
}

/// A session opened by hand, to send what a well-behaved client never would.
struct Raw {
    stream: TcpStream,
    channel: Channel,
    buf: Vec<u8>,
    inbox: VecDeque<ServerMessage>,
    closed: bool,
}

impl Raw {
    async fn open(addr: &str, relay_key: &[u8; 32]) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let (hs, first) = hello_record(relay_key);
        stream.write_all(&first).await.expect("send hello");
        let mut buf = Vec::new();
        let (channel, rest) = loop {
            let n = tokio::time::timeout(CASE_TIMEOUT, stream.read_buf(&mut buf))
                .await
                .expect("handshake answer in time")
                .expect("read handshake answer");
            assert!(n > 0, "relay closed during an honest handshake");
            if let Some((body, used)) = record::parse_record(&buf).expect("answer record") {
                let (channel, hello) = hs.finish(body).expect("handshake");
                assert!(hello.error.is_none(), "relay refused the session");
                break (channel, buf[used..].to_vec());
            }
        };
        Self {
            stream,
            channel,
            buf: rest,
            inbox: VecDeque::new(),
            closed: false,
        }
    }

    /// Seals stream bytes into records.
    fn seal(&mut self, data: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        self.channel.seal(data, &mut wire).expect("seal");
        wire
    }

    fn seal_requests(&mut self, reqs: &[Request]) -> Vec<u8> {
        let mut data = Vec::new();
        for r in reqs {
            encode_message(r, &mut data);
        }
        self.seal(&data)
    }

    /// Decrypts every whole record buffered into `inbox`.
    fn open_records(&mut self) {
        let mut consumed = 0;
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        while let Some((body, used)) =
            record::parse_record(&self.buf[consumed..]).expect("relay record header")
        {
            self.channel
                .open::<pigeon_proto::ChannelError>(body, &mut scratch, |m| {
                    got.push(msg::decode_server_message(m)?);
                    Ok(())
                })
                .expect("relay record opens");
            consumed += used;
        }
        self.buf.drain(..consumed);
        self.inbox.extend(got);
    }

    /// Reads once; marks the session closed at EOF or error.
    async fn read_some(&mut self) {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => self.closed = true,
            Ok(_) => self.open_records(),
        }
    }

    async fn send(&mut self, wire: &[u8]) {
        write_or_closed(&mut self.stream, wire).await;
    }

    /// The answer to request `id` (skipping pushes); panics if the session closes first.
    async fn response(&mut self, id: u64, what: &str) -> response::Result {
        let wait = async {
            loop {
                while let Some(m) = self.inbox.pop_front() {
                    if let Some(msg::server_message::Body::Response(r)) = m.body {
                        assert_eq!(r.id, id, "{what}: answer to another request");
                        return r.result.expect("a response carries a result");
                    }
                }
                assert!(
                    !self.closed,
                    "{what}: the relay closed instead of answering"
                );
                self.read_some().await;
            }
        };
        tokio::time::timeout(CASE_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer in time"))
    }

    /// Every message received until the relay closes the session.
    async fn until_close(&mut self, what: &str) -> Vec<ServerMessage> {
        let wait = async {
            while !self.closed {
                self.read_some().await;
            }
            self.inbox.drain(..).collect()
        };
        tokio::time::timeout(CASE_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: the relay kept the session open"))
    }

    async fn expect_error(&mut self, id: u64, code: ErrorCode, what: &str) {
        match self.response(id, what).await {
            response::Result::Error(e) => {
                assert_eq!(e.error_code(), code, "{what}: wrong error ({})", e.message);
            }
            other => panic!("{what}: expected error {code:?}, got {other:?}"),
        }
    }

    async fn expect_pong(&mut self, id: u64, what: &str) {
        let wire = self.seal_requests(&[ping(id)]);
        self.send(&wire).await;
        match self.response(id, what).await {
            response::Result::Pong(_) => {}
            other => panic!("{what}: ping answered with {other:?}"),
        }
    }
}

fn ping(id: u64) -> Request {
    Request {
        id,
        body: Some(request::Body::Ping(msg::Ping {
            payload: b"still here".to_vec(),
        })),
    }
}

fn req(id: u64, body: request::Body) -> Request {
    Request {
        id,
        body: Some(body),
    }
}

/// Runs one bad connection and asserts its outcome. Returns a short description of it.
async fn attack(
    kind: Attack,
    addr: String,
    relay_key: [u8; 32],
    victim: Victim,
    mut rng: Rng,
    honest: Arc<Honest>,
) -> &'static str {
    let what = format!("{kind:?}");
    let what = what.as_str();
    match kind {
        Attack::RandomBytes => {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let junk: Vec<u8> = (0..1000).map(|_| rng.bytes::<1>()[0]).collect();
            write_or_closed(&mut s, &junk).await;
            let _ = s.shutdown().await;
            assert_eq!(bytes_until_close(&mut s, what).await, 0, "{what}: answered");
            "silent close"
        }
        Attack::TruncatedHandshake => {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let (_hs, first) = hello_record(&relay_key);
            write_or_closed(&mut s, &first[..first.len() / 2]).await;
            let _ = s.shutdown().await;
            assert_eq!(bytes_until_close(&mut s, what).await, 0, "{what}: answered");
            "silent close"
        }
        Attack::HugeRecordHeader => {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let mut bytes = vec![0xff, 0xff];
            bytes.extend((0..100).map(|_| rng.bytes::<1>()[0]));
            write_or_closed(&mut s, &bytes).await;
            let _ = s.shutdown().await;
            assert_eq!(bytes_until_close(&mut s, what).await, 0, "{what}: answered");
            "silent close"
        }
        Attack::HandshakeThenRandom => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            let junk: Vec<u8> = (0..500).map(|_| rng.bytes::<1>()[0]).collect();
            raw.send(&junk).await;
            let _ = raw.stream.shutdown().await;
            let got = raw.until_close(what).await;
            assert!(
                got.is_empty(),
                "{what}: relay answered garbage with {got:?}"
            );
            "close"
        }
        Attack::TamperedRecord => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            let mut wire = raw.seal_requests(&[ping(1)]);
            let bit = usize::try_from(rng.below(8)).expect("small");
            let at = HEADER_LEN
                + usize::try_from(rng.below((wire.len() - HEADER_LEN) as u64)).expect("small");
            wire[at] ^= 1 << bit;
            raw.send(&wire).await;
            let got = raw.until_close(what).await;
            assert!(
                got.is_empty(),
                "{what}: relay answered a forged record: {got:?}"
            );
            "close"
        }
        Attack::ReplayedRecord => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            let wire = raw.seal_requests(&[ping(1)]);
            raw.send(&wire).await;
            raw.send(&wire).await;
            let got = raw.until_close(what).await;
            let pongs = got
                .iter()
                .filter(|m| {
                    matches!(
                        &m.body,
                        Some(msg::server_message::Body::Response(msg::Response {
                            id: 1,
                            result: Some(response::Result::Pong(_)),
                        }))
                    )
                })
                .count();
            assert_eq!(pongs, 1, "{what}: the replay was answered: {got:?}");
            assert_eq!(got.len(), 1, "{what}: unexpected messages: {got:?}");
            "answer once, then close"
        }
        Attack::OversizedMessagePrefix => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            // A varint length far over the limit, then a few bytes of "message".
            let mut data = Vec::new();
            let mut len = u64::try_from(MAX_MESSAGE).expect("fits") * 100;
            while len >= 0x80 {
                data.push(u8::try_from(len & 0x7f).expect("7 bits") | 0x80);
                len >>= 7;
            }
            data.push(u8::try_from(len).expect("7 bits"));
            data.extend_from_slice(&[0x08; 64]);
            let wire = raw.seal(&data);
            raw.send(&wire).await;
            let got = raw.until_close(what).await;
            assert!(got.is_empty(), "{what}: unexpected messages: {got:?}");
            "close"
        }
        Attack::GarbageProtobuf => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            let wire = raw.seal(&[3, 0xff, 0xff, 0xff]);
            raw.send(&wire).await;
            let got = raw.until_close(what).await;
            match got.as_slice() {
                [
                    ServerMessage {
                        body:
                            Some(msg::server_message::Body::Response(msg::Response {
                                id: 0,
                                result: Some(response::Result::Error(e)),
                            })),
                    },
                ] => assert_eq!(e.error_code(), ErrorCode::BadRequest, "{what}"),
                other => panic!("{what}: expected one BadRequest notice, got {other:?}"),
            }
            "error, then close"
        }
        Attack::WrongLengthFields => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            let requests = [
                req(
                    1,
                    request::Body::Send(msg::Send {
                        mailbox_id: vec![1; 5],
                        sender_cap: vec![2; 32],
                        message_id: vec![3; 16],
                        ciphertext: b"x".to_vec(),
                        first_attempt: false,
                    }),
                ),
                req(
                    2,
                    request::Body::Send(msg::Send {
                        mailbox_id: victim.id.0.to_vec(),
                        sender_cap: vec![2; 32],
                        message_id: vec![3; 15],
                        ciphertext: b"x".to_vec(),
                        first_attempt: false,
                    }),
                ),
                req(
                    3,
                    request::Body::Subscribe(msg::Subscribe {
                        mailbox_id: vec![1; 31],
                        signature: vec![0; 64],
                        ..Default::default()
                    }),
                ),
                req(
                    4,
                    request::Body::CreateMailbox(msg::CreateMailbox {
                        mailbox_id: vec![1; 32],
                        recipient_key: vec![1; 10],
                        sender_cap_hash: vec![1; 32],
                        signature: vec![0; 64],
                        ..Default::default()
                    }),
                ),
                req(
                    5,
                    request::Body::Ack(msg::Ack {
                        mailbox_id: Vec::new(),
                        seqs: vec![1, 2, 3],
                    }),
                ),
                req(
                    6,
                    request::Body::Ping(msg::Ping {
                        payload: vec![0; 65],
                    }),
                ),
                Request { id: 7, body: None },
            ];
            let wire = raw.seal_requests(&requests);
            raw.send(&wire).await;
            for id in 1..=7 {
                raw.expect_error(id, ErrorCode::BadRequest, &format!("{what} #{id}"))
                    .await;
            }
            raw.expect_pong(8, what).await;
            linger(&mut raw, &honest, what).await;
            "errors, session kept"
        }
        Attack::WrongSignatureAndCapability => {
            let mut raw = Raw::open(&addr, &relay_key).await;
            let random_sig: [u8; 64] = {
                let mut s = [0u8; 64];
                s[..32].copy_from_slice(&rng.bytes::<32>());
                s[32..].copy_from_slice(&rng.bytes::<32>());
                s
            };
            // The owner's real key, but a signature made for another session: a captured
            // proof must be worthless here.
            let other_session = auth::sign(
                &victim.key,
                AuthOp::DeleteMailbox,
                &[7; 32],
                &victim.id.0,
                &[0; 32],
            );
            let subscribe_other = auth::sign(
                &victim.key,
                AuthOp::Subscribe,
                &[7; 32],
                &victim.id.0,
                &[0; 32],
            );
            let requests = [
                req(
                    1,
                    request::Body::Subscribe(msg::Subscribe {
                        mailbox_id: victim.id.0.to_vec(),
                        signature: random_sig.to_vec(),
                        ..Default::default()
                    }),
                ),
                req(
                    2,
                    request::Body::DeleteMailbox(msg::DeleteMailbox {
                        mailbox_id: victim.id.0.to_vec(),
                        signature: other_session.to_vec(),
                    }),
                ),
                req(
                    3,
                    request::Body::Subscribe(msg::Subscribe {
                        mailbox_id: victim.id.0.to_vec(),
                        signature: subscribe_other.to_vec(),
                        ..Default::default()
                    }),
                ),
                req(
                    4,
                    request::Body::Send(msg::Send {
                        mailbox_id: victim.id.0.to_vec(),
                        sender_cap: rng.bytes::<32>().to_vec(),
                        message_id: rng.bytes::<16>().to_vec(),
                        ciphertext: b"spam".to_vec(),
                        first_attempt: false,
                    }),
                ),
                req(
                    5,
                    request::Body::Ack(msg::Ack {
                        mailbox_id: victim.id.0.to_vec(),
                        seqs: vec![1],
                    }),
                ),
            ];
            let wire = raw.seal_requests(&requests);
            raw.send(&wire).await;
            raw.expect_error(1, ErrorCode::BadSignature, "random subscribe signature")
                .await;
            raw.expect_error(
                2,
                ErrorCode::BadSignature,
                "delete signed for another session",
            )
            .await;
            raw.expect_error(
                3,
                ErrorCode::BadSignature,
                "subscribe signed for another session",
            )
            .await;
            raw.expect_error(4, ErrorCode::BadCapability, "send with a wrong capability")
                .await;
            raw.expect_error(5, ErrorCode::NotSubscribed, "ack without subscribing")
                .await;
            raw.expect_pong(6, what).await;
            linger(&mut raw, &honest, what).await;
            "errors, session kept"
        }
    }
}

/// Keeps a hostile session open and busy until the honest pair has moved on by a few
/// messages, so that honest traffic provably overlaps the attack.
async fn linger(raw: &mut Raw, honest: &Honest, what: &str) {
    let start = honest.sent.load(Ordering::SeqCst);
    let mut id = 1000;
    tokio::time::timeout(CASE_TIMEOUT, async {
        while honest.sent.load(Ordering::SeqCst) < start + 3 {
            raw.expect_pong(id, what).await;
            id += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: honest traffic stalled while this session was open"));
}

/// What the honest pair managed.
#[derive(Debug, Default)]
struct Honest {
    sent: AtomicUsize,
    received: AtomicUsize,
    sent_during_attack: AtomicUsize,
    /// Set once the sender has stopped: the receiver then drains and returns.
    sender_done: AtomicBool,
}

async fn honest_sender(
    conn: RelayConnection,
    to: MailboxId,
    cap: [u8; 32],
    stop: Arc<AtomicBool>,
    attacking: Arc<AtomicBool>,
    stats: Arc<Honest>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) && i < 20_000 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        let sent = tokio::time::timeout(
            CASE_TIMEOUT,
            conn.send(&to, &cap, id, format!("honest {i}").into_bytes()),
        )
        .await
        .unwrap_or_else(|_| panic!("honest send {i} took over {CASE_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("honest send {i} failed: {e}"));
        assert!(!sent.duplicate);
        stats.sent.fetch_add(1, Ordering::SeqCst);
        if attacking.load(Ordering::SeqCst) {
            stats.sent_during_attack.fetch_add(1, Ordering::SeqCst);
        }
        i += 1;
    }
}

async fn honest_receiver(mut conn: RelayConnection, inbox: MailboxId, stats: Arc<Honest>) {
    let mut next = 0u64;
    loop {
        if stats.sender_done.load(Ordering::SeqCst)
            && stats.received.load(Ordering::SeqCst) >= stats.sent.load(Ordering::SeqCst)
        {
            return;
        }
        let event = match tokio::time::timeout(Duration::from_millis(200), conn.next_event()).await
        {
            Ok(e) => e,
            Err(_) => continue,
        };
        let Some(Event::Push(push)) = event else {
            panic!("the honest receiver's session ended: {event:?}");
        };
        let mut seqs = Vec::new();
        for d in push.deliveries {
            assert_eq!(
                d.ciphertext,
                format!("honest {next}").into_bytes(),
                "honest message {next} wrong or out of order"
            );
            next += 1;
            seqs.push(d.seq);
        }
        let n = seqs.len();
        tokio::time::timeout(CASE_TIMEOUT, conn.ack(&inbox, seqs))
            .await
            .expect("honest ack in time")
            .expect("honest ack");
        stats.received.fetch_add(n, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_get_errors_or_closes_and_everyone_else_is_served() {
    let seed = support::seed_from_env("PIGEON_BAD_INPUT_SEED");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    // Every hostile connection here comes from the test's one address, and many of them open an
    // honest handshake first to misbehave after it: the per-source handshake cap (which would
    // evict this source's oldest handshakes, as it should against a flood) is raised, so this
    // test is about what the relay does with bad input. `tests/attacks.rs` covers the caps.
    let mut relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--max-handshakes")
            .arg("2000")
            .arg("--max-handshakes-per-source")
            .arg("2000"),
    );
    let addr = relay.addr();
    let relay_key = *relay.link.relay_key();

    // Messages stored before the attack, read only after it.
    let stored = OwnedMailbox::generate().expect("random");
    let setup = relay.connect().await;
    setup
        .create_mailbox(&stored.key, &stored.id, stored.cap_hash())
        .await
        .expect("create");
    let mut answers = Vec::new();
    for i in 0..STORED {
        let id = rng.bytes::<16>();
        answers.push(
            setup
                .submit(request::Body::Send(msg::Send {
                    mailbox_id: stored.id.0.to_vec(),
                    sender_cap: stored.sender_cap.to_vec(),
                    message_id: id.to_vec(),
                    ciphertext: format!("stored {i}").into_bytes(),
                    first_attempt: false,
                }))
                .await
                .expect("submit"),
        );
    }
    for rx in answers {
        assert!(matches!(rx.await, Ok(response::Result::Sent(_))));
    }
    drop(setup);

    // The honest pair: Bob's inbox is also the attackers' victim.
    let bob_box = OwnedMailbox::generate().expect("random");
    let bob = relay.connect().await;
    bob.create_mailbox(&bob_box.key, &bob_box.id, bob_box.cap_hash())
        .await
        .expect("create");
    bob.subscribe(&bob_box.key, &bob_box.id)
        .await
        .expect("subscribe");
    let alice = relay.connect().await;
    let stop = Arc::new(AtomicBool::new(false));
    let attacking = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Honest::default());
    let sender = tokio::spawn(honest_sender(
        alice,
        bob_box.id,
        bob_box.sender_cap,
        Arc::clone(&stop),
        Arc::clone(&attacking),
        Arc::clone(&stats),
    ));
    let receiver = tokio::spawn(honest_receiver(bob, bob_box.id, Arc::clone(&stats)));
    // Let the honest traffic get going first.
    while stats.received.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    attacking.store(true, Ordering::SeqCst);
    let victim = Victim {
        id: bob_box.id,
        key: bob_box.key.clone(),
    };
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for n in 0..ATTACKERS {
        let kind = ATTACKS[n % ATTACKS.len()];
        let task_rng = Rng::new(rng.next_u64());
        attackers.push((
            kind,
            tokio::spawn(attack(
                kind,
                addr.clone(),
                relay_key,
                victim.clone(),
                task_rng,
                Arc::clone(&stats),
            )),
        ));
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for (kind, task) in attackers {
        let outcome = tokio::time::timeout(CASE_TIMEOUT * 2, task)
            .await
            .unwrap_or_else(|_| panic!("{kind:?} (seed {seed}) did not finish"))
            .unwrap_or_else(|e| panic!("{kind:?} (seed {seed}) failed: {e}"));
        outcomes.insert(format!("{kind:?}"), outcome);
    }
    attacking.store(false, Ordering::SeqCst);
    println!("outcomes: {outcomes:#?}");

    // A little more honest traffic after the attack, then stop and let the receiver catch up.
    let after = stats.sent.load(Ordering::SeqCst) + 5;
    tokio::time::timeout(Duration::from_secs(20), async {
        while stats.sent.load(Ordering::SeqCst) < after {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("honest traffic continues after the attack");
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("honest sender stops")
        .expect("honest sender");
    stats.sender_done.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .expect("honest receiver catches up")
        .expect("honest receiver");
    let sent = stats.sent.load(Ordering::SeqCst);
    let during = stats.sent_during_attack.load(Ordering::SeqCst);
    println!("honest: {sent} sent and received, {during} of them during the attack");
    assert_eq!(stats.received.load(Ordering::SeqCst), sent);
    assert!(
        during >= 3,
        "honest messages did not go through during the attack"
    );

    assert!(relay.is_alive(), "the relay died: {}", relay.log_tail(40));
    relay.assert_no_panic();

    // Everything stored before the attack is still there, in order.
    let mut reader = relay.connect().await;
    assert_eq!(
        reader
            .subscribe(&stored.key, &stored.id)
            .await
            .expect("subscribe"),
        STORED as u64
    );
    let mut got = 0;
    while got < STORED {
        let event = tokio::time::timeout(CASE_TIMEOUT, reader.next_event())
            .await
            .expect("stored messages arrive");
        let Some(Event::Push(push)) = event else {
            panic!("session ended: {event:?}");
        };
        let mut seqs = Vec::new();
        for d in push.deliveries {
            assert_eq!(d.ciphertext, format!("stored {got}").into_bytes());
            got += 1;
            seqs.push(d.seq);
        }
        reader.ack(&stored.id, seqs).await.expect("ack");
    }
    drop(reader);
    relay.stop();
    relay.assert_no_panic();
}
