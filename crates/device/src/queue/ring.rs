//! Access to one area of guest memory (a ring, a descriptor table or an
//! indirect table) for the duration of one queue operation.
//!
//! An [`Area`] resolves its guest range once: when the range lies inside one
//! contiguous host mapping (the common case) every later access is a bounds
//! check on a [`VolatileSlice`] and a single volatile or atomic access, with
//! no further region lookup. When it does not (the range straddles two
//! memory regions, or is not backed at all) each access falls back to the
//! generic [`Bytes`] path of [`GuestMemory`], which reports the error.
//!
//! No host pointer outlives the `&M` borrow of the operation that made the
//! area: the guest memory map may change between two queue calls.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions, VolatileMemory, VolatileSlice,
};

use super::{QueueError, RingArea};

/// One resolved area of guest memory, `len` bytes at `base`.
pub(super) struct Area<'a, M: GuestMemory + ?Sized> {
    mem: &'a M,
    base: GuestAddress,
    kind: RingArea,
    /// The whole area as one host slice, when it is contiguous.
    fast: Option<VolatileSlice<'a, BS<'a, M::Bitmap>>>,
}

impl<'a, M: GuestMemory + ?Sized> Area<'a, M> {
    /// Resolves `len` bytes at `base`. Never fails: an unmapped or
    /// fragmented area takes the slow path, where the access itself fails.
    ///
    /// The caller has checked that `base + len` does not overflow.
    #[inline]
    pub(super) fn new(
        mem: &'a M,
        base: GuestAddress,
        len: usize,
        access: Permissions,
        kind: RingArea,
    ) -> Self {
        let fast = match mem.get_slices(base, len, access) {
            Ok(mut slices) => match slices.next() {
                Some(Ok(slice)) if slice.len() == len => Some(slice),
                _ => None,
            },
            Err(_) => None,
        };
        Self {
            mem,
            base,
            kind,
            fast,
        }
    }

    /// The `len` bytes at `offset` into this area as an area of their own,
    /// without another lookup in guest memory when this area is
    /// contiguous. `None` when this area is not contiguous or the range is
    /// not inside it.
    #[inline]
    pub(super) fn sub_area(&self, offset: usize, len: usize, kind: RingArea) -> Option<Self> {
        let slice = self.fast.as_ref()?.subslice(offset, len).ok()?;
        Some(Self {
            mem: self.mem,
            base: self.addr(offset),
            kind,
            fast: Some(slice),
        })
    }

    /// Whether the whole area is backed by one contiguous host mapping.
    #[inline]
    pub(super) fn is_contiguous(&self) -> bool {
        self.fast.is_some()
    }

    /// Guest address of byte `offset` of the area. The callers pass offsets
    /// inside an area whose end was checked not to overflow, so this cannot
    /// wrap; `wrapping_add` keeps a wrong caller from panicking.
    #[inline]
    fn addr(&self, offset: usize) -> GuestAddress {
        GuestAddress(self.base.0.wrapping_add(offset as u64))
    }

    #[inline]
    fn error(&self, offset: usize, source: GuestMemoryError) -> QueueError {
        QueueError::GuestMemory {
            area: self.kind,
            addr: self.addr(offset).0,
            source,
        }
    }

    /// Atomic little-endian `u16` load at `offset` bytes into the area.
    #[inline]
    pub(super) fn load_u16(&self, offset: usize, order: Ordering) -> Result<u16, QueueError> {
        let raw = match &self.fast {
            // `get_atomic_ref` checks bounds and alignment; the load itself
            // is then `core`'s, inlined (`VolatileSlice::load` goes through
            // vm-memory's `AtomicInteger` trait, which is not).
            Some(slice) => slice
                .get_atomic_ref::<AtomicU16>(offset)
                .map(|a| a.load(order))
                .map_err(|e| self.error(offset, e.into())),
            None => self
                .mem
                .load::<u16>(self.addr(offset), order)
                .map_err(|e| self.error(offset, e)),
        }?;
        Ok(u16::from_le(raw))
    }

    /// Atomic little-endian `u16` store at `offset` bytes into the area.
    #[inline]
    pub(super) fn store_u16(
        &self,
        offset: usize,
        value: u16,
        order: Ordering,
    ) -> Result<(), QueueError> {
        let raw = value.to_le();
        match &self.fast {
            // As `VolatileSlice::store`: the atomic store, then the dirty
            // bitmap, with the store inlined.
            Some(slice) => slice
                .get_atomic_ref::<AtomicU16>(offset)
                .map(|a| {
                    a.store(raw, order);
                    slice.bitmap().mark_dirty(offset, 2);
                })
                .map_err(|e| self.error(offset, e.into())),
            None => self
                .mem
                .store(raw, self.addr(offset), order)
                .map_err(|e| self.error(offset, e)),
        }
    }

    /// Reads the 16 bytes at `offset` as one little-endian `u128` (a
    /// `struct virtq_desc`), with a single volatile read on the fast path.
    #[inline]
    pub(super) fn read_u128(&self, offset: usize) -> Result<u128, QueueError> {
        let raw = match &self.fast {
            Some(slice) => slice
                .get_ref::<u128>(offset)
                .map(|r| r.load())
                .map_err(|e| self.error(offset, e.into())),
            None => self
                .mem
                .read_obj::<u128>(self.addr(offset))
                .map_err(|e| self.error(offset, e)),
        }?;
        Ok(u128::from_le(raw))
    }

    /// Writes `value` little-endian as 8 bytes at `offset` (a
    /// `struct virtq_used_elem`), with a single volatile write on the fast
    /// path.
    #[inline]
    pub(super) fn write_u64(&self, offset: usize, value: u64) -> Result<(), QueueError> {
        let raw = value.to_le();
        match &self.fast {
            Some(slice) => slice
                .get_ref::<u64>(offset)
                .map(|r| r.store(raw))
                .map_err(|e| self.error(offset, e.into())),
            None => self
                .mem
                .write_obj::<u64>(raw, self.addr(offset))
                .map_err(|e| self.error(offset, e)),
        }
    }

    /// Atomic little-endian `u64` store at `offset` bytes into the area (8
    /// aligned): one store for the `len`, `id` and `flags` of a packed used
    /// descriptor, so the release ordering covers all three.
    #[inline]
    pub(super) fn store_u64(
        &self,
        offset: usize,
        value: u64,
        order: Ordering,
    ) -> Result<(), QueueError> {
        let raw = value.to_le();
        match &self.fast {
            Some(slice) => slice
                .get_atomic_ref::<AtomicU64>(offset)
                .map(|a| {
                    a.store(raw, order);
                    slice.bitmap().mark_dirty(offset, 8);
                })
                .map_err(|e| self.error(offset, e.into())),
            None => self
                .mem
                .store(raw, self.addr(offset), order)
                .map_err(|e| self.error(offset, e)),
        }
    }
}
