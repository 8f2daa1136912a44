//! `pigeon app` with real processes (issue #17, its server): the one-time address and the
//! session cookie, the `Host` and `Origin` checks, the security headers, a page without inline
//! script, and the JSON-RPC core over its WebSocket — alice on the web talking with bob on the
//! command line through a real relay, bob's markup arriving as text, events pushed without
//! being asked for.

#[path = "support.rs"]
mod support;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

const PASS: &str = "app test passphrase";

/// One HTTP/1.1 GET to `host:port` with these headers; (status, headers, body).
fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(addr: &str, cookie: &str, origin: &str) -> Result<Socket, tungstenite::Error> {
    let mut req = format!("ws://{addr}/rpc").into_client_request()?;
    req.headers_mut()
        .insert("Cookie", cookie.parse().expect("header"));
    req.headers_mut()
        .insert("Origin", origin.parse().expect("header"));
    tokio_tungstenite::connect_async(req).await.map(|(s, _)| s)
}

/// The next JSON message from the server (at most `secs` seconds away).
async fn next_value(ws: &mut Socket, secs: u64) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(secs), ws.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("a message");
    serde_json::from_str(msg.to_text().expect("text")).expect("json")
}

/// Sends a request; the answer (events before it are collected into `events`).
async fn call(
    ws: &mut Socket,
    id: u64,
    method: &str,
    params: Value,
    events: &mut Vec<Value>,
) -> Value {
    let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    ws.send(tungstenite::Message::Text(req.to_string().into()))
        .await
        .expect("send");
    loop {
        let v = next_value(ws, 30).await;
        if v.get("method") == Some(&json!("event")) {
            events.push(v["params"].clone());
        } else {
            assert_eq!(v["id"], json!(id), "{v}");
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_is_served_only_to_its_page_and_talks_through_the_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    for (p, name) in [(&alice, "alice"), (&bob, "bob")] {
        support::client_ok(
            p,
            PASS,
            &["init", "--name", name, "--relay", &relay.link.to_string()],
        );
    }
    let (_app, url) = support::start_app(&alice, PASS);
    let rest = url.strip_prefix("http://").expect("an http address");
    let (addr, login) = rest.split_once('/').expect("a path");
    let login = format!("/{login}");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // A non-loopback address is refused outright.
    let out = support::client(&alice, PASS)
        .args(["app", "--no-browser", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());

    // Nothing without the cookie; a wrong Host is refused before anything else.
    let (status, head, _) = get(addr, "/", &[]);
    assert_eq!(status, 403);
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    let (status, _, _) = get(addr, "/", &[("Host", "evil.example")]);
    assert_eq!(status, 421, "a rebound DNS name is not this server");
    let (status, _, _) = get(addr, "/login?secret=00", &[]);
    assert_eq!(status, 403);
    // The printed address logs in once.
    let (status, head, _) = get(addr, &login, &[]);
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    assert!(
        head.contains("httponly") && head.contains("samesite=strict"),
        "{head}"
    );
    let (status, _, _) = get(addr, &login, &[]);
    assert_eq!(status, 403, "the login address works once");
    let (status, _, _) = get(addr, "/", &[("Cookie", "pigeon_session=00")]);
    assert_eq!(status, 403);

    // The page: its own script and style only, no inline script, text set as text.
    let (status, head, page) = get(addr, "/", &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    for h in [
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
    ] {
        assert!(head.contains(h), "{h}: {head}");
    }
    assert!(!page.contains("<script>") && page.contains("src=\"/app.js\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no remote resource"
    );
    let (status, _, script) = get(addr, "/app.js", &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    assert!(script.contains("textContent") && !script.contains("innerHTML"));
    assert!(!script.contains("eval("));

    // The WebSocket: refused from another origin or without the cookie.
    let origin = format!("http://{addr}");
    assert!(socket(addr, &cookie, "http://evil.example").await.is_err());
    assert!(socket(addr, "pigeon_session=00", &origin).await.is_err());
    let mut ws = socket(addr, &cookie, &origin)
        .await
        .expect("the page's socket");
    let mut events = Vec::new();
    let me = call(&mut ws, 1, "profile.info", json!({}), &mut events).await;
    assert_eq!(me["result"]["name"], "alice", "{me}");

    // alice invites from the page; bob accepts on the command line; the page hears of it and
    // of bob's markup, as text, without asking.
    let invite = call(&mut ws, 2, "invite.create", json!({}), &mut events).await;
    let link = invite["result"]["link"].as_str().expect("link").to_owned();
    support::client_ok(&bob, PASS, &["accept", &link]);
    let markup = "<img src=x onerror=alert(1)>";
    support::client_ok(&bob, PASS, &["send", "alice", markup]);
    let until = Instant::now() + Duration::from_secs(40);
    while !events
        .iter()
        .any(|e| e["kind"] == "message" && e["line"]["text"] == markup)
    {
        assert!(Instant::now() < until, "no pushed event: {events:?}");
        let v = next_value(&mut ws, 10).await;
        if v.get("method") == Some(&json!("event")) {
            events.push(v["params"].clone());
        }
    }
    let sent = call(
        &mut ws,
        3,
        "messages.send",
        json!({ "to": "bob", "text": "from the web" }),
        &mut events,
    )
    .await;
    assert_eq!(sent["result"]["sent"], true, "{sent}");
    let at_bob = support::client_ok(&bob, PASS, &["read", "--wait", "0.5"]);
    assert!(at_bob.contains("from the web"), "{at_bob}");
    // A binary message is answered with an error; the connection goes on.
    ws.send(tungstenite::Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    loop {
        let v = next_value(&mut ws, 10).await;
        if v.get("method") != Some(&json!("event")) {
            assert_eq!(v["error"]["code"], -32700, "{v}");
            break;
        }
    }
    let again = call(&mut ws, 4, "profile.info", json!({}), &mut events).await;
    assert_eq!(again["result"]["name"], "alice");
}
