//! Packet scripts (tests/scripts/<feature>/*.pkt) against the real engine with virtual time: one
//! test per feature directory, each reporting every failing script with its file, line, what was
//! expected and what was seen. The grammar is at the top of tests/pktscript/mod.rs.

mod pktscript;

use std::path::Path;

fn feature(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name);
    let (count, failures) = pktscript::run_dir(&dir);
    assert!(count > 0, "no scripts in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {count} scripts in {name} failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `PKT=path/to/script.pkt cargo test --test packet_scripts one` runs a single script.
#[test]
fn one() {
    if let Ok(p) = std::env::var("PKT") {
        if let Err(e) = pktscript::run_file(Path::new(&p)) {
            panic!("{e}");
        }
    }
}

#[test]
fn handshake() {
    feature("handshake");
}

#[test]
fn rst_syn_validation() {
    feature("rfc5961");
}

#[test]
fn retransmission() {
    feature("retransmit");
}

#[test]
fn zero_window() {
    feature("zero_window");
}

#[test]
fn delayed_ack() {
    feature("ack");
}

#[test]
fn nagle() {
    feature("nagle");
}

#[test]
fn keepalive_user_timeout_cork() {
    feature("timers");
}

#[test]
fn close() {
    feature("close");
}

#[test]
fn time_wait() {
    feature("time_wait");
}

#[test]
fn syn_cookies() {
    feature("syncookies");
}

#[test]
fn icmp() {
    feature("icmp");
}

#[test]
fn paws() {
    feature("paws");
}

#[test]
fn sack_recovery() {
    feature("sack");
}

#[test]
fn prr() {
    feature("prr");
}

#[test]
fn rack() {
    feature("rack");
}

#[test]
fn tail_loss_probe() {
    feature("tlp");
}

#[test]
fn spurious_undo() {
    feature("undo");
}

#[test]
fn pacing() {
    feature("pacing");
}

#[test]
fn path_mtu_probing() {
    feature("pmtu");
}

/// Every feature directory has a test above.
#[test]
fn every_directory_is_run() {
    let known = [
        "handshake",
        "rfc5961",
        "retransmit",
        "zero_window",
        "ack",
        "nagle",
        "close",
        "time_wait",
        "syncookies",
        "icmp",
        "paws",
        "timers",
        "sack",
        "prr",
        "rack",
        "tlp",
        "undo",
        "pacing",
        "pmtu",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    for e in std::fs::read_dir(&root).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            known.contains(&name.as_str()),
            "tests/scripts/{name} has no #[test]"
        );
    }
}
