#!/bin/sh
# Prints the path of the Debian guest kernel's symbol table (System.map format, for
# `vmmio profile --system-map`), made once and cached: Debian's linux-image package ships
# a placeholder System.map (the real one is in the -dbg package, hundreds of MB), so the
# guest itself writes its /proc/kallsyms text symbols to a scratch disk from --shell.
# Usage: scripts/debian-kallsyms.sh [path/to/vmmio]   (~1 min of CPU)
set -eu
VMMIO=${1:-target/release/vmmio}
CACHE=${VMMIO_DEBIAN_CACHE:-$HOME/.cache/vmmio/debian}
deb=$(ls "$CACHE"/debs/linux-image-*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "no kernel package under $CACHE/debs: run scripts/debian-guest.sh" >&2; exit 1; }
out="$CACHE/kallsyms-$(basename "$deb" .deb)"
if [ -s "$out" ]; then
	printf '%s\n' "$out"
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
truncate -s 64M "$tmp/disk"
mkfifo "$tmp/in"
"$VMMIO" boot --distro debian --shell --disk "$tmp/disk" --timeout 600 <"$tmp/in" >"$tmp/log" 2>&1 &
pid=$!
exec 3>"$tmp/in"
# The shell's tty drops input typed before it opens: wait for its banner.
until grep -q "built-in shell" "$tmp/log"; do
	kill -0 "$pid" 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
	sleep 1
done
sleep 2
printf 'grep " [tTwW] " /proc/kallsyms > /dev/vda; sync; poweroff -f\n' >&3
wait "$pid"
exec 3>&-
tr -d '\000' <"$tmp/disk" >"$out.tmp"
[ -s "$out.tmp" ] || { echo "the guest wrote no symbols" >&2; exit 1; }
mv "$out.tmp" "$out"
printf '%s\n' "$out"
