//! `pigeon devices`: one person, several devices (issue #16). `link` hands every conversation
//! to a new device (which runs `pigeon init --link`), `list` shows them, `remove` takes one out
//! of every conversation.

use crate::qr;
use crate::user_cmd::{ProfileArg, clock, notice, open_client, open_profile, safe};
use anyhow::Context as _;
use pigeon_client::{Client, device_label};
use std::time::{Duration, Instant};

/// `pigeon devices [list|link|remove]`: without a subcommand, lists them.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DevicesArgs {
    #[command(subcommand)]
    command: Option<DevicesCommand>,
    #[command(flatten)]
    list: ListArgs,
}

/// `pigeon devices …`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum DevicesCommand {
    /// List your devices (from the conversations this device is in).
    List(ListArgs),
    /// Print a one-time link (and QR code) for a new device, then hand it every conversation
    /// once it answers (`pigeon init --link LINK` on the new device). Stays until done.
    Link(LinkArgs),
    /// Remove one of your devices from every conversation: it reads nothing new.
    Remove(RemoveArgs),
}

/// `pigeon devices list`.
#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    profile: ProfileArg,
}

/// `pigeon devices link`.
#[derive(clap::Args, Debug)]
pub(crate) struct LinkArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// Print only the link, without the QR code.
    #[arg(long)]
    no_qr: bool,
    /// Give up after this many seconds (the link expires after 10 minutes).
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    wait: f64,
    /// Hand the new device this many days of each conversation's messages (0: none).
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    history_days: u32,
}

/// `pigeon devices remove`.
#[derive(clap::Args, Debug)]
pub(crate) struct RemoveArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// The device's name (see `pigeon devices list`).
    name: String,
}

/// Runs a `pigeon devices` command.
pub(crate) async fn run(args: DevicesArgs) -> anyhow::Result<u8> {
    match args.command.unwrap_or(DevicesCommand::List(args.list)) {
        DevicesCommand::List(args) => {
            let profile = open_profile(&args.profile)?;
            for d in profile.devices()? {
                let linked = d
                    .linked_at
                    .map(|t| format!(", linked here {}", clock(t)))
                    .unwrap_or_default();
                let seen = d
                    .last_seen
                    .map(|t| format!(", last seen {}", clock(t)))
                    .unwrap_or_default();
                println!(
                    "{}{} — in {} conversation(s){linked}{seen}",
                    safe(device_label(&d.name)),
                    if d.this { " (this device)" } else { "" },
                    d.conversations
                );
            }
            Ok(0)
        }
        DevicesCommand::Remove(args) => {
            let mut client = open_client(&args.profile)?;
            client.profile().remove_device(&args.name)?;
            let (events, _) = client
                .sync(Duration::from_secs(2), Duration::from_secs(30))
                .await?;
            print_events(&client, &events);
            println!(
                "Removing {} from your {}: it reads nothing written from now on.",
                safe(&args.name),
                conversations(&client)?
            );
            Ok(0)
        }
        DevicesCommand::Link(args) => link(args).await,
    }
}

/// "3 contacts and 2 groups".
fn conversations(client: &Client) -> anyhow::Result<String> {
    let p = client.profile();
    Ok(format!(
        "{} contact(s) and {} group(s)",
        p.contacts()?.len(),
        p.groups()?.len()
    ))
}

/// One round of sending and receiving while a link is under way. A relay that cannot be
/// reached is tried again a second later (until the caller's deadline): what was done so far
/// is in the profile, and the other device waits too.
pub(crate) async fn sync_or_wait(client: &mut Client, print: bool) -> anyhow::Result<()> {
    match client
        .sync(Duration::from_millis(500), Duration::from_secs(30))
        .await
    {
        Ok((events, _)) => {
            if print {
                print_events(client, &events);
            }
            Ok(())
        }
        Err(pigeon_client::Error::Relay { whose, source }) => {
            eprintln!(
                "{whose} cannot be reached ({}); trying again",
                safe(&source.to_string())
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn print_events(client: &Client, events: &[pigeon_client::ClientEvent]) {
    for e in events {
        if let Some(line) = notice(e, client.profile()) {
            println!("{line}");
        }
    }
}

async fn link(args: LinkArgs) -> anyhow::Result<u8> {
    let mut client = open_client(&args.profile)?;
    let link = client.link_device(args.history_days).await?;
    let text = link.to_link().context("making the link")?;
    println!("{text}");
    if !args.no_qr {
        println!("{}", qr::render(&text)?);
    }
    eprintln!(
        "On the new device run: pigeon init --link LINK (it works once, for 10 minutes; \
         whoever has it can become one of your devices, so show it to nobody else)."
    );
    let deadline = Instant::now() + Duration::from_secs_f64(args.wait.clamp(1.0, 3600.0));
    let mut last = None;
    loop {
        sync_or_wait(&mut client, true).await?;
        let progress = client.profile().device_link_progress(&link.mailbox_id)?;
        if Some(&progress) != last.as_ref() && progress.answered {
            eprintln!(
                "{}: {} of {} conversations handed over",
                safe(device_label(&progress.device)),
                progress.welcomed,
                progress.offered
            );
        }
        if progress.done {
            // Let the spent link mailbox go.
            let _ = client
                .sync(Duration::from_millis(200), Duration::from_secs(10))
                .await;
            println!(
                "Linked {}: it is in your {} and reads on from here.",
                safe(device_label(&progress.device)),
                conversations(&client)?
            );
            return Ok(0);
        }
        if progress.expired {
            anyhow::bail!("nobody answered the link in time; make a new one");
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "gave up waiting; run `pigeon read` later to finish handing over conversations"
            );
        }
        last = Some(progress);
    }
}

/// `pigeon init --link` again on a profile it made: waits on if the link was answered, else
/// answers it (a profile that is already in use is refused).
pub(crate) async fn resume(
    client: &mut Client,
    link: &pigeon_client::DeviceLink,
    device: &str,
    wait: Duration,
) -> anyhow::Result<u8> {
    if client.profile().link_join_progress()?.is_some() {
        eprintln!("This device answered a link before; carrying on…");
        return wait_for_handover(client, wait).await;
    }
    let p = client.profile();
    anyhow::ensure!(
        p.contacts()?.is_empty() && p.groups()?.is_empty() && p.name()? == link.name,
        "a profile in use is there already: pass another --profile for the new device"
    );
    p.set_device_name(device)?;
    follow(client, link, wait).await
}

/// `pigeon init --link`: the new device's side, once its profile exists.
pub(crate) async fn follow(
    client: &mut Client,
    link: &pigeon_client::DeviceLink,
    wait: Duration,
) -> anyhow::Result<u8> {
    client.follow_device_link(link).await?;
    eprintln!("Answered the link; waiting for your other device to hand over your conversations…");
    wait_for_handover(client, wait).await
}

async fn wait_for_handover(client: &mut Client, wait: Duration) -> anyhow::Result<u8> {
    let deadline = Instant::now() + wait;
    let mut last = None;
    loop {
        sync_or_wait(client, true).await?;
        let Some(progress) = client.profile().link_join_progress()? else {
            anyhow::bail!("this profile follows no device link");
        };
        if progress.offered && Some(&progress) != last.as_ref() {
            eprintln!(
                "{} of {} conversations joined",
                progress.joined, progress.total
            );
        }
        if progress.done {
            let _ = client
                .sync(Duration::from_millis(200), Duration::from_secs(10))
                .await;
            println!(
                "This device is linked: it is in your {}. Read with `pigeon read`.",
                conversations(client)?
            );
            return Ok(0);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "your other device has not handed everything over yet; run `pigeon read` later \
                 (with `pigeon devices link` still running there)"
            );
        }
        last = Some(progress);
    }
}
