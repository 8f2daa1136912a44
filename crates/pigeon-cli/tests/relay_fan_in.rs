//! Four senders on four connections post into one mailbox at once. Their batches become
//! durable in whatever order the store finishes them, so live delivery sees sequence numbers out
//! of order and must fall back to the store; the window fills and refills. The recipient still
//! gets every message exactly once, in sequence order, with no gaps.

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox};
use pigeon_wire::msg::{self, request};
use std::collections::BTreeSet;
use std::time::Duration;
use support::{Relay, RelayOpts, Rng};

const SENDERS: usize = 4;
const EACH: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_into_one_mailbox_arrive_once_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The helper's defaults lift the per-capability rate limit for tests.
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let mut rng = Rng::new(support::seed_from_env("PIGEON_FAN_IN_SEED"));
    let mut receiver = relay.connect().await;
    let inbox = OwnedMailbox::generate().expect("random");
    receiver
        .create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
        .await
        .expect("create");
    receiver
        .subscribe(&inbox.key, &inbox.id)
        .await
        .expect("subscribe");

    let mut sent = BTreeSet::new();
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let conn = relay.connect().await;
        let ids: Vec<[u8; 16]> = (0..EACH).map(|_| rng.bytes()).collect();
        sent.extend(ids.iter().copied());
        let (mailbox, cap) = (inbox.id, inbox.sender_cap);
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(EACH);
            for id in ids {
                let body = request::Body::Send(msg::Send {
                    mailbox_id: mailbox.0.to_vec(),
                    sender_cap: cap.to_vec(),
                    message_id: id.to_vec(),
                    ciphertext: vec![0x42; 200],
                    first_attempt: false,
                });
                answers.push(conn.submit(body).await.expect("queue send"));
            }
            for answer in answers {
                let result = answer.await.expect("answered");
                assert!(
                    matches!(result, msg::response::Result::Sent(_)),
                    "send refused: {result:?}"
                );
            }
            conn
        }));
    }

    let mut got = BTreeSet::new();
    let mut last_seq = 0;
    while got.len() < SENDERS * EACH {
        let event = tokio::time::timeout(Duration::from_secs(30), receiver.next_event())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} messages", got.len()));
        let Some(Event::Push(push)) = event else {
            panic!("session ended: {event:?}");
        };
        let mut seqs = Vec::new();
        for d in push.deliveries {
            assert_eq!(
                d.seq,
                last_seq + 1,
                "sequence numbers must arrive in order, no gaps"
            );
            last_seq = d.seq;
            let id: [u8; 16] = d.message_id.as_slice().try_into().expect("16-byte id");
            assert!(got.insert(id), "a message arrived twice");
            seqs.push(d.seq);
        }
        receiver.ack(&inbox.id, seqs).await.expect("ack");
    }
    for t in tasks {
        drop(t.await.expect("sender finished"));
    }
    assert_eq!(got, sent, "exactly the messages sent arrived");
    relay.assert_no_panic();
}

/// Deleting a mailbox ends every session's subscription to it, not only the deleting one's:
/// a second device cannot ack (and so delete) messages of a mailbox re-created later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_mailbox_revokes_every_sessions_subscription() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let phone = relay.connect().await;
    let laptop = relay.connect().await;
    let inbox = OwnedMailbox::generate().expect("random");
    phone
        .create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
        .await
        .expect("create");
    laptop
        .subscribe(&inbox.key, &inbox.id)
        .await
        .expect("subscribe");
    phone
        .delete_mailbox(&inbox.key, &inbox.id)
        .await
        .expect("delete");
    phone
        .create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
        .await
        .expect("re-create");
    let sent = phone
        .send(&inbox.id, &inbox.sender_cap, [7; 16], vec![1; 32])
        .await
        .expect("send");
    let refused = laptop.ack(&inbox.id, vec![sent.seq]).await;
    assert!(
        matches!(
            refused,
            Err(pigeon_client::ClientError::Refused {
                code: pigeon_wire::ErrorCode::NotSubscribed,
                ..
            })
        ),
        "a revoked subscription must not ack: {refused:?}"
    );
    assert_eq!(
        laptop
            .subscribe(&inbox.key, &inbox.id)
            .await
            .expect("again"),
        1
    );
    relay.assert_no_panic();
}

/// A client that takes one push at a time and awaits each ack keeps going even when several
/// subscriptions have full windows of backlog: responses never wait behind unread pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_with_many_backlogged_subscriptions_does_not_stall() {
    // Large messages travel one per push, so three full windows are ~1,500 pushes in flight:
    // more than any fixed event queue the client might use.
    const BOXES: usize = 3;
    const BACKLOG: usize = 600;
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let sender = relay.connect().await;
    let mut reader = relay.connect().await;
    let mut boxes = Vec::new();
    for _ in 0..BOXES {
        let b = OwnedMailbox::generate().expect("random");
        reader
            .create_mailbox(&b.key, &b.id, b.cap_hash())
            .await
            .expect("create");
        let mut answers = Vec::new();
        for i in 0..BACKLOG {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let body = request::Body::Send(msg::Send {
                mailbox_id: b.id.0.to_vec(),
                sender_cap: b.sender_cap.to_vec(),
                message_id: id.to_vec(),
                ciphertext: vec![3; 40_000],
                first_attempt: false,
            });
            answers.push(sender.submit(body).await.expect("queue"));
        }
        for a in answers {
            a.await.expect("answered");
        }
        boxes.push(b);
    }
    for b in &boxes {
        reader.subscribe(&b.key, &b.id).await.expect("subscribe");
    }
    let mut received = 0;
    while received < BOXES * BACKLOG {
        let event = tokio::time::timeout(Duration::from_secs(20), reader.next_event())
            .await
            .unwrap_or_else(|_| panic!("stalled after {received} messages"));
        let Some(Event::Push(push)) = event else {
            panic!("session ended: {event:?}");
        };
        let mailbox = pigeon_wire::msg::MailboxId::parse("push", &push.mailbox_id).expect("id");
        for d in push.deliveries {
            received += 1;
            tokio::time::timeout(Duration::from_secs(20), reader.ack(&mailbox, vec![d.seq]))
                .await
                .unwrap_or_else(|_| panic!("an ack went unanswered after {received} messages"))
                .expect("ack");
        }
    }
    relay.assert_no_panic();
}
