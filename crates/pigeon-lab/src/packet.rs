//! IPv4 packet views and builders, over `etherparse`.
//!
//! The censor sees raw IPv4 packets from the TUN device. [`Packet::parse`] turns one into a small
//! owned view with the fields the rules need; the builders make the packets the censor injects
//! (forged DNS answers, RST/FIN teardown) and the packets the unit tests feed it.

use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::LabError;

/// TCP flags the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// The transport part of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A TCP segment.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number (meaningful when `flags.ack`).
        ack: u32,
        /// Flags.
        flags: TcpFlags,
        /// Segment payload.
        payload: Vec<u8>,
    },
    /// A UDP datagram.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Datagram payload.
        payload: Vec<u8>,
    },
    /// ICMPv4 (any type).
    Icmp,
    /// Anything else (other protocols, fragments the parser could not slice).
    Other,
}

/// An IPv4 packet as the censor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport header and payload.
    pub transport: Transport,
}

impl Packet {
    /// Parses an IPv4 packet.
    ///
    /// # Errors
    /// [`LabError::Malformed`] when the bytes are not an IPv4 packet.
    pub fn parse(bytes: &[u8]) -> Result<Self, LabError> {
        let sliced = SlicedPacket::from_ip(bytes)
            .map_err(|e| LabError::malformed("IPv4 packet", e.to_string()))?;
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
            return Err(LabError::malformed("IPv4 packet", "not IPv4"));
        };
        let src = ip.header().source_addr();
        let dst = ip.header().destination_addr();
        let transport = match &sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => Transport::Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                flags: TcpFlags {
                    syn: tcp.syn(),
                    ack: tcp.ack(),
                    fin: tcp.fin(),
                    rst: tcp.rst(),
                },
                payload: tcp.payload().to_vec(),
            },
            Some(TransportSlice::Udp(udp)) => Transport::Udp {
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
                payload: udp.payload().to_vec(),
            },
            Some(TransportSlice::Icmpv4(_)) => Transport::Icmp,
            _ => Transport::Other,
        };
        Ok(Self {
            src,
            dst,
            transport,
        })
    }

    /// The transport payload (empty for ICMP and others).
    pub fn payload(&self) -> &[u8] {
        match &self.transport {
            Transport::Tcp { payload, .. } | Transport::Udp { payload, .. } => payload,
            Transport::Icmp | Transport::Other => &[],
        }
    }
}

/// Builds an IPv4/UDP packet.
pub fn build_udp(
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(src_port, dst_port);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail for IO reasons; a payload too large for one datagram
    // yields an empty packet, which the caller's peer simply never sees.
    if builder.write(&mut out, payload).is_err() {
        out.clear();
    }
    out
}

/// A TCP segment to build.
#[derive(Debug, Clone, Copy)]
pub struct TcpSpec<'a> {
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number, if ACK is set.
    pub ack: Option<u32>,
    /// Flags (the `ack` field of this is ignored; `ack` above decides).
    pub flags: TcpFlags,
    /// Payload.
    pub payload: &'a [u8],
}

/// Builds an IPv4/TCP packet.
pub fn build_tcp(spec: &TcpSpec<'_>) -> Vec<u8> {
    let mut builder = PacketBuilder::ipv4(spec.src.0.octets(), spec.dst.0.octets(), 64)
        .tcp(spec.src.1, spec.dst.1, spec.seq, 64_240);
    if let Some(ack) = spec.ack {
        builder = builder.ack(ack);
    }
    if spec.flags.syn {
        builder = builder.syn();
    }
    if spec.flags.fin {
        builder = builder.fin();
    }
    if spec.flags.rst {
        builder = builder.rst();
    }
    if !spec.payload.is_empty() {
        builder = builder.psh();
    }
    let mut out = Vec::with_capacity(builder.size(spec.payload.len()));
    if builder.write(&mut out, spec.payload).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_udp_round_trip() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(203, 0, 113, 10);
        let bytes = build_tcp(&TcpSpec {
            src: (a, 40_000),
            dst: (b, 443),
            seq: 7,
            ack: Some(9),
            flags: TcpFlags::default(),
            payload: b"hello",
        });
        let p = Packet::parse(&bytes).expect("parses");
        assert_eq!((p.src, p.dst), (a, b));
        assert_eq!(p.payload(), b"hello");
        match p.transport {
            Transport::Tcp {
                seq, ack, flags, ..
            } => {
                assert_eq!((seq, ack), (7, 9));
                assert!(flags.ack && !flags.syn);
            }
            other => panic!("not tcp: {other:?}"),
        }
        let u = Packet::parse(&build_udp(a, 5353, b, 53, b"q")).expect("parses");
        assert!(matches!(u.transport, Transport::Udp { dst_port: 53, .. }));
        assert!(Packet::parse(&[0x45, 0, 0]).is_err());
    }
}
