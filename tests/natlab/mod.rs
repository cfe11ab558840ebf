//! A NAT lab for the STUN tests (tests/stun.rs, tests/tunnel_stun.rs): coturn (Debian's
//! `turnserver`, STUN only) on a "public" segment, and a NAT namespace doing nftables masquerade
//! in front of a longhaul TAP. Needs root, coturn and nftables (scripts/setup.sh installs them); a
//! missing tool fails the test rather than skipping it.
//!
//! ```text
//!  NAT namespace                                  public namespace
//!  longhaul 198.18.0.2 ── TAP (198.18.0.1/24)     pubbr0 198.19.0.2/24 (coturn :3478)
//!                         pub0 198.19.0.1/24 ──── pub1 ─┘ └─ TAP (a longhaul instance, e.g.
//!                         (masquerade UDP out)             198.19.0.3: the tunnel server)
//! ```
//! The public side has no route back to 198.18.0.0/24, so only translated packets are answered.
#![allow(dead_code)]

use crate::common::{Netns, Proc};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The NAT's public address and the STUN server's, on the "public" segment.
pub const NAT_PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// A longhaul instance on the public namespace's TAP may use this address.
pub const PUBLIC_STACK_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);
/// Masquerade maps UDP to this port range, so a translated port is recognisable.
pub const NAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=61009;

pub fn need_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        || Path::new("/usr/sbin").join(name).is_file();
    assert!(
        found,
        "{name} not found: install the Debian package {package} (scripts/setup.sh does)"
    );
}

/// A scratch directory for coturn's pid file and database, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lh-stun-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts coturn as a plain STUN server on `ip:3478` (UDP only, no TURN, no TLS/DTLS, no CLI) in
/// `ns` and waits for its UDP listener.
pub fn start_coturn(ns: &Netns, ip: Ipv4Addr, scratch: &Scratch) -> Proc {
    need_tool("turnserver", "coturn");
    let ip = ip.to_string();
    let (pid, db) = (scratch.path("turnserver.pid"), scratch.path("turndb"));
    ns.spawn_marked(
        &[
            "turnserver",
            "-n", // no configuration file
            "-v", // prints the "listener opened" line waited for
            "--listening-ip",
            &ip,
            "--listening-port",
            "3478",
            "--stun-only",
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
            &pid,
            "--userdb",
            &db,
        ],
        "UDP listener opened on",
        Duration::from_secs(15),
    )
}

pub fn ok(o: std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two namespaces and coturn (see the module doc). NAT namespace: the TAP's kernel side
/// (198.18.0.1/24) is the private side, pub0 (198.19.0.1/24) the public one, forwarding on, UDP
/// leaving pub0 masqueraded to a port range. Public namespace: a bridge (198.19.0.2/24, where
/// coturn listens) joining pub1 and the namespace's TAP, whose own address is removed. Fields
/// drop in order: coturn, then the namespaces.
pub struct NatLab {
    _coturn: Proc,
    pub nat: Netns,
    pub public: Netns,
    _scratch: Scratch,
}

impl NatLab {
    pub fn new(ports: &std::ops::RangeInclusive<u16>) -> NatLab {
        need_tool("nft", "nftables");
        let nat = Netns::new("stun-nat");
        let public = Netns::new("stun-pub");
        ok(
            nat.ip(&[
                "link",
                "add",
                "pub0",
                "type",
                "veth",
                "peer",
                "name",
                "pub1",
                "netns",
                public.name(),
            ]),
            "veth",
        );
        let nat_cidr = format!("{NAT_PUBLIC_IP}/24");
        let server_cidr = format!("{SERVER_IP}/24");
        ok(nat.ip(&["addr", "add", &nat_cidr, "dev", "pub0"]), "addr");
        ok(nat.ip(&["link", "set", "pub0", "up"]), "up");
        let tap = public.tap().to_string();
        for args in [
            &["link", "add", "name", "pubbr0", "type", "bridge"][..],
            &["addr", "flush", "dev", &tap],
            &["link", "set", &tap, "master", "pubbr0"],
            &["link", "set", "pub1", "master", "pubbr0"],
            &["addr", "add", &server_cidr, "dev", "pubbr0"],
            &["link", "set", "pub1", "up"],
            &["link", "set", "pubbr0", "up"],
        ] {
            ok(public.ip(args), &format!("ip {args:?}"));
        }
        ok(
            nat.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
            "ip_forward",
        );
        ok(nat.exec(&["nft", "add", "table", "ip", "nat"]), "nft table");
        ok(
            nat.exec(&[
                "nft",
                "add",
                "chain",
                "ip",
                "nat",
                "postrouting",
                "{",
                "type",
                "nat",
                "hook",
                "postrouting",
                "priority",
                "100",
                ";",
                "}",
            ]),
            "nft chain",
        );
        let scratch = Scratch::new();
        let coturn = start_coturn(&public, SERVER_IP, &scratch);
        let lab = NatLab {
            _coturn: coturn,
            nat,
            public,
            _scratch: scratch,
        };
        lab.masquerade_to(ports);
        lab
    }

    /// Replaces the masquerade rule: UDP out of pub0 gets the NAT's address and a port in `ports`.
    pub fn masquerade_to(&self, ports: &std::ops::RangeInclusive<u16>) {
        let nat = &self.nat;
        ok(
            nat.exec(&["nft", "flush", "chain", "ip", "nat", "postrouting"]),
            "nft flush",
        );
        let to = format!(":{}-{}", ports.start(), ports.end());
        ok(
            nat.exec(&[
                "nft",
                "add",
                "rule",
                "ip",
                "nat",
                "postrouting",
                "oifname",
                "pub0",
                "ip",
                "protocol",
                "udp",
                "counter",
                "masquerade",
                "to",
                &to,
            ]),
            "nft rule",
        );
    }

    /// Packets the masquerade rule has translated (the first of each new flow).
    pub fn masquerade_count(&self) -> u64 {
        let list = self
            .nat
            .exec(&["nft", "list", "chain", "ip", "nat", "postrouting"]);
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }
}
