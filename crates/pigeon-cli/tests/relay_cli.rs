//! `pigeon relay` as an operator meets it: the link it prints, the QR code, the key it keeps,
//! how it stops, and its metrics endpoint.

#[path = "support.rs"]
mod support;

use pigeon_client::{CloseReason, Event, OwnedMailbox, RelayConnection};
use pigeon_proto::auth::random_bytes;
use pigeon_transport::RelayLink;
use pigeon_wire::ErrorCode;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Relay, RelayOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits for the session's close notice and asserts the relay said it is shutting down.
async fn expect_shutting_down(conn: &mut RelayConnection) {
    let event = tokio::time::timeout(Duration::from_secs(5), conn.next_event())
        .await
        .expect("the relay tells connected clients it stops");
    match event {
        Some(Event::Closed(CloseReason::Relay(e))) => {
            assert_eq!(e.error_code(), ErrorCode::ShuttingDown, "{e:?}");
        }
        other => panic!("expected a shutting-down notice, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_a_link_and_qr_keeps_its_key_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = RelayOpts::in_dir(dir.path());
    opts.listen = format!("127.0.0.1:{}", free_port());
    opts.no_qr = false;
    let key_file = opts.data.join("relay.key");
    assert!(!key_file.exists());

    let mut relay = Relay::start(opts.clone());
    let first = relay.link.to_string();
    assert!(first.starts_with("pigeon://relay#"), "{first}");
    assert_eq!(
        RelayLink::parse(&first).expect("the printed link parses"),
        relay.link
    );
    let route = relay.link.routes().first().expect("a route").to_string();
    assert_eq!(route, format!("tcp://{}", opts.listen));
    // The QR code follows the link: rows of half blocks, square, with a quiet zone.
    let qr = relay.stdout_lines(Duration::from_secs(2));
    let rows: Vec<&String> = qr
        .iter()
        .filter(|l| l.chars().any(|c| matches!(c, '█' | '▀' | '▄')))
        .collect();
    assert!(rows.len() >= 10, "no QR code after the link: {qr:?}");
    let width = rows[0].chars().count();
    assert!(
        rows.iter().all(|r| r.chars().count() == width),
        "ragged QR rows"
    );
    assert!(
        width / 2 <= rows.len() + 1 && rows.len() <= width,
        "QR code not square ({width} wide, {} rows)",
        rows.len()
    );

    // The key was created on first run, private to the relay's user.
    let key = std::fs::read(&key_file).expect("the relay created its key");
    assert_eq!(key.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
        let dir = key_file.parent().expect("the data directory");
        let dir_mode = std::fs::metadata(dir).expect("stat").permissions().mode();
        assert_eq!(
            dir_mode & 0o077,
            0,
            "data directory open to others: {dir_mode:o}"
        );
    }

    // SIGTERM with a client connected: it is told, and the relay exits cleanly, promptly. (The
    // handshake also proves the relay is serving, so its signal handlers are in place.)
    let mut client = relay.connect().await;
    let status = relay.signal_and_wait("TERM", Duration::from_secs(5));
    expect_shutting_down(&mut client).await;
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {status}");

    // Same data directory: same key, same link.
    relay.restart();
    assert_eq!(
        relay.link.to_string(),
        first,
        "the link changed across a restart"
    );
    assert_eq!(
        std::fs::read(&key_file).expect("key"),
        key,
        "the key changed"
    );
    // SIGINT stops it cleanly too, and a subscribed connection (which waits on its own
    // wake-up rather than the relay's stop signal) is told as well.
    let mut client = relay.connect().await;
    let mbx = OwnedMailbox::generate().expect("random");
    client
        .create_mailbox(&mbx.key, &mbx.id, mbx.cap_hash())
        .await
        .expect("create mailbox");
    client
        .subscribe(&mbx.key, &mbx.id)
        .await
        .expect("subscribe");
    let status = relay.signal_and_wait("INT", Duration::from_secs(5));
    expect_shutting_down(&mut client).await;
    assert_eq!(status.code(), Some(0), "SIGINT exit: {status}");

    let log = String::from_utf8_lossy(&relay.log_bytes()).into_owned();
    assert_eq!(
        log.matches("created a new relay key").count(),
        1,
        "key created other than exactly once:\n{log}"
    );
    relay.assert_no_panic();
}

#[test]
fn a_damaged_key_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("relay.key"), b"short").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["relay", "--listen", "127.0.0.1:0", "--no-qr", "--data"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .expect("run pigeon relay");
    assert!(!out.status.success(), "started with a damaged key");
    assert!(out.stdout.is_empty(), "printed a link with a damaged key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay key file") && err.contains("damaged"),
        "unclear error: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_store_that_is_not_nats_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unusable = "nats://HOST:PORT";
    for (store, says) in [
        ("http://127.0.0.1:4222", unusable),
        ("nats://127.0.0.1:1,127.0.0.1:2", unusable),
        ("", unusable),
        // A nats:// address where no server answers.
        ("nats://127.0.0.1:1", "NATS JetStream"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .args([
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--no-qr",
                "--store",
                store,
            ])
            .arg("--data")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .output()
            .expect("run pigeon relay");
        assert!(!out.status.success(), "started on store {store:?}");
        assert!(out.stdout.is_empty(), "printed a link on store {store:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "unclear error for {store:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

async fn scrape(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .expect("metrics answer in time")
        .expect("read metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_messages_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = RelayOpts::in_dir(dir.path());
    opts.global = vec!["--log-json".to_owned()];
    let opts = opts.arg("--metrics").arg("127.0.0.1:0");
    let relay = Relay::start(opts);

    // The endpoint's address is in the (JSON) log.
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let log = relay.log_bytes();
            let found = String::from_utf8_lossy(&log).lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let fields = v.get("fields")?;
                (fields.get("message")?.as_str()? == "metrics endpoint up")
                    .then(|| fields.get("addr")?.as_str().map(str::to_owned))?
            });
            if let Some(addr) = found {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the relay logs its metrics address");

    let before = scrape(&addr).await;
    let in_before = metric(&before, "pigeon_messages_in_total");
    let dup_before = metric(&before, "pigeon_messages_duplicate_total");

    let conn = relay.connect().await;
    let m = OwnedMailbox::generate().expect("random");
    conn.create_mailbox(&m.key, &m.id, m.cap_hash())
        .await
        .expect("create");
    let mut first_id = None;
    for i in 0..5 {
        let id: [u8; 16] = random_bytes().expect("random");
        first_id.get_or_insert(id);
        conn.send_first_attempt(&m.id, &m.sender_cap, id, format!("m{i}").into_bytes())
            .await
            .expect("send");
    }
    // A retry counts as a duplicate, not as a new message, also of a post that said it was
    // a first attempt (the relay skipped the lookup, not the record).
    let retry = conn
        .send(
            &m.id,
            &m.sender_cap,
            first_id.expect("sent"),
            b"m0".to_vec(),
        )
        .await
        .expect("retry");
    assert!(retry.duplicate);

    let after = scrape(&addr).await;
    assert_eq!(metric(&after, "pigeon_messages_in_total"), in_before + 5);
    assert_eq!(
        metric(&after, "pigeon_messages_duplicate_total"),
        dup_before + 1
    );
    assert!(metric(&after, "pigeon_connections_total") >= 1);
    assert!(
        after.contains("# TYPE pigeon_messages_in_total counter"),
        "{after}"
    );
    // Labels never carry mailbox ids or keys.
    assert!(!after.contains(&hex::encode(m.id.0)));
    drop(conn);
    relay.assert_no_panic();
}

/// Guards against a race in `pigeon relay`: it prints its link (the sign that it is ready)
/// before its SIGTERM/SIGINT handlers exist (they are installed on the relay loop's first
/// poll), so a supervisor that stops it right after it announced itself kills it with the
/// default signal action instead of a graceful drain. Bash signals it the moment the link is
/// read: spawning `kill` from Rust is too slow to hit the window reliably.
#[test]
fn sigterm_right_after_the_link_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = r#"
        for i in $(seq 1 20); do
            coproc R { exec "$0" relay --data "$1" --listen 127.0.0.1:0 --no-qr 2>/dev/null; }
            read -r link <&"${R[0]}"
            kill -TERM "$R_PID"
            wait "$R_PID"
            echo "$?"
        done
    "#;
    let out = Command::new("bash")
        .args(["-c", script, env!("CARGO_BIN_EXE_pigeon")])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(codes.lines().count(), 20, "{codes}");
    assert!(
        codes.lines().all(|c| c == "0"),
        "exit codes of relays stopped right after their link: {codes:?}"
    );
}

/// `pigeon bench relay` runs end to end against its relay child process (short, small) and
/// prints its figures: the load makes hundreds of mailboxes from one address, which the
/// relay's per-source creation limit must let through for a benchmark relay.
#[test]
fn the_relay_benchmark_runs_and_prints_its_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args([
            "bench",
            "relay",
            "--seconds",
            "1",
            "--skip-idle",
            "--mailboxes",
            "256",
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
    assert!(
        figures["msgs_per_s"].as_f64().expect("msgs_per_s") > 0.0,
        "{figures}"
    );
    assert!(
        figures["p99_ms"].as_f64().expect("p99_ms") > 0.0,
        "{figures}"
    );
}
