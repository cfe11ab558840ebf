//! Checksum offload glue, in plain Rust over frame bytes (tested without DPDK).
//!
//! Transmit: with checksum offload on, the stack leaves the IPv4, TCP and UDP checksum fields zero
//! (stack/device.rs), and the port fills them if the mbuf asks: `ol_flags` say which, `l2_len` and
//! `l3_len` where the headers start, and the TCP/UDP checksum field must hold the pseudo-header
//! sum (DPDK's contract, as `rte_ipv4_phdr_cksum` computes it). [`tx_offload`] does all three.
//!
//! Receive: the port marks each mbuf's IP and L4 checksum good, bad or unknown. The stack trusts a
//! port with receive offload and skips its own checks, so [`rx_checksums_ok`] drops what the port
//! found bad and checks in software what it did not look at (ICMP, and unknown verdicts).

use super::sys;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The one's-complement sum of `data` (big-endian 16-bit words, odd tail padded), folded to 16 bits
/// and not inverted, continuing from `sum`.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The IPv4 pseudo-header sum for an L4 segment of `l4_len` bytes.
fn pseudo_header_sum(ip: &[u8], proto: u8, l4_len: usize) -> u32 {
    let mut s = ones_sum(0, &ip[12..20]);
    s = ones_sum(s, &[0, proto]);
    ones_sum(s, &(l4_len as u16).to_be_bytes())
}

/// An untagged IPv4 frame's header fields: header length, protocol, total length, and whether it
/// is a fragment. `None` for anything else or a frame too short for its headers.
fn ipv4(frame: &[u8]) -> Option<(usize, u8, usize, bool)> {
    if frame.len() < ETH_HLEN + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || ip.len() < total {
        return None;
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    Some((ihl, ip[9], total, fragment))
}

/// Offset of the checksum field inside a TCP or UDP header.
fn l4_checksum_at(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        _ => None,
    }
}

/// Prepares an outgoing frame for checksum offload: clears the IPv4 header checksum, puts the
/// pseudo-header sum into a TCP/UDP checksum field, and returns `(ol_flags, l2_len, l3_len)` for
/// the mbuf, or `None` for a frame with nothing to offload (not IPv4).
pub fn tx_offload(frame: &mut [u8]) -> Option<(u64, u16, u16)> {
    let (ihl, proto, total, fragment) = ipv4(frame)?;
    let mut flags = sys::MBUF_TX_IPV4 | sys::MBUF_TX_IP_CKSUM;
    frame[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    if let Some(at) = l4_checksum_at(proto).filter(|_| !fragment) {
        let l4_len = total - ihl;
        if l4_len >= at + 2 {
            let sum = pseudo_header_sum(&frame[ETH_HLEN..], proto, l4_len) as u16;
            let field = ETH_HLEN + ihl + at;
            frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
            flags |= if proto == PROTO_TCP {
                sys::MBUF_TX_TCP_CKSUM
            } else {
                sys::MBUF_TX_UDP_CKSUM
            };
        }
    }
    Some((flags, ETH_HLEN as u16, ihl as u16))
}

/// False when a received frame's checksums are wrong: as the port found (`ol_flags`), or in
/// software where the port gave no verdict. Frames that are not IPv4, or too short for their
/// headers, pass (the stack's parser counts those).
pub fn rx_checksums_ok(frame: &[u8], ol_flags: u64) -> bool {
    let ip_flag = ol_flags & sys::MBUF_RX_IP_CKSUM_MASK;
    let l4_flag = ol_flags & sys::MBUF_RX_L4_CKSUM_MASK;
    if ip_flag == sys::MBUF_RX_IP_CKSUM_BAD || l4_flag == sys::MBUF_RX_L4_CKSUM_BAD {
        return false;
    }
    let Some((ihl, proto, total, fragment)) = ipv4(frame) else {
        return true;
    };
    let ip = &frame[ETH_HLEN..ETH_HLEN + total];
    if ip_flag != sys::MBUF_RX_IP_CKSUM_GOOD && ones_sum(0, &ip[..ihl]) != 0xffff {
        return false;
    }
    if fragment {
        return true;
    }
    let l4 = &ip[ihl..];
    match proto {
        PROTO_TCP | PROTO_UDP if l4_flag != sys::MBUF_RX_L4_CKSUM_GOOD => {
            let at = l4_checksum_at(proto).expect("tcp or udp");
            if l4.len() < at + 2 {
                return true;
            }
            // A zero UDP checksum means "none" in IPv4.
            if proto == PROTO_UDP && l4[at..at + 2] == [0, 0] {
                return true;
            }
            ones_sum(pseudo_header_sum(ip, proto, l4.len()), l4) == 0xffff
        }
        PROTO_ICMP => ones_sum(0, l4) == 0xffff,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address,
        Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
    };

    const SRC: Ipv4Address = Ipv4Address::new(198, 18, 0, 2);
    const DST: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);

    /// An Ethernet/IPv4/L4 frame built by smoltcp, with or without checksums filled in.
    fn frame(proto: IpProtocol, payload: &[u8], checksums: bool) -> Vec<u8> {
        let caps = if checksums {
            ChecksumCapabilities::default()
        } else {
            ChecksumCapabilities::ignored()
        };
        let l4_len = match proto {
            IpProtocol::Tcp => 20 + payload.len(),
            _ => 8 + payload.len(),
        };
        let ip = Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: proto,
            payload_len: l4_len,
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; 14 + 20 + l4_len];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        let l4 = p.payload_mut();
        match proto {
            IpProtocol::Tcp => {
                let tcp = TcpRepr {
                    src_port: 40_000,
                    dst_port: 7,
                    control: smoltcp::wire::TcpControl::Psh,
                    seq_number: TcpSeqNumber(1234),
                    ack_number: Some(TcpSeqNumber(99)),
                    window_len: 512,
                    window_scale: None,
                    max_seg_size: None,
                    sack_permitted: false,
                    sack_ranges: [None; 3],
                    timestamp: None,
                    payload,
                };
                tcp.emit(
                    &mut TcpPacket::new_unchecked(l4),
                    &SRC.into(),
                    &DST.into(),
                    &caps,
                );
            }
            _ => {
                let udp = UdpRepr {
                    src_port: 40_000,
                    dst_port: 7,
                };
                udp.emit(
                    &mut UdpPacket::new_unchecked(l4),
                    &SRC.into(),
                    &DST.into(),
                    payload.len(),
                    |b| b.copy_from_slice(payload),
                    &caps,
                );
            }
        }
        buf
    }

    /// What a NIC does with an offload request: IP header checksum from scratch, L4 checksum
    /// summed over the segment starting from the pseudo-header sum already in the field.
    fn nic_fill(frame: &mut [u8], flags: u64, l2: u16, l3: u16) {
        let (l2, l3) = (l2 as usize, l3 as usize);
        if flags & sys::MBUF_TX_IP_CKSUM != 0 {
            let c = !(ones_sum(0, &frame[l2..l2 + l3]) as u16);
            frame[l2 + 10..l2 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let at = match flags & (3 << 52) {
            sys::MBUF_TX_TCP_CKSUM => 16,
            sys::MBUF_TX_UDP_CKSUM => 6,
            _ => return,
        };
        let l4 = l2 + l3;
        let c = !(ones_sum(0, &frame[l4..]) as u16);
        frame[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn offloaded_checksums_equal_software_ones() {
        for proto in [IpProtocol::Tcp, IpProtocol::Udp] {
            for len in [0usize, 1, 2, 3, 100, 1459] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let want = frame(proto, &payload, true);
                let mut got = frame(proto, &payload, false);
                let (flags, l2, l3) = tx_offload(&mut got).expect("ipv4");
                assert_eq!((l2, l3), (14, 20));
                assert_ne!(flags & sys::MBUF_TX_IP_CKSUM, 0);
                nic_fill(&mut got, flags, l2, l3);
                assert_eq!(got, want, "{proto} with {len} payload bytes");
                assert!(rx_checksums_ok(&want, 0));
            }
        }
    }

    #[test]
    fn non_ip_frames_are_left_alone() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(tx_offload(&mut arp), None);
        assert!(rx_checksums_ok(&arp, 0));
        assert!(rx_checksums_ok(&[0u8; 5], 0));
    }

    #[test]
    fn bad_checksums_are_caught_by_flag_or_software() {
        let good = frame(IpProtocol::Tcp, b"hello", true);
        assert!(rx_checksums_ok(&good, 0));
        assert!(!rx_checksums_ok(&good, sys::MBUF_RX_IP_CKSUM_BAD));
        assert!(!rx_checksums_ok(&good, sys::MBUF_RX_L4_CKSUM_BAD));
        let mut bad_l4 = good.clone();
        *bad_l4.last_mut().unwrap() ^= 1;
        assert!(
            !rx_checksums_ok(&bad_l4, 0),
            "unknown verdict: checked here"
        );
        assert!(
            rx_checksums_ok(
                &bad_l4,
                sys::MBUF_RX_IP_CKSUM_GOOD | sys::MBUF_RX_L4_CKSUM_GOOD
            ),
            "the port's good verdict is trusted"
        );
        let mut bad_ip = good.clone();
        bad_ip[14 + 8] ^= 1; // TTL
        assert!(!rx_checksums_ok(&bad_ip, sys::MBUF_RX_L4_CKSUM_GOOD));
        let mut udp = frame(IpProtocol::Udp, b"x", true);
        udp[14 + 20 + 6..14 + 20 + 8].fill(0);
        assert!(rx_checksums_ok(&udp, 0), "UDP without checksum");
        let mut icmp = good;
        icmp[14 + 9] = 1; // now "ICMP" with a payload whose sum is not zero
        icmp[24..26].fill(0);
        let c = !(ones_sum(0, &icmp[14..34]) as u16);
        icmp[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(!rx_checksums_ok(&icmp, sys::MBUF_RX_IP_CKSUM_GOOD));
    }
}
