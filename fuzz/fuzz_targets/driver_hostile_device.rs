//! Fuzz target: the driver (`vmmio_driver`) against a hostile device.
//!
//! A fake device answers register and config reads from the input: each
//! read takes one byte; an even byte (or no byte left) gives a cooperative
//! answer (a block or entropy device with queues of up to 8 entries), an
//! odd one the next 4 input bytes as the value. On each `QueueNotify` it
//! completes chains in the driver's used ring, either properly (the head
//! the driver made available, the chain's writable length, a status byte
//! of 0) or with an id, length and `used.idx` taken from the input. The
//! driver probes, handshakes, sets up its queue and issues block reads,
//! writes, GET_ID and flushes, or entropy reads, all with small `Limits`:
//! it must never panic and always end.
//!
//! Byte 0: bit 0 legacy (Version 1), bit 1 entropy instead of block, bit 2
//! queued zero-copy block requests (`submit_dma`, `complete`) instead of
//! the blocking calls.
//!
//! The driver's DMA memory is a small arena at low device addresses (so
//! legacy page numbers fit 32 bits); the fake device touches nothing
//! outside it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::mem::size_of;
use std::ptr::NonNull;
use vmmio_driver::blk::{Block, DmaOp};
use vmmio_driver::rng::Entropy;
use vmmio_driver::transport::{Limits, Transport};

use vmmio_driver::{BufferDirection, Dma, Hal, RegisterIo, PAGE_SIZE};
use vmmio_spec::split::{self, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use vmmio_spec::{device_id, mmio};

/// The fake's copy of one queue's registers and its ring positions.
#[derive(Clone, Copy, Default)]
struct Q {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    pfn: u32,
    ready: bool,
    next_avail: u16,
    used_idx: u16,
}

impl Q {
    /// Whether the driver published a ring the fake may touch.
    fn live(&self) -> bool {
        self.ready && self.size.is_power_of_two() && self.size <= 8 && self.device != 0
    }
}

struct Dev<'a> {
    arena: Arena,
    input: &'a [u8],
    pos: usize,
    legacy: bool,
    device_id: u32,
    status: u32,
    features_sel: u32,
    sel: u32,
    q: [Q; 2],
}

/// Pages of the DMA arena.
const ARENA_PAGES: usize = 64;
/// Device address of the arena's first byte: low enough for legacy
/// 32-bit page numbers.
const ARENA_BASE: u64 = 0x10_0000;

/// The driver's DMA memory: a bump arena of `ARENA_PAGES` zeroed pages at
/// device address `ARENA_BASE`, freed only when the run ends, so that the
/// fake device's accesses (bounds-checked against it) never touch freed or
/// foreign memory whatever the driver does. Owned by the run
/// ([`ArenaOwner`]); the driver and the fake hold `Arena` handles, which
/// the run outlives (a `Dma` the driver leaks on purpose keeps a dangling
/// handle it never uses).
#[derive(Clone)]
struct Arena(NonNull<ArenaOwner>);

struct ArenaOwner {
    mem: NonNull<u8>,
    next: Cell<usize>,
}

impl ArenaOwner {
    fn layout() -> Layout {
        Layout::from_size_align(ARENA_PAGES * PAGE_SIZE, PAGE_SIZE).expect("arena layout")
    }

    fn new() -> Box<Self> {
        // SAFETY: the layout has a non-zero size.
        let mem = NonNull::new(unsafe { alloc_zeroed(Self::layout()) }).expect("arena");
        Box::new(Self {
            mem,
            next: Cell::new(0),
        })
    }

    fn handle(&self) -> Arena {
        Arena(NonNull::from(self))
    }
}

impl Drop for ArenaOwner {
    fn drop(&mut self) {
        // SAFETY: allocated in `ArenaOwner::new` with this layout.
        unsafe { dealloc(self.mem.as_ptr(), Self::layout()) }
    }
}

impl Arena {
    fn owner(&self) -> &ArenaOwner {
        // SAFETY: the run's `ArenaOwner` outlives every handle that is used
        // (see `Arena`).
        unsafe { self.0.as_ref() }
    }

    /// Host pointer of the `len` bytes at device address `addr`, if they
    /// lie inside the arena.
    fn host(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let off = usize::try_from(addr.checked_sub(ARENA_BASE)?).ok()?;
        (off.checked_add(len)? <= ARENA_PAGES * PAGE_SIZE)
            // SAFETY: `off + len` is inside the allocation.
            .then(|| unsafe { self.owner().mem.as_ptr().add(off) })
    }

    fn rd<T: Copy + Default>(&self, addr: u64) -> T {
        match self.host(addr, size_of::<T>()) {
            // SAFETY: inside the live arena (`host`); any bit pattern is a
            // valid integer.
            Some(p) => unsafe { core::ptr::read_unaligned(p as *const T) },
            None => T::default(),
        }
    }

    fn wr<T: Copy>(&self, addr: u64, v: T) {
        if let Some(p) = self.host(addr, size_of::<T>()) {
            // SAFETY: inside the live arena (`host`).
            unsafe { core::ptr::write_unaligned(p as *mut T, v) }
        }
    }
}

// SAFETY: `dma_alloc` hands out disjoint, page-aligned, zeroed pages of
// the arena, which stays allocated while any clone lives; the device
// address is `ARENA_BASE` plus the page offset, which is where the fake
// device (`Arena::host`) finds them. Nothing is ever shared.
unsafe impl Hal for Arena {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        let owner = self.owner();
        let start = owner.next.get();
        let end = start.checked_add(pages.max(1))?;
        if end > ARENA_PAGES {
            return None;
        }
        owner.next.set(end);
        let paddr = ARENA_BASE + u64::try_from(start * PAGE_SIZE).ok()?;
        // SAFETY: `start < ARENA_PAGES`: inside the allocation.
        let vaddr = unsafe { owner.mem.add(start * PAGE_SIZE) };
        Some((paddr, vaddr))
    }

    // A bump arena: pages come back when the run ends.
    unsafe fn dma_dealloc(&self, _paddr: u64, _vaddr: NonNull<u8>, _pages: usize) {}

    unsafe fn share(&self, _buffer: NonNull<[u8]>, _direction: BufferDirection) -> Option<u64> {
        None
    }

    unsafe fn unshare(&self, _paddr: u64, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

impl Dev<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = self.input.get(self.pos).copied();
        self.pos += usize::from(b.is_some());
        b
    }

    fn word(&mut self) -> u32 {
        u32::from_le_bytes([0; 4].map(|_| self.byte().unwrap_or(0)))
    }

    /// `cooperative`, or a value from the input.
    fn answer(&mut self, cooperative: u32) -> u32 {
        match self.byte() {
            Some(b) if b & 1 != 0 => self.word(),
            _ => cooperative,
        }
    }

    fn queue(&mut self) -> Option<&mut Q> {
        self.q.get_mut(usize::try_from(self.sel).ok()?)
    }

    fn config(&self, offset: u64) -> u32 {
        match (self.device_id, offset) {
            (device_id::BLOCK, 0) => 64, // capacity: 64 sectors
            (device_id::BLOCK, 20) => 512,
            _ => 0,
        }
    }

    /// Completes up to 3 chains of queue `index`.
    fn complete(&mut self, index: u32) {
        let Some(mut q) = usize::try_from(index)
            .ok()
            .and_then(|i| self.q.get(i))
            .copied()
        else {
            return;
        };
        if !q.live() {
            return;
        }
        let mode = self.byte().unwrap_or(0);
        let count = match (mode >> 1) & 3 {
            0 => 1,
            n => n,
        };
        for _ in 0..count {
            let mask = q.size - 1;
            let avail_idx = u16::from_le(self.arena.rd::<u16>(q.driver + 2));
            let head = (avail_idx != q.next_avail).then(|| {
                let at = q.driver + split::avail::ring(q.next_avail & mask);
                q.next_avail = q.next_avail.wrapping_add(1);
                u16::from_le(self.arena.rd::<u16>(at))
            });
            // Only chains the driver made available are walked: older
            // descriptors may name buffers it has freed since.
            let (id, len) = match head {
                Some(head) if mode & 1 == 0 => (u32::from(head), self.serve(&q, head)),
                _ => (self.word(), self.word()),
            };
            let slot = q.device + split::used::ring(q.used_idx & mask);
            self.arena.wr(slot, id.to_le());
            self.arena.wr(slot + 4, len.to_le());
            q.used_idx = if mode & 0x80 != 0 {
                self.word() as u16
            } else {
                q.used_idx.wrapping_add(1)
            };
            self.arena.wr(q.device + 2, q.used_idx.to_le());
        }
        // As a device with EVENT_IDX: notify me at the next chain.
        self.arena.wr(
            q.device + split::used::avail_event(q.size),
            q.next_avail.to_le(),
        );
        if let Some(slot) = self.q.get_mut(index as usize) {
            *slot = q;
        }
    }

    /// Walks chain `head` (bounded), writes 0 into its last writable byte
    /// (a block status) and returns its writable length.
    fn serve(&mut self, q: &Q, head: u16) -> u32 {
        let mut table = (q.desc, u32::from(q.size));
        let mut index = head;
        let mut writable = 0u32;
        let mut last = None;
        let mut indirect = false;
        for _ in 0..64 {
            if u32::from(index) >= table.1 {
                break;
            }
            let at = table.0 + 16 * u64::from(index);
            let addr = u64::from_le(self.arena.rd::<u64>(at));
            let len = u32::from_le(self.arena.rd::<u32>(at + 8));
            let flags = u16::from_le(self.arena.rd::<u16>(at + 12));
            let next = u16::from_le(self.arena.rd::<u16>(at + 14));
            if flags & VIRTQ_DESC_F_INDIRECT != 0 && !indirect {
                indirect = true;
                table = (addr, len / 16);
                index = 0;
                continue;
            }
            if flags & VIRTQ_DESC_F_WRITE != 0 && len > 0 {
                writable = writable.saturating_add(len);
                last = addr.checked_add(u64::from(len) - 1);
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            index = next;
        }
        if let Some(status) = last {
            self.arena.wr(status, 0u8);
        }
        writable
    }
}

impl RegisterIo for Dev<'_> {
    fn read_reg(&mut self, offset: u64) -> u32 {
        let q = self.queue().copied();
        let cooperative = match offset {
            mmio::MAGIC => mmio::MAGIC_VALUE,
            mmio::VERSION => {
                if self.legacy {
                    mmio::VERSION_LEGACY
                } else {
                    mmio::VERSION_MODERN
                }
            }
            mmio::DEVICE_ID => self.device_id,
            mmio::VENDOR_ID => 0x554d_4551,
            mmio::DEVICE_FEATURES => match self.features_sel {
                0 => (1 << 6) | (1 << 9) | (1 << 28) | (1 << 29),
                1 if !self.legacy => 1,
                _ => 0,
            },
            mmio::STATUS => self.status,
            mmio::QUEUE_SIZE_MAX => q.map_or(0, |_| 8),
            mmio::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            mmio::LEGACY_QUEUE_PFN => q.map_or(0, |q| q.pfn),
            mmio::INTERRUPT_STATUS => 1,
            mmio::SHM_LEN_LOW | mmio::SHM_LEN_HIGH | mmio::SHM_BASE_LOW | mmio::SHM_BASE_HIGH => {
                u32::MAX
            }
            _ => 0,
        };
        self.answer(cooperative)
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let legacy = self.legacy;
        match offset {
            mmio::STATUS => {
                self.status = value;
                if value == 0 {
                    self.q = [Q::default(); 2];
                }
            }
            mmio::DEVICE_FEATURES_SEL => self.features_sel = value,
            mmio::QUEUE_SEL => self.sel = value,
            mmio::QUEUE_NOTIFY => self.complete(value & 0xffff),
            _ => {
                let Some(q) = self.queue() else { return };
                let lo = |old: u64| (old & !0xffff_ffff) | u64::from(value);
                let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
                match offset {
                    mmio::QUEUE_SIZE => q.size = value as u16,
                    mmio::QUEUE_DESC_LOW => q.desc = lo(q.desc),
                    mmio::QUEUE_DESC_HIGH => q.desc = hi(q.desc),
                    mmio::QUEUE_DRIVER_LOW => q.driver = lo(q.driver),
                    mmio::QUEUE_DRIVER_HIGH => q.driver = hi(q.driver),
                    mmio::QUEUE_DEVICE_LOW => q.device = lo(q.device),
                    mmio::QUEUE_DEVICE_HIGH => q.device = hi(q.device),
                    mmio::QUEUE_READY => {
                        *q = Q {
                            ready: value == 1,
                            ..*q
                        };
                        if value != 1 {
                            *q = Q::default();
                        }
                    }
                    mmio::LEGACY_QUEUE_PFN if legacy => {
                        let base = u64::from(value) * 4096;
                        match split::legacy_layout(base, q.size, 4096) {
                            Some(l) if value != 0 => {
                                *q = Q {
                                    desc: l.desc,
                                    driver: l.avail,
                                    device: l.used,
                                    pfn: value,
                                    ready: true,
                                    ..*q
                                };
                            }
                            _ => *q = Q::default(),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn read_config_u8(&mut self, offset: u64) -> u8 {
        let word = self.config(offset & !3);
        let c = (word >> (8 * (offset & 3))) as u8;
        self.answer(u32::from(c)) as u8
    }

    fn read_config_u16(&mut self, offset: u64) -> u16 {
        let word = self.config(offset & !3);
        let c = (word >> (8 * (offset & 2))) as u16;
        self.answer(u32::from(c)) as u16
    }

    fn read_config_u32(&mut self, offset: u64) -> u32 {
        let c = self.config(offset);
        self.answer(c)
    }

    fn write_config_u8(&mut self, _offset: u64, _value: u8) {}
    fn write_config_u16(&mut self, _offset: u64, _value: u16) {}
    fn write_config_u32(&mut self, _offset: u64, _value: u32) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, input)) = data.split_first() else {
        return;
    };
    // Declared first, dropped last: after the driver and the fake device.
    let owner = ArenaOwner::new();
    let arena = owner.handle();
    let dev = Dev {
        arena: arena.clone(),
        input,
        pos: 0,
        legacy: head & 1 != 0,
        device_id: if head & 2 != 0 {
            device_id::ENTROPY
        } else {
            device_id::BLOCK
        },
        status: 0,
        features_sel: 0,
        sel: 0,
        q: [Q::default(); 2],
    };
    let limits = Limits {
        reset_polls: 8,
        queue_polls: 8,
        config_retries: 4,
        io_polls: 8,
    };
    let Ok(Some(transport)) = Transport::probe_with_limits(dev, limits) else {
        return;
    };
    if head & 2 != 0 {
        if let Ok(mut rng) = Entropy::new(transport, arena) {
            let mut buf = [0u8; 64];
            let _ = rng.fill(&mut buf);
            let _ = rng.read(&mut buf);
        }
    } else if let Ok(mut blk) = Block::with_queue_size(transport, arena.clone(), 8) {
        if head & 4 != 0 {
            // Several zero-copy requests in flight, completed in any order.
            for (op, sector) in [(DmaOp::Read, 0), (DmaOp::Write, 1), (DmaOp::Read, 2)] {
                if let Ok(d) = Dma::new(arena.clone(), 512) {
                    let _ = blk.submit_dma(op, sector, d, 512);
                }
            }
            let _ = blk.submit_flush();
            for _ in 0..8 {
                if !matches!(blk.complete(), Ok(Some(_))) {
                    break;
                }
            }
            let _ = blk.reinit();
            return;
        }
        let mut buf = [0u8; 1024];
        let _ = blk.read_blocks(0, &mut buf);
        let _ = blk.get_id();
        let _ = blk.write_blocks(2, &buf);
        let _ = blk.flush();
        let _ = blk.read_blocks(blk.capacity().saturating_sub(2), &mut buf);
    }
});
