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
    let rtt = n("rtt_us");
    if rtt > 0 {
        f.push(format!(
            "send {}",
            rate(n("cwnd_bytes") as f64 * 8.0 * 1e6 / rtt as f64)
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
