//! Benchmarks of vmmio with its peers measured side by side, in the same
//! process and the same run.
//!
//! - [`queue`]: the device-role split queue (`vmmio-device`) against
//!   rust-vmm's `virtio-queue`, on the same `GuestMemoryMmap` layout and
//!   ring contents.
//! - [`block`]: the loopback block path (`vmmio-driver` -> `MmioTransport`
//!   -> `vmmio-devices` block -> a file in the page cache) against
//!   `pread` / `pwrite` of the same offsets of the same file.
//! - [`net`]: the loopback network path (two drivers, two net devices, a
//!   Unix socket pair between their `-netdev stream` backends) against the
//!   same length-prefixed frames over a plain Unix socket pair.
//! - [`vsock`]: one loopback vsock connection (driver -> device -> a host
//!   Unix stream) against a Unix socket pair: throughput and connection
//!   setup rate.
//! - [`fio`]: a fio-style table (4 KiB random and 1 MiB sequential reads
//!   and writes at several queue depths) of our block device's sync and
//!   io_uring engines beside `pread` and raw io_uring on the same file.
//! - [`report`]: every workload once with a plain timing loop, as a table
//!   ([`report::run`], [`report::print_table`]): what `vmmio bench` shows.
//!
//! The criterion benches (`cargo bench -p vmmio-bench`) drive the same
//! workloads; `cargo run --release -p vmmio-bench --example table` prints
//! the table.

#![deny(missing_docs)]

pub mod block;
pub mod fio;
pub mod net;
pub mod packed;
pub mod queue;
pub mod report;
pub mod vsock;

pub use report::{print_table, run, Row};
