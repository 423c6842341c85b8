//! Raw-register smoke tests of the harness, independent of our driver:
//! every `microvm` slot probed by hand with qtest loads, and one entropy
//! request driven by hand through shared guest RAM.

use std::time::{Duration, Instant};

use vmmio_qtest::qemu::{slot_base, MICROVM_SLOTS};
use vmmio_qtest::{Device, Mode, Qemu, QemuBuilder};
use vmmio_spec::mmio;

const ALL_DEVICES: [Device; 3] = [
    Device::Block {
        size_bytes: 1 << 20,
        serial: None,
    },
    Device::Rng,
    Device::Console,
];

fn start(mode: Mode, devices: &[Device]) -> Qemu {
    let mut builder = QemuBuilder::new(mode);
    for d in devices {
        builder = builder.device(d.clone());
    }
    builder.start().expect("QEMU starts")
}

fn readl(qemu: &Qemu, addr: u64) -> u32 {
    qemu.lock()
        .readl(addr)
        .unwrap_or_else(|e| panic!("readl {addr:#x}: {e}; QEMU stderr: {}", qemu.stderr()))
}

fn writel(qemu: &Qemu, addr: u64, value: u32) {
    qemu.lock()
        .writel(addr, value)
        .unwrap_or_else(|e| panic!("writel {addr:#x}: {e}; QEMU stderr: {}", qemu.stderr()))
}

/// Every slot answers MagicValue, the mode's Version and QEMU's VendorID;
/// exactly the slots `slot_of` names hold a device, with its DeviceID.
#[test]
fn every_slot_probed_by_hand_matches_the_command_line() {
    for mode in Mode::BOTH {
        let qemu = start(mode, &ALL_DEVICES);
        for slot in 0..MICROVM_SLOTS {
            let base = slot_base(slot);
            assert_eq!(readl(&qemu, base + mmio::MAGIC), mmio::MAGIC_VALUE);
            assert_eq!(readl(&qemu, base + mmio::VERSION), mode.version());
            assert_eq!(readl(&qemu, base + mmio::VENDOR_ID), 0x554d_4551);
            let expected = (0..ALL_DEVICES.len())
                .find(|&i| qemu.slot_of(i) == slot)
                .map_or(0, |i| ALL_DEVICES[i].device_id());
            assert_eq!(
                readl(&qemu, base + mmio::DEVICE_ID),
                expected,
                "{mode:?} slot {slot}"
            );
        }
    }
}

/// One VIRTIO_ID_ENTROPY request by hand: proves guest RAM is shared and
/// that QEMU's devices run with the vCPU stopped.
#[test]
fn entropy_request_by_hand_completes() {
    const QSIZE: u32 = 8;
    const LEN: u32 = 64;
    for mode in Mode::BOTH {
        let qemu = start(mode, &[Device::Rng]);
        let ram = qemu.ram();
        let base = qemu.window_of(0);
        let reg = |off: u64| base + off;
        writel(&qemu, reg(mmio::STATUS), 0);
        writel(&qemu, reg(mmio::STATUS), 1 | 2); // ACKNOWLEDGE | DRIVER
        if mode == Mode::Legacy {
            writel(&qemu, reg(mmio::LEGACY_GUEST_PAGE_SIZE), 4096);
        }
        writel(&qemu, reg(mmio::DRIVER_FEATURES_SEL), 1);
        let high = u32::from(mode == Mode::Modern); // VIRTIO_F_VERSION_1
        writel(&qemu, reg(mmio::DRIVER_FEATURES), high);
        writel(&qemu, reg(mmio::DRIVER_FEATURES_SEL), 0);
        writel(&qemu, reg(mmio::DRIVER_FEATURES), 0);
        if mode == Mode::Modern {
            writel(&qemu, reg(mmio::STATUS), 1 | 2 | 8);
            assert_eq!(readl(&qemu, reg(mmio::STATUS)) & 8, 8, "FEATURES_OK");
        }
        writel(&qemu, reg(mmio::QUEUE_SEL), 0);
        assert!(readl(&qemu, reg(mmio::QUEUE_SIZE_MAX)) >= QSIZE);
        writel(&qemu, reg(mmio::QUEUE_SIZE), QSIZE);
        // Legacy layout: descriptors, avail ring, then the used ring at the
        // next 4096-byte boundary; the same addresses serve Version 2.
        let ring = ram.alloc(2 * 4096).expect("ring");
        let desc = ring;
        let avail = ring + 16 * u64::from(QSIZE);
        let used = ring + 4096;
        if mode == Mode::Legacy {
            writel(&qemu, reg(mmio::LEGACY_QUEUE_ALIGN), 4096);
            let pfn = u32::try_from(ring / 4096).expect("ring below 16 TiB");
            writel(&qemu, reg(mmio::LEGACY_QUEUE_PFN), pfn);
        } else {
            for (low, addr) in [
                (mmio::QUEUE_DESC_LOW, desc),
                (mmio::QUEUE_DRIVER_LOW, avail),
                (mmio::QUEUE_DEVICE_LOW, used),
            ] {
                let lo = u32::try_from(addr & 0xffff_ffff).expect("masked");
                let hi = u32::try_from(addr >> 32).expect("shifted");
                writel(&qemu, reg(low), lo);
                writel(&qemu, reg(low + 4), hi);
            }
            writel(&qemu, reg(mmio::QUEUE_READY), 1);
        }
        let status = if mode == Mode::Modern {
            1 | 2 | 4 | 8
        } else {
            1 | 2 | 4
        };
        writel(&qemu, reg(mmio::STATUS), status);

        let buf = ram.alloc(u64::from(LEN)).expect("buffer");
        let mut d = Vec::new();
        d.extend_from_slice(&buf.to_le_bytes());
        d.extend_from_slice(&LEN.to_le_bytes());
        d.extend_from_slice(&2u16.to_le_bytes()); // VIRTQ_DESC_F_WRITE
        d.extend_from_slice(&0u16.to_le_bytes());
        ram.write(desc, &d).expect("descriptor");
        ram.write(avail + 4, &0u16.to_le_bytes())
            .expect("avail ring[0]");
        ram.write(avail + 2, &1u16.to_le_bytes())
            .expect("avail idx");
        writel(&qemu, reg(mmio::QUEUE_NOTIFY), 0);

        let deadline = Instant::now() + Duration::from_secs(30);
        while ram.read_u16(used + 2).expect("used idx") != 1 {
            assert!(Instant::now() < deadline, "{mode:?}: no used buffer");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ram.read_u32(used + 4).expect("used id"), 0);
        let len = ram.read_u32(used + 8).expect("used len");
        assert!(len > 0 && len <= LEN, "{mode:?}: used len {len}");
        let mut bytes = vec![0u8; usize::try_from(len).expect("small")];
        ram.read(buf, &mut bytes).expect("entropy");
        assert!(
            bytes.iter().any(|&b| b != bytes[0]),
            "{mode:?}: constant entropy {bytes:?}"
        );
        assert_eq!(readl(&qemu, reg(mmio::INTERRUPT_STATUS)) & 1, 1);
    }
}

/// A missing QEMU binary is a failure with a clear message, not a skip.
#[test]
fn missing_qemu_panics_with_install_hint() {
    let result = std::panic::catch_unwind(|| {
        QemuBuilder::new(Mode::Legacy)
            .qemu_binary("qemu-system-x86_64-not-installed")
            .start()
    });
    let payload = result.expect_err("a missing binary panics");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("is not on PATH") && message.contains("install-deps"),
        "{message}"
    );
}

/// A QEMU that dies fails the next exchange instead of hanging the test.
#[test]
fn killed_qemu_fails_fast() {
    let qemu = start(Mode::Legacy, &[]);
    let pid = qemu.pid();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let start = Instant::now();
    let mut client = qemu.lock();
    let err = loop {
        match client.readl(slot_base(0)) {
            Err(e) => break e,
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(5)),
        }
    };
    assert!(
        matches!(
            err,
            vmmio_qtest::QtestError::Closed { .. } | vmmio_qtest::QtestError::Io { .. }
        ),
        "{err:?}"
    );
}
