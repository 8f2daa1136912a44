//! Backups with real processes (issue #16): alice writes `pigeon backup FILE`; a cut-short
//! copy, a copy with one bit changed and a wrong passphrase are refused by `pigeon restore`
//! without making anything; the backup restored on a new profile is let back into the
//! conversation with bob and into a group by bob's device, keeps the history and talks on,
//! while the device that made the backup reads nothing new.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts};

const PASS: &str = "backup test passphrase";
const BACKUP_PASS: &str = "a different backup passphrase";

fn pigeon(profile: &Path) -> Command {
    let mut cmd = support::client(profile, PASS);
    cmd.env("PIGEON_BACKUP_PASSPHRASE", BACKUP_PASS);
    cmd
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

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `pigeon restore` of `file` into `profile` is refused with a sentence containing `why`, and
/// leaves no profile behind.
fn refused(profile: &Path, file: &Path, why: &str) {
    let out = run(
        profile,
        &["restore", file.to_str().expect("path"), "--wait", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad backup was restored");
    assert!(err.contains(why), "{err}");
    assert!(
        !profile.join("profile.db").exists(),
        "a refused backup left a profile"
    );
}

#[test]
fn a_restored_backup_continues_every_conversation_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (alice, bob) = support::introduced(dir.path(), PASS, &relay.link.to_string());
    read(&bob);
    ok(&alice, &["group", "create", "family"]);
    ok(&alice, &["group", "add", "family", "bob"]);
    for p in [&bob, &alice, &bob] {
        read(p);
    }
    ok(&alice, &["send", "bob", "said before the backup"]);
    ok(&bob, &["send", "family", "bob in the group before"]);
    read(&bob);
    read(&alice);

    let file = dir.path().join("alice.backup");
    let out = run(&alice, &["backup", file.to_str().expect("path"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = json(&out);
    assert_eq!(made["conversations"], 2, "{made}");
    assert_eq!(made["restorable"], 2, "{made}");
    assert!(made["messages"].as_u64().expect("messages") >= 2, "{made}");
    let bytes = std::fs::read(&file).expect("the backup");
    assert_eq!(bytes.len() as u64, made["bytes"].as_u64().expect("bytes"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup is readable by others");
    }
    // No text of the conversation is in the file in the clear.
    assert!(
        !bytes
            .windows(b"said before the backup".len())
            .any(|w| w == b"said before the backup")
    );

    // Damaged or tampered copies, and a wrong passphrase: refused, nothing made.
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    refused(&dir.path().join("from-cut"), &cut, "cut short");
    let flipped = dir.path().join("flipped.backup");
    let mut changed = bytes.clone();
    let at = changed.len() * 2 / 3;
    changed[at] ^= 0x04;
    std::fs::write(&flipped, &changed).expect("write");
    refused(&dir.path().join("from-flipped"), &flipped, "changed");
    let wrong = dir.path().join("from-wrong-passphrase");
    let out = pigeon(&wrong)
        .env("PIGEON_BACKUP_PASSPHRASE", "not the passphrase")
        .args(["restore", file.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase does not open"));
    assert!(!wrong.join("profile.db").exists());

    // alice's phone is lost: the backup is restored on a new machine. A restore killed (-9)
    // at a seeded moment leaves either no profile or a whole one, and the same command again
    // carries on.
    let seed = support::seed_from_env("PIGEON_BACKUP_KILL_SEED");
    let mut rng = support::Rng::new(seed);
    let restored = dir.path().join("alice-restored");
    let mut first = pigeon(&restored)
        .args(["restore", file.to_str().expect("path"), "--wait", "90"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn restore");
    std::thread::sleep(Duration::from_millis(rng.below(2_500)));
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    if restored.join("profile.db").exists() {
        let contacts = ok(&restored, &["contacts"]);
        assert!(contacts.contains("bob"), "a half-made profile: {contacts}");
    }
    // bob's device lets it in when it reads, without bob doing anything else.
    let mut restoring = pigeon(&restored)
        .args([
            "restore",
            file.to_str().expect("path"),
            "--json",
            "--wait",
            "90",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore");
    let until = Instant::now() + Duration::from_secs(120);
    while restoring.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < until, "the restore did not finish");
        if restored.join("profile.db").exists() {
            read(&bob);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = restoring.wait_with_output().expect("restore output");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let back = json(&out);
    assert_eq!(back["back"], 2, "{back}");
    assert_eq!(back["waiting"].as_array().map(Vec::len), Some(0), "{back}");
    let at_bob = read(&bob);
    let history = ok(&bob, &["group", "history", "alice", "--limit", "100"]);
    assert!(
        history.contains("restored from a backup") || at_bob.contains("restored from a backup"),
        "{history}"
    );

    // The history came back, and both conversations go on.
    let before = transcript(&restored, "alice", "bob");
    assert!(
        before.iter().any(|l| l == "alice: said before the backup"),
        "{before:?}"
    );
    ok(&restored, &["send", "bob", "back from the backup"]);
    ok(&restored, &["send", "family", "restored in the group"]);
    ok(&bob, &["send", "alice", "welcome back"]);
    ok(&bob, &["send", "family", "bob after the restore"]);
    for _ in 0..2 {
        read(&restored);
        read(&bob);
    }
    let here = transcript(&restored, "alice", "bob");
    for line in ["alice: back from the backup", "bob: welcome back"] {
        assert!(here.iter().any(|l| l == line), "{here:?}");
    }
    let family_here = transcript(&restored, "alice", "family");
    let family_bob = transcript(&bob, "bob", "family");
    for line in ["alice: restored in the group", "bob: bob after the restore"] {
        assert!(family_here.iter().any(|l| l == line), "{family_here:?}");
        assert!(family_bob.iter().any(|l| l == line), "{family_bob:?}");
    }
    // The device that made the backup was replaced: it is told and reads nothing new.
    let old = read(&alice);
    assert!(
        old.contains("this device was replaced by one restored from its backup"),
        "{old}"
    );
    ok(&bob, &["send", "alice", "only for the restored device"]);
    assert!(!read(&alice).contains("only for the restored device"));
    assert!(read(&restored).contains("only for the restored device"));
    // The backup is spent: restoring it again is let in nowhere.
    let again = dir.path().join("alice-again");
    let out = run(
        &again,
        &[
            "restore",
            file.to_str().expect("path"),
            "--json",
            "--wait",
            "3",
        ],
    );
    read(&bob);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(json(&out)["back"], 0);
}

/// `pigeon bench backup` runs end to end (small) and prints its figures.
#[test]
fn the_backup_benchmark_prints_its_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args([
            "bench",
            "backup",
            "--conversations",
            "2",
            "--messages",
            "400",
            "--limit",
            "120",
            "--json",
        ])
        .env("PIGEON_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run the benchmark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures = json(&out);
    assert_eq!(figures["messages"], 400, "{figures}");
    assert!(
        figures["lines_restored"].as_u64().expect("lines") >= 400,
        "{figures}"
    );
    for field in ["backup_ms", "backup_bytes", "restore_to_usable_ms"] {
        assert!(figures[field].as_u64().expect(field) > 0, "{figures}");
    }
}
