//! JA4 and JA4_r fingerprints of a ClientHello, per FoxIO's specification
//! (`technical_details/JA4.md` in FoxIO-LLC/ja4).
//!
//! `JA4 = a_b_c` where `a` is protocol (`t` TCP, `q` QUIC), the 2-character TLS version (highest
//! non-GREASE value of supported_versions, else legacy_version), `d`/`i` for SNI present or not,
//! 2-digit cipher and extension counts (GREASE excluded, capped at 99) and the first and last
//! characters of the first ALPN value; `b` is the first 12 hex characters of SHA-256 over the
//! sorted cipher list; `c` the same over the sorted extension list without SNI and ALPN, then `_`
//! and the signature algorithms in wire order. JA4_r shows the lists instead of their hashes.

use sha2::{Digest, Sha256};

use crate::tls::{ClientHello, ext, is_grease};

/// Which transport carried the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TLS over TCP (`t`).
    Tcp,
    /// QUIC (`q`).
    Quic,
}

/// A hello's JA4 and JA4_r.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ja4 {
    /// The hashed fingerprint, e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`.
    pub ja4: String,
    /// The raw (sorted) fingerprint.
    pub ja4_r: String,
}

fn version_code(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

fn alpn_code(alpn: &[Vec<u8>]) -> String {
    let Some(first) = alpn.first() else {
        return "00".into();
    };
    let (Some(&a), Some(&b)) = (first.first(), first.last()) else {
        return "00".into();
    };
    if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() {
        format!("{}{}", char::from(a), char::from(b))
    } else {
        let ha = hex::encode([a]);
        let hb = hex::encode([b]);
        format!("{}{}", &ha[..1], &hb[1..])
    }
}

fn hex_list(values: &[u16]) -> String {
    values
        .iter()
        .map(|v| format!("{v:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn hash12(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    hex::encode(digest)[..12].to_owned()
}

/// Computes JA4 and JA4_r of `hello` carried over `proto`.
pub fn fingerprint(hello: &ClientHello, proto: Proto) -> Ja4 {
    let ciphers: Vec<u16> = hello
        .ciphers
        .iter()
        .copied()
        .filter(|c| !is_grease(*c))
        .collect();
    let exts: Vec<u16> = hello
        .extensions
        .iter()
        .copied()
        .filter(|e| !is_grease(*e))
        .collect();
    let version = hello
        .supported_versions
        .iter()
        .copied()
        .filter(|v| !is_grease(*v))
        .max()
        .unwrap_or(hello.legacy_version);
    let a = format!(
        "{}{}{}{:02}{:02}{}",
        match proto {
            Proto::Tcp => 't',
            Proto::Quic => 'q',
        },
        version_code(version),
        if exts.contains(&ext::SERVER_NAME) {
            'd'
        } else {
            'i'
        },
        ciphers.len().min(99),
        exts.len().min(99),
        alpn_code(&hello.alpn),
    );
    let mut sorted_ciphers = ciphers;
    sorted_ciphers.sort_unstable();
    let cipher_list = hex_list(&sorted_ciphers);
    let mut sorted_exts: Vec<u16> = exts
        .into_iter()
        .filter(|e| *e != ext::SERVER_NAME && *e != ext::ALPN)
        .collect();
    sorted_exts.sort_unstable();
    let sigs: Vec<u16> = hello
        .signature_algorithms
        .iter()
        .copied()
        .filter(|s| !is_grease(*s))
        .collect();
    let mut ext_part = hex_list(&sorted_exts);
    if !sigs.is_empty() {
        ext_part.push('_');
        ext_part.push_str(&hex_list(&sigs));
    }
    let b = if sorted_ciphers.is_empty() {
        "000000000000".to_owned()
    } else {
        hash12(&cipher_list)
    };
    let c = if sorted_exts.is_empty() {
        "000000000000".to_owned()
    } else {
        hash12(&ext_part)
    };
    Ja4 {
        ja4: format!("{a}_{b}_{c}"),
        ja4_r: format!("{a}_{cipher_list}_{ext_part}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{HelloSpec, Parsed, parse_stream};

    fn parse_list(s: &str) -> Vec<u16> {
        s.split(',')
            .map(|h| u16::from_str_radix(h, 16).expect("hex"))
            .collect()
    }

    /// Builds the hello of FoxIO's worked example from its original-order lists (JA4_ro), with
    /// GREASE values sprinkled in, then parses it back from bytes as the censor would.
    fn foxio_example(exts: &str) -> ClientHello {
        let ciphers =
            "0a0a,1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035";
        let sigs = "0403,0804,0401,0503,0805,0501,0806,0601";
        let mut spec = HelloSpec {
            sni: Some("example.com".into()),
            ciphers: parse_list(ciphers),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            signature_algorithms: parse_list(sigs),
            supported_versions: vec![0x3a3a, 0x0304, 0x0303],
            ..HelloSpec::default()
        };
        spec.extensions.push((0x1a1a, Vec::new()));
        for e in parse_list(exts) {
            let body = match e {
                0x000a | 0x000b | 0x0033 | 0x002d => vec![0, 0],
                _ => Vec::new(),
            };
            spec.extensions.push((e, body));
        }
        let rec = spec.record().expect("builds");
        match parse_stream(&rec) {
            Parsed::Complete(ch) => ch,
            other => panic!("did not parse: {other:?}"),
        }
    }

    #[test]
    fn foxio_published_example() {
        // JA4.md "Example" and "Raw Output": JA4 = t13d1516h2_8daaf6152771_e5627efa2ab1.
        let ch = foxio_example(
            "001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015",
        );
        let fp = fingerprint(&ch, Proto::Tcp);
        assert_eq!(fp.ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            fp.ja4_r,
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
        );
        // Same hello without signature algorithms: the spec's `6d807ffa2a79`.
        let mut bare = ch.clone();
        bare.signature_algorithms.clear();
        assert!(
            fingerprint(&bare, Proto::Tcp)
                .ja4
                .ends_with("_6d807ffa2a79")
        );
        // No SNI extension: `i`, and the c part does not change.
        let mut no_sni = ch;
        no_sni.extensions.retain(|e| *e != 0);
        assert_eq!(
            fingerprint(&no_sni, Proto::Quic).ja4,
            "q13i1515h2_8daaf6152771_e5627efa2ab1"
        );
    }

    #[test]
    fn chrome_with_ech_and_alps() {
        // A published Chrome 143 capture (JA4 t13d1516h2_8daaf6152771_d8a2da3f94cd), from its
        // JA4_ro extension order.
        let ch = foxio_example(
            "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b",
        );
        assert_eq!(
            fingerprint(&ch, Proto::Tcp).ja4,
            "t13d1516h2_8daaf6152771_d8a2da3f94cd"
        );
    }

    #[test]
    fn alpn_edge_cases() {
        assert_eq!(alpn_code(&[]), "00");
        assert_eq!(alpn_code(&[vec![]]), "00");
        assert_eq!(alpn_code(&[b"http/1.1".to_vec()]), "h1");
        assert_eq!(alpn_code(&[vec![0xab]]), "ab");
        assert_eq!(alpn_code(&[vec![0xab, 0xcd]]), "ad");
        assert_eq!(alpn_code(&[vec![0x30, 0xab]]), "3b");
        assert_eq!(alpn_code(&[vec![0x30, 0xab, 0xcd, 0x31]]), "01");
    }
}
