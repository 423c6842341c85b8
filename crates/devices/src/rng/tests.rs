//! Entropy device tests.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::VirtioDevice;

use super::*;
use crate::test_util::{desc, interrupt, mem, CountingLine, Mem, TestRing};

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
