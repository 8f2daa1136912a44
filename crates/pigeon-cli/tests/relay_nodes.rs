//! Two relay processes on one NATS JetStream store (Debian's `nats-server`): the same relay
//! (one key) on two nodes, sharing nothing but the store. A message sent through one node is
//! pushed live to a subscriber on the other, acknowledged there, and gone for both (issue #18).

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox};
use pigeon_wire::msg::{self, request, response};
use std::time::Duration;
use support::{Relay, RelayOpts};

const MESSAGES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_through_one_relay_node_is_pushed_by_the_other() {
    let nats = pigeon_store_nats::NatsServer::start()
        .await
        .expect("nats-server runs (apt-get install nats-server)");
    let dir = tempfile::tempdir().expect("temp dir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).expect("mkdir");
    let mut a = Relay::start(RelayOpts::in_dir(&a_dir).arg("--store").arg(&nats.url));
    // The second node is the same relay: its key, another process and port.
    std::fs::create_dir_all(b_dir.join("data")).expect("mkdir");
    std::fs::copy(a_dir.join("data/relay.key"), b_dir.join("data/relay.key")).expect("copy key");
    let mut b = Relay::start(RelayOpts::in_dir(&b_dir).arg("--store").arg(&nats.url));

    let inbox = OwnedMailbox::generate().expect("random");
    let setup = a.connect().await;
    setup
        .create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
        .await
        .expect("create the mailbox through node a");
    drop(setup);
    let mut bob = b.connect().await;
    assert_eq!(
        bob.subscribe(&inbox.key, &inbox.id)
            .await
            .expect("subscribe through node b"),
        0
    );

    let alice = a.connect().await;
    let mut answers = Vec::new();
    let ids: Vec<[u8; 16]> = (0..MESSAGES)
        .map(|i| {
            let mut id = [7u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            id
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let rx = alice
            .submit(request::Body::Send(msg::Send {
                mailbox_id: inbox.id.0.to_vec(),
                sender_cap: inbox.sender_cap.to_vec(),
                message_id: id.to_vec(),
                ciphertext: format!("message {i} through node a").into_bytes(),
            }))
            .await
            .expect("submit a send");
        answers.push(rx);
    }
    for (i, rx) in answers.into_iter().enumerate() {
        match rx.await {
            Ok(response::Result::Sent(s)) => assert_eq!(s.seq, i as u64 + 1),
            other => panic!("send {i} answered with {other:?}"),
        }
    }

    // Bob's node learns of them from node a's notice and pushes them, in order.
    let mut got = Vec::new();
    while got.len() < MESSAGES {
        let event = tokio::time::timeout(Duration::from_secs(10), bob.next_event())
            .await
            .unwrap_or_else(|_| panic!("no push from node b after {} messages", got.len()));
        let Some(Event::Push(push)) = event else {
            panic!("node b's session ended: {event:?}");
        };
        for d in push.deliveries {
            let i = got.len();
            assert_eq!(d.seq, i as u64 + 1, "pushed out of order");
            assert_eq!(d.message_id, ids[i].to_vec());
            assert_eq!(
                d.ciphertext,
                format!("message {i} through node a").into_bytes()
            );
            got.push(d.seq);
        }
    }
    let acked = bob
        .submit(request::Body::Ack(msg::Ack {
            mailbox_id: inbox.id.0.to_vec(),
            seqs: got,
        }))
        .await
        .expect("submit the ack")
        .await;
    match acked {
        Ok(response::Result::Acked(a)) => assert_eq!(a.deleted, MESSAGES as u64),
        other => panic!("ack answered with {other:?}"),
    }
    // Gone for both nodes.
    for relay in [&a, &b] {
        let check = relay.connect().await;
        assert_eq!(
            check
                .subscribe(&inbox.key, &inbox.id)
                .await
                .expect("subscribe"),
            0
        );
    }
    drop((alice, bob));
    a.stop();
    b.stop();
    a.assert_no_panic();
    b.assert_no_panic();
}
