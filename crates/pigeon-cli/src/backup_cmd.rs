//! `pigeon backup FILE` and `pigeon restore FILE` (issue #16): an encrypted backup of the
//! profile (name, settings, contacts, groups, history) that a new machine is restored from as a
//! new device of every conversation. The file's container is `pigeon_client::backup`; what
//! goes in it, and how a restored device gets back in, is `Profile::export_backup` and
//! `Profile::restore_backup`.

use crate::user_cmd::{CONNECT_TIMEOUT, EXIT_QUEUED, ProfileArg, open_client, passphrase, safe};
use anyhow::Context as _;
use pigeon_client::backup::{self, KdfCost};
use pigeon_client::{Client, Profile};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest backup file `pigeon restore` reads (it is opened whole, before anything is made).
const MAX_BACKUP_BYTES: u64 = 2 << 30;

/// `pigeon backup`.
#[derive(clap::Args, Debug)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// Where to write it (an existing file there is replaced once the new one is whole).
    file: PathBuf,
    /// Wait at most this many seconds for each conversation's relay to take this device's key
    /// refresh (a conversation it does not reach is in the backup as history only).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    wait: f64,
    /// Argon2id memory, in MiB (the file records it; restoring needs as much).
    #[arg(long, default_value_t = 256, value_name = "MIB", hide = true)]
    kdf_mib: u32,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `pigeon restore`.
#[derive(clap::Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// The backup file (from `pigeon backup`).
    file: PathBuf,
    /// Wait at most this many seconds for the conversations to let this device in (the rest
    /// finishes at the next `pigeon read`).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    wait: f64,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The backup's passphrase: `PIGEON_BACKUP_PASSPHRASE`, or asked for (twice when making one).
fn backup_passphrase(confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("PIGEON_BACKUP_PASSPHRASE") {
        anyhow::ensure!(!p.is_empty(), "PIGEON_BACKUP_PASSPHRASE is empty");
        return Ok(p);
    }
    let first = rpassword::prompt_password("Backup passphrase: ").context(
        "no backup passphrase: set PIGEON_BACKUP_PASSPHRASE or run pigeon in a terminal to be \
         asked for it",
    )?;
    anyhow::ensure!(!first.is_empty(), "the backup passphrase is empty");
    if confirm {
        let second = rpassword::prompt_password("Repeat it: ")
            .context("could not read the passphrase again")?;
        anyhow::ensure!(first == second, "the two passphrases differ");
    }
    Ok(first)
}

pub(crate) async fn backup(args: BackupArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let mut client = open_client(&args.profile)?;
    let pass = backup_passphrase(true)?;
    let cost = KdfCost {
        m_cost_kib: args.kdf_mib.clamp(8, 1024) * 1024,
        ..KdfCost::DEFAULT
    };
    let bar = crate::progress::bar("refreshing keys for the backup", args.json);
    let (contents, summary) = client
        .backup_with_progress(
            Duration::from_secs_f64(args.wait.clamp(0.0, 3600.0)),
            |done, total| crate::progress::set(&bar, done, total),
        )
        .await?;
    bar.finish_and_clear();
    let salt: [u8; 16] = {
        let mut s = [0u8; 16];
        getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        s
    };
    let sealed = backup::seal(&contents, &pass, cost, salt)?;
    write_atomically(&args.file, &sealed)
        .with_context(|| format!("writing the backup to {}", args.file.display()))?;
    client.profile().backup_written()?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "file": args.file.display().to_string(),
                "bytes": sealed.len(),
                "contents_bytes": contents.len(),
                "conversations": summary.conversations,
                "restorable": summary.restorable,
                "history_only": summary.conversations - summary.restorable,
                "not_reached": summary.not_restorable,
                "messages": summary.messages,
                "left_out": summary.left_out,
                "seconds": seconds,
            })
        );
    } else {
        println!(
            "Wrote {} ({} bytes): {} conversation(s), {} message(s); a restore rejoins {} of them.",
            args.file.display(),
            sealed.len(),
            summary.conversations,
            summary.messages,
            summary.restorable
        );
        for name in &summary.not_restorable {
            println!(
                "  {}: its relay did not take the key refresh in time; it is in the backup as \
                 history only (run pigeon backup again when it is reachable)",
                safe(name)
            );
        }
        if summary.left_out > 0 {
            println!(
                "  {} contact(s) of the first design (before groups) are not in the backup.",
                summary.left_out
            );
        }
        println!(
            "Keep the file and its passphrase apart. It replaces any older backup: an older one \
             no longer brings you back into these conversations."
        );
    }
    Ok(if summary.not_restorable.is_empty() {
        0
    } else {
        EXIT_QUEUED
    })
}

/// Writes `bytes` to `path` so that `path` holds either its old contents or all of the new
/// ones: a temporary file beside it, synced, renamed over it, and the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        let mut f = f.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let dir = args.profile.dir()?;
    if dir.join(pigeon_client::profile::DB_FILE).exists() {
        // The same command again (after an interruption): carry on waiting.
        let profile = Profile::open(&dir, &passphrase(false)?)?;
        let progress = profile.restore_progress()?;
        let total = progress.back + progress.waiting.len() + progress.history_only;
        anyhow::ensure!(
            total > 0,
            "{} holds a profile already; restore into a new one (--profile DIR)",
            dir.display()
        );
        if !args.json {
            eprintln!("This profile was restored from a backup before; carrying on…");
        }
        let client = Client::new(profile, CONNECT_TIMEOUT);
        return wait_until_back(client, &args, &dir, total, started).await;
    }
    let len = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_BACKUP_BYTES,
        "{} is {len} bytes, larger than any backup pigeon writes",
        args.file.display()
    );
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let pass = backup_passphrase(false)?;
    // All of it is checked here, before anything is made.
    let contents = backup::open(&bytes, &pass)
        .map_err(|e| anyhow::anyhow!("the backup is refused: {e}; nothing was restored"))?;
    let (profile, first) = Profile::restore_backup(&dir, &passphrase(true)?, &contents)?;
    let name = profile.name()?;
    let total = first.waiting.len() + first.history_only;
    if !args.json {
        println!(
            "Restored the profile of {} in {} ({} conversation(s)); asking each to let this \
             device in…",
            safe(&name),
            dir.display(),
            total
        );
    }
    let client = Client::new(profile, CONNECT_TIMEOUT);
    wait_until_back(client, &args, &dir, total, started).await
}

/// Syncs until every conversation let the restored device in (or `--wait` ends), then says
/// where the restore stands.
async fn wait_until_back(
    mut client: Client,
    args: &RestoreArgs,
    dir: &Path,
    total: usize,
    started: Instant,
) -> anyhow::Result<u8> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.wait.clamp(0.0, 3600.0));
    let bar = crate::progress::bar("conversations that let this device in", args.json);
    let progress = loop {
        crate::devices_cmd::sync_or_wait(&mut client, !args.json).await?;
        let progress = client.profile().restore_progress()?;
        crate::progress::set(&bar, progress.back, progress.back + progress.waiting.len());
        if progress.waiting.is_empty() || Instant::now() >= deadline {
            break progress;
        }
    };
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "profile": dir.display().to_string(),
                "conversations": total,
                "back": progress.back,
                "waiting": progress.waiting,
                "history_only": progress.history_only,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "Back in {} of {} conversation(s).",
            progress.back,
            total - progress.history_only
        );
        for name in &progress.waiting {
            println!(
                "  {}: waiting for one of its members' devices to let this one in (it happens \
                 when one of them next reads; `pigeon read` carries on)",
                safe(name)
            );
        }
        if !progress.waiting.is_empty() {
            println!(
                "  If that does not happen within days: a newer backup was made on the old \
                 device (only the newest one restores), or the conversation moved its log \
                 since (someone was removed); ask for a new invitation there."
            );
        }
        if progress.history_only > 0 {
            println!(
                "  {} conversation(s) came back as history only (ask for a new invitation).",
                progress.history_only
            );
        }
        println!("Make a new backup from here (`pigeon backup FILE`): the old one is spent.");
    }
    Ok(if progress.waiting.is_empty() {
        0
    } else {
        EXIT_QUEUED
    })
}
