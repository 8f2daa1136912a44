//! The commands people use: `init`, `invite`, `accept`, `contacts`, `send`, `read`.

use crate::qr;
use anyhow::Context as _;
use pigeon_client::{
    Client, ClientEvent, Contact, FlushReport, GroupMessage, Message, Passphrase, Profile,
    ProfileError,
};
use pigeon_transport::RelayLink;
use std::path::PathBuf;
use std::time::Duration;

/// How long one connection attempt to a relay may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit status when a message was saved but could not be sent yet (EX_TEMPFAIL).
pub(crate) const EXIT_QUEUED: u8 = 75;

/// The global `--profile DIR` (or `PIGEON_PROFILE`), set once by `main` before a command runs.
static PROFILE_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Records the global `--profile` (it is accepted before or after the subcommand).
pub(crate) fn set_profile_dir(dir: Option<PathBuf>) {
    let _ = PROFILE_DIR.set(dir);
}

/// Where the profile lives: the global `--profile DIR`, `PIGEON_PROFILE`, or the default.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ProfileArg {
    #[arg(skip)]
    pub(crate) profile: Option<PathBuf>,
}

impl ProfileArg {
    pub(crate) fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = self
            .profile
            .clone()
            .or_else(|| PROFILE_DIR.get().cloned().flatten())
        {
            return Ok(p);
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(data).join("pigeonpost"));
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .context("no profile directory: pass --profile DIR or set PIGEON_PROFILE")?;
        Ok(PathBuf::from(home).join(".local/share/pigeonpost"))
    }
}

/// `pigeon init`.
#[derive(clap::Args, Debug)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// The name your contacts see (travels only inside encrypted messages and your invitations).
    #[arg(long, required_unless_present = "link", conflicts_with = "link")]
    name: Option<String>,
    /// The relay you receive on (a `pigeon://relay#…` link from its operator).
    #[arg(
        long,
        value_name = "RELAY_LINK",
        required_unless_present = "link",
        conflicts_with = "link"
    )]
    relay: Option<String>,
    /// Make this another device of yours: a `pigeon://device#…` link from
    /// `pigeon devices link` on a device you have. It hands this one every conversation.
    #[arg(long, value_name = "DEVICE_LINK")]
    link: Option<String>,
    /// This device's name, as your other devices and your contacts see it.
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// With --link: give up waiting after this many seconds (`pigeon read` finishes later).
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    wait: f64,
}

/// `pigeon contacts`.
#[derive(clap::Args, Debug)]
pub(crate) struct ContactsArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
}

/// `pigeon invite`.
#[derive(clap::Args, Debug)]
pub(crate) struct InviteArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// Print only the link, without the QR code.
    #[arg(long)]
    no_qr: bool,
}

/// `pigeon accept`.
#[derive(clap::Args, Debug)]
pub(crate) struct AcceptArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// The `pigeon://invite#…` link.
    link: String,
    /// Call the contact this instead of the name in the invitation.
    #[arg(long = "as", value_name = "NAME")]
    local_name: Option<String>,
}

/// `pigeon send`.
#[derive(clap::Args, Debug)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// The contact's or group's name or number (see `pigeon contacts`, `pigeon group list`).
    contact: String,
    /// The message (with `--file`: its caption, which may be left out).
    #[arg(required_unless_present = "file", num_args = 0..)]
    text: Vec<String>,
    /// Send a photo, voice note or file (up to 100 MiB): encrypted here under a key of its
    /// own, uploaded to the conversation's relay in chunks that resume after a broken
    /// connection, and announced to the conversation once it is all there.
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
    /// With `--file`: it is a voice note.
    #[arg(long, requires = "file")]
    voice: bool,
}

/// `pigeon read`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReadArgs {
    #[command(flatten)]
    pub(crate) profile: ProfileArg,
    /// Only this contact's messages.
    contact: Option<String>,
    /// After the backlog, keep listening this many seconds for new messages.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    wait: f64,
    /// Save the files that arrive in this directory too (they are always kept, encrypted,
    /// in the profile: `pigeon files`, `pigeon save`).
    #[arg(long, value_name = "DIR")]
    save_to: Option<PathBuf>,
}

/// The passphrase from `PIGEON_PASSPHRASE`, or asked for on the terminal.
pub(crate) fn passphrase(confirm: bool) -> anyhow::Result<Passphrase> {
    if let Ok(p) = std::env::var("PIGEON_PASSPHRASE") {
        return Ok(Passphrase::new(p));
    }
    let first = rpassword::prompt_password("Profile passphrase: ").context(
        "no passphrase: set PIGEON_PASSPHRASE or run pigeon in a terminal to be asked for it",
    )?;
    if confirm {
        let second = rpassword::prompt_password("Repeat it: ")
            .context("could not read the passphrase again")?;
        anyhow::ensure!(first == second, "the two passphrases differ");
    }
    Ok(Passphrase::new(first))
}

pub(crate) fn open_profile(arg: &ProfileArg) -> anyhow::Result<Profile> {
    let dir = arg.dir()?;
    Ok(Profile::open(&dir, &passphrase(false)?)?)
}

pub(crate) fn open_client(arg: &ProfileArg) -> anyhow::Result<Client> {
    Ok(Client::new(open_profile(arg)?, CONNECT_TIMEOUT))
}

pub(crate) async fn init(args: InitArgs) -> anyhow::Result<u8> {
    let arg = &args.profile;
    let dir = arg.dir()?;
    if let Some(text) = &args.link {
        // A bad link is refused before anything is made.
        let link = pigeon_client::DeviceLink::parse(text).map_err(pigeon_client::Error::from)?;
        let wait = Duration::from_secs_f64(args.wait.clamp(1.0, 3600.0));
        let device = args.device.as_deref().unwrap_or(&link.device).trim();
        if dir.join(pigeon_client::profile::DB_FILE).exists() {
            // The same command again (after an interruption): carry on where it stopped.
            let profile = Profile::open(&dir, &passphrase(false)?)?;
            let mut client = Client::new(profile, CONNECT_TIMEOUT);
            return crate::devices_cmd::resume(&mut client, &link, device, wait).await;
        }
        let profile = Profile::create(&dir, &passphrase(true)?, &link.name, &link.relay)?;
        profile.set_device_name(device)?;
        println!(
            "Created the profile of {} in {} as the device {}.",
            safe(&link.name),
            dir.display(),
            safe(pigeon_client::device_label(device))
        );
        let mut client = Client::new(profile, CONNECT_TIMEOUT);
        return crate::devices_cmd::follow(&mut client, &link, wait).await;
    }
    let (Some(name), Some(relay)) = (&args.name, &args.relay) else {
        anyhow::bail!("pass --name and --relay, or --link to make this another of your devices");
    };
    let relay = RelayLink::parse(relay).context("the --relay link is unusable")?;
    let profile = Profile::create(&dir, &passphrase(true)?, name.trim(), &relay)?;
    if let Some(device) = &args.device {
        profile.set_device_name(device.trim())?;
    }
    println!(
        "Created the profile of {} in {}.",
        profile.name()?,
        dir.display()
    );
    println!("Invite someone with `pigeon invite`, or accept a link with `pigeon accept LINK`.");
    Ok(0)
}

pub(crate) async fn invite(args: InviteArgs) -> anyhow::Result<()> {
    let arg = &args.profile;
    let mut client = open_client(arg)?;
    let link = client.invite().await?;
    println!("{link}");
    if !args.no_qr {
        println!("{}", qr::render(&link)?);
    }
    eprintln!(
        "Share this link (or QR code) with one person, privately; it works once. \
         When they accept, `pigeon read` shows them."
    );
    Ok(())
}

pub(crate) async fn accept(args: AcceptArgs) -> anyhow::Result<u8> {
    let arg = &args.profile;
    // A bad link is refused before the passphrase is asked for.
    let is_group = pigeon_client::Invite::parse(&args.link)
        .map_err(pigeon_client::Error::from)?
        .group
        .is_some();
    let mut client = open_client(arg)?;
    if is_group {
        let request = client.join_group(&args.link).await?;
        println!("{}", safe(&request.to_string()));
        return Ok(if request.sent { 0 } else { EXIT_QUEUED });
    }
    let (contact, report) = client
        .accept(&args.link, args.local_name.as_deref())
        .await?;
    println!(
        "You can now talk with {} ({}). Send with: pigeon send {} TEXT",
        contact.name,
        contact.suite.name(),
        shell_word(&contact.name)
    );
    Ok(report_queued(&report))
}

pub(crate) fn contacts(args: ContactsArgs) -> anyhow::Result<()> {
    let arg = &args.profile;
    let profile = open_profile(arg)?;
    let contacts = profile.contacts()?;
    if contacts.is_empty() {
        println!("No contacts yet: `pigeon invite` makes a link to share.");
    }
    for c in contacts {
        println!("{}", contact_line(&c));
    }
    Ok(())
}

fn contact_line(c: &Contact) -> String {
    let mut line = format!("#{:<3} {:<24} {}", c.id, c.name, c.suite.name());
    if c.unread > 0 {
        line.push_str(&format!(", {} unread", c.unread));
    }
    if c.queued > 0 {
        line.push_str(&format!(", {} waiting to be sent", c.queued));
    }
    line
}

pub(crate) async fn send(args: SendArgs) -> anyhow::Result<u8> {
    let arg = &args.profile;
    let mut client = open_client(arg)?;
    let text = args.text.join(" ");
    if let Some(path) = &args.file {
        let kind = args.voice.then_some(pigeon_client::AttachmentKind::Voice);
        let (line, file) = client.attach(&args.contact, path, None, &text, kind)?;
        let to = client.profile().conversation_label(line.group_id)?;
        let outcomes = crate::files_cmd::transfer(&mut client, false).await?;
        let sent = outcomes
            .iter()
            .any(|o| matches!(o, pigeon_client::FileOutcome::Sent(f) if f.id == file.id));
        let report = client.flush(true).await?;
        if !sent {
            eprintln!(
                "{} is kept and goes to {} the next time pigeon connects.",
                safe(&file.name),
                safe(&to)
            );
            return Ok(EXIT_QUEUED);
        }
        if report.waiting == 0 {
            println!("Sent {} to {}.", safe(&file.name), safe(&to));
        }
        return Ok(report_queued(&report));
    }
    let is_contact = match client.profile().find_contact(&args.contact) {
        Ok(_) => true,
        Err(ProfileError::NoContact(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if !is_contact && client.profile().find_group(&args.contact).is_ok() {
        let (message, report) = client.send_group(&args.contact, &text).await?;
        if report.waiting == 0 {
            println!("Sent to {}.", safe(&message.group));
        }
        return Ok(report_queued(&report));
    }
    let (message, report) = client.send(&args.contact, &text).await?;
    if report.waiting == 0 {
        println!("Sent to {}.", safe(&message.contact));
    }
    Ok(report_queued(&report))
}

/// Prints why items wait; returns the exit status.
pub(crate) fn report_queued(report: &FlushReport) -> u8 {
    if report.waiting == 0 {
        return 0;
    }
    eprintln!(
        "Saved, but {} message(s) could not be sent yet; pigeon sends them the next time it \
         connects (`pigeon read`, `pigeon chat` or `pigeon send`):",
        report.waiting
    );
    for e in &report.errors {
        eprintln!("  {e}");
    }
    EXIT_QUEUED
}

pub(crate) async fn read(args: ReadArgs) -> anyhow::Result<u8> {
    let arg = &args.profile;
    let mut client = open_client(arg)?;
    // One name: a contact's, else a group's. No name: everything.
    let (only_contact, only_group) = match &args.contact {
        Some(name) => match client.profile().find_contact(name) {
            Ok(c) => (Some(c.id), Some(pigeon_client::GroupId(-1))),
            Err(ProfileError::NoContact(_)) => (
                Some(pigeon_client::ContactId(-1)),
                Some(client.profile().find_group(name)?.id),
            ),
            Err(e) => return Err(e.into()),
        },
        None => (None, None),
    };
    let quiet = Duration::from_secs_f64(args.wait.clamp(0.0, 3600.0));
    let (events, report) = client.sync(quiet, quiet + Duration::from_secs(30)).await?;
    for e in &events {
        if let Some(line) = notice(e, client.profile()) {
            println!("{line}");
        }
    }
    let outcomes = crate::files_cmd::transfer(&mut client, false).await?;
    if let Some(dir) = &args.save_to {
        for outcome in &outcomes {
            if let pigeon_client::FileOutcome::Received(f) = outcome {
                let path = client.profile().export_file(f.id, dir)?;
                println!(
                    "* saved {} to {}",
                    safe(&f.name),
                    safe(&path.display().to_string())
                );
            }
        }
    }
    let unread = client.profile().take_unread(only_contact)?;
    let group_unread = client.profile().take_group_unread(only_group)?;
    if unread.is_empty() && group_unread.is_empty() {
        println!("No new messages.");
    }
    for m in &unread {
        println!("{}", message_line(m));
    }
    for m in &group_unread {
        println!("{}", group_line(m));
    }
    // What was read here is read on the person's other devices too: tell them now.
    if !unread.is_empty() || !group_unread.is_empty() {
        client.flush(false).await?;
    }
    client.profile().prune()?;
    Ok(report_queued(&report))
}

/// A line for events that are not messages (messages print from the database).
pub(crate) fn notice(event: &ClientEvent, profile: &Profile) -> Option<String> {
    match event {
        ClientEvent::NewContact(c) => Some(format!(
            "* {} accepted your invitation ({}). Send with: pigeon send {} TEXT",
            safe(&c.name),
            c.suite.name(),
            shell_word(&c.name)
        )),
        ClientEvent::JoinedGroup(g) => Some(format!(
            "* you are now in the group {} ({} members). Send with: pigeon send {} TEXT",
            safe(&g.name),
            g.members,
            shell_word(&g.name)
        )),
        ClientEvent::Dropped(reason) => Some(format!(
            "* a message was refused and dropped: {}",
            safe(reason)
        )),
        ClientEvent::Notice(text) => Some(format!("* {}", safe(text))),
        ClientEvent::Disconnected { reason } => Some(format!("* disconnected: {}", safe(reason))),
        ClientEvent::Rekeyed { contact_id, epoch } => profile.contact(*contact_id).ok().map(|c| {
            format!(
                "* {} refreshed the conversation's keys (epoch {epoch})",
                c.name
            )
        }),
        _ => None,
    }
}

pub(crate) fn message_line(m: &Message) -> String {
    if m.notice {
        return format!("[{}] * {}", clock(m.sent_at_ms), safe(&m.text));
    }
    let who = if m.outgoing { "you" } else { &m.contact };
    format!(
        "[{}] {}: {}",
        clock(m.sent_at_ms),
        safe(who),
        with_file(&m.text, m.file.as_ref())
    )
}

/// A line's text, after the file it carries if any.
fn with_file(text: &str, file: Option<&pigeon_client::FileInfo>) -> String {
    match file {
        Some(f) if text.is_empty() => crate::files_cmd::file_label(f),
        Some(f) => format!("{} {}", crate::files_cmd::file_label(f), safe(text)),
        None => safe(text),
    }
}

/// A line of a group's transcript.
pub(crate) fn group_line(m: &GroupMessage) -> String {
    if m.notice {
        return format!(
            "[{}] {}: * {}",
            clock(m.sent_at_ms),
            safe(&m.group),
            safe(&m.text)
        );
    }
    let who = if m.outgoing { "you" } else { &m.sender };
    format!(
        "[{}] {} / {}: {}",
        clock(m.sent_at_ms),
        safe(&m.group),
        safe(who),
        with_file(&m.text, m.file.as_ref())
    )
}

/// Text from a peer or a relay, made safe for a terminal: control characters (escape
/// sequences, carriage returns), bidirectional overrides and other invisible formatting are
/// shown as `\u{…}` instead of being obeyed. Newlines and tabs stay.
pub(crate) fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let dangerous = (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}');
        if dangerous {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub(crate) fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// The name quoted for a shell if it needs it.
pub(crate) fn shell_word(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_alphanumeric() || "-_.@".contains(c))
    {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(0), "1970-01-01 00:00");
        assert_eq!(clock(1_795_613_400_000), "2026-11-25 13:30");
        assert_eq!(clock(951_782_400_000), "2000-02-29 00:00");
    }

    #[test]
    fn peer_text_cannot_steer_the_terminal() {
        assert_eq!(safe("hi\u{1b}[2J"), "hi\\u{1b}[2J");
        assert_eq!(safe("a\u{202E}b"), "a\\u{202e}b");
        assert_eq!(safe("\u{1b}]0;title\u{7}"), "\\u{1b}]0;title\\u{7}");
        assert_eq!(safe("line\nnext\tü"), "line\nnext\tü");
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("alice"), "alice");
        assert_eq!(shell_word("bob (2)"), "'bob (2)'");
        assert_eq!(shell_word("o'neil"), r"'o'\''neil'");
    }
}
