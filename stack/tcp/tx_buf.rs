//! The send buffer: bytes the application wrote that the peer has not acknowledged yet.
//!
//! Offsets are relative to the oldest unacknowledged byte (SND.UNA); the connection maps them
//! to sequence numbers. The buffer holds both the bytes in flight and the bytes not yet sent:
//! the connection knows where SND.NXT is, the buffer does not need to.
//!
//! Memory: nothing is allocated until the first [`SendBuffer::push`]; the ring then doubles as
//! the application fills it, up to [`SendBuffer::limit`]. It is given back automatically when the
//! buffer has drained a few times in a row using under a quarter of it (the load fell), and
//! entirely by [`SendBuffer::shrink`] on an empty buffer (the engine calls it when a connection
//! goes idle). A steady load never reallocates. Why a ring and not a chunk list is explained in
//! `tx_buf/ring.rs`.
//!
//! Costs: `push`, `copy_at`, `slices_at` and `ack` are O(1) plus the bytes copied (at most two
//! `memcpy`s); growth is amortised O(1) per byte. Out-of-range arguments are clamped, never a
//! panic.

pub(super) mod ring;

use self::ring::{ByteRing, Sizing};

/// Bytes written by the application and not yet acknowledged, oldest first.
#[derive(Debug)]
pub struct SendBuffer {
    ring: ByteRing,
    /// Bytes held (in flight and not yet sent), from logical position 0 of the ring.
    len: usize,
    limit: usize,
    /// Most memory the ring may take (the configured maximum): growth doubles up to here, not
    /// just to `limit`, so a limit raised in small steps does not reallocate at every step.
    ceiling: usize,
    sizing: Sizing,
}

impl SendBuffer {
    /// An empty buffer that will hold at most `limit` bytes. Allocates nothing.
    pub fn new(limit: usize) -> Self {
        SendBuffer {
            ring: ByteRing::default(),
            len: 0,
            limit,
            ceiling: limit,
            sizing: Sizing::default(),
        }
    }

    /// Lets the ring's memory grow ahead of the limit up to `ceiling` (the configured maximum;
    /// never below the limit).
    pub fn with_ceiling(mut self, ceiling: usize) -> Self {
        self.ceiling = ceiling.max(self.limit);
        self
    }

    /// Changes the most bytes the buffer may hold (autotuning raises it). It never goes below
    /// what is held now; memory is not taken until data needs it.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(self.len);
        self.ceiling = self.ceiling.max(self.limit);
    }

    /// The most bytes the buffer may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held: unacknowledged in flight plus not yet sent.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many more bytes [`push`](Self::push) would take.
    pub fn free_space(&self) -> usize {
        self.limit.saturating_sub(self.len)
    }

    /// Memory held for data, in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.ring.capacity()
    }

    /// Appends as much of `data` as fits under the limit; returns how many bytes were taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free_space());
        if n == 0 {
            return 0;
        }
        let needed = self.len + n;
        if needed > self.ring.capacity() {
            let target = Sizing::grow_target(self.ring.capacity(), needed, self.ceiling);
            self.ring.resize(target, self.len);
        }
        self.ring.write(self.len, &data[..n]);
        self.len = needed;
        self.sizing.note_held(self.len);
        n
    }

    /// Copies the bytes from `offset` (counted from the oldest unacknowledged byte) into `out`;
    /// returns how many were copied (fewer than `out.len()` at the end of the data, 0 past it).
    pub fn copy_at(&self, offset: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len.saturating_sub(offset));
        if n > 0 {
            self.ring.read(offset, &mut out[..n]);
        }
        n
    }

    /// The bytes `[offset, offset + len)` as at most two slices (the ring may wrap), clamped to
    /// the data held: for building a segment without an intermediate copy.
    pub fn slices_at(&self, offset: usize, len: usize) -> (&[u8], &[u8]) {
        let len = len.min(self.len.saturating_sub(offset));
        if len == 0 {
            return (&[], &[]);
        }
        self.ring.slices(offset, len)
    }

    /// Drops `n` bytes from the front (they were acknowledged); more than held drops everything.
    pub fn ack(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.ring.advance(n);
        self.len -= n;
        if self.len == 0 {
            // Memory goes back only through `shrink()` (see RecvBuffer::consume for why).
            self.ring.reset();
        }
    }

    /// Gives memory back now: all of it when empty, otherwise whatever is well beyond what is
    /// held. The engine calls this when a connection goes idle.
    pub fn shrink(&mut self) {
        let target = if self.len == 0 {
            0
        } else {
            Sizing::fit_target(self.len, self.limit)
        };
        if target < self.ring.capacity() {
            self.ring.resize(target, self.len);
        }
        self.sizing.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn pattern(start: usize, len: usize) -> Vec<u8> {
        (start..start + len)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect()
    }

    #[test]
    fn new_allocates_nothing() {
        let b = SendBuffer::new(64 << 20);
        assert_eq!(b.capacity_bytes(), 0);
        assert_eq!(b.free_space(), 64 << 20);
        assert!(b.is_empty());
    }

    #[test]
    fn push_takes_what_fits_and_ack_drops_the_front() {
        let mut b = SendBuffer::new(10);
        assert_eq!(b.push(b"hello world"), 10);
        assert_eq!(b.push(b"!"), 0);
        let mut out = [0u8; 4];
        assert_eq!(b.copy_at(6, &mut out), 4);
        assert_eq!(&out, b"worl");
        b.ack(6);
        assert_eq!(b.len(), 4);
        assert_eq!(b.copy_at(0, &mut out), 4);
        assert_eq!(&out, b"worl");
        assert_eq!(b.copy_at(4, &mut out), 0);
        assert_eq!(b.copy_at(usize::MAX, &mut out), 0);
        assert_eq!(b.slices_at(usize::MAX, usize::MAX), (&[][..], &[][..]));
        b.ack(usize::MAX);
        assert!(b.is_empty());
    }

    #[test]
    fn slices_wrap_around_the_ring() {
        let mut b = SendBuffer::new(ring::MIN_CAPACITY);
        let data = pattern(0, 2 * ring::MIN_CAPACITY);
        assert_eq!(b.push(&data[..3000]), 3000);
        b.ack(2000);
        assert_eq!(b.push(&data[3000..]), ring::MIN_CAPACITY - 1000);
        assert_eq!(b.capacity_bytes(), ring::MIN_CAPACITY);
        let (a, c) = b.slices_at(0, b.len());
        assert!(!c.is_empty(), "the data should wrap");
        assert_eq!([a, c].concat(), &data[2000..2000 + ring::MIN_CAPACITY]);
        let mut out = vec![0; 3000];
        assert_eq!(b.copy_at(1000, &mut out), 3000);
        assert_eq!(out, &data[3000..6000]);
    }

    #[test]
    fn set_limit_never_goes_below_what_is_held() {
        let mut b = SendBuffer::new(100);
        b.push(&[1; 60]);
        b.set_limit(10);
        assert_eq!(b.limit(), 60);
        assert_eq!(b.free_space(), 0);
        b.set_limit(1000);
        assert_eq!(b.push(&[2; 500]), 500);
    }

    #[test]
    fn memory_grows_with_data_and_is_given_back_after_draining() {
        let mut b = SendBuffer::new(64 << 20);
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut caps = vec![];
        for _ in 0..64 {
            b.push(&chunk);
            caps.push(b.capacity_bytes());
        }
        assert!(caps.windows(2).all(|w| w[0] <= w[1]));
        assert!(caps[0] < 128 * 1024, "first chunk took {}", caps[0]);
        assert!(b.capacity_bytes() >= 4 << 20 && b.capacity_bytes() <= 8 << 20);
        b.ack(b.len());
        // A drained bulk transfer keeps its buffer until the engine says the connection is idle...
        assert!(b.capacity_bytes() >= 4 << 20);
        b.shrink();
        assert_eq!(b.capacity_bytes(), 0);

        // Small drains after a big one do not reallocate; the idle shrink gives it all back.
        for _ in 0..64 {
            b.push(&chunk);
        }
        b.ack(b.len());
        for _ in 0..8 {
            b.push(&chunk[..1000]);
            b.ack(1000);
        }
        assert!(b.capacity_bytes() >= 4 << 20);
        b.shrink();
        assert_eq!(b.capacity_bytes(), 0);
    }

    #[test]
    fn steady_small_messages_do_not_reallocate() {
        let mut b = SendBuffer::new(1 << 20);
        b.push(&[0; 3000]);
        b.ack(3000);
        let cap = b.capacity_bytes();
        for _ in 0..1000 {
            b.push(&[1; 3000]);
            b.ack(3000);
            assert_eq!(b.capacity_bytes(), cap);
        }
    }

    /// 100 MB through the buffer the way a connection uses it: the app fills, segments are
    /// copied out, ACKs drop the front. Catches accidental quadratic behaviour.
    #[test]
    fn hundred_megabytes_stream_through() {
        const TOTAL: usize = 100 << 20;
        const MSS: usize = 1448;
        let mut b = SendBuffer::new(4 << 20);
        let app = pattern(0, 256 * 1024 + 7);
        let mut written = 0;
        let mut sent = 0; // offset of the next unsent byte, from SND.UNA
        let mut acked = 0;
        let mut seg = [0u8; MSS];
        let mut sum = 0u64;
        while acked < TOTAL {
            while written < TOTAL {
                let want = (TOTAL - written).min(app.len() - written % 7);
                let n = b.push(&app[written % 7..written % 7 + want]);
                written += n;
                if n < want {
                    break;
                }
            }
            for _ in 0..64 {
                let n = b.copy_at(sent, &mut seg);
                if n == 0 {
                    break;
                }
                sum = sum.wrapping_add(seg[n - 1] as u64);
                sent += n;
            }
            let n = sent.min(40 * MSS);
            b.ack(n);
            sent -= n;
            acked += n;
        }
        assert_eq!(acked, TOTAL);
        assert!(b.is_empty());
        assert_ne!(sum, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Ack(usize),
        Copy(usize, usize),
        SetLimit(usize),
        Shrink,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..20_000).prop_map(Op::Push),
            3 => (0usize..20_000).prop_map(Op::Ack),
            3 => (0usize..40_000, 0usize..20_000).prop_map(|(o, l)| Op::Copy(o, l)),
            1 => (0usize..100_000).prop_map(Op::SetLimit),
            1 => Just(Op::Shrink),
        ]
    }

    proptest! {
        /// The buffer behaves like a `VecDeque<u8>` capped at the limit.
        #[test]
        fn matches_a_vecdeque(ops in proptest::collection::vec(op(), 1..200)) {
            let mut b = SendBuffer::new(30_000);
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut limit = 30_000usize;
            let mut max_limit = limit;
            let mut next = 0usize; // stream position of the next byte pushed
            for op in ops {
                match op {
                    Op::Push(n) => {
                        let data = pattern(next, n);
                        let took = b.push(&data);
                        prop_assert_eq!(took, n.min(limit - model.len()));
                        model.extend(&data[..took]);
                        next += took;
                    }
                    Op::Ack(n) => {
                        b.ack(n);
                        model.drain(..n.min(model.len()));
                    }
                    Op::Copy(off, len) => {
                        let mut out = vec![0u8; len];
                        let n = b.copy_at(off, &mut out);
                        let want: Vec<u8> = model.iter().skip(off).take(len).copied().collect();
                        prop_assert_eq!(&out[..n], &want[..]);
                        let (x, y) = b.slices_at(off, len);
                        prop_assert_eq!([x, y].concat(), want);
                    }
                    Op::SetLimit(l) => {
                        b.set_limit(l);
                        limit = l.max(model.len());
                        max_limit = max_limit.max(limit);
                    }
                    Op::Shrink => b.shrink(),
                }
                prop_assert_eq!(b.len(), model.len());
                prop_assert_eq!(b.limit(), limit);
                prop_assert_eq!(b.free_space(), limit - model.len());
                prop_assert!(b.capacity_bytes() >= model.len());
                prop_assert!(b.capacity_bytes() <= max_limit);
            }
        }
    }
}
