//! An MTU black hole in the deterministic simulation (tests/support/sim.rs): both ends have MTU
//! 1500, but the path silently drops every IP packet above 1400 bytes (no ICMP), as
//! `longhaul netem --mtu-blackhole 1400` in scripts/lfn-bench.sh's scenarios. The handshake and
//! ACKs pass; full-sized data segments vanish. 250 ms RTT, 100 Mbit/s, 1-BDP queue, no random loss.
//!
//! With MTU probing (the default, as Linux's `tcp_mtu_probing=1`) a 20 MB transfer must arrive
//! exactly once and in order, the longest pause in the receiver's progress must stay within a
//! stated bound, and the probing must settle just below the hole. With probing off, nothing gets
//! through (which shows the black hole is real).
//!
//! `cargo test --release --test pmtu_simulation -- --nocapture` prints the figures; with
//! `PMTU_TRACE=1` also the sender's state every 250 ms.

mod support;

use longhaul::stack::tcp::cc::CcAlgorithm;
use longhaul::stack::tcp::pmtu::MtuProbing;
use std::time::Duration;
use support::sim::*;
use support::*;

const PORT: u16 = 5201;
const RTT: Duration = Duration::from_millis(250);
const RATE_BPS: u64 = 100_000_000;
const BDP_BYTES: usize = (RATE_BPS / 8 * 250 / 1000) as usize;
const HOLE: usize = 1400;
const BYTES: u64 = 20_000_000;
/// The bound on the longest pause of the receiver's progress. At this RTT the first flight, the
/// tail loss probe (2 SRTT = 0.5 s) and the first timeout (0.75 s) carry full-sized segments; the
/// second timeout in a row (backed off to 1.5 s) detects the black hole and the retransmission
/// in 1024-byte segments arrives half an RTT later: about 2.9 s. Linux with tcp_mtu_probing=1
/// waits until its stall is as long as three backed-off minimum RTOs (3 s) and then for the next
/// timeout, i.e. 6 s on this path.
const STALL_BOUND: Duration = Duration::from_secs(4);

struct Outcome {
    done: Result<Duration, Stuck>,
    received: u64,
    longest_pause: Duration,
    first_data: Option<Duration>,
    tcp: Option<longhaul::stack::tcp::conn::TcpInfo>,
    blackholed: u64,
}

fn run(mode: MtuProbing, limit: Duration, cc: CcAlgorithm) -> Outcome {
    let link = LinkConfig {
        delay: RTT / 2,
        rate_bps: Some(RATE_BPS),
        queue_bytes: BDP_BYTES,
        blackhole_above: Some(HOLE),
        ..LinkConfig::default()
    };
    let mut cfg = SimConfig::symmetric(link, 8);
    for c in [&mut cfg.client, &mut cfg.server] {
        c.mtu_probing(mode, Duration::from_secs(600)).cc(cc);
    }
    let plan = |send, send_stream, recv_stream| TransferPlan {
        send,
        send_stream,
        recv_stream,
        max_write: 256 << 10,
        max_read: 256 << 10,
        pause: 0.0,
        seed: 8,
    };
    let mut sim = Sim::new(
        cfg,
        Transfer::client(plan(BYTES, 1, 2), server_addr(PORT)),
        Transfer::server(plan(0, 2, 1), PORT),
    );
    // The receiver's progress: when the connection was up, when bytes last arrived, and the
    // longest pause between arrivals (the first counted from the connection being up).
    let (mut up_at, mut last, mut seen, mut longest) = (None::<Duration>, Duration::ZERO, 0, None);
    let mut first_data = None;
    let mut tcp = None;
    let trace = std::env::var_os("PMTU_TRACE").is_some();
    let mut next_trace = Duration::ZERO;
    let done = sim.drive_until(limit, |s| {
        let now = s.now();
        if trace && now >= next_trace {
            next_trace += Duration::from_millis(250);
            if let Some(c) = s.client.io().all_info().first() {
                let t = &c.tcp;
                println!(
                    "t={:.2} {} mss={} cwnd={} ssthresh={} inflight={} rto={} probes={}/{}/{} recov={} lost_rack={} rcvd={}",
                    now.as_secs_f64(), c.cc_state, t.snd_mss, t.cwnd_bytes, t.ssthresh_bytes,
                    t.in_flight_bytes, t.rto_count, t.mtu_probes, t.mtu_probe_successes,
                    t.mtu_probe_failures, t.recoveries, t.lost_rack, s.server.app().report.received
                );
            }
        }
        if up_at.is_none() && s.client.app().report.connected {
            up_at = Some(now);
            last = now;
        }
        let got = s.server.app().report.received;
        if got > seen {
            let gap = now - last;
            longest = Some(longest.map_or(gap, |l: Duration| l.max(gap)));
            if seen == 0 {
                first_data = up_at.map(|u| now - u);
            }
            seen = got;
            last = now;
        }
        if let Some(c) = s.client.io().all_info().first() {
            tcp = Some(c.tcp);
        }
        let r = &s.server.app().report;
        r.received == BYTES || r.first_bad_byte.is_some() || !r.errors.is_empty()
    });
    let (c, s) = (&sim.client.app().report, &sim.server.app().report);
    assert!(c.errors.is_empty() && s.errors.is_empty(), "{c:?} {s:?}");
    assert_eq!(s.first_bad_byte, None, "{mode:?}: a byte arrived wrong");
    if s.received == BYTES {
        assert_eq!(
            s.received_hash, c.sent_hash,
            "{mode:?}: exactly once, in order"
        );
    }
    Outcome {
        done,
        received: s.received,
        longest_pause: longest.unwrap_or(sim.now() - up_at.unwrap_or_default()),
        first_data,
        tcp,
        blackholed: sim.link_stats().0.blackholed,
    }
}

#[test]
fn black_hole_transfer_completes_with_probing() {
    completes_with_probing(CcAlgorithm::Cubic);
}

#[test]
fn black_hole_transfer_completes_with_probing_bbr() {
    completes_with_probing(CcAlgorithm::Bbr);
}

fn completes_with_probing(cc: CcAlgorithm) {
    let o = run(MtuProbing::OnBlackhole, Duration::from_secs(600), cc);
    let t = o.tcp.expect("the client's connection");
    let took = o
        .done
        .unwrap_or_else(|e| panic!("{e}: {} of {BYTES} bytes; {t:?}", o.received));
    println!(
        "{cc:?}: MTU black hole {HOLE} (MTU 1500, RTT {RTT:?}, 100 Mbit/s), 20 MB with probing: {:.2} s; \
         first data {:.2} s after connect; longest pause {:.2} s (bound {STALL_BOUND:?}); \
         pmtu {} snd_mss {}; black holes {} probes {} ok {} lost {}; RTOs {}; frames blackholed {}",
        took.as_secs_f64(),
        o.first_data.unwrap_or_default().as_secs_f64(),
        o.longest_pause.as_secs_f64(),
        t.pmtu,
        t.snd_mss,
        t.blackholes_detected,
        t.mtu_probes,
        t.mtu_probe_successes,
        t.mtu_probe_failures,
        t.rto_count,
        o.blackholed,
    );
    assert_eq!(o.received, BYTES);
    assert!(
        o.longest_pause <= STALL_BOUND,
        "longest pause {:?} above {STALL_BOUND:?}",
        o.longest_pause
    );
    assert_eq!(t.blackholes_detected, 1, "{t:?}");
    // The search ends just below the hole: within the probe threshold (8 bytes) of it.
    assert!(
        t.pmtu as usize <= HOLE && t.pmtu as usize > HOLE - 8,
        "pmtu {} after the search",
        t.pmtu
    );
    assert!(
        t.mtu_probe_successes >= 2 && t.mtu_probe_failures >= 1,
        "{t:?}"
    );
}

#[test]
fn black_hole_stalls_without_probing() {
    let o = run(MtuProbing::Off, Duration::from_secs(30), CcAlgorithm::Cubic);
    let t = o.tcp.expect("the client's connection");
    println!(
        "MTU black hole {HOLE} without probing: {} bytes in 30 s, {} RTOs, snd_mss {}",
        o.received, t.rto_count, t.snd_mss
    );
    assert!(
        matches!(o.done, Err(Stuck::TimeLimit(_))),
        "{:?}",
        o.done.is_ok()
    );
    assert_eq!(o.received, 0);
    assert_eq!(t.snd_mss, 1448);
    assert_eq!(t.blackholes_detected, 0);
}
