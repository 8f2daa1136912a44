//! `pigeon relay --tls … --acme NAME` against a real ACME CA, all on loopback: Debian's
//! `pebble` (Let's Encrypt's test CA) validates the name over HTTP-01 on the relay's
//! `--acme-http` port, with `pebble-challtestsrv` as its DNS server (every name is 127.0.0.1).
//!
//! The relay starts with a self-signed certificate, gets pebble's without a restart, redirects
//! everything else on its port 80 to the HTTPS site, keeps the certificate across a restart
//! (no second order), and two people talk through a link that carries no pin: their clients
//! check pebble's chain as a browser would (pebble's root is their only trusted root).
//!
//! Skipped, with a message, when pebble is not installed and cannot be installed
//! (`scripts/system-packages.sh test` installs it).

#[path = "support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Relay, RelayOpts};

const PASS: &str = "acme test passphrase";
/// The name the relay is certified for. pebble resolves it through pebble-challtestsrv; the
/// clients, which have no such DNS, dial 127.0.0.1 and send it as SNI.
const NAME: &str = "relay.localhost";

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed() -> bool {
    ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
        Command::new(bin)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// Whether pebble is there, after trying to install it once.
fn pebble_available() -> bool {
    if installed() {
        return true;
    }
    eprintln!("pebble is not installed; trying apt-get install pebble");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "pebble"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output();
    installed()
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
    s.local_addr().expect("addr").port()
}

/// `curl` with `args`; returns (`-w` output, exit success).
fn curl(args: &[&str]) -> (String, bool) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl (apt-get install curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// Polls `what` every 100 ms until it holds, for up to `within`.
fn wait_until(within: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A running pebble and its DNS server.
struct Pebble {
    _dns: Child,
    _ca: Child,
    /// The ACME directory URL.
    directory: String,
    /// The root of pebble's own HTTPS certificate (for `--acme-ca`).
    https_root: PathBuf,
    /// The root pebble issues under (random at each start): what clients trust.
    issuing_root: PathBuf,
    /// The port pebble validates HTTP-01 on: the relay's `--acme-http`.
    http_port: u16,
}

impl Pebble {
    fn start(dir: &Path) -> Self {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).expect("pebble dir");
        let https_root = dir.join("ca.pem");
        write_https_certs(&dir, &https_root);
        let (acme_port, mgmt_port, http_port, tls_port) = (
            free_tcp_port(),
            free_tcp_port(),
            free_tcp_port(),
            free_tcp_port(),
        );
        let (dns_port, dns_mgmt_port) = (free_udp_port(), free_tcp_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.join("pebble-config.json");
        std::fs::write(&config_file, config.to_string()).expect("pebble config");
        let log = |name: &str| {
            Stdio::from(std::fs::File::create(dir.join(name)).expect("pebble log file"))
        };
        let dns = Child(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdin(Stdio::null())
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        let ca = Child(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_VA_ALWAYS_VALID", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .expect("start pebble"),
        );
        let directory = format!("https://127.0.0.1:{acme_port}/dir");
        let root_arg = https_root.to_str().expect("utf-8").to_owned();
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", dns_mgmt_port)).is_ok()
                && curl(&["--cacert", &root_arg, "-o", "/dev/null", &directory]).1
        });
        assert!(up, "pebble did not come up; see {}", dir.display());
        let issuing_root = dir.join("issuing-root.pem");
        let (pem, ok) = curl(&[
            "--cacert",
            &root_arg,
            &format!("https://127.0.0.1:{mgmt_port}/roots/0"),
        ]);
        assert!(
            ok && pem.contains("BEGIN CERTIFICATE"),
            "pebble's root: {pem}"
        );
        std::fs::write(&issuing_root, pem).expect("write the issuing root");
        Self {
            _dns: dns,
            _ca: ca,
            directory,
            https_root,
            issuing_root,
            http_port,
        }
    }
}

/// pebble's own HTTPS certificate (for 127.0.0.1), under a root written to `root`.
fn write_https_certs(dir: &Path, root: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "pigeon test: pebble's HTTPS root",
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".into()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    std::fs::write(root, ca_cert.pem()).expect("root");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
}

/// The clients trust pebble's root only (BoringSSL reads `SSL_CERT_FILE`), and log at `warn`.
fn pigeon(profile: &Path, root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
    cmd.env("PIGEON_PASSPHRASE", PASS)
        .env("PIGEON_PROFILE", profile)
        .env("SSL_CERT_FILE", root)
        .env(
            "PIGEON_LOG",
            std::env::var("PIGEON_TEST_CLIENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null());
    cmd
}

fn ok(profile: &Path, root: &Path, args: &[&str]) -> String {
    let out: Output = pigeon(profile, root)
        .args(args)
        .output()
        .expect("run pigeon");
    let shown: Vec<String> = args.iter().map(|a| a.chars().take(40).collect()).collect();
    assert!(
        out.status.success(),
        "pigeon {shown:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn a_relay_gets_its_certificate_by_acme_and_people_talk_through_it() {
    if !pebble_available() {
        println!(
            "skipping: pebble is not installed and could not be installed (apt-get install pebble)"
        );
        eprintln!(
            "skipping: pebble is not installed and could not be installed (apt-get install pebble)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pebble = Pebble::start(dir.path());
    let front = free_tcp_port();
    let front_arg = format!("127.0.0.1:{front}");
    let http_arg = format!("127.0.0.1:{}", pebble.http_port);
    let acme_opts = || {
        RelayOpts::in_dir(dir.path())
            .arg("--tls")
            .arg(&front_arg)
            .arg("--acme")
            .arg(NAME)
            .arg("--acme-email")
            .arg("ops@relay.localhost")
            .arg("--acme-directory")
            .arg(&pebble.directory)
            .arg("--acme-ca")
            .arg(pebble.https_root.to_str().expect("utf-8"))
            .arg("--acme-http")
            .arg(&http_arg)
    };
    let root = pebble.issuing_root.to_str().expect("utf-8");
    let resolve = format!("{NAME}:{front}:127.0.0.1");
    let site = format!("https://{NAME}:{front}/");
    // 200 only when the front's chain leads to pebble's root and names NAME.
    let served_by_pebble = || {
        let (code, _) = curl(&[
            "--cacert",
            root,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &site,
        ]);
        code == "200"
    };

    // First start: the link names the domain, with it as SNI and no pin; the certificate
    // arrives while the relay runs.
    let mut relay = Relay::start(acme_opts());
    let route = relay.link.routes()[0].to_string();
    assert!(
        route.starts_with(&format!("tls://{NAME}:{front}")),
        "{route}"
    );
    assert!(route.contains(&format!("sni={NAME}")), "{route}");
    assert!(
        !route.contains("pin="),
        "a CA's certificate is not pinned: {route}"
    );
    assert!(
        wait_until(Duration::from_secs(20), served_by_pebble),
        "the front never served pebble's certificate; relay log:\n{}",
        relay.log_tail(30)
    );
    let log = String::from_utf8_lossy(&relay.log_bytes()).into_owned();
    assert!(log.contains("certificate from ACME installed"), "{log}");

    // Port 80: the challenge path answers 404 for unknown tokens; everything else is redirected.
    let http = format!("http://127.0.0.1:{}", pebble.http_port);
    let (got, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("{http}/recipes/soup?lang=et"),
    ]);
    assert_eq!(
        got,
        format!("301 https://{NAME}:{front}/recipes/soup?lang=et")
    );
    let (got, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{http}/.well-known/acme-challenge/not-a-token"),
    ]);
    assert_eq!(got, "404");

    // What is kept in the data directory.
    let data = &relay.opts().data.clone();
    for file in ["acme-account.json", "acme-key.pem", "acme-cert.pem"] {
        assert!(data.join(file).is_file(), "{file} kept");
    }
    #[cfg(unix)]
    for secret in [
        "acme-account.json",
        "acme-key.pem",
        "tls.secret",
        "tls.path",
    ] {
        assert_eq!(mode(&data.join(secret)), 0o600, "{secret}");
    }
    relay.stop();

    // Restart (the clients here cannot resolve NAME, so they dial the address): the kept
    // certificate serves at once, with no second order.
    let mut relay = Relay::start(acme_opts().arg("--tls-public").arg(&front_arg));
    let route = relay.link.routes()[0].to_string();
    assert!(
        route.starts_with(&format!("tls://127.0.0.1:{front}")),
        "{route}"
    );
    assert!(route.contains(&format!("sni={NAME}")), "{route}");
    assert!(!route.contains("pin="), "{route}");
    assert!(
        wait_until(Duration::from_secs(2), served_by_pebble),
        "the kept certificate is served at once"
    );
    let log = String::from_utf8_lossy(&relay.log_bytes()).into_owned();
    assert!(
        log.contains("using the ACME certificate kept in the data directory"),
        "{log}"
    );
    assert_eq!(
        log.matches("asking the ACME CA for a certificate").count(),
        1,
        "one order in two runs: {log}"
    );

    // Two people talk through the front, their clients checking pebble's chain and NAME.
    let link = relay.link.to_string();
    let root_path = pebble.issuing_root.as_path();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    ok(
        &alice,
        root_path,
        &["init", "--name", "alice", "--relay", &link],
    );
    ok(
        &bob,
        root_path,
        &["init", "--name", "bob", "--relay", &link],
    );
    let invite = ok(&alice, root_path, &["invite", "--no-qr"]);
    let line = invite
        .lines()
        .find(|l| l.starts_with("pigeon://invite#"))
        .expect("an invitation");
    ok(&bob, root_path, &["accept", line]);
    let read = ok(&alice, root_path, &["read", "--wait", "0.5"]);
    assert!(read.contains("bob accepted your invitation"), "{read}");
    ok(&alice, root_path, &["send", "bob", "tere from alice"]);
    ok(&bob, root_path, &["send", "alice", "hello from bob"]);
    let mut seen = String::new();
    for _ in 0..5 {
        seen.push_str(&ok(&bob, root_path, &["read", "alice", "--wait", "1"]));
        if seen.contains("tere from alice") {
            break;
        }
    }
    assert!(seen.contains("tere from alice"), "{seen}");
    let seen = ok(&alice, root_path, &["read", "bob", "--wait", "1"]);
    assert!(seen.contains("hello from bob"), "{seen}");

    // No key material in the logs.
    let log = String::from_utf8_lossy(&relay.log_bytes()).into_owned();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    let account = std::fs::read_to_string(data.join("acme-account.json")).expect("account");
    let account: serde_json::Value = serde_json::from_str(&account).expect("json");
    let account_key = account["credentials"]["key_pkcs8"]
        .as_str()
        .expect("the account key");
    assert!(!log.contains(account_key), "the account key is not logged");
    relay.assert_no_panic();
    relay.stop();
}
