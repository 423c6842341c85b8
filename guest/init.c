// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * vmmio-init: PID 1 of the vmmio default guest.
 *
 * Built without a libc, on top of the kernel's own tools/include/nolibc
 * (Linux 6.1), for RV64IMA (no compressed, no floating-point instructions):
 *
 *   riscv64-linux-gnu-gcc -static -nostdlib -ffreestanding \
 *       -fno-stack-protector -march=rv64ima -mabi=lp64 -Os \
 *       -include <linux>/tools/include/nolibc/nolibc.h -o init init.c -lgcc
 *
 * What it does (see guest/README.md for the full contract):
 *   1. mounts devtmpfs on /dev, proc on /proc, sysfs on /sys, makes sure
 *      fds 0/1/2 are the console and prints "vmmio-init: started";
 *   2. reads /proc/cmdline and runs the tests named in vmmio.tests=LIST
 *      (virtio, blk, rng, hvc, blkreqs, dd, vsock, vsockbw, crash,
 *      blkresize, net, netbw, features), in the order given, each
 *      printing one "vmmio-init: <test> OK ..." or "... FAIL <reason>" line;
 *   3. prints a summary and "vmmio-init: done", syncs and powers off.
 *
 * Every line this program prints starts with "vmmio-init: " so that a host
 * can pick them out of the kernel log on the same console.
 *
 * nolibc in 6.1 has no clock_gettime, pread/pwrite, sync, fcntl or O_DIRECT;
 * those are done below with its my_syscallN() helpers and the kernel's
 * uapi constants.
 */

/* ------------------------------------------------------------------------ */
/* Constants nolibc 6.1 does not define (values from asm-generic uapi, which */
/* RISC-V uses unchanged).                                                   */
/* ------------------------------------------------------------------------ */

#ifndef O_DIRECT
#define O_DIRECT 040000 /* asm-generic/fcntl.h */
#endif
#ifndef O_CLOEXEC
#define O_CLOEXEC 02000000
#endif
#ifndef F_GETFD
#define F_GETFD 1
#endif
#ifndef MS_NOSUID
#define MS_NOSUID 2
#endif
#ifndef MS_NOEXEC
#define MS_NOEXEC 8
#endif
#ifndef EBUSY
#define EBUSY 16
#endif

#define PREFIX "vmmio-init: "

/* Size of the region the blk and blkreqs tests use, at the start of vda. */
#define BLK_REGION (1024UL * 1024UL)
/* dd: total bytes and block size. */
#define DD_TOTAL (16UL * 1024UL * 1024UL)
#define DD_BLOCK (1024UL * 1024UL)

/* Two page-aligned 1 MiB buffers, in .bss (O_DIRECT needs aligned memory). */
static unsigned char buf_a[BLK_REGION] __attribute__((aligned(4096)));
static unsigned char buf_b[BLK_REGION] __attribute__((aligned(4096)));

/* Options from /proc/cmdline, with their defaults. */
static char opt_tests[512];                  /* vmmio.tests=LIST, "" = none */
static unsigned long opt_blkreqs = 70000;    /* vmmio.blkreqs=N */
static unsigned long opt_seed = 0x766d6d696fUL; /* vmmio.pattern_seed=N */
static char opt_hvc[64] = "/dev/hvc1";       /* vmmio.hvc=PATH */
static unsigned long opt_timeout;            /* vmmio.timeout=SECONDS, 0 = off */

static unsigned int n_ok, n_fail;

/* ------------------------------------------------------------------------ */
/* Small system call wrappers missing from nolibc 6.1.                       */
/* ------------------------------------------------------------------------ */

/* clock_gettime(CLOCK_MONOTONIC) in nanoseconds; 0 if the call fails. */
static unsigned long long now_ns(void)
{
	struct timespec ts;
	long ret = my_syscall2(__NR_clock_gettime, CLOCK_MONOTONIC, &ts);

	if (ret < 0)
		return 0;
	return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* pwrite64/pread64: one system call, one block request with O_DIRECT.
 * Return the byte count or -errno. */
static long xpwrite(int fd, const void *buf, unsigned long len, unsigned long off)
{
	return my_syscall4(__NR_pwrite64, fd, buf, len, off);
}

static long xpread(int fd, void *buf, unsigned long len, unsigned long off)
{
	return my_syscall4(__NR_pread64, fd, buf, len, off);
}

static void xsync(void)
{
	my_syscall0(__NR_sync);
}

/* True if fd is an open file descriptor. */
static int fd_is_open(int fd)
{
	return my_syscall3(__NR_fcntl, fd, F_GETFD, 0) >= 0;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

/* Result lines: count them for the summary. */
static void ok(void)   { n_ok++; }
static void fail(void) { n_fail++; }

/* Print "<int>.<2 decimals>" for value_x100 (nolibc's printf has no %f). */
static void print_fixed2(unsigned long long v_x100)
{
	unsigned long long frac = v_x100 % 100;

	printf("%llu.%s%llu", v_x100 / 100, frac < 10 ? "0" : "", frac);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

/* Read a small text file into buf (NUL-terminated, trailing newline
 * stripped). Returns the length or -errno. */
static long read_text(const char *path, char *buf, unsigned long size)
{
	long n, total = 0;
	int fd = open(path, O_RDONLY, 0);

	if (fd < 0)
		return -errno;
	while ((unsigned long)total < size - 1) {
		n = read(fd, buf + total, size - 1 - total);
		if (n < 0) {
			n = -errno;
			close(fd);
			return n;
		}
		if (n == 0)
			break;
		total += n;
	}
	close(fd);
	buf[total] = 0;
	while (total > 0 && (buf[total - 1] == '\n' || buf[total - 1] == ' '))
		buf[--total] = 0;
	return total;
}

/* Parse an unsigned decimal or 0x-prefixed hexadecimal number. Stops at the
 * first character that is not a digit. */
static unsigned long parse_ulong(const char *s)
{
	unsigned long v = 0;
	int base = 10;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (;; s++) {
		int d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			break;
		v = v * base + d;
	}
	return v;
}

/* Copy the value of a "key=value" token (ending at a space or NUL) into
 * dst, truncating to size-1 bytes. */
static void copy_token(char *dst, unsigned long size, const char *src)
{
	unsigned long i = 0;

	while (src[i] && src[i] != ' ' && src[i] != '\n' && i < size - 1) {
		dst[i] = src[i];
		i++;
	}
	dst[i] = 0;
}

/* Deterministic test pattern: each 8-byte word is a pure function of the
 * seed and its byte offset on the disk (a splitmix64 step), so any block can
 * be regenerated on its own and a block written to the wrong place, or a
 * stale block, does not compare equal. */
static unsigned long long pattern_word(unsigned long long seed, unsigned long long off)
{
	unsigned long long z = seed + off * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill_pattern(unsigned char *buf, unsigned long len,
			 unsigned long long seed, unsigned long long disk_off)
{
	unsigned long long *w = (unsigned long long *)buf;
	unsigned long i;

	for (i = 0; i < len / 8; i++)
		w[i] = pattern_word(seed, disk_off + i * 8);
}

/* Index of the first differing byte, or -1 if equal. */
static long first_diff(const unsigned char *a, const unsigned char *b, unsigned long len)
{
	unsigned long i;

	for (i = 0; i < len; i++)
		if (a[i] != b[i])
			return i;
	return -1;
}

/* Write/read len bytes at off, retrying short transfers. Return 0 or
 * -errno (-EIO for an unexpected end of device). */
static long write_full(int fd, const unsigned char *buf, unsigned long len, unsigned long off)
{
	while (len) {
		long n = xpwrite(fd, buf, len, off);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		buf += n; off += n; len -= n;
	}
	return 0;
}

static long read_full(int fd, unsigned char *buf, unsigned long len, unsigned long off)
{
	while (len) {
		long n = xpread(fd, buf, len, off);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		buf += n; off += n; len -= n;
	}
	return 0;
}

/* Capacity of vda in bytes from /sys/block/vda/size (512-byte sectors), or 0. */
static unsigned long long vda_capacity(void)
{
	char txt[64];

	if (read_text("/sys/block/vda/size", txt, sizeof(txt)) <= 0)
		return 0;
	return (unsigned long long)parse_ulong(txt) * 512ULL;
}

/* Logical block size of vda (the O_DIRECT granule), 512 if unknown. */
static unsigned long vda_block_size(void)
{
	char txt[32];
	unsigned long v;

	if (read_text("/sys/block/vda/queue/logical_block_size", txt, sizeof(txt)) <= 0)
		return 512;
	v = parse_ulong(txt);
	if (v < 512 || v > 65536 || (v & (v - 1)))
		return 512;
	return v;
}

/* ------------------------------------------------------------------------ */
/* Tests. Each prints exactly one OK or FAIL result line (plus info lines).  */
/* ------------------------------------------------------------------------ */

/* virtio: list /sys/bus/virtio/devices and each device's ID. */
static void test_virtio(void)
{
	static char names[64][32];
	char dents[2048], path[128], id[32];
	int fd, n, count = 0, i, j;

	fd = open("/sys/bus/virtio/devices", O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0) {
		printf(PREFIX "virtio FAIL no /sys/bus/virtio/devices errno=%d\n", errno);
		fail();
		return;
	}
	while ((n = getdents64(fd, (struct linux_dirent64 *)dents, sizeof(dents))) > 0) {
		for (i = 0; i < n;) {
			struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + i);

			i += d->d_reclen;
			if (d->d_name[0] == '.' || count >= 64)
				continue;
			copy_token(names[count], sizeof(names[0]), d->d_name);
			count++;
		}
	}
	close(fd);

	/* Sort "virtio10" after "virtio9": by length, then bytes. */
	for (i = 1; i < count; i++) {
		for (j = i; j > 0; j--) {
			size_t la = strlen(names[j - 1]), lb = strlen(names[j]);
			char tmp[32];

			if (la < lb || (la == lb && strcmp(names[j - 1], names[j]) <= 0))
				break;
			memcpy(tmp, names[j], sizeof(tmp));
			memcpy(names[j], names[j - 1], sizeof(tmp));
			memcpy(names[j - 1], tmp, sizeof(tmp));
		}
	}

	for (i = 0; i < count; i++) {
		strcpy(path, "/sys/bus/virtio/devices/");
		strlcat(path, names[i], sizeof(path));
		strlcat(path, "/device", sizeof(path));
		if (read_text(path, id, sizeof(id)) <= 0)
			strcpy(id, "?");
		printf(PREFIX "virtio %s device=%s\n", names[i], id);
	}
	if (count == 0) {
		printf(PREFIX "virtio FAIL count=0\n");
		fail();
		return;
	}
	printf(PREFIX "virtio OK count=%d\n", count);
	ok();
}

/* blk: write a pattern over the first 1 MiB of vda, fsync, read it back
 * around the page cache, compare. */
static void test_blk(void)
{
	unsigned long long cap = vda_capacity();
	long r, diff;
	int fd, rfd, direct = 1;

	printf(PREFIX "blk capacity sectors=%llu bytes=%llu\n", cap / 512, cap);
	fd = open("/dev/vda", O_RDWR, 0);
	if (fd < 0) {
		printf(PREFIX "blk FAIL open /dev/vda errno=%d\n", errno);
		fail();
		return;
	}
	if (cap < BLK_REGION) {
		printf(PREFIX "blk FAIL capacity %llu < %lu\n", cap, BLK_REGION);
		fail();
		close(fd);
		return;
	}

	fill_pattern(buf_a, BLK_REGION, opt_seed, 0);
	r = write_full(fd, buf_a, BLK_REGION, 0);
	if (r < 0) {
		printf(PREFIX "blk FAIL write errno=%ld\n", -r);
		goto out_fail;
	}
	if (fsync(fd) < 0) {
		printf(PREFIX "blk FAIL fsync errno=%d\n", errno);
		goto out_fail;
	}

	/* Read back from the device itself, not the page cache: O_DIRECT, or
	 * if that is refused, drop the buffer cache and read normally. */
	rfd = open("/dev/vda", O_RDONLY | O_DIRECT, 0);
	if (rfd < 0) {
		direct = 0;
		if (ioctl(fd, BLKFLSBUF, 0) < 0) {
			printf(PREFIX "blk FAIL no O_DIRECT and BLKFLSBUF errno=%d\n", errno);
			goto out_fail;
		}
		rfd = fd;
	}
	memset(buf_b, 0, BLK_REGION);
	r = read_full(rfd, buf_b, BLK_REGION, 0);
	if (rfd != fd)
		close(rfd);
	if (r < 0) {
		printf(PREFIX "blk FAIL read errno=%ld\n", -r);
		goto out_fail;
	}
	diff = first_diff(buf_a, buf_b, BLK_REGION);
	if (diff >= 0) {
		printf(PREFIX "blk FAIL mismatch at byte %ld (%s read)\n", diff,
		       direct ? "O_DIRECT" : "uncached");
		goto out_fail;
	}
	close(fd);
	printf(PREFIX "blk OK bytes=%lu\n", BLK_REGION);
	ok();
	return;

out_fail:
	close(fd);
	fail();
}

/* crash: write the pattern over the first 1 MiB of vda, fsync, print
 * "crash SYNCED", then keep the disk busy (rewriting the second MiB) until
 * the host kills the machine: the host checks the first MiB survived. */
static void test_crash(void)
{
	unsigned long round;
	long r;
	int fd;

	fd = open("/dev/vda", O_RDWR, 0);
	if (fd < 0 || vda_capacity() < 2 * BLK_REGION) {
		printf(PREFIX "crash FAIL open /dev/vda or capacity < 2 MiB errno=%d\n", errno);
		fail();
		return;
	}
	fill_pattern(buf_a, BLK_REGION, opt_seed, 0);
	r = write_full(fd, buf_a, BLK_REGION, 0);
	if (r < 0 || fsync(fd) < 0) {
		printf(PREFIX "crash FAIL write or fsync errno=%d\n", errno);
		close(fd);
		fail();
		return;
	}
	printf(PREFIX "crash SYNCED bytes=%lu\n", BLK_REGION);
	for (round = 1; round < 100000; round++) {
		fill_pattern(buf_b, BLK_REGION, opt_seed + round, BLK_REGION);
		if (write_full(fd, buf_b, BLK_REGION, BLK_REGION) < 0 || fsync(fd) < 0)
			break;
	}
	printf(PREFIX "crash FAIL not killed after %lu rounds\n", round);
	close(fd);
	fail();
}

/* blkresize: the host resizes vda while the guest runs (vmmio boot
 * --api-sock, {"resize_disk": {"index": 0}}). Prints a "waiting" line with
 * the capacity now, waits up to 120 s for /sys/block/vda/size to change,
 * then reads the last sector of the new size. */
static void test_blkresize(void)
{
	unsigned long long before = vda_capacity(), cap = before;
	unsigned long long deadline = now_ns() + 120ULL * 1000000000ULL;
	long r;
	int fd;

	printf(PREFIX "blkresize waiting sectors=%llu\n", before / 512);
	while (cap == before && now_ns() < deadline) {
		msleep(10);
		cap = vda_capacity();
	}
	if (cap == before) {
		printf(PREFIX "blkresize FAIL capacity still %llu sectors after 120 s\n",
		       before / 512);
		fail();
		return;
	}
	if (cap < 512) {
		printf(PREFIX "blkresize OK sectors=0\n");
		ok();
		return;
	}
	fd = open("/dev/vda", O_RDONLY, 0);
	if (fd < 0) {
		printf(PREFIX "blkresize FAIL open /dev/vda errno=%d\n", errno);
		fail();
		return;
	}
	r = read_full(fd, buf_b, 512, cap - 512);
	close(fd);
	if (r < 0) {
		printf(PREFIX "blkresize FAIL reading the last sector errno=%ld\n", -r);
		fail();
		return;
	}
	printf(PREFIX "blkresize OK sectors=%llu\n", cap / 512);
	ok();
}

/* rng: 4096 bytes from /dev/hwrng within 10 s, not all bytes equal. */
static void test_rng(void)
{
	unsigned long got = 0, i;
	unsigned long long deadline = now_ns() + 10ULL * 1000000000ULL;
	int fd = open("/dev/hwrng", O_RDONLY | O_NONBLOCK, 0);

	if (fd < 0) {
		printf(PREFIX "rng FAIL open /dev/hwrng errno=%d\n", errno);
		fail();
		return;
	}
	/* Non-blocking reads with a deadline, so a silent device cannot hang
	 * the guest: EAGAIN means "request queued, nothing yet". */
	while (got < 4096) {
		long n = read(fd, buf_a + got, 4096 - got);

		if (n > 0) {
			got += n;
			continue;
		}
		if (n == 0 || errno != EAGAIN) {
			printf(PREFIX "rng FAIL read errno=%d after %lu bytes\n",
			       n == 0 ? 0 : errno, got);
			close(fd);
			fail();
			return;
		}
		if (now_ns() > deadline) {
			printf(PREFIX "rng FAIL timeout after %lu bytes\n", got);
			close(fd);
			fail();
			return;
		}
		msleep(1);
	}
	close(fd);
	for (i = 1; i < got; i++)
		if (buf_a[i] != buf_a[0])
			break;
	if (i == got) {
		printf(PREFIX "rng FAIL all %lu bytes are 0x%x\n", got, buf_a[0]);
		fail();
		return;
	}
	printf(PREFIX "rng OK bytes=%lu\n", got);
	ok();
}

/* hvc: one line out through the virtio console. Our kernel has the SBI
 * console as hvc0, so the first virtio console port is hvc1 (override
 * with vmmio.hvc=/dev/hvcN). */
static void test_hvc(void)
{
	static const char line[] = "vmmio-hvc: hello from the guest\n";
	long n;
	int fd = open(opt_hvc, O_WRONLY | O_NOCTTY, 0);

	if (fd < 0) {
		printf(PREFIX "hvc FAIL open %s errno=%d\n", opt_hvc, errno);
		fail();
		return;
	}
	n = write(fd, line, sizeof(line) - 1);
	close(fd);
	if (n != (long)sizeof(line) - 1) {
		printf(PREFIX "hvc FAIL write %s returned %ld errno=%d\n", opt_hvc, n, errno);
		fail();
		return;
	}
	printf(PREFIX "hvc OK\n");
	ok();
}

/* blkreqs: N round trips of one logical block, each a separate O_DIRECT
 * write request followed by a read request, over different blocks of the
 * first 1 MiB; every block's data also depends on the round number. */
static void test_blkreqs(void)
{
	unsigned long bs = vda_block_size();
	unsigned long nblocks = BLK_REGION / bs, i;
	unsigned long long cap = vda_capacity();
	int fd;

	if (cap < BLK_REGION) {
		printf(PREFIX "blkreqs FAIL capacity %llu < %lu\n", cap, BLK_REGION);
		fail();
		return;
	}
	fd = open("/dev/vda", O_RDWR | O_DIRECT, 0);
	if (fd < 0) {
		printf(PREFIX "blkreqs FAIL open /dev/vda O_DIRECT errno=%d\n", errno);
		fail();
		return;
	}
	for (i = 0; i < opt_blkreqs; i++) {
		/* 1021 is prime and odd, so it walks all blocks, never two
		 * neighbours in a row. */
		unsigned long off = ((i * 1021UL) % nblocks) * bs;
		long r;

		fill_pattern(buf_a, bs, opt_seed ^ (i * 0x100000001ULL), off);
		r = xpwrite(fd, buf_a, bs, off);
		if (r != (long)bs) {
			printf(PREFIX "blkreqs FAIL write i=%lu off=%lu ret=%ld\n", i, off, r);
			goto out_fail;
		}
		memset(buf_b, 0xa5, bs);
		r = xpread(fd, buf_b, bs, off);
		if (r != (long)bs) {
			printf(PREFIX "blkreqs FAIL read i=%lu off=%lu ret=%ld\n", i, off, r);
			goto out_fail;
		}
		if (memcmp(buf_a, buf_b, bs) != 0) {
			printf(PREFIX "blkreqs FAIL mismatch i=%lu off=%lu at byte %ld\n",
			       i, off, first_diff(buf_a, buf_b, bs));
			goto out_fail;
		}
		if ((i + 1) % 16384 == 0 && i + 1 < opt_blkreqs)
			printf(PREFIX "blkreqs progress n=%lu\n", i + 1);
	}
	close(fd);
	printf(PREFIX "blkreqs OK n=%lu\n", opt_blkreqs);
	ok();
	return;

out_fail:
	close(fd);
	fail();
}

/* dd: 16 MiB written then read in 1 MiB O_DIRECT requests, timed with
 * CLOCK_MONOTONIC. MB = 10^6 bytes. */
static void test_dd(void)
{
	unsigned long long cap = vda_capacity(), t0, t1, t2, wns, rns;
	unsigned long off;
	long r;
	int fd;

	if (cap < DD_TOTAL) {
		printf(PREFIX "dd FAIL capacity %llu < %lu\n", cap, DD_TOTAL);
		fail();
		return;
	}
	fd = open("/dev/vda", O_RDWR | O_DIRECT, 0);
	if (fd < 0) {
		printf(PREFIX "dd FAIL open /dev/vda O_DIRECT errno=%d\n", errno);
		fail();
		return;
	}
	fill_pattern(buf_a, DD_BLOCK, opt_seed, 0);

	t0 = now_ns();
	for (off = 0; off < DD_TOTAL; off += DD_BLOCK) {
		r = write_full(fd, buf_a, DD_BLOCK, off);
		if (r < 0) {
			printf(PREFIX "dd FAIL write off=%lu errno=%ld\n", off, -r);
			goto out_fail;
		}
	}
	if (fsync(fd) < 0) {
		printf(PREFIX "dd FAIL fsync errno=%d\n", errno);
		goto out_fail;
	}
	t1 = now_ns();
	for (off = 0; off < DD_TOTAL; off += DD_BLOCK) {
		r = read_full(fd, buf_b, DD_BLOCK, off);
		if (r < 0) {
			printf(PREFIX "dd FAIL read off=%lu errno=%ld\n", off, -r);
			goto out_fail;
		}
	}
	t2 = now_ns();
	close(fd);

	if (memcmp(buf_a, buf_b, DD_BLOCK) != 0) {
		printf(PREFIX "dd FAIL last block read back differs\n");
		fail();
		return;
	}
	wns = t1 > t0 ? t1 - t0 : 1;
	rns = t2 > t1 ? t2 - t1 : 1;
	/* MB/s * 100 = bytes * 100 / 1e6 / (ns / 1e9) = bytes * 1e5 / ns */
	printf(PREFIX "dd write MB/s=");
	print_fixed2((unsigned long long)DD_TOTAL * 100000ULL / wns);
	printf(" read MB/s=");
	print_fixed2((unsigned long long)DD_TOTAL * 100000ULL / rns);
	printf("\n");
	ok();
	return;

out_fail:
	close(fd);
	fail();
}

/* ------------------------------------------------------------------------ */
/* vsock: AF_VSOCK stream sockets to the host through virtio-vsock.          */
/* nolibc 6.1 has no socket calls: raw system calls and the uapi layout of   */
/* struct sockaddr_vm (linux/vm_sockets.h).                                   */
/* ------------------------------------------------------------------------ */

#define AF_VSOCK_ 40
#define SOCK_STREAM_ 1
#define VMADDR_CID_ANY_ 0xffffffffU
#define VMADDR_CID_HOST_ 2U
#define SHUT_WR_ 1
/* Host port the test connects to (the host echoes), guest port it listens
 * on, bytes echoed, chunk per round trip. */
#define VSOCK_ECHO_PORT 1234
#define VSOCK_LISTEN_PORT 5000
#define VSOCK_ECHO_BYTES (1024UL * 1024UL)
#define VSOCK_CHUNK (64UL * 1024UL)
/* vsockbw: bytes sent to the host's sink port. */
#define VSOCK_BW_PORT 1235
#define VSOCK_BW_BYTES (16UL * 1024UL * 1024UL)

struct sockaddr_vm_ {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

static long vsock_socket(void)
{
	return my_syscall3(__NR_socket, AF_VSOCK_, SOCK_STREAM_, 0);
}

static long vsock_addr_call(long nr, int fd, unsigned int cid, unsigned int port)
{
	struct sockaddr_vm_ a;

	memset(&a, 0, sizeof(a));
	a.svm_family = AF_VSOCK_;
	a.svm_cid = cid;
	a.svm_port = port;
	return my_syscall3(nr, fd, &a, sizeof(a));
}

/* Connects a new socket to the host's port; fd or -errno. */
static long vsock_connect_host(unsigned int port)
{
	long fd = vsock_socket(), r;

	if (fd < 0)
		return fd;
	r = vsock_addr_call(__NR_connect, fd, VMADDR_CID_HOST_, port);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* write(2)/read(2) of exactly len bytes on a socket; 0 or -errno
 * (-EIO for an early end of stream). */
static long sock_write_all(int fd, const unsigned char *buf, unsigned long len)
{
	while (len) {
		long n = my_syscall3(__NR_write, fd, buf, len);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= n;
	}
	return 0;
}

static long sock_read_all(int fd, unsigned char *buf, unsigned long len)
{
	while (len) {
		long n = my_syscall3(__NR_read, fd, buf, len);

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= n;
	}
	return 0;
}

/* (a) 1 MiB of pattern to host port 1234, read back echoed, 64 KiB per
 * round trip; then a clean close. Returns 0 or prints why and returns -1. */
static int vsock_echo(void)
{
	unsigned long off;
	long fd = vsock_connect_host(VSOCK_ECHO_PORT), r;

	if (fd < 0) {
		printf(PREFIX "vsock FAIL connect to host port %u errno=%ld\n",
		       VSOCK_ECHO_PORT, -fd);
		return -1;
	}
	fill_pattern(buf_a, VSOCK_ECHO_BYTES, opt_seed ^ 0x76736f636bUL, 0);
	for (off = 0; off < VSOCK_ECHO_BYTES; off += VSOCK_CHUNK) {
		r = sock_write_all(fd, buf_a + off, VSOCK_CHUNK);
		if (!r)
			r = sock_read_all(fd, buf_b + off, VSOCK_CHUNK);
		if (r < 0) {
			printf(PREFIX "vsock FAIL echo at %lu errno=%ld\n", off, -r);
			close(fd);
			return -1;
		}
	}
	close(fd);
	r = first_diff(buf_a, buf_b, VSOCK_ECHO_BYTES);
	if (r >= 0) {
		printf(PREFIX "vsock FAIL echo differs at byte %ld\n", r);
		return -1;
	}
	return 0;
}

/* (b) listen on guest port 5000; the host connects through the device's
 * socket with "CONNECT 5000"; it sends a line, gets one back, shuts down
 * its side; (c) the guest reads end of stream and closes. */
static int vsock_listen(void)
{
	static const char want[] = "hello guest\n", reply[] = "hello host\n";
	char got[sizeof(want)];
	long lfd = vsock_socket(), fd, r, n;

	if (lfd < 0) {
		printf(PREFIX "vsock FAIL socket errno=%ld\n", -lfd);
		return -1;
	}
	r = vsock_addr_call(__NR_bind, lfd, VMADDR_CID_ANY_, VSOCK_LISTEN_PORT);
	if (!r)
		r = my_syscall2(__NR_listen, lfd, 1);
	if (r < 0) {
		printf(PREFIX "vsock FAIL listen on %u errno=%ld\n", VSOCK_LISTEN_PORT, -r);
		close(lfd);
		return -1;
	}
	printf(PREFIX "vsock listening port=%u\n", VSOCK_LISTEN_PORT);
	fd = my_syscall3(__NR_accept, lfd, 0, 0);
	close(lfd);
	if (fd < 0) {
		printf(PREFIX "vsock FAIL accept errno=%ld\n", -fd);
		return -1;
	}
	r = sock_read_all(fd, (unsigned char *)got, sizeof(want) - 1);
	if (!r && memcmp(got, want, sizeof(want) - 1))
		r = -EINVAL;
	if (!r)
		r = sock_write_all(fd, (const unsigned char *)reply, sizeof(reply) - 1);
	if (r < 0) {
		printf(PREFIX "vsock FAIL exchange on port %u errno=%ld\n", VSOCK_LISTEN_PORT, -r);
		close(fd);
		return -1;
	}
	/* Clean close: the host shuts down first, the guest sees end of
	 * stream, then closes. */
	n = my_syscall3(__NR_read, fd, got, 1);
	close(fd);
	if (n != 0) {
		printf(PREFIX "vsock FAIL expected end of stream, read returned %ld\n", n);
		return -1;
	}
	return 0;
}

static void test_vsock(void)
{
	if (vsock_echo() || vsock_listen()) {
		fail();
		return;
	}
	printf(PREFIX "vsock OK echoed=%lu\n", VSOCK_ECHO_BYTES);
	ok();
}

/* vsockbw: 16 MiB guest -> host (port 1235, the host discards), timed;
 * prints the rate in MB/s. */
static void test_vsockbw(void)
{
	unsigned long long t0, t1;
	unsigned long off;
	long fd = vsock_connect_host(VSOCK_BW_PORT), r = 0;

	if (fd < 0) {
		printf(PREFIX "vsockbw FAIL connect to host port %u errno=%ld\n",
		       VSOCK_BW_PORT, -fd);
		fail();
		return;
	}
	fill_pattern(buf_a, VSOCK_CHUNK, opt_seed, 0);
	t0 = now_ns();
	for (off = 0; off < VSOCK_BW_BYTES && !r; off += VSOCK_CHUNK)
		r = sock_write_all(fd, buf_a, VSOCK_CHUNK);
	my_syscall2(__NR_shutdown, fd, SHUT_WR_);
	/* The host closes after reading everything: wait for it. */
	if (!r)
		r = my_syscall3(__NR_read, fd, buf_b, 1);
	t1 = now_ns();
	close(fd);
	if (r != 0) {
		printf(PREFIX "vsockbw FAIL at %lu returned %ld\n", off, r);
		fail();
		return;
	}
	printf(PREFIX "vsockbw OK bytes=%lu MB/s=", VSOCK_BW_BYTES);
	/* MB/s * 100 = bytes * 1e5 / ns, as dd. */
	print_fixed2(t1 > t0 ? (unsigned long long)VSOCK_BW_BYTES * 100000ULL / (t1 - t0) : 0);
	printf("\n");
	ok();
}

/* ------------------------------------------------------------------------ */
/* net: eth0 (virtio-net) with a static address, TCP echo with a peer on    */
/* the host side of the link. nolibc 6.1 has no socket or ioctl wrappers:   */
/* raw system calls and the uapi layouts of sockaddr_in and ifreq.          */
/* ------------------------------------------------------------------------ */

#define AF_INET_ 2
#define SOCK_DGRAM_ 2
#define SIOCGIFFLAGS_ 0x8913
#define SIOCSIFFLAGS_ 0x8914
#define SIOCSIFADDR_ 0x8916
#define SIOCSIFNETMASK_ 0x891c
#define IFF_UP_ 0x1
/* 10.0.2.15/24 here, the peer at 10.0.2.2 port 7 (echo); QEMU user
 * networking's numbers, so the same init runs behind either. */
#define NET_ADDR ((10U << 24) | (0U << 16) | (2U << 8) | 15U)
#define NET_PEER ((10U << 24) | (0U << 16) | (2U << 8) | 2U)
#define NET_MASK 0xffffff00U
#define NET_ECHO_PORT 7
#define NET_ECHO_BYTES (4UL * 1024UL * 1024UL)
#define NET_CHUNK (32UL * 1024UL)
/* netbw: bytes sent to the peer's discard port 9, and received from its
 * chargen-like port 19. */
#define NET_BW_BYTES (16UL * 1024UL * 1024UL)

struct sockaddr_in_ {
	unsigned short sin_family;
	unsigned short sin_port; /* big-endian */
	unsigned int sin_addr;   /* big-endian */
	unsigned char sin_zero[8];
};

struct ifreq_ {
	char ifr_name[16];
	union {
		struct sockaddr_in_ addr;
		short flags;
		unsigned char pad[24];
	} u;
};

static unsigned short net_htons(unsigned short v)
{
	return (unsigned short)((v << 8) | (v >> 8));
}

static unsigned int net_htonl(unsigned int v)
{
	return (v >> 24) | ((v >> 8) & 0xff00U) | ((v << 8) & 0xff0000U) | (v << 24);
}

static void net_sockaddr(struct sockaddr_in_ *a, unsigned int addr, unsigned short port)
{
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET_;
	a->sin_port = net_htons(port);
	a->sin_addr = net_htonl(addr);
}

/* eth0 up with NET_ADDR/24 through SIOCSIFADDR, SIOCSIFNETMASK and
 * SIOCSIFFLAGS; 0 or prints why and returns -1. */
static int net_eth0_up(void)
{
	struct ifreq_ ifr;
	long s = my_syscall3(__NR_socket, AF_INET_, SOCK_DGRAM_, 0), r;

	if (s < 0) {
		printf(PREFIX "net FAIL socket errno=%ld\n", -s);
		return -1;
	}
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "eth0");
	net_sockaddr(&ifr.u.addr, NET_ADDR, 0);
	r = my_syscall3(__NR_ioctl, s, SIOCSIFADDR_, &ifr);
	if (!r) {
		net_sockaddr(&ifr.u.addr, NET_MASK, 0);
		r = my_syscall3(__NR_ioctl, s, SIOCSIFNETMASK_, &ifr);
	}
	if (!r) {
		memset(&ifr.u, 0, sizeof(ifr.u));
		r = my_syscall3(__NR_ioctl, s, SIOCGIFFLAGS_, &ifr);
	}
	if (!r) {
		ifr.u.flags |= IFF_UP_;
		r = my_syscall3(__NR_ioctl, s, SIOCSIFFLAGS_, &ifr);
	}
	close(s);
	if (r < 0) {
		printf(PREFIX "net FAIL eth0 setup errno=%ld\n", -r);
		return -1;
	}
	return 0;
}

/* A TCP connection to the peer's port; fd or -errno. The peer may need
 * a moment (ARP, its listener): a refused or timed-out connect is retried
 * a few times. */
static long net_connect_peer(unsigned short port)
{
	struct sockaddr_in_ a;
	long fd = -1, r = -1;
	int tries;

	net_sockaddr(&a, NET_PEER, port);
	for (tries = 0; tries < 10; tries++) {
		fd = my_syscall3(__NR_socket, AF_INET_, SOCK_STREAM_, 0);
		if (fd < 0)
			return fd;
		r = my_syscall3(__NR_connect, fd, &a, sizeof(a));
		if (!r)
			return fd;
		close(fd);
		sleep(1);
	}
	return r;
}

/* 4 MiB of pattern to the peer's echo port, 32 KiB per round trip, each
 * chunk checked as it comes back; then a clean close. */
static void test_net(void)
{
	unsigned long off;
	long fd, r = 0;

	if (net_eth0_up()) {
		fail();
		return;
	}
	fd = net_connect_peer(NET_ECHO_PORT);
	if (fd < 0) {
		printf(PREFIX "net FAIL connect to the peer's port %u errno=%ld\n",
		       NET_ECHO_PORT, -fd);
		fail();
		return;
	}
	for (off = 0; off < NET_ECHO_BYTES && !r; off += NET_CHUNK) {
		fill_pattern(buf_a, NET_CHUNK, opt_seed ^ 0x6e6574UL, off);
		r = sock_write_all(fd, buf_a, NET_CHUNK);
		if (!r)
			r = sock_read_all(fd, buf_b, NET_CHUNK);
		if (!r && first_diff(buf_a, buf_b, NET_CHUNK) >= 0) {
			printf(PREFIX "net FAIL echo differs at byte %lu\n",
			       off + first_diff(buf_a, buf_b, NET_CHUNK));
			close(fd);
			fail();
			return;
		}
	}
	close(fd);
	if (r < 0) {
		printf(PREFIX "net FAIL echo at %lu errno=%ld\n", off, -r);
		fail();
		return;
	}
	printf(PREFIX "net OK echoed=%lu\n", NET_ECHO_BYTES);
	ok();
}

/* netbw: NET_BW_BYTES guest -> peer (port 9, which discards and closes
 * after the guest's shutdown), then NET_BW_BYTES peer -> guest (port 19,
 * which sends that many bytes and closes); prints both rates in MB/s. */
static void test_netbw(void)
{
	unsigned long long t0, t1, t2;
	unsigned long off = 0;
	long fd, r = 0, n;

	if (net_eth0_up()) {
		fail();
		return;
	}
	fd = net_connect_peer(9);
	if (fd < 0) {
		printf(PREFIX "netbw FAIL connect to port 9 errno=%ld\n", -fd);
		fail();
		return;
	}
	fill_pattern(buf_a, NET_CHUNK, opt_seed, 0);
	t0 = now_ns();
	for (off = 0; off < NET_BW_BYTES && !r; off += NET_CHUNK)
		r = sock_write_all(fd, buf_a, NET_CHUNK);
	my_syscall2(__NR_shutdown, fd, SHUT_WR_);
	if (!r)
		r = my_syscall3(__NR_read, fd, buf_b, 1);
	t1 = now_ns();
	close(fd);
	if (r != 0) {
		printf(PREFIX "netbw FAIL send at %lu returned %ld\n", off, r);
		fail();
		return;
	}
	fd = net_connect_peer(19);
	if (fd < 0) {
		printf(PREFIX "netbw FAIL connect to port 19 errno=%ld\n", -fd);
		fail();
		return;
	}
	t1 = now_ns();
	for (off = 0;;) {
		n = my_syscall3(__NR_read, fd, buf_b, BLK_REGION);
		if (n <= 0)
			break;
		off += n;
	}
	t2 = now_ns();
	close(fd);
	if (off != NET_BW_BYTES) {
		printf(PREFIX "netbw FAIL received %lu bytes\n", off);
		fail();
		return;
	}
	printf(PREFIX "netbw OK bytes=%lu tx MB/s=", NET_BW_BYTES);
	print_fixed2(t1 > t0 ? (unsigned long long)NET_BW_BYTES * 100000ULL / (t1 - t0) : 0);
	printf(" rx MB/s=");
	print_fixed2(t2 > t1 ? (unsigned long long)NET_BW_BYTES * 100000ULL / (t2 - t1) : 0);
	printf("\n");
	ok();
}

/* ------------------------------------------------------------------------ */
/* Setup, option parsing, power off                                          */
/* ------------------------------------------------------------------------ */

/* mkdir (ignore EEXIST) + mount; returns 0, or errno. EBUSY counts as
 * success (already mounted, e.g. by CONFIG_DEVTMPFS_MOUNT). */
static int mount_fs(const char *fstype, const char *dir, unsigned long flags)
{
	mkdir(dir, 0755);
	if (mount(fstype, dir, fstype, flags, 0) == 0 || errno == EBUSY)
		return 0;
	return errno;
}

/* Make fds 0, 1 and 2 refer to the console if the kernel could not open
 * one for us (an initramfs without /dev/console). */
static void setup_console(void)
{
	int fd, c = -1;

	for (fd = 0; fd <= 2; fd++) {
		if (fd_is_open(fd))
			continue;
		if (c < 0) {
			c = open("/dev/console", O_RDWR | O_NOCTTY, 0);
			if (c < 0)
				return; /* nothing we can print to */
		}
		if (c != fd)
			dup2(c, fd);
	}
	if (c > 2)
		close(c);
}

static void parse_cmdline(void)
{
	static char cmdline[4096];
	char num[32];
	const char *p;

	if (read_text("/proc/cmdline", cmdline, sizeof(cmdline)) < 0) {
		printf(PREFIX "cmdline FAIL cannot read /proc/cmdline errno=%d\n", errno);
		fail();
		return;
	}
	for (p = cmdline; *p;) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, "vmmio.tests=", 12)) {
			copy_token(opt_tests, sizeof(opt_tests), p + 12);
		} else if (!strncmp(p, "vmmio.blkreqs=", 14)) {
			copy_token(num, sizeof(num), p + 14);
			opt_blkreqs = parse_ulong(num);
		} else if (!strncmp(p, "vmmio.pattern_seed=", 19)) {
			copy_token(num, sizeof(num), p + 19);
			opt_seed = parse_ulong(num);
		} else if (!strncmp(p, "vmmio.hvc=", 10)) {
			copy_token(opt_hvc, sizeof(opt_hvc), p + 10);
		} else if (!strncmp(p, "vmmio.timeout=", 14)) {
			copy_token(num, sizeof(num), p + 14);
			opt_timeout = parse_ulong(num);
		}
		while (*p && *p != ' ')
			p++;
	}
}

static void power_off(void)
{
	xsync();
	reboot(LINUX_REBOOT_CMD_POWER_OFF);
	/* Only reached if the kernel refused; exiting makes PID 1 die, which
	 * panics loudly instead of hanging silently. */
	printf(PREFIX "poweroff FAIL errno=%d\n", errno);
	exit(1);
}

/* vmmio.timeout=S: a child process that powers the guest off after S
 * seconds, so a device that never answers ends the run with a FAIL line. */
static void start_watchdog(void)
{
	pid_t pid;

	if (!opt_timeout)
		return;
	pid = fork();
	if (pid < 0) {
		printf(PREFIX "watchdog FAIL fork errno=%d\n", errno);
		return;
	}
	if (pid > 0)
		return;
	sleep(opt_timeout);
	printf(PREFIX "watchdog FAIL timeout=%lu s\n", opt_timeout);
	printf(PREFIX "done\n");
	power_off();
}

/* features: each virtio device's negotiated feature bits as Linux shows
 * them (/sys/bus/virtio/devices/NAME/features: one '0'/'1' per bit, bit 0
 * first), and bit 34 (VIRTIO_F_RING_PACKED) on its own. */
static void test_features(void)
{
	char dents[2048], path[128], bits[128];
	int fd, n, i, count = 0;

	fd = open("/sys/bus/virtio/devices", O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0) {
		printf(PREFIX "features FAIL no /sys/bus/virtio/devices errno=%d\n", errno);
		fail();
		return;
	}
	while ((n = getdents64(fd, (struct linux_dirent64 *)dents, sizeof(dents))) > 0) {
		for (i = 0; i < n;) {
			struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + i);

			i += d->d_reclen;
			if (d->d_name[0] == '.')
				continue;
			strcpy(path, "/sys/bus/virtio/devices/");
			strlcat(path, d->d_name, sizeof(path));
			strlcat(path, "/features", sizeof(path));
			if (read_text(path, bits, sizeof(bits)) < 35) {
				printf(PREFIX "features FAIL %s unreadable\n", d->d_name);
				fail();
				continue;
			}
			printf(PREFIX "features %s bits=%s ring_packed=%c\n", d->d_name, bits, bits[34]);
			count++;
		}
	}
	close(fd);
	printf(PREFIX "features OK count=%d\n", count);
	ok();
}

static void run_test(const char *name)
{
	if (!strcmp(name, "virtio"))
		test_virtio();
	else if (!strcmp(name, "blk"))
		test_blk();
	else if (!strcmp(name, "rng"))
		test_rng();
	else if (!strcmp(name, "hvc"))
		test_hvc();
	else if (!strcmp(name, "blkreqs"))
		test_blkreqs();
	else if (!strcmp(name, "dd"))
		test_dd();
	else if (!strcmp(name, "vsock"))
		test_vsock();
	else if (!strcmp(name, "vsockbw"))
		test_vsockbw();
	else if (!strcmp(name, "crash"))
		test_crash();
	else if (!strcmp(name, "blkresize"))
		test_blkresize();
	else if (!strcmp(name, "net"))
		test_net();
	else if (!strcmp(name, "netbw"))
		test_netbw();
	else if (!strcmp(name, "features"))
		test_features();
	else if (name[0]) {
		printf(PREFIX "%s FAIL unknown test\n", name);
		fail();
	}
}

int main(int argc, char **argv, char **envp)
{
	int err_dev, err_proc, err_sys;
	char name[32], *p;
	unsigned int i;

	(void)argc; (void)argv; (void)envp;

	err_dev = mount_fs("devtmpfs", "/dev", MS_NOSUID);
	setup_console();
	err_proc = mount_fs("proc", "/proc", MS_NOSUID | MS_NOEXEC);
	err_sys = mount_fs("sysfs", "/sys", MS_NOSUID | MS_NOEXEC);

	printf(PREFIX "started\n");
	if (err_dev) { printf(PREFIX "mount FAIL /dev errno=%d\n", err_dev); fail(); }
	if (err_proc) { printf(PREFIX "mount FAIL /proc errno=%d\n", err_proc); fail(); }
	if (err_sys) { printf(PREFIX "mount FAIL /sys errno=%d\n", err_sys); fail(); }

	parse_cmdline();
	start_watchdog();

	/* Run the comma-separated tests in the order given. */
	for (p = opt_tests; *p;) {
		for (i = 0; *p && *p != ',' && i < sizeof(name) - 1; i++)
			name[i] = *p++;
		name[i] = 0;
		while (*p && *p != ',')
			p++;
		if (*p == ',')
			p++;
		run_test(name);
	}

	printf(PREFIX "summary ok=%u fail=%u\n", n_ok, n_fail);
	printf(PREFIX "done\n");
	power_off();
	return 0;
}
