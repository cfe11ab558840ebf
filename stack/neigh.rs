//! The TCP path's neighbour table (IPv4 → Ethernet), learned from ARP and from on-link peers'
//! frames, and ARP requests for outgoing connections. smoltcp's `Interface` keeps answering ARP
//! for the stack's address; this table only tells our TCP frames where to go.

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// How long a learned entry is trusted without being refreshed (microseconds).
const ENTRY_LIFETIME_US: i64 = 300_000_000;
/// At most one ARP request per next hop this often (microseconds).
const REQUEST_EVERY_US: i64 = 1_000_000;
/// Entries kept at most (a flood of spoofed sources cannot grow the table beyond this).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(crate) struct Neighbours {
    entries: HashMap<Ipv4Addr, (EthernetAddress, i64)>,
    requested: HashMap<Ipv4Addr, i64>,
}

impl Neighbours {
    pub fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now_us: i64) {
        if !mac.is_unicast() || ip.is_unspecified() || ip.is_broadcast() {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&ip) {
            self.entries
                .retain(|_, (_, t)| now_us - *t < ENTRY_LIFETIME_US);
            if self.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        self.entries.insert(ip, (mac, now_us));
        self.requested.remove(&ip);
    }

    pub fn lookup(&self, ip: Ipv4Addr, now_us: i64) -> Option<EthernetAddress> {
        self.entries
            .get(&ip)
            .filter(|(_, t)| now_us - *t < ENTRY_LIFETIME_US)
            .map(|(m, _)| *m)
    }

    /// True when an ARP request for `ip` should go out now (rate limited).
    pub fn should_request(&mut self, ip: Ipv4Addr, now_us: i64) -> bool {
        match self.requested.get(&ip) {
            Some(&t) if now_us - t < REQUEST_EVERY_US => false,
            _ => {
                if self.requested.len() >= MAX_ENTRIES {
                    self.requested.clear();
                }
                self.requested.insert(ip, now_us);
                true
            }
        }
    }

    /// Learns the sender of an ARP frame (request or reply). Returns the sender's address.
    pub fn learn_arp(&mut self, frame: &[u8], now_us: i64) -> Option<Ipv4Addr> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let arp = ArpPacket::new_checked(eth.payload()).ok()?;
        match ArpRepr::parse(&arp).ok()? {
            ArpRepr::EthernetIpv4 {
                source_hardware_addr,
                source_protocol_addr,
                ..
            } => {
                self.learn(source_protocol_addr, source_hardware_addr, now_us);
                Some(source_protocol_addr)
            }
            _ => None,
        }
    }
}

/// Writes an ARP request for `target` into `buf` (at least 42 bytes); returns the frame length.
pub(crate) fn arp_request(
    buf: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let len = 14 + repr.buffer_len();
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..len]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(our_mac);
    eth.set_ethertype(EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_from_its_own_request_format() {
        let mut buf = [0u8; 64];
        let mac = EthernetAddress([2, 0, 0, 0, 0, 9]);
        let ip = Ipv4Addr::new(198, 18, 0, 9);
        let n = arp_request(&mut buf, mac, ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(n, 42);
        let mut t = Neighbours::default();
        assert_eq!(t.learn_arp(&buf[..n], 0), Some(ip));
        assert_eq!(t.lookup(ip, 1), Some(mac));
        assert_eq!(t.lookup(ip, ENTRY_LIFETIME_US + 1), None);
        assert!(t.should_request(ip, 0));
        assert!(!t.should_request(ip, 10));
        assert!(t.should_request(ip, REQUEST_EVERY_US));
    }
}
