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
use super::pmtu::{Plpmtud, ProbeRoom};
use super::recovery::rack::DUP_THRESH;
use super::recovery::scoreboard::{EVER_RETRANS, LOST, RETRANS, SACKED};
use super::recovery::{Pacer, Prr, Rack, RateSample, RateSampler, Scoreboard};
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
    /// Scoreboard right now: bytes SACKed, marked lost, and retransmitted still in flight.
    pub sacked_bytes: u64,
    pub lost_bytes: u64,
    pub retrans_out_bytes: u64,
    /// Segments marked lost by RACK (RFC 8985), by duplicate ACKs (DupThresh / NewReno) and by
    /// retransmission timeouts.
    pub lost_rack: u64,
    pub lost_dupack: u64,
    pub lost_rto: u64,
    /// Fast-recovery episodes entered.
    pub recoveries: u64,
    /// Tail loss probes sent, and those that repaired a loss (the probe was needed).
    pub tlp_probes: u64,
    pub tlp_recoveries: u64,
    pub dsacks_in: u64,
    /// Congestion responses undone as spurious (D-SACK, timestamps/Eifel, F-RTO), and how many
    /// of those were retransmission timeouts.
    pub spurious_undos: u64,
    pub spurious_rtos: u64,
    /// Reordering seen (RACK) and the reordering window multiplier.
    pub reord_seen: bool,
    pub reo_wnd_mult: u32,
    /// Bytes delivered (acknowledged or SACKed) in total.
    pub delivered_bytes: u64,
    /// The pacing rate in use, bytes per second (0: not paced).
    pub pacing_rate_bps: u64,
    /// Path MTU in use: the IP packet size of a full-sized segment (after ICMP and MTU
    /// probing; Linux's `tcpi_pmtu` is the route's MTU instead).
    pub pmtu: u32,
    /// MTU probes sent, acknowledged (the MSS rose) and lost (the search range fell), and
    /// retransmission timeouts taken as an MTU black hole (each lowered the MSS); see
    /// `stack::tcp::pmtu`.
    pub mtu_probes: u64,
    pub mtu_probe_successes: u64,
    pub mtu_probe_failures: u64,
    pub blackholes_detected: u64,
    /// The congestion controller's path model (`CongestionControl::model`; filled by BBR, 0 when
    /// the algorithm keeps no such estimate or has not set it yet). `bbr_bw_bps`: the bandwidth
    /// the model allows now (BBR.bw = min(max_bw, bw_lo)), bytes per second.
    pub bbr_bw_bps: u64,
    /// BBR.max_bw: the windowed maximum delivery rate, bytes per second.
    pub bbr_max_bw_bps: u64,
    /// BBR.min_rtt: BBR's own minimum RTT over its 10 s window, microseconds (`min_rtt_us` is
    /// the connection's over its whole life).
    pub bbr_min_rtt_us: u64,
    /// BBR.inflight_longterm (inflight_hi): the inflight bound loss set, bytes.
    pub bbr_inflight_hi_bytes: u64,
    /// BBR.inflight_shortterm (inflight_lo): this cycle's short-term inflight bound, bytes.
    pub bbr_inflight_lo_bytes: u64,
    /// BBR.bw_shortterm (bw_lo): this cycle's short-term bandwidth bound, bytes per second.
    pub bbr_bw_lo_bps: u64,
    /// The pacing and cwnd gains in use, in percent (Startup: 277 and 200).
    pub bbr_pacing_gain_pct: u32,
    pub bbr_cwnd_gain_pct: u32,
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
    /// Payload of the last data segment received (for `rcv_mss`).
    last_seg_len: u32,

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

    // ---- loss recovery (RFC 6675 with SACK, RFC 6582 without) and congestion control
    cc: Box<dyn CongestionControl>,
    /// Duplicate ACKs in a row (RFC 5681 definition; what a peer without SACK tells us).
    dupacks: u32,
    /// Fast recovery (Linux's Recovery state), until SND.UNA reaches `recover`.
    in_recovery: bool,
    recover: Seq,
    /// After a retransmission timeout, until SND.UNA passes this (Linux's Loss state).
    loss_high: Option<Seq>,
    /// What is in flight, segment by segment.
    sb: Scoreboard,
    rack: Rack,
    /// RACK reorder timer (RFC 8985 §6.3).
    rack_at: Option<Instant>,
    prr: Prr,
    /// The window during fast recovery: what PRR allowed at the last ACK on top of the flight.
    recovery_cwnd: u64,
    /// RFC 6675 rescue retransmission done for this recovery (NextSeg rule 4).
    rescue_done: bool,
    rate: RateSampler,
    last_rate: Option<u64>,
    /// Tail loss probe deadline, a probe due now, and the probe outstanding (its end and
    /// whether it was a retransmission).
    tlp_at: Option<Instant>,
    tlp_now: bool,
    tlp_high: Option<(Seq, bool)>,
    undo: Undo,
    frto: Option<Frto>,
    pacer: Pacer,
    /// A data segment waits for its departure time (`pacer`).
    pace_blocked: bool,
    round_end: Seq,
    /// When the current round began and `delivered` then (for the delivery rate).
    /// Largest flight this round and the last, for Linux's "cwnd-limited" test.
    max_flight_round: u32,
    max_flight_prev: u32,

    // ---- receive autotuning (Linux DRS)
    drs_start: Instant,
    drs_copied: u64,
    /// Bytes received out of order since `drs_start` (DRS counts them as delivered).
    drs_ooo: u64,

    limit: Limit,
    limit_since: Instant,
    info: TcpInfo,
    /// Path MTU black-hole detection and probing (pmtu.rs).
    pmtu: Plpmtud,
}

/// What it takes to undo a congestion response found spurious (Linux's `undo_marker`,
/// `undo_retrans`, `retrans_stamp`).
#[derive(Clone, Copy, Debug, Default)]
struct Undo {
    /// SND.UNA when the episode began; `None` once undone or when there is nothing to undo.
    marker: Option<Seq>,
    /// Retransmissions of the episode that no D-SACK has yet shown unnecessary.
    retrans: u32,
    /// TSval of the episode's first retransmission.
    stamp: Option<u32>,
    /// The episode was a retransmission timeout.
    rto: bool,
}

/// F-RTO (RFC 5682 §3, SACK-enhanced, as Linux does it) after a retransmission timeout.
#[derive(Clone, Copy, Debug)]
struct Frto {
    /// SND.MAX when the timeout fired (step 1), or after new data went out (step 2b).
    high: Seq,
    /// Step 2b: the first ACK advanced the window; send new data rather than retransmit.
    new_data: bool,
}

/// What a data segment carries.
#[derive(Clone, Copy, Debug)]
enum Payload {
    /// New data from SND.NXT: length, and whether the FIN follows it.
    New(u32, bool),
    /// A retransmission of at most this many data bytes of the record at the sequence number.
    Rtx(u32),
    /// An MTU probe: this many bytes of new data from SND.NXT, more than the MSS (pmtu.rs).
    Probe(u32),
}

/// Linux's worst-case delayed-ACK time for a one-segment flight in the PTO (RFC 8985 §7.2).
const WC_DEL_ACK: Duration = Duration::from_millis(200);

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
            sndbuf: SendBuffer::new(cfg.wmem_initial.min(cfg.wmem_max)).with_ceiling(cfg.wmem_max),
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
            rcvbuf: RecvBuffer::new(cfg.rmem_initial.min(cfg.rmem_max)).with_ceiling(cfg.rmem_max),
            peer_fin: None,
            fin_received: false,
            rcv_mss: cfg.advertised_mss() as u32,
            last_seg_len: 0,
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
            loss_high: None,
            sb: Scoreboard::default(),
            rack: Rack::default(),
            rack_at: None,
            prr: Prr::default(),
            recovery_cwnd: 0,
            rescue_done: false,
            rate: RateSampler::default(),
            last_rate: None,
            tlp_at: None,
            tlp_now: false,
            tlp_high: None,
            undo: Undo::default(),
            frto: None,
            pacer: Pacer::default(),
            pace_blocked: false,
            round_end: iss,
            max_flight_round: 0,
            max_flight_prev: 0,
            drs_start: now,
            drs_copied: 0,
            drs_ooo: 0,
            limit: Limit::None,
            limit_since: now,
            info: TcpInfo::default(),
            pmtu: Plpmtud::new(cfg.mtu_probing, cfg.mtu_probe_interval, now),
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
        let mut base = (self.peer_mss as u32).min(self.cfg.advertised_mss() as u32);
        let opt = if self.ts_enabled { 12 } else { 0 };
        // MTU probing caps the MSS at the largest size the path is known to carry.
        self.pmtu.set_path(base, opt);
        if let Some(cap) = self.pmtu.mss_cap() {
            base = base.min(cap);
        }
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
        self.rcvbuf.capacity_bytes() + self.sndbuf.capacity_bytes() + self.sb.capacity_bytes()
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
        i.sacked_bytes = self.sb.sacked_bytes();
        i.lost_bytes = self.sb.lost_bytes();
        i.retrans_out_bytes = self.sb.retrans_bytes();
        i.reord_seen = self.rack.reord_seen;
        i.reo_wnd_mult = self.rack.reo_wnd_mult();
        i.delivered_bytes = self.rate.delivered;
        i.pacing_rate_bps = self.pacing_rate().unwrap_or(0);
        i.pmtu = self.pmtu.mtu_of(self.snd_mss);
        (
            i.mtu_probes,
            i.mtu_probe_successes,
            i.mtu_probe_failures,
            i.blackholes_detected,
        ) = self.pmtu.counters();
        let model = self.cc.model();
        i.bbr_bw_bps = model.bw.unwrap_or(0);
        i.bbr_max_bw_bps = model.max_bw.unwrap_or(0);
        i.bbr_min_rtt_us = model.min_rtt.map_or(0, |d| d.as_micros() as u64);
        i.bbr_inflight_hi_bytes = model.inflight_hi.unwrap_or(0);
        i.bbr_inflight_lo_bytes = model.inflight_lo.unwrap_or(0);
        i.bbr_bw_lo_bps = model.bw_lo.unwrap_or(0);
        i.bbr_pacing_gain_pct = model.pacing_gain_pct.unwrap_or(0);
        i.bbr_cwnd_gain_pct = model.cwnd_gain_pct.unwrap_or(0);
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
            self.rack_at,
            self.tlp_at,
            self.pace_blocked.then(|| self.pacer.next_departure()),
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
            || self.tlp_now
            || (!self.pace_blocked
                && (self.next_retransmit().is_some() || self.rfc6675_more().is_some()))
            || (!self.pace_blocked && self.has_sendable())
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
            // Resend what is in flight in the smaller size (Linux's tcp_simple_retransmit):
            // larger segments are lost, with no congestion response (Loss state without a
            // window cut).
            self.rtt_timed = None;
            let mut any = false;
            for i in 0..self.sb.len() {
                let s = *self.sb.get(i).expect("index");
                if s.len() - s.fin as u32 > self.snd_mss {
                    any |= self.sb.mark_lost(i) > 0;
                }
            }
            // (In fast recovery the lost segments simply go under PRR.)
            if any && self.loss_high.is_none() && !self.in_recovery {
                self.loss_high = Some(self.snd_max);
                self.undo = Undo::default();
                self.frto = None;
            }
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
        if seg.flags.fin && !self.fin_received {
            //= rfc5681#section-4.2
            // A FIN above a hole is out-of-order data too: ACK it at once, with SACK blocks
            // (Linux queues it out of order and sends a duplicate ACK). A sender whose tail loss
            // probe is the FIN learns about the hole from this ACK instead of its RTO.
            self.ack_now = true;
        }
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
        let advanced = ack.gt(self.snd_una);
        //= rfc5681#section-2
        // A duplicate ACK: same ACK, no data, same window, data outstanding.
        let dupack = ack == self.snd_una
            && seg.len == 0
            && !seg.flags.syn
            && !seg.flags.fin
            && window == self.snd_wnd
            && self.snd_max.gt(self.snd_una);
        if dupack {
            self.info.dupacks_in += 1;
        }
        let sack_news = self.sack_ok
            && !seg.opts.sack.is_empty()
            && ack == self.snd_una
            && self.state.synchronized();
        if advanced || dupack || sack_news {
            self.on_ack(now, seg, advanced, dupack);
            if self.state == State::Closed {
                return;
            }
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

    /// One ACK that acknowledged data, or told us something with SACK or by being a duplicate:
    /// the scoreboard, RTT, loss detection, the recovery state and congestion control, in
    /// Linux's order (`tcp_ack`: sacktag, clean the queue, RTT, `tcp_fastretrans_alert`,
    /// `cong_control`).
    fn on_ack(&mut self, now: Instant, seg: &Segment, advanced: bool, dupack: bool) {
        let ack = seg.ack;
        let prior_in_flight = self.in_flight() as u64;
        let prior_una = self.snd_una;
        let was_in_recovery = self.in_recovery;
        let ecr = self
            .ts_enabled
            .then(|| seg.opts.timestamp.map(|t| t.ecr))
            .flatten()
            .filter(|&e| e != 0);

        // ---- the scoreboard (cumulative part and SACK blocks)
        let blocks: &[(Seq, Seq)] = if self.sack_ok {
            seg.opts.sack.as_slice()
        } else {
            &[]
        };
        let min_rtt = self.min_rtt.unwrap_or(Duration::ZERO);
        let ts_offset = self.ts_offset;
        let tsval_of = |at: Instant| (at.as_millis() as u32).wrapping_add(ts_offset);
        let (rack, rate) = (&mut self.rack, &mut self.rate);
        let high_seq = self.frto.map(|f| f.high);
        let mut largest_original = 0u32;
        let out = self.sb.on_ack(ack, blocks, self.snd_max, high_seq, |s| {
            //= rfc8985#section-6.2
            // Step 2: the RTT of a retransmitted segment is only trusted when it cannot be the
            // ACK of the original (longer than min RTT, and the echo is not older).
            let retx = s.has(EVER_RETRANS);
            if !retx {
                largest_original = largest_original.max(s.len() - s.fin as u32);
            }
            let rtt_ok = !retx
                || (now.saturating_since(s.sent_at) >= min_rtt
                    && ecr.is_none_or(|e| ts_le(tsval_of(s.sent_at), e)));
            rack.on_delivered(s.sent_at, s.start, s.end, s.flags, now, rtt_ok);
            rate.on_delivered(now, s.len() as u64, s.sent_at, s.end.0, retx, &s.tx);
        });
        debug_assert!(self.sb.check());
        self.pmtu.on_delivered(largest_original);

        // ---- the cumulative ACK
        let mut rtt = None;
        let mut round_start = false;
        let mut syn_acked = false;
        let mut fin_acked = false;
        if advanced {
            let acked = ack - self.snd_una;
            syn_acked = self.snd_una == self.iss && ack.gt(self.iss);
            fin_acked = self.fin_seq.is_some_and(|f| ack.gt(f));
            let data_acked = acked as usize - syn_acked as usize - fin_acked as usize;
            self.sndbuf.ack(data_acked.min(self.sndbuf.len()));
            self.snd_una = ack;
            if self.snd_nxt.lt(ack) {
                self.snd_nxt = ack;
            }
            self.info.bytes_acked += data_acked as u64;
            if self.pmtu.on_ack(ack) {
                self.update_mss(); // an MTU probe got through: larger segments from now on
            }

            // RTT: the timed segment (Karn: cleared on retransmission) or the timestamp echo.
            if let Some((end, sent)) = self.rtt_timed {
                if ack.ge(end) {
                    rtt = Some(now.saturating_since(sent));
                    self.rtt_timed = None;
                }
            }
            if rtt.is_none() {
                if let Some(e) = ecr {
                    let ms = self.tsval(now).wrapping_sub(e);
                    // The echo only counts whole milliseconds: a 0 or 1 ms sample says "under
                    // 2 ms", which the timed segment measures in microseconds.
                    if (2..60_000).contains(&ms) {
                        rtt = Some(Duration::from_millis(ms as u64));
                    }
                }
            }
            if let Some(r) = rtt {
                self.rtt_sample(r);
                //= rfc6298#section-3
                // Karn: a backed-off RTO stays until there is a sample from a segment that was
                // not retransmitted (or a timestamp echo), as Linux's tcp_ack_update_rtt does.
                self.update_rto();
            } else if syn_acked && self.srtt.is_none() && self.info.rto_count > 0 {
                //= rfc6298#section-5
                // (5.7) The SYN or SYN-ACK timed out and gave no sample: data starts with
                // RTO >= 3 s.
                self.rto = self.rto.max(Duration::from_secs(3)).min(self.cfg.rto_max);
            }
            self.backoff = 0;
            self.stalled_since = None;
            round_start = ack.ge(self.round_end);
            if round_start {
                self.round_end = self.snd_max;
                self.max_flight_prev = self.max_flight_round;
                self.max_flight_round = self.in_flight();
            }
        }

        // ---- D-SACK: a retransmission was not needed
        if let Some((l, r)) = out.dsack {
            self.info.dsacks_in += 1;
            self.rack.on_dsack(ack, self.snd_max);
            //= rfc3708#section-3
            // Each D-SACKed retransmission of the episode is one fewer that may have been
            // needed; when none is left, the congestion response was spurious.
            if let Some(m) = self.undo.marker {
                if r.gt(m) && self.undo.retrans > 0 {
                    let segs = (r - l).div_ceil(self.snd_mss.max(1)).max(1);
                    self.undo.retrans = self.undo.retrans.saturating_sub(segs);
                }
            }
        }

        // ---- loss detection
        let newly_lost = self.detect_losses(now, advanced, dupack, blocks.is_empty());

        // ---- the recovery state
        self.update_recovery_state(now, &out, advanced, dupack, ecr);

        // ---- PRR: what this ACK lets go during fast recovery
        let delivered_data = out.acked + out.sacked;
        if self.in_recovery {
            //= rfc6937#section-3
            // Without SACK, each duplicate ACK stands for one delivered segment.
            let dd = if dupack && out.sacked == 0 && delivered_data == 0 {
                self.snd_mss as u64
            } else {
                delivered_data
            };
            let pipe = self.in_flight() as u64;
            let sndcnt = self
                .prr
                .on_ack(dd, pipe, self.cc.ssthresh(), self.snd_mss as u64);
            self.recovery_cwnd = pipe + sndcnt;
        }

        // ---- TLP: did the probe repair a loss?
        self.tlp_on_ack(now, ack, advanced, dupack, out.dsack, blocks.is_empty());

        // ---- congestion control
        let rs: Option<RateSample> = self.rate.take_sample(min_rtt);
        if let Some(r) = rs.and_then(|r| r.rate) {
            self.last_rate = Some(r);
            self.info.delivery_rate_bps = r;
        }
        if advanced || out.sacked > 0 {
            // Like Linux's tcp_is_cwnd_limited: the window only grows when the sender used it
            // (half of it in slow start, nearly all of it after).
            let cwnd = self.cc.window();
            let used = self.max_flight_round.max(self.max_flight_prev) as u64;
            let cwnd_limited = if self.cc.in_slow_start() {
                used * 2 >= cwnd
            } else {
                used + 3 * self.snd_mss as u64 >= cwnd
            };
            let cum = if advanced {
                (ack - prior_una) as u64
            } else {
                0
            };
            let rs = rs.unwrap_or_default();
            let sample = AckSample {
                now,
                // Linux raises cwnd only on ACKs that move SND.UNA (FLAG_DATA_ACKED in
                // tcp_may_raise_cwnd); an ACK that only SACKs delivers without growth.
                acked_bytes: if advanced {
                    cum.saturating_sub(out.sacked_acked) + out.sacked
                } else {
                    0
                },
                newly_delivered: cum.saturating_sub(out.sacked_acked) + out.sacked,
                rtt,
                srtt: self.srtt.unwrap_or(self.rto),
                min_rtt: self.min_rtt.unwrap_or(self.rto),
                prior_in_flight,
                in_flight: self.in_flight() as u64,
                delivered: self.rate.delivered,
                delivery_rate: rs.rate,
                app_limited: !cwnd_limited,
                round_start,
                // The ACK that ends recovery does not grow the window either (the state at the
                // ACK's arrival counts). After a timeout (Loss) the window grows in slow start
                // again, as Linux does.
                in_recovery: self.in_recovery || was_in_recovery,
                mss: self.snd_mss,
                sacked_bytes: out.sacked,
                lost_bytes: newly_lost,
                lost_total: self.rate.lost,
                is_app_limited: rs.is_app_limited,
                rate_delivered: rs.delivered,
                rate_interval: rs.interval,
                prior_delivered: rs.prior_delivered,
                tx_in_flight: rs.tx_in_flight,
                rate_lost: rs.lost,
                rate_is_retrans: rs.is_retrans,
                rate_rtt: rs.rtt,
            };
            self.cc.on_ack(&sample);
            self.grow_send_buffer();
        }

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
        let _ = syn_acked;
        if advanced {
            //= rfc6298#section-5
            // (5.2) all acknowledged: stop the timer; (5.3) new data acknowledged: restart it.
            self.rto_at = if self.snd_una == self.snd_max {
                None
            } else {
                Some(now + self.rto)
            };
        }
        if self.snd_una == self.snd_max {
            self.rack_at = None;
        }
        self.arm_tlp(now);
    }

    /// Marks what this ACK shows lost: RACK (the default, with SACK), RFC 6675's DupThresh
    /// (SACK without RACK), or three duplicate ACKs and NewReno partial ACKs (no SACK
    /// information). Returns the bytes newly marked lost.
    fn detect_losses(
        &mut self,
        now: Instant,
        advanced: bool,
        dupack: bool,
        no_blocks: bool,
    ) -> u64 {
        let mss = self.snd_mss.max(1) as u64;
        let mut lost = 0;
        if advanced {
            self.dupacks = 0;
        } else if dupack {
            self.dupacks += 1;
        }
        if self.sb.is_empty() {
            self.rack_at = None;
            return 0;
        }
        // A peer that has sent SACK blocks is a working SACK receiver: an ACK without blocks
        // then says nothing above SND.UNA arrived, not that SND.UNA's segment is lost, and the
        // NewReno partial-ACK rule below would resend the head on every such ACK (39 spurious
        // resends in one slow start at 250 ms). Linux uses the SACK/RACK path once SACK is
        // negotiated; the NewReno rules stay for a peer that negotiated SACK but sends none.
        let sack_info =
            self.sack_ok && (self.sb.sacked_bytes() > 0 || !no_blocks || self.info.sacks_in > 0);
        if sack_info && self.cfg.recovery.rack {
            let srtt = self.srtt.unwrap_or(self.rto);
            let reo = self.rack.reo_wnd(
                self.in_recovery || self.loss_high.is_some(),
                self.sb.sacked_bytes() / mss,
                self.min_rtt.unwrap_or(srtt),
                srtt,
            );
            let (b, n, timer) = self.rack.detect_loss(&mut self.sb, now, reo);
            self.info.lost_rack += n;
            self.rack_at = timer;
            lost += b;
        } else if sack_info {
            //= rfc6675#section-4
            // IsLost: more than (DupThresh - 1) * SMSS bytes SACKed above a segment.
            let limit = (DUP_THRESH - 1) * mss;
            let mut above = 0u64;
            for i in (0..self.sb.len()).rev() {
                let s = *self.sb.get(i).expect("index");
                if s.has(SACKED) {
                    above += s.len() as u64;
                } else if above > limit && !s.has(RETRANS) {
                    let b = self.sb.mark_lost(i);
                    if b > 0 {
                        self.info.lost_dupack += 1;
                        lost += b;
                    }
                }
            }
        } else {
            //= rfc6582#section-3.2
            // Three duplicates start fast retransmit, unless they belong to data sent before
            // the last recovery or timeout (SND.UNA not above `recover`); a partial ACK in
            // recovery retransmits the next segment at once.
            let third = self.dupacks == DUP_THRESH as u32
                && !self.in_recovery
                && self.loss_high.is_none()
                && self.snd_una.ge(self.recover);
            let partial = advanced && self.in_recovery && self.snd_una.lt(self.recover);
            if third || partial {
                let head = *self.sb.get(0).expect("not empty");
                if !head.has(RETRANS) || third {
                    let b = self.sb.mark_lost(0);
                    if b > 0 {
                        self.info.lost_dupack += 1;
                        lost += b;
                    }
                }
            }
        }
        self.rate.on_lost(lost);
        lost
    }

    /// Moves between Open, Recovery and Loss (after a timeout), and undoes a congestion
    /// response that proved spurious.
    fn update_recovery_state(
        &mut self,
        now: Instant,
        out: &super::recovery::AckOutcome,
        advanced: bool,
        dupack: bool,
        ecr: Option<u32>,
    ) {
        // F-RTO (RFC 5682 §3.1, SACK-enhanced as Linux's tcp_process_loss).
        if let Some(f) = self.frto {
            if out.orig_delivered > 0 {
                // Step 3.b: data never retransmitted was delivered: the timeout was spurious.
                self.undo_congestion(true);
                return;
            }
            if self.snd_max.gt(f.high) {
                // Step 3.a: after new data went out, a SACK or duplicate ACK means real loss.
                if out.sacked > 0 || dupack {
                    self.frto = None;
                }
            } else if advanced && self.loss_high.is_some() {
                // Step 2.b: the retransmission was acknowledged: try new data next.
                let room = self.snd_una + self.snd_wnd;
                if self.unsent() > 0 && room.gt(self.snd_nxt) {
                    self.frto = Some(Frto {
                        high: self.snd_max,
                        new_data: true,
                    });
                } else {
                    self.frto = None;
                }
            }
        }
        // Eifel (RFC 3522) and D-SACK (RFC 3708) detection, Linux's tcp_may_undo: every
        // retransmission D-SACKed, or the ACK echoes a timestamp older than the first
        // retransmission (it was sent for the original).
        if let Some(m) = self.undo.marker {
            let dsacked_all = self.undo.stamp.is_some() && self.undo.retrans == 0;
            // The timestamp test waits for the ACK that ends the episode (Linux's
            // tcp_try_undo_recovery / tcp_try_undo_loss): a partial ACK may echo an older
            // segment's timestamp although a retransmission filled the hole (a Linux receiver
            // only takes TS.Recent from a segment at or below its last advertised edge), and an
            // undo on it re-entered BBR's startup after a high-loss exit (lab: 9 false undos in
            // 12 s at 1e-3 loss, 4% retransmitted).
            let episode_over = (self.in_recovery && self.snd_una.ge(self.recover))
                || self.loss_high.is_some_and(|h| self.snd_una.ge(h));
            let eifel = advanced
                && episode_over
                && self.snd_una.gt(m)
                && self
                    .undo
                    .stamp
                    .zip(ecr)
                    .is_some_and(|(st, e)| !ts_le(st, e));
            if dsacked_all || eifel {
                self.undo_congestion(false);
                return;
            }
        }
        // Loss state ends when everything outstanding at the timeout is acknowledged.
        if let Some(h) = self.loss_high {
            if self.snd_una.ge(h) {
                self.loss_high = None;
                self.frto = None;
            }
        }
        if self.in_recovery && self.snd_una.ge(self.recover) {
            //= rfc6675#section-5
            // Recovery ends when the cumulative ACK covers RecoveryPoint.
            self.in_recovery = false;
            self.dupacks = 0;
            self.cc.on_recovery_end(now);
            self.rack.on_recovery_end();
        }
        if !self.in_recovery && self.loss_high.is_none() && self.sb.lost_bytes() > 0 {
            self.enter_recovery(now);
        }
    }

    /// The MTU probe at the head is lost and nothing before it was: its size does not pass the
    /// path, which says nothing about congestion (Linux's tcp_mtup_probe_failed with
    /// tcp_simple_retransmit). The probe goes again in MSS-sized pieces in the Loss state until
    /// it is acknowledged, without a window cut; losses behind it start recovery after that.
    fn mtu_probe_lost(&mut self) -> bool {
        let head_lost = self.sb.get(0).is_some_and(|s| s.has(LOST));
        let Some(end) = self.pmtu.probe_end() else {
            return false;
        };
        if !head_lost || !self.pmtu.probe_starts_at(self.snd_una) {
            return false;
        }
        self.pmtu.on_probe_lost();
        self.loss_high = Some(end);
        self.undo = Undo::default();
        self.frto = None;
        true
    }

    /// A loss was detected in the Open state: fast recovery starts (RFC 6675 §5 step 4), unless
    /// the loss is only a path MTU probe's.
    fn enter_recovery(&mut self, now: Instant) {
        if self.mtu_probe_lost() {
            return; // the loss was an MTU probe's: no congestion response (pmtu.rs)
        }
        self.in_recovery = true;
        self.recover = self.snd_max;
        self.rescue_done = false;
        let flight = self.flight_size() as u64;
        self.cc.on_congestion_event(now, flight, self.snd_mss);
        self.prr = Prr::start(flight);
        self.recovery_cwnd = self.in_flight() as u64 + self.snd_mss as u64;
        self.undo = Undo {
            marker: Some(self.snd_una),
            retrans: 0,
            stamp: None,
            rto: false,
        };
        self.info.fast_retransmits += 1;
        self.info.recoveries += 1;
        // A probe outstanding is superseded by recovery (RFC 8985 §7.4).
        self.tlp_high = None;
        self.tlp_at = None;
    }

    /// The last congestion response was spurious: restore the window and forget the losses.
    fn undo_congestion(&mut self, frto: bool) {
        self.cc.on_spurious_congestion();
        self.info.spurious_undos += 1;
        if self.undo.rto || frto {
            self.info.spurious_rtos += 1;
        }
        self.undo = Undo::default();
        self.frto = None;
        self.loss_high = None;
        self.in_recovery = false;
        self.dupacks = 0;
        self.sb.clear_lost();
    }

    /// RFC 8985 §7.4: a retransmitted probe that was answered without a D-SACK repaired a real
    /// loss of the tail; the congestion window still has to respond once.
    fn tlp_on_ack(
        &mut self,
        now: Instant,
        ack: Seq,
        advanced: bool,
        dupack: bool,
        dsack: Option<(Seq, Seq)>,
        no_blocks: bool,
    ) {
        let Some((end, is_retrans)) = self.tlp_high else {
            return;
        };
        if ack.lt(end) {
            return;
        }
        if !is_retrans {
            self.tlp_high = None;
        } else if dsack.is_some_and(|(_, r)| r == end || r.ge(end)) {
            // The original arrived too: the probe was not needed.
            self.tlp_high = None;
        } else if !advanced && dupack && no_blocks {
            // A pure duplicate ACK at the probe's end: the original and the probe both
            // arrived (a peer without D-SACK): no loss (Linux tcp_process_tlp_ack).
            self.tlp_high = None;
        } else if advanced && ack.gt(end) {
            self.tlp_high = None;
            self.info.tlp_recoveries += 1;
            let flight = self.flight_size() as u64;
            self.cc.on_congestion_event(now, flight, self.snd_mss);
            self.cc.on_recovery_end(now);
        }
        // An ACK of exactly the probe: the next ACK tells (a D-SACK of the original, or an ACK
        // beyond the probe).
    }

    /// (Re)arms the tail loss probe (RFC 8985 §7.2): only with SACK, in the Open state, with
    /// data in flight and no probe outstanding.
    fn arm_tlp(&mut self, now: Instant) {
        let can = self.cfg.recovery.tlp
            && self.sack_ok
            && self.state.synchronized()
            && !self.in_recovery
            && self.loss_high.is_none()
            && self.tlp_high.is_none()
            && !self.sb.is_empty()
            && self.backoff == 0;
        if !can {
            self.tlp_at = None;
            return;
        }
        let pto = match self.srtt {
            Some(srtt) => {
                let mut p = srtt * 2;
                if self.sb.len() == 1 {
                    p += WC_DEL_ACK;
                }
                p
            }
            None => Duration::from_secs(1),
        };
        let mut at = now + pto;
        //= rfc8985#section-7.2
        // If the RTO would fire first, the probe takes its place.
        if let Some(r) = self.rto_at {
            at = at.min(r);
        }
        self.tlp_at = Some(at);
    }

    /// The RACK reorder timer fired (RFC 8985 §6.3): mark what is now overdue.
    fn rack_timeout(&mut self, now: Instant) {
        if self.sb.is_empty() || !self.state.synchronized() {
            return;
        }
        let srtt = self.srtt.unwrap_or(self.rto);
        let mss = self.snd_mss.max(1) as u64;
        let reo = self.rack.reo_wnd(
            self.in_recovery || self.loss_high.is_some(),
            self.sb.sacked_bytes() / mss,
            self.min_rtt.unwrap_or(srtt),
            srtt,
        );
        let (b, n, timer) = self.rack.detect_loss(&mut self.sb, now, reo);
        self.rack_at = timer;
        self.info.lost_rack += n;
        self.rate.on_lost(b);
        if b > 0 {
            if !self.in_recovery && self.loss_high.is_none() {
                self.enter_recovery(now);
            } else if self.in_recovery {
                // No ACK to clock PRR: let the retransmissions of what was just marked go.
                self.recovery_cwnd = self.recovery_cwnd.max(self.in_flight() as u64 + mss);
            }
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
        if !in_order {
            // Data behind a hole: the app cannot read it yet, but it is this round trip's
            // delivery all the same (see autotune_receive).
            self.drs_ooo += w.stored as u64;
        }
        if w.advanced > 0 {
            self.rcv_nxt += w.advanced as u32;
            self.rcv_nxt_off += w.advanced as u64;
        }
        // Linux's tcp_measure_rcv_mss: the largest segment seen, or, when the sender's MSS fell
        // (ICMP, MTU probing, a clamp), two segments in a row of the same smaller size (at least
        // 536 bytes). Else "every second full-sized segment" never holds for the smaller
        // segments and the receiver ACKs only on the delayed-ACK timer, which throttles the
        // sender's slow start to a few ACKs per round trip.
        let len = seg.len.min(65535);
        if len >= self.rcv_mss || (len >= 536 && len == self.last_seg_len) {
            self.rcv_mss = len;
        }
        self.last_seg_len = len;
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
        self.tlp_now = false;
        self.tlp_at = None;
        self.rack_at = None;
        self.pace_blocked = false;
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
                self.sb.shrink();
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
        if self.pace_blocked && self.pacer.ready(now) {
            self.pace_blocked = false;
        }
        if self.rack_at.is_some_and(|t| t <= now) {
            self.rack_at = None;
            self.rack_timeout(now);
        }
        if self.tlp_at.is_some_and(|t| t <= now) {
            self.tlp_at = None;
            if self.state.synchronized()
                && !self.sb.is_empty()
                && !self.in_recovery
                && self.loss_high.is_none()
                && self.tlp_high.is_none()
            {
                self.tlp_now = true;
                //= rfc8985#section-7.3
                // The retransmission timer restarts from the probe.
                self.rto_at = Some(now + self.rto);
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
                    self.undo = Undo {
                        marker: Some(self.snd_una),
                        retrans: 0,
                        stamp: None,
                        rto: true,
                    };
                    //= rfc5682#section-3.1
                    // Step 1: F-RTO watches the next ACKs to tell a spurious timeout.
                    self.frto = (self.cfg.recovery.frto && self.sack_ok).then_some(Frto {
                        high: self.snd_max,
                        new_data: false,
                    });
                } else {
                    self.frto = None;
                }
                // Timeouts in a row of a large segment may be an MTU black hole (pmtu.rs): the
                // MSS falls, and what is in flight goes again in the smaller size below.
                let head_len = self.sb.get(0).map_or(0, |s| s.len() - s.fin as u32);
                if self.pmtu.on_rto(now, self.backoff, self.snd_una, head_len) {
                    self.update_mss();
                    if self.pmtu.just_detected() {
                        // The black hole is found: the segments were too large for the path,
                        // and their timeouts say nothing about congestion. The window and
                        // ssthresh go back to where they were before this series (as after a
                        // spurious timeout), rather than crawling up from ssthresh = cwnd/2.
                        self.cc.on_spurious_congestion();
                        self.undo = Undo::default();
                    } else {
                        // Still stalled at the smaller size: a timeout like any other.
                        self.cc.on_rto(now, self.snd_mss);
                    }
                }
                //= rfc2018#section-8
                // The head SACKed at a timeout means the receiver reneged: forget the SACKs.
                if self.sb.get(0).is_some_and(|s| s.has(SACKED)) {
                    self.sb.clear_sacks();
                }
                // Everything not SACKed is lost and goes again, oldest first, as the window
                // (one segment now) allows (Linux tcp_enter_loss).
                let (b, n) = self.sb.mark_all_lost();
                self.info.lost_rto += n;
                self.rate.on_lost(b);
                //= rfc6582#section-3.2
                // After a timeout, duplicate ACKs for data sent before it must not start a
                // second fast retransmit.
                self.recover = self.snd_max;
                self.loss_high = Some(self.snd_max);
                self.in_recovery = false;
                self.dupacks = 0;
                self.tlp_high = None;
                self.tlp_at = None;
                self.tlp_now = false;
                self.rack_at = None;
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
            && (self.snd_wnd == 0 || (!self.cork && self.next_data_len(false).is_none()))
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
        // Like Linux's tcp_sndbuf_expand: room for two congestion windows — what is in flight and
        // what the next round may send — plus what is outstanding but no longer in the network.
        // (Not the peer's window: a receiver offering 16 MB to a 3-MB path would make every
        // connection hold 32 MB of unsent data.) While a hole waits for its retransmission the
        // SACKed data above it stays in the buffer, and a limit of two windows in all left no
        // room for new data (250 ms, 1% loss: Startup's flight stuck at a fifth of cwnd). Linux
        // provisions 2 (CUBIC) or 3 (BBR) windows of skb truesize, more than this in payload.
        let parked = (self.flight_size() as u64).saturating_sub(self.in_flight() as u64);
        let want = (2 * self.cc.window() + parked) as usize;
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
        // Bytes read by the app in the last RTT, plus those that arrived behind a hole (a
        // loss on a long path holds the app's reads back for two round trips or more, and a
        // buffer sized by reads alone then caps the sender's window just as it should grow:
        // simulated 250 ms, 1% loss: Startup held to 1.5 MB of window for a second). Data
        // the app leaves unread in order does not count, so a slow reader gets no more room.
        let copied = (self.drs_copied + self.drs_ooo) as usize;
        self.drs_start = now;
        self.drs_copied = 0;
        self.drs_ooo = 0;
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
    ///
    /// With the scoreboard this is Linux's `packets_out - (sacked_out + lost_out) +
    /// retrans_out` in bytes (RFC 6675's `pipe`); without SACK information each duplicate ACK
    /// stands for one segment that left the network.
    fn in_flight(&self) -> u32 {
        let out = (self.snd_max - self.snd_una) as u64 + self.sb.retrans_bytes();
        let mut f = out.saturating_sub(self.sb.sacked_bytes() + self.sb.lost_bytes());
        if self.sb.sacked_bytes() == 0 {
            f = f.saturating_sub(self.dupacks as u64 * self.snd_mss as u64);
        }
        f.min(u32::MAX as u64) as u32
    }

    /// Room the congestion window leaves: cwnd, or PRR's window during fast recovery.
    fn cwnd_room(&self) -> u64 {
        // A model-based controller (one that paces: BBR) sets its own window in recovery, as
        // Linux skips PRR for BBR; loss-based ones follow PRR.
        let wnd = if self.in_recovery && self.cc.pacing_rate().is_none() {
            self.recovery_cwnd
        } else {
            self.cc.window()
        };
        wnd.saturating_sub(self.in_flight() as u64)
    }

    /// The pacing rate in bytes per second: the algorithm's, or (with the `pacing` switch)
    /// Linux's for loss-based algorithms: 2·cwnd/SRTT in slow start, 1.2·cwnd/SRTT after.
    fn pacing_rate(&self) -> Option<u64> {
        if let Some(r) = self.cc.pacing_rate() {
            return Some(r.max(1));
        }
        if !self.cfg.recovery.pacing {
            return None;
        }
        let srtt = self.srtt?.as_nanos().max(1);
        let pct: u128 = if self.cc.in_slow_start() { 200 } else { 120 };
        let cwnd = self.cc.window().max(self.in_flight() as u64) as u128;
        Some((cwnd * pct * 10_000_000 / srtt).clamp(1, u64::MAX as u128) as u64)
    }

    /// The record to retransmit now (RFC 6675 NextSeg rule 1: the first lost one), if the
    /// window has room for it.
    fn next_retransmit(&self) -> Option<usize> {
        if !self.can_send_data() || self.frto.is_some_and(|f| f.new_data) {
            return None;
        }
        let i = self.sb.next_lost()?;
        let s = self.sb.get(i)?;
        let len = (s.len() as u64).min(self.snd_mss as u64);
        (self.cwnd_room() >= len.max(1)).then_some(i)
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
            // Once sent, the scoreboard resends the FIN when it is lost.
            && self.fin_seq.is_none()
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
        self.can_send_data() && self.next_data_len(false).is_some()
    }

    /// Length of the next new-data segment, or `None` when nothing may go now. Applies the
    /// receive window, the congestion window, Nagle, cork and sender SWS avoidance.
    /// `probe`: a tail loss probe, which the congestion window does not hold back.
    fn next_data_len(&self, probe: bool) -> Option<(u32, bool)> {
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
        let cwnd_room = if probe {
            u32::MAX
        } else {
            self.cwnd_room().min(u32::MAX as u64) as u32
        };
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
        // A FIN held above a hole is SACKed with the data it ends (its sequence number is inside
        // the block, as Linux's out-of-order queue reports it), so the sender sees its last
        // segment delivered and can tell what before it was lost.
        let fin_ooo = self.peer_fin.filter(|_| !self.fin_received);
        let mut fin_told = false;
        let mut sack = SackBlocks::default();
        for &(l, r) in &blocks[..n] {
            let to_seq = |o: u64| self.rcv_nxt + (o.wrapping_sub(self.rcv_nxt_off) as u32);
            let (l, mut r) = (to_seq(l), to_seq(r));
            if fin_ooo == Some(r) {
                r += 1;
                fin_told = true;
            }
            sack.push(l, r);
        }
        if let (Some(f), false) = (fin_ooo, fin_told) {
            if f != self.rcv_nxt && sack.len() < max {
                sack.push(f, f + 1);
            }
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

    /// Our SYN (`ack` false) or SYN-ACK, first sent or again.
    fn syn_segment(&mut self, now: Instant, ack: bool) -> Transmit {
        let flags = Flags {
            syn: true,
            ack,
            ..Flags::default()
        };
        let mut seg = self.base_segment(now, self.iss, flags);
        self.syn_options(now, &mut seg.opts, ack);
        // Karn: only the first transmission is timed (this one may be sent again because of a
        // timeout or because the peer's SYN came again).
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
        Transmit {
            seg,
            payload_offset: 0,
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
                return Some(self.syn_segment(now, false));
            }
            State::SynReceived if self.synack_now => {
                self.synack_now = false;
                return Some(self.syn_segment(now, true));
            }
            State::SynSent | State::SynReceived if !self.ack_now => return None,
            _ => {}
        }

        if self.can_send_data() {
            let paced = self.pacing_rate().is_some() && !self.pacer.ready(now);
            if paced && self.data_waiting() {
                // Earliest departure time not reached: only control segments go now, and
                // `poll_timeout` returns the departure time.
                self.pace_blocked = true;
            } else {
                self.pace_blocked = false;
                if let Some(t) = self.send_data(now) {
                    return Some(t);
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

    /// A data segment is waiting to go (a probe, a retransmission or new data).
    fn data_waiting(&self) -> bool {
        self.tlp_now
            || self.next_retransmit().is_some()
            || self.next_data_len(false).is_some()
            || self.rfc6675_more().is_some()
    }

    /// The next data segment, in RFC 6675 NextSeg order: a tail loss probe when one is due,
    /// lost segments (rule 1), new data (rule 2), then — in RFC 6675 mode (RACK off) during
    /// recovery — unSACKed segments below the highest SACK (rule 3) and the rescue
    /// retransmission (rule 4).
    fn send_data(&mut self, now: Instant) -> Option<Transmit> {
        if self.tlp_now {
            self.tlp_now = false;
            if let Some(t) = self.send_tlp(now) {
                return Some(t);
            }
        }
        if let Some(i) = self.next_retransmit() {
            return Some(self.retransmit(now, i));
        }
        if let Some(len) = self.mtu_probe_due(now) {
            return Some(self.data_segment(now, self.snd_nxt, Payload::Probe(len)));
        }
        if let Some((len, fin)) = self.next_data_len(false) {
            return Some(self.data_segment(now, self.snd_nxt, Payload::New(len, fin)));
        }
        let l = if self.unsent() == 0 {
            Limit::App
        } else if self.snd_una + self.snd_wnd == self.snd_nxt || self.snd_wnd == 0 {
            Limit::Rwnd
        } else {
            Limit::Cwnd
        };
        self.set_limit(now, l);
        if l == Limit::Rwnd {
            self.update_persist(now);
        }
        if l == Limit::App && self.cwnd_room() > 0 && self.sb.lost_bytes() == 0 {
            //= draft-cheng-iccrg-delivery-rate-estimation#section-3.4
            // Out of data with room in the window: samples are app-limited for a while.
            self.rate.mark_app_limited(self.in_flight() as u64);
        }
        if let Some((i, rescue)) = self.rfc6675_more() {
            self.rescue_done |= rescue;
            return Some(self.retransmit(now, i));
        }
        None
    }

    /// The payload length of an MTU probe to send now, if the search wants one and the
    /// connection can take it: the Open state, no SACK blocks to send (they would take the
    /// probe's room), and windows and data as `Plpmtud::may_send` asks.
    fn mtu_probe_due(&mut self, now: Instant) -> Option<u32> {
        if self.in_recovery
            || self.loss_high.is_some()
            || self.sb.lost_bytes() > 0
            || self.snd_nxt != self.snd_max
            || (self.sack_ok && self.rcvbuf.has_out_of_order())
        {
            return None;
        }
        let size = self.pmtu.probe_size(now)?;
        let wnd_end = self.snd_una + self.snd_wnd;
        let room = ProbeRoom {
            mss: self.snd_mss,
            cwnd: self.cc.window(),
            cwnd_room: self.cwnd_room(),
            unsent: self.unsent() as u64,
            wnd_room: if self.snd_nxt.lt(wnd_end) {
                (wnd_end - self.snd_nxt) as u64
            } else {
                0
            },
        };
        (size > self.snd_mss && Plpmtud::may_send(size, &room)).then_some(size)
    }

    /// RFC 6675 NextSeg rules 3 and 4, used in RFC 6675 mode (RACK off) during recovery: the
    /// record to retransmit, and whether it is the rescue retransmission.
    fn rfc6675_more(&self) -> Option<(usize, bool)> {
        if !(self.in_recovery && self.sack_ok && !self.cfg.recovery.rack) {
            return None;
        }
        let mss = self.snd_mss as u64;
        let fits = |i: usize| {
            self.sb
                .get(i)
                .is_some_and(|s| self.cwnd_room() >= (s.len() as u64).min(mss).max(1))
        };
        //= rfc6675#section-4
        // Rule 3: an unSACKed segment below the highest SACKed one, not yet resent.
        if let Some(i) = self.sb.next_unsacked_below_high() {
            return fits(i).then_some((i, false));
        }
        //= rfc6675#section-4
        // Rule 4: once per recovery, the last unSACKed segment (rescue retransmission).
        if !self.rescue_done {
            let last = (0..self.sb.len()).rev().find(|&i| {
                self.sb
                    .get(i)
                    .is_some_and(|s| !s.has(SACKED) && !s.has(RETRANS))
            });
            return last.filter(|&i| fits(i)).map(|i| (i, true));
        }
        None
    }

    /// Retransmits scoreboard record `i` (short lost records behind it are joined up to an
    /// MSS first, so a smaller MSS or a split does not leave runts).
    fn retransmit(&mut self, now: Instant, i: usize) -> Transmit {
        self.sb.coalesce(i, self.snd_mss);
        let s = *self.sb.get(i).expect("index");
        let data_len = s.len() - s.fin as u32;
        self.data_segment(now, s.start, Payload::Rtx(data_len))
    }

    /// Sends the tail loss probe (RFC 8985 §7.3): new data if the peer's window allows,
    /// else the last segment again.
    fn send_tlp(&mut self, now: Instant) -> Option<Transmit> {
        let t = if let Some((len, fin)) = self.next_data_len(true) {
            let t = self.data_segment(now, self.snd_nxt, Payload::New(len, fin));
            self.tlp_high = Some((self.snd_max, false));
            t
        } else {
            let i = (0..self.sb.len())
                .rev()
                .find(|&i| self.sb.get(i).is_some_and(|s| !s.has(SACKED)))?;
            let t = self.retransmit(now, i);
            self.tlp_high = Some((self.snd_max, true));
            t
        };
        self.info.tlp_probes += 1;
        self.tlp_at = None;
        self.rto_at = Some(now + self.rto);
        Some(t)
    }

    /// A segment of data (and maybe FIN) starting at `seq`: new data from SND.NXT, or a
    /// retransmission of (part of) the scoreboard record starting at `seq`.
    fn data_segment(&mut self, now: Instant, seq: Seq, what: Payload) -> Transmit {
        let base = self.data_base();
        let end = self.data_end();
        let fresh = matches!(what, Payload::New(..) | Payload::Probe(_));
        let (len, fin) = match what {
            Payload::New(len, fin) => (len, fin),
            Payload::Probe(len) => (len, false),
            Payload::Rtx(max) => {
                let data_left = if seq.lt(end) { end - seq } else { 0 };
                let len = data_left.min(self.snd_mss).min(max);
                let fin = self.fin_queued && seq + len == end;
                (len, fin)
            }
        };
        let in_flight_before = self.in_flight() as u64;
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
        let seg_max = match what {
            Payload::Probe(len) => len.max(self.snd_mss),
            _ => self.snd_mss,
        };
        let room = seg_max.saturating_sub(
            seg.opts.sack.len() as u32 * 8 + if seg.opts.sack.is_empty() { 0 } else { 4 },
        );
        let len = len.min(room.max(1));
        let fin = fin && seq + len == end;
        seg.flags.fin = fin;
        seg.len = len;
        let seg_end = seq + len + fin as u32;
        let retransmit = seq.lt(self.snd_max);
        if retransmit {
            self.pmtu.on_retransmit(seq, seg_end);
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
        if fresh {
            self.snd_nxt = seg_end;
        }
        // The scoreboard: a new record, or the record retransmitted (split if shorter).
        let seq_len = len + fin as u32;
        let tx = self
            .rate
            .on_send(now, in_flight_before, in_flight_before + seq_len as u64);
        if fresh {
            self.sb.push(seq, seg_end, fin, now, tx);
            if matches!(what, Payload::Probe(_)) {
                self.pmtu.on_probe_sent(seq, seg_end, len);
            }
        } else if let Some(i) = self.sb.find(seq) {
            self.sb.retransmit(i, seq_len, now, tx);
            if self.undo.marker.is_some() {
                self.undo.retrans += 1;
                if self.undo.stamp.is_none() {
                    self.undo.stamp = Some(self.tsval(now));
                }
            }
        }
        if self.in_recovery {
            self.prr.on_sent(seq_len as u64);
        }
        if let Some(rate) = self.pacing_rate() {
            self.pacer.on_sent(now, seq_len as u64, rate, self.snd_mss);
        }
        if self.snd_max.lt(seg_end) {
            self.snd_max = seg_end;
        }
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto);
        } else if retransmit && seq == self.snd_una && self.backoff == 0 {
            // Resending the head restarts the timer, as Linux's tcp_xmit_retransmit_queue does:
            // a loss found late (RACK, after a quiet spell of cumulative ACKs) would otherwise
            // time out before the retransmission's ACK can be back. (After a timeout, on_rto
            // has set the timer already.)
            self.rto_at = Some(now + self.rto);
        }
        if fresh {
            //= rfc8985#section-7.2
            // New data re-arms the probe timer (from the last transmission).
            self.arm_tlp(now);
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
