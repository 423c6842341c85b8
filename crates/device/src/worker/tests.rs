//! The worker model's promises, each with a device that records what it
//! saw: notifications run on the worker, reset and queue reset are
//! hand-offs (no device call after they return), backend fds wake the
//! worker, config accesses work while the worker is busy.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::interrupt::{Interrupt, InterruptCause};

type Mem = GuestMemoryMmap<()>;

/// What the probe device saw. `violations` counts calls the worker model
/// promises never happen.
#[derive(Default)]
struct Log {
    active: AtomicBool,
    queue_enabled: [AtomicBool; 2],
    in_notify: AtomicBool,
    /// `queue_notify` calls begun.
    started: AtomicU32,
    notifies: AtomicU32,
    events: AtomicU32,
    violations: AtomicU32,
    /// Set by the test right after `reset` / `queue_reset` returned.
    reset_returned: AtomicBool,
    notify_thread: Mutex<Option<ThreadId>>,
    /// Listed as a backend fd while set.
    backend: Mutex<Option<UnixStream>>,
    config: AtomicU32,
}

impl Log {
    fn violation(&self) {
        self.violations.fetch_add(1, Ordering::SeqCst);
    }
}

/// Two queues; `queue_notify` works for `busy` (checking all the while
/// that no reset has returned underneath it).
struct Probe {
    log: Arc<Log>,
    busy: Duration,
    interrupt: Option<InterruptStatus>,
}

impl VirtioDevice<Mem> for Probe {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8, 8]
    }
    fn device_features(&self) -> u64 {
        bit(VIRTIO_F_NOTIFICATION_DATA) | 1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        let v = self.log.config.load(Ordering::SeqCst).to_le_bytes();
        for (d, s) in data.iter_mut().zip(v) {
            *d = s;
        }
    }
    fn config_generation(&self) -> u32 {
        self.log.config.load(Ordering::SeqCst) ^ 0x55
    }
    fn write_config(&mut self, _offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        for (d, s) in v.iter_mut().zip(data) {
            *d = *s;
        }
        self.log
            .config
            .store(u32::from_le_bytes(v), Ordering::SeqCst);
    }
    fn activate(
        &mut self,
        _mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        for (flag, q) in self.log.queue_enabled.iter().zip(&queues) {
            flag.store(q.ready(), Ordering::SeqCst);
        }
        self.interrupt = Some(interrupt);
        self.log.active.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn queue_notify(&mut self, index: u16, data: Option<NotificationData>) {
        let log = &self.log;
        let enabled = log
            .queue_enabled
            .get(usize::from(index))
            .is_some_and(|q| q.load(Ordering::SeqCst));
        if !log.active.load(Ordering::SeqCst) || !enabled || data.is_some() {
            log.violation();
        }
        *log.notify_thread.lock().unwrap() = Some(std::thread::current().id());
        log.in_notify.store(true, Ordering::SeqCst);
        log.started.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < self.busy {
            // "Touching guest memory": must never overlap a returned reset.
            if log.reset_returned.load(Ordering::SeqCst) {
                log.violation();
                break;
            }
            std::hint::spin_loop();
        }
        log.notifies.fetch_add(1, Ordering::SeqCst);
        log.in_notify.store(false, Ordering::SeqCst);
        if let Some(i) = &self.interrupt {
            i.raise(InterruptCause::UsedBuffer);
        }
    }
    fn reset(&mut self) {
        self.log.active.store(false, Ordering::SeqCst);
        for q in &self.log.queue_enabled {
            q.store(false, Ordering::SeqCst);
        }
        self.interrupt = None;
    }
    fn queue_reset(&mut self, index: u16) {
        if let Some(q) = self.log.queue_enabled.get(usize::from(index)) {
            q.store(false, Ordering::SeqCst);
        }
    }
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        if let Some(q) = self.log.queue_enabled.get(usize::from(index)) {
            q.store(queue.ready(), Ordering::SeqCst);
        }
    }
    fn backend_fds(&self) -> Vec<BackendFd> {
        if !self.log.active.load(Ordering::SeqCst) {
            self.log.violation();
        }
        self.log
            .backend
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| BackendFd {
                fd: s.as_raw_fd(),
                token: 7,
                readable: true,
                writable: false,
            })
            .into_iter()
            .collect()
    }
    fn backend_event(&mut self, token: u64) {
        if !self.log.active.load(Ordering::SeqCst) || token != 7 {
            self.log.violation();
        }
        if let Some(s) = self.log.backend.lock().unwrap().as_mut() {
            use std::io::Read;
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        self.log.events.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Line {
    raised: AtomicU32,
}

impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {
        self.raised.fetch_add(1, Ordering::SeqCst);
    }
}

fn mem() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap()
}

fn ready_queues() -> Vec<Queue> {
    (0..2)
        .map(|_| {
            let mut q = Queue::new(8);
            q.set_ready(true);
            q
        })
        .collect()
}

fn probe(busy: Duration) -> (WorkerDevice<Mem>, Arc<Log>, Arc<Line>, InterruptStatus) {
    let log = Arc::new(Log::default());
    let dev = WorkerDevice::new(Box::new(Probe {
        log: log.clone(),
        busy,
        interrupt: None,
    }))
    .unwrap();
    let line = Arc::new(Line::default());
    let status = InterruptStatus::new(line.clone());
    (dev, log, line, status)
}

/// Waits (bounded: 20 s, a loaded CI machine is slow) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn notify_runs_the_device_on_the_worker_thread_and_interrupts() {
    let (mut dev, log, line, status) = probe(Duration::ZERO);
    assert_eq!(
        dev.device_features() & bit(VIRTIO_F_NOTIFICATION_DATA),
        0,
        "an eventfd cannot carry notification data"
    );
    assert_eq!(dev.device_features() & 1, 1);
    dev.activate(mem(), status.clone(), ready_queues(), 0)
        .unwrap();
    dev.queue_notify(1, None);
    wait_until("the notification", || {
        log.notifies.load(Ordering::SeqCst) == 1
    });
    wait_until("the interrupt", || line.raised.load(Ordering::SeqCst) == 1);
    let worker = log.notify_thread.lock().unwrap().unwrap();
    assert_ne!(worker, std::thread::current().id());
    assert_eq!(status.get() & 1, 1);
    // An absent queue is ignored.
    dev.queue_notify(9, None);
    dev.queue_notify(0, None);
    wait_until("the second notification", || {
        log.notifies.load(Ordering::SeqCst) == 2
    });
    assert_eq!(log.violations.load(Ordering::SeqCst), 0);
}

/// The reset hand-off: a reset that arrives while the worker is inside
/// `queue_notify` returns only after that call ended, and the worker never
/// calls the device again before the next activation. (Breaking the
/// hand-off, e.g. checking `running` and calling the device under two
/// separate lock acquisitions, makes this fail.)
#[test]
fn reset_waits_for_the_worker_and_nothing_runs_after_it() {
    let (mut dev, log, _line, status) = probe(Duration::from_millis(2));
    for round in 0..50 {
        log.reset_returned.store(false, Ordering::SeqCst);
        dev.activate(mem(), status.clone(), ready_queues(), 0)
            .unwrap();
        let before = log.started.load(Ordering::SeqCst);
        dev.queue_notify(0, None);
        if round % 2 == 0 {
            // Reset while the device works (or just after: both must hold).
            wait_until("the worker to enter the device", || {
                log.started.load(Ordering::SeqCst) > before
            });
        }
        // A notification queued behind the reset must never be delivered.
        dev.queue_notify(1, None);
        dev.reset();
        log.reset_returned.store(true, Ordering::SeqCst);
        assert!(!log.in_notify.load(Ordering::SeqCst), "round {round}");
        // Give the worker the chance to misbehave.
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(log.violations.load(Ordering::SeqCst), 0, "round {round}");
    }
}

#[test]
fn queue_reset_waits_and_the_queue_stays_silent_until_reenabled() {
    let (mut dev, log, _line, status) = probe(Duration::from_millis(2));
    dev.activate(mem(), status, ready_queues(), 0).unwrap();
    for round in 0..20 {
        log.reset_returned.store(false, Ordering::SeqCst);
        let before = log.started.load(Ordering::SeqCst);
        dev.queue_notify(0, None);
        wait_until("the worker to enter the device", || {
            log.started.load(Ordering::SeqCst) > before
        });
        dev.queue_notify(0, None);
        dev.queue_reset(0);
        log.reset_returned.store(true, Ordering::SeqCst);
        assert!(!log.in_notify.load(Ordering::SeqCst), "round {round}");
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(log.violations.load(Ordering::SeqCst), 0, "round {round}");
        let mut q = Queue::new(8);
        q.set_ready(true);
        log.reset_returned.store(false, Ordering::SeqCst);
        dev.queue_enable(0, q);
        let before = log.notifies.load(Ordering::SeqCst);
        dev.queue_notify(0, None);
        wait_until("a notification after re-enable", || {
            log.notifies.load(Ordering::SeqCst) > before
        });
    }
    assert_eq!(log.violations.load(Ordering::SeqCst), 0);
}

#[test]
fn backend_fds_wake_the_worker_while_the_device_runs() {
    use std::io::Write;
    let (mut dev, log, _line, status) = probe(Duration::ZERO);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    *log.backend.lock().unwrap() = Some(ours);
    assert!(
        dev.backend_fds().is_empty(),
        "the worker polls them, not the embedder"
    );
    dev.activate(mem(), status.clone(), ready_queues(), 0)
        .unwrap();
    peer.write_all(b"x").unwrap();
    wait_until("a backend event", || log.events.load(Ordering::SeqCst) >= 1);
    // After a reset the fd is no longer the worker's business.
    dev.reset();
    let events = log.events.load(Ordering::SeqCst);
    peer.write_all(b"y").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(log.events.load(Ordering::SeqCst), events);
    // Re-activated: waited on again (the pending byte wakes it).
    dev.activate(mem(), status, ready_queues(), 0).unwrap();
    wait_until("a backend event after re-activation", || {
        log.events.load(Ordering::SeqCst) > events
    });
    assert_eq!(log.violations.load(Ordering::SeqCst), 0);
}

#[test]
fn config_accesses_are_served_while_the_worker_is_busy() {
    let (mut dev, log, _line, status) = probe(Duration::from_millis(20));
    dev.activate(mem(), status, ready_queues(), 0).unwrap();
    dev.queue_notify(0, None);
    wait_until("the worker to enter the device", || {
        log.started.load(Ordering::SeqCst) > 0
    });
    dev.write_config(0, &0x1234_5678u32.to_le_bytes());
    let mut b = [0u8; 4];
    dev.read_config(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    // Every provided method is forwarded, not left at its default.
    assert_eq!(dev.config_generation(), 0x1234_5678 ^ 0x55);
    assert_eq!(log.violations.load(Ordering::SeqCst), 0);
}

#[test]
fn drop_stops_the_worker() {
    let (mut dev, log, _line, status) = probe(Duration::from_millis(5));
    dev.activate(mem(), status, ready_queues(), 0).unwrap();
    dev.queue_notify(0, None);
    drop(dev);
    // The device (owned by the worker's shared state) is gone with it.
    assert_eq!(Arc::strong_count(&log), 1);
}

#[test]
fn exec_mode_parses_and_prints() {
    for mode in [ExecMode::Sync, ExecMode::Worker] {
        assert_eq!(mode.to_string().parse::<ExecMode>(), Ok(mode));
    }
    assert!("threads".parse::<ExecMode>().is_err());
}
