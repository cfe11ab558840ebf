//! Packetization-layer path MTU discovery (RFC 4821, in the spirit of RFC 8899): MTU black-hole
//! detection and MSS probing, as Linux does it with `net.ipv4.tcp_mtu_probing` (1 or 2).
//!
//! ICMP "fragmentation needed" (RFC 1191) lowers the MSS when a router says so
//! ([`super::conn::Conn::handle_frag_needed`]). A path that drops large packets *silently* (a
//! firewall eating the ICMP, a tunnel with a smaller MTU) sends no such message: full-size
//! segments simply vanish while small ones (the handshake, ACKs) get through, and without help the
//! connection retransmits the same too-large segment until the user timeout. This module is the
//! help:
//!
//! - **Black-hole detection.** Retransmission timeouts in a row for a segment larger than the
//!   base MSS ([`BASE_MSS`], Linux's `tcp_base_mss`) are taken as a sign that the path no longer
//!   carries that size: the MSS drops to the base and the search below starts. Further timeouts
//!   of the same stall halve it, down to [`FLOOR_MSS`] (Linux's `tcp_mtu_probe_floor`).
//! - **Probing.** With the search on, the MSS in use is `search_low` (the largest packet size the
//!   path is known to carry) and a probe — one segment of new data of the size halfway between
//!   `search_low` and `search_high` — goes out when the connection is in the Open state, the
//!   congestion window has room for it and enough data follows it that its loss is detected by
//!   SACK or duplicate ACKs rather than by a timeout. Its cumulative acknowledgement raises
//!   `search_low` (and the MSS); its loss lowers `search_high` and is not taken as congestion.
//!   The search stops when the range is narrower than [`PROBE_THRESHOLD`] bytes, and starts
//!   again, from the MSS in use up to the path's ceiling, after the re-probe interval (Linux's
//!   `tcp_probe_interval`, 600 s).
//!
//! Sizes here are IP packet sizes (an "MTU"): a segment's payload plus the IP and TCP headers
//! with the options every segment carries (timestamps). The connection owns one [`Plpmtud`],
//! calls its hooks and asks it for the MSS cap; nothing here reads a clock.

use super::seq::Seq;
use super::time::Instant;
use std::time::Duration;

/// When MTU probing runs (Linux's `net.ipv4.tcp_mtu_probing` 0, 1, 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtuProbing {
    /// Never: only ICMP lowers the MSS.
    Off,
    /// After a black hole is detected (Linux's 1, longhaul's default).
    #[default]
    OnBlackhole,
    /// From the start: the MSS starts at the base and probes upward (Linux's 2).
    Always,
}

/// `--mtu-probing` got something other than off, blackhole or always.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseMtuProbingError(pub String);

impl std::fmt::Display for ParseMtuProbingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseMtuProbingError {}

impl std::str::FromStr for MtuProbing {
    type Err = ParseMtuProbingError;

    /// `off`, `blackhole` (or `on_blackhole`), `always`; Linux's sysctl values 0, 1, 2 too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "0" => Ok(MtuProbing::Off),
            "blackhole" | "on_blackhole" | "1" => Ok(MtuProbing::OnBlackhole),
            "always" | "2" => Ok(MtuProbing::Always),
            _ => Err(ParseMtuProbingError(format!(
                "unknown MTU probing mode '{s}': use off, blackhole or always"
            ))),
        }
    }
}

/// The MSS a black hole drops to first (Linux's `tcp_base_mss`).
pub const BASE_MSS: u32 = 1024;
/// The smallest MSS repeated timeouts halve it to (Linux's `tcp_mtu_probe_floor` is 48; the
/// engine never sends segments below 64 bytes of payload).
pub const FLOOR_MSS: u32 = 64;
/// The search stops when `search_high - search_low` is below this (Linux's
/// `tcp_probe_threshold`).
pub const PROBE_THRESHOLD: u32 = 8;
/// Retransmission timeouts in a row of a too-large segment that count as a black hole while no
/// segment of that size has ever been acknowledged. One timeout is routine on a lossy path; the
/// second in a row for a large segment, when only smaller ones (the handshake, a request) ever
/// got through, is the signature of a black hole. (Linux waits until the stall is as long as
/// three backed-off minimum RTOs, about 3 s; two RTOs are shorter on any path with an RTT below
/// about 1 s, and a false alarm only costs a few probes.)
pub const BLACKHOLE_RTOS: u32 = 2;
/// The same once segments of that size have got through: the path carried them, so a black hole
/// now means the path changed, and a few timeouts in a row are more likely loss or an outage.
pub const BLACKHOLE_RTOS_AFTER_DELIVERY: u32 = 4;
/// Full segments of new data that must follow a probe, so that its loss shows as SACKs or
/// duplicate ACKs rather than a timeout (Linux: `reordering + 1`).
pub const PROBE_TAIL_SEGS: u32 = 4;
/// Smallest congestion window, in segments, that probes (Linux's 11).
pub const PROBE_MIN_CWND_SEGS: u64 = 11;
/// IPv4 and TCP headers without options.
const HEADERS: u32 = 40;

/// A probe in flight: its sequence range and IP packet size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    start: Seq,
    end: Seq,
    mtu: u32,
}

/// One connection's path MTU search. See the module docs.
#[derive(Clone, Debug)]
pub struct Plpmtud {
    mode: MtuProbing,
    interval: Duration,
    /// The search is on: the MSS is capped at `search_low` and probes go out.
    enabled: bool,
    /// IP and TCP header bytes of a data segment (options included).
    hdr: u32,
    /// The largest packet the path may carry as far as the link, the peer's MSS and ICMP say.
    ceiling: u32,
    /// Largest packet size known to pass.
    low: u32,
    /// Largest packet size not known to fail.
    high: u32,
    probe: Option<Probe>,
    /// The largest packet (IP size) the peer has acknowledged.
    delivered: u32,
    /// The last reduction was the detection (see `just_detected`).
    detected: bool,
    /// When the current search started (for the re-probe interval).
    search_start: Instant,
    probes: u64,
    successes: u64,
    failures: u64,
    blackholes: u64,
}

/// What the connection knows when it may send a probe (see [`Plpmtud::may_send`]).
#[derive(Clone, Copy, Debug)]
pub struct ProbeRoom {
    /// The MSS in use.
    pub mss: u32,
    /// The congestion window, bytes.
    pub cwnd: u64,
    /// Room the congestion window leaves now, bytes.
    pub cwnd_room: u64,
    /// New data queued and not sent, bytes.
    pub unsent: u64,
    /// Room in the peer's window from SND.NXT, bytes.
    pub wnd_room: u64,
}

impl Plpmtud {
    /// A connection's search at `now`: on from the start with [`MtuProbing::Always`].
    pub fn new(mode: MtuProbing, interval: Duration, now: Instant) -> Self {
        Plpmtud {
            mode,
            interval,
            enabled: mode == MtuProbing::Always,
            hdr: HEADERS,
            ceiling: 0,
            low: 0,
            high: 0,
            probe: None,
            delivered: 0,
            detected: false,
            search_start: now,
            probes: 0,
            successes: 0,
            failures: 0,
            blackholes: 0,
        }
    }

    /// The path as the connection knows it: `mss` is the largest segment payload the link, the
    /// peer's MSS option and ICMP allow (without TCP options), `opt_len` the option bytes every
    /// data segment carries. Called whenever either changes; keeps `low <= high <= ceiling`.
    pub fn set_path(&mut self, mss: u32, opt_len: u32) {
        self.hdr = HEADERS + opt_len;
        self.ceiling = mss + HEADERS;
        if self.low == 0 {
            // Linux's tcp_mtup_init: search_low is the base MSS's packet size.
            self.low = BASE_MSS + self.hdr;
            self.high = self.ceiling;
        }
        self.high = self.high.min(self.ceiling);
        self.low = self.low.min(self.high);
    }

    /// The cap the search puts on the MSS (payload without options, as `set_path` takes it), or
    /// `None` while the search is off.
    pub fn mss_cap(&self) -> Option<u32> {
        (self.enabled && self.low > 0).then(|| self.low - HEADERS)
    }

    /// A retransmission timeout fired; `backoff` counts the timeouts in a row (this one
    /// included), `una` is SND.UNA and `head_len` the payload of the segment timed out. Returns
    /// true when the MSS cap fell (the connection updates its MSS; what is in flight goes again
    /// in the smaller size).
    pub fn on_rto(&mut self, now: Instant, backoff: u32, una: Seq, head_len: u32) -> bool {
        if self.mode == MtuProbing::Off || self.low == 0 {
            return false;
        }
        if let Some(p) = self.probe.take() {
            // The probe was the segment that timed out: too big (Linux counts it failed too).
            if p.start == una {
                self.failed(p);
            }
        }
        let needed = if self.delivered >= head_len + self.hdr {
            BLACKHOLE_RTOS_AFTER_DELIVERY
        } else {
            BLACKHOLE_RTOS
        };
        if backoff < needed {
            return false;
        }
        //= rfc4821#section-7.7
        // Repeated timeouts ("full-stop timeouts") may mean the path now carries less: go down to
        // a size very likely to pass and search upward from there.
        let new_low = if !self.enabled {
            (BASE_MSS + self.hdr).min(self.ceiling)
        } else {
            // Still stalled at the reduced size: halve it (Linux's tcp_mtu_probing).
            let mss = ((self.low - self.hdr) / 2).clamp(FLOOR_MSS, BASE_MSS);
            (mss + self.hdr).min(self.low)
        };
        if head_len + self.hdr <= new_low || (self.enabled && new_low >= self.low) {
            // The stalled segment already fits (or the floor is reached): not a size problem.
            return false;
        }
        if !self.enabled {
            self.enabled = true;
            self.search_start = now;
        }
        self.detected = backoff == needed;
        self.low = new_low;
        self.blackholes += 1;
        true
    }

    /// The payload length of the probe to send now, if the search wants one (the connection
    /// checks [`Plpmtud::may_send`] before sending it). Starts a new search when the last one
    /// ended at least the re-probe interval ago.
    pub fn probe_size(&mut self, now: Instant) -> Option<u32> {
        if !self.enabled || self.probe.is_some() || self.low == 0 {
            return None;
        }
        if let Some(mtu) = self.next_probe_mtu() {
            return Some(mtu - self.hdr);
        }
        //= rfc4821#section-7.3
        // The search has ended: search again from the size in use after the re-probe interval
        // (the path may have changed; Linux's tcp_mtu_check_reprobe).
        if now.saturating_since(self.search_start) >= self.interval && self.low < self.ceiling {
            self.high = self.ceiling;
            self.search_start = now;
            return self.next_probe_mtu().map(|m| m - self.hdr);
        }
        None
    }

    /// Binary search between `low` and `high`; when the range is narrow but the ceiling was
    /// never ruled out (a false alarm, or a black hole that went away), the ceiling itself once.
    fn next_probe_mtu(&self) -> Option<u32> {
        if self.high.saturating_sub(self.low) >= PROBE_THRESHOLD {
            Some((self.low + self.high).div_ceil(2))
        } else if self.low < self.high && self.high == self.ceiling {
            Some(self.high)
        } else {
            None
        }
    }

    /// Whether a probe of `size` payload bytes may go now (RFC 4821 §7.4; Linux's
    /// tcp_mtu_probe): the window has room for it, enough new data follows it for its loss to
    /// be detected without a timeout, and the congestion window is large enough (at least
    /// [`PROBE_MIN_CWND_SEGS`] segments) that one lost probe costs little.
    pub fn may_send(size: u32, r: &ProbeRoom) -> bool {
        //= rfc4821#section-7.4
        let need = size as u64 + PROBE_TAIL_SEGS as u64 * r.mss as u64;
        r.cwnd >= PROBE_MIN_CWND_SEGS * r.mss as u64
            && r.cwnd_room >= size as u64
            && r.unsent >= need
            && r.wnd_room >= need
    }

    /// A probe went out: `[start, end)` with `len` payload bytes.
    pub fn on_probe_sent(&mut self, start: Seq, end: Seq, len: u32) {
        self.probe = Some(Probe {
            start,
            end,
            mtu: len + self.hdr,
        });
        self.probes += 1;
    }

    /// The peer acknowledged a segment of `len` payload bytes (never retransmitted).
    pub fn on_delivered(&mut self, len: u32) {
        self.delivered = self.delivered.max(len + self.hdr);
    }

    /// The last [`Plpmtud::on_rto`] that lowered the MSS declared the black hole (the first
    /// reduction of a timeout series), rather than halving again: the connection undoes the
    /// timeouts' window cut there.
    pub fn just_detected(&self) -> bool {
        self.detected
    }

    /// SND.UNA moved to `una`. Returns true when this acknowledged the probe: the MSS cap rose.
    pub fn on_ack(&mut self, una: Seq) -> bool {
        match self.probe {
            Some(p) if una.ge(p.end) => {
                //= rfc4821#section-7.6.1
                // Probe success: the path carries this size.
                self.probe = None;
                self.low = self.low.max(p.mtu);
                self.high = self.high.max(self.low);
                self.successes += 1;
                true
            }
            _ => false,
        }
    }

    /// The probe is outstanding and starts at `seq` (the connection asks about its head).
    pub fn probe_starts_at(&self, seq: Seq) -> bool {
        self.probe.is_some_and(|p| p.start == seq)
    }

    /// End of the probe in flight, if any.
    pub fn probe_end(&self) -> Option<Seq> {
        self.probe.map(|p| p.end)
    }

    /// The probe at the head was found lost while nothing before it was: the size does not pass.
    pub fn on_probe_lost(&mut self) {
        if let Some(p) = self.probe.take() {
            self.failed(p);
        }
    }

    fn failed(&mut self, p: Probe) {
        //= rfc4821#section-7.6.2
        // Probe failure: sizes from the probe's up are ruled out.
        self.high = (p.mtu - 1).max(self.low);
        self.failures += 1;
    }

    /// `[start, end)` is being retransmitted: a probe it overlaps can no longer tell anything
    /// (its acknowledgement may be the retransmission's), so it is dropped without a verdict.
    pub fn on_retransmit(&mut self, start: Seq, end: Seq) {
        if self
            .probe
            .is_some_and(|p| start.lt(p.end) && p.start.lt(end))
        {
            self.probe = None;
        }
    }

    /// Probes sent, acknowledged and lost; timeouts that lowered the MSS.
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        (self.probes, self.successes, self.failures, self.blackholes)
    }

    /// IP packet size of a segment of `mss` payload bytes.
    pub fn mtu_of(&self, mss: u32) -> u32 {
        mss + self.hdr
    }

    /// The search range `(low, high)`, 0 before the path is known.
    pub fn range(&self) -> (u32, u32) {
        (self.low, self.high)
    }

    /// The search is on (the MSS follows `search_low`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::ZERO;

    fn prober(mode: MtuProbing) -> Plpmtud {
        let mut p = Plpmtud::new(mode, Duration::from_secs(600), T0);
        // Ethernet: MSS 1460 without options, timestamps on.
        p.set_path(1460, 12);
        p
    }

    #[test]
    fn off_and_blackhole_modes_start_at_full_size() {
        assert_eq!(prober(MtuProbing::Off).mss_cap(), None);
        assert_eq!(prober(MtuProbing::OnBlackhole).mss_cap(), None);
        // Always: the base MSS's packet (1024 + 52 = 1076 bytes), payload 1024 + options.
        assert_eq!(prober(MtuProbing::Always).mss_cap(), Some(1036));
    }

    #[test]
    fn second_timeout_of_a_large_segment_is_a_black_hole() {
        let mut p = prober(MtuProbing::OnBlackhole);
        let t = T0 + Duration::from_secs(1);
        assert!(!p.on_rto(t, 1, Seq(1), 1448));
        // A small segment timing out says nothing about the size.
        assert!(!p.on_rto(t, 2, Seq(1), 500));
        assert!(p.on_rto(t, 2, Seq(1), 1448));
        assert_eq!(p.range(), (1076, 1500));
        assert_eq!(p.counters().3, 1);
        // Still stalled: halve, down to the floor, and no further.
        assert!(p.on_rto(t, 3, Seq(1), 1024));
        assert_eq!(p.range().0, 512 + 52);
        let mut n = 0;
        while p.on_rto(t, 4, Seq(1), 1024) {
            n += 1;
        }
        assert_eq!(p.range().0, FLOOR_MSS + 52);
        assert!(n <= 4);
        assert_eq!(MtuProbing::Off, "off".parse().unwrap());
        // Once full-sized segments got through, it takes four timeouts in a row.
        let mut p = prober(MtuProbing::OnBlackhole);
        p.on_delivered(1448);
        assert!(!p.on_rto(t, 3, Seq(1), 1448));
        assert!(p.on_rto(t, 4, Seq(1), 1448));
        assert!("sometimes".parse::<MtuProbing>().is_err());
    }

    #[test]
    fn binary_search_converges_below_a_1400_byte_hole() {
        let mut p = prober(MtuProbing::OnBlackhole);
        assert!(p.on_rto(T0, 2, Seq(0), 1448));
        let mut seq = 1000u32;
        let mut sizes = Vec::new();
        while let Some(len) = p.probe_size(T0) {
            let mtu = p.mtu_of(len);
            sizes.push(mtu);
            p.on_probe_sent(Seq(seq), Seq(seq + len), len);
            if mtu <= 1400 {
                assert!(p.on_ack(Seq(seq + len)));
            } else {
                assert!(p.probe_starts_at(Seq(seq)));
                p.on_probe_lost();
            }
            seq += len;
            assert!(sizes.len() < 20, "{sizes:?}");
        }
        let (low, high) = p.range();
        assert!(
            low <= 1400 && 1400 - low < PROBE_THRESHOLD,
            "{sizes:?} {low}"
        );
        assert!(high < 1500);
        assert_eq!(p.mss_cap(), Some(low - 40));
        // After the re-probe interval the search runs again.
        assert!(p.probe_size(T0 + Duration::from_secs(599)).is_none());
        assert!(p.probe_size(T0 + Duration::from_secs(600)).is_some());
    }

    #[test]
    fn a_false_alarm_climbs_back_to_the_ceiling() {
        let mut p = prober(MtuProbing::OnBlackhole);
        assert!(p.on_rto(T0, 2, Seq(0), 1448));
        let mut seq = 0u32;
        while let Some(len) = p.probe_size(T0) {
            p.on_probe_sent(Seq(seq), Seq(seq + len), len);
            seq += len;
            assert!(p.on_ack(Seq(seq)));
        }
        assert_eq!(p.range(), (1500, 1500));
        assert_eq!(p.mss_cap(), Some(1460));
    }

    #[test]
    fn icmp_lowers_the_ceiling_and_a_retransmission_voids_the_probe() {
        let mut p = prober(MtuProbing::Always);
        p.set_path(1240, 12);
        assert_eq!(p.range(), (1076, 1280));
        let len = p.probe_size(T0).unwrap();
        p.on_probe_sent(Seq(10), Seq(10 + len), len);
        p.on_retransmit(Seq(5), Seq(11));
        assert!(!p.on_ack(Seq(10 + len)));
        assert_eq!(p.counters(), (1, 0, 0, 0));
        let r = ProbeRoom {
            mss: 1024,
            cwnd: 11 * 1024,
            cwnd_room: 2000,
            unsent: 1200 + 4 * 1024,
            wnd_room: 1 << 20,
        };
        assert!(Plpmtud::may_send(1200, &r));
        assert!(!Plpmtud::may_send(
            1200,
            &ProbeRoom {
                cwnd: 10 * 1024,
                ..r
            }
        ));
        assert!(!Plpmtud::may_send(1200, &ProbeRoom { unsent: 5000, ..r }));
    }
}
