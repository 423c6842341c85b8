//! The device-role packed virtqueue (virtio v1.4 §2.8 "Packed
//! Virtqueues"): the packed half of [`Queue`](super::Queue), which
//! documents the API.
//!
//! One descriptor ring holds both what the driver makes available and what
//! the device returns; the wrap counters (§2.8.1) tell the two apart. The
//! device keeps, per buffer id, how many ring descriptors the chain took
//! (it skips that many after writing the chain's one used descriptor,
//! §2.8.6), so chains may complete in any order. The driver area and the
//! device area are the two event suppression structures (§2.8.10).

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, GuestAddress, GuestMemory, Permissions};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::packed::{
    need_event, DESC_ALIGN, EVENT_ALIGN, MAX_QUEUE_SIZE as MAX_PACKED_QUEUE_SIZE,
    RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE,
    WRAP_COUNTER_BIT as WRAP_BIT,
};

use super::chain::{DescriptorChain, MAX_INDIRECT_DESCRIPTORS};
use super::error::{QueueError, RingArea};
use super::ring::Area;

/// Size of each event suppression structure, in bytes.
const EVENT_SIZE: u64 = 4;
/// Byte offsets inside a descriptor and an event suppression structure.
const DESC_FLAGS: usize = 14;
const DESC_LEN: usize = 8;
const EVENT_DESC: usize = 0;
const EVENT_FLAGS: usize = 2;
/// Mark of a buffer id in `in_flight` while `add_used_batch` checks a
/// batch (the counts themselves are at most 2^15).
const BATCH_MARK: u32 = 1 << 31;

/// A position in the ring: a descriptor index and the wrap counter that
/// goes with it (§2.8.1; both counters start at 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pos {
    index: u16,
    wrap: bool,
}

impl Pos {
    const START: Self = Self {
        index: 0,
        wrap: true,
    };

    /// The spec's encoding: the index in bits 0..15, the wrap counter in
    /// bit 15.
    fn encode(self) -> u16 {
        self.index | if self.wrap { WRAP_BIT } else { 0 }
    }

    fn decode(v: u16) -> Self {
        Self {
            index: v & !WRAP_BIT,
            wrap: v & WRAP_BIT != 0,
        }
    }

    /// `n` descriptors further in a ring of `size` (`index < size`,
    /// `n <= size`).
    #[inline]
    fn advance(self, n: u16, size: u16) -> Self {
        // Both below 2^15 + 1: the sum fits u32 and the result u16.
        let i = u32::from(self.index) + u32::from(n);
        let size32 = u32::from(size);
        if i >= size32 {
            Self {
                index: (i - size32) as u16,
                wrap: !self.wrap,
            }
        } else {
            Self {
                index: i as u16,
                wrap: self.wrap,
            }
        }
    }
}

/// Whether a descriptor's flags mark it available for wrap counter `wrap`
/// (§2.8.1: AVAIL equal to the counter, USED its inverse).
#[inline]
fn is_available(flags: u16, wrap: bool) -> bool {
    (flags & VIRTQ_DESC_F_AVAIL != 0) == wrap && (flags & VIRTQ_DESC_F_USED != 0) != wrap
}

/// Decoded `struct pvirtq_desc` (16 bytes, little-endian).
#[derive(Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

impl RawDesc {
    /// `addr` is bytes 0..8, `len` 8..12, `id` 12..14, `flags` 14..16; the
    /// truncating casts select those fields.
    #[inline]
    fn decode(v: u128) -> Self {
        Self {
            addr: v as u64,
            len: (v >> 64) as u32,
            id: (v >> 96) as u16,
            flags: (v >> 112) as u16,
        }
    }
}

/// A packed virtqueue, device role (virtio v1.4 §2.8).
#[derive(Clone, Debug)]
pub(crate) struct PackedQueue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_ring: u64,
    driver_area: u64,
    device_area: u64,
    event_idx: bool,
    indirect: bool,
    /// Where the next chain starts (device ring wrap counter for reading).
    next_avail: Pos,
    /// Where the next used descriptor goes.
    next_used: Pos,
    /// `next_used` at the previous `needs_notification`.
    signalled: Pos,
    /// Ring descriptors each buffer id holds while its chain is in flight
    /// (0: not in flight); `size` entries once the layout is checked.
    in_flight: Vec<u32>,
    /// `(start, id)` of recent pops `undo_pop` may give back, newest last;
    /// at most `size` entries (cleared when full: only the latest pops of
    /// a long run can be given back, which is what a device needs).
    undo: Vec<(Pos, u16)>,
    /// The device event suppression value last written (`flags << 16 |
    /// desc`), so that an unchanged value is not stored again.
    published: Option<u32>,
    /// Set when `check_layout` passed for the current size and addresses.
    layout_ok: bool,
}

impl PackedQueue {
    pub(crate) fn new(max_size: u16) -> Self {
        let max_size = max_size.min(MAX_PACKED_QUEUE_SIZE);
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_ring: 0,
            driver_area: 0,
            device_area: 0,
            event_idx: false,
            indirect: false,
            next_avail: Pos::START,
            next_used: Pos::START,
            signalled: Pos::START,
            in_flight: Vec::new(),
            undo: Vec::new(),
            published: None,
            layout_ok: false,
        }
    }

    pub(crate) fn max_size(&self) -> u16 {
        self.max_size
    }

    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    pub(crate) fn set_size(&mut self, size: u16) {
        self.size = size;
        self.layout_ok = false;
        // The records were for the old size.
        self.in_flight.clear();
        self.undo.clear();
    }

    pub(crate) fn set_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        self.desc_ring = desc;
        self.driver_area = driver;
        self.device_area = device;
        self.layout_ok = false;
        self.published = None;
    }

    pub(crate) fn addresses(&self) -> (u64, u64, u64) {
        (self.desc_ring, self.driver_area, self.device_area)
    }

    /// `(area, address, alignment, length in bytes, device writes it)`.
    fn areas(&self) -> [(RingArea, u64, u64, u64, bool); 3] {
        [
            (
                RingArea::DescriptorRing,
                self.desc_ring,
                DESC_ALIGN,
                16 * u64::from(self.size),
                true,
            ),
            (
                RingArea::DriverEventSuppression,
                self.driver_area,
                EVENT_ALIGN,
                EVENT_SIZE,
                false,
            ),
            (
                RingArea::DeviceEventSuppression,
                self.device_area,
                EVENT_ALIGN,
                EVENT_SIZE,
                true,
            ),
        ]
    }

    /// The size (any value in `1..=max_size`: packed sizes need not be
    /// powers of two, §2.8.10.1) and each area's alignment and end.
    fn check_layout(&self) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || size > self.max_size {
            return Err(QueueError::InvalidSize {
                size,
                max_size: self.max_size,
            });
        }
        for (area, addr, align, len, _) in self.areas() {
            if !addr.is_multiple_of(align) {
                return Err(QueueError::Misaligned { area, addr, align });
            }
            if addr.checked_add(len).is_none() {
                return Err(QueueError::AreaOverflow { area, addr, len });
            }
        }
        Ok(())
    }

    /// Checks the layout against `mem` (virtio v1.4 §2.8.10.1): the size
    /// is in `1..=max_size`; the descriptor ring (`16 * size` bytes,
    /// aligned to 16, read and written by the device) and the two event
    /// suppression structures (4 bytes each, aligned to 4) lie inside
    /// `mem`.
    pub(crate) fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        self.check_layout()?;
        for (area, addr, _, len, written) in self.areas() {
            let access = if written {
                Permissions::ReadWrite
            } else {
                Permissions::Read
            };
            // `len <= 16 * 32768`: fits any usize.
            if !mem.check_range(GuestAddress(addr), len as usize, access) {
                return Err(QueueError::AreaOutOfMemory { area, addr, len });
            }
        }
        Ok(())
    }

    pub(crate) fn ready(&self) -> bool {
        self.ready
    }

    pub(crate) fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
        self.published = None;
    }

    pub(crate) fn set_features(&mut self, features: u64) {
        self.event_idx = features & bit(VIRTIO_F_EVENT_IDX) != 0;
        self.indirect = features & bit(VIRTIO_F_INDIRECT_DESC) != 0;
    }

    pub(crate) fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
        self.published = None;
    }

    pub(crate) fn event_idx(&self) -> bool {
        self.event_idx
    }

    pub(crate) fn set_indirect(&mut self, enabled: bool) {
        self.indirect = enabled;
    }

    pub(crate) fn indirect(&self) -> bool {
        self.indirect
    }

    /// Encoded: descriptor index in bits 0..15, wrap counter in bit 15.
    pub(crate) fn next_avail(&self) -> u16 {
        self.next_avail.encode()
    }

    pub(crate) fn set_next_avail(&mut self, index: u16) {
        self.next_avail = Pos::decode(index);
        self.undo.clear();
        self.published = None;
        self.normalize();
    }

    /// Encoded as [`PackedQueue::next_avail`].
    pub(crate) fn next_used(&self) -> u16 {
        self.next_used.encode()
    }

    pub(crate) fn set_next_used(&mut self, index: u16) {
        self.next_used = Pos::decode(index);
        self.signalled = self.next_used;
        self.normalize();
    }

    pub(crate) fn reset(&mut self) {
        let (event_idx, indirect) = (self.event_idx, self.indirect);
        *self = Self::new(self.max_size);
        self.event_idx = event_idx;
        self.indirect = indirect;
    }

    /// Keeps positions set by the host inside the ring (modulo the size)
    /// once the size is known good.
    fn normalize(&mut self) {
        if !self.layout_ok {
            return;
        }
        let size = self.size;
        for pos in [
            &mut self.next_avail,
            &mut self.next_used,
            &mut self.signalled,
        ] {
            pos.index %= size;
        }
    }

    #[inline]
    fn check_usable(&mut self) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        if !self.layout_ok {
            self.check_layout()?;
            self.layout_ok = true;
            self.in_flight.clear();
            self.in_flight.resize(usize::from(self.size), 0);
            self.normalize();
        }
        Ok(())
    }

    #[inline]
    fn ring_area<'a, M: GuestMemory + ?Sized>(&self, mem: &'a M) -> Area<'a, M> {
        Area::new(
            mem,
            GuestAddress(self.desc_ring),
            // `16 * size <= 512 KiB`.
            16 * usize::from(self.size),
            Permissions::ReadWrite,
            RingArea::DescriptorRing,
        )
    }

    fn event_area<'a, M: GuestMemory + ?Sized>(
        mem: &'a M,
        addr: u64,
        kind: RingArea,
        access: Permissions,
    ) -> Area<'a, M> {
        Area::new(mem, GuestAddress(addr), EVENT_SIZE as usize, access, kind)
    }

    /// Whether the descriptor at `pos` is available; the flags are loaded
    /// with acquire ordering, so the descriptors of the chain read
    /// afterwards are at least as new (§2.8.21.1: the driver makes the
    /// first descriptor of a list available last).
    #[inline]
    fn available_at<M: GuestMemory + ?Sized>(
        ring: &Area<'_, M>,
        pos: Pos,
    ) -> Result<bool, QueueError> {
        let flags = ring.load_u16(usize::from(pos.index) * 16 + DESC_FLAGS, Ordering::Acquire)?;
        Ok(is_available(flags, pos.wrap))
    }

    /// Writes the device event suppression structure (§2.8.10): with
    /// EVENT_IDX, RING_EVENT_FLAGS_DESC at `next_avail` (notify me when you
    /// make that descriptor available); without, RING_EVENT_FLAGS_ENABLE.
    /// Returns whether it stored anything (an unchanged value is not
    /// stored again).
    fn publish_device_event<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        let (flags, desc) = if self.event_idx {
            (RING_EVENT_FLAGS_DESC, self.next_avail.encode())
        } else {
            (RING_EVENT_FLAGS_ENABLE, 0)
        };
        let value = u32::from(desc) | u32::from(flags) << 16;
        if self.published == Some(value) {
            return Ok(false);
        }
        let area = Self::event_area(
            mem,
            self.device_area,
            RingArea::DeviceEventSuppression,
            Permissions::ReadWrite,
        );
        area.store_u16(EVENT_DESC, desc, Ordering::Relaxed)?;
        area.store_u16(EVENT_FLAGS, flags, Ordering::Relaxed)?;
        self.published = Some(value);
        Ok(true)
    }

    /// Whether a chain is available at `next_avail`. When not, asks to be
    /// notified about the next one and looks again after a full fence (the
    /// driver may have added one meanwhile).
    #[inline]
    fn ensure_available<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        ring: &Area<'_, M>,
    ) -> Result<bool, QueueError> {
        if Self::available_at(ring, self.next_avail)? {
            return Ok(true);
        }
        if !self.publish_device_event(mem)? {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        Self::available_at(ring, self.next_avail)
    }

    pub(crate) fn available<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<u16, QueueError> {
        self.check_usable()?;
        let ring = self.ring_area(mem);
        let size = self.size;
        let mut pos = self.next_avail;
        let mut chains: u16 = 0;
        // At most `size` descriptors can be available at once.
        for _ in 0..size {
            let off = usize::from(pos.index) * 16 + DESC_FLAGS;
            let flags = ring.load_u16(off, Ordering::Acquire)?;
            if !is_available(flags, pos.wrap) {
                break;
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                chains += 1;
            }
            pos = pos.advance(1, size);
        }
        Ok(chains)
    }

    /// Pops the chain at `next_avail` (§2.8.6, §2.8.7, §2.8.21.1). The
    /// chain's head is its buffer id, read from its last descriptor.
    #[inline]
    pub(crate) fn pop_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        self.check_usable()?;
        let ring = self.ring_area(mem);
        if !self.ensure_available(mem, &ring)? {
            return Ok(false);
        }
        let size = self.size;
        let start = self.next_avail;
        let head = start.index;
        chain.reset(head);
        let mut pos = start;
        // Ring descriptors of this chain so far; a list cannot be longer
        // than the ring (§2.8.18).
        let mut count: u16 = 0;
        let id = loop {
            if count == size {
                return Err(QueueError::ChainTooLong {
                    head,
                    limit: u32::from(size),
                });
            }
            // `pos.index < size <= 32768`: the offset is inside the ring.
            let raw = RawDesc::decode(ring.read_u128(usize::from(pos.index) * 16)?);
            if !is_available(raw.flags, pos.wrap) {
                return Err(QueueError::DescriptorNotAvailable {
                    head,
                    position: pos.index,
                });
            }
            let position = pos.index;
            count += 1;
            pos = pos.advance(1, size);
            if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(QueueError::IndirectNotNegotiated {
                        head,
                        index: position,
                    });
                }
                if raw.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext {
                        head,
                        index: position,
                    });
                }
                if count != 1 {
                    return Err(QueueError::IndirectInList { head, position });
                }
                // The WRITE flag of this descriptor is ignored (§2.8.7).
                read_indirect(mem, head, raw.addr, raw.len, chain)?;
                break raw.id;
            }
            chain.push_checked(raw.addr, raw.len, raw.flags)?;
            if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
                break raw.id;
            }
        };
        let Some(slot) = self.in_flight.get_mut(usize::from(id)) else {
            return Err(QueueError::InvalidBufferId { id, size });
        };
        if *slot != 0 {
            return Err(QueueError::BufferIdInUse { id });
        }
        *slot = u32::from(count);
        chain.set_head(id);
        self.next_avail = pos;
        if self.undo.len() >= usize::from(size) {
            self.undo.clear();
        }
        self.undo.push((start, id));
        Ok(true)
    }

    pub(crate) fn undo_pop(&mut self) -> bool {
        let Some(&(start, id)) = self.undo.last() else {
            return false;
        };
        // A chain the device already completed cannot be given back.
        let Some(slot) = self.in_flight.get_mut(usize::from(id)) else {
            return false;
        };
        if *slot == 0 {
            return false;
        }
        *slot = 0;
        self.undo.pop();
        self.next_avail = start;
        true
    }

    /// Writes the used descriptor of chain `id` at `next_used` with one
    /// release store of its `len`, `id` and `flags` (AVAIL and USED equal
    /// to the device's wrap counter, WRITE when `len > 0`, §2.8.4), then
    /// skips the ring descriptors the chain held.
    #[inline]
    fn write_used<M: GuestMemory + ?Sized>(
        &mut self,
        ring: &Area<'_, M>,
        id: u16,
        count: u32,
        len: u32,
    ) -> Result<(), QueueError> {
        let mut flags = if self.next_used.wrap {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        if len != 0 {
            flags |= VIRTQ_DESC_F_WRITE;
        }
        let value = u64::from(len) | u64::from(id) << 32 | u64::from(flags) << 48;
        // `next_used.index < size`: inside the ring, 8-aligned.
        ring.store_u64(
            usize::from(self.next_used.index) * 16 + DESC_LEN,
            value,
            Ordering::Release,
        )?;
        // `count <= size` (recorded at pop).
        self.next_used = self.next_used.advance(count as u16, self.size);
        Ok(())
    }

    #[inline]
    pub(crate) fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let size = self.size;
        let count = match self.in_flight.get(usize::from(head)) {
            Some(&n) if n != 0 => n,
            _ => return Err(QueueError::InvalidUsedHead { head, size }),
        };
        let ring = self.ring_area(mem);
        self.write_used(&ring, head, count, len)?;
        if let Some(slot) = self.in_flight.get_mut(usize::from(head)) {
            *slot = 0;
        }
        Ok(())
    }

    pub(crate) fn add_used_batch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        elements: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let size = self.size;
        // Check every head first: in flight, and not twice in the batch
        // (marked while checking, unmarked afterwards).
        let mut bad = None;
        for (i, &(head, _)) in elements.iter().enumerate() {
            match self.in_flight.get_mut(usize::from(head)) {
                Some(n) if *n != 0 && *n & BATCH_MARK == 0 => *n |= BATCH_MARK,
                _ => {
                    bad = Some((i, head));
                    break;
                }
            }
        }
        let checked = bad.map_or(elements.len(), |(i, _)| i);
        for &(head, _) in elements.iter().take(checked) {
            if let Some(n) = self.in_flight.get_mut(usize::from(head)) {
                *n &= !BATCH_MARK;
            }
        }
        if let Some((_, head)) = bad {
            return Err(QueueError::InvalidUsedHead { head, size });
        }
        let ring = self.ring_area(mem);
        for &(head, len) in elements {
            let count = self.in_flight.get(usize::from(head)).copied().unwrap_or(0);
            self.write_used(&ring, head, count, len)?;
            if let Some(slot) = self.in_flight.get_mut(usize::from(head)) {
                *slot = 0;
            }
        }
        Ok(())
    }

    /// §2.8.10: the driver event suppression structure says ENABLE (notify),
    /// DISABLE (do not), or with EVENT_IDX DESC (notify when the
    /// descriptor at its offset and wrap counter was used since the last
    /// call). DESC without EVENT_IDX and the reserved value 3 are taken as
    /// ENABLE: a spurious interrupt is harmless, a lost one is not.
    pub(crate) fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.check_usable()?;
        let (new, old) = (self.next_used, self.signalled);
        if new == old {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        let area = Self::event_area(
            mem,
            self.driver_area,
            RingArea::DriverEventSuppression,
            Permissions::Read,
        );
        let flags = area.load_u16(EVENT_FLAGS, Ordering::Relaxed)? & 0x3;
        let notify = match flags {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC if self.event_idx => {
                let event = area.load_u16(EVENT_DESC, Ordering::Relaxed)?;
                need_event(event, new.encode(), old.encode(), self.size)
            }
            _ => true,
        };
        self.signalled = new;
        Ok(notify)
    }

    pub(crate) fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.check_usable()?;
        if self.publish_device_event(mem)? {
            fence(Ordering::SeqCst);
        }
        let ring = self.ring_area(mem);
        Self::available_at(&ring, self.next_avail)
    }
}

/// Appends the descriptors of the packed indirect table of `len` bytes at
/// `addr` (§2.8.7): `len / 16` descriptors in order, no `next` links; only
/// their WRITE flag counts, their other flags and ids are ignored.
fn read_indirect<M: GuestMemory + ?Sized>(
    mem: &M,
    head: u16,
    addr: u64,
    len: u32,
    chain: &mut DescriptorChain,
) -> Result<(), QueueError> {
    if len == 0 || !len.is_multiple_of(16) {
        return Err(QueueError::InvalidIndirectLength { head, len });
    }
    let entries = len / 16;
    if entries > MAX_INDIRECT_DESCRIPTORS {
        return Err(QueueError::IndirectTableTooLarge {
            head,
            len,
            max: MAX_INDIRECT_DESCRIPTORS,
        });
    }
    let base = GuestAddress(addr);
    if base.checked_add(u64::from(len)).is_none() {
        return Err(QueueError::DescriptorAddressOverflow { head, addr, len });
    }
    // `len <= 16 * 32768` here.
    let table_len = len as usize;
    let table = Area::new(
        mem,
        base,
        table_len,
        Permissions::Read,
        RingArea::IndirectTable,
    );
    if !table.is_contiguous() && !mem.check_range(base, table_len, Permissions::Read) {
        return Err(QueueError::IndirectTableOutOfMemory { head, addr, len });
    }
    chain.set_indirect();
    for i in 0..entries as usize {
        // `i < entries`: inside the table.
        let raw = RawDesc::decode(table.read_u128(i * 16)?);
        chain.push_checked(raw.addr, raw.len, raw.flags & VIRTQ_DESC_F_WRITE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
