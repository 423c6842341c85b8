//! DMA: the [`Hal`] trait the platform implements, [`Dma`] (an owned DMA
//! allocation) and [`IdentityHal`] (device address = driver address).
//!
//! The device reaches driver memory only through addresses the [`Hal`]
//! hands out: queue memory from [`Hal::dma_alloc`], caller buffers from
//! [`Hal::share`]. A platform with an IOMMU, a bounce buffer (swiotlb) or a
//! loopback into a separate guest memory implements the translation there.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;

use crate::error::{Error, Result};

/// Size in bytes of one DMA page: the unit of [`Hal::dma_alloc`], the
/// alignment of every allocation, and the legacy `GuestPageSize` and
/// `QueueAlign` the driver writes (virtio v1.4 §4.2.4).
pub const PAGE_SIZE: usize = 4096;

/// Which way a shared buffer's data flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferDirection {
    /// The device only reads the buffer (a device-readable descriptor).
    DriverToDevice,
    /// The device only writes the buffer (a device-writable descriptor).
    DeviceToDriver,
    /// The device may read and write the buffer.
    Both,
}

/// The platform's DMA services: memory the device can reach, and the
/// addresses it reaches it at.
///
/// # Safety
///
/// Implementing this trait is unsafe because the driver builds raw pointer
/// accesses and device-visible addresses on its answers. The implementer
/// promises:
/// - [`dma_alloc`](Hal::dma_alloc)`(pages)` returns, on success, memory of
///   `pages * PAGE_SIZE` bytes that is zeroed, aligned to [`PAGE_SIZE`]
///   (both the driver pointer and the device address), physically
///   contiguous as the device sees it, readable and writable by the driver
///   through the pointer, visible to the device at the address, and used by
///   nothing else until [`dma_dealloc`](Hal::dma_dealloc);
/// - [`share`](Hal::share) returns an address at which the device sees the
///   buffer's contents (for [`BufferDirection::DriverToDevice`] and `Both`:
///   the contents at the time of the call) until
///   [`unshare`](Hal::unshare), and [`unshare`](Hal::unshare) makes what
///   the device wrote there (for `DeviceToDriver` and `Both`) visible in
///   the buffer;
/// - clones of one `Hal` value refer to the same platform state.
///
/// The driver (the caller) promises:
/// - to pass [`dma_dealloc`](Hal::dma_dealloc) exactly what one
///   `dma_alloc` returned, once, and only after the device can no longer
///   access that memory (queue disabled and read back, or device reset);
/// - to keep a shared buffer valid, and not to access it, between
///   `share` and `unshare`, and to call `unshare` once with the same
///   arguments.
pub unsafe trait Hal {
    /// Allocates `pages` zeroed, physically contiguous pages of
    /// [`PAGE_SIZE`] bytes. Returns the device-visible address and the
    /// driver's pointer, or `None` when memory is exhausted.
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)>;

    /// Frees what [`dma_alloc`](Hal::dma_alloc)`(pages)` returned as
    /// `(paddr, vaddr)`.
    ///
    /// # Safety
    ///
    /// The arguments come from one successful `dma_alloc(pages)` not yet
    /// freed, and the device no longer accesses the memory.
    unsafe fn dma_dealloc(&self, paddr: u64, vaddr: NonNull<u8>, pages: usize);

    /// Makes `buffer` reachable by the device for the given `direction` and
    /// returns its device address, or `None` when it cannot.
    ///
    /// # Safety
    ///
    /// `buffer` is valid for reads (and, unless `DriverToDevice`, writes)
    /// and is neither accessed nor freed until the matching
    /// [`unshare`](Hal::unshare).
    unsafe fn share(&self, buffer: NonNull<[u8]>, direction: BufferDirection) -> Option<u64>;

    /// Ends the sharing `share(buffer, direction)` returned `paddr` for;
    /// device writes become visible in `buffer`.
    ///
    /// # Safety
    ///
    /// Same `paddr`, `buffer` and `direction` as one earlier successful
    /// `share` not yet undone, and the device is done with the buffer.
    unsafe fn unshare(&self, paddr: u64, buffer: NonNull<[u8]>, direction: BufferDirection);
}

/// An owned DMA allocation of whole pages, freed through its [`Hal`] when
/// dropped.
///
/// Queue memory and the class drivers' request buffers live in `Dma`
/// regions. Dropping a `Dma` the device may still access would be a
/// use-after-free by the device: code that cannot prove the device is done
/// (a request timed out) calls [`Dma::leak`] instead.
pub struct Dma<H: Hal> {
    hal: H,
    paddr: u64,
    vaddr: NonNull<u8>,
    pages: usize,
}

// SAFETY: a Dma exclusively owns its allocation (the `Hal` promises it is
// used by nothing else), like a `Box<[u8]>`; moving it to another thread
// moves that ownership. `H: Send` covers the Hal handle it carries.
unsafe impl<H: Hal + Send> Send for Dma<H> {}

impl<H: Hal> core::fmt::Debug for Dma<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dma")
            .field("paddr", &format_args!("{:#x}", self.paddr))
            .field("pages", &self.pages)
            .finish()
    }
}

impl<H: Hal> Dma<H> {
    /// Allocates at least `bytes` bytes (rounded up to whole pages, at
    /// least one page), zeroed.
    ///
    /// # Errors
    ///
    /// [`Error::DmaAlloc`] when the [`Hal`] has no memory or `bytes` is
    /// absurdly large.
    pub fn new(hal: H, bytes: usize) -> Result<Self> {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        if pages.checked_mul(PAGE_SIZE).is_none() {
            return Err(Error::DmaAlloc { pages });
        }
        let (paddr, vaddr) = hal.dma_alloc(pages).ok_or(Error::DmaAlloc { pages })?;
        Ok(Self {
            hal,
            paddr,
            vaddr,
            pages,
        })
    }

    /// The device-visible address of byte 0.
    pub fn paddr(&self) -> u64 {
        self.paddr
    }

    /// The size in bytes (a multiple of [`PAGE_SIZE`]).
    pub fn len(&self) -> usize {
        // Cannot overflow: `new` checked `pages * PAGE_SIZE`.
        self.pages * PAGE_SIZE
    }

    /// Always false: a `Dma` holds at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::DmaOutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    /// Copies `data` into the region at byte `offset`.
    ///
    /// Use only for bytes the device is not accessing (not in flight).
    ///
    /// # Errors
    ///
    /// [`Error::DmaOutOfBounds`] when the range leaves the region.
    pub fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        #[cfg(test)]
        write_log::record(self.paddr + offset as u64, data.len());
        // SAFETY:
        // - validity: `check` proved `offset + len <= self.len()`, and the
        //   Hal promised `self.len()` bytes writable at `vaddr`;
        // - non-overlap: `data` is a Rust slice, so it is not inside DMA
        //   memory this `Dma` exclusively owns (`&mut self`);
        // - alignment: bytes need none.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.vaddr.as_ptr().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// Copies bytes at `offset` out of the region into `out`.
    ///
    /// Use only for bytes the device is not accessing (after their used
    /// entry was read).
    ///
    /// # Errors
    ///
    /// [`Error::DmaOutOfBounds`] when the range leaves the region.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: as in `write_bytes`, with `out` the destination; `out` is
        // a distinct Rust slice, so the ranges do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.vaddr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Fills the whole region with zeroes (volatile: the device may look).
    pub fn zero(&mut self) {
        #[cfg(test)]
        write_log::record(self.paddr, self.len());
        for i in 0..self.len() {
            // SAFETY: `i < self.len()`, inside the allocation the Hal
            // promised writable.
            unsafe { self.vaddr.as_ptr().add(i).write_volatile(0) };
        }
    }

    /// Gives up the memory without freeing it: for memory the device may
    /// still access (a request that timed out, a queue that would not
    /// stop). Leaking is always safe.
    pub fn leak(self) {
        core::mem::forget(self);
    }

    /// Pointer to a `T` at `offset` after checking bounds and alignment.
    /// Panics on a bad offset: offsets are computed by this crate from the
    /// queue size it chose, never taken from the device.
    ///
    /// Inlined, with one compare for the bounds and one test for the
    /// alignment (`T` is 2, 4 or 8 bytes), as it runs for every ring access.
    #[inline(always)]
    fn typed<T>(&self, offset: usize) -> *mut T {
        let size = core::mem::size_of::<T>();
        // `len() >= PAGE_SIZE > size`: no underflow; `offset <= len - size`
        // is `offset + size <= len` without the overflow check.
        if offset > self.len() - size || !offset.is_multiple_of(size) {
            bad_access(size, offset, self.len());
        }
        // SAFETY: in bounds (checked above).
        unsafe { self.vaddr.as_ptr().add(offset).cast::<T>() }
    }

    /// Volatile load of the `u16` at `offset` (memory representation).
    pub(crate) fn load16(&self, offset: usize) -> u16 {
        // SAFETY: `typed` checked bounds and alignment (vaddr is page
        // aligned); the Hal promised the memory readable.
        unsafe { self.typed::<u16>(offset).read_volatile() }
    }

    /// Volatile load of the `u32` at `offset` (memory representation).
    pub(crate) fn load32(&self, offset: usize) -> u32 {
        // SAFETY: as in `load16`.
        unsafe { self.typed::<u32>(offset).read_volatile() }
    }

    /// Volatile store of a `u16` at `offset` (memory representation).
    pub(crate) fn store16(&mut self, offset: usize, v: u16) {
        #[cfg(test)]
        write_log::record(self.paddr + offset as u64, 2);
        // SAFETY: as in `load16`, writable.
        unsafe { self.typed::<u16>(offset).write_volatile(v) }
    }

    /// Volatile store of a `u32` at `offset` (memory representation).
    pub(crate) fn store32(&mut self, offset: usize, v: u32) {
        #[cfg(test)]
        write_log::record(self.paddr + offset as u64, 4);
        // SAFETY: as in `load16`, writable.
        unsafe { self.typed::<u32>(offset).write_volatile(v) }
    }

    /// Volatile store of a `u64` at `offset` (memory representation).
    pub(crate) fn store64(&mut self, offset: usize, v: u64) {
        #[cfg(test)]
        write_log::record(self.paddr + offset as u64, 8);
        // SAFETY: as in `load16`, writable; offsets used are 8-aligned.
        unsafe { self.typed::<u64>(offset).write_volatile(v) }
    }

    /// Volatile store of 16 bytes at `offset` (16-aligned; memory
    /// representation): a whole descriptor with one bounds check. The
    /// device reads it only after the release that publishes it, so the
    /// store need not be single-copy atomic.
    pub(crate) fn store128(&mut self, offset: usize, v: [u8; 16]) {
        #[cfg(test)]
        write_log::record(self.paddr + offset as u64, 16);
        // SAFETY: as in `load16`, writable; `typed` checked 16-alignment.
        unsafe {
            self.typed::<u128>(offset)
                .write_volatile(u128::from_ne_bytes(v))
        }
    }
}

/// Test-only ordering oracle: the device address and length of every
/// write through a [`Dma`] on this thread, in program order, while
/// recording (`start` .. `take`).
#[cfg(test)]
pub(crate) mod write_log {
    use std::cell::RefCell;
    use std::vec::Vec;

    std::thread_local! {
        static LOG: RefCell<Option<Vec<(u64, usize)>>> = const { RefCell::new(None) };
    }

    /// Starts (or restarts) recording, with an empty log.
    pub(crate) fn start() {
        LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
    }

    /// The writes since `start` or the previous `take`; recording goes on.
    pub(crate) fn take() -> Vec<(u64, usize)> {
        LOG.with(|l| {
            l.borrow_mut()
                .as_mut()
                .map(core::mem::take)
                .unwrap_or_default()
        })
    }

    pub(super) fn record(addr: u64, len: usize) {
        LOG.with(|l| {
            if let Some(v) = l.borrow_mut().as_mut() {
                v.push((addr, len));
            }
        });
    }
}

/// The panic of [`Dma::typed`], out of line so the check stays small.
#[cold]
#[inline(never)]
fn bad_access(size: usize, offset: usize, len: usize) -> ! {
    panic!("driver bug: {size}-byte DMA access at {offset} of {len}")
}

impl<H: Hal> Drop for Dma<H> {
    fn drop(&mut self) {
        // SAFETY: `paddr`, `vaddr`, `pages` come from one `dma_alloc` and
        // are freed once (here); code that cannot prove the device is done
        // calls `leak` instead of dropping.
        unsafe { self.hal.dma_dealloc(self.paddr, self.vaddr, self.pages) };
    }
}

/// A [`Hal`] for platforms where the device sees driver memory at the
/// driver's own addresses: identity-mapped firmware without an IOMMU, and
/// hosted tests that play the device in the same address space.
///
/// Allocates from the global allocator (page aligned, zeroed);
/// [`share`](Hal::share) returns the buffer's address unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityHal;

impl IdentityHal {
    fn layout(pages: usize) -> Option<Layout> {
        Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
    }
}

// SAFETY: allocations come from `alloc_zeroed` with a page-sized, page
// aligned layout (zeroed, aligned, exclusively ours until `dealloc`); the
// device address is the pointer's value, which is where a device in an
// identity-mapped address space finds it; `share` returns the buffer's own
// address, so the device sees and writes the buffer itself. Contiguity as
// the device sees it holds by the identity-mapping assumption this type's
// docs state.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        let layout = Self::layout(pages.max(1))?;
        // SAFETY: the layout has a non-zero size (at least one page).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some((ptr.as_ptr() as usize as u64, ptr))
    }

    unsafe fn dma_dealloc(&self, _paddr: u64, vaddr: NonNull<u8>, pages: usize) {
        if let Some(layout) = Self::layout(pages.max(1)) {
            // SAFETY: the caller passes what `dma_alloc(pages)` returned,
            // which was allocated with this very layout.
            unsafe { dealloc(vaddr.as_ptr(), layout) };
        }
    }

    unsafe fn share(&self, buffer: NonNull<[u8]>, _direction: BufferDirection) -> Option<u64> {
        Some(buffer.cast::<u8>().as_ptr() as usize as u64)
    }

    unsafe fn unshare(&self, _paddr: u64, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// A test [`Hal`] that shares through bounce buffers, as swiotlb does:
/// the device sees a copy, and what it writes reaches the caller's
/// buffer only at `unshare`. It counts the shares not yet undone, so a
/// test can tell a buffer that was never unshared.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct BounceHal(std::rc::Rc<std::cell::RefCell<std::vec::Vec<Bounce>>>);

/// One live share of a [`BounceHal`]: the device address and the copy.
#[cfg(test)]
type Bounce = (u64, std::vec::Vec<u8>);

#[cfg(test)]
impl BounceHal {
    /// Shares not yet undone.
    pub(crate) fn live(&self) -> usize {
        self.0.borrow().len()
    }

    /// The bounce copy the device sees at `paddr`.
    pub(crate) fn device_view(&self, paddr: u64) -> std::vec::Vec<u8> {
        let b = self.0.borrow();
        b.iter()
            .find(|e| e.0 == paddr)
            .expect("not shared")
            .1
            .clone()
    }

    /// Plays the device: writes `data` into the bounce copy at `paddr`.
    pub(crate) fn device_write(&self, paddr: u64, data: &[u8]) {
        let mut b = self.0.borrow_mut();
        let e = b.iter_mut().find(|e| e.0 == paddr).expect("not shared");
        e.1[..data.len()].copy_from_slice(data);
    }
}

// SAFETY: DMA memory is IdentityHal's; a shared buffer's device address
// is its bounce copy's (heap memory that does not move while listed),
// filled at `share` for data the device reads and copied back at
// `unshare` for data it writes, which is the contract.
#[cfg(test)]
unsafe impl Hal for BounceHal {
    fn dma_alloc(&self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        IdentityHal.dma_alloc(pages)
    }

    unsafe fn dma_dealloc(&self, paddr: u64, vaddr: NonNull<u8>, pages: usize) {
        // SAFETY: forwarded as received.
        unsafe { IdentityHal.dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn share(&self, buffer: NonNull<[u8]>, direction: BufferDirection) -> Option<u64> {
        let copy = if direction == BufferDirection::DeviceToDriver {
            std::vec![0; buffer.len()]
        } else {
            // SAFETY: the caller promises `buffer` is valid for reads.
            unsafe { buffer.as_ref() }.to_vec()
        };
        let paddr = copy.as_ptr() as usize as u64;
        self.0.borrow_mut().push((paddr, copy));
        Some(paddr)
    }

    unsafe fn unshare(&self, paddr: u64, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut b = self.0.borrow_mut();
        let i = b
            .iter()
            .position(|e| e.0 == paddr)
            .expect("unshare of a buffer not shared");
        let (_, copy) = b.swap_remove(i);
        assert_eq!(copy.len(), buffer.len(), "unshare with another length");
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the caller promises `buffer` is valid for writes
            // (not DriverToDevice) and that the device is done with it.
            unsafe { buffer.as_mut() }.copy_from_slice(&copy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_is_zeroed_aligned_and_bounds_checked() {
        let mut d = Dma::new(IdentityHal, 5000).unwrap();
        assert_eq!(d.len(), 2 * PAGE_SIZE);
        assert_eq!(d.paddr() % PAGE_SIZE as u64, 0);
        let mut buf = [1u8; 16];
        d.read_bytes(8000, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
        d.write_bytes(10, b"hello").unwrap();
        d.read_bytes(10, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(
            d.write_bytes(8190, b"abc"),
            Err(Error::DmaOutOfBounds {
                offset: 8190,
                len: 3,
                size: 8192
            })
        );
        assert!(d.read_bytes(usize::MAX, &mut buf).is_err());
        d.store16(2, 0x1234);
        assert_eq!(d.load16(2), 0x1234);
        d.zero();
        assert_eq!(d.load32(0), 0);
    }

    #[test]
    fn dma_alloc_failure_is_an_error() {
        assert!(matches!(
            Dma::new(IdentityHal, usize::MAX),
            Err(Error::DmaAlloc { .. })
        ));
    }
}
