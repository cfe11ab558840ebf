//! `longhaul perf server`: the iperf3 server side on the longhaul stack, one test at a time.
//!
//! Every accepted connection first sends a 37-byte cookie. With no test under way, the connection
//! becomes the control connection of a new test ([`ServerCtl`] runs the protocol). While that
//! test creates its streams, connections with its cookie become its data streams; any other
//! connection gets `ACCESS_DENIED` and is closed. Data streams count bytes while the test runs:
//! receiving ones read into a scratch buffer, sending ones write a preallocated block again and
//! again (no allocation per write).
//!
//! The whole test (control and streams) must be on one core: `perf` runs with `--cores 1`.

use super::proto::{
    Results, ServerAction, ServerCtl, StreamResult, TestParams, COOKIE_SIZE, MAX_BLKSIZE,
};
use super::report::{self, CpuMeter};
use longhaul::{App, ConnId, Error, Event, Io};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// A connection that has not sent its whole cookie yet is dropped after this long.
const COOKIE_TIMEOUT: Duration = Duration::from_secs(10);
/// A test whose streams do not all connect within this long is given up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the test's own duration, how long a test may take (iperf3 allows 40 s).
const GRACE: Duration = Duration::from_secs(40);
const INTERVAL: Duration = Duration::from_secs(1);

struct Stream {
    conn: Option<ConnId>,
    id: u32,
    sending: bool,
    bytes: u64,
    mark: u64,
    /// Offset into the send block of the next write.
    off: usize,
    /// Retransmissions, cwnd and RTT while this stream sends (iperf3's Retr and Cwnd).
    tcp: report::SenderInfo,
}

struct Test {
    number: u64,
    ctl: ConnId,
    peer: SocketAddrV4,
    cookie: [u8; COOKIE_SIZE],
    session: ServerCtl,
    out: Vec<u8>,
    params: Option<TestParams>,
    directions: Vec<bool>,
    streams: Vec<Stream>,
    created: Instant,
    start: Option<Instant>,
    last_mark: Instant,
    end: Option<Instant>,
    cpu: Option<CpuMeter>,
    /// What was printed for this test (for `--get-server-output`).
    text: String,
}

impl Test {
    fn say(&mut self, line: String) {
        println!("{line}");
        self.text.push_str(&line);
        self.text.push('\n');
    }

    fn secs(&self, t: Instant) -> f64 {
        self.start
            .map(|s| t.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// The perf server app (one core).
pub struct PerfServer {
    port: u16,
    /// Connections that are sending their cookie.
    pending: HashMap<ConnId, (Vec<u8>, Instant)>,
    test: Option<Test>,
    /// Connections being finished: bytes still to write, then close.
    closing: HashMap<ConnId, Vec<u8>>,
    tests: u64,
    rbuf: Box<[u8]>,
    block: Box<[u8]>,
    totals: std::sync::Arc<super::Totals>,
}

impl PerfServer {
    pub fn new(port: u16, totals: std::sync::Arc<super::Totals>) -> Self {
        // A fixed, non-trivial payload written again and again.
        let block: Vec<u8> = (0..MAX_BLKSIZE)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        PerfServer {
            port,
            pending: HashMap::new(),
            test: None,
            closing: HashMap::new(),
            tests: 0,
            rbuf: vec![0u8; 256 * 1024].into_boxed_slice(),
            block: block.into_boxed_slice(),
            totals,
        }
    }

    fn banner(&self) {
        println!("-----------------------------------------------------------");
        println!(
            "Server listening on {} (test #{})",
            self.port,
            self.tests + 1
        );
        println!("-----------------------------------------------------------");
    }

    fn read_cookie(&mut self, io: &mut Io, c: ConnId) {
        let Some((got, _)) = self.pending.get_mut(&c) else {
            return;
        };
        let mut tmp = [0u8; COOKIE_SIZE];
        while got.len() < COOKIE_SIZE {
            let want = COOKIE_SIZE - got.len();
            match io.read(c, &mut tmp[..want]) {
                Ok(0) | Err(Error::NotConnected) | Err(Error::InvalidHandle) => {
                    self.pending.remove(&c);
                    let _ = io.close(c);
                    return;
                }
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(_) => return, // Readable follows
            }
        }
        let (got, _) = self.pending.remove(&c).expect("present");
        let mut cookie = [0u8; COOKIE_SIZE];
        cookie.copy_from_slice(&got);
        self.classify(io, c, cookie);
    }

    /// A connection's cookie is complete: a new test, a stream of the current test, or refused.
    fn classify(&mut self, io: &mut Io, c: ConnId, cookie: [u8; COOKIE_SIZE]) {
        let info = io.info(c);
        let peer = info
            .map(|i| i.remote)
            .unwrap_or(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
        let Some(t) = self.test.as_mut() else {
            self.tests += 1;
            let _ = io.set_nodelay(c, true);
            let now = Instant::now();
            let mut t = Test {
                number: self.tests,
                ctl: c,
                peer,
                cookie,
                session: ServerCtl::new(),
                out: Vec::new(),
                params: None,
                directions: Vec::new(),
                streams: Vec::new(),
                created: now,
                start: None,
                last_mark: now,
                end: None,
                cpu: None,
                text: String::new(),
            };
            t.say(format!(
                "Accepted connection from {}, port {}",
                peer.ip(),
                peer.port()
            ));
            self.test = Some(t);
            self.flush_ctl(io);
            // Events are edge-triggered: read on until WouldBlock so Readable comes again.
            self.read_ctl(io);
            return;
        };
        if cookie == t.cookie
            && t.session.creating_streams()
            && t.streams.len() < t.directions.len()
        {
            let idx = t.streams.len();
            // iperf3 numbers streams 1, 3, 4, 5, ...
            let id = if idx == 0 { 1 } else { idx as u32 + 2 };
            if t.params.as_ref().is_some_and(|p| p.nodelay) {
                let _ = io.set_nodelay(c, true);
            }
            if let Some(i) = info {
                t.say(format!(
                    "[{id:3}] local {} port {} connected to {} port {}",
                    i.local.ip(),
                    i.local.port(),
                    i.remote.ip(),
                    i.remote.port()
                ));
            }
            t.streams.push(Stream {
                conn: Some(c),
                id,
                sending: t.directions[idx],
                bytes: 0,
                mark: 0,
                off: 0,
                tcp: report::SenderInfo::default(),
            });
            // Read on until WouldBlock so Readable comes again (edge-triggered).
            while let Ok(n) = io.read(c, &mut self.rbuf) {
                if n == 0 {
                    break;
                }
            }
            if t.streams.len() == t.directions.len() {
                let now = Instant::now();
                t.session.streams_ready();
                t.start = Some(now);
                t.last_mark = now;
                t.cpu = Some(CpuMeter::start());
                t.say(if t.directions.iter().any(|&d| d) {
                    report::HEADER_RETR_CWND.to_string()
                } else {
                    report::HEADER.to_string()
                });
                self.flush_ctl(io);
                self.pump_all(io);
            }
            return;
        }
        let busy = cookie != t.cookie;
        println!(
            "longhaul perf: refused a connection from {peer}: {}",
            if busy {
                "a test is already running (sent ACCESS_DENIED)"
            } else {
                "not expecting another stream for this test"
            }
        );
        self.finish_conn(io, c, vec![super::proto::state::ACCESS_DENIED as u8]);
    }

    /// Writes `bytes` and closes `c` once they are out.
    fn finish_conn(&mut self, io: &mut Io, c: ConnId, bytes: Vec<u8>) {
        self.closing.insert(c, bytes);
        self.flush_closing(io, c);
    }

    fn flush_closing(&mut self, io: &mut Io, c: ConnId) {
        let Some(buf) = self.closing.get_mut(&c) else {
            return;
        };
        while !buf.is_empty() {
            match io.write(c, buf) {
                Ok(n) => {
                    buf.drain(..n);
                }
                Err(Error::WouldBlock) => return,
                Err(_) => break,
            }
        }
        self.closing.remove(&c);
        // Unread bytes would turn the close into a reset before our bytes arrive: drain first.
        while let Ok(n) = io.read(c, &mut self.rbuf) {
            if n == 0 {
                break;
            }
        }
        let _ = io.close(c);
    }

    fn flush_ctl(&mut self, io: &mut Io) {
        let Some(t) = self.test.as_mut() else {
            return;
        };
        let more = t.session.poll_transmit();
        t.out.extend_from_slice(&more);
        while !t.out.is_empty() {
            match io.write(t.ctl, &t.out) {
                Ok(n) => {
                    t.out.drain(..n);
                }
                Err(_) => return, // Writable follows, or the connection's end does
            }
        }
    }

    fn read_ctl(&mut self, io: &mut Io) {
        let Some(t) = self.test.as_mut() else {
            return;
        };
        let mut eof = false;
        loop {
            match io.read(t.ctl, &mut self.rbuf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => t.session.handle_input(&self.rbuf[..n]),
                Err(Error::WouldBlock) => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        self.run_actions(io);
        if eof && self.test.is_some() {
            self.abandon(io, "the client has unexpectedly closed the connection");
        }
    }

    fn run_actions(&mut self, io: &mut Io) {
        loop {
            let Some(t) = self.test.as_mut() else {
                return;
            };
            let Some(action) = t.session.poll_action() else {
                break;
            };
            match action {
                ServerAction::CreateStreams(p) => {
                    t.directions = p.stream_directions();
                    let what = if p.bidir {
                        "bidirectional"
                    } else if p.reverse {
                        "reverse (server sends)"
                    } else {
                        "client sends"
                    };
                    println!(
                        "longhaul perf: test #{}: TCP, {} stream(s), {} s, {}-byte blocks, {what}{}",
                        t.number,
                        p.parallel,
                        p.time_secs,
                        p.blksize,
                        p.client_version
                            .as_deref()
                            .map(|v| format!(", client {v}"))
                            .unwrap_or_default()
                    );
                    t.params = Some(p);
                }
                ServerAction::Refused(r) => {
                    eprintln!(
                        "longhaul perf: refused the test from {}: {} (sent SERVER_ERROR)",
                        t.peer, r.reason
                    );
                    self.end_test(io);
                    return;
                }
                ServerAction::Failed(why) => {
                    eprintln!("longhaul perf: test from {} failed: {why}", t.peer);
                    self.end_test(io);
                    return;
                }
                ServerAction::ClientTerminated => {
                    eprintln!("longhaul perf: the client has terminated");
                    self.stop_streams(io);
                    self.summary(None);
                    self.end_test(io);
                    return;
                }
                ServerAction::TestEnd => {
                    self.stop_streams(io);
                }
                ServerAction::ClientResults(r) => {
                    let ours = self.results();
                    let t = self.test.as_mut().expect("checked");
                    t.session.send_results(&ours);
                    self.summary(Some(&r));
                }
                ServerAction::Done => {
                    self.end_test(io);
                    return;
                }
            }
        }
        self.flush_ctl(io);
    }

    /// The test is over for us: final interval, then the streams are closed.
    fn stop_streams(&mut self, io: &mut Io) {
        let now = Instant::now();
        self.interval(io, now, true);
        let Some(t) = self.test.as_mut() else {
            return;
        };
        if t.end.is_none() {
            t.end = Some(now);
        }
        for s in &mut t.streams {
            // The last count of retransmissions for the summary and the results.
            if let (true, Some(info)) = (s.sending, s.conn.and_then(|c| io.info(c))) {
                s.tcp.sample(&info);
            }
            if let Some(c) = s.conn.take() {
                if s.sending {
                    let _ = io.close(c); // queued data, then FIN
                } else {
                    let _ = io.abort(c); // the client stopped sending; nothing more to read
                }
            }
        }
    }

    fn results(&mut self) -> Results {
        let Some(t) = self.test.as_ref() else {
            return Results::default();
        };
        let (total, user, system) = t.cpu.as_ref().map(|c| c.percent()).unwrap_or_default();
        let end = t.secs(t.end.unwrap_or_else(Instant::now));
        let sends = t.streams.iter().any(|s| s.sending);
        Results {
            cpu_util_total: total,
            cpu_util_user: user,
            cpu_util_system: system,
            sender_has_retransmits: if sends { 1 } else { -1 },
            congestion_used: Some("cubic".into()),
            server_output_text: t
                .params
                .as_ref()
                .is_some_and(|p| p.get_server_output)
                .then(|| t.text.clone()),
            streams: t
                .streams
                .iter()
                .map(|s| StreamResult {
                    id: s.id as i64,
                    bytes: s.bytes,
                    retransmits: if s.sending {
                        s.tcp.retransmits as i64
                    } else {
                        -1
                    },
                    jitter: 0.0,
                    errors: 0,
                    packets: 0,
                    start_time: 0.0,
                    end_time: end,
                })
                .collect(),
        }
    }

    /// The summary lines: ours, and the client's where it reported them.
    fn summary(&mut self, client: Option<&Results>) {
        let Some(t) = self.test.as_mut() else {
            return;
        };
        let end = t.secs(t.end.unwrap_or_else(Instant::now));
        // The Retr column when every sender's count is known (ours, or the client's results).
        let client_retr = client.is_some_and(|r| r.sender_has_retransmits == 1);
        let with_retr = t.streams.iter().all(|s| s.sending || client_retr);
        let mut lines = vec![
            report::SEPARATOR.to_string(),
            if with_retr {
                report::HEADER_RETR.to_string()
            } else {
                report::HEADER.to_string()
            },
        ];
        let line = |id, secs, bytes, role: &str, retr: i64| {
            if role == "sender" && with_retr && retr >= 0 {
                report::sender_line(id, 0.0, secs, bytes, retr as u64, None, role)
            } else {
                report::line(id, 0.0, secs, bytes, role)
            }
        };
        let (mut sent, mut rcvd, mut retr_sum) = (0u64, 0u64, 0i64);
        for s in &t.streams {
            let peer = client
                .and_then(|r| r.streams.iter().find(|x| x.id == s.id as i64))
                .map(|x| (x.bytes, (x.end_time - x.start_time).max(0.0), x.retransmits));
            let (our_role, peer_role) = if s.sending {
                ("sender", "receiver")
            } else {
                ("receiver", "sender")
            };
            let ours = line(Some(s.id), end, s.bytes, our_role, s.tcp.retransmits as i64);
            if s.sending {
                retr_sum += s.tcp.retransmits as i64;
            } else if let Some(p) = peer {
                retr_sum += p.2.max(0);
            }
            let theirs = peer.map(|(b, secs, r)| (line(Some(s.id), secs, b, peer_role, r), b));
            let (first, second) = if s.sending {
                (Some(ours), theirs.as_ref().map(|x| x.0.clone()))
            } else {
                (theirs.as_ref().map(|x| x.0.clone()), Some(ours))
            };
            lines.extend(first);
            lines.extend(second);
            if s.sending {
                sent += s.bytes;
                rcvd += theirs.map(|x| x.1).unwrap_or(0);
            } else {
                rcvd += s.bytes;
                sent += theirs.map(|x| x.1).unwrap_or(0);
            }
        }
        if t.streams.len() > 1 {
            lines.push(line(None, end, sent, "sender", retr_sum));
            lines.push(line(None, end, rcvd, "receiver", -1));
        }
        for l in lines {
            t.say(l);
        }
        let n = t.streams.iter().map(|s| s.bytes).sum::<u64>();
        self.totals
            .bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.totals
            .tests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prints an interval when one is due (or the last, partial one when `last`).
    fn interval(&mut self, io: &mut Io, now: Instant, last: bool) {
        let Some(t) = self.test.as_mut() else {
            return;
        };
        if t.start.is_none() || t.end.is_some() || !t.session.running() && !last {
            return;
        }
        let since = now.saturating_duration_since(t.last_mark);
        if since < INTERVAL && !(last && since >= INTERVAL / 10) {
            return;
        }
        let (a, b) = (t.secs(t.last_mark), t.secs(now));
        let mut lines = Vec::new();
        let (mut sum, mut sum_retr) = (0, 0);
        let all_send = t.streams.iter().all(|s| s.sending);
        for s in &mut t.streams {
            let d = s.bytes - s.mark;
            s.mark = s.bytes;
            sum += d;
            if s.sending {
                if let Some(info) = s.conn.and_then(|c| io.info(c)) {
                    s.tcp.sample(&info);
                }
                let retr = s.tcp.take_interval();
                sum_retr += retr;
                lines.push(report::sender_line(
                    Some(s.id),
                    a,
                    b,
                    d,
                    retr,
                    Some(s.tcp.cwnd),
                    "",
                ));
            } else {
                lines.push(report::line(Some(s.id), a, b, d, ""));
            }
        }
        if t.streams.len() > 1 {
            lines.push(if all_send {
                report::sender_line(None, a, b, sum, sum_retr, None, "")
            } else {
                report::line(None, a, b, sum, "")
            });
        }
        t.last_mark = now;
        for l in lines {
            t.say(l);
        }
    }

    /// Ends the test: the control connection is flushed and closed, streams reset.
    fn end_test(&mut self, io: &mut Io) {
        self.flush_ctl(io);
        let Some(mut t) = self.test.take() else {
            return;
        };
        for s in &mut t.streams {
            if let Some(c) = s.conn.take() {
                let _ = io.abort(c);
            }
        }
        let rest = std::mem::take(&mut t.out);
        self.finish_conn(io, t.ctl, rest);
        self.banner();
    }

    /// The control connection is gone or the test cannot go on.
    fn abandon(&mut self, io: &mut Io, why: &str) {
        if let Some(t) = self.test.as_mut() {
            eprintln!("longhaul perf: test from {}: {why}", t.peer);
            t.session.terminate();
        }
        self.stop_streams(io);
        self.end_test(io);
    }

    fn pump_all(&mut self, io: &mut Io) {
        let n = self.test.as_ref().map_or(0, |t| t.streams.len());
        for i in 0..n {
            self.pump(io, i);
        }
    }

    /// Moves bytes on stream `i` while the test runs.
    fn pump(&mut self, io: &mut Io, i: usize) {
        let Some(t) = self.test.as_mut() else {
            return;
        };
        let running = t.session.running() && t.end.is_none();
        let blk = t.params.as_ref().map_or(1, |p| p.blksize);
        let s = &mut t.streams[i];
        let Some(c) = s.conn else {
            return;
        };
        if s.sending {
            if !running {
                return;
            }
            while let Ok(n) = io.write(c, &self.block[s.off..blk]) {
                s.bytes += n as u64;
                s.off = (s.off + n) % blk;
            }
        } else {
            loop {
                match io.read(c, &mut self.rbuf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if running {
                            s.bytes += n as u64;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }

    fn stream_index(&self, c: ConnId) -> Option<usize> {
        self.test
            .as_ref()?
            .streams
            .iter()
            .position(|s| s.conn == Some(c))
    }

    fn is_ctl(&self, c: ConnId) -> bool {
        self.test.as_ref().is_some_and(|t| t.ctl == c)
    }
}

impl App for PerfServer {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(self.port)
            .expect("a fresh core has every port free");
        self.banner();
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::Accepted { conn, .. } => {
                self.pending.insert(conn, (Vec::new(), Instant::now()));
                self.read_cookie(io, conn);
            }
            Event::Readable(c) | Event::PeerClosed(c) => {
                if self.pending.contains_key(&c) {
                    self.read_cookie(io, c);
                } else if self.is_ctl(c) {
                    self.read_ctl(io);
                } else if let Some(i) = self.stream_index(c) {
                    self.pump(io, i);
                } else {
                    // A connection being finished: discard what it still sends.
                    while let Ok(n) = io.read(c, &mut self.rbuf) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
            Event::Writable(c) => {
                if self.is_ctl(c) {
                    self.flush_ctl(io);
                } else if let Some(i) = self.stream_index(c) {
                    self.pump(io, i);
                } else if self.closing.contains_key(&c) {
                    self.flush_closing(io, c);
                }
            }
            Event::Closed(c) | Event::Error(c, _) => {
                self.pending.remove(&c);
                self.closing.remove(&c);
                if self.is_ctl(c) {
                    if let Some(t) = self.test.as_mut() {
                        // The handle is gone: nothing more can be written on it.
                        t.out.clear();
                    }
                    if self.test.as_ref().is_some_and(|t| !t.session.is_over()) {
                        self.abandon(io, "the control connection ended");
                    } else {
                        self.test = None;
                    }
                } else if let Some(i) = self.stream_index(c) {
                    let t = self.test.as_mut().expect("stream of a test");
                    t.streams[i].conn = None;
                    if let Event::Error(_, e) = event {
                        if t.session.running() {
                            let id = t.streams[i].id;
                            eprintln!("longhaul perf: stream {id}: {e}");
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_tick(&mut self, io: &mut Io) {
        let now = Instant::now();
        let stale: Vec<ConnId> = self
            .pending
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) > COOKIE_TIMEOUT)
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            self.pending.remove(&c);
            let _ = io.abort(c);
        }
        self.interval(io, now, false);
        let Some(t) = self.test.as_ref() else {
            return;
        };
        if t.session.creating_streams() && now.duration_since(t.created) > CREATE_TIMEOUT {
            self.abandon(io, "the data streams did not all connect within 10 s");
            return;
        }
        let limit = Duration::from_secs(t.params.as_ref().map_or(0, |p| p.time_secs)) + GRACE;
        if t.start.is_some_and(|s| now.duration_since(s) > limit)
            && t.params.as_ref().is_some_and(|p| p.time_secs > 0)
        {
            self.abandon(io, "the test ran far past its duration");
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
        if self.test.is_some() {
            self.abandon(io, "the server is stopping");
        }
        for c in self.pending.drain().map(|(c, _)| c).collect::<Vec<_>>() {
            let _ = io.abort(c);
        }
    }
}
