//! One core's protocol engine and the handle apps use: [`Io`].
//!
//! TCP is longhaul's own ([`super::tcp::Conn`], a sans-IO state machine): connections live in a
//! slab with generations, found by a hash of the 4-tuple; listeners by port. Work is driven by a
//! dirty list (connections touched by a packet, an app call or a timer) and a timer heap keyed by
//! each connection's next deadline; no step visits all connections. smoltcp's `Interface` keeps
//! ARP replies, ICMP echo and UDP; TCP frames are built here straight into the port's buffers.

use super::api::{ConnError, ConnId, ConnInfo, Error, Event, ListenerId, TcpState, UdpId};
use super::config::{Config, MAX_BUFFER, MIN_BUFFER};
use super::demux::{self, Class, DropReason, FlowKey, Local};
use super::device::{Dev, TxSide, TX_BATCH};
use super::neigh::{self, Neighbours};
use super::stats::CoreStats;
use super::tcp::cc::CcAlgorithm;
use super::tcp::config::{Keepalive, TcpConfig};
use super::tcp::conn::{Conn as Tcb, End, State, Transmit};
use super::tcp::cookie::{self, CookieJar, Tuple};
use super::tcp::segment::{Flags, Options, Segment, Timestamp};
use super::tcp::wheel::{Expired, TimerWheel, DEFAULT_TICK};
use super::tcp::{Instant as TcpInstant, Seq};
use crate::pmd::{Frame, Queue};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpEndpoint, IpListenEndpoint};
use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// Local ports for outgoing connections (Linux's default `ip_local_port_range`).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;
/// UDP socket buffers: datagrams and bytes queued each way.
const UDP_SLOTS: usize = 256;
const UDP_BYTES: usize = 256 * 1024;
/// Ethernet + IPv4 header bytes in front of every TCP header we send.
const L2L3: usize = 14 + 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Took a SYN on a listening port; not yet established.
    HalfOpen(u16),
    /// Established from a listener.
    Accepted,
    /// Opened by `connect`.
    Active,
}

struct Conn {
    tcb: Tcb,
    key: FlowKey,
    /// Where frames for this connection go (the next hop's address); `None` until ARP answers.
    mac: Option<EthernetAddress>,
    role: Role,
    /// `Accepted`/`Connected` was delivered.
    announced: bool,
    /// The app holds the handle (false once it closed it or was told the connection ended).
    owned: bool,
    read_armed: bool,
    write_armed: bool,
    peer_fin_told: bool,
    /// `Closed`/`Error` was queued for the app.
    end_told: bool,
    we_shut: bool,
    in_dirty: bool,
    timer_at: Option<u64>,
    opts: Resolved,
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

struct Listener {
    opts: Resolved,
    cfg: Arc<TcpConfig>,
    half_open: usize,
}

struct UdpSock {
    set: SocketSet<'static>,
    handle: SocketHandle,
    port: u16,
    armed: bool,
    in_dirty: bool,
}

/// Per-connection settings that differ from the stack's [`Config`] (for example per proxy leg).
/// Unset fields take the configuration's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOptions {
    rmem: Option<usize>,
    wmem: Option<usize>,
    nodelay: Option<bool>,
    cc: Option<CcAlgorithm>,
}

impl ConnOptions {
    /// Options that change nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest receive buffer in bytes (4 KiB to 64 MiB; autotuning grows the buffer up to it).
    pub fn rmem(mut self, bytes: usize) -> Self {
        self.rmem = Some(bytes);
        self
    }

    /// Largest send buffer in bytes (4 KiB to 64 MiB).
    pub fn wmem(mut self, bytes: usize) -> Self {
        self.wmem = Some(bytes);
        self
    }

    /// `true` turns Nagle's algorithm off.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = Some(on);
        self
    }

    /// Congestion control for this connection.
    pub fn cc(mut self, algo: CcAlgorithm) -> Self {
        self.cc = Some(algo);
        self
    }
}

/// [`ConnOptions`] with the defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resolved {
    rmem: usize,
    wmem: usize,
    nodelay: bool,
    cc: CcAlgorithm,
}

/// Numbers the engine needs per connection, taken from the [`Config`].
#[derive(Clone, Debug)]
pub(crate) struct ConnDefaults {
    pub backlog: usize,
    pub syncookies: bool,
    pub tcp: TcpConfig,
}

impl ConnDefaults {
    fn new(c: &Config, mtu: usize) -> Self {
        let tcp = TcpConfig {
            rmem_max: c.rmem,
            rmem_initial: (128 << 10).min(c.rmem),
            wmem_max: c.wmem,
            wmem_initial: (64 << 10).min(c.wmem),
            link_mss: (mtu.saturating_sub(40)).clamp(88, 65495) as u16,
            mss_clamp: c.mss_clamp,
            nodelay: c.nodelay,
            rto_min: c.rto_min,
            rto_max: c.rto_max,
            keepalive: c.keepalive.map(|idle| Keepalive {
                idle,
                ..Keepalive::default()
            }),
            user_timeout: c.user_timeout,
            cc: c.cc,
            slow_start_after_idle: c.slow_start_after_idle,
            recovery: c.recovery,
            mtu_probing: c.mtu_probing,
            mtu_probe_interval: c.mtu_probe_interval,
            ..TcpConfig::default()
        };
        ConnDefaults {
            backlog: c.backlog,
            syncookies: c.syncookies,
            tcp,
        }
    }
}

/// One core's view of the stack: the API an [`crate::App`] calls. All calls are non-blocking and
/// O(1); their effect on the wire happens when the call returns to the core's loop.
pub struct Io {
    core: usize,
    now: Instant,
    tnow: TcpInstant,
    /// The app's one-shot deadline ([`Io::set_wakeup`]).
    wakeup: Option<Duration>,
    iface: Interface,
    caps: DeviceCapabilities,
    tx_checksum: bool,
    local: Local,
    /// The set for frames that belong to no socket (ARP, ICMP, UDP to closed ports).
    empty: SocketSet<'static>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    flows: HashMap<FlowKey, u32>,
    listeners: HashMap<u16, Listener>,
    udps: Vec<Option<UdpSock>>,
    udp_ports: HashMap<u16, u32>,
    dirty: Vec<u32>,
    dirty_spare: Vec<u32>,
    udp_dirty: Vec<u32>,
    udp_spare: Vec<u32>,
    /// Connections to look at again on the next loop iteration (transmit ring was full).
    again: Vec<u32>,
    arp_waiters: Vec<u32>,
    neigh: Neighbours,
    gateway: Option<Ipv4Addr>,
    netmask: u32,
    timers: TimerWheel,
    expired: Vec<Expired>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: CoreStats,
    defaults: ConnDefaults,
    default_cfg: Arc<TcpConfig>,
    cookies: CookieJar,
    secret: u64,
    ip_id: u16,
    next_port: u16,
    /// The port's receive-side scaling, when it spreads flows over several queues by Toeplitz
    /// hash: outgoing connections then pick local ports whose replies land on this core.
    rss: Option<crate::pmd::rss::RssConfig>,
    pub(crate) stopping: bool,
}

fn to_tcp_state(s: State) -> TcpState {
    match s {
        State::Closed => TcpState::Closed,
        State::SynSent => TcpState::SynSent,
        State::SynReceived => TcpState::SynReceived,
        State::Established => TcpState::Established,
        State::FinWait1 => TcpState::FinWait1,
        State::FinWait2 => TcpState::FinWait2,
        State::CloseWait => TcpState::CloseWait,
        State::Closing => TcpState::Closing,
        State::LastAck => TcpState::LastAck,
        State::TimeWait => TcpState::TimeWait,
    }
}

fn to_v4(ep: IpEndpoint) -> SocketAddrV4 {
    match ep.addr {
        IpAddress::Ipv4(a) => SocketAddrV4::new(a, ep.port),
    }
}

/// Internet checksum over `data`, folded, starting from `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes Ethernet + IPv4 headers in front of a TCP segment of `tcp_len` bytes already at
/// `buf[L2L3..]`, and the TCP checksum unless the port does it. Returns the frame length.
#[allow(clippy::too_many_arguments)]
fn finish_frame(
    buf: &mut [u8],
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    tcp_len: usize,
    sw_checksum: bool,
) -> usize {
    buf[0..6].copy_from_slice(dst_mac.as_bytes());
    buf[6..12].copy_from_slice(src_mac.as_bytes());
    buf[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (20 + tcp_len) as u16;
    let ip = &mut buf[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF: path MTU discovery (RFC 1191)
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    if sw_checksum {
        let c = checksum(0, &buf[14..34]);
        buf[24..26].copy_from_slice(&c.to_be_bytes());
        let s = u32::from(src);
        let d = u32::from(dst);
        let pseudo = (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + 6 + tcp_len as u32;
        let c = checksum(pseudo, &buf[L2L3..L2L3 + tcp_len]);
        buf[L2L3 + 16..L2L3 + 18].copy_from_slice(&c.to_be_bytes());
    }
    L2L3 + tcp_len
}

impl Io {
    pub(crate) fn new<Q: Queue>(
        core: usize,
        cfg: &Config,
        mac: [u8; 6],
        seed: u64,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
        now: Instant,
    ) -> Io {
        use smoltcp::wire::{HardwareAddress, IpCidr};
        let port_caps = queue.caps();
        let caps = super::device::capabilities(&port_caps);
        let mut dev = Dev {
            queue,
            tx,
            rx: None,
            caps: caps.clone(),
        };
        let mut icfg = smoltcp::iface::Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        icfg.random_seed = seed;
        let mut iface = Interface::new(icfg, &mut dev, now);
        let ip = cfg.ip.expect("checked by Stack::start");
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip.addr), ip.prefix));
        });
        if let Some(gw) = cfg.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        let mask = if ip.prefix >= 32 {
            0
        } else {
            u32::MAX >> ip.prefix
        };
        let broadcast = Ipv4Addr::from(u32::from(ip.addr) | mask);
        let port_span = (EPHEMERAL.end() - EPHEMERAL.start()) as u64;
        let defaults = ConnDefaults::new(cfg, port_caps.mtu);
        Io {
            core,
            now,
            tnow: TcpInstant::from_micros(now.total_micros().max(0) as u64),
            wakeup: None,
            iface,
            caps,
            tx_checksum: !port_caps.tx_checksum_offload,
            local: Local {
                mac: EthernetAddress(mac),
                ip: ip.addr,
                broadcast,
                verify_checksums: !port_caps.rx_checksum_offload,
            },
            empty: SocketSet::new(Vec::new()),
            slots: Vec::new(),
            free_slots: Vec::new(),
            flows: HashMap::new(),
            listeners: HashMap::new(),
            udps: Vec::new(),
            udp_ports: HashMap::new(),
            dirty: Vec::with_capacity(1024),
            dirty_spare: Vec::with_capacity(1024),
            udp_dirty: Vec::with_capacity(64),
            udp_spare: Vec::with_capacity(64),
            again: Vec::with_capacity(64),
            arp_waiters: Vec::new(),
            neigh: Neighbours::default(),
            gateway: cfg.gateway,
            netmask: !mask,
            timers: TimerWheel::new(TcpInstant::ZERO, DEFAULT_TICK),
            expired: Vec::with_capacity(256),
            events: VecDeque::with_capacity(1024),
            stats: CoreStats::default(),
            default_cfg: Arc::new(defaults.tcp.clone()),
            defaults,
            cookies: CookieJar::new(seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15),
            secret: seed,
            ip_id: seed as u16,
            next_port: EPHEMERAL.start() + (seed % port_span) as u16,
            rss: port_caps.rss.filter(|r| r.queues() > 1),
            stopping: false,
        }
    }

    // ---------------------------------------------------------------- public API

    /// This core's index (0-based).
    pub fn core_id(&self) -> usize {
        self.core
    }

    /// The stack's IPv4 address.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local.ip
    }

    /// This core's counters so far.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Listens on TCP `port` on this core. SYNs to it are accepted while fewer than `backlog`
    /// connections are half-open (then answered with SYN cookies); each established one arrives
    /// as [`Event::Accepted`].
    pub fn listen(&mut self, port: u16) -> Result<ListenerId, Error> {
        self.listen_with(port, ConnOptions::default())
    }

    /// [`Io::listen`] with per-connection options for the connections it accepts.
    pub fn listen_with(&mut self, port: u16, opts: ConnOptions) -> Result<ListenerId, Error> {
        if port == 0 {
            return Err(Error::InvalidArgument("port 0"));
        }
        if self.listeners.contains_key(&port) {
            return Err(Error::AddrInUse);
        }
        let opts = self.resolve(opts)?;
        let cfg = self.tcp_config(&opts);
        self.listeners.insert(
            port,
            Listener {
                opts,
                cfg,
                half_open: 0,
            },
        );
        Ok(ListenerId(port))
    }

    /// Stops listening. Connections already accepted or half-open are not affected.
    pub fn unlisten(&mut self, listener: ListenerId) {
        self.listeners.remove(&listener.0);
    }

    /// Opens a TCP connection to `remote`; [`Event::Connected`] or [`Event::Error`] follows.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, Error> {
        self.connect_with(remote, ConnOptions::default())
    }

    /// [`Io::connect`] with per-connection options.
    pub fn connect_with(
        &mut self,
        remote: SocketAddrV4,
        opts: ConnOptions,
    ) -> Result<ConnId, Error> {
        let opts = self.resolve(opts)?;
        if remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_broadcast() {
            return Err(Error::InvalidArgument("remote address"));
        }
        let mut key = FlowKey {
            remote_ip: *remote.ip(),
            remote_port: remote.port(),
            local_port: 0,
        };
        let span = (EPHEMERAL.end() - EPHEMERAL.start()) as u32 + 1;
        let mut found = false;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            key.local_port = p;
            let steered_here = self.rss.as_ref().is_none_or(|r| {
                r.queue_for(*remote.ip(), self.local.ip, remote.port(), p) == self.core
            });
            if steered_here && !self.flows.contains_key(&key) && !self.listeners.contains_key(&p) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(Error::NoFreePort);
        }
        let cfg = self.tcp_config(&opts);
        let local = SocketAddrV4::new(self.local.ip, key.local_port);
        let (iss, ts_offset) = self.isn(&key);
        let tcb = Tcb::connect(cfg, self.tnow, local, remote, iss, ts_offset);
        let hop = self.next_hop(*remote.ip());
        let mac = self.neigh.lookup(hop, self.now.total_micros());
        let idx = self.insert(tcb, key, mac, Role::Active, opts);
        self.flows.insert(key, idx);
        let c = self.conn_mut(idx).expect("just inserted");
        c.owned = true;
        self.mark_dirty(idx);
        Ok(self.id(idx))
    }

    /// Reads received bytes into `buf`. `Ok(0)` means the peer closed and everything was read;
    /// [`Error::WouldBlock`] means nothing is there yet ([`Event::Readable`] follows).
    pub fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        let idx = self.owned(conn)?;
        let now = self.tnow;
        let c = self.conn_mut(idx).expect("owned");
        let n = c.tcb.recv(now, buf);
        if n > 0 {
            // A read may open the window enough for an update, or drain a connection that ended
            // (its `Closed` waits for that).
            let ended = matches!(c.tcb.state(), State::Closed | State::TimeWait);
            if c.tcb.wants_transmit() || (ended && c.tcb.recv_available() == 0) {
                self.mark_dirty(idx);
            }
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if c.tcb.fin_received() {
            return Ok(0);
        }
        match c.tcb.state() {
            State::Closed | State::TimeWait if c.tcb.end() != Some(End::Normal) => {
                Err(Error::NotConnected)
            }
            _ => {
                c.read_armed = true;
                Err(Error::WouldBlock)
            }
        }
    }

    /// Queues bytes for sending and returns how many were taken (possibly fewer than `data.len()`).
    /// [`Error::WouldBlock`] when the send buffer is full ([`Event::Writable`] follows).
    pub fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        if c.we_shut {
            return Err(Error::WriteClosed);
        }
        if !c.tcb.may_send() {
            return Err(match c.tcb.state() {
                State::SynSent | State::SynReceived => {
                    c.write_armed = true;
                    Error::WouldBlock
                }
                _ => Error::NotConnected,
            });
        }
        let n = c.tcb.send(data);
        if n < data.len() {
            c.write_armed = true;
        }
        if n == 0 && !data.is_empty() {
            return Err(Error::WouldBlock);
        }
        self.mark_dirty(idx);
        Ok(n)
    }

    /// Free space in the send buffer. When it is 0, [`Event::Writable`] follows once there is room.
    pub fn write_space(&mut self, conn: ConnId) -> usize {
        let Ok(idx) = self.owned(conn) else {
            return 0;
        };
        let c = self.conn_mut(idx).expect("owned");
        let space = c.tcb.send_space();
        if space == 0 {
            c.write_armed = true;
        }
        space
    }

    /// Bytes received and not yet read.
    pub fn read_available(&mut self, conn: ConnId) -> usize {
        match self.owned(conn) {
            Ok(idx) => self.conn_mut(idx).expect("owned").tcb.recv_available(),
            Err(_) => 0,
        }
    }

    /// Closes the sending direction: FIN goes out after the queued data. Reading goes on.
    pub fn shutdown(&mut self, conn: ConnId) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let now = self.tnow;
        let c = self.conn_mut(idx).expect("owned");
        if !c.we_shut {
            c.we_shut = true;
            c.tcb.shutdown(now);
            self.mark_dirty(idx);
        }
        Ok(())
    }

    /// Releases the handle. Queued data is still delivered and the connection closes in the
    /// background; if received data was left unread, the peer gets a reset instead (as Linux does).
    pub fn close(&mut self, conn: ConnId) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let now = self.tnow;
        let c = self.conn_mut(idx).expect("owned");
        c.owned = false;
        c.we_shut = true;
        if c.tcb.recv_available() > 0 {
            c.tcb.abort();
        } else {
            c.tcb.shutdown(now);
            c.tcb.orphan(now);
        }
        self.mark_dirty(idx);
        Ok(())
    }

    /// Resets the connection (RST) and releases the handle at once.
    pub fn abort(&mut self, conn: ConnId) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        c.owned = false;
        c.tcb.abort();
        self.mark_dirty(idx);
        Ok(())
    }

    /// Turns Nagle's algorithm off (`true`, like TCP_NODELAY) or on for one connection.
    pub fn set_nodelay(&mut self, conn: ConnId, nodelay: bool) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        c.tcb.set_nodelay(nodelay);
        self.mark_dirty(idx);
        Ok(())
    }

    /// Cork mode (like `TCP_CORK`): partial segments wait until uncorked, at most 200 ms.
    pub fn set_cork(&mut self, conn: ConnId, on: bool) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let now = self.tnow;
        let c = self.conn_mut(idx).expect("owned");
        c.tcb.set_cork(on, now);
        self.mark_dirty(idx);
        Ok(())
    }

    /// A snapshot of the connection's state, queues and TCP counters.
    pub fn info(&mut self, conn: ConnId) -> Option<ConnInfo> {
        let idx = self.owned(conn).ok()?;
        let now = self.tnow;
        let c = self.conn_mut(idx)?;
        let (rmem, wmem) = (c.opts.rmem, c.opts.wmem);
        Some(ConnInfo {
            state: to_tcp_state(c.tcb.state()),
            local: c.tcb.local,
            remote: c.tcb.remote,
            recv_queue: c.tcb.recv_available(),
            send_queue: c.tcb.send_queued(),
            rmem,
            wmem,
            nodelay: c.tcb.nodelay(),
            cc: c.tcb.congestion_control().name(),
            cc_state: c.tcb.congestion_control().state(),
            tcp: c.tcb.info(now),
        })
    }

    /// Every live connection of this core with its info (for `longhaul stat`), including those
    /// the app no longer holds (closing, TIME-WAIT).
    pub fn all_info(&self) -> Vec<ConnInfo> {
        let now = self.tnow;
        self.slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .map(|c| ConnInfo {
                state: to_tcp_state(c.tcb.state()),
                local: c.tcb.local,
                remote: c.tcb.remote,
                recv_queue: c.tcb.recv_available(),
                send_queue: c.tcb.send_queued(),
                rmem: c.opts.rmem,
                wmem: c.opts.wmem,
                nodelay: c.tcb.nodelay(),
                cc: c.tcb.congestion_control().name(),
                cc_state: c.tcb.congestion_control().state(),
                tcp: c.tcb.info(now),
            })
            .collect()
    }

    /// Bytes of state the TCP connections of this core hold (structures and buffers; for the
    /// idle-connection memory test).
    pub fn tcp_memory(&self) -> usize {
        let per = std::mem::size_of::<Slot>();
        let bufs: usize = self
            .slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .map(|c| c.tcb.buffer_memory() + c.tcb.congestion_control_size())
            .sum();
        let map = self.flows.capacity()
            * (std::mem::size_of::<FlowKey>() + std::mem::size_of::<u32>() + 8);
        self.slots.capacity() * per + bufs + map
    }

    /// Binds a UDP socket to `port` on this core.
    pub fn udp_bind(&mut self, port: u16) -> Result<UdpId, Error> {
        if port == 0 {
            return Err(Error::InvalidArgument("port 0"));
        }
        if self.udp_ports.contains_key(&port) {
            return Err(Error::AddrInUse);
        }
        let buf = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_SLOTS],
                vec![0u8; UDP_BYTES],
            )
        };
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(IpListenEndpoint { addr: None, port })
            .map_err(|_| Error::AddrInUse)?;
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(s);
        let sock = UdpSock {
            set,
            handle,
            port,
            armed: true,
            in_dirty: false,
        };
        let idx = match self.udps.iter().position(Option::is_none) {
            Some(i) => {
                self.udps[i] = Some(sock);
                i
            }
            None => {
                self.udps.push(Some(sock));
                self.udps.len() - 1
            }
        } as u32;
        self.udp_ports.insert(port, idx);
        Ok(UdpId { idx })
    }

    /// Receives one datagram into `buf` (truncated if longer) and says who sent it.
    pub fn udp_recv(&mut self, id: UdpId, buf: &mut [u8]) -> Result<(usize, SocketAddrV4), Error> {
        let u = self.udp_mut(id)?;
        let s = u.set.get_mut::<udp::Socket>(u.handle);
        match s.recv_slice(buf) {
            Ok((n, meta)) => Ok((n, to_v4(meta.endpoint))),
            Err(udp::RecvError::Truncated) => Err(Error::InvalidArgument("buffer too small")),
            Err(_) => {
                u.armed = true;
                Err(Error::WouldBlock)
            }
        }
    }

    /// Queues one datagram to `to`. [`Error::WouldBlock`] when the socket's send buffer is full.
    pub fn udp_send(&mut self, id: UdpId, data: &[u8], to: SocketAddrV4) -> Result<(), Error> {
        let idx = id.idx;
        let u = self.udp_mut(id)?;
        let s = u.set.get_mut::<udp::Socket>(u.handle);
        let ep = IpEndpoint::new(IpAddress::Ipv4(*to.ip()), to.port());
        match s.send_slice(data, ep) {
            Ok(()) => {}
            Err(udp::SendError::BufferFull) => return Err(Error::WouldBlock),
            Err(_) => return Err(Error::InvalidArgument("destination or size")),
        }
        if !u.in_dirty {
            u.in_dirty = true;
            self.udp_dirty.push(idx);
        }
        Ok(())
    }

    /// Closes a UDP socket.
    pub fn udp_close(&mut self, id: UdpId) {
        if let Some(Some(u)) = self.udps.get(id.idx as usize) {
            self.udp_ports.remove(&u.port);
            self.udps[id.idx as usize] = None;
        }
    }

    /// This core's clock: time since the stack started (monotonic; virtual in simulations).
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.tnow.as_nanos())
    }

    /// Asks for one [`crate::App::on_wakeup`] call once `now()` reaches `at` (replacing any earlier
    /// request; `None` cancels). The core sleeps no longer than that.
    pub fn set_wakeup(&mut self, at: Option<Duration>) {
        self.wakeup = at;
    }

    // ---------------------------------------------------------------- engine (core loop only)

    /// Takes the app's deadline when it has passed.
    pub(crate) fn take_due_wakeup(&mut self) -> bool {
        match self.wakeup {
            Some(at) if at <= self.now() => {
                self.wakeup = None;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.tnow = TcpInstant::from_micros(now.total_micros().max(0) as u64);
    }

    /// Live TCP connections (all states).
    pub(crate) fn live_conns(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// True when no connection is left (used to end the stop drain early).
    pub(crate) fn only_listeners_left(&self) -> bool {
        self.live_conns() == 0
    }

    /// Processes one received frame. Returns true when it was ARP (so other cores see it too).
    pub(crate) fn ingress<Q: Queue>(
        &mut self,
        frame: &[u8],
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) -> bool {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        let class = demux::classify(frame, &self.local);
        let now = self.now;
        match class {
            Class::Drop(reason) => {
                let c = match reason {
                    DropReason::Malformed => &mut self.stats.drop_malformed,
                    DropReason::BadChecksum => &mut self.stats.drop_bad_checksum,
                    DropReason::NotForUs => &mut self.stats.drop_not_for_us,
                    DropReason::Unsupported => &mut self.stats.drop_unsupported,
                };
                *c += 1;
                false
            }
            Class::Arp => {
                let mut dev = self.dev(queue, tx, Some(frame));
                self.iface
                    .poll_ingress_single(now, &mut dev, &mut self.empty);
                if self.neigh.learn_arp(frame, now.total_micros()).is_some() {
                    for idx in std::mem::take(&mut self.arp_waiters) {
                        self.mark_dirty(idx);
                    }
                }
                true
            }
            Class::OtherIp => {
                self.icmp_to_tcp(frame);
                let mut dev = self.dev(queue, tx, Some(frame));
                self.iface
                    .poll_ingress_single(now, &mut dev, &mut self.empty);
                false
            }
            Class::Udp { local_port } => {
                let mut dev = Dev {
                    queue,
                    tx,
                    rx: Some(frame),
                    caps: self.caps.clone(),
                };
                match self.udp_ports.get(&local_port) {
                    Some(&i) => {
                        let u = self.udps[i as usize].as_mut().expect("udp port map");
                        self.iface.poll_ingress_single(now, &mut dev, &mut u.set);
                        if u.armed && u.set.get::<udp::Socket>(u.handle).can_recv() {
                            u.armed = false;
                            self.events.push_back(Event::UdpReadable(UdpId { idx: i }));
                        }
                    }
                    None => {
                        self.stats.no_socket += 1;
                        self.iface
                            .poll_ingress_single(now, &mut dev, &mut self.empty);
                    }
                }
                false
            }
            Class::Tcp {
                key,
                syn_only,
                has_data,
            } => {
                self.tcp_ingress(frame, key, syn_only, has_data, queue, tx);
                false
            }
        }
    }

    fn dev<'a, Q: Queue>(
        &self,
        queue: &'a mut Q,
        tx: &'a mut TxSide<Q::Frame>,
        rx: Option<&'a [u8]>,
    ) -> Dev<'a, Q> {
        Dev {
            queue,
            tx,
            rx,
            caps: self.caps.clone(),
        }
    }

    fn tcp_ingress<Q: Queue>(
        &mut self,
        frame: &[u8],
        key: FlowKey,
        syn_only: bool,
        has_data: bool,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) {
        // demux checked the lengths: Ethernet, IPv4 header and total length all fit.
        let ip = &frame[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let total = (u16::from_be_bytes([ip[2], ip[3]]) as usize).min(ip.len());
        let tcp = &ip[ihl..total];
        let Ok((seg, hlen)) = Segment::parse(tcp) else {
            self.stats.drop_malformed += 1;
            return;
        };
        let payload = &tcp[hlen..];
        let src_mac = EthernetAddress::from_bytes(&frame[6..12]);
        let now = self.tnow;
        if self.on_link(key.remote_ip) {
            self.neigh
                .learn(key.remote_ip, src_mac, self.now.total_micros());
        }

        if let Some(&idx) = self.flows.get(&key) {
            let listening = self.listeners.contains_key(&key.local_port);
            let c = self.slots[idx as usize].conn.as_mut().expect("flow map");
            //= rfc9293#section-3.10.7.4
            // A new SYN for a connection in TIME-WAIT starts a new incarnation when its sequence
            // number is above the old one's (as Linux does, RFC 6191): the listener takes it.
            let reincarnation = syn_only
                && listening
                && !c.owned
                && c.tcb.state() == State::TimeWait
                && seg.seq.gt(c.tcb.rcv_nxt());
            if !reincarnation {
                c.mac = Some(src_mac);
                c.tcb.handle_segment(now, &seg, payload);
                // Like epoll's edge-triggered mode: new data (or FIN) is a new edge.
                c.read_armed |= has_data;
                if c.tcb.ack_due() && has_data {
                    //= rfc9293#section-3.8.6.3
                    // The ACK for every second segment goes out now, not at the end of the burst.
                    self.service(idx, queue, tx);
                } else {
                    self.mark_dirty(idx);
                }
                return;
            }
            self.release(idx);
        }

        let listening = !self.stopping && self.listeners.contains_key(&key.local_port);
        if listening && syn_only {
            self.on_syn(key, &seg, src_mac, queue, tx);
            return;
        }
        if listening && seg.flags.ack && !seg.flags.syn && !seg.flags.rst {
            if let Some(idx) = self.cookie_ack(key, &seg, src_mac) {
                let c = self.slots[idx as usize].conn.as_mut().expect("inserted");
                c.tcb.handle_segment(now, &seg, payload);
                c.read_armed |= has_data;
                self.mark_dirty(idx);
                return;
            }
        }
        self.stats.no_socket += 1;
        self.reply_rst(key, &seg, src_mac, queue, tx);
    }

    /// A SYN for a listening port: a half-open connection, or a SYN cookie when the SYN queue
    /// is full.
    fn on_syn<Q: Queue>(
        &mut self,
        key: FlowKey,
        seg: &Segment,
        src_mac: EthernetAddress,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) {
        let l = &self.listeners[&key.local_port];
        let (cfg, opts) = (l.cfg.clone(), l.opts);
        if l.half_open >= self.defaults.backlog {
            if !self.defaults.syncookies {
                // Like Linux without SYN cookies: drop and let the peer retransmit.
                self.stats.drop_syn_backlog += 1;
                return;
            }
            self.send_cookie(key, seg, src_mac, &cfg, queue, tx);
            return;
        }
        let local = SocketAddrV4::new(self.local.ip, key.local_port);
        let remote = SocketAddrV4::new(key.remote_ip, key.remote_port);
        let (iss, ts_offset) = self.isn(&key);
        let tcb = Tcb::accept(cfg, self.tnow, local, remote, seg, iss, ts_offset);
        let idx = self.insert_half_open(tcb, key, src_mac, opts);
        self.mark_dirty(idx);
    }

    fn cookie_tuple(&self, key: &FlowKey) -> Tuple {
        Tuple {
            local_ip: u32::from(self.local.ip),
            local_port: key.local_port,
            remote_ip: u32::from(key.remote_ip),
            remote_port: key.remote_port,
        }
    }

    /// Answers a SYN statelessly with a SYN cookie.
    fn send_cookie<Q: Queue>(
        &mut self,
        key: FlowKey,
        syn: &Segment,
        src_mac: EthernetAddress,
        cfg: &TcpConfig,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) {
        let secs = self.tnow.as_millis() / 1000;
        let tuple = self.cookie_tuple(&key);
        let (isn, mss) = self
            .cookies
            .make(&tuple, syn.seq, syn.opts.mss.unwrap_or(536), secs);
        let (_, ts_offset) = self.isn(&key);
        let mut opts = Options {
            mss: Some(mss.min(cfg.advertised_mss())),
            ..Options::default()
        };
        if let (Some(ts), true) = (syn.opts.timestamp, cfg.timestamps) {
            // Window scale and SACK only survive inside the timestamp. The cookie keeps the
            // peer's shift (as Linux's cookie_init_timestamp): ours is recomputed from the config.
            let peer_ws = syn.opts.wscale.filter(|_| cfg.window_scaling);
            let sack = syn.opts.sack_permitted && cfg.sack;
            let now_ts = (self.tnow.as_millis() as u32).wrapping_add(ts_offset);
            opts.timestamp = Some(Timestamp {
                val: cookie::encode_timestamp(now_ts, peer_ws, sack),
                ecr: ts.val,
            });
            opts.wscale = peer_ws.map(|_| cfg.rcv_wscale());
            opts.sack_permitted = sack;
        }
        let seg = Segment {
            src_port: key.local_port,
            dst_port: key.remote_port,
            seq: isn,
            ack: syn.seq + 1,
            flags: Flags {
                syn: true,
                ack: true,
                ..Flags::default()
            },
            window: cfg.rmem_initial.min(65535) as u16,
            opts,
            len: 0,
        };
        self.stats.syncookies_sent += 1;
        self.send_stateless(key.remote_ip, src_mac, &seg, queue, tx);
    }

    /// An ACK that may complete a SYN-cookie handshake: a connection when the cookie is good.
    fn cookie_ack(&mut self, key: FlowKey, seg: &Segment, src_mac: EthernetAddress) -> Option<u32> {
        if !self.defaults.syncookies || self.stats.syncookies_sent == 0 {
            return None;
        }
        let secs = self.tnow.as_millis() / 1000;
        let tuple = self.cookie_tuple(&key);
        let Some(mss) = self.cookies.check(&tuple, seg.seq, seg.ack, secs) else {
            self.stats.syncookies_failed += 1;
            return None;
        };
        self.stats.syncookies_ok += 1;
        let l = &self.listeners[&key.local_port];
        let (cfg, opts) = (l.cfg.clone(), l.opts);
        let syn_opts = cookie::restored_options(mss, seg.opts.timestamp);
        let local = SocketAddrV4::new(self.local.ip, key.local_port);
        let remote = SocketAddrV4::new(key.remote_ip, key.remote_port);
        let (_, ts_offset) = self.isn(&key);
        let iss = seg.ack + u32::MAX;
        let tcb = Tcb::from_cookie(cfg, self.tnow, local, remote, seg, syn_opts, iss, ts_offset);
        let idx = self.insert_half_open(tcb, key, src_mac, opts);
        Some(idx)
    }

    /// RFC 9293 §3.10.7.1: a segment for no connection gets a reset (never a reset for a reset).
    fn reply_rst<Q: Queue>(
        &mut self,
        key: FlowKey,
        seg: &Segment,
        src_mac: EthernetAddress,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) {
        if seg.flags.rst {
            return;
        }
        let mut rst = Segment {
            src_port: key.local_port,
            dst_port: key.remote_port,
            ..Segment::default()
        };
        if seg.flags.ack {
            rst.seq = seg.ack;
            rst.flags.rst = true;
        } else {
            rst.seq = Seq(0);
            rst.ack = seg.seq + seg.seq_len();
            rst.flags = Flags {
                rst: true,
                ack: true,
                ..Flags::default()
            };
        }
        self.stats.tcp_rst_sent += 1;
        self.send_stateless(key.remote_ip, src_mac, &rst, queue, tx);
    }

    /// Sends a segment with no payload that belongs to no connection.
    fn send_stateless<Q: Queue>(
        &mut self,
        dst: Ipv4Addr,
        dst_mac: EthernetAddress,
        seg: &Segment,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) {
        let Some(mut frame) = self.tx_frame(queue, tx) else {
            return;
        };
        frame.set_len(frame.capacity());
        let buf = frame.data_mut();
        let hlen = seg.emit(&mut buf[L2L3..]);
        self.ip_id = self.ip_id.wrapping_add(1);
        let len = finish_frame(
            buf,
            self.local.mac,
            dst_mac,
            self.local.ip,
            dst,
            self.ip_id,
            hlen,
            self.tx_checksum,
        );
        frame.set_len(len);
        tx.frames += 1;
        tx.bytes += len as u64;
        tx.batch.push(frame);
    }

    /// A transmit buffer with room in the batch, or `None` when the port is full for now.
    fn tx_frame<Q: Queue>(&mut self, queue: &mut Q, tx: &mut TxSide<Q::Frame>) -> Option<Q::Frame> {
        if tx.batch.len() >= TX_BATCH {
            tx.flush(queue);
            if tx.batch.len() >= TX_BATCH {
                tx.ring_full += 1;
                return None;
            }
        }
        let f = queue.alloc_tx();
        if f.is_none() {
            tx.ring_full += 1;
        }
        f
    }

    /// ICMP errors about our TCP segments (RFC 1122 §4.2.3.9, RFC 1191): frag-needed lowers the
    /// connection's MSS; unreachable fails a connect. Checked against the connection's sequence
    /// space (RFC 5927), so a forged message for another range is ignored.
    fn icmp_to_tcp(&mut self, frame: &[u8]) {
        let ip = &frame[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ip.len() < ihl + 8 + 20 + 8 || ip[9] != 1 {
            return;
        }
        let icmp = &ip[ihl..];
        let (ty, code) = (icmp[0], icmp[1]);
        if ty != 3 {
            return;
        }
        let inner = &icmp[8..];
        let ihl2 = ((inner[0] & 0x0f) as usize) * 4;
        if inner[9] != 6 || inner.len() < ihl2 + 8 || inner[12..16] != self.local.ip.octets() {
            return;
        }
        let th = &inner[ihl2..];
        let key = FlowKey {
            remote_ip: Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
            remote_port: u16::from_be_bytes([th[2], th[3]]),
            local_port: u16::from_be_bytes([th[0], th[1]]),
        };
        let seq = Seq(u32::from_be_bytes([th[4], th[5], th[6], th[7]]));
        let Some(&idx) = self.flows.get(&key) else {
            self.stats.icmp_ignored += 1;
            return;
        };
        let c = self.slots[idx as usize].conn.as_mut().expect("flow map");
        let used = if code == 4 {
            let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
            // RFC 1191 §7: an old router sends 0; use the next lower plateau under what was sent.
            let mtu = if mtu < 68 {
                let sent = u16::from_be_bytes([inner[2], inner[3]]);
                [1492u16, 1006, 508, 296, 68]
                    .into_iter()
                    .find(|&p| p < sent)
                    .unwrap_or(68)
            } else {
                mtu
            };
            c.tcb.handle_frag_needed(seq, mtu)
        } else {
            c.tcb.handle_unreachable(seq)
        };
        if used {
            self.stats.icmp_to_tcp += 1;
            self.mark_dirty(idx);
        } else {
            self.stats.icmp_ignored += 1;
        }
    }

    /// Runs the timers that are due and marks their connections dirty.
    pub(crate) fn expire_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.timers.expire_entries(self.tnow, &mut expired);
        for e in expired.drain(..) {
            let slot = &mut self.slots[e.id as usize];
            if slot.gen != e.gen {
                continue;
            }
            if let Some(c) = slot.conn.as_mut() {
                // Lazy cancellation: only the connection's current deadline counts.
                if c.timer_at == Some(e.at.as_nanos()) {
                    c.timer_at = None;
                    c.tcb.handle_timeout(self.tnow);
                    self.mark_dirty(e.id);
                }
            }
        }
        self.expired = expired;
    }

    /// The next timer deadline, if any (for the idle sleep).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let tcp = self
            .timers
            .next_deadline()
            .map(|at| Instant::from_micros(at.as_micros() as i64 + 1));
        let app = self
            .wakeup
            .map(|at| Instant::from_micros(at.as_micros() as i64 + 1));
        match (tcp, app) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when there is work that does not wait for a packet or a timer.
    pub(crate) fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.again.is_empty()
            || !self.udp_dirty.is_empty()
            || !self.events.is_empty()
    }

    /// Sends what the touched connections have to send and turns their changes into events.
    pub(crate) fn service_dirty<Q: Queue>(&mut self, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        // Connections left over from a full ring get their turn now.
        // (Indexing, not `mem::take`: a taken Vec would leave an empty one that reallocates on
        // the next push, once per full ring.)
        for i in 0..self.again.len() {
            let idx = self.again[i];
            if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                c.in_dirty = false;
            }
            self.mark_dirty(idx);
        }
        self.again.clear();
        let mut dirty = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.dirty_spare));
        for &idx in &dirty {
            // Entries whose connection was serviced since it was listed (inline ACK) are stale.
            let listed = self.slots[idx as usize]
                .conn
                .as_ref()
                .is_some_and(|c| c.in_dirty);
            if listed {
                self.service(idx, queue, tx);
            }
        }
        dirty.clear();
        self.dirty_spare = dirty;
        let mut udp_dirty =
            std::mem::replace(&mut self.udp_dirty, std::mem::take(&mut self.udp_spare));
        for &i in &udp_dirty {
            if let Some(u) = self.udps.get_mut(i as usize).and_then(Option::as_mut) {
                u.in_dirty = false;
                let mut dev = Dev {
                    queue: &mut *queue,
                    tx: &mut *tx,
                    rx: None,
                    caps: self.caps.clone(),
                };
                while let smoltcp::iface::PollResult::SocketStateChanged =
                    self.iface.poll_egress(self.now, &mut dev, &mut u.set)
                {}
                if u.set.get::<udp::Socket>(u.handle).send_queue() > 0 && !u.in_dirty {
                    u.in_dirty = true;
                    self.udp_dirty.push(i);
                }
            }
        }
        udp_dirty.clear();
        self.udp_spare = udp_dirty;
    }

    /// Transmits what connection `idx` has to send, raises its events, re-arms its timer and
    /// releases it when it is done.
    fn service<Q: Queue>(&mut self, idx: u32, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        let now = self.tnow;
        let id = self.id(idx);
        let gen = id.gen;
        if let Some(c) = self.slots[idx as usize].conn.as_mut() {
            c.in_dirty = false;
        } else {
            return;
        }
        self.transmit(idx, queue, tx);
        let Some(c) = self.slots[idx as usize].conn.as_mut() else {
            return;
        };
        let state = c.tcb.state();
        if !c.announced && state.synchronized() {
            c.announced = true;
            self.stats.conns_opened += 1;
            match c.role {
                Role::HalfOpen(port) => {
                    c.role = Role::Accepted;
                    c.owned = !self.stopping;
                    if let Some(l) = self.listeners.get_mut(&port) {
                        l.half_open = l.half_open.saturating_sub(1);
                    }
                    if c.owned {
                        self.events.push_back(Event::Accepted {
                            listener: ListenerId(port),
                            conn: id,
                        });
                    } else {
                        c.tcb.abort();
                        self.transmit(idx, queue, tx);
                    }
                }
                _ => self.events.push_back(Event::Connected(id)),
            }
        }
        let Some(c) = self.slots[idx as usize].conn.as_mut() else {
            return;
        };
        // Nothing follows `Closed`/`Error` for a handle (a duplicate of the last data segment
        // can arrive in the same burst, after the event was queued).
        if c.owned && c.announced && !c.end_told {
            if c.read_armed && (c.tcb.recv_available() > 0 || c.tcb.fin_received()) {
                c.read_armed = false;
                self.events.push_back(Event::Readable(id));
            }
            if !c.peer_fin_told && c.tcb.fin_received() {
                c.peer_fin_told = true;
                self.events.push_back(Event::PeerClosed(id));
            }
            if c.write_armed && c.tcb.send_space() > 0 {
                c.write_armed = false;
                self.events.push_back(Event::Writable(id));
            }
        }
        let ended = matches!(state, State::Closed | State::TimeWait);
        // An orderly end waits until the app has read everything (then its read sees EOF), as a
        // socket stays readable after the peer's FIN: `Closed` invalidates the handle.
        let unread = c.tcb.recv_available() > 0 && c.tcb.end().is_none_or(|e| e == End::Normal);
        if ended && c.owned && !c.end_told && !unread {
            // The handle stays valid (buffered data can still be read) until the app has seen
            // this event; the core loop then calls `end_delivered`.
            c.end_told = true;
            let end = c.tcb.end().unwrap_or(End::Normal);
            let ev = match (c.announced, end) {
                (_, End::Normal) if c.announced => Event::Closed(id),
                (false, End::TimedOut) => Event::Error(id, ConnError::TimedOut),
                (false, _) => Event::Error(id, ConnError::Refused),
                (true, End::TimedOut) => Event::Error(id, ConnError::TimedOut),
                (true, End::Refused) => Event::Error(id, ConnError::Refused),
                (true, _) => Event::Error(id, ConnError::Reset),
            };
            if !matches!(ev, Event::Closed(_)) {
                self.stats.conns_failed += 1;
            }
            self.events.push_back(ev);
        }
        if state == State::Closed && !c.owned {
            if let Role::HalfOpen(port) = c.role {
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.half_open = l.half_open.saturating_sub(1);
                }
            }
            self.release(idx);
            return;
        }
        match c.tcb.poll_timeout() {
            Some(t) => {
                let at = t.as_nanos();
                // Only an earlier deadline is filed: a later one (an RTO pushed back by an ACK)
                // waits for the entry already there to fire early and re-arm, so a busy
                // connection touches the wheel a few times per RTO, not once per ACK.
                if c.timer_at.is_none_or(|cur| at < cur) {
                    c.timer_at = Some(at);
                    self.timers.schedule(t, idx, gen);
                }
            }
            None => c.timer_at = None,
        }
        let _ = now;
    }

    /// Builds and queues the connection's segments until it has nothing more or the port is full.
    fn transmit<Q: Queue>(&mut self, idx: u32, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        let now = self.tnow;
        loop {
            let Some(c) = self.slots[idx as usize].conn.as_mut() else {
                return;
            };
            if !c.tcb.wants_transmit() {
                return;
            }
            let dst = c.key.remote_ip;
            let Some(dst_mac) = c.mac else {
                self.resolve_hop(idx, dst, queue, tx);
                return;
            };
            let Some(mut frame) = self.tx_frame(queue, tx) else {
                if !self.again.contains(&idx) {
                    self.again.push(idx);
                }
                if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                    c.in_dirty = true;
                }
                return;
            };
            let c = self.slots[idx as usize].conn.as_mut().expect("checked");
            let Some(Transmit {
                seg,
                payload_offset,
            }) = c.tcb.poll_transmit(now)
            else {
                queue.free(frame);
                return;
            };
            frame.set_len(frame.capacity());
            let buf = frame.data_mut();
            let hlen = seg.header_len();
            let plen = seg.len as usize;
            if L2L3 + hlen + plen > buf.len() {
                // Cannot happen with the MSS derived from the port's MTU; count rather than panic.
                queue.free(frame);
                tx.ring_full += 1;
                continue;
            }
            seg.emit(&mut buf[L2L3..]);
            if plen > 0 {
                c.tcb
                    .copy_payload(payload_offset, &mut buf[L2L3 + hlen..L2L3 + hlen + plen]);
            }
            self.ip_id = self.ip_id.wrapping_add(1);
            let len = finish_frame(
                buf,
                self.local.mac,
                dst_mac,
                self.local.ip,
                dst,
                self.ip_id,
                hlen + plen,
                self.tx_checksum,
            );
            frame.set_len(len);
            tx.frames += 1;
            tx.bytes += len as u64;
            tx.batch.push(frame);
        }
    }

    /// Announces our address (RFC 5227 §2.3: an ARP request with our address as sender and
    /// target). A restarted instance usually has a new MAC; hosts and bridges that cached the old
    /// one update their entry at once instead of sending into the void until it expires (measured
    /// in the lab: 60-80 s without connections after a restart on the same address).
    pub(crate) fn announce<Q: Queue>(&mut self, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        if self.local.ip.is_unspecified() {
            return;
        }
        if let Some(mut frame) = self.tx_frame(queue, tx) {
            frame.set_len(frame.capacity().max(60));
            let n = neigh::arp_request(
                frame.data_mut(),
                self.local.mac,
                self.local.ip,
                self.local.ip,
            );
            let len = n.max(60);
            frame.data_mut()[n..len].fill(0);
            frame.set_len(len);
            tx.frames += 1;
            tx.bytes += len as u64;
            tx.batch.push(frame);
        }
    }

    /// The next hop's address is unknown: ask for it (rate limited) and wait for the answer.
    fn resolve_hop<Q: Queue>(
        &mut self,
        idx: u32,
        dst: Ipv4Addr,
        queue: &mut Q,
        tx: &mut TxSide<Q::Frame>,
    ) {
        let hop = self.next_hop(dst);
        let now_us = self.now.total_micros();
        if let Some(mac) = self.neigh.lookup(hop, now_us) {
            if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                c.mac = Some(mac);
            }
            self.mark_dirty(idx);
            return;
        }
        if !self.arp_waiters.contains(&idx) {
            self.arp_waiters.push(idx);
        }
        if self.neigh.should_request(hop, now_us) {
            if let Some(mut frame) = self.tx_frame(queue, tx) {
                frame.set_len(frame.capacity().max(60));
                let n = neigh::arp_request(frame.data_mut(), self.local.mac, self.local.ip, hop);
                // Pad to the Ethernet minimum.
                let len = n.max(60);
                frame.data_mut()[n..len].fill(0);
                frame.set_len(len);
                tx.frames += 1;
                tx.bytes += len as u64;
                tx.batch.push(frame);
            }
        }
    }

    fn on_link(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.local.ip)) & self.netmask == 0
    }

    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        match self.gateway {
            Some(gw) if !self.on_link(dst) => gw,
            _ => dst,
        }
    }

    /// RFC 6528 initial sequence number (a 4 µs clock plus a keyed hash of the 4-tuple) and the
    /// connection's timestamp offset (a keyed hash too, as Linux randomises it per connection).
    fn isn(&self, key: &FlowKey) -> (Seq, u32) {
        let mut h = DefaultHasher::new();
        self.secret.hash(&mut h);
        key.hash(&mut h);
        self.local.ip.hash(&mut h);
        let hv = h.finish();
        let clock = (self.tnow.as_micros() / 4) as u32;
        (Seq(clock.wrapping_add(hv as u32)), (hv >> 32) as u32)
    }

    /// The app has been given `Closed`/`Error` for `conn`: the handle is released now.
    pub(crate) fn end_delivered(&mut self, conn: ConnId) {
        let Ok(idx) = self.owned(conn) else {
            return;
        };
        let c = self.conn_mut(idx).expect("owned");
        c.owned = false;
        if c.tcb.state() == State::Closed {
            self.release(idx);
        }
    }

    /// Stops listening everywhere and asks the app's connections to be closed (the app does that in
    /// `on_stop`); connections the app never took are reset.
    pub(crate) fn begin_stop(&mut self) {
        self.stopping = true;
        self.listeners.clear();
    }

    /// Resets every connection still open (end of the stop drain).
    pub(crate) fn abort_all<Q: Queue>(&mut self, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        for idx in 0..self.slots.len() as u32 {
            if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                // TIME-WAIT needs no reset: both sides are done.
                if c.tcb.state() != State::TimeWait {
                    c.tcb.abort();
                    c.owned = false;
                    self.service(idx, queue, tx);
                }
            }
        }
    }

    // ---------------------------------------------------------------- helpers

    fn id(&self, idx: u32) -> ConnId {
        ConnId {
            idx,
            gen: self.slots[idx as usize].gen,
        }
    }

    fn conn_mut(&mut self, idx: u32) -> Option<&mut Conn> {
        self.slots.get_mut(idx as usize)?.conn.as_mut()
    }

    fn owned(&self, id: ConnId) -> Result<u32, Error> {
        match self.slots.get(id.idx as usize) {
            Some(s) if s.gen == id.gen && s.conn.as_ref().is_some_and(|c| c.owned) => Ok(id.idx),
            _ => Err(Error::InvalidHandle),
        }
    }

    fn udp_mut(&mut self, id: UdpId) -> Result<&mut UdpSock, Error> {
        self.udps
            .get_mut(id.idx as usize)
            .and_then(Option::as_mut)
            .ok_or(Error::InvalidHandle)
    }

    fn mark_dirty(&mut self, idx: u32) {
        if let Some(c) = self.slots[idx as usize].conn.as_mut() {
            if !c.in_dirty {
                c.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    /// Options with every default filled in from the configuration, checked.
    fn resolve(&self, o: ConnOptions) -> Result<Resolved, Error> {
        let d = &self.defaults.tcp;
        let r = Resolved {
            rmem: o.rmem.unwrap_or(d.rmem_max),
            wmem: o.wmem.unwrap_or(d.wmem_max),
            nodelay: o.nodelay.unwrap_or(d.nodelay),
            cc: o.cc.unwrap_or(d.cc),
        };
        let ok = |n| (MIN_BUFFER..=MAX_BUFFER).contains(&n);
        if !ok(r.rmem) || !ok(r.wmem) {
            return Err(Error::InvalidArgument(
                "buffer sizes must be 4 KiB to 64 MiB",
            ));
        }
        Ok(r)
    }

    /// The TCP settings for connections with these options (shared when they are the defaults).
    fn tcp_config(&self, o: &Resolved) -> Arc<TcpConfig> {
        let d = &self.defaults.tcp;
        if o.rmem == d.rmem_max && o.wmem == d.wmem_max && o.nodelay == d.nodelay && o.cc == d.cc {
            return self.default_cfg.clone();
        }
        Arc::new(TcpConfig {
            rmem_max: o.rmem,
            rmem_initial: d.rmem_initial.min(o.rmem),
            wmem_max: o.wmem,
            wmem_initial: d.wmem_initial.min(o.wmem),
            nodelay: o.nodelay,
            cc: o.cc,
            ..d.clone()
        })
    }

    /// A connection born from a listener (SYN or cookie): in the flow table and counted in the
    /// listener's SYN queue until it is established.
    fn insert_half_open(
        &mut self,
        tcb: Tcb,
        key: FlowKey,
        mac: EthernetAddress,
        opts: Resolved,
    ) -> u32 {
        let idx = self.insert(tcb, key, Some(mac), Role::HalfOpen(key.local_port), opts);
        self.flows.insert(key, idx);
        if let Some(l) = self.listeners.get_mut(&key.local_port) {
            l.half_open += 1;
        }
        idx
    }

    fn insert(
        &mut self,
        tcb: Tcb,
        key: FlowKey,
        mac: Option<EthernetAddress>,
        role: Role,
        opts: Resolved,
    ) -> u32 {
        let conn = Conn {
            tcb,
            key,
            mac,
            role,
            announced: false,
            owned: false,
            read_armed: true,
            write_armed: true,
            peer_fin_told: false,
            end_told: false,
            we_shut: false,
            in_dirty: false,
            timer_at: None,
            opts,
        };
        self.stats.conns_current += 1;
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    conn: Some(conn),
                });
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        if let Some(c) = slot.conn.take() {
            if self.flows.get(&c.key) == Some(&idx) {
                self.flows.remove(&c.key);
            }
            self.stats.conns_closed += 1;
            self.stats.conns_current -= 1;
            slot.gen = slot.gen.wrapping_add(1);
            self.free_slots.push(idx);
        }
    }
}
