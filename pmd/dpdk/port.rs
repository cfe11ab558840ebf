//! One DPDK Ethernet port: configured, started and, when the last queue lets go, stopped, closed
//! and released together with its pools and the EAL.

use super::eal;
use super::sys;
use super::{DpdkError, OpenOptions, BURST};
use crate::pmd::rss::RssConfig;
use crate::pmd::Caps;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// Descriptors asked for per ring (the driver may adjust them).
const RING_DESCRIPTORS: u16 = 1024;
/// Per-lcore cache of each pool.
const POOL_CACHE: u32 = 256;
/// Frames the stack may hold outside the rings: one transmit batch (stack/device.rs TX_BATCH) and
/// slack for frames in flight between calls.
const STACK_HELD: u32 = 64 + 512;
/// Ethernet header plus a VLAN tag and the FCS, on top of the IP MTU.
const L2_OVERHEAD: u32 = 14 + 4 + 4;

pub(super) struct Port {
    pub id: u16,
    pub mac: [u8; 6],
    /// The driver's name, e.g. `net_tap`.
    pub driver: String,
    pub caps: Caps,
    pub pools: Vec<NonNull<sys::rte_mempool>>,
    interrupts: bool,
    /// Each queue's receive interrupt descriptor, where the driver has one.
    interrupt_fds: Vec<Option<i32>>,
    /// Frames dropped because their checksums were wrong (summed as queues close).
    pub bad_checksums: AtomicU64,
}

// SAFETY: the port id and the pools are DPDK objects meant to be used from any thread (each queue
// is used by one core; the pools are multi-producer/multi-consumer).
unsafe impl Send for Port {}
// SAFETY: as above; shared access only reads the fields or calls thread-safe ethdev functions.
unsafe impl Sync for Port {}

fn errno_text(rc: i32) -> String {
    eal::strerror(rc.abs())
}

impl Port {
    /// Configures and starts the first port with `queues` queue pairs.
    /// `eal_log` is what `rte_eal_init` printed (it explains a device that failed to probe).
    pub fn open(queues: usize, opts: &OpenOptions, eal_log: &str) -> Result<Port, DpdkError> {
        // SAFETY: the EAL is initialised; these only read ethdev state.
        let (count, id) = unsafe { (sys::rte_eth_dev_count_avail(), sys::rte_eth_find_next(0)) };
        if count == 0 || id as u32 >= sys::RTE_MAX_ETHPORTS {
            eal::cleanup();
            return Err(DpdkError::NoPort(eal::explain_no_port(eal_log)));
        }
        let mut port = Port {
            id,
            mac: [0; 6],
            driver: String::new(),
            caps: Caps {
                mtu: 1500,
                queues,
                rx_checksum_offload: false,
                tx_checksum_offload: false,
                rss: None,
            },
            pools: Vec::new(),
            interrupts: false,
            interrupt_fds: Vec::new(),
            bad_checksums: AtomicU64::new(0),
        };
        // From here on, dropping `port` on an error closes the port and releases the EAL.
        port.configure(queues, opts)?;
        Ok(port)
    }

    fn configure(&mut self, queues: usize, opts: &OpenOptions) -> Result<(), DpdkError> {
        let id = self.id;
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: info is a live out-parameter for a valid port.
        let rc = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
        if rc != 0 {
            return Err(DpdkError::Port(format!(
                "cannot read DPDK port {id}'s capabilities: {}",
                errno_text(rc)
            )));
        }
        let name = port_name(id);
        let driver = if info.driver_name.is_null() {
            "?".to_string()
        } else {
            // SAFETY: driver_name is a NUL-terminated string owned by the driver.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        self.driver = driver.clone();
        let max_q = info.max_rx_queues.min(info.max_tx_queues) as usize;
        if queues > max_q {
            return Err(DpdkError::Port(format!(
                "DPDK port {id} ({name}, {driver}) has at most {max_q} queue pairs: use --cores {max_q} or fewer{}",
                if driver.contains("af_packet") { " (or qpairs=N in its --vdev arguments)" } else { "" }
            )));
        }

        let mut conf = sys::rte_eth_conf::default();
        let rx_want =
            sys::RX_OFFLOAD_IPV4_CKSUM | sys::RX_OFFLOAD_TCP_CKSUM | sys::RX_OFFLOAD_UDP_CKSUM;
        let tx_want =
            sys::TX_OFFLOAD_IPV4_CKSUM | sys::TX_OFFLOAD_TCP_CKSUM | sys::TX_OFFLOAD_UDP_CKSUM;
        let rx_cksum = info.rx_offload_capa & rx_want == rx_want;
        let tx_cksum = info.tx_offload_capa & tx_want == tx_want;
        if rx_cksum {
            conf.rxmode.offloads |= rx_want;
        }
        if tx_cksum {
            conf.txmode.offloads |= tx_want;
        }
        let rss_hf = info.flow_type_rss_offloads
            & (sys::RSS_IPV4 | sys::RSS_NONFRAG_IPV4_TCP | sys::RSS_NONFRAG_IPV4_UDP);
        let rss = queues > 1 && rss_hf & sys::RSS_NONFRAG_IPV4_TCP != 0;
        if rss {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // Receive interrupts let an idle core sleep; not every driver has them.
        conf.intr_conf.set_rxq(1);
        let q = queues as u16;
        // SAFETY: conf is a live, fully initialised configuration for a valid, stopped port.
        let mut rc = unsafe { sys::rte_eth_dev_configure(id, q, q, &conf) };
        if rc != 0 {
            conf.intr_conf.set_rxq(0);
            // SAFETY: as above.
            rc = unsafe { sys::rte_eth_dev_configure(id, q, q, &conf) };
        } else {
            self.interrupts = true;
        }
        if rc != 0 {
            return Err(DpdkError::Port(format!(
                "DPDK port {id} ({name}, {driver}) refused {queues} queue pairs with offloads {:#x}/{:#x}: {}",
                conf.rxmode.offloads,
                conf.txmode.offloads,
                errno_text(rc)
            )));
        }

        let (mut nrx, mut ntx) = (RING_DESCRIPTORS, RING_DESCRIPTORS);
        // SAFETY: live u16 out-parameters for a configured port.
        unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nrx, &mut ntx) };
        let mut mtu = 1500u16;
        // SAFETY: live out-parameter.
        unsafe { sys::rte_eth_dev_get_mtu(id, &mut mtu) };
        let mtu = mtu.max(576);
        // SAFETY: plain query.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let data_room = (mtu as u32 + L2_OVERHEAD).max(2048) + sys::RTE_PKTMBUF_HEADROOM;
        // A pool holds what both rings, one receive burst and the stack's transmit batch can hold
        // at once; the ring-based pool is most efficient at 2^k - 1 entries.
        let need = nrx as u32 + ntx as u32 + 2 * opts.budget.max(BURST) as u32 + STACK_HELD;
        let pool_size = need.next_power_of_two() - 1;
        for qi in 0..q {
            let pool_name = CString::new(format!("lh_p{id}_q{qi}")).expect("no NUL");
            // SAFETY: the name is a NUL-terminated string; the sizes are within DPDK's limits.
            let pool = unsafe {
                sys::rte_pktmbuf_pool_create(
                    pool_name.as_ptr(),
                    pool_size,
                    POOL_CACHE,
                    0,
                    data_room as u16,
                    socket,
                )
            };
            let Some(pool) = NonNull::new(pool) else {
                // SAFETY: reads this thread's rte_errno.
                let e = unsafe { sys::lh_errno() };
                return Err(DpdkError::Port(format!(
                    "cannot create a pool of {pool_size} mbufs for queue {qi} ({}): give DPDK more memory (-m 512, or more hugepages)",
                    eal::strerror(e)
                )));
            };
            self.pools.push(pool);
            // SAFETY: a valid configured port, a queue index below the configured count, a live
            // pool; the default queue configurations are used (null).
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(
                    id,
                    qi,
                    nrx,
                    socket as u32,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(DpdkError::Port(format!(
                    "DPDK port {id} ({name}): receive queue {qi} setup failed: {}",
                    errno_text(rc)
                )));
            }
            // SAFETY: as above, for the transmit queue.
            let rc = unsafe {
                sys::rte_eth_tx_queue_setup(id, qi, ntx, socket as u32, std::ptr::null())
            };
            if rc != 0 {
                return Err(DpdkError::Port(format!(
                    "DPDK port {id} ({name}): transmit queue {qi} setup failed: {}",
                    errno_text(rc)
                )));
            }
        }

        let rss_conf = if rss {
            self.program_rss(&info, q)
        } else {
            None
        };

        // SAFETY: every queue is set up.
        let rc = unsafe { sys::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(DpdkError::Port(format!(
                "DPDK port {id} ({name}, {driver}) did not start: {}",
                errno_text(rc)
            )));
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: live out-parameter.
        unsafe { sys::rte_eth_macaddr_get(id, &mut mac) };
        self.mac = mac.addr_bytes;
        self.caps = Caps {
            mtu: mtu as usize,
            queues,
            rx_checksum_offload: rx_cksum,
            tx_checksum_offload: tx_cksum,
            rss: rss_conf,
        };
        let speed = self.wait_for_link(&name, &driver, opts.link_timeout)?;
        // Drivers without receive interrupts log a complaint per query: keep it off the terminal.
        let quiet = eal::Capture::begin();
        self.interrupt_fds = (0..q)
            .map(|qi| {
                if !self.interrupts {
                    return None;
                }
                // SAFETY: a started port configured with receive interrupts; plain query.
                let fd = unsafe { sys::rte_eth_dev_rx_intr_ctl_q_get_fd(id, qi) };
                (fd >= 0).then_some(fd)
            })
            .collect();
        drop(quiet.map(eal::Capture::end));
        let waits = match self.interrupt_fds.iter().filter(|f| f.is_some()).count() {
            0 => format!("{} us naps (no rx interrupts)", super::NAP.as_micros()),
            n if n == queues => "rx interrupts".to_string(),
            n => format!("rx interrupts on {n} queues, naps on the rest"),
        };
        eprintln!(
            "longhaul dpdk: port {id} ({name}, {driver}) up at {speed} Mbit/s, mac {}, mtu {mtu}, {queues} queue pair(s) of {nrx}/{ntx} descriptors, pools of {pool_size} mbufs; offloads: rx checksum {}, tx checksum {}, rss {}; tso not used; idle wait {}",
            mac_text(&self.mac),
            on_off(rx_cksum, "ipv4/tcp/udp"),
            on_off(tx_cksum, "ipv4/tcp/udp"),
            match (&rss_conf, rss) {
                (Some(r), _) => format!("4-tuple (key {} B, reta {})", r.key().len(), r.reta_size()),
                (None, true) => "requested, but the driver reports no key/table (flows follow its own spreading)".into(),
                (None, false) if queues > 1 => "not offered (the driver spreads flows its own way)".into(),
                (None, false) => "off (one queue)".into(),
            },
            waits,
        );
        Ok(())
    }

    /// Spreads the redirection table round-robin over the queues and reads the key back.
    fn program_rss(&self, info: &sys::rte_eth_dev_info, queues: u16) -> Option<RssConfig> {
        let reta_size = info.reta_size as usize;
        if reta_size > 0 {
            let groups = reta_size.div_ceil(sys::RETA_GROUP_SIZE);
            let mut reta = vec![sys::rte_eth_rss_reta_entry64::default(); groups];
            for i in 0..reta_size {
                let entry = &mut reta[i / sys::RETA_GROUP_SIZE];
                entry.mask |= 1 << (i % sys::RETA_GROUP_SIZE);
                entry.reta[i % sys::RETA_GROUP_SIZE] = (i % queues as usize) as u16;
            }
            // SAFETY: reta holds reta_size entries in groups of 64, as the call requires.
            let rc = unsafe {
                sys::rte_eth_dev_rss_reta_update(self.id, reta.as_mut_ptr(), reta_size as u16)
            };
            if rc != 0 {
                return None;
            }
        }
        let mut key = [0u8; crate::pmd::rss::MAX_KEY_LEN];
        let mut conf = sys::rte_eth_rss_conf {
            rss_key: key.as_mut_ptr(),
            rss_key_len: (info.hash_key_size as usize).clamp(1, crate::pmd::rss::MAX_KEY_LEN) as u8,
            ..Default::default()
        };
        // SAFETY: conf points at a live key buffer of rss_key_len bytes.
        let rc = unsafe { sys::rte_eth_dev_rss_hash_conf_get(self.id, &mut conf) };
        if rc != 0 || conf.rss_key_len == 0 {
            return None;
        }
        let len = (conf.rss_key_len as usize).min(key.len());
        RssConfig::new(&key[..len], reta_size as u16, queues)
    }

    /// Polls the link until it is up or `timeout` passes; returns the speed in Mbit/s.
    fn wait_for_link(&self, name: &str, driver: &str, timeout: Duration) -> Result<u32, DpdkError> {
        let start = Instant::now();
        loop {
            let mut speed = 0u32;
            // SAFETY: a started port; speed is a live out-parameter.
            let rc = unsafe { sys::lh_link_status(self.id, &mut speed) };
            if rc == 1 {
                return Ok(speed);
            }
            if rc < 0 {
                // The driver cannot tell: carry on as if up.
                return Ok(0);
            }
            if start.elapsed() >= timeout {
                let hint = if driver.contains("af_packet") || driver.contains("tap") {
                    "bring the kernel interface and its peer up (ip link set IFACE up)"
                } else {
                    "check the cable, the switch port and the peer"
                };
                return Err(DpdkError::LinkDown(format!(
                    "DPDK port {} ({name}, {driver}) link still down after {:.0} s: {hint}",
                    self.id,
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The receive interrupt descriptor of queue `q`, when the driver has one.
    pub fn interrupt_fd(&self, q: u16) -> Option<i32> {
        self.interrupt_fds.get(q as usize).copied().flatten()
    }

    /// Arms (before sleeping) or disarms queue `q`'s receive interrupt.
    pub fn rx_interrupt(&self, q: u16, on: bool) {
        // SAFETY: a started port configured with receive interrupts.
        unsafe {
            if on {
                sys::rte_eth_dev_rx_intr_enable(self.id, q);
            } else {
                sys::rte_eth_dev_rx_intr_disable(self.id, q);
            }
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: no queue is left (this is the last reference), so nothing polls the port; the
        // pools are freed after the port that took mbufs from them is closed, and the EAL last.
        unsafe {
            sys::rte_eth_dev_stop(self.id);
            sys::rte_eth_dev_close(self.id);
            for p in self.pools.drain(..) {
                sys::rte_mempool_free(p.as_ptr());
            }
        }
        let bad = self
            .bad_checksums
            .load(std::sync::atomic::Ordering::Relaxed);
        if bad > 0 {
            eprintln!("longhaul dpdk: dropped {bad} received frame(s) with wrong checksums");
        }
        eal::cleanup();
    }
}

fn port_name(id: u16) -> String {
    let mut buf = [0 as libc::c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes, as the call requires.
    if unsafe { sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) } != 0 {
        return format!("port{id}");
    }
    // SAFETY: the call wrote a NUL-terminated name into buf.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn on_off(on: bool, what: &str) -> String {
    if on {
        what.to_string()
    } else {
        "not offered".to_string()
    }
}
