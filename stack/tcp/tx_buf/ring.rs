//! The byte ring under [`SendBuffer`](super::SendBuffer) and
//! [`RecvBuffer`](crate::stack::tcp::rx_buf::RecvBuffer), and the policy that sizes it.
//!
//! Why a single contiguous ring rather than a list of chunks: a stream buffer is read and written
//! at its two ends, so a ring gives memcpy-speed bulk copies (at most two slices per access) with
//! no per-chunk bookkeeping, and the out-of-order side of the receiver can write at any position
//! inside the window without having to find or allocate a chunk. The cost of a ring is that it
//! grows by reallocating and copying; doubling keeps that amortised O(1) per byte (every byte is
//! copied at most about twice over the buffer's life), and growth only happens while the window
//! is opening, never in steady state.
//!
//! The capacity is not required to be a power of two (indices wrap with one compare), so a
//! 3 MB limit costs 3 MB, not 4 MiB.

/// Smallest allocation: two full-size segments, so a request/response connection that drains
/// after every message keeps one small buffer instead of reallocating per message.
pub(in crate::stack::tcp) const MIN_CAPACITY: usize = 4096;

/// A ring of bytes: `buf.len()` is the capacity, `head` the physical index of logical position 0.
/// The owner tracks which logical positions hold data; the ring only maps and copies.
#[derive(Debug, Default)]
pub(in crate::stack::tcp) struct ByteRing {
    buf: Vec<u8>,
    head: usize,
}

impl ByteRing {
    /// Bytes allocated.
    pub(in crate::stack::tcp) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Physical index of logical position `rel` (`rel < capacity`).
    fn phys(&self, rel: usize) -> usize {
        debug_assert!(rel < self.buf.len());
        let i = self.head + rel;
        if i >= self.buf.len() {
            i - self.buf.len()
        } else {
            i
        }
    }

    /// The logical range `[rel, rel + len)` as at most two physical slices (`rel + len <= capacity`).
    pub(in crate::stack::tcp) fn slices(&self, rel: usize, len: usize) -> (&[u8], &[u8]) {
        debug_assert!(rel + len <= self.buf.len());
        if len == 0 {
            return (&[], &[]);
        }
        let start = self.phys(rel);
        let first = len.min(self.buf.len() - start);
        (&self.buf[start..start + first], &self.buf[..len - first])
    }

    /// Copies `data` to logical position `rel` (`rel + data.len() <= capacity`).
    pub(in crate::stack::tcp) fn write(&mut self, rel: usize, data: &[u8]) {
        debug_assert!(rel + data.len() <= self.buf.len());
        if data.is_empty() {
            return;
        }
        let start = self.phys(rel);
        let first = data.len().min(self.buf.len() - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
    }

    /// Copies logical `[rel, rel + out.len())` into `out` (`rel + out.len() <= capacity`).
    pub(in crate::stack::tcp) fn read(&self, rel: usize, out: &mut [u8]) {
        let (a, b) = self.slices(rel, out.len());
        out[..a.len()].copy_from_slice(a);
        out[a.len()..].copy_from_slice(b);
    }

    /// Moves logical position 0 forward by `n` (`n <= capacity`).
    pub(in crate::stack::tcp) fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.buf.len());
        if n == self.buf.len() {
            return;
        }
        self.head = self.phys(n);
    }

    /// Restarts at physical index 0 (only when the owner holds no data), so the next bulk copy
    /// is one slice instead of two.
    pub(in crate::stack::tcp) fn reset(&mut self) {
        self.head = 0;
    }

    /// Reallocates to exactly `capacity` bytes, keeping logical `[0, keep)` (`keep <= capacity`).
    /// A capacity of zero frees the memory.
    pub(in crate::stack::tcp) fn resize(&mut self, capacity: usize, keep: usize) {
        debug_assert!(keep <= capacity && keep <= self.buf.len());
        if capacity == self.buf.len() {
            return;
        }
        let mut buf = vec![0u8; capacity];
        self.read(0, &mut buf[..keep]);
        self.buf = buf;
        self.head = 0;
    }
}

/// When to grow and when to give memory back.
///
/// Growth: to at least double the old capacity (amortised O(1) copying), at least
/// [`MIN_CAPACITY`], a power of two when that fits, never above the limit (unless the data
/// needs it, which the owners prevent).
///
/// Shrinking happens only through the owners' `shrink()`, which the connection calls once it has
/// been quiet for a while: an empty buffer then holds no memory at all. (Shrinking by itself on
/// drains made a receiver that reads every segment at once reallocate on every burst.)
#[derive(Debug, Default)]
pub(in crate::stack::tcp) struct Sizing {
    /// Most bytes held since the last reset.
    peak: usize,
}

impl Sizing {
    /// The capacity to grow to so that `needed` bytes fit.
    pub(in crate::stack::tcp) fn grow_target(
        capacity: usize,
        needed: usize,
        limit: usize,
    ) -> usize {
        let doubled = capacity.saturating_mul(2).max(MIN_CAPACITY);
        let pow2 = needed.checked_next_power_of_two().unwrap_or(needed);
        doubled.max(pow2).min(limit).max(needed)
    }

    /// A capacity that fits `used` bytes with room to spare.
    pub(in crate::stack::tcp) fn fit_target(used: usize, limit: usize) -> usize {
        let want = used
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .max(MIN_CAPACITY);
        want.min(limit).max(used)
    }

    /// Records that `held` bytes are held now.
    pub(in crate::stack::tcp) fn note_held(&mut self, held: usize) {
        self.peak = self.peak.max(held);
    }

    /// Forgets the peak (after an explicit resize).
    pub(in crate::stack::tcp) fn reset(&mut self) {
        *self = Sizing::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_wraps_and_resizes_linearly() {
        let mut r = ByteRing::default();
        r.resize(8, 0);
        r.advance(6);
        r.write(0, b"abcde");
        let (a, b) = r.slices(0, 5);
        assert_eq!((a, b), (&b"ab"[..], &b"cde"[..]));
        let mut out = [0u8; 4];
        r.read(1, &mut out);
        assert_eq!(&out, b"bcde");
        r.resize(16, 5);
        assert_eq!(r.slices(0, 5), (&b"abcde"[..], &b""[..]));
        r.resize(0, 0);
        assert_eq!(r.capacity(), 0);
    }

    #[test]
    fn growth_doubles_within_the_limit() {
        assert_eq!(Sizing::grow_target(0, 1, 1 << 20), MIN_CAPACITY);
        assert_eq!(Sizing::grow_target(4096, 4097, 1 << 20), 8192);
        assert_eq!(Sizing::grow_target(4096, 100_000, 1 << 20), 131_072);
        assert_eq!(Sizing::grow_target(0, 100, 1000), 1000);
        assert_eq!(Sizing::grow_target(65536, 70_000, 3_000_000), 131_072);
        assert_eq!(
            Sizing::grow_target(2_097_152, 2_100_000, 3_000_000),
            3_000_000
        );
    }
}
