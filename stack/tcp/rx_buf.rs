//! The receive buffer: in-order bytes waiting for the application, plus out-of-order data
//! waiting for the holes before it to fill.
//!
//! Positions are `u64` stream offsets (0 is the first data byte); the connection maps sequence
//! numbers to offsets, so nothing here wraps. Three positions describe the buffer:
//!
//! ```text
//!   read_offset          rcv_nxt                                   read_offset + limit
//!        |  readable bytes  |  hole  | ooo |  hole  |  ooo  |            |
//!        '------------------'--------'-----'--------'-------'------------'
//!                           '--------- free_window (what may be advertised) ---------'
//! ```
//!
//! Storage is one byte ring (`tx_buf/ring.rs`) indexed by `offset - read_offset`, so an out-of-order
//! segment is copied straight to its final place and becomes readable, without another copy, when
//! the hole before it fills. Which out-of-order bytes are present is a sorted list of disjoint
//! byte ranges ([`VecDeque`]). That list has no fixed size: it is bounded only by the window
//! (a range needs at least one byte and one missing byte after it). The usual operations on it are
//! O(1): appending after the highest range (new data behind a hole), growing the lowest range or
//! removing it when the hole before it fills (retransmissions arrive lowest first). A segment
//! landing between ranges costs a binary search and a shift of the shorter side of the list,
//! which stays small in practice (a few holes per window even at 1e-3 loss).
//!
//! Memory: nothing until the first byte arrives; then the ring grows by doubling to what the
//! highest byte held needs, up to the limit. It is given back automatically when the buffer
//! has drained a few times in a row using under a quarter of it (the load fell), and entirely
//! by [`RecvBuffer::shrink`] on an empty buffer (the engine calls it when a connection goes
//! idle). A steady load never reallocates.
//!
//! SACK (RFC 2018) and D-SACK (RFC 2883): [`RecvBuffer::sack_blocks`] lists the out-of-order
//! ranges in the order RFC 2018 §4 asks for, after a pending D-SACK range.
//!
//! No call panics on any argument: out-of-range offsets and lengths are trimmed or clamped.

use super::tx_buf::ring::{ByteRing, Sizing};
use std::collections::VecDeque;

/// How many most recently received out-of-order segments are remembered for SACK ordering: as
/// many as one option can carry.
const RECENT: usize = 4;

/// What one [`RecvBuffer::write_at`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// In-order bytes that became readable (how far `rcv_nxt` moved).
    pub advanced: usize,
    /// The lowest run of bytes in the segment that were already held or already read, as
    /// `[start, end)` offsets: what a D-SACK block reports.
    pub duplicate: Option<(u64, u64)>,
    /// Bytes of the segment that were new and kept, in order or out of order.
    pub stored: usize,
}

/// Received bytes: the readable in-order prefix and out-of-order ranges above it.
#[derive(Debug)]
pub struct RecvBuffer {
    /// Logical position 0 is `read_offset`.
    ring: ByteRing,
    read_offset: u64,
    rcv_nxt: u64,
    limit: usize,
    /// Most memory the ring may take (the configured maximum): growth doubles up to here, not
    /// just to `limit`, so a limit raised in small steps does not reallocate at every step.
    ceiling: usize,
    /// Out-of-order ranges `[start, end)`: sorted, disjoint, all above `rcv_nxt`, none touching
    /// another or `rcv_nxt` (touching ranges are merged).
    ooo: VecDeque<(u64, u64)>,
    /// Start offsets of the most recently received out-of-order segments, newest first, at most
    /// one per range: the order of SACK blocks.
    recent: [u64; RECENT],
    recent_len: usize,
    /// A duplicate range not yet reported in a D-SACK block.
    dsack: Option<(u64, u64)>,
    sizing: Sizing,
}

impl RecvBuffer {
    /// An empty buffer that will hold at most `limit` bytes beyond the read point. Allocates
    /// nothing.
    pub fn new(limit: usize) -> Self {
        RecvBuffer {
            ring: ByteRing::default(),
            read_offset: 0,
            rcv_nxt: 0,
            limit,
            ceiling: limit,
            ooo: VecDeque::new(),
            recent: [0; RECENT],
            recent_len: 0,
            dsack: None,
            sizing: Sizing::default(),
        }
    }

    /// Lets the ring's memory grow ahead of the limit up to `ceiling` (the configured maximum;
    /// never below the limit).
    pub fn with_ceiling(mut self, ceiling: usize) -> Self {
        self.ceiling = ceiling.max(self.limit);
        self
    }

    /// Changes how far beyond the read point data is kept (autotuning raises it). It never goes
    /// below what is held, in order or not; memory is not taken until data needs it.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(self.span());
        self.ceiling = self.ceiling.max(self.limit);
    }

    /// How far beyond the read point data is kept.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Memory held, in bytes: the data ring plus the out-of-order range list.
    pub fn capacity_bytes(&self) -> usize {
        self.ring.capacity() + self.ooo.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    /// Offset just past the highest byte held.
    fn held_end(&self) -> u64 {
        self.ooo.back().map_or(self.rcv_nxt, |r| r.1)
    }

    /// Bytes from the read point to the highest byte held.
    fn span(&self) -> usize {
        (self.held_end() - self.read_offset) as usize
    }

    /// Stores the segment `data` that starts at stream offset `offset`.
    ///
    /// Bytes before the read point or at/after `read_offset() + limit()` are not kept. Bytes
    /// already held keep their first copy. A segment with duplicate bytes becomes the pending
    /// D-SACK range (replacing an older one).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Written {
        let mut w = Written::default();
        if data.is_empty() {
            return w;
        }
        let end = offset.saturating_add(data.len() as u64);
        if offset < self.rcv_nxt {
            // Everything below rcv_nxt is held or read, and rcv_nxt itself is not held.
            w.duplicate = Some((offset, end.min(self.rcv_nxt)));
        }
        let start = offset.max(self.rcv_nxt);
        let end = end.min(self.read_offset.saturating_add(self.limit as u64));
        if start < end {
            let needed = (end - self.read_offset) as usize;
            if needed > self.ring.capacity() {
                let target = Sizing::grow_target(self.ring.capacity(), needed, self.ceiling);
                self.ring.resize(target, self.span());
            }
            let data = &data[(start - offset) as usize..(end - offset) as usize];
            self.insert(start, data, &mut w);
            self.sizing.note_held(self.span());
        }
        if w.duplicate.is_some() {
            self.dsack = w.duplicate;
        }
        w
    }

    /// Stores `data` at `[start, start + len)`, which is above `rcv_nxt` and inside the window.
    fn insert(&mut self, start: u64, data: &[u8], w: &mut Written) {
        let end = start + data.len() as u64;
        // Ranges i..j touch or overlap [start, end].
        let i = self.ooo.partition_point(|r| r.1 < start);
        let j = self.ooo.partition_point(|r| r.0 <= end);

        // Copy only the bytes not held yet: the first copy of a byte wins (as in Linux), and a
        // retransmission overlapping what is held costs only its gaps.
        let mut pos = start;
        for k in i..j {
            let (a, b) = self.ooo[k];
            if a > pos {
                self.store(pos, &data[(pos - start) as usize..(a - start) as usize]);
                w.stored += (a - pos) as usize;
            }
            let (dup_a, dup_b) = (a.max(start), b.min(end));
            if dup_a < dup_b && w.duplicate.is_none() {
                w.duplicate = Some((dup_a, dup_b));
            }
            pos = pos.max(b);
        }
        if pos < end {
            self.store(pos, &data[(pos - start) as usize..]);
            w.stored += (end - pos) as usize;
        }

        let merged_end = if i < j {
            end.max(self.ooo[j - 1].1)
        } else {
            end
        };
        if start == self.rcv_nxt {
            // In order (then i == 0): this and every range it reaches become readable.
            self.ooo.drain(..j);
            w.advanced = (merged_end - self.rcv_nxt) as usize;
            self.rcv_nxt = merged_end;
            let rcv_nxt = self.rcv_nxt;
            self.forget_recent(|p| p < rcv_nxt);
            return;
        }
        let merged_start = if i < j {
            start.min(self.ooo[i].0)
        } else {
            start
        };
        if i == j {
            self.ooo.insert(i, (merged_start, merged_end));
        } else {
            self.ooo[i] = (merged_start, merged_end);
            self.ooo.drain(i + 1..j);
        }
        // This segment's range is now the most recent; older entries inside it are the same block.
        self.forget_recent(|p| (merged_start..merged_end).contains(&p));
        self.recent.copy_within(0..RECENT - 1, 1);
        self.recent[0] = start;
        self.recent_len = (self.recent_len + 1).min(RECENT);
    }

    fn store(&mut self, offset: u64, bytes: &[u8]) {
        self.ring.write((offset - self.read_offset) as usize, bytes);
    }

    fn forget_recent(&mut self, drop: impl Fn(u64) -> bool) {
        let mut kept = 0;
        for k in 0..self.recent_len {
            let p = self.recent[k];
            if !drop(p) {
                self.recent[kept] = p;
                kept += 1;
            }
        }
        self.recent_len = kept;
    }

    /// Contiguous bytes ready for the application.
    pub fn readable(&self) -> usize {
        (self.rcv_nxt - self.read_offset) as usize
    }

    /// Whether nothing is held, in order or not.
    pub fn is_empty(&self) -> bool {
        self.rcv_nxt == self.read_offset && self.ooo.is_empty()
    }

    /// Copies readable bytes into `out` and consumes them; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.readable());
        self.ring.read(0, &mut out[..n]);
        self.consume(n);
        n
    }

    /// The readable bytes, as at most two slices (the ring may wrap), without consuming them.
    pub fn peek(&self) -> (&[u8], &[u8]) {
        self.ring.slices(0, self.readable())
    }

    /// Consumes `n` readable bytes (at most [`readable`](Self::readable)).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.readable());
        if n == 0 {
            return;
        }
        self.ring.advance(n);
        self.read_offset += n as u64;
        if self.is_empty() {
            // Memory goes back only through `shrink()`, which the connection calls once it has
            // been idle a while: shrinking on every drain made a busy receiver that reads each
            // segment at once reallocate on every burst.
            self.ring.reset();
        }
    }

    /// Gives memory back now: all of it when empty, otherwise whatever is well beyond what is
    /// held. The engine calls this when a connection goes idle.
    pub fn shrink(&mut self) {
        let span = self.span();
        let target = if span == 0 {
            0
        } else {
            Sizing::fit_target(span, self.limit)
        };
        if target < self.ring.capacity() {
            self.ring.resize(target, span);
        }
        self.ooo.shrink_to_fit();
        self.sizing.reset();
    }

    /// Offset just past the contiguous data (RCV.NXT as an offset).
    pub fn rcv_nxt(&self) -> u64 {
        self.rcv_nxt
    }

    /// Offset of the next byte the application will read.
    pub fn read_offset(&self) -> u64 {
        self.read_offset
    }

    /// The window that may be advertised: the limit minus the readable bytes not yet read.
    pub fn free_window(&self) -> usize {
        self.limit.saturating_sub(self.readable())
    }

    /// Whether out-of-order data is held above [`rcv_nxt`](Self::rcv_nxt).
    pub fn has_out_of_order(&self) -> bool {
        !self.ooo.is_empty()
    }

    /// The out-of-order range containing `offset`, if any.
    fn range_containing(&self, offset: u64) -> Option<(u64, u64)> {
        let k = self.ooo.partition_point(|r| r.1 <= offset);
        self.ooo.get(k).copied().filter(|r| r.0 <= offset)
    }

    /// Fills `out` with up to `max` (at most 4) SACK blocks `[start, end)`, returns how many.
    ///
    /// Order: the pending D-SACK range first (RFC 2883 §4), followed by the out-of-order range
    /// containing it if there is one (RFC 2883 §4 (1)); then the range containing the most
    /// recently received segment and the ranges of the segments received before it, newest
    /// first (RFC 2018 §4); then the lowest remaining ranges. Blocks other than the D-SACK one
    /// are disjoint and above [`rcv_nxt`](Self::rcv_nxt). `max` is 4 without timestamps, 3 with.
    pub fn sack_blocks(&self, out: &mut [(u64, u64); 4], max: usize) -> usize {
        let max = max.min(out.len());
        let mut n = 0;
        let mut first_sack = 0;
        if max == 0 {
            return 0;
        }
        if let Some(d) = self.dsack {
            out[0] = d;
            n = 1;
            first_sack = 1;
            if let Some(r) = self.range_containing(d.0) {
                if n < max {
                    out[n] = r;
                    n += 1;
                }
            }
        }
        let recent = self.recent[..self.recent_len]
            .iter()
            .filter_map(|&p| self.range_containing(p));
        for r in recent.chain(self.ooo.iter().copied()) {
            if n == max {
                break;
            }
            if !out[first_sack..n].contains(&r) {
                out[n] = r;
                n += 1;
            }
        }
        n
    }

    /// The pending D-SACK range, if a duplicate arrived since [`clear_dsack`](Self::clear_dsack).
    pub fn dsack(&self) -> Option<(u64, u64)> {
        self.dsack
    }

    /// Forgets the pending D-SACK range: call once it was sent (RFC 2883 reports it once).
    pub fn clear_dsack(&mut self) {
        self.dsack = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The byte a sender puts at `offset` in its `copy`-th transmission of it: copies differ so
    /// the tests see which copy was kept.
    fn byte(offset: u64, copy: u32) -> u8 {
        (offset.wrapping_mul(31) ^ (offset >> 8) ^ (copy as u64 * 101)) as u8
    }

    fn seg(offset: u64, len: usize) -> Vec<u8> {
        (offset..offset + len as u64).map(|o| byte(o, 0)).collect()
    }

    fn blocks(b: &RecvBuffer, max: usize) -> Vec<(u64, u64)> {
        let mut out = [(0, 0); 4];
        let n = b.sack_blocks(&mut out, max);
        out[..n].to_vec()
    }

    fn read_all(b: &mut RecvBuffer) -> Vec<u8> {
        let mut out = vec![0; b.readable()];
        assert_eq!(b.read(&mut out), out.len());
        out
    }

    #[test]
    fn new_allocates_nothing() {
        let b = RecvBuffer::new(64 << 20);
        assert_eq!(b.capacity_bytes(), 0);
        assert_eq!(b.free_window(), 64 << 20);
        assert!(b.is_empty() && !b.has_out_of_order());
    }

    #[test]
    fn in_order_data_is_readable_at_once() {
        let mut b = RecvBuffer::new(1 << 16);
        let w = b.write_at(0, b"hello");
        assert_eq!(
            w,
            Written {
                advanced: 5,
                duplicate: None,
                stored: 5
            }
        );
        assert_eq!(
            (b.readable(), b.rcv_nxt(), b.free_window()),
            (5, 5, (1 << 16) - 5)
        );
        assert_eq!(b.peek(), (&b"hello"[..], &b""[..]));
        b.consume(2);
        assert_eq!(b.read_offset(), 2);
        assert_eq!(read_all(&mut b), b"llo");
        assert_eq!(b.free_window(), 1 << 16);
    }

    #[test]
    fn a_filled_hole_releases_everything_behind_it() {
        let mut b = RecvBuffer::new(1 << 16);
        assert_eq!(b.write_at(10, &seg(10, 10)).advanced, 0);
        assert_eq!(b.write_at(30, &seg(30, 10)).stored, 10);
        assert!(b.has_out_of_order());
        assert_eq!(b.readable(), 0);
        assert_eq!(b.write_at(20, &seg(20, 10)).advanced, 0);
        assert_eq!(blocks(&b, 4), vec![(10, 40)]);
        let w = b.write_at(0, &seg(0, 10));
        assert_eq!((w.advanced, w.stored), (40, 10));
        assert!(!b.has_out_of_order());
        assert_eq!(read_all(&mut b), seg(0, 40));
    }

    #[test]
    fn data_outside_the_window_is_trimmed() {
        let mut b = RecvBuffer::new(100);
        let w = b.write_at(90, &seg(90, 20));
        assert_eq!((w.stored, w.advanced, w.duplicate), (10, 0, None));
        assert_eq!(blocks(&b, 4), vec![(90, 100)]);
        assert_eq!(b.write_at(100, &seg(100, 5)), Written::default());
        assert_eq!(b.write_at(u64::MAX - 2, &[1, 2, 3, 4]), Written::default());
        b.write_at(0, &seg(0, 90));
        assert_eq!(b.readable(), 100);
        assert_eq!(b.free_window(), 0);
        assert_eq!(b.write_at(100, &seg(100, 5)).stored, 0);
    }

    #[test]
    fn duplicates_are_reported_for_dsack() {
        let mut b = RecvBuffer::new(1000);
        b.write_at(0, &seg(0, 100));
        b.consume(50);
        // Partly read, partly held, partly new.
        let w = b.write_at(40, &seg(40, 80));
        assert_eq!(
            w,
            Written {
                advanced: 20,
                duplicate: Some((40, 100)),
                stored: 20
            }
        );
        assert_eq!(blocks(&b, 4), vec![(40, 100)]);
        b.clear_dsack();
        assert_eq!(blocks(&b, 4), vec![]);

        // A duplicate of out-of-order data: D-SACK first, then the block that holds it.
        b.write_at(200, &seg(200, 100));
        b.write_at(400, &seg(400, 100));
        let w = b.write_at(250, &seg(250, 10));
        assert_eq!(
            w,
            Written {
                advanced: 0,
                duplicate: Some((250, 260)),
                stored: 0
            }
        );
        assert_eq!(blocks(&b, 4), vec![(250, 260), (200, 300), (400, 500)]);
        assert_eq!(blocks(&b, 2), vec![(250, 260), (200, 300)]);
        assert_eq!(blocks(&b, 1), vec![(250, 260)]);
        assert_eq!(blocks(&b, 0), vec![]);
    }

    #[test]
    fn first_copy_of_a_byte_wins() {
        let mut b = RecvBuffer::new(1000);
        b.write_at(10, &[1; 10]);
        b.write_at(5, &[2; 20]);
        b.write_at(0, &[3; 5]);
        let mut want = vec![3; 5];
        want.extend([2; 5]);
        want.extend([1; 10]);
        want.extend([2; 5]);
        assert_eq!(read_all(&mut b), want);
    }

    #[test]
    fn sack_blocks_put_the_newest_segment_first() {
        let mut b = RecvBuffer::new(1 << 20);
        for k in [1u64, 3, 5, 7, 9] {
            b.write_at(k * 1000, &seg(k * 1000, 100));
        }
        assert_eq!(
            blocks(&b, 4),
            vec![(9000, 9100), (7000, 7100), (5000, 5100), (3000, 3100)]
        );
        assert_eq!(
            blocks(&b, 3),
            vec![(9000, 9100), (7000, 7100), (5000, 5100)]
        );
        // Extending an older block makes it the newest.
        b.write_at(3100, &seg(3100, 100));
        assert_eq!(
            blocks(&b, 4),
            vec![(3000, 3200), (9000, 9100), (7000, 7100), (5000, 5100)]
        );
        // Blocks merged by a segment count once; gaps in the recent list fill from the lowest.
        b.write_at(5100, &seg(5100, 1900));
        assert_eq!(
            blocks(&b, 4),
            vec![(5000, 7100), (3000, 3200), (9000, 9100), (1000, 1100)]
        );
        // In-order data that swallows blocks removes them.
        b.write_at(0, &seg(0, 3000));
        assert_eq!(b.rcv_nxt(), 3200);
        // It re-sent 1000..1100, which was held: a D-SACK block for it leads.
        assert_eq!(
            blocks(&b, 4),
            vec![(1000, 1100), (5000, 7100), (9000, 9100)]
        );
        b.clear_dsack();
        assert_eq!(blocks(&b, 4), vec![(5000, 7100), (9000, 9100)]);
    }

    #[test]
    fn gaps_are_not_limited_to_a_small_number() {
        let mut b = RecvBuffer::new(1 << 20);
        for k in 0..2000u64 {
            b.write_at(1 + 2 * k * 100, &seg(1 + 2 * k * 100, 100));
        }
        assert_eq!(b.readable(), 0);
        for k in 0..2000u64 {
            b.write_at(2 * k * 100 + 101, &seg(2 * k * 100 + 101, 100));
        }
        assert_eq!(b.write_at(0, &seg(0, 1)).advanced, 400_001);
        assert_eq!(read_all(&mut b), seg(0, 400_001));
    }

    #[test]
    fn set_limit_never_goes_below_what_is_held() {
        let mut b = RecvBuffer::new(1000);
        b.write_at(500, &[0; 100]);
        b.set_limit(10);
        assert_eq!(b.limit(), 600);
        b.set_limit(5000);
        assert_eq!(b.write_at(3000, &[0; 100]).stored, 100);
    }

    #[test]
    fn memory_grows_with_data_and_is_given_back_after_draining() {
        let mut b = RecvBuffer::new(64 << 20);
        let chunk = vec![7u8; 64 * 1024];
        let mut off = 0;
        let mut caps = vec![];
        for _ in 0..64 {
            b.write_at(off, &chunk);
            off += chunk.len() as u64;
            caps.push(b.capacity_bytes());
        }
        assert!(caps.windows(2).all(|w| w[0] <= w[1]));
        assert!(caps[0] < 128 * 1024, "first chunk took {}", caps[0]);
        assert!(b.capacity_bytes() >= 4 << 20 && b.capacity_bytes() <= 8 << 20);
        let mut sink = vec![0u8; 1 << 20];
        while b.read(&mut sink) > 0 {}
        // Kept until the engine says the connection is idle...
        assert!(b.capacity_bytes() >= 4 << 20);
        b.shrink();
        assert_eq!(b.capacity_bytes(), 0);

        // Out-of-order data far ahead needs the ring to reach it, and that memory too is given
        // back by the idle shrink (draining alone keeps it: no reallocation per burst).
        b.write_at(off + (2 << 20), &chunk);
        assert!(b.capacity_bytes() >= 2 << 20);
        b.write_at(off, &vec![7u8; (2 << 20) + chunk.len()]);
        off += (2 << 20) + chunk.len() as u64;
        while b.read(&mut sink) > 0 {}
        for _ in 0..8 {
            b.write_at(off, &chunk[..1000]);
            off += 1000;
            b.read(&mut sink);
        }
        assert!(
            b.capacity_bytes() >= 2 << 20,
            "draining does not reallocate"
        );
        b.shrink();
        assert!(b.capacity_bytes() <= 256, "kept {}", b.capacity_bytes());
    }

    #[test]
    fn steady_small_messages_do_not_reallocate() {
        let mut b = RecvBuffer::new(1 << 20);
        let mut sink = [0u8; 3000];
        b.write_at(0, &sink);
        b.read(&mut sink);
        let cap = b.capacity_bytes();
        for k in 1..1000u64 {
            b.write_at(k * 3000, &[1; 3000]);
            assert_eq!(b.read(&mut sink), 3000);
            assert_eq!(b.capacity_bytes(), cap);
        }
    }

    /// 100 MB through the buffer, segments swapped in pairs so that half of them go through the
    /// out-of-order path. Catches accidental quadratic behaviour.
    #[test]
    fn hundred_megabytes_stream_through() {
        const TOTAL: u64 = 100 << 20;
        const MSS: u64 = 1448;
        let mut b = RecvBuffer::new(4 << 20);
        let src: Vec<u8> = (0..(1u64 << 20) + MSS).map(|o| byte(o, 0)).collect();
        let at = |o: u64, len: u64| &src[(o % (1 << 20)) as usize..][..len as usize];
        let mut sink = vec![0u8; 256 * 1024];
        let (mut next, mut read, mut sum) = (0u64, 0u64, 0u64);
        while read < TOTAL {
            // A window's worth of segments, pairs swapped.
            while next < TOTAL && next + 2 * MSS <= b.read_offset() + b.limit() as u64 {
                let len2 = MSS.min(TOTAL - next - MSS.min(TOTAL - next));
                let len1 = MSS.min(TOTAL - next);
                if len2 > 0 {
                    b.write_at(next + len1, at(next + len1, len2));
                }
                b.write_at(next, at(next, len1));
                next += len1 + len2;
            }
            if next < TOTAL && b.readable() == 0 {
                let len = (TOTAL - next).min(MSS);
                b.write_at(next, at(next, len));
                next += len;
            }
            let n = b.read(&mut sink);
            sum = sum.wrapping_add(sink[..n].iter().map(|&x| x as u64).sum::<u64>());
            read += n as u64;
        }
        let want: u64 = (0..TOTAL).map(|o| byte(o % (1 << 20), 0) as u64).sum();
        assert_eq!(sum, want);
        assert!(b.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A segment at `read_offset + rel` (clamped at 0).
        Write {
            rel: i64,
            len: usize,
        },
        Read(usize),
        PeekConsume(usize),
        SetLimit(usize),
        ClearDsack,
        Shrink,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (-300i64..2500, 0usize..700).prop_map(|(rel, len)| Op::Write { rel, len }),
            2 => (0usize..1500).prop_map(Op::Read),
            1 => (0usize..1500).prop_map(Op::PeekConsume),
            1 => (0usize..3000).prop_map(Op::SetLimit),
            1 => Just(Op::ClearDsack),
            1 => Just(Op::Shrink),
        ]
    }

    /// The obvious model: one `Option<u8>` per stream offset.
    #[derive(Default)]
    struct Model {
        held: Vec<Option<u8>>,
        read: u64,
        limit: usize,
        dsack: Option<(u64, u64)>,
    }

    impl Model {
        fn get(&self, o: u64) -> Option<u8> {
            self.held.get(o as usize).copied().flatten()
        }
        fn rcv_nxt(&self) -> u64 {
            (self.read..).find(|&o| self.get(o).is_none()).unwrap()
        }
        fn held_end(&self) -> u64 {
            let top = (self.read..self.held.len() as u64)
                .rev()
                .find(|&o| self.get(o).is_some());
            top.map_or(self.read, |o| o + 1)
        }
        /// Maximal held runs above rcv_nxt.
        fn ranges(&self) -> Vec<(u64, u64)> {
            let mut out: Vec<(u64, u64)> = vec![];
            for o in self.rcv_nxt()..self.held.len() as u64 {
                if self.get(o).is_some() {
                    match out.last_mut() {
                        Some(r) if r.1 == o => r.1 += 1,
                        _ => out.push((o, o + 1)),
                    }
                }
            }
            out
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random segments (overlapping, duplicated, beyond the window, behind the read point)
        /// against a byte-per-offset model: readable bytes are the model's contiguous prefix,
        /// read exactly once and in order; D-SACK and SACK blocks follow the RFCs.
        #[test]
        fn matches_a_byte_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut b = RecvBuffer::new(2000);
            let mut m = Model { limit: 2000, ..Model::default() };
            let mut last_segment: Option<(u64, u64)> = None;
            for (copy, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write { rel, len } => {
                        let offset = (m.read as i64 + rel).max(0) as u64;
                        let data: Vec<u8> =
                            (offset..offset + len as u64).map(|o| byte(o, copy as u32)).collect();
                        let nxt_before = m.rcv_nxt();
                        let mut stored = 0;
                        let mut dup: Option<(u64, u64)> = None;
                        let mut dup_open = false;
                        for (k, &x) in data.iter().enumerate() {
                            let o = offset + k as u64;
                            let is_dup = o < m.read || m.get(o).is_some();
                            if is_dup {
                                match &mut dup {
                                    None => { dup = Some((o, o + 1)); dup_open = true; }
                                    Some(d) if dup_open => d.1 = o + 1,
                                    _ => {}
                                }
                            } else {
                                dup_open = false;
                                if o < m.read + m.limit as u64 {
                                    if m.held.len() <= o as usize {
                                        m.held.resize(o as usize + 1, None);
                                    }
                                    m.held[o as usize] = Some(x);
                                    stored += 1;
                                }
                            }
                        }
                        let w = b.write_at(offset, &data);
                        let nxt = m.rcv_nxt();
                        prop_assert_eq!(w, Written {
                            advanced: (nxt - nxt_before) as usize, duplicate: dup, stored
                        });
                        if dup.is_some() {
                            m.dsack = dup;
                        }
                        // The part of this segment above rcv_nxt, if any: the newest SACK block.
                        let top = (offset + len as u64).min(m.read + m.limit as u64);
                        let low = offset.max(nxt);
                        last_segment = if low < top {
                            Some((low, top))
                        } else {
                            // In order or not kept: the previous newest stays first while it is
                            // still out of order.
                            last_segment.filter(|s| s.0 >= nxt)
                        };
                    }
                    Op::Read(n) | Op::PeekConsume(n) => {
                        let want: Vec<u8> = (m.read..m.rcv_nxt())
                            .take(n)
                            .map(|o| m.get(o).unwrap())
                            .collect();
                        if let Op::Read(_) = op {
                            let mut out = vec![0u8; n];
                            let got = b.read(&mut out);
                            prop_assert_eq!(&out[..got], &want[..]);
                        } else {
                            let (x, y) = b.peek();
                            let all = [x, y].concat();
                            prop_assert_eq!(&all[..want.len()], &want[..]);
                            b.consume(n);
                        }
                        m.read += want.len() as u64;
                    }
                    Op::SetLimit(l) => {
                        b.set_limit(l);
                        m.limit = l.max((m.held_end() - m.read) as usize);
                    }
                    Op::ClearDsack => {
                        b.clear_dsack();
                        m.dsack = None;
                    }
                    Op::Shrink => b.shrink(),
                }
                let nxt = m.rcv_nxt();
                prop_assert_eq!(b.rcv_nxt(), nxt);
                prop_assert_eq!(b.read_offset(), m.read);
                prop_assert_eq!(b.readable() as u64, nxt - m.read);
                prop_assert_eq!(b.limit(), m.limit);
                prop_assert_eq!(b.free_window(), m.limit - (nxt - m.read) as usize);
                let ranges = m.ranges();
                prop_assert_eq!(b.has_out_of_order(), !ranges.is_empty());
                prop_assert!(b.capacity_bytes() >= (m.held_end() - m.read) as usize);

                for max in [3, 4] {
                    let got = blocks(&b, max);
                    let mut sacks = &got[..];
                    if let Some(d) = m.dsack {
                        prop_assert_eq!(got[0], d);
                        sacks = &got[1..];
                    }
                    let want_len = max.min(m.dsack.is_some() as usize + ranges.len());
                    prop_assert_eq!(got.len(), want_len);
                    for (k, r) in sacks.iter().enumerate() {
                        prop_assert!(ranges.contains(r), "{:?} is not a held range", r);
                        prop_assert!(!sacks[..k].contains(r));
                    }
                    // The block with the newest segment comes first, or second after the
                    // block that holds the D-SACK range.
                    if let Some(s) = last_segment {
                        let holds_dsack = m.dsack.is_some_and(|d| ranges.iter().any(|r| r.0 <= d.0 && d.0 < r.1));
                        let lead = &sacks[..sacks.len().min(1 + holds_dsack as usize)];
                        prop_assert!(
                            lead.iter().any(|r| r.0 <= s.0 && s.1 <= r.1),
                            "newest segment {:?} not first in {:?}", s, got
                        );
                    }
                }
            }
        }
    }
}
