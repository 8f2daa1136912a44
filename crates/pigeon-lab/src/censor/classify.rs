//! Pure classifiers the rules use: the fully-encrypted-traffic exemptions (rule 6), protocol
//! signatures (rule 12), STUN/RTP recognition (rule 11) and SNI matchers (rules 3, 4, 5, 10).

use crate::dns::name_in;

/// Whether `b` is printable ASCII (0x20–0x7e).
pub fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

/// Why a first packet is exempt from rule 6, per Wu et al. (USENIX Security 2023).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemption {
    /// Average set bits per byte ≤ low or ≥ high.
    Popcount,
    /// The first 6 bytes are printable.
    PrintablePrefix,
    /// More than half the bytes are printable.
    MostlyPrintable,
    /// A run of more than 20 printable bytes.
    PrintableRun,
    /// Starts like a TLS record or an HTTP request.
    Protocol,
}

/// The exemption that applies to a first data packet, or `None` if it looks fully encrypted.
pub fn fet_exemption(p: &[u8], low: f64, high: f64) -> Option<Exemption> {
    if p.is_empty() {
        return Some(Exemption::Popcount);
    }
    let ones: u32 = p.iter().map(|b| b.count_ones()).sum();
    let per_byte = f64::from(ones) / p.len() as f64;
    if per_byte <= low || per_byte >= high {
        return Some(Exemption::Popcount);
    }
    if p.len() >= 6 && p[..6].iter().all(|b| printable(*b)) {
        return Some(Exemption::PrintablePrefix);
    }
    let count = p.iter().filter(|b| printable(**b)).count();
    if count * 2 > p.len() {
        return Some(Exemption::MostlyPrintable);
    }
    let mut run = 0usize;
    for b in p {
        run = if printable(*b) { run + 1 } else { 0 };
        if run > 20 {
            return Some(Exemption::PrintableRun);
        }
    }
    let tls = p.len() >= 3 && (p[0] == 0x16 || p[0] == 0x17) && p[1] == 0x03 && p[2] <= 0x09;
    let http = [&b"GET "[..], b"PUT ", b"POST ", b"HEAD "]
        .iter()
        .any(|m| p.starts_with(m));
    if tls || http {
        return Some(Exemption::Protocol);
    }
    None
}

/// A protocol signature rule 12 knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// WireGuard handshake initiation or response.
    WireGuard,
    /// OpenVPN hard reset.
    OpenVpn,
    /// Pigeonpost's plain `tcp` transport.
    PigeonTcp,
}

/// Lengths of Pigeonpost's first `tcp` record body: Noise IK message 1 = e (32) + encrypted s
/// (48) + encrypted padded hello (hello + 16). `docs/PROTOCOL.md` says the hello is padded to
/// 96 bytes (192); `pigeon-proto` today pads it to 95 (191). Both are matched.
pub const PIGEON_TCP_HELLO: [usize; 2] = [191, 192];

/// Matches the first client payload of a TCP flow.
pub fn tcp_signature(p: &[u8], openvpn: bool, pigeon: bool) -> Option<Signature> {
    if p.len() < 3 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([p[0], p[1]]));
    if pigeon && PIGEON_TCP_HELLO.contains(&len) && p.len() == 2 + len {
        return Some(Signature::PigeonTcp);
    }
    // OpenVPN over TCP: u16 length, then P_CONTROL_HARD_RESET_CLIENT_V2 (7) or V3 (10) with
    // key id 0, then an 8-byte session id.
    if openvpn && len + 2 == p.len() && (14..=300).contains(&len) && matches!(p[2], 0x38 | 0x50) {
        return Some(Signature::OpenVpn);
    }
    None
}

/// Matches a UDP payload. `upstream` is client → server.
pub fn udp_signature(
    p: &[u8],
    upstream: bool,
    wireguard: bool,
    openvpn: bool,
) -> Option<Signature> {
    if wireguard && p.len() >= 4 && p[1..4] == [0, 0, 0] {
        if upstream && p.len() == 148 && p[0] == 1 {
            return Some(Signature::WireGuard);
        }
        if !upstream && p.len() == 92 && p[0] == 2 {
            return Some(Signature::WireGuard);
        }
    }
    if openvpn && upstream && (14..=300).contains(&p.len()) && matches!(p[0], 0x38 | 0x50) {
        return Some(Signature::OpenVpn);
    }
    None
}

/// STUN: magic cookie 0x2112A442 at bytes 4–7 and a message type with the top two bits clear.
pub fn is_stun(p: &[u8]) -> bool {
    p.len() >= 20 && p[0] & 0xc0 == 0 && p[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// RTP (RFC 3550): version 2 and a static or dynamic payload type, at least a header long.
pub fn is_rtp(p: &[u8]) -> bool {
    if p.len() < 12 || p[0] & 0xc0 != 0x80 {
        return false;
    }
    let pt = p[1] & 0x7f;
    pt <= 34 || (96..=127).contains(&pt)
}

/// SNI matchers of rule 3: exact names, domains with subdomains, and raw substrings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniMatcher {
    /// Exact names.
    pub exact: Vec<String>,
    /// Domains with subdomains.
    pub suffix: Vec<String>,
    /// Substrings anywhere in the name.
    pub substring: Vec<String>,
}

impl SniMatcher {
    /// The pattern that matches `sni`, if any.
    pub fn matches(&self, sni: &str) -> Option<String> {
        let sni = sni.to_ascii_lowercase();
        if let Some(e) = self.exact.iter().find(|e| e.eq_ignore_ascii_case(&sni)) {
            return Some(format!("exact {e}"));
        }
        if let Some(s) = self
            .suffix
            .iter()
            .find(|s| name_in(&sni, &s.to_ascii_lowercase()))
        {
            return Some(format!("suffix {s}"));
        }
        self.substring
            .iter()
            .find(|s| sni.contains(&s.to_ascii_lowercase()))
            .map(|s| format!("substring {s}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exemptions() {
        let (lo, hi) = (3.4, 4.6);
        assert!(fet_exemption(b"GET / HTTP/1.1\r\n", lo, hi).is_some());
        assert_eq!(
            fet_exemption(b"{~}|{~}|{~}|{~}|", lo, hi),
            Some(Exemption::Popcount)
        );
        assert_eq!(
            fet_exemption(&[0u8; 100], lo, hi),
            Some(Exemption::Popcount)
        );
        assert_eq!(
            fet_exemption(&[0xffu8; 100], lo, hi),
            Some(Exemption::Popcount)
        );
        // 0x0f and 0xf0 have popcount 4 and are not printable: fully encrypted-looking.
        let mut enc: Vec<u8> = (0..200)
            .map(|i| if i % 2 == 0 { 0x0f } else { 0xf0 })
            .collect();
        assert_eq!(fet_exemption(&enc, lo, hi), None);
        enc[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        assert_eq!(fet_exemption(&enc, lo, hi), Some(Exemption::Protocol));
        let mut run = vec![0x0fu8; 100];
        run[40..62].copy_from_slice(&[b'3'; 22]);
        assert_eq!(fet_exemption(&run, lo, hi), Some(Exemption::PrintableRun));
    }

    #[test]
    fn signatures() {
        let mut wg = vec![0u8; 148];
        wg[0] = 1;
        assert_eq!(
            udp_signature(&wg, true, true, true),
            Some(Signature::WireGuard)
        );
        let mut wg_resp = vec![0u8; 92];
        wg_resp[0] = 2;
        assert_eq!(
            udp_signature(&wg_resp, false, true, true),
            Some(Signature::WireGuard)
        );
        assert_eq!(udp_signature(&wg[..147], true, true, true), None);
        let mut pp = vec![0x00, 0xbf];
        pp.extend_from_slice(&[0x5a; 191]);
        assert_eq!(tcp_signature(&pp, true, true), Some(Signature::PigeonTcp));
        assert_eq!(tcp_signature(&pp, true, false), None);
        let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[0; 12]);
        assert!(is_stun(&stun) && !is_rtp(&stun));
        assert!(is_rtp(&[0x80, 0x60, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]));
    }

    #[test]
    fn sni_matchers() {
        let m = SniMatcher {
            exact: vec!["x.example".into()],
            suffix: vec!["signal.org".into()],
            substring: vec!["t.co".into()],
        };
        assert!(m.matches("X.example").is_some());
        assert!(m.matches("chat.signal.org").is_some());
        assert!(m.matches("notsignal.org").is_none());
        // The substring bug: `t.co` also hits these.
        assert!(m.matches("reddit.com").is_some());
        assert!(m.matches("microsoft.com").is_some());
        assert!(m.matches("example.org").is_none());
    }
}
