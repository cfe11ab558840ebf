//! A hashed hierarchical timing wheel: the per-core timer store for connections.
//!
//! Each entry is `(at, id, gen)`: a deadline, the connection it belongs to and a generation the
//! connection uses to recognise stale entries. There is no cancel: rescheduling a connection
//! just inserts again, and when an old entry expires the caller compares its `(id, gen)` (or
//! `at`) with the connection's current deadline and drops it ("lazy cancellation"). That keeps
//! `schedule` O(1) with no handle to keep and no lookup.
//!
//! ## Layout
//!
//! Time is counted in ticks of `tick` since the `now` given to [`TimerWheel::new`]. There are
//! [`LEVELS`] levels of 64 slots; level `k` slot `s` covers 64^k ticks. An entry is filed by the
//! highest base-64 digit in which its tick differs from the current tick: level 0 holds the
//! entries due in the current 64-tick block, level 1 those due in the current 4096-tick block,
//! and so on. Eleven levels cover the whole `u64` tick range, so no overflow list is needed and
//! a deadline hours (or years) away is as cheap as one microseconds away.
//!
//! When the current tick reaches the start of an occupied slot at level `k > 0`, the slot's
//! entries are filed again ("cascade") at lower levels. An entry cascades at most once per level.
//!
//! ## Costs
//!
//! - [`schedule`](TimerWheel::schedule): O(1); entries live in a slab reused through a free
//!   list, so only growth of the slab allocates.
//! - [`expire`](TimerWheel::expire): O(1 + due entries + cascaded entries). It jumps from one
//!   occupied slot to the next through a 64-bit occupancy bitmap per level, never tick by tick,
//!   so a `now` that jumped by hours costs no more than one that moved by a tick.
//! - [`next_deadline`](TimerWheel::next_deadline): O(levels), a few bitmap tests. It is exact:
//!   each slot remembers the earliest `at` filed in it.
//!
//! ## Timing contract
//!
//! `expire(now)` returns every entry with `at <= now`, and none with `at > now`: never early
//! and, when called at [`next_deadline`](TimerWheel::next_deadline), never late. The tick only
//! sets the granularity of the slots; entries due within one tick share a slot. Deadlines in
//! the past (before the last `expire`, or before `new`) are returned by the next `expire`. A
//! `now` earlier than a previous one is allowed and returns only entries due by then.

use super::time::Instant;
use std::time::Duration;

/// The tick suggested for connection timers: fine enough for pacing, coarse enough that most
/// timers of a busy core share slots.
pub const DEFAULT_TICK: Duration = Duration::from_micros(100);

/// Levels of the wheel: 11 × 6 bits ≥ 64 bits of tick count, so every deadline fits.
pub const LEVELS: usize = 11;

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const NIL: u32 = u32::MAX;

/// One entry [`TimerWheel::expire_entries`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Expired {
    /// The deadline it was scheduled for.
    pub at: Instant,
    /// The connection.
    pub id: u32,
    /// The generation it was scheduled with.
    pub gen: u32,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    at_ns: u64,
    /// `at` in ticks since the wheel's start, clamped to the current tick when in the past.
    when: u64,
    id: u32,
    gen: u32,
    /// Next node in the same slot, or in the free list.
    next: u32,
}

/// Timers for the connections of one core. See the [module docs](self) for the design.
#[derive(Debug)]
pub struct TimerWheel {
    start_ns: u64,
    tick_ns: u64,
    /// The current tick: every entry is due at or after it.
    elapsed: u64,
    /// First node of each slot's list.
    heads: [[u32; SLOTS]; LEVELS],
    /// Earliest `at` (ns) in each occupied slot.
    min_at: [[u64; SLOTS]; LEVELS],
    /// Which slots of each level are occupied.
    occupied: [u64; LEVELS],
    nodes: Vec<Node>,
    free: u32,
    len: usize,
    /// Slots emptied by `expire` (fired or cascaded), for tests to check work is not per tick.
    slot_visits: u64,
}

impl TimerWheel {
    /// An empty wheel whose tick 0 starts at `now`. A zero `tick` is taken as 1 ns.
    pub fn new(now: Instant, tick: Duration) -> Self {
        TimerWheel {
            start_ns: now.as_nanos(),
            tick_ns: tick.as_nanos().clamp(1, u64::MAX as u128) as u64,
            elapsed: 0,
            heads: [[NIL; SLOTS]; LEVELS],
            min_at: [[u64::MAX; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            // Room for a busy core's timers up front, so steady state never grows the slab.
            nodes: Vec::with_capacity(1024),
            free: NIL,
            len: 0,
            slot_visits: 0,
        }
    }

    /// The tick length.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_ns)
    }

    /// Entries scheduled and not yet expired, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_of(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.start_ns) / self.tick_ns
    }

    /// Adds an entry due at `at` for connection `id` with generation `gen`. O(1). Earlier entries
    /// for the same `id` stay and expire too (see the module docs on lazy cancellation).
    pub fn schedule(&mut self, at: Instant, id: u32, gen: u32) {
        let at_ns = at.as_nanos();
        let node = Node {
            at_ns,
            when: self.tick_of(at_ns).max(self.elapsed),
            id,
            gen,
            next: NIL,
        };
        let idx = if self.free != NIL {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            idx
        } else {
            // More than 4 billion pending timers on one core would be a bug elsewhere.
            debug_assert!(self.nodes.len() < NIL as usize);
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.len += 1;
        self.file(idx);
    }

    /// Puts node `idx` into the slot its tick belongs to, relative to the current tick.
    fn file(&mut self, idx: u32) {
        let Node { when, at_ns, .. } = self.nodes[idx as usize];
        debug_assert!(when >= self.elapsed);
        let differing = (when ^ self.elapsed) | (SLOTS as u64 - 1);
        let level = ((63 - differing.leading_zeros()) / SLOT_BITS) as usize;
        let slot = ((when >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1);
        self.nodes[idx as usize].next = self.heads[level][slot];
        self.heads[level][slot] = idx;
        let bit = 1u64 << slot;
        if self.occupied[level] & bit == 0 {
            self.occupied[level] |= bit;
            self.min_at[level][slot] = at_ns;
        } else {
            self.min_at[level][slot] = self.min_at[level][slot].min(at_ns);
        }
    }

    /// The earliest occupied slot: the lowest one of the lowest occupied level. Entries at a
    /// lower level are all due before those at a higher one (they share more leading digits
    /// with the current tick), and within a level occupied slots are never behind the current
    /// tick's digit, so no rotation is needed.
    fn next_slot(&self) -> Option<(usize, usize)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        Some((level, self.occupied[level].trailing_zeros() as usize))
    }

    /// The first tick of `slot` at `level`, in the block of the current tick.
    fn slot_start(&self, level: usize, slot: usize) -> u64 {
        let shift = level as u32 * SLOT_BITS;
        let block_bits = shift + SLOT_BITS;
        let base = if block_bits >= 64 {
            0
        } else {
            self.elapsed & !((1u64 << block_bits) - 1)
        };
        base + ((slot as u64) << shift)
    }

    /// The earliest deadline scheduled (stale entries included), or `None` when empty. Exact:
    /// sleeping until it and then calling [`expire`](Self::expire) returns that entry.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (level, slot) = self.next_slot()?;
        Some(Instant::from_nanos(self.min_at[level][slot]))
    }

    /// Appends `(id, gen)` of every entry with `at <= now` to `out` and removes them.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(u32, u32)>) {
        self.expire_with(now, |e| out.push((e.id, e.gen)));
    }

    /// Like [`expire`](Self::expire), with each entry's deadline.
    pub fn expire_entries(&mut self, now: Instant, out: &mut Vec<Expired>) {
        self.expire_with(now, |e| out.push(e));
    }

    fn expire_with(&mut self, now: Instant, mut fire: impl FnMut(Expired)) {
        let now_ns = now.as_nanos();
        // An earlier `now` than before still fires what is due by then, and moves nothing back.
        let now_tick = self.tick_of(now_ns).max(self.elapsed);
        while let Some((level, slot)) = self.next_slot() {
            let start = self.slot_start(level, slot);
            if start > now_tick {
                break;
            }
            // A level-0 slot before the current tick is wholly due; only the current tick's slot
            // can hold entries due later within the tick.
            if level == 0 && self.min_at[0][slot] > now_ns {
                debug_assert_eq!(start, now_tick);
                break;
            }
            let mut idx = std::mem::replace(&mut self.heads[level][slot], NIL);
            self.occupied[level] &= !(1u64 << slot);
            self.slot_visits += 1;
            debug_assert!(start >= self.elapsed);
            self.elapsed = start;
            while idx != NIL {
                let node = self.nodes[idx as usize];
                if level == 0 && node.at_ns <= now_ns {
                    fire(Expired {
                        at: Instant::from_nanos(node.at_ns),
                        id: node.id,
                        gen: node.gen,
                    });
                    self.nodes[idx as usize].next = self.free;
                    self.free = idx;
                    self.len -= 1;
                } else {
                    // Cascade to a lower level, or (level 0) back into this slot, due later
                    // within the current tick.
                    self.file(idx);
                }
                idx = node.next;
            }
        }
        // Every occupied slot now starts after `now_tick` (or is the current tick's, due later
        // within it), so the current tick may move there without skipping any.
        self.elapsed = now_tick;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn t(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    fn expire(w: &mut TimerWheel, now: u64) -> Vec<(u32, u32)> {
        let mut out = vec![];
        w.expire(t(now), &mut out);
        out.sort();
        out
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = TimerWheel::new(t(0), DEFAULT_TICK);
        w.schedule(t(250 * US), 1, 0);
        w.schedule(t(200 * MS), 2, 0);
        assert_eq!(w.next_deadline(), Some(t(250 * US)));
        assert_eq!(expire(&mut w, 249 * US), vec![]);
        assert_eq!(expire(&mut w, 250 * US), vec![(1, 0)]);
        assert_eq!(w.next_deadline(), Some(t(200 * MS)));
        assert_eq!(expire(&mut w, 200 * MS - 1), vec![]);
        assert_eq!(w.next_deadline(), Some(t(200 * MS)));
        assert_eq!(expire(&mut w, 200 * MS), vec![(2, 0)]);
        assert_eq!(w.next_deadline(), None);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_within_one_tick_fire_separately() {
        let mut w = TimerWheel::new(t(0), DEFAULT_TICK);
        w.schedule(t(10 * US), 1, 0);
        w.schedule(t(60 * US), 2, 0);
        assert_eq!(expire(&mut w, 30 * US), vec![(1, 0)]);
        assert_eq!(w.next_deadline(), Some(t(60 * US)));
        assert_eq!(expire(&mut w, 59 * US), vec![]);
        assert_eq!(expire(&mut w, 60 * US), vec![(2, 0)]);
    }

    #[test]
    fn rescheduling_leaves_the_old_entry_to_expire() {
        let mut w = TimerWheel::new(t(0), DEFAULT_TICK);
        w.schedule(t(5 * MS), 7, 1);
        w.schedule(t(9 * MS), 7, 2);
        assert_eq!(w.len(), 2);
        let mut out = vec![];
        w.expire_entries(t(10 * MS), &mut out);
        out.sort_by_key(|e| e.at);
        assert_eq!(
            out,
            vec![
                Expired {
                    at: t(5 * MS),
                    id: 7,
                    gen: 1
                },
                Expired {
                    at: t(9 * MS),
                    id: 7,
                    gen: 2
                }
            ]
        );
    }

    #[test]
    fn past_deadlines_fire_on_the_next_call() {
        let mut w = TimerWheel::new(t(SEC), DEFAULT_TICK);
        w.schedule(t(0), 1, 0); // before the wheel's start
        assert_eq!(expire(&mut w, 2 * SEC), vec![(1, 0)]);
        w.schedule(t(SEC), 2, 0); // before the last expire
        w.schedule(t(2 * SEC + 1), 3, 0);
        assert_eq!(w.next_deadline(), Some(t(SEC)));
        assert_eq!(expire(&mut w, 2 * SEC), vec![(2, 0)]);
        // A `now` that went backwards fires what is due by then and nothing else.
        w.schedule(t(SEC + 5), 4, 0);
        assert_eq!(expire(&mut w, SEC + 5), vec![(4, 0)]);
        assert_eq!(expire(&mut w, 2 * SEC + 1), vec![(3, 0)]);
    }

    #[test]
    fn far_deadlines_and_long_idle_jumps_cost_slots_not_ticks() {
        let mut w = TimerWheel::new(t(0), DEFAULT_TICK);
        let deadlines = [
            US,
            3 * MS,
            5 * SEC,
            2 * 3600 * SEC,
            40 * 86_400 * SEC,
            u64::MAX,
        ];
        for (id, &at) in deadlines.iter().enumerate() {
            w.schedule(t(at), id as u32, 0);
        }
        for (id, &at) in deadlines.iter().enumerate() {
            assert_eq!(w.next_deadline(), Some(t(at)));
            assert_eq!(expire(&mut w, at - 1), vec![]);
            assert_eq!(expire(&mut w, at), vec![(id as u32, 0)]);
        }
        // Many entries, then an idle jump of hours (10^11 ticks): work is a few slot visits per
        // entry (one per level it cascades through), not one per tick.
        let mut w = TimerWheel::new(t(0), DEFAULT_TICK);
        for k in 0..10_000u64 {
            w.schedule(t(k * 997 * MS), k as u32, 0);
        }
        let out = expire(&mut w, 10_000 * SEC);
        assert_eq!(out.len(), 10_000);
        assert!(
            w.slot_visits < 10_000 * LEVELS as u64,
            "{} visits",
            w.slot_visits
        );
        let before = w.slot_visits;
        assert_eq!(expire(&mut w, 10_000_000 * SEC), vec![]);
        assert_eq!(w.slot_visits, before);
    }

    #[test]
    fn slab_entries_are_reused() {
        let mut w = TimerWheel::new(t(0), DEFAULT_TICK);
        let mut out = vec![];
        for round in 0..100u64 {
            for id in 0..50 {
                w.schedule(t(round * MS + id as u64 * US), id, round as u32);
            }
            w.expire(t((round + 1) * MS), &mut out);
        }
        assert_eq!(out.len(), 5000);
        assert_eq!(w.nodes.len(), 50);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Schedule at `now + delta` (negative: in the past).
        Schedule { delta: i64, id: u32 },
        /// Move `now` forward and expire.
        Advance(u64),
        /// Expire at an earlier `now` than the last one.
        Backwards(u64),
    }

    fn span() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..2 * US,
            0..300 * US,
            0..50 * MS,
            0..20 * SEC,
            0..5 * 3600 * SEC,
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (span(), any::<bool>(), 0u32..64).prop_map(|(d, neg, id)| Op::Schedule {
                delta: if neg { -((d / 8) as i64) } else { d as i64 },
                id,
            }),
            3 => span().prop_map(Op::Advance),
            1 => (0..MS).prop_map(Op::Backwards),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Against a binary heap: the same entries expire at each step, none early, none late,
        /// and `next_deadline` is the heap's minimum.
        #[test]
        fn matches_a_binary_heap(
            tick_us in prop_oneof![Just(100u64), 1u64..5000],
            start in 0u64..10 * SEC,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut w = TimerWheel::new(t(start), Duration::from_micros(tick_us));
            let mut heap = BinaryHeap::new();
            let mut now = start;
            let mut gen = 0u32;
            for op in ops {
                let expire_at = match op {
                    Op::Schedule { delta, id } => {
                        let at = now.saturating_add_signed(delta);
                        gen += 1;
                        w.schedule(t(at), id, gen);
                        heap.push(Reverse((at, id, gen)));
                        None
                    }
                    Op::Advance(d) => {
                        now += d;
                        Some(now)
                    }
                    Op::Backwards(d) => Some(now.saturating_sub(d)),
                };
                if let Some(at_now) = expire_at {
                    let mut got = vec![];
                    w.expire_entries(t(at_now), &mut got);
                    let mut got: Vec<_> = got.iter().map(|e| (e.at.as_nanos(), e.id, e.gen)).collect();
                    got.sort();
                    let mut want = vec![];
                    while let Some(&Reverse(e)) = heap.peek() {
                        if e.0 > at_now {
                            break;
                        }
                        want.push(e);
                        heap.pop();
                    }
                    want.sort();
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(w.len(), heap.len());
                prop_assert_eq!(w.next_deadline(), heap.peek().map(|r| t(r.0 .0)));
            }
        }
    }
}
