//! Alice and Bob exchange 10,000 messages through a real relay process: 5,000 each way,
//! pipelined, each on its own connection and mailbox. Every message arrives once, in send
//! order, unaltered; acknowledging them all leaves both mailboxes empty.

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_wire::msg::{self, MailboxId, request, response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts, Rng};
use tokio::sync::oneshot;

/// Messages each way.
const EACH: usize = 5_000;
/// Longest a single push may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the whole exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(150);

/// One message as the sender made it: id and (stand-in) ciphertext.
type Script = Arc<Vec<([u8; 16], Vec<u8>)>>;

fn script(from: &str, to: &str, rng: &mut Rng) -> Script {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(EACH);
    for i in 0..EACH {
        let id: [u8; 16] = rng.bytes();
        assert!(seen.insert(id), "the generator repeated a message id");
        // Random-ish: a unique header, then 0..300 random bytes. The relay is opaque, so the
        // bytes stand in for ciphertext here (the privacy test encrypts for real).
        let mut body = format!("{from}->{to} #{i:05} {:016x} ", rng.next_u64()).into_bytes();
        let extra = usize::try_from(rng.below(300)).expect("small");
        body.extend((0..extra).map(|_| rng.bytes::<1>()[0]));
        out.push((id, body));
    }
    Arc::new(out)
}

/// What one party observed.
#[derive(Debug)]
struct Report {
    received: usize,
    deleted: u64,
    pushes: usize,
}

/// Sends `outgoing` to the peer's mailbox (pipelined) while receiving `incoming` into `inbox`,
/// checking order and content, and acknowledging everything.
async fn party(
    name: &'static str,
    mut conn: RelayConnection,
    inbox: MailboxId,
    peer: (MailboxId, [u8; 32]),
    outgoing: Script,
    incoming: Script,
) -> Report {
    // Queue every send at once; the connection batches them into few records and the relay
    // into few durable commits. Answers are collected after receiving.
    let mut sent = Vec::with_capacity(EACH);
    for (id, body) in outgoing.iter() {
        let rx = conn
            .submit(request::Body::Send(msg::Send {
                mailbox_id: peer.0.0.to_vec(),
                sender_cap: peer.1.to_vec(),
                message_id: id.to_vec(),
                ciphertext: body.clone(),
                first_attempt: false,
            }))
            .await
            .unwrap_or_else(|e| panic!("{name}: submitting a send failed: {e}"));
        sent.push(rx);
    }

    let mut received = 0;
    let mut pushes = 0;
    let mut last_seq = 0;
    let mut acks: Vec<(usize, oneshot::Receiver<response::Result>)> = Vec::new();
    while received < EACH {
        let event = tokio::time::timeout(EVENT_TIMEOUT, conn.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!("{name}: no push within {EVENT_TIMEOUT:?} after {received} messages")
            });
        let push = match event {
            Some(Event::Push(p)) => p,
            other => panic!("{name}: session ended after {received} messages: {other:?}"),
        };
        pushes += 1;
        assert_eq!(
            push.mailbox_id,
            inbox.0.to_vec(),
            "{name}: push for another mailbox"
        );
        assert!(!push.deliveries.is_empty(), "{name}: empty push");
        let mut seqs = Vec::with_capacity(push.deliveries.len());
        for d in push.deliveries {
            assert!(
                received < EACH,
                "{name}: more than {EACH} messages delivered"
            );
            assert!(
                d.seq > last_seq,
                "{name}: seq {} after {last_seq}: not ascending",
                d.seq
            );
            last_seq = d.seq;
            let (id, body) = &incoming[received];
            assert_eq!(
                d.message_id,
                id.to_vec(),
                "{name}: message {received} arrived out of order"
            );
            assert!(
                d.ciphertext == *body,
                "{name}: message {received} arrived altered"
            );
            received += 1;
            seqs.push(d.seq);
        }
        let n = seqs.len();
        let rx = conn
            .submit(request::Body::Ack(msg::Ack {
                mailbox_id: inbox.0.to_vec(),
                seqs,
            }))
            .await
            .unwrap_or_else(|e| panic!("{name}: submitting an ack failed: {e}"));
        acks.push((n, rx));
    }

    let mut deleted = 0;
    for (n, rx) in acks {
        match rx.await {
            Ok(response::Result::Acked(a)) => {
                assert_eq!(a.deleted, n as u64, "{name}: ack deleted fewer than acked");
                deleted += a.deleted;
            }
            other => panic!("{name}: ack answered with {other:?}"),
        }
    }
    let mut last_sent = 0;
    for (i, rx) in sent.into_iter().enumerate() {
        match rx.await {
            Ok(response::Result::Sent(s)) => {
                assert!(!s.duplicate, "{name}: fresh message {i} reported duplicate");
                assert!(
                    s.seq > last_sent,
                    "{name}: send {i} got seq {} after {last_sent}",
                    s.seq
                );
                last_sent = s.seq;
            }
            other => panic!("{name}: send {i} answered with {other:?}"),
        }
    }
    Report {
        received,
        deleted,
        pushes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_bob_exchange_ten_thousand_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    exchange(Relay::start(RelayOpts::in_dir(dir.path()))).await;
}

/// The same through a relay whose mailboxes are on NATS JetStream (Debian's `nats-server`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_bob_exchange_ten_thousand_messages_on_nats_jetstream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = pigeon_store_nats::NatsServer::start()
        .await
        .expect("nats-server runs (apt-get install nats-server)");
    let opts = RelayOpts::in_dir(dir.path()).arg("--store").arg(&nats.url);
    exchange(Relay::start(opts)).await;
}

async fn exchange(mut relay: Relay) {
    let seed = support::seed_from_env("PIGEON_EXCHANGE_SEED");
    let mut rng = Rng::new(seed);

    let alice = relay.connect().await;
    let bob = relay.connect().await;
    let alice_box = OwnedMailbox::generate().expect("random");
    let bob_box = OwnedMailbox::generate().expect("random");
    for (conn, mbx) in [(&alice, &alice_box), (&bob, &bob_box)] {
        conn.create_mailbox(&mbx.key, &mbx.id, mbx.cap_hash())
            .await
            .expect("create mailbox");
        assert_eq!(
            conn.subscribe(&mbx.key, &mbx.id).await.expect("subscribe"),
            0
        );
    }
    let to_bob = script("alice", "bob", &mut rng);
    let to_alice = script("bob", "alice", &mut rng);

    let started = Instant::now();
    let a = tokio::spawn(party(
        "alice",
        alice,
        alice_box.id,
        (bob_box.id, bob_box.sender_cap),
        Arc::clone(&to_bob),
        Arc::clone(&to_alice),
    ));
    let b = tokio::spawn(party(
        "bob",
        bob,
        bob_box.id,
        (alice_box.id, alice_box.sender_cap),
        to_alice,
        to_bob,
    ));
    let (a, b) = tokio::time::timeout(EXCHANGE_TIMEOUT, async { (a.await, b.await) })
        .await
        .expect("the exchange finished in time");
    let (a, b) = (a.expect("alice's task"), b.expect("bob's task"));
    eprintln!(
        "exchanged {} messages in {:.2?} ({} + {} pushes)",
        a.received + b.received,
        started.elapsed(),
        a.pushes,
        b.pushes
    );
    assert_eq!((a.received, b.received), (EACH, EACH));
    assert_eq!((a.deleted, b.deleted), (EACH as u64, EACH as u64));

    // Everything was acknowledged: a fresh session finds both mailboxes empty.
    let check = relay.connect().await;
    for mbx in [&alice_box, &bob_box] {
        assert_eq!(
            check.subscribe(&mbx.key, &mbx.id).await.expect("subscribe"),
            0,
            "messages left after acknowledging everything"
        );
    }
    drop(check);
    relay.stop();
    relay.assert_no_panic();
}
