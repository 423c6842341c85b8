//! Our driver's platform traits over QEMU: [`QtestWindow`] implements
//! [`RegisterIo`] with qtest loads and stores, [`QtestHal`] implements
//! [`Hal`] over guest RAM shared with QEMU.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use vmmio_driver::{BufferDirection, Hal, Limits, RegisterIo, PAGE_SIZE};
use vmmio_spec::mmio;

use crate::client::{QtestClient, QtestError};
use crate::memory::GuestRam;

/// One virtio-mmio window of QEMU's, reached through the qtest socket:
/// each [`RegisterIo`] call is exactly one `readX`/`writeX` command of that
/// width at `base + offset` (config offsets `base + 0x100 + offset`).
///
/// [`RegisterIo`] cannot fail, so a qtest error (QEMU died, hung past the
/// client's timeout, or refused the access) panics with the error and the
/// address: in a test, that is the failure to report.
#[derive(Clone, Debug)]
pub struct QtestWindow {
    client: Arc<Mutex<QtestClient>>,
    base: u64,
}

impl QtestWindow {
    /// The window at guest-physical `base`, over `client`.
    pub fn new(client: Arc<Mutex<QtestClient>>, base: u64) -> Self {
        Self { client, base }
    }

    /// The window's guest-physical base.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn with<T>(
        &self,
        offset: u64,
        f: impl FnOnce(&mut QtestClient, u64) -> Result<T, QtestError>,
    ) -> T {
        let addr = self
            .base
            .checked_add(offset)
            .unwrap_or_else(|| panic!("register offset {offset:#x} overflows the address space"));
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut client, addr).unwrap_or_else(|e| panic!("qtest access at {addr:#x} failed: {e}"))
    }

    fn config(offset: u64) -> u64 {
        mmio::CONFIG.saturating_add(offset)
    }
}

impl RegisterIo for QtestWindow {
    fn read_reg(&mut self, offset: u64) -> u32 {
        self.with(offset, |c, a| c.readl(a))
    }
    fn write_reg(&mut self, offset: u64, value: u32) {
        self.with(offset, |c, a| c.writel(a, value))
    }
    fn read_config_u8(&mut self, offset: u64) -> u8 {
        self.with(Self::config(offset), |c, a| c.readb(a))
    }
    fn read_config_u16(&mut self, offset: u64) -> u16 {
        self.with(Self::config(offset), |c, a| c.readw(a))
    }
    fn read_config_u32(&mut self, offset: u64) -> u32 {
        self.with(Self::config(offset), |c, a| c.readl(a))
    }
    fn write_config_u8(&mut self, offset: u64, value: u8) {
        self.with(Self::config(offset), |c, a| c.writeb(a, value))
    }
    fn write_config_u16(&mut self, offset: u64, value: u16) {
        self.with(Self::config(offset), |c, a| c.writew(a, value))
    }
    fn write_config_u32(&mut self, offset: u64, value: u32) {
        self.with(Self::config(offset), |c, a| c.writel(a, value))
    }
}

/// DMA over guest RAM shared with QEMU: the device address is the
/// guest-physical address, the driver pointer is the mapping's base plus
/// that address.
///
/// [`Hal::share`] of a buffer already inside guest RAM returns its own
/// guest-physical address; any other buffer is bounced through freshly
/// allocated guest RAM (copied in for device-readable buffers, copied back
/// by [`Hal::unshare`] for device-writable ones). Clones share state.
#[derive(Clone, Debug)]
pub struct QtestHal {
    ram: Arc<GuestRam>,
    /// Bounce blocks in use: guest-physical address -> length in bytes.
    bounces: Arc<Mutex<HashMap<u64, usize>>>,
}

impl QtestHal {
    /// A HAL allocating from `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        Self {
            ram,
            bounces: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Guest RAM this HAL allocates from.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Bounce buffers currently shared (not yet unshared).
    pub fn bounces_in_use(&self) -> usize {
        self.bounces.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

// SAFETY:
// - `dma_alloc`: `GuestRam::alloc` returns a page-aligned guest-physical
//   block of whole pages, zeroed, not handed out again until freed; the
//   pointer is the mapping base (page aligned) plus that address, so it is
//   page aligned too, lies inside the live shared mapping (checked by
//   `host_ptr`), and is what QEMU sees at that guest-physical address:
//   guest RAM is one contiguous file mapping, so the block is contiguous.
// - `share`: a buffer inside the mapping is seen by QEMU at its
//   guest-physical address; any other is copied into a fresh block before
//   the address is returned, and `unshare` copies the block back for
//   device-writable directions, then frees it.
// - Clones hold the same `Arc`s, so they share all state.
unsafe impl Hal for QtestHal {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        let bytes = u64::try_from(pages.checked_mul(PAGE_SIZE)?).ok()?;
        let gpa = self.ram.alloc(bytes).ok()?;
        match self.ram.host_ptr(gpa, bytes) {
            Ok(ptr) => Some((gpa, ptr)),
            Err(_) => {
                self.ram.free(gpa);
                None
            }
        }
    }

    unsafe fn dma_dealloc(&self, paddr: u64, _vaddr: NonNull<u8>, _pages: usize) {
        self.ram.free(paddr);
    }

    unsafe fn share(&self, buffer: NonNull<[u8]>, direction: BufferDirection) -> Option<u64> {
        let len = buffer.len();
        let ptr = buffer.cast::<u8>().as_ptr();
        if let Some(gpa) = self.ram.gpa_of(ptr, len) {
            return Some(gpa);
        }
        let gpa = self.ram.alloc(u64::try_from(len).ok()?).ok()?;
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller promises `buffer` is valid for reads of
            // `len` bytes and not accessed elsewhere until `unshare`.
            let data = unsafe { std::slice::from_raw_parts(ptr, len) };
            if self.ram.write(gpa, data).is_err() {
                self.ram.free(gpa);
                return None;
            }
        }
        self.bounces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gpa, len);
        Some(gpa)
    }

    unsafe fn unshare(&self, paddr: u64, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let Some(len) = self
            .bounces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&paddr)
        else {
            // Shared in place (inside guest RAM): nothing to undo.
            return;
        };
        let len = len.min(buffer.len());
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the caller promises `buffer` is valid for writes
            // (not DriverToDevice) and not accessed elsewhere until now;
            // `len <= buffer.len()`.
            let out = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>().as_ptr(), len) };
            // The bounce block was allocated with at least `len` bytes, so
            // this read is in range; on a (impossible) error the buffer
            // keeps its old contents.
            let _ = self.ram.read(paddr, out);
        }
        self.ram.free(paddr);
    }
}

/// [`Limits`] for a device behind qtest: every poll is one socket round
/// trip (tens of microseconds), so the defaults, sized for real MMIO, would
/// let a stuck QEMU hold a test for many minutes. These keep each wait
/// within roughly ten seconds.
pub fn qtest_limits() -> Limits {
    Limits {
        reset_polls: 20_000,
        queue_polls: 20_000,
        config_retries: 64,
        io_polls: 200_000,
    }
}
