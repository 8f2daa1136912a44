//! The censor: rules 1–15 of `CENSORS.md` as one sans-IO state machine.
//!
//! [`Censor::handle`] takes one raw IPv4 packet crossing the censor and the current time, and
//! returns whether to forward it and which packets to inject (forged DNS answers, RST/FIN). The
//! router in [`crate::net`] feeds it every packet from its TUN device; the unit tests feed it
//! packets they build. Active probing (rule 7) is requested with [`Censor::poll_probes`] and its
//! result reported back with [`Censor::probe_verdict`], so the prober's sockets stay in the shell.
//!
//! State lives in `BTreeMap`s keyed by flow, so behaviour never depends on hash order; all
//! randomness comes from one ChaCha generator seeded by the caller; all durations from the
//! profile are multiplied by the time scale (a 180 s penalty at scale 0.01 is 1.8 s).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::LabError;
use crate::dns::{self, Query, Zone};
use crate::ja4::{self, Proto};
use crate::packet::{Packet, TcpFlags, TcpSpec, Transport, build_tcp, build_udp};
use crate::profile::{BlockAction, Cidr, Profile, ReassemblyMode, in_set};
use crate::quic::{CryptoAssembler, decrypt_initial, is_v1_initial};
use crate::tls::{self, ClientHello, Parsed, RecordTracker};

pub mod classify;

use classify::{SniMatcher, fet_exemption, is_rtp, is_stun, tcp_signature, udp_signature};

/// The rules, numbered as in `CENSORS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // The names are the catalogue's.
pub enum RuleId {
    Dns = 1,
    IpBlock = 2,
    SniBlock = 3,
    Throttle = 4,
    Freeze = 5,
    Fet = 6,
    Prober = 7,
    Fingerprint = 8,
    Reassembly = 9,
    Ech = 10,
    Udp = 11,
    Signature = 12,
    TlsInTls = 13,
    AllowList = 14,
    Penalty = 15,
}

impl RuleId {
    /// Short name, as in profile tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::IpBlock => "ip_block",
            Self::SniBlock => "sni_block",
            Self::Throttle => "throttle",
            Self::Freeze => "freeze",
            Self::Fet => "fet",
            Self::Prober => "prober",
            Self::Fingerprint => "fingerprint",
            Self::Reassembly => "reassembly",
            Self::Ech => "ech",
            Self::Udp => "udp",
            Self::Signature => "signatures",
            Self::TlsInTls => "tls_in_tls",
            Self::AllowList => "allowlist",
            Self::Penalty => "penalty",
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", *self as u8, self.name())
    }
}

/// One rule firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub at: Duration,
    /// Which rule.
    pub rule: RuleId,
    /// Flow, as `client:port -> server:port/proto`.
    pub flow: String,
    /// What matched.
    pub detail: String,
}

/// A ClientHello the censor saw (TLS over TCP, or QUIC), with its fingerprints: how the lab
/// captures a client's current JA4 instead of hard-coding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenHello {
    /// When.
    pub at: Duration,
    /// Flow, as in [`Event`].
    pub flow: String,
    /// Server name, if any.
    pub sni: Option<String>,
    /// JA4.
    pub ja4: String,
    /// JA4_r.
    pub ja4_r: String,
}

/// Most hellos kept.
const MAX_HELLOS: usize = 1024;

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Forward the packet unchanged.
    pub forward: bool,
    /// Packets to send in addition (each a full IPv4 packet).
    pub inject: Vec<Vec<u8>>,
}

impl Output {
    fn pass() -> Self {
        Self {
            forward: true,
            inject: Vec::new(),
        }
    }
    fn drop() -> Self {
        Self::default()
    }
}

/// A request to actively probe a server (rule 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeJob {
    /// Job id, echoed in [`Censor::probe_verdict`].
    pub id: u64,
    /// When it is due.
    pub due: Duration,
    /// The server to probe.
    pub server: SocketAddrV4,
    /// The client's first data packet, for replay-based probes.
    pub first_packet: Vec<u8>,
}

type FlowKey = (Ipv4Addr, u16, Ipv4Addr, u16);

/// Largest number of events kept.
const MAX_EVENTS: usize = 4096;
/// Largest number of flows tracked per protocol; beyond it the oldest idle flows go first.
const MAX_FLOWS: usize = 65_536;
/// Idle TCP flow lifetime in seconds (scaled).
const TCP_IDLE_SECS: f64 = 600.0;

#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Duration,
}

impl Bucket {
    fn new(rate_bytes: f64, burst: f64, now: Duration) -> Self {
        Self {
            rate: rate_bytes,
            burst,
            tokens: burst,
            at: now,
        }
    }
    fn take(&mut self, now: Duration, n: usize) -> bool {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Most out-of-order bytes held per direction of a flow while waiting for a gap to fill.
const MAX_OUT_OF_ORDER: usize = 32 * 1024;

/// In-order stream bytes of one direction (for reassembly and record tracking). Segments that
/// arrive ahead of a gap are held (up to [`MAX_OUT_OF_ORDER`] bytes) until the gap fills.
#[derive(Debug, Clone, Default)]
struct Stream {
    next: Option<u32>,
    ahead: BTreeMap<u32, Vec<u8>>,
    ahead_bytes: usize,
}

/// Whether `a` is at or before `b` in sequence space.
fn seq_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < (1 << 30)
}

impl Stream {
    /// The bytes that became contiguous with this segment (possibly none).
    fn accept(&mut self, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
        if syn {
            self.next = Some(seq.wrapping_add(1));
            return Vec::new();
        }
        let next = *self.next.get_or_insert(seq);
        if !seq_le(seq, next) {
            // Ahead of a gap: hold it.
            if !payload.is_empty() && self.ahead_bytes + payload.len() <= MAX_OUT_OF_ORDER {
                self.ahead_bytes += payload.len();
                if let Some(old) = self.ahead.insert(seq, payload.to_vec()) {
                    self.ahead_bytes -= old.len();
                }
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut next = next;
        let take = |seq: u32, data: &[u8], next: &mut u32, out: &mut Vec<u8>| {
            let skip = usize::try_from(next.wrapping_sub(seq)).unwrap_or(usize::MAX);
            if let Some(fresh) = data.get(skip..) {
                out.extend_from_slice(fresh);
                *next = next.wrapping_add(u32::try_from(fresh.len()).unwrap_or(0));
            }
        };
        take(seq, payload, &mut next, &mut out);
        while let Some(s) = self.ahead.keys().copied().find(|s| seq_le(*s, next)) {
            let Some(data) = self.ahead.remove(&s) else {
                break;
            };
            self.ahead_bytes -= data.len();
            take(s, &data, &mut next, &mut out);
        }
        self.next = Some(next);
        out
    }
}

#[derive(Debug, Clone)]
struct TcpFlow {
    last: Duration,
    up: Stream,
    down: Stream,
    seen_data: bool,
    reasm: Vec<u8>,
    inspected: bool,
    hello: Option<ClientHello>,
    blocked: Option<RuleId>,
    pending_block: Option<RuleId>,
    hello_segment_end: u32,
    throttle: Option<(Bucket, Bucket)>,
    freeze: bool,
    s2c: u64,
    signature: Option<u32>,
    allowlisted: bool,
    up_records: RecordTracker,
    down_records: RecordTracker,
    tit_seen: usize,
    tit_client_big: usize,
    tit_server_run: usize,
}

#[derive(Debug, Clone, Default)]
struct UdpFlow {
    last: Duration,
    blocked: Option<RuleId>,
    crypto: CryptoAssembler,
    quic_done: bool,
    signature: Option<u32>,
}

/// Resolved address sets per rule.
#[derive(Debug, Clone, Default)]
struct Sets {
    clients: Vec<Cidr>,
    dns_intercept: Vec<Cidr>,
    ip_block: Vec<Cidr>,
    freeze: Vec<Cidr>,
    fet: Vec<Cidr>,
    fingerprint: Vec<Cidr>,
    quic_allow: Vec<Cidr>,
    stun_rtp: Vec<Cidr>,
    allow: Vec<Cidr>,
}

/// The censoring middlebox.
#[derive(Debug)]
pub struct Censor {
    profile: Profile,
    sets: Sets,
    sni: SniMatcher,
    zone: Zone,
    poisoned: Zone,
    scale: f64,
    rng: ChaCha8Rng,
    tcp: BTreeMap<FlowKey, TcpFlow>,
    udp: BTreeMap<FlowKey, UdpFlow>,
    penalty: BTreeMap<(Ipv4Addr, Ipv4Addr, u16), Duration>,
    server_block: BTreeMap<(Ipv4Addr, u16), Duration>,
    probes: BTreeMap<u64, ProbeJob>,
    probed: BTreeSet<SocketAddrV4>,
    next_probe_id: u64,
    fired: BTreeMap<RuleId, u64>,
    events: Vec<Event>,
    hellos: Vec<SeenHello>,
    first_flights: Vec<(SocketAddrV4, Vec<u8>)>,
    bytes: (u64, u64),
    last_expiry: Duration,
}

fn flow_name(k: &FlowKey, proto: &str) -> String {
    format!("{}:{} -> {}:{}/{proto}", k.0, k.1, k.2, k.3)
}

impl Censor {
    /// Builds a censor for `profile`. `zone` is the honest DNS of the lab (used for forged
    /// answers and the SNI↔IP check); `seed` drives every random choice; `time_scale`
    /// multiplies every duration in the profile.
    ///
    /// # Errors
    /// [`LabError::Profile`] if an address set does not resolve.
    pub fn new(profile: Profile, zone: Zone, seed: u64, time_scale: f64) -> Result<Self, LabError> {
        if !(time_scale.is_finite() && time_scale > 0.0) {
            return Err(LabError::Profile {
                path: profile.name.clone().into(),
                detail: format!("time scale must be a positive number, not {time_scale}"),
            });
        }
        let n = &profile.networks;
        let r = &profile.rules;
        let err = |detail: String| LabError::Profile {
            path: profile.name.clone().into(),
            detail,
        };
        let res = |items: Option<&Vec<String>>| -> Result<Vec<Cidr>, LabError> {
            items.map_or(Ok(Vec::new()), |i| n.resolve(i).map_err(err))
        };
        let sets = Sets {
            clients: res(Some(&vec!["clients".into()]))?,
            dns_intercept: res(r.dns.as_ref().map(|x| &x.intercept))?,
            ip_block: res(r.ip_block.as_ref().map(|x| &x.ranges))?,
            freeze: res(r.freeze.as_ref().map(|x| &x.ranges))?,
            fet: res(r.fet.as_ref().map(|x| &x.ranges))?,
            fingerprint: res(r.fingerprint.as_ref().map(|x| &x.ranges))?,
            quic_allow: res(r.udp.as_ref().map(|x| &x.quic_allow))?,
            stun_rtp: res(r.udp.as_ref().map(|x| &x.stun_rtp_ranges))?,
            allow: res(r.allowlist.as_ref().map(|x| &x.allow))?,
        };
        let sni = r
            .sni_block
            .as_ref()
            .filter(|x| x.enabled)
            .map(|x| SniMatcher {
                exact: x.exact.clone(),
                suffix: x.suffix.clone(),
                substring: x.substring.clone(),
            })
            .unwrap_or_default();
        let poisoned = Self::resolver_zone_for(&profile, &zone);
        Ok(Self {
            sets,
            sni,
            poisoned,
            zone,
            scale: time_scale,
            rng: ChaCha8Rng::seed_from_u64(seed),
            tcp: BTreeMap::new(),
            udp: BTreeMap::new(),
            penalty: BTreeMap::new(),
            server_block: BTreeMap::new(),
            probes: BTreeMap::new(),
            probed: BTreeSet::new(),
            next_probe_id: 1,
            fired: BTreeMap::new(),
            events: Vec::new(),
            hellos: Vec::new(),
            first_flights: Vec::new(),
            bytes: (0, 0),
            last_expiry: Duration::ZERO,
            profile,
        })
    }

    /// The zone the national resolver serves under `profile`: the lab's zone with rule 1's
    /// names answered NXDOMAIN.
    pub fn resolver_zone_for(profile: &Profile, zone: &Zone) -> Zone {
        let mut z = zone.clone();
        if let Some(d) = profile.rules.dns.as_ref().filter(|d| d.enabled) {
            z.nxdomain.extend(d.blocked_names.iter().cloned());
        }
        z
    }

    /// How many times each rule fired.
    pub fn fired(&self) -> &BTreeMap<RuleId, u64> {
        &self.fired
    }

    /// The most recent rule firings (at most 4,096).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The ClientHellos seen so far (at most 1,024), with their JA4.
    pub fn hellos(&self) -> &[SeenHello] {
        &self.hellos
    }

    fn saw_hello(&mut self, now: Duration, flow: String, ch: &ClientHello, proto: Proto) {
        if self.hellos.len() < MAX_HELLOS {
            let print = ja4::fingerprint(ch, proto);
            self.hellos.push(SeenHello {
                at: now,
                flow,
                sni: ch.sni.clone(),
                ja4: print.ja4,
                ja4_r: print.ja4_r,
            });
        }
    }

    /// The first client data segment of each TCP flow seen (at most 256), with its server:
    /// recorded first flights for the prober's replays (`pigeon lab probe --first-flight`).
    pub fn first_flights(&self) -> &[(SocketAddrV4, Vec<u8>)] {
        &self.first_flights
    }

    /// The profile this censor runs.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// A profile duration, scaled; clamped to [0, 10 years] so no file value can overflow.
    fn secs(&self, s: f64) -> Duration {
        const TEN_YEARS: f64 = 10.0 * 365.0 * 86_400.0;
        let v = (s * self.scale).clamp(0.0, TEN_YEARS);
        Duration::try_from_secs_f64(v).unwrap_or(Duration::ZERO)
    }

    fn fire(&mut self, now: Duration, rule: RuleId, flow: String, detail: String) {
        *self.fired.entry(rule).or_default() += 1;
        tracing::debug!(%rule, %flow, %detail, "censor rule fired");
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(Event {
            at: now,
            rule,
            flow,
            detail,
        });
    }

    /// Rule 15: after a trigger, (client, server, port) is dropped for a while.
    fn penalise(&mut self, now: Duration, k: &FlowKey) {
        let Some(p) = self.profile.rules.penalty.clone().filter(|p| p.enabled) else {
            return;
        };
        let secs = if p.secs_max > p.secs_min {
            self.rng.random_range(p.secs_min..=p.secs_max)
        } else {
            p.secs_min
        };
        let until = now.saturating_add(self.secs(secs));
        let slot = self.penalty.entry((k.0, k.2, k.3)).or_insert(until);
        *slot = (*slot).max(until);
        self.fire(
            now,
            RuleId::Penalty,
            flow_name(k, "tcp"),
            format!("penalty {secs:.0}s (scaled)"),
        );
    }

    fn penalised(&self, now: Duration, client: Ipv4Addr, server: Ipv4Addr, port: u16) -> bool {
        self.penalty
            .get(&(client, server, port))
            .is_some_and(|until| now < *until)
            || self
                .server_block
                .get(&(server, port))
                .is_some_and(|until| now < *until)
            || self
                .server_block
                .get(&(server, 0))
                .is_some_and(|until| now < *until)
    }

    fn expire(&mut self, now: Duration) {
        if now.saturating_sub(self.last_expiry) < Duration::from_millis(500) {
            return;
        }
        self.last_expiry = now;
        let tcp_idle = self.secs(TCP_IDLE_SECS);
        let udp_idle = self.secs(
            self.profile
                .rules
                .udp
                .as_ref()
                .map_or(60.0, |u| u.flow_secs),
        );
        self.tcp
            .retain(|_, f| now.saturating_sub(f.last) < tcp_idle);
        self.udp
            .retain(|_, f| now.saturating_sub(f.last) < udp_idle);
        self.penalty.retain(|_, until| now < *until);
        self.server_block.retain(|_, until| now < *until);
        for map_len in [self.tcp.len(), self.udp.len()] {
            if map_len > MAX_FLOWS {
                tracing::warn!(flows = map_len, "censor flow table over its budget");
            }
        }
    }

    /// Handles one packet crossing the censor at `now`.
    pub fn handle(&mut self, now: Duration, raw: &[u8]) -> Output {
        let Ok(pkt) = Packet::parse(raw) else {
            return Output::pass();
        };
        self.expire(now);
        let up = in_set(&self.sets.clients, pkt.src);
        let out = self.decide(now, up, &pkt);
        if out.forward {
            let slot = if up {
                &mut self.bytes.0
            } else {
                &mut self.bytes.1
            };
            *slot += raw.len() as u64;
        }
        out
    }

    /// IP bytes forwarded so far: (client→server, server→client).
    pub fn forwarded_bytes(&self) -> (u64, u64) {
        self.bytes
    }

    fn decide(&mut self, now: Duration, up: bool, pkt: &Packet) -> Output {
        match &pkt.transport {
            Transport::Tcp { .. } => self.tcp_packet(now, up, pkt),
            Transport::Udp { .. } => self.udp_packet(now, up, pkt),
            Transport::Icmp => {
                if up
                    && self
                        .profile
                        .rules
                        .allowlist
                        .as_ref()
                        .is_some_and(|a| a.enabled)
                    && !in_set(&self.sets.allow, pkt.dst)
                {
                    self.fire(
                        now,
                        RuleId::AllowList,
                        format!("{} -> {}/icmp", pkt.src, pkt.dst),
                        "ICMP outside allow-list".into(),
                    );
                    return Output::drop();
                }
                Output::pass()
            }
            Transport::Other => Output::pass(),
        }
    }

    fn allowlist_on(&self) -> bool {
        self.profile
            .rules
            .allowlist
            .as_ref()
            .is_some_and(|a| a.enabled)
    }

    fn tcp_packet(&mut self, now: Duration, up: bool, pkt: &Packet) -> Output {
        let Transport::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            payload,
        } = &pkt.transport
        else {
            return Output::pass();
        };
        let key: FlowKey = if up {
            (pkt.src, *src_port, pkt.dst, *dst_port)
        } else {
            (pkt.dst, *dst_port, pkt.src, *src_port)
        };
        if self.penalised(now, key.0, key.2, key.3) {
            return Output::drop();
        }
        let name = flow_name(&key, "tcp");
        if up {
            if let Some(ip) = self.profile.rules.ip_block.clone().filter(|r| r.enabled)
                && in_set(&self.sets.ip_block, pkt.dst)
                && (!ip.syn_only || (flags.syn && !flags.ack))
            {
                if flags.syn {
                    self.fire(now, RuleId::IpBlock, name, "destination listed".into());
                }
                return Output::drop();
            }
            if self
                .profile
                .rules
                .dns
                .as_ref()
                .is_some_and(|d| d.enabled && d.block_dot)
                && *dst_port == 853
            {
                if flags.syn {
                    self.fire(now, RuleId::Dns, name, "DoT (TCP/853)".into());
                }
                return Output::drop();
            }
        }
        // A client's SYN (without ACK) opens a new connection, even on a 4-tuple a closed one
        // used (ports are reused within minutes when many short connections are made, as a
        // session moving from leg to leg does): it starts with counts of its own, as a
        // connection tracker's entry does. What was decided about the client and server
        // (penalties, blocks) is kept apart from flows and stays.
        let new_connection = up && flags.syn && !flags.ack;
        if new_connection || !self.tcp.contains_key(&key) {
            if !self.tcp.contains_key(&key) && self.tcp.len() >= MAX_FLOWS {
                return Output::pass();
            }
            let freeze = self
                .profile
                .rules
                .freeze
                .as_ref()
                .is_some_and(|f| f.enabled)
                && in_set(&self.sets.freeze, key.2);
            self.tcp.insert(
                key,
                TcpFlow {
                    last: now,
                    up: Stream::default(),
                    down: Stream::default(),
                    seen_data: false,
                    reasm: Vec::new(),
                    inspected: false,
                    hello: None,
                    blocked: None,
                    pending_block: None,
                    hello_segment_end: 0,
                    throttle: None,
                    freeze,
                    s2c: 0,
                    signature: None,
                    allowlisted: false,
                    up_records: RecordTracker::default(),
                    down_records: RecordTracker::default(),
                    tit_seen: 0,
                    tit_client_big: 0,
                    tit_server_run: 0,
                },
            );
        }
        let mut out = if up {
            self.tcp_up(now, &key, *seq, *ack, *flags, payload)
        } else {
            self.tcp_down(now, &key, *seq, *flags, payload)
        };
        let mut penalise = false;
        if let Some(flow) = self.tcp.get_mut(&key) {
            flow.last = now;
            if out.forward
                && let Some(n) = flow.signature.as_mut()
            {
                *n += 1;
                let after = self
                    .profile
                    .rules
                    .signatures
                    .as_ref()
                    .map_or(0, |s| s.after_packets);
                if *n > after {
                    flow.blocked = Some(RuleId::Signature);
                    out.forward = false;
                    penalise = true;
                }
            }
        }
        if penalise {
            self.penalise(now, &key);
        }
        out
    }

    fn block_tcp(&mut self, now: Duration, key: &FlowKey, rule: RuleId, detail: String) {
        if let Some(f) = self.tcp.get_mut(key) {
            f.blocked = Some(rule);
        }
        self.fire(now, rule, flow_name(key, "tcp"), detail);
        self.penalise(now, key);
    }

    fn tcp_up(
        &mut self,
        now: Duration,
        key: &FlowKey,
        seq: u32,
        ack: u32,
        flags: TcpFlags,
        payload: &[u8],
    ) -> Output {
        let Some(flow) = self.tcp.get_mut(key) else {
            return Output::pass();
        };
        if flow.blocked.is_some() {
            return Output::drop();
        }
        let fresh = flow.up.accept(seq, flags.syn, payload);
        if payload.is_empty() {
            return Output::pass();
        }
        let first = !flow.seen_data;
        flow.seen_data = true;
        if let Some(rule) = flow.pending_block
            && seq.wrapping_sub(flow.hello_segment_end) < (1 << 30)
        {
            // Rule 8: the hello passed and the server answered; cut everything after it.
            self.block_tcp(now, key, rule, "after handshake".into());
            return Output::drop();
        }
        if first && let Some(out) = self.first_data(now, key, payload) {
            return out;
        }
        // Rule 9: what the matcher gets to see.
        let mode = self.profile.rules.reassembly.clone();
        let Some(flow) = self.tcp.get_mut(key) else {
            return Output::pass();
        };
        let mut hello = None;
        if !flow.inspected {
            match mode.mode {
                ReassemblyMode::A => {
                    flow.inspected = true;
                    if let Parsed::Complete(ch) = tls::parse_stream(payload) {
                        hello = Some(ch);
                    }
                }
                ReassemblyMode::B => {
                    let room = mode.limit_bytes.saturating_sub(flow.reasm.len());
                    flow.reasm
                        .extend_from_slice(&fresh[..fresh.len().min(room)]);
                    match tls::parse_stream(&flow.reasm) {
                        Parsed::Complete(ch) => {
                            flow.inspected = true;
                            hello = Some(ch);
                        }
                        Parsed::NotTls => flow.inspected = true,
                        Parsed::Incomplete => {
                            if flow.reasm.len() >= mode.limit_bytes {
                                flow.inspected = true;
                            }
                        }
                    }
                    if flow.inspected {
                        flow.reasm = Vec::new();
                    }
                }
            }
        }
        if let Some(ch) = hello {
            let flow_text = flow_name(key, "tcp");
            self.saw_hello(now, flow_text, &ch, Proto::Tcp);
            let Some(flow) = self.tcp.get_mut(key) else {
                return Output::pass();
            };
            flow.hello_segment_end = seq.wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
            flow.hello = Some(ch.clone());
            if let Some(out) = self.hello_rules(now, key, &ch, seq, ack, payload.len()) {
                return out;
            }
        }
        if let Some(out) = self.tls_in_tls(now, key, true, &fresh) {
            return out;
        }
        let Some(flow) = self.tcp.get_mut(key) else {
            return Output::pass();
        };
        if let Some((b, _)) = flow.throttle.as_mut()
            && !b.take(now, payload.len())
        {
            self.fire(
                now,
                RuleId::Throttle,
                flow_name(key, "tcp"),
                "upstream over rate".into(),
            );
            return Output::drop();
        }
        Output::pass()
    }

    /// Rules on the first client data segment: 14, 6 (and 7's trigger), 12.
    fn first_data(&mut self, now: Duration, key: &FlowKey, payload: &[u8]) -> Option<Output> {
        if self.first_flights.len() < 256 {
            self.first_flights
                .push((SocketAddrV4::new(key.2, key.3), payload.to_vec()));
        }
        let rules = self.profile.rules.clone();
        if self.allowlist_on() && !in_set(&self.sets.allow, key.2) {
            let allowed_sni = match tls::parse_stream(payload) {
                Parsed::Complete(ch) => ch.sni.is_some_and(|s| {
                    rules
                        .allowlist
                        .as_ref()
                        .is_some_and(|a| a.allow_sni.iter().any(|d| dns::name_in(&s, d)))
                }),
                _ => false,
            };
            if allowed_sni {
                if let Some(f) = self.tcp.get_mut(key) {
                    f.allowlisted = true;
                }
            } else {
                self.block_tcp(
                    now,
                    key,
                    RuleId::AllowList,
                    "first data outside allow-list".into(),
                );
                return Some(Output::drop());
            }
        }
        let (low, high) = rules
            .fet
            .as_ref()
            .map_or((3.4, 4.6), |f| (f.popcount_low, f.popcount_high));
        let suspicious = fet_exemption(payload, low, high).is_none();
        if suspicious
            && let Some(p) = rules.prober.as_ref().filter(|p| p.enabled)
            && (p.min_len..=p.max_len).contains(&payload.len())
        {
            let server = SocketAddrV4::new(key.2, key.3);
            if self.probed.insert(server) {
                let (lo, hi) = (p.delay_min_secs.ln(), p.delay_max_secs.ln());
                let delay = if hi > lo {
                    self.rng.random_range(lo..=hi).exp()
                } else {
                    p.delay_min_secs
                };
                let id = self.next_probe_id;
                self.next_probe_id += 1;
                let job = ProbeJob {
                    id,
                    due: now.saturating_add(self.secs(delay)),
                    server,
                    first_packet: payload.to_vec(),
                };
                self.fire(
                    now,
                    RuleId::Prober,
                    flow_name(key, "tcp"),
                    format!("probe scheduled in {delay:.2}s (unscaled)"),
                );
                self.probes.insert(id, job);
            }
        }
        if suspicious
            && let Some(f) = rules.fet.as_ref().filter(|f| f.enabled)
            && in_set(&self.sets.fet, key.2)
            && self.rng.random_bool(f.probability)
        {
            let until = now.saturating_add(self.secs(f.block_secs));
            self.penalty.insert((key.0, key.2, key.3), until);
            self.block_tcp(
                now,
                key,
                RuleId::Fet,
                format!("fully encrypted first packet ({} bytes)", payload.len()),
            );
            return Some(Output::drop());
        }
        if let Some(s) = rules.signatures.as_ref().filter(|s| s.enabled)
            && let Some(sig) = tcp_signature(payload, s.openvpn, s.pigeon_tcp)
        {
            self.fire(
                now,
                RuleId::Signature,
                flow_name(key, "tcp"),
                format!("{sig:?}"),
            );
            if let Some(f) = self.tcp.get_mut(key) {
                f.signature = Some(0);
            }
        }
        None
    }

    /// Rules on a ClientHello: 1 (DoH names), 3, 10, 4, 5, 8.
    fn hello_rules(
        &mut self,
        now: Duration,
        key: &FlowKey,
        ch: &ClientHello,
        seq: u32,
        ack: u32,
        len: usize,
    ) -> Option<Output> {
        let rules = self.profile.rules.clone();
        let sni = ch.sni.clone().unwrap_or_default();
        if let Some(d) = rules.dns.as_ref().filter(|d| d.enabled)
            && d.doh_snis.iter().any(|n| dns::name_in(&sni, n))
        {
            self.block_tcp(now, key, RuleId::Dns, format!("DoH/DoT server {sni}"));
            return Some(Output::drop());
        }
        if let Some(b) = rules.sni_block.as_ref().filter(|b| b.enabled)
            && let Some(m) = self.sni.matches(&sni)
        {
            self.block_tcp(now, key, RuleId::SniBlock, format!("SNI {sni} ({m})"));
            let inject = self.teardown(key, b.action, seq, ack, len);
            return Some(Output {
                forward: false,
                inject,
            });
        }
        if let Some(e) = rules.ech.as_ref().filter(|e| e.enabled)
            && ch.has_ech()
            && e.outer_sni.iter().any(|n| n.eq_ignore_ascii_case(&sni))
        {
            self.block_tcp(now, key, RuleId::Ech, format!("ECH with outer SNI {sni}"));
            return Some(Output::drop());
        }
        if let Some(t) = rules.throttle.as_ref().filter(|t| t.enabled)
            && t.suffix.iter().any(|d| dns::name_in(&sni, d))
        {
            let kbit = f64::from(self.rng.random_range(t.kbit_min..=t.kbit_max));
            let rate = kbit * 1000.0 / 8.0;
            let burst = f64::from(t.burst_bytes);
            if let Some(f) = self.tcp.get_mut(key) {
                f.throttle = Some((Bucket::new(rate, burst, now), Bucket::new(rate, burst, now)));
            }
            self.fire(
                now,
                RuleId::Throttle,
                flow_name(key, "tcp"),
                format!("SNI {sni} throttled to {kbit} kbit/s"),
            );
        }
        if let Some(fr) = rules.freeze.as_ref().filter(|f| f.enabled)
            && fr.exempt_sni.iter().any(|d| dns::name_in(&sni, d))
            && let Some(f) = self.tcp.get_mut(key)
        {
            f.freeze = false;
        }
        if let Some(fp) = rules.fingerprint.as_ref().filter(|f| f.enabled) {
            let print = ja4::fingerprint(ch, Proto::Tcp);
            let mut why = None;
            if in_set(&self.sets.fingerprint, key.2) && fp.ja4_block.contains(&print.ja4) {
                why = Some(format!("JA4 {} on a suspicious subnet", print.ja4));
            } else if fp.check_a_records && !sni.is_empty() {
                let ok = self
                    .zone
                    .records
                    .get(&sni)
                    .is_some_and(|a| a.contains(&key.2));
                if !ok {
                    why = Some(format!("{} is not an A record of {sni}", key.2));
                }
            }
            if let Some(why) = why {
                self.fire(now, RuleId::Fingerprint, flow_name(key, "tcp"), why);
                if let Some(f) = self.tcp.get_mut(key) {
                    f.pending_block = Some(RuleId::Fingerprint);
                }
            }
        }
        None
    }

    /// Packets that tear a blocked connection down, per the block action.
    fn teardown(
        &self,
        key: &FlowKey,
        action: BlockAction,
        seq: u32,
        ack: u32,
        len: usize,
    ) -> Vec<Vec<u8>> {
        let client = (key.0, key.1);
        let server = (key.2, key.3);
        let next = seq.wrapping_add(u32::try_from(len).unwrap_or(0));
        match action {
            BlockAction::Drop => Vec::new(),
            BlockAction::Rst => vec![
                build_tcp(&TcpSpec {
                    src: server,
                    dst: client,
                    seq: ack,
                    ack: Some(next),
                    flags: TcpFlags {
                        rst: true,
                        ..TcpFlags::default()
                    },
                    payload: &[],
                }),
                build_tcp(&TcpSpec {
                    src: client,
                    dst: server,
                    seq,
                    ack: None,
                    flags: TcpFlags {
                        rst: true,
                        ..TcpFlags::default()
                    },
                    payload: &[],
                }),
            ],
            BlockAction::Fin => vec![build_tcp(&TcpSpec {
                src: server,
                dst: client,
                seq: ack,
                ack: Some(next),
                flags: TcpFlags {
                    fin: true,
                    ..TcpFlags::default()
                },
                payload: &[],
            })],
        }
    }

    /// Rule 13 on in-order stream bytes of one direction.
    fn tls_in_tls(
        &mut self,
        now: Duration,
        key: &FlowKey,
        up: bool,
        fresh: &[u8],
    ) -> Option<Output> {
        let t = self
            .profile
            .rules
            .tls_in_tls
            .clone()
            .filter(|t| t.enabled)?;
        let flow = self.tcp.get_mut(key)?;
        if flow.tit_seen >= t.window_records {
            return None;
        }
        let records = if up {
            flow.up_records.feed(fresh)
        } else {
            flow.down_records.feed(fresh)
        };
        let mut hit = false;
        for (ty, len) in records {
            if flow.tit_seen >= t.window_records {
                break;
            }
            flow.tit_seen += 1;
            if ty != 0x17 {
                continue;
            }
            if up {
                flow.tit_server_run = 0;
                if len >= t.min_record_len {
                    flow.tit_client_big += 1;
                }
            } else if flow.tit_client_big >= t.min_client_records {
                flow.tit_server_run += 1;
                if flow.tit_server_run >= t.server_burst_records {
                    hit = true;
                }
            }
        }
        if hit {
            self.block_tcp(
                now,
                key,
                RuleId::TlsInTls,
                format!(
                    "{}+ client records >= {} B, then a server burst",
                    t.min_client_records, t.min_record_len
                ),
            );
            return Some(Output::drop());
        }
        None
    }

    fn tcp_down(
        &mut self,
        now: Duration,
        key: &FlowKey,
        seq: u32,
        flags: TcpFlags,
        payload: &[u8],
    ) -> Output {
        let threshold = self
            .profile
            .rules
            .freeze
            .as_ref()
            .map_or(u64::MAX, |f| f.threshold_bytes);
        let Some(flow) = self.tcp.get_mut(key) else {
            return Output::pass();
        };
        if flow.blocked.is_some() {
            return Output::drop();
        }
        let fresh = flow.down.accept(seq, flags.syn, payload);
        if payload.is_empty() {
            return Output::pass();
        }
        if flow.freeze {
            let before = flow.s2c;
            flow.s2c = flow.s2c.saturating_add(payload.len() as u64);
            if flow.s2c > threshold {
                if before <= threshold {
                    self.fire(
                        now,
                        RuleId::Freeze,
                        flow_name(key, "tcp"),
                        format!("server sent over {threshold} bytes"),
                    );
                }
                return Output::drop();
            }
        }
        if let Some(out) = self.tls_in_tls(now, key, false, &fresh) {
            return out;
        }
        let Some(flow) = self.tcp.get_mut(key) else {
            return Output::pass();
        };
        if let Some((_, b)) = flow.throttle.as_mut()
            && !b.take(now, payload.len())
        {
            return Output::drop();
        }
        Output::pass()
    }

    fn udp_packet(&mut self, now: Duration, up: bool, pkt: &Packet) -> Output {
        let Transport::Udp {
            src_port,
            dst_port,
            payload,
        } = &pkt.transport
        else {
            return Output::pass();
        };
        let key: FlowKey = if up {
            (pkt.src, *src_port, pkt.dst, *dst_port)
        } else {
            (pkt.dst, *dst_port, pkt.src, *src_port)
        };
        let name = flow_name(&key, "udp");
        if self.penalised(now, key.0, key.2, key.3) {
            return Output::drop();
        }
        let rules = self.profile.rules.clone();
        if up {
            if self.allowlist_on()
                && !in_set(&self.sets.allow, key.2)
                && !(key.2 == self.profile.networks.operator_resolver && key.3 == 53)
            {
                self.fire(
                    now,
                    RuleId::AllowList,
                    name,
                    "UDP outside allow-list".into(),
                );
                return Output::drop();
            }
            if rules.ip_block.as_ref().is_some_and(|r| r.enabled)
                && in_set(&self.sets.ip_block, key.2)
            {
                self.fire(now, RuleId::IpBlock, name, "destination listed".into());
                return Output::drop();
            }
            if rules.dns.as_ref().is_some_and(|d| d.enabled)
                && key.3 == 53
                && in_set(&self.sets.dns_intercept, key.2)
            {
                let Ok(q) = Query::parse(payload) else {
                    return Output::drop();
                };
                let blocked = self.poisoned.is_blocked(&q.name);
                self.fire(
                    now,
                    RuleId::Dns,
                    name,
                    format!(
                        "intercepted query for {}{}",
                        q.name,
                        if blocked { " (NXDOMAIN)" } else { "" }
                    ),
                );
                let reply = dns::answer(&q, &self.poisoned);
                return Output {
                    forward: false,
                    inject: vec![build_udp(key.2, key.3, key.0, key.1, &reply)],
                };
            }
            if let Some(fr) = rules
                .freeze
                .as_ref()
                .filter(|f| f.enabled && f.udp_block_secs > 0.0)
                && in_set(&self.sets.freeze, key.2)
            {
                let until = now.saturating_add(self.secs(fr.udp_block_secs));
                self.server_block.insert((key.2, 0), until);
                self.fire(
                    now,
                    RuleId::Freeze,
                    name,
                    "UDP to foreign hosting: server blocked".into(),
                );
                return Output::drop();
            }
        }
        let flow = self.udp.entry(key).or_default();
        flow.last = now;
        if flow.blocked.is_some() {
            return Output::drop();
        }
        // DNS on port 53 is exempt: a query's first byte is its random ID, and the OpenVPN
        // opcode test would otherwise take one query in 128 for a tunnel.
        if let Some(s) = rules
            .signatures
            .as_ref()
            .filter(|s| s.enabled && key.3 != 53)
        {
            if flow.signature.is_none()
                && let Some(sig) = udp_signature(payload, up, s.wireguard, s.openvpn)
            {
                flow.signature = Some(0);
                self.fire(now, RuleId::Signature, name.clone(), format!("{sig:?}"));
            }
            if let Some(flow) = self.udp.get_mut(&key)
                && let Some(n) = flow.signature.as_mut()
            {
                *n += 1;
                if *n > s.after_packets {
                    flow.blocked = Some(RuleId::Signature);
                    return Output::drop();
                }
            }
        }
        if !up {
            return Output::pass();
        }
        // Every QUIC v1 Initial is decrypted (as TSPU and the GFW do), so its hello is seen;
        // rule 3 then matches its SNI when `quic = true`.
        let mut quic_hello = None;
        if is_v1_initial(payload)
            && let Some(flow) = self.udp.get_mut(&key)
            && !flow.quic_done
            && let Ok(init) = decrypt_initial(payload)
        {
            for (off, data) in init.crypto {
                flow.crypto.add(off, data);
            }
            let parsed = tls::parse_handshake(&flow.crypto.contiguous());
            if !matches!(parsed, Parsed::Incomplete) {
                flow.quic_done = true;
                flow.crypto = CryptoAssembler::default();
            }
            if let Parsed::Complete(ch) = parsed {
                quic_hello = Some(ch);
            }
        }
        if let Some(ch) = quic_hello {
            self.saw_hello(now, name.clone(), &ch, Proto::Quic);
            let sni = ch.sni.unwrap_or_default();
            if rules
                .sni_block
                .as_ref()
                .is_some_and(|b| b.enabled && b.quic)
                && let Some(m) = self.sni.matches(&sni)
            {
                if let Some(flow) = self.udp.get_mut(&key) {
                    flow.blocked = Some(RuleId::SniBlock);
                }
                self.fire(now, RuleId::SniBlock, name, format!("QUIC SNI {sni} ({m})"));
                return Output::drop();
            }
        }
        if let Some(u) = rules.udp.as_ref().filter(|u| u.enabled) {
            if is_v1_initial(payload) && !in_set(&self.sets.quic_allow, key.2) {
                self.fire(
                    now,
                    RuleId::Udp,
                    name,
                    "QUIC Initial to a non-allow-listed address".into(),
                );
                return Output::drop();
            }
            if in_set(&self.sets.stun_rtp, key.2) && (is_stun(payload) || is_rtp(payload)) {
                self.fire(
                    now,
                    RuleId::Udp,
                    name,
                    "STUN/RTP toward messenger relays".into(),
                );
                return Output::drop();
            }
            let (low, high) = rules
                .fet
                .as_ref()
                .map_or((3.4, 4.6), |f| (f.popcount_low, f.popcount_high));
            if u.drop_high_entropy && fet_exemption(payload, low, high).is_none() {
                if let Some(f) = self.udp.get_mut(&key) {
                    f.blocked = Some(RuleId::Udp);
                }
                self.fire(now, RuleId::Udp, name, "high-entropy UDP".into());
                return Output::drop();
            }
        }
        Output::pass()
    }

    /// Probe jobs due at `now` (rule 7). Each is returned once.
    pub fn poll_probes(&mut self, now: Duration) -> Vec<ProbeJob> {
        let due: Vec<u64> = self
            .probes
            .values()
            .filter(|j| j.due <= now)
            .map(|j| j.id)
            .collect();
        due.iter().filter_map(|id| self.probes.remove(id)).collect()
    }

    /// When the next probe is due, if any.
    pub fn next_probe_at(&self) -> Option<Duration> {
        self.probes.values().map(|j| j.due).min()
    }

    /// Reports the prober's verdict on `job`: a flagged server is blocked (ip, port).
    pub fn probe_verdict(&mut self, now: Duration, job: &ProbeJob, flagged: bool, detail: &str) {
        if !flagged {
            return;
        }
        let secs = self
            .profile
            .rules
            .prober
            .as_ref()
            .map_or(86_400.0, |p| p.block_secs);
        let until = now.saturating_add(self.secs(secs));
        self.server_block
            .insert((*job.server.ip(), job.server.port()), until);
        self.fire(
            now,
            RuleId::Prober,
            format!("{}/tcp", job.server),
            format!("prober flagged the server: {detail}"),
        );
    }
}

#[cfg(test)]
mod tests;
