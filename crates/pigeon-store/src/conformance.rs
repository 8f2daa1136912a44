//! The [`MailboxStore`] conformance suite: the promises in the crate's documentation, checked
//! the same way for every backend (issue #18: the embedded store and a NATS JetStream one pass
//! one suite). A backend instantiates it in its tests with
//! [`mailbox_store_conformance!`](crate::mailbox_store_conformance), naming an async function
//! that opens a fresh, empty store with the given [`Limits`] and returns it with whatever must
//! live as long (a temporary directory, a server):
//!
//! ```ignore
//! async fn open(limits: pigeon_store::Limits) -> (tempfile::TempDir, MyStore) { … }
//! pigeon_store::mailbox_store_conformance!(open);
//! ```
//!
//! Each check is a test of its own. Sequence numbers are checked to be dense (1, 2, 3, … per
//! mailbox): clients read a jump in a log as messages that expired before they read them.
//! What only one backend can check (reopening, crashes, bytes on disk) stays with its tests.

#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::cast_possible_truncation,
    reason = "a check fails by panicking, like the test it is"
)]

use crate::{
    Appended, CreateOutcome, Limits, MailboxId, MailboxKind, MailboxRecord, MailboxStore,
    MessageId, NewMessage, Renewal, StoreError,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The limits the checks are written for.
pub fn limits() -> Limits {
    Limits {
        max_ciphertext: 1024,
        max_depth: 50,
        max_log_depth: 60,
        expiry_secs: 100,
        idle_secs: IDLE,
        max_key_packages: 3,
        max_key_package_len: 64,
    }
}

/// The limits one check runs with (producers at full speed need deeper mailboxes).
pub fn limits_for(check: &str) -> Limits {
    match check {
        "concurrent_appends_keep_per_mailbox_order_and_lose_nothing" => Limits {
            max_depth: 100_000,
            ..limits()
        },
        _ => limits(),
    }
}

/// Ten days, the idle lifetime in these checks.
pub const IDLE: u64 = 10 * 86_400;

/// An inbox record for key `k`.
pub fn record(k: u8) -> MailboxRecord {
    MailboxRecord::new(MailboxKind::Inbox, [k; 32], [k.wrapping_add(1); 32], 1_000)
}

/// A log record for key `k`, with capability [`cap`]`(k)`.
pub fn log(k: u8) -> MailboxRecord {
    MailboxRecord::new(MailboxKind::Log, [k; 32], cap(k), 1_000)
}

/// A capability hash.
pub fn cap(k: u8) -> [u8; 32] {
    [k.wrapping_add(100); 32]
}

/// Mailbox id `k`.
pub fn mbx(k: u8) -> MailboxId {
    MailboxId([k; 32])
}

/// Message id `n`.
pub fn mid(n: u64) -> MessageId {
    let mut raw = [0u8; 16];
    raw[8..].copy_from_slice(&n.to_be_bytes());
    MessageId(raw)
}

/// Message `n` to `mailbox`, received at `now`.
pub fn msg(mailbox: MailboxId, n: u64, now: u64) -> NewMessage {
    NewMessage {
        mailbox,
        message_id: mid(n),
        ciphertext: format!("ciphertext {n}").into_bytes(),
        now,
        cap_hash: None,
        first_attempt: false,
    }
}

/// `m`, posted with a capability.
pub fn posted_with(mut m: NewMessage, cap_hash: [u8; 32]) -> NewMessage {
    m.cap_hash = Some(cap_hash);
    m
}

/// Appends one message.
///
/// # Errors
/// The store's answer for it.
pub async fn append_one<S: MailboxStore>(store: &S, m: NewMessage) -> Result<Appended, StoreError> {
    store.append(vec![m]).await.pop().unwrap()
}

/// Every sequence number a mailbox holds.
pub async fn seqs<S: MailboxStore>(store: &S, id: MailboxId) -> Vec<u64> {
    let msgs = store.read(id, 0, usize::MAX, usize::MAX).await.unwrap();
    msgs.iter().map(|m| m.seq).collect()
}

/// Creating a mailbox is idempotent for the same kind, key and capability, refused for another; lookups and counts answer for it.
pub async fn create_is_idempotent_and_lookup_is_cached<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    assert_eq!(store.mailbox(mbx(1)).await.unwrap(), None);
    assert_eq!(
        store.create_mailbox(mbx(1), record(1)).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        store.create_mailbox(mbx(1), record(1)).await.unwrap(),
        CreateOutcome::AlreadyExists
    );
    let mut other_cap = record(1);
    other_cap.sender_cap_hash = [9; 32];
    assert!(matches!(
        store.create_mailbox(mbx(1), other_cap).await,
        Err(StoreError::MailboxExists)
    ));
    assert!(matches!(
        store.create_mailbox(mbx(1), record(7)).await,
        Err(StoreError::MailboxExists)
    ));
    assert_eq!(store.mailbox(mbx(1)).await.unwrap(), Some(record(1)));
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 0);
    assert!(matches!(
        store.pending(mbx(2)).await,
        Err(StoreError::NoSuchMailbox)
    ));
}

/// Appends get dense, rising sequence numbers; reads page by position, count and bytes (at least one message).
pub async fn appends_keep_order_and_reads_page<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    for n in 1..=5 {
        let a = append_one(store, msg(mbx(1), n, 10)).await.unwrap();
        assert_eq!(
            a,
            Appended {
                seq: n,
                duplicate: false
            }
        );
    }
    let batch: Vec<_> = (6..=10).map(|n| msg(mbx(1), n, 11)).collect();
    let results = store.append(batch).await;
    let got: Vec<u64> = results.into_iter().map(|r| r.unwrap().seq).collect();
    assert_eq!(got, (6..=10).collect::<Vec<_>>());

    let all = store.read(mbx(1), 0, 100, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 10);
    for (i, m) in all.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(m.seq, n);
        assert_eq!(m.message_id, mid(n));
        assert_eq!(m.ciphertext, format!("ciphertext {n}").into_bytes());
        assert_eq!(m.received_at, if n <= 5 { 10 } else { 11 });
    }
    let page = store.read(mbx(1), 4, 3, usize::MAX).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
    // A byte budget smaller than one message still yields one.
    let tiny = store.read(mbx(1), 0, 100, 1).await.unwrap();
    assert_eq!(tiny.len(), 1);
    let two = store.read(mbx(1), 0, 100, 25).await.unwrap();
    assert_eq!(two.len(), 2, "12 + 12 bytes fit in 25, a third does not");
    assert!(store.read(mbx(1), 10, 100, 100).await.unwrap().is_empty());
    assert!(
        store
            .read(mbx(1), u64::MAX, 100, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read(mbx(1), 0, 0, 100).await.unwrap().is_empty());
    assert!(matches!(
        store.read(mbx(2), 0, 1, 1).await,
        Err(StoreError::NoSuchMailbox)
    ));
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 10);
}

/// A message sent as a first attempt is recorded like any other: its retries, soon after, much
/// later, and after its ack, are answered with its sequence number and store nothing.
pub async fn first_attempts_are_caught_when_retried<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    let first = |n: u64| NewMessage {
        first_attempt: true,
        ..msg(mbx(1), n, 10)
    };
    let duplicate = |seq: u64| Appended {
        seq,
        duplicate: true,
    };
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    store.create_mailbox(mbx(2), record(2)).await.unwrap();
    let results = store
        .append(vec![first(1), first(2), msg(mbx(1), 1, 10)])
        .await;
    let got: Vec<Appended> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        got[..2],
        [1, 2].map(|seq| Appended {
            seq,
            duplicate: false
        })
    );
    assert_eq!(got[2], duplicate(1), "a retry in the same batch");
    assert_eq!(
        append_one(store, msg(mbx(1), 2, 11)).await.unwrap(),
        duplicate(2)
    );
    // Enough commits in between that a store's memory of recent ids no longer answers.
    for n in 0..40 {
        let other = NewMessage {
            mailbox: mbx(2),
            ..first(1_000 + n)
        };
        append_one(store, other).await.unwrap();
    }
    assert_eq!(
        append_one(store, msg(mbx(1), 1, 12)).await.unwrap(),
        duplicate(1)
    );
    assert_eq!(store.ack(mbx(1), vec![1, 2]).await.unwrap(), 2);
    assert_eq!(
        append_one(store, msg(mbx(1), 2, 13)).await.unwrap(),
        duplicate(2)
    );
    assert!(
        store
            .read(mbx(1), 0, 10, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 0);
}

/// Message size and inbox depth are refused with their errors; a retry of a stored message is still answered when full.
pub async fn limits_are_enforced<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    let mut big = msg(mbx(1), 1, 10);
    big.ciphertext = vec![0; 1025];
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    assert!(matches!(
        append_one(store, big).await,
        Err(StoreError::MessageTooLarge {
            len: 1025,
            limit: 1024
        })
    ));
    let mut exact = msg(mbx(1), 2, 10);
    exact.ciphertext = vec![0; 1024];
    append_one(store, exact).await.unwrap();
    assert!(matches!(
        append_one(store, msg(mbx(9), 1, 10)).await,
        Err(StoreError::NoSuchMailbox)
    ));

    // Depth counts stored, unacknowledged messages; one batch fills it and overflows.
    let batch: Vec<_> = (100..160).map(|n| msg(mbx(1), n, 10)).collect();
    let results = store.append(batch).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 49);
    assert!(matches!(
        results.last().unwrap(),
        Err(StoreError::MailboxFull { limit: 50 })
    ));
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 50);
    // A retry of a stored message is still answered when full.
    let dup = append_one(store, msg(mbx(1), 100, 10)).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(store.ack(mbx(1), vec![1]).await.unwrap(), 1);
    let next = append_one(store, msg(mbx(1), 500, 10)).await.unwrap();
    assert_eq!(next.seq, 51);
    assert!(matches!(
        append_one(store, msg(mbx(1), 501, 10)).await,
        Err(StoreError::MailboxFull { .. })
    ));
}

/// An ack deletes from an inbox and counts what it deleted, also right behind the append of the same message.
pub async fn ack_counts_what_it_deleted<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    let batch: Vec<_> = (1..=6).map(|n| msg(mbx(1), n, 10)).collect();
    store.append(batch).await;
    assert_eq!(store.ack(mbx(1), vec![2, 4, 4, 0, 99]).await.unwrap(), 2);
    assert_eq!(store.ack(mbx(1), vec![2, 4]).await.unwrap(), 0);
    assert_eq!(store.ack(mbx(1), vec![]).await.unwrap(), 0);
    assert_eq!(seqs(store, mbx(1)).await, [1, 3, 5, 6]);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 4);
    assert!(matches!(
        store.ack(mbx(2), vec![1]).await,
        Err(StoreError::NoSuchMailbox)
    ));
    assert!(matches!(
        store.ack(mbx(2), vec![]).await,
        Err(StoreError::NoSuchMailbox)
    ));

    // An ack queued right behind the append of the same message (likely the same round).
    let (appended, acked) = tokio::join!(
        append_one(store, msg(mbx(1), 7, 10)),
        store.ack(mbx(1), vec![7, 7, 1])
    );
    assert_eq!(appended.unwrap().seq, 7);
    assert_eq!(acked.unwrap(), 2);
    assert_eq!(seqs(store, mbx(1)).await, [3, 5, 6]);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 3);
}

/// Deleting a mailbox takes its messages and de-duplication records; made again, it starts empty.
pub async fn delete_removes_everything_of_the_mailbox<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    store.create_mailbox(mbx(2), record(2)).await.unwrap();
    store
        .append((1..=4).map(|n| msg(mbx(1), n, 10)).collect())
        .await;
    store.append(vec![msg(mbx(2), 1, 10)]).await;
    store.ack(mbx(1), vec![1]).await.unwrap();

    assert!(store.delete_mailbox(mbx(1)).await.unwrap());
    assert!(!store.delete_mailbox(mbx(1)).await.unwrap());
    assert_eq!(store.mailbox(mbx(1)).await.unwrap(), None);
    assert!(matches!(
        store.read(mbx(1), 0, 10, 100).await,
        Err(StoreError::NoSuchMailbox)
    ));
    assert!(matches!(
        append_one(store, msg(mbx(1), 5, 10)).await,
        Err(StoreError::NoSuchMailbox)
    ));
    // The other mailbox is untouched.
    assert_eq!(seqs(store, mbx(2)).await, [1]);

    // Re-created: empty, and old message ids (even acked ones) are no longer duplicates.
    store.create_mailbox(mbx(1), record(3)).await.unwrap();
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 0);
    let again = append_one(store, msg(mbx(1), 1, 20)).await.unwrap();
    assert_eq!(
        again,
        Appended {
            seq: 1,
            duplicate: false
        }
    );
    // Old expiry entries must not take the new message with them.
    assert_eq!(
        store.expire(10 + 100).await.unwrap().messages,
        1,
        "only mailbox 2's message"
    );
    assert_eq!(seqs(store, mbx(1)).await, [1]);
    assert_eq!(store.expire(20 + 100).await.unwrap().messages, 1);
    assert!(seqs(store, mbx(1)).await.is_empty());
}

/// Expiry deletes messages and their de-duplication records at the boundary, inclusive; sequence numbers are not reused.
pub async fn expiry_deletes_messages_and_dedup_records<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    store
        .append(vec![
            msg(mbx(1), 1, 10),
            msg(mbx(1), 2, 10),
            msg(mbx(1), 3, 50),
        ])
        .await;
    store.ack(mbx(1), vec![2]).await.unwrap();
    assert_eq!(
        store.expire(50).await.unwrap().messages,
        0,
        "nothing is due before now ≥ 110"
    );
    assert_eq!(store.expire(109).await.unwrap().messages, 0);
    assert_eq!(
        store.expire(110).await.unwrap().messages,
        1,
        "the boundary is inclusive"
    );
    assert_eq!(seqs(store, mbx(1)).await, [3]);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 1);
    // Both expired ids (one acked, one not) are no longer duplicates; 3 still is.
    let again = store
        .append(vec![
            msg(mbx(1), 1, 111),
            msg(mbx(1), 2, 111),
            msg(mbx(1), 3, 111),
        ])
        .await;
    let again: Vec<_> = again.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        again,
        [
            Appended {
                seq: 4,
                duplicate: false
            },
            Appended {
                seq: 5,
                duplicate: false
            },
            Appended {
                seq: 3,
                duplicate: true
            },
        ]
    );
    assert_eq!(store.expire(110).await.unwrap().messages, 0);
    // (Within the mailboxes' idle lifetime: they stay, empty.)
    assert_eq!(store.expire(IDLE / 2).await.unwrap().messages, 3);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 0);
    // Sequence numbers are not reused after everything expired.
    assert_eq!(append_one(store, msg(mbx(1), 9, 500)).await.unwrap().seq, 6);
}

/// A deleted mailbox's renewals do not expire one made again under its id.
pub async fn deleted_mailboxes_leave_no_renewal_behind<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    const DAY: u64 = 86_400;
    let first = MailboxRecord::new(MailboxKind::Inbox, [1; 32], [2; 32], DAY);
    store.create_mailbox(mbx(1), first.clone()).await.unwrap();
    assert!(
        store
            .renew(Renewal::Mailbox(mbx(1)), 2 * DAY)
            .await
            .unwrap()
    );
    assert!(store.delete_mailbox(mbx(1)).await.unwrap());
    // Made again much later: its old renewal does not expire it early.
    let again = MailboxRecord::new(MailboxKind::Inbox, [1; 32], [2; 32], 30 * DAY);
    store.create_mailbox(mbx(1), again).await.unwrap();
    let gone = store.expire(30 * DAY + IDLE - DAY).await.unwrap();
    assert_eq!(gone.mailboxes, 0);
    assert!(store.mailbox(mbx(1)).await.unwrap().is_some());
    // Deleted and made again within one batch of the writer (concurrent requests).
    let (a, b) = tokio::join!(
        store.delete_mailbox(mbx(1)),
        store.create_mailbox(mbx(1), first)
    );
    a.unwrap();
    b.unwrap();
    // Whichever came first, the renewals match what is stored: a mailbox that is there
    // expires once, and nothing that is gone is counted.
    let there = store.mailbox(mbx(1)).await.unwrap().is_some();
    let gone = store.expire(u64::MAX).await.unwrap();
    assert_eq!(gone.mailboxes, u64::from(there));
    assert!(store.mailbox(mbx(1)).await.unwrap().is_none());
}

/// Concurrent producers: every append is kept, each mailbox's sequence is dense and ordered, each producer's order holds.
pub async fn concurrent_appends_keep_per_mailbox_order_and_lose_nothing<S: MailboxStore>(
    store: &Arc<S>,
) {
    const PRODUCERS: u64 = 32;
    const MAILBOXES: u8 = 8;
    const PER_PRODUCER: u64 = 200;
    for k in 0..MAILBOXES {
        store.create_mailbox(mbx(k), record(k)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let mut last_seq = BTreeMap::new();
            for i in 0..PER_PRODUCER {
                let k = u8::try_from((p + i) % u64::from(MAILBOXES)).unwrap();
                let m = NewMessage {
                    mailbox: mbx(k),
                    message_id: mid(p << 32 | i),
                    ciphertext: (p << 32 | i).to_be_bytes().to_vec(),
                    now: 10,
                    cap_hash: None,
                    first_attempt: true,
                };
                let a = append_one(&*store, m).await.unwrap();
                assert!(!a.duplicate);
                let prev = last_seq.insert(k, a.seq).unwrap_or(0);
                assert!(a.seq > prev, "seqs rise for one producer");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for k in 0..MAILBOXES {
        let msgs = store.read(mbx(k), 0, usize::MAX, usize::MAX).await.unwrap();
        let got: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        let want: Vec<u64> = (1..=msgs.len() as u64).collect();
        assert_eq!(got, want, "dense and ordered in mailbox {k}");
        // Each producer's messages appear in the order it sent them.
        let mut last_i: BTreeMap<u64, u64> = BTreeMap::new();
        for m in &msgs {
            let tag = u64::from_be_bytes(m.ciphertext.as_slice().try_into().unwrap());
            let (p, i) = (tag >> 32, tag & 0xffff_ffff);
            if let Some(prev) = last_i.insert(p, i) {
                assert!(i > prev);
            }
        }
        assert_eq!(store.pending(mbx(k)).await.unwrap(), msgs.len() as u64);
        total += msgs.len() as u64;
    }
    assert_eq!(total, PRODUCERS * PER_PRODUCER);
}

/// A creation retried later is a retry; the same key as a log is another mailbox; retired capabilities given at creation are not taken.
pub async fn create_retried_later_is_still_a_retry<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), record(1)).await.unwrap();
    let mut later = record(1);
    later.created_at += 61;
    assert_eq!(
        store.create_mailbox(mbx(1), later).await.unwrap(),
        CreateOutcome::AlreadyExists
    );
    assert_eq!(store.mailbox(mbx(1)).await.unwrap(), Some(record(1)));
    // The same key and capability as a log is another mailbox.
    let mut as_log = record(1);
    as_log.kind = MailboxKind::Log;
    assert!(matches!(
        store.create_mailbox(mbx(1), as_log).await,
        Err(StoreError::MailboxExists)
    ));
    store.create_mailbox(mbx(2), log(2)).await.unwrap();
    assert_eq!(
        store.create_mailbox(mbx(2), log(2)).await.unwrap(),
        CreateOutcome::AlreadyExists
    );
    // Retired capabilities given at creation are not taken.
    let mut with_retired = log(3);
    with_retired.retired_caps.push(crate::RetiredCap {
        cap_hash: [9; 32],
        read_until: 5,
    });
    store.create_mailbox(mbx(3), with_retired).await.unwrap();
    assert_eq!(store.mailbox(mbx(3)).await.unwrap(), Some(log(3)));
}

/// Logs keep what is acknowledged; every reader counts from its own position.
pub async fn logs_keep_acknowledged_messages_and_count_from_a_position<S: MailboxStore>(
    store: &Arc<S>,
) {
    let store: &S = store;
    store.create_mailbox(mbx(1), log(1)).await.unwrap();
    store
        .append(
            (1..=5)
                .map(|n| posted_with(msg(mbx(1), n, 10), cap(1)))
                .collect(),
        )
        .await;
    assert_eq!(store.ack(mbx(1), vec![1, 2, 3, 4, 5]).await.unwrap(), 0);
    assert_eq!(store.ack(mbx(1), vec![]).await.unwrap(), 0);
    assert_eq!(seqs(store, mbx(1)).await, [1, 2, 3, 4, 5]);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 5);
    // Every reader has its own position; all see the same order.
    let from_two = store.read(mbx(1), 2, 100, usize::MAX).await.unwrap();
    assert_eq!(
        from_two.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    for (after, through, want) in [
        (0, u64::MAX, 5),
        (2, u64::MAX, 3),
        (2, 4, 2),
        (0, 1, 1),
        (4, 4, 0),
        (5, u64::MAX, 0),
        (9, 3, 0),
        (u64::MAX, u64::MAX, 0),
    ] {
        assert_eq!(
            store.pending_after(mbx(1), after, through).await.unwrap(),
            want,
            "after {after} through {through}"
        );
    }
    assert!(matches!(
        store.pending_after(mbx(9), 1, 2).await,
        Err(StoreError::NoSuchMailbox)
    ));
    // Acks still delete from an inbox, and counting from a position works there too.
    store.create_mailbox(mbx(2), record(2)).await.unwrap();
    store
        .append((1..=3).map(|n| msg(mbx(2), n, 10)).collect())
        .await;
    assert_eq!(store.ack(mbx(2), vec![1]).await.unwrap(), 1);
    assert_eq!(store.pending_after(mbx(2), 0, 2).await.unwrap(), 1);
}

/// A log takes posts only with its current capability, checked in the durable order against a racing update.
pub async fn a_log_takes_posts_only_with_its_current_capability<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), log(1)).await.unwrap();
    let a = posted_with(msg(mbx(1), 1, 10), cap(1));
    assert_eq!(append_one(store, a).await.unwrap().seq, 1);
    assert!(matches!(
        append_one(store, posted_with(msg(mbx(1), 2, 10), [7; 32])).await,
        Err(StoreError::BadCapability)
    ));
    // A caller that checked nothing is not checked (the relay always passes the hash).
    assert_eq!(append_one(store, msg(mbx(1), 3, 10)).await.unwrap().seq, 2);

    // An update queued between two posts with the old capability retires it between them.
    let (before, updated, after) = tokio::join!(
        append_one(store, posted_with(msg(mbx(1), 4, 10), cap(1))),
        store.update_mailbox(mbx(1), None, cap(2)),
        append_one(store, posted_with(msg(mbx(1), 5, 10), cap(1))),
    );
    assert_eq!(before.unwrap().seq, 3);
    assert_eq!(
        updated.unwrap(),
        3,
        "read_until is the last seq before the update"
    );
    assert!(matches!(after, Err(StoreError::CapabilityRetired)));
    assert!(matches!(
        append_one(store, posted_with(msg(mbx(1), 6, 10), [7; 32])).await,
        Err(StoreError::BadCapability)
    ));
    let new = append_one(store, posted_with(msg(mbx(1), 7, 10), cap(2))).await;
    assert_eq!(new.unwrap().seq, 4);
    assert_eq!(seqs(store, mbx(1)).await, [1, 2, 3, 4]);
    // An inbox ignores the hash: its capability is checked by the relay alone.
    store.create_mailbox(mbx(2), record(2)).await.unwrap();
    let any = posted_with(msg(mbx(2), 1, 10), [7; 32]);
    assert!(append_one(store, any).await.is_ok());
}

/// Updates retire capabilities idempotently and keep the newest eight; only logs are updated.
pub async fn updates_retire_idempotently_and_keep_the_newest_eight<S: MailboxStore>(
    store: &Arc<S>,
) {
    let store: &S = store;
    store.create_mailbox(mbx(1), log(1)).await.unwrap();
    assert_eq!(store.update_mailbox(mbx(1), None, cap(1)).await.unwrap(), 0);
    assert_eq!(store.mailbox(mbx(1)).await.unwrap(), Some(log(1)));
    store
        .append(
            (1..=2)
                .map(|n| posted_with(msg(mbx(1), n, 10), cap(1)))
                .collect(),
        )
        .await;
    let until = store
        .update_mailbox(mbx(1), Some([42; 32]), cap(2))
        .await
        .unwrap();
    assert_eq!(until, 2);
    let rec = store.mailbox(mbx(1)).await.unwrap().unwrap();
    assert_eq!(rec.recipient_key, [42; 32]);
    assert_eq!(rec.sender_cap_hash, cap(2));
    assert_eq!(
        rec.retired_caps,
        [crate::RetiredCap {
            cap_hash: cap(1),
            read_until: 2
        }]
    );
    // A retry retires nothing more and answers the same `read_until`.
    append_one(store, posted_with(msg(mbx(1), 3, 10), cap(2)))
        .await
        .unwrap();
    assert_eq!(
        store
            .update_mailbox(mbx(1), Some([42; 32]), cap(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.mailbox(mbx(1)).await.unwrap().unwrap(), rec);
    // Ten more: the newest eight are kept, oldest first.
    for k in 3..=12u8 {
        store.update_mailbox(mbx(1), None, cap(k)).await.unwrap();
    }
    let rec = store.mailbox(mbx(1)).await.unwrap().unwrap();
    let kept: Vec<[u8; 32]> = rec.retired_caps.iter().map(|r| r.cap_hash).collect();
    assert_eq!(kept, (4..=11u8).map(cap).collect::<Vec<_>>());
    assert!(rec.retired_caps.iter().all(|r| r.read_until == 3));
    assert_eq!(rec.retired(&cap(1)), None);
    // A retired capability made current again is no longer retired.
    store.update_mailbox(mbx(1), None, cap(5)).await.unwrap();
    let rec = store.mailbox(mbx(1)).await.unwrap().unwrap();
    assert_eq!(rec.sender_cap_hash, cap(5));
    assert_eq!(rec.retired(&cap(5)), None);
    assert!(rec.retired(&cap(12)).is_some());
    assert_eq!(rec.retired_caps.len(), 8);

    store.create_mailbox(mbx(2), record(2)).await.unwrap();
    assert!(matches!(
        store.update_mailbox(mbx(2), None, [5; 32]).await,
        Err(StoreError::NotALog { .. })
    ));
    assert_eq!(store.mailbox(mbx(2)).await.unwrap(), Some(record(2)));
    assert!(matches!(
        store.update_mailbox(mbx(3), None, [5; 32]).await,
        Err(StoreError::NoSuchMailbox)
    ));
}

/// Logs have their own depth, which acks do not free, and expire like inboxes.
pub async fn logs_have_their_own_depth_and_expire_like_inboxes<S: MailboxStore>(store: &Arc<S>) {
    let store: &S = store;
    store.create_mailbox(mbx(1), log(1)).await.unwrap();
    let batch: Vec<_> = (1..=61).map(|n| msg(mbx(1), n, 10 + n / 31)).collect();
    let results = store.append(batch).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 60);
    assert!(matches!(
        results.last().unwrap(),
        Err(StoreError::MailboxFull { limit: 60 })
    ));
    // Acks free no room in a log: only expiry does.
    store.ack(mbx(1), (1..=60).collect()).await.unwrap();
    assert!(matches!(
        append_one(store, msg(mbx(1), 99, 12)).await,
        Err(StoreError::MailboxFull { .. })
    ));
    // Messages 1..=30 were received at 10, 31..=60 at 11.
    assert_eq!(store.expire(110).await.unwrap().messages, 30);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 30);
    assert_eq!(store.pending_after(mbx(1), 0, 40).await.unwrap(), 10);
    assert_eq!(seqs(store, mbx(1)).await.first(), Some(&31));
    // The expired ids are no longer duplicates; the kept ones are.
    let again = store
        .append(vec![msg(mbx(1), 1, 12), msg(mbx(1), 31, 12)])
        .await;
    assert_eq!(
        again.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [
            Appended {
                seq: 61,
                duplicate: false
            },
            Appended {
                seq: 31,
                duplicate: true
            },
        ]
    );
    assert_eq!(store.expire(IDLE / 2).await.unwrap().messages, 31);
    assert_eq!(store.pending(mbx(1)).await.unwrap(), 0);
    assert_eq!(store.mailbox(mbx(1)).await.unwrap(), Some(log(1)));
}

/// Key-package slots: the first publisher owns one; one-time packages go first in, first out, each once, then the last-resort one again and again; limits are refused.
pub async fn key_packages_bind_their_owner_and_go_first_in_first_out<S: MailboxStore>(
    store: &Arc<S>,
) {
    let store: &S = store;
    let (slot, owner) = ([5u8; 32], [6u8; 32]);
    assert_eq!(store.take_key_package(slot).await.unwrap(), None);
    let two = vec![b"a".to_vec(), b"b".to_vec()];
    assert_eq!(
        store
            .publish_key_packages(slot, owner, two, None, 1_000)
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        store
            .publish_key_packages(slot, [7; 32], vec![b"x".to_vec()], None, 1_000)
            .await,
        Err(StoreError::SlotOwnedElsewhere)
    ));
    assert!(matches!(
        store
            .publish_key_packages(slot, owner, vec![vec![1]; 2], None, 1_000)
            .await,
        Err(StoreError::KeyPackageLimit { .. })
    ));
    assert!(matches!(
        store
            .publish_key_packages(slot, owner, vec![], Some(vec![0; 65]), 1_000)
            .await,
        Err(StoreError::KeyPackageLimit { .. })
    ));
    let held = store
        .publish_key_packages(
            slot,
            owner,
            vec![b"c".to_vec()],
            Some(b"last".to_vec()),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(held, 3);
    let mut taken = Vec::new();
    for _ in 0..5 {
        let t = store.take_key_package(slot).await.unwrap().unwrap();
        taken.push((t.data, t.last_resort));
    }
    assert_eq!(
        taken,
        [
            (b"a".to_vec(), false),
            (b"b".to_vec(), false),
            (b"c".to_vec(), false),
            (b"last".to_vec(), true),
            (b"last".to_vec(), true),
        ]
    );
    // A slot without a last-resort package runs dry.
    let other = [8u8; 32];
    store
        .publish_key_packages(other, owner, vec![b"z".to_vec()], None, 1_000)
        .await
        .unwrap();
    assert!(store.take_key_package(other).await.unwrap().is_some());
    assert_eq!(store.take_key_package(other).await.unwrap(), None);
    // Renewed, a slot stays past the idle time of the other; idle, it goes with its packages.
    assert!(
        store
            .renew(Renewal::Slot(slot), 1_000 + IDLE)
            .await
            .unwrap()
    );
    let gone = store.expire(1_000 + IDLE + 2 * 86_400).await.unwrap();
    assert_eq!(gone.slots, 1);
    assert!(store.take_key_package(other).await.unwrap().is_none());
    assert_eq!(
        store.take_key_package(slot).await.unwrap().unwrap().data,
        b"last".to_vec()
    );
}

/// Instantiates the conformance suite: one test per check, each on a fresh store from `$open`,
/// an async function taking [`Limits`] and returning `(guard, store)`; the guard is kept until
/// the check ends.
#[macro_export]
macro_rules! mailbox_store_conformance {
    ($open:path) => {
        $crate::mailbox_store_conformance!(@checks $open;
            create_is_idempotent_and_lookup_is_cached,
            appends_keep_order_and_reads_page,
            first_attempts_are_caught_when_retried,
            limits_are_enforced,
            ack_counts_what_it_deleted,
            delete_removes_everything_of_the_mailbox,
            expiry_deletes_messages_and_dedup_records,
            deleted_mailboxes_leave_no_renewal_behind,
            concurrent_appends_keep_per_mailbox_order_and_lose_nothing,
            create_retried_later_is_still_a_retry,
            logs_keep_acknowledged_messages_and_count_from_a_position,
            a_log_takes_posts_only_with_its_current_capability,
            updates_retire_idempotently_and_keep_the_newest_eight,
            logs_have_their_own_depth_and_expire_like_inboxes,
            key_packages_bind_their_owner_and_go_first_in_first_out,
        );
    };
    (@checks $open:path; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let limits = $crate::conformance::limits_for(stringify!($check));
                let (_guard, store) = $open(limits).await;
                $crate::conformance::$check(&::std::sync::Arc::new(store)).await;
            }
        )*
    };
}
