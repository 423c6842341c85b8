//! Unit and property tests of the device-role packed ring, against a model
//! driver that writes descriptors as §2.8.21.1 describes (the first
//! descriptor of a list made available last) and reads used descriptors as
//! §2.8.21.2 does (skipping the list's descriptors by buffer id).

use std::collections::HashMap;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED};

use super::*;
use crate::queue::Queue;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: u64 = 0x10_0000;
const DESC: u64 = 0x1000;
const DRIVER: u64 = 0x9000;
const DEVICE: u64 = 0x9010;
/// Indirect tables of the model go here, 4 KiB each.
const TABLES: u64 = 0x2_0000;

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One buffer: address, length, device-writable.
type Buf = (u64, u32, bool);

/// The driver side of a packed ring, in guest memory.
struct Driver {
    size: u16,
    next: Pos,
    used: Pos,
    /// Ring descriptors each id in flight holds.
    held: HashMap<u16, u16>,
    free: u16,
    tables: u64,
}

impl Driver {
    fn new(size: u16) -> Self {
        Self {
            size,
            next: Pos::START,
            used: Pos::START,
            held: HashMap::new(),
            free: size,
            tables: 0,
        }
    }

    fn desc_addr(i: u16) -> GuestAddress {
        GuestAddress(DESC + 16 * u64::from(i))
    }

    fn write_desc(mem: &Mem, at: GuestAddress, addr: u64, len: u32, id: u16, flags: u16) {
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(id, at.unchecked_add(12)).unwrap();
        mem.write_obj(flags, at.unchecked_add(14)).unwrap();
    }

    fn avail_flags(wrap: bool) -> u16 {
        if wrap {
            VIRTQ_DESC_F_AVAIL
        } else {
            VIRTQ_DESC_F_USED
        }
    }

    /// Makes `bufs` available as one list with buffer id `id`; with
    /// `indirect`, as one descriptor pointing at a table. Returns the ring
    /// descriptors used.
    fn post(&mut self, mem: &Mem, bufs: &[Buf], id: u16, indirect: bool) -> u16 {
        let first = self.next;
        let mut first_flags = 0;
        let n = if indirect {
            let table = TABLES + 0x1000 * (self.tables % 64);
            self.tables += 1;
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let at = GuestAddress(table + 16 * i as u64);
                Self::write_desc(
                    mem,
                    at,
                    addr,
                    len,
                    0,
                    if w { VIRTQ_DESC_F_WRITE } else { 0 },
                );
            }
            let flags = VIRTQ_DESC_F_INDIRECT | Self::avail_flags(first.wrap);
            first_flags = flags;
            let len = 16 * bufs.len() as u32;
            Self::write_desc(mem, Self::desc_addr(first.index), table, len, id, 0);
            self.next = self.next.advance(1, self.size);
            1
        } else {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let mut flags = Self::avail_flags(self.next.wrap);
                if w {
                    flags |= VIRTQ_DESC_F_WRITE;
                }
                if i + 1 < bufs.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                let at = Self::desc_addr(self.next.index);
                if i == 0 {
                    first_flags = flags;
                    Self::write_desc(mem, at, addr, len, id, 0);
                } else {
                    Self::write_desc(mem, at, addr, len, id, flags);
                }
                self.next = self.next.advance(1, self.size);
            }
            bufs.len() as u16
        };
        // The first descriptor last (§2.8.21.1).
        mem.write_obj(first_flags, Self::desc_addr(first.index).unchecked_add(14))
            .unwrap();
        self.held.insert(id, n);
        self.free -= n;
        n
    }

    /// The next used descriptor, if the device wrote it: `(id, len)`.
    fn take_used(&mut self, mem: &Mem) -> Option<(u16, u32)> {
        let at = Self::desc_addr(self.used.index);
        let flags: u16 = mem.read_obj(at.unchecked_add(14)).unwrap();
        let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = flags & VIRTQ_DESC_F_USED != 0;
        if avail != self.used.wrap || used != self.used.wrap {
            return None;
        }
        let id: u16 = mem.read_obj(at.unchecked_add(12)).unwrap();
        let len: u32 = mem.read_obj(at.unchecked_add(8)).unwrap();
        assert_eq!(
            flags & VIRTQ_DESC_F_WRITE != 0,
            len != 0,
            "WRITE iff len > 0"
        );
        let n = self.held.remove(&id).expect("used id is in flight");
        self.used = self.used.advance(n, self.size);
        self.free += n;
        Some((id, len))
    }

    fn set_driver_event(mem: &Mem, flags: u16, desc: u16) {
        mem.write_obj(desc, GuestAddress(DRIVER)).unwrap();
        mem.write_obj(flags, GuestAddress(DRIVER + 2)).unwrap();
    }
}

fn queue(mem: &Mem, size: u16, features: u64) -> Queue {
    let mut q = Queue::new(1024);
    q.set_size(size);
    q.set_addresses(DESC, DRIVER, DEVICE);
    q.set_features(features | bit(VIRTIO_F_RING_PACKED));
    q.validate(mem).unwrap();
    q.set_ready(true);
    q
}

fn indirect() -> u64 {
    bit(VIRTIO_F_INDIRECT_DESC)
}

fn event_idx() -> u64 {
    bit(VIRTIO_F_EVENT_IDX)
}

#[test]
fn set_features_picks_the_ring_and_keeps_the_configuration() {
    let mut q = Queue::new(256);
    q.set_size(100);
    q.set_addresses(DESC, DRIVER, DEVICE);
    q.set_ready(true);
    q.set_features(bit(VIRTIO_F_RING_PACKED) | indirect());
    assert!(q.packed());
    assert_eq!((q.size(), q.ready(), q.indirect()), (100, true, true));
    assert_eq!(q.addresses(), (DESC, DRIVER, DEVICE));
    assert_eq!(q.next_avail(), 0x8000, "wrap counters start at 1");
    q.set_features(0);
    assert!(!q.packed());
    assert_eq!(q.next_avail(), 0);
}

#[test]
fn accessors_read_back_what_was_set_and_reset_keeps_only_the_negotiated_bits() {
    let mem = mem();
    let mut q = queue(&mem, 8, 0);
    assert_eq!((q.max_size(), q.ready()), (1024, true));
    q.set_ready(false);
    assert!(!q.ready());
    assert_eq!((q.event_idx(), q.indirect()), (false, false));
    q.set_event_idx(true);
    q.set_indirect(true);
    assert_eq!((q.event_idx(), q.indirect()), (true, true));
    q.set_event_idx(false);
    q.set_indirect(false);
    assert_eq!((q.event_idx(), q.indirect()), (false, false));
    // Reset (QueueReset or device reset): back to the power-on state of the ring, the
    // negotiated EVENT_IDX/INDIRECT_DESC bits kept.
    let mut q = queue(&mem, 8, event_idx() | indirect());
    q.set_next_avail(0x0003);
    q.reset();
    assert_eq!(
        (q.size(), q.ready(), q.next_avail(), q.next_used()),
        (1024, false, 0x8000, 0x8000)
    );
    assert_eq!(
        (q.event_idx(), q.indirect(), q.max_size()),
        (true, true, 1024)
    );
}

#[test]
fn restored_positions_are_kept_inside_the_ring() {
    // A position past the ring (a hostile or stale snapshot) is taken modulo the size
    // once the layout is known good (at the first use of the ring, or at once after it);
    // the wrap counter stays as given.
    let mem = mem();
    let mut q = queue(&mem, 8, 0);
    q.set_next_avail(0x800b);
    q.set_next_used(0x000a);
    assert!(q.pop(&mem).unwrap().is_none());
    assert_eq!((q.next_avail(), q.next_used()), (0x8003, 0x0002));
    q.set_next_avail(0x0009);
    q.set_next_used(0x800f);
    assert_eq!((q.next_avail(), q.next_used()), (0x0001, 0x8007));
}

#[test]
fn enable_notification_says_whether_a_list_is_already_there() {
    let mem = mem();
    let mut q = queue(&mem, 4, 0);
    let mut d = Driver::new(4);
    assert!(!q.enable_notification(&mem).unwrap(), "nothing posted");
    d.post(&mem, &[(0x5_0000, 8, true)], 0, false);
    assert!(q.enable_notification(&mem).unwrap());
}

#[test]
fn ring_positions_are_restored_with_their_wrap_counters() {
    // set_next_avail/set_next_used (snapshot restore) take the spec's
    // encoding: index in bits 0..15, wrap counter in bit 15.
    let mem = mem();
    let mut q = queue(&mem, 8, 0);
    for v in [0x8002u16, 0x0003, 0x8000, 0x0007] {
        q.set_next_avail(v);
        q.set_next_used(v);
        assert_eq!((q.next_avail(), q.next_used()), (v, v), "{v:#x}");
    }
    // The driver's next list goes where the restored position says.
    q.set_next_avail(0x0003);
    q.set_next_used(0x0003);
    let mut d = Driver::new(8);
    let at = Pos {
        index: 3,
        wrap: false,
    };
    (d.next, d.used) = (at, at);
    d.post(&mem, &[(0x4000, 8, false)], 5, false);
    let chain = q.pop(&mem).unwrap().expect("a list at position 3, wrap 0");
    assert_eq!(chain.head_index(), 5);
}

#[test]
fn validate_checks_size_alignment_and_memory() {
    let mem = mem();
    let mut q = Queue::new(256);
    q.set_features(bit(VIRTIO_F_RING_PACKED));
    q.set_addresses(DESC, DRIVER, DEVICE);
    for (size, ok) in [
        (0, false),
        (1, true),
        (100, true),
        (256, true),
        (257, false),
    ] {
        q.set_size(size);
        assert_eq!(q.validate(&mem).is_ok(), ok, "size {size}");
    }
    q.set_size(8);
    for (d, dr, dv, area) in [
        (DESC + 8, DRIVER, DEVICE, RingArea::DescriptorRing),
        (DESC, DRIVER + 2, DEVICE, RingArea::DriverEventSuppression),
        (DESC, DRIVER, DEVICE + 2, RingArea::DeviceEventSuppression),
    ] {
        q.set_addresses(d, dr, dv);
        assert!(
            matches!(q.validate(&mem), Err(QueueError::Misaligned { area: a, .. }) if a == area)
        );
    }
    q.set_addresses(MEM_SIZE - 64, DRIVER, DEVICE);
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::AreaOutOfMemory {
            area: RingArea::DescriptorRing,
            ..
        })
    ));
    q.set_addresses(DESC, DRIVER, MEM_SIZE);
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::AreaOutOfMemory {
            area: RingArea::DeviceEventSuppression,
            ..
        })
    ));
    q.set_addresses(u64::MAX - 15, DRIVER, DEVICE);
    assert!(matches!(
        q.validate(&mem),
        Err(QueueError::AreaOverflow { .. })
    ));
}

#[test]
fn pops_a_list_with_the_id_of_its_last_descriptor_and_writes_one_used_descriptor() {
    let mem = mem();
    let mut q = queue(&mem, 8, 0);
    let mut d = Driver::new(8);
    d.post(
        &mem,
        &[
            (0x5_0000, 16, false),
            (0x6_0000, 512, true),
            (0x7_0000, 1, true),
        ],
        5,
        false,
    );
    let chain = q.pop(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), 5);
    assert_eq!((chain.readable_len(), chain.writable_len()), (16, 513));
    assert_eq!(chain.readable().len(), 1);
    assert_eq!(chain.writable()[0].addr, GuestAddress(0x6_0000));
    assert!(q.pop(&mem).unwrap().is_none());
    assert_eq!(q.available(&mem).unwrap(), 0);
    assert!(d.take_used(&mem).is_none());
    q.add_used(&mem, 5, 300).unwrap();
    assert_eq!(d.take_used(&mem), Some((5, 300)));
    // The device skipped the list: its next used descriptor is at 3.
    assert_eq!(q.next_used(), 0x8003);
    assert_eq!(q.next_avail(), 0x8003);
}

#[test]
fn wrap_counters_flip_at_the_end_of_the_ring() {
    let mem = mem();
    let mut q = queue(&mem, 5, 0);
    let mut d = Driver::new(5);
    // 2-descriptor lists in a ring of 5: lists straddle the end.
    for round in 0..40u32 {
        let id = (round % 2) as u16;
        d.post(
            &mem,
            &[(0x5_0000, 8, false), (0x6_0000, 64, true)],
            id,
            false,
        );
        let chain = q.pop(&mem).unwrap().expect("a chain each round");
        assert_eq!(chain.head_index(), id);
        assert_eq!(chain.len(), 2);
        q.add_used(&mem, id, round).unwrap();
        assert_eq!(d.take_used(&mem), Some((id, round)));
        assert_eq!(q.next_avail(), d.next.encode());
        assert_eq!(q.next_used(), d.used.encode());
    }
    // 80 descriptors: the counters flipped 16 times, back to 1.
    assert_eq!(q.next_avail(), 0x8000);
}

#[test]
fn completes_out_of_order() {
    let mem = mem();
    let mut q = queue(&mem, 8, 0);
    let mut d = Driver::new(8);
    d.post(&mem, &[(0x5_0000, 8, true)], 0, false);
    d.post(&mem, &[(0x5_0000, 8, false), (0x6_0000, 8, true)], 1, false);
    d.post(
        &mem,
        &[
            (0x5_0000, 8, false),
            (0x6_0000, 8, true),
            (0x7_0000, 8, true),
        ],
        2,
        false,
    );
    let heads: Vec<u16> = (0..3)
        .map(|_| q.pop(&mem).unwrap().unwrap().head_index())
        .collect();
    assert_eq!(heads, [0, 1, 2]);
    for (id, len) in [(2, 16), (0, 8), (1, 0)] {
        q.add_used(&mem, id, len).unwrap();
    }
    assert_eq!(d.take_used(&mem), Some((2, 16)));
    assert_eq!(d.take_used(&mem), Some((0, 8)));
    assert_eq!(d.take_used(&mem), Some((1, 0)));
    assert_eq!(d.free, 8);
    // A completed id cannot be completed again.
    assert!(matches!(
        q.add_used(&mem, 1, 0),
        Err(QueueError::InvalidUsedHead { head: 1, .. })
    ));
}

#[test]
fn indirect_table_is_flattened_and_checked() {
    let mem = mem();
    let mut q = queue(&mem, 4, indirect());
    let mut d = Driver::new(4);
    d.post(
        &mem,
        &[
            (0x5_0000, 16, false),
            (0x6_0000, 64, true),
            (0x7_0000, 8, true),
        ],
        3,
        true,
    );
    let chain = q.pop(&mem).unwrap().unwrap();
    assert!(chain.has_indirect());
    assert_eq!((chain.head_index(), chain.len()), (3, 3));
    assert_eq!(chain.writable_len(), 72);
    q.add_used(&mem, 3, 72).unwrap();
    assert_eq!(d.take_used(&mem), Some((3, 72)));
    assert_eq!(q.next_avail(), 0x8001, "one ring descriptor");

    // Not negotiated.
    let mut q = queue(&mem, 4, 0);
    let mut d = Driver::new(4);
    d.post(&mem, &[(0x5_0000, 16, false)], 0, true);
    assert!(matches!(
        q.pop(&mem),
        Err(QueueError::IndirectNotNegotiated { .. })
    ));
}

/// `(addr, len, id, flags)` of a descriptor.
type RawDescFields = (u64, u32, u16, u16);

/// Writes raw descriptors at ring positions 0.. (first wrap), the first
/// one's flags last.
fn raw_ring(mem: &Mem, descs: &[RawDescFields]) {
    for (i, &(addr, len, id, flags)) in descs.iter().enumerate().rev() {
        Driver::write_desc(
            mem,
            Driver::desc_addr(i as u16),
            addr,
            len,
            id,
            flags | VIRTQ_DESC_F_AVAIL,
        );
    }
}

#[test]
fn indirect_table_of_the_maximum_size_is_accepted_one_more_is_not() {
    let mem = mem();
    let max = MAX_INDIRECT_DESCRIPTORS;
    for i in 0..u64::from(max) {
        let at = GuestAddress(TABLES + 16 * i);
        Driver::write_desc(&mem, at, 0x5_0000, 1, 0, 0);
    }
    let mut q = queue(&mem, 4, indirect());
    raw_ring(&mem, &[(TABLES, 16 * max, 0, VIRTQ_DESC_F_INDIRECT)]);
    let chain = q.pop(&mem).unwrap().expect("a list");
    assert_eq!(chain.len(), max as usize);

    let mut q = queue(&mem, 4, indirect());
    raw_ring(&mem, &[(TABLES, 16 * (max + 1), 0, VIRTQ_DESC_F_INDIRECT)]);
    assert!(matches!(
        q.pop(&mem),
        Err(QueueError::IndirectTableTooLarge { max: 32768, .. })
    ));
}

#[test]
fn indirect_table_straddling_two_memory_regions_is_read() {
    // Two adjacent regions: a table across their boundary is valid guest
    // memory, read piecewise.
    let half = MEM_SIZE / 2;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), half as usize),
        (GuestAddress(half), half as usize),
    ])
    .unwrap();
    let table = half - 16;
    Driver::write_desc(&mem, GuestAddress(table), 0x5_0000, 8, 0, 0);
    let w = VIRTQ_DESC_F_WRITE;
    Driver::write_desc(&mem, GuestAddress(half), 0x6_0000, 4, 0, w);
    let mut q = queue(&mem, 4, indirect());
    raw_ring(&mem, &[(table, 32, 1, VIRTQ_DESC_F_INDIRECT)]);
    let chain = q.pop(&mem).unwrap().expect("a list");
    assert_eq!((chain.len(), chain.writable_len()), (2, 4));
}

#[test]
fn malformed_lists_are_peer_faults() {
    let mem = mem();
    let n = VIRTQ_DESC_F_NEXT;
    let ind = VIRTQ_DESC_F_INDIRECT;
    let w = VIRTQ_DESC_F_WRITE;
    type Case = (&'static str, Vec<RawDescFields>, fn(&QueueError) -> bool);
    let cases: Vec<Case> = vec![
        ("id past size", vec![(0, 8, 4, 0)], |e| {
            matches!(e, QueueError::InvalidBufferId { id: 4, size: 4 })
        }),
        (
            "list into a descriptor not available",
            vec![(0, 8, 0, n)],
            |e| {
                matches!(
                    e,
                    QueueError::DescriptorNotAvailable {
                        head: 0,
                        position: 1
                    }
                )
            },
        ),
        ("list longer than the ring", vec![(0, 8, 0, n); 4], |e| {
            matches!(e, QueueError::ChainTooLong { limit: 4, .. })
        }),
        (
            "readable after writable",
            vec![(0, 8, 0, n | w), (0, 8, 0, 0)],
            |e| matches!(e, QueueError::ReadableAfterWritable { .. }),
        ),
        (
            "indirect with next",
            vec![(TABLES, 16, 0, ind | n), (0, 8, 0, 0)],
            |e| matches!(e, QueueError::IndirectWithNext { .. }),
        ),
        (
            "indirect inside a list",
            vec![(0, 8, 0, n), (TABLES, 16, 0, ind)],
            |e| {
                matches!(
                    e,
                    QueueError::IndirectInList {
                        head: 0,
                        position: 1
                    }
                )
            },
        ),
        (
            "indirect length not a multiple of 16",
            vec![(TABLES, 24, 0, ind)],
            |e| matches!(e, QueueError::InvalidIndirectLength { len: 24, .. }),
        ),
        (
            "indirect table outside memory",
            vec![(MEM_SIZE - 16, 32, 0, ind)],
            |e| matches!(e, QueueError::IndirectTableOutOfMemory { .. }),
        ),
        (
            "buffer wraps the address space",
            vec![(u64::MAX, 2, 0, 0)],
            |e| matches!(e, QueueError::DescriptorAddressOverflow { .. }),
        ),
    ];
    for (what, descs, check) in cases {
        let mem = mem.clone();
        mem.write_slice(&[0u8; 64], GuestAddress(DESC)).unwrap();
        // The last ring slot stays not available (zero flags on wrap 1
        // mean "USED != AVAIL" fails).
        let mut q = queue(&mem, 4, indirect());
        raw_ring(&mem, &descs);
        let e = q.pop(&mem).expect_err(what);
        assert!(check(&e), "{what}: {e}");
        assert!(e.is_peer_fault(), "{what}");
        // Nothing advanced: the same error again.
        assert_eq!(q.next_avail(), 0x8000, "{what}");
    }
}

#[test]
fn reused_id_in_flight_is_a_peer_fault() {
    let mem = mem();
    let mut q = queue(&mem, 4, 0);
    let mut d = Driver::new(4);
    d.post(&mem, &[(0x5_0000, 8, true)], 1, false);
    d.post(&mem, &[(0x5_0000, 8, true)], 1, false);
    q.pop(&mem).unwrap().unwrap();
    assert!(matches!(
        q.pop(&mem),
        Err(QueueError::BufferIdInUse { id: 1 })
    ));
}

#[test]
fn undo_pop_gives_the_chain_back() {
    let mem = mem();
    let mut q = queue(&mem, 4, 0);
    let mut d = Driver::new(4);
    d.post(&mem, &[(0x5_0000, 8, false), (0x6_0000, 8, true)], 2, false);
    d.post(&mem, &[(0x5_0000, 8, true)], 0, false);
    assert!(!q.undo_pop());
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index(), 2);
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index(), 0);
    assert!(q.undo_pop());
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index(), 0);
    q.add_used(&mem, 0, 0).unwrap();
    // The newest pop (chain 0) was completed: it cannot be given back.
    assert!(!q.undo_pop());

    // Several pops are given back newest first.
    let mut q = queue(&mem, 4, 0);
    let mut d = Driver::new(4);
    d.post(&mem, &[(0x5_0000, 8, false)], 2, false);
    d.post(&mem, &[(0x6_0000, 8, true)], 0, false);
    q.pop(&mem).unwrap().unwrap();
    q.pop(&mem).unwrap().unwrap();
    assert!(q.undo_pop());
    assert!(q.undo_pop());
    assert!(!q.undo_pop());
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index(), 2);
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index(), 0);
}

#[test]
fn add_used_batch_checks_every_head_first() {
    let mem = mem();
    let mut q = queue(&mem, 4, 0);
    let mut d = Driver::new(4);
    d.post(&mem, &[(0x5_0000, 8, true)], 0, false);
    d.post(&mem, &[(0x5_0000, 8, true)], 1, false);
    q.pop(&mem).unwrap().unwrap();
    q.pop(&mem).unwrap().unwrap();
    for bad in [&[(0, 1), (0, 1)][..], &[(1, 1), (3, 1)], &[(9, 0)]] {
        assert!(matches!(
            q.add_used_batch(&mem, bad),
            Err(QueueError::InvalidUsedHead { .. })
        ));
        assert!(d.take_used(&mem).is_none(), "nothing written for {bad:?}");
    }
    q.add_used_batch(&mem, &[(1, 4), (0, 8)]).unwrap();
    assert_eq!(d.take_used(&mem), Some((1, 4)));
    assert_eq!(d.take_used(&mem), Some((0, 8)));
}

#[test]
fn driver_event_suppression_enable_disable_desc() {
    let mem = mem();
    for event in [false, true] {
        let features = if event { event_idx() } else { 0 };
        let mut q = queue(&mem, 4, features);
        let mut d = Driver::new(4);
        let round = |q: &mut Queue, d: &mut Driver, id: u16| {
            d.post(&mem, &[(0x5_0000, 8, true)], id, false);
            q.pop(&mem).unwrap().unwrap();
            q.add_used(&mem, id, 1).unwrap();
            d.take_used(&mem).unwrap();
            q.needs_notification(&mem).unwrap()
        };
        Driver::set_driver_event(&mem, RING_EVENT_FLAGS_ENABLE, 0);
        assert!(round(&mut q, &mut d, 0));
        assert!(!q.needs_notification(&mem).unwrap(), "nothing new");
        Driver::set_driver_event(&mem, RING_EVENT_FLAGS_DISABLE, 0);
        assert!(!round(&mut q, &mut d, 0));
        // DESC at position 3 of wrap 1: next used is 2.
        Driver::set_driver_event(&mem, RING_EVENT_FLAGS_DESC, 0x8003);
        let at_2 = round(&mut q, &mut d, 0);
        let at_3 = round(&mut q, &mut d, 0);
        if event {
            assert_eq!((at_2, at_3), (false, true));
        } else {
            // DESC without EVENT_IDX is taken as ENABLE.
            assert_eq!((at_2, at_3), (true, true));
        }
        // Across the wrap: position 1 with wrap 0 (next lap).
        Driver::set_driver_event(&mem, RING_EVENT_FLAGS_DESC, 0x0001);
        let at_0 = round(&mut q, &mut d, 0);
        let at_1 = round(&mut q, &mut d, 0);
        assert_eq!((at_0, at_1), (!event, true));
    }
}

#[test]
fn device_event_suppression_asks_for_the_next_descriptor() {
    let mem = mem();
    let read = || {
        (
            mem.read_obj::<u16>(GuestAddress(DEVICE)).unwrap(),
            mem.read_obj::<u16>(GuestAddress(DEVICE + 2)).unwrap(),
        )
    };
    mem.write_obj(0xffff_ffffu32, GuestAddress(DEVICE)).unwrap();
    let mut q = queue(&mem, 4, 0);
    assert!(q.pop(&mem).unwrap().is_none());
    assert_eq!(read().1, RING_EVENT_FLAGS_ENABLE);

    let mut q = queue(&mem, 4, event_idx());
    let mut d = Driver::new(4);
    for i in 0..6u16 {
        assert!(q.pop(&mem).unwrap().is_none());
        assert_eq!(read(), (q.next_avail(), RING_EVENT_FLAGS_DESC), "round {i}");
        d.post(&mem, &[(0x5_0000, 8, true)], 0, false);
        assert!(q.enable_notification(&mem).unwrap());
        q.pop(&mem).unwrap().unwrap();
        q.add_used(&mem, 0, 0).unwrap();
        d.take_used(&mem).unwrap();
    }
    assert_eq!(read().0 & 0x8000, 0, "the wrap bit follows the device");
}

// ---- the model driver against the device, across wrap flips -----------

#[derive(Clone, Debug)]
enum Op {
    /// Post a list of buffers (indirect when allowed and asked).
    Post(Vec<Buf>, bool),
    /// Pop one chain.
    Pop,
    /// Complete the in-flight chain at this index (modulo their number)
    /// with this length (modulo its writable length + 1).
    Complete(usize, u32),
    /// Set the driver event suppression (flags, desc).
    DriverEvent(u16, u16),
}

fn op() -> impl Strategy<Value = Op> {
    let buf = (0u64..1 << 40, 0u32..1 << 16, any::<bool>());
    prop_oneof![
        3 => (prop::collection::vec(buf, 1..4), any::<bool>()).prop_map(|(mut b, i)| {
            // Readable before writable.
            b.sort_by_key(|x| x.2);
            Op::Post(b, i)
        }),
        3 => Just(Op::Pop),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(i, l)| Op::Complete(i, l)),
        1 => (0u16..3, any::<u16>()).prop_map(|(f, d)| Op::DriverEvent(f, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn model_driver_across_wrap_flips(
        size in prop_oneof![Just(1u16), Just(3), Just(4), Just(7), Just(16)],
        features in 0u64..4,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mem = mem();
        let ev = features & 1 != 0;
        let ind = features & 2 != 0;
        let mut q = queue(&mem, size, (u64::from(ev) << 29) | (u64::from(ind) << 28));
        let mut d = Driver::new(size);
        let mut posted = std::collections::VecDeque::new();
        let mut in_flight: Vec<(u16, u32)> = Vec::new();
        let mut completed = std::collections::VecDeque::new();
        let mut event = (RING_EVENT_FLAGS_ENABLE, 0u16);
        let mut free_ids: Vec<u16> = (0..size).rev().collect();
        for op in ops {
            match op {
                Op::Post(bufs, want_ind) => {
                    let indirect = ind && want_ind;
                    let need = if indirect { 1 } else { bufs.len() as u16 };
                    if need > d.free || free_ids.is_empty() {
                        continue;
                    }
                    let id = free_ids.pop().unwrap();
                    d.post(&mem, &bufs, id, indirect);
                    posted.push_back((id, bufs));
                }
                Op::Pop => {
                    let got = q.pop(&mem).unwrap();
                    match posted.pop_front() {
                        None => prop_assert!(got.is_none()),
                        Some((id, bufs)) => {
                            let chain = got.expect("a posted chain");
                            prop_assert_eq!(chain.head_index(), id);
                            let seen: Vec<Buf> = chain
                                .descriptors()
                                .iter()
                                .map(|x| (x.addr.0, x.len, x.writable))
                                .collect();
                            prop_assert_eq!(seen, bufs);
                            in_flight.push((id, chain.writable_len()));
                        }
                    }
                }
                Op::Complete(i, len) => {
                    if in_flight.is_empty() {
                        continue;
                    }
                    let (id, wlen) = in_flight.remove(i % in_flight.len());
                    let len = len % (wlen + 1);
                    let old = q.next_used();
                    q.add_used(&mem, id, len).unwrap();
                    let notify = q.needs_notification(&mem).unwrap();
                    let want = match event.0 {
                        RING_EVENT_FLAGS_DISABLE => false,
                        RING_EVENT_FLAGS_DESC if ev => {
                            need_event(event.1, q.next_used(), old, size)
                        }
                        _ => true,
                    };
                    prop_assert_eq!(notify, want);
                    completed.push_back((id, len));
                    while let Some(u) = d.take_used(&mem) {
                        prop_assert_eq!(Some(u), completed.pop_front());
                        free_ids.push(u.0);
                    }
                }
                Op::DriverEvent(f, desc) => {
                    event = (f, desc);
                    Driver::set_driver_event(&mem, f, desc);
                }
            }
            prop_assert_eq!(q.available(&mem).unwrap() as usize, posted.len());
        }
        prop_assert!(completed.is_empty());
    }
}
