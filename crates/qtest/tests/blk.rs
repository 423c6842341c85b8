//! Our block driver against QEMU's `virtio-blk-device` on a temporary raw
//! image: random sectors written and read back, the image file checked
//! byte for byte, flush, GET_ID, capacity; with each ring feature
//! (EVENT_IDX, INDIRECT_DESC) offered or not by QEMU, and masked by the
//! driver.

mod common;

use common::{both_modes, start, Xorshift};
use vmmio_driver::blk::{Block, ID_BYTES, MAX_TRANSFER, SECTOR_SIZE};
use vmmio_qtest::{Device, Mode, RingFeatures};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};

/// Image size in bytes: 2048 sectors.
const IMAGE_BYTES: u64 = 1 << 20;
/// The serial number QEMU returns for GET_ID (at most 20 bytes).
const SERIAL: &str = "vmmio-qtest-disk0";

/// Runs the whole block scenario: QEMU offers `offer`; the driver accepts
/// the ring features in `accept` (a mask of transport feature bits).
fn block_roundtrip(mode: Mode, offer: RingFeatures, accept: u64) {
    let qemu = start(
        mode,
        offer,
        &[Device::Block {
            size_bytes: IMAGE_BYTES,
            serial: Some(SERIAL.into()),
        }],
    );
    let mut transport = qemu.transport(0);
    transport.set_transport_features(accept);
    let mut blk = Block::new(transport, qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: block init failed: {e}; {}", qemu.stderr()));

    let t = blk.transport();
    assert_eq!(
        t.has_feature(VIRTIO_F_EVENT_IDX),
        offer.event_idx && accept & bit(VIRTIO_F_EVENT_IDX) != 0,
        "{mode:?}: EVENT_IDX negotiation"
    );
    assert_eq!(
        t.has_feature(VIRTIO_F_INDIRECT_DESC),
        offer.indirect_desc && accept & bit(VIRTIO_F_INDIRECT_DESC) != 0,
        "{mode:?}: INDIRECT_DESC negotiation"
    );
    assert_eq!(blk.capacity(), IMAGE_BYTES / SECTOR_SIZE as u64);
    assert!(!blk.read_only());

    let image_len = usize::try_from(IMAGE_BYTES).expect("1 MiB fits usize");
    let mut model = vec![0u8; image_len];
    let mut rng = Xorshift::new(0x5eed_0000 + IMAGE_BYTES);
    let sectors = blk.capacity();
    // Small random writes, each read back at once.
    for _ in 0..24 {
        let count = 1 + rng.below(16);
        let sector = rng.below(sectors - count + 1);
        let mut data = vec![0u8; usize::try_from(count).expect("small") * SECTOR_SIZE];
        rng.fill(&mut data);
        blk.write_blocks(sector, &data)
            .unwrap_or_else(|e| panic!("{mode:?}: write {count} at {sector}: {e}"));
        let at = usize::try_from(sector).expect("small") * SECTOR_SIZE;
        model[at..at + data.len()].copy_from_slice(&data);
        let mut back = vec![0u8; data.len()];
        blk.read_blocks(sector, &mut back)
            .unwrap_or_else(|e| panic!("{mode:?}: read {count} at {sector}: {e}"));
        assert!(
            back == data,
            "{mode:?}: sectors {sector}+{count} read back differ"
        );
    }
    // One transfer larger than the driver's per-request maximum, ending at
    // the last sector.
    let mut big = vec![0u8; MAX_TRANSFER + 32 * SECTOR_SIZE];
    rng.fill(&mut big);
    let big_sectors = (big.len() / SECTOR_SIZE) as u64;
    let big_sector = sectors - big_sectors;
    blk.write_blocks(big_sector, &big)
        .unwrap_or_else(|e| panic!("{mode:?}: large write: {e}"));
    let at = usize::try_from(big_sector).expect("small") * SECTOR_SIZE;
    model[at..].copy_from_slice(&big);
    blk.flush()
        .unwrap_or_else(|e| panic!("{mode:?}: flush: {e}"));

    // The whole device read back through the driver, then the image file
    // read directly: both hold what was written.
    let mut whole = vec![0u8; image_len];
    blk.read_blocks(0, &mut whole)
        .unwrap_or_else(|e| panic!("{mode:?}: whole-disk read: {e}"));
    assert_same(mode, "device", &whole, &model);
    let file = std::fs::read(qemu.image(0)).expect("image readable");
    assert_same(mode, "image file", &file, &model);

    // Out of range is refused before anything is sent.
    let mut one = [0u8; SECTOR_SIZE];
    assert!(blk.read_blocks(sectors, &mut one).is_err());

    // GET_ID: QEMU writes the serial and its NUL terminator, nothing more
    // (virtio v1.4 §5.2.6: the string is NUL-terminated when shorter than
    // 20 bytes); compare that much here, the padding in
    // `block_get_id_pads_with_zeros`.
    let id = blk
        .get_id()
        .unwrap_or_else(|e| panic!("{mode:?}: get_id: {e}"));
    let terminated = [SERIAL.as_bytes(), &[0]].concat();
    assert_eq!(
        &id[..terminated.len()],
        &terminated[..],
        "{mode:?}: GET_ID {id:?}"
    );
}

/// A block device with serial `serial` whose data buffer already held
/// sector data: GET_ID returns the serial padded with zeros, as
/// `Block::get_id` documents ("20 bytes, NUL-padded").
fn block_get_id_pads_with_zeros(mode: Mode) {
    let serial = "short";
    let qemu = start(
        mode,
        RingFeatures::default(),
        &[Device::Block {
            size_bytes: IMAGE_BYTES,
            serial: Some(serial.into()),
        }],
    );
    let mut blk = Block::new(qemu.transport(0), qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: block init failed: {e}"));
    let mut data = vec![0xa5u8; 4 * SECTOR_SIZE];
    blk.write_blocks(0, &data)
        .unwrap_or_else(|e| panic!("{mode:?}: write: {e}"));
    blk.read_blocks(0, &mut data)
        .unwrap_or_else(|e| panic!("{mode:?}: read: {e}"));
    let id = blk
        .get_id()
        .unwrap_or_else(|e| panic!("{mode:?}: get_id: {e}"));
    let mut want = [0u8; ID_BYTES];
    want[..serial.len()].copy_from_slice(serial.as_bytes());
    assert_eq!(id, want, "{mode:?}: GET_ID");
}

/// A serial of exactly 20 bytes comes back whole, without terminator.
fn block_get_id_of_twenty_bytes(mode: Mode) {
    let serial = "ABCDEFGHIJ0123456789";
    assert_eq!(serial.len(), ID_BYTES);
    let qemu = start(
        mode,
        RingFeatures::default(),
        &[Device::Block {
            size_bytes: IMAGE_BYTES,
            serial: Some(serial.into()),
        }],
    );
    let mut blk = Block::new(qemu.transport(0), qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: block init failed: {e}"));
    let id = blk
        .get_id()
        .unwrap_or_else(|e| panic!("{mode:?}: get_id: {e}"));
    assert_eq!(&id[..], serial.as_bytes(), "{mode:?}: GET_ID");
}

fn assert_same(mode: Mode, what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{mode:?}: {what} length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{mode:?}: {what} differs first at byte {i} (sector {}): {:#04x} != {:#04x}",
            i / SECTOR_SIZE,
            got[i],
            want[i]
        );
    }
}

const ALL: u64 = u64::MAX;
const fn offer(event_idx: bool, indirect_desc: bool) -> RingFeatures {
    RingFeatures {
        event_idx,
        indirect_desc,
        queue_reset: true,
        packed: false,
    }
}

fn block_with_event_idx_and_indirect(mode: Mode) {
    block_roundtrip(mode, offer(true, true), ALL);
}

fn block_with_event_idx_only(mode: Mode) {
    block_roundtrip(mode, offer(true, false), ALL);
}

fn block_with_indirect_only(mode: Mode) {
    block_roundtrip(mode, offer(false, true), ALL);
}

fn block_without_ring_features(mode: Mode) {
    block_roundtrip(mode, offer(false, false), ALL);
}

fn block_driver_declines_offered_ring_features(mode: Mode) {
    block_roundtrip(mode, offer(true, true), 0);
}

both_modes!(block_with_event_idx_and_indirect);
both_modes!(block_get_id_pads_with_zeros);
both_modes!(block_get_id_of_twenty_bytes);
both_modes!(block_with_event_idx_only);
both_modes!(block_with_indirect_only);
both_modes!(block_without_ring_features);
both_modes!(block_driver_declines_offered_ring_features);
