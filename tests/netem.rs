//! `longhaul netem` against theory, with the Linux kernel on both ends.
//!
//! Each test builds three namespaces: P runs `longhaul netem`, which creates and opens two TAPs;
//! once it is ready, one TAP moves to namespace A (198.18.0.1/24) and the other to B
//! (198.18.0.2/24), so everything between A and B crosses the emulator (a TAP keeps working
//! after its interface moves). Kernel sockets in A and B measure what the path does; netem's final
//! counter line says what it did. All of it is removed in `Drop`, also when a test fails.
//!
//! Needs root; without it every test prints a note and passes. The figures depend on timing and
//! CPU, so the labs take turns (a lock held from the first namespace to the last deletion); the
//! whole file runs in about 12 s. Run with `cargo test --release --test netem`.

mod common;

use common::lab::*;
use common::{root_or_skip, wait_for};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Sets a socket's receive buffer past rmem_max (root).
fn force_rcvbuf(fd: i32, bytes: i32) {
    // SAFETY: setsockopt reads a live int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
}

/// Connect times from A to B, after one connect that resolves ARP.
fn handshake_times(lab: &Lab, port: u16, n: usize) -> Vec<Duration> {
    let to = SocketAddr::V4(SocketAddrV4::new(B_IP, port));
    in_ns(&lab.a, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("first connect");
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
                let d = t.elapsed();
                drop(s);
                d
            })
            .collect()
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn check_handshake_rtt(tag: &str, one_way: &str, rtt: Duration, samples: usize) {
    let mut lab = Lab::start(tag, &["--delay", one_way]);
    // The kernel completes handshakes into the backlog (128) without accept().
    let _listener = in_ns(&lab.b, || {
        TcpListener::bind((B_IP, 5001)).expect("bind in B")
    });
    let times = handshake_times(&lab, 5001, samples);
    let m = median(times.clone());
    let (a2b, b2a) = lab.stop();
    eprintln!(
        "handshake at {rtt:?} configured: median {m:?}, all {times:?}; late a2b max {} µs avg {} µs, b2a max {} µs avg {} µs",
        a2b["late_max_us"], a2b["late_avg_us"], b2a["late_max_us"], b2a["late_avg_us"]
    );
    let err = |t: Duration| (t.as_secs_f64() - rtt.as_secs_f64()).abs();
    assert!(
        err(m) <= 0.002,
        "median handshake {m:?}, configured RTT {rtt:?} (±2 ms); all {times:?}"
    );
    // The emulator never makes the path shorter than configured.
    for t in &times {
        assert!(
            *t >= rtt,
            "handshake took {t:?}, less than the configured {rtt:?}"
        );
    }
    assert!(a2b["out"] >= samples as u64 * 2 && b2a["out"] >= samples as u64 * 2);
}

// ------------------------------------------------------------------ RTT

#[test]
fn handshake_rtt_matches_50ms() {
    if !root_or_skip("handshake_rtt_matches_50ms") {
        return;
    }
    check_handshake_rtt("rtt50", "25ms", Duration::from_millis(50), 7);
}

#[test]
fn handshake_rtt_matches_250ms() {
    if !root_or_skip("handshake_rtt_matches_250ms") {
        return;
    }
    check_handshake_rtt("rtt250", "125ms", Duration::from_millis(250), 3);
}

// ------------------------------------------------------------------ rate

/// Bytes received on `iface`, from /proc/thread-self/net/dev of the calling thread's namespace.
fn rx_bytes(iface: &str) -> u64 {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev");
    dev.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == iface).then(|| rest.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{iface} not in {dev}"))
}

/// A kernel TCP flow A→B through a 50 Mbit/s bottleneck (RTT 20 ms, 2-BDP drop-tail queue):
/// goodput at B after slow start reaches 90–100% of the rate, and the bytes arriving on B's
/// interface (the kernel's own counter, sampled every 250 ms) never exceed the rate, overall and
/// in any window (allowing for the emulator's reported lateness).
#[test]
fn tcp_through_50mbit_reaches_the_rate_and_never_exceeds_it() {
    if !root_or_skip("tcp_through_50mbit_reaches_the_rate_and_never_exceeds_it") {
        return;
    }
    let rate_bps = 50_000_000f64;
    let mut lab = Lab::start(
        "rate",
        &["--rate", "50mbit", "--delay", "10ms", "--queue", "2bdp"],
    );
    const RUN: Duration = Duration::from_secs(5);
    const WARMUP: Duration = Duration::from_secs(1);
    let l = in_ns(&lab.b, || {
        TcpListener::bind((B_IP, 5002)).expect("bind in B")
    });
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        let (mut total, mut after_warmup) = (0u64, 0u64);
        let mut buf = vec![0u8; 128 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            let t = start.elapsed();
            if t >= WARMUP && t < RUN {
                after_warmup += n as u64;
            }
        }
        (total, after_warmup)
    });
    // The wire: B's interface counter every 250 ms.
    let tap_b = lab.tap_b.clone();
    let sampling = Arc::new(AtomicBool::new(true));
    let on = sampling.clone();
    let b_ns = lab.b.clone();
    let sampler = std::thread::spawn(move || {
        enter(&b_ns);
        let mut samples = vec![(Instant::now(), rx_bytes(&tap_b))];
        while on.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            samples.push((Instant::now(), rx_bytes(&tap_b)));
        }
        samples
    });
    let sender = in_ns(&lab.a, || {
        TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(B_IP, 5002)),
            Duration::from_secs(5),
        )
        .expect("connect")
    });
    let closer = sender.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = sender;
        let buf = vec![0x5au8; 128 * 1024];
        while s.write_all(&buf).is_ok() {}
    });
    std::thread::sleep(RUN);
    let _ = closer.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let (total, steady_bytes) = receiver.join().unwrap();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let (a2b, _) = lab.stop();
    let steady = steady_bytes as f64 * 8.0 / (RUN - WARMUP).as_secs_f64() / rate_bps;
    let wire: Vec<f64> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].0 - w[0].0).as_secs_f64();
            (w[1].1 - w[0].1) as f64 * 8.0 / dt / rate_bps
        })
        .collect();
    eprintln!(
        "50 Mbit/s: {total} bytes; goodput {:.1}% of the rate from 1 s to 5 s; wire per 250 ms (fraction of the rate): {wire:.3?}; netem a2b {a2b:?}",
        steady * 100.0
    );
    assert!(
        (0.90..=1.0).contains(&steady),
        "goodput {:.1}% of 50 Mbit/s",
        steady * 100.0
    );
    // Frames leave at their departure times, or as soon as the emulator runs again if it was
    // descheduled (it reports how late it ever was): a window [t1, t2] carries at most what was due
    // in [t1 - late_max, t2]. The sampler's own skew (a millisecond: 4 frames) is slack too.
    let late_max = a2b["late_max_us"] as f64 / 1e6;
    let slack_bits = 8.0 * 1514.0 * 8.0;
    for (i, w) in samples.windows(2).enumerate() {
        let bits = (w[1].1 - w[0].1) as f64 * 8.0;
        let allowed = rate_bps * ((w[1].0 - w[0].0).as_secs_f64() + late_max) + slack_bits;
        assert!(
            bits <= allowed,
            "window {i}: the wire carried {:.1}% of the rate (netem at most {late_max} s late)",
            wire[i] * 100.0
        );
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let overall = (last.1 - first.1) as f64 * 8.0 / (last.0 - first.0).as_secs_f64() / rate_bps;
    assert!(
        overall <= 1.0 + 0.001,
        "the wire carried {:.2}% of the rate overall",
        overall * 100.0
    );
    assert!(a2b["queue_hwm"] <= 250_000, "queue limit is 2 BDP");
    assert_eq!(a2b["out"] + a2b["queue_full"] + a2b["held"], a2b["in"]);
}

// ------------------------------------------------------------------ loss

/// 1% random loss A→B over 100,000+ UDP datagrams: netem drops 0.8–1.2% and B misses exactly
/// what netem dropped.
#[test]
fn one_percent_loss_over_100k_frames() {
    if !root_or_skip("one_percent_loss_over_100k_frames") {
        return;
    }
    let mut lab = Lab::start("loss", &["--loss", "a2b:1%", "--seed", "12345"]);
    const N: u64 = 100_000;
    let rx = in_ns(&lab.b, || UdpSocket::bind((B_IP, 5003)).expect("bind in B"));
    force_rcvbuf(rx.as_raw_fd(), 64 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx = in_ns(&lab.a, || UdpSocket::bind((A_IP, 0)).expect("bind in A"));
    tx.connect((B_IP, 5003)).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(AtomicBool::new(false));
    let (g, w) = (got.clone(), warm.clone());
    let receiver = std::thread::spawn(move || {
        let mut seen = vec![false; N as usize];
        let mut buf = [0u8; 64];
        let mut idle_since = Instant::now();
        loop {
            match rx.recv(&mut buf) {
                Ok(8) => {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    if seq == u64::MAX {
                        w.store(true, Ordering::Relaxed);
                    } else if !std::mem::replace(&mut seen[seq as usize], true) {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                    idle_since = Instant::now();
                }
                Ok(_) => {}
                Err(_) if idle_since.elapsed() > Duration::from_secs(2) => break,
                Err(_) => {}
            }
        }
        seen.iter().filter(|&&s| s).count() as u64
    });
    // Warm-up datagrams until ARP is resolved and one gets through.
    assert!(
        wait_for(Duration::from_secs(5), || {
            let _ = tx.send(&u64::MAX.to_be_bytes());
            std::thread::sleep(Duration::from_millis(20));
            warm.load(Ordering::Relaxed)
        }),
        "no warm-up datagram arrived"
    );
    let start = Instant::now();
    for seq in 0..N {
        // Flow control: at most ~3,000 datagrams (plus the expected losses) in flight.
        while seq - got.load(Ordering::Relaxed) > 3_000 + seq / 50 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "receiver stalled"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        tx.send(&seq.to_be_bytes()).expect("send");
    }
    let sent_in = start.elapsed();
    let received = receiver.join().unwrap();
    let (a2b, b2a) = lab.stop();
    let netem_ratio = a2b["loss"] as f64 / a2b["in"] as f64;
    let e2e_ratio = (N - received) as f64 / N as f64;
    eprintln!(
        "{N} datagrams in {sent_in:?}: B got {received}; end-to-end loss {:.3}%, netem {:.3}% ({a2b:?})",
        e2e_ratio * 100.0,
        netem_ratio * 100.0
    );
    assert!(a2b["in"] >= N);
    assert!(
        (0.008..=0.012).contains(&netem_ratio),
        "netem lost {netem_ratio}"
    );
    assert!((0.008..=0.012).contains(&e2e_ratio), "B missed {e2e_ratio}");
    for k in [
        "ge_loss",
        "queue_full",
        "blackhole",
        "pool_full",
        "oversize",
    ] {
        assert_eq!(a2b[k], 0, "{k}");
    }
    assert_eq!(b2a["loss"], 0, "loss was set for a2b only");
    assert_eq!(
        a2b["in"] - a2b["loss"],
        a2b["out"],
        "everything else passed"
    );
}

// ------------------------------------------------------------------ MTU black hole

/// `--mtu-blackhole 1400`: UDP datagrams whose IP packets are 1380..=1420 bytes; exactly those
/// up to 1400 arrive, and netem counts the others.
#[test]
fn mtu_blackhole_drops_exactly_the_large_frames() {
    if !root_or_skip("mtu_blackhole_drops_exactly_the_large_frames") {
        return;
    }
    let mut lab = Lab::start("mtubh", &["--mtu-blackhole", "1400"]);
    let rx = in_ns(&lab.b, || UdpSocket::bind((B_IP, 5004)).expect("bind in B"));
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = in_ns(&lab.a, || UdpSocket::bind((A_IP, 0)).expect("bind in A"));
    tx.connect((B_IP, 5004)).unwrap();
    let mut buf = vec![0u8; 2048];
    // ARP first, with a small datagram.
    assert!(
        wait_for(Duration::from_secs(5), || {
            let _ = tx.send(&[0u8; 8]);
            rx.recv(&mut buf).is_ok()
        }),
        "no small datagram arrived"
    );
    while rx.recv(&mut buf).is_ok() {}
    let sizes = 1380..=1420usize;
    const COPIES: usize = 3;
    for _ in 0..COPIES {
        for ip_len in sizes.clone() {
            let payload = vec![0xa5u8; ip_len - 28];
            tx.send(&payload).expect("send");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut arrived = BTreeSet::new();
    let mut count = 0;
    while let Ok(n) = rx.recv(&mut buf) {
        arrived.insert(n + 28);
        count += 1;
    }
    let (a2b, _) = lab.stop();
    let want: BTreeSet<usize> = (1380..=1400).collect();
    assert_eq!(arrived, want, "IP sizes that arrived");
    assert_eq!(count, want.len() * COPIES);
    assert_eq!(a2b["blackhole"], (20 * COPIES) as u64, "{a2b:?}");
}

// ------------------------------------------------------------------ configuration errors

/// A bad value gets one line naming the flag, and exit status 2, before any port is opened.
#[test]
fn bad_flags_get_one_line_and_status_2() {
    for (args, want) in [
        (&["--delay", "5"][..], "--delay: bad duration '5'"),
        (&["--loss", "a2b:2"][..], "--loss: bad probability '2'"),
        (&["--rate", "100mbps"][..], "--rate: bad rate '100mbps'"),
        (&["--queue", "xbdp"][..], "--queue: bad queue 'xbdp'"),
        (
            &["--ge-loss", "1%"][..],
            "--ge-loss: bad Gilbert-Elliott loss '1%'",
        ),
        (
            &["--mtu-blackhole", "10"][..],
            "--mtu-blackhole: bad size '10'",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_longhaul"))
            .args(["netem", "--a", "tap:lhnmbad0", "--b", "tap:lhnmbad1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run longhaul");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
