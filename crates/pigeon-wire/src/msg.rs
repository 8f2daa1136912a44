//! Protobuf messages of protocol version 1.
//!
//! The normative schema is `docs/PROTOCOL.md`; these prost types are its Rust form (written
//! with prost's derive so the build needs no `protoc`). Field numbers never change meaning.
//!
//! Client → relay, inside the channel: a stream of [`Request`]. Relay → client: a stream of
//! [`ServerMessage`] (a [`Response`] to a request id, or a [`Push`] of mailbox messages).
//! In the Noise handshake payloads: [`ClientHello`] and [`ServerHello`].

use crate::{ErrorCode, ID_LEN, MESSAGE_ID_LEN, WireError};

/// Client's handshake payload: the versions it speaks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientHello {
    /// Protocol versions the client speaks.
    #[prost(uint32, repeated, tag = "1")]
    pub versions: Vec<u32>,
    /// Ignored filler, so handshakes of different clients have one size.
    #[prost(bytes = "vec", tag = "15")]
    pub padding: Vec<u8>,
}

/// Relay's handshake payload: the chosen version, or why there is none.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerHello {
    /// The version both speak; 0 when `error` is set.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Why the relay refuses the session.
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    /// Ignored filler.
    #[prost(bytes = "vec", tag = "15")]
    pub padding: Vec<u8>,
}

/// An error with a stable code and a sentence for people.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    /// An [`ErrorCode`] number.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Human-readable detail; never contains user data.
    #[prost(string, tag = "2")]
    pub message: String,
    /// When set, retry no sooner than this many milliseconds.
    #[prost(uint32, optional, tag = "3")]
    pub retry_after_ms: Option<u32>,
}

impl Error {
    /// An error carrying `code` and its standard sentence.
    pub fn from_code(code: ErrorCode) -> Self {
        Self {
            code: code.as_u32(),
            message: code.describe().to_owned(),
            retry_after_ms: None,
        }
    }

    /// The code as an enum.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_u32(self.code)
    }
}

/// One request from client to relay. `id` is chosen by the client and echoed in the response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Client-chosen request id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// What is asked.
    #[prost(oneof = "request::Body", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub body: Option<request::Body>,
}

/// The kinds of request.
pub mod request {
    /// What a [`super::Request`] asks for.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Create a mailbox.
        #[prost(message, tag = "2")]
        CreateMailbox(super::CreateMailbox),
        /// Post a message into a mailbox.
        #[prost(message, tag = "3")]
        Send(super::Send),
        /// Prove ownership of a mailbox and receive its messages.
        #[prost(message, tag = "4")]
        Subscribe(super::Subscribe),
        /// Stop receiving a mailbox's messages on this connection.
        #[prost(message, tag = "5")]
        Unsubscribe(super::Unsubscribe),
        /// Delete delivered messages.
        #[prost(message, tag = "6")]
        Ack(super::Ack),
        /// Delete a mailbox and everything in it.
        #[prost(message, tag = "7")]
        DeleteMailbox(super::DeleteMailbox),
        /// Publish MLS key packages into a slot.
        #[prost(message, tag = "8")]
        PublishKeyPackages(super::PublishKeyPackages),
        /// Take one key package from a slot.
        #[prost(message, tag = "9")]
        FetchKeyPackage(super::FetchKeyPackage),
        /// Liveness check.
        #[prost(message, tag = "10")]
        Ping(super::Ping),
        /// Replace a log's member capability (and owner key).
        #[prost(message, tag = "11")]
        UpdateMailbox(super::UpdateMailbox),
    }
}

/// Create a mailbox owned by `recipient_key`, which `sender_cap_hash` opens for posting.
///
/// For a log (`kind` 1), `recipient_key` is the log's owner key (it may update and delete the
/// log) and `sender_cap_hash` the hash of the member capability (it may post and read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateMailbox {
    /// 32 random bytes chosen by the creator.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// Ed25519 public key of the recipient (of a log: its owner).
    #[prost(bytes = "vec", tag = "2")]
    pub recipient_key: Vec<u8>,
    /// BLAKE2s-256 of the sender capability (the relay never learns the capability itself
    /// until someone posts with it); of a log: of the member capability.
    #[prost(bytes = "vec", tag = "3")]
    pub sender_cap_hash: Vec<u8>,
    /// Recipient's signature over the session-bound auth transcript (see pigeon-proto).
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
    /// A [`MailboxKind`] number: 0 an inbox, 1 a log.
    #[prost(uint32, tag = "5")]
    pub kind: u32,
}

/// Post one message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Send {
    /// Target mailbox.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// The 32-byte sender capability from the invitation.
    #[prost(bytes = "vec", tag = "2")]
    pub sender_cap: Vec<u8>,
    /// 16 bytes chosen by the sender; retries carry the same id and are stored once.
    #[prost(bytes = "vec", tag = "3")]
    pub message_id: Vec<u8>,
    /// End-to-end encrypted content; opaque to the relay.
    #[prost(bytes = "vec", tag = "4")]
    pub ciphertext: Vec<u8>,
    /// True only if the sender has never handed this message id to a connection before, so no
    /// earlier copy can exist: the relay then skips looking for one (most sends are first
    /// attempts, and the lookup is a read of the de-duplication index). A send that may be a
    /// retry — any after a lost connection, a restart or an unanswered request — says false,
    /// the default. A wrong true can store one message twice (the recipient drops the copy),
    /// never lose one.
    #[prost(bool, tag = "5")]
    pub first_attempt: bool,
}

/// Subscribe to a mailbox: the relay pushes pending and new messages in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Subscribe {
    /// The mailbox.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// Recipient's signature over the session-bound auth transcript (inboxes; logs ignore it).
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    /// Logs only: push messages with a sequence number above this one (default 0, from the
    /// oldest kept). Inboxes ignore it.
    #[prost(uint64, optional, tag = "3")]
    pub after_seq: Option<u64>,
    /// Logs only: the 32-byte member capability, current or retired. Inboxes ignore it.
    #[prost(bytes = "vec", tag = "4")]
    pub member_cap: Vec<u8>,
}

/// Stop pushes for a mailbox on this connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unsubscribe {
    /// The mailbox.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
}

/// Acknowledge (and so durably delete) delivered messages of a subscribed mailbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// The mailbox.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// Sequence numbers from [`Delivery::seq`].
    #[prost(uint64, repeated, tag = "2")]
    pub seqs: Vec<u64>,
}

/// Delete a mailbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteMailbox {
    /// The mailbox.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// Recipient's signature over the session-bound auth transcript.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// Replace a log's member capability, and optionally its owner key. The capability it replaces
/// is retired: it still reads the log up to the last message before the update, and posts
/// nothing more.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateMailbox {
    /// The log.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// The new owner's Ed25519 public key; empty keeps the current owner.
    #[prost(bytes = "vec", tag = "2")]
    pub new_owner_key: Vec<u8>,
    /// BLAKE2s-256 of the new member capability.
    #[prost(bytes = "vec", tag = "3")]
    pub new_cap_hash: Vec<u8>,
    /// The current owner's signature over the session-bound auth transcript, which covers
    /// the new key and hash (see pigeon-proto's `update_digest`).
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
}

/// Publish key packages. The first publish binds the slot to `owner_key`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishKeyPackages {
    /// 32 random bytes; knowing it lets anyone fetch from the slot.
    #[prost(bytes = "vec", tag = "1")]
    pub slot_id: Vec<u8>,
    /// Ed25519 key that owns the slot.
    #[prost(bytes = "vec", tag = "2")]
    pub owner_key: Vec<u8>,
    /// Owner's signature over the session-bound auth transcript, which covers the packages.
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    /// One-time key packages, each handed out once.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub one_time: Vec<Vec<u8>>,
    /// The last-resort key package, handed out when no one-time package is left.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub last_resort: Option<Vec<u8>>,
}

/// Take one key package from a slot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchKeyPackage {
    /// The slot.
    #[prost(bytes = "vec", tag = "1")]
    pub slot_id: Vec<u8>,
}

/// Liveness check; the payload is echoed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    /// Echoed back (at most 64 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

/// Relay → client.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMessage {
    /// A response or a push.
    #[prost(oneof = "server_message::Body", tags = "1, 2")]
    pub body: Option<server_message::Body>,
}

/// The kinds of relay message.
pub mod server_message {
    /// What a [`super::ServerMessage`] carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// The answer to a request.
        #[prost(message, tag = "1")]
        Response(super::Response),
        /// Messages from a subscribed mailbox.
        #[prost(message, tag = "2")]
        Push(super::Push),
    }
}

/// The answer to the request with the same id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The request's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Success payload or error.
    #[prost(oneof = "response::Result", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub result: Option<response::Result>,
}

/// The kinds of response.
pub mod response {
    /// What a [`super::Response`] says.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Result {
        /// The request failed.
        #[prost(message, tag = "2")]
        Error(super::Error),
        /// The mailbox exists now (or existed with the same owner).
        #[prost(message, tag = "3")]
        Created(super::Created),
        /// The message is durable.
        #[prost(message, tag = "4")]
        Sent(super::Sent),
        /// Subscribed; pushes follow.
        #[prost(message, tag = "5")]
        Subscribed(super::Subscribed),
        /// Messages deleted.
        #[prost(message, tag = "6")]
        Acked(super::Acked),
        /// Mailbox deleted, or unsubscribed.
        #[prost(message, tag = "7")]
        Done(super::Done),
        /// Key packages stored.
        #[prost(message, tag = "8")]
        Published(super::Published),
        /// One key package.
        #[prost(message, tag = "9")]
        KeyPackage(super::KeyPackage),
        /// Ping answered.
        #[prost(message, tag = "10")]
        Pong(super::Ping),
    }
}

/// Mailbox created.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Created {}

/// Message durable in the relay's store.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sent {
    /// Position in the mailbox.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// True when this message id was stored before (a retry).
    #[prost(bool, tag = "2")]
    pub duplicate: bool,
}

/// Subscription active.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Subscribed {
    /// Messages waiting at the time of subscribing.
    #[prost(uint64, tag = "1")]
    pub pending: u64,
}

/// Ack done.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Acked {
    /// How many of the acked messages were still stored.
    #[prost(uint64, tag = "1")]
    pub deleted: u64,
}

/// Generic success.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Done {}

/// Key packages stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Published {
    /// One-time packages now held in the slot.
    #[prost(uint32, tag = "1")]
    pub one_time_available: u32,
}

/// One key package.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyPackage {
    /// The serialized MLS key package.
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    /// True when this is the slot's last-resort package (it stays in the slot).
    #[prost(bool, tag = "2")]
    pub last_resort: bool,
}

/// Messages of one subscribed mailbox, in sequence order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Push {
    /// The mailbox.
    #[prost(bytes = "vec", tag = "1")]
    pub mailbox_id: Vec<u8>,
    /// The messages.
    #[prost(message, repeated, tag = "2")]
    pub deliveries: Vec<Delivery>,
}

/// One stored message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Delivery {
    /// Position in the mailbox; ack with it.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The sender's message id.
    #[prost(bytes = "vec", tag = "2")]
    pub message_id: Vec<u8>,
    /// When the relay stored it, in seconds since the Unix epoch, rounded down to the minute.
    #[prost(uint64, tag = "3")]
    pub received_at: u64,
    /// The ciphertext as posted.
    #[prost(bytes = "vec", tag = "4")]
    pub ciphertext: Vec<u8>,
}

fn decode<M: prost::Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, WireError> {
    M::decode(bytes).map_err(|e| WireError::Protobuf {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a [`Request`].
///
/// # Errors
/// [`WireError::Protobuf`] saying what did not parse.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    decode("request", bytes)
}

/// Decodes a [`ServerMessage`].
///
/// # Errors
/// [`WireError::Protobuf`] saying what did not parse.
pub fn decode_server_message(bytes: &[u8]) -> Result<ServerMessage, WireError> {
    decode("server message", bytes)
}

/// Decodes a [`ClientHello`].
///
/// # Errors
/// [`WireError::Protobuf`] saying what did not parse.
pub fn decode_client_hello(bytes: &[u8]) -> Result<ClientHello, WireError> {
    decode("client hello", bytes)
}

/// Decodes a [`ServerHello`].
///
/// # Errors
/// [`WireError::Protobuf`] saying what did not parse.
pub fn decode_server_hello(bytes: &[u8]) -> Result<ServerHello, WireError> {
    decode("server hello", bytes)
}

/// Checks that a bytes field has exactly `N` bytes.
///
/// # Errors
/// [`WireError::Field`] naming the message and field.
pub fn fixed<const N: usize>(
    what: &'static str,
    field: &'static str,
    bytes: &[u8],
) -> Result<[u8; N], WireError> {
    bytes.try_into().map_err(|_| WireError::Field {
        what,
        field,
        problem: format!("must be {N} bytes, got {}", bytes.len()),
    })
}

/// What a mailbox is, as numbered in [`CreateMailbox::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MailboxKind {
    /// A one-way queue: its owner reads it, and acknowledged messages are deleted.
    Inbox = 0,
    /// A group's log: every holder of the member capability posts and reads it, each from its
    /// own position; messages stay until they expire.
    Log = 1,
}

impl MailboxKind {
    /// The number on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// Parses a kind field.
    ///
    /// # Errors
    /// [`WireError::Field`] for a number that names no kind.
    pub fn parse(what: &'static str, n: u32) -> Result<Self, WireError> {
        match n {
            0 => Ok(Self::Inbox),
            1 => Ok(Self::Log),
            _ => Err(WireError::Field {
                what,
                field: "kind",
                problem: format!("{n} is not a mailbox kind (0 inbox, 1 log)"),
            }),
        }
    }
}

/// A 32-byte mailbox id, checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub [u8; ID_LEN]);

impl MailboxId {
    /// Parses a mailbox id field.
    ///
    /// # Errors
    /// [`WireError::Field`] if it is not 32 bytes.
    pub fn parse(what: &'static str, bytes: &[u8]) -> Result<Self, WireError> {
        fixed(what, "mailbox_id", bytes).map(Self)
    }
}

impl std::fmt::Debug for MailboxId {
    /// Only a 4-byte prefix: enough to tell mailboxes apart in a debugger, too little to link.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MailboxId({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A 16-byte client message id, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// Parses a message id field.
    ///
    /// # Errors
    /// [`WireError::Field`] if it is not 16 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        fixed("send", "message_id", bytes).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_unknown_is_safe() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(code.as_u32()), code);
            assert!(!code.describe().is_empty());
        }
        assert_eq!(ErrorCode::from_u32(9999), ErrorCode::Unknown);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let err = decode_request(&[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(err.to_string().starts_with("malformed request"), "{err}");
        assert!(MailboxId::parse("send", &[1, 2, 3]).is_err());
        assert!(MessageId::parse(&[0; 16]).is_ok());
    }

    #[test]
    fn mailbox_kinds_parse_and_others_are_field_errors() {
        for kind in [MailboxKind::Inbox, MailboxKind::Log] {
            assert_eq!(MailboxKind::parse("t", kind.as_u32()), Ok(kind));
        }
        let err = MailboxKind::parse("create_mailbox", 2).expect_err("no kind 2");
        assert!(err.to_string().contains("`kind`"), "{err}");
    }

    #[test]
    fn new_fields_default_to_the_old_behaviour() {
        // A request from a client that knows no logs decodes as an inbox request.
        let old = CreateMailbox {
            mailbox_id: vec![1; 32],
            recipient_key: vec![2; 32],
            sender_cap_hash: vec![3; 32],
            signature: vec![4; 64],
            kind: 0,
        };
        let bytes = prost::Message::encode_to_vec(&old);
        let decoded: CreateMailbox = prost::Message::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.kind, 0);
        let sub = Subscribe {
            mailbox_id: vec![1; 32],
            signature: vec![4; 64],
            after_seq: None,
            member_cap: Vec::new(),
        };
        let decoded: Subscribe =
            prost::Message::decode(prost::Message::encode_to_vec(&sub).as_slice())
                .expect("decodes");
        assert_eq!(decoded.after_seq, None);
        let update = Request {
            id: 9,
            body: Some(request::Body::UpdateMailbox(UpdateMailbox {
                mailbox_id: vec![1; 32],
                new_owner_key: Vec::new(),
                new_cap_hash: vec![5; 32],
                signature: vec![6; 64],
            })),
        };
        let bytes = prost::Message::encode_to_vec(&update);
        assert_eq!(decode_request(&bytes).expect("decodes"), update);
    }
}
