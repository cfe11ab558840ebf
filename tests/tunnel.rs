//! `longhaul tunnel` end to end: a tunnel server and a tunnel client, each a longhaul instance on
//! its own TAP, joined by a Linux bridge in one namespace; kernel programs (curl, test servers,
//! test clients) sit on the bridge itself.
//!
//! ```text
//!  kernel 198.18.0.1 (br) ── tapC ── tunnel client 198.18.0.3 (TCP :8080)
//!                         └─ tapS ── tunnel server 198.18.0.2 (UDP :4433) ──TCP──▶ 198.18.0.1:PORT
//! ```

mod common;

use common::servers::*;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVER_CIDR: &str = "198.18.0.2/24";
const CLIENT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 3);
const CLIENT_CIDR: &str = "198.18.0.3/24";
/// Fixed addresses, so a restarted server is found again at once (ARP caches keep the old one).
const SERVER_MAC: &str = "02:00:00:00:7e:02";
const CLIENT_MAC: &str = "02:00:00:00:7e:03";
const QUIC_PORT: u16 = 4433;
const TUNNEL_PORT: u16 = 8080;

/// The namespace with its bridge, the server's TAP (the namespace's own) and the client's TAP,
/// plus the server's certificate directory (removed on drop).
struct Lab {
    ns: Netns,
    client_tap: String,
    cert_dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let ns = Netns::new(tag);
        let tap = ns.tap().to_string();
        let cert_dir = std::env::temp_dir().join(format!("lh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cert_dir);
        let lab = Lab {
            client_tap: "lhtunc0".into(),
            ns,
            cert_dir,
        };
        // Interface names are per namespace, so fixed names cannot collide with other tests.
        let ok = |args: &[&str]| {
            let out = lab.ns.ip(args);
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ok(&["link", "add", "name", "lhbr0", "type", "bridge"]);
        ok(&["addr", "del", "198.18.0.1/24", "dev", &tap]);
        ok(&["link", "set", &tap, "master", "lhbr0"]);
        ok(&[
            "tuntap",
            "add",
            "dev",
            &lab.client_tap,
            "mode",
            "tap",
            "multi_queue",
        ]);
        ok(&["link", "set", &lab.client_tap, "master", "lhbr0"]);
        ok(&["link", "set", &lab.client_tap, "up"]);
        ok(&["addr", "add", "198.18.0.1/24", "dev", "lhbr0"]);
        ok(&["link", "set", "lhbr0", "up"]);
        lab
    }

    fn server(&self, target_port: u16, extra: &[&str]) -> Proc {
        let bin = env!("CARGO_BIN_EXE_longhaul");
        let port = self.ns.port_spec();
        let target = format!("{KERNEL_IP}:{target_port}");
        let dir = self.cert_dir.to_string_lossy().to_string();
        let listen = QUIC_PORT.to_string();
        let mut cmd = vec![
            bin,
            "tunnel",
            "server",
            "--port",
            &port,
            "--ip",
            SERVER_CIDR,
            "--mac",
            SERVER_MAC,
            "--listen",
            &listen,
            "--target",
            &target,
            "--stats-interval",
            "1",
            "--no-control",
        ];
        if !extra.contains(&"--cert") {
            cmd.extend_from_slice(&["--cert-dir", &dir]);
        }
        cmd.extend_from_slice(extra);
        self.ns.spawn_marked(&cmd, "ready", Duration::from_secs(10))
    }

    /// A client trusting the server by `--pin PIN`, or by `extra` (e.g. `--ca`) when `pin` is "".
    fn client(&self, pin: &str, extra: &[&str]) -> Proc {
        let bin = env!("CARGO_BIN_EXE_longhaul");
        let port = format!("tap:{}", self.client_tap);
        let server = format!("{STACK_IP}:{QUIC_PORT}");
        let listen = TUNNEL_PORT.to_string();
        let mut cmd = vec![
            bin,
            "tunnel",
            "client",
            "--port",
            &port,
            "--ip",
            CLIENT_CIDR,
            "--mac",
            CLIENT_MAC,
            "--listen",
            &listen,
            "--server",
            &server,
            "--stats-interval",
            "1",
            "--no-control",
        ];
        if !pin.is_empty() {
            cmd.extend_from_slice(&["--pin", pin]);
        }
        cmd.extend_from_slice(extra);
        self.ns.spawn_marked(&cmd, "ready", Duration::from_secs(10))
    }

    /// Server and client, the client connected (its "connected" line seen).
    fn pair(&self, target_port: u16, extra: &[&str]) -> (Proc, Proc) {
        let server = self.server(target_port, extra);
        let pin = fingerprint(&server);
        let client = self.client(&pin, extra);
        assert!(
            wait_for(Duration::from_secs(10), || count_lines(
                &client,
                "connected to"
            ) >= 1),
            "the client did not connect: {:?} {}",
            client.stdout_lines(),
            client.stderr()
        );
        (server, client)
    }

    /// A kernel TCP connection to the tunnel client.
    fn connect(&self) -> TcpStream {
        self.ns.run(|| {
            let s = TcpStream::connect_timeout(
                &SocketAddrV4::new(CLIENT_IP, TUNNEL_PORT).into(),
                Duration::from_secs(5),
            )
            .expect("connect to the tunnel client");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.cert_dir);
    }
}

/// The `sha256:...` the server printed in its ready line.
fn fingerprint(server: &Proc) -> String {
    server
        .stdout_lines()
        .iter()
        .find_map(|l| l.split("fingerprint ").nth(1).map(|f| f.trim().to_string()))
        .expect("the server prints its fingerprint")
}

fn count_lines(p: &Proc, needle: &str) -> usize {
    p.stdout_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn last_status(p: &Proc) -> String {
    p.stdout_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("| tunnel conns"))
        .unwrap_or_default()
}

/// The number after `key` in the status line, e.g. `dropped 3`.
fn counter(line: &str, key: &str) -> u64 {
    let tunnel = line.split("| tunnel").nth(1).unwrap_or("");
    tunnel
        .split(&format!(" {key} "))
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Reads until the client's FIN, then answers with how many bytes came and a pattern tail.
fn count_then_reply(mut s: TcpStream) {
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = writeln!(s, "got {total}");
    let mut tail = vec![0u8; 200_000];
    fill_pattern(9, 0, &mut tail);
    let _ = s.write_all(&tail);
}

/// curl through the tunnel to a kernel HTTP server; returns the body.
fn curl(lab: &Lab, path: &str, max_time: &str) -> (bool, Vec<u8>) {
    let out = std::env::temp_dir().join(format!(
        "lh-tuncurl-{}-{}.bin",
        std::process::id(),
        path.trim_start_matches('/')
    ));
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.ns.name(),
            "curl",
            "-sS",
            "--max-time",
            max_time,
            "-o",
        ])
        .arg(&out)
        .arg(format!("http://{CLIENT_IP}:{TUNNEL_PORT}{path}"))
        .status()
        .expect("run curl");
    let body = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (status.success(), body)
}

#[test]
fn curl_fetches_100_mib_byte_exact_through_the_tunnel() {
    if !root_or_skip("curl_fetches_100_mib_byte_exact_through_the_tunnel") {
        return;
    }
    let lab = Lab::new("tuncurl");
    kernel_server(&lab.ns, 8000, http_100mib);
    let (server, client) = lab.pair(8000, &[]);
    let start = Instant::now();
    let (ok, body) = curl(&lab, "/big", "120");
    let secs = start.elapsed().as_secs_f64();
    assert!(ok, "curl failed; client: {}", client.stderr());
    assert_eq!(body.len() as u64, HTTP_BODY);
    let mut scratch = Vec::new();
    assert_eq!(
        check_pattern(1, 0, &body, &mut scratch),
        None,
        "body differs"
    );
    println!(
        "100 MiB through the tunnel in {secs:.2} s ({:.0} Mbit/s)",
        HTTP_BODY as f64 * 8.0 / secs / 1e6
    );
    // The status lines count what went through (they are printed every second).
    std::thread::sleep(Duration::from_millis(1500));
    let line = last_status(&server);
    println!("server: {line}");
    assert!(counter(&line, "up") >= HTTP_BODY, "server status: {line}");
    assert!(counter(&line, "total") >= 1);
}

#[test]
fn two_hundred_concurrent_streams_echo_their_own_bytes() {
    if !root_or_skip("two_hundred_concurrent_streams_echo_their_own_bytes") {
        return;
    }
    raise_nofile(8192);
    let lab = Lab::new("tun200");
    kernel_server(&lab.ns, 8001, echo);
    let (_server, client) = lab.pair(8001, &[]);
    const N: usize = 200;
    const LEN: usize = 64 * 1024;
    // All 200 are connected (and so hold a stream each) before any finishes.
    let conns: Vec<TcpStream> = (0..N).map(|_| lab.connect()).collect();
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    let mut data = vec![0u8; LEN];
                    fill_pattern(100 + i as u64, 0, &mut data);
                    w.write_all(&data).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut c = c;
                let mut back = Vec::new();
                let r = c.read_to_end(&mut back);
                writer.join().unwrap();
                r.map(|_| back)
            })
        })
        .collect();
    let mut scratch = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let back = w.join().unwrap().expect("read the echo to EOF");
        assert_eq!(back.len(), LEN, "stream {i} length");
        assert_eq!(
            check_pattern(100 + i as u64, 0, &back, &mut scratch),
            None,
            "stream {i} got another stream's bytes"
        );
    }
    assert!(wait_for(Duration::from_secs(5), || counter(
        &last_status(&client),
        "total"
    ) >= N as u64));
    println!("client: {}", last_status(&client));
}

#[test]
fn half_close_travels_through_the_tunnel() {
    if !root_or_skip("half_close_travels_through_the_tunnel") {
        return;
    }
    let lab = Lab::new("tunhalf");
    kernel_server(&lab.ns, 8002, count_then_reply);
    let (_server, _client) = lab.pair(8002, &[]);
    let mut c = lab.connect();
    let mut data = vec![0u8; 300_000];
    fill_pattern(5, 0, &mut data);
    c.write_all(&data).unwrap();
    // Done writing, still reading: the target sees EOF and only then answers.
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read the reply until EOF");
    let head = b"got 300000\n";
    assert!(
        back.starts_with(head),
        "reply: {:?}",
        String::from_utf8_lossy(&back[..back.len().min(40)])
    );
    let tail = &back[head.len()..];
    assert_eq!(tail.len(), 200_000);
    let mut scratch = Vec::new();
    assert_eq!(check_pattern(9, 0, tail, &mut scratch), None);
}

#[test]
fn a_target_reset_resets_the_tunnel_client() {
    if !root_or_skip("a_target_reset_resets_the_tunnel_client") {
        return;
    }
    let lab = Lab::new("tunrst");
    kernel_server(&lab.ns, 8003, read_then_reset);
    let (_server, client) = lab.pair(8003, &[]);
    let mut c = lab.connect();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 8];
    let r = c.read(&mut buf);
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the reset travels to the client as a reset, not as a FIN"
    );
    drop(c);
    assert!(wait_for(Duration::from_secs(5), || counter(
        &last_status(&client),
        "reset"
    ) >= 1));
}

#[test]
fn a_refused_target_resets_the_tunnel_client() {
    if !root_or_skip("a_refused_target_resets_the_tunnel_client") {
        return;
    }
    let lab = Lab::new("tunrefd");
    // Nothing listens on 8099: the kernel answers the server's SYN with RST.
    let (_server, client) = lab.pair(8099, &[]);
    for i in 0..3 {
        let mut c = lab.connect();
        let mut buf = [0u8; 8];
        // The reset may come before the write (which then reports it, and a read after it sees
        // a closed socket) or after it.
        let reset = match c.write_all(b"anyone?") {
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(()) => c
                .read(&mut buf)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        };
        assert!(
            reset,
            "connection {i} was not reset: {}",
            last_status(&client)
        );
    }
    assert_eq!(
        count_lines(&client, "connected to"),
        1,
        "the tunnel stays up"
    );
}

#[test]
fn a_wrong_pin_ends_the_client_with_one_line() {
    if !root_or_skip("a_wrong_pin_ends_the_client_with_one_line") {
        return;
    }
    let lab = Lab::new("tunpin");
    let server = lab.server(8004, &[]);
    let real = fingerprint(&server);
    // The right format, the wrong certificate: flip the last hex digit.
    let mut wrong = real.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let mut client = lab.client(&wrong, &[]);
    let status = client
        .wait_exit(Duration::from_secs(15))
        .expect("the client gives up on a certificate it does not trust");
    assert_eq!(status.code(), Some(1), "exit status");
    let err = client.stderr();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("does not match --pin") && lines[0].contains(&real),
        "{err}"
    );
    assert!(
        !client
            .stdout_lines()
            .iter()
            .any(|l| l.contains("connected to")),
        "no tunnel was made"
    );
}

const ZERO_PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn a_client_without_pin_or_ca_is_a_one_line_error() {
    // No network: the flags are checked before the port opens.
    let out = Command::new(env!("CARGO_BIN_EXE_longhaul"))
        .args([
            "tunnel",
            "client",
            "--port",
            "tap:lhnone0",
            "--ip",
            CLIENT_CIDR,
            "--listen",
            "8080",
            "--server",
            "198.18.0.2:4433",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--pin") && err.contains("--ca"), "{err}");
    for (flag, value) in [("--keepalive", "10s"), ("--pin", "sha256:1234")] {
        let mut args = vec![
            "tunnel",
            "client",
            "--port",
            "tap:lhnone0",
            "--ip",
            CLIENT_CIDR,
            "--listen",
            "8080",
            "--server",
            "198.18.0.2:4433",
            flag,
            value,
        ];
        if flag != "--pin" {
            args.extend_from_slice(&["--pin", ZERO_PIN]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_longhaul"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn garbage_datagrams_are_counted_and_dropped() {
    if !root_or_skip("garbage_datagrams_are_counted_and_dropped") {
        return;
    }
    let lab = Lab::new("tungarb");
    kernel_server(&lab.ns, 8005, echo);
    let (server, _client) = lab.pair(8005, &[]);
    const N: u64 = 500;
    lab.ns.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(KERNEL_IP, 0)).unwrap();
        let to = SocketAddrV4::new(STACK_IP, QUIC_PORT);
        let mut buf = vec![0u8; 1400];
        for i in 0..N {
            let len = [0usize, 1, 20, 1200, 1400][i as usize % 5];
            fill_pattern(i, 0, &mut buf[..len]);
            if i % 7 == 0 && len > 5 {
                // A long header with QUIC v1's version: looks like an Initial, is not one.
                buf[0] = 0xc3;
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            s.send_to(&buf[..len], to).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    assert!(
        wait_for(Duration::from_secs(5), || counter(
            &last_status(&server),
            "dropped"
        ) >= N),
        "server status: {}",
        last_status(&server)
    );
    let dropped = counter(&last_status(&server), "dropped");
    assert!(dropped <= N + 5, "dropped {dropped} of {N} sent");
    // The tunnel still carries data.
    let mut c = lab.connect();
    c.write_all(b"still here").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"still here");
}

#[test]
fn a_vanished_server_means_reconnect_attempts_then_service_again() {
    if !root_or_skip("a_vanished_server_means_reconnect_attempts_then_service_again") {
        return;
    }
    let lab = Lab::new("tunback");
    kernel_server(&lab.ns, 8006, echo);
    let fast = ["--idle-timeout", "2s"];
    let (server, mut client) = lab.pair(8006, &fast);
    let round_trip = |msg: &[u8]| {
        let mut c = lab.connect();
        c.write_all(msg).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).map(|_| back)
    };
    assert_eq!(round_trip(b"before").unwrap(), b"before");
    // SIGKILL: no CONNECTION_CLOSE, the client finds out by the idle timeout.
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGKILL) };
    drop(server);
    assert!(
        wait_for(Duration::from_secs(30), || count_lines(
            &client,
            "reconnecting in"
        ) >= 3),
        "client: {:?}",
        client.stdout_lines()
    );
    assert!(
        client.is_running(),
        "the client survives: {}",
        client.stderr()
    );
    // While there is no tunnel, a new TCP connection is refused or reset, never hung.
    let server = lab.server(8006, &fast);
    assert!(
        wait_for(Duration::from_secs(30), || count_lines(
            &client,
            "connected to"
        ) >= 2),
        "the client did not reconnect: {:?}",
        client.stdout_lines()
    );
    assert_eq!(round_trip(b"after").unwrap(), b"after");
    println!(
        "client: {:?}",
        client
            .stdout_lines()
            .iter()
            .filter(|l| !l.contains('|'))
            .collect::<Vec<_>>()
    );
    drop(server);
}

/// Echoes UDP datagrams on 198.18.0.1:`port` until the test process ends.
fn kernel_udp_echo(ns: &Netns, port: u16) {
    let s = ns.run(move || UdpSocket::bind(SocketAddrV4::new(KERNEL_IP, port)).expect("bind"));
    ns.spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
}

#[test]
fn udp_flows_travel_as_quic_datagrams_and_find_their_sender() {
    if !root_or_skip("udp_flows_travel_as_quic_datagrams_and_find_their_sender") {
        return;
    }
    let lab = Lab::new("tunudp");
    kernel_udp_echo(&lab.ns, 9000);
    let server = lab.server(8007, &["--udp-target", "198.18.0.1:9000"]);
    let pin = fingerprint(&server);
    let client = lab.client(&pin, &["--udp-listen", "5300"]);
    assert!(wait_for(Duration::from_secs(10), || count_lines(
        &client,
        "connected to"
    ) >= 1));
    let to = SocketAddrV4::new(CLIENT_IP, 5300);
    let socks: Vec<UdpSocket> = (0..2)
        .map(|_| {
            lab.ns.run(|| {
                let s = UdpSocket::bind(SocketAddrV4::new(KERNEL_IP, 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s
            })
        })
        .collect();
    // Warm-up: the first datagram of a flow may wait for ARP on the way; retry until one echoes.
    let mut buf = vec![0u8; 2048];
    for s in &socks {
        let ok = (0..10).any(|_| {
            s.send_to(b"warm-up", to).unwrap();
            matches!(s.recv_from(&mut buf), Ok((7, _)))
        });
        assert!(ok, "no echo through the tunnel: {}", last_status(&client));
        while s.recv_from(&mut buf).is_ok() {} // late duplicates of the warm-up
    }
    const N: usize = 50;
    let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 2];
    for i in 0..N {
        for (k, s) in socks.iter().enumerate() {
            let len = 10 + (i * 37) % 1000;
            let mut d = vec![0u8; len];
            fill_pattern((k * 1000 + i) as u64, 0, &mut d);
            s.send_to(&d, to).unwrap();
            sent[k].push(d);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (k, s) in socks.iter().enumerate() {
        let mut got = Vec::new();
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        let mut want = sent[k].clone();
        want.sort();
        got.sort();
        assert_eq!(got.len(), N, "socket {k}: {} of {N} echoed", got.len());
        assert_eq!(got, want, "socket {k} got exactly its own datagrams back");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let line = last_status(&client);
    println!("client: {line}");
    let udp = line.split("| udp").nth(1).unwrap_or("");
    let sent_count: u64 = udp
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(sent_count >= 2 * N as u64, "client udp counters: {line}");
    drop(server);
}

/// A CA and a server certificate it issued for "longhaul-tunnel", written as PEM files into
/// `dir`: (ca.pem, server.pem, server.key).
fn make_ca_and_server_cert(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["longhaul-tunnel".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Opens `streams` bidirectional streams from a plain quinn endpoint (tokio, kernel UDP socket)
/// to the tunnel server, sends the preamble and `len` pattern bytes on each, finishes, and
/// returns what came back on each.
fn quinn_round_trips(ca: &std::path::Path, streams: usize, len: usize) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"longhaul-tunnel/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let cfg = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut ep = quinn::Endpoint::client(SocketAddrV4::new(KERNEL_IP, 0).into()).unwrap();
        ep.set_default_client_config(cfg);
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ep.connect(
                SocketAddrV4::new(STACK_IP, QUIC_PORT).into(),
                "longhaul-tunnel",
            )
            .unwrap(),
        )
        .await
        .expect("handshake in time")
        .expect("handshake with the longhaul tunnel server");
        let mut tasks = Vec::new();
        for i in 0..streams {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let mut data = vec![0u8; len];
                fill_pattern(200 + i as u64, 0, &mut data);
                send.write_all(&[0]).await.unwrap();
                send.write_all(&data).await.unwrap();
                send.finish().unwrap();
                recv.read_to_end(64 << 20).await.unwrap()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        out
    })
}

#[test]
fn a_plain_quinn_endpoint_speaks_to_the_tunnel_server() {
    if !root_or_skip("a_plain_quinn_endpoint_speaks_to_the_tunnel_server") {
        return;
    }
    let lab = Lab::new("tunquinn");
    kernel_server(&lab.ns, 8008, echo);
    let (ca, cert, key) = make_ca_and_server_cert(&lab.cert_dir);
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let _server = lab.server(8008, &["--cert", &cert, "--key", &key]);
    // The wire is plain QUIC: quinn on kernel sockets, trusting the CA, with our ALPN.
    let back = lab.ns.run(|| quinn_round_trips(&ca, 3, 100_000));
    let mut scratch = Vec::new();
    for (i, b) in back.iter().enumerate() {
        assert_eq!(b.len(), 100_000, "stream {i}");
        assert_eq!(check_pattern(200 + i as u64, 0, b, &mut scratch), None);
    }
    // And the longhaul client trusts the same server through --ca.
    let ca = ca.to_string_lossy().to_string();
    let client = lab.client("", &["--ca", &ca, "--server-name", "longhaul-tunnel"]);
    assert!(
        wait_for(Duration::from_secs(10), || count_lines(
            &client,
            "connected to"
        ) >= 1),
        "--ca client: {:?} {}",
        client.stdout_lines(),
        client.stderr()
    );
    let mut c = lab.connect();
    c.write_all(b"via ca").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"via ca");
}

/// Writes pattern bytes until the connection breaks.
fn endless(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    fill_pattern(3, 0, &mut buf);
    while s.write_all(&buf).is_ok() {}
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_that_stops_reading_does_not_grow_either_end() {
    if !root_or_skip("a_client_that_stops_reading_does_not_grow_either_end") {
        return;
    }
    let lab = Lab::new("tunslow");
    kernel_server(&lab.ns, 8009, endless);
    let small = [
        "--rmem",
        "1M",
        "--wmem",
        "1M",
        "--stream-window",
        "1M",
        "--conn-window",
        "2M",
    ];
    let (server, client) = lab.pair(8009, &small);
    let pids = [server.pid(), client.pid()];
    let before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    let mut c = lab.connect();
    let mut first = [0u8; 1024];
    c.read_exact(&mut first).expect("data flows at first");
    // From now on the TCP client reads nothing: QUIC flow control must stop the server's reads
    // from the target, so neither end may hold more than its windows and buffers.
    std::thread::sleep(Duration::from_secs(2));
    let mid: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    println!("RSS KiB (server, client): before {before:?}, after 2 s {mid:?}, after 4 s {after:?}");
    for i in 0..2 {
        // 1 MiB TCP buffers and a 2 MiB QUIC window per end, plus slack; nothing that grows.
        assert!(
            after[i] - before[i] < 16 * 1024,
            "end {i} grew by {} KiB",
            after[i] - before[i]
        );
        assert!(
            after[i] <= mid[i] + 1024,
            "end {i} still growing: {} → {} KiB",
            mid[i],
            after[i]
        );
    }
    let line = last_status(&server);
    assert!(
        counter(&line, "up") < 8 << 20,
        "the server kept reading the target: {line}"
    );
}
