//! The `tls` transport through a CDN-like reverse proxy (issue #5): real nginx (Debian's)
//! terminates TLS for the cover site and forwards the secret path to the relay's cleartext
//! HTTP/2 backend (`grpc_pass`); two people talk through it, strangers get nginx's own site
//! and pages, and a replayed tunnel token gets nginx's own 404.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Relay, RelayOpts, cover_certificate, curl, free_port};

const PASS: &str = "nginx test passphrase";
const SECRET_PATH: &str = "/api/v2/sync";

fn ok(profile: &Path, args: &[&str]) -> String {
    support::client_ok(profile, PASS, args)
}

/// Debian's nginx with a site of its own, forwarding the secret path to the relay.
struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(dir: &Path, port: u16, backend: u16, cert: &Path, key: &Path) -> Nginx {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>Tallinn bakery</h1>\n").expect("index");
    let conf = format!(
        "worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name cover.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {site};
        location {SECRET_PATH}/ {{
            grpc_pass grpc://127.0.0.1:{backend};
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
            client_max_body_size 0;
            client_body_timeout 1h;
            # The relay answers strangers 404; nginx shows its own page, as for any path.
            grpc_intercept_errors on;
            error_page 404 = /__nginx_404;
        }}
        location = /__nginx_404 {{
            internal;
            return 404;
        }}
    }}
}}
",
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
        site = site.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx-light)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { child }
}

#[test]
fn two_people_talk_through_nginx_and_strangers_get_nginx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = cover_certificate(dir.path());
    let (port, backend) = (free_port(), free_port());
    let proxy = nginx(&dir.path().join("nginx"), port, backend, &cert, &key);
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--tls-backend")
            .arg(&format!("127.0.0.1:{backend}"))
            .arg("--tls-public")
            .arg(&format!("127.0.0.1:{port}"))
            .arg("--sni")
            .arg("cover.test")
            .arg("--tls-path")
            .arg(SECRET_PATH)
            .arg("--cert")
            .arg(cert.to_str().expect("utf-8"))
            .arg("--key")
            .arg(key.to_str().expect("utf-8"))
            .arg("--pin"),
    );
    let route = relay.link.routes()[0].to_string();
    assert!(
        route.starts_with(&format!("tls://127.0.0.1:{port}?")),
        "{route}"
    );

    // Two people, through nginx.
    let (alice, bob) = support::introduced(dir.path(), PASS, &relay.link.to_string());
    let big = "z".repeat(30_000);
    for i in 0..10 {
        ok(&bob, &["send", "alice", &format!("b{i:02} {big}")]);
    }
    let mut read = String::new();
    for _ in 0..3 {
        read.push_str(&ok(&alice, &["read", "--wait", "1"]));
        if (0..10).all(|i| read.contains(&format!("b{i:02} zzz"))) {
            break;
        }
    }
    for i in 0..10 {
        assert!(
            read.contains(&format!("b{i:02} zzz")),
            "message {i} through nginx"
        );
    }
    ok(&alice, &["send", "bob", "hello from alice, through nginx"]);
    let read = ok(&bob, &["read", "--wait", "1"]);
    assert!(read.contains("hello from alice, through nginx"), "{read}");

    // Strangers see nginx: its site, its 404 for the secret path, also with a bad or replayed
    // token (the relay answers 404 and nginx puts its own page on it).
    let resolve = format!("cover.test:{port}:127.0.0.1");
    let base = format!("https://cover.test:{port}");
    let (body, code) = curl(&["--resolve", &resolve, &format!("{base}/")]);
    assert_eq!(code, "200");
    assert!(body.contains("Tallinn bakery"), "{body}");
    let (nginx_404, code) = curl(&["--resolve", &resolve, &format!("{base}/nope")]);
    assert_eq!(code, "404");
    let params = relay.link.routes()[0]
        .tls_params()
        .expect("tls")
        .expect("valid");
    let key = pigeon_transport_tls::TokenKey::new(*params.key());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let leg = pigeon_transport_tls::token::Leg {
        session: [9; 16],
        index: 0,
        budget: None,
    };
    let token = pigeon_transport_tls::token::mint(&key, SECRET_PATH, &leg, now, [5; 8]);
    for path in [
        format!("{SECRET_PATH}/"),
        format!("{SECRET_PATH}/not-a-token"),
        format!("{SECRET_PATH}/{token}"),
    ] {
        // The valid token's first use opens a tunnel (and hangs up on garbage); the second is
        // a replay.
        let url = format!("{base}{path}");
        let post = [
            "--http2",
            "--resolve",
            &resolve,
            "-X",
            "POST",
            "-d",
            "hi",
            &url,
        ];
        let _ = curl(
            &["--max-time", "2"]
                .into_iter()
                .chain(post)
                .collect::<Vec<_>>(),
        );
        let (body, code) = curl(&post);
        assert_eq!(code, "404", "POST {path}");
        assert_eq!(body, nginx_404, "POST {path} gets nginx's own 404 page");
    }
    drop(proxy);
}
