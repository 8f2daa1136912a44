//! What a group member's device takes from a log or a Welcome (issue #14): rosters, Welcomes
//! and MLS messages opened in a live three-device X-Wing group. Nothing panics, a roster that
//! parses checks out, and the group still works afterwards.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls_libcrux_crypto::Provider;
use pigeon_e2ee::content::{Text, body::Body};
use pigeon_e2ee::{Change, Content, Group, Identity, Roster, RosterEntry, Suite};
use prost::Message as _;
use std::cell::RefCell;

struct Device {
    provider: Provider,
    identity: Identity,
    group: Group,
}

fn entry(identity: &Identity, name: &str, admin: bool) -> RosterEntry {
    RosterEntry {
        key: identity.public_key().to_vec(),
        person: identity.public_key()[..16].to_vec(),
        name: name.to_owned(),
        device: String::new(),
        admin,
    }
}

fn group() -> (Device, Device) {
    let (ap, bp) = (Provider::new().expect("rng"), Provider::new().expect("rng"));
    let (ai, bi) = (
        Identity::generate(&ap).expect("id"),
        Identity::generate(&bp).expect("id"),
    );
    let roster =
        Roster { name: "fuzz".to_owned(), members: vec![entry(&ai, "a", true)], direct: false };
    let mut ag = Group::create(&ap, &ai, Suite::XWing, &roster).expect("create");
    let kp = bi.key_package(&bp, Suite::XWing).expect("kp");
    let c = ag
        .commit(&ap, &ai, Change::Add { key_package: kp, entry: entry(&bi, "b", false) })
        .expect("add");
    ag.merge_pending(&ap).expect("merge");
    let bg = Group::join_group(&bp, &c.welcome.expect("welcome")).expect("join");
    (
        Device { provider: ap, identity: ai, group: ag },
        Device { provider: bp, identity: bi, group: bg },
    )
}

thread_local! {
    static GROUP: RefCell<(Device, Device)> = RefCell::new(group());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Roster::decode_checked(data) {
        r.check().expect("a roster that decodes checked passes its checks");
        let _ = Roster::decode(r.encode_to_vec().as_slice()).expect("re-decodes");
    }
    GROUP.with(|g| {
        let (a, b) = &mut *g.borrow_mut();
        let _ = b.group.open(&b.provider, data);
        let _ = Group::join_group(&b.provider, data);
        let _ = pigeon_e2ee::key_package_signature_key(&b.provider, data, Suite::XWing);
        let content = Content {
            id: vec![1; 16],
            sent_at_ms: 0,
            body: Some(Body::Text(Text { text: "still here".to_owned() })),
        };
        let ct = a.group.seal(&a.provider, &a.identity, &content).expect("seal");
        b.group.open(&b.provider, &ct).expect("the group still works");
    });
});
