//! Fuzz target: the device-role packed virtqueue (virtio v1.4 §2.8) against
//! a hostile driver.
//!
//! The input is a 24-byte header (queue size, features, area addresses,
//! start positions, how many descriptors to mark available) followed by
//! the guest memory contents (64 KiB, the rest zero). The device pops until
//! the ring is empty or an error, completes every popped chain out of
//! order and asks about notifications. It must never panic, and every
//! popped chain must keep the queue's promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::queue::{DescriptorChain, Queue};
use vmmio_spec::features::{bit, VIRTIO_F_RING_PACKED};

const MEM: u64 = 0x1_0000;
const HEADER: usize = 24;

fn u16_at(h: &[u8; HEADER], i: usize) -> u16 {
    u16::from_le_bytes([h[i], h[i + 1]])
}

fuzz_target!(|data: &[u8]| {
    let mut header = [0u8; HEADER];
    let n = data.len().min(HEADER);
    header[..n].copy_from_slice(&data[..n]);
    let contents = &data[n..];

    let size = u16_at(&header, 0);
    let flags = header[2];
    let desc = u64::from(u16_at(&header, 4));
    let driver = u64::from(u16_at(&header, 6));
    let device = u64::from(u16_at(&header, 8));
    let start_avail = u16_at(&header, 10);
    let start_used = u16_at(&header, 12);
    let mark = u16_at(&header, 14) % 512;
    let len_seed = u16_at(&header, 16);

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
    q.set_addresses(desc, driver, device);
    q.set_features(bit(VIRTIO_F_RING_PACKED) | (u64::from(flags & 0x03) << 28));
    if flags & 0x08 != 0 && q.validate(&mem).is_err() {
        return;
    }
    q.set_ready(true);
    q.set_next_avail(start_avail);
    q.set_next_used(start_used);
    // Make descriptors from the start look available, so lists are walked.
    let wrap = start_avail & 0x8000 != 0;
    let ring = u64::from(size.max(1));
    for k in 0..u64::from(mark) {
        let at = desc + 16 * ((u64::from(start_avail & 0x7fff) + k) % ring) + 14;
        if let Ok(f) = mem.read_obj::<u16>(GuestAddress(at)) {
            let f = f & !0x8080 | if wrap { 0x0080 } else { 0x8000 };
            let _ = mem.write_obj(f, GuestAddress(at));
        }
    }

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
    for (i, &(head, wlen)) in popped.iter().enumerate().rev() {
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
