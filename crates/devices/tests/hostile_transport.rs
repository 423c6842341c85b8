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
            // Legacy: QueuePFN 1 (the op's low 32 bits; page 4096, align
            // 4096): desc 0x1000, avail 0x1080, used 0x2000.
            for q in 0..2u8 {
                if head & 1 != 0 {
                    s.extend_from_slice(&[4, q, 0, 1, 0, 0, 0, 0, 0x20, 8, 0, 12]);
                } else {
                    s.extend_from_slice(&[4, q, 0, 0, 0, 0, 0x10, 0, 0x20, 8, 0, 12]);
                }
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

/// Well-formed rings with random chains, so that the devices really
/// complete requests and the script's oracle sees their writes: queue 0
/// and 1 (same rings) of size 8, descriptor table at 0x1000, available
/// ring at 0x1080, used ring at 0x2000 (Modern registers, or Legacy
/// QueuePFN 1 with 4 KiB pages and alignment), 1 to 8 descriptors in
/// chains of 1 to 3, each `(addr, len, device-writable)` in 0x3000..
/// 0x10000; all features acked, DRIVER_OK, both queues notified, console
/// input pushed.
fn well_formed_script() -> impl Strategy<Value = Vec<u8>> {
    let chain = proptest::collection::vec((0x3000u16..0xf000, 1u16..0x800, any::<bool>()), 1..4);
    (
        any::<u8>(),
        proptest::collection::vec(chain, 1..4),
        proptest::collection::vec(any::<u8>(), 0x3000),
    )
        .prop_map(|(head, chains, mut contents)| {
            let legacy = head & 1 != 0;
            let head = head & !0x08; // QueueSizeMax 256
            let (desc, avail, used) = (0x1000usize, 0x1080usize, 0x2000usize);
            contents[used..].fill(0);
            let mut next = 0u16;
            let mut heads = Vec::new();
            for chain in &chains {
                let n = chain.len().min(8 - usize::from(next));
                if n == 0 {
                    break;
                }
                heads.push(next);
                for (k, &(addr, len, writable)) in chain[..n].iter().enumerate() {
                    let i = usize::from(next);
                    let last = k + 1 == n;
                    let flags = u16::from(writable) * 2 + u16::from(!last);
                    let at = desc + 16 * i;
                    contents[at..at + 8].copy_from_slice(&u64::from(addr).to_le_bytes());
                    contents[at + 8..at + 12].copy_from_slice(&u32::from(len).to_le_bytes());
                    contents[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
                    contents[at + 14..at + 16].copy_from_slice(&(next + 1).to_le_bytes());
                    next += 1;
                }
            }
            contents[avail..avail + 2].fill(0);
            contents[avail + 2..avail + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
            for (k, h) in heads.iter().enumerate() {
                let at = avail + 4 + 2 * k;
                contents[at..at + 2].copy_from_slice(&h.to_le_bytes());
            }
            let mut s = vec![head];
            s.extend_from_slice(&(contents.len() as u16).to_le_bytes());
            s.extend_from_slice(&contents);
            s.extend_from_slice(&[3, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 12]);
            for q in 0..2u8 {
                if legacy {
                    s.extend_from_slice(&[4, q, 0, 1, 0, 0, 0, 0, 0, 8, 0, 12]);
                } else {
                    s.extend_from_slice(&[4, q, 0, 0, 0x10, 0x80, 0x10, 0, 0x20, 8, 0, 12]);
                }
            }
            s.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            s.extend_from_slice(&[7, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1]);
            for q in 0..2u8 {
                s.extend_from_slice(&[6, q, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn well_formed_requests_write_only_writable_buffers_and_used_rings(s in well_formed_script()) {
        mmio_script::run(&s);
    }

    #[test]
    fn hostile_script_never_panics(s in script()) {
        mmio_script::run(&s);
    }

    #[test]
    fn hostile_rings_after_driver_ok_never_panic(s in walked_script()) {
        mmio_script::run(&s);
    }
}

/// The fuzz target's seed corpus (`fuzz/seeds/mmio_transport`) replayed
/// under the script's oracle, so that `cargo test` checks what CI's
/// fuzzing starts from.
#[test]
fn fuzz_seed_corpus_passes_the_oracle() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/mmio_transport");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus") {
        let path = entry.expect("seed").path();
        let data = std::fs::read(&path).expect("read seed");
        mmio_script::run(&data);
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}
