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
