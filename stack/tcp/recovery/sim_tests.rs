//! Two `Conn`s over a simulated path with virtual time, seeded loss, delay jitter (reordering)
//! and duplication: a bulk transfer arrives exactly once and in order, the scoreboard stays
//! consistent, and it finishes within a bound. This drives SACK recovery, RACK, TLP, RTO,
//! F-RTO and the undo paths together, thousands of segments per seed.

use crate::stack::tcp::config::{Recovery, TcpConfig};
use crate::stack::tcp::conn::{Conn, State};
use crate::stack::tcp::segment::Segment;
use crate::stack::tcp::seq::Seq;
use crate::stack::tcp::time::Instant;
use std::collections::BinaryHeap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1e6 < p
    }
}

/// A segment on the wire, ordered by arrival time (earliest first), then by a counter.
struct InFlight {
    at: Instant,
    n: u64,
    to_server: bool,
    seg: Segment,
    payload: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.n) == (o.at, o.n)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.n).cmp(&(self.at, self.n))
    }
}

struct Path {
    loss: f64,
    jitter_ms: u64,
    dup: f64,
    one_way: Duration,
}

fn byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// Runs one transfer of `total` bytes; returns the virtual time it took and the client's info.
fn transfer(
    seed: u64,
    path: &Path,
    total: u64,
    recovery: Recovery,
) -> (Duration, crate::stack::tcp::conn::TcpInfo) {
    let cfg = Arc::new(TcpConfig {
        link_mss: 1000,
        recovery,
        rmem_max: 4 << 20,
        wmem_max: 4 << 20,
        ..TcpConfig::default()
    });
    let a: SocketAddrV4 = "198.18.0.1:40000".parse().unwrap();
    let b: SocketAddrV4 = "198.18.0.2:80".parse().unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut now = Instant::from_millis(1);
    let mut client = Conn::connect(cfg.clone(), now, a, b, Seq(seed as u32), 7);
    let mut server: Option<Conn> = None;
    let mut wire = BinaryHeap::new();
    let mut n = 0u64;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    let mut chunk = vec![0u8; 64 << 10];
    let limit = Instant::from_millis(1) + Duration::from_secs(600);
    let mut steps = 0u64;
    while got < total {
        steps += 1;
        assert!(
            steps < 20_000_000,
            "seed {seed}: livelock at {got}/{total} bytes"
        );
        assert!(
            now < limit,
            "seed {seed}: stalled at {got}/{total} bytes: {client:?}"
        );
        // The app: write what fits, read what arrived (checking every byte).
        if client.state() == State::Established && sent < total {
            let want = ((total - sent) as usize).min(chunk.len());
            for (i, c) in chunk[..want].iter_mut().enumerate() {
                *c = byte(sent + i as u64);
            }
            sent += client.send(&chunk[..want]) as u64;
        }
        if let Some(s) = server.as_mut() {
            loop {
                let k = s.recv(now, &mut buf);
                if k == 0 {
                    break;
                }
                for (i, &c) in buf[..k].iter().enumerate() {
                    assert_eq!(
                        c,
                        byte(got + i as u64),
                        "seed {seed}: byte {} corrupt",
                        got + i as u64
                    );
                }
                got += k as u64;
            }
        }
        // Both ends transmit; the path drops, delays (with jitter: reordering) and duplicates.
        for to_server in [true, false] {
            let conn = if to_server {
                Some(&mut client)
            } else {
                server.as_mut()
            };
            let Some(conn) = conn else { continue };
            while let Some(t) = conn.poll_transmit(now) {
                let mut payload = vec![0u8; t.seg.len as usize];
                conn.copy_payload(t.payload_offset, &mut payload);
                if rng.chance(path.loss) {
                    continue;
                }
                let copies = 1 + rng.chance(path.dup) as u32;
                for _ in 0..copies {
                    let jitter = Duration::from_millis(rng.next() % (path.jitter_ms + 1));
                    n += 1;
                    wire.push(InFlight {
                        at: now + path.one_way + jitter,
                        n,
                        to_server,
                        seg: t.seg,
                        payload: payload.clone(),
                    });
                }
            }
        }
        // Next event: a delivery or a timer.
        let mut next = wire.peek().map(|f: &InFlight| f.at);
        for t in [
            client.poll_timeout(),
            server.as_ref().and_then(|s| s.poll_timeout()),
        ] {
            next = match (next, t) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
        }
        let Some(next) = next else {
            panic!("seed {seed}: nothing scheduled at {got}/{total}: {client:?}");
        };
        now = now.max(next);
        while wire.peek().is_some_and(|f| f.at <= now) {
            let f = wire.pop().unwrap();
            if f.to_server {
                match server.as_mut() {
                    Some(s) => s.handle_segment(now, &f.seg, &f.payload),
                    None if f.seg.flags.syn => {
                        server = Some(Conn::accept(
                            cfg.clone(),
                            now,
                            b,
                            a,
                            &f.seg,
                            Seq(seed as u32 ^ 0x5555),
                            3,
                        ));
                    }
                    None => {}
                }
            } else {
                client.handle_segment(now, &f.seg, &f.payload);
            }
        }
        client.handle_timeout(now);
        if let Some(s) = server.as_mut() {
            s.handle_timeout(now);
        }
        assert!(
            client.state() != State::Closed,
            "seed {seed}: connection ended: {:?}",
            client.end()
        );
    }
    (
        now.saturating_since(Instant::from_millis(1)),
        client.info(now),
    )
}

#[test]
fn bulk_transfer_exactly_once_under_loss_reordering_duplication() {
    let path = Path {
        loss: 0.02,
        jitter_ms: 8,
        dup: 0.01,
        one_way: Duration::from_millis(20),
    };
    for seed in 1..=12 {
        let (took, info) = transfer(seed, &path, 2 << 20, Recovery::default());
        assert!(
            info.retransmits_total > 0,
            "seed {seed}: the path must have lost something"
        );
        assert!(
            took < Duration::from_secs(120),
            "seed {seed}: took {took:?}"
        );
    }
}

#[test]
fn every_recovery_mode_completes() {
    let path = Path {
        loss: 0.03,
        jitter_ms: 3,
        dup: 0.0,
        one_way: Duration::from_millis(10),
    };
    let modes = [
        Recovery {
            rack: false,
            tlp: false,
            frto: false,
            pacing: false,
        },
        Recovery {
            rack: true,
            tlp: false,
            frto: true,
            pacing: true,
        },
        Recovery {
            rack: false,
            tlp: true,
            frto: true,
            pacing: false,
        },
    ];
    for (k, r) in modes.into_iter().enumerate() {
        for seed in 1..=6 {
            transfer(seed * 31 + k as u64, &path, 1 << 20, r);
        }
    }
}

#[test]
fn clean_path_sees_no_retransmission_and_rate_samples() {
    let path = Path {
        loss: 0.0,
        jitter_ms: 0,
        dup: 0.0,
        one_way: Duration::from_millis(25),
    };
    let (_, info) = transfer(3, &path, 4 << 20, Recovery::default());
    assert_eq!(info.retransmits_total, 0);
    assert_eq!(info.tlp_probes, 0);
    assert!(info.delivery_rate_bps > 0);
    // The run ends when the receiver has every byte; the ACK for the last segments may still
    // be on its way back.
    let total = 4u64 << 20;
    assert!(
        info.delivered_bytes <= total && info.delivered_bytes + 2 * 1460 >= total,
        "delivered {} of {total}",
        info.delivered_bytes
    );
}
