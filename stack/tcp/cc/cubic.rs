//! CUBIC (RFC 9438) with HyStart++ (RFC 9406) in the initial slow start.
//!
//! In congestion avoidance the window follows `W_cubic(t) = C*(t-K)^3 + W_max` (t: time since the
//! avoidance stage began; K: when the curve gets back to W_max), approached per ACK towards
//! `W_cubic(t+RTT)` but never faster than 1.5x per RTT; where Reno would be faster (short RTTs)
//! the Reno-friendly estimate `W_est` wins. A loss multiplies the flight size (at most cwnd) by 0.7
//! and, with fast convergence, lowers W_max when the window had not recovered since the previous
//! loss.
//!
//! Everything is kept in bytes (the RFC works in segments): `C` becomes `C*MSS` bytes per s^3.
//! f64 is exact enough here (windows are below 2^41, far inside the 53-bit mantissa) and stays
//! finite for any input: any `Duration` is under 2e19 s, so `(t+RTT-K)^3` is far below f64's
//! range, and the cwnd results are clamped to [`MAX_WINDOW`].

use std::time::Duration;

use super::hystart::HyStart;
use super::{
    idle_ssthresh, mss_bytes, restart_window, slow_start, AckSample, CongestionControl, MAX_WINDOW,
};
use crate::stack::tcp::time::Instant;

/// Cubic scaling constant, segments per s^3.
const C: f64 = 0.4;
/// Multiplicative decrease factor.
const BETA: f64 = 0.7;
/// Reno-friendly additive increase, segments per RTT, until W_est reaches cwnd_prior.
const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
/// ABC limit for slow starts after the first (those do not use HyStart++).
const ABC_L: u64 = 2;
const MAX_WINDOW_F: f64 = MAX_WINDOW as f64;

/// One congestion-avoidance stage.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Epoch {
    /// When the stage began (t = 0), shifted forward past idle and app-limited periods.
    start: Instant,
    /// Seconds from `start` until the curve reaches `w_max`.
    k: f64,
    /// W_max for this stage, bytes.
    w_max: f64,
    /// Reno-friendly estimate, bytes.
    w_est: f64,
}

/// Everything an undo restores.
#[derive(Clone, Copy, Debug, PartialEq)]
struct State {
    /// cwnd in bytes; fractional so per-ACK growth of a fraction of a byte is not lost.
    cwnd: f64,
    ssthresh: u64,
    /// Window before the last reduction, fast convergence applied (bytes). None after a timeout
    /// or a HyStart++ exit: the next stage then uses its own starting window and K = 0.
    w_max: Option<f64>,
    /// cwnd when ssthresh was last set; W_est grows at ALPHA until it reaches this.
    cwnd_prior: f64,
    epoch: Option<Epoch>,
    hystart: HyStart,
}

/// CUBIC congestion control.
#[derive(Debug)]
pub struct Cubic {
    s: State,
    undo: Option<State>,
    /// Flight size last reported by the engine (ssthresh on a timeout is taken from it).
    flight: u64,
    recovering: bool,
    /// A timeout fired and nothing was acknowledged since (see NewReno).
    rto_backoff: bool,
    last_sent: Option<Instant>,
    /// First app-limited ACK of the current app-limited stretch in congestion avoidance.
    app_limited_since: Option<Instant>,
}

impl Cubic {
    /// A fresh controller with the RFC 6928 initial window for `mss`.
    pub fn new(mss: u32) -> Self {
        let cwnd = super::initial_window(mss) as f64;
        Cubic {
            s: State {
                cwnd,
                ssthresh: u64::MAX,
                w_max: None,
                cwnd_prior: cwnd,
                epoch: None,
                hystart: HyStart::new(),
            },
            undo: None,
            flight: 0,
            recovering: false,
            rto_backoff: false,
            last_sent: None,
            app_limited_since: None,
        }
    }

    /// HyStart++ finished CSS: slow start ends without a loss (RFC 9438 §4.10: W_max undefined,
    /// cwnd_prior = cwnd, the stage starts with K = 0).
    fn end_initial_slow_start(&mut self) {
        self.s.ssthresh = self.window();
        self.s.cwnd_prior = self.s.cwnd;
        self.s.w_max = None;
        self.s.epoch = None;
    }

    fn start_epoch(&mut self, now: Instant, mss: f64) -> Epoch {
        let cwnd = self.s.cwnd;
        let w_max = *self.s.w_max.get_or_insert(cwnd);
        //= rfc9438#section-4.2 K = cubic_root((W_max - cwnd_epoch) / C)
        // Negative when cwnd already exceeds W_max (after an undo): the curve then starts past
        // its plateau, still through cwnd at t = 0.
        let k = ((w_max - cwnd) / (C * mss)).cbrt();
        Epoch {
            start: now,
            k,
            w_max,
            w_est: cwnd,
        }
    }

    /// Congestion-avoidance growth for `acked` bytes (RFC 9438 §4.2-4.5).
    fn avoidance(&mut self, now: Instant, acked: u64, mss: u64, srtt: Duration) {
        let mss = mss as f64;
        let cwnd = self.s.cwnd;
        let mut e = match self.s.epoch {
            Some(e) => e,
            None => self.start_epoch(now, mss),
        };
        let t = now.saturating_since(e.start).as_secs_f64();
        let w_t = w_cubic(t, &e, mss);
        //= rfc9438#section-4.2 target = W_cubic(t + RTT), within [cwnd, 1.5 * cwnd]
        let target = w_cubic(t + srtt.as_secs_f64(), &e, mss)
            .max(cwnd)
            .min(1.5 * cwnd);
        //= rfc9438#section-4.3 W_est += alpha * segments_acked / cwnd; alpha = 1 once W_est >= cwnd_prior
        let alpha = if e.w_est >= self.s.cwnd_prior {
            1.0
        } else {
            ALPHA
        };
        let acked = acked as f64;
        e.w_est = (e.w_est + alpha * mss * acked / cwnd).min(MAX_WINDOW_F);
        let grown = if w_t < e.w_est {
            // Reno-friendly region. `max` keeps a window the cubic curve already reached.
            e.w_est.max(cwnd)
        } else {
            //= rfc9438#section-4.4 cwnd += (target - cwnd) / cwnd per acked segment
            cwnd + ((target - cwnd) * acked / cwnd).min(target - cwnd)
        };
        self.s.cwnd = grown.min(MAX_WINDOW_F);
        self.s.epoch = Some(e);
    }
}

/// `W_cubic(t)` in bytes.
fn w_cubic(t: f64, e: &Epoch, mss: f64) -> f64 {
    C * mss * (t - e.k).powi(3) + e.w_max
}

/// `bytes * 0.7`, exactly, without overflow.
fn beta_of(bytes: u64) -> u64 {
    bytes / 10 * 7 + bytes % 10 * 7 / 10
}

impl CongestionControl for Cubic {
    fn name(&self) -> &'static str {
        "cubic"
    }

    fn on_sent(&mut self, now: Instant, bytes: u64, in_flight: u64) {
        // Nothing was in flight: the connection was idle since the last send. That time must not
        // count towards t (RFC 9438 §5.8; Linux shifts its epoch on CA_EVENT_TX_START the same
        // way). An open app-limited stretch already covers it.
        if in_flight <= bytes && self.app_limited_since.is_none() {
            if let (Some(e), Some(last)) = (&mut self.s.epoch, self.last_sent) {
                e.start = (e.start + now.saturating_since(last)).min(now);
            }
        }
        self.last_sent = Some(now);
        self.flight = in_flight;
    }

    fn on_ack(&mut self, ack: &AckSample) {
        self.flight = ack.in_flight;
        self.recovering = ack.in_recovery;
        if ack.acked_bytes > 0 {
            self.rto_backoff = false;
        }
        if ack.in_recovery || ack.acked_bytes == 0 {
            return;
        }
        let mss = mss_bytes(ack.mss);
        let mut acked = ack.acked_bytes;
        if self.window() < self.s.ssthresh {
            if self.s.hystart.is_active() {
                // Round and RTT bookkeeping happens even on app-limited ACKs: the delay signal
                // is still valid.
                if self.s.hystart.on_ack(ack.round_start, ack.rtt) {
                    self.end_initial_slow_start();
                } else if !ack.app_limited {
                    let inc = self.s.hystart.increase(acked, mss);
                    self.s.cwnd = (self.s.cwnd + inc as f64).min(MAX_WINDOW_F);
                }
                return;
            }
            if ack.app_limited {
                return;
            }
            let (cwnd, left) = slow_start(self.window(), self.s.ssthresh, acked, ABC_L * mss);
            self.s.cwnd = cwnd as f64;
            if left == 0 {
                return;
            }
            acked = left;
        }
        if ack.app_limited {
            //= rfc9438#section-5.8 no growth while app-limited, and t excludes that time
            if self.s.epoch.is_some() && self.app_limited_since.is_none() {
                self.app_limited_since = Some(ack.now);
            }
            return;
        }
        if let Some(since) = self.app_limited_since.take() {
            if let Some(e) = &mut self.s.epoch {
                e.start = (e.start + ack.now.saturating_since(since)).min(ack.now);
            }
        }
        self.avoidance(ack.now, acked, mss, ack.srtt);
    }

    fn on_congestion_event(&mut self, _now: Instant, in_flight: u64, mss: u32) {
        let mss = mss_bytes(mss);
        self.undo = Some(self.s);
        let cwnd = self.s.cwnd;
        //= rfc9438#section-4.7 fast convergence
        self.s.w_max = Some(match self.s.w_max {
            Some(w_max) if cwnd < w_max => cwnd * (1.0 + BETA) / 2.0,
            _ => cwnd,
        });
        self.s.cwnd_prior = cwnd;
        //= rfc9438#section-4.6 ssthresh = flight_size * beta; cwnd = max(ssthresh, 2*SMSS)
        // Of the flight size, but never of more than cwnd (Linux reduces cwnd itself; RFC 9438
        // allows cwnd where its growth is held when the flight does not use it, as it is here).
        // The engine's flight size is SND.NXT - SND.UNA: it includes segments sent by limited
        // transmit, which RFC 5681 section 3.2 keeps out of ssthresh, and SACKed bytes. When a
        // loss is found right as the previous recovery ends, that span holds everything sent
        // during that recovery and can be twice the window, and 0.7 of it raised cwnd instead of
        // lowering it (simulated 250 ms path: 8.0 MB -> 12.5 MB).
        let basis = in_flight.min(self.window());
        self.s.ssthresh = beta_of(basis).max(2 * mss).min(MAX_WINDOW);
        self.s.cwnd = self.s.ssthresh as f64;
        self.s.epoch = None;
        self.s.hystart.finish();
        self.flight = in_flight;
        self.recovering = true;
        self.app_limited_since = None;
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        self.recovering = false;
    }

    fn on_rto(&mut self, _now: Instant, mss: u32) {
        let mss = mss_bytes(mss);
        // As in NewReno: one reduction per congestion signal, and backoffs keep ssthresh.
        if !self.recovering && !self.rto_backoff {
            self.undo = Some(self.s);
            self.s.cwnd_prior = self.s.cwnd;
            //= rfc9438#section-4.8 ssthresh from beta, cwnd per RFC 5681
            self.s.ssthresh = beta_of(self.flight).max(2 * mss).min(MAX_WINDOW);
        }
        //= rfc9438#section-4.8 the first stage after a timeout: W_max = its starting cwnd, K = 0
        self.s.w_max = None;
        self.s.cwnd = mss as f64;
        self.s.epoch = None;
        self.s.hystart.finish();
        self.recovering = false;
        self.rto_backoff = true;
        self.app_limited_since = None;
    }

    fn on_spurious_congestion(&mut self) {
        //= rfc9438#section-4.9 restore the state from before the congestion event
        if let Some(prior) = self.undo.take() {
            let cwnd = self.s.cwnd.max(prior.cwnd);
            self.s = prior;
            self.s.cwnd = cwnd;
            self.recovering = false;
            self.rto_backoff = false;
            self.app_limited_since = None;
        }
    }

    fn on_idle_restart(&mut self, _now: Instant, mss: u32) {
        self.s.ssthresh = idle_ssthresh(self.s.ssthresh, self.window());
        self.s.cwnd = restart_window(self.window(), mss) as f64;
        self.s.epoch = None;
        self.app_limited_since = None;
    }

    fn window(&self) -> u64 {
        // In [1, MAX_WINDOW] by construction; the cast saturates anyway.
        self.s.cwnd as u64
    }

    fn ssthresh(&self) -> u64 {
        self.s.ssthresh
    }

    fn state(&self) -> &'static str {
        if self.recovering {
            "recovery"
        } else if self.window() >= self.s.ssthresh {
            "avoidance"
        } else if self.s.hystart.in_css() {
            "css"
        } else {
            "slow_start"
        }
    }
}

#[cfg(test)]
#[path = "cubic_tests.rs"]
mod tests;
