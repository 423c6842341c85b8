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
use std::sync::Arc;

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
#[derive(Clone)]
pub struct InterruptStatus {
    bits: Arc<AtomicU32>,
    needs_reset: Arc<AtomicBool>,
    line: Arc<dyn Interrupt>,
}

impl InterruptStatus {
    /// A status of 0 in front of the platform line `line`.
    pub fn new(line: Arc<dyn Interrupt>) -> Self {
        Self { bits: Arc::new(AtomicU32::new(0)), needs_reset: Arc::new(AtomicBool::new(false)), line }
    }

    /// Sets the bit of `cause` and signals the line.
    pub fn raise(&self, cause: InterruptCause) {
        let new = self.bits.fetch_or(cause.status_bit(), Ordering::SeqCst) | cause.status_bit();
        self.line.trigger(cause);
        self.line.status_changed(new);
    }

    /// Clears exactly the bits of `mask` that are defined (bits 0 and 1);
    /// the line follows.
    pub fn ack(&self, mask: u32) {
        let mask = mask & (INT_VRING | INT_CONFIG);
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
        f.debug_struct("InterruptStatus").field("bits", &self.get()).finish()
    }
}
