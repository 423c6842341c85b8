//! A hostile device against the driver: a scripted register file (see
//! `common/scripted.rs`) that breaks the rules of virtio v1.4 one at a
//! time. The driver must answer every fault with an `Error`, never panic,
//! and never wait without a bound.

#![allow(clippy::cast_possible_truncation)]

#[path = "common/scripted.rs"]
mod scripted;

use scripted::{blk_handler, console_handler, rng_handler, Scripted};
use vmmio_driver::blk::Block;
use vmmio_driver::console::Console;
use vmmio_driver::rng::Entropy;
#[allow(unused_imports)]
use vmmio_driver::{BufferDirection, Hal, RegisterIo};
use vmmio_driver::{Error, IdentityHal, Limits, Transport};
use vmmio_spec::device_id::{BLOCK, CONSOLE, ENTROPY};
use vmmio_spec::{mmio, status};

/// Small budgets so that a wait that would never end fails fast.
fn limits() -> Limits {
    Limits {
        reset_polls: 100,
        queue_polls: 100,
        config_retries: 8,
        io_polls: 1000,
    }
}

fn block_device() -> Scripted {
    let mut s = Scripted::new(2, BLOCK, 1, 64);
    s.handler = Some(blk_handler);
    s.disk = vec![0x33; 16 * 512];
    s.config = vec![0; 64];
    s.config[0] = 16;
    s
}

fn block(s: &mut Scripted) -> Result<Block<&mut Scripted, IdentityHal>, Error> {
    let t = Transport::probe_with_limits(s, limits())?.expect("device present");
    Block::new(t, IdentityHal)
}

#[test]
fn bad_magic_is_rejected_with_its_value() {
    let mut s = block_device();
    s.magic = 0x7472_6977;
    assert_eq!(
        Transport::probe(&mut s).unwrap_err(),
        Error::BadMagic(0x7472_6977)
    );
    assert_eq!(s.log.len(), 1);
}

#[test]
fn version_3_is_rejected_with_its_value() {
    let mut s = block_device();
    s.version = 3;
    assert_eq!(
        Transport::probe(&mut s).unwrap_err(),
        Error::UnsupportedVersion(3)
    );
    let mut s = block_device();
    s.version = 0;
    assert_eq!(
        Transport::probe(&mut s).unwrap_err(),
        Error::UnsupportedVersion(0)
    );
}

#[test]
fn device_id_0_is_an_empty_slot_and_nothing_past_device_id_is_touched() {
    let mut s = block_device();
    s.device_id = 0;
    assert!(Transport::probe(&mut s).unwrap().is_none());
    let offsets: Vec<(bool, u64)> = s.log.iter().map(|a| (a.write, a.offset)).collect();
    assert_eq!(
        offsets,
        [
            (false, mmio::MAGIC),
            (false, mmio::VERSION),
            (false, mmio::DEVICE_ID)
        ]
    );
}

#[test]
fn queue_size_max_0_is_queue_absent_and_sets_failed() {
    let mut s = block_device();
    s.queues[0].max = 0;
    assert_eq!(block(&mut s).unwrap_err(), Error::QueueAbsent(0));
    assert_ne!(s.status & status::FAILED, 0);
    assert!(s.writes_to(mmio::QUEUE_SIZE).is_empty());
    assert!(s.writes_to(mmio::QUEUE_READY).is_empty());
}

#[test]
fn features_ok_refused_sets_failed() {
    let mut s = block_device();
    s.refuse_features = true;
    assert!(matches!(
        block(&mut s).unwrap_err(),
        Error::FeaturesRefused { .. }
    ));
    assert_ne!(s.status & status::FAILED, 0);
    assert_eq!(s.status & status::DRIVER_OK, 0);
}

#[test]
fn version_2_without_version_1_sets_failed() {
    let mut s = block_device();
    s.device_features = 0;
    assert!(matches!(
        block(&mut s).unwrap_err(),
        Error::Version1NotOffered { .. }
    ));
    assert_ne!(s.status & status::FAILED, 0);
}

#[test]
fn status_never_reaching_0_after_reset_times_out() {
    let mut s = block_device();
    s.status = status::ACKNOWLEDGE;
    s.reset_stuck = true;
    assert!(matches!(block(&mut s).unwrap_err(), Error::Timeout { .. }));
    let polls = s
        .control_log()
        .iter()
        .filter(|a| !a.write && a.offset == mmio::STATUS)
        .count();
    assert_eq!(polls, 100);
}

#[test]
fn used_id_out_of_range_is_an_error() {
    let mut s = block_device();
    let mut b = block(&mut s).unwrap();
    b.transport().io_mut().used_id_override = Some(1000);
    let mut buf = [0u8; 512];
    assert_eq!(
        b.read_blocks(0, &mut buf),
        Err(Error::UsedIdOutOfRange {
            queue: 0,
            id: 1000,
            size: 64
        })
    );
    b.transport().io_mut().used_id_override = Some(u32::MAX);
    assert_eq!(b.read_blocks(0, &mut buf), Err(Error::Broken));
}

#[test]
fn used_id_not_in_flight_is_an_error() {
    let mut s = block_device();
    let mut b = block(&mut s).unwrap();
    // The chain occupies descriptors 0..3; descriptor 5 heads nothing.
    b.transport().io_mut().used_id_override = Some(5);
    let mut buf = [0u8; 512];
    assert_eq!(
        b.read_blocks(0, &mut buf),
        Err(Error::UsedIdNotInFlight { queue: 0, id: 5 })
    );
}

#[test]
fn used_id_naming_a_descriptor_inside_a_chain_is_not_in_flight() {
    let mut s = block_device();
    let mut b = block(&mut s).unwrap();
    // A read is the chain 0 -> 1 -> 2 with head 0: descriptor 1 is busy
    // but heads nothing.
    b.transport().io_mut().used_id_override = Some(1);
    let mut buf = [0u8; 512];
    assert_eq!(
        b.read_blocks(0, &mut buf),
        Err(Error::UsedIdNotInFlight { queue: 0, id: 1 })
    );
}

#[test]
fn used_length_too_large_is_an_error() {
    let mut s = Scripted::new(2, ENTROPY, 1, 8);
    s.handler = Some(rng_handler);
    s.used_len_override = Some(64);
    let t = Transport::probe_with_limits(&mut s, limits())
        .unwrap()
        .unwrap();
    let mut e = Entropy::new(t, IdentityHal).unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(
        e.read(&mut buf),
        Err(Error::UsedLenTooLarge {
            queue: 0,
            id: 0,
            len: 64,
            max: 32
        })
    );
}

#[test]
fn used_idx_running_ahead_is_an_error() {
    let mut s = Scripted::new(2, ENTROPY, 1, 8);
    let t = Transport::probe_with_limits(&mut s, limits())
        .unwrap()
        .unwrap();
    let mut e = Entropy::new(t, IdentityHal).unwrap();
    // The device claims 100 completions on a queue of 8.
    let io = e.transport().io_mut();
    for _ in 0..100 {
        io.push_used(0, 0, 0);
    }
    let mut buf = [0u8; 8];
    assert!(matches!(
        e.read(&mut buf),
        Err(Error::UsedIdxInvalid { size: 8, .. })
    ));
}

#[test]
fn device_that_never_completes_times_out() {
    let mut s = block_device();
    s.handler = None;
    let mut b = block(&mut s).unwrap();
    let mut buf = [0u8; 512];
    assert!(matches!(
        b.read_blocks(0, &mut buf),
        Err(Error::Timeout { .. })
    ));
    // The request may still be in flight: the driver refuses new ones.
    assert_eq!(b.read_blocks(0, &mut buf), Err(Error::Broken));
}

#[test]
fn interrupt_status_stuck_at_1_never_spins() {
    let mut s = Scripted::new(2, CONSOLE, 2, 8);
    s.handler = Some(console_handler);
    s.interrupt_stuck = true;
    let t = Transport::probe_with_limits(&mut s, limits())
        .unwrap()
        .unwrap();
    let mut c = Console::new(t, IdentityHal).unwrap();
    c.transport().io_mut().interrupt_status = 1 | 0xfff0;
    for _ in 0..10 {
        let ev = c.handle_interrupt().unwrap();
        assert!(ev.used_buffers && !ev.config_changed);
    }
    drop(c);
    // Each interrupt: one read, one ACK of the defined bit it saw.
    assert_eq!(s.acks, vec![1; 10]);
    assert!(s.acks.iter().all(|a| a & !3 == 0));
}

#[test]
fn device_needs_reset_is_surfaced_and_recoverable() {
    let mut s = block_device();
    let mut b = block(&mut s).unwrap();
    b.transport().io_mut().needs_reset_on_notify = true;
    let mut buf = [0u8; 512];
    assert_eq!(b.read_blocks(0, &mut buf), Err(Error::DeviceNeedsReset));
    b.transport().io_mut().needs_reset_on_notify = false;
    b.reinit().unwrap();
    b.read_blocks(0, &mut buf).unwrap();
    assert_eq!(buf, [0x33; 512]);
}

#[test]
fn config_generation_that_never_settles_fails_init() {
    let mut s = block_device();
    s.generation_flips = u32::MAX;
    assert!(matches!(block(&mut s).unwrap_err(), Error::Timeout { .. }));
    assert_ne!(s.status & status::FAILED, 0);
}

/// An [`IdentityHal`] that keeps the list of DMA allocations it handed
/// out, each with whether it was given back.
#[derive(Clone, Default)]
struct CountingHal(std::sync::Arc<std::sync::Mutex<Vec<(u64, usize, bool)>>>);

impl CountingHal {
    /// Pages allocated and not freed.
    fn pages_in_use(&self) -> usize {
        let allocs = self.0.lock().unwrap();
        allocs.iter().filter(|a| a.2).map(|a| a.1).sum()
    }

    /// Whether the byte at device address `addr` lies in a live allocation.
    fn is_live(&self, addr: u64) -> bool {
        let allocs = self.0.lock().unwrap();
        allocs.iter().any(|&(paddr, pages, live)| {
            live && addr >= paddr && addr - paddr < (pages * vmmio_driver::PAGE_SIZE) as u64
        })
    }
}

// SAFETY: every call is forwarded to `IdentityHal`, which keeps its
// promises; the list only observes.
unsafe impl Hal for CountingHal {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, core::ptr::NonNull<u8>)> {
        let r = IdentityHal.dma_alloc(pages)?;
        self.0.lock().unwrap().push((r.0, pages, true));
        Some(r)
    }

    unsafe fn dma_dealloc(&self, paddr: u64, vaddr: core::ptr::NonNull<u8>, pages: usize) {
        let mut allocs = self.0.lock().unwrap();
        let a = allocs.iter_mut().find(|a| a.0 == paddr && a.2);
        let a = a.expect("dma_dealloc of memory that is not allocated");
        assert_eq!(a.1, pages);
        a.2 = false;
        // SAFETY: forwarded as received.
        unsafe { IdentityHal.dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn share(
        &self,
        buffer: core::ptr::NonNull<[u8]>,
        direction: BufferDirection,
    ) -> Option<u64> {
        // SAFETY: forwarded as received.
        unsafe { IdentityHal.share(buffer, direction) }
    }

    unsafe fn unshare(
        &self,
        paddr: u64,
        buffer: core::ptr::NonNull<[u8]>,
        direction: BufferDirection,
    ) {
        // SAFETY: forwarded as received.
        unsafe { IdentityHal.unshare(paddr, buffer, direction) }
    }
}

#[test]
fn queue_that_stops_is_freed() {
    // The control for the test below: a device that resets and stops its
    // queue gets every DMA page back.
    let hal = CountingHal::default();
    let mut s = block_device();
    let t = Transport::probe_with_limits(&mut s, limits())
        .unwrap()
        .unwrap();
    let b = Block::new(t, hal.clone()).unwrap();
    assert!(hal.pages_in_use() > 0);
    drop(b);
    assert_eq!(hal.pages_in_use(), 0);
}

#[test]
fn queue_that_will_not_stop_is_leaked_not_freed() {
    // §4.2.3.1.1/§2.4: memory the device may still access is never freed.
    // The device ignores both QueueReady = 0 and the reset: the pages of
    // the three ring areas stay allocated (leaked) when the driver is
    // dropped, without a panic.
    let hal = CountingHal::default();
    let mut s = block_device();
    let t = Transport::probe_with_limits(&mut s, limits())
        .unwrap()
        .unwrap();
    let mut b = Block::new(t, hal.clone()).unwrap();
    let q = b.transport().io_mut().queues[0].clone();
    let areas = [q.desc, q.driver, q.device];
    assert!(areas.iter().all(|&a| hal.is_live(a)), "{areas:x?}");
    b.transport().io_mut().queue_stop_stuck = true;
    b.transport().io_mut().reset_stuck = true;
    drop(b);
    for a in areas {
        assert!(
            hal.is_live(a),
            "ring area at {a:#x} freed while the device may use it"
        );
    }
}

/// A register file that answers every read with a pseudo-random value and
/// ignores writes. Whatever it says, the class drivers return (Ok or
/// Err) without panicking and within their budgets.
struct Chaos {
    state: u64,
    magic_ok: bool,
}

impl Chaos {
    fn next(&mut self) -> u32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 16) as u32
    }
}

impl RegisterIo for Chaos {
    fn read_reg(&mut self, offset: u64) -> u32 {
        let r = self.next();
        match offset {
            mmio::MAGIC if self.magic_ok => mmio::MAGIC_VALUE,
            mmio::VERSION => 1 + (r & 1),
            mmio::DEVICE_ID => [BLOCK, ENTROPY, CONSOLE][(r % 3) as usize],
            // Mostly small values, so that init gets far.
            mmio::STATUS | mmio::QUEUE_READY | mmio::LEGACY_QUEUE_PFN | mmio::QUEUE_RESET => {
                if r.is_multiple_of(4) {
                    r
                } else {
                    0
                }
            }
            _ => {
                if r.is_multiple_of(2) {
                    r & 0xff
                } else {
                    r
                }
            }
        }
    }
    fn write_reg(&mut self, _offset: u64, _value: u32) {}
    fn read_config_u8(&mut self, _offset: u64) -> u8 {
        self.next() as u8
    }
    fn read_config_u16(&mut self, _offset: u64) -> u16 {
        self.next() as u16
    }
    fn read_config_u32(&mut self, _offset: u64) -> u32 {
        self.next()
    }
    fn write_config_u8(&mut self, _offset: u64, _value: u8) {}
    fn write_config_u16(&mut self, _offset: u64, _value: u16) {}
    fn write_config_u32(&mut self, _offset: u64, _value: u32) {}
}

#[test]
fn random_register_values_never_panic_or_hang() {
    for seed in 1..400u64 {
        let io = Chaos {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            magic_ok: seed % 10 != 0,
        };
        let mut l = limits();
        l.io_polls = 20;
        let Ok(Some(t)) = Transport::probe_with_limits(io, l) else {
            continue;
        };
        let mut buf = [0u8; 512];
        match t.device_id() {
            BLOCK => {
                if let Ok(mut b) = Block::new(t, IdentityHal) {
                    let _ = b.read_blocks(0, &mut buf);
                    let _ = b.handle_interrupt();
                }
            }
            ENTROPY => {
                if let Ok(mut e) = Entropy::new(t, IdentityHal) {
                    let _ = e.read(&mut buf);
                }
            }
            _ => {
                if let Ok(mut c) = Console::new(t, IdentityHal) {
                    let _ = c.write(b"x");
                    let _ = c.read(&mut buf);
                    let _ = c.handle_interrupt();
                }
            }
        }
    }
}

/// The device answers with random used ids and lengths. The first request
/// (a 2-sector read: 1025 writable bytes with the status byte) gets the
/// error the spec's rule names (§2.7.8: id in range and in flight, len no
/// more than the writable bytes; §2.7.8.2: len covers what the driver
/// reads); after a fault that leaves the request in flight the driver
/// refuses further work (`Error::Broken`); a short completion does not
/// break it.
#[test]
fn random_used_entries_get_the_matching_error() {
    let mut state = 0x1234_5678u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut seen = [0usize; 5];
    for _ in 0..300 {
        let mut s = block_device();
        let id = match next() % 3 {
            0 => None,
            1 => Some((next() % 80) as u32),
            _ => Some(next() as u32),
        };
        let len = match next() % 4 {
            0 => None,
            1 => Some((next() % 600) as u32),
            2 => Some(1025),
            _ => Some(next() as u32),
        };
        s.used_id_override = id;
        s.used_len_override = len;
        let mut b = block(&mut s).unwrap();
        let size = b.transport().io_mut().queues[0].size;
        let mut buf = [0u8; 1024];
        let sector = next() % 15;
        let first = b.read_blocks(sector, &mut buf);
        // The driver's first chain has head 0.
        let (want, broken) = match (id, len) {
            (Some(x), _) if x >= size => (
                Err(Error::UsedIdOutOfRange {
                    queue: 0,
                    id: x,
                    size: size as u16,
                }),
                true,
            ),
            (Some(x), _) if x != 0 => (Err(Error::UsedIdNotInFlight { queue: 0, id: x }), true),
            (_, Some(l)) if l > 1025 => (
                Err(Error::UsedLenTooLarge {
                    queue: 0,
                    id: 0,
                    len: l,
                    max: 1025,
                }),
                true,
            ),
            (_, Some(l)) if l < 1025 => (
                Err(Error::ShortCompletion {
                    len: l,
                    needed: 1025,
                }),
                false,
            ),
            _ => (Ok(()), false),
        };
        assert_eq!(first, want, "id {id:?} len {len:?}");
        seen[match &want {
            Ok(()) => 0,
            Err(Error::UsedIdOutOfRange { .. }) => 1,
            Err(Error::UsedIdNotInFlight { .. }) => 2,
            Err(Error::UsedLenTooLarge { .. }) => 3,
            Err(_) => 4,
        }] += 1;
        if first.is_ok() {
            assert!(buf.iter().all(|&x| x == 0x33), "read data");
        }
        let second = b.get_id();
        if broken {
            assert_eq!(second.unwrap_err(), Error::Broken);
            assert_eq!(b.write_blocks(1, &buf[..512]).unwrap_err(), Error::Broken);
        } else {
            // Not broken: later requests reach the device (and meet the
            // same override).
            assert_ne!(second.err(), Some(Error::Broken));
        }
    }
    // Every class of answer was exercised.
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

/// Builds a class driver of type `$ty` on a scripted device `$dev` with a
/// [`CountingHal`], then drops it twice over: with a device that stops
/// (it is reset and every DMA page is freed) and with one that ignores
/// both the reset and `QueueReady` = 0 (no page is freed: all of them may
/// still be in use).
macro_rules! drop_frees_only_what_the_device_stopped_using {
    ($ty:ty, $dev:expr) => {
        for stuck in [false, true] {
            let hal = CountingHal::default();
            let mut s: Scripted = $dev;
            let t = Transport::probe_with_limits(&mut s, limits())
                .unwrap()
                .unwrap();
            let mut d = <$ty>::new(t, hal.clone()).unwrap();
            let held = hal.pages_in_use();
            assert!(held > 0);
            d.transport().io_mut().queue_stop_stuck = stuck;
            d.transport().io_mut().reset_stuck = stuck;
            drop(d);
            let left = if stuck { held } else { 0 };
            assert_eq!(
                hal.pages_in_use(),
                left,
                "{} stuck={stuck}",
                stringify!($ty)
            );
            // A driver that initialised resets the device when dropped.
            assert_eq!(s.status == 0, !stuck, "{}", stringify!($ty));
        }
    };
}

#[test]
fn every_class_driver_frees_its_pages_only_once_the_device_stopped() {
    use vmmio_driver::net::Net;
    use vmmio_driver::vsock::Vsock;
    drop_frees_only_what_the_device_stopped_using!(Block<_, CountingHal>, block_device());
    drop_frees_only_what_the_device_stopped_using!(
        Entropy<_, CountingHal>,
        Scripted::new(2, ENTROPY, 1, 8)
    );
    drop_frees_only_what_the_device_stopped_using!(
        Console<_, CountingHal>,
        Scripted::new(2, CONSOLE, 2, 16)
    );
    drop_frees_only_what_the_device_stopped_using!(Net<_, CountingHal>, {
        let mut s = Scripted::new(2, vmmio_spec::device_id::NET, 2, 16);
        s.config = vec![0; 12];
        s
    });
    drop_frees_only_what_the_device_stopped_using!(Vsock<_, CountingHal>, {
        let mut s = Scripted::new(2, vmmio_spec::device_id::VSOCK, 3, 16);
        s.device_features |= 1 << vmmio_spec::vsock::F_STREAM;
        s.config = 3u64.to_le_bytes().to_vec();
        s
    });
}

fn park(_: &mut Scripted, _: u32, _: &scripted::Chain) -> Option<u32> {
    None
}

/// A queued zero-copy request still in flight when the device refuses to
/// stop: its header page and the caller's buffer are leaked with the
/// rest, never freed.
#[test]
fn queued_requests_of_a_device_that_never_stops_are_leaked() {
    use vmmio_driver::blk::DmaOp;
    use vmmio_driver::Dma;
    let hal = CountingHal::default();
    let mut s = block_device();
    s.handler = Some(park);
    let t = Transport::probe_with_limits(&mut s, limits())
        .unwrap()
        .unwrap();
    let mut b = Block::new(t, hal.clone()).unwrap();
    let buf = Dma::new(hal.clone(), 512).unwrap();
    b.submit_dma(DmaOp::Read, 0, buf, 512).unwrap();
    let held = hal.pages_in_use();
    b.transport().io_mut().queue_stop_stuck = true;
    b.transport().io_mut().reset_stuck = true;
    assert!(matches!(b.reinit(), Err(Error::Timeout { .. })));
    assert_eq!(hal.pages_in_use(), held);
}
