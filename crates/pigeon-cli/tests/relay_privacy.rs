//! The relay's store and logs never hold plaintext, keys or identities.
//!
//! Messages carry distinctive marker strings and a random 32-byte "key" marker, encrypted
//! client-side with ChaCha20-Poly1305 (standing in for MLS) before they reach the relay. The
//! relay runs at `PIGEON_LOG=trace`. Some messages are delivered and acknowledged, some
//! delivered and left unacknowledged, some never delivered; a rejected send (wrong
//! capability) carries a marker in the clear. Then the relay stops and every byte it left
//! behind, in its data directory and its log, is searched for:
//!
//! * the plaintext markers and the key marker;
//! * the conversation key, the sender capabilities and the recipients' private keys;
//! * in the log only: mailbox ids and message ids (the store must keep those).
//!
//! Binary secrets are searched in raw, hex, base64 and Rust `Debug` forms. A positive control
//! proves the search finds what the store does hold (the stored ciphertext).

#[path = "support.rs"]
mod support;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use pigeon_client::{ClientError, Event, OwnedMailbox, RelayConnection};
use pigeon_proto::auth::random_bytes;
use pigeon_wire::ErrorCode;
use pigeon_wire::msg::MailboxId;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Relay, RelayOpts, find};

const ACKED: usize = 20;
const DELIVERED_UNACKED: usize = 10;
const DELIVERED_THEN_ACKED: usize = 10;
const UNDELIVERED: usize = 10;

/// A needle: what it is, and its bytes.
type Needle = (String, Vec<u8>);

fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let six = usize::try_from((n >> (18 - 6 * i)) & 63).expect("six bits");
            out.push(char::from(alphabet[six]));
        }
    }
    out
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Every form in which a binary secret could plausibly be written down.
fn forms(name: &str, secret: &[u8]) -> Vec<Needle> {
    let hex = hex::encode(secret);
    vec![
        (format!("{name} (raw)"), secret.to_vec()),
        (format!("{name} (hex)"), hex.clone().into_bytes()),
        (format!("{name} (HEX)"), hex.to_uppercase().into_bytes()),
        (format!("{name} (base64)"), base64(secret, STD).into_bytes()),
        (
            format!("{name} (base64url)"),
            base64(secret, URL).into_bytes(),
        ),
        (
            format!("{name} (Debug)"),
            format!("{:?}", secret).into_bytes(),
        ),
    ]
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every run of decimal numbers 0..=255 separated only by commas and whitespace, as bytes:
/// finds a secret printed with `{:?}` or `{:#?}` at any nesting.
fn decimal_runs(text: &[u8]) -> Vec<Vec<u8>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut flush = |run: &mut Vec<u8>| {
        if run.len() >= 8 {
            runs.push(std::mem::take(run));
        }
        run.clear();
    };
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_digit() {
            let start = i;
            while i < text.len() && text[i].is_ascii_digit() {
                i += 1;
            }
            match std::str::from_utf8(&text[start..i])
                .ok()
                .and_then(|n| n.parse::<u8>().ok())
            {
                Some(b) => run.push(b),
                None => flush(&mut run),
            }
        } else {
            if text[i] != b',' && !text[i].is_ascii_whitespace() {
                flush(&mut run);
            }
            i += 1;
        }
    }
    flush(&mut run);
    runs
}

/// Where each needle occurs in any of the named haystacks.
fn search(haystacks: &[(String, Vec<u8>)], needles: &[Needle]) -> Vec<String> {
    let mut found = Vec::new();
    for (place, bytes) in haystacks {
        for (name, needle) in needles {
            if let Some(at) = find(bytes, needle) {
                found.push(format!("{name} in {place} at byte {at}"));
            }
        }
    }
    found
}

#[test]
fn decimal_runs_see_through_debug_formatting() {
    let secret: Vec<u8> = (200..232).collect();
    for text in [format!("x={secret:?} y"), format!("k: {secret:#?},")] {
        let runs = decimal_runs(text.as_bytes());
        assert!(runs.iter().any(|r| find(r, &secret).is_some()), "{text}");
    }
    assert!(decimal_runs(b"\x1b[2m2026-11-25T12:13:05 seqno=7").is_empty());
}

fn seal(key: &ChaCha20Poly1305, plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; 12] = random_bytes().expect("random");
    let mut out = nonce.to_vec();
    out.extend(
        key.encrypt(Nonce::from_slice(&nonce), plain)
            .expect("encrypt"),
    );
    out
}

fn open(key: &ChaCha20Poly1305, ct: &[u8]) -> Vec<u8> {
    key.decrypt(Nonce::from_slice(&ct[..12]), &ct[12..])
        .expect("a message failed authentication")
}

/// Receives exactly `n` deliveries on `conn`; returns `(seq, message id, ciphertext)`.
async fn receive(conn: &mut RelayConnection, n: usize) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(20), conn.next_event())
            .await
            .expect("messages arrive");
        let Some(Event::Push(push)) = event else {
            panic!("session ended: {event:?}");
        };
        got.extend(
            push.deliveries
                .into_iter()
                .map(|d| (d.seq, d.message_id, d.ciphertext)),
        );
    }
    assert_eq!(got.len(), n, "more deliveries than sent");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_logs_hold_no_plaintext_keys_or_identities() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = RelayOpts::in_dir(dir.path());
    opts.log_filter = "trace".to_owned();
    let mut relay = Relay::start(opts);

    let conversation_key: [u8; 32] = random_bytes().expect("random");
    let key_marker: [u8; 32] = random_bytes().expect("random");
    let aead = ChaCha20Poly1305::new(Key::from_slice(&conversation_key));
    let tag: [u8; 4] = random_bytes().expect("random");
    let tag = hex::encode(tag);

    let alice = relay.connect().await;
    let mut bob = relay.connect().await;
    let inbox = OwnedMailbox::generate().expect("random");
    let quiet = OwnedMailbox::generate().expect("random");
    for m in [&inbox, &quiet] {
        bob.create_mailbox(&m.key, &m.id, m.cap_hash())
            .await
            .expect("create");
    }
    bob.subscribe(&inbox.key, &inbox.id)
        .await
        .expect("subscribe");

    let total = ACKED + DELIVERED_THEN_ACKED + DELIVERED_UNACKED + UNDELIVERED;
    let plaintexts: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            let mut p = format!("PIGEON-PRIVACY-MARKER-{tag}-{i:03}: meet at the old bridge at 6")
                .into_bytes();
            p.extend_from_slice(&key_marker);
            p
        })
        .collect();
    let mut message_ids = Vec::new();
    let mut ciphertexts = Vec::new();
    let mut send = async |to: &MailboxId, cap: &[u8; 32], i: usize| {
        let id: [u8; 16] = random_bytes().expect("random");
        let ct = seal(&aead, &plaintexts[i]);
        alice.send(to, cap, id, ct.clone()).await.expect("send");
        message_ids.push(id);
        ciphertexts.push(ct);
    };

    // Delivered and acknowledged.
    for i in 0..ACKED {
        send(&inbox.id, &inbox.sender_cap, i).await;
    }
    // Delivered; some acknowledged, the rest left in the store.
    for i in ACKED..ACKED + DELIVERED_THEN_ACKED + DELIVERED_UNACKED {
        send(&inbox.id, &inbox.sender_cap, i).await;
    }
    // Never delivered.
    for i in total - UNDELIVERED..total {
        send(&quiet.id, &quiet.sender_cap, i).await;
    }
    let got = receive(&mut bob, ACKED + DELIVERED_THEN_ACKED + DELIVERED_UNACKED).await;
    for (k, (_, id, ct)) in got.iter().enumerate() {
        assert_eq!(id.as_slice(), message_ids[k].as_slice(), "order");
        assert_eq!(open(&aead, ct), plaintexts[k], "content");
    }
    let ack: Vec<u64> = got[..ACKED + DELIVERED_THEN_ACKED]
        .iter()
        .map(|(seq, _, _)| *seq)
        .collect();
    assert_eq!(
        bob.ack(&inbox.id, ack).await.expect("ack"),
        (ACKED + DELIVERED_THEN_ACKED) as u64
    );

    // A rejected send carrying a marker in the clear: refused, and never written anywhere.
    let rejected_marker = format!("PIGEON-REJECTED-MARKER-{tag}");
    let wrong_cap: [u8; 32] = random_bytes().expect("random");
    match alice
        .send(
            &inbox.id,
            &wrong_cap,
            random_bytes().expect("random"),
            rejected_marker.clone().into_bytes(),
        )
        .await
    {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::BadCapability),
        other => panic!("a send with a wrong capability got {other:?}"),
    }
    // A subscription with someone else's key: refused, and the refusal logs no id.
    let stranger = OwnedMailbox::generate().expect("random");
    match alice.subscribe(&stranger.key, &inbox.id).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::BadSignature),
        other => panic!("a subscription with a wrong key got {other:?}"),
    }
    drop(alice);
    drop(bob);
    relay.stop();

    // What must appear nowhere: not in the store, not in the log.
    let mut secret: Vec<Needle> = vec![
        (
            "plaintext marker prefix".to_owned(),
            format!("PIGEON-PRIVACY-MARKER-{tag}").into_bytes(),
        ),
        (
            "plaintext phrase".to_owned(),
            b"meet at the old bridge".to_vec(),
        ),
        (
            "rejected plaintext marker".to_owned(),
            rejected_marker.into_bytes(),
        ),
    ];
    for (i, p) in plaintexts.iter().enumerate() {
        secret.push((format!("plaintext {i}"), p[..p.len() - 32].to_vec()));
    }
    secret.extend(forms("key marker", &key_marker));
    secret.extend(forms("conversation key", &conversation_key));
    for (name, m) in [("inbox", &inbox), ("quiet mailbox", &quiet)] {
        secret.extend(forms(&format!("{name} sender capability"), &m.sender_cap));
        secret.extend(forms(&format!("{name} private key"), &m.key.to_bytes()));
    }
    secret.extend(forms("wrong capability", &wrong_cap));
    secret.extend(forms("stranger's private key", &stranger.key.to_bytes()));
    // What the store must keep but the log must not show.
    let mut identities: Vec<Needle> = Vec::new();
    for (name, m) in [("inbox", &inbox), ("quiet mailbox", &quiet)] {
        identities.extend(forms(&format!("{name} id"), &m.id.0));
        // `MailboxId`'s Debug form shows a 4-byte prefix: enough to link across log lines.
        identities.push((
            format!("{name} id prefix"),
            hex::encode(&m.id.0[..4]).into_bytes(),
        ));
        identities.extend(forms(
            &format!("{name} recipient public key"),
            &m.key.verifying_key().to_bytes(),
        ));
        identities.extend(forms(&format!("{name} capability hash"), &m.cap_hash()));
    }
    for (i, id) in message_ids.iter().enumerate() {
        identities.extend(forms(&format!("message id {i}"), id));
    }

    let mut store_files = Vec::new();
    files_under(&relay.opts().data, &mut store_files);
    assert!(!store_files.is_empty(), "the relay left no files");
    let log = relay.opts().log.clone();
    let log_bytes = std::fs::read(&log).expect("read log");
    let log_text = String::from_utf8_lossy(&log_bytes);
    assert!(
        log_text.contains("relay serving") && log_text.contains("TRACE"),
        "the log is suspiciously short: was PIGEON_LOG=trace honoured?\n{log_text}"
    );
    println!(
        "searched {} store files ({} bytes) and a {}-byte log for {} secrets and {} identities",
        store_files.len(),
        store_files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum::<u64>(),
        log_bytes.len(),
        secret.len(),
        identities.len()
    );

    let store: Vec<(String, Vec<u8>)> = store_files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read(f).expect("read")))
        .collect();
    let mut logs = vec![("the log".to_owned(), log_bytes.clone())];
    for (k, run) in decimal_runs(&log_bytes).into_iter().enumerate() {
        logs.push((format!("decimal list {k} of the log"), run));
    }
    let raw_secrets: Vec<Needle> = secret
        .iter()
        .filter(|(name, _)| name.ends_with("(raw)"))
        .cloned()
        .collect();
    let raw_identities: Vec<Needle> = identities
        .iter()
        .filter(|(name, _)| name.ends_with("(raw)"))
        .cloned()
        .collect();
    let mut leaks = search(&store, &secret);
    leaks.extend(search(&logs[..1], &secret));
    leaks.extend(search(&logs[..1], &identities));
    leaks.extend(search(&logs[1..], &raw_secrets));
    leaks.extend(search(&logs[1..], &raw_identities));
    assert!(leaks.is_empty(), "leaked:\n{}", leaks.join("\n"));

    // Positive control: the search does find what the store holds: the ciphertext of every
    // message still waiting (the unacknowledged and the undelivered ones).
    let waiting: Vec<Needle> = (ACKED + DELIVERED_THEN_ACKED..total)
        .map(|i| (format!("ciphertext {i}"), ciphertexts[i].clone()))
        .collect();
    for (name, ct) in &waiting {
        assert!(
            store.iter().any(|(_, bytes)| find(bytes, ct).is_some()),
            "positive control: {name} is not in the store, so the search proves nothing"
        );
    }
    relay.assert_no_panic();
}
