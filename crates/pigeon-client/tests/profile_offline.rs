//! Two profiles talking through their outboxes, with no relay: the invitation flow, exactly-once
//! recording, refusal of tampered and replayed input, and the database at rest.

use pigeon_client::profile::{DB_FILE, OutboxItem};
use pigeon_client::{Handled, Invite, OwnedMailbox, Passphrase, Profile, ProfileError, Suite};
use pigeon_transport::{RelayLink, Route};

fn relay(n: u8) -> RelayLink {
    RelayLink::new(
        [n; 32],
        vec![
            format!("tcp://127.0.0.1:{}", 4000 + u16::from(n))
                .parse::<Route>()
                .expect("route"),
        ],
        None,
    )
    .expect("relay link")
}

fn pass() -> Passphrase {
    Passphrase::new("correct horse battery staple".to_owned())
}

/// Everything queued in `from`'s outbox, handed to `to` as a relay would, then dropped.
fn deliver(from: &Profile, to: &Profile) -> Vec<Handled> {
    let items: Vec<OutboxItem> = from.outbox().expect("outbox");
    let mut out = Vec::new();
    for item in items {
        out.push(
            to.handle_delivery(&item.mailbox, &item.message_id, &item.payload)
                .expect("handled"),
        );
        from.sent(item.id).expect("sent");
    }
    out
}

struct Pair {
    _dir: tempfile::TempDir,
    alice: Profile,
    bob: Profile,
}

fn pair(suite: Suite) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice =
        Profile::create(&dir.path().join("alice"), &pass(), "alice", &relay(1)).expect("alice");
    let bob = Profile::create(&dir.path().join("bob"), &pass(), "bob", &relay(2)).expect("bob");
    let prepared = alice.prepare_invite().expect("invite");
    let link = prepared.invite.to_link().expect("link");
    let invite = Invite::parse(&link).expect("parse");
    let index = invite
        .offers
        .iter()
        .position(|o| o.suite == suite)
        .expect("offer");
    let inbox = OwnedMailbox::generate().expect("mailbox");
    let contact = bob
        .accept(&invite, suite, &prepared.key_packages[index], &inbox, None)
        .expect("accept");
    assert_eq!(contact.name, "alice");
    let handled = deliver(&bob, &alice);
    assert!(
        matches!(handled.as_slice(), [Handled::NewContact(c)] if c.name == "bob" && c.suite == suite),
        "{handled:?}"
    );
    let handled = deliver(&alice, &bob);
    assert!(
        matches!(handled.as_slice(), [Handled::Intro { .. }]),
        "{handled:?}"
    );
    Pair {
        _dir: dir,
        alice,
        bob,
    }
}

fn texts(handled: &[Handled]) -> Vec<String> {
    handled
        .iter()
        .filter_map(|h| match h {
            Handled::Message { message, .. } => Some(message.text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn invitation_conversation_and_exactly_once() {
    let p = pair(Suite::XWing);
    let bob_at_alice = p.alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = p.bob.find_contact("ALICE").expect("case-insensitive").id;
    for i in 0..3 {
        p.alice
            .compose(bob_at_alice, &format!("ping {i}"))
            .expect("compose");
    }
    let items = p.alice.outbox().expect("outbox");
    // Redelivery of the same relay message (a lost acknowledgement) is recognised.
    let first = &items[0];
    let again = p
        .bob
        .handle_delivery(&first.mailbox, &first.message_id, &first.payload)
        .expect("first");
    assert!(matches!(again, Handled::Message { .. }));
    let dup = p
        .bob
        .handle_delivery(&first.mailbox, &first.message_id, &first.payload)
        .expect("again");
    assert!(matches!(dup, Handled::Duplicate), "{dup:?}");
    // The same ciphertext under a new relay id is a replay: dropped, state intact.
    let replay = p
        .bob
        .handle_delivery(&first.mailbox, &[7; 16], &first.payload)
        .expect("replay");
    assert!(
        matches!(&replay, Handled::Dropped(r) if r.contains("replayed")),
        "{replay:?}"
    );
    // Tampered: dropped, state intact.
    let mut tampered = items[1].payload.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x40;
    let t = p
        .bob
        .handle_delivery(&items[1].mailbox, &[8; 16], &tampered)
        .expect("tampered");
    assert!(matches!(t, Handled::Dropped(_)), "{t:?}");
    let garbage = p
        .bob
        .handle_delivery(&items[1].mailbox, &[9; 16], &[0xff; 77])
        .expect("garbage");
    assert!(matches!(garbage, Handled::Dropped(_)), "{garbage:?}");
    p.alice.sent(first.id).expect("sent");
    assert_eq!(texts(&deliver(&p.alice, &p.bob)), ["ping 1", "ping 2"]);
    let unread = p.bob.take_unread(None).expect("unread");
    assert_eq!(
        unread.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["ping 0", "ping 1", "ping 2"]
    );
    assert!(p.bob.take_unread(None).expect("unread").is_empty());
    p.bob.compose(alice_at_bob, "pong").expect("compose");
    assert_eq!(texts(&deliver(&p.bob, &p.alice)), ["pong"]);
    assert!(matches!(
        p.alice.compose(bob_at_alice, "   "),
        Err(ProfileError::Invalid(_))
    ));
    assert!(matches!(
        p.alice.find_contact("carol"),
        Err(ProfileError::NoContact(_))
    ));
}

#[test]
fn classic_suite_fallback_converses() {
    let p = pair(Suite::Classic);
    let id = p.bob.find_contact("alice").expect("alice").id;
    p.bob.compose(id, "classic hello").expect("compose");
    assert_eq!(texts(&deliver(&p.bob, &p.alice)), ["classic hello"]);
}

#[test]
fn only_the_holder_of_the_link_can_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Profile::create(&dir.path().join("a"), &pass(), "alice", &relay(1)).expect("alice");
    let mallory = Profile::create(&dir.path().join("m"), &pass(), "mallory", &relay(3)).expect("m");
    let prepared = alice.prepare_invite().expect("invite");
    // Mallory (say, the relay) has the key package and mailbox but not the link's secret.
    let mut forged = prepared.invite.clone();
    forged.secret = [0x55; 32];
    let inbox = OwnedMailbox::generate().expect("mailbox");
    mallory
        .accept(
            &forged,
            Suite::XWing,
            &prepared.key_packages[0],
            &inbox,
            None,
        )
        .expect("mallory builds a join");
    let handled = deliver(&mallory, &alice);
    assert!(
        matches!(handled.as_slice(), [Handled::Dropped(r)] if r.contains("does not hold the invitation")),
        "{handled:?}"
    );
    assert!(alice.contacts().expect("contacts").is_empty());
    // A key package that is not the inviter's is refused before anything is sent.
    let other = mallory.prepare_invite().expect("invite");
    let err = mallory
        .accept(
            &prepared.invite,
            Suite::XWing,
            &other.key_packages[0],
            &inbox,
            None,
        )
        .expect_err("wrong key package");
    assert!(err.to_string().contains("not the inviter's"), "{err}");
}

#[test]
fn database_is_encrypted_and_needs_the_passphrase() {
    let p = pair(Suite::XWing);
    let id = p.alice.find_contact("bob").expect("bob").id;
    p.alice
        .compose(id, "PLAINTEXT-MARKER-7f3a visible only to bob")
        .expect("compose");
    deliver(&p.alice, &p.bob);
    for profile in [&p.alice, &p.bob] {
        let path = profile.dir().join(DB_FILE);
        let bytes = std::fs::read(&path).expect("read db");
        for needle in [
            &b"PLAINTEXT-MARKER-7f3a"[..],
            b"SQLite format 3",
            b"alice",
            b"bob",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds {:?} in the clear",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
        let wrong = Profile::open(profile.dir(), &Passphrase::new("wrong".to_owned()));
        assert!(
            matches!(wrong, Err(ProfileError::WrongPassphrase(_))),
            "{wrong:?}"
        );
    }
    let reopened = Profile::open(p.bob.dir(), &pass()).expect("reopen");
    let unread = reopened.take_unread(None).expect("unread");
    assert_eq!(unread[0].text, "PLAINTEXT-MARKER-7f3a visible only to bob");
}
