//! The driver-role virtqueue: one [`VirtQueue`] API over the split ring
//! (virtio v1.4 §2.7, `split.rs`) and the packed ring (§2.8, `packed.rs`).
//!
//! A queue owns its ring memory in one DMA allocation and keeps every
//! record of the chains in flight in driver memory, which the device
//! cannot corrupt; everything read from the device (used entries or used
//! descriptors, the device's notification suppression) is checked before
//! use.
//!
//! [`crate::Transport::setup_queue`] creates queues (packed when
//! VIRTIO_F_RING_PACKED was negotiated) and [`crate::Transport::notify`]
//! kicks them; the class drivers ([`crate::blk`], [`crate::rng`],
//! [`crate::console`]) use them whatever the ring.

mod packed;
mod split;

use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::error::{Error, Result};
use crate::hal::{BufferDirection, Hal, PAGE_SIZE};

use vmmio_spec::features::{bit, VIRTIO_F_RING_PACKED};

use packed::PackedQueue;
use split::SplitQueue;

/// Descriptors in one indirect table: one [`PAGE_SIZE`] page of 16-byte
/// descriptors.
pub const MAX_INDIRECT: usize = PAGE_SIZE / 16;

/// What the checks shared by the split and packed `add_inner` found out
/// about a chain that passed them.
pub(crate) struct ChainShape {
    /// Number of segments (readable + writable), at least 1.
    pub(crate) total: usize,
    /// Total writable bytes (the limit for the used `len`).
    pub(crate) writable_bytes: u64,
    /// Whether the chain goes through an indirect table.
    pub(crate) use_indirect: bool,
    /// Descriptors it takes in the ring itself (1 if indirect).
    pub(crate) ring_descs: usize,
}

/// The chain checks at the start of both rings' `add_inner`: not empty,
/// at most 2^32 bytes, and at most `MAX_INDIRECT` segments through an
/// indirect table (used when `indirect` and more than one segment) or
/// `size` direct ones.
#[inline]
pub(crate) fn check_chain(
    readable: &[Segment],
    writable: &[Segment],
    indirect: bool,
    size: u16,
) -> Result<ChainShape> {
    let total = readable.len().saturating_add(writable.len());
    if total == 0 {
        return Err(Error::EmptyChain);
    }
    let sum = |s: &[Segment]| s.iter().map(|g| u64::from(g.len)).sum::<u64>();
    // Each sum is at most total * (2^32 - 1), and `total` is bounded
    // below by the checks that follow; saturate for absurd inputs.
    let writable_bytes = sum(writable);
    let bytes = sum(readable).saturating_add(writable_bytes);
    if bytes > 1u64 << 32 {
        return Err(Error::ChainTooLong(bytes));
    }
    let use_indirect = indirect && total > 1;
    let ring_descs = if use_indirect {
        if total > MAX_INDIRECT {
            return Err(Error::TooManySegments {
                segments: total,
                max: MAX_INDIRECT,
            });
        }
        1
    } else {
        if total > usize::from(size) {
            return Err(Error::TooManySegments {
                segments: total,
                max: usize::from(size),
            });
        }
        total
    };
    Ok(ChainShape {
        total,
        writable_bytes,
        use_indirect,
        ring_descs,
    })
}

/// One buffer segment given by its device address (virtio v1.4 §2.7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Device-visible address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A completed chain, taken from the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The token [`VirtQueue::add`] returned (split: the head descriptor
    /// index; packed: the buffer id).
    pub token: u16,
    /// Bytes the device wrote into the chain's writable segments, checked
    /// to be at most their total length.
    pub len: u32,
}

/// A caller buffer shared through [`Hal::share`], undone at completion.
pub(crate) struct SharedBuf {
    paddr: u64,
    ptr: usize,
    len: usize,
    direction: BufferDirection,
}

/// A virtqueue, driver role: a split ring (virtio v1.4 §2.7) or a packed
/// ring (§2.8), with the same calls.
///
/// Created by [`crate::Transport::setup_queue`], which programs its
/// addresses into the device. Tokens name chains in flight (split: the
/// head descriptor index; packed: the buffer id, both below the queue
/// size); chains may complete in any order.
///
/// Dropping a queue the device may still use would let the device write
/// freed memory, so a queue dropped without
/// [`crate::Transport::teardown_queue`] (which stops it and reads
/// `QueueReady` back) leaks its memory instead of freeing it.
///
/// # Example
///
/// ```
/// # use vmmio_driver::{Hal, RegisterIo, Result, Segment, Transport};
/// // Post one device-writable buffer, kick, and poll for its completion.
/// fn fill<R: RegisterIo, H: Hal + Clone>(t: &mut Transport<R>, hal: H) -> Result<u32> {
///     let mut q = t.setup_queue(hal.clone(), 0, 16)?;
///     let buf = vmmio_driver::Dma::new(hal, 64)?;
///     let seg = Segment { addr: buf.paddr(), len: 64 };
///     // SAFETY: `buf` outlives the request: it is leaked below unless
///     // the device completed the chain.
///     let token = unsafe { q.add_segments(&[], &[seg])? };
///     t.notify(&mut q)?;
///     for _ in 0..1000 {
///         if let Some(used) = q.pop_used()? {
///             assert_eq!(used.token, token);
///             t.teardown_queue(q)?;
///             return Ok(used.len);
///         }
///     }
///     buf.leak();
///     Err(vmmio_driver::Error::Timeout { what: "used buffer" })
/// }
/// ```
pub struct VirtQueue<H: Hal + Clone> {
    ring: Ring<H>,
}

enum Ring<H: Hal + Clone> {
    Split(SplitQueue<H>),
    Packed(PackedQueue<H>),
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

impl<H: Hal + Clone> core::fmt::Debug for VirtQueue<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        dispatch!(&self.ring, q => q.fmt(f))
    }
}

impl<H: Hal + Clone> VirtQueue<H> {
    /// Allocates zeroed memory for queue `index` of `size` entries (split:
    /// a power of two, 1..=32768; packed: 1..=32768). `features` are the
    /// negotiated feature bits: RING_PACKED picks the packed ring (never
    /// for `legacy` devices, which cannot negotiate it), INDIRECT_DESC and
    /// EVENT_IDX are used. `legacy` selects the contiguous legacy layout
    /// and guest-native byte order.
    pub(crate) fn new(hal: H, index: u16, size: u16, legacy: bool, features: u64) -> Result<Self> {
        let ring = if features & bit(VIRTIO_F_RING_PACKED) != 0 && !legacy {
            Ring::Packed(PackedQueue::new(hal, index, size, features)?)
        } else {
            Ring::Split(SplitQueue::new(hal, index, size, legacy, features)?)
        };
        Ok(Self { ring })
    }

    /// Whether this is a packed ring (VIRTIO_F_RING_PACKED, §2.8).
    pub fn packed(&self) -> bool {
        matches!(self.ring, Ring::Packed(_))
    }

    /// The split ring inside (unit tests of the split ring).
    #[cfg(test)]
    pub(crate) fn split_mut(&mut self) -> &mut SplitQueue<H> {
        match &mut self.ring {
            Ring::Split(q) => q,
            Ring::Packed(_) => panic!("not a split ring"),
        }
    }

    /// The packed ring inside (unit tests of the packed ring).
    #[cfg(test)]
    pub(crate) fn packed_mut(&mut self) -> &mut PackedQueue<H> {
        match &mut self.ring {
            Ring::Packed(q) => q,
            Ring::Split(_) => panic!("not a packed ring"),
        }
    }

    fn hal(&self) -> &H {
        dispatch!(&self.ring, q => q.hal())
    }

    /// The queue index (the value written to `QueueSel` and `QueueNotify`).
    pub fn index(&self) -> u16 {
        dispatch!(&self.ring, q => q.index())
    }

    /// The queue size in entries.
    pub fn size(&self) -> u16 {
        dispatch!(&self.ring, q => q.size())
    }

    /// Free descriptors in the ring (split: in the descriptor table).
    pub fn num_free(&self) -> u16 {
        dispatch!(&self.ring, q => q.num_free())
    }

    /// Whether indirect descriptors are in use (VIRTIO_F_INDIRECT_DESC).
    pub fn indirect(&self) -> bool {
        dispatch!(&self.ring, q => q.indirect())
    }

    /// Whether EVENT_IDX suppression is in use (VIRTIO_F_EVENT_IDX).
    pub fn event_idx(&self) -> bool {
        dispatch!(&self.ring, q => q.event_idx())
    }

    /// Where the driver makes the next buffer available, as notification
    /// data carries it (virtio v1.4 §2.9). Split: the available `idx` last
    /// published (modulo 2^16). Packed: the next descriptor's index in bits
    /// 0..15 and the driver's wrap counter in bit 15.
    pub fn avail_idx(&self) -> u16 {
        dispatch!(&self.ring, q => q.avail_idx())
    }

    /// Device address of the descriptor area (`QueueDesc*`), and of the
    /// whole queue for legacy devices (`QueuePFN` * 4096).
    pub fn desc_addr(&self) -> u64 {
        dispatch!(&self.ring, q => q.desc_addr())
    }

    /// Device address of the driver area (`QueueDriver*`): the available
    /// ring, or the packed ring's driver event suppression structure.
    pub fn driver_addr(&self) -> u64 {
        dispatch!(&self.ring, q => q.driver_addr())
    }

    /// Device address of the device area (`QueueDevice*`): the used ring,
    /// or the packed ring's device event suppression structure.
    pub fn device_addr(&self) -> u64 {
        dispatch!(&self.ring, q => q.device_addr())
    }

    /// Whether any chain is in flight.
    pub fn has_in_flight(&self) -> bool {
        dispatch!(&self.ring, q => q.has_in_flight())
    }

    /// Asks for used-buffer notifications (`true`, the default) or asks
    /// the device to suppress them (virtio v1.4 §2.7.7, §2.8.10).
    /// Suppression is a hint: the driver must (and does) cope with
    /// spurious notifications.
    pub fn set_used_notifications(&mut self, enabled: bool) {
        dispatch!(&mut self.ring, q => q.set_used_notifications(enabled))
    }

    /// Makes a chain of caller buffers available: `readable` segments
    /// (device-readable) followed by `writable` ones (device-writable), as
    /// virtio v1.4 §2.7.4.2 requires. Each buffer is shared through
    /// [`Hal::share`] and unshared when [`pop_used`](Self::pop_used)
    /// returns the chain. Returns the chain's token.
    ///
    /// Publishes the new available `idx` after a release barrier
    /// (§2.7.13.3.1); call [`crate::Transport::notify`] to kick.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyChain`], [`Error::TooManySegments`],
    /// [`Error::ChainTooLong`], [`Error::QueueFull`], [`Error::DmaShare`],
    /// [`Error::DmaAlloc`] (indirect table). Nothing is posted on error.
    ///
    /// # Safety
    ///
    /// Every buffer must stay valid, and must not be accessed or moved,
    /// until its chain is returned by [`pop_used`](Self::pop_used) or the
    /// queue is stopped by [`crate::Transport::teardown_queue`] or
    /// [`crate::Transport::reset_queue`]: the device reads and writes it
    /// in between.
    pub unsafe fn add(&mut self, readable: &[&[u8]], writable: &mut [&mut [u8]]) -> Result<u16> {
        let mut shared: Vec<SharedBuf> = Vec::with_capacity(readable.len() + writable.len());
        let mut r = Vec::with_capacity(readable.len());
        let mut w = Vec::with_capacity(writable.len());
        let mut result = Ok(());
        for b in readable {
            match self.share_one(NonNull::from(*b), BufferDirection::DriverToDevice) {
                Ok((seg, s)) => {
                    r.push(seg);
                    shared.push(s);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            for b in writable.iter_mut() {
                match self.share_one(NonNull::from(&mut **b), BufferDirection::DeviceToDriver) {
                    Ok((seg, s)) => {
                        w.push(seg);
                        shared.push(s);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        let result = result.and_then(|()| self.add_chain(&r, &w, &mut shared));
        if result.is_err() {
            unshare_all(self.hal(), &mut shared);
        }
        result
    }

    fn share_one(
        &self,
        buf: NonNull<[u8]>,
        direction: BufferDirection,
    ) -> Result<(Segment, SharedBuf)> {
        let len = buf.len();
        let len32 = u32::try_from(len).map_err(|_| Error::ChainTooLong(len as u64))?;
        // SAFETY: `add`'s caller promised the buffer stays valid and
        // untouched until the chain completes or the queue is stopped,
        // which is when `unshare_all` undoes this.
        let paddr = unsafe { self.hal().share(buf, direction) }.ok_or(Error::DmaShare { len })?;
        Ok((
            Segment {
                addr: paddr,
                len: len32,
            },
            SharedBuf {
                paddr,
                ptr: buf.cast::<u8>().as_ptr() as usize,
                len,
                direction,
            },
        ))
    }

    /// Makes a chain of device-address segments available: `readable`
    /// first, then `writable` (virtio v1.4 §2.7.4.2). Returns the token.
    ///
    /// # Errors
    ///
    /// As [`add`](Self::add), without the sharing errors.
    ///
    /// # Safety
    ///
    /// The device will read and write the memory at those addresses: it
    /// must be DMA memory (see [`Dma`](crate::Dma)) the caller keeps allocated, and
    /// does not touch through Rust references, until the chain is returned
    /// by [`pop_used`](Self::pop_used) or the queue is stopped.
    pub unsafe fn add_segments(
        &mut self,
        readable: &[Segment],
        writable: &[Segment],
    ) -> Result<u16> {
        self.add_chain(readable, writable, &mut Vec::new())
    }

    fn add_chain(
        &mut self,
        readable: &[Segment],
        writable: &[Segment],
        shared: &mut Vec<SharedBuf>,
    ) -> Result<u16> {
        dispatch!(&mut self.ring, q => q.add_inner(readable, writable, shared))
    }

    /// Whether the device wants an available-buffer notification for what
    /// was published since the last call (virtio v1.4 §2.7.10, §2.8.10):
    /// a full barrier (`SeqCst` fence) separates the published buffers
    /// from the read of the device's suppression fields.
    ///
    /// [`crate::Transport::notify_if_needed`] calls this.
    pub fn should_notify(&mut self) -> bool {
        dispatch!(&mut self.ring, q => q.should_notify())
    }

    /// Whether the device has returned a chain not yet popped.
    pub fn can_pop(&self) -> bool {
        dispatch!(&self.ring, q => q.can_pop())
    }

    /// The next used chain, validated, without consuming it.
    ///
    /// # Errors
    ///
    /// As [`pop_used`](Self::pop_used).
    pub fn peek_used(&self) -> Result<Option<Used>> {
        dispatch!(&self.ring, q => q.peek_used())
    }

    /// Takes the next used chain (virtio v1.4 §2.7.14, §2.8.21.2), frees
    /// its descriptors, unshares its caller buffers, and returns its token
    /// and written length. Chains may complete in any order.
    ///
    /// # Errors
    ///
    /// A device fault leaves the entry in place (the device must be reset):
    /// [`Error::UsedIdxInvalid`] (split: the used `idx` ran more than a
    /// queue size ahead), [`Error::UsedIdOutOfRange`],
    /// [`Error::UsedIdNotInFlight`], [`Error::UsedLenTooLarge`].
    pub fn pop_used(&mut self) -> Result<Option<Used>> {
        dispatch!(&mut self.ring, q => q.pop_used())
    }

    /// Pops the next used chain, which must be `token`.
    ///
    /// # Errors
    ///
    /// As [`pop_used`](Self::pop_used), and [`Error::UnexpectedToken`]
    /// (nothing consumed) when another chain completed first.
    pub fn pop_used_token(&mut self, token: u16) -> Result<Option<u32>> {
        match self.peek_used()? {
            None => Ok(None),
            Some(used) if used.token != token => Err(Error::UnexpectedToken {
                expected: token,
                got: used.token,
            }),
            Some(_) => Ok(self.pop_used()?.map(|u| u.len)),
        }
    }

    /// Forgets every chain in flight after the device stopped using the
    /// queue (queue disabled and read back, queue reset, or device reset):
    /// caller buffers are unshared and the queue memory may be freed.
    pub(crate) fn release(&mut self) {
        dispatch!(&mut self.ring, q => q.release())
    }
}

/// Undoes the sharing of every buffer in `shared`.
pub(crate) fn unshare_all<H: Hal>(hal: &H, shared: &mut Vec<SharedBuf>) {
    for s in shared.drain(..) {
        let Some(ptr) = NonNull::new(s.ptr as *mut u8) else {
            continue;
        };
        let buf = NonNull::slice_from_raw_parts(ptr, s.len);
        // SAFETY: `s` records one successful `share` of this very
        // buffer (same pointer, length, direction and address), undone
        // here once, when the device is done with it.
        unsafe { hal.unshare(s.paddr, buf, s.direction) };
    }
}
