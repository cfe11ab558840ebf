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
        let mut i = 0;
        while let Some(s) = sb.get(i) {
            let s = *s;
            // Segments above the RACK segment that were never retransmitted were sent after it.
            if s.start.ge(self.end_seq) && s.flags & EVER_RETRANS == 0 {
                break;
            }
            let skip = s.flags & SACKED != 0 || (s.flags & LOST != 0 && s.flags & RETRANS == 0);
            // At the same instant, sequence order tells which went first only for original
            // transmissions: a retransmission sent at that instant may have gone after the
            // delivered segment (it is answered by this very ACK's successors), and marking it
            // lost again would resend it once per ACK.
            let before = s.sent_at < xmit_ts
                || (s.sent_at == xmit_ts && s.end.lt(self.end_seq) && s.flags & RETRANS == 0);
            if !skip && before {
                let deadline = s.sent_at + self.rtt + reo_wnd;
                if deadline <= now {
                    let was_lost_rtx = sb.lost_retransmitted(i);
                    let b = sb.mark_lost(i);
                    if b > 0 || was_lost_rtx {
                        bytes += b;
                        segs += 1;
                    }
                } else {
                    //= rfc8985#section-6.3
                    // The reorder timer waits for the latest such deadline.
                    timer = Some(timer.map_or(deadline, |t| t.max(deadline)));
                }
            }
            i += 1;
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
}
