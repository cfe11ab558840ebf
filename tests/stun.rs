//! `longhaul stun` against coturn (Debian's `turnserver`, STUN only) in network namespaces:
//! directly on the TAP's segment, and behind a NAT namespace doing nftables masquerade, where the
//! mapped address must be the NAT's public side. Needs root, coturn and nftables (scripts/setup.sh
//! installs them); a missing tool fails the test rather than skipping it.

mod common;

use common::{root_or_skip, Netns, Proc, STACK_CIDR, STACK_IP};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The NAT's public address and the STUN server's, on the "public" segment.
const NAT_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// Masquerade maps UDP to this port range, so a translated port is recognisable.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=61009;

fn need_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        || Path::new("/usr/sbin").join(name).is_file();
    assert!(
        found,
        "{name} not found: install the Debian package {package} (scripts/setup.sh does)"
    );
}

/// A scratch directory for coturn's pid file and database, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lh-stun-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts coturn as a plain STUN server on `ip:3478` (UDP only, no TURN, no TLS/DTLS, no CLI) in
/// `ns` and waits for its UDP listener.
fn start_coturn(ns: &Netns, ip: Ipv4Addr, scratch: &Scratch) -> Proc {
    need_tool("turnserver", "coturn");
    let ip = ip.to_string();
    let (pid, db) = (scratch.path("turnserver.pid"), scratch.path("turndb"));
    ns.spawn_marked(
        &[
            "turnserver",
            "-n", // no configuration file
            "-v", // prints the "listener opened" line waited for
            "--listening-ip",
            &ip,
            "--listening-port",
            "3478",
            "--stun-only",
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
            &pid,
            "--userdb",
            &db,
        ],
        "UDP listener opened on",
        Duration::from_secs(15),
    )
}

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

fn ok(o: std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two namespaces and coturn. NAT namespace: the TAP's kernel side (198.18.0.1/24) is the private
/// side, pub0 (198.19.0.1/24) the public one, forwarding on, UDP leaving pub0 masqueraded to a
/// port range. Public namespace: coturn on 198.19.0.2 with no route back to 198.18.0.0/24, so only
/// translated packets can be answered. Fields drop in order: coturn, then the namespaces.
struct NatLab {
    _coturn: Proc,
    nat: Netns,
    _public: Netns,
    _scratch: Scratch,
}

impl NatLab {
    fn new(ports: &std::ops::RangeInclusive<u16>) -> NatLab {
        need_tool("nft", "nftables");
        let nat = Netns::new("stun-nat");
        let public = Netns::new("stun-pub");
        ok(public.ip(&["link", "del", public.tap()]), "del tap");
        ok(
            nat.ip(&[
                "link",
                "add",
                "pub0",
                "type",
                "veth",
                "peer",
                "name",
                "pub1",
                "netns",
                public.name(),
            ]),
            "veth",
        );
        let nat_cidr = format!("{NAT_PUBLIC_IP}/24");
        let server_cidr = format!("{SERVER_IP}/24");
        ok(nat.ip(&["addr", "add", &nat_cidr, "dev", "pub0"]), "addr");
        ok(nat.ip(&["link", "set", "pub0", "up"]), "up");
        ok(
            public.ip(&["addr", "add", &server_cidr, "dev", "pub1"]),
            "addr",
        );
        ok(public.ip(&["link", "set", "pub1", "up"]), "up");
        ok(
            nat.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
            "ip_forward",
        );
        ok(nat.exec(&["nft", "add", "table", "ip", "nat"]), "nft table");
        ok(
            nat.exec(&[
                "nft",
                "add",
                "chain",
                "ip",
                "nat",
                "postrouting",
                "{",
                "type",
                "nat",
                "hook",
                "postrouting",
                "priority",
                "100",
                ";",
                "}",
            ]),
            "nft chain",
        );
        let scratch = Scratch::new();
        let coturn = start_coturn(&public, SERVER_IP, &scratch);
        let lab = NatLab {
            _coturn: coturn,
            nat,
            _public: public,
            _scratch: scratch,
        };
        lab.masquerade_to(ports);
        lab
    }

    /// Replaces the masquerade rule: UDP out of pub0 gets the NAT's address and a port in `ports`.
    fn masquerade_to(&self, ports: &std::ops::RangeInclusive<u16>) {
        let nat = &self.nat;
        ok(
            nat.exec(&["nft", "flush", "chain", "ip", "nat", "postrouting"]),
            "nft flush",
        );
        let to = format!(":{}-{}", ports.start(), ports.end());
        ok(
            nat.exec(&[
                "nft",
                "add",
                "rule",
                "ip",
                "nat",
                "postrouting",
                "oifname",
                "pub0",
                "ip",
                "protocol",
                "udp",
                "counter",
                "masquerade",
                "to",
                &to,
            ]),
            "nft rule",
        );
    }

    /// Packets the masquerade rule has translated (the first of each new flow).
    fn masquerade_count(&self) -> u64 {
        let list = self
            .nat
            .exec(&["nft", "list", "chain", "ip", "nat", "postrouting"]);
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }
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
