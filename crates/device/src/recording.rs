//! A guest memory that logs every write in program order: the oracle for
//! the spec's ordering rules (virtio v1.4 §2.7.8.2 "the device MUST write
//! the used element before updating `used.idx`", §2.7.13 for the driver's
//! side, "the device MUST NOT write to a device-readable buffer", ...).
//!
//! A test, or an embedder checking its own device, builds guest memory with
//! [`recording_memory`] and passes it where a [`vm_memory::GuestMemory`] is
//! expected ([`crate::Queue`], [`crate::MmioTransport`], a backend). Every
//! write through vm-memory, fast path or slow (volatile slices, atomic
//! stores, `Bytes`), marks the region's dirty bitmap; the bitmap here is a
//! [`WriteLog`] that appends `(guest address, length)` to a shared [`Log`]
//! instead of setting bits. Reads are not logged. A write made through a
//! raw host pointer (`as_ptr`) bypasses vm-memory and is not seen.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Why [`recording_memory`] failed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Guest memory whose writes are logged (see the module docs).
pub type RecordingMemory = GuestMemoryMmap<WriteLog>;

/// One logged write: `len` bytes at guest-physical address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// Guest-physical address of the first byte written.
    pub addr: u64,
    /// Number of bytes written.
    pub len: u64,
}

impl Write {
    /// Whether this write touched any byte of `len` bytes at `addr`.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        let end = self.addr.saturating_add(self.len);
        let other_end = addr.saturating_add(len);
        self.len != 0 && len != 0 && self.addr < other_end && addr < end
    }
}

/// The shared, ordered list of writes of one [`RecordingMemory`]. Clones
/// refer to the same list.
#[derive(Clone, Debug, Default)]
pub struct Log(Arc<Mutex<Vec<Write>>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<Write>> {
        // A test that panicked while holding the lock leaves a usable list.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, write: Write) {
        self.lock().push(write);
    }

    /// The writes so far, oldest first; the log is emptied.
    pub fn take(&self) -> Vec<Write> {
        std::mem::take(&mut *self.lock())
    }

    /// The writes so far, oldest first; the log keeps them.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().clone()
    }

    /// Forgets every write so far (call it after setting up the rings).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Position in `writes` of the first write that touches `len` bytes at
/// `addr`, if any.
pub fn first_write(writes: &[Write], addr: u64, len: u64) -> Option<usize> {
    writes.iter().position(|w| w.overlaps(addr, len))
}

/// Position in `writes` of the last write that touches `len` bytes at
/// `addr`, if any.
pub fn last_write(writes: &[Write], addr: u64, len: u64) -> Option<usize> {
    writes.iter().rposition(|w| w.overlaps(addr, len))
}

/// The dirty "bitmap" of one region of a [`RecordingMemory`]: appends each
/// write to the memory's [`Log`] with its guest-physical address.
///
/// It is its own bitmap slice: a slice is the same log with a later base.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    /// Guest-physical address of the region's first byte.
    base: u64,
    log: Log,
}

impl WriteLog {
    /// The bitmap of a region starting at guest-physical `base`, logging
    /// into `log`.
    pub fn new(base: GuestAddress, log: Log) -> Self {
        Self { base: base.0, log }
    }
}

impl WithBitmapSlice<'_> for WriteLog {
    type S = Self;
}

impl BitmapSlice for WriteLog {}

impl Bitmap for WriteLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.log.push(Write {
            addr: self.base.wrapping_add(offset as u64),
            len: len as u64,
        });
    }

    fn dirty_at(&self, offset: usize) -> bool {
        let addr = self.base.wrapping_add(offset as u64);
        self.log.lock().iter().any(|w| w.overlaps(addr, 1))
    }

    fn slice_at(&self, offset: usize) -> Self {
        Self {
            base: self.base.wrapping_add(offset as u64),
            log: self.log.clone(),
        }
    }
}

/// Zeroed anonymous guest memory with one region per `(start, bytes)`
/// range (sorted, not overlapping), and the log of its writes.
///
/// # Errors
///
/// The `mmap` of a region fails, a range overflows the address space, or
/// ranges overlap (the error says which).
pub fn recording_memory(ranges: &[(GuestAddress, usize)]) -> Result<(RecordingMemory, Log), Error> {
    let log = Log::default();
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, bytes) in ranges {
        let mapping = MmapRegionBuilder::new_with_bitmap(bytes, WriteLog::new(start, log.clone()))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("mmap of {bytes} bytes for {start:?}: {e}"))?;
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| format!("{bytes} bytes at {start:?} overflow"))?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions)?;
    Ok((mem, log))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn writes_are_logged_in_order_with_guest_addresses() {
        let high = GuestAddress(0x1_2340_0000);
        let (mem, log) = recording_memory(&[(GuestAddress(0), 0x1000), (high, 0x1000)]).unwrap();
        mem.write_obj(7u32, GuestAddress(0x10)).unwrap();
        mem.write_obj(1u16, GuestAddress(high.0 + 2)).unwrap();
        let _: u64 = mem.read_obj(GuestAddress(0x10)).unwrap();
        assert_eq!(
            log.take(),
            [
                Write { addr: 0x10, len: 4 },
                Write {
                    addr: high.0 + 2,
                    len: 2
                }
            ]
        );
        assert!(log.writes().is_empty());
    }

    #[test]
    fn overlap_and_positions() {
        let w = [
            Write { addr: 8, len: 8 },
            Write { addr: 2, len: 2 },
            Write { addr: 8, len: 4 },
        ];
        assert!(!w[0].overlaps(0, 8));
        assert!(w[0].overlaps(15, 1));
        assert!(!w[0].overlaps(16, 1));
        assert!(!w[0].overlaps(8, 0));
        assert_eq!(first_write(&w, 12, 4), Some(0));
        assert_eq!(last_write(&w, 8, 1), Some(2));
        assert_eq!(first_write(&w, 4, 4), None);
    }
}
