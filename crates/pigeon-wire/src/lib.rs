//! The Pigeonpost wire format, with no IO.
//!
//! Three layers live here, each a pure function of bytes:
//!
//! * [`record`]: how the encrypted channel cuts a byte stream into length-prefixed records, and
//!   the size buckets every record is padded to, so that lengths on the wire say little.
//! * [`stream`]: how protocol messages are laid into the decrypted byte stream (length-delimited
//!   protobuf), with a hard limit on message size and no buffer held while idle.
//! * [`msg`]: the protobuf messages themselves (requests, responses, pushes, hellos), and
//!   [`ErrorCode`], the stable numeric error codes with a human sentence each.
//!
//! Everything that parses bytes returns a [`WireError`] that says what was wrong; nothing here
//! panics on input.

mod error;
pub mod msg;
pub mod record;
pub mod stream;

pub use error::{ErrorCode, ErrorKind, WireError};

/// Protocol versions this build speaks, newest first. A client offers all of them in its hello;
/// the relay picks the highest one it also speaks.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];

/// Largest ciphertext a client may post into a mailbox (64 KiB).
pub const MAX_CIPHERTEXT: usize = 64 * 1024;

/// Largest protocol message (one protobuf) either side accepts: room for one maximal ciphertext
/// plus its envelope, or a push batch of smaller ones.
pub const MAX_MESSAGE: usize = MAX_CIPHERTEXT + 4 * 1024;

/// Length of a mailbox id, a key-package slot id and a sender capability.
pub const ID_LEN: usize = 32;

/// Length of a client-chosen message id.
pub const MESSAGE_ID_LEN: usize = 16;
