//! `pigeon relays`: the relays a profile makes invitations, conversations and groups on.

use anyhow::Context as _;
use pigeon_transport::RelayLink;

use crate::user_cmd::{ProfileArg, open_profile};

/// `pigeon relays …`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum RelaysCommand {
    /// Add a relay (a `pigeon://relay#…` link) after the others. Invitations, conversations
    /// and groups are made on the first relay that answers, so a blocked or vanished relay no
    /// longer stops you from starting new ones. A new link of a relay you have (its operator
    /// rotated a leaked secret) replaces the old one everywhere, conversations included.
    Add(RelaysLinkArgs),
    /// List the relays, first (preferred) first.
    List(RelaysListArgs),
    /// Remove a relay from the list (what already lives on it stays there).
    Remove(RelaysLinkArgs),
}

/// A relay link argument.
#[derive(clap::Args, Debug)]
pub(crate) struct RelaysLinkArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// The relay's link.
    link: String,
}

/// `pigeon relays list`.
#[derive(clap::Args, Debug)]
pub(crate) struct RelaysListArgs {
    #[command(flatten)]
    profile: ProfileArg,
}

fn label(link: &RelayLink) -> String {
    link.routes()
        .first()
        .map_or_else(|| "a relay without routes".to_owned(), |r| r.redacted())
}

/// Runs a `pigeon relays` command.
pub(crate) fn run(cmd: RelaysCommand) -> anyhow::Result<()> {
    match cmd {
        RelaysCommand::Add(args) => {
            let link = RelayLink::parse(args.link.trim()).context("not a relay link")?;
            let profile = open_profile(&args.profile)?;
            match profile.add_relay(&link)? {
                pigeon_client::RelayAdded::Added => println!(
                    "Added the relay at {}: new invitations, conversations and groups go to the \
                     first of your relays that answers.",
                    label(&link)
                ),
                pigeon_client::RelayAdded::Updated(n) => println!(
                    "A new link of a relay this profile has: {n} stored link(s) now point at {}.",
                    label(&link)
                ),
                pigeon_client::RelayAdded::AlreadyThere => {
                    println!("The relay at {} is already in this profile.", label(&link));
                }
            }
        }
        RelaysCommand::List(args) => {
            let profile = open_profile(&args.profile)?;
            for (i, link) in profile.relays()?.iter().enumerate() {
                let first = if i == 0 { " (first)" } else { "" };
                println!("{}{first}\n  {link}", label(link));
            }
        }
        RelaysCommand::Remove(args) => {
            let link = RelayLink::parse(args.link.trim()).context("not a relay link")?;
            let profile = open_profile(&args.profile)?;
            anyhow::ensure!(
                profile.remove_relay(&link)?,
                "that relay is not in this profile (`pigeon relays list` shows them)"
            );
            println!(
                "Removed the relay at {} from the list; conversations already on it stay there.",
                label(&link)
            );
        }
    }
    Ok(())
}
