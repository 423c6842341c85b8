//! The MMIO register window (spec 4.2.2 "MMIO Device Register Layout" and
//! 4.2.4 "Legacy interface").
//!
//! Offsets are in bytes from the window's base. Control registers
//! (`0x000..0x100`) are 32 bits wide and accessed only with aligned 32-bit
//! accesses (4.2.2.2); the device-specific configuration space starts at
//! [`CONFIG`]. v1.4 renamed `QueueNumMax`/`QueueNum` to
//! [`QUEUE_SIZE_MAX`]/[`QUEUE_SIZE`]; the legacy table names
//! `HostFeatures`/`GuestFeatures` what Version 2 calls
//! `DeviceFeatures`/`DriverFeatures`.

/// `MagicValue` (R): always [`MAGIC_VALUE`].
pub const MAGIC: u64 = 0x000;
/// `Version` (R): [`VERSION_MODERN`] or [`VERSION_LEGACY`].
pub const VERSION: u64 = 0x004;
/// `DeviceID` (R): the device type (see `device_id`); 0 for an empty slot.
pub const DEVICE_ID: u64 = 0x008;
/// `VendorID` (R).
pub const VENDOR_ID: u64 = 0x00c;
/// `DeviceFeatures` (R), legacy `HostFeatures`: 32 feature bits of page
/// `DeviceFeaturesSel`.
pub const DEVICE_FEATURES: u64 = 0x010;
/// `DeviceFeaturesSel` (W), legacy `HostFeaturesSel`.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DriverFeatures` (W), legacy `GuestFeatures`: 32 feature bits of page
/// `DriverFeaturesSel`.
pub const DRIVER_FEATURES: u64 = 0x020;
/// `DriverFeaturesSel` (W), legacy `GuestFeaturesSel`.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// `GuestPageSize` (W), legacy only: the guest page size in bytes, used to
/// turn `QueuePFN` into an address.
pub const LEGACY_GUEST_PAGE_SIZE: u64 = 0x028;
/// `QueueSel` (W): the queue the `Queue*` registers apply to (full 32 bits).
pub const QUEUE_SEL: u64 = 0x030;
/// `QueueSizeMax` (R), formerly `QueueNumMax`: maximum queue size, 0 if the
/// selected queue is not available.
pub const QUEUE_SIZE_MAX: u64 = 0x034;
/// `QueueSize` (W), formerly `QueueNum`: the queue size the driver chose.
pub const QUEUE_SIZE: u64 = 0x038;
/// `QueueAlign` (W), legacy only: the used ring alignment in bytes.
pub const LEGACY_QUEUE_ALIGN: u64 = 0x03c;
/// `QueuePFN` (RW), legacy only: guest page number of the queue; 0 stops it.
pub const LEGACY_QUEUE_PFN: u64 = 0x040;
/// `QueueReady` (RW), Version 2 only.
pub const QUEUE_READY: u64 = 0x044;
/// `QueueNotify` (W): queue index, or notification data with
/// VIRTIO_F_NOTIFICATION_DATA.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// `InterruptStatus` (R): [`INT_VRING`] and [`INT_CONFIG`].
pub const INTERRUPT_STATUS: u64 = 0x060;
/// `InterruptACK` (W): clears the written `InterruptStatus` bits.
pub const INTERRUPT_ACK: u64 = 0x064;
/// `Status` (RW): the device status (see `status`); 0 resets.
pub const STATUS: u64 = 0x070;
/// `QueueDescLow` (W).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// `QueueDescHigh` (W).
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// `QueueDriverLow` (W): the driver area (avail ring).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// `QueueDriverHigh` (W).
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QueueDeviceLow` (W): the device area (used ring).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// `QueueDeviceHigh` (W).
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `SHMSel` (W): shared memory region id.
pub const SHM_SEL: u64 = 0x0ac;
/// `SHMLenLow` (R).
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// `SHMLenHigh` (R).
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// `SHMBaseLow` (R).
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// `SHMBaseHigh` (R).
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// `QueueReset` (RW): with VIRTIO_F_RING_RESET, 1 resets the selected queue.
pub const QUEUE_RESET: u64 = 0x0c0;
/// `ConfigGeneration` (R): changes whenever the config space may have.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// `Config` (RW): first byte of the device-specific configuration space.
pub const CONFIG: u64 = 0x100;

/// Size in bytes of one MMIO window as device trees usually declare it.
pub const WINDOW_SIZE: u64 = 0x1000;

/// The value of `MagicValue`: "virt" in little-endian ASCII.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version` of a legacy device (4.2.4).
pub const VERSION_LEGACY: u32 = 1;
/// `Version` of a modern device (4.2.2).
pub const VERSION_MODERN: u32 = 2;

/// `InterruptStatus` bit 0: used buffer notification.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit 1: configuration change notification.
pub const INT_CONFIG: u32 = 2;

/// `SHMLen*`/`SHMBase*` value of a region that does not exist (all ones).
pub const SHM_ABSENT: u64 = u64::MAX;

/// Who may access a register (the "Direction" column of the tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read-only: writes are ignored.
    R,
    /// Write-only: reads return 0.
    W,
    /// Read and write.
    RW,
}

/// Which register layout a register belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Present in both Version 1 and Version 2.
    Both,
    /// Version 2 only (4.2.2).
    Modern,
    /// Legacy Version 1 only (4.2.4).
    Legacy,
}

/// One row of the register tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    /// Offset in bytes from the window base.
    pub offset: u64,
    /// v1.4 name, as the spec's table spells it.
    pub name: &'static str,
    /// Former or legacy name, if any.
    pub old_name: Option<&'static str>,
    /// Access direction.
    pub direction: Direction,
    /// Layout(s) the register exists in.
    pub layout: Layout,
}

const fn reg(
    offset: u64,
    name: &'static str,
    old_name: Option<&'static str>,
    direction: Direction,
    layout: Layout,
) -> Register {
    Register {
        offset,
        name,
        old_name,
        direction,
        layout,
    }
}

/// Every control register of both tables, in offset order (the config space
/// at [`CONFIG`] is not a control register and is not listed).
pub const REGISTERS: &[Register] = &[
    reg(MAGIC, "MagicValue", None, Direction::R, Layout::Both),
    reg(VERSION, "Version", None, Direction::R, Layout::Both),
    reg(DEVICE_ID, "DeviceID", None, Direction::R, Layout::Both),
    reg(VENDOR_ID, "VendorID", None, Direction::R, Layout::Both),
    reg(
        DEVICE_FEATURES,
        "DeviceFeatures",
        Some("HostFeatures"),
        Direction::R,
        Layout::Both,
    ),
    reg(
        DEVICE_FEATURES_SEL,
        "DeviceFeaturesSel",
        Some("HostFeaturesSel"),
        Direction::W,
        Layout::Both,
    ),
    reg(
        DRIVER_FEATURES,
        "DriverFeatures",
        Some("GuestFeatures"),
        Direction::W,
        Layout::Both,
    ),
    reg(
        DRIVER_FEATURES_SEL,
        "DriverFeaturesSel",
        Some("GuestFeaturesSel"),
        Direction::W,
        Layout::Both,
    ),
    reg(
        LEGACY_GUEST_PAGE_SIZE,
        "GuestPageSize",
        None,
        Direction::W,
        Layout::Legacy,
    ),
    reg(QUEUE_SEL, "QueueSel", None, Direction::W, Layout::Both),
    reg(
        QUEUE_SIZE_MAX,
        "QueueSizeMax",
        Some("QueueNumMax"),
        Direction::R,
        Layout::Both,
    ),
    reg(
        QUEUE_SIZE,
        "QueueSize",
        Some("QueueNum"),
        Direction::W,
        Layout::Both,
    ),
    reg(
        LEGACY_QUEUE_ALIGN,
        "QueueAlign",
        None,
        Direction::W,
        Layout::Legacy,
    ),
    reg(
        LEGACY_QUEUE_PFN,
        "QueuePFN",
        None,
        Direction::RW,
        Layout::Legacy,
    ),
    reg(
        QUEUE_READY,
        "QueueReady",
        None,
        Direction::RW,
        Layout::Modern,
    ),
    reg(
        QUEUE_NOTIFY,
        "QueueNotify",
        None,
        Direction::W,
        Layout::Both,
    ),
    reg(
        INTERRUPT_STATUS,
        "InterruptStatus",
        None,
        Direction::R,
        Layout::Both,
    ),
    reg(
        INTERRUPT_ACK,
        "InterruptACK",
        None,
        Direction::W,
        Layout::Both,
    ),
    reg(STATUS, "Status", None, Direction::RW, Layout::Both),
    reg(
        QUEUE_DESC_LOW,
        "QueueDescLow",
        None,
        Direction::W,
        Layout::Modern,
    ),
    reg(
        QUEUE_DESC_HIGH,
        "QueueDescHigh",
        None,
        Direction::W,
        Layout::Modern,
    ),
    reg(
        QUEUE_DRIVER_LOW,
        "QueueDriverLow",
        Some("QueueAvailLow"),
        Direction::W,
        Layout::Modern,
    ),
    reg(
        QUEUE_DRIVER_HIGH,
        "QueueDriverHigh",
        Some("QueueAvailHigh"),
        Direction::W,
        Layout::Modern,
    ),
    reg(
        QUEUE_DEVICE_LOW,
        "QueueDeviceLow",
        Some("QueueUsedLow"),
        Direction::W,
        Layout::Modern,
    ),
    reg(
        QUEUE_DEVICE_HIGH,
        "QueueDeviceHigh",
        Some("QueueUsedHigh"),
        Direction::W,
        Layout::Modern,
    ),
    reg(SHM_SEL, "SHMSel", None, Direction::W, Layout::Modern),
    reg(SHM_LEN_LOW, "SHMLenLow", None, Direction::R, Layout::Modern),
    reg(
        SHM_LEN_HIGH,
        "SHMLenHigh",
        None,
        Direction::R,
        Layout::Modern,
    ),
    reg(
        SHM_BASE_LOW,
        "SHMBaseLow",
        None,
        Direction::R,
        Layout::Modern,
    ),
    reg(
        SHM_BASE_HIGH,
        "SHMBaseHigh",
        None,
        Direction::R,
        Layout::Modern,
    ),
    reg(
        QUEUE_RESET,
        "QueueReset",
        None,
        Direction::RW,
        Layout::Modern,
    ),
    reg(
        CONFIG_GENERATION,
        "ConfigGeneration",
        None,
        Direction::R,
        Layout::Modern,
    ),
];

/// Looks up the control register at `offset`, or `None`.
pub fn register(offset: u64) -> Option<&'static Register> {
    REGISTERS.iter().find(|r| r.offset == offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_aligned_and_below_config() {
        for pair in REGISTERS.windows(2) {
            assert!(pair[0].offset < pair[1].offset, "{:?}", pair);
        }
        for r in REGISTERS {
            assert_eq!(r.offset % 4, 0, "{}", r.name);
            assert!(r.offset < CONFIG, "{}", r.name);
        }
        assert_eq!(REGISTERS.len(), 32);
    }

    #[test]
    fn magic_is_virt() {
        assert_eq!(&MAGIC_VALUE.to_le_bytes(), b"virt");
        assert_eq!(
            register(QUEUE_SIZE_MAX).unwrap().old_name,
            Some("QueueNumMax")
        );
        assert!(register(0x0f8).is_none());
    }
}
