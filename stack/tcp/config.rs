//! Per-connection TCP settings: the stack's defaults, overridden per connection where the API allows.

// Fields and variants carry their RFC 9293 / Linux tcp_info names; the type docs explain them.
#![allow(missing_docs)]

use super::cc::CcAlgorithm;
pub use super::pmtu::MtuProbing;
use std::time::Duration;

/// Keepalive probing (off unless set): first probe after `idle` without a segment from the
/// peer, then every `interval`; the connection times out after `probes` unanswered probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

impl Default for Keepalive {
    /// Linux's defaults (`tcp_keepalive_time`/`_intvl`/`_probes`).
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            probes: 9,
        }
    }
}

/// Loss recovery and pacing switches (all per connection; the defaults are Linux's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// RACK time-based loss detection (RFC 8985); off: RFC 6675 DupThresh with NextSeg rules
    /// 3 and 4 (Linux `tcp_recovery` bit 0).
    pub rack: bool,
    /// Tail loss probes (RFC 8985 §7; Linux `tcp_early_retrans=3`). Only with SACK.
    pub tlp: bool,
    /// F-RTO after a retransmission timeout (RFC 5682, SACK-enhanced; Linux `tcp_frto=2`).
    pub frto: bool,
    /// Pace loss-based congestion control (CUBIC, NewReno) at 2·cwnd/SRTT in slow start and
    /// 1.2·cwnd/SRTT after, as Linux does under fq. An algorithm with its own pacing rate is
    /// always paced.
    pub pacing: bool,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            rack: true,
            tlp: true,
            frto: true,
            pacing: false,
        }
    }
}

/// Settings of one connection.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Receive buffer ceiling; the buffer starts at `rmem_initial` and autotuning grows it.
    pub rmem_max: usize,
    pub rmem_initial: usize,
    /// Send buffer ceiling; the buffer starts at `wmem_initial` and grows with the window.
    pub wmem_max: usize,
    pub wmem_initial: usize,
    /// Largest segment payload the local link carries (MTU minus IPv4 and TCP headers).
    pub link_mss: u16,
    /// Upper bound on the MSS used and advertised (for tunnels); `None` for none.
    pub mss_clamp: Option<u16>,
    /// Nagle's algorithm off.
    pub nodelay: bool,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    pub delayed_ack: Duration,
    pub keepalive: Option<Keepalive>,
    /// Give up when data stays unacknowledged (or a connect unanswered) this long.
    pub user_timeout: Duration,
    pub time_wait: Duration,
    /// How long an orphaned connection (closed by the app) may sit in FIN-WAIT-2.
    pub fin_wait2: Duration,
    pub cc: CcAlgorithm,
    /// Restart from the initial window after an idle period (RFC 5681 §4.1); off as the issue asks.
    pub slow_start_after_idle: bool,
    pub timestamps: bool,
    pub sack: bool,
    pub window_scaling: bool,
    /// SYN retransmissions before a connect fails (Linux `tcp_syn_retries`).
    pub syn_retries: u32,
    /// SYN-ACK retransmissions before a half-open connection is dropped (`tcp_synack_retries`).
    pub synack_retries: u32,
    pub recovery: Recovery,
    /// Path MTU black-hole detection and MSS probing (`stack::tcp::pmtu`; Linux
    /// `tcp_mtu_probing`, default as Linux's 1: after a black hole is detected).
    pub mtu_probing: MtuProbing,
    /// How long after a search ends the path is probed again (Linux `tcp_probe_interval`).
    pub mtu_probe_interval: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            rmem_max: 64 << 20,
            rmem_initial: 128 << 10,
            wmem_max: 64 << 20,
            wmem_initial: 64 << 10,
            link_mss: 1460,
            mss_clamp: None,
            nodelay: false,
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(120),
            delayed_ack: Duration::from_millis(40),
            keepalive: None,
            user_timeout: Duration::from_secs(120),
            time_wait: Duration::from_secs(60),
            fin_wait2: Duration::from_secs(60),
            cc: CcAlgorithm::default(),
            slow_start_after_idle: false,
            timestamps: true,
            sack: true,
            window_scaling: true,
            syn_retries: 6,
            synack_retries: 5,
            recovery: Recovery::default(),
            mtu_probing: MtuProbing::default(),
            mtu_probe_interval: Duration::from_secs(600),
        }
    }
}

impl TcpConfig {
    /// The MSS we advertise: the link's, clamped.
    pub fn advertised_mss(&self) -> u16 {
        match self.mss_clamp {
            Some(c) => self.link_mss.min(c),
            None => self.link_mss,
        }
    }

    /// Our window-scale shift: the smallest that lets the window reach `rmem_max`.
    pub fn rcv_wscale(&self) -> u8 {
        let mut shift = 0u8;
        while shift < 14 && (65535usize << shift) < self.rmem_max {
            shift += 1;
        }
        shift
    }
}
