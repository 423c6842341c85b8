//! Loopback: the driver side (`vmmio-driver`) against the device side
//! (`vmmio-device`) in one process.
//!
//! - [`Loopback`] implements the driver's `RegisterIo` by calling
//!   `MmioTransport::read` / `write` of the device side: every register
//!   access of the driver is a real access to the device's register file.
//! - [`GuestHal`] implements the driver's `Hal` over the same
//!   `vm_memory::GuestMemoryMmap` the device reads and writes: queue memory
//!   and bounce buffers are guest pages, addressed by guest-physical
//!   address, exactly as a guest kernel would hand them out.
//! - [`devices`]: small in-memory block, entropy and console devices for
//!   these tests (the real backends live in `vmmio-devices`).

pub mod devices;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmmio_device::{
    ExecMode, Interrupt, InterruptCause, MmioTransport, TransportVersion, VirtioDevice,
    WorkerDevice,
};
use vmmio_driver::{BufferDirection, Hal, RegisterIo, PAGE_SIZE};
use vmmio_spec::mmio;

/// The guest memory type of the loopback.
pub type Mem = GuestMemoryMmap<()>;

/// Guest memory size in bytes.
pub const MEM_SIZE: usize = 32 << 20;
/// First guest-physical byte the [`GuestHal`] hands out (below it: nothing
/// in particular, but page 0 is kept out so that a legacy `QueuePFN` is
/// never 0).
pub const DMA_BASE: u64 = 1 << 20;

/// The driver's register window, routed into a device-side
/// [`MmioTransport`].
pub struct Loopback {
    /// The device side.
    pub transport: MmioTransport<Mem>,
    /// Deliver the device's backend events (`MmioTransport::poll_backends`,
    /// zero timeout) at every driver read of `Status`, as a synchronous
    /// VMM's event loop would between guest accesses; the driver reads
    /// `Status` while it waits for a used buffer. For devices that complete
    /// requests later (the block device's io_uring engine) in
    /// [`ExecMode::Sync`]. Off by default.
    pub poll_backends: bool,
}

impl RegisterIo for Loopback {
    fn read_reg(&mut self, offset: u64) -> u32 {
        if self.poll_backends && offset == mmio::STATUS {
            // An error here is the test's poll(2) failing; the driver's
            // wait then times out and reports it.
            let _ = self.transport.poll_backends(std::time::Duration::ZERO);
        }
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }
    fn read_config_u8(&mut self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        self.transport.read(mmio::CONFIG + offset, &mut b);
        b[0]
    }
    fn read_config_u16(&mut self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        self.transport.read(mmio::CONFIG + offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn read_config_u32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(mmio::CONFIG + offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write_config_u8(&mut self, offset: u64, value: u8) {
        self.transport.write(mmio::CONFIG + offset, &[value]);
    }
    fn write_config_u16(&mut self, offset: u64, value: u16) {
        self.transport
            .write(mmio::CONFIG + offset, &value.to_le_bytes());
    }
    fn write_config_u32(&mut self, offset: u64, value: u32) {
        self.transport
            .write(mmio::CONFIG + offset, &value.to_le_bytes());
    }
}

/// An interrupt line that counts triggers.
#[derive(Debug, Default)]
pub struct Line {
    /// Triggers so far.
    pub count: AtomicU32,
}

impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

struct Pages {
    /// One flag per page from [`DMA_BASE`]: in use.
    used: Vec<bool>,
    /// Search start (next-fit).
    hint: usize,
}

/// The driver's DMA services over the loopback guest memory: pages are
/// guest pages from [`DMA_BASE`] up, addressed by guest-physical address;
/// shared buffers are bounced through such pages.
#[derive(Clone)]
pub struct GuestHal {
    mem: Mem,
    /// Guest-physical address of the first page handed out.
    base: u64,
    pages: Arc<Mutex<Pages>>,
}

impl GuestHal {
    /// A HAL over `mem`, handing out pages from [`DMA_BASE`] to the end of
    /// the first region.
    pub fn new(mem: Mem) -> Self {
        Self::from(mem, DMA_BASE)
    }

    /// A HAL handing out the pages from guest-physical `base` (page
    /// aligned, inside `mem`'s last region) to the end of memory.
    pub fn from(mem: Mem, base: u64) -> Self {
        let end = mem.last_addr().0 + 1;
        let n = usize::try_from(end.saturating_sub(base) / PAGE_SIZE as u64).unwrap_or(0);
        Self {
            base,
            mem,
            pages: Arc::new(Mutex::new(Pages {
                used: vec![false; n],
                hint: 0,
            })),
        }
    }

    /// Pages in use.
    pub fn pages_in_use(&self) -> usize {
        self.pages
            .lock()
            .map(|p| p.used.iter().filter(|u| **u).count())
            .unwrap_or(0)
    }

    fn alloc(&self, pages: usize) -> Option<u64> {
        let mut p = self.pages.lock().ok()?;
        let n = p.used.len();
        if pages == 0 || pages > n {
            return None;
        }
        for k in 0..n {
            let start = (p.hint + k) % n;
            if start + pages > n {
                continue;
            }
            if p.used[start..start + pages].iter().all(|u| !u) {
                p.used[start..start + pages].fill(true);
                p.hint = start + pages;
                return Some(self.base + (start * PAGE_SIZE) as u64);
            }
        }
        None
    }

    fn free(&self, paddr: u64, pages: usize) {
        if let Ok(mut p) = self.pages.lock() {
            let Some(start) = paddr
                .checked_sub(self.base)
                .and_then(|o| usize::try_from(o / PAGE_SIZE as u64).ok())
            else {
                return;
            };
            if let Some(run) = p.used.get_mut(start..start + pages) {
                run.fill(false);
            }
        }
    }

    fn host(&self, paddr: u64) -> Option<NonNull<u8>> {
        NonNull::new(self.mem.get_host_address(GuestAddress(paddr)).ok()?)
    }
}

// SAFETY:
// - `dma_alloc` hands out runs of pages of one guest memory region that the
//   page map marks used until `dma_dealloc`, so nothing else gets them;
//   they are zeroed here, page aligned (the region starts at guest address
//   0 and host mmaps are page aligned), contiguous (one region), reachable
//   by the driver at the host address of the mmap, which lives as long as
//   `self.mem` (each clone of the HAL holds the memory), and by the device
//   at the guest-physical address, which is what it is given;
// - `share` copies the buffer into such pages and returns their guest
//   address; `unshare` copies the device's writes back and frees them.
unsafe impl Hal for GuestHal {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        let paddr = self.alloc(pages)?;
        let host = self.host(paddr)?;
        // Check the run ends inside the region too.
        let last = paddr + (pages * PAGE_SIZE) as u64 - 1;
        self.mem.get_host_address(GuestAddress(last)).ok()?;
        // SAFETY: `pages * PAGE_SIZE` bytes at `host` are this run of the
        // guest memory mmap (checked above), owned by us until freed.
        unsafe { host.as_ptr().write_bytes(0, pages * PAGE_SIZE) };
        Some((paddr, host))
    }

    unsafe fn dma_dealloc(&self, paddr: u64, _vaddr: NonNull<u8>, pages: usize) {
        self.free(paddr, pages);
    }

    unsafe fn share(&self, buffer: NonNull<[u8]>, _direction: BufferDirection) -> Option<u64> {
        let len = buffer.len();
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let (paddr, host) = self.dma_alloc(pages)?;
        // SAFETY: the caller promised `buffer` valid for reads; `host` is a
        // fresh run of at least `len` bytes that cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(buffer.cast::<u8>().as_ptr(), host.as_ptr(), len) };
        Some(paddr)
    }

    unsafe fn unshare(&self, paddr: u64, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        if direction != BufferDirection::DriverToDevice {
            if let Some(host) = self.host(paddr) {
                // SAFETY: `paddr` is the bounce run `share` made for this
                // buffer (caller's promise), `len` bytes long; the caller
                // promised `buffer` valid for writes.
                unsafe {
                    std::ptr::copy_nonoverlapping(host.as_ptr(), buffer.cast::<u8>().as_ptr(), len)
                };
            }
        }
        self.free(paddr, len.div_ceil(PAGE_SIZE).max(1));
    }
}

/// A device window with its guest memory, ready for the driver.
pub struct Window {
    /// The driver's register window.
    pub io: Loopback,
    /// The driver's DMA services over the same memory.
    pub hal: GuestHal,
    /// The interrupt line.
    pub line: Arc<Line>,
}

/// Puts `device` behind a fresh loopback window of layout `version`; the
/// device runs synchronously, inside the driver's `QueueNotify` store.
pub fn window(version: TransportVersion, device: Box<dyn VirtioDevice<Mem> + Send>) -> Window {
    window_in(ExecMode::Sync, version, device)
}

/// Puts `device` behind a fresh loopback window of layout `version`,
/// running it as `exec` says ([`ExecMode::Worker`]: on its own thread,
/// through [`WorkerDevice`]).
///
/// # Panics
/// When the worker thread cannot be started (a test fixture).
pub fn window_in(
    exec: ExecMode,
    version: TransportVersion,
    device: Box<dyn VirtioDevice<Mem> + Send>,
) -> Window {
    let device: Box<dyn VirtioDevice<Mem> + Send> = match exec {
        ExecMode::Sync => device,
        ExecMode::Worker => Box::new(WorkerDevice::new(device).expect("device worker")),
    };
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    window_on(mem, DMA_BASE, version, device)
}

/// Guest-physical address of the memory above 4 GiB of [`window_high`].
pub const HIGH_BASE: u64 = 0x1_2340_0000;

/// As [`window`], with guest memory in two regions, [`MEM_SIZE`] at 0 and
/// 16 MiB at [`HIGH_BASE`], and every DMA page (rings, indirect tables,
/// buffers) above 4 GiB: the QueueDesc/Driver/DeviceHigh registers (or a
/// legacy QueuePFN past 2^20) carry real bits.
pub fn window_high(version: TransportVersion, device: Box<dyn VirtioDevice<Mem> + Send>) -> Window {
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), MEM_SIZE),
        (GuestAddress(HIGH_BASE), 16 << 20),
    ])
    .expect("guest memory");
    window_on(mem, HIGH_BASE, version, device)
}

fn window_on(
    mem: Mem,
    dma_base: u64,
    version: TransportVersion,
    device: Box<dyn VirtioDevice<Mem> + Send>,
) -> Window {
    let line = Arc::new(Line::default());
    let transport = MmioTransport::new(version, device, mem.clone(), line.clone());
    Window {
        io: Loopback {
            transport,
            poll_backends: false,
        },
        hal: GuestHal::from(mem, dma_base),
        line,
    }
}

/// Pearson's chi-square statistic of `data` against bytes uniform over
/// 0..=255 (255 degrees of freedom): `sum((count - n/256)^2 / (n/256))`.
pub fn chi_square_bytes(data: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let expected = data.len() as f64 / 256.0;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// Asserts that `data` (at least 4096 bytes) looks like uniform random
/// bytes: its chi-square statistic ([`chi_square_bytes`], 255 degrees of
/// freedom, mean 255) lies in 141..415, the two-sided band a uniform
/// source leaves with probability about 2 * 10^-9 (Wilson-Hilferty, six
/// standard deviations). Constant bytes, a counter (too even: near 0),
/// a narrow range or a biased source fail.
pub fn assert_uniform_bytes(data: &[u8], what: &str) {
    assert!(data.len() >= 4096, "{what}: too few bytes for the test");
    let chi2 = chi_square_bytes(data);
    assert!(
        (141.0..415.0).contains(&chi2),
        "{what}: chi-square {chi2:.1} of {} bytes is outside 141..415",
        data.len()
    );
}

#[cfg(test)]
mod chi_square_tests {
    use super::*;

    #[test]
    fn chi_square_band_accepts_random_and_refuses_patterns() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_uniform_bytes(&random, "xorshift");
        let counter: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        assert!(chi_square_bytes(&counter) < 1.0);
        assert!(chi_square_bytes(&[7u8; 4096]) > 1e5);
        let half: Vec<u8> = random.iter().map(|b| b & 0x7f).collect();
        assert!(chi_square_bytes(&half) > 415.0);
    }
}
