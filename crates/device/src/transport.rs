//! The MMIO register file of one virtio window: virtio v1.4 §4.2.2 "MMIO
//! Device Register Layout" (Version 2), §4.2.4 "Legacy interface"
//! (Version 1), the device status machine of §2.1 and §3.1, feature
//! negotiation (§2.2) and virtqueue reset (§2.6.1).
//!
//! [`MmioTransport`] sees offsets within the 0x1000-byte window and byte
//! slices; the platform routes guest loads and stores to
//! [`MmioTransport::read`] and [`MmioTransport::write`]. Everything the
//! driver writes is hostile input: a value the spec says to ignore is
//! ignored, a register the driver may not read reads 0, and a log line
//! (rate-limited, see [`FAULT_LOG_LIMIT`]) says what happened. Nothing the
//! driver does makes the transport panic.
//!
//! Deviations and choices where the spec leaves room are listed in
//! `docs/conformance.md` and on the items below.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, log, warn};
use vm_memory::GuestMemory;
use vmmio_spec::features::{self, bit};
use vmmio_spec::mmio::{self, Direction, Layout};
use vmmio_spec::notification::NotificationData;
use vmmio_spec::status::{
    ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, DRIVER_WRITABLE, FAILED, FEATURES_OK,
    SUSPEND,
};

use crate::device::{BackendFd, SharedMemoryRegion, VirtioDevice};
use crate::interrupt::{Interrupt, InterruptCause, InterruptStatus};
use crate::log_limit::LogLimiter;
use crate::queue::Queue;

mod queue_regs;
#[cfg(test)]
mod tests;

use queue_regs::{with_high, with_low, QueueRegs};

/// Which register layout a window presents (the `Version` register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportVersion {
    /// Legacy, `Version` = 1 (virtio v1.4 §4.2.4 "Legacy interface"):
    /// page-based queues (`GuestPageSize`, `QueueAlign`, `QueuePFN`),
    /// feature page 0 only, no `FEATURES_OK`, no `QueueReady`,
    /// `ConfigGeneration`, shared memory or `QueueReset`.
    Legacy,
    /// Modern, `Version` = 2 (virtio v1.4 §4.2.2).
    Modern,
}

impl TransportVersion {
    /// The value of the `Version` register (offset 0x004): 1 or 2.
    pub const fn register_value(self) -> u32 {
        match self {
            TransportVersion::Legacy => mmio::VERSION_LEGACY,
            TransportVersion::Modern => mmio::VERSION_MODERN,
        }
    }
}

/// `GuestPageSize` before the driver writes it, in bytes (legacy windows).
pub const DEFAULT_GUEST_PAGE_SIZE: u32 = 4096;

/// How many driver faults (bad widths, refused writes, ...) one window logs
/// at `warn` level; later ones are logged at `debug` level, so a guest
/// cannot flood the host log.
pub const FAULT_LOG_LIMIT: u32 = 32;

/// The most queues a device may have (virtio v1.4 §2.6: indexes 0..=65535).
const MAX_QUEUES: usize = 1 << 16;

/// Feature bits the transport never offers, whatever the device says:
/// PCI-only bits (SR_IOV, NOTIF_CONFIG_DATA), ADMIN_VQ (reserved for MMIO,
/// virtio v1.4 §4.2.5) and SUSPEND (the transport has no suspend support).
/// RING_PACKED is offered by Modern windows when the device offers it or
/// the window allows it ([`MmioTransport::set_packed_ring`]).
pub const TRANSPORT_UNSUPPORTED_FEATURES: u64 = bit(features::VIRTIO_F_SR_IOV)
    | bit(features::VIRTIO_F_NOTIF_CONFIG_DATA)
    | bit(features::VIRTIO_F_ADMIN_VQ)
    | bit(features::VIRTIO_F_SUSPEND);

/// The status machine as data: each bit a driver may add to `Status`, and
/// the bits that must be set already (or in the same write) for it to be
/// accepted, following the order of virtio v1.4 §3.1.1 "Driver
/// Requirements: Device Initialization". FAILED may be set at any time.
/// A legacy window has no FEATURES_OK (§3.1.2): it drops that bit from
/// writes and from DRIVER_OK's prerequisites.
const STATUS_ORDER: &[(u32, u32)] = &[
    (ACKNOWLEDGE, 0),
    (DRIVER, ACKNOWLEDGE),
    (FEATURES_OK, ACKNOWLEDGE | DRIVER),
    (DRIVER_OK, ACKNOWLEDGE | DRIVER | FEATURES_OK),
    (FAILED, 0),
];

/// Logs driver faults, the first [`FAULT_LOG_LIMIT`] at `warn` level.
#[derive(Debug, Default)]
struct FaultLog {
    limiter: LogLimiter<FAULT_LOG_LIMIT>,
}

impl FaultLog {
    fn report(&mut self, device_type: u32, args: fmt::Arguments<'_>) {
        let level = self.limiter.level();
        if self.limiter.was_last_warning() {
            log!(
                level,
                "virtio-mmio (device type {device_type}): {args} \
                 (further driver faults of this window are logged at debug level)"
            );
        } else {
            log!(level, "virtio-mmio (device type {device_type}): {args}");
        }
    }
}

/// Logs a driver fault through the window's rate limiter. Takes `self`
/// explicitly so that the format arguments may borrow other fields.
macro_rules! fault {
    ($self:ident, $($arg:tt)*) => {
        $self.faults.report($self.device_type, format_args!($($arg)*))
    };
}

/// One virtio-mmio window: the register file in front of one
/// [`VirtioDevice`] (virtio v1.4 §4.2).
///
/// The transport owns the device, a handle to guest memory (`M`, cloned
/// into the device at activation) and the window's [`InterruptStatus`].
/// It runs the status machine and feature negotiation, keeps every queue
/// register, checks a ring before enabling it, activates the device at
/// `DRIVER_OK` and forwards `QueueNotify`.
///
/// # Behaviour where the spec leaves room
///
/// - `Status`: the driver may only add bits, in the order of virtio v1.4
///   §3.1.1 (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; FAILED at any
///   time); a write of 0 resets from any state; any other write that
///   clears a bit or skips a step is ignored. After FAILED only a reset is
///   accepted. DEVICE_NEEDS_RESET in a driver write is ignored (the bit is
///   the device's); undefined bits and SUSPEND are dropped; a legacy window
///   drops FEATURES_OK. The device never sets FAILED.
/// - FEATURES_OK is refused (reads back clear) when the driver accepted a
///   bit that was not offered, wrote a non-zero word to feature page 2 or
///   above (remembered until reset), or, in Version 2, did not accept
///   VIRTIO_F_VERSION_1. Legacy windows mask `GuestFeatures` to what was
///   offered.
/// - `QueueSize` reads as `QueueSizeMax` until written; `QueueAlign` and
///   `GuestPageSize` default to 4096 bytes; `GuestPageSize` survives reset
///   (Linux writes it once, before its first reset).
/// - Queue registers are refused while the queue is enabled and after
///   DRIVER_OK, except `QueueReady` = 0 / `QueuePFN` = 0 (which disable the
///   queue at once; a running device is told through
///   [`VirtioDevice::queue_reset`]) and a queue reset with `QueueReset`
///   (VIRTIO_F_RING_RESET), after which the queue may be reprogrammed and
///   re-enabled ([`VirtioDevice::queue_enable`]).
/// - `QueueNotify` reaches the device only after a successful activation
///   and for an enabled queue; legacy drivers that notify before DRIVER_OK
///   are not served.
/// - A driver store to the configuration space that changes what the
///   device reads back increments `ConfigGeneration`; so does each host
///   change, reported by the device ([`VirtioDevice::config_generation`],
///   see [`crate::LiveConfig`]) or with [`MmioTransport::config_changed`].
/// - 64-bit accesses are invalid everywhere (§4.2.2.2 allows the driver
///   8/16/32-bit accesses to the configuration space only).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use vm_memory::GuestMemoryMmap;
/// use vmmio_device::{Interrupt, MmioTransport, TransportVersion, VirtioDevice};
///
/// // The platform builds one transport per window and routes the
/// // guest's 32-bit loads and stores at `offset` into it.
/// fn attach(
///     device: Box<dyn VirtioDevice<GuestMemoryMmap> + Send>,
///     mem: GuestMemoryMmap,
///     line: Arc<dyn Interrupt>,
/// ) -> MmioTransport<GuestMemoryMmap> {
///     let mut window = MmioTransport::new(TransportVersion::Modern, device, mem, line);
///     let mut magic = [0u8; 4];
///     window.read(0x000, &mut magic);
///     assert_eq!(&magic, b"virt");
///     window
/// }
/// ```
pub struct MmioTransport<M: GuestMemory + Clone + Send> {
    version: TransportVersion,
    device: Box<dyn VirtioDevice<M> + Send>,
    device_type: u32,
    mem: M,
    interrupt: InterruptStatus,
    /// `Status`.
    status: u32,
    /// Whether `device.activate` succeeded since the last reset.
    activated: bool,
    /// What `DeviceFeatures` presents (pages 0 and 1).
    offered: u64,
    /// Offer VIRTIO_F_RING_PACKED whatever the device says (Modern only).
    packed_ring: bool,
    /// `DriverFeatures` pages 0 and 1 as written.
    driver_features: u64,
    /// The driver wrote a non-zero word to a feature page >= 2, where
    /// nothing is offered. Sticky until reset: FEATURES_OK is refused.
    acked_unoffered_page: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// `QueueSel`, all 32 bits.
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    /// `SHMSel`, all 32 bits.
    shm_sel: u32,
    /// `GuestPageSize` in bytes (legacy); survives reset.
    guest_page_size: u32,
    /// `ConfigGeneration`; survives reset, only ever incremented.
    config_generation: u32,
    faults: FaultLog,
}

impl<M: GuestMemory + Clone + Send> MmioTransport<M> {
    /// A window of layout `version` in front of `device`, in reset state
    /// (`Status` 0, no queue ready, `InterruptStatus` 0).
    ///
    /// `mem` is the guest memory the rings must lie in (a clone goes to
    /// the device at activation); `line` is the platform's interrupt line,
    /// wrapped in the window's [`InterruptStatus`].
    ///
    /// The device's feature bits are filtered (virtio v1.4 §2.2, §6): bits
    /// in [`TRANSPORT_UNSUPPORTED_FEATURES`] are removed; a Modern window
    /// adds VIRTIO_F_VERSION_1, a Legacy window keeps page 0 (bits 0..32)
    /// only. A device with more than 65536 queues gets its first 65536.
    pub fn new(
        version: TransportVersion,
        device: Box<dyn VirtioDevice<M> + Send>,
        mem: M,
        line: Arc<dyn Interrupt>,
    ) -> Self {
        let device_type = device.device_type();
        let max_sizes = device.queue_max_sizes();
        if max_sizes.len() > MAX_QUEUES {
            warn!(
                "virtio-mmio (device type {device_type}): {} queues declared, using the first {MAX_QUEUES}",
                max_sizes.len()
            );
        }
        let queues = max_sizes
            .iter()
            .take(MAX_QUEUES)
            .map(|&max| QueueRegs::new(max))
            .collect();
        let offered = offer(version, device.device_features(), false);
        Self {
            version,
            device,
            device_type,
            mem,
            interrupt: InterruptStatus::new(line),
            status: 0,
            activated: false,
            offered,
            packed_ring: false,
            driver_features: 0,
            acked_unoffered_page: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues,
            shm_sel: 0,
            guest_page_size: DEFAULT_GUEST_PAGE_SIZE,
            config_generation: 0,
            faults: FaultLog::default(),
        }
    }

    /// Offers VIRTIO_F_RING_PACKED (virtio v1.4 §2.8) on this window
    /// whatever the device's own feature bits say (`true`), or only when
    /// the device offers it (`false`, the default). Legacy windows never
    /// offer it (it is bit 34, and packed rings need VIRTIO_F_VERSION_1).
    /// When the driver negotiates it, every queue is a packed ring from
    /// `QueueReady` on. Takes effect now in reset state, otherwise at the
    /// next device reset.
    pub fn set_packed_ring(&mut self, enabled: bool) {
        self.packed_ring = enabled;
        if self.status == 0 {
            self.offered = offer(self.version, self.device.device_features(), enabled);
        }
    }

    /// Handles a driver load of `data.len()` bytes at `offset` bytes into
    /// the window, filling all of `data`.
    ///
    /// Implements virtio v1.4 §4.2.2 / §4.2.4. Control registers
    /// (`offset < 0x100`) take aligned 32-bit accesses only; the
    /// configuration space (`0x100..0x1000`) takes 8-, 16- and 32-bit
    /// accesses at natural alignment (§4.2.2.2). Any other access, a
    /// write-only register (direction W) or an offset with no register in
    /// this version reads as 0; the fault is logged. Never fails, never
    /// panics.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset < mmio::CONFIG {
            let width = data.len();
            let Some(bytes) = control_access(offset, data) else {
                fault!(
                    self,
                    "{width}-byte read at {offset:#x}: control registers take aligned 32-bit accesses, reads 0"
                );
                return;
            };
            *bytes = self.read_register(offset).to_le_bytes();
        } else if let Some(config_offset) = self.config_offset(offset, data.len(), "read") {
            self.device.read_config(config_offset, data);
        }
    }

    /// Handles a driver store of `data.len()` bytes (little-endian) at
    /// `offset` bytes into the window.
    ///
    /// Implements virtio v1.4 §4.2.2 / §4.2.4 (device requirements). Width
    /// rules as for [`MmioTransport::read`]; a store that breaks them, a
    /// store to a read-only register (direction R) or to an offset with no
    /// register in this version is dropped and logged, as is every store
    /// the spec says to ignore. Never fails, never panics.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < mmio::CONFIG {
            let width = data.len();
            let Some(value) = control_value(offset, data) else {
                fault!(
                    self,
                    "{width}-byte write at {offset:#x}: control registers take aligned 32-bit accesses, dropped"
                );
                return;
            };
            self.write_register(offset, value);
        } else if let Some(config_offset) = self.config_offset(offset, data.len(), "write") {
            self.write_config(config_offset, data);
        }
    }

    /// The host changed the device configuration space (virtio v1.4
    /// §2.5, §4.2.2 `ConfigGeneration`): increments `ConfigGeneration`
    /// and, once the driver has set DRIVER_OK, raises a configuration
    /// change notification (`InterruptStatus` bit 1, §4.2.3.4). Call it
    /// after the change is visible through `read_config`.
    ///
    /// This is for devices without host-side handles, changed through
    /// [`MmioTransport::device_mut`] on the thread that owns the window.
    /// The devices of `vmmio-devices` change their configuration through
    /// handles usable from any thread while the window runs (a
    /// [`crate::LiveConfig`] underneath), which do all of this themselves
    /// and do not need the transport.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & DRIVER_OK != 0 {
            self.interrupt.raise(InterruptCause::ConfigChange);
        }
    }

    /// The device entered an error state it cannot leave without a reset
    /// (virtio v1.4 §2.1.2): sets DEVICE_NEEDS_RESET in `Status` and, if
    /// DRIVER_OK is set, raises a configuration change notification. The
    /// bit clears at the next device reset.
    pub fn set_device_needs_reset(&mut self) {
        self.status |= DEVICE_NEEDS_RESET;
        if self.status & DRIVER_OK != 0 {
            self.interrupt.raise(InterruptCause::ConfigChange);
        }
    }

    /// The backend file descriptors of a running device
    /// ([`VirtioDevice::backend_fds`]); empty unless
    /// [`MmioTransport::is_activated`].
    pub fn backend_fds(&self) -> Vec<BackendFd> {
        if self.activated {
            self.device.backend_fds()
        } else {
            Vec::new()
        }
    }

    /// Hands a backend readiness event to a running device
    /// ([`VirtioDevice::backend_event`]); ignored unless
    /// [`MmioTransport::is_activated`].
    pub fn backend_event(&mut self, token: u64) {
        if self.activated {
            self.device.backend_event(token);
        }
    }

    /// For embedders that run devices synchronously (no worker thread):
    /// waits up to `timeout` for any of the device's backend fds to be
    /// ready (`poll(2)`), then calls [`VirtioDevice::backend_event`] for
    /// each ready one. Returns how many were ready; `Ok(0)` at once when
    /// the device is not running or lists no fd.
    ///
    /// # Errors
    /// The `poll(2)` error, other than `EINTR` (reported as 0 ready).
    pub fn poll_backends(&mut self, timeout: Duration) -> io::Result<usize> {
        let fds = self.backend_fds();
        if fds.is_empty() {
            return Ok(0);
        }
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|b| libc::pollfd {
                fd: b.fd,
                events: (if b.readable { libc::POLLIN } else { 0 })
                    | (if b.writable { libc::POLLOUT } else { 0 }),
                revents: 0,
            })
            .collect();
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let nfds = libc::nfds_t::try_from(pollfds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `pollfds` is a live, writable array of `nfds` pollfd
        // structs for the duration of the call.
        let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), nfds, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(err)
            };
        }
        let mut ready = 0;
        for (b, p) in fds.iter().zip(&pollfds) {
            if p.revents != 0 {
                ready += 1;
                self.backend_event(b.token);
            }
        }
        Ok(ready)
    }

    /// The device behind the window.
    pub fn device(&self) -> &(dyn VirtioDevice<M> + Send) {
        self.device.as_ref()
    }

    /// The device behind the window, mutably (e.g. to change its
    /// configuration before calling [`MmioTransport::config_changed`]).
    pub fn device_mut(&mut self) -> &mut (dyn VirtioDevice<M> + Send) {
        self.device.as_mut()
    }

    /// The `Status` register (virtio v1.4 §2.1): bits of
    /// `vmmio_spec::status`.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// The window's `InterruptStatus` register, shared with the device.
    pub fn interrupt_status(&self) -> &InterruptStatus {
        &self.interrupt
    }

    /// The register layout of this window.
    pub fn version(&self) -> TransportVersion {
        self.version
    }

    /// The current `ConfigGeneration` value (also kept, though not
    /// readable, in legacy windows): the driver stores that changed the
    /// configuration, plus [`MmioTransport::config_changed`] calls, plus the
    /// device's own count of host changes
    /// ([`VirtioDevice::config_generation`]), wrapping.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
            .wrapping_add(self.device.config_generation())
    }

    /// The feature bits the window offers in `DeviceFeatures` (after the
    /// transport's filtering, see [`MmioTransport::new`]).
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// The negotiated feature bits: what the driver wrote to
    /// `DriverFeatures`, restricted to what was offered. Final once
    /// FEATURES_OK (Modern) or DRIVER_OK (Legacy) is set; 0 after reset.
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features & self.offered
    }

    /// The window's copy of queue `index`'s registers as a [`Queue`]
    /// (ready, size, the three guest-physical area addresses; legacy: as
    /// computed from `QueuePFN`), with the negotiated features; `None` for
    /// a queue the device does not have. For inspection (tests, oracles,
    /// snapshots): the device works on its own copy, handed over at
    /// activation.
    pub fn queue(&self, index: u16) -> Option<Queue> {
        let regs = self.queues.get(usize::from(index))?;
        Some(regs.to_queue(self.negotiated_features()))
    }

    /// Whether the device runs: DRIVER_OK was set and
    /// [`VirtioDevice::activate`] succeeded, with no reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    // ---- control registers -------------------------------------------

    fn is_legacy(&self) -> bool {
        self.version == TransportVersion::Legacy
    }

    /// Whether a register of `layout` exists in this window's version.
    fn has_layout(&self, layout: Layout) -> bool {
        match layout {
            Layout::Both => true,
            Layout::Modern => !self.is_legacy(),
            Layout::Legacy => self.is_legacy(),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let legacy = self.is_legacy();
        let modern = !legacy;
        match offset {
            mmio::MAGIC => mmio::MAGIC_VALUE,
            mmio::VERSION => self.version.register_value(),
            mmio::DEVICE_ID => self.device_type,
            mmio::VENDOR_ID => self.device.vendor_id(),
            mmio::DEVICE_FEATURES => features::page(self.offered, self.device_features_sel),
            mmio::QUEUE_SIZE_MAX => self.selected().map_or(0, |q| u32::from(q.max_size)),
            mmio::LEGACY_QUEUE_PFN if legacy => self.selected().map_or(0, |q| q.pfn),
            mmio::QUEUE_READY if modern => self.selected().map_or(0, |q| u32::from(q.ready)),
            mmio::INTERRUPT_STATUS => self.interrupt.get() & (mmio::INT_VRING | mmio::INT_CONFIG),
            mmio::STATUS => self.status(),
            mmio::SHM_LEN_LOW if modern => {
                low(self.shm_region().map_or(mmio::SHM_ABSENT, |r| r.len))
            }
            mmio::SHM_LEN_HIGH if modern => {
                high(self.shm_region().map_or(mmio::SHM_ABSENT, |r| r.len))
            }
            mmio::SHM_BASE_LOW if modern => {
                low(self.shm_region().map_or(mmio::SHM_ABSENT, |r| r.base))
            }
            mmio::SHM_BASE_HIGH if modern => {
                high(self.shm_region().map_or(mmio::SHM_ABSENT, |r| r.base))
            }
            // Our queue reset completes before the write returns (§4.2.2.1:
            // 1 only "as long as the queue reset is ongoing").
            mmio::QUEUE_RESET if modern => 0,
            mmio::CONFIG_GENERATION if modern => self.config_generation(),
            _ => {
                self.report_unserved(offset, None);
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let legacy = self.is_legacy();
        let modern = !legacy;
        match offset {
            mmio::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            mmio::DRIVER_FEATURES => self.write_driver_features(value),
            mmio::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            mmio::LEGACY_GUEST_PAGE_SIZE if legacy => self.write_guest_page_size(value),
            mmio::QUEUE_SEL => self.queue_sel = value,
            mmio::QUEUE_SIZE
            | mmio::QUEUE_DESC_LOW
            | mmio::QUEUE_DESC_HIGH
            | mmio::QUEUE_DRIVER_LOW
            | mmio::QUEUE_DRIVER_HIGH
            | mmio::QUEUE_DEVICE_LOW
            | mmio::QUEUE_DEVICE_HIGH
                if modern || offset == mmio::QUEUE_SIZE =>
            {
                self.write_queue_register(offset, value)
            }
            mmio::LEGACY_QUEUE_ALIGN if legacy => self.write_queue_register(offset, value),
            mmio::LEGACY_QUEUE_PFN if legacy => self.write_queue_pfn(value),
            mmio::QUEUE_READY if modern => self.write_queue_ready(value),
            mmio::QUEUE_NOTIFY => self.notify(value),
            mmio::INTERRUPT_ACK => {
                self.report_undefined_ack_bits(value);
                self.interrupt.ack(value);
            }
            mmio::STATUS => self.write_status(value),
            mmio::SHM_SEL if modern => self.shm_sel = value,
            mmio::QUEUE_RESET if modern => self.write_queue_reset(value),
            _ => self.report_unserved(offset, Some(value)),
        }
    }

    /// Logs an InterruptACK value with bits no interrupt cause has (they
    /// change nothing: `InterruptStatus::ack` clears causes only).
    fn report_undefined_ack_bits(&mut self, value: u32) {
        let defined = mmio::INT_VRING | mmio::INT_CONFIG;
        if value & !defined != 0 {
            fault!(
                self,
                "InterruptACK {value:#x} sets undefined bits; they are ignored"
            );
        }
    }

    /// Logs a control register read (`written` None: it reads 0) or write
    /// (dropped) that no register of this version serves: the register
    /// goes the other way, or there is none. Only the message differs.
    fn report_unserved(&mut self, offset: u64, written: Option<u32>) {
        let wrong_way = written.map_or(Direction::W, |_| Direction::R);
        let register = mmio::register(offset)
            .filter(|r| self.has_layout(r.layout) && r.direction == wrong_way);
        match (register, written) {
            (Some(r), None) => fault!(
                self,
                "read of write-only register {} ({offset:#x}) reads 0",
                r.name
            ),
            (Some(r), Some(value)) => fault!(
                self,
                "write of {value:#x} to read-only register {} ({offset:#x}) ignored",
                r.name
            ),
            (None, None) => fault!(
                self,
                "read at {offset:#x}: no such register in this version, reads 0"
            ),
            (None, Some(value)) => fault!(
                self,
                "write of {value:#x} at {offset:#x}: no such register in this version, ignored"
            ),
        }
    }

    // ---- status, features, reset -------------------------------------

    /// A `Status` store (virtio v1.4 §2.1, §3.1, §4.2.2 `Status`).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.status & !DEVICE_NEEDS_RESET;
        // DEVICE_NEEDS_RESET belongs to the device: a driver that writes
        // back what it read (Linux ORs a bit into the value it read) may
        // carry it; it is not the driver's to set or clear.
        let mut new = value & !DEVICE_NEEDS_RESET;
        if new & !DRIVER_WRITABLE != 0 {
            fault!(self, "Status {value:#x}: undefined bits ignored");
            new &= DRIVER_WRITABLE;
        }
        if new & SUSPEND != 0 {
            // VIRTIO_F_SUSPEND is never offered (§3.4.1: ignore SUSPEND).
            fault!(
                self,
                "Status {value:#x}: SUSPEND is not supported, bit ignored"
            );
            new &= !SUSPEND;
        }
        if self.is_legacy() && new & FEATURES_OK != 0 {
            fault!(
                self,
                "Status {value:#x}: a legacy device has no FEATURES_OK, bit ignored"
            );
            new &= !FEATURES_OK;
        }
        if current & !new != 0 {
            fault!(
                self,
                "Status {value:#x} would clear bits of {current:#x}; only a write of 0 (reset) may, ignored"
            );
            return;
        }
        let added = new & !current;
        if added == 0 {
            return;
        }
        if current & FAILED != 0 {
            fault!(
                self,
                "Status {value:#x} after FAILED: only a reset is accepted, ignored"
            );
            return;
        }
        for &(bit, mut needs) in STATUS_ORDER {
            if self.is_legacy() {
                needs &= !FEATURES_OK;
            }
            if added & bit != 0 && new & needs != needs {
                fault!(
                    self,
                    "Status {value:#x}: bit {bit:#x} needs {needs:#x} first (status {current:#x}), ignored"
                );
                return;
            }
        }
        if added & FEATURES_OK != 0 {
            if let Err(reason) = self.check_features() {
                fault!(self, "FEATURES_OK refused: {reason}");
                // DRIVER_OK without FEATURES_OK is out of order: drop both.
                new &= !(FEATURES_OK | DRIVER_OK);
            }
        }
        self.status = new | (self.status & DEVICE_NEEDS_RESET);
        if added & new & DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Whether the driver's features can be accepted at FEATURES_OK
    /// (virtio v1.4 §2.2.2: the device fails FEATURES_OK for a subset it
    /// cannot accept).
    fn check_features(&self) -> Result<(), String> {
        let unoffered = self.driver_features & !self.offered;
        if unoffered != 0 {
            return Err(format!(
                "driver accepted bits {unoffered:#x} that were not offered"
            ));
        }
        if self.acked_unoffered_page {
            return Err("driver accepted bits past bit 63, none of which were offered".into());
        }
        if self.driver_features & bit(features::VIRTIO_F_VERSION_1) == 0 {
            return Err("driver did not accept VIRTIO_F_VERSION_1 (Version 2 needs it)".into());
        }
        Ok(())
    }

    /// DRIVER_OK was set: hand the device its queues (virtio v1.4 §3.1.1
    /// step 8). A failure sets DEVICE_NEEDS_RESET and raises a
    /// configuration change notification (§2.1.2).
    fn activate(&mut self) {
        let features = self.negotiated_features();
        let queues = self.queues.iter().map(|q| q.to_queue(features)).collect();
        match self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), queues, features)
        {
            Ok(()) => {
                debug!(
                    "virtio-mmio (device type {}): activated with features {features:#x}",
                    self.device_type
                );
                self.activated = true;
            }
            Err(error) => {
                fault!(
                    self,
                    "activation failed, setting DEVICE_NEEDS_RESET: {error}"
                );
                self.set_device_needs_reset();
            }
        }
    }

    /// Device reset (virtio v1.4 §2.4, §4.2.2.1): the device stops, every
    /// register returns to its initial value, except `GuestPageSize`
    /// (legacy drivers write it once, before the first reset) and
    /// `ConfigGeneration` (only ever incremented).
    fn reset(&mut self) {
        debug!("virtio-mmio (device type {}): reset", self.device_type);
        self.device.reset();
        self.activated = false;
        self.status = 0;
        self.offered = offer(
            self.version,
            self.device.device_features(),
            self.packed_ring,
        );
        self.driver_features = 0;
        self.acked_unoffered_page = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
    }

    /// Whether `DriverFeatures` is frozen: after FEATURES_OK (Modern,
    /// §3.1.1 step 5) or DRIVER_OK (Legacy, §3.1.2).
    fn features_locked(&self) -> bool {
        let lock = if self.is_legacy() {
            DRIVER_OK
        } else {
            FEATURES_OK
        };
        self.status & lock != 0
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.features_locked() {
            fault!(
                self,
                "DriverFeatures page {} = {value:#x} after negotiation ended, ignored",
                self.driver_features_sel
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = with_low(self.driver_features, value),
            1 => self.driver_features = with_high(self.driver_features, value),
            // Nothing is offered past bit 63: zero words (Linux >= 6.17
            // writes pages 2 and 3) are accepted silently.
            _ if value == 0 => {}
            page => {
                fault!(
                    self,
                    "DriverFeatures page {page} = {value:#x}: none of these bits were offered"
                );
                self.acked_unoffered_page = true;
            }
        }
    }

    fn write_guest_page_size(&mut self, value: u32) {
        if value.is_power_of_two() {
            self.guest_page_size = value;
        } else {
            fault!(
                self,
                "GuestPageSize {value:#x} is not a power of two, keeping {}",
                self.guest_page_size
            );
        }
    }

    fn negotiated(&self, feature: u32) -> bool {
        self.features_locked() && self.negotiated_features() & bit(feature) != 0
    }

    // ---- queues ------------------------------------------------------

    /// The queue `QueueSel` selects, if it exists.
    fn selected(&self) -> Option<&QueueRegs> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|index| self.queues.get(index))
    }

    /// `QueueSel` as a queue index (< 65536), if that queue exists.
    fn selected_index(&self) -> Option<(usize, u16)> {
        let index = usize::try_from(self.queue_sel).ok()?;
        let short = u16::try_from(self.queue_sel).ok()?;
        (index < self.queues.len()).then_some((index, short))
    }

    /// `QueueSize`, the ring addresses (Modern) and `QueueAlign` (Legacy):
    /// refused while the queue is enabled and after DRIVER_OK, unless the
    /// queue was reset with `QueueReset` (§4.2.2.2, §2.6.1.2).
    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let name = mmio::register(offset).map_or("queue register", |r| r.name);
        let Some((index, _)) = self.selected_index() else {
            fault!(
                self,
                "{name} = {value:#x} for absent queue {}, ignored",
                self.queue_sel
            );
            return;
        };
        let running = self.status & DRIVER_OK != 0;
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if queue.ready {
            fault!(
                self,
                "{name} = {value:#x} while queue {index} is enabled, ignored"
            );
            return;
        }
        if running && !queue.reset_pending {
            fault!(
                self,
                "{name} = {value:#x} for queue {index} after DRIVER_OK, ignored"
            );
            return;
        }
        match offset {
            mmio::QUEUE_SIZE => match u16::try_from(value) {
                Ok(size) if size <= queue.max_size => queue.size = size,
                _ => fault!(
                    self,
                    "QueueSize {value} for queue {index} exceeds QueueSizeMax {}, ignored",
                    queue.max_size
                ),
            },
            mmio::QUEUE_DESC_LOW => queue.desc = with_low(queue.desc, value),
            mmio::QUEUE_DESC_HIGH => queue.desc = with_high(queue.desc, value),
            mmio::QUEUE_DRIVER_LOW => queue.driver = with_low(queue.driver, value),
            mmio::QUEUE_DRIVER_HIGH => queue.driver = with_high(queue.driver, value),
            mmio::QUEUE_DEVICE_LOW => queue.device = with_low(queue.device, value),
            mmio::QUEUE_DEVICE_HIGH => queue.device = with_high(queue.device, value),
            mmio::LEGACY_QUEUE_ALIGN => queue.align = value,
            _ => {}
        }
    }

    /// `QueueReady` (Modern, §4.2.2): 1 checks the ring and enables the
    /// queue, 0 disables it at once.
    fn write_queue_ready(&mut self, value: u32) {
        let Some((index, short)) = self.selected_index() else {
            fault!(
                self,
                "QueueReady = {value:#x} for absent queue {}, ignored",
                self.queue_sel
            );
            return;
        };
        match value {
            0 => self.disable_queue(index, short),
            1 => self.enable_queue(index, short),
            _ => fault!(
                self,
                "QueueReady = {value:#x} for queue {index}: only 0 or 1, ignored"
            ),
        }
    }

    /// Stops queue `index` (QueueReady = 0, QueuePFN = 0). A running device
    /// is told through [`VirtioDevice::queue_reset`], so that it stops
    /// accessing the ring (§4.2.2.1).
    fn disable_queue(&mut self, index: usize, short: u16) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        let was_ready = queue.ready;
        queue.ready = false;
        queue.pfn = 0;
        if was_ready && self.activated {
            self.device.queue_reset(short);
        }
    }

    /// QueueReady = 1: checks the ring; a re-enable after `QueueReset`
    /// while the device runs goes to [`VirtioDevice::queue_enable`].
    fn enable_queue(&mut self, index: usize, short: u16) {
        let running = self.status & DRIVER_OK != 0;
        let features = self.negotiated_features();
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if queue.ready {
            return;
        }
        if running && !queue.reset_pending {
            fault!(
                self,
                "QueueReady = 1 for queue {index} after DRIVER_OK, ignored"
            );
            return;
        }
        if let Err(error) = queue.validate(&self.mem, features) {
            fault!(self, "queue {index} not enabled: {error}");
            return;
        }
        queue.ready = true;
        if queue.reset_pending {
            queue.reset_pending = false;
            if self.activated {
                let ring = queue.to_queue(features);
                self.device.queue_enable(short, ring);
            }
        }
    }

    /// `QueuePFN` (Legacy, §4.2.4): non-zero computes the legacy layout,
    /// checks it and enables the queue; 0 stops it.
    fn write_queue_pfn(&mut self, value: u32) {
        let Some((index, short)) = self.selected_index() else {
            fault!(
                self,
                "QueuePFN = {value:#x} for absent queue {}, ignored",
                self.queue_sel
            );
            return;
        };
        if value == 0 {
            self.disable_queue(index, short);
            return;
        }
        let running = self.status & DRIVER_OK != 0;
        let page_size = self.guest_page_size;
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if queue.ready {
            fault!(
                self,
                "QueuePFN = {value:#x} while queue {index} is in use, ignored"
            );
            return;
        }
        if running {
            fault!(
                self,
                "QueuePFN = {value:#x} for queue {index} after DRIVER_OK, ignored"
            );
            return;
        }
        let mut candidate = queue.clone();
        let checked = candidate
            .set_legacy_layout(value, page_size)
            .and_then(|()| candidate.validate(&self.mem, 0));
        if let Err(error) = checked {
            fault!(self, "queue {index} not enabled: {error}");
            return;
        }
        candidate.pfn = value;
        candidate.ready = true;
        *queue = candidate;
    }

    /// `QueueReset` (Modern, §4.2.2, §2.6.1): with VIRTIO_F_RING_RESET
    /// negotiated, 1 resets the selected queue to its initial registers;
    /// the reset is complete when this returns.
    fn write_queue_reset(&mut self, value: u32) {
        if !self.negotiated(features::VIRTIO_F_RING_RESET) {
            fault!(
                self,
                "QueueReset = {value:#x} without VIRTIO_F_RING_RESET negotiated, ignored"
            );
            return;
        }
        let Some((index, short)) = self.selected_index() else {
            fault!(
                self,
                "QueueReset = {value:#x} for absent queue {}, ignored",
                self.queue_sel
            );
            return;
        };
        match value {
            0 => {}
            1 => {
                if let Some(queue) = self.queues.get_mut(index) {
                    queue.reset();
                    queue.reset_pending = true;
                }
                if self.activated {
                    self.device.queue_reset(short);
                }
            }
            _ => fault!(
                self,
                "QueueReset = {value:#x} for queue {index}: only 1 resets, ignored"
            ),
        }
    }

    /// `QueueNotify` (§4.2.2, §4.2.3.3): forwarded to a running device for
    /// an enabled queue; otherwise dropped.
    fn notify(&mut self, value: u32) {
        let data = self
            .negotiated(features::VIRTIO_F_NOTIFICATION_DATA)
            .then(|| NotificationData::from_u32(value));
        let index = data.map_or(value, |d| u32::from(d.vqn));
        if !self.activated {
            fault!(
                self,
                "QueueNotify {value:#x} while the device is not running (status {:#x}), ignored",
                self.status
            );
            return;
        }
        let ready = usize::try_from(index)
            .ok()
            .and_then(|i| self.queues.get(i))
            .is_some_and(|q| q.ready);
        match u16::try_from(index) {
            Ok(short) if ready => self.device.queue_notify(short, data),
            _ => fault!(
                self,
                "QueueNotify for absent or disabled queue {index}, ignored"
            ),
        }
    }

    // ---- shared memory and configuration space -----------------------

    /// The region `SHMSel` selects, if the device declares it (§4.2.2).
    fn shm_region(&self) -> Option<SharedMemoryRegion> {
        self.device
            .shm_regions()
            .iter()
            .find(|r| u32::from(r.id) == self.shm_sel)
            .copied()
    }

    /// Checks a configuration-space access of `len` bytes at window
    /// `offset` (>= 0x100): 1, 2 or 4 bytes, naturally aligned, inside the
    /// window (§4.2.2.2). Returns the offset into the configuration space.
    fn config_offset(&mut self, offset: u64, len: usize, what: &str) -> Option<u64> {
        let width = u64::try_from(len).ok().filter(|w| matches!(w, 1 | 2 | 4));
        let valid = width.and_then(|w| {
            let end = offset.checked_add(w)?;
            (offset.is_multiple_of(w) && end <= mmio::WINDOW_SIZE).then_some(())
        });
        if valid.is_none() {
            fault!(
                self,
                "{len}-byte config {what} at {offset:#x}: config space takes naturally aligned 8/16/32-bit accesses inside the window, {}",
                if what == "read" { "reads 0" } else { "dropped" }
            );
            return None;
        }
        offset.checked_sub(mmio::CONFIG)
    }

    /// A driver store to the configuration space. If it changed what the
    /// device presents, `ConfigGeneration` is incremented (§4.2.2:
    /// it changes whenever the configuration may have).
    fn write_config(&mut self, config_offset: u64, data: &[u8]) {
        let mut before = [0u8; 4];
        let mut after = [0u8; 4];
        let (Some(before_bytes), Some(after_bytes)) =
            (before.get_mut(..data.len()), after.get_mut(..data.len()))
        else {
            return;
        };
        self.device.read_config(config_offset, before_bytes);
        self.device.write_config(config_offset, data);
        self.device.read_config(config_offset, after_bytes);
        if before != after {
            self.config_generation = self.config_generation.wrapping_add(1);
        }
    }
}

impl<M: GuestMemory + Clone + Send> fmt::Debug for MmioTransport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("version", &self.version)
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .field("offered", &self.offered)
            .field("driver_features", &self.driver_features)
            .field("queue_sel", &self.queue_sel)
            .field("queues", &self.queues)
            .field("interrupt", &self.interrupt)
            .field("config_generation", &self.config_generation)
            .finish_non_exhaustive()
    }
}

/// What `DeviceFeatures` offers for a device offering `device_features`,
/// with VIRTIO_F_RING_PACKED added when `packed_ring` (Modern windows only:
/// a legacy window keeps bits 0..32, and packed rings need VERSION_1).
fn offer(version: TransportVersion, device_features: u64, packed_ring: bool) -> u64 {
    let mut features = device_features & !TRANSPORT_UNSUPPORTED_FEATURES;
    if packed_ring {
        features |= bit(features::VIRTIO_F_RING_PACKED);
    }
    match version {
        TransportVersion::Modern => features | bit(features::VIRTIO_F_VERSION_1),
        TransportVersion::Legacy => features & 0xffff_ffff,
    }
}

/// The 4 bytes of an aligned 32-bit control-register access, if it is one.
fn control_access(offset: u64, data: &mut [u8]) -> Option<&mut [u8; 4]> {
    let bytes = <&mut [u8; 4]>::try_from(data).ok()?;
    offset.is_multiple_of(4).then_some(bytes)
}

/// The value of an aligned 32-bit control-register store, if it is one.
fn control_value(offset: u64, data: &[u8]) -> Option<u32> {
    let bytes = <[u8; 4]>::try_from(data).ok()?;
    offset.is_multiple_of(4).then(|| u32::from_le_bytes(bytes))
}

/// Bits 0..32 of `value`.
fn low(value: u64) -> u32 {
    // Masked to 32 bits: the conversion cannot fail.
    u32::try_from(value & 0xffff_ffff).unwrap_or(u32::MAX)
}

/// Bits 32..64 of `value`.
fn high(value: u64) -> u32 {
    // Shifted down to 32 bits: the conversion cannot fail.
    u32::try_from(value >> 32).unwrap_or(u32::MAX)
}
