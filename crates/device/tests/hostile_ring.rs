//! A hostile driver: guest memory full of arbitrary bytes, arbitrary queue
//! size, addresses, start indexes and features. The device pops until the
//! ring is empty or an error, puts everything it popped in the used ring
//! and asks about notifications. Whatever the bytes, nothing may panic,
//! every popped chain must respect the invariants the queue promises, and
//! every error must be one of the documented variants.
//!
//! This is the bounded, CI-run sibling of the cargo-fuzz target
//! `fuzz/fuzz_targets/descriptor_chain.rs`.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::queue::{DescriptorChain, Queue, QueueError};

/// Guest memory of the test: 64 KiB, as one region or as two adjacent ones
/// (so rings and tables may straddle a region boundary).
const MEM: u64 = 0x1_0000;

#[derive(Debug, Clone)]
struct Scenario {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    features: u64,
    start_avail: u16,
    start_used: u16,
    split_memory: bool,
    validate_first: bool,
    /// Memory contents, written from address 0 (the rest stays zero).
    contents: Vec<u8>,
    /// Lengths reported to add_used (cycled), clamped or not.
    used_lens: Vec<u32>,
    /// Per popped chain: whether to undo the pop once.
    undo: Vec<bool>,
}

fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        // Mostly somewhere in memory, aligned or not.
        4 => 0u64..MEM,
        1 => (0u64..MEM / 16).prop_map(|x| x * 16),
        // Sometimes anywhere, including near the top of the address space.
        1 => any::<u64>(),
        1 => (0u64..64).prop_map(|x| u64::MAX - x),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![
            4 => (0u32..=10).prop_map(|e| 1u16 << e),
            1 => any::<u16>(),
        ],
        (address(), address(), address()),
        (any::<bool>(), any::<bool>()),
        (prop_oneof![65500u16..=65535, any::<u16>()], any::<u16>()),
        (any::<bool>(), any::<bool>()),
        prop::collection::vec(any::<u8>(), 0..8192),
        prop::collection::vec(any::<u32>(), 1..8),
        prop::collection::vec(any::<bool>(), 1..8),
    )
        .prop_map(
            |(
                size,
                (desc, avail, used),
                (event_idx, indirect),
                (sa, su),
                (split, validate),
                contents,
                used_lens,
                undo,
            )| {
                Scenario {
                    size,
                    desc,
                    avail,
                    used,
                    features: (u64::from(event_idx) << 29) | (u64::from(indirect) << 28),
                    start_avail: sa,
                    start_used: su,
                    split_memory: split,
                    validate_first: validate,
                    contents,
                    used_lens,
                    undo,
                }
            },
        )
}

/// Makes the random contents more ring-like: a valid avail.idx a few
/// entries ahead, so that chains are actually walked, not just rejected.
fn plant_avail_idx(mem: &GuestMemoryMmap<()>, s: &Scenario, ahead: u16) {
    let idx = s.start_avail.wrapping_add(ahead);
    let _ = mem.write_obj(idx.to_le(), GuestAddress(s.avail.wrapping_add(2)));
}

fn run(s: &Scenario, ahead: u16) -> Result<(), TestCaseError> {
    let mem = if s.split_memory {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x7ff0),
            (GuestAddress(0x7ff0), (MEM - 0x7ff0) as usize),
        ])
    } else {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)])
    }
    .unwrap();
    mem.write_slice(&s.contents, GuestAddress(0)).unwrap();
    plant_avail_idx(&mem, s, ahead);

    let mut q = Queue::new(1024);
    q.set_size(s.size);
    q.set_addresses(s.desc, s.avail, s.used);
    q.set_features(s.features);
    if s.validate_first && q.validate(&mem).is_err() {
        return Ok(());
    }
    q.set_ready(true);
    q.set_next_avail(s.start_avail);
    q.set_next_used(s.start_used);

    let mut chain = DescriptorChain::new();
    let mut popped = Vec::new();
    let mut undone = 0usize;
    // At most `size` chains per avail.idx read, plus undos: bounded.
    for _ in 0..4096 {
        match q.pop_into(&mem, &mut chain) {
            Ok(true) => {
                check_chain(&chain, q.size())?;
                let k = popped.len() + undone;
                if s.undo[k % s.undo.len()] && undone < 16 {
                    prop_assert!(q.undo_pop());
                    undone += 1;
                    continue;
                }
                popped.push((chain.head_index(), chain.writable_len()));
            }
            Ok(false) => break,
            Err(e) => {
                check_error(&e)?;
                break;
            }
        }
    }
    for (i, &(head, wlen)) in popped.iter().enumerate() {
        let len = s.used_lens[i % s.used_lens.len()];
        let len = if i % 2 == 0 { len % (wlen + 1) } else { len };
        if let Err(e) = q.add_used(&mem, head, len) {
            check_error(&e)?;
            break;
        }
    }
    if let Err(e) = q.needs_notification(&mem) {
        check_error(&e)?;
    }
    if let Err(e) = q.enable_notification(&mem) {
        check_error(&e)?;
    }
    Ok(())
}

/// What every popped chain guarantees.
fn check_chain(chain: &DescriptorChain, size: u16) -> Result<(), TestCaseError> {
    prop_assert!(chain.head_index() < size);
    prop_assert!(!chain.is_empty());
    let descs = chain.descriptors();
    prop_assert_eq!(descs.len(), chain.readable().len() + chain.writable().len());
    prop_assert!(chain.readable().iter().all(|d| !d.writable));
    prop_assert!(chain.writable().iter().all(|d| d.writable));
    let r: u64 = chain.readable().iter().map(|d| u64::from(d.len)).sum();
    let w: u64 = chain.writable().iter().map(|d| u64::from(d.len)).sum();
    prop_assert_eq!(r, u64::from(chain.readable_len()));
    prop_assert_eq!(w, u64::from(chain.writable_len()));
    prop_assert!(r + w <= u64::from(u32::MAX));
    for d in descs {
        prop_assert!(d.len == 0 || d.addr.0.checked_add(u64::from(d.len) - 1).is_some());
    }
    prop_assert!(descs.len() <= usize::from(size) + 32768);
    Ok(())
}

fn check_error(e: &QueueError) -> Result<(), TestCaseError> {
    // Display must work for every error; only peer faults (or the host's
    // own NotReady) can come out of this scenario.
    prop_assert!(!e.to_string().is_empty());
    prop_assert!(!matches!(e, QueueError::InvalidUsedHead { .. }), "{e}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_rings_never_panic(s in scenario(), ahead in prop_oneof![0u16..8, any::<u16>()]) {
        run(&s, ahead)?;
    }
}

#[test]
fn all_zero_memory_at_every_size() {
    for e in 0..=10 {
        let s = Scenario {
            size: 1 << e,
            desc: 0,
            avail: 0x4000,
            used: 0x8000,
            features: 3 << 28,
            start_avail: 0,
            start_used: 0,
            split_memory: false,
            validate_first: true,
            contents: Vec::new(),
            used_lens: vec![0],
            undo: vec![false],
        };
        // avail.idx = size: every slot names descriptor 0, a 0-byte
        // readable buffer at address 0.
        run(&s, 1 << e).unwrap();
    }
}
