//! Our driver on packed rings (VIRTIO_F_RING_PACKED, virtio v1.4 §2.8)
//! against QEMU's devices with `packed=on` (Version 2 only: packed rings
//! need VIRTIO_F_VERSION_1): block, entropy and console, with EVENT_IDX and
//! INDIRECT_DESC each offered or not.

mod common;

use common::{both_modes, start, wait_until, Xorshift};
use vmmio_driver::blk::{Block, SECTOR_SIZE};
use vmmio_driver::console::Console;
use vmmio_driver::rng::Entropy;
use vmmio_driver::Transport;
use vmmio_qtest::{Device, Mode, QtestWindow, RingFeatures};
use vmmio_spec::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED};

/// Image size in bytes: 256 sectors.
const IMAGE_BYTES: u64 = 128 << 10;

/// The four offers: (EVENT_IDX, INDIRECT_DESC), packed on.
fn offers() -> [RingFeatures; 4] {
    [(false, false), (true, false), (false, true), (true, true)].map(|(event_idx, indirect)| {
        RingFeatures {
            event_idx,
            indirect_desc: indirect,
            queue_reset: false,
            packed: true,
        }
    })
}

/// Lets the driver accept packed rings, and checks what was negotiated.
fn accept_packed(t: &mut Transport<QtestWindow>) {
    t.set_transport_features(u64::MAX);
}

fn check(t: &Transport<QtestWindow>, ring: RingFeatures) {
    check_in(t, ring, Mode::Modern);
}

/// A legacy window offers bits 0..32 only: QEMU's `packed=on` does not
/// reach it, and the rings stay split.
fn check_in(t: &Transport<QtestWindow>, ring: RingFeatures, mode: Mode) {
    assert_eq!(
        t.has_feature(VIRTIO_F_RING_PACKED),
        mode == Mode::Modern,
        "{mode:?} {ring:?}"
    );
    assert_eq!(
        t.has_feature(VIRTIO_F_EVENT_IDX),
        ring.event_idx,
        "{ring:?}"
    );
    assert_eq!(
        t.has_feature(VIRTIO_F_INDIRECT_DESC),
        ring.indirect_desc,
        "{ring:?}"
    );
}

#[test]
fn block_on_packed_rings() {
    for ring in offers() {
        let qemu = start(
            Mode::Modern,
            ring,
            &[Device::Block {
                size_bytes: IMAGE_BYTES,
                serial: None,
            }],
        );
        let mut t = qemu.transport(0);
        accept_packed(&mut t);
        let mut blk = Block::new(t, qemu.hal())
            .unwrap_or_else(|e| panic!("{ring:?}: block init failed: {e}; {}", qemu.stderr()));
        check(blk.transport(), ring);
        let mut rng = Xorshift::new(0x9ac4ed);
        let mut model = vec![0u8; IMAGE_BYTES as usize];
        // More requests than the ring has descriptors: the wrap counters
        // flip (QEMU's QueueSizeMax is 1024; 3 descriptors per request
        // without INDIRECT_DESC).
        for _ in 0..800 {
            let count = 1 + rng.below(8);
            let sector = rng.below(IMAGE_BYTES / SECTOR_SIZE as u64 - count + 1);
            let mut data = vec![0u8; count as usize * SECTOR_SIZE];
            rng.fill(&mut data);
            blk.write_blocks(sector, &data)
                .unwrap_or_else(|e| panic!("{ring:?}: write: {e}"));
            let at = sector as usize * SECTOR_SIZE;
            model[at..at + data.len()].copy_from_slice(&data);
            let mut back = vec![0u8; data.len()];
            blk.read_blocks(sector, &mut back)
                .unwrap_or_else(|e| panic!("{ring:?}: read: {e}"));
            assert!(back == data, "{ring:?}: read back differs");
        }
        blk.flush()
            .unwrap_or_else(|e| panic!("{ring:?}: flush: {e}"));
        let file = std::fs::read(qemu.image(0)).expect("image readable");
        assert!(file == model, "{ring:?}: image file differs");
    }
}

fn entropy_on_packed_rings(mode: Mode) {
    for ring in offers() {
        let qemu = start(mode, ring, &[Device::Rng]);
        let mut t = qemu.transport(0);
        accept_packed(&mut t);
        let mut rng = Entropy::new(t, qemu.hal())
            .unwrap_or_else(|e| panic!("{ring:?}: entropy init failed: {e}; {}", qemu.stderr()));
        check_in(rng.transport(), ring, mode);
        let mut a = [0u8; 512];
        let mut b = [0u8; 512];
        rng.fill(&mut a)
            .unwrap_or_else(|e| panic!("{ring:?}: fill: {e}"));
        rng.fill(&mut b)
            .unwrap_or_else(|e| panic!("{ring:?}: fill: {e}"));
        assert_ne!(a, b, "{ring:?}");
    }
}

both_modes!(entropy_on_packed_rings);

#[test]
fn console_on_packed_rings() {
    for ring in offers() {
        let qemu = start(Mode::Modern, ring, &[Device::Console]);
        let mut t = qemu.transport(0);
        accept_packed(&mut t);
        let mut console = Console::new(t, qemu.hal())
            .unwrap_or_else(|e| panic!("{ring:?}: console init failed: {e}; {}", qemu.stderr()));
        check(console.transport(), ring);
        let expected: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        console
            .write(&expected)
            .unwrap_or_else(|e| panic!("{ring:?}: write: {e}"));
        let path = qemu.console_output(0).to_path_buf();
        let mut got = Vec::new();
        let arrived = wait_until(|| {
            got = std::fs::read(&path).unwrap_or_default();
            got.len() >= expected.len()
        });
        assert!(arrived && got == expected, "{ring:?}: {} bytes", got.len());
    }
}

#[test]
fn packed_offered_but_not_allowed_by_the_driver_stays_split() {
    let ring = offers()[3];
    let qemu = start(Mode::Modern, ring, &[Device::Rng]);
    // The default transport features leave RING_PACKED out.
    let mut rng = Entropy::new(qemu.transport(0), qemu.hal()).expect("entropy");
    assert!(!rng.transport().has_feature(VIRTIO_F_RING_PACKED));
    let mut a = [0u8; 64];
    rng.fill(&mut a).expect("fill");
}
