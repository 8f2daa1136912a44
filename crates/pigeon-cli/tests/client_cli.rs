//! The `pigeon` commands people use, run as real processes against a real relay: init, invite,
//! accept, contacts, send, read and chat, human errors, and 100 malformed invitation links
//! (issue #3).

#[path = "support.rs"]
mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts, Rng, seed_from_env};

const PASS: &str = "cli test passphrase";

fn pigeon(profile: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
    cmd.env("PIGEON_PASSPHRASE", PASS)
        .env("PIGEON_PROFILE", profile)
        .env("PIGEON_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

fn run(profile: &Path, args: &[&str]) -> Output {
    pigeon(profile).args(args).output().expect("run pigeon")
}

fn ok(profile: &Path, args: &[&str]) -> String {
    let out = run(profile, args);
    assert!(
        out.status.success(),
        "pigeon {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Stdout of a run, whatever its status.
fn ok_or_status(profile: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&run(profile, args).stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// alice and bob initialised on `relay`, introduced through an invitation.
fn introduced(root: &Path, relay: &Relay) -> (std::path::PathBuf, std::path::PathBuf) {
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    let link = relay.link.to_string();
    ok(&alice, &["init", "--name", "alice", "--relay", &link]);
    ok(&bob, &["init", "--name", "bob", "--relay", &link]);
    let invite = ok(&alice, &["invite"]);
    let line = invite.lines().next().expect("a link line");
    assert!(line.starts_with("pigeon://invite#"), "{invite}");
    assert!(
        invite.contains('█') || invite.contains('▀'),
        "a QR code follows"
    );
    let accepted = ok(&bob, &["accept", line]);
    assert!(accepted.contains("talk with alice"), "{accepted}");
    // The same invitation works once.
    let again = run(&bob, &["accept", line]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already used"),
        "{}",
        stderr(&again)
    );
    let read = ok(&alice, &["read", "--wait", "0.5"]);
    assert!(read.contains("bob accepted your invitation"), "{read}");
    (alice, bob)
}

#[test]
fn people_meet_and_talk_through_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (alice, bob) = introduced(dir.path(), &relay);

    let contacts = ok(&bob, &["contacts"]);
    assert!(
        contacts.contains("alice") && contacts.contains("X-Wing"),
        "{contacts}"
    );
    assert!(
        ok(
            &alice,
            &["send", "bob", "hello", "bob,", "how", "are", "you?"]
        )
        .contains("Sent to bob")
    );
    let read = ok(&bob, &["read", "alice", "--wait", "0.5"]);
    assert!(read.contains("alice: hello bob, how are you?"), "{read}");
    assert!(ok(&bob, &["read", "--wait", "0"]).contains("No new messages"));

    // Interactive chat: bob types, alice's reply appears.
    let mut chat = pigeon(&bob)
        .args(["chat", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat");
    let mut stdin = chat.stdin.take().expect("stdin");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = chat.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("chat never printed {needle:?}; it printed {seen:?}");
    };
    wait_line("chatting with alice");
    writeln!(stdin, "typed in the chat").expect("type");
    let read = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = ok(&alice, &["read", "bob", "--wait", "0.3"]);
            if r.contains("typed in the chat") || Instant::now() > deadline {
                break r;
            }
        }
    };
    assert!(read.contains("bob: typed in the chat"), "{read}");
    ok(&alice, &["send", "bob", "a reply while you chat"]);
    wait_line("alice: a reply while you chat");
    writeln!(stdin, "/quit").expect("quit");
    drop(stdin);
    let status = chat.wait().expect("chat exits");
    assert!(status.success(), "chat exited with {status}");

    // Errors speak to people.
    let out = run(&alice, &["send", "carol", "hi"]);
    assert!(
        stderr(&out).contains("no contact called \"carol\""),
        "{}",
        stderr(&out)
    );
    let out = run(&dir.path().join("nobody"), &["contacts"]);
    assert!(stderr(&out).contains("pigeon init"), "{}", stderr(&out));
    relay.assert_no_panic();
}

#[test]
fn unreachable_relay_is_explained_and_the_message_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(RelayOpts::in_dir(dir.path()));
    relay.pin_port();
    let (alice, bob) = introduced(dir.path(), &relay);
    // `pigeon connect` shows the search: one route, tried and connected.
    let json = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let events = json(&ok(&alice, &["connect", "--json"]));
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["trying", "connected", "done"], "{events:?}");
    assert_eq!(events[2]["connected"], true);
    assert!(
        events[2]["route"]
            .as_str()
            .is_some_and(|r| r.starts_with("tcp://127.0.0.1:")),
        "{events:?}"
    );
    relay.stop();
    let out = run(&alice, &["connect", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let events = json(&String::from_utf8_lossy(&out.stdout));
    let failed = events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("a failed event");
    assert_eq!(failed["censorship_likely"], true, "{failed}");
    assert_eq!(failed["kind"], "local_network", "{failed}");
    let done = events.last().expect("done");
    assert_eq!(
        (done["event"].as_str(), done["connected"].as_bool()),
        (Some("done"), Some(false))
    );
    let text = ok_or_status(&alice, &["connect"]);
    assert!(
        text.contains("failed") && text.contains("not connected"),
        "{text}"
    );
    let out = run(&alice, &["send", "bob", "sent while the relay is down"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("could not reach bob's relay through any route (tried tcp://127.0.0.1:")
            && err.contains("the network may be blocking the relay"),
        "{err}"
    );
    let contacts = ok(&alice, &["contacts"]);
    assert!(contacts.contains("1 waiting to be sent"), "{contacts}");
    // An invitation needs the relay; a failed one leaves nothing behind.
    let out = run(&alice, &["invite"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("could not reach your relay through any route"),
        "{}",
        stderr(&out)
    );
    relay.restart();
    // Any later connection sends it; bob reads it once.
    ok(&alice, &["read", "--wait", "0"]);
    let read = ok(&bob, &["read", "--wait", "0.5"]);
    assert_eq!(
        read.matches("sent while the relay is down").count(),
        1,
        "{read}"
    );
}

/// Malformed invitation links of many kinds, derived from a real one.
fn malformed(valid: &str, rng: &mut Rng) -> Vec<String> {
    let (head, data) = valid.split_once('#').expect("a # in the link");
    let mut out = vec![
        String::new(),
        "   ".to_owned(),
        "pigeon://".to_owned(),
        "pigeon://invite".to_owned(),
        "pigeon://invite#".to_owned(),
        format!("{head}#{data}!"),
        format!("{head}#{data} {data}"),
        valid.replace("pigeon://invite", "pigeon://relay"),
        valid.replace("pigeon://invite", "pigeon://proxy"),
        valid.replace("pigeon://invite", "pigeon://nonsense"),
        valid.replace("pigeon://", "https://"),
        format!("{head}#{}", "A".repeat(5000)),
        format!("{head}#{}", "_".repeat(64)),
        format!("{head}#AAAA"),
        format!("{head}#{}", &data[..data.len() - 1]),
        format!("{valid}\n{valid}"),
        "pigeon://invite#\u{1}\u{7f}".to_owned(),
        "пиджин://invite#abc".to_owned(),
    ];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    while out.len() < 100 {
        let mut bytes = data.as_bytes().to_vec();
        match rng.below(4) {
            0 => {
                let cut = 1 + usize::try_from(rng.below(bytes.len() as u64 - 1)).expect("fits");
                bytes.truncate(cut);
            }
            1 => {
                for _ in 0..=rng.below(6) {
                    let i = usize::try_from(rng.below(bytes.len() as u64)).expect("fits");
                    bytes[i] = alphabet[usize::try_from(rng.below(64)).expect("fits")];
                }
            }
            2 => {
                let n = 4 + usize::try_from(rng.below(600)).expect("fits");
                bytes = (0..n)
                    .map(|_| alphabet[usize::try_from(rng.below(64)).expect("fits")])
                    .collect();
            }
            _ => {
                let i = usize::try_from(rng.below(bytes.len() as u64)).expect("fits");
                bytes.remove(i);
            }
        }
        let text = format!("{head}#{}", String::from_utf8(bytes).expect("ascii"));
        if text != valid {
            out.push(text);
        }
    }
    out
}

#[test]
fn a_hundred_malformed_invitations_get_clear_errors_and_change_nothing() {
    let seed = seed_from_env("PIGEON_INVITE_SEED");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (alice, bob) = introduced(dir.path(), &relay);
    let fresh = ok(&alice, &["invite", "--no-qr"]);
    let valid = fresh.lines().next().expect("link").to_owned();
    let before = ok(&bob, &["contacts"]);
    let cases = malformed(&valid, &mut rng);
    assert_eq!(cases.len(), 100);
    for (i, link) in cases.iter().enumerate() {
        let out = run(&bob, &["accept", link]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "case {i} (seed {seed}) {link:?}: status {}, stderr {err}",
            out.status
        );
        assert!(
            err.starts_with("error: ") && err.len() > 30 && !err.contains("panicked"),
            "case {i} (seed {seed}) {link:?}: {err}"
        );
    }
    // Nothing changed, and the real invitation still works after all that.
    assert_eq!(ok(&bob, &["contacts"]), before);
    let accepted = ok(&bob, &["accept", &valid, "--as", "alice (work)"]);
    assert!(accepted.contains("alice (work)"), "{accepted}");
    ok(
        &bob,
        &["send", "alice (work)", "from the second conversation"],
    );
    let read = ok(&alice, &["read", "--wait", "0.5"]);
    assert!(
        read.contains("bob (2) accepted your invitation")
            && read.contains("bob (2): from the second conversation"),
        "{read}"
    );
    relay.assert_no_panic();
}

/// `pigeon invite | head -1`: when the reader goes away the command ends quietly (the status
/// of a broken pipe), never with a panic report.
#[test]
fn a_reader_that_leaves_early_gets_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..3 {
        let mut child = pigeon(&dir.path().join("p"))
            .args(["relay", "--help"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            out.status.success() || out.status.code() == Some(141),
            "{:?}: {stderr}",
            out.status
        );
    }
}

/// `--profile` is the user's profile directory everywhere but in the lab, where it names the
/// censor profile (as `--censor` does); a user profile in the environment is not taken for one.
#[test]
fn lab_commands_read_profile_as_the_censor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = dir.path().join("user");
    for args in [
        &["lab", "run", "--profile", "no-such-censor"][..],
        &["lab", "run", "--censor", "no-such-censor"][..],
        &["--profile", "no-such-censor", "lab", "run"][..],
    ] {
        let out = run(&user, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no profile named \"no-such-censor\"; known: open"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = run(&user, &["lab", "run"]);
    assert!(stderr(&out).contains("which censor?"), "{}", stderr(&out));
}

/// Several relays per person (issue #15): with its first relay gone, a profile makes its
/// invitation on its second, the person accepting starts the conversation on theirs, and the
/// two talk there — without anyone being told anything.
#[test]
fn new_conversations_go_to_the_first_relay_that_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["first", "second"] {
        std::fs::create_dir(dir.path().join(d)).expect("relay directory");
    }
    let mut first = Relay::start(RelayOpts::in_dir(&dir.path().join("first")));
    let second = Relay::start(RelayOpts::in_dir(&dir.path().join("second")));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (first_link, second_link) = (first.link.to_string(), second.link.to_string());
    for (who, name) in [(&alice, "alice"), (&bob, "bob")] {
        ok(who, &["init", "--name", name, "--relay", &first_link]);
        let added = ok(who, &["relays", "add", &second_link]);
        assert!(added.contains("Added the relay"), "{added}");
    }
    let again = ok(&alice, &["relays", "add", &second_link]);
    assert!(again.contains("already"), "{again}");
    let listed = ok(&alice, &["relays", "list"]);
    assert_eq!(listed.matches("pigeon://relay#").count(), 2, "{listed}");
    assert!(
        listed.find(&first_link).expect("first listed")
            < listed.find(&second_link).expect("second listed"),
        "{listed}"
    );
    first.stop();
    // The first relay refuses connections now: the second answers.
    let invite = ok(&alice, &["invite", "--no-qr"]);
    let line = invite.lines().next().expect("a link line").to_owned();
    let parsed = pigeon_client::Invite::parse(&line).expect("an invitation");
    assert_eq!(
        parsed.relay.relay_key(),
        second.link.relay_key(),
        "the invitation is on the second relay"
    );
    ok(&bob, &["accept", &line]);
    ok(&bob, &["send", "alice", "through the second relay"]);
    let read = ok(&alice, &["read", "--wait", "0.5"]);
    assert!(read.contains("through the second relay"), "{read}");
    ok(&alice, &["send", "bob", "and back"]);
    let read = ok(&bob, &["read", "--wait", "0.5"]);
    assert!(read.contains("and back"), "{read}");
    // The list is the person's to shape: the only relay cannot go; removing the first
    // promotes the next.
    let out = run(&alice, &["relays", "remove", &first_link]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = ok(&alice, &["relays", "list"]);
    assert_eq!(listed.matches("pigeon://relay#").count(), 1, "{listed}");
    assert!(
        listed.contains("(first)") && listed.contains(&second_link),
        "{listed}"
    );
    let out = run(&alice, &["relays", "remove", &second_link]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("only relay"), "{}", stderr(&out));
    second.assert_no_panic();
}

/// Shell completions and manual pages come from the command definitions: every command is in
/// them, and a reader that goes away early ends the program quietly.
#[test]
fn completions_and_manual_pages_cover_every_command() {
    let pigeon = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pigeon"));
        c.stdin(std::process::Stdio::null());
        c
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = pigeon().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["backup", "restore", "devices", "group", "proxies"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = pigeon()
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "an unknown shell is refused");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pigeon()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success());
    for page in [
        "pigeon.1",
        "pigeon-backup.1",
        "pigeon-group-create.1",
        "pigeon-devices-link.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let out = pigeon().arg("man").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains(".SH SYNOPSIS"));
}
