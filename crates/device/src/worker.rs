//! The worker execution model: a device runs on its own thread, woken by
//! eventfds, instead of inside the driver's `QueueNotify` store.
//!
//! [`WorkerDevice`] wraps any [`VirtioDevice`] and is itself a
//! `VirtioDevice`, so an [`crate::MmioTransport`] drives it exactly like
//! the device it wraps:
//!
//! - `QueueNotify` (the transport calls [`VirtioDevice::queue_notify`])
//!   only signals the queue's [`EventFd`], as KVM's ioeventfd would; a VMM
//!   with ioeventfds registers [`WorkerDevice::queue_eventfd`] with KVM and
//!   never sees the store at all.
//! - One worker thread per device waits (epoll) on the queue eventfds and
//!   on the device's [`VirtioDevice::backend_fds`], and calls
//!   `queue_notify` / `backend_event` on the wrapped device. The device
//!   completes requests and raises interrupts through its
//!   [`crate::InterruptStatus`] from that thread, as it does in the
//!   synchronous mode.
//! - Everything else (config reads and writes, activation, reset, queue
//!   reset) runs on the caller's (vCPU) thread, under the same lock.
//!
//! # The hand-off (the one place the threads synchronise)
//!
//! The wrapped device lives in `Shared::state`, a mutex, together with a
//! `running` flag and each queue's enabled flag. The worker calls into the
//! device only while it holds that lock and only when `running` (and, for
//! a queue, its enabled flag) is set. [`VirtioDevice::reset`] and
//! [`VirtioDevice::queue_reset`] take the same lock, clear the flags and
//! call the wrapped device's reset before they release it, so when they
//! return:
//!
//! - the worker is not inside the device (it would hold the lock), and
//! - it will not call the device for that queue again until the driver
//!   activates the device or re-enables the queue.
//!
//! The transport resets the device before `Status` reads 0 (virtio v1.4
//! §2.4: the device must not touch guest memory after the driver reads 0)
//! and before a queue is reported reset (§2.6.1.1, §4.2.2.1 QueueReady =
//! 0). A wrapped device touches guest memory only from its own methods, so
//! the lock is the proof. A request the worker already took from the
//! avail ring may be dropped by the reset (the driver cannot expect a used
//! buffer for it after the reset), never completed after it.
//!
//! A config access from the vCPU thread waits for the device call the
//! worker is in (one batch of requests) at most.
//!
//! Backend fds are waited on level-triggered, as `poll(2)` does in the
//! synchronous mode: a device must stop listing an fd (or its readable /
//! writable interest) while it cannot make progress on it (no receive
//! buffers, peer hung up), or the worker wakes for it again at once.
//! An fd closed and reopened under the same number with the same token and
//! interest between two listings is not noticed: give a new fd a new token.
//!
//! Not carried over: the notification data of VIRTIO_F_NOTIFICATION_DATA
//! (an eventfd carries a count, not a value): the wrapper does not offer
//! that feature, and the device is told `queue_notify(index, None)`.
//! Several notifications of one queue before the worker wakes become one
//! `queue_notify` call (devices process everything available on each call).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

// The hand-off's primitives: loom's in the tests built with `--cfg loom`,
// so that they model-check the real protocol code (worker/loom_tests.rs).
#[cfg(all(test, loom))]
use loom::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(all(test, loom)))]
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, MutexGuard,
};

use log::{debug, warn};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmmio_spec::features::{bit, VIRTIO_F_NOTIFICATION_DATA};
use vmmio_spec::notification::NotificationData;

use crate::device::{ActivateError, BackendFd, SharedMemoryRegion, VirtioDevice};
use crate::interrupt::InterruptStatus;
use crate::queue::Queue;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

/// Where a device runs its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecMode {
    /// Inside the driver's `QueueNotify` store, on the caller's thread
    /// (the transport calls the device directly). Backend fds are the
    /// embedder's to poll ([`crate::MmioTransport::poll_backends`]).
    Sync,
    /// On a worker thread per device ([`WorkerDevice`]).
    Worker,
}

impl std::str::FromStr for ExecMode {
    type Err = String;

    /// `"sync"` or `"worker"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(ExecMode::Sync),
            "worker" => Ok(ExecMode::Worker),
            other => Err(format!("unknown execution mode {other:?} (sync or worker)")),
        }
    }
}

impl std::fmt::Display for ExecMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecMode::Sync => "sync",
            ExecMode::Worker => "worker",
        })
    }
}

/// epoll data of the control eventfd; queue `i` uses `i`, backend fds
/// `BACKEND | fd`.
const CONTROL: u64 = 1 << 32;
/// Tag of backend-fd epoll data (the fd is in the low 32 bits).
const BACKEND: u64 = 1 << 33;
/// epoll events taken per wait.
const EVENTS: usize = 64;

/// What the worker and the callers share; see the module docs for the
/// protocol.
struct Shared<M: GuestMemory> {
    /// The hand-off lock: the device, and whether the worker may call it.
    state: Mutex<State<M>>,
    /// The worker thread must return (set once, by `Drop`).
    exit: AtomicBool,
}

/// The part of [`Shared`] under the lock.
struct State<M: GuestMemory> {
    device: Box<dyn VirtioDevice<M> + Send>,
    /// Activated and not reset since: the worker may call the device.
    running: bool,
    /// Per queue: enabled (ready at activation or re-enabled, not reset
    /// since). The worker notifies only enabled queues.
    enabled: Vec<bool>,
}

impl<M: GuestMemory> Shared<M> {
    fn new(device: Box<dyn VirtioDevice<M> + Send>, queues: usize) -> Self {
        Shared {
            state: Mutex::new(State {
                device,
                running: false,
                enabled: vec![false; queues],
            }),
            exit: AtomicBool::new(false),
        }
    }

    /// Takes the hand-off lock. A panic in a device call poisons it; the
    /// state flags stay meaningful, so the poison is ignored.
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Activates the device and lets the worker call it.
    fn activate(
        &self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        let enabled: Vec<bool> = queues.iter().map(Queue::ready).collect();
        let mut state = self.lock();
        state.device.activate(mem, interrupt, queues, features)?;
        state.running = true;
        state.enabled = enabled;
        Ok(())
    }

    /// The reset hand-off: when this returns, the worker is not inside
    /// the device and will not call it before the next activation.
    fn reset(&self) {
        let mut state = self.lock();
        state.running = false;
        state.enabled.iter_mut().for_each(|e| *e = false);
        state.device.reset();
    }

    /// The queue reset hand-off: as [`Self::reset`], for queue `index`
    /// until it is enabled again.
    fn queue_reset(&self, index: u16) {
        let mut state = self.lock();
        if let Some(e) = state.enabled.get_mut(usize::from(index)) {
            *e = false;
        }
        state.device.queue_reset(index);
    }

    fn queue_enable(&self, index: u16, queue: Queue) {
        let mut state = self.lock();
        let ready = queue.ready();
        if let Some(e) = state.enabled.get_mut(usize::from(index)) {
            *e = ready;
        }
        state.device.queue_enable(index, queue);
    }

    /// The worker's side, after a wake-up: `None` when it must return;
    /// otherwise the device is called for each `notified` queue (cleared)
    /// that is enabled and for each backend `token` (drained) while it
    /// runs, and the backend fds it lists now are returned.
    fn serve(&self, notified: &mut [bool], tokens: &mut Vec<u64>) -> Option<Vec<BackendFd>> {
        if self.exit.load(Ordering::SeqCst) {
            return None;
        }
        let mut state = self.lock();
        if !state.running {
            notified.iter_mut().for_each(|f| *f = false);
            tokens.clear();
            return Some(Vec::new());
        }
        for (index, flag) in notified.iter_mut().enumerate() {
            let wanted = std::mem::take(flag);
            if wanted && state.enabled.get(index).copied().unwrap_or(false) {
                // index < queue count <= 65536.
                state.device.queue_notify(index as u16, None);
            }
        }
        for token in tokens.drain(..) {
            state.device.backend_event(token);
        }
        Some(state.device.backend_fds())
    }
}

/// A [`VirtioDevice`] that runs the device it wraps on its own worker
/// thread (see the [module docs](self) for the model and the reset
/// hand-off).
///
/// Put it behind an [`crate::MmioTransport`] like any device. Dropping it
/// stops and joins the worker.
pub struct WorkerDevice<M: GuestMemory + Send + 'static> {
    shared: Arc<Shared<M>>,
    /// One per queue, signalled by `queue_notify` (or by KVM).
    queue_evts: Arc<Vec<EventFd>>,
    /// Wakes the worker to re-read the backend fds or to exit.
    control: EventFd,
    thread: Option<JoinHandle<()>>,
    device_type: u32,
    queue_max_sizes: Vec<u16>,
    shm_regions: Vec<SharedMemoryRegion>,
}

impl<M: GuestMemory + Send + 'static> WorkerDevice<M> {
    /// Wraps `device` and starts its worker thread (named
    /// `vmmio-dev<device type>`), which sleeps until the device is
    /// activated and notified.
    ///
    /// # Errors
    /// Creating an eventfd or the epoll instance, or spawning the thread,
    /// failed.
    pub fn new(device: Box<dyn VirtioDevice<M> + Send>) -> io::Result<Self> {
        let device_type = device.device_type();
        let queue_max_sizes = device.queue_max_sizes().to_vec();
        let shm_regions = device.shm_regions().to_vec();
        let queue_evts = queue_max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let queue_evts = Arc::new(queue_evts);
        let control = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            control.as_raw_fd(),
            EpollEvent::new(EventSet::IN, CONTROL),
        )?;
        for (i, evt) in queue_evts.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let shared = Arc::new(Shared::new(device, queue_max_sizes.len()));
        let worker = Worker {
            shared: shared.clone(),
            queue_evts: queue_evts.clone(),
            control: control.try_clone()?,
            epoll,
            registered: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("vmmio-dev{device_type}"))
            .spawn(move || worker.run())?;
        Ok(Self {
            shared,
            queue_evts,
            control,
            thread: Some(thread),
            device_type,
            queue_max_sizes,
            shm_regions,
        })
    }

    /// The eventfd of queue `index` (`None` past the last queue): what a
    /// `QueueNotify` store of that index signals. A KVM VMM registers it
    /// as an ioeventfd for the window's `QueueNotify` address with
    /// datamatch `index`.
    pub fn queue_eventfd(&self, index: u16) -> Option<&EventFd> {
        self.queue_evts.get(usize::from(index))
    }

    /// Wakes the worker to re-read the device's backend fds.
    fn kick(&self) {
        if let Err(e) = self.control.write(1) {
            warn!(
                "virtio device {}: cannot wake its worker: {e}",
                self.device_type
            );
        }
    }

    /// Runs `f` on the wrapped device under the hand-off lock (e.g. to
    /// look at a device's counters). The worker waits meanwhile.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut (dyn VirtioDevice<M> + Send)) -> R) -> R {
        f(self.shared.lock().device.as_mut())
    }
}

impl<M: GuestMemory + Send + 'static> Drop for WorkerDevice<M> {
    fn drop(&mut self) {
        self.shared.exit.store(true, Ordering::SeqCst);
        self.kick();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("virtio device {}: worker panicked", self.device_type);
            }
        }
    }
}

// Every provided method of `VirtioDevice` is forwarded (or deliberately
// answered here): a new one added to the trait must be added here too, or
// worker-mode devices silently get its default.
impl<M: GuestMemory + Send + 'static> VirtioDevice<M> for WorkerDevice<M> {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    /// The wrapped device's features without VIRTIO_F_NOTIFICATION_DATA
    /// (an eventfd cannot carry the value).
    fn device_features(&self) -> u64 {
        self.shared.lock().device.device_features() & !bit(VIRTIO_F_NOTIFICATION_DATA)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.shared.lock().device.read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.shared.lock().device.write_config(offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.shared.lock().device.config_generation()
    }

    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        self.shared.activate(mem, interrupt, queues, features)?;
        // The worker picks up the device's backend fds.
        self.kick();
        Ok(())
    }

    /// Signals queue `index`'s eventfd; the worker calls the device.
    fn queue_notify(&mut self, index: u16, _data: Option<NotificationData>) {
        if let Some(evt) = self.queue_evts.get(usize::from(index)) {
            if let Err(e) = evt.write(1) {
                warn!(
                    "virtio device {}: queue {index} notification lost: {e}",
                    self.device_type
                );
            }
        }
    }

    /// Stops the worker's use of the device, then resets it; see the
    /// [module docs](self).
    fn reset(&mut self) {
        self.shared.reset();
        // The worker drops the backend fds.
        self.kick();
    }

    fn queue_reset(&mut self, index: u16) {
        self.shared.queue_reset(index);
    }

    fn queue_enable(&mut self, index: u16, queue: Queue) {
        self.shared.queue_enable(index, queue);
    }

    /// None: the worker waits on the wrapped device's fds itself.
    fn backend_fds(&self) -> Vec<BackendFd> {
        Vec::new()
    }

    fn backend_event(&mut self, token: u64) {
        let mut state = self.shared.lock();
        if state.running {
            state.device.backend_event(token);
        }
    }

    fn shm_regions(&self) -> &[SharedMemoryRegion] {
        &self.shm_regions
    }

    fn vendor_id(&self) -> u32 {
        self.shared.lock().device.vendor_id()
    }
}

impl<M: GuestMemory + Send + 'static> std::fmt::Debug for WorkerDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDevice")
            .field("device_type", &self.device_type)
            .field("queues", &self.queue_max_sizes.len())
            .finish_non_exhaustive()
    }
}

/// The worker thread's side.
struct Worker<M: GuestMemory> {
    shared: Arc<Shared<M>>,
    queue_evts: Arc<Vec<EventFd>>,
    control: EventFd,
    epoll: Epoll,
    /// Backend fds in the epoll set: fd -> (token, events).
    registered: HashMap<RawFd, (u64, EventSet)>,
}

impl<M: GuestMemory> Worker<M> {
    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); EVENTS];
        let mut notified = vec![false; self.queue_evts.len()];
        let mut tokens = Vec::new();
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("device worker: epoll_wait failed, worker stops: {e}");
                    return;
                }
            };
            for ev in events.iter().take(n) {
                let data = ev.data();
                if data == CONTROL {
                    // Only clears the counter; EAGAIN means already clear.
                    let _ = self.control.read();
                } else if data & BACKEND != 0 {
                    let fd = (data & 0xffff_ffff) as RawFd;
                    if let Some(&(token, _)) = self.registered.get(&fd) {
                        tokens.push(token);
                    }
                } else if let Some(evt) = usize::try_from(data)
                    .ok()
                    .and_then(|i| self.queue_evts.get(i))
                {
                    let _ = evt.read();
                    if let Some(flag) = notified.get_mut(data as usize) {
                        *flag = true;
                    }
                }
            }
            let Some(fds) = self.shared.serve(&mut notified, &mut tokens) else {
                return;
            };
            self.sync_backend_fds(&fds);
        }
    }

    /// Makes the epoll set's backend fds what the device lists now. An fd
    /// whose token or interest changed is re-added; one the device closed
    /// is gone from the set already (the kernel drops closed fds), so a
    /// failing delete is fine.
    fn sync_backend_fds(&mut self, fds: &[BackendFd]) {
        let wanted: HashMap<RawFd, (u64, EventSet)> = fds
            .iter()
            .filter(|b| b.fd >= 0)
            .map(|b| {
                let mut set = EventSet::empty();
                if b.readable {
                    set |= EventSet::IN;
                }
                if b.writable {
                    set |= EventSet::OUT;
                }
                (b.fd, (b.token, set))
            })
            .collect();
        if wanted == self.registered {
            return;
        }
        let stale: Vec<RawFd> = self
            .registered
            .iter()
            .filter(|(fd, v)| wanted.get(fd) != Some(v))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            self.registered.remove(&fd);
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        for (&fd, &(token, set)) in &wanted {
            if self.registered.contains_key(&fd) {
                continue;
            }
            // fd >= 0 (filtered above): it fits the low 32 bits.
            let event = EpollEvent::new(set, BACKEND | u64::from(fd as u32));
            match self.epoll.ctl(ControlOperation::Add, fd, event) {
                Ok(()) => {
                    self.registered.insert(fd, (token, set));
                }
                Err(e) => debug!("device worker: cannot wait on backend fd {fd}: {e}"),
            }
        }
    }
}
