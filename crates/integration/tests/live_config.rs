//! Host-side configuration changes seen by our driver: a `Block` over a file
//! is resized through its `BlockConfigHandle` while the driver runs, in both
//! register layouts and both execution modes; the driver gets the
//! configuration change interrupt and `refresh_capacity` returns the new
//! size (virtio v1.4 §2.5, §5.2.4).

use std::fs::OpenOptions;

use vmmio_device::{ExecMode, TransportVersion};
use vmmio_driver::blk::Block;
use vmmio_driver::{Error, Transport};
use vmmio_integration::{window_in, Mem};

#[test]
fn refresh_capacity_sees_a_host_resize() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        for version in [TransportVersion::Legacy, TransportVersion::Modern] {
            let what = format!("{exec:?} {version:?}");
            let file = tempfile::NamedTempFile::new().expect("temp file");
            file.as_file().set_len(1 << 20).expect("1 MiB image");
            let dev = vmmio_devices::Block::<Mem, _>::from_path(file.path(), false)
                .expect("block device");
            let handle = dev.config_handle();
            let w = window_in(exec, version, Box::new(dev));
            let transport = Transport::probe(w.io).expect("probe").expect("a device");
            let mut b = Block::new(transport, w.hal).expect("driver");
            assert_eq!(b.capacity(), 2048, "{what}");

            // The host grows the image and tells the device.
            let image = OpenOptions::new()
                .write(true)
                .open(file.path())
                .expect("open");
            image.set_len(2 << 20).expect("grow");
            handle
                .set_len(image.metadata().expect("stat").len())
                .expect("resize");
            let events = b.handle_interrupt().expect("interrupt");
            assert!(events.config_changed, "{what}: no config change interrupt");
            assert_eq!(b.refresh_capacity().expect("refresh"), 4096, "{what}");
            // The new last sector is there (zeros: the file grew sparse).
            let mut last = [0xffu8; 512];
            b.read_blocks(4095, &mut last)
                .expect("read the new last sector");
            assert_eq!(last, [0u8; 512], "{what}");

            // Shrink: the driver sees it, and the old end is out of range.
            handle.set_capacity(1024).expect("shrink");
            assert!(b.handle_interrupt().expect("interrupt").config_changed);
            assert_eq!(b.refresh_capacity().expect("refresh"), 1024, "{what}");
            assert!(
                matches!(
                    b.read_blocks(2047, &mut last),
                    Err(Error::OutOfRange { .. })
                ),
                "{what}"
            );
        }
    }
}

/// The console driver follows a host resize (`ConsoleConfigHandle`): the
/// configuration change interrupt makes `handle_interrupt` re-read `cols`
/// and `rows` as one pair.
#[test]
fn console_driver_follows_a_host_resize() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        for version in [TransportVersion::Legacy, TransportVersion::Modern] {
            let what = format!("{exec:?} {version:?}");
            let (dev, _out) = vmmio_devices::Console::<Mem>::capture();
            let dev = dev.with_size(80, 25);
            let handle = dev.config_handle();
            let w = window_in(exec, version, Box::new(dev));
            let transport = Transport::probe(w.io).expect("probe").expect("a device");
            let mut c = vmmio_driver::console::Console::new(transport, w.hal).expect("driver");
            assert_eq!(c.size(), Some((80, 25)), "{what}");
            handle.set_size(132, 43);
            let events = c.handle_interrupt().expect("interrupt");
            assert!(events.config_changed, "{what}");
            assert_eq!(c.size(), Some((132, 43)), "{what}");
        }
    }
}
