//! The `tls` transport with real processes (issue #5): two people talk through
//! `pigeon relay --tls`; strangers, replayed tokens, TLS 1.2 and HTTP/1.1 get the cover site;
//! and under a freeze (a forwarder that stops passing server bytes past a threshold, as rule 5
//! of CENSORS.md does) the conversation keeps flowing — with the cap configured in the link,
//! and with the cap learned from the first frozen connection.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use support::{Relay, RelayOpts, curl};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PASS: &str = "tls test passphrase";

fn ok(profile: &Path, args: &[&str]) -> String {
    support::client_ok(profile, PASS, args)
}

/// A relay whose link has only the tls route, its front on `front`.
fn tls_relay(dir: &Path, front: &str, extra: &[&str]) -> Relay {
    let mut opts = RelayOpts::in_dir(dir)
        .arg("--tls")
        .arg(front)
        .arg("--sni")
        .arg("cover.test");
    for a in extra {
        opts = opts.arg(a);
    }
    let relay = Relay::start(opts);
    let routes: Vec<String> = relay
        .link
        .routes()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].starts_with("tls://127.0.0.1:"), "{routes:?}");
    for param in ["key=", "path=", "pin=", "sni=cover.test"] {
        assert!(routes[0].contains(param), "{param} in {routes:?}");
    }
    relay
}

fn tls_port(relay: &Relay) -> u16 {
    relay.link.routes()[0].port()
}

/// `from` sends `count` messages of about `len` bytes to its contact `to_name`; `to` (whose
/// contact `from_name` is) reads them all, in order.
fn exchange(
    (from, from_name): (&Path, &str),
    (to, to_name): (&Path, &str),
    count: usize,
    len: usize,
) {
    let filler = "x".repeat(len);
    for i in 0..count {
        ok(from, &["send", to_name, &format!("m{i:04} {filler}")]);
    }
    let mut seen = String::new();
    for _ in 0..5 {
        seen.push_str(&ok(to, &["read", from_name, "--wait", "1"]));
        if (0..count).all(|i| seen.contains(&format!("m{i:04} "))) {
            break;
        }
    }
    let mut last = 0;
    for i in 0..count {
        let at = seen.find(&format!("m{i:04} ")).unwrap_or_else(|| {
            let got: Vec<&str> = seen
                .lines()
                .filter_map(|l| l.split(": ").nth(1).and_then(|t| t.get(..5)))
                .collect();
            panic!("message {i} of {count} missing; got {got:?}")
        });
        assert!(at >= last, "message {i} out of order");
        last = at;
    }
}

#[test]
fn two_people_talk_through_the_tls_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = tls_relay(dir.path(), "127.0.0.1:0", &[]);
    let (alice, bob) = support::introduced(dir.path(), PASS, &relay.link.to_string());
    exchange((&alice, "alice"), (&bob, "bob"), 20, 100);
    exchange((&bob, "bob"), (&alice, "alice"), 5, 16_000);
}

#[test]
fn strangers_and_replayed_tokens_get_the_cover_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>Recipes from Tallinn</h1>\n").expect("index");
    let relay = tls_relay(
        dir.path(),
        "127.0.0.1:0",
        &["--cover", site.to_str().expect("utf-8")],
    );
    let port = tls_port(&relay);
    let base = format!("https://cover.test:{port}");
    let resolve = format!("cover.test:{port}:127.0.0.1");
    let route = &relay.link.routes()[0];
    let params = route.tls_params().expect("tls").expect("valid");

    // A browser-like visitor, over HTTP/2 and HTTP/1.1, and a TLS 1.2-only one.
    for extra in [
        &["--http2"][..],
        &["--http1.1"],
        &["--tlsv1.2", "--tls-max", "1.2"],
    ] {
        let mut args = vec!["--resolve", &resolve];
        args.extend_from_slice(extra);
        let url = format!("{base}/");
        args.push(&url);
        let (body, code) = curl(&args);
        assert_eq!(code, "200", "{extra:?}");
        assert!(body.contains("Recipes from Tallinn"), "{extra:?}: {body}");
    }
    // Unknown paths, the secret path without a token, with a bad token, and a GET to it.
    let secret = params.path();
    for path in [
        "/nope".to_owned(),
        secret.to_owned(),
        format!("{secret}/not-a-token"),
        format!("{secret}/{}", "A".repeat(68)),
    ] {
        let url = format!("{base}{path}");
        let (body, code) = curl(&[
            "--http2",
            "--resolve",
            &resolve,
            "-X",
            "POST",
            "-d",
            "x",
            &url,
        ]);
        assert_eq!(code, "404", "POST {path}");
        assert!(body.contains("<center>nginx</center>"), "{body}");
        let (_, code) = curl(&["--http2", "--resolve", &resolve, &url]);
        assert_eq!(code, "404", "GET {path}");
    }
    // A valid token opens the tunnel once; replayed, it gets what any stranger gets.
    let key = pigeon_transport_tls::TokenKey::new(*params.key());
    let leg = pigeon_transport_tls::token::Leg {
        session: [7; 16],
        index: 0,
        budget: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = pigeon_transport_tls::token::mint(&key, secret, &leg, now, [3; 8]);
    let url = format!("{base}{secret}/{token}");
    let post = [
        "--http2",
        "--resolve",
        &resolve,
        "-X",
        "POST",
        "-d",
        "garbage",
        &url,
    ];
    let (_, first) = curl(
        &["--max-time", "2"]
            .into_iter()
            .chain(post)
            .collect::<Vec<_>>(),
    );
    assert_eq!(first, "200", "the first use opens the tunnel");
    let (body, replay) = curl(&post);
    assert_eq!(replay, "404", "a replayed token is a stranger");
    assert!(body.contains("404 Not Found"), "{body}");
    // POST to a page that exists is refused the way nginx refuses it.
    let url = format!("{base}/index.html");
    let (body, code) = curl(&[
        "--http2",
        "--resolve",
        &resolve,
        "-X",
        "POST",
        "-d",
        "x",
        &url,
    ]);
    assert_eq!(code, "405");
    assert!(body.contains("405 Not Allowed"), "{body}");
}

/// What a censor applying rule 5 sees per TCP connection: server→client bytes.
#[derive(Default)]
struct Counts {
    per_connection: Vec<u64>,
}

/// A loopback forwarder that counts server→client bytes per connection and, past `freeze`,
/// stops passing them on (silently, as the 16–20 KB freeze does).
fn forwarder(target: u16, freeze: Option<u64>) -> (u16, Arc<Mutex<Counts>>) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = Arc::clone(&counts);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr").port())
                .expect("port");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let index = {
                        let mut c = shared.lock().expect("counts");
                        c.per_connection.push(0);
                        c.per_connection.len() - 1
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut passed = 0u64;
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n as u64,
                        };
                        let allowed = freeze.map_or(n, |f| n.min(f.saturating_sub(passed)));
                        if allowed > 0 {
                            let end = usize::try_from(allowed).expect("small");
                            if cw.write_all(&buf[..end]).await.is_err() {
                                break;
                            }
                        }
                        passed += allowed;
                        shared.lock().expect("counts").per_connection[index] = passed;
                    }
                    up.abort();
                });
            }
        });
    });
    (rx.recv().expect("forwarder port"), counts)
}

fn freeze_scenario(rotate: &str, freeze: u64) -> Vec<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    // The relay's link names the forwarder, which sits where a censor would.
    let front = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let front_port = front.local_addr().expect("addr").port();
    drop(front);
    let (fwd, counts) = forwarder(front_port, Some(freeze));
    let relay = tls_relay(
        dir.path(),
        &format!("127.0.0.1:{front_port}"),
        &[
            "--tls-public",
            &format!("127.0.0.1:{fwd}"),
            "--rotate",
            rotate,
        ],
    );
    let (alice, bob) = support::introduced(dir.path(), PASS, &relay.link.to_string());
    // More than 1 MiB server→client to bob, in messages of 48 KB.
    exchange((&alice, "alice"), (&bob, "bob"), 23, 48_000);
    counts.lock().expect("counts").per_connection.clone()
}

#[test]
fn a_configured_cap_keeps_every_connection_under_the_freeze() {
    let per_connection = freeze_scenario("14k", 14 * 1024);
    let total: u64 = per_connection.iter().sum();
    assert!(
        total >= 1 << 20,
        "at least 1 MiB went to the clients: {total}"
    );
    // No connection reached the threshold: nothing was ever frozen.
    let max = per_connection.iter().copied().max().unwrap_or(0);
    assert!(
        max < 14 * 1024,
        "largest connection {max} bytes: {per_connection:?}"
    );
    assert!(
        per_connection.len() > 64,
        "{} connections",
        per_connection.len()
    );
}

#[test]
fn a_learned_cap_keeps_the_conversation_flowing() {
    let per_connection = freeze_scenario("auto", 20 * 1024);
    let total: u64 = per_connection.iter().sum();
    assert!(
        total >= 1 << 20,
        "at least 1 MiB went to the clients: {total}"
    );
    let frozen = per_connection.iter().filter(|&&n| n >= 20 * 1024).count();
    // bob's profile learns the cap once and keeps it for every later run.
    assert!(
        frozen <= 2,
        "{frozen} connections froze: {per_connection:?}"
    );
}
