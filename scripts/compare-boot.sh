#!/usr/bin/env bash
# Boot the same kernel + initramfs on QEMU's `virt` board (guest/qemu-boot.sh,
# QEMU's own virtio-mmio devices) and on vmmio's software machine (vmmio's
# devices), and compare:
#   - boot-to-init: wall time from starting the emulator to the console line
#     "vmmio-init: started" (QEMU: OpenSBI firmware + kernel + init; ours:
#     kernel + init, no firmware);
#   - in-guest block throughput: the init's `dd` test (16 MiB written + fsync,
#     then read, 1 MiB O_DIRECT requests on /dev/vda; MB = 10^6 bytes);
#   - peak RSS of the whole run (GNU time's maximum resident set size of the
#     emulator process; MiB = 2^20 bytes).
#
#   scripts/compare-boot.sh [-n RUNS] [--distro default|debian]
#
# --distro debian boots Debian's riscv64 kernel and busybox
# (scripts/debian-guest.sh) instead of the default guest: "boot-to-init" is
# then the time to the test program's first line, after the busybox init
# loaded the virtio modules. QEMU gets its full rv64 CPU (Debian's userland
# needs F/D) and both get vmmio.hvc=/dev/hvc0 (no SBI console in that kernel)
# and, as vmmio boot --distro debian, cryptomgr.notests initcall_blacklist=jent_mod_init
# (no crypto self-tests, no jitter entropy start-up test).
#
# Both get the same kernel command line ("console=ttyS0 panic=-1
# vmmio.tests=dd"), 256 MiB of RAM and a fresh 64 MiB scratch disk. Runs
# alternate between the two; every run is printed, then the medians and
# their ratio (ours / QEMU: below 1 means we are faster).
#
# Environment: VMMIO_GUEST_DIR (use this Image + initramfs.cpio instead of
# guest/build.sh), CARGO_TARGET_DIR (where the release `vmmio` is built),
# VMMIO_EXEC (our device execution mode, `vmmio boot --exec`: worker, the
# default, or sync).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=3
DISTRO=default
usage() { echo "usage: $0 [-n RUNS] [--distro default|debian]" >&2; exit 2; }
while [ $# -gt 0 ]; do
	case "$1" in
	-n) [ $# -ge 2 ] || usage; RUNS=$2; shift 2 ;;
	--distro) [ $# -ge 2 ] || usage; DISTRO=$2; shift 2 ;;
	--distro=*) DISTRO=${1#--distro=}; shift ;;
	*) usage ;;
	esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "compare-boot: -n wants a positive number" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "compare-boot: no /usr/bin/time (package time; scripts/install-deps.sh)" >&2; exit 1; }

TESTS="vmmio.tests=dd"
case "$DISTRO" in
default)
	if [ -z "${VMMIO_GUEST_DIR:-}" ]; then
		VMMIO_GUEST_DIR=$(./guest/build.sh | tail -n 1)
	fi
	;;
debian)
	TESTS="$TESTS vmmio.hvc=/dev/hvc0 cryptomgr.notests initcall_blacklist=jent_mod_init"
	export VMMIO_QEMU_CPU=${VMMIO_QEMU_CPU:-rv64}
	VMMIO_GUEST_DIR=$(./scripts/debian-guest.sh | tail -n 1)
	;;
*) usage ;;
esac
CMDLINE="console=ttyS0 panic=-1 $TESTS"
GUEST=$VMMIO_GUEST_DIR
export VMMIO_GUEST_DIR

echo "compare-boot: building vmmio (release)" >&2
cargo build --release -q -p vmmio
TARGET_DIR=${CARGO_TARGET_DIR:-target}
VMMIO="$TARGET_DIR/release/vmmio"
[ -x "$VMMIO" ] || { echo "compare-boot: no $VMMIO" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/vmmio-compare.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Prints "SECONDS WRITE_MBPS READ_MBPS PEAK_RSS_MIB" for one run on our machine.
run_ours() {
	local start log=$TMP/ours.log
	start=$EPOCHREALTIME
	/usr/bin/time -f %M -o "$TMP/ours.rss" "$VMMIO" boot --kernel "$GUEST/Image" --initrd "$GUEST/initramfs.cpio" \
		--cmdline "$CMDLINE" --mem 256 --no-stdin --timeout 300 \
		--exec "${VMMIO_EXEC:-worker}" </dev/null 2>"$TMP/ours.err" |
		{
			local started=""
			while IFS= read -r line; do
				line=${line%$'\r'}
				printf '%s\n' "$line"
				if [ -z "$started" ] && [ "$line" = "vmmio-init: started" ]; then
					started=$EPOCHREALTIME
					echo "$(( ${started/./} - ${start/./} ))" >"$TMP/ours.us"
				fi
			done
		} >"$log"
	local rc=${PIPESTATUS[0]}
	if [ "$rc" -ne 0 ] || [ ! -s "$TMP/ours.us" ]; then
		echo "compare-boot: vmmio boot failed (exit $rc):" >&2
		tail -n 30 "$log" "$TMP/ours.err" >&2
		exit 1
	fi
	local us; us=$(cat "$TMP/ours.us"); rm -f "$TMP/ours.us"
	printf '%d.%06d %s %s\n' $((us / 1000000)) $((us % 1000000)) "$(dd_figures "$log")" "$(rss_mib "$TMP/ours.rss")"
}

# Prints "SECONDS WRITE_MBPS READ_MBPS PEAK_RSS_MIB" for one run on QEMU.
run_qemu() {
	local log=$TMP/qemu.log
	# GNU time reports the largest RSS of the script's descendants: QEMU's.
	# shellcheck disable=SC2086 # TESTS is several kernel arguments
	if ! /usr/bin/time -f %M -o "$TMP/qemu.rss" ./guest/qemu-boot.sh $TESTS >"$log" 2>"$TMP/qemu.err"; then
		echo "compare-boot: guest/qemu-boot.sh failed:" >&2
		tail -n 30 "$log" "$TMP/qemu.err" >&2
		exit 1
	fi
	local secs
	secs=$(sed -n 's/^qemu boot-to-init: \([0-9.]*\) s$/\1/p' "$TMP/qemu.err")
	[ -n "$secs" ] || { echo "compare-boot: no boot-to-init time from QEMU" >&2; exit 1; }
	printf '%s %s %s\n' "$secs" "$(dd_figures "$log")" "$(rss_mib "$TMP/qemu.rss")"
}

# The peak RSS GNU time wrote (KiB) as MiB.
rss_mib() { awk 'END { printf "%.1f", $1 / 1024 }' "$1"; }

# "WRITE READ" from the init's dd line in log $1.
dd_figures() {
	sed -n 's/^vmmio-init: dd write MB\/s=\([0-9.]*\) read MB\/s=\([0-9.]*\)$/\1 \2/p' "$1" | head -n 1 |
		grep . || { echo "compare-boot: no dd line in $1" >&2; tail -n 20 "$1" >&2; exit 1; }
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "compare-boot: guest ($DISTRO) $GUEST" >&2
echo "compare-boot: cmdline (both): $CMDLINE" >&2
: >"$TMP/ours.all"
: >"$TMP/qemu.all"
printf '%-5s %-6s %14s %16s %15s %14s\n' run who boot-to-init-s dd-write-MB/s dd-read-MB/s peak-RSS-MiB
for i in $(seq 1 "$RUNS"); do
	q=$(run_qemu)
	o=$(run_ours)
	echo "$q" >>"$TMP/qemu.all"
	echo "$o" >>"$TMP/ours.all"
	read -r qs qw qr qm <<<"$q"
	read -r os ow or om <<<"$o"
	printf '%-5s %-6s %14.3f %16s %15s %14s\n' "$i" qemu "$qs" "$qw" "$qr" "$qm"
	printf '%-5s %-6s %14.3f %16s %15s %14s\n' "$i" vmmio "$os" "$ow" "$or" "$om"
done

col() { awk -v c="$1" '{ print $c }' "$2" | median; }
qs=$(col 1 "$TMP/qemu.all"); qw=$(col 2 "$TMP/qemu.all"); qr=$(col 3 "$TMP/qemu.all")
os=$(col 1 "$TMP/ours.all"); ow=$(col 2 "$TMP/ours.all"); or=$(col 3 "$TMP/ours.all")
qm=$(col 4 "$TMP/qemu.all"); om=$(col 4 "$TMP/ours.all")
echo
echo "median of $RUNS run(s)        QEMU virt      vmmio machine   vmmio/QEMU"
awk -v q="$qs" -v o="$os" 'BEGIN { printf "boot-to-init (s)     %12.3f   %14.3f   %10.2f\n", q, o, o / q }'
awk -v q="$qw" -v o="$ow" 'BEGIN { printf "dd write (MB/s)      %12.1f   %14.1f   %10.2f\n", q, o, o / q }'
awk -v q="$qr" -v o="$or" 'BEGIN { printf "dd read (MB/s)       %12.1f   %14.1f   %10.2f\n", q, o, o / q }'
awk -v q="$qm" -v o="$om" 'BEGIN { printf "peak RSS (MiB)       %12.1f   %14.1f   %10.2f\n", q, o, o / q }'
