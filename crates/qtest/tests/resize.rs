//! QEMU resizes its own `virtio-blk-device` (`block_resize` over QMP) while
//! our block driver runs: the driver gets the configuration change
//! interrupt and `refresh_capacity` reads the new capacity (virtio v1.4
//! §2.5, §5.2.4; on Version 2, inside a `ConfigGeneration` check against
//! QEMU's real generation counter).

mod common;

use std::time::Duration;

use common::{both_modes, start, wait_until};
use serde_json::json;
use vmmio_driver::blk::{Block, SECTOR_SIZE};
use vmmio_qtest::{Device, Mode, RingFeatures};

const BEFORE: u64 = 1 << 20;
const AFTER: u64 = 3 << 20;

fn block_resize_reaches_refresh_capacity(mode: Mode) {
    let qemu = start(
        mode,
        RingFeatures::default(),
        &[Device::Block {
            size_bytes: BEFORE,
            serial: None,
        }],
    );
    let mut blk = Block::new(qemu.transport(0), qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: block init failed: {e}; {}", qemu.stderr()));
    assert_eq!(blk.capacity(), BEFORE / SECTOR_SIZE as u64);
    let mut qmp = qemu
        .qmp(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{mode:?}: QMP: {e}; {}", qemu.stderr()));
    qmp.execute("block_resize", json!({ "device": "d0", "size": AFTER }))
        .unwrap_or_else(|e| panic!("{mode:?}: block_resize: {e}"));
    // QEMU applies the change from a bottom half: wait for its interrupt.
    let mut changed = false;
    assert!(
        wait_until(|| {
            changed |= blk
                .handle_interrupt()
                .expect("InterruptStatus")
                .config_changed;
            changed
        }),
        "{mode:?}: no configuration change interrupt after block_resize"
    );
    assert_eq!(
        blk.refresh_capacity().expect("refresh_capacity"),
        AFTER / SECTOR_SIZE as u64,
        "{mode:?}"
    );
    // The new last sector is readable.
    let mut last = [0xffu8; SECTOR_SIZE];
    blk.read_blocks(AFTER / SECTOR_SIZE as u64 - 1, &mut last)
        .unwrap_or_else(|e| panic!("{mode:?}: read the new last sector: {e}"));
    assert_eq!(last, [0u8; SECTOR_SIZE]);
}
both_modes!(block_resize_reaches_refresh_capacity);
