//! NewReno's window (RFC 5681 with RFC 6582's recovery, RFC 3465 byte counting).
//!
//! Slow start grows cwnd by the bytes acked, at most 2 MSS per ACK (ABC with L = 2); congestion
//! avoidance adds one MSS per cwnd of acked bytes. A loss halves the flight size (at most cwnd)
//! into ssthresh and sets cwnd to it (the engine's PRR paces the recovery towards it); a timeout drops cwnd to one
//! MSS. The previous cwnd/ssthresh are kept so a spurious response can be undone.

use super::{
    idle_ssthresh, mss_bytes, restart_window, slow_start, AckSample, CongestionControl, MAX_WINDOW,
};
use crate::stack::tcp::time::Instant;

/// ABC limit (RFC 3465 §2.2): slow start grows at most this many MSS per ACK.
const ABC_L: u64 = 2;

/// Values restored by an undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Undo {
    cwnd: u64,
    ssthresh: u64,
}

/// NewReno congestion control.
#[derive(Debug)]
pub struct NewReno {
    cwnd: u64,
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance not yet turned into growth (RFC 3465 `bytes_acked`).
    ca_acked: u64,
    /// Flight size last reported by the engine (ssthresh on a timeout is taken from it).
    flight: u64,
    recovering: bool,
    /// A timeout fired and nothing was acknowledged since: a further expiry backs off the same
    /// loss and must not lower ssthresh again (RFC 5681 §3.1, equation 4 note).
    rto_backoff: bool,
    undo: Option<Undo>,
}

impl NewReno {
    /// A fresh controller with the RFC 6928 initial window for `mss`.
    pub fn new(mss: u32) -> Self {
        NewReno {
            cwnd: super::initial_window(mss),
            ssthresh: u64::MAX,
            ca_acked: 0,
            flight: 0,
            recovering: false,
            rto_backoff: false,
            undo: None,
        }
    }

    fn save_undo(&mut self) {
        self.undo = Some(Undo {
            cwnd: self.cwnd,
            ssthresh: self.ssthresh,
        });
    }
}

impl CongestionControl for NewReno {
    fn name(&self) -> &'static str {
        "newreno"
    }

    fn on_sent(&mut self, _now: Instant, _bytes: u64, in_flight: u64) {
        self.flight = in_flight;
    }

    fn on_ack(&mut self, ack: &AckSample) {
        self.flight = ack.in_flight;
        self.recovering = ack.in_recovery;
        if ack.acked_bytes > 0 {
            self.rto_backoff = false;
        }
        if ack.in_recovery || ack.app_limited || ack.acked_bytes == 0 {
            return;
        }
        let mss = mss_bytes(ack.mss);
        let mut acked = ack.acked_bytes;
        if self.cwnd < self.ssthresh {
            //= rfc5681#section-3.1 slow start; rfc3465#section-2.2 byte counting with L = 2
            let (cwnd, left) = slow_start(self.cwnd, self.ssthresh, acked, ABC_L * mss);
            self.cwnd = cwnd;
            acked = left;
            if acked == 0 {
                return;
            }
        }
        //= rfc3465#section-2.1 one SMSS per cwnd of acknowledged bytes
        self.ca_acked = self.ca_acked.saturating_add(acked);
        if self.ca_acked >= self.cwnd {
            // A stretch ACK may cover several windows' worth; grow for each (cwnd >= 1 always).
            let windows = self.ca_acked / self.cwnd;
            self.ca_acked -= windows * self.cwnd;
            self.cwnd = self
                .cwnd
                .saturating_add(windows.saturating_mul(mss))
                .min(MAX_WINDOW);
        }
    }

    fn on_congestion_event(&mut self, _now: Instant, in_flight: u64, mss: u32) {
        let mss = mss_bytes(mss);
        self.save_undo();
        //= rfc5681#section-3.2 ssthresh = max(FlightSize / 2, 2*SMSS)
        // "No more than" that: the engine's flight size (SND.NXT - SND.UNA) includes segments
        // sent by limited transmit, which must not count, and SACKed bytes, which after a
        // recovery can span twice the window; half of cwnd at most, as Linux's Reno halves cwnd.
        let basis = in_flight.min(self.cwnd);
        self.ssthresh = (basis / 2).max(2 * mss).min(MAX_WINDOW);
        // RFC 6582 inflates by 3 MSS during recovery; the engine runs PRR towards ssthresh instead.
        self.cwnd = self.ssthresh;
        self.ca_acked = 0;
        self.flight = in_flight;
        self.recovering = true;
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        self.recovering = false;
    }

    fn on_rto(&mut self, _now: Instant, mss: u32) {
        let mss = mss_bytes(mss);
        // A timeout inside a recovery episode keeps that episode's ssthresh (and its undo state):
        // reducing twice for one congestion signal is what Linux's tcp_enter_loss avoids too.
        if !self.recovering && !self.rto_backoff {
            self.save_undo();
            //= rfc5681#section-3.1 equation 4 on a timeout
            self.ssthresh = (self.flight / 2).max(2 * mss).min(MAX_WINDOW);
        }
        //= rfc5681#section-3.1 LW = 1 full-sized segment
        self.cwnd = mss;
        self.ca_acked = 0;
        self.recovering = false;
        self.rto_backoff = true;
    }

    fn on_spurious_congestion(&mut self) {
        if let Some(undo) = self.undo.take() {
            // ssthresh goes back exactly; cwnd never shrinks below what it has regrown to.
            self.cwnd = self.cwnd.max(undo.cwnd);
            self.ssthresh = undo.ssthresh;
            self.ca_acked = 0;
            self.recovering = false;
            self.rto_backoff = false;
        }
    }

    fn on_idle_restart(&mut self, _now: Instant, mss: u32) {
        //= rfc5681#section-4.1 cwnd = min(RW, cwnd)
        self.ssthresh = idle_ssthresh(self.ssthresh, self.cwnd);
        self.cwnd = restart_window(self.cwnd, mss);
        self.ca_acked = 0;
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn state(&self) -> &'static str {
        if self.recovering {
            "recovery"
        } else if self.cwnd < self.ssthresh {
            "slow_start"
        } else {
            "avoidance"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::tcp::cc::tests::{ack, ack_round};

    const MSS: u32 = 1000;
    const M: u64 = MSS as u64;

    #[test]
    fn slow_start_doubles_per_rtt() {
        let mut cc = NewReno::new(MSS);
        assert_eq!(cc.window(), 10 * M);
        for round in 1..=4u64 {
            // One ACK per segment over the round: every byte acked adds a byte.
            ack_round(&mut cc, Instant::from_millis(100 * round), M, 1);
            assert_eq!(cc.window(), (10 * M) << round, "round {round}");
        }
        assert_eq!(cc.state(), "slow_start");
    }

    #[test]
    fn slow_start_doubles_with_delayed_acks_and_abc_caps_stretch_acks() {
        let mut cc = NewReno::new(MSS);
        // An ACK for every second segment: L = 2 keeps doubling per RTT.
        ack_round(&mut cc, Instant::from_millis(100), M, 2);
        assert_eq!(cc.window(), 20 * M);
        // One stretch ACK for 10 segments grows by only 2 MSS.
        cc.on_ack(&ack(Instant::from_millis(200), 10 * M, MSS));
        assert_eq!(cc.window(), 22 * M);
    }

    #[test]
    fn avoidance_grows_one_mss_per_window() {
        let mut cc = NewReno::new(MSS);
        cc.cwnd = 40 * M;
        cc.on_congestion_event(Instant::ZERO, 40 * M, MSS);
        cc.on_recovery_end(Instant::ZERO);
        assert_eq!(cc.window(), 20 * M);
        assert_eq!(cc.state(), "avoidance");
        for round in 1..=5u64 {
            ack_round(&mut cc, Instant::from_millis(100 * round), M, 1);
            assert_eq!(cc.window(), (20 + round) * M, "round {round}");
        }
    }

    #[test]
    fn slow_start_hands_leftover_to_avoidance_at_ssthresh() {
        let mut cc = NewReno::new(MSS);
        cc.on_rto(Instant::ZERO, MSS);
        cc.ssthresh = 3 * M + 500;
        cc.on_ack(&ack(Instant::from_millis(1), 2 * M, MSS)); // 1 -> 3 MSS
        cc.on_ack(&ack(Instant::from_millis(2), 2 * M, MSS)); // to ssthresh, 1500 left over
        assert_eq!(cc.window(), 3 * M + 500);
        assert_eq!(cc.ca_acked, 1500);
        assert_eq!(cc.state(), "avoidance");
    }

    #[test]
    fn congestion_event_halves_flight_size() {
        let mut cc = NewReno::new(MSS);
        cc.cwnd = 100 * M;
        cc.on_congestion_event(Instant::ZERO, 100 * M, MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (50 * M, 50 * M));
        // A flight beyond cwnd (limited transmit, SACKed bytes after a recovery) counts as cwnd.
        cc.on_recovery_end(Instant::ZERO);
        cc.on_congestion_event(Instant::ZERO, 120 * M, MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (25 * M, 25 * M));
        // A flight below cwnd is what is halved.
        cc.cwnd = 100 * M;
        cc.on_congestion_event(Instant::ZERO, 60 * M, MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (30 * M, 30 * M));
        assert_eq!(cc.state(), "recovery");
        // Never below 2 MSS, however small the flight.
        cc.on_congestion_event(Instant::ZERO, M, MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (2 * M, 2 * M));
    }

    #[test]
    fn no_growth_in_recovery_or_when_app_limited() {
        let mut cc = NewReno::new(MSS);
        let start = cc.window();
        let mut a = ack(Instant::from_millis(1), 4 * M, MSS);
        a.in_recovery = true;
        cc.on_ack(&a);
        a.in_recovery = false;
        a.app_limited = true;
        cc.on_ack(&a);
        assert_eq!(cc.window(), start);
    }

    #[test]
    fn rto_gives_loss_window_and_backoff_keeps_ssthresh() {
        let mut cc = NewReno::new(MSS);
        cc.on_sent(Instant::ZERO, M, 10 * M);
        cc.on_rto(Instant::from_millis(300), MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (M, 5 * M));
        // The flight drains to nothing as packets are marked lost, then the timer fires again.
        cc.on_sent(Instant::from_millis(300), M, M);
        cc.on_rto(Instant::from_millis(900), MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (M, 5 * M));
        assert_eq!(cc.state(), "slow_start");
    }

    #[test]
    fn rto_during_recovery_keeps_recovery_ssthresh() {
        let mut cc = NewReno::new(MSS);
        cc.cwnd = 40 * M;
        cc.on_congestion_event(Instant::ZERO, 40 * M, MSS);
        cc.on_rto(Instant::from_millis(300), MSS);
        assert_eq!((cc.window(), cc.ssthresh()), (M, 20 * M));
        cc.on_spurious_congestion();
        assert_eq!((cc.window(), cc.ssthresh()), (40 * M, u64::MAX));
    }

    #[test]
    fn undo_restores_exact_values() {
        let mut cc = NewReno::new(MSS);
        ack_round(&mut cc, Instant::from_millis(100), M, 1);
        cc.on_congestion_event(Instant::from_millis(150), 20 * M, MSS);
        cc.on_recovery_end(Instant::from_millis(200));
        ack_round(&mut cc, Instant::from_millis(300), M, 1);
        let before = (cc.window(), cc.ssthresh());
        assert_eq!(before, (11 * M, 10 * M));
        cc.on_congestion_event(Instant::from_millis(350), 11 * M, MSS);
        assert_eq!(cc.window(), 5 * M + 500);
        cc.on_spurious_congestion();
        assert_eq!((cc.window(), cc.ssthresh()), before);
        assert_eq!(cc.state(), "avoidance");
        // Nothing left to undo: a second verdict changes nothing.
        cc.on_spurious_congestion();
        assert_eq!((cc.window(), cc.ssthresh()), before);

        cc.on_sent(Instant::from_millis(400), M, 11 * M);
        cc.on_rto(Instant::from_millis(700), MSS);
        cc.on_spurious_congestion();
        assert_eq!((cc.window(), cc.ssthresh()), before);
    }

    #[test]
    fn idle_restart_uses_restart_window_and_remembers_the_window() {
        let mut cc = NewReno::new(MSS);
        cc.cwnd = 200 * M;
        cc.on_congestion_event(Instant::ZERO, 200 * M, MSS);
        cc.on_recovery_end(Instant::ZERO);
        cc.on_idle_restart(Instant::from_millis(5_000), MSS);
        assert_eq!(cc.window(), 10 * M);
        assert_eq!(cc.ssthresh(), 100 * M);
        let mut small = NewReno::new(MSS);
        small.on_rto(Instant::ZERO, MSS);
        small.on_idle_restart(Instant::ZERO, MSS);
        assert_eq!(small.window(), M);
    }
}
