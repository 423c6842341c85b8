//! The driver (`vmmio-driver`) against the device side (`vmmio-device`)
//! through a loopback register window and one guest memory: block, entropy
//! and console, Version 1 and Version 2, split and packed rings (Version 2),
//! EVENT_IDX on and off, indirect descriptors on and off, and past the
//! 16-bit ring index wrap.

use std::sync::atomic::Ordering;

use vmmio_device::{ExecMode, TransportVersion};
use vmmio_driver::blk::{Block, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH};
use vmmio_driver::console::Console;
use vmmio_driver::rng::Entropy;
use vmmio_driver::{Dma, Error, Segment, Transport, Version};
use vmmio_integration::devices::{MemBlock, MemConsole, MemEntropy};
use vmmio_integration::{window_high, window_in, GuestHal, Loopback, HIGH_BASE};
use vmmio_spec::features::{
    bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_NOTIFICATION_DATA,
    VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET,
};

/// Transport bits every test device offers (a legacy window drops
/// RING_PACKED, bit 34).
const OFFERED: u64 = bit(VIRTIO_F_EVENT_IDX)
    | bit(VIRTIO_F_INDIRECT_DESC)
    | bit(VIRTIO_F_NOTIFICATION_DATA)
    | bit(VIRTIO_F_RING_RESET)
    | bit(VIRTIO_F_RING_PACKED);

#[derive(Clone, Copy, Debug)]
struct Cfg {
    exec: ExecMode,
    version: TransportVersion,
    event_idx: bool,
    indirect: bool,
    packed: bool,
}

impl Cfg {
    /// The transport features the driver may accept in this
    /// configuration (NOTIFICATION_DATA rides along with EVENT_IDX).
    fn mask(self) -> u64 {
        let mut m = bit(VIRTIO_F_RING_RESET);
        if self.event_idx {
            m |= bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_NOTIFICATION_DATA);
        }
        if self.indirect {
            m |= bit(VIRTIO_F_INDIRECT_DESC);
        }
        if self.packed {
            m |= bit(VIRTIO_F_RING_PACKED);
        }
        m
    }

    fn check(self, t: &Transport<Loopback>) {
        let v = match self.version {
            TransportVersion::Legacy => Version::Legacy,
            TransportVersion::Modern => Version::Modern,
        };
        assert_eq!(t.version(), v, "{self:?}");
        assert_eq!(
            t.has_feature(VIRTIO_F_EVENT_IDX),
            self.event_idx,
            "{self:?}"
        );
        assert_eq!(
            t.has_feature(VIRTIO_F_INDIRECT_DESC),
            self.indirect,
            "{self:?}"
        );
        assert_eq!(t.has_feature(VIRTIO_F_RING_PACKED), self.packed, "{self:?}");
    }
}

/// Every ring configuration (packed rings need Version 2), first with the
/// device run synchronously, then the same ones with it on its worker
/// thread.
fn configs() -> Vec<Cfg> {
    let mut v = Vec::new();
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        for (version, packed) in [
            (TransportVersion::Legacy, false),
            (TransportVersion::Modern, false),
            (TransportVersion::Modern, true),
        ] {
            for event_idx in [false, true] {
                for indirect in [false, true] {
                    v.push(Cfg {
                        exec,
                        version,
                        event_idx,
                        indirect,
                        packed,
                    });
                }
            }
        }
    }
    v
}

fn probe(cfg: Cfg, io: Loopback) -> Transport<Loopback> {
    let mut t = Transport::probe(io)
        .expect("probe")
        .expect("a device, not an empty slot");
    t.set_transport_features(cfg.mask());
    t
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 256) as u8)
        .collect()
}

#[test]
fn block_read_write_flush_get_id_in_every_configuration() {
    for cfg in configs() {
        let (dev, disk) = MemBlock::new(
            512,
            OFFERED | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_BLK_SIZE),
        );
        let w = window_in(cfg.exec, cfg.version, Box::new(dev));
        let hal = w.hal.clone();
        let mut b = Block::new(probe(cfg, w.io), w.hal).unwrap();
        cfg.check(b.transport());
        assert_eq!(b.capacity(), 512);
        assert_eq!(b.blk_size(), Some(512));
        let data = pattern(1, 8 * 512);
        b.write_blocks(3, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        b.read_blocks(3, &mut back).unwrap();
        assert_eq!(back, data, "{cfg:?}");
        assert_eq!(disk.lock().unwrap()[3 * 512..11 * 512], data[..]);
        // Longer than one request: split into chunks.
        let big = pattern(2, 300 * 512);
        b.write_blocks(200, &big).unwrap();
        let mut big_back = vec![0u8; big.len()];
        b.read_blocks(200, &mut big_back).unwrap();
        assert_eq!(big_back, big, "{cfg:?}");
        b.flush().unwrap();
        assert_eq!(&b.get_id().unwrap()[..13], b"loopback-disk");
        assert!(matches!(
            b.read_blocks(510, &mut back),
            Err(Error::OutOfRange { .. })
        ));
        // A worker raises the interrupt after it published the used ring (used ring first,
        // then the notification), so the driver may see the completion before
        // InterruptStatus: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut ev = b.handle_interrupt().unwrap();
        while !ev.used_buffers && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            ev = b.handle_interrupt().unwrap();
        }
        assert!(ev.used_buffers, "{cfg:?}");
        assert!(w.line.count.load(Ordering::SeqCst) > 0);
        drop(b);
        assert_eq!(hal.pages_in_use(), 0, "{cfg:?}: DMA pages leaked");
    }
}

#[test]
fn block_with_every_ring_above_4_gib() {
    // Both versions: Modern through the High halves of the three area
    // registers, Legacy through a QueuePFN of 0x123400 and up. The data
    // round trip shows the device used the addresses the driver gave.
    for cfg in configs() {
        if cfg.exec != ExecMode::Sync {
            continue;
        }
        let (dev, disk) = MemBlock::new(64, OFFERED);
        let w = window_high(cfg.version, Box::new(dev));
        let hal = w.hal.clone();
        let mut b = Block::new(probe(cfg, w.io), w.hal).unwrap();
        let q = b.transport().io_mut().transport.queue(0).unwrap();
        let (desc, driver, device) = q.addresses();
        for a in [desc, driver, device] {
            assert!(a >= HIGH_BASE, "{cfg:?}: ring area at {a:#x}");
        }
        let data = pattern(5, 4 * 512);
        b.write_blocks(7, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        b.read_blocks(7, &mut back).unwrap();
        assert_eq!(back, data, "{cfg:?}");
        assert_eq!(disk.lock().unwrap()[7 * 512..11 * 512], data[..]);
        drop(b);
        assert_eq!(hal.pages_in_use(), 0, "{cfg:?}");
    }
}

#[test]
fn block_past_the_16_bit_index_wrap() {
    const REQUESTS: usize = 70_000;
    // Sync: half the split configurations, and packed without and with
    // EVENT_IDX + INDIRECT (both wrap counters flip thousands of times);
    // worker: one per layout (each request is a cross-thread wake-up, the
    // slow part of this test).
    for (i, cfg) in configs().into_iter().enumerate().filter(|(i, _)| {
        if *i < 8 {
            i % 2 == i / 4 % 2
        } else if *i < 12 {
            *i == 8 || *i == 11
        } else {
            i % 4 == 3
        }
    }) {
        let (dev, _disk) = MemBlock::new(64, OFFERED);
        let w = window_in(cfg.exec, cfg.version, Box::new(dev));
        let mut b = Block::with_queue_size(probe(cfg, w.io), w.hal, 8).unwrap();
        let mut buf = vec![0u8; 512];
        for r in 0..REQUESTS / 2 {
            let sector = (r % 64) as u64;
            let data = [(r % 251) as u8, (r / 251 % 256) as u8, i as u8];
            buf[..3].copy_from_slice(&data);
            b.write_blocks(sector, &buf).unwrap();
            buf[..3].fill(0);
            b.read_blocks(sector, &mut buf).unwrap();
            assert_eq!(buf[..3], data, "{cfg:?} request {r}");
        }
    }
}

#[test]
fn entropy_in_every_configuration() {
    for cfg in configs() {
        let w = window_in(cfg.exec, cfg.version, Box::new(MemEntropy::new(OFFERED)));
        let hal = w.hal.clone();
        let mut e = Entropy::new(probe(cfg, w.io), w.hal).unwrap();
        cfg.check(e.transport());
        let mut buf = [0u8; 100];
        assert_eq!(e.read(&mut buf).unwrap(), 100);
        assert_eq!(buf[..4], [1, 2, 3, 4], "{cfg:?}");
        let mut big = vec![0u8; 10_000];
        e.fill(&mut big).unwrap();
        assert_eq!(big[0], 101);
        assert_eq!(big[9_999], ((100 + 10_000) % 256) as u8);
        drop(e);
        assert_eq!(hal.pages_in_use(), 0, "{cfg:?}");
    }
}

#[test]
fn console_in_every_configuration() {
    for cfg in configs() {
        let (dev, handle) = MemConsole::new(OFFERED);
        let w = window_in(cfg.exec, cfg.version, Box::new(dev));
        let hal = w.hal.clone();
        let mut c = Console::new(probe(cfg, w.io), w.hal).unwrap();
        cfg.check(c.transport());
        assert_eq!(c.size(), Some((80, 25)));
        c.write(b"hello, device\n").unwrap();
        let long = pattern(3, 9000);
        c.write(&long).unwrap();
        let out = handle.output();
        assert_eq!(&out[..14], b"hello, device\n");
        assert_eq!(out[14..], long[..], "{cfg:?}");

        let mut buf = vec![0u8; 16_384];
        assert_eq!(c.read(&mut buf).unwrap(), 0);
        handle.type_in(b"typed");
        assert_eq!(c.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"typed");
        // More input than the posted receive buffers hold: it arrives as
        // the driver reposts them (on the worker thread: asynchronously,
        // so the bound is a generous deadline, not a read count).
        let input = pattern(4, 10_000);
        handle.type_in(&input);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while got.len() < input.len() && std::time::Instant::now() < deadline {
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                std::thread::yield_now();
            }
        }
        assert!(
            got == input,
            "{cfg:?}: {} of {} bytes",
            got.len(),
            input.len()
        );
        drop(c);
        assert_eq!(hal.pages_in_use(), 0, "{cfg:?}");
    }
}

/// The raw queue API with caller buffers shared through the HAL (bounced
/// through guest pages), and a queue reset with new parameters
/// (VIRTIO_F_RING_RESET).
#[test]
fn shared_buffers_and_queue_reset_with_new_size() {
    for packed in [false, true] {
        shared_buffers_and_queue_reset(packed);
    }
}

fn shared_buffers_and_queue_reset(packed: bool) {
    let cfg = Cfg {
        exec: ExecMode::Worker,
        version: TransportVersion::Modern,
        event_idx: true,
        indirect: true,
        packed,
    };
    let w = window_in(cfg.exec, cfg.version, Box::new(MemEntropy::new(OFFERED)));
    let hal: GuestHal = w.hal.clone();
    let mut t = probe(cfg, w.io);
    t.begin_init(0).unwrap();
    assert!(t.has_feature(VIRTIO_F_RING_RESET));
    cfg.check(&t);
    let mut q = t.setup_queue(hal.clone(), 0, 64).unwrap();
    assert_eq!((q.size(), q.packed()), (64, packed));
    t.finish_init().unwrap();

    let mut a = [0u8; 10];
    let mut b = [0u8; 6];
    // SAFETY: `a` and `b` are not touched until the chain is popped below.
    let token = unsafe { q.add(&[], &mut [&mut a, &mut b]) }.unwrap();
    t.notify_if_needed(&mut q).unwrap();
    assert_eq!(t.wait_used(&mut q, token).unwrap(), 16);
    assert_eq!(a, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(b, [11, 12, 13, 14, 15, 16]);

    t.reset_queue(q).unwrap();
    let mut q = t.setup_queue(hal.clone(), 0, 16).unwrap();
    assert_eq!(q.size(), 16);
    let dma = Dma::new(hal.clone(), 64).unwrap();
    let seg = Segment {
        addr: dma.paddr(),
        len: 4,
    };
    // SAFETY: `dma` outlives the chain, which completes before it drops.
    let token = unsafe { q.add_segments(&[], &[seg]) }.unwrap();
    t.notify(&mut q).unwrap();
    assert_eq!(t.wait_used(&mut q, token).unwrap(), 4);
    let mut got = [0u8; 4];
    dma.read_bytes(0, &mut got).unwrap();
    assert_eq!(got, [17, 18, 19, 20]);

    t.reset().unwrap();
    t.teardown_queue(q).unwrap();
    drop(dma);
    assert_eq!(hal.pages_in_use(), 0);
}

/// The zero-copy path: the device reads and writes the caller's DMA buffer
/// itself; the driver allocates no bounce buffer (its page count does not
/// move), and the data lands on the disk and comes back.
#[test]
fn block_zero_copy_through_a_caller_dma_buffer() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        let cfg = Cfg {
            exec,
            version: TransportVersion::Modern,
            event_idx: true,
            indirect: false,
            packed: false,
        };
        let (dev, disk) = MemBlock::new(8192, OFFERED | bit(VIRTIO_BLK_F_FLUSH));
        let w = window_in(cfg.exec, cfg.version, Box::new(dev));
        let hal = w.hal.clone();
        let mut b = Block::new(probe(cfg, w.io), w.hal).unwrap();
        let len = (2 << 20) + 3 * 512; // three MAX_DMA_TRANSFER requests
        let mut buf = Dma::new(hal.clone(), len).unwrap();
        let data = pattern(9, len);
        buf.write_bytes(0, &data).unwrap();
        let pages = hal.pages_in_use();
        let buf = b.write_blocks_dma(7, buf, len).unwrap();
        assert_eq!(
            disk.lock().unwrap()[7 * 512..7 * 512 + len],
            data[..],
            "{cfg:?}"
        );
        let mut buf = buf;
        buf.write_bytes(0, &vec![0u8; len]).unwrap();
        let buf = b.read_blocks_dma(7, buf, len).unwrap();
        let mut back = vec![0u8; len];
        buf.read_bytes(0, &mut back).unwrap();
        assert!(back == data, "{cfg:?}");
        assert_eq!(hal.pages_in_use(), pages, "no bounce buffer: {cfg:?}");
        // A length past the buffer is refused before anything is sent.
        let small = Dma::new(hal.clone(), 4096).unwrap();
        assert!(matches!(
            b.read_blocks_dma(0, small, 8192),
            Err(Error::DmaOutOfBounds { .. })
        ));
        drop(buf);
        drop(b);
        assert_eq!(hal.pages_in_use(), 0, "{cfg:?}");
    }
}
