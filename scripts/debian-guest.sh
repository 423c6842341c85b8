#!/usr/bin/env bash
# Debian's own riscv64 kernel and busybox as a vmmio guest: no kernel build.
#
#   scripts/debian-guest.sh      fetch + build if needed; last stdout line = output dir
#
# 1. With a private apt configuration (own sources list, state, cache and
#    status file under the cache; APT::Architecture=riscv64; nothing of the
#    host's apt state is read or changed but its keyring), resolves the
#    kernel package `linux-image-riscv64` depends on (linux-image-6.12.*-riscv64)
#    and `busybox-static` in Debian trixie, and downloads both .debs. The
#    archive's URI is the one the host's own apt sources use (scripts/lib),
#    read at run time.
# 2. Unpacks them with dpkg-deb, decompresses the virtio modules (.ko.xz) and
#    their dependencies (the `depends=` of each module's .modinfo) and drops
#    their appended signatures (see strip_signature), and packs
#    an initramfs: /bin/busybox and its applets, /init (guest/debian/init),
#    the modules in load order (/lib/vmmio/modules: the virtio ones;
#    /lib/vmmio/modules.ext4: ext4, still xz-compressed, loaded when a disk
#    needs it), and
#    /sbin/vmmio-init,
#    the default guest's test program (guest/init.c, built here with the
#    riscv64 cross compiler and the nolibc headers of linux-source-6.1).
#
# Output: $cache/<key>/{Image,initramfs.cpio,inputs,release}; <key> is the
# sha256 of the package versions and of every input file. A cached output is
# used without any network access. The apt lists are fetched once
# (`apt-get update`) and again only when VMMIO_DEBIAN_UPDATE=1 or when a
# download fails because the archive moved on.
#
#   VMMIO_DEBIAN_CACHE=DIR   cache root (default ~/.cache/vmmio/debian)
#   VMMIO_DEBIAN_UPDATE=1    refresh the apt lists (newer packages, new key)
#   VMMIO_DEBIAN_SUITE=S     Debian suite (default trixie)
#
# Everything but the final path goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$HERE/.." && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
INIT_SH="$ROOT_DIR/guest/debian/init"
INIT_C="$ROOT_DIR/guest/init.c"
CACHE_ROOT="${VMMIO_DEBIAN_CACHE:-$HOME/.cache/vmmio/debian}"
SUITE="${VMMIO_DEBIAN_SUITE:-trixie}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
CROSS=riscv64-linux-gnu-
KSRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
# The modules the init loads, in this order, each after its dependencies: the
# transport and the class drivers at every boot (/lib/vmmio/modules); ext4
# (+ crc32c, which ext4's metadata checksums ask for at mount time through a
# modprobe the initramfs lacks) only when a disk holds an ext2/3/4 superblock
# (/lib/vmmio/modules.ext4): loading it costs over a billion guest instructions.
MODULES=(virtio_mmio virtio_blk virtio-rng virtio_net vmw_vsock_virtio_transport)
EXT4_MODULES=(ext4 crc32c_generic)

# shellcheck source=lib/apt-sources.sh
. "$HERE/lib/apt-sources.sh"

log() { printf 'debian-guest: %s\n' "$*" >&2; }
die() { printf 'debian-guest: ERROR: %s\n' "$*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb xz cpio sha256sum flock; do
	command -v "$tool" >/dev/null || die "$tool missing (scripts/install-deps.sh installs what this needs)"
done
[ -f "$KEYRING" ] || die "$KEYRING missing (package debian-archive-keyring)"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/lock"
if ! flock -n 9; then
	log "another debian-guest.sh is running, waiting for its lock"
	flock 9
fi

# ---------------------------------------------------------------------------
# 1. Private apt configuration
# ---------------------------------------------------------------------------
APT="$CACHE_ROOT/apt"
mkdir -p "$APT/etc/apt.conf.d" "$APT/etc/preferences.d" "$APT/etc/sources.list.d" \
	"$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE_ROOT/debs"
: >>"$APT/status"
# APT_CONFIG names this file instead of /etc/apt/apt.conf, and Dir::Etc
# points every other configuration lookup into the private tree.
cat >"$APT/apt.conf" <<CONF
Dir::Etc "$APT/etc";
Dir::State "$APT";
Dir::State::lists "$APT/lists";
Dir::State::status "$APT/status";
Dir::Cache "$APT/cache";
APT::Architecture "riscv64";
APT::Architectures { "riscv64"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Debug::NoLocking "true";
APT::Sandbox::User "root";
CONF
aptq() { APT_CONFIG="$APT/apt.conf" "$@"; }

write_sources() {
	local uri
	uri=$(archive_uri "$SUITE")
	[ -n "$uri" ] || uri=$(archive_uri bookworm)
	[ -n "$uri" ] || die "no Debian archive in the host's apt sources to take the URI from"
	# Written into the cache only, never into the project.
	printf 'deb [arch=riscv64 signed-by=%s] %s %s main\n' "$KEYRING" "$uri" "$SUITE" \
		>"$APT/etc/sources.list"
}

apt_update() {
	write_sources
	log "apt-get update ($SUITE, riscv64, private configuration in $APT)"
	aptq apt-get -q update >"$APT/update.log" 2>&1 ||
		{ sed -E 's#[a-z]+://[^/ ]+#<archive>#g' "$APT/update.log" >&2; die "apt-get update failed"; }
	# apt prints a warning (not an error) for a signature it cannot check.
	if grep -qE '^(W|E): .*(NO_PUBKEY|not signed|signature)' "$APT/update.log"; then
		sed -E 's#[a-z]+://[^/ ]+#<archive>#g' "$APT/update.log" >&2
		die "the $SUITE Release file does not verify against $KEYRING"
	fi
}

have_lists() { compgen -G "$APT/lists/*_Packages" >/dev/null; }
if [ "${VMMIO_DEBIAN_UPDATE:-0}" = 1 ] || ! have_lists; then
	apt_update
fi

# candidate PACKAGE: the version apt would take.
candidate() { aptq apt-cache policy "$1" | awk '/Candidate:/ { print $2 }'; }
resolve() {
	KMETA_VERSION=$(candidate linux-image-riscv64)
	[ -n "$KMETA_VERSION" ] && [ "$KMETA_VERSION" != "(none)" ] || die "no linux-image-riscv64 in $SUITE"
	# linux-image-riscv64 depends on exactly one versioned image package.
	KPKG=$(aptq apt-cache show "linux-image-riscv64=$KMETA_VERSION" |
		sed -n 's/^Depends: .*\(linux-image-6\.12[^ ,]*-riscv64\).*/\1/p' | head -n 1)
	[ -n "$KPKG" ] || die "linux-image-riscv64 $KMETA_VERSION does not depend on a linux-image-6.12.*-riscv64"
	KVERSION=$(candidate "$KPKG")
	BVERSION=$(candidate busybox-static)
	[ -n "$BVERSION" ] && [ "$BVERSION" != "(none)" ] || die "no busybox-static in $SUITE"
}
resolve

# The test program is optional (a shell needs only busybox): built when the
# cross compiler and the nolibc headers are there.
CAN_BUILD_INIT=0
KSRC_VERSION=none
if command -v "${CROSS}gcc" >/dev/null && [ -f "$KSRC_TARBALL" ]; then
	CAN_BUILD_INIT=1
	KSRC_VERSION=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo unknown)
fi

INPUTS=$(
	printf 'suite %s\n' "$SUITE"
	printf '%s %s\n' "$KPKG" "$KVERSION"
	printf 'busybox-static %s\n' "$BVERSION"
	printf 'debian-guest.sh %s\n' "$(sha256sum <"$SELF" | cut -d' ' -f1)"
	printf 'init %s\n' "$(sha256sum <"$INIT_SH" | cut -d' ' -f1)"
	if [ $CAN_BUILD_INIT = 1 ]; then
		printf 'init.c %s\n' "$(sha256sum <"$INIT_C" | cut -d' ' -f1)"
		printf 'gcc %s\n' "$(${CROSS}gcc --version | head -n 1)"
		printf 'linux-source-6.1 %s\n' "$KSRC_VERSION"
	else
		printf 'vmmio-init none\n'
	fi
)
KEY=$(printf '%s\n' "$INPUTS" | sha256sum | cut -d' ' -f1)
OUT="$CACHE_ROOT/$KEY"
log "kernel $KPKG $KVERSION, busybox-static $BVERSION"
if [ -f "$OUT/Image" ] && [ -f "$OUT/initramfs.cpio" ]; then
	log "cached: $OUT"
	printf '%s\n' "$OUT"
	exit 0
fi

START=$EPOCHREALTIME
rm -rf "$CACHE_ROOT/.tmp-"*
WORK=$(mktemp -d "$CACHE_ROOT/.tmp-XXXXXX")
# (jobs -p: a background init build still running is stopped first.)
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# 2. Download (once per version)
# ---------------------------------------------------------------------------
# deb PACKAGE VERSION: path of the cached .deb, downloaded if missing.
deb() {
	local f
	f=$(compgen -G "$CACHE_ROOT/debs/${1}_*_riscv64.deb" | while read -r d; do
		[ "$(dpkg-deb -f "$d" Version)" = "$2" ] && echo "$d"
	done | head -n 1)
	if [ -z "$f" ]; then
		log "downloading $1 $2"
		# (the archive's host name is kept out of logs)
		(cd "$CACHE_ROOT/debs" && aptq apt-get -q download "$1=$2" 2>&1 | sed -E 's#[a-z]+://[^/ ]+#<archive>#g' >&2) || return 1
		f=$(deb "$1" "$2")
	fi
	printf '%s\n' "$f"
}
if ! KDEB=$(deb "$KPKG" "$KVERSION") || ! BDEB=$(deb busybox-static "$BVERSION"); then
	# The lists are older than the archive: refresh once and start over.
	[ "${VMMIO_DEBIAN_UPDATED:-0}" = 1 ] && die "download failed"
	log "download failed: refreshing the apt lists and starting over"
	exec 9>&-
	VMMIO_DEBIAN_UPDATE=1 VMMIO_DEBIAN_UPDATED=1 exec "$SELF"
fi

# ---------------------------------------------------------------------------
# The test program, built in the background while the packages unpack.
# nolibc comes from linux-source-6.1: kept in the cache per version, taken from the default guest's kernel cache when that has the same version
# (guest/build.sh keeps it there), else extracted from the tarball (seconds).
# ---------------------------------------------------------------------------
build_init() {
	local ksrc nolibc="$CACHE_ROOT/nolibc-$1" d
	if [ ! -f "$nolibc/nolibc.h" ]; then
		rm -rf "$nolibc.tmp"
		for d in "${VMMIO_GUEST_CACHE:-$HOME/.cache/vmmio/guest}"/kernel-*; do
			if [ -f "$d/nolibc/nolibc.h" ] && grep -qxF "linux-source-6.1 $1" "$d/inputs" 2>/dev/null; then
				cp -a "$d/nolibc" "$nolibc.tmp"
				break
			fi
		done
		if [ ! -d "$nolibc.tmp" ]; then
			ksrc="$WORK/ksrc"
			mkdir -p "$ksrc"
			tar -C "$ksrc" -xJf "$KSRC_TARBALL" linux-source-6.1/tools/include/nolibc
			mv "$ksrc/linux-source-6.1/tools/include/nolibc" "$nolibc.tmp"
		fi
		mv -T "$nolibc.tmp" "$nolibc"
	fi
	# The same flags as guest/build.sh's init (RV64IMA, no libc).
	${CROSS}gcc -static -nostdlib -ffreestanding -fno-stack-protector \
		-fno-asynchronous-unwind-tables -fno-pic -no-pie \
		-march=rv64ima -mabi=lp64 -Os -Wall -Wextra -Werror \
		-include "$nolibc/nolibc.h" -I "$nolibc" \
		-o "$WORK/vmmio-init" "$INIT_C" -lgcc >&2
	${CROSS}strip "$WORK/vmmio-init"
}
if [ $CAN_BUILD_INIT = 1 ]; then
	log "building vmmio-init (guest/init.c, nolibc) in the background"
	build_init "$KSRC_VERSION" &
	INIT_PID=$!
fi

# ---------------------------------------------------------------------------
# 3. Unpack
# ---------------------------------------------------------------------------
log "unpacking $(basename "$KDEB") and $(basename "$BDEB")"
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BDEB" "$WORK/busybox"
IMAGE=$(compgen -G "$WORK/kernel/boot/vmlinu[xz]-*" | head -n 1) || true
[ -n "$IMAGE" ] || die "no /boot/vmlinux-* in $KPKG"
RELEASE=${IMAGE##*/vmlinu?-}
# Debian's riscv64 vmlinux-* is the kernel's uncompressed Image (RISC-V Image
# header + EFI stub); a vmlinuz would be compressed.
case "$(head -c 2 "$IMAGE" | od -An -c | tr -d ' ')" in
MZ) ;;
*) die "$IMAGE is not an uncompressed Image (no MZ/Image header)" ;;
esac
MODDIR="$WORK/kernel/usr/lib/modules/$RELEASE"
[ -d "$MODDIR" ] || MODDIR="$WORK/kernel/lib/modules/$RELEASE"
[ -d "$MODDIR" ] || die "no modules directory for $RELEASE"

# ---------------------------------------------------------------------------
# 4. Modules: each after the modules its .modinfo `depends=` names
# ---------------------------------------------------------------------------
declare -A MODPATH=() LOADED=()
while IFS= read -r f; do
	name=$(basename "$f" .ko.xz)
	MODPATH[${name//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko.xz')
add_module() {
	local name=${1//-/_} dep deps
	[ -n "${LOADED[$name]:-}" ] && return 0
	[ -n "${MODPATH[$name]:-}" ] || die "module $1 not in $KPKG"
	LOADED[$name]=1
	deps=$(xz -dc "${MODPATH[$name]}" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1)
	for dep in ${deps//,/ }; do
		add_module "$dep"
	done
	ORDER+=("$name")
}
RFS="$WORK/rootfs"
mkdir -p "$RFS"/{bin,sbin,dev,proc,sys,tmp,mnt,root,etc,lib/vmmio}
# pack_modules LIST xz|ko NAME...: the modules NAME and their dependencies not
# packed yet, listed in load order in /lib/vmmio/LIST, decompressed on the host
# (ko) or kept as Debian's .ko.xz for the guest to decompress when it needs
# them (xz: ext4.ko alone is 7 MB, which the kernel would unpack from the
# initramfs at every boot).
# strip_signature FILE: drops the module signature Debian appends (PKCS#7, then
# struct module_signature, whose last 4 bytes are the big-endian length of the
# PKCS#7 blob, then the magic string). Checking it (SHA-256 of the module and
# an ECDSA verify in generic C) was half of the boot's guest instructions
# once the crypto self-tests were off (vmmio profile); without it the kernel
# logs "module verification failed" and taints itself (E), as for any
# unsigned module (CONFIG_MODULE_SIG_FORCE is off). The ext4 modules keep it.
strip_signature() {
	local f=$1 magic='~Module signature appended~' size siglen
	[ "$(tail -c 28 "$f" | head -c 27)" = "$magic" ] || return 0
	size=$(stat -c %s "$f")
	siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print (($1*256+$2)*256+$3)*256+$4}')
	truncate -s $((size - 40 - siglen)) "$f"
}
pack_modules() {
	local list=$1 form=$2 name
	shift 2
	ORDER=()
	for name in "$@"; do add_module "$name"; done
	log "$list in load order: ${ORDER[*]}"
	: >"$RFS/lib/vmmio/$list"
	for name in "${ORDER[@]}"; do
		if [ "$form" = ko ]; then
			xz -dc "${MODPATH[$name]}" >"$RFS/lib/vmmio/$name.ko"
			strip_signature "$RFS/lib/vmmio/$name.ko"
		else
			cp "${MODPATH[$name]}" "$RFS/lib/vmmio/$name.ko.xz"
		fi
		printf '%s\n' "$name" >>"$RFS/lib/vmmio/$list"
	done
}
pack_modules modules ko "${MODULES[@]}"
pack_modules modules.ext4 xz "${EXT4_MODULES[@]}"

# ---------------------------------------------------------------------------
# 5. busybox, the init script, the test program
# ---------------------------------------------------------------------------
BB=$(compgen -G "$WORK/busybox/usr/bin/busybox" || compgen -G "$WORK/busybox/bin/busybox") ||
	die "no busybox in busybox-static"
install -m 0755 "$BB" "$RFS/bin/busybox"
# The applets: symlinks created by the init at boot (`busybox --install -s`),
# since this host cannot run a riscv64 binary to list them.
install -m 0755 "$INIT_SH" "$RFS/init"
printf '%s\n' "$RELEASE" >"$RFS/etc/vmmio-release"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$RFS/etc/passwd"
printf 'root:x:0:\n' >"$RFS/etc/group"

if [ $CAN_BUILD_INIT = 1 ]; then
	wait "$INIT_PID" || die "building vmmio-init failed"
	install -m 0755 "$WORK/vmmio-init" "$RFS/sbin/vmmio-init"
else
	log "no ${CROSS}gcc or $KSRC_TARBALL: no vmmio-init (the shell works; the device tests need scripts/install-deps.sh)"
fi

log "packing initramfs.cpio"
find "$RFS" -exec touch -h -d @0 {} +
(cd "$RFS" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0 --reproducible >"$WORK/initramfs.cpio")
cp "$IMAGE" "$WORK/Image"
cp "$WORK/kernel/boot/config-$RELEASE" "$WORK/config"
printf '%s\n' "$INPUTS" >"$WORK/inputs"
printf '%s\n' "$RELEASE" >"$WORK/release"
rm -rf "$WORK/kernel" "$WORK/busybox" "$WORK/ksrc" "$WORK/vmmio-init" "$RFS"
chmod 0755 "$WORK"
rm -rf "$OUT"
mv -T "$WORK" "$OUT"
trap - EXIT
us=$(( ${EPOCHREALTIME/./} - ${START/./} ))
log "Image $(stat -c %s "$OUT/Image") bytes, initramfs.cpio $(stat -c %s "$OUT/initramfs.cpio") bytes, built in $((us / 1000000)).$(printf '%02d' $((us % 1000000 / 10000))) s"
log "done: $OUT"
printf '%s\n' "$OUT"
