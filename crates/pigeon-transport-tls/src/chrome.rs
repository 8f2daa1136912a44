//! The client's TLS: BoringSSL configured so its ClientHello is Chrome's.
//!
//! Chrome's TLS stack *is* BoringSSL, so with the same settings the same library produces the
//! same ClientHello: cipher suites, extensions (permuted per connection, as Chrome does),
//! GREASE, groups with X25519MLKEM768 and its two key shares, signature algorithms with ML-DSA
//! first, ALPN `h2`/`http/1.1`, ALPS on its new codepoint, brotli certificate compression, ECH
//! GREASE, OCSP and SCT requests, and the trust anchor IDs Chrome asks for. The values below
//! were read off Debian's Chromium 156 (`tests/tls_fingerprint.rs` captures that browser and
//! this client with tshark and compares their JA4 and JA4_r, so a drift shows as a failure).
//!
//! Certificates: a route may pin the relay's certificate (`pin`, the SHA-256 of its
//! SubjectPublicKeyInfo), for relays with a self-made certificate; otherwise the chain is
//! verified against the system's roots and the name, as a browser does. Either way the Noise
//! channel inside authenticates the relay itself; TLS is the disguise.
//!
//! Sessions are resumed (TLS 1.3 tickets), as Chrome does: each leg after the first then skips
//! the certificate, which saves bytes under a freeze and time under rotation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use boring::ssl::{
    CertificateCompressionAlgorithm, CertificateCompressor, ConnectConfiguration, SslConnector,
    SslMethod, SslSessionCacheMode, SslSignatureAlgorithm, SslVerifyMode, SslVersion,
};

use crate::error::TlsError;
use crate::keylog::{KeyLog, Side};
use crate::record::Records;

/// Chrome's TLS 1.2 cipher suites, in its order (TLS 1.3's three are BoringSSL's fixed list).
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-GCM-SHA256:\
AES256-GCM-SHA384:AES128-SHA:AES256-SHA";

/// Chrome's groups: X25519MLKEM768 first (with an X25519 share beside it), then the classics.
const GROUPS: &str = "X25519MLKEM768:X25519:P-256:P-384";

/// Chrome's signature algorithms, ML-DSA first.
const SIGALGS: [SslSignatureAlgorithm; 11] = [
    SslSignatureAlgorithm::ML_DSA_44,
    SslSignatureAlgorithm::ML_DSA_65,
    SslSignatureAlgorithm::ML_DSA_87,
    SslSignatureAlgorithm::ECDSA_SECP256R1_SHA256,
    SslSignatureAlgorithm::RSA_PSS_RSAE_SHA256,
    SslSignatureAlgorithm::RSA_PKCS1_SHA256,
    SslSignatureAlgorithm::ECDSA_SECP384R1_SHA384,
    SslSignatureAlgorithm::RSA_PSS_RSAE_SHA384,
    SslSignatureAlgorithm::RSA_PKCS1_SHA384,
    SslSignatureAlgorithm::RSA_PSS_RSAE_SHA512,
    SslSignatureAlgorithm::RSA_PKCS1_SHA512,
];

/// ALPN: `h2`, then `http/1.1`, in wire format.
const ALPN: &[u8] = b"\x02h2\x08http/1.1";

/// The HTTP/2 SETTINGS Chrome sends, in its order; also its ALPS value for `h2`.
pub(crate) const H2_SETTINGS: [(u16, u32); 4] = [
    (crate::h2::setting::HEADER_TABLE_SIZE, 65_536),
    (crate::h2::setting::ENABLE_PUSH, 0),
    (crate::h2::setting::INITIAL_WINDOW_SIZE, 6_291_456),
    (crate::h2::setting::MAX_HEADER_LIST_SIZE, 262_144),
];
/// Chrome's connection window: 15 MiB, opened by a WINDOW_UPDATE of 15,663,105 after SETTINGS.
pub(crate) const H2_CONNECTION_WINDOW: u32 = 15_728_640;

/// The trust anchor IDs Chrome 156 requests (extension 0xca34), in wire format: each ID
/// prefixed with its length.
const TRUST_ANCHORS: &[u8] = &[
    0x05, 0x82, 0xdf, 0x13, 0x02, 0x01, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x06, 0x05, 0x82, 0xdf, 0x13,
    0x02, 0x0d, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x0e, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x0f, 0x05, 0x82,
    0xdf, 0x13, 0x02, 0x12, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x13, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x14,
    0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x07, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d,
    0x01, 0x08, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x09, 0x08, 0x83, 0x9a, 0x64, 0x8c,
    0x9b, 0x2d, 0x01, 0x0a, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0b, 0x08, 0x83, 0x9a,
    0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0c, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0d, 0x08,
    0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x12, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01,
    0x13, 0x04, 0xd6, 0x79, 0x09, 0x01, 0x04, 0xd6, 0x79, 0x09, 0x04, 0x04, 0xd6, 0x79, 0x09, 0x05,
    0x04, 0xd6, 0x79, 0x09, 0x06, 0x04, 0xd6, 0x79, 0x09, 0x07, 0x04, 0xd6, 0x79, 0x09, 0x08, 0x04,
    0xd6, 0x79, 0x09, 0x0a, 0x04, 0xd6, 0x79, 0x09, 0x0b, 0x04, 0xd6, 0x79, 0x09, 0x0c, 0x04, 0xd6,
    0x79, 0x09, 0x0d, 0x04, 0xd6, 0x79, 0x09, 0x0f,
];

/// Decompresses brotli-compressed certificates (RFC 8879), as Chrome offers.
struct Brotli;

impl CertificateCompressor for Brotli {
    const ALGORITHM: CertificateCompressionAlgorithm = CertificateCompressionAlgorithm::BROTLI;
    const CAN_COMPRESS: bool = false;
    const CAN_DECOMPRESS: bool = true;

    fn decompress<W: std::io::Write>(&self, input: &[u8], output: &mut W) -> std::io::Result<()> {
        // Certificate chains are small; refuse anything that inflates past 1 MiB.
        let mut reader = brotli::Decompressor::new(input, 4096);
        let mut limited = std::io::Read::take(&mut reader, 1 << 20);
        std::io::copy(&mut limited, output)?;
        Ok(())
    }
}

/// A TLS client that looks like Chrome, with its session cache.
#[derive(Clone)]
pub struct ChromeTls {
    connector: SslConnector,
    sessions: Arc<Mutex<HashMap<String, boring::ssl::SslSession>>>,
    /// Where each connection's key log goes (see [`ChromeTls::take_records`]).
    keylog: boring::ex_data::Index<boring::ssl::Ssl, Arc<KeyLog>>,
}

impl std::fmt::Debug for ChromeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChromeTls")
    }
}

/// Where a connection goes and how its certificate is checked.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// Name for SNI and certificate checks; `None` for an IP address without `sni`.
    pub(crate) sni: Option<String>,
    /// SHA-256 of the expected certificate's SubjectPublicKeyInfo, if pinned.
    pub(crate) pin: Option<[u8; 32]>,
    /// Key for the session cache.
    pub(crate) cache_key: String,
    /// The front's ECH configuration, for `ech=1` routes: the hello then carries a real ECH
    /// extension, the outer hello names [`crate::EchConfig`]'s public name (`sni`), and the
    /// name given to `connect` is the inner one (the proof).
    pub(crate) ech: Option<crate::ech::EchConfig>,
}

impl ChromeTls {
    /// A client with Chrome's settings.
    ///
    /// # Errors
    /// [`TlsError::Setup`] if BoringSSL refuses a setting (a build without X25519MLKEM768).
    pub fn new() -> Result<Self, TlsError> {
        let setup = |what: &'static str| {
            move |e: boring::error::ErrorStack| TlsError::Setup {
                what,
                detail: e.to_string(),
            }
        };
        let mut b = SslConnector::builder(SslMethod::tls()).map_err(setup("context"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(setup("versions"))?;
        b.set_max_proto_version(Some(SslVersion::TLS1_3))
            .map_err(setup("versions"))?;
        b.set_cipher_list(CIPHERS).map_err(setup("cipher suites"))?;
        b.set_curves_list(GROUPS).map_err(setup("groups"))?;
        b.set_verify_algorithm_prefs(&SIGALGS)
            .map_err(setup("signature algorithms"))?;
        b.set_alpn_protos(ALPN).map_err(setup("ALPN"))?;
        b.set_grease_enabled(true);
        b.set_permute_extensions(true);
        b.enable_ocsp_stapling();
        b.enable_signed_cert_timestamps();
        b.add_certificate_compression_algorithm(Brotli)
            .map_err(setup("certificate compression"))?;
        b.set_default_verify_paths()
            .map_err(setup("the system's certificate roots"))?;
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        let keylog = keylog_index()?;
        b.set_keylog_callback(move |ssl, line| {
            if let Some(log) = ssl.ex_data(keylog) {
                log.note(line);
            }
        });
        Ok(Self {
            connector: b.build(),
            sessions: Arc::default(),
            keylog,
        })
    }

    /// The settings for one connection to `target`.
    pub(crate) fn configure(&self, target: &Target) -> Result<ConnectConfiguration, TlsError> {
        let setup = |what: &'static str| {
            move |e: boring::error::ErrorStack| TlsError::Setup {
                what,
                detail: e.to_string(),
            }
        };
        let mut config = self.connector.configure().map_err(setup("connection"))?;
        config.set_ex_data(self.keylog, Arc::new(KeyLog::default()));
        config.set_use_server_name_indication(target.sni.is_some());
        match &target.ech {
            // A real ECH extension in place of the GREASE one (the same shape on the wire).
            Some(ech) => config
                .set_ech_config_list(&ech.config_list())
                .map_err(setup("ECH configuration"))?,
            None => config.set_enable_ech_grease(true),
        }
        ffi::chrome_extras(&mut config).map_err(|detail| TlsError::Setup {
            what: "ALPS and trust anchors",
            detail,
        })?;
        if let Some(pin) = target.pin {
            // A pinned certificate: the leaf's key must be the pinned one; the chain and name
            // are not checked (a relay's own certificate has no public chain).
            config.set_verify_hostname(false);
            config.set_verify_callback(SslVerifyMode::PEER, move |_, ctx| {
                if ctx.error_depth() != 0 {
                    return true;
                }
                ctx.current_cert()
                    .and_then(|cert| cert.public_key().ok())
                    .and_then(|key| key.public_key_to_der().ok())
                    .is_some_and(|der| boring::sha::sha256(&der) == pin)
            });
        } else if let Some(ech) = &target.ech {
            // The certificate is checked for the covered site's name, not the inner one.
            config.set_verify_hostname(false);
            config
                .param_mut()
                .set_host(ech.public_name())
                .map_err(setup("certificate name"))?;
        } else {
            config.set_verify_hostname(target.sni.is_some());
        }
        if target.ech.is_none()
            && let Ok(cache) = self.sessions.lock()
            && let Some(session) = cache.get(&target.cache_key)
        {
            // SAFETY (of the call below): the session came from a connection made with this
            // same connector (the only place sessions are stored from), as BoringSSL requires.
            ffi::set_session(&mut config, session).map_err(setup("session resumption"))?;
        }
        Ok(config)
    }

    /// Record protection for the client's side of `ssl`, a finished TLS 1.3 connection made
    /// with this client, from its key log (taken: the secrets are wiped here and never given
    /// twice). `None` for TLS 1.2, or a suite [`crate::record`] does not implement.
    pub(crate) fn take_records(&self, ssl: &boring::ssl::SslRef) -> Option<Records> {
        ssl.ex_data(self.keylog)?.take_records(ssl, Side::Client)
    }

    /// Remembers the session of a finished handshake for the next connection to `cache_key`.
    pub(crate) fn remember(&self, cache_key: &str, ssl: &boring::ssl::SslRef) {
        if let Some(session) = ssl.session()
            && let Ok(mut cache) = self.sessions.lock()
        {
            if cache.len() > 256 {
                cache.clear();
            }
            cache.insert(cache_key.to_owned(), session.to_owned());
        }
    }
}

/// The `ex_data` slot of every connection's key log. BoringSSL's slots are process-wide and
/// never given back, so one is taken for the process rather than one per client (a client made
/// per connection would otherwise take a slot each time, and every later connection would carry
/// room for all of them). The slot holds nothing itself; each connection's value is its own.
fn keylog_index() -> Result<boring::ex_data::Index<boring::ssl::Ssl, Arc<KeyLog>>, TlsError> {
    static INDEX: std::sync::OnceLock<
        Result<boring::ex_data::Index<boring::ssl::Ssl, Arc<KeyLog>>, String>,
    > = std::sync::OnceLock::new();
    INDEX
        .get_or_init(|| boring::ssl::Ssl::new_ex_index::<Arc<KeyLog>>().map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| TlsError::Setup {
            what: "key log state",
            detail,
        })
}

/// The few BoringSSL calls the `boring` crate does not wrap: ALPS on the new codepoint and the
/// trust anchor IDs, and resuming a session. Unsafe because they are foreign calls on the raw
/// `SSL` pointer; each is a plain setter with no lifetime obligations beyond the call.
#[allow(unsafe_code)]
mod ffi {
    use boring::ssl::{ConnectConfiguration, SslSession};
    use foreign_types::ForeignTypeRef as _;

    pub(super) fn chrome_extras(config: &mut ConnectConfiguration) -> Result<(), String> {
        let mut settings = Vec::with_capacity(super::H2_SETTINGS.len() * 6);
        for (id, value) in super::H2_SETTINGS {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        let ssl = config.as_ptr();
        // SAFETY: `ssl` is a live SSL owned by `config`; BoringSSL copies the buffers.
        unsafe {
            boring_sys::SSL_set_alps_use_new_codepoint(ssl, 1);
            if boring_sys::SSL_add_application_settings(
                ssl,
                b"h2".as_ptr(),
                2,
                settings.as_ptr(),
                settings.len(),
            ) != 1
            {
                return Err("SSL_add_application_settings failed".into());
            }
            if boring_sys::SSL_set1_requested_trust_anchors(
                ssl,
                super::TRUST_ANCHORS.as_ptr(),
                super::TRUST_ANCHORS.len(),
            ) != 1
            {
                return Err("SSL_set1_requested_trust_anchors failed".into());
            }
        }
        Ok(())
    }

    pub(super) fn set_session(
        config: &mut ConnectConfiguration,
        session: &SslSession,
    ) -> Result<(), boring::error::ErrorStack> {
        // SAFETY: sessions are only stored from connections of the same `SslConnector`.
        unsafe { config.set_session(session) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_anchor_list_is_well_formed() {
        let mut rest = TRUST_ANCHORS;
        let mut ids = 0;
        while let Some((&len, tail)) = rest.split_first() {
            assert!(len > 0 && usize::from(len) <= tail.len());
            rest = &tail[usize::from(len)..];
            ids += 1;
        }
        assert_eq!(ids, 28);
        assert_eq!(TRUST_ANCHORS.len(), 184);
    }

    #[test]
    fn client_configures() {
        let tls = ChromeTls::new().expect("Chrome settings");
        let target = Target {
            sni: Some("cover.test".into()),
            pin: Some([1; 32]),
            cache_key: "k".into(),
            ech: None,
        };
        tls.configure(&target).expect("connection settings");
    }
}
