//! Device links: `pigeon://device#<base64url protobuf>` (issue #16).
//!
//! `pigeon devices link` on a device the person already has prints one; `pigeon init --link`
//! on a new device follows it. The link carries:
//!
//! * the existing device's relay,
//! * a one-time mailbox of the existing device's there, and the capability to post into it,
//! * a secret that seals everything the two devices say to each other, so the relay sees
//!   only ciphertext on two mailboxes,
//! * the person's name and the name the new device gets (the new device may choose another).
//!
//! Whoever holds the link can ask to become one of the person's devices until it is used
//! (once) or expires ([`DEVICE_LINK_TTL_MS`]): it is shown to the person's own new device and
//! nobody else, like a password. Parsing is strict and says what is wrong.

use crate::invite::check_name;
use pigeon_transport::{LinkError, LinkKind, RelayLink, decode_link, encode_link};
use prost::Message as _;

/// The device link format this build reads and writes.
pub const DEVICE_LINK_VERSION: u32 = 1;
/// How long a device link can be followed after it was made.
pub const DEVICE_LINK_TTL_MS: i64 = 10 * 60 * 1000;
/// Longest device name, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;

#[derive(Clone, PartialEq, prost::Message)]
struct DeviceLinkPayload {
    #[prost(uint32, tag = "1")]
    version: u32,
    /// An encoded `RelayLinkPayload`.
    #[prost(bytes = "vec", tag = "2")]
    relay: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    mailbox_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    sender_cap: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    secret: Vec<u8>,
    #[prost(string, tag = "6")]
    name: String,
    #[prost(string, tag = "7")]
    device: String,
}

/// A parsed, checked device link.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceLink {
    /// The existing device's relay.
    pub relay: RelayLink,
    /// The existing device's one-time mailbox for this link.
    pub mailbox_id: [u8; 32],
    /// The capability to post into it.
    pub sender_cap: [u8; 32],
    /// Seals everything the two devices say to each other.
    pub secret: [u8; 32],
    /// The person's name.
    pub name: String,
    /// The name suggested for the new device.
    pub device: String,
}

impl std::fmt::Debug for DeviceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLink").finish_non_exhaustive()
    }
}

/// Why a device link was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceLinkError {
    /// The link envelope is wrong (not a link, wrong kind, cut off, bad characters...).
    #[error("{0}")]
    Link(#[source] LinkError),
    /// The data inside does not decode.
    #[error("the device link's data is damaged: {0}")]
    Damaged(String),
    /// Made by a newer version.
    #[error(
        "this device link is format version {0}; this version of pigeon reads version {DEVICE_LINK_VERSION}: update pigeon"
    )]
    Version(u32),
    /// A field breaks a rule.
    #[error("the device link's {field} is invalid: {problem}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The relay inside is not a valid relay link.
    #[error("the device link's relay is invalid: {0}")]
    Relay(#[source] LinkError),
}

impl DeviceLinkError {
    /// Who is at fault: always the input.
    pub fn kind(&self) -> pigeon_wire::ErrorKind {
        pigeon_wire::ErrorKind::BadInput
    }
}

/// Checks a device name: at most 64 characters, none of them control characters (empty is
/// the first device's name).
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_device_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars > MAX_DEVICE_NAME_CHARS {
        Err(format!(
            "the device name has {chars} characters; at most {MAX_DEVICE_NAME_CHARS} are allowed"
        ))
    } else if name.chars().any(char::is_control) {
        Err("the device name contains control characters".to_owned())
    } else {
        Ok(())
    }
}

fn fixed(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], DeviceLinkError> {
    let value: [u8; 32] = bytes.try_into().map_err(|_| DeviceLinkError::Field {
        field,
        problem: format!("{} bytes where 32 are needed", bytes.len()),
    })?;
    if value == [0; 32] {
        return Err(DeviceLinkError::Field {
            field,
            problem: "all zeros".to_owned(),
        });
    }
    Ok(value)
}

impl DeviceLink {
    /// Parses a `pigeon://device#…` link. Surrounding whitespace is ignored.
    ///
    /// # Errors
    /// A [`DeviceLinkError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, DeviceLinkError> {
        let bytes = decode_link(LinkKind::Device, text).map_err(DeviceLinkError::Link)?;
        let p = DeviceLinkPayload::decode(bytes.as_slice())
            .map_err(|e| DeviceLinkError::Damaged(e.to_string()))?;
        if p.version != DEVICE_LINK_VERSION {
            return Err(DeviceLinkError::Version(p.version));
        }
        let relay = RelayLink::from_payload_bytes(&p.relay).map_err(DeviceLinkError::Relay)?;
        check_name(&p.name).map_err(|problem| DeviceLinkError::Field {
            field: "name",
            problem,
        })?;
        check_device_name(&p.device).map_err(|problem| DeviceLinkError::Field {
            field: "device name",
            problem,
        })?;
        Ok(Self {
            relay,
            mailbox_id: fixed("mailbox", &p.mailbox_id)?,
            sender_cap: fixed("sender capability", &p.sender_cap)?,
            secret: fixed("secret", &p.secret)?,
            name: p.name,
            device: p.device,
        })
    }

    /// The link text.
    ///
    /// # Errors
    /// If the link would be longer than links may be.
    pub fn to_link(&self) -> Result<String, DeviceLinkError> {
        let payload = DeviceLinkPayload {
            version: DEVICE_LINK_VERSION,
            relay: self.relay.to_payload().encode_to_vec(),
            mailbox_id: self.mailbox_id.to_vec(),
            sender_cap: self.sender_cap.to_vec(),
            secret: self.secret.to_vec(),
            name: self.name.clone(),
            device: self.device.clone(),
        };
        encode_link(LinkKind::Device, &payload.encode_to_vec()).map_err(DeviceLinkError::Link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RelayLink {
        let route = "tcp://127.0.0.1:4000"
            .parse::<pigeon_transport::Route>()
            .expect("route");
        RelayLink::new([9; 32], vec![route], None).expect("relay")
    }

    fn link() -> DeviceLink {
        DeviceLink {
            relay: relay(),
            mailbox_id: [1; 32],
            sender_cap: [2; 32],
            secret: [3; 32],
            name: "alice".to_owned(),
            device: "device 2".to_owned(),
        }
    }

    #[test]
    fn a_device_link_round_trips_and_garbage_is_refused_with_a_reason() {
        let text = link().to_link().expect("encodes");
        assert!(text.starts_with("pigeon://device#"));
        assert_eq!(DeviceLink::parse(&text).expect("parses"), link());
        // An invitation is not a device link.
        let invite = text.replacen("device#", "invite#", 1);
        assert!(DeviceLink::parse(&invite).is_err());
        // Cut off, all-zero fields, control characters: each refused with a sentence.
        assert!(DeviceLink::parse(&text[..text.len() / 2]).is_err());
        let mut zero = link();
        zero.secret = [0; 32];
        let e = DeviceLink::parse(&zero.to_link().expect("encodes")).expect_err("refused");
        assert!(e.to_string().contains("secret"), "{e}");
        let mut bad = link();
        bad.device = "lap\u{1b}[2Jtop".to_owned();
        let e = DeviceLink::parse(&bad.to_link().expect("encodes")).expect_err("refused");
        assert!(e.to_string().contains("device name"), "{e}");
    }
}
