//! vmmio's own virtio-mmio transports on the machine's bus (virtio v1.4 §4.2 "Virtio Over
//! MMIO"): the glue between [`vmmio_device::MmioTransport`] and the machine.
//!
//! - [`VirtioWindow`] puts a transport on the bus: an [`MmioDevice`] that forwards each guest
//!   load and store, with its window offset and width, to the transport. A
//!   [`VirtioHandle`] lets the host look at it ([`VirtioStats`]).
//! - [`LevelIrq`] is the transport's [`Interrupt`] over a PLIC source: a level line,
//!   asserted exactly while the window's `InterruptStatus` is non-zero
//!   ([`Interrupt::status_changed`]). An interrupt raised between the guest's read of
//!   `InterruptStatus` and its `InterruptACK` keeps the line up, so it is never lost.
//! - [`Machine::add_virtio_device`] does all of it for the next free reserved slot
//!   ([`crate::layout::virtio_mmio_slot`]): window, PLIC line and device-tree node.
//!
//! Execution ([`crate::MachineConfig::exec`]): in the default [`ExecMode::Worker`] the
//! device is wrapped in a [`WorkerDevice`]: the guest's `QueueNotify` store only signals an
//! eventfd, the device's worker thread does the I/O and raises the level line, which wakes
//! the hart from WFI; the worker also waits on the device's backend fds (network sockets).
//! In [`ExecMode::Sync`] the device's `queue_notify` (block I/O included) runs inside the
//! guest's store on the hart thread, and the run loop polls the device's backend fds
//! ([`MmioTransport::poll_backends`], zero timeout) between instruction batches and at
//! least every millisecond while the hart sleeps in WFI, so net and vsock devices work in
//! both modes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_memory::GuestMemoryMmap;
use vmmio_device::{
    ExecMode, Interrupt, InterruptCause, MmioTransport, TransportVersion, VirtioDevice,
    WorkerDevice,
};
use vmmio_spec::mmio;

use crate::bus::MmioDevice;
use crate::fdt::DeviceNode;
use crate::layout::{self, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SLOTS};
use crate::machine::Machine;
use crate::plic::IrqLine;
use crate::Error;

/// A virtio device as the machine takes it: any [`VirtioDevice`] over the machine's guest
/// memory.
pub type BoxedVirtioDevice = Box<dyn VirtioDevice<GuestMemoryMmap> + Send>;

/// A virtio-mmio transport window on the bus (virtio v1.4 §4.2.2 "MMIO Device Register
/// Layout"). Guest accesses reach [`MmioTransport::read`] / [`MmioTransport::write`] with
/// window-relative offsets and the instruction's width; the transport itself answers bad
/// widths, offsets and values (reads 0, ignored writes), so nothing the guest does here
/// panics the host.
///
/// The transport sits behind a mutex shared with [`VirtioHandle`]s, so the host can look at
/// it (or change its configuration) while and after the machine runs.
pub struct VirtioWindow {
    shared: Arc<WindowShared>,
}

/// What a window shares with its handles.
struct WindowShared {
    transport: Mutex<MmioTransport<GuestMemoryMmap>>,
    /// Stores to `QueueNotify`.
    notifies: AtomicU64,
    /// Successful activations (DRIVER_OK accepted and the device started).
    activations: AtomicU64,
    /// Negotiated features at the last activation.
    activated_features: AtomicU64,
    /// Rising edges of the interrupt line, when it is a [`LevelIrq`] made here.
    interrupts: Arc<AtomicU64>,
}

impl VirtioWindow {
    /// Wraps `transport` for [`Machine::add_mmio_device`]. Its interrupt count
    /// ([`VirtioStats::interrupts`]) stays 0: only windows made by
    /// [`Machine::add_virtio_device`] count them.
    pub fn new(transport: MmioTransport<GuestMemoryMmap>) -> Self {
        Self::with_interrupt_counter(transport, Arc::default())
    }

    fn with_interrupt_counter(
        transport: MmioTransport<GuestMemoryMmap>,
        interrupts: Arc<AtomicU64>,
    ) -> Self {
        Self {
            shared: Arc::new(WindowShared {
                transport: Mutex::new(transport),
                notifies: AtomicU64::new(0),
                activations: AtomicU64::new(0),
                activated_features: AtomicU64::new(0),
                interrupts,
            }),
        }
    }

    /// A handle on this window for the host.
    pub fn handle(&self) -> VirtioHandle {
        VirtioHandle {
            shared: self.shared.clone(),
            slot: None,
        }
    }
}

/// Locks a transport; a panic elsewhere while holding the lock does not stop the window
/// (the transport's state is consistent between its calls).
fn lock(
    m: &Mutex<MmioTransport<GuestMemoryMmap>>,
) -> MutexGuard<'_, MmioTransport<GuestMemoryMmap>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for VirtioWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioWindow")
            .field("transport", &*lock(&self.shared.transport))
            .finish()
    }
}

impl MmioDevice for VirtioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.shared.transport).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut t = lock(&self.shared.transport);
        let was_active = t.is_activated();
        t.write(offset, data);
        let s = &self.shared;
        if offset == mmio::QUEUE_NOTIFY {
            s.notifies.fetch_add(1, Ordering::Relaxed);
        } else if offset == mmio::STATUS && !was_active && t.is_activated() {
            s.activations.fetch_add(1, Ordering::Relaxed);
            s.activated_features
                .store(t.negotiated_features(), Ordering::Relaxed);
        }
    }
}

/// The host's view of a window made with [`Machine::add_virtio_device`] (or
/// [`VirtioWindow::handle`]): counters and the transport. Cheap to clone, usable from any
/// thread, valid after the machine is dropped.
#[derive(Clone)]
pub struct VirtioHandle {
    shared: Arc<WindowShared>,
    slot: Option<VirtioSlot>,
}

impl std::fmt::Debug for VirtioHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioHandle")
            .field("slot", &self.slot)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A snapshot of a window's state and counters ([`VirtioHandle::stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioStats {
    /// The virtio device ID (`DeviceID`, virtio v1.4 §5).
    pub device_type: u32,
    /// The register layout the window presents.
    pub version: TransportVersion,
    /// The `Status` register now (device status bits, virtio v1.4 §2.1).
    pub status: u32,
    /// How many times the device was activated (DRIVER_OK accepted) since the window was
    /// made; a driver that resets and re-initializes the device counts twice.
    pub activations: u64,
    /// The negotiated feature bits at the last activation (0 if never activated). A
    /// Version 2 driver has VIRTIO_F_VERSION_1 (bit 32) here, a legacy one cannot.
    pub activated_features: u64,
    /// Stores to `QueueNotify` (virtio v1.4 §4.2.3.3 "Available Buffer Notifications").
    pub notifies: u64,
    /// Times the interrupt line went from low to high.
    pub interrupts: u64,
}

impl VirtioHandle {
    /// Where the window is, when [`Machine::add_virtio_device`] placed it.
    pub fn slot(&self) -> Option<VirtioSlot> {
        self.slot
    }

    /// A snapshot of the window's state and counters.
    pub fn stats(&self) -> VirtioStats {
        let s = &self.shared;
        let t = lock(&s.transport);
        VirtioStats {
            device_type: t.device().device_type(),
            version: t.version(),
            status: t.status(),
            activations: s.activations.load(Ordering::Relaxed),
            activated_features: s.activated_features.load(Ordering::Relaxed),
            notifies: s.notifies.load(Ordering::Relaxed),
            interrupts: s.interrupts.load(Ordering::Relaxed),
        }
    }

    /// Hands the backend fds of a synchronously run device that are ready to it
    /// ([`MmioTransport::poll_backends`] with a zero timeout). Skipped when the window is
    /// locked elsewhere (the next batch polls again).
    pub(crate) fn poll_backends(&self) {
        if let Ok(mut t) = self.shared.transport.try_lock() {
            if let Err(e) = t.poll_backends(std::time::Duration::ZERO) {
                log::debug!("virtio-mmio backend poll failed: {e}");
            }
        }
    }

    /// Runs `f` on the transport (e.g. to change the device's configuration and call
    /// [`MmioTransport::config_changed`]). The window is locked meanwhile: a guest access
    /// from the hart waits.
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut MmioTransport<GuestMemoryMmap>) -> R) -> R {
        f(&mut lock(&self.shared.transport))
    }
}

/// A window's interrupt as a level-triggered PLIC source (virtio v1.4 §4.2.3.4
/// "Notifications From The Device"): the line is high exactly while `InterruptStatus` is
/// non-zero. [`Interrupt::trigger`] does nothing; the level follows
/// [`Interrupt::status_changed`], which the transport calls after every raise,
/// `InterruptACK` and reset.
#[derive(Clone, Debug)]
pub struct LevelIrq {
    line: IrqLine,
    /// Low-to-high transitions.
    rises: Arc<AtomicU64>,
}

impl LevelIrq {
    /// A level interrupt on `line` (from [`Machine::irq_line`]).
    pub fn new(line: IrqLine) -> Self {
        Self {
            line,
            rises: Arc::default(),
        }
    }

    /// The PLIC line it drives.
    pub fn line(&self) -> &IrqLine {
        &self.line
    }

    /// How many times the line went from low to high.
    pub fn rises(&self) -> u64 {
        self.rises.load(Ordering::Relaxed)
    }
}

impl Interrupt for LevelIrq {
    fn trigger(&self, _cause: InterruptCause) {
        // Level-triggered: `status_changed` follows right after with the new status.
    }

    fn status_changed(&self, status: u32) {
        let high = status != 0;
        if high && !self.line.level() {
            self.rises.fetch_add(1, Ordering::Relaxed);
        }
        self.line.set_level(high);
    }
}

/// Where [`Machine::add_virtio_device`] put a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Reserved slot index, `0..`[`VIRTIO_MMIO_SLOTS`].
    pub slot: u32,
    /// Window base (guest-physical byte address); the window is
    /// [`VIRTIO_MMIO_SIZE`] bytes long.
    pub base: u64,
    /// PLIC source the window interrupts on.
    pub irq: u32,
}

impl Machine {
    /// Puts `device` behind a new virtio-mmio transport of layout `version` in the first
    /// reserved slot ([`layout::virtio_mmio_slot`]) that is still free: adds the window to
    /// the bus, wires its interrupt as a level PLIC line ([`LevelIrq`]) and adds its
    /// `virtio,mmio` device-tree node. Call before [`Machine::load_linux`]. Slots are taken
    /// in order (0, 1, ...); Linux numbers the devices `virtio0`, `virtio1`, ... in the
    /// order it probes them.
    ///
    /// The device runs as [`crate::MachineConfig::exec`] says (see the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::NoVirtioSlot`] when all [`VIRTIO_MMIO_SLOTS`] slots are taken (by earlier
    /// calls or by windows added with [`Machine::add_mmio_device`]); [`Error::Worker`] when
    /// the device's worker thread cannot be started.
    pub fn add_virtio_device(
        &mut self,
        version: TransportVersion,
        device: BoxedVirtioDevice,
    ) -> Result<VirtioHandle, Error> {
        let free = (0..VIRTIO_MMIO_SLOTS).find_map(|slot| {
            let (base, irq) = layout::virtio_mmio_slot(slot)?;
            self.window_is_free(base, VIRTIO_MMIO_SIZE)
                .then_some(VirtioSlot { slot, base, irq })
        });
        let Some(at) = free else {
            return Err(Error::NoVirtioSlot);
        };
        let line = LevelIrq::new(self.irq_line(at.irq)?);
        let device: BoxedVirtioDevice = match self.exec {
            ExecMode::Sync => device,
            ExecMode::Worker => Box::new(WorkerDevice::new(device).map_err(Error::Worker)?),
        };
        let rises = line.rises.clone();
        let transport = MmioTransport::new(version, device, self.memory().clone(), Arc::new(line));
        let window = VirtioWindow::with_interrupt_counter(transport, rises);
        let mut handle = window.handle();
        handle.slot = Some(at);
        self.add_mmio_device(at.base, VIRTIO_MMIO_SIZE, Box::new(window))?;
        self.add_device_node(DeviceNode::virtio_mmio(at.base, at.irq));
        if self.exec == ExecMode::Sync {
            self.polled.push(handle.clone());
        }
        log::debug!(
            "virtio-mmio {version:?} window at {at:x?}, {} execution",
            self.exec
        );
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineConfig;
    use vmmio_device::{ActivateError, InterruptStatus, Queue};
    use vmmio_spec::notification::NotificationData;

    /// A device with one queue and nothing else.
    struct Dummy;

    impl VirtioDevice<GuestMemoryMmap> for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn device_features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: InterruptStatus,
            _queues: Vec<Queue>,
            _features: u64,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn queue_notify(&mut self, _index: u16, _data: Option<NotificationData>) {}
        fn reset(&mut self) {}
        fn queue_reset(&mut self, _index: u16) {}
    }

    fn machine() -> Machine {
        Machine::new(MachineConfig {
            ram_size: 1 << 20,
            console: Box::new(std::io::sink()),
            ..Default::default()
        })
        .unwrap()
    }

    fn read32(w: &mut VirtioWindow, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        w.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn window_forwards_accesses_and_the_line_follows_interrupt_status() {
        let m = machine();
        let line = LevelIrq::new(m.irq_line(5).unwrap());
        let irq = line.line().clone();
        let t = MmioTransport::new(
            TransportVersion::Legacy,
            Box::new(Dummy),
            m.memory().clone(),
            Arc::new(line.clone()),
        );
        let mut w = VirtioWindow::new(t);
        assert_eq!(read32(&mut w, mmio::MAGIC), u32::from_le_bytes(*b"virt"));
        assert_eq!(read32(&mut w, mmio::VERSION), 1);
        assert_eq!(read32(&mut w, mmio::DEVICE_ID), 4);

        let h = w.handle();
        let status = h.with_transport(|t| t.interrupt_status().clone());
        status.raise(InterruptCause::UsedBuffer);
        assert!(irq.level());
        // A second cause before the ACK keeps the line up until both are acknowledged.
        status.raise(InterruptCause::ConfigChange);
        w.write(mmio::INTERRUPT_ACK, &1u32.to_le_bytes());
        assert!(irq.level(), "config bit still pending");
        w.write(mmio::INTERRUPT_ACK, &2u32.to_le_bytes());
        assert!(!irq.level());
        assert_eq!(line.rises(), 1);

        // A guest store to QueueNotify is counted (and dropped: the device is not running).
        w.write(mmio::QUEUE_NOTIFY, &0u32.to_le_bytes());
        let st = h.stats();
        assert_eq!((st.notifies, st.activations, st.device_type), (1, 0, 4));
        assert_eq!(st.version, TransportVersion::Legacy);

        // Hostile widths and offsets read 0 and never panic.
        let mut b = [0xffu8; 8];
        w.read(0xfff, &mut b[..1]);
        w.read(0x0, &mut b[..8]);
        assert_eq!(b, [0; 8]);
        w.write(0x3, &[1, 2]);
    }

    #[test]
    fn add_virtio_device_takes_free_slots_in_order() {
        let mut m = machine();
        // Slot 1 is taken by someone else's window.
        let (base1, _) = layout::virtio_mmio_slot(1).unwrap();
        let t = MmioTransport::new(
            TransportVersion::Modern,
            Box::new(Dummy),
            m.memory().clone(),
            Arc::new(LevelIrq::new(m.irq_line(40).unwrap())),
        );
        m.add_mmio_device(base1, VIRTIO_MMIO_SIZE, Box::new(VirtioWindow::new(t)))
            .unwrap();
        let mut slots = Vec::new();
        for _ in 0..VIRTIO_MMIO_SLOTS - 1 {
            let h = m
                .add_virtio_device(TransportVersion::Modern, Box::new(Dummy))
                .unwrap();
            slots.push(h.slot().unwrap().slot);
        }
        assert_eq!(slots, [0, 2, 3, 4, 5, 6, 7]);
        assert!(matches!(
            m.add_virtio_device(TransportVersion::Modern, Box::new(Dummy)),
            Err(Error::NoVirtioSlot)
        ));
        let dtb = m.device_tree("", None).unwrap();
        let count = dtb
            .windows(b"virtio,mmio".len())
            .filter(|w| w == b"virtio,mmio")
            .count();
        assert_eq!(count, 7, "one node per add_virtio_device");
    }

    /// A device with a backend fd, counting its events.
    struct Listening {
        sock: std::os::unix::net::UnixStream,
        events: Arc<AtomicU64>,
    }

    impl VirtioDevice<GuestMemoryMmap> for Listening {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn device_features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: InterruptStatus,
            _queues: Vec<Queue>,
            _features: u64,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn queue_notify(&mut self, _index: u16, _data: Option<NotificationData>) {}
        fn reset(&mut self) {}
        fn queue_reset(&mut self, _index: u16) {}
        fn backend_fds(&self) -> Vec<vmmio_device::BackendFd> {
            use std::os::fd::AsRawFd;
            vec![vmmio_device::BackendFd {
                fd: self.sock.as_raw_fd(),
                token: 3,
                readable: true,
                writable: false,
            }]
        }
        fn backend_event(&mut self, token: u64) {
            use std::io::Read;
            assert_eq!(token, 3);
            let mut b = [0u8; 16];
            let _ = self.sock.read(&mut b);
            self.events.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Drives a Version 2 window to DRIVER_OK from the host side.
    fn start(h: &VirtioHandle) {
        h.with_transport(|t| {
            for (off, v) in [
                (mmio::STATUS, 1u32),
                (mmio::STATUS, 3),
                (mmio::DRIVER_FEATURES_SEL, 1),
                (mmio::DRIVER_FEATURES, 1),
                (mmio::STATUS, 11),
                (mmio::STATUS, 15),
            ] {
                t.write(off, &v.to_le_bytes());
            }
            assert!(t.is_activated());
        });
    }

    /// In sync mode nobody but the run loop waits on a device's backend fds: it must poll
    /// them between instruction batches. (Removing the poll from `Machine::run` fails this.)
    #[test]
    fn sync_mode_run_loop_serves_backend_fds() {
        use std::io::Write;
        for exec in [ExecMode::Sync, ExecMode::Worker] {
            let mut m = Machine::new(MachineConfig {
                ram_size: 1 << 20,
                console: Box::new(std::io::sink()),
                instruction_limit: Some(1 << 16),
                exec,
                ..Default::default()
            })
            .unwrap();
            let (sock, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
            sock.set_nonblocking(true).unwrap();
            let events = Arc::new(AtomicU64::new(0));
            let h = m
                .add_virtio_device(
                    TransportVersion::Modern,
                    Box::new(Listening {
                        sock,
                        events: events.clone(),
                    }),
                )
                .unwrap();
            start(&h);
            peer.write_all(b"ping").unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while events.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                m.run().unwrap();
                if exec == ExecMode::Worker {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            assert!(
                events.load(Ordering::SeqCst) > 0,
                "{exec}: no backend event"
            );
        }
    }
}
