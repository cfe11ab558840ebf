//! Bad input is counted and dropped, never a panic: property tests on the classifier and a running
//! stack fed malformed frames through a raw `mem` end.

mod support;

use longhaul::pmd::mem::{self, MemConfig, MemQueue};
use longhaul::pmd::{Frame, Queue};
use longhaul::stack::fuzz;
use longhaul::Stack;
use proptest::prelude::*;
use smoltcp::wire::*;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// A valid Ethernet/IPv4/TCP SYN from 198.18.0.9:40000 to the stack's port 7, with options.
fn syn_frame(seq: u32) -> Vec<u8> {
    syn_from(Ipv4Address::new(198, 18, 0, 9), 40000, seq)
}

fn syn_from(src: Ipv4Address, src_port: u16, seq: u32) -> Vec<u8> {
    support::syn_frame(
        PEER_MAC,
        SERVER_MAC,
        src.octets(),
        [198, 18, 0, 1],
        src_port,
        7,
        seq,
    )
}

fn arp_request() -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(PEER_MAC),
        source_protocol_addr: Ipv4Address::new(198, 18, 0, 9),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Address::new(198, 18, 0, 1),
    };
    let mut buf = vec![0u8; 14 + arp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf);
    EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut f);
    arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    buf
}

fn send(q: &mut MemQueue, bytes: &[u8]) {
    let mut f = q.alloc_tx().expect("pool has frames");
    let n = bytes.len().min(f.capacity());
    f.set_len(n);
    f.data_mut().copy_from_slice(&bytes[..n]);
    let mut v = vec![f];
    while q.tx_burst(&mut v) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives frames on the raw end for up to `limit`, returning those `keep` accepts.
fn collect(q: &mut MemQueue, limit: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rx = Vec::with_capacity(64);
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        q.rx_burst(&mut rx, 64);
        for f in rx.drain(..) {
            if keep(f.data()) {
                out.push(f.data().to_vec());
            }
            q.free(f);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

fn start_server() -> (Stack, MemQueue) {
    let (a, b) = mem::wire(MemConfig::default());
    let closed = Arc::new(AtomicU64::new(0));
    let s = Stack::start_on(config(SERVER_IP, SERVER_MAC), vec![a], move |_| {
        Echo::new(7, closed.clone())
    })
    .unwrap();
    (s, b)
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let (stack, mut raw) = start_server();
    let good = syn_frame(1000);

    // Truncated at every length inside the headers.
    for len in 0..54 {
        send(&mut raw, &good[..len]);
    }
    // IPv4 header checksum wrong.
    let mut bad_ip = good.clone();
    bad_ip[24] ^= 0xff;
    send(&mut raw, &bad_ip);
    // TCP checksum wrong.
    let mut bad_tcp = good.clone();
    bad_tcp[50] ^= 0x55;
    send(&mut raw, &bad_tcp);
    // IPv4 total length larger than the frame.
    let mut long = good.clone();
    long[16] = 0x40;
    send(&mut raw, &long);
    // Random bytes addressed to the stack.
    let mut x: u64 = 0x1234_5678;
    for _ in 0..2000 {
        let mut f = vec![0u8; 60 + (x % 1400) as usize];
        for b in f.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f[..6].copy_from_slice(&SERVER_MAC);
        if x.is_multiple_of(2) {
            f[12] = 0x08;
            f[13] = 0x00;
            f[14] = 0x45;
        }
        send(&mut raw, &f);
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = stack.stats_now()[0];
    assert!(s.drop_malformed >= 54, "{s:?}");
    assert!(s.drop_bad_checksum >= 2, "{s:?}");
    assert!(stack.is_running(), "the core survived");

    // Still alive: ARP is answered and a valid SYN gets a SYN-ACK.
    send(&mut raw, &arp_request());
    send(&mut raw, &good);
    let replies = collect(&mut raw, Duration::from_millis(500), |f| f.len() > 13);
    let arp_reply = replies
        .iter()
        .any(|f| f[12..14] == [0x08, 0x06] && f[21] == 2);
    let syn_ack = replies.iter().any(|f| {
        f[12..14] == [0x08, 0x00] && f.len() >= 54 && f[47] & 0x12 == 0x12 // SYN|ACK flags
    });
    assert!(arp_reply, "ARP reply after the garbage");
    assert!(syn_ack, "SYN-ACK after the garbage");
}

#[test]
fn truncated_options_are_malformed() {
    let (stack, mut raw) = start_server();
    let mut f = syn_frame(5);
    // The first option is the MSS; make it claim 40 bytes (past the header's end) and fix the
    // checksum, so only the option walk can reject it.
    f[54] = 2;
    f[55] = 40;
    {
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    }
    assert_eq!(fuzz::classify(&f), "drop");
    send(&mut raw, &f);
    std::thread::sleep(Duration::from_millis(200));
    let s = stack.stats_now()[0];
    assert_eq!(s.drop_malformed, 1, "{s:?}");
    assert_eq!(s.drop_bad_checksum, 0, "{s:?}");
}

#[test]
fn syn_flood_state_is_bounded_by_the_backlog() {
    let (stack, mut raw) = start_server();
    // 5,000 SYNs from spoofed sources that never complete the handshake.
    for i in 0..5000u32 {
        let src = Ipv4Address::new(198, 18, 0, 10 + (i % 200) as u8);
        send(&mut raw, &syn_from(src, 1024 + (i / 200) as u16, i));
        if i % 256 == 0 {
            // Drain what the stack answers (SYN-ACKs, ARP requests) so its ring never fills.
            collect(&mut raw, Duration::from_millis(1), |_| false);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = stack.stats_now()[0];
    assert_eq!(
        s.conns_current, 128,
        "half-open connections held at the backlog: {s:?}"
    );
    // Past the backlog, SYNs are answered statelessly with SYN cookies (no state kept).
    assert_eq!(s.syncookies_sent, 5000 - 128, "{s:?}");
    assert_eq!(s.drop_syn_backlog, 0, "{s:?}");
    assert!(stack.is_running());
    // Drain the cookie SYN-ACKs first so the wire has room for the ARP reply.
    collect(&mut raw, Duration::from_millis(100), |_| false);
    send(&mut raw, &arp_request());
    let replies = collect(&mut raw, Duration::from_millis(300), |f| {
        f.len() > 21 && f[12..14] == [0x08, 0x06]
    });
    assert!(
        replies.iter().any(|f| f[21] == 2),
        "ARP still answered during the flood"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn classifier_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = fuzz::classify(&bytes);
    }

    #[test]
    fn classifier_never_panics_on_mutated_syn(idx in 0usize..74, val in any::<u8>(), cut in 0usize..80) {
        let mut f = syn_frame(77);
        let i = idx % f.len();
        f[i] = val;
        f.truncate(cut.max(1).min(f.len()));
        let _ = fuzz::classify(&f);
    }
}

#[test]
fn a_good_syn_classifies_as_tcp() {
    // Guards the fixtures above: the unmodified SYN passes every check.
    assert_eq!(fuzz::classify(&syn_frame(1)), "tcp");
    assert_eq!(fuzz::classify(&arp_request()), "arp");
}
