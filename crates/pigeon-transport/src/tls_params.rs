//! The settings of a `tls` route, carried in its parameters.
//!
//! ```text
//! tls://relay.example.org:443?sni=relay.example.org&path=/k3j9x2m4&key=<43 chars>&pin=<43 chars>&rotate=auto
//! ```
//!
//! * `path` (required): the secret path prefix the tunnel's requests go to; a request there
//!   carries a fresh single-use token after it (`<path>/<token>`).
//! * `key` (required): the 32-byte secret tokens are made with, base64url without padding.
//! * `sni`: the name sent in the TLS ClientHello and checked in the certificate; defaults to the
//!   route's host when that is a name (an IP-address host without `sni` sends none, like a
//!   browser).
//! * `pin`: SHA-256 of the certificate's SubjectPublicKeyInfo, base64url; for relays with a
//!   certificate of their own making. Without it the certificate is checked as a browser would.
//! * `rotate`: how the client keeps a connection under a per-connection download cap (the
//!   16–20 KB freeze): `auto` (the default: learn the cap when a connection stalls), `off`, or
//!   the cap in bytes (`16384`, or `16k`).
//! * `ech=1`: the front recognises its clients by Encrypted Client Hello and passes every other
//!   connection to the covered web server untouched (`pigeon relay --cover-tls`). The client
//!   then sends a real ECH extension (in the shape of the GREASE one Chrome always sends) whose
//!   encrypted inner hello proves that it holds `key`; the outer hello names `sni`, which is
//!   required.
//!
//! Unknown parameters are kept and ignored, so links from newer versions still work.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::route::{DnsName, Host, RouteError};

/// Longest secret path.
pub const MAX_TLS_PATH: usize = 64;
/// Smallest download cap `rotate` accepts, in bytes: below this a TLS handshake alone would
/// not fit.
pub const MIN_ROTATE: u32 = 4096;

/// How a client keeps connections under a per-connection download cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rotate {
    /// Learn the cap from a connection that stalls, then keep under it.
    Auto,
    /// Never move to a new connection because of the amount downloaded.
    Off,
    /// The cap, in bytes of TCP payload server→client per connection.
    Cap(u32),
}

/// The parsed parameters of a `tls` route.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsParams {
    sni: Option<DnsName>,
    path: String,
    key: [u8; 32],
    pin: Option<[u8; 32]>,
    rotate: Rotate,
    ech: bool,
}

impl std::fmt::Debug for TlsParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParams")
            .field("sni", &self.sni)
            .field("path", &"…")
            .field("key", &"…")
            .field("pin", &self.pin.is_some())
            .field("rotate", &self.rotate)
            .field("ech", &self.ech)
            .finish()
    }
}

impl TlsParams {
    /// Settings from their parts. `path` must start with `/`.
    ///
    /// # Errors
    /// A [`RouteError`] naming what is wrong.
    pub fn new(
        sni: Option<DnsName>,
        path: &str,
        key: [u8; 32],
        pin: Option<[u8; 32]>,
        rotate: Rotate,
    ) -> Result<Self, RouteError> {
        check_path(path)?;
        if let Rotate::Cap(cap) = rotate
            && cap < MIN_ROTATE
        {
            return Err(bad(
                "rotate",
                "is below 4096 bytes, too small for a TLS handshake",
            ));
        }
        Ok(Self {
            sni,
            path: path.to_owned(),
            key,
            pin,
            rotate,
            ech: false,
        })
    }

    /// The same settings with the front recognising its clients by Encrypted Client Hello
    /// (`ech=1`).
    ///
    /// # Errors
    /// [`RouteError::ParamValue`] for `ech` when there is no `sni` (ECH's outer hello must name
    /// a host).
    pub fn with_ech(mut self, ech: bool) -> Result<Self, RouteError> {
        if ech && self.sni.is_none() {
            return Err(bad(
                "ech",
                "needs `sni`: the outer ClientHello must name the covered site",
            ));
        }
        self.ech = ech;
        Ok(self)
    }

    /// Parses the parameters of a route to `host`.
    ///
    /// # Errors
    /// A [`RouteError`] naming the parameter that is missing or wrong.
    pub fn from_params(host: &Host, params: &BTreeMap<String, String>) -> Result<Self, RouteError> {
        let path = params
            .get("path")
            .ok_or_else(|| bad("path", "is missing (a tls route needs its secret path)"))?;
        let key = params
            .get("key")
            .ok_or_else(|| bad("key", "is missing (a tls route needs its secret key)"))?;
        let key = decode32("key", key)?;
        let pin = params.get("pin").map(|p| decode32("pin", p)).transpose()?;
        let sni = match params.get("sni") {
            Some(name) => match Host::parse(name) {
                Ok(Host::Name(name)) => Some(name),
                Ok(_) => return Err(bad("sni", "must be a DNS name, not an address")),
                Err(_) => return Err(bad("sni", "is not a valid DNS name")),
            },
            None => match host {
                Host::Name(name) => Some(name.clone()),
                _ => None,
            },
        };
        let rotate = match params.get("rotate").map(String::as_str) {
            None | Some("auto") => Rotate::Auto,
            Some("off") => Rotate::Off,
            Some(text) => {
                let (digits, scale) = match text.strip_suffix(['k', 'K']) {
                    Some(d) => (d, 1024),
                    None => (text, 1),
                };
                let cap = digits
                    .parse::<u32>()
                    .ok()
                    .and_then(|n| n.checked_mul(scale))
                    .ok_or_else(|| {
                        bad("rotate", "must be `auto`, `off`, or a byte count like 16k")
                    })?;
                Rotate::Cap(cap)
            }
        };
        let ech = match params.get("ech").map(String::as_str) {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => return Err(bad("ech", "must be `1` or `0`")),
        };
        Self::new(sni, path, key, pin, rotate)?.with_ech(ech)
    }

    /// Writes these settings into `params`, replacing the ones it has.
    pub fn write(&self, params: &mut BTreeMap<String, String>) {
        params.insert("path".into(), self.path.clone());
        params.insert("key".into(), URL_SAFE_NO_PAD.encode(self.key));
        if let Some(pin) = &self.pin {
            params.insert("pin".into(), URL_SAFE_NO_PAD.encode(pin));
        }
        if let Some(sni) = &self.sni {
            params.insert("sni".into(), sni.as_str().to_owned());
        }
        match self.rotate {
            Rotate::Auto => {}
            Rotate::Off => {
                params.insert("rotate".into(), "off".into());
            }
            Rotate::Cap(cap) => {
                params.insert("rotate".into(), cap.to_string());
            }
        }
        if self.ech {
            params.insert("ech".into(), "1".into());
        }
    }

    /// The name to send as SNI, if any.
    pub fn sni(&self) -> Option<&DnsName> {
        self.sni.as_ref()
    }

    /// The secret path prefix.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The token secret.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The certificate pin.
    pub fn pin(&self) -> Option<&[u8; 32]> {
        self.pin.as_ref()
    }

    /// The rotation policy.
    pub fn rotate(&self) -> Rotate {
        self.rotate
    }

    /// Whether the front recognises its clients by Encrypted Client Hello.
    pub fn ech(&self) -> bool {
        self.ech
    }
}

fn bad(key: &str, problem: &'static str) -> RouteError {
    RouteError::ParamValue {
        key: key.to_owned(),
        problem,
    }
}

fn decode32(key: &str, text: &str) -> Result<[u8; 32], RouteError> {
    let mut out = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(text, &mut out) {
        Ok(32) if text.len() == 43 => Ok(out),
        _ => Err(bad(key, "is not 32 bytes in base64url (43 characters)")),
    }
}

fn check_path(path: &str) -> Result<(), RouteError> {
    let ok = path.len() >= 2
        && path.len() <= MAX_TLS_PATH
        && path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "path",
            "must start with `/`, not end with one, and hold only letters, digits and `/-_.~` \
             (at most 64)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    #[test]
    fn parse_and_write_round_trip() {
        let host = Host::parse("relay.example.org").expect("host");
        let p = TlsParams::from_params(
            &host,
            &params(&[("path", "/a/b-c"), ("key", KEY), ("rotate", "16k")]),
        )
        .expect("valid");
        assert_eq!(p.sni().map(DnsName::as_str), Some("relay.example.org"));
        assert_eq!(p.rotate(), Rotate::Cap(16_384));
        assert_eq!(p.key()[31], 31);
        let mut written = BTreeMap::new();
        p.write(&mut written);
        assert_eq!(TlsParams::from_params(&host, &written), Ok(p));
        let ip = Host::parse("203.0.113.10").expect("ip");
        let p =
            TlsParams::from_params(&ip, &params(&[("path", "/x"), ("key", KEY)])).expect("valid");
        assert_eq!(p.sni(), None);
        assert_eq!(p.rotate(), Rotate::Auto);
        assert!(!p.ech());
    }

    #[test]
    fn ech_round_trips_and_needs_a_name() {
        let host = Host::parse("relay.example.org").expect("host");
        let p = TlsParams::from_params(
            &host,
            &params(&[("path", "/x"), ("key", KEY), ("ech", "1")]),
        )
        .expect("valid");
        assert!(p.ech());
        let mut written = BTreeMap::new();
        p.write(&mut written);
        assert_eq!(written.get("ech").map(String::as_str), Some("1"));
        assert_eq!(TlsParams::from_params(&host, &written), Ok(p));
        let ip = Host::parse("203.0.113.10").expect("ip");
        let err =
            TlsParams::from_params(&ip, &params(&[("path", "/x"), ("key", KEY), ("ech", "1")]))
                .expect_err("no name for the outer hello");
        assert!(err.to_string().contains("`ech`"), "{err}");
    }

    #[test]
    fn bad_params_say_which() {
        let host = Host::parse("relay.example.org").expect("host");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("key", KEY)], "path"),
            (&[("path", "/x")], "key"),
            (&[("path", "x"), ("key", KEY)], "path"),
            (&[("path", "/x/"), ("key", KEY)], "path"),
            (&[("path", "/a b"), ("key", KEY)], "path"),
            (&[("path", "/x"), ("key", "short")], "key"),
            (&[("path", "/x"), ("key", KEY), ("pin", "AA")], "pin"),
            (&[("path", "/x"), ("key", KEY), ("sni", "1.2.3.4")], "sni"),
            (
                &[("path", "/x"), ("key", KEY), ("rotate", "lots")],
                "rotate",
            ),
            (&[("path", "/x"), ("key", KEY), ("rotate", "100")], "rotate"),
            (
                &[("path", "/x"), ("key", KEY), ("rotate", "99999999999k")],
                "rotate",
            ),
            (&[("path", "/x"), ("key", KEY), ("ech", "yes")], "ech"),
        ];
        for (pairs, which) in cases {
            let err = TlsParams::from_params(&host, &params(pairs)).expect_err(which);
            assert!(
                err.to_string().contains(&format!("`{which}`")),
                "{pairs:?}: {err}"
            );
        }
    }
}
