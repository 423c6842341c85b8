//! A bounded property-test version of the `mmio_transport` fuzz target
//! (`fuzz/`): arbitrary scripts of register accesses, handshakes, queue
//! setups, notifies and guest-memory pokes against an `MmioTransport` (both
//! versions) with a Block, Rng or Console behind it. Nothing may panic and
//! every script must end.

mod support {
    pub mod mmio_script;
}

use proptest::prelude::*;
use support::mmio_script::{self, OP};

/// One operation biased towards the ones that reach the devices: a
/// handshake, a queue setup, DRIVER_OK and notifies, mixed with raw
/// accesses and memory pokes.
fn op() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![0u8..8, Just(3u8), Just(4u8), Just(5u8), Just(6u8)],
        proptest::collection::vec(any::<u8>(), OP - 1),
    )
        .prop_map(|(kind, mut rest)| {
            rest.insert(0, kind);
            rest
        })
}

fn script() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        0u16..2048,
        proptest::collection::vec(op(), 0..48),
    )
        .prop_flat_map(|(head, mem_len, ops)| {
            proptest::collection::vec(any::<u8>(), usize::from(mem_len)).prop_map(move |contents| {
                let mut s = vec![head];
                s.extend_from_slice(&mem_len.to_le_bytes());
                s.extend_from_slice(&contents);
                for op in &ops {
                    s.extend_from_slice(op);
                }
                s
            })
        })
}

/// A well-formed start: Modern or Legacy handshake, queue 0 at fixed
/// addresses, DRIVER_OK, then hostile ring contents and a notify.
fn walked_script() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0x3000),
        proptest::collection::vec(op(), 0..16),
    )
        .prop_map(|(head, contents, ops)| {
            let mut s = vec![head];
            s.extend_from_slice(&(contents.len() as u16).to_le_bytes());
            s.extend_from_slice(&contents);
            // Handshake, all features acked.
            s.extend_from_slice(&[3, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 12]);
            // Queue 0 (and 1): size 8, desc 0x0, avail 0x1000, used 0x2000;
            // Legacy: PFN 0 (page 4096, align 4096).
            for q in 0..2u8 {
                s.extend_from_slice(&[4, q, 0, 0, 0, 0, 0x10, 0, 0x20, 8, 0, 12]);
            }
            s.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            for q in 0..2u8 {
                s.extend_from_slice(&[6, q, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            for op in &ops {
                s.extend_from_slice(op);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_script_never_panics(s in script()) {
        mmio_script::run(&s);
    }

    #[test]
    fn hostile_rings_after_driver_ok_never_panic(s in walked_script()) {
        mmio_script::run(&s);
    }
}
