//! The device side of virtio over MMIO (virtio v1.4 section 4.2).
//!
//! A VMM or emulator embeds this crate to expose virtio devices as a
//! memory-mapped register window:
//!
//! - [`MmioTransport`]: the register file of one window (Version 2 and legacy
//!   Version 1), its status state machine and feature negotiation. The
//!   platform forwards guest loads and stores at `offset` within the window
//!   to [`MmioTransport::read`] / [`MmioTransport::write`].
//! - [`Queue`]: the device-role split virtqueue over [`vm_memory::GuestMemory`].
//! - [`VirtioDevice`]: what a device backend implements (device type, queues,
//!   features, config space, activation, notifications).
//! - [`LiveConfig`]: a configuration space the host changes while the
//!   driver runs (ConfigGeneration and the config-change interrupt).
//! - [`Interrupt`]: what the platform implements to deliver the window's
//!   interrupt line (edge or level).
//!
//! The transport knows nothing about the platform: it sees offsets, byte
//! slices, a guest-memory handle and an interrupt line.

#![deny(missing_docs)]

pub mod config;
pub mod device;
pub mod interrupt;
pub mod log_limit;
pub mod queue;
pub mod recording;
pub mod transport;
pub mod worker;

/// This crate's README examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use config::LiveConfig;
pub use device::{ActivateError, BackendFd, SharedMemoryRegion, VirtioDevice};
pub use interrupt::{Interrupt, InterruptCause, InterruptStatus};
pub use log_limit::LogLimiter;
pub use queue::{DescriptorChain, Queue, QueueError};
pub use transport::{MmioTransport, TransportVersion};
pub use worker::{ExecMode, WorkerDevice};
