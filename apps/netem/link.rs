//! The sans-IO core of one direction of the emulated link.
//!
//! A [`Link`] takes frames with [`Link::handle_frame`] at a time `now` and hands them back, impaired,
//! through [`Link::peek_due`]/[`Link::pop_due`] once their departure time has come;
//! [`Link::poll_timeout`] says when the next one is due. Time is a parameter (nanoseconds on any
//! monotonic clock); only the caller reads a clock, so tests drive a link in virtual time.
//!
//! Call order: times passed in never go backwards. Every call does bounded work: `handle_frame`
//! copies one frame (twice when it is duplicated), `pop_due` frees one.
//!
//! What happens to a frame, in order:
//! 1. MTU black hole: a frame whose IP packet (the Ethernet payload) is larger than the limit is
//!    dropped.
//! 2. Random loss, then Gilbert-Elliott loss (a two-state Markov chain stepped once per frame).
//! 3. Duplication: the frame goes through the rest twice.
//! 4. Bottleneck: a serialisation clock at `rate` with a drop-tail queue in bytes; a frame that
//!    would push the backlog (bytes not yet serialised) over the limit is dropped. An empty queue
//!    always takes a frame.
//! 5. The frame is copied into the link's own byte pool (dropped when the pool is full), and leaves
//!    `delay ± jitter` after its serialisation ends. Departure times never decrease, so jitter
//!    alone never reorders.
//! 6. Reordering: a chosen frame swaps places with the frame queued just before it (if that one
//!    has not left yet), so it overtakes it.

use std::collections::VecDeque;
use std::time::Duration;

/// Nanoseconds on the caller's monotonic clock.
pub type Nanos = u64;

/// Ethernet header bytes in front of the IP packet.
const ETH_HEADER: usize = 14;

/// Gilbert-Elliott burst loss: a Good and a Bad state, stepped once per frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeLoss {
    /// Probability of moving from Good to Bad.
    pub p: f64,
    /// Probability of moving from Bad to Good.
    pub r: f64,
    /// Probability that a frame gets through in the Bad state (1 - h is the loss there).
    pub h: f64,
    /// Probability that a frame gets through in the Good state (1 - k is the loss there).
    pub k: f64,
}

impl GeLoss {
    /// The long-run fraction of frames lost.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return 1.0 - self.k;
        }
        let bad = self.p / (self.p + self.r);
        bad * (1.0 - self.h) + (1.0 - bad) * (1.0 - self.k)
    }
}

/// Size of the bottleneck queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QueueLimit {
    /// This many bytes.
    Bytes(u64),
    /// This many bandwidth-delay products: rate × configured RTT (twice the one-way delay).
    Bdp(f64),
}

/// One direction's impairments.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way delay added to every frame.
    pub delay: Duration,
    /// Uniform jitter: each frame's delay is `delay ± jitter` (never below zero).
    pub jitter: Duration,
    /// Probability in [0, 1] that a frame is dropped at random.
    pub loss: f64,
    /// Burst loss, if any.
    pub ge_loss: Option<GeLoss>,
    /// Bottleneck rate in bits per second of Ethernet frame bytes (header included, no FCS,
    /// preamble or gap); `None` is no bottleneck.
    pub rate_bps: Option<u64>,
    /// Bottleneck queue (used only with a rate).
    pub queue: QueueLimit,
    /// Probability in [0, 1] that a frame overtakes the one before it.
    pub reorder: f64,
    /// Probability in [0, 1] that a frame is sent twice.
    pub duplicate: f64,
    /// Drop frames whose IP packet is larger than this many bytes.
    pub mtu_blackhole: Option<usize>,
    /// Seed of this direction's random generator.
    pub seed: u64,
    /// Bytes of frame storage; `None` sizes it from the configuration ([`LinkConfig::pool_bytes`]).
    pub pool: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            ge_loss: None,
            rate_bps: None,
            queue: QueueLimit::Bdp(1.0),
            reorder: 0.0,
            duplicate: 0.0,
            mtu_blackhole: None,
            seed: 1,
            pool: None,
        }
    }
}

/// Rate assumed when sizing the pool of a link without a bottleneck: above what a TAP forwards.
const UNLIMITED_POOL_RATE_BPS: u64 = 4_000_000_000;
/// The smallest pool: room for bursts at low rates and short delays.
const MIN_POOL_BYTES: u64 = 1 << 20;

impl LinkConfig {
    /// The drop-tail limit in bytes, or `None` without a bottleneck. Never less than one frame of
    /// `max_frame` bytes.
    pub fn queue_bytes(&self, max_frame: usize) -> Option<u64> {
        let rate = self.rate_bps?;
        let bytes = match self.queue {
            QueueLimit::Bytes(b) => b,
            QueueLimit::Bdp(m) => (rate as f64 / 8.0 * 2.0 * self.delay.as_secs_f64() * m) as u64,
        };
        Some(bytes.max(max_frame as u64))
    }

    /// Bytes of frame storage: what is in flight at the bottleneck rate for `delay + jitter` plus
    /// a full queue, twice over (duplicates, slot waste at the ring's end), at least 1 MiB. Without
    /// a rate, what 4 Gbit/s keeps in flight. `pool` overrides it.
    pub fn pool_bytes(&self, max_frame: usize) -> u64 {
        if let Some(p) = self.pool {
            return p.max(max_frame as u64);
        }
        let hold = (self.delay + self.jitter).as_secs_f64();
        let rate = self.rate_bps.unwrap_or(UNLIMITED_POOL_RATE_BPS) as f64;
        let in_flight = (rate / 8.0 * hold) as u64;
        let queue = self.queue_bytes(max_frame).unwrap_or(0);
        (2 * (in_flight + queue)).max(MIN_POOL_BYTES)
    }
}

/// Counters of one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames handed to the link.
    pub received: u64,
    /// Frames that left the link (duplicates included).
    pub passed: u64,
    /// Bytes of the frames that left.
    pub bytes_passed: u64,
    /// Dropped by random loss.
    pub drop_loss: u64,
    /// Dropped by Gilbert-Elliott loss.
    pub drop_ge: u64,
    /// Dropped by the full bottleneck queue.
    pub drop_queue: u64,
    /// Dropped by the MTU black hole.
    pub drop_blackhole: u64,
    /// Dropped because the frame pool was full.
    pub drop_pool: u64,
    /// Dropped by the caller because the frame did not fit the egress port (see [`Link::drop_due`]).
    pub drop_oversize: u64,
    /// Frames sent twice.
    pub duplicated: u64,
    /// Frames that overtook the frame before them.
    pub reordered: u64,
    /// The largest bottleneck backlog seen, in bytes.
    pub queue_max_bytes: u64,
}

/// SplitMix64: a small, seedable generator (reproducible runs; not for secrets).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (false for p ≤ 0 without drawing).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }
}

/// A byte ring holding frames back to back. Frames are usually freed in the order they were
/// stored; one freed early (reordering) is marked and its space is reclaimed when everything
/// stored before it is freed too.
struct Ring {
    buf: Box<[u8]>,
    head: usize,
    allocs: VecDeque<Alloc>,
    max_allocs: usize,
    first_seq: u64,
}

#[derive(Clone, Copy)]
struct Alloc {
    start: usize,
    freed: bool,
}

impl Ring {
    fn new(bytes: usize, max_allocs: usize) -> Ring {
        Ring {
            buf: vec![0u8; bytes].into_boxed_slice(),
            head: 0,
            allocs: VecDeque::with_capacity(max_allocs),
            max_allocs,
            first_seq: 0,
        }
    }

    /// Stores `data`; returns its sequence number and offset, or `None` when there is no room.
    fn store(&mut self, data: &[u8]) -> Option<(u64, usize)> {
        let len = data.len();
        if self.allocs.len() == self.max_allocs {
            return None;
        }
        let start = match self.allocs.front() {
            None => {
                self.head = 0;
                (len <= self.buf.len()).then_some(0)?
            }
            Some(front) => {
                let tail = front.start;
                if self.head > tail {
                    if self.buf.len() - self.head >= len {
                        self.head
                    } else if len <= tail {
                        0
                    } else {
                        return None;
                    }
                } else if self.head + len <= tail {
                    self.head
                } else {
                    return None;
                }
            }
        };
        let end = start + len;
        self.buf[start..end].copy_from_slice(data);
        self.head = end;
        let seq = self.first_seq + self.allocs.len() as u64;
        self.allocs.push_back(Alloc {
            start,
            freed: false,
        });
        Some((seq, start))
    }

    fn get(&self, off: usize, len: usize) -> &[u8] {
        &self.buf[off..off + len]
    }

    fn free(&mut self, seq: u64) {
        let idx = (seq - self.first_seq) as usize;
        debug_assert!(!self.allocs[idx].freed, "frame freed twice");
        self.allocs[idx].freed = true;
        while self.allocs.front().is_some_and(|a| a.freed) {
            self.allocs.pop_front();
            self.first_seq += 1;
        }
    }
}

/// A frame waiting for its departure time.
#[derive(Clone, Copy, Debug)]
struct Pending {
    depart: Nanos,
    seq: u64,
    off: usize,
    len: usize,
}

/// One direction of the emulated link (see the module documentation).
pub struct Link {
    cfg: LinkConfig,
    queue_limit: Option<u64>,
    rng: Rng,
    ge_bad: bool,
    /// When the bottleneck finishes serialising what it holds.
    busy_until: Nanos,
    last_depart: Nanos,
    pending: VecDeque<Pending>,
    ring: Ring,
    stats: LinkStats,
}

/// Smallest frame the pool accounts for when bounding the number of frames it holds.
const MIN_FRAME: u64 = 60;

impl Link {
    /// A link with `cfg`'s impairments for frames of at most `max_frame` bytes (larger ones are
    /// dropped as pool overflow). Allocates the whole pool here.
    pub fn new(cfg: &LinkConfig, max_frame: usize) -> Link {
        let pool = cfg.pool_bytes(max_frame);
        let max_frames = (pool / MIN_FRAME + 1) as usize;
        Link {
            queue_limit: cfg.queue_bytes(max_frame),
            rng: Rng::new(cfg.seed),
            ge_bad: false,
            busy_until: 0,
            last_depart: 0,
            pending: VecDeque::with_capacity(max_frames),
            ring: Ring::new(pool as usize, max_frames),
            stats: LinkStats::default(),
            cfg: cfg.clone(),
        }
    }

    /// The configuration this link runs.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// The drop-tail limit in bytes (`None` without a bottleneck).
    pub fn queue_limit(&self) -> Option<u64> {
        self.queue_limit
    }

    /// Bytes of frame storage.
    pub fn pool_bytes(&self) -> usize {
        self.ring.buf.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Frames held (waiting for departure).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Takes a frame that arrived at `now`.
    pub fn handle_frame(&mut self, now: Nanos, frame: &[u8]) {
        self.stats.received += 1;
        if let Some(mtu) = self.cfg.mtu_blackhole {
            if frame.len().saturating_sub(ETH_HEADER) > mtu {
                self.stats.drop_blackhole += 1;
                return;
            }
        }
        if self.rng.chance(self.cfg.loss) {
            self.stats.drop_loss += 1;
            return;
        }
        if let Some(ge) = self.cfg.ge_loss {
            let pass = if self.ge_bad { ge.h } else { ge.k };
            let lost = pass < 1.0 && !self.rng.chance(pass);
            self.ge_bad = if self.ge_bad {
                !self.rng.chance(ge.r)
            } else {
                self.rng.chance(ge.p)
            };
            if lost {
                self.stats.drop_ge += 1;
                return;
            }
        }
        let twice = self.rng.chance(self.cfg.duplicate);
        if self.enqueue(now, frame, true) && twice && self.enqueue(now, frame, false) {
            self.stats.duplicated += 1;
        }
    }

    /// Bytes at the bottleneck not yet serialised at `now`.
    pub fn backlog_bytes(&self, now: Nanos) -> u64 {
        match self.cfg.rate_bps {
            Some(rate) => {
                let ns = self.busy_until.saturating_sub(now) as u128;
                (ns * rate as u128).div_ceil(8_000_000_000) as u64
            }
            None => 0,
        }
    }

    fn enqueue(&mut self, now: Nanos, frame: &[u8], may_reorder: bool) -> bool {
        let len = frame.len() as u64;
        let mut sent_at = now;
        let mut serialise = None;
        if let (Some(rate), Some(limit)) = (self.cfg.rate_bps, self.queue_limit) {
            let backlog = self.backlog_bytes(now);
            if backlog > 0 && backlog + len > limit {
                self.stats.drop_queue += 1;
                return false;
            }
            let start = self.busy_until.max(now);
            let ns = (len as u128 * 8_000_000_000).div_ceil(rate as u128) as u64;
            serialise = Some((start + ns, backlog + len));
        }
        let Some((seq, off)) = self.ring.store(frame) else {
            self.stats.drop_pool += 1;
            return false;
        };
        if let Some((done, backlog)) = serialise {
            self.busy_until = done;
            sent_at = done;
            self.stats.queue_max_bytes = self.stats.queue_max_bytes.max(backlog);
        }
        let mut delay = self.cfg.delay.as_nanos() as i64;
        let jitter = self.cfg.jitter.as_nanos() as i64;
        if jitter > 0 {
            delay += ((self.rng.next_f64() * 2.0 - 1.0) * jitter as f64) as i64;
        }
        let depart = (sent_at + delay.max(0) as u64).max(self.last_depart);
        self.last_depart = depart;
        let mut p = Pending {
            depart,
            seq,
            off,
            len: frame.len(),
        };
        if may_reorder && !self.pending.is_empty() && self.rng.chance(self.cfg.reorder) {
            let mut before = self.pending.pop_back().expect("not empty");
            std::mem::swap(&mut before.depart, &mut p.depart);
            self.pending.push_back(p);
            self.pending.push_back(before);
            self.stats.reordered += 1;
        } else {
            self.pending.push_back(p);
        }
        true
    }

    /// When the next frame is due, if any is held.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.pending.front().map(|p| p.depart)
    }

    /// The next frame if it is due at `now`. It stays held until [`Link::pop_due`].
    pub fn peek_due(&self, now: Nanos) -> Option<&[u8]> {
        let p = self.pending.front().filter(|p| p.depart <= now)?;
        Some(self.ring.get(p.off, p.len))
    }

    /// Releases the frame [`Link::peek_due`] returned, counting it as passed.
    pub fn pop_due(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.ring.free(p.seq);
            self.stats.passed += 1;
            self.stats.bytes_passed += p.len as u64;
        }
    }

    /// Releases the frame [`Link::peek_due`] returned without sending it (it does not fit the
    /// egress port), counting it as oversize.
    pub fn drop_due(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.ring.free(p.seq);
            self.stats.drop_oversize += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const US: Nanos = 1_000;

    /// A frame of `len` bytes whose payload starts with `id`.
    fn frame(id: u32, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[14..18].copy_from_slice(&id.to_be_bytes());
        f
    }

    fn id_of(f: &[u8]) -> u32 {
        u32::from_be_bytes(f[14..18].try_into().unwrap())
    }

    /// Runs the link until it is empty; returns (departure, id, len) in departure order.
    fn drain(link: &mut Link) -> Vec<(Nanos, u32, usize)> {
        let mut out = Vec::new();
        while let Some(t) = link.poll_timeout() {
            assert!(link.peek_due(t - 1).is_none() || t == 0, "due early");
            let f = link.peek_due(t).expect("due at its timeout");
            out.push((t, id_of(f), f.len()));
            link.pop_due();
        }
        out
    }

    #[test]
    fn delay_only_is_exact_and_in_order() {
        let cfg = LinkConfig {
            delay: Duration::from_millis(125),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        for i in 0..100u32 {
            link.handle_frame(i as u64 * 10 * US, &frame(i, 100));
        }
        let out = drain(&mut link);
        assert_eq!(out.len(), 100);
        for (i, &(t, id, _)) in out.iter().enumerate() {
            assert_eq!(id, i as u32);
            assert_eq!(t, i as u64 * 10 * US + 125 * MS);
        }
        assert_eq!(link.stats().passed, 100);
        assert_eq!(link.stats().bytes_passed, 10_000);
    }

    #[test]
    fn rate_spaces_frames_by_serialisation_time() {
        // 1500 bytes at 12 Mbit/s take exactly 1 ms.
        let cfg = LinkConfig {
            delay: Duration::from_millis(10),
            rate_bps: Some(12_000_000),
            queue: QueueLimit::Bytes(1_000_000),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        for i in 0..50u32 {
            link.handle_frame(0, &frame(i, 1500));
        }
        assert_eq!(link.stats().queue_max_bytes, 75_000);
        let out = drain(&mut link);
        for (i, &(t, id, _)) in out.iter().enumerate() {
            assert_eq!(id, i as u32);
            assert_eq!(t, (i as u64 + 1) * MS + 10 * MS);
        }
    }

    #[test]
    fn rate_holds_over_a_long_overload() {
        // Offer twice the rate for 10 s of virtual time; what leaves is the rate, never above it.
        let rate = 50_000_000u64;
        let cfg = LinkConfig {
            delay: Duration::from_millis(25),
            rate_bps: Some(rate),
            queue: QueueLimit::Bdp(1.0),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        let gap = 1514 * 8 * 1_000_000_000 / (2 * rate); // ns between arrivals at 2× rate
        let mut now = 0;
        let mut sent_bytes_by_window = [0u64; 11];
        let mut i = 0u32;
        while now < 10_000 * MS {
            link.handle_frame(now, &frame(i, 1514));
            i += 1;
            now += gap;
            while let Some(f) = link.peek_due(now) {
                sent_bytes_by_window[(now / (1000 * MS)) as usize] += f.len() as u64;
                link.pop_due();
            }
        }
        // Windows 1..9 are full seconds in steady state: each carries the rate within one frame.
        for w in &sent_bytes_by_window[1..10] {
            let bits = w * 8;
            assert!(bits <= rate + 1514 * 8, "{bits} bit/s above {rate}");
            assert!(bits >= rate - 2 * 1514 * 8, "{bits} bit/s below {rate}");
        }
        let s = link.stats();
        assert!(s.drop_queue > 0);
        // Half of what was offered is dropped (minus the queue's worth).
        let bdp = rate / 8 * 50 / 1000;
        assert!(s.queue_max_bytes <= bdp && s.queue_max_bytes > bdp - 1514);
    }

    #[test]
    fn drop_tail_counts_exactly() {
        let cfg = LinkConfig {
            rate_bps: Some(8_000_000),
            queue: QueueLimit::Bytes(10_000),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        for i in 0..20u32 {
            link.handle_frame(0, &frame(i, 1000));
        }
        // 10 frames fit in 10,000 bytes; the other 10 are dropped.
        assert_eq!(link.stats().drop_queue, 10);
        assert_eq!(drain(&mut link).len(), 10);
        // An empty queue always takes a frame, even one larger than the limit.
        let cfg = LinkConfig {
            rate_bps: Some(8_000_000),
            queue: QueueLimit::Bytes(10),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        link.handle_frame(0, &frame(0, 1500));
        assert_eq!(link.stats().drop_queue, 0);
    }

    #[test]
    fn bdp_queue_size() {
        let cfg = LinkConfig {
            delay: Duration::from_millis(125),
            rate_bps: Some(100_000_000),
            queue: QueueLimit::Bdp(1.0),
            ..Default::default()
        };
        // 100 Mbit/s × 250 ms = 3,125,000 bytes.
        assert_eq!(cfg.queue_bytes(1518), Some(3_125_000));
        let half = LinkConfig {
            queue: QueueLimit::Bdp(0.5),
            ..cfg.clone()
        };
        assert_eq!(half.queue_bytes(1518), Some(1_562_500));
        let none = LinkConfig {
            rate_bps: None,
            ..cfg
        };
        assert_eq!(none.queue_bytes(1518), None);
    }

    #[test]
    fn random_loss_is_close_to_configured_and_reproducible() {
        let cfg = LinkConfig {
            loss: 0.01,
            seed: 42,
            ..Default::default()
        };
        let run = |cfg: &LinkConfig| {
            let mut link = Link::new(cfg, 1518);
            let mut lost = Vec::new();
            for i in 0..100_000u32 {
                let before = link.stats().drop_loss;
                link.handle_frame(i as u64, &frame(i, 64));
                if link.stats().drop_loss > before {
                    lost.push(i);
                }
                while link.peek_due(i as u64).is_some() {
                    link.pop_due();
                }
            }
            lost
        };
        let a = run(&cfg);
        assert!((900..=1100).contains(&a.len()), "{} lost", a.len());
        assert_eq!(a, run(&cfg), "same seed, same losses");
        let other = LinkConfig { seed: 43, ..cfg };
        assert_ne!(a, run(&other));
    }

    #[test]
    fn gilbert_elliott_mean_and_bursts() {
        let ge = GeLoss {
            p: 0.01,
            r: 0.3,
            h: 0.0,
            k: 1.0,
        };
        let cfg = LinkConfig {
            ge_loss: Some(ge),
            seed: 7,
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        let n = 200_000u32;
        let mut bursts = 0u64;
        let mut prev_lost = false;
        for i in 0..n {
            let before = link.stats().drop_ge;
            link.handle_frame(i as u64, &frame(i, 64));
            let lost = link.stats().drop_ge > before;
            if lost && !prev_lost {
                bursts += 1;
            }
            prev_lost = lost;
            if link.peek_due(i as u64).is_some() {
                link.pop_due();
            }
        }
        let s = link.stats();
        let rate = s.drop_ge as f64 / n as f64;
        let want = ge.mean_loss(); // 0.01 / 0.31 ≈ 3.2%
        assert!((rate - want).abs() < want * 0.1, "loss {rate} vs {want}");
        // Mean burst length 1/r ≈ 3.3 frames.
        let mean_burst = s.drop_ge as f64 / bursts as f64;
        assert!((mean_burst - 1.0 / ge.r).abs() < 0.4, "burst {mean_burst}");
    }

    #[test]
    fn blackhole_drops_exactly_above_the_limit() {
        let cfg = LinkConfig {
            mtu_blackhole: Some(1400),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        for ip_len in 1390..=1410usize {
            link.handle_frame(0, &frame(ip_len as u32, ip_len + 14));
        }
        let out = drain(&mut link);
        let passed: Vec<u32> = out.iter().map(|o| o.1).collect();
        assert_eq!(passed, (1390..=1400).collect::<Vec<u32>>());
        assert_eq!(link.stats().drop_blackhole, 10);
    }

    #[test]
    fn jitter_never_reorders_and_stays_in_bounds() {
        let cfg = LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            seed: 3,
            pool: Some(8 << 20),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        let mut arrivals = Vec::new();
        for i in 0..10_000u32 {
            let t = i as u64 * 100 * US;
            arrivals.push(t);
            link.handle_frame(t, &frame(i, 100));
        }
        let out = drain(&mut link);
        let mut spread = (u64::MAX, 0u64);
        for (i, &(t, id, _)) in out.iter().enumerate() {
            assert_eq!(id, i as u32, "jitter reordered");
            let d = t - arrivals[i];
            assert!((8 * MS..=12 * MS).contains(&d), "delay {d}");
            spread = (spread.0.min(d), spread.1.max(d));
        }
        // Frames 100 µs apart with ±2 ms jitter: the no-reordering rule lifts the low samples.
        assert!(spread.0 < 9 * MS && spread.1 > 11_800 * US, "{spread:?}");
        assert_eq!(link.stats().reordered, 0);
    }

    #[test]
    fn reorder_and_duplicate_are_counted() {
        let cfg = LinkConfig {
            delay: Duration::from_millis(1),
            reorder: 0.05,
            duplicate: 0.02,
            seed: 11,
            pool: Some(8 << 20),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        for i in 0..20_000u32 {
            link.handle_frame(i as u64 * 10 * US, &frame(i, 100));
        }
        let out = drain(&mut link);
        let s = link.stats().clone();
        assert_eq!(out.len() as u64, 20_000 + s.duplicated);
        assert!((300..=500).contains(&s.duplicated), "{}", s.duplicated);
        assert!((800..=1200).contains(&s.reordered), "{}", s.reordered);
        // Every id arrives at least once; departures never go backwards.
        let mut seen = vec![0u32; 20_000];
        let mut late = 0;
        let mut max_id = 0;
        for w in out.windows(2) {
            assert!(w[0].0 <= w[1].0);
        }
        for &(_, id, _) in &out {
            seen[id as usize] += 1;
            if id < max_id {
                late += 1;
            }
            max_id = max_id.max(id);
        }
        assert!(seen.iter().all(|&n| n == 1 || n == 2));
        assert!(late > 0 && late <= s.reordered, "{late} late frames");
    }

    #[test]
    fn pool_is_bounded_and_counts_exhaustion() {
        let cfg = LinkConfig {
            delay: Duration::from_millis(100),
            pool: Some(10_000),
            ..Default::default()
        };
        let mut link = Link::new(&cfg, 1518);
        assert_eq!(link.pool_bytes(), 10_000);
        for i in 0..20u32 {
            link.handle_frame(0, &frame(i, 1000));
        }
        assert_eq!(link.stats().drop_pool, 10);
        assert_eq!(drain(&mut link).len(), 10);
        // Freed space is reused.
        for i in 0..10u32 {
            link.handle_frame(200 * MS, &frame(i, 1000));
        }
        assert_eq!(link.stats().drop_pool, 10);
    }

    #[test]
    fn ring_keeps_contents_through_wraps_and_early_frees() {
        let mut ring = Ring::new(5000, 1000);
        let mut rng = Rng::new(5);
        let mut live: VecDeque<(u64, usize, Vec<u8>)> = VecDeque::new();
        for round in 0..20_000u32 {
            let len = 40 + (rng.next_u64() % 1500) as usize;
            let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
            match ring.store(&data) {
                Some((seq, off)) => live.push_back((seq, off, data)),
                None => assert!(!live.is_empty(), "an empty ring refused {len} bytes"),
            }
            // Free mostly in order, sometimes the second-oldest first.
            while live.len() > 2 || (rng.chance(0.3) && !live.is_empty()) {
                let idx = if live.len() > 1 && rng.chance(0.2) {
                    1
                } else {
                    0
                };
                let (seq, off, data) = live.remove(idx).unwrap();
                assert_eq!(ring.get(off, data.len()), &data[..]);
                ring.free(seq);
            }
        }
    }
}
