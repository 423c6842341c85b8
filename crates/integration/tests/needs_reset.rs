//! Driver resilience: a device that breaks on purpose (sets
//! DEVICE_NEEDS_RESET instead of answering a request, virtio v1.4 §2.1.2)
//! in front of the real block device over a file. Our block driver fails
//! the request in flight with `Error::DeviceNeedsReset`, refuses new ones
//! (`Error::Broken`) rather than reuse a ring the device may still touch,
//! and after `reinit` (reset, renegotiate, new queue) the request posted
//! again completes with the right data. Both register layouts, both
//! execution modes.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmmio_device::{
    ActivateError, ExecMode, InterruptStatus, Queue, TransportVersion, VirtioDevice,
};
use vmmio_driver::blk::Block;
use vmmio_driver::{Error, Transport};
use vmmio_integration::{window_in, Mem};
use vmmio_spec::notification::NotificationData;

/// Passes everything to `inner`, except that the notification that brings
/// `countdown` to 0 is swallowed and answered with DEVICE_NEEDS_RESET.
struct Breaking {
    inner: Box<dyn VirtioDevice<Mem> + Send>,
    countdown: Arc<AtomicU32>,
    interrupt: Option<InterruptStatus>,
}

impl VirtioDevice<Mem> for Breaking {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data);
    }
    fn config_generation(&self) -> u32 {
        self.inner.config_generation()
    }
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        self.interrupt = Some(interrupt.clone());
        self.inner.activate(mem, interrupt, queues, features)
    }
    fn queue_notify(&mut self, index: u16, data: Option<NotificationData>) {
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 1 {
            self.countdown.store(0, Ordering::SeqCst);
            if let Some(i) = &self.interrupt {
                i.device_needs_reset();
            }
            return;
        }
        if left > 1 {
            self.countdown.store(left - 1, Ordering::SeqCst);
        }
        self.inner.queue_notify(index, data);
    }
    fn reset(&mut self) {
        self.interrupt = None;
        self.inner.reset();
    }
    fn queue_reset(&mut self, index: u16) {
        self.inner.queue_reset(index);
    }
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        self.inner.queue_enable(index, queue);
    }
}

#[test]
fn block_driver_recovers_from_device_needs_reset() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        for version in [TransportVersion::Legacy, TransportVersion::Modern] {
            let what = format!("{exec:?} {version:?}");
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
            file.write_all(&image).expect("image");
            file.flush().expect("flush");
            let disk =
                vmmio_devices::Block::<Mem, _>::from_path(file.path(), false).expect("block");
            // The third notification breaks the device.
            let countdown = Arc::new(AtomicU32::new(3));
            let device = Breaking {
                inner: Box::new(disk),
                countdown: countdown.clone(),
                interrupt: None,
            };
            let w = window_in(exec, version, Box::new(device));
            let t = Transport::probe(w.io).expect("probe").expect("a device");
            let mut b = Block::new(t, w.hal).expect("driver");

            let mut buf = vec![0u8; 4096];
            b.read_blocks(0, &mut buf).expect("first read");
            assert_eq!(buf, image[..4096], "{what}");
            b.read_blocks(8, &mut buf).expect("second read");
            // Third: the device breaks instead of answering.
            assert_eq!(
                b.read_blocks(16, &mut buf),
                Err(Error::DeviceNeedsReset),
                "{what}"
            );
            // No reuse of a ring the device may still hold.
            assert_eq!(b.read_blocks(16, &mut buf), Err(Error::Broken), "{what}");
            // Recovery: reset and initialise again, then post the failed
            // request again.
            b.reinit().expect("reinit");
            b.read_blocks(16, &mut buf)
                .expect("the request posted again");
            assert_eq!(buf, image[16 * 512..16 * 512 + 4096], "{what}");
            assert_eq!(countdown.load(Ordering::SeqCst), 0);
        }
    }
}
