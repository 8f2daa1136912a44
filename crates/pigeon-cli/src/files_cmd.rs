//! Photos, voice notes and files from the terminal (issue #17): `pigeon send NAME --file
//! PATH`, the transfers every reading command makes (with progress bars), `pigeon files` and
//! `pigeon save`.

use crate::user_cmd::{ProfileArg, open_profile, safe, shell_word};
use pigeon_client::{Client, FileInfo, FileOutcome, FileProgress, FileState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long the transfers of one command may take before they wait for the next.
pub(crate) const TRANSFER_LIMIT: Duration = Duration::from_secs(30 * 60);

/// `pigeon files`.
#[derive(clap::Args, Debug)]
pub(crate) struct FilesArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// Only this contact's or group's files.
    name: Option<String>,
    /// Print JSON (one array) instead of lines.
    #[arg(long)]
    json: bool,
}

/// `pigeon save`.
#[derive(clap::Args, Debug)]
pub(crate) struct SaveArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// The file's number (from `pigeon files` or the line that announced it).
    id: i64,
    /// A directory to save it in under its own name, or a file path (default: the current
    /// directory).
    dest: Option<PathBuf>,
}

/// `12.3 MB`, `840 kB`, `512 B`.
pub(crate) fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.0} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

fn kind_word(f: &FileInfo) -> &'static str {
    match f.kind {
        pigeon_client::AttachmentKind::Image => "photo",
        pigeon_client::AttachmentKind::Voice => "voice note",
        pigeon_client::AttachmentKind::File => "file",
    }
}

/// What a transcript shows for a file: `[photo cat.jpg, 1.2 MB, #3 received]`.
pub(crate) fn file_label(f: &FileInfo) -> String {
    let state = match f.state {
        FileState::Uploading => format!("sending, {}%", percent(f.done, f.size)),
        FileState::Downloading if f.done > 0 => {
            format!("downloading, {}%", percent(f.done, f.size))
        }
        FileState::Downloading => "to download".to_owned(),
        FileState::Failed => format!("failed: {}", f.error.as_deref().unwrap_or("unknown reason")),
        s => s.as_str().to_owned(),
    };
    format!(
        "[{} {}, {}, #{} {}]",
        kind_word(f),
        safe(&f.name),
        human_size(f.size),
        f.id,
        safe(&state)
    )
}

fn percent(done: u64, total: u64) -> u64 {
    (done * 100).checked_div(total).unwrap_or(0)
}

/// Carries on with every upload and download, one progress bar per file on a terminal
/// (none with `quiet`); prints a line per file that finished or failed (with `quiet`, only
/// failures, on standard error). Returns the outcomes.
pub(crate) async fn transfer(client: &mut Client, quiet: bool) -> anyhow::Result<Vec<FileOutcome>> {
    let mut bars: BTreeMap<i64, indicatif::ProgressBar> = BTreeMap::new();
    let mut progress = |p: &FileProgress| {
        let bar = bars.entry(p.id).or_insert_with(|| {
            let verb = if p.outgoing { "sending" } else { "receiving" };
            crate::progress::bytes_bar(&format!("{verb} {}", safe(&p.name)), quiet)
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let outcomes = client.transfer_files(TRANSFER_LIMIT, &mut progress).await?;
    for bar in bars.values() {
        bar.finish_and_clear();
    }
    for outcome in &outcomes {
        match outcome {
            FileOutcome::Sent(f) if !quiet => {
                println!("* sent {} ({})", safe(&f.name), human_size(f.size));
            }
            FileOutcome::Received(f) if !quiet => println!(
                "* received {} ({}): save it with `pigeon save {}`",
                safe(&f.name),
                human_size(f.size),
                f.id
            ),
            FileOutcome::Failed { id, why } => {
                eprintln!("* file #{id} cannot be had: {}", safe(why));
            }
            FileOutcome::Waiting { id, why } => eprintln!(
                "* file #{id} is not finished ({}); pigeon goes on with it the next time it \
                 connects",
                safe(why)
            ),
            _ => {}
        }
    }
    Ok(outcomes)
}

/// `pigeon files`.
pub(crate) fn files(args: &FilesArgs) -> anyhow::Result<u8> {
    let profile = open_profile(&args.profile)?;
    let group = match &args.name {
        Some(name) => Some(profile.conversation_or_group_contact_first(name)?),
        None => None,
    };
    let files = profile.files(group)?;
    if args.json {
        let out: Vec<serde_json::Value> = files.iter().map(file_json).collect();
        println!("{}", serde_json::Value::Array(out));
        return Ok(0);
    }
    if files.is_empty() {
        println!("No files.");
    }
    for f in &files {
        let dir = if f.outgoing { "out" } else { "in " };
        let saved = f
            .saved_to
            .as_ref()
            .map(|p| format!(" → {}", safe(&p.display().to_string())))
            .unwrap_or_default();
        println!("{dir} {}{saved}", file_label(f));
    }
    Ok(0)
}

/// A file as JSON (`pigeon files --json`, the RPC core).
pub(crate) fn file_json(f: &FileInfo) -> serde_json::Value {
    serde_json::json!({
        "id": f.id,
        "message": f.message,
        "outgoing": f.outgoing,
        "name": f.name,
        "mime": f.mime,
        "kind": kind_word(f),
        "size": f.size,
        "state": f.state.as_str(),
        "done": f.done,
        "error": f.error,
        "thumbnail": f.has_thumbnail,
        "saved_to": f.saved_to.as_ref().map(|p| p.display().to_string()),
    })
}

/// `pigeon save`.
pub(crate) fn save(args: &SaveArgs) -> anyhow::Result<u8> {
    let profile = open_profile(&args.profile)?;
    let dest = match &args.dest {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let path = profile.export_file(args.id, &dest)?;
    println!("Saved to {}", shell_word(&path.display().to_string()));
    Ok(0)
}

/// `pigeon read-receipts`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReadReceiptsArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// `on` or `off`; without it, says which it is.
    #[arg(value_parser = ["on", "off"])]
    state: Option<String>,
}

/// `pigeon read-receipts [on|off]`: whether contacts learn that you read their messages.
pub(crate) fn read_receipts(args: &ReadReceiptsArgs) -> anyhow::Result<u8> {
    let profile = open_profile(&args.profile)?;
    if let Some(state) = &args.state {
        profile.set_read_receipts(state == "on")?;
    }
    if profile.read_receipts()? {
        println!("Read receipts are on: your contacts see when you have read their messages.");
    } else {
        println!(
            "Read receipts are off: your contacts see that their messages arrived, not that you read them."
        );
    }
    Ok(0)
}
