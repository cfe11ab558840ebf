//! The `longhaul` binary's contract: one clear line and a non-zero exit for every mistake, clear
//! errors for a missing /dev/net/tun or missing privileges, and a clean stop on SIGTERM.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_longhaul");

/// Runs `longhaul ARGS` and returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    // `timeout`: a mistake that slipped through validation must not leave a stack running.
    let out = Command::new("timeout")
        .arg("10")
        .arg(BIN)
        .args(args)
        .output()
        .expect("run longhaul");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_mistakes_get_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["echo", "--port", "eth0", "--ip", "198.18.0.2/24"],
            "expected tap:IFACE",
        ),
        (
            &["echo", "--port", "tap:", "--ip", "198.18.0.2/24"],
            "tap:IFACE",
        ),
        (
            &["echo", "--port", "tap:x", "--ip", "198.18.0.2"],
            "expected IPv4/prefix",
        ),
        (
            &["echo", "--port", "tap:x", "--ip", "198.18.0.2/40"],
            "expected IPv4/prefix",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--cores",
                "0",
            ],
            "use 1 to 64",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--budget",
                "0",
            ],
            "use 1 to 4096",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--rmem",
                "1G",
            ],
            "use 4K to 64M",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--wmem",
                "lots",
            ],
            "bad size",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--mac",
                "01:00:00:00:00:01",
            ],
            "unicast",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--mac",
                "zz",
            ],
            "six hex bytes",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--listen",
                "0",
            ],
            "bad --listen 0",
        ),
        (
            &["echo", "--port", "dpdk:-l 1", "--ip", "198.18.0.2/24"],
            "rebuild with --features dpdk",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--cc",
                "vegas",
            ],
            "choose newreno (or reno), cubic or bbr",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--rto-min",
                "soon",
            ],
            "--rto-min",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--rto-min",
                "5s",
                "--rto-max",
                "1s",
            ],
            "need 0 < min <= max",
        ),
        (
            &[
                "echo",
                "--port",
                "tap:x",
                "--ip",
                "198.18.0.2/24",
                "--mss-clamp",
                "20",
            ],
            "use 88 to 9000",
        ),
    ];
    for (args, hint) in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?} must say it in one line: {err}"
        );
        assert!(err.contains(hint), "{args:?}: expected '{hint}' in: {err}");
    }
    // A missing required flag is clap's error: non-zero, and it names the flag.
    let (code, err) = run(&["echo", "--port", "tap:x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--ip"), "{err}");
}

#[test]
fn missing_tun_device_is_explained() {
    if !root_or_skip("missing_tun_device_is_explained") {
        return;
    }
    let ns = Netns::new("notun");
    // A private mount namespace whose /dev/net is empty: /dev/net/tun does not exist there.
    let out = ns.exec(&[
        "unshare",
        "--mount",
        "sh",
        "-c",
        &format!("mount -t tmpfs tmpfs /dev/net && exec {BIN} echo --port tap:lhnotun --ip 198.18.0.2/24"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/net/tun is missing"), "{err}");
    assert!(err.contains("modprobe tun"), "says how to fix it: {err}");
}

#[test]
fn missing_privilege_is_explained() {
    if !root_or_skip("missing_privilege_is_explained") {
        return;
    }
    let ns = Netns::new("noperm");
    // As nobody with no capabilities, creating a TAP is refused.
    let out = ns.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        BIN,
        "echo",
        "--port",
        "tap:lhnoperm",
        "--ip",
        "198.18.0.2/24",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn sigterm_closes_connections_with_fin_and_exits_0() {
    if !root_or_skip("sigterm_closes_connections_with_fin_and_exits_0") {
        return;
    }
    let ns = Netns::new("sigterm");
    let echo = ns.spawn_echo(&["--stats-interval", "1"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let client = ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new([198, 18, 0, 2].into(), 7).into(),
            Duration::from_secs(5),
        )
        .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        tx.send(()).unwrap();
        // Now the app is told to stop: the stack must close this connection with FIN.
        let start = Instant::now();
        let r = s.read(&mut buf);
        (r.map_err(|e| e.kind()), start.elapsed())
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("echo round trip");
    std::thread::sleep(Duration::from_millis(100));
    let status = echo.stop();
    let (read, waited) = client.join().unwrap();
    assert_eq!(
        read,
        Ok(0),
        "the client sees an orderly end of stream (FIN), not a reset"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed promptly: {waited:?}"
    );
    assert!(status.success(), "exit status {status:?}");
}
