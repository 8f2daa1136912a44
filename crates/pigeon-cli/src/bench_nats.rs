//! NATS JetStream under the relay benchmark's load (filled in by `--vs-nats`).

use std::time::Duration;

/// Runs the comparison load against a JetStream server this function starts; returns msg/s.
pub(crate) async fn run(
    _measure: Duration,
    _mailboxes: usize,
    _connections: usize,
    _window: usize,
) -> anyhow::Result<f64> {
    anyhow::bail!("--vs-nats is not built yet")
}
