//! Build script. Without features it does nothing. With `dpdk` it finds the system DPDK through
//! pkg-config (`libdpdk`, at least [`dpdk::MIN_VERSION`]), generates Rust bindings for the parts of
//! rte_eal, rte_ethdev, rte_mbuf and rte_mempool the backend calls (bindgen, allowlisted), and
//! compiles `pmd/dpdk/shim.c`, a few forwarders for DPDK's `static inline` functions and the
//! thread-local `rte_errno`. Both get the full `pkg-config --cflags` (DPDK's headers need its
//! `-include rte_config.h` and `-march`).
//!
//! Linking: by default against the shared libraries (Debian's DPDK loads its PMDs from its driver
//! directory at `rte_eal_init`, no extra flags). `LONGHAUL_DPDK_STATIC=net_ixgbe,net_i40e,...` links
//! DPDK statically instead, with the named PMDs (plus the PCI and vdev buses and the ring mempool)
//! inside `--whole-archive`, since drivers register themselves from constructors nobody references.
//!
//! When DPDK, pkg-config or libclang is missing the build stops with one line naming the Debian
//! packages to install.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// The oldest DPDK with the `RTE_ETH_*`/`RTE_MBUF_F_*` names the backend uses.
    pub const MIN_VERSION: &str = "21.11";
    const PACKAGES: &str = "libdpdk-dev libclang-dev pkg-config";
    /// Buses and the mempool driver every statically linked port needs.
    const STATIC_BASE: [&str; 3] = ["bus_pci", "bus_vdev", "mempool_ring"];

    /// Stops the build with one line: cargo prints `error: longhaul@VERSION: MSG` and fails the
    /// build because of the `cargo::error` line (exiting 0 spares the build script's whole output).
    fn fail(msg: &str) -> ! {
        println!("cargo::error=longhaul feature dpdk: {msg}");
        std::process::exit(0);
    }

    fn pkg_config(args: &[&str]) -> Result<String, String> {
        let exe = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = Command::new(&exe)
            .args(args)
            .output()
            .map_err(|_| format!("{exe} is not installed: apt-get install {PACKAGES}"))?;
        if !out.status.success() {
            return Err(format!(
                "DPDK (libdpdk >= {MIN_VERSION}) not found by pkg-config: apt-get install {PACKAGES}"
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn build() {
        for v in [
            "LONGHAUL_DPDK_STATIC",
            "PKG_CONFIG_PATH",
            "PKG_CONFIG",
            "LIBCLANG_PATH",
        ] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        println!("cargo:rerun-if-changed=pmd/dpdk/shim.c");
        println!("cargo:rerun-if-changed=pmd/dpdk/shim.h");

        let version = pkg_config(&["--modversion", "libdpdk"]).unwrap_or_else(|e| fail(&e));
        if pkg_config(&["--atleast-version", MIN_VERSION, "libdpdk"]).is_err() {
            fail(&format!(
                "DPDK {version} is too old (need >= {MIN_VERSION}): install a newer libdpdk-dev"
            ));
        }
        let statics: Vec<String> = env::var("LONGHAUL_DPDK_STATIC")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().trim_start_matches("librte_").to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let cflags_out = if statics.is_empty() {
            pkg_config(&["--cflags", "libdpdk"])
        } else {
            pkg_config(&["--static", "--cflags", "libdpdk"])
        }
        .unwrap_or_else(|e| fail(&e));
        let cflags: Vec<String> = cflags_out.split_whitespace().map(String::from).collect();

        generate_bindings(&cflags);
        let mut cc = cc::Build::new();
        cc.file("pmd/dpdk/shim.c").opt_level(2).warnings(true);
        for f in &cflags {
            cc.flag(f);
        }
        cc.compile("longhaul_dpdk_shim");

        if statics.is_empty() {
            link_shared();
        } else {
            link_static(&statics);
        }
    }

    fn generate_bindings(cflags: &[String]) {
        // bindgen loads libclang at run time and panics when it is missing; turn that into our line.
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = std::panic::catch_unwind(|| {
            bindgen::Builder::default()
                .header("pmd/dpdk/shim.h")
                .clang_args(cflags)
                .allowlist_function("lh_.*")
                .allowlist_function(
                    "rte_eal_init|rte_eal_cleanup|rte_strerror|rte_socket_id|rte_openlog_stream",
                )
                .allowlist_function("rte_thread_register|rte_thread_unregister")
                .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free")
                .allowlist_function(
                    "rte_eth_dev_count_avail|rte_eth_find_next|rte_eth_dev_info_get|\
                     rte_eth_dev_configure|rte_eth_dev_adjust_nb_rx_tx_desc|\
                     rte_eth_rx_queue_setup|rte_eth_tx_queue_setup|rte_eth_dev_start|\
                     rte_eth_dev_stop|rte_eth_dev_close|rte_eth_link_get_nowait|\
                     rte_eth_macaddr_get|rte_eth_dev_socket_id|rte_eth_dev_get_mtu|\
                     rte_eth_dev_rss_reta_update|rte_eth_dev_rss_hash_conf_get|\
                     rte_eth_dev_rx_intr_enable|rte_eth_dev_rx_intr_disable|\
                     rte_eth_dev_rx_intr_ctl_q_get_fd|rte_eth_dev_get_name_by_port|\
                     rte_eth_promiscuous_enable",
                )
                .allowlist_type("lh_mbuf_view|rte_eth_conf|rte_eth_dev_info|rte_eth_link")
                .allowlist_type("rte_eth_rss_conf|rte_eth_rss_reta_entry64|rte_ether_addr")
                .allowlist_var("RTE_MAX_ETHPORTS|RTE_PKTMBUF_HEADROOM|RTE_ETH_NAME_MAX_LEN")
                .allowlist_var("RTE_ETH_LINK_UP|RTE_ETH_MQ_RX_RSS|RTE_ETH_MQ_RX_NONE")
                .default_enum_style(bindgen::EnumVariation::Consts)
                .derive_default(true)
                .layout_tests(false)
                .generate_comments(false)
                .generate_inline_functions(false)
                .generate()
        });
        std::panic::set_hook(quiet);
        let bindings = match result {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => fail(&format!(
                "bindgen could not read the DPDK headers ({}): apt-get install {PACKAGES}",
                e.to_string().lines().next().unwrap_or("")
            )),
            Err(_) => fail(&format!(
                "libclang (needed by bindgen) not found: apt-get install {PACKAGES}, or set LIBCLANG_PATH"
            )),
        };
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindings
            .write_to_file(out.join("dpdk_bindings.rs"))
            .unwrap_or_else(|e| fail(&format!("cannot write the bindings: {e}")));
    }

    /// Shared libraries, as pkg-config lists them; the PMDs are plugins EAL loads at start.
    fn link_shared() {
        if let Err(e) = pkg_config::Config::new()
            .atleast_version(MIN_VERSION)
            .probe("libdpdk")
        {
            let first = e.to_string();
            fail(&format!(
                "pkg-config cannot link libdpdk ({}): apt-get install {PACKAGES}",
                first.lines().next().unwrap_or("").trim()
            ));
        }
    }

    /// Static archives: the chosen PMDs, buses and mempool driver whole (their constructors register
    /// them), the libraries as a group (only what is referenced), then their system dependencies.
    fn link_static(pmds: &[String]) {
        let libdir = pkg_config(&["--variable=libdir", "libdpdk"]).unwrap_or_else(|e| fail(&e));
        let archive = |name: &str| format!("{libdir}/librte_{name}.a");
        for d in STATIC_BASE
            .iter()
            .map(|s| s.to_string())
            .chain(pmds.iter().cloned())
        {
            if !std::path::Path::new(&archive(&d)).exists() {
                fail(&format!(
                    "LONGHAUL_DPDK_STATIC names {d}, but {} does not exist: use driver names such as net_ixgbe,net_tap (ls {libdir}/librte_net_*.a)",
                    archive(&d)
                ));
            }
        }
        println!("cargo:rustc-link-search=native={libdir}");
        println!("cargo:rustc-link-arg=-Wl,--whole-archive");
        for d in STATIC_BASE
            .iter()
            .map(|s| s.to_string())
            .chain(pmds.iter().cloned())
        {
            println!("cargo:rustc-link-arg={}", archive(&d));
        }
        println!("cargo:rustc-link-arg=-Wl,--no-whole-archive");
        // The core libraries, in pkg-config's (dependency) order, as one group.
        let libs = pkg_config(&["--libs-only-l", "libdpdk-libs"]).unwrap_or_else(|e| fail(&e));
        println!("cargo:rustc-link-arg=-Wl,--start-group");
        for lib in libs
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("-lrte_"))
        {
            let a = archive(lib);
            if std::path::Path::new(&a).exists() {
                println!("cargo:rustc-link-arg={a}");
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--end-group");
        for sys in ["numa", "bsd", "atomic", "rt", "m", "dl", "pthread"] {
            println!("cargo:rustc-link-arg=-l{sys}");
        }
        // Drivers register their log types and buses from constructors found by name at run time.
        println!("cargo:rustc-link-arg=-Wl,--export-dynamic");
    }
}
