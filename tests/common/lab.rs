//! A three-namespace lab around `longhaul netem`: P runs the emulator, which creates and opens two
//! TAPs; once it is ready one TAP moves to namespace A (198.18.0.1/24) and the other to B
//! (198.18.0.2/24), so everything between A and B crosses the emulator (a TAP keeps working after
//! its interface moves). [`Lab::bridge_a_with_tap`] adds a longhaul instance on A's side.
//! Everything is removed in `Drop`, also when a test fails.

use super::NS_LOCK;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Held by every lab from before its namespaces exist until they are gone: the figures depend on
/// timing, and creating or deleting namespaces next to a running emulator disturbs it.
static TIMING: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn timing_lock() -> MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn run_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside namespace `ns` (sockets made there keep the namespace).
pub fn in_ns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            enter(ns);
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: f is an open namespace file; setns affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
}

/// Counters of one direction from netem's final line (`key=value` pairs).
pub type DirStats = HashMap<String, u64>;

/// Namespaces P (netem), A and B, the netem process between them; all removed on drop.
pub struct Lab {
    _timing: MutexGuard<'static, ()>,
    /// Namespace of the emulator.
    pub p: String,
    /// Namespace on side A (198.18.0.1/24).
    pub a: String,
    /// Namespace on side B (198.18.0.2/24).
    pub b: String,
    /// The emulator's TAP in A.
    pub tap_a: String,
    /// The emulator's TAP in B.
    pub tap_b: String,
    created: Vec<String>,
    netem: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Lab {
    /// Builds the three namespaces, starts `longhaul netem ARGS` in P and wires A and B to it.
    pub fn start(tag: &str, netem_args: &[&str]) -> Lab {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("lh-nm-{tag}-{pid}-{n}");
        let mut lab = Lab {
            _timing: timing_lock(),
            p: format!("{base}-p"),
            a: format!("{base}-a"),
            b: format!("{base}-b"),
            tap_a: format!("lnm{}a{}", pid % 100_000, n % 100),
            tap_b: format!("lnm{}b{}", pid % 100_000, n % 100),
            created: Vec::new(),
            netem: None,
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(String::new())),
            readers: Vec::new(),
        };
        for ns in [lab.p.clone(), lab.a.clone(), lab.b.clone()] {
            let _g = NS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            if std::path::Path::new(&format!("/var/run/netns/{ns}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
            run_ok(&["ip", "netns", "add", &ns]);
            lab.created.push(ns.clone());
            drop(_g);
            run_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // IPv6 chatter (router solicitations, MLD) would only add frames to the counters.
            run_ok(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
        }
        lab.start_netem(netem_args);
        for (tap, ns, cidr) in [
            (lab.tap_a.clone(), lab.a.clone(), "198.18.0.1/24"),
            (lab.tap_b.clone(), lab.b.clone(), "198.18.0.2/24"),
        ] {
            run_ok(&["ip", "-n", &lab.p, "link", "set", &tap, "netns", &ns]);
            run_ok(&["ip", "-n", &ns, "addr", "add", cidr, "dev", &tap]);
            run_ok(&["ip", "-n", &ns, "link", "set", &tap, "up"]);
        }
        lab
    }

    /// Starts `longhaul APP ARGS` in A on a new TAP bridged with the emulator's (see
    /// [`Lab::bridge_a_with_tap`]), at 198.18.0.3/24; it stops when the [`super::Proc`] drops.
    pub fn spawn_on_a(&mut self, app: &str, args: &[&str]) -> super::Proc {
        let tap = format!("{}e", self.tap_a);
        self.bridge_a_with_tap(&tap);
        let port = format!("tap:{tap}");
        let mut all = vec![app, "--port", &port, "--ip", "198.18.0.3/24"];
        all.extend_from_slice(args);
        super::spawn_in(&self.a, &all)
    }

    /// Puts a bridge in A joining the emulator's TAP with a new multi-queue TAP `tap` for a
    /// longhaul instance in A (its address: 198.18.0.3/24); A's kernel address moves to the bridge.
    pub fn bridge_a_with_tap(&mut self, tap: &str) {
        let a = self.a.clone();
        let br = format!("{}br", self.tap_a);
        run_ok(&["ip", "-n", &a, "addr", "flush", "dev", &self.tap_a]);
        run_ok(&[
            "ip",
            "-n",
            &a,
            "link",
            "add",
            &br,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        run_ok(&["ip", "-n", &a, "link", "set", &self.tap_a, "master", &br]);
        run_ok(&[
            "ip",
            "-n",
            &a,
            "tuntap",
            "add",
            "dev",
            tap,
            "mode",
            "tap",
            "multi_queue",
        ]);
        run_ok(&["ip", "-n", &a, "link", "set", tap, "master", &br]);
        run_ok(&["ip", "-n", &a, "addr", "add", "198.18.0.1/24", "dev", &br]);
        for l in [br.as_str(), tap] {
            run_ok(&["ip", "-n", &a, "link", "set", l, "up"]);
        }
    }

    fn start_netem(&mut self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.p])
            .arg(env!("CARGO_BIN_EXE_longhaul"))
            .arg("netem")
            .args(["--a", &format!("tap:{}", self.tap_a)])
            .args(["--b", &format!("tap:{}", self.tap_b)])
            .args(["--stats-interval", "1"])
            .args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("piped stdout");
        let so = self.stdout.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                so.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        }));
        let mut err = child.stderr.take().expect("piped stderr");
        let se = self.stderr.clone();
        self.readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                se.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }));
        self.netem = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("netem ready") => return,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("netem exited before it was ready: {}", self.stderr());
                }
            }
            assert!(
                Instant::now() < deadline,
                "netem printed no ready line within 10 s: {}",
                self.stderr()
            );
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops netem with SIGTERM and returns the a2b and b2a counters of its final line.
    pub fn stop(&mut self) -> (DirStats, DirStats) {
        let mut child = self.netem.take().expect("netem running");
        // SAFETY: the child is not reaped yet, so its pid still names it.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("netem did not stop within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        assert!(
            status.success(),
            "netem exited with {status}: {}",
            self.stderr()
        );
        let lines = self.stdout.lock().unwrap().clone();
        let last = lines
            .iter()
            .find_map(|l| l.strip_prefix("stopped: "))
            .unwrap_or_else(|| panic!("no final line in {lines:?}"))
            .to_string();
        let mut dirs = last.split(" | ").map(parse_dir);
        (dirs.next().expect("a2b"), dirs.next().expect("b2a"))
    }
}

pub fn parse_dir(s: &str) -> DirStats {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse::<f64>().expect("a number") as u64))
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.netem.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _g = NS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for ns in &self.created {
            for attempt in 0..5 {
                let ok = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if attempt == 4 {
                    eprintln!("warning: ip netns del {ns} failed");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
