//! BBR congestion control, version 3, as specified by draft-ietf-ccwg-bbr-06 (6 July 2026).
//!
//! BBR builds a model of the path from delivery-rate and RTT samples (and loss) and derives
//! from it a pacing rate (`pacing_gain * bw`) and a window (`cwnd_gain * bw * min_rtt` plus
//! aggregation and quantization allowances, bounded by the loss-derived `inflight_longterm` and
//! `inflight_shortterm`). The state machine (draft §5.1):
//!
//! ```text
//!              |
//!              V
//!     +---> Startup  ------------+
//!     |        |                 |
//!     |        V                 |
//!     |     Drain  --------------+
//!     |        |                 |
//!     |        V                 |
//!     +---> ProbeBW_DOWN  -------+
//!     | ^      |                 |
//!     | |      V                 |
//!     | |   ProbeBW_CRUISE ------+
//!     | |      |                 |
//!     | |      V                 |
//!     | |   ProbeBW_REFILL  -----+
//!     | |      |                 |
//!     | |      V                 |
//!     | |   ProbeBW_UP  ---------+
//!     | |      |                 |
//!     | +------+                 |
//!     |                          |
//!     +---- ProbeRTT <-----------+
//! ```
//!
//! | state           | pacing gain | cwnd gain | volume cap                            |
//! |-----------------|-------------|-----------|---------------------------------------|
//! | startup         | 2.77        | 2         | -                                     |
//! | drain           | 0.5         | 2         | inflight_shortterm                    |
//! | probe_bw_down   | 0.90        | 2         | inflight_longterm, inflight_shortterm |
//! | probe_bw_cruise | 1.0         | 2         | 0.85 inflight_longterm, _shortterm    |
//! | probe_bw_refill | 1.0         | 2         | inflight_longterm                     |
//! | probe_bw_up     | 1.25        | 2.25      | inflight_longterm                     |
//! | probe_rtt       | 1.0         | 0.5       | 0.85 inflight_longterm, _shortterm    |
//!
//! The pacing rate carries the draft's 1% margin (`gain * bw * 0.99`); the engine paces.
//!
//! # Where the draft's inputs come from
//! - `RS.delivery_rate`, `RS.is_app_limited`, `RS.rtt`, `RS.newly_acked`, `C.inflight`:
//!   [`AckSample::delivery_rate`], [`AckSample::app_limited`], [`AckSample::rtt`],
//!   [`AckSample::acked_bytes`], [`AckSample::in_flight`].
//! - `C.delivered`: the sum of `acked_bytes` (or [`AckSample::delivered`] when larger);
//!   `C.lost`: the sum of [`AckSample::lost_bytes`].
//! - Packet-timed rounds: the engine's [`AckSample::round_start`], restartable mid-round as
//!   the draft's `StartRound()` needs (see `bbr/rounds.rs`).
//! - `C.is_cwnd_limited`: from [`CongestionControl::on_sent`] (the flight reached cwnd within
//!   one MSS during this or the previous round).
//! - Restart from idle: an `on_sent` with nothing in flight before it, or
//!   [`CongestionControl::on_idle_restart`].
//!
//! # Simplifications relative to the draft
//! The trait reports per-ACK aggregates, not the per-packet state (`P.tx_in_flight`, `P.lost`,
//! `P.delivered`) the draft's rate sample carries, so these are estimated per round:
//! - `RS.tx_in_flight` is the largest flight reported by `on_sent` during the previous round
//!   (the data being acknowledged now was sent then), else the ACK's `prior_in_flight`.
//! - `RS.lost` (lost since the acknowledged packet was sent) is the loss over the last round
//!   trip, as a sliding window over the current and the previous round.
//! - `RS.delivered` (delivered over the sample's interval) is the data delivered over the last
//!   round trip, on the same sliding window.
//! - `HandleLostPacket` runs once per ACK that marks losses, not once per lost packet, with
//!   `InflightAtLoss` computed for a packet of one MSS.
//! - Startup's "6 discontiguous lost ranges in the round" counts ACKs that marked losses.
//! - `C.has_selective_acks` is inferred: true once any ACK reported `lost_bytes`. Before that
//!   (an engine that does not count losses), a congestion event counts one MSS as lost on the
//!   next ACK, and any loss is "too high", as the draft prescribes for connections without SACK.
//! - When the engine gives no `delivery_rate`, one sample per round is taken from the ACK rate
//!   over the last round (delivered bytes / round duration).
//! - The full-pipe estimator compares `BBR.max_bw` (as the draft's definition of
//!   `BBR.full_bw` says, and as Linux does) rather than the single round-start sample.
//! - `MarkConnectionAppLimited()` in ProbeRTT is emulated here: samples are treated as
//!   app-limited until the data in flight during ProbeRTT has been delivered.
//! - The offload budget is the TCP one, `3 * send_quantum`, with the draft's send quantum
//!   (`pacing_rate * 1 ms` within `[2 MSS, 64 KiB]`); [`Bbr::send_quantum`] exposes it.
//! - Randomness (probe wait 2-3 s, 0-1 extra Reno rounds) comes from a small PRNG seeded from
//!   the connection's start time, so runs are reproducible.
//!
//! # Contract notes
//! As in Linux, BBR sets its window on every ACK, in recovery too (no PRR, no hold), and
//! may shrink it (ProbeRTT, loss bounds). The window is at least `BBR.MinPipeCwnd` = 4 MSS,
//! except right after a retransmission timeout, when it is 1 MSS (the draft's `inflight + 1`
//! with everything outstanding deemed lost) until the next ACK. `ssthresh()` is unbounded in
//! Startup and the estimated BDP after it, as Linux reports.

mod congestion;
#[cfg(test)]
mod model;
mod probe_bw;
mod probe_rtt;
mod rounds;
#[cfg(test)]
mod tests;
mod windowed_filter;

use std::time::Duration;

use self::rounds::RoundTracker;
use self::windowed_filter::WindowedMax;
use super::{initial_window, mss_bytes, AckSample, CongestionControl, MAX_WINDOW};
use crate::stack::tcp::time::Instant;

/// Minimum gain that doubles the sending rate each round: 4 ln 2.
const STARTUP_PACING_GAIN: f64 = 2.77;
const DRAIN_PACING_GAIN: f64 = 0.5;
const DEFAULT_CWND_GAIN: f64 = 2.0;
const PROBE_DOWN_PACING_GAIN: f64 = 0.9;
const PROBE_UP_PACING_GAIN: f64 = 1.25;
const PROBE_UP_CWND_GAIN: f64 = 2.25;
/// In ProbeBW_UP, a flight this many estimated BDPs, held for a min_rtt, means a queue is
/// building: the probe has found what it can (Linux v3 `bw_probe_pif_gain`).
const PROBE_UP_QUEUE_GAIN: f64 = 1.25;
const PROBE_RTT_CWND_GAIN: f64 = 0.5;
/// Pace 1% below the bandwidth estimate.
const PACING_MARGIN: f64 = 0.99;
/// Largest tolerated per-round loss rate while probing: 2%, as 1/50.
const LOSS_THRESH_INV: u128 = 50;
const LOSS_THRESH: f64 = 0.02;
/// Multiplicative decrease per lossy round.
const BETA: f64 = 0.7;
/// Share of inflight_longterm left free for other flows.
const HEADROOM: f64 = 0.15;
/// BBR.MinPipeCwnd, segments.
const MIN_PIPE_SEGMENTS: u64 = 4;
/// Startup ends after this many rounds growing the bandwidth by less than 25%.
const FULL_BW_COUNT: u32 = 3;
/// Lost ranges in one round that (with > 2% loss) end Startup.
const STARTUP_FULL_LOSS_COUNT: u32 = 6;
const EXTRA_ACKED_FILTER_LEN: u64 = 10;
const MIN_RTT_FILTER_LEN: Duration = Duration::from_secs(10);
const PROBE_RTT_INTERVAL: Duration = Duration::from_secs(5);
/// A sample within 1/this of the ProbeRTT min refreshes it (see `update_min_rtt`).
const NEAR_MIN_RTT_DIV: u64 = 64;
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// Drain gives up waiting for the queue to empty after this many rounds.
const DRAIN_MAX_ROUNDS: u64 = 3;
/// Upper bound of the Reno-coexistence probing interval, rounds.
const RENO_MAX_ROUNDS: u64 = 63;
const PROBE_WAIT_BASE: Duration = Duration::from_secs(2);
const SEND_QUANTUM_MAX: u64 = 64 * 1024;
/// "Infinity" for volumes and rates.
const INF: u64 = u64::MAX;

/// BBR's state (the draft's `BBR.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BbrState {
    /// Exponential search for the bottleneck bandwidth.
    Startup,
    /// Draining the queue Startup built.
    Drain,
    /// ProbeBW deceleration: pacing at 0.9 bw until the queue and headroom are clear.
    ProbeBwDown,
    /// ProbeBW cruising at bw, until it is time to probe again.
    ProbeBwCruise,
    /// One round at bw to fill the pipe before probing.
    ProbeBwRefill,
    /// Probing for more bandwidth at 1.25 bw.
    ProbeBwUp,
    /// Holding the flight at half a BDP to measure min_rtt.
    ProbeRtt,
}

impl BbrState {
    /// The name stats print.
    pub fn name(self) -> &'static str {
        match self {
            BbrState::Startup => "startup",
            BbrState::Drain => "drain",
            BbrState::ProbeBwDown => "probe_bw_down",
            BbrState::ProbeBwCruise => "probe_bw_cruise",
            BbrState::ProbeBwRefill => "probe_bw_refill",
            BbrState::ProbeBwUp => "probe_bw_up",
            BbrState::ProbeRtt => "probe_rtt",
        }
    }

    fn is_probe_bw(self) -> bool {
        matches!(
            self,
            BbrState::ProbeBwDown
                | BbrState::ProbeBwCruise
                | BbrState::ProbeBwRefill
                | BbrState::ProbeBwUp
        )
    }
}

/// What the ACKs currently arriving say about bandwidth probing (`BBR.ack_phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckPhase {
    Init,
    Refilling,
    ProbeStarting,
    ProbeFeedback,
    ProbeStopping,
}

/// The draft's rate sample (RS) for one ACK, as far as the trait's inputs allow.
#[derive(Clone, Copy, Debug, Default)]
struct RateSample {
    /// Bytes per second; 0 when there is no sample.
    delivery_rate: u64,
    /// Delivered over the sample's interval (about one round trip).
    delivered: u64,
    newly_acked: u64,
    /// Lost since the acknowledged data was sent (about one round trip).
    lost: u64,
    /// Flight when the acknowledged data was sent.
    tx_in_flight: u64,
    is_app_limited: bool,
    rtt_ns: Option<u64>,
}

/// Per engine-round totals, from which the per-packet rate-sample fields are estimated.
#[derive(Clone, Copy, Debug, Default)]
struct EngineRound {
    start_time: Instant,
    start_delivered: u64,
    start_lost: u64,
    /// Delivered and lost over the whole previous round.
    prev_delivered: u64,
    prev_lost: u64,
    /// Largest flight reported by `on_sent` in this and in the previous round.
    sent_flight: u64,
    prev_sent_flight: u64,
    /// The flight reached cwnd in this and in the previous round.
    cwnd_limited: bool,
    prev_cwnd_limited: bool,
}

/// What an undo after a spurious loss recovery restores (draft §5.5.10.2).
#[derive(Clone, Copy, Debug)]
struct Undo {
    bw_shortterm: u64,
    inflight_shortterm: u64,
    inflight_longterm: u64,
}

/// BBRv3 congestion control (draft-ietf-ccwg-bbr-06). The module documentation in
/// `stack/tcp/cc/bbr.rs` gives the state machine, where each input comes from and what is
/// simplified relative to the draft.
#[derive(Debug)]
pub struct Bbr {
    // --- connection state (C) ---
    mss: u64,
    initial_cwnd: u64,
    cwnd: u64,
    pacing_rate: u64,
    delivered: u64,
    lost: u64,
    in_flight: u64,
    /// Latest time seen; inputs that go back in time are treated as this.
    now: Instant,
    sent_anything: bool,
    in_fast_recovery: bool,
    /// RTO recovery ends once `delivered` reaches this.
    rto_recovery_until: Option<u64>,
    /// A timeout fired and nothing was acknowledged since.
    rto_fresh: bool,
    /// The engine reports lost bytes (taken as C.has_selective_acks).
    counts_losses: bool,
    /// A congestion event arrived; if the next ACK reports no lost bytes, one MSS counts.
    pending_event_loss: bool,
    /// Samples are app-limited until `delivered` passes this (ProbeRTT's app-limited mark).
    app_limited_until: u64,
    er: EngineRound,
    /// The current ACK is an engine round boundary (for `StartRound()`).
    ack_at_boundary: bool,

    // --- BBR state ---
    state: BbrState,
    pacing_gain: f64,
    cwnd_gain: f64,
    round: RoundTracker,
    round_count: u64,
    round_start: bool,
    loss_round: RoundTracker,
    loss_round_start: bool,
    /// BBR.max_bw filter: the max of the current and the previous ProbeBW cycle.
    max_bw_slots: [u64; 2],
    cycle_count: u64,
    max_bw: u64,
    bw: u64,
    bw_shortterm: u64,
    bw_latest: u64,
    min_rtt_ns: u64,
    min_rtt_stamp: Instant,
    probe_rtt_min_delay_ns: u64,
    /// A sample near the ProbeRTT min refreshes it (see `update_min_rtt`); off = the draft.
    pub(super) refresh_near_min: bool,
    probe_rtt_min_stamp: Instant,
    probe_rtt_expired: bool,
    probe_rtt_done_stamp: Option<Instant>,
    probe_rtt_round_done: bool,
    prior_cwnd: u64,
    idle_restart: bool,
    extra_acked_interval_start: Instant,
    extra_acked_delivered: u64,
    extra_acked_filter: WindowedMax,
    extra_acked: u64,
    full_bw_reached: bool,
    full_bw_now: bool,
    full_bw: u64,
    full_bw_count: u32,
    inflight_longterm: u64,
    inflight_shortterm: u64,
    inflight_latest: u64,
    probe_up_acked_per_inc: u64,
    bw_probe_up_acked: u64,
    bw_probe_up_rounds: u32,
    rounds_since_probe_up: u64,
    is_bw_probe_sample: bool,
    prev_probe_too_high: bool,
    prev_probe_precautionary: bool,
    ack_phase: AckPhase,
    cycle_stamp: Instant,
    /// When ProbeBW_UP began (Linux v3's `cycle_mstamp` of the UP phase).
    up_stamp: Instant,
    bw_probe_wait: Duration,
    is_loss_in_round: bool,
    /// Bytes marked lost in the current loss round.
    lost_in_round: u64,
    loss_events_in_round: u32,
    drain_start_round: u64,
    /// Round in which the current fast recovery began; back-to-back episodes (a new one in
    /// the round the previous one ended) count as one.
    recovery_start_round: u64,
    recovery_end_round: Option<u64>,
    undo: Option<Undo>,
    undo_state: Option<BbrState>,
    has_seen_rtt: bool,
    /// Estimated BDP when Startup ended (reported as ssthresh).
    ssthresh: u64,
    rng: u64,
}

impl Bbr {
    /// A fresh controller with the RFC 6928 initial window for `mss`, starting at `now`
    /// (which also seeds the probing randomisation).
    pub fn new(mss: u32, now: Instant) -> Self {
        Self::with_seed(mss, now, now.as_nanos() ^ u64::from(mss))
    }

    /// As [`Bbr::new`], with an explicit seed for the randomised probing intervals.
    pub fn with_seed(mss: u32, now: Instant, seed: u64) -> Self {
        let iw = initial_window(mss);
        let mut bbr = Bbr {
            mss: mss_bytes(mss),
            initial_cwnd: iw,
            cwnd: iw,
            pacing_rate: 0,
            delivered: 0,
            lost: 0,
            in_flight: 0,
            now,
            sent_anything: false,
            in_fast_recovery: false,
            rto_recovery_until: None,
            rto_fresh: false,
            counts_losses: false,
            pending_event_loss: false,
            app_limited_until: 0,
            er: EngineRound {
                start_time: now,
                ..EngineRound::default()
            },
            ack_at_boundary: false,
            state: BbrState::Startup,
            pacing_gain: STARTUP_PACING_GAIN,
            cwnd_gain: DEFAULT_CWND_GAIN,
            round: RoundTracker::default(),
            round_count: 0,
            round_start: false,
            loss_round: RoundTracker::default(),
            loss_round_start: false,
            max_bw_slots: [0; 2],
            cycle_count: 0,
            max_bw: 0,
            bw: 0,
            bw_shortterm: INF,
            bw_latest: 0,
            min_rtt_ns: INF,
            min_rtt_stamp: now,
            probe_rtt_min_delay_ns: INF,
            refresh_near_min: true,
            probe_rtt_min_stamp: now,
            probe_rtt_expired: false,
            probe_rtt_done_stamp: None,
            probe_rtt_round_done: false,
            prior_cwnd: 0,
            idle_restart: false,
            extra_acked_interval_start: now,
            extra_acked_delivered: 0,
            extra_acked_filter: WindowedMax::default(),
            extra_acked: 0,
            full_bw_reached: false,
            full_bw_now: false,
            full_bw: 0,
            full_bw_count: 0,
            inflight_longterm: INF,
            inflight_shortterm: INF,
            inflight_latest: 0,
            probe_up_acked_per_inc: INF,
            bw_probe_up_acked: 0,
            bw_probe_up_rounds: 0,
            rounds_since_probe_up: 0,
            is_bw_probe_sample: false,
            prev_probe_too_high: false,
            prev_probe_precautionary: false,
            ack_phase: AckPhase::Init,
            cycle_stamp: now,
            up_stamp: now,
            bw_probe_wait: Duration::ZERO,
            is_loss_in_round: false,
            lost_in_round: 0,
            loss_events_in_round: 0,
            drain_start_round: 0,
            recovery_start_round: 0,
            recovery_end_round: None,
            undo: None,
            undo_state: None,
            has_seen_rtt: false,
            ssthresh: INF,
            rng: seed,
        };
        bbr.init_pacing_rate(None);
        bbr
    }

    /// Current state.
    pub fn bbr_state(&self) -> BbrState {
        self.state
    }

    /// `BBR.max_bw`: windowed max delivery rate, bytes per second (0 before any sample).
    pub fn max_bw(&self) -> u64 {
        self.max_bw
    }

    /// `BBR.bw`: the rate the model allows, `min(max_bw, bw_shortterm)`, bytes per second.
    pub fn bw(&self) -> u64 {
        self.bw
    }

    /// `BBR.min_rtt`, once there was an RTT sample.
    pub fn min_rtt(&self) -> Option<Duration> {
        (self.min_rtt_ns != INF).then(|| Duration::from_nanos(self.min_rtt_ns))
    }

    /// `BBR.inflight_longterm` (inflight_hi), bytes, when loss has set it.
    pub fn inflight_longterm(&self) -> Option<u64> {
        (self.inflight_longterm != INF).then_some(self.inflight_longterm)
    }

    /// `BBR.inflight_shortterm` (inflight_lo), bytes, when loss has set it this cycle.
    pub fn inflight_shortterm(&self) -> Option<u64> {
        (self.inflight_shortterm != INF).then_some(self.inflight_shortterm)
    }

    /// `BBR.bw_shortterm` (bw_lo), bytes per second, when loss has set it this cycle.
    pub fn bw_shortterm(&self) -> Option<u64> {
        (self.bw_shortterm != INF).then_some(self.bw_shortterm)
    }

    /// Current pacing gain.
    pub fn pacing_gain(&self) -> f64 {
        self.pacing_gain
    }

    /// Current cwnd gain.
    pub fn cwnd_gain(&self) -> f64 {
        self.cwnd_gain
    }

    /// Whether Startup has ever found the pipe full.
    pub fn full_bw_reached(&self) -> bool {
        self.full_bw_reached
    }

    /// `C.send_quantum`: the largest burst the pacer should send at once, bytes.
    pub fn send_quantum(&self) -> u64 {
        // pacing_rate * 1 ms, within [2 MSS, 64 KiB].
        (self.pacing_rate / 1_000)
            .min(SEND_QUANTUM_MAX)
            .max(self.mss.saturating_mul(2))
    }

    // ----- small helpers -----

    fn advance_clock(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn min_pipe_cwnd(&self) -> u64 {
        self.mss.saturating_mul(MIN_PIPE_SEGMENTS).min(MAX_WINDOW)
    }

    fn in_loss_recovery(&self) -> bool {
        self.in_fast_recovery || self.rto_recovery_until.is_some()
    }

    /// Uniform in [0, 1).
    fn random(&mut self) -> f64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `BBR.bdp` for `bw`: `bw * min_rtt`, or the initial window before any RTT sample.
    fn bdp(&self, bw: u64) -> u64 {
        if self.min_rtt_ns == INF {
            return self.initial_cwnd;
        }
        let bdp = u128::from(bw) * u128::from(self.min_rtt_ns) / 1_000_000_000;
        bdp.min(u128::from(MAX_WINDOW)) as u64
    }

    /// `BDPMultiple(bw, gain)`.
    fn bdp_multiple(&self, bw: u64, gain: f64) -> u64 {
        if self.min_rtt_ns == INF {
            return self.initial_cwnd;
        }
        scale(self.bdp(bw), gain)
    }

    /// `QuantizationBudget(inflight_cap)`.
    fn quantization_budget(&self, cap: u64) -> u64 {
        let offload_budget = self.send_quantum().saturating_mul(3);
        let mut cap = cap.max(offload_budget).max(self.min_pipe_cwnd());
        if self.state == BbrState::ProbeBwUp {
            cap = cap.saturating_add(self.mss.saturating_mul(2));
        }
        cap.min(MAX_WINDOW)
    }

    /// `Inflight(bw, gain)`.
    fn inflight(&self, bw: u64, gain: f64) -> u64 {
        self.quantization_budget(self.bdp_multiple(bw, gain))
    }

    /// `TargetInflight()`: the estimated BDP, unless congestion cut cwnd.
    fn target_inflight(&self) -> u64 {
        self.bdp(self.bw).min(self.cwnd)
    }

    /// `InflightWithHeadroom()`.
    fn inflight_with_headroom(&self) -> u64 {
        if self.inflight_longterm == INF {
            return INF;
        }
        let headroom = self.mss.max(scale(self.inflight_longterm, HEADROOM));
        self.inflight_longterm
            .saturating_sub(headroom)
            .max(self.min_pipe_cwnd())
    }

    /// `ProbeRTTCwnd()`.
    fn probe_rtt_cwnd(&self) -> u64 {
        self.bdp_multiple(self.bw, PROBE_RTT_CWND_GAIN)
            .max(self.min_pipe_cwnd())
    }

    fn set_gains(&mut self, pacing: f64, cwnd: f64) {
        self.pacing_gain = pacing;
        self.cwnd_gain = cwnd;
    }

    /// `StartRound()`: the next round begins with data sent from now on.
    fn start_round(&mut self) {
        self.round
            .restart(self.ack_at_boundary, self.delivered, self.in_flight);
    }

    // ----- per-ACK input: the rate sample -----

    /// Builds the rate sample for `ack` and advances the engine-round bookkeeping.
    fn rate_sample(&mut self, ack: &AckSample, now: Instant) -> RateSample {
        let er = &mut self.er;
        let cur_delivered = self.delivered.saturating_sub(er.start_delivered);
        let cur_lost = self.lost.saturating_sub(er.start_lost);
        // Sliding one-round window: all of this round plus the part of the previous round
        // that this round has not yet "replaced", measured in delivered bytes.
        let prev_share = if er.prev_delivered == 0 {
            0.0
        } else {
            1.0 - (cur_delivered as f64 / er.prev_delivered as f64).min(1.0)
        };
        let lost_window = cur_lost.saturating_add(scale(er.prev_lost, prev_share));
        let delivered_window = cur_delivered.max(er.prev_delivered);
        let tx_in_flight = if er.prev_sent_flight > 0 {
            er.prev_sent_flight
        } else {
            ack.prior_in_flight.max(ack.in_flight)
        };
        let mut delivery_rate = ack.delivery_rate.unwrap_or(0);
        if self.round_start {
            if ack.delivery_rate.is_none() {
                // No estimator in the engine: the ACK rate over the round just ended.
                let elapsed = now.saturating_since(er.start_time).as_nanos();
                if let Some(rate) = (u128::from(cur_delivered) * 1_000_000_000).checked_div(elapsed)
                {
                    delivery_rate = rate.min(u128::from(u64::MAX)) as u64;
                }
            }
            er.prev_delivered = cur_delivered;
            er.prev_lost = cur_lost;
            er.start_delivered = self.delivered;
            er.start_lost = self.lost;
            er.start_time = now;
            er.prev_sent_flight = er.sent_flight;
            er.sent_flight = 0;
            er.prev_cwnd_limited = er.cwnd_limited;
            er.cwnd_limited = false;
        }
        RateSample {
            delivery_rate,
            delivered: delivered_window,
            newly_acked: ack.newly_delivered.max(ack.acked_bytes),
            lost: lost_window,
            tx_in_flight,
            // The engine's rate sample says whether the application limited it (draft-cheng
            // §3.4); `app_limited` is its different "window not used" test for loss-based CCs.
            is_app_limited: if ack.rate_interval.is_zero() {
                ack.app_limited || self.delivered <= self.app_limited_until
            } else {
                ack.is_app_limited
            },
            // The rate sample's own RTT (send time to this ACK, nanoseconds) when there is one;
            // the engine's sample (often the whole-millisecond timestamp echo) otherwise.
            rtt_ns: ack
                .rate_rtt
                .or(ack.rtt)
                .map(|r| r.as_nanos().min(u128::from(u64::MAX - 1)) as u64),
        }
    }

    fn is_cwnd_limited(&self) -> bool {
        self.er.cwnd_limited || self.er.prev_cwnd_limited
    }

    // ----- bandwidth and RTT estimates (draft §5.5) -----

    /// `UpdateMaxBw()` (the round was updated on entry).
    fn update_max_bw(&mut self, rs: &RateSample) {
        if rs.delivery_rate > 0 && (rs.delivery_rate >= self.max_bw || !rs.is_app_limited) {
            let slot = (self.cycle_count & 1) as usize;
            self.max_bw_slots[slot] = self.max_bw_slots[slot].max(rs.delivery_rate);
            self.max_bw = self.max_bw_slots[0].max(self.max_bw_slots[1]);
        }
    }

    /// `AdvanceMaxBwFilter()`: a new ProbeBW cycle; samples older than the previous cycle go.
    fn advance_max_bw_filter(&mut self) {
        self.cycle_count = self.cycle_count.wrapping_add(1);
        self.max_bw_slots[(self.cycle_count & 1) as usize] = 0;
        self.max_bw = self.max_bw_slots[0].max(self.max_bw_slots[1]);
    }

    /// `UpdateRound()`, on the BBR round tracker.
    fn update_round(&mut self, engine_boundary: bool, sample: Option<u64>) {
        self.round_start = self.round.on_ack(engine_boundary, sample, self.delivered);
        if self.round_start {
            self.round_count = self.round_count.saturating_add(1);
            self.rounds_since_probe_up = self.rounds_since_probe_up.saturating_add(1);
        }
    }

    /// `UpdateACKAggregation()`.
    fn update_ack_aggregation(&mut self, rs: &RateSample) {
        let interval = self.now.saturating_since(self.extra_acked_interval_start);
        let expected = u128::from(self.bw) * interval.as_nanos() / 1_000_000_000;
        let mut expected = expected.min(u128::from(u64::MAX)) as u64;
        if self.extra_acked_delivered <= expected {
            self.extra_acked_delivered = 0;
            self.extra_acked_interval_start = self.now;
            expected = 0;
        }
        self.extra_acked_delivered = self.extra_acked_delivered.saturating_add(rs.newly_acked);
        let extra = self
            .extra_acked_delivered
            .saturating_sub(expected)
            .min(self.cwnd);
        let window = if self.full_bw_reached {
            EXTRA_ACKED_FILTER_LEN
        } else {
            1
        };
        self.extra_acked = self
            .extra_acked_filter
            .update(self.round_count, extra, window);
    }

    /// `UpdateMinRTT()`.
    fn update_min_rtt(&mut self, rs: &RateSample) {
        let now = self.now;
        self.probe_rtt_expired = now > self.probe_rtt_min_stamp + PROBE_RTT_INTERVAL;
        if let Some(rtt) = rs.rtt_ns {
            let near_min = self.refresh_near_min
                && self.probe_rtt_min_delay_ns != INF
                && rtt
                    <= self.probe_rtt_min_delay_ns + self.probe_rtt_min_delay_ns / NEAR_MIN_RTT_DIV;
            if rtt < self.probe_rtt_min_delay_ns || (self.probe_rtt_expired && !near_min) {
                self.probe_rtt_min_delay_ns = rtt;
                self.probe_rtt_min_stamp = now;
            } else if near_min {
                // Deliberate difference from the draft (and Linux), which refresh only on a
                // strictly lower sample: a sample within 1/64 of the min shows the queue as
                // empty as when the min was measured, so ProbeRTT would learn nothing and
                // costs a round at half a BDP (5% of the throughput every 5 s on a 250 ms
                // path). A path whose RTT rose, or a standing queue, gives no such sample, and
                // ProbeRTT comes as before.
                self.probe_rtt_min_stamp = now;
                self.probe_rtt_expired = false;
            }
        }
        let min_rtt_expired = now > self.min_rtt_stamp + MIN_RTT_FILTER_LEN;
        if self.probe_rtt_min_delay_ns < self.min_rtt_ns || min_rtt_expired {
            self.min_rtt_ns = self.probe_rtt_min_delay_ns;
            self.min_rtt_stamp = self.probe_rtt_min_stamp;
        }
    }

    // ----- Startup and Drain (draft §5.3.1-5.3.2) -----

    fn enter_startup(&mut self) {
        self.state = BbrState::Startup;
        self.set_gains(STARTUP_PACING_GAIN, DEFAULT_CWND_GAIN);
    }

    fn reset_full_bw(&mut self) {
        self.full_bw = 0;
        self.full_bw_count = 0;
        self.full_bw_now = false;
    }

    /// `CheckFullBWReached()`, on `BBR.max_bw`.
    fn check_full_bw_reached(&mut self, rs: &RateSample) {
        if self.full_bw_now || !self.round_start || rs.is_app_limited {
            return;
        }
        if self.max_bw >= scale(self.full_bw, 1.25) {
            self.reset_full_bw();
            self.full_bw = self.max_bw;
            return;
        }
        self.full_bw_count += 1;
        self.full_bw_now = self.full_bw_count >= FULL_BW_COUNT;
        if self.full_bw_now {
            self.full_bw_reached = true;
        }
    }

    /// `CheckStartupHighLoss()`.
    fn check_startup_high_loss(&mut self, rs: &RateSample, lost_now: u64) {
        if self.full_bw_reached || self.state != BbrState::Startup {
            return;
        }
        if lost_now > 0 {
            self.loss_events_in_round = (self.loss_events_in_round + 1).min(15);
        }
        if !self.loss_round_start {
            return;
        }
        let criteria = if self.counts_losses {
            // In recovery for a full round, > 2% lost over the round, >= 6 lost ranges.
            self.in_fast_recovery
                && self.round_count > self.recovery_start_round
                && self.loss_events_in_round >= STARTUP_FULL_LOSS_COUNT
                && self.is_inflight_too_high(rs)
        } else {
            // Without SACK: any loss detected during fast recovery.
            self.in_fast_recovery && rs.lost > 0
        };
        self.loss_events_in_round = 0;
        if criteria {
            self.undo_state = Some(BbrState::Startup);
            self.full_bw_reached = true;
            self.full_bw_now = true;
            self.inflight_longterm = self
                .bdp(self.max_bw)
                .max(self.inflight_latest)
                .min(MAX_WINDOW);
        }
    }

    fn check_startup_done(&mut self, rs: &RateSample, lost_now: u64) {
        self.check_startup_high_loss(rs, lost_now);
        if self.state == BbrState::Startup && self.full_bw_reached {
            self.enter_drain();
        }
    }

    fn enter_drain(&mut self) {
        self.state = BbrState::Drain;
        self.set_gains(DRAIN_PACING_GAIN, DEFAULT_CWND_GAIN);
        self.drain_start_round = self.round_count;
        self.ssthresh = self.inflight(self.max_bw, 1.0);
    }

    fn check_drain_done(&mut self) {
        if self.state == BbrState::Drain
            && (self.in_flight <= self.inflight(self.bw, 1.0)
                || self.round_count > self.drain_start_round.saturating_add(DRAIN_MAX_ROUNDS))
        {
            self.enter_probe_bw();
        }
    }

    // ----- control parameters (draft §5.6) -----

    fn init_pacing_rate(&mut self, srtt: Option<Duration>) {
        let srtt_ns = srtt
            .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
            .filter(|&ns| ns > 0)
            .unwrap_or(1_000_000);
        let nominal = u128::from(self.initial_cwnd) * 1_000_000_000 / u128::from(srtt_ns);
        let nominal = nominal.min(u128::from(u64::MAX)) as u64;
        self.pacing_rate = scale(nominal, STARTUP_PACING_GAIN).max(1);
    }

    fn set_pacing_rate_with_gain(&mut self, gain: f64) {
        if self.bw == 0 {
            return;
        }
        let rate = scale(self.bw, gain * PACING_MARGIN).max(1);
        if self.full_bw_reached || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    /// `SetCwnd()` with `UpdateMaxInflight()`, `BoundCwndForProbeRTT()`, `BoundCwndForModel()`.
    fn set_cwnd(&mut self, newly_acked: u64) {
        let cap = self
            .bdp_multiple(self.bw, self.cwnd_gain)
            .saturating_add(self.extra_acked);
        let max_inflight = self.quantization_budget(cap);
        if self.full_bw_reached {
            self.cwnd = self.cwnd.saturating_add(newly_acked).min(max_inflight);
        } else if self.cwnd < max_inflight || self.delivered < self.initial_cwnd {
            self.cwnd = self.cwnd.saturating_add(newly_acked);
        }
        self.cwnd = self.cwnd.max(self.min_pipe_cwnd());
        if self.state == BbrState::ProbeRtt {
            self.cwnd = self.cwnd.min(self.probe_rtt_cwnd());
        }
        let mut cap = INF;
        if self.state.is_probe_bw() && self.state != BbrState::ProbeBwCruise {
            cap = self.inflight_longterm;
        } else if matches!(self.state, BbrState::ProbeRtt | BbrState::ProbeBwCruise) {
            cap = self.inflight_with_headroom();
        }
        cap = cap.min(self.inflight_shortterm).max(self.min_pipe_cwnd());
        self.cwnd = self.cwnd.min(cap).min(MAX_WINDOW);
    }
}

/// `value * gain` for byte counts and rates, saturating at `u64::MAX` (`as` saturates).
fn scale(value: u64, gain: f64) -> u64 {
    (value as f64 * gain) as u64
}

impl CongestionControl for Bbr {
    fn name(&self) -> &'static str {
        "bbr"
    }

    fn on_sent(&mut self, now: Instant, bytes: u64, in_flight: u64) {
        self.advance_clock(now);
        self.in_flight = in_flight;
        // Nothing was in flight before this transmission: restarting from idle. After a
        // timeout the flight is empty too, but that is loss recovery, not idleness.
        if self.sent_anything && in_flight <= bytes && !self.rto_fresh {
            self.handle_restart_from_idle();
        }
        self.sent_anything = true;
        self.er.sent_flight = self.er.sent_flight.max(in_flight);
        if in_flight.saturating_add(self.mss) > self.cwnd {
            self.er.cwnd_limited = true;
        }
    }

    fn on_ack(&mut self, ack: &AckSample) {
        let now = self.advance_clock(ack.now);
        self.mss = mss_bytes(ack.mss);
        self.in_flight = ack.in_flight;
        if !ack.in_recovery && self.in_fast_recovery {
            // The engine left recovery without telling `on_recovery_end` (which it calls
            // before the ACK that ends recovery, still flagged `in_recovery`).
            self.on_recovery_end(now);
        }
        self.ack_at_boundary = ack.round_start;
        if ack.acked_bytes > 0 {
            self.rto_fresh = false;
        }
        let newly_acked = ack.newly_delivered.max(ack.acked_bytes);
        self.delivered = self
            .delivered
            .saturating_add(newly_acked)
            .max(ack.delivered);

        // Losses this ACK marked; a congestion event with no count behind it is one MSS.
        let mut lost_now = ack.lost_bytes;
        if lost_now > 0 {
            self.counts_losses = true;
        } else if self.pending_event_loss {
            lost_now = self.mss;
        }
        self.pending_event_loss = false;
        self.lost = self.lost.saturating_add(lost_now);
        self.lost_in_round = self.lost_in_round.saturating_add(lost_now);

        if !self.has_seen_rtt && ack.srtt > Duration::ZERO {
            self.has_seen_rtt = true;
            if self.max_bw == 0 {
                self.init_pacing_rate(Some(ack.srtt));
            }
        }

        // The rate sample's send-time delivered count times the rounds (see rounds.rs).
        let sample = (ack.rate_delivered > 0).then_some(ack.prior_delivered);
        self.update_round(ack.round_start, sample);
        self.loss_round_start = self
            .loss_round
            .on_ack(ack.round_start, sample, self.delivered);
        let rs = self.rate_sample(ack, now);
        if lost_now > 0 {
            self.handle_lost(&rs);
        }

        // UpdateModelAndState()
        self.update_latest_delivery_signals(&rs);
        self.update_congestion_signals(&rs);
        self.update_ack_aggregation(&rs);
        self.check_full_bw_reached(&rs);
        self.check_startup_done(&rs, lost_now);
        self.check_drain_done();
        self.update_probe_bw_cycle_phase(&rs);
        self.update_min_rtt(&rs);
        self.check_probe_rtt(&rs);
        self.advance_latest_delivery_signals(&rs);
        self.bound_bw_for_model();

        // RTO recovery ends once what was outstanding at the timeout is delivered.
        if matches!(self.rto_recovery_until, Some(until) if self.delivered >= until) {
            self.rto_recovery_until = None;
            self.restore_cwnd();
        }

        // UpdateControlParameters()
        self.set_pacing_rate_with_gain(self.pacing_gain);
        self.set_cwnd(newly_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, in_flight: u64, mss: u32) {
        self.advance_clock(now);
        self.mss = mss_bytes(mss);
        if !self.in_fast_recovery {
            // OnEnterFastRecovery()
            self.save_cwnd();
            self.save_state_upon_loss();
            if self.recovery_end_round != Some(self.round_count) {
                self.recovery_start_round = self.round_count;
            }
        }
        self.in_fast_recovery = true;
        self.pending_event_loss = true;
        self.in_flight = in_flight;
    }

    fn on_recovery_end(&mut self, now: Instant) {
        self.advance_clock(now);
        if self.in_fast_recovery {
            self.in_fast_recovery = false;
            self.recovery_end_round = Some(self.round_count);
            self.restore_cwnd();
        }
    }

    fn on_rto(&mut self, now: Instant, mss: u32) {
        self.advance_clock(now);
        self.mss = mss_bytes(mss);
        // OnEnterRTO(): remember the last good window, count the loss, and allow one segment
        // (everything outstanding is deemed lost, so the flight is empty).
        self.ack_at_boundary = false;
        self.save_cwnd();
        if !self.rto_fresh {
            self.save_state_upon_loss();
            self.rto_recovery_until = Some(self.delivered.saturating_add(self.in_flight));
        }
        self.note_loss();
        self.in_fast_recovery = false;
        self.pending_event_loss = false;
        self.rto_fresh = true;
        self.in_flight = 0;
        self.cwnd = self.mss.min(MAX_WINDOW);
    }

    fn on_spurious_congestion(&mut self) {
        // HandleSpuriousLossDetection()
        let Some(undo) = self.undo.take() else {
            return;
        };
        self.in_fast_recovery = false;
        self.rto_recovery_until = None;
        self.rto_fresh = false;
        self.restore_cwnd();
        self.is_loss_in_round = false;
        self.reset_full_bw();
        self.bw_shortterm = self.bw_shortterm.max(undo.bw_shortterm);
        self.inflight_shortterm = self.inflight_shortterm.max(undo.inflight_shortterm);
        self.inflight_longterm = self.inflight_longterm.max(undo.inflight_longterm);
        match self.undo_state {
            Some(BbrState::Startup) if self.state != BbrState::Startup => {
                self.full_bw_reached = false;
                self.ssthresh = INF;
                if self.state != BbrState::ProbeRtt {
                    self.enter_startup();
                }
            }
            Some(BbrState::ProbeBwUp)
                if !matches!(self.state, BbrState::ProbeBwUp | BbrState::ProbeRtt) =>
            {
                self.start_probe_bw_refill();
            }
            _ => {}
        }
        self.undo_state = None;
        self.bound_bw_for_model();
    }

    fn on_idle_restart(&mut self, now: Instant, _mss: u32) {
        // BBR keeps its window after idle and paces at bw instead of slow-starting.
        self.advance_clock(now);
        self.handle_restart_from_idle();
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn in_slow_start(&self) -> bool {
        self.state == BbrState::Startup
    }

    fn pacing_rate(&self) -> Option<u64> {
        Some(self.pacing_rate)
    }

    fn state(&self) -> &'static str {
        self.state.name()
    }

    fn bandwidth_estimate(&self) -> Option<u64> {
        (self.max_bw > 0).then_some(self.max_bw)
    }

    fn min_rtt_estimate(&self) -> Option<Duration> {
        self.min_rtt()
    }

    fn model(&self) -> super::CcModel {
        super::CcModel {
            bw: (self.bw > 0).then_some(self.bw),
            max_bw: (self.max_bw > 0).then_some(self.max_bw),
            min_rtt: self.min_rtt(),
            inflight_hi: self.inflight_longterm(),
            inflight_lo: self.inflight_shortterm(),
            bw_lo: self.bw_shortterm(),
            pacing_gain_pct: Some(super::CcModel::gain_pct(self.pacing_gain)),
            cwnd_gain_pct: Some(super::CcModel::gain_pct(self.cwnd_gain)),
        }
    }
}
