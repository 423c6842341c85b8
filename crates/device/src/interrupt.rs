//! Interrupts from a device to the driver (spec 4.2.3.4 "Notifications From
//! The Device").
//!
//! An MMIO window has one interrupt line, asserted while at least one bit of
//! `InterruptStatus` is set. The platform implements [`Interrupt`]: an edge
//! line (an EventFd, a message) signals in [`Interrupt::trigger`]; a level
//! line (a PLIC source) follows [`Interrupt::status_changed`], which the
//! transport calls with every new `InterruptStatus` value, including the 0
//! after an `InterruptACK` or a reset.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmmio_spec::mmio::{INT_CONFIG, INT_VRING};

/// Why a device interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptCause {
    /// Used buffer notification (`InterruptStatus` bit 0).
    UsedBuffer,
    /// Configuration change notification (`InterruptStatus` bit 1).
    ConfigChange,
}

impl InterruptCause {
    /// The `InterruptStatus` bit of this cause.
    pub const fn status_bit(self) -> u32 {
        match self {
            InterruptCause::UsedBuffer => INT_VRING,
            InterruptCause::ConfigChange => INT_CONFIG,
        }
    }
}

/// The platform side of a window's interrupt line.
///
/// Implemented by the platform (a PLIC source, an EventFd, a recording fake
/// in tests). Calls may come from any thread that runs device I/O.
/// [`InterruptStatus`] calls both methods while holding its ordering lock:
/// they must not call back into `raise`, `ack` or `clear` of the same status.
pub trait Interrupt: Send + Sync {
    /// The device raised `cause`; its bit is already set in
    /// `InterruptStatus`. An edge-triggered line signals here.
    fn trigger(&self, cause: InterruptCause);

    /// `InterruptStatus` now reads `status` (after a trigger, an
    /// `InterruptACK` or a reset). A level-triggered line is asserted while
    /// `status != 0`. The default does nothing (edge lines).
    fn status_changed(&self, status: u32) {
        let _ = status;
    }
}

/// The `InterruptStatus` register shared by a transport and its device.
///
/// Devices receive a clone at activation and call [`InterruptStatus::raise`]
/// after adding used buffers; the transport clears bits on `InterruptACK`.
///
/// Clones may be used from different threads (a device's I/O thread raises
/// while the vCPU thread acknowledges): every change of the bits and the
/// [`Interrupt::status_changed`] call that reports it happen under one lock,
/// so the line sees the values in the order they were taken and ends at the
/// final one.
#[derive(Clone)]
pub struct InterruptStatus {
    bits: Arc<AtomicU32>,
    needs_reset: Arc<AtomicBool>,
    /// Orders bit changes and their `status_changed` calls across clones.
    line_order: Arc<Mutex<()>>,
    line: Arc<dyn Interrupt>,
}

impl InterruptStatus {
    /// A status of 0 in front of the platform line `line`.
    pub fn new(line: Arc<dyn Interrupt>) -> Self {
        Self {
            bits: Arc::new(AtomicU32::new(0)),
            needs_reset: Arc::new(AtomicBool::new(false)),
            line_order: Arc::new(Mutex::new(())),
            line,
        }
    }

    /// Holds the order lock; a panic in another holder does not matter (the
    /// lock guards no data).
    fn ordered(&self) -> MutexGuard<'_, ()> {
        self.line_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the bit of `cause` and signals the line.
    pub fn raise(&self, cause: InterruptCause) {
        let _order = self.ordered();
        let new = self.bits.fetch_or(cause.status_bit(), Ordering::SeqCst) | cause.status_bit();
        self.line.trigger(cause);
        self.line.status_changed(new);
    }

    /// Clears exactly the bits of `mask` that are defined (bits 0 and 1);
    /// the line follows.
    pub fn ack(&self, mask: u32) {
        let mask = mask & (INT_VRING | INT_CONFIG);
        let _order = self.ordered();
        let new = self.bits.fetch_and(!mask, Ordering::SeqCst) & !mask;
        self.line.status_changed(new);
    }

    /// The device hit an error it cannot leave without a reset (a driver
    /// that broke its ring, spec 2.1.2): the transport then reports
    /// DEVICE_NEEDS_RESET in `Status`, and a configuration change
    /// notification is raised. Devices call this instead of panicking or
    /// silently stopping; it clears at the next device reset.
    pub fn device_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.raise(InterruptCause::ConfigChange);
    }

    /// Whether [`InterruptStatus::device_needs_reset`] was called since the
    /// last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears every bit and the needs-reset flag (device reset); the line
    /// follows.
    pub fn clear(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
        let _order = self.ordered();
        self.bits.store(0, Ordering::SeqCst);
        self.line.status_changed(0);
    }

    /// The current value of `InterruptStatus`.
    pub fn get(&self) -> u32 {
        self.bits.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for InterruptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptStatus")
            .field("bits", &self.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A level line that records its level and yields inside `status_changed`, to widen
    /// the window in which another thread can change the status.
    #[derive(Default)]
    struct SlowLevel {
        high: AtomicBool,
    }

    impl Interrupt for SlowLevel {
        fn trigger(&self, _cause: InterruptCause) {}
        fn status_changed(&self, status: u32) {
            std::thread::yield_now();
            self.high.store(status != 0, Ordering::SeqCst);
        }
    }

    /// Regression: `raise` on a device thread and `ack` on the vCPU thread used to call
    /// `status_changed` outside any common order, so a stale value could land last and
    /// leave a level line low while `InterruptStatus` was non-zero (a lost interrupt), or
    /// high while it was 0. The line must end at the level of the final status.
    #[test]
    fn level_follows_the_final_status_under_concurrent_raise_and_ack() {
        use std::sync::Barrier;
        const ROUNDS: usize = 20_000;
        let line = Arc::new(SlowLevel::default());
        let status = InterruptStatus::new(line.clone());
        let barrier = Arc::new(Barrier::new(2));
        let (raiser, b) = (status.clone(), barrier.clone());
        let t = std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                b.wait();
                raiser.raise(InterruptCause::UsedBuffer);
                b.wait();
            }
        });
        let mut bad = 0;
        for _ in 0..ROUNDS {
            barrier.wait();
            status.ack(INT_VRING);
            barrier.wait();
            if line.high.load(Ordering::SeqCst) != (status.get() != 0) {
                bad += 1;
            }
        }
        t.join().unwrap();
        assert_eq!(
            bad, 0,
            "rounds where the line level disagreed with InterruptStatus"
        );
    }
}
