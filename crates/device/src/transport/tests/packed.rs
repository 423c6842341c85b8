//! VIRTIO_F_RING_PACKED in the register file: who offers it, and the
//! packed queues handed to the device (virtio v1.4 §2.8, §4.2.2).

use super::*;

fn ring_packed() -> u64 {
    bit(features::VIRTIO_F_RING_PACKED)
}

#[test]
fn ring_packed_offered_by_modern_window_when_device_offers_it() {
    let mut h = harness_with(TransportVersion::Modern, |d| d.features |= ring_packed());
    assert_ne!(h.read_device_features() & ring_packed(), 0);
    // Not offered by default otherwise.
    let mut h = modern();
    assert_eq!(h.read_device_features() & ring_packed(), 0);
}

#[test]
fn ring_packed_offered_when_window_allows_it_and_survives_reset() {
    let mut h = modern();
    h.t.set_packed_ring(true);
    assert_ne!(h.read_device_features() & ring_packed(), 0);
    h.w(mmio::STATUS, 0);
    assert_ne!(h.read_device_features() & ring_packed(), 0);
    h.t.set_packed_ring(false);
    assert_eq!(h.read_device_features() & ring_packed(), 0);
}

#[test]
fn legacy_window_never_offers_ring_packed() {
    let mut h = harness_with(TransportVersion::Legacy, |d| d.features |= ring_packed());
    h.t.set_packed_ring(true);
    assert_eq!(h.read_device_features() & ring_packed(), 0);
}

#[test]
fn negotiated_ring_packed_hands_packed_queues_at_driver_ok() {
    let mut h = modern();
    h.t.set_packed_ring(true);
    h.linux_v2_until_features_ok(all_modern_bits());
    // Packed sizes need not be powers of two (§2.8.10.1); the driver and
    // device areas are 4-byte structures.
    h.program_queue(0, 100, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
    h.program_queue(1, 64, 0x2_0000);
    h.w(mmio::QUEUE_READY, 1);
    h.add_status(DRIVER_OK);
    assert!(h.t.is_activated());
    assert_ne!(h.t.negotiated_features() & ring_packed(), 0);
    assert_eq!(h.rec().activated_packed, vec![true, true]);
    assert_eq!(h.rec().activated_queues[0].1, 100);
}

#[test]
fn ring_packed_offered_but_not_accepted_gives_split_queues() {
    let mut h = modern();
    h.t.set_packed_ring(true);
    h.linux_v2_probe(all_modern_bits() & !ring_packed());
    assert!(h.t.is_activated());
    assert_eq!(h.rec().activated_packed, vec![false, false]);
}

#[test]
fn packed_queue_with_misaligned_or_outside_area_is_not_enabled() {
    let mut h = modern();
    h.t.set_packed_ring(true);
    h.linux_v2_until_features_ok(all_modern_bits());
    h.program_queue(0, 64, 0x1_0000);
    // Driver event suppression area at a 2-byte boundary (§2.8.10.1: 4).
    h.w(mmio::QUEUE_DRIVER_LOW, 0x1_1002);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    // Device area past the end of guest memory.
    h.program_queue(0, 64, 0x1_0000);
    h.w(mmio::QUEUE_DEVICE_LOW, (MEM_SIZE - 2) as u32 & !3);
    h.w(mmio::QUEUE_DEVICE_LOW, MEM_SIZE as u32);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    // A split ring of 100 elements would be refused; packed takes it.
    h.program_queue(0, 100, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
}
