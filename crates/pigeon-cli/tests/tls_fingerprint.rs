//! The `tls` client looks like the browser on this machine (issue #5): Debian's Chromium is
//! captured fresh — never a stored string — and set beside `pigeon`:
//!
//! * **TLS**: tshark captures both ClientHellos on loopback; their JA4 and JA4_r (computed by
//!   the lab's parser, checked against FoxIO's published examples) must be equal.
//! * **HTTP/2**: both talk to an HTTPS server of the lab's own (rustls, hyper) that records
//!   what they send; their SETTINGS, connection window, PRIORITY frames, pseudo-header order,
//!   and the header order and priority of a streaming `fetch()` POST must be equal.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pigeon_lab::ja4::{self, Proto};
use pigeon_lab::tls::{self, Parsed};
use support::{Relay, RelayOpts};

/// Debian's Chromium, headless, resolving `cover.test` to loopback and trusting any
/// certificate; nothing else on the network.
fn chromium(profile: &Path, url: &str) -> std::process::Output {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--host-resolver-rules=MAP cover.test 127.0.0.1",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (apt-get install chromium)");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// tshark capturing TCP to `port` on loopback into `file`, until stopped.
struct Capture {
    child: Child,
}

impl Capture {
    fn start(file: &Path, port: u16) -> Self {
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-f", &format!("tcp dst port {port}"), "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark (apt-get install tshark)");
        // tshark says "Capturing on 'Loopback: lo'" once it is.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Capturing on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("tshark started capturing");
        Self { child }
    }

    fn stop(mut self) {
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// JA4 and JA4_r of every ClientHello in `pcap`.
fn hellos(pcap: &Path) -> Vec<ja4::Ja4> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "tcp.payload",
        ])
        .output()
        .expect("tshark");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| hex::decode(line.trim().replace(':', "")).ok())
        .filter_map(|payload| match tls::parse_stream(&payload) {
            Parsed::Complete(hello) => Some(ja4::fingerprint(&hello, Proto::Tcp)),
            _ => None,
        })
        .collect()
}

#[test]
fn ja4_is_chromium_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--tls")
            .arg("127.0.0.1:0")
            .arg("--sni")
            .arg("cover.test"),
    );
    let port = relay.link.routes()[0].port();

    let browser_pcap = dir.path().join("chromium.pcap");
    let capture = Capture::start(&browser_pcap, port);
    let page = chromium(
        &dir.path().join("chromium"),
        &format!("https://cover.test:{port}/"),
    );
    capture.stop();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("Welcome to nginx"),
        "Chromium loaded the cover page"
    );
    let browser = hellos(&browser_pcap);
    assert!(!browser.is_empty(), "no ClientHello from Chromium captured");
    let reference = &browser[0];
    assert!(
        browser.iter().all(|h| h == reference),
        "Chromium's JA4 is stable across its connections: {browser:?}"
    );

    // A second relay whose front recognises its clients by ECH (strangers go to the first).
    let ech_dir = dir.path().join("ech-relay");
    std::fs::create_dir_all(&ech_dir).expect("dir");
    let ech_relay = Relay::start(
        RelayOpts::in_dir(&ech_dir)
            .arg("--tls")
            .arg("127.0.0.1:0")
            .arg("--sni")
            .arg("cover.test")
            .arg("--cover-tls")
            .arg(&format!("127.0.0.1:{port}")),
    );
    assert!(
        ech_relay.link.routes()[0]
            .tls_params()
            .expect("a tls route")
            .expect("valid")
            .ech(),
        "the link says ech=1"
    );
    let ech_port = ech_relay.link.routes()[0].port();
    // A browser at the ECH front is passed to the site behind it (here the first relay's
    // front, which serves its cover page), untouched.
    let page = chromium(
        &dir.path().join("chromium-ech"),
        &format!("https://cover.test:{ech_port}/"),
    );
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("Welcome to nginx"),
        "Chromium at the ECH front got the covered site's page"
    );

    for (port, link, name) in [
        (port, relay.link.to_string(), "alice"),
        (ech_port, ech_relay.link.to_string(), "bob"),
    ] {
        pigeon_hellos_match(dir.path(), port, &link, name, reference);
    }
}

/// Captures `pigeon`'s ClientHellos to `port` while a profile `name` is made on `link` and
/// invites, and checks each against Chromium's.
fn pigeon_hellos_match(dir: &Path, port: u16, link: &str, name: &str, reference: &ja4::Ja4) {
    let ours_pcap = dir.join(format!("{name}.pcap"));
    let capture = Capture::start(&ours_pcap, port);
    let profile = dir.join(name);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .args(args)
            .env("PIGEON_PROFILE", &profile)
            .env("PIGEON_PASSPHRASE", "fingerprint")
            .env("PIGEON_LOG", "warn")
            .output()
            .expect("pigeon");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["init", "--name", name, "--relay", link]);
    run(&["invite", "--no-qr"]);
    capture.stop();
    let ours = hellos(&ours_pcap);
    assert!(!ours.is_empty(), "no ClientHello from pigeon captured");
    for hello in &ours {
        println!(
            "chromium {}\npigeon   {} ({name})",
            reference.ja4, hello.ja4
        );
        assert_eq!(hello.ja4, reference.ja4, "JA4");
        assert_eq!(hello.ja4_r, reference.ja4_r, "JA4_r");
    }
}

/// The page Chromium loads: a streaming `fetch()` POST, as the tunnel makes.
const PAGE: &str = "<!DOCTYPE html><html><body><p id=r>waiting</p><script>
const body = new ReadableStream({start(c) { c.enqueue(new Uint8Array(300)); c.close(); }});
fetch('/api/upload', {method: 'POST', body, duplex: 'half',
  headers: {'content-type': 'application/octet-stream'}})
  .then(r => r.text()).then(t => { document.getElementById('r').textContent = 'posted ' + t; })
  .catch(e => { document.getElementById('r').textContent = 'failed ' + e; });
</script></body></html>";

#[test]
fn http2_fingerprint_is_chromium_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cert = pigeon_transport_tls::certs::self_signed(&dir.path().join("key.pem"), "cover.test")
        .expect("certificate");
    let pin = cert.pin;
    let server = rt
        .block_on(pigeon_lab::h2fp::FingerprintServer::start(
            cert.chain, cert.key, PAGE,
        ))
        .expect("server");
    let port = server.addr().port();

    let page = chromium(
        &dir.path().join("chromium"),
        &format!("https://cover.test:{port}/"),
    );
    let text = String::from_utf8_lossy(&page.stdout);
    assert!(
        text.contains("posted ok"),
        "Chromium's fetch went through: {text}"
    );
    let browser: Vec<_> = server
        .recorded()
        .iter()
        .filter_map(|c| pigeon_lab::h2fp::parse(c).ok())
        .filter(|fp| !fp.requests.is_empty())
        .collect();
    let first = browser.first().expect("a Chromium HTTP/2 connection");
    let post = browser
        .iter()
        .flat_map(|fp| &fp.requests)
        .find(|r| r.method == "POST")
        .expect("Chromium's POST");

    let params = pigeon_transport::TlsParams::new(
        Some(
            match pigeon_transport::Host::parse("cover.test").expect("name") {
                pigeon_transport::Host::Name(n) => n,
                _ => unreachable!("a name"),
            },
        ),
        "/api",
        [3; 32],
        Some(pin),
        pigeon_transport::Rotate::Off,
    )
    .expect("params");
    let route = pigeon_transport::Route::tls("127.0.0.1", port, &params).expect("route");
    let before = server.recorded().len();
    rt.block_on(async {
        let dialer = pigeon_transport_tls::Dialer::new().expect("dialer");
        // The lab's server answers the POST with 200, which is all the client waits for. The
        // tunnel is held while the server records (dropping it closes the connection).
        let tunnel = dialer.dial(&route, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tunnel);
    });
    let ours = server.recorded()[before..]
        .iter()
        .filter_map(|c| pigeon_lab::h2fp::parse(c).ok())
        .find(|fp| !fp.requests.is_empty())
        .expect("pigeon's HTTP/2 connection");
    println!("chromium {}\npigeon   {}", first.akamai(), ours.akamai());
    assert_eq!(ours.akamai(), first.akamai(), "Akamai HTTP/2 fingerprint");
    let ours_post = &ours.requests[0];
    println!(
        "chromium POST {:?}\npigeon   POST {:?}",
        post.headers, ours_post.headers
    );
    assert_eq!(ours_post.method, "POST");
    assert_eq!(ours_post.pseudo, post.pseudo, "pseudo-header order");
    assert_eq!(
        ours_post.headers, post.headers,
        "header order of a streaming POST"
    );
    assert_eq!(ours_post.flags, post.flags, "HEADERS flags");
    let (ours_excl, _, ours_weight) = ours_post.priority.expect("priority");
    let (excl, _, weight) = post.priority.expect("Chromium's priority");
    assert_eq!((ours_excl, ours_weight), (excl, weight), "priority");
}
