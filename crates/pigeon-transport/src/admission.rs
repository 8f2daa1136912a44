//! Admission: who gets a connection slot while it is still a stranger.
//!
//! A connection that has not finished its handshake (TLS, Noise) costs a server memory and a
//! task and proves nothing, so strangers get a small pool of their own, counted from accept:
//!
//! * **A separate pool for handshakes.** At most `max_handshakes` connections are in their
//!   handshake at once. When the pool is full, the *oldest* handshake is evicted to make room:
//!   an honest handshake takes milliseconds and is never the oldest for long, while stalled
//!   ones (half a ClientHello, then nothing) are, so a flood of them churns through itself
//!   instead of locking everyone out.
//! * **Per-source caps.** At most `per_source_handshakes` handshakes and `per_source` connections
//!   from one source (an IPv4 address, an IPv6 /64). A source over its handshake cap loses its
//!   own oldest handshake; a source over its connection cap is refused. The counts live in
//!   memory only, keyed by address, and are never logged; an entry goes when its last
//!   connection does.
//!
//! A [`Ticket`] is a connection's place: it leaves the handshake pool with
//! [`Ticket::authenticated`], and gives everything back when dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Limits of an [`Admission`].
#[derive(Clone, Copy, Debug)]
pub struct AdmissionLimits {
    /// Connections in their handshake at once, from everyone.
    pub max_handshakes: usize,
    /// Connections in their handshake at once, from one source.
    pub per_source_handshakes: usize,
    /// Connections at once from one source (in their handshake or not).
    pub per_source: usize,
}

impl Default for AdmissionLimits {
    /// Generous for people behind a carrier's NAT (many users, one address) and for a
    /// reconnecting crowd on slow mobile links (a handshake there takes two round trips of up
    /// to a second): 1,024 handshakes at once from everyone, 128 from one source, 2,048
    /// connections from one source. A handshaking connection costs a task and a few KiB.
    fn default() -> Self {
        Self {
            max_handshakes: 1024,
            per_source_handshakes: 128,
            per_source: 2048,
        }
    }
}

/// What an [`Admission`] has counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Connections refused because their source had too many.
    pub refused: u64,
    /// Handshakes evicted to make room.
    pub evicted: u64,
    /// Connections in their handshake now.
    pub handshaking: usize,
}

/// The admission state of one listener (or of several sharing limits).
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Handshakes in order of arrival: ticket number → (source, eviction signal).
    handshaking: BTreeMap<u64, (Source, Arc<Notify>)>,
    sources: HashMap<Source, Counts>,
    stats: AdmissionStats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    handshaking: usize,
    total: usize,
}

/// A source address as the caps count it: IPv4 whole, IPv6 by its /64 (one subscriber's
/// prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                None => Self((u128::from(v6) >> 64) << 64 | 1 << 32),
            },
        }
    }
}

impl Admission {
    /// An admission with these limits.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::default(),
        })
    }

    /// The limits.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// What has been counted.
    pub fn stats(&self) -> AdmissionStats {
        self.inner.lock().map(|i| i.stats).unwrap_or_default()
    }

    /// Admits a new connection from `peer` into the handshake pool, evicting the oldest
    /// handshake (the source's own first, when it is over its handshake cap) if the pool is
    /// full. `None` when the source already has its cap of connections: close it unanswered.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        let source = Source::from(peer);
        let mut inner = self.inner.lock().ok()?;
        let counts = inner.sources.get(&source).copied().unwrap_or_default();
        if counts.total >= self.limits.per_source.max(1) {
            inner.stats.refused += 1;
            return None;
        }
        if counts.handshaking >= self.limits.per_source_handshakes.max(1) {
            let oldest = inner
                .handshaking
                .iter()
                .find(|(_, (s, _))| *s == source)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                inner.evict(id);
            }
        }
        while inner.handshaking.len() >= self.limits.max_handshakes.max(1) {
            let Some(id) = inner.handshaking.keys().next().copied() else {
                break;
            };
            inner.evict(id);
        }
        let id = inner.next;
        inner.next += 1;
        let evicted = Arc::new(Notify::new());
        inner.handshaking.insert(id, (source, Arc::clone(&evicted)));
        let counts = inner.sources.entry(source).or_default();
        counts.handshaking += 1;
        counts.total += 1;
        inner.stats.handshaking = inner.handshaking.len();
        Some(Ticket {
            admission: Arc::clone(self),
            id,
            source,
            handshaking: true,
            evicted,
        })
    }
}

impl Admission {
    /// Closes the oldest connection still in its handshake, to make room for another;
    /// `false` when none is in its handshake.
    pub fn evict_oldest(&self) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        match inner.handshaking.keys().next().copied() {
            Some(id) => {
                inner.evict(id);
                true
            }
            None => false,
        }
    }
}

impl Inner {
    /// Takes handshake `id` out of the pool and tells its connection to close.
    fn evict(&mut self, id: u64) {
        if let Some((source, signal)) = self.handshaking.remove(&id) {
            if let Some(c) = self.sources.get_mut(&source) {
                c.handshaking = c.handshaking.saturating_sub(1);
            }
            signal.notify_one();
            self.stats.evicted += 1;
            self.stats.handshaking = self.handshaking.len();
        }
    }
}

/// One connection's place. Dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    source: Source,
    handshaking: bool,
    evicted: Arc<Notify>,
}

impl Ticket {
    /// Resolves when the pool evicted this connection's handshake to make room (never, once
    /// [`Self::authenticated`]): the connection is then to be closed.
    pub async fn evicted(&self) {
        if self.handshaking {
            self.evicted.notified().await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// An opaque key for the connection's source (an IPv4 address, an IPv6 /64), for limits
    /// kept per source in memory; it is not the address in any printable form.
    pub fn source_key(&self) -> u128 {
        self.source.0
    }

    /// The handshake is done: the connection leaves the handshake pool (it still counts
    /// towards its source's connections).
    pub fn authenticated(&mut self) {
        if !self.handshaking {
            return;
        }
        self.handshaking = false;
        if let Ok(mut inner) = self.admission.inner.lock()
            && inner.handshaking.remove(&self.id).is_some()
        {
            if let Some(c) = inner.sources.get_mut(&self.source) {
                c.handshaking = c.handshaking.saturating_sub(1);
            }
            inner.stats.handshaking = inner.handshaking.len();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Ok(mut inner) = self.admission.inner.lock() else {
            return;
        };
        if self.handshaking
            && inner.handshaking.remove(&self.id).is_some()
            && let Some(c) = inner.sources.get_mut(&self.source)
        {
            c.handshaking = c.handshaking.saturating_sub(1);
        }
        inner.stats.handshaking = inner.handshaking.len();
        let gone = match inner.sources.get_mut(&self.source) {
            Some(c) => {
                c.total = c.total.saturating_sub(1);
                c.total == 0
            }
            None => false,
        };
        if gone {
            inner.sources.remove(&self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn limits(
        max_handshakes: usize,
        per_source_handshakes: usize,
        per_source: usize,
    ) -> AdmissionLimits {
        AdmissionLimits {
            max_handshakes,
            per_source_handshakes,
            per_source,
        }
    }

    #[tokio::test]
    async fn a_full_pool_evicts_the_oldest_handshake() {
        let a = Admission::new(limits(3, 10, 100));
        let first = a.admit(ip(1)).expect("1");
        let second = a.admit(ip(2)).expect("2");
        let _third = a.admit(ip(3)).expect("3");
        let _fourth = a.admit(ip(4)).expect("4");
        // The first was evicted, and learns it at once (the signal is kept for it).
        tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted())
            .await
            .expect("evicted");
        assert_eq!(a.stats().evicted, 1);
        assert_eq!(a.stats().handshaking, 3);
        // An authenticated connection is out of the pool: never evicted.
        let mut second = second;
        second.authenticated();
        let _more: Vec<_> = (5..9).map(|n| a.admit(ip(n)).expect("n")).collect();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), second.evicted())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn one_source_pays_for_its_own_flood() {
        let a = Admission::new(limits(100, 2, 4));
        let honest = a.admit(ip(9)).expect("honest");
        let flood: Vec<_> = (0..3).map(|_| a.admit(ip(1))).collect();
        // The source's third handshake evicted its own first, not the honest one.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            flood[0].as_ref().expect("admitted").evicted(),
        )
        .await
        .expect("own oldest evicted");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), honest.evicted())
                .await
                .is_err()
        );
        // Four connections from one source at most; dropping one frees a place.
        let fourth = a.admit(ip(1));
        assert!(fourth.is_some());
        assert!(a.admit(ip(1)).is_none());
        assert_eq!(a.stats().refused, 1);
        drop(fourth);
        assert!(a.admit(ip(1)).is_some());
    }

    #[test]
    fn sources_are_addresses_and_v6_prefixes_and_are_forgotten() {
        let a = Admission::new(limits(100, 100, 1));
        let x = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1));
        let same_prefix = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9));
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        let t = a.admit(x).expect("x");
        assert!(a.admit(same_prefix).is_none(), "one /64 is one source");
        assert!(a.admit(other).is_some());
        drop(t);
        assert!(a.admit(same_prefix).is_some());
        assert!(
            a.inner.lock().expect("lock").sources.len() <= 2,
            "sources without connections are forgotten"
        );
    }
}
