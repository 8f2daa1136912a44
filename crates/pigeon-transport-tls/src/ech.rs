//! Recognising clients by Encrypted Client Hello, so that everyone else meets the covered web
//! server itself (`ech=1` routes, `pigeon relay --cover-tls`).
//!
//! Chrome sends an `encrypted_client_hello` extension in every ClientHello: when the site
//! publishes no ECH key it is GREASE, random bytes in the shape of a real one (RFC 9849, 6.2).
//! A client of an `ech=1` route sends a *real* one instead, in the same shape: an HPKE
//! encryption (X25519, HKDF-SHA256, AES-128-GCM or ChaCha20-Poly1305 as Chrome picks) of an
//! inner ClientHello, to a key both sides derive from the route's secret. The outer hello is
//! untouched — the same JA4, the same SNI (the covered site's name) — so to an observer the two
//! cannot be told apart without the key.
//!
//! The inner hello's server name carries the proof: a token ([`crate::token`]) minted for the
//! label [`PROOF_PATH`], fresh within two minutes and accepted once (the front's replay filter).
//! The front reads the whole ClientHello before it writes a byte. When the ECH extension opens
//! under the front's key and the inner name is a fresh token, the front completes the handshake
//! itself (BoringSSL, accepting ECH) and the leg goes on as every tls leg does (the request's
//! token still checked as a second factor). Anything else — browsers, scanners, JARM-style
//! probes, a replay of a client's recorded bytes — is passed to `--cover-tls` at the TCP level
//! with every byte it sent so far, untouched: the web server's own TLS stack answers it.
//!
//! What this costs: anyone holding the route's secret can make the proof (as they can make a
//! token today); a passive observer sees a real ECH extension whose payload length is one of
//! the lengths GREASE takes (see [`inner_name`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use boring::hpke::HpkeKey;
use boring::pkey::PKey;
use boring::ssl::{
    AlpnError, NameType, Ssl, SslAcceptor, SslEchKeys, SslMethod, SslVersion, select_next_proto,
};
use boring::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::error::TlsError;
use crate::keylog::{KeyLog, Side};
use crate::record::Records;
use crate::token::{self, ReplayFilter, TokenKey};

/// The label proofs are minted for, in place of a request path (so a proof is never a valid
/// request token and the other way round).
pub(crate) const PROOF_PATH: &str = "/.well-known/ech-proof";
/// The ECHConfig version this speaks (RFC 9849).
const ECH_VERSION: u16 = 0xfe0d;
/// DHKEM(X25519, HKDF-SHA256).
const KEM_X25519: u16 = 0x0020;
/// HKDF-SHA256.
const KDF_SHA256: u16 = 0x0001;
/// The AEADs Chrome's GREASE uses: AES-128-GCM with AES hardware, ChaCha20-Poly1305 without.
const AEAD_AES128GCM: u16 = 0x0001;
const AEAD_CHACHA20: u16 = 0x0003;
/// Most padding letters a client adds to its inner name.
pub(crate) const MAX_PAD: usize = 80;
/// Padding lengths that put the ECH payload at 176, 208 or 240 bytes — three of the four
/// lengths Chrome's GREASE takes (144 is out of reach: the inner hello with its proof alone
/// is longer). Measured with this client's inner hello (`tests/ech.rs` checks every length
/// against GREASE's); each range keeps a few bytes from the edges of its length.
const PAD_RANGES: [(usize, usize); 3] = [(0, 18), (24, 50), (56, MAX_PAD)];
/// Bytes a front reads while it decides while it decides (a ClientHello and a little more).
const MAX_HELD: usize = 64 * 1024;

/// The ECH key pair and its configuration, derived from a route's secret.
#[derive(Clone)]
pub struct EchConfig {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    config_id: u8,
    public_name: String,
}

impl std::fmt::Debug for EchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchConfig")
            .field("config_id", &self.config_id)
            .field("public_name", &self.public_name)
            .finish_non_exhaustive()
    }
}

impl EchConfig {
    /// The configuration of a route with secret `key` whose outer hello names `public_name`.
    pub fn derive(key: &TokenKey, public_name: &str) -> Self {
        let private = key.derive(b"pigeonpost tls ech hpke key v1");
        let public = ffi::x25519_public(&private);
        let config_id = key.derive(b"pigeonpost tls ech config id v1")[0];
        Self {
            private,
            public,
            config_id,
            public_name: public_name.to_owned(),
        }
    }

    /// One `ECHConfig` (RFC 9849, section 4), as a server registers it.
    fn config(&self) -> Vec<u8> {
        let mut contents = Vec::with_capacity(96);
        contents.push(self.config_id);
        contents.extend_from_slice(&KEM_X25519.to_be_bytes());
        put_u16_prefixed(&mut contents, &self.public);
        let mut suites = Vec::new();
        for aead in [AEAD_AES128GCM, AEAD_CHACHA20] {
            suites.extend_from_slice(&KDF_SHA256.to_be_bytes());
            suites.extend_from_slice(&aead.to_be_bytes());
        }
        put_u16_prefixed(&mut contents, &suites);
        // maximum_name_length 0: the inner hello is padded only to a multiple of 32 bytes, and
        // the client chooses its name's length so the payload takes GREASE's lengths.
        contents.push(0);
        let name = self.public_name.as_bytes();
        contents.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        contents.extend_from_slice(&name[..name.len().min(255)]);
        put_u16_prefixed(&mut contents, &[]);
        let mut config = Vec::with_capacity(contents.len() + 4);
        config.extend_from_slice(&ECH_VERSION.to_be_bytes());
        put_u16_prefixed(&mut config, &contents);
        config
    }

    /// The `ECHConfigList` a client is given.
    pub(crate) fn config_list(&self) -> Vec<u8> {
        let mut list = Vec::new();
        put_u16_prefixed(&mut list, &self.config());
        list
    }

    /// The name the outer hello carries.
    pub(crate) fn public_name(&self) -> &str {
        &self.public_name
    }
}

fn put_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The inner hello's server name: a fresh proof (one label of 38 characters), then `pad`
/// more letters and digits (in labels of at most 63) so that the encrypted inner hello's length
/// varies as GREASE's does. `nonce` makes the proof unique; `pad` supplies the padding's
/// letters.
pub(crate) fn inner_name(key: &TokenKey, now: u64, nonce: [u8; 8], pad: &[u8]) -> String {
    let mut name = token::mint_proof(key, PROOF_PATH, now, nonce);
    const LETTERS: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    for label in pad.chunks(63) {
        name.push('.');
        name.extend(
            label
                .iter()
                .map(|&r| char::from(LETTERS[usize::from(r) % LETTERS.len()])),
        );
    }
    name
}

/// How many padding letters the random bytes `r` stand for: one of [`PAD_RANGES`], evenly,
/// then a length within it.
pub(crate) fn pad_len(r: [u8; 2]) -> usize {
    let (low, high) = PAD_RANGES[usize::from(r[0]) % PAD_RANGES.len()];
    low + usize::from(r[1]) % (high - low + 1)
}

/// Checks an inner name's proof at unix time `now` and spends it in `filter`.
fn check_inner_name(
    key: &TokenKey,
    name: &str,
    now: u64,
    filter: &Mutex<ReplayFilter>,
) -> Result<(), token::TokenError> {
    let proof = name.split('.').next().unwrap_or_default();
    let checked = token::check_proof(key, PROOF_PATH, proof, now)?;
    filter
        .lock()
        .map_err(|_| token::TokenError::Busy)?
        .admit(checked, now)
        .map(|_| ())
}

/// What one connection's handshake learned, shared with BoringSSL's callbacks.
#[derive(Default)]
struct Conn {
    /// The inner hello carried a fresh proof: the front answers (before this, nothing it
    /// writes leaves).
    proven: AtomicBool,
    /// The application traffic secrets, from BoringSSL's key log.
    keys: KeyLog,
}

/// The front's side: a BoringSSL server that accepts only ECH with a fresh proof.
pub(crate) struct EchServer {
    acceptor: SslAcceptor,
    conn: boring::ex_data::Index<Ssl, Arc<Conn>>,
}

impl std::fmt::Debug for EchServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchServer")
    }
}

/// A connection after the front looked at its ClientHello.
pub(crate) enum Recognised {
    /// A client proved itself and the handshake is done: its keys, and bytes it sent after its
    /// Finished (not yet opened).
    Client {
        tcp: TcpStream,
        records: Records,
        raw: Vec<u8>,
    },
    /// Anyone else: every byte it sent so far, for the cover's own TLS port.
    Stranger { tcp: TcpStream, raw: Vec<u8> },
}

impl EchServer {
    /// A server for `config`, presenting `chain` (leaf first, DER) with `key` (PKCS#8, or
    /// PKCS#1/SEC1 DER) to clients that proved themselves; proofs are spent in `filter`.
    pub(crate) fn new(
        config: &EchConfig,
        token_key: TokenKey,
        chain: &[Vec<u8>],
        key: &[u8],
        filter: Arc<Mutex<ReplayFilter>>,
    ) -> Result<Self, TlsError> {
        let setup = |what: &'static str| {
            move |e: boring::error::ErrorStack| TlsError::Setup {
                what,
                detail: e.to_string(),
            }
        };
        let conn = Ssl::new_ex_index::<Arc<Conn>>().map_err(setup("ECH connection state"))?;
        let mut b =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(setup("ECH server"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_3))
            .map_err(setup("ECH server versions"))?;
        let (leaf, rest) = chain.split_first().ok_or_else(|| TlsError::Setup {
            what: "ECH server certificate",
            detail: "the chain is empty".into(),
        })?;
        let leaf = X509::from_der(leaf).map_err(setup("ECH server certificate"))?;
        b.set_certificate(&leaf)
            .map_err(setup("ECH server certificate"))?;
        for cert in rest {
            b.add_extra_chain_cert(X509::from_der(cert).map_err(setup("ECH server chain"))?)
                .map_err(setup("ECH server chain"))?;
        }
        let key = PKey::private_key_from_der(key).map_err(setup("ECH server key"))?;
        b.set_private_key(&key).map_err(setup("ECH server key"))?;
        b.check_private_key().map_err(setup("ECH server key"))?;
        b.set_alpn_select_callback(|_, offered| {
            select_next_proto(b"\x02h2", offered).ok_or(AlpnError::NOACK)
        });
        let mut keys = SslEchKeys::builder().map_err(setup("ECH keys"))?;
        // (The `boring` constructor's name says P-256; it builds DHKEM(X25519, HKDF-SHA256).)
        let hpke =
            HpkeKey::dhkem_p256_sha256(config.private.as_slice()).map_err(setup("ECH key"))?;
        // BoringSSL wants a retry config; it is never sent, as a connection whose ECH does not
        // open goes to the cover before the server writes anything.
        keys.add_key(true, &config.config(), hpke)
            .map_err(setup("ECH keys"))?;
        b.set_ech_keys(&keys.build()).map_err(setup("ECH keys"))?;
        b.set_select_certificate_callback(move |hello| {
            let ssl = hello.ssl();
            let Some(state) = ssl.ex_data(conn) else {
                return Err(boring::ssl::SelectCertError::ERROR);
            };
            let proven = ssl.ech_accepted()
                && hello.servername(NameType::HOST_NAME).is_some_and(|name| {
                    check_inner_name(&token_key, name, unix_now(), &filter).is_ok()
                });
            if !proven {
                // Nothing has been written: the connection goes to the cover as it came.
                return Err(boring::ssl::SelectCertError::ERROR);
            }
            state.proven.store(true, Ordering::Release);
            Ok(())
        });
        b.set_keylog_callback(move |ssl, line| {
            if let Some(state) = ssl.ex_data(conn) {
                state.keys.note(line);
            }
        });
        Ok(Self {
            acceptor: b.build(),
            conn,
        })
    }

    /// Looks at the connection whose first bytes (a whole, well-formed ClientHello) are `raw`,
    /// and either completes a client's handshake or gives the connection back untouched.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
        raw: Vec<u8>,
    ) -> Result<Recognised, TlsError> {
        let state = Arc::new(Conn::default());
        let mut ssl = Ssl::new(self.acceptor.context()).map_err(|e| TlsError::Setup {
            what: "ECH connection",
            detail: e.to_string(),
        })?;
        ssl.set_ex_data(self.conn, Arc::clone(&state));
        let held = Held::new(tcp, raw, Arc::clone(&state));
        let stream = match tokio_boring::SslStreamBuilder::new(ssl, held)
            .accept()
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                let proven = state.proven.load(Ordering::Acquire);
                let Some(held) = e.into_source_stream() else {
                    return Err(TlsError::Io(io::ErrorKind::ConnectionAborted.into()));
                };
                let Some(tcp) = held.tcp else {
                    return Err(TlsError::Io(io::ErrorKind::ConnectionAborted.into()));
                };
                if proven {
                    // A client whose handshake failed after it proved itself: it heard from
                    // the front already, so it cannot go to the cover.
                    return Err(TlsError::Handshake {
                        route: "(incoming)".into(),
                        detail: "a proven client's handshake failed".into(),
                    });
                }
                return Ok(Recognised::Stranger { tcp, raw: held.raw });
            }
        };
        let records = state
            .keys
            .take_records(stream.ssl(), Side::Server)
            .ok_or_else(|| TlsError::Config("the TLS keys of an ECH connection".into()))?;
        let mut stream = stream;
        let held = stream.get_mut();
        let tcp = held
            .tcp
            .take()
            .ok_or_else(|| TlsError::Io(io::ErrorKind::ConnectionAborted.into()))?;
        let raw = held.raw.split_off(held.given);
        Ok(Recognised::Client { tcp, records, raw })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The socket under the front's BoringSSL while it decides: reads are handed over one record
/// (header, then body) at a time, so BoringSSL never takes bytes past the handshake's last
/// record, and everything read is kept for the cover; nothing BoringSSL writes leaves before
/// the hello proved itself.
struct Held {
    tcp: Option<TcpStream>,
    raw: Vec<u8>,
    /// Bytes of `raw` handed to BoringSSL.
    given: usize,
    /// End of the record header or body being handed over.
    unit_end: usize,
    in_header: bool,
    state: Arc<Conn>,
}

impl Held {
    fn new(tcp: TcpStream, raw: Vec<u8>, state: Arc<Conn>) -> Self {
        Self {
            tcp: Some(tcp),
            raw,
            given: 0,
            unit_end: 5,
            in_header: true,
            state,
        }
    }

    /// Moves to the next header or body once the current one is handed over.
    fn advance(&mut self) {
        while self.given == self.unit_end {
            if self.in_header {
                let len = u16::from_be_bytes([self.raw[self.given - 2], self.raw[self.given - 1]]);
                self.unit_end += usize::from(len);
                self.in_header = false;
            } else {
                self.unit_end += 5;
                self.in_header = true;
            }
        }
    }
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.given >= this.raw.len() {
            if this.raw.len() >= MAX_HELD {
                return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
            }
            let Some(tcp) = this.tcp.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(tcp).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.raw.extend_from_slice(read.filled());
        }
        let end = this
            .unit_end
            .min(this.raw.len())
            .min(this.given + buf.remaining());
        buf.put_slice(&this.raw[this.given..end]);
        this.given = end;
        this.advance();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.state.proven.load(Ordering::Acquire) {
            // An alert for a stranger: swallowed, the cover answers instead.
            return Poll::Ready(Ok(buf.len()));
        }
        match this.tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket is taken back afterwards; BoringSSL never closes it.
        Poll::Ready(Ok(()))
    }
}

/// BoringSSL functions the `boring` crate does not wrap. Unsafe because they are foreign
/// calls; each reads or writes only the buffers and the live `SSL` it is given.
#[allow(unsafe_code)]
mod ffi {
    /// The X25519 public key of `private`.
    pub(super) fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
        let mut public = [0u8; 32];
        // SAFETY: both buffers are 32 bytes, as X25519_public_from_private reads and writes.
        unsafe { boring_sys::X25519_public_from_private(public.as_mut_ptr(), private.as_ptr()) };
        public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new([7; 32])
    }

    #[test]
    fn the_config_is_well_formed() {
        let config = EchConfig::derive(&key(), "cover.example.org");
        let list = config.config_list();
        let inner = config.config();
        assert_eq!(
            usize::from(u16::from_be_bytes([list[0], list[1]])),
            inner.len()
        );
        assert_eq!(&inner[..2], &[0xfe, 0x0d]);
        assert_eq!(
            usize::from(u16::from_be_bytes([inner[2], inner[3]])),
            inner.len() - 4
        );
        assert_eq!(inner[4], config.config_id);
        assert_eq!(&inner[5..7], &[0x00, 0x20]);
        assert_eq!(&inner[7..9], &[0x00, 0x20]);
        assert_eq!(&inner[9..41], &config.public);
        // The same secret gives the same config on both sides; another does not.
        assert_eq!(
            EchConfig::derive(&key(), "cover.example.org").config_list(),
            list
        );
        assert_ne!(
            EchConfig::derive(&TokenKey::new([8; 32]), "cover.example.org").config_list(),
            list
        );
    }

    #[test]
    fn a_proof_is_fresh_and_spent_once() {
        let filter = Mutex::new(ReplayFilter::new(16));
        let now = 1_800_000_000;
        let name = inner_name(&key(), now, [3; 8], &[9; 70]);
        assert!(name.len() <= 253, "{name}");
        assert!(
            name.split('.').all(|l| !l.is_empty() && l.len() <= 63),
            "{name}"
        );
        assert_eq!(check_inner_name(&key(), &name, now + 30, &filter), Ok(()));
        assert_eq!(
            check_inner_name(&key(), &name, now + 31, &filter),
            Err(token::TokenError::Replayed)
        );
        let later = inner_name(&key(), now, [4; 8], &[]);
        assert_eq!(
            check_inner_name(&key(), &later, now + 600, &filter),
            Err(token::TokenError::Stale)
        );
        let other = inner_name(&TokenKey::new([8; 32]), now, [5; 8], &[]);
        assert_eq!(
            check_inner_name(&key(), &other, now, &filter),
            Err(token::TokenError::BadTag)
        );
        for junk in ["", "a", "a.b", "cover.example.org", &"x.".repeat(100)] {
            assert!(
                check_inner_name(&key(), junk, now, &filter).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn padding_takes_each_range() {
        let mut seen = [0usize; 3];
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let len = pad_len([a, b]);
                assert!(len <= MAX_PAD);
                let range = PAD_RANGES
                    .iter()
                    .position(|(low, high)| (*low..=*high).contains(&len))
                    .expect("in a range");
                seen[range] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 20_000), "{seen:?}");
    }
}
