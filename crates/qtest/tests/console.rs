//! Our console driver against QEMU's `virtio-serial-device` with a
//! `virtconsole` on a file chardev: bytes written through the driver
//! arrive in the file.
//!
//! QEMU's device offers VIRTIO_CONSOLE_F_MULTIPORT; our driver does not
//! accept it, so QEMU treats port 0 (where `virtconsole` sits) as the
//! console on queues 0 and 1 and marks it open once DRIVER_OK is set.

mod common;

use common::{both_modes, start, wait_until};
use vmmio_driver::console::Console;
use vmmio_qtest::{Device, Mode, RingFeatures};

/// VIRTIO_CONSOLE_F_MULTIPORT (virtio v1.4 §5.3.3).
const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;

fn console_output_reaches_the_chardev(mode: Mode) {
    let qemu = start(mode, RingFeatures::default(), &[Device::Console]);
    let mut console = Console::new(qemu.transport(0), qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: console init failed: {e}; {}", qemu.stderr()));
    assert!(!console.transport().has_feature(VIRTIO_CONSOLE_F_MULTIPORT));

    let mut expected = b"hello from vmmio over qtest\n".to_vec();
    console
        .write(&expected)
        .unwrap_or_else(|e| panic!("{mode:?}: write: {e}"));
    // More than one 4096-byte chunk.
    let long: Vec<u8> = (0..10_000u32)
        .map(|i| b"0123456789abcdef\n"[usize::try_from(i % 17).expect("small")])
        .collect();
    console
        .write(&long)
        .unwrap_or_else(|e| panic!("{mode:?}: long write: {e}"));
    expected.extend_from_slice(&long);

    let path = qemu.console_output(0).to_path_buf();
    let mut got = Vec::new();
    let arrived = wait_until(|| {
        got = std::fs::read(&path).unwrap_or_default();
        got.len() >= expected.len()
    });
    assert!(
        arrived,
        "{mode:?}: {} of {} bytes arrived; QEMU stderr: {}",
        got.len(),
        expected.len(),
        qemu.stderr()
    );
    assert!(got == expected, "{mode:?}: console output differs");
}

both_modes!(console_output_reaches_the_chardev);
