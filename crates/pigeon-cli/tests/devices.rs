//! Several devices of one person with real processes (issue #16): alice links a laptop to her
//! phone with `pigeon devices link` and `pigeon init --link`; with bob, in a 1:1 conversation
//! and a group, every device sends and all three transcripts agree; the laptop, removed in the
//! middle of the conversation, reads nothing new; and a link survives `kill -9` of the relay
//! and of the new device in the middle of it.

#[path = "support.rs"]
mod support;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts};

const PASS: &str = "devices test passphrase";

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

fn transcript(profile: &Path, me: &str, conversation: &str) -> Vec<String> {
    support::transcript(profile, PASS, me, conversation)
}

/// (`Safety number with …` line, the number) pairs of `pigeon verify`'s output.
fn safety_numbers(out: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("Safety number with "))
        .filter_map(|(i, l)| Some(((*l).to_owned(), lines.get(i + 2)?.trim().to_owned())))
        .collect()
}

/// Starts `pigeon devices link` on `profile`; returns the process and the link it printed.
fn start_link(profile: &Path) -> (Child, String) {
    let log = std::fs::File::create(profile.with_extension("link.log")).expect("log file");
    let mut child = pigeon(profile)
        .args(["devices", "link", "--no-qr", "--wait", "60"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn devices link");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a link line");
    let link = line.trim().to_owned();
    assert!(link.starts_with("pigeon://device#"), "{link:?}");
    // The rest of its output is read when it ends.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, link)
}

/// Waits for `child` to end (at most `limit`); its exit status.
fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < until, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// alice and bob, introduced, in a group `family` alice made and bob joined.
fn alice_and_bob(root: &Path, link: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (alice, bob) = support::introduced(root, PASS, link);
    read(&bob);
    ok(&alice, &["group", "create", "family"]);
    ok(&alice, &["group", "add", "family", "bob"]);
    read(&bob);
    read(&alice);
    let joined = read(&bob);
    assert!(
        joined.contains("you are now in the group")
            || ok(&bob, &["group", "list"]).contains("family"),
        "{joined}"
    );
    (alice, bob)
}

#[test]
fn a_linked_laptop_talks_in_every_conversation_and_reads_nothing_once_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (alice, bob) = alice_and_bob(dir.path(), &relay.link.to_string());
    // Said before the laptop existed: it comes with the link (the last 30 days do).
    ok(&alice, &["send", "bob", "before the laptop"]);
    read(&bob);
    let laptop = dir.path().join("alice-laptop");
    let (mut linking, link) = start_link(&alice);
    let joined = ok(&laptop, &["init", "--link", &link, "--device", "laptop"]);
    assert!(
        joined.contains("This device is linked: it is in your 1 contact(s) and 1 group(s)"),
        "{joined}"
    );
    assert!(wait(&mut linking, Duration::from_secs(60)).success());
    // A used link opens nothing.
    let again = run(
        &dir.path().join("intruder"),
        &["init", "--link", &link, "--wait", "3"],
    );
    assert!(!again.status.success(), "a used link worked twice");
    let devices = ok(&alice, &["devices", "list"]);
    assert!(
        devices.contains("laptop — in 2 conversation(s)"),
        "{devices}"
    );
    assert!(devices.contains("first device (this device)"), "{devices}");
    assert_eq!(
        ok(&alice, &["devices"]),
        devices,
        "`pigeon devices` lists them"
    );
    // bob is told, and can compare the laptop's safety number.
    let at_bob = read(&bob);
    assert!(at_bob.contains("alice added a device (laptop)"), "{at_bob}");
    // bob sees one safety number per device of alice's; the laptop's is the one the laptop
    // sees for bob. Marking needs a device named.
    let at_bob = ok(&bob, &["verify", "alice"]);
    let numbers = safety_numbers(&at_bob);
    assert_eq!(numbers.len(), 2, "{at_bob}");
    let on_laptop = safety_numbers(&ok(&laptop, &["verify", "bob"]));
    assert_eq!(on_laptop.len(), 1);
    assert!(
        numbers
            .iter()
            .any(|(who, n)| who.contains("(laptop)") && *n == on_laptop[0].1),
        "{numbers:?} / {on_laptop:?}"
    );
    assert!(!run(&bob, &["verify", "alice", "--mark"]).status.success());
    let marked = ok(&bob, &["verify", "alice", "--device", "laptop", "--mark"]);
    assert!(
        marked.contains("Marked alice (laptop) verified."),
        "{marked}"
    );
    // Every device sends, in the conversation of two and in the group.
    ok(&alice, &["send", "bob", "from alice's phone"]);
    ok(&laptop, &["send", "bob", "from alice's laptop"]);
    ok(&bob, &["send", "alice", "to both of alice's devices"]);
    ok(&alice, &["send", "family", "phone in the group"]);
    ok(&laptop, &["send", "family", "laptop in the group"]);
    ok(&bob, &["send", "family", "bob in the group"]);
    for _ in 0..2 {
        for p in [&alice, &laptop, &bob] {
            read(p);
        }
    }
    for (conversation, lines) in [(("bob", "alice"), 4), (("family", "family"), 3)] {
        let at_bob = transcript(&bob, "bob", conversation.1);
        assert_eq!(at_bob.len(), lines, "{at_bob:?}");
        assert_eq!(transcript(&alice, "alice", conversation.0), at_bob);
        assert_eq!(transcript(&laptop, "alice", conversation.0), at_bob);
    }
    let devices = ok(&alice, &["devices", "list"]);
    assert!(
        devices.contains("laptop — in 2 conversation(s), linked here"),
        "{devices}"
    );
    assert!(devices.contains(", last seen "), "{devices}");
    // Read on one of alice's devices is read on the other.
    ok(&bob, &["send", "alice", "read me once"]);
    assert!(read(&laptop).contains("read me once"));
    let at_phone = read(&alice);
    assert!(!at_phone.contains("read me once"), "{at_phone}");
    // Conversations started after the link reach every device of alice's by themselves: a
    // group her phone makes, and a contact her laptop accepts.
    ok(&alice, &["group", "create", "later"]);
    let carol = dir.path().join("carol");
    ok(
        &carol,
        &[
            "init",
            "--name",
            "carol",
            "--relay",
            &relay.link.to_string(),
        ],
    );
    let invite = ok(&carol, &["invite", "--no-qr"]);
    let carol_link = invite.lines().next().expect("a link");
    ok(&laptop, &["accept", carol_link]);
    for _ in 0..3 {
        for p in [&alice, &laptop, &carol] {
            read(p);
        }
    }
    assert!(ok(&laptop, &["group", "list"]).contains("later"));
    assert!(ok(&alice, &["contacts"]).contains("carol"));
    ok(&carol, &["send", "alice", "hello from carol"]);
    assert!(read(&alice).contains("hello from carol"));
    assert!(read(&laptop).contains("hello from carol"));
    // alice removes the laptop in the middle of the conversation: it says so and reads on
    // nothing.
    let removed = ok(&alice, &["devices", "remove", "laptop"]);
    assert!(
        removed.contains("from your 2 contact(s) and 2 group(s)"),
        "{removed}"
    );
    let told = read(&laptop);
    assert!(told.contains("this device was removed"), "{told}");
    // bob's device takes the logs' new keys (the removal moved them) as it reads.
    read(&bob);
    ok(&bob, &["send", "alice", "after the laptop left"]);
    ok(&bob, &["send", "family", "group after the laptop left"]);
    assert!(read(&alice).contains("after the laptop left"));
    let nothing = read(&laptop);
    assert!(!nothing.contains("after the laptop left"), "{nothing}");
    relay.assert_no_panic();
}

#[test]
fn a_link_survives_kill_9_of_the_relay_and_of_the_new_device() {
    let seed = support::seed_from_env("PIGEON_DEVICES_KILL_SEED");
    let mut rng = support::Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(RelayOpts::in_dir(dir.path()));
    relay.pin_port();
    let (alice, bob) = alice_and_bob(dir.path(), &relay.link.to_string());
    let laptop = dir.path().join("alice-laptop");
    let (mut linking, link) = start_link(&alice);
    let mut new_device = pigeon(&laptop)
        .args(["init", "--link", &link, "--device", "laptop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn init");
    std::thread::sleep(Duration::from_millis(100 + rng.below(1500)));
    let _ = new_device.kill();
    let _ = new_device.wait();
    relay.kill9();
    relay.restart();
    // The same command again carries on; the old device's `devices link` is still waiting.
    let started = Instant::now();
    let out = run(
        &laptop,
        &[
            "init", "--link", &link, "--device", "laptop", "--wait", "60",
        ],
    );
    eprintln!("the new device's second run took {:?}", started.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "seed {seed}: {err}");
    eprintln!(
        "seed {seed}: linked after the kills: {}; {err}",
        out.status.success()
    );
    if out.status.success() {
        assert!(
            wait(&mut linking, Duration::from_secs(60)).success(),
            "seed {seed}: the new device is linked but the old one did not finish"
        );
        eprintln!("the old device finished after {:?}", started.elapsed());
        ok(&laptop, &["send", "family", "laptop after the crash"]);
        read(&alice);
        let at_bob = read(&bob);
        assert!(
            at_bob.contains("laptop after the crash"),
            "seed {seed}: {at_bob}"
        );
    } else {
        // Clearly failed, in words; the old device is untouched.
        assert!(err.contains("error:"), "seed {seed}: {err}");
        let _ = linking.kill();
        let _ = linking.wait();
    }
    // Shown when the test fails (the harness keeps it otherwise).
    eprintln!(
        "alice's `devices link`:\n{}",
        std::fs::read_to_string(alice.with_extension("link.log")).unwrap_or_default()
    );
    // Both of alice's devices that exist stay usable, and so does bob.
    ok(&alice, &["send", "family", "phone after the crash"]);
    let at_bob = read(&bob);
    assert!(
        at_bob.contains("phone after the crash"),
        "seed {seed}: {at_bob}"
    );
    relay.assert_no_panic();
}
