//! Groups with real processes (issue #14): five profiles on a real relay make a group through
//! one-time invitation links, everyone talks, two members commit at the same moment without
//! forking the group, a removed member reads nothing new, a member offline across ten epochs
//! catches up, and only admins change who is in.

#[path = "support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{Relay, RelayOpts};

const PASS: &str = "group test passphrase";

fn pigeon(profile: &Path) -> Command {
    support::client(profile, PASS)
}

fn run(profile: &Path, args: &[&str]) -> Output {
    pigeon(profile).args(args).output().expect("run pigeon")
}

fn ok(profile: &Path, args: &[&str]) -> String {
    support::client_ok(profile, PASS, args)
}

fn read(profile: &Path) -> String {
    ok(profile, &["read", "--wait", "0.4"])
}

fn transcript(profile: &Path, me: &str, group: &str) -> Vec<String> {
    support::transcript(profile, PASS, me, group)
}

fn epoch(profile: &Path, group: &str) -> String {
    let list = ok(profile, &["group", "list"]);
    let line = list
        .lines()
        .find(|l| l.contains(group))
        .unwrap_or_else(|| panic!("{group} not in {list}"));
    line.split("epoch ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(|e| e.trim().to_owned())
        .unwrap_or_else(|| panic!("no epoch in {line}"))
}

/// `admin` invites `who` with a one-time link; both sides read until `who` is in.
fn join(admin: &Path, who: &Path, group: &str) {
    let invite = ok(admin, &["group", "invite", group, "--no-qr"]);
    let link = invite.lines().next().expect("a link");
    assert!(link.starts_with("pigeon://invite#"), "{invite}");
    let asked = ok(who, &["accept", link]);
    assert!(asked.contains("asked to join"), "{asked}");
    let admin_read = read(admin);
    assert!(
        admin_read.contains("accepted your invitation"),
        "{admin_read}"
    );
    // The link worked once: its mailbox is gone from the relay, so it opens nothing now.
    let again = run(who, &["accept", link]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("already used"),
        "a used group link: {err}"
    );
    let joined = read(who);
    assert!(joined.contains("you are now in the group"), "{joined}");
}

#[test]
fn five_people_make_a_group_talk_commit_at_once_remove_and_catch_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let link = relay.link.to_string();
    let names = ["ann", "ben", "cat", "dan", "eve"];
    let p: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
    for (n, path) in names.iter().zip(&p) {
        ok(path, &["init", "--name", n, "--relay", &link]);
    }
    let created = ok(&p[0], &["group", "create", "family"]);
    assert!(created.contains("Created the group family"), "{created}");
    for who in &p[1..] {
        join(&p[0], who, "family");
    }
    // Everyone has everyone, and ann is the only admin.
    for path in &p {
        read(path);
    }
    for path in &p {
        let members = ok(path, &["group", "members", "family"]);
        for n in names {
            assert!(members.contains(n), "{n} missing from {members}");
        }
        assert_eq!(members.matches("[admin]").count(), 1, "{members}");
    }
    // Safety numbers: the same on both screens; marking one shows in the member list.
    let number = |out: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.len() == 71 && l.chars().all(|c| c.is_ascii_digit() || c == ' '))
            .map(str::to_owned)
    };
    let ann_sees = number(&ok(&p[0], &["verify", "family", "ben"]));
    assert!(ann_sees.is_some());
    assert_eq!(ann_sees, number(&ok(&p[1], &["verify", "family", "ann"])));
    assert_ne!(ann_sees, number(&ok(&p[0], &["verify", "family", "cat"])));
    ok(&p[0], &["verify", "family", "ben", "--mark"]);
    assert!(
        ok(&p[0], &["group", "members", "family"]).contains("ben [verified]"),
        "ben shows as verified"
    );

    // A member who is not an admin may not invite, remove, promote or rename.
    for args in [
        &["group", "invite", "family", "--no-qr"][..],
        &["group", "remove", "family", "cat"][..],
        &["group", "admin", "family", "cat"][..],
        &["group", "rename", "family", "ours"][..],
    ] {
        let out = run(&p[1], args);
        assert!(!out.status.success(), "ben could {args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("admins"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Everyone sends; everyone's transcript agrees in content and order.
    for (n, path) in names.iter().zip(&p) {
        ok(path, &["send", "family", &format!("hello from {n}")]);
    }
    for path in &p {
        read(path);
    }
    let reference = transcript(&p[0], "ann", "family");
    assert_eq!(reference.len(), 5, "{reference:?}");
    for (n, path) in names.iter().zip(&p).skip(1) {
        assert_eq!(transcript(path, n, "family"), reference, "{n}'s transcript");
    }

    // Two members refresh their keys at the same moment: one commit wins, the other lands
    // after it; the group does not fork.
    let before = epoch(&p[1], "family");
    let racers: Vec<_> = [&p[1], &p[2]]
        .iter()
        .map(|path| {
            pigeon(path)
                .args(["group", "rekey", "family"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in racers {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for path in &p {
        read(path);
    }
    let after = epoch(&p[0], "family");
    assert_eq!(
        after.parse::<u64>().expect("epoch"),
        before.parse::<u64>().expect("epoch") + 2,
        "both changes landed, one after the other"
    );
    for path in &p {
        assert_eq!(epoch(path, "family"), after, "{} forked", path.display());
    }
    ok(&p[3], &["send", "family", "after the race"]);
    for path in &p {
        read(path);
    }
    for (n, path) in names.iter().zip(&p) {
        assert!(
            transcript(path, n, "family").contains(&"dan: after the race".to_owned()),
            "{n} cannot read after the race"
        );
    }

    // ann removes eve: eve is told, and reads nothing sent after.
    ok(&p[0], &["group", "remove", "family", "eve"]);
    for path in &p {
        read(path);
    }
    ok(&p[1], &["send", "family", "eve cannot read this"]);
    for path in &p {
        read(path);
    }
    let eve_history = ok(&p[4], &["group", "history", "family", "--limit", "1000"]);
    assert!(
        eve_history.contains("no longer in this group"),
        "{eve_history}"
    );
    assert!(
        !eve_history.contains("eve cannot read this"),
        "{eve_history}"
    );
    assert!(
        ok(&p[2], &["group", "history", "family"]).contains("eve cannot read this"),
        "cat reads on"
    );
    let members = ok(&p[0], &["group", "members", "family"]);
    assert!(!members.contains("eve"), "{members}");

    // dan stays offline while the group moves ten epochs; then catches up in order.
    let start = epoch(&p[0], "family").parse::<u64>().expect("epoch");
    for i in 0..10 {
        ok(&p[0], &["group", "rekey", "family"]);
        ok(&p[0], &["send", "family", &format!("epoch message {i}")]);
    }
    assert_eq!(
        epoch(&p[0], "family").parse::<u64>().expect("epoch"),
        start + 10
    );
    read(&p[3]);
    let dan = transcript(&p[3], "dan", "family");
    for i in 0..10 {
        assert!(
            dan.contains(&format!("ann: epoch message {i}")),
            "dan missed message {i}: {dan:?}"
        );
    }
    assert_eq!(epoch(&p[3], "family"), epoch(&p[0], "family"));

    // A message sent in an epoch that a commit ended before the message reached the log counts
    // nowhere; its sender sees that in the log and sends it again, in the new epoch, once.
    ok(&p[0], &["group", "rekey", "family"]);
    ok(&p[1], &["send", "family", "written before the refresh"]);
    read(&p[1]);
    for path in &p[..4] {
        read(path);
    }
    for (n, path) in names.iter().zip(&p).take(4) {
        let t = transcript(path, n, "family");
        assert_eq!(
            t.iter()
                .filter(|l| l.as_str() == "ben: written before the refresh")
                .count(),
            1,
            "{n}: {t:?}"
        );
    }

    // Post-compromise security: a copy of cat's device (its whole profile) reads along until
    // cat refreshes its keys, and nothing after.
    let copy = dir.path().join("cat-copy");
    let status = Command::new("cp")
        .args(["-a"])
        .arg(&p[2])
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    ok(&p[0], &["send", "family", "before cat's refresh"]);
    read(&copy);
    assert!(
        transcript(&copy, "cat", "family").contains(&"ann: before cat's refresh".to_owned()),
        "the copy reads while cat's keys are the copied ones"
    );
    ok(&p[2], &["group", "rekey", "family"]);
    read(&p[0]);
    ok(&p[0], &["send", "family", "after cat's refresh"]);
    read(&p[2]);
    read(&copy);
    assert!(
        transcript(&p[2], "cat", "family").contains(&"ann: after cat's refresh".to_owned()),
        "cat reads on"
    );
    assert!(
        !transcript(&copy, "cat", "family").contains(&"ann: after cat's refresh".to_owned()),
        "the copy of cat's old state still reads after cat's refresh"
    );
    // dan leaves: ben (not an admin) commits the request, ann (the admin) moves the log to new
    // keys, and dan reads nothing sent after.
    ok(&p[3], &["group", "leave", "family"]);
    read(&p[1]);
    for path in [&p[0], &p[2], &p[1], &p[3]] {
        read(path);
    }
    let dan_history = ok(&p[3], &["group", "history", "family", "--limit", "1000"]);
    assert!(
        dan_history.contains("no longer in this group"),
        "{dan_history}"
    );
    ok(&p[0], &["send", "family", "after dan left"]);
    for path in [&p[1], &p[2], &p[3]] {
        read(path);
    }
    for (n, path) in [("ben", &p[1]), ("cat", &p[2])] {
        assert!(
            transcript(path, n, "family").contains(&"ann: after dan left".to_owned()),
            "{n} reads on after the log moved"
        );
    }
    assert!(
        !ok(&p[3], &["group", "history", "family", "--limit", "1000"]).contains("after dan left")
    );
    // The copy of cat's old device says in plain words that it fell behind, instead of
    // dropping every later message.
    let copy_history = ok(&copy, &["group", "history", "family", "--limit", "1000"]);
    assert!(copy_history.contains("fell behind"), "{copy_history}");
    assert!(
        copy_history.contains("It asked to be taken back"),
        "{copy_history}"
    );
    assert!(
        ok(&copy, &["group", "list"]).contains("lost"),
        "the copy's group shows as lost"
    );
    // It asked to be taken back, with the ticket of a leaf cat has since replaced: no member's
    // device can even open the request, so nobody takes the copy back, and it reads nothing.
    for path in &p[..3] {
        read(path);
    }
    read(&copy);
    for (n, path) in names.iter().zip(&p).take(3) {
        let t = transcript(path, n, "family");
        assert!(
            !t.iter()
                .any(|l| l.contains("taken back") || l.contains("took it back")),
            "{n}: {t:?}"
        );
    }
    ok(&p[0], &["send", "family", "after the copy asked"]);
    read(&copy);
    assert!(
        !ok(&copy, &["group", "history", "family", "--limit", "1000"])
            .contains("after the copy asked")
    );
    assert!(ok(&copy, &["group", "list"]).contains("lost"));
    relay.assert_no_panic();
}

/// Issue #14: a member away while the relay expired commits it never read falls behind for
/// good. Its device asks (in the log) to be taken back, the admin's device does so the next
/// time it reads, without anyone typing anything, and the two talk on in one epoch.
#[test]
fn a_member_away_past_expiry_is_taken_back_by_itself() {
    const EXPIRY_SECS: u64 = 15;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--expiry-secs")
            .arg(&EXPIRY_SECS.to_string())
            .arg("--sweep-secs")
            .arg("1"),
    );
    let link = relay.link.to_string();
    let (ann, ben) = (dir.path().join("ann"), dir.path().join("ben"));
    for (n, path) in [("ann", &ann), ("ben", &ben)] {
        ok(path, &["init", "--name", n, "--relay", &link]);
    }
    ok(&ann, &["group", "create", "club"]);
    join(&ann, &ben, "club");
    read(&ann);
    read(&ben);
    // ben is away: ann refreshes her keys twice and talks, and the relay lets all of it expire.
    for _ in 0..2 {
        ok(&ann, &["group", "rekey", "club"]);
        read(&ann);
    }
    ok(&ann, &["send", "club", "while ben was away"]);
    read(&ann);
    std::thread::sleep(std::time::Duration::from_secs(EXPIRY_SECS + 3));
    ok(&ann, &["send", "club", "after the expiry"]);
    // ben comes back: he fell behind and his device asks to be taken back.
    read(&ben);
    let history = ok(&ben, &["group", "history", "club", "--limit", "100"]);
    assert!(history.contains("fell behind"), "{history}");
    assert!(history.contains("It asked to be taken back"), "{history}");
    assert!(ok(&ben, &["group", "list"]).contains("lost"));
    // ann's device takes him back when it reads; ben's reads on from there.
    read(&ann);
    read(&ann);
    let at_ann = ok(&ann, &["group", "history", "club", "--limit", "100"]);
    assert!(at_ann.contains("took it back"), "{at_ann}");
    read(&ben);
    let history = ok(&ben, &["group", "history", "club", "--limit", "100"]);
    assert!(history.contains("this device is back"), "{history}");
    assert!(!ok(&ben, &["group", "list"]).contains("lost"));
    assert_eq!(epoch(&ann, "club"), epoch(&ben, "club"));
    ok(&ben, &["send", "club", "I am back"]);
    read(&ann);
    ok(&ann, &["send", "club", "welcome back"]);
    read(&ben);
    assert!(transcript(&ann, "ann", "club").contains(&"ben: I am back".to_owned()));
    let at_ben = transcript(&ben, "ben", "club");
    assert!(
        at_ben.contains(&"ann: welcome back".to_owned()),
        "{at_ben:?}"
    );
    assert!(!at_ben.contains(&"ann: while ben was away".to_owned()));
    relay.assert_no_panic();
}

/// Issue #15: a group's log has a mirror on its creator's second relay, kept in the home
/// relay's order by the admin's device. A removal moves both copies to new keys. With the home
/// relay killed, a member still reads what was sent through the mirror, and what it sends
/// meanwhile waits on the mirror and lands in the group's one order once the home relay is
/// back: both transcripts agree.
#[test]
fn a_group_log_has_a_mirror_that_outlives_its_home_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("relay dir");
        d
    };
    let mut home = Relay::start(RelayOpts::in_dir(&relay_dir("home")));
    home.pin_port();
    let mirror = Relay::start(RelayOpts::in_dir(&relay_dir("mirror")));
    let (ann, ben, cat) = (
        dir.path().join("ann"),
        dir.path().join("ben"),
        dir.path().join("cat"),
    );
    for (n, path) in [("ann", &ann), ("ben", &ben), ("cat", &cat)] {
        ok(
            path,
            &["init", "--name", n, "--relay", &home.link.to_string()],
        );
    }
    ok(&ann, &["relays", "add", &mirror.link.to_string()]);
    ok(&ann, &["group", "create", "club"]);
    join(&ann, &ben, "club");
    join(&ann, &cat, "club");
    for path in [&ann, &ben, &cat, &ann] {
        read(path);
    }
    // cat is removed: ann's device moves the home copy and then the mirror to new keys.
    ok(&ann, &["group", "remove", "club", "cat"]);
    for path in [&ann, &ben, &cat, &ann, &ann] {
        read(path);
    }
    ok(&ann, &["send", "club", "one"]);
    read(&ann);
    home.kill9();
    // ben reads "one" from the mirror (subscribed with the log's new keys there).
    run(&ben, &["read", "--wait", "0.4"]);
    assert!(
        transcript(&ben, "ben", "club").contains(&"ann: one".to_owned()),
        "{:?}",
        transcript(&ben, "ben", "club")
    );
    // What ben sends now waits on the mirror for the home relay.
    run(&ben, &["send", "club", "two, while home is down"]);
    run(&ann, &["read", "--wait", "0.4"]);
    home.restart();
    for path in [&ann, &ann, &ben, &ann, &ben] {
        read(path);
    }
    let at_ann = transcript(&ann, "ann", "club");
    let at_ben = transcript(&ben, "ben", "club");
    assert!(
        at_ann.contains(&"ben: two, while home is down".to_owned()),
        "{at_ann:?}"
    );
    assert_eq!(
        at_ann.iter().filter(|l| l.ends_with("one")).count(),
        1,
        "{at_ann:?}"
    );
    assert!(at_ben.contains(&"ben: two, while home is down".to_owned()));
    assert_eq!(epoch(&ann, "club"), epoch(&ben, "club"));
    // cat reads nothing sent after its removal, on either copy.
    run(&cat, &["read", "--wait", "0.4"]);
    assert!(!transcript(&cat, "cat", "club").contains(&"ann: one".to_owned()));
    home.assert_no_panic();
    mirror.assert_no_panic();
}

/// Issue #15: a group made on a profile with one relay gets a mirror later
/// (`pigeon group mirror`); when its home relay is gone for good, an admin moves its home to
/// the mirror (`pigeon group move --home-is-gone`), the others follow when they read, and the
/// group goes on: nobody invited anybody again.
#[test]
fn a_group_whose_relay_is_gone_moves_home_to_its_mirror() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("relay dir");
        d
    };
    let mut home = Relay::start(RelayOpts::in_dir(&relay_dir("home")));
    let second = Relay::start(RelayOpts::in_dir(&relay_dir("second")));
    let (ann, ben) = (dir.path().join("ann"), dir.path().join("ben"));
    for (n, path) in [("ann", &ann), ("ben", &ben)] {
        ok(
            path,
            &["init", "--name", n, "--relay", &home.link.to_string()],
        );
    }
    ok(&ann, &["group", "create", "club"]);
    join(&ann, &ben, "club");
    // ann and ben are contacts too: their conversation of two lives on the same relay.
    let invite = ok(&ann, &["invite", "--no-qr"]);
    ok(&ben, &["accept", invite.lines().next().expect("link")]);
    read(&ann);
    read(&ben);
    ok(&ben, &["group", "mirror", "ann", &second.link.to_string()]);
    // Only an admin gives the group a mirror.
    let refused = run(&ben, &["group", "mirror", "club", &second.link.to_string()]);
    assert!(!refused.status.success());
    ok(&ann, &["group", "mirror", "club", &second.link.to_string()]);
    ok(&ann, &["send", "club", "before the relay went"]);
    for path in [&ann, &ben, &ann] {
        read(path);
    }
    home.kill9();
    // Without the confirmation, nothing moves.
    let unconfirmed = run(&ann, &["group", "move", "club"]);
    assert!(!unconfirmed.status.success());
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--home-is-gone"));
    run(&ann, &["group", "move", "club", "--home-is-gone"]);
    // In a conversation of two both people are admins: ben moves theirs.
    run(&ben, &["group", "move", "ann", "--home-is-gone"]);
    // ben follows when he reads (through what was the mirror), and both talk on there.
    run(&ben, &["read", "--wait", "0.4"]);
    let history = ok(&ben, &["group", "history", "club", "--limit", "100"]);
    assert!(history.contains("home relay is gone"), "{history}");
    ok(&ben, &["send", "club", "after the move"]);
    read(&ann);
    ok(&ann, &["send", "club", "and on"]);
    read(&ben);
    let at_ann = transcript(&ann, "ann", "club");
    let at_ben = transcript(&ben, "ben", "club");
    assert!(
        at_ann.contains(&"ben: after the move".to_owned()),
        "{at_ann:?}"
    );
    assert!(at_ben.contains(&"ann: and on".to_owned()), "{at_ben:?}");
    assert!(at_ben.contains(&"ann: before the relay went".to_owned()));
    assert_eq!(epoch(&ann, "club"), epoch(&ben, "club"));
    // Changes are ordered there too.
    ok(&ben, &["group", "rekey", "club"]);
    read(&ann);
    assert_eq!(epoch(&ann, "club"), epoch(&ben, "club"));
    // Their conversation of two moved as well: ann follows and they talk on.
    ok(&ben, &["send", "ann", "our conversation moved too"]);
    let mut at_ann = String::new();
    for _ in 0..3 {
        at_ann.push_str(&read(&ann));
        if at_ann.contains("our conversation moved too") {
            break;
        }
    }
    assert!(at_ann.contains("our conversation moved too"), "{at_ann}");
    ok(&ann, &["send", "ben", "so it did"]);
    assert!(read(&ben).contains("so it did"));
    second.assert_no_panic();
}

/// Issue #14: `kill -9` of the relay while members commit and send: after a restart every
/// member reads on; nothing acknowledged is lost, nothing shows twice, and the group does not
/// fork.
#[test]
fn a_relay_killed_during_commits_loses_nothing_and_forks_nothing() {
    let seed = support::seed_from_env("PIGEON_GROUP_KILL_SEED");
    let mut rng = support::Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(RelayOpts::in_dir(dir.path()));
    relay.pin_port();
    let link = relay.link.to_string();
    let names = ["ann", "ben", "cat"];
    let p: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
    for (n, path) in names.iter().zip(&p) {
        ok(path, &["init", "--name", n, "--relay", &link]);
    }
    ok(&p[0], &["group", "create", "crew"]);
    join(&p[0], &p[1], "crew");
    join(&p[0], &p[2], "crew");
    ok(&p[0], &["group", "admin", "crew", "ben"]);
    for path in &p {
        read(path);
    }
    for round in 0..3 {
        let children: Vec<_> = [
            (&p[0], vec!["group", "rekey", "crew"]),
            (&p[1], vec!["group", "rekey", "crew"]),
            (
                &p[2],
                vec!["send", "crew", &format!("cat in round {round}")],
            ),
            (
                &p[0],
                vec!["send", "crew", &format!("ann in round {round}")],
            ),
        ]
        .into_iter()
        .map(|(path, args)| {
            pigeon(path)
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
        std::thread::sleep(std::time::Duration::from_millis(20 + rng.below(200)));
        relay.kill9();
        for child in children {
            let out = child.wait_with_output().expect("wait");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("panicked"), "seed {seed}: {err}");
        }
        relay.restart();
        // Each member reads until nothing of its own waits (queued posts, staged commits).
        for _ in 0..3 {
            for path in &p {
                let _ = run(path, &["read", "--wait", "0.4"]);
            }
        }
    }
    let e = epoch(&p[0], "crew");
    for path in &p {
        assert_eq!(
            epoch(path, "crew"),
            e,
            "seed {seed}: {} forked",
            path.display()
        );
    }
    let reference = transcript(&p[0], "ann", "crew");
    for (n, path) in names.iter().zip(&p).skip(1) {
        assert_eq!(transcript(path, n, "crew"), reference, "seed {seed}: {n}");
    }
    for round in 0..3 {
        for who in ["cat", "ann"] {
            let line = format!("{who}: {who} in round {round}");
            assert_eq!(
                reference.iter().filter(|l| **l == line).count(),
                1,
                "seed {seed}: {line} in {reference:?}"
            );
        }
    }
    relay.assert_no_panic();
}

/// Issue #14: `pigeon verify CONTACT` prints the same safety number on both sides of a 1:1
/// conversation, and `--mark` records it.
#[test]
fn contacts_compare_the_same_safety_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let link = relay.link.to_string();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    ok(&alice, &["init", "--name", "alice", "--relay", &link]);
    ok(&bob, &["init", "--name", "bob", "--relay", &link]);
    let invite = ok(&alice, &["invite", "--no-qr"]);
    ok(&bob, &["accept", invite.lines().next().expect("link")]);
    read(&alice);
    let number = |out: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.len() == 71 && l.chars().all(|c| c.is_ascii_digit() || c == ' '))
            .map(str::to_owned)
    };
    let on_alice = number(&ok(&alice, &["verify", "bob"]));
    assert!(on_alice.is_some());
    assert_eq!(on_alice, number(&ok(&bob, &["verify", "alice"])));
    let marked = ok(
        &alice,
        &[
            "--profile",
            alice.to_str().expect("utf-8"),
            "verify",
            "bob",
            "--mark",
        ],
    );
    assert!(marked.contains("Marked bob verified"), "{marked}");
    assert!(ok(&alice, &["verify", "bob"]).contains("bob is marked verified"));
}

/// The README's first command runs `pigeon demo`: it must end well, groups included.
#[test]
fn the_demo_runs_and_shows_the_group() {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .arg("demo")
        .env("PIGEON_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Loud and clear, Alice"), "{stdout}");
    assert!(
        stdout.contains("carol's transcript of the group"),
        "{stdout}"
    );
    assert!(
        stdout.contains("you are no longer in this group"),
        "{stdout}"
    );
    let bob_part = stdout
        .split("bob's transcript")
        .nth(1)
        .and_then(|r| r.split("carol's transcript").next())
        .expect("bob's transcript");
    assert!(
        bob_part.contains("Carol has left the book club."),
        "{bob_part}"
    );
}
