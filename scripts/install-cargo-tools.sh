#!/usr/bin/env bash
# Cargo-installed tools the tests and CI use, one `cargo install --locked`
# per tool, skipped when the pinned version is already in ~/.cargo/bin.
#   ./scripts/install-cargo-tools.sh [TOOL...]   (default: every tool)
# Add a line to TOOLS for a new tool: "name version".
set -euo pipefail

TOOLS=(
    "cargo-mutants 27.1.0"
    "cargo-deny 0.20.2"
    "cargo-fuzz 0.13.1"
    "vhost-device-vsock 0.3.0"
)

want=("$@")
for entry in "${TOOLS[@]}"; do
    read -r name version <<<"$entry"
    if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " ${name} " ]]; then
        continue
    fi
    if cargo install --list 2>/dev/null | grep -q "^${name} v${version}:"; then
        continue
    fi
    echo "install-cargo-tools: ${name} ${version}" >&2
    cargo install --locked "${name}" --version "${version}"
done
