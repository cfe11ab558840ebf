//! The tunnel client behind a NAT with `--stun`: it learns the NAT's public address from coturn on
//! its own QUIC socket, reports it (a `public address:` line and the status line), and the tunnel
//! carries data at the same time. The lab is tests/natlab's:
//!
//! ```text
//!  NAT namespace                                   public namespace
//!  kernel client ─▶ tunnel client 198.18.0.2:8080  tunnel server 198.19.0.3 (UDP :4433)
//!                   (QUIC and STUN on one socket)   ─TCP─▶ kernel echo 198.19.0.2:7000
//!                   ── masquerade 198.19.0.1 ─────▶ coturn 198.19.0.2:3478
//! ```

mod common;
mod natlab;

use common::*;
use natlab::{NatLab, NAT_PORTS, NAT_PUBLIC_IP, PUBLIC_STACK_IP, SERVER_IP};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

const QUIC_PORT: u16 = 4433;
const TUNNEL_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7000;

/// The server's certificate directory, removed on drop.
struct CertDir(PathBuf);

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kernel echo server on the public side (the tunnel's target).
fn kernel_echo(ns: &Netns, ip: std::net::Ipv4Addr, port: u16) {
    let listener = ns.run(move || TcpListener::bind(SocketAddrV4::new(ip, port)).expect("bind"));
    ns.spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
}

/// The tunnel server on the public namespace's TAP; returns it and its pin.
fn public_server(lab: &NatLab, certs: &CertDir) -> (Proc, String) {
    let port = lab.public.port_spec();
    let ip = format!("{PUBLIC_STACK_IP}/24");
    let target = format!("{SERVER_IP}:{ECHO_PORT}");
    let listen = QUIC_PORT.to_string();
    let dir = certs.0.to_string_lossy().into_owned();
    let server = lab.public.spawn_marked(
        &[
            env!("CARGO_BIN_EXE_longhaul"),
            "tunnel",
            "server",
            "--port",
            &port,
            "--ip",
            &ip,
            "--listen",
            &listen,
            "--target",
            &target,
            "--cert-dir",
            &dir,
            "--stats-interval",
            "1",
            "--no-control",
        ],
        "ready",
        Duration::from_secs(10),
    );
    let pin = server
        .stdout_lines()
        .iter()
        .find_map(|l| l.split("fingerprint ").nth(1).map(|f| f.trim().to_string()))
        .expect("the server prints its fingerprint");
    (server, pin)
}

/// The tunnel client behind the NAT, with `--stun` at coturn and `extra` flags.
fn natted_client(lab: &NatLab, pin: &str, extra: &[&str]) -> Proc {
    let server = format!("{PUBLIC_STACK_IP}:{QUIC_PORT}");
    let stun = format!("{SERVER_IP}:3478");
    let listen = TUNNEL_PORT.to_string();
    let port = lab.nat.port_spec();
    let mut args = vec![
        env!("CARGO_BIN_EXE_longhaul"),
        "tunnel",
        "client",
        "--port",
        &port,
        "--ip",
        STACK_CIDR,
        "--gateway",
        "198.18.0.1",
        "--listen",
        &listen,
        "--server",
        &server,
        "--pin",
        pin,
        "--stun",
        &stun,
        "--stats-interval",
        "1",
    ];
    args.extend_from_slice(extra);
    lab.nat
        .spawn_marked(&args, "ready", Duration::from_secs(10))
}

/// The addresses of the `public address: IP:PORT` lines, in order.
fn public_addresses(p: &Proc) -> Vec<SocketAddrV4> {
    p.stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("public address: "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Sends `len` pattern bytes through the tunnel (kernel client in the NAT namespace) and checks
/// the echo byte for byte.
fn echo_through(lab: &NatLab, len: usize, seed: u64) {
    let mut s = lab.nat.run(|| {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(STACK_IP, TUNNEL_PORT).into(),
            Duration::from_secs(5),
        )
        .expect("connect to the tunnel client")
    });
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut data = vec![0u8; len];
    fill_pattern(seed, 0, &mut data);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).expect("write through the tunnel");
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(len);
    s.read_to_end(&mut back).expect("read the echo");
    writer.join().unwrap();
    assert_eq!(back.len(), len, "echoed length");
    let mut scratch = Vec::new();
    assert_eq!(
        check_pattern(seed, 0, &back, &mut scratch),
        None,
        "the echo differs from what was sent"
    );
}

#[test]
fn a_natted_tunnel_client_reports_the_nat_public_address_and_carries_data() {
    if !root_or_skip("a_natted_tunnel_client_reports_the_nat_public_address_and_carries_data") {
        return;
    }
    let lab = NatLab::new(&NAT_PORTS);
    let certs = CertDir(std::env::temp_dir().join(format!("lh-tunstun-{}", std::process::id())));
    kernel_echo(&lab.public, SERVER_IP, ECHO_PORT);
    let (_server, pin) = public_server(&lab, &certs);
    let client = natted_client(&lab, &pin, &["--no-control"]);
    assert!(
        wait_for(Duration::from_secs(15), || !public_addresses(&client)
            .is_empty()
            && client
                .stdout_lines()
                .iter()
                .any(|l| l.contains("connected to"))),
        "no public address or no connection: {:?} {}",
        client.stdout_lines(),
        client.stderr()
    );
    let public = public_addresses(&client)[0];
    assert_eq!(*public.ip(), NAT_PUBLIC_IP, "the NAT's public side");
    assert!(
        NAT_PORTS.contains(&public.port()),
        "a port from the masquerade range: {public}"
    );
    echo_through(&lab, 4 << 20, 3);
    // The status line carries it too; and it stayed the same (one line only).
    let want = format!("| public {public}");
    assert!(
        wait_for(Duration::from_secs(5), || client
            .stdout_lines()
            .iter()
            .any(|l| l.contains("| tunnel conns") && l.ends_with(&want))),
        "no status line ending in '{want}': {:?}",
        client.stdout_lines()
    );
    assert_eq!(public_addresses(&client).len(), 1);
    assert!(lab.masquerade_count() >= 1);
}

/// `longhaul stat` on the control socket `ctl`: (stdout, success).
fn stat(ctl: &str, json: bool) -> (String, bool) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_longhaul"));
    cmd.args(["stat", "--socket", ctl]);
    if json {
        cmd.arg("--json");
    }
    let o = cmd.output().expect("run longhaul stat");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.success(),
    )
}

/// The `{"app":{"tunnel":..}}` line of `longhaul stat --json`.
fn tunnel_stats(ctl: &str) -> serde_json::Value {
    let (out, ok) = stat(ctl, true);
    assert!(ok, "longhaul stat --json failed: {out}");
    let mut lines = out.lines();
    let conns: serde_json::Value =
        serde_json::from_str(lines.next().unwrap_or("")).expect("line 1: the TCP connections");
    assert!(conns.is_array(), "{out}");
    let app: serde_json::Value =
        serde_json::from_str(lines.next().unwrap_or("")).expect("line 2: the app's statistics");
    app["app"]["tunnel"].clone()
}

#[test]
fn stat_shows_the_tunnel_connection_after_a_transfer() {
    if !root_or_skip("stat_shows_the_tunnel_connection_after_a_transfer") {
        return;
    }
    let lab = NatLab::new(&NAT_PORTS);
    let certs = CertDir(std::env::temp_dir().join(format!("lh-tunstat-{}", std::process::id())));
    let ctl = std::env::temp_dir()
        .join(format!("lh-tunstat-{}.sock", std::process::id()))
        .to_string_lossy()
        .into_owned();
    kernel_echo(&lab.public, SERVER_IP, ECHO_PORT);
    let (_server, pin) = public_server(&lab, &certs);
    let client = natted_client(&lab, &pin, &["--control", &ctl]);
    assert!(
        wait_for(Duration::from_secs(15), || !public_addresses(&client)
            .is_empty()),
        "no public address: {:?} {}",
        client.stdout_lines(),
        client.stderr()
    );
    let public = public_addresses(&client)[0].to_string();
    const LEN: u64 = 3 << 20;
    echo_through(&lab, LEN as usize, 5);
    // A second TCP connection stays open: one stream open, two in all.
    let _held = lab
        .nat
        .run(|| TcpStream::connect(SocketAddrV4::new(STACK_IP, TUNNEL_PORT)).expect("connect"));
    let mut t = serde_json::Value::Null;
    // The cores refresh the numbers every tick (100 ms).
    // One open stream alone is also the moment the echo's stream is still open and the held
    // connection's not yet: wait for both to have been counted.
    let settled = wait_for(Duration::from_secs(10), || {
        t = tunnel_stats(&ctl);
        t["streams_open"] == 1
            && t["bytes_down"] == LEN
            && t["connections"][0]["streams_total"] == 2
    });
    assert!(settled, "{t:#}");
    let n = |v: &serde_json::Value, k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing or not a number: {v:#}"))
    };
    assert_eq!(t["role"], "client");
    assert_eq!(t["public_address"], public.as_str(), "{t:#}");
    assert!(n(&t["stun"], "responses") >= 1, "{t:#}");
    assert_eq!(n(&t, "reconnects"), 0);
    assert_eq!(n(&t, "dropped_datagrams"), 0);
    assert_eq!(n(&t, "conns"), 1);
    assert_eq!((n(&t, "bytes_up"), n(&t, "bytes_down")), (LEN, LEN));
    let list = t["connections"].as_array().expect("connections");
    assert_eq!(list.len(), 1, "{t:#}");
    let c = &list[0];
    assert_eq!(c["remote"], format!("{PUBLIC_STACK_IP}:{QUIC_PORT}"));
    let rtt = n(c, "rtt_us");
    assert!(rtt > 0 && rtt < 1_000_000, "rtt {rtt} µs on a local path");
    assert!(n(c, "cwnd") >= 12_000, "at least the initial window: {c}");
    // 3 MiB went up in datagrams of at most ~1.2 KiB.
    assert!(n(c, "sent_packets") > LEN / 1500, "{c}");
    assert!(n(c, "lost_packets") <= n(c, "sent_packets"));
    assert_eq!((n(c, "streams_open"), n(c, "streams_total")), (1, 2), "{c}");
    assert_eq!((n(c, "bytes_up"), n(c, "bytes_down")), (LEN, LEN));
    // The table shows them under the TCP connections.
    let (table, ok) = stat(&ctl, false);
    assert!(ok, "{table}");
    assert!(table.starts_with("State"), "{table}");
    assert!(
        table.contains(&format!("  public_address: {public}\n")),
        "{table}"
    );
    assert!(
        table.contains(&format!("    - bytes_down={LEN} bytes_up={LEN} ")),
        "{table}"
    );
}
