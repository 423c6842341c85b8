#!/usr/bin/env bash
# Installs the Debian packages vmmio's tests need (QEMU for the qtest and
# reference-boot tests, the RISC-V cross toolchain and kernel sources for the
# default guest). Idempotent: installs only what is missing.
set -euo pipefail

packages=(
    qemu-system-x86 qemu-system-misc
    gcc-riscv64-linux-gnu linux-libc-dev-riscv64-cross linux-source-6.1
    bc flex bison cpio make xz-utils device-tree-compiler
    debian-archive-keyring time e2fsprogs
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all packages present" >&2
    exit 0
fi

# archive_uri (the host's own apt sources, read at run time).
# shellcheck source=lib/apt-sources.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt-sources.sh"

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2
# Some machines carry QEMU's tools from bookworm-backports (a newer
# qemu-utils), which Debian 12's own QEMU system emulators cannot be mixed
# with: when the plain install cannot resolve, make sure bookworm-backports
# is a package source and take the emulators from there.
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
        # The archive is whatever the host already uses for bookworm: its
        # URI is read from the host's own apt sources, never written here.
        uri=$(archive_uri bookworm)
        if [ -z "$uri" ]; then
            echo "install-deps: no apt source for bookworm found to derive bookworm-backports from" >&2
            exit 1
        fi
        echo "install-deps: adding bookworm-backports from the host's bookworm archive" >&2
        printf '%s\n' \
            'Types: deb' \
            "URIs: $uri" \
            'Suites: bookworm-backports' \
            'Components: main' \
            'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
            $sudo tee /etc/apt/sources.list.d/vmmio-bookworm-backports.sources >/dev/null
        $sudo apt-get update -q >&2
    fi
    echo "install-deps: retrying from bookworm-backports" >&2
    $sudo apt-get install -y -q --no-install-recommends -t bookworm-backports "${missing[@]}" >&2
fi
