//! The Noise IK channel (`Noise_IK_25519_ChaChaPoly_BLAKE2s`).
//!
//! **Why IK.** The client already knows the relay's static key from the relay link, so the
//! relay is authenticated in the first round trip and the client's first message is already
//! encrypted. IK also requires an initiator static key; Pigeonpost has no client identity, so
//! every connection uses a fresh random one ([`ClientHandshake::start`]): the relay cannot link
//! two connections by it. Mailbox ownership is proven per request by signatures bound to the
//! handshake hash ([`crate::auth`]), so a captured signature is useless on any other session.
//!
//! **Records.** Each Noise message travels as a record (see `pigeon_wire::record`): a clear
//! 2-byte length, then the ciphertext. Transport records are padded to size buckets. Noise's
//! implicit nonces make every record single-use and in-order: a replayed, reordered, dropped,
//! truncated or altered record fails authentication, and the channel is dead after any failure
//! (the caller must close the connection).
//!
//! **Payloads.** The handshake carries a [`ClientHello`] (versions offered) and a
//! [`ServerHello`] (version chosen, or an error). After it, decrypted record data forms a byte
//! stream of length-delimited protobuf messages (`pigeon_wire::stream`).

use pigeon_wire::msg::{ClientHello, ServerHello};
use pigeon_wire::record::{self, HEADER_LEN, MAX_RECORD, MAX_RECORD_DATA};
use pigeon_wire::stream::MessageReader;
use pigeon_wire::{MAX_MESSAGE, WireError};
use zeroize::Zeroizing;

/// The Noise protocol name. Changing it is a protocol version change.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Prologue mixed into the handshake hash, so a Pigeonpost handshake never verifies as
/// anything else.
const PROLOGUE: &[u8] = b"pigeonpost channel v1";

/// Handshake payloads are padded to this many bytes, so hellos do not reveal the client build.
const HELLO_PADDED_LEN: usize = 96;

/// Why the channel failed. After any error the channel must be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The record layer or a payload did not parse.
    #[error("bad channel data: {0}")]
    Wire(#[from] WireError),
    /// A handshake message failed: wrong relay key, corrupted or replayed message.
    #[error("handshake failed ({stage}): {reason}")]
    Handshake {
        /// Which step.
        stage: &'static str,
        /// What Noise reported.
        reason: String,
    },
    /// A transport record did not authenticate: it was altered, replayed, reordered or cut.
    #[error("record failed authentication (altered, replayed, reordered or truncated)")]
    Decrypt,
    /// Encrypting failed; only possible after 2^64 records or on a bug.
    #[error("could not encrypt a record: {0}")]
    Encrypt(String),
    /// A key was not the right length.
    #[error("bad key: {0}")]
    BadKey(&'static str),
}

/// An X25519 static keypair (the relay's long-term key).
pub struct StaticKeypair {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn params() -> Result<snow::params::NoiseParams, ChannelError> {
    NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| ChannelError::Handshake {
            stage: "parameters",
            reason: e.to_string(),
        })
}

fn builder() -> Result<snow::Builder<'static>, ChannelError> {
    Ok(snow::Builder::new(params()?))
}

fn snow_err(stage: &'static str) -> impl FnOnce(snow::Error) -> ChannelError {
    move |e| ChannelError::Handshake {
        stage,
        reason: e.to_string(),
    }
}

impl StaticKeypair {
    /// A fresh random keypair.
    ///
    /// # Errors
    /// If the system's random source fails.
    pub fn generate() -> Result<Self, ChannelError> {
        let kp = builder()?
            .generate_keypair()
            .map_err(snow_err("key generation"))?;
        Self::from_private(&kp.private)
    }

    /// The keypair for a stored 32-byte private key.
    ///
    /// # Errors
    /// [`ChannelError::BadKey`] if it is not 32 bytes.
    pub fn from_private(private: &[u8]) -> Result<Self, ChannelError> {
        let private: [u8; 32] = private
            .try_into()
            .map_err(|_| ChannelError::BadKey("private key must be 32 bytes"))?;
        // X25519 public key = scalar multiplication of the base point, as Noise does.
        let public = x25519_public(&private)?;
        Ok(Self {
            private: Zeroizing::new(private),
            public,
        })
    }

    /// The public half, as it appears in relay links.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The private half, for writing to the relay's key file.
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

/// Derives the X25519 public key through the Noise library's own DH implementation, so the
/// curve arithmetic stays inside `snow`.
fn x25519_public(private: &[u8; 32]) -> Result<[u8; 32], ChannelError> {
    use snow::resolvers::CryptoResolver as _;
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .ok_or(ChannelError::BadKey("X25519 is not available"))?;
    dh.set(private);
    dh.pubkey()
        .try_into()
        .map_err(|_| ChannelError::BadKey("X25519 public key is not 32 bytes"))
}

fn pad_hello(mut payload: Vec<u8>) -> Vec<u8> {
    // Appending an unknown-field-free padding field keeps the protobuf valid: callers encode
    // the hello with an empty `padding`, and we add the field (tag 15, wire type 2) here.
    // The field costs 2 bytes (tag, one-byte length) plus the padding itself.
    if payload.len() + 2 < HELLO_PADDED_LEN {
        let pad = HELLO_PADDED_LEN - payload.len() - 2;
        payload.push(0x7a); // field 15, length-delimited
        // pad < 128 always (HELLO_PADDED_LEN < 128), so the length is one varint byte.
        payload.push(u8::try_from(pad).unwrap_or(0));
        payload.resize(payload.len() + pad, 0);
    }
    payload
}

fn encode<M: prost::Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

fn push_record(body: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
    out.extend_from_slice(&record::header(body.len())?);
    out.extend_from_slice(body);
    Ok(())
}

/// A client handshake waiting for the relay's answer.
pub struct ClientHandshake {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake")
    }
}

/// The randomness one client handshake uses, passed in (so a session's first bytes are a
/// function of its inputs): the connection's throwaway static key and the Noise ephemeral.
pub struct Entropy(Zeroizing<[u8; 64]>);

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entropy(…)")
    }
}

impl Entropy {
    /// These 64 bytes (they must be secret and uniformly random).
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Fresh bytes from the operating system.
    ///
    /// # Errors
    /// If the random source fails.
    pub fn from_os() -> Result<Self, ChannelError> {
        let mut bytes = Zeroizing::new([0u8; 64]);
        getrandom::fill(bytes.as_mut_slice())
            .map_err(|e| ChannelError::Encrypt(format!("the random source failed: {e}")))?;
        Ok(Self(bytes))
    }
}

/// Hands Noise the ephemeral key's bytes from an [`Entropy`] and refuses to give more: the
/// IK initiator draws exactly one ephemeral key.
struct EntropyRng(Option<Zeroizing<[u8; 32]>>);

impl snow::types::Random for EntropyRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(bytes) if dest.len() == bytes.len() => {
                dest.copy_from_slice(bytes.as_slice());
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

/// snow's own primitives, with the randomness of an [`Entropy`].
struct EntropyResolver(std::sync::Mutex<Option<Zeroizing<[u8; 32]>>>);

impl snow::resolvers::CryptoResolver for EntropyResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        let bytes = self.0.lock().ok()?.take();
        Some(Box::new(EntropyRng(bytes)))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        snow::resolvers::DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        snow::resolvers::DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        snow::resolvers::DefaultResolver.resolve_cipher(choice)
    }
}

impl ClientHandshake {
    /// Starts a handshake to the relay whose static key is `relay_public`, offering `hello`,
    /// with randomness from the operating system. Appends the first record to `out`.
    ///
    /// # Errors
    /// If the key is malformed or the random source fails.
    pub fn start(
        relay_public: &[u8; 32],
        hello: &ClientHello,
        out: &mut Vec<u8>,
    ) -> Result<Self, ChannelError> {
        Self::start_with(relay_public, hello, Entropy::from_os()?, out)
    }

    /// [`Self::start`] with the randomness passed in.
    ///
    /// # Errors
    /// If the key is malformed.
    pub fn start_with(
        relay_public: &[u8; 32],
        hello: &ClientHello,
        entropy: Entropy,
        out: &mut Vec<u8>,
    ) -> Result<Self, ChannelError> {
        let (static_seed, ephemeral) = entropy.0.split_at(32);
        // The connection's static key: fresh per connection, so the relay links nothing by it
        // (X25519 clamps any 32 bytes into a valid private key).
        let static_private =
            Zeroizing::new(<[u8; 32]>::try_from(static_seed).map_err(|_| {
                ChannelError::BadKey("entropy for the static key must be 32 bytes")
            })?);
        let ephemeral = Zeroizing::new(
            <[u8; 32]>::try_from(ephemeral)
                .map_err(|_| ChannelError::BadKey("entropy for the ephemeral must be 32 bytes"))?,
        );
        let resolver = EntropyResolver(std::sync::Mutex::new(Some(ephemeral)));
        let mut state = snow::Builder::with_resolver(params()?, Box::new(resolver))
            .local_private_key(static_private.as_slice())
            .and_then(|b| b.remote_public_key(relay_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(snow_err("setup"))?
            .build_initiator()
            .map_err(snow_err("setup"))?;
        let payload = pad_hello(encode(hello));
        let mut buf = vec![0u8; MAX_RECORD];
        let n = state
            .write_message(&payload, &mut buf)
            .map_err(snow_err("writing first message"))?;
        push_record(&buf[..n], out)?;
        Ok(Self { state })
    }

    /// Processes the relay's answer (one record body) and returns the open channel.
    ///
    /// # Errors
    /// [`ChannelError::Handshake`] if the answer does not come from the relay's key or was
    /// altered; [`ChannelError::Wire`] if its payload does not parse.
    pub fn finish(mut self, record_body: &[u8]) -> Result<(Channel, ServerHello), ChannelError> {
        let mut payload = vec![0u8; record_body.len()];
        let n = self
            .state
            .read_message(record_body, &mut payload)
            .map_err(snow_err("reading relay's answer"))?;
        let hello = pigeon_wire::msg::decode_server_hello(&payload[..n])?;
        Ok((Channel::from_handshake(self.state)?, hello))
    }
}

/// Relay side: answers a client's first record. `choose` sees the client's hello and returns
/// the server hello to send. Appends the answer record to `out`.
///
/// # Errors
/// [`ChannelError::Handshake`] if the record is not a handshake to this relay's key (garbage,
/// a probe, or a handshake for another relay); [`ChannelError::Wire`] for an unparsable hello.
pub fn accept(
    relay: &StaticKeypair,
    record_body: &[u8],
    choose: impl FnOnce(&ClientHello) -> ServerHello,
    out: &mut Vec<u8>,
) -> Result<(Channel, ClientHello), ChannelError> {
    let mut state = builder()?
        .local_private_key(relay.private())
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(snow_err("setup"))?
        .build_responder()
        .map_err(snow_err("setup"))?;
    let mut payload = vec![0u8; record_body.len()];
    let n = state
        .read_message(record_body, &mut payload)
        .map_err(snow_err("reading client's first message"))?;
    let client_hello = pigeon_wire::msg::decode_client_hello(&payload[..n])?;
    let server_hello = choose(&client_hello);
    let mut buf = vec![0u8; MAX_RECORD];
    let n = state
        .write_message(&pad_hello(encode(&server_hello)), &mut buf)
        .map_err(snow_err("writing answer"))?;
    push_record(&buf[..n], out)?;
    Ok((Channel::from_handshake(state)?, client_hello))
}

/// An established channel: seals outgoing stream bytes into padded records and opens incoming
/// records into protocol messages.
///
/// Holds no buffers between calls except a partly received message, so an idle channel costs
/// only its keys (a few hundred bytes).
pub struct Channel {
    transport: snow::TransportState,
    handshake_hash: [u8; 32],
    reader: MessageReader,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

impl Channel {
    fn from_handshake(state: snow::HandshakeState) -> Result<Self, ChannelError> {
        let handshake_hash: [u8; 32] = state
            .get_handshake_hash()
            .try_into()
            .map_err(|_| ChannelError::BadKey("handshake hash is not 32 bytes"))?;
        let transport = state
            .into_transport_mode()
            .map_err(snow_err("entering transport mode"))?;
        Ok(Self {
            transport,
            handshake_hash,
            reader: MessageReader::new(MAX_MESSAGE),
        })
    }

    /// The Noise handshake hash: unique to this session, known to both ends. Signatures that
    /// prove ownership cover it, so they cannot be replayed on another session.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Encrypts stream bytes (one or more length-delimited messages) into as few padded
    /// records as they fit, appended to `out` ready for the socket.
    ///
    /// # Errors
    /// [`ChannelError::Encrypt`] only if the nonce space is exhausted.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let mut plain = Vec::with_capacity(data.len().min(MAX_RECORD));
        for chunk in data.chunks(MAX_RECORD_DATA) {
            plain.clear();
            record::encode_plaintext(chunk, &mut plain)?;
            let start = out.len();
            out.resize(start + HEADER_LEN + plain.len() + record::TAG_LEN, 0);
            let n = self
                .transport
                .write_message(&plain, &mut out[start + HEADER_LEN..])
                .map_err(|e| ChannelError::Encrypt(e.to_string()))?;
            out[start..start + HEADER_LEN].copy_from_slice(&record::header(n)?);
            out.truncate(start + HEADER_LEN + n);
        }
        Ok(())
    }

    /// Decrypts one record body and calls `on_message` with each protocol message it
    /// completes. `scratch` is a reusable buffer owned by the caller (left empty on return).
    ///
    /// # Errors
    /// [`ChannelError::Decrypt`] if the record does not authenticate; [`ChannelError::Wire`]
    /// for a malformed record or an oversized message; or what `on_message` returns.
    pub fn open<E: From<ChannelError>>(
        &mut self,
        record_body: &[u8],
        scratch: &mut Vec<u8>,
        mut on_message: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        scratch.clear();
        scratch.resize(record_body.len(), 0);
        let n = self
            .transport
            .read_message(record_body, scratch)
            .map_err(|_| ChannelError::Decrypt)?;
        let data = record::decode_plaintext(&scratch[..n]).map_err(ChannelError::from)?;
        let result = self
            .reader
            .feed(data, |m| on_message(m).map_err(Feed::Inner));
        scratch.clear();
        result.map_err(|e| match e {
            Feed::Wire(w) => E::from(ChannelError::Wire(w)),
            Feed::Inner(inner) => inner,
        })
    }

    /// Whether a message is partly received (the peer must not close here).
    pub fn is_mid_message(&self) -> bool {
        self.reader.is_mid_message()
    }
}

/// Errors inside [`Channel::open`]: the stream's own, or the caller's.
enum Feed<E> {
    Wire(WireError),
    Inner(E),
}

impl<E> From<WireError> for Feed<E> {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn hellos_pad_to_exactly_96_bytes() {
        let hello = ClientHello {
            versions: vec![1],
            padding: Vec::new(),
        };
        let padded = pad_hello(hello.encode_to_vec());
        assert_eq!(padded.len(), HELLO_PADDED_LEN);
        let back = ClientHello::decode(padded.as_slice()).expect("still a ClientHello");
        assert_eq!(back.versions, vec![1]);
    }

    use super::*;
    use pigeon_wire::msg::{self, Ping, Request, request};
    use pigeon_wire::stream::encode_message;

    fn hello() -> ClientHello {
        ClientHello {
            versions: vec![1],
            padding: Vec::new(),
        }
    }

    fn pair() -> (Channel, Channel) {
        let relay = StaticKeypair::generate().expect("keys");
        let mut wire = Vec::new();
        let hs = ClientHandshake::start(relay.public(), &hello(), &mut wire).expect("start");
        let (body, _) = record::parse_record(&wire).expect("ok").expect("whole");
        let mut answer = Vec::new();
        let (server, got) = accept(
            &relay,
            body,
            |_| ServerHello {
                version: 1,
                error: None,
                padding: Vec::new(),
            },
            &mut answer,
        )
        .expect("accept");
        assert_eq!(got.versions, vec![1]);
        let (body, _) = record::parse_record(&answer).expect("ok").expect("whole");
        let (client, sh) = hs.finish(body).expect("finish");
        assert_eq!(sh.version, 1);
        assert_eq!(client.handshake_hash(), server.handshake_hash());
        (client, server)
    }

    fn ping_stream(n: usize) -> Vec<u8> {
        let mut s = Vec::new();
        for i in 0..n {
            let id = u64::try_from(i).expect("small");
            encode_message(
                &Request {
                    id,
                    body: Some(request::Body::Ping(Ping {
                        payload: vec![1; 10],
                    })),
                },
                &mut s,
            );
        }
        s
    }

    fn open_all(ch: &mut Channel, wire: &[u8]) -> Result<Vec<u64>, ChannelError> {
        let mut ids = Vec::new();
        let mut rest = wire;
        let mut scratch = Vec::new();
        while let Some((body, used)) = record::parse_record(rest)? {
            ch.open::<ChannelError>(body, &mut scratch, |m| {
                ids.push(msg::decode_request(m)?.id);
                Ok(())
            })?;
            rest = &rest[used..];
        }
        Ok(ids)
    }

    #[test]
    fn messages_flow_and_records_are_bucketed() {
        let (mut client, mut server) = pair();
        let mut wire = Vec::new();
        client.seal(&ping_stream(3), &mut wire).expect("seal");
        assert_eq!(wire.len(), HEADER_LEN + 256);
        assert_eq!(open_all(&mut server, &wire).expect("open"), vec![0, 1, 2]);
        // A large batch spans records and still arrives whole.
        let mut wire = Vec::new();
        client.seal(&ping_stream(9000), &mut wire).expect("seal");
        let ids = open_all(&mut server, &wire).expect("open");
        assert_eq!(ids.len(), 9000);
    }

    #[test]
    fn tampered_replayed_and_reordered_records_fail() {
        let (mut client, mut server) = pair();
        let mut a = Vec::new();
        client.seal(&ping_stream(1), &mut a).expect("seal");
        let mut b = Vec::new();
        client.seal(&ping_stream(1), &mut b).expect("seal");

        let mut tampered = a.clone();
        tampered[40] ^= 1;
        assert!(matches!(
            open_all(&mut server, &tampered),
            Err(ChannelError::Decrypt)
        ));

        let (mut client, mut server) = pair();
        let mut a = Vec::new();
        client.seal(&ping_stream(1), &mut a).expect("seal");
        let mut b = Vec::new();
        client.seal(&ping_stream(1), &mut b).expect("seal");
        // Reordered: b before a.
        assert!(open_all(&mut server, &b).is_err());

        let (mut client, mut server) = pair();
        let mut a = Vec::new();
        client.seal(&ping_stream(1), &mut a).expect("seal");
        open_all(&mut server, &a).expect("first time fine");
        // Replayed.
        assert!(matches!(
            open_all(&mut server, &a),
            Err(ChannelError::Decrypt)
        ));
    }

    #[test]
    fn wrong_relay_key_and_garbage_handshakes_fail() {
        let relay = StaticKeypair::generate().expect("keys");
        let other = StaticKeypair::generate().expect("keys");
        let mut wire = Vec::new();
        ClientHandshake::start(other.public(), &hello(), &mut wire).expect("start");
        let (body, _) = record::parse_record(&wire).expect("ok").expect("whole");
        let refused = accept(&relay, body, |_| ServerHello::default(), &mut Vec::new());
        assert!(matches!(refused, Err(ChannelError::Handshake { .. })));
        for garbage in [&[][..], &[0u8; 16], &[0xab; 200]] {
            assert!(accept(&relay, garbage, |_| ServerHello::default(), &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn keys_round_trip() {
        let kp = StaticKeypair::generate().expect("keys");
        let again = StaticKeypair::from_private(kp.private()).expect("32 bytes");
        assert_eq!(kp.public(), again.public());
        assert!(StaticKeypair::from_private(&[1, 2]).is_err());
    }
}
