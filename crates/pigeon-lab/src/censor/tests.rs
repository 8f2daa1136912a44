//! Positive controls, one or more per rule: traffic each rule must catch, shown caught; and the
//! near misses it must let through.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::packet::{TcpFlags, TcpSpec, build_tcp, build_udp};
use crate::quic::protect_initial;
use crate::tls::HelloSpec;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const FOREIGN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const DOMESTIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const SCALE: f64 = 0.01;

fn zone() -> Zone {
    let mut z = Zone::default();
    for (name, ip) in [
        ("relay.example", FOREIGN),
        ("exempt.example", FOREIGN),
        ("site.domestic", DOMESTIC),
        ("throttled.example", DOMESTIC),
        ("blocked.example", FOREIGN),
        ("web.whatsapp.com", FOREIGN),
        ("cloudflare-ech.com", FOREIGN),
        ("other.example", FOREIGN),
    ] {
        z.records.insert(name.into(), vec![ip]);
    }
    z
}

fn censor(profile: &str) -> Censor {
    let p = Profile::load(profile).expect("profile");
    Censor::new(p, zone(), 7, SCALE).expect("censor")
}

fn custom(toml: &str, seed: u64) -> Censor {
    let p = Profile::parse(&format!("name = \"t\"\n{toml}"), Path::new("test")).expect("profile");
    Censor::new(p, zone(), seed, SCALE).expect("censor")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One TCP connection through the censor, with sequence numbers kept right.
struct Conn {
    c: (Ipv4Addr, u16),
    s: (Ipv4Addr, u16),
    cseq: u32,
    sseq: u32,
}

impl Conn {
    fn new(port: u16, server: Ipv4Addr, sport: u16) -> Self {
        Self {
            c: (CLIENT, port),
            s: (server, sport),
            cseq: 1000,
            sseq: 5000,
        }
    }
    /// SYN and SYN-ACK; true if both were forwarded.
    fn open(&mut self, cen: &mut Censor, now: Duration) -> bool {
        let syn = build_tcp(&TcpSpec {
            src: self.c,
            dst: self.s,
            seq: self.cseq,
            ack: None,
            flags: TcpFlags {
                syn: true,
                ..TcpFlags::default()
            },
            payload: &[],
        });
        let a = cen.handle(now, &syn).forward;
        let synack = build_tcp(&TcpSpec {
            src: self.s,
            dst: self.c,
            seq: self.sseq,
            ack: Some(self.cseq + 1),
            flags: TcpFlags {
                syn: true,
                ..TcpFlags::default()
            },
            payload: &[],
        });
        let b = cen.handle(now, &synack).forward;
        self.cseq += 1;
        self.sseq += 1;
        a && b
    }
    fn up(&mut self, cen: &mut Censor, now: Duration, data: &[u8]) -> Output {
        let pkt = build_tcp(&TcpSpec {
            src: self.c,
            dst: self.s,
            seq: self.cseq,
            ack: Some(self.sseq),
            flags: TcpFlags::default(),
            payload: data,
        });
        self.cseq = self
            .cseq
            .wrapping_add(u32::try_from(data.len()).expect("small"));
        cen.handle(now, &pkt)
    }
    fn down(&mut self, cen: &mut Censor, now: Duration, data: &[u8]) -> Output {
        let pkt = build_tcp(&TcpSpec {
            src: self.s,
            dst: self.c,
            seq: self.sseq,
            ack: Some(self.cseq),
            flags: TcpFlags::default(),
            payload: data,
        });
        self.sseq = self
            .sseq
            .wrapping_add(u32::try_from(data.len()).expect("small"));
        cen.handle(now, &pkt)
    }
    /// Sends `total` bytes server→client in 1,400-byte segments spaced `gap`; returns the
    /// bytes forwarded.
    fn download(
        &mut self,
        cen: &mut Censor,
        start: Duration,
        total: usize,
        gap: Duration,
    ) -> usize {
        let mut got = 0;
        let mut now = start;
        for chunk in vec![0x17u8; total].chunks(1400) {
            if self.down(cen, now, chunk).forward {
                got += chunk.len();
            }
            now += gap;
        }
        got
    }
}

fn hello(sni: &str) -> Vec<u8> {
    HelloSpec::typical(Some(sni)).record().expect("hello")
}

fn udp(dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    build_udp(CLIENT, 40_000, dst, dport, payload)
}

#[test]
fn rule01_dns_poisoning() {
    let mut cen = censor("ru-home-2026");
    let resolver = Ipv4Addr::new(192, 0, 2, 53);
    let out = cen.handle(
        ms(0),
        &udp(resolver, 53, &Query::build(1, "web.whatsapp.com")),
    );
    assert!(!out.forward, "a public resolver query must be intercepted");
    let reply = Packet::parse(&out.inject[0]).expect("forged answer");
    assert_eq!((reply.src, reply.dst), (resolver, CLIENT));
    let ans = dns::Answer::parse(reply.payload()).expect("dns");
    assert_eq!(ans.rcode, dns::RCODE_NXDOMAIN);
    // Unlisted names still resolve (answered by the censor itself).
    let out = cen.handle(ms(1), &udp(resolver, 53, &Query::build(2, "relay.example")));
    let ans =
        dns::Answer::parse(Packet::parse(&out.inject[0]).expect("ip").payload()).expect("dns");
    assert_eq!(ans.addrs, vec![FOREIGN]);
    // The national resolver's zone answers NXDOMAIN for the list.
    let national = Censor::resolver_zone_for(cen.profile(), &zone());
    assert!(national.is_blocked("web.whatsapp.com") && !national.is_blocked("relay.example"));
    // DoT is dropped; a DoH server name is blocked by SNI; TCP/53 is untouched.
    let mut dot = Conn::new(41_000, resolver, 853);
    assert!(!dot.open(&mut cen, ms(2)));
    let mut doh = Conn::new(41_001, FOREIGN, 443);
    assert!(doh.open(&mut cen, ms(3)));
    assert!(!doh.up(&mut cen, ms(4), &hello("dns.google")).forward);
    let mut tcp53 = Conn::new(41_002, resolver, 53);
    assert!(tcp53.open(&mut cen, ms(5)));
    assert!(
        tcp53
            .up(&mut cen, ms(6), &Query::build(3, "web.whatsapp.com"))
            .forward
    );
    assert!(cen.fired()[&RuleId::Dns] >= 3);
}

#[test]
fn rule02_ip_block() {
    let mut cen = censor("ru-home-2026");
    let listed = Ipv4Addr::new(203, 0, 113, 66);
    let mut c = Conn::new(41_000, listed, 443);
    assert!(!c.open(&mut cen, ms(0)));
    assert!(!cen.handle(ms(1), &udp(listed, 443, b"x")).forward);
    let mut ok = Conn::new(41_001, DOMESTIC, 443);
    assert!(ok.open(&mut cen, ms(2)));
    assert_eq!(cen.fired()[&RuleId::IpBlock], 2);
}

#[test]
fn rule03_sni_block_tls_quic_and_substring_bug() {
    let mut cen = censor("ru-home-2026");
    let mut c = Conn::new(41_000, DOMESTIC, 443);
    assert!(c.open(&mut cen, ms(0)));
    let out = c.up(&mut cen, ms(1), &hello("www.blocked.example"));
    assert!(!out.forward && out.inject.is_empty(), "silent drop");
    assert!(
        !c.down(&mut cen, ms(2), b"server hello").forward,
        "later packets dropped too"
    );
    // The substring bug: `t.co` hits reddit.com.
    let mut r = Conn::new(41_001, Ipv4Addr::new(198, 51, 100, 11), 443);
    assert!(r.open(&mut cen, ms(3)));
    assert!(!r.up(&mut cen, ms(4), &hello("reddit.com")).forward);
    // An unlisted name passes.
    // (Another address: the blocked one is in the penalty box now, rule 15.)
    let mut fine = Conn::new(41_002, Ipv4Addr::new(198, 51, 100, 12), 443);
    assert!(fine.open(&mut cen, ms(5)));
    assert!(fine.up(&mut cen, ms(6), &hello("site.domestic")).forward);

    // RST action (cn-gfw): both ends get a RST.
    let mut gfw = censor("cn-gfw");
    let mut g = Conn::new(41_003, DOMESTIC, 443);
    assert!(g.open(&mut gfw, ms(0)));
    let out = g.up(&mut gfw, ms(1), &hello("signal.org"));
    assert!(!out.forward && out.inject.len() == 2);
    for p in &out.inject {
        let p = Packet::parse(p).expect("rst");
        assert!(matches!(
            p.transport,
            Transport::Tcp {
                flags: TcpFlags { rst: true, .. },
                ..
            }
        ));
    }

    // QUIC v1 Initial, ClientHello split over two Initials.
    let ch = HelloSpec::typical(Some("signal.org"))
        .handshake()
        .expect("hello");
    let quic_server = Ipv4Addr::new(198, 51, 100, 13); // DOMESTIC:443 is in the penalty box
    let (a, b) = ch.split_at(80);
    let p1 = protect_initial(&[9; 8], &[1; 8], 0, &[(80, b)]).expect("initial");
    let p2 = protect_initial(&[9; 8], &[1; 8], 1, &[(0, a)]).expect("initial");
    assert!(
        gfw.handle(ms(2), &udp(quic_server, 443, &p1)).forward,
        "half a hello passes"
    );
    assert!(
        !gfw.handle(ms(3), &udp(quic_server, 443, &p2)).forward,
        "the whole hello is caught"
    );
    assert!(
        !gfw.handle(ms(4), &udp(quic_server, 443, b"short header"))
            .forward
    );
    let ok = HelloSpec::typical(Some("site.domestic"))
        .handshake()
        .expect("hello");
    let p = protect_initial(&[8; 8], &[1; 8], 0, &[(0, &ok)]).expect("initial");
    assert!(
        gfw.handle(ms(5), &build_udp(CLIENT, 40_001, quic_server, 4443, &p))
            .forward
    );
}

#[test]
fn rule04_sni_throttle() {
    let mut cen = censor("ru-home-2026");
    let mut c = Conn::new(41_000, DOMESTIC, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(
        c.up(&mut cen, ms(1), &hello("video.throttled.example"))
            .forward
    );
    // 280 KB offered in 2 s (~1.1 Mbit/s): at 130–150 kbit/s plus an 8 KiB bucket, about
    // 33–46 KB get through.
    let got = c.download(&mut cen, ms(2), 280_000, Duration::from_micros(10_000));
    assert!((30_000..=50_000).contains(&got), "forwarded {got}");
    let mut free = Conn::new(41_001, DOMESTIC, 443);
    assert!(free.open(&mut cen, ms(0)));
    assert!(free.up(&mut cen, ms(1), &hello("site.domestic")).forward);
    assert_eq!(
        free.download(&mut cen, ms(2), 280_000, Duration::from_micros(10_000)),
        280_000
    );
}

#[test]
fn rule05_freeze_at_16k_on_foreign_hosting() {
    let mut cen = censor("ru-home-2026");
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(c.up(&mut cen, ms(1), &hello("relay.example")).forward);
    let got = c.download(&mut cen, ms(2), 65_536, ms(1));
    assert!((16_384 - 1400..=16_384).contains(&got), "forwarded {got}");
    assert_eq!(cen.fired()[&RuleId::Freeze], 1);
    // The client still talks (no RST); only server→client is frozen.
    assert!(c.up(&mut cen, ms(200), b"\x17\x03\x03\x00\x01x").forward);
    // Domestic address, or an exempt SNI: no freeze.
    let mut d = Conn::new(41_001, DOMESTIC, 443);
    assert!(d.open(&mut cen, ms(0)));
    assert!(d.up(&mut cen, ms(1), &hello("site.domestic")).forward);
    assert_eq!(d.download(&mut cen, ms(2), 65_536, ms(1)), 65_536);
    let mut e = Conn::new(41_002, FOREIGN, 443);
    assert!(e.open(&mut cen, ms(0)));
    assert!(e.up(&mut cen, ms(1), &hello("exempt.example")).forward);
    assert_eq!(e.download(&mut cen, ms(2), 65_536, ms(1)), 65_536);
    // Threshold is a parameter (sweep 14–32 KiB).
    let mut sweep = custom("[rules.freeze]\nthreshold_bytes = 32768\n", 1);
    let mut s = Conn::new(41_003, FOREIGN, 443);
    assert!(s.open(&mut sweep, ms(0)));
    let got = s.download(&mut sweep, ms(1), 65_536, ms(1));
    assert!((32_768 - 1400..=32_768).contains(&got), "forwarded {got}");
    // Variant: client UDP to the range blocks the server for 10 (scaled) minutes.
    assert!(!cen.handle(ms(300), &udp(FOREIGN, 51_820, b"hello")).forward);
    let mut after = Conn::new(41_004, FOREIGN, 8443);
    assert!(!after.open(&mut cen, ms(301)));
    assert!(after.open(&mut cen, ms(300) + Duration::from_secs(6) + ms(600)));
}

#[test]
fn rule05_a_new_connection_on_a_reused_port_gets_a_count_of_its_own() {
    // A client that makes many short connections reuses its ports within minutes: the freeze
    // counts per connection, so a new SYN on the 4-tuple of a closed one starts from zero.
    let mut cen = censor("ru-home-2026");
    let mut first = Conn::new(41_000, FOREIGN, 443);
    assert!(first.open(&mut cen, ms(0)));
    assert!(first.up(&mut cen, ms(1), &hello("relay.example")).forward);
    assert_eq!(first.download(&mut cen, ms(2), 14_000, ms(1)), 14_000);
    let mut again = Conn::new(41_000, FOREIGN, 443);
    again.cseq = 900_000;
    again.sseq = 700_000;
    assert!(again.open(&mut cen, ms(100)));
    assert!(again.up(&mut cen, ms(101), &hello("relay.example")).forward);
    assert_eq!(again.download(&mut cen, ms(102), 14_000, ms(1)), 14_000);
    assert!(!cen.fired().contains_key(&RuleId::Freeze));
    // Past the threshold within one connection, it freezes as before.
    let got = again.download(&mut cen, ms(200), 14_000, ms(1));
    assert!(got < 14_000, "forwarded {got}");
    assert_eq!(cen.fired()[&RuleId::Freeze], 1);
}

#[test]
fn rule06_fully_encrypted_first_packet_at_26_percent() {
    let seed: u64 = 0x6f_6e_65;
    let mut cen = custom("[rules.fet]\n", seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let trials: u16 = 1000;
    let mut blocked = 0u32;
    for i in 0..trials {
        let mut c = Conn::new(20_000 + i, FOREIGN, 443);
        // Each flow to its own port so one block's 180 s penalty does not touch the next.
        c.s.1 = 1000 + i;
        assert!(c.open(&mut cen, ms(u64::from(i))));
        let mut data = vec![0u8; 300];
        rng.fill(&mut data[..]);
        if !c.up(&mut cen, ms(u64::from(i)), &data).forward {
            blocked += 1;
        }
    }
    let rate = f64::from(blocked) / f64::from(trials);
    println!("rule 6: {blocked}/{trials} random first packets blocked (seed {seed:#x})");
    assert!(
        (0.22..=0.31).contains(&rate),
        "rate {rate} (seed {seed:#x})"
    );
    // Exempt shapes are never blocked.
    let mut printable = 0u32;
    for i in 0..trials {
        let mut c = Conn::new(30_000 + i, FOREIGN, 443);
        c.s.1 = 3000 + i;
        assert!(c.open(&mut cen, ms(2000)));
        let mut data = vec![0u8; 300];
        rng.fill(&mut data[..]);
        match i % 3 {
            0 => data[..6].copy_from_slice(b"Hello!"),
            1 => data[..3].copy_from_slice(&[0x16, 0x03, 0x01]),
            _ => data[..5].copy_from_slice(b"POST "),
        }
        if !c.up(&mut cen, ms(2000), &data).forward {
            printable += 1;
        }
    }
    assert_eq!(printable, 0, "seed {seed:#x}");
    // Gated by destination: domestic servers are not subject to it.
    let mut d = Conn::new(40_000, DOMESTIC, 443);
    assert!(d.open(&mut cen, ms(3000)));
    let mut dom_blocked = 0;
    for _ in 0..1 {
        let mut data = vec![0u8; 300];
        rng.fill(&mut data[..]);
        dom_blocked += u32::from(!d.up(&mut cen, ms(3000), &data).forward);
    }
    assert_eq!(dom_blocked, 0);
}

#[test]
fn rule06_block_holds_for_180_scaled_seconds() {
    let mut cen = custom("[rules.fet]\nprobability = 1.0\n", 3);
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(!c.up(&mut cen, ms(1), &[0x0f, 0xf0].repeat(100)).forward);
    let mut again = Conn::new(41_001, FOREIGN, 443);
    assert!(
        !again.open(&mut cen, ms(1000)),
        "(client, server, port) blocked"
    );
    let mut other_port = Conn::new(41_002, FOREIGN, 8443);
    assert!(other_port.open(&mut cen, ms(1000)));
    let mut later = Conn::new(41_003, FOREIGN, 443);
    assert!(later.open(&mut cen, ms(1801)), "180 s × 0.01 later");
}

#[test]
fn rule07_prober_schedules_and_blocks() {
    let mut cen = censor("cn-gfw");
    let mut c = Conn::new(41_000, DOMESTIC, 8388);
    assert!(c.open(&mut cen, ms(0)));
    let first = [0x0f, 0xf0].repeat(150);
    c.up(&mut cen, ms(1), &first);
    let due = cen.next_probe_at().expect("a probe is scheduled");
    // Delay 0.28 s – 1 h, scaled by 0.01.
    assert!(due >= ms(1) + ms(2) && due <= ms(1) + Duration::from_secs(36) + ms(1));
    assert!(cen.poll_probes(due - ms(1)).is_empty());
    let jobs = cen.poll_probes(due);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].first_packet, first);
    assert_eq!(jobs[0].server, SocketAddrV4::new(DOMESTIC, 8388));
    cen.probe_verdict(due, &jobs[0], true, "echoed random bytes");
    let mut next = Conn::new(41_001, DOMESTIC, 8388);
    assert!(!next.open(&mut cen, due + ms(1)));
    // Short or exempt first packets do not trigger probing.
    let mut s = Conn::new(41_002, DOMESTIC, 9000);
    assert!(s.open(&mut cen, ms(0)));
    s.up(&mut cen, ms(1), &[0x0f, 0xf0].repeat(40));
    let mut h = Conn::new(41_003, DOMESTIC, 9001);
    assert!(h.open(&mut cen, ms(0)));
    h.up(&mut cen, ms(1), &hello("site.domestic"));
    assert!(cen.poll_probes(Duration::from_secs(100)).is_empty());
}

/// The first flight of a stock rustls 0.23 client (ring provider, default settings).
pub(crate) fn rustls_hello(sni: &str) -> Vec<u8> {
    use std::sync::Arc;
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("write");
    out
}

#[test]
fn rule08_stock_rustls_ja4_on_suspicious_subnet() {
    let first = rustls_hello("relay.example");
    let Parsed::Complete(ch) = tls::parse_stream(&first) else {
        panic!("rustls hello did not parse");
    };
    let print = ja4::fingerprint(&ch, Proto::Tcp);
    println!("stock rustls JA4 {} / {}", print.ja4, print.ja4_r);
    let mut cen = censor("ru-home-2026");
    assert!(
        cen.profile()
            .rules
            .fingerprint
            .as_ref()
            .expect("rule 8")
            .ja4_block
            .contains(&print.ja4),
        "profile's JA4 list lacks stock rustls {}",
        print.ja4
    );
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(c.up(&mut cen, ms(1), &first).forward, "the hello passes");
    assert!(
        c.down(&mut cen, ms(2), &[0x16, 3, 3, 0, 4, 2, 0, 0, 0])
            .forward,
        "server hello passes"
    );
    assert!(
        !c.up(&mut cen, ms(3), &[0x17, 3, 3, 0, 1, 0]).forward,
        "dropped after the handshake"
    );
    // The same hello to a domestic address (and right A record) passes.
    let mut cen = censor("ru-home-2026");
    let mut d = Conn::new(41_001, DOMESTIC, 443);
    assert!(d.open(&mut cen, ms(0)));
    assert!(
        d.up(&mut cen, ms(1), &rustls_hello("site.domestic"))
            .forward
    );
    assert!(d.down(&mut cen, ms(2), &[0x16, 3, 3, 0, 1, 2]).forward);
    assert!(d.up(&mut cen, ms(3), &[0x17, 3, 3, 0, 1, 0]).forward);
    // SNI↔IP consistency: relay.example's A record is FOREIGN, not .99.
    let mut m = Conn::new(41_002, Ipv4Addr::new(203, 0, 113, 99), 443);
    assert!(m.open(&mut cen, ms(0)));
    assert!(m.up(&mut cen, ms(1), &hello("relay.example")).forward);
    assert!(!m.up(&mut cen, ms(2), &[0x17, 3, 3, 0, 1, 0]).forward);
}

#[test]
fn rule09_reassembly_modes() {
    let split = |cen: &mut Censor, port: u16| {
        let rec = hello("blocked.example");
        let mut c = Conn::new(port, DOMESTIC, 443);
        assert!(c.open(cen, ms(0)));
        let a = c.up(cen, ms(1), &rec[..30]).forward;
        let b = c.up(cen, ms(2), &rec[30..]).forward;
        a && b
    };
    let mut a = custom("[rules.sni_block]\n[rules.reassembly]\nmode = \"A\"\n", 1);
    assert!(split(&mut a, 41_000), "mode A: a split hello evades");
    let mut b = custom("[rules.sni_block]\n[rules.reassembly]\nmode = \"B\"\n", 1);
    assert!(!split(&mut b, 41_000), "mode B: reassembled and caught");
    // Both catch the unsplit hello.
    let mut c = Conn::new(41_001, DOMESTIC, 443);
    assert!(c.open(&mut a, ms(0)));
    assert!(!c.up(&mut a, ms(1), &hello("blocked.example")).forward);
}

#[test]
fn rule09_mode_b_reassembles_out_of_order_segments() {
    let mut b = custom("[rules.sni_block]\n[rules.reassembly]\nmode = \"B\"\n", 1);
    let rec = hello("blocked.example");
    let mut c = Conn::new(41_000, DOMESTIC, 443);
    assert!(c.open(&mut b, ms(0)));
    let base = c.cseq;
    // The second half first (ahead of a gap), then the first half.
    c.cseq = base + 30;
    assert!(c.up(&mut b, ms(1), &rec[30..]).forward);
    c.cseq = base;
    assert!(
        !c.up(&mut b, ms(2), &rec[..30]).forward,
        "caught once the gap fills"
    );
}

#[test]
fn rule10_ech() {
    let mut cen = custom("[rules.ech]\n", 1);
    let ech = |sni: &str| {
        let mut spec = HelloSpec::typical(Some(sni));
        spec.extensions
            .push((0xfe0d, vec![0, 0, 1, 0, 1, 0x42, 0, 0, 0, 0]));
        spec.record().expect("hello")
    };
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(!c.up(&mut cen, ms(1), &ech("cloudflare-ech.com")).forward);
    let mut g = Conn::new(41_001, FOREIGN, 443);
    assert!(g.open(&mut cen, ms(0)));
    assert!(
        g.up(&mut cen, ms(1), &ech("other.example")).forward,
        "GREASE ECH passes"
    );
    let mut n = Conn::new(41_002, FOREIGN, 443);
    assert!(n.open(&mut cen, ms(0)));
    assert!(
        n.up(&mut cen, ms(1), &hello("cloudflare-ech.com")).forward,
        "no ECH, passes"
    );
}

#[test]
fn rule11_udp_policy() {
    let mut cen = censor("ru-mobile-allowlist");
    let ch = HelloSpec::typical(Some("site.domestic"))
        .handshake()
        .expect("hello");
    let quic = protect_initial(&[3; 8], &[1; 8], 0, &[(0, &ch)]).expect("initial");
    assert!(!cen.handle(ms(0), &udp(FOREIGN, 443, &quic)).forward);
    assert!(cen.handle(ms(0), &udp(DOMESTIC, 443, &quic)).forward);
    // STUN toward messenger relays (default rule 11 settings).
    let mut udp_only = custom("[rules.udp]\n", 1);
    let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    let relay = Ipv4Addr::new(192, 0, 2, 140);
    assert!(!udp_only.handle(ms(0), &udp(relay, 3478, &stun)).forward);
    assert!(
        !udp_only
            .handle(
                ms(0),
                &udp(relay, 5004, &[0x80, 0x6f, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4, 5])
            )
            .forward
    );
    assert!(udp_only.handle(ms(0), &udp(DOMESTIC, 3478, &stun)).forward);
    // Mobile: all high-entropy UDP dropped, and the flow stays dead until its state expires.
    let mut mobile = custom(
        "[rules.udp]\ndrop_high_entropy = true\nquic_allow = [\"0.0.0.0/0\"]\n",
        1,
    );
    let noise = [0x0f, 0xf0].repeat(100);
    assert!(!mobile.handle(ms(0), &udp(DOMESTIC, 9999, &noise)).forward);
    assert!(
        !mobile
            .handle(ms(100), &udp(DOMESTIC, 9999, b"plain text now"))
            .forward
    );
    assert!(
        mobile
            .handle(
                ms(100),
                &udp(DOMESTIC, 53, &Query::build(5, "site.domestic"))
            )
            .forward
    );
    assert!(
        mobile
            .handle(ms(1200), &udp(DOMESTIC, 9999, b"plain text now"))
            .forward,
        "60 s × 0.01 later the flow is new"
    );
}

#[test]
fn rule12_signatures_pigeon_tcp_and_wireguard() {
    // The real first record of Pigeonpost's plain `tcp` transport.
    let relay = pigeon_proto::StaticKeypair::generate().expect("key");
    let mut first = Vec::new();
    let hello = pigeon_wire::msg::ClientHello {
        versions: vec![1],
        padding: Vec::new(),
    };
    pigeon_proto::ClientHandshake::start(relay.public(), &hello, &mut first).expect("start");
    let mut cen = censor("ru-home-2026");
    let mut c = Conn::new(41_000, DOMESTIC, 4433);
    assert!(c.open(&mut cen, ms(0)));
    assert!(c.up(&mut cen, ms(1), &first).forward, "K = 2 packets pass");
    assert!(c.down(&mut cen, ms(2), &[0u8; 100]).forward);
    assert!(
        !c.up(&mut cen, ms(3), &[0u8; 258]).forward,
        "then the flow is dropped"
    );
    assert!(!c.down(&mut cen, ms(4), &[0u8; 258]).forward);
    assert_eq!(cen.fired()[&RuleId::Signature], 1);
    // WireGuard-shaped UDP.
    let mut wg = vec![0u8; 148];
    wg[0] = 1;
    let peer = Ipv4Addr::new(198, 51, 100, 20);
    assert!(cen.handle(ms(0), &udp(peer, 51_820, &wg)).forward);
    let mut resp = vec![0u8; 92];
    resp[0] = 2;
    assert!(
        cen.handle(ms(1), &build_udp(peer, 51_820, CLIENT, 40_000, &resp))
            .forward
    );
    assert!(
        !cen.handle(ms(2), &udp(peer, 51_820, &[4, 0, 0, 0, 1, 2, 3]))
            .forward
    );
    // OpenVPN over UDP (hard reset client v2, key id 0).
    let mut ovpn = vec![0x38];
    ovpn.extend_from_slice(&[0xab; 13]);
    assert!(
        cen.handle(ms(3), &build_udp(CLIENT, 40_001, peer, 1194, &ovpn))
            .forward
    );
    assert!(cen.fired()[&RuleId::Signature] >= 3);
    // A DNS query whose random ID starts with an OpenVPN opcode is still DNS (the tls
    // scenarios found the resolver blocked one query in 128).
    let before = cen.fired()[&RuleId::Signature];
    let mut query = vec![0x38, 0x12, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(b"\x05relay\x07example\x00\x00\x01\x00\x01");
    for i in 0..4 {
        let resolver = Ipv4Addr::new(198, 51, 100, 53);
        assert!(
            cen.handle(ms(10 + i), &build_udp(CLIENT, 40_100, resolver, 53, &query))
                .forward
        );
    }
    assert_eq!(cen.fired()[&RuleId::Signature], before);
}

#[test]
fn rule13_tls_in_tls() {
    let mut cen = custom("[rules.tls_in_tls]\n", 1);
    let rec = |len: usize| {
        let mut r = vec![0x17, 3, 3];
        r.extend_from_slice(&u16::try_from(len).expect("len").to_be_bytes());
        r.extend_from_slice(&vec![0xaa; len]);
        r
    };
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(c.up(&mut cen, ms(1), &hello("relay.example")).forward);
    assert!(c.down(&mut cen, ms(2), &rec(90)).forward);
    for i in 0..3 {
        assert!(c.up(&mut cen, ms(3 + i), &rec(520)).forward);
    }
    assert!(c.down(&mut cen, ms(10), &rec(1400)).forward);
    assert!(
        !c.down(&mut cen, ms(11), &rec(1400)).forward,
        "the server's burst is cut"
    );
    // Small client records (ordinary browsing) do not trigger it.
    let mut b = Conn::new(41_001, FOREIGN, 443);
    assert!(b.open(&mut cen, ms(0)));
    for i in 0..3 {
        assert!(b.up(&mut cen, ms(1 + i), &rec(300)).forward);
    }
    for i in 0..4 {
        assert!(b.down(&mut cen, ms(10 + i), &rec(1400)).forward);
    }
}

#[test]
fn rule14_allowlist_mode() {
    let mut cen = censor("ru-mobile-allowlist");
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)), "SYN and SYN-ACK pass");
    assert!(
        !c.up(&mut cen, ms(1), &hello("relay.example")).forward,
        "first data dropped"
    );
    let mut d = Conn::new(41_001, DOMESTIC, 443);
    assert!(d.open(&mut cen, ms(0)));
    assert!(d.up(&mut cen, ms(1), &hello("site.domestic")).forward);
    let icmp = {
        let mut p = build_udp(CLIENT, 1, FOREIGN, 1, b"");
        p[9] = 1; // protocol ICMP; checksum is not checked by the parser
        p
    };
    assert!(!cen.handle(ms(2), &icmp).forward);
    let resolver = Ipv4Addr::new(198, 51, 100, 53);
    assert!(
        cen.handle(ms(3), &udp(resolver, 53, &Query::build(1, "a.example")))
            .forward
    );
    assert!(
        !cen.handle(ms(4), &udp(FOREIGN, 53, &Query::build(1, "a.example")))
            .forward
    );
    // An SNI allow-list lets a named service through anywhere.
    let mut sni = custom("[rules.allowlist]\nallow_sni = [\"relay.example\"]\n", 1);
    let mut s = Conn::new(41_002, FOREIGN, 443);
    assert!(s.open(&mut sni, ms(0)));
    assert!(s.up(&mut sni, ms(1), &hello("relay.example")).forward);
}

#[test]
fn rule15_penalty_box() {
    let mut cen = censor("ru-home-2026");
    let mut c = Conn::new(41_000, DOMESTIC, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(!c.up(&mut cen, ms(1), &hello("blocked.example")).forward);
    // A fresh connection with an innocent name to the same (server, port) is dropped...
    let mut again = Conn::new(41_001, DOMESTIC, 443);
    assert!(!again.open(&mut cen, ms(100)));
    // ...while other ports are fine...
    let mut other = Conn::new(41_002, DOMESTIC, 8443);
    assert!(other.open(&mut cen, ms(100)));
    // ...and after at most 180 s (scaled: 1.8 s) the box opens.
    let mut later = Conn::new(41_003, DOMESTIC, 443);
    assert!(later.open(&mut cen, ms(1802)));
    assert!(cen.fired()[&RuleId::Penalty] >= 1);
}

#[test]
fn open_profile_lets_everything_through() {
    let mut cen = censor("open");
    let mut c = Conn::new(41_000, FOREIGN, 443);
    assert!(c.open(&mut cen, ms(0)));
    assert!(c.up(&mut cen, ms(1), &hello("blocked.example")).forward);
    assert_eq!(c.download(&mut cen, ms(2), 300_000, ms(1)), 300_000);
    assert!(
        cen.handle(ms(3), &udp(FOREIGN, 51_820, &[1u8; 148]))
            .forward
    );
    assert!(cen.fired().is_empty());
}
