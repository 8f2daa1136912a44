//! The Pigeonpost client library.
//!
//! * [`Profile`]: one person's encrypted database (SQLCipher) with contacts, conversations
//!   (MLS state included), an outbox and inbox de-duplication. No network.
//! * [`Client`]: a profile plus sessions with relays: invitations, sending with retry and
//!   backoff, receiving with exactly-once recording, and an event stream for interfaces.
//! * [`RelayConnection`]: one Noise session with one relay, pipelined.
//! * [`Invite`]: the `pigeon://invite#…` link, parsed strictly.
//! * [`DeviceLink`]: the `pigeon://device#…` link that makes a new device another device of
//!   the same person.

pub mod attachment;
pub mod backup;
mod client;
mod codec;
pub mod device_link;
pub mod ids;
pub mod invite;
pub mod mailbox;
pub mod network;
pub mod profile;
pub mod relay;

pub use client::{
    Client, ClientEvent, Error, FileOutcome, FileProgress, FlushReport, JoinRequest,
    MIRROR_PATIENCE, ProgressSink, RELAY_STAGGER,
};
pub use codec::{StateCodec, StateCodecError, StateStorage, memory_state};
pub use device_link::{DeviceLink, DeviceLinkError};
pub use ids::{ContactId, GroupId};
pub use invite::{Invite, InviteError};
pub use mailbox::OwnedMailbox;
pub use pigeon_e2ee::Suite;
pub use pigeon_e2ee::content::AttachmentKind;
/// Makes SQLCipher's cryptography available; [`Profile`] calls it itself. For code that opens a
/// profile's database directly (tests, tools).
pub use pigeon_sqlcipher::install as install_sqlcipher;
pub use profile::{
    BackupSummary, Contact, DeviceInfo, DeviceLinkProgress, FileInfo, FileState, GroupChange,
    GroupInfo, GroupMessage, Handled, LinkJoinProgress, MAX_LINKED_CONVERSATIONS, MemberInfo,
    Message, Passphrase, Profile, ProfileError, RelayAdded, RestoreProgress, SavedProxy,
    device_label,
};
pub use relay::{ClientError, CloseReason, Event, RelayConnection, RouteProgress, Won, transports};
