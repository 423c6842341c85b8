//! The device-role split virtqueue (virtio v1.4 §2.7 "Split Virtqueues").
//!
//! [`SplitQueue`] holds what the transport's queue registers configure (size,
//! the three area addresses, ready) plus the device's ring state
//! (`next_avail`, `next_used`), and works on guest memory through any
//! [`vm_memory::GuestMemory`] passed to each call. No host pointer into
//! guest memory is kept between calls.
//!
//! Threat model: the driver controls every byte of the rings, the
//! descriptor tables and the buffers, and may change them concurrently.
//! Every index is bounded, every walk has a limit, all arithmetic on guest
//! values is checked, and a bad value is returned as a [`QueueError`] with
//! the values in it; nothing here panics on guest data.
//!
//! Legacy (Version 1) queues are the same split queue; the transport
//! computes their three addresses from `QueuePFN` and `QueueAlign` with
//! [`vmmio_spec::split::legacy_layout`].

use std::sync::atomic::{fence, Ordering};

use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::split::{
    avail, desc_table_size, need_event, used, AVAIL_ALIGN, DESC_ALIGN, MAX_QUEUE_SIZE, USED_ALIGN,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
};

use super::chain::DescriptorChain;
use super::error::{QueueError, RingArea};

/// Largest guest range `pop_into` resolves at once to cover both the
/// descriptor table and the available ring (see `SplitQueue::pop_areas`).
const POP_SPAN_MAX: u64 = 4 << 20;

use super::chain::{read_chain, WalkParams};
use super::ring::Area;

/// A split virtqueue, device role (virtio v1.4 §2.7): the split half of
/// [`Queue`](super::Queue), which documents the API.
#[derive(Clone, Debug)]
pub(crate) struct SplitQueue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    event_idx: bool,
    indirect: bool,
    /// Next available-ring entry to read (free-running, modulo 2^16).
    next_avail: u16,
    /// Next used-ring entry to write (free-running, modulo 2^16).
    next_used: u16,
    /// `avail.idx` as last read; entries `next_avail..avail_idx` are known
    /// to be available without reading `avail.idx` again.
    avail_idx: u16,
    /// `next_used` at the previous `needs_notification`.
    signalled_used: u16,
    /// Chains popped that `undo_pop` may still return.
    undoable: u16,
    /// Set when `check_layout` passed for the current size and addresses.
    layout_ok: bool,
    /// Performance hint only: whether `pop_into` should try to resolve the
    /// descriptor table and the available ring with one lookup of the
    /// guest range spanning both (`span`). Cleared when that lookup fails
    /// (areas in different regions), set again by `set_addresses`,
    /// `set_size` and `set_ready`. Correctness never depends on it.
    pop_span: bool,
    /// The guest range spanning the descriptor table and the available
    /// ring, computed with the layout check (valid while `layout_ok`).
    span: Span,
}

/// The guest range spanning the descriptor table and the available ring,
/// and the used ring when all three fit: `len` bytes at `base`, the table
/// at offset `desc`, the available ring at `avail`, the used ring at `used`
/// (`None` when it is not inside). `len == 0` when even the first two span
/// more than [`POP_SPAN_MAX`].
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    base: u64,
    len: usize,
    desc: usize,
    avail: usize,
    used: Option<usize>,
}

/// The areas of one `pop_into` (see `SplitQueue::pop_areas`).
struct PopAreas<'a, M: GuestMemory + ?Sized> {
    ring: Area<'a, M>,
    table: Area<'a, M>,
    /// The span's area and the used ring's offset in it, when the same
    /// lookup covered the used ring (cut out only by an empty pop).
    whole: Option<(Area<'a, M>, usize)>,
}

impl SplitQueue {
    /// A queue whose `QueueSizeMax` (v1.0: QueueNumMax) is `max_size`
    /// elements, in its reset state: `QueueSize` = `max_size`, addresses 0,
    /// not ready, no features.
    ///
    /// `max_size` should be a power of two of at most 32768
    /// ([`MAX_QUEUE_SIZE`]); a larger value is clamped to 32768.
    pub fn new(max_size: u16) -> Self {
        let max_size = max_size.min(MAX_QUEUE_SIZE);
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            event_idx: false,
            indirect: false,
            next_avail: 0,
            next_used: 0,
            avail_idx: 0,
            signalled_used: 0,
            undoable: 0,
            layout_ok: false,
            pop_span: true,
            span: Span::default(),
        }
    }

    /// `QueueSizeMax` (v1.0: QueueNumMax), in elements.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// `QueueSize` (v1.0: QueueNum) as last set, in elements; `max_size`
    /// after reset.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets `QueueSize` (v1.0: QueueNum) in elements. Any value is stored;
    /// [`SplitQueue::validate`] (and every data-path call) rejects one that is 0,
    /// not a power of two, or above `max_size`.
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
        self.layout_ok = false;
        self.pop_span = true;
        // Forget the cached `avail.idx`: it was checked against the old size.
        self.avail_idx = self.next_avail;
    }

    /// Sets the guest-physical addresses of the descriptor table
    /// (`QueueDesc`), the driver area / available ring (`QueueDriver`,
    /// legacy QueueAvail) and the device area / used ring (`QueueDevice`,
    /// legacy QueueUsed). Checked by [`SplitQueue::validate`].
    pub fn set_addresses(&mut self, desc: u64, avail: u64, used: u64) {
        self.desc_table = desc;
        self.avail_ring = avail;
        self.used_ring = used;
        self.layout_ok = false;
        self.pop_span = true;
    }

    /// The three addresses as set: `(desc, avail, used)`.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc_table, self.avail_ring, self.used_ring)
    }

    /// Checks what does not depend on guest memory: the size and the
    /// alignment and end address of each area.
    fn check_layout(&self) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(QueueError::InvalidSize {
                size,
                max_size: self.max_size,
            });
        }
        for (area, addr, align, len) in self.areas() {
            if addr % align != 0 {
                return Err(QueueError::Misaligned { area, addr, align });
            }
            if addr.checked_add(len).is_none() {
                return Err(QueueError::AreaOverflow { area, addr, len });
            }
        }
        Ok(())
    }

    /// `(area, address, alignment, length in bytes)` of the three areas.
    fn areas(&self) -> [(RingArea, u64, u64, u64); 3] {
        [
            (
                RingArea::DescriptorTable,
                self.desc_table,
                DESC_ALIGN,
                desc_table_size(self.size),
            ),
            (
                RingArea::AvailableRing,
                self.avail_ring,
                AVAIL_ALIGN,
                avail::size(self.size),
            ),
            (
                RingArea::UsedRing,
                self.used_ring,
                USED_ALIGN,
                used::size(self.size),
            ),
        ]
    }

    /// Checks the queue's configuration against `mem` before it is enabled
    /// (virtio v1.4 §2.7, §4.2.3.2): the size is a power of two in
    /// `1..=max_size`; the descriptor table (`16 * size` bytes), available
    /// ring (`6 + 2 * size`) and used ring (`6 + 8 * size`) are aligned to
    /// 16, 2 and 4 bytes, do not wrap the address space, and lie inside
    /// `mem` (the event fields included, whatever the features).
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidSize`], [`QueueError::Misaligned`],
    /// [`QueueError::AreaOverflow`], [`QueueError::AreaOutOfMemory`]: all
    /// peer faults.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        self.check_layout()?;
        for (area, addr, _, len) in self.areas() {
            let access = if area == RingArea::UsedRing {
                Permissions::ReadWrite
            } else {
                Permissions::Read
            };
            // `len <= 6 + 8 * 32768`: fits any usize.
            if !mem.check_range(GuestAddress(addr), len as usize, access) {
                return Err(QueueError::AreaOutOfMemory { area, addr, len });
            }
        }
        Ok(())
    }

    /// Whether the queue is enabled (`QueueReady`, legacy: `QueuePFN` != 0).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Enables or disables the queue (`QueueReady`). Enabling does not
    /// validate: the transport calls [`SplitQueue::validate`] first, and every
    /// data-path call re-checks the layout anyway.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
        self.avail_idx = self.next_avail;
        self.pop_span = true;
    }

    /// Applies the negotiated feature bits: VIRTIO_F_EVENT_IDX (§2.7.7,
    /// §2.7.10) and VIRTIO_F_INDIRECT_DESC (§2.7.5.3). Other bits are
    /// ignored.
    pub fn set_features(&mut self, features: u64) {
        self.event_idx = features & bit(VIRTIO_F_EVENT_IDX) != 0;
        self.indirect = features & bit(VIRTIO_F_INDIRECT_DESC) != 0;
    }

    /// Turns VIRTIO_F_EVENT_IDX handling on or off (`used_event` /
    /// `avail_event` instead of the ring flags).
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Whether VIRTIO_F_EVENT_IDX handling is on.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Turns acceptance of indirect descriptors (VIRTIO_F_INDIRECT_DESC) on
    /// or off.
    pub fn set_indirect(&mut self, enabled: bool) {
        self.indirect = enabled;
    }

    /// Whether indirect descriptors are accepted.
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    /// The next available-ring index the device will read (free-running,
    /// modulo 2^16; the ring slot is this modulo the size).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Sets the next available-ring index (queue reset: 0; restore: a saved
    /// value). Forgets the cached `avail.idx` and what `undo_pop` could
    /// return.
    pub fn set_next_avail(&mut self, index: u16) {
        self.next_avail = index;
        self.avail_idx = index;
        self.undoable = 0;
    }

    /// The next used-ring index the device will write (free-running, modulo
    /// 2^16): the value of `used.idx` it last published.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Sets the next used-ring index (queue reset: 0; restore: a saved
    /// value). Entries added before are treated as already notified.
    pub fn set_next_used(&mut self, index: u16) {
        self.next_used = index;
        self.signalled_used = index;
    }

    /// Puts the queue in its reset state (virtio v1.4 §2.6.1 "Virtqueue
    /// Reset", and device reset): `QueueSize` = `max_size`, addresses 0, not
    /// ready, indexes 0. The negotiated features are kept (the transport
    /// sets them again after a device reset).
    pub fn reset(&mut self) {
        let (event_idx, indirect) = (self.event_idx, self.indirect);
        *self = Self::new(self.max_size);
        self.event_idx = event_idx;
        self.indirect = indirect;
    }

    /// Fails unless the queue is ready and its layout is sound; afterwards
    /// every ring offset below `areas()` lengths is a valid address.
    #[inline]
    fn check_usable(&mut self) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        if !self.layout_ok {
            self.check_layout()?;
            self.span = self.span(true);
            self.layout_ok = true;
        }
        Ok(())
    }

    /// Number of chains available that the device has not popped yet.
    ///
    /// Reads `avail.idx` (acquire ordering).
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidAvailIdx`] when the driver's index is more than
    /// `size` ahead; [`QueueError::NotReady`]; layout and memory errors.
    pub fn available<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        self.check_usable()?;
        let ring = self.avail_area(mem);
        self.read_avail_idx(&ring)?;
        Ok(self.avail_idx.wrapping_sub(self.next_avail))
    }

    #[inline]
    fn avail_area<'a, M: GuestMemory + ?Sized>(&self, mem: &'a M) -> Area<'a, M> {
        // `avail::size(size) <= 6 + 2 * 32768`: fits any usize.
        Area::new(
            mem,
            GuestAddress(self.avail_ring),
            avail::size(self.size) as usize,
            Permissions::Read,
            RingArea::AvailableRing,
        )
    }

    #[inline]
    fn desc_area<'a, M: GuestMemory + ?Sized>(&self, mem: &'a M) -> Area<'a, M> {
        Area::new(
            mem,
            GuestAddress(self.desc_table),
            // `16 * size <= 512 KiB`.
            desc_table_size(self.size) as usize,
            Permissions::Read,
            RingArea::DescriptorTable,
        )
    }

    /// The span of the descriptor table and the available ring, with the
    /// used ring too when `with_used` and the three fit in
    /// [`POP_SPAN_MAX`]. Requires `check_layout` to have passed: no area's
    /// end overflows.
    fn span(&self, with_used: bool) -> Span {
        let (desc, avail, used) = (self.desc_table, self.avail_ring, self.used_ring);
        let lo = desc.min(avail);
        let hi = (desc + desc_table_size(self.size)).max(avail + avail::size(self.size));
        if with_used {
            let (lo, hi) = (lo.min(used), hi.max(used + used::size(self.size)));
            if hi - lo <= POP_SPAN_MAX {
                // All below `POP_SPAN_MAX`: fits any usize.
                return Span {
                    base: lo,
                    len: (hi - lo) as usize,
                    desc: (desc - lo) as usize,
                    avail: (avail - lo) as usize,
                    used: Some((used - lo) as usize),
                };
            }
        }
        if hi - lo > POP_SPAN_MAX {
            return Span::default();
        }
        Span {
            base: lo,
            len: (hi - lo) as usize,
            desc: (desc - lo) as usize,
            avail: (avail - lo) as usize,
            used: None,
        }
    }

    /// The available ring and the descriptor table for one `pop_into`.
    ///
    /// Drivers usually put both in one allocation, so one lookup of the
    /// guest range spanning both (at most [`POP_SPAN_MAX`] bytes) usually
    /// gives one host slice, from which both areas are cut by offset
    /// arithmetic; otherwise each area is looked up on its own (and the
    /// span is not tried again until the layout changes or the queue is
    /// re-enabled). Either way nothing outlives the `mem` borrow. Requires
    /// `check_usable` (which computed `self.span`).
    ///
    /// When the span also covers the used ring (drivers usually allocate
    /// the three together) and `mem` is plain guest memory (no IOMMU, so
    /// the read lookup grants writes too), the used ring comes from the
    /// same lookup: an empty pop with EVENT_IDX publishes `avail_event`
    /// there without a lookup of its own. When that wider lookup fails,
    /// the span shrinks to the table and the available ring.
    #[inline]
    fn pop_areas<'a, M: GuestMemory + ?Sized>(&mut self, mem: &'a M) -> PopAreas<'a, M> {
        let span = self.span;
        if self.pop_span && span.len != 0 {
            let whole = Area::new(
                mem,
                GuestAddress(span.base),
                span.len,
                Permissions::Read,
                RingArea::DescriptorTable,
            );
            // The areas lie inside the span (`SplitQueue::span`).
            let ring = whole.sub_area(
                span.avail,
                avail::size(self.size) as usize,
                RingArea::AvailableRing,
            );
            let table = whole.sub_area(
                span.desc,
                desc_table_size(self.size) as usize,
                RingArea::DescriptorTable,
            );
            if let (Some(ring), Some(table)) = (ring, table) {
                let used_at = span.used.filter(|_| mem.physical_memory().is_some());
                return PopAreas {
                    ring,
                    table,
                    whole: used_at.map(|at| (whole, at)),
                };
            }
            if span.used.is_some() {
                self.span = self.span(false);
            } else {
                self.pop_span = false;
            }
        }
        PopAreas {
            ring: self.avail_area(mem),
            table: self.desc_area(mem),
            whole: None,
        }
    }

    #[inline]
    fn used_area<'a, M: GuestMemory + ?Sized>(&self, mem: &'a M) -> Area<'a, M> {
        // `used::size(size) <= 6 + 8 * 32768`: fits any usize.
        Area::new(
            mem,
            GuestAddress(self.used_ring),
            used::size(self.size) as usize,
            Permissions::ReadWrite,
            RingArea::UsedRing,
        )
    }

    /// Reads `avail.idx` with acquire ordering (so ring entries and
    /// descriptors read afterwards are at least as new), checks it and
    /// caches it.
    #[inline]
    fn read_avail_idx<M: GuestMemory + ?Sized>(
        &mut self,
        ring: &Area<'_, M>,
    ) -> Result<(), QueueError> {
        let idx = ring.load_u16(avail::IDX as usize, Ordering::Acquire)?;
        if idx.wrapping_sub(self.next_avail) > self.size {
            return Err(QueueError::InvalidAvailIdx {
                avail_idx: idx,
                next_avail: self.next_avail,
                size: self.size,
            });
        }
        self.avail_idx = idx;
        Ok(())
    }

    /// Makes sure a chain is known to be available. Reads `avail.idx` only
    /// when the cached value is used up. When the ring is empty and
    /// EVENT_IDX is on, publishes `avail_event = next_avail` (asking the
    /// driver to notify at the next chain, §2.7.10), then re-reads
    /// `avail.idx` after a full fence to close the race with a driver that
    /// added a chain meanwhile.
    #[inline]
    fn ensure_available<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        areas: &PopAreas<'_, M>,
    ) -> Result<bool, QueueError> {
        let ring = &areas.ring;
        if self.avail_idx != self.next_avail {
            return Ok(true);
        }
        self.read_avail_idx(ring)?;
        if self.avail_idx != self.next_avail {
            return Ok(true);
        }
        if !self.event_idx {
            return Ok(false);
        }
        let used = areas.whole.as_ref().and_then(|(whole, at)| {
            whole.sub_area(*at, used::size(self.size) as usize, RingArea::UsedRing)
        });
        match used {
            Some(used) => self.publish_avail_event_in(&used)?,
            None => self.publish_avail_event(mem)?,
        }
        fence(Ordering::SeqCst);
        self.read_avail_idx(ring)?;
        Ok(self.avail_idx != self.next_avail)
    }

    fn publish_avail_event<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        self.publish_avail_event_in(&self.used_area(mem))
    }

    /// Stores `avail_event = next_avail` in `used`, the used ring's area.
    #[inline]
    fn publish_avail_event_in<M: GuestMemory + ?Sized>(
        &self,
        used: &Area<'_, M>,
    ) -> Result<(), QueueError> {
        // Inside the used ring: `avail_event(size) + 2 == used::size(size)`.
        used.store_u16(
            used::avail_event(self.size) as usize,
            self.next_avail,
            Ordering::Relaxed,
        )
    }

    /// Pops the next available descriptor chain into `chain`, reusing its
    /// storage (no heap allocation for chains of up to
    /// [`INLINE_DESCRIPTORS`] descriptors, or once `chain` has grown to the
    /// needed capacity).
    ///
    /// Returns `Ok(false)` when the ring is empty; with EVENT_IDX the device
    /// has then published `avail_event` so the driver notifies it about the
    /// next chain (the device reads `avail.idx` once per batch, and only
    /// asks to be notified when it has caught up). Implements virtio v1.4
    /// §2.7.6, §2.7.5, §2.7.5.3, §2.7.10.
    ///
    /// # Errors
    ///
    /// Any peer fault of [`QueueError`]: a bad `avail.idx`
    /// ([`QueueError::InvalidAvailIdx`]), head or `next` index, a loop, a
    /// malformed or oversized chain, a bad indirect table, or a guest
    /// memory error; and [`QueueError::NotReady`]. On error `next_avail` is
    /// not advanced, the content of `chain` is unspecified, and the device
    /// should set DEVICE_NEEDS_RESET.
    #[inline]
    pub fn pop_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        self.check_usable()?;
        let areas = self.pop_areas(mem);
        if !self.ensure_available(mem, &areas)? {
            return Ok(false);
        }
        let PopAreas { ring, table, .. } = areas;
        // `size` is a power of two (check_usable), so the mask is the
        // modulo; the slot offset is below `avail::size(size)`.
        let slot = self.next_avail & (self.size - 1);
        let head = ring.load_u16(avail::ring(slot) as usize, Ordering::Relaxed)?;
        let params = WalkParams {
            size: self.size,
            indirect: self.indirect,
        };
        read_chain(mem, &table, &params, head, chain)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.undoable = self.undoable.saturating_add(1);
        Ok(true)
    }

    /// Gives back the most recently popped chain that has not been given
    /// back yet: the next pop returns it again. For a device that popped a
    /// chain it cannot process now (e.g. no room in the backend). The
    /// device must not have put that chain in the used ring.
    ///
    /// Returns `false` (and does nothing) when no pop can be undone: none
    /// since the last [`SplitQueue::set_next_avail`] / [`SplitQueue::reset`], or all
    /// already undone.
    pub fn undo_pop(&mut self) -> bool {
        if self.undoable == 0 {
            return false;
        }
        self.undoable -= 1;
        self.next_avail = self.next_avail.wrapping_sub(1);
        true
    }

    /// Puts a chain in the used ring (virtio v1.4 §2.7.8, §2.7.8.2): writes
    /// the element `{ id: head, len }` at slot `next_used % size`, then
    /// publishes `used.idx = next_used + 1` with release ordering, so the
    /// driver sees the element (and the buffer contents) before the index.
    ///
    /// `head` is [`DescriptorChain::head_index`]; `len` is the number of
    /// bytes the device wrote into the chain's writable part, from its
    /// start.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidUsedHead`] when `head >= size`;
    /// [`QueueError::NotReady`]; layout errors; [`QueueError::GuestMemory`]
    /// when the used ring is not writable memory. Nothing is published on
    /// error.
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let size = self.size;
        if head >= size {
            return Err(QueueError::InvalidUsedHead { head, size });
        }
        let ring = self.used_area(mem);
        // The mask is the modulo (size is a power of two); the offset is
        // inside the used ring. One 8-byte store for `{ id, len }`.
        let slot = self.next_used & (size - 1);
        let elem = u64::from(head) | (u64::from(len) << 32);
        ring.write_u64(used::ring(slot) as usize, elem)?;
        let next = self.next_used.wrapping_add(1);
        // Release: the element (and the device's writes to the buffer)
        // become visible before the new index (§2.7.8.2).
        ring.store_u16(used::IDX as usize, next, Ordering::Release)?;
        self.next_used = next;
        Ok(())
    }

    /// Puts several chains in the used ring, in order, and publishes
    /// `used.idx` once at the end (release ordering): one index store per
    /// batch instead of one per chain. Each element is `(head, len)` as in
    /// [`SplitQueue::add_used`].
    ///
    /// # Errors
    ///
    /// As [`SplitQueue::add_used`]; all heads are checked before anything is
    /// written, and on error `used.idx` is not advanced.
    pub fn add_used_batch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        elements: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        self.check_usable()?;
        let size = self.size;
        if let Some(&(head, _)) = elements.iter().find(|(head, _)| *head >= size) {
            return Err(QueueError::InvalidUsedHead { head, size });
        }
        let ring = self.used_area(mem);
        let mut next = self.next_used;
        for &(head, len) in elements {
            // The mask is the modulo (size is a power of two); the offset
            // is inside the used ring.
            let slot = next & (size - 1);
            let elem = u64::from(head) | (u64::from(len) << 32);
            ring.write_u64(used::ring(slot) as usize, elem)?;
            next = next.wrapping_add(1);
        }
        // Release: the elements (and the device's writes to the buffers)
        // become visible before the new index (§2.7.8.2).
        ring.store_u16(used::IDX as usize, next, Ordering::Release)?;
        self.next_used = next;
        Ok(())
    }

    /// Whether the driver wants a used buffer notification for the chains
    /// added since the previous call (virtio v1.4 §2.7.7, §2.7.10): with
    /// EVENT_IDX, whether `used.idx` moved past `used_event` (the wrap-safe
    /// [`need_event`] test); without, whether the driver left
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT` clear. `false` when nothing was added
    /// since the previous call.
    ///
    /// Call it once after a batch of [`SplitQueue::add_used`] to send one
    /// interrupt per batch. A full fence orders the device's `used.idx`
    /// store before its read of the driver's field. More than 65535 chains
    /// added between two calls cannot be told apart from fewer (16-bit
    /// indexes); call at least once per `size` chains.
    ///
    /// # Errors
    ///
    /// [`QueueError::NotReady`], layout errors, [`QueueError::GuestMemory`].
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.check_usable()?;
        let new = self.next_used;
        let old = self.signalled_used;
        if new == old {
            return Ok(false);
        }
        fence(Ordering::SeqCst);
        let ring = self.avail_area(mem);
        let notify = if self.event_idx {
            // `used_event(size) + 2 == avail::size(size)`: inside the ring.
            let used_event =
                ring.load_u16(avail::used_event(self.size) as usize, Ordering::Relaxed)?;
            need_event(used_event, new, old)
        } else {
            let flags = ring.load_u16(avail::FLAGS as usize, Ordering::Relaxed)?;
            flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        self.signalled_used = new;
        Ok(notify)
    }

    /// Re-arms available buffer notifications after the device stopped
    /// popping before the ring ran empty: with EVENT_IDX publishes
    /// `avail_event = next_avail` (§2.7.10), then re-reads `avail.idx`.
    /// Returns whether chains are available (then the device should pop
    /// them instead of waiting for a notification). Without EVENT_IDX the
    /// driver always notifies (this device never sets
    /// `VIRTQ_USED_F_NO_NOTIFY`), so this only reports availability.
    ///
    /// # Errors
    ///
    /// As [`SplitQueue::available`].
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.check_usable()?;
        if self.event_idx {
            self.publish_avail_event(mem)?;
            fence(Ordering::SeqCst);
        }
        let ring = self.avail_area(mem);
        self.read_avail_idx(&ring)?;
        Ok(self.avail_idx != self.next_avail)
    }
}
