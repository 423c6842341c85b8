//! Block requests: layout constants and the per-chain processor
//! (virtio v1.4 §5.2.6 "Device Operation").
//!
//! The block device processes one descriptor chain at a time and returns the used length.
//! It never fails and never panics: every driver mistake becomes the status
//! the spec asks for, and a chain too broken to carry a status is completed
//! with length 0.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileSlice};
use vmmio_device::queue::Descriptor;
use vmmio_spec::features::bit;

use super::backend::Backend;
use super::uring::{Tag, Uring};
use crate::chain::{ChainLayout, LogLimiter, Region};

pub use vmmio_spec::blk::{
    features, status, types, HEADER_SIZE, ID_BYTES, SECTOR_SIZE, SEGMENT_SIZE,
};

/// Bit 0 of a segment's `flags`: unmap (write zeroes only).
const FLAG_UNMAP: u32 = 1;

/// The disk's capacity in 512-byte sectors, shared between the request
/// path and the host-side handle that resizes the disk while it runs.
/// Always at most `u64::MAX / 512`, so `capacity * 512` does not overflow.
#[derive(Clone, Debug, Default)]
pub(crate) struct Capacity(Arc<AtomicU64>);

impl Capacity {
    /// The most sectors a capacity may hold.
    pub(crate) const MAX: u64 = u64::MAX / SECTOR_SIZE;

    pub(crate) fn new(sectors: u64) -> Self {
        Self(Arc::new(AtomicU64::new(sectors.min(Self::MAX))))
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Sets the capacity, clamped to [`Capacity::MAX`].
    pub(crate) fn set(&self, sectors: u64) {
        self.0.store(sectors.min(Self::MAX), Ordering::Release);
    }
}

/// The limits a [`Disk`] enforces, derived from the device options.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Capacity in 512-byte sectors (changes when the host resizes the
    /// disk).
    pub(crate) capacity: Capacity,
    /// Read-only disk (`VIRTIO_BLK_F_RO` offered).
    pub(crate) read_only: bool,
    /// Most segments in a discard request.
    pub(crate) max_discard_seg: u32,
    /// Most sectors in one discard segment.
    pub(crate) max_discard_sectors: u32,
    /// Most segments in a write-zeroes request.
    pub(crate) max_write_zeroes_seg: u32,
    /// Most sectors in one write-zeroes segment.
    pub(crate) max_write_zeroes_sectors: u32,
}

/// Counters of peer faults, so each kind is logged a bounded number of
/// times at warn level.
#[derive(Debug, Default)]
struct Faults {
    malformed: LogLimiter,
    bad_request: LogLimiter,
    host_io: LogLimiter,
}

/// A disk: the backend, the limits and the ID string. Processes one request
/// chain at a time.
#[derive(Debug)]
pub(crate) struct Disk<B> {
    pub(crate) backend: B,
    pub(crate) limits: Limits,
    pub(crate) id: [u8; ID_BYTES],
    faults: Faults,
}

/// What a request came to: the status byte and the data bytes the device
/// wrote into the writable part before the status.
struct Outcome {
    status: u8,
    written: u64,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Self { status, written: 0 }
    }
}

/// The two segment commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegmentOp {
    Discard,
    WriteZeroes,
}

impl<B: Backend> Disk<B> {
    pub(crate) fn new(backend: B, limits: Limits, id: [u8; ID_BYTES]) -> Self {
        Self {
            backend,
            limits,
            id,
            faults: Faults::default(),
        }
    }

    /// Processes one request chain and returns its used length in bytes:
    /// the data bytes written into device-writable buffers plus the status
    /// byte, or 0 when the chain has no writable byte for the status (or is
    /// otherwise unanswerable).
    ///
    /// `features` are the negotiated feature bits: without
    /// `VIRTIO_BLK_F_FLUSH` every write is made durable before its status is
    /// written (virtio v1.4 §5.2.6.2, write-through case 1).
    ///
    /// With `uring`, IN, OUT and FLUSH requests that pass every check are
    /// handed to the io_uring engine instead, tagged with `Tag`, and
    /// `None` is returned: the engine completes them later.
    pub(crate) fn process<M: GuestMemory>(
        &mut self,
        mem: &M,
        descs: &[Descriptor],
        features: u64,
        uring: Option<(&mut Uring, Tag)>,
    ) -> Option<u32> {
        let layout = match ChainLayout::split(descs) {
            Ok(layout) => layout,
            Err(e) => {
                log::log!(
                    self.faults.malformed.level(),
                    "virtio-blk: malformed chain: {e}"
                );
                return Some(0);
            }
        };
        // The status byte is the last writable byte (§5.2.6, struct
        // virtio_blk_req): without one there is nothing to answer with.
        let Some(status_at) = layout.writable_len.checked_sub(1) else {
            log::log!(
                self.faults.malformed.level(),
                "virtio-blk: request without a writable status byte"
            );
            return Some(0);
        };
        let status_region = Region::new(layout.writable, status_at, 1);
        if let Some((uring, tag)) = uring {
            if self.queue_async(mem, &layout, status_at, features, uring, tag) {
                return None;
            }
        }
        let outcome = if layout.readable_len < HEADER_SIZE {
            log::log!(
                self.faults.malformed.level(),
                "virtio-blk: request header is {} bytes, want {HEADER_SIZE}",
                layout.readable_len
            );
            Outcome::status(status::IOERR)
        } else {
            self.execute(mem, &layout, status_at, features)
        };
        if let Err(e) = status_region.write_byte(mem, outcome.status) {
            log::log!(
                self.faults.malformed.level(),
                "virtio-blk: cannot write the status byte: {e}"
            );
            return Some(0);
        }
        // `written <= status_at`, so adding the status byte cannot overflow.
        Some(u32::try_from(outcome.written + 1).unwrap_or(u32::MAX))
    }

    /// Hands an IN, OUT or FLUSH request that passes every check to the
    /// io_uring engine. `false`: not handed over (another type, a check
    /// failed, the engine is full); the caller serves it synchronously,
    /// which answers the failed check as usual.
    fn queue_async<M: GuestMemory>(
        &mut self,
        mem: &M,
        layout: &ChainLayout<'_>,
        status_at: u64,
        features: u64,
        uring: &mut Uring,
        tag: Tag,
    ) -> bool {
        if layout.readable_len < HEADER_SIZE {
            return false;
        }
        let Some(Ok((status, _))) = Region::new(layout.writable, status_at, 1).pieces().next()
        else {
            return false;
        };
        let writable = mem
            .get_slices(status, 1, Permissions::Write)
            .is_ok_and(|mut it| matches!(it.next(), Some(Ok(_))));
        if !writable {
            return false;
        }
        let Ok(header) = Region::new(layout.readable, 0, HEADER_SIZE)
            .read_array::<{ HEADER_SIZE as usize }, M>(mem)
        else {
            return false;
        };
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let (data, write) = match req_type {
            types::IN => (Region::new(layout.writable, 0, status_at), None),
            types::OUT if !self.limits.read_only => (
                Region::new(
                    layout.readable,
                    HEADER_SIZE,
                    layout.readable_len - HEADER_SIZE,
                ),
                // Write-through without FLUSH (§5.2.6.2 case 1).
                Some(features & bit(features::FLUSH) == 0),
            ),
            types::FLUSH => return uring.queue_flush(tag, status).is_ok(),
            _ => return false,
        };
        if !data.len().is_multiple_of(SECTOR_SIZE) {
            return false;
        }
        let Some(offset) = self.range(sector, data.len()) else {
            return false;
        };
        uring
            .queue_rw(mem, tag, status, data, offset, write)
            .is_ok()
    }

    fn execute<M: GuestMemory>(
        &mut self,
        mem: &M,
        layout: &ChainLayout<'_>,
        status_at: u64,
        features: u64,
    ) -> Outcome {
        let header: [u8; HEADER_SIZE as usize] =
            match Region::new(layout.readable, 0, HEADER_SIZE).read_array(mem) {
                Ok(header) => header,
                Err(e) => {
                    log::log!(
                        self.faults.malformed.level(),
                        "virtio-blk: cannot read the request header: {e}"
                    );
                    return Outcome::status(status::IOERR);
                }
            };
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // Readable bytes after the header, and writable bytes before the
        // status byte: the request's `data`.
        let out_data = Region::new(
            layout.readable,
            HEADER_SIZE,
            layout.readable_len - HEADER_SIZE,
        );
        let in_data = Region::new(layout.writable, 0, status_at);
        let negotiated = |f: u32| features & bit(f) != 0;
        match req_type {
            types::IN => self.read(mem, sector, in_data),
            types::OUT => {
                let outcome = self.write(mem, sector, out_data);
                self.write_through(outcome, negotiated(features::FLUSH))
            }
            types::FLUSH => self.flush(),
            types::GET_ID => self.get_id(mem, in_data),
            types::DISCARD if negotiated(features::DISCARD) => {
                let outcome = self.segments(mem, out_data, SegmentOp::Discard);
                self.write_through(outcome, negotiated(features::FLUSH))
            }
            types::WRITE_ZEROES if negotiated(features::WRITE_ZEROES) => {
                let outcome = self.segments(mem, out_data, SegmentOp::WriteZeroes);
                self.write_through(outcome, negotiated(features::FLUSH))
            }
            other => {
                log::debug!("virtio-blk: unsupported request type {other}");
                Outcome::status(status::UNSUPP)
            }
        }
    }

    /// Checks that `len` bytes at sector `sector` lie inside the disk and
    /// returns the byte offset.
    #[inline]
    fn check_range(&mut self, sector: u64, len: u64) -> Option<u64> {
        let offset = self.range(sector, len);
        if offset.is_none() {
            self.log_beyond_capacity(sector, len);
        }
        offset
    }

    /// The log line of a rejected range, kept out of the per-request path.
    #[cold]
    #[inline(never)]
    fn log_beyond_capacity(&mut self, sector: u64, len: u64) {
        let capacity = self.limits.capacity.get();
        log::log!(
            self.faults.bad_request.level(),
            "virtio-blk: sectors {sector}+{len}B beyond capacity {capacity}"
        );
    }

    /// The byte offset of `len` bytes at sector `sector` when they lie
    /// inside the disk (no log).
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        // capacity <= Capacity::MAX, so this does not overflow.
        (end <= self.limits.capacity.get() * SECTOR_SIZE).then_some(offset)
    }

    /// Checks an IN/OUT data length: a multiple of 512 bytes (§5.2.6.1).
    fn check_data_len(&mut self, len: u64) -> bool {
        if !len.is_multiple_of(SECTOR_SIZE) {
            log::log!(
                self.faults.bad_request.level(),
                "virtio-blk: data length {len} not a multiple of 512"
            );
            return false;
        }
        true
    }

    fn read<M: GuestMemory>(&mut self, mem: &M, sector: u64, data: Region<'_>) -> Outcome {
        if !self.check_data_len(data.len()) {
            return Outcome::status(status::IOERR);
        }
        let Some(offset) = self.check_range(sector, data.len()) else {
            return Outcome::status(status::IOERR);
        };
        let mut done = 0u64;
        let result = transfer(
            mem,
            data,
            &mut self.backend,
            offset,
            Direction::ToGuest,
            &mut done,
        );
        match result {
            Ok(()) => Outcome {
                status: status::OK,
                written: done,
            },
            Err(e) => {
                log::log!(
                    self.faults.host_io.level(),
                    "virtio-blk: read at sector {sector} failed: {e}"
                );
                Outcome {
                    status: status::IOERR,
                    written: done,
                }
            }
        }
    }

    fn write<M: GuestMemory>(&mut self, mem: &M, sector: u64, data: Region<'_>) -> Outcome {
        if self.limits.read_only {
            // §5.2.6.2: IOERR, and no data written.
            log::log!(
                self.faults.bad_request.level(),
                "virtio-blk: write to a read-only disk"
            );
            return Outcome::status(status::IOERR);
        }
        if !self.check_data_len(data.len()) {
            return Outcome::status(status::IOERR);
        }
        let Some(offset) = self.check_range(sector, data.len()) else {
            return Outcome::status(status::IOERR);
        };
        let mut done = 0u64;
        let result = transfer(
            mem,
            data,
            &mut self.backend,
            offset,
            Direction::FromGuest,
            &mut done,
        );
        match result {
            Ok(()) => Outcome::status(status::OK),
            Err(e) => {
                log::log!(
                    self.faults.host_io.level(),
                    "virtio-blk: write at sector {sector} failed: {e}"
                );
                Outcome::status(status::IOERR)
            }
        }
    }

    /// Without negotiated `VIRTIO_BLK_F_FLUSH`, a completed write must be
    /// stable (§5.2.6.2 case 1): sync before the status is written.
    fn write_through(&mut self, outcome: Outcome, flush_negotiated: bool) -> Outcome {
        if flush_negotiated || outcome.status != status::OK {
            return outcome;
        }
        self.flush()
    }

    fn flush(&mut self) -> Outcome {
        match self.backend.flush() {
            Ok(()) => Outcome::status(status::OK),
            Err(e) => {
                log::log!(self.faults.host_io.level(), "virtio-blk: flush failed: {e}");
                Outcome::status(status::IOERR)
            }
        }
    }

    fn get_id<M: GuestMemory>(&mut self, mem: &M, data: Region<'_>) -> Outcome {
        // The driver MUST give 20 bytes (§5.2.6.1); give what fits.
        let n = usize::try_from(data.len())
            .unwrap_or(usize::MAX)
            .min(ID_BYTES);
        let region = data.sub(0, n as u64);
        match region.write_from(mem, &self.id[..n]) {
            Ok(()) => Outcome {
                status: status::OK,
                written: n as u64,
            },
            Err(e) => {
                log::log!(
                    self.faults.malformed.level(),
                    "virtio-blk: cannot write the ID: {e}"
                );
                Outcome::status(status::IOERR)
            }
        }
    }

    /// Discard and write-zeroes: validate every segment first, then act on
    /// each. Answers UNSUPP for unknown flags or a discard with `unmap`
    /// (§5.2.6.2), IOERR for a read-only disk, a range past the end, too
    /// many segments or sectors, or a host failure.
    fn segments<M: GuestMemory>(&mut self, mem: &M, data: Region<'_>, op: SegmentOp) -> Outcome {
        if self.limits.read_only {
            log::log!(
                self.faults.bad_request.level(),
                "virtio-blk: {op:?} on a read-only disk"
            );
            return Outcome::status(status::IOERR);
        }
        let (max_seg, max_sectors) = match op {
            SegmentOp::Discard => (self.limits.max_discard_seg, self.limits.max_discard_sectors),
            SegmentOp::WriteZeroes => (
                self.limits.max_write_zeroes_seg,
                self.limits.max_write_zeroes_sectors,
            ),
        };
        let count = data.len() / SEGMENT_SIZE;
        if !data.len().is_multiple_of(SEGMENT_SIZE) || count > u64::from(max_seg) {
            log::log!(
                self.faults.bad_request.level(),
                "virtio-blk: {op:?} data of {} bytes (max {max_seg} segments)",
                data.len()
            );
            return Outcome::status(status::IOERR);
        }
        // Pass 0 validates, pass 1 acts; each re-reads and re-checks the
        // segment, as the guest may change it in between.
        for pass in 0..2 {
            for i in 0..count {
                // `i < count = len / 16`, so `i * 16 < len`: no overflow.
                let seg = data.sub(i * SEGMENT_SIZE, SEGMENT_SIZE);
                let mut raw = [0u8; SEGMENT_SIZE as usize];
                if let Err(e) = seg.read_into(mem, &mut raw) {
                    log::log!(
                        self.faults.malformed.level(),
                        "virtio-blk: cannot read segment {i}: {e}"
                    );
                    return Outcome::status(status::IOERR);
                }
                let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = raw;
                let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
                let num_sectors = u32::from_le_bytes([n0, n1, n2, n3]);
                let flags = u32::from_le_bytes([f0, f1, f2, f3]);
                if flags & !FLAG_UNMAP != 0 || (op == SegmentOp::Discard && flags & FLAG_UNMAP != 0)
                {
                    log::log!(
                        self.faults.bad_request.level(),
                        "virtio-blk: {op:?} flags {flags:#x} unsupported"
                    );
                    return Outcome::status(status::UNSUPP);
                }
                if num_sectors > max_sectors {
                    log::log!(
                        self.faults.bad_request.level(),
                        "virtio-blk: {op:?} of {num_sectors} sectors"
                    );
                    return Outcome::status(status::IOERR);
                }
                let len = u64::from(num_sectors) * SECTOR_SIZE;
                let Some(offset) = self.check_range(sector, len) else {
                    return Outcome::status(status::IOERR);
                };
                if pass == 1 {
                    let r = match op {
                        SegmentOp::Discard => self.backend.discard(offset, len),
                        SegmentOp::WriteZeroes => self.backend.write_zeroes(offset, len),
                    };
                    if let Err(e) = r {
                        log::log!(
                            self.faults.host_io.level(),
                            "virtio-blk: {op:?} at sector {sector} failed: {e}"
                        );
                        return Outcome::status(status::IOERR);
                    }
                }
            }
        }
        Outcome::status(status::OK)
    }
}

/// Which way [`transfer`] moves the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Backend to guest memory (IN: `read_at`, device-writable buffers).
    ToGuest,
    /// Guest memory to backend (OUT: `write_at`, device-readable buffers).
    FromGuest,
}

/// Moves the data of `data` between guest memory and the backend bytes
/// starting at `offset` (a range the caller checked), in order, and counts
/// in `done` the bytes moved (all of them, or on a backend error 0).
///
/// A region inside one descriptor and one memory region (the common case)
/// takes [`Region::single_slice`]'s single-lookup fast path.
///
/// # Errors
/// A guest address outside guest memory or a region shorter than its
/// descriptors claim gives `InvalidInput`; the backend's error is returned
/// as is.
#[inline]
fn transfer<M: GuestMemory, B: Backend>(
    mem: &M,
    data: Region<'_>,
    backend: &mut B,
    offset: u64,
    dir: Direction,
    done: &mut u64,
) -> io::Result<()> {
    if let Some(slice) = data.single_slice(mem) {
        return move_slice(backend, dir, offset, &slice, done);
    }
    transfer_gathered(mem, data, backend, offset, dir, done)
}

/// [`transfer`] over several descriptors or memory regions.
#[inline(never)]
fn transfer_gathered<M: GuestMemory, B: Backend>(
    mem: &M,
    data: Region<'_>,
    backend: &mut B,
    offset: u64,
    dir: Direction,
    done: &mut u64,
) -> io::Result<()> {
    let access = match dir {
        Direction::ToGuest => Permissions::Write,
        Direction::FromGuest => Permissions::Read,
    };
    // Several descriptors (or memory regions): gather their slices and
    // hand them to the backend at once (one preadv/pwritev for a file).
    let mut slices = Vec::new();
    let mut total = 0u64;
    for piece in data.pieces() {
        let (addr, len): (GuestAddress, usize) = piece.map_err(bad_guest)?;
        for slice in mem.get_slices(addr, len, access).map_err(bad_guest)? {
            let slice = slice.map_err(bad_guest)?;
            // Bounded by the chain's checked data length: no overflow.
            total += slice.len() as u64;
            slices.push(slice);
        }
    }
    if total != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor chain shorter than its data",
        ));
    }
    match dir {
        Direction::ToGuest => backend.read_vectored_at(offset, &slices)?,
        Direction::FromGuest => backend.write_vectored_at(offset, &slices)?,
    }
    *done = total;
    Ok(())
}

/// Moves one slice between guest memory and the backend at `at`; on
/// success adds its length to `done`.
fn move_slice<B: Backend, S: BitmapSlice>(
    backend: &mut B,
    dir: Direction,
    at: u64,
    slice: &VolatileSlice<'_, S>,
    done: &mut u64,
) -> io::Result<()> {
    match dir {
        Direction::ToGuest => backend.read_at(at, slice)?,
        Direction::FromGuest => backend.write_at(at, slice)?,
    }
    *done += slice.len() as u64;
    Ok(())
}

fn bad_guest(e: vm_memory::GuestMemoryError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}
