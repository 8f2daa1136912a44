//! `pigeon bench link`: linking a new device to a profile with many conversations (issue #16).
//!
//! A relay child process on loopback; alice's profile with `--conversations` groups, each with
//! `--history` messages; then `pigeon devices link` and `pigeon init --link` as the library
//! runs them: time from making the link until the new device is in every conversation (and has
//! their history), and the bytes both devices posted to the relay for it.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use pigeon_client::{Client, FlushReport, Passphrase, Profile};
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench link`.
#[derive(clap::Args, Debug)]
pub(crate) struct LinkBenchArgs {
    /// Conversations on the existing device.
    #[arg(long, default_value_t = 100)]
    conversations: u32,
    /// Messages in each conversation (all within the history the link hands over).
    #[arg(long, default_value_t = 20)]
    history: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    limit: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn posted(report: &FlushReport) -> u64 {
    report.stored.iter().map(|(_, n)| *n as u64).sum()
}

/// Runs `pigeon bench link`.
pub(crate) async fn run(args: LinkBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=pigeon_client::MAX_LINKED_CONVERSATIONS).contains(&(args.conversations as usize)),
        "--conversations must be 1 to {}",
        pigeon_client::MAX_LINKED_CONVERSATIONS
    );
    let dir = tempfile::tempdir()?;
    let relay = RelayProcess::start(&dir.path().join("relay"), &[])?;
    let pass = || Passphrase::new("bench".to_owned());
    let timeout = Duration::from_secs(10);
    let mut alice = Client::new(
        Profile::create(&dir.path().join("alice"), &pass(), "alice", &relay.link)?,
        timeout,
    );
    let setup = Instant::now();
    for i in 0..args.conversations {
        let name = format!("group {i}");
        alice.create_group(&name).await?;
        for m in 0..args.history {
            alice
                .send_group(
                    &name,
                    &format!("message {m} of {name}, about as long as a chat line"),
                )
                .await?;
        }
    }
    alice
        .sync(Duration::from_millis(50), Duration::from_secs(60))
        .await?;
    let setup_ms = setup.elapsed().as_millis();

    let deadline = Instant::now() + Duration::from_secs(args.limit);
    let started = Instant::now();
    let link = alice.link_device(30).await?;
    let laptop_profile =
        Profile::create(&dir.path().join("laptop"), &pass(), &link.name, &link.relay)?;
    laptop_profile.set_device_name("laptop")?;
    let mut laptop = Client::new(laptop_profile, timeout);
    let mut bytes = posted(&laptop.follow_device_link(&link).await?);
    let quiet = Duration::from_millis(20);
    let usable_ms = loop {
        anyhow::ensure!(Instant::now() < deadline, "the link did not finish in time");
        let (_, report) = alice.sync(quiet, Duration::from_secs(30)).await?;
        bytes += posted(&report);
        let (_, report) = laptop.sync(quiet, Duration::from_secs(30)).await?;
        bytes += posted(&report);
        let progress = laptop
            .profile()
            .link_join_progress()?
            .context("the laptop follows no link")?;
        if progress.done {
            break started.elapsed().as_millis();
        }
    };
    // The existing device's side ends once its last post is through.
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the old device did not finish in time"
        );
        if alice.profile().device_link_progress(&link.mailbox_id)?.done {
            break;
        }
        let (_, report) = alice.sync(quiet, Duration::from_secs(30)).await?;
        bytes += posted(&report);
    }
    let groups = laptop.profile().groups()?.len();
    anyhow::ensure!(
        groups == args.conversations as usize,
        "the laptop is in {groups} groups of {}",
        args.conversations
    );
    let history_lines: usize = laptop
        .profile()
        .groups()?
        .iter()
        .map(|g| {
            laptop
                .profile()
                .group_history(g.id, i64::MAX)
                .map(|h| h.len())
        })
        .sum::<Result<usize, _>>()?;
    drop((alice, laptop));
    relay.stop()?;
    let per_conversation_ms = usable_ms as f64 / f64::from(args.conversations);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "conversations": args.conversations,
                "history_per_conversation": args.history,
                "link_to_usable_ms": usable_ms,
                "per_conversation_ms": per_conversation_ms,
                "bytes_posted": bytes,
                "history_lines_received": history_lines,
                "setup_ms": setup_ms,
            })
        );
    } else {
        println!(
            "linking a device to {} conversations ({} messages each)",
            args.conversations, args.history
        );
        println!(
            "  link made → new device in every conversation: {usable_ms} ms ({per_conversation_ms:.1} ms per conversation)"
        );
        println!("  bytes both devices posted to the relay:        {bytes}");
        println!("  lines of history on the new device:           {history_lines}");
    }
    Ok(())
}
