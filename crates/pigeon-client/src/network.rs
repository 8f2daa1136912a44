//! Which network the device is on, for route memory.
//!
//! A route that works at home (direct) may be blocked on mobile data (only a domestic hop
//! gets through), so the route that last worked is remembered per network, not globally. The
//! network is recognised by what the device already knows about its default route: the
//! interface, the gateway's address and, for a gateway on the local link, the gateway's hardware
//! address from the neighbour table — two home routers both at 192.168.1.1 differ there. A
//! mobile data link has no gateway and is recognised by its interface.
//!
//! [`NetworkId`] is a hash of those facts, kept only in the encrypted profile and never sent.
//! The parsing is pure ([`NetworkFacts::from_tables`]); [`NetworkId::current`] reads Linux's
//! `/proc/net` tables, and elsewhere yields one id for every network (memory is then global).

use blake2::{Blake2s256, Digest};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A network, as far as route memory can tell. Opaque; stable while the network is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkId(pub [u8; 16]);

/// What identifies the network: the default routes and the gateway's hardware address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkFacts {
    /// The IPv4 default route: interface and gateway (unspecified for a point-to-point link).
    pub v4: Option<(String, Ipv4Addr)>,
    /// The IPv6 default route: interface and gateway.
    pub v6: Option<(String, Ipv6Addr)>,
    /// The IPv4 gateway's hardware address, when the neighbour table has it.
    pub gateway_mac: Option<String>,
}

impl NetworkFacts {
    /// Reads the facts out of the text of `/proc/net/route`, `/proc/net/ipv6_route` and
    /// `/proc/net/arp` (any may be empty). Lines that do not parse are skipped.
    pub fn from_tables(route: &str, ipv6_route: &str, arp: &str) -> Self {
        let v4 = default_v4(route);
        let gateway_mac = v4
            .as_ref()
            .filter(|(_, gw)| !gw.is_unspecified())
            .and_then(|(iface, gw)| neighbour_mac(arp, *gw, iface));
        Self {
            v4,
            v6: default_v6(ipv6_route),
            gateway_mac,
        }
    }

    /// The id of these facts.
    pub fn id(&self) -> NetworkId {
        let mut h = Blake2s256::new();
        h.update(b"pigeonpost network v1\0");
        if let Some((iface, gw)) = &self.v4 {
            h.update(format!("v4 {iface} {gw}\0"));
        }
        if let Some((iface, gw)) = &self.v6 {
            h.update(format!("v6 {iface} {gw}\0"));
        }
        if let Some(mac) = &self.gateway_mac {
            h.update(format!("mac {mac}\0"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize()[..16]);
        NetworkId(id)
    }
}

impl NetworkId {
    /// The network this device is on now (on systems without `/proc/net`, one id for all).
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        NetworkFacts::from_tables(
            &read("/proc/net/route"),
            &read("/proc/net/ipv6_route"),
            &read("/proc/net/arp"),
        )
        .id()
    }
}

/// The IPv4 default route with the lowest metric: `Iface Destination Gateway Flags RefCnt Use
/// Metric Mask …`, addresses in little-endian hex.
fn default_v4(table: &str) -> Option<(String, Ipv4Addr)> {
    const RTF_UP: u32 = 0x1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, gw, flags, metric, mask) = (
                f.first()?,
                f.get(1)?,
                f.get(2)?,
                f.get(3)?,
                f.get(6)?,
                f.get(7)?,
            );
            let flags = u32::from_str_radix(flags, 16).ok()?;
            if *dest != "00000000" || *mask != "00000000" || flags & RTF_UP == 0 {
                return None;
            }
            let gw = Ipv4Addr::from(u32::from_str_radix(gw, 16).ok()?.swap_bytes());
            let metric: u32 = metric.parse().ok()?;
            Some((metric, ((*iface).to_owned(), gw)))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, route)| route)
}

/// The IPv6 default route with the lowest metric: `dest plen src splen nexthop metric refcnt
/// use flags iface`, skipping rejecting routes and loopback.
fn default_v6(table: &str) -> Option<(String, Ipv6Addr)> {
    const RTF_REJECT: u32 = 0x0200;
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[0].len() != 32 || f[0].bytes().any(|b| b != b'0') || f[1] != "00" {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            if flags & RTF_REJECT != 0 || f[9] == "lo" {
                return None;
            }
            let gw = Ipv6Addr::from(u128::from_str_radix(f[4], 16).ok()?);
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            Some((metric, (f[9].to_owned(), gw)))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, route)| route)
}

/// The hardware address of `ip` on `iface` in `/proc/net/arp` (`IP HWtype Flags HWaddr Mask
/// Device`), if complete.
fn neighbour_mac(table: &str, ip: Ipv4Addr, iface: &str) -> Option<String> {
    const ATF_COM: u32 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, mac, dev) = (f.first()?, f.get(2)?, f.get(3)?, f.get(5)?);
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        (addr.parse::<Ipv4Addr>().ok()? == ip && *dev == iface && flags & ATF_COM != 0)
            .then(|| mac.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010A0A0A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000A0A0A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";
    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
10.10.10.1       0x1         0x2         AA:bb:cc:00:11:22     *        eth0
192.168.1.1      0x1         0x0         00:00:00:00:00:00     *        wlan0
";
    const V6: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00450003   wlan0
";

    #[test]
    fn the_default_route_with_the_lowest_metric_and_its_gateways_mac() {
        let f = NetworkFacts::from_tables(ROUTE, V6, ARP);
        assert_eq!(f.v4, Some(("eth0".into(), Ipv4Addr::new(10, 10, 10, 1))));
        assert_eq!(f.gateway_mac.as_deref(), Some("aa:bb:cc:00:11:22"));
        assert_eq!(
            f.v6,
            Some(("wlan0".into(), "fe80::1".parse().expect("address")))
        );
    }

    #[test]
    fn two_routers_at_one_address_are_two_networks() {
        let home = "IP address HW type Flags HW address Mask Device\n\
                    10.10.10.1 0x1 0x2 aa:aa:aa:aa:aa:aa * eth0\n";
        let cafe = "IP address HW type Flags HW address Mask Device\n\
                    10.10.10.1 0x1 0x2 bb:bb:bb:bb:bb:bb * eth0\n";
        let a = NetworkFacts::from_tables(ROUTE, "", home).id();
        let b = NetworkFacts::from_tables(ROUTE, "", cafe).id();
        assert_ne!(a, b);
        assert_eq!(a, NetworkFacts::from_tables(ROUTE, "", home).id());
    }

    #[test]
    fn garbage_and_empty_tables_give_no_facts() {
        let f = NetworkFacts::from_tables("x\n\u{0}\u{1} zz\n", "short line", "\n\n");
        assert_eq!(f, NetworkFacts::default());
        assert_eq!(f.id(), NetworkFacts::from_tables("", "", "").id());
        let bad_hex = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                       eth0 00000000 ZZZZ 0003 0 0 1 00000000\n";
        assert_eq!(NetworkFacts::from_tables(bad_hex, "", "").v4, None);
    }

    #[test]
    fn a_point_to_point_mobile_link_is_known_by_its_interface() {
        let route = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                     rmnet_data0 00000000 00000000 0001 0 0 0 00000000\n";
        let f = NetworkFacts::from_tables(route, "", "");
        assert_eq!(f.v4, Some(("rmnet_data0".into(), Ipv4Addr::UNSPECIFIED)));
        assert_eq!(f.gateway_mac, None);
    }
}
