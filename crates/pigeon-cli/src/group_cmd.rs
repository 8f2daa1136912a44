//! `pigeon group …` and `pigeon verify`: groups of any size, on a log their relay keeps.

use crate::qr;
use crate::user_cmd::{ProfileArg, open_client, open_profile, report_queued, safe, shell_word};
use pigeon_client::GroupChange;

/// `pigeon group`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// Create a group; you are its first member and admin.
    Create {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group's name.
        name: String,
    },
    /// List your groups.
    List {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Make a one-time invitation link (and QR code) to a group (admins).
    Invite {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
        /// Print only the link, without the QR code.
        #[arg(long)]
        no_qr: bool,
    },
    /// Add one of your contacts to a group (admins).
    Add {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
        /// The contact.
        contact: String,
    },
    /// Remove a member from a group (admins); their devices read nothing new.
    Remove {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
        /// The member's name.
        member: String,
    },
    /// Leave a group.
    Leave {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
    },
    /// List a group's members.
    Members {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
    },
    /// Make a member an admin (admins).
    Admin {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
        /// The member's name.
        member: String,
    },
    /// Rename a group (admins).
    Rename {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
        /// The new name.
        new_name: String,
    },
    /// Print a group's transcript in the group's order (the same on every member's device).
    History {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
        /// How many of the latest lines.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Refresh this device's keys in a group now (it also happens by itself).
    Rekey {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group.
        group: String,
    },
    /// Keep a copy of the group's log (a mirror) on another relay, or replace its mirror
    /// (admins): members who cannot reach the group's relay read and post through it.
    Mirror {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group, or a contact (your conversation with them).
        group: String,
        /// The relay's `pigeon://relay#…` link.
        relay: String,
    },
    /// Move the group's home to its mirror, when the group's relay is gone for good (admins).
    /// A member who can still reach the old relay and reads only there is left behind on it,
    /// so this asks for `--home-is-gone`.
    Move {
        #[command(flatten)]
        profile: ProfileArg,
        /// The group, or a contact (your conversation with them).
        group: String,
        /// Confirms that the group's relay is gone for everyone.
        #[arg(long)]
        home_is_gone: bool,
    },
}

/// `pigeon verify`.
#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// A contact, or a group (with MEMBER).
    name: String,
    /// A member of the group.
    member: Option<String>,
    /// Only this device of theirs (see `pigeon group members`; every device by default).
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Mark the member verified (after comparing the number with them, in person or by call).
    #[arg(long)]
    mark: bool,
}

pub(crate) async fn run(cmd: GroupCommand) -> anyhow::Result<u8> {
    match cmd {
        GroupCommand::Create { profile, name } => {
            let mut client = open_client(&profile)?;
            let g = client.create_group(name.trim()).await?;
            println!(
                "Created the group {}. Invite people with: pigeon group invite {}",
                safe(&g.name),
                shell_word(&g.name)
            );
            Ok(0)
        }
        GroupCommand::List { profile } => {
            let profile = open_profile(&profile)?;
            let groups = profile.groups()?;
            if groups.is_empty() {
                println!("No groups yet: `pigeon group create NAME` makes one.");
            }
            for g in groups {
                let mut line = format!(
                    "#{:<3} {:<24} {} member(s), epoch {}",
                    g.id,
                    safe(&g.name),
                    g.members,
                    g.epoch
                );
                if g.admin {
                    line.push_str(", you are admin");
                }
                if g.unread > 0 {
                    line.push_str(&format!(", {} unread", g.unread));
                }
                if g.state != "active" {
                    line.push_str(&format!(" ({})", g.state));
                }
                println!("{line}");
            }
            Ok(0)
        }
        GroupCommand::Invite {
            profile,
            group,
            no_qr,
        } => {
            let mut client = open_client(&profile)?;
            let link = client.group_invite(&group).await?;
            println!("{link}");
            if !no_qr {
                println!("{}", qr::render(&link)?);
            }
            eprintln!(
                "Share this link (or QR code) with one person, privately; it works once. \
                 They run `pigeon accept LINK`; your device adds them when it next reads \
                 (`pigeon read`)."
            );
            Ok(0)
        }
        GroupCommand::Add {
            profile,
            group,
            contact,
        } => {
            let mut client = open_client(&profile)?;
            client.group_add_contact(&group, &contact).await?;
            println!(
                "Invited {} to {}; they are added once their device answers and yours reads \
                 it (`pigeon read`).",
                safe(&contact),
                safe(&group)
            );
            Ok(0)
        }
        GroupCommand::Remove {
            profile,
            group,
            member,
        } => change(&profile, &group, GroupChange::Remove(&member)).await,
        GroupCommand::Admin {
            profile,
            group,
            member,
        } => change(&profile, &group, GroupChange::Promote(&member)).await,
        GroupCommand::Rename {
            profile,
            group,
            new_name,
        } => change(&profile, &group, GroupChange::Rename(&new_name)).await,
        GroupCommand::Rekey { profile, group } => {
            change(&profile, &group, GroupChange::Update).await
        }
        GroupCommand::Mirror {
            profile,
            group,
            relay,
        } => {
            let relay = pigeon_transport::RelayLink::parse(relay.trim())?;
            let mut client = open_client(&profile)?;
            let report = client.mirror_group(&group, &relay).await?;
            println!(
                "{} is kept on a second relay too: members who cannot reach its relay read and \
                 post through this one.",
                safe(&group)
            );
            Ok(report_queued(&report))
        }
        GroupCommand::Move {
            profile,
            group,
            home_is_gone,
        } => {
            if !home_is_gone {
                anyhow::bail!(
                    "moving a group's home is for a relay that is gone for everyone: a member \
                     who still reaches it would stay there, apart from the rest. If it is gone, \
                     run this again with --home-is-gone"
                );
            }
            let mut client = open_client(&profile)?;
            let report = client.move_group_home(&group).await?;
            settle(&mut client).await?;
            println!(
                "{} lives on its mirror from now on; members follow when they next read.",
                safe(&group)
            );
            Ok(report_queued(&report))
        }
        GroupCommand::Leave { profile, group } => {
            let mut client = open_client(&profile)?;
            let report = client.leave_group(&group).await?;
            settle(&mut client).await?;
            println!("You asked to leave {}.", safe(&group));
            Ok(report_queued(&report))
        }
        GroupCommand::History {
            profile,
            group,
            limit,
        } => {
            let profile = open_profile(&profile)?;
            // A group, or the conversation with a contact.
            let id = profile.conversation_or_group(&group)?;
            for m in profile.group_history(id, limit)? {
                println!("{}", crate::user_cmd::group_line(&m));
            }
            Ok(0)
        }
        GroupCommand::Members { profile, group } => {
            let profile = open_profile(&profile)?;
            let g = profile.find_group(&group)?;
            for m in profile.group_members(g.id)? {
                let mut line = safe(&m.name);
                if !m.device.is_empty() {
                    line.push_str(&format!(" ({})", safe(&m.device)));
                }
                if m.you {
                    line.push_str(" [you]");
                }
                if m.admin {
                    line.push_str(" [admin]");
                }
                if m.verified {
                    line.push_str(" [verified]");
                }
                println!("{line}");
            }
            Ok(0)
        }
    }
}

async fn change(profile: &ProfileArg, group: &str, change: GroupChange<'_>) -> anyhow::Result<u8> {
    let mut client = open_client(profile)?;
    let report = client.group_change(group, change).await?;
    // Read the log until the change has its place in the group's order.
    settle(&mut client).await?;
    let g = client.profile().find_group(group).or_else(|_| {
        // A rename changes the name the group is found by.
        match change {
            GroupChange::Rename(new) => client.profile().find_group(new),
            _ => Err(pigeon_client::ProfileError::NoContact(group.to_owned())),
        }
    })?;
    for line in client.profile().take_group_unread(Some(g.id))? {
        println!("{}", crate::user_cmd::group_line(&line));
    }
    Ok(report_queued(&report))
}

/// Syncs a few times while a commit of this device waits for the log's order.
async fn settle(client: &mut pigeon_client::Client) -> anyhow::Result<()> {
    let quiet = std::time::Duration::from_millis(300);
    for _ in 0..5 {
        client
            .sync(quiet, std::time::Duration::from_secs(10))
            .await?;
        if !client.profile().has_pending_commits()? {
            break;
        }
    }
    Ok(())
}

pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let profile = open_profile(&args.profile)?;
    let device = args.device.as_deref();
    let (group, numbers, place) = match &args.member {
        None => {
            let c = profile.find_contact(&args.name)?;
            let (group, numbers) = profile.contact_safety_numbers(c.id, device)?;
            (group, numbers, "your conversation".to_owned())
        }
        Some(member) => {
            let g = profile.find_group(&args.name)?;
            let numbers = profile.member_safety_numbers(g.id, member, device)?;
            (Some(g.id), numbers, safe(&g.name))
        }
    };
    anyhow::ensure!(
        !args.mark || numbers.len() == 1,
        "{} has {} devices: compare each number, and mark one at a time with --device",
        safe(&numbers[0].0.name),
        numbers.len()
    );
    let who = numbers[0].0.name.clone();
    for (m, number) in &numbers {
        let which = if numbers.len() > 1 || !m.device.is_empty() {
            format!(" ({})", safe(pigeon_client::device_label(&m.device)))
        } else {
            String::new()
        };
        println!(
            "Safety number with {}{which} in {}:\n\n  {}\n",
            safe(&m.name),
            place,
            number
        );
        if args.mark {
            match group {
                Some(g) => profile.mark_member_verified(g, m)?,
                None => profile.mark_verified(&m.key)?,
            }
            println!("Marked {}{which} verified.", safe(&m.name));
        } else if m.verified {
            println!("{}{which} is marked verified.", safe(&m.name));
        }
    }
    println!(
        "Compare it with the number {} sees for you (in person or on a call), on each of their \
         devices. If it matches, run this again with --mark. A key never changes in place: if \
         {} is removed and added again, or adds a device, the new key shows here unverified, \
         and the transcript says so.",
        safe(&who),
        safe(&who)
    );
    Ok(0)
}
