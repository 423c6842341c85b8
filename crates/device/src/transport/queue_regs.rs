//! The per-queue registers of a window and the checks a ring passes before
//! it is enabled (virtio v1.4 §4.2.2 `QueueSizeMax` .. `QueueDeviceHigh`,
//! §4.2.4 `QueueAlign` / `QueuePFN`, §2.7 "Split Virtqueues").
//!
//! The transport keeps its own copy of every queue register: the driver
//! reads some of them back (`QueueReady`, `QueuePFN`), and the
//! [`Queue`] handed to the device is built from this copy only at
//! `DRIVER_OK` (or when a reset queue is re-enabled).

use std::fmt;

use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmmio_spec::split::{self, legacy_layout};

use crate::queue::Queue;

/// `QueueAlign` before the driver writes it, in bytes: the legacy
/// alignment Linux and QEMU use (one 4 KiB page).
pub(super) const DEFAULT_QUEUE_ALIGN: u32 = 4096;

/// One of the three areas of a split virtqueue (virtio v1.4 §2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Area {
    /// Descriptor Area (descriptor table), `QueueDesc*`.
    Descriptor,
    /// Driver Area (available ring), `QueueDriver*`.
    Driver,
    /// Device Area (used ring), `QueueDevice*`.
    Device,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Area::Descriptor => "descriptor table",
            Area::Driver => "driver area (available ring)",
            Area::Device => "device area (used ring)",
        })
    }
}

/// Why a queue the driver tried to enable (`QueueReady` = 1 or a non-zero
/// `QueuePFN`) was refused. All of these are driver faults: the queue stays
/// disabled and reads back 0.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum RingError {
    /// `QueueSize` is 0, not a power of two, or above `QueueSizeMax`
    /// (virtio v1.4 §2.7 "Queue Size must be a power of 2").
    #[error("queue size {size} is not a power of two in 1..={max}")]
    Size {
        /// `QueueSize` as written.
        size: u16,
        /// `QueueSizeMax`.
        max: u16,
    },
    /// An area does not start at a multiple of its alignment in bytes
    /// (virtio v1.4 §2.7 "Virtqueue alignment": 16, 2, 4).
    #[error("{area} at {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// Which area.
        area: Area,
        /// Its guest-physical address.
        addr: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// An area is not entirely inside guest memory.
    #[error("{area} at {addr:#x}, {len} bytes, is not inside guest memory")]
    OutsideMemory {
        /// Which area.
        area: Area,
        /// Its guest-physical address.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
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

    /// Checks the split-ring layout of `size` elements at the three
    /// programmed addresses against `mem`.
    ///
    /// # Errors
    /// [`RingError::Size`], [`RingError::Misaligned`] or
    /// [`RingError::OutsideMemory`], for the first check that fails.
    pub(super) fn validate<M: GuestMemory>(&self, mem: &M) -> Result<(), RingError> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(RingError::Size {
                size: self.size,
                max: self.max_size,
            });
        }
        // The sizes include `used_event` / `avail_event`, which exist
        // whether or not EVENT_IDX is negotiated in every driver we know.
        let areas = [
            (
                Area::Descriptor,
                self.desc,
                split::DESC_ALIGN,
                split::desc_table_size(self.size),
                Permissions::Read,
            ),
            (
                Area::Driver,
                self.driver,
                split::AVAIL_ALIGN,
                split::avail::size(self.size),
                Permissions::Read,
            ),
            (
                Area::Device,
                self.device,
                split::USED_ALIGN,
                split::used::size(self.size),
                Permissions::ReadWrite,
            ),
        ];
        for (area, addr, align, len, access) in areas {
            // The alignments are non-zero constants: `%` cannot panic.
            if addr % align != 0 {
                return Err(RingError::Misaligned { area, addr, align });
            }
            let inside = addr.checked_add(len).is_some()
                && usize::try_from(len)
                    .is_ok_and(|count| mem.check_range(GuestAddress(addr), count, access));
            if !inside {
                return Err(RingError::OutsideMemory { area, addr, len });
            }
        }
        Ok(())
    }

    /// Sets the three addresses from a legacy `QueuePFN` of `pfn` pages of
    /// `page_size` bytes and the current `QueueAlign` (virtio v1.4 §4.2.4,
    /// §2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout").
    ///
    /// # Errors
    /// [`RingError::LegacyLayout`] when no layout exists; the addresses are
    /// then left unchanged.
    pub(super) fn set_legacy_layout(&mut self, pfn: u32, page_size: u32) -> Result<(), RingError> {
        let error = RingError::LegacyLayout {
            pfn,
            page_size,
            align: self.align,
        };
        let base = u64::from(pfn)
            .checked_mul(u64::from(page_size))
            .ok_or_else(|| error.clone())?;
        let layout = legacy_layout(base, self.size, u64::from(self.align)).ok_or(error)?;
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
