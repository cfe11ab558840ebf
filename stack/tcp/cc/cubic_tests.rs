//! CUBIC and its HyStart++ slow start, driven ACK by ACK.

use super::*;
use crate::stack::tcp::cc::hystart::{Phase, CSS_ROUNDS};
use crate::stack::tcp::cc::tests::{ack, ack_round};

const MSS: u32 = 1000;
const M: u64 = MSS as u64;
const MF: f64 = M as f64;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// CUBIC right after a loss at `w_max_segs` segments, recovery over.
fn after_loss(w_max_segs: u64) -> Cubic {
    let mut cc = Cubic::new(MSS);
    cc.s.cwnd = (w_max_segs * M) as f64;
    cc.on_congestion_event(Instant::ZERO, w_max_segs * M, MSS);
    cc.on_recovery_end(Instant::ZERO);
    cc
}

/// `rounds` round trips of `rtt` from `now`, each acknowledging the window one MSS per ACK, the
/// ACKs spread evenly across the round. Returns the time reached.
fn run(cc: &mut Cubic, mut now: Instant, rounds: u32, rtt: Duration) -> Instant {
    for _ in 0..rounds {
        let n = (cc.window() / M).max(1);
        let step = rtt / n as u32;
        for i in 0..n {
            now += step;
            let mut a = ack(now, M, MSS);
            a.rtt = Some(rtt);
            a.srtt = rtt;
            a.min_rtt = rtt;
            a.round_start = i == 0;
            cc.on_ack(&a);
        }
    }
    now
}

fn epoch(cc: &Cubic) -> Epoch {
    cc.s.epoch.expect("in a congestion-avoidance stage")
}

#[test]
fn slow_start_doubles_per_rtt() {
    let mut cc = Cubic::new(MSS);
    for round in 1..=4u64 {
        ack_round(&mut cc, Instant::from_millis(100 * round), M, 1);
        assert_eq!(cc.window(), (10 * M) << round, "round {round}");
    }
    assert_eq!(cc.state(), "slow_start");
}

#[test]
fn loss_reduces_flight_by_beta_with_a_floor() {
    let mut cc = Cubic::new(MSS);
    cc.s.cwnd = 100_000.0;
    cc.on_congestion_event(Instant::ZERO, 100 * M, MSS);
    assert_eq!((cc.window(), cc.ssthresh()), (70 * M, 70 * M));
    assert_eq!(cc.s.w_max, Some(100_000.0));
    assert_eq!(cc.state(), "recovery");
    assert_eq!(cc.s.hystart.phase(), Phase::Done);
    cc.on_congestion_event(Instant::ZERO, M, MSS);
    assert_eq!((cc.window(), cc.ssthresh()), (2 * M, 2 * M));
    assert_eq!(beta_of(u64::MAX), u64::MAX / 10 * 7 + 3);
}

#[test]
fn loss_reduces_at_most_cwnd() {
    // A loss found as the previous recovery ends: SND.NXT - SND.UNA still spans everything sent
    // during that recovery, SACKed bytes included, twice the window. The cut is 0.7 of cwnd,
    // where 0.7 of that span would have raised the window from 80 to 112 segments.
    let mut cc = after_loss(115);
    assert_eq!(cc.window(), 80 * M + 500);
    cc.s.cwnd = (80 * M) as f64;
    cc.on_congestion_event(Instant::ZERO, 160 * M, MSS);
    assert_eq!((cc.window(), cc.ssthresh()), (56 * M, 56 * M));
    // A flight below cwnd (the window was not used up) is still what is reduced.
    let mut cc = after_loss(100);
    cc.s.cwnd = (80 * M) as f64;
    cc.on_congestion_event(Instant::ZERO, 50 * M, MSS);
    assert_eq!((cc.window(), cc.ssthresh()), (35 * M, 35 * M));
}

#[test]
fn k_and_curve_match_the_rfc_formula() {
    let mut cc = after_loss(100);
    let t0 = Instant::from_millis(1_000);
    cc.on_ack(&ack(t0, M, MSS));
    let e = epoch(&cc);
    // K = cbrt((W_max - cwnd_epoch) / C) with W_max = 100, cwnd_epoch = 70 segments.
    let k = (30.0f64 / 0.4).cbrt();
    assert!((e.k - k).abs() < 1e-9, "K = {}", e.k);
    assert_eq!(e.start, t0);
    for (t, segs) in [
        (0.0, 70.0),
        (k, 100.0),
        (k + 1.0, 100.4),
        (k + 2.0, 103.2),
        (k - 1.0, 99.6),
    ] {
        let w = w_cubic(t, &e, MF) / MF;
        assert!((w - segs).abs() < 1e-6, "W_cubic({t}) = {w}, want {segs}");
    }
}

#[test]
fn window_follows_the_cubic_curve() {
    let mut cc = after_loss(100);
    let rtt = ms(100);
    let mut now = run(&mut cc, Instant::ZERO, 1, rtt);
    let e = epoch(&cc);
    let k = (30.0f64 / 0.4).cbrt();
    // Through the concave region and past K the window tracks W_cubic(t) within 1%
    // (it aims one RTT ahead and gets there over the RTT), flattening at W_max around t = K.
    // (Later, near 6 s, the Reno estimate catches up with the flat plateau and takes over.)
    loop {
        now = run(&mut cc, now, 1, rtt);
        let t = now.saturating_since(e.start).as_secs_f64();
        if t > k + 1.0 {
            break;
        }
        let want = w_cubic(t, &e, MF);
        let got = cc.window() as f64;
        assert!(
            (got - want).abs() / want < 0.01,
            "t={t:.2}: cwnd {got}, W_cubic {want:.0}"
        );
        assert!(epoch(&cc).w_est < want, "left the cubic region at t={t:.2}");
        if (t - k).abs() < 0.1 {
            assert!(
                (got / MF - 100.0).abs() < 1.0,
                "at K: {} segments",
                got / MF
            );
        }
    }
    assert_eq!(cc.state(), "avoidance");
}

#[test]
fn fast_convergence_lowers_w_max() {
    let mut cc = after_loss(100);
    assert_eq!(cc.s.w_max, Some(100_000.0));
    // The next loss comes before the window got back to W_max: release bandwidth.
    cc.s.cwnd = 80_000.0;
    cc.on_congestion_event(Instant::ZERO, 80 * M, MSS);
    assert_eq!(cc.s.w_max, Some(80_000.0 * 0.85));
    assert_eq!(cc.ssthresh(), 56 * M);
    // Past W_max: the new maximum is simply the window.
    cc.on_recovery_end(Instant::ZERO);
    cc.s.cwnd = 120_000.0;
    cc.on_congestion_event(Instant::ZERO, 120 * M, MSS);
    assert_eq!(cc.s.w_max, Some(120_000.0));
}

#[test]
fn reno_friendly_region_dominates_at_small_rtt() {
    let mut cc = after_loss(100);
    let now = run(&mut cc, Instant::ZERO, 200, ms(1));
    let e = epoch(&cc);
    let t = now.saturating_since(e.start).as_secs_f64();
    let cubic = w_cubic(t, &e, MF);
    let got = cc.window() as f64;
    // 200 RTTs of 1 ms: the cubic curve has barely moved from 70 segments, while the Reno
    // estimate grew ~0.53 segment per RTT up to the old window and 1 per RTT after it.
    assert!(cubic < 75.0 * MF, "W_cubic {cubic}");
    assert!(got > 200.0 * MF, "cwnd {got}");
    assert!(
        (got - e.w_est).abs() < 1.0,
        "cwnd {got} vs W_est {}",
        e.w_est
    );
}

#[test]
fn rto_gives_loss_window_and_next_stage_starts_with_k_zero() {
    let mut cc = Cubic::new(MSS);
    cc.on_sent(Instant::ZERO, M, 100 * M);
    cc.on_rto(Instant::from_millis(300), MSS);
    assert_eq!((cc.window(), cc.ssthresh()), (M, 70 * M));
    assert_eq!(cc.state(), "slow_start");
    // Backoff of the same loss: nothing changes.
    cc.on_sent(Instant::from_millis(300), M, M);
    cc.on_rto(Instant::from_millis(900), MSS);
    assert_eq!((cc.window(), cc.ssthresh()), (M, 70 * M));
    // Standard slow start (no HyStart++ after a timeout) up to ssthresh, then a K = 0 stage.
    let mut now = Instant::from_millis(900);
    while cc.state() == "slow_start" {
        now = run(&mut cc, now, 1, ms(100));
    }
    let e = epoch(&cc);
    assert_eq!(e.k, 0.0);
    assert_eq!(e.w_max, 70_000.0);
    assert_eq!(cc.s.w_max, Some(70_000.0));
}

#[test]
fn undo_restores_exact_state() {
    let mut cc = after_loss(100);
    let now = run(&mut cc, Instant::ZERO, 20, ms(100));
    let before = cc.s;
    cc.on_congestion_event(now, cc.window(), MSS);
    assert!(cc.window() < before.cwnd as u64);
    cc.on_spurious_congestion();
    assert_eq!(cc.s, before);
    assert_eq!(cc.state(), "avoidance");

    cc.on_sent(now, M, cc.window());
    cc.on_rto(now + ms(300), MSS);
    cc.on_spurious_congestion();
    assert_eq!(cc.s, before);
    cc.on_spurious_congestion();
    assert_eq!(cc.s, before);

    // Undo in the initial slow start gives HyStart++ back too.
    let mut cc = Cubic::new(MSS);
    ack_round(&mut cc, Instant::from_millis(100), M, 1);
    let before = cc.s;
    cc.on_congestion_event(Instant::from_millis(150), 15 * M, MSS);
    cc.on_spurious_congestion();
    assert_eq!(cc.s, before);
    assert_eq!(cc.s.hystart.phase(), Phase::SlowStart);
}

/// Slow start at 100 ms for two rounds (10 -> 40 segments), then the RTT jumps to 120 ms.
fn into_css() -> (Cubic, Instant) {
    let mut cc = Cubic::new(MSS);
    let now = run(&mut cc, Instant::ZERO, 2, ms(100));
    assert_eq!(cc.window(), 40 * M);
    let now = run(&mut cc, now, 1, ms(120));
    (cc, now)
}

#[test]
fn hystart_enters_css_then_avoidance_after_css_rounds() {
    let (mut cc, mut now) = into_css();
    assert_eq!(cc.state(), "css");
    // The 8th ACK of the round saw the increase: 7 ACKs at slow-start rate, 33 at a quarter.
    assert_eq!(cc.window(), 40 * M + 7 * M + 33 * M / 4);
    assert_eq!(cc.ssthresh(), u64::MAX);
    let w = cc.window();
    now = run(&mut cc, now, 1, ms(120));
    assert_eq!(cc.window(), w + (w / M) * M / 4);
    now = run(&mut cc, now, CSS_ROUNDS - 2, ms(120));
    assert_eq!(cc.state(), "css");
    // The next round start completes CSS_ROUNDS: congestion avoidance from the current window.
    let w = cc.window();
    let mut a = ack(now + ms(1), M, MSS);
    a.round_start = true;
    cc.on_ack(&a);
    assert_eq!(cc.state(), "avoidance");
    assert_eq!((cc.window(), cc.ssthresh()), (w, w));
    assert_eq!(cc.s.w_max, None);
    cc.on_ack(&ack(now + ms(2), M, MSS));
    let e = epoch(&cc);
    assert_eq!((e.k, e.w_max), (0.0, w as f64));
}

#[test]
fn hystart_returns_to_slow_start_when_rtt_falls() {
    let (mut cc, now) = into_css();
    assert_eq!(cc.state(), "css");
    let w = cc.window();
    run(&mut cc, now, 1, ms(110));
    assert_eq!(cc.state(), "slow_start");
    assert_eq!(cc.s.hystart.phase(), Phase::SlowStart);
    // 7 ACKs in CSS before the 8th sample showed the drop, then slow-start rate.
    let n = w / M;
    assert_eq!(cc.window(), w + 7 * M / 4 + (n - 7) * M);
}

#[test]
fn app_limited_acks_neither_grow_nor_age_the_stage() {
    let mut cc = after_loss(100);
    let mut now = run(&mut cc, Instant::ZERO, 10, ms(100));
    let start = epoch(&cc).start;
    let w = cc.window();
    let first_limited = now + ms(100);
    for _ in 0..100 {
        now += ms(100);
        let mut a = ack(now, M, MSS);
        a.app_limited = true;
        cc.on_ack(&a);
    }
    assert_eq!(cc.window(), w);
    now += ms(100);
    cc.on_ack(&ack(now, M, MSS));
    assert_eq!(
        epoch(&cc).start,
        start + now.saturating_since(first_limited)
    );
    assert!(cc.window() >= w && cc.window() < w + M);
}

#[test]
fn send_after_idle_shifts_the_stage() {
    let mut cc = after_loss(100);
    let now = run(&mut cc, Instant::ZERO, 5, ms(100));
    let start = epoch(&cc).start;
    cc.on_sent(now, M, 10 * M);
    assert_eq!(epoch(&cc).start, start);
    // Everything acknowledged, 30 s of silence, then a send from an empty pipe.
    cc.on_sent(now + Duration::from_secs(30), M, M);
    assert_eq!(epoch(&cc).start, start + Duration::from_secs(30));
}

#[test]
fn idle_restart_uses_restart_window() {
    let mut cc = after_loss(100);
    run(&mut cc, Instant::ZERO, 5, ms(100));
    let w = cc.window();
    cc.on_idle_restart(Instant::from_millis(60_000), MSS);
    assert_eq!(cc.window(), 10 * M);
    assert_eq!(cc.ssthresh(), (70 * M).max(w / 4 * 3));
    assert!(cc.s.epoch.is_none());
    assert_eq!(cc.state(), "slow_start");
}

#[test]
fn huge_windows_and_long_rtts_stay_bounded() {
    for mss in [536u32, 9000] {
        let m = u64::from(mss);
        let mut cc = Cubic::new(mss);
        cc.s.cwnd = (1u64 << 30) as f64;
        cc.on_congestion_event(Instant::ZERO, 1 << 30, mss);
        cc.on_recovery_end(Instant::ZERO);
        let mut now = Instant::ZERO;
        for i in 0..200u64 {
            now += Duration::from_secs(5);
            let before = cc.window();
            let mut a = ack(now, if i % 2 == 0 { 1 << 30 } else { m }, mss);
            a.srtt = Duration::from_secs(5);
            cc.on_ack(&a);
            let w = cc.window();
            assert!(
                w >= before && w <= before + before / 2 + 1,
                "{before} -> {w}"
            );
            assert!(w <= MAX_WINDOW);
        }
        assert!(cc.window() > 1 << 30);
    }
}

/// One round as an unpaced slow start on a long fat path shows it when the round boundary falls
/// inside a flight: the first ACKs are the previous flight's tail, delayed by the queue the flight
/// built itself (`tail`), the rest come from the next flight's head at the base RTT. Returns the
/// time reached.
fn flight_shaped_round(
    cc: &mut Cubic,
    mut now: Instant,
    base: Duration,
    tail: Duration,
) -> Instant {
    let n = (cc.window() / M).max(1);
    let step = base / n as u32;
    for i in 0..n {
        now += step;
        let mut a = ack(now, M, MSS);
        a.rtt = Some(if i < 8 { tail } else { base });
        a.srtt = base;
        a.min_rtt = base;
        a.round_start = i == 0;
        cc.on_ack(&a);
    }
    now
}

#[test]
fn css_is_not_undone_by_the_next_flights_head_in_its_own_round() {
    // Slow start at a 250 ms base RTT to 40 segments, then rounds whose first samples carry the
    // flight's own queue (30 ms more than the base, above the 16 ms threshold). Before, the base
    // RTT samples later in the same round "fell below the baseline" and slow start resumed every
    // round: cwnd doubled on until the queue overflowed. Now CSS holds: CSS_ROUNDS rounds of at
    // most 1.25x, then congestion avoidance with ssthresh = cwnd.
    let base = ms(250);
    let mut cc = Cubic::new(MSS);
    let mut now = run(&mut cc, Instant::ZERO, 2, base);
    assert_eq!(cc.window(), 40 * M);
    now = flight_shaped_round(&mut cc, now, base, base + ms(30));
    assert_eq!(cc.state(), "css");
    // 7 ACKs at slow-start rate before the 8th sample showed the rise, 33 at a quarter.
    assert_eq!(cc.window(), 40 * M + 7 * M + 33 * M / 4);
    let entered = cc.window();
    for r in 1..CSS_ROUNDS {
        let w = cc.window();
        now = flight_shaped_round(&mut cc, now, base, base + ms(30));
        assert_eq!(cc.state(), "css", "CSS round {r}");
        assert!(
            cc.window() <= w + w / 4 + M,
            "round {r}: {w} -> {}",
            cc.window()
        );
    }
    let w = cc.window();
    flight_shaped_round(&mut cc, now, base, base + ms(30));
    assert_eq!(cc.state(), "avoidance");
    assert_eq!(cc.ssthresh(), w);
    // Slow start would have reached 40 * 2^5 = 1280 segments; CSS stays under 2.5x its start.
    assert!(cc.window() < entered * 5 / 2, "{}", cc.window());
}

#[test]
fn css_resumes_slow_start_when_a_later_round_shows_a_lower_rtt() {
    // The rise was jitter confined to the entry round: a whole later round below the entry
    // round's minimum by more than the 1 ms sample resolution is a spurious exit.
    let base = ms(250);
    let mut cc = Cubic::new(MSS);
    let mut now = run(&mut cc, Instant::ZERO, 2, base);
    now = run(&mut cc, now, 1, base + ms(30));
    assert_eq!(cc.state(), "css");
    now = run(&mut cc, now, 1, base + ms(29));
    assert_eq!(cc.state(), "css");
    run(&mut cc, now, 1, base + ms(20));
    assert_eq!(cc.state(), "slow_start");
}
