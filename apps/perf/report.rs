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
