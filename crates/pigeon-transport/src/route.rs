//! Routes: plain data that says how to reach a relay or proxy.
//!
//! A [`Route`] is a transport (how the bytes look on the wire), an endpoint (host and port) and
//! optional parameters for the transport. Routes are not secret: they are printed plainly and
//! travel inside links. Everything in a `Route` was checked when it was made, so code that holds
//! one never validates it again.
//!
//! A route also has a one-line text form for configuration and the command line,
//! `transport://host:port?key=value&key=value` (IPv6 hosts in brackets, parameter values
//! percent-encoded), which is what `Display` prints and `FromStr` parses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::link::quote;
use crate::proto::RoutePayload;

/// Longest transport name.
pub const MAX_TRANSPORT_NAME: usize = 32;
/// Longest DNS host name (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;
/// Most parameters one route may carry.
pub const MAX_PARAMS: usize = 16;
/// Longest parameter name.
pub const MAX_PARAM_KEY: usize = 32;
/// Longest parameter value, in bytes.
pub const MAX_PARAM_VALUE: usize = 255;

/// How the bytes of a route look on the wire.
///
/// Each transport is named in links by a short lowercase word ([`Transport::name`]). A name this
/// build does not know parses as [`Transport::Unsupported`] rather than failing the whole link,
/// so a link from a newer version still works through the routes this build can use, and the
/// others can be reported as "unsupported transport X".
///
/// Transports with settings of their own take them from the route's parameters, which are
/// checked when the route is parsed (see [`crate::TlsParams`]), so the link format needs no
/// change to add one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP: the Noise channel straight on a TCP connection. It looks like what it is and
    /// defeats no censor; for tests and local use.
    Tcp,
    /// TLS that looks like Chrome visiting a website, with the tunnel inside an HTTP/2 request
    /// (`pigeon-transport-tls`). Its settings are the route's parameters: [`crate::TlsParams`].
    Tls,
    /// A transport this build does not know.
    Unsupported(UnknownTransport),
}

/// The name of a transport this build does not know (see [`Transport::Unsupported`]).
///
/// Only made by parsing, so it never holds the name of a transport this build supports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnknownTransport(String);

impl UnknownTransport {
    /// The name as written in the link.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Transport {
    /// The transport named `name` in a link.
    ///
    /// # Errors
    /// [`RouteError::EmptyTransport`] or [`RouteError::BadTransportName`] if `name` is not a
    /// well-formed transport name (lowercase ASCII letters, digits and `-`, starting with a
    /// letter, at most [`MAX_TRANSPORT_NAME`] characters). A well-formed name this build does not
    /// know is not an error: it gives [`Transport::Unsupported`].
    pub fn from_name(name: &str) -> Result<Self, RouteError> {
        if name.is_empty() {
            return Err(RouteError::EmptyTransport);
        }
        let well_formed = name.len() <= MAX_TRANSPORT_NAME
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !well_formed {
            return Err(RouteError::BadTransportName {
                found: quote(name, MAX_TRANSPORT_NAME),
            });
        }
        Ok(match name {
            "tcp" => Self::Tcp,
            "tls" => Self::Tls,
            _ => Self::Unsupported(UnknownTransport(name.to_owned())),
        })
    }

    /// The name written in links.
    pub fn name(&self) -> &str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Unsupported(unknown) => unknown.name(),
        }
    }

    /// Whether this build can dial this transport.
    pub fn is_supported(&self) -> bool {
        !matches!(self, Self::Unsupported(_))
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a route ends: a DNS name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name, checked and lowercased (ASCII only; internationalised names in `xn--` form).
    Name(DnsName),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
}

/// A checked, lowercase DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Host {
    /// Parses a host: an IPv4 address, an IPv6 address (without brackets) or a DNS name.
    ///
    /// # Errors
    /// A [`RouteError`] naming what is wrong with the host.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        if text.is_empty() {
            return Err(RouteError::EmptyHost);
        }
        if let Ok(v4) = text.parse::<Ipv4Addr>() {
            return Ok(Self::Ipv4(v4));
        }
        if let Ok(v6) = text.parse::<Ipv6Addr>() {
            return Ok(Self::Ipv6(v6));
        }
        if text.len() > MAX_HOST_LEN {
            return Err(RouteError::HostTooLong {
                len: text.len(),
                max: MAX_HOST_LEN,
            });
        }
        for (i, c) in text.chars().enumerate() {
            if !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
                return Err(host_character(c, i + 1));
            }
        }
        let mut last_label = "";
        for label in text.split('.') {
            if label.is_empty() {
                return Err(RouteError::HostLabel {
                    problem: "has an empty part (two dots in a row, or a dot at the start or end)",
                });
            }
            if label.len() > 63 {
                return Err(RouteError::HostLabel {
                    problem: "has a part longer than 63 characters",
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(RouteError::HostLabel {
                    problem: "has a part that starts or ends with `-`",
                });
            }
            last_label = label;
        }
        if last_label.chars().all(|c| c.is_ascii_digit()) {
            return Err(RouteError::BadIpAddress {
                found: quote(text, 40),
            });
        }
        Ok(Self::Name(DnsName(text.to_ascii_lowercase())))
    }

    /// Whether this is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Self::Name(name) => name.0 == "localhost" || name.0.ends_with(".localhost"),
            Self::Ipv4(ip) => ip.is_loopback(),
            Self::Ipv6(ip) => ip.is_loopback(),
        }
    }
}

impl fmt::Display for Host {
    /// The host as written in links: IPv6 addresses without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(&name.0),
            Self::Ipv4(ip) => ip.fmt(f),
            Self::Ipv6(ip) => ip.fmt(f),
        }
    }
}

fn host_character(c: char, position: usize) -> RouteError {
    let (what, hint) = match c {
        ' ' => ("a space".to_owned(), ""),
        ':' => (
            "`:`".to_owned(),
            "; give the port separately, and IPv6 addresses without brackets or zone",
        ),
        '[' | ']' => (
            "a bracket".to_owned(),
            "; give IPv6 addresses without brackets",
        ),
        c if c.is_control() => (format!("the control character U+{:04X}", u32::from(c)), ""),
        c if c.is_ascii() => (format!("`{c}`"), ""),
        c => (
            format!("the non-ASCII character `{}`", c.escape_debug()),
            "; write internationalised names in their `xn--` form",
        ),
    };
    RouteError::HostCharacter {
        what,
        position,
        hint,
    }
}

/// Why a route was refused. Each message is a phrase that reads after "route N of the link: ".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No transport name.
    #[error("it names no transport")]
    EmptyTransport,
    /// A transport name with characters or a length no transport name has.
    #[error(
        "`{found}` is not a valid transport name (lowercase letters, digits and `-`, \
         starting with a letter, at most 32)"
    )]
    BadTransportName {
        /// The name, escaped and shortened.
        found: String,
    },
    /// No host.
    #[error("it has no host")]
    EmptyHost,
    /// A host name longer than DNS allows.
    #[error("the host is {len} characters long; host names are at most {max}")]
    HostTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character no host name has.
    #[error("the host contains {what} at character {position}{hint}")]
    HostCharacter {
        /// The character, described.
        what: String,
        /// 1-based position in the host.
        position: usize,
        /// Advice for common mistakes, starting with "; ".
        hint: &'static str,
    },
    /// A badly formed part of a host name.
    #[error("the host {problem}")]
    HostLabel {
        /// What is wrong, as a phrase after "the host".
        problem: &'static str,
    },
    /// Digits and dots that are not an IPv4 address.
    #[error("the host `{found}` looks like an IPv4 address but is not a valid one")]
    BadIpAddress {
        /// The host, escaped and shortened.
        found: String,
    },
    /// Port 0.
    #[error("port 0 is not a port anything can be reached on")]
    PortZero,
    /// A port over 65535.
    #[error("port {port} is larger than the largest port, 65535")]
    PortTooLarge {
        /// The port given.
        port: u32,
    },
    /// Too many parameters.
    #[error("it has {found} parameters; at most {max} are allowed")]
    TooManyParams {
        /// Parameters found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A parameter name with characters or a length no parameter name has.
    #[error(
        "`{key}` is not a valid parameter name (lowercase letters, digits, `-`, `_` and `.`, \
         1 to 32 of them)"
    )]
    ParamKey {
        /// The name, escaped and shortened.
        key: String,
    },
    /// A parameter value that is too long or holds control characters.
    #[error("the value of parameter `{key}` {problem}")]
    ParamValue {
        /// The parameter's name.
        key: String,
        /// What is wrong, as a phrase after "the value".
        problem: &'static str,
    },
    /// Text that is not of the form `transport://host:port?key=value`.
    #[error("`{text}` is not a route: {problem}")]
    BadText {
        /// The text, escaped and shortened.
        text: String,
        /// What is wrong.
        problem: &'static str,
    },
}

impl RouteError {
    /// Who is at fault: always [`pigeon_wire::ErrorKind::BadInput`].
    pub fn kind(&self) -> pigeon_wire::ErrorKind {
        pigeon_wire::ErrorKind::BadInput
    }
}

/// How to reach a relay or proxy: a transport, a host and port, and transport parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    transport: Transport,
    host: Host,
    port: u16,
    params: BTreeMap<String, String>,
}

impl Route {
    /// A route with no parameters.
    ///
    /// # Errors
    /// [`RouteError::PortZero`] for port 0.
    pub fn new(transport: Transport, host: Host, port: u16) -> Result<Self, RouteError> {
        if port == 0 {
            return Err(RouteError::PortZero);
        }
        Ok(Self {
            transport,
            host,
            port,
            params: BTreeMap::new(),
        })
    }

    /// A plain TCP route to `host` (a DNS name or IP address) and `port`.
    ///
    /// # Errors
    /// A [`RouteError`] if the host or port is not valid.
    pub fn tcp(host: &str, port: u16) -> Result<Self, RouteError> {
        Self::new(Transport::Tcp, Host::parse(host)?, port)
    }

    /// This route with parameter `key` set to `value`.
    ///
    /// # Errors
    /// A [`RouteError`] if the name or value is not valid, or there would be too many.
    pub fn with_param(mut self, key: &str, value: &str) -> Result<Self, RouteError> {
        check_param(key, value)?;
        if !self.params.contains_key(key) && self.params.len() >= MAX_PARAMS {
            return Err(RouteError::TooManyParams {
                found: self.params.len() + 1,
                max: MAX_PARAMS,
            });
        }
        self.params.insert(key.to_owned(), value.to_owned());
        Ok(self)
    }

    /// The transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (never 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// All parameters, by name.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// The value of parameter `key`, if set.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Whether this build can dial this route.
    pub fn is_supported(&self) -> bool {
        self.transport.is_supported()
    }

    /// The route from its link form.
    ///
    /// # Errors
    /// A [`RouteError`] saying what is wrong.
    pub fn from_payload(payload: &RoutePayload) -> Result<Self, RouteError> {
        let transport = Transport::from_name(&payload.transport)?;
        let host = Host::parse(&payload.host)?;
        let port = u16::try_from(payload.port)
            .map_err(|_| RouteError::PortTooLarge { port: payload.port })?;
        let mut route = Self::new(transport, host, port)?;
        if payload.params.len() > MAX_PARAMS {
            return Err(RouteError::TooManyParams {
                found: payload.params.len(),
                max: MAX_PARAMS,
            });
        }
        for (key, value) in &payload.params {
            check_param(key, value)?;
        }
        route.params.clone_from(&payload.params);
        route.check_transport_params()?;
        Ok(route)
    }

    /// A `tls` route to `host` and `port` with `params`.
    ///
    /// # Errors
    /// A [`RouteError`] if the host or port is not valid.
    pub fn tls(host: &str, port: u16, params: &crate::TlsParams) -> Result<Self, RouteError> {
        let mut route = Self::new(Transport::Tls, Host::parse(host)?, port)?;
        params.write(&mut route.params);
        route.check_transport_params()?;
        Ok(route)
    }

    /// The settings of a `tls` route; `None` for other transports.
    ///
    /// # Errors
    /// A [`RouteError`] if a parameter is missing or wrong (never for a route that was parsed
    /// or built with [`Route::tls`]).
    pub fn tls_params(&self) -> Option<Result<crate::TlsParams, RouteError>> {
        (self.transport == Transport::Tls)
            .then(|| crate::TlsParams::from_params(&self.host, &self.params))
    }

    fn check_transport_params(&self) -> Result<(), RouteError> {
        match self.tls_params() {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// The route's link form.
    pub fn to_payload(&self) -> RoutePayload {
        RoutePayload {
            transport: self.transport.name().to_owned(),
            host: self.host.to_string(),
            port: u32::from(self.port),
            params: self.params.clone(),
        }
    }
}

fn check_param(key: &str, value: &str) -> Result<(), RouteError> {
    let key_ok = (1..=MAX_PARAM_KEY).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !key_ok {
        return Err(RouteError::ParamKey {
            key: quote(key, MAX_PARAM_KEY),
        });
    }
    if value.len() > MAX_PARAM_VALUE {
        return Err(RouteError::ParamValue {
            key: key.to_owned(),
            problem: "is longer than 255 bytes",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(RouteError::ParamValue {
            key: key.to_owned(),
            problem: "contains a control character",
        });
    }
    Ok(())
}

impl Route {
    /// The route for people and logs: `transport://host:port`, without its parameters (a tls
    /// route's secret path, key and pin never reach an error message or a log).
    pub fn redacted(&self) -> String {
        match &self.host {
            Host::Ipv6(ip) => format!("{}://[{ip}]:{}", self.transport, self.port),
            host => format!("{}://{host}:{}", self.transport, self.port),
        }
    }
}

impl fmt::Display for Route {
    /// The one-line form, `transport://host:port?key=value` (with every secret in it: use
    /// [`Route::redacted`] to show a route to people).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ipv6(ip) => write!(f, "{}://[{ip}]:{}", self.transport, self.port)?,
            host => write!(f, "{}://{host}:{}", self.transport, self.port)?,
        }
        let mut separator = '?';
        for (key, value) in &self.params {
            write!(f, "{separator}{key}=")?;
            for &byte in value.as_bytes() {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    write!(f, "{}", char::from(byte))?;
                } else {
                    write!(f, "%{byte:02X}")?;
                }
            }
            separator = '&';
        }
        Ok(())
    }
}

impl FromStr for Route {
    type Err = RouteError;

    /// Parses the one-line form, `transport://host:port?key=value&key=value`.
    fn from_str(text: &str) -> Result<Self, RouteError> {
        let bad = |problem| RouteError::BadText {
            text: quote(text, 60),
            problem,
        };
        let (name, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("it must look like `tcp://host:port`"))?;
        let transport = Transport::from_name(&name.to_ascii_lowercase())?;
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, port) = bracketed
                .split_once("]:")
                .ok_or_else(|| bad("a bracketed IPv6 address must be followed by `:port`"))?;
            let ip = ip
                .parse::<Ipv6Addr>()
                .map_err(|_| bad("the text in brackets is not an IPv6 address"))?;
            (Host::Ipv6(ip), port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| bad("it has no `:port` after the host"))?;
            if host.contains(':') {
                return Err(bad(
                    "write IPv6 addresses in brackets, as in `[2001:db8::1]:443`",
                ));
            }
            (Host::parse(host)?, port)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the port is not a number"));
        }
        let port = port
            .parse::<u32>()
            .map_err(|_| bad("the port is far too large"))?;
        let port = u16::try_from(port).map_err(|_| RouteError::PortTooLarge { port })?;
        let mut route = Self::new(transport, host, port)?;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("each parameter must be written `key=value`"))?;
            if route.params.contains_key(key) {
                return Err(bad("a parameter is given twice"));
            }
            let value = percent_decode(value).ok_or_else(|| {
                bad("a parameter value has a bad `%` escape or is not UTF-8 once unescaped")
            })?;
            route = route.with_param(key, &value)?;
        }
        route.check_transport_params()?;
        Ok(route)
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_into_the_right_kind() {
        assert_eq!(
            Host::parse("127.0.0.1"),
            Ok(Host::Ipv4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(Host::parse("::1"), Ok(Host::Ipv6(Ipv6Addr::LOCALHOST)));
        let name = Host::parse("Relay-1.Example.ORG").expect("valid");
        assert_eq!(name.to_string(), "relay-1.example.org");
        assert!(Host::parse("localhost").expect("valid").is_loopback());
        assert!(!Host::parse("example.org").expect("valid").is_loopback());
        assert!(Host::parse(&"a".repeat(63)).is_ok());
        assert!(Host::parse("_srv.example.org").is_ok());
    }

    #[test]
    fn bad_hosts_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "it has no host"),
            ("exa mple.org", "the host contains a space at character 4"),
            (
                "example.org\n",
                "the host contains the control character U+000A at character 12",
            ),
            (
                "пример.рф",
                "non-ASCII character `п` at character 1; write internationalised",
            ),
            ("[::1]", "a bracket at character 1"),
            ("fe80::1%eth0", "`:` at character 5"),
            ("a..b", "empty part"),
            ("example.org.", "empty part"),
            ("-a.org", "starts or ends with `-`"),
            ("1.2.3.256", "looks like an IPv4 address"),
            ("01.2.3.4", "looks like an IPv4 address"),
        ];
        for (host, expected) in cases {
            let err = Host::parse(host).expect_err(host);
            assert!(err.to_string().contains(expected), "{host:?}: {err}");
        }
        assert!(matches!(
            Host::parse(&"a".repeat(64)),
            Err(RouteError::HostLabel { .. })
        ));
        assert!(matches!(
            Host::parse(&"a.".repeat(127)),
            Err(RouteError::HostTooLong { len: 254, .. })
        ));
    }

    #[test]
    fn transport_names() {
        assert_eq!(Transport::from_name("tcp"), Ok(Transport::Tcp));
        let obfs = Transport::from_name("obfs5").expect("well formed");
        assert!(!obfs.is_supported());
        assert_eq!(obfs.name(), "obfs5");
        assert_eq!(Transport::from_name(""), Err(RouteError::EmptyTransport));
        for bad in ["TCP", "5g", "tls/1", "a b", &"x".repeat(33)] {
            assert!(
                matches!(
                    Transport::from_name(bad),
                    Err(RouteError::BadTransportName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn text_form_round_trips() {
        let cases = [
            "tcp://127.0.0.1:7443",
            "tcp://[::1]:1",
            "tcp://relay.example.org:443?a=1&b=x%20y%26z%3D%25",
            "quic://[2001:db8::1]:443?sni=example.com",
            "tls://relay.example.org:443?key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8&path=%2Fs%2Fk2&sni=relay.example.org",
            "tcp://localhost:65535?empty=",
        ];
        for text in cases {
            let route: Route = text.parse().expect(text);
            assert_eq!(route.to_string(), text);
            assert_eq!(Route::from_payload(&route.to_payload()), Ok(route));
        }
        let route: Route = "TCP://Example.org:80".parse().expect("valid");
        assert_eq!(route.to_string(), "tcp://example.org:80");
        let route: Route = "tcp://h.example:9?v=%C3%A9%F0%9F%90%A6"
            .parse()
            .expect("valid");
        assert_eq!(route.param("v"), Some("é🐦"));
    }

    #[test]
    fn bad_text_forms_are_refused() {
        for text in [
            "127.0.0.1:80",
            "tcp://127.0.0.1",
            "tcp://::1:80",
            "tcp://[::1]80",
            "tcp://[zz]:80",
            "tcp://h:80/",
            "tcp://h:",
            "tcp://h:99999999999",
            "tcp://h:65536",
            "tcp://h:0",
            "tcp://h:1?x",
            "tcp://h:1?x=%zz",
            "tcp://h:1?x=%ff",
            "tcp://h:1?x=1&x=2",
            "tcp://h:1?X=1",
            "tcp://h:1?x=%0A",
            "://h:1",
        ] {
            assert!(text.parse::<Route>().is_err(), "{text}");
        }
    }

    #[test]
    fn tls_routes_check_their_params() {
        let err = "tls://relay.example.org:443?path=%2Fx"
            .parse::<Route>()
            .expect_err("no key");
        assert!(err.to_string().contains("`key`"), "{err}");
        let params =
            crate::TlsParams::new(None, "/x", [7; 32], None, crate::Rotate::Off).expect("valid");
        let route = Route::tls("203.0.113.10", 443, &params).expect("valid");
        assert_eq!(route.tls_params(), Some(Ok(params)));
        // What people and logs see names the transport and the host, never a secret.
        assert_eq!(route.redacted(), "tls://203.0.113.10:443");
        assert!(route.to_string().contains("key="));
        assert!(
            Route::tcp("h.example", 1)
                .expect("valid")
                .tls_params()
                .is_none()
        );
    }

    #[test]
    fn params_are_checked() {
        let route = Route::tcp("h.example", 1).expect("valid");
        assert!(route.clone().with_param("", "x").is_err());
        assert!(route.clone().with_param("Key", "x").is_err());
        assert!(route.clone().with_param(&"k".repeat(33), "x").is_err());
        assert!(route.clone().with_param("k", &"v".repeat(256)).is_err());
        assert!(route.clone().with_param("k", "a\u{7}b").is_err());
        let mut full = route;
        for i in 0..MAX_PARAMS {
            full = full.with_param(&format!("k{i}"), "v").expect("room");
        }
        assert!(full.clone().with_param("k0", "again").is_ok());
        assert_eq!(
            full.with_param("extra", "v"),
            Err(RouteError::TooManyParams { found: 17, max: 16 })
        );
    }

    #[test]
    fn payload_port_range_is_checked() {
        let mut payload = Route::tcp("h.example", 1).expect("valid").to_payload();
        payload.port = 70_000;
        assert_eq!(
            Route::from_payload(&payload),
            Err(RouteError::PortTooLarge { port: 70_000 })
        );
        payload.port = 0;
        assert_eq!(Route::from_payload(&payload), Err(RouteError::PortZero));
    }
}
