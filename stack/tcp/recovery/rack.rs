//! RACK: time-based loss detection (RFC 8985 §6).
//!
//! A segment is lost when a segment sent after it has been delivered and more than one RTT plus
//! a reordering window has passed since it was sent. The reordering window starts at
//! `min_rtt / 4` (capped at SRTT), is zero until reordering has been seen when the loss is
//! already evident (in recovery, or DupThresh segments SACKed — so RACK acts as fast as the
//! classic three duplicate ACKs), and grows by `min_rtt / 4` per round in which a D-SACK showed
//! a retransmission was spurious, decaying back after 16 recoveries without one (as Linux).
//!
//! The Tail Loss Probe half of RACK-TLP lives in the connection (it needs the send path); this
//! module holds RACK's state and the loss-marking pass.

use super::scoreboard::{Scoreboard, EVER_RETRANS, LOST, RETRANS, SACKED};
use crate::stack::tcp::seq::Seq;
use crate::stack::tcp::time::Instant;
use std::time::Duration;

/// RFC 8985 DupThresh, in segments.
pub const DUP_THRESH: u64 = 3;

/// RACK's state for one connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rack {
    /// Send time and end of the most recently sent segment delivered so far.
    xmit_ts: Option<Instant>,
    end_seq: Seq,
    /// RTT of that delivery.
    rtt: Duration,
    /// Highest sequence number delivered (SACKed or acknowledged) so far.
    fack: Seq,
    /// Reordering was observed on this connection.
    pub reord_seen: bool,
    /// Reordering-window multiplier (RFC 8985 `RACK.reo_wnd_mult`), at least 1.
    reo_wnd_mult: u32,
    /// Recoveries left before the multiplier decays back to 1.
    reo_wnd_persist: u32,
    /// A D-SACK already widened the window in the round ending here.
    dsack_round: Option<Seq>,
}

impl Rack {
    /// A segment was delivered (`rtt_ok`: its RTT is trustworthy — not a retransmission that
    /// the ACK might be for the original of).
    pub fn on_delivered(
        &mut self,
        sent_at: Instant,
        start: Seq,
        end: Seq,
        flags: u8,
        now: Instant,
        rtt_ok: bool,
    ) {
        //= rfc8985#section-6.2
        // Step 3: a delivered segment below the highest delivered one, never retransmitted,
        // arrived out of order.
        if end.gt(self.fack) || self.xmit_ts.is_none() {
            self.fack = end;
        } else if end.lt(self.fack) && flags & EVER_RETRANS == 0 {
            self.reord_seen = true;
        }
        let _ = start;
        if !rtt_ok {
            return;
        }
        //= rfc8985#section-6.2
        // Step 2: remember the most recently sent delivered segment and its RTT.
        let newer = match self.xmit_ts {
            None => true,
            Some(t) => sent_at > t || (sent_at == t && end.gt(self.end_seq)),
        };
        if newer {
            self.xmit_ts = Some(sent_at);
            self.end_seq = end;
            self.rtt = now.saturating_since(sent_at);
        }
    }

    /// A D-SACK arrived with this ACK (RFC 8985 §6.2 step 4): widen the window once per round.
    pub fn on_dsack(&mut self, ack: Seq, snd_max: Seq) {
        if self.dsack_round.is_none_or(|r| ack.ge(r)) {
            self.dsack_round = Some(snd_max);
            self.reo_wnd_mult = (self.reo_wnd_mult.max(1) + 1).min(64);
            self.reo_wnd_persist = 16;
        }
    }

    /// A recovery episode ended: the widened window decays after 16 of them.
    pub fn on_recovery_end(&mut self) {
        if self.reo_wnd_persist > 0 {
            self.reo_wnd_persist -= 1;
            if self.reo_wnd_persist == 0 {
                self.reo_wnd_mult = 1;
            }
        }
    }

    /// The current multiplier (for stats).
    pub fn reo_wnd_mult(&self) -> u32 {
        self.reo_wnd_mult.max(1)
    }

    /// RFC 8985 §6.2 step 4 (Linux `tcp_rack_reo_wnd`).
    pub fn reo_wnd(
        &self,
        in_recovery: bool,
        sacked_segs: u64,
        min_rtt: Duration,
        srtt: Duration,
    ) -> Duration {
        if !self.reord_seen && (in_recovery || sacked_segs >= DUP_THRESH) {
            return Duration::ZERO;
        }
        (min_rtt / 4 * self.reo_wnd_mult()).min(srtt)
    }

    /// Marks lost every segment sent before the most recently delivered one whose time is up
    /// (RFC 8985 §6.2 step 5). Returns (bytes newly lost, segments newly lost, when the first
    /// not-yet-lost candidate will be: the reorder timer).
    ///
    /// Walks the scoreboard's send-time order from the oldest transmission and stops at the
    /// first one sent after the RACK segment (Linux `tcp_rack_detect_loss`): SACKed records and
    /// lost ones waiting for retransmission are not in it, so the walk costs the holes sent
    /// before the most recently delivered segment, not the flight.
    pub fn detect_loss(
        &mut self,
        sb: &mut Scoreboard,
        now: Instant,
        reo_wnd: Duration,
    ) -> (u64, u64, Option<Instant>) {
        let Some(xmit_ts) = self.xmit_ts else {
            return (0, 0, None);
        };
        let (mut bytes, mut segs) = (0u64, 0u64);
        let mut timer: Option<Instant> = None;
        let mut cur = sb.first_sent();
        while let Some(c) = cur {
            let s = sb.sent_entry(c);
            let sent_at = s.sent_at;
            if sent_at > xmit_ts {
                break;
            }
            // Taken before marking: marking this record lost takes it out of the order.
            cur = sb.next_sent(c);
            debug_assert!(
                s.flags & SACKED == 0 && (s.flags & LOST == 0 || s.flags & RETRANS != 0),
                "RACK skips SACKed and lost-waiting records: never in the order"
            );
            //= rfc8985#section-6.2
            // "Sent before" is by time only (RACK_sent_after): when the RACK segment is a
            // retransmission, original segments above it that went out before that
            // retransmission and are still not delivered are judged too, as Linux does.
            // At the same instant, sequence order tells which went first only for original
            // transmissions: a retransmission sent at that instant may have gone after the
            // delivered segment (it is answered by this very ACK's successors), and marking it
            // lost again would resend it once per ACK.
            let before = sent_at < xmit_ts || (s.end.lt(self.end_seq) && s.flags & RETRANS == 0);
            if !before {
                continue;
            }
            let deadline = sent_at + self.rtt + reo_wnd;
            if deadline <= now {
                let i = sb.index_of(c);
                let was_lost_rtx = sb.lost_retransmitted(i);
                let b = sb.mark_lost(i);
                if b > 0 || was_lost_rtx {
                    bytes += b;
                    segs += 1;
                }
            } else {
                //= rfc8985#section-6.3
                // The reorder timer waits for the latest such deadline. In send-time order the
                // deadlines only grow, so every record from here to the RACK segment is
                // waiting too (and is a hole: sent before a delivered segment, not delivered).
                timer = Some(timer.map_or(deadline, |t| t.max(deadline)));
            }
        }
        (bytes, segs, timer)
    }

    /// Forgets the RTT state (after a timeout the old samples say nothing about the new flight).
    pub fn reset_on_rto(&mut self) {
        self.xmit_ts = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::tcp::recovery::rate::TxSnapshot;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    /// Five segments sent 1 ms apart from t=0.
    fn board() -> Scoreboard {
        let mut b = Scoreboard::default();
        for i in 0..5u32 {
            b.push(
                Seq(i * 100),
                Seq(i * 100 + 100),
                false,
                ms(i as u64),
                TxSnapshot::default(),
            );
        }
        b
    }

    #[test]
    fn segment_before_a_delivered_one_is_lost_after_rtt_plus_window() {
        let mut b = board();
        let mut r = Rack::default();
        // Segment 1 (100..200, sent at 1 ms) is SACKed at 101 ms: RTT 100 ms.
        b.on_ack(Seq(0), &[(Seq(100), Seq(200))], Seq(500), None, |s| {
            r.on_delivered(s.sent_at, s.start, s.end, s.flags, ms(101), true)
        });
        let wnd = r.reo_wnd(
            false,
            1,
            Duration::from_millis(100),
            Duration::from_millis(100),
        );
        assert_eq!(wnd, Duration::from_millis(25));
        // Segment 0 was sent at 0: lost at 0 + 100 + 25 ms.
        let (bytes, segs, timer) = r.detect_loss(&mut b, ms(101), wnd);
        assert_eq!((bytes, segs), (0, 0));
        assert_eq!(timer, Some(ms(125)));
        let (bytes, segs, timer) = r.detect_loss(&mut b, ms(125), wnd);
        assert_eq!((bytes, segs, timer), (100, 1, None));
        assert!(b.check());
    }

    #[test]
    fn reordering_is_detected_and_window_zero_before() {
        let mut b = board();
        let mut r = Rack::default();
        let sacked = [(Seq(100), Seq(400))];
        b.on_ack(Seq(0), &sacked, Seq(500), None, |s| {
            r.on_delivered(s.sent_at, s.start, s.end, s.flags, ms(103), true)
        });
        // Three segments SACKed and no reordering seen: no window.
        assert_eq!(
            r.reo_wnd(
                false,
                3,
                Duration::from_millis(100),
                Duration::from_millis(100)
            ),
            Duration::ZERO
        );
        // Segment 0 arrives late (not retransmitted): reordering.
        b.on_ack(Seq(400), &[], Seq(500), None, |s| {
            r.on_delivered(s.sent_at, s.start, s.end, s.flags, ms(104), true)
        });
        assert!(r.reord_seen);
        assert_eq!(
            r.reo_wnd(
                true,
                3,
                Duration::from_millis(100),
                Duration::from_millis(100)
            ),
            Duration::from_millis(25)
        );
    }

    #[test]
    fn dsack_widens_once_per_round_and_decays() {
        let mut r = Rack::default();
        r.on_dsack(Seq(100), Seq(1000));
        r.on_dsack(Seq(200), Seq(1000));
        assert_eq!(r.reo_wnd_mult(), 2);
        r.on_dsack(Seq(1000), Seq(2000));
        assert_eq!(r.reo_wnd_mult(), 3);
        r.reord_seen = true;
        assert_eq!(
            r.reo_wnd(
                false,
                0,
                Duration::from_millis(100),
                Duration::from_millis(60)
            ),
            Duration::from_millis(60),
            "capped at SRTT"
        );
        for _ in 0..16 {
            r.on_recovery_end();
        }
        assert_eq!(r.reo_wnd_mult(), 1);
    }

    /// The walk `detect_loss` did before the send-time order: every record in sequence order
    /// up to the first never-retransmitted one at or above RACK.end_seq.
    fn reference_detect_loss(
        r: &Rack,
        sb: &mut Scoreboard,
        now: Instant,
        reo_wnd: Duration,
    ) -> (u64, u64, Option<Instant>) {
        let Some(xmit_ts) = r.xmit_ts else {
            return (0, 0, None);
        };
        let (mut bytes, mut segs) = (0u64, 0u64);
        let mut timer: Option<Instant> = None;
        let mut i = 0;
        while let Some(s) = sb.get(i) {
            let s = *s;
            let skip = s.flags & SACKED != 0 || (s.flags & LOST != 0 && s.flags & RETRANS == 0);
            let before = s.sent_at < xmit_ts
                || (s.sent_at == xmit_ts && s.end.lt(r.end_seq) && s.flags & RETRANS == 0);
            if !skip && before {
                let deadline = s.sent_at + r.rtt + reo_wnd;
                if deadline <= now {
                    let was_lost_rtx = sb.lost_retransmitted(i);
                    let b = sb.mark_lost(i);
                    if b > 0 || was_lost_rtx {
                        bytes += b;
                        segs += 1;
                    }
                } else {
                    timer = Some(timer.map_or(deadline, |t| t.max(deadline)));
                }
            }
            i += 1;
        }
        (bytes, segs, timer)
    }

    /// xorshift64*: deterministic randomness for the equivalence test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            if n == 0 {
                0
            } else {
                self.next() % n
            }
        }
    }

    fn marks(sb: &Scoreboard) -> Vec<(Seq, Seq, u8, Instant)> {
        (0..sb.len())
            .map(|i| {
                let s = sb.get(i).unwrap();
                (s.start, s.end, s.flags, s.sent_at)
            })
            .collect()
    }

    /// Random sequences of transmissions, retransmissions (whole and partial, so splits),
    /// cumulative ACKs and SACKs (RACK fed from them), loss marks, timeouts, undo, reneging and
    /// coalescing, with the clock often standing still (equal send times) and sometimes going
    /// back: after each step the
    /// scoreboard (send-time order included) is consistent, and at each RACK run the walk in
    /// send-time order marks exactly what the old sequence-order walk marks, with the same
    /// counts and reorder timer.
    #[test]
    fn detect_loss_matches_the_sequence_order_walk() {
        let mut runs_with_marks = 0;
        let mut runs_with_timer = 0;
        for seed in 1..=1500u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut sb = Scoreboard::default();
            let mut r = Rack::default();
            let mut now = ms(1);
            let mut earlier = now;
            let (mut una, mut nxt) = (Seq(1000), Seq(1000));
            for step in 0..300 {
                // The clock stands still a third of the time: equal send times.
                now += Duration::from_micros(rng.below(3) * rng.below(4000));
                if rng.below(10) == 0 {
                    earlier = now;
                }
                // Now and then a transmission is stamped with an earlier time (a clock that
                // went backwards): the order stays sorted by send time.
                let at = if rng.below(15) == 0 { earlier } else { now };
                let op = rng.below(100);
                if op < 25 || sb.is_empty() {
                    let len = 1 + rng.below(300) as u32;
                    sb.push(nxt, nxt + len, false, at, TxSnapshot::default());
                    nxt += len;
                } else if op < 37 {
                    let i = rng.below(sb.len() as u64) as usize;
                    let s = *sb.get(i).unwrap();
                    if !s.has(SACKED) {
                        let len = if rng.below(3) == 0 {
                            rng.below(s.len() as u64) as u32
                        } else {
                            s.len()
                        };
                        sb.retransmit(i, len, at, TxSnapshot::default());
                    }
                } else if op < 37 + 30 {
                    // An ACK: maybe cumulative progress, up to three SACK blocks.
                    let span = (nxt - una) as u64;
                    let ack = if rng.below(3) == 0 {
                        una + rng.below(span + 1) as u32
                    } else {
                        una
                    };
                    let mut blocks = [(Seq(0), Seq(0)); 3];
                    let n = rng.below(4) as usize;
                    for b in blocks.iter_mut().take(n) {
                        let l = una + rng.below(span + 1) as u32;
                        let r_ = l + rng.below(600) as u32;
                        *b = (l, r_);
                    }
                    let rtt_ok = rng.below(4) != 0;
                    sb.on_ack(ack, &blocks[..n], nxt, None, |s| {
                        r.on_delivered(s.sent_at, s.start, s.end, s.flags, now, rtt_ok)
                    });
                    if ack.gt(una) {
                        una = ack;
                    }
                } else if op < 75 {
                    let i = rng.below(sb.len() as u64) as usize;
                    sb.mark_lost(i);
                } else if op < 77 {
                    sb.mark_all_lost();
                } else if op < 79 {
                    sb.clear_lost();
                } else if op < 80 {
                    sb.clear_sacks();
                } else if op < 83 {
                    let i = rng.below(sb.len() as u64) as usize;
                    sb.coalesce(i, 1 + rng.below(600) as u32);
                } else if op < 84 {
                    r.reset_on_rto();
                } else {
                    let reo = Duration::from_micros(rng.below(3) * rng.below(3000));
                    let mut old = sb.clone();
                    let want = reference_detect_loss(&r, &mut old, now, reo);
                    let got = r.detect_loss(&mut sb, now, reo);
                    assert_eq!(got, want, "seed {seed} step {step}");
                    assert_eq!(marks(&sb), marks(&old), "seed {seed} step {step}");
                    runs_with_marks += u32::from(got.1 > 0);
                    runs_with_timer += u32::from(got.2.is_some());
                }
                assert!(sb.check(), "seed {seed} step {step} op {op}");
                if sb.is_empty() {
                    sb.shrink();
                }
            }
        }
        // The sequences reach the interesting cases.
        assert!(runs_with_marks > 1000, "{runs_with_marks}");
        assert!(runs_with_timer > 1000, "{runs_with_timer}");
    }
}

/// CPU cost of one ACK during recovery on a long fat path (not an assertion: run with
/// `cargo test --release --lib rack::bench -- --ignored --nocapture`).
#[cfg(test)]
mod bench {
    use super::*;
    use crate::stack::tcp::recovery::rate::TxSnapshot;

    /// A 20,000-record flight (sent 10 µs apart, 250 ms RTT) with every 100th record lost: the
    /// others are SACKed one per ACK, in order, and RACK runs after each.
    #[test]
    #[ignore]
    fn ns_per_ack_20k_flight_1pct_holes() {
        const N: u32 = 20_000;
        const MSS: u32 = 1448;
        let rtt = Duration::from_millis(250);
        let reo = Duration::from_millis(62);
        let sent = |i: u32| Instant::from_micros(1_000 + i as u64 * 10);
        let hole = |i: u32| i.is_multiple_of(100);
        let mut best = u128::MAX;
        let mut lost_total = 0;
        for _round in 0..5 {
            let mut sb = Scoreboard::default();
            for i in 0..N {
                sb.push(
                    Seq(i * MSS),
                    Seq((i + 1) * MSS),
                    false,
                    sent(i),
                    TxSnapshot::default(),
                );
            }
            let mut r = Rack::default();
            let mut lost = 0;
            let t0 = std::time::Instant::now();
            let mut acks = 0u128;
            for i in 0..N {
                if hole(i) {
                    continue;
                }
                // The block from just above the last hole to this record.
                let l = (i / 100 * 100 + 1) * MSS;
                let blocks = [(Seq(l), Seq((i + 1) * MSS))];
                let now = sent(i) + rtt;
                sb.on_ack(Seq(0), &blocks, Seq(N * MSS), None, |s| {
                    r.on_delivered(s.sent_at, s.start, s.end, s.flags, now, true)
                });
                let (_, n, _) = r.detect_loss(&mut sb, now, reo);
                lost += n;
                acks += 1;
            }
            best = best.min(t0.elapsed().as_nanos() / acks);
            lost_total = lost;
        }
        println!(
            "RACK bench: {N} records, 1% holes: {best} ns per ACK (best of 5), \
             {lost_total} marked lost"
        );
    }
}
