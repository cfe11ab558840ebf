//! Engine benches over the in-memory wire (`pmd::mem`), each next to a baseline measured in the
//! same run.
//!
//! - `bulk_tcp`: TCP throughput between two longhaul stacks (one core each, MTU 1500). The sender
//!   writes without pause for the whole bench; one iteration is the time the receiver's app takes
//!   to count the next [`BULK_BYTES`] bytes (steady state, no connection setup, no idle wake-ups).
//!   Baseline: the bare wire moving the same 1514-byte frames from one thread to another, counted
//!   as 1460 payload bytes per frame like a full-sized TCP segment.
//! - `ingress`: frames per second one core takes in. The bench thread holds one end of the wire
//!   and injects prebuilt Ethernet/IPv4/UDP (or ARP) frames; the stack holds the other. After the
//!   frames of an iteration it sends one marker datagram to a bound port and stops the clock when
//!   the app has seen it (frames are processed in order, so all earlier ones are done). Variants,
//!   from cheapest to dearest: the wire alone (a thread that frees what it receives), a frame for
//!   another MAC (dropped in demux), a datagram to a closed port (smoltcp answers with ICMP port
//!   unreachable), and datagrams read by the app (small and full-sized).
//!
//! The numbers depend on how many CPUs the machine has: each stack core busy-polls, so the bulk
//! bench wants two free CPUs and the ingress bench two (core and injector).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use longhaul::pmd::mem::{wire, MemConfig, MemQueue};
use longhaul::pmd::{Frame, PoolFrame, Queue};
use longhaul::{App, Config, ConnId, CoreStats, Error, Event, Io, Stack};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BULK_PORT: u16 = 5001;
const SINK_PORT: u16 = 9;
const MARK_PORT: u16 = 10;
const CLOSED_PORT: u16 = 11;
/// Bytes the receiver counts per bulk iteration.
const BULK_BYTES: u64 = 64 << 20;
/// TCP payload of a full-sized segment at MTU 1500 (smoltcp sends no options on data segments
/// unless timestamps were negotiated).
const MSS: u64 = 1460;
/// Frames injected per ingress iteration.
const INGRESS_FRAMES: u64 = 100_000;

fn stack_config(ip: &str, mac: [u8; 6]) -> Config {
    let mut c = Config::new();
    c.ip(ip)
        .and_then(|c| c.mac(mac))
        .and_then(|c| c.cores(1))
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

// ------------------------------------------------------------------------------------- bulk TCP

/// Connects and writes without pause.
struct Sender {
    conn: Option<ConnId>,
    buf: Box<[u8]>,
}

impl Sender {
    fn pump(&mut self, io: &mut Io) {
        let Some(c) = self.conn else { return };
        // Stop at a partial write or WouldBlock: Writable follows.
        while let Ok(n) = io.write(c, &self.buf) {
            if n < self.buf.len() {
                break;
            }
        }
    }
}

impl App for Sender {
    fn on_start(&mut self, io: &mut Io) {
        let c = io
            .connect(SocketAddrV4::new(IP_B, BULK_PORT))
            .expect("connect on a fresh core");
        self.conn = Some(c);
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

/// Listens and counts what it reads.
struct Discard {
    conn: Option<ConnId>,
    buf: Box<[u8]>,
    bytes: Arc<AtomicU64>,
}

impl App for Discard {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(BULK_PORT).expect("listen on a fresh core");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        let c = match event {
            Event::Accepted { conn, .. } => {
                self.conn = Some(conn);
                conn
            }
            Event::Readable(c) | Event::PeerClosed(c) => c,
            Event::Closed(_) | Event::Error(..) => {
                self.conn = None;
                return;
            }
            _ => return,
        };
        let mut got = 0;
        loop {
            match io.read(c, &mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        self.bytes.fetch_add(got, Ordering::Relaxed);
    }

    fn on_stop(&mut self, io: &mut Io) {
        if let Some(c) = self.conn.take() {
            let _ = io.abort(c);
        }
    }
}

/// A thread that takes every frame off `q` and gives it back, counting frames.
struct Drain {
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drain {
    fn start(mut q: MemQueue) -> Drain {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut rx = Vec::with_capacity(64);
            while !s.load(Ordering::Relaxed) {
                let n = q.rx_burst(&mut rx, 64);
                for frame in rx.drain(..) {
                    q.free(frame);
                }
                if n > 0 {
                    f.fetch_add(n as u64, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        Drain {
            stop,
            frames,
            thread: Some(thread),
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bench_bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk_tcp");
    g.throughput(Throughput::Bytes(BULK_BYTES));

    // Baseline: the wire alone, full-sized frames copied in by one thread and freed by another.
    {
        let (mut a, b) = wire(MemConfig::default());
        let drain = Drain::start(b);
        let frame = vec![0x5au8; 1514];
        let frames_per_iter = BULK_BYTES.div_ceil(MSS);
        g.bench_function("mem_wire_only", |bch| {
            bch.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = drain.frames.load(Ordering::Acquire) + frames_per_iter;
                    inject(&mut a, &frame, frames_per_iter);
                    while drain.frames.load(Ordering::Acquire) < target {
                        std::hint::spin_loop();
                    }
                }
                start.elapsed()
            })
        });
    }

    // Two stacks, one core each.
    let (qa, qb) = wire(MemConfig::default());
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let rx_stack = Stack::start_on(stack_config("198.18.0.2/24", MAC_B), vec![qb], move |_| {
        Discard {
            conn: None,
            buf: vec![0u8; 256 * 1024].into_boxed_slice(),
            bytes: r.clone(),
        }
    })
    .expect("receiver stack starts");
    let tx_stack = Stack::start_on(stack_config("198.18.0.1/24", MAC_A), vec![qa], |_| Sender {
        conn: None,
        buf: vec![0xa5u8; 64 * 1024].into_boxed_slice(),
    })
    .expect("sender stack starts");
    wait_for("bulk data flowing", Duration::from_secs(5), || {
        received.load(Ordering::Relaxed) > 0
    });
    let rx_before = rx_stack.stats_now()[0];
    let tx_before = tx_stack.stats_now()[0];
    let bytes_before = received.load(Ordering::Relaxed);
    let wall = Instant::now();
    g.bench_function("longhaul_1core_each", |bch| {
        bch.iter_custom(|iters| {
            let start = Instant::now();
            let target = received.load(Ordering::Relaxed) + iters * BULK_BYTES;
            while received.load(Ordering::Relaxed) < target {
                std::thread::sleep(Duration::from_micros(50));
            }
            start.elapsed()
        })
    });
    g.finish();
    let rx = sub(rx_stack.stats_now()[0], rx_before);
    let tx = sub(tx_stack.stats_now()[0], tx_before);
    let secs = wall.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed) - bytes_before;
    assert!(
        rx_stack.is_running() && tx_stack.is_running(),
        "a core died during the bench"
    );
    // The sender streams through criterion's analysis pauses too, so the counters over the whole
    // wall time describe steady state.
    eprintln!(
        "bulk_tcp/longhaul_1core_each: {secs:.1} s streaming, {:.2} Gbit/s of payload; receiver: \
         {} frames in ({:.2} Mframes/s, {:.0} ns of wall time per frame), {} out (1 ACK per {:.1} \
         frames in), {} sleeps; sender: {} frames out, {} sleeps; ring_full drops {} / {}",
        bytes as f64 * 8.0 / secs / 1e9,
        rx.frames_in,
        rx.frames_in as f64 / secs / 1e6,
        secs * 1e9 / rx.frames_in.max(1) as f64,
        rx.frames_out,
        rx.frames_in as f64 / rx.frames_out.max(1) as f64,
        rx.sleeps,
        tx.frames_out,
        tx.sleeps,
        tx.drop_ring_full,
        rx.drop_ring_full,
    );
    drop(tx_stack);
    drop(rx_stack);
}

/// Counter differences `a - b` (only the counters these benches print).
fn sub(a: CoreStats, b: CoreStats) -> CoreStats {
    let mut d = a;
    d.frames_in -= b.frames_in;
    d.frames_out -= b.frames_out;
    d.drop_not_for_us -= b.drop_not_for_us;
    d.no_socket -= b.no_socket;
    d.drop_bad_checksum -= b.drop_bad_checksum;
    d.drop_malformed -= b.drop_malformed;
    d.drop_ring_full -= b.drop_ring_full;
    d.sleeps -= b.sleeps;
    d
}

// -------------------------------------------------------------------------------------- ingress

/// Reads and counts datagrams on the sink port; counts markers on the marker port.
struct UdpSink {
    buf: Box<[u8]>,
    sink: Option<longhaul::UdpId>,
    sunk: Arc<AtomicU64>,
    marks: Arc<AtomicU64>,
}

impl App for UdpSink {
    fn on_start(&mut self, io: &mut Io) {
        self.sink = Some(io.udp_bind(SINK_PORT).expect("port free"));
        io.udp_bind(MARK_PORT).expect("port free");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        let Event::UdpReadable(u) = event else {
            return;
        };
        let counter = if Some(u) == self.sink {
            &self.sunk
        } else {
            &self.marks
        };
        let mut n = 0;
        loop {
            match io.udp_recv(u, &mut self.buf) {
                Ok(_) => n += 1,
                Err(Error::WouldBlock) => break,
                Err(_) => continue,
            }
        }
        counter.fetch_add(n, Ordering::Release);
    }
}

/// The Internet checksum (RFC 1071) of `data`, folded, not yet inverted, starting from `sum`.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A whole Ethernet/IPv4/UDP frame from A (198.18.0.1:40000) to `dst_mac`, B's address and
/// `dst_port`, with `payload_len` bytes of payload and correct checksums.
fn udp_frame(dst_mac: [u8; 6], dst_port: u16, payload_len: usize) -> Vec<u8> {
    let udp_len = 8 + payload_len;
    let ip_len = 20 + udp_len;
    let mut ip = Vec::with_capacity(ip_len);
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum
    ip.extend_from_slice(&IP_A.octets());
    ip.extend_from_slice(&IP_B.octets());
    let ip_sum = !(ones_sum(0, &ip) as u16);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend((0..payload_len).map(|i| i as u8));
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&IP_A.octets());
    pseudo.extend_from_slice(&IP_B.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut udp_sum = !(ones_sum(ones_sum(0, &pseudo), &udp) as u16);
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());

    ip.extend_from_slice(&udp);
    ethernet(dst_mac, 0x0800, &ip)
}

/// An ARP request from A for B's address (so B learns A's MAC and can answer with ICMP).
fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&IP_A.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&IP_B.octets());
    ethernet([0xff; 6], 0x0806, &arp)
}

/// Puts `count` copies of `frame` on the wire, waiting for ring space, and frees whatever comes
/// back the other way so the peer's transmit never stalls.
fn inject(q: &mut MemQueue, frame: &[u8], count: u64) {
    let mut burst: Vec<PoolFrame> = Vec::with_capacity(32);
    let mut back: Vec<PoolFrame> = Vec::with_capacity(64);
    let mut built = 0u64;
    let mut sent = 0u64;
    while sent < count {
        while burst.len() < 32 && built < count {
            let Some(mut f) = q.alloc_tx() else { break };
            f.set_len(frame.len());
            f.data_mut().copy_from_slice(frame);
            burst.push(f);
            built += 1;
        }
        let n = q.tx_burst(&mut burst);
        sent += n as u64;
        q.rx_burst(&mut back, 64);
        for f in back.drain(..) {
            q.free(f);
        }
        if n == 0 {
            std::hint::spin_loop();
        }
    }
}

fn bench_ingress(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingress");
    g.throughput(Throughput::Elements(INGRESS_FRAMES));

    // Baseline: the wire alone, small frames, a thread that frees what it receives.
    {
        let (mut a, b) = wire(MemConfig::default());
        let drain = Drain::start(b);
        let frame = udp_frame(MAC_B, SINK_PORT, 18);
        g.bench_function("mem_wire_only_60B", |bch| {
            bch.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = drain.frames.load(Ordering::Acquire) + INGRESS_FRAMES;
                    inject(&mut a, &frame, INGRESS_FRAMES);
                    while drain.frames.load(Ordering::Acquire) < target {
                        std::hint::spin_loop();
                    }
                }
                start.elapsed()
            })
        });
    }

    let (mut a, b) = wire(MemConfig::default());
    let sunk = Arc::new(AtomicU64::new(0));
    let marks = Arc::new(AtomicU64::new(0));
    let (s, m) = (sunk.clone(), marks.clone());
    let stack = Stack::start_on(stack_config("198.18.0.2/24", MAC_B), vec![b], move |_| {
        UdpSink {
            buf: vec![0u8; 2048].into_boxed_slice(),
            sink: None,
            sunk: s.clone(),
            marks: m.clone(),
        }
    })
    .expect("stack starts");
    let marker = udp_frame(MAC_B, MARK_PORT, 18);
    let arp = arp_request();
    // Frames 60 bytes long (the Ethernet minimum without FCS) or 1514 (a full MTU).
    let variants: [(&str, Vec<u8>); 4] = [
        (
            "drop_not_for_us_60B",
            udp_frame([2, 0, 0, 0, 0, 9], SINK_PORT, 18),
        ),
        (
            "udp_closed_port_icmp_60B",
            udp_frame(MAC_B, CLOSED_PORT, 18),
        ),
        ("udp_sink_60B", udp_frame(MAC_B, SINK_PORT, 18)),
        ("udp_sink_1514B", udp_frame(MAC_B, SINK_PORT, 1472)),
    ];
    for (name, frame) in &variants {
        let before = stack.stats_now()[0];
        let sunk_before = sunk.load(Ordering::Acquire);
        let mut injected = 0u64;
        let mut back: Vec<PoolFrame> = Vec::with_capacity(64);
        g.bench_with_input(BenchmarkId::new("longhaul", name), frame, |bch, frame| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Keep A in B's neighbour cache (the ICMP answers need it); not timed.
                    inject(&mut a, &arp, 1);
                    let mark = marks.load(Ordering::Acquire);
                    let start = Instant::now();
                    inject(&mut a, frame, INGRESS_FRAMES);
                    inject(&mut a, &marker, 1);
                    while marks.load(Ordering::Acquire) == mark {
                        a.rx_burst(&mut back, 64);
                        for f in back.drain(..) {
                            a.free(f);
                        }
                    }
                    total += start.elapsed();
                    injected += INGRESS_FRAMES;
                }
                total
            })
        });
        let d = sub(stack.stats_now()[0], before);
        eprintln!(
            "ingress/longhaul/{name}: injected {injected} test frames; stack frames_in +{} frames_out +{} \
             not_for_us +{} no_socket +{} bad_checksum +{} malformed +{}; app read +{} datagrams",
            d.frames_in,
            d.frames_out,
            d.drop_not_for_us,
            d.no_socket,
            d.drop_bad_checksum,
            d.drop_malformed,
            sunk.load(Ordering::Acquire) - sunk_before,
        );
        assert_eq!(
            d.drop_bad_checksum + d.drop_malformed,
            0,
            "the bench builds bad frames"
        );
    }
    g.finish();
    assert!(stack.is_running(), "the core died during the bench");
    drop(stack);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_bulk, bench_ingress
}
criterion_main!(benches);
