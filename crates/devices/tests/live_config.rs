//! Host-side configuration changes while the driver runs (virtio v1.4 §2.5
//! "Device Configuration Space", §4.2.2 `ConfigGeneration`): a handle on
//! another thread changes a device's configuration in a stream while the
//! window's owner reads it through `MmioTransport` as a driver does
//! (generation, fields, generation, retry on a difference).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmmio_device::{
    Interrupt, InterruptCause, MmioTransport, TransportVersion, VirtioDevice, WorkerDevice,
};
use vmmio_devices::net::backend::Stream;
use vmmio_devices::{Block, BlockOptions, Console, MemoryBackend, Net};
use vmmio_spec::features::VIRTIO_F_VERSION_1;
use vmmio_spec::mmio;
use vmmio_spec::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};

type Mem = GuestMemoryMmap<()>;

/// Counts configuration change notifications.
#[derive(Default)]
struct Line {
    config: AtomicU32,
}

impl Interrupt for Line {
    fn trigger(&self, cause: InterruptCause) {
        if cause == InterruptCause::ConfigChange {
            self.config.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn window(
    version: TransportVersion,
    device: Box<dyn VirtioDevice<Mem> + Send>,
) -> (MmioTransport<Mem>, Arc<Line>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("guest memory");
    let line = Arc::new(Line::default());
    (MmioTransport::new(version, device, mem, line.clone()), line)
}

fn read32(t: &mut MmioTransport<Mem>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn read16(t: &mut MmioTransport<Mem>, offset: u64) -> u16 {
    let mut b = [0u8; 2];
    t.read(offset, &mut b);
    u16::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport<Mem>, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// A Version 2 driver's handshake up to DRIVER_OK (no queue set up).
fn handshake(t: &mut MmioTransport<Mem>) {
    write32(t, mmio::STATUS, ACKNOWLEDGE);
    write32(t, mmio::STATUS, ACKNOWLEDGE | DRIVER);
    write32(t, mmio::DRIVER_FEATURES_SEL, 1);
    write32(t, mmio::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    write32(t, mmio::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    write32(
        t,
        mmio::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(t.is_activated());
}

/// Reads a change must have overlapped (caught by the generation, or torn)
/// before the stream stops.
const OVERLAPS: u32 = 200;
/// Most consistent reads the reader takes.
const MAX_SNAPSHOTS: u32 = 5_000_000;

/// Reads a two-part value as Linux's `virtio_cread` does on a Version 2
/// window: generation, parts, generation, until the two generations agree.
/// Returns the parts and how many attempts were retried.
fn consistent_read(
    t: &mut MmioTransport<Mem>,
    mut parts: impl FnMut(&mut MmioTransport<Mem>) -> (u32, u32),
) -> ((u32, u32), u32) {
    let mut retries = 0;
    loop {
        let before = read32(t, mmio::CONFIG_GENERATION);
        let value = parts(t);
        if read32(t, mmio::CONFIG_GENERATION) == before {
            return (value, retries);
        }
        retries += 1;
    }
}

/// Runs `change(0)`, then `change(k)` for k = 1, 2, ... on another thread while the window's
/// owner takes [`SNAPSHOTS`] consistent two-part reads; every one must have
/// equal parts (each change writes the same value into both). Returns how
/// many reads were retried (each one a change the generation caught).
fn stream_of_changes(
    t: &mut MmioTransport<Mem>,
    change: impl Fn(u32) + Send + 'static,
    parts: impl FnMut(&mut MmioTransport<Mem>) -> (u32, u32) + Copy,
) -> u32 {
    // Start from a value with equal parts.
    change(0);
    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut k = 1u32;
            while !stop.load(Ordering::Relaxed) {
                change(k);
                k = k.wrapping_add(1);
            }
        })
    };
    let mut torn = Vec::new();
    let mut retried = 0u32;
    let mut snapshots = 0u32;
    // Until the stream has overlapped enough reads (each a retry, or a torn
    // value if the generation failed to catch it), within a bound.
    while snapshots < MAX_SNAPSHOTS && retried.saturating_add(torn.len() as u32) < OVERLAPS {
        let ((a, b), retries) = consistent_read(t, parts);
        retried = retried.saturating_add(retries);
        snapshots += 1;
        if a != b {
            torn.push((a, b));
        }
    }
    stop.store(true, Ordering::Relaxed);
    host.join().expect("host thread");
    assert!(
        torn.is_empty(),
        "{} of {snapshots} reads with an unchanged ConfigGeneration saw halves of two \
         different values, e.g. {:x?}",
        torn.len(),
        torn.first()
    );
    assert!(
        retried >= OVERLAPS,
        "only {retried} of {snapshots} reads overlapped a change: the test proved little"
    );
    retried
}

/// virtio v1.4 §2.5 / §4.2.2: a block `capacity` the host changes (64-bit,
/// read as two 32-bit accesses) is never seen torn by a driver that checks
/// `ConfigGeneration`, and every change raises the config interrupt.
#[test]
fn block_capacity_changes_are_never_torn_on_version_2() {
    let block = Block::<Mem, _>::with_backend(MemoryBackend::new(4096), BlockOptions::default())
        .expect("block device");
    let handle = block.config_handle();
    let (mut t, line) = window(TransportVersion::Modern, Box::new(block));
    handshake(&mut t);
    let retried = stream_of_changes(
        &mut t,
        move |k| {
            // The same value in both halves, below the largest capacity
            // (u64::MAX / 512 sectors).
            let k = u64::from(k & 0x7f_ffff);
            handle.set_capacity(k << 32 | k).expect("capacity in range");
        },
        |t| {
            let low = read32(t, mmio::CONFIG);
            // A slow driver: give the host thread room between the halves.
            std::thread::yield_now();
            (low, read32(t, mmio::CONFIG + 4))
        },
    );
    assert!(line.config.load(Ordering::SeqCst) > 0);
    assert_ne!(read32(&mut t, mmio::CONFIG_GENERATION), 0);
    eprintln!("retried reads: {retried}");
}

/// The same with the device on a worker thread (`WorkerDevice`, the
/// machine's default): the wrapper passes the device's generation through.
#[test]
fn block_capacity_changes_are_never_torn_behind_a_worker() {
    let block = Block::<Mem, _>::with_backend(MemoryBackend::new(4096), BlockOptions::default())
        .expect("block device");
    let handle = block.config_handle();
    let worker = WorkerDevice::new(Box::new(block)).expect("worker");
    let (mut t, line) = window(TransportVersion::Modern, Box::new(worker));
    handshake(&mut t);
    stream_of_changes(
        &mut t,
        move |k| {
            let k = u64::from(k & 0x7f_ffff);
            handle.set_capacity(k << 32 | k).expect("capacity in range");
        },
        |t| {
            let low = read32(t, mmio::CONFIG);
            std::thread::yield_now();
            (low, read32(t, mmio::CONFIG + 4))
        },
    );
    assert!(line.config.load(Ordering::SeqCst) > 0);
}

/// The same for a console's `cols` and `rows` (two 16-bit fields).
#[test]
fn console_size_changes_are_never_torn_on_version_2() {
    let (console, _out) = Console::<Mem>::capture();
    let handle = console.config_handle();
    let (mut t, line) = window(TransportVersion::Modern, Box::new(console));
    handshake(&mut t);
    stream_of_changes(
        &mut t,
        move |k| {
            let n = (k % 0xffff + 1) as u16;
            handle.set_size(n, n);
        },
        |t| {
            let cols = read16(t, mmio::CONFIG);
            std::thread::yield_now();
            (u32::from(cols), u32::from(read16(t, mmio::CONFIG + 2)))
        },
    );
    assert!(line.config.load(Ordering::SeqCst) > 0);
}

/// A change before DRIVER_OK changes the bytes and `ConfigGeneration` (a
/// driver may be reading the configuration during initialization) but
/// raises no interrupt; after DRIVER_OK it raises exactly one per change;
/// after a reset none again. A legacy window (no `ConfigGeneration`) gets
/// the new value and the interrupt too.
#[test]
fn host_changes_notify_only_a_running_driver() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let block =
            Block::<Mem, _>::with_backend(MemoryBackend::new(4096), BlockOptions::default())
                .expect("block device");
        let handle = block.config_handle();
        let (mut t, line) = window(version, Box::new(block));
        let g0 = t.config_generation();
        handle.set_capacity(16).expect("capacity");
        assert_eq!(read32(&mut t, mmio::CONFIG), 16);
        assert_eq!(t.config_generation(), g0.wrapping_add(1));
        assert_eq!(line.config.load(Ordering::SeqCst), 0);
        if version == TransportVersion::Modern {
            assert_eq!(read32(&mut t, mmio::CONFIG_GENERATION), g0.wrapping_add(1));
            handshake(&mut t);
        } else {
            write32(&mut t, mmio::STATUS, ACKNOWLEDGE);
            write32(&mut t, mmio::STATUS, ACKNOWLEDGE | DRIVER);
            write32(&mut t, mmio::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
            assert!(t.is_activated());
        }
        handle.set_capacity(32).expect("capacity");
        assert_eq!(line.config.load(Ordering::SeqCst), 1);
        assert_eq!(
            read32(&mut t, mmio::INTERRUPT_STATUS) & mmio::INT_CONFIG,
            mmio::INT_CONFIG
        );
        // The same value again is no change.
        handle.set_capacity(32).expect("capacity");
        assert_eq!(line.config.load(Ordering::SeqCst), 1);
        write32(&mut t, mmio::STATUS, 0);
        handle.set_capacity(64).expect("capacity");
        assert_eq!(line.config.load(Ordering::SeqCst), 1, "{version:?}");
        assert_eq!(read32(&mut t, mmio::INTERRUPT_STATUS), 0);
        assert_eq!(read32(&mut t, mmio::CONFIG), 64);
    }
}

/// A shrunk disk refuses requests past its new end; a grown one (over a
/// backend that has the bytes) serves them.
#[test]
fn requests_follow_the_new_capacity() {
    let block = Block::<Mem, _>::with_backend(MemoryBackend::new(8 * 512), BlockOptions::default())
        .expect("block device");
    let handle = block.config_handle();
    assert_eq!(handle.capacity(), 8);
    handle.set_capacity(2).expect("capacity");
    assert_eq!(block.capacity(), 2);
    assert!(handle.set_capacity(u64::MAX).is_err());
    assert_eq!(block.capacity(), 2, "a refused change changes nothing");
    handle.set_len(8 * 512 + 100).expect("capacity");
    assert_eq!(block.capacity(), 8);
}

/// A network device's MAC (6 bytes, read byte by byte) changed from another
/// thread is never seen half old, half new; link changes notify.
#[test]
fn net_mac_changes_are_never_torn_on_version_2() {
    let (ours, _peer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let net = Net::<Mem>::new(Box::new(Stream::new(ours).expect("stream backend")));
    let handle = net.handle();
    let (mut t, line) = window(TransportVersion::Modern, Box::new(net));
    handshake(&mut t);
    let mac_handle = handle.clone();
    stream_of_changes(
        &mut t,
        move |k| {
            let b = (k % 251) as u8;
            mac_handle.set_mac([0x02, b, b, b, b, b]);
        },
        |t| {
            let mut first = [0u8; 1];
            t.read(mmio::CONFIG + 1, &mut first);
            std::thread::yield_now();
            let mut last = [0u8; 1];
            t.read(mmio::CONFIG + 5, &mut last);
            (u32::from(first[0]), u32::from(last[0]))
        },
    );
    let before = line.config.load(Ordering::SeqCst);
    handle.set_link_up(false);
    assert_eq!(line.config.load(Ordering::SeqCst), before + 1);
    assert!(!handle.link_up());
}
