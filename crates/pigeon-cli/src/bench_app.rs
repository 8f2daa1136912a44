//! `pigeon bench app`: how long `pigeon app` takes from being started to an interactive page
//! (issue #17), on a profile with conversations on a relay child process.
//!
//! Each run starts `pigeon app --no-browser` and does what a browser does with the address it
//! prints: the login (which sets the session cookie), the page, every script and style it
//! names, then the page's WebSocket and its first calls (`profile.info`, then
//! `conversations.list`, whose answer is what the page draws). Times are from the process's
//! start: to its address, to the page and its files loaded, and to that first answer (the
//! page is interactive). A browser adds its own parsing and drawing on top (the browser test
//! prints Chromium's figure).

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Arguments of `pigeon bench app`.
#[derive(clap::Args, Debug)]
pub(crate) struct AppBenchArgs {
    /// Starts measured (the median and the slowest are reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Conversations on the profile (each a contact introduced through the relay).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=20))]
    conversations: u32,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

const PASS: &str = "bench app";
const LIMIT: Duration = Duration::from_secs(30);

fn pigeon(profile: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("cannot find pigeon")?);
    cmd.env("PIGEON_PROFILE", profile)
        .env("PIGEON_PASSPHRASE", PASS)
        .env("PIGEON_LOG", "warn")
        .stdin(Stdio::null());
    Ok(cmd)
}

fn ok(profile: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = pigeon(profile)?.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "pigeon {} failed: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One HTTP/1.1 GET on its own connection: the status, the headers, the body.
async fn get(
    host: &str,
    path: &str,
    cookie: Option<&str>,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut raw)).await??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an answer without headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("an answer without a status")?;
    Ok((status, head, raw[split + 4..].to_vec()))
}

/// The figures of one start, in milliseconds from it.
struct Start {
    address: f64,
    page: f64,
    interactive: f64,
}

async fn once(profile: &Path) -> anyhow::Result<Start> {
    let started = Instant::now();
    let mut child = pigeon(profile)?
        .args(["app", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let address = started.elapsed();
    let result = async {
        let url = line.trim();
        let rest = url.strip_prefix("http://").context("no address printed")?;
        let (host, login) = rest.split_once('/').context("an address without a path")?;
        let (status, head, _) = get(host, &format!("/{login}"), None).await?;
        anyhow::ensure!(status == 303, "the login answered {status}");
        let cookie = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("set-cookie: ")
                    .or_else(|| l.strip_prefix("Set-Cookie: "))
            })
            .and_then(|c| c.split(';').next())
            .context("the login set no cookie")?
            .to_owned();
        let (status, _, page) = get(host, "/", Some(&cookie)).await?;
        anyhow::ensure!(status == 200, "the page answered {status}");
        let page = String::from_utf8_lossy(&page).into_owned();
        // Every script and style the page names, as a browser loads them.
        for part in page.split(['"', '\'']) {
            if part.starts_with('/') && (part.ends_with(".js") || part.ends_with(".css")) {
                let (status, _, _) = get(host, part, Some(&cookie)).await?;
                anyhow::ensure!(status == 200, "{part} answered {status}");
            }
        }
        let page_at = started.elapsed();
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{host}/rpc"),
            )?;
        request.headers_mut().insert("Cookie", cookie.parse()?);
        request
            .headers_mut()
            .insert("Origin", format!("http://{host}").parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
        for (id, method) in [(1, "profile.info"), (2, "conversations.list")] {
            let call = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method});
            ws.send(tokio_tungstenite::tungstenite::Message::Text(
                call.to_string().into(),
            ))
            .await?;
            loop {
                let msg = tokio::time::timeout(LIMIT, ws.next())
                    .await?
                    .context("the WebSocket closed")??;
                let text = msg.into_text()?;
                let value: serde_json::Value = serde_json::from_str(&text)?;
                if value["id"] == id {
                    anyhow::ensure!(value.get("result").is_some(), "{method} failed: {value}");
                    break;
                }
            }
        }
        Ok((page_at, started.elapsed()))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (page, interactive) = result?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Start {
        address: ms(address),
        page: ms(page),
        interactive: ms(interactive),
    })
}

pub(crate) async fn run(args: AppBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let relay = RelayProcess::start(&tmp.path().join("relay"), &[])?;
    let link = relay.link.to_string();
    let me = tmp.path().join("me");
    ok(&me, &["init", "--name", "me", "--relay", &link])?;
    for i in 0..args.conversations {
        let other = tmp.path().join(format!("friend{i}"));
        ok(
            &other,
            &["init", "--name", &format!("friend{i}"), "--relay", &link],
        )?;
        let invite = ok(&me, &["invite", "--no-qr"])?;
        let line = invite
            .lines()
            .find(|l| l.starts_with("pigeon://invite#"))
            .context("no invitation")?;
        ok(&other, &["accept", line])?;
        ok(&other, &["send", "me", "hello"])?;
    }
    ok(&me, &["read", "--wait", "0.3"])?;
    let mut starts = Vec::new();
    for i in 0..args.runs {
        let s = once(&me)
            .await
            .with_context(|| format!("start {}", i + 1))?;
        if !args.json {
            eprintln!(
                "start {}: address {:.0} ms, page {:.0} ms, interactive {:.0} ms",
                i + 1,
                s.address,
                s.page,
                s.interactive
            );
        }
        starts.push(s);
    }
    relay.stop()?;
    let pick = |f: fn(&Start) -> f64| starts.iter().map(f).collect::<Vec<_>>();
    let interactive = pick(|s| s.interactive);
    let slowest = interactive.iter().copied().fold(0.0, f64::max);
    let (address, page, interactive) = (
        crate::bench::median(pick(|s| s.address)),
        crate::bench::median(pick(|s| s.page)),
        crate::bench::median(interactive),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "runs": args.runs,
                "conversations": args.conversations,
                "address_ms": address,
                "page_ms": page,
                "interactive_ms": interactive,
                "interactive_max_ms": slowest,
                "machine": crate::bench::machine(),
            })
        );
    } else {
        println!(
            "pigeon app, start to: address {address:.0} ms, page loaded {page:.0} ms, interactive {interactive:.0} ms (median of {}; slowest {slowest:.0} ms)",
            args.runs
        );
    }
    Ok(())
}
