//! NATS JetStream under the relay benchmark's load (filled in by `--vs-nats`).
//!
//! The server is Debian's `nats-server`, started here as a child process on a free loopback
//! port with JetStream on and file storage in a temporary directory
//! ([`pigeon_store_nats::NatsServer`]); it is killed (and waited for) when dropped, so on
//! every exit path.
//!
//! What the comparison sets up, and how it mirrors `pigeon bench relay`:
//!
//! - **One stream** `PIGEON`: file storage, one replica, subjects `mbx.*`, **work-queue
//!   retention**: a message is deleted once a consumer acks it, which is what the relay does
//!   with a mailbox message after the recipient's ack (limits retention would keep every
//!   message on disk and only trim by size or age).
//! - **Durability.** JetStream's file store writes each message to the block file (the OS page
//!   cache) before the publish ack, but fsyncs only on its sync interval, by default every
//!   2 minutes, which is not durable per message the way the relay's group-commit fsync is.
//!   The server is therefore started from a config file with `jetstream { sync_interval:
//!   always }`, which fsyncs every write before the ack. That setting exists from nats-server
//!   2.10 on; older servers (Debian bookworm ships 2.9.10) reject it, and there the config is
//!   tested first with `nats-server -t`, the setting is dropped and a note goes to stderr: on
//!   such a server the NATS figure is for page-cache durability only and flatters NATS.
//! - **Load shape.** `mailboxes` subjects `mbx.<i>`; `connections` publisher connections, each
//!   keeping `window` JetStream publishes in flight (the publish returns a future of the
//!   `PubAck`; a `VecDeque` of them is kept and the oldest awaited when the window is full),
//!   1 KiB payloads, publisher `i` sending round-robin to the mailboxes `j` with
//!   `j % connections == i`. No `Nats-Msg-Id` header is set, so JetStream does no
//!   de-duplication work.
//! - **Receivers.** `connections` receiver connections; receiver `r` owns the mailboxes `j`
//!   with `j % connections == r` and has one durable pull consumer per mailbox (filter subject
//!   `mbx.<j>`, explicit ack), as the relay has one subscription per mailbox; filter lists
//!   (several subjects per consumer) only exist from 2.10 on. Every message is acked with a
//!   plain ack, not a double ack: the relay's receiver does not wait for its ack to be
//!   confirmed either.
//! - **Measurement.** Warm up for 2 s, then count the messages the consumers receive during
//!   `measure`; the result is received messages per second. Then everything stops by itself.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use pigeon_store_nats::NatsServer;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MSG_SIZE: usize = 1024;
const STREAM: &str = "PIGEON";
const WARMUP: Duration = Duration::from_secs(2);

/// Subjects (mailboxes) owned by connection `i` of `n`.
fn share(mailboxes: usize, n: usize, i: usize) -> Vec<String> {
    (0..mailboxes)
        .filter(|j| j % n == i)
        .map(|j| format!("mbx.{j}"))
        .collect()
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Runs the comparison load against a JetStream server this function starts; returns msg/s.
pub(crate) async fn run(
    measure: Duration,
    mailboxes: usize,
    connections: usize,
    window: usize,
) -> anyhow::Result<f64> {
    anyhow::ensure!(
        mailboxes > 0 && connections > 0 && window > 0,
        "mailboxes, connections and window must be positive"
    );
    let connections = connections.min(mailboxes);
    let server = NatsServer::start().await?;
    eprintln!(
        "NATS: {} (file store, 1 replica, work queue, {}) for {} s …",
        server.version,
        if server.sync_always {
            "sync_interval: always"
        } else {
            "no per-message fsync: this server has no sync_interval setting, its store fsyncs \
             every 2 min, so its figure is for page-cache durability only"
        },
        measure.as_secs()
    );
    let admin = jetstream::new(connect(&server.url).await?);
    let js_stream = admin
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["mbx.*".to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("cannot create the JetStream stream")?;

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));

    // Receivers first, so that nothing published waits for a consumer to exist.
    let mut recv_tasks = Vec::new();
    for r in 0..connections {
        let client = connect(&server.url).await?;
        let js = jetstream::new(client);
        let js_stream = js.get_stream(STREAM).await?;
        let mut feeds = Vec::new();
        for subject in share(mailboxes, connections, r) {
            let name = subject.replace('.', "-");
            let c = js_stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(name),
                    filter_subject: subject,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                })
                .await
                .context("cannot create a pull consumer")?;
            feeds.push(c.messages().await?);
        }
        let mut feed = futures_util::stream::select_all(feeds);
        let stop = Arc::clone(&stop);
        let measuring = Arc::clone(&measuring);
        let received = Arc::clone(&received);
        let errors = Arc::clone(&errors);
        recv_tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(200), feed.next()).await;
                let Ok(Some(item)) = next else {
                    continue;
                };
                let msg = match item {
                    Ok(msg) => msg,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if measuring.load(Ordering::Relaxed) {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                msg.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
            anyhow::Ok(())
        }));
    }
    drop(js_stream);

    let mut send_tasks = Vec::new();
    for i in 0..connections {
        let client = connect(&server.url).await?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(30))
            .max_ack_inflight(window)
            .build(client);
        let subjects = share(mailboxes, connections, i);
        let stop = Arc::clone(&stop);
        send_tasks.push(tokio::spawn(async move {
            let mut inflight = VecDeque::with_capacity(window);
            let mut n: usize = 0;
            let mut payload = vec![0x5a; MSG_SIZE];
            while !stop.load(Ordering::Relaxed) {
                if inflight.len() >= window {
                    let ack: jetstream::context::PublishAckFuture =
                        inflight.pop_front().context("window")?;
                    ack.await.context("JetStream publish ack")?;
                }
                payload[..8].copy_from_slice(&u64::try_from(n).unwrap_or_default().to_le_bytes());
                let subject = subjects[n % subjects.len()].clone();
                let ack = js
                    .publish(subject, bytes::Bytes::from(payload.clone()))
                    .await
                    .context("JetStream publish")?;
                inflight.push_back(ack);
                n += 1;
            }
            for ack in inflight {
                ack.await.context("JetStream publish ack")?;
            }
            anyhow::Ok(n)
        }));
    }

    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let count = received.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for t in send_tasks {
        published += t.await??;
    }
    for t in recv_tasks {
        t.await??;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("NATS: {errors} consumer stream errors (skipped)");
    }
    eprintln!("NATS: published {published} in all, received {count} while measuring");
    drop(admin);
    drop(server);
    Ok(count as f64 / elapsed.as_secs_f64())
}
