//! Invitation links: parsing never panics, and whatever parses prints as a link that parses
//! back to the same invitation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon_client::Invite;
use pigeon_transport::{LinkKind, encode_link};

fn check(invite: &Invite) {
    let text = invite.to_link().expect("a parsed invitation prints");
    let again = Invite::parse(&text).expect("a printed invitation parses");
    assert_eq!(&again, invite, "re-parsing changed the invitation");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(invite) = Invite::parse(text)
    {
        check(&invite);
    }
    // As payload bytes behind a valid envelope: reaches the field checks.
    if let Ok(text) = encode_link(LinkKind::Invite, data)
        && let Ok(invite) = Invite::parse(&text)
    {
        check(&invite);
    }
});
