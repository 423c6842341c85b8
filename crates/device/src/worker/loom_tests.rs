//! loom model checks of the worker hand-off (`Shared`: the lock, the
//! `running`/`enabled` flags, `exit`), built only with `--cfg loom`
//! (`./scripts/loom.sh`). loom runs each test body under every
//! interleaving of its threads' synchronisation operations.
//!
//! The real code under test is `Shared`'s methods, on loom's `Mutex` and
//! `AtomicBool` (the imports at the top of worker.rs). What loom cannot
//! see, the eventfds and epoll, is replaced by [`Wake`], a model of what
//! the worker relies on from them: a signal written before the worker
//! waits is not lost (an eventfd is a counter, epoll is level-triggered).
//! The worker thread of each test runs the loop of `Worker::run` with
//! that wait in place of `epoll_wait`.

use std::sync::atomic::Ordering::SeqCst;

use loom::sync::atomic::AtomicBool;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::interrupt::{Interrupt, InterruptCause};

type Mem = GuestMemoryMmap<()>;

const QUEUES: usize = 2;

/// What the probe device saw; `violation` is set by a call the hand-off
/// promises never happens.
#[derive(Default)]
struct Log {
    /// Activated and not reset since.
    active: AtomicBool,
    /// Per queue: reset (queue reset) and not enabled again since.
    queue_reset: [AtomicBool; QUEUES],
    notified: Mutex<u32>,
    notified_cv: Condvar,
    violation: AtomicBool,
}

struct Probe(Arc<Log>);

impl VirtioDevice<Mem> for Probe {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8; QUEUES]
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _mem: Mem,
        _interrupt: InterruptStatus,
        _queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        self.0.active.store(true, SeqCst);
        Ok(())
    }
    fn queue_notify(&mut self, index: u16, _data: Option<NotificationData>) {
        // "Touching guest memory": never after a reset of the device or
        // of this queue has begun (the transport reports it done when the
        // reset returns).
        let queue_reset = &self.0.queue_reset[usize::from(index)];
        if !self.0.active.load(SeqCst) || queue_reset.load(SeqCst) {
            self.0.violation.store(true, SeqCst);
        }
        *self.0.notified.lock().unwrap() += 1;
        self.0.notified_cv.notify_all();
    }
    fn reset(&mut self) {
        self.0.active.store(false, SeqCst);
    }
    fn queue_reset(&mut self, index: u16) {
        self.0.queue_reset[usize::from(index)].store(true, SeqCst);
    }
    fn queue_enable(&mut self, index: u16, _queue: Queue) {
        self.0.queue_reset[usize::from(index)].store(false, SeqCst);
    }
    fn backend_fds(&self) -> Vec<BackendFd> {
        Vec::new()
    }
    fn backend_event(&mut self, _token: u64) {}
}

struct NoLine;

impl Interrupt for NoLine {
    fn trigger(&self, _cause: InterruptCause) {}
}

/// The eventfds and epoll as the worker sees them: per-queue signals and
/// the control signal, level-triggered.
#[derive(Default)]
struct Wake {
    /// (control, queues).
    pending: Mutex<(bool, [bool; QUEUES])>,
    cv: Condvar,
}

impl Wake {
    /// `queue_notify`: the queue's eventfd is written.
    fn queue(&self, index: usize) {
        self.pending.lock().unwrap().1[index] = true;
        self.cv.notify_one();
    }

    /// `WorkerDevice::kick`: the control eventfd is written.
    fn control(&self) {
        self.pending.lock().unwrap().0 = true;
        self.cv.notify_one();
    }

    /// `epoll_wait` and the reads that clear the counters: the queues
    /// signalled since the last wait.
    fn wait(&self) -> [bool; QUEUES] {
        let mut p = self.pending.lock().unwrap();
        while !p.0 && !p.1.contains(&true) {
            p = self.cv.wait(p).unwrap();
        }
        p.0 = false;
        std::mem::take(&mut p.1)
    }
}

/// An activated device, both queues ready, and its worker thread.
fn start() -> (
    Arc<Shared<Mem>>,
    Arc<Log>,
    Arc<Wake>,
    thread::JoinHandle<()>,
) {
    let log = Arc::new(Log::default());
    let shared = Arc::new(Shared::new(Box::new(Probe(log.clone())), QUEUES));
    let mem = Mem::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
    let queues = (0..QUEUES)
        .map(|_| {
            let mut q = Queue::new(8);
            q.set_ready(true);
            q
        })
        .collect();
    let interrupt = InterruptStatus::new(std::sync::Arc::new(NoLine));
    shared.activate(mem, interrupt, queues, 0).unwrap();
    let wake = Arc::new(Wake::default());
    let worker = {
        let (shared, wake) = (shared.clone(), wake.clone());
        thread::spawn(move || {
            let mut tokens = Vec::new();
            loop {
                let mut notified = wake.wait();
                if shared.serve(&mut notified, &mut tokens).is_none() {
                    return;
                }
            }
        })
    };
    (shared, log, wake, worker)
}

/// `WorkerDevice::drop`: exit, kick, join (a worker that never sees
/// `exit` leaves both threads blocked: loom reports the deadlock).
fn stop(shared: &Shared<Mem>, wake: &Wake, worker: thread::JoinHandle<()>) {
    shared.exit.store(true, SeqCst);
    wake.control();
    worker.join().unwrap();
}

/// A notification racing a reset: whichever wins, the device is never
/// called once its reset has begun, and a notification signalled after
/// the reset is dropped. Breaking the hand-off (e.g. `serve` checking
/// `running` and calling the device under two separate lock
/// acquisitions, or `reset` resetting the device before it clears
/// `running` in another critical section) makes loom find the
/// interleaving that calls a reset device.
#[test]
fn no_device_call_once_a_reset_began() {
    loom::model(|| {
        let (shared, log, wake, worker) = start();
        wake.queue(0);
        shared.reset();
        wake.queue(1);
        stop(&shared, &wake, worker);
        assert!(
            !log.violation.load(SeqCst),
            "the device ran after its reset"
        );
    });
}

/// The same for a queue reset: queue 0 is not called once its reset began
/// (until it is enabled again); queue 1 is not affected.
#[test]
fn no_queue_call_once_its_reset_began() {
    loom::model(|| {
        let (shared, log, wake, worker) = start();
        wake.queue(0);
        shared.queue_reset(0);
        wake.queue(0);
        wake.queue(1);
        stop(&shared, &wake, worker);
        assert!(!log.violation.load(SeqCst), "the queue ran after its reset");
    });
}

/// A notification of a running device is never lost: the test waits for
/// the device call (if the worker could miss it, loom would report the
/// deadlock), then the worker stops on `exit`.
#[test]
fn a_notification_reaches_the_device() {
    loom::model(|| {
        let (shared, log, wake, worker) = start();
        wake.queue(1);
        let mut n = log.notified.lock().unwrap();
        while *n == 0 {
            n = log.notified_cv.wait(n).unwrap();
        }
        drop(n);
        stop(&shared, &wake, worker);
        assert!(!log.violation.load(SeqCst));
    });
}
