//! Proxy links: `pigeon://proxy#…`, how to reach a volunteer proxy or domestic hop (issue
//! #15). The payload is a [`ProxyLinkPayload`]: a major version and one `tls` route (the proxy's
//! front, with its secret path and key). Holding the link lets one's client carry its relay
//! sessions through the proxy; the proxy sees none of their content.

use std::fmt;
use std::str::FromStr;

use prost::Message as _;

use crate::link::{LinkError, LinkKind, decode_link, encode_link};
use crate::proto::{ProxyLinkPayload, VersionOnly};
use crate::route::{Route, Transport};

/// The proxy link format version this build reads and writes.
pub const PROXY_LINK_VERSION: u32 = 1;

/// A parsed proxy link.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyLink {
    route: Route,
}

impl ProxyLink {
    /// The link to the proxy at `route`.
    ///
    /// # Errors
    /// [`LinkError::Route`] when `route` is not a usable `tls` route (a proxy is reached over
    /// `tls` only); [`LinkError::TooLong`] when the link would not fit.
    pub fn new(route: Route) -> Result<Self, LinkError> {
        check_route(&route)?;
        let link = Self { route };
        encode_link(LinkKind::Proxy, &link.to_payload().encode_to_vec())?;
        Ok(link)
    }

    /// Parses `pigeon://proxy#…`.
    ///
    /// # Errors
    /// A [`LinkError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let bytes = decode_link(LinkKind::Proxy, text)?;
        let bad = |e: prost::DecodeError| LinkError::BadPayload {
            kind: LinkKind::Proxy,
            reason: e.to_string(),
        };
        match VersionOnly::decode(bytes.as_slice()).map_err(bad)?.version {
            0 => {
                return Err(LinkError::MissingVersion {
                    kind: LinkKind::Proxy,
                });
            }
            PROXY_LINK_VERSION => {}
            found => {
                return Err(LinkError::UnsupportedVersion {
                    kind: LinkKind::Proxy,
                    found,
                    supported: PROXY_LINK_VERSION,
                });
            }
        }
        let payload = ProxyLinkPayload::decode(bytes.as_slice()).map_err(bad)?;
        let route = payload.route.ok_or(LinkError::NoRoutes)?;
        let route = Route::from_payload(&route)
            .map_err(|problem| LinkError::Route { number: 1, problem })?;
        check_route(&route)?;
        Ok(Self { route })
    }

    /// How to reach the proxy.
    pub fn route(&self) -> &Route {
        &self.route
    }

    fn to_payload(&self) -> ProxyLinkPayload {
        ProxyLinkPayload {
            version: PROXY_LINK_VERSION,
            route: Some(self.route.to_payload()),
        }
    }
}

fn check_route(route: &Route) -> Result<(), LinkError> {
    let problem = if *route.transport() != Transport::Tls {
        Some("a proxy is reached over tls only".to_owned())
    } else {
        match route.tls_params() {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not a tls route".to_owned()),
        }
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(LinkError::BadPayload {
            kind: LinkKind::Proxy,
            reason: problem,
        }),
    }
}

impl fmt::Display for ProxyLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The length was checked when the link was made or parsed.
        match encode_link(LinkKind::Proxy, &self.to_payload().encode_to_vec()) {
            Ok(text) => f.write_str(&text),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for ProxyLink {
    /// Only where the proxy is: its secret path and key are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyLink")
            .field("route", &self.route.redacted())
            .finish()
    }
}

impl FromStr for ProxyLink {
    type Err = LinkError;

    fn from_str(text: &str) -> Result<Self, LinkError> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str =
        "tls://proxy.example.org:443?key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8&path=%2Fp";

    #[test]
    fn proxy_links_round_trip_and_say_what_is_wrong() {
        let route: Route = TLS.parse().expect("route");
        let link = ProxyLink::new(route.clone()).expect("link");
        let text = link.to_string();
        assert!(text.starts_with("pigeon://proxy#"), "{text}");
        assert_eq!(ProxyLink::parse(&text).expect("parse").route(), &route);
        assert!(!format!("{link:?}").contains("AAEC"), "no secret in Debug");
        let tcp: Route = "tcp://203.0.113.5:443".parse().expect("route");
        assert!(ProxyLink::new(tcp).is_err(), "a tcp proxy is refused");
        let relay_link = crate::RelayLink::new([1; 32], vec![route], None).expect("relay link");
        let err = ProxyLink::parse(&relay_link.to_string()).expect_err("a relay link");
        assert!(err.to_string().contains("proxy"), "{err}");
        assert!(ProxyLink::parse("pigeon://proxy#").is_err());
        let cut = &text[..text.len() - 3];
        assert!(ProxyLink::parse(cut).is_err());
    }
}
