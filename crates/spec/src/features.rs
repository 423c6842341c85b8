//! Reserved feature bits (spec chapter 6 "Reserved Feature Bits").
//!
//! Each constant is a bit *number* (0..=63 and beyond); use [`bit`] to get
//! the mask in a 64-bit feature word. Bits 0..=23 belong to the device type,
//! 24..=41 and 50..=127 to the transport and queue (chapter 6).

/// Returns the mask of feature bit `n` in a 64-bit feature word, or 0 when
/// `n >= 64`.
pub const fn bit(n: u32) -> u64 {
    if n < 64 {
        1u64 << n
    } else {
        0
    }
}

/// Indirect descriptors (2.7.5.3).
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
/// `used_event` / `avail_event` notification suppression (2.7.7, 2.7.10).
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
/// Compliance with virtio 1.x (as opposed to legacy).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// The device accesses memory through a platform IOMMU or translation.
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
/// Packed virtqueue layout (2.8).
pub const VIRTIO_F_RING_PACKED: u32 = 34;
/// Buffers are used in the order they were made available.
pub const VIRTIO_F_IN_ORDER: u32 = 35;
/// Memory accesses are ordered as the platform orders them.
pub const VIRTIO_F_ORDER_PLATFORM: u32 = 36;
/// Single-root I/O virtualization (PCI only).
pub const VIRTIO_F_SR_IOV: u32 = 37;
/// The driver passes extra data with its notifications (2.9).
pub const VIRTIO_F_NOTIFICATION_DATA: u32 = 38;
/// The device supplies notification config data (PCI only).
pub const VIRTIO_F_NOTIF_CONFIG_DATA: u32 = 39;
/// The driver can reset a queue individually (2.6.1, `QueueReset`).
pub const VIRTIO_F_RING_RESET: u32 = 40;
/// Administration virtqueues.
pub const VIRTIO_F_ADMIN_VQ: u32 = 41;
/// The driver can suspend the device (status bit SUSPEND).
pub const VIRTIO_F_SUSPEND: u32 = 43;

/// Legacy only: the device notifies even when suppressed if the ring runs
/// empty (bit 24).
pub const VIRTIO_F_NOTIFY_ON_EMPTY: u32 = 24;
/// Legacy only: "any layout" of descriptors (bit 27).
pub const VIRTIO_F_ANY_LAYOUT: u32 = 27;

/// Feature bits of 32-bit feature page `page` of the 64-bit word `features`
/// (`DeviceFeaturesSel` / `DriverFeaturesSel` = `page`); 0 past bit 63.
pub const fn page(features: u64, page: u32) -> u32 {
    match page {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_and_page() {
        assert_eq!(bit(VIRTIO_F_VERSION_1), 1 << 32);
        assert_eq!(bit(64), 0);
        let f = bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_RING_RESET);
        assert_eq!(page(f, 0), 1 << 29);
        assert_eq!(page(f, 1), 1 << 8);
        assert_eq!(page(f, 2), 0);
        assert_eq!(page(u64::MAX, u32::MAX), 0);
    }
}
