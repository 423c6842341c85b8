//! The driver side of the worst-case tests (`worst_case*.rs`): a Version 2
//! `MmioTransport` with queues of [`QUEUE`] descriptors at fixed guest
//! addresses, chains written by hand, and the process's peak memory.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::{Interrupt, InterruptCause, MmioTransport, TransportVersion, VirtioDevice};
use vmmio_spec::features::VIRTIO_F_VERSION_1;
use vmmio_spec::mmio;
use vmmio_spec::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};

pub type Mem = GuestMemoryMmap<()>;

/// Guest RAM in bytes: rings, a 32 MiB buffer and a 16 MiB chain fit.
pub const GUEST_MEM: usize = 56 << 20;
/// `QueueSizeMax` of every queue: the largest a split ring may have.
pub const QUEUE: u16 = 32768;
/// Rings of queue `i` start at `RINGS + i * RING_STRIDE` (descriptor table
/// 512 KiB, then the avail ring, then the used ring).
const RINGS: u64 = 0x10_0000;
const RING_STRIDE: u64 = 0x20_0000;
/// A request header (block) and its status byte.
pub const HEADER: u64 = 0x7e_0000;
pub const STATUS: u64 = 0x7f_0000;
/// Data buffers start here.
pub const DATA: u64 = 0x80_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Line;
impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {}
}

/// One queue's driver state.
struct Ring {
    index: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        RINGS + u64::from(self.index) * RING_STRIDE
    }
    fn avail(&self) -> u64 {
        self.desc() + 0x8_0000
    }
    fn used(&self) -> u64 {
        self.desc() + 0x10_0000
    }
}

/// A Version 2 window and the driver side of its queues.
pub struct Rig {
    pub t: MmioTransport<Mem>,
    pub mem: Mem,
    rings: Vec<Ring>,
    /// Feature bits 0..32 the driver accepts besides VERSION_1.
    features: u32,
}

impl Rig {
    /// `device` behind a window, `queues` set up, DRIVER_OK.
    pub fn new(device: Box<dyn VirtioDevice<Mem> + Send>, queues: &[u16], features: u32) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).expect("guest memory");
        let t = MmioTransport::new(
            TransportVersion::Modern,
            device,
            mem.clone(),
            Arc::new(Line),
        );
        let rings = queues
            .iter()
            .map(|&index| Ring {
                index,
                avail_idx: 0,
                used_seen: 0,
            })
            .collect();
        let mut rig = Self {
            t,
            mem,
            rings,
            features,
        };
        rig.start();
        rig
    }

    pub fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    pub fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reset, handshake, queue setup at the fixed addresses, DRIVER_OK.
    pub fn start(&mut self) {
        self.w(mmio::STATUS, 0);
        self.w(mmio::STATUS, ACKNOWLEDGE);
        self.w(mmio::STATUS, ACKNOWLEDGE | DRIVER);
        self.w(mmio::DRIVER_FEATURES_SEL, 0);
        let features = self.features;
        self.w(mmio::DRIVER_FEATURES, features);
        self.w(mmio::DRIVER_FEATURES_SEL, 1);
        self.w(mmio::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        self.w(mmio::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        for i in 0..self.rings.len() {
            let (index, desc, avail, used) = {
                let r = &mut self.rings[i];
                r.avail_idx = 0;
                r.used_seen = 0;
                (r.index, r.desc(), r.avail(), r.used())
            };
            self.mem
                .write_slice(&[0u8; 4], GuestAddress(avail))
                .expect("avail header");
            self.mem
                .write_slice(&[0u8; 4], GuestAddress(used))
                .expect("used header");
            self.w(mmio::QUEUE_SEL, u32::from(index));
            self.w(mmio::QUEUE_SIZE, u32::from(QUEUE));
            self.w(mmio::QUEUE_DESC_LOW, desc as u32);
            self.w(mmio::QUEUE_DRIVER_LOW, avail as u32);
            self.w(mmio::QUEUE_DEVICE_LOW, used as u32);
            self.w(mmio::QUEUE_READY, 1);
            assert_eq!(self.r(mmio::QUEUE_READY), 1, "queue {index} accepted");
        }
        self.w(mmio::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(self.t.is_activated());
    }

    fn ring(&mut self, queue: u16) -> &mut Ring {
        self.rings
            .iter_mut()
            .find(|r| r.index == queue)
            .expect("a queue the rig set up")
    }

    /// Writes descriptor `i` of `queue`.
    pub fn desc(&mut self, queue: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let table = self.ring(queue).desc();
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(table + 16 * u64::from(i)))
            .expect("descriptor");
    }

    /// Writes a chain from `parts` (address, length, device-writable) at
    /// descriptors `first`.. of `queue`, makes it available, no notify.
    pub fn add(&mut self, queue: u16, first: u16, parts: &[(u64, u32, bool)]) {
        for (k, &(addr, len, write)) in parts.iter().enumerate() {
            let i = first.wrapping_add(u16::try_from(k).expect("chain fits the queue")) % QUEUE;
            let last = k + 1 == parts.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.desc(queue, i, addr, len, flags, i.wrapping_add(1) % QUEUE);
        }
        self.publish(queue, first);
    }

    /// As [`Rig::add`] at descriptor 0, then notifies.
    pub fn submit(&mut self, queue: u16, parts: &[(u64, u32, bool)]) {
        self.add(queue, 0, parts);
        self.notify(queue);
    }

    /// Puts `head` in `queue`'s avail ring (no notify).
    pub fn publish(&mut self, queue: u16, head: u16) {
        let mem = self.mem.clone();
        let r = self.ring(queue);
        let slot = r.avail() + 4 + 2 * u64::from(r.avail_idx % QUEUE);
        mem.write_obj(head, GuestAddress(slot))
            .expect("avail entry");
        r.avail_idx = r.avail_idx.wrapping_add(1);
        mem.write_obj(r.avail_idx, GuestAddress(r.avail() + 2))
            .expect("avail idx");
    }

    pub fn notify(&mut self, queue: u16) {
        self.w(mmio::QUEUE_NOTIFY, u32::from(queue));
    }

    /// Used entries `(id, len)` of `queue` since the last call.
    pub fn take_used(&mut self, queue: u16) -> Vec<(u32, u32)> {
        let mem = self.mem.clone();
        let r = self.ring(queue);
        let idx: u16 = mem.read_obj(GuestAddress(r.used() + 2)).expect("used idx");
        let mut out = Vec::new();
        while r.used_seen != idx {
            let e = r.used() + 4 + 8 * u64::from(r.used_seen % QUEUE);
            let id: u32 = mem.read_obj(GuestAddress(e)).expect("used id");
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).expect("used len");
            out.push((id, len));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    /// The synchronous embedder's poll of the device's host fds.
    pub fn poll(&mut self, timeout: Duration) -> usize {
        self.t.poll_backends(timeout).expect("poll_backends")
    }
}

/// `VmHWM` (peak resident set) of this process, in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// Resets `VmHWM` to the current resident set (Linux >= 4.0).
pub fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
}

/// Fails when the peak resident set grew by more than `bound` bytes since
/// `before` (a [`peak_rss`] after [`reset_peak`]); prints the figure.
pub fn assert_peak_within(name: &str, before: u64, bound: u64) {
    let peak = peak_rss().saturating_sub(before);
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
