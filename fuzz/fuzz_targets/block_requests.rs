//! Fuzz target: the block device's request parser with many requests in
//! flight at once, checked against a completion model that, like io_uring,
//! accepts completions in any order.
//!
//! A Version 2 `MmioTransport` with a `Block` over a 64 KiB
//! `MemoryBackend` (VIRTIO_BLK_F_FLUSH negotiated, no INDIRECT_DESC), a
//! split ring of 16 entries. The input gives, in order: 256 bytes of
//! descriptor table (16 descriptors, addresses folded into the data area
//! or left wild by a flag bit, never below the data area: see below), up
//! to 16 avail heads (one byte each, count in byte 0), and the rest
//! becomes guest memory from 0x4000 (request headers, data). The target publishes the heads, notifies, optionally resets and
//! repeats once, and checks the used ring:
//!
//! - the device completes at most as many chains as were made available;
//! - every used id is a head that was made available, each completed at
//!   most as many times as it was posted, in any order;
//! - a used length never exceeds the chain's device-writable bytes (chains
//!   walked here with the same 16-step bound);
//! - nothing panics.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::{Interrupt, InterruptCause, MmioTransport, TransportVersion};
use vmmio_devices::{Block, BlockOptions, MemoryBackend};
use vmmio_spec::mmio;

type Mem = GuestMemoryMmap<()>;

const MEM: usize = 0x1_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x4000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

struct Line;
impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {}
}

fn w(t: &mut MmioTransport<Mem>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn start(t: &mut MmioTransport<Mem>, mem: &Mem) {
    mem.write_slice(&[0u8; 4], GuestAddress(AVAIL))
        .expect("avail");
    mem.write_slice(&[0u8; 4 + 8 * QSIZE as usize], GuestAddress(USED))
        .expect("used");
    w(t, mmio::STATUS, 0);
    w(t, mmio::STATUS, 1);
    w(t, mmio::STATUS, 3);
    w(t, mmio::DRIVER_FEATURES_SEL, 0);
    w(
        t,
        mmio::DRIVER_FEATURES,
        1 << vmmio_spec::blk::features::FLUSH,
    );
    w(t, mmio::DRIVER_FEATURES_SEL, 1);
    w(t, mmio::DRIVER_FEATURES, 1);
    w(t, mmio::STATUS, 11);
    w(t, mmio::QUEUE_SEL, 0);
    w(t, mmio::QUEUE_SIZE, u32::from(QSIZE));
    w(t, mmio::QUEUE_DESC_LOW, DESC as u32);
    w(t, mmio::QUEUE_DRIVER_LOW, AVAIL as u32);
    w(t, mmio::QUEUE_DEVICE_LOW, USED as u32);
    w(t, mmio::QUEUE_READY, 1);
    w(t, mmio::STATUS, 15);
}

/// Device-writable bytes of the chain at `head`, or `None` when the chain
/// is not a plain one this model can size (indirect, or past 16 steps).
fn writable_bytes(mem: &Mem, head: u16) -> Option<u64> {
    let mut total = 0u64;
    let mut i = head;
    for _ in 0..QSIZE {
        let at = DESC + 16 * u64::from(i % QSIZE);
        let len: u32 = mem.read_obj(GuestAddress(at + 8)).ok()?;
        let flags: u16 = mem.read_obj(GuestAddress(at + 12)).ok()?;
        let next: u16 = mem.read_obj(GuestAddress(at + 14)).ok()?;
        if flags & F_INDIRECT != 0 {
            return None;
        }
        if flags & F_WRITE != 0 {
            total += u64::from(len);
        }
        if flags & F_NEXT == 0 {
            return Some(total);
        }
        i = next;
    }
    None
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 256 + 2 {
        return;
    }
    let (table, rest) = data.split_at(256);
    let flags = rest[0];
    let count = usize::from(rest[1] % (QSIZE as u8 + 1));
    let rest = &rest[2..];
    let (heads, contents) = rest.split_at(count.min(rest.len()));
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    // Descriptor addresses folded into the data area unless flag bit 0
    // (then left wild). Either way no buffer starts below DATA: a buffer
    // over the rings would let the device overwrite, as told, the avail
    // or used ring this model reads back, and the model would blame the
    // device for completions the corrupted ring asked for.
    let mut table = table.to_vec();
    for d in table.chunks_exact_mut(16) {
        let mut addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        if flags & 1 == 0 {
            addr = DATA + addr % (MEM as u64 - DATA);
        } else if addr < DATA {
            addr += DATA;
        }
        d[0..8].copy_from_slice(&addr.to_le_bytes());
    }
    let contents = &contents[..contents.len().min(MEM - DATA as usize)];
    mem.write_slice(contents, GuestAddress(DATA))
        .expect("contents");
    let block = Block::<Mem, _>::with_backend(MemoryBackend::new(MEM), BlockOptions::default())
        .expect("block");
    let mut t = MmioTransport::new(
        TransportVersion::Modern,
        Box::new(block),
        mem.clone(),
        Arc::new(Line),
    );

    let rounds = if flags & 2 != 0 { 2 } else { 1 };
    for _ in 0..rounds {
        start(&mut t, &mem);
        mem.write_slice(&table, GuestAddress(DESC)).expect("table");
        let mut posted = [0u32; QSIZE as usize];
        let mut sizes = [None; QSIZE as usize];
        for (n, &h) in heads.iter().enumerate() {
            let head = u16::from(h) % QSIZE;
            posted[usize::from(head)] += 1;
            sizes[usize::from(head)] = writable_bytes(&mem, head);
            mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * n as u64))
                .expect("avail ring");
        }
        mem.write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        w(&mut t, mmio::QUEUE_NOTIFY, 0);
        if flags & 4 != 0 {
            // A second notify with nothing new.
            w(&mut t, mmio::QUEUE_NOTIFY, 0);
        }
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).expect("used idx");
        assert!(
            usize::from(used_idx) <= heads.len(),
            "{used_idx} completions for {} requests",
            heads.len()
        );
        let mut completed = [0u32; QSIZE as usize];
        for n in 0..u64::from(used_idx) {
            let at = USED + 4 + 8 * n;
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
            let slot = usize::try_from(id).ok().filter(|&s| s < QSIZE as usize);
            let slot = slot.unwrap_or_else(|| panic!("used id {id} out of range"));
            completed[slot] += 1;
            assert!(
                completed[slot] <= posted[slot],
                "head {id} completed more often than posted"
            );
            if let Some(max) = sizes[slot] {
                assert!(
                    u64::from(len) <= max,
                    "head {id}: used length {len} > {max} writable bytes"
                );
            }
        }
    }
});
