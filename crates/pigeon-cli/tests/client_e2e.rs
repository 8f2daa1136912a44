//! End-to-end tests of the client library against a real relay process on loopback: the
//! invitation flow, bulk exchange, offline delivery across a relay restart, exactly-once
//! recording across `kill -9` of client and relay, strangers, tampering and replay, privacy at
//! rest, and forward secrecy after a key update (issue #3).

#[path = "support.rs"]
mod support;

use pigeon_client::profile::DB_FILE;
use pigeon_client::{Client, ClientEvent, Message, Passphrase, Profile};
use pigeon_transport::RelayLink;
use pigeon_wire::ErrorCode;
use pigeon_wire::msg::MailboxId;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts, Rng, find, seed_from_env};

const PASS: &str = "test passphrase";
const T: Duration = Duration::from_secs(10);

fn pass() -> Passphrase {
    Passphrase::new(PASS.to_owned())
}

fn pigeon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
    cmd.env("PIGEON_PASSPHRASE", PASS)
        .env("PIGEON_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

fn person(root: &Path, name: &str, relay: &RelayLink) -> Client {
    let profile = Profile::create(&root.join(name), &pass(), name, relay).expect("profile");
    Client::new(profile, T)
}

fn reopen(dir: &Path) -> Client {
    Client::new(Profile::open(dir, &pass()).expect("open profile"), T)
}

/// Handles events until `n` text messages arrived (posting whatever handling queues), then
/// reads on until nothing more comes, as a client that stays connected would: a key refresh
/// this device committed while reading finds its place in the log.
async fn receive(client: &mut Client, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    client.subscribe_all().await.expect("subscribe");
    while got.len() < n {
        let batch = tokio::time::timeout_at(deadline, client.next_events())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", got.len()))
            .expect("events")
            .expect("session open");
        for e in batch {
            match e {
                ClientEvent::Message(m) => got.push(m),
                ClientEvent::Dropped(r) => panic!("an honest message was dropped: {r}"),
                _ => {}
            }
        }
        client.flush(false).await.expect("flush");
    }
    let (events, _) = client
        .sync(Duration::from_millis(300), T)
        .await
        .expect("settle");
    for e in events {
        match e {
            ClientEvent::Message(m) => got.push(m),
            ClientEvent::Dropped(r) => panic!("an honest message was dropped: {r}"),
            _ => {}
        }
    }
    got
}

/// Waits for one event matching `pred`.
async fn expect_event(client: &mut Client, pred: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    let deadline = tokio::time::Instant::now() + T;
    client.subscribe_all().await.expect("subscribe");
    loop {
        let batch = tokio::time::timeout_at(deadline, client.next_events())
            .await
            .expect("the event did not come")
            .expect("events")
            .expect("session open");
        client.flush(false).await.expect("flush");
        if let Some(e) = batch.into_iter().find(|e| pred(e)) {
            return e;
        }
    }
}

/// alice invites, bob accepts (starting the conversation), alice joins it.
async fn pair(root: &Path, relay: &RelayLink) -> (Client, Client) {
    let mut alice = person(root, "alice", relay);
    let mut bob = person(root, "bob", relay);
    let link = alice.invite().await.expect("invite");
    let (contact, report) = bob.accept(&link, None).await.expect("accept");
    assert_eq!(contact.name, "alice");
    assert_eq!(report.waiting, 0, "{:?}", report.errors);
    expect_event(
        &mut alice,
        |e| matches!(e, ClientEvent::NewContact(c) if c.name == "bob"),
    )
    .await;
    // The conversation is a group of two on a log on bob's relay: both read it from here.
    bob.subscribe_all().await.expect("subscribe");
    (alice, bob)
}

async fn send_all(client: &mut Client, to: &str, texts: &[String]) {
    let id = client.profile().find_contact(to).expect("contact").id;
    for t in texts {
        client.profile().compose(id, t).expect("compose");
    }
    let report = client.flush(true).await.expect("flush");
    assert_eq!(report.waiting, 0, "{:?}", report.errors);
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i:04}")).collect()
}

fn incoming(client: &Client, from: &str) -> Vec<String> {
    let id = client.profile().find_contact(from).expect("contact").id;
    client
        .profile()
        .history(Some(id), 1_000_000)
        .expect("history")
        .into_iter()
        .filter(|m| !m.outgoing)
        .map(|m| m.text)
        .collect()
}

#[tokio::test]
async fn hundred_each_way_then_offline_delivery_across_a_relay_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(RelayOpts::in_dir(dir.path()));
    relay.pin_port();
    let (mut alice, mut bob) = pair(dir.path(), &relay.link).await;

    let a2b = texts("alice to bob", 100);
    send_all(&mut alice, "bob", &a2b).await;
    let got: Vec<String> = receive(&mut bob, 100)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(got, a2b);
    let b2a = texts("bob to alice", 100);
    send_all(&mut bob, "alice", &b2a).await;
    let got: Vec<String> = receive(&mut alice, 100)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(got, b2a);

    // bob goes offline; alice writes; the relay dies hard and comes back.
    let bob_dir = bob.profile().dir().to_owned();
    drop(bob);
    let offline = texts("while you were away", 50);
    send_all(&mut alice, "bob", &offline).await;
    relay.restart();
    let mut bob = reopen(&bob_dir);
    let got: Vec<String> = receive(&mut bob, 50)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(got, offline);
    assert_eq!(incoming(&bob, "alice").len(), 150);
    // Receipts flowed back: alice's messages are marked delivered.
    let id = alice.profile().find_contact("bob").expect("bob").id;
    tokio::time::timeout(T, async {
        loop {
            let delivered = alice
                .profile()
                .history(Some(id), 1000)
                .expect("history")
                .iter()
                .filter(|m| m.outgoing && m.delivered)
                .count();
            if delivered == 150 {
                break;
            }
            alice.subscribe_all().await.expect("resubscribe");
            let _ = tokio::time::timeout(Duration::from_millis(200), alice.next_events()).await;
            bob.flush(true).await.expect("flush receipts");
        }
    })
    .await
    .expect("receipts for all 150 messages");
    relay.assert_no_panic();
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[tokio::test]
async fn exactly_once_across_kill9_of_client_and_relay() {
    let seed = seed_from_env("PIGEON_CLIENT_CRASH_SEED");
    eprintln!("seed {seed} (re-run with PIGEON_CLIENT_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(RelayOpts::in_dir(dir.path()));
    relay.pin_port();
    let (mut alice, bob) = pair(dir.path(), &relay.link).await;
    let bob_dir = bob.profile().dir().to_owned();
    drop(bob);

    // alice's burst is cut by kill -9 of the relay; the rest waits in her outbox.
    let expected = texts("burst", 200);
    let id = alice.profile().find_contact("bob").expect("bob").id;
    for t in &expected {
        alice.profile().compose(id, t).expect("compose");
    }
    let pid = relay.pid().expect("relay pid");
    let delay = Duration::from_millis(20 + rng.below(60));
    let killer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill9(pid);
    });
    let report = alice.flush(true).await.expect("flush");
    killer.join().expect("killer");
    eprintln!("before the crash the relay took {} of 200", report.sent);
    relay.restart();
    let started = Instant::now();
    loop {
        let report = alice.flush(true).await.expect("flush");
        if report.waiting == 0 {
            break;
        }
        assert!(started.elapsed() < T, "outbox stuck: {:?}", report.errors);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // bob reads with a client killed at random moments, and once the relay dies too.
    for round in 0..6 {
        let mut child = pigeon()
            .env("PIGEON_PROFILE", &bob_dir)
            .args(["read", "--wait", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn read");
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        kill9(child.id());
        let _ = child.wait();
        if round == 3 {
            relay.restart();
        }
    }
    let out = pigeon()
        .env("PIGEON_PROFILE", &bob_dir)
        .args(["read", "--wait", "1"])
        .output()
        .expect("final read");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob = reopen(&bob_dir);
    assert_eq!(
        incoming(&bob, "alice"),
        expected,
        "every message exactly once, in order (seed {seed})"
    );
    relay.assert_no_panic();
}

#[tokio::test]
async fn a_stranger_with_only_the_relay_link_can_neither_post_nor_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (mut alice, bob) = pair(dir.path(), &relay.link).await;
    send_all(&mut alice, "bob", &texts("private", 3)).await;
    drop(bob);

    // The stranger even learns the conversation's log id (say, from traffic) but holds no
    // capability and no key.
    let bob_dir = dir.path().join("bob");
    let log = Profile::open(&bob_dir, &pass())
        .expect("bob")
        .logs()
        .expect("logs")[0]
        .clone();
    let stranger = relay.connect().await;
    let mailbox = MailboxId(log.log_id);
    let refused = |r: Result<_, pigeon_client::ClientError>, code: ErrorCode| match r {
        Err(pigeon_client::ClientError::Refused { code: c, .. }) => assert_eq!(c, code),
        other => panic!("expected {code:?}, got {other:?}"),
    };
    refused(
        stranger
            .send(&mailbox, &[7; 32], [1; 16], b"spam".to_vec())
            .await
            .map(|_| ()),
        ErrorCode::BadCapability,
    );
    let key = pigeon_proto::auth::generate_signing_key().expect("key");
    // A log is read with a member capability, never with a signature.
    refused(
        stranger.subscribe(&key, &mailbox).await.map(|_| ()),
        ErrorCode::BadRequest,
    );
    refused(
        stranger.delete_mailbox(&key, &mailbox).await,
        ErrorCode::BadSignature,
    );
    refused(
        stranger
            .subscribe_log(&mailbox, &[7; 32], 0)
            .await
            .map(|_| ()),
        ErrorCode::BadCapability,
    );
    refused(
        stranger.ack(&mailbox, vec![1, 2, 3]).await.map(|_| ()),
        ErrorCode::NotSubscribed,
    );
    refused(
        stranger.create_mailbox(&key, &mailbox, [0; 32]).await,
        ErrorCode::MailboxExists,
    );
    refused(
        stranger.fetch_key_package(&[3; 32]).await.map(|_| ()),
        ErrorCode::NoKeyPackage,
    );
    // bob still gets exactly alice's three messages.
    let mut bob = reopen(&bob_dir);
    let got: Vec<String> = receive(&mut bob, 3)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(got, texts("private", 3));
}

#[tokio::test]
async fn tampered_and_replayed_messages_are_dropped_and_the_conversation_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (mut alice, mut bob) = pair(dir.path(), &relay.link).await;
    let id = alice.profile().find_contact("bob").expect("bob").id;
    alice.profile().compose(id, "original").expect("compose");
    let item = alice.profile().outbox().expect("outbox").remove(0);
    alice.flush(true).await.expect("flush");
    assert_eq!(receive(&mut bob, 1).await[0].text, "original");

    // Someone holding alice's capability (or the relay itself) posts altered and replayed
    // copies under fresh relay ids.
    let attacker = relay.connect().await;
    let mailbox = MailboxId(item.mailbox);
    let mut tampered = item.payload.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    for (i, payload) in [tampered, item.payload.clone(), vec![0xff; 300], Vec::new()]
        .into_iter()
        .enumerate()
    {
        attacker
            .send(
                &mailbox,
                &item.sender_cap,
                [0xa0 + u8::try_from(i).expect("small"); 16],
                payload,
            )
            .await
            .expect("the relay takes ciphertext it cannot judge");
    }
    bob.subscribe_all().await.expect("subscribe");
    let mut dropped = Vec::new();
    while dropped.len() < 4 {
        let batch = tokio::time::timeout(T, bob.next_events())
            .await
            .expect("the forged messages arrive")
            .expect("events")
            .expect("open");
        for e in batch {
            match e {
                ClientEvent::Dropped(r) => dropped.push(r),
                ClientEvent::Message(m) => panic!("a forged message was accepted: {}", m.text),
                _ => {}
            }
        }
    }
    assert!(
        dropped.iter().any(|r| r.contains("replayed")),
        "{dropped:?}"
    );
    // State intact: the conversation continues both ways.
    send_all(&mut alice, "bob", &["after the attack".to_owned()]).await;
    assert_eq!(receive(&mut bob, 1).await[0].text, "after the attack");
    send_all(&mut bob, "alice", &["still private".to_owned()]).await;
    // alice reads the same log, forged copies of her own message included: they are dropped
    // there too, and the real message arrives.
    expect_event(
        &mut alice,
        |e| matches!(e, ClientEvent::Message(m) if m.text == "still private"),
    )
    .await;
    assert_eq!(incoming(&bob, "alice"), ["original", "after the attack"]);
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn no_plaintext_in_the_relay_store_its_logs_or_the_profiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = RelayOpts::in_dir(dir.path());
    opts.log_filter = "trace".to_owned();
    let relay = Relay::start(opts);
    let root = dir.path().join("people");
    let (mut alice, mut bob) = pair(&root, &relay.link).await;
    let marker = "ZEBRA-MARKER-91c4 meet at the old bridge";
    send_all(&mut alice, "bob", &[marker.to_owned()]).await;
    assert_eq!(receive(&mut bob, 1).await[0].text, marker);
    // Leave a second copy unread on the relay so the store holds something.
    send_all(&mut alice, "bob", &[format!("{marker} again")]).await;
    drop((alice, bob));

    // Names are searched for only from five bytes up: a 3-byte needle such as "bob" turns up by
    // chance once in 16 MiB of ciphertext (in about one run in fifty, in a 300 KB profile).
    let needles: [&[u8]; 3] = [b"ZEBRA-MARKER", b"old bridge", b"alice"];
    let relay_files: Vec<PathBuf> = all_files(&dir.path().join("data"));
    assert!(!relay_files.is_empty());
    let mut relay_bytes = relay.log_bytes();
    for f in &relay_files {
        relay_bytes.extend(std::fs::read(f).expect("read"));
    }
    for n in needles {
        assert!(
            find(&relay_bytes, n).is_none(),
            "the relay's store or log holds {:?}",
            String::from_utf8_lossy(n)
        );
    }
    for f in all_files(&root) {
        let bytes = std::fs::read(&f).expect("read");
        for n in needles.iter().chain([&&b"SQLite format 3"[..]]) {
            assert!(
                find(&bytes, n).is_none(),
                "{} holds {:?} in the clear",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    // Unreadable without the key, even to pigeon itself.
    let out = pigeon()
        .env("PIGEON_PROFILE", root.join("bob"))
        .env("PIGEON_PASSPHRASE", "not the passphrase")
        .arg("contacts")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("passphrase does not open"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Decrypts every page of a SQLCipher 4 database (default settings: PBKDF2-HMAC-SHA512 with
/// 256,000 iterations, 4 KiB pages, 80 reserved bytes per page holding the IV and HMAC,
/// AES-256-CBC), free pages included.
fn sqlcipher_pages(path: &Path, passphrase: &str) -> Vec<u8> {
    use aes::cipher::{BlockDecryptMut as _, KeyIvInit as _, block_padding::NoPadding};
    const PAGE: usize = 4096;
    const RESERVE: usize = 80;
    let file = std::fs::read(path).expect("read db");
    assert_eq!(file.len() % PAGE, 0, "whole pages");
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(passphrase.as_bytes(), &file[..16], 256_000, &mut key);
    let mut out = Vec::with_capacity(file.len());
    for (i, page) in file.chunks(PAGE).enumerate() {
        let start = if i == 0 { 16 } else { 0 };
        let iv = &page[PAGE - RESERVE..PAGE - RESERVE + 16];
        let mut data = page[start..PAGE - RESERVE].to_vec();
        cbc::Decryptor::<aes::Aes256>::new(&key.into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut data)
            .expect("whole blocks");
        out.extend_from_slice(&data);
    }
    out
}

/// The forms a stored secret may take, each half separately (a value may straddle a page
/// boundary, but then one half is whole on one page): raw bytes, serde_json's numbers, or
/// MessagePack's integers (a byte from 128 up after 0xCC), as the profile's codec stores
/// large values.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let (a, b) = secret.split_at(secret.len() / 2);
    let json = |half: &[u8]| {
        half.iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()
    };
    let msgpack = |half: &[u8]| {
        half.iter()
            .flat_map(|&x| if x < 0x80 { vec![x] } else { vec![0xcc, x] })
            .collect::<Vec<u8>>()
    };
    vec![
        a.to_vec(),
        b.to_vec(),
        json(a),
        json(b),
        msgpack(a),
        msgpack(b),
    ]
}

fn holds(pages: &[u8], secret: &[u8]) -> bool {
    forms(secret).iter().any(|f| find(pages, f).is_some())
}

/// Every 32-byte secret in the group's stored epoch secrets, message secrets and resumption
/// PSKs (the secret tree, sender-data secret, confirmation and membership keys, init and
/// exporter secrets...).
fn stored_secrets(db: &Path) -> Vec<Vec<u8>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
        match v {
            serde_json::Value::Array(items) => {
                let bytes: Option<Vec<u8>> = items
                    .iter()
                    .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                    .collect();
                match bytes {
                    Some(b) if b.len() == 32 => out.push(b),
                    _ => items.iter().for_each(|x| walk(x, out)),
                }
            }
            serde_json::Value::Object(map) => map.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    pigeon_client::install_sqlcipher();
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.pragma_update(None, "key", PASS).expect("key");
    let mut stmt = conn
        .prepare(
            "SELECT group_data FROM openmls_group_data
             WHERE data_type IN ('message_secrets', 'group_epoch_secrets', 'resumption_psk_store')",
        )
        .expect("query");
    let mut out = Vec::new();
    for blob in stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("rows")
    {
        let value: serde_json::Value =
            pigeon_client::StateCodec::read(&blob.expect("row")).expect("openmls's state");
        walk(&value, &mut out);
    }
    out
}

#[tokio::test]
async fn a_key_update_erases_the_old_epochs_keys_from_both_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (mut alice, mut bob) = pair(dir.path(), &relay.link).await;
    send_all(&mut alice, "bob", &texts("before", 3)).await;
    receive(&mut bob, 3).await;

    let bob_id = bob.profile().find_contact("alice").expect("alice").id;
    let alice_id = alice.profile().find_contact("bob").expect("bob").id;
    let (epoch, old) = bob.profile().epoch_authenticator(bob_id).expect("epoch");
    assert_eq!(
        alice
            .profile()
            .epoch_authenticator(alice_id)
            .expect("epoch")
            .1,
        old
    );
    let db = |c: &Client| c.profile().dir().join(DB_FILE);
    // Positive control: the current epoch's secrets are found in the decrypted pages.
    let mut old_secrets = vec![old.clone()];
    for c in [&alice, &bob] {
        let secrets = stored_secrets(&db(c));
        assert!(secrets.len() >= 6, "only {} secrets found", secrets.len());
        let pages = sqlcipher_pages(&db(c), PASS);
        assert!(
            holds(&pages, &old),
            "the scan finds the live epoch authenticator"
        );
        for s in &secrets {
            assert!(holds(&pages, s), "the scan finds every live secret");
        }
        old_secrets.extend(secrets);
    }

    // bob (who created the group) refreshes the keys; alice takes the commit and answers in
    // the new epoch, after which neither side needs anything older.
    let new_epoch = bob.profile().rekey(bob_id).expect("rekey");
    assert_eq!(new_epoch, epoch + 1);
    bob.flush(true).await.expect("flush");
    expect_event(&mut alice, |e| matches!(e, ClientEvent::Rekeyed { .. })).await;
    send_all(&mut alice, "bob", &["in the new epoch".to_owned()]).await;
    assert_eq!(receive(&mut bob, 1).await[0].text, "in the new epoch");
    send_all(&mut bob, "alice", &["and back".to_owned()]).await;
    assert_eq!(receive(&mut alice, 1).await[0].text, "and back");
    let (_, new) = bob.profile().epoch_authenticator(bob_id).expect("epoch");
    assert_ne!(new, old);
    drop((alice, bob));

    for name in ["alice", "bob"] {
        let path = dir.path().join(name).join(DB_FILE);
        let pages = sqlcipher_pages(&path, PASS);
        assert!(
            holds(&pages, &new),
            "{name}: positive control for the new epoch"
        );
        for (i, secret) in old_secrets.iter().enumerate() {
            assert!(
                !holds(&pages, secret),
                "{name}'s database still holds secret {i} of epoch {epoch} (still live: {})",
                stored_secrets(&path).contains(secret)
            );
        }
        for leftover in ["-journal", "-wal"] {
            let mut p = path.clone().into_os_string();
            p.push(leftover);
            assert!(!Path::new(&p).exists(), "{name}: {leftover} left behind");
        }
    }
}

/// A relay lets one session make 64 mailboxes and key-package publications (issue #13); a
/// client whose session made its quota is told once and goes on over a new connection.
#[tokio::test]
async fn a_client_goes_on_after_its_session_made_its_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let mut alice = person(dir.path(), "alice", &relay.link);
    let (mut made, mut refused) = (0, 0);
    // Each invitation makes a mailbox and publishes two key packages: three creations.
    for _ in 0..30 {
        match alice.invite().await {
            Ok(_) => made += 1,
            Err(e) if e.to_string().contains("connect again") => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((made, refused), (29, 1));
}
