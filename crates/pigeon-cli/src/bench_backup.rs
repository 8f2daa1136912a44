//! `pigeon bench backup`: a backup of a profile with 100,000 messages, and its restore on a
//! new profile until it is back in every conversation (issue #16).
//!
//! A relay child process on loopback; alice and bob, introduced, in `--conversations - 1`
//! groups besides their conversation of two; `--messages` lines of history spread over the
//! conversations (stored the way received lines are; sending 100,000 real messages first
//! would measure the sending). Then what `pigeon backup` does (the key refresh in every
//! conversation, the export, Argon2id at the default cost and the sealing, the file written
//! and synced) and what `pigeon restore` does (opening, the new profile, and every
//! conversation letting the restored device in, bob's client reading as it would).

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use pigeon_client::backup::{self, KdfCost};
use pigeon_client::{Client, Passphrase, Profile};
use std::io::Write as _;
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench backup`.
#[derive(clap::Args, Debug)]
pub(crate) struct BackupBenchArgs {
    /// Conversations: one with bob, the rest groups with bob in them.
    #[arg(long, default_value_t = 10)]
    conversations: u32,
    /// Lines of history in all, spread evenly over the conversations.
    #[arg(long, default_value_t = 100_000)]
    messages: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    limit: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// Runs `pigeon bench backup`.
pub(crate) async fn run(args: BackupBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=1000).contains(&args.conversations),
        "--conversations must be 1 to 1000"
    );
    anyhow::ensure!(
        args.messages <= 10_000_000,
        "--messages must be at most 10,000,000"
    );
    let deadline = Instant::now() + Duration::from_secs(args.limit);
    let dir = tempfile::tempdir()?;
    let relay = RelayProcess::start(&dir.path().join("relay"), &[])?;
    let pass = || Passphrase::new("bench".to_owned());
    let timeout = Duration::from_secs(10);
    let quiet = Duration::from_millis(20);
    let mut alice = Client::new(
        Profile::create(&dir.path().join("alice"), &pass(), "alice", &relay.link)?,
        timeout,
    );
    let mut bob = Client::new(
        Profile::create(&dir.path().join("bob"), &pass(), "bob", &relay.link)?,
        timeout,
    );
    let setup = Instant::now();
    let link = alice.invite().await?;
    bob.accept(&link, None).await?;
    alice.sync(quiet, Duration::from_secs(30)).await?;
    for i in 1..args.conversations {
        let name = format!("group {i}");
        alice.create_group(&name).await?;
        alice.group_add_contact(&name, "bob").await?;
    }
    let groups = args.conversations as usize - 1;
    while bob.profile().groups()?.len() < groups {
        anyhow::ensure!(Instant::now() < deadline, "bob did not join every group");
        bob.sync(quiet, Duration::from_secs(30)).await?;
        alice.sync(quiet, Duration::from_secs(30)).await?;
    }
    alice.sync(quiet, Duration::from_secs(30)).await?;
    let per = args.messages as usize / args.conversations as usize;
    let seeded = alice.profile().seed_history(per)?;
    let setup_ms = ms(setup);

    // pigeon backup
    let started = Instant::now();
    let (contents, summary) = alice.backup(Duration::from_secs(120)).await?;
    let refresh_export_ms = ms(started);
    let sealing = Instant::now();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let sealed = backup::seal(&contents, "bench backup words", KdfCost::DEFAULT, salt)?;
    let seal_ms = ms(sealing);
    let file = dir.path().join("alice.backup");
    {
        let mut f = std::fs::File::create(&file)?;
        f.write_all(&sealed)?;
        f.sync_all()?;
    }
    alice.profile().backup_written()?;
    let backup_ms = ms(started);
    anyhow::ensure!(
        summary.restorable == args.conversations as usize,
        "only {} of {} conversations are restorable",
        summary.restorable,
        args.conversations
    );
    drop(alice);

    // pigeon restore
    let started = Instant::now();
    let bytes = std::fs::read(&file)?;
    let opened = backup::open(&bytes, "bench backup words")?;
    let open_ms = ms(started);
    let (restored, _) = Profile::restore_backup(&dir.path().join("restored"), &pass(), &opened)?;
    let made_ms = ms(started);
    let mut restored = Client::new(restored, timeout);
    let usable_ms = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restore did not finish in time"
        );
        restored.sync(quiet, Duration::from_secs(30)).await?;
        bob.sync(quiet, Duration::from_secs(30)).await?;
        let progress = restored.profile().restore_progress()?;
        if progress.waiting.is_empty() {
            anyhow::ensure!(
                progress.back == args.conversations as usize,
                "back in {} of {} conversations",
                progress.back,
                args.conversations
            );
            break ms(started);
        }
    };
    let lines: usize = restored
        .profile()
        .groups()?
        .iter()
        .map(|g| {
            restored
                .profile()
                .group_history(g.id, i64::MAX)
                .map(|h| h.len())
        })
        .sum::<Result<usize, _>>()?;
    let contact = restored.profile().find_contact("bob").context("no bob")?;
    let lines = lines
        + restored
            .profile()
            .history(Some(contact.id), i64::MAX)?
            .len();
    anyhow::ensure!(
        lines >= seeded,
        "{lines} lines came back of the {seeded} seeded"
    );
    drop((restored, bob));
    relay.stop()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "conversations": args.conversations,
                "messages": seeded,
                "backup_ms": backup_ms,
                "backup_refresh_and_export_ms": refresh_export_ms,
                "backup_seal_ms": seal_ms,
                "backup_bytes": sealed.len(),
                "contents_bytes": contents.len(),
                "bytes_per_message": sealed.len() as f64 / seeded.max(1) as f64,
                "restore_open_ms": open_ms,
                "restore_profile_made_ms": made_ms,
                "restore_to_usable_ms": usable_ms,
                "lines_restored": lines,
                "kdf_m_cost_mib": KdfCost::DEFAULT.m_cost_kib / 1024,
                "kdf_t_cost": KdfCost::DEFAULT.t_cost,
                "setup_ms": setup_ms,
            })
        );
    } else {
        println!(
            "backup and restore of {seeded} messages in {} conversations",
            args.conversations
        );
        println!(
            "  pigeon backup:  {backup_ms} ms ({refresh_export_ms} ms key refresh in every \
             conversation and export, {seal_ms} ms Argon2id + sealing), {} bytes \
             ({:.0} bytes per message)",
            sealed.len(),
            sealed.len() as f64 / seeded.max(1) as f64
        );
        println!(
            "  pigeon restore: {open_ms} ms to open, {made_ms} ms to the new profile, \
             {usable_ms} ms until back in every conversation; {lines} lines of history"
        );
    }
    Ok(())
}
