//! Virtio device backends for vmmio (virtio v1.4 chapter 5 "Device Types").
//!
//! Each device implements [`vmmio_device::VirtioDevice`] for any guest
//! memory type and sits behind an `MmioTransport`:
//!
//! - [`block::Block`]: a disk over a file, raw image or other
//!   [`block::Backend`] (§5.2);
//! - [`rng::Rng`]: an entropy source fed by the host OS RNG (§5.4);
//! - [`console::Console`]: one console port over stdio, a Unix socket or an
//!   in-memory capture (§5.3);
//! - [`net::Net`]: a network device over a Unix stream socket (QEMU's
//!   `-netdev stream` framing) or a TAP device (§5.1);
//! - [`vsock::Vsock`]: stream sockets between guest ports and host programs
//!   on Unix sockets, Firecracker's hybrid convention (§5.10).
//!
//! Everything the driver controls is hostile input: a malformed request is
//! answered as the spec says (an error status, or a used length of 0 when no
//! status can be written), logged a bounded number of times, and never
//! stops the device or panics.

#![deny(missing_docs)]

pub mod block;
mod chain;
pub mod console;
pub mod net;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod vsock;

/// The repository README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct RepositoryReadmeDoctests;

/// This crate's README examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use block::{
    Backend, Block, BlockConfigHandle, BlockError, BlockOptions, FileBackend, IoEngine,
    MemoryBackend,
};
pub use console::{Console, ConsoleConfigHandle};
pub use net::{Net, NetHandle};
pub use rng::Rng;
pub use vsock::Vsock;
