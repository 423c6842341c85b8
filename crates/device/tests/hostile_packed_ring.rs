//! A hostile driver on a packed ring (virtio v1.4 §2.8): guest memory full
//! of arbitrary bytes (with descriptors made to look available, so that
//! lists are actually walked), arbitrary size, addresses, positions and
//! features. The device pops until the ring is empty or an error, completes
//! what it popped and asks about notifications. Nothing may panic, every
//! popped chain keeps the queue's promises, and every error is a documented
//! peer fault.
//!
//! The bounded, CI-run sibling of the cargo-fuzz target
//! `fuzz/fuzz_targets/packed_ring.rs`.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::queue::{DescriptorChain, Queue, QueueError};
use vmmio_spec::features::{bit, VIRTIO_F_RING_PACKED};

/// Guest memory of the test: 64 KiB, one region or two adjacent ones.
const MEM: u64 = 0x1_0000;

#[derive(Debug, Clone)]
struct Scenario {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    features: u64,
    start_avail: u16,
    start_used: u16,
    split_memory: bool,
    validate_first: bool,
    contents: Vec<u8>,
    /// Ring descriptors whose AVAIL/USED bits are set to "available" for
    /// the wrap counter of the start position.
    mark_available: u16,
    used_lens: Vec<u32>,
    undo: Vec<bool>,
}

fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..MEM / 16).prop_map(|x| x * 16),
        2 => 0u64..MEM,
        1 => any::<u64>(),
        1 => (0u64..64).prop_map(|x| u64::MAX - x),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![4 => 1u16..=64, 1 => any::<u16>()],
        (address(), address(), address()),
        0u64..4,
        (any::<u16>(), any::<u16>()),
        (any::<bool>(), any::<bool>()),
        prop::collection::vec(any::<u8>(), 0..8192),
        0u16..80,
        prop::collection::vec(any::<u32>(), 1..8),
        prop::collection::vec(any::<bool>(), 1..8),
    )
        .prop_map(
            |(
                size,
                (desc, driver, device),
                f,
                (sa, su),
                (split, validate),
                contents,
                mark,
                lens,
                undo,
            )| {
                Scenario {
                    size,
                    desc,
                    driver,
                    device,
                    features: bit(VIRTIO_F_RING_PACKED) | (f << 28),
                    start_avail: sa,
                    start_used: su,
                    split_memory: split,
                    validate_first: validate,
                    contents,
                    mark_available: mark,
                    used_lens: lens,
                    undo,
                }
            },
        )
}

fn run(s: &Scenario) -> Result<(), TestCaseError> {
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
    let mut q = Queue::new(1024);
    q.set_size(s.size);
    q.set_addresses(s.desc, s.driver, s.device);
    q.set_features(s.features);
    if s.validate_first && q.validate(&mem).is_err() {
        return Ok(());
    }
    q.set_ready(true);
    q.set_next_avail(s.start_avail);
    q.set_next_used(s.start_used);
    // Mark descriptors from the start position as available (AVAIL = the
    // wrap counter, USED = its inverse), keeping the other flag bits.
    let size = u64::from(s.size.max(1));
    let wrap = s.start_avail & 0x8000 != 0;
    for k in 0..u64::from(s.mark_available) {
        let index = (u64::from(s.start_avail & 0x7fff) + k) % size;
        let at = s.desc.wrapping_add(16 * index).wrapping_add(14);
        if let Ok(flags) = mem.read_obj::<u16>(GuestAddress(at)) {
            let flags = flags & !(0x8080) | if wrap { 0x0080 } else { 0x8000 };
            let _ = mem.write_obj(flags, GuestAddress(at));
        }
    }

    let mut chain = DescriptorChain::new();
    let mut popped = Vec::new();
    let mut undone = 0usize;
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
    // Complete in reverse: out of order.
    for (i, &(head, wlen)) in popped.iter().enumerate().rev() {
        let len = s.used_lens[i % s.used_lens.len()] % (wlen.saturating_add(1)).max(1);
        if let Err(e) = q.add_used(&mem, head, len) {
            check_error(&e)?;
            break;
        }
        if let Err(e) = q.needs_notification(&mem) {
            check_error(&e)?;
        }
    }
    if let Err(e) = q.enable_notification(&mem) {
        check_error(&e)?;
    }
    if let Err(e) = q.available(&mem) {
        check_error(&e)?;
    }
    Ok(())
}

fn check_chain(chain: &DescriptorChain, size: u16) -> Result<(), TestCaseError> {
    prop_assert!(chain.head_index() < size, "buffer ids are below the size");
    prop_assert!(!chain.is_empty());
    let descs = chain.descriptors();
    prop_assert_eq!(descs.len(), chain.readable().len() + chain.writable().len());
    prop_assert!(chain.readable().iter().all(|d| !d.writable));
    prop_assert!(chain.writable().iter().all(|d| d.writable));
    let r: u64 = chain.readable().iter().map(|d| u64::from(d.len)).sum();
    let w: u64 = chain.writable().iter().map(|d| u64::from(d.len)).sum();
    prop_assert_eq!(r, u64::from(chain.readable_len()));
    prop_assert_eq!(w, u64::from(chain.writable_len()));
    prop_assert!(descs.len() <= usize::from(size).max(32768));
    Ok(())
}

fn check_error(e: &QueueError) -> Result<(), TestCaseError> {
    prop_assert!(!e.to_string().is_empty());
    prop_assert!(
        e.is_peer_fault() || matches!(e, QueueError::NotReady),
        "{e}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_packed_rings_never_panic(s in scenario()) {
        run(&s)?;
    }
}

#[test]
fn zero_ring_marked_available_pops_once_then_reports_the_reused_id() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    for size in [1u16, 3, 64] {
        let mut q = Queue::new(1024);
        q.set_size(size);
        q.set_addresses(0, 0x8000, 0x8010);
        q.set_features(bit(VIRTIO_F_RING_PACKED));
        q.validate(&mem).unwrap();
        q.set_ready(true);
        for i in 0..u64::from(size) {
            mem.write_obj(0x0080u16, GuestAddress(16 * i + 14)).unwrap();
        }
        // Every descriptor: id 0, 0 bytes readable at 0.
        let chain = q.pop(&mem).unwrap().unwrap();
        assert_eq!((chain.head_index(), chain.len()), (0, 1));
        if size > 1 {
            assert!(matches!(
                q.pop(&mem),
                Err(QueueError::BufferIdInUse { id: 0 })
            ));
        } else {
            // The ring of one wrapped: its descriptor is now the old lap's.
            assert!(q.pop(&mem).unwrap().is_none());
        }
        mem.write_slice(&[0u8; 1024], GuestAddress(0)).unwrap();
    }
}
