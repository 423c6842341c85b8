//! Device-role split queue: vmmio's [`vmmio_device::Queue`] against
//! rust-vmm's [`virtio_queue::Queue`], same guest memory type, same layout,
//! same ring contents, same work per chain.
//!
//! One [`batch`](QueueBench::batch) is what a device does per
//! notification under load: the driver side publishes [`BATCH`] chains
//! (ring entries, `avail.idx`, `used_event`: a few hundred 2-byte stores,
//! done by the same code for both queues), then the device pops every
//! chain, reads each of its descriptors, puts it in the used ring, finds
//! the ring empty (and, EVENT_IDX being on, re-arms `avail_event`), and
//! asks once whether the driver wants an interrupt.
//!
//! The descriptor table is written once at setup: the driver re-publishes
//! the same chains each batch, which the device cannot tell from new ones.

use std::hint::black_box;
use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmmio_device::DescriptorChain;

/// Chains published and served per batch.
pub const BATCH: u16 = 256;

/// Guest-physical address of the descriptor table.
const DESC: u64 = 0x1_0000;
/// Guest-physical address of the available ring.
const AVAIL: u64 = 0x2_0000;
/// Guest-physical address of the used ring.
const USED: u64 = 0x3_0000;
/// Guest-physical address of the first buffer.
const BUFFERS: u64 = 0x10_0000;
/// Bytes of buffer space per chain (the 3-descriptor shape needs 4113).
const CHAIN_STRIDE: u64 = 0x2000;
/// Guest memory size in bytes: rings plus `BATCH` chains of buffers.
const MEM_SIZE: usize = 4 << 20;

/// The guest memory type both queues work on.
pub type Mem = GuestMemoryMmap<()>;

/// The shape of the chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One device-readable descriptor of 16 bytes.
    OneDesc,
    /// A block request: 16 readable bytes (header), 4096 writable (data),
    /// 1 writable (status).
    ThreeDesc,
}

impl Shape {
    /// `(length in bytes, device-writable)` of each descriptor, in order.
    pub fn descriptors(self) -> &'static [(u32, bool)] {
        match self {
            Shape::OneDesc => &[(16, false)],
            Shape::ThreeDesc => &[(16, false), (4096, true), (1, true)],
        }
    }

    /// Queue size in entries: the smallest power of two holding
    /// [`BATCH`] chains of this shape.
    pub fn queue_size(self) -> u16 {
        // At most 3 * 256 = 768 descriptors: 1024 at most.
        (BATCH * self.descriptors().len() as u16).next_power_of_two()
    }

    /// A short label ("1desc", "3desc").
    pub fn label(self) -> &'static str {
        match self {
            Shape::OneDesc => "1desc",
            Shape::ThreeDesc => "3desc",
        }
    }
}

/// The driver side: guest memory with the descriptor table written, and
/// the available ring it publishes into.
struct Driver {
    mem: Mem,
    shape: Shape,
    size: u16,
    /// `avail.idx` last published.
    avail_idx: u16,
}

impl Driver {
    fn new(shape: Shape) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let descs = shape.descriptors();
        let per_chain = descs.len() as u16;
        for c in 0..BATCH {
            let mut buf = BUFFERS + CHAIN_STRIDE * u64::from(c);
            for (k, &(len, writable)) in descs.iter().enumerate() {
                let i = c * per_chain + k as u16;
                let last = k + 1 == descs.len();
                let flags: u16 = if last { 0 } else { 1 } | if writable { 2 } else { 0 };
                let next = if last { 0 } else { i + 1 };
                let raw = u128::from(buf)
                    | u128::from(len) << 64
                    | u128::from(flags) << 96
                    | u128::from(next) << 112;
                mem.write_obj(raw.to_le(), GuestAddress(DESC + 16 * u64::from(i)))
                    .expect("descriptor table inside guest memory");
                buf += u64::from(len).next_multiple_of(64);
            }
        }
        Self {
            mem,
            shape,
            size: shape.queue_size(),
            avail_idx: 0,
        }
    }

    /// Publishes the next [`BATCH`] chains: one ring entry each, then
    /// `avail.idx` (release), and `used_event` = the first new used entry
    /// (notify me when you have used something).
    fn publish(&mut self) {
        let per_chain = self.shape.descriptors().len() as u16;
        let ring_len = 6 + 2 * usize::from(self.size);
        let ring = self
            .mem
            .get_slices(GuestAddress(AVAIL), ring_len, Permissions::Write)
            .ok()
            .and_then(|mut s| s.next())
            .and_then(Result::ok)
            .filter(|s| s.len() == ring_len)
            .expect("available ring in one region of guest memory");
        let first = self.avail_idx;
        for c in 0..BATCH {
            let slot = first.wrapping_add(c) & (self.size - 1);
            let head = c * per_chain;
            ring.store(head.to_le(), 4 + 2 * usize::from(slot), Ordering::Relaxed)
                .expect("ring slot inside the ring");
        }
        self.avail_idx = first.wrapping_add(BATCH);
        ring.store(self.avail_idx.to_le(), 2, Ordering::Release)
            .expect("avail.idx inside the ring");
        ring.store(
            first.to_le(),
            4 + 2 * usize::from(self.size),
            Ordering::Relaxed,
        )
        .expect("used_event inside the ring");
    }
}

/// One queue implementation under the workload.
pub trait QueueBench {
    /// The driver publishes [`BATCH`] chains, the device serves them all
    /// and checks for a notification. Returns the chains served.
    fn batch(&mut self) -> u64;
}

/// vmmio's device-role queue.
pub struct Ours {
    driver: Driver,
    queue: vmmio_device::Queue,
    chain: DescriptorChain,
}

impl Ours {
    /// A ready queue of `shape.queue_size()` entries, EVENT_IDX on.
    pub fn new(shape: Shape) -> Self {
        let driver = Driver::new(shape);
        let mut queue = vmmio_device::Queue::new(driver.size);
        queue.set_size(driver.size);
        queue.set_addresses(DESC, AVAIL, USED);
        queue.set_event_idx(true);
        queue.validate(&driver.mem).expect("valid ring layout");
        queue.set_ready(true);
        Self {
            driver,
            queue,
            chain: DescriptorChain::new(),
        }
    }
}

impl QueueBench for Ours {
    #[inline(never)]
    fn batch(&mut self) -> u64 {
        self.driver.publish();
        let mem = &self.driver.mem;
        let mut n = 0u64;
        while self
            .queue
            .pop_into(mem, &mut self.chain)
            .expect("well-formed ring")
        {
            let mut sum = 0u64;
            for d in self.chain.descriptors() {
                sum = sum.wrapping_add(d.addr.0 ^ u64::from(d.len) ^ u64::from(d.writable));
            }
            black_box(sum);
            self.queue
                .add_used(mem, self.chain.head_index(), 1)
                .expect("head in range");
            n += 1;
        }
        black_box(self.queue.needs_notification(mem).expect("readable ring"));
        n
    }
}

/// rust-vmm's `virtio-queue`, used as its documentation shows for a device
/// with EVENT_IDX: pop until empty, re-enable notifications (which
/// publishes `avail_event` and says whether more arrived), repeat.
pub struct Peer {
    driver: Driver,
    queue: virtio_queue::Queue,
}

impl Peer {
    /// A ready queue of `shape.queue_size()` entries, EVENT_IDX on.
    pub fn new(shape: Shape) -> Self {
        let driver = Driver::new(shape);
        let mut queue = virtio_queue::Queue::new(driver.size).expect("valid queue size");
        queue.set_size(driver.size);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_event_idx(true);
        queue.set_ready(true);
        assert!(queue.is_valid(&driver.mem), "valid ring layout");
        Self { driver, queue }
    }
}

impl QueueBench for Peer {
    #[inline(never)]
    fn batch(&mut self) -> u64 {
        self.driver.publish();
        let mem = &self.driver.mem;
        let mut n = 0u64;
        loop {
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut sum = 0u64;
                for d in chain {
                    sum = sum.wrapping_add(
                        d.addr().0 ^ u64::from(d.len()) ^ u64::from(d.is_write_only()),
                    );
                }
                black_box(sum);
                self.queue.add_used(mem, head, 1).expect("head in range");
                n += 1;
            }
            if !self.queue.enable_notification(mem).expect("readable ring") {
                break;
            }
        }
        black_box(self.queue.needs_notification(mem).expect("readable ring"));
        n
    }
}

/// Checks that both queues left the same used ring behind after one batch
/// each from a fresh start: the workloads really are identical.
pub fn same_used_ring(shape: Shape) -> bool {
    let mut ours = Ours::new(shape);
    let mut peer = Peer::new(shape);
    let (a, b) = (ours.batch(), peer.batch());
    let len = 6 + 8 * usize::from(shape.queue_size());
    let mut ra = vec![0u8; len];
    let mut rb = vec![0u8; len];
    let ok_a = ours.driver.mem.read_slice(&mut ra, GuestAddress(USED));
    let ok_b = peer.driver.mem.read_slice(&mut rb, GuestAddress(USED));
    a == u64::from(BATCH) && a == b && ok_a.is_ok() && ok_b.is_ok() && ra == rb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_queues_serve_every_chain_identically() {
        for shape in [Shape::OneDesc, Shape::ThreeDesc] {
            assert!(same_used_ring(shape), "{shape:?}");
            let mut ours = Ours::new(shape);
            let mut peer = Peer::new(shape);
            // Past the 16-bit wrap of the ring indexes.
            for _ in 0..300 {
                assert_eq!(ours.batch(), u64::from(BATCH));
                assert_eq!(peer.batch(), u64::from(BATCH));
            }
        }
    }
}
