//! BBR's ProbeBW cycle (draft-ietf-ccwg-bbr-06 §5.3.3): DOWN (0.9) until the queue and the
//! headroom are clear, CRUISE (1.0) until it is time to probe (2-3 s, or the Reno-coexistence
//! round count), REFILL (1.0) for one round, UP (1.25, cwnd gain 2.25) until the bandwidth
//! plateaus, loss exceeds 2%, or a precautionary probe reaches inflight_longterm.

use std::time::Duration;

use super::{
    AckPhase, Bbr, BbrState, RateSample, DEFAULT_CWND_GAIN, INF, MAX_WINDOW,
    PROBE_DOWN_PACING_GAIN, PROBE_UP_CWND_GAIN, PROBE_UP_PACING_GAIN, PROBE_UP_QUEUE_GAIN,
    PROBE_WAIT_BASE, RENO_MAX_ROUNDS,
};

impl Bbr {
    pub(super) fn enter_probe_bw(&mut self) {
        self.cwnd_gain = DEFAULT_CWND_GAIN;
        self.start_probe_bw_down();
    }

    pub(super) fn start_probe_bw_down(&mut self) {
        self.reset_congestion_signals();
        self.probe_up_acked_per_inc = INF;
        self.pick_probe_wait();
        self.cycle_stamp = self.now;
        self.ack_phase = AckPhase::ProbeStopping;
        self.start_round();
        self.state = BbrState::ProbeBwDown;
        self.set_gains(PROBE_DOWN_PACING_GAIN, DEFAULT_CWND_GAIN);
    }

    pub(super) fn start_probe_bw_cruise(&mut self) {
        self.state = BbrState::ProbeBwCruise;
        self.set_gains(1.0, DEFAULT_CWND_GAIN);
    }

    pub(super) fn start_probe_bw_refill(&mut self) {
        self.reset_short_term_model();
        self.bw_probe_up_rounds = 0;
        self.bw_probe_up_acked = 0;
        self.prev_probe_precautionary = false;
        self.ack_phase = AckPhase::Refilling;
        self.start_round();
        self.state = BbrState::ProbeBwRefill;
        self.set_gains(1.0, DEFAULT_CWND_GAIN);
    }

    pub(super) fn start_probe_bw_up(&mut self, rs: &RateSample) {
        self.ack_phase = AckPhase::ProbeStarting;
        self.start_round();
        self.reset_full_bw();
        self.full_bw = if rs.delivery_rate > 0 {
            rs.delivery_rate
        } else {
            self.max_bw
        };
        self.state = BbrState::ProbeBwUp;
        self.up_stamp = self.now;
        self.set_gains(PROBE_UP_PACING_GAIN, PROBE_UP_CWND_GAIN);
        self.raise_inflight_longterm_slope();
    }

    /// `UpdateProbeBWCyclePhase()`.
    pub(super) fn update_probe_bw_cycle_phase(&mut self, rs: &RateSample) {
        if !self.full_bw_reached {
            return;
        }
        if self.adapt_long_term_model(rs) {
            return;
        }
        match self.state {
            BbrState::ProbeBwDown => {
                if self.is_time_to_probe_bw() {
                    return;
                }
                if self.is_time_to_cruise() {
                    self.start_probe_bw_cruise();
                }
            }
            BbrState::ProbeBwCruise => {
                self.is_time_to_probe_bw();
            }
            // After one round of REFILL, start UP.
            BbrState::ProbeBwRefill if self.round_start => {
                self.is_bw_probe_sample = true;
                self.start_probe_bw_up(rs);
            }
            BbrState::ProbeBwUp => {
                let go_down = self.is_time_to_go_down(rs);
                if go_down {
                    self.prev_probe_too_high = false;
                    self.start_probe_bw_down();
                }
            }
            _ => {}
        }
    }

    pub(super) fn is_time_to_cruise(&self) -> bool {
        self.in_flight <= self.inflight_with_headroom()
            && self.in_flight <= self.inflight(self.max_bw, 1.0)
    }

    pub(super) fn is_time_to_go_down(&mut self, rs: &RateSample) -> bool {
        if self.prev_probe_too_high && self.in_flight >= self.inflight_longterm {
            self.prev_probe_precautionary = true;
            return true;
        }
        // Not in draft-06, as Linux's BBRv3 (bbr_update_cycle_phase, "is_queuing"): once UP has
        // lasted a min_rtt, a flight of 1.25 estimated BDPs means the extra is queueing, not
        // finding bandwidth. Without it UP runs to the bandwidth plateau (three rounds) at a
        // cwnd gain of 2.25 and overflows a 1-BDP queue on a long path (measured at 250 ms:
        // flight 2 BDP, hundreds of drops and spurious timeouts per probe).
        let up_for = self.now.saturating_since(self.up_stamp);
        if self.min_rtt_ns != INF
            && up_for.as_nanos() >= u128::from(self.min_rtt_ns)
            && self.in_flight >= self.inflight(self.max_bw, PROBE_UP_QUEUE_GAIN)
        {
            return true;
        }
        if self.is_cwnd_limited() && self.cwnd >= self.inflight_longterm {
            // Bandwidth is limited by inflight_longterm: the plateau means nothing.
            self.reset_full_bw();
            self.full_bw = if rs.delivery_rate > 0 {
                rs.delivery_rate
            } else {
                self.max_bw
            };
        } else if self.full_bw_now {
            return true;
        }
        false
    }

    /// `IsTimeToProbeBW()`: starts REFILL when the wall-clock or the Reno-scale wait is over.
    pub(super) fn is_time_to_probe_bw(&mut self) -> bool {
        let waited = self.now > self.cycle_stamp + self.bw_probe_wait;
        if waited || self.is_reno_coexistence_probe_time() {
            self.start_probe_bw_refill();
            return true;
        }
        false
    }

    pub(super) fn pick_probe_wait(&mut self) {
        self.rounds_since_probe_up = (self.random() * 2.0) as u64;
        self.bw_probe_wait = PROBE_WAIT_BASE + Duration::from_secs_f64(self.random());
    }

    pub(super) fn is_reno_coexistence_probe_time(&self) -> bool {
        let reno_rounds = self.target_inflight() / self.mss;
        self.rounds_since_probe_up >= reno_rounds.min(RENO_MAX_ROUNDS)
    }

    pub(super) fn raise_inflight_longterm_slope(&mut self) {
        let growth_this_round = 1u64 << self.bw_probe_up_rounds;
        self.bw_probe_up_rounds = (self.bw_probe_up_rounds + 1).min(30);
        self.probe_up_acked_per_inc = (self.cwnd / growth_this_round).max(self.mss);
    }

    pub(super) fn probe_inflight_longterm_upward(&mut self, rs: &RateSample) {
        if !self.is_cwnd_limited() || self.cwnd < self.inflight_longterm {
            return;
        }
        self.bw_probe_up_acked = self.bw_probe_up_acked.saturating_add(rs.newly_acked);
        if self.bw_probe_up_acked >= self.probe_up_acked_per_inc {
            let delta = self.bw_probe_up_acked / self.probe_up_acked_per_inc;
            self.bw_probe_up_acked -= delta * self.probe_up_acked_per_inc;
            self.inflight_longterm = self
                .inflight_longterm
                .saturating_add(delta.saturating_mul(self.mss))
                .min(MAX_WINDOW);
        }
        if self.round_start {
            self.raise_inflight_longterm_slope();
        }
    }

    /// `AdaptLongTermModel()`: true when it decided a state transition.
    pub(super) fn adapt_long_term_model(&mut self, rs: &RateSample) -> bool {
        if self.ack_phase == AckPhase::ProbeStarting && self.round_start {
            self.ack_phase = AckPhase::ProbeFeedback;
        }
        if self.ack_phase == AckPhase::ProbeStopping && self.round_start {
            // End of the samples from the bandwidth probe.
            self.is_bw_probe_sample = false;
            self.ack_phase = AckPhase::Init;
            if self.state.is_probe_bw() && !rs.is_app_limited {
                self.advance_max_bw_filter();
            }
            if self.state.is_probe_bw()
                && self.prev_probe_precautionary
                && !self.prev_probe_too_high
            {
                self.start_probe_bw_refill();
                return true;
            }
        }
        if !self.is_inflight_too_high(rs) {
            if self.inflight_longterm == INF {
                return false;
            }
            if rs.tx_in_flight > self.inflight_longterm {
                self.inflight_longterm = rs.tx_in_flight.min(MAX_WINDOW);
            }
            if self.state == BbrState::ProbeBwUp {
                self.probe_inflight_longterm_upward(rs);
            }
        }
        false
    }
}
