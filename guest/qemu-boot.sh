#!/usr/bin/env bash
# Boot the vmmio default guest on QEMU's own RISC-V `virt` board, the
# reference our software machine is compared against.
#
#   guest/qemu-boot.sh [KERNEL_ARG...] [-- QEMU_ARG...]
#
# e.g.
#   guest/qemu-boot.sh vmmio.tests=virtio,blk,rng,hvc,blkreqs,dd vmmio.blkreqs=2000
#
# Arguments before `--` are appended to the kernel command line, arguments
# after it are passed to qemu-system-riscv64. The guest gets a virtio-blk
# device on a fresh zeroed raw image, a virtio-rng device and a
# virtio-serial device with one virtconsole port (the guest's /dev/hvc1;
# hvc0 is the SBI console), all virtio-mmio.
#
# stdout: the serial console (CRs stripped), then what the guest wrote to
#         the virtconsole.
# stderr: progress, and "qemu boot-to-init: X.XX s" = wall time from
#         starting QEMU to the console line "vmmio-init: started".
# Exit status: 0 if QEMU ended by the guest's power-off, "vmmio-init: done"
# was printed and no "vmmio-init: ... FAIL" line appeared; 124 on timeout;
# otherwise non-zero.
#
# Environment:
#   VMMIO_GUEST_DIR     use this Image + initramfs.cpio (default: run build.sh)
#   VMMIO_QEMU_TIMEOUT  seconds before QEMU is killed (default 300)
#   VMMIO_QEMU_DISK_MB  size of the scratch disk (default 64)
#   VMMIO_QEMU_MEM_MB   guest RAM (default 256)
#   VMMIO_QEMU_CPU      -cpu value (default: rv64 without F/D/V if this QEMU
#                       accepts that, else rv64; C cannot be turned off
#                       because QEMU's OpenSBI firmware uses it)
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QEMU=qemu-system-riscv64
TIMEOUT="${VMMIO_QEMU_TIMEOUT:-300}"
DISK_MB="${VMMIO_QEMU_DISK_MB:-64}"
MEM_MB="${VMMIO_QEMU_MEM_MB:-256}"

log() { printf 'qemu-boot: %s\n' "$*" >&2; }
die() { printf 'qemu-boot: ERROR: %s\n' "$*" >&2; exit 1; }

# --- arguments ---------------------------------------------------------------
KARGS=()
QARGS=()
while [ $# -gt 0 ]; do
	if [ "$1" = "--" ]; then
		shift
		QARGS=("$@")
		break
	fi
	KARGS+=("$1")
	shift
done

# --- QEMU itself -------------------------------------------------------------
if ! command -v "$QEMU" >/dev/null; then
	log "installing qemu-system-misc"
	SUDO=(env DEBIAN_FRONTEND=noninteractive)
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "not root and no sudo: install qemu-system-misc"
		SUDO=(sudo env DEBIAN_FRONTEND=noninteractive)
	fi
	"${SUDO[@]}" apt-get update >&2
	# A machine with QEMU tools from bookworm-backports cannot mix in the
	# bookworm qemu-system-misc: retry from backports if that is configured.
	"${SUDO[@]}" apt-get install -y --no-install-recommends qemu-system-misc >&2 ||
		"${SUDO[@]}" apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-misc >&2 ||
		die "could not install qemu-system-misc"
fi

# --- the guest ---------------------------------------------------------------
if [ -n "${VMMIO_GUEST_DIR:-}" ]; then
	OUT="$VMMIO_GUEST_DIR"
else
	OUT=$("$GUEST_DIR/build.sh" | tail -n 1)
fi
[ -f "$OUT/Image" ] && [ -f "$OUT/initramfs.cpio" ] || die "no Image/initramfs.cpio in '$OUT'"

# --- CPU: drop the FP extensions if this QEMU knows how ----------------------
if [ -n "${VMMIO_QEMU_CPU:-}" ]; then
	CPU="$VMMIO_QEMU_CPU"
else
	CPU=rv64,f=false,d=false,v=false,zfa=false,zfh=false,zfhmin=false,zcd=false,zcf=false
	# A paused QEMU told to quit on its monitor: fails at once if this
	# QEMU does not know one of the properties.
	if ! echo quit | "$QEMU" -M virt -cpu "$CPU" -display none -nodefaults -S \
		-monitor stdio >/dev/null 2>&1; then
		CPU=rv64
	fi
fi

# --- scratch files -----------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/vmmio-qemu-boot.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
truncate -s "${DISK_MB}M" "$TMP/disk.img"
: >"$TMP/hvc.out"
: >"$TMP/console.log"

CMDLINE="console=ttyS0 panic=-1 ${KARGS[*]}"
log "guest: $OUT"
log "cpu: $CPU"
log "cmdline: $CMDLINE"

# --- boot ----------------------------------------------------------------------
# stdin from /dev/null: -nographic would otherwise grab the terminal, and
# timeout(1) runs QEMU outside the foreground process group.
START=$EPOCHREALTIME
set +e
timeout "$TIMEOUT" "$QEMU" \
	-M virt -cpu "$CPU" -m "$MEM_MB" -nographic -no-reboot \
	-bios default \
	-kernel "$OUT/Image" \
	-initrd "$OUT/initramfs.cpio" \
	-append "$CMDLINE" \
	-drive file="$TMP/disk.img",format=raw,if=none,id=vd0 \
	-device virtio-blk-device,drive=vd0 \
	-device virtio-rng-device \
	-device virtio-serial-device \
	-chardev file,id=vcon0,path="$TMP/hvc.out" \
	-device virtconsole,chardev=vcon0 \
	"${QARGS[@]}" </dev/null 2>&1 |
{
	started="" done_seen=0 fails=0
	while IFS= read -r line; do
		line=${line%$'\r'}
		printf '%s\n' "$line"
		printf '%s\n' "$line" >>"$TMP/console.log"
		case "$line" in
		"vmmio-init: started")
			if [ -z "$started" ]; then
				started=$EPOCHREALTIME
				# EPOCHREALTIME is "seconds.microseconds"
				us=$(( (${started/./} - ${START/./}) ))
				printf 'qemu boot-to-init: %d.%02d s\n' $((us / 1000000)) $((us % 1000000 / 10000)) >&2
			fi
			;;
		"vmmio-init: done") done_seen=1 ;;
		"vmmio-init: "*" FAIL"*) fails=$((fails + 1)) ;;
		esac
	done
	[ -n "$started" ] || log "the guest never printed 'vmmio-init: started'"
	[ $done_seen -eq 1 ] || log "the guest never printed 'vmmio-init: done'"
	[ $fails -eq 0 ] || log "$fails FAIL line(s)"
	[ -n "$started" ] && [ $done_seen -eq 1 ] && [ $fails -eq 0 ]
}
status=("${PIPESTATUS[@]}")
set -e
END=$EPOCHREALTIME

# What the guest wrote to its virtio console.
if [ -s "$TMP/hvc.out" ]; then
	tr -d '\r' <"$TMP/hvc.out"
fi
us=$(( ${END/./} - ${START/./} ))
log "qemu exited with ${status[0]} after $((us / 1000000)).$(printf '%02d' $((us % 1000000 / 10000))) s"

if [ "${status[0]}" -eq 124 ]; then
	log "TIMEOUT after $TIMEOUT s"
	exit 124
fi
[ "${status[0]}" -eq 0 ] || exit "${status[0]}"
[ "${status[1]}" -eq 0 ] || exit 1
# The hvc test only says it wrote; check the line really came out of the
# virtio console on the host side.
if grep -qx 'vmmio-init: hvc OK' "$TMP/console.log" &&
	! grep -qx 'vmmio-hvc: hello from the guest' <(tr -d '\r' <"$TMP/hvc.out"); then
	log "hvc FAIL: the guest said OK but the virtconsole received nothing"
	exit 1
fi
exit 0
