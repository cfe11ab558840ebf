//! Receive-side scaling: the Toeplitz hash NICs use to spread flows over queues, and the inverse
//! question an outgoing connection asks: which local port brings the replies back to my queue?
//!
//! A NIC hashes an incoming IPv4 TCP/UDP packet over (source address, destination address, source
//! port, destination port), all in network byte order, looks the low bits of the hash up in its
//! redirection table (RETA) and delivers the packet to that queue. longhaul programs the RETA
//! round-robin (entry `i` → queue `i % queues`), so the queue of a flow follows from the key, the
//! RETA size and the queue count alone: [`RssConfig`] carries exactly those three and is `Copy`, so
//! it travels in [`crate::pmd::Caps`].
//!
//! Plain Rust, not tied to any backend: the hash is tested against Microsoft's RSS verification
//! vectors, the same ones NIC vendors test against.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// The longest RSS key a NIC uses (52 bytes on Intel 700-series; 40 on most others).
pub const MAX_KEY_LEN: usize = 52;

/// Microsoft's default 40-byte RSS key, the one most NICs ship with and the verification vectors use.
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The Toeplitz hash of `input` under `key`: for every set bit of the input (most significant bit
/// first) the 32-bit window of the key starting at that bit position is XORed into the result.
/// Key bits past the end of `key` count as zero.
pub fn toeplitz_hash(key: &[u8], input: &[u8]) -> u32 {
    let key_byte = |i: usize| key.get(i).copied().unwrap_or(0) as u64;
    let mut result = 0u32;
    for (i, &byte) in input.iter().enumerate() {
        // Key bits [8i, 8i + 40) hold every 32-bit window this byte's 8 bits start.
        let mut window = 0u64;
        for k in 0..5 {
            window = (window << 8) | key_byte(i + k);
        }
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= (window >> (8 - bit)) as u32;
            }
        }
    }
    result
}

/// The 12 bytes a NIC hashes for an IPv4 TCP/UDP packet.
fn tuple_bytes(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&src.octets());
    b[4..8].copy_from_slice(&dst.octets());
    b[8..10].copy_from_slice(&src_port.to_be_bytes());
    b[10..12].copy_from_slice(&dst_port.to_be_bytes());
    b
}

/// The RSS hash of an IPv4 TCP/UDP packet from `src:src_port` to `dst:dst_port`.
pub fn tuple_hash(key: &[u8], src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> u32 {
    toeplitz_hash(key, &tuple_bytes(src, dst, src_port, dst_port))
}

/// The queue a hash lands on with a round-robin RETA of `reta_size` entries over `queues` queues.
/// With `reta_size` 0 (no table) the hash is taken modulo the queue count.
fn queue_of_hash(hash: u32, reta_size: usize, queues: usize) -> usize {
    let queues = queues.max(1);
    if reta_size == 0 {
        return hash as usize % queues;
    }
    (hash as usize % reta_size) % queues
}

/// The queue an incoming IPv4 TCP/UDP packet from `src:src_port` to `dst:dst_port` lands on, for a
/// port with RSS key `key` and a round-robin RETA of `reta_size` entries over `queues` queues.
pub fn rss_queue(
    key: &[u8],
    reta_size: usize,
    queues: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
) -> usize {
    queue_of_hash(
        tuple_hash(key, src, dst, src_port, dst_port),
        reta_size,
        queues,
    )
}

/// A local port in `range` for a connection from `local` to `remote:remote_port` whose replies
/// (source `remote:remote_port`, destination `local:port`) land on queue `queue`, or `None` when no
/// port in the range does. The search starts at `start` (clamped into the range; pass a random
/// value so that connections do not all probe the same ports) and wraps around.
///
/// The hash is linear in its input bits, so the fixed part of the tuple is hashed once and each
/// candidate costs only the 16 bits of its port.
#[allow(clippy::too_many_arguments)]
pub fn pick_local_port(
    key: &[u8],
    reta_size: usize,
    queues: usize,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    remote_port: u16,
    range: RangeInclusive<u16>,
    queue: usize,
    start: u16,
) -> Option<u16> {
    let (lo, hi) = (*range.start(), *range.end());
    if lo > hi || queue >= queues.max(1) {
        return None;
    }
    let fixed = tuple_hash(key, remote, local, remote_port, 0);
    let span = (hi - lo) as u32 + 1;
    let first = (start.clamp(lo, hi) - lo) as u32;
    (0..span)
        .map(|i| lo + ((first + i) % span) as u16)
        .find(|&port| {
            let mut port_only = [0u8; 12];
            port_only[10..12].copy_from_slice(&port.to_be_bytes());
            let hash = fixed ^ toeplitz_hash(key, &port_only);
            queue_of_hash(hash, reta_size, queues) == queue
        })
}

/// How a port spreads incoming flows: its RSS key, the size of its (round-robin) redirection table
/// and the number of queues. `Copy`, so it rides in [`crate::pmd::Caps`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RssConfig {
    key: [u8; MAX_KEY_LEN],
    key_len: u8,
    reta_size: u16,
    queues: u16,
}

impl RssConfig {
    /// `None` when the key is empty or longer than [`MAX_KEY_LEN`], or there are no queues.
    pub fn new(key: &[u8], reta_size: u16, queues: u16) -> Option<RssConfig> {
        if key.is_empty() || key.len() > MAX_KEY_LEN || queues == 0 {
            return None;
        }
        let mut k = [0u8; MAX_KEY_LEN];
        k[..key.len()].copy_from_slice(key);
        Some(RssConfig {
            key: k,
            key_len: key.len() as u8,
            reta_size,
            queues,
        })
    }

    /// The RSS key.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len as usize]
    }

    /// Entries in the redirection table (0: none, the hash is taken modulo the queue count).
    pub fn reta_size(&self) -> usize {
        self.reta_size as usize
    }

    /// Queues the table spreads over.
    pub fn queues(&self) -> usize {
        self.queues as usize
    }

    /// The queue an incoming packet from `src:src_port` to `dst:dst_port` lands on.
    pub fn queue_for(&self, src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> usize {
        rss_queue(
            self.key(),
            self.reta_size(),
            self.queues(),
            src,
            dst,
            src_port,
            dst_port,
        )
    }

    /// A local port in `range` whose replies from `remote:remote_port` land on `queue`; see
    /// [`pick_local_port`].
    pub fn pick_local_port(
        &self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        remote_port: u16,
        range: RangeInclusive<u16>,
        queue: usize,
        start: u16,
    ) -> Option<u16> {
        pick_local_port(
            self.key(),
            self.reta_size(),
            self.queues(),
            local,
            remote,
            remote_port,
            range,
            queue,
            start,
        )
    }
}

impl std::fmt::Debug for RssConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RssConfig {{ key: {} bytes, reta_size: {}, queues: {} }}",
            self.key_len, self.reta_size, self.queues
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's "Verifying the RSS hash calculation" vectors for IPv4: (destination, source,
    /// hash over the addresses only, hash over addresses and TCP ports). The input order is
    /// source address, destination address, source port, destination port.
    type Endpoint = (Ipv4Addr, u16);
    const VECTORS: [(Endpoint, Endpoint, u32, u32); 5] = [
        (
            (Ipv4Addr::new(161, 142, 100, 80), 1766),
            (Ipv4Addr::new(66, 9, 149, 187), 2794),
            0x323e_8fc2,
            0x51cc_c178,
        ),
        (
            (Ipv4Addr::new(65, 69, 140, 83), 4739),
            (Ipv4Addr::new(199, 92, 111, 2), 14230),
            0xd718_262a,
            0xc626_b0ea,
        ),
        (
            (Ipv4Addr::new(12, 22, 207, 184), 38024),
            (Ipv4Addr::new(24, 19, 198, 95), 12898),
            0xd2d0_a5de,
            0x5c2b_394a,
        ),
        (
            (Ipv4Addr::new(209, 142, 163, 6), 2217),
            (Ipv4Addr::new(38, 27, 205, 30), 48228),
            0x8298_9176,
            0xafc7_327f,
        ),
        (
            (Ipv4Addr::new(202, 188, 127, 2), 1303),
            (Ipv4Addr::new(153, 39, 163, 191), 44251),
            0x5d18_09c5,
            0x10e8_28a2,
        ),
    ];

    #[test]
    fn microsoft_ipv4_vectors() {
        for ((dst, dport), (src, sport), ip_only, with_ports) in VECTORS {
            let mut addrs = [0u8; 8];
            addrs[..4].copy_from_slice(&src.octets());
            addrs[4..].copy_from_slice(&dst.octets());
            assert_eq!(
                toeplitz_hash(&DEFAULT_KEY, &addrs),
                ip_only,
                "{src} -> {dst}"
            );
            assert_eq!(
                tuple_hash(&DEFAULT_KEY, src, dst, sport, dport),
                with_ports,
                "{src}:{sport} -> {dst}:{dport}"
            );
        }
    }

    #[test]
    fn short_key_counts_missing_bits_as_zero() {
        // A 4-byte key: only the first input bit's window is the whole key; later ones run off it.
        let key = [0x80, 0, 0, 1];
        assert_eq!(toeplitz_hash(&key, &[0x80]), 0x8000_0001);
        assert_eq!(toeplitz_hash(&key, &[0x40]), 0x0000_0002);
        assert_eq!(toeplitz_hash(&[], &[0xff; 12]), 0);
    }

    #[test]
    fn queue_follows_round_robin_reta() {
        let (src, dst) = (
            Ipv4Addr::new(66, 9, 149, 187),
            Ipv4Addr::new(161, 142, 100, 80),
        );
        // 0x51ccc178 % 128 = 0x78 = 120; 120 % 4 = 0, 120 % 3 = 0, 120 % 7 = 1.
        assert_eq!(rss_queue(&DEFAULT_KEY, 128, 4, src, dst, 2794, 1766), 0);
        assert_eq!(rss_queue(&DEFAULT_KEY, 128, 7, src, dst, 2794, 1766), 1);
        // Without a table: 0x51ccc178 % 5 = 1372373368 % 5 = 3.
        assert_eq!(rss_queue(&DEFAULT_KEY, 0, 5, src, dst, 2794, 1766), 3);
    }

    #[test]
    fn picked_port_lands_on_the_wanted_queue() {
        let local = Ipv4Addr::new(198, 18, 0, 2);
        let remote = Ipv4Addr::new(198, 18, 0, 1);
        for queues in [1usize, 2, 3, 4, 8] {
            let rss = RssConfig::new(&DEFAULT_KEY, 128, queues as u16).unwrap();
            for queue in 0..queues {
                for start in [0u16, 40_000, 65_535] {
                    let port = rss
                        .pick_local_port(local, remote, 5201, 32_768..=60_999, queue, start)
                        .expect("some port in 28k lands on every queue");
                    assert!((32_768..=60_999).contains(&port));
                    // The replies come from the remote end to the picked local port.
                    assert_eq!(rss.queue_for(remote, local, 5201, port), queue);
                }
            }
        }
    }

    #[test]
    fn pick_searches_from_start_and_wraps() {
        let local = Ipv4Addr::new(198, 18, 0, 2);
        let remote = Ipv4Addr::new(198, 18, 0, 1);
        let rss = RssConfig::new(&DEFAULT_KEY, 128, 2).unwrap();
        let start = 50_000;
        let port = rss
            .pick_local_port(local, remote, 80, 49_990..=50_010, 1, start)
            .unwrap();
        // The first match at or after `start`, wrapping to the range's start.
        let expect = (50_000..=50_010)
            .chain(49_990..50_000)
            .find(|&p| rss.queue_for(remote, local, 80, p) == 1)
            .unwrap();
        assert_eq!(port, expect);
        // Impossible requests.
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 10..=5;
        assert_eq!(
            rss.pick_local_port(local, remote, 80, empty, 0, 0),
            None,
            "empty range"
        );
        assert_eq!(
            rss.pick_local_port(local, remote, 80, 1..=100, 2, 0),
            None,
            "no such queue"
        );
    }

    #[test]
    fn config_rejects_bad_keys_and_is_copy() {
        assert!(RssConfig::new(&[], 128, 2).is_none());
        assert!(RssConfig::new(&[0; 53], 128, 2).is_none());
        assert!(RssConfig::new(&DEFAULT_KEY, 128, 0).is_none());
        let a = RssConfig::new(&DEFAULT_KEY, 512, 4).unwrap();
        let b = a;
        assert_eq!(a, b);
        assert_eq!(b.key(), &DEFAULT_KEY[..]);
        assert_eq!((b.reta_size(), b.queues()), (512, 4));
    }
}
