//! Fuzz target: host-side configuration changes (`BlockConfigHandle`,
//! `ConsoleConfigHandle`) interleaved with a hostile driver's register and
//! configuration accesses on an `MmioTransport` (both versions).
//!
//! Byte 0: bit 0 legacy window, bit 1 console instead of block. Then
//! 10-byte operations `[kind, a(1), v(8)]`:
//! - 0: host sets the block capacity to `v` sectors (any u64; too large is
//!   refused) or the console size to `(v as u16, v >> 16 as u16)`;
//! - 1: driver config read of width `1 << (a % 4)` at config offset
//!   `a / 4` (widths 1/2/4, and an invalid 8);
//! - 2: driver config write of the same shape, value `v`;
//! - 3: driver `Status` store of `v as u32` (0 resets), or a handshake to
//!   DRIVER_OK when `a` is odd;
//! - 4: driver `InterruptACK` of `v as u32`;
//! - other: a raw 32-bit register read at `a * 4`.
//!
//! Never panics, and after every host change that altered the value, a
//! Version 2 window's `ConfigGeneration` differs from before the change and
//! the config space reads the new value.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmmio_device::{Interrupt, InterruptCause, MmioTransport, TransportVersion};
use vmmio_devices::{Block, BlockOptions, Console, MemoryBackend};
use vmmio_spec::mmio;

type Mem = GuestMemoryMmap<()>;

struct Line;
impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {}
}

enum Host {
    Block(vmmio_devices::BlockConfigHandle),
    Console(vmmio_devices::ConsoleConfigHandle),
}

fn read32(t: &mut MmioTransport<Mem>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport<Mem>, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, ops)) = data.split_first() else {
        return;
    };
    let version = if head & 1 != 0 {
        TransportVersion::Legacy
    } else {
        TransportVersion::Modern
    };
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("guest memory");
    let (device, host): (Box<dyn vmmio_device::VirtioDevice<Mem> + Send>, Host) = if head & 2 != 0 {
        let (console, _out) = Console::<Mem>::capture_with_limit(4096);
        let handle = console.config_handle();
        (Box::new(console), Host::Console(handle))
    } else {
        let block =
            Block::<Mem, _>::with_backend(MemoryBackend::new(4096), BlockOptions::default())
                .expect("block device");
        let handle = block.config_handle();
        (Box::new(block), Host::Block(handle))
    };
    let mut t = MmioTransport::new(version, device, mem, Arc::new(Line));
    for op in ops.chunks_exact(10).take(4096) {
        let (kind, a) = (op[0], op[1]);
        let mut vb = [0u8; 8];
        vb.copy_from_slice(&op[2..10]);
        let v = u64::from_le_bytes(vb);
        match kind % 6 {
            0 => {
                let before = t.config_generation();
                let (changed, expect): (bool, Vec<u8>) = match &host {
                    Host::Block(h) => {
                        let old = h.capacity();
                        let ok = h.set_capacity(v).is_ok();
                        (ok && old != v, v.to_le_bytes().to_vec())
                    }
                    Host::Console(h) => {
                        let size = (v as u16, (v >> 16) as u16);
                        let old = h.size();
                        h.set_size(size.0, size.1);
                        let mut e = size.0.to_le_bytes().to_vec();
                        e.extend_from_slice(&size.1.to_le_bytes());
                        (old != size, e)
                    }
                };
                if changed {
                    assert_ne!(
                        t.config_generation(),
                        before,
                        "a host change kept the generation"
                    );
                    if version == TransportVersion::Modern {
                        assert_ne!(read32(&mut t, mmio::CONFIG_GENERATION), before);
                    }
                    let mut got = vec![0u8; expect.len()];
                    for (i, b) in got.iter_mut().enumerate() {
                        let mut one = [0u8; 1];
                        t.read(mmio::CONFIG + i as u64, &mut one);
                        *b = one[0];
                    }
                    assert_eq!(got, expect, "the config space does not read the change");
                }
            }
            1 | 2 => {
                let width = 1usize << (a % 4);
                let offset = mmio::CONFIG + u64::from(a / 4);
                if kind % 6 == 1 {
                    let mut buf = vec![0u8; width];
                    t.read(offset, &mut buf);
                } else {
                    t.write(offset, &v.to_le_bytes()[..width]);
                }
            }
            3 => {
                if a & 1 != 0 {
                    write32(&mut t, mmio::STATUS, 0);
                    write32(&mut t, mmio::STATUS, 1);
                    write32(&mut t, mmio::STATUS, 3);
                    write32(&mut t, mmio::DRIVER_FEATURES_SEL, 1);
                    write32(&mut t, mmio::DRIVER_FEATURES, 1);
                    write32(&mut t, mmio::STATUS, 11);
                    write32(&mut t, mmio::STATUS, 15);
                    write32(&mut t, mmio::STATUS, 7);
                } else {
                    write32(&mut t, mmio::STATUS, v as u32);
                }
            }
            4 => write32(&mut t, mmio::INTERRUPT_ACK, v as u32),
            _ => {
                read32(&mut t, u64::from(a) * 4);
            }
        }
    }
});
