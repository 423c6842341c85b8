//! The per-queue registers of a window and the checks a ring passes before
//! it is enabled (virtio v1.4 §4.2.2 `QueueSizeMax` .. `QueueDeviceHigh`,
//! §4.2.4 `QueueAlign` / `QueuePFN`, §2.7 "Split Virtqueues").
//!
//! The transport keeps its own copy of every queue register: the driver
//! reads some of them back (`QueueReady`, `QueuePFN`), and the
//! [`Queue`] handed to the device is built from this copy only at
//! `DRIVER_OK` (or when a reset queue is re-enabled).

use vm_memory::GuestMemory;
use vmmio_spec::split::legacy_layout;

use crate::queue::{Queue, QueueError};

/// `QueueAlign` before the driver writes it, in bytes: the legacy
/// alignment Linux and QEMU use (one 4 KiB page).
pub(super) const DEFAULT_QUEUE_ALIGN: u32 = 4096;

/// Why a queue the driver tried to enable (`QueueReady` = 1 or a non-zero
/// `QueuePFN`) was refused. All of these are driver faults: the queue stays
/// disabled and reads back 0.
#[derive(Debug, thiserror::Error)]
pub(super) enum RingError {
    /// The ring layout fails [`Queue::validate`]: size out of range (split:
    /// not a power of two), an area misaligned or not inside guest memory
    /// (virtio v1.4 §2.7, §2.8.10.1).
    #[error(transparent)]
    Layout(QueueError),
    /// The legacy layout cannot be computed: `QueuePFN` times
    /// `GuestPageSize` overflows, `QueueAlign` is not a power of two, or
    /// the rings run past the end of the address space.
    #[error(
        "legacy queue at page {pfn} (page size {page_size}, align {align}) has no valid layout"
    )]
    LegacyLayout {
        /// `QueuePFN` as written.
        pfn: u32,
        /// `GuestPageSize` in bytes.
        page_size: u32,
        /// `QueueAlign` in bytes.
        align: u32,
    },
}

/// The transport's copy of one queue's registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct QueueRegs {
    /// `QueueSizeMax`, in elements (0: the queue is not available).
    pub(super) max_size: u16,
    /// `QueueSize` (formerly `QueueNum`), in elements. Defaults to
    /// `max_size` until the driver writes it.
    pub(super) size: u16,
    /// `QueueReady` (v2); in legacy windows, whether `QueuePFN` != 0.
    pub(super) ready: bool,
    /// Guest-physical address of the descriptor table.
    pub(super) desc: u64,
    /// Guest-physical address of the driver area (available ring).
    pub(super) driver: u64,
    /// Guest-physical address of the device area (used ring).
    pub(super) device: u64,
    /// Legacy `QueueAlign`, in bytes.
    pub(super) align: u32,
    /// Legacy `QueuePFN`, in guest pages (0: queue not in use).
    pub(super) pfn: u32,
    /// The driver reset this queue with `QueueReset` and has not
    /// re-enabled it yet: its registers may be programmed even after
    /// `DRIVER_OK` (virtio v1.4 §2.6.1.2 "Virtqueue Re-enable").
    pub(super) reset_pending: bool,
}

impl QueueRegs {
    /// A disabled queue whose `QueueSizeMax` is `max_size` elements.
    pub(super) fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
            align: DEFAULT_QUEUE_ALIGN,
            pfn: 0,
            reset_pending: false,
        }
    }

    /// Back to the state after a device reset: disabled, default size,
    /// zero addresses.
    pub(super) fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Checks the layout of the ring `features` select (split, or packed
    /// with VIRTIO_F_RING_PACKED) of `size` elements at the three
    /// programmed addresses against `mem`, with the same rules the data
    /// path relies on ([`Queue::validate`]).
    ///
    /// # Errors
    /// [`RingError::Layout`] with the first check that fails.
    pub(super) fn validate<M: GuestMemory>(&self, mem: &M, features: u64) -> Result<(), RingError> {
        self.to_queue(features)
            .validate(mem)
            .map_err(RingError::Layout)
    }

    /// Sets the three addresses from a legacy `QueuePFN` of `pfn` pages of
    /// `page_size` bytes and the current `QueueAlign` (virtio v1.4 §4.2.4,
    /// §2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout").
    ///
    /// # Errors
    /// [`RingError::LegacyLayout`] when no layout exists; the addresses are
    /// then left unchanged.
    pub(super) fn set_legacy_layout(&mut self, pfn: u32, page_size: u32) -> Result<(), RingError> {
        let error = || RingError::LegacyLayout {
            pfn,
            page_size,
            align: self.align,
        };
        let base = u64::from(pfn)
            .checked_mul(u64::from(page_size))
            .ok_or_else(error)?;
        let layout = legacy_layout(base, self.size, u64::from(self.align)).ok_or_else(error)?;
        self.desc = layout.desc;
        self.driver = layout.avail;
        self.device = layout.used;
        Ok(())
    }

    /// The device-role [`Queue`] for these registers, with the negotiated
    /// `features` applied.
    pub(super) fn to_queue(&self, features: u64) -> Queue {
        let mut queue = Queue::new(self.max_size);
        queue.set_size(self.size);
        queue.set_addresses(self.desc, self.driver, self.device);
        queue.set_features(features);
        queue.set_ready(self.ready);
        queue
    }
}

/// `old` with its low 32 bits replaced by `low`.
pub(super) fn with_low(old: u64, low: u32) -> u64 {
    (old & 0xffff_ffff_0000_0000) | u64::from(low)
}

/// `old` with its high 32 bits replaced by `high`.
pub(super) fn with_high(old: u64, high: u32) -> u64 {
    (old & 0xffff_ffff) | (u64::from(high) << 32)
}
