#!/usr/bin/env bash
# The test command: everything CI runs, and what a new user runs.
#   ./scripts/test.sh
# Installs missing Debian packages, builds (or finds cached) the default
# guest, then runs every test of the workspace in release mode (the boot
# tests interpret a whole Linux kernel; debug builds are too slow for them).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
guest_dir="$(./guest/build.sh | tail -n 1)"
echo "test: default guest in $guest_dir" >&2
# Debian's riscv64 kernel + busybox (crates/cli/tests/linux_debian.rs): fetched
# through apt once (about 115 MB, ~30 s), then found in ~/.cache/vmmio/debian.
debian_dir="$(./scripts/debian-guest.sh | tail -n 1)"
echo "test: Debian guest in $debian_dir" >&2

# The independent vsock device the qtest vsock test runs our driver against
# (a one-time build of a few minutes, then found in ~/.cargo/bin).
./scripts/install-cargo-tools.sh vhost-device-vsock

echo "test: no_std build of the driver" >&2
cargo build -p vmmio-driver --no-default-features

echo "test: cargo test --workspace --release" >&2
cargo test --workspace --release

# loom model checks of the worker hand-off: a separate `--cfg loom` build
# in target/loom (about a minute cold on 2 cores), then about 6 s.
echo "test: loom (scripts/loom.sh)" >&2
./scripts/loom.sh

# Issue 17's proof 2: Debian's kernel + busybox on QEMU's virt board and on our
# machine, in one run, times and peak RSS side by side (about a minute).
echo "test: scripts/compare-boot.sh -n 1 --distro debian" >&2
./scripts/compare-boot.sh -n 1 --distro debian
