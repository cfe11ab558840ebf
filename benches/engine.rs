//! longhaul's TCP engine against smoltcp's `tcp::Socket`, in the same run, over the same `mem` wire.
//!
//! - `bulk`: one connection streams without pause; an iteration is the time the receiving app takes
//!   to read the next [`BULK_BYTES`] (64 MiB; 4 MiB for smoltcp with idle sockets, which is slow).
//!   Each side has its own thread (core). longhaul runs in [`Stack::start_on`] (the real core loop,
//!   CUBIC, default buffers); smoltcp runs one `Interface` + `SocketSet` per side in a busy-polling
//!   thread with the same receive budget (64 frames per poll), CUBIC and 1 MiB socket buffers.
//!   Variants: no idle connection, and idle connections on the receiving core. Idle connections
//!   are established by this thread with raw frames from a third address (198.18.0.3) before the
//!   sender starts, so only the receiving core holds them; the peer never sends on them again.
//!   longhaul gets [`IDLE_LONGHAUL`] (100,000); smoltcp gets [`IDLE_SMOLTCP`] (10,000), because it
//!   offers every packet to every socket and polls every socket on each egress pass, so 100,000
//!   would take minutes per iteration. In smoltcp's set the idle sockets come first and the bulk
//!   socket last, as in a server whose idle connections were there before the new one.
//! - `segment`: the cost of one in-order full-sized data segment at the receiver (ns/segment):
//!   longhaul's sans-IO `Conn::handle_segment` + `poll_transmit` (+ reading the data), and whole
//!   frames through each stack (parse, checksum, demux, TCP, ACKs, app read) on one thread:
//!   longhaul's [`Engine`] and smoltcp's `Interface::poll`. The frames of an iteration are put on
//!   the wire before the clock starts; the clock stops when the receiver has taken them all.
//!
//! Run: `cargo bench --bench engine`. Figures depend on free CPUs: the bulk benches want two.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use longhaul::pmd::mem::{wire, MemConfig, MemQueue};
use longhaul::pmd::{Frame, PoolFrame, Queue};
use longhaul::stack::tcp::config::TcpConfig;
use longhaul::stack::tcp::conn::Conn;
use longhaul::stack::tcp::segment::{Flags, Options, Segment};
use longhaul::stack::tcp::{Instant as TcpInstant, Seq};
use longhaul::stack::Engine;
use longhaul::{App, Config, ConnId, Event, Io, Stack};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// The raw peer of the idle connections and of the per-segment benches.
const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 3];
const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const IP_C: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const BULK_PORT: u16 = 5001;
/// Receiver ports for idle connections: two, so 100,000 fit the raw peer's source ports.
const IDLE_PORTS: [u16; 2] = [6001, 6002];
const BULK_BYTES: u64 = 64 << 20;
const BULK_BYTES_SLOW: u64 = 4 << 20;
const IDLE_LONGHAUL: usize = 100_000;
const IDLE_SMOLTCP: usize = 10_000;
/// smoltcp socket buffers (longhaul's default `--rmem`/`--wmem` maximum is the same).
const SMOL_BUF: usize = 1 << 20;
/// Frames a receiver takes per poll (longhaul's default budget; the smoltcp device stops there).
const BUDGET: usize = 64;
/// Full-sized segment payload without TCP options.
const MSS: usize = 1460;
/// Segments per `segment` iteration.
const SEGS: usize = 2048;
/// The raw peer's initial sequence number.
const PEER_ISS: u32 = 1000;

fn stack_config(ip: &str, mac: [u8; 6], backlog: usize) -> Config {
    let mut c = Config::new();
    c.ip(ip)
        .and_then(|c| c.mac(mac))
        .and_then(|c| c.backlog(backlog))
        .expect("valid bench config");
    // Two stacks in one process would both pin core 0 to the first CPU.
    c.pin_threads(false);
    c
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "bench setup: {what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ------------------------------------------------------------------------------- raw frames

fn caps() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// An Ethernet/IPv4/TCP frame from the raw peer (C) to B.
fn tcp_frame(repr: &TcpRepr) -> Vec<u8> {
    let tcp_len = repr.buffer_len();
    let mut buf = vec![0u8; 14 + 20 + tcp_len];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(MAC_C),
        dst_addr: EthernetAddress(MAC_B),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let ip = Ipv4Repr {
        src_addr: IP_C,
        dst_addr: IP_B,
        next_header: IpProtocol::Tcp,
        payload_len: tcp_len,
        hop_limit: 64,
    };
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..34]), &caps());
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[34..]),
        &IpAddress::Ipv4(IP_C),
        &IpAddress::Ipv4(IP_B),
        &caps(),
    );
    buf
}

fn seg<'a>(src: u16, dst: u16, control: TcpControl, seq: u32, ack: Option<u32>) -> TcpRepr<'a> {
    TcpRepr {
        src_port: src,
        dst_port: dst,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(MSS as u16),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

/// An ARP request from C for B (so a smoltcp receiver knows where to answer).
fn arp_request() -> Vec<u8> {
    let mut buf = vec![0u8; 14 + 28];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(MAC_C),
        dst_addr: EthernetAddress([0xff; 6]),
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(MAC_C),
        source_protocol_addr: IP_C,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: IP_B,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut buf[14..]));
    buf
}

/// A SYN-ACK to C: (C's port, B's port, B's ISN).
fn parse_synack(frame: &[u8]) -> Option<(u16, u16, u32)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.dst_addr() != IP_C {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    (t.syn() && t.ack()).then(|| (t.dst_port(), t.src_port(), t.seq_number().0 as u32))
}

/// Puts `frames` on the wire (waiting for ring space), freeing what comes back meanwhile.
fn inject(q: &mut MemQueue, frames: &[Vec<u8>], mut on_back: impl FnMut(&[u8])) {
    let mut burst: Vec<PoolFrame> = Vec::with_capacity(32);
    let mut back: Vec<PoolFrame> = Vec::with_capacity(64);
    let mut next = 0;
    while next < frames.len() || !burst.is_empty() {
        while burst.len() < 32 && next < frames.len() {
            let Some(mut f) = q.alloc_tx() else { break };
            f.set_len(frames[next].len());
            f.data_mut().copy_from_slice(&frames[next]);
            burst.push(f);
            next += 1;
        }
        q.tx_burst(&mut burst);
        q.rx_burst(&mut back, 64);
        for f in back.drain(..) {
            on_back(f.data());
            q.free(f);
        }
    }
}

/// Handshakes in progress: which connections got their SYN-ACK, and the ACKs to send.
struct Handshakes {
    per_port: usize,
    answered: Vec<bool>,
    done: usize,
    acks: Vec<Vec<u8>>,
}

impl Handshakes {
    /// Connection `i`: (C's port, B's port).
    fn id(&self, i: usize) -> (u16, u16) {
        (
            1024 + (i % self.per_port) as u16,
            IDLE_PORTS[i / self.per_port],
        )
    }

    /// A frame from B: a SYN-ACK gets its ACK (again, if B retransmitted it).
    fn on_back(&mut self, frame: &[u8]) {
        let Some((src, dst, iss)) = parse_synack(frame) else {
            return;
        };
        let Some(pi) = IDLE_PORTS.iter().position(|&p| p == dst) else {
            return;
        };
        let i = pi * self.per_port + usize::from(src.saturating_sub(1024));
        if i < self.answered.len() && !self.answered[i] {
            self.answered[i] = true;
            self.done += 1;
        }
        let ack = seg(
            src,
            dst,
            TcpControl::None,
            PEER_ISS + 1,
            Some(iss.wrapping_add(1)),
        );
        self.acks.push(tcp_frame(&ack));
    }
}

/// Establishes `n` connections from C to B's [`IDLE_PORTS`] with raw frames, at most 1,000 SYNs
/// unanswered at a time. `poll` runs the receiver when it lives on this thread (a yield when it
/// has its own). Returns what it took.
fn handshake_idle(q: &mut MemQueue, n: usize, mut poll: impl FnMut()) -> Duration {
    let start = Instant::now();
    inject(q, &[arp_request()], |_| {});
    let mut hs = Handshakes {
        per_port: n.div_ceil(IDLE_PORTS.len()),
        answered: vec![false; n],
        done: 0,
        acks: Vec::new(),
    };
    let mut sent = 0usize;
    let mut back: Vec<PoolFrame> = Vec::with_capacity(256);
    while hs.done < n {
        let mut syns = Vec::new();
        while sent < n && sent - hs.done < 1000 {
            let (src, dst) = hs.id(sent);
            syns.push(tcp_frame(&seg(src, dst, TcpControl::Syn, PEER_ISS, None)));
            sent += 1;
        }
        inject(q, &syns, |f| hs.on_back(f));
        poll();
        q.rx_burst(&mut back, 256);
        for f in back.drain(..) {
            hs.on_back(f.data());
            q.free(f);
        }
        let acks = std::mem::take(&mut hs.acks);
        inject(q, &acks, |f| hs.on_back(f));
        poll();
    }
    let acks = std::mem::take(&mut hs.acks);
    inject(q, &acks, |_| {});
    // Let the last ACKs land.
    for _ in 0..100 {
        poll();
    }
    start.elapsed()
}

// ------------------------------------------------------------------------------ longhaul apps

/// Connects to B and writes without pause.
struct Sender {
    conn: Option<ConnId>,
    buf: Box<[u8]>,
}

impl Sender {
    fn new() -> Self {
        Sender {
            conn: None,
            buf: vec![0xa5u8; 64 * 1024].into_boxed_slice(),
        }
    }

    fn pump(&mut self, io: &mut Io) {
        let Some(c) = self.conn else { return };
        while let Ok(n) = io.write(c, &self.buf) {
            if n < self.buf.len() {
                break;
            }
        }
    }
}

impl App for Sender {
    fn on_start(&mut self, io: &mut Io) {
        self.conn = Some(
            io.connect(SocketAddrV4::new(IP_B, BULK_PORT))
                .expect("connect on a fresh core"),
        );
    }
    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::Connected(_) | Event::Writable(_) => self.pump(io),
            Event::Closed(_) | Event::Error(..) => self.conn = None,
            _ => {}
        }
    }
    fn on_tick(&mut self, io: &mut Io) {
        self.pump(io);
    }
    fn on_stop(&mut self, io: &mut Io) {
        if let Some(c) = self.conn.take() {
            let _ = io.abort(c);
        }
    }
}

/// Listens on the bulk and idle ports, reads and counts everything; counts accepted connections.
struct Discard {
    buf: Box<[u8]>,
    bytes: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Discard {
    fn new(bytes: Arc<AtomicU64>, accepted: Arc<AtomicU64>) -> Self {
        Discard {
            buf: vec![0u8; 256 * 1024].into_boxed_slice(),
            bytes,
            accepted,
        }
    }
}

impl App for Discard {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(BULK_PORT).expect("port free");
        for p in IDLE_PORTS {
            io.listen(p).expect("port free");
        }
    }
    fn on_event(&mut self, io: &mut Io, event: Event) {
        let c = match event {
            Event::Accepted { conn, .. } => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                conn
            }
            Event::Readable(c) | Event::PeerClosed(c) => c,
            _ => return,
        };
        let mut got = 0;
        while let Ok(n @ 1..) = io.read(c, &mut self.buf) {
            got += n as u64;
        }
        if got > 0 {
            self.bytes.fetch_add(got, Ordering::Relaxed);
        }
    }
}

// ------------------------------------------------------------------------- smoltcp over mem

/// smoltcp's `Device` over a `mem` queue: at most [`BUDGET`] frames per poll, transmitted frames
/// batched and handed to the wire by [`SmolPort::flush`].
struct SmolPort {
    q: MemQueue,
    rx: VecDeque<PoolFrame>,
    burst: Vec<PoolFrame>,
    tx: Vec<PoolFrame>,
    done: Vec<PoolFrame>,
    taken: usize,
    frames_in: u64,
    frames_out: u64,
}

impl SmolPort {
    fn new(q: MemQueue) -> Self {
        SmolPort {
            q,
            rx: VecDeque::with_capacity(BUDGET),
            burst: Vec::with_capacity(BUDGET),
            tx: Vec::with_capacity(256),
            done: Vec::with_capacity(BUDGET),
            taken: 0,
            frames_in: 0,
            frames_out: 0,
        }
    }

    /// Sends the batch and frees the received frames; starts a new receive budget.
    fn flush(&mut self) {
        for f in self.done.drain(..) {
            self.q.free(f);
        }
        self.frames_out += self.q.tx_burst(&mut self.tx) as u64;
        self.taken = 0;
    }
}

struct SmolRx<'a> {
    frame: PoolFrame,
    done: &'a mut Vec<PoolFrame>,
}

struct SmolTx<'a> {
    q: &'a mut MemQueue,
    tx: &'a mut Vec<PoolFrame>,
}

impl phy::RxToken for SmolRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame.data());
        self.done.push(self.frame);
        r
    }
}

impl phy::TxToken for SmolTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = self
            .q
            .alloc_tx()
            .expect("the wire's pool covers both rings");
        frame.set_len(len);
        let r = f(frame.data_mut());
        self.tx.push(frame);
        r
    }
}

impl phy::Device for SmolPort {
    type RxToken<'a> = SmolRx<'a>;
    type TxToken<'a> = SmolTx<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.taken >= BUDGET {
            return None;
        }
        if self.rx.is_empty() {
            self.q.rx_burst(&mut self.burst, BUDGET - self.taken);
            self.rx.extend(self.burst.drain(..));
        }
        let frame = self.rx.pop_front()?;
        self.taken += 1;
        self.frames_in += 1;
        Some((
            SmolRx {
                frame,
                done: &mut self.done,
            },
            SmolTx {
                q: &mut self.q,
                tx: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len() >= 256 {
            self.frames_out += self.q.tx_burst(&mut self.tx) as u64;
            if self.tx.len() >= 256 {
                return None;
            }
        }
        Some(SmolTx {
            q: &mut self.q,
            tx: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.q.caps().mtu + 14;
        c
    }
}

fn smol_iface(
    port: &mut SmolPort,
    mac: [u8; 6],
    ip: Ipv4Addr,
    now: smoltcp::time::Instant,
) -> Interface {
    let mut cfg = smoltcp::iface::Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    cfg.random_seed = u64::from(mac[5]);
    let mut iface = Interface::new(cfg, port, now);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(ip), 24))
            .expect("one address");
    });
    iface
}

fn smol_socket() -> tcp::Socket<'static> {
    let buf = || tcp::SocketBuffer::new(vec![0u8; SMOL_BUF]);
    let mut s = tcp::Socket::new(buf(), buf());
    s.set_congestion_control(tcp::CongestionControl::Cubic);
    s
}

/// One smoltcp side on its own busy-polling thread, with its clock.
struct SmolSide {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl SmolSide {
    /// Runs `iface` until stopped; `app` is called after every poll with the socket set.
    fn start(
        mut port: SmolPort,
        mut iface: Interface,
        mut sockets: SocketSet<'static>,
        clock: Instant,
        mut app: impl FnMut(&mut Interface, &mut SocketSet<'static>) + Send + 'static,
    ) -> SmolSide {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = smoltcp::time::Instant::from_micros(clock.elapsed().as_micros() as i64);
                iface.poll(now, &mut port, &mut sockets);
                port.flush();
                app(&mut iface, &mut sockets);
                port.flush();
            }
            (port.frames_in, port.frames_out)
        });
        SmolSide {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or((0, 0), |t| t.join().expect("smoltcp side"))
    }
}

impl Drop for SmolSide {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------- bulk

/// Times one iteration: until the receiver has counted `bytes` more.
fn time_bytes(received: &AtomicU64, iters: u64, bytes: u64) -> Duration {
    let start = Instant::now();
    let target = received.load(Ordering::Relaxed) + iters * bytes;
    while received.load(Ordering::Relaxed) < target {
        std::thread::sleep(Duration::from_micros(50));
    }
    start.elapsed()
}

fn bench_longhaul_bulk(c: &mut Criterion, idle: usize) {
    let mut g = c.benchmark_group("bulk");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(BULK_BYTES));
    let (mut qa, qb) = wire(MemConfig {
        ring: 4096,
        ..MemConfig::default()
    });
    let received = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let (r, acc) = (received.clone(), accepted.clone());
    let rx_stack = Stack::start_on(
        stack_config("198.18.0.2/24", MAC_B, 4096),
        vec![qb],
        move |_| Discard::new(r.clone(), acc.clone()),
    )
    .expect("receiver stack starts");
    if idle > 0 {
        let took = handshake_idle(&mut qa, idle, std::thread::yield_now);
        wait_for("idle connections accepted", Duration::from_secs(30), || {
            accepted.load(Ordering::Relaxed) == idle as u64
        });
        eprintln!("bulk/longhaul: {idle} idle connections on the receiver in {took:.2?}");
    }
    let tx_stack = Stack::start_on(stack_config("198.18.0.1/24", MAC_A, 128), vec![qa], |_| {
        Sender::new()
    })
    .expect("sender stack starts");
    wait_for("bulk data flowing", Duration::from_secs(5), || {
        received.load(Ordering::Relaxed) > 0
    });
    let (before, bytes0, wall) = (
        rx_stack.stats_now()[0],
        received.load(Ordering::Relaxed),
        Instant::now(),
    );
    g.bench_function(format!("longhaul/{idle}_idle"), |b| {
        b.iter_custom(|iters| time_bytes(&received, iters, BULK_BYTES))
    });
    g.finish();
    let after = rx_stack.stats_now()[0];
    let secs = wall.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed) - bytes0;
    eprintln!(
        "bulk/longhaul/{idle}_idle: {:.2} Gbit/s over {secs:.1} s; receiver {} frames in, {} out, \
         {} connections",
        bytes as f64 * 8.0 / secs / 1e9,
        after.frames_in - before.frames_in,
        after.frames_out - before.frames_out,
        after.conns_current,
    );
    assert!(
        rx_stack.is_running() && tx_stack.is_running(),
        "a core died"
    );
    drop(tx_stack);
    drop(rx_stack);
}

fn bench_smoltcp_bulk(c: &mut Criterion, idle: usize) {
    let per_iter = if idle > 0 {
        BULK_BYTES_SLOW
    } else {
        BULK_BYTES
    };
    let mut g = c.benchmark_group("bulk");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(per_iter));
    let (mut qa, qb) = wire(MemConfig {
        ring: 4096,
        ..MemConfig::default()
    });
    let clock = Instant::now();
    let smol_now = move || smoltcp::time::Instant::from_micros(clock.elapsed().as_micros() as i64);

    // Receiver: idle listeners first, the bulk listener last.
    let mut rx_port = SmolPort::new(qb);
    let rx_iface = smol_iface(&mut rx_port, MAC_B, IP_B, smol_now());
    let mut rx_set = SocketSet::new(Vec::with_capacity(idle + 1));
    for i in 0..idle {
        let mut s = smol_socket_small();
        s.listen(IDLE_PORTS[i * IDLE_PORTS.len() / idle])
            .expect("listen");
        rx_set.add(s);
    }
    let mut bulk = smol_socket();
    bulk.listen(BULK_PORT).expect("listen");
    let bulk_rx: SocketHandle = rx_set.add(bulk);
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let mut buf = vec![0u8; 256 * 1024];
    let rx_side = SmolSide::start(rx_port, rx_iface, rx_set, clock, move |_, set| {
        let s = set.get_mut::<tcp::Socket>(bulk_rx);
        let mut got = 0;
        while let Ok(n @ 1..) = s.recv_slice(&mut buf) {
            got += n as u64;
        }
        if got > 0 {
            r.fetch_add(got, Ordering::Relaxed);
        }
    });
    if idle > 0 {
        let took = handshake_idle(&mut qa, idle, std::thread::yield_now);
        eprintln!("bulk/smoltcp: {idle} idle sockets on the receiver in {took:.2?}");
    }

    // Sender.
    let mut tx_port = SmolPort::new(qa);
    let mut tx_iface = smol_iface(&mut tx_port, MAC_A, IP_A, smol_now());
    let mut tx_set = SocketSet::new(Vec::with_capacity(1));
    let mut s = smol_socket();
    s.connect(
        tx_iface.context(),
        (IpAddress::Ipv4(IP_B), BULK_PORT),
        40000,
    )
    .expect("connect");
    let bulk_tx = tx_set.add(s);
    let data = vec![0xa5u8; 64 * 1024];
    let tx_side = SmolSide::start(tx_port, tx_iface, tx_set, clock, move |_, set| {
        let s = set.get_mut::<tcp::Socket>(bulk_tx);
        while let Ok(n @ 1..) = s.send_slice(&data) {
            let _ = n;
        }
    });
    wait_for("smoltcp bulk data flowing", Duration::from_secs(10), || {
        received.load(Ordering::Relaxed) > 0
    });
    let (bytes0, wall) = (received.load(Ordering::Relaxed), Instant::now());
    g.bench_function(format!("smoltcp/{idle}_idle"), |b| {
        b.iter_custom(|iters| time_bytes(&received, iters, per_iter))
    });
    g.finish();
    let secs = wall.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed) - bytes0;
    let _ = tx_side.stop();
    let (fin, fout) = rx_side.stop();
    eprintln!(
        "bulk/smoltcp/{idle}_idle: {:.2} Gbit/s over {secs:.1} s; receiver {fin} frames in, {fout} \
         out in all",
        bytes as f64 * 8.0 / secs / 1e9,
    );
}

/// A socket for an idle connection: small buffers (they hold nothing; smoltcp preallocates).
fn smol_socket_small() -> tcp::Socket<'static> {
    let buf = || tcp::SocketBuffer::new(vec![0u8; 1024]);
    tcp::Socket::new(buf(), buf())
}

fn bench_bulk(c: &mut Criterion) {
    bench_longhaul_bulk(c, 0);
    bench_smoltcp_bulk(c, 0);
    bench_longhaul_bulk(c, IDLE_LONGHAUL);
    bench_smoltcp_bulk(c, IDLE_SMOLTCP);
}

// ---------------------------------------------------------------------------------- segment

/// The data frames of one iteration: `SEGS` full segments from C starting at stream offset `off`.
fn data_frames(dst_port: u16, their_iss: u32, off: u64, payload: &[u8]) -> Vec<Vec<u8>> {
    (0..SEGS as u64)
        .map(|k| {
            let seq = (PEER_ISS + 1).wrapping_add((off + k * MSS as u64) as u32);
            let mut r = seg(
                1024,
                dst_port,
                TcpControl::Psh,
                seq,
                Some(their_iss.wrapping_add(1)),
            );
            r.payload = payload;
            tcp_frame(&r)
        })
        .collect()
}

/// Puts `frames` on the ring without anyone taking them (the ring holds them all).
fn preload(q: &mut MemQueue, frames: &[Vec<u8>]) {
    let mut burst = Vec::with_capacity(frames.len());
    for f in frames {
        let mut p = q.alloc_tx().expect("pool");
        p.set_len(f.len());
        p.data_mut().copy_from_slice(f);
        burst.push(p);
    }
    q.tx_burst(&mut burst);
    assert!(burst.is_empty(), "the ring holds an iteration");
}

/// Frees what the receiver sent (ACKs); returns how many.
fn drain(q: &mut MemQueue) -> u64 {
    let mut back = Vec::with_capacity(256);
    let mut n = 0;
    while q.rx_burst(&mut back, 256) > 0 {
        for f in back.drain(..) {
            n += 1;
            q.free(f);
        }
    }
    n
}

/// Finds B's ISN for the connection from C:1024 to `port` in what came back.
fn synack_iss(q: &mut MemQueue) -> Option<u32> {
    let mut back = Vec::with_capacity(64);
    q.rx_burst(&mut back, 64);
    let mut iss = None;
    for f in back {
        if let Some((1024, _, s)) = parse_synack(f.data()) {
            iss = Some(s);
        }
        q.free(f);
    }
    iss
}

fn bench_segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Elements(SEGS as u64));
    let payload = vec![0x5au8; MSS];

    // longhaul's sans-IO core alone.
    {
        let cfg = Arc::new(TcpConfig::default());
        let local = SocketAddrV4::new(IP_B, BULK_PORT);
        let remote = SocketAddrV4::new(IP_C, 1024);
        let mut now = TcpInstant::from_micros(1);
        let syn = Segment {
            src_port: 1024,
            dst_port: BULK_PORT,
            seq: Seq(PEER_ISS),
            flags: Flags {
                syn: true,
                ..Flags::default()
            },
            window: 65535,
            opts: Options {
                mss: Some(MSS as u16),
                ..Options::default()
            },
            ..Segment::default()
        };
        let mut conn = Conn::accept(cfg, now, local, remote, &syn, Seq(5000), 0);
        let mut synack = None;
        while let Some(t) = conn.poll_transmit(now) {
            synack = Some(t.seg);
        }
        let iss = synack.expect("a SYN-ACK").seq;
        let mut data = Segment {
            src_port: 1024,
            dst_port: BULK_PORT,
            seq: Seq(PEER_ISS + 1),
            ack: iss + 1,
            flags: Flags {
                ack: true,
                ..Flags::default()
            },
            window: 65535,
            ..Segment::default()
        };
        conn.handle_segment(now, &data, &[]);
        data.flags.psh = true;
        data.len = MSS as u32;
        let mut out = vec![0u8; 64 * 1024];
        let mut acks = 0u64;
        let mut segs = 0u64;
        g.bench_function("longhaul_conn", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters * SEGS as u64 {
                    now += Duration::from_micros(1);
                    conn.handle_segment(now, &data, &payload);
                    while conn.poll_transmit(now).is_some() {
                        acks += 1;
                    }
                    data.seq += MSS as u32;
                    segs += 1;
                    if conn.recv_available() >= 32 * 1024 {
                        conn.recv(now, &mut out);
                    }
                    if conn.poll_timeout().is_some_and(|t| t <= now) {
                        conn.handle_timeout(now);
                    }
                }
                start.elapsed()
            })
        });
        let info = conn.info(now);
        eprintln!(
            "segment/longhaul_conn: {segs} segments, {} bytes received, {acks} ACKs ({:.1} \
             segments per ACK)",
            info.bytes_received,
            segs as f64 / acks.max(1) as f64
        );
        assert_eq!(info.bytes_received, segs * MSS as u64, "data was dropped");
    }

    // Whole frames through longhaul's engine on this thread.
    {
        let (mut qa, qb) = wire(MemConfig {
            ring: 2 * SEGS,
            ..MemConfig::default()
        });
        let bytes = Arc::new(AtomicU64::new(0));
        let app = Discard::new(bytes.clone(), Arc::new(AtomicU64::new(0)));
        let clock = Instant::now();
        let mut engine = Engine::new(
            0,
            &stack_config("198.18.0.2/24", MAC_B, 128),
            MAC_B,
            7,
            qb,
            app,
        );
        inject(
            &mut qa,
            &[tcp_frame(&seg(
                1024,
                BULK_PORT,
                TcpControl::Syn,
                PEER_ISS,
                None,
            ))],
            |_| {},
        );
        engine.poll(clock.elapsed());
        let iss = synack_iss(&mut qa).expect("longhaul answers the SYN");
        inject(
            &mut qa,
            &[tcp_frame(&seg(
                1024,
                BULK_PORT,
                TcpControl::None,
                PEER_ISS + 1,
                Some(iss + 1),
            ))],
            |_| {},
        );
        engine.poll(clock.elapsed());
        let mut off = 0u64;
        let mut acks = 0u64;
        g.bench_function("longhaul_engine_frame", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    preload(&mut qa, &data_frames(BULK_PORT, iss, off, &payload));
                    off += (SEGS * MSS) as u64;
                    let start = Instant::now();
                    while engine.poll(clock.elapsed()).busy() {}
                    total += start.elapsed();
                    acks += drain(&mut qa);
                }
                total
            })
        });
        let got = bytes.load(Ordering::Relaxed);
        eprintln!(
            "segment/longhaul_engine_frame: {} segments, {got} bytes read by the app, {acks} frames \
             back ({:.1} segments per ACK)",
            off / MSS as u64,
            (off / MSS as u64) as f64 / acks.max(1) as f64
        );
        assert_eq!(got, off, "data was dropped");
    }

    // Whole frames through smoltcp's interface on this thread.
    {
        let (mut qa, qb) = wire(MemConfig {
            ring: 2 * SEGS,
            ..MemConfig::default()
        });
        let clock = Instant::now();
        let now = || smoltcp::time::Instant::from_micros(clock.elapsed().as_micros() as i64);
        let mut port = SmolPort::new(qb);
        let mut iface = smol_iface(&mut port, MAC_B, IP_B, now());
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let mut s = smol_socket();
        s.listen(BULK_PORT).expect("listen");
        let h = set.add(s);
        let poll = |iface: &mut Interface, set: &mut SocketSet, port: &mut SmolPort| {
            iface.poll(now(), port, set);
            port.flush();
        };
        inject(&mut qa, &[arp_request()], |_| {});
        poll(&mut iface, &mut set, &mut port);
        drain(&mut qa);
        inject(
            &mut qa,
            &[tcp_frame(&seg(
                1024,
                BULK_PORT,
                TcpControl::Syn,
                PEER_ISS,
                None,
            ))],
            |_| {},
        );
        poll(&mut iface, &mut set, &mut port);
        let iss = synack_iss(&mut qa).expect("smoltcp answers the SYN");
        inject(
            &mut qa,
            &[tcp_frame(&seg(
                1024,
                BULK_PORT,
                TcpControl::None,
                PEER_ISS + 1,
                Some(iss + 1),
            ))],
            |_| {},
        );
        poll(&mut iface, &mut set, &mut port);
        let mut off = 0u64;
        let mut acks = 0u64;
        let mut got = 0u64;
        let mut out = vec![0u8; 256 * 1024];
        g.bench_function("smoltcp_iface_frame", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    preload(&mut qa, &data_frames(BULK_PORT, iss, off, &payload));
                    off += (SEGS * MSS) as u64;
                    let start = Instant::now();
                    loop {
                        let before = port.frames_in;
                        poll(&mut iface, &mut set, &mut port);
                        let s = set.get_mut::<tcp::Socket>(h);
                        while let Ok(n @ 1..) = s.recv_slice(&mut out) {
                            got += n as u64;
                        }
                        if port.frames_in == before {
                            break;
                        }
                    }
                    total += start.elapsed();
                    acks += drain(&mut qa);
                }
                total
            })
        });
        eprintln!(
            "segment/smoltcp_iface_frame: {} segments, {got} bytes read by the app, {acks} frames \
             back ({:.1} segments per ACK)",
            off / MSS as u64,
            (off / MSS as u64) as f64 / acks.max(1) as f64
        );
        assert_eq!(got, off, "data was dropped");
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_segment, bench_bulk
}
criterion_main!(benches);
