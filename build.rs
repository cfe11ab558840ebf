//! Build script. It does no work until the `dpdk` feature exists (bindgen against the system DPDK via
//! pkg-config plus a small C shim for DPDK's `static inline` functions); it is here so the layout is
//! fixed from the start.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
