//! Relay links: `pigeon://relay#…`, everything needed to reach one relay.

use std::fmt;
use std::str::FromStr;

use prost::Message as _;

use crate::link::{LinkError, LinkKind, MAX_LINK_LEN, decode_link, encode_link_unchecked};
use crate::proto::{RelayLinkPayload, VersionOnly};
use crate::route::Route;

/// Major version of the relay link format this build reads and writes.
pub const RELAY_LINK_VERSION: u32 = 1;
/// Length of a relay's static Noise public key (X25519).
pub const RELAY_KEY_LEN: usize = 32;
/// Most routes one relay link may list.
pub const MAX_ROUTES: usize = 16;
/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// Everything needed to reach a relay: its static Noise public key, which authenticates it, and
/// one or more routes to it, with an optional label for people.
///
/// Made only by [`RelayLink::new`] or by parsing, both of which check everything, so a
/// `RelayLink` always prints as a valid link and `RelayLink::parse(&link.to_string())` gives the
/// same value back.
///
/// A link may list routes over transports this build does not know (from a newer version); they
/// are kept, so the link is shared on intact, and [`RelayLink::supported_routes`] leaves them out.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelayLink {
    relay_key: [u8; RELAY_KEY_LEN],
    routes: Vec<Route>,
    label: Option<String>,
}

impl RelayLink {
    /// A relay link, checked.
    ///
    /// # Errors
    /// A [`LinkError`] if the key is all zeros, there are no routes or more than
    /// [`MAX_ROUTES`], the label is unusable, or the link would be longer than
    /// [`MAX_LINK_LEN`].
    pub fn new(
        relay_key: [u8; RELAY_KEY_LEN],
        routes: Vec<Route>,
        label: Option<String>,
    ) -> Result<Self, LinkError> {
        if relay_key == [0; RELAY_KEY_LEN] {
            return Err(LinkError::ZeroKey);
        }
        check_route_count(routes.len())?;
        if let Some(label) = &label {
            check_label(label)?;
        }
        let link = Self {
            relay_key,
            routes,
            label,
        };
        let len = crate::link::encoded_link_len(LinkKind::Relay, link.to_payload().encoded_len());
        if len > MAX_LINK_LEN {
            return Err(LinkError::TooLong {
                len,
                max: MAX_LINK_LEN,
            });
        }
        Ok(link)
    }

    /// Parses a `pigeon://relay#…` link. Surrounding ASCII whitespace is ignored.
    ///
    /// # Errors
    /// A [`LinkError`] saying, in plain words, what is wrong with the link.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let bytes = decode_link(LinkKind::Relay, text)?;
        Self::from_payload_bytes(&bytes)
    }

    /// The relay link in an encoded [`RelayLinkPayload`] (as embedded in other links).
    ///
    /// # Errors
    /// A [`LinkError`] saying what is wrong.
    pub fn from_payload_bytes(bytes: &[u8]) -> Result<Self, LinkError> {
        let bad = |e: prost::DecodeError| LinkError::BadPayload {
            kind: LinkKind::Relay,
            reason: e.to_string(),
        };
        check_version(VersionOnly::decode(bytes).map_err(bad)?.version)?;
        Self::from_payload(RelayLinkPayload::decode(bytes).map_err(bad)?)
    }

    /// The relay link in a decoded payload.
    ///
    /// # Errors
    /// A [`LinkError`] saying what is wrong.
    pub fn from_payload(payload: RelayLinkPayload) -> Result<Self, LinkError> {
        check_version(payload.version)?;
        let relay_key: [u8; RELAY_KEY_LEN] =
            payload
                .relay_key
                .as_slice()
                .try_into()
                .map_err(|_| LinkError::KeyLength {
                    found: payload.relay_key.len(),
                    expected: RELAY_KEY_LEN,
                })?;
        check_route_count(payload.routes.len())?;
        let routes = payload
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                Route::from_payload(route).map_err(|problem| LinkError::Route {
                    number: i + 1,
                    problem,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(relay_key, routes, payload.label)
    }

    /// The link's payload.
    pub fn to_payload(&self) -> RelayLinkPayload {
        RelayLinkPayload {
            version: RELAY_LINK_VERSION,
            relay_key: self.relay_key.to_vec(),
            routes: self.routes.iter().map(Route::to_payload).collect(),
            label: self.label.clone(),
        }
    }

    /// The relay's static Noise public key (X25519).
    pub fn relay_key(&self) -> &[u8; RELAY_KEY_LEN] {
        &self.relay_key
    }

    /// Every route in the link, in order of preference, including unsupported ones.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes this build can dial, in order of preference.
    pub fn supported_routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().filter(|r| r.is_supported())
    }

    /// The routes over transports this build does not know (to report, not to dial).
    pub fn unsupported_routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().filter(|r| !r.is_supported())
    }

    /// The label for people, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

fn check_version(version: u32) -> Result<(), LinkError> {
    match version {
        0 => Err(LinkError::MissingVersion {
            kind: LinkKind::Relay,
        }),
        RELAY_LINK_VERSION => Ok(()),
        found => Err(LinkError::UnsupportedVersion {
            kind: LinkKind::Relay,
            found,
            supported: RELAY_LINK_VERSION,
        }),
    }
}

fn check_route_count(count: usize) -> Result<(), LinkError> {
    match count {
        0 => Err(LinkError::NoRoutes),
        n if n > MAX_ROUTES => Err(LinkError::TooManyRoutes {
            found: n,
            max: MAX_ROUTES,
        }),
        _ => Ok(()),
    }
}

fn check_label(label: &str) -> Result<(), LinkError> {
    let problem = if label.is_empty() {
        "is empty; leave it out instead"
    } else if label.chars().count() > MAX_LABEL_CHARS {
        "is longer than 64 characters"
    } else if label.chars().any(char::is_control) {
        "contains a control character"
    } else if label.chars().any(is_bidi_control) {
        // These reorder the text around them, so a label could show as something it is not.
        "contains an invisible text-direction character"
    } else if label.starts_with(char::is_whitespace) || label.ends_with(char::is_whitespace) {
        "starts or ends with a space"
    } else {
        return Ok(());
    };
    Err(LinkError::Label {
        problem: problem.to_owned(),
    })
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for RelayLink {
    /// The canonical link, `pigeon://relay#…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The length was checked when the link was made.
        f.write_str(&encode_link_unchecked(
            LinkKind::Relay,
            &self.to_payload().encode_to_vec(),
        ))
    }
}

impl fmt::Debug for RelayLink {
    /// Key in hex and routes in their text form: nothing here is secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Plain<'a, T>(&'a T);
        impl<T: fmt::Display> fmt::Debug for Plain<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self.0, f)
            }
        }
        let key: String = self.relay_key.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("RelayLink")
            .field("relay_key", &key)
            .field("routes", &self.routes.iter().map(Plain).collect::<Vec<_>>())
            .field("label", &self.label)
            .finish()
    }
}

impl FromStr for RelayLink {
    type Err = LinkError;

    fn from_str(text: &str) -> Result<Self, LinkError> {
        Self::parse(text)
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data generation truncates on purpose"
)]
mod tests {
    use super::*;
    use crate::link::encode_link;
    use crate::proto::RoutePayload;
    use crate::route::RouteError;

    /// A small deterministic generator, so the round-trip test needs no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn key(seed: u8) -> [u8; 32] {
        let mut key = [seed; 32];
        key[0] = 1;
        key
    }

    fn random_route(rng: &mut Rng) -> Route {
        let transport = rng.pick(&["tcp", "tcp", "wss", "obfs4", "quic", "x-future-2"]);
        let host = match rng.below(4) {
            0 => format!(
                "{}.{}.{}.{}",
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.below(256)
            ),
            1 => format!("2001:db8::{:x}", rng.below(65536)),
            2 => "::1".to_owned(),
            _ => format!(
                "{}{}.{}",
                rng.pick(&["relay", "r-1", "xn--e1afmkfd", "a", "cdn_edge"]),
                rng.below(1000),
                rng.pick(&["example.org", "example", "onion", "co.uk"])
            ),
        };
        let port = u16::try_from(rng.below(65535) + 1).expect("fits");
        let mut route = Route::new(
            crate::route::Transport::from_name(transport).expect("valid"),
            crate::route::Host::parse(&host).expect("valid"),
            port,
        )
        .expect("valid");
        for _ in 0..rng.below(4) {
            let key = rng.pick(&["sni", "path", "alpn", "cert-hash", "x.y_z"]);
            let value = rng.pick(&["", "example.com", "/ws?x=1&y=2", "é🐦", "a b=c%d"]);
            route = route.with_param(key, value).expect("valid");
        }
        route
    }

    fn random_link(rng: &mut Rng) -> RelayLink {
        let routes = (0..=rng.below(4)).map(|_| random_route(rng)).collect();
        let label = match rng.below(3) {
            0 => None,
            1 => Some("Relay in Tallinn".to_owned()),
            _ => Some(format!("Ретранслятор №{} 🐦", rng.below(100))),
        };
        let mut relay_key = [0; 32];
        for byte in &mut relay_key {
            *byte = (rng.next() >> 24) as u8;
        }
        relay_key[0] |= 1;
        RelayLink::new(relay_key, routes, label).expect("valid")
    }

    #[test]
    fn many_links_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let link = random_link(&mut rng);
            let text = link.to_string();
            assert!(text.starts_with("pigeon://relay#"));
            assert!(text.len() <= MAX_LINK_LEN);
            let again = RelayLink::parse(&text).expect("own links parse");
            assert_eq!(again, link, "{text}");
            assert_eq!(again.to_string(), text, "encoding is canonical");
            assert_eq!(text.parse::<RelayLink>(), Ok(link));
        }
    }

    #[test]
    fn unknown_transport_is_kept_and_reported_not_fatal() {
        let routes = vec![
            "obfs9://relay.example.org:443?seed=abc"
                .parse()
                .expect("valid"),
            Route::tcp("127.0.0.1", 7443).expect("valid"),
        ];
        let link = RelayLink::new(key(7), routes, None).expect("valid");
        let parsed = RelayLink::parse(&link.to_string()).expect("parses");
        let supported: Vec<_> = parsed.supported_routes().map(Route::to_string).collect();
        assert_eq!(supported, ["tcp://127.0.0.1:7443"]);
        let unsupported: Vec<_> = parsed
            .unsupported_routes()
            .map(|r| r.transport().name().to_owned())
            .collect();
        assert_eq!(unsupported, ["obfs9"]);
        assert_eq!(parsed, link);
    }

    #[test]
    fn newer_fields_are_ignored() {
        // A newer minor writer adds field 9 to the payload and field 7 to a route.
        let mut bytes = RelayLink::new(key(3), vec![Route::tcp("h.example", 1).expect("ok")], None)
            .expect("valid")
            .to_payload()
            .encode_to_vec();
        bytes.extend_from_slice(&[0x4a, 2, b'h', b'i']); // field 9, length-delimited "hi"
        let parsed = RelayLink::from_payload_bytes(&bytes).expect("parses");
        assert_eq!(parsed.routes()[0].to_string(), "tcp://h.example:1");
        let link = encode_link(LinkKind::Relay, &bytes).expect("short");
        assert_eq!(RelayLink::parse(&link), Ok(parsed));
    }

    #[test]
    fn debug_and_display_are_plain() {
        let link = RelayLink::new(
            key(0xab),
            vec![Route::tcp("::1", 9).expect("ok")],
            Some("home".to_owned()),
        )
        .expect("valid");
        let debug = format!("{link:?}");
        assert!(debug.contains("01abab"), "{debug}");
        assert!(debug.contains("tcp://[::1]:9"), "{debug}");
        assert!(debug.contains("home"), "{debug}");
    }

    fn good_payload() -> RelayLinkPayload {
        RelayLinkPayload {
            version: 1,
            relay_key: key(5).to_vec(),
            routes: vec![RoutePayload {
                transport: "tcp".to_owned(),
                host: "relay.example.org".to_owned(),
                port: 443,
                params: Default::default(),
            }],
            label: None,
        }
    }

    fn link_of(payload: &RelayLinkPayload) -> String {
        encode_link(LinkKind::Relay, &payload.encode_to_vec()).expect("short")
    }

    fn with(change: impl FnOnce(&mut RelayLinkPayload)) -> String {
        let mut payload = good_payload();
        change(&mut payload);
        link_of(&payload)
    }

    fn route_with(change: impl FnOnce(&mut RoutePayload)) -> String {
        with(|p| change(&mut p.routes[0]))
    }

    #[test]
    fn good_payload_parses() {
        let link = RelayLink::parse(&link_of(&good_payload())).expect("valid");
        assert_eq!(link.routes()[0].to_string(), "tcp://relay.example.org:443");
        assert_eq!(link.relay_key(), &key(5));
        assert_eq!(link.label(), None);
    }

    #[test]
    fn malformed_links_give_the_right_error() {
        let bytes = good_payload().encode_to_vec();
        let good = link_of(&good_payload());
        let data = good.strip_prefix("pigeon://relay#").expect("prefix");
        let long = format!("pigeon://relay#{}", "A".repeat(MAX_LINK_LEN));
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "the link is empty"),
            (" \n\t ".to_owned(), "the link is empty"),
            (long, "links are at most 4096 bytes"),
            (
                format!("https://relay#{data}"),
                "must start with `pigeon://`, but starts with `https://r…`",
            ),
            (
                format!("pigeon:relay#{data}"),
                "must start with `pigeon://`",
            ),
            (
                format!("pigeon://relais#{data}"),
                "`pigeon://relais` is not a kind of link",
            ),
            (
                format!("pigeon://#{data}"),
                "`pigeon://` is not a kind of link",
            ),
            (
                encode_link(LinkKind::Invite, &bytes).expect("short"),
                "this is an invitation link (pigeon://invite#…), but a relay link",
            ),
            (
                encode_link(LinkKind::Proxy, &bytes).expect("short"),
                "this is a proxy link",
            ),
            (format!("pigeon://invite#{data}"), "mistyped or altered"),
            (
                format!(
                    "pigeon://relay#{}{}{}",
                    &data[..20],
                    if &data[20..21] == "A" { "B" } else { "A" },
                    &data[21..]
                ),
                "mistyped or altered",
            ),
            (
                "pigeon://relay".to_owned(),
                "has no `#` after `pigeon://relay`",
            ),
            (
                format!("pigeon://relay/#{data}"),
                "unexpected `/` after `pigeon://relay`",
            ),
            (
                format!("pigeon://relay?x=1#{data}"),
                "unexpected `?x=1` after `pigeon://relay`",
            ),
            (
                format!("pigeon://relay{data}"),
                "has no `#` after `pigeon://relay`",
            ),
            ("pigeon://relay#".to_owned(), "no data after `#`"),
            (format!("pigeon://relay#{data} x"), "a space at character"),
            (
                format!("pigeon://relay#{}\n{}", &data[..10], &data[10..]),
                "a line break at character 26 of the link; link data uses only A-Z, a-z, 0-9, \
                 `-` and `_`; the link was probably wrapped over two lines",
            ),
            (format!("pigeon://relay#{data}=="), "`=` at character"),
            (format!("pigeon://relay#{data}+"), "standard base64"),
            (format!("pigeon://relay#{data}#x"), "a second `#`"),
            (format!("pigeon://relay#%41{data}"), "escaped by a web page"),
            (format!("pigeon://relay#{data}\u{200b}"), "U+200B"),
            (
                format!("pigeon://relay#{data}é"),
                "the character `é` (U+00E9)",
            ),
            (
                format!("pigeon://relay#{data}\u{7}"),
                "control character U+0007",
            ),
            ("pigeon://relay#A".to_owned(), "impossible length"),
            (
                "pigeon://relay#AB".to_owned(),
                "last character of the link is wrong",
            ),
            ("pigeon://relay#_w".to_owned(), "impossible length"),
            (
                encode_link(LinkKind::Relay, &[0xff]).expect("short"),
                "data is damaged",
            ),
            (
                encode_link(LinkKind::Relay, &bytes[..bytes.len() - 3]).expect("short"),
                "data is damaged",
            ),
            (with(|p| p.version = 0), "has no version number"),
            (
                with(|p| p.version = 2),
                "uses format version 2, but this version of Pigeonpost reads only version 1; update",
            ),
            (
                with(|p| p.relay_key.truncate(31)),
                "relay key must be 32 bytes, but the link has 31",
            ),
            (with(|p| p.relay_key.clear()), "but the link has 0"),
            (with(|p| p.relay_key = vec![0; 32]), "all zeros"),
            (with(|p| p.routes.clear()), "no way to reach the relay"),
            (
                with(|p| p.routes = vec![p.routes[0].clone(); 17]),
                "lists 17 routes; at most 16",
            ),
            (route_with(|r| r.port = 0), "route 1 of the link: port 0"),
            (route_with(|r| r.port = 65_536), "port 65536 is larger"),
            (
                route_with(|r| r.host.clear()),
                "route 1 of the link: it has no host",
            ),
            (
                route_with(|r| r.host = "relay .org".to_owned()),
                "host contains a space at character 6",
            ),
            (
                route_with(|r| r.host = "relay\u{0}.org".to_owned()),
                "control character U+0000",
            ),
            (route_with(|r| r.host = "[::1]".to_owned()), "a bracket"),
            (route_with(|r| r.transport.clear()), "names no transport"),
            (
                route_with(|r| r.transport = "TLS".to_owned()),
                "`TLS` is not a valid transport name",
            ),
            (
                route_with(|r| {
                    r.params.insert("Bad Key".to_owned(), "v".to_owned());
                }),
                "`Bad Key` is not a valid parameter name",
            ),
            (
                route_with(|r| {
                    r.params.insert("k".to_owned(), "\n".to_owned());
                }),
                "the value of parameter `k` contains a control character",
            ),
            (
                with(|p| {
                    let mut second = p.routes[0].clone();
                    second.port = 0;
                    p.routes.push(second);
                }),
                "route 2 of the link: port 0",
            ),
            (with(|p| p.label = Some(String::new())), "label is empty"),
            (
                with(|p| p.label = Some("x".repeat(65))),
                "longer than 64 characters",
            ),
            (
                with(|p| p.label = Some("a\u{202e}b".to_owned())),
                "text-direction",
            ),
            (
                with(|p| p.label = Some("a\tb".to_owned())),
                "label contains a control character",
            ),
            (
                with(|p| p.label = Some(" a".to_owned())),
                "starts or ends with a space",
            ),
        ];
        assert!(cases.len() >= 40);
        for (text, expected) in &cases {
            let err = RelayLink::parse(text).expect_err(text);
            assert!(
                err.to_string().contains(expected),
                "{text:?}\n  got:  {err}\n  want: {expected}"
            );
            assert_eq!(err.kind(), pigeon_wire::ErrorKind::BadInput);
        }
    }

    #[test]
    fn wrong_wire_type_for_version_is_damage_not_panic() {
        // Field 1 as a length-delimited field.
        let link = encode_link(LinkKind::Relay, &[0x0a, 1, 0]).expect("short");
        assert!(matches!(
            RelayLink::parse(&link),
            Err(LinkError::BadPayload { .. })
        ));
    }

    #[test]
    fn new_refuses_links_that_would_be_too_long() {
        let mut routes = Vec::new();
        for i in 0..MAX_ROUTES {
            let mut route = Route::tcp(&format!("{}.example", "r".repeat(60)), 1).expect("ok");
            for p in 0..4 {
                route = route
                    .with_param(&format!("p{i}-{p}"), &"v".repeat(200))
                    .expect("ok");
            }
            routes.push(route);
        }
        assert!(matches!(
            RelayLink::new(key(1), routes, None),
            Err(LinkError::TooLong { .. })
        ));
        assert_eq!(
            RelayLink::new(key(1), vec![], None),
            Err(LinkError::NoRoutes)
        );
        assert_eq!(
            RelayLink::parse(&route_with(|r| r.port = 0)),
            Err(LinkError::Route {
                number: 1,
                problem: RouteError::PortZero
            })
        );
    }
}
