//! TLS ClientHello parsing (what a DPI box reads), a ClientHello builder for probes and tests,
//! and a record-header tracker for the TLS-in-TLS classifier.
//!
//! Parsing never panics on input: every read is bounds-checked and a short buffer is reported
//! as [`Parsed::Incomplete`], so a reassembling censor can wait for more bytes.

use crate::LabError;

/// Extension numbers the rules care about.
pub mod ext {
    /// server_name.
    pub const SERVER_NAME: u16 = 0x0000;
    /// supported_groups.
    pub const SUPPORTED_GROUPS: u16 = 0x000a;
    /// ec_point_formats.
    pub const EC_POINT_FORMATS: u16 = 0x000b;
    /// signature_algorithms.
    pub const SIGNATURE_ALGORITHMS: u16 = 0x000d;
    /// application_layer_protocol_negotiation.
    pub const ALPN: u16 = 0x0010;
    /// supported_versions.
    pub const SUPPORTED_VERSIONS: u16 = 0x002b;
    /// key_share.
    pub const KEY_SHARE: u16 = 0x0033;
    /// encrypted_client_hello.
    pub const ECH: u16 = 0xfe0d;
}

/// Whether `v` is a GREASE value (RFC 8701): `0x?a?a` with both bytes equal.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// The fields of a ClientHello that fingerprints and rules use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// legacy_version from the hello body.
    pub legacy_version: u16,
    /// Cipher suites in wire order (GREASE included).
    pub ciphers: Vec<u16>,
    /// Extension types in wire order (GREASE included).
    pub extensions: Vec<u16>,
    /// The host_name in server_name, if any.
    pub sni: Option<String>,
    /// ALPN protocol names in order.
    pub alpn: Vec<Vec<u8>>,
    /// signature_algorithms in order.
    pub signature_algorithms: Vec<u16>,
    /// supported_versions in order.
    pub supported_versions: Vec<u16>,
}

impl ClientHello {
    /// Whether the hello carries an encrypted_client_hello extension (real or GREASE).
    pub fn has_ech(&self) -> bool {
        self.extensions.contains(&ext::ECH)
    }
}

/// Outcome of parsing bytes that may hold a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A full ClientHello.
    Complete(ClientHello),
    /// Looks like TLS so far; more bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.bytes(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn u16_list(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// Parses a ClientHello from the start of a TLS byte stream (records of type 22), joining
/// handshake fragments across records.
pub fn parse_stream(stream: &[u8]) -> Parsed {
    let mut handshake = Vec::new();
    let mut r = Reader::new(stream);
    loop {
        if r.is_empty() {
            break;
        }
        let Some(content_type) = r.u8() else {
            break;
        };
        if content_type != 0x16 {
            return Parsed::NotTls;
        }
        let Some(version) = r.u16() else {
            return Parsed::Incomplete;
        };
        if version >> 8 != 0x03 {
            return Parsed::NotTls;
        }
        let Some(len) = r.u16() else {
            return Parsed::Incomplete;
        };
        if len == 0 || len > 16_384 + 2048 {
            return Parsed::NotTls;
        }
        let avail = stream.len() - r.pos;
        let take = usize::from(len).min(avail);
        let Some(body) = r.bytes(take) else {
            return Parsed::Incomplete;
        };
        handshake.extend_from_slice(body);
        match parse_handshake(&handshake) {
            Parsed::Incomplete => {}
            other => return other,
        }
    }
    if stream.is_empty() {
        Parsed::Incomplete
    } else {
        parse_handshake(&handshake)
    }
}

/// Parses a ClientHello handshake message (type 1, 24-bit length, body), as carried in QUIC
/// CRYPTO frames or joined from TLS records.
pub fn parse_handshake(msg: &[u8]) -> Parsed {
    let mut r = Reader::new(msg);
    match r.u8() {
        None => return Parsed::Incomplete,
        Some(1) => {}
        Some(_) => return Parsed::NotTls,
    }
    let Some(len) = r.u24() else {
        return Parsed::Incomplete;
    };
    let Some(body) = r.bytes(len) else {
        return Parsed::Incomplete;
    };
    match parse_body(body) {
        Some(ch) => Parsed::Complete(ch),
        None => Parsed::NotTls,
    }
}

fn parse_body(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader::new(body);
    let mut ch = ClientHello {
        legacy_version: r.u16()?,
        ..ClientHello::default()
    };
    r.bytes(32)?; // random
    r.vec8()?; // session id
    ch.ciphers = u16_list(r.vec16()?);
    r.vec8()?; // compression methods
    if r.is_empty() {
        return Some(ch);
    }
    let mut exts = Reader::new(r.vec16()?);
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        ch.extensions.push(ty);
        let mut d = Reader::new(data);
        match ty {
            ext::SERVER_NAME => {
                let mut list = Reader::new(d.vec16()?);
                while !list.is_empty() {
                    let kind = list.u8()?;
                    let name = list.vec16()?;
                    if kind == 0 && ch.sni.is_none() {
                        ch.sni = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
                    }
                }
            }
            ext::ALPN => {
                let mut list = Reader::new(d.vec16()?);
                while !list.is_empty() {
                    ch.alpn.push(list.vec8()?.to_vec());
                }
            }
            ext::SIGNATURE_ALGORITHMS => ch.signature_algorithms = u16_list(d.vec16()?),
            ext::SUPPORTED_VERSIONS => ch.supported_versions = u16_list(d.vec8()?),
            _ => {}
        }
    }
    Some(ch)
}

/// A ClientHello to build: used by the prober's `openssl s_client`-style probe and by tests.
#[derive(Debug, Clone, Default)]
pub struct HelloSpec {
    /// Server name, if any.
    pub sni: Option<String>,
    /// Cipher suites in order.
    pub ciphers: Vec<u16>,
    /// Extensions in order, each with its body. `server_name`, `alpn`, `signature_algorithms`
    /// and `supported_versions` bodies are generated from the fields here when the body given is
    /// empty.
    pub extensions: Vec<(u16, Vec<u8>)>,
    /// ALPN names.
    pub alpn: Vec<Vec<u8>>,
    /// Signature algorithms.
    pub signature_algorithms: Vec<u16>,
    /// Supported versions.
    pub supported_versions: Vec<u16>,
    /// Client random.
    pub random: [u8; 32],
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_len16(out: &mut Vec<u8>, body: &[u8]) -> Result<(), LabError> {
    let len = u16::try_from(body.len())
        .map_err(|_| LabError::malformed("ClientHello spec", "field longer than 65535"))?;
    put_u16(out, len);
    out.extend_from_slice(body);
    Ok(())
}

impl HelloSpec {
    /// A typical modern TLS 1.3 hello (curl/OpenSSL-like lists) for `sni`.
    pub fn typical(sni: Option<&str>) -> Self {
        let mut extensions = vec![
            (ext::EC_POINT_FORMATS, vec![3, 0, 1, 2]),
            (ext::SUPPORTED_GROUPS, vec![0, 6, 0, 0x1d, 0, 0x17, 0, 0x18]),
            (0x0023, Vec::new()),
            (0x0016, Vec::new()),
            (0x0017, Vec::new()),
            (ext::SIGNATURE_ALGORITHMS, Vec::new()),
            (ext::SUPPORTED_VERSIONS, Vec::new()),
            (0x002d, vec![1, 1]),
        ];
        let mut key_share = vec![0, 0x24, 0, 0x1d, 0, 0x20];
        key_share.extend_from_slice(&[0x42; 32]);
        extensions.push((ext::KEY_SHARE, key_share));
        if sni.is_some() {
            extensions.insert(0, (ext::SERVER_NAME, Vec::new()));
        }
        extensions.insert(1, (ext::ALPN, Vec::new()));
        Self {
            sni: sni.map(str::to_owned),
            ciphers: vec![
                0x1302, 0x1303, 0x1301, 0xc02c, 0xc030, 0xc02b, 0xc02f, 0xcca9, 0xcca8,
            ],
            extensions,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            signature_algorithms: vec![0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401],
            supported_versions: vec![0x0304, 0x0303],
            random: [0x5a; 32],
        }
    }

    /// The handshake message (type 1, length, body).
    ///
    /// # Errors
    /// [`LabError::Malformed`] when a field does not fit its length prefix.
    pub fn handshake(&self) -> Result<Vec<u8>, LabError> {
        let mut body = Vec::new();
        put_u16(&mut body, 0x0303);
        body.extend_from_slice(&self.random);
        body.push(32);
        body.extend_from_slice(&[0x33; 32]);
        let mut ciphers = Vec::new();
        for c in &self.ciphers {
            put_u16(&mut ciphers, *c);
        }
        put_len16(&mut body, &ciphers)?;
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        for (ty, given) in &self.extensions {
            let data = if given.is_empty() {
                self.generated_body(*ty)?
            } else {
                given.clone()
            };
            put_u16(&mut exts, *ty);
            put_len16(&mut exts, &data)?;
        }
        put_len16(&mut body, &exts)?;
        let len = u32::try_from(body.len())
            .map_err(|_| LabError::malformed("ClientHello spec", "hello too long"))?;
        let mut msg = vec![1];
        msg.extend_from_slice(&len.to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        Ok(msg)
    }

    /// The hello as one TLS record.
    ///
    /// # Errors
    /// As [`HelloSpec::handshake`].
    pub fn record(&self) -> Result<Vec<u8>, LabError> {
        let msg = self.handshake()?;
        let mut out = vec![0x16, 0x03, 0x01];
        put_len16(&mut out, &msg)?;
        Ok(out)
    }

    fn generated_body(&self, ty: u16) -> Result<Vec<u8>, LabError> {
        let mut out = Vec::new();
        match ty {
            ext::SERVER_NAME => {
                if let Some(name) = &self.sni {
                    let mut entry = vec![0];
                    put_len16(&mut entry, name.as_bytes())?;
                    put_len16(&mut out, &entry)?;
                }
            }
            ext::ALPN => {
                let mut list = Vec::new();
                for p in &self.alpn {
                    let n = u8::try_from(p.len())
                        .map_err(|_| LabError::malformed("ClientHello spec", "ALPN too long"))?;
                    list.push(n);
                    list.extend_from_slice(p);
                }
                put_len16(&mut out, &list)?;
            }
            ext::SIGNATURE_ALGORITHMS => {
                let mut list = Vec::new();
                for s in &self.signature_algorithms {
                    put_u16(&mut list, *s);
                }
                put_len16(&mut out, &list)?;
            }
            ext::SUPPORTED_VERSIONS => {
                let mut list = Vec::new();
                for s in &self.supported_versions {
                    put_u16(&mut list, *s);
                }
                let n = u8::try_from(list.len())
                    .map_err(|_| LabError::malformed("ClientHello spec", "too many versions"))?;
                out.push(n);
                out.extend_from_slice(&list);
            }
            _ => {}
        }
        Ok(out)
    }
}

/// Follows TLS record headers in one direction of a stream and reports each record's type and
/// length, without buffering record bodies.
#[derive(Debug, Clone, Default)]
pub struct RecordTracker {
    header: Vec<u8>,
    skip: usize,
    broken: bool,
}

impl RecordTracker {
    /// Feeds in-order stream bytes; returns `(content_type, length)` of each record whose header
    /// completed in them. Once the stream stops looking like TLS it reports nothing more.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        while !bytes.is_empty() && !self.broken {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = 5 - self.header.len();
            let n = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 5 {
                let ty = self.header[0];
                let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if !(20..=24).contains(&ty) || self.header[1] != 3 {
                    self.broken = true;
                    break;
                }
                out.push((ty, len));
                self.skip = len;
                self.header.clear();
            }
        }
        out
    }

    /// Whether the stream stopped looking like TLS records.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_parser_agree() {
        let spec = HelloSpec::typical(Some("Example.COM"));
        let rec = spec.record().expect("builds");
        let Parsed::Complete(ch) = parse_stream(&rec) else {
            panic!("should parse");
        };
        assert_eq!(ch.sni.as_deref(), Some("example.com"));
        assert_eq!(ch.alpn[0], b"h2");
        assert_eq!(ch.ciphers, spec.ciphers);
        assert_eq!(ch.supported_versions, vec![0x0304, 0x0303]);
        assert!(!ch.has_ech());
        // Every strict prefix is incomplete, never a panic or a false verdict.
        for cut in 0..rec.len() {
            assert_eq!(parse_stream(&rec[..cut]), Parsed::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn split_across_records() {
        let msg = HelloSpec::typical(Some("a.example"))
            .handshake()
            .expect("builds");
        let (a, b) = msg.split_at(40);
        let mut stream = Vec::new();
        for part in [a, b] {
            stream.extend_from_slice(&[0x16, 3, 1]);
            stream.extend_from_slice(&u16::try_from(part.len()).expect("small").to_be_bytes());
            stream.extend_from_slice(part);
        }
        assert!(
            matches!(parse_stream(&stream), Parsed::Complete(ch) if ch.sni.as_deref() == Some("a.example"))
        );
    }

    #[test]
    fn garbage_is_not_tls() {
        assert_eq!(parse_stream(b"GET / HTTP/1.1\r\n"), Parsed::NotTls);
        assert_eq!(
            parse_stream(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0]),
            Parsed::NotTls
        );
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a0b));
    }

    #[test]
    fn tracker_reports_records() {
        let mut t = RecordTracker::default();
        let mut stream = vec![0x17, 3, 3, 0, 3, 1, 2, 3, 0x17, 3, 3, 1, 0];
        stream.extend_from_slice(&[0; 256]);
        let (a, b) = stream.split_at(10);
        let mut got = t.feed(a);
        got.extend(t.feed(b));
        assert_eq!(got, vec![(0x17, 3), (0x17, 256)]);
        assert!(t.feed(b"xx").is_empty() && !t.is_broken());
    }
}
