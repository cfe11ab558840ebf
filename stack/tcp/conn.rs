//! One TCP connection as a sans-IO state machine (RFC 9293 with RFC 5961, 6298, 6582, 7323, 2018).
//!
//! Inputs: [`Conn::handle_segment`], [`Conn::handle_timeout`] and the app calls ([`Conn::send`],
//! [`Conn::recv`], [`Conn::shutdown`], [`Conn::abort`]). Outputs: [`Conn::poll_transmit`] (one
//! segment per call; call until `None`), [`Conn::poll_timeout`] (the next deadline) and the state
//! queries the engine turns into app events. Time only comes in as an argument and must not go
//! backwards between calls. Every call does bounded work; nothing allocates except buffer growth.
//!
//! ```text
//!                             +---------+ ---------\      active OPEN
//!                             |  CLOSED |            \    -----------
//!                             +---------+<---------\   \   create TCB
//!                               |     ^              \   \  snd SYN
//!                  passive OPEN |     |   CLOSE        \   \
//!                  ------------ |     | ----------       \   \
//!                   create TCB  |     | delete TCB         \   \
//!                               V     |                      \   \
//!           rcv RST (note 1)  +---------+            CLOSE    |    \
//!        -------------------->|  LISTEN |          ---------- |     |
//!       /                     +---------+          delete TCB |     |
//!      /           rcv SYN      |     |     SEND              |     |
//!     /           -----------   |     |    -------            |     V
//! +--------+      snd SYN,ACK  /       \   snd SYN          +--------+
//! |        |<-----------------           ------------------>|        |
//! |  SYN   |                    rcv SYN                     |  SYN   |
//! |  RCVD  |<-----------------------------------------------|  SENT  |
//! |        |                  snd SYN,ACK                   |        |
//! |        |------------------           -------------------|        |
//! +--------+   rcv ACK of SYN  \       /  rcv SYN,ACK       +--------+
//!    |         --------------   |     |   -----------
//!    |                x         |     |     snd ACK
//!    |                          V     V
//!    |  CLOSE                 +---------+
//!    | -------                |  ESTAB  |
//!    | snd FIN                +---------+
//!    |                 CLOSE    |     |    rcv FIN
//!    V                -------   |     |    -------
//! +---------+         snd FIN  /       \   snd ACK         +---------+
//! |  FIN    |<----------------          ------------------>|  CLOSE  |
//! | WAIT-1  |------------------                            |   WAIT  |
//! +---------+          rcv FIN  \                          +---------+
//!   | rcv ACK of FIN   -------   |                          CLOSE  |
//!   | --------------   snd ACK   |                         ------- |
//!   V        x                   V                         snd FIN V
//! +---------+               +---------+                    +---------+
//! |FINWAIT-2|               | CLOSING |                    | LAST-ACK|
//! +---------+               +---------+                    +---------+
//!   |              rcv ACK of FIN |                 rcv ACK of FIN |
//!   |  rcv FIN     -------------- |    Timeout=2MSL -------------- |
//!   |  -------            x       V    ------------        x       V
//!    \ snd ACK              +---------+delete TCB          +---------+
//!      -------------------->|TIME-WAIT|------------------->| CLOSED  |
//!                           +---------+                    +---------+
//! ```
//! (RFC 9293 §3.3.2, Figure 5.) LISTEN is not a state of a `Conn`: the engine's listener turns a
//! SYN into a `Conn` in SYN-RECEIVED ([`Conn::accept`]).

// Fields and variants carry their RFC 9293 / Linux tcp_info names; the type docs explain them.
#![allow(missing_docs)]

use super::cc::{AckSample, CongestionControl};
use super::config::TcpConfig;
use super::rx_buf::RecvBuffer;
use super::segment::{Flags, Options, SackBlocks, Segment, Timestamp};
use super::seq::Seq;
use super::time::Instant;
use super::tx_buf::SendBuffer;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

/// Connection states (RFC 9293 names; LISTEN lives in the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl State {
    /// Both sides' SYNs are done: ESTABLISHED or later.
    pub fn synchronized(self) -> bool {
        !matches!(self, State::Closed | State::SynSent | State::SynReceived)
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or the connection reached TIME-WAIT).
    Normal,
    /// The peer reset an established connection.
    Reset,
    /// The peer refused the connection (RST or ICMP unreachable for our SYN).
    Refused,
    /// Data or a connect went unanswered for the user timeout (or keepalive probes).
    TimedOut,
    /// The app aborted it (RST sent).
    Aborted,
}

/// A segment to transmit: the header, and where its payload is in the send buffer
/// (copy it with [`Conn::copy_payload`]).
#[derive(Clone, Copy, Debug)]
pub struct Transmit {
    pub seg: Segment,
    pub payload_offset: usize,
}

/// Per-connection counters and estimates, in the spirit of Linux's `tcp_info`.
///
/// Times are microseconds, windows and counts of data bytes are bytes (not segments as in Linux).
/// `bytes_sent` counts new data only; retransmitted bytes are in `bytes_retrans` (Linux's
/// `tcpi_bytes_sent` includes them). Serialises to JSON with these field names (`longhaul stat
/// --json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TcpInfo {
    pub rtt_us: u64,
    pub rttvar_us: u64,
    pub min_rtt_us: u64,
    pub rto_us: u64,
    pub cwnd_bytes: u64,
    pub ssthresh_bytes: u64,
    pub in_flight_bytes: u64,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_in: u64,
    pub segs_out: u64,
    pub data_segs_in: u64,
    pub data_segs_out: u64,
    pub retransmits_total: u64,
    /// Retransmission timeouts in a row right now (the backoff exponent).
    pub retransmits_current: u32,
    pub rto_count: u64,
    pub fast_retransmits: u64,
    pub dupacks_in: u64,
    pub sacks_in: u64,
    pub dsacks_out: u64,
    /// Segments the sender currently counts as lost (Linux `tcpi_lost`). Always 0 for now: NewReno
    /// recovery keeps no per-segment scoreboard; the SACK scoreboard of the loss-recovery work
    /// (issue 8) fills it.
    pub lost_segs: u64,
    /// Segments currently SACKed by the peer (Linux `tcpi_sacked`). Always 0 for now, for the same
    /// reason as `lost_segs`.
    pub sacked_segs: u64,
    /// Data delivered to the peer per round trip (bytes acknowledged over the last round, in bits
    /// per second), like Linux's `tcpi_delivery_rate`; 0 until a round has completed.
    pub delivery_rate_bps: u64,
    /// Receive window we advertise and the peer's (both unscaled bytes).
    pub rcv_wnd: u64,
    pub snd_wnd: u64,
    pub rcv_buf: u64,
    pub snd_buf: u64,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub timestamps: bool,
    pub sack: bool,
    pub challenge_acks: u64,
    pub paws_drops: u64,
    pub zero_window_probes: u64,
    /// Time in microseconds the sender was limited by the congestion window, the peer's window
    /// and the app (nothing to send).
    pub busy_us: u64,
    pub cwnd_limited_us: u64,
    pub rwnd_limited_us: u64,
    pub app_limited_us: u64,
}

/// What limited the sender when it last stopped (for the `*_limited_us` counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    None,
    Cwnd,
    Rwnd,
    App,
}

/// One TCP connection.
pub struct Conn {
    cfg: Arc<TcpConfig>,
    state: State,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    end: Option<End>,

    // ---- send side
    iss: Seq,
    snd_una: Seq,
    snd_nxt: Seq,
    /// Highest sequence number sent so far (`snd_nxt` goes back after a timeout).
    snd_max: Seq,
    snd_wnd: u32,
    max_snd_wnd: u32,
    snd_wl1: Seq,
    snd_wl2: Seq,
    snd_wscale: u8,
    sndbuf: SendBuffer,
    /// The app shut the sending side: a FIN follows the data.
    fin_queued: bool,
    /// Sequence number of our FIN once it has been sent.
    fin_seq: Option<Seq>,
    /// Send MSS: the peer's MSS, our link's, the clamp, minus the timestamp option.
    snd_mss: u32,
    peer_mss: u16,
    nodelay: bool,
    /// End of the last sub-MSS segment sent (Linux `snd_sml`, for Minshall's Nagle).
    snd_sml: Seq,
    cork: bool,
    cork_at: Option<Instant>,

    // ---- receive side
    irs: Seq,
    rcv_nxt: Seq,
    /// `rcv_nxt` as a 64-bit stream offset (0 = first data byte), for the receive buffer.
    rcv_nxt_off: u64,
    /// Right edge of the window we advertised; never moves left (RFC 9293 §3.8.6.2.2).
    rcv_adv: Seq,
    rcv_wscale: u8,
    rcvbuf: RecvBuffer,
    /// The peer's FIN, once seen (maybe ahead of missing data).
    peer_fin: Option<Seq>,
    fin_received: bool,
    rcv_mss: u32,

    // ---- options
    ts_enabled: bool,
    ts_recent: u32,
    ts_recent_at: Instant,
    ts_offset: u32,
    sack_ok: bool,
    last_ack_sent: Seq,

    // ---- timing
    rto: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    /// A timed segment for a Karn-safe RTT sample: (its end, when sent).
    rtt_timed: Option<(Seq, Instant)>,
    backoff: u32,
    rto_at: Option<Instant>,
    dack_at: Option<Instant>,
    persist_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    close_at: Option<Instant>,
    /// When to give buffer memory back if the connection stays quiet.
    shrink_at: Option<Instant>,
    last_activity: Instant,
    keepalive_sent: u32,
    /// First retransmission timeout of the current stall (for the user timeout).
    stalled_since: Option<Instant>,
    last_rx: Instant,
    last_tx_data: Instant,
    last_ratelimited_ack: Option<Instant>,

    // ---- ACK generation
    ack_now: bool,
    /// Full-sized segments received since our last ACK.
    unacked_segs: u32,
    quickacks: u32,
    probe_now: bool,
    rst_now: Option<Seq>,
    /// The reset carries an ACK (an abort of a synchronized connection, as Linux sends it).
    rst_ack: bool,
    synack_now: bool,
    syn_now: bool,

    // ---- loss recovery (NewReno, RFC 6582) and congestion control
    cc: Box<dyn CongestionControl>,
    dupacks: u32,
    in_recovery: bool,
    recover: Seq,
    /// A single segment to retransmit before anything else (fast retransmit / partial ACK).
    rtx_at: Option<Seq>,
    delivered: u64,
    round_end: Seq,
    /// When the current round began and `delivered` then (for the delivery rate).
    round_started_at: Instant,
    round_start_delivered: u64,
    /// Largest flight this round and the last, for Linux's "cwnd-limited" test.
    max_flight_round: u32,
    max_flight_prev: u32,

    // ---- receive autotuning (Linux DRS)
    drs_start: Instant,
    drs_copied: u64,

    limit: Limit,
    limit_since: Instant,
    info: TcpInfo,
}

/// Modular "a ≤ b" on 32-bit timestamps.
fn ts_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// The 24-day PAWS idle limit (RFC 7323 §5.5).
const PAWS_IDLE: Duration = Duration::from_secs(24 * 24 * 3600);
/// Linux's `tcp_invalid_ratelimit`: at most one ACK per this interval for out-of-window segments.
const OOW_RATELIMIT: Duration = Duration::from_millis(500);
/// Linux's quick-ACK budget at the start of a connection.
const QUICKACKS: u32 = 16;
/// Linux's 200 ms cap on how long a corked partial segment waits.
const CORK_MAX: Duration = Duration::from_millis(200);
/// A connection quiet this long gives its buffer memory back.
const IDLE_SHRINK: Duration = Duration::from_secs(1);

impl Conn {
    fn new(
        cfg: Arc<TcpConfig>,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: Seq,
        ts_offset: u32,
        state: State,
    ) -> Conn {
        let cc = cfg.cc.build(cfg.advertised_mss() as u32, now);
        Conn {
            state,
            local,
            remote,
            end: None,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: Seq(0),
            snd_wl2: iss,
            snd_wscale: 0,
            sndbuf: SendBuffer::new(cfg.wmem_initial.min(cfg.wmem_max)),
            fin_queued: false,
            fin_seq: None,
            snd_mss: 536,
            peer_mss: 536,
            nodelay: cfg.nodelay,
            snd_sml: iss,
            cork: false,
            cork_at: None,
            irs: Seq(0),
            rcv_nxt: Seq(0),
            rcv_nxt_off: 0,
            rcv_adv: Seq(0),
            rcv_wscale: 0,
            rcvbuf: RecvBuffer::new(cfg.rmem_initial.min(cfg.rmem_max)),
            peer_fin: None,
            fin_received: false,
            rcv_mss: cfg.advertised_mss() as u32,
            ts_enabled: false,
            ts_recent: 0,
            ts_recent_at: now,
            ts_offset,
            sack_ok: false,
            last_ack_sent: Seq(0),
            rto: cfg.rto_initial,
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
            rtt_timed: None,
            backoff: 0,
            rto_at: None,
            dack_at: None,
            persist_at: None,
            keepalive_at: None,
            close_at: None,
            shrink_at: None,
            last_activity: now,
            keepalive_sent: 0,
            stalled_since: None,
            last_rx: now,
            last_tx_data: now,
            last_ratelimited_ack: None,
            ack_now: false,
            unacked_segs: 0,
            quickacks: QUICKACKS,
            probe_now: false,
            rst_now: None,
            rst_ack: false,
            synack_now: false,
            syn_now: false,
            cc,
            dupacks: 0,
            in_recovery: false,
            recover: iss,
            rtx_at: None,
            delivered: 0,
            round_end: iss,
            round_started_at: now,
            round_start_delivered: 0,
            max_flight_round: 0,
            max_flight_prev: 0,
            drs_start: now,
            drs_copied: 0,
            limit: Limit::None,
            limit_since: now,
            info: TcpInfo::default(),
            cfg,
        }
    }

    /// An active open: the connection starts in SYN-SENT with a SYN to send.
    pub fn connect(
        cfg: Arc<TcpConfig>,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: Seq,
        ts_offset: u32,
    ) -> Conn {
        let mut c = Conn::new(cfg, now, local, remote, iss, ts_offset, State::SynSent);
        c.rcv_wscale = if c.cfg.window_scaling {
            c.cfg.rcv_wscale()
        } else {
            0
        };
        c.syn_now = true;
        c.rto_at = Some(now + c.rto);
        c.stalled_since = Some(now);
        c
    }

    /// A passive open from a SYN that reached a listener: SYN-RECEIVED with a SYN-ACK to send.
    pub fn accept(
        cfg: Arc<TcpConfig>,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        syn: &Segment,
        iss: Seq,
        ts_offset: u32,
    ) -> Conn {
        let mut c = Conn::new(cfg, now, local, remote, iss, ts_offset, State::SynReceived);
        c.take_syn_options(syn, now);
        c.irs = syn.seq;
        c.rcv_nxt = syn.seq + 1;
        c.rcv_adv = c.rcv_nxt;
        c.snd_wnd = syn.window as u32;
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = syn.seq;
        c.synack_now = true;
        c.rto_at = Some(now + c.rto);
        c.stalled_since = Some(now);
        c
    }

    /// A connection re-created from a valid SYN cookie: ESTABLISHED at once. `syn_opts` are the
    /// options the cookie carried (MSS, and window scale and SACK when timestamps carried them).
    #[allow(clippy::too_many_arguments)]
    pub fn from_cookie(
        cfg: Arc<TcpConfig>,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        ack: &Segment,
        syn_opts: Options,
        iss: Seq,
        ts_offset: u32,
    ) -> Conn {
        let syn = Segment {
            seq: ack.seq + u32::MAX,
            opts: syn_opts,
            ..*ack
        };
        // SYN-RECEIVED with the SYN-ACK already sent: the engine now hands it `ack`, which
        // completes the handshake like any other.
        let mut c = Conn::accept(cfg, now, local, remote, &syn, iss, ts_offset);
        c.synack_now = false;
        c.snd_nxt = iss + 1;
        c.snd_max = iss + 1;
        c.rto_at = None;
        c.stalled_since = None;
        // The stateless SYN-ACK acknowledged RCV.NXT: TS.Recent updates follow from it (RFC 7323
        // §4.3), else the connection echoes the cookie ACK's timestamp until it sends an ACK.
        c.last_ack_sent = c.rcv_nxt;
        let _ = c.window_field(true);
        c
    }

    fn take_syn_options(&mut self, syn: &Segment, now: Instant) {
        let o = &syn.opts;
        self.peer_mss = o.mss.unwrap_or(536).max(64);
        if let (Some(ws), true) = (o.wscale, self.cfg.window_scaling) {
            //= rfc7323#section-2.3
            // A shift above 14 is used as 14.
            self.snd_wscale = ws.min(14);
            self.rcv_wscale = self.cfg.rcv_wscale();
        } else {
            self.snd_wscale = 0;
            self.rcv_wscale = 0;
        }
        self.sack_ok = o.sack_permitted && self.cfg.sack;
        match (o.timestamp, self.cfg.timestamps) {
            (Some(ts), true) => {
                self.ts_enabled = true;
                self.ts_recent = ts.val;
                self.ts_recent_at = now;
            }
            _ => self.ts_enabled = false,
        }
        self.update_mss();
        //= rfc6928#section-2
        // The initial window counts segments of the MSS actually used (min(10·MSS,
        // max(2·MSS, 14600)); Linux: 10 × mss_cache), which is known only now: with a peer MSS
        // of 536 a window built from our link's 1460 would be 27 segments. (A controller set
        // with `set_congestion_control` is left alone.)
        if self.cc.name() == self.cfg.cc.name() {
            self.cc = self.cfg.cc.build(self.snd_mss, now);
        }
    }

    fn update_mss(&mut self) {
        let base = (self.peer_mss as u32).min(self.cfg.advertised_mss() as u32);
        let opt = if self.ts_enabled { 12 } else { 0 };
        self.snd_mss = base.saturating_sub(opt).max(64);
    }

    // ------------------------------------------------------------------ queries

    pub fn state(&self) -> State {
        self.state
    }

    /// How the connection ended, once it has.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// Bytes ready for [`Conn::recv`].
    pub fn recv_available(&self) -> usize {
        self.rcvbuf.readable()
    }

    /// The peer's FIN has been received in order (after the data before it).
    pub fn fin_received(&self) -> bool {
        self.fin_received
    }

    /// Free space in the send buffer (0 once the sending side is shut).
    pub fn send_space(&self) -> usize {
        if self.fin_queued || !self.may_send() {
            0
        } else {
            self.sndbuf.free_space()
        }
    }

    /// Bytes written and not yet acknowledged.
    pub fn send_queued(&self) -> usize {
        self.sndbuf.len()
    }

    /// The app may still write.
    pub fn may_send(&self) -> bool {
        matches!(self.state, State::Established | State::CloseWait) && !self.fin_queued
    }

    /// Current receive and send buffer limits.
    pub fn buffer_limits(&self) -> (usize, usize) {
        (self.rcvbuf.limit(), self.sndbuf.limit())
    }

    /// Memory the buffers hold right now.
    pub fn buffer_memory(&self) -> usize {
        self.rcvbuf.capacity_bytes() + self.sndbuf.capacity_bytes()
    }

    /// RCV.NXT (for the engine's TIME-WAIT reuse check).
    pub fn rcv_nxt(&self) -> Seq {
        self.rcv_nxt
    }

    /// SND.UNA: the oldest unacknowledged sequence number.
    pub fn snd_una(&self) -> Seq {
        self.snd_una
    }

    /// SND.NXT: the next sequence number to send (it moves back after a timeout).
    pub fn snd_nxt(&self) -> Seq {
        self.snd_nxt
    }

    /// The highest sequence number sent so far, plus one.
    pub fn snd_max(&self) -> Seq {
        self.snd_max
    }

    /// An ACK is owed right now (every second segment, out of order, quick-ACK).
    pub fn ack_due(&self) -> bool {
        self.ack_now
    }

    /// Bytes the congestion controller's state takes.
    pub fn congestion_control_size(&self) -> usize {
        std::mem::size_of_val(&*self.cc)
    }

    pub fn nodelay(&self) -> bool {
        self.nodelay
    }

    pub fn congestion_control(&self) -> &dyn CongestionControl {
        &*self.cc
    }

    /// A snapshot of the counters and estimates.
    pub fn info(&self, now: Instant) -> TcpInfo {
        let mut i = self.info;
        i.rtt_us = self.srtt.unwrap_or_default().as_micros() as u64;
        i.rttvar_us = self.rttvar.as_micros() as u64;
        i.min_rtt_us = self.min_rtt.unwrap_or_default().as_micros() as u64;
        i.rto_us = self.rto.as_micros() as u64;
        i.cwnd_bytes = self.cc.window();
        i.ssthresh_bytes = self.cc.ssthresh();
        i.in_flight_bytes = self.in_flight() as u64;
        i.retransmits_current = self.backoff;
        i.rcv_wnd = (self.rcv_adv - self.rcv_nxt) as u64;
        i.snd_wnd = self.snd_wnd as u64;
        i.rcv_buf = self.rcvbuf.limit() as u64;
        i.snd_buf = self.sndbuf.limit() as u64;
        i.snd_mss = self.snd_mss;
        i.rcv_mss = self.rcv_mss;
        i.snd_wscale = self.snd_wscale;
        i.rcv_wscale = self.rcv_wscale;
        i.timestamps = self.ts_enabled;
        i.sack = self.sack_ok;
        let open = now.saturating_since(self.limit_since).as_micros() as u64;
        match self.limit {
            Limit::Cwnd => i.cwnd_limited_us += open,
            Limit::Rwnd => i.rwnd_limited_us += open,
            Limit::App => i.app_limited_us += open,
            Limit::None => i.busy_us += open,
        }
        i
    }

    /// The earliest deadline this connection needs a [`Conn::handle_timeout`] call for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.rto_at,
            self.dack_at,
            self.persist_at,
            self.keepalive_at,
            self.close_at,
            self.cork_at,
            self.shrink_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// There is something to transmit right now.
    pub fn wants_transmit(&self) -> bool {
        self.ack_now
            || self.syn_now
            || self.synack_now
            || self.probe_now
            || self.rst_now.is_some()
            || self.rtx_at.is_some()
            || self.has_sendable()
            // Data written into a window it cannot use: poll_transmit arms the persist timer.
            || (self.persist_at.is_none() && self.window_stalled())
    }

    // ------------------------------------------------------------------ app calls

    /// Queues bytes; returns how many were taken.
    pub fn send(&mut self, data: &[u8]) -> usize {
        if !self.may_send() {
            return 0;
        }
        self.grow_send_buffer();
        let n = self.sndbuf.push(data);
        self.touch(self.last_rx.max(self.last_activity));
        n
    }

    /// Notes activity and makes sure an idle check follows it.
    fn touch(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
        if self.shrink_at.is_none() && self.state != State::Closed {
            self.shrink_at = Some(self.last_activity + IDLE_SHRINK);
        }
    }

    /// Reads received bytes.
    pub fn recv(&mut self, now: Instant, out: &mut [u8]) -> usize {
        let n = self.rcvbuf.read(out);
        self.touch(now);
        if n > 0 {
            self.drs_copied += n as u64;
            self.autotune_receive(now);
            self.maybe_window_update();
        }
        n
    }

    /// Closes the sending side: a FIN follows the queued data (RFC 9293 CLOSE).
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::SynSent => self.finish(End::Normal),
            State::SynReceived | State::Established => {
                self.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_queued = true;
                self.state = State::LastAck;
            }
            _ => {}
        }
        let _ = now;
    }

    /// The app released the connection: an orphan in FIN-WAIT-2 is bounded by `fin_wait2`.
    pub fn orphan(&mut self, now: Instant) {
        if matches!(self.state, State::FinWait1 | State::FinWait2) && self.close_at.is_none() {
            self.close_at = Some(now + self.cfg.fin_wait2);
        }
    }

    /// Resets the connection: a RST goes out (when synchronized) and the state is CLOSED.
    pub fn abort(&mut self) {
        if matches!(
            self.state,
            State::SynReceived
                | State::Established
                | State::FinWait1
                | State::FinWait2
                | State::CloseWait
        ) {
            self.rst_now = Some(self.snd_nxt);
            self.rst_ack = true;
        }
        self.finish(End::Aborted);
    }

    pub fn set_nodelay(&mut self, on: bool) {
        self.nodelay = on;
    }

    /// Cork mode (like Linux `TCP_CORK`): partial segments wait until uncorked (at most 200 ms).
    pub fn set_cork(&mut self, on: bool, now: Instant) {
        self.cork = on;
        self.cork_at = on.then(|| now + CORK_MAX);
    }

    /// Replaces the congestion controller (before data flows).
    pub fn set_congestion_control(&mut self, cc: Box<dyn CongestionControl>) {
        self.cc = cc;
    }

    /// Copies `out.len()` payload bytes of a [`Transmit`] into `out`.
    pub fn copy_payload(&self, offset: usize, out: &mut [u8]) {
        let n = self.sndbuf.copy_at(offset, out);
        debug_assert_eq!(n, out.len());
    }

    // ------------------------------------------------------------------ ICMP

    /// ICMP "fragmentation needed" (RFC 1191) for a segment with sequence number `seq`.
    /// Returns false when `seq` is not in flight (a forged or stale message: ignored).
    pub fn handle_frag_needed(&mut self, seq: Seq, next_hop_mtu: u16) -> bool {
        //= rfc5927#section-4.1
        // Only believe messages about data in flight.
        if !seq.in_range(self.snd_una, self.snd_max.max(self.snd_una + 1)) {
            return false;
        }
        let mss = (next_hop_mtu as u32).saturating_sub(40).max(536);
        if (mss as u16) < self.peer_mss {
            self.peer_mss = mss as u16;
            self.update_mss();
            // Resend what is in flight in the smaller size (Linux's tcp_simple_retransmit).
            self.snd_nxt = self.snd_una;
            self.rtt_timed = None;
        }
        true
    }

    /// ICMP destination unreachable (not frag-needed) for `seq`. Hard for a connection still in
    /// SYN-SENT (the connect fails); a soft error otherwise, as Linux treats it.
    pub fn handle_unreachable(&mut self, seq: Seq) -> bool {
        if !seq.in_range(self.snd_una, self.snd_max.max(self.snd_una + 1)) {
            return false;
        }
        if self.state == State::SynSent {
            self.finish(End::Refused);
        }
        true
    }

    // ------------------------------------------------------------------ segment arrival

    /// Processes one segment for this connection (already demultiplexed, checksum verified).
    pub fn handle_segment(&mut self, now: Instant, seg: &Segment, payload: &[u8]) {
        self.info.segs_in += 1;
        if seg.len > 0 {
            self.info.data_segs_in += 1;
        }
        self.last_rx = now;
        self.touch(now);
        self.keepalive_sent = 0;
        match self.state {
            State::Closed => return,
            State::SynSent => return self.on_syn_sent(now, seg),
            _ => {}
        }

        //= rfc7323#section-5.3
        // PAWS: a segment whose timestamp is older than the last one accepted is a duplicate.
        if self.ts_enabled && !seg.flags.rst {
            if let Some(ts) = seg.opts.timestamp {
                let stale = now.saturating_since(self.ts_recent_at) > PAWS_IDLE;
                if !ts_le(self.ts_recent, ts.val) && !stale {
                    self.info.paws_drops += 1;
                    self.ack_ratelimited(now);
                    return;
                }
            }
        }

        // The peer's SYN again (our SYN-ACK was lost): send the SYN-ACK again at once, as Linux
        // does (tcp_check_req). It sits below RCV.NXT, so this comes before the window test.
        if self.state == State::SynReceived
            && seg.flags.syn
            && !seg.flags.ack
            && !seg.flags.rst
            && seg.seq == self.irs
        {
            self.synack_now = true;
            return;
        }

        //= rfc9293#section-3.5
        // Simultaneous open (Figure 8): the peer's SYN-ACK, crossing ours, acknowledges our SYN
        // and repeats its SYN, which sits just below RCV.NXT. It completes the handshake (as
        // Linux's tcp_validate_incoming lets it), rather than drawing a challenge ACK.
        if self.state == State::SynReceived
            && seg.flags.syn
            && seg.flags.ack
            && !seg.flags.rst
            && seg.seq == self.irs
            && seg.ack == self.snd_max
            && self.snd_una == self.iss
        {
            self.state = State::Established;
            self.snd_wnd = seg.window as u32;
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = seg.ack;
            self.process_ack(now, seg);
            return;
        }

        //= rfc9293#section-3.10.7.4
        // First, check the sequence number.
        if !self.seq_acceptable(seg) {
            if seg.flags.rst {
                return;
            }
            if seg.flags.syn {
                self.challenge_ack(now);
                return;
            }
            if seg.seq_len() > 0 && seg.seq_end().le(self.rcv_nxt) {
                // An old duplicate: acknowledge at once, with a D-SACK for the data.
                // (The receive buffer records the D-SACK range.)
                let below = (self.rcv_nxt - seg.seq) as u64;
                if seg.len > 0 && below <= self.rcv_nxt_off {
                    self.rcvbuf.write_at(self.rcv_nxt_off - below, payload);
                }
                if self.state == State::TimeWait {
                    //= rfc9293#section-3.10.7.4
                    // TIME-WAIT: acknowledge a retransmitted FIN and restart the 2 MSL timeout.
                    self.close_at = Some(now + self.cfg.time_wait);
                }
                self.ack_now = true;
            } else {
                self.ack_ratelimited(now);
            }
            return;
        }

        //= rfc5961#section-3.2
        // Second, RST: exactly at RCV.NXT resets; elsewhere in the window earns a challenge ACK.
        if seg.flags.rst {
            if seg.seq == self.rcv_nxt {
                let end = match self.state {
                    State::SynReceived => End::Refused,
                    State::Closing | State::LastAck | State::TimeWait => End::Normal,
                    _ => End::Reset,
                };
                self.finish(end);
            } else {
                self.challenge_ack(now);
            }
            return;
        }

        //= rfc5961#section-4.2
        // Fourth, a SYN in a synchronized state gets a challenge ACK, wherever it falls.
        if seg.flags.syn {
            self.challenge_ack(now);
            return;
        }

        // Fifth, the ACK field.
        if !seg.flags.ack {
            return;
        }
        if self.state == State::SynReceived {
            if seg.ack.gt(self.snd_una) && seg.ack.le(self.snd_max) {
                self.state = State::Established;
                self.snd_wnd = (seg.window as u32) << self.snd_wscale;
                self.max_snd_wnd = self.snd_wnd;
                self.snd_wl1 = seg.seq;
                self.snd_wl2 = seg.ack;
            } else {
                self.rst_now = Some(seg.ack);
                return;
            }
        }
        if seg.ack.gt(self.snd_max) {
            //= rfc9293#section-3.10.7.4
            // An ACK for something not yet sent: send an ACK, drop the segment.
            self.ack_ratelimited(now);
            return;
        }
        //= rfc5961#section-5.2
        // An ACK older than SND.UNA - MAX.SND.WND is a blind injection attempt: challenge it.
        let floor = self.snd_una + 0u32.wrapping_sub(self.max_snd_wnd.max(1));
        if seg.ack.lt(floor) {
            self.challenge_ack(now);
            return;
        }
        self.process_ack(now, seg);
        if self.state == State::Closed {
            return;
        }

        // Seventh, the segment text.
        if seg.len > 0 {
            match self.state {
                State::Established | State::FinWait1 | State::FinWait2 => {
                    self.receive_data(now, seg, payload)
                }
                _ => {}
            }
        }

        // Eighth, the FIN.
        if seg.flags.fin && self.peer_fin.is_none() {
            self.peer_fin = Some(seg.seq + seg.len);
        }
        self.maybe_take_fin(now);
        self.timestamp_update(seg);
        if self.ack_now {
            self.dack_at = None;
        }
        self.rearm_keepalive(now);
    }

    /// RFC 9293 §3.10.7.4 acceptability test, against the window we advertised.
    fn seq_acceptable(&self, seg: &Segment) -> bool {
        let wnd = self.rcv_adv - self.rcv_nxt;
        let len = seg.seq_len();
        let lo = self.rcv_nxt;
        let hi = self.rcv_nxt + wnd;
        match (len, wnd) {
            (0, 0) => seg.seq == lo,
            (0, _) => seg.seq.in_range(lo, hi),
            // A zero window still takes the ACK (and RST) of a segment right at RCV.NXT.
            (_, 0) => seg.seq == lo,
            (_, _) => seg.seq.in_range(lo, hi) || (seg.seq + (len - 1)).in_range(lo, hi),
        }
    }

    fn on_syn_sent(&mut self, now: Instant, seg: &Segment) {
        //= rfc9293#section-3.10.7.3
        let ack_ok = seg.flags.ack && seg.ack.gt(self.iss) && seg.ack.le(self.snd_max);
        if seg.flags.ack && !ack_ok {
            if !seg.flags.rst {
                self.rst_now = Some(seg.ack);
            }
            return;
        }
        if seg.flags.rst {
            if ack_ok {
                self.finish(End::Refused);
            }
            return;
        }
        if !seg.flags.syn {
            return;
        }
        self.rearm_keepalive(now);
        self.take_syn_options(seg, now);
        self.irs = seg.seq;
        self.rcv_nxt = seg.seq + 1;
        self.rcv_adv = self.rcv_nxt;
        if ack_ok {
            self.state = State::Established;
            self.snd_wnd = seg.window as u32;
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = seg.ack;
            self.process_ack(now, seg);
            self.ack_now = true;
        } else {
            // Simultaneous open.
            self.state = State::SynReceived;
            self.snd_wnd = seg.window as u32;
            self.snd_wl1 = seg.seq;
            self.synack_now = true;
            self.snd_nxt = self.iss;
        }
    }

    fn process_ack(&mut self, now: Instant, seg: &Segment) {
        let ack = seg.ack;
        let window = if seg.flags.syn {
            seg.window as u32
        } else {
            (seg.window as u32) << self.snd_wscale
        };
        if !seg.opts.sack.is_empty() {
            self.info.sacks_in += 1;
        }
        if ack.gt(self.snd_una) {
            self.on_new_ack(now, seg);
        } else if ack == self.snd_una
            && seg.len == 0
            && !seg.flags.syn
            && !seg.flags.fin
            && window == self.snd_wnd
            && self.snd_max.gt(self.snd_una)
        {
            //= rfc5681#section-2
            // A duplicate ACK: same ACK, no data, same window, data outstanding.
            self.info.dupacks_in += 1;
            self.on_dupack(now);
        }
        //= rfc9293#section-3.10.7.4
        // Window update only from a segment newer than the last one that updated it.
        if self.snd_wl1.lt(seg.seq) || (self.snd_wl1 == seg.seq && self.snd_wl2.le(ack)) {
            let was_stalled = self.window_stalled();
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = ack;
            if was_stalled && !self.window_stalled() {
                self.persist_at = None;
                self.backoff = 0;
            }
        }
        self.update_persist(now);
    }

    fn on_new_ack(&mut self, now: Instant, seg: &Segment) {
        let ack = seg.ack;
        let prior_in_flight = self.in_flight() as u64;
        let acked = ack - self.snd_una;
        let syn_acked = self.snd_una == self.iss && ack.gt(self.iss);
        let fin_acked = self.fin_seq.is_some_and(|f| ack.gt(f));
        let data_acked = acked as usize - syn_acked as usize - fin_acked as usize;
        self.sndbuf.ack(data_acked.min(self.sndbuf.len()));
        self.snd_una = ack;
        if self.snd_nxt.lt(ack) {
            self.snd_nxt = ack;
        }
        self.info.bytes_acked += data_acked as u64;
        self.delivered += acked as u64;

        // RTT: the timed segment (Karn: cleared on retransmission) or the timestamp echo.
        let mut rtt = None;
        if let Some((end, sent)) = self.rtt_timed {
            if ack.ge(end) {
                rtt = Some(now.saturating_since(sent));
                self.rtt_timed = None;
            }
        }
        if rtt.is_none() && self.ts_enabled {
            if let Some(ts) = seg.opts.timestamp {
                let ms = self.tsval(now).wrapping_sub(ts.ecr);
                // The echo only counts whole milliseconds: a 0 or 1 ms sample says "under 2 ms",
                // which the timed segment measures in microseconds (taking 0 as 1 µs dragged
                // SRTT and min RTT towards zero on short paths).
                if ts.ecr != 0 && (2..60_000).contains(&ms) {
                    rtt = Some(Duration::from_millis(ms as u64));
                }
            }
        }
        if let Some(r) = rtt {
            self.rtt_sample(r);
            //= rfc6298#section-3
            // Karn: a backed-off RTO stays until there is a sample from a segment that was not
            // retransmitted (or a timestamp echo), as Linux's tcp_ack_update_rtt does.
            self.update_rto();
        } else if syn_acked && self.srtt.is_none() && self.info.rto_count > 0 {
            //= rfc6298#section-5
            // (5.7) The SYN or SYN-ACK timed out and gave no sample: data starts with RTO >= 3 s.
            self.rto = self.rto.max(Duration::from_secs(3)).min(self.cfg.rto_max);
        }
        self.backoff = 0;
        self.stalled_since = None;

        let round_start = ack.ge(self.round_end);
        if round_start {
            let round_time = now.saturating_since(self.round_started_at);
            if !round_time.is_zero() {
                let bits = (self.delivered - self.round_start_delivered) as u128 * 8;
                self.info.delivery_rate_bps =
                    (bits * 1_000_000_000 / round_time.as_nanos()).min(u64::MAX as u128) as u64;
            }
            self.round_started_at = now;
            self.round_start_delivered = self.delivered;
            self.round_end = self.snd_max;
            self.max_flight_prev = self.max_flight_round;
            self.max_flight_round = self.in_flight();
        }
        // Like Linux's tcp_is_cwnd_limited: the window only grows when the sender used it (half
        // of it in slow start, nearly all of it after).
        let cwnd = self.cc.window();
        let used = self.max_flight_round.max(self.max_flight_prev) as u64;
        let cwnd_limited = if self.cc.in_slow_start() {
            used * 2 >= cwnd
        } else {
            used + 3 * self.snd_mss as u64 >= cwnd
        };
        let in_recovery = self.in_recovery;
        if self.in_recovery {
            if ack.ge(self.recover) {
                //= rfc6582#section-3.2
                // Full acknowledgment: recovery ends.
                self.in_recovery = false;
                self.dupacks = 0;
                self.cc.on_recovery_end(now);
            } else {
                // Partial acknowledgment: retransmit the next hole at once.
                self.rtx_at = Some(self.snd_una);
                self.dupacks = 0;
            }
        } else {
            self.dupacks = 0;
        }
        let sample = AckSample {
            now,
            acked_bytes: acked as u64,
            rtt,
            srtt: self.srtt.unwrap_or(self.rto),
            min_rtt: self.min_rtt.unwrap_or(self.rto),
            prior_in_flight,
            in_flight: self.in_flight() as u64,
            delivered: self.delivered,
            delivery_rate: None,
            app_limited: !cwnd_limited,
            round_start,
            in_recovery,
            mss: self.snd_mss,
            lost_bytes: 0,
        };
        self.cc.on_ack(&sample);
        self.grow_send_buffer();

        if fin_acked {
            match self.state {
                State::FinWait1 => {
                    self.state = State::FinWait2;
                    if self.close_at.is_none() && self.fin_received {
                        self.close_at = Some(now + self.cfg.time_wait);
                    }
                }
                State::Closing => self.enter_time_wait(now),
                State::LastAck => {
                    self.finish(End::Normal);
                    return;
                }
                _ => {}
            }
        }
        self.rto_at = if self.snd_una == self.snd_max {
            None
        } else {
            Some(now + self.rto)
        };
        if self.snd_una == self.snd_max && self.unsent() == 0 {
            // Everything is acknowledged and nothing waits: from here the app is the limit (else
            // an idle connection would count as busy until it next tries to send).
            self.set_limit(now, Limit::App);
        }
    }

    fn on_dupack(&mut self, now: Instant) {
        self.dupacks += 1;
        //= rfc6582#section-3.2
        // Three duplicates start fast retransmit, unless they belong to data sent before the last
        // recovery (SND.UNA not above `recover`).
        if self.dupacks == 3 && !self.in_recovery && self.snd_una.ge(self.recover) {
            self.in_recovery = true;
            self.recover = self.snd_max;
            self.cc
                .on_congestion_event(now, self.flight_size() as u64, self.snd_mss);
            self.rtx_at = Some(self.snd_una);
            self.info.fast_retransmits += 1;
        }
    }

    fn receive_data(&mut self, now: Instant, seg: &Segment, payload: &[u8]) {
        let delta = seg.seq.0.wrapping_sub(self.rcv_nxt.0) as i32 as i64;
        let mut data = payload;
        let mut off = self.rcv_nxt_off as i64 + delta;
        if off < 0 {
            data = &data[((-off) as usize).min(data.len())..];
            off = 0;
        }
        let in_order = delta <= 0;
        let had_holes = self.rcvbuf.has_out_of_order();
        let w = self.rcvbuf.write_at(off as u64, data);
        self.info.bytes_received += w.stored as u64;
        if w.advanced > 0 {
            self.rcv_nxt += w.advanced as u32;
            self.rcv_nxt_off += w.advanced as u64;
        }
        self.rcv_mss = self.rcv_mss.max(seg.len.min(65535));
        //= rfc9293#section-3.8.6.3
        // ACK at once for out-of-order data, for data that fills a hole, and during quick-ACK;
        // otherwise at least every second full-sized segment, or after the delayed-ACK timeout.
        if !in_order || had_holes || w.duplicate.is_some() || (w.stored as u32) < seg.len {
            self.ack_now = true;
        } else {
            if seg.len >= self.rcv_mss.min(self.snd_mss.max(536)) {
                self.unacked_segs += 1;
            }
            if self.quickacks > 0 {
                self.quickacks -= 1;
                self.ack_now = true;
            } else if self.unacked_segs >= 2 {
                self.ack_now = true;
            } else if self.dack_at.is_none() {
                self.dack_at = Some(now + self.cfg.delayed_ack);
            }
        }
    }

    fn maybe_take_fin(&mut self, now: Instant) {
        let Some(f) = self.peer_fin else {
            return;
        };
        if self.fin_received || self.rcv_nxt != f {
            return;
        }
        self.fin_received = true;
        self.rcv_nxt += 1;
        self.ack_now = true;
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                if self.fin_seq.is_some_and(|fs| self.snd_una.gt(fs)) {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    fn timestamp_update(&mut self, seg: &Segment) {
        //= rfc7323#section-4.3
        // Remember the timestamp of a segment that covers the last ACK we sent.
        if let (true, Some(ts)) = (self.ts_enabled, seg.opts.timestamp) {
            if seg.seq.le(self.last_ack_sent) && ts_le(self.ts_recent, ts.val) {
                self.ts_recent = ts.val;
                self.ts_recent_at = self.last_rx;
            }
        }
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.rto_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.close_at = Some(now + self.cfg.time_wait);
        if self.end.is_none() {
            self.end = Some(End::Normal);
        }
    }

    fn finish(&mut self, end: End) {
        self.state = State::Closed;
        if self.end.is_none() {
            self.end = Some(end);
        }
        self.rto_at = None;
        self.dack_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.close_at = None;
        self.shrink_at = None;
        self.ack_now = false;
        self.syn_now = false;
        self.synack_now = false;
        self.probe_now = false;
        self.rtx_at = None;
    }

    // ------------------------------------------------------------------ timers

    /// Runs every timer due at `now`. Calling it early (or twice) does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dack_at.is_some_and(|t| t <= now) {
            self.dack_at = None;
            self.ack_now = true;
        }
        if self.cork_at.is_some_and(|t| t <= now) {
            self.cork_at = None;
            self.cork = false;
        }
        if self.shrink_at.is_some_and(|t| t <= now) {
            self.shrink_at = None;
            if now.saturating_since(self.last_activity) >= IDLE_SHRINK {
                self.rcvbuf.shrink();
                self.sndbuf.shrink();
            } else {
                self.shrink_at = Some(self.last_activity + IDLE_SHRINK);
            }
        }
        if self.close_at.is_some_and(|t| t <= now) {
            self.close_at = None;
            match self.state {
                State::TimeWait => self.finish(End::Normal),
                State::FinWait2 => self.finish(End::TimedOut),
                _ => {}
            }
            if self.state == State::Closed {
                return;
            }
        }
        if self.rto_at.is_some_and(|t| t <= now) {
            self.rto_at = None;
            self.on_rto(now);
            if self.state == State::Closed {
                return;
            }
        }
        if self.persist_at.is_some_and(|t| t <= now) {
            self.persist_at = None;
            if self.window_stalled() {
                self.probe_now = true;
                self.info.zero_window_probes += 1;
                self.backoff = (self.backoff + 1).min(16);
                if self.stalled_since.is_none() {
                    self.stalled_since = Some(now);
                }
                if self.user_timed_out(now) {
                    self.finish(End::TimedOut);
                    return;
                }
            }
            self.update_persist(now);
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            self.keepalive_at = None;
            if let Some(ka) = self.cfg.keepalive {
                if self.keepalive_sent >= ka.probes {
                    self.finish(End::TimedOut);
                    return;
                }
                if self.state.synchronized() && self.state != State::TimeWait {
                    self.keepalive_sent += 1;
                    self.probe_now = true;
                    self.keepalive_at = Some(now + ka.interval);
                }
            }
        }
    }

    fn user_timed_out(&self, now: Instant) -> bool {
        self.stalled_since
            .is_some_and(|t| now.saturating_since(t) >= self.cfg.user_timeout)
    }

    fn on_rto(&mut self, now: Instant) {
        if self.state.synchronized() && self.snd_una == self.snd_max {
            return; // nothing outstanding: a stale deadline
        }
        if self.stalled_since.is_none() {
            // The user timeout runs from the first transmission of the oldest unacknowledged
            // segment (Linux's retrans_stamp), one RTO before this first timeout.
            self.stalled_since = Some(now - self.rto);
        }
        let retries = match self.state {
            State::SynSent => Some(self.cfg.syn_retries),
            State::SynReceived => Some(self.cfg.synack_retries),
            _ => None,
        };
        if self.user_timed_out(now) || retries.is_some_and(|r| self.backoff >= r) {
            self.finish(End::TimedOut);
            return;
        }
        self.info.rto_count += 1;
        self.backoff += 1;
        //= rfc6298#section-5
        // (5.5) back off the timer; (5.6) restart it; Karn: no RTT sample from retransmissions.
        self.rto = (self.rto * 2).min(self.cfg.rto_max);
        self.rtt_timed = None;
        match self.state {
            State::SynSent => self.syn_now = true,
            State::SynReceived => self.synack_now = true,
            _ => {
                //= rfc5681#section-3.1
                // ssthresh is cut once per timeout series, not again for the same segment.
                if self.backoff == 1 {
                    self.cc.on_rto(now, self.snd_mss);
                }
                //= rfc6582#section-3.2
                // After a timeout, duplicate ACKs for data sent before it must not start a
                // second fast retransmit.
                self.recover = self.snd_max;
                self.in_recovery = false;
                self.dupacks = 0;
                self.rtx_at = None;
                self.snd_nxt = self.snd_una;
            }
        }
        let mut at = now + self.rto;
        if self.state.synchronized() {
            // Linux's tcp_clamp_rto_to_user_timeout: give up at the user timeout, not at the end
            // of a backed-off RTO that runs past it.
            if let Some(t) = self.stalled_since {
                at = at.min(t + self.cfg.user_timeout);
            }
        }
        self.rto_at = Some(at);
    }

    /// Data waits for the peer's window alone: nothing is in flight (so no ACK is coming), and the
    /// offered window is zero or too small for sender SWS avoidance to use. Only a probe can then
    /// learn of a window update that was lost; without one both sides wait forever.
    fn window_stalled(&self) -> bool {
        self.state.synchronized()
            && self.unsent() > 0
            && self.snd_una == self.snd_max
            && (self.snd_wnd == 0 || (!self.cork && self.next_data_len().is_none()))
    }

    fn update_persist(&mut self, now: Instant) {
        if !self.window_stalled() {
            self.persist_at = None;
        } else if self.persist_at.is_none() {
            //= rfc9293#section-3.8.6.1
            // Probe a zero window with exponential backoff.
            let base = self.rto.max(self.cfg.rto_min);
            let d = (base * (1u32 << self.backoff.min(10))).min(self.cfg.rto_max);
            self.persist_at = Some(now + d);
        }
    }

    fn rearm_keepalive(&mut self, now: Instant) {
        if let Some(ka) = self.cfg.keepalive {
            if self.state.synchronized() {
                self.keepalive_at = Some(now + ka.idle);
            }
        }
    }

    // ------------------------------------------------------------------ RTT and RTO

    fn rtt_sample(&mut self, rtt: Duration) {
        let rtt = rtt.max(Duration::from_micros(1));
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        //= rfc6298#section-2
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    fn update_rto(&mut self) {
        if let Some(srtt) = self.srtt {
            // Linux's form of RFC 6298 (2.3): the variance term is at least RTO.min, so the
            // timeout is SRTT + max(4·RTTVAR, RTO.min) — never below one RTT plus the floor.
            let rto = srtt + (self.rttvar * 4).max(self.cfg.rto_min);
            self.rto = rto.min(self.cfg.rto_max);
        }
    }

    // ------------------------------------------------------------------ buffers

    fn grow_send_buffer(&mut self) {
        // Like Linux's tcp_sndbuf_expand: room for two congestion windows (or the peer's window).
        let want = (2 * self.cc.window().max(self.snd_wnd as u64)) as usize;
        let limit = want
            .max(self.cfg.wmem_initial)
            .min(self.cfg.wmem_max)
            .max(self.sndbuf.limit());
        if limit > self.sndbuf.limit() {
            self.sndbuf.set_limit(limit);
        }
    }

    /// Dynamic right-sizing (as Linux's tcp_rcv_space_adjust): once per RTT, if the app read more
    /// than the buffer's quarter, let the buffer hold four times that (two windows in flight and
    /// room to grow), up to `rmem_max`.
    fn autotune_receive(&mut self, now: Instant) {
        let rtt = self
            .srtt
            .or(self.min_rtt)
            .unwrap_or(Duration::from_millis(100));
        if now.saturating_since(self.drs_start) < rtt {
            return;
        }
        let copied = self.drs_copied as usize;
        self.drs_start = now;
        self.drs_copied = 0;
        let limit = self.rcvbuf.limit();
        if copied * 4 > limit {
            let new = (copied * 4).min(self.cfg.rmem_max).max(limit);
            self.rcvbuf.set_limit(new);
        }
    }

    /// After the app read: announce a window that opened a lot (Linux's rule: the new window is at
    /// least twice what the peer last saw), without shrinking what we promised.
    fn maybe_window_update(&mut self) {
        if !self.state.synchronized() || self.fin_received {
            return;
        }
        let promised = self.rcv_adv - self.rcv_nxt;
        let free = self.rcvbuf.free_window() as u32;
        //= rfc9293#section-3.8.6.2.2
        // Receiver SWS avoidance: only move the edge by at least min(buffer/2, MSS).
        let step = (self.rcvbuf.limit() as u32 / 2).min(self.rcv_mss);
        if free >= promised.saturating_add(step) && free >= 2 * promised {
            self.ack_now = true;
        }
    }

    // ------------------------------------------------------------------ output

    fn tsval(&self, now: Instant) -> u32 {
        (now.as_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// Bytes between SND.UNA and SND.NXT (SYN and FIN count one each).
    pub fn flight_size(&self) -> u32 {
        self.snd_nxt - self.snd_una
    }

    /// Estimated bytes in the network: the flight size, less one MSS per duplicate ACK (each
    /// means a segment has left the network; this gives limited transmit and NewReno's window
    /// inflation without touching cwnd).
    fn in_flight(&self) -> u32 {
        self.flight_size()
            .saturating_sub(self.dupacks.saturating_mul(self.snd_mss))
    }

    /// Sequence number of the first data byte in the send buffer.
    fn data_base(&self) -> Seq {
        if self.snd_una == self.iss {
            self.iss + 1
        } else {
            self.snd_una
        }
    }

    /// Data end: one past the last byte the app queued.
    fn data_end(&self) -> Seq {
        self.data_base() + self.sndbuf.len() as u32
    }

    /// Bytes queued and not sent yet (from SND.NXT).
    fn unsent(&self) -> usize {
        let end = self.data_end();
        if self.snd_nxt.lt(end) {
            (end - self.snd_nxt) as usize
        } else {
            0
        }
    }

    fn fin_pending(&self) -> bool {
        self.fin_queued
            && match self.fin_seq {
                None => true,
                // Sent already; resend only after SND.NXT was pulled back.
                Some(f) => self.snd_nxt.le(f),
            }
    }

    fn can_send_data(&self) -> bool {
        matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::Closing
                | State::LastAck
        )
    }

    fn has_sendable(&self) -> bool {
        self.can_send_data() && self.next_data_len().is_some()
    }

    /// Length of the next new-data segment, or `None` when nothing may go now. Applies the
    /// receive window, the congestion window, Nagle, cork and sender SWS avoidance.
    fn next_data_len(&self) -> Option<(u32, bool)> {
        let unsent = self.unsent() as u32;
        let fin = self.fin_pending();
        if unsent == 0 {
            return fin.then_some((0, true));
        }
        let wnd_end = self.snd_una + self.snd_wnd;
        let wnd_room = if self.snd_nxt.lt(wnd_end) {
            wnd_end - self.snd_nxt
        } else {
            0
        };
        let cwnd = self.cc.window().min(u32::MAX as u64) as u32;
        let cwnd_room = cwnd.saturating_sub(self.in_flight());
        let len = unsent.min(self.snd_mss).min(wnd_room).min(cwnd_room);
        if len == 0 {
            return None;
        }
        // After a timeout pulled SND.NXT back, what goes out was sent before: SWS avoidance and
        // Nagle are for new data. Holding back a resend because the window now looks small (a
        // reordered older ACK, or a receive buffer full of out-of-order data waiting for this
        // very hole) would stall the connection until the user timeout.
        let resend = self.snd_nxt.lt(self.snd_max);
        if len < self.snd_mss && len < unsent && !resend {
            //= rfc9293#section-3.8.6.2.1
            // Sender SWS avoidance: a window-limited runt only when it is at least half the
            // largest window the peer offered.
            // With nothing in flight no ACK would come to open it further, so the runt goes (as
            // Linux sends it) rather than wait for a window update that may never be sent.
            if len < self.max_snd_wnd / 2 && self.snd_nxt != self.snd_una {
                return None;
            }
        }
        let tail = len == unsent;
        if tail && len < self.snd_mss && !fin && !resend {
            //= rfc9293#section-3.7.4
            // Nagle, in Minshall's variant as Linux has it: a small tail waits while an earlier
            // small segment is unacknowledged (unless no-delay). A full segment in flight does
            // not hold the tail, so a 1.5-MSS write does not wait for a delayed ACK.
            let small_unacked = self.snd_sml.gt(self.snd_una) && self.snd_sml.le(self.snd_nxt);
            if !self.nodelay && small_unacked {
                return None;
            }
            if self.cork {
                return None;
            }
        }
        Some((len, fin && tail))
    }

    fn window_field(&mut self, syn: bool) -> u16 {
        let free = self.rcvbuf.free_window() as u32;
        let mut right = self.rcv_nxt + free;
        if self.rcv_adv.gt(right) {
            right = self.rcv_adv; // never shrink the offered window
        }
        let scale = if syn { 0 } else { self.rcv_wscale };
        let wnd = ((right - self.rcv_nxt) >> scale).min(65535);
        self.rcv_adv = self.rcv_nxt + (wnd << scale);
        wnd as u16
    }

    fn base_segment(&mut self, now: Instant, seq: Seq, flags: Flags) -> Segment {
        let mut opts = Options::default();
        if self.ts_enabled {
            opts.timestamp = Some(Timestamp {
                val: self.tsval(now),
                ecr: self.ts_recent,
            });
        }
        let window = self.window_field(flags.syn);
        Segment {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: self.rcv_nxt,
            flags,
            window,
            opts,
            len: 0,
        }
    }

    fn syn_options(&self, now: Instant, opts: &mut Options, echo: bool) {
        opts.mss = Some(self.cfg.advertised_mss());
        let (ws, sack, ts) = if echo {
            (
                self.snd_wscale_offered(),
                self.sack_ok,
                self.ts_enabled.then(|| Timestamp {
                    val: self.tsval(now),
                    ecr: self.ts_recent,
                }),
            )
        } else {
            (
                self.cfg.window_scaling.then_some(self.rcv_wscale),
                self.cfg.sack,
                self.cfg.timestamps.then(|| Timestamp {
                    val: self.tsval(now),
                    ecr: 0,
                }),
            )
        };
        opts.wscale = ws;
        opts.sack_permitted = sack;
        opts.timestamp = ts;
    }

    fn snd_wscale_offered(&self) -> Option<u8> {
        // In a SYN-ACK, window scaling goes only to a peer that offered it.
        (self.cfg.window_scaling && (self.snd_wscale > 0 || self.rcv_wscale > 0))
            .then_some(self.rcv_wscale)
    }

    fn attach_sack(&mut self, seg: &mut Segment) {
        if !self.sack_ok || !self.state.synchronized() {
            return;
        }
        let max = if self.ts_enabled { 3 } else { 4 };
        // The receive buffer orders them: a pending D-SACK first (RFC 2883), then the block with
        // the latest segment, then the others most recent first (RFC 2018 §4).
        let mut blocks = [(0u64, 0u64); 4];
        let n = self.rcvbuf.sack_blocks(&mut blocks, max);
        if self.rcvbuf.dsack().is_some() {
            self.info.dsacks_out += 1;
            self.rcvbuf.clear_dsack();
        }
        let mut sack = SackBlocks::default();
        for &(l, r) in &blocks[..n] {
            let to_seq = |o: u64| self.rcv_nxt + (o.wrapping_sub(self.rcv_nxt_off) as u32);
            sack.push(to_seq(l), to_seq(r));
        }
        seg.opts.sack = sack;
    }

    fn note_sent(&mut self, now: Instant, seg: &Segment) {
        self.info.segs_out += 1;
        if seg.flags.ack {
            self.ack_now = false;
            self.dack_at = None;
            self.unacked_segs = 0;
            self.last_ack_sent = seg.ack;
        }
        if seg.len > 0 {
            self.info.data_segs_out += 1;
        }
        let _ = now;
    }

    fn set_limit(&mut self, now: Instant, l: Limit) {
        if l != self.limit {
            let d = now.saturating_since(self.limit_since).as_micros() as u64;
            match self.limit {
                Limit::Cwnd => self.info.cwnd_limited_us += d,
                Limit::Rwnd => self.info.rwnd_limited_us += d,
                Limit::App => self.info.app_limited_us += d,
                Limit::None => self.info.busy_us += d,
            }
            self.limit = l;
            self.limit_since = now;
        }
    }

    /// The next segment to send, if any. Call until `None` (or until the device is full; the
    /// same segment is then produced again on the next call — nothing is lost).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(seq) = self.rst_now.take() {
            let mut seg = self.base_segment(now, seq, Flags::default());
            seg.flags = Flags {
                rst: true,
                ack: std::mem::take(&mut self.rst_ack),
                ..Flags::default()
            };
            seg.window = 0;
            seg.opts = Options::default();
            self.info.segs_out += 1;
            return Some(Transmit {
                seg,
                payload_offset: 0,
            });
        }
        match self.state {
            State::Closed => return None,
            State::SynSent if self.syn_now => {
                self.syn_now = false;
                let flags = Flags {
                    syn: true,
                    ..Flags::default()
                };
                let mut seg = self.base_segment(now, self.iss, flags);
                self.syn_options(now, &mut seg.opts, false);
                // Karn: only the first transmission is timed (this one may be sent again
                // because of a timeout or because the peer's SYN came again).
                if self.snd_max == self.iss {
                    self.rtt_timed = Some((self.iss + 1, now));
                } else {
                    self.rtt_timed = None;
                    self.info.retransmits_total += 1;
                }
                self.snd_nxt = self.iss + 1;
                self.snd_max = self.snd_max.max(self.snd_nxt);
                self.rto_at = self.rto_at.or(Some(now + self.rto));
                self.note_sent(now, &seg);
                return Some(Transmit {
                    seg,
                    payload_offset: 0,
                });
            }
            State::SynReceived if self.synack_now => {
                self.synack_now = false;
                let flags = Flags {
                    syn: true,
                    ack: true,
                    ..Flags::default()
                };
                let mut seg = self.base_segment(now, self.iss, flags);
                self.syn_options(now, &mut seg.opts, true);
                // Karn: only the first transmission is timed (this one may be sent again
                // because of a timeout or because the peer's SYN came again).
                if self.snd_max == self.iss {
                    self.rtt_timed = Some((self.iss + 1, now));
                } else {
                    self.rtt_timed = None;
                    self.info.retransmits_total += 1;
                }
                self.snd_nxt = self.iss + 1;
                self.snd_max = self.snd_max.max(self.snd_nxt);
                self.rto_at = self.rto_at.or(Some(now + self.rto));
                self.note_sent(now, &seg);
                return Some(Transmit {
                    seg,
                    payload_offset: 0,
                });
            }
            State::SynSent | State::SynReceived if !self.ack_now => return None,
            _ => {}
        }

        if self.can_send_data() {
            if let Some(at) = self.rtx_at.take() {
                if at.ge(self.snd_una) && at.lt(self.snd_max) {
                    return Some(self.data_segment(now, at, None));
                }
            }
            match self.next_data_len() {
                Some((len, fin)) => {
                    let t = self.data_segment(now, self.snd_nxt, Some((len, fin)));
                    return Some(t);
                }
                None => {
                    let want = (self.unsent() as u32).min(self.snd_mss);
                    let wnd_end = self.snd_una + self.snd_wnd;
                    let wnd_room = if self.snd_nxt.lt(wnd_end) {
                        wnd_end - self.snd_nxt
                    } else {
                        0
                    };
                    let cwnd = self.cc.window().min(u32::MAX as u64) as u32;
                    let l = if want == 0 {
                        Limit::App
                    } else if wnd_room < want {
                        Limit::Rwnd
                    } else if cwnd.saturating_sub(self.in_flight()) < want {
                        Limit::Cwnd
                    } else {
                        // Nagle or cork holds a small tail: the app's pattern, not the network.
                        Limit::App
                    };
                    self.set_limit(now, l);
                    // Also when new data meets a window too small to use (not only a zero one).
                    self.update_persist(now);
                }
            }
        }

        if self.probe_now {
            self.probe_now = false;
            //= rfc9293#section-3.8.6.1
            // Zero-window and keepalive probe as Linux sends it: an ACK with SND.UNA - 1, which
            // the peer must answer with an ACK showing its window.
            let seg = self.base_segment(
                now,
                self.snd_una + u32::MAX,
                Flags {
                    ack: true,
                    ..Flags::default()
                },
            );
            self.info.segs_out += 1;
            return Some(Transmit {
                seg,
                payload_offset: 0,
            });
        }
        if self.ack_now && self.state != State::Closed {
            // A pure ACK carries SND.MAX, not SND.NXT: after a timeout pulled SND.NXT back, a
            // sequence number below the peer's RCV.NXT would make the peer drop the segment
            // as unacceptable (RFC 9293 §3.10.7.4) without reading its ACK field (as BSD's
            // tcp_output, and Linux, whose snd_nxt never goes back).
            let mut seg = self.base_segment(
                now,
                self.snd_max,
                Flags {
                    ack: true,
                    ..Flags::default()
                },
            );
            self.attach_sack(&mut seg);
            self.note_sent(now, &seg);
            return Some(Transmit {
                seg,
                payload_offset: 0,
            });
        }
        None
    }

    /// A segment of data (and maybe FIN) starting at `seq`. `fresh` is `Some((len, fin))` for new
    /// data from SND.NXT; `None` retransmits one segment at `seq`.
    fn data_segment(&mut self, now: Instant, seq: Seq, fresh: Option<(u32, bool)>) -> Transmit {
        let base = self.data_base();
        let end = self.data_end();
        let (len, fin) = match fresh {
            Some(x) => x,
            None => {
                let data_left = if seq.lt(end) { end - seq } else { 0 };
                let len = data_left.min(self.snd_mss);
                let fin = self.fin_queued && seq + len == end;
                (len, fin)
            }
        };
        if self.slow_start_restart_due(now) {
            self.cc.on_idle_restart(now, self.snd_mss);
        }
        let mut seg = self.base_segment(
            now,
            seq,
            Flags {
                ack: true,
                fin,
                psh: len > 0 && seq + len == end,
                ..Flags::default()
            },
        );
        self.attach_sack(&mut seg);
        // SACK blocks take option space from the payload.
        let room = self.snd_mss.saturating_sub(
            seg.opts.sack.len() as u32 * 8 + if seg.opts.sack.is_empty() { 0 } else { 4 },
        );
        let len = len.min(room.max(1));
        let fin = fin && seq + len == end;
        seg.flags.fin = fin;
        seg.len = len;
        let seg_end = seq + len + fin as u32;
        let retransmit = seq.lt(self.snd_max);
        if retransmit {
            self.info.retransmits_total += 1;
            self.info.bytes_retrans += len as u64;
            if let Some((timed_end, _)) = self.rtt_timed {
                if seq.lt(timed_end) {
                    self.rtt_timed = None; // Karn
                }
            }
        } else {
            self.info.bytes_sent += len as u64;
            if self.rtt_timed.is_none() {
                self.rtt_timed = Some((seg_end, now));
            }
        }
        if fin {
            self.fin_seq = Some(seq + len);
        }
        if len < self.snd_mss {
            self.snd_sml = seq + len;
        }
        if fresh.is_some() {
            self.snd_nxt = seg_end;
        }
        if self.snd_max.lt(seg_end) {
            self.snd_max = seg_end;
        }
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto);
        }
        let flight = self.in_flight();
        self.max_flight_round = self.max_flight_round.max(flight);
        self.cc.on_sent(now, len as u64 + fin as u64, flight as u64);
        self.last_tx_data = now;
        self.touch(now);
        self.set_limit(now, Limit::None);
        self.note_sent(now, &seg);
        Transmit {
            seg,
            payload_offset: (seq - base) as usize,
        }
    }

    fn slow_start_restart_due(&self, now: Instant) -> bool {
        //= rfc5681#section-4.1
        self.cfg.slow_start_after_idle
            && self.snd_una == self.snd_max
            && now.saturating_since(self.last_tx_data) > self.rto
            && self.info.data_segs_out > 0
    }

    fn ack_ratelimited(&mut self, now: Instant) {
        if self
            .last_ratelimited_ack
            .is_some_and(|t| now.saturating_since(t) < OOW_RATELIMIT)
        {
            return;
        }
        self.last_ratelimited_ack = Some(now);
        self.ack_now = true;
    }

    fn challenge_ack(&mut self, now: Instant) {
        //= rfc5961#section-7
        // Challenge ACKs are rate limited.
        if self
            .last_ratelimited_ack
            .is_some_and(|t| now.saturating_since(t) < OOW_RATELIMIT)
        {
            return;
        }
        self.info.challenge_acks += 1;
        self.last_ratelimited_ack = Some(now);
        self.ack_now = true;
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("state", &self.state)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("snd_una", &self.snd_una)
            .field("snd_nxt", &self.snd_nxt)
            .field("snd_max", &self.snd_max)
            .field("rcv_nxt", &self.rcv_nxt)
            .finish_non_exhaustive()
    }
}
