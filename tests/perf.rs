//! `longhaul perf` against the stock iperf3 (Debian's 3.12), both ways, over a TAP in a private
//! network namespace: the kernel's iperf3 client against `longhaul perf server` (default, `-R`,
//! `-P 4`, `--json`, an unsupported option, a second client while busy), and `longhaul perf client`
//! against a kernel `iperf3 -s -1` (default, `-R`, `-P 4`, `--json`). Every run is bounded by a
//! time limit, so a protocol hang fails the test instead of stalling it.
//!
//! Needs root and `iperf3`; without them each test prints a note and passes.

mod common;

use common::{root_or_skip, Bounded, Netns, KERNEL_IP, STACK_CIDR, STACK_IP};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(25);

fn iperf3_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let ok = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: {test} skipped: iperf3 is not installed (apt-get install iperf3)");
    }
    ok
}

fn text(b: &Bounded) -> (String, String) {
    (
        String::from_utf8_lossy(&b.output.stdout).into_owned(),
        String::from_utf8_lossy(&b.output.stderr).into_owned(),
    )
}

/// The rate on an iperf3 summary line, in bits per second (`... 2.71 Gbits/sec ... receiver`).
fn rate_bps(line: &str) -> f64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.ends_with("bits/sec"))
        .unwrap_or_else(|| panic!("no rate in '{line}'"));
    let v: f64 = words[i - 1].parse().expect("a number before the unit");
    let mult = match words[i].chars().next() {
        Some('K') => 1e3,
        Some('M') => 1e6,
        Some('G') => 1e9,
        Some('T') => 1e12,
        _ => 1.0,
    };
    v * mult
}

/// The receiver's total rate from iperf3-style text output ([SUM] when there are several streams).
fn receiver_rate(stdout: &str, parallel: bool) -> f64 {
    let line = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("receiver"))
        .rfind(|l| !parallel || l.starts_with("[SUM]"))
        .unwrap_or_else(|| panic!("no receiver summary in:\n{stdout}"));
    rate_bps(line)
}

fn iperf3_client(ns: &Netns, args: &[&str]) -> Bounded {
    let ip = STACK_IP.to_string();
    let mut cmd = vec!["iperf3", "-c", ip.as_str()];
    cmd.extend_from_slice(args);
    ns.exec_bounded(&cmd, LIMIT)
}

fn assert_ok(b: &Bounded, what: &str) {
    let (out, err) = text(b);
    assert!(
        b.finished,
        "{what} did not finish within {LIMIT:?}:\n{out}\n{err}"
    );
    assert!(
        b.output.status.success(),
        "{what} failed ({}):\n{out}\n{err}",
        b.output.status
    );
}

#[test]
fn iperf3_client_against_perf_server_default_reverse_parallel() {
    if !iperf3_or_skip("iperf3_client_against_perf_server_default_reverse_parallel") {
        return;
    }
    let ns = Netns::new("pfs");
    let server = ns.spawn_perf_server(&["--quiet", "--no-pin"]);
    for (args, parallel) in [
        (&["-t", "2"][..], false),
        (&["-t", "2", "-R"][..], false),
        (&["-t", "2", "-P", "4"][..], true),
        (&["-t", "2", "-R", "-P", "4", "-l", "64K"][..], true),
    ] {
        let what = format!("iperf3 -c {STACK_IP} {}", args.join(" "));
        let run = iperf3_client(&ns, args);
        assert_ok(&run, &what);
        let (out, _) = text(&run);
        let bps = receiver_rate(&out, parallel);
        assert!(bps > 1e6, "{what}: receiver rate {bps} bit/s:\n{out}");
        assert!(
            run.elapsed < Duration::from_secs(10),
            "{what} took {:?}",
            run.elapsed
        );
        eprintln!("{what}: {:.2} Gbit/s", bps / 1e9);
    }
    // The server printed intervals and a summary for each test, and is ready for the next.
    let lines = server.stdout_lines();
    let summaries = lines.iter().filter(|l| l.ends_with("receiver")).count();
    assert!(summaries >= 4, "server output:\n{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("1.00-") || l.contains(" 0.00-1.0")),
        "no interval lines:\n{}",
        lines.join("\n")
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("Server listening on 5201 (test #5)")));
    // With -R the server sent: iperf3's Retr and Cwnd columns from the connection's tcp_info.
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("Bitrate         Retr  Cwnd")),
        "no Retr/Cwnd header:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| is_retr_cwnd_line(l)),
        "no interval line with Retr and Cwnd:\n{}",
        lines.join("\n")
    );
}

/// `[  5]   0.00-1.00   sec  99.9 MBytes   837 Mbits/sec    7   1023 KBytes`.
fn is_retr_cwnd_line(l: &str) -> bool {
    let w: Vec<&str> = l.split_whitespace().collect();
    w.len() >= 5
        && w[w.len() - 4].ends_with("bits/sec")
        && w[w.len() - 3].parse::<u64>().is_ok()
        && w[w.len() - 2].parse::<f64>().is_ok()
        && w[w.len() - 1].ends_with("Bytes")
}

#[test]
fn iperf3_json_against_perf_server_parses() {
    if !iperf3_or_skip("iperf3_json_against_perf_server_parses") {
        return;
    }
    let ns = Netns::new("pfj");
    let _server = ns.spawn_perf_server(&["--quiet", "--no-pin"]);
    for args in [
        &["-t", "1", "--json"][..],
        &["-t", "1", "-R", "-P", "2", "--json"][..],
    ] {
        let what = format!("iperf3 -c {STACK_IP} {}", args.join(" "));
        let run = iperf3_client(&ns, args);
        assert_ok(&run, &what);
        let (out, _) = text(&run);
        let doc: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: bad JSON ({e}):\n{out}"));
        assert!(doc.get("error").is_none(), "{what}: {}", doc["error"]);
        let rcvd = doc["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        let sent = doc["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
        assert!(
            rcvd > 0.0,
            "{what}: sum_received {}",
            doc["end"]["sum_received"]
        );
        assert!(sent >= rcvd, "{what}: sent {sent} < received {rcvd}");
        let streams = doc["end"]["streams"].as_array().map_or(0, Vec::len);
        let want = if args.contains(&"2") { 2 } else { 1 };
        assert_eq!(streams, want, "{what}: end.streams");
        // The remote (our server) reported its CPU use.
        assert!(doc["end"]["cpu_utilization_percent"]["remote_total"].is_number());
        // With -R our server sent and reported its retransmissions (iperf3 sums them).
        if args.contains(&"-R") {
            assert!(
                doc["end"]["sum_sent"]["retransmits"].is_u64(),
                "{what}: sum_sent {}",
                doc["end"]["sum_sent"]
            );
        }
    }
}

#[test]
fn unsupported_udp_is_refused_clearly_and_server_carries_on() {
    if !iperf3_or_skip("unsupported_udp_is_refused_clearly_and_server_carries_on") {
        return;
    }
    let ns = Netns::new("pfu");
    let server = ns.spawn_perf_server(&["--quiet", "--no-pin"]);
    let run = iperf3_client(&ns, &["-u", "-t", "1"]);
    let (out, err) = text(&run);
    assert!(run.finished, "iperf3 -u hung:\n{out}\n{err}");
    assert!(!run.output.status.success(), "iperf3 -u succeeded?\n{out}");
    assert!(
        err.contains("not implemented") || out.contains("not implemented"),
        "no clear error from iperf3 -u:\n{out}\n{err}"
    );
    assert!(
        run.elapsed < Duration::from_secs(5),
        "refusal took {:?}",
        run.elapsed
    );
    assert!(
        common::wait_for(Duration::from_secs(2), || server.stderr().contains("UDP")),
        "the server did not say why: {}",
        server.stderr()
    );
    // Window size is another option the server cannot honour: named in its message.
    let run = iperf3_client(&ns, &["-w", "1M", "-t", "1"]);
    assert!(run.finished && !run.output.status.success());
    assert!(common::wait_for(Duration::from_secs(2), || server
        .stderr()
        .contains("window")));
    // And an ordinary test still works afterwards.
    let run = iperf3_client(&ns, &["-t", "1"]);
    assert_ok(&run, "iperf3 -t 1 after the refusals");
}

#[test]
fn second_client_while_busy_gets_access_denied() {
    if !iperf3_or_skip("second_client_while_busy_gets_access_denied") {
        return;
    }
    let ns = Netns::new("pfb");
    let _server = ns.spawn_perf_server(&["--quiet", "--no-pin"]);
    std::thread::scope(|s| {
        let first = s.spawn(|| iperf3_client(&ns, &["-t", "3"]));
        // Let the first test get going.
        std::thread::sleep(Duration::from_millis(1200));
        let second = iperf3_client(&ns, &["-t", "1"]);
        let (out, err) = text(&second);
        assert!(second.finished, "the second client hung:\n{out}\n{err}");
        assert!(!second.output.status.success());
        assert!(
            err.contains("busy") || out.contains("busy"),
            "no 'busy' error:\n{out}\n{err}"
        );
        let first = first.join().expect("first client thread");
        assert_ok(&first, "the first client");
    });
}

// ------------------------------------------------------------------ longhaul perf client

fn perf_client(ns: &Netns, args: &[&str]) -> Bounded {
    let port = ns.port_spec();
    let server = KERNEL_IP.to_string();
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_longhaul"),
        "perf",
        "client",
        "--port",
        port.as_str(),
        "--ip",
        STACK_CIDR,
        // One MAC across runs, so the kernel's neighbour entry stays right.
        "--mac",
        "02:00:00:00:00:02",
        "--quiet",
        "--no-pin",
        "--connect",
        server.as_str(),
    ];
    cmd.extend_from_slice(args);
    ns.exec_bounded(&cmd, LIMIT)
}

fn kernel_server(ns: &Netns) -> common::Proc {
    ns.spawn_marked(
        &["iperf3", "-s", "-1", "--forceflush"],
        "Server listening",
        Duration::from_secs(10),
    )
}

#[test]
fn perf_client_against_kernel_iperf3_server() {
    if !iperf3_or_skip("perf_client_against_kernel_iperf3_server") {
        return;
    }
    let ns = Netns::new("pfc");
    for (args, parallel) in [
        (&["-t", "2"][..], false),
        (&["-t", "2", "-R"][..], false),
        (&["-t", "2", "-P", "4"][..], true),
    ] {
        let what = format!("longhaul perf client {}", args.join(" "));
        let mut kernel = kernel_server(&ns);
        let run = perf_client(&ns, args);
        assert_ok(&run, &what);
        let (out, _) = text(&run);
        let bps = receiver_rate(&out, parallel);
        assert!(bps > 1e6, "{what}: receiver rate {bps} bit/s:\n{out}");
        assert!(out.contains("iperf Done."), "{what}:\n{out}");
        if !args.contains(&"-R") {
            // We sent: iperf3's Retr and Cwnd columns, and Retr in the summary.
            assert!(
                out.contains("Bitrate         Retr  Cwnd\n"),
                "{what}:\n{out}"
            );
            assert!(out.lines().any(is_retr_cwnd_line), "{what}:\n{out}");
            assert!(out.contains("Bitrate         Retr\n"), "{what}:\n{out}");
        }
        eprintln!("{what}: {:.2} Gbit/s", bps / 1e9);
        // The kernel's iperf3 saw a complete test and exited by itself (-1).
        let status = kernel.wait_exit(Duration::from_secs(5));
        let kout = kernel.stdout_lines().join("\n");
        assert!(
            status.is_some_and(|s| s.success()),
            "iperf3 -s -1 after {what}: {status:?}\n{kout}\n{}",
            kernel.stderr()
        );
        // Its summary: a receiver line, or (when it sent, with -R) a sender line.
        assert!(
            kout.contains("receiver") || kout.contains("sender"),
            "iperf3 -s output:\n{kout}"
        );
    }
}

#[test]
fn perf_client_json_against_kernel_iperf3_server() {
    if !iperf3_or_skip("perf_client_json_against_kernel_iperf3_server") {
        return;
    }
    let ns = Netns::new("pfcj");
    let mut kernel = kernel_server(&ns);
    let run = perf_client(&ns, &["-t", "1", "-R", "-P", "2", "--json"]);
    assert_ok(&run, "longhaul perf client --json");
    let (out, _) = text(&run);
    let doc: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"));
    assert!(doc.get("error").is_none(), "{}", doc["error"]);
    assert!(doc["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0);
    assert!(doc["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!(doc["end"]["streams"].as_array().map_or(0, Vec::len), 2);
    assert!(!doc["intervals"].as_array().is_none_or(Vec::is_empty));
    assert_eq!(doc["start"]["test_start"]["reverse"], 1);
    // The kernel sent and reported its retransmissions.
    assert!(
        doc["end"]["sum_sent"]["retransmits"].is_u64(),
        "{}",
        doc["end"]
    );
    let _ = kernel.wait_exit(Duration::from_secs(5));

    // Sending ourselves: every interval carries tcp_info fields as iperf3 on Linux writes them.
    let mut kernel = kernel_server(&ns);
    let run = perf_client(&ns, &["-t", "2", "--json"]);
    assert_ok(&run, "longhaul perf client --json (sending)");
    let (out, _) = text(&run);
    let doc: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"));
    assert!(doc.get("error").is_none(), "{}", doc["error"]);
    let intervals = doc["intervals"].as_array().expect("intervals");
    assert!(!intervals.is_empty());
    for iv in intervals {
        let st = &iv["streams"][0];
        assert!(st["retransmits"].is_u64(), "{st}");
        assert!(st["snd_cwnd"].as_u64().unwrap_or(0) > 0, "{st}");
        assert!(st["rtt"].is_u64() && st["rttvar"].is_u64(), "{st}");
        assert!(iv["sum"]["retransmits"].is_u64(), "{}", iv["sum"]);
    }
    let sender = &doc["end"]["streams"][0]["sender"];
    assert!(sender["retransmits"].is_u64(), "{sender}");
    assert!(sender["max_snd_cwnd"].as_u64().unwrap_or(0) > 0, "{sender}");
    assert!(doc["end"]["sum_sent"]["retransmits"].is_u64());
    let _ = kernel.wait_exit(Duration::from_secs(5));
}

#[test]
fn perf_client_reports_busy_and_unreachable_servers() {
    if !iperf3_or_skip("perf_client_reports_busy_and_unreachable_servers") {
        return;
    }
    let ns = Netns::new("pfce");
    // Nobody listens: a refused connection is an error, quickly.
    let run = perf_client(&ns, &["-t", "1"]);
    let (out, err) = text(&run);
    assert!(run.finished, "hung:\n{out}\n{err}");
    assert!(!run.output.status.success());
    assert!(err.contains("error"), "{err}");
    // A busy longhaul server: ACCESS_DENIED is reported as iperf3 would.
    let _kernel = kernel_server(&ns);
    let first = std::thread::scope(|s| {
        let first = s
            .spawn(|| ns.exec_bounded(&["iperf3", "-c", &KERNEL_IP.to_string(), "-t", "3"], LIMIT));
        std::thread::sleep(Duration::from_millis(1200));
        let run = perf_client(&ns, &["-t", "1"]);
        let (out, err) = text(&run);
        assert!(run.finished, "hung:\n{out}\n{err}");
        assert!(!run.output.status.success());
        assert!(err.contains("busy"), "{out}\n{err}");
        first.join().expect("kernel client thread")
    });
    assert!(first.finished);
}
