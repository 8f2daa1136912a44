//! `pigeon bench group`: what a group of N devices costs (issue #14).
//!
//! 1. In one process, X-Wing, each device's MLS state kept as the client keeps it (SQLite
//!    through the client's codec; the database in memory and without SQLCipher's page
//!    encryption, so neither the disk nor AES is measured): a group of N devices built with one
//!    batch add (by default then lived in: a device under each subtree beside the admin's
//!    path commits, as a device new to a large group does with its first message; `--fresh`
//!    measures right after the add), then, at N, the time to create an add, a remove and a
//!    key-refresh commit (admin side) and to process each (another member's side), their sizes
//!    and the Welcome's, and one message's encrypt and decrypt.
//! 2. Fan-out on a real relay child process: N connections subscribed to one group log; the
//!    time from one post until its push has reached every one of them.

use crate::relay_proc::RelayProcess;
use hdrhistogram::Histogram;
use pigeon_client::{OwnedMailbox, RelayConnection};
use pigeon_e2ee::content::{Text, body::Body};
use pigeon_e2ee::{Change, Content, Group, Identity, Opened, Roster, RosterEntry, Suite};
use std::time::{Duration, Instant};

/// Arguments of `pigeon bench group`.
#[derive(clap::Args, Debug)]
pub(crate) struct GroupBenchArgs {
    /// Devices in the group (2 to 10,000).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Rounds of each commit measured (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Posts whose fan-out is timed.
    #[arg(long, default_value_t = 50)]
    posts: usize,
    /// Measure right after one batch add, before any device has committed: TreeKEM's inner
    /// nodes have no keys yet, so a commit encrypts to every device, one by one (the worst
    /// case). By default the group is measured as it is once people have talked in it: a
    /// device new to a group of 32 or more refreshes its keys with its first message, which
    /// fills its path; here one device under each subtree beside the admin's path has done so,
    /// and a commit encrypts to about log2(N) keys.
    #[arg(long)]
    fresh: bool,
    /// The default tree (a group people have talked in); kept so older commands still run.
    #[arg(long, hide = true, conflicts_with = "fresh")]
    steady: bool,
    /// Skip the fan-out phase (no relay process).
    #[arg(long)]
    skip_fanout: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A device as a client keeps one: its MLS state stored through the client's codec in SQLite
/// (a database in memory and unencrypted: what encoding and storing the state costs, not the
/// disk's time nor SQLCipher's).
struct Device {
    crypto: pigeon_e2ee::CryptoProvider,
    conn: rusqlite::Connection,
    identity: Identity,
}

impl Device {
    fn new() -> anyhow::Result<Self> {
        let crypto = pigeon_e2ee::crypto()?;
        let conn = pigeon_client::memory_state()?;
        let identity = Identity::generate(&pigeon_e2ee::Provider::new(
            &crypto,
            pigeon_client::StateStorage::new(&conn),
        ))?;
        Ok(Self {
            crypto,
            conn,
            identity,
        })
    }

    fn mls(&self) -> pigeon_e2ee::Provider<'_, pigeon_client::StateStorage<'_>> {
        pigeon_e2ee::Provider::new(&self.crypto, pigeon_client::StateStorage::new(&self.conn))
    }

    fn entry(&self, i: usize, admin: bool) -> RosterEntry {
        let mut person = vec![0u8; 16];
        person[..8].copy_from_slice(&(i as u64).to_be_bytes());
        RosterEntry {
            key: self.identity.public_key().to_vec(),
            person,
            name: format!("member {i}"),
            device: String::new(),
            admin,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn text(i: usize) -> Content {
    let mut id = vec![0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Content {
        id,
        sent_at_ms: 0,
        body: Some(Body::Text(Text {
            text: format!("benchmark message {i}, about as long as a chat line"),
        })),
    }
}

struct Costs {
    build_s: f64,
    /// The first add commit: the committer's provider has prepared none of the keys it
    /// encrypts to yet (later commits to the same devices find them prepared).
    first_commit_ms: f64,
    add_ms: f64,
    remove_ms: f64,
    update_ms: f64,
    process_ms: f64,
    commit_bytes: usize,
    welcome_bytes: usize,
    encrypt_us: f64,
    decrypt_us: f64,
}

fn costs(members: usize, rounds: usize, steady: bool) -> anyhow::Result<Costs> {
    let started = Instant::now();
    let admin = Device::new()?;
    let roster = Roster {
        name: "bench".to_owned(),
        members: vec![admin.entry(0, true)],
        direct: false,
        devices: false,
    };
    let mut a = Group::create(&admin.mls(), &admin.identity, Suite::XWing, &roster)?;
    let other = Device::new()?;
    let mut adds = vec![(
        other.identity.key_package(&other.mls(), Suite::XWing)?,
        other.entry(1, false),
    )];
    // Leaves 2, 4, 8, …: one device under each subtree beside the admin's path. Their own
    // commits fill the tree's nodes the admin encrypts to, as members' regular key refreshes
    // do in a group that lives for a while.
    let mut fillers = Vec::new();
    for i in 2..members {
        let d = Device::new()?;
        adds.push((
            d.identity.key_package(&d.mls(), Suite::XWing)?,
            d.entry(i, false),
        ));
        if i.is_power_of_two() && steady {
            fillers.push(d);
        }
    }
    let built = a.commit(&admin.mls(), &admin.identity, Change::AddMany(adds))?;
    a.merge_pending(&admin.mls())?;
    let welcome = built.welcome.ok_or_else(|| anyhow::anyhow!("no welcome"))?;
    let mut b = Group::join_group(&other.mls(), &welcome)?;
    let build_s = started.elapsed().as_secs_f64();
    if steady {
        let mut groups = fillers
            .iter()
            .map(|d| Group::join_group(&d.mls(), &welcome))
            .collect::<Result<Vec<_>, _>>()?;
        // B (leaf 1) refreshes too.
        let c = b.commit(&other.mls(), &other.identity, Change::Update)?;
        b.merge_pending(&other.mls())?;
        a.open(&admin.mls(), &c.commit)?;
        for (g, d) in groups.iter_mut().zip(&fillers) {
            g.open(&d.mls(), &c.commit)?;
        }
        for k in 0..fillers.len() {
            let c = groups[k].commit(&fillers[k].mls(), &fillers[k].identity, Change::Update)?;
            groups[k].merge_pending(&fillers[k].mls())?;
            a.open(&admin.mls(), &c.commit)?;
            b.open(&other.mls(), &c.commit)?;
            for j in 0..fillers.len() {
                if j != k {
                    groups[j].open(&fillers[j].mls(), &c.commit)?;
                }
            }
        }
    }
    let (mut add, mut remove, mut update, mut process) = (vec![], vec![], vec![], vec![]);
    let (mut commit_bytes, mut welcome_bytes) = (0, 0);
    let mut apply = |a: &mut Group, b: &mut Group, commit: &[u8]| -> anyhow::Result<()> {
        a.merge_pending(&admin.mls())?;
        let t = Instant::now();
        let opened = b.open(&other.mls(), commit)?;
        process.push(ms(t.elapsed()));
        anyhow::ensure!(matches!(opened, Opened::Commit { .. }), "not a commit");
        Ok(())
    };
    for r in 0..rounds {
        let newcomer = Device::new()?;
        let kp = newcomer
            .identity
            .key_package(&newcomer.mls(), Suite::XWing)?;
        let t = Instant::now();
        let c = a.commit(
            &admin.mls(),
            &admin.identity,
            Change::Add {
                key_package: kp,
                entry: newcomer.entry(members + r, false),
            },
        )?;
        add.push(ms(t.elapsed()));
        welcome_bytes = c.welcome.as_ref().map_or(0, Vec::len);
        apply(&mut a, &mut b, &c.commit)?;
        let t = Instant::now();
        let c = a.commit(
            &admin.mls(),
            &admin.identity,
            Change::Remove {
                keys: vec![newcomer.identity.public_key().to_vec()],
            },
        )?;
        remove.push(ms(t.elapsed()));
        apply(&mut a, &mut b, &c.commit)?;
        let t = Instant::now();
        let c = a.commit(&admin.mls(), &admin.identity, Change::Update)?;
        update.push(ms(t.elapsed()));
        commit_bytes = c.commit.len();
        apply(&mut a, &mut b, &c.commit)?;
    }
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let t = Instant::now();
        let ct = a.seal(&admin.mls(), &admin.identity, &text(i))?;
        enc.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        b.open(&other.mls(), &ct)?;
        dec.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Costs {
        build_s,
        first_commit_ms: add.first().copied().unwrap_or(f64::NAN),
        add_ms: crate::bench::median(add),
        remove_ms: crate::bench::median(remove),
        update_ms: crate::bench::median(update),
        process_ms: crate::bench::median(process),
        commit_bytes,
        welcome_bytes,
        encrypt_us: crate::bench::median(enc),
        decrypt_us: crate::bench::median(dec),
    })
}

/// p50 and p99 of the time from a post to its push on the last of `n` subscribers.
async fn fanout(n: usize, posts: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let relay = RelayProcess::start_for_load(dir.path(), &["--max-connections", "19000"])?;
    let timeout = Duration::from_secs(20);
    let log = OwnedMailbox::generate()?;
    // One dialer for every connection (each connect on its own would build a TLS context).
    let dialer = pigeon_client::transports()?;
    let poster = RelayConnection::connect_with(&dialer, &relay.link, timeout).await?;
    poster.create_log(&log.key, &log.id, log.cap_hash()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = RelayConnection::connect_with(&dialer, &relay.link, timeout).await?;
        conn.subscribe_log(&log.id, &log.sender_cap, 0).await?;
        let mut events = conn.take_events();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let pigeon_client::Event::Push(p) = event {
                    let now = Instant::now();
                    for d in p.deliveries {
                        let _ = tx.send((d.seq, now));
                    }
                }
            }
        });
        conns.push(conn);
    }
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..posts {
        let started = Instant::now();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let sent = poster
            .send(&log.id, &log.sender_cap, id, vec![7u8; 1024])
            .await?;
        let mut reached = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while reached < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((seq, at))) if seq == sent.seq => {
                    reached += 1;
                    if reached == n {
                        h.record(u64::try_from(at.duration_since(started).as_micros())?)?;
                    }
                }
                Ok(Some(_)) => {}
                _ => anyhow::bail!("post {i} reached {reached} of {n} subscribers in 30 s"),
            }
        }
        for c in &conns {
            // Logs keep messages; acks only free each subscription's push window.
            let _ = c.ack(&log.id, vec![sent.seq]).await;
        }
    }
    drop(conns);
    relay.stop()?;
    Ok((
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

pub(crate) async fn run(args: GroupBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=10_000).contains(&args.members),
        "--members must be 2 to 10,000"
    );
    let members = args.members;
    let rounds = args.rounds.max(1);
    let steady = !args.fresh;
    let c = tokio::task::spawn_blocking(move || costs(members, rounds, steady)).await??;
    let (fan50, fan99) = if args.skip_fanout {
        (f64::NAN, f64::NAN)
    } else {
        fanout(args.members, args.posts.max(1)).await?
    };
    if args.json {
        let num = |v: f64| {
            if v.is_finite() {
                serde_json::json!((v * 1000.0).round() / 1000.0)
            } else {
                serde_json::Value::Null
            }
        };
        println!(
            "{}",
            serde_json::json!({
                "members": args.members,
                "tree": if steady { "lived-in (a device under each subtree beside the committer's path has committed)" } else { "fresh (right after one batch add, no inner node keyed)" },
                "suite": "X-Wing (0x004D)",
                "build_group_s": num(c.build_s),
                "commit_add_ms": num(c.add_ms),
                "commit_first_ms": num(c.first_commit_ms),
                "commit_remove_ms": num(c.remove_ms),
                "commit_update_ms": num(c.update_ms),
                "process_commit_ms": num(c.process_ms),
                "commit_bytes": c.commit_bytes,
                "welcome_bytes": c.welcome_bytes,
                "encrypt_us": num(c.encrypt_us),
                "decrypt_us": num(c.decrypt_us),
                "fanout_p50_ms": num(fan50),
                "fanout_p99_ms": num(fan99),
                "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
            })
        );
    } else {
        println!(
            "group of {} devices, X-Wing (medians of {rounds})",
            args.members
        );
        println!("  built in {:.1} s (one batch add)", c.build_s);
        println!(
            "  tree: {}",
            if steady {
                "lived-in (a device under each subtree beside the admin's path has committed)"
            } else {
                "fresh (right after the batch add: every commit encrypts to every device)"
            }
        );
        println!(
            "  commit: add {:.1} ms, remove {:.1} ms, update {:.1} ms (the first add: {:.1} ms)",
            c.add_ms, c.remove_ms, c.update_ms, c.first_commit_ms
        );
        println!("  process a commit (other member): {:.1} ms", c.process_ms);
        println!(
            "  update commit {} B, Welcome {} B",
            c.commit_bytes, c.welcome_bytes
        );
        println!(
            "  message: encrypt {:.0} µs, decrypt {:.0} µs",
            c.encrypt_us, c.decrypt_us
        );
        println!(
            "  fan-out to {} subscribers: p50 {fan50:.1} ms, p99 {fan99:.1} ms",
            args.members
        );
    }
    Ok(())
}
