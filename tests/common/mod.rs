//! Helpers for tests that use the Linux kernel as the peer over a TAP device.
//!
//! Every test gets its own network namespace ([`Netns`]) holding a multi-queue TAP whose kernel side
//! is 198.18.0.1/24; the stack (the `longhaul` binary or an in-process [`longhaul::Stack`]) attaches
//! to that TAP as 198.18.0.2/24. Kernel sockets are made in threads that joined the namespace with
//! `setns(CLONE_NEWNET)`; a socket keeps its namespace, so it can be used from any thread afterwards.
//! Everything is torn down in `Drop`, so a failing test leaves no namespace behind.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod lab;
pub mod servers;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The kernel's end of the test network.
pub const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The stack's address.
pub const STACK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The stack's address with its prefix, as `--ip` takes it.
pub const STACK_CIDR: &str = "198.18.0.2/24";

/// Serialises `ip netns add`/`del`: concurrent ones race on the shared /var/run/netns mount.
static NS_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the tests can create namespaces and TAPs. Otherwise prints why the caller skips.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("note: {test} skipped: it needs root (network namespaces and TAP devices)");
    false
}

/// Raises RLIMIT_NOFILE to at least `want` (up to the hard limit) for this process.
pub fn raise_nofile(want: u64) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write a live rlimit struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return;
            }
            let target = (want.max(65_536) as libc::rlim_t).min(r.rlim_max);
            if r.rlim_cur < target {
                r.rlim_cur = target;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
        }
    });
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn run_ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into namespace `name`. Only for threads the helpers spawn themselves:
/// a test harness thread must never change namespace.
fn enter(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: f is an open namespace file; setns affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
}

/// A network namespace with a multi-queue TAP (kernel side 198.18.0.1/24, up), deleted on drop
/// together with the processes started in it.
pub struct Netns {
    name: String,
    tap: String,
    children: Arc<Mutex<Vec<u32>>>,
    created: bool,
}

impl Netns {
    /// Creates `lh-<tag>-<pid>-<n>` with a TAP named `lht<pid>x<n>` (at most 15 bytes).
    pub fn new(tag: &str) -> Netns {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("lh-{tag}-{pid}-{n}");
        let tap = format!("lht{}x{}", pid % 10_000_000, n % 1000);
        assert!(tap.len() <= 15, "interface name {tap} too long");
        let mut ns = Netns {
            name,
            tap,
            children: Arc::new(Mutex::new(Vec::new())),
            created: false,
        };
        {
            let _g = NS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            if std::path::Path::new(&format!("/var/run/netns/{}", ns.name)).exists() {
                // A stale namespace from an earlier run with the same pid and counter.
                let _ = run(Command::new("ip").args(["netns", "del", &ns.name]));
            }
            run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
            ns.created = true;
        }
        // From here on a panic drops `ns`, which deletes the namespace.
        ns.ip_ok(&["link", "set", "lo", "up"]);
        let tap = ns.tap.clone();
        ns.ip_ok(&["tuntap", "add", "dev", &tap, "mode", "tap", "multi_queue"]);
        ns.ip_ok(&["addr", "add", "198.18.0.1/24", "dev", &tap]);
        ns.ip_ok(&["link", "set", &tap, "up"]);
        // The kernel peer's congestion control for tools (curl, wrk, iperf3) when LH_PEER_CC
        // names one. A namespace may only default to an algorithm the host allows there
        // (`tcp_allowed_congestion_control`; here "reno bbr", so CUBIC cannot be a namespace
        // default): test sockets set theirs with `peer_cc` instead, which root always may.
        if let Ok(cc) = std::env::var("LH_PEER_CC") {
            let set = format!("net.ipv4.tcp_congestion_control={cc}");
            let _ = ns.exec(&["sysctl", "-q", "-w", &set]);
        }
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TAP interface's name.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// `tap:IFACE`, as `--port` and `Config::port` take it.
    pub fn port_spec(&self) -> String {
        format!("tap:{}", self.tap)
    }

    /// A stack configuration for this namespace's TAP: 198.18.0.2/24 and `cores` cores.
    pub fn config(&self, cores: usize) -> longhaul::Config {
        let mut cfg = longhaul::Config::new();
        cfg.port(&self.port_spec())
            .and_then(|c| c.ip(STACK_CIDR))
            .and_then(|c| c.cores(cores))
            .expect("valid test configuration");
        cfg
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    fn ip_ok(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Runs a command inside the namespace (`ip netns exec NS CMD...`) and returns its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd))
    }

    /// Runs `f` on a thread inside the namespace and returns its result (panics propagate).
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let name = self.name.clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                enter(&name);
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Starts `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> JoinHandle<T> {
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("ns-{}", self.name))
            .spawn(move || {
                enter(&name);
                f()
            })
            .expect("spawn a thread")
    }

    /// Starts `longhaul echo --port tap:TAP --ip 198.18.0.2/24 ARGS...` in the namespace and waits
    /// (up to 10 s) for its ready line.
    pub fn spawn_echo(&self, args: &[&str]) -> Proc {
        self.spawn_longhaul("echo", args)
    }

    /// Starts `longhaul APP --port tap:TAP --ip 198.18.0.2/24 ARGS...` in the namespace and waits
    /// (up to 10 s) for its ready line.
    pub fn spawn_longhaul(&self, app: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(env!("CARGO_BIN_EXE_longhaul"))
            .args([app, "--port", &self.port_spec(), "--ip", STACK_CIDR])
            .args(args);
        Proc::start(cmd, self.children.clone(), Duration::from_secs(10))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(pids) = self.children.lock() {
            for &pid in pids.iter() {
                // SAFETY: pid is a child we started and have not reaped, so the id is still ours.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if !self.created {
            return;
        }
        let _ = self.ip(&["link", "del", &self.tap]);
        let _g = NS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..5 {
            let out = run(Command::new("ip").args(["netns", "del", &self.name]));
            if out.status.success() {
                return;
            }
            if attempt == 4 {
                eprintln!(
                    "warning: ip netns del {} failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A process started in a namespace. Drop sends SIGTERM, then SIGKILL after 5 s.
pub struct Proc {
    child: Option<Child>,
    pid: u32,
    registry: Arc<Mutex<Vec<u32>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn start(cmd: Command, registry: Arc<Mutex<Vec<u32>>>, ready_within: Duration) -> Proc {
        Self::start_marked(cmd, registry, ready_within, "ready")
    }

    /// The exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_status().is_none()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The process id (of `ip netns exec`, which execs the program: the same process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The lines the process wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits up to 5 s for the exit (then SIGKILL). Returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("not yet stopped");
        let status = match child.try_wait() {
            Ok(Some(s)) => s,
            _ => {
                // SAFETY: the child is not reaped yet, so its pid still names it.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Ok(Some(s)) = child.try_wait() {
                        break s;
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        break child.wait().expect("wait for the killed child");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.registry.lock().unwrap().retain(|&p| p != self.pid);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }
}

/// Starts `longhaul ARGS` in the named namespace (one a lab made, not a [`Netns`]) and waits for
/// its ready line; it is stopped when the returned [`Proc`] is dropped.
pub fn spawn_in(ns: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_longhaul"))
        .args(args);
    Proc::start(
        cmd,
        Arc::new(Mutex::new(Vec::new())),
        Duration::from_secs(10),
    )
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

// ------------------------------------------------------------------ sockets

/// The congestion control the tests' kernel sockets use: `LH_PEER_CC`, CUBIC by default.
pub fn peer_cc_name() -> String {
    std::env::var("LH_PEER_CC").unwrap_or_else(|_| "cubic".into())
}

/// Sets a kernel socket's congestion control to [`peer_cc_name`] (TCP_CONGESTION; root may pick
/// any algorithm the kernel has). Panics if the kernel refuses, so a run never silently tests
/// another peer than it says.
pub fn peer_cc(sock: &impl AsRawFd) {
    set_cc(sock, &peer_cc_name());
}

/// Sets a kernel socket's congestion control (TCP_CONGESTION) to `name`; panics if refused.
pub fn set_cc(sock: &impl AsRawFd, name: &str) {
    // SAFETY: setsockopt reads `name.len()` bytes from a live buffer.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_CONGESTION {name}: {}",
        io::Error::last_os_error()
    );
}

/// Starts a non-blocking TCP connect (the SYN goes out before this returns) on the calling
/// thread's namespace. The stream is non-blocking; poll it for POLLOUT and check `take_error`.
pub fn connect_nonblocking(to: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2); the result is checked and owned by the TcpStream below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    peer_cc(&stream);
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a live sockaddr_in and the length matches it.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// `poll(2)` over `fds` for up to `timeout`; returns how many have events.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> usize {
    // SAFETY: fds is a live slice of pollfd of the given length.
    let rc = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis().min(i32::MAX as u128) as libc::c_int,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        return 0;
    }
    rc as usize
}

// ------------------------------------------------------------------ data

/// SplitMix64: a fast, well-mixed 64-bit step.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with stream `seed`'s bytes starting at `offset`: deterministic pseudo-random data
/// in which any byte can be computed from its position.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = splitmix64(seed);
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(key ^ (pos / 8)).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// The first position where `data` differs from stream `seed` at `offset`, if any.
pub fn check_pattern(seed: u64, offset: u64, data: &[u8], scratch: &mut Vec<u8>) -> Option<u64> {
    scratch.resize(data.len(), 0);
    fill_pattern(seed, offset, scratch);
    data.iter()
        .zip(scratch.iter())
        .position(|(a, b)| a != b)
        .map(|p| offset + p as u64)
}

/// FNV-1a over 64-bit little-endian words (the tail padded and mixed with the length): a running
/// hash whose value does not depend on how the stream was cut into reads and writes. Every change
/// of a single word changes the result (each step is a bijection of the state).
#[derive(Clone, Debug)]
pub struct StreamHash {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash {
            h: 0xCBF2_9CE4_8422_2325,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }
}

impl StreamHash {
    const PRIME: u64 = 0x0000_0100_0000_01B3;

    /// Adds bytes to the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let n = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + n].copy_from_slice(&data[..n]);
            self.npending += n;
            data = &data[n..];
            if self.npending < 8 {
                return;
            }
            self.h = (self.h ^ u64::from_le_bytes(self.pending)).wrapping_mul(Self::PRIME);
            self.npending = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.h = (self.h ^ w).wrapping_mul(Self::PRIME);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The hash of everything seen so far.
    pub fn finish(&self) -> u64 {
        let mut h = self.h;
        if self.npending > 0 {
            let mut last = [0u8; 8];
            last[..self.npending].copy_from_slice(&self.pending[..self.npending]);
            h = (h ^ u64::from_le_bytes(last)).wrapping_mul(Self::PRIME);
        }
        (h ^ self.len).wrapping_mul(Self::PRIME)
    }
}

/// Waits until `cond` holds or `within` passes; returns whether it held.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------ other processes (perf tests)

impl Proc {
    /// Starts `cmd` and waits (up to `within`) for a stdout line containing `marker` (the plain
    /// start waits for "ready"; kernel tools such as `iperf3 -s` print something else).
    pub fn start_marked(
        mut cmd: Command,
        registry: Arc<Mutex<Vec<u32>>>,
        within: Duration,
        marker: &str,
    ) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id();
        registry.lock().unwrap().push(pid);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().expect("piped stdout");
        let err_pipe = child.stderr.take().expect("piped stderr");
        let so = stdout.clone();
        let r1 = std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                so.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let se = stderr.clone();
        let r2 = std::thread::spawn(move || {
            let mut pipe = err_pipe;
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => se
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let mut p = Proc {
            child: Some(child),
            pid,
            registry,
            stdout,
            stderr,
            readers: vec![r1, r2],
        };
        let deadline = Instant::now() + within;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains(marker) => return p,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!(
                        "{cmd:?} exited before printing '{marker}' ({:?}); stderr: {}",
                        p.try_status(),
                        p.stderr()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{cmd:?} printed no '{marker}' line within {within:?}; stderr: {}",
                    p.stderr()
                );
            }
        }
    }

    /// Waits up to `within` for the process to exit by itself; returns its status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a bounded run produced.
pub struct Bounded {
    /// Exit status, stdout and stderr (of the part that ran, if it was killed).
    pub output: Output,
    /// False when the time limit killed it.
    pub finished: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Netns {
    /// Starts `cmd` in the namespace and waits (up to `within`) for a stdout line containing
    /// `marker`. Killed when the `Proc` or the namespace is dropped.
    pub fn spawn_marked(&self, cmd: &[&str], marker: &str, within: Duration) -> Proc {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        Proc::start_marked(c, self.children.clone(), within, marker)
    }

    /// Starts `longhaul perf server --port tap:TAP --ip 198.18.0.2/24 ARGS...` in the namespace and
    /// waits (up to 10 s) for its ready line.
    pub fn spawn_perf_server(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(env!("CARGO_BIN_EXE_longhaul"))
            .args([
                "perf",
                "server",
                "--port",
                &self.port_spec(),
                "--ip",
                STACK_CIDR,
            ])
            .args(args);
        Proc::start(cmd, self.children.clone(), Duration::from_secs(10))
    }

    /// Runs `cmd` in the namespace for at most `limit` (then SIGKILL) and collects its output.
    pub fn exec_bounded(&self, cmd: &[&str], limit: Duration) -> Bounded {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id();
        self.children.lock().unwrap().push(pid);
        let mut out_pipe = child.stdout.take().expect("piped stdout");
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let ro = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out_pipe.read_to_end(&mut v);
            v
        });
        let re = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err_pipe.read_to_end(&mut v);
            v
        });
        let mut finished = true;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if start.elapsed() >= limit {
                finished = false;
                let _ = child.kill();
                break child.wait().expect("wait for the killed child");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.children.lock().unwrap().retain(|&p| p != pid);
        Bounded {
            output: Output {
                status,
                stdout: ro.join().unwrap_or_default(),
                stderr: re.join().unwrap_or_default(),
            },
            finished,
            elapsed: start.elapsed(),
        }
    }
}
