//! Two relay nodes' stores on one three-node JetStream cluster (Debian's `nats-server`,
//! replicas 3): they share nothing but the cluster, and the store's promises hold across them.
//!
//! Both nodes write to the same mailboxes at once. That relies on the store's compare-and-set
//! holding in a clustered stream on Debian's nats-server 2.9.10, where
//! `Nats-Expected-Last-Subject-Sequence` alone is checked too early to serialize writers
//! (nats-io/nats-server#4320, fixed in 2.9.21): the store adds a `Nats-Msg-Id` per expected
//! entry, which is checked when the write is applied (`publish` in the crate).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use pigeon_store::conformance::{cap, log, mbx, msg, posted_with, record};
use pigeon_store::{Appended, Limits, MailboxStore, StoreError};
use pigeon_store_nats::{NatsOptions, NatsServer, NatsStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store on one server of the cluster, with three replicas.
async fn store_on(server: &NatsServer) -> NatsStore {
    let options = NatsOptions {
        replicas: 3,
        ..NatsOptions::default()
    };
    NatsStore::connect(&server.url, Limits::default(), options)
        .await
        .unwrap_or_else(|e| panic!("the store opens on the cluster: {e}\n{}", server.log_tail()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_mailboxes_without_forks_losses_or_second_copies() {
    let cluster = NatsServer::cluster(3).await.unwrap();
    let a = Arc::new(store_on(&cluster[0]).await);
    let b = Arc::new(store_on(&cluster[1]).await);
    for k in 0..4 {
        a.create_mailbox(mbx(k), record(k)).await.unwrap();
    }
    assert_eq!(b.mailbox(mbx(3)).await.unwrap(), Some(record(3)));

    // Both nodes append at once, four writers each, every writer to all four mailboxes in
    // turn: writers on different nodes race for the same mailbox all the time (within a node
    // they take turns under its lock).
    let mut tasks = Vec::new();
    for (node, store) in [(1u64, Arc::clone(&a)), (2, Arc::clone(&b))] {
        for writer in 0..4u64 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in 0..40u64 {
                    let n = node * 1_000_000 + writer * 1_000 + i;
                    let k = u8::try_from(i % 4).unwrap();
                    let r = store
                        .append(vec![msg(mbx(k), n, 10)])
                        .await
                        .pop()
                        .unwrap()
                        .unwrap();
                    assert!(!r.duplicate);
                    sent.push((k, n, r.seq));
                }
                sent
            }));
        }
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    assert_eq!(sent.len(), 320);

    // Every mailbox reads the same from either node: dense numbers, every message once, each
    // under the number its writer was given.
    for k in 0..4u8 {
        let want: BTreeMap<u64, u64> = sent
            .iter()
            .filter(|(m, _, _)| *m == k)
            .map(|&(_, n, seq)| (seq, n))
            .collect();
        assert_eq!(want.len(), 80, "no number given twice in mailbox {k}");
        for store in [&a, &b] {
            let read = store.read(mbx(k), 0, usize::MAX, usize::MAX).await.unwrap();
            let got: BTreeMap<u64, u64> = read
                .iter()
                .map(|m| {
                    (
                        m.seq,
                        u64::from_be_bytes(m.message_id.0[8..].try_into().unwrap()),
                    )
                })
                .collect();
            assert_eq!(got, want);
            assert_eq!(
                got.keys().copied().collect::<Vec<_>>(),
                (1..=80).collect::<Vec<_>>()
            );
            assert_eq!(store.pending(mbx(k)).await.unwrap(), 80);
        }
    }

    // A retry on the other node is answered as a duplicate with the first number.
    let &(k, n, seq) = sent.first().unwrap();
    let again = b.append(vec![msg(mbx(k), n, 11)]).await.pop().unwrap();
    assert_eq!(
        again.unwrap(),
        Appended {
            seq,
            duplicate: true
        }
    );

    // The nodes take turns on one mailbox: each continues from the other's number.
    for i in 0..10u64 {
        let store = if i % 2 == 0 { &a } else { &b };
        let r = store
            .append(vec![msg(mbx(1), 5_000 + i, 11)])
            .await
            .pop()
            .unwrap();
        assert_eq!(r.unwrap().seq, 81 + i);
    }

    // Both nodes acknowledge the same messages at once (a recipient's ack repeated on another
    // node): each is taken once and counted once.
    let (x, y) = tokio::join!(
        a.ack(mbx(2), (1..=10).collect()),
        b.ack(mbx(2), (1..=10).collect())
    );
    assert_eq!(x.unwrap() + y.unwrap(), 10);
    for store in [&a, &b] {
        assert_eq!(store.pending(mbx(2)).await.unwrap(), 70);
        assert_eq!(
            store.read(mbx(2), 0, 1, usize::MAX).await.unwrap()[0].seq,
            11
        );
    }
    assert_eq!(b.ack(mbx(2), (1..=12).collect()).await.unwrap(), 2);
    assert_eq!(a.pending(mbx(2)).await.unwrap(), 68);

    // Acks on one node are seen on the other, and numbers go on from where they were.
    assert_eq!(b.ack(mbx(0), vec![1, 2, 3]).await.unwrap(), 3);
    assert_eq!(a.pending(mbx(0)).await.unwrap(), 77);
    assert_eq!(a.read(mbx(0), 0, 1, usize::MAX).await.unwrap()[0].seq, 4);
    let next = a.append(vec![msg(mbx(0), 9, 12)]).await.pop().unwrap();
    assert_eq!(next.unwrap().seq, 81);

    // A log's capability replaced on one node is refused on the other from then on, and the
    // other node's lookups (which it caches for the relay's hot path) follow.
    a.create_mailbox(mbx(9), log(9)).await.unwrap();
    assert_eq!(a.mailbox(mbx(9)).await.unwrap(), Some(log(9)));
    let first = a
        .append(vec![posted_with(msg(mbx(9), 1, 10), cap(9))])
        .await;
    assert_eq!(first[0].as_ref().unwrap().seq, 1);
    assert_eq!(b.update_mailbox(mbx(9), None, cap(10)).await.unwrap(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = a.mailbox(mbx(9)).await.unwrap().unwrap();
        if seen.sender_cap_hash == cap(10) {
            assert_eq!(seen.retired_caps.len(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 still looks up the old record"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = a
        .append(vec![posted_with(msg(mbx(9), 2, 10), cap(9))])
        .await;
    assert!(matches!(old[0], Err(StoreError::CapabilityRetired)));
    let new = a
        .append(vec![posted_with(msg(mbx(9), 3, 10), cap(10))])
        .await;
    assert_eq!(new[0].as_ref().unwrap().seq, 2);

    // A key package is handed out once, whichever node is asked.
    let (slot, owner) = ([5u8; 32], [6u8; 32]);
    let packages: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 8]).collect();
    let limits = Limits::default();
    assert!(limits.max_key_packages >= 20);
    a.publish_key_packages(slot, owner, packages.clone(), None, 1_000)
        .await
        .unwrap();
    let takers: Vec<_> = (0..24)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { store.take_key_package(slot).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for t in takers {
        if let Some(p) = t.await.unwrap() {
            taken.push(p.data);
        }
    }
    taken.sort();
    assert_eq!(
        taken, packages,
        "each package once, four takers went without"
    );
}
