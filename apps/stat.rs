//! `longhaul stat`: the connections of a running instance, read from its control socket (see
//! `control.rs`), printed as `ss -ti` does (a line per connection and an indented line of TCP
//! details) or as the JSON array the instance sent. When the app publishes statistics of its own
//! (the tunnel: its QUIC connections), they follow: as indented `key: value` lines under the
//! table, or with `--json` as a second line `{"app":{...}}`.

use crate::control;
use clap::Args;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct StatArgs {
    /// The instance with this process id (its socket in /run/longhaul).
    #[arg(long, conflicts_with = "socket")]
    pid: Option<u32>,
    /// The instance's control socket (what it was started with --control).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the JSON array the instance returns instead of a table (and the app's statistics,
    /// if any, as a second line `{"app":{...}}`).
    #[arg(long)]
    json: bool,
    /// Print again every SECS seconds (until interrupted).
    #[arg(long, value_name = "SECS")]
    interval: Option<f64>,
}

/// How long to wait for an instance's answer (it asks every core, up to 1 s each).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(args: StatArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("longhaul stat: {msg}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn run(args: &StatArgs) -> Result<(), Failure> {
    let interval = match args.interval {
        Some(s) if !(s.is_finite() && s > 0.0 && s <= 86_400.0) => {
            return Err((
                2,
                format!("bad --interval {s}: give seconds above 0, e.g. --interval 1"),
            ))
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let path = target(args)?;
    let mut client = Client::connect(&path)?;
    let stdout = std::io::stdout();
    loop {
        let conns = client.request("conns")?;
        // An instance without app statistics answers null (an older one, an error: the same).
        let app = client.request("app").unwrap_or(Value::Null);
        let text = match (args.json, app.is_null()) {
            (true, true) => format!("{conns}\n"),
            (true, false) => format!("{conns}\n{}\n", serde_json::json!({ "app": app })),
            (false, true) => table(&conns),
            (false, false) => format!("{}\n{}", table(&conns), app_lines(&app, 0)),
        };
        let mut out = stdout.lock();
        // A closed pipe (`longhaul stat | head`) ends quietly.
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(());
        }
        let Some(every) = interval else {
            return Ok(());
        };
        std::thread::sleep(every);
        if !args.json {
            let _ = out.write_all(b"\n");
        }
        // The instance drops a client idle for 2 s: come back on a fresh connection.
        client = Client::connect(&path)?;
    }
}

/// The socket to talk to: --socket, --pid, or the only live one in the run directory.
fn target(args: &StatArgs) -> Result<PathBuf, Failure> {
    if let Some(p) = &args.socket {
        return Ok(p.clone());
    }
    if let Some(pid) = args.pid {
        return Ok(control::default_path(pid));
    }
    let dir = control::run_dir();
    let live = live_instances(&dir);
    match live.len() {
        0 => Err((
            1,
            format!(
                "no running longhaul instance found in {} (start one, or give --socket PATH if it uses --control)",
                dir.display()
            ),
        )),
        1 => Ok(live.into_iter().next().map(|(p, _)| p).unwrap_or_default()),
        _ => {
            let mut msg = format!(
                "{} instances are running, choose one with --pid or --socket:",
                live.len()
            );
            for (path, what) in &live {
                let pid = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|&pid| control::default_path(pid) == *path);
                let choose = match pid {
                    Some(pid) => format!("--pid {pid}"),
                    None => format!("--socket {}", path.display()),
                };
                msg.push_str(&format!("\n  {choose:<16} {what}"));
            }
            Err((2, msg))
        }
    }
}

/// Sockets in `dir` that answer `info`, with the instance's command line.
fn live_instances(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let mut c = Client::connect(&p).ok()?;
            let info = c.request("info").ok()?;
            let what = info["cmdline"].as_str().unwrap_or("").to_string();
            Some((p, what))
        })
        .collect()
}

struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &Path) -> Result<Client, Failure> {
        let stream = UnixStream::connect(path).map_err(|e| {
            (
                1,
                format!(
                    "cannot connect to {}: {e} (is the instance running, and is this its control socket?)",
                    path.display()
                ),
            )
        })?;
        let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and parses the JSON reply line.
    fn request(&mut self, what: &str) -> Result<Value, Failure> {
        let shown = self.path.display().to_string();
        let io_err = |e: std::io::Error| (1, format!("{shown}: {e}"));
        self.reader
            .get_mut()
            .write_all(format!("{what}\n").as_bytes())
            .map_err(io_err)?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(io_err)?;
        if n == 0 {
            return Err((
                1,
                format!("{shown} closed the connection without an answer"),
            ));
        }
        if let Some(e) = line.trim().strip_prefix("error:") {
            return Err((1, format!("{shown} answered: {}", e.trim())));
        }
        serde_json::from_str(&line).map_err(|e| {
            (
                1,
                format!("{shown} is not a longhaul control socket (bad reply: {e})"),
            )
        })
    }
}

// ------------------------------------------------------------------ the table

/// `ss`'s state names.
fn state_name(s: &str) -> &str {
    match s {
        "Established" => "ESTAB",
        "SynSent" => "SYN-SENT",
        "SynReceived" => "SYN-RECV",
        "FinWait1" => "FIN-WAIT-1",
        "FinWait2" => "FIN-WAIT-2",
        "CloseWait" => "CLOSE-WAIT",
        "Closing" => "CLOSING",
        "LastAck" => "LAST-ACK",
        "TimeWait" => "TIME-WAIT",
        "Listen" => "LISTEN",
        "Closed" => "UNCONN",
        other => other,
    }
}

/// Milliseconds from microseconds as ss prints them (`%g`-like: 0.063, 204, 1.5).
fn ms(us: u64) -> String {
    let s = format!("{:.3}", us as f64 / 1000.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A rate as ss prints it: `1.8Gbps`, `740Mbps`, `12.5Kbps`, `800bps`.
fn rate(bps: f64) -> String {
    let (v, unit) = if bps >= 1e9 {
        (bps / 1e9, "G")
    } else if bps >= 1e6 {
        (bps / 1e6, "M")
    } else if bps >= 1e3 {
        (bps / 1e3, "K")
    } else {
        return format!("{bps:.0}bps");
    };
    let s = format!("{v:.1}");
    format!("{}{unit}bps", s.trim_end_matches(".0"))
}

/// The `ss -ti`-style table of a `conns` reply.
pub fn table(conns: &Value) -> String {
    let list = conns.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|c| {
            [
                state_name(c["state"].as_str().unwrap_or("?")).to_string(),
                c["recv_queue"].as_u64().unwrap_or(0).to_string(),
                c["send_queue"].as_u64().unwrap_or(0).to_string(),
                c["local"].as_str().unwrap_or("?").to_string(),
                c["remote"].as_str().unwrap_or("?").to_string(),
            ]
        })
        .collect();
    let head = [
        "State",
        "Recv-Q",
        "Send-Q",
        "Local Address:Port",
        "Peer Address:Port",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (wi, cell) in w.iter_mut().zip(r) {
            *wi = (*wi).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "{:<w0$} {:>w1$} {:>w2$} {:<w3$} {:<w4$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        )
        .trim_end()
        .to_string()
    };
    let mut out = line(head);
    out.push('\n');
    for (r, c) in rows.iter().zip(list) {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        out.push('\n');
        out.push_str("\t ");
        out.push_str(&details(c));
        out.push('\n');
    }
    out
}

/// The indented line: `cubic wscale:7,7 rto:204 rtt:0.05/0.02 mss:1448 cwnd:10 ...`.
fn details(c: &Value) -> String {
    let t = &c["tcp"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let mss = n("snd_mss").max(1);
    let mut f: Vec<String> = Vec::new();
    f.push(c["cc"].as_str().unwrap_or("?").to_string());
    // The controller's state right after its name (`cubic avoidance`, `bbr probe_bw_cruise`).
    if let Some(state) = c["cc_state"].as_str().filter(|s| !s.is_empty()) {
        f.push(state.to_string());
    }
    if t["timestamps"].as_bool() == Some(true) {
        f.push("ts".into());
    }
    if t["sack"].as_bool() == Some(true) {
        f.push("sack".into());
    }
    if n("snd_wscale") > 0 || n("rcv_wscale") > 0 {
        f.push(format!("wscale:{},{}", n("snd_wscale"), n("rcv_wscale")));
    }
    f.push(format!("rto:{}", ms(n("rto_us"))));
    if n("retransmits_current") > 0 {
        f.push(format!("backoff:{}", n("retransmits_current")));
    }
    f.push(format!("rtt:{}/{}", ms(n("rtt_us")), ms(n("rttvar_us"))));
    f.push(format!("mss:{mss}"));
    if n("pmtu") > 0 {
        f.push(format!("pmtu:{}", n("pmtu")));
    }
    f.push(format!("rcvmss:{}", n("rcv_mss")));
    f.push(format!("cwnd:{}", n("cwnd_bytes") / mss));
    // Linux prints ssthresh only once it is set (below "infinity").
    let ssthresh = n("ssthresh_bytes");
    if ssthresh < u32::MAX as u64 {
        f.push(format!("ssthresh:{}", ssthresh / mss));
    }
    for k in [
        "bytes_sent",
        "bytes_retrans",
        "bytes_acked",
        "bytes_received",
        "segs_out",
        "segs_in",
        "data_segs_out",
        "data_segs_in",
    ] {
        if n(k) > 0 || k.starts_with("segs") {
            f.push(format!("{k}:{}", n(k)));
        }
    }
    if let Some(model) = bbr_model(t, mss) {
        f.push(model);
    }
    let rtt = n("rtt_us");
    if rtt > 0 {
        f.push(format!(
            "send {}",
            rate(n("cwnd_bytes") as f64 * 8.0 * 1e6 / rtt as f64)
        ));
    }
    // pacing_rate_bps is bytes per second (delivery_rate_bps is bits, as Linux's).
    if n("pacing_rate_bps") > 0 {
        f.push(format!(
            "pacing_rate {}",
            rate(n("pacing_rate_bps") as f64 * 8.0)
        ));
    }
    if n("delivery_rate_bps") > 0 {
        f.push(format!(
            "delivery_rate {}",
            rate(n("delivery_rate_bps") as f64)
        ));
    }
    if n("in_flight_bytes") > 0 {
        f.push(format!("unacked:{}", n("in_flight_bytes").div_ceil(mss)));
    }
    f.push(format!(
        "retrans:{}/{}",
        n("retransmits_current"),
        n("retransmits_total")
    ));
    for (k, name) in [("lost_segs", "lost"), ("sacked_segs", "sacked")] {
        if n(k) > 0 {
            f.push(format!("{name}:{}", n(k)));
        }
    }
    if n("dsacks_out") > 0 {
        f.push(format!("dsack_out:{}", n("dsacks_out")));
    }
    f.extend(recovery_fields(t));
    // busy: the time the sender had something to send; then the share each limit took.
    let limited = n("cwnd_limited_us") + n("rwnd_limited_us");
    let busy = n("busy_us") + limited;
    f.push(format!("busy:{}ms", busy / 1000));
    for (k, name) in [
        ("rwnd_limited_us", "rwnd_limited"),
        ("cwnd_limited_us", "cwnd_limited"),
    ] {
        if n(k) > 0 {
            let pct = n(k) as f64 * 100.0 / busy.max(1) as f64;
            f.push(format!("{name}:{}ms({pct:.1}%)", n(k) / 1000));
        }
    }
    if n("app_limited_us") > 0 {
        f.push(format!("app_limited:{}ms", n("app_limited_us") / 1000));
    }
    f.push(format!("rcv_space:{}", n("rcv_buf")));
    f.push(format!("rcv_wnd:{}", n("rcv_wnd")));
    f.push(format!("snd_wnd:{}", n("snd_wnd")));
    if n("min_rtt_us") > 0 {
        f.push(format!("minrtt:{}", ms(n("min_rtt_us"))));
    }
    // Path MTU probing (not in Linux's ss): black holes detected, probes ok/sent.
    if n("mtu_probes") > 0 || n("blackholes_detected") > 0 {
        f.push(format!(
            "mtu_probes:{}/{} blackholes:{}",
            n("mtu_probe_successes"),
            n("mtu_probes"),
            n("blackholes_detected")
        ));
    }
    f.join(" ")
}

/// BBR's model as ss prints it, `bbr:(bw:94.1Mbps,mrtt:250,pacing_gain:1.25,cwnd_gain:2.25)`,
/// plus what ss does not show: `max_bw` when the short-term bound holds `bw` below it, and the
/// loss-set bounds `bw_lo`, `inflight_hi` and `inflight_lo` (in segments, as `cwnd`) once set.
/// `None` for an algorithm without a model (every `bbr_*` field 0).
fn bbr_model(t: &Value, mss: u64) -> Option<String> {
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let (bw, max_bw) = (n("bbr_bw_bps"), n("bbr_max_bw_bps"));
    let (pacing_gain, cwnd_gain) = (n("bbr_pacing_gain_pct"), n("bbr_cwnd_gain_pct"));
    if bw == 0 && max_bw == 0 && pacing_gain == 0 && cwnd_gain == 0 {
        return None;
    }
    let mut m = vec![format!("bw:{}", rate(bw as f64 * 8.0))];
    if max_bw != bw {
        m.push(format!("max_bw:{}", rate(max_bw as f64 * 8.0)));
    }
    if n("bbr_bw_lo_bps") > 0 {
        m.push(format!("bw_lo:{}", rate(n("bbr_bw_lo_bps") as f64 * 8.0)));
    }
    if n("bbr_min_rtt_us") > 0 {
        m.push(format!("mrtt:{}", ms(n("bbr_min_rtt_us"))));
    }
    m.push(format!("pacing_gain:{}", gain(pacing_gain)));
    m.push(format!("cwnd_gain:{}", gain(cwnd_gain)));
    for (k, name) in [
        ("bbr_inflight_hi_bytes", "inflight_hi"),
        ("bbr_inflight_lo_bytes", "inflight_lo"),
    ] {
        if n(k) > 0 {
            m.push(format!("{name}:{}", n(k).div_ceil(mss)));
        }
    }
    Some(format!("bbr:({})", m.join(",")))
}

/// A gain from whole percent: 277 -> `2.77`, 125 -> `1.25`, 90 -> `0.9`, 200 -> `2`.
fn gain(pct: u64) -> String {
    let s = format!("{}.{:02}", pct / 100, pct % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Loss recovery at a glance (not in Linux's ss), each only once nonzero: which detector marked
/// segments lost (`lost_by:rack/dupack/rto 3/0/1`), congestion responses undone as spurious
/// (`spurious:undos/rtos`), tail loss probes sent and those that repaired a loss
/// (`tlp:probes/recoveries`), and `reordering` once RACK saw it (with its window multiplier
/// when raised: `reordering:2`).
fn recovery_fields(t: &Value) -> Vec<String> {
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let mut f = Vec::new();
    let (rack, dupack, rto) = (n("lost_rack"), n("lost_dupack"), n("lost_rto"));
    if rack > 0 || dupack > 0 || rto > 0 {
        f.push(format!("lost_by:rack/dupack/rto {rack}/{dupack}/{rto}"));
    }
    if n("spurious_undos") > 0 || n("spurious_rtos") > 0 {
        f.push(format!(
            "spurious:{}/{}",
            n("spurious_undos"),
            n("spurious_rtos")
        ));
    }
    if n("tlp_probes") > 0 {
        f.push(format!("tlp:{}/{}", n("tlp_probes"), n("tlp_recoveries")));
    }
    if t["reord_seen"].as_bool() == Some(true) {
        match n("reo_wnd_mult") {
            m if m > 1 => f.push(format!("reordering:{m}")),
            _ => f.push("reordering".into()),
        }
    }
    f
}

// ------------------------------------------------------------------ the app's statistics

/// An app's statistics as indented lines: `key: value` for numbers and strings, a heading for
/// objects, and one line of `key=value` pairs per element of a list of objects (a connection).
pub fn app_lines(v: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    let Some(map) = v.as_object() else {
        return format!("{pad}{}\n", scalar(v));
    };
    for (k, v) in map {
        match v {
            Value::Object(_) => {
                out.push_str(&format!("{pad}{k}:\n"));
                out.push_str(&app_lines(v, indent + 2));
            }
            Value::Array(items) => {
                out.push_str(&format!("{pad}{k}: {}\n", items.len()));
                for item in items {
                    let line = match item.as_object() {
                        Some(o) => o
                            .iter()
                            .map(|(k, v)| format!("{k}={}", scalar(v)))
                            .collect::<Vec<_>>()
                            .join(" "),
                        None => scalar(item),
                    };
                    out.push_str(&format!("{pad}  - {line}\n"));
                }
            }
            _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
        }
    }
    out
}

/// A value on one line: strings without quotes, `-` for null, nested values as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_ss_prints_them() {
        assert_eq!(ms(204_000), "204");
        assert_eq!(ms(63), "0.063");
        assert_eq!(ms(1_500), "1.5");
        assert_eq!(ms(0), "0");
        assert_eq!(rate(1.84e9), "1.8Gbps");
        assert_eq!(rate(740e6), "740Mbps");
        assert_eq!(rate(800.0), "800bps");
    }

    #[test]
    fn table_has_a_block_per_connection() {
        let v: Value = serde_json::from_str(
            r#"[{"core":0,"state":"Established","local":"198.18.0.2:7","remote":"198.18.0.1:40000",
                 "recv_queue":0,"send_queue":5,"cc":"cubic",
                 "tcp":{"snd_mss":1448,"cwnd_bytes":14480,"ssthresh_bytes":18446744073709551615,
                        "rtt_us":50,"rttvar_us":20,"rto_us":204000,"snd_wscale":7,"rcv_wscale":9,
                        "timestamps":true,"sack":true,"bytes_received":5}}]"#,
        )
        .unwrap();
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("State"));
        assert!(lines[1].starts_with("ESTAB"), "{t}");
        assert!(lines[1].contains("198.18.0.1:40000"));
        assert!(
            lines[2].starts_with("\t cubic ts sack wscale:7,9 rto:204 rtt:0.05/0.02 mss:1448"),
            "{t}"
        );
        assert!(lines[2].contains("cwnd:10 ") && !lines[2].contains("ssthresh"));
        // Bad input (not an array, missing fields) still prints something, never panics.
        assert_eq!(table(&Value::Null).lines().count(), 1);
        let odd: Value = serde_json::from_str(r#"[{"tcp":7}]"#).unwrap();
        assert_eq!(table(&odd).lines().count(), 3);
    }

    /// The detail line of one connection given as JSON.
    fn detail_line(json: &str) -> String {
        let v: Value = serde_json::from_str(json).unwrap();
        let t = table(&v);
        t.lines().nth(2).unwrap_or_default().to_string()
    }

    #[test]
    fn bbr_model_pacing_and_state_as_ss_prints_them() {
        let l = detail_line(
            r#"[{"state":"Established","cc":"bbr","cc_state":"probe_bw_cruise",
                 "tcp":{"snd_mss":1000,"cwnd_bytes":2500000,"rtt_us":251000,"min_rtt_us":250000,
                        "pacing_rate_bps":12275000,"bytes_sent":7,
                        "bbr_bw_bps":11762500,"bbr_max_bw_bps":11762500,"bbr_min_rtt_us":250000,
                        "bbr_pacing_gain_pct":100,"bbr_cwnd_gain_pct":225,
                        "bbr_inflight_hi_bytes":3000500}}]"#,
        );
        assert!(l.starts_with("\t bbr probe_bw_cruise rto:"), "{l}");
        assert!(
            l.contains(
                " bytes_sent:7 segs_out:0 segs_in:0 \
                 bbr:(bw:94.1Mbps,mrtt:250,pacing_gain:1,cwnd_gain:2.25,inflight_hi:3001) send "
            ),
            "{l}"
        );
        assert!(l.contains(" pacing_rate 98.2Mbps "), "{l}");
        // Loss has cut bw below max_bw and set the short-term bounds: all shown.
        let l = detail_line(
            r#"[{"cc":"bbr","cc_state":"probe_bw_up",
                 "tcp":{"snd_mss":1000,"bbr_bw_bps":1000000,"bbr_max_bw_bps":2000000,
                        "bbr_bw_lo_bps":1000000,"bbr_min_rtt_us":1500,
                        "bbr_pacing_gain_pct":125,"bbr_cwnd_gain_pct":225,
                        "bbr_inflight_hi_bytes":50000,"bbr_inflight_lo_bytes":40001}}]"#,
        );
        assert!(
            l.contains(
                " bbr:(bw:8Mbps,max_bw:16Mbps,bw_lo:8Mbps,mrtt:1.5,pacing_gain:1.25,\
                 cwnd_gain:2.25,inflight_hi:50,inflight_lo:41) "
            ),
            "{l}"
        );
        // Loss-based: state after the name, no model, no pacing rate unless paced.
        let l = detail_line(r#"[{"cc":"cubic","cc_state":"avoidance","tcp":{"snd_mss":1448}}]"#);
        assert!(l.starts_with("\t cubic avoidance rto:"), "{l}");
        assert!(!l.contains("bbr:") && !l.contains("pacing_rate"), "{l}");
        let l = detail_line(
            r#"[{"cc":"cubic","cc_state":"slow_start","tcp":{"pacing_rate_bps":1250}}]"#,
        );
        assert!(l.contains(" pacing_rate 10Kbps "), "{l}");
        assert_eq!(gain(277), "2.77");
        assert_eq!(gain(90), "0.9");
        assert_eq!(gain(200), "2");
        assert_eq!(gain(0), "0");
    }

    #[test]
    fn recovery_counters_only_once_nonzero() {
        let quiet = detail_line(r#"[{"cc":"cubic","tcp":{"reo_wnd_mult":1}}]"#);
        for absent in ["lost_by", "spurious", "tlp:", "reordering"] {
            assert!(!quiet.contains(absent), "{absent}: {quiet}");
        }
        let l = detail_line(
            r#"[{"cc":"cubic","tcp":{"lost_rack":3,"lost_dupack":0,"lost_rto":1,
                 "spurious_undos":2,"spurious_rtos":1,"tlp_probes":5,"tlp_recoveries":2,
                 "reord_seen":true,"reo_wnd_mult":1,"dsacks_out":1}}]"#,
        );
        assert!(
            l.contains(
                " dsack_out:1 lost_by:rack/dupack/rto 3/0/1 spurious:2/1 tlp:5/2 reordering busy:"
            ),
            "{l}"
        );
        let l = detail_line(r#"[{"cc":"cubic","tcp":{"reord_seen":true,"reo_wnd_mult":2}}]"#);
        assert!(l.contains(" reordering:2 "), "{l}");
        // Huge counters from a bad peer do not overflow.
        let l = detail_line(
            r#"[{"cc":"cubic","tcp":{"lost_rack":18446744073709551615,
                 "lost_dupack":18446744073709551615}}]"#,
        );
        assert!(
            l.contains("lost_by:rack/dupack/rto 18446744073709551615/"),
            "{l}"
        );
    }

    #[test]
    fn app_statistics_as_indented_lines() {
        let v: Value = serde_json::from_str(
            r#"{"tunnel":{"role":"client","public_address":null,"stun":{"requests":2},
                 "connections":[{"remote":"198.18.0.2:4433","rtt_us":250000}]}}"#,
        )
        .unwrap();
        // serde_json's maps are sorted by key.
        assert_eq!(
            app_lines(&v, 0),
            "tunnel:\n  connections: 1\n    - remote=198.18.0.2:4433 rtt_us=250000\n  \
             public_address: -\n  role: client\n  stun:\n    requests: 2\n"
        );
        assert_eq!(app_lines(&Value::from(3), 0), "3\n");
    }
}
