//! Split virtqueue layout (spec 2.7 "Split Virtqueues").
//!
//! A split queue of size `n` (a power of two, at most 32768) has three
//! areas: the descriptor table (`16 * n` bytes, alignment 16), the driver
//! area or available ring (`6 + 2 * n` bytes, alignment 2) and the device
//! area or used ring (`6 + 8 * n` bytes, alignment 4). Version 2 places
//! them independently; legacy Version 1 places them contiguously in one
//! region (see [`legacy_layout`]).

use crate::le::{Le16, Le32, Le64};

/// Largest queue size a split ring may have (2.7 "Queue Size").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptor flag: the buffer continues in the `next` field.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Available ring flag: the driver asks for no used-buffer notifications
/// (ignored with VIRTIO_F_EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks for no driver notifications (ignored
/// with VIRTIO_F_EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Alignment in bytes of the descriptor table.
pub const DESC_ALIGN: u64 = 16;
/// Alignment in bytes of the available ring.
pub const AVAIL_ALIGN: u64 = 2;
/// Alignment in bytes of the used ring.
pub const USED_ALIGN: u64 = 4;

/// One descriptor (`struct virtq_desc`, 16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: Le64,
    /// Length of the buffer in bytes.
    pub len: Le32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: Le16,
    /// Index of the next descriptor when `VIRTQ_DESC_F_NEXT` is set.
    pub next: Le16,
}

/// Size in bytes of a [`Descriptor`].
pub const DESC_SIZE: u64 = 16;

/// One used ring element (`struct virtq_used_elem`, 8 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UsedElem {
    /// Index of the head descriptor of the used chain (u32 for padding).
    pub id: Le32,
    /// Bytes written into the device-writable part of the chain.
    pub len: Le32,
}

/// Size in bytes of a [`UsedElem`].
pub const USED_ELEM_SIZE: u64 = 8;

/// Byte offsets inside the available ring (`struct virtq_avail`).
pub mod avail {
    /// `flags` (u16).
    pub const FLAGS: u64 = 0;
    /// `idx` (u16): where the driver puts the next entry, modulo size.
    pub const IDX: u64 = 2;
    /// `ring[0]` (u16 each).
    pub const RING: u64 = 4;
    /// Offset of `ring[i]`.
    pub const fn ring(i: u16) -> u64 {
        RING + 2 * i as u64
    }
    /// Offset of `used_event` (after `ring[size]`), with EVENT_IDX.
    pub const fn used_event(size: u16) -> u64 {
        RING + 2 * size as u64
    }
    /// Total size in bytes, including `used_event`.
    pub const fn size(size: u16) -> u64 {
        6 + 2 * size as u64
    }
}

/// Byte offsets inside the used ring (`struct virtq_used`).
pub mod used {
    /// `flags` (u16).
    pub const FLAGS: u64 = 0;
    /// `idx` (u16): where the device puts the next entry, modulo size.
    pub const IDX: u64 = 2;
    /// `ring[0]` (8 bytes each).
    pub const RING: u64 = 4;
    /// Offset of `ring[i]`.
    pub const fn ring(i: u16) -> u64 {
        RING + 8 * i as u64
    }
    /// Offset of `avail_event` (after `ring[size]`), with EVENT_IDX.
    pub const fn avail_event(size: u16) -> u64 {
        RING + 8 * size as u64
    }
    /// Total size in bytes, including `avail_event`.
    pub const fn size(size: u16) -> u64 {
        6 + 8 * size as u64
    }
}

/// Size in bytes of the descriptor table of a queue of `size` entries.
pub const fn desc_table_size(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// `vring_need_event` (2.7.10): whether a party that published index
/// `new_idx` after `old_idx` must notify a peer that asked to be notified
/// at `event_idx`. Wrap-safe: all arithmetic is modulo 2^16.
pub const fn need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old_idx)
}

/// Guest-physical addresses of the three areas of a legacy queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyLayout {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring (right after the table).
    pub avail: u64,
    /// Used ring (at the next multiple of `QueueAlign`).
    pub used: u64,
    /// Total bytes from `desc` to the end of the used ring.
    pub total: u64,
}

/// The legacy contiguous layout (4.2.4, 2.7 "Legacy Interfaces"): the
/// descriptor table at `base`, the available ring right after it, the used
/// ring at the next multiple of `align` bytes. Returns `None` when `align`
/// is not a power of two or an address overflows.
pub const fn legacy_layout(base: u64, size: u16, align: u64) -> Option<LegacyLayout> {
    if align == 0 || !align.is_power_of_two() {
        return None;
    }
    let desc = base;
    let avail = match desc.checked_add(desc_table_size(size)) {
        Some(a) => a,
        None => return None,
    };
    let avail_end = match avail.checked_add(avail::size(size)) {
        Some(a) => a,
        None => return None,
    };
    let used = match avail_end.checked_add(align - 1) {
        Some(a) => a & !(align - 1),
        None => return None,
    };
    let end = match used.checked_add(used::size(size)) {
        Some(e) => e,
        None => return None,
    };
    Some(LegacyLayout {
        desc,
        avail,
        used,
        total: end - base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<Descriptor>() as u64, DESC_SIZE);
        assert_eq!(core::mem::size_of::<UsedElem>() as u64, USED_ELEM_SIZE);
        assert_eq!(avail::size(256), 518);
        assert_eq!(used::size(256), 2054);
        assert_eq!(used::avail_event(4), 36);
    }

    #[test]
    fn need_event_wraps() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(0xffff, 0, 0xfffe));
        assert!(need_event(0xfffe, 2, 0xfff0));
        assert!(!need_event(5, 2, 0xfff0));
    }

    #[test]
    fn legacy_layout_matches_linux() {
        // vring_size(256, 4096) in Linux is 10240 (desc 4096 + avail 518 ->
        // pad to 8192 + used 2054).
        let l = legacy_layout(0x1000, 256, 4096).unwrap();
        assert_eq!(l.avail, 0x1000 + 4096);
        assert_eq!(l.used, 0x1000 + 8192);
        assert_eq!(l.total, 8192 + 2054);
        assert!(legacy_layout(u64::MAX - 10, 256, 4096).is_none());
        assert!(legacy_layout(0, 256, 3).is_none());
    }
}
