//! fjall or SQLite for the relay's embedded store: the same workload on both, measured.
//!
//! Workload: `MESSAGES` messages of 1 KiB over `MAILBOXES` mailboxes, appended by `PRODUCERS`
//! concurrent tasks (one message per append call, each awaited: a durable acknowledgement per
//! message), then all acknowledged by concurrent tasks (`ACK_CHUNK` sequence numbers per call).
//! Both backends de-duplicate by message id, assign sequence numbers in one writer thread and
//! group-commit with an fsync:
//! * fjall: [`FjallStore`] itself (journal `fdatasync` per round, rounds of up to 4096 ops);
//! * SQLite: a minimal store in this file: WAL, `synchronous=FULL`, one transaction per round
//!   of up to `SQLITE_BATCH` operations, a message row plus a de-duplication row per append,
//!   `DELETE` per acknowledged message.
//!
//! Run: `cargo run --release -p pigeon-store --example store_choice`
//! (`STORE_CHOICE_MESSAGES=20000` for a quick run, `STORE_CHOICE_ONLY=fjall|sqlite` for one). Each phase is bounded by a timeout.

use pigeon_store::{
    FjallStore, Limits, MailboxId, MailboxKind, MailboxRecord, MailboxStore, MessageId, NewMessage,
};
use std::collections::HashMap;
use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const MAILBOXES: u64 = 1_000;
const MESSAGE_LEN: usize = 1024;
const ACK_CHUNK: u64 = 32;
const SQLITE_BATCH: usize = 256;
const PHASE_LIMIT: Duration = Duration::from_secs(300);

type BoxError = Box<dyn Error + Send + Sync>;

/// What the benchmark needs from a backend.
trait Backend: Clone + Send + Sync + 'static {
    fn setup(&self, mailbox: MailboxId) -> impl Future<Output = Result<(), BoxError>> + Send;
    fn append_one(&self, m: NewMessage) -> impl Future<Output = Result<u64, BoxError>> + Send;
    fn ack(
        &self,
        mailbox: MailboxId,
        seqs: Vec<u64>,
    ) -> impl Future<Output = Result<u64, BoxError>> + Send;
}

impl Backend for FjallStore {
    async fn setup(&self, mailbox: MailboxId) -> Result<(), BoxError> {
        let record = MailboxRecord::new(MailboxKind::Inbox, [1; 32], [2; 32], 0);
        self.create_mailbox(mailbox, record).await?;
        Ok(())
    }

    async fn append_one(&self, m: NewMessage) -> Result<u64, BoxError> {
        let mut results = self.append(vec![m]).await;
        let appended = results.pop().ok_or("no result")??;
        Ok(appended.seq)
    }

    async fn ack(&self, mailbox: MailboxId, seqs: Vec<u64>) -> Result<u64, BoxError> {
        Ok(MailboxStore::ack(self, mailbox, seqs).await?)
    }
}

// ---- the SQLite contender ----

enum SqlOp {
    Create(MailboxId, oneshot::Sender<Result<(), String>>),
    Append(NewMessage, oneshot::Sender<Result<u64, String>>),
    Ack(MailboxId, Vec<u64>, oneshot::Sender<Result<u64, String>>),
}

#[derive(Clone)]
struct SqliteStore {
    tx: Arc<mpsc::Sender<SqlOp>>,
}

impl SqliteStore {
    fn open(path: &Path) -> Result<(Self, std::thread::JoinHandle<()>), BoxError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -65_536)?; // 64 MiB, as fjall's block cache
        conn.execute_batch(
            "CREATE TABLE mailboxes(id BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TABLE messages(mailbox BLOB NOT NULL, seq INTEGER NOT NULL,
                 message_id BLOB NOT NULL, received_at INTEGER NOT NULL, ciphertext BLOB NOT NULL,
                 PRIMARY KEY (mailbox, seq));
             CREATE TABLE dedup(mailbox BLOB NOT NULL, message_id BLOB NOT NULL,
                 seq INTEGER NOT NULL, received_at INTEGER NOT NULL,
                 PRIMARY KEY (mailbox, message_id)) WITHOUT ROWID;",
        )?;
        let (tx, rx) = mpsc::channel(8192);
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || sqlite_writer(conn, rx))?;
        Ok((Self { tx: Arc::new(tx) }, handle))
    }
}

fn sqlite_writer(mut conn: rusqlite::Connection, mut rx: mpsc::Receiver<SqlOp>) {
    let mut next_seq: HashMap<[u8; 32], u64> = HashMap::new();
    let mut ops = Vec::with_capacity(SQLITE_BATCH);
    while let Some(first) = rx.blocking_recv() {
        ops.push(first);
        while ops.len() < SQLITE_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let outcome = sqlite_round(&mut conn, &mut next_seq, &mut ops);
        for (op, result) in ops.drain(..).zip(outcome) {
            match (op, result) {
                (SqlOp::Create(_, reply), r) => drop(reply.send(r.map(|_| ()))),
                (SqlOp::Append(_, reply), r) => drop(reply.send(r)),
                (SqlOp::Ack(_, _, reply), r) => drop(reply.send(r)),
            }
        }
    }
}

/// One transaction for the whole round; one result per op (all failed if the commit failed).
fn sqlite_round(
    conn: &mut rusqlite::Connection,
    next_seq: &mut HashMap<[u8; 32], u64>,
    ops: &mut [SqlOp],
) -> Vec<Result<u64, String>> {
    let run = |conn: &mut rusqlite::Connection,
               next_seq: &mut HashMap<[u8; 32], u64>|
     -> rusqlite::Result<Vec<Result<u64, String>>> {
        let txn = conn.transaction()?;
        let mut results = Vec::with_capacity(ops.len());
        {
            let mut find =
                txn.prepare_cached("SELECT seq FROM dedup WHERE mailbox = ?1 AND message_id = ?2")?;
            let mut put_msg = txn.prepare_cached(
                "INSERT INTO messages(mailbox, seq, message_id, received_at, ciphertext)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut put_dedup = txn.prepare_cached(
                "INSERT INTO dedup(mailbox, message_id, seq, received_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut del =
                txn.prepare_cached("DELETE FROM messages WHERE mailbox = ?1 AND seq = ?2")?;
            let mut create =
                txn.prepare_cached("INSERT OR IGNORE INTO mailboxes(id) VALUES (?1)")?;
            for op in ops.iter() {
                match op {
                    SqlOp::Create(id, _) => {
                        create.execute([&id.0[..]])?;
                        next_seq.entry(id.0).or_insert(1);
                        results.push(Ok(0));
                    }
                    SqlOp::Append(m, _) => {
                        let Some(next) = next_seq.get_mut(&m.mailbox.0) else {
                            results.push(Err("no such mailbox".to_owned()));
                            continue;
                        };
                        let dup: Option<i64> = find
                            .query_row((&m.mailbox.0[..], &m.message_id.0[..]), |r| r.get(0))
                            .map(Some)
                            .or_else(|e| match e {
                                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                                e => Err(e),
                            })?;
                        if let Some(seq) = dup {
                            results.push(Ok(seq.unsigned_abs()));
                            continue;
                        }
                        let seq = *next;
                        *next += 1;
                        let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
                        let now = i64::try_from(m.now).unwrap_or(i64::MAX);
                        put_msg.execute((
                            &m.mailbox.0[..],
                            seq_i,
                            &m.message_id.0[..],
                            now,
                            &m.ciphertext[..],
                        ))?;
                        put_dedup.execute((&m.mailbox.0[..], &m.message_id.0[..], seq_i, now))?;
                        results.push(Ok(seq));
                    }
                    SqlOp::Ack(id, seqs, _) => {
                        let mut deleted = 0u64;
                        for &seq in seqs {
                            let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
                            deleted += del.execute((&id.0[..], seq_i))? as u64;
                        }
                        results.push(Ok(deleted));
                    }
                }
            }
        }
        txn.commit()?;
        Ok(results)
    };
    match run(conn, next_seq) {
        Ok(results) => results,
        Err(e) => ops.iter().map(|_| Err(e.to_string())).collect(),
    }
}

impl SqliteStore {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> SqlOp,
    ) -> Result<T, BoxError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| "writer gone")?;
        Ok(answer.await.map_err(|_| "writer gone")??)
    }
}

impl Backend for SqliteStore {
    async fn setup(&self, mailbox: MailboxId) -> Result<(), BoxError> {
        self.call(|reply| SqlOp::Create(mailbox, reply)).await
    }

    async fn append_one(&self, m: NewMessage) -> Result<u64, BoxError> {
        self.call(|reply| SqlOp::Append(m, reply)).await
    }

    async fn ack(&self, mailbox: MailboxId, seqs: Vec<u64>) -> Result<u64, BoxError> {
        self.call(|reply| SqlOp::Ack(mailbox, seqs, reply)).await
    }
}

// ---- the workload ----

/// Random-looking bytes (as real ids are) from a counter: splitmix64.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mailbox(k: u64) -> MailboxId {
    let mut raw = [0u8; 32];
    for (i, chunk) in raw.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(k * 4 + i as u64).to_be_bytes());
    }
    MailboxId(raw)
}

fn message_id(i: u64) -> MessageId {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&mix(i ^ 0x5555_5555).to_be_bytes());
    raw[8..].copy_from_slice(&i.to_be_bytes());
    MessageId(raw)
}

/// (append msgs/s, ack msgs/s)
async fn run<B: Backend>(store: B, messages: u64, producers: u64) -> Result<(f64, f64), BoxError> {
    for k in 0..MAILBOXES {
        store.setup(mailbox(k)).await?;
    }
    let payload: Arc<[u8]> = (0..MESSAGE_LEN)
        .map(|i| u8::try_from(i * 31 % 251).unwrap_or(0))
        .collect();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        let payload = Arc::clone(&payload);
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < messages {
                let mut ciphertext = payload.to_vec();
                ciphertext[..8].copy_from_slice(&i.to_le_bytes());
                let m = NewMessage {
                    mailbox: mailbox(i % MAILBOXES),
                    message_id: message_id(i),
                    ciphertext,
                    now: 1_000,
                    cap_hash: None,
                    first_attempt: true,
                };
                store.append_one(m).await?;
                i += producers;
            }
            Ok::<(), BoxError>(())
        }));
    }
    tokio::time::timeout(PHASE_LIMIT, async {
        for t in tasks {
            t.await??;
        }
        Ok::<(), BoxError>(())
    })
    .await
    .map_err(|_| "append phase over its time limit")??;
    let append_rate = messages as f64 / start.elapsed().as_secs_f64();

    // Every mailbox got messages / MAILBOXES (± 1) of seqs 1..; acknowledge them in chunks.
    let start = Instant::now();
    let mut tasks = Vec::new();
    let workers = producers.min(MAILBOXES);
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut deleted = 0u64;
            let mut k = w;
            while k < MAILBOXES {
                let held = messages / MAILBOXES + u64::from(k < messages % MAILBOXES);
                let mut seq = 1;
                while seq <= held {
                    let end = (seq + ACK_CHUNK).min(held + 1);
                    deleted += store.ack(mailbox(k), (seq..end).collect()).await?;
                    seq = end;
                }
                k += workers;
            }
            Ok::<u64, BoxError>(deleted)
        }));
    }
    let deleted = tokio::time::timeout(PHASE_LIMIT, async {
        let mut deleted = 0;
        for t in tasks {
            deleted += t.await??;
        }
        Ok::<u64, BoxError>(deleted)
    })
    .await
    .map_err(|_| "ack phase over its time limit")??;
    let ack_rate = deleted as f64 / start.elapsed().as_secs_f64();
    if deleted != messages {
        return Err(format!("acknowledged {deleted} of {messages} messages").into());
    }
    Ok((append_rate, ack_rate))
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".to_owned(), |s| s.trim().to_owned());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    format!("machine: nproc={cores} kernel={kernel} cpu={cpu}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let messages: u64 = std::env::var("STORE_CHOICE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let producers: u64 = std::env::var("STORE_CHOICE_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
        .max(1);
    println!("{}", machine());
    println!(
        "workload: {messages} x {MESSAGE_LEN} B messages, {MAILBOXES} mailboxes, \
         {producers} producers (1 message per durable append), acks of {ACK_CHUNK} seqs"
    );

    let only = std::env::var("STORE_CHOICE_ONLY").unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let limits = Limits {
        max_depth: 1_000_000,
        ..Limits::default()
    };
    if only.is_empty() || only == "fjall" {
        let fjall = FjallStore::open(&dir.path().join("fjall"), limits)?;
        let (append, ack) = run(fjall.clone(), messages, producers).await?;
        println!("fjall : append {append:>9.0} msg/s   ack {ack:>9.0} msg/s");
        drop(fjall);
    }
    if !(only.is_empty() || only == "sqlite") {
        return Ok(());
    }

    let (sqlite, handle) = SqliteStore::open(&dir.path().join("sqlite.db"))?;
    let (append, ack) = run(sqlite.clone(), messages, producers).await?;
    println!(
        "sqlite: append {append:>9.0} msg/s   ack {ack:>9.0} msg/s   (WAL, synchronous=FULL, \
         {SQLITE_BATCH} ops per transaction)"
    );
    drop(sqlite);
    // The writer stops once every sender is gone; wait off the runtime threads.
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| "sqlite writer panicked")?;
    Ok(())
}
