//! Packet scripts, in the spirit of packetdrill: a real `longhaul::stack::Engine` on one end of a
//! `mem` wire, driven with virtual time, and "the peer" on the other end, which injects the
//! segments a script writes and checks every segment the engine sends. Time is virtual, so a
//! script runs in microseconds and its timing checks are exact.
//!
//! # Grammar
//!
//! One command per line; `#` starts a comment. Lines run in order.
//!
//! ```text
//! config KEY VALUE         before the first timed line. Keys: mtu (wire MTU, 1500), rmem, wmem
//!                          (bytes, default 1 MiB each: window scale 5), backlog, syncookies on|off, nodelay on|off, mss_clamp,
//!                          rto_min_ms, keepalive_s, user_timeout_s, tolerance (seconds, default
//!                          0.002), peer_isn (the peer's absolute ISN for relative 0; default
//!                          0xfffff000, so data wraps 2^32), rack, tlp, frto on|off (loss
//!                          recovery, default on), pacing on|off (pace CUBIC/NewReno, default
//!                          off), cc newreno|cubic|bbr, mtu_probing off|blackhole|always (default
//!                          blackhole), mtu_probe_interval_s (default 600)
//! TIME < [@N] SEGMENT       the peer sends SEGMENT at TIME
//! TIME > [@N] SEGMENT       the engine must send SEGMENT at TIME ± tolerance (the next packet it
//!                          sends; a packet it sends that no `>` line expects is an error)
//! TIME < [@N] icmp frag_needed mtu M seq S     ICMP "fragmentation needed" about the engine's
//! TIME < [@N] icmp host_unreach seq S          segment at relative sequence number S
//! TIME app [@N] ACTION      the engine's app acts: listen [PORT] (default 8080), connect (to flow
//!                          N's peer port), write BYTES, read BYTES (reads everything there is and
//!                          checks it is exactly BYTES, with the peer's content), eof (read says
//!                          end of stream), shutdown, close, abort, nodelay on|off, cork on|off,
//!                          saw EVENT (accepted, connected, peer_closed, closed, reset, refused,
//!                          timed_out: the app was told it)
//! TIME tcpi [@N] FIELD VALUE [+- TOL]   the connection's tcp_info field (state takes a name:
//!                          Established, TimeWait, ...; Closed when the connection is gone)
//! TIME stat COUNTER VALUE  one of the core's counters (`CoreStats` field names)
//!
//! TIME     = SECONDS | +SECONDS (after the previous line; after an expectation, after the time
//!            its packet was seen), optionally ~TOL to override the tolerance: `+1.2~0.05`
//! SEGMENT  = FLAGS START:END(LEN) [ack N] [win N] [<OPTIONS>]
//! FLAGS    = letters S F R P and `.` for ACK: `S`, `S.`, `.`, `P.`, `F.`, `R`, `R.`
//! OPTIONS  = comma-separated: mss N, wscale N, sackOK, TS val N ecr N, sack L:R [L:R...], nop,
//!            eol; or `<...>` (expectations only: options not checked)
//! ```
//!
//! Sequence numbers are relative: the peer's from its ISN, the engine's from the ISN of its last
//! SYN or SYN-ACK on the flow; `ack` and SACK blocks are relative to the other side's ISN. In
//! expectations `*` matches anything (`ack *`, `win *`, `TS val * ecr *`); in injected segments
//! `ecr *` echoes the engine's latest TSval. An expectation without `<...>` wants no options,
//! and without `win` does not check the window. Options are compared by value: NOP/EOL padding
//! and order are layout. Injected segments default to `win 65535`. Payload bytes follow a
//! pattern on each side: the engine's data is checked against what its app wrote, and `app read`
//! checks what the peer sent.
//!
//! Flows: `@N` (0 to 99, default 0) is the peer's port 40000 + N, each with its own ISN; the
//! engine is 198.18.0.1:8080 (passive) or its own ephemeral port (learned from its SYN). ARP is
//! answered by the runner and never shows in scripts.

mod app;
mod runner;
mod script;
mod wire;

use std::path::Path;

/// Runs one script file; `Err` is every problem found, each naming the file and line.
pub fn run_file(path: &Path) -> Result<(), String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let script = script::parse(&shown, &text)?;
    runner::Runner::new(&script)?.run()
}

/// Runs every `*.pkt` under `dir` (sorted) and returns the failures, one string each.
pub fn run_dir(dir: &Path) -> (usize, Vec<String>) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pkt"))
        .collect();
    files.sort();
    let failures = files.iter().filter_map(|f| run_file(f).err()).collect();
    (files.len(), failures)
}
