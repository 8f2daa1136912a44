//! The web client in a real browser (issue #17): two `pigeon app` processes (alice, bob) and
//! carol on the command line, against a real relay, driven in Debian's Chromium by
//! `web/tests/e2e.mjs` (playwright-core, installed by the web client's `npm ci`): they talk,
//! exchange a picture both ways (thumbnails shown, the whole fetched and checked byte for byte),
//! see delivered and read marks, make, use and manage a group of three. Screenshots of the main screens go to `target/screenshots/`.

#[path = "support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::{Relay, RelayOpts};

const PASS: &str = "web e2e passphrase";

#[test]
fn two_people_use_the_web_client_in_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| dir.path().join(n));
    for (p, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        support::client_ok(
            p,
            PASS,
            &["init", "--name", name, "--relay", &relay.link.to_string()],
        );
    }
    let pictures = [
        ("ALICE_PICTURE", "sunset.png", 40),
        ("BOB_PICTURE", "harbour.png", 90),
    ]
    .map(|(var, name, tint)| (var, picture(&dir.path().join(name), tint)));
    let (_a, alice_url) = support::start_app(&alice, PASS);
    let (_b, bob_url) = support::start_app(&bob, PASS);
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    let out = Command::new("node")
        .arg(web.join("tests/e2e.mjs"))
        .args([&alice_url, &bob_url])
        .arg(&shots)
        .current_dir(&web)
        .env("PIGEON_BIN", env!("CARGO_BIN_EXE_pigeon"))
        .env("CAROL_PROFILE", &carol)
        .env("PIGEON_PASSPHRASE", PASS)
        .env("PIGEON_LOG", "warn")
        .envs(pictures.iter().map(|(var, path)| (*var, path)))
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shot in [
        "invite.png",
        "conversation.png",
        "group.png",
        "photo.png",
        "members.png",
        "phone-width.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}

/// A 1200×800 PNG at `path` (a gradient tinted by `tint`).
fn picture(path: &Path, tint: u32) -> PathBuf {
    let byte = |v: u32| u8::try_from(v % 256).unwrap_or(0);
    let img = image::RgbImage::from_fn(1200, 800, |x, y| {
        image::Rgb([byte(x / 5 + tint), byte(y / 4), byte(tint * 2 + x / 9)])
    });
    img.save(path).expect("write a picture");
    path.to_owned()
}
