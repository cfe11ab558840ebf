//! BBR's ProbeRTT (draft-ietf-ccwg-bbr-06 §5.3.4) and restart from idle (§5.4): when the
//! min-RTT probe is 5 s old (no sample within 1/64 of it since: see `update_min_rtt`), hold
//! the flight at half a BDP for 200 ms and a round, then go back to ProbeBW (or Startup); an
//! idle restart counts as the probe and paces at bw.

use super::{AckPhase, Bbr, BbrState, RateSample, PROBE_RTT_CWND_GAIN, PROBE_RTT_DURATION};

impl Bbr {
    pub(super) fn check_probe_rtt(&mut self, rs: &RateSample) {
        if self.state != BbrState::ProbeRtt && self.probe_rtt_expired && !self.idle_restart {
            self.state = BbrState::ProbeRtt;
            self.set_gains(1.0, PROBE_RTT_CWND_GAIN);
            self.save_cwnd();
            self.probe_rtt_done_stamp = None;
            self.ack_phase = AckPhase::ProbeStopping;
            self.start_round();
        }
        if self.state == BbrState::ProbeRtt {
            self.handle_probe_rtt();
        }
        if rs.newly_acked > 0 {
            self.idle_restart = false;
        }
    }

    pub(super) fn handle_probe_rtt(&mut self) {
        // MarkConnectionAppLimited(): low-rate samples from ProbeRTT must not lower max_bw.
        self.app_limited_until = self
            .app_limited_until
            .max(self.delivered.saturating_add(self.in_flight).max(1));
        match self.probe_rtt_done_stamp {
            None if self.in_flight <= self.probe_rtt_cwnd() => {
                self.probe_rtt_done_stamp = Some(self.now + PROBE_RTT_DURATION);
                self.probe_rtt_round_done = false;
                self.start_round();
            }
            None => {}
            Some(_) => {
                if self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done {
                    self.check_probe_rtt_done();
                }
            }
        }
    }

    pub(super) fn check_probe_rtt_done(&mut self) {
        if matches!(self.probe_rtt_done_stamp, Some(done) if self.now > done) {
            // Schedule the next ProbeRTT.
            self.probe_rtt_min_stamp = self.now;
            self.restore_cwnd();
            self.exit_probe_rtt();
        }
    }

    pub(super) fn exit_probe_rtt(&mut self) {
        self.reset_short_term_model();
        self.probe_rtt_done_stamp = None;
        if self.full_bw_reached {
            self.start_probe_bw_down();
            self.start_probe_bw_cruise();
        } else {
            self.enter_startup();
        }
    }

    /// `HandleRestartFromIdle()`.
    pub(super) fn handle_restart_from_idle(&mut self) {
        self.idle_restart = true;
        self.extra_acked_interval_start = self.now;
        if self.state.is_probe_bw() {
            self.set_pacing_rate_with_gain(1.0);
        } else if self.state == BbrState::ProbeRtt {
            self.check_probe_rtt_done();
        }
    }
}
