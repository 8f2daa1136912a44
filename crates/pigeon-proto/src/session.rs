//! A session between a client and a relay, as state machines without I/O (shaped like quinn's
//! `Connection`): bytes in with [`ClientSession::handle_input`], bytes out with
//! [`ClientSession::poll_transmit`], what happened with [`ClientSession::poll_event`], and the
//! next moment the session needs the clock with [`ClientSession::poll_timeout`]. Time (`now`)
//! and randomness ([`Entropy`]) are passed in, so a session can be driven — and tested — by
//! anything: the client's async connection, the lab's scenario runner, a benchmark, a unit
//! test with no socket at all. The relay's side of the handshake is [`ServerHandshake`].
//!
//! A session is one Noise channel ([`crate::channel`]): the client's first record carries its
//! hello; requests may be queued before the relay answers and go out, sealed together, as soon
//! as the channel is open; responses are matched to requests by id; pushes and the relay's
//! last word (an error with id 0) come out as events. After any failure the session is closed
//! and says why; nothing more comes out of it but that.

use crate::channel::{self, Channel, ChannelError, ClientHandshake, Entropy, StaticKeypair};
use pigeon_wire::msg::{
    self, ClientHello, Request, ServerHello, request, response, server_message,
};
use pigeon_wire::record::{self, MAX_RECORD};
use pigeon_wire::stream::encode_message;
use pigeon_wire::{ErrorCode, PROTOCOL_VERSIONS, WireError};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Requests queued before the relay has answered the handshake, at most (they are sealed and
/// sent once it does).
pub const MAX_EARLY_REQUESTS: usize = 4096;

/// Something the session has to tell its driver.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The relay answered the handshake: the channel is open.
    Connected {
        /// The protocol version agreed.
        version: u32,
    },
    /// The relay's answer to request `id`.
    Response {
        /// The request's id, as [`ClientSession::request`] returned it.
        id: u64,
        /// What the relay answered.
        result: response::Result,
    },
    /// Messages the relay pushed for a subscription.
    Push(msg::Push),
    /// The session is over (the last event it gives).
    Closed(Closed),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Closed {
    /// The handshake failed: not the relay the key names, or the bytes were altered.
    #[error("the relay's handshake failed: {0}")]
    Handshake(String),
    /// The relay refused the session in its handshake answer (no protocol version in common).
    #[error("the relay refused the session: {message} (code {})", code.as_u32())]
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// The relay's sentence.
        message: String,
    },
    /// No handshake answer came in time.
    #[error("the relay did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The relay closed the session and said why (for example, it is shutting down).
    #[error("the relay closed the session: {}", .0.message)]
    Relay(msg::Error),
    /// The connection ended.
    #[error("the connection ended")]
    Eof,
    /// The relay sent bytes that break the protocol (or the path altered them).
    #[error("the relay broke the protocol: {0}")]
    Protocol(String),
    /// The driver closed it.
    #[error("the session was closed here")]
    Local,
}

/// Why a request could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The session is over.
    #[error("the session has ended")]
    Closed,
    /// Too many requests wait for the handshake to finish.
    #[error("more than {MAX_EARLY_REQUESTS} requests wait for the relay's handshake answer")]
    TooManyEarly,
}

enum State {
    /// Waiting for the relay's answer, until `deadline`.
    Handshaking {
        handshake: Box<ClientHandshake>,
        deadline: Instant,
        timeout: Duration,
    },
    Open(Box<Channel>),
    Closed,
}

/// The client's side of a session with a relay.
pub struct ClientSession {
    state: State,
    /// Bytes received and not yet parsed into whole records.
    inbuf: Vec<u8>,
    /// Encoded requests not yet sealed.
    plain: Vec<u8>,
    /// Requests in `plain` while the handshake is still open.
    early: usize,
    /// Sealed bytes for the wire.
    transmit: Vec<u8>,
    /// Scratch space for opening records.
    scratch: Vec<u8>,
    next_id: u64,
    events: VecDeque<SessionEvent>,
    handshake_hash: Option<[u8; 32]>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("open", &matches!(self.state, State::Open(_)))
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// Starts a session with the relay whose static key is `relay_key` at `now`: the first
    /// record (the client's hello) is ready for [`Self::poll_transmit`], and the relay must
    /// answer within `handshake_timeout`.
    ///
    /// # Errors
    /// If the key is malformed.
    pub fn connect(
        relay_key: &[u8; 32],
        entropy: Entropy,
        now: Instant,
        handshake_timeout: Duration,
    ) -> Result<Self, ChannelError> {
        let hello = ClientHello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            padding: Vec::new(),
        };
        let mut transmit = Vec::new();
        let handshake = ClientHandshake::start_with(relay_key, &hello, entropy, &mut transmit)?;
        Ok(Self {
            state: State::Handshaking {
                handshake: Box::new(handshake),
                deadline: now + handshake_timeout,
                timeout: handshake_timeout,
            },
            inbuf: Vec::new(),
            plain: Vec::new(),
            early: 0,
            transmit,
            scratch: Vec::new(),
            next_id: 1,
            events: VecDeque::new(),
            handshake_hash: None,
        })
    }

    /// Queues a request; its answer comes as [`SessionEvent::Response`] with the id returned.
    ///
    /// # Errors
    /// [`RequestError::Closed`] once the session is over; [`RequestError::TooManyEarly`] when
    /// too many wait for the handshake.
    pub fn request(&mut self, body: request::Body) -> Result<u64, RequestError> {
        match self.state {
            State::Closed => return Err(RequestError::Closed),
            State::Handshaking { .. } if self.early >= MAX_EARLY_REQUESTS => {
                return Err(RequestError::TooManyEarly);
            }
            State::Handshaking { .. } => self.early += 1,
            State::Open(_) => {}
        }
        let id = self.next_id;
        self.next_id += 1;
        encode_message(
            &Request {
                id,
                body: Some(body),
            },
            &mut self.plain,
        );
        Ok(id)
    }

    /// Takes bytes that arrived from the relay.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.handle_timeout(now);
        self.inbuf.extend_from_slice(data);
        if let Err(reason) = self.process() {
            self.close(reason);
        }
    }

    /// The connection ended (the peer closed it, or reading failed).
    pub fn handle_eof(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.close(Closed::Eof);
        }
    }

    /// Ends the session from this side.
    pub fn close_locally(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.close(Closed::Local);
        }
    }

    /// Appends what is to be written to `out`; `false` when there is nothing.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if let State::Open(channel) = &mut self.state
            && !self.plain.is_empty()
        {
            let sealed = channel.seal(&self.plain, &mut self.transmit);
            self.plain.clear();
            if self.plain.capacity() > 1 << 20 {
                self.plain = Vec::new();
            }
            if let Err(e) = sealed {
                self.close(Closed::Protocol(e.to_string()));
                return false;
            }
        }
        if self.transmit.is_empty() {
            return false;
        }
        out.append(&mut self.transmit);
        true
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When the session next needs [`Self::handle_timeout`] (the handshake's deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshaking { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// Lets time pass: a handshake past its deadline fails.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Handshaking {
            deadline, timeout, ..
        } = &self.state
            && now >= *deadline
        {
            let timeout = *timeout;
            self.close(Closed::HandshakeTimeout(timeout));
        }
    }

    /// The channel's handshake hash (what ownership proofs sign), once open.
    pub fn handshake_hash(&self) -> Option<&[u8; 32]> {
        self.handshake_hash.as_ref()
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    fn close(&mut self, reason: Closed) {
        self.state = State::Closed;
        self.plain = Vec::new();
        self.transmit = Vec::new();
        self.inbuf = Vec::new();
        self.events.push_back(SessionEvent::Closed(reason));
    }

    fn process(&mut self) -> Result<(), Closed> {
        if matches!(self.state, State::Handshaking { .. }) {
            let Some((body, used)) =
                record::parse_record(&self.inbuf).map_err(|e| Closed::Handshake(e.to_string()))?
            else {
                return Ok(());
            };
            let State::Handshaking { handshake, .. } =
                std::mem::replace(&mut self.state, State::Closed)
            else {
                return Ok(());
            };
            let (channel, hello) = handshake
                .finish(body)
                .map_err(|e| Closed::Handshake(e.to_string()))?;
            self.inbuf.drain(..used);
            if let Some(err) = hello.error {
                return Err(Closed::Refused {
                    code: err.error_code(),
                    message: err.message,
                });
            }
            self.handshake_hash = Some(*channel.handshake_hash());
            self.state = State::Open(Box::new(channel));
            self.early = 0;
            self.events.push_back(SessionEvent::Connected {
                version: hello.version,
            });
        }
        let State::Open(channel) = &mut self.state else {
            return Ok(());
        };
        let mut consumed = 0;
        let mut last_word = None;
        while let Some((body, used)) = record::parse_record(&self.inbuf[consumed..])
            .map_err(|e| Closed::Protocol(e.to_string()))?
        {
            let events = &mut self.events;
            channel
                .open::<ChannelError>(body, &mut self.scratch, |m| {
                    let message = msg::decode_server_message(m)?;
                    match message.body {
                        Some(server_message::Body::Response(r)) if r.id == 0 => {
                            if let Some(response::Result::Error(e)) = r.result {
                                last_word = Some(e);
                            }
                        }
                        Some(server_message::Body::Response(r)) => {
                            if let Some(result) = r.result {
                                events.push_back(SessionEvent::Response { id: r.id, result });
                            }
                        }
                        Some(server_message::Body::Push(p)) => {
                            events.push_back(SessionEvent::Push(p));
                        }
                        None => {}
                    }
                    Ok(())
                })
                .map_err(|e| Closed::Protocol(e.to_string()))?;
            consumed += used;
            if let Some(e) = last_word.take() {
                return Err(Closed::Relay(e));
            }
        }
        self.inbuf.drain(..consumed);
        if self.inbuf.capacity() > 4 * (MAX_RECORD + 2) && self.inbuf.len() < MAX_RECORD {
            self.inbuf.shrink_to(MAX_RECORD + 2);
        }
        Ok(())
    }
}

/// The version a relay speaks with a client that offers `hello`, as its answer; `None` in the
/// answer's version (0, with an error) when there is none in common.
pub fn choose_version(hello: &ClientHello) -> ServerHello {
    match PROTOCOL_VERSIONS
        .iter()
        .copied()
        .find(|v| hello.versions.contains(v))
    {
        Some(version) => ServerHello {
            version,
            error: None,
            padding: Vec::new(),
        },
        None => ServerHello {
            version: 0,
            error: Some(msg::Error::from_code(ErrorCode::UnsupportedVersion)),
            padding: Vec::new(),
        },
    }
}

/// The relay's side of a handshake, without I/O: bytes in until the client's first record is
/// whole, then the answer to write and the open channel.
#[derive(Debug)]
pub struct ServerHandshake {
    buf: Vec<u8>,
    deadline: Instant,
}

/// What a handshake came to.
#[derive(Debug)]
#[non_exhaustive]
pub enum Accepted {
    /// Not yet: the first record is not whole.
    NeedMore,
    /// The channel is open. Write `answer`; `rest` is what the client sent after its first
    /// record (requests it pipelined).
    Open {
        /// The open channel.
        channel: Box<Channel>,
        /// The relay's answer record.
        answer: Vec<u8>,
        /// Bytes after the first record.
        rest: Vec<u8>,
    },
    /// No protocol version in common: write `answer` (it says so), then close.
    Refused {
        /// The relay's answer record.
        answer: Vec<u8>,
    },
}

/// Why a handshake failed (the connection is then closed without an answer: a prober learns
/// nothing from one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not a handshake to this relay's key.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The first record is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The deadline passed.
    #[error("no complete handshake within the deadline")]
    Timeout,
}

impl ServerHandshake {
    /// A handshake that must complete by `now + timeout`.
    pub fn new(now: Instant, timeout: Duration) -> Self {
        Self {
            buf: Vec::new(),
            deadline: now + timeout,
        }
    }

    /// When the handshake fails for lack of bytes.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Bytes received so far that are not yet a whole record.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes bytes from the client.
    ///
    /// # Errors
    /// [`HandshakeError`] when the bytes are not a handshake to `keys`, or `now` is past the
    /// deadline.
    pub fn handle_input(
        &mut self,
        now: Instant,
        keys: &StaticKeypair,
        data: &[u8],
    ) -> Result<Accepted, HandshakeError> {
        if now >= self.deadline {
            return Err(HandshakeError::Timeout);
        }
        self.buf.extend_from_slice(data);
        let Some((body, used)) = record::parse_record(&self.buf)? else {
            return Ok(Accepted::NeedMore);
        };
        let mut answer = Vec::new();
        let mut refused = false;
        let (channel, _hello) = channel::accept(
            keys,
            body,
            |hello| {
                let chosen = choose_version(hello);
                refused = chosen.error.is_some();
                chosen
            },
            &mut answer,
        )?;
        if refused {
            return Ok(Accepted::Refused { answer });
        }
        let rest = self.buf.split_off(used);
        self.buf = Vec::new();
        Ok(Accepted::Open {
            channel: Box::new(channel),
            answer,
            rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_wire::msg::{Ping, Push, Response, ServerMessage};

    fn entropy(n: u8) -> Entropy {
        Entropy::from_bytes([n; 64])
    }

    /// A relay's side, by hand: the handshake, then requests opened and answers sealed.
    struct Relay {
        keys: StaticKeypair,
        channel: Option<Box<Channel>>,
        scratch: Vec<u8>,
    }

    impl Relay {
        fn new() -> Self {
            Self {
                keys: StaticKeypair::from_private(&[9; 32]).expect("keys"),
                channel: None,
                scratch: Vec::new(),
            }
        }

        /// Takes client bytes; returns the requests in them and the answer bytes to send back
        /// (the handshake answer, then a Pong for each Ping).
        fn take(&mut self, now: Instant, bytes: &[u8]) -> (Vec<u64>, Vec<u8>) {
            let mut out = Vec::new();
            let mut rest = bytes.to_vec();
            if self.channel.is_none() {
                let mut hs = ServerHandshake::new(now, Duration::from_secs(5));
                match hs.handle_input(now, &self.keys, bytes).expect("handshake") {
                    Accepted::Open {
                        channel,
                        answer,
                        rest: after,
                    } => {
                        self.channel = Some(channel);
                        out.extend(answer);
                        rest = after;
                    }
                    other => panic!("{other:?}"),
                }
            }
            let channel = self.channel.as_mut().expect("open");
            let mut ids = Vec::new();
            let mut plain = Vec::new();
            let mut at = 0;
            while let Some((body, used)) = record::parse_record(&rest[at..]).expect("record") {
                channel
                    .open::<ChannelError>(body, &mut self.scratch, |m| {
                        let r = msg::decode_request(m).expect("request");
                        ids.push(r.id);
                        encode_message(
                            &ServerMessage {
                                body: Some(server_message::Body::Response(Response {
                                    id: r.id,
                                    result: Some(response::Result::Pong(Ping {
                                        payload: Vec::new(),
                                    })),
                                })),
                            },
                            &mut plain,
                        );
                        Ok(())
                    })
                    .expect("open");
                at += used;
            }
            if !plain.is_empty() {
                channel.seal(&plain, &mut out).expect("seal");
            }
            (ids, out)
        }

        fn send(&mut self, message: &ServerMessage) -> Vec<u8> {
            let mut plain = Vec::new();
            encode_message(message, &mut plain);
            let mut out = Vec::new();
            self.channel
                .as_mut()
                .expect("open")
                .seal(&plain, &mut out)
                .expect("seal");
            out
        }
    }

    fn ping() -> request::Body {
        request::Body::Ping(Ping {
            payload: vec![1, 2, 3],
        })
    }

    fn drain(session: &mut ClientSession) -> Vec<SessionEvent> {
        std::iter::from_fn(|| session.poll_event()).collect()
    }

    #[test]
    fn requests_queued_early_go_out_once_open_and_answers_match() {
        let now = Instant::now();
        let mut relay = Relay::new();
        let mut s =
            ClientSession::connect(relay.keys.public(), entropy(1), now, Duration::from_secs(5))
                .expect("connect");
        let early: Vec<u64> = (0..3).map(|_| s.request(ping()).expect("queued")).collect();
        let mut wire = Vec::new();
        assert!(s.poll_transmit(&mut wire), "the hello goes first");
        assert!(!s.poll_transmit(&mut wire), "requests wait for the channel");
        let (ids, answer) = relay.take(now, &wire);
        assert!(ids.is_empty());
        s.handle_input(now, &answer);
        assert!(matches!(
            drain(&mut s).as_slice(),
            [SessionEvent::Connected { version: 1 }]
        ));
        assert!(s.handshake_hash().is_some());
        let mut wire = Vec::new();
        assert!(s.poll_transmit(&mut wire));
        let (ids, answer) = relay.take(now, &wire);
        assert_eq!(ids, early);
        // The answer arrives a byte at a time: nothing is lost or doubled.
        for b in &answer {
            s.handle_input(now, std::slice::from_ref(b));
        }
        let got: Vec<u64> = drain(&mut s)
            .into_iter()
            .map(|e| match e {
                SessionEvent::Response { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, early);
        // A push, then the relay's last word.
        let push = relay.send(&ServerMessage {
            body: Some(server_message::Body::Push(Push::default())),
        });
        let bye = relay.send(&ServerMessage {
            body: Some(server_message::Body::Response(Response {
                id: 0,
                result: Some(response::Result::Error(msg::Error::from_code(
                    ErrorCode::ShuttingDown,
                ))),
            })),
        });
        s.handle_input(now, &[push, bye].concat());
        let events = drain(&mut s);
        assert!(matches!(events[0], SessionEvent::Push(_)), "{events:?}");
        assert!(
            matches!(&events[1], SessionEvent::Closed(Closed::Relay(e)) if e.error_code() == ErrorCode::ShuttingDown),
            "{events:?}"
        );
        assert_eq!(s.request(ping()), Err(RequestError::Closed));
    }

    #[test]
    fn the_same_entropy_makes_the_same_first_record() {
        let now = Instant::now();
        let key = *Relay::new().keys.public();
        let first = |n| {
            let mut s = ClientSession::connect(&key, entropy(n), now, Duration::from_secs(1))
                .expect("connect");
            let mut out = Vec::new();
            s.poll_transmit(&mut out);
            out
        };
        assert_eq!(first(7), first(7));
        assert_ne!(first(7), first(8));
    }

    #[test]
    fn a_silent_relay_times_out_and_a_wrong_one_fails_the_handshake() {
        let now = Instant::now();
        let relay = Relay::new();
        let mut s =
            ClientSession::connect(relay.keys.public(), entropy(2), now, Duration::from_secs(3))
                .expect("connect");
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(3)));
        s.handle_timeout(now + Duration::from_secs(2));
        assert!(!s.is_closed());
        s.handle_timeout(now + Duration::from_secs(3));
        assert!(matches!(
            drain(&mut s).as_slice(),
            [SessionEvent::Closed(Closed::HandshakeTimeout(_))]
        ));
        // A relay with another key cannot answer; garbage breaks the handshake too.
        let mut other = Relay::new();
        other.keys = StaticKeypair::from_private(&[3; 32]).expect("keys");
        let mut s =
            ClientSession::connect(relay.keys.public(), entropy(3), now, Duration::from_secs(3))
                .expect("connect");
        let mut wire = Vec::new();
        s.poll_transmit(&mut wire);
        let mut hs = ServerHandshake::new(now, Duration::from_secs(3));
        assert!(hs.handle_input(now, &other.keys, &wire).is_err());
        s.handle_input(now, &[0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            drain(&mut s).as_slice(),
            [SessionEvent::Closed(Closed::Handshake(_))]
        ));
    }

    #[test]
    fn the_server_handshake_takes_its_record_in_pieces_and_keeps_what_follows() {
        let now = Instant::now();
        let relay = Relay::new();
        let mut s =
            ClientSession::connect(relay.keys.public(), entropy(4), now, Duration::from_secs(3))
                .expect("connect");
        let mut wire = Vec::new();
        s.poll_transmit(&mut wire);
        wire.extend_from_slice(b"pipelined");
        let mut hs = ServerHandshake::new(now, Duration::from_secs(3));
        let (a, b) = wire.split_at(10);
        assert!(matches!(
            hs.handle_input(now, &relay.keys, a).expect("part"),
            Accepted::NeedMore
        ));
        match hs.handle_input(now, &relay.keys, b).expect("rest") {
            Accepted::Open { rest, .. } => assert_eq!(rest, b"pipelined"),
            other => panic!("{other:?}"),
        }
        // Past its deadline a handshake fails however the bytes look.
        let mut late = ServerHandshake::new(now, Duration::from_secs(1));
        assert!(matches!(
            late.handle_input(now + Duration::from_secs(1), &relay.keys, &wire),
            Err(HandshakeError::Timeout)
        ));
        // No version in common: refused with an answer that says so.
        let none = choose_version(&ClientHello {
            versions: vec![99],
            padding: Vec::new(),
        });
        assert_eq!(
            none.error.map(|e| e.error_code()),
            Some(ErrorCode::UnsupportedVersion)
        );
    }
}
