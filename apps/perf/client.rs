//! `longhaul perf client`: runs one iperf3 test against a server (a stock `iperf3 -s` or
//! `longhaul perf server`) from the longhaul stack and hands the outcome to the main thread.
//!
//! Data streams are connected one after another, each sending the cookie first, so the server
//! numbers them in our order (1, 3, 4, ...). The sending side writes a preallocated block again
//! and again; the receiving side reads into a scratch buffer and counts.

use super::proto::{
    cookie_text, params_doc, ClientAction, ClientCtl, Results, StreamResult, COOKIE_SIZE,
};
use super::report::{self, CpuMeter};
use longhaul::{App, ConnId, Error, Event, Io};
use serde_json::{json, Value};
use std::net::SocketAddrV4;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INTERVAL: Duration = Duration::from_secs(1);
/// How long connecting and setting up may take before the client gives up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A stream's totals: (id, sent bytes, sender secs, received bytes, receiver secs, the sender's
/// retransmissions when known).
type Total = (u32, u64, f64, u64, f64, Option<u64>);

/// What the client was asked to do.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    pub server: SocketAddrV4,
    pub time_secs: u64,
    pub parallel: usize,
    pub reverse: bool,
    pub blksize: usize,
    pub json: bool,
}

/// How the test ended, for the main thread.
#[derive(Debug)]
pub struct Outcome {
    /// `None` on success, else what went wrong.
    pub error: Option<String>,
    /// With `--json`: the whole document (with an `error` key on failure).
    pub json: Option<Value>,
    /// Bytes the receiving side counted, summed over streams.
    pub received: u64,
}

struct CStream {
    conn: Option<ConnId>,
    id: u32,
    bytes: u64,
    mark: u64,
    off: usize,
    cookie_off: usize,
    local: Option<SocketAddrV4>,
    /// Retransmissions, cwnd and RTT while this side sends (iperf3's Retr and Cwnd).
    tcp: report::SenderInfo,
}

/// The perf client app (one core).
pub struct PerfClient {
    o: ClientOpts,
    cookie: [u8; COOKIE_SIZE],
    ctl: Option<ConnId>,
    session: ClientCtl,
    out: Vec<u8>,
    streams: Vec<CStream>,
    began: Instant,
    start: Option<Instant>,
    running: bool,
    last_mark: Instant,
    end: Option<Instant>,
    cpu: Option<CpuMeter>,
    server_results: Option<Results>,
    intervals: Vec<Value>,
    connected: Vec<Value>,
    done: Option<Sender<Outcome>>,
    rbuf: Box<[u8]>,
    block: Box<[u8]>,
}

impl PerfClient {
    pub fn new(o: ClientOpts, cookie: [u8; COOKIE_SIZE], done: Sender<Outcome>) -> Self {
        let block: Vec<u8> = (0..o.blksize)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        let params = params_doc(o.time_secs, o.parallel, o.reverse, o.blksize);
        let now = Instant::now();
        PerfClient {
            session: ClientCtl::new(&cookie, params),
            o,
            cookie,
            ctl: None,
            out: Vec::new(),
            streams: Vec::new(),
            began: now,
            start: None,
            running: false,
            last_mark: now,
            end: None,
            cpu: None,
            server_results: None,
            intervals: Vec::new(),
            connected: Vec::new(),
            done: Some(done),
            rbuf: vec![0u8; 256 * 1024].into_boxed_slice(),
            block: block.into_boxed_slice(),
        }
    }

    fn say(&self, line: &str) {
        if !self.o.json {
            println!("{line}");
        }
    }

    fn secs(&self, t: Instant) -> f64 {
        self.start
            .map(|s| t.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0)
    }

    fn finish(&mut self, io: &mut Io, error: Option<String>) {
        let Some(tx) = self.done.take() else {
            return;
        };
        if error.is_some() {
            self.session.terminate();
            self.flush_ctl(io);
        }
        for s in &mut self.streams {
            if let Some(c) = s.conn.take() {
                let _ = io.close(c);
            }
        }
        if let Some(c) = self.ctl.take() {
            let _ = io.close(c);
        }
        let received = if self.o.reverse {
            self.streams.iter().map(|s| s.bytes).sum()
        } else {
            self.server_results
                .as_ref()
                .map_or(0, |r| r.streams.iter().map(|s| s.bytes).sum())
        };
        let json = self.o.json.then(|| self.json_doc(error.as_deref()));
        let _ = tx.send(Outcome {
            error,
            json,
            received,
        });
    }

    fn flush_ctl(&mut self, io: &mut Io) {
        let more = self.session.poll_transmit();
        self.out.extend_from_slice(&more);
        let Some(c) = self.ctl else {
            return;
        };
        while !self.out.is_empty() {
            match io.write(c, &self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(_) => return,
            }
        }
    }

    fn read_ctl(&mut self, io: &mut Io) {
        let Some(c) = self.ctl else {
            return;
        };
        let mut eof = false;
        loop {
            match io.read(c, &mut self.rbuf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.session.handle_input(&self.rbuf[..n]),
                Err(Error::WouldBlock) => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        self.run_actions(io);
        if eof && self.done.is_some() {
            self.finish(io, Some("control socket has closed unexpectedly".into()));
        }
    }

    fn run_actions(&mut self, io: &mut Io) {
        while let Some(a) = self.session.poll_action() {
            match a {
                ClientAction::CreateStreams => self.connect_next(io),
                ClientAction::TestStart => {
                    let now = Instant::now();
                    self.start = Some(now);
                    self.last_mark = now;
                    self.cpu = Some(CpuMeter::start());
                    self.say(if self.o.reverse {
                        report::HEADER
                    } else {
                        report::HEADER_RETR_CWND
                    });
                }
                ClientAction::TestRunning => {
                    self.running = true;
                    for i in 0..self.streams.len() {
                        self.pump(io, i);
                    }
                }
                ClientAction::ExchangeResults => {
                    let r = self.results();
                    self.session.send_results(&r);
                }
                ClientAction::ServerResults(r) => self.server_results = Some(r),
                ClientAction::Display => {
                    self.flush_ctl(io);
                    self.summary();
                    self.finish(io, None);
                    return;
                }
                ClientAction::Failed(why) => {
                    self.flush_ctl(io);
                    self.finish(io, Some(why));
                    return;
                }
            }
        }
        self.flush_ctl(io);
    }

    /// Connects the next data stream (one at a time, so the server numbers them in order).
    fn connect_next(&mut self, io: &mut Io) {
        if self.streams.len() >= self.o.parallel {
            return;
        }
        match io.connect(self.o.server) {
            Ok(c) => {
                let idx = self.streams.len();
                self.streams.push(CStream {
                    conn: Some(c),
                    id: if idx == 0 { 1 } else { idx as u32 + 2 },
                    bytes: 0,
                    mark: 0,
                    off: 0,
                    cookie_off: 0,
                    local: None,
                    tcp: report::SenderInfo::default(),
                });
            }
            Err(e) => self.finish(io, Some(format!("unable to connect stream: {e}"))),
        }
    }

    fn stream_connected(&mut self, io: &mut Io, i: usize) {
        let Some(c) = self.streams[i].conn else {
            return;
        };
        if let Some(info) = io.info(c) {
            self.streams[i].local = Some(info.local);
            let id = self.streams[i].id;
            self.say(&format!(
                "[{id:3}] local {} port {} connected to {} port {}",
                info.local.ip(),
                info.local.port(),
                info.remote.ip(),
                info.remote.port()
            ));
            self.connected.push(json!({
                "socket": id,
                "local_host": info.local.ip().to_string(),
                "local_port": info.local.port(),
                "remote_host": info.remote.ip().to_string(),
                "remote_port": info.remote.port(),
            }));
        }
        self.send_cookie(io, i);
    }

    fn send_cookie(&mut self, io: &mut Io, i: usize) {
        let s = &mut self.streams[i];
        let Some(c) = s.conn else {
            return;
        };
        while s.cookie_off < COOKIE_SIZE {
            match io.write(c, &self.cookie[s.cookie_off..]) {
                Ok(n) => s.cookie_off += n,
                Err(_) => return,
            }
        }
        if i + 1 == self.streams.len() {
            self.connect_next(io);
        }
    }

    fn pump(&mut self, io: &mut Io, i: usize) {
        let s = &mut self.streams[i];
        let Some(c) = s.conn else {
            return;
        };
        if s.cookie_off < COOKIE_SIZE {
            return self.send_cookie(io, i);
        }
        if !self.o.reverse {
            if !self.running {
                return;
            }
            let blk = self.block.len();
            while let Ok(n) = io.write(c, &self.block[s.off..]) {
                s.bytes += n as u64;
                s.off = (s.off + n) % blk;
            }
        } else {
            loop {
                match io.read(c, &mut self.rbuf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if self.running {
                            s.bytes += n as u64;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Ends the test when its time is up, and prints intervals as they fall due.
    fn check_time(&mut self, io: &mut Io, now: Instant) {
        if self.start.is_none() && now.duration_since(self.began) > SETUP_TIMEOUT {
            self.finish(
                io,
                Some("the test did not start within 15 s (is the server reachable?)".into()),
            );
            return;
        }
        let Some(start) = self.start else {
            return;
        };
        if !self.running {
            let limit = Duration::from_secs(self.o.time_secs) + Duration::from_secs(30);
            if now.duration_since(start) > limit {
                self.finish(
                    io,
                    Some("the server did not finish the test in time".into()),
                );
            }
            return;
        }
        let over = now.duration_since(start) >= Duration::from_secs(self.o.time_secs);
        if now.duration_since(self.last_mark) >= INTERVAL || over {
            self.interval(io, now);
        }
        if over {
            self.running = false;
            self.end = Some(now);
            self.session.test_end();
            self.flush_ctl(io);
        }
    }

    fn interval(&mut self, io: &mut Io, now: Instant) {
        let (a, b) = (self.secs(self.last_mark), self.secs(now));
        if b - a < 0.05 {
            return;
        }
        let sender = !self.o.reverse;
        let (mut sum, mut sum_retr) = (0, 0);
        let mut jstreams = Vec::new();
        let mut lines = Vec::new();
        for s in &mut self.streams {
            let d = s.bytes - s.mark;
            s.mark = s.bytes;
            sum += d;
            let mut entry = report::json_entry(Some(s.id), a, b, d, sender);
            if sender {
                if let Some(info) = s.conn.and_then(|c| io.info(c)) {
                    s.tcp.sample(&info);
                }
                let retr = s.tcp.take_interval();
                sum_retr += retr;
                s.tcp.add_interval_json(&mut entry, retr);
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
            jstreams.push(entry);
        }
        if self.streams.len() > 1 {
            lines.push(if sender {
                report::sender_line(None, a, b, sum, sum_retr, None, "")
            } else {
                report::line(None, a, b, sum, "")
            });
        }
        self.last_mark = now;
        for l in lines {
            self.say(&l);
        }
        let mut jsum = report::json_entry(None, a, b, sum, sender);
        if sender {
            jsum["retransmits"] = json!(sum_retr);
        }
        self.intervals.push(json!({
            "streams": jstreams,
            "sum": jsum,
        }));
    }

    fn results(&self) -> Results {
        let (total, user, system) = self.cpu.as_ref().map(|c| c.percent()).unwrap_or_default();
        let end = self.secs(self.end.unwrap_or_else(Instant::now));
        Results {
            cpu_util_total: total,
            cpu_util_user: user,
            cpu_util_system: system,
            sender_has_retransmits: if self.o.reverse { -1 } else { 1 },
            congestion_used: Some("cubic".into()),
            server_output_text: None,
            streams: self
                .streams
                .iter()
                .map(|s| StreamResult {
                    id: s.id as i64,
                    bytes: s.bytes,
                    retransmits: if self.o.reverse {
                        -1
                    } else {
                        s.tcp.retransmits as i64
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

    /// Per stream: (id, sent bytes, sender secs, received bytes, receiver secs, the sender's
    /// retransmissions when known).
    fn totals(&self) -> Vec<Total> {
        let ours = self.secs(self.end.unwrap_or_else(Instant::now));
        let peer_has_retr = self
            .server_results
            .as_ref()
            .is_some_and(|r| r.sender_has_retransmits == 1);
        self.streams
            .iter()
            .map(|s| {
                let peer = self
                    .server_results
                    .as_ref()
                    .and_then(|r| r.streams.iter().find(|x| x.id == s.id as i64))
                    .map(|x| (x.bytes, (x.end_time - x.start_time).max(0.0), x.retransmits))
                    .unwrap_or((0, 0.0, -1));
                if self.o.reverse {
                    let retr = (peer_has_retr && peer.2 >= 0).then_some(peer.2 as u64);
                    (s.id, peer.0, peer.1, s.bytes, ours, retr)
                } else {
                    (s.id, s.bytes, ours, peer.0, peer.1, Some(s.tcp.retransmits))
                }
            })
            .collect()
    }

    fn summary(&self) {
        self.say(report::SEPARATOR);
        let t = self.totals();
        let with_retr = t.iter().all(|x| x.5.is_some());
        self.say(if with_retr {
            report::HEADER_RETR
        } else {
            report::HEADER
        });
        let sender_line = |id, secs, bytes, retr: Option<u64>| match retr {
            Some(r) if with_retr => report::sender_line(id, 0.0, secs, bytes, r, None, "sender"),
            _ => report::line(id, 0.0, secs, bytes, "sender"),
        };
        let (mut sent, mut rcvd, mut st, mut rt, mut retr) = (0, 0, 0f64, 0f64, 0);
        for &(id, sb, ss, rb, rs, r) in &t {
            self.say(&sender_line(Some(id), ss, sb, r));
            self.say(&report::line(Some(id), 0.0, rs, rb, "receiver"));
            sent += sb;
            rcvd += rb;
            st = st.max(ss);
            rt = rt.max(rs);
            retr += r.unwrap_or(0);
        }
        if t.len() > 1 {
            self.say(&sender_line(None, st, sent, Some(retr)));
            self.say(&report::line(None, 0.0, rt, rcvd, "receiver"));
        }
        self.say("");
        self.say("iperf Done.");
    }

    fn json_doc(&self, error: Option<&str>) -> Value {
        let t = self.totals();
        let mut streams = Vec::new();
        let (mut sent, mut rcvd, mut st, mut rt) = (0, 0, 0f64, 0f64);
        let mut retr = Some(0u64);
        for (&(id, sb, ss, rb, rs, r), s) in t.iter().zip(&self.streams) {
            let mut sender = report::json_entry(Some(id), 0.0, ss, sb, !self.o.reverse);
            if self.o.reverse {
                if let Some(r) = r {
                    sender["retransmits"] = json!(r);
                }
            } else {
                s.tcp.add_summary_json(&mut sender);
            }
            streams.push(json!({
                "sender": sender,
                "receiver": report::json_entry(Some(id), 0.0, rs, rb, !self.o.reverse),
            }));
            sent += sb;
            rcvd += rb;
            st = st.max(ss);
            rt = rt.max(rs);
            retr = retr.zip(r).map(|(a, b)| a + b);
        }
        let mut sum_sent = report::json_entry(None, 0.0, st, sent, true);
        if let Some(r) = retr {
            sum_sent["retransmits"] = json!(r);
        }
        let local = self.cpu.as_ref().map(|c| c.percent()).unwrap_or_default();
        let remote = self.server_results.as_ref().map_or((0.0, 0.0, 0.0), |r| {
            (r.cpu_util_total, r.cpu_util_user, r.cpu_util_system)
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut doc = json!({
            "start": {
                "connected": self.connected,
                "version": concat!("longhaul perf ", env!("CARGO_PKG_VERSION")),
                "system_info": "",
                "timestamp": {"timesecs": now},
                "connecting_to": {
                    "host": self.o.server.ip().to_string(),
                    "port": self.o.server.port(),
                },
                "cookie": cookie_text(&self.cookie),
                "test_start": {
                    "protocol": "TCP",
                    "num_streams": self.o.parallel,
                    "blksize": self.o.blksize,
                    "omit": 0,
                    "duration": self.o.time_secs,
                    "bytes": 0,
                    "blocks": 0,
                    "reverse": u8::from(self.o.reverse),
                    "tos": 0,
                },
            },
            "intervals": self.intervals,
            "end": {
                "streams": streams,
                "sum_sent": sum_sent,
                "sum_received": report::json_entry(None, 0.0, rt, rcvd, false),
                "cpu_utilization_percent": {
                    "host_total": local.0,
                    "host_user": local.1,
                    "host_system": local.2,
                    "remote_total": remote.0,
                    "remote_user": remote.1,
                    "remote_system": remote.2,
                },
            },
        });
        if let Some(e) = error {
            doc["error"] = json!(e);
        }
        doc
    }

    fn stream_index(&self, c: ConnId) -> Option<usize> {
        self.streams.iter().position(|s| s.conn == Some(c))
    }
}

impl App for PerfClient {
    fn on_start(&mut self, io: &mut Io) {
        self.say(&format!(
            "Connecting to host {}, port {}",
            self.o.server.ip(),
            self.o.server.port()
        ));
        if self.o.reverse {
            self.say(&format!(
                "Reverse mode, remote host {} is sending",
                self.o.server.ip()
            ));
        }
        match io.connect(self.o.server) {
            Ok(c) => self.ctl = Some(c),
            Err(e) => self.finish(io, Some(format!("unable to connect to server: {e}"))),
        }
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        if self.done.is_none() {
            // Finished: only drain what is still arriving.
            if let Event::Readable(c) | Event::PeerClosed(c) = event {
                while let Ok(n) = io.read(c, &mut self.rbuf) {
                    if n == 0 {
                        break;
                    }
                }
            }
            return;
        }
        match event {
            Event::Connected(c) if Some(c) == self.ctl => {
                let _ = io.set_nodelay(c, true);
                self.flush_ctl(io);
            }
            Event::Connected(c) => {
                if let Some(i) = self.stream_index(c) {
                    self.stream_connected(io, i);
                }
            }
            Event::Readable(c) | Event::PeerClosed(c) => {
                if Some(c) == self.ctl {
                    self.read_ctl(io);
                } else if let Some(i) = self.stream_index(c) {
                    self.pump(io, i);
                }
            }
            Event::Writable(c) => {
                if Some(c) == self.ctl {
                    self.flush_ctl(io);
                } else if let Some(i) = self.stream_index(c) {
                    self.pump(io, i);
                }
            }
            Event::Closed(c) | Event::Error(c, _) => {
                let why = match event {
                    Event::Error(_, e) => e.to_string(),
                    _ => "closed".to_string(),
                };
                if Some(c) == self.ctl {
                    self.ctl = None;
                    let msg = if self.start.is_none() {
                        format!("unable to connect to server: {why}")
                    } else {
                        format!("control socket has closed unexpectedly ({why})")
                    };
                    self.finish(io, Some(msg));
                } else if let Some(i) = self.stream_index(c) {
                    self.streams[i].conn = None;
                    if self.end.is_none() {
                        let id = self.streams[i].id;
                        self.finish(io, Some(format!("stream {id}: {why}")));
                    }
                }
            }
            _ => {}
        }
        if self.done.is_some() {
            self.check_time(io, Instant::now());
        }
    }

    fn on_tick(&mut self, io: &mut Io) {
        if self.done.is_some() {
            self.check_time(io, Instant::now());
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
        self.finish(io, Some("interrupted".into()));
    }
}
