//! Packed virtqueue layout (spec 2.8 "Packed Virtqueues").
//!
//! Facts only: vmmio's queues are split rings today; these types let a
//! future packed implementation and tests share one definition.

use crate::le::{Le16, Le32, Le64};

/// Descriptor flag: the buffer continues in the next descriptor.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
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
    fn sizes() {
        assert_eq!(core::mem::size_of::<super::Descriptor>(), 16);
        assert_eq!(core::mem::size_of::<super::EventSuppress>(), 4);
    }
}
