//! Strangers trying to take a relay or its tls front down from one machine (issue #13), each
//! attack (`pigeon_lab::attack`, the same code `pigeon bench attack` runs) against a real relay
//! process while an honest pair keeps talking. The attacker connects from 127.0.0.2 (another
//! source address, as another machine would be), the honest pair from 127.0.0.1. Each test
//! asserts that every honest connection opens within 2 s, that every honest message arrives,
//! that the relay's memory stays bounded, and what the relay did to the attacker.

#[path = "support.rs"]
mod support;

use pigeon_client::{Event, OwnedMailbox, RelayConnection};
use pigeon_lab::attack::{self, Attack, Report, Target};
use pigeon_transport::RelayLink;
use pigeon_wire::msg::MailboxId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Relay, RelayOpts};

/// Honest connections must open within this, whatever the attack (issue #13's target).
const HONEST_CONNECT: Duration = Duration::from_secs(2);
/// The default handshakes at once from one source (`--max-handshakes-per-source`); the checks
/// allow a few more for evictions signalled but not yet carried out when they look.
const PER_SOURCE_HANDSHAKES: u64 = 128;
/// The relay's resident memory stays under this during every attack here.
const MAX_RSS_MIB: u64 = 512;

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// One honest round on `link`: bob makes a mailbox, alice posts five messages, bob reads all
/// five. Returns the slowest of the two connects.
async fn honest_round(link: &RelayLink, round: u8) -> Duration {
    let connect = || async {
        let started = Instant::now();
        let conn = RelayConnection::connect(link, Duration::from_secs(10))
            .await
            .expect("an honest client connects");
        (conn, started.elapsed())
    };
    let (mut bob, bob_took) = connect().await;
    let mailbox = OwnedMailbox::generate().expect("mailbox");
    bob.create_mailbox(&mailbox.key, &mailbox.id, mailbox.cap_hash())
        .await
        .expect("create");
    let (alice, alice_took) = connect().await;
    for i in 0..5u8 {
        alice
            .send(
                &mailbox.id,
                &mailbox.sender_cap,
                [round ^ (i << 4); 16],
                vec![i; 500],
            )
            .await
            .expect("the relay takes an honest message");
    }
    bob.subscribe(&mailbox.key, &mailbox.id)
        .await
        .expect("subscribe");
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got < 5 {
        match tokio::time::timeout_at(deadline, bob.next_event()).await {
            Ok(Some(Event::Push(p))) => {
                let seqs: Vec<u64> = p.deliveries.iter().map(|d| d.seq).collect();
                got += seqs.len();
                let _ = bob.ack(&MailboxId(mailbox.id.0), seqs).await;
            }
            other => panic!("round {round}: {got} of 5 honest messages arrived ({other:?})"),
        }
    }
    bob_took.max(alice_took)
}

/// Runs `attack` on `addr` for `seconds` while honest rounds go on; returns what the attacker
/// saw. Every honest connect within [`HONEST_CONNECT`], the relay's memory bounded.
async fn under_attack(relay: &Relay, attack: Attack, addr: SocketAddr, seconds: u64) -> Report {
    let pid = relay.pid().expect("pid");
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let target = Target {
        addr,
        relay_key: *relay.link.relay_key(),
        tunnel: attack::Tunnel::of(&relay.link),
    };
    let from = "127.0.0.2".parse().expect("address");
    let attacker = tokio::spawn(attack::run(attack, target, from, until, 3000));
    // Let the attack build up before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut slowest = Duration::ZERO;
    let mut round = 0u8;
    while tokio::time::Instant::now() < until || round < 3 {
        slowest = slowest.max(honest_round(&relay.link, round).await);
        let rss = rss_mib(pid);
        assert!(rss < MAX_RSS_MIB, "the relay holds {rss} MiB");
        round = round.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = attacker.await.expect("attacker");
    eprintln!(
        "{}: slowest honest connect {slowest:?}; {report:?}",
        attack.name()
    );
    assert!(
        slowest < HONEST_CONNECT,
        "{}: an honest connect took {slowest:?}",
        attack.name()
    );
    relay.assert_no_panic();
    report
}

fn tcp_addr(relay: &Relay) -> SocketAddr {
    relay.addr().parse().expect("relay address")
}

#[tokio::test]
async fn stalled_and_silent_connections_do_not_lock_out_a_full_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Few connection slots, so that the attack fills them: strangers in their handshake make
    // room for newcomers.
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--max-connections")
            .arg("300"),
    );
    for attack in [Attack::StalledHandshakes, Attack::SilentConnections] {
        let report = under_attack(&relay, attack, tcp_addr(&relay), 3).await;
        // The attacker's own oldest handshakes were closed to make room: no more than its
        // source's handshake cap are left open.
        assert!(
            report.held - report.closed <= PER_SOURCE_HANDSHAKES + 8,
            "{}: {} of {} held connections are still open",
            attack.name(),
            report.held - report.closed,
            report.held
        );
    }
}

#[tokio::test]
async fn connections_that_idle_with_a_link_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()).arg("--idle-timeout").arg("2"));
    let report = under_attack(&relay, Attack::IdleSessions, tcp_addr(&relay), 4).await;
    assert!(report.held > 100, "{report:?}");
    // Each completed the handshake and then idled: the relay closed the ones idle for 2 s
    // (those opened in the last 2 s of the attack may still be open).
    assert!(
        report.closed * 3 > report.held,
        "only {} of {} idle sessions were closed",
        report.closed,
        report.held
    );
}

#[tokio::test]
async fn pipelined_requests_with_large_answers_do_not_pile_up_in_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    // The slot the attacker fetches from holds a 16 KiB last-resort key package, which is
    // never used up: 20,000 pipelined fetches would be 300 MB of answers if each were served.
    let owner = pigeon_proto::auth::generate_signing_key().expect("key");
    relay
        .connect()
        .await
        .publish_key_packages(&owner, &[0x5a; 32], Vec::new(), Some(vec![7; 16 * 1024]))
        .await
        .expect("publish");
    let report = under_attack(&relay, Attack::AnswerAmplification, tcp_addr(&relay), 3).await;
    assert!(
        report.served <= 2,
        "{} last-resort packages went to one session",
        report.served
    );
    assert!(report.refused > 1000, "{report:?}");
}

#[tokio::test]
async fn anonymous_creation_is_bounded_per_session_source_and_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayOpts::in_dir(dir.path()));
    let report = under_attack(&relay, Attack::CreationFlood, tcp_addr(&relay), 3).await;
    // One source makes 100 at once and 10 a second after that.
    assert!(
        report.served <= 100 + 10 * 4,
        "{} mailboxes made by one source",
        report.served
    );
    assert!(report.refused > 0, "{report:?}");
    // One session makes 64 at most, whatever the source.
    let conn = relay.connect().await;
    let mut made = 0;
    let refused = loop {
        let m = OwnedMailbox::generate().expect("mailbox");
        match conn.create_mailbox(&m.key, &m.id, m.cap_hash()).await {
            Ok(()) => made += 1,
            Err(pigeon_client::ClientError::Refused { code, message, .. }) => {
                break (code, message);
            }
            Err(e) => panic!("{e}"),
        }
        assert!(made <= 64, "one session made more than 64 mailboxes");
    };
    assert_eq!(
        refused.0,
        pigeon_wire::ErrorCode::QuotaExceeded,
        "{}",
        refused.1
    );
}

#[tokio::test]
async fn the_front_outlasts_keep_alive_cover_floods_and_stalled_hellos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("index.html"), "<h1>Recipes</h1>\n").expect("index");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--tls")
            .arg("127.0.0.1:0")
            .arg("--sni")
            .arg("cover.test")
            .arg("--cover")
            .arg(site.to_str().expect("utf-8")),
    );
    let front: SocketAddr = format!("127.0.0.1:{}", relay.link.routes()[0].port())
        .parse()
        .expect("front");
    // Keep-alive visits to the cover (which once held every handshake slot): served, and held
    // open, up to the source's cap.
    let report = under_attack(&relay, Attack::CoverKeepAlive, front, 3).await;
    assert!(report.served > 400, "{report:?}");
    let report = under_attack(&relay, Attack::StalledTlsHellos, front, 3).await;
    assert!(
        report.held - report.closed <= PER_SOURCE_HANDSHAKES + 8,
        "{report:?}"
    );
}

/// Tunnel legs (opened with tokens made from the link, as any link holder can) that flood PING
/// frames and read nothing: each is let in, and each is ended by the front once the answers it
/// owes pass the bound, while an honest pair keeps talking.
#[tokio::test]
async fn tunnel_legs_that_flood_pings_are_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(
        RelayOpts::in_dir(dir.path())
            .arg("--tls")
            .arg("127.0.0.1:0")
            .arg("--sni")
            .arg("cover.test"),
    );
    let front: SocketAddr = format!("127.0.0.1:{}", relay.link.routes()[0].port())
        .parse()
        .expect("front");
    let report = under_attack(&relay, Attack::PingFlood, front, 4).await;
    assert!(report.served > 0, "no leg was let in: {report:?}");
    assert!(report.requests > 100_000, "the flood was small: {report:?}");
    assert_eq!(
        report.closed, report.served,
        "every flooding leg was ended by the front: {report:?}"
    );
}
