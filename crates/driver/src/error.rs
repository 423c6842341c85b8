//! The driver's error type.
//!
//! Variants carry the values that caused them (the register value read, the
//! queue index, the used-ring entry), so a log line says which device did
//! what. They fall in three groups:
//!
//! - **device faults**: the device broke a rule of virtio v1.4 (bad magic,
//!   a used id out of range, a length larger than the buffer, a status that
//!   never settles). The driver stops and returns the error; it never
//!   panics on a value the device chose.
//! - **host faults**: the [`Hal`](crate::Hal) could not allocate or share
//!   memory.
//! - **caller mistakes**: a request the driver cannot express (an empty
//!   chain, a read past the disk's capacity).

/// Everything that can go wrong in `vmmio-driver`.
///
/// Returned by probing and initialisation ([`crate::Transport`]), queue
/// operations ([`crate::VirtQueue`]) and the class drivers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `MagicValue` was not 0x74726976 ("virt"); the value read is given
    /// (virtio v1.4 §4.2.2.2: the driver MUST ignore such a device).
    #[error("bad MagicValue {0:#010x} (expected 0x74726976)")]
    BadMagic(u32),
    /// `Version` was neither 1 (legacy) nor 2 (modern); the value read is
    /// given (virtio v1.4 §4.2.2.2, §4.2.4).
    #[error("unsupported Version {0} (expected 1 or 2)")]
    UnsupportedVersion(u32),
    /// A Version 2 device did not offer VIRTIO_F_VERSION_1 (bit 32); the
    /// offered feature bits are given. The driver set FAILED (virtio v1.4
    /// §6.1, §2.2.1).
    #[error("Version 2 device does not offer VIRTIO_F_VERSION_1 (offered {offered:#x})")]
    Version1NotOffered {
        /// Every feature bit the device offered (pages 0 and 1).
        offered: u64,
    },
    /// The device cleared FEATURES_OK after the driver set it: it does not
    /// accept the driver's subset. The driver set FAILED (virtio v1.4
    /// §3.1.1 step 6).
    #[error("device refused features {accepted:#x} (Status read {status:#x})")]
    FeaturesRefused {
        /// The feature bits the driver wrote.
        accepted: u64,
        /// The `Status` value read back.
        status: u32,
    },
    /// `QueueSizeMax` read 0: queue `0` does not exist (virtio v1.4
    /// §4.2.3.2).
    #[error("queue {0} is not available (QueueSizeMax is 0)")]
    QueueAbsent(u16),
    /// `QueueReady` (Version 2) or `QueuePFN` (legacy) was not 0 before
    /// setup: queue `0` is already in use (virtio v1.4 §4.2.3.2, §4.2.4).
    #[error("queue {0} is already in use")]
    QueueAlreadyUsed(u16),
    /// The caller asked for a queue of 0 entries.
    #[error("queue {0}: a queue of 0 entries was requested")]
    ZeroQueueSize(u16),
    /// A legacy queue's guest page number does not fit the 32-bit
    /// `QueuePFN` register; the queue's address in bytes is given (virtio
    /// v1.4 §4.2.4).
    #[error("queue address {0:#x} has a page number that does not fit QueuePFN")]
    PfnTooLarge(u64),
    /// Queue memory the [`Hal`](crate::Hal) returned is unusable: not
    /// 4096-byte aligned, or (legacy) at page 0, which `QueuePFN` cannot
    /// express. The address is given.
    #[error("queue memory at {0:#x} is misaligned or at page 0")]
    BadQueueAddress(u64),
    /// The [`Hal`](crate::Hal) could not allocate DMA memory
    /// (`pages` pages of 4096 bytes).
    #[error("DMA allocation of {pages} pages failed")]
    DmaAlloc {
        /// Pages requested.
        pages: usize,
    },
    /// The [`Hal`](crate::Hal) could not share a buffer of `len` bytes
    /// with the device.
    #[error("sharing a buffer of {len} bytes with the device failed")]
    DmaShare {
        /// Buffer length in bytes.
        len: usize,
    },
    /// An access of `len` bytes at `offset` falls outside a DMA region of
    /// `size` bytes.
    #[error("DMA access of {len} bytes at offset {offset} outside a region of {size} bytes")]
    DmaOutOfBounds {
        /// Offset in bytes.
        offset: usize,
        /// Access length in bytes.
        len: usize,
        /// Region size in bytes.
        size: usize,
    },
    /// The used ring returned an id that is not a descriptor index of the
    /// queue (`id >= size`; virtio v1.4 §2.7.8).
    #[error("queue {queue}: used id {id} out of range (queue size {size})")]
    UsedIdOutOfRange {
        /// Queue index.
        queue: u16,
        /// The `id` the device wrote.
        id: u32,
        /// Queue size in entries.
        size: u16,
    },
    /// The used ring returned a descriptor index that heads no chain the
    /// driver made available (never posted, or already used).
    #[error("queue {queue}: used id {id} is not in flight")]
    UsedIdNotInFlight {
        /// Queue index.
        queue: u16,
        /// The `id` the device wrote.
        id: u32,
    },
    /// The used ring reported more bytes written than the chain's writable
    /// part holds (virtio v1.4 §2.7.8.1: the device MUST NOT).
    #[error("queue {queue}: used len {len} for id {id} exceeds the {max} writable bytes")]
    UsedLenTooLarge {
        /// Queue index.
        queue: u16,
        /// Head descriptor index.
        id: u16,
        /// The `len` the device wrote, in bytes.
        len: u32,
        /// Writable bytes posted in the chain.
        max: u64,
    },
    /// The device's used `idx` ran more than a queue size ahead of the
    /// driver: it claims more completions than were ever posted.
    #[error("queue {queue}: used idx {used_idx} is more than {size} ahead of {last_seen}")]
    UsedIdxInvalid {
        /// Queue index.
        queue: u16,
        /// The used `idx` the device wrote.
        used_idx: u16,
        /// The last used index the driver consumed.
        last_seen: u16,
        /// Queue size in entries.
        size: u16,
    },
    /// A bounded wait ran out of budget (see [`crate::Limits`]): `what`
    /// names the condition that never held, e.g. "Status to read 0 after
    /// reset".
    #[error("timed out waiting for {what}")]
    Timeout {
        /// The condition waited for.
        what: &'static str,
    },
    /// The device set DEVICE_NEEDS_RESET in `Status` (virtio v1.4 §2.1):
    /// reset and re-initialise it (the class drivers' `reinit`; see the
    /// crate docs, "Recovery after DEVICE_NEEDS_RESET").
    #[error("device needs reset (DEVICE_NEEDS_RESET set)")]
    DeviceNeedsReset,
    /// A descriptor chain needs `needed` free descriptors; `free` are left.
    #[error("queue full: {needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain with no buffer at all was submitted.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// A chain has more segments than the queue size or than one indirect
    /// table (256) allows (virtio v1.4 §2.7.5.3.1).
    #[error("chain of {segments} segments exceeds the limit of {max}")]
    TooManySegments {
        /// Segments in the chain.
        segments: usize,
        /// The limit.
        max: usize,
    },
    /// A chain's buffers add up to more than 2^32 bytes (virtio v1.4
    /// §2.7.5.1).
    #[error("chain of {0} bytes exceeds 2^32 bytes")]
    ChainTooLong(u64),
    /// `pop_used` found a completion for a different token than the caller
    /// waited for.
    #[error("expected completion of token {expected}, got {got}")]
    UnexpectedToken {
        /// The token waited for.
        expected: u16,
        /// The token the device completed.
        got: u16,
    },
    /// An operation needs feature bit `0`, which was not negotiated.
    #[error("feature bit {0} was not negotiated")]
    FeatureNotNegotiated(u32),
    /// An operation is not possible on a legacy (Version 1) device.
    #[error("not supported by legacy (Version 1) devices")]
    LegacyUnsupported,
    /// An operation was attempted in the wrong phase (e.g. a notification
    /// before DRIVER_OK, virtio v1.4 §3.1.1); `0` names the rule.
    #[error("wrong initialisation phase: {0}")]
    WrongPhase(&'static str),
    /// The device type is not the one the class driver drives.
    #[error("device ID {found} is not {expected}")]
    WrongDeviceType {
        /// The device ID the class driver drives.
        expected: u32,
        /// The device ID read.
        found: u32,
    },
    /// A block request would reach past the disk's capacity (virtio v1.4
    /// §5.2.6.1); positions in 512-byte sectors.
    #[error("request of {sectors} sectors at sector {sector} exceeds capacity {capacity}")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors in the request.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A block data buffer is not a multiple of 512 bytes (virtio v1.4
    /// §5.2.6.1); its length is given.
    #[error("buffer of {0} bytes is not a multiple of 512")]
    UnalignedLength(usize),
    /// A write to a device that offered VIRTIO_BLK_F_RO.
    #[error("device is read-only")]
    ReadOnly,
    /// A block request completed with a status other than VIRTIO_BLK_S_OK
    /// (1 IOERR, 2 UNSUPP, anything else unknown or never written).
    #[error("block request failed with status {0}")]
    BlockStatus(u8),
    /// A request completed with a used `len` too short to cover the bytes
    /// the driver needs (e.g. a block status byte); the driver does not
    /// trust bytes past `len` (virtio v1.4 §2.7.8.2).
    #[error("completion reports {len} bytes written, at least {needed} needed")]
    ShortCompletion {
        /// The used `len` in bytes.
        len: u32,
        /// Bytes the driver needs written.
        needed: u64,
    },
    /// A network frame is empty or longer than the device's limit (the MTU
    /// plus an Ethernet header with a VLAN tag, virtio v1.4 §5.1.4).
    #[error("frame of {len} bytes; 1 to {max} allowed")]
    FrameTooLong {
        /// The frame's length in bytes.
        len: usize,
        /// The longest frame allowed, in bytes.
        max: usize,
    },
    /// A class driver gave up after an earlier device fault, timeout or
    /// DEVICE_NEEDS_RESET left a request in flight; call its `reinit` (or
    /// re-create the driver).
    #[error("driver is unusable after an earlier fault; reset the device")]
    Broken,
    /// A vsock connection id that names no open connection (closed, reset
    /// by the peer, or never opened).
    #[error("no such vsock connection")]
    NoSuchConnection,
    /// A vsock operation that needs an established connection (send on a
    /// connection still connecting, or after shutting down sending).
    #[error("vsock connection is not established or cannot send")]
    NotConnected,
    /// A vsock port is already listened on, or no free local port is left.
    #[error("vsock port {0} is in use")]
    PortInUse(u32),
    /// The vsock driver's connection limit (given) is reached.
    #[error("vsock connection limit {0} reached")]
    ConnectionLimit(usize),
}

/// The driver's result type.
pub type Result<T> = core::result::Result<T, Error>;
