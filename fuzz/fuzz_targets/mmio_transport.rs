//! Fuzz target: the register file (`MmioTransport`, both versions) with a
//! real device behind it (Block, Rng, Console or Net), against a hostile
//! driver.
//!
//! The input is a script (see `crates/devices/tests/support/mmio_script.rs`
//! for its layout): a device choice, guest memory contents and register
//! accesses, with the handshake, queue setup, DRIVER_OK and notifies as
//! single operations so that the devices walk hostile rings. It must never
//! panic and always end.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/devices/tests/support/mmio_script.rs"]
mod mmio_script;

fuzz_target!(|data: &[u8]| {
    mmio_script::run(data);
});
