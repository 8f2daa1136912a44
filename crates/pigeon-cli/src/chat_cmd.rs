//! `pigeon chat NAME` (a contact or a group): type to send, replies appear as they arrive.
//!
//! The database is the source of truth: after each batch from the relay the screen shows
//! what is unread there, so nothing a relay delivered is missed even if a batch was cut short.
//! When a relay session drops, it reconnects with backoff; what you type meanwhile is saved
//! and sent once a relay takes it.

use crate::user_cmd::{
    CONNECT_TIMEOUT, ProfileArg, group_line, message_line, notice, open_profile, safe,
};
use pigeon_client::{Client, ContactId, GroupId, ProfileError};
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;

/// `pigeon chat`.
#[derive(clap::Args, Debug)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// The contact's or group's name or number.
    contact: String,
    /// How many earlier messages to show.
    #[arg(long, default_value_t = 20)]
    history: i64,
}

/// Whom a chat is with.
#[derive(Clone, Copy)]
enum Target {
    Contact(ContactId),
    Group(GroupId),
}

impl Target {
    fn compose(self, client: &Client, text: &str) -> Result<(), ProfileError> {
        match self {
            Self::Contact(id) => client.profile().compose(id, text).map(|_| ()),
            Self::Group(id) => client.profile().compose_group(id, text).map(|_| ()),
        }
    }

    fn unread(self, client: &Client) -> Result<Vec<String>, ProfileError> {
        Ok(match self {
            Self::Contact(id) => client
                .profile()
                .take_unread(Some(id))?
                .iter()
                .map(message_line)
                .collect(),
            Self::Group(id) => client
                .profile()
                .take_group_unread(Some(id))?
                .iter()
                .map(group_line)
                .collect(),
        })
    }
}

pub(crate) async fn run(args: ChatArgs) -> anyhow::Result<u8> {
    let profile = open_profile(&args.profile)?;
    let (target, title) = match profile.find_contact(&args.contact) {
        Ok(contact) => {
            for m in profile.history(Some(contact.id), args.history.max(0))? {
                println!("{}", message_line(&m));
            }
            (
                Target::Contact(contact.id),
                format!("{} ({})", safe(&contact.name), contact.suite.name()),
            )
        }
        Err(ProfileError::NoContact(_)) => {
            let group = profile.find_group(&args.contact)?;
            for m in profile.group_history(group.id, args.history.max(0))? {
                println!("{}", group_line(&m));
            }
            (
                Target::Group(group.id),
                format!(
                    "the group {} ({} members)",
                    safe(&group.name),
                    group.members
                ),
            )
        }
        Err(e) => return Err(e.into()),
    };
    let mut client = Client::new(profile, CONNECT_TIMEOUT);
    target.unread(&client)?;
    println!(
        "— chatting with {title}. Type and press Enter to send; /file PATH [CAPTION] sends a \
         photo or file; /quit or Ctrl-D leaves."
    );
    // Files still on their way from an earlier run go on first.
    crate::files_cmd::transfer(&mut client, false).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut connected = false;
    let mut retry = Duration::ZERO;
    let mut flush_tick = tokio::time::interval(Duration::from_secs(5));
    let mut others = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                let text = line.trim();
                if text == "/quit" {
                    break;
                }
                if text.is_empty() {
                    continue;
                }
                if let Some(rest) = text.strip_prefix("/file ") {
                    let (path, caption) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                    match client.attach(&args.contact, std::path::Path::new(path), None, caption.trim(), None) {
                        Ok(_) => {
                            crate::files_cmd::transfer(&mut client, false).await?;
                            client.flush(true).await?;
                        }
                        Err(e) => println!("* {}", safe(&e.to_string())),
                    }
                    continue;
                }
                match target.compose(&client, text) {
                    Ok(_) => {
                        let report = client.flush(true).await?;
                        for e in &report.errors {
                            println!("* saved, not sent yet: {e}");
                        }
                    }
                    Err(e) => println!("* {e}"),
                }
            }
            batch = client.next_events(), if connected => {
                match batch? {
                    Some(events) => {
                        for e in &events {
                            if let Some(line) = notice(e, client.profile()) {
                                println!("{line}");
                            }
                            if let pigeon_client::ClientEvent::Disconnected { .. } = e {
                                connected = false;
                                retry = Duration::from_secs(1);
                            }
                        }
                        show_unread(&client, target, &mut others)?;
                        client.flush(false).await?;
                        // Files that arrived come down now (with a progress bar).
                        crate::files_cmd::transfer(&mut client, false).await?;
                    }
                    None => {
                        connected = false;
                        retry = Duration::from_secs(1);
                    }
                }
            }
            () = tokio::time::sleep(retry), if !connected => {
                match client.subscribe_all().await {
                    Ok(_) => {
                        connected = true;
                        retry = Duration::ZERO;
                        client.flush(true).await?;
                    }
                    Err(e) => {
                        println!("* {e}; retrying in {}s", (retry * 2).max(Duration::from_secs(1)).as_secs());
                        retry = (retry * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    }
                }
            }
            _ = flush_tick.tick() => {
                client.flush(false).await?;
            }
        }
    }
    let report = client.flush(true).await?;
    Ok(crate::user_cmd::report_queued(&report))
}

/// Prints this conversation's new messages, and a notice when another contact's unread count
/// grows.
fn show_unread(
    client: &Client,
    target: Target,
    others: &mut std::collections::BTreeMap<ContactId, i64>,
) -> anyhow::Result<()> {
    for line in target.unread(client)? {
        println!("{line}");
    }
    let current = match target {
        Target::Contact(id) => Some(id),
        Target::Group(_) => None,
    };
    for c in client.profile().contacts()? {
        let shown = others.entry(c.id).or_insert(0);
        if Some(c.id) != current && c.unread > *shown {
            println!(
                "* {} unread from {} (`pigeon read {}`)",
                c.unread,
                safe(&c.name),
                crate::user_cmd::shell_word(&c.name)
            );
        }
        *shown = c.unread;
    }
    Ok(())
}
