#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, `cargo fuzz list`) for a bounded time each,
# starting from the seed corpus kept in the repository (fuzz/seeds/TARGET);
# what the fuzzer finds meanwhile goes to a temporary corpus that is thrown
# away. A crash, leak, timeout or out-of-memory fails the script; the input
# is kept in fuzz/artifacts/TARGET/ (replay: see fuzz/README.md).
#   ./scripts/fuzz.sh [SECONDS]     default 60 s per target
#   VMMIO_FUZZ_SECONDS=N            the same, from the environment
# Needs cargo-fuzz (installed here through scripts/install-cargo-tools.sh)
# and a C++ compiler for libFuzzer; uses the default toolchain with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags (a nightly works as well).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-${VMMIO_FUZZ_SECONDS:-60}}
./scripts/install-cargo-tools.sh cargo-fuzz

cd fuzz
export RUSTC_BOOTSTRAP=1
# Build every target once up front (the runs below then only link-check).
cargo fuzz build
for target in $(cargo fuzz list); do
    corpus=$(mktemp -d)
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    echo "fuzz: $target for ${secs} s" >&2
    start=$(date +%s)
    log=$(mktemp)
    if ! cargo fuzz run "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -m 3 -A 1 'panicked at' "$log" >&2 || true
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" >&2 || true
    rm -rf "$corpus" "$log"
    echo "fuzz: $target ok in $(( $(date +%s) - start )) s" >&2
done
