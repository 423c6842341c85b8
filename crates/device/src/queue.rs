//! The device-role virtqueue: one [`Queue`] API over the split ring
//! (virtio v1.4 §2.7, `split.rs`) and the packed ring (§2.8, `packed.rs`).
//!
//! [`Queue`] holds what the transport's queue registers configure (size,
//! the three area addresses, ready) plus the device's ring state, and works
//! on guest memory through any [`vm_memory::GuestMemory`] passed to each
//! call. No host pointer into guest memory is kept between calls. Devices
//! use the same calls whatever the ring: the transport picks the ring at
//! `DRIVER_OK` from VIRTIO_F_RING_PACKED ([`Queue::set_features`]).
//!
//! Threat model: the driver controls every byte of the rings, the
//! descriptor tables and the buffers, and may change them concurrently.
//! Every index is bounded, every walk has a limit, all arithmetic on guest
//! values is checked, and a bad value is returned as a [`QueueError`] with
//! the values in it; nothing here panics on guest data.
//!
//! Legacy (Version 1) queues are split queues; the transport computes their
//! three addresses from `QueuePFN` and `QueueAlign` with
//! [`vmmio_spec::split::legacy_layout`].

mod chain;
mod error;
mod packed;
mod ring;
mod split;
#[cfg(test)]
mod tests;

use vm_memory::GuestMemory;
use vmmio_spec::features::{bit, VIRTIO_F_RING_PACKED};

pub use chain::{Descriptor, DescriptorChain, INLINE_DESCRIPTORS, MAX_INDIRECT_DESCRIPTORS};
pub use error::{QueueError, RingArea};

use packed::PackedQueue;
use split::SplitQueue;

/// A virtqueue, device role.
///
/// Configuration mirrors the MMIO queue registers (§4.2.2): `QueueSizeMax`
/// (v1.0 name QueueNumMax) is fixed at [`Queue::new`], `QueueSize`
/// (QueueNum) is [`Queue::set_size`], the three areas are
/// [`Queue::set_addresses`], `QueueReady` is [`Queue::set_ready`].
///
/// Data path: [`Queue::pop`] / [`Queue::pop_into`] take descriptor chains
/// the driver made available; [`Queue::add_used`] returns them to the
/// driver; [`Queue::needs_notification`] says whether the driver wants an
/// interrupt for everything added since the previous call, so a device that
/// processes a batch and then asks once sends one interrupt per batch.
///
/// # Example
///
/// Playing both sides: the driver part writes one descriptor and one
/// available-ring entry, the device pops and completes it.
///
/// ```
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
/// use vmmio_device::Queue;
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
/// let (desc, avail, used) = (0x1000, 0x2000, 0x3000);
/// // Driver: descriptor 0 = 512 writable bytes at 0x8000, then avail.ring[0] = 0, avail.idx = 1.
/// mem.write_obj(0x8000u64, GuestAddress(desc)).unwrap();
/// mem.write_obj(512u32, GuestAddress(desc + 8)).unwrap();
/// mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // VIRTQ_DESC_F_WRITE
/// mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
/// mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
///
/// // Device.
/// let mut queue = Queue::new(256);
/// queue.set_size(16);
/// queue.set_addresses(desc, avail, used);
/// queue.validate(&mem).unwrap();
/// queue.set_ready(true);
/// let chain = queue.pop(&mem).unwrap().expect("one chain");
/// assert_eq!(chain.descriptors()[0].len, 512);
/// queue.add_used(&mem, chain.head_index(), 100).unwrap();
/// assert!(queue.pop(&mem).unwrap().is_none());
/// assert!(queue.needs_notification(&mem).unwrap());
/// assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Queue {
    ring: Ring,
}

#[derive(Clone, Debug)]
enum Ring {
    Split(SplitQueue),
    Packed(PackedQueue),
}

/// Runs `$body` with `$q` bound to the ring, whichever it is.
macro_rules! dispatch {
    ($self:expr, $q:ident => $body:expr) => {
        match $self {
            Ring::Split($q) => $body,
            Ring::Packed($q) => $body,
        }
    };
}

impl Queue {
    /// A split queue whose `QueueSizeMax` (v1.0: QueueNumMax) is `max_size`
    /// elements, in its reset state: `QueueSize` = `max_size`, addresses 0,
    /// not ready, no features.
    ///
    /// `max_size` should be a power of two of at most 32768; a larger value
    /// is clamped to 32768.
    pub fn new(max_size: u16) -> Self {
        Self {
            ring: Ring::Split(SplitQueue::new(max_size)),
        }
    }

    /// Whether this is a packed ring (VIRTIO_F_RING_PACKED, §2.8) rather
    /// than a split ring (§2.7).
    pub fn packed(&self) -> bool {
        matches!(self.ring, Ring::Packed(_))
    }

    /// Makes this a packed ring (`true`) or a split ring, keeping the
    /// configuration (`QueueSizeMax`, `QueueSize`, addresses, ready,
    /// features) and starting the ring state afresh. Nothing changes when
    /// the kind is already right. [`Queue::set_features`] calls this for
    /// VIRTIO_F_RING_PACKED.
    pub fn set_packed(&mut self, packed: bool) {
        if packed == self.packed() {
            return;
        }
        let max_size = self.max_size();
        let (desc, driver, device) = self.addresses();
        let (size, ready) = (self.size(), self.ready());
        let (event_idx, indirect) = (self.event_idx(), self.indirect());
        self.ring = if packed {
            Ring::Packed(PackedQueue::new(max_size))
        } else {
            Ring::Split(SplitQueue::new(max_size))
        };
        dispatch!(&mut self.ring, q => {
            q.set_size(size);
            q.set_addresses(desc, driver, device);
            q.set_event_idx(event_idx);
            q.set_indirect(indirect);
            q.set_ready(ready);
        });
    }

    /// `QueueSizeMax` (v1.0: QueueNumMax), in elements.
    pub fn max_size(&self) -> u16 {
        dispatch!(&self.ring, q => q.max_size())
    }

    /// `QueueSize` (v1.0: QueueNum) as last set, in elements; `max_size`
    /// after reset.
    pub fn size(&self) -> u16 {
        dispatch!(&self.ring, q => q.size())
    }

    /// Sets `QueueSize` (v1.0: QueueNum) in elements. Any value is stored;
    /// [`Queue::validate`] (and every data-path call) rejects one that is 0
    /// or above `max_size`, and for a split ring one that is not a power of
    /// two.
    pub fn set_size(&mut self, size: u16) {
        dispatch!(&mut self.ring, q => q.set_size(size))
    }

    /// Sets the guest-physical addresses of the three areas: `QueueDesc`
    /// (descriptor table / packed descriptor ring), `QueueDriver` (driver
    /// area: available ring / driver event suppression; legacy QueueAvail)
    /// and `QueueDevice` (device area: used ring / device event
    /// suppression; legacy QueueUsed). Checked by [`Queue::validate`].
    pub fn set_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        dispatch!(&mut self.ring, q => q.set_addresses(desc, driver, device))
    }

    /// The three addresses as set: `(desc, driver, device)`.
    pub fn addresses(&self) -> (u64, u64, u64) {
        dispatch!(&self.ring, q => q.addresses())
    }

    /// Checks the queue's configuration against `mem` before it is enabled
    /// (virtio v1.4 §2.7, §2.8.10.1, §4.2.3.2): size, alignment and extent
    /// of each area, each area inside `mem`.
    ///
    /// Split ring: the size is a power of two in `1..=max_size`; the
    /// descriptor table (`16 * size` bytes), available ring (`6 + 2 *
    /// size`) and used ring (`6 + 8 * size`) are aligned to 16, 2 and 4
    /// bytes (the event fields included, whatever the features).
    ///
    /// Packed ring: the size is in `1..=max_size` (any value, §2.8.10.1);
    /// the descriptor ring (`16 * size` bytes, aligned to 16) and the
    /// driver and device event suppression structures (4 bytes each,
    /// aligned to 4).
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidSize`], [`QueueError::Misaligned`],
    /// [`QueueError::AreaOverflow`], [`QueueError::AreaOutOfMemory`]: all
    /// peer faults.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        dispatch!(&self.ring, q => q.validate(mem))
    }

    /// Whether the queue is enabled (`QueueReady`, legacy: `QueuePFN` != 0).
    pub fn ready(&self) -> bool {
        dispatch!(&self.ring, q => q.ready())
    }

    /// Enables or disables the queue (`QueueReady`). Enabling does not
    /// validate: the transport calls [`Queue::validate`] first, and every
    /// data-path call re-checks the layout anyway.
    pub fn set_ready(&mut self, ready: bool) {
        dispatch!(&mut self.ring, q => q.set_ready(ready))
    }

    /// Applies the negotiated feature bits: VIRTIO_F_RING_PACKED (the ring
    /// kind, [`Queue::set_packed`]), VIRTIO_F_EVENT_IDX (§2.7.10,
    /// §2.8.10), VIRTIO_F_INDIRECT_DESC (§2.7.5.3, §2.8.7). Other bits are
    /// ignored.
    pub fn set_features(&mut self, features: u64) {
        self.set_packed(features & bit(VIRTIO_F_RING_PACKED) != 0);
        dispatch!(&mut self.ring, q => q.set_features(features))
    }

    /// Turns VIRTIO_F_EVENT_IDX handling on or off.
    pub fn set_event_idx(&mut self, enabled: bool) {
        dispatch!(&mut self.ring, q => q.set_event_idx(enabled))
    }

    /// Whether VIRTIO_F_EVENT_IDX handling is on.
    pub fn event_idx(&self) -> bool {
        dispatch!(&self.ring, q => q.event_idx())
    }

    /// Turns acceptance of indirect descriptors (VIRTIO_F_INDIRECT_DESC) on
    /// or off.
    pub fn set_indirect(&mut self, enabled: bool) {
        dispatch!(&mut self.ring, q => q.set_indirect(enabled))
    }

    /// Whether indirect descriptors are accepted.
    pub fn indirect(&self) -> bool {
        dispatch!(&self.ring, q => q.indirect())
    }

    /// Where the device reads next. Split ring: the next available-ring
    /// index (free-running, modulo 2^16; the slot is this modulo the size).
    /// Packed ring: the descriptor index of the next chain in bits 0..15
    /// and the device's wrap counter for it in bit 15 (the encoding of
    /// §2.8.10 and §2.9); after reset `0x8000` (counters start at 1).
    pub fn next_avail(&self) -> u16 {
        dispatch!(&self.ring, q => q.next_avail())
    }

    /// Sets where the device reads next (queue reset: 0; restore: a saved
    /// [`Queue::next_avail`], in its encoding; a packed index at or above
    /// the size is taken modulo the size). Forgets what `undo_pop` could
    /// return.
    pub fn set_next_avail(&mut self, index: u16) {
        dispatch!(&mut self.ring, q => q.set_next_avail(index))
    }

    /// Where the device writes next. Split ring: the next used-ring index
    /// (free-running, modulo 2^16), the value of `used.idx` it last
    /// published. Packed ring: the descriptor index of the next used
    /// descriptor and the wrap counter, encoded as [`Queue::next_avail`].
    pub fn next_used(&self) -> u16 {
        dispatch!(&self.ring, q => q.next_used())
    }

    /// Sets where the device writes next (queue reset: 0; restore: a saved
    /// [`Queue::next_used`]). Entries added before are treated as already
    /// notified.
    pub fn set_next_used(&mut self, index: u16) {
        dispatch!(&mut self.ring, q => q.set_next_used(index))
    }

    /// Puts the queue in its reset state (virtio v1.4 §2.6.1 "Virtqueue
    /// Reset", and device reset): `QueueSize` = `max_size`, addresses 0, not
    /// ready, ring positions at their start. The negotiated features (and
    /// so the ring kind) are kept.
    pub fn reset(&mut self) {
        dispatch!(&mut self.ring, q => q.reset())
    }

    /// Number of chains available that the device has not popped yet.
    ///
    /// # Errors
    ///
    /// Split ring: [`QueueError::InvalidAvailIdx`] when the driver's index
    /// is more than `size` ahead. Both: [`QueueError::NotReady`]; layout
    /// and memory errors.
    pub fn available<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        dispatch!(&mut self.ring, q => q.available(mem))
    }

    /// Pops the next available descriptor chain into `chain`, reusing its
    /// storage (no heap allocation for chains of up to
    /// [`INLINE_DESCRIPTORS`] descriptors, or once `chain` has grown to the
    /// needed capacity).
    ///
    /// Returns `Ok(false)` when the ring is empty; with EVENT_IDX the device
    /// has then asked the driver to notify it about the next chain (the
    /// device only asks when it has caught up). Implements virtio v1.4
    /// §2.7.6, §2.7.5, §2.7.5.3, §2.7.10 (split) and §2.8.6, §2.8.7,
    /// §2.8.10, §2.8.21 (packed).
    ///
    /// # Errors
    ///
    /// Any peer fault of [`QueueError`]: a bad index, id, flag, length or
    /// address, a loop, a malformed or oversized chain, a bad indirect
    /// table, or a guest memory error; and [`QueueError::NotReady`]. On
    /// error the queue does not advance, the content of `chain` is
    /// unspecified, and the device should set DEVICE_NEEDS_RESET.
    #[inline]
    pub fn pop_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        dispatch!(&mut self.ring, q => q.pop_into(mem, chain))
    }

    /// Pops the next available descriptor chain, or `None` when the ring
    /// is empty. Same as [`Queue::pop_into`] with a fresh chain (which
    /// allocates only for chains of more than [`INLINE_DESCRIPTORS`]
    /// descriptors).
    ///
    /// # Errors
    ///
    /// As [`Queue::pop_into`].
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let mut chain = DescriptorChain::new();
        Ok(if self.pop_into(mem, &mut chain)? {
            Some(chain)
        } else {
            None
        })
    }

    /// Gives back the most recently popped chain that has not been given
    /// back yet: the next pop returns it again. For a device that popped a
    /// chain it cannot process now (e.g. no room in the backend). The
    /// device must not have put that chain in the used ring.
    ///
    /// Returns `false` (and does nothing) when no pop can be undone: none
    /// since the last [`Queue::set_next_avail`] / [`Queue::reset`], or all
    /// already undone.
    pub fn undo_pop(&mut self) -> bool {
        dispatch!(&mut self.ring, q => q.undo_pop())
    }

    /// Returns a chain to the driver (virtio v1.4 §2.7.8 split, §2.8.21.1
    /// packed), publishing it with release ordering so the driver sees the
    /// buffer contents first.
    ///
    /// `head` is [`DescriptorChain::head_index`]; `len` is the number of
    /// bytes the device wrote into the chain's writable part, from its
    /// start.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidUsedHead`] when `head` names no chain the
    /// device may complete (split: `head >= size`; packed: no chain with
    /// that buffer id is in flight); [`QueueError::NotReady`]; layout
    /// errors; [`QueueError::GuestMemory`] when the ring is not writable
    /// memory. Nothing is published on error.
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        dispatch!(&mut self.ring, q => q.add_used(mem, head, len))
    }

    /// Returns several chains, in order; each element is `(head, len)` as
    /// in [`Queue::add_used`]. The split ring publishes `used.idx` once at
    /// the end.
    ///
    /// # Errors
    ///
    /// As [`Queue::add_used`]; all heads are checked before anything is
    /// written, and nothing is published on error.
    pub fn add_used_batch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        elements: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        dispatch!(&mut self.ring, q => q.add_used_batch(mem, elements))
    }

    /// Whether the driver wants a used buffer notification for the chains
    /// added since the previous call (virtio v1.4 §2.7.7, §2.7.10 split;
    /// §2.8.10 packed). `false` when nothing was added since the previous
    /// call.
    ///
    /// Call it once after a batch of [`Queue::add_used`] to send one
    /// interrupt per batch. A full fence orders the device's ring stores
    /// before its read of the driver's suppression fields. Call it at least
    /// once per `size` chains added (positions wrap).
    ///
    /// # Errors
    ///
    /// [`QueueError::NotReady`], layout errors, [`QueueError::GuestMemory`].
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        dispatch!(&mut self.ring, q => q.needs_notification(mem))
    }

    /// Re-arms available buffer notifications after the device stopped
    /// popping before the ring ran empty (with EVENT_IDX: asks to be
    /// notified at the next chain), then looks again. Returns whether
    /// chains are available (then the device should pop them instead of
    /// waiting for a notification).
    ///
    /// # Errors
    ///
    /// As [`Queue::available`].
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        dispatch!(&mut self.ring, q => q.enable_notification(mem))
    }
}
