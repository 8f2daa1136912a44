//! Shared harness for the relay integration tests: a real `pigeon relay` child process on
//! loopback, on a data directory that outlives it, with its stderr captured to a file.
//!
//! Included by each test file with `#[path = "support.rs"] mod support;`. Not every test uses
//! every helper.
#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use pigeon_client::RelayConnection;
use pigeon_transport::RelayLink;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a relay may take to print its link.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How a relay process is started; kept so that it can be restarted identically.
#[derive(Clone, Debug)]
pub(crate) struct RelayOpts {
    /// The relay's `--data` directory (kept across restarts).
    pub(crate) data: PathBuf,
    /// Where the relay's stderr goes (appended to across restarts).
    pub(crate) log: PathBuf,
    /// `PIGEON_LOG` for the child.
    pub(crate) log_filter: String,
    /// `--listen` address.
    pub(crate) listen: String,
    /// Pass `--no-qr`.
    pub(crate) no_qr: bool,
    /// More arguments after `relay`'s own.
    pub(crate) extra: Vec<String>,
    /// Arguments before `relay` (global flags such as `--log-json`).
    pub(crate) global: Vec<String>,
}

impl RelayOpts {
    /// A relay on `dir/data`, logging to `dir/relay.log` at `info` (or at
    /// `PIGEON_TEST_RELAY_LOG` when set, for debugging), on a free loopback port,
    /// with a send rate limit high enough for load tests.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            data: dir.join("data"),
            log: dir.join("relay.log"),
            log_filter: std::env::var("PIGEON_TEST_RELAY_LOG")
                .unwrap_or_else(|_| "info".to_owned()),
            listen: "127.0.0.1:0".to_owned(),
            no_qr: true,
            extra: vec!["--sends-per-sec".to_owned(), "1000000".to_owned()],
            global: Vec::new(),
        }
    }

    /// Adds arguments.
    pub(crate) fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_owned());
        self
    }
}

/// A running (or stopped) relay process. Killed when dropped.
pub(crate) struct Relay {
    opts: RelayOpts,
    child: Option<Child>,
    /// The link the current process printed.
    pub(crate) link: RelayLink,
    /// Everything the current process printed on stdout after the link, line by line.
    stdout: Option<mpsc::Receiver<String>>,
    starts: usize,
}

impl Relay {
    /// Starts a relay and waits for its link.
    pub(crate) fn start(opts: RelayOpts) -> Self {
        let (child, link, stdout) = spawn(&opts);
        Self {
            opts,
            child: Some(child),
            link,
            stdout: Some(stdout),
            starts: 1,
        }
    }

    /// The options it runs with.
    pub(crate) fn opts(&self) -> &RelayOpts {
        &self.opts
    }

    /// The current process id, if running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (it has not exited on its own).
    pub(crate) fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `kill -9`: the process gets no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the relay");
            child.wait().expect("reap the relay");
        }
        self.stdout = None;
    }

    /// Sends `signal` (`TERM`, `INT`) and waits up to `within` for the exit status. Panics if
    /// the relay does not exit in time.
    pub(crate) fn signal_and_wait(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the relay is running");
        // The `kill` command keeps this test free of FFI (the workspace forbids unsafe code).
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{signal} failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("poll the relay") {
                self.stdout = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the relay did not exit within {within:?} of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop with SIGTERM; asserts exit status 0 within 10 s.
    pub(crate) fn stop(&mut self) {
        let status = self.signal_and_wait("TERM", Duration::from_secs(10));
        assert!(
            status.success(),
            "relay exited with {status}; log tail:\n{}",
            self.log_tail(40)
        );
    }

    /// Starts the relay again on the same data directory and options (killing it first if it
    /// still runs); returns the new link (same key, possibly another port).
    pub(crate) fn restart(&mut self) -> &RelayLink {
        self.kill9();
        let (child, link, stdout) = spawn(&self.opts);
        self.child = Some(child);
        self.link = link;
        self.stdout = Some(stdout);
        self.starts += 1;
        &self.link
    }

    /// Makes later restarts listen on the port this run got, so links saved by clients (which
    /// name the port) stay valid.
    pub(crate) fn pin_port(&mut self) {
        self.opts.listen = self.addr();
    }

    /// Lines the relay printed on stdout after its link, collected for up to `wait`.
    pub(crate) fn stdout_lines(&mut self, wait: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(rx) = &self.stdout else {
            return lines;
        };
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    }

    /// The captured stderr of every run so far.
    pub(crate) fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.opts.log).unwrap_or_default()
    }

    /// The last `n` lines of the captured log, for failure messages.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.log_bytes()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Asserts that no run of the relay panicked.
    pub(crate) fn assert_no_panic(&self) {
        let log = self.log_bytes();
        assert!(
            find(&log, b"panicked").is_none(),
            "the relay panicked:\n{}",
            self.log_tail(60)
        );
    }

    /// Connects a client, retrying briefly while the relay comes up.
    pub(crate) async fn connect(&self) -> RelayConnection {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match RelayConnection::connect(&self.link, Duration::from_secs(5)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("could not connect to the relay: {e}"),
            }
        }
    }

    /// The `host:port` the relay listens on (its link's first route).
    pub(crate) fn addr(&self) -> String {
        let route = self.link.routes().first().expect("the link has a route");
        format!("{}:{}", route.host(), route.port())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(opts: &RelayOpts) -> (Child, RelayLink, mpsc::Receiver<String>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.log)
        .expect("open the relay log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
    cmd.args(&opts.global)
        .arg("relay")
        .arg("--data")
        .arg(&opts.data)
        .args(["--listen", &opts.listen])
        .args(&opts.extra)
        .env("PIGEON_LOG", &opts.log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    if opts.no_qr {
        cmd.arg("--no-qr");
    }
    let mut child = cmd.spawn().expect("start the relay process");
    let stdout = child.stdout.take().expect("relay stdout is piped");
    let (tx, rx) = mpsc::channel();
    // A thread keeps reading stdout so the relay never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining.
            }
        }
    });
    let first = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read(&opts.log).unwrap_or_default();
            panic!(
                "the relay printed no link within {START_TIMEOUT:?} ({e}); log:\n{}",
                String::from_utf8_lossy(&log)
            );
        }
    };
    let link = RelayLink::parse(first.trim())
        .unwrap_or_else(|e| panic!("the relay's first line {first:?} is not a link: {e}"));
    (child, link, rx)
}

/// The first position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    // memchr is built optimised even in test builds: the privacy test scans tens of MB.
    memchr::memmem::find(haystack, needle)
}

/// A small seeded PRNG (SplitMix64): deterministic, so a failing seed reproduces.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant for tests).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `N` random bytes.
    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        out
    }
}

/// A seed from the environment variable `var`, or else from the clock; printed either way so a
/// failing run can be repeated.
pub(crate) fn seed_from_env(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| {
                u64::try_from(d.as_nanos() % u128::from(u64::MAX)).unwrap_or(1)
            }),
    };
    println!("seed = {seed} (repeat with {var}={seed})");
    eprintln!("seed = {seed} (repeat with {var}={seed})");
    seed
}

/// A free loopback TCP port (free when asked; a test binds it soon after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `curl -sk` with a 5 s limit and `args`: the body and the HTTP status code.
pub(crate) fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_owned(), code.to_owned())
}

/// A self-signed P-256 certificate for `cover.test`, made with openssl as an operator would:
/// `dir/cert.pem` and `dir/key.pem`.
pub(crate) fn cover_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=cover.test"])
        .args(["-addext", "subjectAltName=DNS:cover.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The `pigeon` client on `profile` with passphrase `pass`, logging at `warn` (or at
/// `PIGEON_TEST_CLIENT_LOG` when set, for debugging).
pub(crate) fn client(profile: &Path, pass: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pigeon"));
    cmd.env("PIGEON_PASSPHRASE", pass)
        .env("PIGEON_PROFILE", profile)
        .env(
            "PIGEON_LOG",
            std::env::var("PIGEON_TEST_CLIENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null());
    cmd
}

/// Runs the client with `args`, which must succeed; its standard output.
pub(crate) fn client_ok(profile: &Path, pass: &str, args: &[&str]) -> String {
    let out = client(profile, pass)
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

/// alice and bob (profiles under `root`, passphrase `pass`) on `link`, introduced through an
/// invitation that alice makes and bob accepts; alice has read that he did.
pub(crate) fn introduced(root: &Path, pass: &str, link: &str) -> (PathBuf, PathBuf) {
    let ok = |profile: &Path, args: &[&str]| client_ok(profile, pass, args);
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    ok(&alice, &["init", "--name", "alice", "--relay", link]);
    ok(&bob, &["init", "--name", "bob", "--relay", link]);
    let invite = ok(&alice, &["invite", "--no-qr"]);
    let line = invite
        .lines()
        .find(|l| l.starts_with("pigeon://invite#"))
        .expect("an invitation");
    ok(&bob, &["accept", line]);
    let read = ok(&alice, &["read", "--wait", "0.5"]);
    assert!(read.contains("bob accepted your invitation"), "{read}");
    (alice, bob)
}

/// A conversation's messages (not notices), in the log's order, as `sender: text` with the
/// profile's own messages under `me` (`pigeon group history`, which takes a group's or a
/// contact's name).
pub(crate) fn transcript(profile: &Path, pass: &str, me: &str, conversation: &str) -> Vec<String> {
    client_ok(
        profile,
        pass,
        &["group", "history", conversation, "--limit", "1000"],
    )
    .lines()
    .filter(|l| !l.contains(": * "))
    .map(|l| {
        let rest = l.split_once("] ").map_or(l, |(_, r)| r);
        let rest = rest.split_once(" / ").map_or(rest, |(_, r)| r);
        rest.replacen("you:", &format!("{me}:"), 1)
    })
    .collect()
}

/// A `pigeon app` process, killed when dropped.
pub(crate) struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pigeon app --no-browser` on `profile`; the process and the one-time address it
/// printed.
pub(crate) fn start_app(profile: &Path, pass: &str) -> (App, String) {
    let mut child = client(profile, pass)
        .args(["app", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pigeon app");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the address");
    (App(child), line.trim().to_owned())
}
