//! The driver-role packed virtqueue (virtio v1.4 §2.8 "Packed
//! Virtqueues"): the packed half of [`VirtQueue`](super::VirtQueue).
//!
//! One DMA allocation holds the descriptor ring (`16 * size` bytes), then
//! the driver event suppression structure (the driver area, 4 bytes) and
//! the device event suppression structure (the device area, 4 bytes).
//! Buffer ids are the tokens; the record of every chain in flight (how many
//! ring descriptors it holds, its writable bytes, its indirect table) is
//! kept in driver memory by id. The device's only inputs are the used
//! descriptors (flags, id, len) and its event suppression structure: each
//! is checked before use.

use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::sync::atomic::{fence, Ordering};

use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::packed::{
    need_event, MAX_QUEUE_SIZE, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE, WRAP_COUNTER_BIT,
};

use super::{check_chain, unshare_all, ChainShape, Segment, SharedBuf, Used};
use crate::error::{Error, Result};
use crate::hal::{Dma, Hal, PAGE_SIZE};

/// `InFlight::table` of a chain without an indirect table.
const NO_TABLE: u16 = u16::MAX;

/// The record of one chain, by buffer id.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Total writable bytes (the limit for the used `len`).
    writable: u64,
    /// Ring descriptors the chain holds; 0 when no chain has this id.
    descs: u16,
    /// Index in `tables` of the chain's indirect table, or [`NO_TABLE`].
    table: u16,
    /// Whether the chain has caller buffers to unshare.
    shared: bool,
}

impl InFlight {
    const IDLE: Self = Self {
        writable: 0,
        descs: 0,
        table: NO_TABLE,
        shared: false,
    };
}

/// A ring position: descriptor index and wrap counter (§2.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    index: u16,
    wrap: bool,
}

impl Pos {
    const START: Self = Self {
        index: 0,
        wrap: true,
    };

    fn encode(self) -> u16 {
        self.index | if self.wrap { WRAP_COUNTER_BIT } else { 0 }
    }

    /// `n` descriptors further in a ring of `size` (`index < size`,
    /// `n <= size`).
    fn advance(self, n: u16, size: u16) -> Self {
        // Both at most 2^15 (index below it): the sum fits u16.
        let i = self.index.saturating_add(n);
        if i >= size {
            Self {
                index: i - size,
                wrap: !self.wrap,
            }
        } else {
            Self {
                index: i,
                wrap: self.wrap,
            }
        }
    }
}

/// The AVAIL/USED bits that make a descriptor available for wrap counter
/// `wrap` (§2.8.1: AVAIL equal to it, USED its inverse).
fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL
    } else {
        VIRTQ_DESC_F_USED
    }
}

/// Writes the `addr`, `len` and `id` of descriptor `i` of `mem` (not its
/// flags), little-endian.
fn write_desc_body<H: Hal>(mem: &mut Dma<H>, i: usize, addr: u64, len: u32, id: u16) {
    let base = i * 16;
    mem.store64(base, addr.to_le());
    mem.store32(base + 8, len.to_le());
    mem.store16(base + 12, id.to_le());
}

/// A packed virtqueue, driver role (virtio v1.4 §2.8). Tokens are buffer
/// ids.
pub(crate) struct PackedQueue<H: Hal + Clone> {
    hal: H,
    index: u16,
    size: u16,
    mem: ManuallyDrop<Dma<H>>,
    event_idx: bool,
    indirect: bool,
    used_notifications: bool,
    /// Where the next list goes (driver ring wrap counter).
    next_avail: Pos,
    /// Where the next used descriptor is expected.
    last_used: Pos,
    /// `next_avail` when the notification decision was last taken.
    kicked: Pos,
    /// Free ring descriptors.
    num_free: u16,
    /// Free buffer ids (a stack).
    free_ids: Vec<u16>,
    in_flight: Vec<InFlight>,
    /// Caller buffers shared for the chains in flight, by id.
    shared: Vec<Vec<SharedBuf>>,
    /// Every indirect table allocated (fewer than `size`); chains name
    /// theirs by index.
    tables: Vec<Dma<H>>,
    free_tables: Vec<u16>,
    released: bool,
}

impl<H: Hal + Clone> core::fmt::Debug for PackedQueue<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PackedQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("num_free", &self.num_free)
            .field("next_avail", &self.next_avail)
            .field("last_used", &self.last_used)
            .finish()
    }
}

impl<H: Hal + Clone> PackedQueue<H> {
    /// Allocates zeroed memory for packed queue `index` of `size`
    /// descriptors (1..=32768) and sets the driver event suppression
    /// structure for the features (EVENT_IDX: RING_EVENT_FLAGS_DESC at the
    /// first used position; otherwise ENABLE).
    pub(super) fn new(hal: H, index: u16, size: u16, features: u64) -> Result<Self> {
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(Error::ZeroQueueSize(index));
        }
        let n = usize::from(size);
        // 16 * 32768 + 8 bytes at most.
        let mem = Dma::new(hal.clone(), 16 * n + 8)?;
        let mut shared = Vec::with_capacity(n);
        shared.resize_with(n, Vec::new);
        let mut q = Self {
            hal,
            index,
            size,
            mem: ManuallyDrop::new(mem),
            event_idx: features & bit(VIRTIO_F_EVENT_IDX) != 0,
            indirect: features & bit(VIRTIO_F_INDIRECT_DESC) != 0,
            used_notifications: true,
            next_avail: Pos::START,
            last_used: Pos::START,
            kicked: Pos::START,
            num_free: size,
            free_ids: (0..size).rev().collect(),
            in_flight: alloc::vec![InFlight::IDLE; n],
            shared,
            tables: Vec::new(),
            free_tables: Vec::new(),
            released: false,
        };
        q.set_used_notifications(true);
        Ok(q)
    }

    fn driver_off(&self) -> usize {
        16 * usize::from(self.size)
    }

    fn device_off(&self) -> usize {
        16 * usize::from(self.size) + 4
    }

    pub(super) fn hal(&self) -> &H {
        &self.hal
    }

    pub(super) fn index(&self) -> u16 {
        self.index
    }

    pub(super) fn size(&self) -> u16 {
        self.size
    }

    pub(super) fn num_free(&self) -> u16 {
        self.num_free
    }

    pub(super) fn indirect(&self) -> bool {
        self.indirect
    }

    pub(super) fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The next position to make available, encoded as notification data
    /// carries it (§2.9: `next_off` in bits 0..15, `next_wrap` in bit 15).
    pub(super) fn avail_idx(&self) -> u16 {
        self.next_avail.encode()
    }

    pub(super) fn desc_addr(&self) -> u64 {
        self.mem.paddr()
    }

    pub(super) fn driver_addr(&self) -> u64 {
        self.mem.paddr().saturating_add(self.driver_off() as u64)
    }

    pub(super) fn device_addr(&self) -> u64 {
        self.mem.paddr().saturating_add(self.device_off() as u64)
    }

    pub(super) fn has_in_flight(&self) -> bool {
        self.num_free != self.size || self.in_flight.iter().any(|f| f.descs != 0)
    }

    /// §2.8.10: enabled, RING_EVENT_FLAGS_DESC at the next used position
    /// with EVENT_IDX (moved forward as chains are popped), ENABLE
    /// without; disabled, RING_EVENT_FLAGS_DISABLE. The offset is written
    /// before the flags, and a full barrier follows.
    pub(super) fn set_used_notifications(&mut self, enabled: bool) {
        self.used_notifications = enabled;
        let flags = match (enabled, self.event_idx) {
            (false, _) => RING_EVENT_FLAGS_DISABLE,
            (true, true) => RING_EVENT_FLAGS_DESC,
            (true, false) => RING_EVENT_FLAGS_ENABLE,
        };
        if enabled && self.event_idx {
            let off = self.driver_off();
            self.mem.store16(off, self.last_used.encode().to_le());
        }
        let off = self.driver_off() + 2;
        self.mem.store16(off, flags.to_le());
        fence(Ordering::SeqCst);
    }

    /// Makes a chain available (§2.8.21.1): its descriptors with their
    /// flags, the first one's flags last after a release barrier, so that
    /// the device never sees part of a list. Returns its buffer id.
    pub(super) fn add_inner(
        &mut self,
        readable: &[Segment],
        writable: &[Segment],
        shared: &mut Vec<SharedBuf>,
    ) -> Result<u16> {
        let ChainShape {
            total,
            writable_bytes,
            use_indirect,
            ring_descs,
        } = check_chain(readable, writable, self.indirect, self.size)?;
        if ring_descs > usize::from(self.num_free) || self.free_ids.is_empty() {
            return Err(Error::QueueFull {
                needed: ring_descs,
                free: usize::from(self.num_free),
            });
        }
        let table_index = if use_indirect {
            self.indirect_table(readable, writable, total)?
        } else {
            NO_TABLE
        };
        let Some(id) = self.free_ids.pop() else {
            return Err(Error::QueueFull {
                needed: ring_descs,
                free: 0,
            });
        };
        let first = self.next_avail;
        let first_flags;
        if use_indirect {
            let table = &self.tables[usize::from(table_index)];
            // total * 16 <= 4096 fits u32.
            let table_len = u32::try_from(total * 16).unwrap_or(0);
            let paddr = table.paddr();
            write_desc_body(
                &mut self.mem,
                usize::from(first.index),
                paddr,
                table_len,
                id,
            );
            first_flags = VIRTQ_DESC_F_INDIRECT | avail_bits(first.wrap);
            self.next_avail = first.advance(1, self.size);
        } else {
            let mut flags_first = 0;
            let mut i = 0;
            for (list, write) in [(readable, 0u16), (writable, VIRTQ_DESC_F_WRITE)] {
                for seg in list {
                    let pos = self.next_avail;
                    let mut flags = write | avail_bits(pos.wrap);
                    if i + 1 < total {
                        flags |= VIRTQ_DESC_F_NEXT;
                    }
                    let d = usize::from(pos.index);
                    write_desc_body(&mut self.mem, d, seg.addr, seg.len, id);
                    if i == 0 {
                        flags_first = flags;
                    } else {
                        self.mem.store16(d * 16 + 14, flags.to_le());
                    }
                    self.next_avail = pos.advance(1, self.size);
                    i += 1;
                }
            }
            first_flags = flags_first;
        }
        // ring_descs <= num_free <= size <= 32768.
        let descs = u16::try_from(ring_descs).unwrap_or(u16::MAX);
        self.num_free -= descs;
        let has_shared = !shared.is_empty();
        if has_shared {
            self.shared[usize::from(id)] = core::mem::take(shared);
        }
        self.in_flight[usize::from(id)] = InFlight {
            writable: writable_bytes,
            descs,
            table: table_index,
            shared: has_shared,
        };
        // Everything else of the list before its first flags (§2.8.21.1).
        fence(Ordering::Release);
        let d = usize::from(first.index);
        self.mem.store16(d * 16 + 14, first_flags.to_le());
        Ok(id)
    }

    /// Fills an indirect table (§2.8.7: descriptors in order, only WRITE
    /// set) and returns its index in `tables`.
    fn indirect_table(
        &mut self,
        readable: &[Segment],
        writable: &[Segment],
        total: usize,
    ) -> Result<u16> {
        let ti = match self.free_tables.pop() {
            Some(ti) => ti,
            None => {
                // Each table is held by a chain in flight: fewer than
                // `size` <= 32768, so the index fits u16, never NO_TABLE.
                let ti = u16::try_from(self.tables.len())
                    .ok()
                    .filter(|&ti| ti < self.size)
                    .ok_or(Error::QueueFull { needed: 1, free: 0 })?;
                self.tables.push(Dma::new(self.hal.clone(), PAGE_SIZE)?);
                ti
            }
        };
        let table = &mut self.tables[usize::from(ti)];
        let mut i = 0;
        for (list, write) in [(readable, 0u16), (writable, VIRTQ_DESC_F_WRITE)] {
            for seg in list {
                write_desc_body(table, i, seg.addr, seg.len, 0);
                table.store16(i * 16 + 14, write.to_le());
                i += 1;
            }
        }
        debug_assert_eq!(i, total);
        Ok(ti)
    }

    /// §2.8.10: the device event suppression structure, read after a full
    /// barrier: DISABLE, no; DESC with EVENT_IDX, whether the position it
    /// names was made available since the last call; otherwise yes.
    pub(super) fn should_notify(&mut self) -> bool {
        fence(Ordering::SeqCst);
        let (new, old) = (self.next_avail, self.kicked);
        self.kicked = new;
        let off = self.device_off();
        let flags = u16::from_le(self.mem.load16(off + 2)) & 0x3;
        match flags {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC if self.event_idx => {
                let event = u16::from_le(self.mem.load16(off));
                need_event(event, new.encode(), old.encode(), self.size)
            }
            _ => true,
        }
    }

    /// Whether the descriptor at `last_used` is used for its wrap counter
    /// (AVAIL and USED both equal to it).
    fn used_at_next(&self) -> bool {
        let flags = u16::from_le(self.mem.load16(usize::from(self.last_used.index) * 16 + 14));
        let w = self.last_used.wrap;
        (flags & VIRTQ_DESC_F_AVAIL != 0) == w && (flags & VIRTQ_DESC_F_USED != 0) == w
    }

    pub(super) fn can_pop(&self) -> bool {
        self.used_at_next()
    }

    /// Reads and validates the next used descriptor without consuming it
    /// (§2.8.21.2).
    fn next_used(&self) -> Result<Option<(u16, u32)>> {
        if !self.used_at_next() {
            return Ok(None);
        }
        // Read id and len only after seeing the flags.
        fence(Ordering::Acquire);
        let d = usize::from(self.last_used.index) * 16;
        let id = u16::from_le(self.mem.load16(d + 12));
        // §2.8.4 makes `len` reserved in a used descriptor without
        // VIRTQ_DESC_F_WRITE, but QEMU (as of 10) never sets WRITE there
        // and Linux reads `len` whatever the flag: so does this driver
        // (still bounded by the chain's writable bytes below).
        let len = u32::from_le(self.mem.load32(d + 8));
        let Some(flight) = self.in_flight.get(usize::from(id)) else {
            return Err(Error::UsedIdOutOfRange {
                queue: self.index,
                id: u32::from(id),
                size: self.size,
            });
        };
        if flight.descs == 0 {
            return Err(Error::UsedIdNotInFlight {
                queue: self.index,
                id: u32::from(id),
            });
        }
        if u64::from(len) > flight.writable {
            return Err(Error::UsedLenTooLarge {
                queue: self.index,
                id,
                len,
                max: flight.writable,
            });
        }
        Ok(Some((id, len)))
    }

    pub(super) fn peek_used(&self) -> Result<Option<Used>> {
        Ok(self.next_used()?.map(|(token, len)| Used { token, len }))
    }

    /// Takes the next used descriptor, skips the descriptors its list held
    /// (§2.8.6), moves the driver event offset along with EVENT_IDX, and
    /// retires the chain.
    pub(super) fn pop_used(&mut self) -> Result<Option<Used>> {
        let Some((id, len)) = self.next_used()? else {
            return Ok(None);
        };
        let descs = self.in_flight[usize::from(id)].descs;
        self.last_used = self.last_used.advance(descs, self.size);
        if self.event_idx && self.used_notifications {
            let off = self.driver_off();
            self.mem.store16(off, self.last_used.encode().to_le());
        }
        self.retire(id);
        Ok(Some(Used { token: id, len }))
    }

    fn retire(&mut self, id: u16) {
        let i = usize::from(id);
        let flight = self.in_flight[i];
        if flight.descs == 0 {
            return;
        }
        self.in_flight[i] = InFlight::IDLE;
        self.num_free = self.num_free.saturating_add(flight.descs).min(self.size);
        self.free_ids.push(id);
        if flight.table != NO_TABLE {
            self.free_tables.push(flight.table);
        }
        if flight.shared {
            let mut shared = core::mem::take(&mut self.shared[i]);
            unshare_all(&self.hal, &mut shared);
        }
    }

    pub(super) fn release(&mut self) {
        for id in 0..self.size {
            self.retire(id);
        }
        self.released = true;
    }
}

impl<H: Hal + Clone> Drop for PackedQueue<H> {
    fn drop(&mut self) {
        if self.released {
            // SAFETY: `mem` is dropped exactly once, here; `released` says
            // the transport saw the device stop using it.
            unsafe { ManuallyDrop::drop(&mut self.mem) };
        } else {
            log::warn!(
                "virtqueue {} dropped while possibly live: leaking its memory",
                self.index
            );
            let mut held = alloc::vec![false; self.tables.len()];
            for f in &self.in_flight {
                if f.descs != 0 && f.table != NO_TABLE {
                    if let Some(h) = held.get_mut(usize::from(f.table)) {
                        *h = true;
                    }
                }
            }
            for (t, held) in core::mem::take(&mut self.tables).into_iter().zip(held) {
                if held {
                    t.leak();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::{BounceHal, IdentityHal};

    fn seg(addr: u64, len: u32) -> Segment {
        Segment { addr, len }
    }

    fn flags<H: Hal + Clone>(q: &PackedQueue<H>, i: usize) -> u16 {
        u16::from_le(q.mem.load16(i * 16 + 14))
    }

    fn desc_addr<H: Hal + Clone>(q: &PackedQueue<H>, i: usize) -> u64 {
        let lo = u64::from(u32::from_le(q.mem.load32(i * 16)));
        let hi = u64::from(u32::from_le(q.mem.load32(i * 16 + 4)));
        lo | hi << 32
    }

    /// Plays the device: writes a used descriptor at ring position `at`.
    fn used<H: Hal + Clone>(q: &mut PackedQueue<H>, at: usize, id: u16, len: u32, wrap: bool) {
        let mut f = if wrap {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        if len != 0 {
            f |= VIRTQ_DESC_F_WRITE;
        }
        q.mem.store32(at * 16 + 8, len.to_le());
        q.mem.store16(at * 16 + 12, id.to_le());
        q.mem.store16(at * 16 + 14, f.to_le());
    }

    #[test]
    fn list_flags_ids_and_wrap() {
        let mut q = PackedQueue::new(IdentityHal, 0, 4, 0).unwrap();
        let id = q
            .add_inner(
                &[seg(0x1000, 8)],
                &[seg(0x2000, 16), seg(0x3000, 4)],
                &mut Vec::new(),
            )
            .unwrap();
        let a = VIRTQ_DESC_F_AVAIL;
        assert_eq!(flags(&q, 0), a | VIRTQ_DESC_F_NEXT);
        assert_eq!(flags(&q, 1), a | VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
        assert_eq!(flags(&q, 2), a | VIRTQ_DESC_F_WRITE);
        assert_eq!(u16::from_le(q.mem.load16(2 * 16 + 12)), id);
        assert_eq!((q.num_free(), q.avail_idx()), (1, 0x8003));
        // Two more descriptors do not fit.
        assert!(matches!(
            q.add_inner(&[seg(1, 1), seg(2, 2)], &[], &mut Vec::new()),
            Err(Error::QueueFull { .. })
        ));
        used(&mut q, 0, id, 20, true);
        assert_eq!(q.pop_used(), Ok(Some(Used { token: id, len: 20 })));
        assert_eq!(q.num_free(), 4);
        // The next list wraps: position 3 (wrap 1), then 0 and 1 (wrap 0).
        q.add_inner(&[seg(1, 1)], &[seg(2, 2), seg(3, 3)], &mut Vec::new())
            .unwrap();
        assert_eq!(
            flags(&q, 0),
            VIRTQ_DESC_F_USED | VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE
        );
        assert_eq!(flags(&q, 1), VIRTQ_DESC_F_USED | VIRTQ_DESC_F_WRITE);
        assert_eq!(q.avail_idx(), 0x0002);
        q.release();
    }

    #[test]
    fn used_descriptors_are_validated() {
        let mut q = PackedQueue::new(IdentityHal, 3, 4, 0).unwrap();
        let id = q
            .add_inner(&[], &[seg(0x2000, 16)], &mut Vec::new())
            .unwrap();
        assert!(!q.can_pop());
        used(&mut q, 0, 9, 0, true);
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedIdOutOfRange { id: 9, .. })
        ));
        used(&mut q, 0, (id + 1) % 4, 0, true);
        assert!(matches!(q.pop_used(), Err(Error::UsedIdNotInFlight { .. })));
        used(&mut q, 0, id, 17, true);
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedLenTooLarge { len: 17, .. })
        ));
        // Used with the wrong wrap counter: not used yet.
        used(&mut q, 0, id, 16, false);
        assert_eq!(q.pop_used(), Ok(None));
        used(&mut q, 0, id, 16, true);
        assert_eq!(q.pop_used(), Ok(Some(Used { token: id, len: 16 })));
        q.release();
    }

    #[test]
    fn event_suppression_both_ways() {
        let features = bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
        let mut q = PackedQueue::new(IdentityHal, 0, 8, features).unwrap();
        let drv = q.driver_off();
        let dev = q.device_off();
        // Driver area: DESC at the first used position.
        assert_eq!(u16::from_le(q.mem.load16(drv + 2)), RING_EVENT_FLAGS_DESC);
        assert_eq!(u16::from_le(q.mem.load16(drv)), 0x8000);
        q.set_used_notifications(false);
        assert_eq!(
            u16::from_le(q.mem.load16(drv + 2)),
            RING_EVENT_FLAGS_DISABLE
        );
        q.set_used_notifications(true);
        // An indirect list takes one ring descriptor.
        let id = q
            .add_inner(&[seg(1, 1)], &[seg(2, 2), seg(3, 3)], &mut Vec::new())
            .unwrap();
        assert_eq!(flags(&q, 0), VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_INDIRECT);
        assert_eq!(u32::from_le(q.mem.load32(8)), 48);
        // Device area: DESC at position 0 -> the list just made passes it.
        q.mem.store16(dev, 0x8000u16.to_le());
        q.mem.store16(dev + 2, RING_EVENT_FLAGS_DESC.to_le());
        assert!(q.should_notify());
        q.add_inner(&[seg(1, 1)], &[], &mut Vec::new()).unwrap();
        assert!(!q.should_notify(), "event at 0 already passed");
        q.mem.store16(dev + 2, RING_EVENT_FLAGS_DISABLE.to_le());
        q.add_inner(&[seg(1, 1)], &[], &mut Vec::new()).unwrap();
        assert!(!q.should_notify());
        q.mem.store16(dev + 2, RING_EVENT_FLAGS_ENABLE.to_le());
        assert!(q.should_notify());
        // Popping moves the driver's event offset along.
        used(&mut q, 0, id, 5, true);
        assert_eq!(q.pop_used().unwrap().unwrap().token, id);
        assert_eq!(u16::from_le(q.mem.load16(drv)), 0x8001);
        q.release();
    }

    #[test]
    fn areas_follow_the_descriptor_ring_and_features_read_back() {
        // The driver area (driver event suppression) right after the 16-byte descriptors,
        // the device area 4 bytes later: the addresses the transport writes to
        // QueueDriver/QueueDevice are where the driver and device really meet.
        let features = bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
        let mut q = PackedQueue::new(IdentityHal, 2, 8, features).unwrap();
        assert_eq!(q.driver_addr(), q.desc_addr() + 8 * 16);
        assert_eq!(q.device_addr(), q.desc_addr() + 8 * 16 + 4);
        assert_eq!((q.index(), q.size()), (2, 8));
        assert_eq!((q.indirect(), q.event_idx()), (true, true));
        let mut plain = PackedQueue::new(IdentityHal, 0, 8, 0).unwrap();
        assert_eq!((plain.indirect(), plain.event_idx()), (false, false));
        q.release();
        plain.release();
    }

    #[test]
    fn indirect_table_lists_the_segments_in_order_with_write_flags() {
        let features = bit(VIRTIO_F_INDIRECT_DESC);
        let mut q = PackedQueue::new(IdentityHal, 0, 4, features).unwrap();
        let readable = [seg(0x1000, 8)];
        let writable = [seg(0x2000, 16), seg(0x3000, 4)];
        q.add_inner(&readable, &writable, &mut Vec::new()).unwrap();
        assert_eq!(flags(&q, 0), VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_INDIRECT);
        let table = &q.tables[0];
        assert_eq!(desc_addr(&q, 0), table.paddr());
        assert_eq!(u32::from_le(q.mem.load32(8)), 48);
        let want = [
            (0x1000, 8, 0),
            (0x2000, 16, VIRTQ_DESC_F_WRITE),
            (0x3000, 4, VIRTQ_DESC_F_WRITE),
        ];
        for (i, (addr, len, f)) in want.into_iter().enumerate() {
            let lo = u64::from(u32::from_le(table.load32(i * 16)));
            let hi = u64::from(u32::from_le(table.load32(i * 16 + 4)));
            assert_eq!(lo | hi << 32, addr, "entry {i}");
            assert_eq!(u32::from_le(table.load32(i * 16 + 8)), len, "entry {i}");
            assert_eq!(u16::from_le(table.load16(i * 16 + 14)), f, "entry {i}");
        }
        // Nothing past the three entries.
        for off in (48..PAGE_SIZE).step_by(2) {
            assert_eq!(table.load16(off), 0, "byte {off}");
        }
        q.release();
    }

    #[test]
    fn desc_event_flags_without_event_idx_mean_notify() {
        // RING_EVENT_FLAGS_DESC is valid only with EVENT_IDX (§2.8.10):
        // without it the driver notifies, whatever offset it names.
        let mut q = PackedQueue::new(IdentityHal, 0, 4, 0).unwrap();
        let dev = q.device_off();
        q.mem.store16(dev, 0x8003u16.to_le());
        q.mem.store16(dev + 2, RING_EVENT_FLAGS_DESC.to_le());
        q.add_inner(&[seg(1, 1)], &[], &mut Vec::new()).unwrap();
        assert!(q.should_notify());
        q.release();
    }

    #[test]
    fn lists_complete_in_order_across_wraps() {
        // Lists of one and two descriptors through a ring of 4 for three
        // laps; the test plays the device, in order. Each list is seen
        // used only once the device marked it, at its own position.
        let mut q = PackedQueue::new(IdentityHal, 0, 4, 0).unwrap();
        let (mut at, mut wrap) = (0usize, true);
        for i in 0..12u32 {
            let n = 1 + (i % 2) as usize;
            let segs = [seg(1, 8), seg(2, 8)];
            let id = q.add_inner(&[], &segs[..n], &mut Vec::new()).unwrap();
            assert_eq!(q.pop_used(), Ok(None), "list {i} not used yet");
            assert!(!q.can_pop());
            used(&mut q, at, id, i % 8, wrap);
            assert!(q.can_pop());
            let want = Used {
                token: id,
                len: i % 8,
            };
            assert_eq!(q.peek_used(), Ok(Some(want)), "list {i}");
            assert_eq!(q.pop_used(), Ok(Some(want)), "list {i}");
            at += n;
            if at >= 4 {
                at -= 4;
                wrap = !wrap;
            }
        }
        q.release();
    }

    #[test]
    fn indirect_tables_are_reused_after_completion() {
        // Indirect lists (two segments) and direct ones (one segment)
        // alternate, one in flight at a time: one table serves them all.
        let features = bit(VIRTIO_F_INDIRECT_DESC);
        let mut q = PackedQueue::new(IdentityHal, 0, 4, features).unwrap();
        let mut wrap = true;
        for i in 0..12usize {
            let segs = [seg(1, 1), seg(2, 2)];
            let id = q
                .add_inner(&segs[..1 + i % 2], &[], &mut Vec::new())
                .unwrap();
            used(&mut q, i % 4, id, 0, wrap);
            assert_eq!(q.pop_used(), Ok(Some(Used { token: id, len: 0 })));
            if i % 4 == 3 {
                wrap = !wrap;
            }
        }
        assert_eq!(q.tables.len(), 1);
        q.release();
    }

    #[test]
    fn a_list_may_take_every_free_descriptor() {
        let mut q = PackedQueue::new(IdentityHal, 0, 4, 0).unwrap();
        let segs = [seg(1, 1), seg(2, 2), seg(3, 3), seg(4, 4)];
        let id = q.add_inner(&segs, &[], &mut Vec::new()).unwrap();
        assert_eq!(q.num_free(), 0);
        assert!(matches!(
            q.add_inner(&[seg(5, 5)], &[], &mut Vec::new()),
            Err(Error::QueueFull { needed: 1, free: 0 })
        ));
        used(&mut q, 0, id, 0, true);
        assert_eq!(q.pop_used(), Ok(Some(Used { token: id, len: 0 })));
        assert_eq!(q.num_free(), 4);
        q.release();
    }

    #[test]
    fn empty_chains_are_refused_and_post_nothing() {
        for features in [0, bit(VIRTIO_F_INDIRECT_DESC)] {
            let mut q = PackedQueue::new(IdentityHal, 0, 4, features).unwrap();
            assert_eq!(
                q.add_inner(&[], &[], &mut Vec::new()),
                Err(Error::EmptyChain)
            );
            assert_eq!((q.num_free(), q.avail_idx()), (4, 0x8000));
            assert_eq!(flags(&q, 0), 0, "nothing made available");
            q.release();
        }
    }

    #[test]
    fn shared_buffers_are_unshared_at_completion() {
        // Through bounce buffers: the device's write reaches the caller's
        // buffer only when the completed list's buffers are unshared.
        let hal = BounceHal::default();
        let features = bit(vmmio_spec::features::VIRTIO_F_RING_PACKED);
        let mut v = crate::queue::VirtQueue::new(hal.clone(), 0, 4, false, features).unwrap();
        let out = [1u8, 2, 3];
        let mut inb = [0u8; 4];
        // SAFETY: the test plays the device and keeps both buffers alive
        // and untouched until the pop below.
        let t = unsafe { v.add(&[&out], &mut [&mut inb]) }.unwrap();
        assert_eq!(hal.live(), 2);
        let q = v.packed_mut();
        let out_addr = desc_addr(q, 0);
        assert_eq!(hal.device_view(out_addr), [1, 2, 3]);
        let in_addr = desc_addr(q, 1);
        hal.device_write(in_addr, &[0xaa]);
        used(q, 0, t, 1, true);
        assert_eq!(v.pop_used(), Ok(Some(Used { token: t, len: 1 })));
        assert_eq!(hal.live(), 0, "every buffer unshared at completion");
        assert_eq!(inb, [0xaa, 0, 0, 0]);
        v.release();
    }
}
