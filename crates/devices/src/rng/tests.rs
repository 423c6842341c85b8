//! Entropy device tests.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::VirtioDevice;

use super::*;
use crate::test_util::{
    avail_event, desc, interrupt, mem, refiller, run_backends, CountingLine, Mem, TestRing,
};

/// A source that counts bytes: byte i of all output is `i as u8 | 1`
/// (never 0, so filled bytes are visible in zeroed memory).
struct Counter(u8);

impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        for b in buf {
            *b = self.0 | 1;
            self.0 = self.0.wrapping_add(2);
        }
        Ok(())
    }
}

struct Failing;

impl EntropySource for Failing {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), getrandom::Error> {
        Err(getrandom::Error::UNSUPPORTED)
    }
}

fn start(source: Box<dyn EntropySource>) -> (Mem, TestRing, Rng<Mem>, Arc<CountingLine>) {
    let m = mem();
    let ring = TestRing::new(16, 0);
    let mut dev = Rng::with_source(source);
    let (irq, line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(0)], 0)
        .unwrap();
    (m, ring, dev, line)
}

/// virtio v1.4 §5.4.6.1: the device places one or more random bytes into
/// the buffer (here: all of it, up to the cap) and reports how many.
#[test]
fn fills_writable_buffers_and_reports_length() {
    let (m, mut ring, mut dev, line) = start(Box::new(Counter(0)));
    let a = ring.alloc(100);
    let b = ring.alloc(28);
    let head = ring.add_chain(&m, &[desc(a, 100, true), desc(b, 28, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(u32::from(head), 128)]);
    assert_eq!(line.used(), 1);
    let mut got = [0u8; 128];
    m.read_slice(&mut got[..100], GuestAddress(a)).unwrap();
    m.read_slice(&mut got[100..], GuestAddress(b)).unwrap();
    assert!(got.iter().all(|&x| x & 1 == 1));
}

#[test]
fn os_rng_fills_buffers() {
    let (m, mut ring, mut dev, _line) = start(Box::new(OsRng));
    let a = ring.alloc(4096);
    ring.add_chain(&m, &[desc(a, 4096, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, 4096)]);
    let mut got = vec![0u8; 4096];
    m.read_slice(&mut got, GuestAddress(a)).unwrap();
    // 4096 random bytes are all zero with probability 2^-32768.
    assert!(got.iter().any(|&x| x != 0));
    assert_eq!(
        Rng::<Mem>::new().device_type(),
        vmmio_spec::device_id::ENTROPY
    );
}

/// Overlapping descriptors may claim far more than guest memory holds: the
/// device stops at MAX_REQUEST_BYTES.
#[test]
fn request_is_capped() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Counter(0)));
    let a = ring.alloc(48 * 1024);
    // Three descriptors over the same 48 KiB: 144 KiB claimed.
    ring.add_chain(
        &m,
        &[
            desc(a, 48 * 1024, true),
            desc(a, 48 * 1024, true),
            desc(a, 48 * 1024, true),
        ],
    );
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, MAX_REQUEST_BYTES as u32)]);
    // A single 4 GiB descriptor (beyond guest memory): the cap applies
    // first; the part beyond memory is not written or reported.
    ring.add_chain(&m, &[desc(0xf_0000, u32::MAX, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(3, 0x1_0000)]);
}

/// virtio v1.4 §5.4.6.1 (driver side): readable buffers are not allowed;
/// such a request is malformed and completed with length 0.
#[test]
fn readable_descriptor_is_malformed() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Counter(0)));
    let a = ring.alloc(64);
    ring.add_chain(&m, &[desc(a, 16, false), desc(a + 16, 48, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, 0)]);
    let mut got = [0u8; 64];
    m.read_slice(&mut got, GuestAddress(a)).unwrap();
    assert_eq!(got, [0; 64]);
    // The device keeps working.
    ring.add_chain(&m, &[desc(a, 8, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(2, 8)]);
}

#[test]
fn empty_buffer_and_bad_address_do_not_crash() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Counter(0)));
    ring.add_chain(&m, &[desc(0x2_0000, 0, true)]);
    ring.add_chain(&m, &[desc(0x4000_0000, 64, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, 0), (1, 0)]);
}

#[test]
fn failing_source_completes_with_zero() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Failing));
    let a = ring.alloc(64);
    ring.add_chain(&m, &[desc(a, 64, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, 0)]);
}

#[test]
fn no_config_and_reset_stops_serving() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Counter(0)));
    let mut c = [0xffu8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(c, [0; 8]);
    dev.write_config(0, &[1, 2, 3]);
    dev.reset();
    let a = ring.alloc(8);
    ring.add_chain(&m, &[desc(a, 8, true)]);
    dev.queue_notify(0, None);
    assert!(ring.take_used(&m).is_empty());
}

#[test]
fn descriptor_loop_does_not_crash() {
    let (m, mut ring, mut dev, line) = start(Box::new(Counter(0)));
    let a = ring.alloc(8);
    ring.write_desc(
        &m,
        0,
        a,
        8,
        crate::test_util::F_NEXT | crate::test_util::F_WRITE,
        0,
    );
    ring.publish(&m, 0);
    dev.queue_notify(0, None);
    assert!(ring.take_used(&m).is_empty());
    assert_eq!(line.used(), 0);
}

/// A source that also runs `hook` after every fill: a driver adding
/// chains while the device serves them.
struct Hooked(Box<dyn FnMut() + Send>);

impl EntropySource for Hooked {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        buf.fill(1);
        (self.0)();
        Ok(())
    }
}

/// 8 chains available in a ring of 16 (8-byte writable buffers at every
/// table entry) and a driver that adds one more per request filled, 100
/// in all: more than the device serves per call (`MAX_BATCHES` x 16).
/// Returns the device (not activated), memory, ring and the total.
fn refilled() -> (Rng<Mem>, Mem, TestRing, u16) {
    let m = mem();
    let mut ring = TestRing::new(16, 0);
    let buf = ring.alloc(8);
    for i in 0..ring.size {
        ring.write_desc(&m, i, buf, 8, crate::test_util::F_WRITE, 0);
    }
    let first = ring.size / 2;
    for head in 0..first {
        ring.publish(&m, head);
    }
    let extra = 100;
    let dev = Rng::with_source(Box::new(Hooked(Box::new(refiller(
        m.clone(),
        &ring,
        first,
        extra,
    )))));
    (dev, m, ring, first + extra)
}

/// The per-call cap with EVENT_IDX (review finding 1): the driver added
/// chains past the `avail_event` the device published, so it will not
/// notify for them; the device lists its more-work fd and serves them on
/// its `backend_event`, as a synchronous embedder's `poll_backends` (here
/// [`run_backends`]) delivers it.
#[test]
fn cap_with_event_idx_leaves_no_chain_stranded_sync() {
    let (mut dev, m, mut ring, total) = refilled();
    let features = bit(VIRTIO_F_EVENT_IDX);
    let (irq, _line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(features)], features)
        .unwrap();
    let capped = ring.take_used(&m).len();
    assert!(capped < usize::from(total), "the cap holds: {capped} used");
    // The cap: MAX_BATCHES batches of one queue size (16) each.
    assert_eq!(capped, crate::chain::MAX_BATCHES as usize * 16);
    assert_eq!(dev.backend_fds().len(), 1, "more-work fd listed");
    run_backends(&mut dev, 16);
    let used = capped + ring.take_used(&m).len();
    assert_eq!((used, avail_event(&m, &ring)), (usize::from(total), total));
    assert!(
        dev.backend_fds().is_empty(),
        "nothing left: fd no longer listed"
    );
}

/// As above, behind a [`WorkerDevice`]: its epoll loop wakes on the
/// more-work fd. Waits for the used ring (bounded; no timing asserted).
#[test]
fn cap_with_event_idx_leaves_no_chain_stranded_worker() {
    use vmmio_device::WorkerDevice;
    let (dev, m, ring, total) = refilled();
    let features = bit(VIRTIO_F_EVENT_IDX);
    let mut worker = WorkerDevice::new(Box::new(dev)).unwrap();
    let (irq, _line) = interrupt();
    worker
        .activate(m.clone(), irq, vec![ring.queue(features)], features)
        .unwrap();
    let used_idx = || -> u16 { m.read_obj(GuestAddress(ring.used + 2)).unwrap() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while used_idx() != total && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(used_idx(), total, "chains stranded behind avail_event");
    VirtioDevice::<Mem>::reset(&mut worker);
}

/// Reset forgets work left at the cap: the fd is drained and no longer
/// listed, so the next driver is not served chains of the old one.
#[test]
fn reset_drops_work_left_at_the_cap() {
    let (mut dev, m, ring, _total) = refilled();
    let features = bit(VIRTIO_F_EVENT_IDX);
    let (irq, _line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(features)], features)
        .unwrap();
    let fd = dev.backend_fds()[0].fd;
    VirtioDevice::<Mem>::reset(&mut dev);
    assert!(dev.backend_fds().is_empty());
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0, "fd drained");
    // A stray event after reset touches nothing.
    dev.backend_event(crate::chain::MoreWork::TOKEN);
}

/// What the device offers (§5.4.3: no device-type features): indirect
/// descriptors, EVENT_IDX, RING_RESET; and its QueueSizeMax.
#[test]
fn features_and_queue_size_max() {
    let dev = Rng::<Mem>::new();
    assert_eq!(
        dev.device_features(),
        bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_RING_RESET)
    );
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE]);
    assert_eq!(Rng::<Mem>::new().with_queue_size(8).queue_max_sizes(), [8]);
    assert_eq!(Rng::<Mem>::new().with_queue_size(0).queue_max_sizes(), [1]);
}

/// A buffer longer than the host chunk (4096 bytes) is filled in pieces,
/// exactly to its end.
#[test]
fn a_buffer_longer_than_a_chunk_is_filled_to_its_end_only() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Counter(0)));
    let a = ring.alloc(5000);
    let guard = ring.alloc(64);
    ring.add_chain(&m, &[desc(a, 5000, true)]);
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, 5000)]);
    let mut got = vec![0u8; 5000];
    m.read_slice(&mut got, GuestAddress(a)).unwrap();
    assert!(got.iter().all(|&x| x & 1 == 1));
    let mut after = [0xaau8; 64];
    m.read_slice(&mut after, GuestAddress(guard)).unwrap();
    assert_eq!(after, [0; 64]);
}

/// §2.6.1 (RING_RESET): a reset queue is not served; enabled again, it is.
#[test]
fn a_reset_queue_is_not_served_until_enabled_again() {
    let (m, mut ring, mut dev, _line) = start(Box::new(Counter(0)));
    dev.queue_reset(0);
    let a = ring.alloc(8);
    ring.add_chain(&m, &[desc(a, 8, true)]);
    dev.queue_notify(0, None);
    assert!(ring.take_used(&m).is_empty());
    dev.queue_enable(0, ring.queue(0));
    dev.queue_notify(0, None);
    assert_eq!(ring.take_used(&m), vec![(0, 8)]);
}
