#!/usr/bin/env bash
# loom model checks of the worker hand-off
# (crates/device/src/worker/loom_tests.rs), exhaustive: every interleaving
# (about 6 s for the three tests). `--cfg loom` changes every crate's
# build, so it has its own target dir (a cold build takes about a minute).
#   ./scripts/loom.sh [TEST FILTER]
# Set LOOM_MAX_PREEMPTIONS (e.g. 3) to bound the search when a model grows.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg loom" exec cargo test --release --target-dir target/loom \
    -p vmmio-device --lib -- "${1:-worker::loom_tests}"
