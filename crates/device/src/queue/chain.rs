//! Descriptor chains: what the device sees, and how a chain is walked out of
//! the descriptor table and indirect tables (virtio v1.4 §2.7.5 "The
//! Virtqueue Descriptor Table", §2.7.5.3 "Indirect Descriptors").

use vm_memory::{Address, GuestAddress, GuestMemory, Permissions};
use vmmio_spec::split::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

use super::ring::Area;
use super::{QueueError, RingArea};

/// Largest indirect table accepted, in descriptors (32768, so at most
/// 512 KiB of table). The spec bounds a chain by the queue size (§2.7.5.3.1);
/// we accept indirect tables up to the largest queue size so that a driver
/// with a small queue and a long scatter list still works, while the work
/// and memory one chain can cost stay bounded.
pub const MAX_INDIRECT_DESCRIPTORS: u32 = 32768;

/// Descriptors a [`DescriptorChain`] holds without a heap allocation.
pub const INLINE_DESCRIPTORS: usize = 4;

/// One descriptor of a chain, as the device sees it (virtio v1.4 §2.7.5).
///
/// Chain walking has checked that `addr + len` does not overflow; it has not
/// checked that the buffer is inside guest memory: the backend's accesses
/// through `vm-memory` do that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: GuestAddress,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// Device-writable (`true`, `VIRTQ_DESC_F_WRITE` set) or device-readable
    /// (`false`).
    pub writable: bool,
}

const EMPTY: Descriptor = Descriptor {
    addr: GuestAddress(0),
    len: 0,
    writable: false,
};

/// A descriptor chain popped from the available ring (virtio v1.4 §2.7.5,
/// §2.7.6): its head index and its descriptors in chain order, device-readable
/// ones first, then device-writable ones, with any indirect table flattened
/// in place of the descriptor that referred to it.
///
/// Up to [`INLINE_DESCRIPTORS`] descriptors are stored inline; longer chains
/// use a heap vector that [`Queue::pop_into`](super::Queue::pop_into) keeps
/// and reuses across pops, so a device that reuses one chain does not
/// allocate in steady state.
///
/// The total length of a chain (readable plus writable bytes) is at most
/// `u32::MAX` bytes, one byte short of the 2^32 the spec allows (§2.7.5.1),
/// so that both totals fit the `u32` of a used element.
#[derive(Clone, Debug)]
pub struct DescriptorChain {
    head: u16,
    /// Number of descriptors; when `count <= INLINE_DESCRIPTORS` and
    /// `!spilled` they are `inline[..count]`, otherwise `spill`.
    count: u32,
    spilled: bool,
    inline: [Descriptor; INLINE_DESCRIPTORS],
    spill: Vec<Descriptor>,
    /// Number of leading device-readable descriptors.
    readable: u32,
    readable_len: u32,
    writable_len: u32,
    indirect: bool,
}

impl Default for DescriptorChain {
    fn default() -> Self {
        Self::new()
    }
}

impl DescriptorChain {
    /// An empty chain with head 0, ready to be filled by
    /// [`Queue::pop_into`](super::Queue::pop_into).
    pub const fn new() -> Self {
        Self {
            head: 0,
            count: 0,
            spilled: false,
            inline: [EMPTY; INLINE_DESCRIPTORS],
            spill: Vec::new(),
            readable: 0,
            readable_len: 0,
            writable_len: 0,
            indirect: false,
        }
    }

    /// A chain built by the host from `descriptors` (for tests of device
    /// backends). Nothing is validated except the byte totals, which
    /// saturate at `u32::MAX`; `readable()` is the run of device-readable
    /// descriptors before the first writable one.
    pub fn from_descriptors(head: u16, descriptors: &[Descriptor]) -> Self {
        let mut chain = Self::new();
        chain.head = head;
        let mut seen_writable = false;
        for d in descriptors {
            seen_writable |= d.writable;
            if d.writable {
                chain.writable_len = chain.writable_len.saturating_add(d.len);
            } else {
                chain.readable_len = chain.readable_len.saturating_add(d.len);
                if !seen_writable {
                    chain.readable = chain.readable.saturating_add(1);
                }
            }
            chain.push(*d);
        }
        chain
    }

    /// Index of the head descriptor in the descriptor table (`0..size`):
    /// the `id` to give [`Queue::add_used`](super::Queue::add_used).
    #[inline]
    pub fn head_index(&self) -> u16 {
        self.head
    }

    /// All descriptors in chain order: device-readable ones first, then
    /// device-writable ones.
    #[inline]
    pub fn descriptors(&self) -> &[Descriptor] {
        if self.spilled {
            &self.spill
        } else {
            // `count <= INLINE_DESCRIPTORS` whenever not spilled; `get`
            // keeps a broken invariant from panicking.
            self.inline.get(..self.count as usize).unwrap_or(&[])
        }
    }

    /// The device-readable descriptors (the leading part of the chain).
    #[inline]
    pub fn readable(&self) -> &[Descriptor] {
        let all = self.descriptors();
        all.get(..self.readable as usize).unwrap_or(all)
    }

    /// The device-writable descriptors (the trailing part of the chain).
    #[inline]
    pub fn writable(&self) -> &[Descriptor] {
        let all = self.descriptors();
        all.get(self.readable as usize..).unwrap_or(&[])
    }

    /// Total bytes of the device-readable descriptors.
    #[inline]
    pub fn readable_len(&self) -> u32 {
        self.readable_len
    }

    /// Total bytes of the device-writable descriptors: the most a device
    /// may report as `len` in [`Queue::add_used`](super::Queue::add_used).
    #[inline]
    pub fn writable_len(&self) -> u32 {
        self.writable_len
    }

    /// Number of descriptors in the chain.
    #[inline]
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the chain has no descriptor (only a chain from
    /// [`DescriptorChain::new`]; a popped chain has at least one).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether part of the chain came from an indirect table (§2.7.5.3).
    #[inline]
    pub fn has_indirect(&self) -> bool {
        self.indirect
    }

    #[inline]
    pub(super) fn reset(&mut self, head: u16) {
        self.head = head;
        self.count = 0;
        self.spilled = false;
        self.spill.clear();
        self.readable = 0;
        self.readable_len = 0;
        self.writable_len = 0;
        self.indirect = false;
    }

    /// Sets the head (packed ring: the buffer id, known at the chain's end).
    #[inline]
    pub(super) fn set_head(&mut self, head: u16) {
        self.head = head;
    }

    /// Marks the chain as coming (in part) from an indirect table.
    #[inline]
    pub(super) fn set_indirect(&mut self) {
        self.indirect = true;
    }

    #[inline]
    fn push(&mut self, d: Descriptor) {
        if self.spilled {
            self.spill.push(d);
        } else if let Some(slot) = self.inline.get_mut(self.count as usize) {
            *slot = d;
        } else {
            self.spill.clear();
            self.spill.extend_from_slice(&self.inline);
            self.spill.push(d);
            self.spilled = true;
        }
        // At most 2 * 32768 descriptors are ever pushed into one chain (the
        // direct walk and one indirect table are each bounded by 32768).
        self.count += 1;
    }

    /// Appends a descriptor read from guest memory, enforcing the chain's
    /// invariants (§2.6.4.2 ordering, §2.7.5.1 total length, no address
    /// wrap). Always inlined: it runs once per descriptor, and a call cost
    /// about a third of its instructions.
    #[inline(always)]
    pub(super) fn push_checked(
        &mut self,
        addr: u64,
        len: u32,
        flags: u16,
    ) -> Result<(), QueueError> {
        let head = self.head;
        // The buffer is `addr..addr + len`; its last byte must not wrap.
        if len != 0 && addr.checked_add(u64::from(len) - 1).is_none() {
            return Err(QueueError::DescriptorAddressOverflow { head, addr, len });
        }
        let writable = flags & VIRTQ_DESC_F_WRITE != 0;
        if !writable && self.readable != self.count {
            return Err(QueueError::ReadableAfterWritable {
                head,
                position: self.count,
            });
        }
        let total = u64::from(self.readable_len) + u64::from(self.writable_len) + u64::from(len);
        if total > u64::from(u32::MAX) {
            return Err(QueueError::ChainLengthOverflow {
                head,
                readable: self.readable_len,
                writable: self.writable_len,
                len,
            });
        }
        // Neither sum overflows: their total was just checked against
        // `u32::MAX`; `readable` is bounded like `count` (see `push`).
        if writable {
            self.writable_len += len;
        } else {
            self.readable_len += len;
            self.readable += 1;
        }
        self.push(Descriptor {
            addr: GuestAddress(addr),
            len,
            writable,
        });
        Ok(())
    }
}

/// Decoded `struct virtq_desc` (16 bytes, little-endian).
#[derive(Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDesc {
    /// Splits the 16 little-endian bytes of a descriptor, read as one
    /// `u128`: `addr` is bytes 0..8, `len` 8..12, `flags` 12..14, `next`
    /// 14..16. The truncating casts select those fields.
    #[inline]
    fn decode(v: u128) -> Self {
        Self {
            addr: v as u64,
            len: (v >> 64) as u32,
            flags: (v >> 96) as u16,
            next: (v >> 112) as u16,
        }
    }
}

/// What chain walking needs to know about the queue.
pub(super) struct WalkParams {
    /// Queue size (power of two, 1..=32768).
    pub size: u16,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
}

/// Walks the chain starting at `head` into `chain`.
///
/// `table` is the descriptor table (`16 * size` bytes). On error the chain's
/// contents are unspecified.
#[inline]
pub(super) fn read_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    table: &Area<'_, M>,
    params: &WalkParams,
    head: u16,
    chain: &mut DescriptorChain,
) -> Result<(), QueueError> {
    chain.reset(head);
    let size = params.size;
    let mut index = head;
    // Descriptors read from the table so far; a chain of more than `size`
    // of them revisits one, i.e. loops (§2.7.5.1).
    let mut walked: u16 = 0;
    loop {
        if index >= size {
            return Err(QueueError::DescriptorIndexOutOfRange { head, index, size });
        }
        if walked == size {
            return Err(QueueError::ChainTooLong {
                head,
                limit: u32::from(size),
            });
        }
        // `walked < size <= 32768`.
        walked += 1;
        // `index < size <= 32768`, so the offset is below 512 KiB, inside
        // the `16 * size` bytes of the table.
        let raw = RawDesc::decode(table.read_u128(usize::from(index) * 16)?);
        if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if !params.indirect {
                return Err(QueueError::IndirectNotNegotiated { head, index });
            }
            if raw.flags & VIRTQ_DESC_F_NEXT != 0 {
                return Err(QueueError::IndirectWithNext { head, index });
            }
            // The WRITE flag of this descriptor is ignored (§2.7.5.3.2).
            return read_indirect(mem, head, raw.addr, raw.len, chain);
        }
        chain.push_checked(raw.addr, raw.len, raw.flags)?;
        if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(());
        }
        index = raw.next;
    }
}

/// Appends the chain held in the indirect table of `len` bytes at `addr`.
fn read_indirect<M: GuestMemory + ?Sized>(
    mem: &M,
    head: u16,
    addr: u64,
    len: u32,
    chain: &mut DescriptorChain,
) -> Result<(), QueueError> {
    if len == 0 || !len.is_multiple_of(16) {
        return Err(QueueError::InvalidIndirectLength { head, len });
    }
    let entries = len / 16;
    if entries > MAX_INDIRECT_DESCRIPTORS {
        return Err(QueueError::IndirectTableTooLarge {
            head,
            len,
            max: MAX_INDIRECT_DESCRIPTORS,
        });
    }
    // `len <= 16 * 32768` here.
    let table_len = len as usize;
    let base = GuestAddress(addr);
    if base.checked_add(u64::from(len)).is_none() {
        return Err(QueueError::DescriptorAddressOverflow { head, addr, len });
    }
    let table = Area::new(
        mem,
        base,
        table_len,
        Permissions::Read,
        RingArea::IndirectTable,
    );
    if !table.is_contiguous() && !mem.check_range(base, table_len, Permissions::Read) {
        return Err(QueueError::IndirectTableOutOfMemory { head, addr, len });
    }
    chain.indirect = true;
    let mut index: u16 = 0;
    let mut walked: u32 = 0;
    loop {
        if u32::from(index) >= entries {
            return Err(QueueError::IndirectIndexOutOfRange {
                head,
                index,
                entries,
            });
        }
        if walked == entries {
            return Err(QueueError::ChainTooLong {
                head,
                limit: entries,
            });
        }
        // `walked < entries <= 32768`.
        walked += 1;
        // `index < entries`, so the offset is inside the table.
        let raw = RawDesc::decode(table.read_u128(usize::from(index) * 16)?);
        if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(QueueError::NestedIndirect { head, index });
        }
        chain.push_checked(raw.addr, raw.len, raw.flags)?;
        if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(());
        }
        index = raw.next;
    }
}
