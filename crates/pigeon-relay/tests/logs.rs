//! Group logs (issue #14) end to end: relays served in-process on real sockets and a fjall
//! store, spoken to over the Noise channel by hand, as any client would.
//!
//! A log keeps its messages when they are acknowledged; every member device reads it from its
//! own position; the owner replaces the member capability, after which the old one reads up to
//! where it was replaced and posts nothing.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use pigeon_proto::StaticKeypair;
use pigeon_proto::auth::{self, AuthOp, SigningKey};
use pigeon_proto::channel::{Channel, ClientHandshake};
use pigeon_relay::{Metrics, RelayConfig};
use pigeon_store::{FjallStore, Limits};
use pigeon_wire::msg::{self, MailboxId, MailboxKind, Request, request, response, server_message};
use pigeon_wire::stream::encode_message;
use pigeon_wire::{ErrorCode, PROTOCOL_VERSIONS, record};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on every wait for the relay.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A relay serving a store directory in this process.
struct TestRelay {
    addr: String,
    key: [u8; 32],
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestRelay {
    async fn start(store_dir: &Path) -> Self {
        let store = FjallStore::open(store_dir, Limits::default()).unwrap();
        let keys = StaticKeypair::generate().unwrap();
        let key = *keys.public();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let config = RelayConfig {
                drain_timeout: Duration::from_secs(2),
                ..RelayConfig::default()
            };
            pigeon_relay::run(
                listener,
                store,
                keys,
                config,
                Arc::new(Metrics::default()),
                shutdown,
            )
            .await
            .unwrap();
        });
        Self {
            addr,
            key,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the relay down gracefully and waits until it (and its store) are closed.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        }
    }

    async fn connect(&self) -> Session {
        Session::open(&self.addr, &self.key).await
    }
}

/// One session, opened by hand.
struct Session {
    stream: TcpStream,
    channel: Channel,
    buf: Vec<u8>,
    responses: VecDeque<msg::Response>,
    pushes: VecDeque<msg::Push>,
    next_id: u64,
}

impl Session {
    async fn open(addr: &str, relay_key: &[u8; 32]) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let hello = msg::ClientHello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            padding: Vec::new(),
        };
        let mut first = Vec::new();
        let hs = ClientHandshake::start(relay_key, &hello, &mut first).unwrap();
        stream.write_all(&first).await.unwrap();
        let mut buf = Vec::new();
        let (channel, rest) = loop {
            let n = tokio::time::timeout(TIMEOUT, stream.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "relay closed during the handshake");
            if let Some((body, used)) = record::parse_record(&buf).unwrap() {
                let (channel, hello) = hs.finish(body).unwrap();
                assert!(hello.error.is_none());
                break (channel, buf[used..].to_vec());
            }
        };
        Self {
            stream,
            channel,
            buf: rest,
            responses: VecDeque::new(),
            pushes: VecDeque::new(),
            next_id: 1,
        }
    }

    fn handshake_hash(&self) -> [u8; 32] {
        *self.channel.handshake_hash()
    }

    /// Sends requests in one write; returns their ids.
    async fn submit(&mut self, bodies: Vec<request::Body>) -> Vec<u64> {
        let mut data = Vec::new();
        let mut ids = Vec::new();
        for body in bodies {
            let id = self.next_id;
            self.next_id += 1;
            encode_message(
                &Request {
                    id,
                    body: Some(body),
                },
                &mut data,
            );
            ids.push(id);
        }
        let mut wire = Vec::new();
        self.channel.seal(&data, &mut wire).unwrap();
        self.stream.write_all(&wire).await.unwrap();
        ids
    }

    /// Reads once (within the timeout) and sorts what came into responses and pushes.
    async fn read_some(&mut self) {
        let n = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.buf))
            .await
            .expect("the relay said something in time")
            .unwrap();
        assert!(n > 0, "the relay closed the session");
        let mut consumed = 0;
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        while let Some((body, used)) = record::parse_record(&self.buf[consumed..]).unwrap() {
            self.channel
                .open::<pigeon_proto::ChannelError>(body, &mut scratch, |m| {
                    got.push(msg::decode_server_message(m)?);
                    Ok(())
                })
                .unwrap();
            consumed += used;
        }
        self.buf.drain(..consumed);
        for m in got {
            match m.body {
                Some(server_message::Body::Response(r)) => self.responses.push_back(r),
                Some(server_message::Body::Push(p)) => self.pushes.push_back(p),
                None => panic!("an empty server message"),
            }
        }
    }

    async fn response(&mut self, id: u64) -> response::Result {
        loop {
            if let Some(at) = self.responses.iter().position(|r| r.id == id) {
                let r = self.responses.remove(at).unwrap();
                return r.result.expect("a response carries a result");
            }
            self.read_some().await;
        }
    }

    async fn call(&mut self, body: request::Body) -> response::Result {
        let id = self.submit(vec![body]).await[0];
        self.response(id).await
    }

    async fn expect_error(&mut self, body: request::Body, code: ErrorCode) {
        match self.call(body).await {
            response::Result::Error(e) => {
                assert_eq!(e.error_code(), code, "{}", e.message);
            }
            other => panic!("expected {code:?}, got {other:?}"),
        }
    }

    async fn expect_done(&mut self, body: request::Body) {
        match self.call(body).await {
            response::Result::Done(_) => {}
            other => panic!("expected Done, got {other:?}"),
        }
    }

    async fn create(&mut self, owner: &SigningKey, id: &MailboxId, cap: &[u8; 32], kind: u32) {
        let cap_hash = auth::cap_hash(cap);
        let signature = auth::sign(
            owner,
            AuthOp::CreateMailbox,
            &self.handshake_hash(),
            &id.0,
            &cap_hash,
        );
        let answer = self
            .call(request::Body::CreateMailbox(msg::CreateMailbox {
                mailbox_id: id.0.to_vec(),
                recipient_key: owner.verifying_key().to_bytes().to_vec(),
                sender_cap_hash: cap_hash.to_vec(),
                signature: signature.to_vec(),
                kind,
            }))
            .await;
        assert!(matches!(answer, response::Result::Created(_)), "{answer:?}");
    }

    /// Posts `texts` pipelined, in order; returns the answers in order.
    async fn post(
        &mut self,
        id: &MailboxId,
        cap: &[u8; 32],
        texts: &[String],
    ) -> Vec<response::Result> {
        let bodies = texts
            .iter()
            .map(|t| request::Body::Send(send(id, cap, t)))
            .collect();
        let ids = self.submit(bodies).await;
        let mut out = Vec::new();
        for id in ids {
            out.push(self.response(id).await);
        }
        out
    }

    /// Posts and expects each to be stored; returns the sequence numbers.
    async fn post_ok(&mut self, id: &MailboxId, cap: &[u8; 32], texts: &[String]) -> Vec<u64> {
        self.post(id, cap, texts)
            .await
            .into_iter()
            .map(|r| match r {
                response::Result::Sent(s) => {
                    assert!(!s.duplicate);
                    s.seq
                }
                other => panic!("post refused: {other:?}"),
            })
            .collect()
    }

    async fn subscribe_log(&mut self, id: &MailboxId, cap: &[u8], after_seq: u64) -> u64 {
        match self.call(subscribe_log(id, cap, after_seq)).await {
            response::Result::Subscribed(s) => s.pending,
            other => panic!("subscribe refused: {other:?}"),
        }
    }

    /// Takes pushed deliveries of `id` until `n` have come, acknowledging each push (which on
    /// a log deletes nothing); returns (seq, ciphertext) in the order pushed.
    async fn take(&mut self, id: &MailboxId, n: usize) -> Vec<(u64, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < n {
            let Some(push) = self.pushes.pop_front() else {
                self.read_some().await;
                continue;
            };
            assert_eq!(push.mailbox_id, id.0.to_vec());
            let seqs: Vec<u64> = push.deliveries.iter().map(|d| d.seq).collect();
            got.extend(push.deliveries.into_iter().map(|d| (d.seq, d.ciphertext)));
            match self
                .call(request::Body::Ack(msg::Ack {
                    mailbox_id: id.0.to_vec(),
                    seqs,
                }))
                .await
            {
                response::Result::Acked(a) => assert_eq!(a.deleted, 0, "a log deletes nothing"),
                other => panic!("ack refused: {other:?}"),
            }
        }
        assert_eq!(got.len(), n, "more deliveries than expected");
        got
    }

    /// Asserts that nothing is pushed beyond what came so far: a ping round trip after the
    /// relay had time to push what it would.
    async fn expect_no_push(&mut self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer = self
            .call(request::Body::Ping(msg::Ping {
                payload: Vec::new(),
            }))
            .await;
        assert!(matches!(answer, response::Result::Pong(_)));
        assert!(self.pushes.is_empty(), "unexpected push: {:?}", self.pushes);
    }

    async fn update(
        &mut self,
        signer: &SigningKey,
        id: &MailboxId,
        new_owner: Option<&SigningKey>,
        new_cap: &[u8; 32],
    ) -> response::Result {
        let new_key = new_owner.map(|k| k.verifying_key().to_bytes());
        let new_cap_hash = auth::cap_hash(new_cap);
        let digest = auth::update_digest(new_key.as_ref(), &new_cap_hash);
        let signature = auth::sign(
            signer,
            AuthOp::UpdateMailbox,
            &self.handshake_hash(),
            &id.0,
            &digest,
        );
        self.call(request::Body::UpdateMailbox(msg::UpdateMailbox {
            mailbox_id: id.0.to_vec(),
            new_owner_key: new_key.map(|k| k.to_vec()).unwrap_or_default(),
            new_cap_hash: new_cap_hash.to_vec(),
            signature: signature.to_vec(),
        }))
        .await
    }
}

fn send(id: &MailboxId, cap: &[u8; 32], text: &str) -> msg::Send {
    msg::Send {
        mailbox_id: id.0.to_vec(),
        sender_cap: cap.to_vec(),
        message_id: auth::random_bytes::<16>().unwrap().to_vec(),
        ciphertext: text.as_bytes().to_vec(),
        first_attempt: false,
    }
}

fn subscribe_log(id: &MailboxId, cap: &[u8], after_seq: u64) -> request::Body {
    request::Body::Subscribe(msg::Subscribe {
        mailbox_id: id.0.to_vec(),
        signature: Vec::new(),
        after_seq: Some(after_seq),
        member_cap: cap.to_vec(),
    })
}

fn texts(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|n| format!("group message {n}")).collect()
}

/// A new log: its id, owner key and member capability.
fn new_log() -> (MailboxId, SigningKey, [u8; 32]) {
    (
        MailboxId(auth::random_bytes().unwrap()),
        auth::generate_signing_key().unwrap(),
        auth::random_bytes().unwrap(),
    )
}

fn ciphertexts(got: &[(u64, Vec<u8>)]) -> Vec<String> {
    got.iter()
        .map(|(_, c)| String::from_utf8(c.clone()).unwrap())
        .collect()
}

fn seqs(got: &[(u64, Vec<u8>)]) -> Vec<u64> {
    got.iter().map(|(s, _)| *s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_one_log_from_their_own_positions_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (log, owner, cap) = new_log();
    let mut admin = relay.connect().await;
    admin
        .create(&owner, &log, &cap, MailboxKind::Log.as_u32())
        .await;
    // A retry (another session, a later second) is answered as a success.
    relay
        .connect()
        .await
        .create(&owner, &log, &cap, MailboxKind::Log.as_u32())
        .await;

    let mut poster = relay.connect().await;
    assert_eq!(
        poster.post_ok(&log, &cap, &texts(1, 5)).await,
        [1, 2, 3, 4, 5]
    );
    // A retry of a stored message is a duplicate, as with inboxes.
    let retried = send(&log, &cap, "retried");
    for duplicate in [false, true] {
        let answer = poster.call(request::Body::Send(retried.clone())).await;
        assert_eq!(
            answer,
            response::Result::Sent(msg::Sent { seq: 6, duplicate })
        );
    }

    let mut a = relay.connect().await;
    let mut b = relay.connect().await;
    let mut c = relay.connect().await;
    assert_eq!(a.subscribe_log(&log, &cap, 0).await, 6);
    assert_eq!(b.subscribe_log(&log, &cap, 3).await, 3);
    assert_eq!(c.subscribe_log(&log, &cap, 6).await, 0);
    // Live posts while the three read, from two posters at once.
    let mut other = relay.connect().await;
    let (ten, thirty) = (texts(10, 29), texts(30, 39));
    let (first, second) = tokio::join!(
        poster.post_ok(&log, &cap, &ten),
        other.post_ok(&log, &cap, &thirty),
    );
    assert_eq!(first.len() + second.len(), 30);
    let (got_a, got_b, got_c) = tokio::join!(a.take(&log, 36), b.take(&log, 33), c.take(&log, 30));
    assert_eq!(seqs(&got_a), (1..=36).collect::<Vec<_>>());
    assert_eq!(got_a[3..], got_b[..], "b reads the same log after 3");
    assert_eq!(got_a[6..], got_c[..], "c reads the same log after 6");
    assert_eq!(
        ciphertexts(&got_a[..5]),
        texts(1, 5),
        "the first posts in the order they were made durable"
    );

    // Everyone acknowledged everything, and a fourth device still reads it all.
    let mut d = relay.connect().await;
    assert_eq!(d.subscribe_log(&log, &cap, 0).await, 36);
    let got_d = d.take(&log, 36).await;
    assert_eq!(got_d, got_a);
    // Later posts reach every subscriber live.
    poster.post_ok(&log, &cap, &texts(40, 40)).await;
    for s in [&mut a, &mut b, &mut c, &mut d] {
        let got = s.take(&log, 1).await;
        assert_eq!(got[0].0, 37);
    }

    // Wrong capabilities: no reading, no posting; a cap of the wrong size is a field error.
    let stranger: [u8; 32] = auth::random_bytes().unwrap();
    let mut e = relay.connect().await;
    e.expect_error(subscribe_log(&log, &stranger, 0), ErrorCode::BadCapability)
        .await;
    e.expect_error(subscribe_log(&log, &cap[..31], 0), ErrorCode::BadRequest)
        .await;
    e.expect_error(
        request::Body::Send(send(&log, &stranger, "spam")),
        ErrorCode::BadCapability,
    )
    .await;
    // The owner key's subscription proof does not open a log: the capability does.
    let proof = auth::sign(
        &owner,
        AuthOp::Subscribe,
        &e.handshake_hash(),
        &log.0,
        &[0; 32],
    );
    e.expect_error(
        request::Body::Subscribe(msg::Subscribe {
            mailbox_id: log.0.to_vec(),
            signature: proof.to_vec(),
            after_seq: None,
            member_cap: Vec::new(),
        }),
        ErrorCode::BadRequest,
    )
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_capability_reads_up_to_its_limit_and_posts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (log, owner, cap1) = new_log();
    let cap2: [u8; 32] = auth::random_bytes().unwrap();
    let mut admin = relay.connect().await;
    admin
        .create(&owner, &log, &cap1, MailboxKind::Log.as_u32())
        .await;
    let mut poster = relay.connect().await;
    poster.post_ok(&log, &cap1, &texts(1, 3)).await;
    // A member device reading with the capability that is about to be replaced.
    let mut old_reader = relay.connect().await;
    assert_eq!(old_reader.subscribe_log(&log, &cap1, 0).await, 3);
    assert_eq!(seqs(&old_reader.take(&log, 3).await), [1, 2, 3]);

    // Only the owner key replaces the capability.
    let intruder = auth::generate_signing_key().unwrap();
    let refused = admin.update(&intruder, &log, None, &cap2).await;
    assert!(
        matches!(&refused, response::Result::Error(e) if e.error_code() == ErrorCode::BadSignature),
        "{refused:?}"
    );
    // A proof for other contents (here: another owner key) does not carry over.
    let mut forged = relay.connect().await;
    let digest = auth::update_digest(None, &auth::cap_hash(&cap2));
    let signature = auth::sign(
        &owner,
        AuthOp::UpdateMailbox,
        &forged.handshake_hash(),
        &log.0,
        &digest,
    );
    forged
        .expect_error(
            request::Body::UpdateMailbox(msg::UpdateMailbox {
                mailbox_id: log.0.to_vec(),
                new_owner_key: intruder.verifying_key().to_bytes().to_vec(),
                new_cap_hash: auth::cap_hash(&cap2).to_vec(),
                signature: signature.to_vec(),
            }),
            ErrorCode::BadSignature,
        )
        .await;
    poster.post_ok(&log, &cap1, &texts(4, 4)).await;

    let done = admin.update(&owner, &log, None, &cap2).await;
    assert!(matches!(done, response::Result::Done(_)), "{done:?}");
    // A retry is answered the same and retires nothing more.
    let done = admin.update(&owner, &log, None, &cap2).await;
    assert!(matches!(done, response::Result::Done(_)), "{done:?}");

    // The old capability posts nothing more; a random one is still just wrong.
    let refused = poster.post(&log, &cap1, &texts(5, 5)).await;
    assert!(
        matches!(&refused[0], response::Result::Error(e) if e.error_code() == ErrorCode::CapabilityRetired),
        "{refused:?}"
    );
    let stranger: [u8; 32] = auth::random_bytes().unwrap();
    let refused = poster.post(&log, &stranger, &texts(5, 5)).await;
    assert!(
        matches!(&refused[0], response::Result::Error(e) if e.error_code() == ErrorCode::BadCapability),
        "{refused:?}"
    );
    assert_eq!(poster.post_ok(&log, &cap2, &texts(6, 8)).await, [5, 6, 7]);

    // The subscription made with the old capability got seq 4 and stops there.
    assert_eq!(seqs(&old_reader.take(&log, 1).await), [4]);
    old_reader.expect_no_push().await;
    // So does a new one made with it; from past its limit it gets nothing at all.
    let mut late = relay.connect().await;
    assert_eq!(late.subscribe_log(&log, &cap1, 2).await, 2);
    assert_eq!(seqs(&late.take(&log, 2).await), [3, 4]);
    late.expect_no_push().await;
    let mut past = relay.connect().await;
    assert_eq!(past.subscribe_log(&log, &cap1, 4).await, 0);
    past.expect_no_push().await;
    // With the new capability, the old reader goes on where it stopped.
    assert_eq!(old_reader.subscribe_log(&log, &cap2, 4).await, 3);
    assert_eq!(seqs(&old_reader.take(&log, 3).await), [5, 6, 7]);
    poster.post_ok(&log, &cap2, &texts(9, 9)).await;
    assert_eq!(seqs(&old_reader.take(&log, 1).await), [8]);
    late.expect_no_push().await;

    // Handing the log to a new owner: the old key can do nothing more, the new one can.
    let owner2 = auth::generate_signing_key().unwrap();
    let cap3: [u8; 32] = auth::random_bytes().unwrap();
    let done = admin.update(&owner, &log, Some(&owner2), &cap3).await;
    assert!(matches!(done, response::Result::Done(_)), "{done:?}");
    let refused = admin.update(&owner, &log, None, &cap2).await;
    assert!(
        matches!(&refused, response::Result::Error(e) if e.error_code() == ErrorCode::BadSignature),
        "{refused:?}"
    );
    // A retry of the hand-over is proven by the new owner.
    let done = admin.update(&owner2, &log, Some(&owner2), &cap3).await;
    assert!(matches!(done, response::Result::Done(_)), "{done:?}");
    assert_eq!(poster.post_ok(&log, &cap3, &texts(10, 10)).await, [9]);
    // Both earlier capabilities are retired now, each with its own limit.
    let mut two = relay.connect().await;
    assert_eq!(two.subscribe_log(&log, &cap2, 0).await, 8);
    assert_eq!(seqs(&two.take(&log, 8).await), (1..=8).collect::<Vec<_>>());
    two.expect_no_push().await;

    // An update needs a 32-byte hash and a real key; an inbox cannot be updated.
    admin
        .expect_error(
            request::Body::UpdateMailbox(msg::UpdateMailbox {
                mailbox_id: log.0.to_vec(),
                new_owner_key: vec![1; 31],
                new_cap_hash: vec![0; 32],
                signature: vec![0; 64],
            }),
            ErrorCode::BadRequest,
        )
        .await;
    let (inbox, inbox_key, inbox_cap) = new_log();
    admin
        .create(&inbox_key, &inbox, &inbox_cap, MailboxKind::Inbox.as_u32())
        .await;
    let refused = admin.update(&inbox_key, &inbox, None, &cap2).await;
    match refused {
        response::Result::Error(e) => {
            assert_eq!(e.error_code(), ErrorCode::BadRequest);
            assert!(e.message.contains("inbox"), "{}", e.message);
        }
        other => panic!("an inbox was updated: {other:?}"),
    }

    // Deleting the log (by its owner now) ends every subscription to it.
    let signature = auth::sign(
        &owner2,
        AuthOp::DeleteMailbox,
        &admin.handshake_hash(),
        &log.0,
        &[0; 32],
    );
    admin
        .expect_done(request::Body::DeleteMailbox(msg::DeleteMailbox {
            mailbox_id: log.0.to_vec(),
            signature: signature.to_vec(),
        }))
        .await;
    old_reader
        .expect_error(
            request::Body::Ack(msg::Ack {
                mailbox_id: log.0.to_vec(),
                seqs: vec![1],
            }),
            ErrorCode::NotSubscribed,
        )
        .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inboxes_keep_their_semantics_and_kinds_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (inbox, key, cap) = new_log();
    let mut s = relay.connect().await;
    s.create(&key, &inbox, &cap, MailboxKind::Inbox.as_u32())
        .await;
    s.post_ok(&inbox, &cap, &texts(1, 3)).await;
    // A log's fields are ignored by an inbox: the owner's proof is what opens it, from the
    // oldest unacknowledged message.
    let signature = auth::sign(
        &key,
        AuthOp::Subscribe,
        &s.handshake_hash(),
        &inbox.0,
        &[0; 32],
    );
    let answer = s
        .call(request::Body::Subscribe(msg::Subscribe {
            mailbox_id: inbox.0.to_vec(),
            signature: signature.to_vec(),
            after_seq: Some(2),
            member_cap: cap.to_vec(),
        }))
        .await;
    assert!(
        matches!(
            answer,
            response::Result::Subscribed(msg::Subscribed { pending: 3 })
        ),
        "{answer:?}"
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        match s.pushes.pop_front() {
            Some(p) => got.extend(p.deliveries.into_iter().map(|d| d.seq)),
            None => s.read_some().await,
        }
    }
    assert_eq!(got, [1, 2, 3]);
    match s
        .call(request::Body::Ack(msg::Ack {
            mailbox_id: inbox.0.to_vec(),
            seqs: got,
        }))
        .await
    {
        response::Result::Acked(a) => assert_eq!(a.deleted, 3, "an inbox deletes on ack"),
        other => panic!("{other:?}"),
    }
    // The member capability alone does not open an inbox.
    let mut t = relay.connect().await;
    t.expect_error(subscribe_log(&inbox, &cap, 0), ErrorCode::BadSignature)
        .await;
    // Unknown kinds are refused.
    let (other, other_key, other_cap) = new_log();
    let cap_hash = auth::cap_hash(&other_cap);
    let signature = auth::sign(
        &other_key,
        AuthOp::CreateMailbox,
        &t.handshake_hash(),
        &other.0,
        &cap_hash,
    );
    t.expect_error(
        request::Body::CreateMailbox(msg::CreateMailbox {
            mailbox_id: other.0.to_vec(),
            recipient_key: other_key.verifying_key().to_bytes().to_vec(),
            sender_cap_hash: cap_hash.to_vec(),
            signature: signature.to_vec(),
            kind: 2,
        }),
        ErrorCode::BadRequest,
    )
    .await;
    // The same id, key and capability as an inbox and as a log are two different mailboxes.
    t.expect_error(
        request::Body::CreateMailbox(msg::CreateMailbox {
            mailbox_id: inbox.0.to_vec(),
            recipient_key: key.verifying_key().to_bytes().to_vec(),
            sender_cap_hash: auth::cap_hash(&cap).to_vec(),
            signature: auth::sign(
                &key,
                AuthOp::CreateMailbox,
                &t.handshake_hash(),
                &inbox.0,
                &auth::cap_hash(&cap),
            )
            .to_vec(),
            kind: MailboxKind::Log.as_u32(),
        }),
        ErrorCode::MailboxExists,
    )
    .await;
    relay.stop().await;
}

/// A group of a few hundred member devices: every post reaches every one, in one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_of_a_large_group_gets_every_post() {
    const MEMBERS: usize = 300;
    const POSTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (log, owner, cap) = new_log();
    let mut admin = relay.connect().await;
    admin
        .create(&owner, &log, &cap, MailboxKind::Log.as_u32())
        .await;
    let mut members = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let mut m = relay.connect().await;
        assert_eq!(m.subscribe_log(&log, &cap, 0).await, 0);
        members.push(m);
    }
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut m| tokio::spawn(async move { seqs(&m.take(&log, POSTS).await) }))
        .collect();
    // Posted one at a time, so each reaches the subscribers while they are caught up.
    let mut poster = relay.connect().await;
    for n in 1..=POSTS {
        poster.post_ok(&log, &cap, &texts(n, n)).await;
    }
    let want: Vec<u64> = (1..=POSTS as u64).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), want);
    }
    relay.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What a relay answered survives it: its store copied while it runs (what `kill -9` leaves
/// on disk, short of the page cache the fsync covers) serves the whole log, the rotation
/// included, and so does the same store after a graceful restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_intact_after_a_crash_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir: PathBuf = dir.path().join("store");
    let crashed: PathBuf = dir.path().join("crashed");
    let (log, owner, cap1) = new_log();
    let cap2: [u8; 32] = auth::random_bytes().unwrap();
    let want = {
        let relay = TestRelay::start(&store_dir).await;
        let mut s = relay.connect().await;
        s.create(&owner, &log, &cap1, MailboxKind::Log.as_u32())
            .await;
        s.post_ok(&log, &cap1, &texts(1, 50)).await;
        assert!(matches!(
            s.update(&owner, &log, None, &cap2).await,
            response::Result::Done(_)
        ));
        s.post_ok(&log, &cap2, &texts(51, 60)).await;
        assert_eq!(s.subscribe_log(&log, &cap2, 0).await, 60);
        let want = s.take(&log, 60).await;
        copy_dir(&store_dir, &crashed);
        relay.stop().await;
        want
    };
    for path in [&crashed, &store_dir] {
        let relay = TestRelay::start(path).await;
        let mut s = relay.connect().await;
        assert_eq!(s.subscribe_log(&log, &cap2, 0).await, 60);
        assert_eq!(s.take(&log, 60).await, want);
        let mut old = relay.connect().await;
        assert_eq!(old.subscribe_log(&log, &cap1, 10).await, 40);
        assert_eq!(old.take(&log, 40).await, want[10..50]);
        let refused = old.post(&log, &cap1, &texts(61, 61)).await;
        assert!(
            matches!(&refused[0], response::Result::Error(e) if e.error_code() == ErrorCode::CapabilityRetired),
            "{refused:?}"
        );
        assert_eq!(s.post_ok(&log, &cap2, &texts(61, 61)).await, [61]);
        relay.stop().await;
    }
}

/// Mailboxes nobody uses expire (issue #13): a log that a member subscribes to through the
/// relay is renewed that day; one nobody touched since it was made, 100 days ago, goes at the
/// next sweep with what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_someone_reads_is_renewed_and_one_nobody_reads_expires() {
    use pigeon_store::{MailboxRecord, MailboxStore as _};
    const DAY: u64 = 86_400;
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (read, read_key, read_cap) = new_log();
    let (unread, unread_key, unread_cap) = new_log();
    {
        let store = FjallStore::open(dir.path(), Limits::default()).unwrap();
        for (id, key, cap) in [
            (read, &read_key, read_cap),
            (unread, &unread_key, unread_cap),
        ] {
            let record = MailboxRecord::new(
                MailboxKind::Log,
                key.verifying_key().to_bytes(),
                auth::cap_hash(&cap),
                now - 100 * DAY,
            );
            store.create_mailbox(id, record).await.unwrap();
        }
    }
    let relay = TestRelay::start(dir.path()).await;
    let mut s = relay.connect().await;
    s.post_ok(&read, &read_cap, &texts(1, 2)).await;
    s.post_ok(&unread, &unread_cap, &texts(1, 2)).await;
    assert_eq!(s.subscribe_log(&read, &read_cap, 0).await, 2);
    drop(s);
    relay.stop().await;

    let store = FjallStore::open(dir.path(), Limits::default()).unwrap();
    let gone = store.expire(now).await.unwrap();
    assert_eq!((gone.mailboxes, gone.slots), (1, 0), "{gone:?}");
    assert!(store.mailbox(read).await.unwrap().is_some());
    assert!(store.mailbox(unread).await.unwrap().is_none());
    assert_eq!(store.pending(read).await.unwrap(), 2);
}
