#!/usr/bin/env bash
# Installs what longhaul's build, tests and demo need on a fresh Debian 12 machine (as root).
# Idempotent: installs only what is missing. Sourced by test.sh and demo.sh.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "longhaul: run as root (the tests create network namespaces and TAP devices)" >&2
  exit 1
fi

pkgs=(iproute2 iputils-ping iperf3 tcpdump curl wrk procps psmisc pkg-config gcc libc6-dev python3 nginx-light socat util-linux)
# The DPDK backend (feature dpdk): headers and PMDs, testpmd, libclang for bindgen; ethtool for its
# af_packet tests (kernel offloads off on the veth peer).
pkgs+=(libdpdk-dev dpdk dpdk-dev libclang-dev ethtool)
# tests/stun.rs: coturn as the STUN server, nftables for the NAT namespace's masquerade.
pkgs+=(coturn nftables)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The machine's Rust toolchain comes from rustup; make sure the components the suite uses are there.
if ! command -v cargo >/dev/null; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
  echo "longhaul: no cargo on PATH: install Rust 1.91 or newer with rustup (Debian 12's cargo is too old)" >&2
  exit 1
fi
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# TAP devices need /dev/net/tun.
if [ ! -e /dev/net/tun ]; then
  modprobe tun 2>/dev/null || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
fi

# Charts of benchmark results (optional: the scripts print tables without it).
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib >/dev/null 2>&1 || true
