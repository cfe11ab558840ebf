//! The Linux kernel as the peer: each test builds its own network namespace with a multi-queue TAP,
//! runs longhaul on it (the `longhaul echo` binary, or a `Stack` in this process with a test app)
//! and talks to it with ordinary kernel sockets from inside the namespace.
//!
//! Needs root (namespaces, TAP devices); without it every test prints a note and passes.
//! Run with `cargo test --release --test kernel_peer`.

mod common;

use common::{
    check_pattern, connect_nonblocking, fill_pattern, poll, raise_nofile, root_or_skip, wait_for,
    Netns, StreamHash, KERNEL_IP, STACK_IP,
};
use longhaul::{App, ConnId, Error, Event, Io, Stack};
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 7;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn echo_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(STACK_IP, ECHO_PORT))
}

/// Connects (blocking, bounded) and sets read/write timeouts.
fn connect(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    // After the handshake: the kernel's congestion control governs the data, not the SYN.
    common::peer_cc(&s);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Writes `len` bytes of stream `seed` and reads them back, byte-exact.
fn echo_roundtrip(s: &mut TcpStream, seed: u64, len: usize) {
    let mut out = vec![0u8; len];
    fill_pattern(seed, 0, &mut out);
    s.write_all(&out).expect("write to echo");
    let mut back = vec![0u8; len];
    s.read_exact(&mut back).expect("read the echo back");
    assert!(back == out, "echo of stream {seed} differs");
}

// ------------------------------------------------------------------ in-process apps

/// The last events an in-process app saw, for failure messages.
#[derive(Default)]
struct EventTrail(Mutex<std::collections::VecDeque<String>>);

impl EventTrail {
    fn push(&self, e: &Event) {
        let mut q = self.0.lock().unwrap();
        if q.len() == 12 {
            q.pop_front();
        }
        q.push_back(format!("{e:?}"));
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}

/// The same echo as `longhaul echo`, for in-process stacks.
struct TestEcho {
    port: u16,
    conns: HashSet<ConnId>,
    buf: Vec<u8>,
}

impl TestEcho {
    fn new(port: u16) -> Self {
        TestEcho {
            port,
            conns: HashSet::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    fn pump(&mut self, io: &mut Io, c: ConnId) {
        loop {
            let room = io.write_space(c).min(self.buf.len());
            if room == 0 {
                break;
            }
            match io.read(c, &mut self.buf[..room]) {
                Ok(0) => {
                    let _ = io.shutdown(c);
                    break;
                }
                Ok(n) => {
                    if io.write(c, &self.buf[..n]) != Ok(n) {
                        let _ = io.abort(c);
                        self.conns.remove(&c);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

impl App for TestEcho {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(self.port).expect("port free");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::Accepted { conn, .. } => {
                self.conns.insert(conn);
            }
            Event::Readable(c) | Event::Writable(c) | Event::PeerClosed(c) => self.pump(io, c),
            Event::Closed(c) | Event::Error(c, _) => {
                self.conns.remove(&c);
            }
            _ => {}
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
        for c in self.conns.drain() {
            let _ = io.close(c);
        }
    }
}

// ------------------------------------------------------------------ 1. ping

#[test]
fn ping_is_answered() {
    if !root_or_skip("ping_is_answered") {
        return;
    }
    let ns = Netns::new("ping");
    let mut echo = ns.spawn_echo(&["--quiet"]);
    let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ping failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("3 packets transmitted, 3 received"),
        "not every ping was answered: {text}"
    );
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ 2. 1,000 concurrent connections

struct Flow {
    s: TcpStream,
    seed: u64,
    sent: usize,
    rcvd: usize,
}

/// Drives every flow (non-blocking) until it has echoed `len` bytes byte-exact or `deadline` passes.
fn drive_echo(flows: &mut [Flow], len: usize, deadline: Instant) -> Result<(), String> {
    let mut out = vec![0u8; 16 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut scratch = Vec::new();
    let mut active: Vec<usize> = (0..flows.len()).collect();
    while !active.is_empty() {
        if Instant::now() > deadline {
            let sent: usize = active.iter().map(|&i| flows[i].sent).sum();
            let rcvd: usize = active.iter().map(|&i| flows[i].rcvd).sum();
            return Err(format!(
                "{} of {} flows unfinished at the deadline (they sent {sent} and got back {rcvd} bytes)",
                active.len(),
                flows.len()
            ));
        }
        let mut pfds: Vec<libc::pollfd> = active
            .iter()
            .map(|&i| libc::pollfd {
                fd: flows[i].s.as_raw_fd(),
                events: libc::POLLIN
                    | if flows[i].sent < len {
                        libc::POLLOUT
                    } else {
                        0
                    },
                revents: 0,
            })
            .collect();
        poll(&mut pfds, Duration::from_millis(100));
        for (k, p) in pfds.iter().enumerate() {
            let f = &mut flows[active[k]];
            if p.revents & libc::POLLOUT != 0 && f.sent < len {
                let n = (len - f.sent).min(out.len());
                fill_pattern(f.seed, f.sent as u64, &mut out[..n]);
                match f.s.write(&out[..n]) {
                    Ok(m) => f.sent += m,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("stream {}: write: {e}", f.seed)),
                }
            }
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                loop {
                    match f.s.read(&mut buf) {
                        Ok(0) => {
                            return Err(format!(
                                "stream {}: end of stream after {} of {len} bytes",
                                f.seed, f.rcvd
                            ))
                        }
                        Ok(n) => {
                            if f.rcvd + n > len {
                                return Err(format!(
                                    "stream {}: got {} bytes, sent only {len}",
                                    f.seed,
                                    f.rcvd + n
                                ));
                            }
                            if let Some(at) =
                                check_pattern(f.seed, f.rcvd as u64, &buf[..n], &mut scratch)
                            {
                                return Err(format!("stream {}: byte {at} differs", f.seed));
                            }
                            f.rcvd += n;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("stream {}: read: {e}", f.seed)),
                    }
                }
            }
        }
        active.retain(|&i| flows[i].rcvd < len);
    }
    Ok(())
}

#[test]
fn thousand_concurrent_connections_echo_64k_each() {
    if !root_or_skip("thousand_concurrent_connections_echo_64k_each") {
        return;
    }
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    const LEN: usize = 64 * 1024;
    raise_nofile(8192);
    let ns = Netns::new("c1k");
    let mut echo = ns.spawn_echo(&["--quiet"]);
    let start = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let connected = connected.clone();
            let failed = failed.clone();
            ns.spawn(move || -> Result<usize, String> {
                let mut flows = Vec::with_capacity(PER_THREAD);
                for i in 0..PER_THREAD {
                    let s = TcpStream::connect_timeout(&echo_addr(), Duration::from_secs(10))
                        .map_err(|e| {
                            failed.store(true, Ordering::Relaxed);
                            format!("connection {i} of thread {t}: {e}")
                        })?;
                    common::peer_cc(&s);
                    s.set_nonblocking(true).unwrap();
                    flows.push(Flow {
                        s,
                        seed: (t * PER_THREAD + i) as u64,
                        sent: 0,
                        rcvd: 0,
                    });
                }
                connected.fetch_add(PER_THREAD, Ordering::Relaxed);
                // All 1,000 are open before any data flows.
                if !wait_for(Duration::from_secs(30), || {
                    connected.load(Ordering::Relaxed) == THREADS * PER_THREAD
                        || failed.load(Ordering::Relaxed)
                }) || failed.load(Ordering::Relaxed)
                {
                    return Err("the other threads did not connect".into());
                }
                drive_echo(&mut flows, LEN, Instant::now() + Duration::from_secs(60))
                    .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                Ok(flows.iter().map(|f| f.rcvd).sum())
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.join().expect("worker panicked").expect("worker failed");
    }
    println!(
        "1,000 connections echoed {total} bytes in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(total, THREADS * PER_THREAD * LEN);
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ 3. 1 GiB each way

#[test]
fn one_gib_each_way_hash_matches() {
    if !root_or_skip("one_gib_each_way_hash_matches") {
        return;
    }
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    const SEED: u64 = 0x1_6b;
    let ns = Netns::new("gib");
    let mut echo = ns.spawn_echo(&["--quiet"]);
    let s = ns.run(|| connect(echo_addr()));
    let mut reader = s.try_clone().unwrap();
    let mut writer = s;
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut h = StreamHash::default();
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < TOTAL {
            let n = (TOTAL - off).min(CHUNK as u64) as usize;
            fill_pattern(SEED, off, &mut buf[..n]);
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
    let secs = start.elapsed().as_secs_f64();
    let sent = sender.join().expect("sender panicked");
    println!(
        "1 GiB each way in {secs:.2} s ({:.2} Gbit/s each way); hash {:016x}",
        TOTAL as f64 * 8.0 / secs / 1e9,
        got.finish()
    );
    assert_eq!(sent.len(), TOTAL);
    assert_eq!(got.len(), TOTAL, "byte count differs");
    assert_eq!(got.finish(), sent.finish(), "hash differs");
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ 4. UDP

#[test]
fn udp_echo_is_byte_exact() {
    if !root_or_skip("udp_echo_is_byte_exact") {
        return;
    }
    let ns = Netns::new("udp");
    let mut echo = ns.spawn_echo(&["--quiet"]);
    let sock = ns.run(|| UdpSocket::bind((KERNEL_IP, 0)).expect("bind UDP in the namespace"));
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to = SocketAddrV4::new(STACK_IP, ECHO_PORT);
    let mut buf = [0u8; 2048];
    let sizes = [1usize, 2, 7, 64, 100, 512, 999, 1024, 1200, 1399, 1400];
    // One at a time.
    for (i, &n) in sizes.iter().enumerate() {
        let mut d = vec![0u8; n];
        fill_pattern(100 + i as u64, 0, &mut d);
        sock.send_to(&d, to).unwrap();
        let (m, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no echo of the {n}-byte datagram: {e}"));
        assert_eq!(from, SocketAddr::V4(to), "reply from the wrong address");
        assert_eq!(m, n, "echo of a {n}-byte datagram has {m} bytes");
        assert!(buf[..m] == d[..], "echo of the {n}-byte datagram differs");
    }
    // A burst: every datagram comes back, each exactly once.
    let mut want: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let mut d = vec![0u8; sizes[i % sizes.len()]];
            fill_pattern(1000 + i as u64, 0, &mut d);
            d
        })
        .collect();
    for d in &want {
        sock.send_to(d, to).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let (m, _) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("burst: only {} of {} echoed: {e}", got.len(), want.len()));
        got.push(buf[..m].to_vec());
    }
    want.sort();
    got.sort();
    assert!(got == want, "the burst's echoes differ from what was sent");
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ 5. half-close

#[test]
fn kernel_half_close_still_gets_all_echoed_data_then_eof() {
    if !root_or_skip("kernel_half_close_still_gets_all_echoed_data_then_eof") {
        return;
    }
    const LEN: usize = 256 * 1024;
    const SEED: u64 = 55;
    let ns = Netns::new("hc");
    let mut echo = ns.spawn_echo(&["--quiet"]);
    let s = ns.run(|| connect(echo_addr()));
    let mut writer = s.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let mut d = vec![0u8; LEN];
        fill_pattern(SEED, 0, &mut d);
        writer.write_all(&d).expect("write");
        writer.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    });
    let mut reader = s;
    let mut got = Vec::with_capacity(LEN);
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break, // end of stream: the echo's FIN
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "read after {} bytes (expected {LEN}, then EOF): {e}",
                got.len()
            ),
        }
    }
    w.join().expect("writer panicked");
    assert_eq!(got.len(), LEN, "echoed byte count after half-close");
    let mut scratch = Vec::new();
    assert_eq!(
        check_pattern(SEED, 0, &got, &mut scratch),
        None,
        "echoed data differs"
    );
    // EOF stays EOF.
    assert_eq!(reader.read(&mut buf).expect("read after EOF"), 0);
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

/// What the half-closing server saw.
#[derive(Default)]
struct HalfCloseLog {
    bytes: AtomicU64,
    peer_eof: AtomicBool,
    closed: AtomicBool,
    errors: Mutex<Vec<String>>,
    events: EventTrail,
}

/// Writes a greeting, shuts down its sending side at once, then counts what the peer sends.
struct HalfCloseServer {
    port: u16,
    msg: &'static [u8],
    log: Arc<HalfCloseLog>,
}

impl HalfCloseServer {
    fn drain(&mut self, io: &mut Io, c: ConnId) {
        let mut buf = [0u8; 8192];
        loop {
            match io.read(c, &mut buf) {
                Ok(0) => {
                    self.log.peer_eof.store(true, Ordering::SeqCst);
                    break;
                }
                Ok(n) => {
                    self.log.bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(Error::WouldBlock) => break,
                Err(e) => {
                    self.log.errors.lock().unwrap().push(format!("read: {e}"));
                    break;
                }
            }
        }
    }
}

impl App for HalfCloseServer {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(self.port).expect("port free");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        self.log.events.push(&event);
        match event {
            Event::Accepted { conn, .. } => {
                match io.write(conn, self.msg) {
                    Ok(n) if n == self.msg.len() => {}
                    r => self
                        .log
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("write: {r:?}")),
                }
                if let Err(e) = io.shutdown(conn) {
                    self.log
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("shutdown: {e}"));
                }
            }
            Event::Readable(c) | Event::PeerClosed(c) => self.drain(io, c),
            Event::Closed(_) => self.log.closed.store(true, Ordering::SeqCst),
            Event::Error(_, e) => self.log.errors.lock().unwrap().push(format!("error: {e}")),
            _ => {}
        }
    }
}

#[test]
fn longhaul_half_close_peer_reads_eof_and_can_still_send() {
    if !root_or_skip("longhaul_half_close_peer_reads_eof_and_can_still_send") {
        return;
    }
    const PORT: u16 = 9000;
    const MSG: &[u8] = b"hello from longhaul; no more from this side\n";
    const AFTER: usize = 100_000;
    let ns = Netns::new("fin");
    let log = Arc::new(HalfCloseLog::default());
    let l = log.clone();
    let cfg = ns.config(1);
    let stack = ns
        .run(move || {
            Stack::start(cfg, move |_| HalfCloseServer {
                port: PORT,
                msg: MSG,
                log: l.clone(),
            })
        })
        .expect("start the stack on the TAP");
    let mut s = ns.run(|| connect(SocketAddr::V4(SocketAddrV4::new(STACK_IP, PORT))));
    // The greeting, then end of stream.
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read greeting until EOF");
    assert_eq!(got, MSG, "greeting before EOF");
    // The kernel's side is still open: send, and the app receives all of it.
    let mut d = vec![0u8; AFTER];
    fill_pattern(9, 0, &mut d);
    s.write_all(&d).expect("write after the peer's FIN");
    assert!(
        wait_for(Duration::from_secs(10), || log.bytes.load(Ordering::SeqCst)
            == AFTER as u64),
        "the app received {} of {AFTER} bytes sent after its FIN",
        log.bytes.load(Ordering::SeqCst)
    );
    assert!(
        !log.peer_eof.load(Ordering::SeqCst),
        "EOF before the kernel closed"
    );
    drop(s);
    assert!(
        wait_for(Duration::from_secs(10), || log
            .closed
            .load(Ordering::SeqCst)),
        "no Closed event after both sides closed (errors: {:?}, last events: {:?})",
        log.errors.lock().unwrap(),
        log.events.get()
    );
    // PeerClosed promises that `read` returns Ok(0) once the data is read.
    assert!(
        log.peer_eof.load(Ordering::SeqCst) && log.errors.lock().unwrap().is_empty(),
        "the app could not read EOF after the kernel's FIN (errors: {:?}, last events: {:?})",
        log.errors.lock().unwrap(),
        log.events.get()
    );
    assert_eq!(log.bytes.load(Ordering::SeqCst), AFTER as u64);
    let st = exact_total(&stack);
    assert_eq!(st.conns_failed, 0, "{st:?}");
    assert!(stack.stop(), "a core panicked");
}

// ------------------------------------------------------------------ 6. closed port

#[test]
fn connect_to_closed_port_is_refused() {
    if !root_or_skip("connect_to_closed_port_is_refused") {
        return;
    }
    let ns = Netns::new("rst");
    let mut echo = ns.spawn_echo(&["--quiet"]);
    for port in [9u16, 80, 8080, 65535] {
        let to = SocketAddr::V4(SocketAddrV4::new(STACK_IP, port));
        let r = ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)));
        match r {
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::ConnectionRefused,
                "port {port}: expected a reset (ECONNREFUSED), got {e}"
            ),
            Ok(_) => panic!("port {port}: connected to a port nobody listens on"),
        }
    }
    // The open port still works.
    let mut s = ns.run(|| connect(echo_addr()));
    echo_roundtrip(&mut s, 6, 1000);
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ 7. SYN burst

#[test]
fn burst_of_thousand_simultaneous_connects_all_accepted() {
    if !root_or_skip("burst_of_thousand_simultaneous_connects_all_accepted") {
        return;
    }
    const N: usize = 1000;
    raise_nofile(8192);
    let ns = Netns::new("syn");
    let mut echo = ns.spawn_echo(&["--stats-interval", "1"]);
    let to = SocketAddrV4::new(STACK_IP, ECHO_PORT);
    let start = Instant::now();
    // Every SYN leaves before the first connection is looked at.
    let socks: Vec<TcpStream> = ns.run(|| {
        (0..N)
            .map(|i| connect_nonblocking(to).unwrap_or_else(|e| panic!("connect {i}: {e}")))
            .collect()
    });
    let mut done = vec![false; N];
    let mut left = N;
    let deadline = start + Duration::from_secs(30);
    while left > 0 && Instant::now() < deadline {
        let idx: Vec<usize> = (0..N).filter(|&i| !done[i]).collect();
        let mut pfds: Vec<libc::pollfd> = idx
            .iter()
            .map(|&i| libc::pollfd {
                fd: socks[i].as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        poll(&mut pfds, Duration::from_millis(200));
        for (k, p) in pfds.iter().enumerate() {
            if p.revents != 0 {
                let i = idx[k];
                if let Some(e) = socks[i].take_error().unwrap() {
                    panic!("connection {i} failed: {e}");
                }
                done[i] = true;
                left -= 1;
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    assert_eq!(
        left, 0,
        "{left} of {N} connections not established within 30 s"
    );
    println!("{N} simultaneous connects established in {connect_secs:.2} s");
    // Every connection works.
    for (i, s) in socks.iter().enumerate() {
        let mut s = s;
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("hello from connection {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: no echo: {e}"));
        assert_eq!(back, msg.as_bytes(), "connection {i}: wrong echo");
    }
    drop(socks);
    // And the server is still fine: alive, and a new connection works.
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    let mut s = ns.run(|| connect(echo_addr()));
    echo_roundtrip(&mut s, 7, 10_000);
    drop(s);
    std::thread::sleep(Duration::from_millis(1100)); // one more counter line
    if let Some(line) = echo.stdout_lines().last() {
        println!("echo counters: {line}");
    }
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

// ------------------------------------------------------------------ 8. two cores

/// Opens `threads * per_thread` connections (each thread keeps its own open at once), echoes
/// `len` bytes on each, byte-exact. Returns how many succeeded.
fn many_clients(
    ns: &Netns,
    to: SocketAddr,
    threads: usize,
    per_thread: usize,
    len: usize,
) -> usize {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            ns.spawn(move || {
                let mut socks: Vec<TcpStream> = (0..per_thread).map(|_| connect(to)).collect();
                for (i, s) in socks.iter_mut().enumerate() {
                    echo_roundtrip(s, (t * per_thread + i) as u64, len);
                }
                socks.len()
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("client thread panicked"))
        .sum()
}

#[test]
fn two_core_echo_binary_serves_200_connections() {
    if !root_or_skip("two_core_echo_binary_serves_200_connections") {
        return;
    }
    let ns = Netns::new("mq");
    let mut echo = ns.spawn_echo(&["--cores", "2", "--quiet"]);
    let n = many_clients(&ns, echo_addr(), 4, 50, 4096);
    assert_eq!(n, 200);
    assert!(echo.is_running(), "echo died: {}", echo.stderr());
    assert!(echo.stop().success(), "echo did not exit cleanly");
}

#[test]
fn two_core_stack_spreads_connections_over_both_cores() {
    if !root_or_skip("two_core_stack_spreads_connections_over_both_cores") {
        return;
    }
    const PORT: u16 = 7777;
    let ns = Netns::new("mq2");
    let cfg = ns.config(2);
    let stack = ns
        .run(move || Stack::start(cfg, |_| TestEcho::new(PORT)))
        .expect("start a two-core stack on the TAP");
    assert_eq!(stack.cores(), 2);
    let to = SocketAddr::V4(SocketAddrV4::new(STACK_IP, PORT));
    let n = many_clients(&ns, to, 4, 50, 4096);
    assert_eq!(n, 200);
    let per_core = stack.stats_now();
    let opened: Vec<u64> = per_core.iter().map(|s| s.conns_opened).collect();
    println!("connections opened per core: {opened:?}");
    assert_eq!(opened.iter().sum::<u64>(), 200, "{per_core:?}");
    assert!(
        opened.iter().all(|&o| o > 0),
        "connections did not spread over both cores: {opened:?}"
    );
    for (i, s) in per_core.iter().enumerate() {
        assert_eq!(s.conns_failed, 0, "core {i}: {s:?}");
    }
    assert!(stack.stop(), "a core panicked");
}

// ------------------------------------------------------------------ 9. active open

#[derive(Default)]
struct ActiveLog {
    connected: AtomicBool,
    sent: AtomicU64,
    rcvd: AtomicU64,
    eof: AtomicBool,
    closed: AtomicBool,
    errors: Mutex<Vec<String>>,
    events: EventTrail,
}

/// Connects to the kernel, sends `total` bytes of stream `seed`, shuts down, reads the echo back.
struct Active {
    remote: SocketAddrV4,
    total: u64,
    seed: u64,
    conn: Option<ConnId>,
    sent: u64,
    rcvd: u64,
    shut: bool,
    out: Vec<u8>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    log: Arc<ActiveLog>,
}

impl Active {
    fn err(&self, e: String) {
        self.log.errors.lock().unwrap().push(e);
    }

    fn pump_write(&mut self, io: &mut Io, c: ConnId) {
        while self.sent < self.total {
            let n = (self.total - self.sent).min(self.out.len() as u64) as usize;
            fill_pattern(self.seed, self.sent, &mut self.out[..n]);
            match io.write(c, &self.out[..n]) {
                Ok(m) => {
                    self.sent += m as u64;
                    if m < n {
                        break; // Writable follows
                    }
                }
                Err(Error::WouldBlock) => break,
                Err(e) => {
                    self.err(format!("write at {}: {e}", self.sent));
                    return;
                }
            }
        }
        self.log.sent.store(self.sent, Ordering::SeqCst);
        if self.sent == self.total && !self.shut {
            self.shut = true;
            if let Err(e) = io.shutdown(c) {
                self.err(format!("shutdown: {e}"));
            }
        }
    }

    fn pump_read(&mut self, io: &mut Io, c: ConnId) {
        loop {
            match io.read(c, &mut self.buf) {
                Ok(0) => {
                    self.log.eof.store(true, Ordering::SeqCst);
                    break;
                }
                Ok(n) => {
                    if let Some(at) =
                        check_pattern(self.seed, self.rcvd, &self.buf[..n], &mut self.scratch)
                    {
                        self.err(format!("echoed byte {at} differs"));
                    }
                    self.rcvd += n as u64;
                }
                Err(Error::WouldBlock) => break,
                Err(e) => {
                    self.err(format!("read at {}: {e}", self.rcvd));
                    break;
                }
            }
        }
        self.log.rcvd.store(self.rcvd, Ordering::SeqCst);
    }
}

impl App for Active {
    fn on_start(&mut self, io: &mut Io) {
        match io.connect(self.remote) {
            Ok(c) => self.conn = Some(c),
            Err(e) => self.err(format!("connect: {e}")),
        }
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        self.log.events.push(&event);
        match event {
            Event::Connected(c) => {
                if Some(c) != self.conn {
                    self.err(format!("Connected for an unknown handle {c:?}"));
                }
                self.log.connected.store(true, Ordering::SeqCst);
                self.pump_write(io, c);
            }
            Event::Writable(c) => self.pump_write(io, c),
            Event::Readable(c) | Event::PeerClosed(c) => self.pump_read(io, c),
            Event::Closed(_) => self.log.closed.store(true, Ordering::SeqCst),
            Event::Error(_, e) => self.err(format!("connection error: {e}")),
            _ => {}
        }
    }
}

#[test]
fn active_open_to_kernel_listener_echoes_1mib() {
    if !root_or_skip("active_open_to_kernel_listener_echoes_1mib") {
        return;
    }
    const TOTAL: u64 = 1 << 20;
    const SEED: u64 = 0xAC7;
    const PORT: u16 = 5001;
    let ns = Netns::new("act");
    let listener = ns.run(|| TcpListener::bind((KERNEL_IP, PORT)).expect("bind in the namespace"));
    common::peer_cc(&listener); // inherited by the accepted socket
    listener.set_nonblocking(true).unwrap();
    // The kernel side: accept one connection and echo it until EOF.
    let kernel = std::thread::spawn(move || -> Result<(u64, SocketAddr), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut s, peer) = loop {
            match listener.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection from longhaul within 20 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    s.write_all(&buf[..k])
                        .map_err(|e| format!("echo write: {e}"))?;
                    n += k as u64;
                }
                Err(e) => return Err(format!("echo read after {n} bytes: {e}")),
            }
        }
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        // Linger until longhaul acknowledges our FIN (it closes or reads EOF).
        let _ = s.read(&mut buf);
        Ok((n, peer))
    });
    let log = Arc::new(ActiveLog::default());
    let l = log.clone();
    let cfg = ns.config(1);
    let stack = ns
        .run(move || {
            Stack::start(cfg, move |_| Active {
                remote: SocketAddrV4::new(KERNEL_IP, PORT),
                total: TOTAL,
                seed: SEED,
                conn: None,
                sent: 0,
                rcvd: 0,
                shut: false,
                out: vec![0; 32 * 1024],
                buf: vec![0; 64 * 1024],
                scratch: Vec::new(),
                log: l.clone(),
            })
        })
        .expect("start the stack on the TAP");
    let finished = wait_for(Duration::from_secs(30), || {
        (log.eof.load(Ordering::SeqCst) && log.closed.load(Ordering::SeqCst))
            || !log.errors.lock().unwrap().is_empty()
    });
    let errors = log.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "app errors: {errors:?} (received {} of {TOTAL}; last events: {:?})",
        log.rcvd.load(Ordering::SeqCst),
        log.events.get()
    );
    assert!(
        finished,
        "not finished in 30 s: connected {} sent {} received {} eof {} closed {}",
        log.connected.load(Ordering::SeqCst),
        log.sent.load(Ordering::SeqCst),
        log.rcvd.load(Ordering::SeqCst),
        log.eof.load(Ordering::SeqCst),
        log.closed.load(Ordering::SeqCst)
    );
    let (echoed, peer) = kernel
        .join()
        .expect("kernel echo panicked")
        .expect("kernel echo failed");
    assert_eq!(echoed, TOTAL, "the kernel received {echoed} bytes");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(STACK_IP),
        "connection came from {peer}"
    );
    assert_eq!(log.sent.load(Ordering::SeqCst), TOTAL);
    assert_eq!(log.rcvd.load(Ordering::SeqCst), TOTAL);
    let st = exact_total(&stack);
    assert_eq!(st.conns_opened, 1, "{st:?}");
    assert_eq!(st.conns_failed, 0, "{st:?}");
    assert!(stack.stop(), "a core panicked");
}

/// The sum of every core's counters, asked of the cores now (`Stack::total` is what they last
/// published, up to 10 ms old: too old right after a short test).
fn exact_total(stack: &Stack) -> longhaul::CoreStats {
    let mut t = longhaul::CoreStats::default();
    for s in stack.stats_now() {
        t.add(&s);
    }
    t
}
