//! Runs vmmio's driver against QEMU's own virtio-mmio devices, through
//! QEMU's qtest protocol.
//!
//! QEMU's devices are the reference implementation: our driver must work
//! with them in both register layouts (legacy Version 1 and Version 2).
//! Each test starts its own `qemu-system-x86_64 -M microvm` with the vCPU
//! stopped; the test process plays the guest:
//!
//! - [`client`]: [`QtestClient`], the qtest line protocol (guest-physical
//!   loads and stores) with a timeout on every answer;
//! - [`memory`]: [`GuestRam`], guest RAM shared with QEMU through a file,
//!   mapped into the test process, with a page allocator;
//! - [`qemu`]: [`QemuBuilder`] and [`Qemu`], the harness that starts QEMU
//!   with a chosen mode and device list and always kills it;
//! - [`glue`]: our driver's platform traits over the two:
//!   [`QtestWindow`] (`RegisterIo`) and [`QtestHal`] (`Hal`);
//! - [`qmp`]: [`Qmp`], QEMU's machine protocol on a second socket, to make
//!   QEMU change a device while the driver runs (`block_resize`).
//!
//! The tests live in `tests/`; they need `qemu-system-x86_64` on `PATH` and
//! fail (never skip) without it; `tests/vsock.rs` also needs rust-vmm's
//! `vhost-device-vsock` (`scripts/install-cargo-tools.sh`).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod glue;
pub mod memory;
pub mod qemu;
pub mod qmp;

pub use client::{QtestClient, QtestError};
pub use glue::{qtest_limits, QtestHal, QtestWindow};
pub use memory::GuestRam;
pub use qemu::{Device, Mode, Qemu, QemuBuilder, RingFeatures};
pub use qmp::{Qmp, QmpError};
