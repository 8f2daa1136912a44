//! Two relay processes on one NATS JetStream store (Debian's `nats-server`): the same relay
//! (one key) on two nodes, sharing nothing but the store. A message sent through one node is
//! pushed live to a subscriber on the other, acknowledged there, and gone for both; a log's
//! capability replaced or an inbox deleted through one node reaches subscriptions on the other
//! (issue #18).

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox};
use pigeon_proto::auth;
use pigeon_wire::ErrorCode;
use pigeon_wire::msg::{self, MailboxId, request, response};
use std::time::Duration;
use support::{Relay, RelayOpts};

const MESSAGES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_through_one_relay_node_is_pushed_by_the_other() {
    let nats = pigeon_store_nats::NatsServer::start()
        .await
        .expect("nats-server runs (apt-get install nats-server)");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = two_nodes(&nats, dir.path());

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
                first_attempt: false,
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

/// Two relay nodes on one nats-server: the same relay (one key), two processes and ports.
fn two_nodes(nats: &pigeon_store_nats::NatsServer, dir: &std::path::Path) -> (Relay, Relay) {
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a_dir).expect("mkdir");
    let a = Relay::start(RelayOpts::in_dir(&a_dir).arg("--store").arg(&nats.url));
    std::fs::create_dir_all(b_dir.join("data")).expect("mkdir");
    std::fs::copy(a_dir.join("data/relay.key"), b_dir.join("data/relay.key")).expect("copy key");
    let b = Relay::start(RelayOpts::in_dir(&b_dir).arg("--store").arg(&nats.url));
    (a, b)
}

/// Sends `text` to a log through `conn` with the member capability `cap`; its seq.
async fn post(
    conn: &pigeon_client::RelayConnection,
    log: &MailboxId,
    cap: &[u8; 32],
    text: &str,
) -> u64 {
    let answer = conn
        .request(request::Body::Send(msg::Send {
            mailbox_id: log.0.to_vec(),
            sender_cap: cap.to_vec(),
            message_id: auth::random_bytes::<16>().expect("random").to_vec(),
            ciphertext: text.as_bytes().to_vec(),
            first_attempt: false,
        }))
        .await
        .expect("a post");
    match answer {
        response::Result::Sent(s) => s.seq,
        other => panic!("a post answered with {other:?}"),
    }
}

/// The seqs pushed to `conn` within `wait` (after the first push, a short quiet ends it).
async fn pushed(conn: &mut pigeon_client::RelayConnection, wait: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(event) = tokio::time::timeout_at(deadline, conn.next_event()).await {
        match event {
            Some(Event::Push(p)) => seqs.extend(p.deliveries.iter().map(|d| d.seq)),
            Some(_) => {}
            None => panic!("the session ended"),
        }
    }
    seqs
}

/// A log's member capability replaced through node a limits a member's subscription on node b
/// to what the old capability reaches, and an inbox deleted through node a ends its
/// subscription on node b: the nodes tell each other of record changes, and a subscription on
/// another node follows them (before, it went on until the member subscribed again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_through_one_relay_node_reaches_subscriptions_on_the_other() {
    let nats = pigeon_store_nats::NatsServer::start()
        .await
        .expect("nats-server runs (apt-get install nats-server)");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = two_nodes(&nats, dir.path());

    // A log made through node a, a member reading it through node b.
    let log = MailboxId(auth::random_bytes().expect("random"));
    let owner = auth::generate_signing_key().expect("key");
    let old_cap: [u8; 32] = auth::random_bytes().expect("random");
    let new_cap: [u8; 32] = auth::random_bytes().expect("random");
    let on_a = a.connect().await;
    on_a.create_log(&owner, &log, auth::cap_hash(&old_cap))
        .await
        .expect("create the log through node a");
    let mut member = b.connect().await;
    assert_eq!(
        member
            .subscribe_log(&log, &old_cap, 0)
            .await
            .expect("subscribe on b"),
        0
    );
    for i in 1..=3 {
        assert_eq!(post(&on_a, &log, &old_cap, &format!("before {i}")).await, i);
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let got = pushed(&mut member, Duration::from_secs(5)).await;
        assert!(!got.is_empty(), "no push on node b after {seen:?}");
        seen.extend(got);
    }
    assert_eq!(seen, vec![1, 2, 3]);

    // The owner replaces the capability through node a, and members post on with the new one.
    on_a.update_log(&owner, &log, None, auth::cap_hash(&new_cap))
        .await
        .expect("replace the capability through node a");
    for i in 4..=5 {
        assert_eq!(post(&on_a, &log, &new_cap, &format!("after {i}")).await, i);
    }
    // The old capability's subscription on node b gets nothing past 3 ...
    let late = pushed(&mut member, Duration::from_secs(3)).await;
    assert!(
        late.is_empty(),
        "node b pushed {late:?} past the retired capability's reach"
    );
    // ... while the new capability reads on through node b.
    let mut reader = b.connect().await;
    assert_eq!(
        reader
            .subscribe_log(&log, &new_cap, 3)
            .await
            .expect("subscribe"),
        2
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = pushed(&mut reader, Duration::from_secs(5)).await;
        assert!(
            !more.is_empty(),
            "no push for the new capability after {got:?}"
        );
        got.extend(more);
    }
    assert_eq!(got, vec![4, 5]);

    // An inbox deleted through node a is no longer served to its subscriber on node b.
    let inbox = OwnedMailbox::generate().expect("random");
    on_a.create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
        .await
        .expect("create an inbox through node a");
    let watcher = b.connect().await;
    watcher
        .subscribe(&inbox.key, &inbox.id)
        .await
        .expect("subscribe on b");
    on_a.delete_mailbox(&inbox.key, &inbox.id)
        .await
        .expect("delete it through node a");
    // An empty ack asks without changing anything: "not subscribed" once node b followed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = watcher
            .request(request::Body::Ack(msg::Ack {
                mailbox_id: inbox.id.0.to_vec(),
                seqs: Vec::new(),
            }))
            .await;
        match answer {
            Err(pigeon_client::ClientError::Refused {
                code: ErrorCode::NotSubscribed,
                ..
            }) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "node b still serves the inbox node a deleted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((on_a, member, reader, watcher));
    a.stop();
    b.stop();
    a.assert_no_panic();
    b.assert_no_panic();
}
