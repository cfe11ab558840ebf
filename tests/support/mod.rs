//! Apps and helpers shared by the in-process tests (two stacks over the `mem` wire).
#![allow(dead_code)]

pub mod sim;

use longhaul::pmd::mem::{self, MemConfig, MemQueue};
use longhaul::{App, Config, ConnId, Error, Event, Io, Stack};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SERVER_IP: &str = "198.18.0.1/24";
pub const CLIENT_IP: &str = "198.18.0.2/24";
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

pub fn server_addr(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new([198, 18, 0, 1].into(), port)
}

pub fn config(ip: &str, mac: [u8; 6]) -> Config {
    let mut c = Config::new();
    c.ip(ip).unwrap().mac(mac).unwrap();
    c.pin_threads(false);
    c
}

/// Two stacks joined by a `mem` wire: `server` on end A, `client` on end B.
pub fn pair<S: App, C: App>(
    wire: MemConfig,
    server: impl Fn(usize) -> S + Send + Sync + 'static,
    client: impl Fn(usize) -> C + Send + Sync + 'static,
) -> (Stack, Stack, Arc<mem::MemStats>, Arc<mem::MemStats>) {
    let (a, b): (MemQueue, MemQueue) = mem::wire(wire);
    let (sa, sb) = (a.stats(), b.stats());
    let s = Stack::start_on(config(SERVER_IP, SERVER_MAC), vec![a], server).expect("server stack");
    let c = Stack::start_on(config(CLIENT_IP, CLIENT_MAC), vec![b], client).expect("client stack");
    (s, c, sa, sb)
}

/// The byte at `offset` of stream `seed`: every stream has its own deterministic content.
pub fn pattern(seed: u64, offset: u64) -> u8 {
    let x = offset.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (x ^ (x >> 8) ^ (x >> 17)).wrapping_mul(31) as u8
}

/// Echoes TCP on `port` with backpressure; counts connections that ended normally.
pub struct Echo {
    pub port: u16,
    pub buf: Vec<u8>,
    pub closed: Arc<AtomicU64>,
}

impl Echo {
    pub fn new(port: u16, closed: Arc<AtomicU64>) -> Self {
        Echo {
            port,
            buf: vec![0; 64 * 1024],
            closed,
        }
    }

    fn pump(&mut self, io: &mut Io, c: ConnId) {
        loop {
            let room = io.write_space(c).min(self.buf.len());
            if room == 0 {
                return;
            }
            match io.read(c, &mut self.buf[..room]) {
                Ok(0) => {
                    let _ = io.shutdown(c);
                    return;
                }
                Ok(n) => {
                    assert_eq!(io.write(c, &self.buf[..n]), Ok(n));
                }
                Err(_) => return,
            }
        }
    }
}

impl App for Echo {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(self.port).unwrap();
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        match ev {
            Event::Readable(c) | Event::Writable(c) | Event::PeerClosed(c) => self.pump(io, c),
            Event::Closed(_) => {
                self.closed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// What an [`EchoClient`] saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Connections whose whole stream came back intact, followed by end of stream.
    pub verified: usize,
    /// Connections that ended otherwise (error event, wrong byte, early end).
    pub failed: Vec<String>,
    pub bytes_checked: u64,
}

struct Stream {
    seed: u64,
    sent: u64,
    recvd: u64,
    shut: bool,
}

/// Opens `conns` connections, sends `size` bytes of [`pattern`] on each, half-closes, and checks
/// that exactly those bytes come back followed by end of stream.
pub struct EchoClient {
    pub target: SocketAddrV4,
    pub conns: usize,
    pub size: u64,
    streams: HashMap<ConnId, Stream>,
    buf: Vec<u8>,
    pub report: Arc<Mutex<Report>>,
}

impl EchoClient {
    pub fn new(target: SocketAddrV4, conns: usize, size: u64, report: Arc<Mutex<Report>>) -> Self {
        EchoClient {
            target,
            conns,
            size,
            streams: HashMap::new(),
            buf: vec![0; 32 * 1024],
            report,
        }
    }

    fn send_more(&mut self, io: &mut Io, c: ConnId) {
        let Some(st) = self.streams.get_mut(&c) else {
            return;
        };
        while st.sent < self.size {
            let n = ((self.size - st.sent) as usize).min(self.buf.len());
            for (i, b) in self.buf[..n].iter_mut().enumerate() {
                *b = pattern(st.seed, st.sent + i as u64);
            }
            match io.write(c, &self.buf[..n]) {
                Ok(w) => st.sent += w as u64,
                Err(Error::WouldBlock) => return,
                Err(e) => {
                    self.report
                        .lock()
                        .unwrap()
                        .failed
                        .push(format!("write: {e}"));
                    return;
                }
            }
        }
        if !st.shut {
            st.shut = true;
            io.shutdown(c).unwrap();
        }
    }

    fn receive(&mut self, io: &mut Io, c: ConnId) {
        let Some(st) = self.streams.get_mut(&c) else {
            return;
        };
        loop {
            match io.read(c, &mut self.buf) {
                Ok(0) => {
                    let mut r = self.report.lock().unwrap();
                    if st.recvd == self.size {
                        r.verified += 1;
                    } else {
                        r.failed
                            .push(format!("early end after {} of {}", st.recvd, self.size));
                    }
                    let _ = io.close(c);
                    self.streams.remove(&c);
                    return;
                }
                Ok(n) => {
                    for (i, &b) in self.buf[..n].iter().enumerate() {
                        if b != pattern(st.seed, st.recvd + i as u64) {
                            self.report
                                .lock()
                                .unwrap()
                                .failed
                                .push(format!("wrong byte at {}", st.recvd + i as u64));
                            let _ = io.abort(c);
                            self.streams.remove(&c);
                            return;
                        }
                    }
                    st.recvd += n as u64;
                    self.report.lock().unwrap().bytes_checked += n as u64;
                }
                Err(_) => return,
            }
        }
    }
}

impl App for EchoClient {
    fn on_start(&mut self, io: &mut Io) {
        for i in 0..self.conns {
            let c = io.connect(self.target).unwrap();
            self.streams.insert(
                c,
                Stream {
                    seed: i as u64 + 1,
                    sent: 0,
                    recvd: 0,
                    shut: false,
                },
            );
        }
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        match ev {
            Event::Connected(c) | Event::Writable(c) => self.send_more(io, c),
            Event::Readable(c) | Event::PeerClosed(c) => self.receive(io, c),
            Event::Error(c, e) => {
                self.streams.remove(&c);
                self.report
                    .lock()
                    .unwrap()
                    .failed
                    .push(format!("error: {e}"));
            }
            _ => {}
        }
    }
}

/// Polls `done` every 10 ms until it returns true or `limit` passes; returns whether it did.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// An Ethernet/IPv4/TCP SYN (MSS 1460, window scale 7, SACK permitted) with valid checksums.
pub fn syn_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    seq: u32,
) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::*;
    let (src, dst) = (Ipv4Address::from(src), Ipv4Address::from(dst));
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: true,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &ChecksumCapabilities::default());
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(
        &mut t,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    buf
}
