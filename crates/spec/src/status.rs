//! Device status bits (spec 2.1 "Device Status Field").
//!
//! The `Status` register (MMIO offset 0x070) holds these bits. The driver
//! sets them in the order of 3.1.1; writing 0 resets the device.

/// The guest OS has found the device and recognized it as a virtio device.
pub const ACKNOWLEDGE: u32 = 1;
/// The guest OS knows how to drive the device.
pub const DRIVER: u32 = 2;
/// The driver is set up and ready to drive the device.
pub const DRIVER_OK: u32 = 4;
/// The driver has acknowledged the features it understands; negotiation is
/// complete (not used by legacy Version 1 devices).
pub const FEATURES_OK: u32 = 8;
/// The device has been suspended (only with VIRTIO_F_SUSPEND).
pub const SUSPEND: u32 = 16;
/// The device has experienced an error from which it can't recover; set by
/// the device only.
pub const DEVICE_NEEDS_RESET: u32 = 64;
/// The driver has given up on the device; set by the driver only.
pub const FAILED: u32 = 128;

/// Every bit a driver may write to `Status`.
pub const DRIVER_WRITABLE: u32 = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | SUSPEND | FAILED;
