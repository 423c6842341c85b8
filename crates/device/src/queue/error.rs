//! Errors of the device-role virtqueue.

use core::fmt;

/// Which area of guest memory a queue access was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingArea {
    /// The descriptor table (`QueueDescLow`/`QueueDescHigh`, `16 * size`
    /// bytes, alignment 16).
    DescriptorTable,
    /// The driver area, or available ring (`QueueDriverLow`/`High`,
    /// `6 + 2 * size` bytes, alignment 2).
    AvailableRing,
    /// The device area, or used ring (`QueueDeviceLow`/`High`,
    /// `6 + 8 * size` bytes, alignment 4).
    UsedRing,
    /// An indirect descriptor table (§2.7.5.3, §2.8.7).
    IndirectTable,
    /// The packed ring's descriptor ring (`QueueDesc*`, `16 * size` bytes,
    /// alignment 16, §2.8.10.1).
    DescriptorRing,
    /// The packed ring's driver event suppression structure
    /// (`QueueDriver*`, 4 bytes, alignment 4, §2.8.10).
    DriverEventSuppression,
    /// The packed ring's device event suppression structure
    /// (`QueueDevice*`, 4 bytes, alignment 4, §2.8.10).
    DeviceEventSuppression,
}

impl fmt::Display for RingArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingArea::DescriptorTable => "descriptor table",
            RingArea::AvailableRing => "available ring",
            RingArea::UsedRing => "used ring",
            RingArea::IndirectTable => "indirect descriptor table",
            RingArea::DescriptorRing => "descriptor ring",
            RingArea::DriverEventSuppression => "driver event suppression area",
            RingArea::DeviceEventSuppression => "device event suppression area",
        })
    }
}

/// Why a queue operation failed.
///
/// Everything but [`QueueError::NotReady`] and [`QueueError::InvalidUsedHead`]
/// is a **peer fault**: the driver wrote a bad value into a register or into
/// guest memory. The device's answer is DEVICE_NEEDS_RESET (virtio v1.4
/// §2.1.2) plus a configuration change notification, never a panic; the
/// queue's state is left as it was before the failed call, so repeating the
/// call repeats the error. `NotReady` and `InvalidUsedHead` are host
/// programming errors (the device used the queue wrongly).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue is not enabled (`QueueReady` is 0).
    #[error("queue is not ready")]
    NotReady,
    /// `QueueSize` is 0, not a power of two, or above `QueueSizeMax`
    /// (§2.7 "Queue Size", §4.2.2).
    #[error("invalid queue size {size} (QueueSizeMax {max_size}, must be a power of two)")]
    InvalidSize {
        /// `QueueSize` as written, in elements.
        size: u16,
        /// `QueueSizeMax`, in elements.
        max_size: u16,
    },
    /// An area's guest-physical address is not aligned as §2.7 requires.
    #[error("{area} at {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// The area.
        area: RingArea,
        /// Its guest-physical address.
        addr: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// An area's end address overflows the 64-bit guest-physical space.
    #[error("{area} at {addr:#x} of {len} bytes overflows the address space")]
    AreaOverflow {
        /// The area.
        area: RingArea,
        /// Its guest-physical address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// An area is not (entirely) inside guest memory.
    #[error("{area} at {addr:#x} of {len} bytes is outside guest memory")]
    AreaOutOfMemory {
        /// The area.
        area: RingArea,
        /// Its guest-physical address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// `avail.idx` claims more than `size` chains beyond the device's
    /// `next_avail` (§2.7.6): a driver can never make more than `size`
    /// chains available at once, so the ring is corrupt. The device should
    /// set DEVICE_NEEDS_RESET.
    #[error("avail.idx {avail_idx} is more than {size} entries ahead of next_avail {next_avail}")]
    InvalidAvailIdx {
        /// `avail.idx` as read from guest memory.
        avail_idx: u16,
        /// The next available-ring entry the device would read.
        next_avail: u16,
        /// Queue size in elements.
        size: u16,
    },
    /// A head (from the available ring) or a `next` field names a
    /// descriptor outside the table.
    #[error("chain {head}: descriptor index {index} is outside the table of {size} entries")]
    DescriptorIndexOutOfRange {
        /// Head of the chain being walked.
        head: u16,
        /// The offending index.
        index: u16,
        /// Queue size in elements.
        size: u16,
    },
    /// The chain has more descriptors than its table: it loops
    /// (§2.7.5.1). `limit` is the queue size for the descriptor table, the
    /// number of entries for an indirect table.
    #[error("chain {head} is longer than {limit} descriptors (a loop)")]
    ChainTooLong {
        /// Head of the chain.
        head: u16,
        /// The bound that was reached, in descriptors.
        limit: u32,
    },
    /// A device-readable descriptor follows a device-writable one
    /// (§2.7.4.1 "Message Framing").
    #[error("chain {head}: readable descriptor at position {position} after a writable one")]
    ReadableAfterWritable {
        /// Head of the chain.
        head: u16,
        /// 0-based position of the offending descriptor in the chain.
        position: u32,
    },
    /// The chain's buffers add up to more than `u32::MAX` bytes (§2.7.5.1
    /// allows 2^32; we stop one byte short so totals fit a `u32`).
    #[error("chain {head}: total length overflows ({readable} readable + {writable} writable + {len} bytes)")]
    ChainLengthOverflow {
        /// Head of the chain.
        head: u16,
        /// Readable bytes before the offending descriptor.
        readable: u32,
        /// Writable bytes before the offending descriptor.
        writable: u32,
        /// Length of the offending descriptor in bytes.
        len: u32,
    },
    /// A buffer (or indirect table) `addr..addr + len` wraps past the end
    /// of the 64-bit address space.
    #[error("chain {head}: buffer at {addr:#x} of {len} bytes wraps the address space")]
    DescriptorAddressOverflow {
        /// Head of the chain.
        head: u16,
        /// Guest-physical address of the buffer.
        addr: u64,
        /// Its length in bytes.
        len: u32,
    },
    /// `VIRTQ_DESC_F_INDIRECT` without VIRTIO_F_INDIRECT_DESC negotiated
    /// (§2.7.5.3.1).
    #[error("chain {head}: descriptor {index} is indirect but INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated {
        /// Head of the chain.
        head: u16,
        /// Index of the descriptor in the table.
        index: u16,
    },
    /// `VIRTQ_DESC_F_INDIRECT` together with `VIRTQ_DESC_F_NEXT`
    /// (§2.7.5.3.1).
    #[error("chain {head}: descriptor {index} has both INDIRECT and NEXT")]
    IndirectWithNext {
        /// Head of the chain.
        head: u16,
        /// Index of the descriptor in the table.
        index: u16,
    },
    /// `VIRTQ_DESC_F_INDIRECT` inside an indirect table (§2.7.5.3.1).
    #[error("chain {head}: indirect table entry {index} is itself indirect")]
    NestedIndirect {
        /// Head of the chain.
        head: u16,
        /// Index of the entry in the indirect table.
        index: u16,
    },
    /// An indirect table's length is zero or not a multiple of 16 bytes
    /// (§2.7.5.3).
    #[error("chain {head}: indirect table length {len} is zero or not a multiple of 16")]
    InvalidIndirectLength {
        /// Head of the chain.
        head: u16,
        /// The table length in bytes.
        len: u32,
    },
    /// An indirect table has more than
    /// [`MAX_INDIRECT_DESCRIPTORS`](super::MAX_INDIRECT_DESCRIPTORS) entries.
    #[error("chain {head}: indirect table of {len} bytes exceeds {max} descriptors")]
    IndirectTableTooLarge {
        /// Head of the chain.
        head: u16,
        /// The table length in bytes.
        len: u32,
        /// The limit in descriptors.
        max: u32,
    },
    /// A `next` field inside an indirect table names an entry past its end.
    #[error("chain {head}: indirect index {index} is outside the table of {entries} entries")]
    IndirectIndexOutOfRange {
        /// Head of the chain.
        head: u16,
        /// The offending index.
        index: u16,
        /// Entries in the indirect table.
        entries: u32,
    },
    /// An indirect table is not (entirely) inside guest memory.
    #[error("chain {head}: indirect table at {addr:#x} of {len} bytes is outside guest memory")]
    IndirectTableOutOfMemory {
        /// Head of the chain.
        head: u16,
        /// Guest-physical address of the table.
        addr: u64,
        /// Its length in bytes.
        len: u32,
    },
    /// Packed ring: a descriptor that a `VIRTQ_DESC_F_NEXT` flag says
    /// continues the chain is not marked available (§2.8.6: the driver
    /// makes the whole list available before its first descriptor).
    /// `head` is the ring position of the chain's first descriptor.
    #[error("chain at ring position {head}: descriptor at position {position} continues it but is not available")]
    DescriptorNotAvailable {
        /// Ring position of the chain's first descriptor.
        head: u16,
        /// Ring position of the descriptor that is not available.
        position: u16,
    },
    /// Packed ring: `VIRTQ_DESC_F_INDIRECT` on a descriptor of a list
    /// linked by `VIRTQ_DESC_F_NEXT` (§2.8.7: an indirect descriptor is a
    /// list of its own).
    #[error("chain at ring position {head}: indirect descriptor at position {position} inside a NEXT list")]
    IndirectInList {
        /// Ring position of the chain's first descriptor.
        head: u16,
        /// Ring position of the indirect descriptor.
        position: u16,
    },
    /// Packed ring: a buffer id at or above the queue size. Drivers
    /// allocate ids below the queue size (the spec's example driver and
    /// Linux do); the device keeps one record per id.
    #[error("buffer id {id} is outside 0..{size}")]
    InvalidBufferId {
        /// The id read from the last descriptor of the chain.
        id: u16,
        /// Queue size in elements.
        size: u16,
    },
    /// Packed ring: a chain reuses the buffer id of a chain the device has
    /// not completed yet.
    #[error("buffer id {id} is already in flight")]
    BufferIdInUse {
        /// The id.
        id: u16,
    },
    /// The device passed [`Queue::add_used`](super::Queue::add_used) a head
    /// that names no chain it may complete: split ring, an index outside
    /// the table; packed ring, a buffer id not in flight (a host
    /// programming error).
    #[error("used head {head} names no chain in flight (queue size {size})")]
    InvalidUsedHead {
        /// The head given.
        head: u16,
        /// Queue size in elements.
        size: u16,
    },
    /// A guest memory access failed.
    #[error("guest memory access to the {area} at {addr:#x} failed")]
    GuestMemory {
        /// The area accessed.
        area: RingArea,
        /// Guest-physical address of the access.
        addr: u64,
        /// The error from `vm-memory`.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

impl QueueError {
    /// Whether the error is the driver's fault (so the device should set
    /// DEVICE_NEEDS_RESET, virtio v1.4 §2.1.2) rather than the host's.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            QueueError::NotReady | QueueError::InvalidUsedHead { .. }
        )
    }
}
