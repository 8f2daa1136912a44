//! Probe resistance of the tls front (issue #5): `pigeon lab probe` — replays of a real client
//! hello with the changes active probers make, random probes, HTTPS and HTTP/2 requests with
//! and without SNI, plain HTTP — against the relay's front and against the bare cover site (the
//! same site, certificate and nginx, without the relay) finds nothing that tells them apart.
//! The front hands everything that is not a tunnel to the same nginx, byte for byte.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;

use support::{Relay, RelayOpts, cover_certificate, free_port};

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx serving one site on HTTPS (the bare cover) and in cleartext HTTP/1.1 and HTTP/2 (for
/// the relay's front to pass connections to).
fn nginx(dir: &Path, https: u16, http1: u16, h2c: u16, cert: &Path, key: &Path) -> Nginx {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>Tallinn bakery</h1>\n").expect("index");
    let conf = format!(
        "worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{https} ssl http2;
        listen 127.0.0.1:{http1};
        listen 127.0.0.1:{h2c} http2;
        server_name cover.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {site};
    }}
}}
",
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
        site = site.display(),
    );
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    for port in [https, http1, h2c] {
        wait_for(port);
    }
    Nginx(child)
}

/// The first flight of a real `pigeon` tls client (its ClientHello), caught by a listener.
fn first_flight(dir: &Path) -> std::path::PathBuf {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let params =
        pigeon_transport::TlsParams::new(None, "/x", [1; 32], None, pigeon_transport::Rotate::Off)
            .expect("params");
    let route = pigeon_transport::Route::tls("127.0.0.1", port, &params).expect("route");
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let dialer = pigeon_transport_tls::Dialer::new().expect("dialer");
            let _ = dialer.dial(&route, Duration::from_secs(3)).await;
        });
    });
    let (mut conn, _) = listener.accept().expect("the client connects");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut hello = vec![0u8; 4096];
    let n = std::io::Read::read(&mut conn, &mut hello).expect("a hello");
    hello.truncate(n);
    drop(conn);
    let _ = client.join();
    assert_eq!(hello.first(), Some(&0x16), "a TLS handshake record");
    let path = dir.join("first-flight.bin");
    std::fs::write(&path, &hello).expect("write");
    path
}

/// Runs `pigeon lab probe` against a relay's front (passing strangers to nginx's HTTPS port)
/// and against nginx itself; returns the report and the probes that told them apart. With
/// `ech`, the front has a name for the outer hello and recognises its clients by ECH.
fn probe_front_and_cover(ech: bool) -> (serde_json::Value, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = cover_certificate(dir.path());
    let (https, http1, h2c) = (free_port(), free_port(), free_port());
    let _nginx = nginx(&dir.path().join("nginx"), https, http1, h2c, &cert, &key);
    let mut opts = RelayOpts::in_dir(dir.path())
        .arg("--tls")
        .arg("127.0.0.1:0");
    if ech {
        opts = opts.arg("--sni").arg("cover.test");
    }
    let relay = Relay::start(
        opts.arg("--cert")
            .arg(cert.to_str().expect("utf-8"))
            .arg("--key")
            .arg(key.to_str().expect("utf-8"))
            .arg("--pin")
            .arg("--cover")
            .arg(&format!("http://127.0.0.1:{http1}"))
            .arg("--cover-h2c")
            .arg(&format!("http://127.0.0.1:{h2c}"))
            .arg("--cover-tls")
            .arg(&format!("127.0.0.1:{https}")),
    );
    let params = relay.link.routes()[0]
        .tls_params()
        .expect("a tls route")
        .expect("valid");
    assert_eq!(
        params.ech(),
        ech,
        "the link says `ech=1` exactly when the front has a name"
    );
    let front = relay.link.routes()[0].port();
    let flight = first_flight(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["lab", "probe", &format!("127.0.0.1:{front}")])
        .args(["--reference", &format!("127.0.0.1:{https}")])
        .arg("--first-flight")
        .arg(&flight)
        .args(["--sni", "cover.test", "--json", "--seed", "5"])
        .env("PIGEON_LOG", "warn")
        .output()
        .expect("pigeon lab probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    if ech {
        two_people_talk(dir.path(), &relay.link.to_string());
    }
    let differing: Vec<String> = report["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|p| p["differs"].as_bool() == Some(true))
        .map(|p| format!("{}: {}", p["probe"], p["why"]))
        .collect();
    (report, differing)
}

/// Two people talk over `link` (a message larger than one connection's first flights each way).
fn two_people_talk(dir: &Path, link: &str) {
    const PASS: &str = "probe test passphrase";
    let ok = |profile: &Path, args: &[&str]| support::client_ok(profile, PASS, args);
    let (alice, bob) = support::introduced(dir, PASS, link);
    let big = "e".repeat(40_000);
    ok(&bob, &["send", "alice", &format!("over ECH {big}")]);
    let mut read = String::new();
    for _ in 0..3 {
        read.push_str(&ok(&alice, &["read", "--wait", "1"]));
        if read.contains("over ECH eee") {
            break;
        }
    }
    assert!(read.contains("over ECH eee"), "{read}");
    ok(&alice, &["send", "bob", "and back"]);
    let read = ok(&bob, &["read", "--wait", "1"]);
    assert!(read.contains("and back"), "{read}");
}

/// With ECH, every probe — the JARM-style hellos included — meets nginx's own TLS.
#[test]
fn the_front_cannot_be_told_from_the_bare_cover() {
    let (report, differing) = probe_front_and_cover(true);
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert!(
        differing.is_empty(),
        "probes tell them apart: {differing:?}"
    );
    assert!(
        report["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .filter(|p| p["probe"].as_str().is_some_and(|n| n.starts_with("jarm-")))
            .count()
            == 10,
        "the JARM-style hellos ran"
    );
    assert_eq!(report["censor_verdict"]["flagged"], false);
}

/// The control: without a name for the outer hello there is no ECH, a well-formed hello meets
/// the front's own TLS (rustls), and the JARM-style hellos tell it from nginx.
#[test]
fn without_ech_a_jarm_scan_tells_the_front_from_the_cover() {
    let (_, differing) = probe_front_and_cover(false);
    assert!(
        differing
            .iter()
            .any(|d| d.contains("jarm-") && d.contains("ServerHello")),
        "the scan should see rustls, not nginx: {differing:?}"
    );
}
