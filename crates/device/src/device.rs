//! The trait a device backend implements (spec 2 "Basic Facilities of a
//! Virtio Device", seen from the device).
//!
//! The transport ([`crate::MmioTransport`]) owns the register file; the
//! device owns its behaviour. At `DRIVER_OK` the transport hands the device
//! its ready queues, a guest-memory handle and the interrupt status
//! ([`VirtioDevice::activate`]); from then on the transport forwards queue
//! notifications ([`VirtioDevice::queue_notify`]) until a reset.

use std::os::fd::RawFd;

use vm_memory::GuestMemory;
use vmmio_spec::notification::NotificationData;

use crate::interrupt::InterruptStatus;
use crate::queue::Queue;

/// A shared memory region a device declares (spec 2.10 "Shared Memory
/// Regions"), read through `SHMSel` / `SHMLen*` / `SHMBase*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedMemoryRegion {
    /// Region id (the value the driver writes to `SHMSel`).
    pub id: u8,
    /// Guest-physical base address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A host-side file descriptor a device waits on besides its queue
/// notifications: a TAP device, a Unix socket, a listening socket.
///
/// The platform (a worker thread's epoll set, or a synchronous embedder
/// calling [`crate::MmioTransport::poll_backends`]) waits until the fd is
/// ready for what the flags ask and then calls
/// [`VirtioDevice::backend_event`] with `token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendFd {
    /// The file descriptor; owned by the device, which keeps it open at
    /// least until it stops listing it.
    pub fd: RawFd,
    /// The device's own name for this source, handed back in
    /// [`VirtioDevice::backend_event`].
    pub token: u64,
    /// Wake when the fd is readable (`EPOLLIN` / `POLLIN`).
    pub readable: bool,
    /// Wake when the fd is writable (`EPOLLOUT` / `POLLOUT`), e.g. while
    /// bytes wait for room in a socket's send buffer.
    pub writable: bool,
}

/// Why a device could not start at `DRIVER_OK`. The transport answers with
/// DEVICE_NEEDS_RESET and a configuration-change interrupt (spec 2.1.2).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not set up by the driver.
    #[error("queue {0} is required but not ready")]
    QueueNotReady(u16),
    /// The negotiated features do not allow the device to run.
    #[error("unsupported feature combination {0:#x}")]
    Features(u64),
    /// The backend failed (I/O, thread spawn, ...).
    #[error("backend failed to start")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device behind an MMIO window.
///
/// `M` is the guest memory type the device reads and writes buffers in.
/// Everything the driver controls (config offsets, data, notification
/// values, ring contents) is hostile input: implementations never panic on
/// it.
pub trait VirtioDevice<M: GuestMemory>: Send {
    /// The virtio device ID (`DeviceID`, spec 5), e.g.
    /// `vmmio_spec::device_id::BLOCK`.
    fn device_type(&self) -> u32;

    /// Maximum size (`QueueSizeMax`) of each queue, by queue index. The
    /// length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers: device-type bits and the transport
    /// bits it implements (INDIRECT_DESC, EVENT_IDX, RING_RESET, ...). The
    /// transport adds VIRTIO_F_VERSION_1 for Version 2 windows and removes
    /// bits >= 32 for legacy windows.
    fn device_features(&self) -> u64;

    /// Reads `data.len()` bytes of the device configuration space at byte
    /// `offset`. Bytes past the end of the config space read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes `data` to the device configuration space at byte `offset`.
    /// Read-only or out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// How many times the host changed the configuration space so far
    /// (wrapping): the transport adds it into `ConfigGeneration` (virtio
    /// v1.4 §4.2.2), so a driver re-reads fields that changed under it. A
    /// device whose configuration the host changes at run time keeps it in
    /// a [`crate::LiveConfig`] and returns [`crate::LiveConfig::generation`];
    /// the counter must be incremented in the same critical section as the
    /// change, before the new bytes can be read. Default: 0 (the
    /// configuration never changes on the host side).
    fn config_generation(&self) -> u32 {
        0
    }

    /// Starts the device after `DRIVER_OK`: `queues[i]` is queue `i` (not
    /// ready ones included, with `ready() == false`), `features` the
    /// negotiated feature bits, `mem` the guest memory and `interrupt` the
    /// window's `InterruptStatus`.
    ///
    /// # Errors
    /// An [`ActivateError`] makes the transport set DEVICE_NEEDS_RESET.
    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError>;

    /// The driver notified queue `index` (`QueueNotify`); `data` is the
    /// decoded notification data when VIRTIO_F_NOTIFICATION_DATA was
    /// negotiated. Only called between a successful `activate` and `reset`,
    /// with `index` below the number of queues.
    fn queue_notify(&mut self, index: u16, data: Option<NotificationData>);

    /// The driver reset the device (`Status` = 0): drop queues and any
    /// in-flight state, keep the backing (disk file, ...). Called on every
    /// reset, also when the device was never activated.
    fn reset(&mut self);

    /// Stop using queue `index` and forget its state: the driver reset it
    /// (`QueueReset`, VIRTIO_F_RING_RESET), or turned it off while the
    /// device runs (`QueueReady` = 0, legacy `QueuePFN` = 0; virtio v1.4
    /// §4.2.2.1: the device MUST NOT access a queue whose `QueueReady` is
    /// 0). Only called between a successful `activate` and `reset`.
    ///
    /// Required, with no default: a device that kept using the queue
    /// after this call would break that MUST, so every device says what
    /// it does (even if that is "nothing: this device never touches its
    /// queues outside `queue_notify`").
    fn queue_reset(&mut self, index: u16);

    /// The driver re-enabled queue `index` after a queue reset, while the
    /// device runs. Default: ignore the queue.
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        let _ = (index, queue);
    }

    /// Host-side file descriptors the device wants to be woken on while it
    /// runs (e.g. a network backend's socket). Asked after
    /// [`VirtioDevice::activate`] and again after every
    /// [`VirtioDevice::queue_notify`] and [`VirtioDevice::backend_event`]:
    /// the set may change (a vsock device adds a connection's socket, asks
    /// for writability while it has bytes queued). Default: none.
    fn backend_fds(&self) -> Vec<BackendFd> {
        Vec::new()
    }

    /// The fd listed with `token` by [`VirtioDevice::backend_fds`] is ready
    /// (or may be: a spurious call must be harmless, so read and write
    /// non-blocking). Runs on the thread that runs the device's queues,
    /// only between a successful `activate` and `reset`. Default: nothing.
    fn backend_event(&mut self, token: u64) {
        let _ = token;
    }

    /// Shared memory regions the device declares. Default: none.
    fn shm_regions(&self) -> &[SharedMemoryRegion] {
        &[]
    }

    /// Vendor ID (`VendorID`). Default: 0x4f494d56, "VMIO" in
    /// little-endian ASCII.
    fn vendor_id(&self) -> u32 {
        u32::from_le_bytes(*b"VMIO")
    }
}
