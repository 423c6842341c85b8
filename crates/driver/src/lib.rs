//! The driver side of virtio over MMIO (virtio v1.4 §4.2), for guest
//! kernels, firmware and test harnesses: `no_std` + `alloc`.
//!
//! - [`RegisterIo`]: how the driver reaches a register window;
//!   [`MmioWindow`] is the volatile implementation for real MMIO.
//! - [`Hal`]: the platform's DMA services (allocate queue memory, share
//!   buffers); [`IdentityHal`] for identity-mapped platforms and tests.
//! - [`Transport`]: probe (`MagicValue`, `Version`, `DeviceID`), the
//!   initialisation handshake of §3.1.1, queue setup and teardown, queue
//!   reset, notifications, interrupts, config space, shared memory.
//! - [`VirtQueue`]: the driver-role split virtqueue (§2.7) with indirect
//!   descriptors and EVENT_IDX.
//! - Class drivers: [`blk::Block`], [`rng::Entropy`],
//!   [`console::Console`], [`net::Net`], [`vsock::Vsock`].
//! - [`discovery`]: `virtio_mmio.device=` command-line parameters and
//!   device-tree nodes.
//!
//! # Threat model
//!
//! The device is not trusted. Every register value and every used-ring
//! entry is checked before use; a value that breaks the spec ends in an
//! [`Error`] carrying that value, never a panic, and every wait is bounded
//! by a budget the caller sets ([`Limits`]). What the driver cannot defend
//! against is a device that writes memory it was never given: that is the
//! platform's job (an IOMMU behind the [`Hal`]).
//!
//! Unsafe code lives only in [`io`] (volatile register access) and [`hal`]
//! (DMA memory), plus the `unsafe` queue entry points that hand caller
//! memory to the device.
//!
//! # Recovery after DEVICE_NEEDS_RESET
//!
//! Every class driver recovers the same way (virtio v1.4 §2.1.2: the
//! device raises a configuration change notification with the bit).
//!
//! 1. The call that sees the bit fails with [`Error::DeviceNeedsReset`]:
//!    a call that waits for the device (`wait_used` and the calls built
//!    on it), a poll that waits for something in flight, or
//!    `handle_interrupt` (for the non-blocking drivers, the place they
//!    see it; `Net` also when its transmit ring is full, `Vsock` when a
//!    `poll` moved nothing while connections are open).
//! 2. From then on every call fails with [`Error::Broken`]: the device may
//!    still hold the driver's buffers, so nothing is posted again.
//! 3. `reinit()` resets the device (waiting for `Status` to read 0),
//!    releases the old queues, negotiates again and sets up new queues.
//!    What was in flight is not replayed (after a device error a blind
//!    replay of writes is not obviously right): the failed call told the
//!    caller, who posts it again. Block and entropy requests, a console
//!    write: the caller retries. Net: frames in transmit are dropped (as
//!    on a link flap; TCP retransmits). Vsock: every connection is gone
//!    (`state` is `None`, as after TRANSPORT_RESET, §5.10.6.6); listening
//!    ports stay.
//!
//! # Cargo features
//!
//! - `std` (default): `std::io::Read` for [`rng::Entropy`] and
//!   `std::io::Write` for [`console::Console`]. Without it the crate needs
//!   only `alloc`.
//! - `smoltcp`: `smoltcp::phy::Device` for [`net::Net`], so a no_std OS
//!   gets TCP/IP from smoltcp in a few lines.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod blk;
pub mod console;
pub mod discovery;
pub mod error;
pub mod hal;
pub mod io;
pub mod net;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;

#[cfg(test)]
#[path = "../tests/common/scripted.rs"]
mod scripted;

/// This crate's README examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use error::{Error, Result};
pub use hal::{BufferDirection, Dma, Hal, IdentityHal, PAGE_SIZE};
pub use io::{MmioWindow, RegisterIo};
pub use queue::{Segment, Used, VirtQueue};
pub use transport::{
    InterruptEvents, Limits, QueueResetError, ShmRegion, Transport, Version,
    DEFAULT_TRANSPORT_FEATURES, TRANSPORT_FEATURES,
};
