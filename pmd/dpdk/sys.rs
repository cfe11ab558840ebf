//! The generated DPDK bindings (build.rs: bindgen over `shim.h`, allowlisted) and the flag values
//! DPDK defines as function-like macros, which bindgen cannot evaluate. `shim.c` static-asserts
//! each value below against the installed headers, so a mismatch fails the build.

#![allow(
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/dpdk_bindings.rs"));

pub const RX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;
pub const RX_OFFLOAD_UDP_CKSUM: u64 = 1 << 2;
pub const RX_OFFLOAD_TCP_CKSUM: u64 = 1 << 3;
pub const TX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;
pub const TX_OFFLOAD_UDP_CKSUM: u64 = 1 << 2;
pub const TX_OFFLOAD_TCP_CKSUM: u64 = 1 << 3;
pub const TX_OFFLOAD_TCP_TSO: u64 = 1 << 5;
pub const RSS_IPV4: u64 = 1 << 2;
pub const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
pub const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
pub const MBUF_RX_IP_CKSUM_MASK: u64 = (1 << 4) | (1 << 7);
pub const MBUF_RX_IP_CKSUM_GOOD: u64 = 1 << 7;
pub const MBUF_RX_IP_CKSUM_BAD: u64 = 1 << 4;
pub const MBUF_RX_L4_CKSUM_MASK: u64 = (1 << 3) | (1 << 8);
pub const MBUF_RX_L4_CKSUM_GOOD: u64 = 1 << 8;
pub const MBUF_RX_L4_CKSUM_BAD: u64 = 1 << 3;
pub const MBUF_TX_TCP_CKSUM: u64 = 1 << 52;
pub const MBUF_TX_UDP_CKSUM: u64 = 3 << 52;
pub const MBUF_TX_IP_CKSUM: u64 = 1 << 54;
pub const MBUF_TX_IPV4: u64 = 1 << 55;
pub const RETA_GROUP_SIZE: usize = 64;
