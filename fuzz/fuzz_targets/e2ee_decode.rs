//! What a relay delivers to a client: envelopes, padded content, and MLS messages opened in a
//! live two-member X-Wing group. Nothing panics, and the group still works afterwards.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls_libcrux_crypto::Provider;
use pigeon_e2ee::content::{Text, body::Body};
use pigeon_e2ee::{Content, Envelope, Group, Identity, Suite};
use prost::Message as _;
use std::cell::RefCell;

struct Side {
    provider: Provider,
    identity: Identity,
    group: Group,
}

fn pair() -> (Side, Side) {
    let (ap, bp) = (Provider::new().expect("rng"), Provider::new().expect("rng"));
    let (ai, bi) = (
        Identity::generate(&ap).expect("id"),
        Identity::generate(&bp).expect("id"),
    );
    let kp = bi.key_package(&bp, Suite::XWing).expect("kp");
    let (ag, welcome) = Group::start(&ap, &ai, Suite::XWing, &kp, bi.public_key()).expect("start");
    let bg = Group::join(&bp, &welcome).expect("join");
    (
        Side { provider: ap, identity: ai, group: ag },
        Side { provider: bp, identity: bi, group: bg },
    )
}

thread_local! {
    static PAIR: RefCell<(Side, Side)> = RefCell::new(pair());
}

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::decode(data);
    if let Ok(content) = Content::unpad(data) {
        let again = Content::unpad(&content.pad().expect("a parsed content pads")).expect("re-parses");
        assert_eq!(again, content);
    }
    PAIR.with(|p| {
        let (a, b) = &mut *p.borrow_mut();
        let _ = b.group.open(&b.provider, data);
        let _ = Group::join(&b.provider, data);
        // The conversation survives whatever came in.
        let content = Content {
            id: vec![1; 16],
            sent_at_ms: 0,
            body: Some(Body::Text(Text { text: "still here".to_owned() })),
        };
        let ct = a.group.seal(&a.provider, &a.identity, &content).expect("seal");
        b.group.open(&b.provider, &ct).expect("the group still works");
    });
});
