//! Byte-level views of a descriptor chain, shared by the device backends.
//!
//! A chain is a device-readable part followed by a device-writable part
//! (virtio v1.4 §2.7.4 "Message Framing"). Devices must not assume any
//! particular arrangement of descriptors, so a request header may span two
//! descriptors and a status byte may share a descriptor with data. These
//! helpers address "bytes `[skip, skip + len)` of the readable (or writable)
//! part" without allocating, and walk at most one step per descriptor.

use vm_memory::bitmap::MS;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError,
    VolatileMemory, VolatileSlice,
};
use vmm_sys_util::eventfd::EventFd;
use vmmio_device::queue::Descriptor;
use vmmio_device::{
    ActivateError, BackendFd, DescriptorChain, InterruptCause, InterruptStatus, Queue, QueueError,
};

/// The chain has a device-readable descriptor after a device-writable one
/// (virtio v1.4 §2.7.4.2: the driver MUST place readable descriptors
/// first). The queue should already reject this; devices check again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device-readable descriptor {index} follows a device-writable one")]
pub(crate) struct ReadableAfterWritable {
    /// Position of the offending descriptor in the chain.
    pub(crate) index: usize,
}

/// A chain split into its readable and writable parts, with their total
/// lengths in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainLayout<'a> {
    /// The device-readable descriptors, in chain order.
    pub(crate) readable: &'a [Descriptor],
    /// The device-writable descriptors, in chain order.
    pub(crate) writable: &'a [Descriptor],
    /// Sum of the readable lengths, in bytes.
    pub(crate) readable_len: u64,
    /// Sum of the writable lengths, in bytes.
    pub(crate) writable_len: u64,
}

impl<'a> ChainLayout<'a> {
    /// Splits `descs` at the first writable descriptor.
    ///
    /// # Errors
    /// [`ReadableAfterWritable`] when a readable descriptor follows a
    /// writable one.
    #[inline]
    pub(crate) fn split(descs: &'a [Descriptor]) -> Result<Self, ReadableAfterWritable> {
        // One pass: the first writable descriptor and the lengths. The sums
        // cannot overflow (at most `usize::MAX` descriptors of at most
        // `u32::MAX` bytes each would need more than 2^96 bytes);
        // saturating keeps them total anyway.
        let mut first_writable = None;
        let (mut readable_len, mut writable_len) = (0u64, 0u64);
        for (index, d) in descs.iter().enumerate() {
            let len = u64::from(d.len);
            if d.writable {
                first_writable.get_or_insert(index);
                writable_len = writable_len.saturating_add(len);
            } else if first_writable.is_some() {
                return Err(ReadableAfterWritable { index });
            } else {
                readable_len = readable_len.saturating_add(len);
            }
        }
        let (readable, writable) = descs.split_at(first_writable.unwrap_or(descs.len()));
        Ok(Self {
            readable,
            writable,
            readable_len,
            writable_len,
        })
    }
}

/// Bytes `[skip, skip + len)` of the concatenated buffers of `descs`.
///
/// Bytes past the end of the buffers are not part of the region: `pieces`
/// stops at the last descriptor, so callers compare `len` against the
/// part's total length first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region<'a> {
    descs: &'a [Descriptor],
    skip: u64,
    len: u64,
}

impl<'a> Region<'a> {
    /// The `len` bytes starting `skip` bytes into the buffers of `descs`.
    pub(crate) fn new(descs: &'a [Descriptor], skip: u64, len: u64) -> Self {
        Self { descs, skip, len }
    }

    /// The `len` bytes starting `offset` bytes into this region; callers
    /// keep `offset + len <= self.len()`.
    pub(crate) fn sub(&self, offset: u64, len: u64) -> Region<'a> {
        Region {
            descs: self.descs,
            skip: self.skip.saturating_add(offset),
            len,
        }
    }

    /// Length of the region in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The guest ranges of the region in order, as `(address, length in
    /// bytes)`; zero-length pieces are skipped. One step per descriptor.
    ///
    /// An item is [`GuestMemoryError::GuestAddressOverflow`] when a
    /// descriptor's buffer wraps around the end of the address space.
    pub(crate) fn pieces(
        &self,
    ) -> impl Iterator<Item = Result<(GuestAddress, usize), GuestMemoryError>> + 'a {
        let mut skip = self.skip;
        let mut left = self.len;
        self.descs.iter().filter_map(move |d| {
            let dlen = u64::from(d.len);
            if left == 0 {
                return None;
            }
            if skip >= dlen {
                skip -= dlen;
                return None;
            }
            // `skip < dlen`, so `dlen - skip` does not underflow.
            let take = (dlen - skip).min(left);
            let addr = d.addr.0.checked_add(skip);
            skip = 0;
            left -= take;
            // `take <= u32::MAX`, which fits `usize` on the 64-bit hosts
            // vm-memory supports; the fallback is never taken there.
            let take = usize::try_from(take).unwrap_or(usize::MAX);
            Some(match addr {
                // The whole buffer must not wrap either.
                Some(a) if a.checked_add(take as u64).is_some() => Ok((GuestAddress(a), take)),
                _ => Err(GuestMemoryError::GuestAddressOverflow),
            })
        })
    }

    /// The guest address of the region when it is `len` (> 0) bytes inside
    /// one descriptor (a request header, a status byte, a data buffer).
    fn single_piece(&self, len: usize) -> Option<GuestAddress> {
        if len == 0 || self.len != len as u64 {
            return None;
        }
        // As `pieces().next()`, without the iterator: the descriptor the
        // region starts in must hold all of it, and must not wrap.
        let mut skip = self.skip;
        for d in self.descs {
            let dlen = u64::from(d.len);
            if skip < dlen {
                if dlen - skip < self.len {
                    return None;
                }
                let addr = d.addr.0.checked_add(skip)?;
                addr.checked_add(self.len)?;
                return Some(GuestAddress(addr));
            }
            skip -= dlen;
        }
        None
    }

    /// The whole (non-empty) region as one slice, when it lies inside one
    /// descriptor and one region of plain guest memory (no IOMMU): the fast
    /// path of [`Region::read_into`], [`Region::write_from`] and the block
    /// data transfer, one region lookup (`get_slices` costs several times
    /// more). `None` otherwise, errors included: callers then take the
    /// general walk, which reports them.
    pub(crate) fn single_slice<'m, M: GuestMemory>(
        &self,
        mem: &'m M,
    ) -> Option<VolatileSlice<'m, MS<'m, M::PhysicalMemory>>> {
        let len = usize::try_from(self.len).ok()?;
        let addr = self.single_piece(len)?;
        let slice = mem.physical_memory()?.get_slice(addr, len).ok()?;
        (slice.len() == len).then_some(slice)
    }

    /// Reads the region, which must be `N` bytes long, as an array (a
    /// request header, a segment). In one descriptor and one memory region
    /// that is one volatile load; otherwise as [`Region::read_into`].
    ///
    /// # Errors
    /// As [`Region::read_into`].
    #[inline]
    pub(crate) fn read_array<const N: usize, M: GuestMemory>(
        &self,
        mem: &M,
    ) -> Result<[u8; N], GuestMemoryError>
    where
        [u8; N]: ByteValued,
    {
        if self.len == N as u64 {
            if let Some(slice) = self.single_slice(mem) {
                if let Ok(r) = slice.get_ref::<[u8; N]>(0) {
                    return Ok(r.load());
                }
            }
        }
        let mut buf = [0u8; N];
        self.read_into(mem, &mut buf)?;
        Ok(buf)
    }

    /// Writes `v` to the region, which must be one byte long (a status
    /// byte): one volatile store in the common case, else as
    /// [`Region::write_from`].
    ///
    /// # Errors
    /// As [`Region::write_from`].
    pub(crate) fn write_byte<M: GuestMemory>(
        &self,
        mem: &M,
        v: u8,
    ) -> Result<(), GuestMemoryError> {
        if self.len == 1 {
            if let Some(slice) = self.single_slice(mem) {
                if let Ok(r) = slice.get_ref::<u8>(0) {
                    r.store(v);
                    return Ok(());
                }
            }
        }
        self.write_from(mem, &[v])
    }

    /// Reads the region into `buf` (whose length must equal the region's).
    ///
    /// # Errors
    /// A guest memory error when a piece is outside guest memory, or
    /// [`GuestMemoryError::PartialBuffer`] when the region is shorter than
    /// `buf` (its descriptors end early).
    pub(crate) fn read_into<M: GuestMemory>(
        &self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        // Fast path: see `single_slice`.
        if self.len == buf.len() as u64 {
            if let Some(slice) = self.single_slice(mem) {
                slice.copy_to(buf);
                return Ok(());
            }
        }
        let mut done = 0usize;
        for piece in self.pieces() {
            let (addr, n) = piece?;
            let end = done.checked_add(n).filter(|&e| e <= buf.len()).ok_or(
                GuestMemoryError::PartialBuffer {
                    expected: buf.len(),
                    completed: done,
                },
            )?;
            mem.read_slice(&mut buf[done..end], addr)?;
            done = end;
        }
        if done != buf.len() {
            return Err(GuestMemoryError::PartialBuffer {
                expected: buf.len(),
                completed: done,
            });
        }
        Ok(())
    }

    /// Writes `data` to the region (whose length must equal `data.len()`).
    ///
    /// # Errors
    /// As [`Region::read_into`].
    pub(crate) fn write_from<M: GuestMemory>(
        &self,
        mem: &M,
        data: &[u8],
    ) -> Result<(), GuestMemoryError> {
        // Fast path as in `read_into`.
        if self.len == data.len() as u64 {
            if let Some(slice) = self.single_slice(mem) {
                slice.copy_from(data);
                return Ok(());
            }
        }
        let mut done = 0usize;
        for piece in self.pieces() {
            let (addr, n) = piece?;
            let end = done.checked_add(n).filter(|&e| e <= data.len()).ok_or(
                GuestMemoryError::PartialBuffer {
                    expected: data.len(),
                    completed: done,
                },
            )?;
            mem.write_slice(&data[done..end], addr)?;
            done = end;
        }
        if done != data.len() {
            return Err(GuestMemoryError::PartialBuffer {
                expected: data.len(),
                completed: done,
            });
        }
        Ok(())
    }
}

/// Counts peer faults of one kind so that a guest cannot flood the host
/// log: the first 16 of each kind per device are logged at warn level, the
/// rest at debug level (the limiter is `vmmio-device`'s, shared with the
/// transport).
pub(crate) type LogLimiter = vmmio_device::LogLimiter<16>;

/// Most batches of `size` chains served per notification (or per
/// [`MoreWork`] event). The cap bounds one call: a worker holds the
/// device for its whole length, and a driver that keeps adding chains
/// must not keep a reset waiting.
pub(crate) const MAX_BATCHES: u32 = 4;

/// Chains a device left in a ring when it stopped at [`MAX_BATCHES`].
///
/// The driver will not notify for them: with EVENT_IDX it already passed
/// the `avail_event` the device published (§2.7.10), and without it may
/// have seen notifications suppressed. So the device wakes itself: it
/// writes an `EventFd`, lists it readable in `backend_fds` while work is
/// left, and on `backend_event(MoreWork::TOKEN)` serves its queues again,
/// through the worker's epoll loop or `MmioTransport::poll_backends` alike.
#[derive(Debug, Default)]
pub(crate) struct MoreWork {
    /// Opened at the first activate, kept across resets.
    fd: Option<EventFd>,
    /// The fd was written and not yet drained.
    pending: bool,
}

impl MoreWork {
    /// The token of the "more work" fd; no device uses it for another fd.
    pub(crate) const TOKEN: u64 = u64::MAX;

    /// Opens the `EventFd` if not yet open; called from `activate`.
    pub(crate) fn open(&mut self) -> Result<(), ActivateError> {
        if self.fd.is_none() {
            let fd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| ActivateError::Backend(e.into()))?;
            self.fd = Some(fd);
        }
        Ok(())
    }

    /// Chains were left at the cap: wake the device again.
    pub(crate) fn signal(&mut self) {
        if self.pending {
            return;
        }
        let Some(fd) = self.fd.as_ref() else {
            log::error!("more-work eventfd not open: chains left until the next notification");
            return;
        };
        match fd.write(1) {
            Ok(()) => self.pending = true,
            Err(e) => log::error!("more-work eventfd write failed: {e}"),
        }
    }

    /// The fd to list in `backend_fds` while work is left.
    pub(crate) fn backend_fd(&self) -> Option<BackendFd> {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_ref().filter(|_| self.pending)?;
        Some(BackendFd {
            fd: fd.as_raw_fd(),
            token: Self::TOKEN,
            readable: true,
            writable: false,
        })
    }

    /// Drains the fd (on its `backend_event`, and at reset); the caller
    /// then serves its queues again, or drops them.
    pub(crate) fn clear(&mut self) {
        if std::mem::take(&mut self.pending) {
            if let Some(fd) = self.fd.as_ref() {
                // Non-blocking: a spurious or repeated call reads nothing.
                let _ = fd.read();
            }
        }
    }
}

/// One queue of a running device and what serving it needs.
pub(crate) struct Served<'a, M> {
    /// Device name for logs ("virtio-blk", ...).
    pub(crate) name: &'static str,
    /// The queue.
    pub(crate) queue: &'a mut Queue,
    /// Set when the driver broke the ring: the queue is no longer served.
    pub(crate) broken: &'a mut bool,
    /// Guest memory.
    pub(crate) mem: &'a M,
    /// Where used-buffer notifications go.
    pub(crate) interrupt: &'a InterruptStatus,
    /// Reused chain storage, so popping does not allocate.
    pub(crate) chain: &'a mut DescriptorChain,
    /// Rate limit of the "driver broke the queue" log line: a driver can
    /// break a queue, reset or re-enable it and break it again at will.
    pub(crate) broken_log: &'a mut LogLimiter,
    /// Signalled when serving stops at the cap with chains left.
    pub(crate) more: &'a mut MoreWork,
}

impl<M: GuestMemory> Served<'_, M> {
    /// Pops chains while `want_more(state)`, hands each to `handle` (which
    /// returns the used length) and puts it in the used ring; after each
    /// batch of up to `size` chains asks the queue once whether the driver
    /// wants a notification and raises at most one interrupt. Stops after
    /// [`MAX_BATCHES`] full batches; chains left then signal `more`.
    ///
    /// A queue error (the driver broke the ring) is logged (at error level
    /// [`LogLimiter::LIMIT`] times per device, then at debug level), marks
    /// the queue broken, ends serving it and reports DEVICE_NEEDS_RESET with a
    /// configuration change notification (§2.1.2).
    pub(crate) fn serve<S>(
        self,
        state: &mut S,
        want_more: impl Fn(&S) -> bool,
        mut handle: impl FnMut(&mut S, &M, &[Descriptor]) -> u32,
    ) {
        self.serve_deferred(state, want_more, |s, m, d, _| Some(handle(s, m, d)));
    }

    /// As [`Served::serve`], for devices that complete some chains later:
    /// `handle` also gets the chain's head index and returns `None` for a
    /// chain it keeps (the device puts it in the used ring itself when it
    /// completes, e.g. the block device's io_uring engine).
    pub(crate) fn serve_deferred<S>(
        self,
        state: &mut S,
        want_more: impl Fn(&S) -> bool,
        mut handle: impl FnMut(&mut S, &M, &[Descriptor], u16) -> Option<u32>,
    ) {
        let Served {
            name,
            queue,
            broken,
            mem,
            interrupt,
            chain,
            broken_log,
            more,
        } = self;
        if *broken || !queue.ready() {
            return;
        }
        let batch = u32::from(queue.size()).max(1);
        for _ in 0..MAX_BATCHES {
            let mut served = 0u32;
            let mut used = false;
            while served < batch && want_more(state) {
                match queue.pop_into(mem, chain) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        break_queue(name, broken_log, broken, interrupt, &e);
                        break;
                    }
                }
                served += 1;
                let Some(len) = handle(state, mem, chain.descriptors(), chain.head_index()) else {
                    continue;
                };
                if let Err(e) = queue.add_used(mem, chain.head_index(), len) {
                    break_queue(name, broken_log, broken, interrupt, &e);
                    break;
                }
                used = true;
            }
            if used {
                // On error, notify anyway: a spurious interrupt is harmless.
                if queue.needs_notification(mem).unwrap_or(true) {
                    interrupt.raise(InterruptCause::UsedBuffer);
                }
            }
            if served < batch || *broken {
                return;
            }
        }
        // Stopped with chains perhaps left: ask for the driver's next
        // notification, and serve the ones already there on our own.
        match queue.enable_notification(mem) {
            Ok(true) => more.signal(),
            Ok(false) => {}
            Err(e) => break_queue(name, broken_log, broken, interrupt, &e),
        }
    }
}

/// The driver broke a queue: logs `e` (at error level the first
/// [`LogLimiter::LIMIT`] times, then at debug level), marks the queue
/// broken and reports DEVICE_NEEDS_RESET.
pub(crate) fn break_queue(
    name: &str,
    log: &mut LogLimiter,
    broken: &mut bool,
    interrupt: &InterruptStatus,
    e: &QueueError,
) {
    let level = match log.level() {
        log::Level::Warn => log::Level::Error,
        quiet => quiet,
    };
    log::log!(
        level,
        "{name}: driver broke the queue, no longer served: {e}"
    );
    *broken = true;
    interrupt.device_needs_reset();
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn d(addr: u64, len: u32, writable: bool) -> Descriptor {
        Descriptor {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    #[test]
    fn split_rejects_readable_after_writable() {
        let descs = [d(0, 1, false), d(8, 1, true), d(16, 1, false)];
        assert_eq!(
            ChainLayout::split(&descs).unwrap_err(),
            ReadableAfterWritable { index: 2 }
        );
        let ok = ChainLayout::split(&descs[..2]).unwrap();
        assert_eq!((ok.readable_len, ok.writable_len), (1, 1));
    }

    #[test]
    fn region_spans_descriptors_and_skips_empty_ones() {
        let descs = [d(0x100, 4, false), d(0x200, 0, false), d(0x300, 8, false)];
        let pieces: Vec<_> = Region::new(&descs, 2, 6)
            .pieces()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            pieces,
            vec![(GuestAddress(0x102), 2), (GuestAddress(0x300), 4)]
        );
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x100)).unwrap();
        mem.write_slice(&[5, 6, 7, 8], GuestAddress(0x300)).unwrap();
        let mut buf = [0u8; 6];
        Region::new(&descs, 2, 6).read_into(&mem, &mut buf).unwrap();
        assert_eq!(buf, [3, 4, 5, 6, 7, 8]);
        // Asking for more than the chain holds is an error, not a panic.
        let mut big = [0u8; 32];
        assert!(Region::new(&descs, 0, 32)
            .read_into(&mem, &mut big)
            .is_err());
    }

    /// The one-descriptor fast path (`single_slice`) is taken exactly for
    /// a region inside one descriptor (also one that starts in a later
    /// descriptor or fills one to its end), and both paths move the same
    /// bytes; a length that does not match the region is an error on
    /// every path.
    #[test]
    fn fast_and_general_paths_agree() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x100)).unwrap();
        mem.write_slice(&[5, 6, 7, 8], GuestAddress(0x300)).unwrap();
        let descs = [d(0x100, 4, true), d(0x300, 4, true)];
        // (skip, len, one descriptor?, bytes)
        let cases: [(u64, u64, bool, &[u8]); 5] = [
            (0, 4, true, &[1, 2, 3, 4]),
            (1, 3, true, &[2, 3, 4]),
            (4, 4, true, &[5, 6, 7, 8]),
            (5, 2, true, &[6, 7]),
            (2, 4, false, &[3, 4, 5, 6]),
        ];
        for (skip, len, single, want) in cases {
            let r = Region::new(&descs, skip, len);
            assert_eq!(r.single_slice(&mem).is_some(), single, "{skip} {len}");
            let mut got = vec![0u8; want.len()];
            r.read_into(&mem, &mut got).unwrap();
            assert_eq!(got, want, "{skip} {len}");
            if len == 4 {
                assert_eq!(r.read_array::<4, _>(&mem).unwrap(), want);
            }
            // Longer and shorter buffers than the region are errors.
            assert!(r.read_into(&mem, &mut vec![0; want.len() + 1]).is_err());
            assert!(r.read_array::<8, _>(&mem).is_err());
        }
        // Writes land where reads found the bytes, on both paths.
        let r = Region::new(&descs, 2, 4);
        r.write_from(&mem, &[10, 11, 12, 13]).unwrap();
        Region::new(&descs, 7, 1).write_byte(&mem, 14).unwrap();
        let mut got = [0u8; 8];
        Region::new(&descs, 0, 8).read_into(&mem, &mut got).unwrap();
        assert_eq!(got, [1, 2, 10, 11, 12, 13, 7, 14]);
        // Data longer than the region is an error (after writing what
        // fits, on the general path), as is a byte into a longer region.
        assert!(Region::new(&descs, 1, 2).write_from(&mem, &[0; 3]).is_err());
        assert!(Region::new(&descs, 1, 2).write_byte(&mem, 0).is_err());
    }

    #[test]
    fn region_outside_guest_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let descs = [d(u64::MAX - 1, 16, true)];
        assert!(Region::new(&descs, 0, 16)
            .write_from(&mem, &[0; 16])
            .is_err());
        // A buffer that wraps around the address space is named so.
        let wrap: Vec<_> = Region::new(&descs, 0, 16).pieces().collect();
        assert!(matches!(
            wrap[..],
            [Err(GuestMemoryError::GuestAddressOverflow)]
        ));
        let descs = [d(0xff8, 16, true)];
        assert!(Region::new(&descs, 0, 16)
            .write_from(&mem, &[0; 16])
            .is_err());
    }

    /// A driver that breaks a queue, resets it and breaks it again gets
    /// DEVICE_NEEDS_RESET every time, but only the first
    /// `LogLimiter::LIMIT` breaks are logged at error level: it cannot
    /// flood the host's log.
    #[test]
    fn repeated_queue_breaks_are_rate_limited() {
        use crate::test_util::{interrupt, mem, TestRing};

        let mem = mem();
        let ring = TestRing::new(8, 0);
        // `avail.idx` 100 with nothing consumed: more than `size` ahead.
        mem.write_obj(100u16, GuestAddress(ring.avail + 2)).unwrap();
        let (status, _line) = interrupt();
        let mut log = LogLimiter::default();
        let mut chain = DescriptorChain::new();
        let mut more = MoreWork::default();
        let breaks = LogLimiter::LIMIT + 4;
        for _ in 0..breaks {
            let mut queue = ring.queue(0);
            let mut broken = false;
            Served {
                name: "test",
                queue: &mut queue,
                broken: &mut broken,
                mem: &mem,
                interrupt: &status,
                chain: &mut chain,
                broken_log: &mut log,
                more: &mut more,
            }
            .serve(&mut (), |_| true, |_, _, _| 0);
            assert!(broken, "every break is still reported");
        }
        assert_eq!(log.count(), breaks);
        assert_eq!(log.level(), log::Level::Debug);
    }
}
