//! `longhaul stun` against coturn (Debian's `turnserver`, STUN only) in network namespaces:
//! directly on the TAP's segment, and behind a NAT namespace doing nftables masquerade, where the
//! mapped address must be the NAT's public side. Needs root, coturn and nftables (scripts/setup.sh
//! installs them); a missing tool fails the test rather than skipping it. The NAT lab is shared
//! with tests/tunnel_stun.rs (tests/natlab).

mod common;
mod natlab;

use common::{root_or_skip, Netns, Proc, STACK_CIDR, STACK_IP};
use natlab::{ok, start_coturn, NatLab, Scratch, NAT_PORTS, NAT_PUBLIC_IP, SERVER_IP};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Runs `longhaul stun` on the namespace's TAP as 198.18.0.2/24 to completion (at most 60 s).
fn run_stun(ns: &Netns, args: &[&str]) -> (std::process::ExitStatus, Vec<String>, String) {
    let port = ns.port_spec();
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_longhaul"),
        "stun",
        "--port",
        &port,
        "--ip",
        STACK_CIDR,
    ];
    cmd.extend_from_slice(args);
    let b = ns.exec_bounded(&cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&b.output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&b.output.stderr).into_owned();
    assert!(
        b.finished,
        "longhaul stun did not exit within 60 s; stdout: {stdout} stderr: {stderr}"
    );
    (
        b.output.status,
        stdout.lines().map(str::to_owned).collect(),
        stderr,
    )
}

/// The addresses in `mapped address: IP:PORT` lines, in order.
fn mapped_addresses(lines: &[String]) -> Vec<SocketAddrV4> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("mapped address: "))
        .map(|rest| {
            let a = rest.split_whitespace().next().unwrap_or_default();
            a.parse()
                .unwrap_or_else(|_| panic!("bad mapped address line: {rest}"))
        })
        .collect()
}

fn responses(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("stun: responses "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {lines:?}"))
}

#[test]
fn stun_without_nat_maps_to_our_own_address() {
    if !root_or_skip("stun_without_nat_maps_to_our_own_address") {
        return;
    }
    let ns = Netns::new("stun-direct");
    let scratch = Scratch::new();
    // The server sits on the TAP's kernel side, 198.18.0.1.
    let _coturn = start_coturn(&ns, Ipv4Addr::new(198, 18, 0, 1), &scratch);
    let (status, out, err) = run_stun(
        &ns,
        &[
            "--server",
            "198.18.0.1:3478",
            "--local-port",
            "50001",
            "--interval",
            "300ms",
            "--count",
            "3",
            "--timeout",
            "10s",
        ],
    );
    assert!(status.success(), "exit {status}: {err}\n{out:?}");
    assert_eq!(
        mapped_addresses(&out),
        vec![SocketAddrV4::new(STACK_IP, 50001)],
        "stdout: {out:?}"
    );
    assert!(responses(&out) >= 3, "{out:?}");
}

#[test]
fn stun_behind_nat_maps_to_the_nat_public_side() {
    if !root_or_skip("stun_behind_nat_maps_to_the_nat_public_side") {
        return;
    }
    let lab = NatLab::new(&NAT_PORTS);
    let server = format!("{SERVER_IP}:3478");
    let (status, out, err) = run_stun(
        &lab.nat,
        &[
            "--gateway",
            "198.18.0.1",
            "--server",
            &server,
            "--local-port",
            "50002",
            "--interval",
            "300ms",
            "--count",
            "3",
            "--timeout",
            "10s",
        ],
    );
    assert!(status.success(), "exit {status}: {err}\n{out:?}");
    let mapped = mapped_addresses(&out);
    assert_eq!(
        mapped.len(),
        1,
        "one mapping, kept by the keepalives: {out:?}"
    );
    let m = mapped[0];
    assert_eq!(*m.ip(), NAT_PUBLIC_IP, "the NAT's public address: {out:?}");
    assert_ne!(*m.ip(), STACK_IP);
    assert_ne!(m.port(), 0);
    assert!(
        NAT_PORTS.contains(&m.port()),
        "a port from the masquerade range, not our 50002: {m}"
    );
    assert!(responses(&out) >= 3, "{out:?}");
    // The NAT really translated them: the rule saw the flow (once: conntrack keeps the mapping).
    assert!(lab.masquerade_count() >= 1);
}

#[test]
fn stun_reports_a_new_mapping_after_the_nat_rebinds() {
    if !root_or_skip("stun_reports_a_new_mapping_after_the_nat_rebinds") {
        return;
    }
    let lab = NatLab::new(&NAT_PORTS);
    // UDP mappings expire after 1 s idle, the keepalive comes every 2 s: each keepalive finds the
    // mapping gone, and once the rule says so, gets a port from another range.
    ok(
        lab.nat.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.netfilter.nf_conntrack_udp_timeout=1",
        ]),
        "udp timeout",
    );
    ok(
        lab.nat.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.netfilter.nf_conntrack_udp_timeout_stream=1",
        ]),
        "udp stream timeout",
    );
    let server = format!("{SERVER_IP}:3478");
    let proc = lab.nat.spawn_longhaul(
        "stun",
        &[
            "--gateway",
            "198.18.0.1",
            "--server",
            &server,
            "--interval",
            "2s",
            "--timeout",
            "10s",
        ],
    );
    let found = |p: &Proc, want: &dyn Fn(&[SocketAddrV4]) -> bool| {
        common::wait_for(Duration::from_secs(20), || {
            want(&mapped_addresses(&p.stdout_lines()))
        })
    };
    assert!(
        found(&proc, &|m| !m.is_empty()),
        "no mapping: {:?} {}",
        proc.stdout_lines(),
        proc.stderr()
    );
    let first = mapped_addresses(&proc.stdout_lines())[0];
    assert!(NAT_PORTS.contains(&first.port()), "{first}");
    let other_ports = 62000..=62009;
    lab.masquerade_to(&other_ports);
    assert!(
        found(&proc, &|m| m
            .last()
            .is_some_and(|a| other_ports.contains(&a.port()))),
        "no new mapping reported: {:?} {}",
        proc.stdout_lines(),
        proc.stderr()
    );
    let lines = proc.stdout_lines();
    let mapped = mapped_addresses(&lines);
    let (before, after) = (mapped[mapped.len() - 2], mapped[mapped.len() - 1]);
    assert_eq!(*after.ip(), NAT_PUBLIC_IP);
    let change = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("mapped address: "))
        .expect("a mapped address line");
    assert_eq!(
        change,
        &format!("mapped address: {after} (changed from {before})")
    );
    let status = proc.stop();
    assert!(status.success(), "SIGTERM ends it with 0: {status}");
}

#[test]
fn stun_without_an_answer_fails_with_one_line() {
    if !root_or_skip("stun_without_an_answer_fails_with_one_line") {
        return;
    }
    // Nothing listens on 198.18.0.1:3478.
    let ns = Netns::new("stun-none");
    let (status, out, err) = run_stun(
        &ns,
        &["--server", "198.18.0.1:3478", "--timeout", "2s", "--quiet"],
    );
    assert_eq!(status.code(), Some(1), "stdout {out:?} stderr {err}");
    assert!(mapped_addresses(&out).is_empty());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with(
            "longhaul stun: no answer from 198.18.0.1:3478 to 3 Binding request(s) within 2.0 s"
        ),
        "{err}"
    );
}

#[test]
fn stun_bad_arguments_fail_with_one_line() {
    for (args, want) in [
        (vec!["--server", "stun.example:3478"], "bad --server"),
        (vec!["--server", "198.18.0.1:0"], "bad --server"),
        (
            vec!["--server", "198.18.0.1:3478", "--interval", "1ms"],
            "--interval",
        ),
        (
            vec!["--server", "198.18.0.1:3478", "--cores", "2"],
            "--cores must be 1",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_longhaul"))
            .args(["stun", "--port", "tap:lhnone0", "--ip", STACK_CIDR])
            .args(&args)
            .output()
            .expect("run longhaul");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
