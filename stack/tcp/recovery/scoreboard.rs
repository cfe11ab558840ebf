//! The sender's scoreboard (RFC 6675 §3): one record per segment in flight, oldest first.
//!
//! A record covers `[start, end)` of sequence space (a FIN counts one) and says when it was last
//! sent, whether it was SACKed, marked lost or retransmitted, and the delivery-rate snapshot of
//! its last transmission. Records are contiguous and ordered by sequence number; a cumulative
//! ACK pops them from the front. SACK blocks that cut a record in two (a peer with another MSS,
//! a partial retransmission) split it; nothing else changes the layout.
//!
//! Byte counters kept in step with the marks give Linux's in-flight formula in O(1):
//! `in_flight = outstanding - sacked - lost + retrans` (a lost segment that was retransmitted
//! counts once, a retransmission of a segment not marked lost counts twice, as RFC 6675's `pipe`).
//!
//! A second order, by send time, links the records RACK must examine (Linux's
//! `tsorted_sent_queue`): those in flight, not SACKed and not lost-waiting-for-retransmission.
//! A first transmission joins at the tail, a retransmission moves to the tail, a SACK, a
//! cumulative ACK or a loss mark takes the record out. RACK walks it from the oldest and stops at
//! the first record sent after the most recently delivered one, so an ACK costs the holes
//! below that point, not the whole flight. It is an index-linked list in a slab (each record
//! holds its node), so linking and unlinking are O(1) and allocate nothing once the slab has
//! grown.
//!
//! Memory: a `VecDeque` and the slab, both grown with the window and reused;
//! [`Scoreboard::shrink`] gives them back when the connection goes idle. Costs: cumulative ACK
//! O(records acked); a SACK block O(log n + records it newly covers) — blocks already seen on
//! the previous ACK are skipped (a "SACK cache", as Linux keeps one), so a growing block costs
//! only its new part; a (re)transmission, loss mark or split O(1) more for the send-time order;
//! undoing loss marks ([`Scoreboard::clear_lost`]) and reneging ([`Scoreboard::clear_sacks`])
//! rebuild it in place, O(n log n), both rare.

use super::rate::TxSnapshot;
use crate::stack::tcp::seq::Seq;
use crate::stack::tcp::time::Instant;
use std::cell::Cell;
use std::collections::VecDeque;

/// The receiver has the segment (SACKed).
pub const SACKED: u8 = 1;
/// Marked lost (by RACK, DupThresh or a timeout) and not SACKed since.
pub const LOST: u8 = 2;
/// Retransmitted, and that retransmission is still counted in flight.
pub const RETRANS: u8 = 4;
/// Retransmitted at least once.
pub const EVER_RETRANS: u8 = 8;

/// One segment in flight.
#[derive(Clone, Copy, Debug)]
pub struct SentSeg {
    /// First sequence number.
    pub start: Seq,
    /// One past the last sequence number (FIN included).
    pub end: Seq,
    /// The segment carries the FIN (its last sequence number).
    pub fin: bool,
    /// Marks ([`SACKED`], [`LOST`], [`RETRANS`], [`EVER_RETRANS`]).
    pub flags: u8,
    /// Last (re)transmission.
    pub sent_at: Instant,
    /// Delivery-rate snapshot of that transmission.
    pub tx: TxSnapshot,
    /// Its node in the send-time order, [`NIL`] when not there.
    node: u32,
}

impl SentSeg {
    /// Sequence space the record covers.
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Covers nothing (never stored).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether mark `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// What the send-time order keeps of it.
    fn entry(&self) -> SentEntry {
        SentEntry {
            start: self.start,
            end: self.end,
            flags: self.flags,
            sent_at: self.sent_at,
        }
    }
}

/// No node.
const NIL: u32 = u32::MAX;

/// Whether RACK examines a record with these marks: in flight and not SACKed, and not lost
/// and waiting for its retransmission (RFC 8985 §6.2 step 5 skips those).
fn timed(flags: u8) -> bool {
    flags & SACKED == 0 && (flags & LOST == 0 || flags & RETRANS != 0)
}

/// What the send-time order knows of a record: what RACK needs to judge it, so a walk reads
/// the slab only. The marks cannot change while a record is in the order (every change takes
/// it out, or re-sends it and so re-links it); `start` finds the record again (records are
/// ordered by sequence number, so that is a binary search).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentEntry {
    /// The record's first sequence number.
    pub start: Seq,
    /// One past its last.
    pub end: Seq,
    /// Its marks.
    pub flags: u8,
    /// Its last (re)transmission.
    pub sent_at: Instant,
}

/// One record's place in the send-time order.
#[derive(Clone, Copy, Debug)]
struct Node {
    prev: u32,
    next: u32,
    e: SentEntry,
}

/// A doubly linked list of records by send time, its nodes in a slab with a free list.
#[derive(Clone, Debug)]
struct SendOrder {
    nodes: Vec<Node>,
    /// First free node (linked through `next`).
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
}

impl Default for SendOrder {
    fn default() -> Self {
        SendOrder {
            nodes: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl SendOrder {
    /// Links a new node after `after` ([`NIL`]: at the head). Returns it.
    fn insert_after(&mut self, after: u32, e: SentEntry) -> u32 {
        let next = if after == NIL {
            self.head
        } else {
            self.nodes[after as usize].next
        };
        let node = Node {
            prev: after,
            next,
            e,
        };
        let n = if self.free != NIL {
            let n = self.free;
            self.free = self.nodes[n as usize].next;
            self.nodes[n as usize] = node;
            n
        } else {
            // Amortised growth only: a steady window reuses the slab.
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        if after == NIL {
            self.head = n;
        } else {
            self.nodes[after as usize].next = n;
        }
        if next == NIL {
            self.tail = n;
        } else {
            self.nodes[next as usize].prev = n;
        }
        self.len += 1;
        n
    }

    /// Links a node at its place by send time: the tail, unless the clock went backwards.
    fn insert_sorted(&mut self, e: SentEntry) -> u32 {
        let mut after = self.tail;
        while after != NIL && self.nodes[after as usize].e.sent_at > e.sent_at {
            after = self.nodes[after as usize].prev;
        }
        self.insert_after(after, e)
    }

    /// Unlinks node `n` and frees it.
    fn remove(&mut self, n: u32) {
        let Node { prev, next, .. } = self.nodes[n as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[n as usize].next = self.free;
        self.nodes[n as usize].prev = NIL;
        self.free = n;
        self.len -= 1;
    }

    /// Empties the list, keeping the slab.
    fn clear(&mut self) {
        self.nodes.clear();
        self.free = NIL;
        self.head = NIL;
        self.tail = NIL;
        self.len = 0;
    }

    /// The node after `n`, if any.
    fn next(&self, n: u32) -> Option<u32> {
        Some(self.nodes[n as usize].next).filter(|&m| m != NIL)
    }
}

/// A place in the send-time order (see [`Scoreboard::first_sent`]); valid until the scoreboard
/// next changes, except that marking the record it stands for lost leaves the cursors of the
/// other records valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentCursor(u32);

/// What one ACK did to the scoreboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Bytes newly cumulatively acknowledged that were not SACKed before.
    pub acked: u64,
    /// Bytes newly SACKed.
    pub sacked: u64,
    /// The first block was a D-SACK (RFC 2883): `(start, end)`.
    pub dsack: Option<(Seq, Seq)>,
    /// Bytes newly delivered that were never retransmitted and lie before `high_seq` given to
    /// [`Scoreboard::on_ack`] (F-RTO's "original data acknowledged").
    pub orig_delivered: u64,
    /// A record that had been SACKed was cumulatively acknowledged (its bytes leave the SACKed
    /// count, not the delivered count).
    pub sacked_acked: u64,
}

/// Records of what is in flight. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Scoreboard {
    segs: VecDeque<SentSeg>,
    /// The records RACK examines, by send time.
    order: SendOrder,
    sacked: u64,
    lost: u64,
    retrans: u64,
    /// Highest SACKed sequence number (end of the highest SACKed record).
    high_sacked: Option<Seq>,
    /// SACK blocks of the previous ACK (already applied).
    cache: [(Seq, Seq); 4],
    cache_len: usize,
    /// No lost, not-yet-retransmitted record starts below this (`None`: none at all). A
    /// `Cell` because [`next_lost`](Self::next_lost), a query, moves it up to what it found.
    rtx_hint: Cell<Option<Seq>>,
}

impl Scoreboard {
    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// Record `i` (0 = oldest).
    pub fn get(&self, i: usize) -> Option<&SentSeg> {
        self.segs.get(i)
    }

    /// The last record (highest sequence numbers).
    pub fn last(&self) -> Option<&SentSeg> {
        self.segs.back()
    }

    /// Bytes SACKed and not yet cumulatively acknowledged.
    pub fn sacked_bytes(&self) -> u64 {
        self.sacked
    }

    /// Bytes marked lost and not SACKed.
    pub fn lost_bytes(&self) -> u64 {
        self.lost
    }

    /// Bytes of retransmissions still counted in flight.
    pub fn retrans_bytes(&self) -> u64 {
        self.retrans
    }

    /// Highest SACKed sequence number, if any.
    pub fn high_sacked(&self) -> Option<Seq> {
        self.high_sacked
    }

    /// Memory held, bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.segs.capacity() * std::mem::size_of::<SentSeg>()
            + self.order.nodes.capacity() * std::mem::size_of::<Node>()
    }

    /// Gives memory back (call when nothing is in flight).
    pub fn shrink(&mut self) {
        if self.segs.is_empty() {
            self.segs = VecDeque::new();
            self.order = SendOrder::default();
        }
    }

    /// The record sent longest ago among those RACK examines (in flight, not SACKed, not lost
    /// and waiting for retransmission). O(1).
    pub fn first_sent(&self) -> Option<SentCursor> {
        Some(SentCursor(self.order.head)).filter(|c| c.0 != NIL)
    }

    /// The next one by send time (ties: the order they were sent in). O(1).
    pub fn next_sent(&self, c: SentCursor) -> Option<SentCursor> {
        self.order.next(c.0).map(SentCursor)
    }

    /// The record at `c`, as far as RACK needs it. O(1).
    pub fn sent_entry(&self, c: SentCursor) -> SentEntry {
        self.order.nodes[c.0 as usize].e
    }

    /// The index of the record at `c`. O(log n).
    pub fn index_of(&self, c: SentCursor) -> usize {
        let start = self.order.nodes[c.0 as usize].e.start;
        let i = self.segs.partition_point(|s| s.start.lt(start));
        debug_assert_eq!(self.segs.get(i).map(|s| s.node), Some(c.0));
        i
    }

    /// Puts record `i` in or out of the send-time order after its marks changed without a new
    /// transmission: only ever out (SACKed, or lost and waiting).
    fn untime(&mut self, i: usize) {
        let s = &mut self.segs[i];
        if s.node != NIL && !timed(s.flags) {
            let n = s.node;
            s.node = NIL;
            self.order.remove(n);
        }
    }

    /// Rebuilds the send-time order from the records (after marks were cleared: rare), in the
    /// slab itself: no allocation beyond its growth.
    fn rebuild_order(&mut self) {
        let o = &mut self.order;
        o.clear();
        for (i, s) in self.segs.iter_mut().enumerate() {
            s.node = NIL;
            if timed(s.flags) {
                // `prev` holds the record's index until the nodes are linked.
                o.nodes.push(Node {
                    prev: i as u32,
                    next: NIL,
                    e: s.entry(),
                });
            }
        }
        // By send time; equal times in sequence order.
        o.nodes.sort_unstable_by_key(|n| (n.e.sent_at, n.prev));
        let len = o.nodes.len() as u32;
        for k in 0..len {
            let node = &mut o.nodes[k as usize];
            self.segs[node.prev as usize].node = k;
            node.prev = if k == 0 { NIL } else { k - 1 };
            node.next = if k + 1 == len { NIL } else { k + 1 };
        }
        if len > 0 {
            (o.head, o.tail) = (0, len - 1);
        }
        o.len = len as usize;
    }

    /// New data `[start, end)` went out for the first time.
    pub fn push(&mut self, start: Seq, end: Seq, fin: bool, now: Instant, tx: TxSnapshot) {
        if end.le(start) {
            return;
        }
        // Amortised growth only: a steady window reuses the ring.
        let mut s = SentSeg {
            start,
            end,
            fin,
            flags: 0,
            sent_at: now,
            tx,
            node: NIL,
        };
        s.node = self.order.insert_sorted(s.entry());
        self.segs.push_back(s);
    }

    /// Index of the record holding `seq`, if any.
    pub fn find(&self, seq: Seq) -> Option<usize> {
        let i = self.segs.partition_point(|s| s.end.le(seq));
        self.segs.get(i).filter(|s| s.start.le(seq)).map(|_| i)
    }

    /// Makes `seq` a record boundary (splits the record holding it).
    fn split_at(&mut self, seq: Seq) {
        let Some(i) = self.find(seq) else { return };
        let s = self.segs[i];
        if s.start == seq {
            return;
        }
        let mut tail = s;
        tail.start = seq;
        // Sent with the head: its place is right after it.
        if s.node != NIL {
            tail.node = self.order.insert_after(s.node, tail.entry());
            self.order.nodes[s.node as usize].e.end = seq;
        }
        self.segs[i].end = seq;
        self.segs[i].fin = false;
        self.segs.insert(i + 1, tail);
    }

    /// Record `i` is being retransmitted now as `len` bytes of sequence space from its start
    /// (a shorter length splits it). Returns the record as sent.
    pub fn retransmit(&mut self, i: usize, len: u32, now: Instant, tx: TxSnapshot) -> SentSeg {
        let s = self.segs[i];
        if len > 0 && len < s.len() {
            self.split_at(s.start + len);
        }
        let s = &mut self.segs[i];
        if !s.has(RETRANS) && !s.has(SACKED) {
            self.retrans += s.len() as u64;
        }
        s.flags |= RETRANS | EVER_RETRANS;
        s.sent_at = now;
        s.tx = tx;
        // Sent again: to the tail of the send-time order.
        if s.node != NIL {
            self.order.remove(s.node);
            s.node = NIL;
        }
        if timed(s.flags) {
            s.node = self.order.insert_sorted(s.entry());
        }
        let out = *s;
        // Only the first candidate moves the hint: a record resent out of turn (a tail loss
        // probe, RFC 6675 rule 3) may lie above lost records still waiting.
        if self.rtx_hint.get() == Some(out.start) {
            self.rtx_hint.set(Some(out.end));
        }
        out
    }

    /// Marks record `i` lost. Returns the bytes newly marked (0 if SACKed or already lost and
    /// not retransmitted since).
    pub fn mark_lost(&mut self, i: usize) -> u64 {
        let s = &mut self.segs[i];
        if s.has(SACKED) {
            return 0;
        }
        let len = s.len() as u64;
        if s.has(RETRANS) {
            // The retransmission is lost too: it no longer counts in flight.
            s.flags &= !RETRANS;
            self.retrans -= len;
        }
        let newly = if s.has(LOST) {
            0
        } else {
            s.flags |= LOST;
            self.lost += len;
            len
        };
        let start = s.start;
        if self.rtx_hint.get().is_none_or(|h| start.lt(h)) {
            self.rtx_hint.set(Some(start));
        }
        self.untime(i);
        newly
    }

    /// Whether record `i` was lost and then retransmitted (so marking it again is news).
    pub fn lost_retransmitted(&self, i: usize) -> bool {
        self.segs[i].has(LOST) && self.segs[i].has(RETRANS)
    }

    /// A retransmission timeout: every record not SACKed is lost, retransmissions included
    /// (Linux `tcp_enter_loss`). Returns (bytes, records) newly marked lost.
    pub fn mark_all_lost(&mut self) -> (u64, u64) {
        let (mut bytes, mut n) = (0, 0);
        for i in 0..self.segs.len() {
            let b = self.mark_lost(i);
            bytes += b;
            n += u64::from(b > 0);
        }
        (bytes, n)
    }

    /// A spurious loss verdict was undone: lost marks are cleared (F-RTO, Eifel).
    pub fn clear_lost(&mut self) {
        for s in self.segs.iter_mut() {
            s.flags &= !LOST;
        }
        self.lost = 0;
        self.rtx_hint.set(None);
        // The records that were waiting for retransmission are RACK's again.
        self.rebuild_order();
    }

    /// The peer dropped data it had SACKed (reneging, RFC 2018 §8): forget every SACK.
    pub fn clear_sacks(&mut self) {
        for s in self.segs.iter_mut() {
            s.flags &= !SACKED;
        }
        self.sacked = 0;
        self.high_sacked = None;
        self.cache_len = 0;
        // Records that were SACKed and lost-marked before are lost again.
        self.lost = self
            .segs
            .iter()
            .filter(|s| s.has(LOST))
            .map(|s| s.len() as u64)
            .sum();
        self.retrans = self
            .segs
            .iter()
            .filter(|s| s.has(RETRANS))
            .map(|s| s.len() as u64)
            .sum();
        self.rebuild_order();
    }

    /// The first record marked lost and not retransmitted since (RFC 6675 NextSeg rule 1).
    /// The search starts at a hint lowered by [`mark_lost`](Self::mark_lost) and raised by
    /// [`retransmit`](Self::retransmit) and by the search itself (to what it found, or past the
    /// last record), so a recovery walks the board once, not once per call: the sender asks on
    /// every transmit opportunity, mostly when nothing is lost beyond the hint.
    pub fn next_lost(&self) -> Option<usize> {
        let hint = self.rtx_hint.get()?;
        let from = self.segs.partition_point(|s| s.end.le(hint));
        let found = (from..self.segs.len()).find(|&i| {
            let s = &self.segs[i];
            s.has(LOST) && !s.has(RETRANS) && !s.has(SACKED)
        });
        let new_hint = match found {
            Some(i) => self.segs[i].start,
            None => self.segs.back().map_or(hint, |s| s.end),
        };
        if new_hint.gt(hint) {
            self.rtx_hint.set(Some(new_hint));
        }
        found
    }

    /// Joins the lost, never-retransmitted records after record `i` into it while it is
    /// shorter than `mss` (Linux `tcp_retrans_try_collapse`), so a retransmission after the
    /// MSS fell, or of pieces a SACK split, goes in full segments.
    pub fn coalesce(&mut self, i: usize, mss: u32) {
        let plain = |s: &SentSeg| s.flags & (SACKED | RETRANS) == 0 && s.has(LOST);
        while i + 1 < self.segs.len() {
            let (a, b) = (self.segs[i], self.segs[i + 1]);
            if a.fin
                || a.len() >= mss
                || !plain(&a)
                || !plain(&b)
                || a.has(EVER_RETRANS) != b.has(EVER_RETRANS)
            {
                return;
            }
            self.segs[i].end = b.end;
            self.segs[i].fin = b.fin;
            // Both lost and waiting, so neither is in the send-time order; be sure anyway.
            if b.node != NIL {
                self.order.remove(b.node);
            }
            self.segs.remove(i + 1);
        }
    }

    /// The first record that is not SACKed, not lost and not retransmitted and lies below the
    /// highest SACKed byte (RFC 6675 NextSeg rule 3).
    pub fn next_unsacked_below_high(&self) -> Option<usize> {
        let high = self.high_sacked?;
        self.segs
            .iter()
            .take_while(|s| s.start.lt(high))
            .position(|s| s.flags & (SACKED | LOST | RETRANS) == 0)
    }

    /// Bytes SACKed above `seq` (RFC 6675 `IsLost`: DupThresh segments' worth SACKed above a
    /// record means it is lost).
    pub fn sacked_above(&self, i: usize) -> u64 {
        self.segs
            .iter()
            .skip(i + 1)
            .filter(|s| s.has(SACKED))
            .map(|s| s.len() as u64)
            .sum()
    }

    /// Processes an ACK: cumulative `ack`, then the SACK `blocks` (as the peer sent them) for
    /// data below `snd_max`. `on_delivered` sees every record newly delivered (before its marks
    /// change). `high_seq` bounds what counts as `orig_delivered`.
    pub fn on_ack(
        &mut self,
        ack: Seq,
        blocks: &[(Seq, Seq)],
        snd_max: Seq,
        high_seq: Option<Seq>,
        mut on_delivered: impl FnMut(&SentSeg),
    ) -> AckOutcome {
        let mut out = AckOutcome::default();
        let orig = |s: &SentSeg, out: &mut AckOutcome| {
            if !s.has(EVER_RETRANS) && high_seq.is_some_and(|h| s.end.le(h)) {
                out.orig_delivered += s.len() as u64;
            }
        };
        // Cumulative part.
        while let Some(s) = self.segs.front() {
            if s.end.le(ack) {
                let s = self.segs.pop_front().expect("front");
                if s.node != NIL {
                    self.order.remove(s.node);
                }
                self.forget(&s);
                if s.has(SACKED) {
                    out.sacked_acked += s.len() as u64;
                } else {
                    out.acked += s.len() as u64;
                    orig(&s, &mut out);
                    on_delivered(&s);
                }
            } else if s.start.lt(ack) {
                // Partly acknowledged (the peer took part of a segment): trim it.
                let cut = ack - s.start;
                let s = self.segs.front_mut().expect("front");
                let f = s.flags;
                s.start = ack;
                if s.node != NIL {
                    self.order.nodes[s.node as usize].e.start = ack;
                }
                if f & SACKED != 0 {
                    self.sacked -= cut as u64;
                } else {
                    out.acked += cut as u64;
                    if f & LOST != 0 {
                        self.lost -= cut as u64;
                    }
                    if f & RETRANS != 0 {
                        self.retrans -= cut as u64;
                    }
                }
                break;
            } else {
                break;
            }
        }
        if self.segs.is_empty() {
            self.high_sacked = None;
            self.rtx_hint.set(None);
        }

        // SACK blocks.
        //= rfc2883#section-4
        // A D-SACK is the first block, and lies below the cumulative ACK or inside the second.
        let mut first = 0;
        if let Some(&(l, r)) = blocks.first() {
            let below = r.le(ack) || l.lt(ack);
            let inside = blocks.get(1).is_some_and(|&(l2, r2)| l2.le(l) && r.le(r2));
            if l.lt(r) && (below || inside) {
                out.dsack = Some((l, r));
                first = 1;
            }
        }
        let mut new_cache = [(Seq(0), Seq(0)); 4];
        let mut new_len = 0;
        for &(l, r) in blocks.iter().skip(first) {
            // Only blocks for data in flight above the cumulative ACK.
            let l = l.max(ack);
            let r = if r.gt(snd_max) { snd_max } else { r };
            if !l.lt(r) || r.le(ack) || l.gt(snd_max) {
                continue;
            }
            if new_len < new_cache.len() {
                new_cache[new_len] = (l, r);
                new_len += 1;
            }
            // The parts of this block the previous ACK did not already cover.
            let mut pieces = [(l, r); 5];
            let mut n = 1;
            for &(cl, cr) in &self.cache[..self.cache_len] {
                let mut next = [(Seq(0), Seq(0)); 5];
                let mut m = 0;
                for &(pl, pr) in &pieces[..n] {
                    if cr.le(pl) || pr.le(cl) {
                        next[m] = (pl, pr);
                        m += 1;
                        continue;
                    }
                    if pl.lt(cl) && m < 5 {
                        next[m] = (pl, cl);
                        m += 1;
                    }
                    if cr.lt(pr) && m < 5 {
                        next[m] = (cr, pr);
                        m += 1;
                    }
                }
                pieces = next;
                n = m;
            }
            for &(pl, pr) in &pieces[..n] {
                self.sack_range(pl, pr, &mut out, &mut on_delivered, high_seq);
            }
        }
        self.cache = new_cache;
        self.cache_len = new_len;
        out
    }

    fn sack_range(
        &mut self,
        l: Seq,
        r: Seq,
        out: &mut AckOutcome,
        on_delivered: &mut impl FnMut(&SentSeg),
        high_seq: Option<Seq>,
    ) {
        if self.segs.is_empty() {
            return;
        }
        let mut i = self.segs.partition_point(|s| s.end.le(l));
        while i < self.segs.len() && self.segs[i].start.lt(r) {
            let s = self.segs[i];
            if s.has(SACKED) {
                i += 1;
                continue;
            }
            // Only whole records are SACKed: cut the record at the block's edges first.
            if s.start.lt(l) {
                self.split_at(l);
                i += 1;
                continue;
            }
            if r.lt(s.end) {
                self.split_at(r);
            }
            let s = self.segs[i];
            on_delivered(&s);
            if !s.has(EVER_RETRANS) && high_seq.is_some_and(|h| s.end.le(h)) {
                out.orig_delivered += s.len() as u64;
            }
            let len = s.len() as u64;
            if s.has(LOST) {
                self.lost -= len;
            }
            if s.has(RETRANS) {
                self.retrans -= len;
            }
            self.segs[i].flags = (s.flags | SACKED) & !(LOST | RETRANS);
            self.untime(i);
            self.sacked += len;
            out.sacked += len;
            if self.high_sacked.is_none_or(|h| h.lt(s.end)) {
                self.high_sacked = Some(s.end);
            }
            i += 1;
        }
    }

    /// Takes a record that leaves the board out of the counters.
    fn forget(&mut self, s: &SentSeg) {
        let len = s.len() as u64;
        if s.has(SACKED) {
            self.sacked -= len;
        } else {
            if s.has(LOST) {
                self.lost -= len;
            }
            if s.has(RETRANS) {
                self.retrans -= len;
            }
        }
    }

    /// Recomputes the counters from the records (tests and debug checks).
    pub fn check(&self) -> bool {
        let (mut sacked, mut lost, mut retrans) = (0, 0, 0);
        let mut prev: Option<Seq> = None;
        for s in &self.segs {
            if prev.is_some_and(|p| p != s.start) || !s.start.lt(s.end) {
                return false;
            }
            prev = Some(s.end);
            let len = s.len() as u64;
            if s.has(SACKED) {
                sacked += len;
                if s.has(LOST) || s.has(RETRANS) {
                    return false;
                }
            }
            if s.has(LOST) {
                lost += len;
            }
            if s.has(RETRANS) {
                retrans += len;
            }
        }
        (sacked, lost, retrans) == (self.sacked, self.lost, self.retrans) && self.check_order()
    }

    /// The send-time order holds exactly the records RACK examines, each node naming its
    /// record, sorted by send time, linked both ways; the rest of the slab is free.
    fn check_order(&self) -> bool {
        let o = &self.order;
        let mut n = o.head;
        let mut prev = NIL;
        let mut count = 0;
        let mut last_sent: Option<Instant> = None;
        while n != NIL {
            if count > o.len || n as usize >= o.nodes.len() {
                return false;
            }
            let node = o.nodes[n as usize];
            let i = self.segs.partition_point(|s| s.start.lt(node.e.start));
            let ok = node.prev == prev
                && last_sent.is_none_or(|t| t <= node.e.sent_at)
                && self
                    .segs
                    .get(i)
                    .is_some_and(|s| s.node == n && s.entry() == node.e);
            if !ok {
                return false;
            }
            last_sent = Some(node.e.sent_at);
            count += 1;
            prev = n;
            n = node.next;
        }
        let mut free = 0;
        let mut f = o.free;
        while f != NIL {
            if free > o.nodes.len() || f as usize >= o.nodes.len() {
                return false;
            }
            free += 1;
            f = o.nodes[f as usize].next;
        }
        let members = self.segs.iter().filter(|s| s.node != NIL).count();
        let should = self.segs.iter().filter(|s| timed(s.flags)).count();
        o.tail == prev
            && count == o.len
            && members == count
            && should == count
            && free + count == o.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(n: u32) -> Scoreboard {
        let mut b = Scoreboard::default();
        for i in 0..n {
            let at = Instant::from_millis(i as u64);
            b.push(
                Seq(i * 100),
                Seq(i * 100 + 100),
                false,
                at,
                TxSnapshot::default(),
            );
        }
        b
    }

    /// Starts of the records in the send-time order, oldest transmission first.
    fn order(b: &Scoreboard) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = b.first_sent();
        while let Some(x) = c {
            out.push(b.sent_entry(x).start.0);
            c = b.next_sent(x);
        }
        out
    }

    #[test]
    fn send_time_order_follows_transmissions_and_marks() {
        let ms = Instant::from_millis;
        let mut b = board(5);
        assert_eq!(order(&b), [0, 100, 200, 300, 400]);
        // A retransmission moves to the tail; the rest of a partial one keeps its place.
        b.retransmit(1, 40, ms(9), TxSnapshot::default());
        assert_eq!(order(&b), [0, 140, 200, 300, 400, 100]);
        assert!(b.check());
        // SACKed and lost records leave; a lost retransmission leaves until resent.
        b.on_ack(Seq(0), &[(Seq(200), Seq(300))], Seq(500), None, |_| {});
        assert_eq!(order(&b), [0, 140, 300, 400, 100]);
        b.mark_lost(b.find(Seq(300)).unwrap());
        b.mark_lost(b.find(Seq(100)).unwrap());
        assert_eq!(order(&b), [0, 140, 400]);
        assert!(b.check());
        // Cumulative ACK: acked records leave, a trimmed one keeps its entry.
        b.retransmit(b.find(Seq(100)).unwrap(), 40, ms(10), TxSnapshot::default());
        b.on_ack(Seq(120), &[], Seq(500), None, |_| {});
        assert_eq!(order(&b), [140, 400, 120]);
        assert!(b.check());
        // Undo and reneging bring records back, by send time.
        b.mark_lost(b.find(Seq(120)).unwrap());
        b.clear_lost();
        assert_eq!(order(&b), [140, 300, 400, 120]);
        b.clear_sacks();
        assert_eq!(order(&b), [140, 200, 300, 400, 120]);
        assert!(b.check());
        // A timeout leaves nothing for RACK; the slab is reused, then given back.
        let cap = b.capacity_bytes();
        b.mark_all_lost();
        assert_eq!(order(&b), [] as [u32; 0]);
        b.push(Seq(500), Seq(600), false, ms(11), TxSnapshot::default());
        assert_eq!(order(&b), [500]);
        assert_eq!(b.capacity_bytes(), cap, "no growth for a freed node");
        assert!(b.check());
        b.on_ack(Seq(600), &[], Seq(600), None, |_| {});
        b.shrink();
        assert_eq!(b.capacity_bytes(), 0);
        assert!(b.check());
    }

    #[test]
    fn cumulative_ack_pops_and_trims() {
        let mut b = board(5);
        let mut seen = 0;
        let o = b.on_ack(Seq(250), &[], Seq(500), None, |_| seen += 1);
        assert_eq!(o.acked, 250);
        assert_eq!(seen, 2);
        assert_eq!(b.len(), 3);
        assert_eq!(b.get(0).unwrap().start, Seq(250));
        assert!(b.check());
    }

    #[test]
    fn sack_marks_whole_records_and_splits_at_edges() {
        let mut b = board(5);
        let o = b.on_ack(Seq(0), &[(Seq(150), Seq(300))], Seq(500), None, |_| {});
        assert_eq!(o.sacked, 150);
        assert_eq!(b.sacked_bytes(), 150);
        assert_eq!(b.len(), 6, "record 100..200 was split at 150");
        assert_eq!(b.high_sacked(), Some(Seq(300)));
        assert!(b.check());
        // The same block again (and a larger one) only counts what is new.
        let o = b.on_ack(Seq(0), &[(Seq(150), Seq(400))], Seq(500), None, |_| {});
        assert_eq!(o.sacked, 100);
        assert!(b.check());
        // Cumulative ACK over SACKed records: they leave the SACKed count, not delivered.
        let o = b.on_ack(Seq(400), &[], Seq(500), None, |_| {});
        assert_eq!(o.acked, 150);
        assert_eq!(o.sacked_acked, 250);
        assert_eq!(b.sacked_bytes(), 0);
        assert!(b.check());
    }

    #[test]
    fn dsack_below_ack_and_inside_second_block() {
        let mut b = board(5);
        let o = b.on_ack(Seq(200), &[(Seq(0), Seq(100))], Seq(500), None, |_| {});
        assert_eq!(o.dsack, Some((Seq(0), Seq(100))));
        let o = b.on_ack(
            Seq(200),
            &[(Seq(300), Seq(400)), (Seq(300), Seq(500))],
            Seq(500),
            None,
            |_| {},
        );
        assert_eq!(o.dsack, Some((Seq(300), Seq(400))));
        assert_eq!(o.sacked, 200);
        assert!(b.check());
    }

    #[test]
    fn bogus_blocks_are_ignored() {
        let mut b = board(3);
        let o = b.on_ack(
            Seq(0),
            &[
                (Seq(900), Seq(1000)),
                (Seq(50), Seq(40)),
                (Seq(200), Seq(9000)),
            ],
            Seq(300),
            None,
            |_| {},
        );
        assert_eq!(o.sacked, 100, "only 200..300 is in flight");
        assert!(b.check());
    }

    #[test]
    fn lost_retransmitted_and_pipe_counters() {
        let mut b = board(4);
        assert_eq!(b.mark_lost(0), 100);
        assert_eq!(b.mark_lost(0), 0);
        assert_eq!(b.next_lost(), Some(0));
        b.retransmit(0, 100, Instant::from_millis(9), TxSnapshot::default());
        assert_eq!(b.next_lost(), None);
        assert_eq!((b.lost_bytes(), b.retrans_bytes()), (100, 100));
        // The retransmission is lost too: eligible again, no longer in flight.
        assert_eq!(b.mark_lost(0), 0);
        assert_eq!(b.retrans_bytes(), 0);
        assert_eq!(b.next_lost(), Some(0));
        // A shorter retransmission splits the record.
        b.retransmit(0, 40, Instant::from_millis(10), TxSnapshot::default());
        assert_eq!(b.len(), 5);
        assert_eq!(b.next_lost(), Some(1));
        assert!(b.check());
        let (bytes, n) = b.mark_all_lost();
        assert_eq!((bytes, n), (300, 3));
        assert_eq!(b.lost_bytes(), 400);
        assert!(b.check());
        b.clear_lost();
        assert_eq!(b.lost_bytes(), 0);
        assert!(b.check());
    }

    #[test]
    fn reneging_clears_sacks() {
        let mut b = board(4);
        b.on_ack(Seq(0), &[(Seq(100), Seq(300))], Seq(400), None, |_| {});
        b.mark_lost(0);
        b.clear_sacks();
        assert_eq!(b.sacked_bytes(), 0);
        assert_eq!(b.lost_bytes(), 100);
        assert!(b.check());
        // The cache is gone too: the same block counts again.
        let o = b.on_ack(Seq(0), &[(Seq(100), Seq(300))], Seq(400), None, |_| {});
        assert_eq!(o.sacked, 200);
    }

    #[test]
    fn rule3_and_sacked_above() {
        let mut b = board(6);
        b.on_ack(Seq(0), &[(Seq(300), Seq(600))], Seq(600), None, |_| {});
        assert_eq!(b.sacked_above(0), 300);
        assert_eq!(b.sacked_above(3), 200);
        assert_eq!(b.next_unsacked_below_high(), Some(0));
        b.mark_lost(0);
        assert_eq!(b.next_unsacked_below_high(), Some(1));
    }

    #[test]
    fn orig_delivered_counts_never_retransmitted_below_high_seq() {
        let mut b = board(4);
        b.retransmit(0, 100, Instant::from_millis(5), TxSnapshot::default());
        let o = b.on_ack(
            Seq(100),
            &[(Seq(200), Seq(300))],
            Seq(400),
            Some(Seq(400)),
            |_| {},
        );
        assert_eq!(
            o.orig_delivered, 100,
            "the SACKed original, not the retransmission"
        );
    }
}
