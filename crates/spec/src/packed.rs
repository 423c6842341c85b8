//! Packed virtqueue layout (spec 2.8 "Packed Virtqueues"), shared by the
//! device-role and driver-role packed rings.

use crate::le::{Le16, Le32, Le64};

/// NEXT, WRITE and INDIRECT mean and weigh the same in both ring formats
/// (§2.8.1 reuses §2.7.5's flags): defined once, in [`crate::split`].
pub use crate::split::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
/// Descriptor flag bit 7: available.
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag bit 15: used.
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;

/// Event suppression flags value: notifications enabled.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags value: notifications disabled.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags value: notify at a specific descriptor
/// (with VIRTIO_F_EVENT_IDX).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;

/// Bit 15 of an encoded ring position (`desc_event_off`/`desc_event_wrap`
/// of an event suppression structure, `next_off`/`next_wrap` of
/// notification data): the wrap counter; bits 0..15 are the descriptor
/// index.
pub const WRAP_COUNTER_BIT: u16 = 1 << 15;

/// Largest packed queue, in descriptors (2.8: up to 2^15 entries).
pub const MAX_QUEUE_SIZE: u16 = 1 << 15;

/// Alignment of the descriptor ring in bytes (2.8.10.1).
pub const DESC_ALIGN: u64 = 16;

/// Alignment and size of each event suppression structure in bytes
/// (2.8.10.1).
pub const EVENT_ALIGN: u64 = 4;

/// Whether an event at encoded position `event` (index and wrap counter,
/// [`WRAP_COUNTER_BIT`]) was passed when a party moved from encoded
/// position `old` to `new` in a ring of `size` descriptors: the packed
/// form of the split ring's `vring_need_event` (2.8.10,
/// RING_EVENT_FLAGS_DESC). The two wrap counter values make a cycle of
/// `2 * size` positions; the event is due when it lies in `old..new` on
/// that cycle. Indexes at or above `size` are taken modulo the cycle.
pub const fn need_event(event: u16, new: u16, old: u16, size: u16) -> bool {
    let size = if size == 0 { 1 } else { size as u32 };
    let m = 2 * size;
    let (e, n, o) = (linear(event, size), linear(new, size), linear(old, size));
    // All three below m <= 2^16: no overflow.
    (n + 2 * m - e - 1) % m < (n + m - o) % m
}

/// Encoded position `v` on the cycle of `2 * size` positions: walking the
/// ring adds 1 modulo `2 * size` (counters start at 1).
const fn linear(v: u16, size: u32) -> u32 {
    let lap = if v & WRAP_COUNTER_BIT != 0 { 0 } else { size };
    ((v & !WRAP_COUNTER_BIT) as u32 + lap) % (2 * size)
}

/// One packed descriptor (`struct pvirtq_desc`, 16 bytes, alignment 16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: Le64,
    /// Length in bytes.
    pub len: Le32,
    /// Buffer ID.
    pub id: Le16,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: Le16,
}

/// Event suppression structure (`struct pvirtq_event_suppress`, 4 bytes,
/// alignment 4): the driver and device areas of a packed queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EventSuppress {
    /// Bits 0..15: descriptor ring offset; bit 15: wrap counter.
    pub desc: Le16,
    /// Bits 0..2: one of the `RING_EVENT_FLAGS_*` values.
    pub flags: Le16,
}

#[cfg(test)]
mod tests {
    #[test]
    fn need_event_window_across_the_wrap() {
        // Ring of 8, moved from 6 (wrap 1) to 2 (wrap 0).
        let (old, new) = (0x8006, 0x0002);
        for (event, due) in [
            (0x8006, true),
            (0x8007, true),
            (0x0000, true),
            (0x0001, true),
        ] {
            assert_eq!(super::need_event(event, new, old, 8), due);
        }
        for event in [0x0002, 0x8005, 0x8000, 0x0007] {
            assert!(!super::need_event(event, new, old, 8));
        }
        assert!(!super::need_event(0x8000, 0x8000, 0x8000, 8));
    }

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<super::Descriptor>(), 16);
        assert_eq!(core::mem::size_of::<super::EventSuppress>(), 4);
    }
}
