//! Numbers and lines as iperf3 prints them: byte counts in powers of 1024 (`MBytes`), rates in
//! powers of 1000 (`Mbits/sec`), one line per stream and interval, a `[SUM]` line with several
//! streams, and the CPU time the process used (from `/proc/self/stat`).

use serde_json::{json, Value};
use std::time::Instant;

/// iperf3's `unit_snprintf`: at most four digits and a unit prefix.
fn unit(value: f64, base: f64, labels: [&str; 5]) -> String {
    let mut v = value;
    let mut i = 0;
    while v >= base && i < labels.len() - 1 {
        v /= base;
        i += 1;
    }
    let digits = if v < 9.995 {
        2
    } else if v < 99.95 {
        1
    } else {
        0
    };
    format!("{v:4.digits$} {}", labels[i])
}

/// `1.25 GBytes`.
pub fn bytes_text(bytes: u64) -> String {
    let s = unit(
        bytes as f64,
        1024.0,
        ["Byte", "KByte", "MByte", "GByte", "TByte"],
    );
    format!("{s}s")
}

/// `9.41 Gbits/sec`.
pub fn rate_text(bytes: u64, secs: f64) -> String {
    let bits = if secs > 0.0 {
        bytes as f64 * 8.0 / secs
    } else {
        0.0
    };
    let s = unit(bits, 1000.0, ["bit", "Kbit", "Mbit", "Gbit", "Tbit"]);
    format!("{s}s/sec")
}

/// Bits per second, for JSON.
pub fn bps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs
    } else {
        0.0
    }
}

/// The column header.
pub const HEADER: &str = "[ ID] Interval           Transfer     Bitrate";
/// The header of a sender's intervals (iperf3 on Linux, from `tcp_info`).
pub const HEADER_RETR_CWND: &str =
    "[ ID] Interval           Transfer     Bitrate         Retr  Cwnd";
/// The header of a summary with a sender's retransmissions.
pub const HEADER_RETR: &str = "[ ID] Interval           Transfer     Bitrate         Retr";
/// Between the intervals and the summary.
pub const SEPARATOR: &str = "- - - - - - - - - - - - - - - - - - - - - - - - -";

/// One line: `[  1]   0.00-1.00   sec   112 MBytes   941 Mbits/sec                  receiver`.
/// `id` None makes it a `[SUM]` line.
pub fn line(id: Option<u32>, start: f64, end: f64, bytes: u64, role: &str) -> String {
    let tag = match id {
        Some(i) => format!("[{i:3}]"),
        None => "[SUM]".to_string(),
    };
    let l = format!(
        "{tag} {start:6.2}-{end:<6.2} sec  {}  {}                  {role}",
        bytes_text(bytes),
        rate_text(bytes, end - start)
    );
    l.trim_end().to_string()
}

/// A sender's line with the Retr column (and Cwnd for an interval of one stream):
/// `[  5]   0.00-1.00   sec  99.9 MBytes   837 Mbits/sec    7   1023 KBytes`,
/// `[  5]   0.00-10.00  sec  1.10 GBytes   941 Mbits/sec    7             sender`.
#[allow(clippy::too_many_arguments)]
pub fn sender_line(
    id: Option<u32>,
    start: f64,
    end: f64,
    bytes: u64,
    retransmits: u64,
    cwnd: Option<u64>,
    role: &str,
) -> String {
    let base = line(id, start, end, bytes, "");
    let l = match cwnd {
        Some(c) => format!("{base}  {retransmits:3}   {}", bytes_text(c)),
        None => format!("{base}  {retransmits:3}             {role}"),
    };
    l.trim_end().to_string()
}

/// What iperf3 reads from a sending stream's `tcp_info` (Linux): retransmissions, the congestion
/// window and the RTT, sampled at every interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct SenderInfo {
    /// Retransmitted segments over the whole test so far.
    pub retransmits: u64,
    mark: u64,
    /// The last sample: congestion window (bytes), RTT and its variation (µs), path MTU.
    pub cwnd: u64,
    pub rtt_us: u64,
    pub rttvar_us: u64,
    pub pmtu: u64,
    max_cwnd: u64,
    max_rtt: u64,
    min_rtt: u64,
    rtt_sum: u64,
    samples: u64,
}

impl SenderInfo {
    /// Takes a sample from the connection's info.
    pub fn sample(&mut self, info: &longhaul::ConnInfo) {
        let t = &info.tcp;
        self.retransmits = t.retransmits_total;
        self.cwnd = t.cwnd_bytes;
        self.rtt_us = t.rtt_us;
        self.rttvar_us = t.rttvar_us;
        // MSS + TCP/IP headers (+ timestamps), as the kernel's path MTU.
        self.pmtu = t.snd_mss as u64 + 40 + if t.timestamps { 12 } else { 0 };
        self.max_cwnd = self.max_cwnd.max(self.cwnd);
        self.max_rtt = self.max_rtt.max(self.rtt_us);
        self.min_rtt = if self.samples == 0 {
            self.rtt_us
        } else {
            self.min_rtt.min(self.rtt_us)
        };
        self.rtt_sum += self.rtt_us;
        self.samples += 1;
    }

    /// Retransmissions since the last call (the interval's Retr).
    pub fn take_interval(&mut self) -> u64 {
        let d = self.retransmits.saturating_sub(self.mark);
        self.mark = self.retransmits;
        d
    }

    /// Adds an interval's `retransmits`, `snd_cwnd`, `rtt`, `rttvar` and `pmtu` to a JSON stream
    /// entry, as iperf3 does for a sender on Linux.
    pub fn add_interval_json(&self, entry: &mut Value, retransmits: u64) {
        entry["retransmits"] = json!(retransmits);
        entry["snd_cwnd"] = json!(self.cwnd);
        entry["rtt"] = json!(self.rtt_us);
        entry["rttvar"] = json!(self.rttvar_us);
        entry["pmtu"] = json!(self.pmtu);
    }

    /// Adds the test's `retransmits`, `max_snd_cwnd`, `max_rtt`, `min_rtt` and `mean_rtt` to the
    /// sender's summary entry of a stream.
    pub fn add_summary_json(&self, entry: &mut Value) {
        entry["retransmits"] = json!(self.retransmits);
        entry["max_snd_cwnd"] = json!(self.max_cwnd);
        entry["max_rtt"] = json!(self.max_rtt);
        entry["min_rtt"] = json!(self.min_rtt);
        entry["mean_rtt"] = json!(self.rtt_sum.checked_div(self.samples).unwrap_or(0));
    }
}

/// A JSON interval/summary entry the way iperf3 writes it.
pub fn json_entry(id: Option<u32>, start: f64, end: f64, bytes: u64, sender: bool) -> Value {
    let mut v = json!({
        "start": start,
        "end": end,
        "seconds": end - start,
        "bytes": bytes,
        "bits_per_second": bps(bytes, end - start),
        "omitted": false,
        "sender": sender,
    });
    if let Some(i) = id {
        v["socket"] = json!(i);
    }
    v
}

/// CPU seconds used by this process so far (user, system), from `/proc/self/stat` (USER_HZ is 100
/// on Linux by ABI).
fn cpu_secs() -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return (0.0, 0.0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (get(14), get(15))
}

/// CPU use over a test, in percent of one CPU, as iperf3 reports it (total, user, system).
pub struct CpuMeter {
    wall: Instant,
    user: f64,
    system: f64,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start() -> Self {
        let (user, system) = cpu_secs();
        CpuMeter {
            wall: Instant::now(),
            user,
            system,
        }
    }

    /// Percentages since [`CpuMeter::start`]: (total, user, system).
    pub fn percent(&self) -> (f64, f64, f64) {
        let (u, s) = cpu_secs();
        let wall = self.wall.elapsed().as_secs_f64().max(1e-6);
        let user = (u - self.user).max(0.0) / wall * 100.0;
        let system = (s - self.system).max(0.0) / wall * 100.0;
        (user + system, user, system)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_match_iperf3() {
        assert_eq!(bytes_text(0), "0.00 Bytes");
        assert_eq!(bytes_text(1024), "1.00 KBytes");
        assert_eq!(bytes_text(112 * 1024 * 1024), " 112 MBytes");
        assert_eq!(bytes_text(15 * 1024 * 1024 + 512 * 1024), "15.5 MBytes");
        assert_eq!(rate_text(117_625_000, 1.0), " 941 Mbits/sec");
        assert_eq!(rate_text(1_250_000_000, 1.0), "10.0 Gbits/sec");
        assert_eq!(rate_text(1, 0.0), "0.00 bits/sec");
    }

    #[test]
    fn lines_match_iperf3() {
        assert_eq!(
            line(Some(5), 0.0, 1.0, 112 * 1024 * 1024, ""),
            "[  5]   0.00-1.00   sec   112 MBytes   940 Mbits/sec"
        );
        assert_eq!(
            line(None, 0.0, 10.0, 1024 * 1024 * 1024, "receiver"),
            "[SUM]   0.00-10.00  sec  1.00 GBytes   859 Mbits/sec                  receiver"
        );
    }

    #[test]
    fn sender_lines_match_iperf3() {
        assert_eq!(
            sender_line(Some(5), 0.0, 1.0, 104_752_742, 7, Some(1023 * 1024), ""),
            "[  5]   0.00-1.00   sec  99.9 MBytes   838 Mbits/sec    7   1023 KBytes"
        );
        assert_eq!(
            sender_line(None, 0.0, 1.0, 215_000_000, 14, None, ""),
            "[SUM]   0.00-1.00   sec   205 MBytes  1.72 Gbits/sec   14"
        );
        assert_eq!(
            sender_line(Some(5), 0.0, 1.0, 104_752_742, 7, None, "sender"),
            "[  5]   0.00-1.00   sec  99.9 MBytes   838 Mbits/sec    7             sender"
        );
    }

    #[test]
    fn cpu_meter_reads_proc() {
        let m = CpuMeter::start();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (t, u, s) = m.percent();
        assert!(t >= 0.0 && u >= 0.0 && s >= 0.0);
    }
}
