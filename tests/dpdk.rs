//! The DPDK backend against the Linux kernel, through DPDK's virtual devices (no NIC needed):
//! `net_tap` (DPDK creates a TAP whose kernel end gets an address) and `net_af_packet` on one end
//! of a veth pair whose other end is the kernel's. Each test runs in its own namespace and its own
//! process (`rte_eal_init` runs once per process): the `longhaul` binary, or, where per-core
//! counters are needed, this test binary re-run as a child for one test.
//!
//! Needs root and `--features dpdk`: `cargo test --release --features dpdk --test dpdk`.

#![cfg(feature = "dpdk")]

mod common;

use common::{fill_pattern, root_or_skip, Netns, Proc, StreamHash};
use longhaul::{App, Event, Io, Stack};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_longhaul");
const ECHO_PORT: u16 = 7;
/// The namespace's own TAP (from `Netns`) holds 198.18.0.0/24; DPDK's ports use other subnets.
const TAP_KERNEL: &str = "198.18.1.1/24";
const TAP_STACK: &str = "198.18.1.2/24";
const VETH_KERNEL: &str = "198.18.2.1/24";
const VETH_STACK: &str = "198.18.2.2/24";
/// Where EAL keeps a process's runtime files (removed by [`Prefix`]).
const RUNTIME_DIR: &str = "/var/run/dpdk";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique EAL `--file-prefix`, whose runtime directory is removed on drop.
struct Prefix(String);

impl Prefix {
    fn new(tag: &str) -> Prefix {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Prefix(format!("lh{tag}{}x{n}", std::process::id()))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("{RUNTIME_DIR}/{}", self.0));
    }
}

/// A short interface name unique to this process and call.
fn iface(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}x{n}", std::process::id() % 1_000_000);
    assert!(name.len() <= 15, "{name} too long");
    name
}

/// EAL arguments for a test: no hugepages, no PCI scan, 512 MB, a unique file prefix.
fn eal(vdev: &str, prefix: &Prefix) -> String {
    format!(
        "--vdev={vdev} --no-huge --no-pci -m 512 --file-prefix {}",
        prefix.0
    )
}

/// Starts `longhaul echo` on `dpdk:EAL` in the namespace and waits for its ready line.
fn spawn_echo(ns: &Netns, eal_args: &str, ip: &str, extra: &[&str]) -> Proc {
    let port = format!("dpdk:{eal_args}");
    let mut cmd = vec![BIN, "echo", "--quiet", "--port", &port, "--ip", ip];
    cmd.extend_from_slice(extra);
    ns.spawn_marked(&cmd, "ready", Duration::from_secs(30))
}

/// Runs `ip -n NS ARGS`, panicking on failure.
fn ip(ns: &Netns, args: &[&str]) {
    let out = ns.ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair in the namespace: `kernel_end` gets `VETH_KERNEL`, the other end is left bare for
/// af_packet. The kernel end must not hand over checksum-less or GSO frames (af_packet takes frames
/// as the kernel queued them), so those offloads are off.
fn veth(ns: &Netns) -> (String, String) {
    let (k, d) = (iface("lk"), iface("ld"));
    ip(ns, &["link", "add", &k, "type", "veth", "peer", "name", &d]);
    ip(ns, &["addr", "add", VETH_KERNEL, "dev", &k]);
    let out = ns.exec(&["ethtool", "-K", &k, "tx", "off", "tso", "off", "gso", "off"]);
    assert!(
        out.status.success(),
        "ethtool -K {k}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = ns.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{d}.disable_ipv6=1"),
    ]);
    ip(ns, &["link", "set", &k, "up"]);
    ip(ns, &["link", "set", &d, "up"]);
    (k, d)
}

fn addr_of(cidr: &str) -> SocketAddr {
    let a = cidr.split('/').next().unwrap();
    SocketAddr::V4(SocketAddrV4::new(a.parse().unwrap(), ECHO_PORT))
}

fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    let s = ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)));
    let s = s.unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `total` bytes of stream `seed` on one connection while reading the echo; returns the
/// hashes of what was sent and what came back (the echo closes after the kernel's FIN).
fn stream_echo(s: TcpStream, seed: u64, total: u64) -> (StreamHash, StreamHash) {
    const CHUNK: usize = 128 * 1024;
    let mut reader = s.try_clone().unwrap();
    let mut writer = s;
    let sender = std::thread::spawn(move || {
        let mut h = StreamHash::default();
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < total {
            let n = (total - off).min(CHUNK as u64) as usize;
            fill_pattern(seed, off, &mut buf[..n]);
            h.update(&buf[..n]);
            writer
                .write_all(&buf[..n])
                .unwrap_or_else(|e| panic!("write at byte {off}: {e}"));
            off += n as u64;
        }
        writer.shutdown(Shutdown::Write).unwrap();
        h
    });
    let mut got = StreamHash::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.update(&buf[..n]),
            Err(e) => panic!("read after {} bytes: {e}", got.len()),
        }
    }
    (sender.join().expect("sender panicked"), got)
}

/// The kernel-peer checks every backend passes: ping, a stream each way with equal hashes,
/// concurrent connections echoing byte-exact, UDP datagrams byte-exact.
fn kernel_peer_checks(ns: &Netns, stack_cidr: &str, stream_bytes: u64, conns: usize) {
    let stack_ip = stack_cidr.split('/').next().unwrap();
    let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", stack_ip]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 packets transmitted, 3 received"),
        "ping: {text}"
    );

    let to = addr_of(stack_cidr);
    let start = Instant::now();
    let (sent, got) = stream_echo(connect(ns, to), 0xd9d4, stream_bytes);
    println!(
        "{} MiB each way in {:.2} s; hash {:016x}",
        stream_bytes >> 20,
        start.elapsed().as_secs_f64(),
        got.finish()
    );
    assert_eq!(sent.len(), stream_bytes);
    assert_eq!(got.len(), stream_bytes, "echoed byte count differs");
    assert_eq!(got.finish(), sent.finish(), "echoed hash differs");

    let streams: Vec<TcpStream> = (0..conns).map(|_| connect(ns, to)).collect();
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| std::thread::spawn(move || stream_echo(s, 1000 + i as u64, 64 * 1024)))
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let (sent, got) = w.join().expect("echo worker panicked");
        assert_eq!(got.len(), sent.len(), "connection {i}: byte count");
        assert_eq!(got.finish(), sent.finish(), "connection {i}: hash");
    }

    let sock = ns.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind UDP"));
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    for (i, n) in [1usize, 64, 512, 1400, 1472].into_iter().enumerate() {
        let mut d = vec![0u8; n];
        fill_pattern(77 + i as u64, 0, &mut d);
        sock.send_to(&d, to).unwrap();
        let (m, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no echo of the {n}-byte datagram: {e}"));
        assert_eq!(from, to);
        assert!(buf[..m] == d[..], "echo of the {n}-byte datagram differs");
    }
}

// ------------------------------------------------------------------ net_tap

#[test]
fn net_tap_kernel_peer_echo_and_clean_ctrl_c() {
    if !root_or_skip("net_tap_kernel_peer_echo_and_clean_ctrl_c") {
        return;
    }
    let ns = Netns::new("dtap");
    let prefix = Prefix::new("t");
    let tap = iface("dt");
    let mut echo = spawn_echo(
        &ns,
        &eal(&format!("net_tap0,iface={tap}"), &prefix),
        TAP_STACK,
        &[],
    );
    // DPDK created the TAP in the namespace; give the kernel's end its address.
    ip(&ns, &["addr", "add", TAP_KERNEL, "dev", &tap]);
    ip(&ns, &["link", "set", &tap, "up"]);
    kernel_peer_checks(&ns, TAP_STACK, 64 << 20, 100);

    // Ctrl-C: the stack stops, the port is closed and the EAL cleaned up; exit status 0.
    // SAFETY: the child is running (checked) and not reaped, so the pid still names it.
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    unsafe { libc::kill(echo.pid() as libc::pid_t, libc::SIGINT) };
    let status = echo.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit on SIGINT ({status:?}): {}",
        echo.stderr()
    );
    let err = echo.stderr();
    // net_tap offers checksum offloads both ways; the start line reports them.
    assert!(
        err.contains("rx checksum ipv4/tcp/udp, tx checksum ipv4/tcp/udp"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    let gone = ns.ip(&["link", "show", &tap]);
    assert!(!gone.status.success(), "the DPDK TAP outlived the process");
}

// ------------------------------------------------------------------ net_af_packet

#[test]
fn af_packet_on_veth_kernel_peer_echo() {
    if !root_or_skip("af_packet_on_veth_kernel_peer_echo") {
        return;
    }
    let ns = Netns::new("dafp");
    let (_kernel, dpdk_end) = veth(&ns);
    let prefix = Prefix::new("a");
    let mut echo = spawn_echo(
        &ns,
        &eal(&format!("net_af_packet0,iface={dpdk_end}"), &prefix),
        VETH_STACK,
        &[],
    );
    kernel_peer_checks(&ns, VETH_STACK, 32 << 20, 50);
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    let err = echo.stderr();
    assert!(err.contains("(net_af_packet0, net_af_packet) up"), "{err}");
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ two cores

/// Echo on port 7, as `longhaul echo` does (end of stream: shut down after the data).
struct Echo {
    buf: Vec<u8>,
}

impl App for Echo {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(ECHO_PORT).expect("listen on 7");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        let (Event::Readable(c) | Event::Writable(c) | Event::PeerClosed(c)) = event else {
            return;
        };
        loop {
            let room = io.write_space(c).min(self.buf.len());
            if room == 0 {
                return; // Writable follows
            }
            match io.read(c, &mut self.buf[..room]) {
                Ok(0) => {
                    let _ = io.shutdown(c);
                    return;
                }
                Ok(n) => {
                    if io.write(c, &self.buf[..n]).is_err() {
                        let _ = io.abort(c);
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

const CHILD_ENV: &str = "LONGHAUL_DPDK_TEST_CHILD";

/// Two cores on `net_af_packet` with `qpairs=2`: the driver's two sockets form a kernel fanout
/// group (a flow hash, not the NIC's Toeplitz RSS), so incoming flows spread over both queues and
/// each flow stays on one. Runs as a child process (below) to read the per-core counters.
#[test]
fn two_cores_on_af_packet_qpairs_spread_flows() {
    if !root_or_skip("two_cores_on_af_packet_qpairs_spread_flows") {
        return;
    }
    let ns = Netns::new("dq2");
    let (_kernel, dpdk_end) = veth(&ns);
    let prefix = Prefix::new("q");
    // A larger ring keeps the fanout's rollover (to the other socket when one is 3/4 full, which
    // would move a flow to the wrong core) out of reach of this test's load.
    let spec = format!(
        "dpdk:{}",
        eal(
            &format!("net_af_packet0,iface={dpdk_end},qpairs=2,framecnt=2048,blocksz=4096"),
            &prefix
        )
    );
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "env"])
        .arg(format!("{CHILD_ENV}={spec}"))
        .arg(exe)
        .args([
            "child_two_core_echo",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "child failed ({}): {stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains("per-core accepted"), "{stdout}{stderr}");
}

/// The child of [`two_cores_on_af_packet_qpairs_spread_flows`]: does nothing unless run by it.
#[test]
#[ignore = "run as a child process by two_cores_on_af_packet_qpairs_spread_flows"]
fn child_two_core_echo() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut cfg = longhaul::Config::new();
    cfg.port(&spec)
        .and_then(|c| c.ip(VETH_STACK))
        .and_then(|c| c.cores(2))
        .expect("valid configuration");
    let stack = Stack::start(cfg, |_| Echo {
        buf: vec![0; 64 * 1024],
    })
    .unwrap_or_else(|e| panic!("start: {e}"));
    let to = addr_of(VETH_STACK);
    const CONNS: usize = 32;
    for round in 0..2 {
        let workers: Vec<_> = (0..CONNS / 2)
            .map(|i| {
                std::thread::spawn(move || {
                    let s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("connect: {e}"));
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    stream_echo(s, (round * 100 + i) as u64, 64 * 1024)
                })
            })
            .collect();
        for (i, w) in workers.into_iter().enumerate() {
            let (sent, got) = w.join().expect("echo worker panicked");
            assert_eq!(got.len(), sent.len(), "round {round} connection {i}: bytes");
            assert_eq!(
                got.finish(),
                sent.finish(),
                "round {round} connection {i}: hash"
            );
        }
    }
    let per_core = stack.stats_now();
    let accepted: Vec<u64> = per_core.iter().map(|s| s.conns_opened).collect();
    println!("per-core accepted {accepted:?}");
    for (i, s) in per_core.iter().enumerate() {
        println!(
            "core {i}: frames in {} out {}, no-socket {}, failed {}",
            s.frames_in, s.frames_out, s.no_socket, s.conns_failed
        );
        assert_eq!(s.conns_failed, 0, "core {i} lost connections: {s:?}");
    }
    assert_eq!(accepted.iter().sum::<u64>(), CONNS as u64);
    assert!(
        accepted.iter().all(|&n| n > 0),
        "flows did not spread over both queues: {accepted:?}"
    );
    assert!(stack.stop(), "a core panicked");
}

// ------------------------------------------------------------------ EAL errors

/// Runs `longhaul echo --port dpdk:ARGS` and returns its exit status and stderr.
fn start_failure(ns: &Netns, eal_args: &str) -> (Option<i32>, String) {
    let port = format!("dpdk:{eal_args}");
    let run = ns.exec_bounded(
        &[BIN, "echo", "--quiet", "--port", &port, "--ip", TAP_STACK],
        Duration::from_secs(30),
    );
    assert!(run.finished, "longhaul did not give up within 30 s");
    (
        run.output.status.code(),
        String::from_utf8_lossy(&run.output.stderr).into_owned(),
    )
}

#[test]
fn eal_failures_are_one_clear_line() {
    if !root_or_skip("eal_failures_are_one_clear_line") {
        return;
    }
    let ns = Netns::new("deal");
    let p: Vec<Prefix> = (0..5).map(|_| Prefix::new("e")).collect();
    let mut cases = vec![
        (
            eal("net_bogus0", &p[0]),
            "DPDK could not create device net_bogus0 (no driver of that name is loaded)",
        ),
        (
            eal("net_af_packet0,iface=nosuchif0", &p[1]),
            "DPDK could not create device net_af_packet0",
        ),
        (
            format!("--no-huge --no-pci -m 512 --file-prefix {}", p[2].0),
            "DPDK found no Ethernet port",
        ),
        (
            format!("--no-such-option --no-huge --file-prefix {}", p[3].0),
            "bad EAL arguments",
        ),
    ];
    // Without --no-huge and with no hugepages reserved (as on CI), EAL needs hugepages.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if meminfo.contains("HugePages_Total:       0") {
        cases.push((
            format!("--no-pci --file-prefix {} --vdev=net_null0", p[4].0),
            "DPDK found no usable hugepages",
        ));
    } else {
        println!("note: hugepages are reserved here, so the no-hugepages case is skipped");
    }
    for (args, want) in cases {
        let (code, err) = start_failure(&ns, &args);
        assert_eq!(code, Some(1), "{args}: {err}");
        assert_eq!(err.lines().count(), 1, "{args}: not one line: {err}");
        assert!(err.contains(want), "{args}: {err}");
    }
}

#[test]
fn bad_port_syntax_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["echo", "--port", "dpdk:--vdev='net_tap0", "--ip", TAP_STACK])
        .output()
        .expect("run longhaul");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unterminated '"), "{err}");
}
