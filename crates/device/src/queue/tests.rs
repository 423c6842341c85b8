//! Unit tests of the device-role split virtqueue, against a model driver
//! that lays out rings and descriptors in guest memory as a real driver
//! does.

use std::error::Error as _;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::split::{
    need_event, used, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

use super::*;
use crate::recording::{last_write, recording_memory, Log, RecordingMemory, Write};

mod model;

/// Guest memory size of the model: 1 MiB at 0.
pub(super) const MEM_SIZE: u64 = 0x10_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x9000;
const USED: u64 = 0xA000;
/// Where indirect tables go.
const INDIRECT: u64 = 0x2_0000;

/// A model driver: owns guest memory and writes the driver's side of a
/// split ring (descriptor table, available ring) as §2.7.13 describes.
/// Every write to its memory, the driver's and the device's, is logged in
/// order (`log`): the oracle for the ordering rules.
pub(super) struct Driver {
    pub mem: RecordingMemory,
    pub log: Log,
    pub size: u16,
    /// Next free descriptor (allocated round-robin).
    next_desc: u16,
    /// The driver's avail.idx.
    pub avail_idx: u16,
    /// Next free byte for indirect tables.
    next_table: u64,
}

/// One buffer as the driver posts it: `(addr, len, writable)`.
pub(super) type Buf = (u64, u32, bool);

impl Driver {
    pub fn new(size: u16) -> Self {
        let (mem, log) =
            recording_memory(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("test memory");
        Self {
            mem,
            log,
            size,
            next_desc: 0,
            avail_idx: 0,
            next_table: INDIRECT,
        }
    }

    /// A ready device queue over this driver's rings with `features`,
    /// starting at ring index `start` on both sides.
    pub fn queue(&mut self, features: u64, start: u16) -> Queue {
        let mut q = Queue::new(self.size.max(256));
        q.set_size(self.size);
        q.set_addresses(DESC, AVAIL, USED);
        q.set_features(features);
        q.validate(&self.mem).expect("valid layout");
        q.set_ready(true);
        q.set_next_avail(start);
        q.set_next_used(start);
        self.avail_idx = start;
        self.set_avail_idx(start);
        self.mem
            .write_obj(start.to_le(), GuestAddress(USED + 2))
            .unwrap();
        q
    }

    pub fn write_desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = table + 16 * u64::from(i);
        self.mem
            .write_obj(addr.to_le(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_obj(len.to_le(), GuestAddress(base + 8))
            .unwrap();
        self.mem
            .write_obj(flags.to_le(), GuestAddress(base + 12))
            .unwrap();
        self.mem
            .write_obj(next.to_le(), GuestAddress(base + 14))
            .unwrap();
    }

    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(DESC, i, addr, len, flags, next);
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Puts `head` in the next available slot and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    fn alloc_desc(&mut self) -> u16 {
        let d = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        d
    }

    /// Posts a direct chain of `bufs` (1..=size of them); returns its head.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let ids: Vec<u16> = bufs.iter().map(|_| self.alloc_desc()).collect();
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = ids.get(k + 1).copied().unwrap_or(0);
            if k + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(ids[k], addr, len, flags, next);
        }
        self.publish(ids[0]);
        ids[0]
    }

    /// Writes an indirect table holding `bufs` chained 0, 1, 2, ...;
    /// returns its address and length in bytes.
    pub fn write_table(&mut self, bufs: &[Buf]) -> (u64, u32) {
        let table = self.next_table;
        self.next_table += 16 * bufs.len() as u64;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc_at(table, k as u16, addr, len, flags, (k + 1) as u16);
        }
        (table, 16 * bufs.len() as u32)
    }

    /// Posts `direct` descriptors followed by one indirect descriptor
    /// referring to a table of `bufs`; returns the head.
    pub fn add_indirect_chain(&mut self, direct: &[Buf], bufs: &[Buf]) -> u16 {
        let (table, len) = self.write_table(bufs);
        let ids: Vec<u16> = (0..=direct.len()).map(|_| self.alloc_desc()).collect();
        for (k, &(addr, l, w)) in direct.iter().enumerate() {
            let flags = VIRTQ_DESC_F_NEXT | if w { VIRTQ_DESC_F_WRITE } else { 0 };
            self.write_desc(ids[k], addr, l, flags, ids[k + 1]);
        }
        self.write_desc(ids[direct.len()], table, len, VIRTQ_DESC_F_INDIRECT, 0);
        self.publish(ids[0]);
        ids[0]
    }

    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(USED + 2)).unwrap())
    }

    /// `(id, len)` of used-ring entry `i` (free-running index).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let base = USED + 4 + 8 * u64::from(i % self.size);
        let id = u32::from_le(self.mem.read_obj(GuestAddress(base)).unwrap());
        let len = u32::from_le(self.mem.read_obj(GuestAddress(base + 4)).unwrap());
        (id, len)
    }

    pub fn set_used_event(&self, v: u16) {
        let at = AVAIL + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v.to_le(), GuestAddress(at)).unwrap();
    }

    pub fn avail_event(&self) -> u16 {
        let at = USED + 4 + 8 * u64::from(self.size);
        u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap())
    }

    pub fn set_avail_flags(&self, flags: u16) {
        self.mem
            .write_obj(flags.to_le(), GuestAddress(AVAIL))
            .unwrap();
    }

    /// Bytes of the used ring: flags, idx, `size` elements, avail_event.
    pub fn used_ring_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Address of `avail_event` (§2.7.10: after the used ring's elements).
    pub fn avail_event_addr(&self) -> u64 {
        USED + 4 + 8 * u64::from(self.size)
    }

    /// Takes every write since the previous call (or `log.clear()`):
    /// after a device call, the device's writes.
    pub fn writes(&self) -> Vec<Write> {
        self.log.take()
    }

    /// Checks the writes of one `add_used`/`add_used_batch` that put
    /// elements for free-running used indexes `from..from + n`: each
    /// element is written (all 8 bytes, `id` and `len`), and written before
    /// the one `used.idx` store, which comes last (§2.7.8.2); nothing is
    /// written outside the used ring (§2.7.8: the device writes the used
    /// ring only, never the descriptor table or the available ring).
    pub fn check_used_writes(&self, writes: &[Write], from: u16, n: u16) -> Result<(), String> {
        let outside: Vec<_> = writes
            .iter()
            .filter(|w| w.addr < USED || w.addr + w.len > USED + self.used_ring_len())
            .collect();
        if !outside.is_empty() {
            return Err(format!("writes outside the used ring: {outside:x?}"));
        }
        // §2.7.10: used.flags is the device's, and it keeps it 0 by never
        // writing it.
        if let Some(w) = writes.iter().find(|w| w.overlaps(USED, 2)) {
            return Err(format!("used.flags written: {w:x?}"));
        }
        let idx_writes: Vec<_> = (0..writes.len())
            .filter(|&i| writes[i].overlaps(USED + 2, 2))
            .collect();
        if idx_writes != [writes.len() - 1] {
            return Err(format!(
                "used.idx must be written once, last; writes {writes:x?}"
            ));
        }
        for k in 0..n {
            let slot = from.wrapping_add(k) % self.size;
            let elem = USED + 4 + 8 * u64::from(slot);
            for (field, at) in [("id", elem), ("len", elem + 4)] {
                match last_write(writes, at, 4) {
                    Some(i) if i < idx_writes[0] => {}
                    Some(_) => {
                        return Err(format!("used.idx published before used[{slot}].{field}"))
                    }
                    None => return Err(format!("used[{slot}].{field} not written: {writes:x?}")),
                }
            }
        }
        Ok(())
    }
}

const EVENT_IDX: u64 = bit(VIRTIO_F_EVENT_IDX);
const INDIRECT_DESC: u64 = bit(VIRTIO_F_INDIRECT_DESC);

fn r(addr: u64, len: u32) -> Buf {
    (addr, len, false)
}
fn w(addr: u64, len: u32) -> Buf {
    (addr, len, true)
}

fn shape(chain: &DescriptorChain) -> Vec<Buf> {
    chain
        .descriptors()
        .iter()
        .map(|d| (d.addr.0, d.len, d.writable))
        .collect()
}

// ---- configuration and validation (§2.7, §4.2.2) ----

#[test]
fn new_queue_is_in_reset_state() {
    let q = Queue::new(256);
    assert_eq!(q.max_size(), 256);
    assert_eq!(q.size(), 256);
    assert!(!q.ready());
    assert_eq!(q.addresses(), (0, 0, 0));
    assert_eq!((q.next_avail(), q.next_used()), (0, 0));
    assert!(!q.event_idx() && !q.indirect());
    assert_eq!(Queue::new(u16::MAX).max_size(), 32768);
}

#[test]
fn validate_rejects_bad_sizes() {
    let d = Driver::new(16);
    let mut q = Queue::new(64);
    q.set_addresses(DESC, AVAIL, USED);
    for size in [0u16, 3, 48, 128] {
        q.set_size(size);
        assert!(
            matches!(q.validate(&d.mem), Err(QueueError::InvalidSize { size: s, max_size: 64 }) if s == size),
            "size {size}"
        );
    }
    q.set_size(64);
    q.validate(&d.mem).unwrap();
    q.set_size(1);
    q.validate(&d.mem).unwrap();
}

#[test]
fn validate_rejects_misaligned_areas() {
    let d = Driver::new(16);
    let mut q = Queue::new(16);
    for (desc, avail, used, area, align) in [
        (DESC + 8, AVAIL, USED, RingArea::DescriptorTable, 16),
        (DESC, AVAIL + 1, USED, RingArea::AvailableRing, 2),
        (DESC, AVAIL, USED + 2, RingArea::UsedRing, 4),
    ] {
        q.set_addresses(desc, avail, used);
        match q.validate(&d.mem) {
            Err(QueueError::Misaligned {
                area: a, align: al, ..
            }) => {
                assert_eq!((a, al), (area, align))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn validate_rejects_areas_outside_memory_or_overflowing() {
    let d = Driver::new(16);
    let mut q = Queue::new(16);
    // The used ring ending 2 bytes before the end of memory, then 2 after.
    let used = (MEM_SIZE - used::size(16)) & !3;
    q.set_addresses(DESC, AVAIL, used);
    q.validate(&d.mem).unwrap_or_else(|e| panic!("{e}"));
    q.set_addresses(DESC, AVAIL, used + 4);
    assert!(matches!(
        q.validate(&d.mem),
        Err(QueueError::AreaOutOfMemory {
            area: RingArea::UsedRing,
            ..
        })
    ));
    q.set_addresses(MEM_SIZE, AVAIL, USED);
    assert!(matches!(
        q.validate(&d.mem),
        Err(QueueError::AreaOutOfMemory {
            area: RingArea::DescriptorTable,
            ..
        })
    ));
    q.set_addresses(DESC, u64::MAX - 1, USED);
    assert!(matches!(
        q.validate(&d.mem),
        Err(QueueError::AreaOverflow { area: RingArea::AvailableRing, addr, len: 38 }) if addr == u64::MAX - 1
    ));
}

#[test]
fn data_path_requires_ready_and_sound_layout() {
    let mut d = Driver::new(16);
    let mut q = d.queue(0, 0);
    q.set_ready(false);
    assert!(matches!(q.pop(&d.mem), Err(QueueError::NotReady)));
    assert!(matches!(
        q.add_used(&d.mem, 0, 0),
        Err(QueueError::NotReady)
    ));
    assert!(matches!(
        q.needs_notification(&d.mem),
        Err(QueueError::NotReady)
    ));
    assert!(!QueueError::NotReady.is_peer_fault());
    // Ready without validate and a size that is not a power of two: the data
    // path re-checks the layout.
    q.set_ready(true);
    q.set_size(12);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::InvalidSize { size: 12, .. })
    ));
    q.set_size(16);
    q.set_addresses(DESC, AVAIL, u64::MAX - 3);
    assert!(matches!(
        q.add_used(&d.mem, 0, 0),
        Err(QueueError::AreaOverflow { .. })
    ));
}

#[test]
fn set_features_picks_event_idx_and_indirect() {
    let mut q = Queue::new(8);
    q.set_features(EVENT_IDX);
    assert!(q.event_idx() && !q.indirect());
    q.set_features(INDIRECT_DESC | bit(32));
    assert!(!q.event_idx() && q.indirect());
    q.set_event_idx(true);
    q.set_indirect(false);
    assert!(q.event_idx() && !q.indirect());
}

#[test]
fn reset_restores_defaults_and_keeps_features() {
    let mut d = Driver::new(16);
    let mut q = d.queue(EVENT_IDX, 7);
    d.add_chain(&[r(0x100, 1)]);
    q.pop(&d.mem).unwrap().unwrap();
    q.reset();
    assert_eq!(q.size(), 256);
    assert!(!q.ready());
    assert_eq!(q.addresses(), (0, 0, 0));
    assert_eq!((q.next_avail(), q.next_used()), (0, 0));
    assert!(q.event_idx());
    assert!(!q.undo_pop());
}

// ---- popping chains (§2.7.5, §2.7.6) ----

#[test]
fn empty_ring_pops_nothing() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    assert!(q.pop(&d.mem).unwrap().is_none());
    assert_eq!(q.available(&d.mem).unwrap(), 0);
}

#[test]
fn pops_chains_in_order_with_directions_and_lengths() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    let a = d.add_chain(&[r(0x1_0000, 16), r(0x1_1000, 512), w(0x1_2000, 1)]);
    let b = d.add_chain(&[w(0x3_0000, 4096)]);
    assert_eq!(q.available(&d.mem).unwrap(), 2);
    let c1 = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(c1.head_index(), a);
    assert_eq!(
        shape(&c1),
        vec![r(0x1_0000, 16), r(0x1_1000, 512), w(0x1_2000, 1)]
    );
    assert_eq!(c1.readable().len(), 2);
    assert_eq!(c1.writable().len(), 1);
    assert_eq!((c1.readable_len(), c1.writable_len()), (528, 1));
    assert_eq!(c1.len(), 3);
    assert!(!c1.has_indirect() && !c1.is_empty());
    let c2 = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(c2.head_index(), b);
    assert_eq!(shape(&c2), vec![w(0x3_0000, 4096)]);
    assert!(c2.readable().is_empty());
    assert!(q.pop(&d.mem).unwrap().is_none());
    assert_eq!(q.next_avail(), 2);
}

#[test]
fn readable_after_writable_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(0x100, 1), w(0x200, 1), r(0x300, 1)]);
    match q.pop(&d.mem) {
        Err(
            e @ QueueError::ReadableAfterWritable {
                head: 0,
                position: 2,
            },
        ) => {
            assert!(e.is_peer_fault())
        }
        other => panic!("{other:?}"),
    }
    // Even a zero-length writable descriptor counts.
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[w(0x200, 0), r(0x300, 1)]);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::ReadableAfterWritable { position: 1, .. })
    ));
}

#[test]
fn a_loop_is_caught() {
    let mut d = Driver::new(4);
    let mut q = d.queue(0, 0);
    d.write_desc(0, 0x100, 1, VIRTQ_DESC_F_NEXT, 1);
    d.write_desc(1, 0x100, 1, VIRTQ_DESC_F_NEXT, 0);
    d.publish(0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::ChainTooLong { head: 0, limit: 4 })
    ));
    // A self-loop too.
    d.write_desc(0, 0x100, 1, VIRTQ_DESC_F_NEXT, 0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::ChainTooLong { .. })
    ));
}

#[test]
fn a_chain_as_long_as_the_queue_is_accepted() {
    let mut d = Driver::new(4);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(0x100, 1), r(0x200, 2), w(0x300, 3), w(0x400, 4)]);
    let c = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(c.len(), 4);
}

#[test]
fn long_chains_spill_and_pop_into_reuses_storage() {
    let mut d = Driver::new(16);
    let mut q = d.queue(0, 0);
    let bufs: Vec<Buf> = (0..10u64).map(|i| r(0x1000 * i, i as u32)).collect();
    d.add_chain(&bufs);
    d.add_chain(&[w(0x5000, 5)]);
    let mut chain = DescriptorChain::default();
    assert!(q.pop_into(&d.mem, &mut chain).unwrap());
    assert_eq!(shape(&chain), bufs);
    assert!(q.pop_into(&d.mem, &mut chain).unwrap());
    assert_eq!(shape(&chain), vec![w(0x5000, 5)]);
    assert!(!q.pop_into(&d.mem, &mut chain).unwrap());
}

#[test]
fn head_index_out_of_range_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.publish(8);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::DescriptorIndexOutOfRange {
            head: 8,
            index: 8,
            size: 8
        })
    ));
}

#[test]
fn next_index_out_of_range_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.write_desc(3, 0x100, 1, VIRTQ_DESC_F_NEXT, 0xffff);
    d.publish(3);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::DescriptorIndexOutOfRange {
            head: 3,
            index: 0xffff,
            size: 8
        })
    ));
}

#[test]
fn errors_leave_the_queue_state_unchanged() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.publish(9);
    assert!(q.pop(&d.mem).is_err());
    assert_eq!(q.next_avail(), 0);
    assert!(q.pop(&d.mem).is_err());
}

#[test]
fn buffer_address_overflow_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(u64::MAX - 1, 10)]);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::DescriptorAddressOverflow { addr, len: 10, .. }) if addr == u64::MAX - 1
    ));
    // A buffer ending exactly at the last byte is fine, and so is an empty
    // one at the very end.
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(u64::MAX, 1), r(u64::MAX, 0), w(u64::MAX - 9, 10)]);
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().len(), 3);
}

#[test]
fn total_chain_length_is_capped_at_u32_max() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(0, u32::MAX - 1), w(0, 1)]);
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().writable_len(), 1);
    d.add_chain(&[r(0, u32::MAX), w(0, 1)]);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::ChainLengthOverflow {
            readable: u32::MAX,
            writable: 0,
            len: 1,
            ..
        })
    ));
}

#[test]
fn avail_idx_more_than_size_ahead_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0xfffe);
    for _ in 0..8 {
        d.add_chain(&[r(0x100, 1)]);
    }
    // Exactly `size` ahead (across the wrap) is fine.
    assert_eq!(q.available(&d.mem).unwrap(), 8);
    d.set_avail_idx(0xfffe_u16.wrapping_add(9));
    match q.available(&d.mem) {
        Err(QueueError::InvalidAvailIdx {
            avail_idx: 7,
            next_avail: 0xfffe,
            size: 8,
        }) => {}
        other => panic!("{other:?}"),
    }
    // A backwards jump is a huge forward one.
    d.set_avail_idx(0xfffd);
    assert!(matches!(
        q.available(&d.mem),
        Err(QueueError::InvalidAvailIdx { .. })
    ));
}

#[test]
fn avail_idx_is_read_once_per_batch() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(0x100, 1)]);
    d.add_chain(&[r(0x200, 1)]);
    assert!(q.pop(&d.mem).unwrap().is_some());
    // A corrupt index is not seen while cached entries remain...
    d.set_avail_idx(100);
    assert!(q.pop(&d.mem).unwrap().is_some());
    // ...and is caught when the device catches up.
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::InvalidAvailIdx {
            avail_idx: 100,
            next_avail: 2,
            ..
        })
    ));
}

#[test]
fn indexes_wrap_at_65535() {
    let mut d = Driver::new(4);
    let mut q = d.queue(0, 65533);
    for round in 0..3u16 {
        let heads: Vec<u16> = (0..4u16)
            .map(|i| d.add_chain(&[w(0x1000 * u64::from(i), u32::from(i))]))
            .collect();
        for &h in &heads {
            let c = q.pop(&d.mem).unwrap().unwrap();
            assert_eq!(c.head_index(), h);
            q.add_used(&d.mem, h, u32::from(round)).unwrap();
            let last = q.next_used().wrapping_sub(1);
            assert_eq!(d.used_elem(last), (u32::from(h), u32::from(round)));
        }
        assert!(q.pop(&d.mem).unwrap().is_none());
    }
    assert_eq!(q.next_avail(), 65533u16.wrapping_add(12));
    assert_eq!(d.used_idx(), 65533u16.wrapping_add(12));
}

// ---- indirect descriptors (§2.7.5.3) ----

#[test]
fn indirect_chain_is_flattened() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    let h = d.add_indirect_chain(&[], &[r(0x100, 10), w(0x200, 20), w(0x300, 30)]);
    let c = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(c.head_index(), h);
    assert!(c.has_indirect());
    assert_eq!(shape(&c), vec![r(0x100, 10), w(0x200, 20), w(0x300, 30)]);
    assert_eq!((c.readable_len(), c.writable_len()), (10, 50));
}

#[test]
fn direct_descriptors_then_indirect_table() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    d.add_indirect_chain(&[r(0x10, 1), r(0x20, 2)], &[r(0x30, 3), w(0x40, 4)]);
    let c = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(
        shape(&c),
        vec![r(0x10, 1), r(0x20, 2), r(0x30, 3), w(0x40, 4)]
    );
    // Ordering is checked across the boundary.
    d.add_indirect_chain(&[w(0x10, 1)], &[r(0x30, 3)]);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::ReadableAfterWritable { position: 1, .. })
    ));
}

#[test]
fn write_flag_on_the_indirect_descriptor_is_ignored() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    let (table, len) = d.write_table(&[r(0x100, 1)]);
    d.write_desc(0, table, len, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 0);
    d.publish(0);
    assert_eq!(shape(&q.pop(&d.mem).unwrap().unwrap()), vec![r(0x100, 1)]);
}

#[test]
fn indirect_without_the_feature_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_indirect_chain(&[r(0, 1)], &[r(0x100, 1)]);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::IndirectNotNegotiated { head: 0, index: 1 })
    ));
}

#[test]
fn indirect_with_next_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    let (table, len) = d.write_table(&[r(0x100, 1)]);
    d.write_desc(0, table, len, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    d.write_desc(1, 0x100, 1, 0, 0);
    d.publish(0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::IndirectWithNext { head: 0, index: 0 })
    ));
}

#[test]
fn indirect_inside_indirect_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    let (inner, inner_len) = d.write_table(&[r(0x100, 1)]);
    let (outer, outer_len) = d.write_table(&[r(0x200, 1), r(0x300, 1)]);
    d.write_desc_at(outer, 1, inner, inner_len, VIRTQ_DESC_F_INDIRECT, 0);
    d.write_desc(0, outer, outer_len, VIRTQ_DESC_F_INDIRECT, 0);
    d.publish(0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::NestedIndirect { head: 0, index: 1 })
    ));
}

#[test]
fn indirect_table_length_must_be_a_nonzero_multiple_of_16() {
    for len in [0u32, 8, 17, 40] {
        let mut d = Driver::new(8);
        let mut q = d.queue(INDIRECT_DESC, 0);
        let (table, _) = d.write_table(&[r(0x100, 1), r(0x200, 1), r(0x300, 1)]);
        d.write_desc(0, table, len, VIRTQ_DESC_F_INDIRECT, 0);
        d.publish(0);
        assert!(
            matches!(q.pop(&d.mem), Err(QueueError::InvalidIndirectLength { head: 0, len: l }) if l == len),
            "len {len}"
        );
    }
}

#[test]
fn indirect_table_too_large_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    let len = 16 * (MAX_INDIRECT_DESCRIPTORS + 1);
    d.write_desc(0, 0, len, VIRTQ_DESC_F_INDIRECT, 0);
    d.publish(0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::IndirectTableTooLarge { len: l, max: 32768, .. }) if l == len
    ));
}

#[test]
fn indirect_table_outside_memory_is_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    // Starts inside, ends 16 bytes past the end of memory.
    d.write_desc(0, MEM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
    d.publish(0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::IndirectTableOutOfMemory { addr, len: 32, .. }) if addr == MEM_SIZE - 16
    ));
    d.write_desc(0, u64::MAX - 15, 32, VIRTQ_DESC_F_INDIRECT, 0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::DescriptorAddressOverflow { len: 32, .. })
    ));
}

#[test]
fn indirect_loops_and_bad_next_are_rejected() {
    let mut d = Driver::new(8);
    let mut q = d.queue(INDIRECT_DESC, 0);
    let (table, len) = d.write_table(&[r(0x100, 1), r(0x200, 1)]);
    d.write_desc_at(table, 1, 0x200, 1, VIRTQ_DESC_F_NEXT, 0);
    d.write_desc(0, table, len, VIRTQ_DESC_F_INDIRECT, 0);
    d.publish(0);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::ChainTooLong { head: 0, limit: 2 })
    ));
    d.write_desc_at(table, 1, 0x200, 1, VIRTQ_DESC_F_NEXT, 2);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::IndirectIndexOutOfRange {
            head: 0,
            index: 2,
            entries: 2
        })
    ));
}

// ---- used ring (§2.7.8) ----

#[test]
fn add_used_writes_element_then_index() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    let h = d.add_chain(&[w(0x100, 64)]);
    let c = q.pop(&d.mem).unwrap().unwrap();
    q.add_used(&d.mem, c.head_index(), 42).unwrap();
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used_elem(0), (u32::from(h), 42));
    assert_eq!(q.next_used(), 1);
}

#[test]
fn used_element_is_written_before_used_idx() {
    // §2.7.8.2: the element (id and len) before the index, for one chain
    // and for a batch, across the end of the ring.
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 7);
    d.add_chain(&[w(0x100, 64)]);
    let c = q.pop(&d.mem).unwrap().unwrap();
    d.log.clear();
    q.add_used(&d.mem, c.head_index(), 42).unwrap();
    d.check_used_writes(&d.writes(), 7, 1).unwrap();
    q.add_used_batch(&d.mem, &[(1, 10), (2, 20), (3, 30)])
        .unwrap();
    d.check_used_writes(&d.writes(), 8, 3).unwrap();
    assert_eq!(d.used_idx(), 11);
}

#[test]
fn device_writes_only_the_used_ring_and_avail_event() {
    // §2.7.5/§2.7.8: the device never writes the descriptor table (direct
    // or indirect), the available ring or a device-readable buffer; with
    // EVENT_IDX its only write outside the used elements and idx is
    // avail_event, right after the ring (§2.7.10).
    for features in [0, EVENT_IDX | INDIRECT_DESC] {
        let mut d = Driver::new(8);
        let mut q = d.queue(features, 0);
        d.add_chain(&[r(0x100, 16), w(0x200, 16)]);
        if features & INDIRECT_DESC != 0 {
            d.add_indirect_chain(&[r(0x300, 8)], &[r(0x400, 8), w(0x500, 8)]);
        }
        d.log.clear();
        let mut heads = Vec::new();
        while let Some(c) = q.pop(&d.mem).unwrap() {
            heads.push(c.head_index());
        }
        let writes = d.writes();
        if features & EVENT_IDX != 0 {
            assert!(!writes.is_empty(), "avail_event never published");
            for w in &writes {
                assert_eq!((w.addr, w.len), (d.avail_event_addr(), 2), "{writes:x?}");
            }
        } else {
            assert_eq!(writes, [], "pop wrote guest memory");
        }
        let n = heads.len() as u16;
        for (k, head) in heads.into_iter().enumerate() {
            q.add_used(&d.mem, head, 8).unwrap();
            d.check_used_writes(&d.writes(), k as u16, 1).unwrap();
        }
        assert!(q.needs_notification(&d.mem).unwrap());
        assert_eq!(d.writes(), [], "needs_notification wrote guest memory");
        assert_eq!(d.used_idx(), n);
    }
}

#[test]
fn add_used_rejects_a_head_outside_the_table() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    match q.add_used(&d.mem, 8, 0) {
        Err(e @ QueueError::InvalidUsedHead { head: 8, size: 8 }) => assert!(!e.is_peer_fault()),
        other => panic!("{other:?}"),
    }
    assert!(q.add_used_batch(&d.mem, &[(1, 1), (9, 0)]).is_err());
    assert_eq!(d.used_idx(), 0);
    assert_eq!(q.next_used(), 0);
}

#[test]
fn add_used_batch_publishes_once() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 6);
    q.add_used_batch(&d.mem, &[(1, 10), (2, 20), (3, 30)])
        .unwrap();
    assert_eq!(d.used_idx(), 9);
    assert_eq!(d.used_elem(6), (1, 10));
    assert_eq!(d.used_elem(7), (2, 20));
    assert_eq!(d.used_elem(8), (3, 30));
    q.add_used_batch(&d.mem, &[]).unwrap();
    assert_eq!(d.used_idx(), 9);
}

#[test]
fn guest_memory_errors_carry_their_source() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    d.add_chain(&[r(0x100, 1)]);
    // The same queue over a smaller memory: its rings are gone.
    let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    match q.pop(&small) {
        Err(
            e @ QueueError::GuestMemory {
                area: RingArea::AvailableRing,
                addr,
                ..
            },
        ) => {
            assert_eq!(addr, AVAIL + 2);
            assert!(e.source().is_some());
            assert!(e.is_peer_fault());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        q.add_used(&small, 0, 0),
        Err(QueueError::GuestMemory {
            area: RingArea::UsedRing,
            ..
        })
    ));
}

#[test]
fn rings_straddling_two_regions_take_the_slow_path() {
    // Two adjacent regions split at 0x9800, inside the available ring of a
    // 1024-entry queue (0x9000..0x9806) and inside the descriptor table.
    let (mem, log) = recording_memory(&[
        (GuestAddress(0), 0x1800),
        (GuestAddress(0x1800), 0x8000),
        (GuestAddress(0x9800), 0x10000),
    ])
    .unwrap();
    let mut d = Driver::new(1024);
    (d.mem, d.log) = (mem, log);
    let mut q = d.queue(0, 0x1fc);
    // Descriptor 0x7f..0x81 straddle 0x1800.
    d.next_desc = 0x7f;
    let h = d.add_chain(&[r(0x100, 1), w(0x200, 2)]);
    let c = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(c.head_index(), h);
    assert_eq!(shape(&c), vec![r(0x100, 1), w(0x200, 2)]);
    d.log.clear();
    q.add_used(&d.mem, h, 2).unwrap();
    d.check_used_writes(&d.writes(), 0x1fc, 1).unwrap();
    assert_eq!(d.used_idx(), 0x1fd);
}

// ---- undo (device cannot process yet) ----

#[test]
fn undo_pop_returns_the_last_chain() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    assert!(!q.undo_pop());
    let a = d.add_chain(&[r(0x100, 1)]);
    let b = d.add_chain(&[r(0x200, 1)]);
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().head_index(), a);
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().head_index(), b);
    assert!(q.undo_pop());
    assert_eq!(q.next_avail(), 1);
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().head_index(), b);
    assert!(q.undo_pop() && q.undo_pop());
    assert!(!q.undo_pop());
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().head_index(), a);
}

// ---- notifications (§2.7.7, §2.7.10) ----

#[test]
fn no_interrupt_flag_suppresses_notifications_without_event_idx() {
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 0);
    assert!(!q.needs_notification(&d.mem).unwrap(), "nothing added");
    q.add_used(&d.mem, 0, 0).unwrap();
    assert!(q.needs_notification(&d.mem).unwrap());
    assert!(!q.needs_notification(&d.mem).unwrap(), "already notified");
    d.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    q.add_used(&d.mem, 1, 0).unwrap();
    assert!(!q.needs_notification(&d.mem).unwrap());
}

#[test]
fn event_idx_ignores_the_no_interrupt_flag_and_uses_used_event() {
    let mut d = Driver::new(8);
    let mut q = d.queue(EVENT_IDX, 0);
    d.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    d.set_used_event(0);
    q.add_used(&d.mem, 0, 0).unwrap();
    assert!(q.needs_notification(&d.mem).unwrap(), "used.idx passed 0");
    // The driver wants to hear when entry 3 is used (idx moves past 3).
    d.set_used_event(3);
    q.add_used_batch(&d.mem, &[(1, 0), (2, 0)]).unwrap(); // idx 1 -> 3
    assert!(!q.needs_notification(&d.mem).unwrap());
    q.add_used(&d.mem, 3, 0).unwrap(); // idx 3 -> 4
    assert!(q.needs_notification(&d.mem).unwrap());
}

#[test]
fn one_notification_per_batch_with_event_idx() {
    let mut d = Driver::new(8);
    let mut q = d.queue(EVENT_IDX, 65534);
    d.set_used_event(65534);
    for i in 0..5 {
        q.add_used(&d.mem, i, 0).unwrap();
    }
    // The batch 65534 -> 3 crossed used_event across the wrap.
    assert!(q.needs_notification(&d.mem).unwrap());
    assert!(!q.needs_notification(&d.mem).unwrap());
}

#[test]
fn event_idx_decisions_across_the_16_bit_wrap() {
    // used.idx goes 65534 -> 1 in one batch of three: the driver wants an
    // interrupt iff used_event is one of 65534, 65535, 0 (§2.7.10, the
    // `(u16)(new - event - 1) < (u16)(new - old)` rule), written out.
    for (used_event, want) in [
        (65532, false),
        (65533, false),
        (65534, true),
        (65535, true),
        (0, true),
        (1, false),
        (2, false),
        (32767, false),
    ] {
        let mut d = Driver::new(8);
        let mut q = d.queue(EVENT_IDX, 65534);
        d.set_used_event(used_event);
        q.add_used_batch(&d.mem, &[(0, 0), (1, 0), (2, 0)]).unwrap();
        assert_eq!(d.used_idx(), 1);
        assert_eq!(
            q.needs_notification(&d.mem).unwrap(),
            want,
            "used_event {used_event}"
        );
    }
}

#[test]
fn avail_event_is_published_when_the_ring_runs_empty() {
    let mut d = Driver::new(8);
    let mut q = d.queue(EVENT_IDX, 0xfffe);
    d.add_chain(&[r(0x100, 1)]);
    d.add_chain(&[r(0x100, 1)]);
    d.add_chain(&[r(0x100, 1)]);
    for _ in 0..3 {
        q.pop(&d.mem).unwrap().unwrap();
    }
    assert!(q.pop(&d.mem).unwrap().is_none());
    assert_eq!(d.avail_event(), 1);
    // The driver must notify when it makes entry 1 available.
    assert!(need_event(d.avail_event(), 2, 1));
    // Without EVENT_IDX the field is left alone.
    let mut d = Driver::new(8);
    let mut q = d.queue(0, 5);
    assert!(q.pop(&d.mem).unwrap().is_none());
    assert_eq!(d.avail_event(), 0);
}

#[test]
fn enable_notification_rearms_and_reports_pending_chains() {
    let mut d = Driver::new(8);
    let mut q = d.queue(EVENT_IDX, 0);
    d.add_chain(&[r(0x100, 1)]);
    d.add_chain(&[r(0x100, 1)]);
    q.pop(&d.mem).unwrap().unwrap();
    assert!(q.enable_notification(&d.mem).unwrap());
    assert_eq!(d.avail_event(), 1);
    q.pop(&d.mem).unwrap().unwrap();
    assert!(!q.enable_notification(&d.mem).unwrap());
    assert_eq!(d.avail_event(), 2);
}

#[test]
fn descriptor_chain_from_descriptors() {
    let descs = [
        Descriptor {
            addr: GuestAddress(1),
            len: 2,
            writable: false,
        },
        Descriptor {
            addr: GuestAddress(3),
            len: u32::MAX,
            writable: true,
        },
        Descriptor {
            addr: GuestAddress(5),
            len: 6,
            writable: true,
        },
        Descriptor {
            addr: GuestAddress(7),
            len: 8,
            writable: false,
        },
        Descriptor {
            addr: GuestAddress(9),
            len: 10,
            writable: true,
        },
    ];
    let c = DescriptorChain::from_descriptors(4, &descs);
    assert_eq!(c.head_index(), 4);
    assert_eq!(c.descriptors(), &descs);
    assert_eq!(c.readable().len(), 1);
    assert_eq!(c.writable().len(), 4);
    assert_eq!(c.writable_len(), u32::MAX);
    assert_eq!(c.readable_len(), 10);
    assert!(DescriptorChain::new().is_empty());
}

#[test]
fn errors_display_their_values() {
    let e = QueueError::InvalidAvailIdx {
        avail_idx: 300,
        next_avail: 10,
        size: 256,
    };
    let s = e.to_string();
    assert!(
        s.contains("300") && s.contains("10") && s.contains("256"),
        "{s}"
    );
    assert_eq!(
        RingArea::IndirectTable.to_string(),
        "indirect descriptor table"
    );
}

/// Posts one 1-descriptor chain (descriptor `i`, 512 writable bytes) at
/// available slot `i` and sets `avail.idx = i + 1`, raw, at any layout.
fn post_raw(mem: &GuestMemoryMmap<()>, desc: u64, avail: u64, i: u16) {
    let d = desc + 16 * u64::from(i);
    mem.write_obj(0x8000u64.to_le(), GuestAddress(d)).unwrap();
    mem.write_obj(512u32.to_le(), GuestAddress(d + 8)).unwrap();
    mem.write_obj(VIRTQ_DESC_F_WRITE.to_le(), GuestAddress(d + 12))
        .unwrap();
    mem.write_obj(i.to_le(), GuestAddress(avail + 4 + 2 * u64::from(i)))
        .unwrap();
    mem.write_obj((i + 1).to_le(), GuestAddress(avail + 2))
        .unwrap();
}

#[test]
fn rings_in_separate_regions_or_in_any_order_are_served() {
    // Two regions with a hole between them: the range spanning the
    // descriptor table and the available ring is not all memory, so
    // `pop_into` must look each area up on its own.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x9000),
        (GuestAddress(0x2_0000), 0x1000),
    ])
    .unwrap();
    // (desc, avail, used): split by the hole; the avail ring below the
    // table in one region (one lookup for all three rings); the used ring
    // alone past the hole (the span shrinks to the table and avail ring).
    for (desc, avail, used) in [
        (0x1000, 0x2_0000, 0x3000),
        (0x2000, 0x1000, 0x3000),
        (0x1000, 0x2000, 0x2_0000),
    ] {
        let mut q = Queue::new(16);
        q.set_size(16);
        q.set_addresses(desc, avail, used);
        q.set_event_idx(true);
        q.validate(&mem).unwrap();
        q.set_ready(true);
        mem.write_obj(0u16, GuestAddress(avail + 2)).unwrap();
        for i in 0..3u16 {
            post_raw(&mem, desc, avail, i);
            let chain = q.pop(&mem).unwrap().expect("one chain");
            assert_eq!(chain.head_index(), i);
            assert_eq!(shape(&chain), vec![w(0x8000, 512)]);
            q.add_used(&mem, i, 7).unwrap();
            assert!(q.pop(&mem).unwrap().is_none());
            let elem: u64 = mem
                .read_obj(GuestAddress(used + 4 + 8 * u64::from(i)))
                .unwrap();
            assert_eq!(elem, u64::from(i) | (7 << 32));
            let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
            assert_eq!(idx, i + 1);
            // avail_event published on the empty ring.
            let event: u16 = mem.read_obj(GuestAddress(used + 4 + 8 * 16)).unwrap();
            assert_eq!(event, i + 1);
        }
    }
}
