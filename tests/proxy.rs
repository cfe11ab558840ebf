//! `longhaul proxy` between kernel clients and kernel servers, all in one namespace: clients and
//! servers are the kernel side of the TAP (198.18.0.1), the proxy is longhaul (198.18.0.2).

mod common;

use common::servers::*;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PROXY_PORT: u16 = 80;

fn proxy_addr() -> SocketAddrV4 {
    SocketAddrV4::new(STACK_IP, PROXY_PORT)
}

fn upstream(port: u16) -> String {
    format!("{KERNEL_IP}:{port}")
}

/// Writes pattern bytes until the connection breaks.
fn endless(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    fill_pattern(3, 0, &mut buf);
    while s.write_all(&buf).is_ok() {}
}

static HEADERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Records the PROXY header (read unbuffered, byte-exact), then echoes what follows.
fn header_then_echo(mut s: TcpStream) {
    let mut first = vec![0u8; 16];
    if s.read_exact(&mut first).is_err() {
        return;
    }
    if first.starts_with(b"PROXY ") {
        let mut b = [0u8; 1];
        while first.last() != Some(&b'\n') && s.read_exact(&mut b).is_ok() {
            first.push(b[0]);
        }
    } else {
        let len = u16::from_be_bytes([first[14], first[15]]) as usize;
        let mut rest = vec![0u8; len];
        let _ = s.read_exact(&mut rest);
        first.extend_from_slice(&rest);
    }
    HEADERS.lock().unwrap().push(first);
    echo(s);
}

fn connect(ns: &Netns) -> TcpStream {
    ns.run(|| {
        let s = TcpStream::connect_timeout(&proxy_addr().into(), Duration::from_secs(5))
            .expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    })
}

fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo back");
    assert_eq!(back, msg);
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

fn last_counter_line(p: &Proc) -> String {
    p.stdout_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("proxy active"))
        .unwrap_or_default()
}

/// The value after `key` in a counter line, e.g. `upstream-failures 3`.
fn counter(line: &str, key: &str) -> u64 {
    line.split(key)
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn curl_fetches_100_mib_byte_exact_through_the_proxy() {
    if !root_or_skip("curl_fetches_100_mib_byte_exact_through_the_proxy") {
        return;
    }
    let ns = Netns::new("pxcurl");
    kernel_server(&ns, 8000, http_100mib);
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &["--listen", "80", "--upstream", &upstream(8000), "--quiet"],
    );
    let out = std::env::temp_dir().join(format!("lh-pxcurl-{}.bin", std::process::id()));
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-o",
        ])
        .arg(&out)
        .arg(format!("http://{STACK_IP}:{PROXY_PORT}/big"))
        .status()
        .expect("run curl");
    let body = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "curl failed: {status:?}");
    assert_eq!(body.len() as u64, HTTP_BODY);
    let mut scratch = Vec::new();
    assert_eq!(
        check_pattern(1, 0, &body, &mut scratch),
        None,
        "body differs"
    );
}

#[test]
fn five_hundred_concurrent_clients() {
    if !root_or_skip("five_hundred_concurrent_clients") {
        return;
    }
    raise_nofile(8192);
    let ns = Netns::new("px500");
    kernel_server(&ns, 8001, echo);
    let proxy = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "80",
            "--upstream",
            &upstream(8001),
            "--stats-interval",
            "1",
        ],
    );
    let mut clients: Vec<TcpStream> = (0..500).map(|_| connect(&ns)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i:04}").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut back = [0u8; 11];
        c.read_exact(&mut back).expect("echo through the proxy");
        assert_eq!(&back, format!("client {i:04}").as_bytes());
    }
    assert!(wait_for(Duration::from_secs(5), || counter(
        &last_counter_line(&proxy),
        "proxy active"
    ) == 500));
    drop(clients);
}

#[test]
fn a_refusing_upstream_fails_over_to_the_next() {
    if !root_or_skip("a_refusing_upstream_fails_over_to_the_next") {
        return;
    }
    let ns = Netns::new("pxfail");
    kernel_server(&ns, 8002, echo);
    // Port 8009 has no listener: the kernel answers RST.
    let ups = format!("{},{}", upstream(8009), upstream(8002));
    let proxy = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "80",
            "--upstream",
            &ups,
            "--stats-interval",
            "1",
        ],
    );
    for i in 0..10 {
        let mut c = connect(&ns);
        echo_round_trip(&mut c, format!("try {i}").as_bytes());
    }
    assert!(wait_for(Duration::from_secs(3), || counter(
        &last_counter_line(&proxy),
        "upstream-failures"
    ) >= 1));
    assert_eq!(
        counter(&last_counter_line(&proxy), "upstream-failures"),
        1,
        "the refusing upstream stays marked down"
    );
}

#[test]
fn no_upstream_left_closes_the_client_cleanly() {
    if !root_or_skip("no_upstream_left_closes_the_client_cleanly") {
        return;
    }
    let ns = Netns::new("pxnone");
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &["--listen", "80", "--upstream", &upstream(8010), "--quiet"],
    );
    let mut c = connect(&ns);
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).expect("an orderly close, not a reset"), 0);
}

#[test]
fn half_close_travels_through_the_proxy() {
    if !root_or_skip("half_close_travels_through_the_proxy") {
        return;
    }
    let ns = Netns::new("pxhalf");
    kernel_server(&ns, 8003, echo);
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &["--listen", "80", "--upstream", &upstream(8003), "--quiet"],
    );
    let mut c = connect(&ns);
    let mut data = vec![0u8; 300_000];
    fill_pattern(5, 0, &mut data);
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        // The client is done writing but keeps reading: the server must still answer.
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read the reply until EOF");
    writer.join().unwrap();
    assert_eq!(back.len(), 300_000);
    let mut scratch = Vec::new();
    assert_eq!(check_pattern(5, 0, &back, &mut scratch), None);
}

#[test]
fn a_client_that_stops_reading_does_not_grow_the_proxy() {
    if !root_or_skip("a_client_that_stops_reading_does_not_grow_the_proxy") {
        return;
    }
    let ns = Netns::new("pxslow");
    kernel_server(&ns, 8004, endless);
    let proxy = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "80",
            "--upstream",
            &upstream(8004),
            "--rmem",
            "1M",
            "--wmem",
            "1M",
            "--quiet",
        ],
    );
    let pid = proxy.pid();
    let before = rss_kib(pid);
    let mut c = connect(&ns);
    let mut first = [0u8; 1024];
    c.read_exact(&mut first).expect("data flows at first");
    // Now the client reads nothing: the proxy may hold at most its buffers.
    std::thread::sleep(Duration::from_secs(2));
    let mid = rss_kib(pid);
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    println!("proxy RSS before {before} KiB, after 2 s {mid} KiB, after 4 s {after} KiB");
    // Two legs × (1 MiB receive + 1 MiB send) plus slack; nothing that grows with time.
    assert!(
        after - before < 8 * 1024,
        "RSS grew by {} KiB",
        after - before
    );
    assert!(after <= mid + 256, "RSS still growing: {mid} → {after} KiB");
}

#[test]
fn max_conns_closes_connections_above_the_limit() {
    if !root_or_skip("max_conns_closes_connections_above_the_limit") {
        return;
    }
    let ns = Netns::new("pxmax");
    kernel_server(&ns, 8005, echo);
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "80",
            "--upstream",
            &upstream(8005),
            "--max-conns",
            "2",
            "--quiet",
        ],
    );
    let mut a = connect(&ns);
    let mut b = connect(&ns);
    echo_round_trip(&mut a, b"first");
    echo_round_trip(&mut b, b"second");
    let mut c = connect(&ns);
    let mut buf = [0u8; 4];
    assert_eq!(
        c.read(&mut buf).expect("closed, not reset"),
        0,
        "third connection is closed at once"
    );
    echo_round_trip(&mut a, b"still fine");
}

#[test]
fn proxy_protocol_headers_name_the_client() {
    if !root_or_skip("proxy_protocol_headers_name_the_client") {
        return;
    }
    for (flag, v2) in [("--send-proxy", false), ("--send-proxy-v2", true)] {
        let ns = Netns::new(if v2 { "pxpp2" } else { "pxpp1" });
        kernel_server(&ns, 8006, header_then_echo);
        let _proxy = ns.spawn_longhaul(
            "proxy",
            &[
                "--listen",
                "80",
                "--upstream",
                &upstream(8006),
                flag,
                "--quiet",
            ],
        );
        let mut c = connect(&ns);
        let client_port = c.local_addr().unwrap().port();
        echo_round_trip(&mut c, b"payload after the header");
        let headers = HEADERS.lock().unwrap().clone();
        let expected: Vec<u8> = if v2 {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 18, 0, 1, 198, 18, 0, 2]);
            h.extend_from_slice(&client_port.to_be_bytes());
            h.extend_from_slice(&PROXY_PORT.to_be_bytes());
            h
        } else {
            format!("PROXY TCP4 198.18.0.1 198.18.0.2 {client_port} {PROXY_PORT}\r\n").into_bytes()
        };
        assert!(
            headers.contains(&expected),
            "{flag}: expected {expected:?} among {headers:?}"
        );
    }
}

#[test]
fn connect_timeout_moves_on_from_a_silent_upstream() {
    if !root_or_skip("connect_timeout_moves_on_from_a_silent_upstream") {
        return;
    }
    let ns = Netns::new("pxsilent");
    kernel_server(&ns, 8007, echo);
    // 198.18.0.77 is on the TAP's subnet but nobody answers ARP for it: the connect never completes.
    let ups = format!("198.18.0.77:8007,{}", upstream(8007));
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "80",
            "--upstream",
            &ups,
            "--connect-timeout",
            "300ms",
            "--balance",
            "round-robin",
            "--quiet",
        ],
    );
    let start = Instant::now();
    let mut c = connect(&ns);
    echo_round_trip(&mut c, b"eventually");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn an_upstream_reset_resets_the_client() {
    if !root_or_skip("an_upstream_reset_resets_the_client") {
        return;
    }
    let ns = Netns::new("pxrst");
    kernel_server(&ns, 8011, read_then_reset);
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &["--listen", "80", "--upstream", &upstream(8011), "--quiet"],
    );
    let mut c = connect(&ns);
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 8];
    let r = c.read(&mut buf);
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the reset travels to the client as a reset, not as a FIN"
    );
}

#[test]
fn idle_pairs_are_closed_after_the_idle_timeout() {
    if !root_or_skip("idle_pairs_are_closed_after_the_idle_timeout") {
        return;
    }
    let ns = Netns::new("pxidle");
    kernel_server(&ns, 8012, echo);
    let _proxy = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "80",
            "--upstream",
            &upstream(8012),
            "--idle-timeout",
            "1s",
            "--quiet",
        ],
    );
    let mut c = connect(&ns);
    echo_round_trip(&mut c, b"active");
    let start = Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).expect("an orderly close"), 0);
    let idle = start.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[test]
fn bad_leg_options_are_one_line_errors() {
    let out = Command::new("timeout")
        .args(["10", env!("CARGO_BIN_EXE_longhaul")])
        .args([
            "proxy",
            "--port",
            "tap:x",
            "--ip",
            "198.18.0.2/24",
            "--listen",
            "80",
        ])
        .args(["--upstream", "198.18.0.1:80", "--upstream-rmem", "1G"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--upstream-rmem"), "{err}");
}

/// The congestion control of every live connection of `pid`, by remote port: `longhaul stat
/// --json` is what an operator would look at.
fn leg_cc(pid: u32) -> Vec<(u16, String)> {
    // The control socket is bound just after the ready line is printed.
    let sock = format!("/run/longhaul/{pid}.sock");
    assert!(
        wait_for(Duration::from_secs(5), || std::path::Path::new(&sock)
            .exists()),
        "no control socket at {sock}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_longhaul"))
        .args(["stat", "--pid", &pid.to_string(), "--json"])
        .output()
        .expect("run longhaul stat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stat JSON");
    let mut legs: Vec<(u16, String)> = v
        .as_array()
        .expect("a list of connections")
        .iter()
        .map(|c| {
            let remote: SocketAddrV4 = c["remote"].as_str().unwrap().parse().unwrap();
            (remote.port(), c["cc"].as_str().unwrap().to_string())
        })
        .collect();
    legs.sort();
    legs
}

#[test]
fn each_leg_runs_its_own_congestion_control() {
    if !root_or_skip("each_leg_runs_its_own_congestion_control") {
        return;
    }
    let ns = Netns::new("pxcc");
    kernel_server(&ns, 8031, echo);
    kernel_server(&ns, 8032, echo);
    // Defaults: client legs follow --cc (cubic), upstream legs run BBR.
    let default = ns.spawn_longhaul(
        "proxy",
        &["--listen", "80", "--upstream", &upstream(8031), "--quiet"],
    );
    let mut c = connect(&ns);
    echo_round_trip(&mut c, b"default legs");
    let legs = leg_cc(default.pid());
    assert!(legs.contains(&(8031, "bbr".into())), "{legs:?}");
    assert!(
        legs.iter().any(|(p, cc)| *p != 8031 && cc == "cubic"),
        "{legs:?}"
    );
    drop(c);
    drop(default);
    // Both chosen explicitly.
    let chosen = ns.spawn_longhaul(
        "proxy",
        &[
            "--listen",
            "81",
            "--upstream",
            &upstream(8032),
            "--client-cc",
            "bbr",
            "--upstream-cc",
            "newreno",
            "--quiet",
        ],
    );
    let mut c = ns.run(|| TcpStream::connect(SocketAddrV4::new(STACK_IP, 81)).expect("connect"));
    echo_round_trip(&mut c, b"chosen legs");
    let legs = leg_cc(chosen.pid());
    assert!(legs.contains(&(8032, "newreno".into())), "{legs:?}");
    assert!(
        legs.iter().any(|(p, cc)| *p != 8032 && cc == "bbr"),
        "{legs:?}"
    );
}

#[test]
fn an_unknown_leg_congestion_control_is_a_one_line_error() {
    let out = Command::new("timeout")
        .args(["10", env!("CARGO_BIN_EXE_longhaul")])
        .args([
            "proxy",
            "--port",
            "tap:x",
            "--ip",
            "198.18.0.2/24",
            "--listen",
            "80",
        ])
        .args(["--upstream", "198.18.0.1:80", "--upstream-cc", "vegas"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--upstream-cc") && err.contains("vegas"),
        "{err}"
    );
}
