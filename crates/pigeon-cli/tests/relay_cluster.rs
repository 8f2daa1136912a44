//! Issue #18's fault test: three `nats-server` processes in one JetStream cluster (replicas 3)
//! and three relay processes with one key on it; during a burst, `kill -9` of one nats-server
//! and one relay node at seeded random moments, then their restart.
//!
//! The test runs `pigeon bench cluster --kill` — the benchmark the issue names, as a real
//! process — and checks its ledger of every message (see `src/bench_cluster.rs`): senders on
//! every node send to every mailbox at once (writers on different nodes race for one mailbox),
//! make again what their node did not answer, through another node if theirs is down;
//! receivers on every node take pushes of mailboxes made through another node and acknowledge
//! them. What must hold:
//!
//! * every message a relay acknowledged to its sender arrived (`lost` 0);
//! * none was stored twice, and none arrived again after its acknowledgement was confirmed
//!   (`duplicates` 0), so a user is shown each exactly once;
//! * every send was answered in the end (`unanswered` 0), and nothing arrived that was not
//!   sent to that mailbox (`foreign` 0);
//! * both kills happened while the load ran, and the load went on through them.
//!
//! The seed is printed; repeat a run with `PIGEON_CLUSTER_SEED=<seed>`.

#[path = "support.rs"]
mod support;

use std::process::Command;

/// Seconds of load (the kills fall between a fifth and seven tenths of it).
const SECONDS: u64 = 12;

#[test]
fn three_relay_nodes_on_a_three_server_cluster_lose_and_double_nothing_across_kill_9() {
    let seed = support::seed_from_env("PIGEON_CLUSTER_SEED");
    let out = Command::new(env!("CARGO_BIN_EXE_pigeon"))
        .args(["bench", "cluster", "--kill", "--skip-compare", "--json"])
        .args([
            "--seconds",
            &SECONDS.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .env("PIGEON_LOG", "warn")
        .output()
        .expect("run pigeon bench cluster");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pigeon bench cluster failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    println!("{line}");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
    let c = &v["cluster"];
    let n = |key: &str| {
        c[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing in {c}"))
    };
    assert_eq!(v["nodes"], 3);
    assert_eq!(v["kills"], 2, "one nats-server and one relay node killed");
    assert_eq!(n("lost"), 0, "acknowledged messages lost");
    assert_eq!(
        n("duplicates"),
        0,
        "messages stored twice or delivered after a confirmed ack"
    );
    assert_eq!(n("unanswered"), 0, "sends never answered");
    assert_eq!(n("foreign"), 0, "deliveries nobody sent");
    assert!(n("acked") >= 1_000, "too little load to say anything: {c}");
    assert_eq!(n("acked"), n("sent"), "every send acknowledged in the end");
    // Both kills fell inside the load, and messages were made again across them.
    for k in c["kill_log"].as_array().expect("kill log") {
        let at = k["at_s"].as_f64().expect("at_s");
        assert!(
            at > 1.0 && at < SECONDS as f64,
            "a kill outside the load: {k}"
        );
    }
    assert!(
        n("resent") > 0,
        "no send was made again: did the relay kill hit the load?"
    );
}
