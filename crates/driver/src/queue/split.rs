//! The driver-role split virtqueue (virtio v1.4 §2.7 "Split Virtqueues"):
//! the split half of [`VirtQueue`](super::VirtQueue).
//!
//! The queue memory (descriptor table, available ring, used ring) is one
//! DMA allocation; a free list of descriptors is kept in driver memory (the
//! device cannot corrupt it), with the record of every chain in flight. The
//! device's only inputs are the used ring's `idx`, its entries and (with
//! EVENT_IDX) `avail_event` / (without) the used `flags`: each is checked
//! before use.

use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::sync::atomic::{fence, Ordering};

use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::split::{
    self, avail, need_event, used, USED_ALIGN, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};

use super::{check_chain, unshare_all, ChainShape, Segment, SharedBuf, Used};
use crate::error::{Error, Result};
use crate::hal::{Dma, Hal, PAGE_SIZE};

/// `InFlight::table` of a chain without an indirect table.
const NO_TABLE: u16 = u16::MAX;

/// The record of one chain, indexed by its head descriptor. Small and
/// `Copy` so that the hot path writes and reads it cheaply: indirect
/// tables stay in [`SplitQueue::tables`] (the record names one by index),
/// and shared caller buffers are kept aside, touched only when the chain
/// has any.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Total writable bytes (the limit for the used `len`).
    writable: u64,
    /// Descriptors of the main table the chain holds; 0 when no chain
    /// has this head (a chain always holds at least one).
    descs: u16,
    /// The chain's last main-table descriptor, so that freeing it needs
    /// no walk.
    last: u16,
    /// Index in [`SplitQueue::tables`] of the chain's indirect table, or
    /// [`NO_TABLE`].
    table: u16,
    /// Whether the chain has caller buffers to unshare.
    shared: bool,
}

impl InFlight {
    const IDLE: Self = Self {
        writable: 0,
        descs: 0,
        last: 0,
        table: NO_TABLE,
        shared: false,
    };
}

/// A split virtqueue, driver role (virtio v1.4 §2.7). Tokens are head
/// descriptor indexes.
pub(crate) struct SplitQueue<H: Hal + Clone> {
    hal: H,
    index: u16,
    size: u16,
    legacy: bool,
    mem: ManuallyDrop<Dma<H>>,
    avail_off: usize,
    used_off: usize,
    event_idx: bool,
    indirect: bool,
    used_notifications: bool,
    free_head: u16,
    num_free: u16,
    /// Shadow `next` links: the free list, and the chains in flight.
    next: Vec<u16>,
    in_flight: Vec<InFlight>,
    /// Caller buffers shared for the chains in flight, by head.
    shared: Vec<Vec<SharedBuf>>,
    /// The available `idx` last published.
    avail_idx: u16,
    /// `avail_idx` when the notification decision was last taken.
    kicked_idx: u16,
    /// The used `idx` up to which entries were consumed.
    last_used: u16,
    /// Every indirect table allocated (at most one per chain in flight at
    /// once, so fewer than `size`); chains name theirs by index.
    tables: Vec<Dma<H>>,
    /// Indexes of the tables no chain holds.
    free_tables: Vec<u16>,
    released: bool,
}

impl<H: Hal + Clone> core::fmt::Debug for SplitQueue<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SplitQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("legacy", &self.legacy)
            .field("num_free", &self.num_free)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .finish()
    }
}

/// Offsets in bytes of the avail ring, the used ring, and the total, for
/// a queue of `size` entries laid out in one allocation.
fn layout(size: u16, legacy: bool) -> (usize, usize, usize) {
    // Sizes are at most 16 * 32768 + 6 + 2 * 32768 + 4096 + 6 + 8 * 32768
    // bytes, far below usize::MAX even on 32-bit harts.
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    if legacy {
        // Always Some: base 0 and a power-of-two alignment cannot overflow.
        let l = split::legacy_layout(0, size, PAGE_SIZE as u64).unwrap_or(split::LegacyLayout {
            desc: 0,
            avail: 0,
            used: 0,
            total: u64::MAX,
        });
        (to_usize(l.avail), to_usize(l.used), to_usize(l.total))
    } else {
        let avail_off = split::desc_table_size(size);
        let avail_end = avail_off + avail::size(size);
        let used_off = avail_end.div_ceil(USED_ALIGN) * USED_ALIGN;
        let total = used_off + used::size(size);
        (to_usize(avail_off), to_usize(used_off), to_usize(total))
    }
}

/// A ring offset as `usize`. Offsets inside a queue of at most 32768
/// entries are below 2^20 bytes, so they fit `usize` on 32-bit harts too;
/// `usize::MAX` (which the bounds check of every DMA access rejects)
/// cannot occur.
fn off(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn write_desc<H: Hal>(
    mem: &mut Dma<H>,
    legacy: bool,
    i: usize,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    // Build the descriptor's memory representation (little-endian, or
    // guest-native for legacy devices) and store it at once.
    let (addr, len, flags, next) = if legacy {
        (
            addr.to_ne_bytes(),
            len.to_ne_bytes(),
            flags.to_ne_bytes(),
            next.to_ne_bytes(),
        )
    } else {
        (
            addr.to_le_bytes(),
            len.to_le_bytes(),
            flags.to_le_bytes(),
            next.to_le_bytes(),
        )
    };
    let mut desc = [0u8; 16];
    desc[..8].copy_from_slice(&addr);
    desc[8..12].copy_from_slice(&len);
    desc[12..14].copy_from_slice(&flags);
    desc[14..].copy_from_slice(&next);
    mem.store128(i * 16, desc);
}

impl<H: Hal + Clone> SplitQueue<H> {
    /// Allocates zeroed memory for queue `index` of `size` entries (a power
    /// of two, 1..=32768). `legacy` selects the contiguous legacy layout
    /// and guest-native byte order; `features` the negotiated feature bits
    /// (INDIRECT_DESC and EVENT_IDX are used).
    pub(super) fn new(hal: H, index: u16, size: u16, legacy: bool, features: u64) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > split::MAX_QUEUE_SIZE {
            return Err(Error::ZeroQueueSize(index));
        }
        let (avail_off, used_off, total) = layout(size, legacy);
        let mem = Dma::new(hal.clone(), total)?;
        let n = usize::from(size);
        let next = (0..size).map(|i| i.wrapping_add(1) % size).collect();
        let in_flight = alloc::vec![InFlight::IDLE; n];
        let mut shared = Vec::with_capacity(n);
        shared.resize_with(n, Vec::new);
        Ok(Self {
            hal,
            index,
            size,
            legacy,
            mem: ManuallyDrop::new(mem),
            avail_off,
            used_off,
            event_idx: features & bit(VIRTIO_F_EVENT_IDX) != 0,
            indirect: features & bit(VIRTIO_F_INDIRECT_DESC) != 0,
            used_notifications: true,
            free_head: 0,
            num_free: size,
            next,
            in_flight,
            shared,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            tables: Vec::new(),
            free_tables: Vec::new(),
            released: false,
        })
    }

    pub(super) fn hal(&self) -> &H {
        &self.hal
    }

    /// The queue index (the value written to `QueueSel` and `QueueNotify`).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue size in entries (a power of two).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors in the main table.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Whether indirect descriptors are in use (VIRTIO_F_INDIRECT_DESC).
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    /// Whether EVENT_IDX suppression is in use (VIRTIO_F_EVENT_IDX).
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The available `idx` last published (the next free slot, modulo
    /// 2^16): what notification data carries (virtio v1.4 §2.9).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Device address of the descriptor table (`QueueDesc*`), and of the
    /// whole queue for legacy devices (`QueuePFN` * 4096).
    pub fn desc_addr(&self) -> u64 {
        self.mem.paddr()
    }

    /// Device address of the driver area, the available ring
    /// (`QueueDriver*`).
    pub fn driver_addr(&self) -> u64 {
        self.mem.paddr().saturating_add(self.avail_off as u64)
    }

    /// Device address of the device area, the used ring (`QueueDevice*`).
    pub fn device_addr(&self) -> u64 {
        self.mem.paddr().saturating_add(self.used_off as u64)
    }

    /// Whether any chain is in flight.
    pub fn has_in_flight(&self) -> bool {
        self.num_free != self.size || self.in_flight.iter().any(|f| f.descs != 0)
    }

    fn dev16(&self, raw: u16) -> u16 {
        if self.legacy {
            raw
        } else {
            u16::from_le(raw)
        }
    }

    fn raw16(&self, v: u16) -> u16 {
        if self.legacy {
            v
        } else {
            v.to_le()
        }
    }

    fn dev32(&self, raw: u32) -> u32 {
        if self.legacy {
            raw
        } else {
            u32::from_le(raw)
        }
    }

    /// Asks for used-buffer notifications (`true`, the default) or asks
    /// the device to suppress them (virtio v1.4 §2.7.7): without EVENT_IDX
    /// by setting VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX by no longer
    /// moving `used_event` forward (`flags` stays 0 as §2.7.7.1 requires).
    /// Suppression is a hint: the driver must (and does) cope with
    /// spurious notifications.
    pub fn set_used_notifications(&mut self, enabled: bool) {
        self.used_notifications = enabled;
        if self.event_idx {
            if enabled {
                let v = self.raw16(self.last_used);
                let off = self.avail_off + off(avail::used_event(self.size));
                self.mem.store16(off, v);
            }
        } else {
            let flags = if enabled {
                0
            } else {
                VIRTQ_AVAIL_F_NO_INTERRUPT
            };
            let v = self.raw16(flags);
            self.mem.store16(self.avail_off + off(avail::FLAGS), v);
        }
        fence(Ordering::SeqCst);
    }

    /// Makes a chain available; `shared` (the caller buffers shared for
    /// it) is kept until the chain completes.
    pub(super) fn add_inner(
        &mut self,
        readable: &[Segment],
        writable: &[Segment],
        shared: &mut Vec<SharedBuf>,
    ) -> Result<u16> {
        let ChainShape {
            total,
            writable_bytes,
            use_indirect,
            ring_descs: main_descs,
        } = check_chain(readable, writable, self.indirect, self.size)?;
        if main_descs > usize::from(self.num_free) {
            return Err(Error::QueueFull {
                needed: main_descs,
                free: usize::from(self.num_free),
            });
        }
        // Readable segments first, then writable ones (plain nested loops:
        // cheaper than a chained iterator on this hot path).
        let lists = [(readable, 0u16), (writable, VIRTQ_DESC_F_WRITE)];
        let head = self.free_head;
        let (table_index, last) = if use_indirect {
            let ti = match self.free_tables.pop() {
                Some(ti) => ti,
                None => {
                    // Each table is held by a chain in flight, so there
                    // are fewer than `size` <= 32768: the index fits u16
                    // and is never NO_TABLE.
                    let ti = u16::try_from(self.tables.len())
                        .ok()
                        .filter(|&ti| ti < self.size)
                        .ok_or(Error::QueueFull {
                            needed: main_descs,
                            free: 0,
                        })?;
                    self.tables.push(Dma::new(self.hal.clone(), PAGE_SIZE)?);
                    ti
                }
            };
            let table = &mut self.tables[usize::from(ti)];
            let mut i = 0;
            for (list, flags) in lists {
                for seg in list {
                    let last = i + 1 == total;
                    // i + 1 <= MAX_INDIRECT = 256 fits u16.
                    let (flags, next) = if last {
                        (flags, 0)
                    } else {
                        (flags | VIRTQ_DESC_F_NEXT, u16::try_from(i + 1).unwrap_or(0))
                    };
                    write_desc(table, self.legacy, i, seg.addr, seg.len, flags, next);
                    i += 1;
                }
            }
            // total * 16 <= 4096 fits u32.
            let table_len = u32::try_from(total * 16).unwrap_or(0);
            let d = usize::from(head);
            write_desc(
                &mut self.mem,
                self.legacy,
                d,
                table.paddr(),
                table_len,
                VIRTQ_DESC_F_INDIRECT,
                0,
            );
            self.free_head = self.next[d];
            (ti, head)
        } else {
            let mut cur = head;
            let mut tail = head;
            let mut i = 0;
            for (list, flags) in lists {
                for seg in list {
                    let d = usize::from(cur);
                    let nxt = self.next[d];
                    let last = i + 1 == total;
                    let (flags, link) = if last {
                        (flags, 0)
                    } else {
                        (flags | VIRTQ_DESC_F_NEXT, nxt)
                    };
                    write_desc(
                        &mut self.mem,
                        self.legacy,
                        d,
                        seg.addr,
                        seg.len,
                        flags,
                        link,
                    );
                    tail = cur;
                    cur = nxt;
                    i += 1;
                }
            }
            self.free_head = cur;
            (NO_TABLE, tail)
        };
        // main_descs <= num_free <= size <= 32768.
        let main_descs16 = u16::try_from(main_descs).unwrap_or(u16::MAX);
        self.num_free -= main_descs16;
        let has_shared = !shared.is_empty();
        if has_shared {
            self.shared[usize::from(head)] = core::mem::take(shared);
        }
        self.in_flight[usize::from(head)] = InFlight {
            writable: writable_bytes,
            descs: main_descs16,
            last,
            table: table_index,
            shared: has_shared,
        };
        // Publish: ring entry, then idx after a release barrier, so that
        // the descriptors and the entry are visible before the device can
        // see the new idx (virtio v1.4 §2.7.13.2-3). The full barrier
        // before reading the device's notification suppression is in
        // `should_notify`.
        let slot = usize::from(self.avail_idx & (self.size - 1));
        let v = self.raw16(head);
        self.mem.store16(self.avail_off + 4 + 2 * slot, v);
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let v = self.raw16(self.avail_idx);
        self.mem.store16(self.avail_off + off(avail::IDX), v);
        Ok(head)
    }

    /// Whether the device wants an available-buffer notification for what
    /// was published since the last call (virtio v1.4 §2.7.10): with
    /// EVENT_IDX, the wrap-safe `vring_need_event` test against the
    /// device's `avail_event`; without, the used ring's
    /// VIRTQ_USED_F_NO_NOTIFY flag. A full barrier (`SeqCst` fence)
    /// separates the published `idx` from these reads (§2.7.13.4.1).
    ///
    /// [`crate::Transport::notify_if_needed`] calls this.
    pub fn should_notify(&mut self) -> bool {
        fence(Ordering::SeqCst);
        let new = self.avail_idx;
        let old = self.kicked_idx;
        self.kicked_idx = new;
        if self.event_idx {
            let off = self.used_off + off(used::avail_event(self.size));
            let event = self.dev16(self.mem.load16(off));
            need_event(event, new, old)
        } else {
            let flags = self.dev16(self.mem.load16(self.used_off + off(used::FLAGS)));
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Whether the device has returned a chain not yet popped.
    pub fn can_pop(&self) -> bool {
        let used_idx = self.dev16(self.mem.load16(self.used_off + off(used::IDX)));
        used_idx != self.last_used
    }

    /// Reads and validates the next used entry without consuming it.
    /// Always inlined: it runs once per completion.
    #[inline(always)]
    fn next_used(&self) -> Result<Option<(u16, u32)>> {
        let used_idx = self.dev16(self.mem.load16(self.used_off + off(used::IDX)));
        if used_idx == self.last_used {
            return Ok(None);
        }
        if used_idx.wrapping_sub(self.last_used) > self.size {
            return Err(Error::UsedIdxInvalid {
                queue: self.index,
                used_idx,
                last_seen: self.last_used,
                size: self.size,
            });
        }
        // Read the entry only after seeing idx (virtio v1.4 §2.7.14): an
        // acquire barrier orders the idx load before the entry loads.
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used & (self.size - 1));
        let elem = self.used_off + off(used::RING) + 8 * slot;
        let id = self.dev32(self.mem.load32(elem));
        let len = self.dev32(self.mem.load32(elem + 4));
        let id16 =
            u16::try_from(id)
                .ok()
                .filter(|&i| i < self.size)
                .ok_or(Error::UsedIdOutOfRange {
                    queue: self.index,
                    id,
                    size: self.size,
                })?;
        let flight = self.in_flight[usize::from(id16)];
        if flight.descs == 0 {
            return Err(Error::UsedIdNotInFlight {
                queue: self.index,
                id,
            });
        }
        if u64::from(len) > flight.writable {
            return Err(Error::UsedLenTooLarge {
                queue: self.index,
                id: id16,
                len,
                max: flight.writable,
            });
        }
        Ok(Some((id16, len)))
    }

    /// The next used chain, validated, without consuming it.
    ///
    /// # Errors
    ///
    /// As [`pop_used`](Self::pop_used).
    pub fn peek_used(&self) -> Result<Option<Used>> {
        Ok(self.next_used()?.map(|(token, len)| Used { token, len }))
    }

    /// Takes the next used chain from the used ring (virtio v1.4 §2.7.14),
    /// frees its descriptors, unshares its caller buffers, and returns its
    /// token and written length. Chains may complete in any order.
    ///
    /// # Errors
    ///
    /// A device fault leaves the entry in place (the device must be reset):
    /// [`Error::UsedIdxInvalid`] (the used `idx` ran more than a queue
    /// size ahead), [`Error::UsedIdOutOfRange`], [`Error::UsedIdNotInFlight`],
    /// [`Error::UsedLenTooLarge`].
    pub fn pop_used(&mut self) -> Result<Option<Used>> {
        let Some((id, len)) = self.next_used()? else {
            return Ok(None);
        };
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.used_notifications {
            let v = self.raw16(self.last_used);
            let off = self.avail_off + off(avail::used_event(self.size));
            self.mem.store16(off, v);
        }
        self.retire(id);
        Ok(Some(Used { token: id, len }))
    }

    /// Frees the descriptors of chain `head` and undoes its sharing.
    /// Always inlined: it runs once per completion.
    #[inline(always)]
    fn retire(&mut self, head: u16) {
        let h = usize::from(head);
        let flight = self.in_flight[h];
        if flight.descs == 0 {
            return;
        }
        self.in_flight[h].descs = 0;
        // The chain's descriptors are still linked through the shadow
        // links (never the device-visible table) from `head` to `last`:
        // splice the whole chain onto the free list.
        self.next[usize::from(flight.last)] = self.free_head;
        self.free_head = head;
        self.num_free = self.num_free.saturating_add(flight.descs).min(self.size);
        if flight.table != NO_TABLE {
            self.free_tables.push(flight.table);
        }
        if flight.shared {
            let mut shared = core::mem::take(&mut self.shared[h]);
            unshare_all(&self.hal, &mut shared);
        }
    }

    /// Forgets every chain in flight after the device stopped using the
    /// queue (queue disabled and read back, queue reset, or device reset):
    /// caller buffers are unshared and the queue memory may be freed.
    pub(super) fn release(&mut self) {
        for i in 0..self.size {
            if self.in_flight[usize::from(i)].descs != 0 {
                self.retire(i);
            }
        }
        self.released = true;
    }
}

impl<H: Hal + Clone> Drop for SplitQueue<H> {
    fn drop(&mut self) {
        if self.released {
            // SAFETY: `mem` is dropped exactly once, here; `released` says
            // the transport saw the device stop using it.
            unsafe { ManuallyDrop::drop(&mut self.mem) };
        } else {
            log::warn!(
                "virtqueue {} dropped while possibly live: leaking its memory",
                self.index
            );
            // The device may still read the tables of the chains in
            // flight: leak those, free the others.
            let mut held = alloc::vec![false; self.tables.len()];
            for f in &self.in_flight {
                if f.descs != 0 && f.table != NO_TABLE {
                    if let Some(h) = held.get_mut(usize::from(f.table)) {
                        *h = true;
                    }
                }
            }
            for (t, held) in core::mem::take(&mut self.tables).into_iter().zip(held) {
                if held {
                    t.leak();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::hal::{write_log, BounceHal, IdentityHal};
    use crate::queue::MAX_INDIRECT;
    use vmmio_spec::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};

    /// Plays the device on a queue's used ring.
    fn complete<H: Hal + Clone>(q: &mut SplitQueue<H>, id: u32, len: u32) {
        let used_idx = u16::from_le(q.mem.load16(q.used_off + 2));
        let slot = usize::from(used_idx & (q.size - 1));
        let elem = q.used_off + 4 + 8 * slot;
        q.mem.store32(elem, id.to_le());
        q.mem.store32(elem + 4, len.to_le());
        q.mem
            .store16(q.used_off + 2, used_idx.wrapping_add(1).to_le());
    }

    fn read_desc<H: Hal + Clone>(q: &SplitQueue<H>, i: usize) -> (u64, u32, u16, u16) {
        let lo = u64::from(u32::from_le(q.mem.load32(i * 16)));
        let hi = u64::from(u32::from_le(q.mem.load32(i * 16 + 4)));
        (
            lo | hi << 32,
            u32::from_le(q.mem.load32(i * 16 + 8)),
            u16::from_le(q.mem.load16(i * 16 + 12)),
            u16::from_le(q.mem.load16(i * 16 + 14)),
        )
    }

    impl<H: Hal + Clone> SplitQueue<H> {
        /// The wrapper's `add_segments`, on the split ring alone.
        unsafe fn add_segments(&mut self, r: &[Segment], w: &[Segment]) -> Result<u16> {
            self.add_inner(r, w, &mut Vec::new())
        }

        /// The wrapper's `pop_used_token`, on the split ring alone.
        fn pop_used_token(&mut self, token: u16) -> Result<Option<u32>> {
            match self.peek_used()? {
                None => Ok(None),
                Some(u) if u.token != token => Err(Error::UnexpectedToken {
                    expected: token,
                    got: u.token,
                }),
                Some(_) => Ok(self.pop_used()?.map(|u| u.len)),
            }
        }
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn layout_modern_and_legacy() {
        assert_eq!(layout(256, false), (4096, 4096 + 520, 4096 + 520 + 2054));
        assert_eq!(layout(256, true), (4096, 8192, 8192 + 2054));
    }

    #[test]
    fn chain_descriptors_readable_then_writable_and_free_list() {
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, 0).unwrap();
        // SAFETY: the addresses are never dereferenced: the test plays the
        // device and only writes the used ring.
        let t = unsafe { q.add_segments(&[seg(0x1000, 16)], &[seg(0x2000, 512), seg(0x3000, 1)]) }
            .unwrap();
        assert_eq!(t, 0);
        assert_eq!(q.num_free(), 1);
        assert_eq!(read_desc(&q, 0), (0x1000, 16, VIRTQ_DESC_F_NEXT, 1));
        assert_eq!(
            read_desc(&q, 1),
            (0x2000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2)
        );
        assert_eq!(read_desc(&q, 2), (0x3000, 1, VIRTQ_DESC_F_WRITE, 0));
        assert_eq!(u16::from_le(q.mem.load16(q.avail_off + 2)), 1);
        // Two segments need two descriptors; one is free.
        // SAFETY: as above.
        let e = unsafe { q.add_segments(&[seg(1, 1), seg(2, 2)], &[]) };
        assert_eq!(e, Err(Error::QueueFull { needed: 2, free: 1 }));
        complete(&mut q, 0, 513);
        assert_eq!(q.pop_used(), Ok(Some(Used { token: 0, len: 513 })));
        assert_eq!(q.num_free(), 4);
        assert!(!q.has_in_flight());
        q.release();
    }

    #[test]
    fn completions_in_any_order() {
        let mut q = SplitQueue::new(IdentityHal, 3, 8, false, 0).unwrap();
        let mut tokens = Vec::new();
        for i in 0..4u64 {
            // SAFETY: addresses never dereferenced.
            tokens.push(unsafe { q.add_segments(&[], &[seg(i * 0x100, 8)]) }.unwrap());
        }
        complete(&mut q, u32::from(tokens[2]), 8);
        complete(&mut q, u32::from(tokens[0]), 4);
        assert_eq!(q.peek_used().unwrap().unwrap().token, tokens[2]);
        assert_eq!(
            q.pop_used_token(tokens[1]),
            Err(Error::UnexpectedToken {
                expected: tokens[1],
                got: tokens[2]
            })
        );
        assert_eq!(q.pop_used_token(tokens[2]), Ok(Some(8)));
        assert_eq!(q.pop_used().unwrap().unwrap().token, tokens[0]);
        assert_eq!(q.pop_used(), Ok(None));
        assert_eq!(q.num_free(), 6);
        q.release();
    }

    #[test]
    fn used_entries_are_validated() {
        let mut q = SplitQueue::new(IdentityHal, 1, 4, false, 0).unwrap();
        // SAFETY: addresses never dereferenced.
        let t = unsafe { q.add_segments(&[seg(0, 4)], &[seg(0x10, 8)]) }.unwrap();
        complete(&mut q, 4, 0);
        assert_eq!(
            q.pop_used(),
            Err(Error::UsedIdOutOfRange {
                queue: 1,
                id: 4,
                size: 4
            })
        );
        // The bad entry stays: the device must be reset. Rewrite it as a
        // device that names a descriptor not in flight, then a bad length.
        q.mem.store16(q.used_off + 2, 0);
        complete(&mut q, 3, 0);
        assert_eq!(
            q.pop_used(),
            Err(Error::UsedIdNotInFlight { queue: 1, id: 3 })
        );
        q.mem.store16(q.used_off + 2, 0);
        complete(&mut q, u32::from(t), 9);
        assert_eq!(
            q.pop_used(),
            Err(Error::UsedLenTooLarge {
                queue: 1,
                id: t,
                len: 9,
                max: 8
            })
        );
        q.mem.store16(q.used_off + 2, 0);
        complete(&mut q, u32::from(t) | 0x1_0000, 1);
        assert!(matches!(
            q.pop_used(),
            Err(Error::UsedIdOutOfRange { id: 0x1_0000, .. })
        ));
        q.mem.store16(q.used_off + 2, 0x100u16.to_le());
        assert!(matches!(q.pop_used(), Err(Error::UsedIdxInvalid { .. })));
        q.release();
    }

    #[test]
    fn indirect_chain_uses_one_descriptor() {
        let mut q = SplitQueue::new(IdentityHal, 0, 2, false, bit(VIRTIO_F_INDIRECT_DESC)).unwrap();
        let segs: Vec<Segment> = (0..5).map(|i| seg(i * 0x10, 16)).collect();
        // SAFETY: addresses never dereferenced.
        let t = unsafe { q.add_segments(&segs[..2], &segs[2..]) }.unwrap();
        assert_eq!(q.num_free(), 1);
        let (addr, len, flags, _) = read_desc(&q, usize::from(t));
        assert_eq!((len, flags), (5 * 16, VIRTQ_DESC_F_INDIRECT));
        let table = &q.tables[usize::from(q.in_flight[usize::from(t)].table)];
        assert_eq!(table.paddr(), addr);
        assert_eq!(u16::from_le(table.load16(12)), VIRTQ_DESC_F_NEXT);
        assert_eq!(u16::from_le(table.load16(14)), 1);
        assert_eq!(u16::from_le(table.load16(4 * 16 + 12)), VIRTQ_DESC_F_WRITE);
        // A single segment never goes indirect.
        // SAFETY: as above.
        let t2 = unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
        assert_eq!(read_desc(&q, usize::from(t2)).2, 0);
        // Too many for one table.
        let many: Vec<Segment> = (0..257).map(|_| seg(0, 1)).collect();
        complete(&mut q, u32::from(t), 48);
        q.pop_used().unwrap();
        // SAFETY: as above.
        let e = unsafe { q.add_segments(&many, &[]) };
        assert_eq!(
            e,
            Err(Error::TooManySegments {
                segments: 257,
                max: 256
            })
        );
        q.release();
    }

    #[test]
    fn chain_limits() {
        let mut q = SplitQueue::new(IdentityHal, 0, 2, false, 0).unwrap();
        // SAFETY: nothing is posted by these failing calls.
        unsafe {
            assert_eq!(q.add_segments(&[], &[]), Err(Error::EmptyChain));
            let three = [seg(0, 1); 3];
            assert!(matches!(
                q.add_segments(&three, &[]),
                Err(Error::TooManySegments { max: 2, .. })
            ));
            let big = [seg(0, u32::MAX), seg(0, 2)];
            assert!(matches!(
                q.add_segments(&big, &[]),
                Err(Error::ChainTooLong(_))
            ));
        }
        assert_eq!(q.num_free(), 2);
        q.release();
    }

    #[test]
    fn event_idx_notification_and_used_event() {
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, bit(VIRTIO_F_EVENT_IDX)).unwrap();
        let avail_event = q.used_off + used::avail_event(4) as usize;
        // SAFETY: addresses never dereferenced.
        let t = unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
        // avail_event 0: the device wants a kick when idx passes 0.
        assert!(q.should_notify());
        // SAFETY: as above.
        unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
        // The device asked to be notified only after idx 5.
        q.mem.store16(avail_event, 5u16.to_le());
        assert!(!q.should_notify());
        complete(&mut q, u32::from(t), 0);
        q.pop_used().unwrap();
        let used_event = q.avail_off + avail::used_event(4) as usize;
        assert_eq!(u16::from_le(q.mem.load16(used_event)), 1);
        q.release();
    }

    /// Checks the driver's writes of one `add`: descriptors (main table
    /// or indirect table) first, then the available-ring entry, then
    /// `avail.idx`, written once and last (§2.7.13.1-3); nothing in the
    /// used ring (the device's).
    fn check_add_writes(q: &SplitQueue<IdentityHal>, writes: &[(u64, usize)], slot: u16) {
        let base = q.mem.paddr();
        let at = |off: usize| base + off as u64;
        let entry = at(q.avail_off + 4 + 2 * usize::from(slot));
        let idx = at(q.avail_off + 2);
        let used = at(q.used_off)..at(q.used_off + 6 + 8 * usize::from(q.size));
        assert_eq!(
            writes.last(),
            Some(&(idx, 2)),
            "avail.idx last: {writes:x?}"
        );
        assert_eq!(writes.iter().filter(|w| w.0 == idx).count(), 1);
        let entry_pos = writes.iter().position(|w| *w == (entry, 2));
        let entry_pos = entry_pos.unwrap_or_else(|| panic!("no ring entry: {writes:x?}"));
        assert_eq!(
            entry_pos,
            writes.len() - 2,
            "entry right before idx: {writes:x?}"
        );
        let descs = &writes[..entry_pos];
        assert!(!descs.is_empty(), "no descriptor written");
        for &(a, len) in descs {
            let in_table = a >= base && a + len as u64 <= at(q.avail_off);
            let in_indirect = q
                .tables
                .iter()
                .any(|t| a >= t.paddr() && a + len as u64 <= t.paddr() + t.len() as u64);
            assert!(in_table || in_indirect, "{a:#x}+{len} is not a descriptor");
        }
        for &(a, _) in writes {
            assert!(
                !used.contains(&a),
                "the driver wrote the used ring at {a:#x}"
            );
        }
    }

    #[test]
    fn descriptors_then_avail_entry_then_avail_idx() {
        for features in [0, bit(VIRTIO_F_INDIRECT_DESC)] {
            let mut q = SplitQueue::new(IdentityHal, 0, 4, false, features).unwrap();
            for k in 0..6u16 {
                write_log::start();
                // SAFETY: addresses never dereferenced.
                let t = unsafe { q.add_segments(&[seg(0x100, 1)], &[seg(0x200, 8)]) }.unwrap();
                let writes = write_log::take();
                check_add_writes(&q, &writes, k % 4);
                complete(&mut q, u32::from(t), 8);
                write_log::take();
                q.pop_used().unwrap().unwrap();
                // Without EVENT_IDX, popping writes nothing.
                assert_eq!(write_log::take(), []);
            }
            q.release();
        }
    }

    #[test]
    fn used_event_is_the_only_write_of_a_pop_with_event_idx() {
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, bit(VIRTIO_F_EVENT_IDX)).unwrap();
        let used_event = q.mem.paddr() + (q.avail_off + avail::used_event(4) as usize) as u64;
        // SAFETY: addresses never dereferenced.
        let t = unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
        complete(&mut q, u32::from(t), 0);
        write_log::start();
        q.pop_used().unwrap().unwrap();
        assert_eq!(write_log::take(), [(used_event, 2)]);
        q.release();
    }

    #[test]
    fn reenabling_used_notifications_with_event_idx_writes_used_event_only() {
        // §2.7.10: with EVENT_IDX the driver asks for the next interrupt by
        // writing used_event (after the avail ring's entries), nothing else.
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, bit(VIRTIO_F_EVENT_IDX)).unwrap();
        let used_event = q.mem.paddr() + (q.avail_off + avail::used_event(4) as usize) as u64;
        q.set_used_notifications(false);
        for _ in 0..3 {
            // SAFETY: addresses never dereferenced.
            let t = unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
            complete(&mut q, u32::from(t), 0);
            q.pop_used().unwrap().unwrap();
        }
        write_log::start();
        q.set_used_notifications(true);
        assert_eq!(write_log::take(), [(used_event, 2)]);
        let at = q.avail_off + avail::used_event(4) as usize;
        assert_eq!(u16::from_le(q.mem.load16(at)), 3);
        q.release();
    }

    #[test]
    fn chain_limits_are_inclusive() {
        // Exactly 2^32 bytes, exactly `size` direct descriptors and exactly
        // MAX_INDIRECT indirect ones are accepted; one more is refused.
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, 0).unwrap();
        // SAFETY: addresses never dereferenced, nothing is completed.
        unsafe {
            q.add_segments(&[seg(0, u32::MAX)], &[seg(0, 1)]).unwrap();
            assert_eq!(
                q.add_segments(&[seg(0, u32::MAX)], &[seg(0, 2)]),
                Err(Error::ChainTooLong((1 << 32) + 1))
            );
        }
        q.release();
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, 0).unwrap();
        let four = [seg(0, 1); 4];
        let five = [seg(0, 1); 5];
        // SAFETY: as above.
        unsafe {
            assert!(matches!(
                q.add_segments(&five, &[]),
                Err(Error::TooManySegments {
                    segments: 5,
                    max: 4
                })
            ));
            q.add_segments(&four, &[]).unwrap();
        }
        q.release();
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, bit(VIRTIO_F_INDIRECT_DESC)).unwrap();
        let max = alloc::vec![seg(0, 1); MAX_INDIRECT];
        let over = alloc::vec![seg(0, 1); MAX_INDIRECT + 1];
        // SAFETY: as above.
        unsafe {
            assert!(matches!(
                q.add_segments(&over, &[]),
                Err(Error::TooManySegments {
                    max: MAX_INDIRECT,
                    ..
                })
            ));
            q.add_segments(&max, &[]).unwrap();
        }
        q.release();
    }

    #[test]
    fn used_idx_a_whole_ring_ahead_is_valid() {
        // Every chain of a full ring completed at once: used.idx is exactly
        // `size` ahead, which is legal (more would be an error).
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, 0).unwrap();
        for _ in 0..4 {
            // SAFETY: addresses never dereferenced.
            let t = unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
            complete(&mut q, u32::from(t), 0);
        }
        for _ in 0..4 {
            assert!(q.pop_used().unwrap().is_some());
        }
        assert!(q.pop_used().unwrap().is_none());
        q.release();
    }

    #[test]
    fn event_idx_kick_decisions_across_the_16_bit_wrap() {
        // avail.idx goes 65534 -> 1 with three chains: the device asked to
        // be notified when the entry avail_event is made available, so a
        // kick is due iff avail_event is 65534, 65535 or 0 (§2.7.10).
        for (avail_event, want) in [
            (65532u16, false),
            (65533, false),
            (65534, true),
            (65535, true),
            (0, true),
            (1, false),
            (32767, false),
        ] {
            let mut q = SplitQueue::new(IdentityHal, 0, 4, false, bit(VIRTIO_F_EVENT_IDX)).unwrap();
            q.avail_idx = 65534;
            q.kicked_idx = 65534;
            for _ in 0..3 {
                // SAFETY: addresses never dereferenced.
                unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
            }
            assert_eq!(u16::from_le(q.mem.load16(q.avail_off + 2)), 1);
            let at = q.used_off + used::avail_event(4) as usize;
            q.mem.store16(at, avail_event.to_le());
            assert_eq!(q.should_notify(), want, "avail_event {avail_event}");
            q.release();
        }
    }

    #[test]
    fn no_notify_flag_without_event_idx() {
        let mut q = SplitQueue::new(IdentityHal, 0, 4, false, 0).unwrap();
        // SAFETY: addresses never dereferenced.
        unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
        q.mem.store16(q.used_off, VIRTQ_USED_F_NO_NOTIFY.to_le());
        assert!(!q.should_notify());
        q.mem.store16(q.used_off, 0);
        assert!(q.should_notify());
        q.set_used_notifications(false);
        assert_eq!(
            u16::from_le(q.mem.load16(q.avail_off)),
            VIRTQ_AVAIL_F_NO_INTERRUPT
        );
        q.release();
    }

    #[test]
    fn shared_buffers_are_unshared_at_completion() {
        // Through bounce buffers: the device's write reaches the caller's
        // buffer only when the completed chain's buffers are unshared.
        let hal = BounceHal::default();
        let mut v = super::super::VirtQueue::new(hal.clone(), 0, 4, false, 0).unwrap();
        let out = [1u8, 2, 3];
        let mut inb = [0u8; 4];
        // SAFETY: the test plays the device and keeps both buffers alive
        // and untouched until the pop below.
        let t = unsafe { v.add(&[&out], &mut [&mut inb]) }.unwrap();
        assert_eq!(hal.live(), 2);
        let q = v.split_mut();
        let (out_addr, _, _, _) = read_desc(q, 0);
        assert_eq!(hal.device_view(out_addr), [1, 2, 3]);
        let (in_addr, _, _, _) = read_desc(q, 1);
        hal.device_write(in_addr, &[0xaa]);
        complete(q, u32::from(t), 1);
        assert_eq!(v.pop_used(), Ok(Some(Used { token: t, len: 1 })));
        assert_eq!(hal.live(), 0, "every buffer unshared at completion");
        assert_eq!(inb, [0xaa, 0, 0, 0]);
        // A chain without caller buffers leaves nothing to unshare.
        let q = v.split_mut();
        // SAFETY: addresses never dereferenced.
        let t = unsafe { q.add_segments(&[seg(0, 1)], &[]) }.unwrap();
        complete(q, u32::from(t), 0);
        assert_eq!(v.pop_used(), Ok(Some(Used { token: t, len: 0 })));
        assert_eq!(hal.live(), 0);
        v.release();
    }

    #[test]
    fn used_index_wraps_past_u16() {
        let mut q = SplitQueue::new(IdentityHal, 0, 2, false, bit(VIRTIO_F_EVENT_IDX)).unwrap();
        for i in 0..70_000u32 {
            // SAFETY: addresses never dereferenced.
            let t = unsafe { q.add_segments(&[], &[seg(0, 4)]) }.unwrap();
            complete(&mut q, u32::from(t), i % 5);
            assert_eq!(
                q.pop_used(),
                Ok(Some(Used {
                    token: t,
                    len: i % 5
                }))
            );
        }
        assert_eq!(q.avail_idx(), (70_000u32 % 65_536) as u16);
        q.release();
    }
}
