//! `pigeon bench client`: what end-to-end encryption and the encrypted profile cost.
//!
//! 1. MLS encrypt + decrypt of one 1:1 text message (X-Wing suite), in memory: the pure
//!    cryptographic cost.
//! 2. The same through two SQLCipher profiles, in the conversation's log: compose (encrypt,
//!    queue, one transaction with fsync) and receive (place in the log, decrypt, record, one
//!    transaction with fsync), and receive when a relay's push of 100 is recorded in one
//!    transaction.
//! 3. Invitation to first message read, on loopback with a real relay process: invite, accept
//!    (the conversation of two starts on a log), the inviter takes the Welcome and answers, the
//!    first text arrives.
//! 4. Profile size after 10,000 received messages.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use pigeon_client::profile::{DB_FILE, OutboxItem};
use pigeon_client::{Client, ClientEvent, Handled, Invite, OwnedMailbox, Passphrase, Profile};
use pigeon_e2ee::MemoryProvider as Provider;
use pigeon_e2ee::content::{Text, body::Body};
use pigeon_e2ee::{Content, Group, Identity, Suite};
use std::path::Path;
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench client`.
#[derive(clap::Args, Debug)]
pub(crate) struct ClientBenchArgs {
    /// Messages for the per-message figures.
    #[arg(long, default_value_t = 2000)]
    messages: u32,
    /// Invitation rounds for the latency figure.
    #[arg(long, default_value_t = 20)]
    invites: u32,
    /// Messages received for the profile-size figure.
    #[arg(long, default_value_t = 10_000)]
    size_messages: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn text(i: u32) -> Content {
    Content {
        id: i.to_be_bytes().repeat(4),
        sent_at_ms: 0,
        body: Some(Body::Text(Text {
            text: format!("benchmark message {i}, about as long as a chat line"),
        })),
    }
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn mls_in_memory(n: u32) -> anyhow::Result<Histogram<u64>> {
    let (ap, bp) = (Provider::new()?, Provider::new()?);
    let (ai, bi) = (Identity::generate(&ap)?, Identity::generate(&bp)?);
    let kp = bi.key_package(&bp, Suite::XWing)?;
    let (mut a, welcome) = Group::start(&ap, &ai, Suite::XWing, &kp, bi.public_key())?;
    let mut b = Group::join(&bp, &welcome)?;
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..n {
        let t = Instant::now();
        let ct = a.seal(&ap, &ai, &text(i))?;
        b.open(&bp, &ct)?;
        h.record(u64::try_from(t.elapsed().as_nanos())?)?;
    }
    Ok(h)
}

fn relay_link() -> anyhow::Result<pigeon_transport::RelayLink> {
    Ok(pigeon_transport::RelayLink::new(
        [7; 32],
        vec!["tcp://127.0.0.1:9".parse()?],
        None,
    )?)
}

/// The conversation's log, in memory: each post takes the next position.
#[derive(Default)]
struct Log {
    next: u64,
}

impl Log {
    /// Takes everything `from` queued: a mailbox item goes to `to`; a log post gets its
    /// position and goes to both (the poster reads its own posts back to confirm them).
    /// Returns how many log posts there were.
    fn hand_over(&mut self, from: &Profile, to: &Profile) -> anyhow::Result<usize> {
        let items: Vec<OutboxItem> = from.outbox()?;
        let mut posts = 0;
        for item in &items {
            if to.is_log(&item.mailbox)? {
                self.next += 1;
                posts += 1;
                let entry = [(
                    self.next,
                    item.message_id.as_slice(),
                    item.payload.as_slice(),
                )];
                for reader in [to, from] {
                    for h in reader.handle_log_deliveries(&item.mailbox, &entry)? {
                        if let Handled::Dropped(r) = h {
                            anyhow::bail!("a message was dropped: {r}");
                        }
                    }
                }
            } else if let Handled::Dropped(r) =
                to.handle_delivery(&item.mailbox, &item.message_id, &item.payload)?
            {
                anyhow::bail!("a message was dropped: {r}");
            }
            from.sent(item.id)?;
        }
        Ok(posts)
    }
}

/// Two profiles joined through an invitation, without a relay (outboxes handed over).
fn profile_pair(dir: &Path) -> anyhow::Result<(Profile, Profile, pigeon_client::ContactId, Log)> {
    let pass = || Passphrase::new("bench".to_owned());
    let alice = Profile::create(&dir.join("alice"), &pass(), "alice", &relay_link()?)?;
    let bob = Profile::create(&dir.join("bob"), &pass(), "bob", &relay_link()?)?;
    let prepared = alice.prepare_invite(&alice.relay()?)?;
    let invite = Invite::parse(&prepared.invite.to_link()?)?;
    let log = OwnedMailbox::generate()?;
    bob.start_conversation(
        &invite,
        Suite::XWing,
        &prepared.key_packages[0],
        &log,
        &bob.relay()?,
        None,
    )?;
    let mut wire = Log::default();
    wire.hand_over(&bob, &alice)?;
    let id = alice.find_contact("bob")?.id;
    Ok((alice, bob, id, wire))
}

fn profiles(n: u32) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let dir = tempfile::tempdir()?;
    let (alice, bob, id, mut wire) = profile_pair(dir.path())?;
    let (mut compose, mut receive) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for i in 0..n {
        let t = Instant::now();
        alice.compose(
            id,
            &format!("benchmark message {i}, about as long as a chat line"),
        )?;
        compose.record(u64::try_from(t.elapsed().as_nanos())?)?;
        // The text, and now and then a key refresh queued with it.
        for item in alice.outbox()? {
            wire.next += 1;
            let entry = [(
                wire.next,
                item.message_id.as_slice(),
                item.payload.as_slice(),
            )];
            let t = Instant::now();
            let handled = bob.handle_log_deliveries(&item.mailbox, &entry)?;
            if matches!(handled.as_slice(), [Handled::Message { .. }]) {
                receive.record(u64::try_from(t.elapsed().as_nanos())?)?;
            }
            anyhow::ensure!(
                !handled.iter().any(|h| matches!(h, Handled::Dropped(_))),
                "{handled:?}"
            );
            alice.handle_log_deliveries(&item.mailbox, &entry)?;
            alice.sent(item.id)?;
        }
    }
    Ok((compose, receive))
}

/// Receive cost per message when a push of 100 is recorded in one transaction.
fn batched_receive(n: u32) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let (alice, bob, id, mut wire) = profile_pair(dir.path())?;
    let mut total = Duration::ZERO;
    let mut count = 0u32;
    for chunk in 0..n.div_ceil(100) {
        for i in 0..100 {
            alice.compose(id, &format!("benchmark message {chunk}/{i}"))?;
        }
        let items = alice.outbox()?;
        let log = items.first().context("queued")?.mailbox;
        let first = wire.next + 1;
        let batch: Vec<(u64, &[u8], &[u8])> = items
            .iter()
            .zip(first..)
            .map(|(i, seq)| (seq, i.message_id.as_slice(), i.payload.as_slice()))
            .collect();
        wire.next += items.len() as u64;
        let t = Instant::now();
        let handled = bob.handle_log_deliveries(&log, &batch)?;
        total += t.elapsed();
        count += u32::try_from(
            handled
                .iter()
                .filter(|h| matches!(h, Handled::Message { .. }))
                .count(),
        )?;
        alice.handle_log_deliveries(&log, &batch)?;
        for item in &items {
            alice.sent(item.id)?;
        }
    }
    Ok(total.as_secs_f64() * 1e6 / f64::from(count.max(1)))
}

fn db_size(n: u32) -> anyhow::Result<(u64, u64)> {
    let dir = tempfile::tempdir()?;
    let (alice, bob, id, mut wire) = profile_pair(dir.path())?;
    for i in 0..n {
        alice.compose(
            id,
            &format!("benchmark message {i}, about as long as a chat line"),
        )?;
        if i % 100 == 99 {
            wire.hand_over(&alice, &bob)?;
        }
    }
    wire.hand_over(&alice, &bob)?;
    let size = |p: &Profile| std::fs::metadata(p.dir().join(DB_FILE)).map(|m| m.len());
    Ok((size(&alice)?, size(&bob)?))
}

async fn wait_for(
    client: &mut Client,
    mut pred: impl FnMut(&ClientEvent) -> bool,
) -> anyhow::Result<()> {
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(10), client.next_events())
            .await
            .context("timed out")??
            .context("session closed")?;
        client.flush(false).await?;
        if batch.iter().any(&mut pred) {
            return Ok(());
        }
    }
}

async fn invite_latency(rounds: u32) -> anyhow::Result<Histogram<u64>> {
    let dir = tempfile::tempdir()?;
    let relay = RelayProcess::start(&dir.path().join("relay"), &[])?;
    let pass = || Passphrase::new("bench".to_owned());
    let mut alice = Client::new(
        Profile::create(&dir.path().join("alice"), &pass(), "alice", &relay.link)?,
        Duration::from_secs(10),
    );
    let mut bob = Client::new(
        Profile::create(&dir.path().join("bob"), &pass(), "bob", &relay.link)?,
        Duration::from_secs(10),
    );
    let mut h = Histogram::<u64>::new(3)?;
    for round in 0..rounds {
        let t = Instant::now();
        let link = alice.invite().await?;
        alice.subscribe_all().await?;
        let (contact, _) = bob.accept(&link, Some(&format!("alice {round}"))).await?;
        wait_for(&mut alice, |e| matches!(e, ClientEvent::NewContact(_))).await?;
        let peer = alice
            .profile()
            .contacts()?
            .into_iter()
            .max_by_key(|c| c.id)
            .context("no contact")?;
        alice.send(&peer.name, "first message").await?;
        bob.subscribe_all().await?;
        wait_for(
            &mut bob,
            |e| matches!(e, ClientEvent::Message(m) if m.contact_id == contact.id),
        )
        .await?;
        h.record(u64::try_from(t.elapsed().as_nanos())?)?;
    }
    drop((alice, bob));
    relay.stop()?;
    Ok(h)
}

pub(crate) async fn run(args: ClientBenchArgs) -> anyhow::Result<()> {
    let mem = mls_in_memory(args.messages)?;
    let (compose, receive) = profiles(args.messages)?;
    let batched = batched_receive(args.messages)?;
    let invite = invite_latency(args.invites).await?;
    let (alice_bytes, bob_bytes) = db_size(args.size_messages)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "machine": crate::bench::machine(),
                "mls_seal_open_us": { "mean": mem.mean() / 1000.0, "p50": micros(&mem, 0.5), "p99": micros(&mem, 0.99) },
                "profile_compose_us": { "mean": compose.mean() / 1000.0, "p50": micros(&compose, 0.5), "p99": micros(&compose, 0.99) },
                "profile_receive_us": { "mean": receive.mean() / 1000.0, "p50": micros(&receive, 0.5), "p99": micros(&receive, 0.99) },
                "profile_receive_batched_us": batched,
                "invite_to_first_message_ms": { "p50": micros(&invite, 0.5) / 1000.0, "max": invite.max() as f64 / 1e6 },
                "profile_bytes": { "messages": args.size_messages, "sender": alice_bytes, "receiver": bob_bytes },
            })
        );
        return Ok(());
    }
    println!("machine: {}", crate::bench::machine());
    println!(
        "MLS (X-Wing) encrypt + decrypt, 1:1 text, in memory ({} msgs): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
        args.messages,
        mem.mean() / 1000.0,
        micros(&mem, 0.5),
        micros(&mem, 0.99)
    );
    println!(
        "through SQLCipher profiles, one fsynced transaction each: compose mean {:.0} µs (p99 {:.0}), receive mean {:.0} µs (p99 {:.0})",
        compose.mean() / 1000.0,
        micros(&compose, 0.99),
        receive.mean() / 1000.0,
        micros(&receive, 0.99)
    );
    println!("receiving a push of 100 in one transaction: {batched:.0} µs per message");
    println!(
        "invitation to first message read, loopback relay ({} rounds): p50 {:.1} ms, max {:.1} ms",
        args.invites,
        micros(&invite, 0.5) / 1000.0,
        invite.max() as f64 / 1e6
    );
    println!(
        "profile size after {} messages: sender {:.2} MiB, receiver {:.2} MiB ({:.0} B per message received)",
        args.size_messages,
        alice_bytes as f64 / 1_048_576.0,
        bob_bytes as f64 / 1_048_576.0,
        bob_bytes as f64 / f64::from(args.size_messages)
    );
    Ok(())
}
