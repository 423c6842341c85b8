//! Probe, initialisation, queue setup, notifications, interrupts and the
//! config space of one virtio-mmio window (virtio v1.4 §4.2, §3.1).
//!
//! [`Transport`] drives the register file through a [`RegisterIo`]. Every
//! loop on a value the device controls is bounded by [`Limits`].

use core::hint::spin_loop;

use vmmio_spec::features::{
    self, bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_NOTIFICATION_DATA,
    VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1,
};
use vmmio_spec::mmio;
use vmmio_spec::notification::NotificationData;
use vmmio_spec::split::MAX_QUEUE_SIZE;
use vmmio_spec::status;

use crate::error::{Error, Result};
use crate::hal::{Hal, PAGE_SIZE};

/// [`PAGE_SIZE`] as the 32-bit value of `GuestPageSize` and `QueueAlign`.
const PAGE_SIZE_REG: u32 = 4096;
const _: () = assert!(PAGE_SIZE_REG as usize == PAGE_SIZE);
use crate::io::RegisterIo;
use crate::queue::VirtQueue;

/// Which register layout the window presents (`Version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `Version` 1: the legacy layout of virtio v1.4 §4.2.4 (`QueuePFN`,
    /// `GuestPageSize`, no FEATURES_OK, guest-native byte order in rings
    /// and config).
    Legacy,
    /// `Version` 2: the layout of virtio v1.4 §4.2.2.
    Modern,
}

/// The transport feature bits this driver implements and therefore may
/// accept (virtio v1.4 §6): INDIRECT_DESC, EVENT_IDX, VERSION_1,
/// NOTIFICATION_DATA, RING_RESET and RING_PACKED. Others (ACCESS_PLATFORM,
/// IN_ORDER, ORDER_PLATFORM, ...) are never accepted.
pub const TRANSPORT_FEATURES: u64 = bit(VIRTIO_F_INDIRECT_DESC)
    | bit(VIRTIO_F_EVENT_IDX)
    | bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_NOTIFICATION_DATA)
    | bit(VIRTIO_F_RING_RESET)
    | bit(VIRTIO_F_RING_PACKED);

/// The transport features accepted unless the caller changes them with
/// [`Transport::set_transport_features`]: all of [`TRANSPORT_FEATURES`]
/// but RING_RESET, which is opt-in because QEMU's virtio-mmio offers it
/// (its `queue_reset` property) yet ignores writes to `QueueReset`, and
/// RING_PACKED, opt-in so that a caller chooses the ring (queues are
/// packed when it is negotiated).
pub const DEFAULT_TRANSPORT_FEATURES: u64 =
    TRANSPORT_FEATURES & !bit(VIRTIO_F_RING_RESET) & !bit(VIRTIO_F_RING_PACKED);

/// Feature bits a class driver may accept for its device type within the
/// first 64: 0 to 23, 42, and 50 to 63. Virtio v1.4 §2.2 also lists 41 as
/// a device-type bit, but §6 defines it as VIRTIO_F_ADMIN_VQ, which
/// §4.2.5 says MMIO does not support: it is never accepted.
pub const DEVICE_TYPE_FEATURES: u64 = 0x00ff_ffff | bit(42) | (u64::MAX << 50);

/// Bounds on every wait for the device. Each is a number of register reads
/// (or, for [`Limits::io_polls`], used-ring polls); between polls the
/// driver calls [`core::hint::spin_loop`]. There is no clock in `no_std`:
/// pick numbers that match how fast your device answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `Status` reads after writing 0 before giving up on the reset
    /// (virtio v1.4 §2.4.2). Default 1 000 000.
    pub reset_polls: u32,
    /// `QueueReset` (or `QueueReady` after writing 0) reads before giving
    /// up (virtio v1.4 §4.2.2.2). Default 1 000 000.
    pub queue_polls: u32,
    /// Attempts at a config read whose `ConfigGeneration` keeps changing
    /// (virtio v1.4 §2.5.1), or legacy double reads that keep differing.
    /// Default 64.
    pub config_retries: u32,
    /// Used-ring polls of one blocking class-driver request. Default
    /// 100 000 000.
    pub io_polls: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            reset_polls: 1_000_000,
            queue_polls: 1_000_000,
            config_retries: 64,
            io_polls: 100_000_000,
        }
    }
}

/// Events read from `InterruptStatus` and acknowledged (virtio v1.4
/// §4.2.3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptEvents {
    /// Bit 0: the device used buffers in at least one queue; check every
    /// active queue.
    pub used_buffers: bool,
    /// Bit 1: the configuration space changed (or DEVICE_NEEDS_RESET).
    pub config_changed: bool,
}

/// A shared memory region (virtio v1.4 §2.10, `SHMSel` / `SHMLen*` /
/// `SHMBase*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmRegion {
    /// Physical base address chosen by the device.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One probed virtio-mmio device: its window, version, IDs, negotiated
/// features and initialisation state.
///
/// # Example
///
/// ```
/// # use vmmio_driver::{RegisterIo, Result, Transport};
/// // The start of every class driver (virtio v1.4 §3.1.1): probe, then
/// // negotiate; queues and DRIVER_OK follow.
/// fn start<R: RegisterIo>(io: R) -> Result<Option<Transport<R>>> {
///     let Some(mut t) = Transport::probe(io)? else {
///         return Ok(None); // DeviceID 0: an empty slot, not an error
///     };
///     let negotiated = t.begin_init(0)?;
///     log::info!("device {} features {negotiated:#x}", t.device_id());
///     Ok(Some(t))
/// }
/// ```
#[derive(Debug)]
pub struct Transport<R> {
    io: R,
    version: Version,
    device_id: u32,
    vendor_id: u32,
    limits: Limits,
    transport_features: u64,
    features: u64,
    /// Every status bit the driver has set since the last reset.
    status: u32,
}

impl<R: RegisterIo> Transport<R> {
    /// Probes the window with default [`Limits`]; see
    /// [`probe_with_limits`](Self::probe_with_limits).
    ///
    /// # Errors
    ///
    /// [`Error::BadMagic`], [`Error::UnsupportedVersion`].
    pub fn probe(io: R) -> Result<Option<Self>> {
        Self::probe_with_limits(io, Limits::default())
    }

    /// Probes the window in the order virtio v1.4 §4.2.3.1.1 requires:
    /// `MagicValue`, `Version`, then `DeviceID`. `DeviceID` 0 is an empty
    /// slot: returns `Ok(None)` having read those three registers and
    /// nothing else. Otherwise reads `VendorID` and returns the transport;
    /// the device is not touched further until [`begin_init`](Self::begin_init).
    ///
    /// # Errors
    ///
    /// [`Error::BadMagic`] with the value read, [`Error::UnsupportedVersion`]
    /// for a `Version` other than 1 or 2 (the driver ignores such devices,
    /// §4.2.2.2).
    pub fn probe_with_limits(mut io: R, limits: Limits) -> Result<Option<Self>> {
        let magic = io.read_reg(mmio::MAGIC);
        if magic != mmio::MAGIC_VALUE {
            return Err(Error::BadMagic(magic));
        }
        let version = match io.read_reg(mmio::VERSION) {
            mmio::VERSION_LEGACY => Version::Legacy,
            mmio::VERSION_MODERN => Version::Modern,
            v => return Err(Error::UnsupportedVersion(v)),
        };
        let device_id = io.read_reg(mmio::DEVICE_ID);
        if device_id == 0 {
            return Ok(None);
        }
        let vendor_id = io.read_reg(mmio::VENDOR_ID);
        Ok(Some(Self {
            io,
            version,
            device_id,
            vendor_id,
            limits,
            transport_features: DEFAULT_TRANSPORT_FEATURES,
            features: 0,
            status: 0,
        }))
    }

    /// The register layout (`Version` 1 or 2).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The device type (`DeviceID`, virtio v1.4 §5), never 0.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The `VendorID` read at probe.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Replaces the bounds.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Restricts the transport features [`begin_init`](Self::begin_init)
    /// may accept to `mask & TRANSPORT_FEATURES` (e.g. to run without
    /// EVENT_IDX or indirect descriptors). VERSION_1 is always kept.
    pub fn set_transport_features(&mut self, mask: u64) {
        self.transport_features = (mask & TRANSPORT_FEATURES) | bit(VIRTIO_F_VERSION_1);
    }

    /// The negotiated feature bits (0 before [`begin_init`](Self::begin_init)).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature bit `n` was negotiated.
    pub fn has_feature(&self, n: u32) -> bool {
        self.features & bit(n) != 0
    }

    /// The register window, for platform-specific registers and tests.
    /// Accesses made through it bypass this transport's checks.
    pub fn io_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Gives the register window back.
    pub fn into_inner(self) -> R {
        self.io
    }

    /// Reads `Status`.
    pub fn status(&mut self) -> u32 {
        self.io.read_reg(mmio::STATUS)
    }

    /// Reads `Status` and reports DEVICE_NEEDS_RESET (virtio v1.4 §2.1).
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`] when the device set that bit.
    pub fn check_status(&mut self) -> Result<u32> {
        let s = self.status();
        if s & status::DEVICE_NEEDS_RESET != 0 {
            return Err(Error::DeviceNeedsReset);
        }
        Ok(s)
    }

    /// Adds `bits` to the driver's status and writes the total: the driver
    /// never clears a bit it set (virtio v1.4 §2.1.1).
    fn set_status(&mut self, bits: u32) {
        self.status |= bits;
        self.io.write_reg(mmio::STATUS, self.status);
    }

    /// Sets FAILED: the driver gives up on the device (virtio v1.4 §3.1.1).
    /// A later [`reset`](Self::reset) starts over.
    pub fn fail(&mut self) {
        self.set_status(status::FAILED);
    }

    /// Resets the device: writes 0 to `Status` and polls until it reads 0
    /// (virtio v1.4 §2.4.2, §4.2.2), at most [`Limits::reset_polls`] reads.
    /// Queues must then be released with
    /// [`teardown_queue`](Self::teardown_queue).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when `Status` never reads 0.
    pub fn reset(&mut self) -> Result<()> {
        self.io.write_reg(mmio::STATUS, 0);
        self.status = 0;
        self.features = 0;
        for _ in 0..self.limits.reset_polls {
            if self.io.read_reg(mmio::STATUS) == 0 {
                return Ok(());
            }
            spin_loop();
        }
        Err(Error::Timeout {
            what: "Status to read 0 after reset",
        })
    }

    /// Steps 1 to 6 of virtio v1.4 §3.1.1: reset, ACKNOWLEDGE, DRIVER, read
    /// the device's feature pages 0 and 1 (`DeviceFeaturesSel` written
    /// before each read), accept the offered bits this driver implements
    /// (`device_features`, the class driver's device-type bits, plus
    /// [`TRANSPORT_FEATURES`]), write them (`DriverFeaturesSel` before each
    /// write), then on Version 2 set FEATURES_OK and read it back. On
    /// legacy devices FEATURES_OK does not exist (§3.1.2) and only page 0
    /// is used; `GuestPageSize` (4096) is written here, after negotiation
    /// and before any queue (§4.2.4).
    ///
    /// Returns the negotiated features. Queues come next
    /// ([`setup_queue`](Self::setup_queue)), then
    /// [`finish_init`](Self::finish_init).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] (reset), [`Error::Version1NotOffered`] and
    /// [`Error::FeaturesRefused`] (both after setting FAILED),
    /// [`Error::DeviceNeedsReset`].
    pub fn begin_init(&mut self, device_features: u64) -> Result<u64> {
        self.reset()?;
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::DRIVER);
        let mut offered = 0u64;
        for page in 0..2u32 {
            self.io.write_reg(mmio::DEVICE_FEATURES_SEL, page);
            offered |= u64::from(self.io.read_reg(mmio::DEVICE_FEATURES)) << (32 * page);
        }
        let wanted = (device_features & DEVICE_TYPE_FEATURES) | self.transport_features;
        let mut accepted = offered & wanted;
        match self.version {
            Version::Modern => {
                if offered & bit(VIRTIO_F_VERSION_1) == 0 {
                    self.fail();
                    return Err(Error::Version1NotOffered { offered });
                }
                for page in [1u32, 0] {
                    self.io.write_reg(mmio::DRIVER_FEATURES_SEL, page);
                    self.io
                        .write_reg(mmio::DRIVER_FEATURES, features::page(accepted, page));
                }
                self.set_status(status::FEATURES_OK);
                let s = self.status();
                if s & status::FEATURES_OK == 0 {
                    self.fail();
                    return Err(Error::FeaturesRefused {
                        accepted,
                        status: s,
                    });
                }
                if s & status::DEVICE_NEEDS_RESET != 0 {
                    self.fail();
                    return Err(Error::DeviceNeedsReset);
                }
            }
            Version::Legacy => {
                // Legacy devices have 32 feature bits (HostFeatures page 0).
                accepted &= u64::from(u32::MAX);
                self.io.write_reg(mmio::DRIVER_FEATURES_SEL, 0);
                self.io
                    .write_reg(mmio::DRIVER_FEATURES, features::page(accepted, 0));
                self.io
                    .write_reg(mmio::LEGACY_GUEST_PAGE_SIZE, PAGE_SIZE_REG);
            }
        }
        self.features = accepted;
        Ok(accepted)
    }

    /// Step 8 of virtio v1.4 §3.1.1: sets DRIVER_OK (queues are set up;
    /// the device is live), then reads `Status` back.
    ///
    /// # Errors
    ///
    /// [`Error::WrongPhase`] before [`begin_init`](Self::begin_init);
    /// [`Error::DeviceNeedsReset`] when the device refused to start.
    pub fn finish_init(&mut self) -> Result<()> {
        if self.status & status::DRIVER == 0 {
            return Err(Error::WrongPhase("DRIVER_OK before begin_init"));
        }
        self.set_status(status::DRIVER_OK);
        self.check_status().map(|_| ())
    }

    /// Whether DRIVER_OK is set (by this driver, since the last reset).
    pub fn is_driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0
    }

    /// Sets up queue `index` with at most `wanted` entries (virtio v1.4
    /// §4.2.3.2, legacy §4.2.4): selects it, checks it is unused
    /// (`QueueReady` 0, legacy `QueuePFN` 0), reads `QueueSizeMax`
    /// (formerly `QueueNumMax`), picks the largest power of two at most
    /// `min(wanted, QueueSizeMax, 32768)`, allocates zeroed memory from
    /// `hal`, writes `QueueSize` (formerly `QueueNum`) and the three
    /// addresses, low word then high, then `QueueReady` = 1. Legacy:
    /// `QueueAlign` = 4096 and `QueuePFN`.
    ///
    /// Also used to re-enable a queue after [`reset_queue`](Self::reset_queue),
    /// possibly with another size (§2.6.1.2.2).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroQueueSize`], [`Error::QueueAlreadyUsed`],
    /// [`Error::QueueAbsent`], [`Error::DmaAlloc`],
    /// [`Error::BadQueueAddress`], [`Error::PfnTooLarge`]. Nothing past the
    /// checks is written on error.
    pub fn setup_queue<H: Hal + Clone>(
        &mut self,
        hal: H,
        index: u16,
        wanted: u16,
    ) -> Result<VirtQueue<H>> {
        if wanted == 0 {
            return Err(Error::ZeroQueueSize(index));
        }
        self.io.write_reg(mmio::QUEUE_SEL, u32::from(index));
        let in_use = match self.version {
            Version::Modern => self.io.read_reg(mmio::QUEUE_READY),
            Version::Legacy => self.io.read_reg(mmio::LEGACY_QUEUE_PFN),
        };
        if in_use != 0 {
            return Err(Error::QueueAlreadyUsed(index));
        }
        let max = self.io.read_reg(mmio::QUEUE_SIZE_MAX);
        if max == 0 {
            return Err(Error::QueueAbsent(index));
        }
        let limit = u32::from(wanted).min(max).min(u32::from(MAX_QUEUE_SIZE));
        // `limit` is in 1..=32768; the largest power of two at most it.
        let size = u16::try_from(1u32 << (31 - limit.leading_zeros())).unwrap_or(MAX_QUEUE_SIZE);
        let legacy = self.version == Version::Legacy;
        let mut q = VirtQueue::new(hal, index, size, legacy, self.features)?;
        let base = q.desc_addr();
        let page = PAGE_SIZE as u64;
        if base % page != 0 || (legacy && base < page) {
            q.release();
            return Err(Error::BadQueueAddress(base));
        }
        let pfn = match u32::try_from(base / page) {
            Ok(p) => p,
            Err(_) if legacy => {
                q.release();
                return Err(Error::PfnTooLarge(base));
            }
            Err(_) => 0,
        };
        self.io.write_reg(mmio::QUEUE_SIZE, u32::from(size));
        match self.version {
            Version::Modern => {
                self.write_addr(mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, base);
                let driver = q.driver_addr();
                self.write_addr(mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, driver);
                let device = q.device_addr();
                self.write_addr(mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, device);
                self.io.write_reg(mmio::QUEUE_READY, 1);
            }
            Version::Legacy => {
                self.io.write_reg(mmio::LEGACY_QUEUE_ALIGN, PAGE_SIZE_REG);
                self.io.write_reg(mmio::LEGACY_QUEUE_PFN, pfn);
            }
        }
        Ok(q)
    }

    fn write_addr(&mut self, low: u64, high: u64, addr: u64) {
        self.io.write_reg(low, features::page(addr, 0));
        self.io.write_reg(high, features::page(addr, 1));
    }

    /// Stops queue `q` and frees its memory: writes `QueueReady` = 0 and
    /// reads it back until 0 (virtio v1.4 §4.2.2.2), or legacy `QueuePFN`
    /// = 0 (read back too). After a device [`reset`](Self::reset) this
    /// succeeds at once. Buffers still in flight are unshared.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the register never reads 0; the queue's
    /// memory is then leaked, not freed, since the device may still use it.
    pub fn teardown_queue<H: Hal + Clone>(&mut self, mut q: VirtQueue<H>) -> Result<()> {
        self.io.write_reg(mmio::QUEUE_SEL, u32::from(q.index()));
        let reg = match self.version {
            Version::Modern => mmio::QUEUE_READY,
            Version::Legacy => mmio::LEGACY_QUEUE_PFN,
        };
        self.io.write_reg(reg, 0);
        self.poll_zero(reg, "queue to read back as disabled")?;
        q.release();
        Ok(())
    }

    /// Class-driver cleanup: resets the device (unless `reset` is false,
    /// which keeps a FAILED status visible), then tears every queue down.
    /// Returns false when some queue could not be stopped and its memory
    /// was leaked; buffers the caller owns must then be leaked too.
    pub(crate) fn shutdown<H: Hal + Clone>(
        &mut self,
        queues: impl IntoIterator<Item = VirtQueue<H>>,
        reset: bool,
    ) -> bool {
        let mut ok = !reset || self.reset().is_ok();
        for q in queues {
            if ok {
                ok = self.teardown_queue(q).is_ok();
            }
            // Otherwise `q` is dropped unreleased, which leaks its memory.
        }
        ok
    }

    fn poll_zero(&mut self, reg: u64, what: &'static str) -> Result<()> {
        for _ in 0..self.limits.queue_polls.max(1) {
            if self.io.read_reg(reg) == 0 {
                return Ok(());
            }
            spin_loop();
        }
        Err(Error::Timeout { what })
    }

    /// Resets queue `q` alone (VIRTIO_F_RING_RESET, virtio v1.4 §2.6.1 and
    /// §4.2.2.2): writes 1 to `QueueReset`, polls until it reads 0, then
    /// frees the queue. Re-enable it with [`setup_queue`](Self::setup_queue),
    /// with the same or new parameters.
    ///
    /// # Errors
    ///
    /// A [`QueueResetError`] that hands `q` back: with
    /// [`Error::FeatureNotNegotiated`] without RING_RESET (nothing
    /// written); with [`Error::Timeout`] when `QueueReset` or `QueueReady`
    /// never reads 0 (the device may still use the ring). The caller keeps
    /// the queue and decides: reset the whole device
    /// ([`reset`](Self::reset)) and then [`teardown_queue`](Self::teardown_queue)
    /// frees it cleanly, or drop it to leak its memory.
    // The error carries the queue back by value, as it came in: no bigger a
    // move than the argument's, and no allocation on this path.
    #[allow(clippy::result_large_err)]
    pub fn reset_queue<H: Hal + Clone>(
        &mut self,
        mut q: VirtQueue<H>,
    ) -> core::result::Result<(), QueueResetError<H>> {
        if !self.has_feature(VIRTIO_F_RING_RESET) {
            return Err(QueueResetError {
                error: Error::FeatureNotNegotiated(VIRTIO_F_RING_RESET),
                queue: q,
            });
        }
        self.io.write_reg(mmio::QUEUE_SEL, u32::from(q.index()));
        self.io.write_reg(mmio::QUEUE_RESET, 1);
        let stopped = self
            .poll_zero(mmio::QUEUE_RESET, "QueueReset to read 0")
            .and_then(|()| {
                self.poll_zero(mmio::QUEUE_READY, "QueueReady to read 0 after queue reset")
            });
        if let Err(error) = stopped {
            return Err(QueueResetError { error, queue: q });
        }
        q.release();
        Ok(())
    }

    /// Sends an available-buffer notification for `q` (virtio v1.4
    /// §4.2.3.3): writes the queue index to `QueueNotify`, or with
    /// VIRTIO_F_NOTIFICATION_DATA the index, the low 15 bits and bit 15 of
    /// the next available index (§2.9).
    ///
    /// # Errors
    ///
    /// [`Error::WrongPhase`] before DRIVER_OK (§3.1.1 forbids it).
    pub fn notify<H: Hal + Clone>(&mut self, q: &mut VirtQueue<H>) -> Result<()> {
        if !self.is_driver_ok() {
            return Err(Error::WrongPhase("notification before DRIVER_OK"));
        }
        let value = if self.has_feature(VIRTIO_F_NOTIFICATION_DATA) {
            if q.packed() {
                NotificationData::for_packed(q.index(), q.avail_idx()).to_u32()
            } else {
                NotificationData::for_split(q.index(), q.avail_idx()).to_u32()
            }
        } else {
            u32::from(q.index())
        };
        self.io.write_reg(mmio::QUEUE_NOTIFY, value);
        Ok(())
    }

    /// Notifies `q` if the device asked for it ([`VirtQueue::should_notify`]:
    /// EVENT_IDX or the NO_NOTIFY flag). Returns whether it notified.
    ///
    /// # Errors
    ///
    /// As [`notify`](Self::notify).
    pub fn notify_if_needed<H: Hal + Clone>(&mut self, q: &mut VirtQueue<H>) -> Result<bool> {
        if q.should_notify() {
            self.notify(q)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits for chain `token` of `q` to complete and returns its used
    /// length: polls the used ring at most [`Limits::io_polls`] times,
    /// reading `Status` between polls so that DEVICE_NEEDS_RESET ends the
    /// wait (virtio v1.4 §2.1.1: do not rely on completions then).
    ///
    /// # Errors
    ///
    /// The used-ring errors of [`VirtQueue::pop_used`],
    /// [`Error::UnexpectedToken`], [`Error::DeviceNeedsReset`],
    /// [`Error::Timeout`]. On any error the chain may still be in flight.
    pub fn wait_used<H: Hal + Clone>(&mut self, q: &mut VirtQueue<H>, token: u16) -> Result<u32> {
        for _ in 0..self.limits.io_polls {
            if let Some(len) = q.pop_used_token(token)? {
                return Ok(len);
            }
            self.check_status()?;
            spin_loop();
        }
        Err(Error::Timeout {
            what: "the device to use a buffer",
        })
    }

    /// Handles one interrupt (virtio v1.4 §4.2.3.4): reads
    /// `InterruptStatus` once, ignores undefined bits, writes the defined
    /// bits it saw to `InterruptACK` (never an undefined bit), and returns
    /// them. The caller then checks every active queue for used buffers
    /// (bit 0) and re-reads the config (bit 1). A configuration change
    /// also reads `Status` for DEVICE_NEEDS_RESET.
    ///
    /// One read, one write: a status that never clears cannot make this
    /// spin.
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`] (after acknowledging).
    pub fn ack_interrupt(&mut self) -> Result<InterruptEvents> {
        let bits = self.io.read_reg(mmio::INTERRUPT_STATUS) & (mmio::INT_VRING | mmio::INT_CONFIG);
        if bits != 0 {
            self.io.write_reg(mmio::INTERRUPT_ACK, bits);
        }
        let events = InterruptEvents {
            used_buffers: bits & mmio::INT_VRING != 0,
            config_changed: bits & mmio::INT_CONFIG != 0,
        };
        if events.config_changed {
            self.check_status()?;
        }
        Ok(events)
    }

    /// Reads shared memory region `id` (virtio v1.4 §2.10, §4.2.2):
    /// writes `SHMSel`, reads `SHMLen*` and `SHMBase*`. `None` when the
    /// region does not exist (length or base all ones). Call only for
    /// devices whose type defines shared memory (§4.2.3.1.1).
    ///
    /// # Errors
    ///
    /// [`Error::LegacyUnsupported`] on Version 1.
    pub fn shm_region(&mut self, id: u32) -> Result<Option<ShmRegion>> {
        if self.version == Version::Legacy {
            return Err(Error::LegacyUnsupported);
        }
        self.io.write_reg(mmio::SHM_SEL, id);
        let len = self.read_pair(mmio::SHM_LEN_LOW, mmio::SHM_LEN_HIGH);
        let base = self.read_pair(mmio::SHM_BASE_LOW, mmio::SHM_BASE_HIGH);
        if len == mmio::SHM_ABSENT || base == mmio::SHM_ABSENT {
            return Ok(None);
        }
        Ok(Some(ShmRegion { base, len }))
    }

    fn read_pair(&mut self, low: u64, high: u64) -> u64 {
        let lo = self.io.read_reg(low);
        let hi = self.io.read_reg(high);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Runs `read` until `ConfigGeneration` is the same before and after
    /// (virtio v1.4 §2.5.1, §4.2.2), at most [`Limits::config_retries`]
    /// times. Legacy devices have no generation: `read` runs until two
    /// runs agree (§2.5.4).
    fn consistent<T: PartialEq>(&mut self, mut read: impl FnMut(&mut R) -> T) -> Result<T> {
        let tries = self.limits.config_retries.max(1);
        match self.version {
            Version::Modern => {
                for _ in 0..tries {
                    let before = self.io.read_reg(mmio::CONFIG_GENERATION);
                    let v = read(&mut self.io);
                    if self.io.read_reg(mmio::CONFIG_GENERATION) == before {
                        return Ok(v);
                    }
                }
            }
            Version::Legacy => {
                let mut prev = read(&mut self.io);
                for _ in 0..tries {
                    let v = read(&mut self.io);
                    if v == prev {
                        return Ok(v);
                    }
                    prev = v;
                }
            }
        }
        Err(Error::Timeout {
            what: "a consistent config read",
        })
    }

    /// Legacy: reads `N` bytes at `offset` one byte at a time.
    fn legacy_bytes<const N: usize>(io: &mut R, offset: u64) -> [u8; N] {
        let mut b = [0u8; N];
        for (i, byte) in (0u64..).zip(b.iter_mut()) {
            *byte = io.read_config_u8(offset.saturating_add(i));
        }
        b
    }

    /// Reads the two 16-bit config fields at `a` and `b` as one consistent
    /// pair (both inside one `ConfigGeneration` check on Version 2, virtio
    /// v1.4 §2.5.1; read until two rounds agree on legacy), e.g. a
    /// console's `cols` and `rows`, which the host changes together.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn read_config_u16_pair(&mut self, a: u64, b: u64) -> Result<(u16, u16)> {
        match self.version {
            Version::Modern => self.consistent(|io| (io.read_config_u16(a), io.read_config_u16(b))),
            Version::Legacy => self.consistent(|io| {
                (
                    u16::from_ne_bytes(Self::legacy_bytes(io, a)),
                    u16::from_ne_bytes(Self::legacy_bytes(io, b)),
                )
            }),
        }
    }

    /// Reads the 8-bit config field at byte `offset` of the config space.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn read_config_u8(&mut self, offset: u64) -> Result<u8> {
        self.consistent(|io| io.read_config_u8(offset))
    }

    /// Reads the 16-bit config field at `offset`: one 16-bit access on
    /// Version 2 (virtio v1.4 §4.2.2.2), bytes in guest-native order on
    /// legacy devices (§2.5.3).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn read_config_u16(&mut self, offset: u64) -> Result<u16> {
        match self.version {
            Version::Modern => self.consistent(|io| io.read_config_u16(offset)),
            Version::Legacy => {
                self.consistent(|io| u16::from_ne_bytes(Self::legacy_bytes(io, offset)))
            }
        }
    }

    /// Reads the 32-bit config field at `offset` (one 32-bit access on
    /// Version 2; bytes on legacy).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn read_config_u32(&mut self, offset: u64) -> Result<u32> {
        match self.version {
            Version::Modern => self.consistent(|io| io.read_config_u32(offset)),
            Version::Legacy => {
                self.consistent(|io| u32::from_ne_bytes(Self::legacy_bytes(io, offset)))
            }
        }
    }

    /// Reads the 64-bit config field at `offset`: two 32-bit accesses (low
    /// word first) inside one generation check on Version 2 (virtio v1.4
    /// §4.2.2.2: 64-bit fields use 32-bit accesses); bytes on legacy.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn read_config_u64(&mut self, offset: u64) -> Result<u64> {
        match self.version {
            Version::Modern => self.consistent(|io| {
                let lo = io.read_config_u32(offset);
                let hi = io.read_config_u32(offset.saturating_add(4));
                u64::from(lo) | u64::from(hi) << 32
            }),
            Version::Legacy => {
                self.consistent(|io| u64::from_ne_bytes(Self::legacy_bytes(io, offset)))
            }
        }
    }

    /// Reads `out.len()` bytes of byte-wide config fields starting at
    /// `offset`, consistently.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn read_config_bytes(&mut self, offset: u64, out: &mut [u8]) -> Result<()> {
        let tries = self.limits.config_retries.max(1);
        // Legacy (no generation): the first pass only fills `out` (what the
        // caller left there is not a read), each later one must repeat the
        // pass before it (§2.5.4): one pass more, as in `consistent`.
        let passes = match self.version {
            Version::Modern => tries,
            Version::Legacy => tries.saturating_add(1),
        };
        for pass in 0..passes {
            let before = self.generation();
            let mut same = pass > 0;
            for (i, b) in (0u64..).zip(out.iter_mut()) {
                let v = self.io.read_config_u8(offset.saturating_add(i));
                same &= *b == v;
                *b = v;
            }
            match (before, self.generation()) {
                (Some(a), Some(b)) if a == b => return Ok(()),
                (None, None) if same => return Ok(()),
                _ => {}
            }
        }
        Err(Error::Timeout {
            what: "a consistent config read",
        })
    }

    fn generation(&mut self) -> Option<u32> {
        (self.version == Version::Modern).then(|| self.io.read_reg(mmio::CONFIG_GENERATION))
    }

    /// Writes the 8-bit config field at `offset`.
    pub fn write_config_u8(&mut self, offset: u64, value: u8) {
        self.io.write_config_u8(offset, value);
    }

    /// Writes the 16-bit config field at `offset` (one 16-bit access on
    /// Version 2; bytes in guest-native order on legacy).
    pub fn write_config_u16(&mut self, offset: u64, value: u16) {
        match self.version {
            Version::Modern => self.io.write_config_u16(offset, value),
            Version::Legacy => self.legacy_write(offset, &value.to_ne_bytes()),
        }
    }

    /// Writes the 32-bit config field at `offset` (one 32-bit access on
    /// Version 2; bytes in guest-native order on legacy).
    pub fn write_config_u32(&mut self, offset: u64, value: u32) {
        match self.version {
            Version::Modern => self.io.write_config_u32(offset, value),
            Version::Legacy => self.legacy_write(offset, &value.to_ne_bytes()),
        }
    }

    fn legacy_write(&mut self, offset: u64, bytes: &[u8]) {
        for (i, b) in (0u64..).zip(bytes) {
            self.io.write_config_u8(offset.saturating_add(i), *b);
        }
    }
}

/// A failed [`Transport::reset_queue`]: why, and the queue, handed back
/// so that the caller can still free it after a device reset (or drop it,
/// which leaks its memory, the safe choice while the device may use it).
pub struct QueueResetError<H: Hal + Clone> {
    /// Why the queue was not reset.
    pub error: Error,
    /// The queue, untouched by the failed reset.
    pub queue: VirtQueue<H>,
}

impl<H: Hal + Clone> core::fmt::Debug for QueueResetError<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QueueResetError")
            .field("error", &self.error)
            .field("queue", &self.queue)
            .finish()
    }
}

impl<H: Hal + Clone> core::fmt::Display for QueueResetError<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "queue {} not reset: {}", self.queue.index(), self.error)
    }
}

impl<H: Hal + Clone> From<QueueResetError<H>> for Error {
    fn from(e: QueueResetError<H>) -> Self {
        e.error
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::hal::IdentityHal;
    use crate::scripted::{Access, ArenaHal, Scripted};
    use alloc::vec::Vec;
    use core::ptr::NonNull;
    use vmmio_spec::device_id::BLOCK;

    fn reg_reads(s: &Scripted) -> Vec<u64> {
        s.control_log()
            .iter()
            .filter(|a| !a.write)
            .map(|a| a.offset)
            .collect()
    }

    fn modern() -> Scripted {
        Scripted::new(2, BLOCK, 2, 64)
    }

    fn legacy() -> Scripted {
        Scripted::new(1, BLOCK, 2, 64)
    }

    #[test]
    fn probe_reads_magic_then_version_then_device_id() {
        let mut s = modern();
        let t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            (t.version(), t.device_id(), t.vendor_id()),
            (Version::Modern, 2, 0x1af4)
        );
        assert_eq!(
            reg_reads(&s),
            [mmio::MAGIC, mmio::VERSION, mmio::DEVICE_ID, mmio::VENDOR_ID]
        );
        let mut s = legacy();
        let t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(t.version(), Version::Legacy);
    }

    #[test]
    fn negotiated_features_phase_and_limits_read_back() {
        use vmmio_spec::features::VIRTIO_F_EVENT_IDX;
        let mut s = modern();
        s.device_features |= bit(VIRTIO_F_EVENT_IDX) | bit(63) | bit(50);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            t.finish_init(),
            Err(Error::WrongPhase("DRIVER_OK before begin_init"))
        );
        let mut limits = t.limits();
        limits.reset_polls = 7;
        t.set_limits(limits);
        assert_eq!(t.limits().reset_polls, 7);
        // Every transport feature allowed: VERSION_1 stays accepted.
        t.set_transport_features(u64::MAX);
        let got = t.begin_init(bit(63) | bit(50)).unwrap();
        let want = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(63) | bit(50);
        assert_eq!((got, t.features()), (want, want));
        assert_eq!(DEVICE_TYPE_FEATURES, 0xfffc_0400_00ff_ffff);
    }

    #[test]
    fn probe_device_id_zero_is_empty_and_touches_nothing_else() {
        let mut s = Scripted::new(2, 0, 0, 0);
        assert!(Transport::probe(&mut s).unwrap().is_none());
        assert_eq!(reg_reads(&s), [mmio::MAGIC, mmio::VERSION, mmio::DEVICE_ID]);
        assert_eq!(s.log.len(), 3);
    }

    #[test]
    fn probe_rejects_bad_magic_and_version_with_their_values() {
        let mut s = modern();
        s.magic = 0x1234;
        assert_eq!(
            Transport::probe(&mut s).unwrap_err(),
            Error::BadMagic(0x1234)
        );
        assert_eq!(reg_reads(&s), [mmio::MAGIC]);
        let mut s = modern();
        s.version = 3;
        assert_eq!(
            Transport::probe(&mut s).unwrap_err(),
            Error::UnsupportedVersion(3)
        );
        assert_eq!(reg_reads(&s), [mmio::MAGIC, mmio::VERSION]);
    }

    /// Every DeviceFeatures read follows a DeviceFeaturesSel write, every
    /// DriverFeatures write follows a DriverFeaturesSel write.
    fn assert_selectors_first(log: &[Access]) {
        let mut dev_sel = false;
        let mut drv_sel = false;
        for a in log {
            match (a.write, a.offset) {
                (true, mmio::DEVICE_FEATURES_SEL) => dev_sel = true,
                (true, mmio::DRIVER_FEATURES_SEL) => drv_sel = true,
                (false, mmio::DEVICE_FEATURES) => {
                    assert!(dev_sel, "DeviceFeatures read without a selector");
                    dev_sel = false;
                }
                (true, mmio::DRIVER_FEATURES) => {
                    assert!(drv_sel, "DriverFeatures written without a selector");
                    drv_sel = false;
                }
                _ => {}
            }
        }
    }

    #[test]
    fn handshake_modern_follows_3_1_1_and_accepts_only_known_bits() {
        let mut s = modern();
        s.device_features |= bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(features::VIRTIO_F_IN_ORDER)
            | bit(features::VIRTIO_F_ACCESS_PLATFORM)
            | bit(features::VIRTIO_F_RING_PACKED)
            | bit(5)
            | bit(7)
            | bit(44);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        let got = t.begin_init(bit(5) | bit(6)).unwrap();
        let want = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(5);
        assert_eq!(got, want);
        t.finish_init().unwrap();
        assert_eq!(s.driver_features, want);
        assert_eq!(
            s.writes_to(mmio::STATUS),
            [0, 1, 1 | 2, 1 | 2 | 8, 1 | 2 | 8 | 4]
        );
        // FEATURES_OK is read back after being written.
        let log = s.control_log();
        let fok = log
            .iter()
            .position(|a| a.write && a.offset == mmio::STATUS && a.value == 11)
            .unwrap();
        assert!(log[fok + 1..]
            .iter()
            .any(|a| !a.write && a.offset == mmio::STATUS));
        assert_selectors_first(&log);
        assert_eq!(s.writes_to(mmio::DEVICE_FEATURES_SEL), [0, 1]);
        assert_eq!(s.writes_to(mmio::DRIVER_FEATURES_SEL), [1, 0]);
        // Never a write to a read-only register, never a read of a
        // write-only one.
        for a in &log {
            let r = mmio::register(a.offset).expect("access to a register in the table");
            match r.direction {
                mmio::Direction::R => assert!(!a.write, "wrote {}", r.name),
                mmio::Direction::W => assert!(a.write, "read {}", r.name),
                mmio::Direction::RW => {}
            }
        }
    }

    #[test]
    fn handshake_fails_without_version_1_on_version_2() {
        let mut s = modern();
        s.device_features = 0;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            t.begin_init(0),
            Err(Error::Version1NotOffered { offered: 0 })
        );
        assert_ne!(s.status & status::FAILED, 0);
    }

    #[test]
    fn handshake_sets_failed_when_features_ok_is_refused() {
        let mut s = modern();
        s.refuse_features = true;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert!(matches!(
            t.begin_init(0),
            Err(Error::FeaturesRefused { status: 3, .. })
        ));
        assert_ne!(s.status & status::FAILED, 0);
    }

    #[test]
    fn handshake_legacy_has_no_features_ok_and_sets_page_size_before_queues() {
        let mut s = legacy();
        s.device_features = bit(VIRTIO_F_EVENT_IDX) | bit(5);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            t.begin_init(bit(5)).unwrap(),
            bit(VIRTIO_F_EVENT_IDX) | bit(5)
        );
        let q = t.setup_queue(ArenaHal, 0, 8).unwrap();
        t.finish_init().unwrap();
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        assert_eq!(s.writes_to(mmio::STATUS), [0, 1, 3, 7, 0]);
        assert_eq!(s.writes_to(mmio::DRIVER_FEATURES_SEL), [0]);
        let log = s.control_log();
        let gps = log
            .iter()
            .position(|a| a.write && a.offset == mmio::LEGACY_GUEST_PAGE_SIZE && a.value == 4096)
            .unwrap();
        let sel = log
            .iter()
            .position(|a| a.write && a.offset == mmio::QUEUE_SEL)
            .unwrap();
        assert!(gps < sel);
        // No Version 2 register is touched on a legacy device.
        for a in &log {
            assert_ne!(
                mmio::register(a.offset).unwrap().layout,
                mmio::Layout::Modern
            );
        }
    }

    #[test]
    fn reset_is_bounded_when_status_never_reads_0() {
        let mut s = modern();
        s.status = 1;
        s.reset_stuck = true;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        t.set_limits(Limits {
            reset_polls: 10,
            ..Limits::default()
        });
        assert!(matches!(t.begin_init(0), Err(Error::Timeout { .. })));
        assert_eq!(
            s.control_log()
                .iter()
                .filter(|a| !a.write && a.offset == mmio::STATUS)
                .count(),
            10
        );
    }

    fn ready(s: &mut Scripted, features: u64) -> Transport<&mut Scripted> {
        s.device_features |= features;
        let mut t = Transport::probe(s).unwrap().unwrap();
        t.begin_init(0).unwrap();
        t
    }

    #[test]
    fn queue_setup_modern_order_and_size() {
        let mut s = modern();
        s.queues[1].max = 1000;
        let mut t = ready(&mut s, 0);
        let q0 = t.setup_queue(IdentityHal, 0, 100).unwrap();
        let q1 = t.setup_queue(IdentityHal, 1, 100).unwrap();
        assert_eq!((q0.size(), q1.size()), (64, 64));
        let (desc, drv, dev) = (q1.desc_addr(), q1.driver_addr(), q1.device_addr());
        assert_eq!(desc % 16, 0);
        assert_eq!(drv % 2, 0);
        assert_eq!(dev % 4, 0);
        t.finish_init().unwrap();
        t.reset().unwrap();
        t.teardown_queue(q0).unwrap();
        t.teardown_queue(q1).unwrap();
        let log = s.control_log();
        let start = log
            .iter()
            .position(|a| a.write && a.offset == mmio::QUEUE_SEL && a.value == 1)
            .unwrap();
        let seq: Vec<(bool, u64, u32)> = log[start..start + 12]
            .iter()
            .map(|a| (a.write, a.offset, a.value))
            .collect();
        let lo = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap();
        let hi = |v: u64| u32::try_from(v >> 32).unwrap();
        assert_eq!(
            seq,
            [
                (true, mmio::QUEUE_SEL, 1),
                (false, mmio::QUEUE_READY, 0),
                (false, mmio::QUEUE_SIZE_MAX, 1000),
                (true, mmio::QUEUE_SIZE, 64),
                (true, mmio::QUEUE_DESC_LOW, lo(desc)),
                (true, mmio::QUEUE_DESC_HIGH, hi(desc)),
                (true, mmio::QUEUE_DRIVER_LOW, lo(drv)),
                (true, mmio::QUEUE_DRIVER_HIGH, hi(drv)),
                (true, mmio::QUEUE_DEVICE_LOW, lo(dev)),
                (true, mmio::QUEUE_DEVICE_HIGH, hi(dev)),
                (true, mmio::QUEUE_READY, 1),
                (true, mmio::STATUS, 15),
            ]
        );
    }

    #[test]
    fn queue_size_is_largest_power_of_two_within_limits() {
        for (wanted, max, size) in [
            (1, 1, 1),
            (3, 64, 2),
            (64, 48, 32),
            (u16::MAX, 65535, 32768),
        ] {
            let mut s = modern();
            s.queues[0].max = max;
            let mut t = ready(&mut s, 0);
            let q = t.setup_queue(IdentityHal, 0, wanted).unwrap();
            assert_eq!(q.size(), size, "wanted {wanted} max {max}");
            assert!(u32::from(q.size()) <= max);
            t.teardown_queue(q).unwrap();
        }
    }

    #[test]
    fn queue_absent_already_used_and_zero() {
        let mut s = modern();
        s.queues[0].max = 0;
        let mut t = ready(&mut s, 0);
        t.io_mut().queues[1].ready = 1;
        assert_eq!(
            t.setup_queue(IdentityHal, 0, 8).unwrap_err(),
            Error::QueueAbsent(0)
        );
        assert_eq!(
            t.setup_queue(IdentityHal, 1, 8).unwrap_err(),
            Error::QueueAlreadyUsed(1)
        );
        assert_eq!(
            t.setup_queue(IdentityHal, 1, 0).unwrap_err(),
            Error::ZeroQueueSize(1)
        );
        assert_eq!(
            t.setup_queue(IdentityHal, 7, 8).unwrap_err(),
            Error::QueueAbsent(7)
        );
        assert!(s.writes_to(mmio::QUEUE_SIZE).is_empty());
        let mut s = legacy();
        let mut t = ready(&mut s, 0);
        t.io_mut().queues[0].pfn = 5;
        assert_eq!(
            t.setup_queue(ArenaHal, 0, 8).unwrap_err(),
            Error::QueueAlreadyUsed(0)
        );
    }

    #[test]
    fn queue_setup_legacy_writes_size_align_pfn() {
        let mut s = legacy();
        let mut t = ready(&mut s, 0);
        let q = t.setup_queue(ArenaHal, 1, 16).unwrap();
        let pfn = u32::try_from(q.desc_addr() / 4096).unwrap();
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        let log = s.control_log();
        let start = log
            .iter()
            .position(|a| a.write && a.offset == mmio::QUEUE_SEL)
            .unwrap();
        let seq: Vec<(bool, u64, u32)> = log[start..start + 6]
            .iter()
            .map(|a| (a.write, a.offset, a.value))
            .collect();
        assert_eq!(
            seq,
            [
                (true, mmio::QUEUE_SEL, 1),
                (false, mmio::LEGACY_QUEUE_PFN, 0),
                (false, mmio::QUEUE_SIZE_MAX, 64),
                (true, mmio::QUEUE_SIZE, 16),
                (true, mmio::LEGACY_QUEUE_ALIGN, 4096),
                (true, mmio::LEGACY_QUEUE_PFN, pfn),
            ]
        );
        // Teardown on legacy writes QueuePFN 0.
        assert_eq!(s.writes_to(mmio::LEGACY_QUEUE_PFN), [pfn, 0]);
    }

    /// A HAL whose device addresses sit above 2^44 + 4096 * 2^32.
    #[derive(Clone, Copy)]
    struct HighHal;
    const HIGH: u64 = 1 << 48;
    // SAFETY: delegates to IdentityHal; the device address is offset by
    // HIGH, which the tests never dereference.
    unsafe impl Hal for HighHal {
        fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
            IdentityHal.dma_alloc(pages).map(|(p, v)| (p + HIGH, v))
        }
        unsafe fn dma_dealloc(&self, paddr: u64, vaddr: NonNull<u8>, pages: usize) {
            // SAFETY: forwarded from our caller, address translated back.
            unsafe { IdentityHal.dma_dealloc(paddr - HIGH, vaddr, pages) }
        }
        unsafe fn share(&self, b: NonNull<[u8]>, d: crate::BufferDirection) -> Option<u64> {
            // SAFETY: forwarded from our caller.
            unsafe { IdentityHal.share(b, d) }.map(|p| p + HIGH)
        }
        unsafe fn unshare(&self, _: u64, _: NonNull<[u8]>, _: crate::BufferDirection) {}
    }

    #[test]
    fn legacy_pfn_too_large_is_an_error_not_a_panic() {
        let mut s = legacy();
        let mut t = ready(&mut s, 0);
        match t.setup_queue(HighHal, 0, 8) {
            Err(Error::PfnTooLarge(a)) => assert!(a >= HIGH),
            other => panic!("{other:?}"),
        }
        assert!(s.writes_to(mmio::QUEUE_SIZE).is_empty());
        assert!(s.writes_to(mmio::LEGACY_QUEUE_PFN).is_empty());
        // Version 2 takes 64-bit addresses: high words are written.
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        let q = t.setup_queue(HighHal, 0, 8).unwrap();
        t.teardown_queue(q).unwrap();
        assert!(s.writes_to(mmio::QUEUE_DESC_HIGH)[0] >= 1 << 16);
    }

    #[test]
    fn teardown_writes_ready_0_and_reads_it_back() {
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        let q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        t.teardown_queue(q).unwrap();
        let log = s.control_log();
        let n = log.len();
        assert_eq!(
            (log[n - 2].write, log[n - 2].offset, log[n - 2].value),
            (true, mmio::QUEUE_READY, 0)
        );
        assert_eq!(
            (log[n - 1].write, log[n - 1].offset),
            (false, mmio::QUEUE_READY)
        );
    }

    #[test]
    fn teardown_is_bounded_when_queue_ready_stays_1() {
        let mut s = modern();
        s.queue_stop_stuck = true;
        let mut t = ready(&mut s, 0);
        t.set_limits(Limits {
            queue_polls: 5,
            ..Limits::default()
        });
        let q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        assert!(matches!(t.teardown_queue(q), Err(Error::Timeout { .. })));
    }

    #[test]
    fn notify_writes_index_or_notification_data_after_driver_ok() {
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        let mut q = t.setup_queue(IdentityHal, 1, 8).unwrap();
        assert!(matches!(t.notify(&mut q), Err(Error::WrongPhase(_))));
        t.finish_init().unwrap();
        t.notify(&mut q).unwrap();
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        assert_eq!(s.writes_to(mmio::QUEUE_NOTIFY), [1]);

        let mut s = modern();
        let mut t = ready(&mut s, bit(VIRTIO_F_NOTIFICATION_DATA));
        let mut q = t.setup_queue(IdentityHal, 1, 8).unwrap();
        t.finish_init().unwrap();
        // SAFETY: address never dereferenced (no handler on the device).
        unsafe { q.add_segments(&[crate::Segment { addr: 0, len: 1 }], &[]) }.unwrap();
        t.notify(&mut q).unwrap();
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        assert_eq!(s.writes_to(mmio::QUEUE_NOTIFY), [(1 << 16) | 1]);
    }

    #[test]
    fn interrupt_ack_writes_only_defined_bits_it_saw() {
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        t.finish_init().unwrap();
        t.io_mut().interrupt_status = 0xff;
        let ev = t.ack_interrupt().unwrap();
        assert!(ev.used_buffers && ev.config_changed);
        t.io_mut().interrupt_status = 0;
        assert_eq!(t.ack_interrupt().unwrap(), InterruptEvents::default());
        t.io_mut().interrupt_status = mmio::INT_VRING;
        let ev = t.ack_interrupt().unwrap();
        assert!(ev.used_buffers && !ev.config_changed);
        assert_eq!(s.acks, [3, 1]);
        let log = s.control_log();
        let first_ack = log
            .iter()
            .position(|a| a.write && a.offset == mmio::INTERRUPT_ACK)
            .unwrap();
        assert_eq!(log[first_ack - 1].offset, mmio::INTERRUPT_STATUS);
    }

    #[test]
    fn interrupt_with_device_needs_reset_is_an_error() {
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        t.finish_init().unwrap();
        t.io_mut().status |= status::DEVICE_NEEDS_RESET;
        t.io_mut().interrupt_status = mmio::INT_CONFIG;
        assert_eq!(t.ack_interrupt(), Err(Error::DeviceNeedsReset));
        assert_eq!(t.check_status(), Err(Error::DeviceNeedsReset));
        assert_eq!(s.acks, [mmio::INT_CONFIG]);
    }

    #[test]
    fn config_modern_width_exact_inside_generation_check() {
        let mut s = modern();
        s.config = (0u8..32).collect();
        s.generation_flips = 3;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(t.read_config_u8(1).unwrap(), 1);
        assert_eq!(t.read_config_u8(5).unwrap(), 5);
        assert_eq!(t.read_config_u16(2).unwrap(), 0x0302);
        assert_eq!(t.read_config_u32(4).unwrap(), 0x0706_0504);
        assert_eq!(t.read_config_u64(8).unwrap(), 0x0f0e_0d0c_0b0a_0908);
        let mut b = [0u8; 3];
        t.read_config_bytes(20, &mut b).unwrap();
        assert_eq!(b, [20, 21, 22]);
        t.write_config_u16(0, 0xaabb);
        t.write_config_u32(4, 1);
        t.write_config_u8(31, 9);
        let cfg: Vec<(bool, u64, u8)> = s
            .log
            .iter()
            .filter(|a| a.config)
            .map(|a| (a.write, a.offset, a.width))
            .collect();
        assert_eq!(
            cfg[cfg.len() - 8..],
            [
                (false, 8, 4),
                (false, 12, 4),
                (false, 20, 1),
                (false, 21, 1),
                (false, 22, 1),
                (true, 0, 2),
                (true, 4, 4),
                (true, 31, 1),
            ]
        );
        // Each read was bracketed by ConfigGeneration reads.
        let log = &s.log;
        for (i, _) in log.iter().enumerate().filter(|(_, a)| a.config && !a.write) {
            let before = log[..i].iter().rev().find(|a| !a.config).unwrap();
            assert_eq!(before.offset, mmio::CONFIG_GENERATION);
        }
        assert_eq!(s.config[0..2], [0xbb, 0xaa]);
    }

    #[test]
    fn config_generation_that_never_settles_is_bounded() {
        let mut s = modern();
        s.generation_flips = u32::MAX;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert!(matches!(t.read_config_u32(0), Err(Error::Timeout { .. })));
        let mut b = [0u8; 2];
        assert!(matches!(
            t.read_config_bytes(0, &mut b),
            Err(Error::Timeout { .. })
        ));
        let gen_reads = s
            .log
            .iter()
            .filter(|a| a.offset == mmio::CONFIG_GENERATION && !a.config)
            .count();
        assert_eq!(gen_reads, 4 * 64);
    }

    #[test]
    fn config_legacy_byte_by_byte_native_order_without_generation() {
        let mut s = legacy();
        s.config = (0u8..16).collect();
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            t.read_config_u64(0).unwrap(),
            u64::from_ne_bytes([0, 1, 2, 3, 4, 5, 6, 7])
        );
        assert_eq!(
            t.read_config_u32(8).unwrap(),
            u32::from_ne_bytes([8, 9, 10, 11])
        );
        assert_eq!(t.read_config_u16(12).unwrap(), u16::from_ne_bytes([12, 13]));
        t.write_config_u32(0, 0x0403_0201);
        assert!(s.log.iter().filter(|a| a.config).all(|a| a.width == 1));
        assert!(!s.read_of(mmio::CONFIG_GENERATION));
        assert_eq!(s.config[..4], 0x0403_0201u32.to_ne_bytes());
    }

    #[test]
    fn config_legacy_bytes_are_read_until_two_passes_agree() {
        let mut s = legacy();
        s.config = alloc::vec![0, 1, 2];
        // The device adds 1 to every byte after the first read: the first
        // pass reads [0, 2, 3], a mix of two versions of the config.
        s.config_bumps = 1;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        // The caller's buffer happens to hold that torn value: it is not
        // a read, so it does not confirm the first pass.
        let mut b = [0, 2, 3];
        t.read_config_bytes(0, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        let reads = |s: &Scripted| s.log.iter().filter(|a| a.config && !a.write).count();
        // Three passes: torn, new, new again.
        assert_eq!(reads(&s), 9);

        // Settled config: two passes.
        let mut s = legacy();
        s.config = alloc::vec![7, 8];
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = [0u8; 2];
        t.read_config_bytes(0, &mut b).unwrap();
        assert_eq!(b, [7, 8]);
        assert_eq!(reads(&s), 4);

        // A config that never reads the same twice: bounded.
        let mut s = legacy();
        s.config = alloc::vec![0, 1];
        s.config_bumps = u32::MAX;
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        t.set_limits(Limits {
            config_retries: 5,
            ..Limits::default()
        });
        let mut b = [0u8; 2];
        assert!(matches!(
            t.read_config_bytes(0, &mut b),
            Err(Error::Timeout { .. })
        ));
        assert_eq!(reads(&s), 2 * 6);
    }

    /// A HAL that reports every allocation at one device address (queue
    /// memory is still allocated by [`IdentityHal`]; the scripted device
    /// never dereferences the address). It breaks the [`Hal`] contract
    /// when that address is not page aligned, as a buggy platform would.
    #[derive(Clone, Copy)]
    struct FixedHal(u64);
    // SAFETY: delegates to IdentityHal; the reported address is never
    // dereferenced by these tests.
    unsafe impl Hal for FixedHal {
        fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
            IdentityHal.dma_alloc(pages).map(|(_, v)| (self.0, v))
        }
        unsafe fn dma_dealloc(&self, paddr: u64, vaddr: NonNull<u8>, pages: usize) {
            // SAFETY: forwarded from our caller; IdentityHal frees by vaddr.
            unsafe { IdentityHal.dma_dealloc(paddr, vaddr, pages) }
        }
        unsafe fn share(&self, b: NonNull<[u8]>, d: crate::BufferDirection) -> Option<u64> {
            // SAFETY: forwarded from our caller.
            unsafe { IdentityHal.share(b, d) }
        }
        unsafe fn unshare(&self, _: u64, _: NonNull<[u8]>, _: crate::BufferDirection) {}
    }

    #[test]
    fn queue_memory_misaligned_or_at_page_0_is_refused() {
        // Version 2: any page-aligned address, page 0 included; a
        // misaligned one is refused before any queue register is written.
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        assert_eq!(
            t.setup_queue(FixedHal(0x1_0008), 0, 8).unwrap_err(),
            Error::BadQueueAddress(0x1_0008)
        );
        let q = t.setup_queue(FixedHal(0), 1, 8).unwrap();
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        assert_eq!(s.writes_to(mmio::QUEUE_SIZE), [8]);
        // Legacy: QueuePFN 0 stops the queue, so page 0 is refused too;
        // page 1 is the first usable one.
        let mut s = legacy();
        let mut t = ready(&mut s, 0);
        assert_eq!(
            t.setup_queue(FixedHal(0), 0, 8).unwrap_err(),
            Error::BadQueueAddress(0)
        );
        assert_eq!(
            t.setup_queue(FixedHal(0x1_0008), 0, 8).unwrap_err(),
            Error::BadQueueAddress(0x1_0008)
        );
        let q = t.setup_queue(FixedHal(0x1000), 0, 8).unwrap();
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        assert_eq!(s.writes_to(mmio::LEGACY_QUEUE_PFN), [1, 0]);
    }

    #[test]
    fn shm_regions_present_absent_and_legacy() {
        let mut s = modern();
        // Absent: both all ones, or either one (a present base with an
        // absent length is no region, nor the other way round).
        s.shm = alloc::vec![
            (0x4000_0000, 0x10_0000),
            (u64::MAX, u64::MAX),
            (0x5000_0000, u64::MAX),
            (u64::MAX, 0x1000),
        ];
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            t.shm_region(0).unwrap(),
            Some(ShmRegion {
                base: 0x4000_0000,
                len: 0x10_0000
            })
        );
        assert_eq!(t.shm_region(1).unwrap(), None);
        assert_eq!(t.shm_region(2).unwrap(), None);
        assert_eq!(t.shm_region(3).unwrap(), None);
        assert_eq!(t.shm_region(9).unwrap(), None);
        assert_eq!(s.writes_to(mmio::SHM_SEL), [0, 1, 2, 3, 9]);
        let mut s = legacy();
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(t.shm_region(0), Err(Error::LegacyUnsupported));
        assert!(!s.read_of(mmio::SHM_LEN_LOW));
    }

    #[test]
    fn queue_reset_polls_until_0_and_allows_new_parameters() {
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        let q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        assert_eq!(
            t.reset_queue(q).unwrap_err().error,
            Error::FeatureNotNegotiated(VIRTIO_F_RING_RESET)
        );
        assert!(s.writes_to(mmio::QUEUE_RESET).is_empty());

        // Offered but not opted into: still refused without a write.
        let mut s = modern();
        let mut t = ready(&mut s, bit(VIRTIO_F_RING_RESET));
        assert!(!t.has_feature(VIRTIO_F_RING_RESET), "RING_RESET is opt-in");
        let q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        assert!(t.reset_queue(q).is_err());
        assert!(s.writes_to(mmio::QUEUE_RESET).is_empty());

        let mut s = modern();
        s.queue_reset_reads = 3;
        s.device_features |= bit(VIRTIO_F_RING_RESET);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        t.set_transport_features(TRANSPORT_FEATURES);
        t.begin_init(0).unwrap();
        let q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        t.finish_init().unwrap();
        t.reset_queue(q).unwrap();
        let q = t.setup_queue(IdentityHal, 0, 4).unwrap();
        assert_eq!(q.size(), 4);
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
        assert_eq!(s.writes_to(mmio::QUEUE_RESET), [1]);
        let polls = s
            .control_log()
            .iter()
            .filter(|a| !a.write && a.offset == mmio::QUEUE_RESET)
            .count();
        assert_eq!(polls, 4);
        assert_eq!(s.writes_to(mmio::QUEUE_SIZE), [8, 4]);

        let mut s = modern();
        s.queue_reset_reads = u32::MAX;
        s.device_features |= bit(VIRTIO_F_RING_RESET);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        t.set_transport_features(TRANSPORT_FEATURES);
        t.begin_init(0).unwrap();
        t.set_limits(Limits {
            queue_polls: 7,
            ..Limits::default()
        });
        let q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        let failed = t.reset_queue(q).unwrap_err();
        assert!(matches!(failed.error, Error::Timeout { .. }));
        // The queue comes back: after a device reset it is freed cleanly.
        assert_eq!(failed.queue.index(), 0);
        t.reset().unwrap();
        t.teardown_queue(failed.queue).unwrap();
    }

    #[test]
    fn transport_features_can_be_restricted() {
        let mut s = modern();
        s.device_features |= bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        t.set_transport_features(bit(VIRTIO_F_INDIRECT_DESC));
        assert_eq!(
            t.begin_init(0).unwrap(),
            bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC)
        );
        assert!(t.has_feature(VIRTIO_F_INDIRECT_DESC));
        assert!(!t.has_feature(VIRTIO_F_EVENT_IDX));
    }

    #[test]
    fn admin_vq_is_never_accepted() {
        let mut s = modern();
        s.device_features |= bit(features::VIRTIO_F_ADMIN_VQ) | bit(42);
        let mut t = Transport::probe(&mut s).unwrap().unwrap();
        let got = t
            .begin_init(bit(features::VIRTIO_F_ADMIN_VQ) | bit(42))
            .unwrap();
        assert_eq!(got, bit(VIRTIO_F_VERSION_1) | bit(42));
    }

    /// Runs a block driver through init, I/O, an interrupt and teardown,
    /// and checks every register access against virtio v1.4 §4.2.2.2 and
    /// §4.2.3.1.1: only registers of the window's table, never a write to
    /// an R register or a read of a W register, 32-bit control accesses,
    /// no queue layout register touched while that queue's `QueueReady`
    /// is non-zero, and no shared memory register.
    fn check_every_access(version: u32) {
        use crate::blk::Block;
        let mut s = Scripted::new(version, BLOCK, 1, 64);
        s.handler = Some(crate::scripted::blk_handler);
        s.device_features |= bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(VIRTIO_F_RING_RESET)
            | bit(VIRTIO_F_NOTIFICATION_DATA);
        s.disk = alloc::vec![0; 8 * 512];
        s.config = alloc::vec![0; 64];
        s.config[0] = 8;
        {
            let t = Transport::probe(&mut s).unwrap().unwrap();
            let mut b = Block::new(t, ArenaHal).unwrap();
            let mut buf = [0u8; 1024];
            b.write_blocks(1, &buf).unwrap();
            b.read_blocks(0, &mut buf).unwrap();
            b.get_id().unwrap();
            b.handle_interrupt().unwrap();
        }
        let legacy = version == 1;
        let mut ready = alloc::collections::BTreeMap::new();
        let mut sel = 0u32;
        for a in s.control_log() {
            assert_eq!(a.width, 4);
            let r = mmio::register(a.offset).expect("offset in the register table");
            let wrong_layout = if legacy {
                mmio::Layout::Modern
            } else {
                mmio::Layout::Legacy
            };
            assert_ne!(r.layout, wrong_layout, "{} on version {version}", r.name);
            match r.direction {
                mmio::Direction::R => assert!(!a.write, "wrote {}", r.name),
                mmio::Direction::W => assert!(a.write, "read {}", r.name),
                mmio::Direction::RW => {}
            }
            assert!(
                !(mmio::SHM_SEL..=mmio::SHM_BASE_HIGH).contains(&a.offset),
                "shared memory register {} used",
                r.name
            );
            match (a.write, a.offset) {
                (true, mmio::QUEUE_SEL) => sel = a.value,
                (true, mmio::STATUS) if a.value == 0 => ready.clear(),
                (_, mmio::QUEUE_READY) | (_, mmio::LEGACY_QUEUE_PFN) => {
                    ready.insert(sel, a.value != 0);
                }
                (_, o)
                    if [
                        mmio::QUEUE_SIZE,
                        mmio::QUEUE_DESC_LOW,
                        mmio::QUEUE_DESC_HIGH,
                        mmio::QUEUE_DRIVER_LOW,
                        mmio::QUEUE_DRIVER_HIGH,
                        mmio::QUEUE_DEVICE_LOW,
                        mmio::QUEUE_DEVICE_HIGH,
                    ]
                    .contains(&o) =>
                {
                    assert!(
                        !ready.get(&sel).copied().unwrap_or(false),
                        "{} while ready",
                        r.name
                    );
                }
                _ => {}
            }
        }
    }

    #[test]
    fn every_access_is_a_table_register_in_its_direction_modern() {
        check_every_access(2);
    }

    #[test]
    fn every_access_is_a_table_register_in_its_direction_legacy() {
        check_every_access(1);
    }

    #[test]
    fn wait_used_is_bounded_and_sees_device_needs_reset() {
        let mut s = modern();
        let mut t = ready(&mut s, 0);
        t.set_limits(Limits {
            io_polls: 50,
            ..Limits::default()
        });
        let mut q = t.setup_queue(IdentityHal, 0, 8).unwrap();
        t.finish_init().unwrap();
        // SAFETY: address never dereferenced (no handler on the device).
        let tok = unsafe { q.add_segments(&[crate::Segment { addr: 0, len: 1 }], &[]) }.unwrap();
        assert!(matches!(
            t.wait_used(&mut q, tok),
            Err(Error::Timeout { .. })
        ));
        t.io_mut().status |= status::DEVICE_NEEDS_RESET;
        assert_eq!(t.wait_used(&mut q, tok), Err(Error::DeviceNeedsReset));
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
    }
}
