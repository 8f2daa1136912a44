//! The protobuf payloads inside links (prost derive, no `protoc`).
//!
//! Field numbers never change meaning. Within one major `version`, newer writers only add
//! fields, and readers ignore fields they do not know; a change that old readers must not
//! misread takes a new major version, which old readers refuse with "update Pigeonpost".
//!
//! Invitation and proxy payloads embed these messages rather than copying their fields.
//!
//! ```text
//! message RelayLinkPayload {
//!   uint32 version = 1;              // major format version; 1
//!   bytes relay_key = 2;             // relay's static Noise public key, X25519, 32 bytes
//!   repeated RoutePayload routes = 3; // 1..=16, in order of preference
//!   optional string label = 4;       // for people; 1..=64 characters, no control characters
//! }
//! message ProxyLinkPayload {
//!   uint32 version = 1;              // major format version; 1
//!   RoutePayload route = 2;          // how to reach the proxy: a tls route
//! }
//! message RoutePayload {
//!   string transport = 1;            // "tcp"; unknown names are kept as unsupported routes
//!   string host = 2;                 // DNS name, IPv4, or IPv6 without brackets
//!   uint32 port = 3;                 // 1..=65535
//!   map<string, string> params = 4;  // transport parameters, at most 16
//! }
//! ```

use std::collections::BTreeMap;

/// The payload of a `pigeon://relay#…` link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RelayLinkPayload {
    /// Major format version; this build reads and writes [`crate::RELAY_LINK_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The relay's static Noise public key (X25519, 32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub relay_key: Vec<u8>,
    /// Ways to reach the relay, in order of preference.
    #[prost(message, repeated, tag = "3")]
    pub routes: Vec<RoutePayload>,
    /// A name for people, chosen by whoever made the link.
    #[prost(string, optional, tag = "4")]
    pub label: Option<String>,
}

/// The payload of a `pigeon://proxy#…` link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProxyLinkPayload {
    /// Major format version; this build reads and writes [`crate::PROXY_LINK_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// How to reach the proxy.
    #[prost(message, optional, tag = "2")]
    pub route: Option<RoutePayload>,
}

/// One route inside a link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutePayload {
    /// Transport name, such as `tcp`.
    #[prost(string, tag = "1")]
    pub transport: String,
    /// Host: DNS name, IPv4 address, or IPv6 address without brackets.
    #[prost(string, tag = "2")]
    pub host: String,
    /// Port, 1 to 65535.
    #[prost(uint32, tag = "3")]
    pub port: u32,
    /// Transport parameters.
    #[prost(btree_map = "string, string", tag = "4")]
    pub params: BTreeMap<String, String>,
}

/// Only the version field of any payload, read before the rest so that a payload of another
/// major version is refused as such, whatever its other fields now mean.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct VersionOnly {
    /// Major format version.
    #[prost(uint32, tag = "1")]
    pub(crate) version: u32,
}
