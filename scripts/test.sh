#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and lints, builds once in
# release mode and runs every test (unit, in-process two-stack, kernel-peer over TAP in private
# network namespaces, bad input, allocation and idle-CPU checks). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --all-targets --release -- -D warnings
step "clippy (features dpdk)"
cargo clippy --all-targets --release --features dpdk -- -D warnings
step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet --features dpdk
step "build"
cargo build --release --all-targets
step "tests"
cargo test --release
step "kernel-peer tests again with Linux BBR as the peer (CUBIC above)"
LH_PEER_CC=bbr cargo test --release --test kernel_peer
step "dpdk tests (net_tap, af_packet, EAL errors; unit tests of the backend)"
cargo test --release --features dpdk --lib pmd::dpdk
cargo test --release --features dpdk --test dpdk
step "dpdk static link check"
bash scripts/dpdk-static-check.sh
step "bench script smoke run"
BENCH_SECS=1 BENCH_WARMUP=0.2 BENCH_RESULTS="$(mktemp -d)" bash scripts/bench.sh
step "done"
