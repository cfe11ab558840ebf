//! Frame classification: validates an incoming frame once and says which socket set must see it.
//!
//! smoltcp is told not to verify checksums on receive; this is the only place they are checked, so
//! every bad frame is counted here by reason before smoltcp sees anything.

use smoltcp::wire::{
    ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
};

/// The connection a TCP segment belongs to, seen from this stack (the local address is the stack's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub remote_ip: Ipv4Address,
    pub remote_port: u16,
    pub local_port: u16,
}

/// Why a frame was dropped before protocol processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Too short for its headers, or lengths that disagree.
    Malformed,
    /// IPv4 header, TCP, UDP or ICMP checksum wrong.
    BadChecksum,
    /// Addressed to another host.
    NotForUs,
    /// A protocol this stack does not speak yet (IPv6, IP fragments, unknown EtherType).
    Unsupported,
}

/// What to do with a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Arp,
    Tcp {
        key: FlowKey,
        syn_only: bool,
        /// The segment carries data or a FIN (something the app may read).
        has_data: bool,
    },
    Udp {
        local_port: u16,
    },
    /// ICMP and other IP protocols: the interface answers (echo reply, protocol unreachable).
    OtherIp,
    Drop(DropReason),
}

/// The stack's own addresses, for the "is it for us" checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Local {
    pub mac: EthernetAddress,
    pub ip: Ipv4Address,
    pub broadcast: Ipv4Address,
    pub verify_checksums: bool,
}

pub(crate) fn classify(frame: &[u8], local: &Local) -> Class {
    use DropReason::*;
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Class::Drop(Malformed);
    };
    let dst = eth.dst_addr();
    if dst != local.mac && !dst.is_broadcast() && !dst.is_multicast() {
        return Class::Drop(NotForUs);
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => match ArpPacket::new_checked(eth.payload()) {
            Ok(_) => Class::Arp,
            Err(_) => Class::Drop(Malformed),
        },
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload(), local),
        _ => Class::Drop(Unsupported),
    }
}

fn classify_ipv4(bytes: &[u8], local: &Local) -> Class {
    use DropReason::*;
    let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
        return Class::Drop(Malformed);
    };
    if ip.version() != 4 {
        return Class::Drop(Malformed);
    }
    if local.verify_checksums && !ip.verify_checksum() {
        return Class::Drop(BadChecksum);
    }
    let dst = ip.dst_addr();
    if dst != local.ip && dst != local.broadcast && !dst.is_broadcast() && !dst.is_multicast() {
        return Class::Drop(NotForUs);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Class::Drop(Unsupported);
    }
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(dst));
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Class::Drop(Malformed);
            };
            if local.verify_checksums && !tcp.verify_checksum(&src, &dst) {
                return Class::Drop(BadChecksum);
            }
            if !tcp_options_valid(tcp.options()) || tcp.dst_port() == 0 || tcp.src_port() == 0 {
                return Class::Drop(Malformed);
            }
            if dst != IpAddress::Ipv4(local.ip) {
                return Class::Drop(NotForUs);
            }
            Class::Tcp {
                key: FlowKey {
                    remote_ip: ip.src_addr(),
                    remote_port: tcp.src_port(),
                    local_port: tcp.dst_port(),
                },
                syn_only: tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin(),
                has_data: !tcp.payload().is_empty() || tcp.fin(),
            }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Class::Drop(Malformed);
            };
            // A zero UDP checksum means "none" in IPv4.
            if local.verify_checksums && udp.checksum() != 0 && !udp.verify_checksum(&src, &dst) {
                return Class::Drop(BadChecksum);
            }
            Class::Udp {
                local_port: udp.dst_port(),
            }
        }
        IpProtocol::Icmp => {
            let Ok(icmp) = Icmpv4Packet::new_checked(payload) else {
                return Class::Drop(Malformed);
            };
            if local.verify_checksums && !icmp.verify_checksum() {
                return Class::Drop(BadChecksum);
            }
            Class::OtherIp
        }
        _ => Class::OtherIp,
    }
}

/// Walks TCP options: every option fits, lengths are at least 2, and the known ones have their size.
fn tcp_options_valid(mut opts: &[u8]) -> bool {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => return true,
            1 => opts = &opts[1..],
            _ => {
                let Some(&len) = opts.get(1) else {
                    return false;
                };
                let len = len as usize;
                let expected = match kind {
                    2 => Some(4),  // MSS
                    3 => Some(3),  // window scale
                    4 => Some(2),  // SACK permitted
                    8 => Some(10), // timestamps
                    _ => None,
                };
                if len < 2 || len > opts.len() || expected.is_some_and(|e| e != len) {
                    return false;
                }
                if kind == 5 && (len < 10 || !(len - 2).is_multiple_of(8)) {
                    return false;
                }
                opts = &opts[len..];
            }
        }
    }
    true
}

/// Runs the classifier on arbitrary bytes (for fuzz/property tests) as a stack at 198.18.0.1 with
/// MAC 02:00:00:00:00:01 would; returns a short label.
pub fn fuzz_classify(frame: &[u8]) -> &'static str {
    let local = Local {
        mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        ip: Ipv4Address::new(198, 18, 0, 1),
        broadcast: Ipv4Address::new(198, 18, 0, 255),
        verify_checksums: true,
    };
    match classify(frame, &local) {
        Class::Arp => "arp",
        Class::Tcp { .. } => "tcp",
        Class::Udp { .. } => "udp",
        Class::OtherIp => "ip",
        Class::Drop(_) => "drop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_walk_rejects_truncation() {
        assert!(tcp_options_valid(&[]));
        assert!(tcp_options_valid(&[2, 4, 5, 0xb4, 1, 1, 0]));
        assert!(!tcp_options_valid(&[2, 4, 5])); // truncated MSS
        assert!(!tcp_options_valid(&[2]));
        assert!(!tcp_options_valid(&[8, 1]));
        assert!(!tcp_options_valid(&[3, 4, 7, 0]));
        assert!(!tcp_options_valid(&[5, 6, 0, 0, 0, 0]));
        assert!(tcp_options_valid(&[30, 2, 1, 1])); // unknown option with a sane length
    }

    #[test]
    fn short_frames_are_malformed() {
        let local = Local {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ip: Ipv4Address::new(198, 18, 0, 2),
            broadcast: Ipv4Address::new(198, 18, 0, 255),
            verify_checksums: true,
        };
        assert_eq!(
            classify(&[0u8; 5], &local),
            Class::Drop(DropReason::Malformed)
        );
        let mut f = [0u8; 20];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12] = 0x08; // IPv4 with no room for a header
        assert_eq!(classify(&f, &local), Class::Drop(DropReason::Malformed));
    }
}
