//! Helpers shared by the algorithms' unit tests, and property tests over both algorithms.

use std::time::Duration;

use proptest::prelude::*;

use super::{AckSample, CcAlgorithm, CongestionControl, MAX_WINDOW};
use crate::stack::tcp::time::Instant;

/// An ACK for `acked` bytes at `now`, with a 100 ms RTT and nothing else special.
pub(super) fn ack(now: Instant, acked: u64, mss: u32) -> AckSample {
    AckSample {
        now,
        acked_bytes: acked,
        rtt: Some(Duration::from_millis(100)),
        srtt: Duration::from_millis(100),
        min_rtt: Duration::from_millis(100),
        prior_in_flight: acked,
        in_flight: 0,
        delivered: 0,
        delivery_rate: None,
        app_limited: false,
        round_start: false,
        in_recovery: false,
        mss,
        ..AckSample::default()
    }
}

/// Acknowledges one window (as it was at the start of the round) in ACKs of `segs_per_ack`
/// segments of `mss` bytes, all at `now`; the first ACK starts the round.
pub(super) fn ack_round(cc: &mut dyn CongestionControl, now: Instant, mss: u64, segs_per_ack: u64) {
    let per_ack = mss * segs_per_ack;
    for i in 0..cc.window() / per_ack {
        let mut a = ack(now, per_ack, mss as u32);
        a.round_start = i == 0;
        cc.on_ack(&a);
    }
}

/// One input to a controller.
#[derive(Clone, Debug)]
enum Op {
    Ack {
        advance_us: u64,
        acked: u64,
        rtt_us: Option<u64>,
        srtt_us: u64,
        in_flight: u64,
        app_limited: bool,
        round_start: bool,
        in_recovery: bool,
    },
    Sent {
        advance_us: u64,
        bytes: u64,
        in_flight: u64,
    },
    Congestion {
        in_flight: u64,
    },
    RecoveryEnd,
    Rto,
    Spurious,
    IdleRestart {
        advance_us: u64,
    },
}

fn bytes() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..200_000,
        2 => 0u64..(1 << 31),
        1 => any::<u64>(),
    ]
}

fn micros() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..200_000, 1 => 0u64..20_000_000, 1 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (
            micros(),
            bytes(),
            proptest::option::of(micros()),
            micros(),
            bytes(),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(advance_us, acked, rtt_us, srtt_us, in_flight, app_limited, round_start, in_recovery)| {
                    Op::Ack { advance_us, acked, rtt_us, srtt_us, in_flight, app_limited, round_start, in_recovery }
                }
            ),
        4 => (micros(), bytes(), bytes())
            .prop_map(|(advance_us, bytes, in_flight)| Op::Sent { advance_us, bytes, in_flight }),
        1 => bytes().prop_map(|in_flight| Op::Congestion { in_flight }),
        1 => Just(Op::RecoveryEnd),
        1 => Just(Op::Rto),
        1 => Just(Op::Spurious),
        1 => micros().prop_map(|advance_us| Op::IdleRestart { advance_us }),
    ]
}

fn algorithm() -> impl Strategy<Value = CcAlgorithm> {
    prop_oneof![Just(CcAlgorithm::NewReno), Just(CcAlgorithm::Cubic)]
}

fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// Applies `op` at time `now` (advanced by the op) and returns the new time.
fn apply(cc: &mut dyn CongestionControl, now: Instant, op: &Op, mss: u32) -> Instant {
    match *op {
        Op::Ack {
            advance_us,
            acked,
            rtt_us,
            srtt_us,
            in_flight,
            app_limited,
            round_start,
            in_recovery,
        } => {
            let now = now + us(advance_us);
            let mut a = ack(now, acked, mss);
            a.rtt = rtt_us.map(us);
            a.srtt = us(srtt_us);
            a.in_flight = in_flight;
            a.app_limited = app_limited;
            a.round_start = round_start;
            a.in_recovery = in_recovery;
            cc.on_ack(&a);
            now
        }
        Op::Sent {
            advance_us,
            bytes,
            in_flight,
        } => {
            let now = now + us(advance_us);
            cc.on_sent(now, bytes, in_flight);
            now
        }
        Op::Congestion { in_flight } => {
            cc.on_congestion_event(now, in_flight, mss);
            now
        }
        Op::RecoveryEnd => {
            cc.on_recovery_end(now);
            now
        }
        Op::Rto => {
            cc.on_rto(now, mss);
            now
        }
        Op::Spurious => {
            cc.on_spurious_congestion();
            now
        }
        Op::IdleRestart { advance_us } => {
            let now = now + us(advance_us);
            cc.on_idle_restart(now, mss);
            now
        }
    }
}

const STATES: [&str; 4] = ["slow_start", "css", "avoidance", "recovery"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever happens, the window stays in [2 MSS, MAX_WINDOW] (1 MSS once a timeout has
    /// fired), ssthresh never drops below 2 MSS, an ACK never shrinks the window, and ACKs in
    /// recovery or for app-limited data leave it unchanged.
    #[test]
    fn window_stays_in_bounds(
        alg in algorithm(),
        mss in 536u32..=9000,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let mut cc = alg.build(mss, Instant::ZERO);
        let m = u64::from(mss);
        let mut now = Instant::ZERO;
        let mut had_rto = false;
        for op in &ops {
            let before = cc.window();
            now = apply(cc.as_mut(), now, op, mss);
            had_rto |= matches!(op, Op::Rto);
            let w = cc.window();
            let floor = if had_rto { m } else { 2 * m };
            prop_assert!(w >= floor, "window {w} below {floor} after {op:?}");
            prop_assert!(w <= MAX_WINDOW, "window {w} above the cap after {op:?}");
            prop_assert!(cc.ssthresh() >= 2 * m, "ssthresh {} after {op:?}", cc.ssthresh());
            prop_assert!(STATES.contains(&cc.state()));
            if let Op::Ack { app_limited, in_recovery, .. } = op {
                prop_assert!(w >= before, "an ACK shrank the window {before} -> {w}: {op:?}");
                if *app_limited || *in_recovery {
                    prop_assert!(w == before, "grew {before} -> {w} on {op:?}");
                }
            }
        }
    }

    /// A congestion event (with the flight no larger than the window) undone at once leaves
    /// window and ssthresh exactly as they were.
    #[test]
    fn undo_restores_exact_values(
        alg in algorithm(),
        mss in 536u32..=9000,
        ops in proptest::collection::vec(op(), 0..100),
        flight_frac in 0.0f64..=1.0,
        by_rto in any::<bool>(),
    ) {
        let mut cc = alg.build(mss, Instant::ZERO);
        let mut now = Instant::ZERO;
        for op in &ops {
            now = apply(cc.as_mut(), now, op, mss);
        }
        // Undo of a new response needs a fresh, non-backoff state.
        cc.on_spurious_congestion();
        cc.on_recovery_end(now);
        let mut a = ack(now, 1, mss);
        a.app_limited = true;
        cc.on_ack(&a);
        let before = (cc.window(), cc.ssthresh());
        prop_assume!(before.0 >= 2 * u64::from(mss));
        let flight = (before.0 as f64 * flight_frac) as u64;
        if by_rto {
            cc.on_sent(now, 1, flight);
            cc.on_rto(now, mss);
        } else {
            cc.on_congestion_event(now, flight, mss);
        }
        cc.on_spurious_congestion();
        prop_assert_eq!((cc.window(), cc.ssthresh()), before);
    }

    /// Any field values at all, MSS and time included, never panic.
    #[test]
    fn arbitrary_inputs_never_panic(
        alg in algorithm(),
        seq in proptest::collection::vec((op(), any::<u32>(), any::<u64>()), 0..100),
    ) {
        let mut cc = alg.build(seq.first().map_or(1460, |s| s.1), Instant::ZERO);
        for (op, mss, t) in &seq {
            apply(cc.as_mut(), Instant::from_nanos(*t), op, *mss);
            prop_assert!(cc.window() >= 1);
            let _ = (cc.ssthresh(), cc.state(), cc.in_slow_start(), cc.pacing_rate());
        }
    }
}
