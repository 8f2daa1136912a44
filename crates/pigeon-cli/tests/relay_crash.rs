//! `kill -9` of a real relay process in the middle of a 5,000-message burst, then a restart on
//! the same data directory, at ten seeded random points.
//!
//! Per round: a sender pipelines up to 5,000 sends while a receiver, subscribed on its own
//! connection, takes and acknowledges what arrives. The relay is killed once `point` sends
//! were acknowledged. After the restart the sender retries every send it has no answer for
//! (same ids), and the receiver subscribes again and drains. What must hold:
//!
//! * every send the relay acknowledged before the kill is delivered;
//! * retries of stored messages are recognised as duplicates, with their original seq, so
//!   each message id lives under exactly one seq;
//! * nothing the receiver's acknowledgement deleted is delivered again, and no id arrives
//!   twice within one subscription;
//! * every id arrives, and after acknowledging everything the mailbox is empty.
//!
//! The seed is printed; repeat a run with `PIGEON_CRASH_SEED=<seed>`.

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_wire::msg::{self, MailboxId, request, response};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts, Rng};
use tokio::sync::oneshot;

const ROUNDS: usize = 10;
const BURST: usize = 5_000;
/// Sends in flight per sender: small enough that acknowledgements trickle in over the burst.
const WINDOW: usize = 256;
/// Acknowledged sends the sender re-sends after the restart, to check they are duplicates.
const RESEND_ACKED: usize = 20;
/// Bound on any single wait.
const STEP: Duration = Duration::from_secs(30);

/// One round's messages: index → (id, ciphertext), and id → index.
struct Messages {
    list: Vec<([u8; 16], Vec<u8>)>,
    index: HashMap<[u8; 16], usize>,
}

impl Messages {
    fn new(round: usize, rng: &mut Rng) -> Arc<Self> {
        let mut list = Vec::with_capacity(BURST);
        let mut index = HashMap::with_capacity(BURST);
        for i in 0..BURST {
            let id: [u8; 16] = rng.bytes();
            let mut body = format!("round {round} message {i} ").into_bytes();
            body.extend_from_slice(&rng.bytes::<24>());
            assert!(index.insert(id, i).is_none(), "repeated message id");
            list.push((id, body));
        }
        Arc::new(Self { list, index })
    }
}

fn send_body(mailbox: &MailboxId, cap: &[u8; 32], m: &([u8; 16], Vec<u8>)) -> request::Body {
    request::Body::Send(msg::Send {
        mailbox_id: mailbox.0.to_vec(),
        sender_cap: cap.to_vec(),
        message_id: m.0.to_vec(),
        ciphertext: m.1.clone(),
        first_attempt: false,
    })
}

/// Pipelines the burst with a bounded window until done or the connection dies. Fires `kill`
/// once `point` sends are acknowledged. Returns index → seq of every acknowledged send.
async fn burst(
    conn: RelayConnection,
    mailbox: MailboxId,
    cap: [u8; 32],
    msgs: Arc<Messages>,
    point: usize,
    kill: oneshot::Sender<()>,
) -> BTreeMap<usize, u64> {
    let mut kill = Some(kill);
    let mut fire = |acked: usize| {
        if acked >= point
            && let Some(k) = kill.take()
        {
            let _ = k.send(());
        }
    };
    fire(0);
    let mut acked = BTreeMap::new();
    let mut in_flight: VecDeque<(usize, oneshot::Receiver<response::Result>)> = VecDeque::new();
    let mut next = 0;
    let mut alive = true;
    loop {
        while alive && in_flight.len() < WINDOW && next < BURST {
            match conn
                .submit(send_body(&mailbox, &cap, &msgs.list[next]))
                .await
            {
                Ok(rx) => in_flight.push_back((next, rx)),
                Err(_) => alive = false,
            }
            next += 1;
        }
        let Some((i, rx)) = in_flight.pop_front() else {
            break;
        };
        match tokio::time::timeout(STEP, rx).await {
            Ok(Ok(response::Result::Sent(s))) => {
                assert!(!s.duplicate, "fresh message {i} reported as duplicate");
                acked.insert(i, s.seq);
                fire(acked.len());
            }
            Ok(Ok(other)) => panic!("send {i} answered with {other:?}"),
            // The relay died: the rest of the window is unanswered.
            Ok(Err(_)) => alive = false,
            Err(_) => panic!("send {i} unanswered for {STEP:?} with the relay alive"),
        }
    }
    // The whole burst was acknowledged before the point was reached (only if point == BURST).
    fire(usize::MAX);
    acked
}

/// What a receiver saw on one subscription.
#[derive(Default)]
struct Seen {
    /// Indexes in delivery order, with their seqs.
    delivered: Vec<(usize, u64)>,
    /// Indexes whose acknowledgement the relay confirmed (durably deleted).
    confirmed: BTreeSet<usize>,
}

/// Checks one push against the round's messages and the subscription so far.
fn take_push(
    push: msg::Push,
    mailbox: &MailboxId,
    msgs: &Messages,
    seen: &mut Seen,
    forbidden: &BTreeSet<usize>,
) -> Vec<u64> {
    assert_eq!(
        push.mailbox_id,
        mailbox.0.to_vec(),
        "push for another mailbox"
    );
    let mut seqs = Vec::with_capacity(push.deliveries.len());
    for d in push.deliveries {
        let id: [u8; 16] = d.message_id.as_slice().try_into().expect("16-byte id");
        let &i = msgs
            .index
            .get(&id)
            .expect("a message id that was never sent");
        assert!(
            d.ciphertext == msgs.list[i].1,
            "message {i} delivered altered"
        );
        if let Some(&(_, last)) = seen.delivered.last() {
            assert!(d.seq > last, "seq {} after {last}: not ascending", d.seq);
        }
        assert!(
            !seen.delivered.iter().any(|&(j, _)| j == i),
            "message {i} delivered twice in one subscription"
        );
        assert!(
            !forbidden.contains(&i),
            "message {i} delivered again after its acknowledgement was confirmed"
        );
        seen.delivered.push((i, d.seq));
        seqs.push(d.seq);
    }
    seqs
}

/// Receives and acknowledges until the session ends (the relay is killed).
async fn receive_until_killed(
    mut conn: RelayConnection,
    mailbox: MailboxId,
    msgs: Arc<Messages>,
) -> Seen {
    let mut seen = Seen::default();
    let none = BTreeSet::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), conn.next_event())
            .await
            .expect("the session ends once the relay is killed");
        let push = match event {
            Some(Event::Push(p)) => p,
            _ => return seen,
        };
        let start = seen.delivered.len();
        let seqs = take_push(push, &mailbox, &msgs, &mut seen, &none);
        match conn.ack(&mailbox, seqs).await {
            Ok(_) => {
                let acked: Vec<usize> = seen.delivered[start..].iter().map(|&(i, _)| i).collect();
                seen.confirmed.extend(acked);
            }
            Err(_) => return seen,
        }
    }
}

/// Records `seq` as the one seq of message `i`, failing if it already had another.
fn one_seq(seqs: &mut BTreeMap<usize, u64>, i: usize, seq: u64, what: &str) {
    if let Some(&old) = seqs.get(&i) {
        assert_eq!(
            old, seq,
            "message {i} seen under seq {old} and, {what}, under seq {seq}: stored twice"
        );
    }
    seqs.insert(i, seq);
}

async fn round(relay: &mut Relay, round: usize, point: usize, rng: &mut Rng) {
    let started = Instant::now();
    let msgs = Messages::new(round, rng);
    let mbx = OwnedMailbox::generate().expect("random");
    let setup = relay.connect().await;
    setup
        .create_mailbox(&mbx.key, &mbx.id, mbx.cap_hash())
        .await
        .expect("create mailbox");
    drop(setup);

    let receiver = relay.connect().await;
    assert_eq!(
        receiver
            .subscribe(&mbx.key, &mbx.id)
            .await
            .expect("subscribe"),
        0
    );
    let receiving = tokio::spawn(receive_until_killed(receiver, mbx.id, Arc::clone(&msgs)));
    let (kill_tx, kill_rx) = oneshot::channel();
    let sending = tokio::spawn(burst(
        relay.connect().await,
        mbx.id,
        mbx.sender_cap,
        Arc::clone(&msgs),
        point,
        kill_tx,
    ));
    tokio::time::timeout(STEP, kill_rx)
        .await
        .expect("the kill point is reached in time")
        .expect("the sender fires the kill point");
    relay.kill9();
    let acked = tokio::time::timeout(STEP, sending)
        .await
        .expect("the sender stops once the relay is dead")
        .expect("sender task");
    let before = tokio::time::timeout(STEP, receiving)
        .await
        .expect("the receiver stops once the relay is dead")
        .expect("receiver task");
    assert!(acked.len() >= point, "killed before the point");

    // One seq per message id, across everything anyone was told.
    let mut seqs = BTreeMap::new();
    for (&i, &seq) in &acked {
        one_seq(&mut seqs, i, seq, "acknowledged to the sender");
    }
    for &(i, seq) in &before.delivered {
        one_seq(&mut seqs, i, seq, "delivered before the kill");
    }

    relay.restart();

    // The sender retries every send it has no acknowledgement for, plus a few it has.
    let sender = relay.connect().await;
    let retry: Vec<usize> = (0..BURST).filter(|i| !acked.contains_key(i)).collect();
    let resend: Vec<usize> = acked.keys().rev().take(RESEND_ACKED).copied().collect();
    let mut answers = Vec::with_capacity(retry.len() + resend.len());
    for &i in retry.iter().chain(&resend) {
        let rx = sender
            .submit(send_body(&mbx.id, &mbx.sender_cap, &msgs.list[i]))
            .await
            .expect("submit a retry");
        answers.push((i, rx));
    }
    let mut duplicates = 0;
    for (i, rx) in answers {
        match tokio::time::timeout(STEP, rx).await {
            Ok(Ok(response::Result::Sent(s))) => {
                if acked.contains_key(&i) {
                    assert!(s.duplicate, "re-sent acknowledged message {i} stored again");
                }
                if s.duplicate {
                    duplicates += 1;
                }
                one_seq(&mut seqs, i, s.seq, "answered to a retry");
            }
            other => panic!("retry of message {i} answered with {other:?}"),
        }
    }
    drop(sender);

    // The receiver drains what is left.
    let mut conn = relay.connect().await;
    let pending = conn.subscribe(&mbx.key, &mbx.id).await.expect("subscribe");
    let mut after = Seen::default();
    let mut acks = Vec::new();
    while (after.delivered.len() as u64) < pending {
        let event = tokio::time::timeout(STEP, conn.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {pending} pending messages arrived after the restart",
                    after.delivered.len()
                )
            });
        let Some(Event::Push(push)) = event else {
            panic!("the session ended while draining: {event:?}");
        };
        let seqs = take_push(push, &mbx.id, &msgs, &mut after, &before.confirmed);
        acks.push(
            conn.submit(request::Body::Ack(msg::Ack {
                mailbox_id: mbx.id.0.to_vec(),
                seqs,
            }))
            .await
            .expect("submit an ack"),
        );
    }
    assert_eq!(
        after.delivered.len() as u64,
        pending,
        "more delivered than pending"
    );
    for rx in acks {
        match tokio::time::timeout(STEP, rx).await {
            Ok(Ok(response::Result::Acked(_))) => {}
            other => panic!("ack answered with {other:?}"),
        }
    }
    for &(i, seq) in &after.delivered {
        one_seq(&mut seqs, i, seq, "delivered after the restart");
    }

    // Every acknowledged send was delivered, and every id arrived: none lost.
    let delivered: BTreeSet<usize> = before
        .delivered
        .iter()
        .chain(&after.delivered)
        .map(|&(i, _)| i)
        .collect();
    for i in acked.keys() {
        assert!(delivered.contains(i), "acknowledged message {i} was lost");
    }
    assert_eq!(delivered.len(), BURST, "messages lost after retries");
    // Each id under one seq, and no two ids under the same seq.
    let distinct_seqs: BTreeSet<u64> = seqs.values().copied().collect();
    assert_eq!(distinct_seqs.len(), BURST, "two messages share a seq");

    assert_eq!(
        conn.subscribe(&mbx.key, &mbx.id).await.expect("subscribe"),
        0,
        "messages left after acknowledging everything"
    );
    println!(
        "round {round}: kill after {point} (acked {}), receiver had {} ({} confirmed), \
         retried {} ({duplicates} duplicates), {pending} pending after restart, {:.2?}",
        acked.len(),
        before.delivered.len(),
        before.confirmed.len(),
        retry.len() + resend.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_or_doubled_across_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    crash_rounds(Relay::start(RelayOpts::in_dir(dir.path())), ROUNDS).await;
}

/// The same with the relay's mailboxes on a three-server NATS JetStream cluster (Debian's
/// `nats-server`, three replicas), in fewer rounds: the relay is killed, the cluster is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_or_doubled_across_kill_9_on_nats_jetstream() {
    let cluster = pigeon_store_nats::NatsServer::cluster(3)
        .await
        .expect("a nats-server cluster runs (apt-get install nats-server)");
    let urls: Vec<String> = cluster.iter().map(|s| s.url.clone()).collect();
    let urls = urls.join(",");
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = RelayOpts::in_dir(dir.path())
        .arg("--store")
        .arg(&urls)
        .arg("--store-replicas")
        .arg("3");
    crash_rounds(Relay::start(opts), 3).await;
}

/// `rounds` rounds of a burst, a `kill -9` at a seeded point and a restart.
async fn crash_rounds(mut relay: Relay, rounds: usize) {
    let seed = support::seed_from_env("PIGEON_CRASH_SEED");
    let mut rng = Rng::new(seed);
    let points: Vec<usize> = (0..rounds)
        .map(|_| usize::try_from(rng.below(BURST as u64)).expect("small"))
        .collect();
    println!("kill points: {points:?}");
    for (r, &point) in points.iter().enumerate() {
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            round(&mut relay, r, point, &mut rng),
        )
        .await;
        assert!(result.is_ok(), "round {r} (seed {seed}) timed out");
    }
    relay.stop();
    relay.assert_no_panic();
}

/// Regression: a request made after the relay died (once the client had seen the session
/// close) used to wait forever, because the reader had already failed every waiting caller and
/// nothing failed the new one. The crash rounds above hit it at random as a 30 s hang of the
/// receiver's acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_relay_died_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let mut conn = relay.connect().await;
    conn.ping().await.expect("ping while the relay lives");
    relay.kill9();
    let event = tokio::time::timeout(Duration::from_secs(10), conn.next_event())
        .await
        .expect("the client notices the relay died");
    assert!(matches!(event, Some(Event::Closed(_))), "{event:?}");
    for attempt in 0..3 {
        let result = tokio::time::timeout(Duration::from_secs(5), conn.ping())
            .await
            .unwrap_or_else(|_| panic!("request {attempt} after the close hangs"));
        assert!(result.is_err(), "a ping to a dead relay succeeded");
    }
}
