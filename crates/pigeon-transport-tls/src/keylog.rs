//! TLS 1.3 traffic secrets taken from BoringSSL's key log, so that a connection's records can be
//! protected by [`crate::record`] once BoringSSL's handshake is done and its connection state
//! is freed: the front's ECH handshakes ([`crate::ech`]) and the client's tunnel legs
//! ([`crate::client`]) both hand over this way.
//!
//! BoringSSL reports each secret as a key-log line (`LABEL client_random secret`, hex) from
//! inside the handshake. [`KeyLog`] keeps the two first application traffic secrets of one
//! connection (wiped when taken or dropped) and ignores every other line; nothing here writes a
//! secret anywhere else.

use std::sync::Mutex;

use boring::ssl::SslRef;
use zeroize::Zeroizing;

use crate::record::{Aead, Direction, Records};

/// One connection's first application traffic secrets, as BoringSSL's key log reports them.
#[derive(Default)]
pub(crate) struct KeyLog {
    secrets: Mutex<Secrets>,
}

#[derive(Default)]
struct Secrets {
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLog")
    }
}

/// Which end of the connection takes the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl KeyLog {
    /// Notes one key-log line: keeps the application traffic secrets, ignores the rest.
    pub(crate) fn note(&self, line: &str) {
        let mut parts = line.split(' ');
        let (Some(label), Some(_random), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Some(secret) = from_hex(secret) else {
            return;
        };
        if let Ok(mut secrets) = self.secrets.lock() {
            match label {
                "CLIENT_TRAFFIC_SECRET_0" => secrets.client = Some(secret),
                "SERVER_TRAFFIC_SECRET_0" => secrets.server = Some(secret),
                _ => {}
            }
        }
    }

    /// Record protection for `side` of the finished TLS 1.3 connection `ssl`, from the secrets
    /// noted (taken: a second call finds none), at BoringSSL's current sequence numbers.
    /// `None` if a secret is missing (TLS 1.2, or the handshake is not done) or the suite is
    /// not one [`crate::record`] implements.
    pub(crate) fn take_records(&self, ssl: &SslRef, side: Side) -> Option<Records> {
        let suite = ssl
            .current_cipher()
            .map(boring::ssl::SslCipherRef::protocol_id)?;
        let (client, server) = {
            let mut secrets = self.secrets.lock().ok()?;
            (secrets.client.take()?, secrets.server.take()?)
        };
        let (read_seq, write_seq) = ffi::sequences(ssl);
        let (rx, tx) = match side {
            Side::Server => (&client, &server),
            Side::Client => (&server, &client),
        };
        Some(Records::new(
            direction(suite, rx, read_seq)?,
            direction(suite, tx, write_seq)?,
        ))
    }
}

pub(crate) fn from_hex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 2));
    for pair in text.as_bytes().chunks(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(out)
}

/// A direction's record keys from its TLS 1.3 application traffic secret (RFC 8446, 7.3).
pub(crate) fn direction(suite: u16, secret: &[u8], seq: u64) -> Option<Direction> {
    let (aead, hkdf, key_len) = match suite {
        0x1301 => (Aead::Aes128Gcm, ring::hkdf::HKDF_SHA256, 16),
        0x1302 => (Aead::Aes256Gcm, ring::hkdf::HKDF_SHA384, 32),
        0x1303 => (Aead::ChaCha20Poly1305, ring::hkdf::HKDF_SHA256, 32),
        _ => return None,
    };
    let prk = ring::hkdf::Prk::new_less_safe(hkdf, secret);
    let mut key = Zeroizing::new([0u8; 32]);
    expand_label(&prk, b"key", &mut key[..key_len])?;
    let mut iv = [0u8; 12];
    expand_label(&prk, b"iv", &mut iv)?;
    Some(Direction::new(aead, *key, iv, seq))
}

/// HKDF-Expand-Label with an empty context.
fn expand_label(prk: &ring::hkdf::Prk, label: &[u8], out: &mut [u8]) -> Option<()> {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let full_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&length, &full_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

/// The BoringSSL calls the `boring` crate does not wrap for this.
#[allow(unsafe_code)]
pub(crate) mod ffi {
    use boring::ssl::SslRef;
    use foreign_types::ForeignTypeRef as _;

    /// Whether TLS holds bytes not yet handed out: decrypted, or of a record not yet opened.
    pub(crate) fn has_pending(ssl: &SslRef) -> bool {
        // SAFETY: `ssl` is a live SSL; SSL_has_pending only reads its state.
        unsafe { boring_sys::SSL_has_pending(ssl.as_ptr()) == 1 }
    }

    /// The next record sequence numbers to read and to write, in the current epoch.
    pub(super) fn sequences(ssl: &SslRef) -> (u64, u64) {
        // SAFETY: `ssl` is a live SSL; both functions only read its state.
        unsafe {
            (
                boring_sys::SSL_get_read_sequence(ssl.as_ptr()),
                boring_sys::SSL_get_write_sequence(ssl.as_ptr()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_rfc_8446() {
        // RFC 8448 (simple 1-RTT), the server's application traffic secret and its key and iv.
        let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        let server = direction(0x1301, &secret, 0).expect("a TLS 1.3 suite");
        let (key, iv) = server.parts();
        assert_eq!(
            &key[..16],
            hex("9f02283b6c9c07efc26bb9f2ac92e356").as_slice()
        );
        assert_eq!(iv.as_slice(), hex("cf782b88dd83549aadf1e984").as_slice());
        assert!(direction(0x1304, &[0; 32], 0).is_none());
    }

    #[test]
    fn only_the_application_secrets_are_kept() {
        let log = KeyLog::default();
        log.note("CLIENT_HANDSHAKE_TRAFFIC_SECRET 00 0102");
        log.note("CLIENT_TRAFFIC_SECRET_0 00 zz");
        log.note("SERVER_TRAFFIC_SECRET_0");
        log.note("CLIENT_TRAFFIC_SECRET_0 00 0a0b");
        let secrets = log.secrets.lock().expect("lock");
        assert_eq!(
            secrets.client.as_deref().map(Vec::as_slice),
            Some(&[10u8, 11][..])
        );
        assert!(secrets.server.is_none());
    }

    fn hex(text: &str) -> Vec<u8> {
        from_hex(text).expect("hex").to_vec()
    }
}
