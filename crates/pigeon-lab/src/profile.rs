//! Profiles: which rules a censor runs and with what parameters, as TOML files a user can copy
//! and edit.
//!
//! A profile names the lab's address sets (`[networks]`, with labelled defaults) and switches
//! rules on by giving their table under `[rules]`. A table present is a rule on (unless it says
//! `enabled = false`); every field has the default documented on it, taken from `CENSORS.md`.
//! Parsing is strict: unknown keys, bad CIDRs and unknown labels are errors that name the
//! problem and its place.
//!
//! The built-in profiles live in `profiles/*.toml` in this crate and are compiled in;
//! [`Profile::load`] accepts either a built-in name or a path.

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::LabError;

/// The built-in profiles, by name, with their TOML text.
pub const BUILTIN: &[(&str, &str)] = &[
    ("open", include_str!("../profiles/open.toml")),
    (
        "ru-home-2026",
        include_str!("../profiles/ru-home-2026.toml"),
    ),
    (
        "ru-mobile-2026",
        include_str!("../profiles/ru-mobile-2026.toml"),
    ),
    (
        "ru-mobile-allowlist",
        include_str!("../profiles/ru-mobile-allowlist.toml"),
    ),
    ("cn-gfw", include_str!("../profiles/cn-gfw.toml")),
];

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR"))?;
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?} has a bad prefix length"))?;
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `ip` is in any block of `set`.
pub fn in_set(set: &[Cidr], ip: Ipv4Addr) -> bool {
    set.iter().any(|c| c.contains(ip))
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The lab's labelled address sets. Rule fields that take ranges accept these labels or
/// literal CIDRs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Networks {
    /// Where clients live; decides a packet's direction. Default `10.77.1.0/24`.
    pub clients: Vec<String>,
    /// Foreign hosting (VPS, CDN) ranges. Default `203.0.113.0/24`.
    pub foreign_hosting: Vec<String>,
    /// Domestic ranges. Default `198.51.100.0/24`.
    pub domestic: Vec<String>,
    /// Ranges on a mobile operator's allow-list. Default `198.51.100.0/24` (domestic).
    pub allow_listed: Vec<String>,
    /// Messenger relay (voice/video) ranges. Default `192.0.2.128/25`.
    pub messenger_relays: Vec<String>,
    /// Public resolvers whose UDP/53 the censor intercepts. Default `192.0.2.53/32`.
    pub public_resolvers: Vec<String>,
    /// The operator's (national) resolver. Default `198.51.100.53`.
    pub operator_resolver: Ipv4Addr,
}

impl Default for Networks {
    fn default() -> Self {
        Self {
            clients: strs(&["10.77.1.0/24"]),
            foreign_hosting: strs(&["203.0.113.0/24"]),
            domestic: strs(&["198.51.100.0/24"]),
            allow_listed: strs(&["198.51.100.0/24"]),
            messenger_relays: strs(&["192.0.2.128/25"]),
            public_resolvers: strs(&["192.0.2.53/32"]),
            operator_resolver: Ipv4Addr::new(198, 51, 100, 53),
        }
    }
}

impl Networks {
    /// Resolves a list of labels and CIDRs into blocks.
    ///
    /// # Errors
    /// A message naming the entry that is neither a label nor a CIDR.
    pub fn resolve(&self, items: &[String]) -> Result<Vec<Cidr>, String> {
        let mut out = Vec::new();
        for item in items {
            let labelled = match item.as_str() {
                "clients" => Some(&self.clients),
                "foreign_hosting" => Some(&self.foreign_hosting),
                "domestic" => Some(&self.domestic),
                "allow_listed" => Some(&self.allow_listed),
                "messenger_relays" => Some(&self.messenger_relays),
                "public_resolvers" => Some(&self.public_resolvers),
                _ => None,
            };
            match labelled {
                Some(list) => {
                    for c in list {
                        out.push(c.parse().map_err(|e| format!("in networks: {e}"))?);
                    }
                }
                None => out.push(item.parse().map_err(|e: String| {
                    format!("{e} (labels: clients, foreign_hosting, domestic, allow_listed, messenger_relays, public_resolvers)")
                })?),
            }
        }
        Ok(out)
    }
}

/// How the censor cuts a connection it blocks (rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    /// Silently drop every later packet (default).
    #[default]
    Drop,
    /// Send RST both ways, then drop.
    Rst,
    /// Send FIN to the client, then drop.
    Fin,
}

/// TCP reassembly before matching (rule 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ReassemblyMode {
    /// Mode A: only the first data segment is matched (default).
    #[default]
    A,
    /// Mode B: reassemble up to `limit_bytes` before matching.
    B,
}

/// Rule 1: DNS poisoning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Domains answered NXDOMAIN (with subdomains). Default `["whatsapp.com", "whatsapp.net"]`.
    pub blocked_names: Vec<String>,
    /// Resolvers whose UDP/53 is intercepted and answered by the censor. Default
    /// `["public_resolvers"]`.
    pub intercept: Vec<String>,
    /// DoH/DoT server names blocked by SNI. Default: Google, Cloudflare, Quad9, AdGuard, OpenDNS.
    pub doh_snis: Vec<String>,
    /// Drop TCP/853 (DoT) to anywhere. Default true.
    pub block_dot: bool,
}

impl Default for DnsRule {
    fn default() -> Self {
        Self {
            enabled: true,
            blocked_names: strs(&["whatsapp.com", "whatsapp.net"]),
            intercept: strs(&["public_resolvers"]),
            doh_snis: strs(&[
                "dns.google",
                "cloudflare-dns.com",
                "one.one.one.one",
                "dns.quad9.net",
                "dns.adguard-dns.com",
                "doh.opendns.com",
            ]),
            block_dot: true,
        }
    }
}

/// Rule 2: IP / CIDR block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpBlockRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Blocked destinations. Default `["203.0.113.66/32"]`.
    pub ranges: Vec<String>,
    /// Drop only SYNs (true) or everything (false, default).
    pub syn_only: bool,
}

impl Default for IpBlockRule {
    fn default() -> Self {
        Self {
            enabled: true,
            ranges: strs(&["203.0.113.66/32"]),
            syn_only: false,
        }
    }
}

/// Rule 3: SNI block, TLS and QUIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SniBlockRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Exact names. Default `[]`.
    pub exact: Vec<String>,
    /// Domains with their subdomains. Default `["blocked.example", "signal.org"]`.
    pub suffix: Vec<String>,
    /// Substrings (the `t.co` bug). Default `["t.co"]`.
    pub substring: Vec<String>,
    /// Also match QUIC v1 Initials. Default true.
    pub quic: bool,
    /// What to do. Default `drop`.
    pub action: BlockAction,
}

impl Default for SniBlockRule {
    fn default() -> Self {
        Self {
            enabled: true,
            exact: Vec::new(),
            suffix: strs(&["blocked.example", "signal.org"]),
            substring: strs(&["t.co"]),
            quic: true,
            action: BlockAction::Drop,
        }
    }
}

/// Rule 4: SNI throttle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Throttled domains. Default `["twitter.com", "twimg.com", "telegram.org", "throttled.example"]`.
    pub suffix: Vec<String>,
    /// Slowest rate drawn per flow, kbit/s. Default 130.
    pub kbit_min: u32,
    /// Fastest rate drawn per flow, kbit/s. Default 150.
    pub kbit_max: u32,
    /// Bucket depth in bytes. Default 8192.
    pub burst_bytes: u32,
}

impl Default for ThrottleRule {
    fn default() -> Self {
        Self {
            enabled: true,
            suffix: strs(&[
                "twitter.com",
                "twimg.com",
                "telegram.org",
                "throttled.example",
            ]),
            kbit_min: 130,
            kbit_max: 150,
            burst_bytes: 8192,
        }
    }
}

/// Rule 5: the "16–20" freeze.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FreezeRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Destinations watched. Default `["foreign_hosting"]`.
    pub ranges: Vec<String>,
    /// SNIs (with subdomains) exempt. Default `["exempt.example"]`.
    pub exempt_sni: Vec<String>,
    /// Server→client payload bytes allowed per connection. Default 16384 (sweep 14–32 KiB).
    pub threshold_bytes: u64,
    /// Any client UDP to the ranges blocks that server for this long. Default 600 s; 0 = off.
    pub udp_block_secs: f64,
}

impl Default for FreezeRule {
    fn default() -> Self {
        Self {
            enabled: true,
            ranges: strs(&["foreign_hosting"]),
            exempt_sni: strs(&["exempt.example"]),
            threshold_bytes: 16_384,
            udp_block_secs: 600.0,
        }
    }
}

/// Rule 6: fully-encrypted-traffic detection on the first client data packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Destinations gated. Default `["foreign_hosting"]`.
    pub ranges: Vec<String>,
    /// Block probability for a non-exempt packet. Default 0.263.
    pub probability: f64,
    /// Exempt when popcount/len ≤ this. Default 3.4.
    pub popcount_low: f64,
    /// Exempt when popcount/len ≥ this. Default 4.6.
    pub popcount_high: f64,
    /// (client, server, port) blocked this long. Default 180 s.
    pub block_secs: f64,
}

impl Default for FetRule {
    fn default() -> Self {
        Self {
            enabled: true,
            ranges: strs(&["foreign_hosting"]),
            probability: 0.263,
            popcount_low: 3.4,
            popcount_high: 4.6,
            block_secs: 180.0,
        }
    }
}

/// Rule 7: active probing after a suspicious flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProberRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Shortest delay before probing, seconds (log-uniform). Default 0.28.
    pub delay_min_secs: f64,
    /// Longest delay, seconds. Default 3600.
    pub delay_max_secs: f64,
    /// Shortest first packet replayed. Default 160.
    pub min_len: usize,
    /// Longest first packet replayed. Default 999.
    pub max_len: usize,
    /// A server the prober flags is blocked (ip, port) this long. Default 86400 s.
    pub block_secs: f64,
}

impl Default for ProberRule {
    fn default() -> Self {
        Self {
            enabled: true,
            delay_min_secs: 0.28,
            delay_max_secs: 3600.0,
            min_len: 160,
            max_len: 999,
            block_secs: 86_400.0,
        }
    }
}

/// Rule 8: TLS fingerprint + address scoring, and SNI↔IP consistency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FingerprintRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// JA4 strings of known tools. Default: stock rustls 0.23 (ring and aws-lc-rs providers).
    pub ja4_block: Vec<String>,
    /// "Suspicious subnets" the JA4 list applies to. Default `["foreign_hosting"]`.
    pub ranges: Vec<String>,
    /// Block when the destination is not among the SNI's A-records in the censor's DNS.
    /// Default true.
    pub check_a_records: bool,
}

impl Default for FingerprintRule {
    fn default() -> Self {
        Self {
            enabled: true,
            ja4_block: Vec::new(),
            ranges: strs(&["foreign_hosting"]),
            check_a_records: true,
        }
    }
}

/// Rule 9: TCP reassembly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReassemblyRule {
    /// Mode. Default `A`.
    pub mode: ReassemblyMode,
    /// Mode B's buffer. Default 16384.
    pub limit_bytes: usize,
}

impl Default for ReassemblyRule {
    fn default() -> Self {
        Self {
            mode: ReassemblyMode::A,
            limit_bytes: 16_384,
        }
    }
}

/// Rule 10: ECH.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Outer SNIs that, with extension 0xfe0d, are dropped. Default `["cloudflare-ech.com"]`.
    pub outer_sni: Vec<String>,
}

impl Default for EchRule {
    fn default() -> Self {
        Self {
            enabled: true,
            outer_sni: strs(&["cloudflare-ech.com"]),
        }
    }
}

/// Rule 11: UDP policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// QUIC v1 Initials pass only to these. Default `["allow_listed", "domestic"]`.
    pub quic_allow: Vec<String>,
    /// Drop all high-entropy UDP (mobile profiles). Default false.
    pub drop_high_entropy: bool,
    /// UDP flow state lifetime (idle), seconds. Default 60.
    pub flow_secs: f64,
    /// STUN and RTP dropped toward these. Default `["messenger_relays"]`.
    pub stun_rtp_ranges: Vec<String>,
}

impl Default for UdpRule {
    fn default() -> Self {
        Self {
            enabled: true,
            quic_allow: strs(&["allow_listed", "domestic"]),
            drop_high_entropy: false,
            flow_secs: 60.0,
            stun_rtp_ranges: strs(&["messenger_relays"]),
        }
    }
}

/// Rule 12: protocol signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignatureRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// WireGuard handshake (148-byte initiation `01 00 00 00`, 92-byte response). Default true.
    pub wireguard: bool,
    /// OpenVPN hard-reset opcodes (UDP, and TCP behind a length). Default true.
    pub openvpn: bool,
    /// Pigeonpost's plain `tcp` transport (a 194-byte first record `00 c0` + Noise IK
    /// message 1). Default true.
    pub pigeon_tcp: bool,
    /// Packets of a matched flow let through before dropping. Default 2.
    pub after_packets: u32,
}

impl Default for SignatureRule {
    fn default() -> Self {
        Self {
            enabled: true,
            wireguard: true,
            openvpn: true,
            pigeon_tcp: true,
            after_packets: 2,
        }
    }
}

/// Rule 13: TLS-in-TLS classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsInTlsRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Records examined per connection (both directions). Default 20.
    pub window_records: usize,
    /// Client application-data records needed before the server's burst. Default 3.
    pub min_client_records: usize,
    /// Size a client record must reach to count. Default 411.
    pub min_record_len: usize,
    /// Server application-data records in a row that make the burst. Default 2.
    pub server_burst_records: usize,
}

impl Default for TlsInTlsRule {
    fn default() -> Self {
        Self {
            enabled: true,
            window_records: 20,
            min_client_records: 3,
            min_record_len: 411,
            server_burst_records: 2,
        }
    }
}

/// Rule 14: mobile allow-list mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowListRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Allowed destinations. Default `["allow_listed"]`.
    pub allow: Vec<String>,
    /// SNIs (with subdomains) allowed anywhere. Default `[]`.
    pub allow_sni: Vec<String>,
}

impl Default for AllowListRule {
    fn default() -> Self {
        Self {
            enabled: true,
            allow: strs(&["allow_listed"]),
            allow_sni: Vec::new(),
        }
    }
}

/// Rule 15: penalty box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PenaltyRule {
    /// Switch. Default true.
    pub enabled: bool,
    /// Shortest penalty, seconds. Default 60.
    pub secs_min: f64,
    /// Longest penalty, seconds. Default 180.
    pub secs_max: f64,
}

impl Default for PenaltyRule {
    fn default() -> Self {
        Self {
            enabled: true,
            secs_min: 60.0,
            secs_max: 180.0,
        }
    }
}

/// The rule tables; an absent table is a rule off.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // Each field's type documents its rule.
pub struct Rules {
    pub dns: Option<DnsRule>,
    pub ip_block: Option<IpBlockRule>,
    pub sni_block: Option<SniBlockRule>,
    pub throttle: Option<ThrottleRule>,
    pub freeze: Option<FreezeRule>,
    pub fet: Option<FetRule>,
    pub prober: Option<ProberRule>,
    pub fingerprint: Option<FingerprintRule>,
    #[serde(default)]
    pub reassembly: ReassemblyRule,
    pub ech: Option<EchRule>,
    pub udp: Option<UdpRule>,
    pub signatures: Option<SignatureRule>,
    pub tls_in_tls: Option<TlsInTlsRule>,
    pub allowlist: Option<AllowListRule>,
    pub penalty: Option<PenaltyRule>,
}

/// A censor profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name (`ru-home-2026`).
    pub name: String,
    /// One line on what network it models.
    #[serde(default)]
    pub description: String,
    /// Transports expected to get through this profile (for the runner's exit status).
    #[serde(default)]
    pub expect_pass: Vec<String>,
    /// Transports expected to get through via a volunteer proxy abroad to a relay whose
    /// address is on the block list (`pigeon lab run --via proxy`).
    #[serde(default)]
    pub expect_pass_via_proxy: Vec<String>,
    /// Transports expected to get through via a domestic hop whose onward leg crosses
    /// [`Profile::hop_onward`] (`pigeon lab run --via hop`).
    #[serde(default)]
    pub expect_pass_via_hop: Vec<String>,
    /// Transports expected to get through when each person has two relays and the first is on
    /// a blocked address (`pigeon lab run --via relays`).
    #[serde(default)]
    pub expect_pass_via_relays: Vec<String>,
    /// Transports expected to get through an existing conversation's mirror when its home
    /// relay is on a blocked address (`pigeon lab run --via mirror`).
    #[serde(default)]
    pub expect_pass_via_mirror: Vec<String>,
    /// The profile a domestic hop's onward leg crosses (a built-in name); default: this one.
    /// A mobile allow-list's hop sits in a domestic cloud, whose way abroad is fixed-line.
    #[serde(default)]
    pub hop_onward: Option<String>,
    /// Address sets.
    #[serde(default)]
    pub networks: Networks,
    /// Rules.
    #[serde(default)]
    pub rules: Rules,
}

impl Profile {
    /// Parses a profile from TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`LabError::Profile`] saying what is wrong and where.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, LabError> {
        let err = |detail: String| LabError::Profile {
            path: origin.to_path_buf(),
            detail,
        };
        let profile: Profile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        profile.validate().map_err(err)?;
        Ok(profile)
    }

    /// Loads a built-in profile by name, or a file by path.
    ///
    /// # Errors
    /// [`LabError::UnknownProfile`], [`LabError::Io`] or [`LabError::Profile`].
    pub fn load(name_or_path: &str) -> Result<Self, LabError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, Path::new(name_or_path));
        }
        let path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") || path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LabError::io(format!("reading profile {}", path.display()), e))?;
            return Self::parse(&text, path);
        }
        Err(LabError::UnknownProfile {
            name: name_or_path.to_owned(),
            known: BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Every built-in profile.
    ///
    /// # Errors
    /// If a built-in file is invalid (a bug caught by the tests).
    pub fn builtins() -> Result<Vec<Self>, LabError> {
        BUILTIN
            .iter()
            .map(|(n, t)| Self::parse(t, Path::new(n)))
            .collect()
    }

    /// The profile a domestic hop's onward leg crosses: [`Profile::hop_onward`], else this one.
    ///
    /// # Errors
    /// [`LabError::Profile`] if the named profile does not load.
    pub fn onward(&self) -> Result<Self, LabError> {
        match &self.hop_onward {
            Some(name) => Self::load(name),
            None => Ok(self.clone()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        let n = &self.networks;
        let r = &self.rules;
        let check = |what: &str, items: &[String]| {
            n.resolve(items)
                .map(|_| ())
                .map_err(|e| format!("rules.{what}: {e}"))
        };
        n.resolve(&[
            "clients".into(),
            "foreign_hosting".into(),
            "domestic".into(),
        ])?;
        n.resolve(&["allow_listed".into(), "messenger_relays".into()])?;
        n.resolve(&["public_resolvers".into()])?;
        if let Some(onward) = &self.hop_onward
            && !BUILTIN.iter().any(|(name, _)| name == onward)
        {
            return Err(format!(
                "hop_onward: {onward:?} is not a built-in profile (known: {})",
                BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(x) = &r.dns {
            check("dns.intercept", &x.intercept)?;
        }
        if let Some(x) = &r.ip_block {
            check("ip_block.ranges", &x.ranges)?;
        }
        if let Some(x) = &r.throttle
            && (x.kbit_min == 0 || x.kbit_min > x.kbit_max)
        {
            return Err("rules.throttle: need 0 < kbit_min <= kbit_max".into());
        }
        if let Some(x) = &r.freeze {
            check("freeze.ranges", &x.ranges)?;
        }
        if let Some(x) = &r.fet {
            check("fet.ranges", &x.ranges)?;
            if !(0.0..=1.0).contains(&x.probability) {
                return Err("rules.fet.probability must be within 0..=1".into());
            }
        }
        if let Some(x) = &r.prober
            && !(x.delay_min_secs > 0.0 && x.delay_min_secs <= x.delay_max_secs)
        {
            return Err("rules.prober: need 0 < delay_min_secs <= delay_max_secs".into());
        }
        if let Some(x) = &r.fingerprint {
            check("fingerprint.ranges", &x.ranges)?;
        }
        if let Some(x) = &r.udp {
            check("udp.quic_allow", &x.quic_allow)?;
            check("udp.stun_rtp_ranges", &x.stun_rtp_ranges)?;
        }
        if let Some(x) = &r.allowlist {
            check("allowlist.allow", &x.allow)?;
        }
        if let Some(x) = &r.penalty
            && !(x.secs_min >= 0.0 && x.secs_min <= x.secs_max)
        {
            return Err("rules.penalty: need 0 <= secs_min <= secs_max".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        let all = Profile::builtins().expect("built-ins are valid");
        assert_eq!(all.len(), 5);
        let open = &all[0];
        assert!(open.rules.sni_block.is_none() && open.rules.dns.is_none());
        let cn = Profile::load("cn-gfw").expect("loads");
        assert_eq!(cn.rules.reassembly.mode, ReassemblyMode::B);
        assert!(cn.rules.prober.is_some() && cn.rules.fet.is_some());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Profile::parse(
            "name = \"x\"\n[rules.sni_block]\nsufix = []\n",
            Path::new("x.toml"),
        )
        .expect_err("typo");
        assert!(e.to_string().contains("sufix"), "{e}");
        let e = Profile::parse(
            "name = \"x\"\n[rules.fet]\nranges = [\"mars\"]\n",
            Path::new("x"),
        )
        .expect_err("bad label");
        assert!(e.to_string().contains("mars"), "{e}");
        let e = Profile::load("nope").expect_err("unknown");
        assert!(e.to_string().contains("ru-home-2026"), "{e}");
    }

    #[test]
    fn cidr() {
        let c: Cidr = "203.0.113.0/24".parse().expect("cidr");
        assert!(c.contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(!c.contains(Ipv4Addr::new(203, 0, 114, 9)));
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .expect("any")
                .contains(Ipv4Addr::LOCALHOST)
        );
    }
}
