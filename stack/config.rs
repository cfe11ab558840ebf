//! Stack configuration: a builder with `&mut Self` setters, validated as it is set.

use crate::pmd::PortSpec;
use crate::stack::tcp::cc::CcAlgorithm;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// CPUs a Linux cpu_set_t can name.
const CPU_SETSIZE: usize = 1024;
/// Smallest and largest socket buffer accepted for `rmem`/`wmem`.
pub const MIN_BUFFER: usize = 4 * 1024;
/// Largest socket buffer accepted for `rmem`/`wmem` (64 MiB).
pub const MAX_BUFFER: usize = 64 * 1024 * 1024;

/// A configuration value that is out of range or malformed. The message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// An IPv4 address with its prefix length, e.g. `198.18.0.2/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 1 to 32.
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError(format!(
                "bad address '{s}': expected IPv4/prefix, e.g. 198.18.0.2/24"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix == 0
            || prefix > 32
            || addr.is_unspecified()
            || addr.is_broadcast()
            || addr.is_multicast()
        {
            return Err(bad());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// How a stack is built: the port, addresses, cores and per-connection defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) port: Option<PortSpec>,
    pub(crate) ip: Option<Ipv4Cidr>,
    pub(crate) gateway: Option<Ipv4Addr>,
    pub(crate) mac: Option<[u8; 6]>,
    pub(crate) cores: usize,
    pub(crate) budget: usize,
    pub(crate) rmem: usize,
    pub(crate) wmem: usize,
    pub(crate) backlog: usize,
    pub(crate) nodelay: bool,
    pub(crate) pin_threads: bool,
    pub(crate) cpus: Vec<usize>,
    pub(crate) user_timeout: Duration,
    pub(crate) idle_spin: Duration,
    pub(crate) cc: CcAlgorithm,
    pub(crate) syncookies: bool,
    pub(crate) rto_min: Duration,
    pub(crate) rto_max: Duration,
    pub(crate) mss_clamp: Option<u16>,
    pub(crate) slow_start_after_idle: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) recovery: crate::stack::tcp::config::Recovery,
    pub(crate) mtu_probing: crate::stack::tcp::pmtu::MtuProbing,
    pub(crate) mtu_probe_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: None,
            ip: None,
            gateway: None,
            mac: None,
            cores: 1,
            budget: 64,
            rmem: 64 << 20,
            wmem: 64 << 20,
            backlog: 128,
            nodelay: false,
            pin_threads: true,
            cpus: Vec::new(),
            user_timeout: Duration::from_secs(120),
            idle_spin: Duration::from_micros(200),
            cc: CcAlgorithm::default(),
            syncookies: true,
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(120),
            mss_clamp: None,
            slow_start_after_idle: false,
            keepalive: None,
            recovery: Default::default(),
            mtu_probing: Default::default(),
            mtu_probe_interval: Duration::from_secs(600),
        }
    }
}

impl Config {
    /// A configuration with the defaults: 1 core, budget 64, buffers autotuned up to 64 MiB,
    /// backlog 128 with SYN cookies, Nagle on, CUBIC.
    pub fn new() -> Self {
        Self::default()
    }

    /// The port to open, e.g. `tap:lh0` (not needed with [`crate::Stack::start_on`]).
    pub fn port(&mut self, spec: &str) -> Result<&mut Self, ConfigError> {
        self.port = Some(
            spec.parse()
                .map_err(|e: crate::pmd::PortSpecError| ConfigError(e.0))?,
        );
        Ok(self)
    }

    /// The stack's address and prefix, e.g. `198.18.0.2/24`.
    pub fn ip(&mut self, cidr: &str) -> Result<&mut Self, ConfigError> {
        self.ip = Some(cidr.parse()?);
        Ok(self)
    }

    /// The default gateway for destinations outside the prefix.
    pub fn gateway(&mut self, gw: Ipv4Addr) -> &mut Self {
        self.gateway = Some(gw);
        self
    }

    /// The Ethernet address (default: a random locally administered one).
    pub fn mac(&mut self, mac: [u8; 6]) -> Result<&mut Self, ConfigError> {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(ConfigError(
                "bad MAC: it must be a unicast address (low bit of the first byte clear)".into(),
            ));
        }
        self.mac = Some(mac);
        Ok(self)
    }

    /// Number of cores (one queue and one thread each), 1 to 64.
    pub fn cores(&mut self, n: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=64).contains(&n) {
            return Err(ConfigError(format!("bad --cores {n}: use 1 to 64")));
        }
        self.cores = n;
        Ok(self)
    }

    /// Frames received per loop iteration before timers and transmit run, 1 to 4096.
    pub fn budget(&mut self, n: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=4096).contains(&n) {
            return Err(ConfigError(format!("bad --budget {n}: use 1 to 4096")));
        }
        self.budget = n;
        Ok(self)
    }

    /// Largest receive buffer per TCP connection in bytes (4 KiB to 64 MiB, default 64 MiB). Buffers
    /// start small and autotuning grows them with the measured bandwidth-delay product.
    pub fn rmem(&mut self, bytes: usize) -> Result<&mut Self, ConfigError> {
        self.rmem = check_buffer("--rmem", bytes)?;
        Ok(self)
    }

    /// Largest send buffer per TCP connection in bytes (4 KiB to 64 MiB, default 64 MiB); it grows
    /// with the congestion window.
    pub fn wmem(&mut self, bytes: usize) -> Result<&mut Self, ConfigError> {
        self.wmem = check_buffer("--wmem", bytes)?;
        Ok(self)
    }

    /// Half-open connections allowed per listening port and core (1 to 65535); SYNs above it are dropped.
    pub fn backlog(&mut self, n: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=65535).contains(&n) {
            return Err(ConfigError(format!("bad --backlog {n}: use 1 to 65535")));
        }
        self.backlog = n;
        Ok(self)
    }

    /// Default for new connections: `true` turns Nagle's algorithm off (like TCP_NODELAY).
    pub fn nodelay(&mut self, on: bool) -> &mut Self {
        self.nodelay = on;
        self
    }

    /// Pin each core's thread to a CPU (default on).
    pub fn pin_threads(&mut self, on: bool) -> &mut Self {
        self.pin_threads = on;
        self
    }

    /// The CPUs core threads are pinned to: core `i` runs on `cpus[i % cpus.len()]`. Empty (the
    /// default) means every CPU the process may use, in order. Two stacks in one process want
    /// different lists.
    pub fn cpus(&mut self, cpus: &[usize]) -> Result<&mut Self, ConfigError> {
        if let Some(&c) = cpus.iter().find(|&&c| c >= CPU_SETSIZE) {
            return Err(ConfigError(format!("bad --cpus: CPU {c} is out of range")));
        }
        self.cpus = cpus.to_vec();
        Ok(self)
    }

    /// How long unacknowledged data may go without an answer before the connection is dropped.
    pub fn user_timeout(&mut self, t: Duration) -> &mut Self {
        self.user_timeout = t;
        self
    }

    /// Congestion control for new connections (default CUBIC).
    pub fn cc(&mut self, algo: CcAlgorithm) -> &mut Self {
        self.cc = algo;
        self
    }

    /// SYN cookies when a listener's SYN queue is full (on by default, as Linux's `tcp_syncookies=1`).
    pub fn syncookies(&mut self, on: bool) -> &mut Self {
        self.syncookies = on;
        self
    }

    /// Bounds of the retransmission timeout (defaults 200 ms and 120 s, as Linux).
    pub fn rto_bounds(&mut self, min: Duration, max: Duration) -> Result<&mut Self, ConfigError> {
        if min.is_zero() || min > max || max > Duration::from_secs(600) {
            return Err(ConfigError(format!(
                "bad RTO bounds {min:?}..{max:?}: need 0 < min <= max <= 600s (e.g. --rto-min 200ms)"
            )));
        }
        self.rto_min = min;
        self.rto_max = max;
        Ok(self)
    }

    /// Clamps the MSS used and advertised (for tunnels with a smaller MTU).
    pub fn mss_clamp(&mut self, mss: u16) -> Result<&mut Self, ConfigError> {
        if !(88..=9000).contains(&mss) {
            return Err(ConfigError(format!(
                "bad MSS clamp {mss}: use 88 to 9000 bytes"
            )));
        }
        self.mss_clamp = Some(mss);
        Ok(self)
    }

    /// Loss recovery and pacing switches for new connections (RACK, TLP, F-RTO on; pacing of
    /// loss-based congestion control off).
    pub fn recovery(&mut self, r: crate::stack::tcp::config::Recovery) -> &mut Self {
        self.recovery = r;
        self
    }

    /// Path MTU black-hole detection and MSS probing for new connections (default: after a
    /// black hole is detected, as Linux's `tcp_mtu_probing=1`), and how long after a search
    /// ends the path is probed again (default 600 s, as Linux's `tcp_probe_interval`).
    pub fn mtu_probing(
        &mut self,
        mode: crate::stack::tcp::pmtu::MtuProbing,
        interval: Duration,
    ) -> &mut Self {
        self.mtu_probing = mode;
        self.mtu_probe_interval = interval;
        self
    }

    /// Restart from the initial window after an idle period (RFC 5681 §4.1; off by default).
    pub fn slow_start_after_idle(&mut self, on: bool) -> &mut Self {
        self.slow_start_after_idle = on;
        self
    }

    /// TCP keepalive: probe after this long without a segment from the peer (off by default).
    pub fn keepalive(&mut self, idle: Option<Duration>) -> &mut Self {
        self.keepalive = idle;
        self
    }

    /// How long an idle core busy-polls before it sleeps on its queue (default 200 µs).
    pub fn idle_spin(&mut self, t: Duration) -> &mut Self {
        self.idle_spin = t;
        self
    }
}

/// Parses a byte size with an optional K/M/G suffix (powers of 1024), e.g. `4M`.
pub fn parse_size(s: &str) -> Result<usize, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "bad size '{s}': expected bytes with an optional K, M or G suffix, e.g. 4M"
        ))
    };
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

fn check_buffer(name: &str, bytes: usize) -> Result<usize, ConfigError> {
    if !(MIN_BUFFER..=MAX_BUFFER).contains(&bytes) {
        return Err(ConfigError(format!(
            "bad {name} {bytes}: use 4K to 64M (e.g. {name} 4M)"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidr() {
        let c: Ipv4Cidr = "198.18.0.2/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(c.prefix, 24);
        for bad in [
            "198.18.0.2",
            "198.18.0.2/33",
            "198.18.0.2/0",
            "x/24",
            "0.0.0.0/8",
            "224.0.0.1/4",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1500").unwrap(), 1500);
        assert!(parse_size("lots").is_err());
        let mut c = Config::new();
        assert!(c.rmem(64 << 20).is_ok());
        assert!(c.rmem((64 << 20) + 1).is_err());
        assert!(c.wmem(100).is_err());
        assert!(c.cores(0).is_err());
        assert!(c.budget(0).is_err());
        assert!(c.mac([1, 2, 3, 4, 5, 6]).is_err());
    }
}
