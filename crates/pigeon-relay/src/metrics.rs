//! Relay metrics, exposed in the Prometheus text format.
//!
//! Plain atomics: the hot path pays one relaxed add per event. Nothing here is labelled by
//! mailbox, key or address, so the metrics endpoint cannot leak who talks to whom.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency histogram buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric the relay keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections open now.
    pub connections_open: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Connections refused at the connection limit.
    pub refused_connections: Counter,
    /// Handshakes that failed (garbage, probes, wrong key, timeouts).
    pub handshake_failures: Counter,
    /// Connections closed for a protocol violation after the handshake.
    pub protocol_errors: Counter,
    /// Messages accepted into mailboxes (not counting duplicates).
    pub messages_in: Counter,
    /// Retried messages recognised as duplicates.
    pub messages_duplicate: Counter,
    /// Messages pushed to subscribers.
    pub messages_out: Counter,
    /// Messages deleted by acknowledgement.
    pub messages_acked: Counter,
    /// Requests refused with an error code.
    pub request_errors: Counter,
    /// Requests refused by rate limiting.
    pub rate_limited: Counter,
    /// Log capabilities replaced (updates answered, retries included).
    pub log_updates: Counter,
    /// Time for the store to make a batch of sends durable.
    pub store_append_latency: Histogram,
    /// Time for the store to make acks durable.
    pub store_ack_latency: Histogram,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, c: &Counter| {
            let v = c.get();
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "pigeon_connections_open",
            "Connections open now.",
            self.connections_open.get(),
        );
        for (name, help, c) in [
            (
                "pigeon_connections_total",
                "Connections accepted.",
                &self.connections_total,
            ),
            (
                "pigeon_connections_refused_total",
                "Connections refused at the limit.",
                &self.refused_connections,
            ),
            (
                "pigeon_handshake_failures_total",
                "Failed handshakes.",
                &self.handshake_failures,
            ),
            (
                "pigeon_protocol_errors_total",
                "Connections closed for protocol violations.",
                &self.protocol_errors,
            ),
            (
                "pigeon_messages_in_total",
                "Messages stored.",
                &self.messages_in,
            ),
            (
                "pigeon_messages_duplicate_total",
                "Retries recognised as duplicates.",
                &self.messages_duplicate,
            ),
            (
                "pigeon_messages_out_total",
                "Messages pushed to subscribers.",
                &self.messages_out,
            ),
            (
                "pigeon_messages_acked_total",
                "Messages deleted by acknowledgement.",
                &self.messages_acked,
            ),
            (
                "pigeon_request_errors_total",
                "Requests answered with an error.",
                &self.request_errors,
            ),
            (
                "pigeon_rate_limited_total",
                "Requests refused by rate limiting.",
                &self.rate_limited,
            ),
            (
                "pigeon_log_updates_total",
                "Log capability updates answered.",
                &self.log_updates,
            ),
        ] {
            counter(&mut out, name, help, c);
        }
        self.store_append_latency.render(
            "pigeon_store_append_seconds",
            "Time to make a batch of sends durable.",
            &mut out,
        );
        self.store_ack_latency.render(
            "pigeon_store_ack_seconds",
            "Time to make acknowledgements durable.",
            &mut out,
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Anything else gets 404.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    serve_text(listener, std::sync::Arc::new(move || metrics.render())).await;
}

/// Serves `GET /metrics` with the Prometheus text `render` makes at each request (for other
/// processes than the relay: the proxy).
pub async fn serve_text(
    listener: tokio::net::TcpListener,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = std::sync::Arc::clone(&render);
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), read).await,
                Ok(true)
            ) {
                return;
            }
            let response = if req.starts_with(b"GET /metrics ") {
                let body = metrics();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.messages_in.add(3);
        m.store_append_latency.observe(Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains("pigeon_messages_in_total 3"));
        assert!(text.contains("pigeon_store_append_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("pigeon_store_append_seconds_count 1"));
    }
}
