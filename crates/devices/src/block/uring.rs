//! The io_uring engine of the block device: IN, OUT and FLUSH requests go to
//! the kernel as one SQE each and complete later, in any order.
//!
//! - IN / OUT: one `IORING_OP_READV` / `WRITEV` over the request's data
//!   descriptors (the iovecs point straight into guest memory). Without
//!   negotiated `VIRTIO_BLK_F_FLUSH` the write carries `RWF_DSYNC`, so it is
//!   stable before it completes (virtio v1.4 §5.2.6.2, write-through).
//!   A short transfer is re-submitted for the rest; a transfer of 0 bytes
//!   or a negative result is `VIRTIO_BLK_S_IOERR`.
//! - FLUSH: `IORING_OP_FSYNC` (datasync) with `IOSQE_IO_DRAIN`: the kernel
//!   starts it only after every SQE submitted before it has completed, so it
//!   covers every write the driver had seen completed (and more).
//! - Completions: the ring's eventfd (`IORING_REGISTER_EVENTFD`) is a
//!   [`BackendFd`](vmmio_device::BackendFd) of the device, so the worker's
//!   epoll loop or `MmioTransport::poll_backends` calls `backend_event`,
//!   which reaps the completion queue, writes each status byte and puts the
//!   chain in the used ring.
//! - Bounds: at most [`Uring::capacity`] requests in flight (the SQ size,
//!   min(queue entries, 256), less one slot kept for a cancel: at most
//!   255); the device stops popping chains when
//!   that many are in flight and pops again when completions arrive. The CQ
//!   is twice the SQ, so it never overflows. The per-request storage (iovec
//!   arrays) is allocated once per slot and reused, at most `IOV_MAX`
//!   entries each: a guest that never reaps its used ring costs nothing
//!   more.
//! - Reset: [`Uring::drain`] cancels what is in flight
//!   (`IORING_OP_ASYNC_CANCEL`, any) and waits until every SQE has
//!   completed before it returns. Reads of a regular file cannot be
//!   cancelled once started; the wait then lasts as long as that I/O.
//!
//! # Soundness of pointers into guest memory
//! The iovecs hold host addresses of guest memory (from vm-memory's
//! `VolatileSlice::ptr_guard`) that the kernel uses after the call that
//! made them returned. That is sound because (1) the device keeps its clone
//! of the guest memory object (`M`, which owns the mappings) until no SQE is
//! in flight: `reset`, `queue_reset` and drop all drain first, and the
//! memory object is dropped only after; (2) the mappings of plain mmap
//! regions do not move or close while the object lives (the guards of
//! vm-memory's `xen` feature would, and this crate does not enable it);
//! (3) no Rust reference to that memory exists: the guest may race with the
//! kernel on its own buffers, which changes only what the guest sees; (4)
//! the iovec arrays themselves stay in their slot until the SQE completes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;

use crate::chain::{LogLimiter, Region};

/// Most iovecs in one SQE (the kernel's `UIO_MAXIOV`); a request with more
/// data descriptors is served synchronously.
pub(crate) const IOV_MAX: usize = 1024;

/// Most SQ entries the engine asks for, whatever the queues' sizes: at
/// most 255 requests in flight, so the per-slot storage (iovecs and guest
/// ranges, 32 bytes per data segment, at most [`IOV_MAX`] segments) stays
/// under 8 MiB whatever the guest does.
const MAX_ENTRIES: u32 = 256;

/// `user_data` of cancel SQEs (never a slot index).
const CANCEL: u64 = u64::MAX;

/// Which engine serves a block device's reads, writes and flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IoEngine {
    /// io_uring if the kernel offers it and the backend has a file
    /// descriptor, else synchronous (a log line says which runs).
    Auto,
    /// `preadv` / `pwritev` / `fdatasync` inside the notification (the
    /// default).
    #[default]
    Sync,
    /// io_uring; building the device fails if the kernel does not offer
    /// it or the backend has no file descriptor.
    IoUring,
}

impl std::fmt::Display for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoEngine::Auto => "auto",
            IoEngine::Sync => "sync",
            IoEngine::IoUring => "io-uring",
        })
    }
}

impl std::str::FromStr for IoEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoEngine::Auto),
            "sync" => Ok(IoEngine::Sync),
            "io-uring" | "io_uring" | "uring" => Ok(IoEngine::IoUring),
            other => Err(format!(
                "unknown block engine {other:?} (auto, sync or io-uring)"
            )),
        }
    }
}

/// The kind of an in-flight request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write { dsync: bool },
    Flush,
}

/// One request in flight.
#[derive(Debug)]
struct Slot {
    busy: bool,
    queue: u16,
    head: u16,
    kind: Kind,
    /// Guest address of the status byte.
    status: GuestAddress,
    /// Byte offset in the backend where the transfer starts.
    offset: u64,
    /// Bytes to move, and bytes moved so far.
    total: u64,
    done: u64,
    /// The data, as host addresses into guest memory (see the module's
    /// soundness note); advanced past `done` on a re-submission.
    iov: Vec<libc::iovec>,
    /// The same data as guest ranges, to mark read pages dirty.
    pieces: Vec<(GuestAddress, usize)>,
}

// SAFETY: the raw pointers in `iov` are addresses of guest memory handed
// to the kernel, never dereferenced by this crate; moving the slot to
// another thread (the device's worker) changes nothing about them.
unsafe impl Send for Slot {}

/// A request the engine finished: what the device puts in the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) queue: u16,
    pub(crate) head: u16,
    /// Used length: data bytes written into the chain plus the status byte.
    pub(crate) len: u32,
}

/// Where a popped chain came from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tag {
    pub(crate) queue: u16,
    pub(crate) head: u16,
}

/// Why a request was not handed to the ring: the caller serves it
/// synchronously instead.
#[derive(Debug)]
pub(crate) struct NotQueued;

/// The io_uring engine of one block device.
pub(crate) struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    fd: RawFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    /// SQEs pushed and not yet submitted.
    unsubmitted: bool,
    /// `(user_data, result)` of the CQEs being reaped, reused.
    cqes: Vec<(u64, i32)>,
    io_log: LogLimiter,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Uring {
    /// A ring for `fd` sized for `queue_entries` descriptors over all
    /// queues (clamped to 2..=256 SQ entries), with its completion
    /// eventfd registered. Fails when the kernel has no io_uring (ENOSYS,
    /// or EPERM under a seccomp filter or `io_uring_disabled`) or lacks
    /// one of the opcodes used.
    pub(crate) fn new(fd: RawFd, queue_entries: u32) -> io::Result<Self> {
        let entries = queue_entries.clamp(2, MAX_ENTRIES).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
            opcode::AsyncCancel2::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported by the kernel"),
                ));
            }
        }
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        // One SQ entry stays free for a cancel at reset.
        let capacity = ring.params().sq_entries().saturating_sub(1).max(1);
        let slots = (0..capacity)
            .map(|_| Slot {
                busy: false,
                queue: 0,
                head: 0,
                kind: Kind::Flush,
                status: GuestAddress(0),
                offset: 0,
                total: 0,
                done: 0,
                iov: Vec::new(),
                pieces: Vec::new(),
            })
            .collect();
        Ok(Self {
            ring,
            eventfd,
            fd,
            slots,
            free: (0..capacity).rev().collect(),
            in_flight: 0,
            unsubmitted: false,
            cqes: Vec::new(),
            io_log: LogLimiter::default(),
        })
    }

    /// Most requests in flight at once.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Requests in flight (pushed, submitted or running in the kernel).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another request can be taken.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// The completion eventfd.
    pub(crate) fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Queues a read (`write == false`: IN, into the guest) or a write of
    /// `data` at byte `offset` of the file. `dsync`: the write must be
    /// stable when it completes.
    ///
    /// # Errors
    /// [`NotQueued`] when the engine is full, the data has more than
    /// [`IOV_MAX`] pieces or is empty, or a piece is not guest memory: the
    /// caller serves the request synchronously (which reports the error).
    pub(crate) fn queue_rw<M: GuestMemory>(
        &mut self,
        mem: &M,
        tag: Tag,
        status: GuestAddress,
        data: Region<'_>,
        offset: u64,
        kind_write: Option<bool>,
    ) -> Result<(), NotQueued> {
        if data.len() == 0 {
            return Err(NotQueued);
        }
        let Some(&index) = self.free.last() else {
            return Err(NotQueued);
        };
        let slot = self.slots.get_mut(index as usize).ok_or(NotQueued)?;
        let access = match kind_write {
            None => Permissions::Write,
            Some(_) => Permissions::Read,
        };
        slot.iov.clear();
        slot.pieces.clear();
        let mut total = 0u64;
        for piece in data.pieces() {
            let (addr, len) = piece.map_err(|_| NotQueued)?;
            for s in mem.get_slices(addr, len, access).map_err(|_| NotQueued)? {
                let s = s.map_err(|_| NotQueued)?;
                if slot.iov.len() == IOV_MAX {
                    return Err(NotQueued);
                }
                // The guard of a plain mmap region unmaps nothing when
                // dropped; the address stays valid while `mem` lives (see
                // the module's soundness note).
                let base = match kind_write {
                    None => s.ptr_guard_mut().as_ptr(),
                    Some(_) => s.ptr_guard().as_ptr().cast_mut(),
                };
                slot.iov.push(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: s.len(),
                });
                total += s.len() as u64;
            }
            slot.pieces.push((addr, len));
        }
        if total != data.len() {
            return Err(NotQueued);
        }
        slot.busy = true;
        slot.queue = tag.queue;
        slot.head = tag.head;
        slot.kind = match kind_write {
            None => Kind::Read,
            Some(dsync) => Kind::Write { dsync },
        };
        slot.status = status;
        slot.offset = offset;
        slot.total = total;
        slot.done = 0;
        self.free.pop();
        self.in_flight += 1;
        self.push_rw(index);
        Ok(())
    }

    /// Queues a flush, ordered after every SQE queued before it.
    ///
    /// # Errors
    /// [`NotQueued`] when the engine is full.
    pub(crate) fn queue_flush(&mut self, tag: Tag, status: GuestAddress) -> Result<(), NotQueued> {
        let index = self.free.pop().ok_or(NotQueued)?;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Err(NotQueued);
        };
        slot.busy = true;
        slot.queue = tag.queue;
        slot.head = tag.head;
        slot.kind = Kind::Flush;
        slot.status = status;
        slot.total = 0;
        slot.done = 0;
        self.in_flight += 1;
        let sqe = opcode::Fsync::new(types::Fd(self.fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(squeue::Flags::IO_DRAIN)
            .user_data(u64::from(index));
        self.push(&sqe);
        Ok(())
    }

    /// Pushes the (remaining) transfer of slot `index`.
    fn push_rw(&mut self, index: u32) {
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        // Bounded by IOV_MAX.
        let iovcnt = slot.iov.len() as u32;
        let offset = slot.offset.saturating_add(slot.done);
        let fd = types::Fd(self.fd);
        let sqe = match slot.kind {
            Kind::Read => opcode::Readv::new(fd, slot.iov.as_ptr(), iovcnt)
                .offset(offset)
                .build(),
            Kind::Write { dsync } => opcode::Writev::new(fd, slot.iov.as_ptr(), iovcnt)
                .offset(offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            Kind::Flush => return,
        };
        self.push(&sqe.user_data(u64::from(index)));
    }

    /// Pushes one SQE. The SQ has room: at most `capacity` requests are in
    /// flight, each with at most one SQE not yet submitted, and one entry
    /// is kept for a cancel; should it be full anyway, submit first.
    fn push(&mut self, sqe: &squeue::Entry) {
        for _ in 0..2 {
            // SAFETY: the SQE's pointers (iovec arrays in `self.slots`,
            // guest memory they point to) stay valid until its completion
            // is reaped: slots are reused only after their CQE, and the
            // device drains before dropping guest memory or `self`.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.unsubmitted = true;
                return;
            }
            self.submit();
        }
        log::error!("virtio-blk: io_uring submission queue full; request dropped");
    }

    /// Submits what was pushed (one `io_uring_enter`).
    pub(crate) fn submit(&mut self) {
        if !self.unsubmitted {
            return;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EAGAIN / EBUSY: the kernel takes them at the next
                    // submit (they stay in the SQ).
                    log::log!(self.io_log.level(), "virtio-blk: io_uring submit: {e}");
                    return;
                }
            }
        }
        self.unsubmitted = false;
    }

    /// Reaps every completion: writes the status byte (and marks read
    /// pages dirty) through `mem`, re-submits short transfers, and appends
    /// finished requests to `done`. With `mem == None` (the device is being
    /// reset) nothing is written and nothing re-submitted; requests of queue
    /// `dropped` (being reset) are dropped the same way.
    pub(crate) fn reap<M: GuestMemory>(
        &mut self,
        mem: Option<&M>,
        dropped: Option<u16>,
        done: &mut Vec<Done>,
    ) {
        let mut resubmit = false;
        // Bounded: the CQ holds at most 2 * capacity entries; copied out
        // first (into storage kept across calls), as re-submission needs
        // the ring mutably.
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &cqes {
            if user_data == CANCEL {
                continue;
            }
            let Ok(index) = u32::try_from(user_data) else {
                continue;
            };
            let Some(slot) = self.slots.get_mut(index as usize) else {
                continue;
            };
            if !slot.busy {
                continue;
            }
            let mem = mem.filter(|_| dropped != Some(slot.queue));
            let outcome = match (res, slot.kind) {
                (r, _) if r < 0 => {
                    let e = io::Error::from_raw_os_error(-r);
                    log::log!(
                        self.io_log.level(),
                        "virtio-blk: {:?} at byte {} failed: {e}",
                        slot.kind,
                        slot.offset
                    );
                    Some(super::request::status::IOERR)
                }
                (_, Kind::Flush) => Some(super::request::status::OK),
                (0, _) => {
                    log::log!(
                        self.io_log.level(),
                        "virtio-blk: {:?} at byte {}: end of file",
                        slot.kind,
                        slot.offset
                    );
                    Some(super::request::status::IOERR)
                }
                (n, _) => {
                    // `0 < n <= total - done`.
                    slot.done = slot.done.saturating_add(n as u64);
                    if slot.done >= slot.total {
                        Some(super::request::status::OK)
                    } else if mem.is_none() {
                        Some(super::request::status::IOERR)
                    } else {
                        advance(&mut slot.iov, n as usize);
                        None
                    }
                }
            };
            let Some(status) = outcome else {
                self.push_rw(index);
                resubmit = true;
                continue;
            };
            if let Some(mem) = mem {
                done.push(finish(mem, slot, status));
            }
            slot.busy = false;
            self.free.push(index);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.cqes = cqes;
        if resubmit {
            self.submit();
        }
    }

    /// Drains the completion eventfd; call before [`Uring::reap`] when
    /// woken by it (a completion posted after the drain signals it again).
    /// The reap right after a submit skips it (one syscall less per
    /// request): a stale count then costs one spurious wake-up at most.
    pub(crate) fn clear_eventfd(&mut self) {
        let _ = self.eventfd.read();
    }

    /// Cancels what can be cancelled of queue `queue` (all queues: `None`)
    /// and waits until nothing is in flight; completions are reaped into
    /// `done` (`mem` given) or dropped (`mem == None`). Returns when the
    /// kernel holds no SQE of this engine: after it, no guest memory is
    /// touched by the engine.
    pub(crate) fn drain<M: GuestMemory>(
        &mut self,
        mem: Option<&M>,
        queue: Option<u16>,
        done: &mut Vec<Done>,
    ) {
        if self.in_flight == 0 {
            return;
        }
        match queue {
            None => {
                let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(CANCEL);
                self.push(&sqe);
            }
            Some(q) => {
                let targets: Vec<u64> = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.busy && s.queue == q)
                    .map(|(i, _)| i as u64)
                    .collect();
                for t in targets {
                    self.push(&opcode::AsyncCancel::new(t).build().user_data(CANCEL));
                }
            }
        }
        self.submit();
        let mut failures = 0u32;
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.unsubmitted = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The kernel may still write guest memory: returning
                    // would break §2.4. Keep waiting, gently.
                    if failures == 0 {
                        log::error!("virtio-blk: io_uring wait at reset: {e}; retrying");
                    }
                    failures = failures.saturating_add(1);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            // During a queue reset, requests of other queues complete
            // normally; the reset queue's are dropped unanswered.
            self.clear_eventfd();
            self.reap(mem, queue, done);
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel must not touch guest memory (or the iovec arrays)
        // after they are gone.
        self.drain::<vm_memory::GuestMemoryMmap<()>>(None, None, &mut Vec::new());
    }
}

/// Moves the iovecs `n` bytes forward (after a short transfer).
fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut skip = 0;
    for v in iov.iter_mut() {
        if n < v.iov_len {
            // SAFETY: `n < iov_len`: the new base stays inside the same
            // buffer of guest memory.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            break;
        }
        n -= v.iov_len;
        skip += 1;
    }
    iov.drain(..skip);
}

/// Writes the status of a finished request and returns its used entry
/// (used length 0 when the status byte cannot be written, as the
/// synchronous path answers).
fn finish<M: GuestMemory>(mem: &M, slot: &Slot, status: u8) -> Done {
    use vm_memory::Bytes;
    let written = if slot.kind == Kind::Read {
        // The kernel wrote these pages: tell the dirty bitmap.
        for &(addr, len) in &slot.pieces {
            if let Ok(slices) = mem.get_slices(addr, len, Permissions::Write) {
                for s in slices.flatten() {
                    s.bitmap().mark_dirty(0, s.len());
                }
            }
        }
        slot.done
    } else {
        0
    };
    let len = match mem.write_obj(status, slot.status) {
        Ok(()) => u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX),
        Err(e) => {
            log::warn!("virtio-blk: cannot write the status byte: {e}");
            0
        }
    };
    Done {
        queue: slot.queue,
        head: slot.head,
        len,
    }
}
