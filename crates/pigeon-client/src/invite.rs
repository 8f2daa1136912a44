//! Invitation links: `pigeon://invite#<base64url protobuf>`.
//!
//! An invitation carries everything the person invited needs to start a conversation and
//! nothing that names the inviter to a relay:
//!
//! * the inviter's relay (its Noise key and routes),
//! * a one-time mailbox of the inviter's and the capability to post into it: the accepting side
//!   starts the conversation (a group of two on a log of its relay) and sends the Welcome
//!   there; the inviter deletes the mailbox once the Welcome is in, so a used link opens
//!   nothing,
//! * one key-package slot per ciphersuite offered (X-Wing first) — the key packages are too
//!   big for a QR code, so they wait on the relay and the link names them,
//! * the public signature key those key packages must carry, so a relay that swaps in its own
//!   key package is caught,
//! * a secret that seals the Welcome (and, for a group, the request to join), so a relay that
//!   takes the key package itself cannot pose as the person invited,
//! * the inviter's display name, to show whose invitation it is.
//!
//! Parsing is strict: each field is checked and a refusal says what is wrong.

use pigeon_e2ee::Suite;
use pigeon_transport::{LinkError, LinkKind, RelayLink, decode_link, encode_link};
use prost::Message as _;

/// The invitation format this build reads and writes.
pub const INVITE_VERSION: u32 = 1;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most proxies an invitation carries.
pub const MAX_INVITE_PROXIES: usize = 4;

/// The wire form of an invitation.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InvitePayload {
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
    signature_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    secret: Vec<u8>,
    #[prost(string, tag = "7")]
    name: String,
    #[prost(message, repeated, tag = "8")]
    offers: Vec<OfferPayload>,
    /// Set for an invitation to a group: the group's name. The person invited then sends a
    /// key package to the mailbox instead of taking one (the offer names the group's suite;
    /// its slot and the signature key are unused).
    #[prost(string, optional, tag = "9")]
    group: Option<String>,
    /// The inviter's proxies (`pigeon://proxy#…` links), at most [`MAX_INVITE_PROXIES`]: a
    /// path to the inviter's relay for someone who cannot reach it directly.
    #[prost(string, repeated, tag = "10")]
    proxies: Vec<String>,
    /// The name of the inviter's device that made the invitation (issue #16; absent from
    /// links made before it, read as "").
    #[prost(string, tag = "11")]
    device: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OfferPayload {
    #[prost(uint32, tag = "1")]
    suite: u32,
    #[prost(bytes = "vec", tag = "2")]
    slot_id: Vec<u8>,
}

/// A key-package slot for one ciphersuite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The suite of the key package waiting in the slot.
    pub suite: Suite,
    /// The slot on the inviter's relay.
    pub slot_id: [u8; 32],
}

/// A parsed, checked invitation.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// The inviter's relay.
    pub relay: RelayLink,
    /// The inviter's mailbox for this conversation.
    pub mailbox_id: [u8; 32],
    /// The capability to post into it.
    pub sender_cap: [u8; 32],
    /// The signature key the key packages must carry.
    pub signature_key: [u8; 32],
    /// Proven inside the first encrypted message.
    pub secret: [u8; 32],
    /// The inviter's display name.
    pub name: String,
    /// Key-package slots, most preferred first (suites this build does not speak are dropped).
    pub offers: Vec<Offer>,
    /// For an invitation to a group: the group's name.
    pub group: Option<String>,
    /// The inviter's proxies: ways to the inviter's relay when it cannot be reached directly.
    pub proxies: Vec<pigeon_transport::ProxyLink>,
    /// The name of the inviter's device that made it ("" for a first device).
    pub device: String,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("offers", &self.offers.len())
            .finish_non_exhaustive()
    }
}

/// Why an invitation link was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// The link envelope is wrong (not a link, wrong kind, cut off, bad characters...).
    #[error("{0}")]
    Link(#[source] LinkError),
    /// The data inside does not decode.
    #[error("the invitation's data is damaged: {0}")]
    Damaged(String),
    /// Made by a newer version.
    #[error(
        "this invitation is format version {0}; this version of pigeon reads version {INVITE_VERSION}: update pigeon"
    )]
    Version(u32),
    /// A field breaks a rule.
    #[error("the invitation's {field} is invalid: {problem}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The relay inside is not a valid relay link.
    #[error("the invitation's relay is invalid: {0}")]
    Relay(#[source] LinkError),
    /// No suite this build speaks.
    #[error(
        "the invitation offers no encryption suite this version of pigeon speaks: update pigeon"
    )]
    NoSuite,
}

impl InviteError {
    /// Who is at fault: always the input.
    pub fn kind(&self) -> pigeon_wire::ErrorKind {
        pigeon_wire::ErrorKind::BadInput
    }
}

fn fixed(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], InviteError> {
    bytes.try_into().map_err(|_| InviteError::Field {
        field,
        problem: format!("{} bytes where 32 are needed", bytes.len()),
    })
}

/// Checks a display name: 1–64 characters, no control characters.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        Err("the name is empty".to_owned())
    } else if chars > MAX_NAME_CHARS {
        Err(format!(
            "the name has {chars} characters; at most {MAX_NAME_CHARS} are allowed"
        ))
    } else if name.chars().any(char::is_control) {
        Err("the name contains control characters".to_owned())
    } else {
        Ok(())
    }
}

impl Invite {
    /// Parses a `pigeon://invite#…` link. Surrounding whitespace is ignored.
    ///
    /// # Errors
    /// An [`InviteError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, InviteError> {
        let bytes = decode_link(LinkKind::Invite, text).map_err(InviteError::Link)?;
        let p = InvitePayload::decode(bytes.as_slice())
            .map_err(|e| InviteError::Damaged(e.to_string()))?;
        if p.version != INVITE_VERSION {
            return Err(InviteError::Version(p.version));
        }
        let relay = RelayLink::from_payload_bytes(&p.relay).map_err(InviteError::Relay)?;
        check_name(&p.name).map_err(|problem| InviteError::Field {
            field: "name",
            problem,
        })?;
        if p.offers.is_empty() || p.offers.len() > 8 {
            return Err(InviteError::Field {
                field: "key-package offers",
                problem: format!("{} offers; 1 to 8 are allowed", p.offers.len()),
            });
        }
        let mut offers = Vec::new();
        for o in &p.offers {
            let slot_id = fixed("key-package slot", &o.slot_id)?;
            if let Some(suite) = u16::try_from(o.suite).ok().and_then(Suite::from_code) {
                if offers.iter().any(|x: &Offer| x.suite == suite) {
                    return Err(InviteError::Field {
                        field: "key-package offers",
                        problem: "a suite is offered twice".to_owned(),
                    });
                }
                offers.push(Offer { suite, slot_id });
            }
        }
        if offers.is_empty() {
            return Err(InviteError::NoSuite);
        }
        if p.proxies.len() > MAX_INVITE_PROXIES {
            return Err(InviteError::Field {
                field: "proxies",
                problem: format!(
                    "{} proxies; at most {MAX_INVITE_PROXIES} are allowed",
                    p.proxies.len()
                ),
            });
        }
        // A proxy link this version cannot read (a newer format) is left out, not fatal.
        let proxies = p
            .proxies
            .iter()
            .filter_map(|text| pigeon_transport::ProxyLink::parse(text).ok())
            .collect();
        let invite = Self {
            relay,
            mailbox_id: fixed("mailbox", &p.mailbox_id)?,
            sender_cap: fixed("sender capability", &p.sender_cap)?,
            signature_key: fixed("signature key", &p.signature_key)?,
            secret: fixed("secret", &p.secret)?,
            name: p.name,
            offers,
            group: p.group,
            proxies,
            device: p.device,
        };
        crate::device_link::check_device_name(&invite.device).map_err(|problem| {
            InviteError::Field {
                field: "device name",
                problem,
            }
        })?;
        if let Some(g) = &invite.group {
            pigeon_e2ee::roster::check_group_name(g).map_err(|problem| InviteError::Field {
                field: "group name",
                problem,
            })?;
        }
        for (field, value) in [
            ("mailbox", &invite.mailbox_id),
            ("sender capability", &invite.sender_cap),
            ("secret", &invite.secret),
        ] {
            if *value == [0; 32] {
                return Err(InviteError::Field {
                    field,
                    problem: "all zeros".to_owned(),
                });
            }
        }
        Ok(invite)
    }

    /// The link text.
    ///
    /// # Errors
    /// If the link would be longer than links may be.
    pub fn to_link(&self) -> Result<String, InviteError> {
        let payload = InvitePayload {
            version: INVITE_VERSION,
            relay: self.relay.to_payload().encode_to_vec(),
            mailbox_id: self.mailbox_id.to_vec(),
            sender_cap: self.sender_cap.to_vec(),
            signature_key: self.signature_key.to_vec(),
            secret: self.secret.to_vec(),
            name: self.name.clone(),
            offers: self
                .offers
                .iter()
                .map(|o| OfferPayload {
                    suite: u32::from(o.suite.code()),
                    slot_id: o.slot_id.to_vec(),
                })
                .collect(),
            group: self.group.clone(),
            proxies: self
                .proxies
                .iter()
                .take(MAX_INVITE_PROXIES)
                .map(ToString::to_string)
                .collect(),
            device: self.device.clone(),
        };
        encode_link(LinkKind::Invite, &payload.encode_to_vec()).map_err(InviteError::Link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_transport::Route;

    fn sample() -> Invite {
        let relay = RelayLink::new(
            [9; 32],
            vec!["tcp://127.0.0.1:4000".parse::<Route>().expect("route")],
            None,
        )
        .expect("relay");
        Invite {
            relay,
            mailbox_id: [1; 32],
            sender_cap: [2; 32],
            signature_key: [3; 32],
            secret: [4; 32],
            name: "Alice".to_owned(),
            offers: vec![
                Offer {
                    suite: Suite::XWing,
                    slot_id: [5; 32],
                },
                Offer {
                    suite: Suite::Classic,
                    slot_id: [6; 32],
                },
            ],
            group: None,
            proxies: Vec::new(),
            device: String::new(),
        }
    }

    #[test]
    fn round_trips_and_fits_a_qr_code() {
        let link = sample().to_link().expect("link");
        assert!(link.starts_with("pigeon://invite#"));
        assert!(link.len() < 1000, "{} bytes", link.len());
        assert_eq!(Invite::parse(&link).expect("parse"), sample());
    }

    #[test]
    fn an_invitation_carries_its_inviters_proxies() {
        let proxy: Route =
            "tls://proxy.example.org:443?key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8&path=%2Fp"
                .parse()
                .expect("route");
        let mut invite = sample();
        invite.proxies = vec![pigeon_transport::ProxyLink::new(proxy).expect("proxy link")];
        let link = invite.to_link().expect("link");
        assert_eq!(Invite::parse(&link).expect("parse"), invite);
        // Too many are refused with a sentence.
        let mut payload = InvitePayload::decode(
            pigeon_transport::decode_link(LinkKind::Invite, &link)
                .expect("decode")
                .as_slice(),
        )
        .expect("payload");
        payload.proxies = vec![payload.proxies[0].clone(); MAX_INVITE_PROXIES + 1];
        let text = encode_link(LinkKind::Invite, &payload.encode_to_vec()).expect("link");
        let err = Invite::parse(&text).expect_err("too many").to_string();
        assert!(err.contains("proxies"), "{err}");
    }

    #[test]
    fn refuses_damaged_invitations_with_reasons() {
        let link = sample().to_link().expect("link");
        let relay = sample().relay.to_string();
        let cases: Vec<(String, &str)> = vec![
            (relay, "relay link"),
            (link[..link.len() / 2].to_owned(), "altered"),
            (
                encode_link(
                    LinkKind::Invite,
                    &InvitePayload {
                        version: 2,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                )
                .expect("link"),
                "update pigeon",
            ),
            (link.replace("pigeon://", "http://"), "pigeon://"),
        ];
        for (text, needle) in cases {
            let err = Invite::parse(&text).expect_err("must fail").to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        let mut bad = sample();
        bad.name = String::new();
        let err = Invite::parse(&bad.to_link().expect("link")).expect_err("empty name");
        assert!(err.to_string().contains("name"), "{err}");
        let mut bad = sample();
        bad.offers.clear();
        let err = Invite::parse(&bad.to_link().expect("link")).expect_err("no offers");
        assert!(err.to_string().contains("offers"), "{err}");
    }
}
