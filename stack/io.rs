//! One core's protocol engine and the handle apps use: [`Io`].
//!
//! Every TCP connection lives in a `SocketSet` of its own, found by a hash of its 4-tuple, so a
//! packet touches exactly one socket (smoltcp's `Interface` otherwise offers each packet to every
//! socket in the set). Listening ports keep one ready listening socket; a SYN turns it into a
//! half-open connection and a fresh one takes its place, up to `backlog` half-open ones per port.
//! Work is driven by a dirty list (connections touched by a packet, an app call or a timer) and a
//! timer heap; no step visits all connections.

use super::api::{ConnError, ConnId, ConnInfo, Error, Event, ListenerId, TcpState, UdpId};
use super::config::{Config, MAX_BUFFER, MIN_BUFFER};
use super::demux::{self, Class, DropReason, FlowKey, Local};
use super::device::{Dev, TxSide};
use super::stats::CoreStats;
use crate::pmd::Queue;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Local ports for outgoing connections (Linux's default `ip_local_port_range`).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;
/// UDP socket buffers: datagrams and bytes queued each way.
const UDP_SLOTS: usize = 256;
const UDP_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The ready listening socket of a port.
    Listening(u16),
    /// Took a SYN on a listening port; not yet established.
    HalfOpen(u16),
    /// Established from a listener.
    Accepted,
    /// Opened by `connect`.
    Active,
}

/// What last touched a connection, to tell a reset from a timeout when it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Packet,
    Timer,
    App,
}

struct Conn {
    set: SocketSet<'static>,
    handle: SocketHandle,
    key: Option<FlowKey>,
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
    /// Data segments received since the connection was last serviced (ACK every second one).
    segs_since_service: u8,
    cause: Cause,
    timer_at: Option<i64>,
    nodelay: bool,
    opts: Resolved,
}

impl Conn {
    fn sock(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

struct Listener {
    opts: Resolved,
    ready: u32,
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
}

impl ConnOptions {
    /// Options that change nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Receive buffer in bytes (4 KiB to 64 MiB; sets the advertised window).
    pub fn rmem(mut self, bytes: usize) -> Self {
        self.rmem = Some(bytes);
        self
    }

    /// Send buffer in bytes (4 KiB to 64 MiB).
    pub fn wmem(mut self, bytes: usize) -> Self {
        self.wmem = Some(bytes);
        self
    }

    /// `true` turns Nagle's algorithm off.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = Some(on);
        self
    }
}

/// [`ConnOptions`] with the defaults filled in.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    rmem: usize,
    wmem: usize,
    nodelay: bool,
}

/// Numbers the engine needs per connection, taken from the [`Config`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnDefaults {
    pub rmem: usize,
    pub wmem: usize,
    pub backlog: usize,
    pub nodelay: bool,
    pub user_timeout: std::time::Duration,
}

impl From<&Config> for ConnDefaults {
    fn from(c: &Config) -> Self {
        ConnDefaults {
            rmem: c.rmem,
            wmem: c.wmem,
            backlog: c.backlog,
            nodelay: c.nodelay,
            user_timeout: c.user_timeout,
        }
    }
}

/// One core's view of the stack: the API an [`crate::App`] calls. All calls are non-blocking and
/// O(1); their effect on the wire happens when the call returns to the core's loop.
pub struct Io {
    core: usize,
    now: Instant,
    iface: Interface,
    caps: DeviceCapabilities,
    local: Local,
    /// The set for frames that belong to no socket (ARP, ICMP, RST for closed ports).
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
    /// Connections to look at again on the next loop iteration (transmit ring was full).
    again: Vec<u32>,
    arp_waiters: Vec<u32>,
    timers: BinaryHeap<Reverse<(i64, u32, u32)>>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: CoreStats,
    defaults: ConnDefaults,
    next_port: u16,
    pub(crate) stopping: bool,
}

/// RFC 7323 timestamp clock: milliseconds since the first call, from a random start (as Linux
/// offsets it), so timestamps are enabled when the peer offers them.
fn tsval_ms() -> u32 {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<(std::time::Instant, u32)> = OnceLock::new();
    let (t0, offset) = EPOCH.get_or_init(|| {
        (
            std::time::Instant::now(),
            crate::pmd::sys::random_u64() as u32,
        )
    });
    (t0.elapsed().as_millis() as u32).wrapping_add(*offset)
}

fn to_tcp_state(s: tcp::State) -> TcpState {
    use tcp::State as S;
    match s {
        S::Closed => TcpState::Closed,
        S::Listen => TcpState::Listen,
        S::SynSent => TcpState::SynSent,
        S::SynReceived => TcpState::SynReceived,
        S::Established => TcpState::Established,
        S::FinWait1 => TcpState::FinWait1,
        S::FinWait2 => TcpState::FinWait2,
        S::CloseWait => TcpState::CloseWait,
        S::Closing => TcpState::Closing,
        S::LastAck => TcpState::LastAck,
        S::TimeWait => TcpState::TimeWait,
    }
}

fn peer_fin_received(s: tcp::State) -> bool {
    matches!(
        s,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

fn to_v4(ep: IpEndpoint) -> SocketAddrV4 {
    match ep.addr {
        IpAddress::Ipv4(a) => SocketAddrV4::new(a, ep.port),
    }
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
        use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
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
        Io {
            core,
            now,
            iface,
            local: Local {
                mac: EthernetAddress(mac),
                ip: ip.addr,
                broadcast,
                verify_checksums: !port_caps.rx_checksum_offload,
            },
            caps,
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
            again: Vec::with_capacity(64),
            arp_waiters: Vec::new(),
            timers: BinaryHeap::with_capacity(1024),
            events: VecDeque::with_capacity(1024),
            stats: CoreStats::default(),
            defaults: ConnDefaults::from(cfg),
            next_port: EPHEMERAL.start() + (seed % port_span) as u16,
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
    /// connections are half-open; each established one arrives as [`Event::Accepted`].
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
        let ready = self.new_listening(port, opts)?;
        self.listeners.insert(
            port,
            Listener {
                opts,
                ready,
                half_open: 0,
            },
        );
        Ok(ListenerId(port))
    }

    /// Stops listening. Connections already accepted or half-open are not affected.
    pub fn unlisten(&mut self, listener: ListenerId) {
        if let Some(l) = self.listeners.remove(&listener.0) {
            self.release(l.ready);
        }
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
            if !self.flows.contains_key(&key) && !self.listeners.contains_key(&p) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(Error::NoFreePort);
        }
        let mut sock = self.new_socket(&opts);
        let ep = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        sock.connect(self.iface.context(), ep, key.local_port)
            .map_err(|_| Error::InvalidArgument("remote address"))?;
        let idx = self.insert(sock, Some(key), Role::Active, opts);
        self.flows.insert(key, idx);
        let c = self.conn_mut(idx).expect("just inserted");
        c.owned = true;
        self.mark_dirty(idx, Cause::App);
        Ok(self.id(idx))
    }

    /// Reads received bytes into `buf`. `Ok(0)` means the peer closed and everything was read;
    /// [`Error::WouldBlock`] means nothing is there yet ([`Event::Readable`] follows).
    pub fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        let r = c.sock().recv_slice(buf);
        match r {
            Ok(0) if !buf.is_empty() => {
                c.read_armed = true;
                Err(Error::WouldBlock)
            }
            Ok(n) => {
                self.mark_dirty(idx, Cause::App);
                Ok(n)
            }
            Err(tcp::RecvError::Finished) => Ok(0),
            Err(tcp::RecvError::InvalidState) => {
                if c.sock().state() == tcp::State::SynSent
                    || c.sock().state() == tcp::State::SynReceived
                {
                    c.read_armed = true;
                    Err(Error::WouldBlock)
                } else {
                    Err(Error::NotConnected)
                }
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
        let s = c.sock();
        if !s.may_send() {
            return Err(match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    c.write_armed = true;
                    Error::WouldBlock
                }
                _ => Error::NotConnected,
            });
        }
        let n = s.send_slice(data).map_err(|_| Error::NotConnected)?;
        if n < data.len() {
            c.write_armed = true;
        }
        if n == 0 && !data.is_empty() {
            return Err(Error::WouldBlock);
        }
        self.mark_dirty(idx, Cause::App);
        Ok(n)
    }

    /// Free space in the send buffer. When it is 0, [`Event::Writable`] follows once there is room.
    pub fn write_space(&mut self, conn: ConnId) -> usize {
        let Ok(idx) = self.owned(conn) else {
            return 0;
        };
        let c = self.conn_mut(idx).expect("owned");
        let s = c.sock();
        let space = if s.may_send() {
            s.send_capacity() - s.send_queue()
        } else {
            0
        };
        if space == 0 {
            c.write_armed = true;
        }
        space
    }

    /// Bytes received and not yet read.
    pub fn read_available(&mut self, conn: ConnId) -> usize {
        match self.owned(conn) {
            Ok(idx) => self.conn_mut(idx).expect("owned").sock().recv_queue(),
            Err(_) => 0,
        }
    }

    /// Closes the sending direction: FIN goes out after the queued data. Reading goes on.
    pub fn shutdown(&mut self, conn: ConnId) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        if !c.we_shut {
            c.we_shut = true;
            c.sock().close();
            self.mark_dirty(idx, Cause::App);
        }
        Ok(())
    }

    /// Releases the handle. Queued data is still delivered and the connection closes in the
    /// background; if received data was left unread, the peer gets a reset instead (as Linux does).
    pub fn close(&mut self, conn: ConnId) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        c.owned = false;
        c.we_shut = true;
        let s = c.sock();
        if s.recv_queue() > 0 {
            s.abort();
        } else {
            s.close();
        }
        self.mark_dirty(idx, Cause::App);
        Ok(())
    }

    /// Resets the connection (RST) and releases the handle at once.
    pub fn abort(&mut self, conn: ConnId) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        c.owned = false;
        c.sock().abort();
        self.mark_dirty(idx, Cause::App);
        Ok(())
    }

    /// Turns Nagle's algorithm off (`true`, like TCP_NODELAY) or on for one connection.
    pub fn set_nodelay(&mut self, conn: ConnId, nodelay: bool) -> Result<(), Error> {
        let idx = self.owned(conn)?;
        let c = self.conn_mut(idx).expect("owned");
        c.nodelay = nodelay;
        c.sock().set_nagle_enabled(!nodelay);
        Ok(())
    }

    /// A snapshot of the connection's state and queues.
    pub fn info(&mut self, conn: ConnId) -> Option<ConnInfo> {
        let idx = self.owned(conn).ok()?;
        let local_ip = self.local.ip;
        let c = self.conn_mut(idx)?;
        let (rmem, wmem, nodelay) = (c.opts.rmem, c.opts.wmem, c.nodelay);
        let s = c.sock();
        Some(ConnInfo {
            state: to_tcp_state(s.state()),
            local: s
                .local_endpoint()
                .map(to_v4)
                .unwrap_or(SocketAddrV4::new(local_ip, 0)),
            remote: s
                .remote_endpoint()
                .map(to_v4)
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            recv_queue: s.recv_queue(),
            send_queue: s.send_queue(),
            rmem,
            wmem,
            nodelay,
        })
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

    // ---------------------------------------------------------------- engine (core loop only)

    pub(crate) fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Live TCP connections (all states, listening sockets included).
    pub(crate) fn live_conns(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// True when nothing is left but listening sockets (used to end the stop drain early).
    pub(crate) fn only_listeners_left(&self) -> bool {
        self.live_conns() == self.listeners.len()
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
        let mut dev = Dev {
            queue,
            tx,
            rx: Some(frame),
            caps: self.caps.clone(),
        };
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
                self.iface
                    .poll_ingress_single(now, &mut dev, &mut self.empty);
                for idx in std::mem::take(&mut self.arp_waiters) {
                    self.mark_dirty(idx, Cause::Packet);
                }
                true
            }
            Class::OtherIp => {
                self.iface
                    .poll_ingress_single(now, &mut dev, &mut self.empty);
                false
            }
            Class::Udp { local_port } => {
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
                if let Some(&idx) = self.flows.get(&key) {
                    let c = self.slots[idx as usize].conn.as_mut().expect("flow map");
                    let reincarnation = syn_only
                        && !c.owned
                        && c.sock().state() == tcp::State::TimeWait
                        && self.listeners.contains_key(&key.local_port);
                    if reincarnation {
                        //= rfc9293#section-3.10.7.4
                        // A new SYN for a connection in TIME-WAIT starts a new incarnation (as
                        // Linux does, RFC 6191): the old state goes and the listener takes the SYN.
                        self.release(idx);
                    } else {
                        self.iface.poll_ingress_single(now, &mut dev, &mut c.set);
                        c.segs_since_service += has_data as u8;
                        // Like epoll's edge-triggered mode: new data (or FIN) is a new edge,
                        // whether or not the app drained what came before.
                        c.read_armed |= has_data;
                        let ack_now = c.segs_since_service >= 2;
                        let Dev { queue, tx, .. } = dev;
                        if ack_now {
                            //= rfc9293#section-3.8.6.3
                            // An ACK SHOULD go out for at least every second full-sized segment:
                            // do not wait for the end of the burst (smoltcp forces it on the
                            // second segment). Servicing clears `in_dirty`, so an entry already
                            // on the dirty list is skipped there.
                            c.cause = Cause::Packet;
                            self.service(idx, queue, tx);
                        } else {
                            self.mark_dirty(idx, Cause::Packet);
                        }
                        return false;
                    }
                }
                let listener = if syn_only && !self.stopping {
                    self.listeners.get(&key.local_port)
                } else {
                    None
                };
                let Some(l) = listener else {
                    self.stats.no_socket += 1;
                    self.iface
                        .poll_ingress_single(now, &mut dev, &mut self.empty);
                    return false;
                };
                if l.half_open >= self.defaults.backlog {
                    // Like Linux without SYN cookies: drop and let the peer retransmit.
                    self.stats.drop_syn_backlog += 1;
                    return false;
                }
                let idx = l.ready;
                let c = self.slots[idx as usize]
                    .conn
                    .as_mut()
                    .expect("listener slot");
                self.iface.poll_ingress_single(now, &mut dev, &mut c.set);
                if c.sock().state() == tcp::State::SynReceived {
                    c.key = Some(key);
                    c.role = Role::HalfOpen(key.local_port);
                    self.stats.conns_current += 1;
                    self.flows.insert(key, idx);
                    self.mark_dirty(idx, Cause::Packet);
                    let opts = self.listeners[&key.local_port].opts;
                    let fresh = self.new_listening(key.local_port, opts);
                    let l = self.listeners.get_mut(&key.local_port).expect("listener");
                    l.half_open += 1;
                    match fresh {
                        Ok(r) => l.ready = r,
                        Err(_) => {
                            // Cannot happen (listening on a port we own); stop listening rather than panic.
                            self.listeners.remove(&key.local_port);
                        }
                    }
                }
                false
            }
        }
    }

    /// Marks connections whose timers are due as dirty.
    pub(crate) fn expire_timers(&mut self) {
        let now = self.now.total_micros();
        while let Some(&Reverse((at, idx, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[idx as usize];
            if slot.gen != gen {
                continue;
            }
            if let Some(c) = slot.conn.as_mut() {
                if c.timer_at == Some(at) {
                    c.timer_at = None;
                    self.mark_dirty(idx, Cause::Timer);
                }
            }
        }
    }

    /// The next timer deadline, if any (for the idle sleep).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers
            .peek()
            .map(|Reverse((at, _, _))| Instant::from_micros(*at))
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
        for idx in std::mem::take(&mut self.again) {
            if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                c.in_dirty = false;
            }
            self.mark_dirty(idx, Cause::App);
        }
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
        for i in std::mem::take(&mut self.udp_dirty) {
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
    }

    fn service<Q: Queue>(&mut self, idx: u32, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        let now = self.now;
        let id = self.id(idx);
        let gen = id.gen;
        let Some(c) = self.slots[idx as usize].conn.as_mut() else {
            return;
        };
        c.in_dirty = false;
        c.segs_since_service = 0;
        tx.arp_sent = false;
        let mut dev = Dev {
            queue,
            tx,
            rx: None,
            caps: self.caps.clone(),
        };
        while let smoltcp::iface::PollResult::SocketStateChanged =
            self.iface.poll_egress(now, &mut dev, &mut c.set)
        {}
        if dev.tx.arp_sent {
            self.arp_waiters.push(idx);
        }
        let next = self.iface.poll_at(now, &c.set);

        let s = c.set.get::<tcp::Socket>(c.handle);
        let state = s.state();
        if let Role::Listening(_) = c.role {
            return;
        }
        let synced = !matches!(
            state,
            tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
        );
        if !c.announced && synced {
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
                        c.set.get_mut::<tcp::Socket>(c.handle).abort();
                    }
                }
                _ => self.events.push_back(Event::Connected(id)),
            }
        }
        let s = c.set.get::<tcp::Socket>(c.handle);
        if c.owned && c.announced {
            if c.read_armed && (s.can_recv() || !s.may_recv()) {
                c.read_armed = false;
                self.events.push_back(Event::Readable(id));
            }
            if !c.peer_fin_told && peer_fin_received(state) {
                c.peer_fin_told = true;
                self.events.push_back(Event::PeerClosed(id));
            }
            if c.write_armed && s.may_send() && s.send_capacity() > s.send_queue() {
                c.write_armed = false;
                self.events.push_back(Event::Writable(id));
            }
        }
        let ended = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
        if ended && c.owned && !c.end_told {
            // The handle stays valid (buffered data can still be read) until the app has seen
            // this event; the core loop then calls `end_delivered`.
            c.end_told = true;
            let normal = state == tcp::State::TimeWait || (c.we_shut && c.peer_fin_told);
            let ev = if !c.announced {
                self.stats.conns_failed += 1;
                Event::Error(
                    id,
                    if c.cause == Cause::Timer {
                        ConnError::TimedOut
                    } else {
                        ConnError::Refused
                    },
                )
            } else if normal {
                Event::Closed(id)
            } else {
                self.stats.conns_failed += 1;
                Event::Error(
                    id,
                    if c.cause == Cause::Timer {
                        ConnError::TimedOut
                    } else {
                        ConnError::Reset
                    },
                )
            };
            self.events.push_back(ev);
        }
        if state == tcp::State::Closed && !c.owned {
            if let Role::HalfOpen(port) = c.role {
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.half_open = l.half_open.saturating_sub(1);
                }
            }
            self.release(idx);
            return;
        }
        match next {
            Some(t) if t <= now => {
                // Still wants to send: the ring is full. Try again on the next loop iteration.
                self.again.push(idx);
                c.in_dirty = true;
            }
            Some(t) => {
                let at = t.total_micros();
                if c.timer_at.is_none_or(|cur| at < cur) {
                    c.timer_at = Some(at);
                    self.timers.push(Reverse((at, idx, gen)));
                }
            }
            None => {}
        }
    }

    /// The app has been given `Closed`/`Error` for `conn`: the handle is released now.
    pub(crate) fn end_delivered(&mut self, conn: ConnId) {
        let Ok(idx) = self.owned(conn) else {
            return;
        };
        let c = self.conn_mut(idx).expect("owned");
        c.owned = false;
        if c.sock().state() == tcp::State::Closed {
            self.release(idx);
        }
    }

    /// Stops listening everywhere and asks the app's connections to be closed (the app does that in
    /// `on_stop`); connections the app never took are reset.
    pub(crate) fn begin_stop(&mut self) {
        self.stopping = true;
        let ports: Vec<u16> = self.listeners.keys().copied().collect();
        for p in ports {
            self.unlisten(ListenerId(p));
        }
    }

    /// Resets every connection still open (end of the stop drain).
    pub(crate) fn abort_all<Q: Queue>(&mut self, queue: &mut Q, tx: &mut TxSide<Q::Frame>) {
        for idx in 0..self.slots.len() as u32 {
            if let Some(c) = self.slots[idx as usize].conn.as_mut() {
                // TIME-WAIT needs no reset: both sides are done.
                if c.sock().state() != tcp::State::TimeWait {
                    c.sock().abort();
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

    fn mark_dirty(&mut self, idx: u32, cause: Cause) {
        if let Some(c) = self.slots[idx as usize].conn.as_mut() {
            c.cause = cause;
            if !c.in_dirty {
                c.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    /// Options with every default filled in from the configuration, checked.
    fn resolve(&self, o: ConnOptions) -> Result<Resolved, Error> {
        let r = Resolved {
            rmem: o.rmem.unwrap_or(self.defaults.rmem),
            wmem: o.wmem.unwrap_or(self.defaults.wmem),
            nodelay: o.nodelay.unwrap_or(self.defaults.nodelay),
        };
        let ok = |n| (MIN_BUFFER..=MAX_BUFFER).contains(&n);
        if !ok(r.rmem) || !ok(r.wmem) {
            return Err(Error::InvalidArgument(
                "buffer sizes must be 4 KiB to 64 MiB",
            ));
        }
        Ok(r)
    }

    fn new_socket(&self, o: &Resolved) -> tcp::Socket<'static> {
        // vec![0; n] comes from calloc: large buffers are untouched pages until data flows.
        let rx = tcp::SocketBuffer::new(vec![0u8; o.rmem]);
        let tx = tcp::SocketBuffer::new(vec![0u8; o.wmem]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(!o.nodelay);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_tsval_generator(Some(tsval_ms));
        s.set_timeout(Some(SmolDuration::from_micros(
            self.defaults.user_timeout.as_micros() as u64,
        )));
        s
    }

    fn new_listening(&mut self, port: u16, opts: Resolved) -> Result<u32, Error> {
        let mut s = self.new_socket(&opts);
        s.listen(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.local.ip)),
            port,
        })
        .map_err(|_| Error::AddrInUse)?;
        Ok(self.insert(s, None, Role::Listening(port), opts))
    }

    fn insert(
        &mut self,
        sock: tcp::Socket<'static>,
        key: Option<FlowKey>,
        role: Role,
        opts: Resolved,
    ) -> u32 {
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        let conn = Conn {
            set,
            handle,
            key,
            role,
            announced: false,
            owned: false,
            read_armed: true,
            write_armed: true,
            peer_fin_told: false,
            end_told: false,
            we_shut: false,
            in_dirty: false,
            segs_since_service: 0,
            cause: Cause::App,
            timer_at: None,
            nodelay: opts.nodelay,
            opts,
        };
        if !matches!(role, Role::Listening(_)) {
            self.stats.conns_current += 1;
        }
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
            if let Some(k) = c.key {
                if self.flows.get(&k) == Some(&idx) {
                    self.flows.remove(&k);
                }
            }
            if !matches!(c.role, Role::Listening(_)) {
                self.stats.conns_closed += 1;
                self.stats.conns_current -= 1;
            }
            slot.gen = slot.gen.wrapping_add(1);
            self.free_slots.push(idx);
        }
    }
}
