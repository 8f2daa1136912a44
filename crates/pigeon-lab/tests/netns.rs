//! Integration tests in real network namespaces with real processes (curl, nginx).
//!
//! They need root, iproute2, `/dev/net/tun`, curl, nginx and openssl (see the README's install
//! snippet). Without them each test prints why and passes without running: CI on this kind of
//! machine runs as root with them installed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pigeon_lab::net::lab::Lab;
use pigeon_lab::net::{self, DOMESTIC, FOREIGN, FOREIGN_2};
use pigeon_lab::profile::Profile;

fn prerequisites() -> bool {
    if let Err(e) = net::lab_available() {
        skip(&e.to_string());
        return false;
    }
    for tool in ["curl", "nginx", "openssl"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()));
        if !found {
            skip(&format!("{tool} is not installed"));
            return false;
        }
    }
    true
}

/// nginx serving `/big.bin` (64 KiB) over TLS on the lab's web addresses, in the server
/// namespace; killed on drop.
struct Nginx {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn nginx(lab: &Lab) -> Nginx {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=lab",
            "-addext",
            "subjectAltName=DNS:foreign.example,DNS:blocked.example,DNS:site.domestic",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    std::fs::create_dir_all(d.join("www")).expect("www");
    std::fs::write(d.join("www/big.bin"), vec![b'x'; 65_536]).expect("file");
    std::fs::write(d.join("www/index.html"), b"<html>lab</html>").expect("file");
    let mut listens = String::new();
    for ip in [FOREIGN, FOREIGN_2, DOMESTIC] {
        listens.push_str(&format!("listen {ip}:443 ssl; listen {ip}:80; "));
    }
    let p = d.display();
    let conf = format!(
        "user root; master_process off; error_log {p}/error.log; pid {p}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log {p}/access.log; client_body_temp_path {p}/b; proxy_temp_path {p}/p;\n\
           fastcgi_temp_path {p}/f; uwsgi_temp_path {p}/u; scgi_temp_path {p}/s;\n\
           server {{ {listens} server_name _; ssl_certificate {p}/cert.pem;\n\
             ssl_certificate_key {p}/key.pem; root {p}/www; }} }}\n"
    );
    std::fs::write(d.join("nginx.conf"), conf).expect("conf");
    let child = lab
        .topology
        .server
        .command("nginx")
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    // Wait (bounded) until it accepts.
    for _ in 0..50 {
        if Path::new(&d.join("nginx.pid")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Nginx {
        _child: child,
        _dir: dir,
    }
}

/// Runs curl in the client namespace; returns (exit code, bytes downloaded).
async fn curl(lab: &Lab, url: &str, max_time: u32) -> (i32, u64) {
    let (code, size, _) = curl_timed(lab, url, max_time).await;
    (code, size)
}

/// Runs curl in the client namespace; returns (exit code, bytes downloaded, seconds).
async fn curl_timed(lab: &Lab, url: &str, max_time: u32) -> (i32, u64, f64) {
    let out = lab
        .topology
        .client
        .command("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            "--max-time",
        ])
        .arg(max_time.to_string())
        .arg(url)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace();
    let size = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    (out.status.code().unwrap_or(-1), size, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_profile_passes_ordinary_tls_from_curl() {
    if !prerequisites() {
        return;
    }
    let mut lab = Lab::start(Profile::load("open").expect("profile"), 1, 0.01)
        .await
        .expect("lab");
    let _web = nginx(&lab).await;
    // Through the lab's resolver and the censor, to foreign and domestic servers.
    assert_eq!(
        curl(&lab, "https://foreign.example/big.bin", 10).await,
        (0, 65_536)
    );
    assert_eq!(
        curl(&lab, "https://site.domestic/big.bin", 10).await,
        (0, 65_536)
    );
    assert_eq!(
        curl(&lab, "http://blocked.example/big.bin", 10).await,
        (0, 65_536)
    );
    let done = lab.finish();
    assert!(
        done.stats.packets > 20,
        "packets went through the TUN router: {:?}",
        done.stats
    );
    assert_eq!(done.stats.dropped, 0);
    assert!(done.events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ru_home_freezes_foreign_blocks_sni_and_poisons_dns() {
    if !prerequisites() {
        return;
    }
    let seed = 2;
    let mut lab = Lab::start(Profile::load("ru-home-2026").expect("profile"), seed, 0.01)
        .await
        .expect("lab");
    let _web = nginx(&lab).await;
    // 16 KiB freeze on foreign hosting: curl hangs (exit 28, timeout) with at most 16 KiB.
    let (code, got) = curl(&lab, "https://foreign.example/big.bin", 3).await;
    assert_eq!(code, 28, "seed {seed}: curl should hang, got {got} bytes");
    assert!(got <= 16_384, "seed {seed}: {got} bytes passed the freeze");
    // Domestic hosting is not frozen.
    assert_eq!(
        curl(&lab, "https://site.domestic/big.bin", 10).await,
        (0, 65_536),
        "seed {seed}"
    );
    // Throttled SNI (rule 4): 64 KiB at 130–150 kbit/s takes seconds, not milliseconds.
    let (code, got, secs) = curl_timed(&lab, "https://throttled.example/big.bin", 15).await;
    assert_eq!((code, got), (0, 65_536), "seed {seed}");
    assert!(
        secs > 2.0,
        "seed {seed}: throttled download took only {secs} s"
    );
    // A listed SNI gets nothing.
    let (code, got) = curl(&lab, "https://blocked.example/", 2).await;
    assert_eq!((code, got), (28, 0), "seed {seed}");
    // The national resolver says the name does not exist (curl exit 6: could not resolve).
    let (code, _) = curl(&lab, "https://web.whatsapp.com/", 3).await;
    assert_eq!(code, 6, "seed {seed}");
    let done = lab.finish();
    let fired: Vec<String> = done.stats.fired.keys().map(ToString::to_string).collect();
    assert!(fired.iter().any(|r| r.starts_with("5:")), "{fired:?}");
    assert!(fired.iter().any(|r| r.starts_with("3:")), "{fired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_mode_lets_only_domestic_through() {
    if !prerequisites() {
        return;
    }
    let seed = 3;
    let mut lab = Lab::start(
        Profile::load("ru-mobile-allowlist").expect("profile"),
        seed,
        0.01,
    )
    .await
    .expect("lab");
    let _web = nginx(&lab).await;
    // DNS to the operator's resolver still works; domestic sites load.
    assert_eq!(
        curl(&lab, "https://site.domestic/big.bin", 10).await,
        (0, 65_536),
        "seed {seed}"
    );
    // Foreign: the handshake completes (SYN/SYN-ACK pass) but the first data is dropped.
    let (code, got) = curl(&lab, "https://foreign.example/big.bin", 2).await;
    assert_eq!((code, got), (28, 0), "seed {seed}");
    let done = lab.finish();
    assert!(
        done.stats
            .fired
            .keys()
            .any(|r| r.to_string().starts_with("14:")),
        "seed {seed}"
    );
}

/// Runs headless Debian Chromium in the client namespace; returns the page's DOM, if any.
async fn chromium(lab: &Lab, url: &str) -> Option<String> {
    chromium_with(lab, url, &[]).await
}

/// One Chromium at a time: it is heavy on a 2-core machine and the tests run in parallel.
static CHROMIUM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chromium_with(lab: &Lab, url: &str, extra: &[&str]) -> Option<String> {
    let _one = CHROMIUM.lock().await;
    let profile = tempfile::tempdir().expect("tempdir");
    let out = tokio::time::timeout(
        Duration::from_secs(40),
        lab.topology
            .client
            .command("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--ignore-certificate-errors",
                "--timeout=15000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .args(["--dump-dom", url])
            .stderr(Stdio::null())
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    dom.contains("lab").then_some(dom)
}

/// Negative control: ordinary TLS from Debian's Chromium passes `open`, and passes
/// `ru-home-2026` to a domestic site and to a small foreign page (under the freeze threshold,
/// ECH GREASE with an ordinary SNI, a browser's JA4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_passes_open_and_what_ru_home_allows() {
    if !prerequisites() {
        return;
    }
    if !chromium_installed() {
        return;
    }
    for (profile, urls) in [
        (
            "open",
            &[
                "https://foreign.example/index.html",
                "https://site.domestic/index.html",
            ][..],
        ),
        (
            "ru-home-2026",
            &[
                "https://site.domestic/index.html",
                "https://foreign.example/index.html",
            ][..],
        ),
    ] {
        let mut lab = Lab::start(Profile::load(profile).expect("profile"), 4, 0.01)
            .await
            .expect("lab");
        let _web = nginx(&lab).await;
        for url in urls {
            assert!(
                chromium(&lab, url).await.is_some(),
                "{profile}: chromium could not load {url}"
            );
        }
        let done = lab.finish();
        println!(
            "{profile}: chromium through the censor, rules fired {:?}",
            done.stats.fired
        );
        for h in &done.hellos {
            println!("  seen: {} sni={:?} JA4 {}", h.flow, h.sni, h.ja4);
        }
    }
}

fn chromium_installed() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("chromium").exists()));
    if !found {
        skip("chromium is not installed");
    }
    found
}

/// Rule 3 on QUIC with a real browser: Chromium's own QUIC v1 Initials (its ClientHello, with a
/// post-quantum key share, spans more than one Initial) are decrypted, reassembled and matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_quic_initial_sni_is_read_and_blocked() {
    if !prerequisites() || !chromium_installed() {
        return;
    }
    let seed = 5;
    let mut lab = Lab::start(Profile::load("cn-gfw").expect("profile"), seed, 0.01)
        .await
        .expect("lab");
    // No QUIC server is needed: the censor acts on the client's first flight. Chromium on a
    // loaded 2-core machine sometimes gives up before sending; try up to three times.
    for _ in 0..3 {
        let page = chromium_with(
            &lab,
            "https://blocked.example/index.html",
            &[
                "--enable-quic",
                "--origin-to-force-quic-on=blocked.example:443",
            ],
        )
        .await;
        assert!(page.is_none(), "seed {seed}: a blocked page loaded");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if lab
            .stats()
            .fired
            .keys()
            .any(|r| r.to_string().starts_with("3:"))
        {
            break;
        }
    }
    let done = lab.finish();
    for h in &done.hellos {
        println!("seen: {} sni={:?} JA4 {}", h.flow, h.sni, h.ja4);
    }
    let quic = done
        .hellos
        .iter()
        .find(|h| h.ja4.starts_with('q') && h.sni.as_deref() == Some("blocked.example"));
    assert!(
        quic.is_some(),
        "seed {seed}: no QUIC hello decrypted: {:?}",
        done.hellos
    );
    assert!(
        done.events
            .iter()
            .any(|e| e.detail.starts_with("QUIC SNI blocked.example")),
        "seed {seed}: {:?}",
        done.events
    );
}

/// Rule 1 on the real path: a UDP query to the public resolver is answered by the censor
/// (NXDOMAIN for a listed name), while the same query over TCP/53 reaches the honest resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_udp_intercepted_tcp_untouched() {
    if !prerequisites() {
        return;
    }
    use pigeon_lab::dns::{Answer, Query, RCODE_NXDOMAIN};
    use std::io::{Read, Write};
    let seed = 6;
    let mut lab = Lab::start(Profile::load("ru-home-2026").expect("profile"), seed, 0.01)
        .await
        .expect("lab");
    let ns = lab.topology.client.name().to_owned();
    let (udp, tcp) = tokio::task::spawn_blocking(move || {
        net::run_in_netns(&ns, || {
            let server = (net::PUBLIC_RESOLVER, 53);
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
            sock.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            sock.send_to(&Query::build(1, "web.whatsapp.com"), server)
                .expect("send");
            let mut buf = [0u8; 512];
            let n = sock.recv(&mut buf).expect("a UDP answer");
            let udp = Answer::parse(&buf[..n]).expect("dns");
            let mut s =
                std::net::TcpStream::connect_timeout(&server.into(), Duration::from_secs(3))
                    .expect("tcp");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let q = Query::build(2, "web.whatsapp.com");
            let len = u16::try_from(q.len()).expect("len").to_be_bytes();
            s.write_all(&len)
                .and_then(|()| s.write_all(&q))
                .expect("write");
            let mut len = [0u8; 2];
            s.read_exact(&mut len).expect("len");
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut msg).expect("answer");
            (udp, Answer::parse(&msg).expect("dns"))
        })
    })
    .await
    .expect("task")
    .expect("in namespace");
    assert_eq!(
        udp.rcode, RCODE_NXDOMAIN,
        "seed {seed}: UDP answer not forged"
    );
    assert_eq!(tcp.rcode, 0, "seed {seed}: TCP/53 must be untouched");
    assert_eq!(tcp.addrs, vec![FOREIGN_2]);
    let done = lab.finish();
    assert!(
        done.events
            .iter()
            .any(|e| e.detail.contains("intercepted query for web.whatsapp.com")),
        "seed {seed}: {:?}",
        done.events
    );
}

/// A missing prerequisite fails the test (scripts/test.sh installs them and runs as root), unless
/// `PIGEON_LAB_SKIP=1` asks to skip lab tests on a machine that cannot run them.
fn skip(why: &str) {
    assert!(
        std::env::var_os("PIGEON_LAB_SKIP").is_some(),
        "cannot run this lab test: {why} (run scripts/test.sh as root, or set PIGEON_LAB_SKIP=1 to skip)"
    );
    eprintln!("skipping (PIGEON_LAB_SKIP): {why}");
}
