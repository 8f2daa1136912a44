//! The Pigeonpost client library.
//!
//! For now it holds the connection to a relay ([`relay::RelayConnection`]): a Noise channel
//! over any transport, with pipelined requests and pushed mailbox messages. Profiles,
//! contacts, conversations and the outbox build on it.

pub mod mailbox;
pub mod relay;

pub use mailbox::OwnedMailbox;
pub use relay::{ClientError, CloseReason, Event, RelayConnection};
