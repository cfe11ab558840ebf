//! A simulated long fat network (tests/support/sim.rs): 250 ms RTT, a 100 Mbit/s bottleneck with a
//! 1-BDP drop-tail queue and 1% random loss, every impairment on both directions as
//! scripts/lfn-bench.sh builds it. A 100 MB transfer must arrive exactly once and in order; the
//! virtual time it takes is printed beside the ideal the link rate allows. That time is the
//! baseline the loss-recovery work (SACK, RACK-TLP, BBR) had to beat. The loss-based runs only
//! assert a generous stall bound; the BBR run must finish within 1.75 times the link-rate ideal
//! (virtual time, one seed: deterministic, not a timing assertion on a shared machine).
//! `LFN_LOSS=<p>` changes the loss rate, `LFN_TRACE=1` prints the sender's state every 0.5 s.
//! One test runs CUBIC without random loss and bounds what it resends (its first slow start
//! against the 1-BDP queue).
//!
//! `cargo test --release --test lfn_simulation -- --nocapture` prints the figures;
//! `LFN_BYTES=<n>` changes the size.

mod support;

use longhaul::stack::tcp::cc::CcAlgorithm;
use std::time::{Duration, Instant};
use support::sim::*;
use support::*;

const PORT: u16 = 5201;
const RTT: Duration = Duration::from_millis(250);
const RATE_BPS: u64 = 100_000_000;
/// Bandwidth-delay product: 100 Mbit/s × 250 ms.
const BDP_BYTES: usize = (RATE_BPS / 8 * 250 / 1000) as usize;
/// Ethernet frame of a full segment (1448 payload bytes with timestamps) and its payload.
const FRAME_BYTES: u64 = 14 + 20 + 32 + 1448;
const PAYLOAD_BYTES: u64 = 1448;

fn bytes() -> u64 {
    std::env::var("LFN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000_000)
}

/// The best any sender could do: every frame at the bottleneck rate back to back, plus the
/// handshake (one RTT) and the last frame's one-way trip.
fn ideal(bytes: u64) -> Duration {
    let frames = bytes.div_ceil(PAYLOAD_BYTES);
    let serialise = Duration::from_nanos(frames * FRAME_BYTES * 8 * 1_000_000_000 / RATE_BPS);
    serialise + RTT + RTT / 2
}

struct Measured {
    transfer: Duration,
    retrans_bytes: u64,
    rto_count: u64,
    fast_retransmits: u64,
    lost_frames: u64,
    queue_drops: u64,
    polls: u64,
}

/// The random loss rate each way: `LFN_LOSS`, 1% unless set.
fn loss() -> f64 {
    std::env::var("LFN_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.01)
}

fn run(cc: CcAlgorithm, seed: u64, bytes: u64, loss: f64) -> Measured {
    let link = LinkConfig {
        loss,
        delay: RTT / 2,
        rate_bps: Some(RATE_BPS),
        queue_bytes: BDP_BYTES,
        ..LinkConfig::default()
    };
    let mut cfg = SimConfig::symmetric(link, seed);
    for c in [&mut cfg.client, &mut cfg.server] {
        c.rmem(64 << 20).unwrap().wmem(64 << 20).unwrap().cc(cc);
    }
    let plan = |send, send_stream, recv_stream| TransferPlan {
        send,
        send_stream,
        recv_stream,
        max_write: 256 << 10,
        max_read: 256 << 10,
        pause: 0.0,
        seed,
    };
    let mut sim = Sim::new(
        cfg,
        Transfer::client(plan(bytes, 1, 2), server_addr(PORT)),
        Transfer::server(plan(0, 2, 1), PORT),
    );
    // A stall detector, not a goal: a thousand times the ideal (2.4 virtual hours for 100 MB;
    // NewReno recovery without SACK needs about 150 times the ideal here).
    let bound = (ideal(bytes) * 1000).max(Duration::from_secs(600));
    let trace = std::env::var_os("LFN_TRACE").is_some();
    let mut next_trace = Duration::ZERO;
    let transfer = sim
        .drive_until(bound, |s| {
            if trace && s.now() >= next_trace {
                next_trace += Duration::from_millis(500);
                let now = s.now();
                if let Some(c) = s.client.io().all_info().first() {
                    let t = &c.tcp;
                    println!(
                        "t={:.1} {} cwnd={} inflight={} pacing={} delivery={} rtt={} lost_rack={} lost_dupack={} tlp={} rtx={} rto={} recov={} undos={} sndq={} rwnd={}",
                        now.as_secs_f64(), c.cc_state, t.cwnd_bytes, t.in_flight_bytes, t.pacing_rate_bps,
                        t.delivery_rate_bps, t.rtt_us, t.lost_rack, t.lost_dupack, t.tlp_probes, t.retransmits_total, t.rto_count,
                        t.recoveries, t.spurious_undos, c.send_queue, t.snd_wnd
                    );
                }
            }
            let r = &s.server.app().report;
            r.received == bytes || r.first_bad_byte.is_some() || !r.errors.is_empty()
        })
        .unwrap_or_else(|e| {
            panic!(
                "{cc:?}: {e} with {} of {bytes} bytes across; client conns {:?}",
                sim.server.app().report.received,
                sim.client.io().all_info()
            )
        });
    let info = sim.client.io().all_info();
    let tcp = info
        .first()
        .expect("the client's connection is still there")
        .tcp;
    sim.drive_until(Duration::from_secs(600), |s| {
        s.client.app().report.closed && s.server.app().report.closed
    })
    .unwrap_or_else(|e| panic!("{cc:?}: close: {e}"));
    let (c, s) = (&sim.client.app().report, &sim.server.app().report);
    assert!(c.errors.is_empty() && s.errors.is_empty(), "{c:?} {s:?}");
    assert_eq!(s.first_bad_byte, None, "{cc:?}: a byte arrived wrong");
    assert_eq!(s.received, bytes, "{cc:?}: every byte arrives");
    assert_eq!(
        s.received_hash, c.sent_hash,
        "{cc:?}: exactly once, in order"
    );
    assert!(s.eof && c.eof && c.closed && s.closed);
    let (up, down) = sim.link_stats();
    Measured {
        transfer,
        retrans_bytes: tcp.bytes_retrans,
        rto_count: tcp.rto_count,
        fast_retransmits: tcp.fast_retransmits,
        lost_frames: up.lost + down.lost,
        queue_drops: up.queue_drops + down.queue_drops,
        polls: sim.polls(),
    }
}

fn report(name: &str, bytes: u64, m: &Measured, wall: Duration) {
    let ideal = ideal(bytes);
    let goodput = bytes as f64 * 8.0 / m.transfer.as_secs_f64() / 1e6;
    println!(
        "LFN {name}: {bytes} B in {:.1} s virtual ({goodput:.2} Mbit/s, {:.1}% of 100 Mbit/s; \
         ideal {:.2} s, {:.0}x the ideal); retransmitted {} B, {} RTOs, {} fast retransmits; \
         link lost {} frames, queue dropped {}; {} polls, {:.1?} wall",
        m.transfer.as_secs_f64(),
        goodput,
        ideal.as_secs_f64(),
        m.transfer.as_secs_f64() / ideal.as_secs_f64(),
        m.retrans_bytes,
        m.rto_count,
        m.fast_retransmits,
        m.lost_frames,
        m.queue_drops,
        m.polls,
        wall
    );
}

#[test]
fn lfn_250ms_1pct_loss_cubic_baseline() {
    let bytes = bytes();
    let wall = Instant::now();
    let m = run(CcAlgorithm::Cubic, 1, bytes, loss());
    report("cubic", bytes, &m, wall.elapsed());
}

/// The same path without random loss: CUBIC's first slow start must leave exponential growth
/// before it overflows the 1-BDP queue by much. Pipe plus queue hold 2 BDP; a slow start that
/// only stops at the first drop sends twice what the previous round delivered, so it overshoots
/// by up to that much and resends about what it overshot. HyStart++'s delay signal is there to
/// stop it earlier, so the bound is one overflow of at most 1 BDP (3.125 MB) resent in all.
/// Measured (100 MB, virtual time): before the HyStart++ baseline fix 50.8 MB resent (CSS was
/// abandoned every round, cwnd reached 3.6 BDP, and a second recovery raised cwnd from 0.7 of a
/// flight size holding SACKed bytes) in 10.9 s; after it 0 B resent in 10.7 s (CSS from 0.5 BDP,
/// congestion avoidance from 1.56 BDP, no drop).
#[test]
fn lfn_250ms_lossless_cubic_resends_at_most_one_bdp() {
    let bytes = 100_000_000;
    let wall = Instant::now();
    let m = run(CcAlgorithm::Cubic, 1, bytes, 0.0);
    report("cubic lossless", bytes, &m, wall.elapsed());
    assert_eq!(m.lost_frames, 0, "the link itself loses nothing");
    assert!(
        m.retrans_bytes <= BDP_BYTES as u64,
        "CUBIC resent {} B on a lossless path, more than one 1-BDP overflow ({} B); \
         queue dropped {} frames, {} fast retransmits, {} RTOs",
        m.retrans_bytes,
        BDP_BYTES,
        m.queue_drops,
        m.fast_retransmits,
        m.rto_count
    );
}

#[test]
fn lfn_250ms_1pct_loss_newreno_baseline() {
    let bytes = bytes();
    let wall = Instant::now();
    let m = run(CcAlgorithm::NewReno, 1, bytes, loss());
    report("newreno", bytes, &m, wall.elapsed());
}

/// The goal for the loss-recovery work: with BBR (pacing, RACK-TLP, SACK), 100 MB over 250 ms
/// with 1% random loss each way and a 1-BDP queue takes on average at most 1.75 times the
/// link-rate ideal (`ideal()`: every frame serialised at 100 Mbit/s back to back, plus 1.5 RTT;
/// 8.74 s for 100 MB, so 15.3 s) over three seeds, and no seed more than twice (17.5 s).
/// Measured: 12.4, 11.3, 11.6 s; 19.1, 14.2, 13.3 s before this session's BBR, RACK and buffer
/// fixes. Startup (about 5 s of it), a lost SYN or first
/// segment (a 1-s RTO) and the tail's recovery are what separate a run from the ideal.
/// `LFN_SEEDS=<n>` runs more seeds.
#[test]
fn lfn_250ms_1pct_loss_bbr_within_1_75x_the_ideal() {
    let bytes = bytes();
    let seeds: u64 = std::env::var("LFN_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ideal = ideal(bytes);
    let mut total = Duration::ZERO;
    for seed in 1..=seeds {
        let wall = Instant::now();
        let m = run(CcAlgorithm::Bbr, seed, bytes, loss());
        report(&format!("bbr seed {seed}"), bytes, &m, wall.elapsed());
        assert!(
            m.transfer <= ideal * 2,
            "seed {seed}: BBR took {:.1?}, above twice the ideal ({:.1?})",
            m.transfer,
            ideal * 2
        );
        total += m.transfer;
    }
    let mean = total / seeds as u32;
    println!(
        "LFN bbr: mean {:.1?} over {seeds} seeds (bound {:.1?})",
        mean,
        ideal * 7 / 4
    );
    assert!(
        mean <= ideal * 7 / 4,
        "BBR took {mean:.1?} on average, above the bound {:.1?} (1.75x the ideal)",
        ideal * 7 / 4
    );
}
