//! Profiles made by the release before conversations became groups of two (schema 3, commit
//! 404818f) open with this one and keep talking (issue #14). The fixture in
//! `fixtures/schema3` was made with that release's binary, as `fixtures/schema3/README.md`
//! says: a relay's data directory, alice and bob who talked over it (bob has one message he
//! never read), and an invitation alice made and nobody accepted yet.

#[path = "support.rs"]
mod support;

use pigeon_client::{Passphrase, Profile};
use std::path::{Path, PathBuf};
use support::{Relay, RelayOpts, client_ok};

const PASS: &str = "fixture passphrase";
/// The fixture relay's address, which its profiles' links name.
const LISTEN: &str = "127.83.41.7:47213";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema3")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn texts(profile: &Path, contact: &str) -> Vec<(bool, String)> {
    let p = Profile::open(profile, &Passphrase::new(PASS.to_owned())).expect("open");
    let id = p.find_contact(contact).expect("contact").id;
    p.history(Some(id), 100)
        .expect("history")
        .into_iter()
        .map(|m| (m.outgoing, m.text))
        .collect()
}

#[test]
fn a_profile_of_the_previous_release_keeps_its_conversations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("fx");
    copy_dir(&fixture(), &root);
    let mut opts = RelayOpts::in_dir(dir.path());
    opts.data = root.join("relay");
    opts.listen = LISTEN.to_owned();
    let relay = Relay::start(opts);
    let link = std::fs::read_to_string(root.join("relay-link.txt")).expect("link");
    assert_eq!(relay.link.to_string(), link.trim(), "the fixture's relay");
    let (alice, bob) = (root.join("alice"), root.join("bob"));

    // Opening migrates: contacts and history are all there.
    let contacts = client_ok(&bob, PASS, &["contacts"]);
    assert!(contacts.contains("alice"), "{contacts}");
    assert_eq!(
        texts(&alice, "bob"),
        [
            (true, "hello from before the upgrade".to_owned()),
            (false, "and back, also before".to_owned()),
            (true, "one bob has not read yet".to_owned()),
        ]
    );
    // What waited on the relay arrives; the conversation goes on both ways.
    let read = client_ok(&bob, PASS, &["read", "--wait", "0.5"]);
    assert!(read.contains("one bob has not read yet"), "{read}");
    client_ok(&alice, PASS, &["send", "bob", "after the upgrade"]);
    let read = client_ok(&bob, PASS, &["read", "--wait", "0.5"]);
    assert!(read.contains("after the upgrade"), "{read}");
    client_ok(&bob, PASS, &["send", "alice", "and back after it"]);
    let read = client_ok(&alice, PASS, &["read", "--wait", "0.5"]);
    assert!(read.contains("and back after it"), "{read}");

    // The invitation alice made before the upgrade still works, and what it starts is a
    // conversation of two on a log.
    let carol = dir.path().join("carol");
    client_ok(
        &carol,
        PASS,
        &[
            "init",
            "--name",
            "carol",
            "--relay",
            relay.link.to_string().as_str(),
        ],
    );
    let pending = std::fs::read_to_string(root.join("pending-invite.txt")).expect("invite");
    let accepted = client_ok(&carol, PASS, &["accept", pending.trim()]);
    assert!(accepted.contains("talk with alice"), "{accepted}");
    let read = client_ok(&alice, PASS, &["read", "--wait", "0.5"]);
    assert!(read.contains("carol accepted your invitation"), "{read}");
    client_ok(&carol, PASS, &["send", "alice", "hello on a log"]);
    let read = client_ok(&alice, PASS, &["read", "--wait", "0.5"]);
    assert!(read.contains("hello on a log"), "{read}");
    let carol_at_alice = Profile::open(&alice, &Passphrase::new(PASS.to_owned()))
        .expect("open")
        .logs()
        .expect("logs");
    assert_eq!(carol_at_alice.len(), 1, "carol's conversation is a log");
    relay.assert_no_panic();
}
