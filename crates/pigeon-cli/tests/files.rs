//! Photos and files with real processes (issue #17): alice sends bob a file and a picture
//! with `pigeon send NAME --file`, bob's `pigeon read --save-to` fetches, checks and saves
//! them byte for byte (the picture with its thumbnail); an upload and a download cut by
//! `kill -9` at a seeded moment go on from where they stopped; a group of three gets a file;
//! the relay's store never holds the file's bytes; an empty file, one over 100 MiB and a
//! file number that does not exist are refused with a sentence.

#[path = "support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts, Rng};

const PASS: &str = "files test passphrase";

fn ok(profile: &Path, args: &[&str]) -> String {
    support::client_ok(profile, PASS, args)
}

fn run(profile: &Path, args: &[&str]) -> Output {
    support::client(profile, PASS)
        .args(args)
        .output()
        .expect("run pigeon")
}

fn files_json(profile: &Path) -> Vec<serde_json::Value> {
    let out = ok(profile, &["files", "--json"]);
    serde_json::from_str::<serde_json::Value>(out.trim())
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .cloned()
        .expect("an array")
}

/// `len` seeded random bytes with `marker` at every MiB, written to `path`.
fn random_file(path: &Path, len: usize, seed: u64, marker: &[u8]) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes.truncate(len);
    for at in (0..len.saturating_sub(marker.len())).step_by(1 << 20) {
        bytes[at..at + marker.len()].copy_from_slice(marker);
    }
    std::fs::write(path, &bytes).expect("write the file");
    bytes
}

fn byte(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(0)
}

/// A 900×600 PNG (a gradient, so it does not compress to nothing).
fn picture(path: &Path) -> Vec<u8> {
    let mut png = Vec::new();
    let img = image::RgbImage::from_fn(900, 600, |x, y| {
        image::Rgb([byte(x % 251), byte(y % 241), byte((x * y) % 239)])
    });
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode a png");
    std::fs::write(path, &png).expect("write the picture");
    png
}

/// A relay under `dir`, alice and bob introduced (bob has read alice's side), and the
/// directory bob saves files in.
fn talking(dir: &Path) -> (Relay, PathBuf, PathBuf, PathBuf) {
    let relay = Relay::start(RelayOpts::in_dir(dir));
    let (alice, bob) = support::introduced(dir, PASS, &relay.link.to_string());
    ok(&bob, &["read", "--wait", "0.3"]);
    let inbox = dir.join("bob-saved");
    std::fs::create_dir_all(&inbox).expect("mkdir");
    (relay, alice, bob, inbox)
}

/// Bob reads until the file called `name` is saved in `dir` (or `within` passes).
fn read_until_saved(profile: &Path, dir: &Path, name: &str, within: Duration) -> PathBuf {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = run(
            profile,
            &[
                "read",
                "--wait",
                "0.5",
                "--save-to",
                dir.to_str().expect("dir"),
            ],
        );
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if dir.join(name).exists() {
            return dir.join(name);
        }
    }
    panic!("{name} was not saved in time; last read said:\n{last}");
}

#[test]
fn files_and_pictures_arrive_whole_and_the_relay_never_sees_them() {
    let seed = support::seed_from_env("PIGEON_FILES_SEED");
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, alice, bob, inbox) = talking(dir.path());

    // A 5 MiB file with a caption, and a picture.
    let marker = b"PLAINTEXT-MARKER-that-must-never-reach-the-relay";
    let report = dir.path().join("report.bin");
    let sent = random_file(&report, 5 << 20, seed, marker);
    let out = ok(
        &alice,
        &[
            "send",
            "bob",
            "--file",
            report.to_str().expect("path"),
            "the",
            "report",
        ],
    );
    assert!(out.contains("Sent report.bin to bob"), "{out}");
    let photo = dir.path().join("cat.png");
    let png = picture(&photo);
    ok(
        &alice,
        &["send", "bob", "--file", photo.to_str().expect("path")],
    );

    let saved = read_until_saved(&bob, &inbox, "report.bin", Duration::from_secs(60));
    assert!(
        std::fs::read(&saved).expect("read") == sent,
        "the file changed on its way"
    );
    let saved_png = read_until_saved(&bob, &inbox, "cat.png", Duration::from_secs(60));
    assert!(std::fs::read(&saved_png).expect("read") == png);

    // Bob's list: both received, the picture with a thumbnail and its type judged from its
    // bytes; the caption is the line's text.
    let files = files_json(&bob);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f["state"] == "received" && f["outgoing"] == false)
    );
    let cat = files.iter().find(|f| f["name"] == "cat.png").expect("cat");
    assert_eq!(cat["kind"], "photo");
    assert_eq!(cat["mime"], "image/png");
    assert_eq!(cat["thumbnail"], true);
    let history = ok(&bob, &["group", "history", "alice"]);
    assert!(
        history.contains("report.bin") && history.contains("the report"),
        "{history}"
    );
    // Alice's side: sent, and the contact's device confirmed it.
    let mine = files_json(&alice);
    assert!(
        mine.iter()
            .all(|f| f["state"] == "sent" && f["outgoing"] == true),
        "{mine:?}"
    );

    // `pigeon save` writes it again wherever asked, under a new name if the name is taken.
    let again = ok(
        &bob,
        &[
            "save",
            &files[0]["id"].to_string(),
            inbox.to_str().expect("dir"),
        ],
    );
    assert!(again.contains("report (2).bin"), "{again}");

    // The relay's store holds none of the file's bytes.
    let mut store = Vec::new();
    for entry in walk(&dir.path().join("data")) {
        store.extend(std::fs::read(entry).unwrap_or_default());
    }
    assert!(
        store.len() > 5 << 20,
        "the chunks are stored ({} bytes)",
        store.len()
    );
    assert!(
        support::find(&store, marker).is_none(),
        "the relay stored plaintext"
    );
    assert!(
        support::find(&store, b"report.bin").is_none(),
        "the relay stored the name"
    );
    assert!(support::find(&store, &sent[1000..1064]).is_none());
    relay.assert_no_panic();
}

#[test]
fn uploads_and_downloads_cut_by_kill_9_go_on_where_they_stopped() {
    let seed = support::seed_from_env("PIGEON_FILES_KILL_SEED");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, alice, bob, inbox) = talking(dir.path());
    let big = dir.path().join("big.bin");
    let sent = random_file(&big, 40 << 20, seed, b"marker");

    // The upload is killed at a seeded moment; the line is in alice's transcript already.
    let mut child = support::client(&alice, PASS)
        .args(["send", "bob", "--file", big.to_str().expect("path")])
        .spawn()
        .expect("spawn");
    // Killed at a seeded moment once the file is sealed into the profile (the upload starts
    // right after).
    let sealed = alice.join("files");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !walk(&sealed).iter().any(|p| p.extension().is_none()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(rng.below(250)));
    let _ = child.kill();
    let _ = child.wait();
    let before = files_json(&alice);
    assert_eq!(before.len(), 1, "{before:?}");
    println!(
        "upload killed at {} of {} bytes ({})",
        before[0]["done"], before[0]["size"], before[0]["state"]
    );
    // Any later command carries on with it.
    let out = ok(&alice, &["read", "--wait", "0.2"]);
    assert!(
        out.contains("sent big.bin") || before[0]["state"] == "sent",
        "{out}"
    );
    assert_eq!(files_json(&alice)[0]["state"], "sent");

    // The download is killed at a seeded moment, then goes on.
    let mut child = support::client(&bob, PASS)
        .args(["read", "--wait", "0.2"])
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(500 + rng.below(2000)));
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "download killed at {:?}",
        files_json(&bob).first().map(|f| f["done"].clone())
    );
    let saved = read_until_saved(&bob, &inbox, "big.bin", Duration::from_secs(120));
    assert!(
        std::fs::read(&saved).expect("read") == sent,
        "the file changed on its way"
    );
    relay.assert_no_panic();
}

#[test]
fn a_group_gets_a_file_and_bad_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let link = relay.link.to_string();
    let (alice, bob) = support::introduced(dir.path(), PASS, &link);
    let carol = dir.path().join("carol");
    ok(&carol, &["init", "--name", "carol", "--relay", &link]);
    ok(&bob, &["read", "--wait", "0.3"]);
    ok(&alice, &["group", "create", "family"]);
    ok(&alice, &["group", "add", "family", "bob"]);
    let invite = ok(&alice, &["group", "invite", "family", "--no-qr"]);
    let line = invite
        .lines()
        .find(|l| l.starts_with("pigeon://invite#"))
        .expect("an invitation");
    ok(&carol, &["accept", line]);
    for p in [&bob, &alice, &carol, &bob, &alice, &carol] {
        ok(p, &["read", "--wait", "0.3"]);
    }
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "shopping: bread, milk\n").expect("write");
    let out = ok(
        &alice,
        &["send", "family", "--file", notes.to_str().expect("path")],
    );
    assert!(out.contains("Sent notes.txt to family"), "{out}");
    for p in [&bob, &carol] {
        let to = dir
            .path()
            .join(format!("{}-saved", p.display().to_string().len()));
        std::fs::create_dir_all(&to).expect("mkdir");
        let saved = read_until_saved(p, &to, "notes.txt", Duration::from_secs(60));
        assert_eq!(
            std::fs::read_to_string(saved).expect("read"),
            "shopping: bread, milk\n"
        );
    }

    // Refusals say what is wrong and send nothing.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").expect("write");
    let out = run(
        &alice,
        &["send", "bob", "--file", empty.to_str().expect("path")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is empty"),
        "{out:?}"
    );
    let huge = dir.path().join("huge");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(101 << 20))
        .expect("sparse file");
    let out = run(
        &alice,
        &["send", "bob", "--file", huge.to_str().expect("path")],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 100 MiB"),
        "{out:?}"
    );
    let out = run(&alice, &["send", "bob", "--file", "/nonexistent/x"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x"),
        "{out:?}"
    );
    let out = run(&bob, &["save", "999"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no file #999"),
        "{out:?}"
    );
    assert_eq!(files_json(&alice).len(), 1, "a refused file was kept");
    relay.assert_no_panic();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
