//! Host resources under a hostile guest: for each device (block over a
//! file, entropy, net over a stream socket whose peer never reads,
//! console), the worst a driver may legally (or almost
//! legally) ask, through a real `MmioTransport` (Version 2):
//!
//! - the longest legal chain: `QueueSizeMax` = 32768 descriptors in one
//!   chain of 512-byte buffers (16 MiB);
//! - the largest requests: one 32 MiB buffer, and one of 4 GiB - 512 bytes
//!   that guest memory cannot hold;
//! - notifications in a tight loop (100 000, half with a new request, half
//!   with nothing new);
//! - resets in a loop (2 000 handshakes, queue setups, DRIVER_OK, one
//!   request, reset);
//! - configuration reads in a loop (1 000 000).
//!
//! Every call returns (the test ends), and the process's peak resident
//! memory (`VmHWM`, reset through `/proc/self/clear_refs` before each
//! device) grows by at most the guest memory the device may legitimately
//! fill ([`GUEST_WRITES`], devices that write buffers only) plus
//! [`HOST_BOUND`] (16 MiB) of host-side memory. An unbounded console
//! capture, for one, grows by about 30 MiB here and fails.
//!
//! One `#[test]` runs the devices one after the other: the peak is
//! per process, so parallel tests would blur it.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::{Interrupt, InterruptCause, MmioTransport, TransportVersion, VirtioDevice};
use vmmio_devices::net::Stream;
use vmmio_devices::rng::EntropySource;
use vmmio_devices::{Block, BlockOptions, Console, Net, Rng};
use vmmio_spec::features::VIRTIO_F_VERSION_1;
use vmmio_spec::mmio;
use vmmio_spec::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};

type Mem = GuestMemoryMmap<()>;

/// Guest RAM in bytes: rings, a 32 MiB buffer and a 16 MiB chain fit.
const GUEST_MEM: usize = 56 << 20;
/// Guest memory a device that writes into buffers may fill, in bytes: the
/// 32 MiB buffer (the 16 MiB chain lies inside it) and the rings.
const GUEST_WRITES: u64 = 34 << 20;
/// Host memory a device may use besides the guest memory it fills, in
/// bytes (the test's own rings and descriptor writes included).
const HOST_BOUND: u64 = 16 << 20;
/// `QueueSizeMax` of every queue: the largest a split ring may have.
const QUEUE: u16 = 32768;

const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x20_0000;
const USED: u64 = 0x30_0000;
const HEADER: u64 = 0x40_0000;
const STATUS: u64 = 0x40_1000;
const DATA: u64 = 0x80_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Line;
impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {}
}

/// Counter entropy: deterministic and allocation-free.
struct Counter(u8);
impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

/// A Version 2 window and the driver side of its queue `queue`.
struct Rig {
    t: MmioTransport<Mem>,
    mem: Mem,
    queue: u16,
    avail_idx: u16,
    /// Feature bits 0..32 the driver accepts besides VERSION_1.
    features: u32,
}

impl Rig {
    fn new(device: Box<dyn VirtioDevice<Mem> + Send>, queue: u16, features: u32) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).expect("guest memory");
        let t = MmioTransport::new(
            TransportVersion::Modern,
            device,
            mem.clone(),
            Arc::new(Line),
        );
        let mut rig = Self {
            t,
            mem,
            queue,
            avail_idx: 0,
            features,
        };
        rig.start();
        rig
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Handshake, queue setup at the fixed addresses, DRIVER_OK.
    fn start(&mut self) {
        self.w(mmio::STATUS, 0);
        self.avail_idx = 0;
        self.mem
            .write_slice(&[0u8; 4], GuestAddress(AVAIL))
            .expect("avail header");
        self.w(mmio::STATUS, ACKNOWLEDGE);
        self.w(mmio::STATUS, ACKNOWLEDGE | DRIVER);
        self.w(mmio::DRIVER_FEATURES_SEL, 0);
        let features = self.features;
        self.w(mmio::DRIVER_FEATURES, features);
        self.w(mmio::DRIVER_FEATURES_SEL, 1);
        self.w(mmio::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        self.w(mmio::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.w(mmio::QUEUE_SEL, u32::from(self.queue));
        self.w(mmio::QUEUE_SIZE, u32::from(QUEUE));
        self.w(mmio::QUEUE_DESC_LOW, DESC as u32);
        self.w(mmio::QUEUE_DRIVER_LOW, AVAIL as u32);
        self.w(mmio::QUEUE_DEVICE_LOW, USED as u32);
        self.w(mmio::QUEUE_READY, 1);
        assert_eq!(self.r(mmio::QUEUE_READY), 1, "queue accepted");
        self.w(mmio::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(self.t.is_activated());
    }

    /// Writes descriptor `i`.
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(DESC + 16 * u64::from(i)))
            .expect("descriptor");
    }

    /// Writes a chain from `parts` (address, length, device-writable) at
    /// descriptors 0.., makes it available and notifies.
    fn submit(&mut self, parts: &[(u64, u32, bool)]) {
        for (i, &(addr, len, write)) in parts.iter().enumerate() {
            let i = u16::try_from(i).expect("chain fits the queue");
            let last = usize::from(i) + 1 == parts.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.desc(i, addr, len, flags, i.wrapping_add(1));
        }
        self.publish(0);
    }

    /// Puts `head` in the avail ring and notifies.
    fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QUEUE);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("avail entry");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        self.notify();
    }

    fn notify(&mut self) {
        let q = u32::from(self.queue);
        self.w(mmio::QUEUE_NOTIFY, q);
    }
}

/// `VmHWM` (peak resident set) of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// Resets `VmHWM` to the current resident set (Linux >= 4.0).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
}

/// A request chain for `device`: the block header and status around the
/// data buffers, or just the buffers.
fn chain(block: bool, writable: bool, data: &[(u64, u32)]) -> Vec<(u64, u32, bool)> {
    let mut parts = Vec::with_capacity(data.len() + 2);
    if block {
        parts.push((HEADER, 16, false));
    }
    parts.extend(data.iter().map(|&(a, l)| (a, l, writable)));
    if block {
        parts.push((STATUS, 1, true));
    }
    parts
}

/// Runs every worst case against the device `make` builds, on queue
/// `queue`; `writable`: the device writes into the data buffers.
fn worst_cases(
    name: &str,
    make: &dyn Fn() -> Box<dyn VirtioDevice<Mem> + Send>,
    queue: u16,
    block: bool,
    writable: bool,
) {
    reset_peak();
    let before = peak_rss();
    // Block: VIRTIO_BLK_F_FLUSH, so writes are not each synced (the test
    // is about memory, not the disk).
    let features = if block {
        1 << vmmio_spec::blk::features::FLUSH
    } else {
        0
    };
    let mut rig = Rig::new(make(), queue, features);
    if block {
        // VIRTIO_BLK_T_IN (or OUT) at sector 0.
        let kind: u32 = if writable { 0 } else { 1 };
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        rig.mem
            .write_slice(&h, GuestAddress(HEADER))
            .expect("header");
    }
    let room = if block { QUEUE - 2 } else { QUEUE };

    // The longest legal chain: every descriptor of the queue, 512 bytes each.
    let data: Vec<(u64, u32)> = (0..u64::from(room))
        .map(|i| (DATA + 512 * i, 512))
        .collect();
    rig.submit(&chain(block, writable, &data));
    // The largest requests: 32 MiB in one buffer, then 4 GiB - 512 bytes.
    rig.submit(&chain(block, writable, &[(DATA, 32 << 20)]));
    rig.submit(&chain(block, writable, &[(DATA, u32::MAX - 511)]));
    // Notifications in a tight loop.
    for i in 0..100_000u32 {
        if i % 2 == 0 {
            rig.submit(&chain(block, writable, &[(DATA, 512)]));
        } else {
            rig.notify();
        }
    }
    // Resets in a loop.
    for _ in 0..2_000 {
        rig.start();
        rig.submit(&chain(block, writable, &[(DATA, 512)]));
    }
    // Configuration reads in a loop.
    let mut sum = 0u64;
    for i in 0..1_000_000u64 {
        sum = sum.wrapping_add(u64::from(rig.r(mmio::CONFIG + 4 * (i % 16))));
    }
    std::hint::black_box(sum);
    rig.w(mmio::STATUS, 0);
    drop(rig);

    let peak = peak_rss().saturating_sub(before);
    let bound = if writable { GUEST_WRITES } else { 0 } + HOST_BOUND;
    eprintln!(
        "{name}: peak resident growth {} MiB (bound {} MiB)",
        peak >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "{name}: peak resident memory grew by {peak} bytes, above {bound}"
    );
}

#[test]
fn each_device_survives_worst_cases_within_a_memory_bound() {
    let image = tempfile::NamedTempFile::new().expect("image");
    // Sparse: the file's pages are page cache, not our resident memory.
    image.as_file().set_len(64 << 20).expect("size");
    let path = image.path().to_path_buf();
    for writable in [true, false] {
        let path = path.clone();
        worst_cases(
            if writable {
                "block (IN)"
            } else {
                "block (OUT)"
            },
            &move || {
                Box::new(
                    Block::<Mem, _>::from_path_with_options(
                        &path,
                        BlockOptions {
                            queue_size: QUEUE,
                            ..BlockOptions::default()
                        },
                    )
                    .expect("block device"),
                )
            },
            0,
            true,
            writable,
        );
    }
    worst_cases(
        "entropy",
        &|| Box::new(Rng::<Mem>::with_source(Box::new(Counter(0))).with_queue_size(QUEUE)),
        0,
        false,
        true,
    );
    // Net: transmit to a stream peer that never reads (the socket buffer
    // fills, frames wait or drop; nothing may pile up on the host).
    let (ours, peer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let ours = std::sync::Mutex::new(Some(ours));
    worst_cases(
        "net (transmitq)",
        &|| {
            let sock = ours.lock().expect("socket").take().expect("one net device");
            Box::new(
                Net::<Mem>::new(Box::new(Stream::new(sock).expect("stream")))
                    .with_queue_size(QUEUE),
            )
        },
        1,
        false,
        false,
    );
    drop(peer);
    worst_cases(
        "console (transmitq)",
        &|| Box::new(Console::<Mem>::new(Box::new(std::io::sink())).with_queue_size(QUEUE)),
        1,
        false,
        false,
    );
}
