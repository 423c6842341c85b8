//! Fuzz target: the device-role split virtqueue against a hostile driver.
//!
//! The input is a 40-byte header (queue size, features, ring addresses,
//! start indexes) followed by the guest memory contents (64 KiB, the rest
//! zero). The device pops until the ring is empty or an error, puts every
//! popped chain in the used ring and asks about notifications. It must
//! never panic, and every popped chain must keep the queue's promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::queue::{DescriptorChain, Queue};

const MEM: u64 = 0x1_0000;
const HEADER: usize = 40;

fn u16_at(h: &[u8; HEADER], i: usize) -> u16 {
    u16::from_le_bytes([h[i], h[i + 1]])
}

fn u64_at(h: &[u8; HEADER], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[i..i + 8]);
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut header = [0u8; HEADER];
    let n = data.len().min(HEADER);
    header[..n].copy_from_slice(&data[..n]);
    let contents = &data[n..];

    let flags = header[3];
    let size = if header[2] & 1 != 0 {
        1u16 << (u16_at(&header, 0) % 16)
    } else {
        u16_at(&header, 0)
    };
    let (desc, avail, used) = if flags & 0x10 != 0 {
        (
            u64_at(&header, 16),
            u64_at(&header, 24),
            u64_at(&header, 32),
        )
    } else {
        (
            u64::from(u16_at(&header, 4)),
            u64::from(u16_at(&header, 6)),
            u64::from(u16_at(&header, 8)),
        )
    };
    let start_avail = u16_at(&header, 10);
    let start_used = u16_at(&header, 12);
    let len_seed = u16_at(&header, 14);

    let mem = if flags & 0x04 != 0 {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x7ff0),
            (GuestAddress(0x7ff0), (MEM - 0x7ff0) as usize),
        ])
    } else {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)])
    }
    .expect("fuzz memory");
    let take = contents.len().min(MEM as usize);
    mem.write_slice(&contents[..take], GuestAddress(0))
        .expect("inside memory");

    let mut q = Queue::new(u16::MAX);
    q.set_size(size);
    q.set_addresses(desc, avail, used);
    q.set_event_idx(flags & 0x01 != 0);
    q.set_indirect(flags & 0x02 != 0);
    if flags & 0x08 != 0 && q.validate(&mem).is_err() {
        return;
    }
    q.set_ready(true);
    q.set_next_avail(start_avail);
    q.set_next_used(start_used);

    let mut chain = DescriptorChain::new();
    let mut popped = Vec::new();
    let mut undone = false;
    for _ in 0..70_000 {
        match q.pop_into(&mem, &mut chain) {
            Ok(true) => {
                assert!(chain.head_index() < q.size());
                let descs = chain.descriptors();
                assert!(!descs.is_empty());
                assert_eq!(descs.len(), chain.readable().len() + chain.writable().len());
                assert!(chain.readable().iter().all(|d| !d.writable));
                assert!(chain.writable().iter().all(|d| d.writable));
                let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
                assert_eq!(
                    total,
                    u64::from(chain.readable_len()) + u64::from(chain.writable_len())
                );
                assert!(total <= u64::from(u32::MAX));
                if flags & 0x20 != 0 && !undone {
                    undone = true;
                    assert!(q.undo_pop());
                    continue;
                }
                popped.push((chain.head_index(), chain.writable_len()));
            }
            Ok(false) => break,
            Err(e) => {
                let _ = e.to_string();
                assert!(e.is_peer_fault() || matches!(e, vmmio_device::QueueError::NotReady));
                break;
            }
        }
    }
    for (i, &(head, wlen)) in popped.iter().enumerate() {
        let len = u32::from(len_seed).wrapping_mul(i as u32 + 1) % (wlen.saturating_add(1)).max(1);
        if q.add_used(&mem, head, len).is_err() {
            break;
        }
        if flags & 0x40 != 0 {
            let _ = q.needs_notification(&mem);
        }
    }
    let _ = q.needs_notification(&mem);
    let _ = q.enable_notification(&mem);
    let _ = q.available(&mem);
});
