//! What a connection's first bytes are, before any TLS library sees them.
//!
//! A web server answers garbage, plain HTTP on its HTTPS port and malformed ClientHellos in
//! ways of its own (nginx with OpenSSL: a 400 page for plain HTTP, a silent close for a bad
//! record, particular alerts for a broken hello). An active prober compares such reactions
//! with those of the site the server claims to be. So the front decides from the first bytes:
//! only a well-formed TLS ClientHello is handed to its own TLS stack; anything else is passed,
//! as it came, to the cover's own TLS port when there is one — whose reaction is then the
//! cover's, byte for byte — or answered the way nginx answers it.
//!
//! Sans-IO: [`classify`] looks at bytes and says what it needs.

/// Largest TLS record a ClientHello may come in.
const MAX_RECORD: usize = 16_384 + 2048;

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// Not enough bytes to tell yet.
    More,
    /// A well-formed TLS ClientHello in the first record.
    Hello,
    /// Starts like TLS (a handshake record or SSLv2) but is not a well-formed ClientHello.
    BadTls,
    /// Not TLS at all (plain HTTP, or anything else).
    NotTls,
}

/// Classifies the first bytes of a connection.
pub(crate) fn classify(bytes: &[u8]) -> Opening {
    let Some(&first) = bytes.first() else {
        return Opening::More;
    };
    if first != 0x16 {
        // nginx (and OpenSSL) take a first byte with the high bit set for SSLv2.
        return if first & 0x80 != 0 {
            Opening::BadTls
        } else {
            Opening::NotTls
        };
    }
    let Some(header) = bytes.get(..5) else {
        return Opening::More;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if header[1] != 3 || header[2] > 4 || !(4..=MAX_RECORD).contains(&len) {
        return Opening::BadTls;
    }
    let Some(body) = bytes.get(5..5 + len) else {
        return Opening::More;
    };
    if hello_is_well_formed(body) {
        Opening::Hello
    } else {
        Opening::BadTls
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Whether `record` (the first record's body) holds a whole, well-formed ClientHello.
fn hello_is_well_formed(record: &[u8]) -> bool {
    let check = || -> Option<()> {
        let mut r = Reader(record);
        (r.u8()? == 1).then_some(())?;
        let len = r.take(3)?;
        let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
        let mut hello = Reader(r.take(len)?);
        let version = hello.take(2)?;
        (version[0] == 3 && version[1] <= 4).then_some(())?;
        hello.take(32)?;
        (hello.vec8()?.len() <= 32).then_some(())?;
        let ciphers = hello.vec16()?;
        (!ciphers.is_empty() && ciphers.len() % 2 == 0).then_some(())?;
        (!hello.vec8()?.is_empty()).then_some(())?;
        if !hello.0.is_empty() {
            let mut extensions = Reader(hello.vec16()?);
            while !extensions.0.is_empty() {
                extensions.take(2)?;
                extensions.vec16()?;
            }
        }
        hello.0.is_empty().then_some(())
    };
    check().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal, well-formed ClientHello record.
    fn hello() -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let ext = [0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04];
        body.extend_from_slice(&u16::try_from(ext.len()).expect("small").to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&u16::try_from(hs.len()).expect("small").to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn hellos_garbage_and_http() {
        let h = hello();
        assert_eq!(classify(&h), Opening::Hello);
        for cut in [0, 1, 4, 5, h.len() - 1] {
            assert_eq!(classify(&h[..cut]), Opening::More, "cut at {cut}");
        }
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Opening::NotTls);
        assert_eq!(classify(&[0x80, 1, 2]), Opening::BadTls);
        // The prober's mutations: the record header, the handshake length, a random byte.
        let mut r3 = h.clone();
        r3[1] = 9;
        assert_eq!(classify(&r3), Opening::BadTls);
        let mut r5 = h.clone();
        r5[6] ^= 0x40;
        assert_eq!(classify(&r5), Opening::BadTls);
        let mut r4 = h.clone();
        r4[16] ^= 0xff;
        assert_eq!(
            classify(&r4),
            Opening::Hello,
            "a changed random is still a hello"
        );
        let mut long = h.clone();
        long[3] = 0xff;
        assert_eq!(classify(&long), Opening::BadTls);
    }
}
