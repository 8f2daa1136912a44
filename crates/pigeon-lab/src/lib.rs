//! `pigeon-lab`: a censorship lab that reproduces today's blocking, so "it gets through" is a
//! measured fact.
//!
//! The crate has two halves, kept apart as the house style asks:
//!
//! * **Sans-IO cores** that take bytes and an explicit `now` and return decisions: packet views
//!   ([`packet`]), the TLS ClientHello parser ([`tls`]), JA4 fingerprints ([`ja4`]), HTTP/2
//!   fingerprints ([`h2fp`], with a recording HTTPS server for tests), QUIC v1
//!   Initial decryption ([`quic`]), DNS messages ([`dns`]), the censor with rules 1–15 of
//!   `CENSORS.md` ([`censor`]) and the profiles that switch and parameterise them ([`profile`]).
//! * **A thin IO shell**: network namespaces, TUN devices and the userspace router that feeds
//!   every packet through the censor ([`net`]), the lab's DNS resolver ([`dns::server`]), the
//!   active prober ([`probe`]), the scenario runner ([`runner`]) and the `pigeon lab` command
//!   ([`cli`]).
//!
//! See the crate's `README.md` for the design, the rules with their defaults and how to run it.

pub mod attack;
pub mod censor;
pub mod cli;
pub mod dns;
mod error;
pub mod h2fp;
pub mod ja4;
pub mod jarm;
pub mod net;
pub mod packet;
pub mod probe;
pub mod profile;
pub mod quic;
pub mod runner;
pub mod tls;

pub use error::LabError;
