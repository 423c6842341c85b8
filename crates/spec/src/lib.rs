//! Facts of the virtio v1.4 MMIO transport, shared by the device side
//! (`vmmio-device`) and the driver side (`vmmio-driver`).
//!
//! Everything here is a constant, a layout or a plain lookup: no logic, no
//! state. The authority is the virtio v1.4 cs01 specification:
//!
//! - [`mmio`]: the register window of section 4.2.2 (Version 2) and 4.2.4
//!   (legacy Version 1), with direction and the pre-1.4 names;
//! - [`status`]: the device status bits of section 2.1;
//! - [`features`]: the reserved (transport) feature bits of chapter 6;
//! - [`device_id`]: the device IDs of chapter 5;
//! - [`blk`]: block request layout, types, status values and feature bits
//!   (§5.2); [`console`]: console feature bits and port-0 queues (§5.3);
//!   [`net`]: network feature bits, configuration and `virtio_net_hdr`
//!   (§5.1);
//!   [`vsock`]: socket device header, ops, flags, config and events
//!   (§5.10);
//! - [`split`] and [`packed`]: ring layouts of sections 2.7 and 2.8 as
//!   `#[repr(C)]` little-endian types;
//! - [`notification`]: the notification-data layout of section 2.9;
//! - [`le`]: the little-endian integer wrappers those layouts use.
#![no_std]
#![deny(missing_docs)]

pub mod blk;
pub mod console;
pub mod device_id;
pub mod features;
pub mod le;
pub mod mmio;
pub mod net;
pub mod notification;
pub mod packed;
pub mod split;
pub mod status;
pub mod vsock;

/// This crate's README examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use le::{Le16, Le32, Le64};
