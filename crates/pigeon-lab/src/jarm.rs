//! A JARM-style TLS server fingerprint: ten unusual ClientHellos, and what the server chooses
//! in each ServerHello.
//!
//! JARM (Salesforce, 2020) tells TLS stacks apart by how they answer ten hellos that vary the
//! offered version (TLS 1.1, 1.2, 1.3, and 1.3 offered with no 1.3 cipher suite), the order of
//! a long cipher list (forward, reverse, top half, bottom half, middle out), GREASE, the ALPN
//! list (common and rare protocols, in different orders) and the order of extensions; it
//! records the chosen cipher suite, version, ALPN and the ServerHello's extensions. The probes
//! here follow that published design (the byte layout is this crate's own [`HelloSpec`]); two
//! servers whose [`ServerChoice`]s differ on any probe are told apart by such a scan.

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::probe::{Payload, Probe};
use crate::tls::{HelloSpec, ext};

/// Cipher suites offered, in "forward" order: TLS 1.3's, then a long TLS 1.2 list.
const ALL_CIPHERS: &[u16] = &[
    0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc009, 0xc013, 0xc00a,
    0xc014, 0x009c, 0x009d, 0x002f, 0x0035, 0xc012, 0x000a, 0xc023, 0xc027, 0xc024, 0xc028, 0x003c,
    0x003d, 0x009e, 0x009f, 0x0033, 0x0039, 0x0067, 0x006b, 0xccaa,
];
/// Common ALPN protocols, in the order JARM's "APLN" list has them.
const ALPN_COMMON: &[&[u8]] = &[
    b"http/0.9",
    b"http/1.0",
    b"http/1.1",
    b"spdy/1",
    b"spdy/2",
    b"spdy/3",
    b"h2",
    b"h2c",
    b"hq",
];
/// A rarer order that puts HTTP/2 behind everything.
const ALPN_RARE: &[&[u8]] = &[
    b"hq",
    b"h2c",
    b"spdy/3",
    b"spdy/2",
    b"spdy/1",
    b"http/1.1",
    b"http/1.0",
    b"http/0.9",
];

#[derive(Clone, Copy)]
enum Version {
    Tls11,
    Tls12,
    Tls13,
    /// TLS 1.3 in supported_versions, but no TLS 1.3 cipher suite.
    Tls13NoSuites,
}

#[derive(Clone, Copy)]
enum Order {
    Forward,
    Reverse,
    TopHalf,
    BottomHalf,
    MiddleOut,
}

/// The ten probes: version, cipher order, GREASE, rare ALPN, extensions reversed.
const PROBES: [(Version, Order, bool, bool, bool); 10] = [
    (Version::Tls12, Order::Forward, false, false, true),
    (Version::Tls12, Order::Reverse, false, false, false),
    (Version::Tls12, Order::TopHalf, false, false, false),
    (Version::Tls12, Order::BottomHalf, false, true, false),
    (Version::Tls12, Order::MiddleOut, true, true, true),
    (Version::Tls11, Order::Forward, false, false, false),
    (Version::Tls13, Order::Forward, false, false, true),
    (Version::Tls13, Order::Reverse, false, false, false),
    (Version::Tls13NoSuites, Order::Forward, false, false, false),
    (Version::Tls13, Order::MiddleOut, true, false, true),
];

fn ordered(order: Order, ciphers: &[u16]) -> Vec<u16> {
    let half = ciphers.len() / 2;
    match order {
        Order::Forward => ciphers.to_vec(),
        Order::Reverse => ciphers.iter().rev().copied().collect(),
        Order::TopHalf => ciphers[..half].to_vec(),
        Order::BottomHalf => ciphers[half..].to_vec(),
        Order::MiddleOut => {
            // From the middle outwards, alternating sides.
            let mut out = Vec::with_capacity(ciphers.len());
            let mid = half;
            out.push(ciphers[mid]);
            for step in 1..=mid {
                if let Some(&c) = ciphers.get(mid + step) {
                    out.push(c);
                }
                out.push(ciphers[mid - step]);
            }
            out
        }
    }
}

/// The ClientHello record of probe `index` (0–9) for `sni`, with randomness from `rng`.
fn hello(index: usize, sni: Option<&str>, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (version, order, grease, rare_alpn, reversed) = PROBES[index % PROBES.len()];
    let ciphers: Vec<u16> = match version {
        Version::Tls13NoSuites => ALL_CIPHERS
            .iter()
            .copied()
            .filter(|c| c >> 8 != 0x13)
            .collect(),
        _ => ALL_CIPHERS.to_vec(),
    };
    let mut ciphers = ordered(order, &ciphers);
    if grease {
        ciphers.insert(0, 0x0a0a);
    }
    let mut extensions: Vec<(u16, Vec<u8>)> = Vec::new();
    if grease {
        extensions.push((0x1a1a, Vec::new()));
    }
    if sni.is_some() {
        extensions.push((ext::SERVER_NAME, Vec::new()));
    }
    extensions.push((0x0017, Vec::new()));
    extensions.push((0xff01, vec![0]));
    extensions.push((
        ext::SUPPORTED_GROUPS,
        vec![0, 8, 0, 0x1d, 0, 0x17, 0, 0x18, 0, 0x19],
    ));
    extensions.push((ext::EC_POINT_FORMATS, vec![1, 0]));
    extensions.push((0x0023, Vec::new()));
    extensions.push((ext::ALPN, Vec::new()));
    extensions.push((ext::SIGNATURE_ALGORITHMS, Vec::new()));
    let versions = match version {
        Version::Tls11 => Vec::new(),
        Version::Tls12 => vec![0x0303, 0x0302, 0x0301],
        Version::Tls13 | Version::Tls13NoSuites => vec![0x0304, 0x0303, 0x0302, 0x0301],
    };
    if !versions.is_empty() {
        let mut share = vec![0, 0x24, 0, 0x1d, 0, 0x20];
        let mut public = [0u8; 32];
        rng.fill(&mut public);
        share.extend_from_slice(&public);
        extensions.push((ext::KEY_SHARE, share));
        extensions.push((0x002d, vec![1, 1]));
        extensions.push((ext::SUPPORTED_VERSIONS, Vec::new()));
    }
    if reversed {
        extensions.reverse();
    }
    let mut random = [0u8; 32];
    rng.fill(&mut random);
    let spec = HelloSpec {
        sni: sni.map(str::to_owned),
        ciphers,
        extensions,
        alpn: if rare_alpn { ALPN_RARE } else { ALPN_COMMON }
            .iter()
            .map(|p| p.to_vec())
            .collect(),
        signature_algorithms: vec![
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0201,
        ],
        supported_versions: versions,
        random,
    };
    let mut record = spec.record().unwrap_or_default();
    if matches!(version, Version::Tls11) && record.len() > 10 {
        // legacy_version of the hello body: TLS 1.1.
        record[9] = 0x03;
        record[10] = 0x02;
    }
    record
}

/// The ten JARM-style probes, named `jarm-1` … `jarm-10`.
pub fn probes(sni: Option<&str>, seed: u64) -> Vec<Probe> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6a61_726d);
    (0..PROBES.len())
        .map(|i| Probe {
            name: format!("jarm-{}", i + 1),
            payload: Payload::Raw(hello(i, sni, &mut rng)),
        })
        .collect()
}

/// What a server chose in answer to one hello, as JARM records it: the cipher suite, the
/// version, the ALPN protocol and the ServerHello's extension types in order — or the alert
/// it sent, or nothing.
pub fn server_choice(answer: &[u8]) -> String {
    let Some((&kind, rest)) = answer.split_first() else {
        return "nothing".into();
    };
    match kind {
        0x15 => match rest.get(4..6) {
            Some(alert) => format!("alert {}/{}", alert[0], alert[1]),
            None => "alert (cut)".into(),
        },
        0x16 => server_hello(rest.get(4..).unwrap_or_default())
            .unwrap_or_else(|| "a handshake record that is not a ServerHello".into()),
        _ => "not TLS".into(),
    }
}

fn server_hello(msg: &[u8]) -> Option<String> {
    if *msg.first()? != 2 {
        return None;
    }
    let body = msg.get(4..)?;
    let legacy = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let sid_len = usize::from(*body.get(34)?);
    let at = 35 + sid_len;
    let cipher = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
    let mut version = legacy;
    let mut alpn = String::new();
    let mut types = Vec::new();
    if let Some(exts) = body.get(at + 3..) {
        let total = usize::from(u16::from_be_bytes([*exts.first()?, *exts.get(1)?]));
        let mut rest = exts.get(2..2 + total)?;
        while rest.len() >= 4 {
            let ty = u16::from_be_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let data = rest.get(4..4 + len)?;
            types.push(format!("{ty:04x}"));
            match ty {
                ext::SUPPORTED_VERSIONS if data.len() == 2 => {
                    version = u16::from_be_bytes([data[0], data[1]]);
                }
                ext::ALPN if data.len() > 3 => {
                    alpn = String::from_utf8_lossy(&data[3..]).into_owned();
                }
                _ => {}
            }
            rest = &rest[4 + len..];
        }
    }
    Some(format!(
        "cipher {cipher:04x} version {version:04x} alpn {} extensions {}",
        if alpn.is_empty() { "-" } else { &alpn },
        types.join("-")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Parsed, parse_stream};

    #[test]
    fn the_probes_are_ten_well_formed_hellos() {
        let probes = probes(Some("cover.test"), 1);
        assert_eq!(probes.len(), 10);
        let mut seen = std::collections::BTreeSet::new();
        for probe in &probes {
            let Payload::Raw(bytes) = &probe.payload else {
                panic!("raw");
            };
            let Parsed::Complete(hello) = parse_stream(bytes) else {
                panic!("{} does not parse", probe.name);
            };
            assert_eq!(hello.sni.as_deref(), Some("cover.test"));
            seen.insert((
                hello.legacy_version,
                hello.supported_versions.clone(),
                hello.ciphers.clone(),
                hello.extensions.clone(),
                hello.alpn.clone(),
            ));
        }
        assert_eq!(seen.len(), 10, "every probe differs");
        let Payload::Raw(no_13) = &probes[8].payload else {
            panic!("raw");
        };
        let Parsed::Complete(hello) = parse_stream(no_13) else {
            panic!("parse");
        };
        assert!(hello.ciphers.iter().all(|c| c >> 8 != 0x13));
        assert!(hello.supported_versions.contains(&0x0304));
    }

    #[test]
    fn middle_out_starts_in_the_middle() {
        assert_eq!(
            ordered(Order::MiddleOut, &[1, 2, 3, 4, 5]),
            vec![3, 4, 2, 5, 1]
        );
        assert_eq!(ordered(Order::MiddleOut, &[1, 2, 3, 4]), vec![3, 4, 2, 1]);
    }

    #[test]
    fn server_hellos_and_alerts_are_read() {
        // A TLS 1.3 ServerHello: cipher 1301, supported_versions 0304, key_share.
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0x13, 0x01, 0]);
        let exts = [
            0x00, 0x2b, 0x00, 0x02, 0x03, 0x04, 0x00, 0x33, 0x00, 0x02, 0x00, 0x1d,
        ];
        body.extend_from_slice(&u16::try_from(exts.len()).expect("len").to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![2, 0, 0, u8::try_from(body.len()).expect("len")];
        msg.extend_from_slice(&body);
        let mut record = vec![0x16, 3, 3];
        record.extend_from_slice(&u16::try_from(msg.len()).expect("len").to_be_bytes());
        record.extend_from_slice(&msg);
        assert_eq!(
            server_choice(&record),
            "cipher 1301 version 0304 alpn - extensions 002b-0033"
        );
        assert_eq!(server_choice(&[0x15, 3, 3, 0, 2, 2, 70]), "alert 2/70");
        assert_eq!(server_choice(&[]), "nothing");
        assert_eq!(server_choice(b"HTTP/1.1 400"), "not TLS");
        assert_eq!(
            server_choice(&[0x16, 3, 3, 0, 1]),
            "a handshake record that is not a ServerHello"
        );
    }
}
