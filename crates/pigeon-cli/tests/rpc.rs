//! `pigeon rpc` with real processes (issue #17, its JSON-RPC core): alice's profile is made and
//! driven through JSON-RPC on a child's standard input and output, bob uses the `pigeon`
//! commands, against a real relay. An invitation with its QR code, a contact accepted and
//! announced as an event, messages both ways (a peer's markup comes back as plain text),
//! paging, a group with bob in it; and bad calls each answered with the right error while the
//! session goes on.

#[path = "support.rs"]
mod support;

use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts};

const PASS: &str = "rpc test passphrase";

/// A `pigeon rpc` child: requests in, answers and notifications out.
struct Rpc {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next: u64,
}

impl Rpc {
    fn start(profile: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigeon"))
            .arg("rpc")
            .env("PIGEON_PROFILE", profile)
            .env_remove("PIGEON_PASSPHRASE")
            .env("PIGEON_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pigeon rpc");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            input,
            output,
            next: 1,
        }
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("a line");
        assert!(!line.is_empty(), "pigeon rpc ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Sends a raw line; returns the notifications before the answer, and the answer.
    fn raw(&mut self, line: &str) -> (Vec<Value>, Value) {
        writeln!(self.input, "{line}").expect("write");
        self.input.flush().expect("flush");
        let mut events = Vec::new();
        loop {
            let v = self.line();
            if v.get("method") == Some(&json!("event")) {
                events.push(v["params"].clone());
            } else {
                return (events, v);
            }
        }
    }

    /// Calls `method`; the notifications before the answer, and the answer.
    fn call(&mut self, method: &str, params: Value) -> (Vec<Value>, Value) {
        let id = self.next;
        self.next += 1;
        let request = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let (events, answer) = self.raw(&request.to_string());
        assert_eq!(answer["id"], json!(id), "{answer}");
        (events, answer)
    }

    /// Calls `method`, which must succeed; its result.
    fn ok(&mut self, method: &str, params: Value) -> Value {
        let (_, answer) = self.call(method, params);
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Calls `method`, which must fail with `code`; the error's message.
    fn err(&mut self, method: &str, params: Value, code: i64) -> Value {
        let (_, answer) = self.call(method, params);
        assert_eq!(answer["error"]["code"], json!(code), "{method}: {answer}");
        answer["error"].clone()
    }

    /// Syncs until `done` holds for an event (at most 30 s); every event seen.
    fn sync_until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < until {
            let (events, answer) = self.call("sync", json!({ "wait_ms": 500 }));
            assert!(answer.get("error").is_none(), "{answer}");
            let found = events.iter().any(&done);
            seen.extend(events);
            if found {
                return seen;
            }
        }
        panic!("the event did not come: {seen:?}");
    }
}

fn ok(profile: &Path, args: &[&str]) -> String {
    support::client_ok(profile, PASS, args)
}

#[test]
fn a_front_end_drives_the_core_over_json_rpc_and_bad_calls_are_told_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    ok(
        &bob,
        &["init", "--name", "bob", "--relay", &relay.link.to_string()],
    );
    let mut rpc = Rpc::start(&alice);

    // Nothing but rpc.methods and the profile calls before a profile is open.
    rpc.err("contacts.list", json!({}), -32001);
    let made = rpc.ok(
        "profile.create",
        json!({ "name": "alice", "relay": relay.link.to_string(), "passphrase": PASS }),
    );
    assert_eq!(made["name"], "alice");
    assert!(
        rpc.ok("rpc.methods", json!({}))
            .as_array()
            .expect("list")
            .len()
            > 20
    );

    // An invitation with its QR code (the relay is reached first: the route search comes as
    // events); bob accepts with the command; alice hears of it.
    let (events, invite) = rpc.call("invite.create", json!({}));
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "route" && e["state"] == "connected"),
        "{events:?}"
    );
    let invite = invite["result"].clone();
    let link = invite["link"].as_str().expect("link");
    assert!(link.starts_with("pigeon://invite#"));
    assert!(invite["qr_svg"].as_str().expect("svg").contains("<svg"));
    ok(&bob, &["accept", link]);
    let events = rpc.sync_until(|e| e["kind"] == "contact");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "contact" && e["contact"]["name"] == "bob"),
        "{events:?}"
    );
    let contacts = rpc.ok("contacts.list", json!({}));
    assert_eq!(contacts[0]["name"], "bob");

    // Messages both ways; a peer's markup is text like any other.
    let markup = "<img src=x onerror=alert(1)><script>alert(2)</script>";
    let sent = rpc.ok("messages.send", json!({ "to": "bob", "text": "hello bob" }));
    assert_eq!(sent["sent"], true, "{sent}");
    let at_bob = ok(&bob, &["read", "--wait", "0.5"]);
    assert!(at_bob.contains("hello bob"), "{at_bob}");
    ok(&bob, &["send", "alice", markup]);
    ok(&bob, &["send", "alice", "second from bob"]);
    let events = rpc.sync_until(|e| e["line"]["text"] == "second from bob");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "message" && e["line"]["text"] == markup),
        "{events:?}"
    );
    let unread = rpc.ok("conversations.list", json!({}));
    assert_eq!(unread[0]["unread"], 2, "{unread}");
    assert_eq!(
        rpc.ok("messages.mark_read", json!({ "with": "bob" }))["read"],
        2
    );

    // Paging: the latest two, then what came before the first of them.
    let page = rpc.ok("messages.list", json!({ "with": "bob", "limit": 2 }));
    let page = page.as_array().expect("lines");
    assert_eq!(page.len(), 2);
    assert_eq!(page[1]["text"], "second from bob");
    assert_eq!(page[0]["text"], markup);
    assert_eq!(page[0]["conversation"], "bob");
    let before = rpc.ok(
        "messages.list",
        json!({ "with": "bob", "before": page[0]["id"], "limit": 10 }),
    );
    let before = before.as_array().expect("lines");
    assert!(
        before
            .iter()
            .any(|l| l["text"] == "hello bob" && l["outgoing"] == true && l["delivered"] == true),
        "alice's line, confirmed by bob's device: {before:?}"
    );
    assert!(page.iter().all(|l| l["read"] == true), "{page:?}");
    assert!(before.iter().all(|l| l["id"] != page[0]["id"]));

    // A group with bob in it.
    let group = rpc.ok("groups.create", json!({ "name": "club" }));
    assert_eq!(group["name"], "club");
    rpc.ok("groups.add", json!({ "group": "club", "contact": "bob" }));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        ok(&bob, &["read", "--wait", "0.3"]);
        rpc.ok("sync", json!({ "wait_ms": 300 }));
        let members = rpc.ok("groups.members", json!({ "group": "club" }));
        if members.as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(Instant::now() < until, "bob never joined: {members}");
    }
    let sent = rpc.ok("messages.send", json!({ "to": "club", "text": "hi club" }));
    assert_eq!(sent["sent"], true);
    assert!(ok(&bob, &["read", "--wait", "0.5"]).contains("hi club"));

    // A new device of alice's, linked from the front end: the link and its QR code, then
    // `pigeon init --link` on the new device while the front end syncs.
    rpc.err("devices.link_progress", json!({}), -32602);
    let link = rpc.ok("devices.link", json!({ "history_days": 0 }));
    let text = link["link"].as_str().expect("link").to_owned();
    assert!(text.starts_with("pigeon://device#"), "{link}");
    assert!(link["qr_svg"].as_str().expect("svg").contains("<svg"));
    let laptop = dir.path().join("alice-laptop");
    let mut follow = support::client(&laptop, PASS)
        .args([
            "init", "--link", &text, "--device", "laptop", "--wait", "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn init --link");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        rpc.ok("sync", json!({ "wait_ms": 300 }));
        let progress = rpc.ok("devices.link_progress", json!({}));
        if progress["done"] == true {
            assert_eq!(progress["device"], "laptop", "{progress}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the link did not finish: {progress}"
        );
    }
    assert!(follow.wait().expect("wait").success());
    let devices = rpc.ok("devices.list", json!({}));
    assert!(
        devices
            .as_array()
            .expect("list")
            .iter()
            .any(|d| d["name"] == "laptop"),
        "{devices}"
    );

    // Settings: relays and proxies.
    let relays = rpc.ok("relays.list", json!({}));
    assert_eq!(relays, json!([relay.link.to_string()]));
    assert_eq!(rpc.ok("proxies.list", json!({})), json!([]));
    let e = rpc.err(
        "proxies.add",
        json!({ "link": "pigeon://relay#nope" }),
        -32602,
    );
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("not a proxy link")
    );
    rpc.err(
        "relays.add",
        json!({ "link": "https://example.org" }),
        -32602,
    );
    rpc.err("proxies.add", json!({ "link": 1, "always": "yes" }), -32602);

    // Bad calls: each gets its error, with a sentence naming what is wrong.
    let e = rpc.err(
        "messages.list",
        json!({ "with": "bob", "limit": 5000 }),
        -32602,
    );
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("params.limit")
    );
    rpc.err("messages.send", json!({ "to": "bob" }), -32602);
    rpc.err("messages.send", json!({ "to": "bob", "text": 5 }), -32602);
    rpc.err(
        "messages.send",
        json!({ "to": "bob", "text": "x", "tx": 1 }),
        -32602,
    );
    let e = rpc.err(
        "messages.send",
        json!({ "to": "carol", "text": "x" }),
        -32000,
    );
    assert_eq!(e["data"]["kind"], "input", "{e}");
    rpc.err("no.such.method", json!({}), -32601);
    let (_, answer) = rpc.raw("{\"jsonrpc\":\"2.0\",\"id\":");
    assert_eq!(answer["error"]["code"], -32700);
    let (_, answer) = rpc.raw(r#"{"jsonrpc":"2.0","id":{"no":1},"method":"profile.info"}"#);
    assert_eq!(answer["error"]["code"], -32600);
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"profile.info","params":{{"x":"{}"}}}}"#,
        "a".repeat(1 << 20)
    );
    let (_, answer) = rpc.raw(&huge);
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    // The session goes on, and a notification (no id) gets no answer.
    writeln!(rpc.input, r#"{{"jsonrpc":"2.0","method":"profile.info"}}"#).expect("write");
    assert_eq!(rpc.ok("profile.info", json!({}))["name"], "alice");

    // The end of the input ends it, cleanly.
    let Rpc {
        mut child, input, ..
    } = rpc;
    drop(input);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}
