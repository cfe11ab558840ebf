//! Congestion control: how many bytes a connection may have in flight.
//!
//! The connection calls a [`CongestionControl`] with what happened (data sent, an ACK summarised
//! as an [`AckSample`], a loss, a timeout, a spurious-loss verdict) and reads back the window
//! ([`CongestionControl::window`]) and, optionally, a pacing rate. Loss detection, fast recovery and
//! PRR live in the connection; the algorithm only decides the window and the slow-start threshold.
//!
//! # Contract
//! - Sans-IO like the rest of `stack::tcp`: time comes in as [`Instant`], nothing reads a clock,
//!   allocates or logs. Every call is O(1).
//! - No input panics, however odd (zero MSS, zero or huge RTT, time going backwards, byte counts
//!   near `u64::MAX`). The window stays within `[1 MSS, MAX_WINDOW]`, and at or above 2 MSS except
//!   after a retransmission timeout (the 1-MSS loss window of RFC 5681).
//! - Call order per connection: [`CongestionControl::on_sent`] for each transmission (new data or
//!   retransmission), [`CongestionControl::on_ack`] for each ACK that acknowledges data,
//!   [`CongestionControl::on_congestion_event`] once at the start of each recovery episode, then
//!   [`CongestionControl::on_recovery_end`] when it ends; [`CongestionControl::on_rto`] at every
//!   retransmission-timer expiry (repeated expiries of the same loss keep ssthresh, as RFC 5681
//!   §3.1 asks); [`CongestionControl::on_spurious_congestion`] when the last response proved
//!   unnecessary (a second call, or one with nothing to undo, does nothing).
//! - An ACK that reveals a loss is reported as Linux orders it: `on_congestion_event` first,
//!   then `on_ack` with `in_recovery` set, so that ACK does not grow the reduced window.
//! - Growth is held while the engine is in recovery (`AckSample::in_recovery`) and while the
//!   acknowledged data was application-limited (`AckSample::app_limited`), so an idle or
//!   app-limited connection does not build a window it never tested (RFC 7661's idea, Linux's
//!   `tcp_is_cwnd_limited`).
//!
//! # Algorithms
//! [`CcAlgorithm`] picks one per connection ("newreno", "cubic" or "bbr"; default CUBIC with
//! HyStart++). BBR ([`Bbr`], draft-ietf-ccwg-bbr-06) also gives a pacing rate, which the engine
//! enforces.
//! To plug in your own, implement [`CongestionControl`] and hand the engine a
//! `Box<dyn CongestionControl>`; it calls nothing outside this trait:
//!
//! ```
//! use longhaul::stack::tcp::cc::{AckSample, CongestionControl};
//! use longhaul::stack::tcp::Instant;
//!
//! /// A fixed window, e.g. for a dedicated link with known capacity.
//! #[derive(Debug)]
//! struct Fixed(u64);
//!
//! impl CongestionControl for Fixed {
//!     fn name(&self) -> &'static str { "fixed" }
//!     fn on_ack(&mut self, _ack: &AckSample) {}
//!     fn on_congestion_event(&mut self, _now: Instant, _in_flight: u64, _mss: u32) {}
//!     fn on_rto(&mut self, _now: Instant, _mss: u32) {}
//!     fn on_spurious_congestion(&mut self) {}
//!     fn on_idle_restart(&mut self, _now: Instant, _mss: u32) {}
//!     fn window(&self) -> u64 { self.0 }
//!     fn ssthresh(&self) -> u64 { u64::MAX }
//!     fn state(&self) -> &'static str { "fixed" }
//! }
//!
//! let cc: Box<dyn CongestionControl> = Box::new(Fixed(1 << 20));
//! assert_eq!(cc.window(), 1 << 20);
//! ```

mod bbr;
mod cubic;
mod hystart;
mod newreno;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::time::Instant;

pub use self::bbr::{Bbr, BbrState};
pub use self::cubic::Cubic;
pub use self::newreno::NewReno;

/// The largest window any shipped algorithm reaches, in bytes (1 TiB): far above any real
/// bandwidth-delay product, and low enough that window arithmetic never overflows.
pub const MAX_WINDOW: u64 = 1 << 40;

/// What one ACK told the sender. All byte counts are bytes, not segments.
///
/// The fields after `mss` come from the engine's delivery-rate estimator
/// (draft-cheng-iccrg-delivery-rate-estimation) and loss detector; `Default` gives an empty
/// sample for tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct AckSample {
    /// When the ACK was processed.
    pub now: Instant,
    /// Newly acknowledged by this ACK (cumulative plus newly SACKed) when the ACK moved
    /// SND.UNA; 0 on an ACK that only SACKs (Linux grows a loss-based window only on ACKs that
    /// acknowledge new data). `newly_delivered` counts every ACK.
    pub acked_bytes: u64,
    /// RTT sample from this ACK (timestamps or Karn-safe timing), if any.
    pub rtt: Option<Duration>,
    /// Smoothed RTT (RFC 6298) after this ACK.
    pub srtt: Duration,
    /// Smallest RTT seen on the connection (over the engine's window).
    pub min_rtt: Duration,
    /// Bytes in flight before this ACK.
    pub prior_in_flight: u64,
    /// Bytes in flight after this ACK.
    pub in_flight: u64,
    /// Total bytes delivered on the connection so far.
    pub delivered: u64,
    /// Delivery rate in bytes per second, when the engine has a sample.
    pub delivery_rate: Option<u64>,
    /// The acknowledged data was sent while the application, not cwnd, limited sending.
    pub app_limited: bool,
    /// This ACK starts a new round trip (it covers data sent at the start of the previous round).
    pub round_start: bool,
    /// The engine is in fast recovery: the algorithm must not grow cwnd.
    pub in_recovery: bool,
    /// The sender's MSS, bytes.
    pub mss: u32,
    /// Bytes this ACK delivered: newly cumulatively acknowledged (not SACKed before) plus
    /// newly SACKed, whether or not SND.UNA moved.
    pub newly_delivered: u64,
    /// Bytes newly SACKed by this ACK (included in `newly_delivered`).
    pub sacked_bytes: u64,
    /// Bytes newly marked lost while processing this ACK (RACK, DupThresh).
    pub lost_bytes: u64,
    /// Total bytes marked lost on the connection so far.
    pub lost_total: u64,
    /// The rate sample's newest segment was sent while the application limited sending
    /// (draft-cheng §3.4): the sample may under-estimate the path. `app_limited` above is the
    /// engine's "did not use its window" test that holds window growth; this is the one a
    /// bandwidth model filters samples with.
    pub is_app_limited: bool,
    /// Bytes delivered over the rate sample's interval (0 without a sample).
    pub rate_delivered: u64,
    /// The rate sample's interval (`max(send_elapsed, ack_elapsed)`).
    pub rate_interval: Duration,
    /// `delivered` when the sample's newest segment was sent (BBR's round counting).
    pub prior_delivered: u64,
    /// Bytes in flight just after the sample's newest segment was sent (BBR `tx_in_flight`).
    pub tx_in_flight: u64,
    /// Bytes marked lost between that segment's send and this ACK (BBR `rs.lost`).
    pub rate_lost: u64,
    /// The sample's newest segment was a retransmission.
    pub rate_is_retrans: bool,
    /// Round-trip time of the sample's newest segment from its send time (nanoseconds, where
    /// `rtt` is often the whole-millisecond timestamp echo); `None` without a sample or when that
    /// segment was a retransmission. BBR's min_rtt and ProbeRTT use it, as Linux's `rs->rtt_us`.
    pub rate_rtt: Option<Duration>,
}

/// A congestion-control algorithm. See the [module documentation](self) for the call contract.
pub trait CongestionControl: Send + fmt::Debug {
    /// Short algorithm name, e.g. `"cubic"`.
    fn name(&self) -> &'static str;

    /// `bytes` were just transmitted; `in_flight` counts them too.
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    /// An ACK arrived that acknowledged data.
    fn on_ack(&mut self, ack: &AckSample);

    /// Loss detected by dupacks/SACK/RACK; called once per recovery episode, at its start.
    /// `in_flight` is the flight size when the loss was detected.
    fn on_congestion_event(&mut self, now: Instant, in_flight: u64, mss: u32);

    /// Fast recovery ended (snd.una reached the recovery point).
    fn on_recovery_end(&mut self, _now: Instant) {}

    /// Retransmission timeout: back to slow start from a loss window. The new ssthresh is taken
    /// from the flight size last reported through `on_sent`/`on_ack`.
    fn on_rto(&mut self, now: Instant, mss: u32);

    /// The last congestion response was spurious (D-SACK/timestamps/F-RTO): undo it.
    fn on_spurious_congestion(&mut self);

    /// Slow start after idle (only called when that setting is on): restart window.
    fn on_idle_restart(&mut self, now: Instant, mss: u32);

    /// Congestion window, bytes.
    fn window(&self) -> u64;

    /// Slow-start threshold, bytes (`u64::MAX` when unset).
    fn ssthresh(&self) -> u64;

    /// Whether the window is below ssthresh.
    fn in_slow_start(&self) -> bool {
        self.window() < self.ssthresh()
    }

    /// Pacing rate in bytes per second, if the algorithm paces.
    fn pacing_rate(&self) -> Option<u64> {
        None
    }

    /// Short state name for stats (e.g. "slow_start", "css", "avoidance", "recovery").
    fn state(&self) -> &'static str;

    /// The algorithm's bottleneck-bandwidth estimate in bytes per second, for model-based
    /// algorithms (BBR); `None` for loss-based ones.
    fn bandwidth_estimate(&self) -> Option<u64> {
        None
    }

    /// The algorithm's own min-RTT estimate (BBR's windowed min_rtt), if it keeps one.
    fn min_rtt_estimate(&self) -> Option<Duration> {
        None
    }

    /// The algorithm's model of the path, for stats (`TcpInfo`, `longhaul stat`). The default
    /// reports only [`CongestionControl::bandwidth_estimate`] (as `max_bw`) and
    /// [`CongestionControl::min_rtt_estimate`]; BBR fills in its whole model.
    fn model(&self) -> CcModel {
        CcModel {
            max_bw: self.bandwidth_estimate(),
            min_rtt: self.min_rtt_estimate(),
            ..CcModel::default()
        }
    }
}

/// What a congestion controller believes about the path, for observability only: the connection
/// never acts on it. Every field is `None` when the algorithm keeps no such estimate (or has not
/// set it yet), so one struct serves model-based algorithms (BBR's bandwidth, min-RTT and
/// inflight bounds) and, later, loss-based ones (e.g. CUBIC's `W_max` and `K`, as new fields).
/// Field names follow draft-ietf-ccwg-bbr; rates are bytes per second, volumes bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CcModel {
    /// The bandwidth the model lets the connection use now (BBR `bw`: `min(max_bw, bw_lo)`).
    pub bw: Option<u64>,
    /// The windowed maximum delivery rate (BBR `max_bw`).
    pub max_bw: Option<u64>,
    /// The algorithm's own min-RTT estimate (BBR `min_rtt`, over its 10 s window).
    pub min_rtt: Option<Duration>,
    /// The long-term inflight bound that loss set (BBR `inflight_longterm`, inflight_hi).
    pub inflight_hi: Option<u64>,
    /// The short-term inflight bound of this probing cycle (BBR `inflight_shortterm`, inflight_lo).
    pub inflight_lo: Option<u64>,
    /// The short-term bandwidth bound of this probing cycle (BBR `bw_shortterm`, bw_lo).
    pub bw_lo: Option<u64>,
    /// The pacing gain in use, percent (BBR Startup: 277).
    pub pacing_gain_pct: Option<u32>,
    /// The cwnd gain in use, percent (BBR Startup: 200).
    pub cwnd_gain_pct: Option<u32>,
}

impl CcModel {
    /// A gain (a factor such as 2.77) as whole percent, rounded; 0 for a negative or NaN gain.
    pub fn gain_pct(gain: f64) -> u32 {
        // `as` saturates: NaN and negatives give 0, huge values u32::MAX.
        (gain * 100.0).round() as u32
    }
}

/// Which algorithm a connection uses (per connection, from config or `ConnOptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CcAlgorithm {
    /// NewReno (RFC 5681, RFC 6582), with appropriate byte counting (RFC 3465).
    NewReno,
    /// CUBIC (RFC 9438) with HyStart++ (RFC 9406) in the initial slow start.
    #[default]
    Cubic,
    /// BBR version 3 (draft-ietf-ccwg-bbr-06): model-based, paced.
    Bbr,
}

impl CcAlgorithm {
    /// A fresh controller with the RFC 6928 initial window for `mss`. `now` is the connection's
    /// start (BBR's clocks start there and it seeds BBR's probing randomisation).
    pub fn build(self, mss: u32, now: Instant) -> Box<dyn CongestionControl> {
        match self {
            CcAlgorithm::NewReno => Box::new(NewReno::new(mss)),
            CcAlgorithm::Cubic => Box::new(Cubic::new(mss)),
            CcAlgorithm::Bbr => Box::new(Bbr::new(mss, now)),
        }
    }

    /// The name `FromStr` accepts and stats print.
    pub fn name(self) -> &'static str {
        match self {
            CcAlgorithm::NewReno => "newreno",
            CcAlgorithm::Cubic => "cubic",
            CcAlgorithm::Bbr => "bbr",
        }
    }
}

impl fmt::Display for CcAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A congestion-control name that `CcAlgorithm::from_str` does not know; the text says which
/// names it does know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCcAlgorithmError(pub String);

impl fmt::Display for ParseCcAlgorithmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseCcAlgorithmError {}

impl FromStr for CcAlgorithm {
    type Err = ParseCcAlgorithmError;

    fn from_str(s: &str) -> Result<Self, ParseCcAlgorithmError> {
        const CHOICES: &str = "choose newreno (or reno), cubic or bbr";
        match s.trim().to_ascii_lowercase().as_str() {
            "newreno" | "reno" => Ok(CcAlgorithm::NewReno),
            "cubic" => Ok(CcAlgorithm::Cubic),
            "bbr" | "bbr3" | "bbrv3" => Ok(CcAlgorithm::Bbr),
            _ => Err(ParseCcAlgorithmError(format!(
                "unknown congestion control '{s}': {CHOICES}"
            ))),
        }
    }
}

/// Initial window per RFC 6928: `min(10*MSS, max(2*MSS, 14600))` bytes.
pub fn initial_window(mss: u32) -> u64 {
    let mss = mss_bytes(mss);
    (10 * mss).min((2 * mss).max(14_600))
}

/// The MSS as a byte count that is never zero, so no division or window floor degenerates.
fn mss_bytes(mss: u32) -> u64 {
    u64::from(mss.max(1))
}

/// Slow-start growth with appropriate byte counting (RFC 3465): cwnd grows by the bytes acked,
/// at most `limit` per ACK, and not past ssthresh. Returns the new cwnd and the acked bytes left
/// over once cwnd reached ssthresh (for congestion avoidance, as Linux's `tcp_slow_start` does).
fn slow_start(cwnd: u64, ssthresh: u64, acked: u64, limit: u64) -> (u64, u64) {
    let room = ssthresh.saturating_sub(cwnd);
    let inc = acked.min(limit).min(room);
    let grown = cwnd.saturating_add(inc).min(MAX_WINDOW);
    let left = if inc == room { acked - inc } else { 0 };
    (grown, left)
}

/// Restart window after idle (RFC 5681 §4.1): `min(IW, cwnd)`.
fn restart_window(cwnd: u64, mss: u32) -> u64 {
    initial_window(mss).min(cwnd)
}

/// ssthresh kept across a restart after idle: at least 3/4 of the old window, so slow start climbs
/// straight back to where the connection was (RFC 2861, Linux `tcp_cwnd_restart`).
fn idle_ssthresh(ssthresh: u64, cwnd: u64) -> u64 {
    ssthresh.max(cwnd / 4 * 3)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn initial_window_follows_rfc6928() {
        assert_eq!(initial_window(1460), 14_600);
        assert_eq!(initial_window(536), 5_360);
        assert_eq!(initial_window(4380), 14_600);
        assert_eq!(initial_window(9000), 18_000);
        assert_eq!(initial_window(0), 10);
    }

    #[test]
    fn parse_names_and_errors() {
        assert_eq!("newreno".parse::<CcAlgorithm>(), Ok(CcAlgorithm::NewReno));
        assert_eq!(" Reno ".parse::<CcAlgorithm>(), Ok(CcAlgorithm::NewReno));
        assert_eq!("CUBIC".parse::<CcAlgorithm>(), Ok(CcAlgorithm::Cubic));
        assert_eq!(" BBR".parse::<CcAlgorithm>(), Ok(CcAlgorithm::Bbr));
        let other = "vegas".parse::<CcAlgorithm>().unwrap_err().to_string();
        assert_eq!(
            other,
            "unknown congestion control 'vegas': choose newreno (or reno), cubic or bbr"
        );
        assert_eq!(CcAlgorithm::default(), CcAlgorithm::Cubic);
        for alg in [CcAlgorithm::NewReno, CcAlgorithm::Cubic, CcAlgorithm::Bbr] {
            assert_eq!(alg.name().parse::<CcAlgorithm>(), Ok(alg));
            assert_eq!(alg.to_string(), alg.name());
        }
    }

    #[test]
    fn build_gives_initial_window() {
        for alg in [CcAlgorithm::NewReno, CcAlgorithm::Cubic] {
            let cc = alg.build(1460, Instant::ZERO);
            assert_eq!(cc.name(), alg.name());
            assert_eq!(cc.window(), 14_600);
            assert_eq!(cc.ssthresh(), u64::MAX);
            assert!(cc.in_slow_start());
            assert_eq!(cc.state(), "slow_start");
            assert_eq!(cc.pacing_rate(), None);
            assert_eq!(cc.bandwidth_estimate(), None);
        }
        let bbr = CcAlgorithm::Bbr.build(1460, Instant::ZERO);
        assert_eq!((bbr.name(), bbr.state()), ("bbr", "startup"));
        assert_eq!((bbr.window(), bbr.ssthresh()), (14_600, u64::MAX));
        assert!(bbr.in_slow_start());
        // Before any RTT sample: 2.77 * IW per millisecond.
        assert_eq!(bbr.pacing_rate(), Some(40_442_000));
        assert_eq!(
            (bbr.bandwidth_estimate(), bbr.min_rtt_estimate()),
            (None, None)
        );
    }

    #[test]
    fn model_reports_bbr_estimates_and_nothing_for_loss_based() {
        for alg in [CcAlgorithm::NewReno, CcAlgorithm::Cubic] {
            assert_eq!(alg.build(1460, Instant::ZERO).model(), CcModel::default());
        }
        // Before any sample BBR has gains (Startup: 2.77 and 2) but no bandwidth or RTT.
        let bbr = CcAlgorithm::Bbr.build(1460, Instant::ZERO);
        let m = bbr.model();
        assert_eq!((m.pacing_gain_pct, m.cwnd_gain_pct), (Some(277), Some(200)));
        assert_eq!((m.bw, m.max_bw, m.min_rtt), (None, None, None));
        assert_eq!((m.inflight_hi, m.inflight_lo, m.bw_lo), (None, None, None));

        // One round of ACKs at 10 ms and 1 MB/s: the model has them.
        let mut bbr = CcAlgorithm::Bbr.build(1460, Instant::ZERO);
        let t0 = Instant::ZERO;
        bbr.on_sent(t0, 14_600, 14_600);
        let now = t0 + Duration::from_millis(10);
        bbr.on_ack(&AckSample {
            now,
            acked_bytes: 14_600,
            rtt: Some(Duration::from_millis(10)),
            srtt: Duration::from_millis(10),
            min_rtt: Duration::from_millis(10),
            prior_in_flight: 14_600,
            in_flight: 0,
            delivered: 14_600,
            delivery_rate: Some(1_460_000),
            round_start: true,
            mss: 1460,
            newly_delivered: 14_600,
            rate_delivered: 14_600,
            rate_interval: Duration::from_millis(10),
            tx_in_flight: 14_600,
            ..AckSample::default()
        });
        let m = bbr.model();
        assert_eq!(m.min_rtt, Some(Duration::from_millis(10)));
        assert_eq!(m.max_bw, Some(1_460_000), "{m:?}");
        assert_eq!(m.bw, Some(1_460_000), "{m:?}");
        assert_eq!(m.max_bw, bbr.bandwidth_estimate());
    }

    #[test]
    fn gains_as_percent() {
        assert_eq!(CcModel::gain_pct(2.77), 277);
        assert_eq!(CcModel::gain_pct(1.25), 125);
        assert_eq!(CcModel::gain_pct(0.9), 90);
        assert_eq!(CcModel::gain_pct(f64::NAN), 0);
        assert_eq!(CcModel::gain_pct(-1.0), 0);
        assert_eq!(CcModel::gain_pct(f64::INFINITY), u32::MAX);
    }

    #[test]
    fn slow_start_helper_caps_at_ssthresh_and_returns_leftover() {
        assert_eq!(slow_start(10_000, u64::MAX, 1_000, 2_000), (11_000, 0));
        assert_eq!(slow_start(10_000, u64::MAX, 5_000, 2_000), (12_000, 0));
        assert_eq!(slow_start(10_000, 10_500, 1_000, 2_000), (10_500, 500));
    }
}
