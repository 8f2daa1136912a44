//! Two profiles talking through their outboxes and a relay in memory: the invitation flow (a
//! conversation of two on a log), exactly-once recording, refusal of tampered and replayed
//! input, receipts, key refreshes on both sides, and the database at rest.

use pigeon_client::profile::DB_FILE;
use pigeon_client::{Handled, Invite, OwnedMailbox, Passphrase, Profile, ProfileError, Suite};
use pigeon_transport::{RelayLink, Route};
use std::collections::BTreeMap;

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

/// Relays in memory: one-way mailboxes hand each message to their owner once; a log (on each
/// relay that holds a copy of it) gives each post the next position and hands the whole log to
/// every profile that reads it (its poster included), as a relay's pushes from each reader's
/// cursor would. A profile may be cut off from a relay (`blocked`): its posts there wait, or
/// take a log's mirror as the client's flush does, and it reads nothing from there.
#[derive(Default)]
struct Relay {
    logs: BTreeMap<(String, [u8; 32]), Vec<Entry>>,
    /// Per log copy, how many of the first entries expired (the relay no longer hands them out).
    expired: BTreeMap<(String, [u8; 32]), usize>,
    /// (profile index, relay link) pairs that cannot reach each other.
    blocked: std::collections::BTreeSet<(usize, String)>,
}

/// A log entry: the relay message id and the envelope.
type Entry = ([u8; 16], Vec<u8>);

impl Relay {
    /// Moves everything queued anywhere until nothing moves (bounded). Returns what each
    /// profile handled, in order.
    fn run(&mut self, profiles: &[&Profile]) -> Vec<Vec<Handled>> {
        let mut out: Vec<Vec<Handled>> = profiles.iter().map(|_| Vec::new()).collect();
        for _ in 0..30 {
            let mut moved = false;
            for (i, from) in profiles.iter().enumerate() {
                for item in from.outbox().expect("outbox") {
                    let item = if self.blocked.contains(&(i, item.relay.clone())) {
                        match from.via_mirror(&item).expect("via mirror") {
                            Some(detour) if !self.blocked.contains(&(i, detour.relay.clone())) => {
                                detour
                            }
                            _ => continue,
                        }
                    } else {
                        item
                    };
                    moved = true;
                    if profiles
                        .iter()
                        .any(|p| p.is_log(&item.mailbox).expect("is_log"))
                    {
                        let log = self
                            .logs
                            .entry((item.relay.clone(), item.mailbox))
                            .or_default();
                        // The relay keeps one message per id.
                        if !log.iter().any(|(id, _)| *id == item.message_id) {
                            log.push((item.message_id, item.payload.clone()));
                        }
                    } else {
                        let owner = profiles
                            .iter()
                            .position(|p| {
                                p.inboxes()
                                    .expect("inboxes")
                                    .iter()
                                    .any(|i| i.mailbox == item.mailbox)
                            })
                            .expect("a mailbox somebody reads");
                        out[owner].push(
                            profiles[owner]
                                .handle_delivery(&item.mailbox, &item.message_id, &item.payload)
                                .expect("handled"),
                        );
                    }
                    from.sent(item.id).expect("sent");
                }
            }
            for (i, p) in profiles.iter().enumerate() {
                for ((relay, log), entries) in &self.logs {
                    if !p.is_log(log).expect("is_log") || self.blocked.contains(&(i, relay.clone()))
                    {
                        continue;
                    }
                    let key = *relay.parse::<RelayLink>().expect("relay").relay_key();
                    let gone = self
                        .expired
                        .get(&(relay.clone(), *log))
                        .copied()
                        .unwrap_or(0);
                    let batch: Vec<(u64, &[u8], &[u8])> = entries
                        .iter()
                        .enumerate()
                        .skip(gone)
                        .map(|(n, (id, payload))| (n as u64 + 1, &id[..], payload.as_slice()))
                        .collect();
                    out[i].extend(p.handle_log_deliveries_on(&key, log, &batch).expect("log"));
                }
            }
            if !moved {
                return out;
            }
        }
        panic!("messages kept moving after 30 rounds");
    }

    /// Everything in every log so far expires.
    fn expire_all(&mut self) {
        for (copy, entries) in &self.logs {
            self.expired.insert(copy.clone(), entries.len());
        }
    }

    /// The one log (a conversation of two) and its entries, on its first relay.
    fn log(&self) -> ([u8; 32], &[Entry]) {
        let ((_, id), entries) = self.logs.iter().next().expect("a log");
        (*id, entries)
    }
}

struct Pair {
    _dir: tempfile::TempDir,
    alice: Profile,
    bob: Profile,
    relay: Relay,
}

impl Pair {
    /// Runs the relay; returns what (alice, bob) handled.
    fn run(&mut self) -> (Vec<Handled>, Vec<Handled>) {
        let mut out = self.relay.run(&[&self.alice, &self.bob]);
        let bob = out.pop().expect("bob");
        (out.pop().expect("alice"), bob)
    }
}

fn pair(suite: Suite) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice =
        Profile::create(&dir.path().join("alice"), &pass(), "alice", &relay(1)).expect("alice");
    let bob = Profile::create(&dir.path().join("bob"), &pass(), "bob", &relay(2)).expect("bob");
    let prepared = alice.prepare_invite(&relay(1)).expect("invite");
    let link = prepared.invite.to_link().expect("link");
    let invite = Invite::parse(&link).expect("parse");
    let index = invite
        .offers
        .iter()
        .position(|o| o.suite == suite)
        .expect("offer");
    let log = OwnedMailbox::generate().expect("log");
    let contact = bob
        .start_conversation(
            &invite,
            suite,
            &prepared.key_packages[index],
            &log,
            &relay(2),
            None,
        )
        .expect("accept");
    assert_eq!(contact.name, "alice");
    let mut p = Pair {
        _dir: dir,
        alice,
        bob,
        relay: Relay::default(),
    };
    let (at_alice, _) = p.run();
    assert!(
        matches!(at_alice.as_slice(), [Handled::NewContact(c)] if c.name == "bob" && c.suite == suite),
        "{at_alice:?}"
    );
    // The invitation's mailbox is spent: it is deleted on the relay, and the link opens nothing.
    let spent = p.alice.spent_mailboxes().expect("spent");
    assert!(
        spent.iter().any(|m| m.mailbox == invite.mailbox_id),
        "the invitation's mailbox is to be deleted"
    );
    p
}

/// alice makes a group, "club", and bob joins it through her invitation; alice's view of it.
fn club(alice: &Profile, bob: &Profile, mem: &mut Relay) -> pigeon_client::GroupInfo {
    let club = alice
        .create_group("club", &relay(1), &OwnedMailbox::generate().expect("log"))
        .expect("group");
    let prepared = alice
        .prepare_group_invite(club.id, &relay(1))
        .expect("invite");
    let invite = Invite::parse(&prepared.invite.to_link().expect("link")).expect("parse");
    bob.request_group_join(
        &invite,
        &OwnedMailbox::generate().expect("reply"),
        &relay(2),
    )
    .expect("join");
    mem.run(&[alice, bob]);
    club
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
    let mut p = pair(Suite::XWing);
    let bob_at_alice = p.alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = p.bob.find_contact("ALICE").expect("case-insensitive").id;
    for i in 0..3 {
        p.alice
            .compose(bob_at_alice, &format!("ping {i}"))
            .expect("compose");
    }
    let (_, at_bob) = p.run();
    assert_eq!(texts(&at_bob), ["ping 0", "ping 1", "ping 2"]);
    // Redelivery of the log (a lost acknowledgement, a reconnect) is recognised.
    let (log, entries) = p.relay.log();
    let all: Vec<(u64, &[u8], &[u8])> = entries
        .iter()
        .enumerate()
        .map(|(n, (id, payload))| (n as u64 + 1, &id[..], payload.as_slice()))
        .collect();
    let again = p.bob.handle_log_deliveries(&log, &all).expect("again");
    assert!(texts(&again).is_empty(), "{again:?}");
    // The same ciphertext at a new place in the log is a replay; tampered bytes and garbage
    // are refused; the state is intact after each.
    let next = all.len() as u64 + 1;
    let (_, first) = entries.last().expect("an entry");
    let mut tampered = first.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x40;
    let bad = [
        (next, &[7u8; 16][..], first.as_slice()),
        (next + 1, &[8u8; 16][..], tampered.as_slice()),
        (next + 2, &[9u8; 16][..], &[0xff; 77][..]),
    ];
    let refused = p.bob.handle_log_deliveries(&log, &bad).expect("bad");
    assert!(
        refused.iter().all(|h| matches!(h, Handled::Dropped(_))),
        "{refused:?}"
    );
    let unread = p.bob.take_unread(None).expect("unread");
    assert_eq!(
        unread.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["ping 0", "ping 1", "ping 2"]
    );
    assert!(p.bob.take_unread(None).expect("unread").is_empty());
    // Receipts mark alice's messages delivered.
    let ids: Vec<Vec<u8>> = at_bob
        .iter()
        .filter_map(|h| match h {
            Handled::Message { content_id, .. } => Some(content_id.clone()),
            _ => None,
        })
        .collect();
    p.bob.compose_receipt(alice_at_bob, ids).expect("receipt");
    p.bob.compose(alice_at_bob, "pong").expect("compose");
    let (at_alice, _) = p.run();
    assert_eq!(texts(&at_alice), ["pong"]);
    assert!(
        at_alice
            .iter()
            .any(|h| matches!(h, Handled::Receipt { delivered: 3, .. })),
        "{at_alice:?}"
    );
    let history = p.alice.history(Some(bob_at_alice), 10).expect("history");
    assert_eq!(
        history
            .iter()
            .map(|m| (m.outgoing, m.delivered))
            .collect::<Vec<_>>(),
        [(true, true), (true, true), (true, true), (false, false)]
    );
    // bob read them (take_unread above): his device told alice's, once per line.
    assert_eq!(
        history.iter().map(|m| m.seen).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    // With read receipts off, bob's reading tells nobody.
    assert!(p.bob.read_receipts().expect("setting"));
    p.bob.set_read_receipts(false).expect("off");
    p.alice.compose(bob_at_alice, "ping 3").expect("compose");
    p.run();
    assert_eq!(p.bob.take_unread(None).expect("unread").len(), 1);
    p.run();
    let last = p.alice.history(Some(bob_at_alice), 1).expect("history");
    assert_eq!(last[0].text, "ping 3");
    assert!(!last[0].seen, "a read receipt went out while they were off");
    assert!(matches!(
        p.alice.compose(bob_at_alice, "   "),
        Err(ProfileError::Invalid(_))
    ));
    assert!(matches!(
        p.alice.find_contact("carol"),
        Err(ProfileError::NoContact(_))
    ));
    // A conversation of two is not listed among groups.
    assert!(p.alice.groups().expect("groups").is_empty());
}

#[test]
fn both_sides_refresh_their_keys() {
    let mut p = pair(Suite::XWing);
    let bob_at_alice = p.alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = p.bob.find_contact("alice").expect("alice").id;
    let (e0, a0) = p.alice.epoch_authenticator(bob_at_alice).expect("epoch");
    // The inviter, who never committed in the first design, refreshes its own leaf.
    p.alice.rekey(bob_at_alice).expect("alice rekeys");
    p.run();
    let (e1, a1) = p.alice.epoch_authenticator(bob_at_alice).expect("epoch");
    assert_eq!(e1, e0 + 1);
    assert_ne!(a0, a1);
    assert_eq!(
        p.bob.epoch_authenticator(alice_at_bob).expect("epoch"),
        (e1, a1)
    );
    p.bob.rekey(alice_at_bob).expect("bob rekeys");
    p.bob
        .compose(alice_at_bob, "after both refreshed")
        .expect("compose");
    let (at_alice, _) = p.run();
    assert_eq!(texts(&at_alice), ["after both refreshed"]);
    assert_eq!(
        p.alice.epoch_authenticator(bob_at_alice).expect("epoch"),
        p.bob.epoch_authenticator(alice_at_bob).expect("epoch")
    );
    // Both see the same safety number.
    let (_, at_alice_number, _) = p.alice.contact_safety_number(bob_at_alice).expect("number");
    let (_, at_bob_number, _) = p.bob.contact_safety_number(alice_at_bob).expect("number");
    assert_eq!(at_alice_number, at_bob_number);
}

#[test]
fn a_conversation_tells_what_it_missed() {
    let p = pair(Suite::XWing);
    let bob_at_alice = p.alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = p.bob.find_contact("alice").expect("alice").id;
    p.alice
        .compose(bob_at_alice, "lost on the relay")
        .expect("compose");
    p.alice
        .compose(bob_at_alice, "this one arrives")
        .expect("compose");
    // The relay kept only the second (the first expired before bob read it).
    let items = p.alice.outbox().expect("outbox");
    let log = items[1].mailbox;
    let handled = p
        .bob
        .handle_log_deliveries(
            &log,
            &[(2, &items[1].message_id[..], &items[1].payload[..])],
        )
        .expect("log");
    assert_eq!(texts(&handled), ["this one arrives"]);
    let history = p.bob.history(Some(alice_at_bob), 10).expect("history");
    assert_eq!(
        history
            .iter()
            .map(|m| (m.notice, m.text.contains("expired on the relay")))
            .collect::<Vec<_>>(),
        [(true, true), (false, false)],
        "{history:?}"
    );
    // Unread includes the notice, once.
    assert_eq!(p.bob.take_unread(None).expect("unread").len(), 2);
    assert!(p.bob.take_unread(None).expect("unread").is_empty());
}

/// A post goes to a relay as a first attempt once, only from the process that queued it: a
/// second hand-over, or the same post after the profile was opened again (it may have reached
/// a relay before a crash), is a possible retry.
#[test]
fn a_post_is_a_first_attempt_once_and_only_in_the_process_that_queued_it() {
    let p = pair(Suite::XWing);
    let bob = p.alice.find_contact("bob").expect("bob").id;
    p.alice.compose(bob, "one").expect("compose");
    p.alice.compose(bob, "two").expect("compose");
    let items = p.alice.outbox().expect("outbox");
    let (one, two) = (items[0].message_id, items[1].message_id);
    assert!(p.alice.take_first_attempt(&one));
    assert!(!p.alice.take_first_attempt(&one), "handed over already");
    let reopened = Profile::open(p.alice.dir(), &pass()).expect("reopen");
    assert!(
        !reopened.take_first_attempt(&two),
        "queued by another process"
    );
    assert!(p.alice.take_first_attempt(&two));
    assert!(!p.alice.take_first_attempt(&[7; 16]), "never queued");
}

#[test]
fn classic_suite_fallback_converses() {
    let mut p = pair(Suite::Classic);
    let id = p.bob.find_contact("alice").expect("alice").id;
    p.bob.compose(id, "classic hello").expect("compose");
    let (at_alice, _) = p.run();
    assert_eq!(texts(&at_alice), ["classic hello"]);
}

#[test]
fn only_the_holder_of_the_link_can_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Profile::create(&dir.path().join("a"), &pass(), "alice", &relay(1)).expect("alice");
    let mallory = Profile::create(&dir.path().join("m"), &pass(), "mallory", &relay(3)).expect("m");
    let prepared = alice.prepare_invite(&relay(1)).expect("invite");
    // Mallory (say, the relay) has the key package and mailbox but not the link's secret.
    let mut forged = prepared.invite.clone();
    forged.secret = [0x55; 32];
    let log = OwnedMailbox::generate().expect("log");
    mallory
        .start_conversation(
            &forged,
            Suite::XWing,
            &prepared.key_packages[0],
            &log,
            &relay(3),
            None,
        )
        .expect("mallory builds a Welcome");
    let mut memory = Relay::default();
    let handled = memory.run(&[&alice, &mallory]);
    assert!(
        matches!(handled[0].as_slice(), [Handled::Dropped(r)] if r.contains("invitation's key")),
        "{handled:?}"
    );
    assert!(alice.contacts().expect("contacts").is_empty());
    // A key package that is not the inviter's is refused before anything is sent.
    let other = mallory.prepare_invite(&relay(3)).expect("invite");
    let err = mallory
        .start_conversation(
            &prepared.invite,
            Suite::XWing,
            &other.key_packages[0],
            &log,
            &relay(3),
            None,
        )
        .expect_err("wrong key package");
    assert!(err.to_string().contains("not the inviter's"), "{err}");
}

#[test]
fn database_is_encrypted_and_needs_the_passphrase() {
    let mut p = pair(Suite::XWing);
    let id = p.alice.find_contact("bob").expect("bob").id;
    p.alice
        .compose(id, "PLAINTEXT-MARKER-7f3a visible only to bob")
        .expect("compose");
    p.run();
    for profile in [&p.alice, &p.bob] {
        let path = profile.dir().join(DB_FILE);
        let bytes = std::fs::read(&path).expect("read db");
        // Names only from five bytes up: "bob" would turn up in random ciphertext by chance.
        for needle in [&b"PLAINTEXT-MARKER-7f3a"[..], b"SQLite format 3", b"alice"] {
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

/// The route that last worked is remembered per network and relay, replaced by a newer winner,
/// survives reopening, and the memory is bounded.
#[test]
fn route_memory_is_per_network_and_bounded() {
    use pigeon_client::network::NetworkId;
    use pigeon_client::profile::ROUTE_MEMORY;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p");
    let home = NetworkId([1; 16]);
    let mobile = NetworkId([2; 16]);
    let relay_key = [7u8; 32];
    {
        let p = Profile::create(&path, &pass(), "a", &relay(1)).expect("create");
        assert_eq!(p.route_worked(&home, &relay_key).expect("read"), None);
        p.save_route_worked(&home, &relay_key, "tls://relay.example:443")
            .expect("save");
        p.save_route_worked(&mobile, &relay_key, "tls://relay.example:443 via hop")
            .expect("save");
        p.save_route_worked(&home, &relay_key, "tcp://relay.example:4433")
            .expect("save");
    }
    let p = Profile::open(&path, &pass()).expect("reopen");
    assert_eq!(
        p.route_worked(&home, &relay_key).expect("read").as_deref(),
        Some("tcp://relay.example:4433")
    );
    assert_eq!(
        p.route_worked(&mobile, &relay_key)
            .expect("read")
            .as_deref(),
        Some("tls://relay.example:443 via hop")
    );
    // Many networks later, the oldest entries are gone and the newest kept.
    for n in 0..ROUTE_MEMORY + 10 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[15] = 9;
        p.save_route_worked(&NetworkId(id), &relay_key, "r")
            .expect("save");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(p.route_worked(&home, &relay_key).expect("read"), None);
    let mut last = [0u8; 16];
    last[..8].copy_from_slice(&(ROUTE_MEMORY + 9).to_be_bytes());
    last[15] = 9;
    assert!(
        p.route_worked(&NetworkId(last), &relay_key)
            .expect("read")
            .is_some()
    );
}

/// A relay's new link (same key, new routes: its operator rotated a leaked secret) replaces
/// the old one everywhere the profile keeps it, so its conversations go on through it; a new
/// relay is added after the others; the same link twice changes nothing.
#[test]
fn a_relays_new_link_replaces_the_old_one_everywhere() {
    use pigeon_client::RelayAdded;
    let p = pair(Suite::XWing);
    let rotated = RelayLink::new(
        [2; 32],
        vec!["tcp://127.0.0.1:5002".parse::<Route>().expect("route")],
        None,
    )
    .expect("relay link");
    let logs_before = p.bob.logs().expect("logs");
    assert!(!logs_before.is_empty());
    assert!(logs_before.iter().all(|l| l.relay == relay(2).to_string()));
    match p.bob.add_relay(&rotated).expect("add") {
        RelayAdded::Updated(n) => assert!(n >= 2, "{n} rows"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.bob.relay().expect("relay"), rotated);
    assert_eq!(p.bob.relays().expect("relays"), vec![rotated.clone()]);
    assert!(
        p.bob
            .logs()
            .expect("logs")
            .iter()
            .all(|l| l.relay == rotated.to_string())
    );
    assert_eq!(
        p.bob.add_relay(&rotated).expect("again"),
        RelayAdded::AlreadyThere
    );
    assert_eq!(p.bob.add_relay(&relay(9)).expect("new"), RelayAdded::Added);
    assert_eq!(p.bob.relays().expect("relays"), vec![rotated, relay(9)]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn notices(profile: &Profile) -> Vec<String> {
    profile
        .history(None, 1000)
        .expect("history")
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// Issue #14: a device that missed commits for good (they expired on the relay while it was
/// away) asks to be taken back and is, by the other side's device, without anyone doing
/// anything; then both talk on. A copy of the same device's state from before its last key
/// refresh asks too and stays out.
#[test]
fn a_device_that_fell_behind_is_taken_back_and_an_old_copy_is_not() {
    let Pair {
        _dir: dir,
        alice,
        bob,
        mut relay,
    } = pair(Suite::XWing);
    let bob_at_alice = alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = bob.find_contact("alice").expect("alice").id;
    // A copy of alice's whole profile, taken now.
    let alice_dir = dir.path().join("alice");
    drop(alice);
    let copy_dir_path = dir.path().join("alice-copy");
    copy_dir(&alice_dir, &copy_dir_path);
    let alice = Profile::open(&alice_dir, &pass()).expect("alice");
    let copy = Profile::open(&copy_dir_path, &pass()).expect("copy");
    // alice refreshes her keys: the copy's ticket is now an old one.
    alice.rekey(bob_at_alice).expect("alice rekeys");
    relay.run(&[&alice, &bob]);
    // alice and her copy are away; bob refreshes twice and talks; the relay then drops all
    // of it (expiry).
    for _ in 0..2 {
        bob.rekey(alice_at_bob).expect("bob rekeys");
        relay.run(&[&bob]);
    }
    bob.compose(alice_at_bob, "while you were away")
        .expect("compose");
    relay.run(&[&bob]);
    relay.expire_all();
    bob.compose(alice_at_bob, "after the expiry")
        .expect("compose");
    relay.run(&[&bob]);
    // The copy comes back first: it falls behind and asks, and bob's device ignores it.
    let out = relay.run(&[&copy, &bob]);
    assert!(texts(&out[1]).is_empty());
    let at_copy = notices(&copy);
    assert!(
        at_copy.iter().any(|t| t.contains("fell behind")),
        "{at_copy:?}"
    );
    assert!(
        !notices(&bob)
            .iter()
            .any(|t| t.contains("asked to be taken back")),
        "bob's device saw the old copy's request as valid"
    );
    // alice comes back: she falls behind, asks, bob's device takes her back, and she reads on
    // from there.
    relay.run(&[&alice, &bob, &copy]);
    let at_alice = notices(&alice);
    assert!(
        at_alice.iter().any(|t| t.contains("fell behind")),
        "{at_alice:?}"
    );
    assert!(
        at_alice.iter().any(|t| t.contains("this device is back")),
        "{at_alice:?}"
    );
    assert!(
        notices(&bob).iter().any(|t| t.contains("took it back")),
        "{:?}",
        notices(&bob)
    );
    assert_eq!(
        alice.epoch_authenticator(bob_at_alice).expect("epoch"),
        bob.epoch_authenticator(alice_at_bob).expect("epoch")
    );
    alice.compose(bob_at_alice, "I am back").expect("compose");
    bob.compose(alice_at_bob, "welcome back").expect("compose");
    let out = relay.run(&[&alice, &bob, &copy]);
    assert_eq!(texts(&out[0]), ["welcome back"]);
    assert_eq!(texts(&out[1]), ["I am back"]);
    assert!(texts(&out[2]).is_empty(), "the old copy reads on");
    // Nothing from before alice was taken back reaches her twice or out of order, and what
    // expired stays lost to her (said in the transcript).
    let lines = notices(&alice);
    assert!(!lines.iter().any(|t| t == "while you were away"));
    assert_eq!(lines.iter().filter(|t| *t == "welcome back").count(), 1);
}

/// Issue #15: a conversation's log has a mirror on a second relay. With the home relay cut
/// off for one of the two, that one reads everything through the mirror (kept in the home
/// relay's order by the first admin's device), and what it sends — a message, a key
/// refresh — reaches the home relay's order through the mirror's keeper: both transcripts
/// agree, nothing shows twice, and both end in the same epoch.
#[test]
fn a_conversation_goes_on_through_its_mirror_when_its_home_relay_is_cut_off() {
    let mut p = pair(Suite::XWing);
    let bob_at_alice = p.alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = p.bob.find_contact("alice").expect("alice").id;
    let log = p.bob.logs().expect("logs")[0].log_id;
    // bob started the conversation on his relay (2); he gives it a mirror on relay 1.
    p.bob.set_log_mirror(&log, Some(&relay(1))).expect("mirror");
    p.run();
    let at_alice = p.alice.log_copies(&log).expect("copies");
    let at_bob = p.bob.log_copies(&log).expect("copies");
    assert_eq!(
        at_alice.mirror,
        Some(relay(1).to_string()),
        "alice learned the mirror"
    );
    assert_eq!(at_bob.home, relay(2).to_string());
    assert!(
        at_alice.keeper && at_bob.keeper,
        "both admins keep the mirror"
    );
    // bob is cut off from the home relay (his own): alice keeps the mirror for him.
    let (keeper, other, keeper_sees_other, other_sees_keeper) =
        (&p.alice, &p.bob, bob_at_alice, alice_at_bob);
    let other_index = 1;
    p.relay.blocked.insert((other_index, relay(2).to_string()));
    let profiles = [&p.alice, &p.bob];
    keeper
        .compose(keeper_sees_other, "from the keeper")
        .expect("compose");
    let out = p.relay.run(&profiles);
    assert_eq!(texts(&out[other_index]), ["from the keeper"]);
    other
        .compose(other_sees_keeper, "from behind the block")
        .expect("compose");
    let out = p.relay.run(&profiles);
    assert_eq!(texts(&out[1 - other_index]), ["from behind the block"]);
    // A change (a key refresh) made behind the block lands in the home relay's order too.
    let (e0, _) = other.epoch_authenticator(other_sees_keeper).expect("epoch");
    other.rekey(other_sees_keeper).expect("rekey");
    p.relay.run(&profiles);
    let after = other.epoch_authenticator(other_sees_keeper).expect("epoch");
    assert_eq!(after.0, e0 + 1, "the refresh landed");
    assert_eq!(
        keeper
            .epoch_authenticator(keeper_sees_other)
            .expect("epoch"),
        after
    );
    other
        .compose(other_sees_keeper, "after my refresh")
        .expect("compose");
    keeper
        .compose(keeper_sees_other, "and after it")
        .expect("compose");
    let out = p.relay.run(&profiles);
    assert_eq!(texts(&out[1 - other_index]), ["after my refresh"]);
    assert_eq!(texts(&out[other_index]), ["and after it"]);
    // The mirror's relay cannot make entries up: one renumbered far ahead, with a real
    // entry inside but no valid tag, counts nowhere, and the conversation goes on.
    let real = p.relay.logs[&(relay(2).to_string(), log)][0].1.clone();
    let forged = pigeon_e2ee::Envelope {
        kind: Some(pigeon_e2ee::content::envelope::Kind::Forwarded(
            pigeon_e2ee::content::Forwarded {
                home_seq: 1 << 40,
                message_id: vec![3; 16],
                payload: real,
                mac: vec![0; 32],
            },
        )),
    };
    p.relay
        .logs
        .get_mut(&(relay(1).to_string(), log))
        .expect("the mirror")
        .push(([4; 16], prost::Message::encode_to_vec(&forged)));
    let out = p.relay.run(&profiles);
    assert!(
        out[other_index]
            .iter()
            .any(|h| matches!(h, Handled::Dropped(r) if r.contains("does not verify"))),
        "{:?}",
        out[other_index]
    );
    keeper
        .compose(keeper_sees_other, "still flowing")
        .expect("compose");
    let out = p.relay.run(&profiles);
    assert_eq!(texts(&out[other_index]), ["still flowing"]);
    // The mirror holds the home relay's entries; the home relay holds what was sent from
    // behind the block.
    let home = &p.relay.logs[&(relay(2).to_string(), log)];
    let mirror = &p.relay.logs[&(relay(1).to_string(), log)];
    assert!(
        mirror.len() >= home.len(),
        "{} vs {}",
        mirror.len(),
        home.len()
    );
    // Both transcripts agree and nothing shows twice.
    let lines = |who: &Profile, contact| {
        who.history(Some(contact), 100)
            .expect("history")
            .into_iter()
            .filter(|m| !m.notice)
            .map(|m| m.text)
            .collect::<Vec<_>>()
    };
    // What the cut-off side sent (receipts too) all went through the mirror; what it holds
    // is only what it carries home for the log (its own detoured posts, which the other
    // keeper carried already), waiting quietly.
    assert!(
        other.outbox().expect("outbox").iter().all(|i| i.carried),
        "the cut-off side still holds its own posts"
    );
    let k = lines(keeper, keeper_sees_other);
    let o = lines(other, other_sees_keeper);
    assert_eq!(k.len(), 5, "{k:?}");
    let mut k_sorted = k.clone();
    let mut o_sorted = o.clone();
    k_sorted.sort();
    o_sorted.sort();
    assert_eq!(k_sorted, o_sorted);
}

/// Issue #14: a log entry too large for one relay message (a commit carrying the roster of a
/// group of hundreds; here any commit, with the limit made small) goes in parts and counts at
/// its last part: both sides apply it there, the committer sees it land, and they talk on.
#[test]
fn a_commit_too_large_for_one_relay_message_goes_in_parts() {
    let mut p = pair(Suite::XWing);
    let bob_at_alice = p.alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = p.bob.find_contact("alice").expect("alice").id;
    p.bob.set_max_log_entry(1_000);
    let log = p.bob.logs().expect("logs")[0].log_id;
    let count = |relay: &Relay| {
        relay
            .logs
            .iter()
            .filter(|((_, id), _)| *id == log)
            .map(|(_, e)| e.len())
            .sum::<usize>()
    };
    let before = count(&p.relay);
    let (e0, _) = p.bob.epoch_authenticator(alice_at_bob).expect("epoch");
    p.bob.rekey(alice_at_bob).expect("rekey");
    p.run();
    let entries = count(&p.relay) - before;
    assert!(entries >= 3, "the commit went as {entries} entries");
    let after = p.bob.epoch_authenticator(alice_at_bob).expect("epoch");
    assert_eq!(after.0, e0 + 1, "bob's commit landed");
    assert_eq!(
        p.alice.epoch_authenticator(bob_at_alice).expect("epoch"),
        after
    );
    p.alice
        .compose(bob_at_alice, "after the big commit")
        .expect("compose");
    let (_, at_bob) = p.run();
    assert_eq!(texts(&at_bob), ["after the big commit"]);
    // A part from a tampered relay (numbers out of range) is refused, and nothing breaks.
    let bad = pigeon_e2ee::Envelope {
        kind: Some(pigeon_e2ee::content::envelope::Kind::Part(
            pigeon_e2ee::content::Part {
                last: vec![7; 16],
                part: 5,
                parts: 2,
                bytes: vec![1, 2, 3],
            },
        )),
    };
    let n = count(&p.relay) as u64 + 1;
    let handled = p
        .alice
        .handle_log_deliveries(
            &log,
            &[(n, &[9u8; 16][..], &prost::Message::encode_to_vec(&bad)[..])],
        )
        .expect("handled");
    assert!(
        matches!(handled.as_slice(), [Handled::Dropped(_)]),
        "{handled:?}"
    );
}

/// Issue #16: alice links a second device. It gets her conversations (the one with bob and a
/// group of her own), each as a new leaf with fresh keys; bob's transcript says she added a
/// device; what either of her devices sends shows on the other as hers; and once removed, the
/// second device reads nothing new.
#[test]
fn a_linked_device_joins_every_conversation_and_a_removed_one_reads_nothing_new() {
    let Pair {
        _dir: dir,
        alice,
        bob,
        relay: mut mem,
    } = pair(Suite::XWing);
    let log = OwnedMailbox::generate().expect("log");
    alice.create_group("notes", &relay(1), &log).expect("group");
    alice
        .create_devices_group(&relay(1), &OwnedMailbox::generate().expect("log"))
        .expect("group of devices");
    alice
        .compose(
            alice.find_contact("bob").expect("bob").id,
            "before the laptop came",
        )
        .expect("compose");
    mem.run(&[&alice, &bob]);
    let prepared = alice.prepare_device_link(&relay(1), 30).expect("link");
    let text = prepared.link.to_link().expect("link text");
    let link = pigeon_client::DeviceLink::parse(&text).expect("parses");
    let laptop = Profile::create(&dir.path().join("laptop"), &pass(), &link.name, &link.relay)
        .expect("laptop");
    laptop.set_device_name("laptop").expect("name");
    let reply = OwnedMailbox::generate().expect("reply");
    laptop
        .follow_device_link(&link, &reply, &relay(1))
        .expect("follow");
    mem.run(&[&alice, &bob, &laptop]);
    let progress = laptop
        .link_join_progress()
        .expect("progress")
        .expect("a link");
    assert!(progress.done, "{progress:?}");
    assert_eq!(progress.total, 3, "bob, notes and the group of devices");
    let at_alice = alice
        .device_link_progress(&link.mailbox_id)
        .expect("progress");
    assert!(at_alice.done && at_alice.welcomed == 3, "{at_alice:?}");
    // A used link opens nothing: its mailbox is spent, and a second hello is refused.
    assert!(
        alice
            .spent_mailboxes()
            .expect("spent")
            .iter()
            .any(|m| m.mailbox == link.mailbox_id)
    );
    // The laptop has the contact and the group, and alice's name; and the last 30 days of
    // history, as read.
    assert_eq!(laptop.name().expect("name"), "alice");
    let bob_at_laptop = laptop.find_contact("bob").expect("bob").id;
    let old = laptop
        .history(Some(bob_at_laptop), 100)
        .expect("history")
        .into_iter()
        .find(|m| m.text == "before the laptop came")
        .expect("history came with the link");
    assert!(old.outgoing, "alice's own message stays hers");
    let notes = laptop.find_group("notes").expect("notes");
    assert_eq!(notes.members, 2);
    let devices: Vec<String> = alice
        .devices()
        .expect("devices")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(devices, ["", "laptop"]);
    assert!(
        notices(&bob)
            .iter()
            .any(|t| t.contains("alice added a device (laptop)")),
        "{:?}",
        notices(&bob)
    );
    // Everyone talks; each of alice's devices shows the other's message as hers.
    let bob_at_alice = alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = bob.find_contact("alice").expect("alice").id;
    bob.compose(alice_at_bob, "hi both").expect("compose");
    laptop
        .compose(bob_at_laptop, "from the laptop")
        .expect("compose");
    let out = mem.run(&[&alice, &bob, &laptop]);
    assert_eq!(texts(&out[1]), ["from the laptop"]);
    assert!(texts(&out[2]).contains(&"hi both".to_owned()));
    let mine = alice
        .history(Some(bob_at_alice), 100)
        .expect("history")
        .into_iter()
        .find(|m| m.text == "from the laptop")
        .expect("alice's phone has it");
    assert!(mine.outgoing, "a message from her laptop is alice's own");
    assert!(
        alice
            .history(Some(bob_at_alice), 100)
            .expect("history")
            .iter()
            .any(|m| m.text == "hi both" && !m.outgoing)
    );
    // Read on the laptop is read on the phone.
    let read_here: Vec<String> = laptop
        .take_unread(Some(bob_at_laptop))
        .expect("read")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(read_here.contains(&"hi both".to_owned()), "{read_here:?}");
    mem.run(&[&alice, &bob, &laptop]);
    let unread_on_phone: Vec<String> = alice
        .take_unread(Some(bob_at_alice))
        .expect("read")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(
        !unread_on_phone.contains(&"hi both".to_owned()),
        "{unread_on_phone:?}"
    );
    // Each device leaves key packages for the other in the group of devices; a group alice's
    // phone starts after the link then reaches the laptop by itself.
    for _ in 0..3 {
        alice.drive_groups().expect("drive");
        laptop.drive_groups().expect("drive");
        mem.run(&[&alice, &bob, &laptop]);
    }
    alice
        .create_group("later", &relay(1), &OwnedMailbox::generate().expect("log"))
        .expect("group");
    for _ in 0..3 {
        alice.drive_groups().expect("drive");
        laptop.drive_groups().expect("drive");
        mem.run(&[&alice, &bob, &laptop]);
    }
    let later = laptop
        .find_group("later")
        .expect("the laptop is in the new group");
    assert_eq!(later.members, 2);
    assert!(
        laptop
            .groups()
            .expect("groups")
            .iter()
            .all(|g| !g.name.is_empty()),
        "the group of devices is not listed among groups"
    );
    // alice removes the laptop from everything: it is told, and reads nothing new.
    assert_eq!(alice.remove_device("laptop").expect("remove"), 4);
    mem.run(&[&alice, &bob, &laptop]);
    assert!(
        notices(&laptop)
            .iter()
            .any(|t| t.contains("this device was removed")),
        "{:?}",
        notices(&laptop)
    );
    bob.compose(alice_at_bob, "only for the phone")
        .expect("compose");
    let out = mem.run(&[&alice, &bob, &laptop]);
    assert_eq!(texts(&out[0]), ["only for the phone"]);
    assert!(texts(&out[2]).is_empty(), "the removed laptop read on");
    assert_eq!(
        alice.epoch_authenticator(bob_at_alice).expect("epoch"),
        bob.epoch_authenticator(alice_at_bob).expect("epoch")
    );
}

/// Issue #16: a backup restored on a new profile rejoins every conversation under new keys
/// (the contact's and a group, each let in by the other side's device, which was not asked to
/// do anything), keeps the history, and talks on; the same backup restored a second time is
/// let in nowhere, and a bit changed in the file is refused before anything is made.
#[test]
fn a_backup_restored_on_a_new_profile_continues_every_conversation() {
    use pigeon_client::backup::{self, KdfCost};
    let Pair {
        _dir: dir,
        alice,
        bob,
        relay: mut mem,
    } = pair(Suite::XWing);
    let bob_at_alice = alice.find_contact("bob").expect("bob").id;
    let alice_at_bob = bob.find_contact("alice").expect("alice").id;
    club(&alice, &bob, &mut mem);
    let club_at_bob = bob.find_group("club").expect("bob is in the club").id;
    alice
        .compose(bob_at_alice, "before the backup")
        .expect("compose");
    mem.run(&[&alice, &bob]);

    // The backup: a key refresh in each conversation puts the restore commitment in place.
    assert_eq!(alice.prepare_backup().expect("prepare"), 2);
    assert_eq!(alice.backup_waiting().expect("waiting").len(), 2);
    for _ in 0..3 {
        alice.drive_groups().expect("drive");
        bob.drive_groups().expect("drive");
        mem.run(&[&alice, &bob]);
    }
    assert!(alice.backup_waiting().expect("waiting").is_empty());
    let (contents, summary) = alice.export_backup().expect("export");
    assert_eq!((summary.conversations, summary.restorable), (2, 2));
    assert!(summary.messages >= 1, "{summary:?}");
    alice.backup_written().expect("written");
    let cost = KdfCost {
        m_cost_kib: 8 * 1024,
        t_cost: 1,
        lanes: 1,
    };
    let sealed = backup::seal(&contents, "backup words", cost, [7; 16]).expect("seal");
    // One bit changed anywhere: refused, and no profile is made from it.
    let mut flipped = sealed.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x10;
    assert!(backup::open(&flipped, "backup words").is_err());
    let opened = backup::open(&sealed, "backup words").expect("open");

    // alice's phone is lost. A restore on a new machine makes new keys and asks to be let in.
    drop(alice);
    let restored_dir = dir.path().join("restored");
    let (restored, progress) =
        Profile::restore_backup(&restored_dir, &pass(), &opened).expect("restore");
    assert_eq!(progress.waiting.len(), 2, "{progress:?}");
    assert_eq!(restored.name().expect("name"), "alice");
    let bob_at_restored = restored.find_contact("bob").expect("bob").id;
    let line = restored
        .history(Some(bob_at_restored), 100)
        .expect("history")
        .into_iter()
        .find(|m| m.text == "before the backup")
        .expect("the history came back");
    assert!(line.outgoing);
    for _ in 0..3 {
        restored.drive_groups().expect("drive");
        bob.drive_groups().expect("drive");
        mem.run(&[&restored, &bob]);
    }
    let progress = restored.restore_progress().expect("progress");
    assert!(progress.waiting.is_empty(), "{progress:?}");
    assert_eq!(progress.back, 2);
    assert!(
        notices(&bob)
            .iter()
            .any(|t| t.contains("restored from a backup")),
        "{:?}",
        notices(&bob)
    );
    assert_eq!(
        restored
            .epoch_authenticator(bob_at_restored)
            .expect("epoch"),
        bob.epoch_authenticator(alice_at_bob).expect("epoch")
    );
    // Both conversations go on.
    restored
        .compose(bob_at_restored, "back from a backup")
        .expect("compose");
    let club_here = restored.find_group("club").expect("club").id;
    restored
        .compose_group(club_here, "hello club")
        .expect("compose");
    bob.compose(alice_at_bob, "welcome back").expect("compose");
    let out = mem.run(&[&restored, &bob]);
    assert!(texts(&out[0]).contains(&"welcome back".to_owned()));
    let at_bob = texts(&out[1]);
    assert!(
        at_bob.contains(&"back from a backup".to_owned()),
        "{at_bob:?}"
    );
    let club_lines: Vec<String> = bob
        .group_history(club_at_bob, 100)
        .expect("history")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(
        club_lines.contains(&"hello club".to_owned()),
        "{club_lines:?}"
    );

    // The same backup again, elsewhere: the leaves it could replace are gone.
    let (again, _) = Profile::restore_backup(&dir.path().join("again"), &pass(), &opened)
        .expect("a second restore is made");
    let before = notices(&bob).len();
    for _ in 0..2 {
        again.drive_groups().expect("drive");
        bob.drive_groups().expect("drive");
        mem.run(&[&again, &restored, &bob]);
    }
    assert_eq!(again.restore_progress().expect("progress").waiting.len(), 2);
    assert!(
        notices(&bob)[before..]
            .iter()
            .all(|t| !t.contains("restored from a backup")),
        "{:?}",
        notices(&bob)
    );
}

/// Issue #14: in a group large enough for TreeKEM's blank nodes to cost (here the threshold is
/// lowered to two devices), a device that joined refreshes its keys with its first message —
/// a commit both sides apply, the message read after it — and not again with its second; the
/// group's creator, who did not join, refreshes on the usual count.
#[test]
fn a_device_new_to_a_large_group_refreshes_its_keys_with_its_first_message() {
    let Pair {
        _dir,
        alice,
        mut bob,
        relay: mut mem,
    } = pair(Suite::XWing);
    bob.set_first_message_refresh_from(2);
    let club = club(&alice, &bob, &mut mem);
    let at_bob = bob.find_group("club").expect("bob is in the club");
    let epoch = |p: &Profile| p.find_group("club").expect("club").epoch;
    let e0 = at_bob.epoch;
    assert_eq!(epoch(&alice), e0);
    let said = |p: &Profile, text: &str| {
        p.group_history(p.find_group("club").expect("club").id, 100)
            .expect("history")
            .iter()
            .any(|m| m.text == text)
    };
    let settle = |mem: &mut Relay| {
        for _ in 0..3 {
            alice.drive_groups().expect("drive");
            bob.drive_groups().expect("drive");
            mem.run(&[&alice, &bob]);
        }
    };
    bob.compose_group(at_bob.id, "first").expect("compose");
    settle(&mut mem);
    assert_eq!(
        epoch(&bob),
        e0 + 1,
        "bob's first message came with a refresh"
    );
    assert_eq!(epoch(&alice), e0 + 1);
    assert!(said(&alice, "first"));
    bob.compose_group(at_bob.id, "second").expect("compose");
    alice
        .compose_group(club.id, "from the creator")
        .expect("compose");
    settle(&mut mem);
    assert_eq!(epoch(&bob), e0 + 1, "no refresh with the second message");
    assert_eq!(
        epoch(&alice),
        e0 + 1,
        "the creator refreshes on the usual count"
    );
    assert!(said(&alice, "second"));
    assert!(said(&bob, "from the creator"));
}
