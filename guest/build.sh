#!/usr/bin/env bash
# Build the vmmio default guest: a tiny RISC-V Linux kernel (Image) and an
# initramfs (initramfs.cpio) whose /init is guest/init.c, from Debian
# packages only.
#
#   guest/build.sh            build if needed; last stdout line = output dir
#   VMMIO_GUEST_CACHE=DIR     cache root (default ~/.cache/vmmio/guest)
#   VMMIO_GUEST_JOBS=N        make -j (default nproc)
#   VMMIO_GUEST_VERBOSE=1     full kernel build output on stderr
#
# Output: $cache/<key>/{Image,initramfs.cpio,init,config,build.log,inputs}
# where <key> is the sha256 of every input (this script, kernel.config,
# init.c, the linux-source-6.1 package version, the cross gcc version).
# The kernel alone is cached in $cache/kernel-<kernel key> (every input but
# init.c), so editing init.c rebuilds only the init and the initramfs.
# Everything but the final path goes to stderr.
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$GUEST_DIR/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$GUEST_DIR/kernel.config"
INIT_C="$GUEST_DIR/init.c"
CACHE_ROOT="${VMMIO_GUEST_CACHE:-$HOME/.cache/vmmio/guest}"
JOBS="${VMMIO_GUEST_JOBS:-$(nproc)}"
CROSS=riscv64-linux-gnu-
KSRC_TARBALL=/usr/src/linux-source-6.1.tar.xz

log() { printf 'guest/build.sh: %s\n' "$*" >&2; }
die() { printf 'guest/build.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
PACKAGES=(
	linux-source-6.1 gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu
	linux-libc-dev-riscv64-cross gcc libc6-dev make bc flex bison cpio
	xz-utils perl coreutils util-linux
)

missing=()
for p in "${PACKAGES[@]}"; do
	if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing missing Debian packages: ${missing[*]}"
	SUDO=(env DEBIAN_FRONTEND=noninteractive)
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "not root and no sudo: install ${missing[*]}"
		SUDO=(sudo env DEBIAN_FRONTEND=noninteractive)
	fi
	if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
		log "apt-get install failed, running apt-get update first"
		"${SUDO[@]}" apt-get update >&2
		"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
	fi
fi
[ -f "$KSRC_TARBALL" ] || die "$KSRC_TARBALL missing (package linux-source-6.1)"

# ---------------------------------------------------------------------------
# 2. Cache key and lock
# ---------------------------------------------------------------------------
KSRC_VERSION=$(dpkg-query -W -f='${Version}' linux-source-6.1)
GCC_VERSION=$(${CROSS}gcc --version | head -n1)
# The kernel is keyed by everything but init.c, so a change to the init
# rebuilds only the initramfs (seconds), not the kernel (minutes).
KERNEL_INPUTS=$(
	printf 'build.sh %s\n' "$(sha256sum <"$SELF" | cut -d' ' -f1)"
	printf 'kernel.config %s\n' "$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
	printf 'linux-source-6.1 %s\n' "$KSRC_VERSION"
	printf 'gcc %s\n' "$GCC_VERSION"
)
KERNEL_KEY=$(printf '%s\n' "$KERNEL_INPUTS" | sha256sum | cut -d' ' -f1)
KOUT="$CACHE_ROOT/kernel-$KERNEL_KEY"
INPUTS=$(
	printf '%s\n' "$KERNEL_INPUTS"
	printf 'init.c %s\n' "$(sha256sum <"$INIT_C" | cut -d' ' -f1)"
)
KEY=$(printf '%s\n' "$INPUTS" | sha256sum | cut -d' ' -f1)
OUT="$CACHE_ROOT/$KEY"

done_already() { [ -f "$OUT/Image" ] && [ -f "$OUT/initramfs.cpio" ]; }
kernel_done() { [ -f "$KOUT/Image" ] && [ -d "$KOUT/nolibc" ]; }

if done_already; then
	log "cached: $OUT"
	printf '%s\n' "$OUT"
	exit 0
fi

mkdir -p "$CACHE_ROOT"
# One builder at a time (the kernel build is shared between keys); a second
# caller waits here, then finds the result.
exec 9>"$CACHE_ROOT/build.lock"
if ! flock -n 9; then
	log "another guest build is running, waiting for its lock"
	flock 9
fi
if done_already; then
	log "built by another caller: $OUT"
	printf '%s\n' "$OUT"
	exit 0
fi

START=$(date +%s)
# Left-overs of builds of this key that were killed (we hold the lock).
rm -rf "$CACHE_ROOT/.tmp-$KEY-"*
WORK=$(mktemp -d "$CACHE_ROOT/.tmp-$KEY-XXXXXX")
# Leave no half-built directory behind, whatever happens; an interrupted
# build never looks done since only a complete directory is renamed to $OUT.
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "building guest $KEY in $WORK"
printf '%s\n' "$INPUTS" >"$WORK/inputs"
BUILD_LOG="$WORK/build.log"
: >"$BUILD_LOG"

# Run a noisy command: output to build.log (and stderr if verbose); on
# failure show the tail of the log.
run() {
	local rc=0
	if [ "${VMMIO_GUEST_VERBOSE:-0}" = 1 ]; then
		"$@" 2>&1 | tee -a "$BUILD_LOG" >&2 || rc=$?
	else
		"$@" >>"$BUILD_LOG" 2>&1 || rc=$?
	fi
	if [ $rc -ne 0 ]; then
		log "FAILED ($rc): $*"
		tail -n 40 "$BUILD_LOG" >&2
		exit $rc
	fi
}

# Our hart implements RV64IMA + Zicsr + Zifencei only: no compressed (C)
# and no F/D instructions may appear. check_isa FILE [kernel] decodes every
# instruction and flags 16-bit encodings, the F/D major opcodes
# (LOAD-FP, STORE-FP, FMADD..FNMADD, OP-FP) and FP CSR accesses. In kernel
# mode it tolerates data that objdump shows as .2byte/.4byte: the Image
# header inside <_start> and zero halfwords used as alignment padding.
check_isa() {
	${CROSS}objdump -d "$1" | awk -v kernel="${2:-}" '
	function hexval(s,   i, v) { v = 0; for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
	function report(what) { bad++; if (bad <= 10) print what ": <" sym "> " $0 }
	/^[0-9a-f]+ <.*>:$/ { sym = $2; gsub(/[<>:]/, "", sym); next }
	/^ *[0-9a-f]+:\t[0-9a-f]+/ {
		split($0, f, "\t"); w = f[2]; gsub(/ /, "", w); n++
		if (kernel != "" && f[3] ~ /^\.(2byte|4byte|byte|short|word)/ && (sym == "_start" || hexval(w) == 0)) { data++; next }
		if (length(w) != 8) { report("compressed"); next }
		op = hexval(substr(w, 7, 2)) % 128
		if (op == 7 || op == 39 || op == 67 || op == 71 || op == 75 || op == 79 || op == 83) { report("F/D"); next }
		if (f[3] ~ /^(frcsr|fscsr|frflags|fsflags|frrm|fsrm)/ || f[4] ~ /(^|,)(fcsr|fflags|frm)(,|$)/) report("FP CSR")
	}
	END {
		printf "guest/build.sh: %d instructions (%d data units skipped), %d not RV64IMA\n", n, data + 0, bad + 0
		exit (bad > 0 || n == 0)
	}' >&2
}

# ---------------------------------------------------------------------------
# 3. Kernel
# ---------------------------------------------------------------------------
if kernel_done; then
	log "[1-3/5] kernel cached: $KOUT"
else
KWORK="$WORK/kernel"
mkdir -p "$KWORK"
log "[1/5] extracting $KSRC_TARBALL ($KSRC_VERSION)"
tar -C "$KWORK" -xf "$KSRC_TARBALL"
KDIR="$KWORK/linux-source-6.1"
[ -d "$KDIR" ] || die "unexpected tarball layout (no linux-source-6.1/)"
KMAKE=(make -C "$KDIR" ARCH=riscv CROSS_COMPILE=$CROSS)

log "[2/5] configuring: tinyconfig + guest/kernel.config"
run "${KMAKE[@]}" tinyconfig
run env -C "$KDIR" ARCH=riscv CROSS_COMPILE=$CROSS \
	scripts/kconfig/merge_config.sh -m .config "$FRAGMENT"
run "${KMAKE[@]}" olddefconfig

# kconfig silently drops options whose dependencies are not met: check that
# every option of the fragment ended up as asked.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		if ! grep -qxF "$line" "$KDIR/.config"; then
			log "config option did not stick: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$KDIR/.config" || echo absent)'"
			bad=1
		fi
		;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }
		opt=${opt%% *}
		if grep -qE "^$opt=" "$KDIR/.config"; then
			log "config option did not stick: wanted '$line', got '$(grep -E "^$opt=" "$KDIR/.config")'"
			bad=1
		fi
		;;
	esac
done <"$FRAGMENT"
[ $bad -eq 0 ] || die "kernel config check failed (see above)"
cp "$KDIR/.config" "$KWORK/config"
log "config OK: $(grep -c '^CONFIG_.*=y' "$FRAGMENT") wanted options are =y"

log "[3/5] building Image with -j$JOBS (a few minutes; log: build.log)"
KSTART=$(date +%s)
# Condensed progress: every 100th line of make's output, plus warnings and
# errors; the whole output is in build.log.
if [ "${VMMIO_GUEST_VERBOSE:-0}" = 1 ]; then
	run "${KMAKE[@]}" -j"$JOBS" Image
elif ! "${KMAKE[@]}" -j"$JOBS" Image 2>&1 | tee -a "$BUILD_LOG" |
	awk '/warning:|error:|Error / || NR % 100 == 0 { print "guest/build.sh:   kernel: " $0; fflush() }' >&2; then
	log "FAILED: kernel build"
	tail -n 40 "$BUILD_LOG" >&2
	exit 1
fi
cp "$KDIR/arch/riscv/boot/Image" "$KWORK/Image"
check_isa "$KDIR/vmlinux" kernel || die "vmlinux contains compressed or floating-point instructions"
log "Image: $(stat -c %s "$KWORK/Image") bytes, built in $(($(date +%s) - KSTART)) s"

# init.c is compiled against the kernel tree's nolibc: keep it with the kernel.
mkdir -p "$KWORK/nolibc"
cp -a "$KDIR/tools/include/nolibc/." "$KWORK/nolibc/"
cp "$BUILD_LOG" "$KWORK/build.log"
printf '%s\n' "$KERNEL_INPUTS" >"$KWORK/inputs"
rm -rf "$KDIR" "$KOUT"
mv -T "$KWORK" "$KOUT"
fi
cp "$KOUT/Image" "$WORK/Image"
cp "$KOUT/config" "$WORK/config"

# ---------------------------------------------------------------------------
# 4. init (nolibc, RV64IMA only)
# ---------------------------------------------------------------------------
log "[4/5] building init with nolibc"
NOLIBC="$KOUT/nolibc"
run ${CROSS}gcc -static -nostdlib -ffreestanding -fno-stack-protector \
	-fno-asynchronous-unwind-tables -fno-pic -no-pie \
	-march=rv64ima -mabi=lp64 -Os -Wall -Wextra -Werror \
	-include "$NOLIBC/nolibc.h" -I "$NOLIBC" \
	-o "$WORK/init" "$INIT_C" -lgcc
${CROSS}strip "$WORK/init"

check_isa "$WORK/init" || die "init contains compressed or floating-point instructions"
# ELF e_flags: RVC bit (0x1) and float ABI bits (0x6) must be clear.
flags=$(${CROSS}readelf -h "$WORK/init" | awk '/Flags:/ { print $2 }')
[ $((flags & 0x7)) -eq 0 ] || die "init ELF flags $flags say RVC or a float ABI"
log "init: $(stat -c %s "$WORK/init") bytes, RV64IMA only"

# ---------------------------------------------------------------------------
# 5. initramfs
# ---------------------------------------------------------------------------
log "[5/5] packing initramfs.cpio"
ROOT="$WORK/rootfs"
mkdir -p "$ROOT/dev" "$ROOT/proc" "$ROOT/sys"
install -m 0755 "$WORK/init" "$ROOT/init"
# Fixed timestamps and owners: the archive depends only on its contents.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0 --reproducible >"$WORK/initramfs.cpio")
log "initramfs.cpio: $(stat -c %s "$WORK/initramfs.cpio") bytes"

# ---------------------------------------------------------------------------
# Publish atomically: only a complete directory ever appears at $OUT.
# ---------------------------------------------------------------------------
rm -rf "$ROOT"
rm -rf "$OUT" # a stale partial directory from an older script version
chmod 0755 "$WORK"
mv -T "$WORK" "$OUT"
trap - EXIT
log "done in $(($(date +%s) - START)) s: $OUT"
printf '%s\n' "$OUT"
