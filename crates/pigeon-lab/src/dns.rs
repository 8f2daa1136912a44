//! DNS messages (just what a resolver and a poisoning censor need) and the lab's resolver.
//!
//! [`Query::parse`] reads the question of a query; [`answer`] builds the reply from a [`Zone`].
//! The censor uses the same code to forge answers to intercepted UDP/53 (rule 1), and
//! [`server`] runs the lab's resolver on UDP and TCP port 53 inside a lab namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::LabError;

pub mod server;

/// DNS record type A.
pub const TYPE_A: u16 = 1;
/// Response code NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;

/// The question of a DNS query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// Recursion desired flag as sent.
    pub rd: bool,
    /// Lower-case name without the trailing dot.
    pub name: String,
    /// Query type.
    pub qtype: u16,
    /// The question section's bytes, echoed in the answer.
    question: Vec<u8>,
}

impl Query {
    /// Parses a query message (one question).
    ///
    /// # Errors
    /// [`LabError::Malformed`] when it is not a one-question query.
    pub fn parse(msg: &[u8]) -> Result<Self, LabError> {
        let bad = |d: &str| LabError::malformed("DNS query", d);
        if msg.len() < 12 {
            return Err(bad("shorter than a header"));
        }
        if msg[2] & 0x80 != 0 {
            return Err(bad("is a response"));
        }
        if u16::from_be_bytes([msg[4], msg[5]]) != 1 {
            return Err(bad("not exactly one question"));
        }
        let mut pos = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*msg.get(pos).ok_or_else(|| bad("name runs past end"))?);
            pos += 1;
            if len == 0 {
                break;
            }
            if len > 63 || labels.len() > 127 {
                return Err(bad("bad label"));
            }
            let label = msg
                .get(pos..pos + len)
                .ok_or_else(|| bad("label past end"))?;
            labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
            pos += len;
        }
        let tail = msg.get(pos..pos + 4).ok_or_else(|| bad("no type/class"))?;
        let qtype = u16::from_be_bytes([tail[0], tail[1]]);
        Ok(Self {
            id: u16::from_be_bytes([msg[0], msg[1]]),
            rd: msg[2] & 0x01 != 0,
            name: labels.join("."),
            qtype,
            question: msg[12..pos + 4].to_vec(),
        })
    }

    /// Builds a query for `name`, type A.
    pub fn build(id: u16, name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(name.len() + 18);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            let bytes = &label.as_bytes()[..label.len().min(63)];
            out.push(u8::try_from(bytes.len()).unwrap_or(63));
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&[0, 0, 1, 0, 1]);
        out
    }
}

/// A parsed answer: response code and A records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Transaction id.
    pub id: u16,
    /// Response code (0 = NOERROR, 3 = NXDOMAIN).
    pub rcode: u8,
    /// A records in the answer section.
    pub addrs: Vec<Ipv4Addr>,
}

impl Answer {
    /// Parses a response built by [`answer`] (compressed names pointing at the question).
    ///
    /// # Errors
    /// [`LabError::Malformed`] when it is not a response.
    pub fn parse(msg: &[u8]) -> Result<Self, LabError> {
        let bad = |d: &str| LabError::malformed("DNS answer", d);
        if msg.len() < 12 || msg[2] & 0x80 == 0 {
            return Err(bad("not a response"));
        }
        let ancount = u16::from_be_bytes([msg[6], msg[7]]);
        let mut pos = 12;
        // Skip the question.
        loop {
            let len = usize::from(*msg.get(pos).ok_or_else(|| bad("short"))?);
            pos += 1 + len;
            if len == 0 {
                break;
            }
        }
        pos += 4;
        let mut addrs = Vec::new();
        for _ in 0..ancount {
            let rr = msg.get(pos..pos + 12).ok_or_else(|| bad("short record"))?;
            let rdlen = usize::from(u16::from_be_bytes([rr[10], rr[11]]));
            let data = msg
                .get(pos + 12..pos + 12 + rdlen)
                .ok_or_else(|| bad("short rdata"))?;
            if u16::from_be_bytes([rr[2], rr[3]]) == TYPE_A && rdlen == 4 {
                addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            }
            pos += 12 + rdlen;
        }
        Ok(Self {
            id: u16::from_be_bytes([msg[0], msg[1]]),
            rcode: msg[3] & 0x0f,
            addrs,
        })
    }
}

/// Whether `name` equals `domain` or is a subdomain of it.
pub fn name_in(name: &str, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

/// What a resolver knows: A records, and names it pretends do not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// Name → addresses.
    pub records: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Domains (and their subdomains) answered with NXDOMAIN.
    pub nxdomain: BTreeSet<String>,
}

impl Zone {
    /// The addresses for `name` (exact match), unless it is blocked.
    pub fn lookup(&self, name: &str) -> Option<&[Ipv4Addr]> {
        if self.is_blocked(name) {
            return None;
        }
        self.records.get(name).map(Vec::as_slice)
    }

    /// Whether `name` is answered with NXDOMAIN by policy.
    pub fn is_blocked(&self, name: &str) -> bool {
        self.nxdomain.iter().any(|d| name_in(name, d))
    }
}

/// Builds the answer to `query` from `zone`: A records, NOERROR with no records for other
/// types of known names, NXDOMAIN for unknown or blocked names.
pub fn answer(query: &Query, zone: &Zone) -> Vec<u8> {
    let found = zone.lookup(&query.name);
    let addrs: &[Ipv4Addr] = match (found, query.qtype) {
        (Some(a), TYPE_A) => a,
        _ => &[],
    };
    let rcode = if found.is_some() { 0 } else { RCODE_NXDOMAIN };
    let mut out = Vec::with_capacity(12 + query.question.len() + 16 * addrs.len());
    out.extend_from_slice(&query.id.to_be_bytes());
    out.push(0x80 | 0x04 | u8::from(query.rd));
    out.push(0x80 | rcode);
    out.extend_from_slice(&[0, 1]);
    let count = u16::try_from(addrs.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query.question);
    for a in addrs.iter().take(usize::from(count)) {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&a.octets());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answer_round_trip() {
        let mut zone = Zone::default();
        zone.records
            .insert("relay.example".into(), vec![Ipv4Addr::new(203, 0, 113, 10)]);
        zone.records.insert(
            "web.whatsapp.com".into(),
            vec![Ipv4Addr::new(203, 0, 113, 20)],
        );
        zone.nxdomain.insert("whatsapp.com".into());
        let q = Query::parse(&Query::build(7, "Relay.Example.")).expect("parses");
        assert_eq!(q.name, "relay.example");
        let a = Answer::parse(&answer(&q, &zone)).expect("answer");
        assert_eq!((a.id, a.rcode), (7, 0));
        assert_eq!(a.addrs, vec![Ipv4Addr::new(203, 0, 113, 10)]);
        let q = Query::parse(&Query::build(8, "web.whatsapp.com")).expect("parses");
        let a = Answer::parse(&answer(&q, &zone)).expect("answer");
        assert_eq!((a.rcode, a.addrs.len()), (RCODE_NXDOMAIN, 0));
        assert!(name_in("a.b.c", "b.c") && !name_in("ab.c", "b.c") && name_in("b.c", "b.c"));
        assert!(Query::parse(&[0; 5]).is_err());
        assert!(Query::parse(&answer(&q, &zone)).is_err());
    }
}
