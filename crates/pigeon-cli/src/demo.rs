//! `pigeon demo`: a relay on an embedded store and two people exchanging messages through it.
//!
//! Until the end-to-end layer (MLS) lands, the demo seals each message with ChaCha20-Poly1305
//! under a key the two demo parties share in-process, standing in for the MLS group key: the
//! relay only ever sees ciphertext either way.

use crate::relay_proc::RelayProcess;
use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_proto::auth::random_bytes;
use std::time::{Duration, Instant};

/// Arguments of `pigeon demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the relay's data directory here instead of a temporary one.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
}

struct Person {
    name: &'static str,
    conn: RelayConnection,
    inbox: OwnedMailbox,
}

fn seal(key: &ChaCha20Poly1305, text: &str) -> anyhow::Result<Vec<u8>> {
    let nonce: [u8; 12] = random_bytes()?;
    let mut out = nonce.to_vec();
    out.extend(
        key.encrypt(Nonce::from_slice(&nonce), text.as_bytes())
            .map_err(|_| anyhow::anyhow!("encryption failed"))?,
    );
    Ok(out)
}

fn open(key: &ChaCha20Poly1305, ct: &[u8]) -> anyhow::Result<String> {
    anyhow::ensure!(ct.len() > 12, "ciphertext too short");
    let plain = key
        .decrypt(Nonce::from_slice(&ct[..12]), &ct[12..])
        .map_err(|_| anyhow::anyhow!("a message failed authentication"))?;
    Ok(String::from_utf8(plain)?)
}

async fn receive(
    person: &mut Person,
    key: &ChaCha20Poly1305,
) -> anyhow::Result<(String, usize, u64)> {
    let event = tokio::time::timeout(Duration::from_secs(10), person.conn.next_event())
        .await
        .context("no message arrived within 10 s")?;
    match event {
        Some(Event::Push(push)) => {
            let d = push.deliveries.first().context("empty push")?;
            let text = open(key, &d.ciphertext)?;
            person.conn.ack(&person.inbox.id, vec![d.seq]).await?;
            Ok((text, d.ciphertext.len(), d.seq))
        }
        other => anyhow::bail!("the relay closed the session: {other:?}"),
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.data.unwrap_or_else(|| tmp.path().join("relay"));
    println!("Starting a relay on an embedded store in {}", dir.display());
    let relay = RelayProcess::start(&dir, &[])?;
    println!("Relay link: {}\n", relay.link);
    let started = Instant::now();
    let mut people = Vec::new();
    for name in ["alice", "bob"] {
        let conn = RelayConnection::connect(&relay.link, Duration::from_secs(5)).await?;
        let inbox = OwnedMailbox::generate()?;
        conn.create_mailbox(&inbox.key, &inbox.id, inbox.cap_hash())
            .await?;
        conn.subscribe(&inbox.key, &inbox.id).await?;
        people.push(Person { name, conn, inbox });
    }
    let key = ChaCha20Poly1305::new(Key::from_slice(&random_bytes::<32>()?));
    let script = [
        (0, "Hi Bob, is this thing on?"),
        (1, "Loud and clear, Alice. The relay only sees ciphertext."),
        (0, "And if it crashes?"),
        (
            1,
            "Whatever it acknowledged is on disk; it delivers after a restart.",
        ),
    ];
    let mut held = Vec::new();
    println!("Transcript:");
    for (from, text) in script {
        let to = 1 - from;
        let ct = seal(&key, text)?;
        let (target, cap) = (people[to].inbox.id, people[to].inbox.sender_cap);
        let sent = people[from]
            .conn
            .send(&target, &cap, random_bytes()?, ct)
            .await?;
        let (got, size, seq) = receive(&mut people[to], &key).await?;
        anyhow::ensure!(got == text && seq == sent.seq, "message arrived altered");
        println!(
            "  {:>5} → {:<5} {}",
            people[from].name, people[to].name, got
        );
        held.push((target, size, seq));
    }
    println!("\nWhat the relay held (then deleted on acknowledgement):");
    for (mailbox, size, seq) in held {
        println!(
            "  mailbox {}…  seq {seq}  {size} bytes of ciphertext",
            hex::encode(&mailbox.0[..6])
        );
    }
    println!("\nFour messages in {:.0?}.", started.elapsed());
    drop(people);
    relay.stop()?;
    Ok(())
}
