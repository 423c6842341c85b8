//! The guest's RAM, shared between QEMU and the test process.
//!
//! QEMU backs guest RAM with a file (`-object memory-backend-file,...,
//! share=on`); guest-physical address 0 is file offset 0. The test maps the
//! same file, so the rings and buffers our driver writes are the memory
//! QEMU's devices read, with no copy through the qtest socket.
//!
//! [`GuestRam`] hands out page-aligned, zeroed blocks of guest-physical
//! memory from a page allocator starting at [`ALLOC_START`], and copies bytes
//! in and out with volatile accesses (QEMU writes the same memory from
//! another process at any time).

use std::collections::BTreeMap;
use std::fs::File;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use memmap2::MmapRaw;

/// Size in bytes of one allocation page (the guest page size we use).
pub const PAGE_SIZE: u64 = 4096;

/// First guest-physical address the allocator hands out: 1 MiB, above the
/// low memory QEMU's firmware and tables may use.
pub const ALLOC_START: u64 = 0x10_0000;

/// Why [`GuestRam`] could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// The allocator has fewer than `requested` bytes left.
    #[error("guest RAM exhausted: {requested} bytes requested, {left} left")]
    Exhausted {
        /// Bytes asked for, rounded up to whole pages.
        requested: u64,
        /// Bytes still free above the allocator's cursor.
        left: u64,
    },
    /// `[gpa, gpa + len)` is not inside guest RAM.
    #[error("guest-physical range {gpa:#x} + {len:#x} is outside guest RAM ({size:#x} bytes)")]
    OutOfRange {
        /// Start of the range.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// Size of guest RAM in bytes.
        size: u64,
    },
    /// Mapping the RAM file failed.
    #[error("cannot map the guest RAM file")]
    Map(#[source] std::io::Error),
}

/// Guest RAM mapped into the test process, plus a page allocator over it.
#[derive(Debug)]
pub struct GuestRam {
    map: MmapRaw,
    size: u64,
    pages: Mutex<Pages>,
}

/// The allocator's state: a bump cursor and freed blocks by page count.
#[derive(Debug)]
struct Pages {
    next: u64,
    /// Freed blocks: page count -> guest-physical addresses. A block is
    /// reused only for a request of exactly its size.
    free: BTreeMap<u64, Vec<u64>>,
    in_use: BTreeMap<u64, u64>,
}

impl GuestRam {
    /// Maps `file` (QEMU's RAM backend file, at least `size` bytes long) read
    /// and write, shared.
    ///
    /// # Errors
    ///
    /// [`RamError::Map`] if the mapping fails.
    pub fn map(file: &File, size: u64) -> Result<Self, RamError> {
        let len = usize::try_from(size)
            .map_err(|e| RamError::Map(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(RamError::Map)?;
        Ok(Self {
            map,
            size,
            pages: Mutex::new(Pages {
                next: ALLOC_START,
                free: BTreeMap::new(),
                in_use: BTreeMap::new(),
            }),
        })
    }

    /// Size of guest RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Allocates `bytes` (rounded up to whole [`PAGE_SIZE`] pages, at least
    /// one) of zeroed guest RAM and returns its guest-physical address,
    /// page-aligned. A block given back with [`GuestRam::free`] is reused
    /// for a later request of the same page count.
    ///
    /// # Errors
    ///
    /// [`RamError::Exhausted`] if not enough RAM is left.
    pub fn alloc(&self, bytes: u64) -> Result<u64, RamError> {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let requested = pages.saturating_mul(PAGE_SIZE);
        let gpa = {
            let mut state = self.lock();
            let reused = state.free.get_mut(&pages).and_then(Vec::pop);
            let gpa = match reused {
                Some(gpa) => gpa,
                None => {
                    let left = self.size.saturating_sub(state.next);
                    if requested > left {
                        return Err(RamError::Exhausted { requested, left });
                    }
                    let gpa = state.next;
                    // Cannot overflow: requested <= left = size - next.
                    state.next += requested;
                    gpa
                }
            };
            state.in_use.insert(gpa, pages);
            gpa
        };
        self.fill(gpa, requested, 0)?;
        Ok(gpa)
    }

    /// Gives back the block [`GuestRam::alloc`] returned at `gpa`. Returns
    /// false (and changes nothing) if no block starts there.
    pub fn free(&self, gpa: u64) -> bool {
        let mut state = self.lock();
        match state.in_use.remove(&gpa) {
            Some(pages) => {
                state.free.entry(pages).or_default().push(gpa);
                true
            }
            None => false,
        }
    }

    /// Bytes currently allocated (not freed), in whole pages.
    pub fn allocated(&self) -> u64 {
        self.lock().in_use.values().sum::<u64>() * PAGE_SIZE
    }

    fn lock(&self) -> MutexGuard<'_, Pages> {
        // The state is consistent between statements: a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The test-process pointer to guest-physical `gpa`, checking that
    /// `[gpa, gpa + len)` lies inside guest RAM. The pointer stays valid as
    /// long as `self` lives.
    ///
    /// # Errors
    ///
    /// [`RamError::OutOfRange`] if the range is not inside guest RAM.
    pub fn host_ptr(&self, gpa: u64, len: u64) -> Result<NonNull<u8>, RamError> {
        let offset = self.check(gpa, len)?;
        // `check` proved offset + len <= size, the mapping's length.
        let ptr = self.map.as_mut_ptr().wrapping_add(offset);
        NonNull::new(ptr).ok_or(RamError::OutOfRange {
            gpa,
            len,
            size: self.size,
        })
    }

    /// The guest-physical address of a test-process pointer into guest RAM,
    /// or `None` if `ptr .. ptr + len` is not inside the mapping.
    pub fn gpa_of(&self, ptr: *const u8, len: usize) -> Option<u64> {
        let base = self.map.as_ptr() as usize;
        let offset = (ptr as usize).checked_sub(base)?;
        let end = offset.checked_add(len)?;
        if end > self.map.len() {
            return None;
        }
        u64::try_from(offset).ok()
    }

    /// Copies `buf.len()` bytes from guest-physical `gpa` into `buf`.
    ///
    /// # Errors
    ///
    /// [`RamError::OutOfRange`] if the range is not inside guest RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        let src = self.host_ptr(gpa, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY:
            // - validity: `host_ptr` checked `[gpa, gpa + buf.len())` lies in
            //   the live mapping, so `src + i` is in bounds for i < len;
            // - alignment: u8 needs none;
            // - concurrent writers (QEMU) make this a volatile read of plain
            //   bytes, for which every bit pattern is valid.
            *b = unsafe { src.as_ptr().add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `data` to guest-physical `gpa`.
    ///
    /// # Errors
    ///
    /// [`RamError::OutOfRange`] if the range is not inside guest RAM.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RamError> {
        let dst = self.host_ptr(gpa, data.len() as u64)?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY:
            // - validity: `host_ptr` checked `[gpa, gpa + data.len())` lies
            //   in the live, writable mapping;
            // - alignment: u8 needs none;
            // - the memory is plain bytes shared with QEMU, never a Rust
            //   reference, so a volatile store aliases nothing.
            unsafe { dst.as_ptr().add(i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Sets `len` bytes at guest-physical `gpa` to `value`.
    ///
    /// # Errors
    ///
    /// [`RamError::OutOfRange`] if the range is not inside guest RAM.
    pub fn fill(&self, gpa: u64, len: u64, value: u8) -> Result<(), RamError> {
        let dst = self.host_ptr(gpa, len)?;
        let len = usize::try_from(len).map_err(|_| RamError::OutOfRange {
            gpa,
            len,
            size: self.size,
        })?;
        // SAFETY:
        // - validity: `host_ptr` checked `[gpa, gpa + len)` lies in the live,
        //   writable mapping;
        // - the memory is plain bytes shared with QEMU, never a Rust
        //   reference, so the store aliases nothing we hold.
        unsafe { dst.as_ptr().write_bytes(value, len) };
        Ok(())
    }

    /// Reads a little-endian u16 at guest-physical `gpa`.
    ///
    /// # Errors
    ///
    /// [`RamError::OutOfRange`] if the range is not inside guest RAM.
    pub fn read_u16(&self, gpa: u64) -> Result<u16, RamError> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian u32 at guest-physical `gpa`.
    ///
    /// # Errors
    ///
    /// [`RamError::OutOfRange`] if the range is not inside guest RAM.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, RamError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn check(&self, gpa: u64, len: u64) -> Result<usize, RamError> {
        let err = RamError::OutOfRange {
            gpa,
            len,
            size: self.size,
        };
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => usize::try_from(gpa).map_err(|_| err),
            _ => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(size: u64) -> (tempfile::NamedTempFile, GuestRam) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(size).expect("set_len");
        let ram = GuestRam::map(file.as_file(), size).expect("map");
        (file, ram)
    }

    #[test]
    fn alloc_is_page_aligned_zeroed_and_bounded() {
        let (_f, ram) = ram(ALLOC_START + 3 * PAGE_SIZE);
        let a = ram.alloc(1).expect("first page");
        assert_eq!(a, ALLOC_START);
        ram.write(a, &[0xaa; 16]).expect("write");
        let b = ram.alloc(PAGE_SIZE + 1).expect("two pages");
        assert_eq!(b, ALLOC_START + PAGE_SIZE);
        let mut buf = [1u8; 32];
        ram.read(b, &mut buf).expect("read");
        assert_eq!(buf, [0; 32]);
        assert!(matches!(
            ram.alloc(1),
            Err(RamError::Exhausted { left: 0, .. })
        ));
        assert_eq!(ram.allocated(), 3 * PAGE_SIZE);
        assert!(ram.free(a));
        assert!(!ram.free(a), "double free is refused");
        assert!(ram.alloc(2 * PAGE_SIZE).is_err(), "no two-page block free");
        assert_eq!(ram.alloc(10).expect("reused"), a);
        let mut buf = [1u8; 16];
        ram.read(a, &mut buf).expect("read");
        assert_eq!(buf, [0; 16], "reused memory is zeroed again");
    }

    #[test]
    fn ranges_outside_ram_are_refused() {
        let (_f, ram) = ram(2 * ALLOC_START);
        let size = ram.size();
        assert!(ram.write(size - 4, &[0; 4]).is_ok());
        assert!(ram.write(size - 3, &[0; 4]).is_err());
        assert!(ram.host_ptr(u64::MAX, 2).is_err());
        let p = ram.host_ptr(0x1234, 8).expect("in range");
        assert_eq!(ram.gpa_of(p.as_ptr(), 8), Some(0x1234));
        assert_eq!(ram.gpa_of(p.as_ptr(), usize::MAX), None);
        ram.write(0x10, &0xdead_beefu32.to_le_bytes())
            .expect("write");
        assert_eq!(ram.read_u32(0x10).expect("read"), 0xdead_beef);
        assert_eq!(ram.read_u16(0x12).expect("read"), 0xdead);
    }
}
