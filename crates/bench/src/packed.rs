//! Device-role packed queue (virtio v1.4 §2.8) under the workload of
//! [`crate::queue`]: vmmio's [`vmmio_device::Queue`] on a packed ring,
//! against the same queue on a split ring ([`crate::queue::Ours`]).
//!
//! One [`batch`](QueueBench::batch): the driver side makes [`BATCH`]
//! chains available (for each descriptor its flags, the first of each
//! chain last; the `len` and `id` of each chain's first descriptor again,
//! since the device's used descriptor overwrote them; and the driver event
//! suppression structure: "notify me at the first chain of this batch"),
//! then the device pops every chain, reads each of its descriptors, writes
//! its used descriptor, finds the ring empty (EVENT_IDX on: publishes its
//! event suppression structure) and asks once whether the driver wants an
//! interrupt. The ring holds exactly one batch (256 or 768 descriptors:
//! packed sizes need not be powers of two), so the wrap counters flip
//! every batch.

use std::hint::black_box;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};
use vmmio_device::DescriptorChain;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED};
use vmmio_spec::packed::{
    RING_EVENT_FLAGS_DESC, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
};

use crate::queue::{Mem, QueueBench, Shape, BATCH};

/// Guest-physical address of the descriptor ring.
const DESC: u64 = 0x1_0000;
/// Guest-physical address of the driver event suppression structure.
const DRIVER: u64 = 0x2_0000;
/// Guest-physical address of the device event suppression structure.
const DEVICE: u64 = 0x3_0000;
/// Guest-physical address of the first buffer.
const BUFFERS: u64 = 0x10_0000;
/// Bytes of buffer space per chain.
const CHAIN_STRIDE: u64 = 0x2000;
/// Guest memory size in bytes.
const MEM_SIZE: usize = 4 << 20;

/// The driver side of the packed ring.
struct Driver {
    mem: Mem,
    shape: Shape,
    size: u16,
    /// The driver ring wrap counter for the next batch.
    wrap: bool,
}

impl Driver {
    fn new(shape: Shape) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let descs = shape.descriptors();
        let per_chain = descs.len() as u16;
        for c in 0..BATCH {
            let mut buf = BUFFERS + CHAIN_STRIDE * u64::from(c);
            for (k, &(len, _)) in descs.iter().enumerate() {
                let i = c * per_chain + k as u16;
                // Flags stay 0 (never available) until a batch publishes.
                let raw = u128::from(buf) | u128::from(len) << 64 | u128::from(c) << 96;
                mem.write_obj(raw.to_le(), GuestAddress(DESC + 16 * u64::from(i)))
                    .expect("descriptor ring inside guest memory");
                buf += u64::from(len).next_multiple_of(64);
            }
        }
        Self {
            mem,
            shape,
            size: BATCH * per_chain,
            wrap: true,
        }
    }

    /// Makes the next [`BATCH`] chains available (§2.8.21.1).
    fn publish(&mut self) {
        let descs = self.shape.descriptors();
        let per_chain = descs.len();
        let ring_len = 16 * usize::from(self.size);
        let ring = self
            .mem
            .get_slices(GuestAddress(DESC), ring_len, Permissions::Write)
            .ok()
            .and_then(|mut s| s.next())
            .and_then(Result::ok)
            .filter(|s| s.len() == ring_len)
            .expect("descriptor ring in one region of guest memory");
        let avail = if self.wrap {
            VIRTQ_DESC_F_AVAIL
        } else {
            VIRTQ_DESC_F_USED
        };
        for c in 0..usize::from(BATCH) {
            let first = c * per_chain;
            for (k, &(_, writable)) in descs.iter().enumerate().skip(1) {
                let mut flags = avail;
                if writable {
                    flags |= VIRTQ_DESC_F_WRITE;
                }
                if k + 1 < per_chain {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                ring.store(flags.to_le(), 16 * (first + k) + 14, Ordering::Relaxed)
                    .expect("inside the ring");
            }
            let (len, writable) = descs[0];
            let mut flags = avail;
            if writable {
                flags |= VIRTQ_DESC_F_WRITE;
            }
            if per_chain > 1 {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            // `len` and `id` again (the used descriptor replaced them),
            // flags 0 (not available) in the same store, then the flags.
            let body = u64::from(len) | (c as u64) << 32;
            ring.store(body.to_le(), 16 * first + 8, Ordering::Relaxed)
                .expect("inside the ring");
            ring.store(flags.to_le(), 16 * first + 14, Ordering::Release)
                .expect("inside the ring");
        }
        // Notify me when the first chain of this batch is used.
        let event: u32 = u32::from(if self.wrap { 0x8000u16 } else { 0 })
            | u32::from(RING_EVENT_FLAGS_DESC) << 16;
        self.mem
            .write_obj(event.to_le(), GuestAddress(DRIVER))
            .expect("driver area inside guest memory");
        self.wrap = !self.wrap;
    }
}

/// vmmio's device-role queue on a packed ring.
pub struct OursPacked {
    driver: Driver,
    queue: vmmio_device::Queue,
    chain: DescriptorChain,
}

impl OursPacked {
    /// A ready packed queue of `BATCH * descriptors` entries, EVENT_IDX on.
    pub fn new(shape: Shape) -> Self {
        let driver = Driver::new(shape);
        let mut queue = vmmio_device::Queue::new(1024);
        queue.set_size(driver.size);
        queue.set_addresses(DESC, DRIVER, DEVICE);
        queue.set_features(bit(VIRTIO_F_RING_PACKED) | bit(VIRTIO_F_EVENT_IDX));
        queue.validate(&driver.mem).expect("valid ring layout");
        queue.set_ready(true);
        Self {
            driver,
            queue,
            chain: DescriptorChain::new(),
        }
    }
}

impl QueueBench for OursPacked {
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
                .expect("id in flight");
            n += 1;
        }
        black_box(self.queue.needs_notification(mem).expect("readable ring"));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chain_served_across_many_wrap_flips() {
        for shape in [Shape::OneDesc, Shape::ThreeDesc] {
            let mut q = OursPacked::new(shape);
            for _ in 0..20 {
                assert_eq!(q.batch(), u64::from(BATCH), "{shape:?}");
            }
        }
    }
}
