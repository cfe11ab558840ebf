//! `mem`: the two ends of an in-process Ethernet wire, for tests and benchmarks.
//!
//! Each direction is a bounded lock-free ring of [`PoolFrame`]s; both ends draw buffers from one shared
//! fixed pool, so moving a frame moves a pointer and nothing allocates after [`wire`] returns. A sender
//! may lose or reorder frames ([`Impairment`], seeded and reproducible). An end that sleeps is woken through
//! an eventfd, written only when the peer said it was going to sleep.

use super::sys::Wake;
use super::{Caps, Frame, PoolFrame, Queue};
use crossbeam_queue::ArrayQueue;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Faults a sending end injects into what it transmits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability in [0, 1] that a frame is silently dropped.
    pub loss: f64,
    /// Probability in [0, 1] that a frame is held back and sent after the next one.
    pub reorder: f64,
    /// Seed of the fault generator (runs with the same seed drop the same frames).
    pub seed: u64,
}

/// Shape of a wire.
#[derive(Clone, Copy, Debug)]
pub struct MemConfig {
    /// IP MTU (Ethernet payload) in bytes.
    pub mtu: usize,
    /// Frames each direction's ring holds.
    pub ring: usize,
    /// Faults injected by end A's transmit (towards B).
    pub a_to_b: Impairment,
    /// Faults injected by end B's transmit (towards A).
    pub b_to_a: Impairment,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            mtu: 1500,
            ring: 1024,
            a_to_b: Impairment::default(),
            b_to_a: Impairment::default(),
        }
    }
}

/// Counters of one sending end, readable while the queue is in use by a core.
#[derive(Debug, Default)]
pub struct MemStats {
    /// Frames handed to the peer.
    pub sent: AtomicU64,
    /// Frames dropped by the loss hook.
    pub lost: AtomicU64,
    /// Frames sent out of order by the reorder hook.
    pub reordered: AtomicU64,
}

/// An eventfd plus the flag that says whether its owner is asleep and needs it written.
struct Waker {
    sleeping: AtomicBool,
    wake: Wake,
}

impl Waker {
    fn new() -> Arc<Waker> {
        Arc::new(Waker {
            sleeping: AtomicBool::new(false),
            wake: Wake::new().expect("eventfd (the kernel always offers it)"),
        })
    }

    fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake.wake();
        }
    }
}

/// One end of an in-memory wire.
pub struct MemQueue {
    rx: Arc<ArrayQueue<PoolFrame>>,
    tx: Arc<ArrayQueue<PoolFrame>>,
    pool: Arc<ArrayQueue<PoolFrame>>,
    own_waker: Arc<Waker>,
    peer_waker: Arc<Waker>,
    impair: Impairment,
    rng: u64,
    held: Option<PoolFrame>,
    stats: Arc<MemStats>,
    mtu: usize,
}

/// Builds a wire and returns its two ends (A, B).
pub fn wire(cfg: MemConfig) -> (MemQueue, MemQueue) {
    let ring = cfg.ring.max(2);
    let frame_cap = cfg.mtu + 14;
    // Both rings full, plus frames in flight inside each stack (rx bursts, tx batches).
    let pool_size = 2 * ring + 1024;
    let pool = Arc::new(ArrayQueue::new(pool_size));
    for _ in 0..pool_size {
        let _ = pool.push(PoolFrame::with_capacity(frame_cap));
    }
    let ab = Arc::new(ArrayQueue::new(ring));
    let ba = Arc::new(ArrayQueue::new(ring));
    let (wa, wb) = (Waker::new(), Waker::new());
    let end = |rx: &Arc<ArrayQueue<PoolFrame>>,
               tx: &Arc<ArrayQueue<PoolFrame>>,
               own: &Arc<Waker>,
               peer: &Arc<Waker>,
               impair: Impairment| MemQueue {
        rx: rx.clone(),
        tx: tx.clone(),
        pool: pool.clone(),
        own_waker: own.clone(),
        peer_waker: peer.clone(),
        impair,
        rng: impair.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        held: None,
        stats: Arc::new(MemStats::default()),
        mtu: cfg.mtu,
    };
    let a = end(&ba, &ab, &wa, &wb, cfg.a_to_b);
    let b = end(&ab, &ba, &wb, &wa, cfg.b_to_a);
    (a, b)
}

impl MemQueue {
    /// This end's transmit counters; the handle stays valid after the queue moves to a core.
    pub fn stats(&self) -> Arc<MemStats> {
        self.stats.clone()
    }

    /// Uniform in [0, 1), xorshift64*.
    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Puts one frame on the wire; gives it back if the ring is full.
    fn put(&mut self, frame: PoolFrame) -> Result<(), PoolFrame> {
        self.tx.push(frame)?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Queue for MemQueue {
    type Frame = PoolFrame;

    fn caps(&self) -> Caps {
        Caps {
            mtu: self.mtu,
            queues: 1,
            rx_checksum_offload: false,
            tx_checksum_offload: false,
            rss: None,
        }
    }

    fn rx_burst(&mut self, out: &mut Vec<PoolFrame>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.pop() {
                Some(f) => {
                    out.push(f);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn alloc_tx(&mut self) -> Option<PoolFrame> {
        let mut f = self.pool.pop()?;
        f.set_len(f.capacity());
        Some(f)
    }

    fn tx_burst(&mut self, frames: &mut Vec<PoolFrame>) -> usize {
        let mut sent = 0;
        let mut ring_full = false;
        for frame in frames.iter_mut() {
            if self.tx.is_full() {
                ring_full = true;
                break;
            }
            sent += 1;
            let frame = std::mem::replace(frame, PoolFrame::empty());
            if self.impair.loss > 0.0 && self.next_unit() < self.impair.loss {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                let _ = self.pool.push(frame);
                continue;
            }
            if self.held.is_none()
                && self.impair.reorder > 0.0
                && self.next_unit() < self.impair.reorder
            {
                self.held = Some(frame);
                continue;
            }
            if let Err(f) = self.put(frame) {
                let _ = self.pool.push(f);
            }
            if let Some(h) = self.held.take() {
                self.stats.reordered.fetch_add(1, Ordering::Relaxed);
                if let Err(f) = self.put(h) {
                    let _ = self.pool.push(f);
                }
            }
        }
        frames.drain(..sent);
        if sent > 0 || ring_full {
            self.peer_waker.wake();
        }
        sent
    }

    fn free(&mut self, frame: PoolFrame) {
        // The pool was sized for every frame, so this cannot fail; a frame from elsewhere is dropped.
        let _ = self.pool.push(frame);
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.own_waker.wake.fd())
    }

    fn set_sleeping(&self, sleeping: bool) {
        self.own_waker.sleeping.store(sleeping, Ordering::SeqCst);
        if !sleeping {
            self.own_waker.wake.drain();
        }
    }
}

impl Drop for MemQueue {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            let _ = self.pool.push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(q: &mut MemQueue, byte: u8) {
        let mut f = q.alloc_tx().unwrap();
        f.set_len(60);
        f.data_mut()[0] = byte;
        let mut v = vec![f];
        assert_eq!(q.tx_burst(&mut v), 1);
    }

    #[test]
    fn frames_cross_in_order() {
        let (mut a, mut b) = wire(MemConfig::default());
        for i in 0..10 {
            send(&mut a, i);
        }
        let mut out = Vec::with_capacity(64);
        assert_eq!(b.rx_burst(&mut out, 64), 10);
        let firsts: Vec<u8> = out.iter().map(|f| f.data()[0]).collect();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        for f in out.drain(..) {
            b.free(f);
        }
    }

    #[test]
    fn loss_hook_drops_about_the_configured_share() {
        let cfg = MemConfig {
            a_to_b: Impairment {
                loss: 0.1,
                reorder: 0.0,
                seed: 7,
            },
            ring: 100_000,
            ..MemConfig::default()
        };
        let (mut a, mut b) = wire(cfg);
        let mut out = Vec::with_capacity(16);
        let mut got = 0;
        for i in 0..20_000u32 {
            send(&mut a, i as u8);
            got += b.rx_burst(&mut out, 16);
            for f in out.drain(..) {
                b.free(f);
            }
        }
        let lost = a.stats().lost.load(Ordering::Relaxed);
        assert_eq!(got as u64 + lost, 20_000);
        assert!((1_600..2_400).contains(&lost), "lost {lost}");
    }

    #[test]
    fn reorder_hook_swaps_neighbours() {
        let cfg = MemConfig {
            a_to_b: Impairment {
                loss: 0.0,
                reorder: 1.0,
                seed: 1,
            },
            ..MemConfig::default()
        };
        let (mut a, mut b) = wire(cfg);
        for i in 0..4 {
            send(&mut a, i);
        }
        let mut out = Vec::with_capacity(8);
        b.rx_burst(&mut out, 8);
        let firsts: Vec<u8> = out.iter().map(|f| f.data()[0]).collect();
        assert_eq!(firsts, vec![1, 0, 3, 2]);
    }

    #[test]
    fn full_ring_keeps_unsent_frames() {
        let cfg = MemConfig {
            ring: 2,
            ..MemConfig::default()
        };
        let (mut a, _b) = wire(cfg);
        let mut v: Vec<PoolFrame> = (0..5).map(|_| a.alloc_tx().unwrap()).collect();
        assert_eq!(a.tx_burst(&mut v), 2);
        assert_eq!(v.len(), 3);
    }
}
