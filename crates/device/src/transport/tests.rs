//! Unit tests of the register file, both versions. Each test is named after
//! the statement it checks; `docs/conformance.md` maps spec statements to
//! these names.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmmio_spec::features::{self, bit};
use vmmio_spec::mmio::{self, Direction, Layout};
use vmmio_spec::notification::NotificationData;
use vmmio_spec::status::{
    ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK, SUSPEND,
};

use super::{MmioTransport, TransportVersion, DEFAULT_GUEST_PAGE_SIZE};
use crate::device::{ActivateError, BackendFd, SharedMemoryRegion, VirtioDevice};
use crate::interrupt::{Interrupt, InterruptCause, InterruptStatus};
use crate::queue::Queue;

mod packed;

type Mem = GuestMemoryMmap<()>;

/// Guest memory of the tests: 1 MiB at 0.
const MEM_SIZE: u64 = 0x10_0000;
/// Device type of the fake (entropy).
const FAKE_TYPE: u32 = 4;
/// Device-type feature bits of the fake.
const FAKE_FEATURES: u64 = bit(0) | bit(5);
/// `QueueSizeMax` of the fake's two queues.
const FAKE_MAX: [u16; 2] = [256, 64];

// ---- fakes --------------------------------------------------------------

/// What the device can see of a [`Queue`] it was handed.
type QueueView = (bool, u16, (u64, u64, u64));

fn view(queue: &Queue) -> QueueView {
    (queue.ready(), queue.size(), queue.addresses())
}

/// What the fake device saw.
#[derive(Debug, Default)]
struct Record {
    /// `(number of queues, features)` of each `activate`.
    activations: Vec<(usize, u64)>,
    /// `(index, data)` of each `queue_notify`.
    notifies: Vec<(u16, Option<NotificationData>)>,
    resets: usize,
    queue_resets: Vec<u16>,
    queue_enables: Vec<u16>,
    /// `(ready, size, (desc, avail, used))` of each queue handed over at the
    /// last activation.
    activated_queues: Vec<QueueView>,
    /// The same for each queue handed over by `queue_enable`.
    enabled_queues: Vec<QueueView>,
    /// The `InterruptStatus` handed over at activation.
    interrupt: Option<InterruptStatus>,
    /// Tokens of each `backend_event`.
    backend_events: Vec<u64>,
    /// Whether each queue handed over at the last activation is packed.
    activated_packed: Vec<bool>,
    /// `(offset, bytes)` of each `write_config`.
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct FakeDevice {
    features: u64,
    max_sizes: Vec<u16>,
    /// 8 bytes of config: bytes 0..4 read-only, 4..8 writable.
    config: [u8; 8],
    shm: Vec<SharedMemoryRegion>,
    fail_activate: bool,
    /// A backend fd listed with token 7, readable interest, and writable
    /// interest too when `backend_writable`.
    backend: Option<Arc<OwnedFd>>,
    backend_writable: bool,
    record: Arc<Mutex<Record>>,
}

impl FakeDevice {
    fn new(record: Arc<Mutex<Record>>) -> Self {
        Self {
            features: FAKE_FEATURES,
            max_sizes: FAKE_MAX.to_vec(),
            config: [0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0],
            shm: Vec::new(),
            fail_activate: false,
            backend: None,
            backend_writable: false,
            record,
        }
    }
}

impl VirtioDevice<Mem> for FakeDevice {
    fn device_type(&self) -> u32 {
        FAKE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|a| self.config.get(a)).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut record = self.record.lock().unwrap();
        record.config_writes.push((offset, data.to_vec()));
        for (i, byte) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(a) = at.filter(|a| (4..8).contains(a)) {
                self.config[a] = *byte;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        let mut record = self.record.lock().unwrap();
        record.activations.push((queues.len(), features));
        record.activated_queues = queues.iter().map(view).collect();
        record.activated_packed = queues.iter().map(Queue::packed).collect();
        record.interrupt = Some(interrupt);
        if self.fail_activate {
            Err(ActivateError::QueueNotReady(0))
        } else {
            Ok(())
        }
    }
    fn queue_notify(&mut self, index: u16, data: Option<NotificationData>) {
        self.record.lock().unwrap().notifies.push((index, data));
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
    fn queue_reset(&mut self, index: u16) {
        self.record.lock().unwrap().queue_resets.push(index);
    }
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        let mut record = self.record.lock().unwrap();
        record.queue_enables.push(index);
        record.enabled_queues.push(view(&queue));
    }
    fn shm_regions(&self) -> &[SharedMemoryRegion] {
        &self.shm
    }
    fn backend_fds(&self) -> Vec<BackendFd> {
        self.backend
            .iter()
            .map(|fd| BackendFd {
                fd: fd.as_raw_fd(),
                token: 7,
                readable: true,
                writable: self.backend_writable,
            })
            .collect()
    }
    fn backend_event(&mut self, token: u64) {
        self.record.lock().unwrap().backend_events.push(token);
    }
}

/// What the platform line saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineEvent {
    Trigger(InterruptCause),
    Level(u32),
}

#[derive(Default)]
struct RecordingLine {
    events: Mutex<Vec<LineEvent>>,
}

impl RecordingLine {
    fn take(&self) -> Vec<LineEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl Interrupt for RecordingLine {
    fn trigger(&self, cause: InterruptCause) {
        self.events.lock().unwrap().push(LineEvent::Trigger(cause));
    }
    fn status_changed(&self, status: u32) {
        self.events.lock().unwrap().push(LineEvent::Level(status));
    }
}

/// A transport over the fake device, with handles on what it records.
struct Harness {
    t: MmioTransport<Mem>,
    record: Arc<Mutex<Record>>,
    line: Arc<RecordingLine>,
}

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Guest-physical address of the test memory above 4 GiB
/// ([`mem_with_high`]): its low 32 bits, 0x1_0000, also name a valid
/// address in the low megabyte, so a transport that drops a high half
/// still sees a valid ring, only the wrong one.
const HIGH: u64 = 0x3_0001_0000;

/// The test memory plus 1 MiB at [`HIGH`].
fn mem_with_high() -> Mem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM_SIZE as usize),
        (GuestAddress(HIGH), MEM_SIZE as usize),
    ])
    .unwrap()
}

fn harness_with(version: TransportVersion, tweak: impl FnOnce(&mut FakeDevice)) -> Harness {
    harness_on(version, mem(), tweak)
}

fn harness_on(version: TransportVersion, mem: Mem, tweak: impl FnOnce(&mut FakeDevice)) -> Harness {
    let record = Arc::new(Mutex::new(Record::default()));
    let mut device = FakeDevice::new(record.clone());
    tweak(&mut device);
    let line = Arc::new(RecordingLine::default());
    let t = MmioTransport::new(version, Box::new(device), mem, line.clone());
    Harness { t, record, line }
}

fn modern() -> Harness {
    harness_with(TransportVersion::Modern, |_| {})
}

fn legacy() -> Harness {
    harness_with(TransportVersion::Legacy, |_| {})
}

impl Harness {
    fn r(&mut self, offset: u64) -> u32 {
        let mut data = [0xaa; 4];
        self.t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.t.write(offset, &value.to_le_bytes());
    }

    fn rec(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap()
    }

    fn add_status(&mut self, bits: u32) {
        let status = self.r(mmio::STATUS);
        self.w(mmio::STATUS, status | bits);
    }

    /// Linux `vm_get_features`: high word first.
    fn read_device_features(&mut self) -> u64 {
        self.w(mmio::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.r(mmio::DEVICE_FEATURES));
        self.w(mmio::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.r(mmio::DEVICE_FEATURES));
        (high << 32) | low
    }

    /// Linux `vm_finalize_features` (>= 6.17): page 1, page 0, then zero
    /// words to pages 2 and 3.
    fn write_driver_features(&mut self, features: u64) {
        self.w(mmio::DRIVER_FEATURES_SEL, 1);
        self.w(mmio::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(mmio::DRIVER_FEATURES_SEL, 0);
        self.w(mmio::DRIVER_FEATURES, features as u32);
        for page in [2, 3] {
            self.w(mmio::DRIVER_FEATURES_SEL, page);
            self.w(mmio::DRIVER_FEATURES, 0);
        }
    }

    /// Programs queue `index` (Modern) with `size` elements at `base`
    /// (descriptor table, then avail ring, then used ring at +0x2000).
    fn program_queue(&mut self, index: u32, size: u32, base: u64) {
        self.w(mmio::QUEUE_SEL, index);
        self.w(mmio::QUEUE_SIZE, size);
        let (desc, driver, device) = (base, base + 0x1000, base + 0x2000);
        self.w(mmio::QUEUE_DESC_LOW, desc as u32);
        self.w(mmio::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.w(mmio::QUEUE_DRIVER_LOW, driver as u32);
        self.w(mmio::QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
        self.w(mmio::QUEUE_DEVICE_LOW, device as u32);
        self.w(mmio::QUEUE_DEVICE_HIGH, (device >> 32) as u32);
    }

    /// Linux's Version 2 probe up to (not including) DRIVER_OK, accepting
    /// `accept` of what is offered. Returns the offered features.
    fn linux_v2_until_features_ok(&mut self, accept: u64) -> u64 {
        assert_eq!(self.r(mmio::MAGIC), mmio::MAGIC_VALUE);
        assert_eq!(self.r(mmio::VERSION), 2);
        assert_eq!(self.r(mmio::DEVICE_ID), FAKE_TYPE);
        self.r(mmio::VENDOR_ID);
        self.w(mmio::STATUS, 0);
        self.add_status(ACKNOWLEDGE);
        self.add_status(DRIVER);
        let offered = self.read_device_features();
        self.write_driver_features(offered & accept);
        self.add_status(FEATURES_OK);
        offered
    }

    /// Linux's Version 2 probe through DRIVER_OK with both queues set up.
    fn linux_v2_probe(&mut self, accept: u64) {
        self.linux_v2_until_features_ok(accept);
        assert_ne!(self.r(mmio::STATUS) & FEATURES_OK, 0);
        for (index, base) in [(0u32, 0x1_0000u64), (1, 0x2_0000)] {
            self.w(mmio::QUEUE_SEL, index);
            assert_eq!(self.r(mmio::QUEUE_READY), 0);
            let max = self.r(mmio::QUEUE_SIZE_MAX);
            assert_eq!(max, u32::from(FAKE_MAX[index as usize]));
            self.program_queue(index, max, base);
            self.w(mmio::QUEUE_READY, 1);
            assert_eq!(self.r(mmio::QUEUE_READY), 1);
        }
        self.add_status(DRIVER_OK);
    }

    /// Linux's probe for a window of `version`, through DRIVER_OK.
    fn linux_probe(&mut self, version: TransportVersion) {
        match version {
            TransportVersion::Modern => self.linux_v2_probe(all_modern_bits()),
            TransportVersion::Legacy => self.linux_legacy_probe(),
        }
    }

    /// Linux's legacy probe: GuestPageSize at probe, reset, then each
    /// queue with QueueNum, QueueAlign, QueuePFN.
    fn linux_legacy_probe(&mut self) {
        assert_eq!(self.r(mmio::MAGIC), mmio::MAGIC_VALUE);
        assert_eq!(self.r(mmio::VERSION), 1);
        self.w(mmio::LEGACY_GUEST_PAGE_SIZE, 4096);
        self.w(mmio::STATUS, 0);
        self.add_status(ACKNOWLEDGE);
        self.add_status(DRIVER);
        let offered = self.read_device_features();
        self.write_driver_features(offered);
        for (index, pfn) in [(0u32, 0x10u32), (1, 0x20)] {
            self.w(mmio::QUEUE_SEL, index);
            assert_eq!(self.r(mmio::LEGACY_QUEUE_PFN), 0);
            let max = self.r(mmio::QUEUE_SIZE_MAX);
            self.w(mmio::QUEUE_SIZE, max);
            self.w(mmio::LEGACY_QUEUE_ALIGN, 4096);
            self.w(mmio::LEGACY_QUEUE_PFN, pfn);
            assert_eq!(self.r(mmio::LEGACY_QUEUE_PFN), pfn);
        }
        self.add_status(DRIVER_OK);
    }
}

fn all_modern_bits() -> u64 {
    u64::MAX
}

// ---- identification registers -----------------------------------------

#[test]
fn magic_value_reads_virt_in_both_versions() {
    assert_eq!(modern().r(mmio::MAGIC), 0x7472_6976);
    assert_eq!(legacy().r(mmio::MAGIC), 0x7472_6976);
}

#[test]
fn version_reads_2_modern_and_1_legacy() {
    let mut h = modern();
    assert_eq!(h.r(mmio::VERSION), 2);
    assert_eq!(h.t.version(), TransportVersion::Modern);
    let mut h = legacy();
    assert_eq!(h.r(mmio::VERSION), 1);
    assert_eq!(h.t.version(), TransportVersion::Legacy);
}

#[test]
fn device_id_and_vendor_id_come_from_the_device() {
    for mut h in [modern(), legacy()] {
        assert_eq!(h.r(mmio::DEVICE_ID), FAKE_TYPE);
        assert_eq!(h.r(mmio::VENDOR_ID), u32::from_le_bytes(*b"VMIO"));
    }
}

// ---- direction rules and unknown registers ----------------------------

#[test]
fn write_only_registers_read_zero() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let mut h = harness_with(version, |_| {});
        // Give every write-only register a non-zero value first.
        h.linux_v2_or_legacy_setup();
        for r in mmio::REGISTERS
            .iter()
            .filter(|r| r.direction == Direction::W)
        {
            assert_eq!(h.r(r.offset), 0, "{} in {version:?}", r.name);
        }
    }
}

impl Harness {
    fn linux_v2_or_legacy_setup(&mut self) {
        if self.t.version() == TransportVersion::Modern {
            self.linux_v2_probe(all_modern_bits());
        } else {
            self.linux_legacy_probe();
        }
        self.w(mmio::DEVICE_FEATURES_SEL, 1);
        self.w(mmio::QUEUE_SEL, 1);
    }
}

#[test]
fn read_only_registers_ignore_writes() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let mut h = harness_with(version, |_| {});
        let before: Vec<u32> = mmio::REGISTERS.iter().map(|r| h.r(r.offset)).collect();
        for r in mmio::REGISTERS
            .iter()
            .filter(|r| r.direction == Direction::R)
        {
            h.w(r.offset, 0x5a5a_5a5a);
        }
        let after: Vec<u32> = mmio::REGISTERS.iter().map(|r| h.r(r.offset)).collect();
        assert_eq!(before, after, "{version:?}");
        assert_eq!(h.t.status(), 0);
        assert_eq!(h.t.config_generation(), 0);
    }
}

#[test]
fn unknown_offsets_read_zero_and_ignore_writes() {
    let mut h = modern();
    for offset in [0x018u64, 0x01c, 0x048, 0x04c, 0x054, 0x0a8, 0x0c4, 0x0f8] {
        h.w(offset, 0xffff_ffff);
        assert_eq!(h.r(offset), 0, "{offset:#x}");
    }
    assert_eq!(h.t.status(), 0);
}

#[test]
fn registers_of_the_other_version_behave_as_unknown() {
    // Legacy-only registers in a Modern window.
    let mut h = modern();
    for r in mmio::REGISTERS
        .iter()
        .filter(|r| r.layout == Layout::Legacy)
    {
        h.w(r.offset, 1);
        assert_eq!(h.r(r.offset), 0, "{}", r.name);
    }
    // QueuePFN 1 (a valid legacy ring at 4 KiB) did not set up queue 0.
    let unset = (false, FAKE_MAX[0], (0, 0, 0));
    assert_eq!(h.t.queue(0).map(|q| view(&q)), Some(unset));
    // Modern-only registers in a Legacy window: no QueueReady,
    // ConfigGeneration, SHM or QueueReset.
    let mut h = legacy();
    h.t.config_changed();
    h.w(mmio::SHM_SEL, 0);
    for r in mmio::REGISTERS
        .iter()
        .filter(|r| r.layout == Layout::Modern)
    {
        assert_eq!(h.r(r.offset), 0, "{}", r.name);
    }
    // Writes to them (QueueDesc/Driver/Device halves, QueueReady, ...)
    // leave queue 0 as it was.
    h.w(mmio::QUEUE_SEL, 0);
    for r in mmio::REGISTERS
        .iter()
        .filter(|r| r.layout == Layout::Modern && r.direction != Direction::R)
    {
        h.w(r.offset, 0x1000);
        h.w(r.offset, 1);
    }
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    assert_eq!(h.t.queue(0).map(|q| view(&q)), Some(unset));
    // QueueReset does not reset a live legacy queue.
    h.linux_legacy_probe();
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::QUEUE_RESET, 1);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0x10);
    assert!(h.rec().queue_resets.is_empty());
}

// ---- access widths ----------------------------------------------------

#[test]
fn control_register_bad_width_reads_zero_and_drops_write() {
    for mut h in [modern(), legacy()] {
        for width in [0usize, 1, 2, 3, 5, 8] {
            let mut data = vec![0xaa; width];
            h.t.read(mmio::MAGIC, &mut data);
            assert!(data.iter().all(|&b| b == 0), "width {width}: {data:?}");
            // A narrow or wide store to Status does nothing.
            h.t.write(mmio::STATUS, &vec![ACKNOWLEDGE as u8; width]);
            assert_eq!(h.t.status(), 0, "width {width}");
        }
    }
}

#[test]
fn control_register_misaligned_reads_zero_and_drops_write() {
    for mut h in [modern(), legacy()] {
        for offset in [0x001u64, 0x002, 0x003, 0x071, 0x072] {
            let mut data = [0xaa; 4];
            h.t.read(offset, &mut data);
            assert_eq!(data, [0; 4], "{offset:#x}");
            h.t.write(offset, &ACKNOWLEDGE.to_le_bytes());
        }
        assert_eq!(h.t.status(), 0);
    }
}

#[test]
fn config_space_takes_8_16_32_bit_aligned_accesses() {
    for mut h in [modern(), legacy()] {
        let mut b = [0u8; 1];
        h.t.read(mmio::CONFIG + 1, &mut b);
        assert_eq!(b, [0x22]);
        let mut w = [0u8; 2];
        h.t.read(mmio::CONFIG + 2, &mut w);
        assert_eq!(w, [0x33, 0x44]);
        let mut d = [0u8; 4];
        h.t.read(mmio::CONFIG, &mut d);
        assert_eq!(d, [0x11, 0x22, 0x33, 0x44]);
        // Legacy Linux reads byte by byte.
        let bytes: Vec<u8> = (0..4)
            .map(|i| {
                let mut b = [0u8; 1];
                h.t.read(mmio::CONFIG + i, &mut b);
                b[0]
            })
            .collect();
        assert_eq!(bytes, [0x11, 0x22, 0x33, 0x44]);
    }
}

#[test]
fn config_writes_reach_the_device_from_the_first_config_byte() {
    // Offset 0x100 is config byte 0, not a control register.
    for mut h in [modern(), legacy()] {
        h.t.write(mmio::CONFIG, &[0x5a]);
        h.t.write(mmio::CONFIG, &0x0102_0304u32.to_le_bytes());
        h.t.write(mmio::CONFIG + 4, &[0xa5]);
        assert_eq!(
            h.rec().config_writes,
            [(0, vec![0x5a]), (0, vec![4, 3, 2, 1]), (4, vec![0xa5])]
        );
    }
}

#[test]
fn config_space_bad_width_or_alignment_reads_zero_and_drops_write() {
    let mut h = modern();
    // 64-bit, misaligned 16 and 32, 3 bytes, empty.
    let cases: [(u64, usize); 6] = [
        (mmio::CONFIG, 8),
        (mmio::CONFIG + 1, 2),
        (mmio::CONFIG + 2, 4),
        (mmio::CONFIG, 3),
        (mmio::CONFIG, 0),
        (mmio::CONFIG + 4, 8),
    ];
    for (offset, width) in cases {
        let mut data = vec![0xaa; width];
        h.t.read(offset, &mut data);
        assert!(data.iter().all(|&b| b == 0), "{offset:#x}/{width}");
        h.t.write(offset, &vec![0x77; width]);
    }
    let mut d = [0u8; 4];
    h.t.read(mmio::CONFIG + 4, &mut d);
    assert_eq!(d, [0; 4], "no dropped write reached the config");
    assert_eq!(h.t.config_generation(), 0);
}

#[test]
fn accesses_outside_the_window_read_zero() {
    let mut h = modern();
    for offset in [
        mmio::WINDOW_SIZE,
        mmio::WINDOW_SIZE + 4,
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut data = [0xaa; 4];
        h.t.read(offset, &mut data);
        assert_eq!(data, [0; 4], "{offset:#x}");
        h.t.write(offset, &[1, 2, 3, 4]);
        let mut b = [0xaa; 1];
        h.t.read(offset, &mut b);
        assert_eq!(b, [0]);
    }
    // The last byte of the window is config space, readable.
    let mut b = [0xaa; 1];
    h.t.read(mmio::WINDOW_SIZE - 1, &mut b);
    assert_eq!(b, [0]);
    let mut d = [0xaa; 4];
    h.t.read(mmio::WINDOW_SIZE - 2, &mut d);
    assert_eq!(d, [0; 4]);
}

// ---- features ---------------------------------------------------------

#[test]
fn device_features_pages_add_version_1_in_modern() {
    let mut h = modern();
    h.w(mmio::DEVICE_FEATURES_SEL, 0);
    assert_eq!(h.r(mmio::DEVICE_FEATURES), FAKE_FEATURES as u32);
    h.w(mmio::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        h.r(mmio::DEVICE_FEATURES),
        1 << (features::VIRTIO_F_VERSION_1 - 32)
    );
    for page in [2, 3, 0x100, u32::MAX] {
        h.w(mmio::DEVICE_FEATURES_SEL, page);
        assert_eq!(h.r(mmio::DEVICE_FEATURES), 0, "page {page}");
    }
    assert_eq!(
        h.t.offered_features(),
        FAKE_FEATURES | bit(features::VIRTIO_F_VERSION_1)
    );
}

#[test]
fn legacy_host_features_offer_page_0_only() {
    let mut h = harness_with(TransportVersion::Legacy, |d| {
        d.features =
            FAKE_FEATURES | bit(features::VIRTIO_F_VERSION_1) | bit(features::VIRTIO_F_RING_RESET);
    });
    assert_eq!(h.read_device_features(), FAKE_FEATURES);
}

#[test]
fn transport_never_offers_unsupported_transport_features() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features = FAKE_FEATURES
            | bit(features::VIRTIO_F_SUSPEND)
            | bit(features::VIRTIO_F_ADMIN_VQ)
            | bit(features::VIRTIO_F_SR_IOV)
            | bit(features::VIRTIO_F_NOTIF_CONFIG_DATA)
            | bit(features::VIRTIO_F_RING_RESET);
    });
    assert_eq!(
        h.read_device_features(),
        FAKE_FEATURES | bit(features::VIRTIO_F_VERSION_1) | bit(features::VIRTIO_F_RING_RESET)
    );
}

#[test]
fn driver_features_zero_writes_to_pages_2_and_3_are_accepted() {
    let mut h = modern();
    h.linux_v2_until_features_ok(all_modern_bits());
    assert_ne!(h.r(mmio::STATUS) & FEATURES_OK, 0);
    assert_eq!(
        h.t.negotiated_features(),
        FAKE_FEATURES | bit(features::VIRTIO_F_VERSION_1)
    );
}

#[test]
fn features_ok_refused_when_driver_accepts_unoffered_bit() {
    let mut h = modern();
    h.linux_v2_until_features_ok(all_modern_bits());
    h.w(mmio::STATUS, 0);
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.write_driver_features(FAKE_FEATURES | bit(features::VIRTIO_F_VERSION_1) | bit(7));
    h.add_status(FEATURES_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
    // DRIVER_OK without FEATURES_OK is refused too; the device never ran.
    h.add_status(DRIVER_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
    assert!(h.rec().activations.is_empty());
}

#[test]
fn features_ok_refused_when_driver_accepts_a_bit_past_63() {
    let mut h = modern();
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.write_driver_features(bit(features::VIRTIO_F_VERSION_1));
    h.w(mmio::DRIVER_FEATURES_SEL, 2);
    h.w(mmio::DRIVER_FEATURES, 1);
    h.add_status(FEATURES_OK);
    assert_eq!(h.r(mmio::STATUS) & FEATURES_OK, 0);
    // A reset forgets it.
    h.w(mmio::STATUS, 0);
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.write_driver_features(bit(features::VIRTIO_F_VERSION_1));
    h.add_status(FEATURES_OK);
    assert_ne!(h.r(mmio::STATUS) & FEATURES_OK, 0);
}

#[test]
fn features_ok_refused_without_version_1_in_modern() {
    let mut h = modern();
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.write_driver_features(FAKE_FEATURES);
    h.add_status(FEATURES_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
}

#[test]
fn driver_features_ignored_after_features_ok() {
    let mut h = modern();
    h.linux_v2_until_features_ok(bit(features::VIRTIO_F_VERSION_1));
    h.w(mmio::DRIVER_FEATURES_SEL, 0);
    h.w(mmio::DRIVER_FEATURES, FAKE_FEATURES as u32);
    assert_eq!(h.t.negotiated_features(), bit(features::VIRTIO_F_VERSION_1));
}

#[test]
fn legacy_guest_features_are_masked_to_offered_and_frozen_at_driver_ok() {
    let mut h = legacy();
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.w(mmio::DRIVER_FEATURES_SEL, 0);
    h.w(mmio::DRIVER_FEATURES, 0xffff_ffff);
    h.w(mmio::DRIVER_FEATURES_SEL, 1);
    h.w(mmio::DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(h.t.negotiated_features(), FAKE_FEATURES);
    h.add_status(DRIVER_OK);
    assert_eq!(h.rec().activations, vec![(2, FAKE_FEATURES)]);
    h.w(mmio::DRIVER_FEATURES_SEL, 0);
    h.w(mmio::DRIVER_FEATURES, 0);
    assert_eq!(h.t.negotiated_features(), FAKE_FEATURES);
}

// ---- status -------------------------------------------------------------

#[test]
fn linux_v2_probe_sequence_activates_the_device() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    assert_eq!(
        h.r(mmio::STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert!(h.t.is_activated());
    let expected = FAKE_FEATURES | bit(features::VIRTIO_F_VERSION_1);
    assert_eq!(h.rec().activations, vec![(2, expected)]);
    assert!(h.rec().interrupt.is_some());
    // The queues carry the programmed registers.
    assert_eq!(
        h.rec().activated_queues,
        vec![
            (true, 256, (0x1_0000, 0x1_1000, 0x1_2000)),
            (true, 64, (0x2_0000, 0x2_1000, 0x2_2000)),
        ]
    );
}

#[test]
fn linux_legacy_probe_sequence_activates_the_device() {
    let mut h = legacy();
    h.linux_legacy_probe();
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert!(h.t.is_activated());
    assert_eq!(h.rec().activations, vec![(2, FAKE_FEATURES)]);
    // Legacy layout: avail right after the table, used at the next 4 KiB.
    assert_eq!(
        h.rec().activated_queues,
        vec![
            (true, 256, (0x1_0000, 0x1_1000, 0x1_2000)),
            (true, 64, (0x2_0000, 0x2_0400, 0x2_1000)),
        ]
    );
    h.w(mmio::QUEUE_NOTIFY, 1);
    assert_eq!(h.rec().notifies, vec![(1, None)]);
}

#[test]
fn linux_remove_sequence_is_accepted() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    // Reset, turn each queue off (reading back 0 at once), ACKNOWLEDGE.
    h.w(mmio::STATUS, 0);
    assert_eq!(h.r(mmio::STATUS), 0);
    for index in 0..2 {
        h.w(mmio::QUEUE_SEL, index);
        h.w(mmio::QUEUE_READY, 0);
        assert_eq!(h.r(mmio::QUEUE_READY), 0);
    }
    h.add_status(ACKNOWLEDGE);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
    // And the device can be probed again.
    h.linux_v2_probe(all_modern_bits());
    assert_eq!(h.rec().activations.len(), 2);
}

#[test]
fn legacy_remove_sequence_is_accepted() {
    let mut h = legacy();
    h.linux_legacy_probe();
    h.w(mmio::STATUS, 0);
    for index in 0..2 {
        h.w(mmio::QUEUE_SEL, index);
        assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0, "reset stops every queue");
        h.w(mmio::LEGACY_QUEUE_PFN, 0);
    }
    h.add_status(ACKNOWLEDGE);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
}

#[test]
fn status_write_of_zero_resets_from_any_state() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let mut h = harness_with(version, |_| {});
        let sequence: &[u32] = match version {
            TransportVersion::Modern => &[0, ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, FAILED],
            TransportVersion::Legacy => &[0, ACKNOWLEDGE, DRIVER, DRIVER_OK, FAILED],
        };
        for steps in 1..=sequence.len() {
            h.w(mmio::STATUS, 0);
            h.write_driver_features(all_modern_bits() & h.t.offered_features());
            for &bits in &sequence[..steps] {
                h.add_status(bits);
            }
            h.w(mmio::STATUS, 0);
            assert_eq!(h.r(mmio::STATUS), 0, "{version:?} after {steps} steps");
            assert!(!h.t.is_activated());
        }
    }
}

#[test]
fn reset_clears_interrupts_queues_features_and_selectors() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    h.t.config_changed();
    h.t.interrupt_status().raise(InterruptCause::UsedBuffer);
    h.w(mmio::QUEUE_SEL, 1);
    h.w(mmio::DEVICE_FEATURES_SEL, 1);
    h.w(mmio::SHM_SEL, 3);
    let resets = h.rec().resets;
    h.w(mmio::STATUS, 0);
    assert_eq!(h.rec().resets, resets + 1);
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), 0);
    assert_eq!(h.t.negotiated_features(), 0);
    // Selectors are back to 0: DeviceFeatures shows page 0, QueueSizeMax queue 0.
    assert_eq!(h.r(mmio::DEVICE_FEATURES), FAKE_FEATURES as u32);
    assert_eq!(h.r(mmio::QUEUE_SIZE_MAX), u32::from(FAKE_MAX[0]));
    for index in 0..2 {
        h.w(mmio::QUEUE_SEL, index);
        assert_eq!(h.r(mmio::QUEUE_READY), 0);
    }
    // The level line went down.
    assert_eq!(h.line.take().last(), Some(&LineEvent::Level(0)));
}

#[test]
fn driver_may_not_clear_status_bits() {
    let mut h = modern();
    h.add_status(ACKNOWLEDGE);
    h.add_status(DRIVER);
    h.w(mmio::STATUS, DRIVER);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
    h.w(mmio::STATUS, ACKNOWLEDGE);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
    // Writing the same value again is harmless.
    h.w(mmio::STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
}

#[test]
fn status_bits_out_of_order_are_refused() {
    let mut h = modern();
    h.w(mmio::STATUS, DRIVER);
    assert_eq!(h.r(mmio::STATUS), 0);
    h.w(mmio::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(
        h.r(mmio::STATUS),
        0,
        "DRIVER_OK needs FEATURES_OK in Version 2"
    );
    h.w(mmio::STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(h.r(mmio::STATUS), 0);
    // Several bits at once, in order, are fine.
    h.w(mmio::STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
    assert!(h.rec().activations.is_empty());
}

#[test]
fn legacy_status_bits_out_of_order_are_refused() {
    // Version 1 has no FEATURES_OK: DRIVER_OK needs ACKNOWLEDGE and
    // DRIVER, each of them.
    let mut h = legacy();
    for bits in [DRIVER_OK, ACKNOWLEDGE | DRIVER_OK, DRIVER | DRIVER_OK] {
        h.w(mmio::STATUS, bits);
        assert_eq!(h.r(mmio::STATUS), 0, "{bits:#x}");
    }
    h.w(mmio::STATUS, ACKNOWLEDGE);
    h.w(mmio::STATUS, ACKNOWLEDGE | DRIVER_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
    assert!(h.rec().activations.is_empty());
}

#[test]
fn failed_may_be_set_any_time_and_only_reset_follows() {
    let mut h = modern();
    h.w(mmio::STATUS, FAILED);
    assert_eq!(h.r(mmio::STATUS), FAILED);
    h.add_status(ACKNOWLEDGE);
    assert_eq!(h.r(mmio::STATUS), FAILED);
    h.w(mmio::STATUS, 0);
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.add_status(FAILED);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER | FAILED);
}

#[test]
fn undefined_and_suspend_status_bits_are_ignored() {
    let mut h = modern();
    h.w(mmio::STATUS, ACKNOWLEDGE | 0x20 | 0x100 | 0x8000_0000);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
    h.w(mmio::STATUS, ACKNOWLEDGE | SUSPEND);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
    // DEVICE_NEEDS_RESET is the device's: a driver cannot set it.
    h.w(mmio::STATUS, ACKNOWLEDGE | DEVICE_NEEDS_RESET);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
    // The same from reset, alone or with a defined bit.
    for (write, reads) in [
        (0x100, 0),
        (SUSPEND, 0),
        (ACKNOWLEDGE | SUSPEND, ACKNOWLEDGE),
        (ACKNOWLEDGE | 0x100, ACKNOWLEDGE),
    ] {
        h.w(mmio::STATUS, 0);
        h.w(mmio::STATUS, write);
        assert_eq!(h.r(mmio::STATUS), reads, "write {write:#x}");
    }
}

#[test]
fn legacy_has_no_features_ok() {
    let mut h = legacy();
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.add_status(FEATURES_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER);
    h.add_status(DRIVER_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER | DRIVER_OK);
    // FEATURES_OK written with DRIVER_OK (a driver written for Version 2)
    // is dropped alone: DRIVER_OK holds and the device runs.
    let mut h = legacy();
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.add_status(FEATURES_OK | DRIVER_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert!(h.t.is_activated());
    // And from reset, with ACKNOWLEDGE alone.
    h.w(mmio::STATUS, 0);
    h.w(mmio::STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(h.r(mmio::STATUS), ACKNOWLEDGE);
}

#[test]
fn activation_failure_sets_device_needs_reset_and_config_interrupt() {
    let mut h = harness_with(TransportVersion::Modern, |d| d.fail_activate = true);
    h.linux_v2_probe(all_modern_bits());
    let status = h.r(mmio::STATUS);
    assert_eq!(
        status,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET
    );
    assert_eq!(status & FAILED, 0, "the device never sets FAILED");
    assert!(!h.t.is_activated());
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_CONFIG);
    let events = h.line.take();
    assert!(events.contains(&LineEvent::Trigger(InterruptCause::ConfigChange)));
    // Notifications go nowhere; a driver echoing the bit back changes nothing.
    h.w(mmio::QUEUE_NOTIFY, 0);
    assert!(h.rec().notifies.is_empty());
    h.w(mmio::STATUS, status | FAILED);
    assert_eq!(h.r(mmio::STATUS), status | FAILED);
    // Reset clears DEVICE_NEEDS_RESET.
    h.w(mmio::STATUS, 0);
    assert_eq!(h.r(mmio::STATUS), 0);
}

#[test]
fn host_device_needs_reset_interrupts_only_after_driver_ok() {
    let mut h = modern();
    h.t.set_device_needs_reset();
    assert_eq!(h.r(mmio::STATUS), DEVICE_NEEDS_RESET);
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), 0);
    h.w(mmio::STATUS, 0);
    h.linux_v2_probe(all_modern_bits());
    h.t.set_device_needs_reset();
    assert_ne!(h.r(mmio::STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_CONFIG);
}

// ---- queues -------------------------------------------------------------

#[test]
fn queue_sel_is_a_full_u32() {
    let mut h = modern();
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    h.w(mmio::QUEUE_SEL, 0x10000);
    assert_eq!(h.r(mmio::QUEUE_SIZE_MAX), 0);
    assert_eq!(h.r(mmio::QUEUE_READY), 0, "0x10000 must not select queue 0");
    h.w(mmio::QUEUE_READY, 0);
    h.w(mmio::QUEUE_SEL, 0);
    assert_eq!(
        h.r(mmio::QUEUE_READY),
        1,
        "the write to 0x10000 did not reach queue 0"
    );
}

#[test]
fn absent_queue_reads_zero_and_ignores_writes() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let mut h = harness_with(version, |_| {});
        for sel in [2u32, 3, 0xffff, 0x1_0000, u32::MAX] {
            h.w(mmio::QUEUE_SEL, sel);
            assert_eq!(h.r(mmio::QUEUE_SIZE_MAX), 0);
            h.w(mmio::QUEUE_SIZE, 8);
            h.w(mmio::QUEUE_READY, 1);
            h.w(mmio::LEGACY_QUEUE_PFN, 0x10);
            assert_eq!(h.r(mmio::QUEUE_READY), 0);
            assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
        }
    }
}

#[test]
fn queue_size_max_is_zero_for_an_unavailable_queue() {
    let mut h = harness_with(TransportVersion::Modern, |d| d.max_sizes = vec![0, 16]);
    h.w(mmio::QUEUE_SEL, 0);
    assert_eq!(h.r(mmio::QUEUE_SIZE_MAX), 0);
    h.program_queue(0, 0, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    h.w(mmio::QUEUE_SEL, 1);
    assert_eq!(h.r(mmio::QUEUE_SIZE_MAX), 16);
}

#[test]
fn queue_size_above_max_is_ignored() {
    let mut h = modern();
    h.program_queue(1, 128, 0x1_0000); // max is 64: stays at the default 64
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
    h.w(mmio::QUEUE_READY, 0);
    h.w(mmio::QUEUE_SIZE, 0x1_0040); // truncation would give 64
    h.w(mmio::QUEUE_SIZE, 3);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(
        h.r(mmio::QUEUE_READY),
        0,
        "size 3 was accepted, then refused by QueueReady"
    );
}

#[test]
fn queue_ready_reads_back_and_reads_zero_right_after_zero() {
    let mut h = modern();
    h.program_queue(0, 256, 0x1_0000);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
    h.w(mmio::QUEUE_READY, 0);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    h.w(mmio::QUEUE_READY, 2);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
}

#[test]
fn queue_ready_refuses_an_invalid_ring() {
    let mut h = modern();
    let cases: [(u32, u64, u64, u64); 8] = [
        (0, 0x1_0000, 0x1_1000, 0x1_2000),        // size 0 (written as 0)
        (12, 0x1_0000, 0x1_1000, 0x1_2000),       // not a power of two
        (8, 0x1_0008, 0x1_1000, 0x1_2000),        // descriptor table not 16-aligned
        (8, 0x1_0000, 0x1_1001, 0x1_2000),        // avail ring not 2-aligned
        (8, 0x1_0000, 0x1_1000, 0x1_2002),        // used ring not 4-aligned
        (8, MEM_SIZE - 0x40, 0x1_1000, 0x1_2000), // table runs past memory
        (8, 0x1_0000, 0x1_1000, MEM_SIZE),        // used ring outside memory
        (8, 0x1_0000, u64::MAX - 1, 0x1_2000),    // overflowing address
    ];
    for (size, desc, driver, device) in cases {
        h.w(mmio::QUEUE_SEL, 0);
        h.w(mmio::QUEUE_SIZE, size);
        h.w(mmio::QUEUE_DESC_LOW, desc as u32);
        h.w(mmio::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        h.w(mmio::QUEUE_DRIVER_LOW, driver as u32);
        h.w(mmio::QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
        h.w(mmio::QUEUE_DEVICE_LOW, device as u32);
        h.w(mmio::QUEUE_DEVICE_HIGH, (device >> 32) as u32);
        h.w(mmio::QUEUE_READY, 1);
        assert_eq!(
            h.r(mmio::QUEUE_READY),
            0,
            "{size} {desc:#x} {driver:#x} {device:#x}"
        );
    }
    // The same queue with good values is enabled.
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
}

#[test]
fn queue_registers_are_refused_while_the_queue_is_ready() {
    let mut h = modern();
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    // A new size and a bad address would make the ring invalid if accepted.
    h.w(mmio::QUEUE_SIZE, 256);
    h.w(mmio::QUEUE_DESC_LOW, 0x3);
    h.w(mmio::QUEUE_READY, 0);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1, "registers kept their values");
}

#[test]
fn queue_registers_are_refused_after_driver_ok() {
    let mut h = modern();
    h.linux_v2_until_features_ok(all_modern_bits());
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    h.add_status(DRIVER_OK);
    let ready: Vec<bool> = h.rec().activated_queues.iter().map(|q| q.0).collect();
    assert_eq!(
        ready,
        vec![true, false],
        "not-ready queues are handed over too"
    );
    // Queue 1 was never set up: it cannot be now.
    h.program_queue(1, 8, 0x2_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    // Queue 0 can be turned off (the device is told) but not back on.
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::QUEUE_READY, 0);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    assert_eq!(h.rec().queue_resets, vec![0]);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    assert!(h.rec().queue_enables.is_empty());
}

#[test]
fn queue_reset_of_the_queue_past_the_last_reaches_no_device() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_RING_RESET);
    });
    h.linux_v2_probe(all_modern_bits());
    // The fake has queues 0 and 1: QueueSel 2 names none.
    h.w(mmio::QUEUE_SEL, 2);
    h.w(mmio::QUEUE_RESET, 1);
    h.w(mmio::QUEUE_READY, 0);
    assert!(h.rec().queue_resets.is_empty());
    assert!(h.t.is_activated());
}

#[test]
fn queue_reset_resets_and_allows_reenable_after_driver_ok() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_RING_RESET);
    });
    h.linux_v2_probe(all_modern_bits());
    h.w(mmio::QUEUE_SEL, 1);
    assert_eq!(h.r(mmio::QUEUE_RESET), 0);
    h.w(mmio::QUEUE_RESET, 1);
    // Completed synchronously: QueueReset and QueueReady read 0.
    assert_eq!(h.r(mmio::QUEUE_RESET), 0);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    assert_eq!(h.rec().queue_resets, vec![1]);
    // Notifications for the reset queue are dropped.
    h.w(mmio::QUEUE_NOTIFY, 1);
    assert!(h.rec().notifies.is_empty());
    // Re-enable with different parameters while the device runs.
    h.program_queue(1, 16, 0x4_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
    assert_eq!(h.r(mmio::QUEUE_RESET), 0);
    assert_eq!(h.rec().queue_enables, vec![1]);
    assert_eq!(
        h.rec().enabled_queues,
        vec![(true, 16, (0x4_0000, 0x4_1000, 0x4_2000))]
    );
    h.w(mmio::QUEUE_NOTIFY, 1);
    assert_eq!(h.rec().notifies, vec![(1, None)]);
    // Once re-enabled, its registers are locked again.
    h.w(mmio::QUEUE_READY, 0);
    h.program_queue(1, 16, 0x5_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
}

#[test]
fn queue_reset_needs_ring_reset_negotiated() {
    // Offered but not accepted.
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_RING_RESET);
    });
    h.linux_v2_probe(!bit(features::VIRTIO_F_RING_RESET));
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::QUEUE_RESET, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
    assert!(h.rec().queue_resets.is_empty());
    // Not offered at all.
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    h.w(mmio::QUEUE_RESET, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
}

#[test]
fn queue_reset_reads_zero_on_reset_and_after_enable() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_RING_RESET);
    });
    h.linux_v2_until_features_ok(all_modern_bits());
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::QUEUE_RESET, 1); // before DRIVER_OK: registers only
    assert_eq!(h.r(mmio::QUEUE_RESET), 0);
    assert!(h.rec().queue_resets.is_empty(), "device not running yet");
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_RESET), 0);
    h.w(mmio::STATUS, 0);
    assert_eq!(h.r(mmio::QUEUE_RESET), 0);
}

#[test]
fn legacy_queue_pfn_enables_reads_back_and_zero_stops() {
    let mut h = legacy();
    h.linux_legacy_probe();
    h.w(mmio::QUEUE_SEL, 0);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0x10);
    // Version 1 has no QueueReady (0x44): it reads 0 on a live queue.
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    // In use: a new PFN is refused.
    h.w(mmio::LEGACY_QUEUE_PFN, 0x30);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0x10);
    h.w(mmio::QUEUE_NOTIFY, 0);
    assert_eq!(h.rec().notifies, vec![(0, None)]);
    h.w(mmio::LEGACY_QUEUE_PFN, 0);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    assert_eq!(h.rec().queue_resets, vec![0]);
    h.w(mmio::QUEUE_NOTIFY, 0);
    assert_eq!(h.rec().notifies.len(), 1, "a stopped queue is not notified");
}

#[test]
fn legacy_queue_pfn_refuses_an_invalid_layout() {
    let mut h = legacy();
    h.w(mmio::QUEUE_SEL, 0);
    // Outside memory (1 MiB = 0x100 pages).
    h.w(mmio::LEGACY_QUEUE_PFN, 0xff);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    h.w(mmio::LEGACY_QUEUE_PFN, u32::MAX);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    // QueueAlign not a power of two.
    h.w(mmio::LEGACY_QUEUE_ALIGN, 3000);
    h.w(mmio::LEGACY_QUEUE_PFN, 0x10);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    // Size not a power of two.
    h.w(mmio::LEGACY_QUEUE_ALIGN, 4096);
    h.w(mmio::QUEUE_SIZE, 100);
    h.w(mmio::LEGACY_QUEUE_PFN, 0x10);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    h.w(mmio::QUEUE_SIZE, 128);
    h.w(mmio::LEGACY_QUEUE_PFN, 0x10);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0x10);
}

#[test]
fn legacy_queue_size_defaults_to_max() {
    let mut h = legacy();
    h.w(mmio::QUEUE_SEL, 0);
    // Never written, QueueSize is QueueSizeMax (256): with 4 KiB alignment
    // the queue takes 0x2806 bytes, which fit below 1 MiB from page 0xfd
    // but not from page 0xfe.
    h.w(mmio::LEGACY_QUEUE_PFN, 0xfd);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0xfd);
    let mut h = legacy();
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::LEGACY_QUEUE_PFN, 0xfe); // 256 entries do not fit in 2 pages
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
}

#[test]
fn legacy_guest_page_size_survives_reset() {
    let mut h = legacy();
    h.w(mmio::LEGACY_GUEST_PAGE_SIZE, 0x1_0000); // 64 KiB pages
    h.w(mmio::STATUS, 0);
    h.add_status(ACKNOWLEDGE | DRIVER);
    h.w(mmio::QUEUE_SEL, 1);
    h.w(mmio::QUEUE_SIZE, 64);
    // With 64 KiB pages, page 0x10 is 1 MiB, outside memory; with the
    // default 4 KiB pages it would be 64 KiB, inside.
    h.w(mmio::LEGACY_QUEUE_PFN, 0x10);
    assert_eq!(
        h.r(mmio::LEGACY_QUEUE_PFN),
        0,
        "64 KiB pages: page 0x10 is outside memory"
    );
    h.w(mmio::LEGACY_QUEUE_PFN, 0x1);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 1);
    // A bad page size is ignored, the old one kept.
    h.w(mmio::LEGACY_QUEUE_PFN, 0);
    h.w(mmio::LEGACY_GUEST_PAGE_SIZE, 0);
    h.w(mmio::LEGACY_GUEST_PAGE_SIZE, 3000);
    h.w(mmio::LEGACY_QUEUE_PFN, 0x10);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    assert_eq!(DEFAULT_GUEST_PAGE_SIZE, 4096);
}

#[test]
fn legacy_queue_uses_the_legacy_ring_layout() {
    // With QueueAlign 16 the used ring of a 256-entry queue follows the
    // available ring closely (4096 + 518 rounded up to 4624); with the
    // default 4096 it would start at 8192 and not fit on page 0xfe.
    let mut h = legacy();
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::LEGACY_QUEUE_ALIGN, 16);
    // Layout total: 4096 + 518 -> 4624 (aligned 16) + 2054 = 6678 bytes.
    let total = 6678u64;
    let pfn = ((MEM_SIZE - total) / 4096) as u32; // page where it still fits
    h.w(mmio::LEGACY_QUEUE_PFN, pfn);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), pfn);
    let mut h = legacy();
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::LEGACY_QUEUE_ALIGN, 16);
    h.w(mmio::LEGACY_QUEUE_PFN, pfn + 1);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
}

#[test]
fn queue_addresses_above_4_gib_use_the_high_halves() {
    // §4.2.2: QueueDescHigh, QueueDriverHigh and QueueDeviceHigh are bits
    // 32..63 of the three areas. Each area above 4 GiB in turn, then all
    // three: the device gets the 64-bit addresses, the ring works there.
    let low = HIGH & 0xffff_ffff;
    let layouts = [
        (HIGH, low + 0x1000, low + 0x2000),
        (low, HIGH + 0x1000, low + 0x2000),
        (low, low + 0x1000, HIGH + 0x2000),
        (HIGH, HIGH + 0x1000, HIGH + 0x2000),
    ];
    for (desc, driver, device) in layouts {
        let mut h = harness_on(TransportVersion::Modern, mem_with_high(), |_| {});
        h.linux_v2_until_features_ok(all_modern_bits());
        h.w(mmio::QUEUE_SEL, 0);
        h.w(mmio::QUEUE_SIZE, 8);
        for (reg_low, reg_high, addr) in [
            (mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, desc),
            (mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, driver),
            (mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, device),
        ] {
            h.w(reg_high, (addr >> 32) as u32);
            h.w(reg_low, addr as u32);
        }
        h.w(mmio::QUEUE_READY, 1);
        assert_eq!(h.r(mmio::QUEUE_READY), 1);
        h.add_status(DRIVER_OK);
        let queue = h.rec().activated_queues[0];
        assert_eq!(queue, (true, 8, (desc, driver, device)));
    }
    // A high half pointing at nothing: the ring is refused.
    let mut h = harness_on(TransportVersion::Modern, mem_with_high(), |_| {});
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_DEVICE_HIGH, 5);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 0, "used ring at 0x5_0001_2000");
}

#[test]
fn legacy_queue_pfn_above_4_gib() {
    // §4.2.4: QueuePFN counts GuestPageSize pages; page 0x30001 of 4 KiB
    // is HIGH. The multiplication must not be done in 32 bits.
    let mut h = harness_on(TransportVersion::Legacy, mem_with_high(), |_| {});
    h.w(mmio::LEGACY_GUEST_PAGE_SIZE, 4096);
    h.w(mmio::STATUS, 0);
    h.add_status(ACKNOWLEDGE | DRIVER);
    let offered = h.read_device_features();
    h.write_driver_features(offered);
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::QUEUE_SIZE, 8);
    h.w(mmio::LEGACY_QUEUE_ALIGN, 4096);
    let pfn = (HIGH / 4096) as u32;
    h.w(mmio::LEGACY_QUEUE_PFN, pfn);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), pfn);
    h.add_status(DRIVER_OK);
    // 8 entries: descriptors 128 bytes, avail ring 20 bytes, used ring at
    // the next 4 KiB boundary.
    let queue = h.rec().activated_queues[0];
    assert_eq!(queue, (true, 8, (HIGH, HIGH + 128, HIGH + 4096)));
    // With 64 KiB pages the same page number is 16 times further: past
    // the memory, refused.
    let mut h = harness_on(TransportVersion::Legacy, mem_with_high(), |_| {});
    h.w(mmio::LEGACY_GUEST_PAGE_SIZE, 0x1_0000);
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::LEGACY_QUEUE_PFN, pfn);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    h.w(mmio::LEGACY_QUEUE_PFN, (HIGH >> 16) as u32);
    assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), (HIGH >> 16) as u32);
}

// ---- notifications ----------------------------------------------------

#[test]
fn queue_notify_forwards_the_queue_index() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let mut h = harness_with(version, |_| {});
        h.linux_probe(version);
        h.w(mmio::QUEUE_NOTIFY, 1);
        h.w(mmio::QUEUE_NOTIFY, 0);
        assert_eq!(h.rec().notifies, vec![(1, None), (0, None)], "{version:?}");
    }
}

#[test]
fn queue_notify_is_ignored_before_driver_ok_or_for_absent_queues() {
    let mut h = modern();
    h.linux_v2_until_features_ok(all_modern_bits());
    h.program_queue(0, 8, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    h.w(mmio::QUEUE_NOTIFY, 0);
    assert!(h.rec().notifies.is_empty(), "before DRIVER_OK");
    h.add_status(DRIVER_OK);
    h.w(mmio::QUEUE_NOTIFY, 1); // not ready
    h.w(mmio::QUEUE_NOTIFY, 2); // absent
    h.w(mmio::QUEUE_NOTIFY, 0x1_0000); // absent, not queue 0
    h.w(mmio::QUEUE_NOTIFY, u32::MAX);
    assert!(h.rec().notifies.is_empty());
    h.w(mmio::QUEUE_NOTIFY, 0);
    assert_eq!(h.rec().notifies, vec![(0, None)]);
    // After reset, nothing more.
    h.w(mmio::STATUS, 0);
    h.w(mmio::QUEUE_NOTIFY, 0);
    assert_eq!(h.rec().notifies.len(), 1);
}

#[test]
fn notification_data_is_decoded_when_negotiated() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_NOTIFICATION_DATA);
    });
    h.linux_v2_probe(all_modern_bits());
    let data = NotificationData::for_split(1, 0x8005);
    h.w(mmio::QUEUE_NOTIFY, data.to_u32());
    h.w(mmio::QUEUE_NOTIFY, 0x1234_0000); // queue 0, next_off 0x1234
                                          // vqn of an absent queue: dropped.
    h.w(mmio::QUEUE_NOTIFY, 0x0001_0002);
    let expected = vec![
        (
            1,
            Some(NotificationData {
                vqn: 1,
                next_off: 5,
                next_wrap: true,
            }),
        ),
        (
            0,
            Some(NotificationData {
                vqn: 0,
                next_off: 0x1234,
                next_wrap: false,
            }),
        ),
    ];
    assert_eq!(h.rec().notifies, expected);
}

#[test]
fn notification_data_is_not_decoded_unless_negotiated() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_NOTIFICATION_DATA);
    });
    h.linux_v2_probe(!bit(features::VIRTIO_F_NOTIFICATION_DATA));
    h.w(mmio::QUEUE_NOTIFY, 0x0005_0001); // a queue index of 0x50001: absent
    h.w(mmio::QUEUE_NOTIFY, 1);
    assert_eq!(h.rec().notifies, vec![(1, None)]);
}

// ---- interrupts -------------------------------------------------------

#[test]
fn interrupt_status_holds_events_until_acknowledged() {
    for version in [TransportVersion::Modern, TransportVersion::Legacy] {
        let mut h = harness_with(version, |_| {});
        h.linux_probe(version);
        assert_eq!(h.r(mmio::INTERRUPT_STATUS), 0);
        let status = h.rec().interrupt.clone().unwrap();
        status.raise(InterruptCause::UsedBuffer);
        assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_VRING);
        h.t.config_changed();
        assert_eq!(
            h.r(mmio::INTERRUPT_STATUS),
            mmio::INT_VRING | mmio::INT_CONFIG
        );
        // InterruptACK clears exactly the written bits.
        h.w(mmio::INTERRUPT_ACK, mmio::INT_CONFIG);
        assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_VRING);
        h.w(mmio::INTERRUPT_ACK, 0);
        assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_VRING);
        h.w(mmio::INTERRUPT_ACK, 0xffff_fffc); // undefined bits only
        assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_VRING);
        // Linux: read, write back the same value.
        let pending = h.r(mmio::INTERRUPT_STATUS);
        h.w(mmio::INTERRUPT_ACK, pending);
        assert_eq!(h.r(mmio::INTERRUPT_STATUS), 0);
    }
}

#[test]
fn level_line_follows_interrupt_status() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    h.line.take();
    let status = h.rec().interrupt.clone().unwrap();
    status.raise(InterruptCause::UsedBuffer);
    assert_eq!(
        h.line.take(),
        vec![
            LineEvent::Trigger(InterruptCause::UsedBuffer),
            LineEvent::Level(1)
        ]
    );
    h.t.config_changed();
    assert_eq!(
        h.line.take(),
        vec![
            LineEvent::Trigger(InterruptCause::ConfigChange),
            LineEvent::Level(3)
        ]
    );
    h.w(mmio::INTERRUPT_ACK, 1);
    assert_eq!(h.line.take(), vec![LineEvent::Level(2)]);
    h.w(mmio::INTERRUPT_ACK, 2);
    assert_eq!(h.line.take(), vec![LineEvent::Level(0)]);
    status.raise(InterruptCause::UsedBuffer);
    h.line.take();
    h.w(mmio::STATUS, 0);
    assert_eq!(h.line.take(), vec![LineEvent::Level(0)]);
}

// ---- configuration space and ConfigGeneration -------------------------

#[test]
fn config_generation_changes_only_when_the_config_changes() {
    let mut h = modern();
    let g0 = h.r(mmio::CONFIG_GENERATION);
    // Reads, other registers and a write that changes nothing: no change.
    let mut d = [0u8; 4];
    h.t.read(mmio::CONFIG, &mut d);
    h.t.write(mmio::CONFIG, &[9, 9, 9, 9]); // read-only bytes: ignored by the device
    h.w(mmio::STATUS, ACKNOWLEDGE);
    assert_eq!(h.r(mmio::CONFIG_GENERATION), g0);
    // A driver write that changes the config.
    h.t.write(mmio::CONFIG + 4, &[1]);
    let g1 = h.r(mmio::CONFIG_GENERATION);
    assert_ne!(g1, g0);
    // The same value again: no change.
    h.t.write(mmio::CONFIG + 4, &[1]);
    assert_eq!(h.r(mmio::CONFIG_GENERATION), g1);
    // A host change.
    h.t.config_changed();
    assert_ne!(h.r(mmio::CONFIG_GENERATION), g1);
}

#[test]
fn config_generation_is_monotonic_across_reset() {
    let mut h = modern();
    h.t.config_changed();
    h.t.config_changed();
    let g = h.r(mmio::CONFIG_GENERATION);
    assert_eq!(g, 2);
    h.w(mmio::STATUS, 0);
    assert_eq!(h.r(mmio::CONFIG_GENERATION), g);
    h.t.config_changed();
    assert_eq!(h.r(mmio::CONFIG_GENERATION), g + 1);
}

#[test]
fn config_change_interrupt_only_after_driver_ok() {
    let mut h = modern();
    h.linux_v2_until_features_ok(all_modern_bits());
    h.t.config_changed();
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), 0);
    assert!(h
        .line
        .take()
        .iter()
        .all(|e| !matches!(e, LineEvent::Trigger(_))));
    h.add_status(DRIVER_OK);
    h.t.config_changed();
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_CONFIG);
    // Legacy windows notify config changes too.
    let mut h = legacy();
    h.linux_legacy_probe();
    h.t.config_changed();
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_CONFIG);
}

#[test]
fn config_is_readable_before_features_ok() {
    let mut h = modern();
    h.add_status(ACKNOWLEDGE | DRIVER);
    let mut d = [0u8; 4];
    h.t.read(mmio::CONFIG, &mut d);
    assert_eq!(d, [0x11, 0x22, 0x33, 0x44]);
}

// ---- shared memory ----------------------------------------------------

#[test]
fn shm_absent_region_reads_all_ones() {
    let mut h = modern();
    for sel in [0u32, 1, 0x100, u32::MAX] {
        h.w(mmio::SHM_SEL, sel);
        for offset in [
            mmio::SHM_LEN_LOW,
            mmio::SHM_LEN_HIGH,
            mmio::SHM_BASE_LOW,
            mmio::SHM_BASE_HIGH,
        ] {
            assert_eq!(h.r(offset), 0xffff_ffff, "sel {sel} offset {offset:#x}");
        }
    }
}

#[test]
fn shm_present_region_reads_its_base_and_length() {
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.shm = vec![
            SharedMemoryRegion {
                id: 0,
                base: 0x1_2345_6000,
                len: 0x20_0000,
            },
            SharedMemoryRegion {
                id: 7,
                base: 0x8000_0000,
                len: 0x1_0000_1000,
            },
        ];
    });
    h.w(mmio::SHM_SEL, 7);
    assert_eq!(h.r(mmio::SHM_LEN_LOW), 0x1000);
    assert_eq!(h.r(mmio::SHM_LEN_HIGH), 1);
    assert_eq!(h.r(mmio::SHM_BASE_LOW), 0x8000_0000);
    assert_eq!(h.r(mmio::SHM_BASE_HIGH), 0);
    h.w(mmio::SHM_SEL, 0);
    assert_eq!(h.r(mmio::SHM_BASE_LOW), 0x2345_6000);
    assert_eq!(h.r(mmio::SHM_BASE_HIGH), 1);
    assert_eq!(h.r(mmio::SHM_LEN_LOW), 0x20_0000);
    // id 7 + 256 must not alias id 7.
    h.w(mmio::SHM_SEL, 0x107);
    assert_eq!(h.r(mmio::SHM_LEN_LOW), 0xffff_ffff);
}

// ---- properties -------------------------------------------------------

/// An access of the random sequences.
#[derive(Clone, Debug)]
enum Access {
    Read {
        offset: u64,
        width: usize,
    },
    Write {
        offset: u64,
        width: usize,
        value: u32,
    },
    ConfigChanged,
    UsedBuffer,
}

fn offset_strategy() -> impl Strategy<Value = u64> {
    let registers: Vec<u64> = mmio::REGISTERS.iter().map(|r| r.offset).collect();
    prop_oneof![
        6 => proptest::sample::select(registers),
        1 => 0u64..0x1100,
        1 => mmio::CONFIG..mmio::CONFIG + 16,
        1 => any::<u64>(),
    ]
}

fn value_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => 0u32..16,
        1 => proptest::sample::select(vec![
            ACKNOWLEDGE,
            ACKNOWLEDGE | DRIVER,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            0x1_0000,
            0x1_0000 | 0x1000,
            1 << (features::VIRTIO_F_VERSION_1 - 32),
        ]),
        1 => any::<u32>(),
    ]
}

fn access_strategy() -> impl Strategy<Value = Access> {
    let width =
        prop_oneof![8 => Just(4usize), 1 => Just(1usize), 1 => Just(2usize), 1 => 0usize..9];
    prop_oneof![
        4 => (offset_strategy(), width.clone()).prop_map(|(offset, width)| Access::Read { offset, width }),
        6 => (offset_strategy(), width, value_strategy())
            .prop_map(|(offset, width, value)| Access::Write { offset, width, value }),
        1 => Just(Access::ConfigChanged),
        1 => Just(Access::UsedBuffer),
    ]
}

/// Checks the invariants after each access; `written` is the OR of every
/// value written to `Status` since the last reset.
fn check_invariants(h: &mut Harness, written: u32) {
    let status = h.r(mmio::STATUS);
    assert_eq!(
        status & !(written | DEVICE_NEEDS_RESET),
        0,
        "status {status:#x}, written {written:#x}"
    );
    assert_eq!(status & FAILED & !written, 0);
    let interrupt = h.r(mmio::INTERRUPT_STATUS);
    assert_eq!(interrupt & !3, 0);
    assert_eq!(h.r(mmio::QUEUE_SEL), 0, "write-only");
    // Absent queues read QueueReady 0 and QueueSizeMax 0, whatever the
    // driver did (the selector is set directly to keep the sequence).
    let saved = h.t.queue_sel;
    for absent in [2u32, 0x1_0000, u32::MAX] {
        h.t.queue_sel = absent;
        assert_eq!(h.r(mmio::QUEUE_READY), 0);
        assert_eq!(h.r(mmio::QUEUE_SIZE_MAX), 0);
        assert_eq!(h.r(mmio::LEGACY_QUEUE_PFN), 0);
    }
    h.t.queue_sel = saved;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_accesses_never_panic_and_keep_invariants(
        legacy_window in any::<bool>(),
        probed in any::<bool>(),
        accesses in proptest::collection::vec(access_strategy(), 1..200),
    ) {
        let version = if legacy_window { TransportVersion::Legacy } else { TransportVersion::Modern };
        let mut h = harness_with(version, |d| {
            d.features |= bit(features::VIRTIO_F_RING_RESET) | bit(features::VIRTIO_F_NOTIFICATION_DATA);
            d.shm = vec![SharedMemoryRegion { id: 1, base: 0x4000_0000, len: 0x1000 }];
        });
        let mut written = 0u32;
        if probed {
            // Start from a running device half of the time, so that
            // notifications, queue resets and DRIVER_OK-time rules are hit.
            if legacy_window {
                h.linux_legacy_probe();
            } else {
                h.linux_v2_probe(all_modern_bits());
            }
            written = h.t.status();
        }
        for access in accesses {
            match access {
                Access::Read { offset, width } => {
                    let mut data = vec![0xaa; width];
                    h.t.read(offset, &mut data);
                    let valid_control = offset < mmio::CONFIG && width == 4 && offset % 4 == 0;
                    let valid_config = offset >= mmio::CONFIG
                        && matches!(width, 1 | 2 | 4)
                        && offset % width as u64 == 0
                        && offset.checked_add(width as u64).is_some_and(|e| e <= mmio::WINDOW_SIZE);
                    if !valid_control && !valid_config {
                        prop_assert!(data.iter().all(|&b| b == 0), "{offset:#x}/{width}: {data:?}");
                    }
                }
                Access::Write { offset, width, value } => {
                    let bytes = value.to_le_bytes();
                    let data: Vec<u8> = (0..width).map(|i| bytes.get(i).copied().unwrap_or(0)).collect();
                    let before = h.t.status();
                    h.t.write(offset, &data);
                    if offset == mmio::STATUS && width == 4 {
                        if value == 0 {
                            written = 0;
                        } else {
                            written |= value;
                        }
                    }
                    // Only a Status write changes Status (DEVICE_NEEDS_RESET aside).
                    if offset != mmio::STATUS || width != 4 {
                        prop_assert_eq!(h.t.status() & !DEVICE_NEEDS_RESET, before & !DEVICE_NEEDS_RESET);
                    }
                }
                Access::ConfigChanged => h.t.config_changed(),
                Access::UsedBuffer => h.t.interrupt_status().raise(InterruptCause::UsedBuffer),
            }
            check_invariants(&mut h, written);
        }
    }
}

#[test]
fn device_reported_needs_reset_shows_in_status_until_reset() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    let interrupt = h.rec().interrupt.clone().expect("activated");
    interrupt.device_needs_reset();
    assert_ne!(h.r(mmio::STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_eq!(h.r(mmio::INTERRUPT_STATUS), mmio::INT_CONFIG);
    h.w(mmio::STATUS, 0);
    assert_eq!(h.r(mmio::STATUS), 0);
    assert!(!interrupt.needs_reset(), "a reset clears the flag");
}

#[test]
fn backend_events_reach_only_a_running_device() {
    let (rx, tx) = std::io::pipe().unwrap();
    let rx = Arc::new(OwnedFd::from(rx));
    let mut h = harness_with(TransportVersion::Modern, |d| d.backend = Some(rx.clone()));
    std::io::Write::write_all(&mut &tx, b"x").unwrap();
    // Before DRIVER_OK the device lists nothing and hears nothing.
    assert!(h.t.backend_fds().is_empty());
    assert_eq!(h.t.poll_backends(Duration::ZERO).unwrap(), 0);
    h.t.backend_event(7);
    assert!(h.rec().backend_events.is_empty());

    h.linux_v2_probe(u64::MAX);
    assert_eq!(h.t.backend_fds().len(), 1);
    assert_eq!(h.t.poll_backends(Duration::from_secs(5)).unwrap(), 1);
    assert_eq!(h.rec().backend_events, [7]);

    // After a reset the device is stopped again.
    h.w(mmio::STATUS, 0);
    assert_eq!(h.t.poll_backends(Duration::ZERO).unwrap(), 0);
    assert_eq!(h.rec().backend_events, [7]);
}

#[test]
fn poll_backends_waits_for_the_interest_the_device_lists() {
    // The read end of an empty pipe, readable interest: not ready.
    let (rx, tx) = std::io::pipe().unwrap();
    let rx = Arc::new(OwnedFd::from(rx));
    let mut h = harness_with(TransportVersion::Modern, |d| d.backend = Some(rx.clone()));
    h.linux_v2_probe(u64::MAX);
    assert_eq!(h.t.backend_fds().len(), 1);
    assert_eq!(h.t.poll_backends(Duration::ZERO).unwrap(), 0);
    assert!(h.rec().backend_events.is_empty());
    // The write end, readable and writable interest: ready (for writing).
    let tx = Arc::new(OwnedFd::from(tx));
    let mut h = harness_with(TransportVersion::Modern, |d| {
        d.backend = Some(tx.clone());
        d.backend_writable = true;
    });
    h.linux_v2_probe(u64::MAX);
    assert_eq!(h.t.poll_backends(Duration::ZERO).unwrap(), 1);
    assert_eq!(h.rec().backend_events, [7]);
}

#[test]
fn queue_shows_the_window_copy_of_each_queue() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    for (index, base) in [(0u16, 0x1_0000u64), (1, 0x2_0000)] {
        let q = h.t.queue(index).expect("the fake has two queues");
        let max = FAKE_MAX[usize::from(index)];
        let want = (true, max, (base, base + 0x1000, base + 0x2000));
        assert_eq!(view(&q), want, "queue {index}");
    }
    assert!(h.t.queue(2).is_none());
    assert!(h.t.is_activated());
    h.w(mmio::STATUS, 0);
    assert!(!h.t.is_activated());
    assert_eq!(h.t.queue(0).map(|q| q.ready()), Some(false));
}

#[test]
fn needs_reset_from_both_the_device_and_the_embedder_shows_once() {
    let mut h = modern();
    h.linux_v2_probe(all_modern_bits());
    let interrupt = h.rec().interrupt.clone().expect("activated");
    interrupt.device_needs_reset();
    h.t.set_device_needs_reset();
    assert_ne!(h.r(mmio::STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_ne!(h.t.status() & DEVICE_NEEDS_RESET, 0);
    h.w(mmio::STATUS, 0);
    assert_eq!(h.r(mmio::STATUS), 0);
}

#[test]
fn version_1_offered_by_the_device_stays_offered() {
    // A device that offers VIRTIO_F_VERSION_1 itself: a Modern window
    // still offers it (adding the bit twice must not clear it).
    let h = harness_with(TransportVersion::Modern, |d| {
        d.features |= bit(features::VIRTIO_F_VERSION_1);
    });
    let version_1 = bit(features::VIRTIO_F_VERSION_1);
    assert_eq!(h.t.offered_features() & version_1, version_1);
    assert_eq!(h.t.offered_features() & FAKE_FEATURES, FAKE_FEATURES);
}

#[test]
fn disabling_a_queue_tells_only_a_running_device_and_only_about_a_live_queue() {
    let mut h = modern();
    h.linux_v2_until_features_ok(all_modern_bits());
    // Before DRIVER_OK there is no running device to tell.
    h.program_queue(0, 256, 0x1_0000);
    h.w(mmio::QUEUE_READY, 1);
    assert_eq!(h.r(mmio::QUEUE_READY), 1);
    h.w(mmio::QUEUE_READY, 0);
    assert_eq!(h.r(mmio::QUEUE_READY), 0);
    // Running, queue 0 not enabled: QueueReady = 0 stops nothing.
    h.add_status(DRIVER_OK);
    assert!(h.t.is_activated());
    h.w(mmio::QUEUE_SEL, 0);
    h.w(mmio::QUEUE_READY, 0);
    assert!(h.rec().queue_resets.is_empty());
}
