//! Links and routes: parsing never panics, and whatever parses prints as a link that parses back
//! to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon_transport::{
    LinkKind, MAX_LINK_LEN, RelayLink, Route, decode_any_link, decode_link, encode_link,
};

fn check_relay_link(link: &RelayLink) {
    let text = link.to_string();
    assert!(text.len() <= MAX_LINK_LEN, "printed link is too long");
    let again = RelayLink::parse(&text).expect("a printed link parses");
    assert_eq!(&again, link, "re-parsing changed the link");
    assert_eq!(again.to_string(), text, "printing is not canonical");
}

fuzz_target!(|data: &[u8]| {
    // As text: what a person pastes.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(link) = RelayLink::parse(text) {
            check_relay_link(&link);
        }
        for kind in LinkKind::ALL {
            if let Ok(payload) = decode_link(kind, text) {
                let again = encode_link(kind, &payload).expect("a decoded payload re-encodes");
                assert_eq!(decode_link(kind, &again).expect("re-decodes"), payload);
            }
        }
        if let Ok((kind, payload)) = decode_any_link(text) {
            assert_eq!(decode_link(kind, text).expect("same kind decodes"), payload);
        }
        if let Ok(route) = text.parse::<Route>() {
            let printed = route.to_string();
            assert_eq!(
                printed.parse::<Route>().expect("printed route parses"),
                route
            );
        }
    }
    // As payload bytes: reaches the protobuf checks that random text rarely gets past.
    if let Ok(link) = RelayLink::from_payload_bytes(data) {
        check_relay_link(&link);
    }
    if let Ok(text) = encode_link(LinkKind::Relay, data) {
        let from_text = RelayLink::parse(&text);
        let from_bytes = RelayLink::from_payload_bytes(data);
        match (from_text, from_bytes) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("text and bytes disagree: {a:?} vs {b:?}"),
        }
    }
});
