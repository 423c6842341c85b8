//! Our transport and virtqueue used directly (no class driver) against
//! QEMU's `virtio-rng-device`: caller buffers shared through the HAL,
//! interrupt acknowledgement, queue reset (VIRTIO_F_RING_RESET) and queue
//! teardown.

mod common;

use common::{both_modes, start};
use vmmio_driver::{Error, Transport, VirtQueue, TRANSPORT_FEATURES};
use vmmio_qtest::{Device, Mode, Qemu, QtestHal, QtestWindow, RingFeatures};
use vmmio_spec::features::VIRTIO_F_RING_RESET;
use vmmio_spec::mmio;

const QUEUE_SIZE: u16 = 8;

/// Probes and initialises the entropy device with one request queue.
fn entropy_transport(qemu: &Qemu) -> (Transport<QtestWindow>, VirtQueue<QtestHal>) {
    let mut t = qemu.transport(0);
    // RING_RESET is opt-in (DEFAULT_TRANSPORT_FEATURES leaves it out): ask
    // for everything the driver implements, to see what QEMU does with it.
    t.set_transport_features(TRANSPORT_FEATURES);
    t.begin_init(0).expect("features negotiated");
    let q = t
        .setup_queue(qemu.hal(), 0, QUEUE_SIZE)
        .expect("queue 0 set up");
    t.finish_init().expect("DRIVER_OK");
    (t, q)
}

/// One entropy request into a heap buffer (outside guest RAM, so the HAL
/// bounces it); returns the bytes the device wrote.
fn entropy_request(t: &mut Transport<QtestWindow>, q: &mut VirtQueue<QtestHal>) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    // SAFETY: `buf` stays allocated and untouched until `wait_used` below
    // returns the chain (which unshares it), or the test panics first and
    // the QEMU holding the bounce copy is killed.
    let token = unsafe { q.add(&[], &mut [&mut buf[..]]) }.expect("chain added");
    t.notify_if_needed(q).expect("notified");
    let len = t.wait_used(q, token).expect("chain used");
    buf.truncate(usize::try_from(len).expect("len <= 64"));
    buf
}

fn raw_readl(qemu: &Qemu, offset: u64) -> u32 {
    qemu.lock()
        .readl(qemu.window_of(0) + offset)
        .expect("qtest readl")
}

fn heap_buffers_bounce_and_interrupts_acknowledge(mode: Mode) {
    let qemu = start(mode, RingFeatures::default(), &[Device::Rng]);
    let (mut t, mut q) = entropy_transport(&qemu);
    let hal = qemu.hal();
    let mut all = Vec::new();
    for _ in 0..3 * QUEUE_SIZE {
        let bytes = entropy_request(&mut t, &mut q);
        assert!(!bytes.is_empty(), "{mode:?}: empty entropy");
        all.extend(bytes);
    }
    assert!(all.iter().any(|&b| b != all[0]), "{mode:?}: constant bytes");
    assert_eq!(hal.bounces_in_use(), 0, "{mode:?}: bounce buffers leaked");
    assert_eq!(
        raw_readl(&qemu, mmio::INTERRUPT_STATUS) & mmio::INT_VRING,
        1
    );
    let events = t.ack_interrupt().expect("ack");
    assert!(events.used_buffers && !events.config_changed, "{events:?}");
    assert_eq!(raw_readl(&qemu, mmio::INTERRUPT_STATUS), 0, "{mode:?}: ack");
    t.reset().expect("reset");
    t.teardown_queue(q).expect("teardown");
}

/// VIRTIO_F_RING_RESET as QEMU 10 offers it over MMIO: the feature is
/// offered on Version 2 and our driver accepts it when asked to (it is not
/// in the driver's default set for this reason), but QEMU's virtio-mmio
/// ignores writes to `QueueReset` (it reads 0, the queue stays enabled and
/// keeps serving requests). Our driver must end `reset_queue` with a
/// bounded timeout, and a device reset must bring the device back.
fn queue_reset_is_ignored_by_qemu_and_the_driver_recovers(mode: Mode) {
    let qemu = start(mode, RingFeatures::default(), &[Device::Rng]);
    let (mut t, mut q) = entropy_transport(&qemu);
    entropy_request(&mut t, &mut q);
    match mode {
        Mode::Legacy => {
            // Legacy devices have 32 feature bits: no RING_RESET.
            assert!(!t.has_feature(VIRTIO_F_RING_RESET));
            assert!(matches!(
                t.reset_queue(q).map_err(|e| e.error),
                Err(Error::FeatureNotNegotiated(VIRTIO_F_RING_RESET))
            ));
        }
        Mode::Modern => {
            assert!(t.has_feature(VIRTIO_F_RING_RESET), "QEMU offers it");
            let failed = t.reset_queue(q).expect_err("QEMU ignores QueueReset");
            assert!(matches!(failed.error, Error::Timeout { .. }), "{failed:?}");
            assert_eq!(raw_readl(&qemu, mmio::QUEUE_READY), 1, "queue still on");
            // The way back: reset the whole device, free the queue handed
            // back, and start over.
            t.reset().expect("reset");
            t.teardown_queue(failed.queue).expect("the old queue freed");
            t.begin_init(0).expect("renegotiated after reset");
            let mut q = t
                .setup_queue(qemu.hal(), 0, QUEUE_SIZE / 2)
                .expect("queue set up again");
            t.finish_init().expect("DRIVER_OK");
            for _ in 0..QUEUE_SIZE {
                assert!(!entropy_request(&mut t, &mut q).is_empty());
            }
            t.reset().expect("reset");
            t.teardown_queue(q).expect("teardown");
        }
    }
}

/// With QEMU's `queue_reset=off` the feature is not offered, so the
/// driver refuses a queue reset without touching the device.
fn queue_reset_not_offered_is_refused(mode: Mode) {
    let ring = RingFeatures {
        queue_reset: false,
        ..RingFeatures::default()
    };
    let qemu = start(mode, ring, &[Device::Rng]);
    let (mut t, mut q) = entropy_transport(&qemu);
    entropy_request(&mut t, &mut q);
    assert!(!t.has_feature(VIRTIO_F_RING_RESET));
    assert!(matches!(
        t.reset_queue(q).map_err(|e| e.error),
        Err(Error::FeatureNotNegotiated(VIRTIO_F_RING_RESET))
    ));
}

fn live_queue_teardown_reads_back_disabled(mode: Mode) {
    let qemu = start(mode, RingFeatures::default(), &[Device::Rng]);
    let (mut t, mut q) = entropy_transport(&qemu);
    entropy_request(&mut t, &mut q);
    // Disable the queue while the device runs (as Linux does on remove),
    // then reset: both must read back as done.
    t.teardown_queue(q).expect("live queue teardown");
    let enabled = match mode {
        Mode::Legacy => mmio::LEGACY_QUEUE_PFN,
        Mode::Modern => mmio::QUEUE_READY,
    };
    assert_eq!(
        raw_readl(&qemu, enabled),
        0,
        "{mode:?}: queue still enabled"
    );
    t.reset().expect("reset");
    assert_eq!(raw_readl(&qemu, mmio::STATUS), 0);
}

both_modes!(heap_buffers_bounce_and_interrupts_acknowledge);
both_modes!(queue_reset_is_ignored_by_qemu_and_the_driver_recovers);
both_modes!(queue_reset_not_offered_is_refused);
both_modes!(live_queue_teardown_reads_back_disabled);
