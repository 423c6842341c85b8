//! Discovery against QEMU: a kernel-style command line naming every
//! `microvm` slot, parsed by our driver's discovery code, each window
//! probed by our driver, finds exactly the devices on QEMU's command line.

mod common;

use common::{both_modes, start};
use vmmio_driver::discovery::cmdline_devices;
use vmmio_driver::{Transport, Version};
use vmmio_qtest::qemu::{slot_base, MICROVM_SLOTS, MICROVM_SLOT_STRIDE};
use vmmio_qtest::{qtest_limits, Device, Mode, QtestWindow, RingFeatures};

/// QEMU's VendorID, "QEMU" in little-endian ASCII.
const VENDOR_QEMU: u32 = 0x554d_4551;

fn discovery_finds_exactly_the_command_line_devices(mode: Mode) {
    let devices = [
        Device::Block {
            size_bytes: 1 << 20,
            serial: None,
        },
        Device::Rng,
        Device::Console,
    ];
    let qemu = start(mode, RingFeatures::default(), &devices);
    // The interrupt numbers are placeholders: this test only probes.
    let cmdline: Vec<String> = (0..MICROVM_SLOTS)
        .map(|s| {
            format!(
                "virtio_mmio.device={MICROVM_SLOT_STRIDE}@{:#x}:{}",
                slot_base(s),
                s + 1
            )
        })
        .collect();
    let cmdline = format!("console=ttyS0 {}", cmdline.join(" "));
    let windows: Vec<_> = cmdline_devices(&cmdline)
        .collect::<Result<_, _>>()
        .expect("our own command line parses");
    assert_eq!(windows.len(), MICROVM_SLOTS);

    let want_version = match mode {
        Mode::Legacy => Version::Legacy,
        Mode::Modern => Version::Modern,
    };
    let mut found = Vec::new();
    for w in &windows {
        assert_eq!(w.size, MICROVM_SLOT_STRIDE);
        let io = QtestWindow::new(qemu.client(), w.base);
        match Transport::probe_with_limits(io, qtest_limits()) {
            Ok(Some(t)) => {
                assert_eq!(t.version(), want_version, "window {:#x}", w.base);
                assert_eq!(t.vendor_id(), VENDOR_QEMU, "window {:#x}", w.base);
                found.push((w.base, t.device_id()));
            }
            Ok(None) => {}
            Err(e) => panic!("{mode:?}: probe of {:#x} failed: {e}", w.base),
        }
    }
    let mut expected: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (qemu.window_of(i), d.device_id()))
        .collect();
    expected.sort_unstable();
    found.sort_unstable();
    assert_eq!(found, expected, "{mode:?}: (window, DeviceID) pairs");
}

both_modes!(discovery_finds_exactly_the_command_line_devices);
