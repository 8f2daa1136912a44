//! `pigeon proxy` and `pigeon proxies` (issue #15), real processes: a relay with a tls front, a
//! volunteer proxy with its own, and two people. alice reaches the relay only through the proxy
//! (`proxies add --always`); they talk both ways; with the proxy gone, alice's client says
//! that the proxy route failed, and never goes to the relay directly.

#[path = "support.rs"]
mod support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Relay, RelayOpts};

const PASS: &str = "proxy test passphrase";

fn ok(profile: &Path, args: &[&str]) -> String {
    support::client_ok(profile, PASS, args)
}

/// A `pigeon proxy` child process; killed when dropped.
struct Proxy {
    child: Child,
    link: String,
}

impl Proxy {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .args([
                "proxy",
                "--no-qr",
                "--tls",
                "127.0.0.1:0",
                "--sni",
                "proxy.test",
            ])
            .arg("--data")
            .arg(dir.join("proxy-data"))
            .args(extra)
            .env(
                "PIGEON_LOG",
                std::env::var("PIGEON_TEST_PROXY_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(dir.join("proxy.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("pigeon proxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let link = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the proxy printed its link")
            .trim()
            .to_owned();
        assert!(link.starts_with("pigeon://proxy#"), "{link}");
        Self { child, link }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_people_talk_while_one_reaches_the_relay_only_through_a_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--tls")
            .arg("127.0.0.1:0")
            .arg("--sni")
            .arg("cover.test"),
    );
    let metrics_port = support::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let proxy = Proxy::start(dir.path(), &["--metrics", &metrics_addr]);
    let link = relay.link.to_string();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    ok(&alice, &["init", "--name", "alice", "--relay", &link]);
    let added = ok(&alice, &["proxies", "add", &proxy.link, "--always"]);
    assert!(added.contains("only through proxies"), "{added}");
    let listed = ok(&alice, &["proxies", "list"]);
    assert!(
        listed.contains("(always)") && listed.contains(&proxy.link),
        "{listed}"
    );
    assert!(
        !listed.contains("key="),
        "the listing shows no secret outside the link: {listed}"
    );

    ok(&bob, &["init", "--name", "bob", "--relay", &link]);
    let invite = ok(&alice, &["invite", "--no-qr"]);
    let line = invite
        .lines()
        .find(|l| l.starts_with("pigeon://invite#"))
        .expect("an invitation");
    ok(&bob, &["accept", line]);
    // The invitation carried alice's proxy: bob keeps it, as a way to try after the direct
    // routes (not `always`: that is each person's own choice).
    let bobs = ok(&bob, &["proxies", "list"]);
    assert!(
        bobs.contains(&proxy.link) && !bobs.contains("(always)"),
        "{bobs}"
    );
    ok(&bob, &["send", "alice", "hello through the proxy"]);
    let read = ok(&alice, &["read", "--wait", "1"]);
    assert!(read.contains("bob accepted your invitation"), "{read}");
    assert!(read.contains("hello through the proxy"), "{read}");
    let big = "p".repeat(40_000);
    ok(&alice, &["send", "bob", &format!("and back {big}")]);
    let read = ok(&bob, &["read", "--wait", "1"]);
    assert!(read.contains("and back ppp"), "{read}");

    // The proxy counts what it carried, and nothing that names anyone.
    let (metrics, code) = support::curl(&[&format!("http://{metrics_addr}/metrics")]);
    assert_eq!(code, "200", "{metrics}");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(value("pigeon_proxy_sessions_total") >= 1, "{metrics}");
    assert!(value("pigeon_proxy_bytes_up_total") > 40_000, "{metrics}");
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
    // Sessions end with the client processes that opened them: no slot stays taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (now, _) = support::curl(&[&format!("http://{metrics_addr}/metrics")]);
        if now.contains("pigeon_proxy_sessions_active 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions stay open after their clients left: {now}\n{}",
            std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Without the proxy, alice's client does not go to the relay directly: it says the proxy
    // route failed.
    drop(proxy);
    let out = support::client(&alice, PASS)
        .args(["send", "bob", "while the proxy is down"])
        .output()
        .expect("pigeon send");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("via proxy"), "{said}");
    let removed = ok(
        &alice,
        &[
            "proxies",
            "remove",
            listed.lines().nth(1).unwrap_or("").trim(),
        ],
    );
    assert!(removed.contains("Removed"), "{removed}");
    // Direct again: what waited goes out.
    ok(&alice, &["read", "--wait", "0.5"]);
    let read = ok(&bob, &["read", "--wait", "1"]);
    assert!(read.contains("while the proxy is down"), "{read}");
    relay.assert_no_panic();
}

/// `pigeon bench proxy` runs end to end (a relay, a proxy for the rounds, a fresh proxy for the
/// idle sessions) and prints its figures; every idle session it held answered at the end.
#[test]
fn the_proxy_benchmark_runs_and_prints_its_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args([
            "bench",
            "proxy",
            "--rounds",
            "1",
            "--pings",
            "5",
            "--messages",
            "4",
            "--idle",
            "50",
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
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).expect("one JSON object");
    for field in ["proxy_bulk_share_pct", "proxy_rtt_p50_ms"] {
        assert!(
            figures[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {figures}"
        );
    }
    // (Fifty sessions are too few for the figure itself to mean much: a number is enough.)
    assert!(
        figures["proxy_kib_per_idle_session"].as_f64().is_some(),
        "{figures}"
    );
    assert_eq!(figures["idle_sessions"], 50, "{figures}");
}
