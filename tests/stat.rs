//! `longhaul stat` against a running `longhaul echo` in a private namespace: kernel connections
//! that moved data appear with the right state, byte counts, RTT, window and the window scales
//! Linux negotiated (cross-checked with the kernel's own `ss -tin`); the table prints one block per
//! connection; the control socket is 0600 and removed on SIGTERM; finding instances in the run
//! directory, stale sockets, bad requests and missing instances give one clear line. Through the
//! emulator (a 20 ms, 50 Mbit/s path) a BBR sender reports its model (bandwidth, min RTT, gains)
//! in the JSON and the table; `--pacing` gives a CUBIC sender a pacing rate, and without it none.
//!
//! Needs root (namespaces, TAP devices); without it each test prints a note and passes.

mod common;

use common::lab::{in_ns, Lab};
use common::{root_or_skip, Netns, STACK_IP};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn stat(args: &[&str], run_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longhaul"));
    cmd.arg("stat").args(args);
    if let Some(d) = run_dir {
        cmd.env("LONGHAUL_RUN_DIR", d);
    }
    cmd.output().expect("run longhaul stat")
}

fn out_err(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Fails unless `o` failed with exactly one line on stderr, starting with `longhaul stat:`.
fn assert_one_line_error(o: &Output, what: &str) -> String {
    let (out, err) = out_err(o);
    assert!(!o.status.success(), "{what} succeeded:\n{out}\n{err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line:\n{err}");
    assert!(err.starts_with("longhaul stat: "), "{what}: {err}");
    err
}

/// A private directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("lh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `len` bytes on a kernel connection to the echo and reads them all back.
fn echo_bytes(s: &mut TcpStream, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut back = vec![0u8; len];
    std::thread::scope(|sc| {
        let mut w = s.try_clone().expect("clone the stream");
        sc.spawn(move || w.write_all(&data).expect("write to the echo"));
        s.read_exact(&mut back).expect("read the echo back");
    });
    assert!(back
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i * 7 % 251) as u8));
}

/// The kernel's view of its connection from `local_port` (`ss -tin`): (its snd_wscale,
/// its rcv_wscale).
fn kernel_wscale(ns: &Netns, local_port: u16) -> (u64, u64) {
    let o = ns.exec(&["ss", "-tinH", "sport", &format!("= :{local_port}")]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let w = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("wscale:"))
        .unwrap_or_else(|| panic!("no wscale in ss output:\n{text}"));
    let (a, b) = w.split_once(',').expect("wscale:A,B");
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn stat_shows_kernel_connections_json_and_table() {
    if !root_or_skip("stat_shows_kernel_connections_json_and_table") {
        return;
    }
    let ns = Netns::new("stat");
    let echo = ns.spawn_echo(&["--quiet", "--no-pin"]);
    // The default socket: /run/longhaul/<pid>.sock, mode 0600.
    let sock = PathBuf::from(format!("/run/longhaul/{}.sock", echo.pid()));
    assert!(
        common::wait_for(Duration::from_secs(5), || sock.exists()),
        "no control socket at {}; stderr: {}",
        sock.display(),
        echo.stderr()
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    let sizes = [1_000usize, 100_000, 3_000_000];
    let mut conns: Vec<TcpStream> = ns.run(|| {
        sizes
            .iter()
            .map(|_| TcpStream::connect(SocketAddrV4::new(STACK_IP, 7)).expect("connect"))
            .collect()
    });
    for (c, &n) in conns.iter_mut().zip(&sizes) {
        echo_bytes(c, n);
    }
    let ports: Vec<u16> = conns
        .iter()
        .map(|c| c.local_addr().unwrap().port())
        .collect();

    let o = stat(&["--pid", &echo.pid().to_string(), "--json"], None);
    let (out, err) = out_err(&o);
    assert!(
        o.status.success(),
        "stat --pid --json failed:\n{out}\n{err}"
    );
    let doc: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"));
    let list = doc.as_array().expect("a JSON array");
    for (&port, &n) in ports.iter().zip(&sizes) {
        let c = list
            .iter()
            .find(|c| c["remote"] == format!("198.18.0.1:{port}"))
            .unwrap_or_else(|| panic!("connection from port {port} missing:\n{out}"));
        let t = &c["tcp"];
        let num = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {c}"));
        assert_eq!(c["state"], "Established", "{c}");
        assert_eq!(c["local"], "198.18.0.2:7");
        assert_eq!(c["core"], 0);
        assert_eq!(num("bytes_received"), n as u64, "{c}");
        assert_eq!(num("bytes_sent"), n as u64, "echoed back: {c}");
        assert!(num("bytes_acked") <= n as u64);
        assert!(num("rtt_us") > 0, "{c}");
        assert!(
            num("min_rtt_us") > 0 && num("min_rtt_us") <= num("rtt_us"),
            "{c}"
        );
        assert!(num("rto_us") >= 200_000, "{c}");
        assert!(num("cwnd_bytes") > 0, "{c}");
        assert!(num("segs_in") > 0 && num("segs_out") > 0);
        assert!(num("data_segs_in") >= (n as u64).div_ceil(65_536));
        assert_eq!(num("retransmits_current"), 0);
        assert_eq!(num("snd_mss"), 1448, "{c}");
        assert_eq!(t["timestamps"], true);
        assert_eq!(t["sack"], true);
        assert!(num("snd_wnd") > 0 && num("rcv_wnd") > 0);
        // The scales as Linux negotiated them: ours to send is what the kernel receives with.
        let (k_snd, k_rcv) = kernel_wscale(&ns, port);
        assert_eq!(num("snd_wscale"), k_rcv, "{c}");
        assert_eq!(num("rcv_wscale"), k_snd, "{c}");
        assert!(["cubic", "newreno", "reno"].contains(&c["cc"].as_str().unwrap_or("")));
    }
    // The big transfer took more than one round: a delivery rate.
    let big = list
        .iter()
        .find(|c| c["remote"] == format!("198.18.0.1:{}", ports[2]))
        .unwrap();
    assert!(
        big["tcp"]["delivery_rate_bps"].as_u64().unwrap() > 0,
        "{big}"
    );

    // The table: a header, then a line and an indented detail line per connection.
    let o = stat(&["--socket", sock.to_str().unwrap()], None);
    let (out, err) = out_err(&o);
    assert!(o.status.success(), "stat --socket failed:\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("State") && lines[0].contains("Peer Address:Port"));
    let estab = lines.iter().filter(|l| l.starts_with("ESTAB")).count();
    assert_eq!(estab, sizes.len(), "{out}");
    assert_eq!(lines.len(), 1 + 2 * list.len(), "{out}");
    for (i, l) in lines.iter().enumerate().skip(1) {
        if i % 2 == 0 {
            assert!(l.starts_with("\t "), "detail line {i}: {l}");
            assert!(
                l.contains(" rto:") && l.contains(" rtt:") && l.contains(" cwnd:"),
                "{l}"
            );
            assert!(l.contains(" wscale:") && l.contains(" retrans:0/"), "{l}");
        }
    }
    for &port in &ports {
        assert!(out.contains(&format!("198.18.0.1:{port}")), "{out}");
    }
    assert!(out.contains(" bytes_received:3000000 "), "{out}");

    // The raw protocol: counters, and one error line for a bad request.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"stats\nbogus\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let stats: Value = serde_json::from_str(&line).unwrap();
    assert!(stats[0]["conns_opened"].as_u64().unwrap() >= 3, "{line}");
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("error: unknown request 'bogus'"), "{line}");

    drop(conns);
    // SIGTERM: the socket goes away with the process.
    let status = echo.stop();
    assert!(status.success(), "echo exit {status}");
    assert!(!sock.exists(), "{} left behind", sock.display());
    let o = stat(&["--socket", sock.to_str().unwrap()], None);
    assert_one_line_error(&o, "stat on a stopped instance");
}

#[test]
fn stat_finds_instances_and_reports_errors_in_one_line() {
    if !root_or_skip("stat_finds_instances_and_reports_errors_in_one_line") {
        return;
    }
    let dir = TempDir::new("statdir");
    let empty = TempDir::new("statempty");
    // No instance at all, a socket path that does not exist, a bad interval.
    let err = assert_one_line_error(&stat(&[], Some(&empty.0)), "stat with no instance");
    assert!(err.contains("no running longhaul instance"), "{err}");
    let err = assert_one_line_error(
        &stat(&["--socket", "/nonexistent/x.sock", "--json"], None),
        "stat on a bad path",
    );
    assert!(err.contains("/nonexistent/x.sock"), "{err}");
    assert_one_line_error(&stat(&["--interval", "0"], Some(&empty.0)), "bad interval");

    let a_path = dir.0.join("a.sock");
    let b_path = dir.0.join("b.sock");
    let a = a_path.to_str().unwrap();
    let ns_a = Netns::new("stata");
    let ns_b = Netns::new("statb");
    let mut echo_a = ns_a.spawn_echo(&["--quiet", "--no-pin", "--control", a]);
    assert!(common::wait_for(Duration::from_secs(5), || a_path.exists()));
    // Exactly one instance in the run directory: used without naming it (no connections yet).
    let o = stat(&["--json"], Some(&dir.0));
    let (out, err) = out_err(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(out.trim(), "[]");
    // A second: stat lists both and asks to choose.
    let echo_b = ns_b.spawn_echo(&["--quiet", "--no-pin", "--control", b_path.to_str().unwrap()]);
    assert!(common::wait_for(Duration::from_secs(5), || b_path.exists()));
    let o = stat(&[], Some(&dir.0));
    let (out, err) = out_err(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(err.contains("2 instances are running"), "{err}");
    assert!(err.contains("a.sock") && err.contains("b.sock") && err.contains("echo --port"));
    // A second instance cannot take a live socket.
    let ns_c = Netns::new("statc");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_c.name()])
        .arg(env!("CARGO_BIN_EXE_longhaul"))
        .args([
            "echo",
            "--port",
            &ns_c.port_spec(),
            "--ip",
            common::STACK_CIDR,
        ])
        .args(["--quiet", "--no-pin", "--control", a]);
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("in use"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    drop(echo_b);

    // SIGKILL leaves a stale socket: stat says it cannot connect; a new instance replaces it.
    // SAFETY: the pid is our running child.
    unsafe { libc::kill(echo_a.pid() as libc::pid_t, libc::SIGKILL) };
    assert!(echo_a.wait_exit(Duration::from_secs(5)).is_some());
    assert!(a_path.exists());
    let err = assert_one_line_error(&stat(&["--socket", a], None), "stale socket");
    assert!(err.contains("cannot connect"), "{err}");
    let echo_a2 = ns_a.spawn_echo(&["--quiet", "--no-pin", "--control", a]);
    assert!(common::wait_for(Duration::from_secs(5), || {
        stat(&["--socket", a, "--json"], None).status.success()
    }));
    drop(echo_a2);
    assert!(!a_path.exists());

    // --no-control: no socket at the default path.
    let quiet = ns_b.spawn_echo(&["--quiet", "--no-pin", "--no-control"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!Path::new(&format!("/run/longhaul/{}.sock", quiet.pid())).exists());
}

/// The connection from `port` in a `conns` reply, and its detail line in the table of `out`.
fn conn_and_line<'a>(list: &'a [Value], table: &str, peer: &str) -> (&'a Value, String) {
    let c = list
        .iter()
        .find(|c| c["remote"] == peer)
        .unwrap_or_else(|| panic!("connection from {peer} missing: {list:?}"));
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(peer))
        .unwrap_or_else(|| panic!("{peer} not in the table:\n{table}"));
    let line = lines.get(at + 1).copied().unwrap_or_default().to_string();
    (c, line)
}

/// `longhaul stat --socket SOCK` as JSON (the `conns` array) and as the table.
fn stat_both(sock: &Path) -> (Vec<Value>, String) {
    let sock = sock.to_str().unwrap();
    let o = stat(&["--socket", sock, "--json"], None);
    let (out, err) = out_err(&o);
    assert!(o.status.success(), "stat --json failed:\n{out}\n{err}");
    let doc: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"));
    let list = doc.as_array().expect("a JSON array").clone();
    let o = stat(&["--socket", sock], None);
    let (table, err) = out_err(&o);
    assert!(o.status.success(), "stat failed:\n{table}\n{err}");
    (list, table)
}

#[test]
fn stat_shows_the_bbr_model_of_a_sender_on_a_20ms_path() {
    if !root_or_skip("stat_shows_the_bbr_model_of_a_sender_on_a_20ms_path") {
        return;
    }
    // 10 ms each way: a 20 ms RTT; 50 Mbit/s with a one-BDP queue and no loss.
    let mut lab = Lab::start(
        "statbbr",
        &["--delay", "10ms", "--rate", "50mbit", "--queue", "1bdp"],
    );
    let dir = TempDir::new("statbbr");
    let sock = dir.0.join("bbr.sock");
    let echo = lab.spawn_on_a(
        "echo",
        &[
            "--cc",
            "bbr",
            "--quiet",
            "--no-pin",
            "--control",
            sock.to_str().unwrap(),
        ],
    );
    assert!(
        common::wait_for(Duration::from_secs(5), || sock.exists()),
        "no control socket; stderr: {}",
        echo.stderr()
    );
    // The kernel in B sends 2 MB and reads them back: longhaul's BBR is the sender of the echo.
    let mut s = in_ns(&lab.b, || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 3), 7).into(),
            Duration::from_secs(10),
        )
        .expect("connect to the echo through the emulator")
    });
    echo_bytes(&mut s, 2_000_000);
    let peer = format!("198.18.0.2:{}", s.local_addr().unwrap().port());

    let (list, table) = stat_both(&sock);
    let (c, line) = conn_and_line(&list, &table, &peer);
    println!("{table}");
    let t = &c["tcp"];
    let num = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {c}"));
    assert_eq!(c["cc"], "bbr", "{c}");
    assert_eq!(num("bytes_sent"), 2_000_000, "{c}");
    // The model saw the path: a bandwidth near the bottleneck (not above it by much; the
    // bounds are loose, the estimate is a max over samples), the 20 ms RTT, gains.
    let (bw, max_bw) = (num("bbr_bw_bps"), num("bbr_max_bw_bps"));
    assert!(bw > 0 && bw <= max_bw, "{c}");
    let bottleneck = 50_000_000 / 8;
    assert!(
        max_bw >= bottleneck / 5 && max_bw <= bottleneck * 3 / 2,
        "max_bw {max_bw} B/s on a {bottleneck} B/s path: {c}"
    );
    let min_rtt = num("bbr_min_rtt_us");
    assert!(
        (19_500..30_000).contains(&min_rtt),
        "BBR min_rtt {min_rtt} us on a 20 ms path: {c}"
    );
    assert!(
        num("bbr_pacing_gain_pct") > 0 && num("bbr_cwnd_gain_pct") > 0,
        "{c}"
    );
    assert!(num("pacing_rate_bps") > 0, "BBR always paces: {c}");
    // Startup may overflow the one-BDP queue: whatever loss there was, the table says which
    // detector found it.
    let lost = [num("lost_rack"), num("lost_dupack"), num("lost_rto")];
    if lost.iter().any(|&n| n > 0) {
        let by = format!(
            " lost_by:rack/dupack/rto {}/{}/{} ",
            lost[0], lost[1], lost[2]
        );
        assert!(line.contains(&by), "{by}: {line}");
    }
    // The table: the state after the name, the model as ss prints it, the pacing rate.
    let state = c["cc_state"].as_str().unwrap();
    assert!(line.starts_with(&format!("\t bbr {state} ")), "{line}");
    assert!(
        line.contains(" bbr:(bw:") && line.contains("bps,"),
        "{line}"
    );
    assert!(
        line.contains(",mrtt:") && line.contains(",pacing_gain:"),
        "{line}"
    );
    assert!(
        line.contains(",cwnd_gain:") && line.contains(" pacing_rate "),
        "{line}"
    );

    drop(s);
    drop(echo);
    lab.stop();
}

/// Starts an echo in `ns` with `args` and a control socket at `sock`, echoes 1 MB from a kernel
/// connection and returns that connection's entry in `stat --json` and its table line.
fn cubic_echo_stats(ns: &Netns, sock: &Path, args: &[&str]) -> (Value, String) {
    let mut all = vec!["--quiet", "--no-pin", "--control", sock.to_str().unwrap()];
    all.extend_from_slice(args);
    let echo = ns.spawn_echo(&all);
    assert!(
        common::wait_for(Duration::from_secs(5), || sock.exists()),
        "no control socket; stderr: {}",
        echo.stderr()
    );
    let mut s = ns.run(|| TcpStream::connect(SocketAddrV4::new(STACK_IP, 7)).expect("connect"));
    echo_bytes(&mut s, 1_000_000);
    let peer = format!("198.18.0.1:{}", s.local_addr().unwrap().port());
    let (list, table) = stat_both(sock);
    let (c, line) = conn_and_line(&list, &table, &peer);
    println!("{table}");
    let c = c.clone();
    drop(s);
    let status = echo.stop();
    assert!(status.success(), "echo exit {status}");
    (c, line)
}

#[test]
fn pacing_switch_paces_cubic() {
    if !root_or_skip("pacing_switch_paces_cubic") {
        return;
    }
    let ns = Netns::new("statpace");
    let dir = TempDir::new("statpace");
    let (c, line) = cubic_echo_stats(&ns, &dir.0.join("paced.sock"), &["--pacing"]);
    assert_eq!(c["cc"], "cubic", "{c}");
    let rate = c["tcp"]["pacing_rate_bps"].as_u64().unwrap();
    assert!(rate > 0, "--pacing: CUBIC paced: {c}");
    assert!(line.contains(" pacing_rate "), "{line}");
    // CUBIC has no model to show.
    assert_eq!(c["tcp"]["bbr_bw_bps"], 0, "{c}");
    assert_eq!(c["tcp"]["bbr_pacing_gain_pct"], 0, "{c}");
    assert!(!line.contains("bbr:("), "{line}");
    let state = c["cc_state"].as_str().unwrap();
    assert!(line.starts_with(&format!("\t cubic {state} ")), "{line}");

    let (c, line) = cubic_echo_stats(&ns, &dir.0.join("bursty.sock"), &[]);
    assert_eq!(c["tcp"]["pacing_rate_bps"], 0, "without --pacing: {c}");
    assert!(!line.contains("pacing_rate"), "{line}");
}
