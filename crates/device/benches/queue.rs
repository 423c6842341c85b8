//! Device-side split virtqueue: vmmio's `Queue` against rust-vmm's
//! `virtio-queue` on the same guest memory (`GuestMemoryMmap`).
//!
//! One iteration is one batch: the driver side publishes 256 chains (one
//! store of `avail.idx`: the ring entries and descriptors were written
//! once at setup and stay valid), then the device pops every chain, walks
//! its descriptors, puts it in the used ring, re-arms driver notifications
//! (EVENT_IDX `avail_event`) and asks once whether to interrupt.
//! Chains of 1 descriptor (queue size 256) and of 3 descriptors (2
//! readable + 1 writable, queue size 1024), EVENT_IDX on.
//!
//! `virtio-queue` is measured two ways: `pop_descriptor_chain` (one chain
//! per call, like ours) and `iter` (its batch iterator).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::{DescriptorChain, Queue};

const BATCH: u16 = 256;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;

/// Guest memory with `BATCH` chains of `per_chain` descriptors laid out and
/// listed in every available-ring slot.
fn setup(size: u16, per_chain: u16) -> GuestMemoryMmap<()> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    for c in 0..BATCH {
        let first = c * per_chain;
        for k in 0..per_chain {
            let i = first + k;
            let base = DESC + 16 * u64::from(i);
            let last = k + 1 == per_chain;
            let flags: u16 = if last { 2 } else { 1 }; // WRITE on the last, NEXT before
            mem.write_obj(0x8_0000u64 + 0x100 * u64::from(i), GuestAddress(base))
                .unwrap();
            mem.write_obj(64u32, GuestAddress(base + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
            mem.write_obj(i + 1, GuestAddress(base + 14)).unwrap();
        }
    }
    // Every slot of the ring names the chain for that position in a batch.
    for slot in 0..size {
        let head = (slot % BATCH) * per_chain;
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
    }
    mem
}

/// The driver's side of one batch: publish `BATCH` more chains and ask to
/// be interrupted once the whole batch is used.
fn publish(mem: &GuestMemoryMmap<()>, size: u16, avail_idx: &mut u16) {
    *avail_idx = avail_idx.wrapping_add(BATCH);
    mem.write_obj(*avail_idx, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(
        avail_idx.wrapping_sub(1),
        GuestAddress(AVAIL + 4 + 2 * u64::from(size)),
    )
    .unwrap();
}

fn ours(c: &mut Criterion, name: &str, size: u16, per_chain: u16) {
    let mem = setup(size, per_chain);
    let mut q = Queue::new(size);
    q.set_size(size);
    q.set_addresses(DESC, AVAIL, USED);
    q.set_event_idx(true);
    q.validate(&mem).unwrap();
    q.set_ready(true);
    let mut avail_idx = 0u16;
    let mut chain = DescriptorChain::new();
    c.bench_function(name, |b| {
        b.iter(|| {
            publish(&mem, size, &mut avail_idx);
            let mut n = 0u32;
            while q.pop_into(&mem, &mut chain).unwrap() {
                let mut sum = 0u64;
                for d in chain.descriptors() {
                    sum = sum.wrapping_add(d.addr.0 ^ u64::from(d.len) ^ u64::from(d.writable));
                }
                black_box(sum);
                q.add_used(&mem, chain.head_index(), 64).unwrap();
                n += 1;
            }
            assert_eq!(n, u32::from(BATCH));
            black_box(q.needs_notification(&mem).unwrap());
        })
    });
}

fn rust_vmm_queue(size: u16, mem: &GuestMemoryMmap<()>) -> virtio_queue::Queue {
    let mut q = virtio_queue::Queue::new(size).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(true);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

fn theirs_pop(c: &mut Criterion, name: &str, size: u16, per_chain: u16) {
    let mem = setup(size, per_chain);
    let mut q = rust_vmm_queue(size, &mem);
    let mut avail_idx = 0u16;
    c.bench_function(name, |b| {
        b.iter(|| {
            publish(&mem, size, &mut avail_idx);
            let mut n = 0u32;
            loop {
                while let Some(chain) = q.pop_descriptor_chain(&mem) {
                    let head = chain.head_index();
                    let mut sum = 0u64;
                    for d in chain {
                        sum = sum.wrapping_add(
                            d.addr().0 ^ u64::from(d.len()) ^ u64::from(d.is_write_only()),
                        );
                    }
                    black_box(sum);
                    q.add_used(&mem, head, 64).unwrap();
                    n += 1;
                }
                // Re-arm notifications (avail_event) and re-check, as ours
                // does when it finds the ring empty.
                if !q.enable_notification(&mem).unwrap() {
                    break;
                }
            }
            assert_eq!(n, u32::from(BATCH));
            black_box(q.needs_notification(&mem).unwrap());
        })
    });
}

fn theirs_iter(c: &mut Criterion, name: &str, size: u16, per_chain: u16) {
    let mem = setup(size, per_chain);
    let mut q = rust_vmm_queue(size, &mem);
    let mut avail_idx = 0u16;
    let mut heads = Vec::with_capacity(usize::from(BATCH));
    c.bench_function(name, |b| {
        b.iter(|| {
            publish(&mem, size, &mut avail_idx);
            let mut n = 0u32;
            loop {
                heads.clear();
                for chain in q.iter(&mem).unwrap() {
                    let head = chain.head_index();
                    let mut sum = 0u64;
                    for d in chain {
                        sum = sum.wrapping_add(
                            d.addr().0 ^ u64::from(d.len()) ^ u64::from(d.is_write_only()),
                        );
                    }
                    black_box(sum);
                    heads.push(head);
                }
                for &head in &heads {
                    q.add_used(&mem, head, 64).unwrap();
                    n += 1;
                }
                if !q.enable_notification(&mem).unwrap() {
                    break;
                }
            }
            assert_eq!(n, u32::from(BATCH));
            black_box(q.needs_notification(&mem).unwrap());
        })
    });
}

fn benches(c: &mut Criterion) {
    let _ = Throughput::Elements(u64::from(BATCH));
    for (label, size, per_chain) in [("1desc", 256u16, 1u16), ("3desc", 1024, 3)] {
        ours(c, &format!("vmmio/{label}/batch256"), size, per_chain);
        theirs_pop(
            c,
            &format!("virtio-queue-pop/{label}/batch256"),
            size,
            per_chain,
        );
        theirs_iter(
            c,
            &format!("virtio-queue-iter/{label}/batch256"),
            size,
            per_chain,
        );
    }
}

criterion_group!(queue, benches);
criterion_main!(queue);
