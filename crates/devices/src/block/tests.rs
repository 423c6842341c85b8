//! Block device tests: every request type, every malformed request, config
//! space, features, durability ordering and the file backend.

use std::io;
use std::sync::{Arc, Mutex};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};
use vmmio_device::queue::Descriptor;
use vmmio_device::VirtioDevice;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_RESET};

use super::request::{features as blk, status, types, Capacity, Disk, Limits};
use super::*;
use crate::test_util::{desc, interrupt, mem, CountingLine, Mem, TestRing, F_NEXT, F_WRITE};

mod uring;
mod vectored;

/// Features a typical driver negotiates.
const FEATURES: u64 = (1 << blk::FLUSH)
    | (1 << blk::BLK_SIZE)
    | (1 << blk::SEG_MAX)
    | (1 << blk::SIZE_MAX)
    | (1 << blk::DISCARD)
    | (1 << blk::WRITE_ZEROES);

/// A disk image of `sectors` sectors, sector `n` filled with byte `n`.
fn image(sectors: u64) -> Vec<u8> {
    (0..sectors).flat_map(|s| vec![s as u8; 512]).collect()
}

struct Fx<B: Backend> {
    mem: Mem,
    ring: TestRing,
    dev: Block<Mem, B>,
    line: Arc<CountingLine>,
}

/// One submitted request: where its status byte and IN data are.
#[derive(Clone, Copy, Debug)]
struct Req {
    head: u16,
    status: u64,
    data: u64,
    in_len: u32,
}

fn fixture<B: Backend>(backend: B, options: BlockOptions, features: u64) -> Fx<B> {
    let mem = mem();
    let ring = TestRing::new(16, 0);
    let mut dev = Block::with_backend(backend, options).unwrap();
    let (irq, line) = interrupt();
    dev.activate(mem.clone(), irq, vec![ring.queue(features)], features)
        .unwrap();
    Fx {
        mem,
        ring,
        dev,
        line,
    }
}

fn mem_fixture(sectors: u64) -> Fx<MemoryBackend> {
    let options = BlockOptions {
        discard: true,
        write_zeroes: true,
        ..BlockOptions::default()
    };
    fixture(MemoryBackend::from_vec(image(sectors)), options, FEATURES)
}

fn header(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

impl<B: Backend> Fx<B> {
    /// Adds a well-formed request: header, `out` (readable), `in_len`
    /// writable data bytes, status byte (initialised to 0xff).
    fn submit(&mut self, t: u32, sector: u64, out: &[u8], in_len: u32) -> Req {
        let h = self.ring.alloc(16);
        self.mem
            .write_slice(&header(t, sector), GuestAddress(h))
            .unwrap();
        let mut descs = vec![desc(h, 16, false)];
        if !out.is_empty() {
            let o = self.ring.alloc(out.len() as u64);
            self.mem.write_slice(out, GuestAddress(o)).unwrap();
            descs.push(desc(o, out.len() as u32, false));
        }
        let data = self.ring.alloc(u64::from(in_len));
        if in_len > 0 {
            descs.push(desc(data, in_len, true));
        }
        let status = self.ring.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        descs.push(desc(status, 1, true));
        let head = self.ring.add_chain(&self.mem, &descs);
        Req {
            head,
            status,
            data,
            in_len,
        }
    }

    /// Adds a chain of raw descriptors.
    fn submit_raw(&mut self, descs: &[Descriptor]) -> u16 {
        self.ring.add_chain(&self.mem, descs)
    }

    fn notify(&mut self) -> Vec<(u32, u32)> {
        self.dev.queue_notify(0, None);
        self.ring.take_used(&self.mem)
    }

    fn status(&self, r: Req) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
    }

    fn data(&self, r: Req) -> Vec<u8> {
        let mut v = vec![0u8; r.in_len as usize];
        self.mem.read_slice(&mut v, GuestAddress(r.data)).unwrap();
        v
    }

    /// Submits one request, notifies, and returns (status, used len).
    fn run(&mut self, t: u32, sector: u64, out: &[u8], in_len: u32) -> (Req, u8, u32) {
        let r = self.submit(t, sector, out, in_len);
        let used = self.notify();
        assert_eq!(used.len(), 1, "one used element");
        assert_eq!(used[0].0, u32::from(r.head));
        (r, self.status(r), used[0].1)
    }
}

// ---- request types ----

#[test]
fn read_returns_sectors_and_used_len_counts_data_and_status() {
    let mut fx = mem_fixture(8);
    let (r, st, len) = fx.run(types::IN, 2, &[], 1024);
    assert_eq!(st, status::OK);
    assert_eq!(len, 1025);
    let data = fx.data(r);
    assert!(data[..512].iter().all(|&b| b == 2));
    assert!(data[512..].iter().all(|&b| b == 3));
}

#[test]
fn write_stores_data_and_used_len_is_one() {
    let mut fx = mem_fixture(8);
    let (_, st, len) = fx.run(types::OUT, 7, &[0xab; 512], 0);
    assert_eq!(st, status::OK);
    assert_eq!(len, 1);
    let disk = fx.dev.backend().data();
    assert!(disk[7 * 512..].iter().all(|&b| b == 0xab));
    assert!(disk[6 * 512..7 * 512].iter().all(|&b| b == 6));
}

#[test]
fn flush_is_ok() {
    let mut fx = mem_fixture(8);
    let (_, st, len) = fx.run(types::FLUSH, 0, &[], 0);
    assert_eq!((st, len), (status::OK, 1));
}

#[test]
fn get_id_returns_nul_padded_id() {
    let options = BlockOptions {
        id: Some("disk-0".into()),
        ..BlockOptions::default()
    };
    let mut fx = fixture(MemoryBackend::new(4096), options, FEATURES);
    let (r, st, len) = fx.run(types::GET_ID, 0, &[], 20);
    assert_eq!((st, len), (status::OK, 21));
    let mut want = [0u8; 20];
    want[..6].copy_from_slice(b"disk-0");
    assert_eq!(fx.data(r), want);
    // A short buffer gets what fits.
    let (r, st, len) = fx.run(types::GET_ID, 0, &[], 4);
    assert_eq!((st, len), (status::OK, 5));
    assert_eq!(fx.data(r), b"disk");
}

#[test]
fn id_must_be_short_printable_ascii() {
    for bad in ["123456789012345678901", "caf\u{e9}", "a\nb"] {
        let options = BlockOptions {
            id: Some(bad.into()),
            ..BlockOptions::default()
        };
        assert!(matches!(
            Block::<Mem, _>::with_backend(MemoryBackend::new(512), options),
            Err(BlockError::InvalidId(_))
        ));
    }
    let twenty = "12345678901234567890";
    let options = BlockOptions {
        id: Some(twenty.into()),
        ..BlockOptions::default()
    };
    let dev = Block::<Mem, _>::with_backend(MemoryBackend::new(512), options).unwrap();
    assert_eq!(dev.id(), twenty.as_bytes());
}

fn segment(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// virtio v1.4 §5.2.6.2: after a write zeroes command completes, reads of
/// its ranges return zeroes, whether or not `unmap` was set.
#[test]
fn write_zeroes_then_reads_return_zeroes() {
    let mut fx = mem_fixture(8);
    let mut segs = segment(1, 2, 0).to_vec();
    segs.extend_from_slice(&segment(6, 1, 1)); // unmap set: allowed
    let (_, st, len) = fx.run(types::WRITE_ZEROES, 0, &segs, 0);
    assert_eq!((st, len), (status::OK, 1));
    let (r, st, _) = fx.run(types::IN, 0, &[], 8 * 512);
    assert_eq!(st, status::OK);
    let data = fx.data(r);
    for s in 0..8usize {
        let want = if matches!(s, 1 | 2 | 6) { 0 } else { s as u8 };
        assert!(
            data[s * 512..(s + 1) * 512].iter().all(|&b| b == want),
            "sector {s}"
        );
    }
}

#[test]
fn discard_is_ok() {
    let mut fx = mem_fixture(8);
    let (_, st, _) = fx.run(types::DISCARD, 0, &segment(0, 8, 0), 0);
    assert_eq!(st, status::OK);
}

/// virtio v1.4 §5.2.6.2: UNSUPP for a discard with `unmap` set.
#[test]
fn discard_with_unmap_is_unsupp() {
    let mut fx = mem_fixture(8);
    let (_, st, _) = fx.run(types::DISCARD, 0, &segment(0, 1, 1), 0);
    assert_eq!(st, status::UNSUPP);
    assert!(fx.dev.backend().data()[..512].iter().all(|&b| b == 0));
}

/// virtio v1.4 §5.2.6.2: UNSUPP for discard / write zeroes with an unknown
/// flag set; nothing is done, even for earlier valid segments.
#[test]
fn segment_with_unknown_flag_is_unsupp() {
    let mut fx = mem_fixture(8);
    for t in [types::DISCARD, types::WRITE_ZEROES] {
        let mut segs = segment(1, 1, 0).to_vec();
        segs.extend_from_slice(&segment(2, 1, 1 << 5));
        let (_, st, _) = fx.run(t, 0, &segs, 0);
        assert_eq!(st, status::UNSUPP, "type {t}");
    }
    assert!(fx.dev.backend().data()[512..1024].iter().all(|&b| b == 1));
}

#[test]
fn malformed_segments_are_ioerr() {
    let mut fx = mem_fixture(8);
    // Not a multiple of 16 bytes.
    assert_eq!(fx.run(types::WRITE_ZEROES, 0, &[0; 15], 0).1, status::IOERR);
    // Past the end of the disk.
    assert_eq!(
        fx.run(types::WRITE_ZEROES, 0, &segment(7, 2, 0), 0).1,
        status::IOERR
    );
    assert_eq!(
        fx.run(types::DISCARD, 0, &segment(u64::MAX / 256, 1, 0), 0)
            .1,
        status::IOERR
    );
    // More segments than max_discard_seg.
    let many = segment(0, 1, 0).repeat(33);
    assert_eq!(fx.run(types::DISCARD, 0, &many, 0).1, status::IOERR);
}

#[test]
fn discard_and_write_zeroes_not_negotiated_are_unsupp() {
    let features = 1 << blk::FLUSH;
    let options = BlockOptions {
        discard: true,
        write_zeroes: true,
        ..BlockOptions::default()
    };
    let mut fx = fixture(MemoryBackend::from_vec(image(4)), options, features);
    assert_eq!(
        fx.run(types::DISCARD, 0, &segment(0, 1, 0), 0).1,
        status::UNSUPP
    );
    assert_eq!(
        fx.run(types::WRITE_ZEROES, 0, &segment(0, 1, 0), 0).1,
        status::UNSUPP
    );
    assert!(fx.dev.backend().data()[..512].iter().all(|&b| b == 0));
}

#[test]
fn unknown_and_unsupported_types_are_unsupp() {
    let mut fx = mem_fixture(8);
    for t in [
        2,
        3,
        5,
        types::GET_LIFETIME,
        types::SECURE_ERASE,
        99,
        u32::MAX,
    ] {
        let (_, st, len) = fx.run(t, 0, &[], 512);
        assert_eq!((st, len), (status::UNSUPP, 1), "type {t}");
    }
}

/// virtio v1.4 §5.2.6.2: without VIRTIO_BLK_F_ZONED negotiated, zone
/// requests are rejected with UNSUPP.
#[test]
fn zone_requests_without_zoned_are_unsupp() {
    let mut fx = mem_fixture(8);
    for t in [
        types::ZONE_APPEND,
        types::ZONE_REPORT,
        types::ZONE_OPEN,
        types::ZONE_CLOSE,
        types::ZONE_FINISH,
        types::ZONE_RESET,
        types::ZONE_RESET_ALL,
    ] {
        assert_eq!(fx.run(t, 0, &[], 0).1, status::UNSUPP, "type {t}");
    }
}

// ---- malformed requests ----

/// virtio v1.4 §5.2.6.2: a write to a device offering VIRTIO_BLK_F_RO gets
/// IOERR and writes no data.
#[test]
fn read_only_write_is_ioerr_and_writes_nothing() {
    let options = BlockOptions {
        read_only: true,
        discard: true,
        write_zeroes: true,
        ..BlockOptions::default()
    };
    let mut fx = fixture(
        MemoryBackend::from_vec(image(4)),
        options,
        FEATURES | (1 << blk::RO),
    );
    assert_eq!(fx.run(types::OUT, 1, &[0xee; 512], 0).1, status::IOERR);
    assert_eq!(
        fx.run(types::WRITE_ZEROES, 0, &segment(1, 1, 0), 0).1,
        status::IOERR
    );
    assert_eq!(
        fx.run(types::DISCARD, 0, &segment(1, 1, 0), 0).1,
        status::IOERR
    );
    assert_eq!(fx.dev.backend().data(), &image(4)[..]);
    // Reads and flushes still work.
    assert_eq!(fx.run(types::IN, 1, &[], 512).1, status::OK);
    assert_eq!(fx.run(types::FLUSH, 0, &[], 0).1, status::OK);
}

#[test]
fn out_of_range_sector_is_ioerr() {
    let mut fx = mem_fixture(8);
    // Starts inside, ends past the end.
    assert_eq!(fx.run(types::IN, 7, &[], 1024).1, status::IOERR);
    assert_eq!(fx.run(types::OUT, 8, &[1; 512], 0).1, status::IOERR);
    // sector * 512 overflows u64.
    assert_eq!(fx.run(types::IN, u64::MAX, &[], 512).1, status::IOERR);
    assert_eq!(
        fx.run(types::OUT, u64::MAX / 512, &[1; 512], 0).1,
        status::IOERR
    );
    assert_eq!(fx.dev.backend().data(), &image(8)[..]);
    // The last sector is fine.
    assert_eq!(fx.run(types::IN, 7, &[], 512).1, status::OK);
}

#[test]
fn data_not_a_multiple_of_512_is_ioerr() {
    let mut fx = mem_fixture(8);
    assert_eq!(fx.run(types::IN, 0, &[], 511).1, status::IOERR);
    assert_eq!(fx.run(types::OUT, 0, &[1; 513], 0).1, status::IOERR);
    assert_eq!(fx.dev.backend().data(), &image(8)[..]);
}

/// Zero bytes is a multiple of 512: an empty IN/OUT at an in-range sector
/// succeeds and moves nothing; past the end it is IOERR.
#[test]
fn zero_length_data_is_ok_in_range() {
    let mut fx = mem_fixture(8);
    let (_, st, len) = fx.run(types::IN, 3, &[], 0);
    assert_eq!((st, len), (status::OK, 1));
    assert_eq!(fx.run(types::OUT, 8, &[], 0).1, status::OK);
    assert_eq!(fx.run(types::OUT, 9, &[], 0).1, status::IOERR);
    // A zero-length descriptor in the middle of a chain is skipped.
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::IN, 1), GuestAddress(h))
        .unwrap();
    let d = fx.ring.alloc(512);
    let s = fx.ring.alloc(1);
    fx.submit_raw(&[
        desc(h, 16, false),
        desc(0, 0, true),
        desc(d, 512, true),
        desc(s, 1, true),
    ]);
    assert_eq!(fx.notify()[0].1, 513);
    assert_eq!(fx.mem.read_obj::<u8>(GuestAddress(s)).unwrap(), status::OK);
    assert_eq!(fx.mem.read_obj::<u8>(GuestAddress(d)).unwrap(), 1);
}

/// No writable byte for the status: completed with used length 0.
#[test]
fn status_byte_not_writable_completes_with_zero() {
    let mut fx = mem_fixture(8);
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::OUT, 0), GuestAddress(h))
        .unwrap();
    let d = fx.ring.alloc(513);
    // Header + data + "status" all device-readable.
    fx.submit_raw(&[desc(h, 16, false), desc(d, 513, false)]);
    assert_eq!(fx.notify(), vec![(0, 0)]);
    // Nothing was written.
    assert_eq!(fx.dev.backend().data(), &image(8)[..]);
    // A zero-length writable descriptor holds no status byte either.
    let head = fx.submit_raw(&[desc(h, 16, false), desc(d, 0, true)]);
    assert_eq!(fx.notify(), vec![(u32::from(head), 0)]);
    // The device keeps serving.
    assert_eq!(fx.run(types::FLUSH, 0, &[], 0).1, status::OK);
}

/// A header shorter than 16 bytes: IOERR in the status byte.
#[test]
fn missing_header_is_ioerr() {
    let mut fx = mem_fixture(8);
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::OUT, 0), GuestAddress(h))
        .unwrap();
    let s = fx.ring.alloc(1);
    fx.submit_raw(&[desc(h, 8, false), desc(s, 1, true)]);
    assert_eq!(fx.notify()[0].1, 1);
    assert_eq!(
        fx.mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        status::IOERR
    );
    // No readable descriptor at all.
    let d = fx.ring.alloc(512);
    fx.submit_raw(&[desc(d, 512, true), desc(s, 1, true)]);
    assert_eq!(fx.notify()[0].1, 1);
    assert_eq!(
        fx.mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        status::IOERR
    );
    assert_eq!(fx.dev.backend().data(), &image(8)[..]);
}

/// Framing is free (virtio v1.4 §2.7.4): a header split over two
/// descriptors, data and status in one descriptor.
#[test]
fn any_descriptor_layout_is_accepted() {
    let mut fx = mem_fixture(8);
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::IN, 5), GuestAddress(h))
        .unwrap();
    let buf = fx.ring.alloc(513);
    fx.mem.write_obj(0xffu8, GuestAddress(buf + 512)).unwrap();
    fx.submit_raw(&[
        desc(h, 4, false),
        desc(h + 4, 12, false),
        desc(buf, 513, true),
    ]);
    assert_eq!(fx.notify()[0].1, 513);
    assert_eq!(
        fx.mem.read_obj::<u8>(GuestAddress(buf + 512)).unwrap(),
        status::OK
    );
    assert_eq!(fx.mem.read_obj::<u8>(GuestAddress(buf)).unwrap(), 5);
    // OUT with header and data in one readable descriptor.
    let hd = fx.ring.alloc(16 + 512);
    fx.mem
        .write_slice(&header(types::OUT, 0), GuestAddress(hd))
        .unwrap();
    fx.mem
        .write_slice(&[0x5a; 512], GuestAddress(hd + 16))
        .unwrap();
    let s = fx.ring.alloc(1);
    fx.submit_raw(&[desc(hd, 528, false), desc(s, 1, true)]);
    assert_eq!(fx.notify()[0].1, 1);
    assert!(fx.dev.backend().data()[..512].iter().all(|&b| b == 0x5a));
}

/// Buffers outside guest memory: IOERR (data) or used length 0 (status).
#[test]
fn buffers_outside_guest_memory_do_not_crash() {
    let mut fx = mem_fixture(8);
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::IN, 0), GuestAddress(h))
        .unwrap();
    let s = fx.ring.alloc(1);
    fx.submit_raw(&[
        desc(h, 16, false),
        desc(0x10_0000, 512, true),
        desc(s, 1, true),
    ]);
    assert_eq!(fx.notify()[0].1, 1);
    assert_eq!(
        fx.mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        status::IOERR
    );
    // The status byte itself outside memory.
    fx.submit_raw(&[desc(h, 16, false), desc(u64::MAX - 4, 1, true)]);
    assert_eq!(fx.notify()[0].1, 0);
    // The header outside memory.
    fx.submit_raw(&[desc(0x20_0000, 16, false), desc(s, 1, true)]);
    assert_eq!(fx.notify()[0].1, 1);
    assert_eq!(
        fx.mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        status::IOERR
    );
}

/// A descriptor loop is a queue error: the device logs it, stops serving
/// that queue, reports DEVICE_NEEDS_RESET (a configuration change
/// interrupt), and neither panics nor hangs.
#[test]
fn descriptor_loop_does_not_crash() {
    let mut fx = mem_fixture(8);
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::IN, 0), GuestAddress(h))
        .unwrap();
    fx.ring.write_desc(&fx.mem, 0, h, 16, F_NEXT, 1);
    fx.ring.write_desc(&fx.mem, 1, h, 16, F_NEXT | F_WRITE, 0);
    fx.ring.publish(&fx.mem, 0);
    assert!(fx.notify().is_empty());
    assert_eq!(fx.line.config(), 1, "DEVICE_NEEDS_RESET is announced");
    assert!(fx.notify().is_empty());
    assert_eq!(fx.line.used(), 0);
    assert_eq!(fx.line.config(), 1, "a broken queue stays quiet");
}

/// Readable descriptors after writable ones (the queue should refuse
/// these; the request parser does too): used length 0.
#[test]
fn readable_after_writable_completes_with_zero() {
    let mut disk = Disk::new(
        MemoryBackend::from_vec(image(2)),
        Limits {
            capacity: Capacity::new(2),
            read_only: false,
            max_discard_seg: 1,
            max_discard_sectors: 1,
            max_write_zeroes_seg: 1,
            max_write_zeroes_sectors: 1,
        },
        [0; 20],
    );
    let m = mem();
    m.write_slice(&header(types::IN, 0), GuestAddress(0x100))
        .unwrap();
    let descs = [
        desc(0x100, 16, false),
        desc(0x200, 512, true),
        desc(0x400, 1, false),
    ];
    assert_eq!(disk.process(&m, &descs, FEATURES, None), Some(0));
    // Empty chain.
    assert_eq!(disk.process(&m, &[], FEATURES, None), Some(0));
}

// ---- batching and interrupts ----

#[test]
fn one_interrupt_per_batch() {
    let mut fx = mem_fixture(8);
    for s in 0..3 {
        fx.submit(types::IN, s, &[], 512);
    }
    assert_eq!(fx.notify().len(), 3);
    assert_eq!(fx.line.used(), 1);
    // An empty notify raises nothing.
    assert!(fx.notify().is_empty());
    assert_eq!(fx.line.used(), 1);
    // The driver asked for no interrupts.
    fx.ring.set_avail_flags(&fx.mem, 1);
    fx.submit(types::IN, 0, &[], 512);
    assert_eq!(fx.notify().len(), 1);
    assert_eq!(fx.line.used(), 1);
}

#[test]
fn requests_before_activation_are_served_at_activation() {
    let m = mem();
    let mut ring = TestRing::new(16, 0);
    let h = ring.alloc(16);
    m.write_slice(&header(types::FLUSH, 0), GuestAddress(h))
        .unwrap();
    let s = ring.alloc(1);
    ring.add_chain(&m, &[desc(h, 16, false), desc(s, 1, true)]);
    let mut dev: Block<Mem, _> =
        Block::with_backend(MemoryBackend::new(512), BlockOptions::default()).unwrap();
    let (irq, line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(FEATURES)], FEATURES)
        .unwrap();
    assert_eq!(ring.take_used(&m), vec![(0, 1)]);
    assert_eq!(line.used(), 1);
    // After a reset nothing is served.
    dev.reset();
    ring.add_chain(&m, &[desc(h, 16, false), desc(s, 1, true)]);
    dev.queue_notify(0, None);
    assert!(ring.take_used(&m).is_empty());
}

#[test]
fn multi_queue_serves_every_queue() {
    let m = mem();
    let rings = [TestRing::new(16, 0), TestRing::new(16, 1)];
    let options = BlockOptions {
        num_queues: 2,
        ..BlockOptions::default()
    };
    let mut dev: Block<Mem, _> =
        Block::with_backend(MemoryBackend::from_vec(image(4)), options).unwrap();
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    assert_ne!(dev.device_features() & bit(blk::MQ), 0);
    let mut nq = [0u8; 2];
    dev.read_config(34, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 2);
    let (irq, _line) = interrupt();
    let mut rings = rings;
    dev.activate(
        m.clone(),
        irq,
        rings.iter().map(|r| r.queue(FEATURES)).collect(),
        FEATURES,
    )
    .unwrap();
    let h = rings[1].alloc(16);
    m.write_slice(&header(types::IN, 3), GuestAddress(h))
        .unwrap();
    let d = rings[1].alloc(513);
    rings[1].add_chain(&m, &[desc(h, 16, false), desc(d, 513, true)]);
    dev.queue_notify(1, None);
    assert_eq!(rings[1].take_used(&m), vec![(0, 513)]);
    assert_eq!(m.read_obj::<u8>(GuestAddress(d)).unwrap(), 3);
    // Queue reset stops serving that queue; queue_enable resumes.
    dev.queue_reset(1);
    rings[1].add_chain(&m, &[desc(h, 16, false), desc(d, 513, true)]);
    dev.queue_notify(1, None);
    assert!(rings[1].take_used(&m).is_empty());
    let mut q = rings[1].queue(FEATURES);
    q.set_next_avail(1);
    q.set_next_used(1);
    dev.queue_enable(1, q);
    assert_eq!(rings[1].take_used(&m), vec![(2, 513)]);
}

// ---- config space and features ----

fn config_of(dev: &Block<Mem, MemoryBackend>) -> [u8; 96] {
    let mut c = [0xaau8; 96];
    dev.read_config(0, &mut c);
    c
}

#[test]
fn config_layout_matches_the_spec() {
    let options = BlockOptions {
        blk_size: 4096,
        seg_max: Some(126),
        size_max: 65536,
        ..BlockOptions::default()
    };
    let dev: Block<Mem, _> =
        Block::with_backend(MemoryBackend::new(10 * 512 + 100), options).unwrap();
    let c = config_of(&dev);
    assert_eq!(
        u64::from_le_bytes(c[0..8].try_into().unwrap()),
        10,
        "capacity in sectors"
    );
    assert_eq!(
        u32::from_le_bytes(c[8..12].try_into().unwrap()),
        65536,
        "size_max"
    );
    assert_eq!(
        u32::from_le_bytes(c[12..16].try_into().unwrap()),
        126,
        "seg_max"
    );
    assert_eq!(
        u32::from_le_bytes(c[20..24].try_into().unwrap()),
        4096,
        "blk_size"
    );
    assert_eq!(
        u16::from_le_bytes(c[34..36].try_into().unwrap()),
        1,
        "num_queues"
    );
    assert!(c[60..].iter().all(|&b| b == 0), "past the end reads 0");
    // Default seg_max leaves room for header and status.
    let dev: Block<Mem, _> =
        Block::with_backend(MemoryBackend::new(512), BlockOptions::default()).unwrap();
    assert_eq!(
        u32::from_le_bytes(config_of(&dev)[12..16].try_into().unwrap()),
        254
    );
    // Odd offsets and lengths, huge offsets: no panic.
    let mut b = [0xaau8; 3];
    dev.read_config(10, &mut b);
    assert_eq!(b, [16, 0, 254]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 3]);
    dev.read_config(59, &mut b);
    assert_eq!(b, [0; 3]);
}

/// virtio v1.4 §5.2.5.1: padding `unused0` and `unused1` are 0; and, as
/// CONFIG_WCE is never offered, `writeback` reads 0.
#[test]
fn config_padding_and_writeback_are_zero() {
    let options = BlockOptions {
        discard: true,
        write_zeroes: true,
        ..BlockOptions::default()
    };
    let mut dev: Block<Mem, _> = Block::with_backend(MemoryBackend::new(4096), options).unwrap();
    let c = config_of(&dev);
    assert_eq!(c[32], 0, "writeback");
    assert_eq!(c[33], 0, "unused0");
    assert_eq!(&c[57..60], &[0, 0, 0], "unused1");
    assert_eq!(
        u32::from_le_bytes(c[40..44].try_into().unwrap()),
        32,
        "max_discard_seg"
    );
    // Writes are ignored.
    dev.write_config(32, &[1]);
    dev.write_config(0, &[0xff; 60]);
    assert_eq!(config_of(&dev), c);
}

/// virtio v1.4 §5.2.5.1 / §5.2.6.2: FLUSH offered (and CONFIG_WCE never,
/// so the FLUSH-with-CONFIG_WCE rule holds); ZONED and LIFETIME never
/// offered; RO exactly for read-only disks.
#[test]
fn offered_features() {
    let dev: Block<Mem, _> =
        Block::with_backend(MemoryBackend::new(512), BlockOptions::default()).unwrap();
    let f = dev.device_features();
    for b in [blk::FLUSH, blk::BLK_SIZE, blk::SEG_MAX, blk::SIZE_MAX] {
        assert_ne!(f & bit(b), 0, "bit {b}");
    }
    for b in [
        VIRTIO_F_EVENT_IDX,
        VIRTIO_F_INDIRECT_DESC,
        VIRTIO_F_RING_RESET,
    ] {
        assert_ne!(f & bit(b), 0, "bit {b}");
    }
    for b in [
        blk::RO,
        blk::CONFIG_WCE,
        blk::ZONED,
        blk::LIFETIME,
        blk::SECURE_ERASE,
        blk::MQ,
        blk::DISCARD,
        blk::WRITE_ZEROES,
        blk::GEOMETRY,
        blk::TOPOLOGY,
    ] {
        assert_eq!(f & bit(b), 0, "bit {b}");
    }
    let ro: Block<Mem, _> = Block::with_backend(
        MemoryBackend::new(512),
        BlockOptions {
            read_only: true,
            discard: true,
            write_zeroes: true,
            ..BlockOptions::default()
        },
    )
    .unwrap();
    assert_ne!(ro.device_features() & bit(blk::RO), 0);
    assert_ne!(ro.device_features() & bit(blk::DISCARD), 0);
    assert_eq!(ro.device_type(), vmmio_spec::device_id::BLOCK);
}

#[test]
fn invalid_options_are_rejected() {
    for options in [
        BlockOptions {
            num_queues: 0,
            ..BlockOptions::default()
        },
        BlockOptions {
            queue_size: 0,
            ..BlockOptions::default()
        },
        BlockOptions {
            queue_size: 65535,
            ..BlockOptions::default()
        },
        BlockOptions {
            blk_size: 1000,
            ..BlockOptions::default()
        },
        BlockOptions {
            blk_size: 256,
            ..BlockOptions::default()
        },
    ] {
        assert!(matches!(
            Block::<Mem, _>::with_backend(MemoryBackend::new(512), options),
            Err(BlockError::InvalidOption(_))
        ));
    }
}

// ---- durability ----

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    /// A write call at this byte offset, and the watched status bytes at
    /// that moment.
    Write(u64, Vec<u8>),
    /// A sync call, and the watched status bytes at that moment.
    Sync(Vec<u8>),
}

/// A backend that records writes and syncs, with a snapshot of the status
/// bytes of the watched requests at each call.
struct Recorder {
    inner: MemoryBackend,
    mem: Mem,
    watch: Watch,
    log: Log,
}

impl Recorder {
    fn snapshot(&self) -> Vec<u8> {
        let watch = self.watch.lock().unwrap();
        watch
            .iter()
            .map(|&a| self.mem.read_obj::<u8>(GuestAddress(a)).unwrap())
            .collect()
    }
}

impl Backend for Recorder {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        self.inner.read_at(offset, dst)
    }
    fn write_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        let snap = self.snapshot();
        self.log.lock().unwrap().push(Ev::Write(offset, snap));
        self.inner.write_at(offset, src)
    }
    fn flush(&mut self) -> io::Result<()> {
        let snap = self.snapshot();
        self.log.lock().unwrap().push(Ev::Sync(snap));
        Ok(())
    }
}

/// Guest addresses of the status bytes a [`Recorder`] snapshots.
type Watch = Arc<Mutex<Vec<u64>>>;
/// What a [`Recorder`] saw, in order.
type Log = Arc<Mutex<Vec<Ev>>>;

fn recorder_fixture(features: u64) -> (Fx<Recorder>, Watch, Log) {
    let m = mem();
    let watch = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let rec = Recorder {
        inner: MemoryBackend::new(8 * 512),
        mem: m.clone(),
        watch: watch.clone(),
        log: log.clone(),
    };
    let ring = TestRing::new(16, 0);
    let mut dev = Block::with_backend(rec, BlockOptions::default()).unwrap();
    let (irq, line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(features)], features)
        .unwrap();
    (
        Fx {
            mem: m,
            ring,
            dev,
            line,
        },
        watch,
        log,
    )
}

/// virtio v1.4 §5.2.6.2 (case 3): a FLUSH makes every write completed
/// before it stable before the FLUSH is reported complete. Recorded order:
/// both writes, then the sync, with the writes' statuses already written
/// and the flush's status not yet; the write after the flush comes later.
#[test]
fn flush_syncs_completed_writes_before_its_status() {
    let (mut fx, watch, log) = recorder_fixture(FEATURES);
    let w1 = fx.submit(types::OUT, 0, &[1; 512], 0);
    let w2 = fx.submit(types::OUT, 1, &[2; 1024], 0);
    let fl = fx.submit(types::FLUSH, 0, &[], 0);
    let w3 = fx.submit(types::OUT, 4, &[3; 512], 0);
    *watch.lock().unwrap() = vec![w1.status, w2.status, fl.status, w3.status];
    assert_eq!(fx.notify().len(), 4);
    let ff = 0xff;
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            Ev::Write(0, vec![ff, ff, ff, ff]),
            Ev::Write(512, vec![0, ff, ff, ff]),
            Ev::Sync(vec![0, 0, ff, ff]),
            Ev::Write(4 * 512, vec![0, 0, 0, ff]),
        ]
    );
    for r in [w1, w2, fl, w3] {
        assert_eq!(fx.status(r), status::OK);
    }
}

/// virtio v1.4 §5.2.6.2 (case 1): FLUSH offered but not negotiated, so
/// every write is stable before its own completion is reported.
#[test]
fn without_negotiated_flush_writes_are_synced_before_status() {
    let (mut fx, watch, log) = recorder_fixture(1 << blk::BLK_SIZE);
    let w1 = fx.submit(types::OUT, 0, &[1; 512], 0);
    let w2 = fx.submit(types::OUT, 1, &[2; 512], 0);
    *watch.lock().unwrap() = vec![w1.status, w2.status];
    fx.notify();
    let ff = 0xff;
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            Ev::Write(0, vec![ff, ff]),
            Ev::Sync(vec![ff, ff]),
            Ev::Write(512, vec![0, ff]),
            Ev::Sync(vec![0, ff]),
        ]
    );
    assert_eq!((fx.status(w1), fx.status(w2)), (status::OK, status::OK));
}

/// A failing backend gives IOERR, not a crash.
#[test]
fn host_io_errors_become_ioerr() {
    struct Failing;
    impl Backend for Failing {
        fn len(&self) -> u64 {
            4096
        }
        fn read_at<B: BitmapSlice>(&mut self, _: u64, _: &VolatileSlice<'_, B>) -> io::Result<()> {
            Err(io::Error::other("read failed"))
        }
        fn write_at<B: BitmapSlice>(&mut self, _: u64, _: &VolatileSlice<'_, B>) -> io::Result<()> {
            Err(io::Error::other("write failed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::other("sync failed"))
        }
    }
    let mut fx = fixture(Failing, BlockOptions::default(), FEATURES);
    let (_, st, len) = fx.run(types::IN, 0, &[], 512);
    assert_eq!((st, len), (status::IOERR, 1));
    assert_eq!(fx.run(types::OUT, 0, &[0; 512], 0).1, status::IOERR);
    assert_eq!(fx.run(types::FLUSH, 0, &[], 0).1, status::IOERR);
}

// ---- file backend ----

fn temp_path(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("vmmio-blk-{}-{n}-{name}", std::process::id()))
}

#[test]
fn file_backend_reads_and_writes_the_file_byte_for_byte() {
    let path = temp_path("disk.img");
    std::fs::write(&path, image(16)).unwrap();
    let m = mem();
    let ring = TestRing::new(16, 0);
    let options = BlockOptions {
        write_zeroes: true,
        discard: true,
        ..BlockOptions::default()
    };
    let mut dev: Block<Mem, FileBackend> = Block::from_path_with_options(&path, options).unwrap();
    assert_eq!(dev.capacity(), 16);
    assert_eq!(&dev.id()[..8], b"vmmio-bl");
    let (irq, line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(FEATURES)], FEATURES)
        .unwrap();
    let mut fx = Fx {
        mem: m,
        ring,
        dev,
        line,
    };
    let pattern: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(fx.run(types::OUT, 3, &pattern, 0).1, status::OK);
    // Sequential and non-sequential reads.
    let (r, st, _) = fx.run(types::IN, 3, &[], 2048);
    assert_eq!((st, fx.data(r)), (status::OK, pattern.clone()));
    let (r, st, _) = fx.run(types::IN, 0, &[], 512);
    assert_eq!((st, fx.data(r)), (status::OK, vec![0; 512]));
    let (r, st, _) = fx.run(types::IN, 15, &[], 512);
    assert_eq!((st, fx.data(r)), (status::OK, vec![15; 512]));
    assert_eq!(
        fx.run(types::WRITE_ZEROES, 0, &segment(10, 2, 0), 0).1,
        status::OK
    );
    assert_eq!(fx.run(types::FLUSH, 0, &[], 0).1, status::OK);
    let mut want = image(16);
    want[3 * 512..7 * 512].copy_from_slice(&pattern);
    want[10 * 512..12 * 512].fill(0);
    assert_eq!(std::fs::read(&path).unwrap(), want);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn read_only_file_is_opened_read_only() {
    let path = temp_path("ro.img");
    std::fs::write(&path, image(2)).unwrap();
    let mut dev: Block<Mem, FileBackend> = Block::from_path(&path, true).unwrap();
    assert!(dev.read_only());
    assert_ne!(dev.device_features() & bit(blk::RO), 0);
    let m = mem();
    let ring = TestRing::new(16, 0);
    let (irq, line) = interrupt();
    dev.activate(m.clone(), irq, vec![ring.queue(FEATURES)], FEATURES)
        .unwrap();
    let mut fx = Fx {
        mem: m,
        ring,
        dev,
        line,
    };
    assert_eq!(fx.run(types::OUT, 0, &[9; 512], 0).1, status::IOERR);
    let (r, st, _) = fx.run(types::IN, 1, &[], 512);
    assert_eq!((st, fx.data(r)), (status::OK, vec![1; 512]));
    assert_eq!(std::fs::read(&path).unwrap(), image(2));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn missing_file_is_an_open_error() {
    let err =
        Block::<Mem, FileBackend>::from_path("/nonexistent/vmmio/disk.img", false).unwrap_err();
    assert!(matches!(err, BlockError::Open { .. }));
    assert!(std::error::Error::source(&err).is_some());
}
