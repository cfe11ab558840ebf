//! Interoperability with the Linux kernel's TCP through the emulator (`longhaul netem`): a lossy,
//! rate-limited path with a real delay, where loss recovery, window scaling and pacing have to work
//! against a real peer, not only against ourselves.
//!
//! Layout (tests/common/lab.rs): `longhaul echo` (198.18.0.3, TAP bridged with the emulator's TAP
//! in A) and a kernel client in B (198.18.0.2) with TCP_CONGESTION set to CUBIC or BBR. The client
//! writes a pattern while it reads the echo and checks every byte: the kernel is the sender and
//! longhaul the receiver on the way there, longhaul the sender (with its own CUBIC or BBR) and the
//! kernel the receiver on the way back. Each pairing moves 3 MB each way over a 40 ms RTT,
//! 50 Mbit/s, 1% random loss in both directions (the path changes nothing else; durations are
//! printed, never asserted).
//!
//! Needs root; without it every test prints a note and passes. `cargo test --release --test
//! lfn_interop -- --nocapture` shows the figures.

mod common;

use common::lab::*;
use common::{check_pattern, fill_pattern, root_or_skip, set_cc};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

const ECHO_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const BYTES: u64 = 3 << 20;

/// The kernel client: connects from B with `kernel_cc`, streams the pattern and checks the echo.
fn echo_through_the_path(lab: &Lab, kernel_cc: &str, seed: u64) -> Duration {
    let b = lab.b.clone();
    let kernel_cc = kernel_cc.to_string();
    in_ns(&b, move || {
        let start = Instant::now();
        let s = TcpStream::connect_timeout(
            &SocketAddrV4::new(ECHO_IP, 7).into(),
            Duration::from_secs(10),
        )
        .expect("connect to longhaul echo through the emulator");
        set_cc(&s, &kernel_cc);
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut off = 0;
            while off < BYTES {
                let n = (BYTES - off).min(buf.len() as u64) as usize;
                fill_pattern(seed, off, &mut buf[..n]);
                w.write_all(&buf[..n]).expect("write");
                off += n as u64;
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut r = s;
        let (mut got, mut buf, mut scratch) = (0u64, vec![0u8; 64 << 10], Vec::new());
        loop {
            let n = r.read(&mut buf).expect("read the echo");
            if n == 0 {
                break;
            }
            if let Some(bad) = check_pattern(seed, got, &buf[..n], &mut scratch) {
                panic!("{kernel_cc}: byte {} of the echo is wrong", got + bad);
            }
            got += n as u64;
        }
        writer.join().unwrap();
        assert_eq!(
            got, BYTES,
            "{kernel_cc}: every byte comes back, exactly once"
        );
        start.elapsed()
    })
}

fn interop(tag: &str, longhaul_cc: &str) {
    let mut lab = Lab::start(
        tag,
        &[
            "--delay", "20ms", "--rate", "50mbit", "--queue", "1bdp", "--loss", "1%", "--seed", "7",
        ],
    );
    let echo = lab.spawn_on_a(
        "echo",
        &[
            "--cc",
            longhaul_cc,
            "--rmem",
            "8M",
            "--wmem",
            "8M",
            "--quiet",
            "--no-control",
        ],
    );
    for (i, kernel_cc) in ["cubic", "bbr"].into_iter().enumerate() {
        let took = echo_through_the_path(&lab, kernel_cc, 40 + i as u64);
        println!(
            "interop: kernel {kernel_cc} -> longhaul {longhaul_cc} -> kernel: {} MB each way in {took:.1?}",
            BYTES >> 20
        );
    }
    drop(echo);
    let (a2b, b2a) = lab.stop();
    // The path really was lossy both ways (1% of thousands of frames each way).
    assert!(a2b["loss"] > 10 && b2a["loss"] > 10, "{a2b:?} {b2a:?}");
}

#[test]
fn kernel_cubic_and_bbr_with_longhaul_cubic_through_a_lossy_path() {
    if !root_or_skip("kernel_cubic_and_bbr_with_longhaul_cubic_through_a_lossy_path") {
        return;
    }
    interop("iocub", "cubic");
}

#[test]
fn kernel_cubic_and_bbr_with_longhaul_bbr_through_a_lossy_path() {
    if !root_or_skip("kernel_cubic_and_bbr_with_longhaul_bbr_through_a_lossy_path") {
        return;
    }
    interop("iobbr", "bbr");
}
