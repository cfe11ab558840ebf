//! Pacing: the earliest time the next segment may leave at a given rate.
//!
//! The connection keeps one departure time. Each segment pushes it forward by `bytes / rate`;
//! it may lag behind the clock by at most one quantum's worth of time, so after an idle period
//! (or a stall) at most a quantum goes back to back — `max(2 segments, 1 ms at the rate)`, capped
//! at 64 KiB (Linux's fq uses a quantum of two segments and its `tcp_pacing` credits ~1 ms).

use crate::stack::tcp::time::Instant;
use std::time::Duration;

/// Largest burst the pacer lets out at once, bytes.
pub const MAX_QUANTUM: u64 = 64 << 10;

/// Earliest departure time of the next segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pacer {
    next: Instant,
}

/// Time `bytes` take at `rate` bytes per second.
fn at_rate(bytes: u64, rate: u64) -> Duration {
    let ns = bytes as u128 * 1_000_000_000 / rate.max(1) as u128;
    Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

impl Pacer {
    /// The burst allowed at `rate` for segments of `mss` bytes.
    pub fn quantum(rate: u64, mss: u32) -> u64 {
        (2 * mss as u64).max(rate / 1000).min(MAX_QUANTUM)
    }

    /// When the next segment may go.
    pub fn next_departure(&self) -> Instant {
        self.next
    }

    /// A segment may go at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// `bytes` left at `now` paced at `rate` bytes per second.
    pub fn on_sent(&mut self, now: Instant, bytes: u64, rate: u64, mss: u32) {
        let credit = at_rate(Self::quantum(rate, mss), rate);
        let base = self.next.max(now - credit);
        self.next = base + at_rate(bytes, rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_segments_after_a_quantum() {
        // 1 MB/s, 1000-byte segments: quantum = max(2000, 1000) = 2000 bytes, 1 ms per segment.
        let mut p = Pacer::default();
        let t0 = Instant::from_millis(10_000);
        let mut sent_at = Vec::new();
        let mut now = t0;
        for _ in 0..6 {
            if !p.ready(now) {
                now = p.next_departure();
            }
            sent_at.push(now.saturating_since(t0).as_micros() as u64);
            p.on_sent(now, 1000, 1_000_000, 1000);
        }
        // Idle before: a quantum (2 segments) plus the one that opens the interval go at once.
        assert_eq!(sent_at, [0, 0, 0, 1000, 2000, 3000]);
    }

    #[test]
    fn quantum_bounds() {
        assert_eq!(Pacer::quantum(100_000_000, 1448), 64 << 10);
        assert_eq!(Pacer::quantum(10_000_000, 1448), 10_000);
        assert_eq!(Pacer::quantum(1, 1448), 2896);
        let mut p = Pacer::default();
        p.on_sent(Instant::ZERO, 1000, 0, 1000); // a zero rate never panics
    }
}
