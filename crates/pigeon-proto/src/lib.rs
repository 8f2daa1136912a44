//! Pigeonpost's protocol core, with no IO and no clock.
//!
//! * [`channel`]: the Noise IK channel between a client and a relay. It authenticates the relay
//!   by the static key from its link, hides everything after the first message, pads every
//!   record to a size bucket, and turns a byte stream into protocol messages and back.
//! * [`auth`]: the session-bound signatures with which a recipient proves it owns a mailbox or
//!   key-package slot, and the hash under which the relay keeps sender capabilities.
//! * [`session`]: a client's session with a relay (handshake, requests, answers, pushes) and
//!   the relay's side of the handshake, as state machines driven by bytes, `now` and entropy.
//! * [`rate`]: a token bucket driven by an explicit `now`, for per-capability limits.
//!
//! Callers own sockets, tasks and clocks; everything here takes bytes (and `now` where time
//! matters) and returns bytes, messages or errors.

pub mod auth;
pub mod channel;
pub mod rate;
pub mod session;

pub use auth::{AuthError, AuthOp, SigningKey, VerifyingKey};
pub use channel::{Channel, ChannelError, ClientHandshake, Entropy, StaticKeypair};
pub use session::{ClientSession, Closed, ServerHandshake, SessionEvent};
