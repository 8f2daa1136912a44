//! `pigeon bench file`: a file of `--mib` MiB (100 by default) sent from one person to another
//! end to end — sealed, uploaded in chunks, announced in the conversation, downloaded, checked
//! and saved — by unmodified `pigeon` processes, as people run them (issue #17).
//!
//! * On loopback (the default): through a relay child process over the `tls` transport, beside
//!   the same file over plain `tcp` to the same relay, which is what the path carries without
//!   the disguise (the "link's capacity" here, where the link itself is memory).
//! * Through the lab (`--lab PROFILE`, root): both people behind the censor running `PROFILE`
//!   (`ru-home-2026`: the 16 KB freeze, fingerprint scoring, lists), the relay abroad over
//!   `tls`; beside the same file through the same middlebox running `open` (no rules) over
//!   `tcp`, which is the lab link's capacity.
//!
//! Each figure is wall time of the commands: `pigeon send NAME --file` (sealing and upload) and
//! `pigeon read --save-to` until the file is saved (download, check, save), each a new process.
//! Before the measured file, a 1 MiB file goes each way (reported apart): a profile meets the
//! network's freeze once, and pays for it once (one frozen connection, about 6 s), which is not
//! the cost of a file.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use pigeon_transport::{RelayLink, Transport};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench file`.
#[derive(clap::Args, Debug)]
pub(crate) struct FileBenchArgs {
    /// Size of the file in MiB (1 to 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100))]
    mib: u64,
    /// Run through the censorship lab with this censor profile (needs root).
    #[arg(long, value_name = "PROFILE")]
    lab: Option<String>,
    /// Seed of the file's bytes and of the censor's randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// How long one command may take.
const STEP: Duration = Duration::from_secs(600);

/// Where the people run.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// On this machine.
    Here,
    /// Inside a lab namespace.
    Ns(&'a pigeon_lab::net::Netns),
}

/// One file's way from alice to bob.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    upload_s: f64,
    download_s: f64,
    /// The 1 MiB files each way before, which include meeting the network.
    warm_up_s: f64,
}

impl Transfer {
    fn total_s(&self) -> f64 {
        self.upload_s + self.download_s
    }
}

async fn pigeon(place: Place<'_>, profile: &Path, args: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the pigeon binary")?;
    let mut cmd = match place {
        Place::Here => {
            let mut c = tokio::process::Command::new(&exe);
            c.stdin(std::process::Stdio::null()).kill_on_drop(true);
            c
        }
        Place::Ns(ns) => ns.command(&exe.to_string_lossy()),
    };
    cmd.args(args)
        .env("PIGEON_PROFILE", profile)
        .env("PIGEON_PASSPHRASE", "bench")
        .env(
            "PIGEON_LOG",
            std::env::var("PIGEON_BENCH_CLIENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        );
    let out = tokio::time::timeout(STEP, cmd.output())
        .await
        .with_context(|| format!("pigeon {} took longer than {STEP:?}", args[0]))??;
    anyhow::ensure!(
        out.status.success(),
        "pigeon {} failed: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if std::env::var_os("PIGEON_BENCH_CLIENT_LOG").is_some() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `mib` MiB of seeded bytes (incompressible) at `path`.
fn make_file(path: &Path, mib: u64, seed: u64) -> anyhow::Result<Vec<u8>> {
    let len = usize::try_from(mib << 20)?;
    let mut state = seed ^ 0x5EED_F11E;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        // SplitMix64.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    std::fs::write(path, &bytes)?;
    Ok(bytes)
}

/// alice and bob on `relay`, introduced; then alice sends bob the file and bob saves it.
async fn one(
    place: Place<'_>,
    relay: &str,
    dir: &Path,
    file: &Path,
    sent: &[u8],
) -> anyhow::Result<Transfer> {
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    for (p, name) in [(&alice, "alice"), (&bob, "bob")] {
        pigeon(place, p, &["init", "--name", name, "--relay", relay]).await?;
    }
    let invite = pigeon(place, &alice, &["invite", "--no-qr"]).await?;
    let link = invite
        .lines()
        .find(|l| l.starts_with("pigeon://invite#"))
        .context("invite printed no link")?;
    pigeon(place, &bob, &["accept", link]).await?;
    pigeon(place, &alice, &["read", "--wait", "0.3"]).await?;
    pigeon(place, &bob, &["read", "--wait", "0.3"]).await?;
    // First a small file each way, so that each profile has met the network (a freeze costs a
    // profile one frozen connection, some 6 s, before it keeps its connections under it).
    let warm = dir.join("warm-up.bin");
    make_file(&warm, 1, 7)?;
    let warm_arg = warm.to_str().context("not UTF-8")?;
    let start = Instant::now();
    for (from, to, to_name, from_name) in [
        (&alice, &bob, "bob", "alice"),
        (&bob, &alice, "alice", "bob"),
    ] {
        pigeon(place, from, &["send", to_name, "--file", warm_arg]).await?;
        let got = dir.join(format!("warm-{from_name}"));
        std::fs::create_dir_all(&got)?;
        let got_arg = got.to_str().context("not UTF-8")?;
        for _ in 0..10 {
            pigeon(place, to, &["read", "--wait", "0", "--save-to", got_arg]).await?;
            if got.join("warm-up.bin").exists() {
                break;
            }
        }
    }
    let warm_up_s = start.elapsed().as_secs_f64();
    let path = file.to_str().context("the file's path is not UTF-8")?;
    let start = Instant::now();
    pigeon(place, &alice, &["send", "bob", "--file", path]).await?;
    let upload_s = start.elapsed().as_secs_f64();
    let saved_dir = dir.join("saved");
    std::fs::create_dir_all(&saved_dir)?;
    let name = file.file_name().context("no file name")?;
    let saved = saved_dir.join(name);
    let start = Instant::now();
    let saved_arg = saved_dir.to_str().context("not UTF-8")?;
    for _ in 0..10 {
        pigeon(
            place,
            &bob,
            &["read", "--wait", "0", "--save-to", saved_arg],
        )
        .await?;
        if saved.exists() {
            break;
        }
    }
    let download_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(saved.exists(), "bob never got the whole file");
    anyhow::ensure!(
        std::fs::read(&saved)? == sent,
        "the file bob saved is not the file alice sent"
    );
    Ok(Transfer {
        upload_s,
        download_s,
        warm_up_s,
    })
}

/// The relay link with only the route of `transport`.
fn only(link: &RelayLink, transport: &Transport) -> anyhow::Result<String> {
    let route = link
        .routes()
        .iter()
        .find(|r| r.transport() == transport)
        .cloned()
        .with_context(|| format!("the relay's link has no {} route", transport.name()))?;
    Ok(RelayLink::new(*link.relay_key(), vec![route], None)?.to_string())
}

async fn on_loopback(
    args: &FileBenchArgs,
    file: &Path,
    sent: &[u8],
) -> anyhow::Result<(Transfer, Transfer)> {
    let tmp = tempfile::tempdir()?;
    let relay = RelayProcess::start(
        &tmp.path().join("relay"),
        &["--tls", "127.0.0.1:0", "--public", "127.0.0.1"],
    )?;
    let mut out = Vec::new();
    for (i, transport) in [Transport::Tls, Transport::Tcp].into_iter().enumerate() {
        let dir = tmp.path().join(format!("run{i}"));
        std::fs::create_dir_all(&dir)?;
        let link = only(&relay.link, &transport)?;
        let t = one(Place::Here, &link, &dir, file, sent)
            .await
            .with_context(|| format!("the file over {}", transport.name()))?;
        say(args, &format!("{}: {t:?}", transport.name()));
        out.push(t);
    }
    relay.stop()?;
    Ok((out[0], out[1]))
}

async fn in_lab(
    args: &FileBenchArgs,
    profile: &str,
    file: &Path,
    sent: &[u8],
) -> anyhow::Result<(Transfer, Transfer)> {
    use pigeon_lab::profile::Profile;
    use pigeon_lab::runner::start_relay;
    let pigeon_exe = std::env::current_exe()?;
    let mut out = Vec::new();
    for (name, transport) in [(profile, "tls"), ("open", "tcp")] {
        let lab = pigeon_lab::net::lab::Lab::start(Profile::load(name)?, args.seed, 1.0)
            .await
            .with_context(|| format!("starting the lab with {name}"))?;
        let relay = start_relay(&lab, &pigeon_exe, transport).await?;
        let tmp = tempfile::tempdir()?;
        let t = one(
            Place::Ns(&lab.topology.client),
            relay.link(),
            tmp.path(),
            file,
            sent,
        )
        .await
        .with_context(|| format!("the file through {name} over {transport}"))?;
        let stats = lab.stats();
        say(
            args,
            &format!(
                "{name} over {transport}: {t:?}; the censor forwarded {} packets, dropped {}, rules fired {:?}",
                stats.packets, stats.dropped, stats.fired
            ),
        );
        out.push(t);
        drop(relay);
        drop(lab);
    }
    Ok((out[0], out[1]))
}

fn say(args: &FileBenchArgs, text: &str) {
    if !args.json {
        eprintln!("{text}");
    }
}

pub(crate) async fn run(args: FileBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // Readable by the lab's namespaces' processes too (they run as root, like this one).
    let file: PathBuf = tmp.path().join("photo.bin");
    let sent = make_file(&file, args.mib, args.seed)?;
    let (via, base, path, baseline) = match &args.lab {
        None => {
            let (tls, tcp) = on_loopback(&args, &file, &sent).await?;
            (
                tls,
                tcp,
                "tls on loopback".to_owned(),
                "tcp on loopback".to_owned(),
            )
        }
        Some(profile) => {
            let (tls, open) = in_lab(&args, profile, &file, &sent).await?;
            (
                tls,
                open,
                format!("tls through the lab's {profile}"),
                "tcp through the lab's open profile".to_owned(),
            )
        }
    };
    let mib = args.mib as f64;
    let share = base.total_s() / via.total_s();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mib": args.mib,
                "path": path,
                "upload_s": via.upload_s,
                "download_s": via.download_s,
                "total_s": via.total_s(),
                "mib_s": mib / via.total_s(),
                "baseline": baseline,
                "baseline_upload_s": base.upload_s,
                "baseline_download_s": base.download_s,
                "baseline_total_s": base.total_s(),
                "warm_up_s": via.warm_up_s,
                "share_of_capacity": share,
                "machine": crate::bench::machine(),
            })
        );
    } else {
        println!("A {} MiB file, alice to bob, {path}:", args.mib);
        println!(
            "  send (seal + upload) {:.2} s, read (download + check + save) {:.2} s: {:.2} s, {:.1} MiB/s",
            via.upload_s,
            via.download_s,
            via.total_s(),
            mib / via.total_s()
        );
        println!(
            "  the same over {baseline}: {:.2} s + {:.2} s = {:.2} s",
            base.upload_s,
            base.download_s,
            base.total_s()
        );
        println!("  share of the link's capacity: {:.0} %", share * 100.0);
        println!(
            "  (before it, 1 MiB each way, which includes meeting the network: {:.2} s)",
            via.warm_up_s
        );
    }
    Ok(())
}
