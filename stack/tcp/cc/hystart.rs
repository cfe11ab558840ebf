//! HyStart++ (RFC 9406): leave the initial slow start on a delay increase, before the losses an
//! overshooting slow start causes on a deep-buffered path.
//!
//! Each round's minimum RTT (over at least [`N_RTT_SAMPLE`] samples) is compared with the previous
//! round's; a rise of more than `clamp(last / 8, 4 ms, 16 ms)` moves to Conservative Slow Start
//! (CSS), which grows at a quarter of the slow-start rate for [`CSS_ROUNDS`] rounds and then hands
//! over to congestion avoidance. If the RTT falls back below the CSS baseline the exit was
//! spurious and slow start resumes. Rounds come from the engine (`AckSample::round_start`).
//!
//! # The CSS baseline is the whole entry round's minimum
//! RFC 9406 takes `cssBaselineMinRtt` from the round's minimum at the moment of entry (after
//! [`N_RTT_SAMPLE`] samples) and resumes slow start as soon as a CSS round's minimum drops below
//! it, the rest of the entry round included. An unpaced slow start makes that self-defeating on
//! a long fat path: each flight goes out at twice the bottleneck rate, so RTTs rise along a
//! flight (its own queue) and fall back to the base RTT at the next flight's head, and round
//! boundaries (`SND.NXT` when the round began) fall anywhere inside a flight (receive-window and
//! delayed-ACK effects shift them). A round's first samples are then the previous flight's
//! queued tail: they trigger CSS, the next flight's head, later in the same round, "falls below
//! the baseline", slow start resumes, and this repeats every round until the queue overflows
//! (simulated 100 Mbit/s, 250 ms, 1-BDP queue: cwnd reached 3.6 BDP, and a 100 MB transfer
//! resent 50.8 MB). Here the baseline keeps taking the minimum over the rest of the entry round, and
//! only later CSS rounds can find the exit spurious, by a fall of more than the samples'
//! resolution ([`RTT_RESOLUTION`]). Entry stays RFC 9406's test, which fires where Linux's
//! HyStart delay test (first samples of a round against the minimum RTT) fires; CSS then grows
//! at most 1.25x per round for [`CSS_ROUNDS`] rounds, where Linux would stop growing at once.

use std::time::Duration;

/// RTT samples needed in a round before its minimum is trusted.
pub(crate) const N_RTT_SAMPLE: u32 = 8;
/// Lower bound of the delay-increase threshold.
pub(crate) const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
/// Upper bound of the delay-increase threshold.
pub(crate) const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
/// The threshold is the last round's minimum RTT divided by this, before clamping.
pub(crate) const MIN_RTT_DIVISOR: u32 = 8;
/// CSS grows at slow start's rate divided by this.
pub(crate) const CSS_GROWTH_DIVISOR: u64 = 4;
/// Rounds spent in CSS before congestion avoidance.
pub(crate) const CSS_ROUNDS: u32 = 5;
/// The resolution of the engine's RTT samples: the timestamp echo counts whole milliseconds (a
/// timed segment is measured finer), so a round's minimum can sit up to this much below another's
/// for the same path delay. A CSS round's minimum must fall by more than this for the exit to
/// count as spurious.
pub(crate) const RTT_RESOLUTION: Duration = Duration::from_millis(1);
/// Per-ACK growth limit in MSS for a sender that does not pace (RFC 9406 §4.3; a paced sender
/// would use no limit).
pub(crate) const L_NON_PACED: u64 = 8;

/// Where HyStart++ is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Standard slow start, watching the RTT.
    SlowStart,
    /// Conservative Slow Start since the RTT rose to `baseline`; `rounds` completed so far.
    Css { baseline: Duration, rounds: u32 },
    /// Initial slow start is over (by CSS, loss or timeout); HyStart++ is no longer used.
    Done,
}

/// HyStart++ state for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HyStart {
    phase: Phase,
    /// Minimum RTT of the previous round (None: no samples, i.e. infinity).
    last_round_min_rtt: Option<Duration>,
    /// Minimum RTT of the current round so far.
    current_round_min_rtt: Option<Duration>,
    /// RTT samples taken in the current round.
    samples: u32,
}

impl HyStart {
    pub(crate) fn new() -> Self {
        HyStart {
            phase: Phase::SlowStart,
            last_round_min_rtt: None,
            current_round_min_rtt: None,
            samples: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Still steering the initial slow start.
    pub(crate) fn is_active(&self) -> bool {
        self.phase != Phase::Done
    }

    pub(crate) fn in_css(&self) -> bool {
        matches!(self.phase, Phase::Css { .. })
    }

    /// Slow start ended some other way (loss, timeout): stop for the rest of the connection
    /// (RFC 9406 §4.3 uses HyStart++ in the initial slow start only).
    pub(crate) fn finish(&mut self) {
        self.phase = Phase::Done;
    }

    /// Feeds one ACK. Returns true when CSS has completed its rounds: slow start is over and the
    /// caller sets ssthresh to cwnd.
    pub(crate) fn on_ack(&mut self, round_start: bool, rtt: Option<Duration>) -> bool {
        if self.phase == Phase::Done {
            return false;
        }
        if round_start {
            if let Phase::Css { rounds, .. } = &mut self.phase {
                *rounds += 1;
                if *rounds >= CSS_ROUNDS {
                    //= rfc9406#section-4.2 after CSS_ROUNDS, enter congestion avoidance
                    self.phase = Phase::Done;
                    return true;
                }
            }
            self.last_round_min_rtt = self.current_round_min_rtt;
            self.current_round_min_rtt = None;
            self.samples = 0;
        }
        let Some(rtt) = rtt else {
            return false;
        };
        self.current_round_min_rtt = Some(self.current_round_min_rtt.map_or(rtt, |m| m.min(rtt)));
        self.samples = self.samples.saturating_add(1);
        if self.samples < N_RTT_SAMPLE {
            return false;
        }
        let Some(current) = self.current_round_min_rtt else {
            return false;
        };
        match self.phase {
            Phase::SlowStart => {
                if let Some(last) = self.last_round_min_rtt {
                    let thresh = (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
                    if current >= last.saturating_add(thresh) {
                        //= rfc9406#section-4.2 delay increase: enter CSS
                        self.phase = Phase::Css {
                            baseline: current,
                            rounds: 0,
                        };
                    }
                }
            }
            Phase::Css {
                baseline,
                rounds: 0,
            } => {
                // Still the round CSS began in: its later samples complete the baseline (the
                // module documentation says why they must not end CSS).
                self.phase = Phase::Css {
                    baseline: baseline.min(current),
                    rounds: 0,
                };
            }
            Phase::Css { baseline, .. } => {
                if current.saturating_add(RTT_RESOLUTION) < baseline {
                    //= rfc9406#section-4.2 the RTT fell back: the exit was spurious
                    self.phase = Phase::SlowStart;
                }
            }
            Phase::Done => {}
        }
        false
    }

    /// cwnd growth for an ACK of `acked` bytes: `min(acked, L*MSS)` in slow start, a quarter of
    /// that in CSS.
    pub(crate) fn increase(&self, acked: u64, mss: u64) -> u64 {
        let inc = acked.min(L_NON_PACED.saturating_mul(mss));
        if self.in_css() {
            inc / CSS_GROWTH_DIVISOR
        } else {
            inc
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Runs one round of `n` ACKs all carrying `rtt`; returns whether CSS completed.
    fn round(h: &mut HyStart, n: u32, rtt: Duration) -> bool {
        let mut done = false;
        for i in 0..n {
            done |= h.on_ack(i == 0, Some(rtt));
        }
        done
    }

    #[test]
    fn delay_increase_above_threshold_enters_css() {
        let mut h = HyStart::new();
        assert!(!round(&mut h, 8, ms(100)));
        // 100 ms / 8 = 12.5 ms threshold: 112 ms stays in slow start.
        round(&mut h, 8, ms(112));
        assert_eq!(h.phase(), Phase::SlowStart);
        // The last round's minimum is now 112 ms: 14 ms threshold.
        round(&mut h, 8, ms(126));
        assert_eq!(
            h.phase(),
            Phase::Css {
                baseline: ms(126),
                rounds: 0
            }
        );
        assert_eq!(h.increase(8000, 1000), 2000);
        assert_eq!(h.increase(100_000, 1000), 2000);
    }

    #[test]
    fn decision_waits_for_enough_samples() {
        let mut h = HyStart::new();
        round(&mut h, 8, ms(50));
        round(&mut h, N_RTT_SAMPLE - 1, ms(200));
        assert_eq!(h.phase(), Phase::SlowStart);
        // The eighth sample of the round triggers it.
        h.on_ack(false, Some(ms(200)));
        assert!(h.in_css());
        // ACKs without an RTT sample do not count.
        let mut h = HyStart::new();
        round(&mut h, 8, ms(50));
        for i in 0..20 {
            h.on_ack(i == 0, None);
        }
        assert_eq!(h.phase(), Phase::SlowStart);
    }

    #[test]
    fn threshold_is_clamped_between_4_and_16_ms() {
        // 10 ms / 8 = 1.25 ms, clamped up to 4 ms.
        let mut h = HyStart::new();
        round(&mut h, 8, ms(10));
        round(&mut h, 8, ms(13));
        assert_eq!(h.phase(), Phase::SlowStart);
        round(&mut h, 8, ms(17));
        assert!(h.in_css());
        // 400 ms / 8 = 50 ms, clamped down to 16 ms.
        let mut h = HyStart::new();
        round(&mut h, 8, ms(400));
        round(&mut h, 8, ms(416));
        assert!(h.in_css());
    }

    #[test]
    fn css_exits_to_avoidance_after_css_rounds() {
        let mut h = HyStart::new();
        round(&mut h, 8, ms(100));
        round(&mut h, 8, ms(120));
        assert!(h.in_css());
        for r in 1..CSS_ROUNDS {
            assert!(!round(&mut h, 8, ms(120)), "round {r}");
            assert!(h.in_css());
        }
        assert!(round(&mut h, 8, ms(120)));
        assert_eq!(h.phase(), Phase::Done);
        assert!(!h.on_ack(true, Some(ms(1))));
        assert_eq!(h.increase(5000, 1000), 5000);
    }

    #[test]
    fn rtt_falling_below_baseline_returns_to_slow_start() {
        let mut h = HyStart::new();
        round(&mut h, 8, ms(100));
        round(&mut h, 8, ms(120));
        assert!(h.in_css());
        // A fall within the samples' resolution (whole milliseconds) is no fall.
        round(&mut h, 8, ms(119));
        assert!(h.in_css());
        round(&mut h, 8, Duration::from_micros(118_900));
        assert_eq!(h.phase(), Phase::SlowStart);
        // Slow start continues with HyStart++ and can enter CSS again.
        round(&mut h, 8, ms(140));
        assert!(h.in_css());
    }

    #[test]
    fn later_samples_of_the_entry_round_lower_the_baseline() {
        let mut h = HyStart::new();
        round(&mut h, 8, ms(100));
        // The round opens with 8 samples of the previous flight's queued tail, then the next
        // flight's head comes back at the base RTT: CSS, and the baseline becomes the base RTT.
        round(&mut h, 8, ms(130));
        assert!(h.in_css());
        for _ in 0..8 {
            h.on_ack(false, Some(ms(100)));
        }
        assert_eq!(
            h.phase(),
            Phase::Css {
                baseline: ms(100),
                rounds: 0
            }
        );
        // Later rounds of the same shape are no fall below the baseline: CSS runs its course.
        let mut done = false;
        for _ in 1..CSS_ROUNDS {
            done |= round(&mut h, 8, ms(130));
            for _ in 0..8 {
                h.on_ack(false, Some(ms(100)));
            }
            assert!(h.in_css());
        }
        assert!(!done);
        assert!(h.on_ack(true, Some(ms(130))));
        assert_eq!(h.phase(), Phase::Done);
    }

    #[test]
    fn finish_stops_everything() {
        let mut h = HyStart::new();
        h.finish();
        assert!(!h.is_active());
        round(&mut h, 8, ms(10));
        round(&mut h, 8, ms(100));
        assert_eq!(h.phase(), Phase::Done);
    }
}
