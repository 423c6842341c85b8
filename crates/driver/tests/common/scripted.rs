//! A scripted virtio-mmio register file for driver tests: a small model
//! device (Version 1 or 2) with an access log and knobs that make it
//! misbehave. Shared by the unit tests (included from `src/lib.rs` under
//! `cfg(test)`) and the integration tests in `tests/` (included with
//! `#[path]`); it names the `RegisterIo` trait as `super::RegisterIo`, so
//! the including module imports it.
//!
//! Queue memory is reached at the addresses the driver programs, which
//! works because the tests run the driver with `IdentityHal` (device
//! address = driver pointer) or [`ArenaHal`] (small device addresses in a
//! test arena, for legacy queues). Little-endian hosts only (legacy rings and
//! config are guest-native, which is then little-endian too).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::vec::Vec;

use vmmio_spec::mmio;
use vmmio_spec::split::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use vmmio_spec::status;

use super::{BufferDirection, Hal, RegisterIo};
use core::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Device address of the first byte of the [`ArenaHal`] arena: low enough
/// for a legacy `QueuePFN` (32 bits of 4096-byte pages).
pub const ARENA_BASE: u64 = 0x4000_0000;
/// Arena size in bytes.
const ARENA_SIZE: usize = 256 << 20;

struct Arena {
    base: usize,
    next: AtomicUsize,
}

fn arena() -> &'static Arena {
    static ARENA: OnceLock<Arena> = OnceLock::new();
    ARENA.get_or_init(|| {
        let layout = std::alloc::Layout::from_size_align(ARENA_SIZE, 4096).unwrap();
        // SAFETY: non-zero size; the arena is never freed (test process).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        Arena {
            base: p as usize,
            next: AtomicUsize::new(0),
        }
    })
}

/// Translates a device address to a pointer: arena addresses map into
/// the arena, everything else is identity.
fn translate(addr: u64) -> usize {
    match addr.checked_sub(ARENA_BASE) {
        Some(off) if off < ARENA_SIZE as u64 => arena().base + usize::try_from(off).unwrap(),
        _ => usize::try_from(addr).unwrap(),
    }
}

/// A HAL whose device addresses are small (from [`ARENA_BASE`]), as a
/// guest's physical addresses are: legacy queues need page numbers that fit
/// 32 bits. Bump allocator, never frees (test-only); `share` bounces.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArenaHal;

impl ArenaHal {
    fn alloc(bytes: usize) -> Option<(u64, NonNull<u8>)> {
        let a = arena();
        let len = bytes.div_ceil(4096).max(1) * 4096;
        let off = a.next.fetch_add(len, Ordering::SeqCst);
        if off + len > ARENA_SIZE {
            return None;
        }
        let ptr = NonNull::new((a.base + off) as *mut u8)?;
        // SAFETY: fresh arena bytes, in bounds, never handed out before.
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        Some((ARENA_BASE + off as u64, ptr))
    }
}

// SAFETY: allocations are fresh, zeroed, page-aligned (the arena is page
// aligned and every allocation is whole pages), never reused (bump
// allocator), and `translate` maps their device address back to them;
// `share` copies into such an allocation and `unshare` copies back.
unsafe impl Hal for ArenaHal {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        Self::alloc(pages.checked_mul(4096)?)
    }
    unsafe fn dma_dealloc(&self, _paddr: u64, _vaddr: NonNull<u8>, _pages: usize) {}
    unsafe fn share(&self, buffer: NonNull<[u8]>, _d: BufferDirection) -> Option<u64> {
        let (paddr, bounce) = Self::alloc(buffer.len())?;
        // SAFETY: the caller promised `buffer` valid for reads; `bounce`
        // is a fresh arena allocation at least as long.
        unsafe {
            core::ptr::copy_nonoverlapping(
                buffer.cast::<u8>().as_ptr(),
                bounce.as_ptr(),
                buffer.len(),
            )
        };
        Some(paddr)
    }
    unsafe fn unshare(&self, paddr: u64, buffer: NonNull<[u8]>, d: BufferDirection) {
        if d != BufferDirection::DriverToDevice {
            let src = translate(paddr) as *const u8;
            // SAFETY: `paddr` came from `share` of this buffer, so it maps
            // to an arena allocation of `buffer.len()` bytes; the caller
            // promised `buffer` valid for writes.
            unsafe {
                core::ptr::copy_nonoverlapping(src, buffer.cast::<u8>().as_ptr(), buffer.len())
            };
        }
    }
}

/// One register or config access the driver made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// A write (true) or a read.
    pub write: bool,
    /// Config space (offset relative to 0x100) or control register.
    pub config: bool,
    /// Offset in bytes.
    pub offset: u64,
    /// Access width in bytes.
    pub width: u8,
    /// Value read or written.
    pub value: u32,
}

/// The device's view of one queue.
#[derive(Clone, Debug, Default)]
pub struct QueueState {
    pub max: u32,
    pub size: u32,
    pub ready: u32,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub align: u32,
    pub pfn: u32,
    /// `QueueReset` reads left before it shows 0 again.
    pub reset_reads: u32,
    pub last_avail: u16,
    pub used_idx: u16,
}

/// A descriptor chain as the model device walked it.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<(u64, u32)>,
    pub writable: Vec<(u64, u32)>,
}

/// What the model device does with a chain: `Some(len)` completes it with
/// that used length, `None` parks it for later ([`Scripted::retry_parked`]).
pub type Handler = fn(&mut Scripted, u32, &Chain) -> Option<u32>;

/// The scripted register file.
#[derive(Debug)]
pub struct Scripted {
    pub magic: u32,
    pub version: u32,
    pub device_id: u32,
    pub vendor_id: u32,
    pub device_features: u64,
    pub driver_features: u64,
    pub dev_sel: u32,
    pub drv_sel: u32,
    pub status: u32,
    /// Clear FEATURES_OK when the driver sets it.
    pub refuse_features: bool,
    /// `Status` never reads 0 after a reset.
    pub reset_stuck: bool,
    /// `QueueReady` / `QueuePFN` ignore writes of 0.
    pub queue_stop_stuck: bool,
    /// Reads of `QueueReset` that show 1 after a queue reset (u32::MAX:
    /// forever).
    pub queue_reset_reads: u32,
    pub guest_page_size: u32,
    pub queue_sel: u32,
    pub queues: Vec<QueueState>,
    pub config: Vec<u8>,
    pub generation: u32,
    /// Reads of `ConfigGeneration` that return a new value each time.
    pub generation_flips: u32,
    /// Config reads after each of which the device adds 1 to every config
    /// byte (a device updating its config while the driver reads it).
    pub config_bumps: u32,
    pub interrupt_status: u32,
    /// `InterruptACK` clears nothing.
    pub interrupt_stuck: bool,
    pub acks: Vec<u32>,
    pub notifications: Vec<u32>,
    pub log: Vec<Access>,
    pub shm: Vec<(u64, u64)>,
    pub shm_sel: u32,
    pub handler: Option<Handler>,
    /// Replaces the id the device writes into the used ring.
    pub used_id_override: Option<u32>,
    /// Added to (or replacing, if `used_len_override`) the used length.
    pub used_len_override: Option<u32>,
    /// Set DEVICE_NEEDS_RESET instead of completing chains.
    pub needs_reset_on_notify: bool,
    pub parked: Vec<(u32, Chain)>,
    pub disk: Vec<u8>,
    pub console_out: Vec<u8>,
    pub console_in: VecDeque<u8>,
    /// Net and vsock: each packet the driver transmitted (header and
    /// payload).
    pub tx_packets: Vec<Vec<u8>>,
    /// Net and vsock: packets (header and payload) the device delivers
    /// next.
    pub rx_packets: VecDeque<Vec<u8>>,
}

impl Scripted {
    /// A well-behaved device of type `device_id`, `Version` `version`,
    /// with `queues` queues of `QueueSizeMax` `max`.
    pub fn new(version: u32, device_id: u32, queues: usize, max: u32) -> Self {
        let version_1 = if version == 2 { 1u64 << 32 } else { 0 };
        Self {
            magic: mmio::MAGIC_VALUE,
            version,
            device_id,
            vendor_id: 0x1af4,
            device_features: version_1,
            driver_features: 0,
            dev_sel: 0,
            drv_sel: 0,
            status: 0,
            refuse_features: false,
            reset_stuck: false,
            queue_stop_stuck: false,
            queue_reset_reads: 2,
            guest_page_size: 0,
            queue_sel: 0,
            queues: (0..queues)
                .map(|_| QueueState {
                    max,
                    ..QueueState::default()
                })
                .collect(),
            config: Vec::new(),
            generation: 0,
            generation_flips: 0,
            config_bumps: 0,
            interrupt_status: 0,
            interrupt_stuck: false,
            acks: Vec::new(),
            notifications: Vec::new(),
            log: Vec::new(),
            shm: Vec::new(),
            shm_sel: 0,
            handler: None,
            used_id_override: None,
            used_len_override: None,
            needs_reset_on_notify: false,
            parked: Vec::new(),
            disk: Vec::new(),
            console_out: Vec::new(),
            console_in: VecDeque::new(),
            tx_packets: Vec::new(),
            rx_packets: VecDeque::new(),
        }
    }

    fn queue(&mut self) -> Option<&mut QueueState> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    /// Control-register accesses (no config) in order.
    pub fn control_log(&self) -> Vec<Access> {
        self.log.iter().copied().filter(|a| !a.config).collect()
    }

    /// Writes to control register `offset`, in order.
    pub fn writes_to(&self, offset: u64) -> Vec<u32> {
        self.log
            .iter()
            .filter(|a| a.write && !a.config && a.offset == offset)
            .map(|a| a.value)
            .collect()
    }

    /// Whether the driver read control register `offset`.
    pub fn read_of(&self, offset: u64) -> bool {
        self.log
            .iter()
            .any(|a| !a.write && !a.config && a.offset == offset)
    }

    /// Areas of queue `q`: (desc, avail, used, size).
    fn areas(&self, q: &QueueState) -> (u64, u64, u64, u32) {
        if self.version == 1 {
            let desc = u64::from(q.pfn) * u64::from(self.guest_page_size);
            let avail = desc + 16 * u64::from(q.size);
            let align = u64::from(q.align.max(1));
            let used = (avail + 6 + 2 * u64::from(q.size)).div_ceil(align) * align;
            (desc, avail, used, q.size)
        } else {
            (q.desc, q.driver, q.device, q.size)
        }
    }

    fn live(&self, q: &QueueState) -> bool {
        q.size != 0
            && if self.version == 1 {
                q.pfn != 0
            } else {
                q.ready != 0
            }
    }

    fn walk(&self, desc: u64, size: u32, head: u16) -> Chain {
        let mut chain = Chain {
            head,
            ..Chain::default()
        };
        let (mut table, mut n, mut i) = (desc, size, u32::from(head));
        for _ in 0..=(size + 256) {
            if i >= n {
                break;
            }
            let d = table + 16 * u64::from(i);
            let addr: u64 = rd(d);
            let len: u32 = rd(d + 8);
            let flags: u16 = rd(d + 12);
            let next: u16 = rd(d + 14);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                table = addr;
                n = len / 16;
                i = 0;
                continue;
            }
            if flags & VIRTQ_DESC_F_WRITE != 0 {
                chain.writable.push((addr, len));
            } else {
                chain.readable.push((addr, len));
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            i = u32::from(next);
        }
        chain
    }

    /// Consumes the available ring of queue `qi` and runs the handler.
    pub fn process(&mut self, qi: u32) {
        let Some(q) = usize::try_from(qi)
            .ok()
            .and_then(|i| self.queues.get(i))
            .cloned()
        else {
            return;
        };
        if !self.live(&q) {
            return;
        }
        let (desc, avail, used, size) = self.areas(&q);
        let avail_idx: u16 = rd(avail + 2);
        let mut last = q.last_avail;
        for _ in 0..size {
            if last == avail_idx {
                break;
            }
            let head: u16 = rd(avail + 4 + 2 * u64::from(u32::from(last) % size));
            last = last.wrapping_add(1);
            let chain = self.walk(desc, size, head);
            if self.needs_reset_on_notify {
                self.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt_status |= mmio::INT_CONFIG;
                continue;
            }
            match self.handler.and_then(|h| h(self, qi, &chain)) {
                Some(len) => self.push_used(qi, u32::from(head), len),
                None => self.parked.push((qi, chain)),
            }
        }
        let i = usize::try_from(qi).unwrap();
        self.queues[i].last_avail = last;
        // EVENT_IDX: ask for a notification at the next buffer.
        if self.driver_features & (1 << 29) != 0 {
            wr(used + 4 + 8 * u64::from(size), last);
        }
        let _ = used;
    }

    /// Writes a used element for queue `qi` (with the hostile overrides).
    pub fn push_used(&mut self, qi: u32, id: u32, len: u32) {
        let i = usize::try_from(qi).unwrap();
        let q = self.queues[i].clone();
        let (_, _, used, size) = self.areas(&q);
        let slot = u64::from(u32::from(q.used_idx) % size);
        wr(used + 4 + 8 * slot, self.used_id_override.unwrap_or(id));
        wr(used + 8 + 8 * slot, self.used_len_override.unwrap_or(len));
        let next = q.used_idx.wrapping_add(1);
        self.queues[i].used_idx = next;
        wr(used + 2, next);
        self.interrupt_status |= mmio::INT_VRING;
    }

    /// Runs the handler again on parked chains.
    pub fn retry_parked(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for (qi, chain) in parked {
            match self.handler.and_then(|h| h(self, qi, &chain)) {
                Some(len) => self.push_used(qi, u32::from(chain.head), len),
                None => self.parked.push((qi, chain)),
            }
        }
    }

    fn reset(&mut self) {
        if !self.reset_stuck {
            self.status = 0;
        }
        self.driver_features = 0;
        self.interrupt_status = 0;
        self.parked.clear();
        for q in &mut self.queues {
            q.ready = 0;
            q.pfn = 0;
            q.reset_reads = 0;
            q.last_avail = 0;
            q.used_idx = 0;
        }
    }

    fn config_read(&mut self, offset: u64, width: usize) -> u32 {
        let mut b = [0u8; 4];
        for (i, byte) in b.iter_mut().take(width).enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *byte = self.config.get(at).copied().unwrap_or(0);
        }
        if self.config_bumps > 0 {
            self.config_bumps -= 1;
            for c in &mut self.config {
                *c = c.wrapping_add(1);
            }
        }
        u32::from_le_bytes(b)
    }

    fn config_write(&mut self, offset: u64, width: usize, value: u32) {
        for (i, byte) in value.to_le_bytes().iter().take(width).enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            if let Some(b) = self.config.get_mut(at) {
                *b = *byte;
            }
        }
    }

    fn log_config(&mut self, write: bool, offset: u64, width: u8, value: u32) {
        self.log.push(Access {
            write,
            config: true,
            offset,
            width,
            value,
        });
    }
}

/// Reads a `T` at device address `addr`.
pub fn rd<T: Copy>(addr: u64) -> T {
    let p = translate(addr) as *const T;
    // SAFETY: the tests run the driver with `IdentityHal` or `ArenaHal`,
    // so (after `translate`) `addr` is a
    // pointer into memory the driver allocated or shared and keeps alive
    // while the chain or queue is live; unaligned reads are allowed.
    unsafe { p.read_unaligned() }
}

/// Writes a `T` at device address `addr`.
pub fn wr<T: Copy>(addr: u64, v: T) {
    let p = translate(addr) as *mut T;
    // SAFETY: as in `rd`: identity-mapped memory the driver gave the
    // device for writing (used ring, writable buffers).
    unsafe { p.write_unaligned(v) }
}

/// Copies `data` into device-writable segments; returns bytes written.
pub fn fill(segs: &[(u64, u32)], data: &[u8]) -> usize {
    let mut done = 0;
    for &(addr, len) in segs {
        for i in 0..usize::try_from(len).unwrap() {
            if done == data.len() {
                return done;
            }
            wr(addr + u64::try_from(i).unwrap(), data[done]);
            done += 1;
        }
    }
    done
}

/// Gathers device-readable segments.
pub fn gather(segs: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(addr, len) in segs {
        for i in 0..u64::from(len) {
            v.push(rd::<u8>(addr + i));
        }
    }
    v
}

/// A block device over `Scripted::disk` (virtio v1.4 §5.2.6).
pub fn blk_handler(s: &mut Scripted, _q: u32, c: &Chain) -> Option<u32> {
    let readable = gather(&c.readable);
    let (status_seg, data_segs) = c.writable.split_last()?;
    let kind = u32::from_le_bytes(readable.get(..4)?.try_into().ok()?);
    let sector = u64::from_le_bytes(readable.get(8..16)?.try_into().ok()?);
    let start = usize::try_from(sector).ok()?.checked_mul(512)?;
    let mut st = 0u8;
    let mut written = 0usize;
    match kind {
        0 => {
            let n: usize = data_segs
                .iter()
                .map(|s| usize::try_from(s.1).unwrap())
                .sum();
            match s.disk.get(start..start + n) {
                Some(d) => written = fill(data_segs, d),
                None => st = 1,
            }
        }
        1 => {
            let data = &readable[16..];
            match s.disk.get_mut(start..start + data.len()) {
                Some(d) => d.copy_from_slice(data),
                None => st = 1,
            }
        }
        4 => {}
        8 => {
            let mut id = [0u8; 20];
            id[..12].copy_from_slice(b"scripted-blk");
            written = fill(data_segs, &id);
        }
        _ => st = 2,
    }
    wr(status_seg.0, st);
    Some(u32::try_from(written + 1).unwrap())
}

/// An entropy device: fills every writable byte with a pattern.
pub fn rng_handler(_s: &mut Scripted, _q: u32, c: &Chain) -> Option<u32> {
    let n: usize = c
        .writable
        .iter()
        .map(|s| usize::try_from(s.1).unwrap())
        .sum();
    let data: Vec<u8> = (0..n).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
    Some(u32::try_from(fill(&c.writable, &data)).unwrap())
}

/// A console: queue 1 appends to `console_out`; queue 0 takes from
/// `console_in`, parking the buffer while there is nothing to give.
pub fn console_handler(s: &mut Scripted, q: u32, c: &Chain) -> Option<u32> {
    match q {
        1 => {
            let data = gather(&c.readable);
            s.console_out.extend_from_slice(&data);
            Some(0)
        }
        0 => {
            if s.console_in.is_empty() {
                return None;
            }
            let cap: usize = c
                .writable
                .iter()
                .map(|s| usize::try_from(s.1).unwrap())
                .sum();
            let n = cap.min(s.console_in.len());
            let data: Vec<u8> = s.console_in.drain(..n).collect();
            Some(u32::try_from(fill(&c.writable, &data)).unwrap())
        }
        _ => Some(0),
    }
}

/// A network device: queue 1 (transmitq) records each packet in
/// `tx_packets`; queue 0 (receiveq) writes the next packet of
/// `rx_packets` across the buffer's segments, parking the buffer while
/// there is none (one packet per chain: a packet longer than the chain is
/// cut, as a device breaking the rules would).
pub fn net_handler(s: &mut Scripted, q: u32, c: &Chain) -> Option<u32> {
    match q {
        1 => {
            s.tx_packets.push(gather(&c.readable));
            Some(0)
        }
        0 => {
            let p = s.rx_packets.pop_front()?;
            Some(u32::try_from(fill(&c.writable, &p)).unwrap())
        }
        _ => Some(0),
    }
}

/// A socket device: the queues are laid out as the network device's (rx
/// 0, tx 1), and the event queue (2) keeps its buffers parked.
pub fn vsock_handler(s: &mut Scripted, q: u32, c: &Chain) -> Option<u32> {
    match q {
        0 | 1 => net_handler(s, q, c),
        _ => None,
    }
}

fn page(v: u64, sel: u32) -> u32 {
    match sel {
        0 => u32::try_from(v & 0xffff_ffff).unwrap(),
        1 => u32::try_from(v >> 32).unwrap(),
        _ => 0,
    }
}

fn set_page(v: &mut u64, sel: u32, bits: u32) {
    match sel {
        0 => *v = (*v & !0xffff_ffff) | u64::from(bits),
        1 => *v = (*v & 0xffff_ffff) | (u64::from(bits) << 32),
        _ => {}
    }
}

fn set_low(v: &mut u64, bits: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(bits);
}

fn set_high(v: &mut u64, bits: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(bits) << 32);
}

impl RegisterIo for Scripted {
    fn read_reg(&mut self, offset: u64) -> u32 {
        let value = match offset {
            mmio::MAGIC => self.magic,
            mmio::VERSION => self.version,
            mmio::DEVICE_ID => self.device_id,
            mmio::VENDOR_ID => self.vendor_id,
            mmio::DEVICE_FEATURES => page(self.device_features, self.dev_sel),
            mmio::QUEUE_SIZE_MAX => self.queue().map_or(0, |q| q.max),
            mmio::QUEUE_READY => self.queue().map_or(0, |q| q.ready),
            mmio::LEGACY_QUEUE_PFN => self.queue().map_or(0, |q| q.pfn),
            mmio::QUEUE_RESET => match self.queue() {
                Some(q) if q.reset_reads > 0 => {
                    q.reset_reads = q.reset_reads.saturating_sub(1);
                    1
                }
                _ => 0,
            },
            mmio::INTERRUPT_STATUS => self.interrupt_status,
            mmio::STATUS => self.status,
            mmio::SHM_LEN_LOW | mmio::SHM_LEN_HIGH | mmio::SHM_BASE_LOW | mmio::SHM_BASE_HIGH => {
                let r = usize::try_from(self.shm_sel)
                    .ok()
                    .and_then(|i| self.shm.get(i).copied());
                let (base, len) = r.unwrap_or((u64::MAX, u64::MAX));
                match offset {
                    mmio::SHM_LEN_LOW => page(len, 0),
                    mmio::SHM_LEN_HIGH => page(len, 1),
                    mmio::SHM_BASE_LOW => page(base, 0),
                    _ => page(base, 1),
                }
            }
            mmio::CONFIG_GENERATION => {
                if self.generation_flips > 0 {
                    self.generation_flips -= 1;
                    self.generation = self.generation.wrapping_add(1);
                }
                self.generation
            }
            _ => 0,
        };
        self.log.push(Access {
            write: false,
            config: false,
            offset,
            width: 4,
            value,
        });
        value
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        self.log.push(Access {
            write: true,
            config: false,
            offset,
            width: 4,
            value,
        });
        let stop_stuck = self.queue_stop_stuck;
        let reset_reads = self.queue_reset_reads;
        match offset {
            mmio::DEVICE_FEATURES_SEL => self.dev_sel = value,
            mmio::DRIVER_FEATURES_SEL => self.drv_sel = value,
            mmio::DRIVER_FEATURES => {
                let sel = self.drv_sel;
                set_page(&mut self.driver_features, sel, value);
            }
            mmio::LEGACY_GUEST_PAGE_SIZE => self.guest_page_size = value,
            mmio::QUEUE_SEL => self.queue_sel = value,
            mmio::QUEUE_SIZE => {
                if let Some(q) = self.queue() {
                    q.size = value;
                }
            }
            mmio::LEGACY_QUEUE_ALIGN => {
                if let Some(q) = self.queue() {
                    q.align = value;
                }
            }
            mmio::LEGACY_QUEUE_PFN => {
                if let Some(q) = self.queue() {
                    if !(value == 0 && stop_stuck) {
                        q.pfn = value;
                    }
                }
            }
            mmio::QUEUE_READY => {
                if let Some(q) = self.queue() {
                    if !(value == 0 && stop_stuck) {
                        q.ready = value;
                    }
                }
            }
            mmio::QUEUE_RESET if value == 1 => {
                if let Some(q) = self.queue() {
                    q.reset_reads = reset_reads;
                    q.ready = 0;
                    q.last_avail = 0;
                    q.used_idx = 0;
                }
            }
            mmio::QUEUE_DESC_LOW => {
                if let Some(q) = self.queue() {
                    set_low(&mut q.desc, value);
                }
            }
            mmio::QUEUE_DESC_HIGH => {
                if let Some(q) = self.queue() {
                    set_high(&mut q.desc, value);
                }
            }
            mmio::QUEUE_DRIVER_LOW => {
                if let Some(q) = self.queue() {
                    set_low(&mut q.driver, value);
                }
            }
            mmio::QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.queue() {
                    set_high(&mut q.driver, value);
                }
            }
            mmio::QUEUE_DEVICE_LOW => {
                if let Some(q) = self.queue() {
                    set_low(&mut q.device, value);
                }
            }
            mmio::QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.queue() {
                    set_high(&mut q.device, value);
                }
            }
            mmio::QUEUE_NOTIFY => {
                self.notifications.push(value);
                if self.status & status::DRIVER_OK != 0 {
                    self.process(value & 0xffff);
                }
            }
            mmio::INTERRUPT_ACK => {
                self.acks.push(value);
                if !self.interrupt_stuck {
                    self.interrupt_status &= !value;
                }
            }
            mmio::STATUS => {
                if value == 0 {
                    self.reset();
                } else if value & status::FEATURES_OK != 0 && self.refuse_features {
                    self.status = value & !status::FEATURES_OK;
                } else {
                    self.status = value;
                }
            }
            mmio::SHM_SEL => self.shm_sel = value,
            _ => {}
        }
    }

    fn read_config_u8(&mut self, offset: u64) -> u8 {
        let v = self.config_read(offset, 1);
        self.log_config(false, offset, 1, v);
        v.to_le_bytes()[0]
    }

    fn read_config_u16(&mut self, offset: u64) -> u16 {
        let v = self.config_read(offset, 2);
        self.log_config(false, offset, 2, v);
        u16::from_le_bytes([v.to_le_bytes()[0], v.to_le_bytes()[1]])
    }

    fn read_config_u32(&mut self, offset: u64) -> u32 {
        let v = self.config_read(offset, 4);
        self.log_config(false, offset, 4, v);
        v
    }

    fn write_config_u8(&mut self, offset: u64, value: u8) {
        self.log_config(true, offset, 1, u32::from(value));
        self.config_write(offset, 1, u32::from(value));
    }

    fn write_config_u16(&mut self, offset: u64, value: u16) {
        self.log_config(true, offset, 2, u32::from(value));
        self.config_write(offset, 2, u32::from(value));
    }

    fn write_config_u32(&mut self, offset: u64, value: u32) {
        self.log_config(true, offset, 4, value);
        self.config_write(offset, 4, value);
    }
}
