//! `pigeon demo`: a relay on an embedded store and two people, alice and bob, who meet through
//! an invitation and talk end-to-end encrypted (MLS, X-Wing post-quantum hybrid) through it;
//! then a group of three on a log on the same relay, in which alice removes carol.
//!
//! Everything is real: the relay is the `pigeon relay` binary in a child process on loopback,
//! the profiles are encrypted SQLite databases, and the clients are the same library the
//! `pigeon` commands use. The demo prints what each person read and what the relay held,
//! which is only mailbox ids and ciphertext sizes.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use pigeon_client::{Client, ClientEvent, FlushReport, Passphrase, Profile};
use std::time::{Duration, Instant};

/// Arguments of `pigeon demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the relay's data and both profiles here instead of a temporary directory.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Handles events (and posts what they queue) until one matches.
async fn wait_for(
    client: &mut Client,
    held: &mut Vec<([u8; 32], usize)>,
    what: &str,
    mut matches: impl FnMut(&ClientEvent) -> bool,
) -> anyhow::Result<ClientEvent> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let batch = tokio::time::timeout_at(deadline, client.next_events())
            .await
            .with_context(|| format!("{what} did not arrive within {TIMEOUT:?}"))??
            .with_context(|| format!("the relay session ended before {what} arrived"))?;
        record(held, client.flush(false).await?)?;
        if let Some(e) = batch.into_iter().find(&mut matches) {
            return Ok(e);
        }
    }
}

fn record(held: &mut Vec<([u8; 32], usize)>, report: FlushReport) -> anyhow::Result<()> {
    anyhow::ensure!(
        report.waiting == 0,
        "the relay did not take a message: {}",
        report.errors.join("; ")
    );
    held.extend(report.stored);
    Ok(())
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.data.unwrap_or_else(|| tmp.path().to_owned());
    println!(
        "Starting a relay on an embedded store in {}",
        dir.join("relay").display()
    );
    let relay = RelayProcess::start(&dir.join("relay"), &[])?;
    println!("Relay link: {}\n", relay.link);
    let pass = || Passphrase::new("demo passphrase".to_owned());
    let mut alice = Client::new(
        Profile::create(&dir.join("alice"), &pass(), "alice", &relay.link)?,
        TIMEOUT,
    );
    let mut bob = Client::new(
        Profile::create(&dir.join("bob"), &pass(), "bob", &relay.link)?,
        TIMEOUT,
    );
    println!(
        "alice and bob each have an encrypted profile (SQLCipher) under {}",
        dir.display()
    );
    let mut held = Vec::new();

    let started = Instant::now();
    let link = alice.invite().await?;
    println!("\nalice invites bob with a link (or its QR code):\n  {link}");
    alice.subscribe_all().await?;
    let (contact, report) = bob.accept(&link, None).await?;
    record(&mut held, report)?;
    println!(
        "bob accepts it: a conversation with {} ({})",
        contact.name,
        contact.suite.name()
    );
    wait_for(&mut alice, &mut held, "bob's acceptance", |e| {
        matches!(e, ClientEvent::NewContact(_))
    })
    .await?;
    // The conversation is a group of two on a log on bob's relay: both read it from here on.
    bob.subscribe_all().await?;

    let script = [
        (0, "Hi Bob, is this thing on?"),
        (1, "Loud and clear, Alice. The relay only sees ciphertext."),
        (0, "And if it crashes?"),
        (
            1,
            "Whatever it acknowledged is on disk; it delivers after a restart.",
        ),
    ];
    println!("\nTranscript:");
    let mut first_message = None;
    for (from, text) in script {
        let (sender, receiver, names) = if from == 0 {
            (&mut alice, &mut bob, ("alice", "bob"))
        } else {
            (&mut bob, &mut alice, ("bob", "alice"))
        };
        let (_, report) = sender.send(names.1, text).await?;
        record(&mut held, report)?;
        let got = wait_for(
            receiver,
            &mut held,
            "a message",
            |e| matches!(e, ClientEvent::Message(m) if m.text == text),
        )
        .await?;
        first_message.get_or_insert_with(|| started.elapsed());
        if let ClientEvent::Message(m) = got {
            println!("  {:>5} → {:<5} {}", names.0, names.1, m.text);
        }
    }
    // Let the last receipts land.
    let _ = tokio::time::timeout(Duration::from_millis(300), bob.next_events()).await;
    record(&mut held, alice.flush(true).await?)?;
    record(&mut held, bob.flush(true).await?)?;

    println!(
        "\nWhat the relay held (the Welcome in the invitation's one-time mailbox, deleted once \
         taken; then the conversation's log, which keeps ciphertext until it expires):"
    );
    for (mailbox, size) in &held {
        println!(
            "  {}…  {size:>5} bytes of ciphertext",
            hex::encode(&mailbox[..6])
        );
    }
    println!(
        "\n{} relay messages (the Welcome, texts, receipts); no names, no text.",
        held.len()
    );
    if let Some(t) = first_message {
        println!("From invitation to first message read: {t:.0?}.");
    }
    group_demo(&dir, &relay, &mut alice, &mut bob).await?;
    drop((alice, bob));
    relay.stop()?;
    Ok(())
}

/// Reads until nothing more arrives: every queued post goes out, every commit finds its place.
async fn settle(client: &mut Client) -> anyhow::Result<()> {
    for _ in 0..4 {
        let (_, report) = client.sync(Duration::from_millis(250), TIMEOUT).await?;
        anyhow::ensure!(
            report.waiting == 0,
            "the relay did not take a message: {}",
            report.errors.join("; ")
        );
        if !client.profile().has_pending_commits()? {
            break;
        }
    }
    Ok(())
}

/// A group: alice makes it, adds bob (her contact: the invitation travels inside their
/// conversation) and carol (by a one-time link); they talk; alice removes carol.
async fn group_demo(
    dir: &std::path::Path,
    relay: &RelayProcess,
    alice: &mut Client,
    bob: &mut Client,
) -> anyhow::Result<()> {
    let pass = Passphrase::new("demo passphrase".to_owned());
    let mut carol = Client::new(
        Profile::create(&dir.join("carol"), &pass, "carol", &relay.link)?,
        TIMEOUT,
    );
    println!(
        "
A group: alice creates \"book club\" (a log on the relay, an MLS group of one)"
    );
    alice.create_group("book club").await?;
    alice.group_add_contact("book club", "bob").await?;
    settle(bob).await?;
    settle(alice).await?;
    settle(bob).await?;
    println!("  alice adds bob, her contact: the invitation goes inside their conversation");
    let link = alice.group_invite("book club").await?;
    carol.join_group(&link).await?;
    println!("  carol accepts a one-time group link:\n    {link}");
    settle(alice).await?;
    for c in [&mut *bob, &mut carol] {
        settle(c).await?;
    }
    let script = [
        ("alice", "Welcome, both of you. Same order on every device."),
        (
            "bob",
            "Any of us can refresh the keys; two changes at once never fork us.",
        ),
        (
            "carol",
            "And the relay sees a random log id, not who is in here.",
        ),
    ];
    for (who, text) in script {
        let sender = match who {
            "alice" => &mut *alice,
            "bob" => &mut *bob,
            _ => &mut carol,
        };
        sender.send_group("book club", text).await?;
        settle(sender).await?;
    }
    for c in [&mut *alice, &mut *bob, &mut carol] {
        settle(c).await?;
    }
    alice
        .group_change("book club", pigeon_client::GroupChange::Remove("carol"))
        .await?;
    settle(alice).await?;
    for c in [&mut *bob, &mut carol] {
        settle(c).await?;
    }
    alice
        .send_group("book club", "Carol has left the book club.")
        .await?;
    settle(alice).await?;
    for c in [&mut *bob, &mut carol] {
        settle(c).await?;
    }
    for (name, c) in [("bob", &*bob), ("carol", &carol)] {
        let g = c.profile().find_group("book club")?;
        println!("\n{name}'s transcript of the group (log order; * marks notices):");
        for m in c.profile().group_history(g.id, 100)? {
            let who = if m.outgoing { name } else { m.sender.as_str() };
            if m.notice {
                println!("  * {}", m.text);
            } else {
                println!("  {who:>5}: {}", m.text);
            }
        }
    }
    let g = alice.profile().find_group("book club")?;
    println!(
        "\nThe group is at epoch {} with {} members; carol's device reads nothing sent after her removal.",
        g.epoch, g.members
    );
    Ok(())
}
